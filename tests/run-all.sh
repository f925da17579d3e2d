#!/usr/bin/env bash
# The whole test suite, as the README gives it and as CI runs it (.ci/run installs the
# tools first). Steps that need an outside tool say so and are skipped where it is
# missing, except under CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*"; }

step "format";            cargo fmt --all -- --check
step "lint";              cargo clippy --workspace --all-targets -- -D warnings
step "examples";          examples/check.sh
step "unit, property and whole-system tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
step "no containers, Swarm services or secrets left behind by the tests"
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    left=$(docker ps -aq --filter label=dev.fogline.node | wc -l)
    if [ "$left" -ne 0 ]; then
        echo "$left container(s) left by the tests:"
        docker ps -a --filter label=dev.fogline.node
        exit 1
    fi
    for kind in service secret; do
        left=$(docker "$kind" ls -q --filter label=dev.fogline.bridge 2>/dev/null | wc -l)
        if [ "$left" -ne 0 ]; then
            echo "$left Swarm $kind(s) left by the tests:"
            docker "$kind" ls --filter label=dev.fogline.bridge
            exit 1
        fi
    done
    echo "none"
elif [ "${CI:-}" = true ]; then
    echo "CI must have a running Docker engine"; exit 1
else
    echo "SKIPPED: no Docker engine here"
fi
step "OpenAPI conformance (schemathesis)"
tests/conformance/run.sh
step "Debian package (install, start, remove, purge)"
tests/package.sh

# One closing line over every cargo test binary (any failure has already stopped the run).
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "\nall tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
