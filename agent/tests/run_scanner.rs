//! Scanners as a technician meets them: unplugged and plugged back in (re-enumerated under a
//! new device, found again through its by-id link), operator badges and trim-code scans.

mod common;

use std::time::Duration;

use common::wait_metric;
use proofline_common::record::{Body, ScanOutcome, ScanRole, StationEvent};
use tokio::io::AsyncWriteExt;
use tokio_serial::SerialPort as _;

fn pty() -> (tokio_serial::SerialStream, String) {
    let (master, slave) = tokio_serial::SerialStream::pair().unwrap();
    let name = slave.name().unwrap();
    drop(slave);
    (master, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplugged_scanner_is_found_again_and_badges_and_trim_codes_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (data, head) = common::station(dir.path(), "final-01");
    let by_id = dir.path().join("usb-Honeywell_1900-if00");
    let (mut part, part_dev) = pty();
    std::os::unix::fs::symlink(&part_dev, &by_id).unwrap();
    let (mut badge, badge_dev) = pty();
    let (mut trim, trim_dev) = pty();
    let text = head
        + &format!(
            r#"
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
            by_id.display()
        );
    let agent = common::start(&text).await;
    let http = agent.http;
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

    agent.stop().await;
    let records = common::records(&data);
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
    let events = common::events(&records);
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
