//! The durable ledger store: one sled database per program behind a small API (DESIGN §3).
//!
//! Layout (one sled tree):
//! - `p` ‖ first seq (u64 BE) → a *page*: the exact bytes of consecutive records of one commit,
//!   each preceded by its length (LEB128). A commit writes whole new pages and never touches an
//!   earlier one; grouping records this way keeps sled's per-item cost out of the hot path;
//! - `m.format`, `m.origin`, `m.boot` → format version, ledger origin, boot counter;
//! - `m.head` → size and last leaf hash of the last *complete* commit, written after that
//!   commit's pages and before the flush, so it never covers a page that is not there;
//! - `m.cosigned` → the last cosigned checkpoint with the Merkle frontier at its size.
//!
//! Invariants:
//! - A commit is durable when [`Store::commit`] returns: the batch is applied, sled flushes, and
//!   the database's log file is fsynced (sled's own flush only calls `sync_file_range`, which
//!   flushes neither the disk cache nor the file size), and so is the ledger directory whenever
//!   its entries changed (sled's snapshot files are renamed and removed without it). Nothing
//!   downstream may be told "stored" before that.
//! - A writer's open makes the ledger's names durable: the `ledger/` directory in the data
//!   directory, sled's `db` and `conf` in it, and `conf`'s bytes (sled never fsyncs them), so a
//!   ledger created a moment before a power cut is still there after it.
//! - Records are contiguous from seq 0 (or from the pruning floor, a cosigned size) up to the head.
//! - Open = verify: the chain is walked from the last cosigned checkpoint (or genesis) to the head.
//!   Records beyond the head are a torn, never-acknowledged batch: a writer cuts them and records a
//!   `LedgerRepaired` event; anything else is a classified [`StoreError`] naming the seq.
//! - Every scan over pages (verification, [`Reader::range`], pruning) reads them through
//!   `page::Pages`, which keeps sled's cache trimmed while it scans: a full verification or a
//!   backlog read streams in bounded memory whatever the size of the ledger.
//! - Every value stays at most [`PAGE_MAX_BYTES`] (8 KiB): with 1 MiB segments sled's blob
//!   threshold is 256 KiB and a leaf node holds at most 17 items, so no record ever lands in a
//!   blob file that sled would not fsync.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::chain::{ChainState, Fault, FaultKind};
use crate::hash::{genesis_prev, leaf_hash, Hash};
use crate::merkle::Frontier;
use crate::note::Checkpoint;
use crate::origin::Origin;
use crate::record::{Body, StationEvent, MAX_RECORD_BYTES};

mod index;
mod open;
mod page;
mod prune;
mod reader;
mod witness;

pub use index::{Index, IndexBatch};
pub use page::PAGE_MAX_BYTES;
use page::{first_of_key, page_records, page_start, pkey, Pages, PAGE_TARGET_BYTES};
pub use reader::{Reader, RecordIter};
pub use witness::{WitnessStore, WitnessedLedger};

/// Bytes free for unprivileged writers on the file system holding `dir` (`statvfs`): what a
/// free-space reserve is checked against.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// Name of the sled directory inside a program's data directory.
pub const LEDGER_DIR: &str = "ledger";
const FORMAT_VERSION: u32 = 1;
/// More records than this beyond the committed head is not a torn batch but damage.
pub const MAX_TORN_RECORDS: u64 = 65_536;
const SEGMENT_SIZE: usize = 1 << 20;

const K_FORMAT: &[u8] = b"m.format";
const K_ORIGIN: &[u8] = b"m.origin";
const K_BOOT: &[u8] = b"m.boot";
const K_HEAD: &[u8] = b"m.head";
const K_COSIGNED: &[u8] = b"m.cosigned";
const K_FLOOR: &[u8] = b"m.floor";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct HeadMeta {
    size: u64,
    last_leaf: Hash,
}

/// The last checkpoint the hub cosigned, with what is needed to resume verification there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cosigned {
    /// The complete note: agent signature and hub cosignature.
    pub note: String,
    pub size: u64,
    pub root: Hash,
    pub last_leaf: Hash,
    pub frontier: Vec<Hash>,
}

/// Where the ledger starts after pruning: the records below `size` were removed; the frontier
/// and last leaf there let verification resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Floor {
    pub size: u64,
    pub last_leaf: Hash,
    pub frontier: Vec<Hash>,
}

/// What one pruning pass removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    pub records: u64,
    /// First seq still stored.
    pub floor: u64,
}

/// The ledger's current end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub size: u64,
    pub root: Hash,
    pub last_leaf: Hash,
}

/// One event to append; the store assigns origin, seq, boot and prev.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Agent clock when the event was received, UTC microseconds.
    pub received_at: i64,
    pub body: Body,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyScope {
    /// From the last cosigned checkpoint (or genesis when there is none) to the head.
    SinceCosigned,
    /// From genesis, checking the cosigned root on the way.
    Full,
}

#[derive(Debug, Clone)]
pub enum Access {
    /// Open (or create) for appending, as the ledger of `Origin`. Bumps the boot counter and
    /// repairs a torn tail.
    Write(Origin),
    /// Open an existing ledger to read and verify it; changes nothing.
    Read,
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub verify: VerifyScope,
    /// sled page cache. Small: this is an edge box, and the ledger is append-mostly.
    pub cache_capacity_bytes: u64,
    /// How long to wait for the ledger's lock before reporting it as in use.
    pub lock_wait: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            verify: VerifyScope::SinceCosigned,
            cache_capacity_bytes: 8 << 20,
            lock_wait: std::time::Duration::from_secs(2),
        }
    }
}

/// What opening found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    pub head: Head,
    pub boot: u32,
    /// Seq the verification started at.
    pub verified_from: u64,
    /// Records beyond the committed head (an incomplete batch).
    pub torn_records: u64,
    /// Whether the torn records were cut (write access only).
    pub repaired: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {} does not exist", .0.display())]
    NoDataDir(PathBuf),
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("no ledger in {}", .0.display())]
    NoLedger(PathBuf),
    #[error("ledger {} is in use by another process (is the agent running?)", .0.display())]
    Locked(PathBuf),
    #[error("{what} {}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("storage engine error in {}: {message}", .path.display())]
    Engine { path: PathBuf, message: String },
    #[error("ledger {} belongs to {ledger}, not {requested}", .path.display())]
    OriginMismatch {
        path: PathBuf,
        ledger: String,
        requested: String,
    },
    #[error("ledger {} has format version {found}; this build reads version {FORMAT_VERSION}", .path.display())]
    UnsupportedFormat { path: PathBuf, found: u32 },
    #[error("ledger metadata is damaged: {0}")]
    CorruptMeta(String),
    #[error("ledger verification failed: {0}")]
    Fault(Fault),
    #[error("record of {size} bytes exceeds the {MAX_RECORD_BYTES}-byte limit")]
    RecordTooLarge { size: usize },
    #[error(
        "the ledger writer stopped after a storage failure ({0}); restart to re-verify the ledger"
    )]
    Poisoned(String),
    #[error("the ledger writer has shut down")]
    Closed,
    #[error("cosigned checkpoint does not match the ledger: {0}")]
    CosignedMismatch(String),
}

impl StoreError {
    fn engine(path: &Path, e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                StoreError::Locked(path.to_owned())
            }
            sled::Error::Io(io) => StoreError::Io {
                what: "storage I/O error in",
                path: path.to_owned(),
                source: io,
            },
            other => StoreError::Engine {
                path: path.to_owned(),
                message: other.to_string(),
            },
        }
    }

    /// Whether the error is about the stored data rather than the environment.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            StoreError::Fault(_) | StoreError::CorruptMeta(_) | StoreError::Engine { .. }
        )
    }
}

/// The ledger of one program. Exactly one `Store` appends (the group-commit writer owns it);
/// others read through [`Reader`].
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    log: File,
    /// The ledger directory: sled creates, renames and removes its snapshot files in it, and a
    /// commit is durable only with those names durable too.
    dir: std::sync::Mutex<crate::durable::DirSync>,
    origin: Origin,
    boot: u32,
    chain: ChainState,
    cosigned: Option<Cosigned>,
    writable: bool,
}

/// Records being prepared for one commit.
#[derive(Debug)]
pub struct Staging {
    chain: ChainState,
    /// Pages of this commit: (first seq, framed records).
    pages: Vec<(u64, Vec<u8>)>,
    first: u64,
}

impl Staging {
    pub fn len(&self) -> u64 {
        self.chain.size() - self.first
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Store {
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn boot(&self) -> u32 {
        self.boot
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn head(&self) -> Head {
        Head {
            size: self.chain.size(),
            root: self.chain.root(),
            last_leaf: self.chain.last_leaf(),
        }
    }

    /// The Merkle frontier at the head.
    pub fn frontier(&self) -> &Frontier {
        self.chain.frontier()
    }

    pub fn cosigned(&self) -> Option<&Cosigned> {
        self.cosigned.as_ref()
    }

    pub fn reader(&self) -> Reader {
        Reader::for_tree(sled::Tree::clone(&self.db), self.path.clone())
    }

    /// Starts a commit at the current head.
    pub fn staging(&self) -> Staging {
        Staging {
            chain: self.chain.clone(),
            pages: Vec::new(),
            first: self.chain.size(),
        }
    }

    /// Adds `entries` to `st` as one all-or-nothing group and returns their seqs. On error
    /// nothing of this group is staged.
    pub fn stage(&self, st: &mut Staging, entries: &[Entry]) -> Result<Range<u64>, StoreError> {
        let start = st.chain.size();
        // Where this group starts, to take it back out if one of its records is refused.
        let mark = (st.pages.len(), st.pages.last().map_or(0, |(_, p)| p.len()));
        let mut chain = st.chain.clone();
        for e in entries {
            let seq = chain.size();
            if st
                .pages
                .last()
                .is_none_or(|(_, p)| p.len() >= PAGE_TARGET_BYTES)
            {
                st.pages
                    .push((seq, Vec::with_capacity(PAGE_TARGET_BYTES + 512)));
            }
            let page = &mut st.pages.last_mut().expect("a page is open").1;
            let at = page.len();
            page.extend_from_slice(&[0, 0]);
            crate::record::encode_v1_into(
                page,
                self.origin.as_str(),
                seq,
                self.boot,
                e.received_at,
                &chain.last_leaf(),
                &e.body,
            );
            let len = page.len() - at - 2;
            if len > MAX_RECORD_BYTES {
                st.pages.truncate(mark.0);
                if let Some((_, p)) = st.pages.last_mut() {
                    p.truncate(mark.1);
                }
                return Err(StoreError::RecordTooLarge { size: len });
            }
            page[at..at + 2].copy_from_slice(&(len as u16).to_le_bytes());
            chain.extend_own(leaf_hash(&page[at + 2..]));
            if page.len() > PAGE_TARGET_BYTES && at > 0 {
                // It went over the target: it opens the next page instead.
                let moved = page.split_off(at);
                st.pages.push((seq, moved));
            }
        }
        st.chain = chain;
        Ok(start..st.chain.size())
    }

    /// Applies the staged records and the new head atomically and makes them durable.
    pub fn commit(&mut self, st: Staging) -> Result<Head, StoreError> {
        if !self.writable {
            return Err(StoreError::Closed);
        }
        if st.first != self.chain.size() {
            return Err(StoreError::CorruptMeta(
                "staging does not start at the head".into(),
            ));
        }
        if st.is_empty() {
            return Ok(self.head());
        }
        let head = HeadMeta {
            size: st.chain.size(),
            last_leaf: st.chain.last_leaf(),
        };
        // Pages first, the head last. sled's log is written and recovered in order, so after a
        // crash the head is present only if every page before it is; pages without their head
        // are a torn tail that the next open cuts. (sled's own atomic batches cost a manifest
        // round per commit, about a third of the commit time.)
        for (first, page) in st.pages {
            self.db
                .insert(pkey(first), page)
                .map_err(|e| StoreError::engine(&self.path, e))?;
        }
        self.db
            .insert(K_HEAD, postcard::to_stdvec(&head).expect("head encodes"))
            .map_err(|e| StoreError::engine(&self.path, e))?;
        self.sync()?;
        self.chain = st.chain;
        Ok(self.head())
    }

    /// Appends `entries` as one durable commit.
    pub fn append(&mut self, entries: &[Entry]) -> Result<Range<u64>, StoreError> {
        let mut st = self.staging();
        let seqs = self.stage(&mut st, entries)?;
        self.commit(st)?;
        Ok(seqs)
    }

    /// flush, then fsync the log file, and the ledger directory when its entries changed: the
    /// only definition of durable here (DESIGN §3).
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map_err(|e| StoreError::engine(&self.path, e))?;
        self.log.sync_all().map_err(|e| StoreError::Io {
            what: "fsync failed on",
            path: self.path.join("db"),
            source: e,
        })?;
        self.dir
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sync_if_changed()
            .map_err(|e| StoreError::Io {
                what: "fsync failed on",
                path: self.path.clone(),
                source: e,
            })
    }

    /// Stores a checkpoint the hub cosigned (the note holds both signatures). Its size must be
    /// within the ledger and its root must be this ledger's root at that size.
    pub fn record_cosigned(&mut self, note: &str, cp: &Checkpoint) -> Result<(), StoreError> {
        if cp.origin != self.origin.as_str() {
            return Err(StoreError::CosignedMismatch(format!(
                "checkpoint origin {} is not {}",
                cp.origin, self.origin
            )));
        }
        if cp.size > self.chain.size() {
            return Err(StoreError::CosignedMismatch(format!(
                "checkpoint size {} is beyond the head {}",
                cp.size,
                self.chain.size()
            )));
        }
        let mut chain = match &self.cosigned {
            Some(c) if c.size <= cp.size => {
                let f = Frontier::from_parts(c.size, c.frontier.clone())
                    .map_err(|e| StoreError::CorruptMeta(e.to_string()))?;
                ChainState::resume(self.origin.as_str(), f, c.last_leaf)
            }
            Some(c) => {
                return Err(StoreError::CosignedMismatch(format!(
                    "checkpoint size {} is below the last cosigned size {}",
                    cp.size, c.size
                )))
            }
            None => ChainState::genesis(self.origin.as_str()),
        };
        if cp.size == self.chain.size() {
            chain = self.chain.clone();
        } else {
            for item in self.reader().range(chain.size()..cp.size) {
                let (seq, bytes) = item?;
                chain.check(&bytes).map_err(|e| {
                    StoreError::Fault(Fault::at(seq, FaultKind::Modified(format!("{e:?}"))))
                })?;
            }
        }
        if chain.size() != cp.size || chain.root() != cp.root {
            return Err(StoreError::CosignedMismatch(format!(
                "root at size {} differs from the checkpoint's",
                cp.size
            )));
        }
        let c = Cosigned {
            note: note.to_owned(),
            size: cp.size,
            root: cp.root,
            last_leaf: chain.last_leaf(),
            frontier: chain.frontier().nodes().to_vec(),
        };
        self.db
            .insert(
                K_COSIGNED,
                postcard::to_stdvec(&c).expect("cosigned encodes"),
            )
            .map_err(|e| StoreError::engine(&self.path, e))?;
        self.sync()?;
        self.cosigned = Some(c);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
