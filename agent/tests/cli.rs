//! The agent's ledger commands run as an operator or auditor would run them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use proofline_tests::tamper;

const BIN: &str = env!("CARGO_BIN_EXE_proofline-agent");
const ORIGIN: &str = "proofline/plant-1/flow-01";

fn agent(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).output().expect("agent runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "agent panicked: {stderr}");
    out
}

fn ok(args: &[&str]) -> String {
    let out = agent(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command expected to fail; returns (exit code, the single stderr line).
fn fails(args: &[&str]) -> (i32, String) {
    let out = agent(args);
    assert!(!out.status.success(), "{args:?} unexpectedly succeeded");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains("WARN")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got {stderr:?}");
    (out.status.code().unwrap(), lines[0].to_owned())
}

struct Station {
    dir: tempfile::TempDir,
    vkey: String,
}

impl Station {
    fn new(origin: &str, records: u64) -> Station {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("agent.key");
        let vkey = ok(&["keygen", "--origin", origin, "--out", s(&key)])
            .trim()
            .to_owned();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        ok(&[
            "ledger",
            "bench",
            "--data-dir",
            s(&dir.path().join("data")),
            "--key",
            s(&key),
            "--records",
            &records.to_string(),
            "--batch",
            "7",
        ]);
        Station { dir, vkey }
    }
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("agent.key")
    }
    fn export(&self) -> Vec<String> {
        ok(&["ledger", "export", "--data-dir", s(&self.data())])
            .lines()
            .map(str::to_owned)
            .collect()
    }
    fn checkpoint_file(&self) -> PathBuf {
        let note = ok(&[
            "ledger",
            "checkpoint",
            "--data-dir",
            s(&self.data()),
            "--key",
            s(&self.key()),
        ]);
        let p = self.dir.path().join("checkpoint.note");
        std::fs::write(&p, note).unwrap();
        p
    }
    fn verify_export(&self, lines: &[String], checkpoint: &Path, vkey: &str) -> Output {
        let p = self.dir.path().join("export.jsonl");
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        agent(&[
            "ledger",
            "verify-export",
            "--file",
            s(&p),
            "--checkpoint",
            s(checkpoint),
            "--pubkey",
            vkey,
        ])
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn rejected(out: &Output, seq: Option<u64>, kind: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "expected a verification failure, got {stderr}"
    );
    assert!(stderr.contains(kind), "expected {kind:?} in {stderr}");
    if let Some(seq) = seq {
        assert!(
            stderr.contains(&format!("seq {seq}:")),
            "expected seq {seq} in {stderr}"
        );
    }
}

#[test]
fn keygen_writes_a_private_key_once_and_prints_the_verifier_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let vkey = ok(&["keygen", "--origin", ORIGIN, "--out", s(&key)]);
    let vkey = vkey.trim();
    let parts: Vec<&str> = vkey.split('+').collect();
    assert_eq!(parts[0], ORIGIN);
    assert_eq!(parts[1].len(), 8);
    proofline_common::note::VerifierKey::parse(vkey).unwrap();
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let before = std::fs::read(&key).unwrap();
    let (code, msg) = fails(&["keygen", "--origin", ORIGIN, "--out", s(&key)]);
    assert_eq!(code, 1);
    assert!(msg.contains("refusing to overwrite"), "{msg}");
    assert_eq!(std::fs::read(&key).unwrap(), before);
    let (_, msg) = fails(&[
        "keygen",
        "--origin",
        "plant-1/flow",
        "--out",
        s(&dir.path().join("x")),
    ]);
    assert!(msg.contains("invalid origin"), "{msg}");
}

#[test]
fn bench_prints_an_ack_per_commit_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    ok(&["keygen", "--origin", ORIGIN, "--out", s(&key)]);
    let out = ok(&[
        "ledger",
        "bench",
        "--data-dir",
        s(dir.path()),
        "--key",
        s(&key),
        "--records",
        "25",
        "--batch",
        "10",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..3], ["ACK 9", "ACK 19", "ACK 24"]);
    let summary: serde_json::Value = serde_json::from_str(lines[3]).unwrap();
    assert_eq!(summary["records"], 25);
    assert_eq!(summary["commits"], 3);
    assert!(summary["records_per_s"].as_f64().unwrap() > 0.0);
    assert!(
        summary["commit_p99_ms"].as_f64().unwrap() >= summary["commit_p50_ms"].as_f64().unwrap()
    );
}

#[test]
fn verify_summarises_a_sound_ledger() {
    let st = Station::new(ORIGIN, 30);
    let out = ok(&["ledger", "verify", "--data-dir", s(&st.data())]);
    assert_eq!(out.lines().count(), 1);
    assert!(
        out.starts_with("ok: ledger proofline/plant-1/flow-01 size 30 root "),
        "{out}"
    );
    let out = ok(&["ledger", "verify", "--data-dir", s(&st.data()), "--full"]);
    assert!(out.contains("(full)"), "{out}");
}

#[test]
fn export_lines_carry_seq_leaf_exact_bytes_and_body() {
    let st = Station::new(ORIGIN, 12);
    let lines = st.export();
    assert_eq!(lines.len(), 12);
    let v: serde_json::Value = serde_json::from_str(&lines[3]).unwrap();
    assert_eq!(v["seq"], 3);
    assert_eq!(v["leaf"].as_str().unwrap().len(), 64);
    assert!(v["body"]["InspectionResult"]["characteristics"].is_array());
    let part = ok(&[
        "ledger",
        "export",
        "--data-dir",
        s(&st.data()),
        "--from",
        "4",
        "--to",
        "6",
    ]);
    let seqs: Vec<u64> = part
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [4, 5, 6]);
}

#[test]
fn verify_export_accepts_an_untouched_export() {
    let st = Station::new(ORIGIN, 40);
    let cp = st.checkpoint_file();
    let out = st.verify_export(&st.export(), &cp, &st.vkey);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("ok: 40 records of proofline/plant-1/flow-01"),
        "{stdout}"
    );
    // The verifier key may also be given as a file.
    let kf = st.dir.path().join("vkey");
    std::fs::write(&kf, format!("{}\n", st.vkey)).unwrap();
    assert!(st.verify_export(&st.export(), &cp, s(&kf)).status.success());
}

#[test]
fn verify_export_names_each_tampering() {
    let st = Station::new(ORIGIN, 40);
    let cp = st.checkpoint_file();
    let clean = st.export();

    let mut l = clean.clone();
    tamper::modify_record(&mut l, 13).unwrap();
    rejected(&st.verify_export(&l, &cp, &st.vkey), Some(13), "modified");

    let mut l = clean.clone();
    tamper::remove(&mut l, 21).unwrap();
    rejected(&st.verify_export(&l, &cp, &st.vkey), Some(21), "missing");

    let mut l = clean.clone();
    tamper::swap(&mut l, 30, 31).unwrap();
    rejected(&st.verify_export(&l, &cp, &st.vkey), Some(30), "reordered");

    let mut l = clean.clone();
    tamper::truncate(&mut l, 35);
    rejected(&st.verify_export(&l, &cp, &st.vkey), Some(35), "truncated");

    let other = Station::new("proofline/plant-1/flow-02", 40);
    let mut l = clean.clone();
    tamper::splice(&mut l, 10, &other.export()[10..13]).unwrap();
    rejected(
        &st.verify_export(&l, &cp, &st.vkey),
        Some(10),
        "foreign origin",
    );

    // The other station's checkpoint (another key) does not verify under this station's key,
    // and this checkpoint does not verify under the other station's key.
    rejected(
        &st.verify_export(&clean, &other.checkpoint_file(), &st.vkey),
        None,
        "bad signature",
    );
    rejected(
        &st.verify_export(&clean, &cp, &other.vkey),
        None,
        "bad signature",
    );
}

#[test]
fn bad_input_gets_one_line_and_a_nonzero_exit() {
    let st = Station::new(ORIGIN, 5);
    let cp = st.checkpoint_file();
    let tmp = st.dir.path();

    let (code, msg) = fails(&["ledger", "verify", "--data-dir", s(&tmp.join("missing"))]);
    assert_eq!(code, 1);
    assert!(msg.contains("does not exist"), "{msg}");

    let (_, msg) = fails(&[
        "ledger",
        "bench",
        "--data-dir",
        "/proc/1",
        "--key",
        s(&st.key()),
        "--records",
        "1",
    ]);
    assert!(msg.contains("/proc/1"), "{msg}");

    let (_, msg) = fails(&["ledger", "verify", "--data-dir", s(&st.key())]);
    assert!(msg.contains("not a directory"), "{msg}");

    let (_, msg) = fails(&[
        "ledger",
        "checkpoint",
        "--data-dir",
        s(&st.data()),
        "--key",
        s(&tmp.join("nokey")),
    ]);
    assert!(msg.contains("cannot read key file"), "{msg}");

    std::fs::write(tmp.join("garbage.key"), "not a key\n").unwrap();
    let (_, msg) = fails(&[
        "ledger",
        "checkpoint",
        "--data-dir",
        s(&st.data()),
        "--key",
        s(&tmp.join("garbage.key")),
    ]);
    assert!(msg.contains("not a Proofline private key"), "{msg}");

    let other_key = tmp.join("other.key");
    ok(&[
        "keygen",
        "--origin",
        "proofline/plant-1/flow-09",
        "--out",
        s(&other_key),
    ]);
    let (_, msg) = fails(&[
        "ledger",
        "checkpoint",
        "--data-dir",
        s(&st.data()),
        "--key",
        s(&other_key),
    ]);
    assert!(msg.contains("signs for proofline/plant-1/flow-09"), "{msg}");
    let (_, msg) = fails(&[
        "ledger",
        "bench",
        "--data-dir",
        s(&st.data()),
        "--key",
        s(&other_key),
        "--records",
        "1",
    ]);
    assert!(
        msg.contains("belongs to proofline/plant-1/flow-01"),
        "{msg}"
    );

    let mut lines = st.export();
    lines[2] = "{\"seq\": 2, garbage".into();
    let out = st.verify_export(&lines, &cp, &st.vkey);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3"));

    std::fs::write(tmp.join("garbage.note"), "this is not a checkpoint\n").unwrap();
    let out = st.verify_export(&st.export(), &tmp.join("garbage.note"), &st.vkey);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("checkpoint file"));

    let out = st.verify_export(&st.export(), &cp, "nonsense+key");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("verifier key"));

    let (_, msg) = fails(&[
        "ledger",
        "bench",
        "--data-dir",
        s(&st.data()),
        "--key",
        s(&st.key()),
        "--records",
        "1",
        "--record-bytes",
        "100000",
    ]);
    assert!(msg.contains("record limit"), "{msg}");
    let (_, msg) = fails(&[
        "ledger",
        "bench",
        "--data-dir",
        s(&st.data()),
        "--key",
        s(&st.key()),
        "--records",
        "1",
        "--record-bytes",
        "10",
    ]);
    assert!(msg.contains("smallest synthetic record"), "{msg}");
}

#[test]
fn verify_names_damage_in_the_store() {
    let st = Station::new(ORIGIN, 20);
    // Damage the ledger the way a disk editor would: drop the page of records from seq 7
    // (the bench commits batches of 7).
    {
        let db = sled::Config::new()
            .path(st.data().join("ledger"))
            .segment_size(1 << 20)
            .flush_every_ms(None)
            .open()
            .unwrap();
        let mut k = vec![b'p'];
        k.extend_from_slice(&7u64.to_be_bytes());
        assert!(db.remove(k).unwrap().is_some());
        db.flush().unwrap();
    }
    let (code, msg) = fails(&["ledger", "verify", "--data-dir", s(&st.data())]);
    assert_eq!(code, 3);
    assert!(msg.contains("seq 7: missing"), "{msg}");
}

#[test]
fn check_config_accepts_the_example_and_lists_every_problem_of_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("agent.key");
    ok(&[
        "keygen",
        "--origin",
        "proofline/plant-1/flow-bench-01",
        "--out",
        s(&key),
    ]);
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/agent.example.toml"
    ))
    .unwrap();
    // The example's TLS files, as PEM files here.
    let mut local = example
        .replace("/var/lib/proofline-agent", s(dir.path()))
        .replace("/etc/proofline/agent.key", s(&key));
    for f in ["plant-ca.pem", "flow-bench-01.crt", "flow-bench-01.key.pem"] {
        let p = dir.path().join(f);
        std::fs::write(&p, "-----BEGIN CERTIFICATE-----\n").unwrap();
        local = local.replace(&format!("/etc/proofline/{f}"), s(&p));
    }
    let good = dir.path().join("agent.toml");
    std::fs::write(&good, &local).unwrap();
    let out = ok(&["check-config", "--config", s(&good)]);
    assert!(out.starts_with("ok: "), "{out}");
    assert!(out.contains("5 source(s)"), "{out}");

    let broken = local
        .replace("lower = 60.14", "lower = 64.0")
        .replace("keep_alive_secs = 10", "keep_alive_secs = 20")
        .replace("agent_id = \"flow-bench-01\"", "agent_id = \"flow bench\"");
    let bad = dir.path().join("broken.toml");
    std::fs::write(&bad, broken).unwrap();
    let out = agent(&["check-config", "--config", s(&bad)]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for path in [
        "station.site/agent_id",
        "source[0].point[0].upper",
        "source[0].point[0].nominal",
        "source[4].keep_alive_secs",
    ] {
        assert!(
            stderr.contains(&format!("  {path}: ")),
            "{path} missing in {stderr}"
        );
    }

    std::fs::write(
        &bad,
        local.replace("poll_interval_ms = 100", "poll_interval_ms = \"fast\""),
    )
    .unwrap();
    let out = agent(&["check-config", "--config", s(&bad)]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("poll_interval_ms") && stderr.contains("line"),
        "{stderr}"
    );
}
