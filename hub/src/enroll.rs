//! Enrollments made with `proofline-hub agent enroll` (`<data_dir>/enrolled/<agent_id>.key`) and
//! the hub's clock: every second the witness gets a tick (time-based alerts); every few seconds
//! the enrollment directory is read again and the hub's retained status republished.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proofline_common::note::{Checkpoint, NoteSigner};
use proofline_common::wire::{HubStatus, HubStatusMsg};
use proofline_common::writer::LedgerHandle;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::witness::worker::Cmd;
use crate::witness::Enrolled;

/// How often enrollments in the data directory are re-read and the hub status republished.
const SLOW_TICK: Duration = Duration::from_secs(5);
/// Directory (in the data directory) of agents enrolled with `proofline-hub agent enroll`.
pub const ENROLLED_DIR: &str = "enrolled";

/// Enrollments made with `proofline-hub agent enroll`.
pub fn read_enrollments(data_dir: &Path, site: &str) -> Vec<Enrolled> {
    let dir = data_dir.join(ENROLLED_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".key"))
        else {
            continue;
        };
        match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|k| crate::config::enrolled(site, id, k.trim()))
        {
            Ok(en) => out.push(en),
            Err(err) => {
                tracing::error!(file = %path.display(), error = %err, "ignoring a bad enrollment")
            }
        }
    }
    out
}

/// Where `proofline-hub agent enroll` writes an enrollment.
pub fn enrollment_path(data_dir: &Path, agent_id: &str) -> PathBuf {
    data_dir.join(ENROLLED_DIR).join(format!("{agent_id}.key"))
}

/// The hub's retained status: online or not, with a checkpoint of its own ledger.
pub fn hub_status(online: bool, ledger: &LedgerHandle, signer: &NoteSigner) -> Vec<u8> {
    let head = ledger.head();
    let cp = Checkpoint {
        origin: ledger.origin().to_string(),
        size: head.size,
        root: head.root,
    };
    HubStatusMsg::V1(HubStatus {
        online,
        version: env!("CARGO_PKG_VERSION").into(),
        checkpoint: cp.sign(signer).ok().map(|n| n.to_string()),
    })
    .encode()
}

/// Ticks, the enrollment watch and the hub's status.
#[derive(Debug)]
pub struct Ticker {
    pub commands: mpsc::Sender<Cmd>,
    pub client: AsyncClient,
    pub ledger: LedgerHandle,
    pub signer: NoteSigner,
    pub data_dir: PathBuf,
    pub site: String,
    pub status_topic: String,
    /// Stations in the configuration keep their configured key: an enrollment file for the same
    /// station (left from before it was configured) does not replace it, as at start and in
    /// `ledger verify`.
    pub configured: HashSet<String>,
}

impl Ticker {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut t = tokio::time::interval(Duration::from_secs(1));
        let mut n = 0u64;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = t.tick() => {}
            }
            let _ = self.commands.send(Cmd::Tick).await;
            if n % SLOW_TICK.as_secs() == 0 {
                for e in read_enrollments(&self.data_dir, &self.site) {
                    if !self.configured.contains(&e.agent_id) {
                        let _ = self.commands.send(Cmd::Enroll(e)).await;
                    }
                }
                let status = hub_status(true, &self.ledger, &self.signer);
                let _ = self
                    .client
                    .try_publish(&self.status_topic, QoS::AtLeastOnce, true, status);
            }
            n += 1;
        }
    }
}
