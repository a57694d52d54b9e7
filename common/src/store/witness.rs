//! The ledgers a hub witnesses, kept beside its own ledger in the same database.
//!
//! Layout (private to the store): one tree `w/<agent_id>` per station, holding the station's
//! records in pages keyed as in the station's own ledger and the hub's witnessed state of it
//! under `s` (opaque bytes: the hub's to encode); one tree `hub` for the hub's own metadata.
//!
//! Invariants:
//! - a station's new records and its new state go in with one atomic batch
//!   ([`WitnessedLedger::append`]): never records without the state that covers them;
//! - nothing here fsyncs. Applied batches become durable with the next commit or
//!   [`LedgerHandle::sync_blocking`](crate::writer::LedgerHandle::sync_blocking) of the hub's own ledger, whose
//!   writer thread is the one owner of the database's fsyncs; nothing may be acknowledged or
//!   cosigned before that returns.

use super::page::{pkey, push_record, PAGE_TARGET_BYTES};
use super::*;

const K_STATE: &[u8] = b"s";
const META_TREE: &str = "hub";

/// The witnessed ledgers in a hub's database (see [`Store::witness_store`]).
#[derive(Debug, Clone)]
pub struct WitnessStore {
    db: sled::Db,
    path: PathBuf,
}

/// One witnessed station ledger.
#[derive(Debug, Clone)]
pub struct WitnessedLedger {
    tree: sled::Tree,
    path: PathBuf,
}

fn tree_name(agent_id: &str) -> String {
    format!("w/{agent_id}")
}

impl Store {
    /// The ledgers this (hub) database witnesses.
    pub fn witness_store(&self) -> WitnessStore {
        WitnessStore {
            db: self.db.clone(),
            path: self.path.clone(),
        }
    }
}

impl WitnessStore {
    pub(super) fn db(&self) -> &sled::Db {
        &self.db
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Agent ids that have a witnessed ledger here (enrolled or not any more).
    pub fn stations(&self) -> Vec<String> {
        self.db
            .tree_names()
            .iter()
            .filter_map(|n| {
                std::str::from_utf8(n)
                    .ok()?
                    .strip_prefix("w/")
                    .map(str::to_owned)
            })
            .collect()
    }

    /// The witnessed ledger of `agent_id` (empty if the hub holds nothing of it yet).
    pub fn open(&self, agent_id: &str) -> Result<WitnessedLedger, StoreError> {
        let tree = self
            .db
            .open_tree(tree_name(agent_id))
            .map_err(|e| StoreError::engine(&self.path, e))?;
        Ok(WitnessedLedger {
            tree,
            path: self.path.clone(),
        })
    }

    /// A value of the hub's own metadata.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .open_tree(META_TREE)
            .and_then(|t| t.get(key))
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| StoreError::engine(&self.path, e))
    }

    /// Sets a value of the hub's own metadata (durable with the next commit).
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.db
            .open_tree(META_TREE)
            .and_then(|t| t.insert(key, value))
            .map(|_| ())
            .map_err(|e| StoreError::engine(&self.path, e))
    }
}

impl WitnessedLedger {
    /// The hub's state of this ledger, as last appended.
    pub fn state(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.tree
            .get(K_STATE)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| StoreError::engine(&self.path, e))
    }

    pub fn reader(&self) -> Reader {
        Reader::for_tree(self.tree.clone(), self.path.clone())
    }

    /// Adds records `first..` and the state that covers them, atomically (durable with the next
    /// sync of the database; see the module docs).
    pub fn append<'a>(
        &self,
        first: u64,
        records: impl IntoIterator<Item = &'a [u8]>,
        state: &[u8],
    ) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        let mut page: Vec<u8> = Vec::new();
        let mut page_first = first;
        for (i, r) in records.into_iter().enumerate() {
            if r.is_empty() || r.len() > MAX_RECORD_BYTES {
                return Err(StoreError::RecordTooLarge { size: r.len() });
            }
            if page.len() >= PAGE_TARGET_BYTES {
                b.insert(&pkey(page_first), std::mem::take(&mut page));
                page_first = first + i as u64;
            }
            push_record(&mut page, r);
        }
        if !page.is_empty() {
            b.insert(&pkey(page_first), page);
        }
        b.insert(K_STATE, state);
        self.tree
            .apply_batch(b)
            .map_err(|e| StoreError::engine(&self.path, e))
    }
}
