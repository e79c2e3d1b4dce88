#!/usr/bin/env bash
# Debian's headless Chromium and its WebDriver for the browser page's tests, on a fresh Debian 12 machine
# or a reused one.
#
#   export TOMAAT_TEST_CHROMEDRIVER=$(bash scripts/chromium.sh | tail -1)
#
# Idempotent: installs the chromium and chromium-driver packages when they are missing (root, as on CI),
# checks that the browser starts headless, and prints the driver's path as the last line of stdout.
# Everything else goes to stderr. Playwright's and Selenium Manager's own browser downloads cannot work
# here (no network but the package registries), so the tests drive this system browser.
set -euo pipefail
say() { echo "chromium.sh: $*" >&2; }

if ! command -v chromium > /dev/null || ! command -v chromedriver > /dev/null; then
    say "installing Debian's chromium and chromium-driver"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q chromium chromium-driver >&2
fi
# As root the browser needs --no-sandbox; a crash here says more than a failing test would.
if ! version=$(timeout 60 chromium --headless=new --no-sandbox --disable-gpu --version 2>/dev/null); then
    say "chromium does not start"
    exit 1
fi
say "ready: $version"
command -v chromedriver
