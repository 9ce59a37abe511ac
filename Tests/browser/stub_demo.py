#!/usr/bin/env python3
"""A small stand-in for `kisgw demo`, for developing the page and the browser tests without the Swift binary.

It speaks the same contract the tests expect of `kisgw demo` (stdout lines `UI: …`, `Gateway: …`, `Simulator: …`,
`JWT: …`; env `KISGW_DEMO_PORT_BASE`, `KISGW_DEMO_APP_KEY`, `KISGW_DEMO_APP_SECRET`) and a simplified version of
the broker, gateway and simulator HTTP APIs (../../shared/spec/*.md): enough for the page, not a reference.

    python3 Tests/browser/stub_demo.py demo --port-base 18600
    KISGW_DEMO_CMD="python3 Tests/browser/stub_demo.py demo" Tests/browser/run.sh
"""
import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import random
import re
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

RESOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'Sources', 'Web', 'Resources')
JWT_SECRET = secrets.token_bytes(32)
KST = dt.timezone(dt.timedelta(hours=9))
LOCK = threading.Lock()
ACCOUNTS = {}   # (user, env) -> dict
TOKENS = {}     # token -> {user, env, expires: epoch, expired: bool}
CACHE = {}      # key -> (body bytes, etag, stored)
EXPECTED = (os.environ.get('KISGW_DEMO_APP_KEY'), os.environ.get('KISGW_DEMO_APP_SECRET'))


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode()


def mint_jwt(sub, ttl=3600):
    now = int(time.time())
    head = b64u(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())
    body = b64u(json.dumps({'sub': sub, 'iat': now, 'exp': now + ttl}).encode())
    sig = b64u(hmac.new(JWT_SECRET, f'{head}.{body}'.encode(), hashlib.sha256).digest())
    return f'{head}.{body}.{sig}'


def verify_jwt(token):
    try:
        head, body, sig = token.split('.')
        good = b64u(hmac.new(JWT_SECRET, f'{head}.{body}'.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(good, sig):
            return None, 'jwt_invalid'
        claims = json.loads(base64.urlsafe_b64decode(body + '=' * (-len(body) % 4)))
        if claims['exp'] < time.time():
            return None, 'jwt_expired'
        return claims['sub'], None
    except Exception:
        return None, 'jwt_invalid'


def problem(code, status, detail):
    return status, {'type': f'https://kisgw.dev/problems/{code}', 'title': code, 'status': status,
                    'code': code, 'detail': detail}


def issue(user, env):
    token = 'stub-' + secrets.token_urlsafe(24)
    TOKENS[token] = {'user': user, 'env': env, 'expires': time.time() + 86400, 'expired': False}
    ACCOUNTS[(user, env)]['token'] = token
    return token


def token_body(token, env):
    exp = dt.datetime.fromtimestamp(TOKENS[token]['expires'], KST).isoformat(timespec='seconds')
    return {'token': token, 'expiresAt': exp, 'environment': env}


def token_alive(token):
    t = TOKENS.get(token)
    return t and not t['expired'] and t['expires'] > time.time()


class Base(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, fmt, *args):
        sys.stderr.write('%s %s\n' % (self.server.name, fmt % args))

    def send(self, status, body=None, headers=None, content_type='application/json'):
        data = b''
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body is not None:
            ctype = content_type if status < 400 or content_type != 'application/json' else 'application/problem+json'
            if isinstance(body, dict) and 'valid' in body:
                ctype = 'application/json'
            self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(data)

    def json_body(self):
        n = int(self.headers.get('Content-Length') or 0)
        try:
            return json.loads(self.rfile.read(n) or b'{}')
        except ValueError:
            return {}

    def user(self):
        auth = self.headers.get('Authorization', '')
        if not auth.startswith('Bearer '):
            return None, problem('auth_required', 401, 'Authorization is required')
        sub, err = verify_jwt(auth[7:])
        if err:
            return None, problem(err, 401, 'the JWT was refused')
        return sub, None


class Broker(Base):
    def do_GET(self):
        url = urlparse(self.path)
        if url.path in ('/', '/index.html'):
            return self.static('index.html')
        if url.path == '/ui/config.json':
            return self.send(200, {'gatewayUrl': self.server.gateway_url, 'demo': True}, {'Cache-Control': 'no-cache'})
        if url.path.startswith('/ui/'):
            return self.static(url.path[4:])
        if url.path == '/api/kis/account':
            return self.account(url, delete=False)
        if url.path == '/healthz':
            return self.send(200, {'status': 'ok'})
        self.send(*problem('not_found', 404, 'no such route'))

    def do_DELETE(self):
        url = urlparse(self.path)
        if url.path == '/api/kis/account':
            return self.account(url, delete=True)
        self.send(*problem('not_found', 404, 'no such route'))

    def static(self, name):
        if not re.fullmatch(r'[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*', name):
            return self.send(*problem('not_found', 404, 'no such file'))
        path = os.path.join(RESOURCES, name)
        if not os.path.isfile(path):
            return self.send(*problem('not_found', 404, 'no such file'))
        ctype = {'html': 'text/html; charset=utf-8', 'css': 'text/css; charset=utf-8',
                 'js': 'text/javascript; charset=utf-8'}.get(name.rsplit('.', 1)[-1], 'application/octet-stream')
        with open(path, 'rb') as f:
            self.send(200, f.read(), {'Cache-Control': 'no-cache'}, ctype)

    def account(self, url, delete):
        user, err = self.user()
        if err:
            return self.send(*err)
        env = parse_qs(url.query).get('environment', ['SANDBOX'])[0]
        with LOCK:
            acct = ACCOUNTS.get((user, env))
            if not acct:
                return self.send(*problem('account_not_found', 404, 'no account for this environment'))
            if delete:
                if acct.get('token') in TOKENS:
                    TOKENS[acct['token']]['expired'] = True
                del ACCOUNTS[(user, env)]
                return self.send(204)
            tok = acct.get('token')
            n = acct['accountNumber'].replace('-', '')
            self.send(200, {'environment': env, 'accountNumber': f'{n[:4]}****-{n[8:]}',
                            'appKey': acct['appKey'][:4] + '…' + acct['appKey'][-4:], 'connected': True,
                            'tokenExpiresAt': token_body(tok, env)['expiresAt'] if tok in TOKENS else None})

    def do_POST(self):
        url = urlparse(self.path)
        body = self.json_body()
        if url.path == '/api/dev/signin':
            uid = str(body.get('userId') or 'demo')
            return self.send(200, {'token': mint_jwt(uid)})
        user, err = self.user()
        if err:
            return self.send(*err)
        env = body.get('environment')
        if env not in ('LIVE', 'SANDBOX'):
            return self.send(*problem('invalid_parameter', 400, 'environment must be LIVE or SANDBOX'))
        with LOCK:
            if url.path in ('/api/kis/account/validate', '/api/kis/token'):
                if not re.fullmatch(r'\d{8}-?\d{2}', str(body.get('accountNumber', ''))):
                    return self.send(400, {'valid': False, 'message': '계좌번호 형식이 올바르지 않습니다', 'code': 'invalid_parameter'})
                if EXPECTED[0] and (body.get('appKey'), body.get('appSecret')) != EXPECTED:
                    return self.send(400, {'valid': False, 'message': 'KIS가 앱키 또는 앱시크릿을 거부했습니다 (EGW00105 유효하지 않은 AppSecret입니다.)',
                                           'code': 'kis_credentials_rejected'})
                if url.path.endswith('validate'):
                    return self.send(200, {'valid': True, 'message': '계정이 확인되었습니다'})
                acct = ACCOUNTS.setdefault((user, env), {})
                acct.update(appKey=body['appKey'], accountNumber=body['accountNumber'])
                tok = acct.get('token')
                if not token_alive(tok):
                    tok = issue(user, env)
                return self.send(200, token_body(tok, env))
            if url.path == '/api/kis/token/refresh':
                acct = ACCOUNTS.get((user, env))
                if not acct:
                    return self.send(*problem('account_not_found', 404, 'no account for this environment'))
                tok = acct.get('token')
                if not token_alive(tok):
                    tok = issue(user, env)
                return self.send(200, token_body(tok, env))
        self.send(*problem('not_found', 404, 'no such route'))


def candles(symbol, start, end, period, overseas):
    out = []
    day = start
    seed = int(hashlib.sha256(symbol.encode()).hexdigest()[:8], 16)
    price = 50000 + seed % 50000 if not overseas else 50 + seed % 300
    d = dt.date(2020, 1, 1)
    rnd = random.Random(seed)
    while d <= end:
        if d.weekday() < 5:
            o = price
            c = max(1, o * (1 + rnd.uniform(-0.03, 0.03)))
            h = max(o, c) * (1 + rnd.uniform(0, 0.015))
            lo = min(o, c) * (1 - rnd.uniform(0, 0.015))
            v = int(rnd.uniform(1e5, 3e6))
            price = c
            if d >= day:
                if overseas:
                    row = [round(x, 2) for x in (o, h, lo, c)]
                else:
                    row = [int(round(x, -1)) for x in (o, h, lo, c)]
                out.append({'date': d.isoformat(), 'open': row[0], 'high': row[1], 'low': row[2], 'close': row[3],
                            'volume': v})
        d += dt.timedelta(days=1)
    if period in ('W', 'M', 'Y'):
        groups = {}
        for c in out:
            day = dt.date.fromisoformat(c['date'])
            key = {'W': day.isocalendar()[:2], 'M': (day.year, day.month), 'Y': (day.year,)}[period]
            groups.setdefault(key, []).append(c)
        out = [{'date': g[0]['date'], 'open': g[0]['open'], 'high': max(x['high'] for x in g),
                'low': min(x['low'] for x in g), 'close': g[-1]['close'], 'volume': sum(x['volume'] for x in g)}
               for g in groups.values()]
    return out


def parse_date(s):
    s = s.replace('-', '')
    return dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))


class Gateway(Base):
    def cors(self):
        origin = self.headers.get('Origin')
        h = {'Vary': 'Origin'}
        if origin and origin in self.server.allowed:
            h.update({'Access-Control-Allow-Origin': origin, 'Access-Control-Allow-Credentials': 'true',
                      'Access-Control-Expose-Headers': 'ETag, X-Cache, Age, Retry-After, Server-Timing'})
        return h

    def do_OPTIONS(self):
        origin = self.headers.get('Origin')
        if origin not in self.server.allowed:
            return self.send(403, headers={'Vary': 'Origin'})
        self.send(204, headers={'Vary': 'Origin', 'Access-Control-Allow-Origin': origin,
                                'Access-Control-Allow-Credentials': 'true',
                                'Access-Control-Allow-Methods': 'GET, POST, OPTIONS',
                                'Access-Control-Allow-Headers': 'Authorization, X-KIS-Token, Content-Type, If-None-Match',
                                'Access-Control-Max-Age': '600'})

    def do_GET(self):
        url = urlparse(self.path)
        h = self.cors()
        m = re.fullmatch(r'/domestic/chart/daily/([0-9A-Za-z]{6,9})', url.path) or \
            re.fullmatch(r'/overseas/([A-Za-z]{3})/chart/daily/([A-Za-z0-9.\-/]{1,16})', url.path)
        if not m:
            return self.send(*problem('not_found', 404, 'no such route'), headers=h)
        user, err = self.user()
        if err:
            return self.send(*err, headers=h)
        tok = self.headers.get('X-KIS-Token')
        if not tok:
            return self.send(*problem('auth_required', 401, 'X-KIS-Token is required'), headers=h)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        overseas = len(m.groups()) == 2
        symbol = m.groups()[-1].upper()
        period = q.get('period', 'D')
        end = parse_date(q['end']) if 'end' in q else dt.date.today()
        start = parse_date(q['start']) if 'start' in q else end - dt.timedelta(days=150)
        key = (url.path.upper(), period, start, end, q.get('adjusted', 'true'))
        with LOCK:
            t = TOKENS.get(tok)
            if not t or t['user'] != user:
                return self.send(*problem('kis_token_invalid', 401, 'unknown KIS token'), headers=h)
            if t['expires'] < time.time():
                return self.send(*problem('kis_token_expired', 401, 'KIS token expired'), headers=h)
            hit = CACHE.get(key)
            if not hit and t['expired']:   # upstream says EGW00123
                return self.send(*problem('kis_token_expired', 401, 'KIS said the token expired (EGW00123)'), headers=h)
        started = time.time()
        if hit:
            body, etag = hit
            h.update({'X-Cache': 'HIT', 'Server-Timing': 'cache;desc="hit"'})
        else:
            time.sleep(0.05)
            data = {'market': 'overseas' if overseas else 'domestic',
                    'exchange': m.group(1).upper() if overseas else 'KRX', 'symbol': symbol,
                    'name': None if overseas else '삼성전자' if symbol == '005930' else f'종목 {symbol}',
                    'currency': 'USD' if overseas else 'KRW', 'period': period,
                    'adjusted': q.get('adjusted', 'true') == 'true', 'start': start.isoformat(), 'end': end.isoformat(),
                    'candles': candles(symbol, start, end, period, overseas)}
            if data['name'] is None:
                del data['name']
            body = json.dumps(data, ensure_ascii=False).encode()
            etag = '"%s"' % hashlib.sha256(body).hexdigest()[:32]
            CACHE[key] = (body, etag)
            h.update({'X-Cache': 'MISS', 'Server-Timing': 'cache;desc="miss", upstream;dur=%.1f' % ((time.time() - started) * 1000)})
        h.update({'ETag': etag, 'Cache-Control': 'private, max-age=60', 'Age': '0'})
        if self.headers.get('If-None-Match') == etag:
            return self.send(304, headers=h)
        self.send(200, body, h)


class Sim(Base):
    def do_POST(self):
        body = self.json_body()
        if self.path == '/__sim/expire':
            with LOCK:
                t = TOKENS.get(body.get('access_token'))
                if t:
                    t['expired'] = True
            return self.send(200, {'status': 'expired' if t else 'unknown'})
        if self.path == '/__sim/clock':
            return self.send(200, {'advanced_s': body.get('advance_s', 0)})
        self.send(404, {'error': 'not found'})


def serve(cls, port, name, **attrs):
    srv = ThreadingHTTPServer(('127.0.0.1', port), cls)
    srv.daemon_threads = True
    srv.name = name
    for k, v in attrs.items():
        setattr(srv, k, v)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def main():
    args = sys.argv[1:]
    base = int(os.environ.get('KISGW_DEMO_PORT_BASE') or 18600)
    if '--port-base' in args:
        base = int(args[args.index('--port-base') + 1])
    ui_port, gw_port, sim_port = base, base + 1, base + 2
    ui = f'http://127.0.0.1:{ui_port}'
    serve(Broker, ui_port, 'broker', gateway_url=f'http://127.0.0.1:{gw_port}')
    serve(Gateway, gw_port, 'gateway', allowed={ui, f'http://localhost:{ui_port}'})
    serve(Sim, sim_port, 'sim')
    print(f'UI: {ui}/', flush=True)
    print(f'Gateway: http://127.0.0.1:{gw_port}', flush=True)
    print(f'Simulator: http://127.0.0.1:{sim_port}', flush=True)
    print(f'JWT: {mint_jwt("demo")}', flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == '__main__':
    main()
