//! Our checkpoints and cosignatures checked by an independent C2SP signed-note implementation
//! (the `signed_note` crate, a port of Go's `golang.org/x/mod/sumdb/note`), and its notes
//! checked by ours.

use ed25519_dalek::{Signature, VerifyingKey};
use proofline_common::hash::leaf_hash;
use proofline_common::note::{Checkpoint, Note, NoteSigner, VerifierKey};
use signed_note::{StandardSigner, StandardVerifier, VerifierList};

fn checkpoint() -> Checkpoint {
    Checkpoint {
        origin: "proofline/plant-1/flow-01".into(),
        size: 1234,
        root: leaf_hash(b"root"),
    }
}

#[test]
fn independent_verifier_accepts_our_checkpoint() {
    let signer = NoteSigner::generate("proofline/plant-1/flow-01").unwrap();
    let note = checkpoint().sign(&signer).unwrap().to_string();
    let v = StandardVerifier::new(&signer.verifier().to_string()).expect("our verifier key parses");
    let parsed = signed_note::Note::from_bytes(note.as_bytes()).expect("our note parses");
    let (verified, _) = parsed
        .verify(&VerifierList::new(vec![Box::new(v)]))
        .expect("our signature verifies");
    assert_eq!(verified.len(), 1);
    assert_eq!(parsed.text(), checkpoint().text().as_bytes());
}

#[test]
fn independent_verifier_rejects_an_altered_checkpoint() {
    let signer = NoteSigner::generate("proofline/plant-1/flow-01").unwrap();
    let note = checkpoint()
        .sign(&signer)
        .unwrap()
        .to_string()
        .replace("\n1234\n", "\n1233\n");
    let v = StandardVerifier::new(&signer.verifier().to_string()).unwrap();
    let parsed = signed_note::Note::from_bytes(note.as_bytes()).unwrap();
    assert!(parsed
        .verify(&VerifierList::new(vec![Box::new(v)]))
        .is_err());
}

#[test]
fn our_private_key_format_is_the_reference_format() {
    let signer = NoteSigner::generate("proofline/plant-1/flow-01").unwrap();
    let theirs =
        StandardSigner::new(&signer.to_private_string()).expect("reference parses our key");
    let text = checkpoint().text();
    let mut n = signed_note::Note::new(text.as_bytes(), &[]).unwrap();
    n.add_sigs(&[&theirs]).unwrap();
    // Ed25519 is deterministic: the reference signature line is byte-identical to ours.
    assert_eq!(
        String::from_utf8(n.to_bytes()).unwrap(),
        checkpoint().sign(&signer).unwrap().to_string()
    );
    let ours = Note::parse(std::str::from_utf8(&n.to_bytes()).unwrap()).unwrap();
    signer.verifier().verify(&ours).unwrap();
}

/// `cosignature/v1` verifier written from c2sp.org/tlog-cosignature on top of the reference
/// note implementation (which does the note parsing and key id matching).
struct CosignatureV1 {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl signed_note::Verifier for CosignatureV1 {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        if sig.len() != 8 + 64 {
            return false;
        }
        let ts = u64::from_be_bytes(sig[..8].try_into().unwrap());
        let mut m = format!("cosignature/v1\ntime {ts}\n").into_bytes();
        m.extend_from_slice(msg);
        let s = Signature::from_bytes(sig[8..].try_into().unwrap());
        self.key.verify_strict(&m, &s).is_ok()
    }
}

#[test]
fn independent_parser_checks_our_cosignature() {
    let agent = NoteSigner::generate("proofline/plant-1/flow-01").unwrap();
    let hub = NoteSigner::generate("proofline/plant-1/hub").unwrap();
    let mut note = checkpoint().sign(&agent).unwrap();
    note.push(hub.cosign(&note.text, 1_790_000_000).unwrap());
    let text = note.to_string();

    let mut typed = vec![0x04];
    typed.extend_from_slice(&hub.public_key());
    let cosig = CosignatureV1 {
        name: hub.name().into(),
        id: signed_note::key_id(hub.name(), &typed),
        key: VerifyingKey::from_bytes(&hub.public_key()).unwrap(),
    };
    let agent_v = StandardVerifier::new(&agent.verifier().to_string()).unwrap();
    let parsed = signed_note::Note::from_bytes(text.as_bytes()).unwrap();
    let (verified, unverified) = parsed
        .verify(&VerifierList::new(vec![Box::new(agent_v), Box::new(cosig)]))
        .expect("agent signature and hub cosignature verify");
    assert_eq!((verified.len(), unverified.len()), (2, 0));
    // Our cosignature verifier key uses the same id the reference derives for type 0x04.
    let vk = VerifierKey::parse(&hub.cosignature_verifier().to_string()).unwrap();
    assert_eq!(
        vk.key_id_hex(),
        format!("{:08x}", signed_note::key_id(hub.name(), &typed))
    );
}
