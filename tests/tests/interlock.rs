//! The route interlock end to end, through the embedded broker and through Mosquitto: a real
//! agent (scanner on a pty, a simulated bench whose interlock register it drives) asks a real
//! hub about each scanned injector.
//!
//! - An injector scanned at torque before its flow test is refused (bench held), with the
//!   reason; once the flow station's passing result is witnessed it is allowed (bench released).
//! - With the hub gone the station's `allow_and_flag` policy releases the bench, records that
//!   it did, and the hub raises `interlock_bypassed` once that record reaches it.
//! - Every answer the station acted on is in its ledger verbatim and verifies with the hub's
//!   public key alone; the decisions are on the injector's timeline at the hub.

#[path = "../../hub/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;
use proofline_common::note::VerifierKey;
use proofline_common::record::{
    now_micros, Binding, Body, Identity, InterlockDecision, InterlockOutcome, PartScanned,
    ScanOutcome, ScanRole, StationEvent, Verdict,
};
use proofline_common::store::Entry;
use proofline_common::wire::{Clearance, ClearanceBody, ClearanceMsg, DOMAIN_CLEARANCE};
use proofline_tests::benchsim::{BenchOptions, FlowBench};
use tokio::io::AsyncWriteExt;

const FLOW: &str = "flow-01";
const TORQUE: &str = "torque-01";

const ROUTE: &str = r#"
[[part_type]]
name = "CRI-2.2"
[[part_type.operation]]
name = "flow_test"
stations = ["flow-01"]
[[part_type.operation]]
name = "torque"
stations = ["torque-01"]
"#;

fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn agent_metric(http: std::net::SocketAddr, name: &str) -> u64 {
    metric(&http_get(http, "/metrics").await.1, name)
}

/// Waits until the agent's counter `name` reaches `n`.
async fn wait_agent_metric(http: std::net::SocketAddr, name: &str, n: u64, label: &str) {
    let ok = until(Duration::from_secs(20), || async {
        agent_metric(http, name).await >= n
    })
    .await;
    let m = http_get(http, "/metrics").await.1;
    let seen: Vec<&str> = m
        .lines()
        .filter(|l| l.contains("interlock") || l.contains("scan"))
        .collect();
    assert!(ok, "{label}: {name} did not reach {n}: {seen:#?}");
}

/// Waits until the bench's interlock register shows `want`.
async fn wait_gate(bench: &FlowBench, want: u16, label: &str) {
    let ok = until(Duration::from_secs(10), || async {
        bench.interlock() == want
    })
    .await;
    assert!(
        ok,
        "{label}: interlock register {} (want {want})",
        bench.interlock()
    );
}

fn scan_frame(serial: u32) -> Vec<u8> {
    format!("]d1[)>\x1e06\x1d18S1ABC5A{serial:07}\x1e\x04\r").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interlock_via_embedded_broker() {
    interlock(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interlock_via_mosquitto() {
    interlock(true).await;
}

async fn interlock(mosquitto: bool) {
    let label = if mosquitto { "Mosquitto" } else { "embedded" };
    let dir = tempfile::tempdir().unwrap();
    let Some(via) = Via::new(mosquitto, dir.path()) else {
        return;
    };
    let plant = Plant::new(dir.path());
    let broker = via.broker(&plant);
    let hub_toml = via.hub_toml(&plant, &[FLOW, TORQUE], 0) + ROUTE;
    let hub = Hub::start(&hub_toml).await;
    let flow = Station::start(&plant, FLOW, plant.hub_section(&broker, 1));

    // The torque station: a scanner on a pty, a bench (no results of its own here) whose
    // interlock register the station drives.
    let bench = FlowBench::start(BenchOptions {
        results: 0,
        ..BenchOptions::default()
    })
    .await
    .unwrap();
    let (mut scanner, scanner_dev) = {
        use tokio_serial::SerialPort as _;
        let (master, slave) = tokio_serial::SerialStream::pair().unwrap();
        let name = slave.name().unwrap();
        drop(slave);
        (master, name)
    };
    plant.station_key(TORQUE);
    let data = plant.dir.join("torque-ledger");
    std::fs::create_dir(&data).unwrap();
    let text = format!(
        "[station]\nsite = \"{SITE}\"\nagent_id = \"{TORQUE}\"\ndata_dir = \"{}\"\nkey_file = \"{}\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\
         [interlock]\ntimeout_ms = 1500\non_unreachable = \"allow_and_flag\"\n\
         output = {{ kind = \"modbus_register\", source = \"flow-bench\", register = 97 }}\n\
         [hub]\ncosigner_key = \"{}\"\nheartbeat_secs = 1\n[hub.mqtt]\nbroker = \"{broker}\"\n\
         reconnect_max_ms = 500\nusername = \"{TORQUE}\"\npassword_file = \"{}\"\n\
         {}\n[[source]]\nname = \"scanner\"\ntype = \"scanner\"\nport = \"{scanner_dev}\"\ndebounce_ms = 100\n",
        data.display(),
        plant.dir.join(format!("{TORQUE}.key")).display(),
        plant.cosigner,
        plant.station_secret(TORQUE).display(),
        FlowBench::source_toml(bench.addr, 20, 500),
    );
    let (cfg, problems) = proofline_agent::config::AgentConfig::parse(&text).unwrap();
    assert!(
        problems.is_empty() && cfg.problems().is_empty(),
        "{problems:?} {:?}",
        cfg.problems()
    );
    let plan = proofline_agent::config::AgentPlan::build(
        &cfg,
        proofline_common::hash::sha256(text.as_bytes()),
    )
    .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (ready, started) = tokio::sync::oneshot::channel();
    let agent = tokio::spawn(proofline_agent::run::run(
        plan,
        shutdown.clone(),
        proofline_agent::run::RunOptions {
            ready: Some(ready),
            ..Default::default()
        },
    ));
    let http = started.await.unwrap().http;
    wait_agent_metric(http, "proofline_agent_hub_connected", 1, label).await;
    // Idle: no part, the bench's register written idle (0).
    let ok = until(Duration::from_secs(10), || async {
        bench.interlock_writes() >= 1
    })
    .await;
    assert!(
        ok && bench.interlock() == 0,
        "{label}: idle gate not written"
    );

    // 1. Scanned at torque before any flow test: refused, held.
    scanner.write_all(&scan_frame(1)).await.unwrap();
    wait_agent_metric(http, "proofline_agent_interlock_refused_total", 1, label).await;
    wait_gate(&bench, 2, label).await;

    // The UII as the station parsed it, from its timeline at the hub once forwarded.
    let findings = |uii: String| {
        let api = hub.api;
        async move { get_json(api, &format!("/api/v1/injectors/{uii}")).await }
    };
    let uii = "D1ABC5A0000001".to_owned();
    let ok = until(Duration::from_secs(20), || {
        let f = findings(uii.clone());
        async move {
            f.await["timeline"]
                .as_array()
                .is_some_and(|t| t.iter().any(|e| e["kind"].get("Interlock").is_some()))
        }
    })
    .await;
    assert!(
        ok,
        "{label}: the refusal is on the injector's timeline: {}",
        findings(uii.clone()).await
    );

    // 2. Its flow test passes at the flow station and is witnessed: now allowed, released.
    let scan = Body::PartScanned(PartScanned {
        source: "scanner".into(),
        role: ScanRole::Part,
        symbology: Some("]d1".into()),
        raw: proofline_common::bytes::Bytes(scan_frame(1)),
        outcome: ScanOutcome::Identified(Identity {
            uii: uii.clone(),
            format: "06".into(),
            construct: "uii".into(),
            attributes: vec![],
        }),
    });
    let mut result = proofline_common::synth::inspection_result(1, 8);
    if let Body::InspectionResult(r) = &mut result {
        r.binding = Binding::Bound {
            uii: uii.clone(),
            scan_seq: 0,
        };
        r.verdict = Verdict::Ok;
    }
    let t = now_micros() - 120_000_000;
    flow.ledger
        .append(vec![
            Entry {
                received_at: t,
                body: scan,
            },
            Entry {
                received_at: t + 5_000_000,
                body: result,
            },
        ])
        .await
        .unwrap();
    let ok = until(Duration::from_secs(20), || {
        let f = findings(uii.clone());
        async move { f.await["route"]["next"] == "torque" }
    })
    .await;
    assert!(ok, "{label}: flow test not reconciled");
    scanner.write_all(&scan_frame(1)).await.unwrap();
    wait_agent_metric(http, "proofline_agent_interlock_allowed_total", 1, label).await;
    wait_gate(&bench, 1, label).await;
    let m = http_get(hub.api, "/metrics").await.1;
    assert_eq!(
        metric(&m, "proofline_hub_interlock_allowed_total"),
        1,
        "{label}"
    );
    assert_eq!(
        metric(&m, "proofline_hub_interlock_refused_total"),
        1,
        "{label}"
    );
    assert_eq!(
        metric(&m, "proofline_hub_interlock_ignored_total"),
        0,
        "{label}"
    );

    // 3. The hub is gone: the offline policy releases the bench for another injector, and
    // says so in the ledger.
    hub.stop().await;
    scanner.write_all(&scan_frame(2)).await.unwrap();
    wait_agent_metric(
        http,
        "proofline_agent_interlock_unreachable_total",
        1,
        label,
    )
    .await;
    wait_gate(&bench, 1, label).await;

    // The hub is back: the release without clearance is a finding.
    let hub = Hub::start(&hub_toml).await;
    let bypassed = "D1ABC5A0000002";
    let ok = until(Duration::from_secs(30), || async {
        let f = get_json(hub.api, "/api/v1/findings?rule=interlock_bypassed").await;
        f["findings"]
            .as_array()
            .is_some_and(|a| a.iter().any(|f| f["uii"] == bypassed))
    })
    .await;
    assert!(
        ok,
        "{label}: no interlock_bypassed finding: {}",
        get_json(hub.api, "/api/v1/findings").await
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    flow.stop().await;
    hub.stop().await;
    drop(via);

    // The station's ledger: three decisions; the two the hub answered verify with the hub's
    // public key alone, and say what the station did.
    let decisions: Vec<InterlockDecision> = station_records(&data)
        .into_iter()
        .filter_map(|r| match r.body() {
            Body::StationEvent(StationEvent::Interlock(d)) => Some(d.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(decisions.len(), 3, "{label}: {decisions:?}");
    let hub_key = VerifierKey::parse(&plant.cosigner).unwrap();
    for (d, allowed) in decisions[..2].iter().zip([false, true]) {
        let ClearanceMsg::V2(signed) = ClearanceMsg::decode(&d.answer.as_ref().unwrap().0).unwrap();
        let body: ClearanceBody = signed.open(DOMAIN_CLEARANCE, &hub_key).unwrap();
        assert_eq!(
            (body.agent_id.as_str(), body.uii.as_str()),
            (TORQUE, uii.as_str())
        );
        assert_eq!(d.released, allowed, "{label}: {d:?}");
        match (&body.clearance, &d.outcome) {
            (Clearance::Refused { code, reason }, InterlockOutcome::Refused { code: c, .. }) => {
                assert!(
                    !allowed && code == "out_of_sequence" && c == code,
                    "{reason}"
                );
                assert!(reason.contains("flow_test"), "{reason}");
            }
            (Clearance::Allowed { operation }, InterlockOutcome::Allowed { .. }) => {
                assert!(allowed && operation == "torque");
            }
            other => panic!("{label}: {other:?}"),
        }
    }
    let d = &decisions[2];
    assert!(d.released && d.answer.is_none(), "{label}: {d:?}");
    assert!(
        matches!(&d.outcome, InterlockOutcome::Unreachable { policy, .. } if policy == "allow_and_flag"),
        "{label}: {d:?}"
    );
}
