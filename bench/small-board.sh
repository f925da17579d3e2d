#!/usr/bin/env bash
# Small-board profile: `hello` on a node in a container limited as a small board
# (--memory 256m --cpus 1), beside the same image unconstrained, in the same run: the p50
# of one caller at a time (wrk, 1 connection) and the throughput at 64 connections.
#
#   bench/small-board.sh        (needs docker, wrk; builds the release binary)
#
# Runs outside CI: figures depend on the machine; the README keeps the latest ones.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dur=${DURATION:-10s}
for tool in docker wrk ldd; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
[ -n "${FOGLINE_BIN:-}" ] || (cd "$root" && cargo build --release -q)
bin=${FOGLINE_BIN:-$root/target/release/fogline}
work=$(mktemp -d)
image=fogline-small-board-bench
cleanup() { docker rm -f fogline-sb-small fogline-sb-full >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

# The binary and the libraries it links, in an image FROM scratch.
mkdir -p "$work/rootfs"
cp "$bin" "$work/rootfs/fogline"
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$work/rootfs$(dirname "$lib")"
    cp "$lib" "$work/rootfs$lib"
done
printf 'FROM scratch\nCOPY rootfs/ /\nENTRYPOINT ["/fogline"]\n' >"$work/Dockerfile"
docker build -q -t "$image" "$work" >/dev/null

payload=$(head -c 1024 /dev/zero | tr '\0' 'x')
printf 'wrk.method = "POST"\nwrk.body = "%s"\n' "$payload" >"$work/post.lua"

run() { # name, docker limits... -> prints a table row
    local name=$1; shift
    docker run -d --name "$name" "$@" -p 127.0.0.1::8080 "$image" up --single \
        --data-dir /data --http 0.0.0.0:8080 --coap 127.0.0.1:0 >/dev/null
    for _ in $(seq 1 100); do docker logs "$name" 2>&1 | grep -q " ready; data in " && break; sleep 0.1; done
    local port url token
    port=$(docker port "$name" 8080 | head -1 | sed 's/.*://')
    url=http://127.0.0.1:$port
    docker cp "$name:/data/admin.token" "$work/$name.token" >/dev/null
    token=$(cat "$work/$name.token")
    "$bin" --gateway "$url" --token "$token" deploy hello --max-concurrency 256 \
        --wasm "$root/examples/hello/hello.wasm" >/dev/null 2>&1
    wrk -t1 -c1 -d2s -s "$work/post.lua" "$url/function/hello" >/dev/null
    local one many p50
    one=$(wrk -t1 -c1 -d"$dur" --latency -s "$work/post.lua" "$url/function/hello")
    p50=$(echo "$one" | awk '$1 == "50%" {print $2}')
    local out refused
    out=$(wrk -t2 -c64 -d"$dur" -s "$work/post.lua" "$url/function/hello")
    many=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    refused=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    local sized
    sized=$(docker logs "$name" 2>/dev/null | grep -o 'sized for .*' | head -1 || true)
    printf '%-18s p50 %9s   64 conns %10s/s, %s of them 429   (%s)\n' "$name" "$p50" "$many" \
        "${refused:-none}" "${sized:-no limit: sized as configured}"
    docker rm -f "$name" >/dev/null
    last_p50_us=$(echo "$p50" | awk '/us$/ {sub("us",""); print; exit} /ms$/ {sub("ms",""); print $1*1000; exit} /s$/ {sub("s",""); print $1*1000000}')
}

echo "hello, 1 KiB POST over loopback into a container, wrk $dur per run, 2 cores"
run fogline-sb-full
full=$last_p50_us
run fogline-sb-small --memory 256m --memory-swap 256m --cpus 1
small=$last_p50_us
awk -v s="$small" -v f="$full" 'BEGIN { printf "small-board p50 / unconstrained p50: %.2fx (target <= 1.5x)\n", s / f }'
