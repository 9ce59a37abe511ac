/**
 * kisgw browser client: KIS token store and direct chart client.
 *
 * Usable on its own by an app that brings its own JWT:
 *
 * ```js
 * import { createKisClient } from './kis-client.js';
 * const kis = createKisClient({
 *   gatewayUrl: 'https://gw.example.com',
 *   brokerUrl: '',                        // same origin as the page
 *   getJwt: () => session.jwt,            // your app's session token (string or Promise)
 *   onSignInRequired: () => showLogin(),  // the JWT was refused (jwt_* codes)
 *   onStateChange: (s) => render(s),
 *   scope: session.userId,                // separates stored tokens per user
 * });
 * await kis.init();
 * await kis.connect({ environment: 'SANDBOX', appKey, appSecret, accountNumber: '12345678-01' });
 * const res = await kis.chart({ market: 'domestic', symbol: '005930', period: 'D' });
 * console.log(res.data.candles.length, res.cache, res.ms);
 * ```
 *
 * Tokens are persisted in localStorage encrypted with AES-GCM under a non-extractable WebCrypto key kept in
 * IndexedDB; where either is missing (e.g. an insecure context) tokens are kept in memory only.
 *
 * @module kis-client
 */

/** @typedef {'SANDBOX'|'LIVE'} Environment */

/**
 * @typedef {object} TokenEntry
 * @property {string} token         KIS access token
 * @property {string} expiresAt     ISO 8601 expiry from the broker
 * @property {number} receivedAt    ms since epoch when this client obtained it
 * @property {Environment} environment
 * @property {string} [account]     masked account number (1234****-01)
 * @property {boolean} connected
 */

/**
 * @typedef {object} EnvState
 * @property {'connected'|'expired'|'disconnected'} status
 * @property {boolean} connected     an account is connected for this environment
 * @property {string|null} expiresAt
 * @property {string|null} account   masked account number
 * @property {string|null} appKey    masked app key
 * @property {boolean} refreshing
 * @property {number} refreshFailures consecutive failed proactive refreshes
 * @property {string|null} nextRefreshAt ISO time of the next proactive refresh
 * @property {string|null} lastError  the last failed refresh's message (the server's own words when it answered)
 * @property {{code: string, status: number, message: string, server: string|null, kisCode: string|null,
 *             kisMessage: string|null}|null} lastFailure  that failure's code and origin, for a page to say it in
 *                                   its own language and keep the server's words as detail
 * @property {boolean} tokenRefused  the gateway refused the current token before its stated expiry (KIS ended it
 *                                   early, or it was revoked): `expiresAt` is no longer when it ends
 * @property {string|null} syncError  the broker could not say what account this environment has (it did not answer,
 *                                    or failed); asked again with a backoff until it answers
 */

/**
 * @typedef {object} ClientState
 * @property {Environment} environment  the selected environment
 * @property {boolean} signInRequired   the JWT was refused; call `signedIn()` after obtaining a new one
 * @property {{SANDBOX: EnvState, LIVE: EnvState}} environments
 */

/**
 * @typedef {object} ChartQuery
 * @property {'domestic'|'overseas'} market
 * @property {string} [exchange]   NAS NYS AMS HKS TSE SHS SZS HSX HNX (overseas only)
 * @property {string} symbol
 * @property {'D'|'W'|'M'|'Y'} [period]
 * @property {string} [start]      YYYY-MM-DD or YYYYMMDD
 * @property {string} [end]
 * @property {boolean} [adjusted]
 * @property {Environment} [environment] defaults to the selected one
 */

/**
 * @typedef {object} ChartResult
 * @property {object} data          the gateway's JSON body (candles ascending)
 * @property {number} status        200, or 304 when the kept body was reused
 * @property {string|null} cache    X-Cache: HIT | MISS | STALE
 * @property {string|null} serverTiming
 * @property {string|null} etag
 * @property {number} ms            wall time of the request(s) in ms
 * @property {boolean} refreshed    a KIS token refresh happened on the way
 * @property {string} url
 */

export const ENVIRONMENTS = /** @type {const} */ (['SANDBOX', 'LIVE']);
export const EXCHANGES = /** @type {const} */ (['NAS', 'NYS', 'AMS', 'HKS', 'TSE', 'SHS', 'SZS', 'HSX', 'HNX']);

/** An error from the broker or the gateway (problem+json), or a network failure (`code: 'network'`). */
export class KisError extends Error {
  /**
   * @param {string} message  human-readable, the server's own message when it gave one
   * @param {{status?: number, code?: string, title?: string, retryAfter?: number|null, body?: any,
   *          server?: 'broker'|'gateway'|null}} [info]
   */
  constructor(message, info = {}) {
    super(message);
    this.name = 'KisError';
    this.status = info.status ?? 0;
    this.code = info.code ?? 'error';
    this.title = info.title ?? '';
    this.retryAfter = info.retryAfter ?? null;
    this.body = info.body ?? null;
    /** Which server answered (or could not be reached): a chart's error may be the broker's (its token refresh). */
    this.server = info.server ?? null;
  }
  /** True when the user must sign in again (the JWT was refused). */
  get signInRequired() { return this.code.startsWith('jwt_') || this.code === 'sign_in_required'; }
}

/** What a page needs of a failed refresh to describe it (`EnvState.lastFailure`). */
function failureOf(err) {
  return {
    code: err?.code ?? 'error', status: err?.status ?? 0, message: err?.message ?? String(err),
    server: err?.server ?? null, kisCode: err?.body?.kis_msg_cd ?? null, kisMessage: err?.body?.kis_msg1 ?? null,
  };
}

const KIS_TOKEN_CODES = new Set(['kis_token_expired', 'kis_token_invalid']);

// ---------------------------------------------------------------------------------------------------------------
// Encrypted token store

const DB_NAME = 'kisgw';
const DB_STORE = 'keys';
const KEY_ID = 'token-store-aes-gcm-v1';

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(DB_STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function idbRequest(db, mode, fn) {
  return new Promise((resolve, reject) => {
    const tx = db.transaction(DB_STORE, mode);
    const req = fn(tx.objectStore(DB_STORE));
    tx.oncomplete = () => resolve(req.result);
    tx.onerror = () => reject(req.error || tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

/** The AES-GCM key, created non-extractable on first use and kept (as a CryptoKey) in IndexedDB. */
async function loadOrCreateKey() {
  const db = await openDb();
  try {
    let key = await idbRequest(db, 'readonly', (s) => s.get(KEY_ID));
    if (!key) {
      key = await crypto.subtle.generateKey({ name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']);
      // `add`, not `put`: another tab may have stored its key since we looked, and may already have encrypted
      // entries under it; the first key stored stays, and everyone uses it.
      try {
        await idbRequest(db, 'readwrite', (s) => s.add(key, KEY_ID));
      } catch (err) {
        if (err?.name !== 'ConstraintError') throw err;
      }
      key = (await idbRequest(db, 'readonly', (s) => s.get(KEY_ID))) || key;
    }
    return key;
  } finally {
    db.close();
  }
}

/**
 * `globalThis[name]` (`localStorage`, `sessionStorage`), or null where the browser refuses this page storage: with
 * site data blocked, even reading the property throws (`SecurityError`), which would stop the whole page.
 * @param {'localStorage'|'sessionStorage'} name
 * @returns {Storage|null}
 */
export function storageOrNull(name) {
  try {
    const storage = globalThis[name];
    storage?.getItem('kisgw.probe');
    return storage ?? null;
  } catch {
    return null;
  }
}

const b64 = (bytes) => btoa(String.fromCharCode(...bytes));
const unb64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));

/**
 * Token entries per environment, persisted in localStorage as AES-GCM ciphertext (the storage key is bound as
 * additional data, so an entry cannot be moved to another user or environment). Falls back to memory only.
 */
export class TokenStore {
  /** @param {{scope?: string, storage?: Storage|null}} [options] */
  constructor({ scope = 'default', storage = storageOrNull('localStorage') } = {}) {
    this.scope = scope;
    this.storage = storage;
    /** @type {Map<string, TokenEntry>} */
    this.memory = new Map();
    this.keyPromise = null;
  }

  storageKey(env) { return `kisgw.v1.${encodeURIComponent(this.scope)}.${env}`; }

  /** @returns {Promise<CryptoKey|null>} */
  key() {
    if (!this.keyPromise) {
      const usable = this.storage && globalThis.indexedDB && globalThis.crypto?.subtle;
      this.keyPromise = usable ? loadOrCreateKey().catch(() => null) : Promise.resolve(null);
    }
    return this.keyPromise;
  }

  /** True when entries survive a reload (the encrypted store works here). */
  async persistent() { return (await this.key()) !== null; }

  /**
   * The entry for `env`, or null. Expired entries and entries that cannot be decrypted are deleted.
   * @param {Environment} env
   * @returns {Promise<TokenEntry|null>}
   */
  async load(env) {
    let entry = this.memory.get(env) ?? null;
    if (!entry) {
      const key = await this.key();
      let raw = null;
      try { raw = key && this.storage.getItem(this.storageKey(env)); } catch { /* refused since the page loaded */ }
      if (raw) {
        try {
          const { iv, ct } = JSON.parse(raw);
          const plain = await crypto.subtle.decrypt(
            { name: 'AES-GCM', iv: unb64(iv), additionalData: new TextEncoder().encode(this.storageKey(env)) },
            key, unb64(ct));
          entry = JSON.parse(new TextDecoder().decode(plain));
          if (!entry || typeof entry.token !== 'string' || entry.environment !== env) entry = null;
        } catch {
          entry = null;
        }
        if (!entry) await this.remove(env);
      }
    }
    if (entry && !(Date.parse(entry.expiresAt) > Date.now())) {
      await this.remove(env);
      return null;
    }
    if (entry) this.memory.set(env, entry);
    return entry;
  }

  /** @param {TokenEntry} entry */
  async save(entry) {
    this.memory.set(entry.environment, entry);
    const key = await this.key();
    if (!key) return;
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const ct = new Uint8Array(await crypto.subtle.encrypt(
      { name: 'AES-GCM', iv, additionalData: new TextEncoder().encode(this.storageKey(entry.environment)) },
      key, new TextEncoder().encode(JSON.stringify(entry))));
    try {
      this.storage.setItem(this.storageKey(entry.environment), JSON.stringify({ v: 1, iv: b64(iv), ct: b64(ct) }));
    } catch {
      // Storage full, or refused since the page loaded: the entry is kept in memory, for this page only.
    }
  }

  /**
   * The environment whose entry another tab of this scope changed (a `storage` event of this store's storage), or
   * null: this page's memory copy of it is dropped, so that the next ``load`` reads what the other tab stored.
   * @param {StorageEvent} event
   * @returns {Environment|null}
   */
  changedElsewhere(event) {
    if (!this.storage || event.storageArea !== this.storage) return null;
    const env = ENVIRONMENTS.find((e) => this.storageKey(e) === event.key);
    if (!env) return null;
    this.memory.delete(env);
    return env;
  }

  /** @param {Environment} env */
  async remove(env) {
    this.memory.delete(env);
    try { this.storage?.removeItem(this.storageKey(env)); } catch { /* storage unavailable */ }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers

async function readBody(response) {
  const text = await response.text();
  if (!text) return null;
  // A body that is not JSON (a proxy's HTML error page) is kept for debugging, never shown as the message.
  try { return JSON.parse(text); } catch { return { raw: text.slice(0, 2000) }; }
}

/** What to tell the user of an answer with no problem body of its own (a proxy's error page, an empty body). */
function statusMessage(status) {
  if (status === 502 || status === 503 || status === 504) return `서버가 일시적으로 응답하지 않습니다 (HTTP ${status})`;
  if (status >= 500) return `서버 오류가 발생했습니다 (HTTP ${status})`;
  return `요청이 거절되었습니다 (HTTP ${status})`;
}

/** The error of an answer `server` ('broker' or 'gateway') gave. */
function errorFrom(response, body, server) {
  const message = body?.message || body?.detail || body?.title || statusMessage(response.status);
  const retry = response.headers.get('Retry-After');
  return new KisError(message, {
    status: response.status,
    code: body?.code || `http_${response.status}`,
    title: body?.title,
    retryAfter: retryAfterSeconds(retry),
    body,
    server,
  });
}

/** `Retry-After` in seconds: delay-seconds, or an HTTP-date (RFC 9110 §10.2.3) counted from now; null when absent or
 *  unreadable. */
export function retryAfterSeconds(value, now = Date.now()) {
  if (value == null || value.trim() === '') return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - now) / 1000));
}

/** A request that got no answer, naming the server it was for: the broker (same origin) or the gateway (CORS). */
function networkError(error, server) {
  const message = server === 'gateway'
    ? '게이트웨이에 연결할 수 없습니다 (네트워크 오류이거나 이 페이지의 출처가 허용되지 않음)'
    : '브로커에 연결할 수 없습니다 (네트워크 오류)';
  return new KisError(message, { code: 'network', body: String(error), server });
}

/**
 * Asks the broker whether it takes `jwt` (`GET /api/kis/account`): null when it does (an account or none yet), else
 * the `KisError` it answered — a `jwt_*` code when it refused the JWT, `network` when it could not be reached.
 * For a page that must know a JWT works before it replaces a session with it.
 */
export async function checkJwt({ brokerUrl = '', jwt, fetch = (...args) => globalThis.fetch(...args) }) {
  let response;
  try {
    response = await fetch(`${brokerUrl}/api/kis/account?environment=SANDBOX`, {
      headers: { Authorization: `Bearer ${jwt}` }, cache: 'no-store',
    });
  } catch (e) {
    return networkError(e, 'broker');
  }
  if (response.ok || response.status === 404) return null;
  return errorFrom(response, await readBody(response), 'broker');
}

function normalizeDate(d) {
  if (!d) return '';
  return String(d).replaceAll('-', '');
}

// ---------------------------------------------------------------------------------------------------------------
// The client

/**
 * Creates a client.
 *
 * @param {object} options
 * @param {string} options.gatewayUrl  e.g. `http://127.0.0.1:8000` (chart calls go there, cross-origin)
 * @param {string} [options.brokerUrl] base of `/api/kis/*`; '' = the page's own origin
 * @param {() => (string|null|Promise<string|null>)} options.getJwt  the user's current JWT
 * @param {(error: KisError) => void} [options.onSignInRequired]  called when a `jwt_*` answer says sign in again
 * @param {(state: ClientState) => void} [options.onStateChange]
 * @param {string} [options.scope]  a per-user name for the token store (e.g. the JWT `sub`)
 * @param {Environment} [options.environment]  initially selected environment (SANDBOX)
 * @param {number} [options.refreshAt]  fraction of a token's life after which it is refreshed (0.9)
 * @param {number} [options.backoffBaseMs]  first retry delay of a failing proactive refresh (2000)
 * @param {number} [options.backoffMaxMs]   longest retry delay (300000)
 * @param {number} [options.minRefreshDelayMs] never schedule a proactive refresh sooner than this (15000)
 * @param {typeof fetch} [options.fetch]
 * @param {TokenStore} [options.store]
 */
export function createKisClient(options) {
  const {
    gatewayUrl,
    brokerUrl = '',
    getJwt,
    onSignInRequired = () => {},
    onStateChange = () => {},
    refreshAt = 0.9,
    backoffBaseMs = 2000,
    backoffMaxMs = 300000,
    minRefreshDelayMs = 15000,
  } = options;
  const doFetch = options.fetch ?? ((...args) => globalThis.fetch(...args));
  const store = options.store ?? new TokenStore({ scope: options.scope ?? 'default' });
  const gateway = String(gatewayUrl).replace(/\/+$/, '');
  const broker = String(brokerUrl).replace(/\/+$/, '');

  let environment = options.environment ?? 'SANDBOX';
  let signInRequired = false;
  /** @type {Record<string, EnvState & {token: string|null, receivedAt: number|null}>} */
  const envs = {};
  for (const env of ENVIRONMENTS) envs[env] = blankEnv();
  /** @type {Record<string, Promise<TokenEntry>|null>} */
  const inflight = { SANDBOX: null, LIVE: null };
  const timers = { SANDBOX: null, LIVE: null };
  /** Retries of an account read the broker did not answer (``syncFailed``). */
  const syncTimers = { SANDBOX: null, LIVE: null };
  /** @type {Map<string, {etag: string, body: any}>} */
  const etags = new Map();
  const ETAG_LIMIT = 64;
  let stopped = false;

  function blankEnv() {
    return {
      status: 'disconnected', connected: false, expiresAt: null, account: null, appKey: null,
      refreshing: false, refreshFailures: 0, nextRefreshAt: null, lastError: null, lastFailure: null, token: null,
      receivedAt: null,
      refusedToken: null, syncError: null, syncFailures: 0,
    };
  }

  function statusOf(e) {
    if (!e.connected) return 'disconnected';
    if (!e.token || !(Date.parse(e.expiresAt) > Date.now())) return 'expired';
    // the gateway refused it (KIS ended it early, or it was revoked): expired whatever its stated life
    if (e.token === e.refusedToken) return 'expired';
    if (e.refreshFailures >= 2 && Date.parse(e.expiresAt) - Date.now() < 60000) return 'expired';
    return 'connected';
  }

  /** @returns {ClientState} */
  function state() {
    const out = { environment, signInRequired, environments: {} };
    for (const env of ENVIRONMENTS) {
      const { token, receivedAt, refusedToken, syncFailures, ...rest } = envs[env];
      out.environments[env] = {
        ...rest, status: statusOf(envs[env]), tokenRefused: token !== null && token === refusedToken,
      };
    }
    return out;
  }

  function emit() {
    try { onStateChange(state()); } catch (e) { console.error(e); }
  }

  async function jwt() {
    const token = await getJwt?.();
    if (!token) {
      const err = new KisError('로그인이 필요합니다', { status: 401, code: 'sign_in_required' });
      requireSignIn(err);
      throw err;
    }
    return token;
  }

  /** The JWT was refused: `onSignInRequired` is told once, and again only after `signedIn()` or an answer that took
   *  the JWT (a page asking for both environments at once would otherwise ask its user to sign in twice). */
  function requireSignIn(err) {
    if (signInRequired) return;
    signInRequired = true;
    emit();
    try { onSignInRequired(err); } catch (e) { console.error(e); }
  }

  /** Whether an answer refuses the JWT (or had none to check). */
  function refusesJwt(response, err) {
    return err.code.startsWith('jwt_') || (response.status === 401 && err.code === 'auth_required');
  }

  /** An answer that took the JWT (getJwt gave a new one, say): a later refusal is told again. */
  function jwtTaken() {
    if (!signInRequired) return;
    signInRequired = false;
    emit();
  }

  /** Calls the broker; throws KisError on non-2xx. */
  async function brokerCall(method, path, body) {
    const headers = { Authorization: `Bearer ${await jwt()}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await doFetch(`${broker}${path}`, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store',
      });
    } catch (e) {
      throw networkError(e, 'broker');
    }
    const data = await readBody(response);
    if (!response.ok) {
      const err = errorFrom(response, data, 'broker');
      if (refusesJwt(response, err)) requireSignIn(err);
      else jwtTaken();
      throw err;
    }
    jwtTaken();
    return data;
  }

  async function adopt(env, tokenBody, extra = {}) {
    const prev = envs[env];
    const entry = {
      token: tokenBody.token,
      expiresAt: tokenBody.expiresAt,
      receivedAt: prev.token === tokenBody.token && prev.receivedAt ? prev.receivedAt : Date.now(),
      environment: env,
      account: extra.account ?? prev.account ?? null,
      appKey: extra.appKey ?? prev.appKey ?? null,
      connected: true,
    };
    take(env, entry);
    await store.save(entry);
    schedule(env);
    emit();
    return entry;
  }

  /** Makes `entry` (obtained, or stored by this or another tab) `env`'s current token: connected, no failure. */
  function take(env, entry) {
    const e = envs[env];
    Object.assign(e, {
      token: entry.token, expiresAt: entry.expiresAt, receivedAt: entry.receivedAt, account: entry.account ?? e.account,
      appKey: entry.appKey ?? e.appKey, connected: true, lastError: null, lastFailure: null, refreshFailures: 0,
    });
  }

  function clearEnv(env) {
    clearTimeout(timers[env]);
    timers[env] = null;
    clearTimeout(syncTimers[env]);
    syncTimers[env] = null;
    envs[env] = blankEnv();
  }

  /** Schedules the proactive refresh of `env`'s token at `refreshAt` of its life (or a retry after `delayMs`). */
  function schedule(env, delayMs) {
    clearTimeout(timers[env]);
    timers[env] = null;
    const e = envs[env];
    // a retry (delayMs given) is scheduled even without a token: the account is connected and needs one
    if (stopped || !e.connected || (!e.token && delayMs === undefined)) { e.nextRefreshAt = null; return; }
    if (delayMs === undefined) {
      const expires = Date.parse(e.expiresAt);
      const life = Math.max(0, expires - e.receivedAt);
      delayMs = Math.max(minRefreshDelayMs, e.receivedAt + life * refreshAt - Date.now());
    }
    delayMs = Math.min(delayMs, 2 ** 31 - 1);
    e.nextRefreshAt = new Date(Date.now() + delayMs).toISOString();
    timers[env] = setTimeout(() => proactive(env), delayMs);
  }

  /** After a sleep or a hidden tab, timers run late: catch up with any refresh that is due. */
  function onVisible() {
    if (globalThis.document?.visibilityState !== 'visible') return;
    for (const env of ENVIRONMENTS) {
      const e = envs[env];
      if (e.connected && e.nextRefreshAt && Date.parse(e.nextRefreshAt) <= Date.now() && !inflight[env]) proactive(env);
    }
    emit();
  }
  globalThis.document?.addEventListener?.('visibilitychange', onVisible);

  /**
   * Another tab of this user changed a stored token (it connected, refreshed, disconnected or switched the key):
   * this one takes the stored token when there is one, else asks the broker what account there is — instead of
   * showing "connected" with a token the other tab had the broker revoke, until its next call failed.
   */
  async function onStorage(event) {
    const env = store.changedElsewhere(event);
    if (!env || stopped) return;
    const entry = await store.load(env);
    if (stopped) return;
    if (entry) {
      take(env, entry);
      schedule(env);
      emit();
    } else {
      await syncAccount(env).catch((err) => syncFailed(env, err));
    }
  }
  globalThis.addEventListener?.('storage', onStorage);

  async function proactive(env) {
    clearTimeout(timers[env]);
    timers[env] = null;
    const before = envs[env].token;
    try {
      await refresh(env);
      envs[env].refreshFailures = 0;
      // the broker may answer the same token (inside its reuse window): try again later, not in a loop
      if (envs[env].token === before) schedule(env, Math.max(4 * minRefreshDelayMs, (Date.parse(envs[env].expiresAt) - Date.now()) / 2));
      emit();
    } catch (err) {
      refreshFailed(env, err);
    }
  }

  /** A refresh that failed is tried again with exponential backoff (or after the broker's `Retry-After`). */
  function refreshFailed(env, err) {
    const e = envs[env];
    if (err.signInRequired || err.code === 'account_not_found' || !e.connected) return;
    e.refreshFailures += 1;
    e.lastError = err.message;
    e.lastFailure = failureOf(err);
    const base = backoff(e.refreshFailures);
    const wait = err.retryAfter ? Math.max(err.retryAfter * 1000, base) : base;
    schedule(env, wait * (0.8 + Math.random() * 0.4));
    emit();
  }

  /**
   * Obtains the current token of `env` from the broker (`POST /api/kis/token/refresh`). Concurrent calls for the
   * same environment share one request.
   * @param {Environment} [env]
   * @returns {Promise<TokenEntry>}
   */
  function refresh(env = environment) {
    if (inflight[env]) return inflight[env];
    envs[env].refreshing = true;
    emit();
    const p = (async () => {
      try {
        const body = await brokerCall('POST', '/api/kis/token/refresh', { environment: env });
        return await adopt(env, body);
      } catch (err) {
        if (err.code === 'account_not_found') {
          clearEnv(env);
          await store.remove(env);
        } else {
          envs[env].lastError = err.message;
          envs[env].lastFailure = failureOf(err);
        }
        throw err;
      } finally {
        envs[env].refreshing = false;
        inflight[env] = null;
        emit();
      }
    })();
    inflight[env] = p;
    return p;
  }

  /**
   * Loads stored tokens and asks the broker which accounts are connected; when an account is connected but no
   * token is stored here (a new browser), obtains its current token.
   * @returns {Promise<ClientState>}
   */
  async function init() {
    for (const env of ENVIRONMENTS) {
      const entry = await store.load(env);
      if (entry) {
        take(env, entry);
        schedule(env);
      }
    }
    emit();
    await Promise.all(ENVIRONMENTS.map((env) => syncAccount(env).catch((err) => syncFailed(env, err))));
    return state();
  }

  /**
   * The broker could not say what account `env` has — it did not answer, or answered an error that is not about
   * the JWT: said in the state (`syncError`), and asked again after `backoffBaseMs` (2 s), doubling up to a minute,
   * until it answers.
   * A refused JWT is not retried: the session asks for a sign-in instead (``brokerCall``).
   */
  function syncFailed(env, err) {
    if (stopped || err?.signInRequired) return;
    const e = envs[env];
    e.syncFailures += 1;
    e.syncError = err?.message ?? String(err);
    emit();
    clearTimeout(syncTimers[env]);
    syncTimers[env] = setTimeout(() => {
      syncTimers[env] = null;
      if (!stopped) syncAccount(env).catch((again) => syncFailed(env, again));
    }, Math.min(60000, backoff(e.syncFailures)));
  }

  /** The delay before the `failures`th retry: `backoffBaseMs`, doubling, at most `backoffMaxMs`. */
  function backoff(failures) {
    return Math.min(backoffMaxMs, backoffBaseMs * 2 ** (failures - 1));
  }

  /**
   * Reads the stored account of `env` from the broker (`GET /api/kis/account`) and brings the local state in line.
   * @param {Environment} env
   */
  async function syncAccount(env) {
    let info;
    try {
      info = await brokerCall('GET', `/api/kis/account?environment=${env}`);
    } catch (err) {
      if (err.code === 'account_not_found' || err.status === 404) {
        clearEnv(env);
        await store.remove(env);
        emit();
        return null;
      }
      throw err;
    }
    // The account exists; `info.connected` says whether the broker holds a live token for it.
    const e = envs[env];
    clearTimeout(syncTimers[env]);
    Object.assign(e, {
      connected: true, account: info.accountNumber ?? e.account, appKey: info.appKey ?? e.appKey, syncError: null,
      syncFailures: 0,
    });
    if (info.connected === false && e.token) {
      // the broker knows the token expired or was revoked: forget ours
      e.token = null;
      await store.remove(env);
    }
    emit();
    if (!e.token && !inflight[env]) await proactive(env);
    return info;
  }

  /**
   * Validates the credentials at the broker, then stores the account and obtains its token.
   * @param {{environment: Environment, appKey: string, appSecret: string, accountNumber: string}} form
   * @returns {Promise<{message: string, entry: TokenEntry}>}  the broker's validation message
   */
  async function connect(form) {
    const env = form.environment;
    if (!ENVIRONMENTS.includes(env)) throw new KisError('환경을 선택하세요', { code: 'invalid_parameter' });
    const body = {
      appKey: String(form.appKey ?? '').trim(),
      appSecret: String(form.appSecret ?? '').trim(),
      accountNumber: String(form.accountNumber ?? '').trim(),
      environment: env,
    };
    const validation = await brokerCall('POST', '/api/kis/account/validate', body);
    if (validation && validation.valid === false) {
      throw new KisError(validation.message || '계정 검증에 실패했습니다',
        { status: 400, code: validation.code, server: 'broker' });
    }
    const token = await brokerCall('POST', '/api/kis/token', body);
    const masked = body.accountNumber.replace(/^(\d{4})\d{4}-?(\d{2})$/, '$1****-$2');
    const entry = await adopt(env, token, { account: masked, appKey: null });
    envs[env].refreshFailures = 0;
    syncAccount(env).catch(() => {});
    return { message: validation?.message ?? '', entry };
  }

  /**
   * Revokes the token and deletes the account at the broker (`DELETE /api/kis/account`), then forgets it here.
   * @param {Environment} [env]
   */
  async function disconnect(env = environment) {
    try {
      await brokerCall('DELETE', `/api/kis/account?environment=${env}`);
    } catch (err) {
      if (err.status !== 404) throw err;
    }
    clearEnv(env);
    await store.remove(env);
    emit();
  }

  /** Builds the gateway URL of a chart query. */
  function chartUrl(q) {
    const period = q.period ?? 'D';
    const symbol = encodeURIComponent(String(q.symbol ?? '').trim().toUpperCase()).replaceAll('%2F', '/');
    let path;
    if (q.market === 'overseas') {
      const ex = String(q.exchange ?? '').toUpperCase();
      path = `/overseas/${encodeURIComponent(ex)}/chart/daily/${symbol}`;
    } else {
      path = `/domestic/chart/daily/${symbol}`;
    }
    const params = new URLSearchParams();
    if (q.start) params.set('start', normalizeDate(q.start));
    if (q.end) params.set('end', normalizeDate(q.end));
    params.set('period', period);
    if (q.adjusted !== undefined) params.set('adjusted', q.adjusted ? 'true' : 'false');
    return `${gateway}${path}?${params}`;
  }

  async function tokenFor(env) {
    const e = envs[env];
    if (e.token && Date.parse(e.expiresAt) > Date.now()) return e.token;
    if (!e.connected) {
      throw new KisError('한국투자증권 계정이 연결되어 있지 않습니다', { status: 401, code: 'not_connected' });
    }
    return (await refresh(env)).token;
  }

  function remember(url, etag, body) {
    if (!etag) return;
    etags.delete(url);
    etags.set(url, { etag, body });
    while (etags.size > ETAG_LIMIT) etags.delete(etags.keys().next().value);
  }

  /**
   * Fetches a chart from the gateway with the user's JWT and KIS token. Reuses the last body of the same URL on
   * `304`. On a `kis_token_expired`/`kis_token_invalid` 401 it refreshes the token (one refresh shared by all
   * concurrent callers) and retries once; on `jwt_*` it calls `onSignInRequired` and throws. A `rate_limited`
   * 429 (the app key's KIS quota is queued full) is waited out as its `Retry-After` says — up to twice, and only
   * for waits of at most 5 s — before it is thrown.
   * @param {ChartQuery} query
   * @returns {Promise<ChartResult>}
   */
  async function chart(query) {
    const env = query.environment ?? environment;
    const url = chartUrl(query);
    const started = performance.now();
    let refreshed = false;
    let rateWaits = 0;
    for (;;) {
      const kisToken = await tokenFor(env);
      const headers = { Authorization: `Bearer ${await jwt()}`, 'X-KIS-Token': kisToken };
      const kept = etags.get(url);
      if (kept) headers['If-None-Match'] = kept.etag;
      let response;
      try {
        response = await doFetch(url, { headers, cache: 'no-store', credentials: 'omit' });
      } catch (e) {
        throw networkError(e, 'gateway');
      }
      const meta = {
        cache: response.headers.get('X-Cache'),
        serverTiming: response.headers.get('Server-Timing'),
        etag: response.headers.get('ETag'),
      };
      if (response.ok || response.status === 304) {
        jwtTaken();
        // a token refused once and handed back by the broker (its record was republished) works again
        if (envs[env].refusedToken === kisToken) {
          envs[env].refusedToken = null;
          emit();
        }
      }
      if (response.status === 304 && kept) {
        return { data: kept.body, status: 304, ...meta, etag: meta.etag ?? kept.etag, ms: performance.now() - started, refreshed, url };
      }
      if (response.ok) {
        const data = await response.json();
        remember(url, meta.etag, data);
        return { data, status: response.status, ...meta, ms: performance.now() - started, refreshed, url };
      }
      const body = await readBody(response);
      const err = errorFrom(response, body, 'gateway');
      if (!refusesJwt(response, err)) jwtTaken();
      if (response.status === 429 && err.code === 'rate_limited' && rateWaits < 2 && (err.retryAfter ?? 1) <= 5) {
        rateWaits++;
        await new Promise(r => setTimeout(r, (err.retryAfter ?? 1) * 1000 + Math.random() * 250));
        continue;
      }
      if (response.status === 401 && KIS_TOKEN_CODES.has(err.code)) {
        // The token is dead (until a new one comes it shows as expired, whatever its stated life); one that
        // cannot be replaced now is tried again with backoff, like a proactive refresh, and the failures show.
        if (envs[env].token === kisToken) {
          envs[env].refusedToken = kisToken;
          emit();
        }
        if (!refreshed) {
          refreshed = true;
          // another caller may already have replaced the token we used
          if (envs[env].token === kisToken) {
            try {
              await refresh(env);
            } catch (refreshError) {
              refreshFailed(env, refreshError);
              throw refreshError;
            }
          }
          continue;
        }
        refreshFailed(env, err);
        throw err;
      }
      if (refusesJwt(response, err)) requireSignIn(err);
      throw err;
    }
  }

  return {
    init,
    connect,
    disconnect,
    refresh,
    chart,
    chartUrl,
    syncAccount,
    state,
    /** @returns {Environment} */
    get environment() { return environment; },
    /** Selects the environment used by `chart`, `refresh` and `disconnect` by default. @param {Environment} env */
    setEnvironment(env) {
      if (!ENVIRONMENTS.includes(env)) throw new KisError(`unknown environment ${env}`, { code: 'invalid_parameter' });
      environment = env;
      emit();
    },
    /** The current KIS access token of `env` (null when none). */
    token(env = environment) { return envs[env].token; },
    /** Call after obtaining a new JWT following `onSignInRequired`. */
    signedIn() { signInRequired = false; emit(); },
    /** Forgets the ETag-kept bodies. */
    clearEtags() { etags.clear(); },
    /** Stops the proactive refresh timers (e.g. on sign-out). */
    stop() {
      stopped = true;
      globalThis.document?.removeEventListener?.('visibilitychange', onVisible);
      globalThis.removeEventListener?.('storage', onStorage);
      for (const env of ENVIRONMENTS) {
        clearTimeout(timers[env]);
        timers[env] = null;
        clearTimeout(syncTimers[env]);
        syncTimers[env] = null;
      }
    },
    store,
  };
}
