#!/usr/bin/env bash
# Install headless Chromium (Debian's `chromium` package) for tests/status_page.rs, which loads
# the admin status page with `chromium --headless --screenshot` and `--dump-dom`.
#
# Idempotent: exits 0 at once when `$CHARTCACHE_CHROMIUM` (default: chromium) runs and says
# its version. Installs with apt-get only as root on a Debian-like system; anything else is an
# error naming what to do, so CI fails here rather than later in the test.
#
# Env: CHARTCACHE_CHROMIUM (default chromium).
set -euo pipefail

CHROMIUM="${CHARTCACHE_CHROMIUM:-chromium}"

usable() {
    "$CHROMIUM" --headless --no-sandbox --version >/dev/null 2>&1
}

if usable; then
    echo "install-chromium: $("$CHROMIUM" --headless --no-sandbox --version 2>/dev/null) already usable; nothing to do"
    exit 0
fi

if [ "$CHROMIUM" != chromium ]; then
    echo "install-chromium: CHARTCACHE_CHROMIUM=$CHROMIUM does not run; fix the path or unset it" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-chromium: no chromium, and no root apt-get to install Debian's chromium package" >&2
    exit 1
fi

echo "install-chromium: installing Debian's chromium package"
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null

if usable; then
    echo "install-chromium: ok: $("$CHROMIUM" --headless --no-sandbox --version 2>/dev/null)"
else
    echo "install-chromium: installed, but '$CHROMIUM --headless --version' still fails:" >&2
    "$CHROMIUM" --headless --no-sandbox --version >&2 || true
    exit 1
fi
