//! A torque station: a scanner and an Open Protocol controller. The scanned UII is downloaded
//! to the controller, each tightening is recorded once and acknowledged (MID 0062) after it is
//! durable, gaps in tightening ids raise an alarm, and a dropped link loses and repeats nothing.

mod common;

use std::time::Duration;

use common::until;

use proofline_common::record::{Binding, Measured, RawData, StationEvent, Verdict};
use proofline_tests::torque::Controller;
use tokio::io::AsyncWriteExt;
use tokio_serial::SerialPort as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tightenings_are_bound_recorded_once_and_acknowledged_after_they_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (data, head) = common::station(dir.path(), "torque-01");
    let controller = Controller::start("PF6000-SIM").await.unwrap();
    let (mut scanner, slave) = tokio_serial::SerialStream::pair().unwrap();
    let port = slave.name().unwrap();
    drop(slave);
    let text = head
        + &format!(
            r#"
[[source]]
name = "scanner"
type = "scanner"
port = "{port}"
require_aim = true

[[source]]
name = "nutrunner"
type = "open_protocol"
address = "{addr}"
revision = 2
keep_alive_secs = 1
timeout_ms = 1000
torque_characteristic = "nozzle_nut_torque"
angle_characteristic = "nozzle_nut_angle"
"#,
            addr = controller.addr
        );
    let agent = common::start(&text).await;
    common::wait_metric(
        agent.http,
        "proofline_agent_source_up{source=\"nutrunner\"} 1",
    )
    .await;
    common::wait_metric(
        agent.http,
        "proofline_agent_source_up{source=\"scanner\"} 1",
    )
    .await;

    let uii = "D1ABC57734-0012000042";
    scanner
        .write_all(b"]d1[)>\x1e06\x1d17V1ABC5\x1d1P7734-0012\x1dS000042\x1e\x04\r")
        .await
        .unwrap();
    until("the identifier download (MID 0050)", || {
        controller.identifier() == uii
    })
    .await;
    controller.tighten(3);
    until("3 acknowledgements", || controller.acked().len() == 3).await;
    controller.skip_ids(2);
    controller.tighten(1);
    until("4 acknowledgements", || controller.acked().len() == 4).await;
    controller.tighten(1);
    controller.drop_link();
    controller.tighten(2);
    until("7 acknowledgements", || controller.acked().len() == 7).await;
    // A second drop, after the link came back: a fault of its own, recorded as such.
    controller.drop_link();
    controller.tighten(1);
    until("8 acknowledgements", || controller.acked().len() == 8).await;
    // The controller is replaced: its ids start over. A lower id is a new result, not a resend.
    controller.restart_ids(1);
    controller.tighten(1);
    until("9 acknowledgements", || controller.acked().len() == 9).await;

    agent.stop().await;
    assert_eq!(controller.stray_acks(), 0);

    let records = common::records(&data);
    let results = common::results(&records);
    let ids: Vec<u64> = results
        .iter()
        .map(|r| r.device_result_id.as_ref().unwrap().parse().unwrap())
        .collect();
    let mut acked = controller.acked();
    acked.dedup();
    assert_eq!(
        ids, acked,
        "each acknowledged tightening recorded exactly once, in order"
    );
    let sent = controller.sent();
    for (r, t) in results.iter().zip(sent.iter()) {
        assert!(
            matches!(&r.binding, Binding::Bound { uii: u, .. } if u == uii),
            "{:?}",
            r.binding
        );
        assert_eq!(r.device_identifier.as_deref(), Some(uii));
        assert_eq!(r.device, "PF6000-SIM tool B0071234");
        assert!(matches!(&r.raw, RawData::OpenProtocol(b) if b.as_slice().starts_with(b"0")));
        let torque = &r.characteristics[0];
        assert_eq!(torque.name, "nozzle_nut_torque");
        assert_eq!(
            torque.measured,
            Measured::Value {
                value: t.torque,
                unit: "N.m".into()
            }
        );
        assert_eq!((torque.lower, torque.upper), (Some(45.0), Some(55.0)));
        assert_eq!(
            torque.verdict,
            if t.ok { Verdict::Ok } else { Verdict::Nok }
        );
        assert_eq!(
            r.device_time.as_ref().unwrap().reported,
            "2025-03-05T14:22:31"
        );
    }
    let ev = common::events(&records);
    assert!(
        ev.iter().any(|e| matches!(e, StationEvent::Alarm(a) if a.code == "op.tightening_id_reset" && a.message.contains("to 1:"))),
        "{ev:?}"
    );
    assert!(
        ev.iter().any(|e| matches!(e, StationEvent::Alarm(a) if a.code == "op.tightening_gap" && a.message.contains("2 result(s) missing"))),
        "{ev:?}"
    );
    let count = |up: bool| {
        ev.iter()
            .filter(|e| match e {
                StationEvent::SourceUp { source, .. } => up && source == "nutrunner",
                StationEvent::SourceDown { source, .. } => !up && source == "nutrunner",
                _ => false,
            })
            .count()
    };
    assert_eq!(
        (count(false), count(true)),
        (2, 3),
        "one SourceDown per dropped link, one SourceUp per connection: {ev:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_mid_0062_goes_out_while_commits_fail_and_the_result_is_recorded_after_a_restart() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let (data, head) = common::station(dir.path(), "torque-02");
    let controller = Controller::start("PF6000-SIM").await.unwrap();
    let text = head
        + &format!(
            "[[source]]\nname = \"nutrunner\"\ntype = \"open_protocol\"\naddress = \"{}\"\nkeep_alive_secs = 1\ntimeout_ms = 1000\n",
            controller.addr
        );

    let fault = Arc::new(AtomicBool::new(false));
    let agent = common::start_with(&text, Some(Arc::clone(&fault))).await;
    fault.store(true, Ordering::SeqCst);
    controller.tighten(1);
    until("the result to be sent", || !controller.sent().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        controller.acked().is_empty(),
        "MID 0062 sent for a result that is not durable"
    );
    // A ledger that cannot be written ends the run with an error, so the service is restarted.
    agent.shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(20), agent.task)
        .await
        .unwrap()
        .unwrap();
    assert!(ended.is_err(), "the run ended without an error");

    let count_results = || common::results(&common::records(&data)).len();
    assert_eq!(count_results(), 0);

    // Restarted with a healthy disk: the controller sends the unacknowledged result again.
    let agent = common::start(&text).await;
    until("the acknowledgement", || controller.acked().len() == 1).await;
    agent.stop().await;
    assert_eq!(count_results(), 1);
    assert_eq!(controller.acked(), vec![controller.sent()[0].tightening_id]);
}
