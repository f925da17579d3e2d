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
cargo test --workspace
step "OpenAPI conformance (schemathesis)"
tests/conformance/run.sh
