#!/usr/bin/env bash
# chartcache vs. nginx proxy_cache vs. Varnish vs. nginx static, same chart repo, same workloads.
#
#   loadtest/compare.sh [-n CHARTS] [-r ROUNDS] [-d SECONDS] [-w WARMUP] [-c CONNECTIONS]
#                       [-t THREADS] [--rate R] [--read-buffer SIZE] [--servers LIST]
#                       [--workloads LIST] [--wrk] [--wrk-threads N] [--profile P] [--keep]
#                       [--baseline BIN]
#
# 1. generates N random-content chart .tgz (1.8-400 KB, mean ~105 KB) + index.yaml in a temp dir,
# 2. starts two S3 servers (examples/s3_server.rs) on that dir: one requiring SigV4 (for
#    chartcache), one anonymous (for nginx and Varnish, which cannot sign),
# 3. starts chartcache (as configured by default; the same on the epoll driver, as under a
#    container runtime's default seccomp profile; with index.yaml fresh for 1 s; and with
#    `--sendfile-threshold off`, every body copied by writev), nginx proxy_cache, Varnish, nginx
#    static and `chartcache-loadtest floor` (a bare in-memory responder: the practical ceiling)
#    on 127.0.0.1 (`--servers` may add chartcache-sendfile: chartcache with
#    `--driver epoll --sendfile-threshold 0`),
#    `--baseline BIN` adds the row chartcache-baseline: another chartcache binary (say, one built
#    from an earlier commit) started exactly like the chartcache row, for before/after in one run,
# 4. warms each server with one pass over every path,
# 5. runs each workload against each server, alternating servers, R rounds of D seconds, with
#    chartcache-loadtest (server CPU from /proc, peak RSS, upstream requests from the S3 stats),
# 6. prints the table and writes JSON + SVG + machine info to loadtest/results/<timestamp>/,
# 7. with --wrk, runs the charts workload again with wrk (same rounds, same alternation, server
#    CPU from /proc, wrk's own CPU) and prints that table last, with ratios to chartcache and to
#    the floor (`--wrk-threads N`: wrk -tN; default 1). On one box the client's CPU per
#    response counts as much as the server's.
# Everything it starts is stopped on exit. Needs root only to apt-get install missing tools.
set -euo pipefail

CHARTS=200 ROUNDS=3 DURATION=6 WARMUP=2 CONNECTIONS=64 THREADS=1
SERVERS="chartcache,chartcache-epoll,chartcache-fresh1s,chartcache-copy,nginx-cache,varnish,nginx-static,floor"
WORKLOADS="charts,ci-mix"
WITH_WRK=0 WRK_THREADS=1 KEEP=0 PROFILE=release RATE= READ_BUFFER= BASELINE_BIN=
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    -n) CHARTS=$2; shift 2 ;;
    -r) ROUNDS=$2; shift 2 ;;
    -d) DURATION=$2; shift 2 ;;
    -w) WARMUP=$2; shift 2 ;;
    -c) CONNECTIONS=$2; shift 2 ;;
    -t) THREADS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --read-buffer) READ_BUFFER=$2; shift 2 ;;
    --servers) SERVERS=$2; shift 2 ;;
    --workloads) WORKLOADS=$2; shift 2 ;;
    --wrk) WITH_WRK=1; shift ;;
    --wrk-threads) WRK_THREADS=$2; shift 2 ;;
    --profile) PROFILE=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --baseline) BASELINE_BIN=$(realpath "$2"); shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
done

# After the loop, so a later --servers cannot drop it.
if [ -n "$BASELINE_BIN" ]; then SERVERS="$SERVERS,chartcache-baseline"; fi

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
# shellcheck source=loadtest/lib.sh
. "$REPO/loadtest/lib.sh"    # log, scratch_dir/cleanup, free_ports, wait_ready, results_dir
has() { case ",$SERVERS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# ---- tools -----------------------------------------------------------------------------------
need=()
if has nginx-cache || has nginx-static; then command -v nginx >/dev/null || need+=(nginx); fi
if has varnish; then command -v varnishd >/dev/null || need+=(varnish); fi
if [ "$WITH_WRK" = 1 ]; then command -v wrk >/dev/null || need+=(wrk); fi
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${need[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing ${need[*]} and cannot apt-get install them; install them or trim --servers" >&2
    exit 1
  fi
fi
# Package post-install scripts may start system-wide daemons; we use our own instances only.

# ---- build -----------------------------------------------------------------------------------
cargo_flags=(); [ "$PROFILE" = release ] && cargo_flags=(--release)
BIN="$REPO/target/$PROFILE"
log "building chartcache-loadtest and the S3 server ($PROFILE)"
# Two workspace packages: the load generator (loadtest/Cargo.toml) and the root package, whose
# example the S3 server is. Both build into the workspace's target/.
cargo build -q "${cargo_flags[@]}" -p chartcache-loadtest -p chartcache \
  --bin chartcache-loadtest --example s3_server
CHARTCACHE_BUILT=0
if has chartcache || has chartcache-epoll || has chartcache-fresh1s || has chartcache-sendfile || has chartcache-copy; then
  if cargo build -q "${cargo_flags[@]}" -p chartcache --bin chartcache 2>"$REPO/target/compare-build.log"; then CHARTCACHE_BUILT=1
  else
    tail -n 20 "$REPO/target/compare-build.log" >&2
    echo "note: chartcache does not build here (above); skipping it" >&2
  fi
fi
LOADTEST="$BIN/chartcache-loadtest"

# ---- scratch space and cleanup ---------------------------------------------------------------
scratch_dir chartcache-compare
read -r S3S_PORT S3A_PORT CC_PORT CC_ADMIN NGC_PORT VAR_PORT NGS_PORT CCF_PORT CCF_ADMIN FLOOR_PORT CCS_PORT CCS_ADMIN CCC_PORT CCC_ADMIN CCB_PORT CCB_ADMIN CCE_PORT CCE_ADMIN <<<"$(free_ports 18)"

# ---- chart repository ------------------------------------------------------------------------
log "generating $CHARTS charts"
python3 "$REPO/loadtest/gen_repo.py" "$TMP/s3/charts" --charts "$CHARTS"
DOCROOT="$TMP/s3/charts"

# ---- servers ---------------------------------------------------------------------------------
# As root, nginx workers would drop to `nobody` and could not read the 0700 temp dir.
NGINX_USER=""; [ "$(id -u)" = 0 ] && NGINX_USER="user root;"
AK=loadtestAK SK=loadtestSECRETkey0123456789
declare -A URL PID METRICS
ACTIVE=()

"$BIN/examples/s3_server" --root "$TMP/s3" --listen "127.0.0.1:$S3S_PORT" \
  --access-key "$AK" --secret-key "$SK" >"$TMP/s3-signed.log" 2>&1 &
PIDS+=($!); S3S_PID=$!
"$BIN/examples/s3_server" --root "$TMP/s3" --listen "127.0.0.1:$S3A_PORT" >"$TMP/s3-anon.log" 2>&1 &
PIDS+=($!); S3A_PID=$!
wait_ready "http://127.0.0.1:$S3A_PORT/charts/index.yaml" "$S3A_PID" \
  || { cat "$TMP/s3-anon.log" >&2; echo "anonymous S3 server did not start" >&2; exit 1; }
wait_ready "http://127.0.0.1:$S3S_PORT/__stats" "$S3S_PID" \
  || { cat "$TMP/s3-signed.log" >&2; echo "signed S3 server did not start" >&2; exit 1; }

# After starting server NAME as process PID: wait until it answers on PORT, then count it in
# (with METRICS_URL, its upstream request counter); else say so with the tail of LOG.
#   register NAME PORT PID LOG [METRICS_URL]
register() {
  local name=$1 port=$2 pid=$3 log=$4 metrics=${5:-}
  PIDS+=("$pid")
  if wait_ready "http://127.0.0.1:$port/index.yaml" "$pid"; then
    URL[$name]="http://127.0.0.1:$port"; PID[$name]=$pid; ACTIVE+=("$name")
    if [ -n "$metrics" ]; then METRICS[$name]=$metrics; fi
  else
    echo "note: $name did not come up on 127.0.0.1:$port; skipping it. Its log:" >&2
    tail -n 20 "$log" >&2 || true
  fi
}

# One chartcache instance against the signed S3 server (the binary: $CC_BIN, default this
# checkout's): start_chartcache NAME PORT ADMIN [FLAG…]
start_chartcache() {
  local name=$1 port=$2 admin=$3; shift 3
  mkdir -p "$TMP/$name"
  AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK "${CC_BIN:-$BIN/chartcache}" \
    --upstream s3://charts --s3-endpoint "http://127.0.0.1:$S3S_PORT" --region us-east-1 \
    --listen "127.0.0.1:$port" --admin "127.0.0.1:$admin" --cache-dir "$TMP/$name/cache" \
    --workers 2 "$@" >"$TMP/$name.log" 2>&1 &
  register "$name" "$port" $! "$TMP/$name.log" "http://127.0.0.1:$S3S_PORT/__stats"
}

# nginx with the settings both nginx rows share, plus HTTP_LINES (inside `http { }`):
#   start_nginx NAME PORT TCP_NOPUSH HTTP_LINES [METRICS_URL]
start_nginx() {
  local name=$1 port=$2 nopush=$3 lines=$4 d="$TMP/$1"
  mkdir -p "$d/tmp"
  cat >"$d/nginx.conf" <<EOF
$NGINX_USER
worker_processes 2;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush $nopush;
  keepalive_requests 1000000;
  client_body_temp_path $d/tmp/body; proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fcgi; uwsgi_temp_path $d/tmp/uwsgi; scgi_temp_path $d/tmp/scgi;
$lines
}
EOF
  nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;' >"$d/stdout.log" 2>&1 &
  register "$name" "$port" $! "$d/error.log" "${5:-}"
}

if has chartcache && [ "$CHARTCACHE_BUILT" = 1 ]; then
  start_chartcache chartcache "$CC_PORT" "$CC_ADMIN"
fi

# Another chartcache binary (--baseline), started exactly like the chartcache row.
if has chartcache-baseline && [ -n "$BASELINE_BIN" ]; then
  CC_BIN=$BASELINE_BIN start_chartcache chartcache-baseline "$CCB_PORT" "$CCB_ADMIN"
fi

# The same chartcache on the epoll driver, otherwise as configured by default: what runs
# under a container runtime's default seccomp profile (io_uring blocked).
if has chartcache-epoll && [ "$CHARTCACHE_BUILT" = 1 ]; then
  start_chartcache chartcache-epoll "$CCE_PORT" "$CCE_ADMIN" --driver epoll
fi

# The same chartcache on the epoll driver with every cached body sent by sendfile(2)
# (threshold 0): nginx static's syscall pattern.
if has chartcache-sendfile && [ "$CHARTCACHE_BUILT" = 1 ]; then
  start_chartcache chartcache-sendfile "$CCS_PORT" "$CCS_ADMIN" --driver epoll --sendfile-threshold 0
fi

# The same chartcache with every cached body copied by one writev from the mmap (no sendfile):
# less CPU for a client on the same cores, more for the server (README, Performance).
if has chartcache-copy && [ "$CHARTCACHE_BUILT" = 1 ]; then
  start_chartcache chartcache-copy "$CCC_PORT" "$CCC_ADMIN" --sendfile-threshold off
fi

# The same chartcache with index.yaml allowed to be 1 s old (`fresh_for`): what nginx and
# Varnish do when they cache the index; the default (revalidate every request) is stricter.
if has chartcache-fresh1s && [ "$CHARTCACHE_BUILT" = 1 ]; then
  cat >"$TMP/chartcache-fresh1s.toml" <<EOF
[[rules]]
match = { exact = "/index.yaml" }
action = "revalidate"
fresh_for = "1s"
[[rules]]
match = { regex = ".*-dev-.*" }
action = "bypass"
[[rules]]
match = { prefix = "/" }
action = "cache"
ttl = "86400s"
headers = { "Cache-Control" = "max-age=86400" }
EOF
  start_chartcache chartcache-fresh1s "$CCF_PORT" "$CCF_ADMIN" --config "$TMP/chartcache-fresh1s.toml"
fi

# nginx proxy_cache without tcp_nopush: its best on this workload (with it, p99 goes to ~44 ms).
if has nginx-cache; then
  mkdir -p "$TMP/nginx-cache/cache"
  start_nginx nginx-cache "$NGC_PORT" off "\
  proxy_cache_path $TMP/nginx-cache/cache levels=1:2 keys_zone=charts:16m max_size=4g inactive=1d use_temp_path=off;
  upstream s3 { server 127.0.0.1:$S3A_PORT; keepalive 16; }
  server {
    listen 127.0.0.1:$NGC_PORT;
    location / {
      proxy_pass http://s3/charts/;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_cache charts;
      proxy_cache_valid 200 1d;
      proxy_cache_lock on;
    }
  }" "http://127.0.0.1:$S3A_PORT/__stats"
fi

if has varnish; then
  d="$TMP/varnish"; mkdir -p "$d"
  cat >"$d/default.vcl" <<EOF
vcl 4.1;
backend s3 { .host = "127.0.0.1"; .port = "$S3A_PORT"; }
sub vcl_recv {
  # The bucket is a path prefix on the S3 server.
  set req.url = "/charts" + req.url;
}
sub vcl_backend_response {
  if (beresp.status == 200) { set beresp.ttl = 1d; }
}
EOF
  # -j none: no privilege separation, so the worker can read the 0700 temp dir.
  varnishd -F -j none -n "$d/work" -a "127.0.0.1:$VAR_PORT" -T 127.0.0.1:0 -f "$d/default.vcl" \
    -s malloc,1G >"$d/varnishd.log" 2>&1 &
  register varnish "$VAR_PORT" $! "$d/varnishd.log" "http://127.0.0.1:$S3A_PORT/__stats"
fi

# nginx serving the generated files directly, as nginx static does best.
if has nginx-static; then
  start_nginx nginx-static "$NGS_PORT" on "\
  open_file_cache max=10000 inactive=1h;
  open_file_cache_valid 1h;
  server {
    listen 127.0.0.1:$NGS_PORT;
    root $DOCROOT;
  }"
fi

# The bare responder: files in memory, one io_uring send per response, no cache logic — the
# practical floor on this machine (what chartcache's per-hit work is measured against).
if has floor; then
  "$LOADTEST" floor --root "$DOCROOT" --listen "127.0.0.1:$FLOOR_PORT" --workers 2 \
    >"$TMP/floor.log" 2>&1 &
  register floor "$FLOOR_PORT" $! "$TMP/floor.log"
fi

[ ${#ACTIVE[@]} -gt 0 ] || { echo "no server came up" >&2; exit 1; }

# ---- results directory and machine info ------------------------------------------------------
results_dir
NGINX_VERSION=$(nginx -v 2>&1 || true) VARNISH_VERSION=$(varnishd -V 2>&1 | head -n 1 || true) \
STAMP=$STAMP COMMIT=$COMMIT NPROC=$NPROC KERNEL=$KERNEL CPU_MODEL=$CPU_MODEL CHARTS=$CHARTS \
ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS THREADS=$THREADS \
PROFILE=$PROFILE SERVERS_UP="${ACTIVE[*]}" WORKLOADS=$WORKLOADS python3 - "$OUT/machine.json" <<'PY'
import json, os, sys
e = os.environ
json.dump({
  "date_utc": e["STAMP"], "git_commit": e["COMMIT"], "nproc": int(e["NPROC"]),
  "kernel": e["KERNEL"], "cpu_model": e["CPU_MODEL"], "nginx": e["NGINX_VERSION"],
  "varnish": e["VARNISH_VERSION"], "charts": int(e["CHARTS"]), "rounds": int(e["ROUNDS"]),
  "duration_s": float(e["DURATION"]), "warmup_s": float(e["WARMUP"]),
  "connections": int(e["CONNECTIONS"]), "threads": int(e["THREADS"]), "profile": e["PROFILE"],
  "servers": e["SERVERS_UP"].split(), "workloads": e["WORKLOADS"].split(","),
}, open(sys.argv[1], "w"), indent=2)
PY
meta=(--meta "commit=$COMMIT" --meta "kernel=$KERNEL" --meta "nproc=$NPROC" --meta "cpu=$CPU_MODEL")

# ---- warm every server -----------------------------------------------------------------------
for s in "${ACTIVE[@]}"; do
  log "warming $s (one pass over every path)"
  "$LOADTEST" --url "${URL[$s]}" --charts-from "${URL[$s]}/index.yaml" \
    --mix index.yaml=1,charts=1 --connections 8 --warm-only
done

# ---- rounds ----------------------------------------------------------------------------------
workload_args() {
  case "$1" in
    charts) echo "--charts-from ${URL[$2]}/index.yaml" ;;
    ci-mix) echo "--charts-from ${URL[$2]}/index.yaml --mix index.yaml=90,charts=10" ;;
    *) echo "unknown workload $1" >&2; return 1 ;;
  esac
}
# The servers in the order they run in round ROUND (sets `order`): reversed every other round
# so drift on a shared machine does not favour one server. Both the chartcache-loadtest and
# the wrk rounds use it.
round_order() {
  order=("${ACTIVE[@]}")
  if [ $(($1 % 2)) = 0 ]; then
    for ((i = ${#ACTIVE[@]} - 1, j = 0; i >= 0; i--, j++)); do order[j]=${ACTIVE[i]}; done
  fi
}
IFS=, read -r -a WLS <<<"$WORKLOADS"
for round in $(seq "$ROUNDS"); do
  round_order "$round"
  for wl in "${WLS[@]}"; do
    for s in "${order[@]}"; do
      log "round $round/$ROUNDS  $wl  $s"
      upstream=(); opts=()
      [ -n "$RATE" ] && opts=(--rate "$RATE")
      [ -n "$READ_BUFFER" ] && opts+=(--read-buffer "$READ_BUFFER")
      [ -n "${METRICS[$s]:-}" ] && upstream=(--metrics-url "${METRICS[$s]}" --upstream-metric s3_requests_total)
      # shellcheck disable=SC2046
      timeout $((DURATION + WARMUP + 60)) "$LOADTEST" --url "${URL[$s]}" $(workload_args "$wl" "$s") \
        --label "$s" --name "$wl" --threads "$THREADS" --connections "$CONNECTIONS" \
        --duration "${DURATION}s" --warmup "${WARMUP}s" --pid "${PID[$s]}" "${upstream[@]}" "${opts[@]}" \
        --json "$OUT/runs/$wl-$s-r$round.json" --meta "round=$round" "${meta[@]}" \
        | tee "$OUT/runs/$wl-$s-r$round.txt" \
        || echo "note: run $wl/$s/round $round failed" >&2
    done
  done
done

# ---- optional wrk cross-check (charts workload, same rounds and alternation) ----------------
# CPU ticks (utime + stime) of a process and all its descendants, from /proc.
tree_ticks() {
  python3 - "$1" <<'PY'
import os, sys
root = int(sys.argv[1]); kids = {}; ticks = {}
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    try:
        f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    kids.setdefault(int(f[1]), []).append(int(d)); ticks[int(d)] = int(f[11]) + int(f[12])
todo, total = [root], 0
while todo:
    p = todo.pop(); total += ticks.get(p, 0); todo += kids.get(p, [])
print(total)
PY
}
if [ "$WITH_WRK" = 1 ]; then
  cat >"$TMP/rotate.lua" <<EOF
local paths = {}
for line in io.lines("$TMP/s3/paths.txt") do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
EOF
  mkdir -p "$OUT/wrk"
  printf 'server\tround\treq_s\tp99_ms\tcpu_us_per_req\twrk_cpu_us_per_req\n' >"$OUT/wrk-runs.tsv"
  for round in $(seq "$ROUNDS"); do
    round_order "$round"
    for s in "${order[@]}"; do
      log "wrk round $round/$ROUNDS  charts  $s"
      f="$OUT/wrk/charts-$s-r$round.txt"
      t0=$(tree_ticks "${PID[$s]}")
      # wrk's own CPU (user + system) from getrusage of the child.
      python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[2:], stdout=open(sys.argv[1], "w"), stderr=subprocess.STDOUT)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(r.ru_utime + r.ru_stime)' "$f" timeout $((DURATION + 30)) wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" \
        --latency -s "$TMP/rotate.lua" "${URL[$s]}" >"$TMP/wrk-cpu.txt" || true
      t1=$(tree_ticks "${PID[$s]}")
      TICKS=$((t1 - t0)) WRK_CPU=$(cat "$TMP/wrk-cpu.txt" 2>/dev/null || echo 0) HZ=$(getconf CLK_TCK) S=$s R=$round python3 - "$f" >>"$OUT/wrk-runs.tsv" <<'PY' || echo "note: wrk run $s/round $round failed" >&2
import os, re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
n = int(re.search(r"(\d+) requests in", t).group(1))
m = re.search(r"\s99%\s+([\d.]+)(us|ms|s)\b", t)
p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
hz = int(os.environ["HZ"])
cpu = int(os.environ["TICKS"]) / hz * 1e6 / max(n, 1)
wcpu = float(os.environ["WRK_CPU"] or 0) * 1e6 / max(n, 1)
print(f"{os.environ['S']}\t{os.environ['R']}\t{rps:.0f}\t{p99:.2f}\t{cpu:.1f}\t{wcpu:.1f}")
PY
    done
  done
fi

# ---- summary ---------------------------------------------------------------------------------
log "summary ($NPROC cores, $KERNEL, $CPU_MODEL, commit $COMMIT)"
runs=()
for wl in "${WLS[@]}"; do for s in "${ACTIVE[@]}"; do for round in $(seq "$ROUNDS"); do
  f="$OUT/runs/$wl-$s-r$round.json"; [ -f "$f" ] && runs+=("$f")
done; done; done
[ ${#runs[@]} -gt 0 ] || { echo "no run produced a report" >&2; exit 1; }
"$LOADTEST" summarize --baseline chartcache --out-dir "$OUT" \
  --title "$CHARTS charts, ${CONNECTIONS} conns, ${DURATION}s × $ROUNDS, client reads ${READ_BUFFER:-256KiB}" "${runs[@]}"
echo
echo "results: $OUT"

# ---- wrk summary (printed last) --------------------------------------------------------------
if [ "$WITH_WRK" = 1 ] && [ -s "$OUT/wrk-runs.tsv" ]; then
  WRK_THREADS=$WRK_THREADS python3 - "$OUT/wrk-runs.tsv" <<'PY' | tee "$OUT/wrk-summary.txt"
import os, sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
servers = list(dict.fromkeys(r[0] for r in rows))
mean = {s: st.mean(float(r[2]) for r in rows if r[0] == s) for s in servers}
print(f"\nwrk cross-check: charts (wrk -t{os.environ.get('WRK_THREADS', '1')}, same connections and rounds; CPU from /proc: server, wrk, sum)")
print(f"{'server':<20} {'req/s':>8} {'(rounds)':>24} {'p99':>9} {'CPU µs/req':>11} {'wrk µs':>7} {'sum':>6} {'vs chartcache':>14} {'vs floor':>9}")
for s in servers:
    rs = [float(r[2]) for r in rows if r[0] == s]
    p99 = st.mean(float(r[3]) for r in rows if r[0] == s)
    cpu = st.mean(float(r[4]) for r in rows if r[0] == s)
    wcpu = st.mean(float(r[5]) for r in rows if r[0] == s)
    vc = f"{mean[s] / mean['chartcache']:.2f}×" if "chartcache" in mean else "-"
    vf = f"{mean[s] / mean['floor']:.2f}×" if "floor" in mean else "-"
    rounds = "/".join(f"{x / 1000:.1f}k" for x in rs)
    print(f"{s:<20} {mean[s] / 1000:>7.1f}k {'(' + rounds + ')':>24} {p99:>7.2f}ms {cpu:>11.1f} {wcpu:>7.1f} {cpu + wcpu:>6.1f} {vc:>14} {vf:>9}")
PY
fi
