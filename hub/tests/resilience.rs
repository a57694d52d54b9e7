//! Steady production through real processes while the plant misbehaves: the station agent is
//! SIGKILLed mid-stream, the hub is SIGKILLed mid-stream and dies again (crash drill) right
//! after a durable witness commit before its acks, and the broker is down for two minutes
//! (`PROOFLINE_BROKER_DOWN_SECS` shortens it for a local run). Afterwards the hub holds exactly
//! the records the station made — none missing, none twice, byte-identical — and
//! `proofline-hub ledger verify` passes. Run against the embedded broker and against Mosquitto
//! (skipped with a reason when `mosquitto` is not installed, unless PROOFLINE_REQUIRE_PEERS=1).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use proofline_common::export::export_line;
use proofline_common::record::{Body, Record};
use proofline_common::store::{Access, Store, StoreOptions};
use proofline_tests::benchsim::{BenchOptions, FlowBench};
use tokio::process::{Child, Command};

const AGENT: &str = "flow-bench-01";

fn down_secs() -> u64 {
    std::env::var("PROOFLINE_BROKER_DOWN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120)
}

/// The agent binary beside the hub's, brought up to date (cargo builds only this package's
/// binaries for its tests; this is a no-op when `cargo test --workspace` already built it).
fn agent_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let bin = Path::new(env!("CARGO_BIN_EXE_proofline-hub")).with_file_name("proofline-agent");
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "proofline-agent",
            "--bin",
            "proofline-agent",
        ]);
        if bin
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|p| p == "release")
        {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "building proofline-agent");
    });
    bin
}

fn spawn(bin: &Path, args: &[&str], log: &Path) -> Child {
    spawn_with_env(bin, args, log, ("PROOFLINE_LOG", "info"))
}

fn spawn_with_env(bin: &Path, args: &[&str], log: &Path, env: (&str, &str)) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(bin)
        .args(args)
        .env("PROOFLINE_LOG", "info")
        .env(env.0, env.1)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn sigkill(c: &mut Child) {
    c.start_kill().unwrap();
    c.wait().await.unwrap();
}

async fn sigterm(c: &mut Child) {
    let pid = c.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let st = tokio::time::timeout(Duration::from_secs(30), c.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(st.success(), "{st}");
}

enum Broker {
    Embedded,
    Mosquitto { conf: PathBuf, port: u16 },
}

struct Setup {
    plant: Plant,
    hub_cfg: PathBuf,
    agent_cfg: PathBuf,
    api: std::net::SocketAddr,
    agent_data: PathBuf,
    logs: PathBuf,
}

fn setup(dir: &Path, broker: &Broker, bench: &FlowBench) -> Setup {
    let plant = Plant::new(dir);
    let api_port = free_port();
    let (external, mqtt) = match broker {
        Broker::Embedded => (None, plant.broker()),
        Broker::Mosquitto { port, .. } => (
            Some(format!("127.0.0.1:{port}")),
            format!("127.0.0.1:{port}"),
        ),
    };
    let hub_cfg = dir.join("hub.toml");
    std::fs::write(
        &hub_cfg,
        plant.hub_toml(&[AGENT], external.as_deref(), api_port),
    )
    .unwrap();
    let key = dir.join(format!("{AGENT}.key"));
    plant.station_key(AGENT);
    let agent_data = dir.join(AGENT);
    std::fs::create_dir_all(&agent_data).unwrap();
    let agent_cfg = dir.join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            "[station]\nsite = \"{SITE}\"\nagent_id = \"{AGENT}\"\ndata_dir = \"{}\"\nkey_file = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[hub]\ncosigner_key = \"{}\"\nheartbeat_secs = 2\nack_timeout_secs = 5\n[hub.mqtt]\nbroker = \"{mqtt}\"\nreconnect_max_ms = 2000\nusername = \"{AGENT}\"\npassword_file = \"{}\"\n{}",
            agent_data.display(),
            key.display(),
            plant.cosigner,
            plant.station_secret(AGENT).display(),
            FlowBench::source_toml(bench.addr, 5, 500),
        ),
    )
    .unwrap();
    Setup {
        plant,
        hub_cfg,
        agent_cfg,
        api: std::net::SocketAddr::from(([127, 0, 0, 1], api_port)),
        agent_data,
        logs: dir.to_owned(),
    }
}

async fn start_hub(s: &Setup) -> Child {
    let c = spawn(
        Path::new(env!("CARGO_BIN_EXE_proofline-hub")),
        &["run", "--config", s.hub_cfg.to_str().unwrap()],
        &s.logs.join("hub.log"),
    );
    let api = s.api;
    assert!(
        until(Duration::from_secs(20), || async move {
            tokio::net::TcpStream::connect(api).await.is_ok()
        })
        .await,
        "hub API did not come up; see {}",
        s.logs.join("hub.log").display()
    );
    c
}

fn start_agent(s: &Setup) -> Child {
    spawn(
        &agent_bin(),
        &["run", "--config", s.agent_cfg.to_str().unwrap()],
        &s.logs.join("agent.log"),
    )
}

fn tail(p: &Path) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    let lines: Vec<&str> = lines
        .into_iter()
        .filter(|l| !l.contains("without a part"))
        .collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

fn start_mosquitto(conf: &Path, dir: &Path) -> Child {
    let log = dir.join("mosquitto.log");
    let starts = mosquitto_starts(&log);
    let child = spawn(
        Path::new("mosquitto"),
        &["-c", conf.to_str().unwrap()],
        &log,
    );
    // Before it has set its signal handlers, a SIGHUP (the credentials reload) would kill it.
    wait_mosquitto_running(&log, starts + 1);
    child
}

async fn scenario(broker: Broker, dir: &Path) {
    let bench = FlowBench::start(BenchOptions {
        results: u32::MAX,
        cycle: Duration::from_millis(40),
        ..BenchOptions::default()
    })
    .await
    .unwrap();
    let mut mosquitto = match &broker {
        Broker::Mosquitto { conf, .. } => Some(start_mosquitto(conf, dir)),
        Broker::Embedded => None,
    };
    let s = setup(dir, &broker, &bench);
    // The setup issued the credentials: Mosquitto reads its password and ACL files again.
    if let Some(pid) = mosquitto.as_ref().and_then(|m| m.id()) {
        sighup(pid);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let pause = || tokio::time::sleep(Duration::from_secs(3));
    let mut hub = start_hub(&s).await;
    let mut agent = start_agent(&s);
    pause().await;
    assert!(
        hub_size(s.api, AGENT).await > 0,
        "nothing forwarded; hub log:\n{}\nagent log:\n{}\nmosquitto log:\n{}",
        tail(&s.logs.join("hub.log")),
        tail(&s.logs.join("agent.log")),
        tail(&dir.join("mosquitto.log"))
    );

    // The station is killed mid-stream and started again.
    sigkill(&mut agent).await;
    agent = start_agent(&s);
    pause().await;
    // The hub is killed mid-stream and started again.
    sigkill(&mut hub).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    hub = start_hub(&s).await;
    pause().await;
    // The hub dies right after making a group of batches durable, before cosigning or
    // acknowledging any of it (crash drill), and is started again.
    sigterm(&mut hub).await;
    let mut drilled = spawn_with_env(
        Path::new(env!("CARGO_BIN_EXE_proofline-hub")),
        &["run", "--config", s.hub_cfg.to_str().unwrap()],
        &s.logs.join("hub.log"),
        (proofline_hub::run::DRILL_ABORT_AFTER_PERSIST, "3"),
    );
    let st = tokio::time::timeout(Duration::from_secs(60), drilled.wait())
        .await
        .expect("the drill aborts the hub")
        .unwrap();
    assert!(!st.success(), "the drilled hub aborted: {st}");
    hub = start_hub(&s).await;
    pause().await;
    // The broker is down while production goes on.
    let before = bench.acknowledged();
    match &broker {
        Broker::Embedded => sigterm(&mut hub).await,
        Broker::Mosquitto { .. } => sigterm(mosquitto.as_mut().unwrap()).await,
    }
    tokio::time::sleep(Duration::from_secs(down_secs())).await;
    assert!(
        bench.acknowledged() > before + 10,
        "production went on while the broker was down"
    );
    match &broker {
        Broker::Embedded => hub = start_hub(&s).await,
        Broker::Mosquitto { conf, .. } => mosquitto = Some(start_mosquitto(conf, dir)),
    }
    pause().await;

    // Production ends; the station takes the last result and stops (forwarding its last
    // records on the way out).
    let produced = bench.produced().len() as u32;
    bench.allow(produced);
    let b = &bench;
    assert!(
        until(Duration::from_secs(20), || async move {
            b.acknowledged() >= produced
        })
        .await
    );
    pause().await;
    sigterm(&mut agent).await;

    // The station's ledger, and what the bench delivered.
    let (store, _) = Store::open(&s.agent_data, Access::Read, &StoreOptions::default()).unwrap();
    let head = store.head().size;
    let mut local = Vec::new();
    let mut results = 0u32;
    for item in store.reader().range(0..head) {
        let (seq, bytes) = item.unwrap();
        if matches!(
            Record::decode(&bytes).unwrap().body(),
            Body::InspectionResult(_)
        ) {
            results += 1;
        }
        local.push(export_line(seq, &bytes).unwrap());
    }
    drop(store);
    assert_eq!(
        results, produced,
        "every result the bench delivered is in the station's ledger once"
    );

    // The hub holds exactly those records.
    let api = s.api;
    assert!(
        until(Duration::from_secs(30), || async move {
            hub_size(api, AGENT).await >= head
        })
        .await,
        "hub has {} of {head}; agent log ends:\n{}\nhub log ends:\n{}",
        hub_size(api, AGENT).await,
        tail(&s.logs.join("agent.log")),
        tail(&s.logs.join("hub.log"))
    );
    let mut held = Vec::new();
    while (held.len() as u64) < head {
        let (status, body) = http_get(
            api,
            &format!(
                "/api/v1/agents/{AGENT}/records?from={}&limit=1000",
                held.len()
            ),
        )
        .await;
        assert_eq!(status, 200);
        let page: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        assert!(!page.is_empty());
        for v in page {
            held.push(v.to_string());
        }
    }
    let local: Vec<String> = local
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(hub_size(api, AGENT).await, head, "none twice");
    assert!(
        held == local,
        "the hub's records are the station's, byte for byte"
    );
    for a in alerts(api).await {
        let kind = a["kind"].as_str().unwrap_or("");
        assert!(
            matches!(kind, "stale_agent" | "unfilled_gap"),
            "unexpected alert {a}"
        );
    }
    sigterm(&mut hub).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_proofline-hub"))
        .args([
            "ledger",
            "verify",
            "--config",
            s.hub_cfg.to_str().unwrap(),
            "--data-dir",
        ])
        .arg(&s.plant.hub_data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{}: {results} results, {head} records, all at the hub once; {}",
        match broker {
            Broker::Embedded => "embedded broker",
            Broker::Mosquitto { .. } => "mosquitto",
        },
        String::from_utf8_lossy(&out.stdout).trim()
    );
    if let Some(m) = mosquitto.as_mut() {
        sigterm(m).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_nothing_lost_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    if std::env::var_os("PROOFLINE_KEEP_TEST_DIR").is_some() {
        std::mem::forget(dir);
        eprintln!("keeping {}", path.display());
    }
    scenario(Broker::Embedded, &path).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_nothing_lost_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    // Only its configuration is used: the scenario stops and starts its own process.
    let Some(m) = Mosquitto::start(dir.path()) else {
        return;
    };
    let (conf, port) = (m.conf.clone(), m.port);
    drop(m);
    scenario(Broker::Mosquitto { conf, port }, dir.path()).await;
}
