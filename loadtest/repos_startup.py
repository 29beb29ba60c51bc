#!/usr/bin/env python3
"""Start-up time and memory of one chartcache with N repositories (issue 13).

For each N given (default: 1 and 20), RUNS times: a fresh cache directory, N
repositories `/rI=file://<copy of examples/repo>` (no AWS needed), started with
`--workers 2 --cache-size 256MiB`; measured:
- start-up: from exec to the first 200 of GET /readyz on the admin port (polled
  every 2 ms), and to the first 200 of GET /r0/index.yaml;
- memory: VmRSS / RssAnon / VmHWM and the thread count from /proc/PID/status once
  ready, and again after every repository served its index.yaml (YAML and the JSON
  form: its processor ran) and one chart twice (MISS, then HIT).
Prints one JSON line per run and a summary (median of the runs).

usage: loadtest/repos_startup.py [--bin target/release/chartcache] [--runs 5] [N ...]
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[k] = int(v.split()[0]) // 1024  # MiB
            elif k == "Threads":
                out[k] = int(v)
    return out


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except OSError:
        return None, b""


def one_run(binary, n, repo_dir):
    cache = tempfile.mkdtemp(prefix="cc-repos-cache-")
    port, admin = free_port(), free_port()
    items = " ".join(f"/r{i}=file://{repo_dir}" for i in range(n))
    env = dict(os.environ, CHARTCACHE_REPOS=items, RUST_LOG="warn")
    args = [binary, "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
            "--cache-dir", cache, "--cache-size", "256MiB", "--workers", "2",
            "--no-access-log"]
    t0 = time.perf_counter()
    p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = t0 + 30
        while get(f"http://127.0.0.1:{admin}/readyz")[0] != 200:
            if time.perf_counter() > deadline or p.poll() is not None:
                raise RuntimeError(p.stderr.read().decode() if p.poll() is not None else "not ready")
            time.sleep(0.002)
        ready = time.perf_counter() - t0
        code, _ = get(f"http://127.0.0.1:{port}/r0/index.yaml")
        first = time.perf_counter() - t0
        assert code == 200, code
        time.sleep(0.3)
        idle = status(p.pid)
        for i in range(n):
            for ua in ("curl", "Helm/4.3"):
                assert get(f"http://127.0.0.1:{port}/r{i}/index.yaml", {"User-Agent": ua})[0] == 200
            for _ in range(2):
                assert get(f"http://127.0.0.1:{port}/r{i}/hello-0.2.0.tgz")[0] == 200
        time.sleep(0.3)
        served = status(p.pid)
        return {"repos": n, "ready_ms": round(ready * 1e3, 1),
                "first_index_ms": round(first * 1e3, 1), "idle": idle, "served": served}
    finally:
        p.terminate()
        p.wait(timeout=15)
        shutil.rmtree(cache, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/chartcache"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("counts", nargs="*", type=int, default=[1, 20])
    a = ap.parse_args()
    repo_dir = tempfile.mkdtemp(prefix="cc-repos-src-")
    for name in os.listdir(os.path.join(ROOT, "examples/repo")):
        shutil.copy(os.path.join(ROOT, "examples/repo", name), repo_dir)
    summary = []
    for n in a.counts:
        runs = []
        for _ in range(a.runs):
            r = one_run(a.bin, n, repo_dir)
            print(json.dumps(r), flush=True)
            runs.append(r)
        med = lambda f: statistics.median(f(r) for r in runs)
        summary.append({
            "repos": n,
            "ready_ms": med(lambda r: r["ready_ms"]),
            "first_index_ms": med(lambda r: r["first_index_ms"]),
            "idle_rss_mib": med(lambda r: r["idle"]["VmRSS"]),
            "idle_anon_mib": med(lambda r: r["idle"]["RssAnon"]),
            "served_rss_mib": med(lambda r: r["served"]["VmRSS"]),
            "served_anon_mib": med(lambda r: r["served"]["RssAnon"]),
            "hwm_mib": med(lambda r: r["served"]["VmHWM"]),
            "threads": med(lambda r: r["served"]["Threads"]),
        })
    shutil.rmtree(repo_dir, ignore_errors=True)
    print("summary (medians):")
    for s in summary:
        print(json.dumps(s))


if __name__ == "__main__":
    sys.exit(main())
