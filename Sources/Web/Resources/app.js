// The kisgw page: sign-in (demo), KIS account connection, status, environment switch and the chart view.
import { checkJwt, createKisClient, ENVIRONMENTS, storageOrNull } from './kis-client.js';
import { CandleChart, formatCandleDate, formatPrice, formatVolume, priceDecimals } from './chart.js';

const $ = (id) => document.getElementById(id);
const ENV_LABEL = { SANDBOX: '모의투자', LIVE: '실계좌' };
const STATUS_LABEL = { connected: '연결됨', expired: '토큰 만료', disconnected: '연결 안됨' };
const JWT_KEY = 'kisgw.jwt';
// The JWT is kept for this tab (a reload keeps the session). Where the browser refuses the page storage (site data
// blocked), the page works all the same and a reload asks for a sign-in again.
const tabStorage = storageOrNull('sessionStorage');
function keepJwt(token) { try { tabStorage?.setItem(JWT_KEY, token); } catch { /* refused or full: not kept */ } }
function storedJwt() { try { return tabStorage?.getItem(JWT_KEY) ?? null; } catch { return null; } }
function forgetJwt() { try { tabStorage?.removeItem(JWT_KEY); } catch { /* nothing was kept */ } }
// The environment the user last selected, per user and across reloads (not secret: SANDBOX or LIVE). A reload shows
// it again when it has a connected account, else the default (모의투자).
const localStore = storageOrNull('localStorage');
const envKey = (u) => `kisgw.environment.${encodeURIComponent(u)}`;
function rememberEnvironment(env) { try { if (user) localStore?.setItem(envKey(user), env); } catch { /* not kept */ } }
function rememberedEnvironment(u) {
  try {
    const env = localStore?.getItem(envKey(u));
    return ENVIRONMENTS.includes(env) ? env : null;
  } catch {
    return null;
  }
}
/** Korean headlines for the gateway's and the broker's problem codes (gateway-api.md, broker-api.md); the server's
 *  own words are kept as detail (`errorDetail`). A request that got no answer (`network`) is described by its own
 *  (Korean) message, which names the server. */
const PROBLEM_LABEL = {
  invalid_parameter: '요청 값이 올바르지 않습니다',
  range_too_large: '조회 기간이 너무 깁니다',
  auth_required: '인증 정보가 없습니다',
  jwt_invalid: '로그인 정보가 유효하지 않습니다. 다시 로그인하세요',
  jwt_expired: '로그인이 만료되었습니다. 다시 로그인하세요',
  sign_in_required: '로그인이 필요합니다',
  kis_token_invalid: '한국투자증권 접근 토큰이 유효하지 않습니다',
  kis_token_expired: '한국투자증권 접근 토큰이 만료되었습니다',
  not_connected: '한국투자증권 계정이 연결되어 있지 않습니다',
  account_not_found: '연결된 계정이 없습니다',
  not_found: '지원하지 않는 요청입니다',
  rate_limited: '요청이 많습니다. 잠시 후 다시 시도하세요',
  upstream_error: '한국투자증권 API 오류',
  upstream_timeout: '한국투자증권 API 응답이 지연되고 있습니다',
  store_unavailable: '토큰 저장소를 사용할 수 없습니다',
  kis_credentials_rejected: '한국투자증권이 App Key 또는 App Secret을 거부했습니다',
  kis_rate_limited: '접근 토큰 발급은 App Key당 1분에 한 번입니다. 잠시 후 다시 시도하세요',
  method_not_allowed: '지원하지 않는 요청 방식입니다',
  payload_too_large: '요청 본문이 너무 큽니다',
  internal_error: '서버 내부 오류가 발생했습니다',
};

/** Korean for what the broker's `invalid_parameter` names: its message starts with the field (broker-api.md). */
const FIELD_PROBLEM = {
  appKey: 'App Key는 공백 없는 영문·숫자·기호 1~512자입니다',
  appSecret: 'App Secret은 공백 없는 영문·숫자·기호 1~512자입니다',
  accountNumber: '계좌번호는 12345678-01 형식입니다',
  environment: '환경은 실계좌 또는 모의투자입니다',
};

/** The gateway's `invalid_parameter` about a chart query, in Korean (its message names the parameter). */
const CHART_PARAMETER_PROBLEM = [
  [/^start must not be after end/, '시작일이 종료일보다 늦습니다'],
  [/^(start|end) must be a date/, '날짜 형식이 올바르지 않습니다'],
  [/^period\b/, '기간은 일·주·월·년 중 하나입니다'],
  [/^symbol\b/, '종목 코드 형식이 올바르지 않습니다'],
];

const HANGUL = /[\uac00-\ud7a3]/;
const SERVER_LABEL = { broker: '브로커 응답', gateway: '게이트웨이 응답' };

/** The field of the connect form (or the environment) a broker `invalid_parameter` is about, or null. */
function refusedField(err) {
  if (err.code !== 'invalid_parameter') return null;
  return /^(appKey|appSecret|accountNumber|environment)\b/.exec(err.message ?? '')?.[1] ?? null;
}

/**
 * A broker or gateway error for the user, in Korean only: the headline of its code, what it means here when the
 * page knows (the field refused, another request for the same account), how long to wait when the server said
 * (`Retry-After`). The server's own words (English) are not part of it: `errorDetail` keeps them, shown as detail.
 * `retry: false`: no advice to try again (the page retries by itself and says when).
 */
function describeError(err, { retry = true } = {}) {
  const label = PROBLEM_LABEL[err.code];
  const message = err.message ?? '';
  let text;
  if (!label) {
    // the page's own (Korean) text: no answer, or an answer without a problem body; else a code this page does not
    // know, whose (English) message goes to the detail
    text = HANGUL.test(message) ? message
      : `요청을 처리하지 못했습니다${err.status ? ` (HTTP ${err.status})` : ''}`;
  } else {
    text = label;
    const field = refusedField(err);
    const param = err.code === 'invalid_parameter' && CHART_PARAMETER_PROBLEM.find(([re]) => re.test(message));
    if (field) text = `${label} — ${FIELD_PROBLEM[field]}`;
    else if (param) text = `${label} — ${param[1]}`;
    else if (err.code === 'kis_rate_limited' && /in progress|keeps changing/.test(message)) {
      text = '이 계정에 대한 다른 요청을 처리하고 있습니다';
    } else if (err.code === 'rate_limited' && /account checks/.test(message)) {
      text = '계정 확인 요청이 너무 많습니다';
    } else if (err.code === 'range_too_large' && /(\d+) days/.test(message)) {
      text = `${label} (최대 ${Number(/(\d+) days/.exec(message)[1]).toLocaleString('ko-KR')}일)`;
    }
  }
  // the server said when: that, instead of "잠시 후"
  const later = /\. 잠시 후 다시 시도하세요$/;
  if (!retry) text = text.replace(later, '');
  else if (err.retryAfter) text = `${text.replace(later, '')}. ${err.retryAfter}초 후 다시 시도하세요`;
  return text;
}

/**
 * The words of the servers behind `err`, below the Korean headline and for whoever reports the problem: KIS's own
 * message (Korean: `kis: true`, shown as it is), then the broker's or the gateway's message (English, `lang: 'en'`,
 * named `브로커 응답:` / `게이트웨이 응답:` after the server that answered), then the status and code. A request
 * that got no answer has no such words (its Korean message is the headline).
 * @returns {{text: string, lang?: string, kis?: boolean}[]}
 */
function errorDetail(err) {
  const lines = [];
  const kisMessage = err.body?.kis_msg1 ?? err.kisMessage;
  const kisCode = err.body?.kis_msg_cd ?? err.kisCode;
  if (kisMessage) lines.push({ text: `한국투자증권: ${`${kisCode ?? ''} ${kisMessage}`.trim()}`, kis: true });
  if (err.code === 'network') return lines;
  const message = err.message ?? '';
  if (message && !HANGUL.test(message)) {
    lines.push({ text: `${SERVER_LABEL[err.server] ?? '서버 응답'}: ${message}`, lang: 'en' });
  }
  if (err.status || err.code) {
    lines.push({ text: `오류 코드: ${err.status ? `${err.status} ` : ''}${err.code}`, lang: 'en' });
  }
  return lines;
}

/** A `<details>` "자세한 내용" holding `lines` (errorDetail's), closed; null when there are none. */
function detailsElement(lines) {
  if (!lines.length) return null;
  const details = document.createElement('details');
  details.className = 'server-detail';
  const summary = document.createElement('summary');
  summary.textContent = '자세한 내용';
  details.append(summary);
  for (const line of lines) {
    const div = document.createElement('div');
    if (line.lang) div.lang = line.lang;
    div.textContent = line.text;
    details.append(div);
  }
  return details;
}

/**
 * Fills `box` with an error: its Korean description (when to try again included), then KIS's own (Korean) message as
 * a smaller line, then the servers' English words and the code in a closed "자세한 내용".
 */
function showError(box, err) {
  const headline = describeError(err);
  const detail = errorDetail(err);
  const msg = document.createElement('div');
  msg.className = 'msg';
  msg.textContent = headline;
  const lines = [msg];
  for (const text of detail.filter((l) => l.kis).map((l) => l.text)) {
    const div = document.createElement('div');
    div.className = 'code';
    div.textContent = text;
    lines.push(div);
  }
  const details = detailsElement(detail.filter((l) => !l.kis));
  if (details) lines.push(details);
  box.replaceChildren(...lines);
}

const expiryFmt = new Intl.DateTimeFormat('ko-KR', {
  year: 'numeric', month: 'long', day: 'numeric', hour: 'numeric', minute: '2-digit', timeZone: 'Asia/Seoul',
});
const timeFmt = new Intl.DateTimeFormat('ko-KR', {
  month: 'long', day: 'numeric', hour: 'numeric', minute: '2-digit', second: '2-digit', timeZone: 'Asia/Seoul',
});
const formatExpiry = (iso) => (iso ? `${expiryFmt.format(new Date(iso))} (KST)` : '—');

let config = { gatewayUrl: '', demo: false };
let client = null;
let user = null;
let chartData = null;
let lastQuery = null;
let chartSeq = 0;

// ------------------------------------------------------------------------------------------------ toasts

/**
 * Shows a toast. The container is not a live region: each toast is its own — an error an alert, the rest a status —
 * so that a screen reader reads it once (an alert inside a live container was read twice).
 * `err`: the server's words of that error follow as a smaller line, in English, after the Korean message.
 */
function toast(message, kind = 'info', ms = 4500, err = null) {
  const el = document.createElement('div');
  el.className = `toast ${kind}`;
  el.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  const detail = err ? errorDetail(err).filter((l) => !l.text.startsWith('오류 코드')) : [];
  if (!detail.length) el.textContent = message;
  else {
    const head = document.createElement('div');
    head.textContent = message;
    el.append(head);
    for (const line of detail) {
      const div = document.createElement('div');
      div.className = 'toast-detail';
      if (line.lang) div.lang = line.lang;
      div.textContent = line.text;
      el.append(div);
    }
  }
  $('toasts').append(el);
  setTimeout(() => el.remove(), ms);
}

/** A toast of `err`: `prefix` and its Korean description, the server's words below. */
function toastError(err, { prefix = '', suffix = '', kind = 'error', ms = 7000 } = {}) {
  toast(`${prefix}${describeError(err)}${suffix}`, kind, ms, err);
}

// ------------------------------------------------------------------------------------------------ sign-in

function jwtSubject(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0)));
    return JSON.parse(json).sub ?? null;
  } catch {
    return null;
  }
}

let signInSeq = 0;

/** Signs in with `input` (demo: a user id; otherwise a JWT): the broker checks the JWT before the current session is
 *  replaced. Returns false when a newer sign-in started meanwhile; throws with the reason when it is refused. */
async function signIn(input) {
  const seq = ++signInSeq;
  let token;
  if (config.demo) {
    const userId = (input || 'demo').trim();
    let res;
    try {
      res = await fetch('/api/dev/signin', {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ userId }),
      });
    } catch {
      throw new Error('브로커에 연결할 수 없습니다 (네트워크 오류)');
    }
    const body = await res.json().catch(() => ({}));
    if (res.status === 400) throw new Error('사용자 ID는 1~64자의 영문, 숫자, - _ . @만 쓸 수 있습니다');
    if (!res.ok || !body.token) throw new Error(`로그인 실패 (HTTP ${res.status})`);
    token = body.token;
  } else {
    token = input.trim();
    if (!jwtSubject(token)) throw new Error('JWT 형식이 아닙니다');
  }
  const refused = await checkJwt({ jwt: token });
  if (seq !== signInSeq) return false;
  if (refused) throw refused;  // a KisError: told in Korean, the broker's words as detail (failed())
  // Kept for this tab once the broker took it; the field does not keep showing a bearer credential.
  keepJwt(token);
  if (!config.demo) $('signin-user').value = '';
  await startSession(token);
  return true;
}

function showSignInState(text, warn) {
  $('signin-state').textContent = text;
  $('signin-state').classList.toggle('warn', warn);
}

/** Replaces the session with one for `token`, which the broker took. */
async function startSession(token) {
  client?.stop();
  user = jwtSubject(token) ?? 'user';
  showSignInState(`${user} 로그인됨`, false);
  if (config.demo) $('signin-user').value = user;
  const remembered = rememberedEnvironment(user);
  const previousEnv = remembered ?? client?.environment ?? 'SANDBOX';
  const session = createKisClient({
    gatewayUrl: config.gatewayUrl,
    brokerUrl: '',
    getJwt: () => token,
    scope: user,
    environment: previousEnv,
    // a session replaced by another (a new sign-in) may still finish a request: it no longer paints the page
    onStateChange: (s) => { if (client === session) render(s); },
    onSignInRequired: (err) => {
      // The JWT stopped working mid-session (it expired): close the session and ask again.
      if (client !== session) return;
      session.stop();
      forgetJwt();
      showSignInState('다시 로그인하세요', true);
      toastError(err, { kind: 'warn', ms: 8000 });
    },
  });
  client = session;
  chartData = null;
  showChartEmpty('계정을 연결한 뒤 종목을 조회하세요');
  render(client.state());
  try {
    const s = await client.init();
    if (client !== session) return;
    // The remembered environment has no connected account (any more): the default one is shown — unless the user
    // chose another meanwhile.
    if (remembered && session.environment === remembered && !s.environments[remembered].connected) {
      session.setEnvironment('SANDBOX');
    }
    if (session.state().environments[session.environment].connected) loadFormChart();
  } catch (err) {
    if (client === session) toastError(err);
  }
}

// ------------------------------------------------------------------------------------------------ status

let editing = false;

/** Sets `el`'s text only when it changes (no mutation, so no announcement by a live region, when it is the same). */
function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}
/** Renders again when the shown token expires (or is a minute from it: `expired` once refreshes keep failing), so
 *  that the status turns at that moment rather than at the next periodic render. */
let expiryTimer = null;

function render(s = client?.state()) {
  if (!s) return;
  const env = s.environment;
  const e = s.environments[env];
  clearTimeout(expiryTimer);
  const left = e.expiresAt ? Date.parse(e.expiresAt) - Date.now() : NaN;
  if (e.connected && left > 0) expiryTimer = setTimeout(() => render(), Math.min(left > 60000 ? left - 60000 : left, 2 ** 31 - 1) + 50);
  for (const name of ENVIRONMENTS) {
    // a radio group: one tab stop, the checked one; the arrow keys move between them (main())
    $(`env-${name}`).setAttribute('aria-checked', String(name === env));
    $(`env-${name}`).tabIndex = name === env ? 0 : -1;
  }

  // The status is a live region: written only when what it says changes (the periodic render would otherwise have
  // screen readers read it again every 30 s).
  const status = $('status');
  if (status.dataset.status !== e.status) status.dataset.status = e.status;
  if (status.dataset.environment !== env) status.dataset.environment = env;
  setText($('status-text'), STATUS_LABEL[e.status]);
  let detail = ENV_LABEL[env];
  // A token the gateway refused before its stated expiry (KIS ended it early), or none while the account is
  // connected: that expiry is not when it ends — it needs a refresh.
  const endedEarly = e.connected && e.tokenRefused;
  const needsToken = e.connected && !endedEarly && e.status === 'expired' && left > 60000;
  if (endedEarly) detail += ' · 접근 토큰 조기 종료 — 갱신 필요';
  else if (needsToken) detail += ' · 접근 토큰 갱신 필요';
  else if (e.connected && e.expiresAt) detail += ` · 만료 ${formatExpiry(e.expiresAt)}`;
  if (e.refreshing) detail += ' · 갱신 중…';
  else if (e.refreshFailures > 0) detail += ` · 접근 토큰 갱신 실패 ${e.refreshFailures}회`;
  if (s.signInRequired) detail += ' · 다시 로그인 필요';
  if (e.syncError) detail += ' · 브로커에서 계정 상태를 확인하지 못했습니다 (다시 시도 중)';
  setText($('status-detail'), detail);

  // account panel
  const showForm = !e.connected || editing;
  $('account-view').hidden = showForm;
  $('connect-form').hidden = !showForm;
  $('connect-cancel').hidden = !(editing && e.connected);
  $('connect-submit').textContent = editing && e.connected ? '저장' : '연결';
  if (!editing) {
    for (const r of document.querySelectorAll('#connect-form input[name=environment]')) r.checked = r.value === env;
  }
  setText($('acct-env'), ENV_LABEL[env]);
  setText($('acct-number'), e.account ?? '—');
  setText($('acct-appkey'), e.appKey ?? '—');
  setText($('acct-expiry'), endedEarly ? '조기 종료됨 — 갱신 필요' : needsToken ? '갱신 필요' : formatExpiry(e.expiresAt));
  const refreshEl = $('acct-refresh');
  if (e.refreshFailures > 0) {
    // why, in Korean; the server's own words in "자세한 내용"
    const when = e.nextRefreshAt ? `${timeFmt.format(new Date(e.nextRefreshAt))} (KST) 재시도` : '중지됨';
    const failure = e.lastFailure ?? (e.lastError ? { message: e.lastError } : null);
    const text = `실패 ${e.refreshFailures}회 — ${when}${failure ? ` · ${describeError(failure, { retry: false })}` : ''}`;
    const lines = failure ? errorDetail(failure) : [];
    const key = JSON.stringify([text, lines]);
    if (refreshEl.dataset.key !== key) {
      refreshEl.dataset.key = key;
      const span = document.createElement('span');
      span.textContent = text;
      const details = detailsElement(lines);
      refreshEl.replaceChildren(...(details ? [span, details] : [span]));
    }
    refreshEl.className = 'warn';
  } else {
    delete refreshEl.dataset.key;
    setText(refreshEl, e.nextRefreshAt ? `${timeFmt.format(new Date(e.nextRefreshAt))} (KST) 예정` : '—');
    refreshEl.className = '';
  }
  $('acct-refresh-now').disabled = e.refreshing;
  // Disconnected from elsewhere (another tab, the broker): the account's chart goes, and one still loading is not
  // drawn when it arrives.
  if (!e.connected && chartEl.dataset.state !== 'idle') {
    chartData = null;
    showChartEmpty(`${ENV_LABEL[env]} 계정이 연결되어 있지 않습니다`);
  }
}

// ------------------------------------------------------------------------------------------------ account

async function onConnect(event) {
  event.preventDefault();
  const form = new FormData($('connect-form'));
  const data = {
    environment: form.get('environment'),
    appKey: form.get('appKey') ?? '',
    appSecret: form.get('appSecret') ?? '',
    accountNumber: form.get('accountNumber') ?? '',
  };
  const errorEl = $('connect-error');
  errorEl.hidden = true;
  markConnectFields([]);
  const problems = [];
  const invalid = [];
  if (!data.appKey.trim()) { problems.push('App Key를 입력하세요'); invalid.push('appKey'); }
  if (!data.appSecret.trim()) { problems.push('App Secret을 입력하세요'); invalid.push('appSecret'); }
  if (!/^\d{8}-?\d{2}$/.test(data.accountNumber.trim())) {
    problems.push('계좌번호는 12345678-01 형식입니다');
    invalid.push('accountNumber');
  }
  if (problems.length) {
    errorEl.textContent = problems.join(' · ');
    errorEl.hidden = false;
    markConnectFields(invalid, true);
    return;
  }
  const button = $('connect-submit');
  button.disabled = true;
  button.textContent = '확인 중…';
  try {
    if (client.environment !== data.environment) {
      client.setEnvironment(data.environment);
      rememberEnvironment(data.environment);
    }
    const { message } = await client.connect(data);
    editing = false;
    $('connect-form').reset();
    const connected = `${ENV_LABEL[data.environment]} 계정이 연결되었습니다`;
    toast(message ? `${connected} — ${message}` : connected, 'success');
    render();
    $('acct-edit').focus();  // the form the focus was in is hidden now
    loadFormChart();
  } catch (err) {
    // Korean first; KIS's own message below it, the broker's words in "자세한 내용"
    showError(errorEl, err);
    errorEl.dataset.code = err.code;
    errorEl.hidden = false;
    markConnectFields(fieldsRefused(err));
    toastError(err, { prefix: '연결 실패: ' });
  } finally {
    button.disabled = false;
    render();
  }
}

const CONNECT_FIELDS = ['appKey', 'appSecret', 'accountNumber'];

/** Marks the fields of `ids` that `isInvalid` as invalid, described by the message in `errorId`; clears the others. */
function markInvalid(ids, isInvalid, errorId) {
  for (const id of ids) {
    const field = $(id);
    if (isInvalid(id)) {
      field.setAttribute('aria-invalid', 'true');
      field.setAttribute('aria-describedby', errorId);
    } else {
      field.removeAttribute('aria-invalid');
      field.removeAttribute('aria-describedby');
    }
  }
}

/**
 * Marks the connect form's fields in `invalid` as such and ties them to the error text that says why (screen
 * readers read it with the field); the others are cleared. `focus`: the first of them takes the focus.
 */
function markConnectFields(invalid, focus = false) {
  markInvalid(CONNECT_FIELDS, (id) => invalid.includes(id), 'connect-error');
  if (focus && invalid.length) $(invalid[0]).focus();
}

/** The connect form's fields a refusal is about: the key pair KIS refused, or the field the broker names. */
function fieldsRefused(err) {
  if (err.code === 'kis_credentials_rejected') return ['appKey', 'appSecret'];
  const field = refusedField(err);
  return field && CONNECT_FIELDS.includes(field) ? [field] : [];
}

let disconnectArmed = null;

async function onDisconnect() {
  const button = $('acct-disconnect');
  if (!disconnectArmed) {
    button.textContent = '한 번 더 누르면 해제';
    disconnectArmed = setTimeout(() => { disconnectArmed = null; button.textContent = '연결 해제'; }, 4000);
    return;
  }
  clearTimeout(disconnectArmed);
  disconnectArmed = null;
  button.textContent = '연결 해제';
  const env = client.environment;
  button.disabled = true;
  try {
    await client.disconnect(env);
    toast(`${ENV_LABEL[env]} 계정 연결을 해제했습니다`, 'success');
    chartData = null;
    showChartEmpty('계정을 연결한 뒤 종목을 조회하세요');
    if (client.environment === env) $('appKey').focus();  // the account view the focus was in is hidden now
  } catch (err) {
    toastError(err, { prefix: '연결 해제 실패 — ' });
  } finally {
    button.disabled = false;
  }
}

async function onRefreshNow() {
  try {
    const before = client.token();
    const entry = await client.refresh();
    // Within KIS's reuse window the broker hands back the token it has (broker-api.md): nothing was renewed.
    toast(entry.token === before ? `접근 토큰이 아직 유효합니다 — 만료 ${formatExpiry(entry.expiresAt)}`
      : '접근 토큰을 갱신했습니다', 'success');
  } catch (err) {
    toastError(err, { prefix: '접근 토큰 갱신 실패 — ' });
  }
}

function switchEnvironment(env) {
  if (!client || client.environment === env) return;
  editing = false;
  client.setEnvironment(env);
  rememberEnvironment(env);
  if (client.state().environments[env].connected) loadFormChart();
  else {
    chartData = null;
    showChartEmpty(`${ENV_LABEL[env]} 계정이 연결되어 있지 않습니다`);
  }
}

// ------------------------------------------------------------------------------------------------ chart

const chartEl = $('chart');
const tip = $('crosshair');
const chart = new CandleChart($('chart-canvas'), { onHover: showCrosshair });

function showCrosshair(c, i, x) {
  if (!c || !chartData) { tip.hidden = true; return; }
  const d = priceDecimals(chartData.candles, chartData.currency);
  const row = (k, v) => {
    const div = document.createElement('div');
    const key = document.createElement('span');
    key.className = 'k';
    key.textContent = k;
    div.append(key, v);
    return div;
  };
  const head = document.createElement('div');
  head.className = 'd';
  head.textContent = formatCandleDate(c.date, chartData.period);
  tip.replaceChildren(head, row('시가', formatPrice(c.open, d)), row('고가', formatPrice(c.high, d)),
    row('저가', formatPrice(c.low, d)), row('종가', formatPrice(c.close, d)), row('거래량', formatVolume(c.volume)));
  tip.hidden = false;
  // keep the box away from the pointer
  const left = x > chartEl.clientWidth / 2;
  tip.style.left = left ? '8px' : 'auto';
  tip.style.right = left ? 'auto' : '80px';
}

function setChartState(state, status = '') {
  chartEl.dataset.state = state;
  chartEl.dataset.status = String(status);
  chartEl.setAttribute('aria-busy', String(state === 'loading'));
  $('chart-loading').hidden = state !== 'loading';
  $('chart-error').hidden = state !== 'error';
  $('chart-empty').hidden = state !== 'idle';
  $('chart-submit').disabled = state === 'loading';
}

/** No chart to show: the canvas is cleared (a chart of the account or user before must not stay under the notice),
 *  and a chart still on its way is not drawn when it arrives — it was asked for another account, environment or
 *  user than the page now shows. */
function showChartEmpty(text) {
  chartSeq++;
  chartData = null;
  chart.setData(null);
  $('chart-canvas').setAttribute('aria-label', '캔들 차트');
  $('chart-empty').textContent = text;
  $('chart-title').textContent = '종목을 조회하세요';
  $('chart-cache').textContent = '';
  $('chart-timing').textContent = '';
  tip.hidden = true;
  setChartState('idle');
}

/** The exchanges' time zones: a chart's range ends today where the market is (gateway-api.md: the default `end` is
 *  today in the market's own time zone), not in the browser's — a KRX chart is dated in Asia/Seoul wherever it is
 *  looked at. */
const MARKET_ZONE = {
  KRX: 'Asia/Seoul', NAS: 'America/New_York', NYS: 'America/New_York', AMS: 'America/New_York', HKS: 'Asia/Hong_Kong',
  TSE: 'Asia/Tokyo', SHS: 'Asia/Shanghai', SZS: 'Asia/Shanghai', HSX: 'Asia/Ho_Chi_Minh', HNX: 'Asia/Ho_Chi_Minh',
};

function selectedZone() {
  const overseas = document.querySelector('#chart-form input[name=market]:checked')?.value === 'overseas';
  return MARKET_ZONE[overseas ? $('exchange').value : 'KRX'] ?? 'Asia/Seoul';
}

/** Today's date, `YYYY-MM-DD`, in `zone`. */
function todayIn(zone, now = new Date()) {
  const parts = Object.fromEntries(new Intl.DateTimeFormat('en-US', {
    timeZone: zone, year: 'numeric', month: '2-digit', day: '2-digit',
  }).formatToParts(now).map((p) => [p.type, p.value]));
  return `${parts.year}-${parts.month}-${parts.day}`;
}

function addDays(iso, days) {
  return new Date(Date.parse(`${iso}T00:00:00Z`) + days * 86400000).toISOString().slice(0, 10);
}

const PERIOD_SPAN_DAYS = { D: 150, W: 730, M: 1825, Y: 3650 };
const PERIOD_LABEL = { D: '일봉', W: '주봉', M: '월봉', Y: '년봉' };

/** The dates this page filled in itself, last. While the fields still hold them (nobody changed them), they follow
 *  the market's today: after a change of market or exchange, and at each query, so a page left open past midnight
 *  asks for the new day. */
let autoDates = null;
const autoRange = () => autoDates === null || (autoDates.start === $('start').value && autoDates.end === $('end').value);

/** The range for `period` ending at the market's today — or, when the user chose the end, at theirs (which stays
 *  theirs). A monthly range starts on the first of a month, a yearly one on 1 January (the first candle is then a
 *  whole month's or year's). */
function setDefaultRange(period = 'D') {
  const auto = autoRange() || !$('end').value;
  const end = auto ? todayIn(selectedZone()) : $('end').value;
  // Never longer than the gateway allows ([limits] max_range_days), or the default query would be refused.
  let start = addDays(end, -Math.min(PERIOD_SPAN_DAYS[period], config.maxRangeDays || Infinity));
  // rounded up (never longer than the span): to the next 1 January, or the next first of a month
  const [y, m, d] = start.split('-').map(Number);
  let rounded = start;
  if (period === 'Y' && (m !== 1 || d !== 1)) rounded = `${y + 1}-01-01`;
  else if (period === 'M' && d !== 1) {
    rounded = m === 12 ? `${y + 1}-01-01` : `${y}-${String(m + 1).padStart(2, '0')}-01`;
  }
  if (rounded <= end) start = rounded;
  $('end').value = end;
  $('start').value = start;
  autoDates = auto ? { start, end } : { start: null, end: null };
  updateDateLimits();
}

/** The date fields' limits: no end after the market's today, no start after the end. */
function updateDateLimits() {
  const today = todayIn(selectedZone());
  $('end').max = today;
  $('start').max = $('end').value && $('end').value < today ? $('end').value : today;
}

const DAY_MS = 86400000;
const CHART_FIELDS = ['symbol', 'start', 'end'];

/**
 * What is wrong with the chart form, checked before the gateway is asked: the symbol's form, the dates (no end after
 * the market's today, no start after the end, no range longer than the gateway's [limits] max_range_days).
 * @returns {{fields: string[], text: string}[]} the problems, each with the fields it is about (Korean text)
 */
function chartFormProblems() {
  const problems = [];
  const overseas = document.querySelector('#chart-form input[name=market]:checked')?.value === 'overseas';
  const symbol = $('symbol').value.trim().toUpperCase();
  if (!symbol) problems.push({ fields: ['symbol'], text: '종목 코드를 입력하세요' });
  else if (overseas && !/^[A-Z0-9.\-/]{1,16}$/.test(symbol)) {
    problems.push({ fields: ['symbol'], text: '해외 종목 코드는 영문·숫자 1~16자입니다 (예: AAPL, BRK/B)' });
  } else if (!overseas && !/^[0-9A-Z]{6,9}$/.test(symbol)) {
    problems.push({ fields: ['symbol'], text: '국내 종목 코드는 영문·숫자 6~9자입니다 (예: 005930)' });
  }
  const start = $('start').value;
  const end = $('end').value;
  const today = todayIn(selectedZone());
  // a date the field could not read (typed in part) is empty in .value, but the field knows it is bad
  if ($('start').validity.badInput) problems.push({ fields: ['start'], text: '시작일을 바르게 입력하세요' });
  if ($('end').validity.badInput) problems.push({ fields: ['end'], text: '종료일을 바르게 입력하세요' });
  if (end && end > today) problems.push({ fields: ['end'], text: `종료일은 오늘(${today})보다 늦을 수 없습니다` });
  if (start && end && start > end) {
    problems.push({ fields: ['start', 'end'], text: '시작일이 종료일보다 늦습니다' });
  } else if (start && config.maxRangeDays) {
    const days = Math.round((Date.parse(end || today) - Date.parse(start)) / DAY_MS);
    if (days > config.maxRangeDays) {
      const n = (v) => v.toLocaleString('ko-KR');
      problems.push({
        fields: end ? ['start', 'end'] : ['start'],
        text: `조회 기간은 최대 ${n(config.maxRangeDays)}일입니다 (지금 ${n(days)}일)`,
      });
    }
  }
  return problems;
}

/**
 * Checks the chart form and says what is wrong next to it: the fields marked `aria-invalid` and tied to the message
 * (`aria-describedby`), the others cleared. `focus`: the first wrong field takes the focus.
 * @returns {boolean} true when the form can be sent
 */
function checkChartForm({ focus = false } = {}) {
  const problems = chartFormProblems();
  const wrong = new Set(problems.flatMap((p) => p.fields));
  markInvalid(CHART_FIELDS, (id) => wrong.has(id), 'chart-form-error');
  const box = $('chart-form-error');
  setText(box, problems.map((p) => p.text).join(' · '));
  box.hidden = !problems.length;
  if (focus && problems.length) $(CHART_FIELDS.find((id) => wrong.has(id))).focus();
  return !problems.length;
}

function readQuery() {
  if (autoRange()) setDefaultRange($('period').value);
  const f = new FormData($('chart-form'));
  const market = f.get('market');
  return {
    market,
    exchange: market === 'overseas' ? f.get('exchange') : undefined,
    symbol: String(f.get('symbol') ?? '').trim().toUpperCase(),
    period: f.get('period'),
    start: f.get('start') || undefined,
    end: f.get('end') || undefined,
    adjusted: $('adjusted').checked,
  };
}

/** Loads the chart the form asks for, once the form is checked: when something in it is wrong, that is said next to
 *  the form and the gateway is not asked. `focus`: the first wrong field takes the focus (a submit). */
function loadFormChart({ focus = false } = {}) {
  if (!client) return;
  if (autoRange()) setDefaultRange($('period').value);
  if (!checkChartForm({ focus })) return;
  loadChart(readQuery());
}

/** Asks the gateway for the chart of `query` and shows it (or why there is none). */
async function loadChart(query) {
  if (!client || !query.symbol) return;
  const s = client.state();
  if (!s.environments[s.environment].connected) {
    showChartEmpty(`${ENV_LABEL[s.environment]} 계정을 먼저 연결하세요`);
    return;
  }
  const seq = ++chartSeq;
  lastQuery = query;
  // The chart before is not shown as this one while it loads, nor when it fails: cleared (the canvas, its label, the
  // crosshair, the candles ←/→ read), under the title of the symbol asked for.
  const asked = query.market === 'overseas' ? `${query.exchange} ${query.symbol}` : query.symbol;
  chartData = null;
  chart.setData(null);
  tip.hidden = true;
  $('chart-title').textContent = asked;
  $('chart-canvas').setAttribute('aria-label', `${asked} 캔들 차트 — 불러오는 중`);
  $('chart-cache').textContent = '';
  $('chart-timing').textContent = '';
  setChartState('loading');
  try {
    const res = await client.chart(query);
    if (seq !== chartSeq) return;
    chartData = res.data;
    const d = res.data;
    // No candles: the empty notice, under the title of the symbol that was asked for.
    if (!d.candles.length) showChartEmpty('해당 기간에 데이터가 없습니다');
    const title = $('chart-title');
    title.textContent = d.name || d.symbol;
    const code = document.createElement('span');
    code.className = 'code';
    const periodLabel = PERIOD_LABEL[d.period] ?? d.period;
    code.textContent = `${d.name ? `${d.symbol} · ` : ''}${d.exchange} · ${d.currency} · ${periodLabel}`;
    title.append(code);
    $('chart-cache').textContent = `${res.cache ?? '—'}${res.status === 304 ? ' · 304' : ''}${res.cache === 'STALE' ? ' · 캐시된 이전 데이터 (갱신 중이거나 한국투자증권 응답 실패)' : ''}`;
    $('chart-cache').dataset.cache = res.cache ?? '';
    const upstream = /upstream;dur=([\d.]+)/.exec(res.serverTiming ?? '');
    $('chart-timing').textContent = `${Math.round(res.ms)} ms${upstream ? ` (한국투자증권 ${Math.round(Number(upstream[1]))} ms)` : ''}`;
    if (!d.candles.length) {
      chartEl.dataset.status = String(res.status);
      chartEl.dataset.state = 'empty';
      return;
    }
    setChartState('ready', res.status);
    chart.setData(d);
    const first = formatCandleDate(d.candles[0].date, d.period);
    const last = formatCandleDate(d.candles[d.candles.length - 1].date, d.period);
    $('chart-canvas').setAttribute('aria-label', `${d.name || d.symbol} ${periodLabel} 캔들 차트, ${first}부터 `
      + `${last}까지 ${d.candles.length}개`);
    if (res.refreshed) console.info('한국투자증권 접근 토큰을 갱신하고 다시 요청했습니다');
  } catch (err) {
    if (seq !== chartSeq) return;
    chartData = null;
    chart.setData(null);
    tip.hidden = true;
    setChartState('error', err.status || err.code);
    $('chart-title').textContent = asked;
    $('chart-canvas').setAttribute('aria-label', `${asked} 차트를 불러오지 못했습니다`);
    $('chart-cache').textContent = '';
    $('chart-timing').textContent = '';
    // Korean first; KIS's own message (Korean) below it; the server's words (English: the problem's `detail`, the
    // gateway's, or the broker's when the chart's token refresh failed) and the code in "자세한 내용", for whoever
    // reports the problem.
    showError($('chart-error'), err);
  }
}

function onMarketChange() {
  const overseas = document.querySelector('#chart-form input[name=market]:checked').value === 'overseas';
  $('exchange').disabled = !overseas;
  const y = $('period').querySelector('option[value=Y]');
  y.disabled = overseas;
  if (overseas && $('period').value === 'Y') $('period').value = 'M';
  const sym = $('symbol');
  if (overseas && /^\d{6}$/.test(sym.value)) sym.value = 'AAPL';
  if (!overseas && !/^[0-9A-Z]{6,9}$/.test(sym.value)) sym.value = '005930';
  if (autoRange()) setDefaultRange($('period').value);
  updateDateLimits();  // another market, another today
  recheckChartForm();
}

/** The chart form checked again when a field is marked wrong: a mark goes as soon as its field is right. */
function recheckChartForm() {
  if (CHART_FIELDS.some((f) => $(f).getAttribute('aria-invalid') === 'true')) checkChartForm();
}

// ------------------------------------------------------------------------------------------------ start

async function main() {
  setDefaultRange('D');
  $('connect-form').addEventListener('submit', onConnect);
  $('connect-cancel').addEventListener('click', () => { editing = false; render(); $('acct-edit').focus(); });
  $('acct-edit').addEventListener('click', () => {
    editing = true;
    render();
    for (const r of document.querySelectorAll('#connect-form input[name=environment]')) r.checked = r.value === client.environment;
    $('appKey').focus();
  });
  $('acct-disconnect').addEventListener('click', onDisconnect);
  $('acct-refresh-now').addEventListener('click', onRefreshNow);
  for (const env of ENVIRONMENTS) $(`env-${env}`).addEventListener('click', () => switchEnvironment(env));
  document.querySelector('.env-switch').addEventListener('keydown', (e) => {
    const step = { ArrowLeft: -1, ArrowUp: -1, ArrowRight: 1, ArrowDown: 1 }[e.key];
    if (!step || !client) return;
    e.preventDefault();
    const next = ENVIRONMENTS[(ENVIRONMENTS.indexOf(client.environment) + step + ENVIRONMENTS.length) % ENVIRONMENTS.length];
    switchEnvironment(next);
    $(`env-${next}`).focus();
  });
  $('chart-form').addEventListener('submit', (e) => { e.preventDefault(); loadFormChart({ focus: true }); });
  // A field marked wrong is checked again as it changes: its mark goes as soon as it is right.
  for (const id of CHART_FIELDS) {
    $(id).addEventListener('input', () => {
      if (id === 'end') updateDateLimits();
      recheckChartForm();
    });
  }
  for (const r of document.querySelectorAll('#chart-form input[name=market]')) r.addEventListener('change', onMarketChange);
  $('period').addEventListener('change', () => { setDefaultRange($('period').value); recheckChartForm(); });
  $('exchange').addEventListener('change', () => {
    if (autoRange()) setDefaultRange($('period').value);
    updateDateLimits();
    recheckChartForm();
  });
  $('signin').addEventListener('submit', async (e) => {
    e.preventDefault();
    const button = $('signin-button');
    button.disabled = true;
    try {
      if (await signIn($('signin-user').value)) toast(`${user} 사용자로 로그인했습니다`, 'success');
    } catch (err) {
      failed(err);
    } finally {
      button.disabled = false;
    }
  });
  setInterval(() => render(), 30000);

  try {
    const res = await fetch('/ui/config.json', { cache: 'no-store' });
    config = await res.json();
  } catch {
    toast('설정을 불러오지 못했습니다 (/ui/config.json)', 'error', 10000);
    return;
  }
  if (!config.demo) {
    $('signin-label').textContent = 'JWT';
    $('signin-user').value = '';
    $('signin-user').type = 'password';  // a bearer credential: not shown on screen, nor offered for saving
    $('signin-user').autocomplete = 'off';
    $('signin-user').placeholder = 'eyJ…';
  }
  const requested = new URLSearchParams(location.search).get('user');
  const stored = storedJwt();
  try {
    if (stored && (!requested || jwtSubject(stored) === requested)) {
      const refused = await checkJwt({ jwt: stored });
      if (!refused) await startSession(stored);
      else if (refused.signInRequired || refused.code === 'auth_required') {
        forgetJwt();
        showSignInState(config.demo ? '로그인하세요' : 'JWT를 입력하세요', true);
        showChartEmpty('로그인이 필요합니다');
        toastError(refused, { kind: 'warn', ms: 8000 });
      } else {
        // The broker did not refuse the JWT: it did not answer, or failed (a 5xx, its store down). The session goes
        // on with it — its account read is asked again until the broker answers, and a refusal then still asks for
        // a sign-in — rather than throwing a working session away.
        toastError(refused, { suffix: ' — 다시 시도합니다', kind: 'warn', ms: 8000 });
        await startSession(stored);
      }
    } else if (config.demo) await signIn(requested || 'demo');
    else {
      showSignInState('JWT를 입력하세요', false);
      showChartEmpty('로그인이 필요합니다');
    }
  } catch (err) {
    failed(err);
  }
}

/** A failure of the page's own (a Korean `Error`) or a server's (a `KisError`, said in Korean with its words). */
function failed(err) {
  if (err?.code) toastError(err, { ms: 4500 });
  else toast(err?.message ?? String(err), 'error');
}

// A small hook for tests and debugging, only on a page opened with `?debug=1`: the client's state plus the current
// KIS token. Without it no global of the page's holds the token (a script the page did not mean to run — an extension's,
// an injected one — finds nothing to read there).
if (new URLSearchParams(location.search).get('debug') === '1') {
  window.__kisgw = {
    state: () => (client ? { ...client.state(), user, token: client.token() } : null),
    get client() { return client; },
    // the form's query with `q` over it, sent as it is (the form's own checks are not made: the gateway's are tested)
    loadChart: (q) => loadChart(q ? { ...readQuery(), ...q } : readQuery()),
    get lastQuery() { return lastQuery; },
  };
}

main();
