#!/usr/bin/env bash
# Regenerates fuzz/seeds/ (the committed seed corpora) from real inputs:
#   http1_request  request heads as curl sends them (captured on a loopback socket),
#                  plus Helm's (Go net/http) head, written out by hand;
#   http1_chunked  chunked bodies as curl sends them (captured), plus RFC 9112's example;
#   helm_index     examples/repo/index.yaml, and the same index as helm-s3 writes it
#                  (s3:// URLs);
#   cache_record   a segment and both checkpoint copies written by the real server:
#                  chartcache (target/debug/chartcache, or $CHARTCACHE_BIN) serving
#                  examples/repo from file://, every object fetched, one purged (a
#                  tombstone), stopped with SIGTERM (the shutdown checkpoint). Each file is
#                  prefixed with the target's mode byte (0: as is, 3: CRCs fixed up).
# Usage: fuzz/make_seeds.sh   (needs curl and python3; the binary must be built)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
bin=${CHARTCACHE_BIN:-$root/target/debug/chartcache}
seeds=$here/seeds
work=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

rm -rf "$seeds"
mkdir -p "$seeds"/{http1_request,http1_chunked,helm_index,cache_record}

# --- request heads and chunked bodies, as curl sends them -----------------------------
port=$(free_port)
python3 - "$port" "$work/capture" <<'PY' &
import os, socket, sys
port, out = int(sys.argv[1]), sys.argv[2]
os.makedirs(out, exist_ok=True)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(16)
srv.settimeout(20)
n = 0
while True:
    try:
        c, _ = srv.accept()
    except socket.timeout:
        break
    c.settimeout(2)
    data = b""
    while True:
        try:
            chunk = c.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
        head_end = data.find(b"\r\n\r\n")
        if head_end < 0:
            continue
        head = data[: head_end + 4].lower()
        if b"transfer-encoding: chunked" in head:
            if data.endswith(b"0\r\n\r\n"):
                break
        elif b"content-length:" in head:
            cl = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            if len(data) >= head_end + 4 + cl:
                break
        else:
            break
    if data == b"QUIT":
        break
    open(os.path.join(out, "%02d" % n), "wb").write(data)
    n += 1
    c.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    c.close()
PY
cap_pid=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
base=http://127.0.0.1:$port
curl -s -o /dev/null "$base/index.yaml" || true
curl -s -o /dev/null -I "$base/charts/hello-0.1.0.tgz" || true
curl -s -o /dev/null -0 "$base/hello-0.2.0.tgz" || true
curl -s -o /dev/null -H 'If-None-Match: "5d05c4e8b99649c66251a5d1c7c8fe42-cc1a2b3c4d"' \
    -H 'If-Modified-Since: Tue, 01 Dec 2026 06:00:00 GMT' -H 'Range: bytes=0-99' "$base/index.yaml" || true
curl -s -o /dev/null -x "$base" http://charts.example.com/podinfo-lite-1.0.0.tgz?x=1 || true
curl -s -o /dev/null "$base/caf%C3%A9/a%20b.tgz" || true
curl -s -o /dev/null -H 'Connection: close' -A 'Helm/4.3' "$base/index.yaml" || true
curl -s -o /dev/null -H 'Transfer-Encoding: chunked' -H 'Expect:' --data-binary @"$root/examples/repo/index.yaml" "$base/upload" || true
printf 'hello\nworld\n' | curl -s -o /dev/null -H 'Transfer-Encoding: chunked' -H 'Expect:' --data-binary @- "$base/x" || true
printf 'QUIT' >/dev/tcp/127.0.0.1/"$port" || true
wait "$cap_pid" || true
python3 - "$work/capture" "$seeds" <<'PY'
import os, sys
src, seeds = sys.argv[1], sys.argv[2]
for name in sorted(os.listdir(src)):
    data = open(os.path.join(src, name), "rb").read()
    if not data.strip():
        continue  # the readiness probe
    head, _, body = data.partition(b"\r\n\r\n")
    open(os.path.join(seeds, "http1_request", "curl-" + name), "wb").write(head + b"\r\n\r\n")
    if b"chunked" in head.lower() and body:
        open(os.path.join(seeds, "http1_chunked", "curl-" + name), "wb").write(body)
PY
# Helm (Go net/http) sends exactly this head.
printf 'GET /index.yaml HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: Helm/4.3\r\nAccept-Encoding: gzip\r\n\r\n' \
    >"$seeds/http1_request/helm"
# RFC 9112 section 7.1's example shape: extensions and trailers.
printf '4\r\nWiki\r\n5;ext=1;name="q"\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: yes\r\n\r\n' \
    >"$seeds/http1_chunked/rfc"

# --- index.yaml ---------------------------------------------------------------------------
cp "$root/examples/repo/index.yaml" "$seeds/helm_index/index.yaml"
sed -E 's#^(\s*- )([a-z].*\.tgz)$#\1s3://my-charts/stable/\2#' "$root/examples/repo/index.yaml" \
    >"$seeds/helm_index/index-helm-s3.yaml"
printf '"5d05c4e8b99649c66251a5d1c7c8fe42"\n' >"$seeds/helm_index/etag"

# --- cache files written by the server ---------------------------------------------------
listen=$(free_port)
admin=$(free_port)
cache=$work/cache
"$bin" --listen "127.0.0.1:$listen" --admin "127.0.0.1:$admin" --workers 1 \
    --upstream "file://$root/examples/repo" --cache-dir "$cache" --cache-size 64MiB \
    --no-access-log >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
for f in index.yaml hello-0.1.0.tgz hello-0.2.0.tgz hello-0.3.0-dev-1.tgz podinfo-lite-1.0.0.tgz missing.tgz; do
    curl -s -o /dev/null "http://127.0.0.1:$listen/$f"
done
curl -s -o /dev/null -X DELETE "http://127.0.0.1:$admin/cache/hello-0.1.0.tgz"
kill -TERM "$pid"
wait "$pid" || true
pid=
python3 - "$cache" "$seeds/cache_record" <<'PY'
import os, struct, sys
cache, out = sys.argv[1], sys.argv[2]
n = 0
for dirpath, _, files in os.walk(cache):
    for f in sorted(files):
        data = open(os.path.join(dirpath, f), "rb").read()
        if f.endswith(".seg"):
            # Keep the written part: records up to the first all-zero header, plus it.
            off = 0
            while off + 40 <= len(data) and data[off:off + 40] != bytes(40):
                k, m = struct.unpack_from("<HH", data, off + 6)
                b, = struct.unpack_from("<Q", data, off + 16)
                off += 40 + k + m + b
            data = data[:off + 40]
        elif not f.startswith("index."):
            continue
        for mode in (0, 3):
            open(os.path.join(out, "%s-%d-mode%d" % (f, n, mode)), "wb").write(bytes([mode]) + data)
        n += 1
print("cache seeds:", n, "files")
PY
ls -l "$seeds"/*
