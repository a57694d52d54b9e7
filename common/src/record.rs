//! The record model: what a station writes into its ledger (DESIGN §2).
//!
//! A record is the postcard encoding of [`Record`]. Those exact bytes are stored, hashed, sent and
//! verified; nothing is re-encoded to verify it. Postcard encodes enum variants by index and
//! struct fields in order, so the rules for changing this file are strict:
//!
//! - never reorder, remove or retype a field or a variant;
//! - new variants go at the end of an enum (old readers reject them, old records stay readable);
//! - a new field means a new record version (`Record::V2`), never an edit of `RecordV1`.
//!
//! Bodies are shaped for every source the agent has: flow benches over Modbus or serial lines,
//! torque controllers (Modbus or Open Protocol) and barcode scanners.

use serde::{Deserialize, Serialize};

use crate::bytes::Bytes;
use crate::hash::{leaf_hash, Hash};

/// Largest encoded record the store accepts. sled writes large values to blob files that it
/// never fsyncs, so every value stays far below its blob threshold (DESIGN §3).
pub const MAX_RECORD_BYTES: usize = 8 * 1024;

/// A ledger record, versioned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    V1(RecordV1),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordV1 {
    /// `proofline/<site>/<agent_id>`; every record of a ledger carries the same origin.
    pub origin: String,
    /// Leaf index, contiguous from 0.
    pub seq: u64,
    /// Persisted boot counter of the writer that appended the record.
    pub boot: u32,
    /// Agent clock when the event was received, UTC microseconds since the Unix epoch.
    pub received_at: i64,
    /// Leaf hash of the previous record (or the genesis hash for seq 0).
    pub prev: Hash,
    pub body: Body,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    PartScanned(PartScanned),
    InspectionResult(InspectionResult),
    StationEvent(StationEvent),
}

impl Body {
    pub fn kind(&self) -> &'static str {
        match self {
            Body::PartScanned(_) => "PartScanned",
            Body::InspectionResult(_) => "InspectionResult",
            Body::StationEvent(_) => "StationEvent",
        }
    }
}

/// A scan at the station, accepted or rejected. Rejected scans are recorded too: a scan that
/// was refused is itself evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartScanned {
    /// Configured scanner source name.
    pub source: String,
    pub role: ScanRole,
    /// AIM symbology identifier when the scanner sent one (`]d1`, `]d2`, `]C1`, `]Q1`).
    pub symbology: Option<String>,
    /// The bytes as the scanner sent them, prefix and control characters included.
    pub raw: Bytes,
    pub outcome: ScanOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScanRole {
    /// The injector's Data Matrix: makes it the station's current part.
    Part,
    /// An operator badge.
    OperatorBadge,
    /// A verification scan of a laser-marked trim code.
    TrimCode,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ScanOutcome {
    /// A unique item identifier was built from the symbol.
    Identified(Identity),
    /// An opaque value accepted as is (badge number, trim code).
    Value(String),
    /// The scan was refused; `code` is from the agent's scan error vocabulary.
    Rejected { code: String, detail: String },
}

/// Identity of an item as built from its mark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// Canonical key: the MIL-STD-130 UII, or GTIN + serial / GIAI for GS1-marked items.
    pub uii: String,
    /// Envelope format: `06`, `12`, `05`, `DD`, or `gs1` for an un-enveloped GS1 symbol.
    pub format: String,
    /// How the key was built (e.g. `construct-1`, `construct-2`, `uid`, `gtin-serial`, `giai`).
    pub construct: String,
    /// Elements that are not part of the key (current part number, lot, expiry, unknown ones).
    pub attributes: Vec<Attribute>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribute {
    pub name: String,
    pub value: String,
}

/// One test result from a device, bound (or not) to the station's current part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InspectionResult {
    /// Configured source name (e.g. `flow-bench`, `nutrunner`).
    pub source: String,
    /// Device identity as configured or reported (bench id, controller name, tool serial).
    pub device: String,
    /// Identifier of the result on the device (result counter, tightening id), when it has one.
    pub device_result_id: Option<String>,
    pub binding: Binding,
    /// Part identifier reported by the device itself, when it reports one.
    pub device_identifier: Option<String>,
    pub test_plan: Option<TestPlan>,
    /// Badge of the operator logged in at the station, if any.
    pub operator: Option<String>,
    pub characteristics: Vec<Characteristic>,
    /// Overall verdict as evaluated by the agent from the characteristics' limits.
    pub verdict: Verdict,
    /// Overall verdict as reported by the device, if it reports one.
    pub device_verdict: Option<Verdict>,
    /// Device clock, when the device reports one.
    pub device_time: Option<DeviceTime>,
    /// The device's own bytes for this result, undecoded.
    pub raw: RawData,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Binding {
    /// Bound to the part made current by the `PartScanned` record at `scan_seq`.
    Bound { uii: String, scan_seq: u64 },
    /// Bound to the scanned part, but the device reported a different identifier: flagged.
    Mismatch {
        uii: String,
        scan_seq: u64,
        device_identifier: String,
    },
    /// No part could be bound; the result is kept.
    Unbound { reason: UnboundReason },
}

impl Binding {
    pub fn uii(&self) -> Option<&str> {
        match self {
            Binding::Bound { uii, .. } | Binding::Mismatch { uii, .. } => Some(uii),
            Binding::Unbound { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnboundReason {
    /// No part was scanned at the station.
    NoCurrentPart,
    /// The last scan is older than the configured binding window.
    ScanExpired,
    /// The part was already tested and the station requires a new scan per test.
    PartAlreadyTested,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestPlan {
    pub id: String,
    pub revision: String,
}

/// One measured or judged characteristic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Characteristic {
    /// Configured name, e.g. `full_load_delivery`, `back_leak`, `nozzle_nut_torque`.
    pub name: String,
    pub measured: Measured,
    pub nominal: Option<f64>,
    /// Lower specification limit; one-sided limits are normal (back-leak has only a maximum).
    pub lower: Option<f64>,
    /// Upper specification limit.
    pub upper: Option<f64>,
    /// Verdict as evaluated by the agent against the limits.
    pub verdict: Verdict,
    /// Verdict the device reported for this characteristic, if any.
    pub device_verdict: Option<Verdict>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Measured {
    /// A numeric value in its unit (`mm3/stroke`, `bar`, `N.m`, `deg`, `us`, `ohm`, `degC`).
    Value { value: f64, unit: String },
    /// An attribute check (chatter, spray pattern, seat leak): OK or NOK.
    Attribute { ok: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Ok,
    Nok,
    /// Nothing to judge against (no limits, value not numeric).
    NotEvaluated,
}

/// Time as the device reported it. Device clocks often ignore zones and DST, so the text is
/// kept as reported, beside a UTC value only when the device states its zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTime {
    /// As reported, normalised to `YYYY-MM-DDTHH:MM:SS[.fff]` when the format is known.
    pub reported: String,
    pub utc_micros: Option<i64>,
}

/// The device's own representation of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RawData {
    /// A Modbus register block as read in one request.
    ModbusRegisters {
        unit: u8,
        /// 3 (holding) or 4 (input registers).
        function: u8,
        /// 0-based wire address of the first register.
        address: u16,
        registers: Vec<u16>,
    },
    /// One line from a serial device, terminator excluded.
    SerialLine(Bytes),
    /// One Open Protocol message (header and data, without the trailing NUL).
    OpenProtocol(Bytes),
    /// Synthetic or other bytes.
    Other(Bytes),
}

/// Something that happened at the station that is not a scan or a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StationEvent {
    /// The agent started: its version and the SHA-256 of its effective configuration.
    Started {
        version: String,
        config_sha256: Hash,
    },
    /// The agent stopped cleanly.
    Stopped {
        reason: String,
    },
    /// A source connected or recovered.
    SourceUp {
        source: String,
        detail: String,
    },
    /// A source was lost (timeout, unplug, refused connection).
    SourceDown {
        source: String,
        error: String,
    },
    /// A condition an operator or technician should see.
    Alarm(Alarm),
    /// An alarm condition ended.
    AlarmCleared {
        source: String,
        code: String,
    },
    OperatorLogin {
        badge: String,
        source: String,
    },
    OperatorLogout {
        badge: String,
        reason: String,
    },
    /// The scanned part was not tested within the configured window.
    ScanTimeout {
        uii: String,
        scan_seq: u64,
    },
    /// The store cut an incomplete last batch on open: records `from_seq..from_seq+removed`
    /// were never acknowledged to anyone.
    LedgerRepaired {
        from_seq: u64,
        removed: u64,
        detail: String,
    },
    /// The route interlock decided whether the scanned part may be tested here: the hub's
    /// signed answer, or the station's policy when no answer came.
    Interlock(InterlockDecision),
    /// In the hub's own ledger: one access to the hub's web app or API, or one change to its
    /// accounts (the access audit).
    Access(AccessEvent),
    /// In the hub's own ledger: a finding acknowledged, closed (with the reason) or reopened.
    Triage(TriageEvent),
}

/// One triage decision on a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriageEvent {
    /// The finding's id.
    pub finding: String,
    /// The injector it is about, when it is about one.
    pub uii: Option<String>,
    /// `acknowledged`, `closed` or `open` (reopened).
    pub state: String,
    /// The account that decided.
    pub by: String,
    pub reason: String,
}

/// One access as the hub's access audit records it (each field bounded by the hub).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEvent {
    /// The account (`-` when nobody is signed in), or `cli` for the hub's own command line.
    pub who: String,
    /// The account's role, when it has one.
    pub role: Option<String>,
    /// What was asked: `GET /injectors/…`, `signin`, `signout`, `account.add alice`, ...
    pub what: String,
    /// Where from: the peer address.
    pub from: String,
    /// `allowed 200`, `denied …`, `failed …`, `locked …`, ...
    pub outcome: String,
}

/// One route interlock decision, as the station acted on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterlockDecision {
    pub uii: String,
    /// Seq of the part scan asked about.
    pub scan_seq: u64,
    /// What the station let happen: the bench released (true) or held (false).
    pub released: bool,
    pub outcome: InterlockOutcome,
    /// The hub's answer exactly as received (a `ClearanceMsg`, signed by the hub key), so
    /// anyone with the hub's verifier key can check the hub said it.
    pub answer: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InterlockOutcome {
    /// The hub allows the part here: it is due for `operation`.
    Allowed { operation: String },
    /// The hub refuses the part here (`code` is stable, `reason` says why for the operator).
    Refused { code: String, reason: String },
    /// No answer from the hub in time: the station's policy (`allow_and_flag` or `block`)
    /// decided; `detail` says what happened.
    Unreachable { policy: String, detail: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    pub source: String,
    /// Stable machine-readable code, e.g. `modbus.exception`, `op.tightening_gap`.
    pub code: String,
    pub severity: Severity,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record bytes do not decode: {0}")]
pub struct DecodeError(String);

impl Record {
    /// Decodes stored bytes. Trailing bytes are an error: a record is exactly its encoding.
    pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
        let (rec, rest) =
            postcard::take_from_bytes::<Record>(bytes).map_err(|e| DecodeError(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DecodeError(format!("{} trailing bytes", rest.len())));
        }
        Ok(rec)
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding a record into a Vec cannot fail")
    }

    pub fn v1(&self) -> &RecordV1 {
        match self {
            Record::V1(r) => r,
        }
    }

    pub fn origin(&self) -> &str {
        &self.v1().origin
    }
    pub fn seq(&self) -> u64 {
        self.v1().seq
    }
    pub fn prev(&self) -> &Hash {
        &self.v1().prev
    }
    pub fn body(&self) -> &Body {
        &self.v1().body
    }
}

/// Borrowed mirror of `Record::V1` with the identical postcard encoding, so the writer encodes
/// a body without cloning it.
#[derive(Serialize)]
enum RecordRef<'a> {
    V1 {
        origin: &'a str,
        seq: u64,
        boot: u32,
        received_at: i64,
        prev: &'a Hash,
        body: &'a Body,
    },
}

/// Encodes a `Record::V1` from its parts; byte-identical to building the record and encoding it.
pub fn encode_v1(
    origin: &str,
    seq: u64,
    boot: u32,
    received_at: i64,
    prev: &Hash,
    body: &Body,
) -> Vec<u8> {
    let mut out = Vec::new();
    encode_v1_into(&mut out, origin, seq, boot, received_at, prev, body);
    out
}

/// [`encode_v1`] appending to `out` (the writer encodes straight into a page).
pub fn encode_v1_into(
    out: &mut Vec<u8>,
    origin: &str,
    seq: u64,
    boot: u32,
    received_at: i64,
    prev: &Hash,
    body: &Body,
) {
    let taken = std::mem::take(out);
    *out = postcard::to_extend(
        &RecordRef::V1 {
            origin,
            seq,
            boot,
            received_at,
            prev,
            body,
        },
        taken,
    )
    .expect("encoding a record into a Vec cannot fail");
}

/// Leaf hash of encoded record bytes.
pub fn record_leaf(bytes: &[u8]) -> Hash {
    leaf_hash(bytes)
}

/// Current time as UTC microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_result() -> Body {
        Body::InspectionResult(InspectionResult {
            source: "flow-bench".into(),
            device: "EPS815-01".into(),
            device_result_id: Some("4711".into()),
            binding: Binding::Bound {
                uii: "D1ABC57734-0012000123".into(),
                scan_seq: 3,
            },
            device_identifier: None,
            test_plan: Some(TestPlan {
                id: "TP-0445120".into(),
                revision: "C".into(),
            }),
            operator: Some("B0042".into()),
            characteristics: vec![
                Characteristic {
                    name: "full_load_delivery".into(),
                    measured: Measured::Value {
                        value: 62.4,
                        unit: "mm3/stroke".into(),
                    },
                    nominal: Some(62.0),
                    lower: Some(60.14),
                    upper: Some(63.86),
                    verdict: Verdict::Ok,
                    device_verdict: Some(Verdict::Ok),
                },
                Characteristic {
                    name: "spray_pattern".into(),
                    measured: Measured::Attribute { ok: true },
                    nominal: None,
                    lower: None,
                    upper: None,
                    verdict: Verdict::Ok,
                    device_verdict: None,
                },
            ],
            verdict: Verdict::Ok,
            device_verdict: Some(Verdict::Ok),
            device_time: Some(DeviceTime {
                reported: "2025-03-05T14:22:31".into(),
                utc_micros: None,
            }),
            raw: RawData::ModbusRegisters {
                unit: 1,
                function: 3,
                address: 100,
                registers: vec![0x4145, 0x70a4],
            },
        })
    }

    #[test]
    fn encodes_and_decodes_exactly() {
        let rec = Record::V1(RecordV1 {
            origin: "proofline/p1/a1".into(),
            seq: 7,
            boot: 2,
            received_at: 1_700_000_000_000_000,
            prev: leaf_hash(b"prev"),
            body: sample_result(),
        });
        let bytes = rec.encode();
        assert_eq!(Record::decode(&bytes).unwrap(), rec);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Record::decode(&longer).is_err());
        assert!(Record::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn borrowed_encoding_is_byte_identical() {
        let r = RecordV1 {
            origin: "proofline/p1/a1".into(),
            seq: 300,
            boot: 70_000,
            received_at: -5,
            prev: leaf_hash(b"p"),
            body: sample_result(),
        };
        let direct = encode_v1(&r.origin, r.seq, r.boot, r.received_at, &r.prev, &r.body);
        let mut appended = vec![9, 9];
        encode_v1_into(
            &mut appended,
            &r.origin,
            r.seq,
            r.boot,
            r.received_at,
            &r.prev,
            &r.body,
        );
        assert_eq!(appended[2..], direct[..]);
        assert_eq!(direct, Record::V1(r).encode());
    }

    #[test]
    fn record_version_tag_is_the_first_byte() {
        let rec = Record::V1(RecordV1 {
            origin: "proofline/p1/a1".into(),
            seq: 0,
            boot: 1,
            received_at: 0,
            prev: Hash::default(),
            body: Body::StationEvent(StationEvent::Stopped { reason: "x".into() }),
        });
        assert_eq!(rec.encode()[0], 0, "V1 is variant 0");
    }
}
