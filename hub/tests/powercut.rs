//! Power-cut campaign for the hub's witness store: a real hub process (embedded broker) keeps
//! its data directory on a file system that loses power on command (`proofline_tests::powercut`:
//! every write not fsynced, and every create, rename or unlink whose directory was not fsynced,
//! is dropped, wholly or torn at 4 KiB pages) while two stations produce and forward steadily.
//! The power is cut at random moments (while the hub starts and catches up, or mid-stream),
//! the hub's machine "reboots" (the durable state alone is mounted), the store is verified
//! offline as `proofline-hub ledger verify --config` does, and the hub starts again on it.
//!
//! After every cut: the hub store opens and verifies with the stations' and the hub's keys
//! (I1, I2); for each station, every record the hub had cosigned before the cut (the station
//! holds that cosignature) is in the hub's store, byte-identical to the station's own (I3);
//! and the witnessed size is a size the station once sent a checkpoint for, so no batch is
//! half there (I4: the verify checks the stored root against the cosigned checkpoint).
//!
//! A cosignature reaching a station is a promise that the hub's commit was durable: after a cut
//! every operation on the mount fails, so no commit completes afterwards, and an ack the hub
//! sends later is one whose commit finished before the cut.
//!
//! `PROOFLINE_POWERCUT_CUTS` sets the number of cuts (default 8); `PROOFLINE_POWERCUT_SEED`
//! replays the moments. Skips with the reason when FUSE or fusepy is missing.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use proofline_common::store::{Access, Store, StoreOptions};
use proofline_hub::verify::Keys;
use proofline_tests::powercut::{sync_dir, Cut, PowerCut};
use proofline_tests::seeded::{env_u64, seed, Rng};
use tokio::process::{Child, Command};

const STATIONS: [&str; 2] = ["flow-bench-01", "torque-01"];

fn start_hub(cfg: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_proofline-hub"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("PROOFLINE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Every record a station holds, from seq 0 to `size`.
fn station_bytes(st: &Station, size: u64) -> Vec<Vec<u8>> {
    st.ledger
        .reader()
        .range(0..size)
        .map(|r| r.unwrap().1)
        .collect()
}

/// After a reboot: verifies the hub store with the plant's keys and checks I3 for each station
/// (`acked`: the size its last cosignature covered). Returns each station's witnessed size.
fn check_store(
    hub_data: &Path,
    keys: &Keys,
    stations: &[Station],
    acked: &[u64],
    what: &str,
    findings: &mut Vec<String>,
) -> Vec<u64> {
    let report = match proofline_hub::verify::verify(hub_data, Some(keys)) {
        Ok(r) => r,
        Err(e) => {
            findings.push(format!("{what}: the hub store does not verify: {e}"));
            return vec![0; stations.len()];
        }
    };
    let (store, _) = match Store::open(hub_data, Access::Read, &StoreOptions::default()) {
        Ok(s) => s,
        Err(e) => {
            findings.push(format!("{what}: the hub store does not open: {e}"));
            return vec![0; stations.len()];
        }
    };
    let witnessed = store.witness_store();
    let mut sizes = Vec::new();
    for (st, &acked) in stations.iter().zip(acked) {
        let size = report
            .agents
            .iter()
            .find(|a| a.agent_id == st.agent_id)
            .map_or(0, |a| a.size);
        sizes.push(size);
        if size < acked {
            findings.push(format!(
                "{what}: {} was cosigned up to {acked} but the hub holds {size}",
                st.agent_id
            ));
            continue;
        }
        if size == 0 {
            continue;
        }
        let ledger = witnessed.open(&st.agent_id).unwrap();
        let held: Vec<Vec<u8>> = ledger
            .reader()
            .range(0..size)
            .map(|r| r.unwrap().1)
            .collect();
        if held != station_bytes(st, size) {
            findings.push(format!(
                "{what}: {}: the hub's records differ from the station's",
                st.agent_id
            ));
        }
    }
    sizes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_while_the_hub_witnesses_two_stations_lose_nothing_cosigned() {
    let cuts = env_u64("PROOFLINE_POWERCUT_CUTS").unwrap_or(8);
    let seed = seed("PROOFLINE_POWERCUT_SEED");
    println!("hub power-cut campaign: {cuts} cuts, seed {seed}");
    let mut rng = Rng(seed);

    let tmp = tempfile::tempdir().unwrap();
    let Some(mut fs) = PowerCut::mount(&tmp.path().join("fs")) else {
        return;
    };
    let plant_dir = tmp.path().join("plant");
    std::fs::create_dir(&plant_dir).unwrap();
    let mut plant = Plant::new(&plant_dir);
    // The hub's data directory lives on the power-cut file system, made durable by the test as
    // systemd's StateDirectory= would have it; its credentials are issued into it.
    plant.hub_data = fs.root().join("hub");
    std::fs::create_dir(&plant.hub_data).unwrap();
    sync_dir(fs.root()).unwrap();
    let api_port = free_port();
    let cfg = plant_dir.join("hub.toml");
    std::fs::write(&cfg, plant.hub_toml(&STATIONS, None, api_port)).unwrap();
    let (signer, _) = proofline_common::keyfile::load(&plant.hub_key).unwrap();
    let keys = Keys {
        enrolled: STATIONS
            .iter()
            .map(|id| (id.to_string(), plant.station_key(id).verifier()))
            .collect(),
        cosigner: signer.cosignature_verifier(),
    };
    let log = plant_dir.join("hub.log");
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], api_port));

    let stations: Vec<Station> = STATIONS
        .iter()
        .map(|id| Station::start(&plant, id, plant.hub_section(&plant.broker(), 1)))
        .collect();
    // Steady production: each station a few results at a time, every few milliseconds.
    let stop = tokio_util::sync::CancellationToken::new();
    let producers: Vec<_> = stations
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let ledger = st.ledger.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    let k = 1 + (n % [3, 7][i]);
                    let entries = (0..k)
                        .map(|j| proofline_common::store::Entry {
                            received_at: proofline_common::record::now_micros(),
                            body: proofline_common::synth::inspection_result(n + j, 64),
                        })
                        .collect();
                    ledger.append(entries).await.unwrap();
                    n += k;
                    tokio::time::sleep(Duration::from_millis(5 + 4 * i as u64)).await;
                }
            })
        })
        .collect();

    let mut findings = Vec::new();
    let mut witnessed = vec![0u64; STATIONS.len()];
    let (mut mid_stream, mut starting) = (0u64, 0u64);
    for round in 0..cuts {
        let mut hub = start_hub(&cfg, &log);
        let t0 = Instant::now();
        // One round in three cuts while the hub opens its store, starts and catches up; the
        // others once both stations have had something new cosigned, some time later.
        let early = rng.range(0, 3) == 0;
        if early {
            starting += 1;
            tokio::time::sleep(Duration::from_millis(rng.range(20, 1500))).await;
        } else {
            mid_stream += 1;
            let before: Vec<u64> = stations.iter().map(|s| *s.cosigned.borrow()).collect();
            let progressed = until(Duration::from_secs(60), || {
                let now: Vec<u64> = stations.iter().map(|s| *s.cosigned.borrow()).collect();
                let before = before.clone();
                async move { now.iter().zip(&before).all(|(n, b)| n > b) }
            })
            .await;
            assert!(
                progressed,
                "round {round}: the stations got nothing cosigned within 60 s; see {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(rng.range(0, 2000))).await;
        }
        let how = if rng.range(0, 2) == 0 {
            Cut::Whole
        } else {
            Cut::Torn {
                seed: rng.next_u64() >> 1,
                keep: 0.5,
            }
        };
        let at = t0.elapsed();
        let cut = tokio::task::block_in_place(|| fs.cut(how));
        hub.start_kill().unwrap(); // the machine is off: nothing runs on
        hub.wait().await.unwrap();
        // Every cosignature a station holds now was sent after a durable commit before the cut.
        let acked: Vec<u64> = stations.iter().map(|s| *s.cosigned.borrow()).collect();
        tokio::task::block_in_place(|| fs.reboot());
        let what = format!(
            "round {round} (seed {seed}): cut {how:?} after {} ms{}, cosigned {acked:?}, {cut:?}",
            at.as_millis(),
            if early { " (starting)" } else { "" }
        );
        let sizes = tokio::task::block_in_place(|| {
            check_store(
                &plant.hub_data,
                &keys,
                &stations,
                &acked,
                &what,
                &mut findings,
            )
        });
        for (w, s) in witnessed.iter_mut().zip(&sizes) {
            *w = (*w).max(*s);
        }
        println!("{what}: hub holds {sizes:?}");
        // The API answers only while the hub runs; make sure the port is free again.
        assert!(
            until(Duration::from_secs(10), || async move {
                tokio::net::TcpStream::connect(api).await.is_err()
            })
            .await
        );
    }

    // Finally the hub runs on, catches up with everything and verifies clean.
    let mut hub = start_hub(&cfg, &log);
    stop.cancel();
    for p in producers {
        p.await.unwrap();
    }
    let mut stations = stations;
    for st in &mut stations {
        st.wait_cosigned(Duration::from_secs(60)).await;
    }
    let heads: Vec<u64> = stations.iter().map(|s| s.ledger.head().size).collect();
    assert!(
        until(Duration::from_secs(30), || async {
            let mut all = true;
            for (id, h) in STATIONS.iter().zip(&heads) {
                all &= hub_size(api, id).await >= *h;
            }
            all
        })
        .await
    );
    hub.start_kill().unwrap();
    hub.wait().await.unwrap();
    let sizes = tokio::task::block_in_place(|| {
        check_store(
            &plant.hub_data,
            &keys,
            &stations,
            &heads,
            "after the campaign",
            &mut findings,
        )
    });
    println!(
        "hub power-cut campaign: {cuts} cuts ({starting} while starting, {mid_stream} mid-stream), stations at {heads:?}, hub holds {sizes:?}, {} findings",
        findings.len()
    );
    for st in stations {
        st.stop().await;
    }
    assert!(
        findings.is_empty(),
        "cosigned records lost or a hub store that does not open after a power cut:\n{}",
        findings.join("\n")
    );
}
