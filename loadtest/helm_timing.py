#!/usr/bin/env python3
"""Times a real Helm v4 client's `helm repo add` and `helm repo update` against repositories.

    helm_timing.py [--reps 3] [--timeout 300] LABEL=URL [LABEL=URL ...]

For each repetition and each repository (alternating, so drift on a shared machine spreads
evenly), a fresh process with a fresh, empty Helm home (HELM_CONFIG_HOME, HELM_CACHE_HOME, …
in a temp dir) loads Helm, then times `repo add LABEL URL` and `repo update` separately, in
wall-clock seconds (what a CI job waits). Both download the repository's whole index and parse
it; the time includes the transfer (loopback) and Helm's decoding (YAML, or JSON when the index
starts with `{` — Helm >= 3.13). The process's peak RSS (getrusage of the child) is reported
too: Helm's memory on a big YAML index is part of the problem.

One untimed run per repository comes first (the first process to use the library pages its
code in from disk; the YAML and JSON decoders are different code).

Client: PyPI's helm-sdkpy (Helm v4 as a shared library via cffi; `.ci/install-helm.sh`
installs it), the same client tests/helm.rs uses; the `helm` binary cannot be installed from
the package registries this project can reach. Library load time is excluded (it is loaded
before the clock starts).

Prints one JSON line per measurement to stdout:
    {"label": "yaml", "rep": 1, "add_s": 1.29, "update_s": 1.13, "peak_rss_kb": 351232}
and exits 1 if any run failed (its error on stderr), 3 if helm-sdkpy is not importable.
"""

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def child(label, url):
    import helm_sdkpy as helm
    from helm_sdkpy import _ffi

    _ffi.get_version()  # loads the library (and the Go runtime) before the clock starts
    cfg = helm.Configuration(namespace="default", kubeconfig="/dev/null")

    async def go():
        t0 = time.perf_counter()
        await helm.RepoAdd(cfg).run(label, url)
        t1 = time.perf_counter()
        await helm.RepoUpdate(cfg).run()
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    add_s, update_s = asyncio.run(go())
    print(json.dumps({"add_s": round(add_s, 4), "update_s": round(update_s, 4)}), flush=True)


def run_one(label, url, timeout):
    home = tempfile.mkdtemp(prefix="helm-timing-")
    try:
        config, cache = os.path.join(home, "config"), os.path.join(home, "cache")
        os.makedirs(config)
        repositories = os.path.join(config, "repositories.yaml")
        with open(repositories, "w") as f:
            f.write('apiVersion: ""\nrepositories: []\n')
        env = dict(os.environ)
        env.update({
            "HELM_CONFIG_HOME": config, "HELM_CACHE_HOME": cache,
            "HELM_DATA_HOME": os.path.join(home, "data"), "HELM_REPOSITORY_CONFIG": repositories,
            "HELM_REPOSITORY_CACHE": os.path.join(cache, "repository"),
            "HELM_REGISTRY_CONFIG": os.path.join(config, "registry", "config.json"),
            "KUBECONFIG": "/dev/null",
        })
        # The Go runtime reads HELM_* when the library loads: a child process gets them set
        # before it starts; wait4 gives that child's own peak RSS.
        out_path, err_path = os.path.join(home, "stdout"), os.path.join(home, "stderr")
        with open(out_path, "w") as out_f, open(err_path, "w") as err_f:
            p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", label, url],
                                 env=env, cwd=home, stdin=subprocess.DEVNULL, stdout=out_f,
                                 stderr=err_f)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                os.wait4(p.pid, 0)
                raise RuntimeError(f"timed out after {timeout} s")
            time.sleep(0.02)
        code = os.waitstatus_to_exitcode(status)
        with open(out_path) as f:
            stdout = f.read().strip()
        if code != 0 or not stdout:
            with open(err_path) as f:
                raise RuntimeError(f"helm client exited {code}: {f.read().strip()[-2000:]}")
        out = json.loads(stdout.splitlines()[-1])
        out["peak_rss_kb"] = usage.ru_maxrss
        return out
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per client run")
    ap.add_argument("repos", nargs="+", metavar="LABEL=URL")
    a = ap.parse_args()
    try:
        import cffi  # noqa: F401
        import helm_sdkpy  # noqa: F401
    except ImportError as e:
        print(f"helm_timing: {e} (run .ci/install-helm.sh)", file=sys.stderr)
        return 3
    repos = []
    for r in a.repos:
        label, sep, url = r.partition("=")
        if not sep or not label or not url:
            ap.error(f"expected LABEL=URL, got {r!r}")
        repos.append((label, url))
    failed = 0
    # One untimed run per repository first: the first process to use the library pages its
    # code in from disk, and the YAML and JSON decoders are different code.
    for label, url in repos:
        try:
            run_one(label, url, a.timeout)
        except (RuntimeError, ValueError, OSError) as e:
            print(f"helm_timing: warm-up run against {url}: {e}", file=sys.stderr)
    for rep in range(1, a.reps + 1):
        order = repos if rep % 2 else list(reversed(repos))
        for label, url in order:
            try:
                out = run_one(label, url, a.timeout)
            except (RuntimeError, ValueError, OSError) as e:
                print(f"helm_timing: {label} rep {rep}: {e}", file=sys.stderr)
                failed += 1
                continue
            print(json.dumps({"label": label, "rep": rep, **out}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
