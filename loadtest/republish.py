#!/usr/bin/env python3
"""Republishes a Helm index under an upstream's root again and again (stdlib only).

    republish.py INDEX [--every 3] [--for SECONDS] [--log FILE]
    republish.py --record-etags ROOT

What `helm repo index` + upload does to a repository, as far as a cache can tell: every
`--every` seconds INDEX gets new bytes (its trailing `generated:` line set to the current
time, so a new MD5 and so a new S3 ETag) by writing a temp file in INDEX's grandparent
directory (for s3s-fs: the root above the bucket, not a key) and renaming it over INDEX, so a
reader sees the old or the new file, never a torn one. The entries are unchanged: every
republish makes the cache fetch, parse and store the whole index again, which is the cost
measured.

Each publish also records the new ETag the way s3s-fs's PutObject does (`record_etag`), after
the rename: files written straight into its root have no recorded ETag, and s3s-fs then hashes
the whole file on every GET and HEAD (~100 ms of CPU per request for a 49 MB index) — CPU no
real S3 spends, taken from the server under test on a shared box. `--record-etags ROOT` records
it for every object already under ROOT (what the generator wrote).

Runs until SIGTERM/SIGINT or for --for seconds; each publish is one line in --log
(`unix_time_s bytes`). The first publish happens one interval after the start.
"""

import argparse
import base64
import hashlib
import json
import os
import signal
import sys
import time

STOP = False


def stop(_sig, _frame):
    global STOP
    STOP = True


def record_etag(root, path, data=None):
    """Records `path`'s ETag (the hex MD5 of its bytes, `data` when given) where s3s-fs keeps
    what PutObject learnt about an object: ROOT/.bucket-B.object-K.internal.json, B and K
    unpadded URL-safe base64 of the bucket and the key (`path` is ROOT/BUCKET/KEY; for the
    republished INDEX, ROOT is its grandparent: INDEX sits at the top of its bucket). Written
    to a temp file and renamed."""
    rel = os.path.relpath(path, root).split(os.sep)
    bucket, key = rel[0], "/".join(rel[1:])
    if data is None:
        with open(path, "rb") as f:
            data = f.read()
    b64 = lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("=")
    info = os.path.join(root, f".bucket-{b64(bucket)}.object-{b64(key)}.internal.json")
    tmp = info + f".{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"e_tag": hashlib.md5(data).hexdigest()}, f)
    os.replace(tmp, info)


def record_all(root):
    """record_etag for every object under ROOT (ROOT/BUCKET/KEY; dot files are not objects)."""
    n = 0
    for bucket in sorted(os.listdir(root)):
        top = os.path.join(root, bucket)
        if bucket.startswith(".") or not os.path.isdir(top):
            continue
        for d, dirs, files in os.walk(top):
            dirs[:] = [x for x in dirs if not x.startswith(".")]
            for name in files:
                if not name.startswith("."):
                    record_etag(root, os.path.join(d, name))
                    n += 1
    print(f"republish: recorded the ETags of {n} objects under {root}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index", nargs="?")
    ap.add_argument("--record-etags", metavar="ROOT", help="record every object's ETag, then exit")
    ap.add_argument("--every", type=float, default=3.0, help="seconds between publishes")
    ap.add_argument("--for", dest="duration", type=float, help="stop after this many seconds")
    ap.add_argument("--log", help="append one line per publish here")
    a = ap.parse_args()
    if a.record_etags:
        record_all(a.record_etags)
        return
    if not a.index:
        ap.error("INDEX is required (or --record-etags ROOT)")
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
    root = os.path.dirname(os.path.dirname(os.path.abspath(a.index)))
    tmp = os.path.join(root, f".republish-{os.getpid()}.tmp")
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
        # After the bytes: a reader between the two sees new bytes with the old ETag and may
        # answer one revalidation 304, never the old bytes under the new ETag for good.
        record_etag(root, os.path.abspath(a.index), data)
        n += 1
        if log:
            log.write(f"{t:.3f} {len(data)}\n")
            log.flush()
    print(f"republish: {n} publishes of {a.index}", file=sys.stderr)


if __name__ == "__main__":
    main()
