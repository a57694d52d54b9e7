//! Offline verification of exports names every kind of tampering with the right seq.

use proofline_common::export::{verify_export, ExportError};
use proofline_common::note::NoteSigner;
use proofline_tests::fixtures::{ledger, Ledger};
use proofline_tests::tamper;

const ORIGIN: &str = "proofline/plant-1/flow-01";

fn fixture(n: u64) -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger(dir.path(), ORIGIN, n).unwrap();
    (dir, l)
}

fn check(l: &Ledger, lines: &[String]) -> Result<u64, ExportError> {
    let text = lines.join("\n") + "\n";
    verify_export(text.as_bytes(), &l.checkpoint, &l.signer.verifier()).map(|r| r.records)
}

fn fault(r: Result<u64, ExportError>) -> (Option<u64>, &'static str, String) {
    match r {
        Err(ExportError::Fault(f)) => (f.seq, f.kind.name(), f.to_string()),
        other => panic!("expected a fault, got {other:?}"),
    }
}

#[test]
fn untouched_export_verifies() {
    let (_d, l) = fixture(40);
    assert_eq!(check(&l, &l.lines).unwrap(), 40);
}

#[test]
fn modified_record_is_named() {
    let (_d, l) = fixture(40);
    let mut lines = l.lines.clone();
    tamper::modify_record(&mut lines, 17).unwrap();
    let (seq, kind, _) = fault(check(&l, &lines));
    assert_eq!((seq, kind), (Some(17), "modified"));
}

#[test]
fn flipped_byte_is_named() {
    let (_d, l) = fixture(40);
    for byte in [0usize, 3, 40, 77, 150] {
        let mut lines = l.lines.clone();
        tamper::flip_record_byte(&mut lines, 9, byte).unwrap();
        let (seq, kind, msg) = fault(check(&l, &lines));
        // A flip in the seq field itself can make the record claim another seq.
        assert!(
            (seq, kind) == (Some(9), "modified") || kind == "missing" || kind == "reordered",
            "byte {byte}: {msg}"
        );
        assert_eq!(seq, Some(9), "byte {byte}: {msg}");
    }
}

#[test]
fn modified_last_record_is_caught_by_the_root() {
    let (_d, l) = fixture(40);
    let mut lines = l.lines.clone();
    tamper::modify_record(&mut lines, 39).unwrap();
    let (_, kind, _) = fault(check(&l, &lines));
    assert_eq!(kind, "root mismatch");
}

#[test]
fn removed_record_is_named_missing() {
    let (_d, l) = fixture(40);
    let mut lines = l.lines.clone();
    tamper::remove(&mut lines, 12).unwrap();
    let (seq, kind, _) = fault(check(&l, &lines));
    assert_eq!((seq, kind), (Some(12), "missing"));
}

#[test]
fn swapped_records_are_named_reordered() {
    let (_d, l) = fixture(40);
    let mut lines = l.lines.clone();
    tamper::swap(&mut lines, 20, 21).unwrap();
    let (seq, kind, _) = fault(check(&l, &lines));
    assert_eq!((seq, kind), (Some(20), "reordered"));
    let mut lines = l.lines.clone();
    tamper::swap(&mut lines, 3, 30).unwrap();
    assert_eq!(fault(check(&l, &lines)).1, "reordered");
}

#[test]
fn duplicated_record_is_named() {
    let (_d, l) = fixture(10);
    let mut lines = l.lines.clone();
    lines.insert(5, lines[4].clone());
    let (seq, kind, _) = fault(check(&l, &lines));
    assert_eq!((seq, kind), (Some(4), "duplicate"));
}

#[test]
fn tail_cut_below_the_checkpoint_is_named_truncated() {
    let (_d, l) = fixture(40);
    let mut lines = l.lines.clone();
    tamper::truncate(&mut lines, 31);
    let (seq, kind, msg) = fault(check(&l, &lines));
    assert_eq!((seq, kind), (Some(31), "truncated"), "{msg}");
    assert_eq!(fault(check(&l, &[])).1, "truncated");
}

#[test]
fn records_spliced_from_another_origin_are_named() {
    let (_d, l) = fixture(40);
    let (_d2, other) = {
        let dir = tempfile::tempdir().unwrap();
        let o = ledger(dir.path(), "proofline/plant-1/flow-02", 40).unwrap();
        (dir, o)
    };
    let mut lines = l.lines.clone();
    tamper::splice(&mut lines, 25, &other.lines[25..28]).unwrap();
    let (seq, kind, msg) = fault(check(&l, &lines));
    assert_eq!((seq, kind), (Some(25), "foreign origin"), "{msg}");
    assert!(msg.contains("flow-02"), "{msg}");
}

#[test]
fn checkpoint_signed_by_another_key_is_refused() {
    let (_d, l) = fixture(10);
    let impostor = NoteSigner::generate(ORIGIN).unwrap();
    let text = l.lines.join("\n") + "\n";
    let r = verify_export(text.as_bytes(), &l.checkpoint, &impostor.verifier());
    let (seq, kind, _) = fault(r.map(|r| r.records));
    assert_eq!((seq, kind), (None, "bad signature"));
    // A checkpoint re-signed by the impostor does not verify under the station's key either.
    let resigned = proofline_common::note::Checkpoint::parse(
        &proofline_common::note::Note::parse(&l.checkpoint)
            .unwrap()
            .text,
    )
    .unwrap()
    .sign(&impostor)
    .unwrap()
    .to_string();
    let r = verify_export(text.as_bytes(), &resigned, &l.signer.verifier());
    assert_eq!(fault(r.map(|r| r.records)).1, "bad signature");
}

#[test]
fn export_longer_than_the_checkpoint_verifies_its_prefix() {
    let (_d, l) = fixture(20);
    // Checkpoint over the first 12 records only.
    let lines12 = &l.lines[..12];
    let mut frontier = proofline_common::chain::ChainState::genesis(ORIGIN);
    for line in lines12 {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD
            .decode(v["record"].as_str().unwrap())
            .unwrap();
        frontier.check(&b).unwrap();
    }
    let cp = proofline_common::note::Checkpoint {
        origin: ORIGIN.into(),
        size: 12,
        root: frontier.root(),
    }
    .sign(&l.signer)
    .unwrap()
    .to_string();
    let text = l.lines.join("\n") + "\n";
    let r = verify_export(text.as_bytes(), &cp, &l.signer.verifier()).unwrap();
    assert_eq!((r.records, r.beyond_checkpoint), (20, 8));
}

#[test]
fn corrupt_lines_and_checkpoints_are_input_errors() {
    let (_d, l) = fixture(5);
    let mut lines = l.lines.clone();
    lines[2] = "{not json".into();
    assert!(matches!(
        check(&l, &lines),
        Err(ExportError::BadLine { line: 3, .. })
    ));
    let mut lines = l.lines.clone();
    lines[1] = r#"{"seq":1,"leaf":"00","record":"***"}"#.into();
    assert!(matches!(
        check(&l, &lines),
        Err(ExportError::BadLine { line: 2, .. })
    ));
    let text = l.lines.join("\n");
    for garbage in ["", "garbage", "a\n\nb\n", "x\n\n\u{2014} k AAAAAAAAAA==\n"] {
        let r = verify_export(text.as_bytes(), garbage, &l.signer.verifier());
        assert!(
            matches!(
                r,
                Err(ExportError::Checkpoint(_)) | Err(ExportError::Fault(_))
            ),
            "{garbage:?}: {r:?}"
        );
    }
}

#[test]
fn every_single_removal_swap_and_edit_is_caught_at_its_seq() {
    let (_d, l) = fixture(24);
    for s in 0..23u64 {
        let mut lines = l.lines.clone();
        tamper::remove(&mut lines, s).unwrap();
        let (seq, kind, _) = fault(check(&l, &lines));
        assert_eq!((seq, kind), (Some(s), "missing"), "remove {s}");

        let mut lines = l.lines.clone();
        tamper::swap(&mut lines, s, s + 1).unwrap();
        let (seq, kind, _) = fault(check(&l, &lines));
        assert_eq!((seq, kind), (Some(s), "reordered"), "swap {s}");

        let mut lines = l.lines.clone();
        tamper::modify_record(&mut lines, s).unwrap();
        let (seq, kind, _) = fault(check(&l, &lines));
        assert_eq!((seq, kind), (Some(s), "modified"), "modify {s}");
    }
}
