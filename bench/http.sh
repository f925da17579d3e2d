#!/usr/bin/env bash
# HTTP invocation benchmark: `POST /function/hello` with a 1 KiB body on loopback, measured
# with wrk, beside nginx answering a static 1 KiB response under the same wrk settings in
# the same run, plus the node agent's resident memory when idle and after the load; then the
# same call through the router of a `fogline up` local mesh (HTTP in, QUIC to a node).
#
#   bench/http.sh            (needs wrk and nginx: apt-get install wrk nginx-light)
#
# Runs outside CI: figures depend on the machine; the README keeps the latest ones.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dur=${DURATION:-10s}
for tool in wrk nginx; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install wrk nginx-light)" >&2; exit 1; }
done
[ -n "${FOGLINE_BIN:-}" ] || (cd "$root" && cargo build --release -q)
bin=${FOGLINE_BIN:-$root/target/release/fogline}
work=$(mktemp -d)
cleanup() { kill "$pid" 2>/dev/null || true; kill "${mpid:-0}" 2>/dev/null || true; [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

(cd "$work" && exec "$bin" up --single --data-dir "$work/.fogline" --http 127.0.0.1:0 --coap 127.0.0.1:0 >"$work/out" 2>"$work/err") &
pid=$!
for _ in $(seq 1 100); do grep -q "gateway listening" "$work/out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^gateway listening on //p' "$work/out" | head -1)
sleep 2
rss_idle=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
"$bin" --gateway "$url" --token "$(cat "$work/.fogline/admin.token")" deploy hello --max-concurrency 256 --wasm "$root/examples/hello/hello.wasm" >/dev/null 2>&1

payload=$(head -c 1024 /dev/zero | tr '\0' 'x')
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = "$payload"
wrk.headers["Content-Type"] = "application/octet-stream"
LUA

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/nginx.conf" <<NGINX
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 1024; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$port;
        location / { default_type text/plain; return 200 "$payload"; }
    }
}
NGINX
nginx -c "$work/nginx.conf"
sleep 0.5

# wrk prints latency percentiles as 123.45us / 1.23ms / 1.23s; convert to µs.
to_us() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000000} else print v}'; }
run() { # url threads conns -> "rps p50_us p99_us"
    local out
    out=$(wrk -t"$2" -c"$3" -d"$dur" --latency -s "$work/post.lua" "$1")
    local rps p50 p99 errs
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1=="50%" {print $2}' | to_us)
    p99=$(echo "$out" | awk '$1=="99%" {print $2}' | to_us)
    errs=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    [ -z "$errs" ] || { echo "bench: $errs non-2xx responses from $1" >&2; exit 1; }
    echo "$rps $p50 $p99"
}
read -r f1_rps f1_p50 f1_p99 < <(run "$url/function/hello" 1 1)
read -r f64_rps f64_p50 f64_p99 < <(run "$url/function/hello" 2 64)
read -r n1_rps n1_p50 n1_p99 < <(run "http://127.0.0.1:$port/" 1 1)
read -r n64_rps n64_p50 n64_p99 < <(run "http://127.0.0.1:$port/" 2 64)
rss_after=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")

printf 'HTTP POST 1 KiB, loopback, wrk %s per run, %s cores\n' "$dur" "$(nproc)"
printf '%-34s %12s %12s %12s\n' "" "req/s" "p50 µs" "p99 µs"
printf '%-34s %12.0f %12.0f %12.0f\n' "fogline /function/hello, 1 conn" "$f1_rps" "$f1_p50" "$f1_p99"
printf '%-34s %12.0f %12.0f %12.0f\n' "nginx static 1 KiB, 1 conn" "$n1_rps" "$n1_p50" "$n1_p99"
printf '%-34s %12.0f %12.0f %12.0f\n' "fogline /function/hello, 64 conns" "$f64_rps" "$f64_p50" "$f64_p99"
printf '%-34s %12.0f %12.0f %12.0f\n' "nginx static 1 KiB, 64 conns" "$n64_rps" "$n64_p50" "$n64_p99"
awk -v a="$f64_rps" -v b="$n64_rps" 'BEGIN { printf "fogline / nginx throughput at 64 conns: %.3fx\n", a/b }'
printf 'node agent RSS: idle %.1f MB, after the load %.1f MB\n' "$(echo "$rss_idle/1024" | bc -l)" "$(echo "$rss_after/1024" | bc -l)"

# Through the router: a local mesh (router, two edge nodes, a cloud bridge) in one process.
(cd "$work" && exec "$bin" up --data-dir "$work/mesh" --http 127.0.0.1:0 --coap 127.0.0.1:0 >"$work/mout" 2>"$work/merr") &
mpid=$!
for _ in $(seq 1 100); do grep -q "local mesh ready" "$work/mout" 2>/dev/null && break; sleep 0.1; done
murl=$(sed -n 's/^gateway listening on //p' "$work/mout" | head -1)
sleep 3
"$bin" --gateway "$murl" --token "$(cat "$work/mesh/admin.token")" deploy hello --idempotent --max-concurrency 256 --wasm "$root/examples/hello/hello.wasm" >/dev/null 2>&1
run "$murl/function/hello" 1 1 >/dev/null   # warm every place
read -r r1_rps r1_p50 r1_p99 < <(run "$murl/function/hello" 1 1)
read -r r64_rps r64_p50 r64_p99 < <(run "$murl/function/hello" 2 64)
printf '%-34s %12.0f %12.0f %12.0f
' "via the router (up), 1 conn" "$r1_rps" "$r1_p50" "$r1_p99"
printf '%-34s %12.0f %12.0f %12.0f
' "via the router (up), 64 conns" "$r64_rps" "$r64_p50" "$r64_p99"
