//! `proofline-benchsim`: simulated station devices on loopback and ptys, for the demo and for
//! trying an agent without a plant.
//!
//! - a flow-test bench (Modbus TCP, four-phase handshake) with its part scanner (pty);
//! - a nozzle-nut torque controller (Open Protocol) with its part scanner (pty);
//! - a leak tester at the flow station reporting one line per test (pty).
//!
//! Faults can be injected every K injectors: `--garbage-every` (a damaged scan and a garbage
//! line), `--exception-every` (the bench answers exception 04 for a moment), `--reboot-every`
//! (the bench reboots in the middle of a result), `--drop-every` (the controller drops its
//! link with a result outstanding).
//!
//! For each simulated injector it scans the part, then the device tests it; it waits for the
//! agent to take each result before the next part. With `--write-configs DIR` it writes an
//! agent configuration for each station pointing at these devices.
//!
//! It stops, with exit status 0, on SIGINT or SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use proofline_tests::benchsim::{BenchOptions, FlowBench};
use proofline_tests::torque::Controller;
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio_serial::SerialPort as _;

struct Args {
    parts: u32,
    interval: Duration,
    nok_every: u32,
    garbage_every: u32,
    exception_every: u32,
    reboot_every: u32,
    drop_every: u32,
    write_configs: Option<PathBuf>,
}

fn every(k: u32, n: u32) -> bool {
    k > 0 && n % k == 0
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        parts: 0,
        interval: Duration::from_millis(500),
        nok_every: 7,
        garbage_every: 0,
        exception_every: 0,
        reboot_every: 0,
        drop_every: 0,
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
            "--garbage-every" => a.garbage_every = v()?.parse().context("--garbage-every")?,
            "--exception-every" => a.exception_every = v()?.parse().context("--exception-every")?,
            "--reboot-every" => a.reboot_every = v()?.parse().context("--reboot-every")?,
            "--drop-every" => a.drop_every = v()?.parse().context("--drop-every")?,
            "--write-configs" => a.write_configs = Some(PathBuf::from(v()?)),
            "--help" | "-h" => {
                println!(
                    "proofline-benchsim [--parts N (0: endless)] [--interval-ms MS] [--nok-every K] \
                     [--garbage-every K] [--exception-every K] [--reboot-every K] [--drop-every K] \
                     [--write-configs DIR]"
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
    // Installed before anything is started. A program started in the background by a script
    // (`demo.sh`, CI, a supervisor) inherits SIGINT ignored, so without a handler of its own a
    // Ctrl-C or a SIGINT to the process group would pass it by; a handler replaces that
    // inherited disposition.
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    // A part under way is abandoned, as when a real bench is switched off mid-test: the agents
    // are built to cope with that, and stopping at once keeps the whole demo's stop short.
    let stopped_by = tokio::select! {
        r = simulate(a) => return r,
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    println!("stopped by {stopped_by}");
    Ok(())
}

async fn simulate(a: Args) -> anyhow::Result<()> {
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
    let (mut leak_tester, leak_port) = tokio_serial::SerialStream::pair()?;
    let leak_port_name = leak_port.name().context("pty name")?;
    drop(leak_port);

    println!(
        "flow bench (Modbus TCP, handshake at 98/99, block 100..139): {}",
        bench.addr
    );
    println!("flow station scanner (pty): {flow_port_name}");
    println!("torque controller (Open Protocol): {}", controller.addr);
    println!("torque station scanner (pty): {torque_port_name}");
    println!("leak tester at the flow station (pty, one line per test): {leak_port_name}");
    if let Some(dir) = &a.write_configs {
        write_configs(
            dir,
            &bench,
            &flow_port_name,
            &leak_port_name,
            &controller,
            &torque_port_name,
        )?;
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
        if every(a.garbage_every, n) {
            flow_scanner
                .write_all(b"]d1[)>0617V1ABC51P7734-0012S0000\r")
                .await?;
            leak_tester
                .write_all(b"\x00\xff\xfe line noise\r\n")
                .await?;
        }
        flow_scanner.write_all(&scan_frame(n)).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if every(a.exception_every, n) {
            bench.set_exception(Some(tokio_modbus::ExceptionCode::ServerDeviceFailure));
            tokio::time::sleep(Duration::from_millis(200)).await;
            bench.set_exception(None);
        }
        bench.allow(n);
        if every(a.reboot_every, n) {
            wait(|| bench.produced().len() >= n as usize).await;
            bench.reboot();
        }
        wait(|| bench.acknowledged() >= n).await;
        let leak = 10 + (n * 7) % 45;
        let status = if leak <= 50 { "OK" } else { "NOK" };
        leak_tester
            .write_all(
                format!(
                    "<01>:05/03/2025 14:22:{:02}\r\n<01>: 487.{} mbar:({status}): {leak:03} Pa\r\n",
                    n % 60,
                    n % 10
                )
                .as_bytes(),
            )
            .await?;
        torque_scanner.write_all(&scan_frame(n)).await?;
        // The tool is released once the controller has the part's identifier (MID 0050).
        let id = uii(n);
        wait(|| controller.identifier() == id).await;
        controller.tighten(1);
        if every(a.drop_every, n) {
            wait(|| controller.sent().len() >= n as usize).await;
            controller.drop_link();
            println!("torque controller dropped its link (injector {})", uii(n));
        }
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
    leak_port: &str,
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

{flow_source}
[[source]]
name = "leak-tester"
type = "serial_line"
port = "{leak_port}"
device = "LT-SIM"
terminator = "crlf"
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
        dir = dir.display(),
        flow_source = FlowBench::source_toml(bench.addr, 20, 1000)
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
