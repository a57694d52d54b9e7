//! Pruning: only records below the last cosigned size (the hub holds them) and past retention.

use super::*;

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
        for item in Pages::new(&self.db, pkey(start)..pkey(cosigned.size)) {
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
