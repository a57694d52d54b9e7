//! The page format, private to the store: consecutive records of one commit in one sled value,
//! each preceded by its length (u16, little-endian). A station's own ledger and every ledger a
//! hub witnesses use it.

use std::path::Path;

use super::StoreError;
use crate::record::MAX_RECORD_BYTES;

/// A page takes records until it holds this many bytes. Small pages keep sled's tree nodes (up
/// to 17 items) small: large nodes cost memory on every read and bytes on every rewrite.
pub(crate) const PAGE_TARGET_BYTES: usize = 4 * 1024;
/// Largest page value: a page over the target holds a single record.
pub const PAGE_MAX_BYTES: usize = MAX_RECORD_BYTES + 2;

/// Key of the page whose first record is `first`.
pub(crate) fn pkey(first: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'p';
    k[1..].copy_from_slice(&first.to_be_bytes());
    k
}

pub(crate) fn first_of_key(k: &[u8]) -> Option<u64> {
    match k {
        [b'p', rest @ ..] => rest.try_into().ok().map(u64::from_be_bytes),
        _ => None,
    }
}

/// Appends one record to a page: u16 LE length, then the bytes (the writer does this in place).
pub(crate) fn push_record(page: &mut Vec<u8>, rec: &[u8]) {
    page.extend_from_slice(&(rec.len() as u16).to_le_bytes());
    page.extend_from_slice(rec);
}

/// Splits a page into its records; `None` if the framing is damaged.
pub(crate) fn page_records(page: &[u8]) -> Option<Vec<&[u8]>> {
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

/// First seq of the page holding `seq` (or `seq` itself when no page holds it).
pub(crate) fn page_start(db: &sled::Tree, path: &Path, seq: u64) -> Result<u64, StoreError> {
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

/// Extra lookups of each page's key during a scan (see [`Pages`]).
const TOUCHES_PER_PAGE: usize = 8;

/// The pages of a key range in key order, read so that sled's cache stays within its bounds.
///
/// sled 0.34 trims its cache only while it processes recorded accesses, and it records them in
/// 256 shards, each processed only once 64 accesses have queued in it. A range iterator looks
/// each tree node up once and then reads from its own copy, so a scan records one access per
/// node of up to 17 pages: the shards hardly ever fill, hardly anything is evicted, and the
/// nodes the scan read stay in memory whatever `cache_capacity` says (≈ 390 MiB for a full
/// verification of 1 M records of 512 bytes). Looking each page's key up again records accesses
/// in proportion to the pages read, so the cache is trimmed as the scan goes: at most
/// 256 × 64 / (1 + [`TOUCHES_PER_PAGE`]) pages (≈ 7 MiB of 4 KiB pages) are read and not yet
/// accounted for, whatever the size of the ledger.
pub(crate) struct Pages {
    tree: sled::Tree,
    iter: sled::Iter,
}

impl Pages {
    pub(crate) fn new(tree: &sled::Tree, keys: impl std::ops::RangeBounds<[u8; 9]>) -> Self {
        Pages {
            tree: tree.clone(),
            iter: tree.range(keys),
        }
    }
}

impl Iterator for Pages {
    type Item = sled::Result<(sled::IVec, sled::IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.iter.next()?;
        if let Ok((k, _)) = &item {
            for _ in 0..TOUCHES_PER_PAGE {
                // Only the recorded access matters: the page is already read, so a lookup that
                // fails changes nothing here.
                let _ = self.tree.contains_key(k);
            }
        }
        Some(item)
    }
}
