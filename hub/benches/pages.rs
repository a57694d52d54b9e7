//! Page figures (issue 12), printed, never asserted: one hub in-process holding two stations'
//! records of `PROOFLINE_BENCH_INJECTORS` injectors (default 500; each scanned and tested at a
//! flow bench and a torque station, as the demo's are), and 10 signed-in clients (each with its
//! own session, signed in with password and TOTP) asking for pages at once, one request after
//! another, for `PROOFLINE_BENCH_SECS` (default 15 s):
//!
//! the stations page, an injector search by serial, an injector page, the findings, the audit
//! log, and an injector in the JSON API.
//!
//! Printed: per page p50 / p99 / max, the p99 over all (budget: ≤ 100 ms), requests/s, and the
//! access audit's keeping up: records written, accesses refused for want of one (must be 0),
//! and records per durable commit.
//!
//! Run with `cargo bench -p proofline-hub --bench pages`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/web.rs"]
mod web_common;

use std::time::{Duration, Instant};

use common::*;
use proofline_common::record::{
    now_micros, Attribute, Binding, Body, Identity, PartScanned, ScanOutcome, ScanRole, Verdict,
};
use proofline_common::store::Entry;
use web_common::*;

const CLIENTS: usize = 10;

/// The path a client asks for at its i-th request.
type PathOf = Box<dyn Fn(usize) -> String + Send + Sync>;

fn uii(i: usize) -> String {
    format!("D1ABC50445120123{:06}", 100 + i)
}

fn mark(i: usize) -> Body {
    let a = |n: &str, v: &str| Attribute {
        name: n.into(),
        value: v.into(),
    };
    Body::PartScanned(PartScanned {
        source: "scanner".into(),
        role: ScanRole::Part,
        symbology: Some("]d2".into()),
        raw: proofline_common::bytes::Bytes(uii(i).into_bytes()),
        outcome: ScanOutcome::Identified(Identity {
            uii: uii(i),
            format: "06".into(),
            construct: "2".into(),
            attributes: vec![
                a("iac", "D"),
                a("enterprise", "1ABC5"),
                a("part_number", "0445120123"),
                a("serial", &format!("{:06}", 100 + i)),
            ],
        }),
    })
}

fn result(i: usize, seed: u64) -> Body {
    let mut b = proofline_common::synth::inspection_result(seed, 32);
    if let Body::InspectionResult(r) = &mut b {
        r.binding = Binding::Bound {
            uii: uii(i),
            scan_seq: 0,
        };
        r.verdict = Verdict::Ok;
    }
    b
}

async fn fill(st: &Station, n: usize, seed: u64) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(25) {
        let entries = chunk
            .iter()
            .flat_map(|&i| [mark(i), result(i, seed + i as u64)])
            .map(|body| Entry {
                received_at: now_micros(),
                body,
            })
            .collect();
        st.ledger.append(entries).await.unwrap();
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let injectors: usize = std::env::var("PROOFLINE_BENCH_INJECTORS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let secs: u64 = std::env::var("PROOFLINE_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let mut toml = plant.hub_toml(&["flow-01", "torque-01"], None, free_port());
    toml.push_str(concat!(
        "[[part_type]]\nname = \"CRI-2.2\"\npart_numbers = [\"0445120123\"]\n",
        "[[part_type.operation]]\nname = \"flow\"\nstations = [\"flow-01\"]\n",
        "[[part_type.operation]]\nname = \"torque\"\nstations = [\"torque-01\"]\n",
    ));
    let cfg = dir.path().join("hub.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let hub = Hub::start(&toml).await;
    let addr = hub.api;
    let mut flow = Station::start(&plant, "flow-01", plant.hub_section(&plant.broker(), 5));
    let mut torque = Station::start(&plant, "torque-01", plant.hub_section(&plant.broker(), 5));
    fill(&flow, injectors, 0).await;
    fill(&torque, injectors, 100_000).await;
    flow.wait_cosigned(Duration::from_secs(120)).await;
    torque.wait_cosigned(Duration::from_secs(120)).await;
    let last = uii(injectors - 1);
    assert!(
        until(Duration::from_secs(120), || async {
            let (status, body) = http_get(addr, &format!("/api/v1/injectors/{last}")).await;
            status == 200 && body.contains("torque-01")
        })
        .await,
        "the reconciled view did not catch up"
    );
    let mut browsers = Vec::new();
    for c in 0..CLIENTS {
        let name = format!("bench-{c}");
        // Auditors may open every page measured.
        let password = add_user(&cfg, &name, "auditor", &["--us-person"]).await;
        let mut p = Person {
            name,
            password,
            secret: None,
            last_code: String::new(),
        };
        browsers.push(sign_in(addr, &mut p).await);
    }
    let before = http_get(addr, "/metrics").await.1;
    println!(
        "pages: {} injectors ({} records at two stations), {CLIENTS} signed-in clients, {secs} s",
        injectors,
        4 * injectors
    );
    let pages: Vec<(&str, PathOf)> = vec![
        ("stations", Box::new(|_| "/stations".to_owned())),
        (
            "injector search",
            Box::new(move |i| format!("/injectors?q={:06}", 100 + i % injectors)),
        ),
        (
            "injector page",
            Box::new(move |i| format!("/injectors/{}", uii(i * 7 % injectors))),
        ),
        ("findings", Box::new(|_| "/findings".to_owned())),
        ("audit log", Box::new(|_| "/audit".to_owned())),
        (
            "injector API",
            Box::new(move |i| format!("/api/v1/injectors/{}", uii(i * 13 % injectors))),
        ),
    ];
    let pages = std::sync::Arc::new(pages);
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (c, mut b) in browsers.into_iter().enumerate() {
        let pages = std::sync::Arc::clone(&pages);
        tasks.push(tokio::spawn(async move {
            let mut times: Vec<Vec<Duration>> = vec![Vec::new(); pages.len()];
            let mut i = c;
            let mut failures = 0u64;
            while Instant::now() < end {
                let k = i % pages.len();
                let path = (pages[k].1)(i);
                let t = Instant::now();
                let r = b.go(addr, "GET", &path, "").await;
                times[k].push(t.elapsed());
                if r.status != 200 && r.status != 303 {
                    failures += 1;
                    if failures == 1 {
                        eprintln!("{path}: {} {}", r.status, r.body);
                    }
                }
                i += 1;
            }
            (times, failures)
        }));
    }
    let mut all: Vec<Vec<Duration>> = vec![Vec::new(); pages.len()];
    let mut failures = 0;
    for t in tasks {
        let (times, f) = t.await.unwrap();
        failures += f;
        for (k, v) in times.into_iter().enumerate() {
            all[k].extend(v);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = http_get(addr, "/metrics").await.1;
    let mut everything = Vec::new();
    for (k, (name, _)) in pages.iter().enumerate() {
        let v = &mut all[k];
        everything.extend(v.iter().copied());
        println!(
            "  {name:<16} {:>6} requests  p50 {:>9}  p99 {:>9}  max {:>9}",
            v.len(),
            ms(pct(v, 0.50)),
            ms(pct(v, 0.99)),
            ms(pct(v, 1.0))
        );
    }
    let n = everything.len();
    let p99 = pct(&mut everything, 0.99);
    println!(
        "  all              {n:>6} requests  p99 {} (budget ≤ 100 ms: {}), {:.0} requests/s, {failures} failed",
        ms(p99),
        if p99 <= Duration::from_millis(100) { "met" } else { "NOT met" },
        n as f64 / elapsed
    );
    let d = |m: &str| metric(&after, m) - metric(&before, m);
    let (recorded, refused, commits) = (
        d("proofline_hub_access_audit_recorded_total"),
        d("proofline_hub_access_audit_refused_total"),
        d("proofline_hub_access_audit_commits_total"),
    );
    println!(
        "  access audit: {recorded} records in {commits} durable commits ({:.1} per commit), {refused} accesses refused for want of a record",
        recorded as f64 / commits.max(1) as f64
    );
    flow.stop().await;
    torque.stop().await;
    hub.stop().await;
}
