#!/usr/bin/env bash
# Installs proofline-agent and proofline-hub as systemd services. Run as root on a station or hub
# server; running it again upgrades the binaries and units and never touches a plant's config,
# keys or data. See --help.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/install.sh [--bin-dir DIR] [--prefix DIR] [--root DIR] [--dry-run]

Installs the Proofline binaries, the system user "proofline", the systemd units and example
configurations. Safe to run again (upgrade): configuration files that exist are kept.

  --bin-dir DIR  take prebuilt proofline-agent and proofline-hub from DIR (e.g. target/release);
                 without it they are built with
                 cargo build --release --locked -p proofline-agent -p proofline-hub
  --prefix DIR   install the binaries to DIR/bin (default /usr/local); the units are rewritten
                 to start them from there
  --root DIR     install into DIR as if it were / (packaging, tests); needs no root, creates no
                 user and does not call systemctl
  --dry-run      print what would be done, change nothing
  -h, --help     this text

Build as yourself and install with sudo, so that target/ stays yours:
  cargo build --release --locked -p proofline-agent -p proofline-hub
  sudo scripts/install.sh --bin-dir target/release
EOF
}

die() {
  printf 'install.sh: %s\n' "$*" >&2
  exit 1
}
say() { printf '%s\n' "$*"; }

bin_dir=""
prefix=/usr/local
root=""
dry_run=0
while (($#)); do
  case $1 in
    --bin-dir | --prefix | --root)
      (($# >= 2)) || die "$1 needs a directory"
      case $1 in
        --bin-dir) bin_dir=$2 ;;
        --prefix) prefix=$2 ;;
        --root) root=$2 ;;
      esac
      shift 2
      ;;
    --bin-dir=*) bin_dir=${1#*=} && shift ;;
    --prefix=*) prefix=${1#*=} && shift ;;
    --root=*) root=${1#*=} && shift ;;
    --dry-run) dry_run=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    *) usage >&2 && die "unknown argument '$1'" ;;
  esac
done

[[ $prefix == /* ]] || die "--prefix must be an absolute path, not '$prefix'"
prefix=${prefix%/}
if [[ -n $root ]]; then
  root=$(realpath -m -- "$root")
  # `--root /` is the running system.
  [[ $root != / ]] || root=""
fi
if [[ -z $root && $dry_run -eq 0 && $(id -u) -ne 0 ]]; then
  die "must be run as root (or --root DIR to install into a directory, --dry-run to look first)"
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
user=proofline
conf_dir=/etc/proofline
unit_dir=/etc/systemd/system
programs=(proofline-agent proofline-hub)

# Runs a command, or only prints it with --dry-run.
run() {
  if ((dry_run)); then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# Ownership for files the service user must read; with --root the target system's user does not
# exist here, so whoever packages the tree sets it.
owner_args=()
[[ -n $root ]] || owner_args=(-o root -g "$user")

# --- binaries ------------------------------------------------------------------------------------
if [[ -z $bin_dir ]]; then
  command -v cargo >/dev/null ||
    die "cargo not found (sudo resets PATH): build first, then pass --bin-dir target/release"
  say "== building release binaries"
  (cd "$repo" && run cargo build --release --locked -p proofline-agent -p proofline-hub)
  bin_dir=$repo/target/release
fi
bin_dir=$(realpath -m -- "$bin_dir")
for p in "${programs[@]}"; do
  if [[ ! -x $bin_dir/$p ]] && ! ((dry_run)); then
    die "$bin_dir/$p is missing or not executable"
  fi
done

# --- user ----------------------------------------------------------------------------------------
if [[ -n $root ]]; then
  say "== --root: not creating user/group $user (the target system needs them: see this script)"
else
  say "== system user and group $user"
  getent group "$user" >/dev/null || run groupadd --system "$user"
  if ! getent passwd "$user" >/dev/null; then
    run useradd --system --gid "$user" --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin --comment "Proofline services" "$user"
  fi
  # Serial ports belong to dialout (the agent's unit names the group too).
  if getent group dialout >/dev/null; then
    if ! id -nG "$user" 2>/dev/null | tr ' ' '\n' | grep -qx dialout; then
      run usermod --append --groups dialout "$user"
    fi
  else
    say "note: no group dialout here; give $user the group that owns /dev/ttyUSB* and set it as"
    say "      SupplementaryGroups= in a drop-in (systemctl edit proofline-agent)"
  fi
fi

# --- files ---------------------------------------------------------------------------------------
say "== binaries to $root$prefix/bin"
run install -d -m 0755 "$root$prefix/bin"
for p in "${programs[@]}"; do
  run install -m 0755 "$bin_dir/$p" "$root$prefix/bin/$p"
done

say "== units to $root$unit_dir"
run install -d -m 0755 "$root$unit_dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for p in "${programs[@]}"; do
  # The units name /usr/local/bin; another --prefix is written into the installed copy.
  sed "s|/usr/local/bin/|$prefix/bin/|g" "$repo/systemd/$p.service" >"$tmp/$p.service"
  if ((dry_run)); then
    say "+ install -m 0644 systemd/$p.service $root$unit_dir/$p.service  (programs in $prefix/bin)"
  else
    install -m 0644 "$tmp/$p.service" "$root$unit_dir/$p.service"
  fi
done

say "== configuration in $root$conf_dir"
# root:proofline 0750: the services read their config and keys through the group, nobody else can.
run install -d -m 0750 "${owner_args[@]}" "$root$conf_dir"
for name in agent hub; do
  src=$repo/config/$name.example.toml
  dst=$root$conf_dir/$name.toml
  if [[ -e $dst ]]; then
    say "kept $dst (never overwritten; compare with config/$name.example.toml after an upgrade)"
  elif [[ ! -f $src ]]; then
    say "skipped $dst: config/$name.example.toml does not exist yet"
  else
    run install -m 0640 "${owner_args[@]}" "$src" "$dst"
  fi
done

# systemd creates them too (StateDirectory=), but check-config wants them before the first start.
say "== data directories"
for p in "${programs[@]}"; do
  if [[ -n $root ]]; then
    run install -d -m 0700 "$root/var/lib/$p"
  else
    run install -d -m 0700 -o "$user" -g "$user" "/var/lib/$p"
  fi
done

# --- systemd -------------------------------------------------------------------------------------
if [[ -n $root ]]; then
  say "== --root: not calling systemctl"
elif [[ -d /run/systemd/system ]]; then
  say "== systemctl daemon-reload"
  run systemctl daemon-reload
  for p in "${programs[@]}"; do
    if systemctl is-active --quiet "$p"; then
      say "note: $p is running the previous version: systemctl restart $p"
    fi
  done
else
  say "note: systemd is not running here; run 'systemctl daemon-reload' on the target system"
fi

# --- what the technician does next ----------------------------------------------------------------
origin="proofline/<site>/<agent_id>"
agent_toml=$root$conf_dir/agent.toml
if [[ -r $agent_toml ]]; then
  site=$(sed -n 's/^site *= *"\([^"]*\)".*/\1/p' "$agent_toml" | head -n 1)
  agent_id=$(sed -n 's/^agent_id *= *"\([^"]*\)".*/\1/p' "$agent_toml" | head -n 1)
  [[ -z $site || -z $agent_id ]] || origin="proofline/$site/$agent_id"
fi
bin=$prefix/bin
cat <<EOF

Installed$( ((dry_run)) && printf ' (dry run: nothing was changed)')$([[ -n $root ]] && printf ' into %s' "$root").

Next steps on a test station:
  1. Edit $conf_dir/agent.toml: [station] site and agent_id, the devices ([[source]]).
  2. Make the station key for its ledger origin proofline/<site>/<agent_id> (from agent.toml,
     now $origin) and let the service read it (the key stays mode 0600):
       $bin/proofline-agent keygen --origin $origin --out $conf_dir/agent.key
       chown $user:$user $conf_dir/agent.key
     keygen prints the station's verifier key: enrol it at the hub (below). Put the hub's
     cosignature key in [hub] cosigner_key and the broker in [hub.mqtt].
  3. Check the configuration as the service will see it:
       runuser -u $user -- $bin/proofline-agent check-config --config $conf_dir/agent.toml
  4. Start it now and at every boot, then watch it:
       systemctl enable --now proofline-agent
       journalctl -u proofline-agent -f

Next steps on the plant hub:
  1. Edit $conf_dir/hub.toml: [hub] site, the broker listeners, the API address.
  2. Make the hub key (it cosigns every station's checkpoints) and let the service read it:
       $bin/proofline-hub keygen --site <site> --out $conf_dir/hub.key
       chown $user:$user $conf_dir/hub.key
     keygen prints the hub's cosignature key: every station's [hub] cosigner_key names it.
  3. Enrol each station with the verifier key its keygen printed:
       runuser -u $user -- $bin/proofline-hub agent enroll --config $conf_dir/hub.toml \
         --agent-id <agent_id> --key '<verifier key>'
  4. Check and start it:
       runuser -u $user -- $bin/proofline-hub check-config --config $conf_dir/hub.toml
       systemctl enable --now proofline-hub
  5. Give the quality staff accounts (a one-time password is printed; the second factor is
     enrolled at the first sign-in). For the plant network set [api] tls_cert_file/tls_key_file:
       runuser -u $user -- $bin/proofline-hub user add --config $conf_dir/hub.toml \
         --name <name> --role quality|auditor|operator|admin [--us-person] [--station <agent_id>]

Local changes to a unit go in a drop-in (systemctl edit proofline-agent), which survives the
next install.
EOF
