#!/usr/bin/env bash
# Two stations at work on simulated devices: proofline-benchsim plays a flow-test bench and a
# torque controller, each with a part scanner; two agents record them; at the end each ledger is
# verified and exported, and every simulated injector must appear as a bound, decoded result at
# both stations. Runs on loopback and ptys; everything is stopped on exit or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

PARTS=${PARTS:-10}
cargo build --release --quiet -p proofline-agent -p proofline-tests --bin proofline-agent --bin proofline-benchsim
agent=target/release/proofline-agent
sim=target/release/proofline-benchsim
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [[ -n "${PROOFLINE_DEMO_KEEP:-}" ]] || rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Faults on the way: a damaged scan and line noise every 5th injector, device exceptions every
# 7th, a bench reboot mid-result every 6th, the torque controller dropping its link every 4th.
"$sim" --parts "$PARTS" --interval-ms 20 --garbage-every 5 --exception-every 7 --reboot-every 6 \
  --drop-every 4 --write-configs "$work" > "$work/benchsim.log" 2>&1 &
sim_pid=$!
pids+=("$sim_pid")
for _ in $(seq 100); do grep -q "configurations written" "$work/benchsim.log" && break; sleep 0.1; done
cat "$work/benchsim.log"

for station in flow-bench-01 torque-01; do
  mkdir -p "$work/$station"
  "$agent" keygen --origin "proofline/demo-plant/$station" --out "$work/$station.key" > "$work/$station.vkey"
  "$agent" check-config --config "$work/$station.toml"
  "$agent" run --config "$work/$station.toml" > "$work/$station.log" 2>&1 &
  pids+=("$!")
done

echo "== running: $PARTS simulated injectors through both stations (logs in $work)"
wait "$sim_pid"
tail -n 1 "$work/benchsim.log"
for p in "${pids[@]:1}"; do kill -TERM "$p"; done
for p in "${pids[@]:1}"; do wait "$p"; done
pids=()

for station in flow-bench-01 torque-01; do
  "$agent" ledger verify --data-dir "$work/$station" --full
  "$agent" ledger export --data-dir "$work/$station" > "$work/$station.jsonl"
  python3 - "$work/$station.jsonl" "$PARTS" "$station" <<'PY'
import collections, json, sys
path, parts, station = sys.argv[1], int(sys.argv[2]), sys.argv[3]
results, alarms, refused = collections.defaultdict(list), collections.Counter(), 0
for line in open(path):
    body = json.loads(line)["body"]
    if "InspectionResult" in body:
        r = body["InspectionResult"]
        results[r["source"]].append(r)
    elif "StationEvent" in body and "Alarm" in body["StationEvent"]:
        alarms[body["StationEvent"]["Alarm"]["code"]] += 1
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
print(f"{station}: alarms {dict(alarms)}, refused scans {refused}")
PY
done
echo "== done"
