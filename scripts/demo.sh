#!/usr/bin/env bash
# Proofline end to end on one machine: the hub (with its embedded MQTT broker), proofline-benchsim
# (a flow-test bench and a torque controller, each with a part scanner), two station agents and
# proofline-fakeqms (the plant's central QMS, its traps and faults on), all on loopback with
# temporary keys and data.
#
#   scripts/demo.sh              runs until Ctrl-C, printing what the hub has witnessed and
#                                delivered to the QMS
#   PARTS=20 scripts/demo.sh     runs 20 injectors through both stations, then checks that the
#                                hub holds exactly what each station recorded, that every result
#                                reached the QMS exactly once with its measurements and status,
#                                and that the reconciled view equals one rebuilt from the records
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
cargo build --release --quiet -p proofline-tests --bin proofline-benchsim --bin proofline-fakeqms
agent=$PWD/target/release/proofline-agent
hub=$PWD/target/release/proofline-hub
sim=$PWD/target/release/proofline-benchsim
fakeqms=$PWD/target/release/proofline-fakeqms
work=$(mktemp -d)
pids=()
# Processes that outlive the stations' stop (the fake QMS): stopped last.
last=()
cleanup() {
  # Nothing may cut the cleanup short and leave processes or the work directory behind: not a
  # second Ctrl-C or a supervisor repeating its signal, not a failing command, not a write to
  # a pipe whose reader is gone (`demo.sh | tee demo.log` interrupted: tee took the Ctrl-C too).
  trap '' INT TERM PIPE
  trap - EXIT
  set +e
  local p left=()
  pids+=("${last[@]}")
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
[reconcile]
# The simulator tests each injector at both stations at the same moment; a plant's parts take
# time to move (10 s by default), and closer than that is a concurrent_presence finding.
min_transfer_secs = 0
TOML

stations=(flow-bench-01 torque-01)
for station in "${stations[@]}"; do
  mkdir -p "$work/$station"
  "$agent" keygen --origin "proofline/$site/$station" --out "$work/$station.key" > "$work/$station.vkey"
  # The station's broker credential: its secret goes to the station, only its hash stays here.
  "$hub" agent enroll --config "$work/hub.toml" --agent-id "$station" --key "$work/$station.vkey" \
    --credential-out "$work/$station.mqtt-secret" > /dev/null
done
# The central QMS, as its administrator set it up for these stations: it adds the hub's [qms]
# mapping to hub.toml.
"$fakeqms" --hub-toml "$work/hub.toml" --faults > "$work/fakeqms.log" 2>&1 &
last+=("$!")
for _ in $(seq 100); do grep -q "written to" "$work/fakeqms.log" && break; sleep 0.1; done
grep -q "written to" "$work/fakeqms.log" || { cat "$work/fakeqms.log"; exit 1; }
"$hub" check-config --config "$work/hub.toml" --online
"$hub" run --config "$work/hub.toml" > "$work/hub.log" 2>&1 &
hub_pid=$!
pids+=("$hub_pid")
for _ in $(seq 100); do curl -fsS "$api/healthz" > /dev/null 2>&1 && break; sleep 0.1; done
# Tools on the hub's host read the API with the hub's local token (rewritten at every start).
api_get() { curl -fsS -H "Authorization: Bearer $(cat "$work/hub/accounts/local.token")" "$@"; }
# A demo account to sign in to the web app with: password printed once, TOTP enrolled at the
# first sign-in (any authenticator app, or the key shown under the QR code).
"$hub" user add --config "$work/hub.toml" --name demo --role auditor --us-person > "$work/demo-account.txt"
demo_password=$(sed -n 's/^one-time password (shown once): //p' "$work/demo-account.txt")
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
   proofline-fakeqms    $(head -n 1 "$work/fakeqms.log")
   web app:  $api/signin   name demo, password $demo_password (auditor, US person; enroll
             the second factor from the QR code at the first sign-in)
   API:      $api/api/v1/agents  ...  with  -H "Authorization: Bearer \$(cat $work/hub/accounts/local.token)"
INFO

status() {
  api_get "$api/api/v1/agents" | python3 -c '
import json, sys
agents = json.load(sys.stdin)
parts = ["%s %d records%s" % (a["agent_id"], a["size"], "" if a["online"] else " (offline)") for a in agents]
print("   hub has: " + ", ".join(parts))'
  api_get "$api/api/v1/alerts" | python3 -c '
import json, sys
alerts = json.load(sys.stdin)
if alerts: print("   ALERTS: " + "; ".join("%s %s: %s" % (a["kind"], a["agent_id"], a["message"]) for a in alerts))'
  api_get "$api/api/v1/qms" | python3 -c '
import json, sys
s = json.load(sys.stdin)["status"]
print("   QMS: %d delivered (%d found already there after an unknown outcome), %d waiting, %d parked%s" % (
    s["delivered"], s["found_existing"], s["depth"], s["parked"], "; STOPPED: " + s["stopped"] if s["stopped"] else ""))'
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
# Everything the stations recorded is witnessed; the QMS outbox empties behind it.
for _ in $(seq 600); do
  depth=$(api_get "$api/api/v1/qms" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["depth"])')
  [[ "$depth" == 0 ]] && break
  sleep 0.1
done
[[ "$depth" == 0 ]] || { echo "the QMS outbox still holds $depth results"; status; exit 1; }
# The status counts every second: give it one.
sleep 1.2
status
alerts=$(api_get "$api/api/v1/alerts")
kill -TERM "$hub_pid"; wait "$hub_pid"
pids=()
[[ "$alerts" == "[]" ]] || { echo "unexpected alerts: $alerts"; exit 1; }

"$hub" ledger verify --data-dir "$work/hub" --config "$work/hub.toml"
# The reconciled view the hub kept equals one rebuilt from the witnessed records.
"$hub" reconcile --rebuild --config "$work/hub.toml"
"$hub" reconcile --config "$work/hub.toml" | tail -n 1
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

# Every result reached the QMS exactly once, with its measurements and the verdict the agent
# judged, read back through the QMS's own API.
qms_url=$(sed -n 's/^base_url = "\(.*\)"$/\1/p' "$work/hub.toml")
python3 - "$qms_url" "$work/hub.qms-password" "$site" "$work/flow-bench-01.jsonl" "$work/torque-01.jsonl" <<'PY'
import json, sys, urllib.request
url, pw_file, site, *exports = sys.argv[1:]
def call(path, body=None, token=None):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json", "X-Tenant-ID": "plant-1",
                                          **({"Authorization": "Token " + token} if token else {})})
    return json.load(urllib.request.urlopen(req))
token = call("/auth/login/", {"email": "proofline-hub@plant.example", "password": open(pw_file).read().strip()})["key"]
reports, offset = [], 0
while True:
    page = call(f"/api/QualityReports/?limit=200&offset={offset}", token=token)
    reports += page["results"]
    offset += len(page["results"])
    if not page["next"]:
        break
by_event = {}
for r in reports:
    by_event.setdefault(r["description"].split(" ")[0], []).append(r)
want = 0
for path in exports:
    station = path.rsplit("/", 1)[1].removesuffix(".jsonl")
    for line in open(path):
        rec = json.loads(line)
        r = rec["body"].get("InspectionResult")
        if not r or "Bound" not in r["binding"]:
            continue
        want += 1
        event = f"proofline:proofline/{site}/{station}:{rec['seq']}"
        got = by_event.get(event, [])
        assert len(got) == 1, f"{event}: {len(got)} reports in the QMS"
        status = {"Ok": "PASS", "Nok": "FAIL", "NotEvaluated": "PENDING"}[r["verdict"]]
        assert got[0]["status"] == status, f"{event}: QMS status {got[0]['status']}, judged {status}"
        values = sorted(c["measured"]["Value"]["value"] for c in r["characteristics"] if "Value" in c["measured"])
        sent = sorted(m["value_numeric"] for m in got[0]["measurements"])
        assert len(values) == len(sent) and all(abs(a - b) < 2e-6 for a, b in zip(values, sent)), \
            f"{event}: QMS measurements {sent}, recorded {values}"
assert len(reports) == want, f"the QMS has {len(reports)} reports for {want} results"
fails = sum(r["status"] == "FAIL" for r in reports)
print(f"QMS: all {want} results delivered exactly once with their measurements and status ({fails} FAIL, each with the disposition the QMS opened)")
PY

# The hub holds exactly what each station recorded, byte for byte: none missing, none twice.
"$hub" run --config "$work/hub.toml" > "$work/hub.2.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do curl -fsS "$api/healthz" > /dev/null 2>&1 && break; sleep 0.1; done
for station in "${stations[@]}"; do
  python3 - "$api" "$station" "$work/$station.jsonl" "$work/hub/accounts/local.token" <<'PY'
import json, sys, urllib.request
api, station, path, token_file = sys.argv[1:]
token = open(token_file).read().strip()
local = [json.loads(l) for l in open(path)]
held, frm = [], 0
while True:
    req = urllib.request.Request(f"{api}/api/v1/agents/{station}/records?from={frm}&limit=1000",
                                 headers={"Authorization": f"Bearer {token}"})
    page = json.load(urllib.request.urlopen(req))
    if not page: break
    held += page
    frm += len(page)
assert [r["seq"] for r in held] == list(range(len(held))), "hub records are contiguous from 0"
assert held == local, f"{station}: hub holds {len(held)} records, station {len(local)}; they must be identical"
print(f"{station}: the hub holds all {len(held)} records, byte-identical, each once")
PY
done
echo "== done"
