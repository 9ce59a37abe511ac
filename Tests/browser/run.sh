#!/usr/bin/env bash
# Browser tests: the web UI in headless Chromium (Debian's chromium + chromium-driver, Selenium from PyPI)
# against a real `kisgw demo`. Idempotent: installs only what is missing.
#
#   Tests/browser/run.sh                 # builds kisgw if .build/debug/kisgw is missing, then runs the tests
#   KISGW_DEMO_BIN=/path/kisgw Tests/browser/run.sh
#   Tests/browser/run.sh -k expiry       # extra arguments go to pytest
#
# Screenshots, the demo's output and the browser consoles go to Tests/browser/artefacts/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
dpkg -s fonts-noto-cjk >/dev/null 2>&1 || need_apt+=(fonts-noto-cjk)   # Korean glyphs in screenshots
if ((${#need_apt[@]})); then
    echo "installing ${need_apt[*]}" >&2
    sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import selenium, pytest' 2>/dev/null; then
    echo "installing selenium and pytest from PyPI" >&2
    "$python" -m pip install -q --disable-pip-version-check selenium pytest 2>&1 | grep -v 'as the .root. user' >&2 || true
fi

if [ -z "${KISGW_DEMO_CMD:-}" ] && [ -z "${KISGW_DEMO_BIN:-}" ] && [ ! -x "$repo/.build/debug/kisgw" ]; then
    echo "building kisgw" >&2
    (cd "$repo" && swift build --product kisgw)
fi

mkdir -p "$here/artefacts"
cd "$here"
# Selenium Manager must not try to download a browser or driver: both come from Debian.
export SE_OFFLINE=true PYTHONDONTWRITEBYTECODE=1
exec "$python" -m pytest -p no:cacheprovider -v "$@" test_web.py test_client_module.py test_broker_ui.py
