//! Alerts the witness raises (DESIGN §4): kept in memory for the API, logged at ERROR, counted
//! for `/metrics`, and recorded in the hub's own ledger by the caller.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

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
}

impl AlertKind {
    pub const ALL: [AlertKind; 10] = [
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
        }
    }
}

/// One alert as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub id: u64,
    pub kind: AlertKind,
    /// The agent concerned (its id from the topic).
    pub agent_id: String,
    pub message: String,
    /// Seq the problem was found at, when there is one.
    pub seq: Option<u64>,
    /// First and last time it was raised (UTC microseconds) and how often in between.
    pub first_at: i64,
    pub last_at: i64,
    pub count: u64,
}

/// A newly raised alert, before it gets an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raised {
    pub kind: AlertKind,
    pub agent_id: String,
    pub message: String,
    pub seq: Option<u64>,
}

/// Alerts held for the API: the newest `capacity`, with repeats of the same (agent, kind,
/// message) folded into one entry with a count.
#[derive(Debug)]
pub struct AlertBook {
    alerts: VecDeque<Alert>,
    capacity: usize,
    next_id: u64,
    counts: BTreeMap<AlertKind, u64>,
}

impl AlertBook {
    pub fn new(capacity: usize) -> Self {
        AlertBook {
            alerts: VecDeque::new(),
            capacity: capacity.max(1),
            next_id: 1,
            counts: BTreeMap::new(),
        }
    }

    /// Adds `r`; returns whether it is new (not a repeat of a held alert).
    pub fn raise(&mut self, r: &Raised, now: i64) -> bool {
        *self.counts.entry(r.kind).or_default() += 1;
        if let Some(a) = self
            .alerts
            .iter_mut()
            .find(|a| a.kind == r.kind && a.agent_id == r.agent_id && a.message == r.message)
        {
            a.last_at = now;
            a.count += 1;
            return false;
        }
        if self.alerts.len() == self.capacity {
            self.alerts.pop_front();
        }
        self.alerts.push_back(Alert {
            id: self.next_id,
            kind: r.kind,
            agent_id: r.agent_id.clone(),
            message: r.message.clone(),
            seq: r.seq,
            first_at: now,
            last_at: now,
            count: 1,
        });
        self.next_id += 1;
        true
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Alert> {
        self.alerts.iter().rev().cloned().collect()
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

    #[test]
    fn repeats_fold_and_the_book_is_bounded() {
        let mut b = AlertBook::new(2);
        let r = |agent: &str, msg: &str| Raised {
            kind: AlertKind::Fork,
            agent_id: agent.into(),
            message: msg.into(),
            seq: Some(3),
        };
        assert!(b.raise(&r("a", "x"), 1));
        assert!(!b.raise(&r("a", "x"), 2));
        assert!(b.raise(&r("b", "x"), 3));
        assert!(b.raise(&r("c", "y"), 4));
        let l = b.list();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].agent_id, "c");
        assert_eq!(b.count(AlertKind::Fork), 4);
        assert_eq!(b.total(), 4);
    }
}
