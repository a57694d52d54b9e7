#!/usr/bin/env bash
# Proofline end to end on one machine: the hub (with its embedded MQTT broker), proofline-benchsim
# (a flow-test bench and a torque controller, each with a part scanner) and two station agents,
# all on loopback with temporary keys and data.
#
#   scripts/demo.sh              runs until Ctrl-C, printing what the hub has witnessed
#   PARTS=20 scripts/demo.sh     runs 20 injectors through both stations, then checks that the
#                                hub holds exactly what each station recorded and stops
#
# Ctrl-C, or SIGINT or SIGTERM to its process group (or the end of a PARTS run), stops every
# process it started. A PARTS run cut short that way exits 130 or 143: it has checked nothing.
set -euo pipefail
# Started in the background by a non-interactive shell (CI, a supervisor, `setsid demo.sh &` in a
# script), bash inherits SIGINT ignored, and a signal ignored on entry cannot be trapped: the
# INT trap below would be silently dropped and a SIGINT to the group would stop the programs
# but not this script. Start again with SIGINT at its default so that the trap takes.
if [[ $(trap -p INT) == "trap -- '' SIGINT" ]]; then
  exec env --default-signal=INT "$BASH" "$0" "$@"
fi
cd "$(dirname "$0")/.."

PARTS=${PARTS:-0}
# The programs as shipped, then the simulator, in two builds: the tests crate turns on the test
# hooks of the common crate for its fixtures, and one build would pass them on to the programs.
cargo build --release --quiet -p proofline-agent -p proofline-hub --bin proofline-agent --bin proofline-hub
cargo build --release --quiet -p proofline-tests --bin proofline-benchsim
agent=$PWD/target/release/proofline-agent
hub=$PWD/target/release/proofline-hub
sim=$PWD/target/release/proofline-benchsim
work=$(mktemp -d)
pids=()
cleanup() {
  # Nothing may cut the cleanup short and leave processes or the work directory behind: not a
  # second Ctrl-C or a supervisor repeating its signal, not a failing command, not a write to
  # a pipe whose reader is gone (`demo.sh | tee demo.log` interrupted: tee took the Ctrl-C too).
  trap '' INT TERM PIPE
  trap - EXIT
  set +e
  local p left=()
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  # The programs stop within a few seconds of SIGTERM (an agent gives the hub 3 s to cosign its
  # last records). One still running after 7 s is killed, and named, so that a stop never takes
  # more than 10 s.
  for _ in $(seq 70); do
    left=()
    for p in "${pids[@]}"; do if kill -0 "$p" 2>/dev/null; then left+=("$p"); fi; done
    [[ ${#left[@]} -gt 0 ]] || break
    sleep 0.1
  done
  for p in "${left[@]}"; do
    echo "== killing $(ps -o args= -p "$p"): still running 7 s after SIGTERM"
    kill -KILL "$p" 2>/dev/null
  done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  if [[ -n "${PROOFLINE_DEMO_KEEP:-}" ]]; then echo "data kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
# Ctrl-C is how an endless run ends: exit 0. A PARTS run stopped early has not been checked.
stop() {
  # The output may be a pipe whose reader took the same Ctrl-C: writing the notice there must
  # not turn a requested stop into a death by SIGPIPE (status 141).
  trap '' PIPE
  { echo; echo "== stopping"; } 2>/dev/null || true
  [[ "$PARTS" -gt 0 ]] || exit 0
  exit "$1"
}
trap 'stop 130' INT
trap 'stop 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mqtt_port=$(free_port)
api_port=$(free_port)
api="http://127.0.0.1:$api_port"
site=demo-plant

# The hub: its key, configuration and data directory.
mkdir -p "$work/hub"
cosigner=$("$hub" keygen --site "$site" --out "$work/hub.key")
cat > "$work/hub.toml" <<TOML
[hub]
site = "$site"
data_dir = "$work/hub"
key_file = "$work/hub.key"
[broker]
type = "embedded"
listen = "127.0.0.1:$mqtt_port"
[api]
listen = "127.0.0.1:$api_port"
[witness]
stale_after_secs = 30
TOML

stations=(flow-bench-01 torque-01)
for station in "${stations[@]}"; do
  mkdir -p "$work/$station"
  "$agent" keygen --origin "proofline/$site/$station" --out "$work/$station.key" > "$work/$station.vkey"
  # The station's broker credential: its secret goes to the station, only its hash stays here.
  "$hub" agent enroll --config "$work/hub.toml" --agent-id "$station" --key "$work/$station.vkey" \
    --credential-out "$work/$station.mqtt-secret" > /dev/null
done
"$hub" check-config --config "$work/hub.toml"
"$hub" run --config "$work/hub.toml" > "$work/hub.log" 2>&1 &
hub_pid=$!
pids+=("$hub_pid")
for _ in $(seq 100); do curl -fsS "$api/healthz" > /dev/null 2>&1 && break; sleep 0.1; done
# Faults on the way: a damaged scan and line noise every 5th injector, device exceptions every
# 7th, a bench reboot mid-result every 6th, the torque controller dropping its link every 4th.
interval=${INTERVAL_MS:-$([[ "$PARTS" -gt 0 ]] && echo 20 || echo 1500)}
"$sim" --parts "$PARTS" --interval-ms "$interval" --garbage-every 5 --exception-every 7 --reboot-every 6 \
  --drop-every 4 --write-configs "$work" > "$work/benchsim.log" 2>&1 &
sim_pid=$!
pids+=("$sim_pid")
for _ in $(seq 100); do grep -q "configurations written" "$work/benchsim.log" && break; sleep 0.1; done
grep -q "configurations written" "$work/benchsim.log" || { cat "$work/benchsim.log"; exit 1; }

for station in "${stations[@]}"; do
  cat >> "$work/$station.toml" <<TOML

[hub]
cosigner_key = "$cosigner"
heartbeat_secs = 5
[hub.mqtt]
broker = "127.0.0.1:$mqtt_port"
username = "$station"
password_file = "$work/$station.mqtt-secret"
TOML
  "$agent" check-config --config "$work/$station.toml" > /dev/null
done
for station in "${stations[@]}"; do
  "$agent" run --config "$work/$station.toml" > "$work/$station.log" 2>&1 &
  pids+=("$!")
done

cat <<INFO
== running
   proofline-benchsim   flow bench, torque controller, 2 scanners   log $work/benchsim.log
   proofline-hub        MQTT 127.0.0.1:$mqtt_port, API $api           data $work/hub
   proofline-agent x2   ${stations[*]}                           data $work/<station>
   look at:  $api/api/v1/agents   $api/api/v1/alerts   $api/metrics
             $api/api/v1/agents/flow-bench-01/records?from=0&limit=5
INFO

status() {
  curl -fsS "$api/api/v1/agents" | python3 -c '
import json, sys
agents = json.load(sys.stdin)
parts = ["%s %d records%s" % (a["agent_id"], a["size"], "" if a["online"] else " (offline)") for a in agents]
print("   hub has: " + ", ".join(parts))'
  curl -fsS "$api/api/v1/alerts" | python3 -c '
import json, sys
alerts = json.load(sys.stdin)
if alerts: print("   ALERTS: " + "; ".join("%s %s: %s" % (a["kind"], a["agent_id"], a["message"]) for a in alerts))'
}

if [[ "$PARTS" -eq 0 ]]; then
  echo "== Ctrl-C to stop"
  while true; do sleep 5; status || true; done
fi

wait "$sim_pid"
tail -n 1 "$work/benchsim.log"
# Let the stations take the last results; a stopping agent forwards its last records (its
# `Stopped` record included) before it exits. Then the hub.
sleep 2
for p in "${pids[@]:2}"; do kill -TERM "$p"; done
for p in "${pids[@]:2}"; do wait "$p"; done
status
alerts=$(curl -fsS "$api/api/v1/alerts")
kill -TERM "$hub_pid"; wait "$hub_pid"
pids=()
[[ "$alerts" == "[]" ]] || { echo "unexpected alerts: $alerts"; exit 1; }

"$hub" ledger verify --data-dir "$work/hub" --config "$work/hub.toml"
for station in "${stations[@]}"; do
  "$agent" ledger verify --data-dir "$work/$station" --full
  "$agent" ledger export --data-dir "$work/$station" > "$work/$station.jsonl"
  drops=$(grep -c "dropped its link" "$work/benchsim.log" || true)
  python3 - "$work/$station.jsonl" "$PARTS" "$station" "$drops" <<'PY'
import collections, json, sys
path, parts, station, drops = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
results, alarms, links, refused = collections.defaultdict(list), collections.Counter(), collections.Counter(), 0
for line in open(path):
    body = json.loads(line)["body"]
    if "InspectionResult" in body:
        r = body["InspectionResult"]
        results[r["source"]].append(r)
    elif "StationEvent" in body and "Alarm" in body["StationEvent"]:
        alarms[body["StationEvent"]["Alarm"]["code"]] += 1
    elif "StationEvent" in body and "SourceDown" in body["StationEvent"]:
        links[body["StationEvent"]["SourceDown"]["source"]] += 1
    elif "PartScanned" in body and "Rejected" in body["PartScanned"]["outcome"]:
        refused += 1
want = {f"D1ABC57734-0012{n:06}" for n in range(1, parts + 1)}
for source, rs in sorted(results.items()):
    bound = [r["binding"]["Bound"]["uii"] for r in rs if "Bound" in r["binding"]]
    assert len(rs) == parts, f"{station}/{source}: {len(rs)} results for {parts} injectors"
    assert sorted(bound) == sorted(want), f"{station}/{source}: not every injector bound once"
    for r in rs:
        assert r["raw"], "raw device bytes kept"
        for c in r["characteristics"]:
            assert c["verdict"] in ("Ok", "Nok", "NotEvaluated"), c
    nok = sum(r["verdict"] == "Nok" for r in rs)
    print(f"{station}/{source}: {len(rs)} results, each injector bound to its scan once, {nok} NOK")
print(f"{station}: alarms {dict(alarms)}, link faults recorded {dict(links)}, refused scans {refused}")
if "nutrunner" in results:
    assert links["nutrunner"] >= drops, f"{station}: controller dropped its link {drops} times, {links['nutrunner']} recorded"
PY
done

# The hub holds exactly what each station recorded, byte for byte: none missing, none twice.
"$hub" run --config "$work/hub.toml" > "$work/hub.2.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do curl -fsS "$api/healthz" > /dev/null 2>&1 && break; sleep 0.1; done
for station in "${stations[@]}"; do
  python3 - "$api" "$station" "$work/$station.jsonl" <<'PY'
import json, sys, urllib.request
api, station, path = sys.argv[1:]
local = [json.loads(l) for l in open(path)]
held, frm = [], 0
while True:
    page = json.load(urllib.request.urlopen(f"{api}/api/v1/agents/{station}/records?from={frm}&limit=1000"))
    if not page: break
    held += page
    frm += len(page)
assert [r["seq"] for r in held] == list(range(len(held))), "hub records are contiguous from 0"
assert held == local, f"{station}: hub holds {len(held)} records, station {len(local)}; they must be identical"
print(f"{station}: the hub holds all {len(held)} records, byte-identical, each once")
PY
done
echo "== done"
