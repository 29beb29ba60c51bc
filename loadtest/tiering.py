#!/usr/bin/env python3
"""S3 requests per 1,000 client requests for a fleet of chartcache nodes, with
and without a tier (issue 14 §3). Stdlib only.

For each node count N given (default 1 4 8) and each layout (`direct`: every node
talks to S3; `tier`: every node's upstream is one tier instance, which talks to S3),
on a fresh S3 server (examples/s3_server.rs, SigV4) holding examples/repo:
- start the tier (if any) and N nodes (`--workers 1 --cache-size 64MiB`);
- warm: one GET /index.yaml per node (not counted);
- storm: CLIENTS threads send REQUESTS GET /index.yaml in all, round-robin over
  the nodes, each on its own connection (`index.yaml` is revalidated on every
  request: only coalescing keeps S3 requests below client requests);
- read S3's GET count (`/__stats`) before and after the storm (and the requests the
  tier answered: the nodes' revalidations, `tier_requests`).
Prints one JSON line per run and a table: S3 GETs per 1,000 client requests
(median of --runs).

usage: loadtest/tiering.py [--bin target/release/chartcache]
       [--s3-bin target/release/examples/s3_server] [--requests 1200]
       [--clients 24] [--runs 3] [N ...]
Build first: cargo build --release --bin chartcache --example s3_server
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
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AK, SK = "AKIDTIERINGLOADTEST", "tiering/loadtest/secret/0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=10):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except OSError:
        return None, b""


def wait_ready(url, proc, limit=30):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{proc.args[0]} exited with {proc.returncode}")
        if get(url, timeout=1)[0] == 200:
            return
        time.sleep(0.02)
    sys.exit(f"not ready within {limit}s: {url}")


def s3_gets(stats_url):
    _, body = get(stats_url)
    for line in body.decode().splitlines():
        if line.startswith("s3_get_requests_total "):
            return int(line.split()[1])
    sys.exit(f"no s3_get_requests_total at {stats_url}")


def chartcache(binary, upstream, work, name, extra_env):
    port, admin = free_port(), free_port()
    args = [binary, "--upstream", upstream, "--listen", f"127.0.0.1:{port}",
            "--admin", f"127.0.0.1:{admin}", "--cache-dir", os.path.join(work, name),
            "--cache-size", "64MiB", "--workers", "1", "--no-access-log"]
    env = dict(os.environ, RUST_LOG="warn", **extra_env)
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(k, None)
    p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(f"http://127.0.0.1:{admin}/readyz", p)
    return p, port, admin


def requests_total(admin):
    """Requests a chartcache answered (`chartcache_requests_total`, every label)."""
    _, body = get(f"http://127.0.0.1:{admin}/metrics")
    return sum(int(float(l.rsplit(" ", 1)[1])) for l in body.decode().splitlines()
               if l.startswith("chartcache_requests_total{"))


def storm(ports, requests, clients):
    lock = threading.Lock()
    state = {"next": 0, "errors": 0}

    def worker():
        while True:
            with lock:
                i = state["next"]
                if i >= requests:
                    return
                state["next"] += 1
            status, _ = get(f"http://127.0.0.1:{ports[i % len(ports)]}/index.yaml")
            if status != 200:
                with lock:
                    state["errors"] += 1

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - t0, state["errors"]


def run(a, nodes, layout):
    work = tempfile.mkdtemp(prefix="chartcache-tiering-")
    procs = []
    try:
        s3_root = os.path.join(work, "s3")
        shutil.copytree(os.path.join(ROOT, "examples", "repo"), os.path.join(s3_root, "charts"))
        s3_port = free_port()
        s3 = subprocess.Popen([a.s3_bin, "--root", s3_root, "--listen", f"127.0.0.1:{s3_port}",
                               "--access-key", AK, "--secret-key", SK],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(s3)
        stats = f"http://127.0.0.1:{s3_port}/__stats"
        wait_ready(stats, s3)
        creds = {"AWS_ACCESS_KEY_ID": AK, "AWS_SECRET_ACCESS_KEY": SK,
                 "AWS_REGION": "us-east-1", "CHARTCACHE_S3_ENDPOINT": f"http://127.0.0.1:{s3_port}"}
        if layout == "tier":
            tier, tier_port, tier_admin = chartcache(a.bin, "s3://charts", work, "tier", creds)
            procs.append(tier)
            upstream, env = f"http://127.0.0.1:{tier_port}", {}
        else:
            upstream, env, tier_admin = "s3://charts", creds, None
        ports = []
        for i in range(nodes):
            p, port, _ = chartcache(a.bin, upstream, work, f"node{i}", env)
            procs.append(p)
            ports.append(port)
        for port in ports:
            status, _ = get(f"http://127.0.0.1:{port}/index.yaml")
            if status != 200:
                sys.exit(f"warm-up GET /index.yaml on :{port} answered {status}")
        before = s3_gets(stats)
        tier_before = requests_total(tier_admin) if tier_admin else 0
        secs, errors = storm(ports, a.requests, a.clients)
        after = s3_gets(stats)
        tier_requests = requests_total(tier_admin) - tier_before if tier_admin else None
        per_1000 = (after - before) * 1000 / a.requests
        line = {"nodes": nodes, "layout": layout, "requests": a.requests, "clients": a.clients,
                "s3_gets": after - before, "s3_gets_per_1000": round(per_1000, 1),
                "tier_requests": tier_requests, "errors": errors, "seconds": round(secs, 2)}
        print(json.dumps(line), flush=True)
        return per_1000
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/chartcache"))
    ap.add_argument("--s3-bin", default=os.path.join(ROOT, "target/release/examples/s3_server"))
    ap.add_argument("--requests", type=int, default=1200)
    ap.add_argument("--clients", type=int, default=24)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("nodes", type=int, nargs="*", default=[1, 4, 8])
    a = ap.parse_args()
    for b in (a.bin, a.s3_bin):
        if not os.access(b, os.X_OK):
            sys.exit(f"{b}: not built (cargo build --release --bin chartcache --example s3_server)")
    table = {}
    for n in a.nodes:
        for layout in ("direct", "tier"):
            table[(n, layout)] = statistics.median(run(a, n, layout) for _ in range(a.runs))
    print(f"\nS3 GETs per 1,000 client requests of /index.yaml "
          f"({a.requests} requests, {a.clients} clients, median of {a.runs}):")
    print("| nodes | every node to S3 | nodes → one tier → S3 |")
    print("|---|---|---|")
    for n in a.nodes:
        print(f"| {n} | {table[(n, 'direct')]:.1f} | {table[(n, 'tier')]:.1f} |")


if __name__ == "__main__":
    main()
