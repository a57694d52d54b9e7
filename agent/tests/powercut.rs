//! Power-cut campaign: `ledger bench` runs on a file system that loses power on command
//! (`proofline_tests::powercut`: every write not fsynced, and every create, rename or unlink
//! whose directory was not fsynced, is dropped, wholly or torn at 4 KiB pages). The power is cut
//! at random moments, the machine "reboots" (the durable state alone is mounted) and the ledger
//! is reopened with a full verify. After every cut DESIGN §2's invariants must hold:
//! I1 it opens (or fails with a classified error), I2 the chain verifies from genesis,
//! I3 every acknowledged record is present and byte-identical, I4 every batch is all there or
//! not there.
//!
//! Two campaigns: plain appends (batch 1, 10, 100), and appends with a cosigned checkpoint
//! stored every few commits and the records it covers pruned, cut while appending, while the
//! cosigned checkpoint is stored and while pruning. There, after every cut, the cosigned
//! checkpoint whose storing was acknowledged (`COSIGNED`) is there (or a later one), nothing at
//! or above the last cosigned size is pruned, and every record from the pruning floor up is
//! present, byte-identical and verifies.
//!
//! A printed `ACK` is a promise that the commit was durable. After a cut every operation on the
//! mount fails, so no commit can complete afterwards: every ACK the bench printed, even one read
//! after the cut, was made durable before it.
//!
//! `PROOFLINE_POWERCUT_CUTS` sets the number of cuts (default 12); `PROOFLINE_POWERCUT_SEED`
//! replays a run (the seed is printed); `PROOFLINE_POWERCUT_KEEP=DIR` keeps a copy of every
//! data directory whose ledger did not open. Skips with the reason when FUSE or fusepy is missing.

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

use proofline_tests::seeded::{env_u64, seed, Rng};

const BIN: &str = env!("CARGO_BIN_EXE_proofline-agent");

/// A ledger as it reopened after a reboot.
struct Reopened {
    /// First seq stored (records below were pruned).
    floor: u64,
    /// The leaf and bytes of every record from the floor, in seq order.
    leaves: Vec<Hash>,
    records: Vec<Vec<u8>>,
    /// Size of the stored cosigned checkpoint.
    cosigned: Option<u64>,
}

impl Reopened {
    fn size(&self) -> u64 {
        self.floor + self.leaves.len() as u64
    }
}

/// The ledger after a reboot: Ok(None) when there is none, Err with the classified error when it
/// does not open or a record does not read.
fn reopen(dir: &Path) -> Result<Option<Reopened>, String> {
    let opts = StoreOptions {
        verify: VerifyScope::Full,
        ..StoreOptions::default()
    };
    match Store::open(dir, Access::Read, &opts) {
        Ok((store, report)) => {
            let floor = store
                .floor()
                .map_err(|e| format!("the pruning floor does not read: {e}"))?;
            let mut records = Vec::new();
            for r in store.reader().range(floor..report.head.size) {
                records.push(r.map_err(|e| format!("a record does not read: {e}"))?.1);
            }
            if floor + records.len() as u64 != report.head.size {
                return Err(format!(
                    "I2: {} records readable from the floor {floor}, head says {}",
                    records.len(),
                    report.head.size
                ));
            }
            Ok(Some(Reopened {
                floor,
                leaves: records.iter().map(|b| leaf_hash(b)).collect(),
                records,
                cosigned: store.cosigned().map(|c| c.size),
            }))
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

/// What the bench printed, as the campaign reads it.
#[derive(Debug, Clone, Copy)]
enum Said {
    Ack(u64),
    Cosigning,
    Cosigned(u64),
    Pruning,
    Pruned,
}

/// The moment of a round's cut.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Moment {
    /// While the ledger opens (verify, repair, creation).
    Opening,
    /// Mid-stream, some time after the first durable commit.
    Appending,
    /// Right after the bench said it is storing a cosigned checkpoint.
    StoringCosigned,
    /// Right after the bench said it is pruning.
    Pruning,
}

#[derive(Debug, Default)]
struct Heard {
    ack: Option<u64>,
    cosigned: Option<u64>,
    /// The bench had begun storing a cosigned checkpoint and not said it was done.
    storing: bool,
    /// The bench had begun pruning and not said it was done.
    pruning: bool,
}

impl Heard {
    fn take(&mut self, s: Said) {
        match s {
            Said::Ack(n) => self.ack = self.ack.max(Some(n)),
            Said::Cosigning => self.storing = true,
            Said::Cosigned(n) => {
                self.cosigned = self.cosigned.max(Some(n));
                self.storing = false;
            }
            Said::Pruning => self.pruning = true,
            Said::Pruned => self.pruning = false,
        }
    }
}

/// A campaign: `ledger bench` with `extra` arguments, cut at the `moments` (drawn at random).
fn campaign(name: &str, extra: &[&str], moments: &[Moment]) {
    let cuts = env_u64("PROOFLINE_POWERCUT_CUTS").unwrap_or(12);
    let seed = seed("PROOFLINE_POWERCUT_SEED");
    println!("power-cut campaign {name}: {cuts} cuts, seed {seed}");
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

    // The leaf of every record seen so far, by seq (also below a later pruning floor).
    let mut known: Vec<Hash> = Vec::new();
    let mut findings: Vec<String> = Vec::new();
    let (mut acked_rounds, mut opened, mut absent) = (0u64, 0u64, 0u64);
    let mut per_moment: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_batch: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut cosigned_rounds, mut pruned_ledgers) = (0u64, 0u64);
    // Cuts that fell between the bench's word that it began and its word that it was done.
    let (mut inside_store, mut inside_prune) = (0u64, 0u64);
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
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&bench_err).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let num = |s: &str| s.parse::<u64>().expect("a number after the word");
                let said = if let Some(n) = line.strip_prefix("ACK ") {
                    Said::Ack(num(n))
                } else if line.starts_with("COSIGNING ") {
                    Said::Cosigning
                } else if let Some(n) = line.strip_prefix("COSIGNED ") {
                    Said::Cosigned(num(n))
                } else if line == "PRUNING" {
                    Said::Pruning
                } else if line.starts_with("PRUNED ") {
                    Said::Pruned
                } else {
                    continue;
                };
                let _ = tx.send(said);
            }
        });
        // One round in five cuts while the ledger opens; the others at a moment drawn from
        // the rest.
        let moment = if rng.range(0, 5) == 0 {
            Moment::Opening
        } else {
            moments[rng.range(0, moments.len() as u64) as usize]
        };
        let mut heard = Heard::default();
        let start = Instant::now();
        let deadline = start + Duration::from_secs(60);
        let wait_for = |want: fn(Said) -> bool, heard: &mut Heard| {
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(s) => {
                        heard.take(s);
                        if want(s) {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        };
        match moment {
            Moment::Opening => std::thread::sleep(Duration::from_millis(rng.range(5, 400))),
            Moment::Appending => {
                wait_for(|s| matches!(s, Said::Ack(_)), &mut heard);
                std::thread::sleep(Duration::from_millis(rng.range(0, 1500)));
            }
            Moment::StoringCosigned | Moment::Pruning => {
                // Not always the first time: the ledger has grown and been pruned before.
                let times = rng.range(1, 4);
                for _ in 0..times {
                    if moment == Moment::Pruning {
                        wait_for(|s| matches!(s, Said::Pruning), &mut heard);
                    } else {
                        wait_for(|s| matches!(s, Said::Cosigning), &mut heard);
                    }
                }
                // Storing takes about a millisecond on this file system.
                std::thread::sleep(Duration::from_micros(rng.range(0, 500)));
            }
        }
        *per_moment.entry(format!("{moment:?}")).or_default() += 1;
        *per_batch.entry(batch).or_default() += 1;
        let how = if rng.range(0, 2) == 0 {
            Cut::Whole
        } else {
            Cut::Torn {
                seed: rng.next_u64() >> 1,
                keep: 0.5,
            }
        };
        let at = start.elapsed();
        let cut = fs.cut(how);
        child.kill().unwrap(); // the machine is off: nothing runs on
        child.wait().unwrap();
        reader.join().unwrap();
        // Every ACK and COSIGNED printed was durable before the cut (see the module doc).
        for s in rx.try_iter() {
            heard.take(s);
        }
        fs.reboot();
        inside_store += heard.storing as u64;
        inside_prune += heard.pruning as u64;

        let what = format!(
            "round {round} (seed {seed}): batch {batch}, cut {how:?} at {moment:?} after {} ms, last ACK {:?}, last COSIGNED {:?}, {cut:?}",
            at.as_millis(),
            heard.ack,
            heard.cosigned,
        );
        let ledger = match reopen(&data) {
            Ok(Some(l)) => l,
            Ok(None) => {
                absent += 1;
                if heard.ack.is_some() || !known.is_empty() {
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
        let before = findings.len();
        check(&ledger, &known, &heard, &what, &mut findings);
        if heard.cosigned.is_some() {
            cosigned_rounds += 1;
        }
        if ledger.floor > 0 {
            pruned_ledgers += 1;
        }
        if heard.ack.is_some() {
            acked_rounds += 1;
        }
        // I4: this round's synthetic results form whole batches. Where this round's first
        // records were pruned, count from the cosigned size instead: the bench cosigns the head
        // after a commit, so a batch boundary, and nothing at or above it is pruned.
        if findings.len() == before {
            let mut per_boot: BTreeMap<u32, u64> = BTreeMap::new();
            let from = match ledger.cosigned {
                Some(c) if c > known.len() as u64 => c,
                _ => known.len() as u64,
            };
            for b in ledger.records.iter().skip((from - ledger.floor) as usize) {
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
        let first_new = known.len().max(ledger.floor as usize);
        known.resize(first_new, Hash::default());
        known.extend_from_slice(&ledger.leaves[first_new - ledger.floor as usize..]);
        println!(
            "{what}: ledger size {}, floor {}, cosigned {:?}",
            ledger.size(),
            ledger.floor,
            ledger.cosigned
        );
    }
    println!(
        "power-cut campaign {name}: {cuts} cuts, by moment {per_moment:?}, by batch {per_batch:?}, {acked_rounds} with an ACK, {cosigned_rounds} with a COSIGNED, {inside_store} inside storing a cosigned checkpoint, {inside_prune} inside a prune, ledger opened {opened} ({pruned_ledgers} pruned), absent {absent}, {} findings",
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

/// I3 and the pruning floor after one cut: `known` is every leaf seen before it (by seq).
fn check(ledger: &Reopened, known: &[Hash], heard: &Heard, what: &str, findings: &mut Vec<String>) {
    let size = ledger.size();
    if let Some(a) = heard.ack {
        if size <= a {
            findings.push(format!("{what}: ACK {a} but the ledger has {size} records"));
        }
    }
    if size < known.len() as u64 {
        findings.push(format!(
            "{what}: the ledger shrank from {} to {size} records",
            known.len()
        ));
        return;
    }
    let floor = ledger.floor as usize;
    if let Some(at) = (floor..known.len()).find(|&i| ledger.leaves[i - floor] != known[i]) {
        findings.push(format!("{what}: committed record {at} changed"));
    }
    if let Some(c) = heard.cosigned {
        if ledger.cosigned.is_none_or(|s| s < c) {
            findings.push(format!(
                "{what}: COSIGNED {c} but the stored cosigned checkpoint is {:?}",
                ledger.cosigned
            ));
        }
    }
    if ledger.floor > ledger.cosigned.unwrap_or(0) {
        findings.push(format!(
            "{what}: pruned to {} beyond the cosigned size {:?}",
            ledger.floor, ledger.cosigned
        ));
    }
}

#[test]
fn power_cuts_during_ledger_bench_never_lose_an_acknowledged_record() {
    campaign("appends", &[], &[Moment::Appending]);
}

#[test]
fn power_cuts_while_storing_cosigned_checkpoints_and_pruning_lose_nothing_acknowledged() {
    campaign(
        "cosign+prune",
        &["--cosign-every", "5", "--prune", "--prune-pages", "8"],
        &[Moment::Appending, Moment::StoringCosigned, Moment::Pruning],
    );
}
