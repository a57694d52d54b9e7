//! The reconciler: one timeline per injector (keyed by UII) across every station's witnessed
//! ledger, each entry with the station ledger and seq that prove it.
//!
//! Invariants:
//! - **Deterministic.** The projection depends only on the set of witnessed records, never on
//!   the order in which stations' batches were witnessed: a timeline is kept sorted by (station
//!   clock, station, seq), and each station's records are applied strictly in seq order, each
//!   once ([`Reconciler::apply`] refuses a gap and ignores a record already applied); routes
//!   and per-injector findings are judged again from the whole timeline whenever it changes.
//!   So [`Reconciler::rebuild`] over the stored records equals any live reconciler fed the
//!   same records, and [`Reconciler::digest`] says so in 32 bytes.
//! - **Nothing is dropped.** A result bound to no part is kept in [`Projection::unbound`]; a
//!   rejected scan is kept on its station's list; an alarm or station event is kept on its
//!   station's list and, while a part is current at that station, on that part's timeline too.
//!
//! Storage: an index in the hub store (`keys`), written by the witness thread in the same
//! group, and made durable with the same sync, as the records it derives from
//! ([`Reconciler::apply`] stages changes in a [`Pending`], [`Reconciler::commit`] applies them).
//! A rebuild ([`Reconciler::rebuild`]) runs the same code over the stored records into a
//! scratch index; equal index digests mean equal projections, findings and route states.
//!
//! - `keys`: the index layout; `rules`: routes and findings, derived from the timelines.

use std::collections::BTreeMap;

use proofline_common::hash::Hash;
use proofline_common::record::{
    Binding, Body, Characteristic, Identity, InspectionResult, InterlockOutcome, Measured,
    PartScanned, Record, ScanOutcome, ScanRole, StationEvent, Verdict,
};
use proofline_common::store::{Index, IndexBatch, StoreError, WitnessStore, PAGE_MAX_BYTES};
use serde::{Deserialize, Serialize};

pub mod keys;
pub mod rules;

use rules::{Finding, RouteState, Rules, SeqState};

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
        /// How the mark was built (construct, enterprise, part number, serial), for the part's
        /// own mark.
        identity: Option<IdentityView>,
        /// The agent's error code, for a scan it refused.
        rejected: Option<String>,
    },
    /// An inspection result bound to the part (or to no part, on the unbound list).
    Result {
        source: String,
        device: String,
        device_result_id: Option<String>,
        test_plan: Option<(String, String)>,
        /// Badge of the operator logged in at the station.
        operator: Option<String>,
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
    /// The route interlock's decision at the station: `outcome` is `allowed`, `refused` or
    /// `unreachable`; `detail` the operation, the refusal or what the policy did.
    Interlock {
        outcome: String,
        released: bool,
        detail: String,
        /// The hub signed the answer the station acted on.
        hub_signed: bool,
    },
}

/// What the findings rules read of a part's mark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityView {
    pub construct: String,
    /// CAGE, DUNS or DoDAAC, as marked or as it leads a complete UII.
    pub enterprise: Option<String>,
    /// The original part number (construct #2) or the current part number, when marked.
    pub part_number: Option<String>,
    pub serial: Option<String>,
}

/// One entry of a timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Station clock when the station received the event, UTC microseconds.
    pub at: i64,
    pub proof: Proof,
    pub kind: EntryKind,
}

/// What the reconciler keeps of one station between records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StationCursor {
    /// Records applied: the next seq expected.
    pub next_seq: u64,
    /// The part whose mark was scanned last and is still current there.
    pub current: Option<String>,
    /// The state of the rules judged over the station's own sequence.
    pub seq: SeqState,
}

/// What a station shows in the projection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StationView {
    pub next_seq: u64,
    pub current: Option<String>,
    /// Refused scans, alarms and station events, in seq order.
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
    #[error("the reconciler's index does not decode at {what}")]
    Corrupt { what: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Changes staged by [`Reconciler::apply`], written by [`Reconciler::commit`].
#[derive(Debug, Default)]
pub struct Pending {
    batch: IndexBatch,
    cursors: BTreeMap<String, StationCursor>,
    /// Injectors whose timeline changed: their route and findings are judged again at commit.
    touched: std::collections::BTreeSet<String>,
    /// Identical-measurement groups that grew.
    signatures: std::collections::BTreeSet<[u8; 32]>,
    /// Findings raised by the station-sequence rules.
    raised: Vec<Finding>,
    /// Timeline entries and signature members staged (a batch cannot be read back).
    entries: BTreeMap<String, Vec<Entry>>,
    sigs: Vec<([u8; 32], String, String, u64)>,
}

/// The reconciler over one index: the live one in the hub store, or a scratch one.
#[derive(Debug)]
pub struct Reconciler {
    index: Index,
    rules: std::sync::Arc<Rules>,
    cursors: BTreeMap<String, StationCursor>,
}

const INDEX: &str = "reconcile";

impl Reconciler {
    /// The live reconciler of a hub store.
    pub fn open(
        store: &WitnessStore,
        rules: std::sync::Arc<Rules>,
    ) -> Result<Self, ReconcileError> {
        Self::over(store.index(INDEX)?, rules)
    }

    /// A reconciler over a scratch index (a rebuild, a test).
    pub fn scratch(rules: std::sync::Arc<Rules>) -> Result<Self, ReconcileError> {
        Self::over(Index::temporary(INDEX)?, rules)
    }

    fn over(index: Index, rules: std::sync::Arc<Rules>) -> Result<Self, ReconcileError> {
        let mut cursors = BTreeMap::new();
        for kv in index.scan(&[keys::STATION]) {
            let (k, v) = kv?;
            let id = keys::take_lp(&k[1..])
                .map(|(s, _)| s.to_owned())
                .ok_or_else(|| corrupt("a station key"))?;
            let c: StationCursor =
                postcard::from_bytes(&v).map_err(|_| corrupt(&format!("station {id}")))?;
            cursors.insert(id, c);
        }
        Ok(Reconciler {
            index,
            rules,
            cursors,
        })
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// A reader of the index, for other threads (the API).
    pub fn lookup(&self) -> Lookup {
        Lookup {
            index: self.index.clone(),
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Records of `agent_id` applied so far.
    pub fn applied(&self, agent_id: &str) -> u64 {
        self.cursors.get(agent_id).map_or(0, |c| c.next_seq)
    }

    /// Records applied, over every station.
    pub fn records(&self) -> u64 {
        self.cursors.values().map(|c| c.next_seq).sum()
    }

    /// Stages the witnessed record `seq` of `agent_id`. Ok(false) for a record already applied
    /// (a duplicate delivery); a gap is an error, as the witness never stores one.
    pub fn apply(
        &self,
        pending: &mut Pending,
        agent_id: &str,
        seq: u64,
        bytes: &[u8],
    ) -> Result<bool, ReconcileError> {
        let cursor = match pending.cursors.get_mut(agent_id) {
            Some(c) => c,
            None => pending
                .cursors
                .entry(agent_id.to_owned())
                .or_insert_with(|| self.cursors.get(agent_id).cloned().unwrap_or_default()),
        };
        if seq < cursor.next_seq {
            return Ok(false);
        }
        if seq > cursor.next_seq {
            return Err(ReconcileError::Gap {
                agent_id: agent_id.into(),
                seq,
                expected: cursor.next_seq,
            });
        }
        let rec = Record::decode(bytes).map_err(|e| ReconcileError::Undecodable {
            agent_id: agent_id.into(),
            seq,
            message: e.to_string(),
        })?;
        cursor.next_seq += 1;
        let v = rec.v1();
        let proof = Proof {
            agent_id: agent_id.to_owned(),
            seq,
        };
        let (kind, place) = place(cursor, &v.body);
        let e = Entry {
            at: v.received_at,
            proof,
            kind,
        };
        pending.raised.extend(rules::station_sequence(
            &self.rules,
            &mut cursor.seq,
            &e,
            place.timeline.as_deref(),
        ));
        let value = entry_bytes(&e);
        let b = &mut pending.batch;
        if let (Some(uii), EntryKind::Result { .. }) = (&place.timeline, &e.kind) {
            if self.rules.qms_stations.contains(agent_id) {
                let k = keys::outbox(agent_id, seq);
                // Never again once made: after a rebuild, what was delivered stays delivered.
                if self.index.get(&k)?.is_none() {
                    let o = crate::qms::OutboxEntry::new(uii, &e);
                    b.insert(&k, &postcard::to_stdvec(&o).expect("an entry encodes"))?;
                    b.insert(&keys::pending(agent_id, seq), &[])?;
                }
            }
        }
        if let Some(uii) = &place.timeline {
            b.insert(&keys::timeline(uii, e.at, agent_id, seq), &value)?;
            pending.touched.insert(uii.clone());
            pending
                .entries
                .entry(uii.clone())
                .or_default()
                .push(e.clone());
            if let Some(sig) = rules::signature(&self.rules, &e) {
                b.insert(&keys::signature(&sig, uii, agent_id, seq), &[])?;
                pending.signatures.insert(sig);
                pending
                    .sigs
                    .push((sig, uii.clone(), agent_id.to_owned(), seq));
            }
        }
        if place.unbound {
            b.insert(&keys::unbound(e.at, agent_id, seq), &value)?;
        }
        if place.station {
            b.insert(&keys::event(agent_id, seq), &value)?;
        }
        Ok(true)
    }

    /// Judges what the staged records changed (routes, findings) and writes it all in one
    /// atomic batch, durable with the hub ledger's next sync. The findings newly raised or
    /// changed are returned.
    pub fn commit(&mut self, mut pending: Pending) -> Result<Vec<Finding>, ReconcileError> {
        let mut changed = Vec::new();
        for (id, c) in &pending.cursors {
            let v = postcard::to_stdvec(c).expect("a cursor encodes");
            pending.batch.insert(&keys::station(id), &v)?;
        }
        for f in std::mem::take(&mut pending.raised) {
            self.put_finding(&mut pending.batch, &f, &mut changed)?;
        }
        for uii in std::mem::take(&mut pending.touched) {
            let timeline = self.timeline_with(&uii, &pending)?;
            let (route, derived) = rules::judge(&self.rules, &uii, &timeline);
            let v = postcard::to_stdvec(&route).expect("a route state encodes");
            pending.batch.insert(&keys::route(&uii), &v)?;
            let mut old = std::collections::BTreeSet::new();
            for kv in self.index.scan(&keys::derived_prefix(&uii)) {
                let (k, _) = kv?;
                old.insert(k);
            }
            for f in &derived {
                old.remove(&keys::derived(&uii, &f.id));
                pending.batch.insert(&keys::derived(&uii, &f.id), &[])?;
                self.put_finding(&mut pending.batch, f, &mut changed)?;
            }
            // Findings the timeline no longer supports (an earlier record arrived late) go.
            for k in old {
                let id = std::str::from_utf8(&k[keys::derived_prefix(&uii).len()..])
                    .unwrap_or_default()
                    .to_owned();
                pending.batch.remove(&keys::finding(&id));
                pending.batch.remove(&k);
            }
        }
        for sig in std::mem::take(&mut pending.signatures) {
            // The group's first injectors in key order: enough for the first
            // `rules::MAX_IDENTICAL` of them and the ones this batch may push out of that window.
            let staged = pending.staged_signatures(&sig);
            let want = rules::MAX_IDENTICAL + staged.len() + 1;
            let mut members = Vec::new();
            let mut uiis = std::collections::BTreeSet::new();
            for kv in self.index.scan(&keys::signature_prefix(&sig)) {
                let (k, _) = kv?;
                let m = keys::parse_signature(&k).ok_or_else(|| corrupt("a signature key"))?;
                if uiis.len() >= want && !uiis.contains(&m.0) {
                    break;
                }
                uiis.insert(m.0.clone());
                members.push(m);
            }
            // Staged in this batch: not in the index yet.
            members.extend(staged);
            members.sort();
            members.dedup();
            let (raise, drop) = rules::identical(&self.rules, &sig, &members);
            for f in raise {
                self.put_finding(&mut pending.batch, &f, &mut changed)?;
            }
            for id in drop {
                pending.batch.remove(&keys::finding(&id));
            }
        }
        self.index.apply(std::mem::take(&mut pending.batch))?;
        self.cursors.extend(pending.cursors);
        Ok(changed)
    }

    fn put_finding(
        &self,
        b: &mut IndexBatch,
        f: &Finding,
        changed: &mut Vec<Finding>,
    ) -> Result<(), ReconcileError> {
        let v = postcard::to_stdvec(f).expect("a finding encodes");
        let k = keys::finding(&f.id);
        if self.index.get(&k)?.as_deref() != Some(&v[..]) {
            b.insert(&k, &v)?;
            changed.push(f.clone());
        }
        Ok(())
    }

    /// Applies every stored record of `agent_id` from the first not yet applied up to
    /// `witnessed` (what the witness holds; `u64::MAX` for all that is stored), in chunks, and
    /// commits.
    pub fn catch_up(
        &mut self,
        store: &WitnessStore,
        agent_id: &str,
        witnessed: u64,
    ) -> Result<Vec<Finding>, ReconcileError> {
        let mut changed = Vec::new();
        let ledger = store.open(agent_id)?;
        let mut from = self.applied(agent_id);
        while from < witnessed {
            let to = witnessed.min(from + 4096);
            let mut p = Pending::default();
            let mut n = 0;
            for item in ledger.reader().range(from..to) {
                let (seq, bytes) = item?;
                self.apply(&mut p, agent_id, seq, &bytes)?;
                n += 1;
            }
            changed.extend(self.commit(p)?);
            if n < to - from {
                // The end of what is stored (a rebuild asks for everything).
                break;
            }
            from = to;
        }
        Ok(changed)
    }

    /// The projection recomputed from every witnessed record in `store`, into a scratch index.
    pub fn rebuild(
        store: &WitnessStore,
        rules: std::sync::Arc<Rules>,
    ) -> Result<Reconciler, ReconcileError> {
        let mut r = Reconciler::scratch(rules)?;
        let mut ids = store.stations();
        ids.sort();
        for id in ids {
            r.catch_up(store, &id, u64::MAX)?;
        }
        Ok(r)
    }

    /// Whether the index claims more of a station than the witness holds: after a crash the
    /// database kept the reconciler's batch but not the records it came from.
    pub fn ahead_of(&self, agent_id: &str, witnessed: u64) -> bool {
        self.applied(agent_id) > witnessed
    }

    /// Starts the projection again from nothing (it is then caught up from the records). The
    /// QMS outbox stays: what was delivered stays delivered.
    pub fn reset(&mut self) -> Result<(), ReconcileError> {
        for tag in keys::DERIVED_TAGS {
            let mut b = IndexBatch::new();
            for kv in self.index.scan(&[tag]) {
                b.remove(&kv?.0);
            }
            self.index.apply(b)?;
        }
        self.cursors.clear();
        Ok(())
    }

    /// SHA-256 of the projection (the outbox left out): equal digests, equal timelines,
    /// station views, route states and findings.
    pub fn digest(&self) -> Result<Hash, ReconcileError> {
        Ok(Hash(self.index.digest_of(|k| {
            k.first().is_some_and(|t| keys::DERIVED_TAGS.contains(t))
        })?))
    }

    /// One injector's timeline, in time order.
    pub fn timeline(&self, uii: &str) -> Result<Vec<Entry>, ReconcileError> {
        self.lookup().timeline(uii)
    }

    fn timeline_with(&self, uii: &str, p: &Pending) -> Result<Vec<Entry>, ReconcileError> {
        let mut t = self.timeline(uii)?;
        t.extend(p.staged_timeline(uii));
        t.sort_by(|a, b| {
            (a.at, &a.proof.agent_id, a.proof.seq).cmp(&(b.at, &b.proof.agent_id, b.proof.seq))
        });
        t.dedup_by(|a, b| a.proof == b.proof);
        Ok(t)
    }

    pub fn route(&self, uii: &str) -> Result<Option<RouteState>, ReconcileError> {
        self.lookup().route(uii)
    }

    /// Every finding, in id order.
    pub fn findings(&self) -> Result<Vec<Finding>, ReconcileError> {
        self.lookup().findings().collect()
    }

    /// The whole projection, loaded from the index (for `reconcile`, the tests and small
    /// plants' exports: it holds everything in memory).
    pub fn view(&self) -> Result<Projection, ReconcileError> {
        let mut p = Projection::default();
        for kv in self.index.scan(&[keys::TIMELINE]) {
            let (k, v) = kv?;
            let uii = keys::take_lp(&k[1..])
                .map(|(s, _)| s.to_owned())
                .ok_or_else(|| corrupt("a timeline key"))?;
            p.injectors.entry(uii).or_default().push(decode_entry(&v)?);
        }
        p.unbound = read_entries(&self.index, &[keys::UNBOUND])?;
        for (id, c) in &self.cursors {
            p.stations.insert(
                id.clone(),
                StationView {
                    next_seq: c.next_seq,
                    current: c.current.clone(),
                    events: read_entries(&self.index, &keys::event_prefix(id))?,
                },
            );
        }
        for f in self.findings()? {
            p.findings.insert(f.id.clone(), f);
        }
        for uii in p.injectors.keys() {
            if let Some(r) = self.route(uii)? {
                p.routes.insert(uii.clone(), r);
            }
        }
        Ok(p)
    }
}

/// Reads the reconciler's index from any thread.
#[derive(Debug, Clone)]
pub struct Lookup {
    index: Index,
}

impl Lookup {
    /// One injector's timeline, in time order.
    pub fn timeline(&self, uii: &str) -> Result<Vec<Entry>, ReconcileError> {
        read_entries(&self.index, &keys::timeline_prefix(uii))
    }

    pub fn route(&self, uii: &str) -> Result<Option<RouteState>, ReconcileError> {
        match self.index.get(&keys::route(uii))? {
            Some(v) => Ok(Some(
                postcard::from_bytes(&v).map_err(|_| corrupt(&format!("the route of {uii}")))?,
            )),
            None => Ok(None),
        }
    }

    /// Every finding: those derived from the records in id order, then those the QMS gave
    /// rise to.
    pub fn findings(&self) -> impl Iterator<Item = Result<Finding, ReconcileError>> + '_ {
        self.index
            .scan(&[keys::FINDING])
            .chain(self.index.scan(&[keys::QMS_FINDING]))
            .map(|kv| {
                let (_, v) = kv?;
                postcard::from_bytes(&v).map_err(|_| corrupt("a finding"))
            })
    }

    /// Injectors whose UII contains `needle` (ASCII case-insensitive; the serial ends a UII),
    /// in UII order, at most `limit`; and whether more matched. One index seek per injector.
    pub fn search(
        &self,
        needle: &str,
        limit: usize,
    ) -> Result<(Vec<String>, bool), ReconcileError> {
        let needle = needle.to_ascii_uppercase();
        let mut out = Vec::new();
        let mut from = vec![keys::TIMELINE];
        loop {
            let Some(kv) = self.index.scan_from(&[keys::TIMELINE], &from).next() else {
                return Ok((out, false));
            };
            let (k, _) = kv?;
            let Some((uii, _)) = keys::take_lp(&k[1..]) else {
                return Err(corrupt("a timeline key"));
            };
            if uii.to_ascii_uppercase().contains(&needle) {
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push(uii.to_owned());
            }
            // Every key of this UII starts with its prefix: seek past them all.
            from = keys::timeline_prefix(uii);
            from.push(0xff);
            from.extend_from_slice(&[0xff; 8]);
        }
    }

    /// The index itself (the QMS worker keeps its outbox there).
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The QMS outbox entry of a result, if it has one.
    pub fn outbox(
        &self,
        agent_id: &str,
        seq: u64,
    ) -> Result<Option<crate::qms::OutboxEntry>, ReconcileError> {
        match self.index.get(&keys::outbox(agent_id, seq))? {
            Some(v) => Ok(Some(
                postcard::from_bytes(&v).map_err(|_| corrupt("an outbox entry"))?,
            )),
            None => Ok(None),
        }
    }

    pub fn finding(&self, id: &str) -> Result<Option<Finding>, ReconcileError> {
        match self.index.get(&keys::finding(id))? {
            Some(v) => Ok(Some(
                postcard::from_bytes(&v).map_err(|_| corrupt("a finding"))?,
            )),
            None => Ok(None),
        }
    }
}

impl Pending {
    fn staged_timeline(&self, uii: &str) -> Vec<Entry> {
        self.entries.get(uii).cloned().unwrap_or_default()
    }

    fn staged_signatures(&self, sig: &[u8; 32]) -> Vec<(String, String, u64)> {
        self.sigs
            .iter()
            .filter(|(s, ..)| s == sig)
            .map(|(_, u, a, q)| (u.clone(), a.clone(), *q))
            .collect()
    }
}

fn corrupt(what: &str) -> ReconcileError {
    ReconcileError::Corrupt { what: what.into() }
}

fn read_entries(index: &Index, prefix: &[u8]) -> Result<Vec<Entry>, ReconcileError> {
    index.scan(prefix).map(|kv| decode_entry(&kv?.1)).collect()
}

fn decode_entry(v: &[u8]) -> Result<Entry, ReconcileError> {
    postcard::from_bytes(v).map_err(|_| corrupt("an entry"))
}

/// An entry's stored form. An entry is never larger than the record it comes from (8 KiB at
/// most), but should one be, its place is kept with a note to read the record itself.
fn entry_bytes(e: &Entry) -> Vec<u8> {
    let v = postcard::to_stdvec(e).expect("an entry encodes");
    if v.len() <= PAGE_MAX_BYTES {
        return v;
    }
    let short = Entry {
        at: e.at,
        proof: e.proof.clone(),
        kind: EntryKind::Station {
            event: "entry too large to index: read the record".into(),
        },
    };
    postcard::to_stdvec(&short).expect("an entry encodes")
}

/// The reconciled view of every injector.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Projection {
    /// Timelines by UII, in (station clock, station, seq) order.
    pub injectors: BTreeMap<String, Vec<Entry>>,
    /// Results bound to no part, in the same order.
    pub unbound: Vec<Entry>,
    pub stations: BTreeMap<String, StationView>,
    pub routes: BTreeMap<String, RouteState>,
    pub findings: BTreeMap<String, Finding>,
}

impl Projection {
    /// Records applied, over every station.
    pub fn records(&self) -> u64 {
        self.stations.values().map(|s| s.next_seq).sum()
    }
}

/// Where an entry goes.
#[derive(Debug, Default)]
struct Place {
    timeline: Option<String>,
    unbound: bool,
    station: bool,
}

/// The entry a record makes and where it goes, moving the station's current part.
fn place(cursor: &mut StationCursor, body: &Body) -> (EntryKind, Place) {
    match body {
        Body::PartScanned(s) => place_scan(cursor, s),
        Body::InspectionResult(r) => place_result(r),
        Body::StationEvent(ev) => place_station_event(cursor, ev),
    }
}

/// A scan: the part's own mark makes it current at the station and starts (or continues) its
/// timeline; a trim-code or badge scan goes on the current part's timeline; a refused scan,
/// or one with no part current, stays on the station's list.
fn place_scan(cursor: &mut StationCursor, s: &PartScanned) -> (EntryKind, Place) {
    match (&s.outcome, s.role) {
        (ScanOutcome::Identified(id), ScanRole::Part) => {
            cursor.current = Some(id.uii.clone());
            let kind = EntryKind::Scan {
                role: s.role,
                value: None,
                identity: Some(identity_view(id)),
                rejected: None,
            };
            (
                kind,
                Place {
                    timeline: Some(id.uii.clone()),
                    ..Place::default()
                },
            )
        }
        (ScanOutcome::Rejected { code, .. }, role) => (
            EntryKind::Scan {
                role,
                value: None,
                identity: None,
                rejected: Some(code.clone()),
            },
            Place {
                station: true,
                ..Place::default()
            },
        ),
        (
            ScanOutcome::Identified(Identity { uii: value, .. }) | ScanOutcome::Value(value),
            role,
        ) => {
            let kind = EntryKind::Scan {
                role,
                value: Some(value.clone()),
                identity: None,
                rejected: None,
            };
            let place = match &cursor.current {
                Some(uii) => Place {
                    timeline: Some(uii.clone()),
                    ..Place::default()
                },
                None => Place {
                    station: true,
                    ..Place::default()
                },
            };
            (kind, place)
        }
    }
}

fn identity_view(id: &Identity) -> IdentityView {
    let attr = |n: &str| {
        id.attributes
            .iter()
            .find(|a| a.name == n)
            .map(|a| a.value.clone())
    };
    IdentityView {
        construct: id.construct.clone(),
        enterprise: attr("enterprise").or_else(|| rules::enterprise_of_uii(&id.uii)),
        part_number: attr("part_number").or_else(|| attr("current_part_number")),
        serial: attr("serial"),
    }
}

/// A result goes on its part's timeline, or on the unbound list when it has none.
fn place_result(r: &InspectionResult) -> (EntryKind, Place) {
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
    let kind = EntryKind::Result {
        source: r.source.clone(),
        device: r.device.clone(),
        device_result_id: r.device_result_id.clone(),
        test_plan: r
            .test_plan
            .as_ref()
            .map(|p| (p.id.clone(), p.revision.clone())),
        operator: r.operator.clone(),
        verdict: r.verdict,
        device_identifier_mismatch: mismatch,
        unbound_reason,
        characteristics,
    };
    let place = Place {
        unbound: uii.is_none(),
        timeline: uii.cloned(),
        station: false,
    };
    (kind, place)
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
fn place_station_event(cursor: &mut StationCursor, ev: &StationEvent) -> (EntryKind, Place) {
    let kind = match ev {
        StationEvent::Alarm(a) => EntryKind::Alarm {
            source: a.source.clone(),
            code: a.code.clone(),
            message: a.message.clone(),
        },
        StationEvent::ScanTimeout { .. } => EntryKind::ScanTimeout,
        StationEvent::Interlock(d) => {
            let (outcome, detail) = match &d.outcome {
                InterlockOutcome::Allowed { operation } => ("allowed", operation.clone()),
                InterlockOutcome::Refused { code, reason } => {
                    ("refused", format!("{code}: {reason}"))
                }
                InterlockOutcome::Unreachable { policy, detail } => {
                    ("unreachable", format!("{policy}: {detail}"))
                }
            };
            EntryKind::Interlock {
                outcome: outcome.into(),
                released: d.released,
                detail,
                hub_signed: d.answer.is_some(),
            }
        }
        other => EntryKind::Station {
            event: station_event_name(other).into(),
        },
    };
    let part = match ev {
        StationEvent::ScanTimeout { uii, .. } => {
            if cursor.current.as_deref() == Some(uii) {
                cursor.current = None;
            }
            Some(uii.clone())
        }
        // The decision names the part it is about, current or not.
        StationEvent::Interlock(d) => Some(d.uii.clone()),
        StationEvent::Started { .. } | StationEvent::Stopped { .. } => cursor.current.take(),
        _ => cursor.current.clone(),
    };
    (
        kind,
        Place {
            timeline: part,
            unbound: false,
            station: true,
        },
    )
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
        StationEvent::Interlock(_) => "interlock",
        StationEvent::Access(_) => "access",
        StationEvent::Triage(_) => "triage",
    }
}
