#!/usr/bin/env python3
"""Republishes a Helm index under an upstream's root again and again (stdlib only).

    republish.py INDEX [--every 3] [--for SECONDS] [--log FILE]

What `helm repo index` + upload does to a repository, as far as a cache can tell: every
`--every` seconds INDEX gets new bytes (its trailing `generated:` line set to the current
time, so a new MD5 and so a new S3 ETag) by writing a temp file in INDEX's grandparent
directory (for s3s-fs: the root above the bucket, not a key) and renaming it over INDEX, so a
reader sees the old or the new file, never a torn one. The entries are unchanged: every
republish makes the cache fetch, parse and store the whole index again, which is the cost
measured.

Runs until SIGTERM/SIGINT or for --for seconds; each publish is one line in --log
(`unix_time_s bytes`). The first publish happens one interval after the start.
"""

import argparse
import os
import signal
import sys
import time

STOP = False


def stop(_sig, _frame):
    global STOP
    STOP = True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index")
    ap.add_argument("--every", type=float, default=3.0, help="seconds between publishes")
    ap.add_argument("--for", dest="duration", type=float, help="stop after this many seconds")
    ap.add_argument("--log", help="append one line per publish here")
    a = ap.parse_args()
    if a.every <= 0:
        sys.exit("--every must be positive")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with open(a.index, "rb") as f:
        body = f.read()
    cut = body.rfind(b"\ngenerated:")
    if cut < 0:
        sys.exit(f"{a.index}: no trailing `generated:` line (not a `helm repo index` layout)")
    head = body[: cut + 1]
    tmp = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(a.index))),
                       f".republish-{os.getpid()}.tmp")
    log = open(a.log, "a") if a.log else None
    start = time.monotonic()
    n = 0
    next_at = start + a.every
    while not STOP:
        now = time.monotonic()
        if a.duration is not None and now - start >= a.duration:
            break
        if now < next_at:
            time.sleep(min(0.05, next_at - now))
            continue
        next_at += a.every
        t = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"
        data = head + f'generated: "{stamp}"\n'.encode()
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, a.index)
        n += 1
        if log:
            log.write(f"{t:.3f} {len(data)}\n")
            log.flush()
    print(f"republish: {n} publishes of {a.index}", file=sys.stderr)


if __name__ == "__main__":
    main()
