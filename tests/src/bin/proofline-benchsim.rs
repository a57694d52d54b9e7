//! `proofline-benchsim`: simulated station devices on loopback and ptys, for the demo and for
//! trying an agent without a plant.
//!
//! - a flow-test bench (Modbus TCP, four-phase handshake) with its part scanner (pty);
//! - a nozzle-nut torque controller (Open Protocol) with its part scanner (pty);
//!
//! For each simulated injector it scans the part, then the device tests it; it waits for the
//! agent to take each result before the next part. With `--write-configs DIR` it writes an
//! agent configuration for each station pointing at these devices.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use proofline_tests::benchsim::{BenchOptions, FlowBench};
use proofline_tests::torque::Controller;
use tokio::io::AsyncWriteExt;
use tokio_serial::SerialPort as _;

struct Args {
    parts: u32,
    interval: Duration,
    nok_every: u32,
    write_configs: Option<PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        parts: 0,
        interval: Duration::from_millis(500),
        nok_every: 7,
        write_configs: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--parts" => a.parts = v()?.parse().context("--parts")?,
            "--interval-ms" => {
                a.interval = Duration::from_millis(v()?.parse().context("--interval-ms")?)
            }
            "--nok-every" => a.nok_every = v()?.parse().context("--nok-every")?,
            "--write-configs" => a.write_configs = Some(PathBuf::from(v()?)),
            "--help" | "-h" => {
                println!(
                    "proofline-benchsim [--parts N (0: endless)] [--interval-ms MS] [--nok-every K] [--write-configs DIR]"
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?} (see --help)"),
        }
    }
    Ok(a)
}

fn scan_frame(serial: u32) -> Vec<u8> {
    format!("]d1[)>\u{1e}06\u{1d}17V1ABC5\u{1d}1P7734-0012\u{1d}S{serial:06}\u{1e}\u{4}\r")
        .into_bytes()
}

fn uii(serial: u32) -> String {
    format!("D1ABC57734-0012{serial:06}")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let bench = FlowBench::start(BenchOptions {
        results: 0,
        nok_every: a.nok_every,
        uii,
        ..BenchOptions::default()
    })
    .await?;
    let controller = Controller::start("PF6000-SIM").await?;
    let (mut flow_scanner, flow_port) = tokio_serial::SerialStream::pair()?;
    let flow_port_name = flow_port.name().context("pty name")?;
    drop(flow_port);
    let (mut torque_scanner, torque_port) = tokio_serial::SerialStream::pair()?;
    let torque_port_name = torque_port.name().context("pty name")?;
    drop(torque_port);

    println!(
        "flow bench (Modbus TCP, handshake at 98/99, block 100..139): {}",
        bench.addr
    );
    println!("flow station scanner (pty): {flow_port_name}");
    println!("torque controller (Open Protocol): {}", controller.addr);
    println!("torque station scanner (pty): {torque_port_name}");
    if let Some(dir) = &a.write_configs {
        write_configs(dir, &bench, &flow_port_name, &controller, &torque_port_name)?;
        println!("agent configurations written to {}", dir.display());
    }
    std::io::Write::flush(&mut std::io::stdout())?;

    let mut n = 0u32;
    loop {
        if a.parts > 0 && n >= a.parts {
            break;
        }
        n += 1;
        // The same injector goes through the flow bench, then the torque station.
        flow_scanner.write_all(&scan_frame(n)).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        bench.allow(n);
        wait(|| bench.acknowledged() >= n).await;
        torque_scanner.write_all(&scan_frame(n)).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        controller.tighten(1);
        wait(|| controller.acked().len() >= n as usize).await;
        println!("injector {} tested at both stations", uii(n));
        tokio::time::sleep(a.interval).await;
    }
    println!("done: {n} injectors");
    Ok(())
}

async fn wait(mut f: impl FnMut() -> bool) {
    while !f() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn write_configs(
    dir: &std::path::Path,
    bench: &FlowBench,
    flow_port: &str,
    controller: &Controller,
    torque_port: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let flow = format!(
        r#"# Written by proofline-benchsim for its simulated flow-test station.
[station]
site = "demo-plant"
agent_id = "flow-bench-01"
data_dir = "{dir}/flow-bench-01"
key_file = "{dir}/flow-bench-01.key"

[http]
listen = "127.0.0.1:0"

[[source]]
name = "scanner"
type = "scanner"
port = "{flow_port}"

[[source]]
name = "flow-bench"
type = "modbus_tcp"
address = "{bench}"
unit_id = 1
device = "EPS815-SIM"
poll_interval_ms = 20
addressing = "zero_based"
block_start = 100
block_registers = 40
ready = {{ pattern = "handshake", ready_register = 98, ack_register = 99 }}
identifier = {{ offset = 20, registers = 13 }}
test_plan_id = {{ offset = 33, registers = 5 }}
test_plan_revision = {{ offset = 38, registers = 1 }}
result_id = {{ offset = 18, type = "u32" }}

[[source.point]]
name = "full_load_delivery"
offset = 0
type = "f32"
unit = "mm3/stroke"
nominal = 62.0
lower = 60.14
upper = 63.86

[[source.point]]
name = "idle_delivery"
offset = 2
type = "f32"
unit = "mm3/stroke"
nominal = 4.1
lower = 3.9
upper = 4.3

[[source.point]]
name = "pilot_delivery"
offset = 4
type = "f32"
unit = "mm3/stroke"
nominal = 1.5
lower = 1.0
upper = 2.0

[[source.point]]
name = "back_leak"
offset = 6
type = "f32"
unit = "mm3/stroke"
upper = 35.0

[[source.point]]
name = "fluid_temperature"
offset = 8
type = "i16"
scale = 0.1
unit = "degC"
"#,
        dir = dir.display(),
        bench = bench.addr
    );
    let torque = format!(
        r#"# Written by proofline-benchsim for its simulated torque station.
[station]
site = "demo-plant"
agent_id = "torque-01"
data_dir = "{dir}/torque-01"
key_file = "{dir}/torque-01.key"

[http]
listen = "127.0.0.1:0"

[[source]]
name = "scanner"
type = "scanner"
port = "{torque_port}"

[[source]]
name = "nutrunner"
type = "open_protocol"
address = "{addr}"
revision = 2
torque_characteristic = "nozzle_nut_torque"
angle_characteristic = "nozzle_nut_angle"
"#,
        dir = dir.display(),
        addr = controller.addr
    );
    std::fs::write(dir.join("flow-bench-01.toml"), flow)?;
    std::fs::write(dir.join("torque-01.toml"), torque)?;
    Ok(())
}
