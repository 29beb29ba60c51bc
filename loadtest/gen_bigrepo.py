#!/usr/bin/env python3
"""Generates a big Helm chart repository shaped like Bitnami's (stdlib only, deterministic).

    gen_bigrepo.py DIR [--preset 15k|50m] [--versions N] [--charts N] [--images A-B]
                       [--tgz all|load] [--load-charts N] [--json-dir SUBDIR] [--seed 1] [--check]

Presets (flags override them):
    15k  15,000 versions of 120 charts, ~14 MB index.yaml (the public Bitnami index's size)
    50m  20,000 versions of 160 charts with longer fields (more images per entry), ~50 MB

Writes:
    DIR/index.yaml          the index, in the layout `helm repo index` writes (keys sorted,
                            entries newest first, `generated:` last). Every entry has apiVersion,
                            appVersion, created, description, digest, home, icon, keywords,
                            maintainers, name, sources, urls, version and annotations (category,
                            licenses, a multi-line `images` block); ~40 % of the charts have
                            dependencies. URLs are relative (`name-1.2.3.tgz`).
    DIR/name-1.2.3.tgz      small real charts (Chart.yaml, values.yaml, a template, README;
                            1.5-3 KB). Every `digest:` is the sha256 of the archive it names,
                            whether or not that file is written: with `--tgz load` only the
                            load set and each chart's newest version are written (faster; what
                            the load test and a Helm client touch).
    DIR/SUBDIR/index.yaml   with --json-dir: the same index as compact JSON (Helm >= 3.13 reads a
                            JSON index with its JSON decoder). Its `urls:` are the same strings,
                            so relative ones resolve under SUBDIR/: it is for timing `helm repo
                            add/update`, not for pulling charts.
    DIR/../load-paths.txt   the load set: --load-charts chart paths (`/name-1.2.3.tgz`), drawn
                            with the seed, one per line (chartcache-loadtest --paths-file).
    DIR/../bigrepo.json     what was generated: counts, sizes, seed, the newest version per chart.

--check fails unless every written archive matches its digest and the YAML and JSON forms hold
the same document (decoded with PyYAML when it is installed; else by digests and URLs).
"""

import argparse
import hashlib
import json
import os
import random
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_repo import tgz  # noqa: E402  (the sibling generator's reproducible tarball)

PRESETS = {
    "15k": {"versions": 15000, "charts": 120, "images": (1, 2), "desc_sentences": (1, 1)},
    "50m": {"versions": 20000, "charts": 160, "images": (12, 18), "desc_sentences": (3, 6)},
}

# Names of the kind a big public repository carries; more charts than names get a suffix.
NAMES = """airflow apache appsmith argo-cd argo-workflows aspnet-core cassandra cert-manager
clickhouse common concourse consul contour dataplatform deepspeed discourse dokuwiki drupal
ejbca elasticsearch etcd external-dns flink fluent-bit fluentd flux ghost gitea grafana
grafana-loki grafana-mimir grafana-operator grafana-tempo haproxy harbor influxdb jaeger
janusgraph jenkins joomla jupyterhub kafka keycloak kiam kong kube-prometheus kube-state-metrics
kubeapps kubernetes-event-exporter kuberay logstash magento mariadb mariadb-galera mastodon
matomo mediawiki memcached metallb metrics-server milvus minio mlflow mongodb mongodb-sharded
moodle multus-cni mysql nats neo4j nginx nginx-ingress-controller node node-exporter oauth2-proxy
odoo opencart opensearch osclass owncloud parse phpbb phpmyadmin pinniped postgresql
postgresql-ha prestashop prometheus pytorch rabbitmq rabbitmq-cluster-operator redis
redis-cluster redmine schema-registry scylladb sealed-secrets seaweedfs solr sonarqube spark
spring-cloud-dataflow supabase suitecrm tensorflow-resnet thanos tomcat valkey valkey-cluster
vault victoriametrics whereabouts wildfly wordpress zipkin zookeeper""".split()

CATEGORIES = ["Analytics", "ApplicationServer", "CMS", "Database", "DeveloperTools",
              "Infrastructure", "LogManagement", "MachineLearning", "Monitoring", "Networking",
              "Security", "Storage", "WorkFlow", "E-Commerce", "Forum", "Wiki"]
WORDS = """open source platform cluster scalable distributed highly available secure fast data
stream storage query engine service monitoring metrics workflow schedule deploy manage web
application server content database cache message broker search analytics reliable flexible
real-time batch events logs traces dashboards identity access proxy gateway network""".split()
DEPS = ["redis", "postgresql", "mariadb", "mongodb", "kafka", "zookeeper", "memcached",
        "elasticsearch", "rabbitmq", "minio", "etcd", "cassandra"]


def chart_names(n):
    names = list(NAMES[:n])
    i = 0
    while len(names) < n:
        names.append(f"{NAMES[i % len(NAMES)]}-{i // len(NAMES) + 2}")
        i += 1
    return names


def version_counts(total, charts, rng):
    """Versions per chart: a few charts with hundreds, a long tail with a handful (weights
    1/(rank+1)^0.7), at least 1 each, summing to `total`."""
    w = [1.0 / (i + 1) ** 0.7 for i in range(charts)]
    rng.shuffle(w)
    s = sum(w)
    counts = [max(1, int(total * x / s)) for x in w]
    i = 0
    while sum(counts) != total:  # fix rounding, largest first
        j = sorted(range(charts), key=lambda k: -counts[k])[i % charts]
        counts[j] += 1 if sum(counts) < total else (-1 if counts[j] > 1 else 0)
        i += 1
    return counts


def semver_history(n, rng):
    """n distinct versions, oldest first: patch bumps mostly, minor sometimes, major rarely."""
    major, minor, patch = rng.randint(0, 12), rng.randint(0, 9), rng.randint(0, 5)
    out = []
    for _ in range(n):
        out.append(f"{major}.{minor}.{patch}")
        r = rng.random()
        if r < 0.03:
            major, minor, patch = major + 1, 0, 0
        elif r < 0.15:
            minor, patch = minor + 1, 0
        else:
            patch += 1
    return out


def sentence(rng, words):
    ws = [rng.choice(WORDS) for _ in range(words)]
    return " ".join(ws).capitalize() + "."


# ---- a small YAML emitter for this document's shape (what `helm repo index` writes) ----------

PLAIN = re.compile(r"^[A-Za-z0-9/][A-Za-z0-9 ._/:@,()+=-]*$")
SPECIAL = re.compile(
    r"^(?:[-+]?[0-9_]+(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9]+|0x[0-9a-fA-F]+|0o[0-7]+"
    r"|[0-9]{4}-[0-9]{2}-[0-9]{2}.*|(?i:y|n|yes|no|on|off|true|false|null|~))$"
)


def scalar(s):
    """A string as a YAML scalar: plain when it cannot be misread, else double-quoted (JSON
    string syntax is valid YAML)."""
    if s and PLAIN.match(s) and not SPECIAL.match(s) and not s.endswith((" ", ":")) and ": " not in s \
            and " #" not in s:
        return s
    return json.dumps(s, ensure_ascii=False)


def emit(value, indent, out, in_list=False):
    """Appends `value` (dict / list / str) to `out` as block YAML at `indent` spaces."""
    pad = " " * indent
    if isinstance(value, dict):
        first = True
        for k in sorted(value):
            v = value[k]
            lead = pad if not (in_list and first) else ""
            first = False
            if isinstance(v, dict):
                out.append(f"{lead}{k}:\n")
                emit(v, indent + 2, out)
            elif isinstance(v, list):
                out.append(f"{lead}{k}:\n")
                emit(v, indent, out)  # Helm's style: list items at the key's indentation
            elif "\n" in v:
                chomp = "" if v.endswith("\n") and not v.endswith("\n\n") else "-"
                out.append(f"{lead}{k}: |{chomp}\n")
                body = v[:-1] if v.endswith("\n") else v
                out.extend(f"{pad}  {line}\n" for line in body.split("\n"))
            else:
                out.append(f"{lead}{k}: {scalar(v)}\n")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                out.append(f"{pad}- ")
                emit(item, indent + 2, out, in_list=True)
            else:
                out.append(f"{pad}- {scalar(item)}\n")
    else:
        raise TypeError(f"unexpected {type(value).__name__}")


# ---- the repository ---------------------------------------------------------------------------


def chart_files(meta, rng):
    """A small real chart for index entry `meta`: Chart.yaml repeating the metadata, values,
    one template and a README."""
    chart = {k: meta[k] for k in ("apiVersion", "appVersion", "description", "home", "icon",
                                  "keywords", "maintainers", "name", "sources", "version",
                                  "annotations") if k in meta}
    if "dependencies" in meta:
        chart["dependencies"] = meta["dependencies"]
    out = []
    emit(chart, 0, out)
    name = meta["name"]
    values = (
        f"global:\n  imageRegistry: \"\"\nimage:\n  registry: docker.io\n  repository: bitnami/{name}\n"
        f"  tag: {meta['appVersion']}-debian-12-r{rng.randint(0, 40)}\n  pullPolicy: IfNotPresent\n"
        f"replicaCount: {rng.randint(1, 3)}\nresources:\n  requests:\n    cpu: {rng.choice([100, 250, 500])}m\n"
        f"    memory: {rng.choice([128, 256, 512])}Mi\nservice:\n  type: ClusterIP\n  port: {rng.choice([80, 8080, 5432, 6379])}\n"
    )
    template = (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ include \"common.names.fullname\" . }}\n"
        "spec:\n  replicas: {{ .Values.replicaCount }}\n  template:\n    spec:\n      containers:\n"
        f"        - name: {name}\n          image: {{{{ .Values.image.registry }}}}/{{{{ .Values.image.repository }}}}:{{{{ .Values.image.tag }}}}\n"
    )
    readme = f"# {name}\n\n{meta['description']}\n\n## Installing\n\n    helm install my-release repo/{name} --version {meta['version']}\n"
    return [("Chart.yaml", "".join(out).encode()), ("values.yaml", values.encode()),
            ("templates/deployment.yaml", template.encode()), ("README.md", readme.encode())]


def build(a):
    rng = random.Random(a.seed)
    names = chart_names(a.charts)
    counts = version_counts(a.versions, a.charts, rng)
    base = 1748779200  # 2025-06-01T12:00:00Z: fixed, so output depends on the seed only
    entries = {}
    archives = {}  # file name -> bytes (kept only for files to write)
    digests = {}
    plan = []  # (name, meta) in index order
    for name, n in zip(names, counts):
        crng = random.Random(f"{a.seed}/{name}")
        category = crng.choice(CATEGORIES)
        keywords = [name.split("-")[0]] + crng.sample(WORDS, crng.randint(1, 4))
        deps = None
        if crng.random() < 0.25:
            deps = [{"name": "common", "repository": "oci://registry-1.docker.io/bitnamicharts",
                     "tags": ["bitnami-common"], "version": "2.x.x"}]
            for d in crng.sample(DEPS, crng.randint(0, 2)):
                if d != name:
                    deps.insert(0, {"condition": f"{d}.enabled", "name": d,
                                    "repository": "oci://registry-1.docker.io/bitnamicharts",
                                    "version": f"{crng.randint(10, 20)}.x.x"})
        desc = " ".join(sentence(crng, crng.randint(5, 10))
                        for _ in range(crng.randint(*a.desc_sentences)))
        sidecars = crng.sample(["os-shell", "kubectl", "nginx", "exporter", "jmx-exporter",
                                "git", "redis-sentinel", "pgpool", "mongodb-exporter",
                                "metrics-exporter", "volume-permissions", "wait-for-port",
                                "busybox", "curl", "envoy", "oauth2-proxy", "fluent-bit",
                                "statsd-exporter"], 18)
        versions = semver_history(n, crng)
        app = semver_history(n, crng)
        t = base - crng.randint(0, 86400 * 30)
        chart_entries = []
        for i in range(n - 1, -1, -1):  # newest first, as Helm sorts
            t_i = t - (n - 1 - i) * crng.randint(3600, 86400 * 4)
            nanos = crng.randint(0, 999_999_999)
            created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t_i)) + f".{nanos:09d}Z"
            ver, appv = versions[i], app[i]
            images = [f"- name: {name}\n  image: docker.io/bitnami/{name}:{appv}-debian-12-r{crng.randint(0, 60)}\n"]
            for s in sidecars[: crng.randint(*a.images) - 1]:
                images.append(f"- name: {s}\n  image: docker.io/bitnami/{s}:{crng.randint(1, 12)}."
                              f"{crng.randint(0, 30)}.{crng.randint(0, 9)}-debian-12-r{crng.randint(0, 60)}\n")
            meta = {
                "annotations": {"category": category, "images": "".join(images),
                                "licenses": "Apache-2.0"},
                "apiVersion": "v2",
                "appVersion": appv,
                "created": created,
                "description": desc,
                "home": "https://bitnami.com",
                "icon": f"https://bitnami.com/assets/stacks/{name}/img/{name}-stack-220x234.png",
                "keywords": keywords,
                "maintainers": [{"name": "Broadcom, Inc. All Rights Reserved.",
                                 "url": "https://github.com/bitnami/charts"}],
                "name": name,
                "sources": [f"https://github.com/bitnami/charts/tree/main/bitnami/{name}"],
                "urls": [f"{name}-{ver}.tgz"],
                "version": ver,
            }
            if deps:
                meta["dependencies"] = deps
            chart_entries.append(meta)
            plan.append((name, meta))
        entries[name] = chart_entries
    # The load set, drawn before any archive is built so --tgz does not change it.
    all_files = [m["urls"][0] for _, m in plan]
    load = sorted(random.Random(f"{a.seed}/load").sample(all_files, min(a.load_charts, len(all_files))))
    newest = {name: es[0]["version"] for name, es in entries.items()}
    keep = set(load) | {f"{n}-{v}.tgz" for n, v in newest.items()}
    for name, meta in plan:
        fname = meta["urls"][0]
        data = tgz(name, chart_files(meta, random.Random(f"{a.seed}/{fname}")), level=6)
        meta["digest"] = hashlib.sha256(data).hexdigest()
        digests[fname] = meta["digest"]
        if a.tgz == "all" or fname in keep:
            archives[fname] = data
    generated = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base)) + ".000000000Z"
    doc = {"apiVersion": "v1", "entries": entries, "generated": generated}
    return doc, archives, load, newest


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="15k")
    ap.add_argument("--versions", type=int)
    ap.add_argument("--charts", type=int)
    ap.add_argument("--images", help="images per entry, A-B")
    ap.add_argument("--tgz", choices=["all", "load"], default="all",
                    help="write every archive, or only the load set and each chart's newest")
    ap.add_argument("--load-charts", type=int, default=500)
    ap.add_argument("--json-dir", help="also write SUBDIR/index.yaml as compact JSON")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    p = PRESETS[a.preset]
    a.versions = a.versions or p["versions"]
    a.charts = a.charts or p["charts"]
    a.images = tuple(int(x) for x in a.images.split("-")) if a.images else p["images"]
    a.desc_sentences = p["desc_sentences"]
    if not (1 <= a.charts <= a.versions):
        sys.exit("need 1 <= --charts <= --versions")
    t0 = time.monotonic()
    doc, archives, load, newest = build(a)
    os.makedirs(a.dir, exist_ok=True)
    for fname, data in archives.items():
        with open(os.path.join(a.dir, fname), "wb") as f:
            f.write(data)
    # `helm repo index` layout: apiVersion, entries (chart names sorted), generated last.
    out = ["apiVersion: v1\n", "entries:\n"]
    for name in sorted(doc["entries"]):
        out.append(f"  {name}:\n")
        emit(doc["entries"][name], 2, out)
    out.append(f"generated: {scalar(doc['generated'])}\n")
    index_path = os.path.join(a.dir, "index.yaml")
    with open(index_path, "w") as f:
        f.write("".join(out))
    json_path = None
    if a.json_dir:
        os.makedirs(os.path.join(a.dir, a.json_dir), exist_ok=True)
        json_path = os.path.join(a.dir, a.json_dir, "index.yaml")
        with open(json_path, "w") as f:
            json.dump(doc, f, separators=(",", ":"), ensure_ascii=False)
    parent = os.path.dirname(os.path.abspath(a.dir))
    with open(os.path.join(parent, "load-paths.txt"), "w") as f:
        f.write("".join(f"/{p}\n" for p in load))
    info = {
        "preset": a.preset, "seed": a.seed, "versions": a.versions, "charts": a.charts,
        "index_bytes": os.path.getsize(index_path),
        "json_bytes": os.path.getsize(json_path) if json_path else None,
        "archives_written": len(archives),
        "archive_bytes_mean": sum(map(len, archives.values())) / max(1, len(archives)),
        "load_charts": len(load), "newest": newest,
    }
    with open(os.path.join(parent, "bigrepo.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(
        f"generated {a.versions} versions of {a.charts} charts in {a.dir} ({time.monotonic() - t0:.1f} s): "
        f"index.yaml {info['index_bytes'] / 1e6:.1f} MB"
        + (f", JSON {info['json_bytes'] / 1e6:.1f} MB" if json_path else "")
        + f", {len(archives)} archives written (mean {info['archive_bytes_mean'] / 1e3:.1f} KB), "
        f"load set {len(load)}"
    )
    if a.check:
        check(index_path, json_path, a.dir, archives)


def check(index_path, json_path, d, archives):
    """Fails (exit status 1) unless the archives written match their index digests and, with
    PyYAML installed, index.yaml decodes to the JSON document. Without PyYAML the YAML is
    checked against the JSON by its `digest:` and `- name-1.2.3.tgz` lines only."""
    with open(index_path) as f:
        text = f.read()
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        how = "decodes to"
    else:
        doc = None
        how = "lists the same digests and URLs as"
    if json_path:
        with open(json_path) as f:
            j = json.load(f)
        if doc is not None and doc != j:
            sys.exit("check: index.yaml and the JSON index differ")
        if doc is None:
            want = [(e["digest"], e["urls"][0]) for n in sorted(j["entries"]) for e in j["entries"][n]]
            got = list(zip(re.findall(r"^    digest: (\S+)$", text, re.M),
                           re.findall(r"^    - (\S+\.tgz)$", text, re.M)))
            if got != want:
                sys.exit("check: index.yaml and the JSON index differ")
        doc = doc or j
    elif doc is None:
        sys.exit("check: needs PyYAML, or --json-dir")
    n = 0
    for es in doc["entries"].values():
        for e in es:
            fname = e["urls"][0]
            if fname in archives:
                with open(os.path.join(d, fname), "rb") as f:
                    if hashlib.sha256(f.read()).hexdigest() != e["digest"]:
                        sys.exit(f"check: digest of {fname} does not match")
                n += 1
    print(f"check: index.yaml {how + ' the JSON' if json_path else 'parses'}; {n} archive digests match")


if __name__ == "__main__":
    main()
