//! A result too large for a ledger record (8 KiB) is never silently lost and never resent for
//! ever: the station records an alarm carrying the SHA-256 and length of the device's bytes and
//! acknowledges the device. Serial lines longer than a record can hold are refused by the
//! configuration check.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use proofline_agent::config::AgentConfig;
use proofline_common::open_protocol::{mid, Frame, FrameReader, Tightening};
use proofline_common::record::{Alarm, StationEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_serial::SerialPort as _;

fn tightening(id: u64) -> Tightening {
    Tightening {
        revision: 2,
        cell_id: 1,
        channel_id: 1,
        controller: "PF6000-BIG".into(),
        identifier: String::new(),
        job_id: 0,
        pset: 12,
        batch_size: 4,
        batch_counter: 1,
        ok: true,
        torque_status: 1,
        angle_status: 1,
        torque_min: 45.0,
        torque_max: 55.0,
        torque_target: 50.0,
        torque: 50.12,
        angle_min: 10.0,
        angle_max: 90.0,
        angle_target: 45.0,
        angle: 44.0,
        time: "2025-03-05T14:22:31".into(),
        last_pset_change: "2025-03-01T08:00:00".into(),
        batch_status: 1,
        tightening_id: id,
        tool_serial: Some("B0071234".into()),
        strategy: Some(1),
        error_status: Some("0000000000".into()),
    }
}

/// What the controller saw.
#[derive(Debug, Default)]
struct Seen {
    /// Tightening ids acknowledged (MID 0062), in order.
    acked: Vec<u64>,
    /// How often each result was sent.
    sent: Vec<u64>,
}

/// A controller that sends `results` (id, frame data) one at a time, each again on every new
/// connection until it is acknowledged.
async fn controller(results: Vec<(u64, Vec<u8>)>) -> (std::net::SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut next = 0;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            next = session(stream, &results, next, &s).await;
        }
    });
    (addr, seen)
}

async fn session(
    mut stream: TcpStream,
    results: &[(u64, Vec<u8>)],
    mut next: usize,
    seen: &Mutex<Seen>,
) -> usize {
    let mut reader = FrameReader::new();
    let mut buf = [0u8; 4096];
    let mut subscribed = false;
    let mut outstanding = false;
    loop {
        if subscribed && !outstanding && next < results.len() {
            let (id, data) = &results[next];
            seen.lock().unwrap().sent.push(*id);
            if stream
                .write_all(&Frame::encode(mid::RESULT, 2, data))
                .await
                .is_err()
            {
                return next;
            }
            outstanding = true;
        }
        match tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return next,
            Ok(Ok(n)) => reader.push(&buf[..n]),
        }
        while let Some(f) = reader.next_frame() {
            let Ok(f) = f else { return next };
            let reply = match f.mid {
                mid::COMM_START => Some(Frame::encode(mid::COMM_START_ACK, 1, b"0100010201")),
                mid::RESULT_SUBSCRIBE => {
                    subscribed = true;
                    Some(Frame::encode(mid::COMMAND_ACCEPTED, 1, b"0060"))
                }
                mid::IDENTIFIER_DOWNLOAD => Some(Frame::encode(mid::COMMAND_ACCEPTED, 1, b"0050")),
                mid::RESULT_ACK => {
                    if outstanding {
                        seen.lock().unwrap().acked.push(results[next].0);
                        outstanding = false;
                        next += 1;
                    }
                    None
                }
                mid::KEEP_ALIVE => Some(Frame::encode(mid::KEEP_ALIVE, 1, b"")),
                _ => None,
            };
            if let Some(r) = reply {
                if stream.write_all(&r).await.is_err() {
                    return next;
                }
            }
        }
    }
}

fn sha256_hex(b: &[u8]) -> String {
    proofline_common::hash::sha256(b).to_hex()
}

fn too_large_alarms(events: &[StationEvent]) -> Vec<Alarm> {
    events
        .iter()
        .filter_map(|e| match e {
            StationEvent::Alarm(a) if a.code == "result.too_large" => Some(a.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_protocol_result_too_large_for_a_record_is_alarmed_with_its_hash_and_acknowledged()
{
    // A valid revision 2 result followed by 9 000 bytes the controller appends (the frame's
    // length field allows up to 9 999): far more than a record holds.
    let mut big = tightening(41).encode_data();
    big.extend(std::iter::repeat_n(b'7', 9_000));
    let big_raw = {
        let mut f = Frame::encode(mid::RESULT, 2, &big);
        f.pop(); // the NUL is not part of the message
        f
    };
    let normal = tightening(42).encode_data();
    let (addr, seen) = controller(vec![(41, big), (42, normal)]).await;

    let dir = tempfile::tempdir().unwrap();
    let (data, head) = common::station(dir.path(), "torque-01");
    let text = head
        + &format!(
            r#"
[[source]]
name = "nutrunner"
type = "open_protocol"
address = "{addr}"
revision = 2
keep_alive_secs = 1
timeout_ms = 1000
"#
        );
    let agent = common::start(&text).await;
    let acked = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if seen.lock().unwrap().acked.len() == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let s = format!("{:?}", seen.lock().unwrap());
    assert!(acked.is_ok(), "both results never acknowledged: {s}");
    assert_eq!(seen.lock().unwrap().acked, vec![41, 42]);
    assert_eq!(
        seen.lock().unwrap().sent,
        vec![41, 42],
        "a result was resent"
    );
    agent.stop().await;

    let records = common::records(&data);
    let results = common::results(&records);
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].device_result_id.as_deref(), Some("42"));
    let alarms = too_large_alarms(&common::events(&records));
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    let a = &alarms[0];
    assert_eq!(a.source, "nutrunner");
    assert!(a.message.contains(&sha256_hex(&big_raw)), "{}", a.message);
    assert!(
        a.message.contains(&big_raw.len().to_string()),
        "{}",
        a.message
    );
    assert!(a.message.contains("41"), "{}", a.message);
}

const LINE_SOURCE: &str = r#"
[[source]]
name = "flow-bench"
type = "serial_line"
port = "PORT"
device = "EPS-815"
terminator = "crlf"
max_line_bytes = MAX
parser = "delimited"
separator = ";"
identifier_field = "1"

[[source.field]]
name = "full_load_delivery"
from = "2"
unit = "mm3/stroke"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_line_too_large_for_a_record_is_alarmed_with_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let (data, head) = common::station(dir.path(), "flow-01");
    let (mut bench, slave) = tokio_serial::SerialStream::pair().unwrap();
    let port = slave.name().unwrap();
    drop(slave);
    let text = head + &LINE_SOURCE.replace("PORT", &port).replace("MAX", "4096");
    let agent = common::start(&text).await;
    common::wait_metric(
        agent.http,
        "proofline_agent_source_up{source=\"flow-bench\"} 1",
    )
    .await;
    // Within the line limit, but the identifier is in the record twice (raw line and field).
    let mut line = vec![b'A'; 4090];
    line.extend_from_slice(b";62.4");
    bench.write_all(&line).await.unwrap();
    bench.write_all(b"\r\nD1ABC;61.9\r\n").await.unwrap();
    common::wait_metric(
        agent.http,
        "proofline_agent_alarms_total{source=\"flow-bench\",code=\"result.too_large\"} 1",
    )
    .await;
    common::wait_metric(
        agent.http,
        "proofline_agent_results_total{source=\"flow-bench\"} 1",
    )
    .await;
    agent.stop().await;

    let records = common::records(&data);
    let results = common::results(&records);
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].device_identifier.as_deref(), Some("D1ABC"));
    let alarms = too_large_alarms(&common::events(&records));
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert!(
        alarms[0].message.contains(&sha256_hex(&line)),
        "{}",
        alarms[0].message
    );
    assert!(alarms[0].message.contains("4095"), "{}", alarms[0].message);
}

#[test]
fn a_line_limit_larger_than_a_record_holds_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (_data, head) = common::station(dir.path(), "flow-01");
    for (max, refused) in [("65536", true), ("8192", true), ("4096", false)] {
        let text = head.clone()
            + &LINE_SOURCE
                .replace("PORT", "/dev/ttyS0")
                .replace("MAX", max);
        let (cfg, problems) = AgentConfig::parse(&text).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let found = cfg
            .problems()
            .into_iter()
            .any(|p| p.path == "source[0].max_line_bytes");
        assert_eq!(
            found,
            refused,
            "max_line_bytes = {max}: {:?}",
            cfg.problems()
        );
    }
}
