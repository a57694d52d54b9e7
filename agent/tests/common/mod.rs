//! Helpers shared by the agent's integration tests: a station directory with its key, an agent
//! run in-process, its HTTP endpoint, and the records it left in its ledger.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use proofline_agent::config::{AgentConfig, AgentPlan};
use proofline_common::record::{Body, InspectionResult, Record, StationEvent};
use proofline_common::store::{Access, Store, StoreOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A key for `proofline/plant-1/<agent_id>` and an empty data directory; returns the
/// `[station]` and `[http]` sections of a configuration for them.
pub fn station(dir: &Path, agent_id: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{agent_id}.key"));
    let origin = proofline_common::Origin::parse(&format!("proofline/plant-1/{agent_id}")).unwrap();
    proofline_agent::keyfile::generate(&origin, &key).unwrap();
    let data = dir.join(agent_id);
    std::fs::create_dir(&data).unwrap();
    let text = format!(
        "[station]\nsite = \"plant-1\"\nagent_id = \"{agent_id}\"\ndata_dir = \"{}\"\nkey_file = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
        data.display(),
        key.display()
    );
    (data, text)
}

/// An agent running in-process.
pub struct Running {
    pub http: std::net::SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops the agent (as SIGTERM would) and waits for its orderly end.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// Checks `text` as `check-config` would and runs the agent.
pub async fn start(text: &str) -> Running {
    start_with(text, None).await
}

/// [`start`] with commits failing while `commit_fault` is set.
pub async fn start_with(
    text: &str,
    commit_fault: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) -> Running {
    let (cfg, problems) = AgentConfig::parse(text).unwrap();
    assert!(
        problems.is_empty() && cfg.problems().is_empty(),
        "{problems:?} {:?}",
        cfg.problems()
    );
    let shutdown = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let plan = AgentPlan::build(&cfg, proofline_common::hash::sha256(text.as_bytes())).unwrap();
    let task = tokio::spawn(proofline_agent::run::run(
        plan,
        shutdown.clone(),
        proofline_agent::run::RunOptions {
            ready: Some(ready_tx),
            commit_fault,
        },
    ));
    let http = tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .unwrap()
        .unwrap()
        .http;
    Running {
        http,
        shutdown,
        task,
    }
}

pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Waits until `/metrics` shows exactly `line`.
pub async fn wait_metric(http: std::net::SocketAddr, line: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
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
}

/// Polls `f` until it holds (30 s at most).
pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every record of the (stopped) agent's ledger.
pub fn records(data: &Path) -> Vec<Record> {
    let (store, _) = Store::open(data, Access::Read, &StoreOptions::default()).unwrap();
    store
        .reader()
        .range(0..store.head().size)
        .map(|r| Record::decode(&r.unwrap().1).unwrap())
        .collect()
}

pub fn results(records: &[Record]) -> Vec<InspectionResult> {
    records
        .iter()
        .filter_map(|r| match r.body() {
            Body::InspectionResult(ir) => Some(ir.clone()),
            _ => None,
        })
        .collect()
}

pub fn events(records: &[Record]) -> Vec<StationEvent> {
    records
        .iter()
        .filter_map(|r| match r.body() {
            Body::StationEvent(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}
