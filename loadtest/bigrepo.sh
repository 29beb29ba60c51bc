#!/usr/bin/env bash
# chartcache with a big repository: cache hits while the index is republished, and Helm's time.
#
#   loadtest/bigrepo.sh [--sizes 15k,50m] [-r ROUNDS] [-d SECONDS] [-w WARMUP] [--rate R]
#                       [-c CONNECTIONS] [--index-rate R] [--republish-every S]
#                       [--helm-reps N] [--no-helm] [--no-nginx] [--bin BIN] [--profile P] [--keep]
#
# For each size (gen_bigrepo.py presets: 15k = 15,000 versions, 14.6 MB index.yaml; 50m =
# 20,000 versions, 49 MB), on a fresh S3 server (examples/s3_server.rs, SigV4, as compare.sh;
# every object's ETag recorded as an upload would, so it never hashes an object per request)
# and a fresh chartcache (2 workers, defaults, empty cache):
# 1. cold fill: the first `GET /index.yaml` (upstream GET + everything chartcache does to a
#    new index), then three warm fetches (a revalidation answered 304 upstream + the send),
#    timed by curl with `User-Agent: Helm/4.3`;
# 2. warms the load set (500 small charts, ~1 KB) with one pass;
# 3. ROUNDS × two phases back to back (order reversed every other round), each D seconds after
#    W seconds of unrecorded warm-up, with two chartcache-loadtest processes at once:
#      hits:  the load set, open loop at --rate req/s over C connections (both workers),
#      index: `GET /index.yaml` (User-Agent Helm/4.3) open loop at --index-rate req/s over 2
#             connections; the index is revalidated on every request (README, Freshness), so
#             each request after a republish makes chartcache fetch the new index;
#    phase `steady`:  nothing changes upstream;
#    phase `refresh`: republish.py rewrites index.yaml under the S3 root every S seconds
#                     (new bytes, new ETag); chartcache's upstream `200` count over the phase
#                     says how many new indexes it actually took in;
#    after each phase the server's VmRSS / VmHWM (/proc/PID/status);
# 4. Helm timing (helm_timing.py: helm-sdkpy, Helm v4.3 as a library, fresh Helm home per run):
#    `repo add` + `repo update` against chartcache for three repositories holding the same
#    index: `served` (/index.yaml: what chartcache gives a Helm client, YAML today), `yaml`
#    (a copy at /yaml/index.yaml, a plain cached object) and `json` (the same document as
#    compact JSON at /json/index.yaml, a plain cached object), and the same two files from nginx
#    static (`nginx-yaml`, `nginx-json`: the reference a plain web server gives; nginx is
#    apt-get installed when missing and running as root, --no-nginx skips it);
# 5. writes everything under loadtest/results/<UTC stamp>/ (summary.txt, summary.json,
#    machine.json, runs/*.json, helm-*.jsonl, latency plots) and prints the summary.
# Everything it starts is stopped on exit. Defaults: -r 2 -d 12 -w 2 --rate 4000 -c 64
# --index-rate 2 --republish-every 3 --helm-reps 2 (~5 minutes for both sizes).
set -euo pipefail

SIZES=15k,50m ROUNDS=2 DURATION=12 WARMUP=2 RATE=4000 CONNECTIONS=64 INDEX_RATE=2
REPUBLISH_EVERY=3 HELM_REPS=2 WITH_HELM=1 WITH_NGINX=1 PROFILE=release KEEP=0 CC_BIN=
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) SIZES=$2; shift 2 ;;
    -r) ROUNDS=$2; shift 2 ;;
    -d) DURATION=$2; shift 2 ;;
    -w) WARMUP=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    -c) CONNECTIONS=$2; shift 2 ;;
    --index-rate) INDEX_RATE=$2; shift 2 ;;
    --republish-every) REPUBLISH_EVERY=$2; shift 2 ;;
    --helm-reps) HELM_REPS=$2; shift 2 ;;
    --no-helm) WITH_HELM=0; shift ;;
    --no-nginx) WITH_NGINX=0; shift ;;
    --bin) CC_BIN=$(realpath "$2"); shift 2 ;;
    --profile) PROFILE=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
# shellcheck source=loadtest/lib.sh
. "$REPO/loadtest/lib.sh"    # log, scratch_dir/cleanup, free_ports, wait_ready, results_dir
HELM_UA="User-Agent: Helm/4.3"    # what helm-sdkpy (Helm v4.3) sends

for t in python3 curl; do command -v "$t" >/dev/null || { echo "needs $t" >&2; exit 1; }; done
if [ "$WITH_HELM" = 1 ] && ! python3 -c 'import cffi, helm_sdkpy' 2>/dev/null; then
  log "installing helm-sdkpy (.ci/install-helm.sh)"
  PYTHON=python3 bash "$REPO/.ci/install-helm.sh" >&2 || { echo "note: no Helm client; skipping Helm timing" >&2; WITH_HELM=0; }
fi

[ "$WITH_HELM" = 1 ] || WITH_NGINX=0
if [ "$WITH_NGINX" = 1 ] && ! command -v nginx >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing nginx"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null || true
  fi
  command -v nginx >/dev/null || { echo "note: no nginx; skipping the nginx Helm rows" >&2; WITH_NGINX=0; }
fi

# ---- build -----------------------------------------------------------------------------------
cargo_flags=(); [ "$PROFILE" = release ] && cargo_flags=(--release)
BIN="$REPO/target/$PROFILE"
log "building chartcache, chartcache-loadtest and the S3 server ($PROFILE)"
cargo build -q "${cargo_flags[@]}" -p chartcache-loadtest -p chartcache \
  --bin chartcache-loadtest --bin chartcache --example s3_server
LOADTEST="$BIN/chartcache-loadtest"
CC_BIN=${CC_BIN:-$BIN/chartcache}

scratch_dir chartcache-bigrepo
results_dir
HELM_VERSION=$(python3 -c 'import importlib.metadata as m; print("helm-sdkpy " + m.version("helm-sdkpy"))' 2>/dev/null || echo none)
STAMP=$STAMP COMMIT=$COMMIT NPROC=$NPROC KERNEL=$KERNEL CPU_MODEL=$CPU_MODEL SIZES=$SIZES \
ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP RATE=$RATE CONNECTIONS=$CONNECTIONS \
INDEX_RATE=$INDEX_RATE REPUBLISH_EVERY=$REPUBLISH_EVERY HELM_REPS=$HELM_REPS PROFILE=$PROFILE \
HELM_VERSION=$HELM_VERSION CC_BIN=$CC_BIN LOADAVG="$(cut -d' ' -f1-3 /proc/loadavg)" \
python3 - "$OUT/machine.json" <<'PY'
import json, os, sys
e = os.environ
json.dump({
  "date_utc": e["STAMP"], "git_commit": e["COMMIT"], "nproc": int(e["NPROC"]),
  "kernel": e["KERNEL"], "cpu_model": e["CPU_MODEL"], "loadavg_at_start": e["LOADAVG"],
  "chartcache": e["CC_BIN"], "helm_client": e["HELM_VERSION"], "profile": e["PROFILE"],
  "sizes": e["SIZES"].split(","), "rounds": int(e["ROUNDS"]), "duration_s": float(e["DURATION"]),
  "warmup_s": float(e["WARMUP"]), "hit_rate": float(e["RATE"]), "connections": int(e["CONNECTIONS"]),
  "index_rate": float(e["INDEX_RATE"]), "republish_every_s": float(e["REPUBLISH_EVERY"]),
  "helm_reps": int(e["HELM_REPS"]),
}, open(sys.argv[1], "w"), indent=2)
PY
meta=(--meta "commit=$COMMIT" --meta "kernel=$KERNEL" --meta "nproc=$NPROC" --meta "cpu=$CPU_MODEL")
AK=loadtestAK SK=loadtestSECRETkey0123456789

# Sum of chartcache_upstream_requests_total{outcome="200"} at an admin /metrics URL: the
# upstream responses that brought a new body (index refills here; charts are all cached).
upstream_200() {
  curl -sf "$1" | awk '/^chartcache_upstream_requests_total\{.*outcome="200"/ { s += $NF } END { print s + 0 }'
}
vm_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# Stops the processes of one size (they are in PIDS too, for an early exit).
stop_pids() {
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}

IFS=, read -r -a SIZE_LIST <<<"$SIZES"
for size in "${SIZE_LIST[@]}"; do
  d="$TMP/$size"; mkdir -p "$d"
  log "[$size] generating the repository"
  python3 "$REPO/loadtest/gen_bigrepo.py" "$d/s3/charts" --preset "$size" --tgz load \
    --json-dir json | tee "$OUT/generate-$size.txt" >&2
  mkdir -p "$d/s3/charts/yaml" && cp "$d/s3/charts/index.yaml" "$d/s3/charts/yaml/index.yaml"
  cp "$d/s3/bigrepo.json" "$OUT/bigrepo-$size.json"
  # The ETags S3 would have stored at upload (republish.py: s3s-fs otherwise hashes the 49 MB
  # index on every GET and HEAD, on the cores the server under test runs on).
  python3 "$REPO/loadtest/republish.py" --record-etags "$d/s3"

  read -r S3_PORT CC_PORT CC_ADMIN <<<"$(free_ports 3)"
  "$BIN/examples/s3_server" --root "$d/s3" --listen "127.0.0.1:$S3_PORT" \
    --access-key "$AK" --secret-key "$SK" >"$d/s3.log" 2>&1 &
  S3_PID=$!; PIDS+=("$S3_PID")
  wait_ready "http://127.0.0.1:$S3_PORT/__stats" "$S3_PID" \
    || { cat "$d/s3.log" >&2; echo "S3 server did not start" >&2; exit 1; }
  AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK "$CC_BIN" \
    --upstream s3://charts --s3-endpoint "http://127.0.0.1:$S3_PORT" --region us-east-1 \
    --listen "127.0.0.1:$CC_PORT" --admin "127.0.0.1:$CC_ADMIN" --cache-dir "$d/cache" \
    --workers 2 >"$d/chartcache.log" 2>&1 &
  CC_PID=$!; PIDS+=("$CC_PID")
  wait_ready "http://127.0.0.1:$CC_ADMIN/healthz" "$CC_PID" \
    || { tail -n 20 "$d/chartcache.log" >&2; echo "chartcache did not start" >&2; exit 1; }
  URL="http://127.0.0.1:$CC_PORT" METRICS="http://127.0.0.1:$CC_ADMIN/metrics"
  # Peak of VmRSS and of its anonymous (heap) and file-backed (the cache's mmap) parts, sampled
  # every 50 ms for the life of this server (VmHWM has no such split).
  python3 - "$CC_PID" "$OUT/memory-samples-$size.json" <<'PY' &
import json, signal, sys, time
pid, out = sys.argv[1], sys.argv[2]
peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, "RssShmem": 0}
def done(*_):
    json.dump({k + "_peak_kb": v for k, v in peak.items()}, open(out, "w"))
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
while True:
    try:
        for line in open(f"/proc/{pid}/status"):
            k, _, v = line.partition(":")
            if k in peak:
                peak[k] = max(peak[k], int(v.split()[0]))
    except (OSError, ValueError):
        done()
    time.sleep(0.05)
PY
  MEM_PID=$!; PIDS+=("$MEM_PID")

  # ---- 1. cold fill, then warm fetches -------------------------------------------------------
  log "[$size] cold fill of /index.yaml"
  fetches="$OUT/index-fetch-$size.tsv"
  printf 'fetch\tstatus\tbytes\tseconds\n' >"$fetches"
  for i in cold warm1 warm2 warm3; do
    printf '%s\t%s\n' "$i" "$(curl -s -o /dev/null -H "$HELM_UA" --max-time 120 \
      -w '%{http_code}\t%{size_download}\t%{time_total}' "$URL/index.yaml")" >>"$fetches"
  done
  cat "$fetches" >&2
  # The copies Helm is timed against, filled now so no timed run pays their cold fill.
  for p in yaml json; do curl -sf -o /dev/null -H "$HELM_UA" "$URL/$p/index.yaml"; done
  RSS_AFTER_FILL=$(vm_kb "$CC_PID" VmRSS) HWM_AFTER_FILL=$(vm_kb "$CC_PID" VmHWM)

  # ---- 2. warm the load set ------------------------------------------------------------------
  "$LOADTEST" --url "$URL" --paths-file "$d/s3/load-paths.txt" --connections 8 --warm-only

  # ---- 3. phases -----------------------------------------------------------------------------
  phases_tsv="$OUT/phases-$size.tsv"
  printf 'round\tphase\tpublishes\tindex_refills\tvmrss_kb\tvmhwm_kb\n' >"$phases_tsv"
  for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then order=(steady refresh); else order=(refresh steady); fi
    for phase in "${order[@]}"; do
      log "[$size] round $round/$ROUNDS  $phase"
      publog="$d/publish-r$round-$phase.log"; : >"$publog"
      refills0=$(upstream_200 "$METRICS")
      REPUB_PID=
      if [ "$phase" = refresh ]; then
        python3 "$REPO/loadtest/republish.py" "$d/s3/charts/index.yaml" \
          --every "$REPUBLISH_EVERY" --for $((WARMUP + DURATION)) --log "$publog" &
        REPUB_PID=$!; PIDS+=("$REPUB_PID")
      fi
      common=(--url "$URL" --label "$phase" --duration "${DURATION}s" --warmup "${WARMUP}s"
              --timeout 60s --meta "round=$round" --meta "size=$size" "${meta[@]}")
      timeout $((WARMUP + DURATION + 90)) "$LOADTEST" "${common[@]}" --name "index-$size" \
        --path /index.yaml -H "$HELM_UA" --rate "$INDEX_RATE" --connections 2 \
        --json "$OUT/runs/index-$size-$phase-r$round.json" \
        >"$OUT/runs/index-$size-$phase-r$round.txt" 2>&1 &
      INDEX_PID=$!
      timeout $((WARMUP + DURATION + 60)) "$LOADTEST" "${common[@]}" --name "hits-$size" \
        --paths-file "$d/s3/load-paths.txt" --rate "$RATE" --connections "$CONNECTIONS" \
        --pid "$CC_PID" --metrics-url "http://127.0.0.1:$S3_PORT/__stats" \
        --upstream-metric s3_requests_total \
        --json "$OUT/runs/hits-$size-$phase-r$round.json" \
        | tee "$OUT/runs/hits-$size-$phase-r$round.txt" \
        || echo "note: hits run $size/$phase/round $round failed" >&2
      wait "$INDEX_PID" || echo "note: index run $size/$phase/round $round failed (runs/index-$size-$phase-r$round.txt)" >&2
      if [ -n "$REPUB_PID" ]; then stop_pids "$REPUB_PID"; fi
      # Settle: one more index request takes in a publish not yet fetched (and waits for a
      # refill still running), so the next phase starts clean.
      curl -s -o /dev/null -H "$HELM_UA" --max-time 120 "$URL/index.yaml" || true
      refills1=$(upstream_200 "$METRICS")
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$phase" "$(wc -l <"$publog")" \
        $((refills1 - refills0)) "$(vm_kb "$CC_PID" VmRSS)" "$(vm_kb "$CC_PID" VmHWM)" >>"$phases_tsv"
    done
  done
  # Back to the generated index (the republisher only changed `generated:`), atomically, and
  # its ETag recorded again (else S3 keeps the last republish's ETag for these bytes, and
  # chartcache's revalidation gets 304 and keeps serving the last republished bytes).
  cp "$d/s3/charts/yaml/index.yaml" "$d/s3/.restore.tmp"
  mv "$d/s3/.restore.tmp" "$d/s3/charts/index.yaml"
  python3 "$REPO/loadtest/republish.py" --record-etags "$d/s3"

  # ---- 4. Helm ---------------------------------------------------------------------------------
  if [ "$WITH_HELM" = 1 ]; then
    helm_repos=(served="$URL" yaml="$URL/yaml" json="$URL/json")
    NGX_PID=
    if [ "$WITH_NGINX" = 1 ]; then
      # nginx static over the same files: the reference a plain web server gives Helm.
      read -r NGX_PORT <<<"$(free_ports 1)"
      mkdir -p "$d/nginx/tmp"
      NGINX_USER=""; [ "$(id -u)" = 0 ] && NGINX_USER="user root;"
      cat >"$d/nginx/nginx.conf" <<EOF
$NGINX_USER
worker_processes 2;
pid $d/nginx/nginx.pid;
error_log $d/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  client_body_temp_path $d/nginx/tmp/body; proxy_temp_path $d/nginx/tmp/proxy;
  fastcgi_temp_path $d/nginx/tmp/fcgi; uwsgi_temp_path $d/nginx/tmp/uwsgi; scgi_temp_path $d/nginx/tmp/scgi;
  server { listen 127.0.0.1:$NGX_PORT; root $d/s3/charts; }
}
EOF
      nginx -p "$d/nginx" -e "$d/nginx/error.log" -c "$d/nginx/nginx.conf" -g 'daemon off;' \
        >"$d/nginx/stdout.log" 2>&1 &
      NGX_PID=$!; PIDS+=("$NGX_PID")
      if wait_ready "http://127.0.0.1:$NGX_PORT/index.yaml" "$NGX_PID"; then
        helm_repos+=(nginx-yaml="http://127.0.0.1:$NGX_PORT" nginx-json="http://127.0.0.1:$NGX_PORT/json")
      else
        echo "note: nginx did not start; skipping its Helm rows" >&2
        tail -n 5 "$d/nginx/error.log" >&2 || true
      fi
    fi
    log "[$size] helm repo add / update ($HELM_REPS reps)"
    python3 "$REPO/loadtest/helm_timing.py" --reps "$HELM_REPS" --timeout 600 "${helm_repos[@]}" \
      | tee "$OUT/helm-$size.jsonl" >&2 || echo "note: a Helm run failed for $size" >&2
    if [ -n "$NGX_PID" ]; then stop_pids "$NGX_PID"; fi
  fi

  printf '{"rss_kb_after_fill": %s, "hwm_kb_after_fill": %s, "hwm_kb_end": %s, "index_bytes": %s}\n' \
    "$RSS_AFTER_FILL" "$HWM_AFTER_FILL" "$(vm_kb "$CC_PID" VmHWM)" \
    "$(stat -c %s "$d/s3/charts/index.yaml")" >"$OUT/memory-$size.json"
  stop_pids "$MEM_PID" "$CC_PID" "$S3_PID"
  # The server's own log lines (warnings, start, stop), without the access log.
  grep -v '"type":"access"' "$d/chartcache.log" | tail -n 100 >"$OUT/chartcache-$size.log" || true
  rm -rf "$d"
done

# ---- summary ---------------------------------------------------------------------------------
log "summary ($NPROC cores, $KERNEL, $CPU_MODEL, commit $COMMIT)"
"$LOADTEST" summarize --baseline steady --out-dir "$OUT/plots" \
  --title "chartcache, big index: steady vs refresh" "$OUT"/runs/*.json >/dev/null
python3 "$REPO/loadtest/bigrepo_summary.py" "$OUT" | tee "$OUT/summary.txt"
echo
echo "results: $OUT"
