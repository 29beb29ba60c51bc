#!/usr/bin/env python3
"""Generate the example Helm chart repository in examples/repo/ (stdlib only).

What it owns: examples/repo/*.tgz and examples/repo/index.yaml. It does not
touch anything else.

Invariants:
- Deterministic: every tar member has a fixed mtime, uid/gid 0, empty owner
  names and fixed modes; the gzip header has mtime 0 and no file name; the
  index has fixed `created` / `generated` stamps. Rerunning produces
  byte-identical files (given the same zlib), so the committed output can be
  checked with `--check`.
- Charts are real Helm v3/v4 chart archives: `<name>/Chart.yaml`
  (apiVersion v2), `<name>/values.yaml`, `<name>/templates/configmap.yaml`.
- index.yaml follows Helm's repository index format: apiVersion v1, entries
  keyed by chart name with versions newest first, `digest` = sha256 of the
  .tgz, `urls` relative to the repository URL.

Usage:
    python3 examples/make_repo.py            # (re)write examples/repo/
    python3 examples/make_repo.py --out DIR  # write somewhere else
    python3 examples/make_repo.py --check    # exit 1 if examples/repo/ is stale
"""

import argparse
import gzip
import hashlib
import io
import os
import sys
import tarfile
import tempfile

# 2024-01-01T00:00:00Z: fixed so the archives and the index never change.
FIXED_MTIME = 1704067200
FIXED_STAMP = "2024-01-01T00:00:00Z"

# (name, version, description, appVersion). The dev build's file name
# `hello-0.3.0-dev-1.tgz` matches the `.*-dev-.*` bypass rule; as a semver
# prerelease Helm does not pick it as "newest" unless asked (--devel).
CHARTS = [
    ("hello", "0.1.0", "A tiny chart that renders one ConfigMap", "1.0.0"),
    ("hello", "0.2.0", "A tiny chart that renders one ConfigMap", "1.1.0"),
    ("hello", "0.3.0-dev-1", "A tiny chart that renders one ConfigMap (dev build)", "1.2.0-dev"),
    ("podinfo-lite", "1.0.0", "A stripped-down podinfo-style chart for cache tests", "6.0.0"),
]


def yaml_str(value):
    """Quote a scalar for YAML: double quotes, JSON-style escapes (a YAML subset)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped + '"'


def chart_files(name, version, description, app_version):
    """The files of one chart, as (path inside the archive, bytes)."""
    chart_yaml = (
        "apiVersion: v2\n"
        f"name: {name}\n"
        f"version: {version}\n"
        f"description: {description}\n"
        "type: application\n"
        f"appVersion: {yaml_str(app_version)}\n"
    )
    values_yaml = (
        "# Values for the example chart; rendered into one ConfigMap.\n"
        f"greeting: {yaml_str('hello from ' + name + ' ' + version)}\n"
        "extraData: {}\n"
    )
    configmap = (
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: {{ .Release.Name }}-" + name + "\n"
        "  labels:\n"
        "    app.kubernetes.io/name: " + name + "\n"
        "    app.kubernetes.io/instance: {{ .Release.Name }}\n"
        "    helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version | replace \"+\" \"_\" }}\n"
        "data:\n"
        "  greeting: {{ .Values.greeting | quote }}\n"
        "  {{- range $k, $v := .Values.extraData }}\n"
        "  {{ $k }}: {{ $v | quote }}\n"
        "  {{- end }}\n"
    )
    return [
        (f"{name}/Chart.yaml", chart_yaml.encode()),
        (f"{name}/values.yaml", values_yaml.encode()),
        (f"{name}/templates/configmap.yaml", configmap.encode()),
    ]


def chart_tgz(files):
    """A deterministic gzip'd tar of `files`."""
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, data in files:
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = FIXED_MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(data))
    gz_buf = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of varying fields.
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz_buf, compresslevel=9, mtime=0) as gz:
        gz.write(tar_buf.getvalue())
    return gz_buf.getvalue()


def semver_key(version):
    """Sort key for semver: release before prerelease; prerelease ids compared per spec."""
    core, _, pre = version.partition("-")
    nums = tuple(int(p) for p in core.split("."))
    if not pre:
        return (nums, 1, ())
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (nums, 0, ids)


def build(out_dir):
    """Write every chart archive and index.yaml into out_dir; returns the file names."""
    os.makedirs(out_dir, exist_ok=True)
    entries = {}
    written = []
    for name, version, description, app_version in CHARTS:
        data = chart_tgz(chart_files(name, version, description, app_version))
        file_name = f"{name}-{version}.tgz"
        with open(os.path.join(out_dir, file_name), "wb") as f:
            f.write(data)
        written.append(file_name)
        entries.setdefault(name, []).append(
            {
                "apiVersion": "v2",
                "appVersion": app_version,
                "created": FIXED_STAMP,
                "description": description,
                "digest": hashlib.sha256(data).hexdigest(),
                "name": name,
                "type": "application",
                "urls": [file_name],
                "version": version,
            }
        )

    lines = ["apiVersion: v1", "entries:"]
    for name in sorted(entries):
        lines.append(f"  {name}:")
        # Helm keeps each chart's versions newest first.
        for e in sorted(entries[name], key=lambda e: semver_key(e["version"]), reverse=True):
            lines.append(f"  - apiVersion: {e['apiVersion']}")
            lines.append(f"    appVersion: {yaml_str(e['appVersion'])}")
            lines.append(f"    created: {yaml_str(e['created'])}")
            lines.append(f"    description: {e['description']}")
            lines.append(f"    digest: {e['digest']}")
            lines.append(f"    name: {e['name']}")
            lines.append(f"    type: {e['type']}")
            lines.append("    urls:")
            for url in e["urls"]:
                lines.append(f"    - {url}")
            lines.append(f"    version: {e['version']}")
    lines.append(f"generated: {yaml_str(FIXED_STAMP)}")
    with open(os.path.join(out_dir, "index.yaml"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    written.append("index.yaml")
    return written


def main():
    default_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "repo")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=default_out, help="output directory (default: examples/repo)")
    parser.add_argument("--check", action="store_true", help="verify --out is up to date; write nothing")
    args = parser.parse_args()

    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            stale = []
            for file_name in build(tmp):
                with open(os.path.join(tmp, file_name), "rb") as f:
                    want = f.read()
                try:
                    with open(os.path.join(args.out, file_name), "rb") as f:
                        have = f.read()
                except OSError:
                    have = None
                if have != want:
                    stale.append(file_name)
        if stale:
            print(f"stale in {args.out}: {', '.join(stale)} (rerun examples/make_repo.py)", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0

    for file_name in build(args.out):
        print(os.path.join(args.out, file_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
