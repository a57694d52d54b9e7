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
//! Storage (one sled tree per agent, `w/<agent_id>`, in the hub's database): pages of records
//! keyed like the agent's own ledger (`p` ‖ first seq) and the agent's state under `s`. The
//! records of a batch and the new state go in with one atomic sled batch; a group of batches is
//! made durable with one flush + fsync before any of them is acknowledged or cosigned.

use std::collections::BTreeMap;
use std::path::Path;

use proofline_common::chain::{ChainState, LinkError};
use proofline_common::hash::{genesis_prev, Hash};
use proofline_common::merkle::Frontier;
use proofline_common::note::{Checkpoint, Note, NoteSigner, VerifierKey};
use proofline_common::record::MAX_RECORD_BYTES;
use proofline_common::store::{pkey, push_record, Reader, SharedDb, StoreError, PAGE_TARGET_BYTES};
use proofline_common::wire::{Ack, RecordsMsg, RejectCode};
use proofline_common::Origin;
use serde::{Deserialize, Serialize};

use crate::alerts::{AlertKind, Raised};

const K_STATE: &[u8] = b"s";
/// A clock behind the hub's is alerted after this many messages in a row say so...
const SKEW_BEHIND_MESSAGES: u32 = 5;
/// ...over at least this long (a queued backlog arrives in a burst).
const SKEW_BEHIND_SPAN_MICROS: i64 = 10_000_000;

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
    /// Newest `sent_at` of the agent's messages: an older one is a replay of a message the
    /// broker delivered before, not news about the agent's ledger.
    pub last_sent_at: i64,
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

/// Per-agent state that is not persisted.
#[derive(Debug, Default, Clone)]
struct Live {
    last_seen: Option<i64>,
    online: Option<bool>,
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
    tree: sled::Tree,
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
    /// From the agent's retained status (its last will says offline).
    pub online: bool,
    pub duplicates: u64,
    pub rejected: u64,
}

/// The witness's answer to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub agent_id: String,
    /// What to publish on the agent's ack topic.
    pub ack: Ack,
    pub alerts: Vec<Raised>,
    /// Records newly stored.
    pub stored: u64,
}

#[derive(Debug)]
pub struct Witness {
    db: SharedDb,
    signer: NoteSigner,
    agents: BTreeMap<String, Agent>,
    cfg: WitnessConfig,
    started: i64,
}

fn tree_name(agent_id: &str) -> String {
    format!("w/{agent_id}")
}

/// Agent ids that have a witnessed ledger in `db` (enrolled or not any more).
pub fn stored_agents(db: &sled::Db) -> Vec<String> {
    db.tree_names()
        .iter()
        .filter_map(|n| {
            std::str::from_utf8(n)
                .ok()?
                .strip_prefix("w/")
                .map(str::to_owned)
        })
        .collect()
}

/// The persisted state of a witnessed ledger.
pub fn load_state(tree: &sled::Tree, path: &Path) -> Result<Option<AgentState>, StoreError> {
    match tree.get(K_STATE).map_err(|e| StoreError::Engine {
        path: path.to_owned(),
        message: e.to_string(),
    })? {
        Some(v) => postcard::from_bytes(&v)
            .map(Some)
            .map_err(|_| StoreError::CorruptMeta("witness state does not decode".into())),
        None => Ok(None),
    }
}

/// The tree of a witnessed ledger.
pub fn open_tree(db: &sled::Db, path: &Path, agent_id: &str) -> Result<sled::Tree, StoreError> {
    db.open_tree(tree_name(agent_id))
        .map_err(|e| StoreError::Engine {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

impl Witness {
    pub fn open(
        db: SharedDb,
        signer: NoteSigner,
        enrolled: Vec<Enrolled>,
        cfg: WitnessConfig,
        now: i64,
    ) -> Result<Self, StoreError> {
        let mut w = Witness {
            db,
            signer,
            agents: BTreeMap::new(),
            cfg,
            started: now,
        };
        for e in enrolled {
            w.enroll(e)?;
        }
        Ok(w)
    }

    /// Starts accepting `e`'s records (idempotent for the same key).
    pub fn enroll(&mut self, e: Enrolled) -> Result<(), StoreError> {
        if let Some(a) = self.agents.get(&e.agent_id) {
            if a.enrolled.key != e.key {
                tracing::warn!(agent = %e.agent_id, "enrolled key changed; the new key applies from now on");
                let id = e.agent_id.clone();
                self.agents.get_mut(&id).expect("present").enrolled = e;
            }
            return Ok(());
        }
        let tree = open_tree(&self.db.db, self.db.path(), &e.agent_id)?;
        let state = match load_state(&tree, self.db.path())? {
            Some(s) if s.origin != e.origin.as_str() => {
                return Err(StoreError::OriginMismatch {
                    path: self.db.path().to_owned(),
                    ledger: s.origin,
                    requested: e.origin.to_string(),
                })
            }
            Some(s) => s,
            None => AgentState::genesis(e.origin.as_str()),
        };
        tracing::info!(agent = %e.agent_id, size = state.size, "witnessing");
        self.agents.insert(
            e.agent_id.clone(),
            Agent {
                enrolled: e,
                tree,
                state,
                live: Live::default(),
            },
        );
        Ok(())
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
        for (agent_id, payload) in items {
            let r = self.one(agent_id, payload, now)?;
            stored |= r.stored > 0 || matches!(r.ack, Ack::Cosigned { .. });
            replies.push(r);
        }
        if stored {
            self.db.sync()?;
        }
        Ok(replies)
    }

    fn one(&mut self, agent_id: &str, payload: &[u8], now: i64) -> Result<Reply, StoreError> {
        let mut alerts = Vec::new();
        let reject = |code: RejectCode,
                      kind: AlertKind,
                      msg: String,
                      seq: Option<u64>,
                      alerts: &mut Vec<Raised>| {
            alerts.push(Raised {
                kind,
                agent_id: agent_id.to_owned(),
                message: msg.clone(),
                seq,
            });
            Ack::Rejected { code, reason: msg }
        };
        let reply = |ack: Ack, alerts: Vec<Raised>, stored: u64| Reply {
            agent_id: agent_id.to_owned(),
            ack,
            alerts,
            stored,
        };
        let Some(agent) = self.agents.get_mut(agent_id) else {
            let ack = reject(
                RejectCode::UnknownAgent,
                AlertKind::UnknownAgent,
                format!("agent {agent_id} is not enrolled at this hub"),
                None,
                &mut alerts,
            );
            return Ok(reply(ack, alerts, 0));
        };
        agent.live.last_seen = Some(now);
        agent.live.stale_alerted = false;
        agent.live.batches += 1;
        let batch = match RecordsMsg::decode(payload) {
            Ok(RecordsMsg::V1(b)) => b,
            Err(e) => {
                agent.live.rejected += 1;
                let ack = reject(
                    RejectCode::Malformed,
                    AlertKind::Malformed,
                    e.to_string(),
                    None,
                    &mut alerts,
                );
                return Ok(reply(ack, alerts, 0));
            }
        };
        let (cp, note) = match Checkpoint::open(&batch.checkpoint, &agent.enrolled.key) {
            Ok(x) => x,
            Err(e) => {
                agent.live.rejected += 1;
                let ack = reject(
                    RejectCode::BadSignature,
                    AlertKind::BadSignature,
                    format!(
                        "checkpoint not signed by the enrolled key {}: {e}",
                        agent.enrolled.key
                    ),
                    None,
                    &mut alerts,
                );
                return Ok(reply(ack, alerts, 0));
            }
        };
        let st = &agent.state;
        let n = batch.records.len() as u64;
        // A replayed message (redelivered by the broker, or resent before an earlier answer
        // arrived) says nothing about the ledger's current head or boot.
        let replay = batch.sent_at < st.last_sent_at;
        // The store frames records of 1 to MAX_RECORD_BYTES bytes: anything else is refused
        // before it could reach a page (where it could not be read back).
        let oversized = batch
            .records
            .iter()
            .position(|r| r.0.is_empty() || r.0.len() > MAX_RECORD_BYTES);
        let problem = if let Some(i) = oversized {
            Some((
                RejectCode::Malformed,
                AlertKind::Malformed,
                format!(
                    "record {} is {} bytes; a record is 1 to {MAX_RECORD_BYTES} bytes",
                    batch.first.saturating_add(i as u64),
                    batch.records[i].0.len()
                ),
                None,
            ))
        } else if cp.origin != st.origin {
            Some((
                RejectCode::BadSignature,
                AlertKind::BadSignature,
                format!("checkpoint origin {} is not {}", cp.origin, st.origin),
                None,
            ))
        } else if batch.first.checked_add(n) != Some(cp.size) {
            Some((
                RejectCode::Malformed,
                AlertKind::Malformed,
                format!(
                    "checkpoint size {} is not first seq {} + {n} records",
                    cp.size, batch.first
                ),
                None,
            ))
        } else if !replay && batch.head < st.size {
            Some((
                RejectCode::SizeRegression,
                AlertKind::SizeRegression,
                format!("the agent's ledger has {} records but the hub witnessed {} (truncated or rolled back)", batch.head, st.size),
                Some(batch.head),
            ))
        } else if batch.head < cp.size {
            Some((
                RejectCode::Malformed,
                AlertKind::Malformed,
                format!(
                    "head {} is below the checkpoint size {}",
                    batch.head, cp.size
                ),
                None,
            ))
        } else if !replay && batch.boot < st.boot {
            Some((
                RejectCode::BootRegression,
                AlertKind::BootRegression,
                format!(
                    "boot counter went back from {} to {} (an old copy of the ledger?)",
                    st.boot, batch.boot
                ),
                None,
            ))
        } else {
            None
        };
        if let Some((code, kind, msg, seq)) = problem {
            agent.live.rejected += 1;
            let ack = reject(code, kind, msg, seq, &mut alerts);
            return Ok(reply(ack, alerts, 0));
        }
        // Clock skew. A message cannot arrive before it was sent, so an agent clock ahead of the
        // hub's is certain from one message. One that looks behind may only have waited in a
        // broker queue (an outage, a restarted hub): that counts as skew only when every message
        // for a while says so.
        let skew = batch.sent_at.saturating_sub(now);
        let bound = self.cfg.max_clock_skew_micros;
        let skewed = if skew > bound {
            true
        } else if skew < -bound {
            let since = *agent.live.behind_since.get_or_insert(now);
            agent.live.behind_count += 1;
            agent.live.behind_count >= SKEW_BEHIND_MESSAGES
                && now - since >= SKEW_BEHIND_SPAN_MICROS
        } else {
            agent.live.behind_since = None;
            agent.live.behind_count = 0;
            agent.live.skewed = false;
            false
        };
        if skewed && !agent.live.skewed {
            agent.live.skewed = true;
            alerts.push(Raised {
                kind: AlertKind::ClockSkew,
                agent_id: agent_id.to_owned(),
                message: format!("agent clock is {:+.1} s off the hub's", skew as f64 / 1e6),
                seq: None,
            });
        }
        if batch.first > st.size {
            agent.live.gap_since.get_or_insert(now);
            return Ok(reply(Ack::Resend { from: st.size }, alerts, 0));
        }
        // Records the hub already holds must be byte-identical.
        let known_end = st.size.min(cp.size);
        let mut dups = 0u64;
        if batch.first < known_end {
            let reader = Reader::for_tree(agent.tree.clone(), self.db.path().to_owned());
            for item in reader.range(batch.first..known_end) {
                let (seq, held) = item?;
                let sent = &batch.records[(seq - batch.first) as usize];
                if held != sent.0 {
                    agent.live.rejected += 1;
                    let ack = reject(
                        RejectCode::Fork,
                        AlertKind::Fork,
                        format!("record {seq} differs from the one the hub witnessed (ledger altered or forked)"),
                        Some(seq),
                        &mut alerts,
                    );
                    return Ok(reply(ack, alerts, 0));
                }
                dups += 1;
            }
        }
        let mut chain = st.chain()?;
        let new = &batch.records[(known_end - batch.first) as usize..];
        for (i, r) in new.iter().enumerate() {
            let seq = known_end + i as u64;
            if let Err(e) = chain.check(&r.0) {
                let why = match e {
                    LinkError::Altered(d) => format!("record {seq} is damaged: {d}"),
                    LinkError::ForeignOrigin(o) => format!("record {seq} belongs to {o}"),
                    LinkError::WrongSeq(s) => format!("record at seq {seq} says seq {s}"),
                    LinkError::BrokenLink => format!(
                        "record {seq} does not link to record {}",
                        seq.wrapping_sub(1)
                    ),
                };
                agent.live.rejected += 1;
                let ack = reject(
                    RejectCode::ChainBreak,
                    AlertKind::ChainBreak,
                    why,
                    Some(seq),
                    &mut alerts,
                );
                return Ok(reply(ack, alerts, 0));
            }
        }
        if cp.size >= st.size && chain.root() != cp.root {
            agent.live.rejected += 1;
            let (kind, code, msg) = if new.is_empty() {
                (AlertKind::Fork, RejectCode::Fork, format!("checkpoint root at size {} differs from the witnessed root (ledger rewritten)", cp.size))
            } else {
                (
                    AlertKind::ChainBreak,
                    RejectCode::ChainBreak,
                    format!(
                        "checkpoint root at size {} does not match the records",
                        cp.size
                    ),
                )
            };
            let ack = reject(
                code,
                kind,
                msg,
                Some(cp.size.saturating_sub(1)),
                &mut alerts,
            );
            return Ok(reply(ack, alerts, 0));
        }
        agent.live.gap_since = None;
        agent.live.gap_alerted = false;
        if cp.size < st.size {
            // A resend of records the hub already has: answer with the latest cosignature.
            agent.state.duplicates += dups;
            agent.state.last_sent_at = batch.sent_at.max(agent.state.last_sent_at);
            let ack = match &agent.state.cosigned {
                Some(note) => Ack::Cosigned { note: note.clone() },
                None => Ack::Resend {
                    from: agent.state.size,
                },
            };
            return Ok(reply(ack, alerts, 0));
        }
        // Cosign and store the records with the new state in one atomic step.
        let ts = (now / 1_000_000).max(0) as u64;
        let mut cosigned: Note = note;
        let sig = self
            .signer
            .cosign(&cp.text(), ts)
            .map_err(|e| StoreError::CorruptMeta(format!("cosigning: {e}")))?;
        cosigned.push(sig);
        let cosigned = cosigned.to_string();
        let new_state = AgentState {
            origin: agent.state.origin.clone(),
            size: chain.size(),
            root: chain.root(),
            last_leaf: chain.last_leaf(),
            frontier: chain.frontier().nodes().to_vec(),
            boot: batch.boot.max(agent.state.boot),
            cosigned: Some(cosigned.clone()),
            cosigned_at: ts,
            duplicates: agent.state.duplicates + dups,
            last_sent_at: batch.sent_at.max(agent.state.last_sent_at),
        };
        let mut b = sled::Batch::default();
        let mut page: Vec<u8> = Vec::new();
        let mut page_first = known_end;
        for (i, r) in new.iter().enumerate() {
            if page.len() >= PAGE_TARGET_BYTES {
                b.insert(&pkey(page_first), std::mem::take(&mut page));
                page_first = known_end + i as u64;
            }
            push_record(&mut page, &r.0);
        }
        if !page.is_empty() {
            b.insert(&pkey(page_first), page);
        }
        b.insert(
            K_STATE,
            postcard::to_stdvec(&new_state).expect("state encodes"),
        );
        agent.tree.apply_batch(b).map_err(|e| self.db.error(e))?;
        agent.state = new_state;
        Ok(reply(
            Ack::Cosigned { note: cosigned },
            alerts,
            new.len() as u64,
        ))
    }

    /// Records an agent's retained status (online / offline last will).
    pub fn status(&mut self, agent_id: &str, online: bool) {
        if let Some(a) = self.agents.get_mut(agent_id) {
            a.live.online = Some(online);
        }
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
                duplicates: a.state.duplicates,
                rejected: a.live.rejected,
            })
            .collect()
    }

    /// A reader over an agent's witnessed records, and its size.
    pub fn reader(&self, agent_id: &str) -> Option<(Reader, u64)> {
        let a = self.agents.get(agent_id)?;
        Some((
            Reader::for_tree(a.tree.clone(), self.db.path().to_owned()),
            a.state.size,
        ))
    }

    /// Byte-identical records received again, over every station.
    pub fn duplicates_total(&self) -> u64 {
        self.agents.values().map(|a| a.state.duplicates).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proofline_common::bytes::Bytes;
    use proofline_common::record::now_micros;
    use proofline_common::store::{Access, Entry, Store, StoreOptions};
    use proofline_common::synth::inspection_result;
    use proofline_common::wire::Batch;

    const ORIGIN: &str = "proofline/plant-1/flow-01";

    struct Fixture {
        _dir: tempfile::TempDir,
        w: Witness,
        records: Vec<Vec<u8>>,
        signer: NoteSigner,
    }

    /// A witness enrolling `flow-01`, and 30 records of that station's ledger.
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let signer = NoteSigner::generate(ORIGIN).unwrap();
        let station = dir.path().join("station");
        std::fs::create_dir(&station).unwrap();
        let (mut s, _) = Store::open(
            &station,
            Access::Write(Origin::parse(ORIGIN).unwrap()),
            &StoreOptions::default(),
        )
        .unwrap();
        for i in 0..30 {
            s.append(&[Entry {
                received_at: now_micros(),
                body: inspection_result(i, 8),
            }])
            .unwrap();
        }
        let records = s.reader().range(0..30).map(|r| r.unwrap().1).collect();
        let hub_dir = dir.path().join("hub");
        std::fs::create_dir(&hub_dir).unwrap();
        let (hub, _) = Store::open(
            &hub_dir,
            Access::Write(Origin::hub("plant-1").unwrap()),
            &StoreOptions::default(),
        )
        .unwrap();
        let w = Witness::open(
            hub.shared().unwrap(),
            NoteSigner::generate("proofline/plant-1/hub").unwrap(),
            vec![Enrolled {
                agent_id: "flow-01".into(),
                origin: Origin::parse(ORIGIN).unwrap(),
                key: signer.verifier(),
            }],
            WitnessConfig {
                max_clock_skew_micros: 60_000_000,
                gap_alert_after_micros: 10_000_000,
                stale_after_micros: 60_000_000,
            },
            now_micros(),
        )
        .unwrap();
        drop(hub);
        Fixture {
            _dir: dir,
            w,
            records,
            signer,
        }
    }

    impl Fixture {
        /// Records `from..to` as a batch with a signed checkpoint at `to`.
        fn batch(&self, from: u64, to: u64, head: u64, sent_at: i64) -> Vec<u8> {
            let mut f = Frontier::new();
            for r in &self.records[..to as usize] {
                f.push(proofline_common::hash::leaf_hash(r));
            }
            let cp = Checkpoint {
                origin: ORIGIN.into(),
                size: to,
                root: f.root(),
            };
            RecordsMsg::V1(Batch {
                first: from,
                records: self.records[from as usize..to as usize]
                    .iter()
                    .map(|r| Bytes(r.clone()))
                    .collect(),
                checkpoint: cp.sign(&self.signer).unwrap().to_string(),
                boot: 1,
                head,
                sent_at,
            })
            .encode()
        }

        fn send(&mut self, payload: Vec<u8>, now: i64) -> Reply {
            self.w
                .handle(&[("flow-01".into(), payload)], now)
                .unwrap()
                .remove(0)
        }
    }

    #[test]
    fn gaps_are_answered_with_resend_and_duplicates_are_counted_not_stored() {
        let mut fx = fixture();
        let now = now_micros();
        let r = fx.send(fx.batch(0, 10, 10, now), now);
        assert!(matches!(r.ack, Ack::Cosigned { .. }), "{r:?}");
        assert_eq!(r.stored, 10);
        // A batch from 20: the hub has 10.
        let r = fx.send(fx.batch(20, 30, 30, now + 1), now);
        assert_eq!(r.ack, Ack::Resend { from: 10 });
        // Overlapping resend 5..20: 5 duplicates, 10 new.
        let r = fx.send(fx.batch(5, 20, 30, now + 2), now);
        assert!(matches!(r.ack, Ack::Cosigned { .. }), "{r:?}");
        assert_eq!(r.stored, 10);
        let a = &fx.w.agents()[0];
        assert_eq!((a.size, a.duplicates), (20, 5));
        // The gap did not stay open: no alert later.
        assert!(fx.w.tick(now + 20_000_000).is_empty());
    }

    #[test]
    fn an_unfilled_gap_and_a_skewed_clock_are_alerted_once() {
        let mut fx = fixture();
        let now = now_micros();
        let r = fx.send(fx.batch(10, 20, 20, now + 120_000_000), now);
        assert_eq!(r.ack, Ack::Resend { from: 0 });
        assert_eq!(r.alerts.len(), 1);
        assert_eq!(r.alerts[0].kind, AlertKind::ClockSkew);
        let later = fx.w.tick(now + 11_000_000);
        assert!(
            later.iter().any(|a| a.kind == AlertKind::UnfilledGap),
            "{later:?}"
        );
        assert!(fx.w.tick(now + 12_000_000).is_empty());
    }

    #[test]
    fn a_record_over_the_size_limit_is_refused_and_nothing_of_its_batch_is_stored() {
        let mut fx = fixture();
        let now = now_micros();
        let good = fx.records[5].clone();
        // Signed by the agent's own key: a faulty or compromised station.
        fx.records[5] = vec![0x55; MAX_RECORD_BYTES + 1];
        let r = fx.send(fx.batch(0, 10, 10, now), now);
        assert!(
            matches!(&r.ack, Ack::Rejected { code: RejectCode::Malformed, reason } if reason.contains("record 5 is")),
            "{r:?}"
        );
        assert_eq!(r.stored, 0);
        assert_eq!(r.alerts[0].kind, AlertKind::Malformed);
        fx.records[5] = good;
        let r = fx.send(fx.batch(0, 10, 10, now + 1), now);
        assert!(matches!(r.ack, Ack::Cosigned { .. }), "{r:?}");
        assert_eq!(r.stored, 10);
    }

    #[test]
    fn a_replayed_old_message_is_not_taken_for_a_rollback() {
        let mut fx = fixture();
        let now = now_micros();
        let early = fx.batch(0, 10, 10, now);
        fx.send(early.clone(), now);
        fx.send(fx.batch(10, 30, 30, now + 5), now);
        // The broker delivers the first batch again: an old head, but an old message too.
        let r = fx.send(early, now);
        assert!(matches!(r.ack, Ack::Cosigned { .. }), "{r:?}");
        assert!(r.alerts.is_empty(), "{:?}", r.alerts);
        // A new message claiming the old head is a rollback.
        let r = fx.send(fx.batch(0, 10, 10, now + 10), now);
        assert!(
            matches!(
                r.ack,
                Ack::Rejected {
                    code: RejectCode::SizeRegression,
                    ..
                }
            ),
            "{r:?}"
        );
    }

    #[test]
    fn a_different_record_at_a_known_seq_is_a_fork_and_changes_nothing() {
        let mut fx = fixture();
        let now = now_micros();
        fx.send(fx.batch(0, 20, 20, now), now);
        let mut other = fx.records.clone();
        other[12][40] ^= 1;
        let genuine = std::mem::replace(&mut fx.records, other);
        let r = fx.send(fx.batch(10, 25, 25, now + 1), now);
        assert!(
            matches!(
                r.ack,
                Ack::Rejected {
                    code: RejectCode::Fork,
                    ..
                }
            ),
            "{r:?}"
        );
        assert_eq!(r.alerts[0].seq, Some(12));
        fx.records = genuine;
        let (reader, size) = fx.w.reader("flow-01").unwrap();
        assert_eq!(size, 20);
        assert_eq!(reader.get(12).unwrap().unwrap(), fx.records[12]);
    }

    #[test]
    fn messages_that_waited_in_a_broker_queue_are_not_clock_skew() {
        let mut fx = fixture();
        let now = now_micros();
        // A backlog queued for two minutes arrives in a burst, then fresh messages.
        for i in 0..6u64 {
            let r = fx.send(
                fx.batch(i, i + 1, 30, now - 120_000_000 + i as i64),
                now + i as i64 * 1000,
            );
            assert!(r.alerts.is_empty(), "{:?}", r.alerts);
        }
        let r = fx.send(fx.batch(6, 7, 30, now + 1_000_000), now + 1_000_000);
        assert!(r.alerts.is_empty(), "{:?}", r.alerts);
        // A clock really behind: every message for 10 s and more says so.
        let mut raised = Vec::new();
        for i in 0..6u64 {
            let t = now + 2_000_000 + i as i64 * 3_000_000;
            let r = fx.send(fx.batch(7 + i, 8 + i, 30, t - 120_000_000), t);
            raised.extend(r.alerts);
        }
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!(raised[0].kind, AlertKind::ClockSkew);
    }
}
