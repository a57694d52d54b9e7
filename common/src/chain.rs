//! Chain verification shared by the store, offline export checks and the hub.
//!
//! [`ChainState`] walks records in seq order and checks, for each: it decodes exactly, it carries
//! the ledger's origin and the expected seq, and its `prev` is the leaf hash of the record before
//! (or the genesis hash). It keeps the Merkle frontier so the walk ends with the tree root.
//! [`Fault`] is the classified result every verifier reports: the first bad seq and what is wrong.

use std::fmt;

use crate::hash::{genesis_prev, leaf_hash, Hash};
use crate::merkle::Frontier;
use crate::record::Record;

/// What is wrong with a ledger or an export, at which seq.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Fault {
    /// First bad seq, when the fault has one.
    pub seq: Option<u64>,
    pub kind: FaultKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// The record's bytes are not what was written.
    Modified(String),
    /// The record is absent.
    Missing,
    /// The record is present but out of order.
    Reordered(String),
    /// The same seq appears twice.
    Duplicate,
    /// A record of another ledger was spliced in.
    ForeignOrigin(String),
    /// The ledger ends at `end` records, below `size` that a checkpoint or the head commits to.
    Truncated { end: u64, size: u64 },
    /// Every link holds but the tree root differs from the checkpoint's: records were rewritten.
    RootMismatch { size: u64 },
    /// The checkpoint's signature does not hold.
    BadSignature(String),
    /// The checkpoint belongs to another ledger.
    WrongCheckpoint(String),
}

impl FaultKind {
    /// Short stable name used in messages and by tests.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Modified(_) => "modified",
            FaultKind::Missing => "missing",
            FaultKind::Reordered(_) => "reordered",
            FaultKind::Duplicate => "duplicate",
            FaultKind::ForeignOrigin(_) => "foreign origin",
            FaultKind::Truncated { .. } => "truncated",
            FaultKind::RootMismatch { .. } => "root mismatch",
            FaultKind::BadSignature(_) => "bad signature",
            FaultKind::WrongCheckpoint(_) => "wrong checkpoint",
        }
    }
}

impl Fault {
    pub fn at(seq: u64, kind: FaultKind) -> Self {
        Fault {
            seq: Some(seq),
            kind,
        }
    }

    pub fn general(kind: FaultKind) -> Self {
        Fault { seq: None, kind }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(seq) = self.seq {
            write!(f, "seq {seq}: ")?;
        }
        f.write_str(self.kind.name())?;
        match &self.kind {
            FaultKind::Modified(d) | FaultKind::Reordered(d) | FaultKind::BadSignature(d) => {
                write!(f, ": {d}")
            }
            FaultKind::ForeignOrigin(o) => write!(f, ": record belongs to {o:?}"),
            FaultKind::WrongCheckpoint(d) => write!(f, ": {d}"),
            FaultKind::Truncated { end, size } => write!(
                f,
                ": ledger ends after {end} records but {size} were committed to"
            ),
            FaultKind::RootMismatch { size } => write!(
                f,
                ": the chain links hold but the Merkle root over {size} records differs; records were rewritten"
            ),
            FaultKind::Missing | FaultKind::Duplicate => Ok(()),
        }
    }
}

/// Why one record does not extend the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// The bytes do not decode, or a field was altered in place.
    Altered(String),
    ForeignOrigin(String),
    WrongSeq(u64),
    /// `prev` is not the leaf hash of the record before.
    BrokenLink,
}

impl LinkError {
    /// The one classification of a broken link, used by every verifier (the store on open,
    /// offline export checks, the hub's witness and its `ledger verify`): the record found at
    /// `seq` does not extend the chain. `reordered_below`: seqs below it exist in this ledger, so
    /// a record claiming one of them is out of order rather than altered (None when unknown).
    pub fn fault_at(self, seq: u64, reordered_below: Option<u64>) -> Fault {
        match self {
            LinkError::Altered(d) => Fault::at(seq, FaultKind::Modified(d)),
            LinkError::ForeignOrigin(o) => Fault::at(seq, FaultKind::ForeignOrigin(o)),
            LinkError::WrongSeq(found) if reordered_below.is_some_and(|b| found < b) => Fault::at(
                seq,
                FaultKind::Reordered(format!("the record stored at seq {seq} is seq {found}")),
            ),
            LinkError::WrongSeq(found) => Fault::at(
                seq,
                FaultKind::Modified(format!("stored at seq {seq} but says seq {found}")),
            ),
            // The link is checked on the successor: the record before it is the one whose bytes
            // no longer hash to what was chained.
            LinkError::BrokenLink => Fault::at(
                seq.saturating_sub(1),
                FaultKind::Modified(format!("its hash is not the prev of seq {seq}")),
            ),
        }
    }
}

/// Running state of a chain walk.
#[derive(Debug, Clone)]
pub struct ChainState {
    origin: String,
    prev: Hash,
    frontier: Frontier,
}

impl ChainState {
    pub fn genesis(origin: &str) -> Self {
        ChainState {
            origin: origin.to_owned(),
            prev: genesis_prev(origin),
            frontier: Frontier::new(),
        }
    }

    /// Resumes at a known point: the frontier of the first `frontier.size()` records and the
    /// leaf hash of the last of them.
    pub fn resume(origin: &str, frontier: Frontier, last_leaf: Hash) -> Self {
        let prev = if frontier.size() == 0 {
            genesis_prev(origin)
        } else {
            last_leaf
        };
        ChainState {
            origin: origin.to_owned(),
            prev,
            frontier,
        }
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Number of records walked (including those before a resume point).
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// Leaf hash of the last record, or the genesis hash.
    pub fn last_leaf(&self) -> Hash {
        self.prev
    }

    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// Advances past a record the caller built from this state itself (the writer's hot path:
    /// no need to decode what was just encoded).
    pub(crate) fn extend_own(&mut self, leaf: Hash) {
        self.prev = leaf;
        self.frontier.push(leaf);
    }

    /// Checks that `bytes` is the next record and, if so, advances past it.
    pub fn check(&mut self, bytes: &[u8]) -> Result<(Record, Hash), LinkError> {
        let rec = Record::decode(bytes).map_err(|e| LinkError::Altered(e.to_string()))?;
        let r = rec.v1();
        if r.origin != self.origin {
            // One of ours with its origin field edited still links into this chain; a record
            // of another ledger does not.
            if r.seq == self.size() && r.prev == self.prev {
                return Err(LinkError::Altered(format!(
                    "origin field altered to {:?}",
                    r.origin
                )));
            }
            return Err(LinkError::ForeignOrigin(r.origin.clone()));
        }
        if r.seq != self.size() {
            return Err(LinkError::WrongSeq(r.seq));
        }
        if r.prev != self.prev {
            return Err(LinkError::BrokenLink);
        }
        let leaf = leaf_hash(bytes);
        self.prev = leaf;
        self.frontier.push(leaf);
        Ok((rec, leaf))
    }
}
