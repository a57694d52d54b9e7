//! One record batch, checked step by step: enrollment, decoding, the station's signature on the
//! envelope, its message id against the newest taken (replays), the send time against the skew
//! bound, the checkpoint's signature, the envelope (sizes, origin, head and boot against what the
//! hub witnessed), then the records themselves (byte-identical where the hub holds them, a valid
//! chain beyond, the checkpoint's root), and only then cosigned and stored.
//!
//! A refusal of a verified message answers `Rejected`, bound to that message, and raises its
//! alert; one the station was not proven to send is alerted and never answered. Nothing refused
//! is stored.

use proofline_common::bytes::Bytes;
use proofline_common::chain::ChainState;
use proofline_common::note::{Checkpoint, Note, NoteSigner};
use proofline_common::record::MAX_RECORD_BYTES;
use proofline_common::store::StoreError;
use proofline_common::wire::{
    Ack, Envelope, MsgId, RecordsMsg, RejectCode, DOMAIN_BATCH, MAX_REASON_BYTES,
};

use super::{Agent, AgentState, Answer, Live, Reply, Witness, WitnessConfig};
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

/// How a step ends early.
enum Stop {
    /// Refused before the station was proven to have sent it (not enrolled, does not decode, a
    /// bad signature): alerted, never answered. A signed answer names the batch it answers, and
    /// the hub names only batches it knows the station sent: answering a forgery would let its
    /// author steer the station.
    Unproven(Refusal),
    /// A protocol v1 station: refused in v1 words it understands.
    Version(Refusal),
    /// A verified message refused: alerted and answered, bound to that message.
    Refused(MsgId, Refusal),
    /// A verified message the hub already took (a broker redelivery or a replay): counted,
    /// not answered.
    Replay,
    /// The hub's own storage failed.
    Store(StoreError),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Store(e)
    }
}

/// A batch that passed every check, with what it adds.
struct Accepted {
    answers: MsgId,
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
        let reply = |answer, stored| Reply {
            agent_id: agent_id.to_owned(),
            answer,
            alerts: Vec::new(),
            stored,
        };
        let (mut r, refusal) = match self.check_and_store(agent_id, payload, now, &mut alerts) {
            Ok(a) => (reply(Some(Answer::V2(a.answers, a.ack)), a.stored), None),
            Err(Stop::Store(e)) => return Err(e),
            Err(Stop::Replay) => {
                self.replays += 1;
                (reply(None, 0), None)
            }
            Err(Stop::Unproven(r)) => (reply(None, 0), Some(r)),
            Err(Stop::Version(r)) => {
                let ack = Ack::Rejected {
                    code: r.code,
                    reason: r.message.clone(),
                };
                (reply(Some(Answer::V1(ack)), 0), Some(r))
            }
            Err(Stop::Refused(id, r)) => {
                let ack = Ack::Rejected {
                    code: r.code,
                    reason: r.message.clone(),
                };
                (reply(Some(Answer::V2(id, ack)), 0), Some(r))
            }
        };
        if let Some(refusal) = refusal {
            if let Some(a) = self.agents.get_mut(agent_id) {
                a.live.rejected += 1;
            }
            alerts.push(Raised {
                kind: refusal.kind,
                agent_id: agent_id.to_owned(),
                message: refusal.message,
                seq: refusal.seq,
            });
        }
        r.alerts = alerts;
        Ok(r)
    }

    fn check_and_store(
        &mut self,
        agent_id: &str,
        payload: &[u8],
        now: i64,
        alerts: &mut Vec<Raised>,
    ) -> Result<Accepted, Stop> {
        let bound = self.cfg.max_clock_skew_micros;
        let Some(agent) = self.agents.get_mut(agent_id) else {
            return Err(Stop::Unproven(Refusal::new(
                RejectCode::UnknownAgent,
                AlertKind::UnknownAgent,
                format!("agent {agent_id} is not enrolled at this hub"),
                None,
            )));
        };
        let (env, records) = open_batch(agent, payload)?;
        let id = env.id;
        take_new(agent, &env, now, bound, alerts)?;
        let refuse = |r: Refusal| Stop::Refused(id, r);
        let (cp, note) = Checkpoint::open(&env.checkpoint, &agent.enrolled.key).map_err(|e| {
            refuse(Refusal::new(
                RejectCode::BadSignature,
                AlertKind::BadSignature,
                format!(
                    "checkpoint not signed by the enrolled key {}: {e}",
                    agent.enrolled.key
                ),
                None,
            ))
        })?;
        if let Some(r) = envelope_problem(&env, &records, &cp, &agent.state) {
            return Err(refuse(r));
        }
        if let Some(message) = clock_skew(&mut agent.live, &self.cfg, env.sent_at, now) {
            alerts.push(Raised {
                kind: AlertKind::ClockSkew,
                agent_id: agent_id.to_owned(),
                message,
                seq: None,
            });
        }
        if env.first > agent.state.size {
            agent.live.gap_since.get_or_insert(now);
            return Ok(Accepted {
                answers: id,
                ack: Ack::Resend {
                    from: agent.state.size,
                },
                stored: 0,
            });
        }
        // Records the hub already holds must be byte-identical; the others must extend the chain
        // to the checkpoint's root.
        let known_end = agent.state.size.min(cp.size);
        let known = |e| match e {
            Known::Fork(r) => refuse(r),
            Known::Store(e) => Stop::Store(e),
        };
        let dups = check_known(agent, env.first, &records, known_end).map_err(known)?;
        let new = &records[(known_end - env.first) as usize..];
        let (chain, new_boot) =
            check_new(&agent.state, new, known_end, &cp, id.boot).map_err(known)?;
        agent.live.gap_since = None;
        agent.live.gap_alerted = false;
        if cp.size < agent.state.size {
            // A resend of records the hub already has: answer with the latest cosignature.
            agent.state.duplicates += dups;
            let ack = match &agent.state.cosigned {
                Some(note) => Ack::Cosigned { note: note.clone() },
                None => Ack::Resend {
                    from: agent.state.size,
                },
            };
            return Ok(Accepted {
                answers: id,
                ack,
                stored: 0,
            });
        }
        let new_boot = new_boot.max(agent.state.boot);
        let stored = new.len() as u64;
        let cosigned = cosign_and_store(
            agent,
            &self.signer,
            Step {
                env: &env,
                note,
                cp: &cp,
                chain,
                known_end,
                new,
                boot: new_boot,
                dups,
                now,
            },
        )?;
        Ok(Accepted {
            answers: id,
            ack: Ack::Cosigned { note: cosigned },
            stored,
        })
    }
}

/// What a batch that passed every check adds.
struct Step<'a> {
    env: &'a Envelope,
    note: Note,
    cp: &'a Checkpoint,
    chain: ChainState,
    known_end: u64,
    new: &'a [Bytes],
    boot: u32,
    dups: u64,
    now: i64,
}

/// Cosigns the checkpoint and stores the new records with the station's new state in one
/// atomic step; returns the cosigned note.
fn cosign_and_store(agent: &mut Agent, signer: &NoteSigner, s: Step<'_>) -> Result<String, Stop> {
    let ts = (s.now / 1_000_000).max(0) as u64;
    let mut cosigned = s.note;
    let sig = signer
        .cosign(&s.cp.text(), ts)
        .map_err(|e| StoreError::CorruptMeta(format!("cosigning: {e}")))?;
    cosigned.push(sig);
    let cosigned = cosigned.to_string();
    let new_state = AgentState {
        origin: agent.state.origin.clone(),
        size: s.chain.size(),
        root: s.chain.root(),
        last_leaf: s.chain.last_leaf(),
        frontier: s.chain.frontier().nodes().to_vec(),
        boot: s.boot,
        cosigned: Some(cosigned.clone()),
        cosigned_at: ts,
        duplicates: agent.state.duplicates + s.dups,
        last_sent_at: s.env.sent_at.max(agent.state.last_sent_at),
        last_batch: Some(s.env.id),
        key: agent.state.key.clone(),
    };
    agent.ledger.append(
        s.known_end,
        s.new.iter().map(|r| r.0.as_slice()),
        &postcard::to_stdvec(&new_state).expect("state encodes"),
    )?;
    agent.state = new_state;
    Ok(cosigned)
}

/// Takes a verified message as the station's newest, or refuses it: a replay (at or below the
/// newest taken), a message from an older boot, a send time ahead beyond the bound. A new
/// message sent within the bound is a sign of life; its degraded state may raise an alert.
fn take_new(
    agent: &mut Agent,
    env: &Envelope,
    now: i64,
    bound: i64,
    alerts: &mut Vec<Raised>,
) -> Result<(), Stop> {
    let id = env.id;
    // Only a verified message newer than every one taken says anything about the station.
    if let Some(last) = agent.live.last_batch.filter(|last| id <= *last) {
        if id.boot < last.boot {
            // A rolled-back station (an old disk image) restarts its counters at an old
            // boot; so does a replay of an old capture. Either way it is answered, bound to
            // that message, so a station that did send it stops and says why.
            return Err(Stop::Refused(
                id,
                Refusal::new(
                    RejectCode::BootRegression,
                    AlertKind::BootRegression,
                    format!(
                        "a message from boot {} after boot {}: the station runs an old copy of its ledger, or someone replays its old messages",
                        id.boot, last.boot
                    ),
                    None,
                ),
            ));
        }
        return Err(Stop::Replay);
    }
    agent.live.last_batch = Some(id);
    agent.live.batches += 1;
    // Liveness: a new message sent within the skew bound of now (one that waited in a
    // broker queue proves nothing about the station now).
    // (`unsigned_abs`: a station may sign any send time, i64::MIN included.)
    if env.sent_at.saturating_sub(now).unsigned_abs() <= bound.unsigned_abs() {
        agent.live.last_seen = Some(now);
        agent.live.stale_alerted = false;
    }
    if let Some(a) = degraded_change(
        &mut agent.live,
        &agent.enrolled.agent_id,
        env.degraded.as_deref(),
    ) {
        alerts.push(a);
    }
    if env.sent_at.saturating_sub(now) > bound {
        return Err(Stop::Refused(id, Refusal::new(
            RejectCode::ClockSkew,
            AlertKind::ClockSkew,
            format!(
                "the station's clock is {:+.1} s ahead of the hub's (bound {} s): nothing is stored until it is set right",
                env.sent_at.saturating_sub(now) as f64 / 1e6,
                bound / 1_000_000
            ),
            None,
        )));
    }
    Ok(())
}

/// Decodes a batch and proves it came from `agent`: a v2 envelope signed by its enrolled key
/// and naming it.
fn open_batch(agent: &Agent, payload: &[u8]) -> Result<(Envelope, Vec<Bytes>), Stop> {
    let unproven = |kind, code, message| Stop::Unproven(Refusal::new(code, kind, message, None));
    let signed = match RecordsMsg::decode(payload) {
        Ok(RecordsMsg::V2(b)) => b,
        Ok(RecordsMsg::V1(_)) => {
            return Err(Stop::Version(Refusal::new(
                RejectCode::Version,
                AlertKind::Malformed,
                "the station speaks protocol v1 (unsigned envelopes), which this hub no longer accepts: upgrade the station".into(),
                None,
            )))
        }
        Err(e) => {
            return Err(unproven(
                AlertKind::Malformed,
                RejectCode::Malformed,
                e.to_string(),
            ))
        }
    };
    let env: Envelope = signed
        .envelope
        .open(DOMAIN_BATCH, &agent.enrolled.key)
        .map_err(|e| {
            unproven(
                AlertKind::BadSignature,
                RejectCode::BadSignature,
                format!("batch envelope refused: {e}"),
            )
        })?;
    if env.agent_id != agent.enrolled.agent_id {
        return Err(unproven(
            AlertKind::BadSignature,
            RejectCode::BadSignature,
            format!(
                "a batch signed for station {:?} was published on this station's topic",
                truncate(&env.agent_id, 64)
            ),
        ));
    }
    Ok((env, signed.records))
}

/// The alert when the station's degraded state changes (it reports it in every batch).
pub(super) fn degraded_change(
    live: &mut Live,
    agent_id: &str,
    degraded: Option<&str>,
) -> Option<Raised> {
    let now = degraded.map(|d| truncate(d, MAX_REASON_BYTES).to_owned());
    if now == live.degraded {
        return None;
    }
    live.degraded = now.clone();
    let reason = now?;
    Some(Raised {
        kind: AlertKind::StationDegraded,
        agent_id: agent_id.to_owned(),
        message: format!("the station reports it is degraded: {reason}"),
        seq: None,
    })
}

pub(crate) use proofline_common::wire::truncate_utf8 as truncate;

/// What is wrong with a batch's envelope against what the hub witnessed, if anything.
fn envelope_problem(
    env: &Envelope,
    records: &[Bytes],
    cp: &Checkpoint,
    st: &AgentState,
) -> Option<Refusal> {
    let n = records.len() as u64;
    // The store frames records of 1 to MAX_RECORD_BYTES bytes: anything else is refused
    // before it could reach a page (where it could not be read back).
    let oversized = records
        .iter()
        .position(|r| r.0.is_empty() || r.0.len() > MAX_RECORD_BYTES);
    let (code, kind, message, seq) = if let Some(i) = oversized {
        (
            RejectCode::Malformed,
            AlertKind::Malformed,
            format!(
                "record {} is {} bytes; a record is 1 to {MAX_RECORD_BYTES} bytes",
                env.first.saturating_add(i as u64),
                records[i].0.len()
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
    } else if env.first.checked_add(n) != Some(cp.size) {
        (
            RejectCode::Malformed,
            AlertKind::Malformed,
            format!(
                "checkpoint size {} is not first seq {} + {n} records",
                cp.size, env.first
            ),
            None,
        )
    } else if env.head < st.size {
        (
            RejectCode::SizeRegression,
            AlertKind::SizeRegression,
            format!("the agent's ledger has {} records but the hub witnessed {} (truncated or rolled back)", env.head, st.size),
            Some(env.head),
        )
    } else if env.head < cp.size {
        (
            RejectCode::Malformed,
            AlertKind::Malformed,
            format!("head {} is below the checkpoint size {}", env.head, cp.size),
            None,
        )
    } else if env.id.boot < st.boot {
        // `st.boot` is the newest boot the witnessed records were written in.
        (
            RejectCode::BootRegression,
            AlertKind::BootRegression,
            format!(
                "the station says boot {} but the hub witnessed records written in boot {} (an old copy of the ledger?)",
                env.id.boot, st.boot
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

/// How the record checks end early.
enum Known {
    Fork(Refusal),
    Store(StoreError),
}

impl From<StoreError> for Known {
    fn from(e: StoreError) -> Self {
        Known::Store(e)
    }
}

/// Records of the batch the hub already holds (below `known_end`) must be byte-identical;
/// returns how many there were.
fn check_known(agent: &Agent, first: u64, records: &[Bytes], known_end: u64) -> Result<u64, Known> {
    let mut dups = 0u64;
    if first < known_end {
        for item in agent.ledger.reader().range(first..known_end) {
            let (seq, held) = item?;
            let sent = &records[(seq - first) as usize];
            if held != sent.0 {
                return Err(Known::Fork(Refusal::new(
                    RejectCode::Fork,
                    AlertKind::Fork,
                    format!("record {seq} differs from the one the hub witnessed (ledger altered or forked)"),
                    Some(seq),
                )));
            }
            dups += 1;
        }
    }
    Ok(dups)
}

/// The chain extended by the new records, which must end at the checkpoint's root, and the
/// newest boot the new records were written in (none may be newer than the envelope's boot).
fn check_new(
    st: &AgentState,
    new: &[Bytes],
    known_end: u64,
    cp: &Checkpoint,
    boot: u32,
) -> Result<(ChainState, u32), Known> {
    let mut chain = st.chain()?;
    let mut newest = 0;
    for (i, r) in new.iter().enumerate() {
        let seq = known_end + i as u64;
        match chain.check(&r.0) {
            Ok((rec, _)) => {
                let b = rec.v1().boot;
                if b > boot {
                    return Err(Known::Fork(Refusal::new(
                        RejectCode::Malformed,
                        AlertKind::Malformed,
                        format!(
                            "record {seq} was written in boot {b}, after the batch's boot {boot}"
                        ),
                        Some(seq),
                    )));
                }
                newest = newest.max(b);
            }
            Err(e) => {
                // The one classification every verifier uses; a broken link names the record
                // before it.
                let fault = e.fault_at(seq, None);
                let (why, seq) = (fault.to_string(), fault.seq.unwrap_or(seq));
                return Err(Known::Fork(Refusal::new(
                    RejectCode::ChainBreak,
                    AlertKind::ChainBreak,
                    why,
                    Some(seq),
                )));
            }
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
        return Err(Known::Fork(Refusal::new(code, kind, msg, seq)));
    }
    Ok((chain, newest))
}
