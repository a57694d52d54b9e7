//! Store-and-forward to the hub (DESIGN §2, §4).
//!
//! The station publishes its ledger in seq order from the last cosigned size, in batches under a
//! byte budget, each ending with a checkpoint signed by the station's key; an idle ledger sends a
//! heartbeat checkpoint at its head.
//!
//! # Invariants
//! - The hub's cosigned checkpoint is the only delivery receipt. It is checked (station
//!   signature, hub cosignature, root against the local ledger) and stored durably before
//!   anything counts as delivered. `publish()` returning Ok means only "queued".
//! - Records go out strictly in seq order. After a reconnect, an ack timeout, a `Resend` or a
//!   refusal the forwarder starts again from what the hub has, never from what it queued.
//! - The broker is not trusted (protocol v2): every batch, heartbeat and status is signed with
//!   the station key and carries a new message id (boot, counter); an answer is taken only if
//!   the hub key signed it for this station and boot and it names a batch in flight.
//! - After a reset the batches still in flight are stale: their `Resend` or refusal answers are
//!   ignored, while a cosignature, which names its own size, is always used.
//! - A hub that asks again for records it had cosigned has lost data: that is recorded once per
//!   regression in the station's own ledger, where it cannot be rolled back with the hub.
//! - A failing local ledger is not a failing link: it is logged and counted as a ledger error,
//!   sending waits, and the connection to the hub is kept.
//!
//! # Layout
//! - [`machine`]: the forwarding state machine, driven by events with the time passed in; it
//!   publishes through the [`Publisher`](machine::Publisher) trait, so it runs in tests with no
//!   broker and no clock;
//! - `link`: [`run`], the task that owns the MQTT connection (one fresh client per connection,
//!   reconnect backoff, the 200 ms tick) and turns what happens into events.

use std::time::Duration;

use proofline_common::config::Problems;
use proofline_common::mqtt::{MqttPlan, MqttSection};
use proofline_common::note::{NoteError, NoteSigner, VerifierKey};
use proofline_common::store::StoreError;
use proofline_common::wire::AgentTopics;
use serde::Deserialize;

mod link;
pub mod machine;
#[cfg(test)]
mod tests;

pub use link::{run, run_with_interlock};

/// The forwarder: owns the MQTT connection to the hub until its shutdown.
#[derive(Debug)]
pub struct Forwarder {
    pub plan: ForwardPlan,
    pub ledger: proofline_common::writer::LedgerHandle,
    /// The last cosigned checkpoint in the ledger, where forwarding resumes.
    pub start: Option<proofline_common::store::Cosigned>,
    pub metrics: std::sync::Arc<crate::station::Metrics>,
    /// Where the size the hub last cosigned is published.
    pub cosigned: tokio::sync::watch::Sender<u64>,
    /// What is wrong with the station (its ledger cannot store, its disk is full), if anything:
    /// sent, signed, in every batch, heartbeat and status.
    pub degraded: tokio::sync::watch::Receiver<Option<String>>,
    /// The route interlock's questions, when it is configured.
    pub asks: Option<tokio::sync::mpsc::Receiver<crate::interlock::HubAsk>>,
}

impl Forwarder {
    pub async fn run(self, shutdown: tokio_util::sync::CancellationToken) {
        run_with_interlock(
            self.plan,
            self.ledger,
            self.start,
            self.metrics,
            self.cosigned,
            self.degraded,
            self.asks,
            shutdown,
        )
        .await
    }
}

/// `[hub]`: where and how the station forwards its ledger.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSection {
    /// The hub's cosignature verifier key, as `proofline-hub keygen` printed it.
    pub cosigner_key: String,
    pub mqtt: MqttSection,
    /// Largest batch of records in one message (their bytes).
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Batches sent before the first is acknowledged.
    #[serde(default = "default_max_inflight_batches")]
    pub max_inflight_batches: usize,
    /// Checkpoint sent when nothing new was recorded for this long, so the hub sees the station
    /// is alive and its ledger unchanged.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// A batch not answered within this time is sent again (from the last cosigned size).
    #[serde(default = "default_ack_timeout_secs")]
    pub ack_timeout_secs: u64,
}

fn default_batch_max_bytes() -> usize {
    64 * 1024
}
fn default_max_inflight_batches() -> usize {
    8
}
fn default_heartbeat_secs() -> u64 {
    10
}
fn default_ack_timeout_secs() -> u64 {
    15
}

impl HubSection {
    pub fn check(&self, p: &mut Problems) {
        if let Err(e) = VerifierKey::parse(&self.cosigner_key) {
            p.add("hub.cosigner_key", e.to_string());
        }
        self.mqtt.check("hub.mqtt", p);
        if !(1024..=512 * 1024).contains(&self.batch_max_bytes) {
            p.add("hub.batch_max_bytes", "must be 1024 to 524288");
        }
        if !(1..=64).contains(&self.max_inflight_batches) {
            p.add("hub.max_inflight_batches", "must be 1 to 64");
        }
        if !(1..=3600).contains(&self.heartbeat_secs) {
            p.add("hub.heartbeat_secs", "must be 1 to 3600");
        }
        if self.ack_timeout_secs == 0 || self.ack_timeout_secs > 600 {
            p.add("hub.ack_timeout_secs", "must be 1 to 600");
        }
    }
}

/// Everything the forwarder needs, checked.
#[derive(Debug, Clone)]
pub struct ForwardPlan {
    pub mqtt: MqttPlan,
    pub cosigner: VerifierKey,
    pub signer: NoteSigner,
    pub topics: AgentTopics,
    /// This station's id, named in every signed message and every answer it takes.
    pub agent_id: String,
    pub client_id: String,
    pub batch_max_bytes: usize,
    pub max_inflight: usize,
    pub heartbeat: Duration,
    pub ack_timeout: Duration,
}

impl ForwardPlan {
    pub fn new(
        h: &HubSection,
        signer: NoteSigner,
        site: &str,
        agent_id: &str,
    ) -> anyhow::Result<Self> {
        Ok(ForwardPlan {
            mqtt: MqttPlan::new(&h.mqtt)?,
            cosigner: VerifierKey::parse(&h.cosigner_key)?,
            signer,
            topics: AgentTopics::new(site, agent_id),
            agent_id: agent_id.to_owned(),
            client_id: format!("proofline-agent-{site}-{agent_id}"),
            batch_max_bytes: h.batch_max_bytes,
            max_inflight: h.max_inflight_batches,
            heartbeat: Duration::from_secs(h.heartbeat_secs),
            ack_timeout: Duration::from_secs(h.ack_timeout_secs),
        })
    }
}

/// Why a forwarding step failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The connection to the broker failed: reconnect after a backoff.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The local ledger failed: an operator must look; reconnecting would not help.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// The MQTT connection failed or could not be set up. Boxed: rumqttc's errors carry whole
/// packets, and these errors travel through every step of the forwarder.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The TLS or password files became unreadable since the plan was built.
    #[error("connection settings: {0}")]
    Options(String),
    #[error(transparent)]
    Connection(Box<rumqttc::ConnectionError>),
    #[error(transparent)]
    Client(Box<rumqttc::ClientError>),
    #[error("not connected")]
    NotConnected,
}

impl From<rumqttc::ConnectionError> for LinkError {
    fn from(e: rumqttc::ConnectionError) -> Self {
        LinkError::Connection(Box::new(e))
    }
}

impl From<rumqttc::ClientError> for LinkError {
    fn from(e: rumqttc::ClientError) -> Self {
        LinkError::Client(Box::new(e))
    }
}

/// The local ledger could not give or keep what forwarding needs.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("reading record {seq}: {source}")]
    Read {
        seq: u64,
        #[source]
        source: StoreError,
    },
    #[error("storing the cosigned checkpoint at size {size}: {source}")]
    Store {
        size: u64,
        #[source]
        source: StoreError,
    },
    #[error("signing the checkpoint at size {size}: {source}")]
    Sign {
        size: u64,
        #[source]
        source: NoteError,
    },
    #[error("the hub asks for seq {asked} but this ledger ends at {head} (was it rolled back?)")]
    BeyondHead { asked: u64, head: u64 },
    #[error("record {seq} is not in the ledger any more")]
    Missing { seq: u64 },
}
