//! The witness thread: the one owner of the witnessed ledgers.
//!
//! It takes what the MQTT link hands over ([`Cmd`]) in groups, checks the group's batches, makes
//! everything they stored durable with one sync, records the alerts they raised in the hub's own
//! ledger, and only then hands the answers to the responder, in the order the messages came
//! (rumqttd requires in-order acknowledgements). A message whose batch is not durable is never
//! acknowledged, so the broker delivers it again.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use proofline_common::note::NoteSigner;
use proofline_common::record::{now_micros, Alarm, Body, Severity, StationEvent};
use proofline_common::store::Entry;
use proofline_common::wire::{Ack, AgentTopics};
use proofline_common::writer::LedgerHandle;
use rumqttc::Publish;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Answer, Enrolled, StatusTaken, Witness};
use crate::alerts::{AlertBook, AlertKind, Raised};
use crate::api::{HubMetrics, Snapshot};

/// Batches checked together and made durable with one fsync.
const MAX_GROUP: usize = 64;

/// What the witness thread is handed.
#[derive(Debug)]
pub enum Cmd {
    Batch {
        agent_id: String,
        publish: Publish,
    },
    Status {
        agent_id: String,
        publish: Publish,
    },
    Tick,
    Enroll(Enrolled),
    /// A message the hub does not handle (its own status): acknowledged in turn.
    Ignore(Publish),
}

/// What the responder sends: an optional ack message, then the MQTT acknowledgement.
#[derive(Debug)]
pub struct Outgoing {
    pub ack: Option<(String, Vec<u8>)>,
    pub publish: Publish,
}

/// The witness thread's component.
#[derive(Debug)]
pub struct WitnessWorker {
    pub witness: Witness,
    pub commands: mpsc::Receiver<Cmd>,
    pub ledger: LedgerHandle,
    pub metrics: Arc<HubMetrics>,
    pub alerts: Arc<Mutex<AlertBook>>,
    pub out: mpsc::Sender<Outgoing>,
    pub snapshot: watch::Sender<Arc<Snapshot>>,
    pub site: String,
    /// Signs every answer.
    pub signer: NoteSigner,
    /// Set, with the reason, when the worker stops the hub because its storage failed.
    pub fatal: Arc<std::sync::OnceLock<String>>,
    /// Crash drill: groups left before the process aborts right after a durable witness commit
    /// and before any of it is cosigned or acknowledged (test builds only).
    #[cfg(feature = "test-hooks")]
    pub drill: Option<u64>,
}

impl WitnessWorker {
    /// Runs on its own thread until every sender of commands is gone. A storage failure stops
    /// the hub (`shutdown`): unacknowledged batches are delivered again after the restart.
    pub fn run(mut self, shutdown: CancellationToken) {
        publish_snapshot(&self.witness, &self.snapshot);
        while let Some(first) = self.commands.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match self.commands.try_recv() {
                    Ok(c) => group.push(c),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.group(group) {
                let why = format!("witness storage failed: {e:#}");
                tracing::error!(
                    "{why}; stopping the hub (unacknowledged batches will be delivered again)"
                );
                let _ = self.fatal.set(why);
                shutdown.cancel();
                break;
            }
            publish_snapshot(&self.witness, &self.snapshot);
        }
    }

    /// Handles one group of commands; batches are stored with one fsync before any answer goes
    /// out.
    fn group(&mut self, group: Vec<Cmd>) -> anyhow::Result<()> {
        let now = now_micros();
        let mut items = Vec::new();
        let mut publishes = Vec::new();
        let mut raised: Vec<Raised> = Vec::new();
        // Answers in the order the messages came: rumqttd requires in-order acknowledgements.
        let mut after: Vec<Option<Outgoing>> = Vec::new();
        let mut batch_slots = Vec::new();
        let w = &mut self.witness;
        for c in group {
            match c {
                Cmd::Ignore(publish) => after.push(Some(Outgoing { ack: None, publish })),
                Cmd::Batch { agent_id, publish } => {
                    items.push((agent_id, publish.payload.to_vec()));
                    publishes.push(publish);
                    batch_slots.push(after.len());
                    after.push(None);
                }
                Cmd::Status { agent_id, publish } => {
                    match w.status(&agent_id, &publish.payload) {
                        StatusTaken::Taken => {}
                        StatusTaken::Unknown | StatusTaken::Replay => {
                            self.metrics.ignored.fetch_add(1, Ordering::Relaxed);
                        }
                        StatusTaken::Version => {
                            self.metrics.ignored.fetch_add(1, Ordering::Relaxed);
                            raised.push(Raised {
                                kind: AlertKind::Malformed,
                                agent_id: agent_id.clone(),
                                message: "the station speaks protocol v1 (unsigned status), which this hub no longer accepts: upgrade the station".into(),
                                seq: None,
                            });
                        }
                        StatusTaken::Refused(why) => {
                            self.metrics.ignored.fetch_add(1, Ordering::Relaxed);
                            raised.push(Raised {
                                kind: AlertKind::BadSignature,
                                agent_id: agent_id.clone(),
                                message: why,
                                seq: None,
                            });
                        }
                    }
                    after.push(Some(Outgoing { ack: None, publish }));
                }
                Cmd::Tick => raised.extend(w.tick(now)),
                Cmd::Enroll(e) => {
                    if !w.is_enrolled(&e.agent_id) {
                        tracing::info!(agent = %e.agent_id, "enrolled");
                    }
                    w.enroll(e)?;
                }
            }
        }
        let replies = w.handle(&items, now)?;
        #[cfg(feature = "test-hooks")]
        if replies.iter().any(|r| r.stored > 0) {
            self.drill_step();
        }
        self.metrics.witness_groups.fetch_add(1, Ordering::Relaxed);
        for ((reply, publish), slot) in replies.into_iter().zip(publishes).zip(batch_slots) {
            self.count(reply.answer.as_ref().map(Answer::ack), reply.stored);
            raised.extend(reply.alerts);
            let ack = reply.answer.map(|a| {
                let topic = AgentTopics::new(&self.site, &reply.agent_id).ack;
                (topic, a.encode(&reply.agent_id, &self.signer))
            });
            after[slot] = Some(Outgoing { ack, publish });
        }
        self.metrics
            .duplicates
            .store(self.witness.duplicates_total(), Ordering::Relaxed);
        self.metrics
            .replays
            .store(self.witness.replays_total(), Ordering::Relaxed);
        // An alert that cannot be recorded is logged and counted; witnessing goes on (the
        // batches themselves were made durable above).
        if let Err(e) = self.record_alerts(&raised, now) {
            self.metrics
                .alerts_unrecorded
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %format!("{e:#}"), "alerts could not be recorded in the hub ledger");
        }
        for o in after.into_iter().flatten() {
            if self.out.blocking_send(o).is_err() {
                break;
            }
        }
        Ok(())
    }

    fn count(&self, ack: Option<&Ack>, stored: u64) {
        let m = &self.metrics;
        m.batches.fetch_add(1, Ordering::Relaxed);
        m.records_stored.fetch_add(stored, Ordering::Relaxed);
        match ack {
            Some(Ack::Rejected { .. }) => m.rejected.fetch_add(1, Ordering::Relaxed),
            Some(Ack::Resend { .. }) => m.resends.fetch_add(1, Ordering::Relaxed),
            Some(Ack::Cosigned { .. }) => 0,
            None => m.ignored.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// New alerts go to the alert book, and those it says are due to the log and the hub's own
    /// ledger (durable before the answers that raised them go out).
    fn record_alerts(&self, raised: &[Raised], now: i64) -> anyhow::Result<()> {
        let mut entries = Vec::new();
        if !raised.is_empty() {
            let mut book = self.alerts.lock().unwrap_or_else(|p| p.into_inner());
            for r in raised {
                if let Some(rec) = book.raise(r, now) {
                    tracing::error!(agent = %rec.agent_id, kind = rec.kind.name(), seq = ?rec.seq, "{}", rec.message);
                    entries.push(Entry {
                        received_at: now,
                        body: Body::StationEvent(StationEvent::Alarm(Alarm {
                            source: rec.agent_id,
                            code: format!("witness.{}", rec.kind.name()),
                            severity: Severity::Error,
                            message: rec.message,
                        })),
                    });
                }
            }
        }
        if !entries.is_empty() {
            self.ledger
                .append_blocking(entries)
                .context("recording alerts in the hub ledger")?;
        }
        Ok(())
    }

    #[cfg(feature = "test-hooks")]
    fn drill_step(&mut self) {
        if let Some(n) = self.drill.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                tracing::error!(
                    "crash drill: aborting after a durable witness commit, before its acks"
                );
                std::process::abort();
            }
        }
    }
}

fn publish_snapshot(w: &Witness, tx: &watch::Sender<Arc<Snapshot>>) {
    let agents = w.agents();
    let readers = agents
        .iter()
        .filter_map(|a| Some((a.agent_id.clone(), w.reader(&a.agent_id)?)))
        .collect();
    tx.send_replace(Arc::new(Snapshot { agents, readers }));
}
