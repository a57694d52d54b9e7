//! Scanners as a technician meets them: unplugged and plugged back in (re-enumerated under a
//! new device, found again through its by-id link), operator badges and trim-code scans.

use std::time::Duration;

use proofline_agent::config::AgentConfig;
use proofline_common::record::{Body, Record, ScanOutcome, ScanRole, StationEvent};
use proofline_common::store::{Access, Store, StoreOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialPort as _;
use tokio_util::sync::CancellationToken;

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

async fn wait_metric(http: std::net::SocketAddr, line: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = http_get(http, "/metrics").await;
        if m.lines().any(|l| l == line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{line} never showed in\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pty() -> (tokio_serial::SerialStream, String) {
    let (master, slave) = tokio_serial::SerialStream::pair().unwrap();
    let name = slave.name().unwrap();
    drop(slave);
    (master, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplugged_scanner_is_found_again_and_badges_and_trim_codes_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("agent.key");
    let origin = proofline_common::Origin::parse("proofline/plant-1/final-01").unwrap();
    proofline_agent::keyfile::generate(&origin, &key).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let by_id = dir.path().join("usb-Honeywell_1900-if00");
    let (mut part, part_dev) = pty();
    std::os::unix::fs::symlink(&part_dev, &by_id).unwrap();
    let (mut badge, badge_dev) = pty();
    let (mut trim, trim_dev) = pty();
    let text = format!(
        r#"
[station]
site = "plant-1"
agent_id = "final-01"
data_dir = "{}"
key_file = "{}"
[http]
listen = "127.0.0.1:0"
[[source]]
name = "part-scanner"
type = "scanner"
port = "{}"
[[source]]
name = "badge-reader"
type = "scanner"
port = "{badge_dev}"
role = "operator_badge"
require_aim = false
debounce_ms = 100
[[source]]
name = "trim-scanner"
type = "scanner"
port = "{trim_dev}"
role = "trim_code"
require_aim = false
"#,
        data.display(),
        key.display(),
        by_id.display()
    );
    let (cfg, problems) = AgentConfig::parse(&text).unwrap();
    assert!(
        problems.is_empty() && cfg.problems().is_empty(),
        "{problems:?} {:?}",
        cfg.problems()
    );
    let shutdown = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let agent = tokio::spawn(proofline_agent::run::run(
        cfg,
        proofline_common::hash::sha256(text.as_bytes()),
        shutdown.clone(),
        proofline_agent::run::RunOptions {
            ready: Some(ready_tx),
            ..Default::default()
        },
    ));
    let http = ready_rx.await.unwrap().http;
    for s in ["part-scanner", "badge-reader", "trim-scanner"] {
        wait_metric(
            http,
            &format!("proofline_agent_source_up{{source=\"{s}\"}} 1"),
        )
        .await;
    }
    badge.write_all(b"B0042\r").await.unwrap();
    wait_metric(
        http,
        "proofline_agent_scans_total{source=\"badge-reader\"} 1",
    )
    .await;
    part.write_all(b"]d1[)>\x1e06\x1d18S1ABC5A0047731\x1e\x04\r")
        .await
        .unwrap();
    wait_metric(
        http,
        "proofline_agent_scans_total{source=\"part-scanner\"} 1",
    )
    .await;
    trim.write_all(b"A1B2C3D\r").await.unwrap();
    wait_metric(
        http,
        "proofline_agent_scans_total{source=\"trim-scanner\"} 1",
    )
    .await;

    // Unplugged: the device disappears; the agent reports it and keeps trying.
    drop(part);
    wait_metric(http, "proofline_agent_source_up{source=\"part-scanner\"} 0").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Plugged back in: a new device node, the same by-id name.
    let (mut part, part_dev) = pty();
    std::fs::remove_file(&by_id).unwrap();
    std::os::unix::fs::symlink(&part_dev, &by_id).unwrap();
    wait_metric(http, "proofline_agent_source_up{source=\"part-scanner\"} 1").await;
    part.write_all(b"]d1[)>\x1e06\x1d18S1ABC5A0047732\x1e\x04\r")
        .await
        .unwrap();
    wait_metric(
        http,
        "proofline_agent_scans_total{source=\"part-scanner\"} 2",
    )
    .await;
    badge.write_all(b"B0042\r").await.unwrap();
    wait_metric(
        http,
        "proofline_agent_scans_total{source=\"badge-reader\"} 2",
    )
    .await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (store, _) = Store::open(&data, Access::Read, &StoreOptions::default()).unwrap();
    let records: Vec<Record> = store
        .reader()
        .range(0..store.head().size)
        .map(|r| Record::decode(&r.unwrap().1).unwrap())
        .collect();
    let scans: Vec<(ScanRole, ScanOutcome)> = records
        .iter()
        .filter_map(|r| match r.body() {
            Body::PartScanned(p) => Some((p.role, p.outcome.clone())),
            _ => None,
        })
        .collect();
    assert!(
        scans.contains(&(ScanRole::TrimCode, ScanOutcome::Value("A1B2C3D".into()))),
        "{scans:?}"
    );
    let parts = scans
        .iter()
        .filter(|(r, o)| *r == ScanRole::Part && matches!(o, ScanOutcome::Identified(_)))
        .count();
    assert_eq!(parts, 2, "one scan before the unplug, one after");
    let events: Vec<StationEvent> = records
        .iter()
        .filter_map(|r| match r.body() {
            Body::StationEvent(e) => Some(e.clone()),
            _ => None,
        })
        .collect();
    assert!(events
        .iter()
        .any(|e| matches!(e, StationEvent::OperatorLogin { badge, .. } if badge == "B0042")));
    assert!(events
        .iter()
        .any(|e| matches!(e, StationEvent::OperatorLogout { badge, .. } if badge == "B0042")));
    assert!(events
        .iter()
        .any(|e| matches!(e, StationEvent::SourceDown { source, .. } if source == "part-scanner")));
    let ups = events
        .iter()
        .filter(|e| matches!(e, StationEvent::SourceUp { source, .. } if source == "part-scanner"))
        .count();
    assert_eq!(ups, 2, "{events:?}");
}
