//! The reconciler: timelines per UII that depend only on the witnessed records (not on the
//! order stations were witnessed in, nor on duplicates), with every entry's proof, nothing
//! dropped; and `reconcile --rebuild` over a hub store equals the projection fed live.

use proofline_common::hash::{leaf_hash, Hash};
use proofline_common::record::{
    encode_v1, Alarm, Binding, Body, Identity, PartScanned, ScanOutcome, ScanRole, Severity,
    StationEvent, UnboundReason,
};
use proofline_common::store::{Access, Store, StoreOptions};
use proofline_common::synth::inspection_result;
use proofline_common::Origin;
use proofline_hub::reconcile::rules::Rules;
use proofline_hub::reconcile::{EntryKind, Pending, Projection, ReconcileError, Reconciler};
use proptest::prelude::*;
use std::sync::Arc;

/// What a station recorded, one step of a generated history.
#[derive(Debug, Clone)]
enum Step {
    Scan(u8),
    Result,
    Unbound,
    Alarm,
    Rejected,
    TrimCode(u8),
    Timeout,
    Restart,
}

fn uii(n: u8) -> String {
    format!("D1ABC57734-{:010}", n)
}

fn body(step: &Step, current: &mut Option<String>, i: u64) -> Body {
    let scan = |role, outcome| {
        Body::PartScanned(PartScanned {
            source: "scanner".into(),
            role,
            symbology: Some("]d2".into()),
            raw: proofline_common::bytes::Bytes(b"raw".to_vec()),
            outcome,
        })
    };
    match step {
        Step::Scan(n) => {
            *current = Some(uii(*n));
            scan(
                ScanRole::Part,
                ScanOutcome::Identified(Identity {
                    uii: uii(*n),
                    format: "06".into(),
                    construct: "construct-2".into(),
                    attributes: vec![],
                }),
            )
        }
        Step::Result | Step::Unbound => {
            let mut b = inspection_result(i, 8);
            if let Body::InspectionResult(r) = &mut b {
                r.binding = match (step, current.as_ref()) {
                    (Step::Result, Some(u)) => Binding::Bound {
                        uii: u.clone(),
                        scan_seq: 0,
                    },
                    _ => Binding::Unbound {
                        reason: UnboundReason::NoCurrentPart,
                    },
                };
            }
            b
        }
        Step::Alarm => Body::StationEvent(StationEvent::Alarm(Alarm {
            source: "bench".into(),
            code: "modbus.exception".into(),
            severity: Severity::Warning,
            message: "exception 2".into(),
        })),
        Step::Rejected => scan(
            ScanRole::Part,
            ScanOutcome::Rejected {
                code: "bad_envelope".into(),
                detail: "no RS".into(),
            },
        ),
        Step::TrimCode(n) => scan(ScanRole::TrimCode, ScanOutcome::Value(format!("T{n}"))),
        Step::Timeout => match current.take() {
            Some(u) => Body::StationEvent(StationEvent::ScanTimeout {
                uii: u,
                scan_seq: 0,
            }),
            None => Body::StationEvent(StationEvent::SourceUp {
                source: "bench".into(),
                detail: "connected".into(),
            }),
        },
        Step::Restart => {
            *current = None;
            Body::StationEvent(StationEvent::Started {
                version: "0.1.0".into(),
                config_sha256: Hash::default(),
            })
        }
    }
}

/// A station's ledger: its records' bytes, chained as the store chains them.
fn ledger(agent_id: &str, steps: &[Step], t0: i64) -> Vec<Vec<u8>> {
    let origin = format!("proofline/plant-1/{agent_id}");
    let mut prev = proofline_common::hash::genesis_prev(&origin);
    let mut current = None;
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let b = body(s, &mut current, i as u64);
            // Station clocks: stations interleave in time; equal times happen.
            let at = t0 + (i as i64 / 2) * 1_000;
            let bytes = encode_v1(&origin, i as u64, 1, at, &prev, &b);
            prev = leaf_hash(&bytes);
            bytes
        })
        .collect()
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..4).prop_map(Step::Scan),
        5 => Just(Step::Result),
        1 => Just(Step::Unbound),
        1 => Just(Step::Alarm),
        1 => Just(Step::Rejected),
        1 => (0u8..3).prop_map(Step::TrimCode),
        1 => Just(Step::Timeout),
        1 => Just(Step::Restart),
    ]
}

const STATIONS: [&str; 3] = ["flow-bench-01", "torque-01", "final-01"];

/// Rules under which the generated histories raise findings: a route over the three
/// stations, a transfer time, a bench cycle, short zero-variance runs.
fn rules() -> Arc<Rules> {
    let cfg = proofline_hub::config::HubConfig::parse(
        r#"
[hub]
site = "plant-1"
data_dir = "/nonexistent"
key_file = "/nonexistent"
[reconcile]
min_transfer_secs = 0.0015
zero_variance_run = 3
hygiene_window = 4
hygiene_max_refused_percent = 25
[[part_type]]
name = "injector"
[[part_type.operation]]
name = "flow"
stations = ["flow-bench-01"]
[[part_type.operation]]
name = "torque"
stations = ["torque-01"]
[[part_type.operation]]
name = "final"
stations = ["final-01"]
[[part_type.rework]]
from = "final"
to = "flow"
[[station]]
agent_id = "torque-01"
min_cycle_secs = 0.0015
"#,
    )
    .unwrap();
    let mut p = Default::default();
    let r = cfg.rules(&mut p);
    assert!(p.0.is_empty(), "{:?}", p.0);
    Arc::new(r)
}

/// Applies one record and commits it, as a witness group of one would.
fn feed(r: &mut Reconciler, id: &str, seq: u64, b: &[u8]) -> Result<bool, ReconcileError> {
    let mut p = Pending::default();
    let applied = r.apply(&mut p, id, seq, b)?;
    r.commit(p)?;
    Ok(applied)
}

fn in_order(ledgers: &[Vec<Vec<u8>>]) -> Reconciler {
    let mut r = Reconciler::scratch(rules()).unwrap();
    for (id, l) in STATIONS.iter().zip(ledgers) {
        // One group per station: what a rebuild does.
        let mut p = Pending::default();
        for (seq, b) in l.iter().enumerate() {
            assert!(r.apply(&mut p, id, seq as u64, b).unwrap());
        }
        r.commit(p).unwrap();
    }
    r
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any interleaving of the stations' records, with deliveries repeated, gives the same
    /// timelines, station views, route states, findings and digest as applying one station
    /// after the other.
    #[test]
    fn the_projection_does_not_depend_on_witness_order_or_duplicates(
        histories in proptest::collection::vec(proptest::collection::vec(step(), 0..40), 3),
        order in proptest::collection::vec((0usize..3, any::<bool>()), 0..200),
    ) {
        let ledgers: Vec<_> = STATIONS
            .iter()
            .zip(&histories)
            .map(|(id, h)| ledger(id, h, 1_700_000_000_000_000))
            .collect();
        let want = in_order(&ledgers);
        let mut got = Reconciler::scratch(rules()).unwrap();
        let mut next = [0usize; 3];
        // The generated order first, then whatever is left, station by station.
        let tail = (0..3).flat_map(|s| std::iter::repeat_n((s, false), ledgers[s].len()));
        for (s, dup) in order.into_iter().chain(tail) {
            if next[s] < ledgers[s].len() {
                prop_assert!(feed(&mut got, STATIONS[s], next[s] as u64, &ledgers[s][next[s]]).unwrap());
                next[s] += 1;
            }
            if dup && next[s] > 0 {
                let i = next[s] - 1;
                prop_assert!(!feed(&mut got, STATIONS[s], i as u64, &ledgers[s][i]).unwrap());
            }
        }
        let (gv, wv) = (got.view().unwrap(), want.view().unwrap());
        prop_assert_eq!(&gv, &wv);
        prop_assert_eq!(got.digest().unwrap(), want.digest().unwrap());
        let got = gv;
        // Nothing dropped: every result is on a timeline or on the unbound list.
        let results = ledgers.iter().flatten().filter(|b| {
            matches!(proofline_common::record::Record::decode(b).unwrap().body(), Body::InspectionResult(_))
        }).count();
        let placed = got.injectors.values().flatten().chain(&got.unbound)
            .filter(|e| matches!(e.kind, EntryKind::Result { .. })).count();
        prop_assert_eq!(placed, results);
    }
}

#[test]
fn a_gap_is_refused_and_an_undecodable_record_named() {
    let l = ledger("flow-bench-01", &[Step::Scan(1), Step::Result], 0);
    let mut r = Reconciler::scratch(rules()).unwrap();
    match feed(&mut r, "flow-bench-01", 1, &l[1]) {
        Err(ReconcileError::Gap {
            seq: 1,
            expected: 0,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    match feed(&mut r, "flow-bench-01", 0, b"\xff\xff garbage") {
        Err(ReconcileError::Undecodable { seq: 0, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(r.records(), 0, "nothing applied from a refused record");
}

#[test]
fn results_alarms_and_scans_land_where_they_belong_with_their_proofs() {
    let steps = [
        Step::Unbound,
        Step::Scan(1),
        Step::Alarm,
        Step::TrimCode(7),
        Step::Result,
        Step::Rejected,
        Step::Timeout,
        Step::Alarm,
    ];
    let mut r = Reconciler::scratch(rules()).unwrap();
    for (seq, b) in ledger("flow-bench-01", &steps, 0).iter().enumerate() {
        feed(&mut r, "flow-bench-01", seq as u64, b).unwrap();
    }
    let p: Projection = r.view().unwrap();
    assert_eq!(p.unbound.len(), 1, "a result without a part is kept");
    assert_eq!(p.unbound[0].proof.seq, 0);
    let t = &p.injectors[&uii(1)];
    let kinds: Vec<(&str, u64)> = t
        .iter()
        .map(|e| {
            let k = match &e.kind {
                EntryKind::Scan {
                    role: ScanRole::Part,
                    ..
                } => "scan",
                EntryKind::Scan { value: Some(_), .. } => "trim",
                EntryKind::Alarm { .. } => "alarm",
                EntryKind::Result { .. } => "result",
                EntryKind::ScanTimeout => "timeout",
                _ => "other",
            };
            (k, e.proof.seq)
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("scan", 1),
            ("alarm", 2),
            ("trim", 3),
            ("result", 4),
            ("timeout", 6)
        ]
    );
    let station = &p.stations["flow-bench-01"];
    assert_eq!(station.next_seq, 8);
    assert_eq!(
        station.current, None,
        "the timeout ended the part's presence"
    );
    // The rejected scan and both alarms are the station's; the late alarm is no part's.
    let seqs: Vec<u64> = station.events.iter().map(|e| e.proof.seq).collect();
    assert_eq!(seqs, [2, 5, 6, 7]);
}

#[test]
fn rebuild_from_the_hub_store_equals_the_projection_fed_live() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(
        tmp.path(),
        Access::Write(Origin::hub("plant-1").unwrap()),
        &StoreOptions::default(),
    )
    .unwrap();
    let histories = [
        vec![Step::Scan(1), Step::Result, Step::Scan(2), Step::Result],
        vec![Step::Scan(2), Step::Alarm, Step::Result, Step::Unbound],
        vec![
            Step::Scan(1),
            Step::TrimCode(1),
            Step::Result,
            Step::Restart,
        ],
    ];
    let ws = store.witness_store();
    let mut live = Reconciler::open(&ws, Arc::new(Rules::defaults())).unwrap();
    for (id, h) in STATIONS.iter().zip(&histories) {
        let l = ledger(id, h, 1_000);
        // Witnessed in two batches, as the hub stores them.
        let w = ws.open(id).unwrap();
        w.append(0, l[..2].iter().map(Vec::as_slice), b"state")
            .unwrap();
        w.append(2, l[2..].iter().map(Vec::as_slice), b"state")
            .unwrap();
        live.catch_up(&ws, id, 2).unwrap();
        live.catch_up(&ws, id, l.len() as u64).unwrap();
    }
    let live_digest = live.digest().unwrap();
    let live_view = live.view().unwrap();
    drop(live);
    store.append(&[]).unwrap();
    drop(ws);
    drop(store);
    let (store, _) = Store::open(tmp.path(), Access::Read, &StoreOptions::default()).unwrap();
    let rebuilt = Reconciler::rebuild(&store.witness_store(), Arc::new(Rules::defaults())).unwrap();
    assert_eq!(rebuilt.view().unwrap(), live_view);
    assert_eq!(rebuilt.digest().unwrap(), live_digest);
    assert_eq!(rebuilt.records(), 12);
    assert_eq!(rebuilt.view().unwrap().injectors[&uii(2)].len(), 5);
    drop(store);
    let code = proofline_hub::cli::main_from([
        "proofline-hub",
        "reconcile",
        "--rebuild",
        "--data-dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(code, std::process::ExitCode::SUCCESS);
}
