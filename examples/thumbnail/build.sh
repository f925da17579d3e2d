#!/usr/bin/env bash
# Builds the static binary and the image `fogline-thumbnail` (offline: FROM scratch).
set -euo pipefail
cd "$(dirname "$0")"
cc="${CC:-$(command -v clang || command -v gcc)}"
"$cc" -static -O2 -Wall -o thumbnail thumbnail.c
image="${IMAGE:-fogline-thumbnail}"
if ! log=$(docker build -q -t "$image" . 2>&1); then
    echo "$log" >&2
    exit 1
fi
echo "built image $image"
