//! Each result-ready pattern against a scripted Modbus device: two injectors in a row with the
//! same measured values are two results (only a block presented again after a restart, a
//! reconnect or a device reboot is the same result), and a counter that jumps is an alarm.

mod common;

use proofline_common::record::StationEvent;
use proofline_tests::registers::RegisterDevice;
use tokio_modbus::ExceptionCode;

const BLOCK: u16 = 100;
/// One injector's result: full-load delivery 62.0 mm3/stroke (f32 ABCD) and a status word.
const VALUES: [u16; 3] = [0x4278, 0x0000, 1];

fn source(addr: std::net::SocketAddr, ready: &str) -> String {
    format!(
        r#"
[[source]]
name = "bench"
type = "modbus_tcp"
address = "{addr}"
unit_id = 1
device = "SCRIPTED"
timeout_ms = 500
poll_interval_ms = 5
addressing = "zero_based"
block_start = {BLOCK}
block_registers = 3
ready = {ready}

[[source.point]]
name = "full_load_delivery"
offset = 0
type = "f32"
unit = "mm3/stroke"
"#
    )
}

async fn results(http: std::net::SocketAddr, n: u32) {
    common::wait_metric(
        http,
        &format!("proofline_agent_results_total{{source=\"bench\"}} {n}"),
    )
    .await;
}

/// Runs `drive` against a fresh agent and device; returns the ledger's events and the number of
/// results recorded.
async fn run<F, Fut>(
    ready: &str,
    read_to_clear: Option<u16>,
    drive: F,
) -> (Vec<StationEvent>, usize)
where
    F: FnOnce(RegisterDevice, std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let (data, head) = common::station(dir.path(), "bench-01");
    let device = RegisterDevice::start(read_to_clear).await.unwrap();
    device.set(BLOCK, &VALUES);
    let agent = common::start(&(head + &source(device.addr, ready))).await;
    let http = agent.http;
    drive(device, http).await;
    agent.stop().await;
    let records = common::records(&data);
    (common::events(&records), common::results(&records).len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_two_equal_results_are_both_recorded_and_a_jump_is_alarmed() {
    let (events, n) = run(
        r#"{ pattern = "counter", counter_register = 90 }"#,
        None,
        |device, http| async move {
            device.set(90, &[1]);
            results(http, 1).await;
            device.set(90, &[2]);
            results(http, 2).await;
            device.set(90, &[5]);
            results(http, 3).await;
            // The link is lost; the bench counts on meanwhile: results 6 and 7 were never read.
            device.set_stalled(true);
            common::wait_metric(http, "proofline_agent_source_up{source=\"bench\"} 0").await;
            device.set(90, &[8]);
            device.set_stalled(false);
            results(http, 4).await;
        },
    )
    .await;
    assert_eq!(n, 4);
    for (from, to) in [(2, 5), (5, 8)] {
        let said = format!("result counter jumped from {from} to {to}: 2 result(s)");
        assert!(
            events.iter().any(|e| matches!(e, StationEvent::Alarm(a)
                if a.code == "modbus.missed_results" && a.message.contains(&said))),
            "{said}: {events:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_to_clear_flag_two_equal_results_are_both_recorded() {
    let (_, n) = run(
        r#"{ pattern = "flag", flag_register = 91 }"#,
        Some(91),
        |device, http| async move {
            device.set(91, &[1]);
            results(http, 1).await;
            assert_eq!(device.get(91), 0, "reading the flag cleared it");
            device.set(91, &[1]);
            results(http, 2).await;
            // The block cannot be read after the flag was consumed: the result is lost, and
            // the ledger says so.
            device.refuse_reads(BLOCK, Some(ExceptionCode::ServerDeviceFailure));
            device.set(91, &[1]);
            common::until("the flag consumed", || device.get(91) == 0).await;
            common::wait_metric(
                http,
                "proofline_agent_alarms_total{source=\"bench\",code=\"modbus.result_lost\"} 1",
            )
            .await;
            device.refuse_reads(BLOCK, None);
        },
    )
    .await;
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toggle_two_equal_results_are_both_recorded_and_mirrored() {
    let (_, n) = run(
        r#"{ pattern = "toggle", toggle_register = 92, mirror_register = 93 }"#,
        None,
        |device, _| async move {
            device.set(92, &[1]);
            common::until("the mirror follows the toggle", || device.get(93) == 1).await;
            device.set(92, &[0]);
            common::until("the mirror follows the toggle back", || device.get(93) == 0).await;
        },
    )
    .await;
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_two_equal_results_are_both_recorded_and_a_re_presented_one_once() {
    let (events, n) = run(
        r#"{ pattern = "handshake", ready_register = 94, ack_register = 95 }"#,
        None,
        |device, _| async move {
            let ack = |v: u16, what: &'static str| {
                let d = device.clone();
                async move { common::until(what, || d.get(95) == v).await }
            };
            device.set(94, &[1]);
            ack(1, "the first result acknowledged").await;
            // The device reboots before it saw the ack: the same result, presented again.
            device.set(95, &[0]);
            ack(1, "the re-presented result acknowledged").await;
            device.set(94, &[0]);
            ack(0, "the ack released").await;
            // The next injector, with the very same values: a new result.
            device.set(94, &[1]);
            ack(1, "the second result acknowledged").await;
            device.set(94, &[0]);
            ack(0, "the ack released").await;
        },
    )
    .await;
    assert_eq!(n, 2, "{events:?}");
    assert!(
        events.iter().any(|e| matches!(e, StationEvent::Alarm(a)
            if a.code == "modbus.result_presented_again")),
        "{events:?}"
    );
}
