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
step "OpenAPI conformance (schemathesis)"
tests/conformance/run.sh

# One closing line over every cargo test binary (any failure has already stopped the run).
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "\nall tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
