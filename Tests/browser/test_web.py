"""The web UI in headless Chromium against a real `kisgw demo` (see conftest.py and run.sh)."""
import functools
import http.server
import json
import os
import re
import secrets
import threading
import urllib.error
import urllib.request

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import APP_KEY, APP_SECRET, ARTEFACTS, free_port_base, http_get

TIMEOUT = 30
# One app key is used throughout (the demo simulator accepts only KISGW_DEMO_APP_KEY/SECRET) and KIS gives one token
# per app key, so every test that connects does so as the same user, after `reset_account` cleared that user.
USER = 'tester'


def wait(browser, predicate, timeout=TIMEOUT, message=''):
    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(lambda d: predicate(d), message)


def el(browser, id_):
    return browser.find_element(By.ID, id_)


def shot(browser, name):
    browser.save_screenshot(os.path.join(ARTEFACTS, name))


def open_page(browser, demo, user):
    browser.get(f'{demo.ui}?user={user}&debug=1')
    wait(browser, lambda d: d.execute_script('return window.__kisgw && window.__kisgw.state() && window.__kisgw.state().user'),
         message='the page did not sign in')
    assert browser.execute_script('return window.__kisgw.state().user') == user


def status(browser):
    return el(browser, 'status').get_attribute('data-status'), el(browser, 'status-text').text


def fill_connect(browser, environment='SANDBOX', key=APP_KEY, secret=APP_SECRET, account='12345678-01'):
    browser.find_element(By.CSS_SELECTOR, f'#connect-form input[name=environment][value={environment}]').click()
    for id_, value in (('appKey', key), ('appSecret', secret), ('accountNumber', account)):
        field = el(browser, id_)
        field.clear()
        field.send_keys(value)
    el(browser, 'connect-submit').click()


def connect(browser, environment='SANDBOX'):
    fill_connect(browser, environment)
    wait(browser, lambda d: status(d) == ('connected', '연결됨'), message=f'not connected: {status(browser)}')


def chart_state(browser):
    c = el(browser, 'chart')
    return c.get_attribute('data-state'), c.get_attribute('data-status')


def wait_chart(browser, expect_status=('200', '304')):
    wait(browser, lambda d: chart_state(d)[0] in ('ready', 'error', 'empty'), message='the chart did not finish loading')
    state, code = chart_state(browser)
    assert state == 'ready', f'chart {state} {code}: {el(browser, "chart-error").text}'
    assert code in expect_status
    return code


def load_chart(browser, **query):
    """Submits the chart form after setting the given fields (market, exchange, symbol, period)."""
    if 'market' in query:
        browser.find_element(By.CSS_SELECTOR, f'#chart-form input[name=market][value={query["market"]}]').click()
    if 'exchange' in query:
        browser.execute_script("document.getElementById('exchange').value = arguments[0]", query['exchange'])
    if 'symbol' in query:
        field = el(browser, 'symbol')
        field.clear()
        field.send_keys(query['symbol'])
    for field in ('start', 'end'):
        if field in query:
            browser.execute_script('document.getElementById(arguments[0]).value = arguments[1]', field, query[field])
    if 'period' in query:
        browser.execute_script(
            "const p = document.getElementById('period'); p.value = arguments[0]; p.dispatchEvent(new Event('change'))",
            query['period'])
    browser.execute_script("document.getElementById('chart').dataset.state = 'submitting'")
    el(browser, 'chart-submit').click()


CANVAS_PIXELS = """
const c = document.getElementById('chart-canvas');
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let drawn = 0, red = 0, blue = 0;
for (let i = 0; i < d.length; i += 4) {
  const [r, g, b] = [d[i], d[i + 1], d[i + 2]];
  if (r < 250 || g < 250 || b < 250) drawn++;
  if (r > 180 && g < 90 && b < 90) red++;
  if (b > 180 && r < 90 && g < 150) blue++;
}
return {drawn, red, blue, width: c.width, height: c.height, css: c.clientWidth};
"""


def assert_canvas_drawn(browser):
    px = browser.execute_script(CANVAS_PIXELS)
    assert px['width'] >= px['css'] > 0, px
    assert px['drawn'] > 2000, px
    assert px['red'] + px['blue'] > 300, f'no candles drawn: {px}'


def visible_error_toasts(browser):
    return [t.text for t in browser.find_elements(By.CSS_SELECTOR, '.toast.error') if t.is_displayed()]


def broker_post(demo, path, body, jwt):
    headers = {'Content-Type': 'application/json'}
    if jwt:
        headers['Authorization'] = f'Bearer {jwt}'
    req = urllib.request.Request(demo.ui.rstrip('/') + path, data=json.dumps(body).encode(), method='POST',
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b'null')
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b'null')


def sim_post(demo, path, body):
    req = urllib.request.Request(f'{demo.simulator}{path}', data=json.dumps(body).encode(), method='POST',
                                 headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


def advance_sim_clock(demo, seconds=61):
    """Moves the simulator's token clock past KIS's one-issuance-per-minute rule."""
    assert sim_post(demo, '/__sim/clock', {'advance_s': seconds}) == 200


def clear_accounts(demo, user):
    """`user` has no account in either environment (the demo's one app key is free for another user)."""
    code, body = broker_post(demo, '/api/dev/signin', {'userId': user}, jwt='')
    assert code == 200, body
    for env in ('SANDBOX', 'LIVE'):
        req = urllib.request.Request(demo.ui.rstrip('/') + f'/api/kis/account?environment={env}', method='DELETE',
                                     headers={'Authorization': f'Bearer {body["token"]}'})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status in (200, 204)
        except urllib.error.HTTPError as e:
            assert e.code == 404, e.read()


@pytest.fixture
def reset_account(demo):
    """USER has no account in either environment, and a new token may be issued at once."""
    clear_accounts(demo, USER)
    advance_sim_clock(demo)


# --------------------------------------------------------------------------------------------------------------


def test_connect_then_chart_with_crosshair_and_etag(browser, demo, reset_account):
    open_page(browser, demo, USER)
    assert status(browser) == ('disconnected', '연결 안됨')
    shot(browser, '01-disconnected.png')

    connect(browser)
    detail = el(browser, 'status-detail').text
    assert '모의투자' in detail and '만료' in detail, detail

    # connecting loads the default chart (005930, daily)
    assert wait_chart(browser) == '200'
    assert_canvas_drawn(browser)
    assert el(browser, 'chart-cache').text.split(' ')[0] in ('HIT', 'MISS', 'STALE')
    assert 'ms' in el(browser, 'chart-timing').text
    assert '005930' in el(browser, 'chart-title').text

    # crosshair: date in Korean, OHLC and volume
    canvas = el(browser, 'chart-canvas')
    ActionChains(browser).move_to_element_with_offset(canvas, 40, 0).perform()
    tip = el(browser, 'crosshair')
    wait(browser, lambda d: tip.is_displayed(), message='crosshair not shown')
    text = tip.text
    for label in ('년', '월', '일', '시가', '고가', '저가', '종가', '거래량'):
        assert label in text, text
    shot(browser, '02-connected-chart.png')

    # a settled range, then the same query again: If-None-Match gives 304 and the kept body is drawn
    load_chart(browser, start='2024-01-02', end='2024-03-29')
    assert wait_chart(browser) == '200'
    load_chart(browser)
    assert wait_chart(browser) == '304'
    assert_canvas_drawn(browser)
    assert el(browser, 'chart-cache').text.endswith('304')

    # overseas: prices keep their decimals
    load_chart(browser, market='overseas', exchange='NAS', symbol='AAPL')
    wait_chart(browser)
    assert 'AAPL' in el(browser, 'chart-title').text
    assert_canvas_drawn(browser)
    ActionChains(browser).move_to_element_with_offset(canvas, -60, 20).perform()
    wait(browser, lambda d: tip.is_displayed())
    assert '.' in tip.text.split('시가')[1].split('\n')[0], tip.text
    shot(browser, '03-overseas-chart.png')
    assert visible_error_toasts(browser) == []


# Chromium's "block all site data" setting: reading localStorage or sessionStorage throws (SecurityError).
# Another user than USER, whose account checks the broker throttles (10 in a row): this test's two would leave a
# later test of USER's refused. The app key is given back at the end.
@pytest.mark.chrome_prefs({'profile.default_content_setting_values.cookies': 2})
def test_page_works_where_the_browser_refuses_storage(browser, demo, reset_account):
    browser.get(demo.ui + '?debug=1')
    refused = browser.execute_script(
        "return ['localStorage', 'sessionStorage'].map((n) => { try { window[n]; return 'allowed'; } "
        "catch (e) { return e.name; } })")
    assert refused == ['SecurityError', 'SecurityError'], refused
    try:
        open_page(browser, demo, 'no-storage')
        assert status(browser) == ('disconnected', '연결 안됨')
        connect(browser)
        assert wait_chart(browser) == '200'
        assert_canvas_drawn(browser)
        # The token is kept in memory, for this page only.
        assert browser.execute_script('return window.__kisgw.state().token !== null') is True
        assert visible_error_toasts(browser) == []
    finally:
        clear_accounts(demo, 'no-storage')
        advance_sim_clock(demo)


def test_token_expiring_mid_session_is_refreshed(browser, demo, reset_account):
    open_page(browser, demo, USER)
    connect(browser)
    wait_chart(browser)
    old = browser.execute_script('return window.__kisgw.state().token')
    assert old

    assert sim_post(demo, '/__sim/expire', {'access_token': old}) == 200
    advance_sim_clock(demo)   # KIS would refuse a second issuance within a minute

    # a symbol not seen before, so the gateway must go to KIS with the (now expired) token
    load_chart(browser, symbol='000660')
    assert wait_chart(browser) == '200'
    assert_canvas_drawn(browser)
    new = browser.execute_script('return window.__kisgw.state().token')
    assert new and new != old, 'the KIS token was not refreshed'
    assert status(browser) == ('connected', '연결됨')
    assert not el(browser, 'chart-error').is_displayed()
    assert visible_error_toasts(browser) == []
    shot(browser, '04-after-token-refresh.png')


def sim_stats(demo):
    code, _, body = http_get(f'{demo.simulator}/__sim/stats')
    assert code == 200, body
    return json.loads(body)


def broker_refreshes(demo):
    """How many POST /api/kis/token/refresh the broker has answered (its kisgw_http_requests_total)."""
    code, _, body = http_get(demo.ui.rstrip('/') + '/metrics')
    assert code == 200, body
    text = body.decode()
    return sum(float(line.rsplit(' ', 1)[1]) for line in text.splitlines()
               if line.startswith('kisgw_http_requests_total{') and 'route="/api/kis/token/refresh"' in line)


def test_concurrent_charts_refused_for_an_ended_token_share_one_refresh(browser, demo, reset_account):
    """web-client.md: concurrent kis_token_* 401s share one refresh, and each request is retried once with the new
    token — here against the real gateway, broker and simulator. KIS ends the token; one chart that goes to KIS finds
    out (the gateway marks the token dead for every gateway); then three charts at once are all refused by the
    gateway, and one new token answers them all (from the gateway's cache: they were drawn before)."""
    open_page(browser, demo, USER)
    connect(browser)
    wait_chart(browser)
    queries = [{'market': 'domestic', 'symbol': s, 'start': '2025-03-03', 'end': '2025-05-30'}
               for s in ('005380', '068270', '207940')]
    charts = """
const [queries, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  const rs = [];
  if (arguments[1]) for (const q of queries) rs.push(await window.__kisgw.client.chart(q));
  else rs.push(...await Promise.all(queries.map((q) => window.__kisgw.client.chart(q))));
  return {statuses: rs.map((r) => r.status), refreshed: rs.map((r) => r.refreshed), cache: rs.map((r) => r.cache)};
})().then(done, (e) => done({error: String(e && e.code || e)}));
"""
    warm = browser.execute_async_script(charts, queries, True)   # one after another: the sandbox's 1 call a second
    assert warm.get('statuses') == [200, 200, 200], warm
    old = browser.execute_script('return window.__kisgw.state().token')
    assert sim_post(demo, '/__sim/expire', {'access_token': old}) == 200
    advance_sim_clock(demo)   # KIS would refuse a second issuance within a minute
    refused = browser.execute_async_script("""
const [old, done] = [arguments[0], arguments[arguments.length - 1]];
const url = window.__kisgw.client.chartUrl({market: 'domestic', symbol: '096770'});
fetch(url, {headers: {Authorization: 'Bearer ' + sessionStorage.getItem('kisgw.jwt'), 'X-KIS-Token': old}})
  .then(async (r) => done([r.status, (await r.json()).code]), (e) => done(String(e)));
""", old)
    assert refused == [401, 'kis_token_expired'], refused
    before, asked = sim_stats(demo)['issuances'], broker_refreshes(demo)
    result = browser.execute_async_script(charts, queries, False)
    assert result.get('statuses') == [304, 304, 304], result   # the bodies kept with their ETags
    assert result['refreshed'] == [True, True, True], result
    assert broker_refreshes(demo) - asked == 1, 'not one shared refresh'
    assert sim_stats(demo)['issuances'] - before == 1
    new = browser.execute_script('return window.__kisgw.state().token')
    assert new and new != old
    assert status(browser) == ('connected', '연결됨')


def test_refused_token_that_cannot_be_replaced_yet_shows_expired_and_is_retried(browser, demo, reset_account):
    """web-client.md: the state is visible at all times (yellow 토큰 만료) and a refresh that keeps failing retries with
    backoff, visibly. A token KIS ended early was shown 연결됨 while the refresh the chart's 401 started failed (KIS
    gives an app key one token a minute: the broker answers kis_rate_limited), and nothing tried again."""
    open_page(browser, demo, USER)
    connect(browser)
    wait_chart(browser)
    old = browser.execute_script('return window.__kisgw.state().token')
    assert sim_post(demo, '/__sim/expire', {'access_token': old}) == 200   # the clock not moved: no new token yet

    load_chart(browser, symbol='035420')   # a symbol no other test asks for: the gateway asks KIS with the ended token
    wait(browser, lambda d: chart_state(d)[0] == 'error', message=f'the chart did not fail: {chart_state(browser)}')
    wait(browser, lambda d: status(d) == ('expired', '토큰 만료'), message=f'not shown expired: {status(browser)}')
    wait(browser, lambda d: '재시도' in el(d, 'acct-refresh').text, message=el(browser, 'acct-refresh').text)
    sandbox = browser.execute_script('return window.__kisgw.client.state().environments.SANDBOX')
    assert 'token' not in sandbox
    # The token's stated expiry (tomorrow) is not shown as its end: KIS ended it early, it needs a refresh. (The
    # header read "토큰 만료 … 만료 <tomorrow>".)
    detail = el(browser, 'status-detail').text
    assert '조기 종료' in detail and '갱신 필요' in detail, detail
    assert '(KST)' not in detail, detail
    assert '조기 종료' in el(browser, 'acct-expiry').text, el(browser, 'acct-expiry').text
    # The failed refresh is said in Korean; the broker's (English) words are kept under 자세한 내용, not shown.
    refresh_text = el(browser, 'acct-refresh').text
    assert sandbox['lastError'] and sandbox['lastError'] not in refresh_text, (sandbox['lastError'], refresh_text)
    assert not re.search(r'[A-Za-z]{4,}', refresh_text), refresh_text   # "KST", "App Key" at most
    assert (f"브로커 응답: {sandbox['lastError']}", 'en') in server_details(browser, 'acct-refresh')
    # The row says when the page tries again itself: no "잠시 후 다시 시도하세요" beside it; the chart's error says
    # once when to try again (it said "잠시 후 …" and "59초 후 …").
    assert '다시 시도하세요' not in refresh_text, refresh_text
    headline = chart_error_lines(browser)[0]
    assert headline.count('다시 시도하세요') <= 1 and not ('잠시 후' in headline and '초 후' in headline), headline
    shot(browser, '05-refused-token-expired.png')

    advance_sim_clock(demo)   # a new issuance is allowed now
    el(browser, 'acct-refresh-now').click()
    wait(browser, lambda d: status(d) == ('connected', '연결됨'), message=f'not reconnected: {status(browser)}')
    new = browser.execute_script('return window.__kisgw.state().token')
    assert new and new != old
    load_chart(browser, symbol='035420')
    assert wait_chart(browser) == '200'


def test_candle_dates_are_the_markets_dates_in_any_browser_zone(browser, demo, reset_account):
    """KRX candles carry Seoul dates: a browser in UTC−10 shows each as its own date (a date read as the browser's
    midnight would show a Monday's candle as Sunday's), in Korean, on the crosshair."""
    import datetime
    browser.execute_cdp_cmd('Emulation.setTimezoneOverride', {'timezoneId': 'Pacific/Honolulu'})
    open_page(browser, demo, USER)
    connect(browser)
    wait_chart(browser)
    load_chart(browser, start='2024-01-02', end='2024-03-29')
    wait_chart(browser)
    canvas = el(browser, 'chart-canvas')
    tip = el(browser, 'crosshair')
    width = canvas.size['width']
    seen = set()
    for x in range(-width // 2 + 5, width // 2 - 5, 12):
        ActionChains(browser).move_to_element_with_offset(canvas, x, 0).perform()
        if not tip.is_displayed():
            continue
        m = re.search(r'(\d{4})년 (\d{1,2})월 (\d{1,2})일', tip.text)
        if m:
            seen.add(datetime.date(int(m.group(1)), int(m.group(2)), int(m.group(3))))
    assert len(seen) >= 20, sorted(seen)
    assert all(d.weekday() < 5 for d in seen), [d.isoformat() for d in sorted(seen) if d.weekday() >= 5]
    assert min(seen) >= datetime.date(2024, 1, 2) and max(seen) == datetime.date(2024, 3, 29), (min(seen), max(seen))


def test_default_range_ends_today_in_the_markets_time_zone(browser, demo):
    """A browser far from Seoul still asks for today's KRX candle: the default end is today in Asia/Seoul (and in New
    York for a NAS chart), not in the browser's zone; dates typed by the user stay theirs."""
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    def today(zone):
        return datetime.now(ZoneInfo(zone)).date().isoformat()

    # UTC−10: its date differs from Seoul's (UTC+9) for 19 hours of each day.
    # (The browser is this test's own: the override ends with it.)
    browser.execute_cdp_cmd('Emulation.setTimezoneOverride', {'timezoneId': 'Pacific/Honolulu'})
    seoul = {today('Asia/Seoul')}
    open_page(browser, demo, 'tz-user')
    seoul.add(today('Asia/Seoul'))
    end = el(browser, 'end').get_attribute('value')
    assert end in seoul, (end, seoul, today('Pacific/Honolulu'))
    start = el(browser, 'start').get_attribute('value')
    assert start == (datetime.fromisoformat(end) - timedelta(days=150)).date().isoformat(), (start, end)

    browser.find_element(By.CSS_SELECTOR, '#chart-form input[name=market][value=overseas]').click()
    york = {today('America/New_York')}
    end = el(browser, 'end').get_attribute('value')
    york.add(today('America/New_York'))
    assert end in york, (end, york)

    # The user's own end is kept through a change of period; the start follows it.
    browser.execute_script("document.getElementById('end').value = '2025-06-30'")
    browser.execute_script(
        "const p = document.getElementById('period'); p.value = 'W'; p.dispatchEvent(new Event('change'))")
    assert el(browser, 'end').get_attribute('value') == '2025-06-30'
    assert el(browser, 'start').get_attribute('value') == (datetime(2025, 6, 30) - timedelta(days=730)).date().isoformat()


def test_wrong_app_secret_shows_broker_message(browser, demo, reset_account):
    # No one holds the demo's app key (else the broker refuses it as another user's before KIS is asked).
    open_page(browser, demo, 'carol')
    fill_connect(browser, secret='definitely-not-the-secret')
    error = el(browser, 'connect-error')
    wait(browser, lambda d: error.is_displayed() and error.text, message='no error shown')
    shown = error.text
    shot(browser, '05-wrong-secret.png')
    assert status(browser) == ('disconnected', '연결 안됨')

    jwt = browser.execute_script("return sessionStorage.getItem('kisgw.jwt')")
    code, body = broker_post(demo, '/api/kis/account/validate',
                             {'appKey': APP_KEY, 'appSecret': 'definitely-not-the-secret',
                              'accountNumber': '12345678-01', 'environment': 'SANDBOX'}, jwt)
    assert code == 400 and body.get('code') == 'kis_credentials_rejected', body
    message = body.get('message') or body.get('detail')
    # Korean on the page; the broker's (English) words kept under 자세한 내용, and as a smaller line of the toast
    assert message and message not in shown, (message, shown)
    assert shown.startswith('한국투자증권이 App Key 또는 App Secret을 거부했습니다'), shown
    assert ('브로커 응답: ' + message, 'en') in server_details(browser, 'connect-error'), server_details(browser, 'connect-error')
    assert any(message in t for t in visible_error_toasts(browser))
    # The refused key pair is marked on its two fields and tied to the message (screen readers read it with them).
    assert connect_field_marks(browser) == [['true', 'connect-error'], ['true', 'connect-error'], [None, None]]


CONNECT_FIELD_MARKS = """
return ['appKey', 'appSecret', 'accountNumber'].map((id) => {
  const f = document.getElementById(id);
  return [f.getAttribute('aria-invalid'), f.getAttribute('aria-describedby')];
});
"""


def connect_field_marks(browser):
    return browser.execute_script(CONNECT_FIELD_MARKS)


def test_connect_form_problems_are_tied_to_their_fields(browser, demo):
    open_page(browser, demo, 'dave')
    fill_connect(browser, secret='', account='1234')
    error = el(browser, 'connect-error')
    wait(browser, lambda d: error.is_displayed() and error.text, message='no error shown')
    assert 'App Secret' in error.text and '계좌번호' in error.text, error.text
    assert connect_field_marks(browser) == [[None, None], ['true', 'connect-error'], ['true', 'connect-error']]
    assert browser.execute_script('return document.activeElement.id') == 'appSecret'
    # The account number put right: its mark goes, the secret's stays (nothing is sent to the broker yet).
    fill_connect(browser, secret='')
    wait(browser, lambda d: '계좌번호' not in error.text, message='the error still names the account number')
    assert error.is_displayed() and 'App Secret' in error.text, error.text
    assert connect_field_marks(browser) == [[None, None], ['true', 'connect-error'], [None, None]]


PROBE = """<!doctype html><meta charset="utf-8"><title>probe</title><body>
<script>
const p = new URLSearchParams(location.hash.slice(1));
fetch(p.get('url'), {headers: {Authorization: 'Bearer ' + p.get('jwt'), 'X-KIS-Token': p.get('kis')}})
  .then(async (r) => { document.body.dataset.result = 'ok:' + r.status + ':' + (await r.text()).length; })
  .catch((e) => { document.body.dataset.result = 'error:' + e.name + ':' + e.message; });
</script></body>
"""

FETCH_FROM_PAGE = """
const [url, jwt, kis, done] = arguments;
fetch(url, {headers: {Authorization: 'Bearer ' + jwt, 'X-KIS-Token': kis}, cache: 'no-store'})
  .then((r) => done('ok:' + r.status)).catch((e) => done('error:' + e.name));
"""


def test_origin_not_allowed_cannot_read_chart(browser, demo, tmp_path, reset_account):
    open_page(browser, demo, USER)
    connect(browser)
    wait_chart(browser)
    jwt = browser.execute_script("return sessionStorage.getItem('kisgw.jwt')")
    kis = browser.execute_script('return window.__kisgw.state().token')
    url = f'{demo.gateway}/domestic/chart/daily/005930?period=D'

    # from the page's own origin the same request is readable
    assert browser.execute_async_script(FETCH_FROM_PAGE, url, jwt, kis) == 'ok:200'

    (tmp_path / 'probe.html').write_text(PROBE, encoding='utf-8')
    port = free_port_base(1)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        from urllib.parse import urlencode
        browser.get(f'http://127.0.0.1:{port}/probe.html#' + urlencode({'url': url, 'jwt': jwt, 'kis': kis}))
        result = wait(browser, lambda d: d.find_element(By.TAG_NAME, 'body').get_attribute('data-result'))
        shot(browser, '06-foreign-origin.png')
        assert result.startswith('error:TypeError'), result
    finally:
        server.shutdown()
        server.server_close()

    # and the gateway does not grant that origin anything
    req = urllib.request.Request(url, headers={'Origin': f'http://127.0.0.1:{port}', 'Authorization': f'Bearer {jwt}',
                                               'X-KIS-Token': kis})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers.get('Access-Control-Allow-Origin') is None


def test_environment_switch_disconnect_and_encrypted_store(browser, demo, reset_account):
    open_page(browser, demo, USER)
    connect(browser, 'SANDBOX')
    wait_chart(browser)
    browser.execute_script('window.__noReload = true')

    el(browser, 'env-LIVE').click()
    wait(browser, lambda d: status(d) == ('disconnected', '연결 안됨'))
    assert '실계좌' in el(browser, 'status-detail').text
    connect(browser, 'LIVE')
    assert '실계좌' in el(browser, 'status-detail').text
    wait_chart(browser)
    assert browser.execute_script('return window.__noReload') is True

    # A reload shows the environment selected last when it has a connected account (it always went back to 모의투자)
    browser.refresh()
    wait(browser, lambda d: d.execute_script('return window.__kisgw.state() && window.__kisgw.state().user') == USER)
    wait(browser, lambda d: status(d) == ('connected', '연결됨') and '실계좌' in el(d, 'status-detail').text,
         message=f'not 실계좌 after the reload: {status(browser)} {el(browser, "status-detail").text!r}')
    assert el(browser, 'env-LIVE').get_attribute('aria-checked') == 'true'
    wait_chart(browser)

    browser.execute_script('window.__noReload = true')
    el(browser, 'env-SANDBOX').click()
    wait(browser, lambda d: status(d) == ('connected', '연결됨') and '모의투자' in el(d, 'status-detail').text)
    assert browser.execute_script('return window.__noReload') is True

    # tokens are in localStorage only as ciphertext (beside them, the environment last selected: a plain name)
    stored = browser.execute_script(
        'return Object.keys(localStorage).filter(k => k.startsWith("kisgw.")).map(k => [k, localStorage.getItem(k)])')
    token = browser.execute_script('return window.__kisgw.state().token')
    entries = [(k, v) for k, v in stored if k.startswith('kisgw.v1.')]
    assert len(entries) == 2, stored
    for _, value in entries:
        assert token not in value and '"ct"' in value
    assert [(k, v) for k, v in stored if not k.startswith('kisgw.v1.')] == [(f'kisgw.environment.{USER}', 'SANDBOX')], stored

    # a reload restores the connection from the encrypted store
    browser.refresh()
    wait(browser, lambda d: d.execute_script('return window.__kisgw.state() && window.__kisgw.state().user') == USER)
    wait(browser, lambda d: status(d) == ('connected', '연결됨'))

    # disconnect LIVE (two clicks: arm, confirm)
    el(browser, 'env-LIVE').click()
    wait(browser, lambda d: status(d) == ('connected', '연결됨') and '실계좌' in el(d, 'status-detail').text)
    el(browser, 'acct-disconnect').click()
    el(browser, 'acct-disconnect').click()
    wait(browser, lambda d: status(d) == ('disconnected', '연결 안됨'))
    shot(browser, '07-live-disconnected.png')
    # The disconnect reached the broker (DELETE /api/kis/account): it no longer has the LIVE account.
    code, body = broker_post(demo, '/api/dev/signin', {'userId': USER}, jwt='')
    assert code == 200, body
    got, _, text = http_get(demo.ui.rstrip('/') + '/api/kis/account?environment=LIVE',
                            headers={'Authorization': f"Bearer {body['token']}"})
    assert got == 404, f'the broker still has the LIVE account: {got} {text[:200]}'

    # LIVE, selected last, has no account now: a reload shows 모의투자, which has one
    browser.refresh()
    wait(browser, lambda d: d.execute_script('return window.__kisgw.state() && window.__kisgw.state().user') == USER)
    wait(browser, lambda d: status(d) == ('connected', '연결됨') and '모의투자' in el(d, 'status-detail').text,
         message=f'not 모의투자 after the reload: {status(browser)} {el(browser, "status-detail").text!r}')
    assert el(browser, 'env-SANDBOX').get_attribute('aria-checked') == 'true'
    assert visible_error_toasts(browser) == []


def test_assets_served_safely(demo):
    def get(path):
        return http_get(demo.ui.rstrip('/') + path)

    code, headers, body = get('/')
    assert code == 200 and 'text/html' in headers['Content-Type'] and '한국투자증권 계정 연결' in body.decode()
    code, headers, _ = get('/ui/kis-client.js')
    assert code == 200 and 'javascript' in headers['Content-Type'] and 'no-cache' in headers['Cache-Control']
    code, headers, body = get('/ui/config.json')
    assert code == 200 and json.loads(body)['gatewayUrl'].rstrip('/') == demo.gateway
    for path in ('/ui/..%2FPackage.swift', '/ui/../Package.swift', '/ui/.hidden', '/ui/nope.js'):
        assert get(path)[0] == 404, path


CSP_PROBE = """
const [url, done] = [arguments[0], arguments[arguments.length - 1]];
const seen = [];
const listener = (e) => seen.push(e.violatedDirective);
document.addEventListener('securitypolicyviolation', listener);
fetch(url, {cache: 'no-store', credentials: 'omit'})
  .then((r) => 'ok:' + r.status, (e) => 'error:' + e.name)
  .then((result) => setTimeout(() => {
    document.removeEventListener('securitypolicyviolation', listener);
    done([result, seen]);
  }, 200));
"""


def test_page_fetches_only_from_broker_and_gateway(browser, demo):
    code, headers, _ = http_get(demo.ui)
    assert code == 200
    assert f"connect-src 'self' {demo.gateway};" in headers['Content-Security-Policy'], headers['Content-Security-Policy']
    browser.get(demo.ui)
    wait(browser, lambda d: d.execute_script('return document.readyState') == 'complete')
    # no global holds the KIS token (the test hook is there on `?debug=1` only)
    assert browser.execute_script('return typeof window.__kisgw') == 'undefined'
    # the gateway's origin and the page's own are allowed ...
    assert browser.execute_async_script(CSP_PROBE, f'{demo.gateway}/healthz') == ['ok:200', []]
    assert browser.execute_async_script(CSP_PROBE, demo.ui_origin + '/ui/config.json') == ['ok:200', []]
    # ... any other origin (here the simulator, which answers CORS-less GETs) is refused by the browser itself
    result, seen = browser.execute_async_script(CSP_PROBE, f'{demo.simulator}/__sim/stats')
    assert result == 'error:TypeError' and any(d.startswith('connect-src') for d in seen), (result, seen)


# --------------------------------------------------------------------------------------------------------------
# Chart loading and error states, periods, the connect form, a refresh that keeps failing.

RECORD_TOASTS = """
window.__toasts = [];
new MutationObserver((records) => {
  for (const r of records) for (const n of r.addedNodes) window.__toasts.push([n.className, n.textContent]);
}).observe(document.getElementById('toasts'), {childList: true});
"""


def record_toasts(browser):
    """Keeps every toast shown from now on (kind, text) in window.__toasts: a toast goes away after a few seconds."""
    browser.execute_script(RECORD_TOASTS)


def recorded_toasts(browser):
    return [tuple(t) for t in browser.execute_script('return window.__toasts')]


# Every value #status[data-status] takes from now on.
RECORD_STATUS = """
window.__statuses = [];
new MutationObserver(() => window.__statuses.push(document.getElementById('status').dataset.status))
  .observe(document.getElementById('status'), {attributes: true, attributeFilter: ['data-status']});
"""

# The broker's answers to /api/kis/account/validate, as the page received them.
RECORD_VALIDATE = """
window.__validated = [];
const pageFetch = window.fetch;
window.fetch = async (...args) => {
  const r = await pageFetch(...args);
  if (String(args[0]).includes('/api/kis/account/validate')) window.__validated.push(await r.clone().json());
  return r;
};
"""


@pytest.fixture
def sim_faults(demo):
    """Sets the demo simulator's faults (its /__sim/faults body); every fault is lifted after the test, pass or fail,
    since the demo is shared by all tests."""
    def set_faults(**body):
        assert sim_post(demo, '/__sim/faults', body) == 200
    yield set_faults
    assert sim_post(demo, '/__sim/faults', {'mode': 'none'}) == 200


@pytest.fixture
def connected_account(demo):
    """USER has a SANDBOX account connected at the broker, with a token the broker can hand out; connected through
    the broker's API only when it is not already (the broker allows a user 10 account checks back to back, then one
    every 6 s, and the tests that connect through the page use them). The page gets the token as a new browser does."""
    code, body = broker_post(demo, '/api/dev/signin', {'userId': USER}, jwt='')
    assert code == 200, body
    jwt = body['token']
    advance_sim_clock(demo)   # the broker may need a new KIS token
    code, body = broker_post(demo, '/api/kis/token/refresh', {'environment': 'SANDBOX'}, jwt)
    if code == 404:
        advance_sim_clock(demo)
        code, body = broker_post(demo, '/api/kis/token', {'appKey': APP_KEY, 'appSecret': APP_SECRET,
                                                          'accountNumber': '12345678-01', 'environment': 'SANDBOX'}, jwt)
    assert code == 200, body


def open_connected(browser, demo):
    open_page(browser, demo, USER)
    wait(browser, lambda d: status(d) == ('connected', '연결됨'), message=f'not connected: {status(browser)}')


def chart_error_lines(browser):
    """The chart error's lines shown (the Korean headline, KIS's own message, when to try again)."""
    return [d.text for d in el(browser, 'chart-error').find_elements(By.XPATH, './div')]


def server_details(browser, id_):
    """The lines of the closed "자세한 내용" under an error (the servers' own words, the code): (text, lang)."""
    return [tuple(x) for x in browser.execute_script("""
const d = document.querySelector('#' + arguments[0] + ' details.server-detail');
if (!d) return [];
return [...d.querySelectorAll(':scope > div')].map((x) => [x.textContent, x.lang]);
""", id_)]


def test_demo_sign_in_refusal_is_told_in_korean(browser, demo):
    """The demo's sign-in refuses a user id it cannot take: the page says so in Korean (the broker's English detail
    is not shown), and the session signed in before goes on."""
    open_page(browser, demo, 'korean-refusal')
    field = el(browser, 'signin-user')
    field.clear()
    field.send_keys('bad user!')
    el(browser, 'signin-button').click()
    wait(browser, lambda d: any('사용자 ID는' in t for t in visible_error_toasts(d)),
         message=f'no Korean refusal: {visible_error_toasts(browser)}')
    assert not any('userId' in t for t in visible_error_toasts(browser)), visible_error_toasts(browser)
    assert browser.execute_script('return window.__kisgw.state().user') == 'korean-refusal'


def test_signing_in_as_another_user_clears_the_chart(browser, demo, connected_account):
    """The chart of the user before does not stay drawn under the next user's notice."""
    open_connected(browser, demo)
    wait_chart(browser)
    assert_canvas_drawn(browser)
    other = 'someone-else-' + secrets.token_hex(3)
    field = el(browser, 'signin-user')
    field.clear()
    field.send_keys(other)
    el(browser, 'signin-button').click()
    wait(browser, lambda d: d.execute_script('return window.__kisgw.state().user') == other,
         message=f'not signed in as {other}: {visible_error_toasts(browser)}')
    px = browser.execute_script(CANVAS_PIXELS)
    assert px['red'] + px['blue'] == 0, f"the previous user's candles are still drawn: {px}"


def test_chart_loading_and_error_states(browser, demo, connected_account, sim_faults):
    """web-client.md: the chart has loading and error states. KIS's error is shown with its Korean headline, KIS's
    own message and the gateway's status and code; a range the gateway refuses likewise; while a chart loads, the
    spinner is up and the 조회 button is disabled."""
    open_connected(browser, demo)
    wait_chart(browser)

    # KIS answers an error the gateway passes on (not a token, rate or credentials code): 502 upstream_error with
    # KIS's msg_cd and msg1. Symbols no other test asks for, so the gateway must go to KIS.
    sim_faults(mode='kis_error', msg_cd='OPSQ0002')
    load_chart(browser, symbol='068270')
    wait(browser, lambda d: chart_state(d)[0] in ('ready', 'error', 'empty'), message='the chart did not finish loading')
    assert chart_state(browser) == ('error', '502'), (chart_state(browser), el(browser, 'chart-error').text)
    assert el(browser, 'chart-error').is_displayed()
    assert not el(browser, 'chart-loading').is_displayed()
    lines = chart_error_lines(browser)
    assert lines[0] == '한국투자증권 API 오류', lines
    assert '한국투자증권: OPSQ0002 없는 서비스 코드 입니다' in lines, lines
    assert ('오류 코드: 502 upstream_error', 'en') in server_details(browser, 'chart-error'), server_details(browser, 'chart-error')
    assert el(browser, 'chart-title').text == '068270'
    assert el(browser, 'chart-submit').is_enabled()
    assert status(browser) == ('connected', '연결됨'), 'a KIS error is not a token problem'
    shot(browser, '08-chart-kis-error.png')

    # A range longer than the gateway's max_range_days (3660): 400 range_too_large, before any KIS call. (The form
    # says so itself before asking — test_chart_form_is_checked_before_the_gateway_is_asked; the page's hook asks.)
    sim_faults(mode='none')
    browser.execute_script("window.__kisgw.loadChart({symbol: '005930', start: '2000-01-03', end: '2024-03-29'})")
    wait(browser, lambda d: chart_state(d) == ('error', '400'), message=f'not refused: {chart_state(browser)}')
    lines = chart_error_lines(browser)
    assert lines[0] == '조회 기간이 너무 깁니다 (최대 3,660일)', lines
    details = server_details(browser, 'chart-error')
    assert ('오류 코드: 400 range_too_large', 'en') in details, details
    assert any(t.startswith('게이트웨이 응답: ') and '3660' in t and lang == 'en' for t, lang in details), \
        f'the gateway detail is not kept as its: {details}'
    shot(browser, '09-chart-range-too-large.png')

    # KIS answers slowly: the loading state (spinner shown, button disabled) lasts until the chart is drawn.
    sim_faults(mode='none', latency_ms=2500)
    load_chart(browser, symbol='207940', start='2024-01-02', end='2024-03-29')
    wait(browser, lambda d: chart_state(d)[0] != 'submitting', message='the chart form was not submitted')
    assert chart_state(browser)[0] == 'loading', chart_state(browser)
    assert el(browser, 'chart-loading').is_displayed()
    assert '불러오는 중' in el(browser, 'chart-loading').text
    assert not el(browser, 'chart-submit').is_enabled(), 'the submit button is enabled while the chart loads'
    assert not el(browser, 'chart-error').is_displayed(), 'the previous error is still shown while loading'
    shot(browser, '10-chart-loading.png')
    assert wait_chart(browser) == '200'
    assert not el(browser, 'chart-loading').is_displayed()
    assert el(browser, 'chart-submit').is_enabled()
    assert '207940' in el(browser, 'chart-title').text
    assert_canvas_drawn(browser)


def test_a_chart_still_loading_is_not_drawn_after_the_environment_changed(browser, demo, connected_account, sim_faults):
    """A chart asked for under the SANDBOX account that arrives after the user switched to LIVE (not connected) is
    not drawn under "연결 안됨": the page shows what the status says, not the answer of a request it no longer wants."""
    open_connected(browser, demo)
    wait_chart(browser)
    sim_faults(mode='none', latency_ms=2500)
    load_chart(browser, symbol='035420', start='2024-01-02', end='2024-03-29')   # no other test asks for it
    wait(browser, lambda d: chart_state(d)[0] == 'loading', message=f'not loading: {chart_state(browser)}')
    el(browser, 'env-LIVE').click()
    wait(browser, lambda d: status(d) == ('disconnected', '연결 안됨'))
    assert chart_state(browser)[0] == 'idle', chart_state(browser)
    # The answer arrives (2.5 s of KIS latency) — and is not drawn.
    wait(browser, lambda d: d.execute_script(
        "return performance.getEntriesByType('resource').some((e) => e.name.includes('/035420') && e.responseEnd > 0)"),
        timeout=15, message='the chart request did not finish')
    browser.execute_script('return new Promise((r) => setTimeout(r, 300))')
    assert chart_state(browser)[0] == 'idle', chart_state(browser)
    assert el(browser, 'chart-title').text == '종목을 조회하세요'
    px = browser.execute_script(CANVAS_PIXELS)
    assert px['red'] + px['blue'] == 0, f"the SANDBOX chart was drawn under LIVE's notice: {px}"
    assert '실계좌 계정이 연결되어 있지 않습니다' in el(browser, 'chart-empty').text
    el(browser, 'env-SANDBOX').click()


def test_a_field_the_broker_refuses_is_told_in_korean_with_its_message(browser, demo):
    """An app key the page lets through (not empty) but the broker refuses (a space in it): the form says in Korean
    what is wrong with which field, marks that field, and still shows the broker's own message (web-client.md)."""
    open_page(browser, demo, 'field-refusal')
    fill_connect(browser, key='PS with spaces')
    error = el(browser, 'connect-error')
    wait(browser, lambda d: error.is_displayed() and error.text, message='no error shown')
    assert error.get_attribute('data-code') == 'invalid_parameter', error.text
    assert error.text.startswith('요청 값이 올바르지 않습니다 — App Key는 공백 없는'), error.text
    # the broker's own words: kept, under 자세한 내용 (closed), named as the broker's and marked English
    assert 'appKey must be' not in error.text, error.text
    details = server_details(browser, 'connect-error')
    assert any(t.startswith('브로커 응답: appKey must be') and lang == 'en' for t, lang in details), details
    assert connect_field_marks(browser) == [['true', 'connect-error'], [None, None], [None, None]]


def test_the_chart_and_the_environment_switch_work_from_the_keyboard(browser, demo, connected_account):
    """Without a pointer: the chart takes the focus and ←/→, Home and End put the crosshair on a candle, whose date
    and prices are read out (a live region) and the canvas says what it shows; the environment switch is one tab
    stop whose arrow keys move the choice (a radio group)."""
    from selenium.webdriver.common.keys import Keys
    open_connected(browser, demo)
    wait_chart(browser)
    load_chart(browser, symbol='005930', start='2024-01-02', end='2024-03-29')
    wait_chart(browser)
    canvas = el(browser, 'chart-canvas')
    label = canvas.get_attribute('aria-label')
    assert '일봉' in label and '2024년 1월 2일' in label and '2024년 3월 29일' in label, label
    canvas.send_keys(Keys.END)   # focuses the canvas, then End
    tip = el(browser, 'crosshair')
    wait(browser, lambda d: tip.is_displayed(), message='no crosshair from the keyboard')
    assert browser.execute_script('return document.activeElement.id') == 'chart-canvas'
    assert tip.get_attribute('role') == 'status' and tip.get_attribute('aria-live') == 'polite'
    assert '2024년 3월 29일' in tip.text and '종가' in tip.text, tip.text
    canvas.send_keys(Keys.ARROW_LEFT)
    assert '2024년 3월 28일' in tip.text, tip.text
    canvas.send_keys(Keys.HOME)
    assert '2024년 1월 2일' in tip.text, tip.text
    canvas.send_keys(Keys.ARROW_LEFT)   # stays on the first
    assert '2024년 1월 2일' in tip.text, tip.text
    canvas.send_keys(Keys.ESCAPE)
    assert not tip.is_displayed()

    sandbox, live = el(browser, 'env-SANDBOX'), el(browser, 'env-LIVE')
    assert (sandbox.get_attribute('tabindex'), live.get_attribute('tabindex')) == ('0', '-1')
    sandbox.send_keys(Keys.ARROW_RIGHT)
    wait(browser, lambda d: status(d) == ('disconnected', '연결 안됨'), message='the arrow key did not switch')
    assert live.get_attribute('aria-checked') == 'true' and live.get_attribute('tabindex') == '0'
    assert browser.execute_script('return document.activeElement.id') == 'env-LIVE'
    live.send_keys(Keys.ARROW_LEFT)
    wait(browser, lambda d: status(d) == ('connected', '연결됨'), message='the arrow key did not switch back')
    assert browser.execute_script('return document.activeElement.id') == 'env-SANDBOX'


def test_a_disconnect_in_another_tab_is_shown_here(browser, demo, connected_account):
    """Two tabs of one user: disconnecting in one turns the other to "연결 안됨" without a reload or a failed call
    (a `storage` event); connecting again in the first hands the second the new token."""
    open_connected(browser, demo)
    first = browser.current_window_handle
    browser.switch_to.new_window('tab')
    open_connected(browser, demo)
    wait_chart(browser)
    second = browser.current_window_handle
    browser.switch_to.window(first)
    el(browser, 'acct-disconnect').click()
    el(browser, 'acct-disconnect').click()
    wait(browser, lambda d: status(d) == ('disconnected', '연결 안됨'), message='not disconnected in the first tab')
    browser.switch_to.window(second)
    wait(browser, lambda d: status(d) == ('disconnected', '연결 안됨'), timeout=10,
         message=f'the second tab still shows {status(browser)}')
    assert browser.execute_script('return window.__kisgw.state().token') is None
    # ... and the chart of the account that is gone is not left drawn under it.
    assert chart_state(browser)[0] == 'idle', chart_state(browser)
    px = browser.execute_script(CANVAS_PIXELS)
    assert px['red'] + px['blue'] == 0, f"the disconnected account's chart is still drawn: {px}"
    browser.switch_to.window(first)
    advance_sim_clock(demo)   # KIS's minute between issuances for the app key
    connect(browser)
    token = browser.execute_script('return window.__kisgw.state().token')
    browser.switch_to.window(second)
    wait(browser, lambda d: status(d) == ('connected', '연결됨'), timeout=10,
         message=f'the second tab did not take the new token: {status(browser)}')
    assert browser.execute_script('return window.__kisgw.state().token') == token
    browser.close()
    browser.switch_to.window(first)


def test_weekly_and_yearly_charts(browser, demo, connected_account):
    """web-client.md: period D/W/M(/Y). The title names the period the gateway answered for; the candles are drawn."""
    open_connected(browser, demo)
    wait_chart(browser)
    assert '일봉' in el(browser, 'chart-title').text

    for period, label in (('W', '주봉'), ('Y', '년봉')):
        load_chart(browser, symbol='005930', period=period)
        assert wait_chart(browser) == '200'
        title = el(browser, 'chart-title').text
        assert label in title and '일봉' not in title, (period, title)
        assert_canvas_drawn(browser)
        url = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/chart/')).pop()")
        assert f'period={period}' in url, url
        shot(browser, f'11-chart-{period}.png')


def test_refresh_that_keeps_failing_is_shown_and_retried(browser, demo, connected_account):
    """web-client.md: a refresh that keeps failing is retried with backoff, visibly. The page reloads without its
    stored token while the broker's refresh cannot be reached: 토큰 만료 with the failures counted, until a retry
    gets through."""
    open_connected(browser, demo)
    wait_chart(browser)
    key = f'kisgw.v1.{USER}.SANDBOX'
    assert browser.execute_script('return localStorage.getItem(arguments[0])', key), 'no stored token entry'

    browser.execute_cdp_cmd('Network.enable', {})
    browser.execute_cdp_cmd('Network.setBlockedURLs', {'urls': ['*/api/kis/token/refresh*']})
    try:
        browser.execute_script('localStorage.removeItem(arguments[0])', key)
        browser.refresh()
        wait(browser, lambda d: d.execute_script('return window.__kisgw.state() && window.__kisgw.state().user') == USER)
        wait(browser, lambda d: status(d) == ('expired', '토큰 만료'), message=f'not shown expired: {status(browser)}')
        wait(browser, lambda d: re.search(r'토큰 갱신 실패 [1-9]\d*회', el(d, 'status-detail').text),
             message=f'no failure shown: {el(browser, "status-detail").text!r}')
        assert status(browser) == ('expired', '토큰 만료')
        refresh_text = el(browser, 'acct-refresh').text
        assert re.match(r'실패 [1-9]\d*회 — .+ 재시도', refresh_text), refresh_text
        assert '브로커에 연결할 수 없습니다' in refresh_text, refresh_text   # the refresh is the broker's
        assert 'warn' in el(browser, 'acct-refresh').get_attribute('class')
        assert browser.execute_script('return window.__kisgw.state().token') is None
        shot(browser, '13-refresh-failing.png')
    finally:
        browser.execute_cdp_cmd('Network.setBlockedURLs', {'urls': []})

    # the next retry (no click) gets through
    wait(browser, lambda d: status(d) == ('connected', '연결됨'), message=f'not reconnected: {status(browser)}')
    assert '실패' not in el(browser, 'status-detail').text
    assert '예정' in el(browser, 'acct-refresh').text
    assert browser.execute_script('return window.__kisgw.state().token')
    assert browser.execute_script('return localStorage.getItem(arguments[0])', key), 'the new token was not stored'


# --------------------------------------------------------------------------------------------------------------
# The review of the page in headless Chromium (environment kept, a failed chart, Korean text, touch, a phone's width,
# the chart form's own checks, screen readers, monthly and yearly candles).


def test_a_failed_chart_does_not_leave_the_one_before_drawn(browser, demo, connected_account, sim_faults):
    """A chart that cannot be loaded (the gateway unreachable) is not shown over the chart before: the canvas is
    cleared and says which symbol failed, ←/→ read nothing, and the error is told in Korean (no bare "network").
    While a chart loads, the one before is not presented as it either."""
    from selenium.webdriver.common.keys import Keys
    open_connected(browser, demo)
    wait_chart(browser)
    assert_canvas_drawn(browser)
    browser.execute_cdp_cmd('Network.enable', {})
    browser.execute_cdp_cmd('Network.setBlockedURLs', {'urls': ['*/chart/daily/*']})
    try:
        load_chart(browser, symbol='051910')
        wait(browser, lambda d: chart_state(d)[0] == 'error', message=f'the chart did not fail: {chart_state(browser)}')
    finally:
        browser.execute_cdp_cmd('Network.setBlockedURLs', {'urls': []})
    px = browser.execute_script(CANVAS_PIXELS)
    assert px['red'] + px['blue'] == 0, f'the chart before is still drawn under the error: {px}'
    assert el(browser, 'chart-title').text == '051910'
    label = el(browser, 'chart-canvas').get_attribute('aria-label')
    assert '051910' in label and '불러오지 못했습니다' in label and '개' not in label, label
    browser.execute_script("document.getElementById('chart-canvas').focus()")
    el(browser, 'chart-canvas').send_keys(Keys.ARROW_LEFT)
    assert not el(browser, 'crosshair').is_displayed(), el(browser, 'crosshair').text
    shown = el(browser, 'chart-error').text
    assert '게이트웨이에 연결할 수 없습니다' in shown, shown
    assert not re.search(r'[A-Za-z]{4,}', shown), f'English shown in the error: {shown!r}'
    shot(browser, '20-chart-network-error.png')

    # loading (KIS slow): the canvas is empty and says it is loading the symbol asked for
    sim_faults(mode='none', latency_ms=2500)
    load_chart(browser, symbol='105560', start='2024-01-02', end='2024-03-29')
    wait(browser, lambda d: chart_state(d)[0] == 'loading', message=f'not loading: {chart_state(browser)}')
    px = browser.execute_script(CANVAS_PIXELS)
    assert px['red'] + px['blue'] == 0, f'a chart is drawn under the loading notice: {px}'
    assert el(browser, 'chart-title').text == '105560'
    assert '불러오는 중' in el(browser, 'chart-canvas').get_attribute('aria-label')
    assert wait_chart(browser) == '200'
    assert_canvas_drawn(browser)


def test_a_gateway_refusal_is_korean_first_with_its_words_kept_as_detail(browser, demo, connected_account):
    """The gateway's English detail ("start must not be after end") is not shown as the message: the error says it
    in Korean, and keeps the gateway's words and the code under a closed 자세한 내용 (lang en). Account values
    wrap between words, not inside one."""
    open_connected(browser, demo)
    wait_chart(browser)
    # sent as it is (the form's own checks would refuse it before the gateway)
    browser.execute_script("window.__kisgw.loadChart({symbol: '005930', start: '2024-03-29', end: '2024-01-02'})")
    wait(browser, lambda d: chart_state(d) == ('error', '400'), message=f'not refused: {chart_state(browser)}')
    shown = el(browser, 'chart-error').text
    assert chart_error_lines(browser)[0] == '요청 값이 올바르지 않습니다 — 시작일이 종료일보다 늦습니다', shown
    assert 'start must not' not in shown and 'invalid_parameter' not in shown, shown
    assert '자세한 내용' in shown
    details = server_details(browser, 'chart-error')
    assert details == [('게이트웨이 응답: start must not be after end', 'en'), ('오류 코드: 400 invalid_parameter', 'en')], \
        details
    browser.find_element(By.CSS_SELECTOR, '#chart-error details summary').click()
    assert 'start must not be after end' in el(browser, 'chart-error').text
    shot(browser, '21-chart-error-details.png')
    dd = browser.execute_script(
        "const s = getComputedStyle(document.getElementById('acct-refresh')); return [s.wordBreak, s.overflowWrap]")
    assert dd[0] != 'break-all' and dd[1] == 'anywhere', dd


def touch_tap(browser, element, x=0, y=0):
    """A finger's tap on `element`, `x`/`y` from its centre (WebDriver's touch pointer: pointerType "touch")."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    actions = ActionBuilder(browser, mouse=PointerInput(interaction.POINTER_TOUCH, 'finger'))
    actions.pointer_action.move_to(element, x, y).pointer_down().pause(0.05).pointer_up()
    actions.perform()


def test_the_crosshair_works_by_touch_and_the_page_still_scrolls(browser, demo, connected_account):
    """On a phone: a tap on the chart shows the crosshair, which stays once the finger lifts; a tap elsewhere hides
    it. The chart lets the page scroll vertically (touch-action pan-y: it was none, and the page could not be
    scrolled over the chart)."""
    open_connected(browser, demo)
    wait_chart(browser)
    load_chart(browser, symbol='005930', start='2024-01-02', end='2024-03-29')
    wait_chart(browser)
    canvas = el(browser, 'chart-canvas')
    assert browser.execute_script('return getComputedStyle(arguments[0]).touchAction', canvas) == 'pan-y'
    browser.execute_script("""
window.__pointers = [];
document.getElementById('chart-canvas').addEventListener('pointerdown', (e) => window.__pointers.push(e.pointerType));
""")
    tip = el(browser, 'crosshair')
    touch_tap(browser, canvas, 60, 0)
    assert browser.execute_script('return window.__pointers') == ['touch']
    wait(browser, lambda d: tip.is_displayed(), timeout=5, message='no crosshair after a tap')
    browser.execute_script('return new Promise((r) => setTimeout(r, 300))')
    assert tip.is_displayed(), 'the crosshair went when the finger lifted'
    assert re.search(r'\d{4}년 \d{1,2}월 \d{1,2}일', tip.text) and '종가' in tip.text, tip.text
    shot(browser, '22-touch-crosshair.png')
    touch_tap(browser, el(browser, 'chart-title'))
    wait(browser, lambda d: not tip.is_displayed(), timeout=5, message='the crosshair stayed after a tap elsewhere')


def test_status_words_stay_whole_on_a_phone(browser, demo, connected_account):
    """At 375 px the header's status read "연결 / 됨" over two lines: a status word is not broken."""
    browser.execute_cdp_cmd('Emulation.setDeviceMetricsOverride',
                            {'width': 375, 'height': 812, 'deviceScaleFactor': 1, 'mobile': True})
    open_connected(browser, demo)
    wait_chart(browser)
    lines = """
const el = document.getElementById(arguments[0]);
const r = document.createRange();
r.selectNodeContents(el);
return new Set([...r.getClientRects()].filter((x) => x.width > 0).map((x) => Math.round(x.top))).size;
"""
    assert browser.execute_script('return document.documentElement.clientWidth') == 375
    shot(browser, '23-phone-375.png')
    assert el(browser, 'status-text').text == '연결됨'
    assert browser.execute_script(lines, 'status-text') == 1, 'the status word is broken over two lines'
    # the switch to the other environment: 연결 안됨 stays whole too
    el(browser, 'env-LIVE').click()
    wait(browser, lambda d: status(d) == ('disconnected', '연결 안됨'))
    assert browser.execute_script(lines, 'status-text') == 1, 'the status words are broken over two lines'
    el(browser, 'env-SANDBOX').click()


def chart_requests(browser):
    return browser.execute_script(
        "return performance.getEntriesByType('resource').filter((e) => e.name.includes('/chart/daily/')).length")


def chart_field_marks(browser):
    return browser.execute_script("""
return ['symbol', 'start', 'end'].map((id) => {
  const f = document.getElementById(id);
  return [f.getAttribute('aria-invalid'), f.getAttribute('aria-describedby')];
});""")


def set_field(browser, id_, value):
    """Sets a field's value as typing does (an input event)."""
    browser.execute_script("const f = document.getElementById(arguments[0]); f.value = arguments[1];"
                           "f.dispatchEvent(new Event('input', {bubbles: true}))", id_, value)


def test_chart_form_is_checked_before_the_gateway_is_asked(browser, demo, connected_account):
    """A bad symbol, a start after the end, a range longer than the gateway allows and an end after today are said in
    Korean next to the form, on the fields (aria-invalid, tied to the message), without a request to the gateway;
    each mark goes when its field is put right. The date fields have a max (today in the market's zone)."""
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo
    from selenium.webdriver.common.keys import Keys
    open_connected(browser, demo)
    wait_chart(browser)
    error = el(browser, 'chart-form-error')
    assert not error.is_displayed()
    before = chart_requests(browser)
    ok = [[None, None]] * 3
    wrong = [['true', 'chart-form-error']]

    # a domestic symbol must be 6 to 9 letters or digits
    field = el(browser, 'symbol')
    field.clear()
    field.send_keys('ABC')
    el(browser, 'chart-submit').click()
    wait(browser, lambda d: error.is_displayed(), timeout=5, message='no message for a bad symbol')
    assert '국내 종목 코드는' in error.text, error.text
    assert chart_field_marks(browser) == wrong + [[None, None]] * 2
    assert browser.execute_script('return document.activeElement.id') == 'symbol'
    shot(browser, '24-chart-form-bad-symbol.png')
    field.send_keys(Keys.BACKSPACE * 3 + '005930')
    wait(browser, lambda d: not error.is_displayed(), timeout=5, message='the mark stayed once the symbol was right')
    assert chart_field_marks(browser) == ok

    # start after end
    set_field(browser, 'start', '2024-03-29')
    set_field(browser, 'end', '2024-01-02')
    el(browser, 'chart-submit').click()
    wait(browser, lambda d: error.is_displayed(), timeout=5, message='no message for a start after the end')
    assert error.text == '시작일이 종료일보다 늦습니다', error.text
    assert chart_field_marks(browser) == [[None, None]] + wrong * 2
    set_field(browser, 'start', '2023-12-01')
    wait(browser, lambda d: not error.is_displayed(), timeout=5, message='the marks stayed once the dates were right')
    assert chart_field_marks(browser) == ok

    # longer than [limits] max_range_days (the page has it from /ui/config.json)
    max_days = browser.execute_script("return fetch('/ui/config.json').then((r) => r.json()).then((c) => c.maxRangeDays)")
    assert max_days == 3660
    set_field(browser, 'start', '2000-01-03')
    set_field(browser, 'end', '2024-03-29')
    el(browser, 'chart-submit').click()
    wait(browser, lambda d: error.is_displayed(), timeout=5, message='no message for a range too long')
    assert '조회 기간은 최대 3,660일입니다' in error.text, error.text
    assert chart_field_marks(browser) == [[None, None]] + wrong * 2

    # an end after the market's today; the fields' max is that today
    today = datetime.now(ZoneInfo('Asia/Seoul')).date().isoformat()
    set_field(browser, 'start', '2024-01-02')
    set_field(browser, 'end', (datetime.fromisoformat(today) + timedelta(days=40)).date().isoformat())
    el(browser, 'chart-submit').click()
    wait(browser, lambda d: '종료일은 오늘' in error.text, timeout=5, message=f'no message for a future end: {error.text!r}')
    assert chart_field_marks(browser) == [[None, None], [None, None]] + wrong
    assert el(browser, 'end').get_attribute('max') in (today, datetime.now(ZoneInfo('Asia/Seoul')).date().isoformat())
    assert el(browser, 'start').get_attribute('max')
    assert chart_requests(browser) == before, 'the gateway was asked for a query the form refused'

    set_field(browser, 'end', '2024-03-29')
    wait(browser, lambda d: not error.is_displayed(), timeout=5)
    el(browser, 'chart-submit').click()
    assert wait_chart(browser) in ('200', '304')
    assert chart_field_marks(browser) == ok
    assert chart_requests(browser) == before + 1


def test_screen_readers_hear_each_change_once(browser, demo, connected_account):
    """The periodic render does not rewrite the live status when nothing changed (it was read again every 30 s);
    the chart's empty notice is announced (a status); a toast is its own live region, not an alert inside a live
    container (read twice)."""
    open_connected(browser, demo)
    wait_chart(browser)
    browser.execute_script("""
window.__statusMutations = [];
new MutationObserver((rs) => window.__statusMutations.push(...rs.map((r) => r.type)))
  .observe(document.getElementById('status'), {subtree: true, childList: true, characterData: true, attributes: true});
""")
    # a render with nothing changed (the client tells the page its state; the 30 s timer does the same)
    browser.execute_script("for (let i = 0; i < 3; i++) window.__kisgw.client.setEnvironment('SANDBOX')")
    browser.execute_script('return new Promise((r) => setTimeout(r, 200))')
    assert browser.execute_script('return window.__statusMutations') == [], 'the status was rewritten unchanged'
    # a change is still written
    el(browser, 'env-LIVE').click()
    wait(browser, lambda d: status(d) == ('disconnected', '연결 안됨'))
    assert browser.execute_script('return window.__statusMutations.length') > 0

    empty = el(browser, 'chart-empty')
    assert empty.is_displayed() and '실계좌 계정이 연결되어 있지 않습니다' in empty.text
    live = browser.execute_script("""
let e = arguments[0];
for (; e; e = e.parentElement) if (e.getAttribute('aria-live') || ['status', 'alert', 'log'].includes(e.getAttribute('role'))) return true;
return false;""", empty)
    assert live, '#chart-empty is not announced'
    el(browser, 'env-SANDBOX').click()
    wait(browser, lambda d: status(d) == ('connected', '연결됨'))

    # an error toast (a user id the demo refuses)
    field = el(browser, 'signin-user')
    field.clear()
    field.send_keys('bad user!')
    el(browser, 'signin-button').click()
    wait(browser, lambda d: visible_error_toasts(d), timeout=10, message='no error toast')
    nested = browser.execute_script("""
return [...document.querySelectorAll('#toasts .toast')].map((t) => {
  let live = 0;
  for (let e = t.parentElement; e; e = e.parentElement) {
    if (e.getAttribute('aria-live') || ['status', 'alert', 'log'].includes(e.getAttribute('role'))) live++;
  }
  return [t.getAttribute('role'), live];
});""")
    assert nested and all(role in ('alert', 'status') and live == 0 for role, live in nested), nested


def test_korean_particles_are_attached_and_terms_are_one(demo):
    """The page's Korean: particles attach to the word before them ("App Key는", not "App Key 는"), and KIS is
    called 한국투자증권 in the page's sentences (its access token 접근 토큰)."""
    spaced = re.compile(r'[A-Za-z)}] (?:은|는|을|를|이|가|로|으로|당|와|과|의|에)(?![가-힣])')
    for path in ('/', '/ui/app.js', '/ui/kis-client.js', '/ui/chart.js'):
        code, _, body = http_get(demo.ui.rstrip('/') + path)
        assert code == 200, path
        text = body.decode()
        assert not spaced.findall(text), (path, sorted({m for m in spaced.findall(text)}))
        assert not re.search(r'KIS (?:접근 )?토큰', text), (path, re.findall(r'.{20}KIS (?:접근 )?토큰.{10}', text))


def test_monthly_and_yearly_candles_are_named_by_month_and_year(browser, demo, connected_account):
    """A monthly candle's crosshair reads "2026년 7월" (not the first day, "2026년 7월 1일 (수)"), a yearly one's
    "2026년"; a yearly range starts on 1 January. The cache and timing line is legible (4.5:1 on white)."""
    open_connected(browser, demo)
    wait_chart(browser)
    canvas = el(browser, 'chart-canvas')
    tip = el(browser, 'crosshair')
    for period, pattern in (('M', r'^\d{4}년 \d{1,2}월$'), ('Y', r'^\d{4}년$')):
        load_chart(browser, symbol='005930', period=period)
        assert wait_chart(browser) in ('200', '304')
        if period == 'Y':
            assert el(browser, 'start').get_attribute('value').endswith('-01-01'), el(browser, 'start').get_attribute('value')
        if period == 'M':
            assert el(browser, 'start').get_attribute('value').endswith('-01'), el(browser, 'start').get_attribute('value')
        ActionChains(browser).move_to_element_with_offset(canvas, 0, 0).perform()
        wait(browser, lambda d: tip.is_displayed(), timeout=5, message='no crosshair')
        head = tip.find_element(By.CSS_SELECTOR, '.d').text
        assert re.match(pattern, head), (period, head)
        label = canvas.get_attribute('aria-label')
        assert '일 (' not in label, label
        ActionChains(browser).move_to_element(el(browser, 'chart-title')).perform()
    rgb = browser.execute_script("return getComputedStyle(document.getElementById('chart-meta')).color")

    def luminance(c):
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (int(x) for x in re.findall(r'\d+', rgb)[:3])
    lum = 0.2126 * luminance(r) + 0.7152 * luminance(g) + 0.0722 * luminance(b)
    assert (1.05) / (lum + 0.05) >= 4.5, rgb
