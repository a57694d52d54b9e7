//! Reconciliation and QMS delivery figures, printed, never asserted:
//!
//! 1. Reconcile cost per record: two stations' ledgers (a part scan, its result, an alarm every
//!    tenth part) applied in witness-sized groups of 64 with routes and every findings rule on,
//!    against the cost of only decoding the same records, measured in the same run.
//! 2. QMS delivery: `REPORTS` results in the outbox delivered to the fake QMS on loopback
//!    (search, then POST, one at a time, as shipped): reports/s, and the CPU the delivery
//!    thread spends per report (the hub-side overhead; the fake runs on other threads).
//!
//! Environment: `PROOFLINE_BENCH_RECORDS` (default 20 000), `PROOFLINE_BENCH_REPORTS` (default
//! 1 000). Run with `cargo bench -p proofline-hub --bench reconcile`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proofline_common::hash::{genesis_prev, leaf_hash};
use proofline_common::record::{
    encode_v1, Alarm, Attribute, Binding, Body, Identity, PartScanned, Record, ScanOutcome,
    ScanRole, Severity, StationEvent,
};
use proofline_common::store::{Access, Store, StoreOptions};
use proofline_common::synth::inspection_result;
use proofline_common::writer::{spawn_writer, WriterConfig};
use proofline_common::Origin;
use proofline_hub::reconcile::rules::Rules;
use proofline_hub::reconcile::{Pending, Reconciler};

const T0: i64 = 1_800_000_000_000_000;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn uii(n: u64) -> String {
    format!("D1ABC50445120123{n:06}")
}

/// One station's ledger: per part a scan and its result, an alarm every tenth part.
fn ledger(agent: &str, parts: u64, offset: i64) -> Vec<Vec<u8>> {
    let origin = format!("proofline/plant-1/{agent}");
    let mut prev = genesis_prev(&origin);
    let mut out = Vec::new();
    let mut push = |at: i64, body: Body, out: &mut Vec<Vec<u8>>| {
        let b = encode_v1(&origin, out.len() as u64, 1, at, &prev, &body);
        prev = leaf_hash(&b);
        out.push(b);
    };
    for p in 0..parts {
        let at = T0 + offset + p as i64 * 30_000_000;
        let a = |n: &str, v: &str| Attribute {
            name: n.into(),
            value: v.into(),
        };
        let scan = Body::PartScanned(PartScanned {
            source: "scanner".into(),
            role: ScanRole::Part,
            symbology: Some("]d2".into()),
            raw: proofline_common::bytes::Bytes(b"mark".to_vec()),
            outcome: ScanOutcome::Identified(Identity {
                uii: uii(p),
                format: "06".into(),
                construct: "2".into(),
                attributes: vec![
                    a("enterprise", "1ABC5"),
                    a("part_number", "0445120123"),
                    a("serial", &format!("{p:06}")),
                ],
            }),
        });
        push(at, scan, &mut out);
        let mut r = inspection_result(p, 64);
        if let Body::InspectionResult(x) = &mut r {
            x.binding = Binding::Bound {
                uii: uii(p),
                scan_seq: 0,
            };
            x.verdict = proofline_common::record::Verdict::Ok;
            // Every part measures differently, as real parts do.
            x.characteristics[0].measured = proofline_common::record::Measured::Value {
                value: 61.0 + (p % 20_000) as f64 * 1e-4,
                unit: "mm3/stroke".into(),
            };
        }
        push(at + 5_000_000, r, &mut out);
        if p % 10 == 9 {
            let alarm = Body::StationEvent(StationEvent::Alarm(Alarm {
                source: "bench".into(),
                code: "modbus.exception".into(),
                severity: Severity::Warning,
                message: "exception 4".into(),
            }));
            push(at + 6_000_000, alarm, &mut out);
        }
    }
    out
}

fn rules(qms_station: Option<&str>) -> Arc<Rules> {
    let cfg = proofline_hub::config::HubConfig::parse(
        r#"
[hub]
site = "plant-1"
data_dir = "/nonexistent"
key_file = "/nonexistent"
[reconcile]
enterprises = ["1ABC5"]
[[part_type]]
name = "CRI-2.2"
part_numbers = ["0445120123"]
serial_ranges = ["000000-999999"]
test_plans = ["TP-SYNTH"]
[[part_type.operation]]
name = "flow"
stations = ["flow-01"]
[[part_type.operation]]
name = "torque"
stations = ["torque-01"]
[[station]]
agent_id = "flow-01"
min_cycle_secs = 20
[[characteristic]]
name = "full_load_delivery"
repeatability = 0.4
"#,
    )
    .unwrap();
    let mut r = cfg.rules(&mut Default::default());
    if let Some(s) = qms_station {
        r.qms_stations.insert(s.to_owned());
    }
    Arc::new(r)
}

fn feed(r: &mut Reconciler, agent: &str, records: &[Vec<u8>]) {
    for (g, chunk) in records.chunks(64).enumerate() {
        let mut p = Pending::default();
        for (i, b) in chunk.iter().enumerate() {
            r.apply(&mut p, agent, (g * 64 + i) as u64, b).unwrap();
        }
        r.commit(p).unwrap();
    }
}

/// User + system CPU of the calling thread, from /proc.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the name and state.
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn reconcile_cost(records_total: u64) {
    let parts = records_total / 2 * 10 / 21;
    let flow = ledger("flow-01", parts, 0);
    let torque = ledger("torque-01", parts, 60_000_000);
    let n = (flow.len() + torque.len()) as f64;
    let t = Instant::now();
    for b in flow.iter().chain(&torque) {
        std::hint::black_box(Record::decode(b).unwrap());
    }
    let decode = t.elapsed();
    let mut r = Reconciler::scratch(rules(None)).unwrap();
    let t = Instant::now();
    feed(&mut r, "flow-01", &flow);
    feed(&mut r, "torque-01", &torque);
    let apply = t.elapsed();
    let view = r.view().unwrap();
    let mut by_rule = std::collections::BTreeMap::new();
    for f in view.findings.values() {
        *by_rule.entry(f.rule.name()).or_insert(0) += 1;
    }
    println!("reconcile: findings by rule {by_rule:?}");
    println!(
        "reconcile: {} records ({} injectors, {} findings): {:.1} µs per record, {:.1}× a decode alone ({:.2} µs)",
        n,
        view.injectors.len(),
        view.findings.len(),
        apply.as_secs_f64() * 1e6 / n,
        apply.as_secs_f64() / decode.as_secs_f64(),
        decode.as_secs_f64() * 1e6 / n
    );
}

fn qms_delivery(reports: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fake = rt.block_on(proofline_tests::qms::FakeQms::start()).unwrap();
    let tenant = fake.set_tenants(&["plant-1"])[0].clone();
    fake.add_user("hub@plant.example", "pw", &["plant-1"]);
    let pt = fake.seed("PartTypes", &tenant, serde_json::json!({"name": "CRI-2.2"}));
    let step = fake.seed(
        "Steps",
        &tenant,
        serde_json::json!({"name": "flow", "part_type": pt}),
    );
    let mut measurements = std::collections::BTreeMap::new();
    for c in [
        "full_load_delivery",
        "idle_delivery",
        "pilot_delivery",
        "back_leak",
        "opening_pressure",
    ] {
        let d = fake.seed(
            "MeasurementDefinitions",
            &tenant,
            serde_json::json!({"label": c, "type": "NUMERIC", "step": step,
                               "nominal": 50.0, "upper_tol": 200.0, "lower_tol": 50.0}),
        );
        measurements.insert(c.to_owned(), d);
    }
    let tmp = tempfile::tempdir().unwrap();
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, "pw\n").unwrap();
    let plan = proofline_hub::qms::QmsPlan {
        base_url: fake.base_url(),
        email: "hub@plant.example".into(),
        password_file: pw,
        tenant: Some("plant-1".into()),
        ca_file: None,
        timeout: Duration::from_secs(5),
        part_type: pt,
        stations: [(
            "flow-01".to_owned(),
            proofline_hub::qms::QmsStation {
                agent_id: "flow-01".into(),
                step,
                equipment: None,
                measurements,
            },
        )]
        .into(),
    };
    let flow = ledger("flow-01", reports, 0);
    let mut r = Reconciler::scratch(rules(Some("flow-01"))).unwrap();
    feed(&mut r, "flow-01", &flow);
    std::fs::create_dir_all(tmp.path().join("hub")).unwrap();
    let (store, _) = Store::open(
        &tmp.path().join("hub"),
        Access::Write(Origin::hub("plant-1").unwrap()),
        &StoreOptions::default(),
    )
    .unwrap();
    let (ledger, writer) = spawn_writer(store, WriterConfig::default()).unwrap();
    let status = Arc::new(Mutex::new(proofline_hub::qms::worker::QmsStatus::default()));
    let worker = proofline_hub::qms::worker::QmsWorker {
        plan,
        site: "plant-1".into(),
        index: r.index().clone(),
        ledger,
        alerts: Arc::new(Mutex::new(proofline_hub::alerts::AlertBook::new())),
        status: Arc::clone(&status),
        retry_dir: tmp.path().join("qms-retry"),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let s2 = stop.clone();
    let st = Arc::clone(&status);
    let t = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cpu0 = thread_cpu();
        let t0 = Instant::now();
        let want = reports;
        let done = rt.block_on(async move {
            let run = tokio::spawn(worker.run(s2.clone()));
            loop {
                if st.lock().unwrap().delivered >= want {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let elapsed = t0.elapsed();
            s2.cancel();
            let _ = run.await;
            elapsed
        });
        (done, thread_cpu() - cpu0)
    });
    let (wall, cpu) = t.join().unwrap();
    stop.cancel();
    let n = fake.reports().len() as f64;
    println!(
        "qms delivery: {n} reports in {:.2} s: {:.0} reports/s against the fake on loopback (a search and a POST each); hub-side CPU {:.0} µs per report",
        wall.as_secs_f64(),
        n / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / n
    );
    drop(fake);
    drop(rt);
    drop(writer);
}

fn main() {
    reconcile_cost(env("PROOFLINE_BENCH_RECORDS", 20_000));
    qms_delivery(env("PROOFLINE_BENCH_REPORTS", 1_000));
}
