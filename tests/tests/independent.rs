//! A ledger built by the real store, checked by implementations Proofline did not write:
//! the checkpoint root against `ct-merkle` (RFC 6962/9162) over the exported record bytes, and
//! the checkpoint signature with `signed_note` (a port of Go's `sumdb/note`).

use base64::Engine;
use ct_merkle::mem_backed_tree::MemoryBackedTree;
use proofline_common::note::{Checkpoint, Note};
use proofline_tests::fixtures::ledger;
use signed_note::{StandardVerifier, VerifierList};

#[test]
fn checkpoint_root_equals_an_independent_rfc9162_root_over_the_export() {
    let dir = tempfile::tempdir().unwrap();
    for n in [1u64, 2, 7, 64, 100, 333] {
        let sub = dir.path().join(n.to_string());
        std::fs::create_dir(&sub).unwrap();
        let l = ledger(&sub, "proofline/plant-1/flow-01", n).unwrap();
        let cp = Checkpoint::parse(&Note::parse(&l.checkpoint).unwrap().text).unwrap();
        let mut tree = MemoryBackedTree::<sha2_011::Sha256, Vec<u8>>::new();
        for line in &l.lines {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v["record"].as_str().unwrap())
                .unwrap();
            tree.push(bytes);
        }
        assert_eq!(cp.size, n);
        assert_eq!(
            tree.root().as_bytes().as_slice(),
            cp.root.as_bytes(),
            "size {n}"
        );
    }
}

#[test]
fn checkpoint_signature_verifies_with_an_independent_note_implementation() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger(dir.path(), "proofline/plant-1/flow-01", 10).unwrap();
    let v = StandardVerifier::new(&l.signer.verifier().to_string()).unwrap();
    let note = signed_note::Note::from_bytes(l.checkpoint.as_bytes()).unwrap();
    let (ok, _) = note.verify(&VerifierList::new(vec![Box::new(v)])).unwrap();
    assert_eq!(ok.len(), 1);
}
