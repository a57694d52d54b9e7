#!/usr/bin/env bash
# Everything CI checks, in the order a developer would run it. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# CI builds from a clean checkout: incremental state would only cost disk, and CI disks are small.
export CARGO_INCREMENTAL=0
disk() { echo "disk: $(df -h --output=avail . | tail -n 1 | tr -d ' ') free; build dirs: $(du -sch target fuzz/target 2>/dev/null | tail -n 1 | cut -f 1)"; }
disk

# Debian packages a step needs, installed only when missing (CI runs as root; elsewhere sudo).
apt_install() {
  local sudo=() log
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  log=$(mktemp)
  if ! { "${sudo[@]}" apt-get update -qq &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "$@"; } >"$log" 2>&1; then
    cat "$log"
    rm -f "$log"
    echo "could not install $*" >&2
    return 1
  fi
  rm -f "$log"
  echo "installed $*"
}

step "cargo fmt --check"
cargo fmt --all --check

step "shellcheck scripts/*.sh"
command -v shellcheck >/dev/null || apt_install shellcheck
shellcheck scripts/*.sh .ci/run

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo clippy of the shipped build (no test hooks) -- -D warnings"
cargo clippy -p proofline-agent -p proofline-hub -- -D warnings

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

step "real peers: pymodbus and fusepy in a venv"
# The tests that talk to peers skip when a peer is missing; CI installs them and refuses skips.
venv="${PROOFLINE_VENV:-target/peers-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check pymodbus==3.16.1 pyserial==3.5 fusepy==3.0.1
export PROOFLINE_PYTHON="$PWD/$venv/bin/python"

step "real peers: the power-cut file system (fusepy over libfuse2, /dev/fuse)"
# tests/peers/powercut_fs.py. As root libfuse2 mounts by itself: no fusermount (whose package
# would conflict with fuse3) is needed. Debian trixie renamed the library's package.
if ! "$PROOFLINE_PYTHON" -c "import fuse" 2>/dev/null; then
  apt_install libfuse2 2>/dev/null || apt_install libfuse2t64
fi
"$PROOFLINE_PYTHON" -c "import fuse"
[ -e /dev/fuse ] || { echo "/dev/fuse is missing: the power-loss tests cannot run" >&2; exit 1; }

step "real peers: Mosquitto (an MQTT broker nobody here wrote)"
# The tests start their own mosquitto on a free loopback port; the packaged service is not used.
command -v mosquitto >/dev/null || PATH="$PATH:/usr/sbin" command -v mosquitto >/dev/null || apt_install mosquitto
export PATH="$PATH:/usr/sbin"

step "real peers: headless Chromium and chromedriver (the web app in a browser)"
# hub/tests/browser.rs drives them over WebDriver; its screenshots go to
# target/browser-screenshots/ (kept as CI artifacts).
command -v chromium >/dev/null || apt_install chromium
command -v chromedriver >/dev/null || apt_install chromium-driver
export PROOFLINE_REQUIRE_PEERS=1

step "cargo test --workspace"
test_log=$(mktemp)
trap 'rm -f "$test_log"' EXIT
cargo test --workspace 2>&1 | tee "$test_log"

# Test and drill hooks (ledger bench's synthetic results, failing commits on demand, the hub's
# crash drill) exist in test builds only; these strings are in their code. The test build just
# made must hold them, or the release check below would prove nothing.
hook_markers=("crash drill" "PROOFLINE_DRILL_ABORT_AFTER_PERSIST" "injected commit failure" "BENCH-LEDGER")
no_hooks() {
  local bin marker found=0
  for bin in "$@"; do
    for marker in "${hook_markers[@]}"; do
      if grep -a -q -F "$marker" "$bin"; then
        echo "$bin holds a test hook (\"$marker\")" >&2
        found=1
      fi
    done
  done
  return "$found"
}
if no_hooks target/debug/proofline-hub target/debug/proofline-agent 2>/dev/null; then
  echo "the test build holds none of the test-hook markers: the release check would prove nothing" >&2
  exit 1
fi

step "systemd units: systemd-analyze verify against this build"
command -v systemd-analyze >/dev/null || apt_install systemd
cargo build --locked --quiet -p proofline-agent -p proofline-hub
tmp=$(mktemp -d)
trap 'rm -f "$test_log"; rm -rf "$tmp"' EXIT
mkdir "$tmp/units"
for unit in systemd/*.service; do
  # verify insists that ExecStart= programs exist: point the copies at this build's binaries.
  sed "s|/usr/local/bin/|$PWD/target/debug/|g" "$unit" >"$tmp/units/${unit##*/}"
done
# A misspelled key or a bad value is only a warning (exit status 0): any output fails the step.
# The canary, a copy with a misspelled key, proves that such a warning is still printed.
sed 's/^ProtectSystem=/ProtectSystm=/' "$tmp/units/proofline-agent.service" >"$tmp/canary.service"
canary=$(systemd-analyze verify --man=no "$tmp/canary.service" 2>&1 || true)
if [[ $canary != *ProtectSystm* ]]; then
  echo "systemd-analyze verify no longer reports a misspelled key: $canary" >&2
  exit 1
fi
if ! verify_out=$(systemd-analyze verify --man=no "$tmp/units"/*.service 2>&1) || [ -n "$verify_out" ]; then
  printf '%s\n' "$verify_out"
  echo "systemd units do not verify" >&2
  exit 1
fi
echo "ok: $(cd systemd && echo *.service)"

step "install.sh into a temporary root: files, modes, a plant's config kept on reinstall"
scripts/install.sh --root "$tmp/dry" --bin-dir target/debug --dry-run >"$tmp/install.log"
[ ! -e "$tmp/dry" ] || { echo "install.sh --dry-run changed $tmp/dry" >&2; exit 1; }
r=$tmp/root
scripts/install.sh --root "$r" --bin-dir target/debug >"$tmp/install.log"
want=(
  "755 usr/local/bin/proofline-agent" "755 usr/local/bin/proofline-hub"
  "644 etc/systemd/system/proofline-agent.service" "644 etc/systemd/system/proofline-hub.service"
  "750 etc/proofline" "640 etc/proofline/agent.toml"
  "700 var/lib/proofline-agent" "700 var/lib/proofline-hub"
)
[ ! -f config/hub.example.toml ] || want+=("640 etc/proofline/hub.toml")
for w in "${want[@]}"; do
  mode=${w%% *} path=${w#* }
  if [ "$(stat -c %a "$r/$path" 2>/dev/null)" != "$mode" ]; then
    cat "$tmp/install.log"
    echo "install.sh: $path missing or not mode $mode" >&2
    exit 1
  fi
done
cmp -s systemd/proofline-agent.service "$r/etc/systemd/system/proofline-agent.service" ||
  { echo "install.sh changed the agent's unit" >&2; exit 1; }
echo "# edited at the plant" >>"$r/etc/proofline/agent.toml"
scripts/install.sh --root "$r" --bin-dir target/debug >"$tmp/install.log"
[ "$(tail -n 1 "$r/etc/proofline/agent.toml")" = "# edited at the plant" ] ||
  { echo "install.sh overwrote an existing agent.toml" >&2; exit 1; }
echo "ok: ${#want[@]} files and directories with their modes; existing config kept"

step "fuzz targets (scanner frames, serial lines, Open Protocol, MQTT payloads, signed notes), ${FUZZ_SECS:=20} s each"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
fuzz_log=$(mktemp)
for target in scan_frame serial_line open_protocol mqtt_payload signed_note; do
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

disk

step "station demo (the README's first command): simulated devices through two agents"
PARTS=20 scripts/demo.sh

step "release binaries: no synthetic-data, fault-injection or crash-drill path"
# demo.sh built them as shipped (install.sh builds the same way).
no_hooks target/release/proofline-agent target/release/proofline-hub
if out=$(target/release/proofline-agent ledger bench --help 2>&1); then
  echo "the release proofline-agent still has ledger bench: $out" >&2
  exit 1
fi
echo "ok: ${#hook_markers[@]} markers absent from both release binaries; ledger bench refused: ${out%%$'\n'*}"

step "station demo: SIGINT to its process group, without a terminal, leaves no process behind"
# As a supervisor or a CI runner stops a job. In this non-interactive shell the background job
# is no group leader, so setsid runs demo.sh in place: its pid is the new group's id. It also
# starts with SIGINT ignored, as any background job of a script does.
setsid scripts/demo.sh >"$tmp/demo-int.log" 2>&1 &
demo=$!
for _ in $(seq 80); do grep -q "hub has:" "$tmp/demo-int.log" && break; sleep 0.5; done
grep -q "hub has:" "$tmp/demo-int.log" || { cat "$tmp/demo-int.log"; kill -KILL -- "-$demo"; exit 1; }
kill -INT -- "-$demo"
for _ in $(seq 100); do pgrep -g "$demo" >/dev/null || break; sleep 0.1; done
if pgrep -g "$demo" >/dev/null; then
  ps -o pid,pgid,stat,args -p "$(pgrep -d, -g "$demo")" || true
  kill -KILL -- "-$demo"
  echo "demo.sh: processes of its group still running 10 s after SIGINT" >&2
  exit 1
fi
# Exit 0, and nothing that needed killing: each program stopped on its signal.
if ! wait "$demo" || grep "^== killing" "$tmp/demo-int.log"; then
  tail -n 20 "$tmp/demo-int.log"
  echo "demo.sh did not stop cleanly on SIGINT" >&2
  exit 1
fi
echo "ok: group $demo gone, demo.sh exited 0"

step "audit demo: export verified offline, a one-bit change refused"
scripts/audit-demo.sh

disk
# One closing line for the whole run (cargo prints one per test binary, the last often "0 passed").
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$test_log"
