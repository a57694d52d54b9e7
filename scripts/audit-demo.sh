#!/usr/bin/env bash
# Proofline's main job as far as it is built: a station ledger from key to audited export.
#
# Creates a station key, appends synthetic flow-bench results through the durable writer,
# verifies the ledger, signs a checkpoint, exports it, checks the export offline as an auditor
# would, then alters one record in a copy and shows the check naming it. Everything lives in a
# temporary directory that is removed at the end (keep it with PROOFLINE_DEMO_KEEP=1).
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${PROOFLINE_DEMO_RECORDS:-5000}
# `ledger bench` writes synthetic results: it exists only in builds with the test hooks, which
# this demo builds into a directory of its own (the shipped binaries in target/release stay as
# install.sh builds them).
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}/hooks cargo build --release --quiet -p proofline-agent --features test-hooks
agent=${CARGO_TARGET_DIR:-target}/hooks/release/proofline-agent

work=$(mktemp -d)
if [[ -z "${PROOFLINE_DEMO_KEEP:-}" ]]; then
  trap 'rm -rf "$work"' EXIT
fi
mkdir "$work/data"
origin=proofline/demo-plant/flow-bench-01

echo "== station key ($work/agent.key)"
vkey=$("$agent" keygen --origin "$origin" --out "$work/agent.key")
echo "verifier key: $vkey"

echo "== appending $RECORDS results in durable batches of 50"
"$agent" ledger bench --data-dir "$work/data" --key "$work/agent.key" \
  --records "$RECORDS" --batch 50 | tail -n 1

echo "== verify"
"$agent" ledger verify --data-dir "$work/data" --full

echo "== signed checkpoint"
"$agent" ledger checkpoint --data-dir "$work/data" --key "$work/agent.key" | tee "$work/checkpoint.note"

echo "== export and offline verification"
"$agent" ledger export --data-dir "$work/data" > "$work/export.jsonl"
echo "$(wc -l < "$work/export.jsonl") lines in $work/export.jsonl"
"$agent" ledger verify-export --file "$work/export.jsonl" --checkpoint "$work/checkpoint.note" --pubkey "$vkey"

echo "== the same export with one bit of record 42 flipped"
python3 - "$work/export.jsonl" "$work/tampered.jsonl" <<'PY'
import base64, json, sys
src, dst = sys.argv[1], sys.argv[2]
with open(src) as f, open(dst, "w") as out:
    for line in f:
        rec = json.loads(line)
        if rec["seq"] == 42:
            raw = bytearray(base64.b64decode(rec["record"]))
            raw[-1] ^= 0x01  # one bit of the last field
            rec["record"] = base64.b64encode(bytes(raw)).decode()
        out.write(json.dumps(rec) + "\n")
PY
if "$agent" ledger verify-export --file "$work/tampered.jsonl" --checkpoint "$work/checkpoint.note" --pubkey "$vkey"; then
  echo "demo: the altered export was accepted" >&2
  exit 1
fi
echo "== done: the untouched export verifies, the altered one is refused with its seq"
