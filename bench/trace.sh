#!/usr/bin/env bash
# The cost of tracing: `POST /function/hello` through the router of a `fogline up` local
# mesh at 64 connections, with traces kept (the default) and with `--no-trace`, side by
# side in the same run, alternating which goes first so drift and position hit both alike; plus
# the dashboard's live stream under load (first paint, rows and JS heap as placements
# stream in at RATE/s), when chromium and selenium are here.
#
#   bench/trace.sh           (needs wrk: apt-get install wrk; the stream part needs
#                             chromium chromium-driver and pip install selenium)
#
# Runs outside CI: figures depend on the machine; the README keeps the latest ones.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dur=${DURATION:-10s}
rounds=${ROUNDS:-8}
command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }
[ -n "${FOGLINE_BIN:-}" ] || (cd "$root" && cargo build --release -q)
bin=${FOGLINE_BIN:-$root/target/release/fogline}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

start() { # name extra-args… -> sets url_NAME, token_NAME
    local name=$1; shift
    mkdir -p "$work/$name"
    (cd "$root" && exec "$bin" up --data-dir "$work/$name/.fogline" --http 127.0.0.1:0 --coap 127.0.0.1:0 "$@" >"$work/$name/out" 2>"$work/$name/err") &
    pids+=($!)
    for _ in $(seq 1 200); do grep -q "local mesh ready" "$work/$name/out" 2>/dev/null && break; sleep 0.1; done
    local url token
    url=$(sed -n 's/^gateway listening on //p' "$work/$name/out" | head -1)
    token=$(cat "$work/$name/.fogline/admin.token")
    "$bin" --gateway "$url" --token "$token" deploy hello --max-concurrency 256 --wasm "$root/examples/hello/hello.wasm" >/dev/null 2>&1
    printf -v "url_$name" '%s' "$url"
    printf -v "token_$name" '%s' "$token"
}
start on
start off --no-trace

payload=$(head -c 1024 /dev/zero | tr '\0' 'x')
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = "$payload"
LUA
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system clock ticks
tick=$(getconf CLK_TCK)
# One run: "requests/s CPU-µs-per-call" (the CPU time the whole local mesh spent per call,
# a steadier measure than throughput on a shared 2-core machine).
rps() {
    local c0 c1 out n
    c0=$(cpu "$2")
    out=$(wrk -t2 -c64 -d"$dur" -s "$work/post.lua" "$1/function/hello")
    c1=$(cpu "$2")
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    echo "$(echo "$out" | awk '/Requests\/sec/ {print $2}') $(echo "($c1 - $c0) * 1000000 / $tick / $n" | bc -l)"
}
# Warm both (models, connections, instances).
wrk -t2 -c64 -d3s -s "$work/post.lua" "$url_on/function/hello" >/dev/null
wrk -t2 -c64 -d3s -s "$work/post.lua" "$url_off/function/hello" >/dev/null

echo "HTTP through the router of fogline up, 64 connections, 1 KiB body, $dur per run;"
echo "rounds alternate which goes first (on-off, off-on, ...), as position alone moved an A/A test by up to 10 %"
printf '%-6s %12s %12s %8s   %12s %12s %8s\n' round "on /s" "off /s" "on/off" "on CPU µs" "off CPU µs" "on/off"
ratios=(); cratios=(); son=0; soff=0; con=0; coff=0
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then a=$(rps "$url_on" "${pids[0]}"); b=$(rps "$url_off" "${pids[1]}"); else b=$(rps "$url_off" "${pids[1]}"); a=$(rps "$url_on" "${pids[0]}"); fi
    read -r on c_on <<<"$a"; read -r off c_off <<<"$b"
    son=$(echo "$son + $on" | bc -l); soff=$(echo "$soff + $off" | bc -l)
    con=$(echo "$con + $c_on" | bc -l); coff=$(echo "$coff + $c_off" | bc -l)
    ratio=$(echo "$on / $off" | bc -l); ratios+=("$ratio")
    cratio=$(echo "$c_on / $c_off" | bc -l); cratios+=("$cratio")
    printf '%-6s %12.0f %12.0f %8.3f   %12.1f %12.1f %8.3f\n' "$r" "$on" "$off" "$ratio" "$c_on" "$c_off" "$cratio"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
printf '%-6s %12.0f %12.0f %8.3f   %12.1f %12.1f %8.3f\n' mean \
    "$(echo "$son / $rounds" | bc -l)" "$(echo "$soff / $rounds" | bc -l)" "$(echo "$son / $soff" | bc -l)" \
    "$(echo "$con / $rounds" | bc -l)" "$(echo "$coff / $rounds" | bc -l)" "$(echo "$con / $coff" | bc -l)"
printf '%-6s %12s %12s %8.3f   %12s %12s %8.3f\n' median "" "" "$(median "${ratios[@]}")" "" "" "$(median "${cratios[@]}")"
echo "target: tracing costs at most 5 % of throughput (on/off >= 0.95); its CPU per call shows the same cost without the scheduling noise (on/off <= 1.05)"
held=$(curl -fsS -H "Authorization: Bearer $token_on" "$url_on/v1/traces?limit=0" | python3 -c 'import json,sys; print(json.load(sys.stdin)["held"])')
echo "traces held on the traced router after the runs: $held"
rss_on=$(awk '/VmRSS/ {print $2}' "/proc/${pids[0]}/status"); rss_off=$(awk '/VmRSS/ {print $2}' "/proc/${pids[1]}/status")
echo "resident memory of the whole local mesh: traces on $((rss_on / 1024)) MB, off $((rss_off / 1024)) MB"

if [ "${STREAM:-1}" = 1 ] && [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && python3 -c "import selenium" 2>/dev/null; then
    echo
    echo "The dashboard's live stream: placements at ${RATE:-1000}/s for ${SECONDS_STREAM:-20} s while /ui/placements watches"
    python3 "$root/tests/ui/browser.py" "$url_on" "$token_on" "$work" 4 --stream "${SECONDS_STREAM:-20}" "${RATE:-1000}"
else
    echo "(the dashboard's stream part needs chromium, chromium-driver and selenium: skipped)"
fi
