//! `ledger verify --full` streams: its peak memory does not grow with the ledger (DESIGN §9:
//! ≤ 64 MiB with 1 M records). A ledger of 64 MiB of records is verified by the real binary;
//! reading it with the storage engine's cache left to itself keeps about all of it in memory, so
//! the bound below holds only when the cache is trimmed as the scan goes.
//!
//! This test binary starts no other child process: the peak it reads (the largest of the waited
//! children) is the verifier's.

use std::process::Command;

use nix::sys::resource::{getrusage, UsageWho};
use proofline_common::record::now_micros;
use proofline_common::store::{Access, Entry, Store, StoreOptions};
use proofline_common::synth::{inspection_result, pad_for};
use proofline_common::Origin;

const BIN: &str = env!("CARGO_BIN_EXE_proofline-agent");
const RECORDS: u64 = 128_000;
const RECORD_BYTES: usize = 512;
/// Far below the 64 MiB of records, far above what a streaming verification needs (~20 MiB).
const PEAK_BOUND_KIB: i64 = 40 * 1024;

#[test]
fn full_verification_peak_memory_stays_bounded_on_a_large_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::parse("proofline/plant-1/flow-01").unwrap();
    let (mut store, _) = Store::open(dir.path(), Access::Write(origin), &StoreOptions::default())
        .expect("ledger opens");
    let pad = pad_for(RECORD_BYTES);
    let batch = 2_000;
    for start in (0..RECORDS).step_by(batch) {
        let entries: Vec<Entry> = (start..start + batch as u64)
            .map(|i| Entry {
                received_at: now_micros(),
                body: inspection_result(i, pad),
            })
            .collect();
        store.append(&entries).expect("append");
    }
    let head = store.head();
    drop(store);

    let out = Command::new(BIN)
        .args(["ledger", "verify", "--full", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("runs proofline-agent");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "verify failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("size {} root {}", head.size, head.root)),
        "{stdout}"
    );
    let peak_kib = getrusage(UsageWho::RUSAGE_CHILDREN).unwrap().max_rss();
    assert!(
        peak_kib < PEAK_BOUND_KIB,
        "ledger verify --full over {RECORDS} records peaked at {} MiB (bound {} MiB)",
        peak_kib / 1024,
        PEAK_BOUND_KIB / 1024
    );
}
