//! Enrollments made with `proofline-hub agent enroll` (`<data_dir>/enrolled/<agent_id>.key`),
//! the requests of `agent rotate` (`<agent_id>.rotate`, the new key) and `agent remove`
//! (`<agent_id>.remove`), and the hub's clock: every second the witness gets a tick (time-based
//! alerts); every few seconds the enrollment directory is read again and the hub's retained
//! status republished. The witness carries out a request, records it in the hub ledger, and
//! only then settles its files ([`settle_rotation`], [`settle_removal`]: a removed station's key
//! moves to `enrolled/removed/`, where `ledger verify` still finds it). A station's broker
//! credential hash is `<agent_id>.cred` beside its key ([`crate::acl`]).

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
    read_keys(&data_dir.join(ENROLLED_DIR), site)
}

fn read_keys(dir: &Path, site: &str) -> Vec<Enrolled> {
    let Ok(entries) = std::fs::read_dir(dir) else {
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

/// Where `agent rotate` leaves a rotation request (the new key).
pub fn rotation_path(data_dir: &Path, agent_id: &str) -> PathBuf {
    data_dir
        .join(ENROLLED_DIR)
        .join(format!("{agent_id}.rotate"))
}

/// Where `agent remove` leaves a removal request.
pub fn removal_path(data_dir: &Path, agent_id: &str) -> PathBuf {
    data_dir
        .join(ENROLLED_DIR)
        .join(format!("{agent_id}.remove"))
}

/// Where a removed station's enrollment is kept (its witnessed records stay verifiable).
pub fn removed_path(data_dir: &Path, agent_id: &str) -> PathBuf {
    data_dir
        .join(ENROLLED_DIR)
        .join("removed")
        .join(format!("{agent_id}.key"))
}

/// Enrollments of removed stations.
pub fn read_removed(data_dir: &Path, site: &str) -> Vec<Enrolled> {
    read_keys(&data_dir.join(ENROLLED_DIR).join("removed"), site)
}

/// The rotation and removal requests waiting in the enrollment directory.
pub fn read_requests(data_dir: &Path, site: &str) -> Vec<Cmd> {
    let dir = data_dir.join(ENROLLED_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(id) = name.strip_suffix(".remove") {
            if proofline_common::wire::is_valid_agent_id(id) {
                out.push(Cmd::Remove {
                    agent_id: id.to_owned(),
                });
            }
        } else if let Some(id) = name.strip_suffix(".rotate") {
            match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|k| crate::config::enrolled(site, id, k.trim()))
            {
                Ok(en) => out.push(Cmd::Rotate {
                    agent_id: en.agent_id,
                    key: en.key,
                }),
                Err(err) => {
                    tracing::error!(file = %path.display(), error = %err, "ignoring a bad rotation request")
                }
            }
        }
    }
    out
}

/// Writes `text` to `path` atomically and durably (see [`proofline_common::durable`]).
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    proofline_common::durable::write_atomically(path, text.as_bytes())
}

/// After a recorded rotation: the enrollment file (if the station has one) holds the new key
/// and the request is gone.
pub fn settle_rotation(data_dir: &Path, agent_id: &str, key: &str) -> anyhow::Result<()> {
    let path = enrollment_path(data_dir, agent_id);
    if path.exists() {
        write_atomically(&path, &format!("{key}\n"))?;
    }
    remove_if_there(&rotation_path(data_dir, agent_id))
}

/// After a recorded removal: the enrollment moves to `removed/`, the broker credential and the
/// request are gone.
pub fn settle_removal(data_dir: &Path, agent_id: &str) -> anyhow::Result<()> {
    let path = enrollment_path(data_dir, agent_id);
    if path.exists() {
        let to = removed_path(data_dir, agent_id);
        proofline_common::durable::create_dir_all(to.parent().expect("a directory"))?;
        proofline_common::durable::rename(&path, &to)?;
    }
    remove_if_there(&rotation_path(data_dir, agent_id))?;
    remove_if_there(&crate::acl::credential_path(data_dir, agent_id))?;
    remove_if_there(&removal_path(data_dir, agent_id))
}

/// Durably: a removed station's credential must not come back after a power cut.
fn remove_if_there(path: &Path) -> anyhow::Result<()> {
    Ok(proofline_common::durable::remove_file(path)?)
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
    /// The embedded broker's rights, kept to the enrollments (None with an external broker:
    /// `proofline-hub broker-config` writes its files).
    pub acl: Option<std::sync::Arc<crate::acl::BrokerAcl>>,
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
                // Requests first; a station being removed is not enrolled again from the file
                // that is moved away once its removal is recorded.
                let mut removing = HashSet::new();
                for c in read_requests(&self.data_dir, &self.site) {
                    if let Cmd::Remove { agent_id } = &c {
                        removing.insert(agent_id.clone());
                    }
                    let _ = self.commands.send(c).await;
                }
                for e in read_enrollments(&self.data_dir, &self.site) {
                    if !self.configured.contains(&e.agent_id) && !removing.contains(&e.agent_id) {
                        let _ = self.commands.send(Cmd::Enroll(e)).await;
                    }
                }
                if let Some(acl) = &self.acl {
                    acl.refresh(&self.data_dir, &self.configured);
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
