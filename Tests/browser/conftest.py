"""Fixtures for the browser tests: a real `kisgw demo` process and headless Chromium driven by Selenium.

Environment:
- KISGW_DEMO_CMD: the command that starts the demo (default: `<repo>/.build/debug/kisgw demo`); `--port-base N`
  is appended.
- KISGW_DEMO_BIN: the kisgw binary, when KISGW_DEMO_CMD is not set.
- CHROMIUM / CHROMEDRIVER: browser and driver paths (default /usr/bin/chromium, /usr/bin/chromedriver).
"""
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
import random
import urllib.error
import urllib.request

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, '..', '..'))
ARTEFACTS = os.path.join(HERE, 'artefacts')
APP_KEY = 'PSbrowserTestAppKey0001'
APP_SECRET = 'browser-test-app-secret-0001'


# Offsets from --port-base that `kisgw demo` may use (gateway, broker/UI, live and sandbox simulators).
DEMO_PORT_OFFSETS = (0, 1, 2, 3, 4, 5, 80, 81, 1443, 1444, 21443, 21444)


def free_port_base(span=10, offsets=None):
    """A base port such that base+offset is free on 127.0.0.1 right now, for offsets 0..span-1 (or `offsets`)."""
    offsets = offsets or range(span)
    for _ in range(200):
        base = random.randrange(20000, 32000, 10)  # mostly below Linux's ephemeral ports (32768 up)
        socks = []
        try:
            for p in (base + o for o in offsets):
                s = socket.socket()
                s.bind(('127.0.0.1', p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError('no free port range')


def kisgw_binary():
    """The kisgw executable the tests run: KISGW_DEMO_BIN, else the debug build."""
    binary = os.environ.get('KISGW_DEMO_BIN') or os.path.join(REPO, '.build', 'debug', 'kisgw')
    if not os.path.exists(binary):
        pytest.fail(f'{binary} does not exist: build kisgw first (swift build) or set KISGW_DEMO_BIN')
    return binary


def log_tail(path, n=3000):
    """The last `n` characters of a log file ('' if it cannot be read)."""
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            return f.read()[-n:]
    except OSError:
        return ''


def http_get(url, headers=None, method='GET', data=None):
    """(status, headers, body) of one request; an HTTP error status is an answer too."""
    req = urllib.request.Request(url, headers=headers or {}, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


class Demo:
    """A running `kisgw demo`: its URLs, its JWT and its output."""

    def __init__(self, proc, urls, log_path):
        self.proc = proc
        self.ui = urls['UI'].rstrip('/') + '/'
        self.gateway = urls['Gateway'].rstrip('/')
        self.simulator = urls['Simulator'].rstrip('/')
        self.jwt = urls['JWT']
        self.log_path = log_path

    @property
    def ui_origin(self):
        return self.ui.rstrip('/')


@pytest.fixture(scope='session')
def demo(tmp_path_factory):
    os.makedirs(ARTEFACTS, exist_ok=True)
    base = free_port_base(offsets=DEMO_PORT_OFFSETS)
    data = tmp_path_factory.mktemp('demo-data')
    cmd = os.environ.get('KISGW_DEMO_CMD')
    if cmd:
        argv = shlex.split(cmd)
    else:
        argv = [kisgw_binary(), 'demo']
    argv += ['--port-base', str(base)]
    env = dict(os.environ, KISGW_DEMO_DATA=str(data), KISGW_DEMO_PORT_BASE=str(base),
               KISGW_DEMO_APP_KEY=APP_KEY, KISGW_DEMO_APP_SECRET=APP_SECRET)
    log_path = os.path.join(ARTEFACTS, 'demo.log')
    log = open(log_path, 'w', encoding='utf-8')
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
    urls = {}
    ready = threading.Event()

    def pump():
        for line in proc.stdout:
            log.write(line)
            log.flush()
            m = re.match(r'^\s*(UI|Gateway|Simulator|JWT):\s*(\S+)', line)
            if m and m.group(1) not in urls:
                urls[m.group(1)] = m.group(2)
                if len(urls) == 4:
                    ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    ready.wait(timeout=120)
    if len(urls) < 4:
        proc.kill()
        proc.wait()
        log.close()
        pytest.fail(f'kisgw demo did not print its UI/Gateway/Simulator/JWT lines (exit {proc.returncode}):\n'
                    f'{log_tail(log_path)}')
    d = Demo(proc, urls, log_path)
    wait_http(d.ui + 'ui/config.json')
    yield d
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def wait_http(url, timeout=30):
    import urllib.request
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def pytest_configure(config):
    config.addinivalue_line('markers', 'chrome_prefs(prefs): Chromium profile preferences for the test\'s browser')


@pytest.fixture
def browser(request):
    options = webdriver.ChromeOptions()
    prefs = request.node.get_closest_marker('chrome_prefs')
    if prefs:
        options.add_experimental_option('prefs', prefs.args[0])
    options.binary_location = os.environ.get('CHROMIUM', '/usr/bin/chromium')
    for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu',
                '--window-size=1400,950', '--force-device-scale-factor=1', '--lang=ko-KR',
                '--no-first-run', '--disable-extensions', '--disable-background-networking'):
        options.add_argument(arg)
    options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    service = Service(executable_path=os.environ.get('CHROMEDRIVER', '/usr/bin/chromedriver'))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_script_timeout(30)
    yield driver
    name = re.sub(r'[^A-Za-z0-9_.-]+', '_', request.node.name)
    try:
        driver.save_screenshot(os.path.join(ARTEFACTS, f'{name}.png'))
        with open(os.path.join(ARTEFACTS, f'{name}.console.txt'), 'w', encoding='utf-8') as f:
            for entry in driver.get_log('browser'):
                f.write(f"{entry['level']} {entry['message']}\n")
    except Exception:
        pass
    driver.quit()
