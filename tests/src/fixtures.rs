//! Small ledgers built through the real store and writer.

use std::path::Path;

use anyhow::Result;
use proofline_common::export::export_line;
use proofline_common::note::{Checkpoint, NoteSigner};
use proofline_common::record::now_micros;
use proofline_common::store::{Access, Entry, Store, StoreOptions};
use proofline_common::synth::inspection_result;
use proofline_common::Origin;

/// A ledger of `n` synthetic results in `dir`, its signer, export lines and signed checkpoint.
#[derive(Debug)]
pub struct Ledger {
    pub signer: NoteSigner,
    pub lines: Vec<String>,
    pub checkpoint: String,
}

pub fn ledger(dir: &Path, origin: &str, n: u64) -> Result<Ledger> {
    let origin = Origin::parse(origin)?;
    let signer = NoteSigner::generate(origin.as_str())?;
    let (mut store, _) = Store::open(dir, Access::Write(origin.clone()), &StoreOptions::default())?;
    let entries: Vec<Entry> = (0..n)
        .map(|i| Entry {
            received_at: now_micros(),
            body: inspection_result(i, 16),
        })
        .collect();
    for chunk in entries.chunks(7) {
        store.append(chunk)?;
    }
    let mut lines = Vec::new();
    for item in store.reader().range(0..n) {
        let (seq, bytes) = item?;
        lines.push(export_line(seq, &bytes)?);
    }
    let head = store.head();
    let checkpoint = Checkpoint {
        origin: origin.to_string(),
        size: head.size,
        root: head.root,
    }
    .sign(&signer)?
    .to_string();
    Ok(Ledger {
        signer,
        lines,
        checkpoint,
    })
}
