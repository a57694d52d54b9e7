//! A leak tester reporting one line per test on a serial port (a pty here): result lines become
//! results with their raw line, other lines are skipped, damaged lines raise alarms and reading
//! goes on.

mod common;

use proofline_common::record::{Body, Measured, RawData, StationEvent, Verdict};
use tokio::io::AsyncWriteExt;
use tokio_serial::SerialPort as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_lines_are_recorded_and_damaged_lines_alarmed() {
    let dir = tempfile::tempdir().unwrap();
    let (data, head) = common::station(dir.path(), "leak-01");
    let (mut bench, slave) = tokio_serial::SerialStream::pair().unwrap();
    let port = slave.name().unwrap();
    drop(slave);
    let text = head
        + &format!(
            r#"
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
"#
        );
    let agent = common::start(&text).await;
    let http = agent.http;
    let wait = |line: &'static str| common::wait_metric(http, line);
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
    agent.stop().await;
    let records = common::records(&data);
    let results = common::results(&records);
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
