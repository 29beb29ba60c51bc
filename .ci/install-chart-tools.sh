#!/usr/bin/env bash
# Install what tests/deploy_chart.rs needs besides the Helm library (.ci/install-helm.sh):
# kubernetes-validate from PyPI, which bundles the Kubernetes JSON schemas the rendered chart
# is validated against (and pulls in jsonschema and PyYAML, which deploy/helm/check_chart.py
# uses for the vendored prometheus-operator CRD schemas).
#
# Idempotent: exits 0 at once when everything is importable. Pinned, so CI validates against
# the same schema bundle every run (1.37.0 carries Kubernetes schemas up to v1.37).
#
# Env: PYTHON (default python3), KUBERNETES_VALIDATE_VERSION (default 1.37.0).
set -euo pipefail

PYTHON="${PYTHON:-python3}"
VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"

importable() {
    "$PYTHON" -c 'import kubernetes_validate, jsonschema, yaml' >/dev/null 2>&1
}

installed_version() {
    "$PYTHON" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null || true
}

if importable && [ "$(installed_version)" = "$VERSION" ]; then
    echo "install-chart-tools: kubernetes-validate $VERSION, jsonschema and PyYAML already importable with $("$PYTHON" --version 2>&1); nothing to do"
    exit 0
fi

echo "install-chart-tools: installing kubernetes-validate==$VERSION (with its dependencies)"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
    "kubernetes-validate==$VERSION"

if importable; then
    echo "install-chart-tools: ok: kubernetes-validate $(installed_version) importable"
else
    echo "install-chart-tools: installed, but the imports still fail:" >&2
    "$PYTHON" -c 'import kubernetes_validate, jsonschema, yaml' >&2 || true
    exit 1
fi
