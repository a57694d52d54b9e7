//! Acquisition throughput and the agent's idle memory, printed as figures.
//!
//! - Throughput: `SOURCES` simulated flow benches (Modbus TCP, four-phase handshake, no pause
//!   between tests) feed one in-process agent whose scanner has made one part current; the
//!   bound results recorded durably per second are counted over a fixed window.
//! - Idle RSS: the release `proofline-agent run` binary with one source whose bench has nothing
//!   to report; its resident set is read from /proc after it settled.
//!
//! Run with `cargo bench -p proofline-agent --bench acquisition`.

use std::time::{Duration, Instant};

use proofline_agent::config::{AgentConfig, AgentPlan};
use proofline_tests::benchsim::{BenchOptions, FlowBench};
use tokio::io::AsyncWriteExt;
use tokio_serial::SerialPort as _;
use tokio_util::sync::CancellationToken;

const SOURCES: usize = 8;
const WINDOW: Duration = Duration::from_secs(5);

fn source(i: usize, addr: std::net::SocketAddr) -> String {
    format!(
        r#"
[[source]]
name = "bench-{i}"
type = "modbus_tcp"
address = "{addr}"
unit_id = 1
device = "SIM-{i}"
poll_interval_ms = 1
addressing = "zero_based"
block_start = 100
block_registers = 40
ready = {{ pattern = "handshake", ready_register = 98, ack_register = 99 }}
identifier = {{ offset = 20, registers = 13 }}
result_id = {{ offset = 18, type = "u32" }}

[[source.point]]
name = "full_load_delivery"
offset = 0
type = "f32"
unit = "mm3/stroke"
lower = 60.14
upper = 63.86
"#
    )
}

fn station(dir: &std::path::Path, name: &str) -> String {
    let key = dir.join(format!("{name}.key"));
    let origin = proofline_common::Origin::parse(&format!("proofline/bench/{name}")).unwrap();
    proofline_agent::keyfile::generate(&origin, &key).unwrap();
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    format!(
        "[station]\nsite = \"bench\"\nagent_id = \"{name}\"\ndata_dir = \"{}\"\nkey_file = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
        data.display(),
        key.display()
    )
}

async fn throughput(dir: &std::path::Path) -> f64 {
    let mut benches = Vec::new();
    for _ in 0..SOURCES {
        benches.push(
            FlowBench::start(BenchOptions {
                results: u32::MAX,
                cycle: Duration::from_micros(200),
                nok_every: 0,
                uii: |_| "D1ABC57734-0012000001".into(),
                ..BenchOptions::default()
            })
            .await
            .unwrap(),
        );
    }
    let (mut scanner, slave) = tokio_serial::SerialStream::pair().unwrap();
    let port = slave.name().unwrap();
    drop(slave);
    let mut text = station(dir, "throughput");
    text += &format!("[[source]]\nname = \"scanner\"\ntype = \"scanner\"\nport = \"{port}\"\n");
    for (i, b) in benches.iter().enumerate() {
        text += &source(i, b.addr);
    }
    let (cfg, problems) = AgentConfig::parse(&text).unwrap();
    assert!(problems.is_empty() && cfg.problems().is_empty());
    let shutdown = CancellationToken::new();
    let plan = AgentPlan::build(&cfg, proofline_common::hash::sha256(text.as_bytes())).unwrap();
    let agent = tokio::spawn(proofline_agent::run::run(
        plan,
        shutdown.clone(),
        Default::default(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    scanner
        .write_all(b"]d1[)>\x1e06\x1d17V1ABC5\x1d1P7734-0012\x1dS000001\x1e\x04\r")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let count = |b: &[FlowBench]| b.iter().map(|b| u64::from(b.acknowledged())).sum::<u64>();
    let (n0, t0) = (count(&benches), Instant::now());
    tokio::time::sleep(WINDOW).await;
    let rate = (count(&benches) - n0) as f64 / t0.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = agent.await;
    rate
}

async fn idle_rss_mib(dir: &std::path::Path) -> f64 {
    let bench = FlowBench::start(BenchOptions {
        results: 0,
        ..BenchOptions::default()
    })
    .await
    .unwrap();
    let text = station(dir, "idle") + &source(0, bench.addr);
    let cfg = dir.join("idle.toml");
    std::fs::write(&cfg, text).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_proofline-agent"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = child.id().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    let _ = child.kill().await;
    kib / 1024.0
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("acquisition: run with `cargo bench` to measure");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rate = rt.block_on(throughput(dir.path()));
    println!("acquisition: {SOURCES} simulated benches (four-phase handshake), one agent: {rate:.0} bound results/s durable");
    let rss = rt.block_on(idle_rss_mib(dir.path()));
    println!("acquisition: idle agent (release binary, one Modbus source, nothing to read): RSS {rss:.1} MiB");
}
