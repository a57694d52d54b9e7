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
use proofline_common::note::{NoteSigner, VerifierKey};
use proofline_common::record::{now_micros, Alarm, Body, Severity, StationEvent};
use proofline_common::store::Entry;
use proofline_common::wire::{Ack, AgentTopics};
use proofline_common::writer::LedgerHandle;
use rumqttc::Publish;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Answer, Enrolled, Enrolling, StatusTaken, Witness};
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
    /// An administrator asked for a station's key to be replaced (`agent rotate`).
    Rotate {
        agent_id: String,
        key: VerifierKey,
    },
    /// An administrator asked for a station to be removed (`agent remove`).
    Remove {
        agent_id: String,
    },
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
    /// The hub's data directory (enrollment requests are settled there).
    pub data_dir: std::path::PathBuf,
    /// The free-space reserve of the data directory's file system.
    pub reserve: Reserve,
    /// Crash drill: groups left before the process aborts right after a durable witness commit
    /// and before any of it is cosigned or acknowledged (test builds only).
    #[cfg(feature = "test-hooks")]
    pub drill: Option<u64>,
}

impl WitnessWorker {
    /// Runs on its own thread until every sender of commands is gone. A storage failure stops
    /// the hub (`shutdown`): unacknowledged batches are delivered again after the restart.
    pub fn run(mut self, shutdown: CancellationToken) {
        if let Err(e) = self.witness.attach_pending() {
            let why = format!(
                "the reconciled view could not be brought up to the witnessed records: {e}"
            );
            tracing::error!("{why}; stopping the hub");
            let _ = self.fatal.set(why);
            shutdown.cancel();
            return;
        }
        self.take_findings();
        let opened = self.witness.take_opened();
        let mut admin = Vec::new();
        let mut raised = Vec::new();
        for (id, outcome) in opened {
            enrollment_events(&id, outcome, &mut admin, &mut raised);
        }
        if let Err(e) = self.record(&raised, &admin, now_micros()) {
            tracing::error!(error = %format!("{e:#}"), "enrollments could not be recorded in the hub ledger");
        }
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
            let h = &self.metrics.health;
            h.witness_beat_at.store(now_micros(), Ordering::Relaxed);
            if let Some(e) = self.ledger.poisoned() {
                *h.store_failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
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
        // Enrollment changes: recorded in the hub ledger, then their request files settled.
        let mut admin = Vec::new();
        let mut settled = Vec::new();
        let mut changed = false;
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
                    raised.extend(status_alert(w, &self.metrics, &agent_id, &publish.payload));
                    after.push(Some(Outgoing { ack: None, publish }));
                }
                Cmd::Tick => raised.extend(w.tick(now)),
                Cmd::Enroll(e) => {
                    let id = e.agent_id.clone();
                    let outcome = w.enroll(e)?;
                    changed |= outcome == Enrolling::New;
                    enrollment_events(&id, outcome, &mut admin, &mut raised);
                }
                Cmd::Rotate { agent_id, key } => {
                    changed |= rotation(w, agent_id, key, &mut admin, &mut settled)?;
                }
                Cmd::Remove { agent_id } => removal(w, agent_id, &mut admin, &mut settled),
            }
        }
        if changed {
            w.sync()?;
        }
        if self
            .reserve
            .low(&self.data_dir, &self.metrics, &mut raised, &mut admin)
        {
            // No answer: each station keeps the batch and sends it again after its answer
            // timeout. The broker's delivery is acknowledged in turn, as always.
            for (publish, slot) in publishes.into_iter().zip(batch_slots) {
                self.metrics.deferred.fetch_add(1, Ordering::Relaxed);
                after[slot] = Some(Outgoing { ack: None, publish });
            }
            items.clear();
            publishes = Vec::new();
            batch_slots = Vec::new();
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
        self.take_findings();
        self.metrics
            .duplicates
            .store(self.witness.duplicates_total(), Ordering::Relaxed);
        self.metrics
            .replays
            .store(self.witness.replays_total(), Ordering::Relaxed);
        // An alert that cannot be recorded is logged and counted; witnessing goes on (the
        // batches themselves were made durable above).
        match self.record(&raised, &admin, now) {
            Ok(()) => {
                for s in settled {
                    s.apply(&self.data_dir);
                }
            }
            Err(e) => {
                self.metrics
                    .alerts_unrecorded
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %format!("{e:#}"), "alerts could not be recorded in the hub ledger");
            }
        }
        // The API shows what was witnessed before any station is told: whoever reads the API
        // after a station has its cosignature sees it there.
        publish_snapshot(&self.witness, &self.snapshot);
        for o in after.into_iter().flatten() {
            if self.out.blocking_send(o).is_err() {
                break;
            }
        }
        Ok(())
    }

    /// New and changed findings go to the log; the reconciler's state to `/healthz`.
    fn take_findings(&mut self) {
        let (changed, failed) = self.witness.take_reconciled();
        for f in &changed {
            tracing::warn!(finding = %f.id, rule = f.rule.name(), severity = ?f.severity, uii = ?f.uii, station = ?f.station, "{}", f.explanation);
        }
        self.metrics
            .findings_changed
            .fetch_add(changed.len() as u64, Ordering::Relaxed);
        *self
            .metrics
            .health
            .reconcile_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = failed;
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
    /// ledger, with the enrollment changes (durable before the answers that raised them go out).
    fn record(
        &self,
        raised: &[Raised],
        admin: &[(String, &'static str, String)],
        now: i64,
    ) -> anyhow::Result<()> {
        let mut entries = Vec::new();
        for (agent, code, message) in admin {
            tracing::info!(agent = %agent, code, "{message}");
            entries.push(Entry {
                received_at: now,
                body: Body::StationEvent(StationEvent::Alarm(Alarm {
                    source: agent.clone(),
                    code: (*code).to_owned(),
                    severity: Severity::Info,
                    message: message.clone(),
                })),
            });
        }
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

/// The free-space reserve of the hub's disk: below `min_free` bytes the hub takes no new
/// batches, so the disk never fills under the witness (a commit failing on a full disk stops the
/// hub). What it still writes (alerts, enrollment changes) is small and goes into the reserve.
#[derive(Debug)]
pub struct Reserve {
    min_free: u64,
    checked_at: Option<std::time::Instant>,
    low: bool,
    /// The last error reading the free space, logged once until it changes.
    error: Option<String>,
}

impl Reserve {
    /// How often the free space is read (every group comes through here).
    const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

    pub fn new(min_free: u64) -> Reserve {
        Reserve {
            min_free,
            checked_at: None,
            low: false,
            error: None,
        }
    }

    /// Whether the disk is below the reserve, read at most once a [`Reserve::EVERY`]. A change
    /// raises the `disk_low` alert (with the hub's `/healthz` saying why) or records in the hub
    /// ledger that batches are taken again. When the free space cannot be read, the last state
    /// holds.
    fn low(
        &mut self,
        dir: &std::path::Path,
        metrics: &HubMetrics,
        raised: &mut Vec<Raised>,
        admin: &mut Vec<(String, &'static str, String)>,
    ) -> bool {
        if self.checked_at.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return self.low;
        }
        self.checked_at = Some(std::time::Instant::now());
        let free = match proofline_common::store::free_bytes(dir) {
            Ok(f) => {
                self.error = None;
                f
            }
            Err(e) => {
                let e = e.to_string();
                if self.error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, dir = %dir.display(), "cannot read the free space of the hub's disk");
                    self.error = Some(e);
                }
                return self.low;
            }
        };
        metrics.storage_free_bytes.store(free, Ordering::Relaxed);
        let low = free < self.min_free;
        if low == self.low {
            return low;
        }
        self.low = low;
        let mib = |b: u64| b / (1024 * 1024);
        let why = low.then(|| {
            format!(
                "only {} MiB free on the hub's disk, below the reserve of {} MiB (hub.min_free_mib): no new batches are taken (the stations keep them); free disk space to resume",
                mib(free),
                mib(self.min_free)
            )
        });
        match &why {
            Some(why) => raised.push(Raised {
                kind: AlertKind::DiskLow,
                agent_id: HUB.to_owned(),
                message: why.clone(),
                seq: None,
            }),
            None => {
                let msg = format!(
                    "{} MiB free on the hub's disk, above the reserve again: batches are taken again",
                    mib(free)
                );
                admin.push((HUB.to_owned(), "hub.disk_reserve_restored", msg));
            }
        }
        *metrics
            .health
            .disk_low
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = why;
        low
    }
}

/// The id alerts about the hub itself carry (its own ledger is `proofline/<site>/hub`).
const HUB: &str = "hub";

/// Takes a station's status; the alert it raises, if any (a degraded station, a v1 or
/// unverified status), and the count of those not taken.
fn status_alert(
    w: &mut Witness,
    metrics: &HubMetrics,
    agent_id: &str,
    payload: &[u8],
) -> Option<Raised> {
    let (kind, message) = match w.status(agent_id, payload) {
        StatusTaken::Taken(alert) => return alert,
        StatusTaken::Unknown | StatusTaken::Replay => {
            metrics.ignored.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        StatusTaken::Version => (
            AlertKind::Malformed,
            "the station speaks protocol v1 (unsigned status), which this hub no longer accepts: upgrade the station".to_owned(),
        ),
        StatusTaken::Refused(kind, why) => (kind, why),
    };
    metrics.ignored.fetch_add(1, Ordering::Relaxed);
    Some(Raised {
        kind,
        agent_id: agent_id.to_owned(),
        message,
        seq: None,
    })
}

/// An administrator's key rotation (`agent rotate`): a new key is recorded in the hub ledger;
/// the request is settled once recorded. Whether the witness state changed.
fn rotation(
    w: &mut Witness,
    agent_id: String,
    key: VerifierKey,
    admin: &mut Vec<(String, &'static str, String)>,
    settled: &mut Vec<Settle>,
) -> anyhow::Result<bool> {
    let new = key.to_string();
    Ok(match w.rotate(&agent_id, key)? {
        Some(old) if old == new => {
            settled.push(Settle::Rotated(agent_id, new));
            false
        }
        Some(old) => {
            admin.push((
                agent_id.clone(),
                "hub.station_key_rotated",
                format!("key {old} replaced by {new}"),
            ));
            settled.push(Settle::Rotated(agent_id, new));
            true
        }
        None => {
            tracing::warn!(agent = %agent_id, "a key rotation for a station that is not enrolled is left as it is");
            false
        }
    })
}

/// An administrator's removal (`agent remove`): recorded in the hub ledger, then settled.
fn removal(
    w: &mut Witness,
    agent_id: String,
    admin: &mut Vec<(String, &'static str, String)>,
    settled: &mut Vec<Settle>,
) {
    if let Some(key) = w.remove(&agent_id) {
        admin.push((
            agent_id.clone(),
            "hub.station_removed",
            format!("removed; its witnessed records are kept (key {key})"),
        ));
    }
    settled.push(Settle::Removed(agent_id));
}

/// What an enrollment adds to the hub ledger (a new station) or to the alerts (a key refused).
fn enrollment_events(
    id: &str,
    outcome: Enrolling,
    admin: &mut Vec<(String, &'static str, String)>,
    raised: &mut Vec<Raised>,
) {
    match outcome {
        Enrolling::New => admin.push((
            id.to_owned(),
            "hub.station_enrolled",
            "enrolled".to_owned(),
        )),
        Enrolling::KeyRefused { witnessed, offered } => raised.push(Raised {
            kind: AlertKind::KeyChanged,
            agent_id: id.to_owned(),
            message: format!(
                "the enrollment names key {offered}, but the hub witnesses this station with {witnessed}: refused (a key changed behind the hub's back; use `proofline-hub agent rotate`)"
            ),
            seq: None,
        }),
        Enrolling::Resumed | Enrolling::Unchanged => {}
    }
}

/// An enrollment request carried out and recorded: its files are settled.
enum Settle {
    Rotated(String, String),
    Removed(String),
}

impl Settle {
    fn apply(self, data_dir: &std::path::Path) {
        let r = match &self {
            Settle::Rotated(id, key) => crate::enroll::settle_rotation(data_dir, id, key),
            Settle::Removed(id) => crate::enroll::settle_removal(data_dir, id),
        };
        if let Err(e) = r {
            tracing::error!(error = %format!("{e:#}"), "an enrollment request was carried out but its files could not be settled");
        }
    }
}

fn publish_snapshot(w: &Witness, tx: &watch::Sender<Arc<Snapshot>>) {
    let agents = w.agents();
    let readers = agents
        .iter()
        .filter_map(|a| Some((a.agent_id.clone(), w.reader(&a.agent_id)?)))
        .collect();
    tx.send_replace(Arc::new(Snapshot {
        agents,
        readers,
        lookup: w.lookup(),
        keys: w.keys(),
    }));
}
