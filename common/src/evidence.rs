//! Evidence bundles: everything an auditor needs to check one injector's records without the
//! hub, in one JSON file.
//!
//! A bundle holds, for each station that recorded something about the injector:
//! - the station's last checkpoint the hub cosigned (a C2SP signed note carrying the station's
//!   Ed25519 signature and the hub's `cosignature/v1`);
//! - each of the injector's records from that station: its exact bytes (base64), its leaf hash,
//!   a readable copy of its body, and its RFC 9162 inclusion proof against that checkpoint.
//!
//! and a **manifest**: a C2SP signed note by the hub's key naming the injector, every station's
//! checkpoint (origin, size, root, verifier key) and every record (origin, seq, leaf hash). The
//! manifest is what makes the bundle complete: a record dropped from the bundle is still listed
//! in it, and the manifest cannot be changed without breaking the hub's signature.
//!
//! [`verify`] needs only the bundle and the keys the auditor trusts (at least the hub's): it
//! checks every signature, proof, leaf hash and readable body, and names the first thing wrong.
//! Everything it checks is standard (signed notes, cosignatures, RFC 9162 proofs), so any C2SP
//! or transparency-log tool can check the same bundle.
//!
//! Manifest text (one item per line, sorted by origin and seq):
//!
//! ```text
//! proofline-evidence/v1
//! uii <UII>
//! made <seconds since the Unix epoch, hub clock>
//! station <origin> <size> <base64 root> <station verifier key>
//! record <origin> <seq> <base64 leaf hash>
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::hash::{leaf_hash, Hash};
use crate::merkle::{verify_inclusion, ProofBuilder};
use crate::note::{Checkpoint, Note, NoteSigner, VerifierKey};
use crate::record::{
    Binding, Body, InterlockOutcome, Measured, Record, ScanOutcome, ScanRole, StationEvent, Verdict,
};
use crate::store::{Reader, StoreError};

/// The bundle's `format` and the manifest's first line.
pub const FORMAT: &str = "proofline-evidence/v1";
/// Largest bundle file [`verify`] reads.
pub const MAX_BUNDLE_BYTES: usize = 64 << 20;
/// Most records one bundle holds (the manifest must stay a note below 1 MiB).
pub const MAX_RECORDS: usize = 5000;
/// Longest UII a bundle names (the reconciler's own bound).
pub const MAX_UII_BYTES: usize = 64;

/// The file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    pub format: String,
    pub uii: String,
    /// The hub's cosignature verifier key, as `proofline-hub keygen` printed it.
    pub hub_key: String,
    /// The hub's signed manifest (a complete signed note).
    pub manifest: String,
    pub stations: Vec<StationEvidence>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StationEvidence {
    pub agent_id: String,
    pub origin: String,
    /// The station's verifier key, as `proofline-agent keygen` printed it.
    pub key: String,
    /// The station's checkpoint with its signature and the hub's cosignature.
    pub checkpoint: String,
    pub records: Vec<RecordEvidence>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordEvidence {
    pub seq: u64,
    pub leaf: Hash,
    /// Standard base64 of the exact record bytes: what is verified.
    pub record: String,
    /// The record's body, readable; checked against the bytes.
    pub body: serde_json::Value,
    /// RFC 9162 inclusion proof against the station's checkpoint, bottom first.
    pub proof: Vec<Hash>,
}

/// What a bundle was refused for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The file is not a bundle this verifier reads.
    #[error("not a readable evidence bundle: {0}")]
    Malformed(String),
    /// A key that signed the bundle is not one the auditor trusts.
    #[error("untrusted key: {0}")]
    Untrusted(String),
    /// A signature, proof, hash or readable copy does not check: the bundle was altered.
    #[error("{0}")]
    Tampered(String),
}

/// One record as [`verify`] proved it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvenRecord {
    pub seq: u64,
    pub received_at: i64,
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProvenStation {
    pub agent_id: String,
    pub origin: String,
    pub key: String,
    /// The key is in the trust file (otherwise the hub's signed manifest vouches for it).
    pub trusted_directly: bool,
    pub size: u64,
    pub root: Hash,
    /// When the hub cosigned the checkpoint, seconds since the Unix epoch.
    pub cosigned_at: u64,
    pub records: Vec<ProvenRecord>,
}

/// What a bundle proves.
#[derive(Debug, Clone, PartialEq)]
pub struct Proven {
    pub uii: String,
    pub hub_key: String,
    /// When the hub made the bundle, seconds since the Unix epoch.
    pub made: u64,
    pub stations: Vec<ProvenStation>,
}

impl Proven {
    pub fn records(&self) -> usize {
        self.stations.iter().map(|s| s.records.len()).sum()
    }
}

impl fmt::Display for Proven {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "injector {}: {} record(s) from {} station(s), every one the hub had witnessed at {} (manifest signed by {})",
            self.uii,
            self.records(),
            self.stations.len(),
            rfc3339(self.made as i64 * 1_000_000),
            self.hub_key
        )?;
        for s in &self.stations {
            writeln!(
                f,
                "station {} ({}): checkpoint size {} root {} signed by the station key {} ({}), cosigned by the hub at {}",
                s.agent_id,
                s.origin,
                s.size,
                s.root,
                s.key,
                if s.trusted_directly { "trusted" } else { "vouched for by the hub's manifest" },
                rfc3339(s.cosigned_at as i64 * 1_000_000)
            )?;
            for r in &s.records {
                writeln!(
                    f,
                    "  seq {} at {}: {} (included in the checkpoint)",
                    r.seq,
                    rfc3339(r.received_at),
                    r.summary
                )?;
            }
        }
        Ok(())
    }
}

/// A station's part of a bundle being made.
#[derive(Debug, Clone)]
pub struct StationInput {
    pub agent_id: String,
    pub key: VerifierKey,
    /// The station's last cosigned checkpoint note.
    pub checkpoint: String,
    pub reader: Reader,
    /// The injector's records at this station.
    pub seqs: Vec<u64>,
}

/// Why a bundle could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MakeError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Makes the bundle of `uii`: reads each station's ledger once up to its cosigned checkpoint to
/// build the proofs, signs the manifest with the hub's `signer`, and checks the result with
/// [`verify`] before returning it.
pub fn make(
    uii: &str,
    stations: Vec<StationInput>,
    signer: &NoteSigner,
    made: u64,
) -> Result<Bundle, MakeError> {
    let invalid = |m: String| MakeError::Invalid(m);
    check_uii(uii).map_err(invalid)?;
    let total: usize = stations.iter().map(|s| s.seqs.len()).sum();
    if total == 0 {
        return Err(invalid(format!("no witnessed records of injector {uii}")));
    }
    if total > MAX_RECORDS {
        return Err(invalid(format!(
            "injector {uii} has {total} records, more than a bundle holds ({MAX_RECORDS})"
        )));
    }
    let mut out = Vec::new();
    let mut manifest_stations = Vec::new();
    let mut manifest_records = Vec::new();
    for st in stations {
        if st.seqs.is_empty() {
            continue;
        }
        let note = Note::parse(&st.checkpoint)
            .map_err(|e| invalid(format!("{}: stored checkpoint: {e}", st.agent_id)))?;
        let cp = Checkpoint::parse(&note.text)
            .map_err(|e| invalid(format!("{}: stored checkpoint: {e}", st.agent_id)))?;
        let mut seqs = st.seqs.clone();
        seqs.sort_unstable();
        seqs.dedup();
        if let Some(&s) = seqs.iter().find(|&&s| s >= cp.size) {
            return Err(invalid(format!(
                "{} seq {s} is not yet covered by a cosigned checkpoint (size {})",
                st.agent_id, cp.size
            )));
        }
        let mut builder = ProofBuilder::new(cp.size, &seqs)
            .map_err(|e| invalid(format!("{}: {e}", st.agent_id)))?;
        let mut wanted: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for item in st.reader.range(0..cp.size) {
            let (seq, bytes) = item?;
            if seq != builder.fed() {
                return Err(invalid(format!(
                    "{}: record {} is missing from the witnessed ledger",
                    st.agent_id,
                    builder.fed()
                )));
            }
            builder.push(leaf_hash(&bytes));
            if seqs.binary_search(&seq).is_ok() {
                wanted.insert(seq, bytes);
            }
        }
        let proofs = builder.finish().map_err(|_| {
            invalid(format!(
                "{}: the witnessed ledger ends before its cosigned size {}",
                st.agent_id, cp.size
            ))
        })?;
        let mut records = Vec::with_capacity(proofs.len());
        for (seq, proof) in proofs {
            let bytes = &wanted[&seq];
            let rec = Record::decode(bytes)
                .map_err(|e| invalid(format!("{} seq {seq}: {e}", st.agent_id)))?;
            let leaf = leaf_hash(bytes);
            manifest_records.push(format!("record {} {seq} {}", cp.origin, B64.encode(leaf.0)));
            records.push(RecordEvidence {
                seq,
                leaf,
                record: B64.encode(bytes),
                body: serde_json::to_value(rec.body()).expect("bodies serialise"),
                proof,
            });
        }
        manifest_stations.push(format!(
            "station {} {} {} {}",
            cp.origin,
            cp.size,
            B64.encode(cp.root.0),
            st.key
        ));
        out.push(StationEvidence {
            agent_id: st.agent_id,
            origin: cp.origin,
            key: st.key.to_string(),
            checkpoint: st.checkpoint,
            records,
        });
    }
    let mut text = format!("{FORMAT}\nuii {uii}\nmade {made}\n");
    for l in manifest_stations.iter().chain(&manifest_records) {
        text.push_str(l);
        text.push('\n');
    }
    let mut note = Note::new(&text).map_err(|e| invalid(format!("manifest: {e}")))?;
    note.push(
        signer
            .sign(&note.text)
            .map_err(|e| invalid(format!("manifest: {e}")))?,
    );
    let bundle = Bundle {
        format: FORMAT.into(),
        uii: uii.into(),
        hub_key: signer.cosignature_verifier().to_string(),
        manifest: note.to_string(),
        stations: out,
    };
    verify(&bundle, &[signer.cosignature_verifier()]).map_err(|e| {
        invalid(format!(
            "the bundle made does not verify ({e}); the hub's stored state is inconsistent"
        ))
    })?;
    Ok(bundle)
}

fn check_uii(uii: &str) -> Result<(), String> {
    if uii.is_empty() || uii.len() > MAX_UII_BYTES || !uii.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "UII {uii:?} must be 1 to {MAX_UII_BYTES} printable ASCII characters without spaces"
        ));
    }
    Ok(())
}

/// Reads a trust file: one verifier key per line (`<name>+<key id>+<base64>`); blank lines and
/// lines starting with `#` are skipped.
pub fn parse_trust(text: &str) -> Result<Vec<VerifierKey>, String> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        keys.push(VerifierKey::parse(l).map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    if keys.is_empty() {
        return Err("no verifier key in the trust file".into());
    }
    Ok(keys)
}

/// Reads a bundle file's bytes.
pub fn parse(bytes: &[u8]) -> Result<Bundle, Refused> {
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(Refused::Malformed(format!(
            "{} bytes, larger than {} MiB",
            bytes.len(),
            MAX_BUNDLE_BYTES >> 20
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| Refused::Malformed(e.to_string()))
}

struct Manifest {
    uii: String,
    made: u64,
    /// origin → (size, root, key)
    stations: BTreeMap<String, (u64, Hash, String)>,
    records: BTreeSet<(String, u64, Hash)>,
}

fn parse_manifest(text: &str) -> Result<Manifest, String> {
    let mut lines = text.lines();
    if lines.next() != Some(FORMAT) {
        return Err(format!("it does not start with {FORMAT}"));
    }
    let uii = lines
        .next()
        .and_then(|l| l.strip_prefix("uii "))
        .ok_or("no uii line")?
        .to_owned();
    let made = lines
        .next()
        .and_then(|l| l.strip_prefix("made "))
        .and_then(|t| t.parse().ok())
        .ok_or("no made line")?;
    let hash = |s: &str| {
        B64.decode(s)
            .ok()
            .and_then(|b| Hash::from_slice(&b))
            .ok_or_else(|| format!("{s:?} is not a base64 hash"))
    };
    let mut m = Manifest {
        uii,
        made,
        stations: BTreeMap::new(),
        records: BTreeSet::new(),
    };
    for l in lines {
        let f: Vec<&str> = l.split(' ').collect();
        match f.as_slice() {
            ["station", origin, size, root, key] => {
                let size = size.parse().map_err(|_| format!("bad size in {l:?}"))?;
                m.stations
                    .insert((*origin).into(), (size, hash(root)?, (*key).into()));
            }
            ["record", origin, seq, leaf] => {
                let seq = seq.parse().map_err(|_| format!("bad seq in {l:?}"))?;
                if !m.records.insert(((*origin).into(), seq, hash(leaf)?)) {
                    return Err(format!("{l:?} is listed twice"));
                }
            }
            _ => return Err(format!("unexpected line {l:?}")),
        }
    }
    Ok(m)
}

/// Checks `bundle` with the keys the auditor trusts; `trust` must hold the hub's key. Station
/// keys in `trust` must match the bundle's; a station key not in `trust` is accepted on the hub's
/// signed word (the manifest names it) and reported so.
pub fn verify(bundle: &Bundle, trust: &[VerifierKey]) -> Result<Proven, Refused> {
    use Refused::{Malformed, Tampered, Untrusted};
    if bundle.format != FORMAT {
        return Err(Malformed(format!(
            "format {:?}, expected {FORMAT}",
            bundle.format
        )));
    }
    let hub =
        VerifierKey::parse(&bundle.hub_key).map_err(|e| Malformed(format!("hub_key: {e}")))?;
    match trust.iter().find(|k| k.name() == hub.name()) {
        Some(t) if t.same_key(&hub) => {}
        Some(t) => {
            return Err(Untrusted(format!(
                "the bundle names the hub key {hub}, but the trust file holds {t} for {}",
                hub.name()
            )))
        }
        None => {
            return Err(Untrusted(format!(
                "the bundle's hub key {hub} is not in the trust file"
            )))
        }
    }
    let manifest_note =
        Note::parse(&bundle.manifest).map_err(|e| Malformed(format!("manifest: {e}")))?;
    hub.as_note_verifier().verify(&manifest_note).map_err(|e| {
        Tampered(format!(
            "the hub's signature on the manifest does not verify: {e}"
        ))
    })?;
    let manifest =
        parse_manifest(&manifest_note.text).map_err(|e| Malformed(format!("manifest: {e}")))?;
    if manifest.uii != bundle.uii {
        return Err(Tampered(format!(
            "the bundle says injector {:?} but the hub's manifest is about {:?}",
            bundle.uii, manifest.uii
        )));
    }
    let mut seen_stations = BTreeSet::new();
    let mut seen_records = BTreeSet::new();
    let mut stations = Vec::new();
    for st in &bundle.stations {
        let who = &st.agent_id;
        if !seen_stations.insert(st.origin.clone()) {
            return Err(Tampered(format!("station {} appears twice", st.origin)));
        }
        let Some((m_size, m_root, m_key)) = manifest.stations.get(&st.origin) else {
            return Err(Tampered(format!(
                "station {} is not in the hub's manifest",
                st.origin
            )));
        };
        if &st.key != m_key {
            return Err(Tampered(format!(
                "{who}: the station key {} is not the one the hub's manifest names ({m_key})",
                st.key
            )));
        }
        let key = VerifierKey::parse(&st.key).map_err(|e| Malformed(format!("{who}: key: {e}")))?;
        if key.name() != st.origin {
            return Err(Tampered(format!(
                "{who}: key {key} is not named for the station's origin {}",
                st.origin
            )));
        }
        let trusted_directly = match trust.iter().find(|k| k.name() == key.name()) {
            Some(t) if t.same_key(&key) => true,
            Some(t) => {
                return Err(Untrusted(format!(
                    "{who}: the bundle names the station key {key}, but the trust file holds {t}"
                )))
            }
            None => false,
        };
        let (cp, note) = Checkpoint::open(&st.checkpoint, &key).map_err(|e| {
            Tampered(format!(
                "{who}: the station's signature on its checkpoint: {e}"
            ))
        })?;
        let cosigned_at = hub.verify_cosignature(&note).map_err(|e| {
            Tampered(format!(
                "{who}: the hub's cosignature on the checkpoint: {e}"
            ))
        })?;
        if cp.origin != st.origin {
            return Err(Tampered(format!(
                "{who}: the checkpoint is for {}, not {}",
                cp.origin, st.origin
            )));
        }
        if cp.size != *m_size || cp.root != *m_root {
            return Err(Tampered(format!(
                "{who}: the checkpoint (size {}) is not the one the hub's manifest names (size {m_size})",
                cp.size
            )));
        }
        let mut records = Vec::new();
        for r in &st.records {
            let key = RecordKey {
                who,
                origin: &st.origin,
                uii: &bundle.uii,
            };
            records.push(verify_record(key, r, &cp, &manifest, &mut seen_records)?);
        }
        stations.push(ProvenStation {
            agent_id: st.agent_id.clone(),
            origin: st.origin.clone(),
            key: st.key.clone(),
            trusted_directly,
            size: cp.size,
            root: cp.root,
            cosigned_at,
            records,
        });
    }
    if let Some((o, seq, _)) = manifest.records.difference(&seen_records).next() {
        return Err(Tampered(format!(
            "{o} seq {seq} is listed in the hub's manifest but missing from the bundle (a record was dropped)"
        )));
    }
    if let Some(o) = manifest
        .stations
        .keys()
        .find(|o| !seen_stations.contains(*o))
    {
        return Err(Tampered(format!(
            "station {o} is listed in the hub's manifest but missing from the bundle"
        )));
    }
    Ok(Proven {
        uii: bundle.uii.clone(),
        hub_key: bundle.hub_key.clone(),
        made: manifest.made,
        stations,
    })
}

/// Where a record of a bundle belongs: its station and the injector the bundle is about.
#[derive(Clone, Copy)]
struct RecordKey<'a> {
    who: &'a str,
    origin: &'a str,
    uii: &'a str,
}

/// One record of a bundle: its bytes give its leaf hash, it is listed in the manifest (once),
/// its proof leads to `cp`, its readable body is its bytes', and it is about the bundle's
/// injector.
fn verify_record(
    key: RecordKey<'_>,
    r: &RecordEvidence,
    cp: &Checkpoint,
    manifest: &Manifest,
    seen_records: &mut BTreeSet<(String, u64, Hash)>,
) -> Result<ProvenRecord, Refused> {
    use Refused::{Malformed, Tampered};
    let RecordKey { who, origin, uii } = key;
    let at = format!("{who} seq {}", r.seq);
    let bytes = B64
        .decode(&r.record)
        .map_err(|_| Malformed(format!("{at}: the record is not base64")))?;
    let leaf = leaf_hash(&bytes);
    if leaf != r.leaf {
        return Err(Tampered(format!(
            "{at}: the leaf hash does not match the record bytes (the record was changed)"
        )));
    }
    if !seen_records.insert((origin.to_owned(), r.seq, leaf)) {
        return Err(Tampered(format!("{at} appears twice")));
    }
    if !manifest.records.contains(&(origin.to_owned(), r.seq, leaf)) {
        return Err(Tampered(format!(
            "{at} (leaf {leaf}) is not in the hub's manifest"
        )));
    }
    verify_inclusion(r.seq, cp.size, &leaf, &r.proof, &cp.root).map_err(|e| {
        Tampered(format!(
            "{at}: the inclusion proof does not lead to the checkpoint (size {}): {e}",
            cp.size
        ))
    })?;
    let rec = Record::decode(&bytes)
        .map_err(|e| Tampered(format!("{at}: the record does not decode: {e}")))?;
    let v1 = rec.v1();
    if v1.origin != origin || v1.seq != r.seq {
        return Err(Tampered(format!(
            "{at}: the record says {} seq {}",
            v1.origin, v1.seq
        )));
    }
    let signed_view: serde_json::Value = serde_json::to_string(rec.body())
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| Malformed(format!("{at}: the body does not render")))?;
    if signed_view != r.body {
        return Err(Tampered(format!(
            "{at}: the readable body differs from the signed record bytes (a value was changed)"
        )));
    }
    if let Some(u) = body_uii(rec.body()) {
        if u != uii {
            return Err(Tampered(format!("{at} is about injector {u}, not {}", uii)));
        }
    }
    Ok(ProvenRecord {
        seq: r.seq,
        received_at: v1.received_at,
        summary: summary(rec.body()),
    })
}

/// The injector a record is about, when it names one.
pub fn body_uii(body: &Body) -> Option<&str> {
    match body {
        Body::PartScanned(p) => match &p.outcome {
            ScanOutcome::Identified(id) if p.role == ScanRole::Part => Some(&id.uii),
            _ => None,
        },
        Body::InspectionResult(r) => r.binding.uii(),
        Body::StationEvent(StationEvent::Interlock(d)) => Some(&d.uii),
        Body::StationEvent(StationEvent::ScanTimeout { uii, .. }) => Some(uii),
        Body::StationEvent(_) => None,
    }
}

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Ok => "OK",
        Verdict::Nok => "NOK",
        Verdict::NotEvaluated => "not evaluated",
    }
}

/// One line saying what a record is, for people.
pub fn summary(body: &Body) -> String {
    match body {
        Body::PartScanned(p) => match &p.outcome {
            ScanOutcome::Identified(id) => {
                format!(
                    "{:?} scan on {}: {} (construct {})",
                    p.role, p.source, id.uii, id.construct
                )
            }
            ScanOutcome::Value(v) => format!("{:?} scan on {}: {v}", p.role, p.source),
            ScanOutcome::Rejected { code, .. } => {
                format!("{:?} scan on {} refused: {code}", p.role, p.source)
            }
        },
        Body::InspectionResult(r) => {
            let plan = r
                .test_plan
                .as_ref()
                .map(|t| format!(", test plan {} rev {}", t.id, t.revision))
                .unwrap_or_default();
            let bound = match &r.binding {
                Binding::Bound { .. } => String::new(),
                Binding::Mismatch {
                    device_identifier, ..
                } => format!(" (the device reported {device_identifier})"),
                Binding::Unbound { reason } => format!(" (unbound: {reason:?})"),
            };
            let chars: Vec<String> = r
                .characteristics
                .iter()
                .map(|c| {
                    let v = match &c.measured {
                        Measured::Value { value, unit } => format!("{value} {unit}"),
                        Measured::Attribute { ok } => if *ok { "OK" } else { "NOK" }.into(),
                    };
                    let lim = match (c.lower, c.upper) {
                        (Some(l), Some(u)) => format!(" [{l}, {u}]"),
                        (Some(l), None) => format!(" [≥ {l}]"),
                        (None, Some(u)) => format!(" [≤ {u}]"),
                        (None, None) => String::new(),
                    };
                    format!("{} {v}{lim} {}", c.name, verdict(c.verdict))
                })
                .collect();
            format!(
                "result {} from {} on {}{plan}{bound}: {}",
                verdict(r.verdict),
                r.device,
                r.source,
                chars.join("; ")
            )
        }
        Body::StationEvent(StationEvent::Interlock(d)) => {
            let what = match &d.outcome {
                InterlockOutcome::Allowed { operation } => format!("allowed for {operation}"),
                InterlockOutcome::Refused { code, .. } => format!("refused ({code})"),
                InterlockOutcome::Unreachable { policy, .. } => {
                    format!("hub unreachable, policy {policy}")
                }
            };
            format!(
                "route interlock {what}: bench {}",
                if d.released { "released" } else { "held" }
            )
        }
        Body::StationEvent(StationEvent::ScanTimeout { .. }) => {
            "the scanned part was not tested in time".into()
        }
        Body::StationEvent(e) => format!("station event {e:?}"),
    }
}

/// RFC 3339 UTC, from microseconds since the Unix epoch.
pub fn rfc3339(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{micros} µs since the Unix epoch"))
}
