//! Each findings rule of `reference/traceability.md` the hub implements: one history that must
//! fire it, one that must not; and a finding that a late-arriving earlier record no longer
//! supports is withdrawn. Also the Q-DAS export of the same reconciled results, parsed back.

use std::sync::Arc;

use proofline_common::hash::leaf_hash;
use proofline_common::record::{
    encode_v1, Attribute, Binding, Body, Identity, InterlockDecision, InterlockOutcome,
    PartScanned, ScanOutcome, ScanRole, StationEvent, TestPlan, Verdict,
};
use proofline_common::synth::inspection_result;
use proofline_hub::reconcile::rules::{clearance, Finding, Refusal, Rule, Rules};
use proofline_hub::reconcile::{EntryKind, Pending, Reconciler};

const S: i64 = 1_000_000;
const T0: i64 = 1_800_000_000 * S;

/// One station's ledger being written.
struct Station {
    id: &'static str,
    origin: String,
    prev: proofline_common::hash::Hash,
    records: Vec<Vec<u8>>,
    /// The reconciler has applied this many.
    fed: usize,
}

impl Station {
    fn new(id: &'static str) -> Station {
        let origin = format!("proofline/plant-1/{id}");
        Station {
            id,
            prev: proofline_common::hash::genesis_prev(&origin),
            origin,
            records: Vec::new(),
            fed: 0,
        }
    }

    fn push(&mut self, at: i64, body: Body) -> &mut Self {
        let seq = self.records.len() as u64;
        let b = encode_v1(&self.origin, seq, 1, at, &self.prev, &body);
        self.prev = leaf_hash(&b);
        self.records.push(b);
        self
    }

    fn scan(&mut self, at: i64, m: &Mark) -> &mut Self {
        self.push(at, m.scan())
    }

    fn result(&mut self, at: i64, uii: &str, r: Res) -> &mut Self {
        let mut b = inspection_result(r.jitter, 4);
        if let Body::InspectionResult(x) = &mut b {
            x.binding = Binding::Bound {
                uii: uii.into(),
                scan_seq: 0,
            };
            x.verdict = r.verdict;
            if let Some(tp) = r.plan {
                x.test_plan = Some(TestPlan {
                    id: tp.into(),
                    revision: "A".into(),
                });
            }
            if let Some(v) = r.full_load {
                x.characteristics[0].measured = proofline_common::record::Measured::Value {
                    value: v,
                    unit: "mm3/stroke".into(),
                };
            }
        }
        self.push(at, b)
    }

    fn refused(&mut self, at: i64) -> &mut Self {
        self.push(
            at,
            Body::PartScanned(PartScanned {
                source: "scanner".into(),
                role: ScanRole::Part,
                symbology: Some("]d2".into()),
                raw: proofline_common::bytes::Bytes(b"junk".to_vec()),
                outcome: ScanOutcome::Rejected {
                    code: "bad_envelope".into(),
                    detail: "no RS".into(),
                },
            }),
        )
    }
}

#[derive(Clone, Copy)]
struct Res {
    verdict: Verdict,
    jitter: u64,
    plan: Option<&'static str>,
    full_load: Option<f64>,
}

fn ok(jitter: u64) -> Res {
    Res {
        verdict: Verdict::Ok,
        jitter,
        plan: Some("FT-0445"),
        full_load: None,
    }
}

fn nok(jitter: u64) -> Res {
    Res {
        verdict: Verdict::Nok,
        ..ok(jitter)
    }
}

/// A part's mark, construct #2.
struct Mark {
    uii: String,
    enterprise: &'static str,
    part_number: &'static str,
    serial: String,
    construct: &'static str,
}

fn mark(serial: u32) -> Mark {
    let serial = format!("{serial:06}");
    Mark {
        uii: format!("D1ABC50445120123{serial}"),
        enterprise: "1ABC5",
        part_number: "0445120123",
        serial,
        construct: "2",
    }
}

impl Mark {
    fn scan(&self) -> Body {
        let a = |n: &str, v: &str| Attribute {
            name: n.into(),
            value: v.into(),
        };
        Body::PartScanned(PartScanned {
            source: "scanner".into(),
            role: ScanRole::Part,
            symbology: Some("]d2".into()),
            raw: proofline_common::bytes::Bytes(b"mark".to_vec()),
            outcome: ScanOutcome::Identified(Identity {
                uii: self.uii.clone(),
                format: "06".into(),
                construct: self.construct.into(),
                attributes: vec![
                    a("iac", "D"),
                    a("enterprise", self.enterprise),
                    a("part_number", self.part_number),
                    a("serial", &self.serial),
                ],
            }),
        })
    }
}

const CONFIG: &str = r#"
[hub]
site = "plant-1"
data_dir = "/nonexistent"
key_file = "/nonexistent"
[reconcile]
enterprises = ["1ABC5"]
construct = "2"
min_transfer_secs = 10
clock_uncertainty_secs = 2
zero_variance_run = 4
identical_min_values = 3
hygiene_window = 10
hygiene_max_refused_percent = 30
drift_k = 3
[[part_type]]
name = "CRI-2.2"
part_numbers = ["0445120123"]
serial_ranges = ["000100-000999"]
test_plans = ["FT-0445"]
[[part_type.operation]]
name = "flow"
stations = ["flow-01"]
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
agent_id = "flow-01"
min_cycle_secs = 30
[[characteristic]]
name = "full_load_delivery"
repeatability = 0.2
"#;

fn rules() -> Arc<Rules> {
    let cfg = proofline_hub::config::HubConfig::parse(CONFIG).unwrap();
    let mut p = Default::default();
    let r = cfg.rules(&mut p);
    assert!(p.0.is_empty(), "{:?}", p.0);
    Arc::new(r)
}

/// Feeds what the stations recorded since the last call, station by station, one group each.
fn feed(r: &mut Reconciler, stations: &mut [&mut Station]) {
    for s in stations.iter_mut() {
        let mut p = Pending::default();
        for (seq, b) in s.records.iter().enumerate().skip(s.fed) {
            r.apply(&mut p, s.id, seq as u64, b).unwrap();
        }
        s.fed = s.records.len();
        r.commit(p).unwrap();
    }
}

fn findings(r: &Reconciler, rule: Rule) -> Vec<Finding> {
    r.findings()
        .unwrap()
        .into_iter()
        .filter(|f| f.rule == rule)
        .collect()
}

/// A part through flow, torque and final, 60 s apart.
fn clean_route(flow: &mut Station, torque: &mut Station, fin: &mut Station, m: &Mark, t: i64) {
    flow.scan(t, m).result(t + 5 * S, &m.uii, ok(t as u64));
    torque
        .scan(t + 60 * S, m)
        .result(t + 65 * S, &m.uii, ok(t as u64 + 1));
    fin.scan(t + 120 * S, m)
        .result(t + 125 * S, &m.uii, ok(t as u64 + 2));
}

fn three() -> (Station, Station, Station) {
    (
        Station::new("flow-01"),
        Station::new("torque-01"),
        Station::new("final-01"),
    )
}

#[test]
fn a_clean_route_raises_nothing_and_completes() {
    let (mut f, mut t, mut x) = three();
    let m = mark(123);
    clean_route(&mut f, &mut t, &mut x, &m, T0);
    let mut r = Reconciler::scratch(rules()).unwrap();
    feed(&mut r, &mut [&mut f, &mut t, &mut x]);
    assert_eq!(r.findings().unwrap(), vec![]);
    let route = r.route(&m.uii).unwrap().unwrap();
    assert!(route.complete && !route.on_hold, "{route:?}");
    assert_eq!(route.part_type.as_deref(), Some("CRI-2.2"));
    assert_eq!(route.passed.len(), 3);
}

#[test]
fn duplicate_first_operation() {
    let (mut f, mut t, mut x) = three();
    let m = mark(200);
    clean_route(&mut f, &mut t, &mut x, &m, T0);
    // The same UII starts again at flow an hour later: a second part with a copied mark?
    f.scan(T0 + 3600 * S, &m)
        .result(T0 + 3605 * S, &m.uii, ok(99));
    let mut r = Reconciler::scratch(rules()).unwrap();
    feed(&mut r, &mut [&mut f, &mut t, &mut x]);
    let d = findings(&r, Rule::DuplicateFirstOperation);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].uii.as_deref(), Some(m.uii.as_str()));
    assert_eq!(d[0].label, "suspect_counterfeit");
    assert!(r.route(&m.uii).unwrap().unwrap().on_hold);
    // Evidence: the first pass and the second start, as records of flow-01.
    assert!(d[0].evidence.iter().all(|p| p.agent_id == "flow-01"));
    assert_eq!(d[0].evidence.len(), 2);

    // Must not fire: a failed flow test re-tested, and a final failure reworked to flow.
    let (mut f, mut t, mut x) = three();
    let m = mark(201);
    f.scan(T0, &m).result(T0 + 5 * S, &m.uii, nok(1));
    f.result(T0 + 50 * S, &m.uii, ok(2));
    t.scan(T0 + 100 * S, &m).result(T0 + 105 * S, &m.uii, ok(3));
    x.scan(T0 + 200 * S, &m)
        .result(T0 + 205 * S, &m.uii, nok(4));
    f.scan(T0 + 300 * S, &m).result(T0 + 305 * S, &m.uii, ok(5));
    t.scan(T0 + 400 * S, &m).result(T0 + 405 * S, &m.uii, ok(6));
    x.scan(T0 + 500 * S, &m).result(T0 + 505 * S, &m.uii, ok(7));
    let mut r = Reconciler::scratch(rules()).unwrap();
    feed(&mut r, &mut [&mut f, &mut t, &mut x]);
    assert_eq!(findings(&r, Rule::DuplicateFirstOperation), vec![]);
    assert_eq!(findings(&r, Rule::ImpossibleSequence), vec![]);
    assert!(r.route(&m.uii).unwrap().unwrap().complete);
}

#[test]
fn impossible_sequence_and_its_withdrawal_when_the_earlier_record_arrives() {
    let (mut f, mut t, _) = three();
    let m = mark(300);
    t.scan(T0 + 60 * S, &m).result(T0 + 65 * S, &m.uii, ok(1));
    let mut r = Reconciler::scratch(rules()).unwrap();
    // Torque is witnessed first: flow is missing.
    feed(&mut r, &mut [&mut t]);
    let s = findings(&r, Rule::ImpossibleSequence);
    assert_eq!(s.len(), 1);
    assert!(
        s[0].explanation.contains("flow is missing"),
        "{}",
        s[0].explanation
    );
    assert_eq!(
        r.route(&m.uii).unwrap().unwrap().next.as_deref(),
        Some("final")
    );
    // The flow bench's ledger arrives later with the earlier flow test: no finding any more.
    f.scan(T0, &m).result(T0 + 5 * S, &m.uii, ok(2));
    feed(&mut r, &mut [&mut f]);
    assert_eq!(findings(&r, Rule::ImpossibleSequence), vec![]);
    // A failed flow test before torque is still impossible.
    let (mut f, mut t, _) = three();
    let m = mark(301);
    f.scan(T0, &m).result(T0 + 5 * S, &m.uii, nok(3));
    t.scan(T0 + 60 * S, &m).result(T0 + 65 * S, &m.uii, ok(4));
    let mut r = Reconciler::scratch(rules()).unwrap();
    feed(&mut r, &mut [&mut f, &mut t]);
    let s = findings(&r, Rule::ImpossibleSequence);
    assert!(
        s[0].explanation.contains("flow is failed"),
        "{}",
        s[0].explanation
    );
}

#[test]
fn concurrent_presence_with_confidence_from_the_margin() {
    let (mut f, mut t, _) = three();
    let m = mark(400);
    f.scan(T0, &m).result(T0 + 5 * S, &m.uii, ok(1));
    // At torque 1 s after the flow result: faster than any transfer.
    t.scan(T0 + 6 * S, &m);
    let mut r = Reconciler::scratch(rules()).unwrap();
    feed(&mut r, &mut [&mut f, &mut t]);
    let c = findings(&r, Rule::ConcurrentPresence);
    assert_eq!(c.len(), 1);
    assert!(!c[0].low_confidence, "9 s short of the transfer time");
    assert!(r.route(&m.uii).unwrap().unwrap().on_hold);
    // 9 s after: within the 2 s the clocks can be trusted to, so low confidence.
    let (mut f, mut t, _) = three();
    let m = mark(401);
    f.scan(T0, &m).result(T0 + 5 * S, &m.uii, ok(1));
    t.scan(T0 + 14 * S, &m);
    let mut r = Reconciler::scratch(rules()).unwrap();
    feed(&mut r, &mut [&mut f, &mut t]);
    assert!(findings(&r, Rule::ConcurrentPresence)[0].low_confidence);
    // Must not fire: a minute apart.
    let (mut f, mut t, _) = three();
    let m = mark(402);
    f.scan(T0, &m).result(T0 + 5 * S, &m.uii, ok(1));
    t.scan(T0 + 65 * S, &m);
    let mut r = Reconciler::scratch(rules()).unwrap();
    feed(&mut r, &mut [&mut f, &mut t]);
    assert_eq!(findings(&r, Rule::ConcurrentPresence), vec![]);
}

#[test]
fn out_of_allocation() {
    let mut f = Station::new("flow-01");
    let inside = mark(999);
    let outside = mark(1000);
    f.scan(T0, &inside).scan(T0 + 60 * S, &outside);
    let mut r = Reconciler::scratch(rules()).unwrap();
    feed(&mut r, &mut [&mut f]);
    let a = findings(&r, Rule::OutOfAllocation);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].uii.as_deref(), Some(outside.uii.as_str()));
}

#[test]
fn enterprise_mismatch_for_an_unknown_enterprise_or_construct() {
    let mut f = Station::new("flow-01");
    let good = mark(500);
    let foreign = Mark {
        enterprise: "9ZZZ9",
        uii: "D9ZZZ90445120123000501".into(),
        ..mark(501)
    };
    let construct1 = Mark {
        construct: "1",
        ..mark(502)
    };
    f.scan(T0, &good)
        .scan(T0 + 60 * S, &foreign)
        .scan(T0 + 120 * S, &construct1);
    let mut r = Reconciler::scratch(rules()).unwrap();
    feed(&mut r, &mut [&mut f]);
    let e = findings(&r, Rule::EnterpriseMismatch);
    let uiis: Vec<_> = e.iter().filter_map(|f| f.uii.clone()).collect();
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(uiis.contains(&foreign.uii) && uiis.contains(&construct1.uii));
    assert!(!uiis.contains(&good.uii));
    assert!(e.iter().any(|f| f.explanation.contains("9ZZZ9")));
}

#[test]
fn part_number_mismatch() {
    let mut f = Station::new("flow-01");
    let right = mark(600);
    let wrong = mark(601);
    f.scan(T0, &right).result(
        T0 + 5 * S,
        &right.uii,
        Res {
            plan: Some("FT-0445"),
            ..ok(1)
        },
    );
    f.scan(T0 + 60 * S, &wrong).result(
        T0 + 65 * S,
        &wrong.uii,
        Res {
            plan: Some("FT-0986"),
            ..ok(2)
        },
    );
    let mut r = Reconciler::scratch(rules()).unwrap();
    feed(&mut r, &mut [&mut f]);
    let p = findings(&r, Rule::PartNumberMismatch);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].uii.as_deref(), Some(wrong.uii.as_str()));
    assert!(p[0].explanation.contains("FT-0986"));
}

#[test]
fn fingerprint_drift() {
    let mut f = Station::new("flow-01");
    let steady = mark(700);
    let drifted = mark(701);
    let at = |v| Res {
        full_load: Some(v),
        ..ok(1)
    };
    f.scan(T0, &steady)
        .result(T0 + 5 * S, &steady.uii, at(62.00))
        .result(T0 + 60 * S, &steady.uii, at(62.50)); // 2.5 σ: repeatability
    f.scan(T0 + 120 * S, &drifted)
        .result(T0 + 125 * S, &drifted.uii, at(62.00))
        .result(T0 + 180 * S, &drifted.uii, at(62.80)); // 4 σ
    let mut r = Reconciler::scratch(rules()).unwrap();
    feed(&mut r, &mut [&mut f]);
    let d = findings(&r, Rule::FingerprintDrift);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].uii.as_deref(), Some(drifted.uii.as_str()));
}

#[test]
fn too_perfect_data_faster_than_the_cycle_or_zero_variance_or_identical() {
    // Faster than the bench's 30 s cycle.
    let mut f = Station::new("flow-01");
    let (a, b, c) = (mark(800), mark(801), mark(802));
    f.scan(T0, &a).result(T0 + 5 * S, &a.uii, ok(1));
    f.scan(T0 + 40 * S, &b).result(T0 + 45 * S, &b.uii, ok(2)); // 40 s later: fine
    f.scan(T0 + 50 * S, &c).result(T0 + 55 * S, &c.uii, ok(3)); // 10 s later
    let mut r = Reconciler::scratch(rules()).unwrap();
    feed(&mut r, &mut [&mut f]);
    let p = findings(&r, Rule::TooPerfectData);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].uii.as_deref(), Some(c.uii.as_str()));
    assert!(p[0].explanation.contains("test cycle"));

    // Zero variance: four results in a row with the same full-load value (a run of three
    // does not fire).
    let same = |v| Res {
        full_load: Some(v),
        ..ok(0)
    };
    for (n, want) in [(3, 0), (4, 1)] {
        let mut t = Station::new("torque-01");
        for i in 0..n {
            let m = mark(810 + i);
            // Jitter differs per result: only full load repeats.
            t.scan(T0 + i as i64 * 100 * S, &m).result(
                T0 + i as i64 * 100 * S + 5 * S,
                &m.uii,
                Res {
                    jitter: i as u64 + 1,
                    ..same(61.93)
                },
            );
        }
        let mut r = Reconciler::scratch(rules()).unwrap();
        feed(&mut r, &mut [&mut t]);
        let z: Vec<_> = findings(&r, Rule::TooPerfectData)
            .into_iter()
            .filter(|f| f.explanation.contains("in a row"))
            .collect();
        assert_eq!(z.len(), want, "{n} in a row: {z:?}");
    }

    // Identical measurements on two injectors at two benches; a third differs.
    let mut t = Station::new("torque-01");
    let mut x = Station::new("final-01");
    let (p1, p2, p3) = (mark(820), mark(821), mark(822));
    t.scan(T0, &p1).result(T0 + 5 * S, &p1.uii, ok(42));
    x.scan(T0 + 500 * S, &p2)
        .result(T0 + 505 * S, &p2.uii, ok(42));
    x.scan(T0 + 600 * S, &p3)
        .result(T0 + 605 * S, &p3.uii, ok(43));
    let mut r = Reconciler::scratch(rules()).unwrap();
    feed(&mut r, &mut [&mut t, &mut x]);
    let same: Vec<_> = findings(&r, Rule::TooPerfectData)
        .into_iter()
        .filter(|f| f.explanation.contains("identical"))
        .collect();
    let uiis: Vec<_> = same.iter().filter_map(|f| f.uii.clone()).collect();
    assert_eq!(same.len(), 2, "{same:?}");
    assert!(uiis.contains(&p1.uii) && uiis.contains(&p2.uii) && !uiis.contains(&p3.uii));
    assert!(same.iter().all(|f| f.evidence.len() == 2));
}

#[test]
fn scan_hygiene() {
    // 3 refused of the last 10 is 30 %: not more than the threshold. 4 is.
    for (refused, want) in [(3, 0), (4, 1)] {
        let mut f = Station::new("flow-01");
        for i in 0..10 {
            if i < refused {
                f.refused(T0 + i * S);
            } else {
                f.scan(T0 + i * 100 * S, &mark(900 + i as u32));
            }
        }
        let mut r = Reconciler::scratch(rules()).unwrap();
        feed(&mut r, &mut [&mut f]);
        let h = findings(&r, Rule::ScanHygiene);
        assert_eq!(h.len(), want, "{refused} refused: {h:?}");
        if want > 0 {
            assert_eq!(h[0].station.as_deref(), Some("flow-01"));
            assert!(h[0].uii.is_none());
        }
    }
}

#[test]
fn a_finding_raised_again_is_the_same_finding() {
    let (mut f, mut t, mut x) = three();
    let m = mark(950);
    clean_route(&mut f, &mut t, &mut x, &m, T0);
    f.scan(T0 + 3600 * S, &m)
        .result(T0 + 3605 * S, &m.uii, ok(1));
    let mut r = Reconciler::scratch(rules()).unwrap();
    feed(&mut r, &mut [&mut f, &mut t, &mut x]);
    // And a third start: still one duplicate-first-operation finding, with more evidence.
    f.scan(T0 + 7200 * S, &m)
        .result(T0 + 7205 * S, &m.uii, ok(2));
    feed(&mut r, &mut [&mut f]);
    let d = findings(&r, Rule::DuplicateFirstOperation);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].evidence.len(), 3);
}

#[test]
fn bad_rules_are_named_by_key() {
    let bad = CONFIG
        .replace("[\"1ABC5\"]", "[\"1ABI5\"]")
        .replace("\"000100-000999\"", "\"100-99\"")
        .replace("from = \"final\"", "from = \"nowhere\"");
    let cfg = proofline_hub::config::HubConfig::parse(&bad).unwrap();
    let keys: Vec<String> = cfg.problems().into_iter().map(|p| p.path).collect();
    for k in [
        "reconcile.enterprises[0]",
        "part_type[0].serial_ranges[0]",
        "part_type[0].rework[0]",
    ] {
        assert!(keys.iter().any(|p| p == k), "{k} not in {keys:?}");
    }
}

/// An AQDEF file read back: per part block, K-fields by (key, index) in file order.
fn parse_dfq(text: &str) -> Vec<Vec<(String, usize, String)>> {
    let mut blocks: Vec<Vec<(String, usize, String)>> = Vec::new();
    for line in text.lines() {
        let (k, v) = line.split_once(' ').unwrap();
        let (key, i) = match k.split_once('/') {
            Some((key, i)) => (key.to_owned(), i.parse().unwrap()),
            None => (k.to_owned(), 0),
        };
        assert!(key.starts_with('K') && key.len() == 5, "{line}");
        if key == "K0100" {
            blocks.push(Vec::new());
        }
        blocks.last_mut().unwrap().push((key, i, v.to_owned()));
    }
    blocks
}

#[test]
fn qdas_export_has_one_population_per_bench_and_plan_and_reads_back() {
    let mut f = Station::new("flow-01");
    let mut f2 = Station::new("torque-01");
    let (a, b) = (mark(600), mark(601));
    let v = |x, plan| Res {
        full_load: Some(x),
        plan: Some(plan),
        ..ok(1)
    };
    f.scan(T0, &a)
        .result(T0 + 5 * S, &a.uii, v(62.25, "FT-0445"));
    f.scan(T0 + 60 * S, &b)
        .result(T0 + 65 * S, &b.uii, v(61.75, "FT-0445"));
    // The same characteristic at another bench: another population.
    f2.scan(T0 + 120 * S, &a)
        .result(T0 + 125 * S, &a.uii, v(62.5, "FT-0445"));
    let mut r = Reconciler::scratch(rules()).unwrap();
    feed(&mut r, &mut [&mut f, &mut f2]);
    let q = proofline_hub::qdas::QdasQuery {
        part_type: "CRI-2.2".into(),
        characteristic: Some("full_load_delivery".into()),
        from: None,
        to: None,
    };
    let (text, n) = proofline_hub::qdas::export(&r.view().unwrap(), &q);
    assert_eq!(n, 3);
    let blocks = parse_dfq(&text);
    assert_eq!(blocks.len(), 1, "one part number");
    let b0 = &blocks[0];
    let get = |k: &str, i: usize| -> Vec<&str> {
        b0.iter()
            .filter(|(key, j, _)| key == k && *j == i)
            .map(|(_, _, v)| v.as_str())
            .collect()
    };
    assert_eq!(get("K0100", 0), ["2"]);
    assert_eq!(get("K1001", 0), ["0445120123"]);
    // Populations in (characteristic, plan, bench) order: flow-01 first.
    assert_eq!(get("K2001", 1), ["full_load_delivery"]);
    assert!(get("K2002", 1)[0].contains("flow-01"));
    assert!(get("K2002", 2)[0].contains("torque-01"));
    assert_eq!(get("K2101", 1), ["62"]);
    assert_eq!(get("K2110", 1), ["60.14"]);
    assert_eq!(get("K2111", 1), ["63.86"]);
    assert_eq!(get("K2142", 1), ["mm3/stroke"]);
    assert_eq!(get("K0001", 1), ["62.25", "61.75"]);
    assert_eq!(get("K0014", 1), [a.uii.as_str(), b.uii.as_str()]);
    assert_eq!(get("K0012", 2), ["torque-01"]);
    assert_eq!(get("K0001", 2), ["62.5"]);
    assert_eq!(get("K0002", 1), ["0", "0"]);
    assert_eq!(
        get("K0004", 1)[0],
        proofline_hub::qdas::qdas_time(T0 + 5 * S)
    );
    // A time window keeps only what falls in it.
    let q = proofline_hub::qdas::QdasQuery {
        from: Some(T0 + 60 * S),
        to: Some(T0 + 100 * S),
        ..q
    };
    assert_eq!(proofline_hub::qdas::export(&r.view().unwrap(), &q).1, 1);
}

/// A bench reporting a frozen value: every result identical on 100 injectors. The work stays
/// bounded (one finding each for the first 64 injectors, one for the group), and the findings
/// are the same whichever order the results come in.
#[test]
fn a_frozen_bench_raises_bounded_findings_in_any_order() {
    let frozen = |order: &mut dyn Iterator<Item = u32>| {
        let mut r = Reconciler::scratch(rules()).unwrap();
        // One station per injector so that any order is a witness order.
        let ids: Vec<&'static str> = (0..100)
            .map(|i| &*Box::leak(format!("final-{i:03}").into_boxed_str()))
            .collect();
        for i in order {
            let mut s = Station::new(ids[i as usize]);
            let m = mark(100 + i);
            s.scan(T0 + i as i64 * 100 * S, &m).result(
                T0 + i as i64 * 100 * S + 5 * S,
                &m.uii,
                ok(7),
            );
            feed(&mut r, &mut [&mut s]);
        }
        let f: Vec<_> = findings(&r, Rule::TooPerfectData);
        (f, r.digest().unwrap())
    };
    let (fwd, d1) = frozen(&mut (0..100));
    let (rev, d2) = frozen(&mut (0..100).rev());
    assert_eq!(fwd.len(), 65, "64 injectors and the group");
    assert_eq!(fwd, rev);
    assert_eq!(d1, d2);
    assert!(fwd
        .iter()
        .any(|f| f.uii.is_none() && f.explanation.contains("more than 64")));
}

fn decision(uii: &str, released: bool, outcome: InterlockOutcome) -> Body {
    Body::StationEvent(StationEvent::Interlock(InterlockDecision {
        uii: uii.into(),
        scan_seq: 0,
        released,
        outcome,
        answer: None,
    }))
}

/// What the route interlock answers `station` for `m` over what the reconciler holds.
fn ask(r: &Reconciler, m: &Mark, station: &str) -> Result<String, (Refusal, String)> {
    let timeline = r.timeline(&m.uii).unwrap();
    clearance(
        r.rules(),
        &m.uii,
        station,
        Some(m.part_number),
        &timeline,
        &|_| false,
    )
}

#[test]
fn the_route_interlock_allows_what_the_route_accepts_and_names_what_is_missing() {
    let (mut f, mut t, mut x) = three();
    let mut r = Reconciler::scratch(rules()).unwrap();
    let m = mark(400);
    // A new part: its first operation only.
    assert_eq!(ask(&r, &m, "flow-01"), Ok("flow".into()));
    let (code, why) = ask(&r, &m, "torque-01").unwrap_err();
    assert_eq!(code, Refusal::OutOfSequence);
    assert!(why.contains("due for flow (not done)"), "{why}");
    assert_eq!(ask(&r, &m, "paint-01").unwrap_err().0, Refusal::NotOnRoute);
    // Flow failed: torque still refused (flow failed), a re-test at flow allowed.
    f.scan(T0, &m).result(T0 + 5 * S, &m.uii, nok(1));
    feed(&mut r, &mut [&mut f]);
    let (code, why) = ask(&r, &m, "torque-01").unwrap_err();
    assert_eq!(code, Refusal::OutOfSequence);
    assert!(why.contains("flow (failed)"), "{why}");
    assert_eq!(ask(&r, &m, "flow-01"), Ok("flow".into()));
    // Passed flow: torque is due; flow again is refused.
    f.scan(T0 + 60 * S, &m).result(T0 + 65 * S, &m.uii, ok(2));
    feed(&mut r, &mut [&mut f]);
    assert_eq!(ask(&r, &m, "torque-01"), Ok("torque".into()));
    assert_eq!(
        ask(&r, &m, "flow-01").unwrap_err().0,
        Refusal::AlreadyPassed
    );
    // Final failed: the configured rework loop (final → flow) is allowed, torque is not.
    t.scan(T0 + 120 * S, &m).result(T0 + 125 * S, &m.uii, ok(3));
    x.scan(T0 + 180 * S, &m)
        .result(T0 + 185 * S, &m.uii, nok(4));
    feed(&mut r, &mut [&mut t, &mut x]);
    assert_eq!(ask(&r, &m, "flow-01"), Ok("flow".into()));
    assert_eq!(
        ask(&r, &m, "torque-01").unwrap_err().0,
        Refusal::AlreadyPassed
    );
    assert_eq!(ask(&r, &m, "final-01"), Ok("final".into()));
    // Complete: nothing more anywhere.
    x.scan(T0 + 240 * S, &m).result(T0 + 245 * S, &m.uii, ok(5));
    feed(&mut r, &mut [&mut x]);
    for s in ["flow-01", "torque-01", "final-01"] {
        assert_eq!(ask(&r, &m, s).unwrap_err().0, Refusal::Complete, "{s}");
    }
    // A part under a hold finding (a second part with its UII started again) is refused.
    let m = mark(401);
    f.scan(T0, &m).result(T0 + 5 * S, &m.uii, ok(6));
    f.scan(T0 + 600 * S, &m).result(T0 + 605 * S, &m.uii, ok(7));
    feed(&mut r, &mut [&mut f]);
    let (code, why) = ask(&r, &m, "torque-01").unwrap_err();
    assert_eq!(code, Refusal::OnHold);
    assert!(why.contains("duplicate_first_operation"), "{why}");
    // Closed by a quality engineer (dispositioned): the hold is lifted; acknowledged is not
    // enough (the caller passes only closed findings).
    let hold = r
        .findings()
        .unwrap()
        .into_iter()
        .find(|f| {
            f.uii.as_deref() == Some(m.uii.as_str()) && f.rule == Rule::DuplicateFirstOperation
        })
        .unwrap();
    let timeline = r.timeline(&m.uii).unwrap();
    let closed = |id: &str| id == hold.id;
    assert_eq!(
        clearance(
            r.rules(),
            &m.uii,
            "torque-01",
            Some(m.part_number),
            &timeline,
            &closed
        ),
        Ok("torque".into())
    );
}

#[test]
fn interlock_bypassed() {
    let (mut f, _, _) = three();
    let m = mark(410);
    let n = mark(411);
    let k = mark(412);
    // Released by the offline policy: flagged.
    f.scan(T0, &m)
        .push(
            T0 + S,
            decision(
                &m.uii,
                true,
                InterlockOutcome::Unreachable {
                    policy: "allow_and_flag".into(),
                    detail: "no answer within 3000 ms".into(),
                },
            ),
        )
        .result(T0 + 5 * S, &m.uii, ok(1));
    // Held (refused), tested anyway: flagged.
    f.scan(T0 + 100 * S, &n)
        .push(
            T0 + 101 * S,
            decision(
                &n.uii,
                false,
                InterlockOutcome::Refused {
                    code: "on_hold".into(),
                    reason: "x".into(),
                },
            ),
        )
        .result(T0 + 105 * S, &n.uii, ok(2));
    // Must not fire: allowed by the hub, then tested; and held, then not tested.
    f.scan(T0 + 200 * S, &k)
        .push(
            T0 + 201 * S,
            decision(
                &k.uii,
                true,
                InterlockOutcome::Allowed {
                    operation: "flow".into(),
                },
            ),
        )
        .result(T0 + 205 * S, &k.uii, ok(3));
    let q = mark(413);
    f.scan(T0 + 300 * S, &q).push(
        T0 + 301 * S,
        decision(
            &q.uii,
            false,
            InterlockOutcome::Unreachable {
                policy: "block".into(),
                detail: "not connected".into(),
            },
        ),
    );
    let mut r = Reconciler::scratch(rules()).unwrap();
    feed(&mut r, &mut [&mut f]);
    let got = findings(&r, Rule::InterlockBypassed);
    let mut uiis: Vec<_> = got.iter().map(|f| f.uii.clone().unwrap()).collect();
    uiis.sort();
    assert_eq!(uiis, vec![m.uii.clone(), n.uii.clone()], "{got:?}");
    assert!(got.iter().any(|f| f.explanation.contains("offline policy")));
    assert!(got.iter().any(|f| f.explanation.contains("held it")));
    assert!(got
        .iter()
        .any(|f| f.uii.as_ref() == Some(&n.uii) && f.evidence.len() == 2));
    // The decision is on the part's timeline.
    assert!(r.timeline(&q.uii).unwrap().iter().any(|e| matches!(
        &e.kind,
        EntryKind::Interlock {
            released: false,
            ..
        }
    )));
}
