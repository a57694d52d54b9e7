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

step "real peers: pymodbus in a venv"
# The tests that talk to peers skip when a peer is missing; CI installs them and refuses skips.
venv="${PROOFLINE_VENV:-target/peers-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check pymodbus==3.16.1 pyserial==3.5
export PROOFLINE_PYTHON="$PWD/$venv/bin/python"
export PROOFLINE_REQUIRE_PEERS=1

step "cargo test --workspace"
test_log=$(mktemp)
trap 'rm -f "$test_log"' EXIT
cargo test --workspace 2>&1 | tee "$test_log"

step "fuzz targets (scanner frames, serial lines, Open Protocol), ${FUZZ_SECS:=20} s each"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
fuzz_log=$(mktemp)
for target in scan_frame serial_line open_protocol; do
  mkdir -p "fuzz/corpus/$target"
  # No sanitizer: the toolchain here is stable; the targets assert their own invariants.
  if ! cargo fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -O --sanitizer none \
    -- -max_total_time="$FUZZ_SECS" >"$fuzz_log" 2>&1; then
    tail -n 60 "$fuzz_log"
    echo "fuzz target $target failed" >&2
    exit 1
  fi
  echo "$target: $(grep -E '^Done' "$fuzz_log")"
done
rm -f "$fuzz_log"

step "station demo (the README's first command): simulated devices through two agents"
PARTS=20 scripts/demo.sh

step "audit demo: export verified offline, a one-bit change refused"
scripts/audit-demo.sh

# One closing line for the whole run (cargo prints one per test binary, the last often "0 passed").
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$test_log"
