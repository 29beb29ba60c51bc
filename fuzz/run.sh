#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, one after the other, and prints a summary.
# Usage: fuzz/run.sh [SECONDS per target, default 60] [TARGET...]
#
# cargo-fuzz on stable Rust: `--sanitizer none` needs no nightly flag (these targets fuzz
# safe Rust: the assertions and Rust's own bounds and overflow checks are the oracle).
# SANITIZER=address uses ASan instead; stable rustc ships its runtime, so
# `RUSTC_BOOTSTRAP=1 SANITIZER=address fuzz/run.sh 60` should work without a nightly
# toolchain (not tried yet: the first campaign used `none`).
#
# Corpora grow in fuzz/corpus/TARGET (not committed); the seeds in fuzz/seeds/TARGET are
# read, never written. A crash leaves fuzz/artifacts/TARGET/crash-*; the run goes on with
# the next target and the script exits 1 at the end. Logs: fuzz/logs/TARGET.log.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(http1_request http1_chunked helm_index cache_record)
sanitizer=${SANITIZER:-none}
cd "$here/.."
mkdir -p "$here/logs"

echo "building (sanitizer $sanitizer)..."
cargo fuzz build --sanitizer "$sanitizer" >/dev/null 2>"$here/logs/build.log" || {
    tail -30 "$here/logs/build.log"
    exit 2
}

failed=0
printf '%-14s %8s %12s %10s %8s %8s  %s\n' target seconds execs exec/s cov corpus result
for t in "${targets[@]}"; do
    mkdir -p "$here/corpus/$t" "$here/artifacts/$t"
    dict=()
    [ -f "$here/dict/$t.dict" ] && dict=("-dict=$here/dict/$t.dict")
    start=$(date +%s)
    cargo fuzz run --sanitizer "$sanitizer" "$t" "$here/corpus/$t" "$here/seeds/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$here/artifacts/$t/" \
        "${dict[@]}" >"$here/logs/$t.log" 2>&1
    rc=$?
    took=$(($(date +%s) - start))
    log=$here/logs/$t.log
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -oE '(DONE|pulse|NEW|REDUCE|INITED) +cov: [0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    corpus=$(find "$here/corpus/$t" -type f | wc -l)
    if [ $rc -eq 0 ]; then
        result=ok
    else
        result="FAILED (rc $rc): $(ls -t "$here/artifacts/$t" | head -1)"
        failed=1
    fi
    printf '%-14s %8s %12s %10s %8s %8s  %s\n' "$t" "$took" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$corpus" "$result"
done
exit $failed
