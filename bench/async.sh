#!/usr/bin/env bash
# Async acceptance through the gateway: `POST /async-function/hello` (1 KiB) with wrk on a
# fresh `fogline up --single`, every 202 a call on disk (group commit), the workers running
# the calls on the same cores; beside the limit measured in the same run, sled's own
# insert + flush rate one at a time (the store benchmark prints it first).
#
#   bench/async.sh            (needs wrk: apt-get install wrk)
#
# Runs outside CI: figures depend on the machine (and its disk); the README keeps them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dur=${DURATION:-10s}
command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }
[ -n "${FOGLINE_BIN:-}" ] || (cd "$root" && cargo build --release -q)
bin=${FOGLINE_BIN:-$root/target/release/fogline}
work=$(mktemp -d)
cleanup() { kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

(cd "$root" && cargo bench -q -p fogline-node --bench store 2>/dev/null) | grep -E "limit|submitter"

(cd "$work" && exec "$bin" up --single --data-dir "$work/.fogline" --http 127.0.0.1:0 --coap 127.0.0.1:0 >"$work/out" 2>"$work/err") &
pid=$!
for _ in $(seq 1 100); do grep -q "gateway listening" "$work/out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^gateway listening on //p' "$work/out" | head -1)
token=$(cat "$work/.fogline/admin.token")
"$bin" --gateway "$url" --token "$token" deploy hello --max-concurrency 256 --wasm "$root/examples/hello/hello.wasm" >/dev/null 2>&1
payload=$(head -c 1024 /dev/zero | tr '\0' 'x')
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = "$payload"
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Authorization"] = "Bearer $token"
LUA
for conns in 64 8 1; do
    out=$(wrk -t"$(( conns < 2 ? 1 : 2 ))" -c"$conns" -d"$dur" --latency -s "$work/post.lua" "$url/async-function/hello")
    errs=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    [ -z "$errs" ] || { echo "bench: $errs submissions not accepted" >&2; exit 1; }
    printf 'gateway: POST /async-function/hello, %2d conns  %8.0f/s accepted   p50 %s  p99 %s%s\n' "$conns" \
        "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
        "$(echo "$out" | awk '$1=="50%" {print $2}')" "$(echo "$out" | awk '$1=="99%" {print $2}')" \
        "$([ "$conns" = 64 ] && echo '   (target: >= 5,000/s)')"
done
