//! Station keys over their life, as an administrator runs it: `agent enroll`, a key changed
//! behind the hub's back, `agent rotate`, `agent remove`, each while the hub runs, each in the
//! hub's ledger, and `ledger verify` clean after it all.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use proofline_common::Origin;

const HUB_BIN: &str = env!("CARGO_BIN_EXE_proofline-hub");
const ID: &str = "station-k";

fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(HUB_BIN).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A new key for the station, in place of its key file (the station's next start uses it).
fn new_station_key(plant: &Plant) -> String {
    let path = plant.dir.join(format!("{ID}.key"));
    let _ = std::fs::remove_file(&path);
    let origin = Origin::parse(&format!("proofline/{SITE}/{ID}")).unwrap();
    proofline_common::keyfile::generate(&origin, &path)
        .unwrap()
        .verifier()
        .to_string()
}

async fn gone(path: &Path) -> bool {
    until(Duration::from_secs(15), || async { !path.exists() }).await
}

/// Shown: a changed key in an enrollment file silently replaced a station's key, and a station
/// could not be removed without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_enrolled_rotated_and_removed_on_record_and_never_changed_behind_the_back() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let config = dir.path().join("hub.toml");
    std::fs::write(&config, plant.hub_toml(&[], None, 0)).unwrap();
    let config_arg = config.to_str().unwrap();
    let key = plant.station_key(ID).verifier().to_string();
    let (ok, out) = cli(&[
        "agent",
        "enroll",
        "--config",
        config_arg,
        "--agent-id",
        ID,
        "--key",
        &key,
    ]);
    assert!(ok, "{out}");
    let hub = Hub::start(&std::fs::read_to_string(&config).unwrap()).await;
    let broker = plant.broker();
    let mut s = Station::start(&plant, ID, plant.hub_section(&broker, 1));
    s.produce(5, 5).await;
    s.wait_cosigned(Duration::from_secs(20)).await;

    // Behind the hub's back: refused and alerted; the station goes on with its key.
    let enrolled = plant.hub_data.join("enrolled").join(format!("{ID}.key"));
    let stranger = proofline_common::note::NoteSigner::generate(&format!("proofline/{SITE}/{ID}"))
        .unwrap()
        .verifier();
    std::fs::write(&enrolled, format!("{stranger}\n")).unwrap();
    let a = wait_alert(hub.api, "key_changed", ID, Duration::from_secs(15)).await;
    assert!(a.is_some(), "a changed key is alerted");
    s.produce(5, 5).await;
    s.wait_cosigned(Duration::from_secs(20)).await;
    assert_eq!(hub_size(hub.api, ID).await, 10);
    s.stop().await;

    // Rotation: the hub carries it out and the station signs with its new key.
    let new_key = new_station_key(&plant);
    let (ok, out) = cli(&[
        "agent",
        "rotate",
        "--config",
        config_arg,
        "--agent-id",
        ID,
        "--key",
        &new_key,
    ]);
    assert!(ok, "{out}");
    let request = plant.hub_data.join("enrolled").join(format!("{ID}.rotate"));
    assert!(gone(&request).await, "the rotation is carried out");
    assert_eq!(std::fs::read_to_string(&enrolled).unwrap().trim(), new_key);
    let mut s = Station::start(&plant, ID, plant.hub_section(&broker, 1));
    s.produce(5, 5).await;
    s.wait_cosigned(Duration::from_secs(20)).await;
    assert_eq!(hub_size(hub.api, ID).await, 15);

    // Removal without a restart: nothing more is taken, nothing witnessed is lost.
    let (ok, out) = cli(&["agent", "remove", "--config", config_arg, "--agent-id", ID]);
    assert!(ok, "{out}");
    assert!(gone(&enrolled).await, "the enrollment is moved away");
    assert!(plant
        .hub_data
        .join("enrolled/removed")
        .join(format!("{ID}.key"))
        .exists());
    s.produce(5, 5).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(*s.cosigned.borrow(), 15);
    s.stop().await;
    let (ok, out) = cli(&["agent", "remove", "--config", config_arg, "--agent-id", ID]);
    assert!(!ok && out.contains("not enrolled"), "{out}");
    hub.stop().await;

    // All of it is in the hub's ledger, and the ledgers verify with the keys on record.
    let codes = alarms(&plant.hub_data);
    for want in [
        "hub.station_enrolled",
        "witness.key_changed",
        "hub.station_key_rotated",
        "hub.station_removed",
    ] {
        assert!(codes.iter().any(|(c, _)| c == want), "{want} in {codes:?}");
    }
    let rotated = &codes
        .iter()
        .find(|(c, _)| c == "hub.station_key_rotated")
        .unwrap()
        .1;
    assert!(
        rotated.contains(&key) && rotated.contains(&new_key),
        "{rotated}"
    );
    let data = plant.hub_data.to_str().unwrap();
    let (ok, out) = cli(&[
        "ledger",
        "verify",
        "--data-dir",
        data,
        "--config",
        config_arg,
    ]);
    assert!(ok, "{out}");
}
