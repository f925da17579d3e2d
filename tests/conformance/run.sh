#!/usr/bin/env bash
# OpenAPI conformance: schemathesis against a real `fogline up`, restricted to the routes
# Fogline serves. Needs `pip install schemathesis`; skipped with a message where it is
# missing, except under CI=true, where a missing tool is a failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${FOGLINE_BIN:-$root/target/debug/fogline}

if ! command -v schemathesis >/dev/null 2>&1; then
    if [ "${CI:-}" = "true" ]; then
        echo "conformance: schemathesis is not installed (pip install schemathesis)" >&2
        exit 1
    fi
    echo "conformance: SKIPPED: schemathesis is not installed (pip install schemathesis)"
    exit 0
fi

work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
(cd "$work" && exec "$bin" up --data-dir "$work/.fogline" --http 127.0.0.1:0 >"$work/out" 2>"$work/err") &
pid=$!
for _ in $(seq 1 100); do
    grep -q "gateway listening on" "$work/out" 2>/dev/null && break
    sleep 0.1
done
url=$(sed -n 's/^gateway listening on //p' "$work/out" | head -1)
[ -n "$url" ] || { echo "conformance: fogline did not start" >&2; cat "$work/err" >&2; exit 1; }
token=$(cat "$work/.fogline/admin.token")
"$bin" --gateway "$url" --token "$token" deploy hello --wasm "$root/examples/hello/hello.wasm" >/dev/null

paths='^/(function/\{functionName\}|function/\{functionName\}\.\{namespace\}|async-function/\{functionName\}|async-function/\{functionName\}\.\{namespace\}|system/functions|system/function/\{functionName\}|system/info|system/logs|system/secrets|system/namespaces|healthz|metrics)$'
cd "$here"
schemathesis --config-file "$here/schemathesis.toml" run "$here/openfaas-gateway.openapi.yml" \
    --url "$url" \
    -H "Authorization: Bearer $token" \
    --include-path-regex "$paths" \
    --seed 1 \
    --no-color
