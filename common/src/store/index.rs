//! Derived indexes kept in the hub's database beside the witnessed ledgers: ordered keys with
//! small values (the reconciler's timelines, findings, the QMS outbox).
//!
//! Invariants:
//! - an index is derived or operational data, never evidence: the evidence stays the witnessed
//!   records, which an index only refers to;
//! - every value stays at most [`PAGE_MAX_BYTES`], as the ledger's pages do (so none lands in a
//!   sled blob file, which sled never fsyncs): a larger one is refused, not truncated;
//! - a [`IndexBatch`] goes in atomically; like the witnessed records, it is durable with the
//!   next sync of the hub ledger's writer (nothing here fsyncs).

use super::witness::WitnessStore;
use super::{StoreError, PAGE_MAX_BYTES};

/// One named index (see [`WitnessStore::index`]).
#[derive(Debug, Clone)]
pub struct Index {
    tree: sled::Tree,
    path: std::path::PathBuf,
}

/// Changes to apply to an [`Index`] at once.
#[derive(Debug, Default)]
pub struct IndexBatch {
    batch: sled::Batch,
    empty: bool,
}

impl IndexBatch {
    pub fn new() -> IndexBatch {
        IndexBatch {
            batch: sled::Batch::default(),
            empty: true,
        }
    }

    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if value.len() > PAGE_MAX_BYTES {
            return Err(StoreError::RecordTooLarge { size: value.len() });
        }
        self.batch.insert(key, value);
        self.empty = false;
        Ok(())
    }

    pub fn remove(&mut self, key: &[u8]) {
        self.batch.remove(key);
        self.empty = false;
    }

    pub fn is_empty(&self) -> bool {
        self.empty
    }
}

impl WitnessStore {
    /// The index `name` (created empty on first use). Names starting with `w/` are the
    /// witnessed ledgers' and are refused.
    pub fn index(&self, name: &str) -> Result<Index, StoreError> {
        if name.starts_with("w/") || name == "hub" || name.is_empty() {
            return Err(StoreError::CorruptMeta(format!(
                "{name:?} is not a name an index may have"
            )));
        }
        let tree = self
            .db()
            .open_tree(format!("x/{name}"))
            .map_err(|e| StoreError::engine(self.path(), e))?;
        Ok(Index {
            tree,
            path: self.path().to_owned(),
        })
    }
}

impl Index {
    /// An index in a scratch database of its own, removed when dropped: what a rebuild is
    /// computed into before it is compared with (or replaces) the live one.
    pub fn temporary(name: &str) -> Result<Index, StoreError> {
        let path = std::path::PathBuf::from(format!("(scratch index {name})"));
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(8 << 20)
            .open()
            .map_err(|e| StoreError::engine(&path, e))?;
        let tree = db
            .open_tree(format!("x/{name}"))
            .map_err(|e| StoreError::engine(&path, e))?;
        Ok(Index { tree, path })
    }

    /// SHA-256 over every entry in key order (each key and value length-prefixed): equal
    /// digests, equal indexes.
    pub fn digest(&self) -> Result<[u8; 32], StoreError> {
        self.digest_of(|_| true)
    }

    /// [`Index::digest`] over the entries whose key `include` accepts.
    pub fn digest_of(&self, include: impl Fn(&[u8]) -> bool) -> Result<[u8; 32], StoreError> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for kv in self.scan(b"") {
            let (k, v) = kv?;
            if !include(&k) {
                continue;
            }
            h.update((k.len() as u64).to_be_bytes());
            h.update(&k);
            h.update((v.len() as u64).to_be_bytes());
            h.update(&v);
        }
        Ok(h.finalize().into())
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.tree
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| StoreError::engine(&self.path, e))
    }

    /// Entries whose key starts with `prefix`, in key order.
    pub fn scan(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + '_ {
        self.tree.scan_prefix(prefix).map(|r| {
            r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(|e| StoreError::engine(&self.path, e))
        })
    }

    /// Entries with keys from `from` (inclusive), in key order, while they start with `prefix`.
    pub fn scan_from(
        &self,
        prefix: &[u8],
        from: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + '_ {
        let prefix = prefix.to_vec();
        self.tree
            .range(from.to_vec()..)
            .take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| StoreError::engine(&self.path, e))
            })
    }

    pub fn apply(&self, batch: IndexBatch) -> Result<(), StoreError> {
        if batch.empty {
            return Ok(());
        }
        self.tree
            .apply_batch(batch.batch)
            .map_err(|e| StoreError::engine(&self.path, e))
    }

    /// Removes every entry (a rebuild starts from nothing).
    pub fn clear(&self) -> Result<(), StoreError> {
        self.tree
            .clear()
            .map_err(|e| StoreError::engine(&self.path, e))
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }
}
