"""kis-client.js on its own, in the real browser (WebCrypto, IndexedDB, localStorage), with a scripted fetch.

The module is imported from the demo's UI origin; the gateway and broker are replaced by a fake `fetch`, so these
checks pin the client's contract: one shared refresh for concurrent kis_token_* 401s and a single retry, jwt_*
answers surface as "sign in again" without retry, ETag reuse, proactive refresh with backoff, encrypted store.
"""
import pytest

from test_web import open_page

SETUP = r"""
window.__t = {};
const mod = await import('/ui/kis-client.js');
const log = [];
const json = (status, body, headers = {}) => new Response(body === null ? null : JSON.stringify(body),
  {status, headers: {'Content-Type': 'application/json', ...headers}});
const future = (s) => new Date(Date.now() + s * 1000).toISOString();
// the broker knows a SANDBOX account only
const account = (u) => u.searchParams.get('environment') === 'SANDBOX'
  ? json(200, {environment: 'SANDBOX', accountNumber: '1234****-01', appKey: 'PSab…wxyz', connected: true})
  : json(404, {code: 'account_not_found', status: 404, detail: 'no account'});
window.__t = {mod, log, json, future, account};
"""

SCENARIOS = {
    'errors_name_the_server': r"""
const {mod, json, future, account} = window.__t;
// A chart the gateway refuses (a bad range) is the gateway's error; then the gateway refuses T1 as expired and the
// broker refuses its refresh (another token request in progress): the broker's.
const fetch = async (url, init = {}) => {
  const u = new URL(url, location.href);
  if (u.pathname === '/api/kis/account') return account(u);
  if (u.pathname === '/api/kis/token/refresh') {
    return json(429, {code: 'kis_rate_limited', status: 429, detail: 'another token request for this app key is in progress'},
                {'Retry-After': '30'});
  }
  if (u.searchParams.get('start') === '19990104') return json(400, {code: 'range_too_large', status: 400, detail: 'at most 3660 days'});
  return json(401, {code: 'kis_token_expired', status: 401, detail: 'expired'});
};
const store = new mod.TokenStore({scope: 'server-' + Math.random()});
await store.save({token: 'T1', expiresAt: future(86400), receivedAt: Date.now(), environment: 'SANDBOX', connected: true});
const c = mod.createKisClient({gatewayUrl: 'http://gw.invalid', getJwt: () => 'J', fetch, store});
await c.init();
const out = [];
for (const q of [{market: 'domestic', symbol: '005930', start: '1999-01-04', end: '2024-01-02'}, {market: 'domestic', symbol: '005930'}]) {
  try { await c.chart(q); out.push(null); } catch (e) { out.push([e.code, e.server]); }
}
c.stop();
return out;
""",
    'concurrent_401_share_one_refresh': r"""
const {mod, json, future, account} = window.__t;
let refreshes = 0; const used = [];
const fetch = async (url, init = {}) => {
  const u = new URL(url, location.href);
  if (u.pathname === '/api/kis/account') return account(u);
  if (u.pathname === '/api/kis/token/refresh') {
    refreshes++; await new Promise(r => setTimeout(r, 80));
    return json(200, {token: 'T2', expiresAt: future(86400), environment: 'SANDBOX'});
  }
  const tok = init.headers['X-KIS-Token']; used.push(tok);
  if (tok === 'T1') return json(401, {code: 'kis_token_expired', status: 401, detail: 'expired'});
  if (init.headers['If-None-Match'] === '"e1"') return new Response(null, {status: 304, headers: {ETag: '"e1"', 'X-Cache': 'HIT'}});
  return json(200, {symbol: u.pathname, candles: [{date: '2024-01-02', open: 1, high: 2, low: 1, close: 2, volume: 3}]},
              {ETag: '"e1"', 'X-Cache': 'MISS'});
};
const store = new mod.TokenStore({scope: 'contract-' + Math.random()});
await store.save({token: 'T1', expiresAt: future(3600), receivedAt: Date.now(), environment: 'SANDBOX', connected: true});
const c = mod.createKisClient({gatewayUrl: 'http://gw.invalid', getJwt: () => 'J', fetch, store});
await c.init();
const rs = await Promise.all(['005930', '000660', '035420'].map(symbol => c.chart({market: 'domestic', symbol})));
const again = await c.chart({market: 'domestic', symbol: '005930'});
c.stop();
return {refreshes, used, statuses: rs.map(r => r.status), refreshed: rs.map(r => r.refreshed),
        again: [again.status, again.data.candles.length, again.cache], token: c.token()};
""",
    'jwt_codes_sign_in_without_retry': r"""
const {mod, json, future, account} = window.__t;
let refreshes = 0, charts = 0, signIns = 0;
const fetch = async (url, init = {}) => {
  const u = new URL(url, location.href);
  if (u.pathname === '/api/kis/account') return account(u);
  if (u.pathname === '/api/kis/token/refresh') { refreshes++; return json(200, {token: 'T9', expiresAt: future(86400)}); }
  charts++;
  return json(401, {code: 'jwt_expired', status: 401, detail: 'JWT expired'});
};
const store = new mod.TokenStore({scope: 'contract-' + Math.random()});
await store.save({token: 'T1', expiresAt: future(3600), receivedAt: Date.now(), environment: 'SANDBOX', connected: true});
const c = mod.createKisClient({gatewayUrl: 'http://gw.invalid', getJwt: () => 'J', fetch, store,
                                onSignInRequired: () => signIns++});
await c.init();
let error = null;
try { await c.chart({market: 'overseas', exchange: 'NAS', symbol: 'AAPL'}); } catch (e) { error = [e.code, e.signInRequired]; }
const afterOne = signIns;
// A second refusal is not told again; an answer that takes the JWT (a new one from getJwt) re-arms it.
try { await c.chart({market: 'overseas', exchange: 'NAS', symbol: 'MSFT'}); } catch (e) {}
const afterTwo = signIns, stillRequired = c.state().signInRequired;
await c.refresh('SANDBOX');
const reArmed = !c.state().signInRequired;
try { await c.chart({market: 'overseas', exchange: 'NAS', symbol: 'AAPL'}); } catch (e) {}
c.stop();
return {refreshes, charts, signIns: [afterOne, afterTwo, signIns], error, stillRequired, reArmed,
        signInRequired: c.state().signInRequired};
""",
    'rate_limited_waits_then_gives_up': r"""
const {mod, json, future, account} = window.__t;
const times = []; let limitedFor = 1;
const fetch = async (url, init = {}) => {
  const u = new URL(url, location.href);
  if (u.pathname === '/api/kis/account') return account(u);
  times.push(Date.now());
  if (times.length <= limitedFor) {
    return json(429, {code: 'rate_limited', status: 429, detail: 'queue full', retry_after: 1}, {'Retry-After': '1'});
  }
  return json(200, {symbol: u.pathname, candles: []}, {ETag: '"r1"', 'X-Cache': 'MISS'});
};
const store = new mod.TokenStore({scope: 'contract-' + Math.random()});
await store.save({token: 'T1', expiresAt: future(3600), receivedAt: Date.now(), environment: 'SANDBOX', connected: true});
const c = mod.createKisClient({gatewayUrl: 'http://gw.invalid', getJwt: () => 'J', fetch, store});
await c.init();
const ok = await c.chart({market: 'domestic', symbol: '005930'});
const waitedMs = times[1] - times[0];
times.length = 0; limitedFor = 10;
let error = null;
try { await c.chart({market: 'domestic', symbol: '000660'}); } catch (e) { error = [e.code, e.retryAfter]; }
c.stop();
return {status: ok.status, waitedMs, attemptsWhenAlwaysLimited: times.length, error};
""",
    'proactive_refresh_with_backoff': r"""
const {mod, json, future, account} = window.__t;
let calls = 0; const seen = [];
const fetch = async (url) => {
  const u = new URL(url, location.href);
  if (u.pathname === '/api/kis/account') return account(u);
  if (u.pathname === '/api/kis/token/refresh') {
    calls++;
    if (calls <= 2) return json(502, {code: 'upstream_error', status: 502, detail: 'KIS is down'});
    return json(200, {token: 'FRESH', expiresAt: future(86400)});
  }
  return json(404, {code: 'not_found'});
};
const store = new mod.TokenStore({scope: 'contract-' + Math.random()});
await store.save({token: 'OLD', expiresAt: future(1.0), receivedAt: Date.now(), environment: 'SANDBOX', connected: true});
const c = mod.createKisClient({gatewayUrl: 'http://gw.invalid', getJwt: () => 'J', fetch, store,
  minRefreshDelayMs: 0, backoffBaseMs: 100, backoffMaxMs: 1000,
  onStateChange: (s) => seen.push(s.environments.SANDBOX.refreshFailures)});
const t0 = Date.now();
await c.init();
while (c.token() !== 'FRESH' && Date.now() - t0 < 8000) await new Promise(r => setTimeout(r, 20));
c.stop();
return {calls, maxFailures: Math.max(...seen), token: c.token(), failuresNow: c.state().environments.SANDBOX.refreshFailures,
        status: c.state().environments.SANDBOX.status};
""",
    'new_browser_gets_token_with_retries': r"""
const {mod, json, future, account} = window.__t;
let calls = 0; const seen = [];
const fetch = async (url) => {
  const u = new URL(url, location.href);
  if (u.pathname === '/api/kis/account') {
    const r = await account(u);
    if (r.status !== 200) return r;
    return json(200, {environment: 'SANDBOX', accountNumber: '1234****-01', appKey: 'PSab…wxyz', connected: false});
  }
  if (u.pathname === '/api/kis/token/refresh') {
    calls++;
    if (calls <= 2) return json(429, {code: 'kis_rate_limited', status: 429, detail: 'KIS allows one token a minute'});
    return json(200, {token: 'NEW', expiresAt: future(86400)});
  }
  return json(404, {code: 'not_found'});
};
const store = new mod.TokenStore({scope: 'contract-' + Math.random()});
const c = mod.createKisClient({gatewayUrl: 'http://gw.invalid', getJwt: () => 'J', fetch, store,
  minRefreshDelayMs: 0, backoffBaseMs: 100, backoffMaxMs: 1000,
  onStateChange: (s) => seen.push(s.environments.SANDBOX.status + ':' + s.environments.SANDBOX.refreshFailures)});
const t0 = Date.now();
await c.init();
while (c.token() !== 'NEW' && Date.now() - t0 < 8000) await new Promise(r => setTimeout(r, 20));
c.stop();
const st = c.state().environments;
return {calls, token: c.token(), sawExpiredFailing: seen.includes('expired:2'), status: st.SANDBOX.status,
        account: st.SANDBOX.account, live: st.LIVE.status};
""",
    'account_read_retried_until_the_broker_answers': r"""
const {mod, json, future} = window.__t;
let reads = 0, liveReads = 0;
const fetch = async (url) => {
  const u = new URL(url, location.href);
  if (u.pathname === '/api/kis/account') {
    if (u.searchParams.get('environment') === 'LIVE') {
      liveReads++;
      return json(404, {code: 'account_not_found', status: 404, detail: 'no account'});
    }
    reads++;
    if (reads <= 2) return json(503, {code: 'store_unavailable', status: 503, detail: 'the token store is down'});
    return json(200, {environment: 'SANDBOX', accountNumber: '1234****-01', appKey: 'PSab…wxyz', connected: true});
  }
  if (u.pathname === '/api/kis/token/refresh') return json(200, {token: 'NEW', expiresAt: future(86400)});
  return json(404, {code: 'not_found'});
};
const store = new mod.TokenStore({scope: 'contract-' + Math.random()});
const c = mod.createKisClient({gatewayUrl: 'http://gw.invalid', getJwt: () => 'J', fetch, store, backoffBaseMs: 200});
const s0 = (await c.init()).environments;
const first = [s0.SANDBOX.status, Boolean(s0.SANDBOX.syncError), s0.LIVE.syncError];
const t0 = Date.now();
while (c.token() !== 'NEW' && Date.now() - t0 < 8000) await new Promise(r => setTimeout(r, 20));
const waited = Date.now() - t0;
const st = c.state().environments;
await new Promise(r => setTimeout(r, 1000));  // nothing asks again once it answered
c.stop();
return {first, reads, liveReads, waited, status: st.SANDBOX.status, syncError: st.SANDBOX.syncError, token: c.token()};
""",
    'non_json_error_body_is_not_shown': r"""
const {mod, json, future, account} = window.__t;
const fetch = async (url) => {
  const u = new URL(url, location.href);
  if (u.pathname === '/api/kis/account') return account(u);
  if (u.pathname === '/api/kis/token/refresh') return json(200, {token: 'T1', expiresAt: future(86400)});
  return new Response('<html><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>',
                      {status: 502, headers: {'Content-Type': 'text/html'}});
};
const store = new mod.TokenStore({scope: 'contract-' + Math.random()});
await store.save({token: 'T1', expiresAt: future(3600), receivedAt: Date.now(), environment: 'SANDBOX', connected: true});
const c = mod.createKisClient({gatewayUrl: 'http://gw.invalid', getJwt: () => 'J', fetch, store});
await c.init();
let e = null;
try { await c.chart({market: 'domestic', symbol: '005930'}); } catch (err) { e = {message: err.message, code: err.code, status: err.status}; }
c.stop();
return e;
""",
    'first_key_race': r"""
const {mod, future} = window.__t;
// A first visit: no key yet. Several tabs (here, stores) create one at the same moment; every one must end up
// with the key that stays stored, or what it saved cannot be read after a reload.
await new Promise((resolve, reject) => {
  const r = indexedDB.open('kisgw', 1);
  r.onupgradeneeded = () => r.result.createObjectStore('keys');
  r.onsuccess = () => { const tx = r.result.transaction('keys', 'readwrite'); tx.objectStore('keys').clear();
                        tx.oncomplete = () => { r.result.close(); resolve(); }; tx.onerror = reject; };
  r.onerror = reject;
});
// Every tab finds no key; the later ones finish generating theirs only after the first has stored its own and read
// it back (each generation after the first takes 100 ms longer than the one before).
const generateKey = crypto.subtle.generateKey;
let generated = 0;
crypto.subtle.generateKey = async (...args) => {
  const key = await generateKey.apply(crypto.subtle, args);
  await new Promise((r) => setTimeout(r, 100 * generated++));
  return key;
};
const scopes = Array.from({length: 4}, (_, i) => 'race-' + i + '-' + Math.random());
const stores = scopes.map((scope) => new mod.TokenStore({scope}));
try { await Promise.all(stores.map((s) => s.key())); } finally { delete crypto.subtle.generateKey; }
await Promise.all(stores.map((s, i) => s.save({token: 'T' + i, expiresAt: future(3600), receivedAt: Date.now(),
                                                 environment: 'LIVE', connected: true})));
// After a reload: new stores read the key from IndexedDB.
const loaded = await Promise.all(scopes.map((scope) => new mod.TokenStore({scope}).load('LIVE')));
return loaded.map((e) => e && e.token);
""",
    'encrypted_store': r"""
const {mod, future} = window.__t;
const scope = 'contract-' + Math.random();
const s1 = new mod.TokenStore({scope});
await s1.save({token: 'SECRET-TOKEN-1', expiresAt: future(3600), receivedAt: Date.now(), environment: 'LIVE', connected: true});
const raw = localStorage.getItem(s1.storageKey('LIVE'));
const s2 = new mod.TokenStore({scope});
const loaded = await s2.load('LIVE');
// tampered ciphertext is discarded
const parsed = JSON.parse(raw); const ct = atob(parsed.ct);
parsed.ct = btoa(String.fromCharCode(ct.charCodeAt(0) ^ 1) + ct.slice(1));
localStorage.setItem(s1.storageKey('LIVE'), JSON.stringify(parsed));
const tampered = await new mod.TokenStore({scope}).load('LIVE');
const removedAfterTamper = localStorage.getItem(s1.storageKey('LIVE')) === null;
// an entry moved to another scope does not decrypt (the storage key is authenticated)
await s1.save({token: 'SECRET-TOKEN-2', expiresAt: future(3600), receivedAt: Date.now(), environment: 'LIVE', connected: true});
const other = new mod.TokenStore({scope: scope + 'x'});
localStorage.setItem(other.storageKey('LIVE'), localStorage.getItem(s1.storageKey('LIVE')));
const moved = await other.load('LIVE');
// expired entries are discarded
await s1.save({token: 'OLD', expiresAt: new Date(Date.now() - 1000).toISOString(), receivedAt: 0, environment: 'SANDBOX', connected: true});
const expired = await new mod.TokenStore({scope}).load('SANDBOX');
const key = await new Promise((resolve, reject) => {
  const r = indexedDB.open('kisgw', 1);
  r.onsuccess = () => { const g = r.result.transaction('keys').objectStore('keys').get('token-store-aes-gcm-v1');
                        g.onsuccess = () => { resolve(g.result); r.result.close(); }; g.onerror = reject; };
  r.onerror = reject;
});
return {plainInStorage: raw.includes('SECRET-TOKEN'), loaded: loaded && loaded.token, tampered, removedAfterTamper,
        moved, expired, keyType: key && key.type, extractable: key && key.extractable, algorithm: key && key.algorithm.name,
        persistent: await s1.persistent()};
""",
}


def run(browser, body):
    script = 'const done = arguments[arguments.length - 1];\n(async () => {{' + SETUP + '}\n' + body + \
             '})().then(done, (e) => done({error: String(e && e.stack || e)}));'
    result = browser.execute_async_script(script)
    assert not (isinstance(result, dict) and 'error' in result and isinstance(result['error'], str)), result
    return result


@pytest.fixture
def page(browser, demo):
    open_page(browser, demo, 'module')
    return browser


@pytest.mark.parametrize('code', ['kis_token_expired', 'kis_token_invalid'])
def test_concurrent_kis_401s_share_one_refresh_and_etag_is_reused(page, code):
    # web-client.md: either KIS-token code is one shared refresh and one retry.
    r = run(page, SCENARIOS['concurrent_401_share_one_refresh'].replace("'kis_token_expired'", f"'{code}'"))
    assert r['refreshes'] == 1, r
    assert sorted(r['used']) == ['T1'] * 3 + ['T2'] * 4, r
    assert r['statuses'] == [200, 200, 200] and all(r['refreshed']), r
    assert r['again'] == [304, 1, 'HIT'], r
    assert r['token'] == 'T2'


def test_errors_name_the_server_that_answered(page):
    # A chart's error may be the broker's (its token refresh failed): the page labels the detail with its server.
    r = run(page, SCENARIOS['errors_name_the_server'])
    assert r == [['range_too_large', 'gateway'], ['kis_rate_limited', 'broker']], r


def test_jwt_codes_ask_to_sign_in_and_do_not_retry(page):
    r = run(page, SCENARIOS['jwt_codes_sign_in_without_retry'])
    assert r == {'refreshes': 1, 'charts': 3, 'signIns': [1, 1, 2], 'error': ['jwt_expired', True], 'stillRequired': True,
                 'reArmed': True, 'signInRequired': True}, r


def test_rate_limited_answers_are_waited_out_twice_then_shown(page):
    page.set_script_timeout(20)
    r = run(page, SCENARIOS['rate_limited_waits_then_gives_up'])
    assert r['status'] == 200, r
    assert 1000 <= r['waitedMs'] < 2000, r      # Retry-After: 1, plus jitter
    assert r['attemptsWhenAlwaysLimited'] == 3, r
    assert r['error'] == ['rate_limited', 1], r


def test_proactive_refresh_backs_off_and_shows_failures(page):
    page.set_script_timeout(20)
    r = run(page, SCENARIOS['proactive_refresh_with_backoff'])
    assert r['token'] == 'FRESH', r
    assert r['calls'] == 3 and r['maxFailures'] == 2 and r['failuresNow'] == 0, r
    assert r['status'] == 'connected'


def test_token_store_is_encrypted_under_a_non_extractable_key(page):
    r = run(page, SCENARIOS['encrypted_store'])
    assert r['persistent'] is True
    assert r['plainInStorage'] is False
    assert r['loaded'] == 'SECRET-TOKEN-1'
    assert r['tampered'] is None and r['removedAfterTamper'] is True
    assert r['moved'] is None
    assert r['expired'] is None
    assert (r['keyType'], r['extractable'], r['algorithm']) == ('secret', False, 'AES-GCM')


def test_tabs_creating_the_first_key_at_once_all_keep_the_stored_one(page):
    assert run(page, SCENARIOS['first_key_race']) == [f'T{i}' for i in range(4)]


def test_connected_account_without_local_token_gets_one_with_backoff(page):
    page.set_script_timeout(20)
    r = run(page, SCENARIOS['new_browser_gets_token_with_retries'])
    assert r == {'calls': 3, 'token': 'NEW', 'sawExpiredFailing': True, 'status': 'connected',
                 'account': '1234****-01', 'live': 'disconnected'}, r


def test_account_read_the_broker_failed_is_said_and_asked_again_with_backoff(page):
    page.set_script_timeout(20)
    r = run(page, SCENARIOS['account_read_retried_until_the_broker_answers'])
    # Failed at first (503): said in the state, not taken for "no account"; the account with no answer is not retried.
    assert r['first'] == ['disconnected', True, None], r
    # Asked again after 200 ms, then 400 ms: connected at the third read, with a token, and no read after it.
    assert r['reads'] == 3 and r['liveReads'] == 1, r
    assert 550 <= r['waited'] < 4000, r
    assert (r['status'], r['syncError'], r['token']) == ('connected', None, 'NEW'), r


def test_an_error_page_that_is_not_json_is_told_in_korean_not_shown(page):
    """A proxy's HTML error page in front of the gateway: the user is told in Korean what happened, not shown the
    page's markup."""
    r = run(page, SCENARIOS['non_json_error_body_is_not_shown'])
    assert r == {'message': '서버가 일시적으로 응답하지 않습니다 (HTTP 502)', 'code': 'http_502', 'status': 502}, r


def test_retry_after_is_read_as_seconds_or_as_an_http_date(page):
    """RFC 9110 §10.2.3: Retry-After is delay-seconds or an HTTP-date; a date is a wait counted from now (it read as
    NaN before, and the page then neither waited nor said how long to wait)."""
    r = run(page, r"""
const {mod} = window.__t;
const now = Date.parse('2026-11-28T01:00:00Z');
return [mod.retryAfterSeconds('5', now), mod.retryAfterSeconds(' 0 ', now),
        mod.retryAfterSeconds('Sat, 28 Nov 2026 01:00:30 GMT', now), mod.retryAfterSeconds('Sat, 28 Nov 2026 00:59:00 GMT', now),
        mod.retryAfterSeconds('soon', now), mod.retryAfterSeconds(null, now), mod.retryAfterSeconds('', now)];
""")
    assert r == [5, 0, 30, 0, None, None, None], r


def test_price_axis_labels_are_distinct_for_a_flat_krw_chart_and_fine_overseas_steps(page):
    """A flat KRW chart (one price) spans ±1 won: its axis must not step by 0.5 and label 78,200 twice; an overseas
    chart whose range needs steps finer than its prices' digits labels each step with the digits it needs."""
    r = run(page, r"""
const {CandleChart} = await import('/ui/chart.js');
const labels = (data) => {
  const canvas = document.createElement('canvas');
  canvas.style.width = '800px'; canvas.style.height = '400px';
  document.body.append(canvas);
  const ctx = canvas.getContext('2d');
  const seen = [];
  const fill = ctx.fillText.bind(ctx);
  ctx.fillText = (text, x, y) => { seen.push([String(text), x]); fill(text, x, y); };
  new CandleChart(canvas).setData(data);
  canvas.remove();
  const right = Math.max(...seen.map(([, x]) => x));
  return seen.filter(([t, x]) => x === right && /^[\d,.]+$/.test(t)).map(([t]) => t);
};
const candle = (date, o, h, l, c) => ({date, open: o, high: h, low: l, close: c, volume: 1000});
return {
  krw: labels({currency: 'KRW', candles: [candle('2024-01-02', 78200, 78200, 78200, 78200)]}),
  usd: labels({currency: 'USD', candles: [candle('2024-01-02', 10.5, 10.51, 10.5, 10.5)]}),
};
""")
    for name, shown in r.items():
        assert shown and len(shown) == len(set(shown)), (name, shown)
    assert all('.' not in t for t in r['krw']), r['krw']
