//! One record batch, checked step by step: enrollment, decoding, the station's signature, the
//! envelope (sizes, origin, head and boot against what the hub witnessed), clock skew, then the
//! records themselves (byte-identical where the hub holds them, a valid chain beyond, the
//! checkpoint's root), and only then cosigned and stored.
//!
//! A refusal at any step answers `Rejected` with its code and raises its alert; nothing is stored.

use proofline_common::bytes::Bytes;
use proofline_common::chain::ChainState;
use proofline_common::note::{Checkpoint, Note};
use proofline_common::record::MAX_RECORD_BYTES;
use proofline_common::store::StoreError;
use proofline_common::wire::{Ack, Batch, RecordsMsg, RejectCode};

use super::{Agent, AgentState, Live, Reply, Witness, WitnessConfig};
use crate::alerts::{AlertKind, Raised};

/// A clock behind the hub's is alerted after this many messages in a row say so...
const SKEW_BEHIND_MESSAGES: u32 = 5;
/// ...over at least this long (a queued backlog arrives in a burst).
const SKEW_BEHIND_SPAN_MICROS: i64 = 10_000_000;

/// Why a batch is refused: the code the station hears, the alert the hub raises.
struct Refusal {
    code: RejectCode,
    kind: AlertKind,
    message: String,
    seq: Option<u64>,
}

impl Refusal {
    fn new(code: RejectCode, kind: AlertKind, message: String, seq: Option<u64>) -> Self {
        Refusal {
            code,
            kind,
            message,
            seq,
        }
    }
}

/// How a step ends early: a refusal, or the hub's own storage failing.
enum Stop {
    Refused(Refusal),
    Store(StoreError),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Store(e)
    }
}

impl From<Refusal> for Stop {
    fn from(r: Refusal) -> Self {
        Stop::Refused(r)
    }
}

/// A batch that passed every check, with what it adds.
struct Accepted {
    ack: Ack,
    stored: u64,
}

impl Witness {
    /// Handles one record batch (not yet durable: see [`Witness::handle`]).
    pub(super) fn one(
        &mut self,
        agent_id: &str,
        payload: &[u8],
        now: i64,
    ) -> Result<Reply, StoreError> {
        let mut alerts = Vec::new();
        let ack = match self.check_and_store(agent_id, payload, now, &mut alerts) {
            Ok(a) => {
                return Ok(Reply {
                    agent_id: agent_id.to_owned(),
                    ack: a.ack,
                    alerts,
                    stored: a.stored,
                })
            }
            Err(Stop::Store(e)) => return Err(e),
            Err(Stop::Refused(r)) => {
                if let Some(a) = self.agents.get_mut(agent_id) {
                    a.live.rejected += 1;
                }
                alerts.push(Raised {
                    kind: r.kind,
                    agent_id: agent_id.to_owned(),
                    message: r.message.clone(),
                    seq: r.seq,
                });
                Ack::Rejected {
                    code: r.code,
                    reason: r.message,
                }
            }
        };
        Ok(Reply {
            agent_id: agent_id.to_owned(),
            ack,
            alerts,
            stored: 0,
        })
    }

    fn check_and_store(
        &mut self,
        agent_id: &str,
        payload: &[u8],
        now: i64,
        alerts: &mut Vec<Raised>,
    ) -> Result<Accepted, Stop> {
        let Some(agent) = self.agents.get_mut(agent_id) else {
            return Err(Refusal::new(
                RejectCode::UnknownAgent,
                AlertKind::UnknownAgent,
                format!("agent {agent_id} is not enrolled at this hub"),
                None,
            )
            .into());
        };
        agent.live.last_seen = Some(now);
        agent.live.stale_alerted = false;
        agent.live.batches += 1;
        let batch = match RecordsMsg::decode(payload) {
            Ok(RecordsMsg::V1(b)) => b,
            Err(e) => {
                let r = Refusal::new(
                    RejectCode::Malformed,
                    AlertKind::Malformed,
                    e.to_string(),
                    None,
                );
                return Err(r.into());
            }
        };
        let (cp, note) = Checkpoint::open(&batch.checkpoint, &agent.enrolled.key).map_err(|e| {
            Refusal::new(
                RejectCode::BadSignature,
                AlertKind::BadSignature,
                format!(
                    "checkpoint not signed by the enrolled key {}: {e}",
                    agent.enrolled.key
                ),
                None,
            )
        })?;
        if let Some(r) = envelope_problem(&batch, &cp, &agent.state) {
            return Err(r.into());
        }
        if let Some(message) = clock_skew(&mut agent.live, &self.cfg, batch.sent_at, now) {
            alerts.push(Raised {
                kind: AlertKind::ClockSkew,
                agent_id: agent_id.to_owned(),
                message,
                seq: None,
            });
        }
        if batch.first > agent.state.size {
            agent.live.gap_since.get_or_insert(now);
            return Ok(Accepted {
                ack: Ack::Resend {
                    from: agent.state.size,
                },
                stored: 0,
            });
        }
        // Records the hub already holds must be byte-identical; the others must extend the chain
        // to the checkpoint's root.
        let known_end = agent.state.size.min(cp.size);
        let dups = check_known(agent, &batch, known_end)?;
        let new = &batch.records[(known_end - batch.first) as usize..];
        let chain = check_new(&agent.state, new, known_end, &cp)?;
        agent.live.gap_since = None;
        agent.live.gap_alerted = false;
        if cp.size < agent.state.size {
            // A resend of records the hub already has: answer with the latest cosignature.
            agent.state.duplicates += dups;
            agent.state.last_sent_at = batch.sent_at.max(agent.state.last_sent_at);
            let ack = match &agent.state.cosigned {
                Some(note) => Ack::Cosigned { note: note.clone() },
                None => Ack::Resend {
                    from: agent.state.size,
                },
            };
            return Ok(Accepted { ack, stored: 0 });
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
        agent.ledger.append(
            known_end,
            new.iter().map(|r| r.0.as_slice()),
            &postcard::to_stdvec(&new_state).expect("state encodes"),
        )?;
        agent.state = new_state;
        Ok(Accepted {
            ack: Ack::Cosigned { note: cosigned },
            stored: new.len() as u64,
        })
    }
}

/// What is wrong with a batch's envelope against what the hub witnessed, if anything.
fn envelope_problem(batch: &Batch, cp: &Checkpoint, st: &AgentState) -> Option<Refusal> {
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
    let (code, kind, message, seq) = if let Some(i) = oversized {
        (
            RejectCode::Malformed,
            AlertKind::Malformed,
            format!(
                "record {} is {} bytes; a record is 1 to {MAX_RECORD_BYTES} bytes",
                batch.first.saturating_add(i as u64),
                batch.records[i].0.len()
            ),
            None,
        )
    } else if cp.origin != st.origin {
        (
            RejectCode::BadSignature,
            AlertKind::BadSignature,
            format!("checkpoint origin {} is not {}", cp.origin, st.origin),
            None,
        )
    } else if batch.first.checked_add(n) != Some(cp.size) {
        (
            RejectCode::Malformed,
            AlertKind::Malformed,
            format!(
                "checkpoint size {} is not first seq {} + {n} records",
                cp.size, batch.first
            ),
            None,
        )
    } else if !replay && batch.head < st.size {
        (
            RejectCode::SizeRegression,
            AlertKind::SizeRegression,
            format!("the agent's ledger has {} records but the hub witnessed {} (truncated or rolled back)", batch.head, st.size),
            Some(batch.head),
        )
    } else if batch.head < cp.size {
        (
            RejectCode::Malformed,
            AlertKind::Malformed,
            format!(
                "head {} is below the checkpoint size {}",
                batch.head, cp.size
            ),
            None,
        )
    } else if !replay && batch.boot < st.boot {
        (
            RejectCode::BootRegression,
            AlertKind::BootRegression,
            format!(
                "boot counter went back from {} to {} (an old copy of the ledger?)",
                st.boot, batch.boot
            ),
            None,
        )
    } else {
        return None;
    };
    Some(Refusal::new(code, kind, message, seq))
}

/// Clock skew: the alert message when it newly applies. A message cannot arrive before it was
/// sent, so an agent clock ahead of the hub's is certain from one message. One that looks behind
/// may only have waited in a broker queue (an outage, a restarted hub): that counts as skew only
/// when every message for a while says so.
fn clock_skew(live: &mut Live, cfg: &WitnessConfig, sent_at: i64, now: i64) -> Option<String> {
    let skew = sent_at.saturating_sub(now);
    let bound = cfg.max_clock_skew_micros;
    let skewed = if skew > bound {
        true
    } else if skew < -bound {
        let since = *live.behind_since.get_or_insert(now);
        live.behind_count += 1;
        live.behind_count >= SKEW_BEHIND_MESSAGES && now - since >= SKEW_BEHIND_SPAN_MICROS
    } else {
        live.behind_since = None;
        live.behind_count = 0;
        live.skewed = false;
        false
    };
    if skewed && !live.skewed {
        live.skewed = true;
        return Some(format!(
            "agent clock is {:+.1} s off the hub's",
            skew as f64 / 1e6
        ));
    }
    None
}

/// Records of the batch the hub already holds (below `known_end`) must be byte-identical;
/// returns how many there were.
fn check_known(agent: &Agent, batch: &Batch, known_end: u64) -> Result<u64, Stop> {
    let mut dups = 0u64;
    if batch.first < known_end {
        for item in agent.ledger.reader().range(batch.first..known_end) {
            let (seq, held) = item?;
            let sent = &batch.records[(seq - batch.first) as usize];
            if held != sent.0 {
                return Err(Refusal::new(
                    RejectCode::Fork,
                    AlertKind::Fork,
                    format!("record {seq} differs from the one the hub witnessed (ledger altered or forked)"),
                    Some(seq),
                )
                .into());
            }
            dups += 1;
        }
    }
    Ok(dups)
}

/// The chain extended by the new records, which must end at the checkpoint's root.
fn check_new(
    st: &AgentState,
    new: &[Bytes],
    known_end: u64,
    cp: &Checkpoint,
) -> Result<ChainState, Stop> {
    let mut chain = st.chain()?;
    for (i, r) in new.iter().enumerate() {
        let seq = known_end + i as u64;
        if let Err(e) = chain.check(&r.0) {
            // The one classification every verifier uses; a broken link names the record
            // before it.
            let fault = e.fault_at(seq, None);
            let (why, seq) = (fault.to_string(), fault.seq.unwrap_or(seq));
            let r = Refusal::new(
                RejectCode::ChainBreak,
                AlertKind::ChainBreak,
                why,
                Some(seq),
            );
            return Err(r.into());
        }
    }
    if cp.size >= st.size && chain.root() != cp.root {
        let (kind, code, msg) = if new.is_empty() {
            (
                AlertKind::Fork,
                RejectCode::Fork,
                format!(
                    "checkpoint root at size {} differs from the witnessed root (ledger rewritten)",
                    cp.size
                ),
            )
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
        let seq = Some(cp.size.saturating_sub(1));
        return Err(Refusal::new(code, kind, msg, seq).into());
    }
    Ok(chain)
}
