//! Read access to stored records while the writer runs.

use super::*;

/// Read access to a ledger while its writer runs.
#[derive(Debug, Clone)]
pub struct Reader {
    db: sled::Tree,
    path: PathBuf,
}

impl Reader {
    /// Reads records kept in pages in `tree` (the hub keeps each witnessed ledger so).
    pub(crate) fn for_tree(tree: sled::Tree, path: PathBuf) -> Self {
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
            Ok(first) if seqs.start < seqs.end => {
                Some(Pages::new(&self.db, pkey(first)..pkey(seqs.end)))
            }
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
    pages: Option<Pages>,
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
