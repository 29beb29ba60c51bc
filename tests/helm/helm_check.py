#!/usr/bin/env python3
"""Fetch a chart through a Helm repository with a real Helm v4 client.

Usage:
    python3 tests/helm/helm_check.py REPO_URL CHART [EXPECTED_VERSION] [--timeout SECS]
    python3 tests/helm/helm_check.py --probe    # only: is the client usable? (exit 0 or 3)

What it does, in a fresh temporary Helm home (HELM_CONFIG_HOME, HELM_CACHE_HOME,
HELM_DATA_HOME, HELM_REPOSITORY_CONFIG, HELM_REPOSITORY_CACHE all under one
temp dir, removed afterwards): `helm repo add`, `helm repo update`, then
`helm show chart REPO/CHART`, which reads index.yaml, picks the newest stable
(non-prerelease) version, downloads its .tgz from the URL in the index
(relative URLs resolved against REPO_URL) and returns its Chart.yaml.

Output and exit codes (a contract the Rust integration tests rely on):
    0  success; stdout gets one JSON line:
       {"ok": true, "name": "hello", "version": "0.2.0", "repo": "http://..."}
    1  any failure (repo add/update/show error, wrong chart name, version
       differing from EXPECTED_VERSION, timeout, crash); the error goes to
       stderr and stdout gets {"ok": false, "error": "..."}
    2  bad usage (argparse)
    3  helm_sdkpy (or cffi, or its native library) is not available, so the
       caller can tell "not installed" from "failed"; install it with
       .ci/install-helm.sh. With --probe: 0 or 3 only, the reason for 3 on
       stderr, nothing contacted (the tests decide run/ignore with it).

Client: PyPI's helm-sdkpy (Helm v4 compiled as a shared library, driven via
cffi), not the helm binary. Its `Pull` crashes in 0.1.32, so `Show` is used.
The Go runtime inside the library reads its environment when the library is
loaded, so the HELM_* variables are set in a child process's environment
before it starts: this script re-runs itself with `--child` for the Helm
work. The child also isolates a crash of the native library from the report.
Helm sends `User-Agent: Helm/4.x` and fetches `/index.yaml` then the chart.
"""

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_NOT_INSTALLED = 3

# Repository name used inside the throwaway Helm home.
REPO_NAME = "chartcache-check"


def fail(message):
    print(json.dumps({"ok": False, "error": message}), flush=True)
    print(f"helm_check: {message}", file=sys.stderr, flush=True)
    return EXIT_FAIL


def helm_available():
    """None when helm_sdkpy and its native library can be used, else the reason."""
    try:
        import helm_sdkpy  # noqa: F401  (import only: the library loads lazily)
        from helm_sdkpy import _ffi
    except ImportError as e:  # covers a missing cffi too
        return f"helm_sdkpy not importable: {e}"
    if _ffi._find_library() is None:
        return "helm_sdkpy has no native library for this platform"
    return None


def parse_chart_yaml(text):
    """Top-level `key: value` pairs of a Chart.yaml (enough for name/version)."""
    fields = {}
    for line in text.splitlines():
        if not line or line[0] in " \t#-" or ":" not in line:
            continue
        key, _, value = line.partition(":")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        fields[key.strip()] = value
    return fields


async def child_run(repo_url, chart):
    import helm_sdkpy as helm

    cfg = helm.Configuration(namespace="default", kubeconfig="/dev/null")
    await helm.RepoAdd(cfg).run(REPO_NAME, repo_url)
    await helm.RepoUpdate(cfg).run()
    return await helm.Show(cfg).chart(f"{REPO_NAME}/{chart}")


def child_main(args):
    """Runs inside the prepared HELM_* environment; prints the result JSON."""
    try:
        chart_yaml = asyncio.run(child_run(args.repo_url, args.chart))
    except Exception as e:  # every helm_sdkpy error is a failure to report
        return fail(f"{type(e).__name__}: {e}")
    fields = parse_chart_yaml(chart_yaml)
    name, version = fields.get("name"), fields.get("version")
    if name != args.chart:
        return fail(f"Chart.yaml name is {name!r}, expected {args.chart!r}; got:\n{chart_yaml}")
    if not version:
        return fail(f"Chart.yaml has no version; got:\n{chart_yaml}")
    if args.expected_version is not None and version != args.expected_version:
        return fail(f"newest stable {name} is {version}, expected {args.expected_version}")
    print(json.dumps({"ok": True, "name": name, "version": version, "repo": args.repo_url}), flush=True)
    return EXIT_OK


def parent_main(args):
    reason = helm_available()
    if reason is not None:
        print(f"helm_check: {reason} (run .ci/install-helm.sh)", file=sys.stderr)
        return EXIT_NOT_INSTALLED

    home = tempfile.mkdtemp(prefix="helm-check-")
    try:
        config = os.path.join(home, "config")
        cache = os.path.join(home, "cache")
        os.makedirs(config)
        repositories = os.path.join(config, "repositories.yaml")
        with open(repositories, "w", encoding="utf-8") as f:
            f.write('apiVersion: ""\nrepositories: []\n')
        env = dict(os.environ)
        env.update(
            {
                "HELM_CONFIG_HOME": config,
                "HELM_CACHE_HOME": cache,
                "HELM_DATA_HOME": os.path.join(home, "data"),
                "HELM_REPOSITORY_CONFIG": repositories,
                "HELM_REPOSITORY_CACHE": os.path.join(cache, "repository"),
                "HELM_REGISTRY_CONFIG": os.path.join(config, "registry", "config.json"),
                "KUBECONFIG": "/dev/null",
            }
        )
        cmd = [sys.executable, os.path.abspath(__file__), "--child", args.repo_url, args.chart]
        if args.expected_version is not None:
            cmd.append(args.expected_version)
        try:
            proc = subprocess.run(
                cmd, env=env, cwd=home, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=args.timeout
            )
        except subprocess.TimeoutExpired:
            return fail(f"timed out after {args.timeout}s talking to {args.repo_url}")
        sys.stderr.write(proc.stderr)
        out = proc.stdout.strip()
        if proc.returncode == EXIT_OK and out:
            print(out.splitlines()[-1], flush=True)
            return EXIT_OK
        if proc.returncode == EXIT_FAIL and out:
            print(out.splitlines()[-1], flush=True)  # the child already wrote its error to stderr
            return EXIT_FAIL
        return fail(f"helm client exited with status {proc.returncode} (crash?); stdout: {out!r}")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def probe_main():
    reason = helm_available()
    if reason is not None:
        print(reason, file=sys.stderr)
        return EXIT_NOT_INSTALLED
    return EXIT_OK


def main():
    if sys.argv[1:] == ["--probe"]:
        return probe_main()
    parser = argparse.ArgumentParser(description="Fetch a chart through a Helm repository with a real Helm v4 client.")
    parser.add_argument("repo_url", metavar="REPO_URL", help="e.g. http://127.0.0.1:8080")
    parser.add_argument("chart", metavar="CHART", help="chart name, e.g. hello")
    parser.add_argument("expected_version", metavar="EXPECTED_VERSION", nargs="?", help="fail unless this is the newest stable version")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole Helm run (default 120)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    return child_main(args) if args.child else parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
