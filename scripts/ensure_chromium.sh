#!/usr/bin/env bash
# The browser tests drive Debian's Chromium (a browser build a test tool downloads itself does not run here).
# Present: nothing to do. Missing: installed with apt when we are root, else one line saying how, exit 1.
set -euo pipefail
for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then exit 0; fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests (apt-get install chromium)" >&2
    if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
        >/tmp/flux2-split-chromium-install.log 2>&1; then
        exit 0
    fi
    echo "make: could not install chromium with apt-get (see /tmp/flux2-split-chromium-install.log); install it and rerun" >&2
    exit 1
fi
echo "make: the browser tests need Chromium: run \`sudo apt-get install chromium\` (Debian/Ubuntu), then rerun" >&2
exit 1
