//! `scan-parse` over every vector of `vectors/barcodes.json`, fed on stdin as a technician would.

use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn scan_parse_returns_the_expected_uii_or_error_for_every_vector() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/vectors/barcodes.json"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = v["vectors"].as_array().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_proofline-agent"))
        .arg("scan-parse")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for c in cases {
            // CRLF on every other frame: scanners are configured either way.
            let end = if c["id"].as_str().unwrap().ends_with(['1', '3', '5', '7']) {
                "\r\n"
            } else {
                "\n"
            };
            write!(stdin, "{}{end}", c["input"].as_str().unwrap()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), cases.len());
    for (c, got) in cases.iter().zip(&lines) {
        let id = c["id"].as_str().unwrap();
        match c["expect"].get("error") {
            Some(code) => {
                assert_eq!(got["ok"], false, "{id}: {got}");
                assert_eq!(&got["error"], code, "{id}: {got}");
                assert!(
                    got["detail"].as_str().is_some_and(|d| !d.is_empty()),
                    "{id}: {got}"
                );
            }
            None => {
                assert_eq!(got["ok"], true, "{id}: {got}");
                for (k, want) in c["expect"].as_object().unwrap() {
                    if k != "note" {
                        assert_eq!(&got[k.as_str()], want, "{id}: {k} in {got}");
                    }
                }
            }
        }
    }
}
