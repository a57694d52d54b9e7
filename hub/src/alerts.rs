//! Alerts the witness raises (DESIGN §4, §7): kept in memory for the API, logged at ERROR,
//! counted for `/metrics`, and recorded in the hub's own ledger by the caller.
//!
//! Nothing outside may grow them: every alert is built from bounded parts (a valid station id,
//! a message cut to [`MAX_MESSAGE_BYTES`]); alerts fold into one entry per kind and station with
//! a count, and every message from an id no station has folds into one entry with a count and a
//! bounded sample of the ids. An entry is recorded in the hub's ledger when it first appears and
//! then at most once per [`RECORD_EVERY_MICROS`] with the count since, so a flood costs the
//! ledger nothing. Security alerts (bad signature, chain break, fork, size or boot regression,
//! a station key changed behind the hub's back) are never evicted; the others make room only
//! for each other.

use std::collections::BTreeMap;

use serde::Serialize;

/// Longest alert message kept.
pub const MAX_MESSAGE_BYTES: usize = 512;
/// An alert entry is recorded in the hub's ledger at most this often after its first time.
pub const RECORD_EVERY_MICROS: i64 = 60_000_000;
/// Distinct unknown station ids kept as a sample.
pub const UNKNOWN_SAMPLE: usize = 8;
/// Entries held (a bound against mistakes: entries are per enrolled station and kind).
const MAX_ENTRIES: usize = 4096;
/// The station id of the entry every unknown id folds into.
pub const UNKNOWN_IDS: &str = "*";

/// Alert kinds, with stable names used in the API, the metrics and the hub ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    UnknownAgent,
    BadSignature,
    ChainBreak,
    Fork,
    SizeRegression,
    BootRegression,
    UnfilledGap,
    StaleAgent,
    ClockSkew,
    Malformed,
    StationDegraded,
    KeyChanged,
    /// The hub's own disk is below its free-space reserve: it takes no new batches.
    DiskLow,
    /// Delivery to the QMS has stopped until someone acts (the message says what).
    QmsStopped,
}

impl AlertKind {
    pub const ALL: [AlertKind; 14] = [
        AlertKind::UnknownAgent,
        AlertKind::BadSignature,
        AlertKind::ChainBreak,
        AlertKind::Fork,
        AlertKind::SizeRegression,
        AlertKind::BootRegression,
        AlertKind::UnfilledGap,
        AlertKind::StaleAgent,
        AlertKind::ClockSkew,
        AlertKind::Malformed,
        AlertKind::StationDegraded,
        AlertKind::KeyChanged,
        AlertKind::DiskLow,
        AlertKind::QmsStopped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AlertKind::UnknownAgent => "unknown_agent",
            AlertKind::BadSignature => "bad_signature",
            AlertKind::ChainBreak => "chain_break",
            AlertKind::Fork => "fork",
            AlertKind::SizeRegression => "size_regression",
            AlertKind::BootRegression => "boot_regression",
            AlertKind::UnfilledGap => "unfilled_gap",
            AlertKind::StaleAgent => "stale_agent",
            AlertKind::ClockSkew => "clock_skew",
            AlertKind::Malformed => "malformed",
            AlertKind::StationDegraded => "station_degraded",
            AlertKind::KeyChanged => "key_changed",
            AlertKind::DiskLow => "disk_low",
            AlertKind::QmsStopped => "qms_stopped",
        }
    }

    /// Evidence someone altered, forged or rolled back a ledger: never evicted by noise.
    pub fn is_security(self) -> bool {
        matches!(
            self,
            AlertKind::BadSignature
                | AlertKind::ChainBreak
                | AlertKind::Fork
                | AlertKind::SizeRegression
                | AlertKind::BootRegression
                | AlertKind::KeyChanged
        )
    }
}

/// One alert entry as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub id: u64,
    pub kind: AlertKind,
    /// The station concerned, `*` for messages from ids no station has, `hub` for the hub
    /// itself.
    pub agent_id: String,
    /// The latest message.
    pub message: String,
    /// Seq the latest problem was found at, when there is one.
    pub seq: Option<u64>,
    /// First and last time it was raised (UTC microseconds) and how often in between.
    pub first_at: i64,
    pub last_at: i64,
    pub count: u64,
    /// For `*`: a few of the unknown ids seen.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sample: Vec<String>,
    pub security: bool,
    /// When it was last recorded in the hub's ledger, and its count then.
    #[serde(skip)]
    recorded_at: i64,
    #[serde(skip)]
    recorded_count: u64,
}

/// A newly raised alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raised {
    pub kind: AlertKind,
    pub agent_id: String,
    pub message: String,
    pub seq: Option<u64>,
}

/// An alert to write into the hub's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToRecord {
    pub kind: AlertKind,
    pub agent_id: String,
    pub message: String,
    pub seq: Option<u64>,
}

/// The alerts held for the API.
#[derive(Debug, Default)]
pub struct AlertBook {
    entries: BTreeMap<(AlertKind, String), Alert>,
    next_id: u64,
    counts: BTreeMap<AlertKind, u64>,
}

use proofline_common::wire::truncate_utf8 as cut;

impl AlertBook {
    pub fn new() -> Self {
        AlertBook {
            next_id: 1,
            ..AlertBook::default()
        }
    }

    /// Adds `r` at `now`; returns what to record in the hub's ledger, if anything (the first
    /// time, then at most once per [`RECORD_EVERY_MICROS`]).
    pub fn raise(&mut self, r: &Raised, now: i64) -> Option<ToRecord> {
        *self.counts.entry(r.kind).or_default() += 1;
        let unknown = r.kind == AlertKind::UnknownAgent;
        let agent = if unknown {
            UNKNOWN_IDS
        } else {
            cut(&r.agent_id, 64)
        };
        let key = (r.kind, agent.to_owned());
        if !self.entries.contains_key(&key) {
            if !self.make_room() && !r.kind.is_security() {
                // Full of security alerts: this one is counted only.
                return None;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.entries.insert(
                key.clone(),
                Alert {
                    id,
                    kind: r.kind,
                    agent_id: agent.to_owned(),
                    message: String::new(),
                    seq: None,
                    first_at: now,
                    last_at: now,
                    count: 0,
                    sample: Vec::new(),
                    security: r.kind.is_security(),
                    recorded_at: i64::MIN,
                    recorded_count: 0,
                },
            );
        }
        let a = self.entries.get_mut(&key).expect("inserted above");
        a.count += 1;
        a.last_at = now;
        a.seq = r.seq;
        if unknown {
            let id = cut(&r.agent_id, 64);
            if a.sample.len() < UNKNOWN_SAMPLE && !a.sample.iter().any(|s| s == id) {
                a.sample.push(id.to_owned());
            }
            a.message = format!(
                "{} message(s) from stations not enrolled at this hub (ids include {})",
                a.count,
                a.sample.join(", ")
            );
        } else {
            a.message = cut(&r.message, MAX_MESSAGE_BYTES).to_owned();
        }
        let due = a.recorded_at == i64::MIN || now - a.recorded_at >= RECORD_EVERY_MICROS;
        if !due {
            return None;
        }
        let since = a.count - a.recorded_count;
        a.recorded_at = now;
        a.recorded_count = a.count;
        let message = if since > 1 && !unknown {
            format!("{} ({since} times since it was last recorded)", a.message)
        } else {
            a.message.clone()
        };
        Some(ToRecord {
            kind: a.kind,
            agent_id: a.agent_id.clone(),
            message,
            seq: a.seq,
        })
    }

    /// Evicts the entry least recently raised of the non-security kinds when the book is full
    /// (a security entry is never evicted); whether there is room now.
    fn make_room(&mut self) -> bool {
        if self.entries.len() < MAX_ENTRIES {
            return true;
        }
        let victim = self
            .entries
            .iter()
            .filter(|(_, a)| !a.security)
            .min_by_key(|(_, a)| a.last_at)
            .map(|(k, _)| k.clone());
        match victim {
            Some(k) => self.entries.remove(&k).is_some(),
            None => false,
        }
    }

    /// Security alerts first, then the others; newest first within each.
    pub fn list(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self.entries.values().cloned().collect();
        v.sort_by(|a, b| {
            b.security
                .cmp(&a.security)
                .then(b.last_at.cmp(&a.last_at))
                .then(b.id.cmp(&a.id))
        });
        v
    }

    /// Alerts raised per kind since start (repeats included).
    pub fn count(&self, kind: AlertKind) -> u64 {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(kind: AlertKind, agent: &str, msg: &str) -> Raised {
        Raised {
            kind,
            agent_id: agent.into(),
            message: msg.into(),
            seq: Some(3),
        }
    }

    #[test]
    fn repeats_fold_per_kind_and_station_and_are_recorded_at_a_bounded_rate() {
        let mut b = AlertBook::new();
        assert!(b.raise(&r(AlertKind::Fork, "a", "x"), 1).is_some());
        assert!(b.raise(&r(AlertKind::Fork, "a", "y"), 2).is_none());
        assert!(b.raise(&r(AlertKind::Fork, "b", "x"), 3).is_some());
        let rec = b
            .raise(&r(AlertKind::Fork, "a", "z"), 1 + RECORD_EVERY_MICROS)
            .expect("recorded again after the interval");
        assert!(rec.message.contains("2 times"), "{}", rec.message);
        let l = b.list();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].agent_id, "a");
        assert_eq!(l[0].count, 3);
        assert_eq!(l[0].message, "z");
        assert_eq!(b.count(AlertKind::Fork), 4);
        assert_eq!(b.total(), 4);
    }

    #[test]
    fn a_flood_of_unknown_ids_is_one_bounded_entry_and_evicts_no_security_alert() {
        let mut b = AlertBook::new();
        b.raise(&r(AlertKind::BadSignature, "flow-01", "forged"), 0);
        let mut recorded = 0;
        for i in 0..3000 {
            let id = format!("ghost-{i}");
            if b.raise(&r(AlertKind::UnknownAgent, &id, "not enrolled"), i)
                .is_some()
            {
                recorded += 1;
            }
        }
        assert_eq!(recorded, 1, "one ledger record for the whole flood");
        let l = b.list();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].kind, AlertKind::BadSignature);
        let unknown = &l[1];
        assert_eq!(unknown.agent_id, UNKNOWN_IDS);
        assert_eq!(unknown.count, 3000);
        assert_eq!(unknown.sample.len(), UNKNOWN_SAMPLE);
        assert!(unknown.message.len() < 1024);
        assert!(unknown.message.starts_with("3000 message(s)"));
    }

    #[test]
    fn messages_are_cut_at_a_character_boundary() {
        let mut b = AlertBook::new();
        let long = "é".repeat(5000);
        let rec = b
            .raise(&r(AlertKind::Malformed, "flow-01", &long), 0)
            .unwrap();
        assert!(rec.message.len() <= MAX_MESSAGE_BYTES);
        assert!(rec.message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_full_book_evicts_noise_never_security() {
        let mut b = AlertBook::new();
        for i in 0..MAX_ENTRIES {
            b.raise(&r(AlertKind::Fork, &format!("s{i}"), "fork"), i as i64);
        }
        b.raise(&r(AlertKind::StaleAgent, "late", "stale"), 1 << 40);
        assert_eq!(b.list().len(), MAX_ENTRIES);
        assert!(b.list().iter().all(|a| a.kind == AlertKind::Fork));
    }
}
