//! C2SP signed notes (c2sp.org/signed-note), checkpoints (c2sp.org/tlog-checkpoint) and
//! Ed25519 cosignatures (c2sp.org/tlog-cosignature, `cosignature/v1`).
//!
//! Text formats are exact so that any conformant tool can check our notes:
//! - signature line: `— <key name> <base64(key id ‖ signature)>` (U+2014, space);
//! - Ed25519 key id: first 4 bytes of `SHA-256(name ‖ "\n" ‖ 0x01 ‖ pubkey)`;
//! - verifier key: `<name>+<hex key id>+<base64(0x01 ‖ pubkey)>`;
//! - private key (as Go's `sumdb/note`): `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 ‖ seed)>`;
//! - cosignature v1: key id with type byte 0x04, signature bytes
//!   `key id ‖ u64 BE timestamp ‖ Ed25519(cosignature/v1\ntime <t>\n ‖ checkpoint body)`.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::hash::Hash;

/// Signature type byte of a plain Ed25519 note signature.
pub const ALG_ED25519: u8 = 0x01;
/// Signature type byte of an Ed25519 `cosignature/v1`.
pub const ALG_COSIGNATURE_V1: u8 = 0x04;

const MAX_NOTE_BYTES: usize = 1 << 20;
const MAX_SIGNATURES: usize = 100;
const SIG_PREFIX: &str = "\u{2014} ";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed note: {0}")]
    Malformed(String),
    #[error("malformed key: {0}")]
    MalformedKey(String),
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(String),
    #[error("the note has no signature by {name} (key id {id})")]
    NotSigned { name: String, id: String },
    #[error(
        "bad signature by {name} (key id {id}): the note was altered or signed with another key"
    )]
    BadSignature { name: String, id: String },
    #[error("invalid key name {0:?}: it must be non-empty and hold no spaces and no '+'")]
    BadKeyName(String),
}

/// A key name is non-empty and holds neither whitespace nor `+`.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// Key id as RECOMMENDED by c2sp.org/signed-note.
pub fn key_id(name: &str, alg: u8, pubkey: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([alg]);
    h.update(pubkey);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// An Ed25519 signing key with its name. The same key signs checkpoints (type 0x01) and,
/// on the hub, cosignatures (type 0x04).
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &hex::encode(self.key_id()))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// Generates a new key from the operating system's random source.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        if !is_valid_key_name(name) {
            return Err(NoteError::BadKeyName(name.to_owned()));
        }
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed)
            .map_err(|e| NoteError::MalformedKey(format!("no random source: {e}")))?;
        Ok(Self::from_seed(name, seed))
    }

    fn from_seed(name: &str, seed: [u8; 32]) -> Self {
        NoteSigner {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Parses `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 ‖ seed)>`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let bad = |why: &str| NoteError::MalformedKey(why.to_owned());
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| bad("a private key starts with PRIVATE+KEY+"))?;
        let (name, id, key) = split_key(rest)
            .ok_or_else(|| bad("expected PRIVATE+KEY+<name>+<hex id>+<base64 key>"))?;
        let key = B64.decode(key).map_err(|_| bad("key is not base64"))?;
        if key.len() != 33 || key[0] != ALG_ED25519 {
            return Err(bad("not an Ed25519 private key"));
        }
        let seed: [u8; 32] = key[1..].try_into().map_err(|_| bad("wrong key length"))?;
        let signer = Self::from_seed(name, seed);
        if hex::encode(signer.key_id()) != id {
            return Err(bad("key id does not match the key"));
        }
        Ok(signer)
    }

    /// The private key in Go `sumdb/note` format. Keep it secret.
    pub fn to_private_string(&self) -> String {
        let mut k = vec![ALG_ED25519];
        k.extend_from_slice(&self.key.to_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex::encode(self.key_id()),
            B64.encode(k)
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn key_id(&self) -> [u8; 4] {
        key_id(&self.name, ALG_ED25519, &self.public_key())
    }

    /// Verifier key for plain note signatures (checkpoints).
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey::new(&self.name, ALG_ED25519, self.key.verifying_key())
    }

    /// Verifier key for this key's cosignatures.
    pub fn cosignature_verifier(&self) -> VerifierKey {
        VerifierKey::new(&self.name, ALG_COSIGNATURE_V1, self.key.verifying_key())
    }

    /// Signs `text` (which must be valid note text) as a plain Ed25519 note signature.
    pub fn sign(&self, text: &str) -> Result<NoteSignature, NoteError> {
        check_text(text)?;
        let sig = self.key.sign(text.as_bytes());
        let mut bytes = self.key_id().to_vec();
        bytes.extend_from_slice(&sig.to_bytes());
        Ok(NoteSignature {
            name: self.name.clone(),
            bytes,
        })
    }

    /// Signs a protocol message (Ed25519 over [`message_bytes`]).
    pub fn sign_message(&self, domain: &str, body: &[u8]) -> [u8; 64] {
        self.key.sign(&message_bytes(domain, body)).to_bytes()
    }

    /// Cosigns a checkpoint body at `timestamp` (seconds since the Unix epoch).
    pub fn cosign(
        &self,
        checkpoint_text: &str,
        timestamp: u64,
    ) -> Result<NoteSignature, NoteError> {
        check_text(checkpoint_text)?;
        let msg = cosignature_message(checkpoint_text, timestamp);
        let sig = self.key.sign(&msg);
        let mut bytes = key_id(&self.name, ALG_COSIGNATURE_V1, &self.public_key()).to_vec();
        bytes.extend_from_slice(&timestamp.to_be_bytes());
        bytes.extend_from_slice(&sig.to_bytes());
        Ok(NoteSignature {
            name: self.name.clone(),
            bytes,
        })
    }
}

/// The bytes a protocol message signature covers: `domain ‖ 0x00 ‖ body`. Note texts hold no
/// control character and cosignatures start with `cosignature/v1\n`, so a signature over one of
/// these can never be taken for a note signature or a cosignature, nor one domain for another.
pub fn message_bytes(domain: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + 1 + body.len());
    m.extend_from_slice(domain.as_bytes());
    m.push(0);
    m.extend_from_slice(body);
    m
}

fn cosignature_message(text: &str, timestamp: u64) -> Vec<u8> {
    let mut m = format!("cosignature/v1\ntime {timestamp}\n").into_bytes();
    m.extend_from_slice(text.as_bytes());
    m
}

/// Splits `<name>+<8 hex>+<base64>`; the name may not hold `+`, so the split is unambiguous.
fn split_key(s: &str) -> Option<(&str, &str, &str)> {
    let mut it = s.splitn(3, '+');
    let (name, id, key) = (it.next()?, it.next()?, it.next()?);
    if !is_valid_key_name(name) || id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((name, id, key))
}

/// A public key that can check note signatures: `<name>+<hex id>+<base64(type ‖ pubkey)>`.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    alg: u8,
    id: [u8; 4],
    key: VerifyingKey,
}

impl fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifierKey({self})")
    }
}

impl VerifierKey {
    fn new(name: &str, alg: u8, key: VerifyingKey) -> Self {
        VerifierKey {
            name: name.to_owned(),
            alg,
            id: key_id(name, alg, &key.to_bytes()),
            key,
        }
    }

    /// Parses a verifier key of type 0x01 (Ed25519) or 0x04 (Ed25519 cosignature v1).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let text = text.trim();
        let bad = |why: &str| NoteError::MalformedKey(format!("{why} in verifier key {text:?}"));
        let (name, id, key) = split_key(text)
            .ok_or_else(|| bad("expected <name>+<8 hex digit key id>+<base64 key>"))?;
        let key = B64.decode(key).map_err(|_| bad("key is not base64"))?;
        if key.len() != 33 || !matches!(key[0], ALG_ED25519 | ALG_COSIGNATURE_V1) {
            return Err(bad("not an Ed25519 key (type 0x01 or 0x04)"));
        }
        let pk: [u8; 32] = key[1..].try_into().map_err(|_| bad("wrong key length"))?;
        let vk = VerifyingKey::from_bytes(&pk).map_err(|_| bad("not a valid Ed25519 point"))?;
        let v = VerifierKey::new(name, key[0], vk);
        if hex::encode(v.id) != id.to_ascii_lowercase() {
            return Err(bad("key id does not match the key"));
        }
        Ok(v)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id_hex(&self) -> String {
        hex::encode(self.id)
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The same public key as a cosignature (type 0x04) verifier.
    pub fn as_cosignature_verifier(&self) -> VerifierKey {
        VerifierKey::new(&self.name, ALG_COSIGNATURE_V1, self.key)
    }

    /// The same public key as a plain note signature (type 0x01) verifier.
    pub fn as_note_verifier(&self) -> VerifierKey {
        VerifierKey::new(&self.name, ALG_ED25519, self.key)
    }

    /// Whether `other` has the same name and public key (whichever signature type each names).
    pub fn same_key(&self, other: &VerifierKey) -> bool {
        self.name == other.name && self.key == other.key
    }

    /// Checks this key's signature on `note`. A note signed only by other keys is `NotSigned`;
    /// a signature with this key's name and id that does not verify is `BadSignature`.
    pub fn verify(&self, note: &Note) -> Result<(), NoteError> {
        if self.alg == ALG_COSIGNATURE_V1 {
            return self.verify_cosignature(note).map(|_| ());
        }
        let sig = self.find(note)?;
        let raw = &sig.bytes[4..];
        let ok = <[u8; 64]>::try_from(raw)
            .map(|s| ed25519_dalek::Signature::from_bytes(&s))
            .map(|s| self.key.verify_strict(note.text.as_bytes(), &s).is_ok())
            .unwrap_or(false);
        if ok {
            Ok(())
        } else {
            Err(self.bad())
        }
    }

    /// Checks this key's `cosignature/v1` on `note` and returns its timestamp.
    pub fn verify_cosignature(&self, note: &Note) -> Result<u64, NoteError> {
        let v = self.as_cosignature_verifier();
        let sig = v.find(note)?;
        if sig.bytes.len() != 4 + 8 + 64 {
            return Err(v.bad());
        }
        let ts = u64::from_be_bytes(sig.bytes[4..12].try_into().map_err(|_| v.bad())?);
        let s: [u8; 64] = sig.bytes[12..].try_into().map_err(|_| v.bad())?;
        let msg = cosignature_message(&note.text, ts);
        v.key
            .verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&s))
            .map_err(|_| v.bad())?;
        Ok(ts)
    }

    /// Checks a protocol message signature made by [`NoteSigner::sign_message`] with this
    /// public key (whatever note signature type the verifier key names).
    pub fn verify_message(&self, domain: &str, body: &[u8], sig: &[u8]) -> Result<(), NoteError> {
        let ok = <[u8; 64]>::try_from(sig)
            .map(|s| ed25519_dalek::Signature::from_bytes(&s))
            .map(|s| {
                self.key
                    .verify_strict(&message_bytes(domain, body), &s)
                    .is_ok()
            })
            .unwrap_or(false);
        if ok {
            Ok(())
        } else {
            Err(self.bad())
        }
    }

    fn find<'n>(&self, note: &'n Note) -> Result<&'n NoteSignature, NoteError> {
        note.signatures
            .iter()
            .find(|s| s.name == self.name && s.key_id() == Some(self.id))
            .ok_or_else(|| NoteError::NotSigned {
                name: self.name.clone(),
                id: self.key_id_hex(),
            })
    }

    fn bad(&self) -> NoteError {
        NoteError::BadSignature {
            name: self.name.clone(),
            id: self.key_id_hex(),
        }
    }
}

impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut k = vec![self.alg];
        k.extend_from_slice(&self.key.to_bytes());
        write!(f, "{}+{}+{}", self.name, self.key_id_hex(), B64.encode(k))
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    /// `key id ‖ signature` as on the signature line.
    pub bytes: Vec<u8>,
}

impl NoteSignature {
    pub fn key_id(&self) -> Option<[u8; 4]> {
        self.bytes.get(..4).and_then(|b| b.try_into().ok())
    }

    fn line(&self) -> String {
        format!("{SIG_PREFIX}{} {}\n", self.name, B64.encode(&self.bytes))
    }
}

/// A signed note: text and signature lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub text: String,
    pub signatures: Vec<NoteSignature>,
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if text.is_empty() || !text.ends_with('\n') {
        return Err(NoteError::Malformed(
            "note text must end with a newline".into(),
        ));
    }
    if text.contains("\n\n") {
        return Err(NoteError::Malformed(
            "note text must not hold a blank line".into(),
        ));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(NoteError::Malformed(
            "note text holds a control character".into(),
        ));
    }
    Ok(())
}

impl Note {
    pub fn new(text: &str) -> Result<Self, NoteError> {
        check_text(text)?;
        Ok(Note {
            text: text.to_owned(),
            signatures: Vec::new(),
        })
    }

    pub fn parse(msg: &str) -> Result<Self, NoteError> {
        if msg.len() > MAX_NOTE_BYTES {
            return Err(NoteError::Malformed("note is larger than 1 MiB".into()));
        }
        let split = msg
            .rfind("\n\n")
            .ok_or_else(|| NoteError::Malformed("no blank line before the signatures".into()))?;
        let text = &msg[..split + 1];
        check_text(text)?;
        let block = &msg[split + 2..];
        if !block.ends_with('\n') {
            return Err(NoteError::Malformed(
                "signature block must end with a newline".into(),
            ));
        }
        let mut signatures = Vec::new();
        for line in block[..block.len() - 1].split('\n') {
            let body = line.strip_prefix(SIG_PREFIX).ok_or_else(|| {
                NoteError::Malformed(format!(
                    "signature line {line:?} does not start with \"— \""
                ))
            })?;
            let (name, b64) = body.split_once(' ').ok_or_else(|| {
                NoteError::Malformed(format!("signature line {line:?} has no signature"))
            })?;
            if !is_valid_key_name(name) {
                return Err(NoteError::BadKeyName(name.to_owned()));
            }
            let bytes = B64
                .decode(b64)
                .map_err(|_| NoteError::Malformed(format!("signature of {name} is not base64")))?;
            if bytes.len() < 5 {
                return Err(NoteError::Malformed(format!(
                    "signature of {name} is too short"
                )));
            }
            signatures.push(NoteSignature {
                name: name.to_owned(),
                bytes,
            });
        }
        if signatures.is_empty() {
            return Err(NoteError::Malformed("note has no signatures".into()));
        }
        if signatures.len() > MAX_SIGNATURES {
            return Err(NoteError::Malformed(
                "note has more than 100 signatures".into(),
            ));
        }
        Ok(Note {
            text: text.to_owned(),
            signatures,
        })
    }

    pub fn push(&mut self, sig: NoteSignature) {
        self.signatures.push(sig);
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        f.write_str("\n")?;
        for s in &self.signatures {
            f.write_str(&s.line())?;
        }
        Ok(())
    }
}

/// A checkpoint body: `<origin>\n<size>\n<base64 root>\n` (no extension lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root.0)
        )
    }

    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let bad = |why: String| NoteError::MalformedCheckpoint(why);
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("checkpoint must end with a newline".into()))?;
        let lines: Vec<&str> = body.split('\n').collect();
        if lines.len() < 3 {
            return Err(bad(format!(
                "expected origin, size and root lines, found {} lines",
                lines.len()
            )));
        }
        if lines.len() > 3 {
            return Err(bad(format!("unexpected extension line {:?}", lines[3])));
        }
        let origin = lines[0];
        if origin.is_empty() {
            return Err(bad("empty origin".into()));
        }
        let size_s = lines[1];
        if size_s.is_empty()
            || !size_s.bytes().all(|b| b.is_ascii_digit())
            || (size_s.len() > 1 && size_s.starts_with('0'))
        {
            return Err(bad(format!("size {size_s:?} is not a decimal number")));
        }
        let size = size_s
            .parse()
            .map_err(|_| bad(format!("size {size_s:?} is out of range")))?;
        let root = B64
            .decode(lines[2])
            .ok()
            .and_then(|b| Hash::from_slice(&b))
            .ok_or_else(|| bad(format!("root {:?} is not a base64 32-byte hash", lines[2])))?;
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }

    /// Signs the checkpoint and returns the complete signed note.
    pub fn sign(&self, signer: &NoteSigner) -> Result<Note, NoteError> {
        let mut note = Note::new(&self.text())?;
        note.push(signer.sign(&note.text)?);
        Ok(note)
    }

    /// Parses a signed checkpoint note and checks `key`'s signature on it.
    pub fn open(msg: &str, key: &VerifierKey) -> Result<(Checkpoint, Note), NoteError> {
        let note = Note::parse(msg)?;
        key.verify(&note)?;
        Ok((Checkpoint::parse(&note.text)?, note))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known-answer vectors from Go's golang.org/x/mod/sumdb/note tests.
    const PN_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PN_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PN_TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const PN_SIGNED: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn signs_exactly_like_the_go_reference() {
        let s = NoteSigner::parse(PN_SKEY).unwrap();
        assert_eq!(s.to_private_string(), PN_SKEY);
        assert_eq!(s.verifier().to_string(), PN_VKEY);
        let mut n = Note::new(PN_TEXT).unwrap();
        n.push(s.sign(PN_TEXT).unwrap());
        assert_eq!(n.to_string(), PN_SIGNED);
    }

    #[test]
    fn verifies_the_go_reference_note() {
        let v = VerifierKey::parse(PN_VKEY).unwrap();
        let n = Note::parse(PN_SIGNED).unwrap();
        assert_eq!(n.text, PN_TEXT);
        v.verify(&n).unwrap();
        let tampered = PN_SIGNED.replace("cryptography", "cryptograph!");
        assert!(matches!(
            v.verify(&Note::parse(&tampered).unwrap()),
            Err(NoteError::BadSignature { .. })
        ));
    }

    #[test]
    fn rejects_keys_with_a_wrong_id_or_type() {
        assert!(VerifierKey::parse(
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
        )
        .is_err());
        assert!(VerifierKey::parse("PeterNeumann+c74f20a3").is_err());
        assert!(VerifierKey::parse("rekor.sigstore.dev+12345678+AwEB").is_err());
        assert!(
            VerifierKey::parse("a b+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
                .is_err()
        );
        assert!(NoteSigner::parse(
            "PRIVATE+KEY+PeterNeumann+c74f20a4+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
        )
        .is_err());
    }

    #[test]
    fn checkpoint_round_trips_and_is_strict() {
        let s = NoteSigner::generate("proofline/p1/a1").unwrap();
        let cp = Checkpoint {
            origin: "proofline/p1/a1".into(),
            size: 42,
            root: crate::hash::leaf_hash(b"r"),
        };
        let note = cp.sign(&s).unwrap().to_string();
        let (back, _) = Checkpoint::open(&note, &s.verifier()).unwrap();
        assert_eq!(back, cp);
        for bad in [
            "a\n1\n",
            "a\n01\nAAAA\n",
            "a\n1\nAAAA\n",
            "a\n-1\nAAAA\n",
            "a\n1\nAAAA\nx\n",
        ] {
            assert!(Checkpoint::parse(bad).is_err(), "{bad:?}");
        }
        let other = NoteSigner::generate("proofline/p1/a1").unwrap();
        assert!(matches!(
            Checkpoint::open(&note, &other.verifier()),
            Err(NoteError::NotSigned { .. })
        ));
    }

    #[test]
    fn cosignature_round_trips_and_binds_the_timestamp() {
        let hub = NoteSigner::generate("proofline/p1/hub").unwrap();
        let agent = NoteSigner::generate("proofline/p1/a1").unwrap();
        let cp = Checkpoint {
            origin: "proofline/p1/a1".into(),
            size: 3,
            root: crate::hash::leaf_hash(b"r"),
        };
        let mut note = cp.sign(&agent).unwrap();
        note.push(hub.cosign(&note.text, 1_727_964_367).unwrap());
        let parsed = Note::parse(&note.to_string()).unwrap();
        agent.verifier().verify(&parsed).unwrap();
        let ts = hub
            .cosignature_verifier()
            .verify_cosignature(&parsed)
            .unwrap();
        assert_eq!(ts, 1_727_964_367);
        // The plain verifier of the hub key converts itself into the cosignature verifier.
        assert_eq!(hub.verifier().verify_cosignature(&parsed).unwrap(), ts);
        // Changing the timestamp bytes breaks the signature.
        let mut forged = parsed.clone();
        let cos = forged
            .signatures
            .iter_mut()
            .find(|s| s.name == "proofline/p1/hub")
            .unwrap();
        cos.bytes[11] ^= 1;
        assert!(hub
            .cosignature_verifier()
            .verify_cosignature(&forged)
            .is_err());
    }

    #[test]
    fn reads_the_timestamp_of_a_published_cosignature() {
        // From transparency-dev/formats note tests: key id 646846b9, time 1727964367.
        let bytes = B64
            .decode("ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJXORmnFBOBA==")
            .unwrap();
        assert_eq!(bytes.len(), 76);
        assert_eq!(
            u64::from_be_bytes(bytes[4..12].try_into().unwrap()),
            1_727_964_367
        );
    }

    #[test]
    fn rejects_malformed_notes() {
        for bad in [
            "",
            "text\n",
            "text\n\n",
            "text\n\n\u{2014} name\n",
            "text\n\n- name AAAAAAAA\n",
            "text\n\n\u{2014} name AAAAAAAA",
            "text\n\n\u{2014} na+me AAAAAAAA\n",
            "text\n\n\u{2014} name !!!!\n",
        ] {
            assert!(Note::parse(bad).is_err(), "{bad:?}");
        }
    }
}
