//! The MQTT protocol between agents and the hub (DESIGN §4): topics and postcard payloads.
//!
//! Every payload is a versioned enum so either side can refuse a version it does not know with a
//! clear error instead of misreading it.
//!
//! | topic | direction | payload |
//! |---|---|---|
//! | `proofline/v1/<site>/<agent_id>/records` | agent → hub | [`RecordsMsg`] |
//! | `proofline/v1/<site>/<agent_id>/ack` | hub → agent | [`AckMsg`] |
//! | `proofline/v1/<site>/<agent_id>/status` | agent → hub, retained | [`AgentStatusMsg`] |
//! | `proofline/v1/<site>/hub/status` | hub → all, retained | [`HubStatusMsg`] |

use serde::{Deserialize, Serialize};

use crate::bytes::Bytes;

/// Topic prefix of everything Proofline publishes.
pub const TOPIC_ROOT: &str = "proofline/v1";

/// The topics of one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTopics {
    pub records: String,
    pub ack: String,
    pub status: String,
}

impl AgentTopics {
    pub fn new(site: &str, agent_id: &str) -> Self {
        let base = format!("{TOPIC_ROOT}/{site}/{agent_id}");
        AgentTopics {
            records: format!("{base}/records"),
            ack: format!("{base}/ack"),
            status: format!("{base}/status"),
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

/// What a topic of a site names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    Records,
    Ack,
    Status,
}

/// Splits `proofline/v1/<site>/<agent_id>/<kind>` into the agent id and kind.
pub fn parse_topic<'a>(site: &str, topic: &'a str) -> Option<(&'a str, TopicKind)> {
    let rest = topic.strip_prefix(TOPIC_ROOT)?.strip_prefix('/')?;
    let rest = rest.strip_prefix(site)?.strip_prefix('/')?;
    let (agent, kind) = rest.split_once('/')?;
    if agent.is_empty() || agent.contains('/') {
        return None;
    }
    let kind = match kind {
        "records" => TopicKind::Records,
        "ack" => TopicKind::Ack,
        "status" => TopicKind::Status,
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
    V1(Batch),
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
    V1(Ack),
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
    V1(AgentStatus),
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
}
