//! The MQTT protocol between agents and the hub (DESIGN §4): topics and postcard payloads.
//!
//! Every payload is a versioned enum so either side can refuse a version it does not know with a
//! clear error instead of misreading it.
//!
//! # Protocol v2: authenticity that does not depend on the broker
//! Anyone who reaches the broker may publish anything on any topic, so every field either side
//! acts on is signed ([`Signed`]: Ed25519 over `domain ‖ 0x00 ‖ postcard(body)`, see
//! [`crate::note::message_bytes`]):
//! - a batch's [`Envelope`] and a station's [`StatusBody`] by the station key; each names the
//!   station, its boot counter and a message counter that rises with every message of that boot,
//!   so a replayed message is told by its counter, never by a clock;
//! - every answer ([`AckBody`]) by the hub key, naming the station, boot and counter of the batch
//!   it answers: a station acts only on answers to batches it has in flight.
//!
//! Version 1 payloads (unsigned envelopes) are refused with an error that says so.
//!
//! | topic | direction | payload |
//! |---|---|---|
//! | `proofline/v1/<site>/<agent_id>/records` | agent → hub | [`RecordsMsg`] |
//! | `proofline/v1/<site>/<agent_id>/ack` | hub → agent | [`AckMsg`] |
//! | `proofline/v1/<site>/<agent_id>/status` | agent → hub, retained | [`AgentStatusMsg`] |
//! | `proofline/v1/<site>/hub/status` | hub → all, retained | [`HubStatusMsg`] |
//! | `proofline/v1/<site>/<agent_id>/interlock` | agent → hub, QoS 0 | [`InterlockMsg`] |
//! | `proofline/v1/<site>/<agent_id>/clearance` | hub → agent, QoS 0 | [`ClearanceMsg`] |
//!
//! # Route interlock
//! A station configured for it asks, after each part scan, whether the part may be tested
//! there ([`AskBody`], signed by the station key with the next message id); the hub answers
//! ([`ClearanceBody`], signed by the hub key, naming the station, the question's id and the
//! part). Both go at QoS 0: a question is worth asking only while the operator waits, so a lost
//! one is not queued for later, the station's offline policy decides instead.

use serde::{Deserialize, Serialize};

use crate::bytes::Bytes;
use crate::note::{NoteSigner, VerifierKey};

/// Topic prefix of everything Proofline publishes.
pub const TOPIC_ROOT: &str = "proofline/v1";

/// The topics of one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTopics {
    pub records: String,
    pub ack: String,
    pub status: String,
    pub interlock: String,
    pub clearance: String,
}

impl AgentTopics {
    pub fn new(site: &str, agent_id: &str) -> Self {
        let base = format!("{TOPIC_ROOT}/{site}/{agent_id}");
        AgentTopics {
            records: format!("{base}/records"),
            ack: format!("{base}/ack"),
            status: format!("{base}/status"),
            interlock: format!("{base}/interlock"),
            clearance: format!("{base}/clearance"),
        }
    }
}

/// The hub's retained status topic.
pub fn hub_status_topic(site: &str) -> String {
    format!("{TOPIC_ROOT}/{site}/hub/status")
}

/// Subscription filter for every agent's records of a site.
pub fn records_filter(site: &str) -> String {
    format!("{TOPIC_ROOT}/{site}/+/records")
}

/// Subscription filter for every agent's status of a site.
pub fn status_filter(site: &str) -> String {
    format!("{TOPIC_ROOT}/{site}/+/status")
}

/// Subscription filter for every agent's interlock questions of a site.
pub fn interlock_filter(site: &str) -> String {
    format!("{TOPIC_ROOT}/{site}/+/interlock")
}

/// What a topic of a site names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    Records,
    Ack,
    Status,
    Interlock,
    Clearance,
}

/// Whether `id` can be a station id (the agent part of an origin): 1 to 64 of
/// `A-Z a-z 0-9 . _ -`.
pub fn is_valid_agent_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Splits `proofline/v1/<site>/<agent_id>/<kind>` into the agent id and kind; `None` for any
/// other topic, and for an agent id that is not [valid](is_valid_agent_id).
pub fn parse_topic<'a>(site: &str, topic: &'a str) -> Option<(&'a str, TopicKind)> {
    let rest = topic.strip_prefix(TOPIC_ROOT)?.strip_prefix('/')?;
    let rest = rest.strip_prefix(site)?.strip_prefix('/')?;
    let (agent, kind) = rest.split_once('/')?;
    if !is_valid_agent_id(agent) {
        return None;
    }
    let kind = match kind {
        "records" => TopicKind::Records,
        "ack" => TopicKind::Ack,
        "status" => TopicKind::Status,
        "interlock" => TopicKind::Interlock,
        "clearance" => TopicKind::Clearance,
        _ => return None,
    };
    Some((agent, kind))
}

/// A batch of consecutive records with the agent's signed checkpoint at its end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Seq of the first record (the hub's size when all is well).
    pub first: u64,
    /// Exact stored bytes of records `first..first + records.len()`.
    pub records: Vec<Bytes>,
    /// Signed checkpoint note at `first + records.len()`. An empty batch is a heartbeat: its
    /// checkpoint is at the agent's head.
    pub checkpoint: String,
    /// The agent's boot counter.
    pub boot: u32,
    /// The agent's durable head when it sent the batch: a ledger claiming fewer records than the
    /// hub has witnessed was truncated or rolled back.
    pub head: u64,
    /// Agent clock when the batch was sent, UTC microseconds (clock-skew check).
    pub sent_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordsMsg {
    /// Protocol v1 (envelope unsigned): refused.
    V1(Batch),
    V2(SignedBatch),
}

/// Signature domains of protocol v2 messages.
pub const DOMAIN_BATCH: &str = "proofline/v2/batch";
pub const DOMAIN_STATUS: &str = "proofline/v2/status";
pub const DOMAIN_ACK: &str = "proofline/v2/ack";
pub const DOMAIN_INTERLOCK: &str = "proofline/v2/interlock";
pub const DOMAIN_CLEARANCE: &str = "proofline/v2/clearance";

/// Longest UII a question may name (MIL-STD-130: 50 characters; GS1 keys are shorter).
pub const MAX_UII_BYTES: usize = 64;
/// Longest part number a question may carry.
pub const MAX_PART_NUMBER_BYTES: usize = 64;

/// Longest degraded reason a station may report.
pub const MAX_REASON_BYTES: usize = 256;
/// Longest version string a station may report.
pub const MAX_VERSION_BYTES: usize = 64;

/// `s` cut to at most `max` bytes at a character boundary (bounded text from a peer).
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A postcard-encoded body and the Ed25519 signature over it (domain-separated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub body: Bytes,
    pub signature: Bytes,
}

/// Why a signed message is not taken.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("signature does not verify with {key}")]
    BadSignature { key: String },
    #[error("signed body does not decode: {0}")]
    Body(String),
}

impl Signed {
    /// Signs `body` in `domain`.
    pub fn seal<T: Serialize>(domain: &str, body: &T, signer: &NoteSigner) -> Self {
        let body = postcard::to_stdvec(body).expect("encoding into a Vec cannot fail");
        let signature = signer.sign_message(domain, &body).to_vec();
        Signed {
            body: Bytes(body),
            signature: Bytes(signature),
        }
    }

    /// Checks the signature with `key`, then decodes the body (nothing unsigned is decoded).
    pub fn open<T: for<'de> Deserialize<'de>>(
        &self,
        domain: &str,
        key: &VerifierKey,
    ) -> Result<T, OpenError> {
        key.verify_message(domain, &self.body.0, &self.signature.0)
            .map_err(|_| OpenError::BadSignature {
                key: key.to_string(),
            })?;
        match postcard::take_from_bytes::<T>(&self.body.0) {
            Ok((v, [])) => Ok(v),
            Ok((_, rest)) => Err(OpenError::Body(format!("{} trailing bytes", rest.len()))),
            Err(e) => Err(OpenError::Body(e.to_string())),
        }
    }
}

/// Where a message stands in its station's stream: the boot counter of the station's ledger and
/// the message counter of that boot. Ordered: a message at or below one already taken is a
/// replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MsgId {
    pub boot: u32,
    pub counter: u64,
}

impl std::fmt::Display for MsgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "boot {} message {}", self.boot, self.counter)
    }
}

/// A protocol v2 batch: the records and the station-signed [`Envelope`]. The records are bound
/// by the envelope's checkpoint (its size and Merkle root).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedBatch {
    /// [`Envelope`], signed in [`DOMAIN_BATCH`].
    pub envelope: Signed,
    /// Exact stored bytes of records `first..first + records.len()`.
    pub records: Vec<Bytes>,
}

/// Everything the hub acts on about a batch, signed by the station.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The station the batch is from (must match its topic).
    pub agent_id: String,
    pub id: MsgId,
    /// Seq of the first record.
    pub first: u64,
    /// Signed checkpoint note at `first + records`; an empty batch is a heartbeat at the head.
    pub checkpoint: String,
    /// The station's durable head when it sent the batch.
    pub head: u64,
    /// Station clock when sent, UTC microseconds: refused beyond the skew bound ahead of the
    /// hub's clock; never used to tell replays.
    pub sent_at: i64,
    /// Why the station is degraded (its ledger cannot store, its disk is full), if it is.
    pub degraded: Option<String>,
}

/// What a station says about itself on its retained status topic, signed by the station.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusBody {
    pub agent_id: String,
    pub id: MsgId,
    pub online: bool,
    /// In an online status: the counter of the offline status left with the broker as the last
    /// will of this connection (it was signed first, so its counter is lower).
    pub will: Option<u64>,
    pub version: String,
    pub size: u64,
    pub degraded: Option<String>,
    pub sent_at: i64,
}

/// The hub's answer to one batch, signed by the hub key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckBody {
    /// The station and the batch answered.
    pub agent_id: String,
    pub answers: MsgId,
    pub ack: Ack,
}

/// Why the hub refused a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectCode {
    /// The agent is not enrolled, or its origin does not match its topic.
    UnknownAgent,
    /// The checkpoint is not signed by the enrolled key.
    BadSignature,
    /// A record does not extend the chain, or the checkpoint root does not match the records.
    ChainBreak,
    /// A record differs from the one the hub already holds at that seq.
    Fork,
    /// The agent's ledger is shorter than what the hub has witnessed.
    SizeRegression,
    /// The boot counter went backwards.
    BootRegression,
    /// The payload does not decode or breaks the protocol.
    Malformed,
    /// The station's clock is ahead of the hub's by more than the bound: nothing it sent is
    /// stored until it is set right.
    ClockSkew,
    /// The station speaks a protocol version the hub no longer accepts.
    Version,
}

impl RejectCode {
    pub fn name(self) -> &'static str {
        match self {
            RejectCode::UnknownAgent => "unknown_agent",
            RejectCode::BadSignature => "bad_signature",
            RejectCode::ChainBreak => "chain_break",
            RejectCode::Fork => "fork",
            RejectCode::SizeRegression => "size_regression",
            RejectCode::BootRegression => "boot_regression",
            RejectCode::Malformed => "malformed",
            RejectCode::ClockSkew => "clock_skew",
            RejectCode::Version => "version",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ack {
    /// The hub stored everything up to the checkpoint's size and cosigned it: the note carries
    /// the agent's signature and the hub's cosignature.
    Cosigned { note: String },
    /// The hub holds records `0..from`; send again from there.
    Resend { from: u64 },
    /// The batch was refused; the hub raised an alert.
    Rejected { code: RejectCode, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckMsg {
    /// Protocol v1: the hub sends it only to refuse a v1 station, in words it understands.
    V1(Ack),
    /// [`AckBody`] signed in [`DOMAIN_ACK`] by the hub key.
    V2(Signed),
}

/// Retained agent status; the offline form is the MQTT last will.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub online: bool,
    pub version: String,
    pub boot: u32,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentStatusMsg {
    /// Protocol v1 (unsigned): ignored.
    V1(AgentStatus),
    /// [`StatusBody`] signed in [`DOMAIN_STATUS`] by the station key.
    V2(Signed),
}

/// Retained hub status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubStatus {
    pub online: bool,
    pub version: String,
    /// The hub's own ledger checkpoint (signed note), when it has one.
    pub checkpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HubStatusMsg {
    V1(HubStatus),
}

/// A station's question to the route interlock, signed by the station.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AskBody {
    pub agent_id: String,
    /// A new message id of the station's stream: the answer names it.
    pub id: MsgId,
    pub uii: String,
    /// Seq of the part scan in the station's ledger.
    pub scan_seq: u64,
    /// The part number its mark carries, when it carries one (the scan may not have reached
    /// the hub yet).
    pub part_number: Option<String>,
    pub sent_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InterlockMsg {
    /// [`AskBody`] signed in [`DOMAIN_INTERLOCK`] by the station key.
    V2(Signed),
}

/// The hub's answer to one question, signed by the hub key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearanceBody {
    pub agent_id: String,
    pub answers: MsgId,
    pub uii: String,
    pub clearance: Clearance,
    /// Hub clock when answered, UTC microseconds.
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Clearance {
    /// The part is due here for `operation`.
    Allowed { operation: String },
    /// Not here, not now: `code` is stable (`out_of_sequence`, `on_hold`, ...), `reason` says why.
    Refused { code: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClearanceMsg {
    /// [`ClearanceBody`] signed in [`DOMAIN_CLEARANCE`] by the hub key.
    V2(Signed),
}

/// A payload that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("{what} payload does not decode: {detail}")]
pub struct WireError {
    pub what: &'static str,
    pub detail: String,
}

macro_rules! wire {
    ($t:ty, $name:literal) => {
        impl $t {
            pub fn encode(&self) -> Vec<u8> {
                postcard::to_stdvec(self).expect("encoding into a Vec cannot fail")
            }

            pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
                match postcard::take_from_bytes::<Self>(bytes) {
                    Ok((v, [])) => Ok(v),
                    Ok((_, rest)) => Err(WireError {
                        what: $name,
                        detail: format!("{} trailing bytes", rest.len()),
                    }),
                    Err(e) => Err(WireError {
                        what: $name,
                        detail: e.to_string(),
                    }),
                }
            }
        }
    };
}

wire!(RecordsMsg, "records");
wire!(AckMsg, "ack");
wire!(AgentStatusMsg, "agent status");
wire!(HubStatusMsg, "hub status");
wire!(InterlockMsg, "interlock");
wire!(ClearanceMsg, "clearance");

/// Bytes a record adds to an encoded batch (length prefix included), to keep batches under a
/// byte budget.
pub fn record_cost(len: usize) -> usize {
    len + 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        let t = AgentTopics::new("plant1", "flow-01");
        assert_eq!(t.records, "proofline/v1/plant1/flow-01/records");
        assert_eq!(
            parse_topic("plant1", &t.records),
            Some(("flow-01", TopicKind::Records))
        );
        assert_eq!(
            parse_topic("plant1", &t.status),
            Some(("flow-01", TopicKind::Status))
        );
        assert_eq!(parse_topic("plant2", &t.records), None);
        assert_eq!(
            parse_topic("plant1", "proofline/v1/plant1/a/b/records"),
            None
        );
        assert_eq!(parse_topic("plant1", "proofline/v1/plant1//records"), None);
        let long = format!("proofline/v1/plant1/{}/records", "a".repeat(65));
        assert_eq!(parse_topic("plant1", &long), None);
        let ok = format!("proofline/v1/plant1/{}/records", "a".repeat(64));
        assert!(parse_topic("plant1", &ok).is_some());
        for bad in ["é", "a b", "a+b", "a#", "\u{0}"] {
            let t = format!("proofline/v1/plant1/{bad}/records");
            assert_eq!(parse_topic("plant1", &t), None, "{bad:?}");
        }
    }

    #[test]
    fn payloads_round_trip_and_refuse_garbage() {
        let m = RecordsMsg::V1(Batch {
            first: 7,
            records: vec![Bytes(vec![1, 2, 3]), Bytes(vec![4; 300])],
            checkpoint: "note".into(),
            boot: 3,
            head: 9,
            sent_at: 1,
        });
        let b = m.encode();
        assert_eq!(RecordsMsg::decode(&b).unwrap(), m);
        let cost: usize = [3usize, 300].iter().map(|l| record_cost(*l)).sum();
        assert!(b.len() <= cost + 64, "{} vs {cost}", b.len());
        assert!(RecordsMsg::decode(&b[..b.len() - 1]).is_err());
        let mut extra = b.clone();
        extra.push(0);
        assert!(RecordsMsg::decode(&extra)
            .unwrap_err()
            .to_string()
            .contains("trailing"));
        assert!(AckMsg::decode(&[9, 9, 9]).is_err());
    }

    #[test]
    fn signed_messages_open_only_unaltered_in_their_domain_with_their_key() {
        let station = NoteSigner::generate("proofline/plant1/flow-01").unwrap();
        let other = NoteSigner::generate("proofline/plant1/flow-02").unwrap();
        let body = StatusBody {
            agent_id: "flow-01".into(),
            id: MsgId {
                boot: 2,
                counter: 7,
            },
            online: true,
            will: Some(6),
            version: "1".into(),
            size: 10,
            degraded: None,
            sent_at: 5,
        };
        let sealed = Signed::seal(DOMAIN_STATUS, &body, &station);
        let key = station.verifier();
        assert_eq!(
            sealed.open::<StatusBody>(DOMAIN_STATUS, &key).unwrap(),
            body
        );
        // Another domain, another key, one flipped bit: refused before anything is decoded.
        assert!(sealed.open::<StatusBody>(DOMAIN_BATCH, &key).is_err());
        assert!(sealed
            .open::<StatusBody>(DOMAIN_STATUS, &other.verifier())
            .is_err());
        let mut altered = sealed.clone();
        altered.body.0[0] ^= 1;
        assert!(matches!(
            altered.open::<StatusBody>(DOMAIN_STATUS, &key),
            Err(OpenError::BadSignature { .. })
        ));
        let mut short = sealed;
        short.signature.0.pop();
        assert!(short.open::<StatusBody>(DOMAIN_STATUS, &key).is_err());
        // The cosignature verifier of a hub key checks the hub's messages too.
        let ack = Signed::seal(DOMAIN_ACK, &1u8, &other);
        assert!(ack
            .open::<u8>(DOMAIN_ACK, &other.cosignature_verifier())
            .is_ok());
        assert!(
            MsgId {
                boot: 1,
                counter: 9
            } < MsgId {
                boot: 2,
                counter: 0
            }
        );
    }
}
