//! `config/hub.example.toml` is what `scripts/install.sh` puts in /etc/proofline: it must be
//! valid as shipped, with each setting it leaves out (`#key = ...`) valid once put back, and
//! `check-config` must then complain only about what the machine lacks (key, data directory).

use std::path::{Path, PathBuf};
use std::process::Command;

use proofline_hub::config::{BrokerKind, HubConfig};

const ENVIRONMENT: [&str; 2] = ["hub.key_file", "hub.data_dir"];

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/hub.example.toml")
}

fn example() -> String {
    std::fs::read_to_string(example_path()).unwrap()
}

/// The example with every setting left out put back: `#key = ...` and `#[table]` lines lose
/// their `#`; prose comments (`# ...`) stay.
fn everything_put_back(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '[') => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn parse(text: &str) -> HubConfig {
    let cfg = HubConfig::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
    cfg
}

#[test]
fn the_example_has_no_problems_of_its_own() {
    let cfg = parse(&example());
    assert_eq!(cfg.broker_kind(), Ok(BrokerKind::Embedded));
    assert!(cfg.broker.tls.is_none() && cfg.mqtt.is_none());
    let enrolled = cfg.enrolled().unwrap();
    assert_eq!(enrolled.len(), 1);
    assert_eq!(
        enrolled[0].origin.as_str(),
        "proofline/plant-1/flow-bench-01"
    );
    for p in cfg.environment_problems() {
        assert!(ENVIRONMENT.contains(&p.path.as_str()), "{p}");
    }
}

#[test]
fn every_setting_the_example_leaves_out_is_valid_too() {
    let all = everything_put_back(&example());
    let mut cfg = parse(&all);
    assert_eq!(cfg.broker_kind(), Ok(BrokerKind::External), "{all}");
    let mqtt = cfg.mqtt.clone().unwrap();
    let tls = mqtt.tls.as_ref().unwrap();
    assert!(tls.client_cert_file.is_some() && tls.client_key_file.is_some());
    assert!(mqtt.username.is_some() && mqtt.password_file.is_some());
    assert_eq!(cfg.client_mqtt().broker, mqtt.broker);

    // The embedded broker with its TLS listener: [mqtt] is then refused, so it goes.
    assert!(cfg.broker.tls.is_some());
    cfg.broker.kind = "embedded".into();
    cfg.mqtt = None;
    assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
}

/// Runs `proofline-hub check-config --config <path>`: exit success, stdout, stderr.
fn check_config(path: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_proofline-hub"))
        .args(["check-config", "--config"])
        .arg(path)
        .env_remove("PROOFLINE_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_wants_only_the_key_and_data_directory_of_the_example() {
    let (ok, _, err) = check_config(&example_path());
    let named: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.split_once(": ").map(|(p, _)| p))
        .collect();
    if !ok {
        assert!(!named.is_empty(), "{err}");
    }
    for p in &named {
        assert!(ENVIRONMENT.contains(p), "{err}");
    }

    // With a hub key for the site and the data directory, it passes as shipped.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("hub.key");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    proofline_common::keyfile::generate(&proofline_common::Origin::hub("plant-1").unwrap(), &key)
        .unwrap();
    let text = example();
    let mut local = text.clone();
    for (from, to) in [
        ("data_dir = \"/var/lib/proofline-hub\"", &data),
        ("key_file = \"/etc/proofline/hub.key\"", &key),
    ] {
        assert!(local.contains(from), "the example no longer has {from}");
        let key_name = from.split(' ').next().unwrap();
        local = local.replacen(from, &format!("{key_name} = \"{}\"", to.display()), 1);
    }
    let path = dir.path().join("hub.toml");
    std::fs::write(&path, &local).unwrap();
    let (ok, out, err) = check_config(&path);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("ok: ") && out.contains("1 enrolled agent(s)"),
        "{out}"
    );
}
