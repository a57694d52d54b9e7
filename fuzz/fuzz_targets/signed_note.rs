//! Signed notes, checkpoints and keys (C2SP signed-note, tlog-checkpoint, tlog-cosignature): any
//! text gives a value or a reasoned refusal, never a panic, and signature and cosignature checks
//! on any key and note answer without panicking. What parses renders back (`to_string`, `text`)
//! to text that parses to the same value: the hub and the agents store notes as text and parse
//! them again.
//!
//! The first byte picks what the rest is: 0 a note, 1 a checkpoint body, 2 a key, 3 a verifier
//! key line followed by a note.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proofline_common::note::{Checkpoint, Note, NoteSigner, VerifierKey};

fn checkpoint(text: &str) {
    if let Ok(cp) = Checkpoint::parse(text) {
        assert_eq!(Checkpoint::parse(&cp.text()), Ok(cp));
    }
}

fn note(text: &str) -> Option<Note> {
    let n = Note::parse(text).ok()?;
    assert!(!n.signatures.is_empty() && n.signatures.len() <= 100);
    assert_eq!(Note::parse(&n.to_string()).as_ref(), Ok(&n));
    checkpoint(&n.text);
    Some(n)
}

fn key(text: &str) -> Option<VerifierKey> {
    let k = VerifierKey::parse(text).ok()?;
    assert_eq!(VerifierKey::parse(&k.to_string()).as_ref(), Ok(&k));
    let c = k.as_cosignature_verifier();
    assert_eq!(VerifierKey::parse(&c.to_string()).as_ref(), Ok(&c));
    assert_eq!(c.public_key(), k.public_key());
    Some(k)
}

fn private_key(text: &str) {
    if let Ok(s) = NoteSigner::parse(text) {
        let again = NoteSigner::parse(&s.to_private_string()).expect("a rendered key parses");
        assert_eq!(again.public_key(), s.public_key());
        assert_eq!(again.key_id(), s.key_id());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match mode % 4 {
        0 => {
            note(text);
        }
        1 => checkpoint(text),
        2 => {
            key(text);
            private_key(text);
        }
        _ => {
            let (k, n) = text.split_once('\n').unwrap_or((text, ""));
            let (Some(k), parsed) = (key(k), note(n)) else {
                return;
            };
            let _ = Checkpoint::open(n, &k);
            let Some(n) = parsed else { return };
            let plain = k.verify(&n);
            let cosigned = k.verify_cosignature(&n);
            // A cosignature verifier checks only cosignatures: both answers agree for it.
            if k.as_cosignature_verifier() == k {
                assert_eq!(plain.is_ok(), cosigned.is_ok());
            }
        }
    }
});
