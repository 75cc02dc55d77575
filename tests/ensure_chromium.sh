#!/usr/bin/env bash
# The browser tests drive Debian's Chromium (Playwright's own browser download cannot
# work offline). Install it from apt when it is missing and we are allowed to.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" = "0" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
elif command -v sudo >/dev/null; then
  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
else
  echo "chromium is missing and cannot be installed (not root): browser tests will be skipped" >&2
fi
