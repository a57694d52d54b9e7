//! The witness: checks each agent's batches, keeps its records, and cosigns its checkpoints
//! (DESIGN §2, §4).
//!
//! For every batch: the agent must be enrolled and the checkpoint signed by its key; the records
//! must continue the chain the hub holds (seq contiguity, `prev` links, origin) and give the
//! checkpoint's Merkle root. Records the hub already holds are accepted only byte-identical
//! (counted as duplicates); a different record at a known seq is a fork. A batch starting beyond
//! the hub's size is answered with `Resend(size)`. A ledger claiming fewer records than the hub
//! witnessed (truncation, rollback to an old disk image) and a boot counter going backwards are
//! refused.
//!
//! Storage: the witness store in the hub's database ([`WitnessStore`]), one witnessed ledger per
//! station. The records of a batch and the station's new state go in atomically; a group of
//! batches is made durable with one sync through the hub ledger's writer (the one owner of the
//! database's fsyncs) before any of them is acknowledged or cosigned.
//!
//! - `check.rs`: one batch, step by step; [`worker`]: the thread that owns the witness;
//! - `tests`: the rules above, batch by batch.

use std::collections::BTreeMap;

use proofline_common::chain::ChainState;
use proofline_common::hash::{genesis_prev, Hash};
use proofline_common::merkle::Frontier;
use proofline_common::note::{NoteSigner, VerifierKey};
use proofline_common::store::{Reader, StoreError, WitnessStore, WitnessedLedger};
use proofline_common::wire::{
    Ack, AckBody, AckMsg, AgentStatusMsg, MsgId, Signed, StatusBody, DOMAIN_ACK, DOMAIN_STATUS,
    MAX_VERSION_BYTES,
};
use proofline_common::writer::LedgerHandle;
use proofline_common::Origin;
use serde::{Deserialize, Serialize};

use crate::alerts::{AlertKind, Raised};
use crate::reconcile::rules::Finding;
use crate::reconcile::{Lookup, Reconciler};

mod check;
pub mod worker;

/// An agent the hub accepts records from.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub agent_id: String,
    pub origin: Origin,
    pub key: VerifierKey,
}

/// What the hub has witnessed of one agent's ledger (persisted with its records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    pub last_leaf: Hash,
    pub frontier: Vec<Hash>,
    pub boot: u32,
    /// The last cosigned checkpoint (agent signature and hub cosignature), at `size`.
    pub cosigned: Option<String>,
    /// When it was cosigned, seconds since the Unix epoch.
    pub cosigned_at: u64,
    /// Byte-identical records received again.
    pub duplicates: u64,
    /// Newest `sent_at` of the station's stored batches (kept for the record; replays are told
    /// by `last_batch`).
    pub last_sent_at: i64,
    /// The newest batch message taken when this state was stored: one at or below it is a
    /// replay. (Appended field: a state stored before it decodes as `AgentStateV1`.)
    pub last_batch: Option<MsgId>,
    /// The verifier key the hub witnesses this station with: set when it is first enrolled and
    /// changed only by a recorded rotation. An enrollment naming another key is refused.
    pub key: Option<String>,
}

/// [`AgentState`] as stored before message ids existed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AgentStateV1 {
    origin: String,
    size: u64,
    root: Hash,
    last_leaf: Hash,
    frontier: Vec<Hash>,
    boot: u32,
    cosigned: Option<String>,
    cosigned_at: u64,
    duplicates: u64,
    last_sent_at: i64,
}

impl From<AgentStateV1> for AgentState {
    fn from(s: AgentStateV1) -> Self {
        AgentState {
            origin: s.origin,
            size: s.size,
            root: s.root,
            last_leaf: s.last_leaf,
            frontier: s.frontier,
            boot: s.boot,
            cosigned: s.cosigned,
            cosigned_at: s.cosigned_at,
            duplicates: s.duplicates,
            last_sent_at: s.last_sent_at,
            last_batch: None,
            key: None,
        }
    }
}

impl AgentState {
    fn genesis(origin: &str) -> Self {
        AgentState {
            origin: origin.to_owned(),
            size: 0,
            root: Frontier::new().root(),
            last_leaf: genesis_prev(origin),
            frontier: Vec::new(),
            boot: 0,
            cosigned: None,
            cosigned_at: 0,
            duplicates: 0,
            last_sent_at: i64::MIN,
            last_batch: None,
            key: None,
        }
    }

    fn chain(&self) -> Result<ChainState, StoreError> {
        let f = Frontier::from_parts(self.size, self.frontier.clone())
            .map_err(|e| StoreError::CorruptMeta(format!("witness frontier: {e}")))?;
        Ok(ChainState::resume(&self.origin, f, self.last_leaf))
    }
}

#[derive(Debug, Clone)]
pub struct WitnessConfig {
    /// Alert when an agent's clock differs from the hub's by more than this.
    pub max_clock_skew_micros: i64,
    /// Alert when a gap is still unfilled after this long.
    pub gap_alert_after_micros: i64,
    /// Alert when an enrolled agent has sent nothing for this long.
    pub stale_after_micros: i64,
}

/// What an enrollment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolling {
    /// A station the hub had never witnessed: its key is now the witnessed key.
    New,
    /// A station witnessed before (the hub restarted): same key.
    Resumed,
    /// Already enrolled with this key.
    Unchanged,
    /// The enrollment names another key than the one the hub witnesses the station with.
    KeyRefused { witnessed: String, offered: String },
}

/// What became of a station's status message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusTaken {
    /// Taken; with the alert it raises when the station newly reports it is degraded.
    Taken(Option<crate::alerts::Raised>),
    /// Not enrolled here.
    Unknown,
    /// A protocol v1 (unsigned) status.
    Version,
    /// Signed and taken before.
    Replay,
    /// Does not decode ([`AlertKind::Malformed`]), or is not signed by the station for itself
    /// ([`AlertKind::BadSignature`]), as batches are judged.
    Refused(AlertKind, String),
}

/// Per-agent state that is not persisted.
#[derive(Debug, Default, Clone)]
struct Live {
    /// When a new, verified message sent within the skew bound last arrived.
    last_seen: Option<i64>,
    /// The newest batch message taken (from the stored state at start).
    last_batch: Option<MsgId>,
    /// The newest status message taken, and the counter of the offline last will its
    /// connection left with the broker.
    last_status: Option<MsgId>,
    will: Option<u64>,
    online: Option<bool>,
    version: Option<String>,
    /// What the station last said is wrong with it.
    degraded: Option<String>,
    gap_since: Option<i64>,
    gap_alerted: bool,
    skewed: bool,
    /// Messages in a row that looked behind the hub's clock by more than the bound, since when.
    behind_count: u32,
    behind_since: Option<i64>,
    stale_alerted: bool,
    rejected: u64,
    batches: u64,
}

#[derive(Debug)]
struct Agent {
    enrolled: Enrolled,
    ledger: WitnessedLedger,
    state: AgentState,
    live: Live,
}

/// One agent as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    pub agent_id: String,
    pub origin: String,
    pub size: u64,
    pub root: String,
    pub boot: u32,
    /// Last cosigned checkpoint time, seconds since the Unix epoch (null before the first).
    pub last_cosigned_at: Option<u64>,
    pub last_cosigned: Option<String>,
    /// Last batch or heartbeat received, UTC microseconds.
    pub last_seen: Option<i64>,
    /// From the agent's signed retained status (its last will says offline).
    pub online: bool,
    /// The station's software version, from its signed status.
    pub version: Option<String>,
    /// What the station says is wrong with it (its ledger cannot store, its disk is full).
    pub degraded: Option<String>,
    pub duplicates: u64,
    pub rejected: u64,
}

/// What the hub answers on a station's ack topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Signed by the hub, bound to the message it answers.
    V2(MsgId, Ack),
    /// A refusal in protocol v1, for a station that speaks nothing else.
    V1(Ack),
}

impl Answer {
    pub fn ack(&self) -> &Ack {
        match self {
            Answer::V2(_, a) | Answer::V1(a) => a,
        }
    }

    /// The payload for the station's ack topic.
    pub fn encode(&self, agent_id: &str, signer: &NoteSigner) -> Vec<u8> {
        match self {
            Answer::V2(answers, ack) => AckMsg::V2(Signed::seal(
                DOMAIN_ACK,
                &AckBody {
                    agent_id: agent_id.to_owned(),
                    answers: *answers,
                    ack: ack.clone(),
                },
                signer,
            ))
            .encode(),
            Answer::V1(ack) => AckMsg::V1(ack.clone()).encode(),
        }
    }
}

/// The witness's answer to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub agent_id: String,
    /// What to publish on the agent's ack topic, if anything: a replay, and a message the station
    /// was not proven to send, get no answer.
    pub answer: Option<Answer>,
    pub alerts: Vec<Raised>,
    /// Records newly stored.
    pub stored: u64,
}

#[derive(Debug)]
pub struct Witness {
    store: WitnessStore,
    /// The hub ledger's writer: it makes what the witness stored durable.
    durable: LedgerHandle,
    signer: NoteSigner,
    agents: BTreeMap<String, Agent>,
    cfg: WitnessConfig,
    started: i64,
    /// Verified messages taken before (broker redeliveries, replays).
    replays: u64,
    /// What the enrollments at open did, for the worker to record.
    opened: Vec<(String, Enrolling)>,
    /// The reconciler, fed in the same group (and made durable by the same sync) as the
    /// records it reads.
    reconciler: Option<Reconciler>,
    pending_reconciler: Option<Reconciler>,
    /// Findings raised or changed since the worker last took them, and why the reconciler
    /// last failed (it retries with the next group; the records are safe either way).
    reconciled: Vec<Finding>,
    reconcile_failed: Option<String>,
}

fn reconcile_store_error(e: crate::reconcile::ReconcileError) -> StoreError {
    match e {
        crate::reconcile::ReconcileError::Store(s) => s,
        other => StoreError::CorruptMeta(format!("reconciling: {other}")),
    }
}

/// The persisted state of a witnessed ledger.
pub fn load_state(ledger: &WitnessedLedger) -> Result<Option<AgentState>, StoreError> {
    match ledger.state()? {
        Some(v) => match postcard::take_from_bytes::<AgentState>(&v) {
            Ok((s, [])) => Ok(Some(s)),
            _ => postcard::from_bytes::<AgentStateV1>(&v)
                .map(|s| Some(s.into()))
                .map_err(|_| StoreError::CorruptMeta("witness state does not decode".into())),
        },
        None => Ok(None),
    }
}

impl Witness {
    pub fn open(
        store: WitnessStore,
        durable: LedgerHandle,
        signer: NoteSigner,
        enrolled: Vec<Enrolled>,
        cfg: WitnessConfig,
        now: i64,
    ) -> Result<Self, StoreError> {
        let mut w = Witness {
            store,
            durable,
            signer,
            agents: BTreeMap::new(),
            cfg,
            started: now,
            replays: 0,
            opened: Vec::new(),
            reconciler: None,
            pending_reconciler: None,
            reconciled: Vec::new(),
            reconcile_failed: None,
        };
        for e in enrolled {
            let id = e.agent_id.clone();
            let outcome = w.enroll(e)?;
            w.opened.push((id, outcome));
        }
        Ok(w)
    }

    /// Starts accepting `e`'s records. Idempotent for the key the hub witnesses the station
    /// with; an enrollment naming another key is refused (the station keeps its witnessed key)
    /// and alerted: keys change only by [`Witness::rotate`].
    pub fn enroll(&mut self, e: Enrolled) -> Result<Enrolling, StoreError> {
        if let Some(a) = self.agents.get(&e.agent_id) {
            if a.enrolled.key == e.key {
                return Ok(Enrolling::Unchanged);
            }
            return Ok(Enrolling::KeyRefused {
                witnessed: a.enrolled.key.to_string(),
                offered: e.key.to_string(),
            });
        }
        let ledger = self.store.open(&e.agent_id)?;
        let mut state = match load_state(&ledger)? {
            Some(s) if s.origin != e.origin.as_str() => {
                return Err(StoreError::OriginMismatch {
                    path: self.store.path().to_owned(),
                    ledger: s.origin,
                    requested: e.origin.to_string(),
                })
            }
            Some(s) => s,
            None => AgentState::genesis(e.origin.as_str()),
        };
        let offered = e.key.to_string();
        let mut e = e;
        let outcome = match state.key.as_deref() {
            Some(k) if k != offered => {
                // Witness with the key the history was witnessed with.
                let witnessed = VerifierKey::parse(k)
                    .map_err(|err| StoreError::CorruptMeta(format!("witnessed key: {err}")))?;
                e.key = witnessed;
                Enrolling::KeyRefused {
                    witnessed: k.to_owned(),
                    offered,
                }
            }
            Some(_) => Enrolling::Resumed,
            None => {
                state.key = Some(offered.clone());
                ledger.append(
                    state.size,
                    std::iter::empty(),
                    &postcard::to_stdvec(&state).expect("state encodes"),
                )?;
                Enrolling::New
            }
        };
        tracing::info!(agent = %e.agent_id, size = state.size, "witnessing");
        let live = Live {
            last_batch: state.last_batch,
            ..Live::default()
        };
        self.agents.insert(
            e.agent_id.clone(),
            Agent {
                enrolled: e,
                ledger,
                state,
                live,
            },
        );
        Ok(outcome)
    }

    /// Replaces an enrolled station's key (a rotation an administrator asked for); the caller
    /// records it in the hub ledger. Returns the key it replaces.
    pub fn rotate(
        &mut self,
        agent_id: &str,
        key: VerifierKey,
    ) -> Result<Option<String>, StoreError> {
        let Some(a) = self.agents.get_mut(agent_id) else {
            return Ok(None);
        };
        let old = a.enrolled.key.to_string();
        let mut state = a.state.clone();
        state.key = Some(key.to_string());
        a.ledger.append(
            state.size,
            std::iter::empty(),
            &postcard::to_stdvec(&state).expect("state encodes"),
        )?;
        a.state = state;
        a.enrolled.key = key;
        Ok(Some(old))
    }

    /// Stops witnessing a station (its witnessed records stay); returns its key if it was
    /// enrolled.
    pub fn remove(&mut self, agent_id: &str) -> Option<String> {
        self.agents
            .remove(agent_id)
            .map(|a| a.enrolled.key.to_string())
    }

    /// What the enrollments at open did (once).
    pub fn take_opened(&mut self) -> Vec<(String, Enrolling)> {
        std::mem::take(&mut self.opened)
    }

    /// Makes every state change so far durable (one sync through the hub ledger's writer).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.durable.sync_blocking()
    }

    pub fn is_enrolled(&self, agent_id: &str) -> bool {
        self.agents.contains_key(agent_id)
    }

    /// Handles a group of record batches and makes everything they stored durable with one
    /// fsync. The replies may be sent (and the MQTT messages acknowledged) only after this
    /// returns `Ok`.
    pub fn handle(
        &mut self,
        items: &[(String, Vec<u8>)],
        now: i64,
    ) -> Result<Vec<Reply>, StoreError> {
        let mut replies = Vec::with_capacity(items.len());
        let mut stored = false;
        let mut grew = std::collections::BTreeSet::new();
        for (agent_id, payload) in items {
            let r = self.one(agent_id, payload, now)?;
            stored |= r.stored > 0
                || matches!(
                    r.answer.as_ref().map(Answer::ack),
                    Some(Ack::Cosigned { .. })
                );
            if r.stored > 0 {
                grew.insert(agent_id.clone());
            }
            replies.push(r);
        }
        for id in grew {
            self.reconcile(&id);
        }
        if stored {
            self.durable.sync_blocking()?;
        }
        Ok(replies)
    }

    /// Attaches the reconciler and brings it up to what the store holds: a station's records
    /// not yet reconciled are applied; an index claiming more than the store holds (a crash
    /// kept the reconciler's batch but not its records) is rebuilt from the records.
    pub fn attach_reconciler(&mut self, mut r: Reconciler) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let before = r.records();
        let mut sizes = Vec::new();
        for id in self.store.stations() {
            let size = match load_state(&self.store.open(&id)?)? {
                Some(s) => s.size,
                None => 0,
            };
            sizes.push((id, size));
        }
        if sizes.iter().any(|(id, size)| r.ahead_of(id, *size)) {
            tracing::warn!("the reconciled view is ahead of the witnessed records (a crash): rebuilding it from the records");
            r.reset().map_err(reconcile_store_error)?;
        }
        for (id, size) in sizes {
            let changed = r
                .catch_up(&self.store, &id, size)
                .map_err(reconcile_store_error)?;
            self.reconciled.extend(changed);
        }
        if r.records() != before {
            // Durable now, not with the first batch.
            self.durable.sync_blocking()?;
            tracing::info!(
                records = r.records() - before,
                ms = started.elapsed().as_millis() as u64,
                "reconciled the records not yet in the reconciled view"
            );
        }
        self.reconciler = Some(r);
        Ok(())
    }

    /// Sets the reconciler to attach when the witness thread starts
    /// ([`Witness::attach_pending`]).
    pub fn set_reconciler(&mut self, r: Reconciler) {
        self.pending_reconciler = Some(r);
    }

    /// Attaches the reconciler set by [`Witness::set_reconciler`], if any.
    pub fn attach_pending(&mut self) -> Result<(), StoreError> {
        match self.pending_reconciler.take() {
            Some(r) => self.attach_reconciler(r),
            None => Ok(()),
        }
    }

    /// Reads what the reconciler keeps, attached or still to attach (for the QMS worker).
    pub fn reconciler_lookup(&self) -> Option<Lookup> {
        self.reconciler
            .as_ref()
            .or(self.pending_reconciler.as_ref())
            .map(Reconciler::lookup)
    }

    /// Reads what the reconciler keeps (for the API).
    pub fn lookup(&self) -> Option<Lookup> {
        self.reconciler.as_ref().map(Reconciler::lookup)
    }

    /// Findings raised or changed since last asked, and the reconciler's failure, if any.
    pub fn take_reconciled(&mut self) -> (Vec<Finding>, Option<String>) {
        (
            std::mem::take(&mut self.reconciled),
            self.reconcile_failed.clone(),
        )
    }

    fn reconcile(&mut self, agent_id: &str) {
        let Some(r) = self.reconciler.as_mut() else {
            return;
        };
        let Some(size) = self.agents.get(agent_id).map(|a| a.state.size) else {
            return;
        };
        match r.catch_up(&self.store, agent_id, size) {
            Ok(changed) => {
                self.reconciled.extend(changed);
                self.reconcile_failed = None;
            }
            Err(e) => {
                if self.reconcile_failed.is_none() {
                    tracing::error!(agent = %agent_id, error = %e, "the reconciler failed; it tries again with the next batch (the records are stored)");
                }
                self.reconcile_failed = Some(format!("{agent_id}: {e}"));
            }
        }
    }

    /// Takes a station's retained status if it is signed by the station and newer than the last
    /// one taken, or is the offline last will that status announced. A status never counts as
    /// liveness: the broker hands out retained ones long after they were sent.
    pub fn status(&mut self, agent_id: &str, payload: &[u8]) -> StatusTaken {
        let Some(a) = self.agents.get_mut(agent_id) else {
            return StatusTaken::Unknown;
        };
        let signed = match AgentStatusMsg::decode(payload) {
            Ok(AgentStatusMsg::V2(s)) => s,
            Ok(AgentStatusMsg::V1(_)) => return StatusTaken::Version,
            Err(e) => return StatusTaken::Refused(AlertKind::Malformed, e.to_string()),
        };
        let s: StatusBody = match signed.open(DOMAIN_STATUS, &a.enrolled.key) {
            Ok(s) => s,
            Err(e) => {
                return StatusTaken::Refused(
                    AlertKind::BadSignature,
                    format!("status refused: {e}"),
                )
            }
        };
        if s.agent_id != agent_id {
            return StatusTaken::Refused(
                AlertKind::BadSignature,
                format!(
                    "a status signed for station {:?} was published on this station's topic",
                    check::truncate(&s.agent_id, 64)
                ),
            );
        }
        let is_will = !s.online
            && a.live.last_status.is_some_and(|l| l.boot == s.id.boot)
            && a.live.will == Some(s.id.counter);
        if !is_will && a.live.last_status.is_some_and(|l| s.id <= l) {
            return StatusTaken::Replay;
        }
        let mut raised = None;
        if is_will {
            a.live.will = None;
        } else {
            a.live.last_status = Some(s.id);
            a.live.will = s.will;
            a.live.version = Some(check::truncate(&s.version, MAX_VERSION_BYTES).to_owned());
            raised = check::degraded_change(&mut a.live, agent_id, s.degraded.as_deref());
        }
        a.live.online = Some(s.online);
        StatusTaken::Taken(raised)
    }

    /// Time-based alerts: stale agents and unfilled gaps.
    pub fn tick(&mut self, now: i64) -> Vec<Raised> {
        let mut out = Vec::new();
        for (id, a) in &mut self.agents {
            let seen = a.live.last_seen.unwrap_or(self.started);
            if now - seen > self.cfg.stale_after_micros && !a.live.stale_alerted {
                a.live.stale_alerted = true;
                out.push(Raised {
                    kind: AlertKind::StaleAgent,
                    agent_id: id.clone(),
                    message: match a.live.last_seen {
                        Some(_) => format!("nothing received for {} s", (now - seen) / 1_000_000),
                        None => format!(
                            "nothing received since the hub started {} s ago",
                            (now - seen) / 1_000_000
                        ),
                    },
                    seq: None,
                });
            }
            if let Some(since) = a.live.gap_since {
                if now - since > self.cfg.gap_alert_after_micros && !a.live.gap_alerted {
                    a.live.gap_alerted = true;
                    out.push(Raised {
                        kind: AlertKind::UnfilledGap,
                        agent_id: id.clone(),
                        message: format!(
                            "records from seq {} have not arrived for {} s",
                            a.state.size,
                            (now - since) / 1_000_000
                        ),
                        seq: Some(a.state.size),
                    });
                }
            }
        }
        out
    }

    /// Each witnessed station's key.
    pub fn keys(&self) -> BTreeMap<String, VerifierKey> {
        self.agents
            .iter()
            .map(|(id, a)| (id.clone(), a.enrolled.key.clone()))
            .collect()
    }

    pub fn agents(&self) -> Vec<AgentView> {
        self.agents
            .iter()
            .map(|(id, a)| AgentView {
                agent_id: id.clone(),
                origin: a.state.origin.clone(),
                size: a.state.size,
                root: a.state.root.to_hex(),
                boot: a.state.boot,
                last_cosigned_at: a.state.cosigned.as_ref().map(|_| a.state.cosigned_at),
                last_cosigned: a.state.cosigned.clone(),
                last_seen: a.live.last_seen,
                online: a.live.online.unwrap_or(false),
                version: a.live.version.clone(),
                degraded: a.live.degraded.clone(),
                duplicates: a.state.duplicates,
                rejected: a.live.rejected,
            })
            .collect()
    }

    /// A reader over an agent's witnessed records, and its size.
    pub fn reader(&self, agent_id: &str) -> Option<(Reader, u64)> {
        let a = self.agents.get(agent_id)?;
        Some((a.ledger.reader(), a.state.size))
    }

    /// Verified messages taken before (broker redeliveries, replays), over every station.
    pub fn replays_total(&self) -> u64 {
        self.replays
    }

    /// Byte-identical records received again, over every station.
    pub fn duplicates_total(&self) -> u64 {
        self.agents.values().map(|a| a.state.duplicates).sum()
    }
}

#[cfg(test)]
mod tests;
