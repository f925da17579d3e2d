#!/usr/bin/env bash
# Rebuilds every example from source and checks the result is byte-identical to the
# committed .wasm (the quick start uses the committed files, so they must be what the
# sources say). Skipped with a message where clang for wasm32-wasi is missing, except
# under CI=true, where that is a failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
if ! echo 'int main(void){return 0;}' | clang --target=wasm32-wasi -O2 -x c - -o "$probe/p.wasm" 2>/dev/null; then
    if [ "${CI:-}" = "true" ]; then
        echo "examples: clang cannot build wasm32-wasi (apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32)" >&2
        exit 1
    fi
    echo "examples: SKIPPED: clang cannot build wasm32-wasi here (apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32)"
    exit 0
fi
"$here/build.sh" "$probe/out" >/dev/null
status=0
for built in $(cd "$probe/out" && find . -name '*.wasm' | sort); do
    if cmp -s "$probe/out/$built" "$here/$built"; then
        echo "examples: ${built#./} matches its source"
    else
        echo "examples: ${built#./} differs from a fresh build of its source: run examples/build.sh and commit" >&2
        status=1
    fi
done
exit $status
