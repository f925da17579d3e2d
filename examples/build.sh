#!/usr/bin/env bash
# Builds every example function to wasm32-wasi with Debian's clang.
# Needs: apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32
# Usage: examples/build.sh [OUT_DIR]   (default: next to each source)
#   CI builds into a temporary folder and compares with the committed .wasm.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-}
build() { # src -> wasm
    local src=$1 dst=$2
    mkdir -p "$(dirname "$dst")"
    clang --target=wasm32-wasi -O2 -Wl,--strip-all "$src" -o "$dst"
}
for src in hello/hello.c primes/primes.c misbehave/loop.c misbehave/membomb.c misbehave/openfile.c misbehave/fail.c misbehave/flood.c misbehave/sleep.c misbehave/remember.c secrets/readsecret.c wait/wait.c; do
    dst="${src%.c}.wasm"
    if [ -n "$out" ]; then dst="$out/$dst"; else dst="$here/$dst"; fi
    build "$here/$src" "$dst"
    echo "built $dst ($(stat -c %s "$dst") bytes)"
done
