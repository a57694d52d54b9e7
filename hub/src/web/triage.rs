//! Finding triage: a quality engineer acknowledges a finding (seen, being dealt with) or closes
//! it with a reason, and may reopen it. Each decision is a `StationEvent::Triage` record in the
//! hub's ledger (who, when, what, why), and the current state of each finding is kept in the
//! index `web.triage`, written before the ledger commit that makes both durable. A finding
//! nobody has triaged is open.

use std::collections::BTreeMap;

use proofline_common::record::{Body, StationEvent, TriageEvent};
use proofline_common::store::{Entry, Index, IndexBatch, StoreError};
use serde::{Deserialize, Serialize};

pub const INDEX: &str = "web.triage";
/// Longest reason kept.
pub const MAX_REASON: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Open,
    Acknowledged,
    Closed,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Acknowledged => "acknowledged",
            State::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        [State::Open, State::Acknowledged, State::Closed]
            .into_iter()
            .find(|x| x.name() == s)
    }
}

/// The last decision on a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub state: State,
    pub by: String,
    /// UTC microseconds.
    pub at: i64,
    pub reason: String,
}

#[derive(Debug)]
pub struct Triage {
    index: Index,
    map: BTreeMap<String, Decision>,
}

/// What a triage form asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Acknowledge,
    Close,
    Reopen,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "acknowledge" => Some(Action::Acknowledge),
            "close" => Some(Action::Close),
            "reopen" => Some(Action::Reopen),
            _ => None,
        }
    }

    fn target(self) -> State {
        match self {
            Action::Acknowledge => State::Acknowledged,
            Action::Close => State::Closed,
            Action::Reopen => State::Open,
        }
    }
}

impl Triage {
    pub fn open(index: Index) -> Result<Triage, StoreError> {
        let mut map = BTreeMap::new();
        for kv in index.scan(&[]) {
            let (k, v) = kv?;
            let d: Decision = postcard::from_bytes(&v)
                .map_err(|_| StoreError::CorruptMeta("a triage decision does not decode".into()))?;
            map.insert(String::from_utf8_lossy(&k).into_owned(), d);
        }
        Ok(Triage { index, map })
    }

    pub fn state(&self, finding: &str) -> State {
        self.map.get(finding).map_or(State::Open, |d| d.state)
    }

    pub fn decision(&self, finding: &str) -> Option<&Decision> {
        self.map.get(finding)
    }

    /// Checks a decision: Ok(the record to append) or Err(why it is refused).
    pub fn check(
        &self,
        finding: &str,
        action: Action,
        reason: &str,
    ) -> Result<(State, String), String> {
        let reason: String = reason.trim().chars().filter(|c| !c.is_control()).collect();
        if reason.chars().count() > MAX_REASON {
            return Err(format!("the reason is longer than {MAX_REASON} characters"));
        }
        if action == Action::Close && reason.is_empty() {
            return Err("closing a finding needs a reason".into());
        }
        let now = self.state(finding);
        let to = action.target();
        if now == to {
            return Err(format!("the finding is {} already", now.name()));
        }
        Ok((to, reason))
    }

    /// Stores a checked decision (durable with the ledger commit of its record).
    pub fn put(&mut self, finding: &str, d: Decision) -> Result<(), StoreError> {
        let mut b = IndexBatch::new();
        b.insert(
            finding.as_bytes(),
            &postcard::to_allocvec(&d).expect("decisions encode"),
        )?;
        self.index.apply(b)?;
        self.map.insert(finding.to_owned(), d);
        Ok(())
    }

    /// Findings by state name (for `/metrics`), of those in `ids`.
    pub fn counts<'a>(&self, ids: impl Iterator<Item = &'a str>) -> BTreeMap<&'static str, u64> {
        let mut by = BTreeMap::new();
        for id in ids {
            *by.entry(self.state(id).name()).or_default() += 1;
        }
        by
    }
}

/// The hub ledger record of a decision.
pub fn entry(finding: &str, uii: Option<&str>, d: &Decision) -> Entry {
    Entry {
        received_at: d.at,
        body: Body::StationEvent(StationEvent::Triage(TriageEvent {
            finding: finding.to_owned(),
            uii: uii.map(str::to_owned),
            state: d.state.name().to_owned(),
            by: d.by.clone(),
            reason: d.reason.clone(),
        })),
    }
}
