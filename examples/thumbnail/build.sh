#!/usr/bin/env bash
# Builds the static binary and the image `fogline-thumbnail` (offline: FROM scratch).
set -euo pipefail
cd "$(dirname "$0")"
cc="${CC:-$(command -v clang || command -v gcc)}"
"$cc" -static -O2 -Wall -o thumbnail thumbnail.c
docker build -q -t "${IMAGE:-fogline-thumbnail}" . >/dev/null
echo "built image ${IMAGE:-fogline-thumbnail}"
