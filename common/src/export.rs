//! Ledger exports: one JSON object per line, `{"seq", "leaf", "record", "body"}`, and their
//! offline verification against a signed checkpoint.
//!
//! `record` is standard base64 of the exact stored bytes: it is what gets verified. `leaf` (hex)
//! and `body` (decoded) are for people and tools reading the export; `seq` and `leaf` are checked
//! against the record bytes so that an edit to either is caught as well.
//!
//! [`verify_export`] reads the export once, in order, and stops at the first fault, naming the
//! seq and the kind: modified, missing, reordered, duplicate, foreign origin, truncated below the
//! checkpoint size, root mismatch or bad signature.

use std::collections::HashSet;
use std::io::BufRead;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::chain::{ChainState, Fault, FaultKind, LinkError};
use crate::hash::{leaf_hash, Hash};
use crate::note::{Checkpoint, NoteError, VerifierKey};
use crate::record::{Body, Record};

/// Lines read ahead to tell a reordered record from a missing one.
const REORDER_LOOKAHEAD: usize = 100_000;

#[derive(Debug, Serialize)]
struct LineOut<'a> {
    seq: u64,
    leaf: Hash,
    record: String,
    body: &'a Body,
}

#[derive(Debug, Deserialize)]
struct LineIn {
    seq: u64,
    leaf: String,
    record: String,
}

/// Renders one export line (without the newline). Fails only if the bytes are not a record.
pub fn export_line(seq: u64, bytes: &[u8]) -> Result<String, crate::record::DecodeError> {
    let rec = Record::decode(bytes)?;
    let line = LineOut {
        seq,
        leaf: leaf_hash(bytes),
        record: B64.encode(bytes),
        body: rec.body(),
    };
    Ok(serde_json::to_string(&line).expect("export lines serialise"))
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("checkpoint: {0}")]
    Checkpoint(NoteError),
    #[error("line {line}: {detail}")]
    BadLine { line: usize, detail: String },
    #[error("reading export: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Fault(Fault),
}

impl ExportError {
    pub fn fault(&self) -> Option<&Fault> {
        match self {
            ExportError::Fault(f) => Some(f),
            _ => None,
        }
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    pub checkpoint: Checkpoint,
    /// Records read from the export.
    pub records: u64,
    /// Records beyond the checkpoint size: chained, but not covered by the signature.
    pub beyond_checkpoint: u64,
}

struct Parsed {
    seq_field: u64,
    leaf_field: String,
    bytes: Vec<u8>,
}

fn parse_line(line_no: usize, line: &str) -> Result<Parsed, ExportError> {
    let l: LineIn = serde_json::from_str(line).map_err(|e| ExportError::BadLine {
        line: line_no,
        detail: format!("not an export record line: {e}"),
    })?;
    let bytes = B64
        .decode(l.record.as_bytes())
        .map_err(|e| ExportError::BadLine {
            line: line_no,
            detail: format!("\"record\" is not base64: {e}"),
        })?;
    Ok(Parsed {
        seq_field: l.seq,
        leaf_field: l.leaf,
        bytes,
    })
}

/// Seq a line claims: the record's own seq when it decodes, else the line's `seq` field.
fn claimed_seq(p: &Parsed) -> u64 {
    Record::decode(&p.bytes)
        .map(|r| r.seq())
        .unwrap_or(p.seq_field)
}

/// The checkpoint of an export, its signature checked.
fn open_checkpoint(checkpoint_note: &str, key: &VerifierKey) -> Result<Checkpoint, ExportError> {
    let note = crate::note::Note::parse(checkpoint_note).map_err(ExportError::Checkpoint)?;
    match key.verify(&note) {
        Ok(()) => {}
        Err(e @ (NoteError::BadSignature { .. } | NoteError::NotSigned { .. })) => {
            return Err(ExportError::Fault(Fault::general(FaultKind::BadSignature(
                e.to_string(),
            ))))
        }
        Err(e) => return Err(ExportError::Checkpoint(e)),
    }
    Checkpoint::parse(&note.text).map_err(ExportError::Checkpoint)
}

/// A line holds `seq` where `expected` should be: a duplicate, the expected record further down
/// (reordered), or no expected record at all (missing).
fn out_of_place<I, E>(
    expected: u64,
    seq: u64,
    line_no: usize,
    seen: &HashSet<u64>,
    lines: &mut I,
) -> ExportError
where
    I: Iterator<Item = (usize, Result<String, E>)>,
{
    let fault = |seq: u64, kind| ExportError::Fault(Fault::at(seq, kind));
    if seen.contains(&seq) {
        return fault(seq, FaultKind::Duplicate);
    }
    for (j, later) in lines.take(REORDER_LOOKAHEAD) {
        let Ok(later) = later else { break };
        let Ok(q) = parse_line(j + 1, &later) else {
            continue;
        };
        if claimed_seq(&q) == expected {
            return fault(
                expected,
                FaultKind::Reordered(format!(
                    "found on line {} after seq {seq} on line {line_no}",
                    j + 1
                )),
            );
        }
    }
    fault(expected, FaultKind::Missing)
}

/// Verifies an export (JSON lines from seq 0) against a signed checkpoint note and the verifier
/// key of the ledger's signer.
pub fn verify_export<R: BufRead>(
    export: R,
    checkpoint_note: &str,
    key: &VerifierKey,
) -> Result<ExportReport, ExportError> {
    let cp = open_checkpoint(checkpoint_note, key)?;
    let fault = |seq: u64, kind| ExportError::Fault(Fault::at(seq, kind));

    let mut chain = ChainState::genesis(&cp.origin);
    let mut root_at_size = (cp.size == 0).then(|| chain.root());
    let mut seen: HashSet<u64> = HashSet::new();
    let mut lines = export.lines().enumerate();
    while let Some((idx, line)) = lines.next() {
        let line_no = idx + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let p = parse_line(line_no, &line)?;
        let expected = chain.size();
        let rec = match Record::decode(&p.bytes) {
            Ok(r) => r,
            Err(e) => {
                return Err(fault(
                    expected,
                    FaultKind::Modified(format!("line {line_no}: {e}")),
                ))
            }
        };
        if rec.origin() != cp.origin {
            // One of ours with an edited origin still links into the chain; another ledger's
            // record does not.
            return Err(match chain.clone().check(&p.bytes) {
                Err(LinkError::Altered(d)) => fault(
                    expected,
                    FaultKind::Modified(format!("line {line_no}: {d}")),
                ),
                _ => fault(expected, FaultKind::ForeignOrigin(rec.origin().to_owned())),
            });
        }
        let seq = rec.seq();
        if seq != expected {
            return Err(out_of_place(expected, seq, line_no, &seen, &mut lines));
        }
        let leaf = leaf_hash(&p.bytes);
        if p.leaf_field != leaf.to_hex() {
            return Err(fault(
                seq,
                FaultKind::Modified(format!(
                    "line {line_no}: \"leaf\" does not match the record bytes"
                )),
            ));
        }
        if p.seq_field != seq {
            return Err(fault(
                seq,
                FaultKind::Modified(format!("line {line_no}: \"seq\" says {}", p.seq_field)),
            ));
        }
        if let Err(e) = chain.check(&p.bytes) {
            let mut f = e.fault_at(seq, None);
            if let FaultKind::Modified(d) = &mut f.kind {
                *d = format!("line {line_no}: {d}");
            }
            return Err(ExportError::Fault(f));
        }
        seen.insert(seq);
        if chain.size() == cp.size {
            root_at_size = Some(chain.root());
        }
    }
    let records = chain.size();
    let Some(root) = root_at_size else {
        return Err(fault(
            records,
            FaultKind::Truncated {
                end: records,
                size: cp.size,
            },
        ));
    };
    if root != cp.root {
        return Err(ExportError::Fault(Fault::general(
            FaultKind::RootMismatch { size: cp.size },
        )));
    }
    Ok(ExportReport {
        records,
        beyond_checkpoint: records - cp.size,
        checkpoint: cp,
    })
}
