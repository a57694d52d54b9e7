//! `ledger bench`: appends synthetic inspection results through the real group-commit writer,
//! printing `ACK <last seq>` after each durable commit (the crash test relies on it: a printed
//! ACK is a promise that the record survives any crash), then one JSON summary line.
//!
//! With `--cosign-every N` it also does what a station does when the hub answers: every N
//! commits it stores a checkpoint of the head cosigned by a key made for the run (`COSIGNED
//! <size>`: durable), and with `--prune` it then prunes what that checkpoint covers (`PRUNED
//! <floor>`), so the power-cut campaign can cut those moments too.
//!
//! Only in builds with the `test-hooks` feature: shipped binaries cannot write synthetic
//! results. Even there it refuses a data directory holding a ledger it did not create (marked
//! by [`BENCH_MARK`]), so it can never append to a real station's ledger.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use proofline_common::note::{Checkpoint, NoteSigner};
use proofline_common::record::{now_micros, MAX_RECORD_BYTES};
use proofline_common::store::{Access, Entry, Store, StoreOptions};
use proofline_common::writer::{spawn_writer, LedgerHandle, WriterConfig};

use crate::commands::ledger::Failure;
use crate::commands::BenchArgs;

/// File that marks a data directory whose ledger `ledger bench` created.
pub const BENCH_MARK: &str = "BENCH-LEDGER";

/// Makes sure `dir` holds no ledger but a bench ledger, and marks it as one.
fn claim_bench_dir(dir: &std::path::Path) -> Result<(), Failure> {
    let mark = dir.join(BENCH_MARK);
    let ledger = dir.join(proofline_common::store::LEDGER_DIR);
    if ledger.exists() && !mark.exists() {
        return Err(anyhow::anyhow!(
            "{} holds a ledger that ledger bench did not create; it appends synthetic results only to its own",
            dir.display()
        )
        .into());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        &mark,
        b"synthetic results from proofline-agent ledger bench\n",
    )
    .with_context(|| format!("marking {}", mark.display()))?;
    Ok(())
}

pub fn run(args: &BenchArgs) -> Result<(), Failure> {
    if args.batch == 0 {
        return Err(anyhow::anyhow!("--batch must be at least 1").into());
    }
    if args.record_bytes > MAX_RECORD_BYTES {
        return Err(anyhow::anyhow!(
            "--record-bytes {} exceeds the {MAX_RECORD_BYTES}-byte record limit",
            args.record_bytes
        )
        .into());
    }
    let base = proofline_common::synth::base_record_bytes();
    if args.record_bytes < base {
        return Err(anyhow::anyhow!(
            "--record-bytes {} is below the smallest synthetic record ({base} bytes)",
            args.record_bytes
        )
        .into());
    }
    let (signer, origin) = crate::keyfile::load(&args.key)?;
    claim_bench_dir(&args.data_dir)?;
    let (store, report) = Store::open(
        &args.data_dir,
        Access::Write(origin),
        &StoreOptions::default(),
    )
    .with_context(|| format!("opening ledger in {}", args.data_dir.display()))?;
    tracing::info!(
        size = report.head.size,
        boot = report.boot,
        repaired = report.repaired,
        "ledger open"
    );
    let (handle, writer) = spawn_writer(store, WriterConfig::default())?;
    let pad = proofline_common::synth::pad_for(args.record_bytes);
    let mut cosigner = match args.cosign_every {
        0 => None,
        _ => Some(Cosigner::new(signer, args)?),
    };

    let mut latencies = Vec::with_capacity((args.records / args.batch + 1) as usize);
    let start = Instant::now();
    let mut done = 0u64;
    while done < args.records {
        let n = args.batch.min(args.records - done);
        let entries = (done..done + n)
            .map(|i| Entry {
                received_at: now_micros(),
                body: proofline_common::synth::inspection_result(i, pad),
            })
            .collect();
        let t = Instant::now();
        let appended = handle.append_blocking(entries)?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        say(&format!("ACK {}", appended.seqs.end - 1))?;
        done += n;
        if let Some(c) = cosigner.as_mut() {
            c.after_commit(&handle)?;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let head = handle.head();
    drop(handle);
    writer.join();

    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i]
    };
    let summary = serde_json::json!({
        "records": args.records,
        "batch": args.batch,
        "record_bytes": args.record_bytes,
        "commits": latencies.len(),
        "elapsed_s": round3(elapsed),
        "records_per_s": round3(args.records as f64 / elapsed.max(1e-9)),
        "commit_p50_ms": round3(pct(0.50)),
        "commit_p99_ms": round3(pct(0.99)),
        "peak_rss_mib": peak_rss_mib().map(round3),
        "ledger_size": head.size,
        "root": head.root.to_hex(),
    });
    println!("{summary}");
    Ok(())
}

/// What a station does with the hub's answers, without a hub: cosigns its own checkpoints with
/// a key made for the run and stores them (and prunes) through the writer, as the forwarder does.
struct Cosigner {
    station: NoteSigner,
    hub: NoteSigner,
    every: u64,
    prune: Option<usize>,
    commits: u64,
    rt: tokio::runtime::Runtime,
}

impl Cosigner {
    fn new(station: NoteSigner, args: &BenchArgs) -> Result<Cosigner, Failure> {
        let hub =
            NoteSigner::generate("proofline/bench/hub").context("making the run's hub key")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .context("starting a runtime")?;
        Ok(Cosigner {
            station,
            hub,
            every: args.cosign_every,
            prune: args.prune.then_some(args.prune_pages.max(1)),
            commits: 0,
            rt,
        })
    }

    fn after_commit(&mut self, handle: &LedgerHandle) -> Result<(), Failure> {
        self.commits += 1;
        if self.commits % self.every != 0 {
            return Ok(());
        }
        let head = handle.head();
        let cp = Checkpoint {
            origin: handle.origin().to_string(),
            size: head.size,
            root: head.root,
        };
        let mut note = cp.sign(&self.station).context("signing the checkpoint")?;
        let ts = (now_micros() / 1_000_000).max(0) as u64;
        note.push(
            self.hub
                .cosign(&cp.text(), ts)
                .context("cosigning the checkpoint")?,
        );
        say(&format!("COSIGNING {}", cp.size))?;
        self.rt
            .block_on(handle.record_cosigned(note.to_string(), cp.clone()))?;
        say(&format!("COSIGNED {}", cp.size))?;
        if let Some(pages) = self.prune {
            say("PRUNING")?;
            let pruned = self.rt.block_on(handle.prune(i64::MAX, pages))?;
            say(&format!("PRUNED {}", pruned.floor))?;
        }
        Ok(())
    }
}

fn say(line: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .context("writing to stdout")?;
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Peak resident set size of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
