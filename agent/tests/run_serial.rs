//! A leak tester reporting one line per test on a serial port (a pty here): result lines become
//! results with their raw line, other lines are skipped, damaged lines raise alarms and reading
//! goes on.

use std::time::Duration;

use proofline_agent::config::AgentConfig;
use proofline_common::record::{Body, Measured, RawData, Record, StationEvent, Verdict};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_lines_are_recorded_and_damaged_lines_alarmed() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("agent.key");
    let origin = proofline_common::Origin::parse("proofline/plant-1/leak-01").unwrap();
    proofline_agent::keyfile::generate(&origin, &key).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let (mut bench, slave) = tokio_serial::SerialStream::pair().unwrap();
    let port = slave.name().unwrap();
    drop(slave);
    let text = format!(
        r#"
[station]
site = "plant-1"
agent_id = "leak-01"
data_dir = "{data}"
key_file = "{key}"

[http]
listen = "127.0.0.1:0"

[[source]]
name = "leak-tester"
type = "serial_line"
port = "{port}"
device = "LT-3"
terminator = "crlf"
max_line_bytes = 512
parser = "pattern"
pattern = '^<(?P<program>\d+)>:\s*(?P<pressure>[-\d.]+)\s*mbar:\((?P<status>OK|NOK)\):\s*(?P<leak>\d+)\s*Pa'

[[source.field]]
name = "test_pressure"
from = "pressure"
unit = "mbar"

[[source.field]]
name = "seat_leak"
from = "leak"
unit = "Pa"
upper = 50.0

[[source.field]]
name = "leak_tester_status"
from = "status"
kind = "ok_nok"
"#,
        data = data.display(),
        key = key.display()
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
    let wait = |line: &'static str| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let m = http_get(http, "/metrics").await;
            if m.lines().any(|l| l == line) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{line} never showed in\n{m}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    wait("proofline_agent_source_up{source=\"leak-tester\"} 1").await;
    bench
        .write_all(b"<01>:30/05/2012 16:52:01\r\n<01>: 487.8 mbar:(OK): 029 Pa\r\n")
        .await
        .unwrap();
    bench
        .write_all(b"<01>:30/05/2012 16:53:40\r\n<01>: 480.1 mbar:(NOK): 077 Pa\r\n")
        .await
        .unwrap();
    bench.write_all(b"\x00\xff\xfe junk\r\n").await.unwrap();
    bench.write_all(&[b'9'; 700]).await.unwrap();
    bench
        .write_all(b"\r\n<02>: 491.0 mbar:(OK): 012 Pa\r\n")
        .await
        .unwrap();
    wait("proofline_agent_results_total{source=\"leak-tester\"} 3").await;
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
    let results: Vec<_> = records
        .iter()
        .filter_map(|r| match r.body() {
            Body::InspectionResult(x) => Some(x.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 3);
    assert_eq!(
        results[0].raw,
        RawData::SerialLine(b"<01>: 487.8 mbar:(OK): 029 Pa".to_vec().into())
    );
    let leak = |i: usize| {
        results[i]
            .characteristics
            .iter()
            .find(|c| c.name == "seat_leak")
            .unwrap()
            .clone()
    };
    assert_eq!(
        leak(0).measured,
        Measured::Value {
            value: 29.0,
            unit: "Pa".into()
        }
    );
    assert_eq!(leak(0).verdict, Verdict::Ok);
    assert_eq!(leak(1).verdict, Verdict::Nok);
    assert_eq!(
        results[1].verdict,
        Verdict::Nok,
        "seat leak over the limit and the tester's own NOK"
    );
    assert_eq!(results[2].verdict, Verdict::Ok);
    let alarms: Vec<String> = records
        .iter()
        .filter_map(|r| match r.body() {
            Body::StationEvent(StationEvent::Alarm(a)) => Some(a.code.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(alarms, ["serial.bad_line", "serial.overlong_line"]);
}
