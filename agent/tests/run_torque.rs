//! A torque station: a scanner and an Open Protocol controller. The scanned UII is downloaded
//! to the controller, each tightening is recorded once and acknowledged (MID 0062) after it is
//! durable, gaps in tightening ids raise an alarm, and a dropped link loses and repeats nothing.

use std::time::Duration;

use proofline_agent::config::AgentConfig;
use proofline_common::record::{Binding, Body, Measured, RawData, Record, StationEvent, Verdict};
use proofline_common::store::{Access, Store, StoreOptions};
use proofline_tests::torque::Controller;
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

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tightenings_are_bound_recorded_once_and_acknowledged_after_they_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("agent.key");
    let origin = proofline_common::Origin::parse("proofline/plant-1/torque-01").unwrap();
    proofline_agent::keyfile::generate(&origin, &key).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let controller = Controller::start("PF6000-SIM").await.unwrap();
    let (mut scanner, slave) = tokio_serial::SerialStream::pair().unwrap();
    let port = slave.name().unwrap();
    drop(slave);
    let text = format!(
        r#"
[station]
site = "plant-1"
agent_id = "torque-01"
data_dir = "{data}"
key_file = "{key}"

[http]
listen = "127.0.0.1:0"

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
        data = data.display(),
        key = key.display(),
        addr = controller.addr
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
    let http = tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .unwrap()
        .unwrap()
        .http;
    let m = loop {
        let m = http_get(http, "/metrics").await;
        if m.contains("proofline_agent_source_up{source=\"nutrunner\"} 1")
            && m.contains("proofline_agent_source_up{source=\"scanner\"} 1")
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    drop(m);

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

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(controller.stray_acks(), 0);

    let (store, _) = Store::open(&data, Access::Read, &StoreOptions::default()).unwrap();
    let records: Vec<Record> = store
        .reader()
        .range(0..store.head().size)
        .map(|r| Record::decode(&r.unwrap().1).unwrap())
        .collect();
    let results: Vec<_> = records
        .iter()
        .filter_map(|r| match r.body() {
            Body::InspectionResult(x) => Some(x.clone()),
            _ => None,
        })
        .collect();
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
    let ev: Vec<StationEvent> = records
        .iter()
        .filter_map(|r| match r.body() {
            Body::StationEvent(e) => Some(e.clone()),
            _ => None,
        })
        .collect();
    assert!(
        ev.iter().any(|e| matches!(e, StationEvent::Alarm(a) if a.code == "op.tightening_gap" && a.message.contains("2 result(s) missing"))),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .filter(|e| matches!(e, StationEvent::SourceUp { source, .. } if source == "nutrunner"))
            .count()
            >= 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_mid_0062_goes_out_while_commits_fail_and_the_result_is_recorded_after_a_restart() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("agent.key");
    let origin = proofline_common::Origin::parse("proofline/plant-1/torque-02").unwrap();
    proofline_agent::keyfile::generate(&origin, &key).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let controller = Controller::start("PF6000-SIM").await.unwrap();
    let text = format!(
        "[station]\nsite = \"plant-1\"\nagent_id = \"torque-02\"\ndata_dir = \"{}\"\nkey_file = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [[source]]\nname = \"nutrunner\"\ntype = \"open_protocol\"\naddress = \"{}\"\nkeep_alive_secs = 1\ntimeout_ms = 1000\n",
        data.display(),
        key.display(),
        controller.addr
    );
    let start = |fault: Option<Arc<AtomicBool>>| {
        let (cfg, problems) = AgentConfig::parse(&text).unwrap();
        assert!(problems.is_empty());
        let shutdown = CancellationToken::new();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(proofline_agent::run::run(
            cfg,
            proofline_common::hash::sha256(text.as_bytes()),
            shutdown.clone(),
            proofline_agent::run::RunOptions {
                ready: Some(ready_tx),
                commit_fault: fault,
            },
        ));
        (shutdown, task, ready_rx)
    };

    let fault = Arc::new(AtomicBool::new(false));
    let (shutdown, task, ready) = start(Some(Arc::clone(&fault)));
    ready.await.unwrap();
    fault.store(true, Ordering::SeqCst);
    controller.tighten(1);
    until("the result to be sent", || !controller.sent().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        controller.acked().is_empty(),
        "MID 0062 sent for a result that is not durable"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let count_results = || {
        let (store, _) = Store::open(&data, Access::Read, &StoreOptions::default()).unwrap();
        store
            .reader()
            .range(0..store.head().size)
            .map(|r| Record::decode(&r.unwrap().1).unwrap())
            .filter(|r| matches!(r.body(), Body::InspectionResult(_)))
            .count()
    };
    assert_eq!(count_results(), 0);

    // Restarted with a healthy disk: the controller sends the unacknowledged result again.
    let (shutdown, task, ready) = start(None);
    ready.await.unwrap();
    until("the acknowledgement", || controller.acked().len() == 1).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(count_results(), 1);
    assert_eq!(controller.acked(), vec![controller.sent()[0].tightening_id]);
}
