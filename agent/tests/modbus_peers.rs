//! Modbus interoperability with an implementation nobody here wrote (pymodbus), over TCP and
//! over RTU on a pty, and the RTU frame bytes checked against the CRC vector.
//!
//! The pymodbus tests need a Python with pymodbus: `PROOFLINE_PYTHON` names it (default
//! `python3`). Without one they print why and skip, unless `PROOFLINE_REQUIRE_PEERS=1` (CI),
//! where a missing peer fails the test.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use proofline_agent::source::registers::{decode, PointType, Value, WordOrder};
use tokio::io::AsyncReadExt;
use tokio_modbus::client::Reader;
use tokio_modbus::Slave;
use tokio_serial::SerialPort as _;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/vectors/modbus-words.json"
);
const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/peers/modbus_peer.py");

fn python() -> Option<String> {
    let py = std::env::var("PROOFLINE_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import pymodbus"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    let why = format!("{py} has no pymodbus (set PROOFLINE_PYTHON to a Python with pymodbus)");
    if std::env::var("PROOFLINE_REQUIRE_PEERS").is_ok_and(|v| v == "1") {
        panic!("required peer missing: {why}");
    }
    println!("skipped: {why}");
    None
}

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_peer(py: &str, mode: &str, at: &str) -> Peer {
    let mut child = Command::new(py)
        .args([PEER, VECTORS, mode, at])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "READY", "pymodbus peer did not start");
    Peer(child)
}

/// One vector in the peer's layout: first register, type, order, scale, expected value.
type Case = (usize, PointType, WordOrder, f64, Value);

/// The registers the peer holds and what each vector there must decode to.
fn expectations() -> (usize, Vec<Case>) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    let order = |c: &serde_json::Value| WordOrder::parse(c["order"].as_str().unwrap()).unwrap();
    let mut at = 0;
    let mut out = Vec::new();
    for c in v["float32"].as_array().unwrap() {
        out.push((
            at,
            PointType::F32,
            order(c),
            1.0,
            Value::Number(c["value"].as_f64().unwrap()),
        ));
        at += 2;
    }
    for c in v["float32_extra"].as_array().unwrap() {
        out.push((
            at,
            PointType::F32,
            order(c),
            1.0,
            Value::Number(c["value_approx"].as_f64().unwrap()),
        ));
        at += 2;
    }
    for c in v["uint32"].as_array().unwrap() {
        out.push((
            at,
            PointType::U32,
            order(c),
            1.0,
            Value::Number(c["value"].as_f64().unwrap()),
        ));
        at += 2;
    }
    for c in v["int16_scaled"].as_array().unwrap() {
        let ty = if c["signed"].as_bool().unwrap() {
            PointType::I16
        } else {
            PointType::U16
        };
        out.push((
            at,
            ty,
            WordOrder::Abcd,
            c["scale"].as_f64().unwrap(),
            Value::Number(c["value"].as_f64().unwrap()),
        ));
        at += 1;
    }
    for c in v["string"].as_array().unwrap() {
        out.push((
            at,
            PointType::String,
            WordOrder::Abcd,
            1.0,
            Value::Text(c["value"].as_str().unwrap().into()),
        ));
        at += c["registers"].as_array().unwrap().len();
    }
    (at, out)
}

fn check(regs: &[u16]) {
    let (_, cases) = expectations();
    let mut ends: Vec<usize> = cases.iter().map(|c| c.0).skip(1).collect();
    ends.push(regs.len());
    for ((at, ty, order, scale, want), end) in cases.into_iter().zip(ends) {
        let width = ty.width().unwrap_or(end - at);
        let got = decode(&regs[at..at + width], ty, order, scale, 0.0).unwrap();
        match (&got, &want) {
            (Value::Number(g), Value::Number(w)) => {
                assert!(
                    (g - w).abs() < 1e-3 * w.abs().max(1.0),
                    "{ty:?} {order} at {at}: {g} != {w}"
                )
            }
            _ => assert_eq!(got, want, "{ty:?} at {at}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vector_decodes_from_pymodbus_over_tcp() {
    let Some(py) = python() else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _peer = start_peer(&py, "tcp", &port.to_string());
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, Slave(1))
        .await
        .unwrap();
    let (n, _) = expectations();
    let regs = ctx
        .read_holding_registers(0, n as u16)
        .await
        .unwrap()
        .unwrap();
    check(&regs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vector_decodes_from_pymodbus_over_rtu() {
    let Some(py) = python() else { return };
    let (master, slave) = tokio_serial::SerialStream::pair().unwrap();
    let path = slave.name().unwrap();
    let _peer = start_peer(&py, "rtu", &path);
    drop(slave);
    let mut ctx = tokio_modbus::client::rtu::attach_slave(master, Slave(1));
    let (n, _) = expectations();
    let regs = tokio::time::timeout(
        Duration::from_secs(10),
        ctx.read_holding_registers(0, n as u16),
    )
    .await
    .expect("pymodbus RTU answered")
    .unwrap()
    .unwrap();
    check(&regs);
}

#[tokio::test]
async fn rtu_requests_carry_the_crc_of_the_vector() {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    let c = &v["rtu_crc"][0];
    let hex = |s: &str| -> Vec<u8> {
        s.split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect()
    };
    let (frame, crc) = (
        hex(c["frame_hex"].as_str().unwrap()),
        hex(c["crc_wire_hex"].as_str().unwrap()),
    );
    let (master, mut slave) = tokio_serial::SerialStream::pair().unwrap();
    let mut ctx = tokio_modbus::client::rtu::attach_slave(master, Slave(frame[0]));
    let addr = u16::from_be_bytes([frame[2], frame[3]]);
    let count = u16::from_be_bytes([frame[4], frame[5]]);
    let request = tokio::spawn(async move {
        let _ = tokio::time::timeout(
            Duration::from_millis(300),
            ctx.read_holding_registers(addr, count),
        )
        .await;
    });
    let mut got = vec![0u8; 8];
    tokio::time::timeout(Duration::from_secs(5), slave.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..6], &frame[..]);
    assert_eq!(&got[6..], &crc[..], "CRC-16 sent low byte first");
    let _ = request.await;
}
