//! Power-cut campaign: `ledger bench` runs on a file system that loses power on command
//! (`proofline_tests::powercut`: every write not fsynced, and every create, rename or unlink
//! whose directory was not fsynced, is dropped, wholly or torn at 4 KiB pages). The power is cut
//! at random moments, the machine "reboots" (the durable state alone is mounted) and the ledger
//! is reopened with a full verify. After every cut DESIGN §2's invariants must hold:
//! I1 it opens (or fails with a classified error), I2 the chain verifies from genesis,
//! I3 every acknowledged record is present and byte-identical, I4 every batch is all there or
//! not there.
//!
//! A printed `ACK` is a promise that the commit was durable. After a cut every operation on the
//! mount fails, so no commit can complete afterwards: every ACK the bench printed, even one read
//! after the cut, was made durable before it.
//!
//! `PROOFLINE_POWERCUT_CUTS` sets the number of cuts (default 12); `PROOFLINE_POWERCUT_SEED`
//! replays a run (the seed is printed); `PROOFLINE_POWERCUT_KEEP=DIR` keeps a copy of every
//! data directory whose ledger did not open. Skips with the reason when FUSE or fusepy is missing.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proofline_common::hash::{leaf_hash, Hash};
use proofline_common::record::{Body, Record};
use proofline_common::store::{Access, Store, StoreError, StoreOptions, VerifyScope};
use proofline_tests::powercut::{sync_dir, Cut, PowerCut};

use common::{env_u64, Rng};

const BIN: &str = env!("CARGO_BIN_EXE_proofline-agent");

/// Every record's leaf and bytes, in seq order.
type Records = (Vec<Hash>, Vec<Vec<u8>>);

/// The ledger after a reboot: Ok(None) when there is none, Err with the classified error when it
/// does not open or a record does not read.
fn reopen(dir: &Path) -> Result<Option<Records>, String> {
    let opts = StoreOptions {
        verify: VerifyScope::Full,
        ..StoreOptions::default()
    };
    match Store::open(dir, Access::Read, &opts) {
        Ok((store, report)) => {
            let mut recs = Vec::new();
            for r in store.reader().range(0..report.head.size) {
                recs.push(r.map_err(|e| format!("a record does not read: {e}"))?.1);
            }
            if recs.len() as u64 != report.head.size {
                return Err(format!(
                    "I2: {} records readable, head says {}",
                    recs.len(),
                    report.head.size
                ));
            }
            Ok(Some((recs.iter().map(|b| leaf_hash(b)).collect(), recs)))
        }
        Err(StoreError::NoLedger(_)) => Ok(None),
        Err(e) => Err(format!(
            "I1: does not open ({}): {e}",
            if e.is_corruption() {
                "corruption"
            } else {
                "environment"
            }
        )),
    }
}

/// Copies a directory tree (a ledger that did not open, for a closer look).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn power_cuts_during_ledger_bench_never_lose_an_acknowledged_record() {
    let cuts = env_u64("PROOFLINE_POWERCUT_CUTS").unwrap_or(12);
    let seed = env_u64("PROOFLINE_POWERCUT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    println!("power-cut campaign: {cuts} cuts, seed {seed}");
    let mut rng = Rng(seed);

    let tmp = tempfile::tempdir().unwrap();
    let Some(mut fs) = PowerCut::mount(&tmp.path().join("fs")) else {
        return;
    };
    let key = tmp.path().join("agent.key");
    let st = Command::new(BIN)
        .args(["keygen", "--origin", "proofline/plant-1/powercut", "--out"])
        .arg(&key)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    // The data directory itself is made durable by the test: the program is handed an
    // existing directory, as systemd's StateDirectory= does.
    let data = fs.root().join("data");
    std::fs::create_dir(&data).unwrap();
    sync_dir(fs.root()).unwrap();
    let bench_err = tmp.path().join("bench.stderr");

    let mut known: Vec<Hash> = Vec::new();
    let mut findings: Vec<String> = Vec::new();
    let (mut acked_rounds, mut opened, mut absent) = (0u64, 0u64, 0u64);
    for round in 0..cuts {
        if known.len() > 40_000 {
            // Start a fresh ledger now and then: full verifies stay short, and creating a
            // ledger is a moment worth cutting too.
            std::fs::remove_dir_all(&data).unwrap();
            std::fs::create_dir(&data).unwrap();
            sync_dir(fs.root()).unwrap();
            known.clear();
        }
        let batch = [1u64, 10, 100][rng.range(0, 3) as usize];
        let mut child = Command::new(BIN)
            .args(["ledger", "bench", "--records", "10000000", "--batch"])
            .arg(batch.to_string())
            .arg("--data-dir")
            .arg(&data)
            .arg("--key")
            .arg(&key)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&bench_err).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("ACK ") {
                    let _ = tx.send(n.parse::<u64>().expect("ACK carries a seq"));
                }
            }
        });
        // Cut at a random moment: one round in five while the ledger opens (verify, repair,
        // creation), the others mid-stream, after the first durable commit.
        let start = Instant::now();
        if rng.range(0, 5) == 0 {
            std::thread::sleep(Duration::from_millis(rng.range(5, 400)));
        } else {
            let _ = rx.recv_timeout(Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(rng.range(0, 1500)));
        }
        let how = if rng.range(0, 2) == 0 {
            Cut::Whole
        } else {
            Cut::Torn {
                seed: rng.next() >> 1,
                keep: 0.5,
            }
        };
        let at = start.elapsed();
        let cut = fs.cut(how);
        child.kill().unwrap(); // the machine is off: nothing runs on
        child.wait().unwrap();
        reader.join().unwrap();
        // Every ACK printed was durable before the cut (see the module doc).
        let acked: Option<u64> = rx.try_iter().max();
        fs.reboot();

        let what = format!(
            "round {round} (seed {seed}): batch {batch}, cut {how:?} after {} ms, last ACK {acked:?}, {cut:?}",
            at.as_millis()
        );
        let (leaves, records) = match reopen(&data) {
            Ok(Some(l)) => l,
            Ok(None) => {
                absent += 1;
                if acked.is_some() || !known.is_empty() {
                    findings.push(format!(
                        "{what}: the ledger vanished (it held {} records)",
                        known.len()
                    ));
                }
                known.clear();
                println!("{what}: no ledger");
                continue;
            }
            Err(e) => {
                let bench = std::fs::read_to_string(&bench_err).unwrap_or_default();
                findings.push(format!(
                    "{what}: {e}; bench said: {}",
                    bench.lines().last().unwrap_or("")
                ));
                if let Some(keep) = std::env::var_os("PROOFLINE_POWERCUT_KEEP") {
                    let to = Path::new(&keep).join(format!("round-{round}"));
                    copy_dir(&data, &to);
                    println!("{what}: the data directory is kept in {}", to.display());
                }
                // Start over, so the rest of the campaign still says something.
                let _ = std::fs::remove_dir_all(&data);
                std::fs::create_dir(&data).unwrap();
                sync_dir(fs.root()).unwrap();
                known.clear();
                continue;
            }
        };
        opened += 1;
        let mut ok = true;
        // I3: every ACKed seq is present; everything seen before is byte-identical.
        if let Some(a) = acked {
            acked_rounds += 1;
            if leaves.len() as u64 <= a {
                findings.push(format!(
                    "{what}: ACK {a} but the ledger has {} records",
                    leaves.len()
                ));
                ok = false;
            }
        }
        if leaves.len() < known.len() {
            findings.push(format!(
                "{what}: the ledger shrank from {} to {} records",
                known.len(),
                leaves.len()
            ));
            ok = false;
        } else if leaves[..known.len()] != known[..] {
            let at = (0..known.len()).find(|&i| leaves[i] != known[i]).unwrap();
            findings.push(format!("{what}: committed record {at} changed"));
            ok = false;
        }
        // I4: this round's synthetic results form whole batches.
        if ok {
            let mut per_boot: BTreeMap<u32, u64> = BTreeMap::new();
            for b in &records[known.len()..] {
                let r = Record::decode(b).unwrap();
                if matches!(r.body(), Body::InspectionResult(_)) {
                    *per_boot.entry(r.v1().boot).or_default() += 1;
                }
            }
            for (boot, n) in per_boot {
                if n % batch != 0 {
                    findings.push(format!(
                        "{what}: boot {boot} holds {n} results, not whole batches"
                    ));
                }
            }
        }
        known = leaves;
        println!("{what}: ledger size {}", known.len());
    }
    println!(
        "power-cut campaign: {cuts} cuts, {acked_rounds} with an ACK, ledger opened {opened}, absent {absent}, {} findings",
        findings.len()
    );
    assert!(
        findings.is_empty(),
        "acknowledged records lost or a ledger that does not open after a power cut:\n{}",
        findings.join("\n")
    );
    assert!(
        acked_rounds * 2 >= cuts,
        "too few rounds reached an ACK ({acked_rounds} of {cuts})"
    );
}
