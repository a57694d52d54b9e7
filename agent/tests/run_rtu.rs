//! Modbus RTU: two units on one line (a pty), one of them silent. The bus owner serves the
//! answering unit's handshake results while the silent unit only costs its own timeouts.
//! Replies with broken CRCs or cut short drop and rebuild the line, and lose nothing.

mod common;

use std::time::Duration;

use proofline_common::record::{Body, RawData, StationEvent};
use proofline_tests::benchsim::{BenchOptions, FlowBench};
use proofline_tests::proxy::RtuFaultBridge;
use tokio_serial::SerialPort as _;

fn unit(name: &str, unit: u8, port: &str) -> String {
    format!(
        r#"
[[source]]
name = "{name}"
type = "modbus_rtu"
port = "{port}"
baud = 19200
frame = "8E1"
inter_request_pause_ms = 2
unit_id = {unit}
device = "RTU-{unit}"
timeout_ms = 200
poll_interval_ms = 2
addressing = "zero_based"
block_start = 100
block_registers = 40
ready = {{ pattern = "handshake", ready_register = 98, ack_register = 99 }}
result_id = {{ offset = 18, type = "u32" }}

[[source.point]]
name = "full_load_delivery"
offset = 0
type = "f32"
unit = "mm3/stroke"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_unit_on_a_shared_line_does_not_stall_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (data, head) = common::station(dir.path(), "rtu-01");
    let (bench_end, agent_end) = tokio_serial::SerialStream::pair().unwrap();
    let port = agent_end.name().unwrap();
    // Keep this end open: when the last slave descriptor of a pty closes, the master side (the
    // simulated bench) sees a hang-up. A real RS-485 adapter has no such coupling.
    let _line = agent_end;
    let bench = FlowBench::start_rtu(
        BenchOptions {
            results: 15,
            ..BenchOptions::default()
        },
        bench_end,
        1,
    );
    let text = head + &unit("bench-unit-1", 1, &port) + &unit("absent-unit-2", 2, &port);
    let agent = common::start(&text).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while bench.acknowledged() < 15 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 15 over RTU",
            bench.acknowledged()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.stop().await;

    let records = common::records(&data);
    let ids: Vec<String> = records
        .iter()
        .filter_map(|r| match r.body() {
            Body::InspectionResult(x) => {
                assert!(matches!(
                    &x.raw,
                    RawData::ModbusRegisters {
                        unit: 1,
                        function: 3,
                        ..
                    }
                ));
                x.device_result_id.clone()
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        ids,
        (1..=15).map(|n: u32| n.to_string()).collect::<Vec<_>>()
    );
    let down: Vec<_> = records
        .iter()
        .filter_map(|r| match r.body() {
            Body::StationEvent(StationEvent::SourceDown { source, error }) => {
                Some((source.clone(), error.clone()))
            }
            _ => None,
        })
        .collect();
    assert!(
        down.iter()
            .any(|(s, e)| s == "absent-unit-2" && e.contains("no reply within 200 ms")),
        "{down:?}"
    );
    assert!(!down.iter().any(|(s, _)| s == "bench-unit-1"), "{down:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crc_errors_and_cut_replies_rebuild_the_line_and_lose_or_repeat_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (data, head) = common::station(dir.path(), "rtu-01");
    // The agent opens the slave of one pty pair, the bench serves on the master of another;
    // the bridge joins the two other ends and damages the bench's replies.
    let (bridge_agent_side, agent_end) = tokio_serial::SerialStream::pair().unwrap();
    let (bench_end, bridge_device_side) = tokio_serial::SerialStream::pair().unwrap();
    let port = agent_end.name().unwrap();
    let _line = agent_end;
    let bench = FlowBench::start_rtu(
        BenchOptions {
            results: 20,
            ..BenchOptions::default()
        },
        bench_end,
        1,
    );
    let bridge = RtuFaultBridge::start(bridge_agent_side, bridge_device_side);
    bridge.corrupt_crc_every(23);
    bridge.truncate_every(61);
    let agent = common::start(&(head + &unit("bench-unit-1", 1, &port))).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while bench.acknowledged() < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 20 through the damaging line ({:?})",
            bench.acknowledged(),
            bridge.damage()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let damage = bridge.damage();
    // A clean line again (and time for a reply damaged just before to time out): the unit is
    // back up before the agent stops.
    bridge.corrupt_crc_every(0);
    bridge.truncate_every(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    common::wait_metric(
        agent.http,
        "proofline_agent_source_up{source=\"bench-unit-1\"} 1",
    )
    .await;
    agent.stop().await;
    assert!(
        damage.crc >= 2 && damage.truncated >= 1,
        "faults injected: {damage:?}"
    );

    let records = common::records(&data);
    let ids: Vec<String> = common::results(&records)
        .iter()
        .map(|r| r.device_result_id.clone().unwrap())
        .collect();
    assert_eq!(
        ids,
        (1..=20).map(|n: u32| n.to_string()).collect::<Vec<_>>(),
        "every result the bench reported complete, once"
    );
    let events = common::events(&records);
    let downs: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            StationEvent::SourceDown { source, error } if source == "bench-unit-1" => Some(error),
            _ => None,
        })
        .collect();
    let ups = events
        .iter()
        .filter(|e| matches!(e, StationEvent::SourceUp { .. }))
        .count();
    assert!(
        downs.iter().any(|e| e.contains("bad CRC")),
        "a broken CRC is named: {downs:?}"
    );
    assert!(
        downs.iter().any(|e| e.contains("reply cut short")),
        "a cut reply is named: {downs:?}"
    );
    assert_eq!(ups, downs.len() + 1, "the line is rebuilt after each fault");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reads_an_rtu_unit() {
    let (bench_end, agent_end) = tokio_serial::SerialStream::pair().unwrap();
    let port = agent_end.name().unwrap();
    let _line = agent_end;
    let bench = FlowBench::start_rtu(
        BenchOptions {
            results: 1,
            ..BenchOptions::default()
        },
        bench_end,
        1,
    );
    while bench.produced().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[station]\nsite = \"plant-1\"\nagent_id = \"rtu-01\"\ndata_dir = \"/nonexistent\"\nkey_file = \"/nonexistent\"\n{}",
            unit("bench-unit-1", 1, &port)
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_proofline-agent"))
        .args([
            "probe",
            "--config",
            cfg.to_str().unwrap(),
            "--source",
            "bench-unit-1",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = &bench.produced()[0];
    assert!(stdout.contains("RTU"), "{stdout}");
    assert!(
        stdout.contains(&format!("ABCD*={}", f64::from(p.full_load))),
        "{stdout}"
    );
}
