#!/usr/bin/env python3
"""Generates a Helm chart repository for load tests (stdlib only).

    gen_repo.py DIR [--charts 200] [--min-kb 1.8] [--max-kb 400] [--mean-kb 105] [--seed 1]

Writes DIR/index.yaml, DIR/<name>-<version>.tgz (real gzip'd tarballs with Chart.yaml,
values.yaml and an incompressible random blob, so the file size is what is served) and
DIR/../paths.txt (one chart file name per line).

Sizes follow min + (max - min) * u**k with u stratified over (0, 1) and k chosen so the mean is
--mean-kb: a few large charts and many small ones, deterministic for a given seed.
"""

import argparse
import gzip
import hashlib
import io
import os
import random
import sys
import tarfile
import time


def sizes(n, lo, hi, mean, rng):
    # E[lo + (hi - lo) * u^k] = lo + (hi - lo) / (k + 1)
    k = (hi - lo) / (mean - lo) - 1.0
    us = [(i + 0.5) / n for i in range(n)]
    rng.shuffle(us)
    return [int(lo + (hi - lo) * (u ** k)) for u in us]


def chart_tgz(name, version, target, rng):
    """A .tgz of about `target` bytes: built once, then rebuilt with the blob corrected by the
    measured framing overhead."""
    noise = rng.randbytes(target)
    data = build_tgz(name, version, noise[: max(0, target - 600)])
    blob = max(0, target - 600 + (target - len(data)))
    return build_tgz(name, version, noise[:blob])


def build_tgz(name, version, blob):
    chart_yaml = (
        f"apiVersion: v2\nname: {name}\nversion: {version}\n"
        f"description: load-test chart {name}\ntype: application\nappVersion: \"1.0\"\n"
    ).encode()
    return tgz(name, [("Chart.yaml", chart_yaml), ("values.yaml", b"replicaCount: 1\n"), ("files/blob.bin", blob)])


def tgz(name, files, level=1):
    """A reproducible chart archive: each `(path, bytes)` of `files` under `name/`, mtimes 0,
    gzip level `level` (also used by gen_bigrepo.py)."""
    buf = io.BytesIO()
    # mtime fixed so output is reproducible.
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=level, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w") as tar:
            for path, data in files:
                info = tarfile.TarInfo(f"{name}/{path}")
                info.size = len(data)
                info.mtime = 0
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--charts", type=int, default=200)
    ap.add_argument("--min-kb", type=float, default=1.8)
    ap.add_argument("--max-kb", type=float, default=400.0)
    ap.add_argument("--mean-kb", type=float, default=105.0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if not (a.min_kb < a.mean_kb < a.max_kb):
        sys.exit("need min < mean < max")
    rng = random.Random(a.seed)
    os.makedirs(a.dir, exist_ok=True)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(0))
    entries = []
    total = 0
    for i, size in enumerate(sizes(a.charts, a.min_kb * 1000, a.max_kb * 1000, a.mean_kb * 1000, rng)):
        name, version = f"chart{i:04d}", f"1.{i % 7}.0"
        data = chart_tgz(name, version, size, rng)
        fname = f"{name}-{version}.tgz"
        with open(os.path.join(a.dir, fname), "wb") as f:
            f.write(data)
        total += len(data)
        entries.append((name, version, fname, hashlib.sha256(data).hexdigest()))
    lines = ["apiVersion: v1", "entries:"]
    for name, version, fname, digest in entries:
        lines += [
            f"  {name}:",
            "  - apiVersion: v2",
            "    appVersion: \"1.0\"",
            f"    created: \"{created}\"",
            f"    description: load-test chart {name}",
            f"    digest: {digest}",
            f"    name: {name}",
            "    type: application",
            "    urls:",
            f"    - {fname}",
            f"    version: {version}",
        ]
    lines.append(f"generated: \"{created}\"")
    with open(os.path.join(a.dir, "index.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(os.path.dirname(os.path.abspath(a.dir)), "paths.txt"), "w") as f:
        f.write("".join(f"/{e[2]}\n" for e in entries))
    sizes_kb = sorted(os.path.getsize(os.path.join(a.dir, e[2])) / 1000 for e in entries)
    print(
        f"generated {len(entries)} charts in {a.dir}: "
        f"{sizes_kb[0]:.1f}-{sizes_kb[-1]:.1f} KB, mean {total / len(entries) / 1000:.1f} KB, "
        f"index.yaml {os.path.getsize(os.path.join(a.dir, 'index.yaml')) / 1000:.1f} KB"
    )


if __name__ == "__main__":
    main()
