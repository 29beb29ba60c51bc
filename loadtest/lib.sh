# Shell helpers shared by loadtest/compare.sh and loadtest/bigrepo.sh (sourced, not run).
#
# Owns: the bold progress line (log), the scratch directory and the cleanup that stops every
# process listed in PIDS on exit (scratch_dir), free loopback ports (free_ports) and waiting
# for a server to answer (wait_ready), the results directory and machine facts (results_dir). Uses the caller's KEEP (1: keep the scratch dir).

log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

# Creates the scratch dir TMP (mktemp -d /tmp/PREFIX.XXXXXX) and arranges that on exit (also
# Ctrl-C) every pid in PIDS gets SIGTERM, then after 3 s SIGKILL (with its children), and TMP is
# removed unless KEEP=1.   scratch_dir PREFIX
scratch_dir() {
  TMP=$(mktemp -d "/tmp/$1.XXXXXX")
  PIDS=()
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 30); do
    alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
  exit $rc
}

# n free loopback ports (bound together so they differ, then released).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# Waits until URL answers 200 or the process PID dies (TRIES × 0.1 s, default 10 s).
#   wait_ready URL PID [TRIES]
wait_ready() {
  local url=$1 pid=$2 tries=${3:-100}
  for _ in $(seq "$tries"); do
    kill -0 "$pid" 2>/dev/null || return 1
    curl -sf -o /dev/null "$url" && return 0
    sleep 0.1
  done
  return 1
}

# Creates the results directory OUT=$REPO/loadtest/results/STAMP (with runs/) and sets the
# machine facts every report records: STAMP, COMMIT (-dirty with local changes), CPU_MODEL,
# KERNEL, NPROC.   results_dir
results_dir() {
  STAMP=$(date -u +%Y%m%dT%H%M%SZ)
  OUT="$REPO/loadtest/results/$STAMP"
  mkdir -p "$OUT/runs"
  COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  [ -n "$(git -C "$REPO" status --porcelain 2>/dev/null)" ] && COMMIT="$COMMIT-dirty"
  CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
  KERNEL=$(uname -r)
  NPROC=$(nproc)
}
