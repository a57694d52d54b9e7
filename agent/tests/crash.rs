//! Crash test: `ledger bench` is SIGKILLed at random moments, the ledger is reopened each time,
//! and DESIGN §2's invariants are checked:
//! I1 it opens (or fails with a classified error), I2 the chain verifies from genesis,
//! I3 every acknowledged record is present and byte-identical, I4 every batch is all there or
//! not there.
//!
//! `PROOFLINE_CRASH_KILLS` sets the number of kills (default 24); `PROOFLINE_CRASH_SEED` replays
//! a run (the seed is printed).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proofline_common::hash::{leaf_hash, Hash};
use proofline_common::record::{Body, Record};
use proofline_common::store::{Access, Store, StoreError, StoreOptions, VerifyScope};

use proofline_tests::seeded::{env_u64, seed, Rng};

const BIN: &str = env!("CARGO_BIN_EXE_proofline-agent");

/// Reopens read-only with a full verify and returns every record's leaf, or None when no
/// ledger was created yet.
fn reopen(dir: &Path) -> Option<(Vec<Hash>, Vec<Vec<u8>>)> {
    let opts = StoreOptions {
        verify: VerifyScope::Full,
        ..StoreOptions::default()
    };
    match Store::open(dir, Access::Read, &opts) {
        Ok((store, report)) => {
            let recs: Vec<Vec<u8>> = store
                .reader()
                .range(0..report.head.size)
                .map(|r| r.expect("record reads").1)
                .collect();
            assert_eq!(
                recs.len() as u64,
                report.head.size,
                "I2: records contiguous to the head"
            );
            Some((recs.iter().map(|b| leaf_hash(b)).collect(), recs))
        }
        Err(StoreError::NoLedger(_)) => None,
        Err(e) => panic!("I1/I2: ledger does not open after a crash: {e}"),
    }
}

#[test]
fn sigkilled_bench_never_loses_or_alters_an_acknowledged_record() {
    let kills = env_u64("PROOFLINE_CRASH_KILLS").unwrap_or(24);
    let seed = seed("PROOFLINE_CRASH_SEED");
    println!("crash test: {kills} kills, seed {seed}");
    let mut rng = Rng(seed);

    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("agent.key");
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let st = Command::new(BIN)
        .args(["keygen", "--origin", "proofline/plant-1/crash", "--out"])
        .arg(&key)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());

    // Leaves of every record seen after earlier crashes: they must never change.
    let mut known: Vec<Hash> = Vec::new();
    let mut acked_total = 0u64;
    for round in 0..kills {
        let batch = [1, 3, 10, 50][rng.range(0, 4) as usize];
        let mut child = Command::new(BIN)
            .args([
                "ledger",
                "bench",
                "--records",
                "10000000",
                "--batch",
                &batch.to_string(),
            ])
            .arg("--data-dir")
            .arg(&data)
            .arg("--key")
            .arg(&key)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
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
        // Kill at a random moment: one round in five while the ledger opens (verify, repair),
        // the others mid-stream, after the first durable commit.
        let mut acks = Vec::new();
        let delay = if rng.range(0, 5) == 0 {
            let d = Duration::from_millis(rng.range(5, 150));
            std::thread::sleep(d);
            d
        } else {
            let start = Instant::now();
            if let Ok(first) = rx.recv_timeout(Duration::from_secs(60)) {
                acks.push(first);
            }
            std::thread::sleep(Duration::from_millis(rng.range(0, 300)));
            start.elapsed()
        };
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        acks.extend(rx.try_iter());
        let acked: Option<u64> = acks.into_iter().max();

        let Some((leaves, records)) = reopen(&data) else {
            assert!(
                acked.is_none() && known.is_empty(),
                "round {round}: ledger vanished"
            );
            continue;
        };
        // I3: every ACKed seq is present; everything seen before is byte-identical.
        if let Some(a) = acked {
            assert!(
                (leaves.len() as u64) > a,
                "round {round}: ACK {a} but ledger has {}",
                leaves.len()
            );
            acked_total += 1;
        }
        assert!(leaves.len() >= known.len(), "round {round}: ledger shrank");
        assert_eq!(
            &leaves[..known.len()],
            &known[..],
            "round {round}: a committed record changed"
        );

        // I4: this round's synthetic results form whole batches.
        let mut per_boot: BTreeMap<u32, u64> = BTreeMap::new();
        for b in &records[known.len()..] {
            let r = Record::decode(b).unwrap();
            if matches!(r.body(), Body::InspectionResult(_)) {
                *per_boot.entry(r.v1().boot).or_default() += 1;
            }
        }
        for (boot, n) in per_boot {
            assert_eq!(
                n % batch,
                0,
                "round {round}: boot {boot} holds {n} results, batch {batch}"
            );
        }
        known = leaves;
        println!(
            "round {round}: batch {batch}, killed after {} ms, last ACK {:?}, ledger size {}",
            delay.as_millis(),
            acked,
            known.len()
        );
    }
    assert!(
        acked_total * 2 >= kills,
        "too few rounds reached an ACK ({acked_total} of {kills})"
    );
}
