#!/usr/bin/env bash
# Install what the browser end-to-end test (tests/e2e/test_browser.py) needs: Debian's Chromium and the
# Playwright Python client. Playwright's own browser download (`playwright install`) cannot work on machines
# without internet, so the test launches /usr/bin/chromium instead; never call `playwright install` here.
# Idempotent: each step runs only when its piece is missing.
#   VENV  the project's venv that gets playwright (default: <repo>/.venv)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo/.venv}"

if [[ -x /usr/bin/chromium ]]; then
    echo "Chromium already present: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
else
    sudo=""
    if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium
    /usr/bin/chromium --version
fi

if "$venv/bin/python" -c "import playwright" 2>/dev/null; then
    echo "playwright already installed in $venv"
else
    "$venv/bin/python" -m pip install --quiet playwright
    "$venv/bin/python" -c "import playwright.sync_api"  # fails loudly if the install is broken
    echo "playwright installed in $venv"
fi
