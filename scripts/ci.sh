#!/usr/bin/env bash
# Everything CI checks, in the order a developer would run it. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

step "cargo test --workspace"
test_log=$(mktemp)
trap 'rm -f "$test_log"' EXIT
cargo test --workspace 2>&1 | tee "$test_log"

step "ledger demo (the README's first command)"
scripts/demo.sh

# One closing line for the whole run (cargo prints one per test binary, the last often "0 passed").
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$test_log"
