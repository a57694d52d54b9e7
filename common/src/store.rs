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
//!   flushes neither the disk cache nor the file size). Nothing downstream may be told "stored"
//!   before that.
//! - Records are contiguous from seq 0 (or from the pruning floor, a cosigned size) up to the head.
//! - Open = verify: the chain is walked from the last cosigned checkpoint (or genesis) to the head.
//!   Records beyond the head are a torn, never-acknowledged batch: a writer cuts them and records a
//!   `LedgerRepaired` event; anything else is a classified [`StoreError`] naming the seq.
//! - Every value stays at most [`PAGE_MAX_BYTES`] (8 KiB): with 1 MiB segments sled's blob
//!   threshold is 256 KiB and a leaf node holds at most 17 items, so no record ever lands in a
//!   blob file that sled would not fsync.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::chain::{ChainState, Fault, FaultKind, LinkError};
use crate::hash::{genesis_prev, leaf_hash, Hash};
use crate::merkle::Frontier;
use crate::note::Checkpoint;
use crate::origin::Origin;
use crate::record::{Body, StationEvent, MAX_RECORD_BYTES};

/// Name of the sled directory inside a program's data directory.
pub const LEDGER_DIR: &str = "ledger";
const FORMAT_VERSION: u32 = 1;
/// More records than this beyond the committed head is not a torn batch but damage.
pub const MAX_TORN_RECORDS: u64 = 65_536;
const SEGMENT_SIZE: usize = 1 << 20;
/// A page takes records until it holds this many bytes. Small pages keep sled's tree nodes (up
/// to 17 items) small: large nodes cost memory on every read and bytes on every rewrite.
pub const PAGE_TARGET_BYTES: usize = 4 * 1024;
/// Largest page value: a page over the target holds a single record.
pub const PAGE_MAX_BYTES: usize = MAX_RECORD_BYTES + 2;

const K_FORMAT: &[u8] = b"m.format";
const K_ORIGIN: &[u8] = b"m.origin";
const K_BOOT: &[u8] = b"m.boot";
const K_HEAD: &[u8] = b"m.head";
const K_COSIGNED: &[u8] = b"m.cosigned";
const K_FLOOR: &[u8] = b"m.floor";

/// Key of the page whose first record is `first`.
pub fn pkey(first: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'p';
    k[1..].copy_from_slice(&first.to_be_bytes());
    k
}

fn first_of_key(k: &[u8]) -> Option<u64> {
    match k {
        [b'p', rest @ ..] => rest.try_into().ok().map(u64::from_be_bytes),
        _ => None,
    }
}

/// Appends one record to a page: u16 LE length, then the bytes (the writer does this in place).
pub fn push_record(page: &mut Vec<u8>, rec: &[u8]) {
    page.extend_from_slice(&(rec.len() as u16).to_le_bytes());
    page.extend_from_slice(rec);
}

/// Splits a page into its records; `None` if the framing is damaged.
pub fn page_records(page: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = page;
    while !rest.is_empty() {
        let len = usize::from(u16::from_le_bytes(rest.get(..2)?.try_into().ok()?));
        if len == 0 || len > MAX_RECORD_BYTES {
            return None;
        }
        out.push(rest.get(2..2 + len)?);
        rest = &rest[2 + len..];
    }
    (!out.is_empty()).then_some(out)
}

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
    /// Opens the ledger in `data_dir` (its `ledger/` subdirectory) and verifies it.
    pub fn open(
        data_dir: &Path,
        access: Access,
        opts: &StoreOptions,
    ) -> Result<(Store, OpenReport), StoreError> {
        match std::fs::metadata(data_dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(StoreError::NotADirectory(data_dir.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NoDataDir(data_dir.to_owned()))
            }
            Err(e) => {
                return Err(StoreError::Io {
                    what: "cannot read data directory",
                    path: data_dir.to_owned(),
                    source: e,
                })
            }
        }
        let path = data_dir.join(LEDGER_DIR);
        let log_path = path.join("db");
        let writable = matches!(access, Access::Write(_));
        if !writable && !log_path.exists() {
            return Err(StoreError::NoLedger(data_dir.to_owned()));
        }
        if writable {
            std::fs::create_dir_all(&path).map_err(|e| StoreError::Io {
                what: "cannot create ledger directory",
                path: path.clone(),
                source: e,
            })?;
        }
        let config = sled::Config::new()
            .path(&path)
            .cache_capacity(opts.cache_capacity_bytes)
            .segment_size(SEGMENT_SIZE)
            .flush_every_ms(None);
        // sled releases its file lock when its last background task lets go of the database,
        // which can be a moment after the previous `Store` in this process was dropped: wait a
        // little for it before reporting the ledger as held by someone else.
        let deadline = std::time::Instant::now() + opts.lock_wait;
        let db = loop {
            match catch_unwind(AssertUnwindSafe(|| config.open())) {
                Ok(Ok(db)) => break db,
                Ok(Err(e)) => match StoreError::engine(&path, e) {
                    StoreError::Locked(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    other => return Err(other),
                },
                Err(_) => {
                    return Err(StoreError::Engine {
                        path,
                        message:
                            "the storage engine failed while recovering the log (damaged files)"
                                .into(),
                    })
                }
            }
        };
        let log = File::open(&log_path).map_err(|e| StoreError::Io {
            what: "cannot open ledger log",
            path: log_path.clone(),
            source: e,
        })?;
        let get = |k: &[u8]| db.get(k).map_err(|e| StoreError::engine(&path, e));

        let origin = match (get(K_FORMAT)?, &access) {
            (Some(v), _) => {
                let found = u32::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                    StoreError::CorruptMeta("format version is not 4 bytes".into())
                })?);
                if found != FORMAT_VERSION {
                    return Err(StoreError::UnsupportedFormat { path, found });
                }
                let stored = get(K_ORIGIN)?
                    .ok_or_else(|| StoreError::CorruptMeta("origin is missing".into()))?;
                let stored = std::str::from_utf8(&stored)
                    .ok()
                    .and_then(|s| Origin::parse(s).ok())
                    .ok_or_else(|| StoreError::CorruptMeta("origin is not valid".into()))?;
                if let Access::Write(requested) = &access {
                    if *requested != stored {
                        return Err(StoreError::OriginMismatch {
                            path,
                            ledger: stored.to_string(),
                            requested: requested.to_string(),
                        });
                    }
                }
                stored
            }
            (None, Access::Write(origin)) => {
                if db.scan_prefix(b"p").next().is_some() {
                    return Err(StoreError::CorruptMeta(
                        "records exist but the format marker is missing".into(),
                    ));
                }
                let mut b = sled::Batch::default();
                b.insert(K_FORMAT, &FORMAT_VERSION.to_be_bytes());
                b.insert(K_ORIGIN, origin.as_str().as_bytes());
                b.insert(K_BOOT, &0u32.to_be_bytes());
                db.apply_batch(b)
                    .map_err(|e| StoreError::engine(&path, e))?;
                origin.clone()
            }
            (None, Access::Read) => return Err(StoreError::NoLedger(data_dir.to_owned())),
        };

        let boot = match get(K_BOOT)? {
            Some(v) => u32::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::CorruptMeta("boot counter is not 4 bytes".into()))?,
            ),
            None => 0,
        };
        let head: HeadMeta = match get(K_HEAD)? {
            Some(v) => postcard::from_bytes(&v)
                .map_err(|_| StoreError::CorruptMeta("head does not decode".into()))?,
            None => HeadMeta {
                size: 0,
                last_leaf: genesis_prev(origin.as_str()),
            },
        };
        let cosigned: Option<Cosigned> = match get(K_COSIGNED)? {
            Some(v) => Some(postcard::from_bytes(&v).map_err(|_| {
                StoreError::CorruptMeta("cosigned checkpoint does not decode".into())
            })?),
            None => None,
        };

        let floor: Option<Floor> = match get(K_FLOOR)? {
            Some(v) => Some(
                postcard::from_bytes(&v)
                    .map_err(|_| StoreError::CorruptMeta("pruning floor does not decode".into()))?,
            ),
            None => None,
        };
        let (chain, torn) = verify_chain(
            &db,
            &path,
            &origin,
            head,
            cosigned.as_ref(),
            floor.as_ref(),
            opts.verify,
        )?;
        let verified_from = match (opts.verify, &cosigned, &floor) {
            (VerifyScope::SinceCosigned, Some(c), _) => c.size,
            (_, _, Some(f)) => f.size,
            _ => 0,
        };

        let mut store = Store {
            path,
            db,
            log,
            origin,
            boot,
            chain,
            cosigned,
            writable,
        };
        let torn_records = torn.records;
        let mut repaired = false;
        if writable {
            // The boot counter and the cut of a torn tail are made durable before anything
            // new is appended under the new boot.
            store.boot = boot
                .checked_add(1)
                .ok_or_else(|| StoreError::CorruptMeta("boot counter is exhausted".into()))?;
            let mut b = sled::Batch::default();
            b.insert(K_BOOT, &store.boot.to_be_bytes());
            for first in &torn.pages {
                b.remove(&pkey(*first));
            }
            store
                .db
                .apply_batch(b)
                .map_err(|e| StoreError::engine(&store.path, e))?;
            store.sync()?;
            if let Some(&from_seq) = torn.pages.first() {
                tracing::warn!(
                    ledger = %store.origin,
                    from_seq,
                    removed = torn_records,
                    "cut a torn tail: records beyond the last complete commit"
                );
                store.append(&[Entry {
                    received_at: crate::record::now_micros(),
                    body: Body::StationEvent(StationEvent::LedgerRepaired {
                        from_seq,
                        removed: torn_records,
                        detail: "incomplete last batch cut on open; it was never acknowledged"
                            .into(),
                    }),
                }])?;
                repaired = true;
            }
        }
        let report = OpenReport {
            head: store.head(),
            boot: store.boot,
            verified_from,
            torn_records,
            repaired,
        };
        Ok((store, report))
    }

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

    /// The database and its log file, for other trees that must be durable with the same
    /// recipe (the hub keeps the ledgers it witnesses beside its own).
    pub fn shared(&self) -> Result<SharedDb, StoreError> {
        let log_path = self.path.join("db");
        let log = File::open(&log_path).map_err(|e| StoreError::Io {
            what: "cannot open ledger log",
            path: log_path,
            source: e,
        })?;
        Ok(SharedDb {
            db: self.db.clone(),
            log,
            path: self.path.clone(),
        })
    }

    pub fn reader(&self) -> Reader {
        Reader {
            db: sled::Tree::clone(&self.db),
            path: self.path.clone(),
        }
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

    /// flush, then fsync the log file: the only definition of durable here (DESIGN §3).
    fn sync(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map_err(|e| StoreError::engine(&self.path, e))?;
        self.log.sync_all().map_err(|e| StoreError::Io {
            what: "fsync failed on",
            path: self.path.join("db"),
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

impl Store {
    /// First seq still stored (0 unless records were pruned).
    pub fn floor(&self) -> Result<u64, StoreError> {
        Ok(self.load_floor()?.map_or(0, |f| f.size))
    }

    fn load_floor(&self) -> Result<Option<Floor>, StoreError> {
        match self
            .db
            .get(K_FLOOR)
            .map_err(|e| StoreError::engine(&self.path, e))?
        {
            Some(v) => postcard::from_bytes(&v)
                .map(Some)
                .map_err(|_| StoreError::CorruptMeta("pruning floor does not decode".into())),
            None => Ok(None),
        }
    }

    /// Removes whole pages of records that are below the last cosigned size (the hub holds
    /// them) and were all received before `received_before` (UTC microseconds), oldest first,
    /// at most `max_pages` per call. Durable when it returns.
    pub fn prune(&mut self, received_before: i64, max_pages: usize) -> Result<Pruned, StoreError> {
        if !self.writable {
            return Err(StoreError::Closed);
        }
        let Some(cosigned) = self.cosigned.clone() else {
            return Ok(Pruned {
                records: 0,
                floor: self.floor()?,
            });
        };
        let floor = self.load_floor()?;
        let mut chain = match &floor {
            Some(fl) => {
                let f = Frontier::from_parts(fl.size, fl.frontier.clone())
                    .map_err(|e| StoreError::CorruptMeta(format!("pruning floor: {e}")))?;
                ChainState::resume(self.origin.as_str(), f, fl.last_leaf)
            }
            None => ChainState::genesis(self.origin.as_str()),
        };
        let start = chain.size();
        let mut batch = sled::Batch::default();
        let mut pages = 0;
        for item in self.db.range(pkey(start)..pkey(cosigned.size)) {
            let (k, v) = item.map_err(|e| StoreError::engine(&self.path, e))?;
            let first = first_of_key(&k)
                .ok_or_else(|| StoreError::CorruptMeta(format!("unexpected key {k:?}")))?;
            let records = page_records(&v).ok_or_else(|| {
                StoreError::Fault(Fault::at(
                    first,
                    FaultKind::Modified(format!("the page of records from seq {first} is damaged")),
                ))
            })?;
            if first != chain.size() || first + records.len() as u64 > cosigned.size {
                break;
            }
            let mut old = true;
            let mut next = chain.clone();
            for (i, bytes) in records.iter().enumerate() {
                let seq = first + i as u64;
                let (rec, _) = next.check(bytes).map_err(|e| {
                    StoreError::Fault(Fault::at(seq, FaultKind::Modified(format!("{e:?}"))))
                })?;
                old &= rec.v1().received_at < received_before;
            }
            if !old || pages == max_pages {
                break;
            }
            chain = next;
            batch.remove(&k);
            pages += 1;
        }
        if pages == 0 {
            return Ok(Pruned {
                records: 0,
                floor: start,
            });
        }
        let fl = Floor {
            size: chain.size(),
            last_leaf: chain.last_leaf(),
            frontier: chain.frontier().nodes().to_vec(),
        };
        batch.insert(K_FLOOR, postcard::to_stdvec(&fl).expect("floor encodes"));
        self.db
            .apply_batch(batch)
            .map_err(|e| StoreError::engine(&self.path, e))?;
        self.sync()?;
        Ok(Pruned {
            records: fl.size - start,
            floor: fl.size,
        })
    }
}

/// The program's sled database, for trees beside the ledger's (see [`Store::shared`]).
#[derive(Debug)]
pub struct SharedDb {
    pub db: sled::Db,
    log: File,
    path: PathBuf,
}

impl SharedDb {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes everything applied so far durable: flush, then fsync the log (DESIGN §3).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map_err(|e| StoreError::engine(&self.path, e))?;
        self.log.sync_all().map_err(|e| StoreError::Io {
            what: "fsync failed on",
            path: self.path.join("db"),
            source: e,
        })
    }

    /// Maps a sled error on this database to a [`StoreError`].
    pub fn error(&self, e: sled::Error) -> StoreError {
        StoreError::engine(&self.path, e)
    }
}

/// Pages beyond the committed head: an incomplete batch.
#[derive(Debug, Default)]
struct Torn {
    pages: Vec<u64>,
    records: u64,
}

/// Walks the chain from the verification start to the committed head. Returns the chain state at
/// the head and the pages beyond it (a torn tail).
fn verify_chain(
    db: &sled::Db,
    path: &Path,
    origin: &Origin,
    head: HeadMeta,
    cosigned: Option<&Cosigned>,
    floor: Option<&Floor>,
    scope: VerifyScope,
) -> Result<(ChainState, Torn), StoreError> {
    let fault = |seq: u64, kind| StoreError::Fault(Fault::at(seq, kind));
    if let Some(c) = cosigned {
        if c.size > head.size {
            return Err(fault(
                head.size,
                FaultKind::Truncated {
                    end: head.size,
                    size: c.size,
                },
            ));
        }
    }
    let mut chain = match (scope, cosigned) {
        (VerifyScope::SinceCosigned, Some(c)) => {
            let f = Frontier::from_parts(c.size, c.frontier.clone())
                .map_err(|e| StoreError::CorruptMeta(format!("cosigned frontier: {e}")))?;
            if f.root() != c.root {
                return Err(StoreError::CorruptMeta(
                    "cosigned frontier does not give the cosigned root".into(),
                ));
            }
            if c.size > 0 {
                let reader = Reader {
                    db: sled::Tree::clone(db),
                    path: path.to_owned(),
                };
                if let Some(v) = reader.get(c.size - 1)? {
                    if leaf_hash(&v) != c.last_leaf {
                        return Err(fault(
                            c.size - 1,
                            FaultKind::Modified("differs from the cosigned checkpoint".into()),
                        ));
                    }
                }
            }
            ChainState::resume(origin.as_str(), f, c.last_leaf)
        }
        // Pruned records are gone: a full verification starts at the floor.
        (_, _) if floor.is_some_and(|f| f.size > 0) => {
            let fl = floor.expect("checked");
            let f = Frontier::from_parts(fl.size, fl.frontier.clone())
                .map_err(|e| StoreError::CorruptMeta(format!("pruning floor: {e}")))?;
            ChainState::resume(origin.as_str(), f, fl.last_leaf)
        }
        _ => ChainState::genesis(origin.as_str()),
    };
    let start = page_start(db, path, chain.size())?;
    let mut torn = Torn::default();
    for item in db.range(pkey(start)..=pkey(u64::MAX)) {
        let (k, v) = item.map_err(|e| StoreError::engine(path, e))?;
        let first = first_of_key(&k)
            .ok_or_else(|| StoreError::CorruptMeta(format!("unexpected key {k:?}")))?;
        let Some(records) = page_records(&v) else {
            return Err(fault(
                first.max(chain.size()),
                FaultKind::Modified(format!("the page of records from seq {first} is damaged")),
            ));
        };
        if first >= head.size {
            torn.pages.push(first);
            torn.records += records.len() as u64;
            if torn.records > MAX_TORN_RECORDS {
                return Err(StoreError::CorruptMeta(format!(
                    "more than {MAX_TORN_RECORDS} records beyond the committed head {}; refusing to cut them",
                    head.size
                )));
            }
            continue;
        }
        if first > chain.size() {
            return Err(fault(chain.size(), FaultKind::Missing));
        }
        for (i, bytes) in records.iter().enumerate() {
            let seq = first + i as u64;
            if seq < chain.size() {
                // Resuming inside a page: records before the resume point were verified then.
                continue;
            }
            if seq >= head.size {
                return Err(StoreError::CorruptMeta(format!(
                    "the page from seq {first} runs past the committed head {}",
                    head.size
                )));
            }
            check_link(&mut chain, seq, bytes, head.size)?;
            if let (VerifyScope::Full, Some(c)) = (scope, cosigned) {
                if chain.size() == c.size && chain.root() != c.root {
                    return Err(fault(seq, FaultKind::RootMismatch { size: c.size }));
                }
            }
        }
    }
    if chain.size() < head.size {
        return Err(fault(
            chain.size(),
            FaultKind::Truncated {
                end: chain.size(),
                size: head.size,
            },
        ));
    }
    if chain.last_leaf() != head.last_leaf {
        return Err(fault(
            head.size.saturating_sub(1),
            FaultKind::Modified("differs from the committed head".into()),
        ));
    }
    Ok((chain, torn))
}

/// Checks that the record stored at `seq` extends the chain, classifying what is wrong if not.
fn check_link(
    chain: &mut ChainState,
    seq: u64,
    bytes: &[u8],
    head_size: u64,
) -> Result<(), StoreError> {
    let fault = |seq: u64, kind| StoreError::Fault(Fault::at(seq, kind));
    match chain.check(bytes) {
        Ok(_) => Ok(()),
        Err(LinkError::Altered(d)) => Err(fault(seq, FaultKind::Modified(d))),
        Err(LinkError::ForeignOrigin(o)) => Err(fault(seq, FaultKind::ForeignOrigin(o))),
        Err(LinkError::WrongSeq(found)) if found < head_size => Err(fault(
            seq,
            FaultKind::Reordered(format!("the record stored at seq {seq} is seq {found}")),
        )),
        Err(LinkError::WrongSeq(found)) => Err(fault(
            seq,
            FaultKind::Modified(format!("stored at seq {seq} but says seq {found}")),
        )),
        // The link is checked on the successor: the record before it is the one whose bytes
        // no longer hash to what was chained.
        Err(LinkError::BrokenLink) => Err(fault(
            seq.saturating_sub(1),
            FaultKind::Modified(format!("its hash is not the prev of seq {seq}")),
        )),
    }
}

/// First seq of the page holding `seq` (or `seq` itself when no page holds it).
fn page_start(db: &sled::Tree, path: &Path, seq: u64) -> Result<u64, StoreError> {
    match db
        .range(pkey(0)..=pkey(seq))
        .next_back()
        .transpose()
        .map_err(|e| StoreError::engine(path, e))?
    {
        Some((k, _)) => Ok(first_of_key(&k).unwrap_or(seq)),
        None => Ok(seq),
    }
}

/// Read access to a ledger while its writer runs.
#[derive(Debug, Clone)]
pub struct Reader {
    db: sled::Tree,
    path: PathBuf,
}

impl Reader {
    /// Reads records kept in pages in `tree` (the hub keeps each witnessed ledger so).
    pub fn for_tree(tree: sled::Tree, path: PathBuf) -> Self {
        Reader { db: tree, path }
    }

    /// The exact bytes of record `seq`.
    pub fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        match self.range(seq..seq.saturating_add(1)).next() {
            Some(Ok((s, bytes))) if s == seq => Ok(Some(bytes)),
            Some(Err(e)) => Err(e),
            _ => Ok(None),
        }
    }

    /// Records with seq in `seqs`, in order, as exact stored bytes.
    ///
    /// Bound `seqs` by a durable head ([`Store::head`], the writer's head watch): while a commit
    /// is in progress its pages exist before its head does.
    pub fn range(&self, seqs: Range<u64>) -> RecordIter {
        let start = page_start(&self.db, &self.path, seqs.start);
        let pages = match start {
            Ok(first) if seqs.start < seqs.end => Some(self.db.range(pkey(first)..pkey(seqs.end))),
            _ => None,
        };
        RecordIter {
            pages,
            error: start.err(),
            current: Vec::new().into_iter(),
            seqs,
            path: self.path.clone(),
        }
    }
}

/// Iterator over stored records (see [`Reader::range`]).
pub struct RecordIter {
    pages: Option<sled::Iter>,
    error: Option<StoreError>,
    current: std::vec::IntoIter<(u64, Vec<u8>)>,
    seqs: Range<u64>,
    path: PathBuf,
}

impl std::fmt::Debug for RecordIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordIter")
            .field("seqs", &self.seqs)
            .finish_non_exhaustive()
    }
}

impl Iterator for RecordIter {
    type Item = Result<(u64, Vec<u8>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            return Some(Err(e));
        }
        loop {
            if let Some(r) = self.current.next() {
                return Some(Ok(r));
            }
            let (k, v) = match self.pages.as_mut()?.next()? {
                Ok(kv) => kv,
                Err(e) => return Some(Err(StoreError::engine(&self.path, e))),
            };
            let Some(first) = first_of_key(&k) else {
                return Some(Err(StoreError::CorruptMeta(format!(
                    "unexpected key {k:?}"
                ))));
            };
            let Some(records) = page_records(&v) else {
                return Some(Err(StoreError::Fault(Fault::at(
                    first.max(self.seqs.start),
                    FaultKind::Modified(format!("the page of records from seq {first} is damaged")),
                ))));
            };
            let want = self.seqs.clone();
            self.current = records
                .into_iter()
                .enumerate()
                .map(|(i, r)| (first + i as u64, r))
                .filter(|(s, _)| want.contains(s))
                .map(|(s, r)| (s, r.to_vec()))
                .collect::<Vec<_>>()
                .into_iter();
        }
    }
}

#[cfg(test)]
mod tests;
