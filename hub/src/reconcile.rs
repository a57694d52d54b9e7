//! The reconciler: one timeline per injector (keyed by UII) across every station's witnessed
//! ledger, each entry with the station ledger and seq that prove it.
//!
//! Invariants:
//! - **Deterministic.** The projection depends only on the set of witnessed records, never on
//!   the order in which stations' batches were witnessed: a timeline is kept sorted by (station
//!   clock, station, seq), and each station's records are applied strictly in seq order, each
//!   once ([`Projection::apply`] refuses a gap and ignores a record already applied). So
//!   [`Projection::rebuild`] over the stored records equals any live projection fed the same
//!   records, and [`Projection::digest`] says so in 32 bytes.
//! - **Nothing is dropped.** A result bound to no part is kept in [`Projection::unbound`]; a
//!   rejected scan is kept on its station's list; an alarm or station event is kept on its
//!   station's list and, while a part is current at that station, on that part's timeline too.
//!
//! Not yet here (issue 11): the projection is computed offline by `proofline-hub reconcile
//! --rebuild`, not yet kept durably in the hub store beside the witnessed records; routes,
//! findings and the QMS outbox build on it.

use std::collections::BTreeMap;

use proofline_common::hash::Hash;
use proofline_common::record::{
    Binding, Body, Characteristic, Identity, InspectionResult, Measured, PartScanned, Record,
    ScanOutcome, ScanRole, StationEvent, Verdict,
};
use proofline_common::store::{StoreError, WitnessStore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The station ledger entry that proves a timeline entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Proof {
    pub agent_id: String,
    pub seq: u64,
}

/// One characteristic of a result as the timeline shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CharacteristicView {
    pub name: String,
    /// Numeric value, when measured as one.
    pub value: Option<f64>,
    pub unit: Option<String>,
    /// OK/NOK, for an attribute check.
    pub ok: Option<bool>,
    pub nominal: Option<f64>,
    pub lower: Option<f64>,
    pub upper: Option<f64>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A scan: the part's own mark (accepted, `rejected` = None) or a trim-code verification.
    Scan {
        role: ScanRole,
        /// The scanned value, for a trim-code or badge scan.
        value: Option<String>,
        /// The agent's error code, for a scan it refused.
        rejected: Option<String>,
    },
    /// An inspection result bound to the part (or to no part, on the unbound list).
    Result {
        source: String,
        device: String,
        device_result_id: Option<String>,
        test_plan: Option<(String, String)>,
        verdict: Verdict,
        /// The identifier the device reported when it differs from the scanned UII.
        device_identifier_mismatch: Option<String>,
        /// Why no part was bound (unbound results only).
        unbound_reason: Option<String>,
        characteristics: Vec<CharacteristicView>,
    },
    /// The part was scanned but not tested in time.
    ScanTimeout,
    /// An alarm at the station.
    Alarm {
        source: String,
        code: String,
        message: String,
    },
    /// Any other station event (start, stop, a source lost or back, a repaired ledger, …).
    Station { event: String },
}

/// One entry of a timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Station clock when the station received the event, UTC microseconds.
    pub at: i64,
    pub proof: Proof,
    pub kind: EntryKind,
}

impl Entry {
    fn key(&self) -> (i64, &str, u64) {
        (self.at, &self.proof.agent_id, self.proof.seq)
    }
}

/// Inserts `e` keeping `list` sorted by (time, station, seq).
fn insert_sorted(list: &mut Vec<Entry>, e: Entry) {
    let at = list.partition_point(|x| x.key() < e.key());
    list.insert(at, e);
}

/// What the reconciler knows of one station.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StationView {
    /// Records applied: the next seq expected.
    pub next_seq: u64,
    /// The part whose mark was scanned last and is still current there.
    pub current: Option<String>,
    /// Rejected scans, alarms and station events, in seq order.
    pub events: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{agent_id}: record {seq} arrived before record {expected}")]
    Gap {
        agent_id: String,
        seq: u64,
        expected: u64,
    },
    #[error("{agent_id}: record {seq} does not decode: {message}")]
    Undecodable {
        agent_id: String,
        seq: u64,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The reconciled view of every injector.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Projection {
    /// Timelines by UII.
    pub injectors: BTreeMap<String, Vec<Entry>>,
    /// Results bound to no part, sorted like a timeline.
    pub unbound: Vec<Entry>,
    pub stations: BTreeMap<String, StationView>,
}

impl Projection {
    /// Applies the witnessed record `seq` of `agent_id`. Ok(false) for a record already applied
    /// (a duplicate delivery); a gap is an error, as the witness never stores one.
    pub fn apply(
        &mut self,
        agent_id: &str,
        seq: u64,
        bytes: &[u8],
    ) -> Result<bool, ReconcileError> {
        let station = self.stations.entry(agent_id.to_owned()).or_default();
        if seq < station.next_seq {
            return Ok(false);
        }
        if seq > station.next_seq {
            return Err(ReconcileError::Gap {
                agent_id: agent_id.into(),
                seq,
                expected: station.next_seq,
            });
        }
        let rec = Record::decode(bytes).map_err(|e| ReconcileError::Undecodable {
            agent_id: agent_id.into(),
            seq,
            message: e.to_string(),
        })?;
        station.next_seq += 1;
        let v = rec.v1();
        let e = Entry {
            at: v.received_at,
            proof: Proof {
                agent_id: agent_id.to_owned(),
                seq,
            },
            // Set by the step below.
            kind: EntryKind::ScanTimeout,
        };
        let injectors = &mut self.injectors;
        match &v.body {
            Body::PartScanned(s) => apply_scan(injectors, station, s, e),
            Body::InspectionResult(r) => apply_result(injectors, &mut self.unbound, r, e),
            Body::StationEvent(ev) => apply_station_event(injectors, station, ev, e),
        }
        Ok(true)
    }

    /// The projection recomputed from every witnessed record in `store`.
    pub fn rebuild(store: &WitnessStore) -> Result<Projection, ReconcileError> {
        let mut p = Projection::default();
        let mut ids = store.stations();
        ids.sort();
        for id in ids {
            let ledger = store.open(&id)?;
            for item in ledger.reader().range(0..u64::MAX) {
                let (seq, bytes) = item?;
                p.apply(&id, seq, &bytes)?;
            }
        }
        Ok(p)
    }

    /// SHA-256 of the projection's canonical encoding: equal digests, equal projections.
    pub fn digest(&self) -> Hash {
        let bytes = postcard::to_stdvec(self).expect("a projection encodes");
        Hash::from_slice(&Sha256::digest(&bytes)).expect("32 bytes")
    }

    /// Records applied, over every station.
    pub fn records(&self) -> u64 {
        self.stations.values().map(|s| s.next_seq).sum()
    }
}

/// A scan: the part's own mark makes it current at the station and starts (or continues) its
/// timeline; a trim-code or badge scan goes on the current part's timeline; a refused scan,
/// or one with no part current, stays on the station's list.
fn apply_scan(
    injectors: &mut BTreeMap<String, Vec<Entry>>,
    station: &mut StationView,
    s: &PartScanned,
    mut e: Entry,
) {
    match (&s.outcome, s.role) {
        (ScanOutcome::Identified(id), ScanRole::Part) => {
            station.current = Some(id.uii.clone());
            e.kind = EntryKind::Scan {
                role: s.role,
                value: None,
                rejected: None,
            };
            insert_sorted(injectors.entry(id.uii.clone()).or_default(), e);
        }
        (ScanOutcome::Rejected { code, .. }, role) => {
            e.kind = EntryKind::Scan {
                role,
                value: None,
                rejected: Some(code.clone()),
            };
            station.events.push(e);
        }
        (
            ScanOutcome::Identified(Identity { uii: value, .. }) | ScanOutcome::Value(value),
            role,
        ) => {
            e.kind = EntryKind::Scan {
                role,
                value: Some(value.clone()),
                rejected: None,
            };
            match &station.current {
                Some(uii) => insert_sorted(injectors.entry(uii.clone()).or_default(), e),
                None => station.events.push(e),
            }
        }
    }
}

/// A result goes on its part's timeline, or on the unbound list when it has none.
fn apply_result(
    injectors: &mut BTreeMap<String, Vec<Entry>>,
    unbound: &mut Vec<Entry>,
    r: &InspectionResult,
    mut e: Entry,
) {
    let characteristics = r.characteristics.iter().map(characteristic_view).collect();
    let (uii, mismatch, unbound_reason) = match &r.binding {
        Binding::Bound { uii, .. } => (Some(uii), None, None),
        Binding::Mismatch {
            uii,
            device_identifier,
            ..
        } => (Some(uii), Some(device_identifier.clone()), None),
        Binding::Unbound { reason } => (None, None, Some(format!("{reason:?}"))),
    };
    e.kind = EntryKind::Result {
        source: r.source.clone(),
        device: r.device.clone(),
        device_result_id: r.device_result_id.clone(),
        test_plan: r
            .test_plan
            .as_ref()
            .map(|p| (p.id.clone(), p.revision.clone())),
        verdict: r.verdict,
        device_identifier_mismatch: mismatch,
        unbound_reason,
        characteristics,
    };
    match uii {
        Some(u) => insert_sorted(injectors.entry(u.clone()).or_default(), e),
        None => insert_sorted(unbound, e),
    }
}

fn characteristic_view(c: &Characteristic) -> CharacteristicView {
    let (value, unit, ok) = match &c.measured {
        Measured::Value { value, unit } => (Some(*value), Some(unit.clone()), None),
        Measured::Attribute { ok } => (None, None, Some(*ok)),
    };
    CharacteristicView {
        name: c.name.clone(),
        value,
        unit,
        ok,
        nominal: c.nominal,
        lower: c.lower,
        upper: c.upper,
        verdict: c.verdict,
    }
}

/// An alarm or station event stays on the station's list and goes on the timeline of the part
/// current there; a scan timeout ends that part's presence, and so does a restart.
fn apply_station_event(
    injectors: &mut BTreeMap<String, Vec<Entry>>,
    station: &mut StationView,
    ev: &StationEvent,
    mut e: Entry,
) {
    e.kind = match ev {
        StationEvent::Alarm(a) => EntryKind::Alarm {
            source: a.source.clone(),
            code: a.code.clone(),
            message: a.message.clone(),
        },
        StationEvent::ScanTimeout { .. } => EntryKind::ScanTimeout,
        other => EntryKind::Station {
            event: station_event_name(other).into(),
        },
    };
    let part = match ev {
        StationEvent::ScanTimeout { uii, .. } => {
            if station.current.as_deref() == Some(uii) {
                station.current = None;
            }
            Some(uii.clone())
        }
        StationEvent::Started { .. } | StationEvent::Stopped { .. } => station.current.take(),
        _ => station.current.clone(),
    };
    if let Some(uii) = part {
        insert_sorted(injectors.entry(uii).or_default(), e.clone());
    }
    station.events.push(e);
}

fn station_event_name(e: &StationEvent) -> &'static str {
    match e {
        StationEvent::Started { .. } => "started",
        StationEvent::Stopped { .. } => "stopped",
        StationEvent::SourceUp { .. } => "source_up",
        StationEvent::SourceDown { .. } => "source_down",
        StationEvent::Alarm(_) => "alarm",
        StationEvent::AlarmCleared { .. } => "alarm_cleared",
        StationEvent::OperatorLogin { .. } => "operator_login",
        StationEvent::OperatorLogout { .. } => "operator_logout",
        StationEvent::ScanTimeout { .. } => "scan_timeout",
        StationEvent::LedgerRepaired { .. } => "ledger_repaired",
    }
}
