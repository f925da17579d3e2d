#!/usr/bin/env bash
# MQTT request/reply latency through a node: a device publishes on `jobs/a` with an MQTT 5
# response topic and waits for the reply, one message at a time (`hello`, Wasm). QoS 0 runs
# at once; QoS 1 is stored as an async call before its acknowledgement and answered through
# the durable outbox. Beside it, the limit measured in the same run: the same round trip
# through the same broker to an echo client.
#
#   bench/mqtt.sh     (needs mosquitto and paho-mqtt: apt-get install mosquitto;
#                      pip install paho-mqtt)
#
# Mosquitto runs with `set_tcp_nodelay true`: without it (its default) every QoS 1
# round trip through it, echo included, takes about 44 ms here (Nagle's algorithm against
# delayed acknowledgements), which hides everything else.
# Runs outside CI: figures depend on the machine; the README keeps them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
n=${N:-500}
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] ||
    { echo "bench: mosquitto is missing (apt-get install mosquitto)" >&2; exit 1; }
python3 -c "import paho.mqtt" 2>/dev/null ||
    { echo "bench: paho-mqtt is missing (pip install paho-mqtt)" >&2; exit 1; }
[ -n "${FOGLINE_BIN:-}" ] || (cd "$root" && cargo build --release -q)
bin=${FOGLINE_BIN:-$root/target/release/fogline}
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
http=$(free_port)

printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n' "$port" >"$work/mosquitto.conf"
"$mosq" -c "$work/mosquitto.conf" >/dev/null 2>&1 &
pids+=($!)
cat >"$work/node.toml" <<TOML
version = 1
[node]
id = "edge-bench"
[mqtt]
broker = "127.0.0.1:$port"
[[mqtt.trigger]]
topic = "jobs/+"
function = "hello"
TOML
"$bin" node --config "$work/node.toml" --data-dir "$work/data" --http "127.0.0.1:$http" \
    >"$work/node.out" 2>"$work/node.err" &
pids+=($!)
for _ in $(seq 100); do grep -q "mqtt trigger connected" "$work/node.out" 2>/dev/null && break; sleep 0.1; done
grep -q "mqtt trigger connected" "$work/node.out" || { echo "bench: the node did not connect" >&2; cat "$work/node.err" >&2; exit 1; }
curl -sf -o /dev/null -X PUT -H "Authorization: Bearer $(cat "$work/data/admin.token")" \
    -H 'x-fogline-manifest: {}' --data-binary @"$root/examples/hello/hello.wasm" \
    "http://127.0.0.1:$http/v1/functions/hello"
python3 "$root/bench/mqtt_rtt.py" echo "$port" &
pids+=($!)
sleep 0.5
for round in 1 2; do
    echo "round $round"
    python3 "$root/bench/mqtt_rtt.py" rtt "$port" 1 "$n" echo/a
    python3 "$root/bench/mqtt_rtt.py" rtt "$port" 0 "$n" jobs/a
    python3 "$root/bench/mqtt_rtt.py" rtt "$port" 1 "$n" jobs/a
done
