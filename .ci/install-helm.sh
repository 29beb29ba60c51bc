#!/usr/bin/env bash
# Install a real Helm v4 client for the tests, without the helm binary:
# PyPI's helm-sdkpy ships Helm compiled as a shared library, driven via cffi.
#
# Idempotent: exits 0 at once when `import helm_sdkpy` already works.
# The wheel declares Python >= 3.12; it works on 3.11 too, so it is fetched for
# 3.12 / any platform and installed with --ignore-requires-python --no-deps
# (recipe verified in shared/DEPENDENCIES.md, "A real Helm client").
#
# Env: PYTHON (default python3), HELM_SDKPY_VERSION (default 0.1.32).
set -euo pipefail

PYTHON="${PYTHON:-python3}"
VERSION="${HELM_SDKPY_VERSION:-0.1.32}"

importable() {
    "$PYTHON" -c 'import cffi, helm_sdkpy' >/dev/null 2>&1
}

if importable; then
    echo "install-helm: helm_sdkpy and cffi already importable with $("$PYTHON" --version 2>&1); nothing to do"
    exit 0
fi

if ! "$PYTHON" -c 'import cffi' >/dev/null 2>&1; then
    echo "install-helm: installing cffi"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check cffi
fi

if ! "$PYTHON" -c 'import helm_sdkpy' >/dev/null 2>&1; then
    wheel_dir="$(mktemp -d)"
    trap 'rm -rf "$wheel_dir"' EXIT
    echo "install-helm: downloading helm-sdkpy==$VERSION (wheel for python 3.12, platform any)"
    "$PYTHON" -m pip download --quiet --disable-pip-version-check \
        --no-deps --only-binary=:all: --python-version 3.12 --platform any \
        --dest "$wheel_dir" "helm-sdkpy==$VERSION"
    shopt -s nullglob
    wheels=("$wheel_dir"/helm_sdkpy-*.whl)
    if [ "${#wheels[@]}" -ne 1 ]; then
        echo "install-helm: expected one helm_sdkpy wheel in $wheel_dir, found ${#wheels[@]}" >&2
        exit 1
    fi
    echo "install-helm: installing $(basename "${wheels[0]}") (--ignore-requires-python --no-deps)"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check \
        --ignore-requires-python --no-deps "${wheels[0]}"
fi

if importable; then
    echo "install-helm: ok: helm_sdkpy $("$PYTHON" -c 'import importlib.metadata as m; print(m.version("helm-sdkpy"))') importable"
else
    echo "install-helm: installed, but 'import helm_sdkpy' still fails:" >&2
    "$PYTHON" -c 'import helm_sdkpy' >&2 || true
    exit 1
fi
