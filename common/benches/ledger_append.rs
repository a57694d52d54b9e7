//! Durable append throughput of the ledger beside a raw baseline measured in the same run.
//!
//! For each batch size (1, 10, 100) the same encoded records are appended
//! - through the real group-commit writer (sled apply + flush + fsync of the log), and
//! - to a plain file, `write` of the batch then one `fdatasync` per batch (the raw baseline),
//!
//! alternating, five times each; each durable run is paired with the raw run right after it (the
//! machine is shared and noisy, so only ratios measured side by side mean anything) and the
//! medians of the rates and of the paired ratios are reported. Run with
//! `cargo bench -p proofline-common --bench ledger_append`. `PROOFLINE_BENCH_DIR` picks the
//! directory (it must be on the disk under test, not tmpfs); the default is Cargo's target tmp.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use proofline_common::record::now_micros;
use proofline_common::store::{Access, Entry, Store, StoreOptions};
use proofline_common::synth::{inspection_result, pad_for};
use proofline_common::writer::{spawn_writer, WriterConfig};
use proofline_common::Origin;

/// About the size of a flow-bench result with five characteristics and its raw registers.
const RECORD_BYTES: usize = 512;
const REPEATS: usize = 5;

fn bench_dir() -> PathBuf {
    std::env::var_os("PROOFLINE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

fn entries(n: u64) -> Vec<Entry> {
    let pad = pad_for(RECORD_BYTES);
    (0..n)
        .map(|i| Entry {
            received_at: now_micros(),
            body: inspection_result(i, pad),
        })
        .collect()
}

/// Records/s through the writer, and the encoded bytes it produced (for the baseline).
fn durable(dir: &Path, records: &[Entry], batch: usize) -> (f64, Vec<Vec<u8>>) {
    let origin = Origin::parse("proofline/bench/agent").unwrap();
    let (store, _) = Store::open(dir, Access::Write(origin), &StoreOptions::default()).unwrap();
    let (handle, writer) = spawn_writer(store, WriterConfig::default()).unwrap();
    // Requests are built before the clock starts: a caller hands over what it already has.
    let requests: Vec<Vec<Entry>> = records.chunks(batch).map(|c| c.to_vec()).collect();
    let t = Instant::now();
    for req in requests {
        handle.append_blocking(req).unwrap();
    }
    let rate = records.len() as f64 / t.elapsed().as_secs_f64();
    let size = handle.head().size;
    let bytes = handle
        .reader()
        .range(size - records.len() as u64..size)
        .map(|r| r.unwrap().1)
        .collect();
    drop(handle);
    drop(writer.join());
    (rate, bytes)
}

fn raw(path: &Path, records: &[Vec<u8>], batch: usize) -> f64 {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let t = Instant::now();
    for chunk in records.chunks(batch) {
        let buf: Vec<u8> = chunk.concat();
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
    }
    records.len() as f64 / t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs this binary with --bench absent; keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("ledger_append: run with `cargo bench` to measure");
        return;
    }
    let root = bench_dir();
    std::fs::create_dir_all(&root).unwrap();
    println!(
        "ledger durable append vs raw append+fdatasync, {RECORD_BYTES}-byte records, dir {}",
        root.display()
    );
    println!(
        "{:>6} {:>8} {:>14} {:>14} {:>7}",
        "batch", "records", "durable rec/s", "raw rec/s", "ratio"
    );
    for (batch, n) in [(1usize, 1_000u64), (10, 5_000), (100, 30_000)] {
        let records = entries(n);
        let (mut d, mut r, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..REPEATS {
            let dir = tempfile::tempdir_in(&root).unwrap();
            let (rate, bytes) = durable(dir.path(), &records, batch);
            let raw_rate = raw(&dir.path().join(format!("raw-{rep}")), &bytes, batch);
            d.push(rate);
            r.push(raw_rate);
            ratio.push(rate / raw_rate);
        }
        let (d, r, ratio) = (median(d), median(r), median(ratio));
        println!(
            "{batch:>6} {n:>8} {d:>14.0} {r:>14.0} {:>6.0}%",
            100.0 * ratio
        );
    }
}
