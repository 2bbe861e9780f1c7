#!/usr/bin/env bash
# Debian's chromium for the report's browser tests (tests/test_report_browser.py drives it
# with Playwright's Python package through executable_path=/usr/bin/chromium; no browser
# is ever downloaded: `playwright install` is never run).  fonts-dejavu-core gives the
# screenshots readable text.  Idempotent; needs root and apt-get, else says why and fails
# (the browser tests then skip with their reason).
set -euo pipefail

if [ -x /usr/bin/chromium ] && fc-list 2>/dev/null | grep -qi dejavu; then
    echo "install-browser: chromium already installed ($(/usr/bin/chromium --version 2>/dev/null | head -1))"
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: needs root and apt-get to install Debian's chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "install-browser: installed $(/usr/bin/chromium --version 2>/dev/null | head -1)"
