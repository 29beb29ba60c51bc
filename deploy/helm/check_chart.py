#!/usr/bin/env python3
"""Checks of the chartcache Helm chart with the real Helm library, driven by tests/deploy_chart.rs.

Helm is helm-sdkpy (Helm v4 as a shared library, installed by .ci/install-helm.sh); the
Kubernetes schemas come from kubernetes-validate (installed by .ci/install-chart-tools.sh);
the prometheus-operator CRD schemas are vendored in vendor/.

helm-sdkpy has no `template`: rendering is a real `helm install` with HELM_DRIVER=memory (the
release record stays in memory) against a stand-in API server on 127.0.0.1:0 that answers
discovery for the kinds the chart uses, says 404 to every GET (nothing exists yet) and accepts
every create, recording the objects Helm sends. What Helm sends is what is validated.

Commands (each prints one JSON document on stdout; exit 0 = ok, 1 = check failed,
3 = a tool is missing):
  probe                      are helm-sdkpy and kubernetes-validate importable?
  lint                       helm lint: no message of severity warning or error
  render [VALUES_JSON]       install with these values; every object validated; prints
                             {"objects": [...], "manifest": "..."}
  upgrade [VALUES_JSON]      install, then upgrade the release with the same values; prints
                             both manifests' objects
  reject VALUES_JSON         the install must fail (values.schema.json or a template's fail);
                             prints {"error": "..."}
  seccomp [--write]          files/seccomp-iouring.json == moby's default + io_uring (or write it)
  readme [--write]           the chart README's values table == values.yaml (or write it)
  static [--write]           deploy/chartcache.yaml == the chart rendered for `kubectl apply`,
                             deploy/chartcache-alerts.yaml == its alert rules as a plain
                             Prometheus rule file (or write them)
"""

import asyncio
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHART = HERE / "chartcache"
VENDOR = HERE / "vendor"
ROOT = HERE.parent.parent
STATIC = ROOT / "deploy" / "chartcache.yaml"
KUBE_VERSION = "1.33"
EXIT_MISSING = 3

# The values deploy/chartcache.yaml is rendered with: placeholders for what differs per cluster
# (image, bucket, region, IAM role), the admin token Secret made by the operator (no token ships
# in a committed file); everything else is the chart's default.
STATIC_VALUES = {
    "image": {"registry": "registry.example.com"},
    "upstream": "s3://my-charts-bucket/charts",
    "region": "us-east-1",
    "serviceAccount": {"annotations": {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/chartcache-s3-read"}},
    "admin": {"existingSecret": "chartcache-admin"},
}
STATIC_RELEASE = ("chartcache", "chartcache")  # release name, namespace


def out(doc, code=0):
    json.dump(doc, sys.stdout, indent=1)
    sys.stdout.write("\n")
    sys.exit(code)


def missing_tools():
    """Why the checks cannot run here, or None."""
    problems = []
    if os.environ.get("HELM_DRIVER") != "memory":
        problems.append("HELM_DRIVER=memory must be set before Python starts")
    for module, how in (
        ("helm_sdkpy", "bash .ci/install-helm.sh"),
        ("kubernetes_validate", "bash .ci/install-chart-tools.sh"),
        ("yaml", "bash .ci/install-chart-tools.sh"),
        ("jsonschema", "bash .ci/install-chart-tools.sh"),
    ):
        try:
            __import__(module)
        except Exception as e:  # noqa: BLE001 - any import failure means "not usable"
            problems.append(f"import {module}: {e} (run `{how}`)")
    return "; ".join(problems) or None


# ---------------------------------------------------------------------------------------------
# The stand-in API server.
# ---------------------------------------------------------------------------------------------

# group/version -> [(resource, kind, namespaced)]
RESOURCES = {
    "v1": [
        ("configmaps", "ConfigMap", True),
        ("secrets", "Secret", True),
        ("services", "Service", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("namespaces", "Namespace", False),
    ],
    "apps/v1": [("daemonsets", "DaemonSet", True), ("deployments", "Deployment", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler", True)],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True)],
    "monitoring.coreos.com/v1": [
        ("servicemonitors", "ServiceMonitor", True),
        ("prometheusrules", "PrometheusRule", True),
    ],
}


class StandIn:
    """A Kubernetes API server that knows the chart's kinds, has no objects, accepts creates."""

    def __init__(self):
        self.created = []
        self.objects = {}  # API path -> the object created there
        self.patched = []
        self.lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, code, doc):
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def not_found(self):
                self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "reason": "NotFound", "code": 404, "message": "not found"})

            def do_GET(self):
                path = self.path.split("?")[0]
                if path == "/version":
                    major, minor = KUBE_VERSION.split(".")
                    return self.reply(200, {"major": major, "minor": minor,
                                            "gitVersion": f"v{KUBE_VERSION}.0"})
                if path == "/api":
                    return self.reply(200, {"kind": "APIVersions", "versions": ["v1"]})
                if path == "/apis":
                    groups = []
                    for gv in RESOURCES:
                        if "/" in gv:
                            group, version = gv.split("/")
                            ver = {"groupVersion": gv, "version": version}
                            groups.append({"name": group, "versions": [ver],
                                           "preferredVersion": ver})
                    return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1",
                                            "groups": groups})
                with standin.lock:
                    stored = standin.objects.get(path)
                if stored is not None:
                    return self.reply(200, stored)
                for gv, resources in RESOURCES.items():
                    if path == ("/api/v1" if gv == "v1" else f"/apis/{gv}"):
                        return self.reply(200, {
                            "kind": "APIResourceList", "groupVersion": gv,
                            "resources": [{"name": n, "singularName": "", "namespaced": ns,
                                           "kind": k, "verbs": ["create", "get", "list",
                                                                "update", "patch", "delete"]}
                                          for n, k, ns in resources]})
                return self.not_found()

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    doc = json.loads(raw)
                except ValueError:
                    # Not JSON (a protobuf release record if HELM_DRIVER was not honoured).
                    return self.reply(415, {"kind": "Status", "apiVersion": "v1",
                                            "status": "Failure", "code": 415,
                                            "message": "the stand-in takes JSON only"})
                path = self.path.split("?")[0]
                name = doc.get("metadata", {}).get("name", "")
                with standin.lock:
                    if self.command == "POST":
                        standin.created.append(doc)
                        standin.objects[f"{path}/{name}"] = doc
                    else:
                        standin.objects[path] = doc
                return self.reply(201 if self.command == "POST" else 200, doc)

            do_PUT = do_POST

            def do_PATCH(self):
                # An upgrade patches what the install created: answer with the stored object
                # (the patch itself is not applied; the release's manifest says what Helm wanted).
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with standin.lock:
                    stored = standin.objects.get(self.path.split("?")[0])
                if stored is None:
                    return self.not_found()
                with standin.lock:
                    standin.patched.append(self.path.split("?")[0])
                return self.reply(200, stored)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def kubeconfig(self, namespace):
        port = self.server.server_address[1]
        return (
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: standin, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
            f"contexts: [{{name: standin, context: {{cluster: standin, user: standin, "
            f"namespace: {namespace}}}}}]\n"
            "current-context: standin\n"
            "users: [{name: standin, user: {token: standin}}]\n"
        )

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def install(values, release="chartcache", namespace="chartcache"):
    """`helm install` of the chart; (result dict, created objects) or raises the Helm error."""
    import helm_sdkpy

    standin = StandIn()
    try:
        cfg = helm_sdkpy.Configuration(namespace=namespace,
                                       kubeconfig=standin.kubeconfig(namespace))
        result = asyncio.run(helm_sdkpy.Install(cfg).run(
            release, str(CHART), values=values or None, wait=False, timeout=60,
            disable_openapi_validation=True))
        return result, list(standin.created)
    finally:
        standin.close()


# ---------------------------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------------------------

def crd_schemas():
    """kind -> the openAPIV3Schema of the vendored prometheus-operator CRDs."""
    import yaml

    schemas = {}
    for path in sorted(VENDOR.glob("monitoring.coreos.com_*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            api = f"{crd['spec']['group']}/{version['name']}"
            schemas[(api, crd["spec"]["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
    return schemas


def validate(objects):
    """Problems of the objects against the Kubernetes (strict) and CRD schemas; [] = valid."""
    import jsonschema
    import kubernetes_validate

    crds = crd_schemas()
    problems = []
    for obj in objects:
        what = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        crd = crds.get((obj.get("apiVersion"), obj.get("kind")))
        try:
            if crd is not None:
                # The API server would prune unknown fields; refuse them instead (a typo in a
                # ServiceMonitor would otherwise vanish silently).
                # No check_schema: the CRDs' patterns are Go regexps ("(?i)" inside a
                # pattern), which Python's re refuses; none of them applies to the chart's objects.
                validator = jsonschema.Draft7Validator(strict_crd(crd))
                for error in validator.iter_errors(obj):
                    raise error
            else:
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except jsonschema.ValidationError as e:
            problems.append(f"{what}: {'.'.join(map(str, e.absolute_path))}: {e.message}")
        except kubernetes_validate.ValidationError as e:
            path = ".".join(map(str, e.path))
            problems.append(f"{what}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{what}: no schema: {e.message}")
    return problems


def strict_crd(schema):
    """The CRD schema with additionalProperties: false wherever it lists properties and does not
    preserve unknown fields (what the API server's pruning means)."""
    if isinstance(schema, dict):
        schema = {k: strict_crd(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict_crd(v) for v in schema]
    return schema


def manifest_objects(manifest):
    import yaml

    return [d for d in yaml.safe_load_all(manifest) if d]


# ---------------------------------------------------------------------------------------------
# Commands.
# ---------------------------------------------------------------------------------------------

def cmd_lint():
    import helm_sdkpy

    cfg = helm_sdkpy.Configuration(namespace="chartcache", kubeconfig="/dev/null")
    result = asyncio.run(helm_sdkpy.Lint(cfg).run(str(CHART)))
    # Severity: 1 info, 2 warning, 3 error. The Go error text is not serialised by this
    # helm-sdkpy version ({}), so say where.
    bad = [m for m in result.get("Messages") or [] if m.get("Severity", 0) >= 2]
    out({"result": result, "bad": bad}, 1 if bad or result.get("Errors") else 0)


def cmd_render(values):
    try:
        result, created = install(values)
    except Exception as e:  # noqa: BLE001 - the Helm error is the finding
        out({"error": f"{type(e).__name__}: {e}"}, 1)
    from_manifest = manifest_objects(result.get("manifest", ""))
    problems = validate(created)
    if len(created) != len(from_manifest):
        problems.append(f"Helm created {len(created)} objects, its manifest has "
                        f"{len(from_manifest)}")
    out({"objects": created, "manifest": result.get("manifest", ""), "problems": problems},
        1 if problems else 0)


def cmd_upgrade(values):
    """Install, then upgrade the same release with the same values: what the upgrade renders."""
    import helm_sdkpy

    standin = StandIn()
    try:
        cfg = helm_sdkpy.Configuration(namespace="chartcache",
                                       kubeconfig=standin.kubeconfig("chartcache"))
        first = asyncio.run(helm_sdkpy.Install(cfg).run(
            "chartcache", str(CHART), values=values or None, wait=False, timeout=60))
        second = asyncio.run(helm_sdkpy.Upgrade(cfg).run(
            "chartcache", str(CHART), values=values or None, wait=False, timeout=60,
            server_side_apply=False))
    except Exception as e:  # noqa: BLE001
        out({"error": f"{type(e).__name__}: {e}"}, 1)
    finally:
        standin.close()
    out({"install": manifest_objects(first.get("manifest", "")),
         "upgrade": manifest_objects(second.get("manifest", "")),
         "patched": standin.patched})


def cmd_reject(values):
    try:
        install(values)
    except Exception as e:  # noqa: BLE001
        out({"error": f"{type(e).__name__}: {e}"}, 0)
    out({"error": None, "message": "the install succeeded with values that must be refused"}, 1)


# The io_uring system calls the Localhost profile adds, and the only ones.
IO_URING = ["io_uring_setup", "io_uring_enter", "io_uring_register"]
# Architectures the profile is resolved for (Kubernetes nodes: amd64 and arm64).
ARCHES = {"amd64", "x86", "x32", "arm64", "arm"}
SECCOMP = CHART / "files" / "seccomp-iouring.json"


def seccomp_profile():
    """moby's default profile (the runtime default of Docker, and what containerd's follows)
    resolved the way the runtime resolves it for a container with no capabilities on amd64 /
    arm64, plus one rule allowing exactly the io_uring calls.

    Resolved because a Localhost profile is read as a plain OCI seccomp spec: the template's
    `includes`/`excludes` (by capability, architecture, kernel) would be ignored, and every
    rule meant only for CAP_SYS_ADMIN & co. would apply to everyone."""
    default = json.loads((VENDOR / "moby-seccomp-default.json").read_text())
    arch_names = {"SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"}
    architectures = []
    for entry in default["archMap"]:
        if entry["architecture"] in arch_names:
            architectures += [entry["architecture"], *entry.get("subArchitectures", [])]
    syscalls = []
    for rule in default["syscalls"]:
        inc, exc = rule.get("includes", {}), rule.get("excludes", {})
        if inc.get("caps"):
            continue  # granted only with a capability; chartcache drops them all
        if inc.get("arches") and not ARCHES & set(inc["arches"]):
            continue
        if exc.get("arches") and ARCHES <= set(exc["arches"]):
            continue
        # excludes.caps: the rule holds unless the container has the capability (it has none).
        # includes.minKernel: every kernel with io_uring (>= 5.1) is newer than these.
        kept = {k: v for k, v in rule.items() if k not in ("includes", "excludes", "comment")}
        syscalls.append(kept)
    syscalls.append({"names": IO_URING, "action": "SCMP_ACT_ALLOW"})
    return {
        "defaultAction": default["defaultAction"],
        "defaultErrnoRet": default["defaultErrnoRet"],
        "architectures": architectures,
        "syscalls": syscalls,
    }


def cmd_seccomp(write):
    want = json.dumps(seccomp_profile(), indent=2) + "\n"
    if write:
        SECCOMP.write_text(want)
    have = SECCOMP.read_text() if SECCOMP.exists() else ""
    out({"path": str(SECCOMP.relative_to(ROOT)), "up_to_date": have == want,
         "io_uring": IO_URING}, 0 if have == want else 1)


README = CHART / "README.md"
TABLE_BEGIN = "<!-- values table: generated by `python3 deploy/helm/check_chart.py readme --write` -->"
TABLE_END = "<!-- end of values table -->"


def values_table():
    """Every leaf value of values.yaml with its `# --` comment, as a Markdown table."""
    import yaml

    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    # Comments: `# -- text` (continued by `# text` lines) before a `key:` line; keyed by the
    # dotted path the indentation gives.
    docs, stack, pending = {}, [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = stripped[4:].strip()
            continue
        if stripped.startswith("#") and pending is not None:
            if stripped.startswith("# -") or stripped.startswith("#   "):
                continue  # commented-out examples
            pending += " " + stripped[1:].strip()
            continue
        m = re.match(r"^( *)([A-Za-z0-9_]+):", line)
        if not m:
            if stripped and not stripped.startswith("-"):
                pending = None
            continue
        depth = len(m.group(1)) // 2
        stack = stack[:depth] + [m.group(2)]
        if pending is not None:
            docs[".".join(stack)] = pending
            pending = None

    rows = []

    def walk(node, path):
        key = ".".join(path)
        if isinstance(node, dict) and node and key not in docs_leaf:
            for k, v in node.items():
                walk(v, path + [k])
            return
        doc = docs.get(key)
        if doc is None:
            # A value documented through its parent (e.g. probes.startup.periodSeconds).
            parent = next((".".join(path[:i]) for i in range(len(path) - 1, 0, -1)
                           if ".".join(path[:i]) in docs), None)
            if parent is not None and parent in docs_leaf:
                return
            raise SystemExit(f"values.yaml: {key} has no `# --` comment")
        rows.append((key, node, doc))

    # Keys whose whole subtree is one value in the table (documented maps like resources).
    docs_leaf = {k for k in docs if isinstance(lookup(values, k), dict)
                 and not any(d.startswith(k + ".") for d in docs)}
    walk(values, [])
    lines = ["| Key | Default | Description |", "|---|---|---|"]
    for key, value, doc in rows:
        default = json.dumps(value, separators=(", ", ": "))
        lines.append(f"| `{key}` | `{default}` | {doc.replace('|', '&#124;')} |")
    return "\n".join(lines)


def lookup(values, dotted):
    node = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def cmd_readme(write):
    table = values_table()
    text = README.read_text()
    begin, end = text.index(TABLE_BEGIN), text.index(TABLE_END)
    want = text[: begin + len(TABLE_BEGIN)] + "\n" + table + "\n" + text[end:]
    if write:
        README.write_text(want)
        text = want
    out({"up_to_date": text == want, "rows": table.count("\n") - 1}, 0 if text == want else 1)


STATIC_HEADER = """\
# chartcache for `kubectl apply`, without Helm: the chart deploy/helm/chartcache rendered as
# release "chartcache" in namespace "chartcache" with its defaults (the node-local DaemonSet,
# epoll driver) and placeholders, plus the Namespace. Generated, do not edit: change the chart
# and run `python3 deploy/helm/check_chart.py static --write` (tests/deploy_chart.rs checks it).
#
# Before applying, replace the placeholders: the image (registry.example.com/chartcache), the
# bucket and region (`upstream`, `region` in the ConfigMap) and the IAM role (the
# ServiceAccount's eks.amazonaws.com/role-arn). Then create the admin token Secret the pods
# read CHARTCACHE_ADMIN_TOKEN from (pods wait in CreateContainerConfigError until it exists):
#   kubectl apply -f deploy/chartcache.yaml
#   kubectl -n chartcache create secret generic chartcache-admin \\
#     --from-literal=token="$(openssl rand -hex 32)"
# See deploy/README.md.
"""


def dump_yaml(objects):
    """YAML documents, multi-line strings as literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, data):
        style = "|" if "\n" in data else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    Dumper.add_representer(str, text)
    return [yaml.dump(o, Dumper=Dumper, sort_keys=False, width=100) for o in objects]


def static_manifest():
    release, namespace = STATIC_RELEASE
    result, _ = install(STATIC_VALUES, release, namespace)
    namespace_doc = {"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": namespace,
                                  "labels": {"app.kubernetes.io/part-of": "chartcache"}}}
    objects = [namespace_doc, *manifest_objects(result["manifest"])]
    # Helm's own bookkeeping labels make no sense outside a release.
    for obj in objects:
        for meta in (obj.get("metadata", {}),
                     obj.get("spec", {}).get("template", {}).get("metadata", {})):
            labels = meta.get("labels", {})
            labels.pop("helm.sh/chart", None)
            labels["app.kubernetes.io/managed-by"] = "kubectl"
    return STATIC_HEADER + "".join("---\n" + d for d in dump_yaml(objects))


ALERTS = ROOT / "deploy" / "chartcache-alerts.yaml"
ALERTS_HEADER = """\
# chartcache's Prometheus alert rules as a plain rule file (`rule_files:`), for a Prometheus
# without prometheus-operator: the chart's PrometheusRule (metrics.prometheusRule.enabled)
# rendered for release "chartcache" in namespace "chartcache", so the rules select
# job="chartcache-metrics", namespace="chartcache"; adapt those matchers to your scrape config.
# Generated, do not edit: change deploy/helm/chartcache/templates/prometheusrule.yaml and run
# `python3 deploy/helm/check_chart.py static --write` (tests/deploy_chart.rs checks it).
"""


def alert_rules():
    release, namespace = STATIC_RELEASE
    result, _ = install({"metrics": {"prometheusRule": {"enabled": True}}}, release, namespace)
    rule = next(o for o in manifest_objects(result["manifest"]) if o["kind"] == "PrometheusRule")
    return ALERTS_HEADER + dump_yaml([rule["spec"]])[0]


def cmd_static(write):
    files = {STATIC: static_manifest(), ALERTS: alert_rules()}
    stale = []
    for path, want in files.items():
        if write:
            path.write_text(want)
        if (path.read_text() if path.exists() else "") != want:
            stale.append(str(path.relative_to(ROOT)))
    out({"path": [str(p.relative_to(ROOT)) for p in files], "stale": stale,
         "up_to_date": not stale}, 1 if stale else 0)


def main(argv):
    if not argv:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    cmd, args = argv[0], argv[1:]
    why = missing_tools()
    if cmd == "probe":
        if why:
            print(why, file=sys.stderr)
            sys.exit(EXIT_MISSING)
        out({"ok": True})
    if why and cmd not in ("seccomp",):
        print(why, file=sys.stderr)
        sys.exit(EXIT_MISSING)
    write = "--write" in args
    if cmd == "lint":
        cmd_lint()
    elif cmd == "render":
        cmd_render(json.loads(args[0]) if args else {})
    elif cmd == "upgrade":
        cmd_upgrade(json.loads(args[0]) if args else {})
    elif cmd == "reject":
        cmd_reject(json.loads(args[0]))
    elif cmd == "seccomp":
        cmd_seccomp(write)
    elif cmd == "readme":
        cmd_readme(write)
    elif cmd == "static":
        cmd_static(write)
    else:
        print(f"unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
