//! Writes the seed inputs of the `mqtt_payload` and `signed_note` fuzz targets: valid payloads
//! and notes, so that the fuzzer starts from inputs that get past the first checks (a signature
//! that verifies, a chain that links) instead of having to find them.
//!
//! ```text
//! cargo run -p proofline-common --example fuzz_seeds -- fuzz/seeds
//! ```
//!
//! The keys are fixed test keys and every time is fixed, so the output is the same on every run
//! and the committed seeds only change when the formats do. The fuzz targets hold the matching
//! verifier keys (printed at the end).

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::SigningKey;
use proofline_common::bytes::Bytes;
use proofline_common::chain::ChainState;
use proofline_common::hash::{leaf_hash, Hash};
use proofline_common::note::{key_id, Checkpoint, Note, NoteSigner, ALG_ED25519};
use proofline_common::record::{
    Alarm, Body, Identity, PartScanned, Record, RecordV1, ScanOutcome, ScanRole, Severity,
    StationEvent,
};
use proofline_common::synth::inspection_result;
use proofline_common::wire::{
    Ack, AckBody, AckMsg, AgentStatus, AgentStatusMsg, AskBody, Batch, Clearance, ClearanceBody,
    ClearanceMsg, Envelope, HubStatus, HubStatusMsg, InterlockMsg, MsgId, RecordsMsg, RejectCode,
    Signed, SignedBatch, StatusBody, DOMAIN_ACK, DOMAIN_BATCH, DOMAIN_CLEARANCE, DOMAIN_INTERLOCK,
    DOMAIN_STATUS,
};

const AGENT: &str = "proofline/plant-1/flow-01";
const HUB: &str = "proofline/plant-1/hub";
/// Cosignature time of the seeds (seconds since the Unix epoch).
const COSIGNED_AT: u64 = 1_767_225_600;
const SENT_AT: i64 = 1_767_225_600_000_000;

/// A signer whose private key is `seed` repeated: a test key, not a secret.
fn test_signer(name: &str, seed: u8) -> NoteSigner {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let id = key_id(name, ALG_ED25519, &key.verifying_key().to_bytes());
    let mut k = vec![ALG_ED25519];
    k.extend_from_slice(&[seed; 32]);
    NoteSigner::parse(&format!(
        "PRIVATE+KEY+{name}+{}+{}",
        hex::encode(id),
        B64.encode(k)
    ))
    .expect("a well-formed test key")
}

/// Three linked records of different kinds, as an agent's ledger starts.
fn records() -> Vec<Vec<u8>> {
    let bodies = [
        Body::PartScanned(PartScanned {
            source: "scanner".into(),
            role: ScanRole::Part,
            symbology: Some("]d2".into()),
            raw: Bytes(b"[)>\x1e06\x1d17V0CVA5\x1d1PD1ABC\x1dS57734\x1e\x04".to_vec()),
            outcome: ScanOutcome::Identified(Identity {
                uii: "D0CVA5D1ABC57734".into(),
                format: "06".into(),
                construct: "construct-2".into(),
                attributes: Vec::new(),
            }),
        }),
        inspection_result(1, 16),
        Body::StationEvent(StationEvent::Alarm(Alarm {
            source: "bench".into(),
            code: "modbus.exception".into(),
            severity: Severity::Warning,
            message: "illegal data address".into(),
        })),
    ];
    let mut chain = ChainState::genesis(AGENT);
    bodies
        .into_iter()
        .enumerate()
        .map(|(seq, body)| {
            let bytes = Record::V1(RecordV1 {
                origin: AGENT.into(),
                seq: seq as u64,
                boot: 1,
                received_at: SENT_AT - 1_000 + seq as i64,
                prev: chain.last_leaf(),
                body,
            })
            .encode();
            chain.check(&bytes).expect("the seed records link");
            bytes
        })
        .collect()
}

fn root_of(records: &[Vec<u8>]) -> Hash {
    let leaves: Vec<Hash> = records.iter().map(|r| leaf_hash(r)).collect();
    proofline_common::merkle::root_of(&leaves)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", dir.join(name).display()));
}

/// Seeds of the signed_note target: the first byte picks the parser (see the target).
fn note_seeds(
    out: &Path,
    agent: &NoteSigner,
    hub: &NoteSigner,
    cosigned: &Note,
    signed: &Note,
    checkpoint_text: &str,
) {
    let notes = out.join("signed_note");
    std::fs::create_dir_all(&notes).expect("create the seed directory");
    let mode = |m: u8, text: &str| {
        let mut v = vec![m];
        v.extend_from_slice(text.as_bytes());
        v
    };
    write(&notes, "note-cosigned", &mode(0, &cosigned.to_string()));
    write(&notes, "checkpoint", &mode(1, checkpoint_text));
    write(
        &notes,
        "verifier-key",
        &mode(2, &agent.verifier().to_string()),
    );
    write(
        &notes,
        "cosigner-key",
        &mode(2, &hub.cosignature_verifier().to_string()),
    );
    let keyed = |key: String, note: &str| mode(3, &format!("{key}\n{note}"));
    write(
        &notes,
        "key-and-signed-checkpoint",
        &keyed(agent.verifier().to_string(), &signed.to_string()),
    );
    write(
        &notes,
        "key-and-cosignature",
        &keyed(
            hub.cosignature_verifier().to_string(),
            &cosigned.to_string(),
        ),
    );
    write(
        &notes,
        "hub-key-and-cosignature",
        &keyed(hub.verifier().to_string(), &cosigned.to_string()),
    );
}

fn main() {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("fuzz/seeds"));
    let agent = test_signer(AGENT, 0x11);
    let hub = test_signer(HUB, 0x22);

    let recs = records();
    let checkpoint = |size: usize| Checkpoint {
        origin: AGENT.into(),
        size: size as u64,
        root: root_of(&recs[..size]),
    };
    let signed = |size: usize| checkpoint(size).sign(&agent).expect("signs");
    let mut cosigned = signed(3);
    cosigned.push(hub.cosign(&cosigned.text, COSIGNED_AT).expect("cosigns"));
    let hub_checkpoint = Checkpoint {
        origin: HUB.into(),
        size: 0,
        root: root_of(&[]),
    }
    .sign(&hub)
    .expect("signs");

    // mqtt_payload: one input is tried against every decoder, so one seed per message kind.
    let mqtt = out.join("mqtt_payload");
    std::fs::create_dir_all(&mqtt).expect("create the seed directory");
    let batch = |first: usize, head: usize| {
        RecordsMsg::V1(Batch {
            first: first as u64,
            records: recs[first..head].iter().cloned().map(Bytes).collect(),
            checkpoint: signed(head).to_string(),
            boot: 1,
            head: head as u64,
            sent_at: SENT_AT,
        })
        .encode()
    };
    let batch_v2 = |first: usize, head: usize, counter: u64| {
        let env = Envelope {
            agent_id: "flow-01".into(),
            id: MsgId { boot: 1, counter },
            first: first as u64,
            checkpoint: signed(head).to_string(),
            head: head as u64,
            sent_at: SENT_AT,
            degraded: None,
        };
        RecordsMsg::V2(SignedBatch {
            envelope: Signed::seal(DOMAIN_BATCH, &env, &agent),
            records: recs[first..head].iter().cloned().map(Bytes).collect(),
        })
        .encode()
    };
    write(&mqtt, "records-v2-batch", &batch_v2(0, 3, 1));
    write(&mqtt, "records-v2-heartbeat", &batch_v2(3, 3, 2));
    let ack_v2 = |a: Ack| {
        let body = AckBody {
            agent_id: "flow-01".into(),
            answers: MsgId {
                boot: 1,
                counter: 1,
            },
            ack: a,
        };
        AckMsg::V2(Signed::seal(DOMAIN_ACK, &body, &hub)).encode()
    };
    write(
        &mqtt,
        "ack-v2-cosigned",
        &ack_v2(Ack::Cosigned {
            note: cosigned.to_string(),
        }),
    );
    write(&mqtt, "ack-v2-resend", &ack_v2(Ack::Resend { from: 2 }));
    let status_v2 = StatusBody {
        agent_id: "flow-01".into(),
        id: MsgId {
            boot: 1,
            counter: 0,
        },
        online: true,
        will: None,
        version: "0.1.0".into(),
        size: 3,
        degraded: None,
        sent_at: SENT_AT,
    };
    write(
        &mqtt,
        "agent-status-v2",
        &AgentStatusMsg::V2(Signed::seal(DOMAIN_STATUS, &status_v2, &agent)).encode(),
    );
    let question = AskBody {
        agent_id: "flow-01".into(),
        id: MsgId {
            boot: 1,
            counter: 3,
        },
        uii: "D1ABC5A0047731".into(),
        scan_seq: 0,
        part_number: Some("0445120123".into()),
        sent_at: SENT_AT,
    };
    write(
        &mqtt,
        "interlock-question",
        &InterlockMsg::V2(Signed::seal(DOMAIN_INTERLOCK, &question, &agent)).encode(),
    );
    for (name, clearance) in [
        (
            "clearance-allowed",
            Clearance::Allowed {
                operation: "flow_test".into(),
            },
        ),
        (
            "clearance-refused",
            Clearance::Refused {
                code: "out_of_sequence".into(),
                reason: "D1ABC5A0047731 is due for flow_test (not done) before torque".into(),
            },
        ),
    ] {
        let body = ClearanceBody {
            agent_id: "flow-01".into(),
            answers: question.id,
            uii: question.uii.clone(),
            clearance,
            at: SENT_AT,
        };
        write(
            &mqtt,
            name,
            &ClearanceMsg::V2(Signed::seal(DOMAIN_CLEARANCE, &body, &hub)).encode(),
        );
    }
    write(&mqtt, "records-batch", &batch(0, 3));
    write(&mqtt, "records-tail", &batch(2, 3));
    write(&mqtt, "records-heartbeat", &batch(3, 3));
    let ack = |a: Ack| AckMsg::V1(a).encode();
    write(
        &mqtt,
        "ack-cosigned",
        &ack(Ack::Cosigned {
            note: cosigned.to_string(),
        }),
    );
    write(&mqtt, "ack-resend", &ack(Ack::Resend { from: 2 }));
    write(
        &mqtt,
        "ack-rejected",
        &ack(Ack::Rejected {
            code: RejectCode::Fork,
            reason: "record 1 differs from the one the hub holds".into(),
        }),
    );
    write(
        &mqtt,
        "agent-status",
        &AgentStatusMsg::V1(AgentStatus {
            online: true,
            version: "0.1.0".into(),
            boot: 1,
            size: 3,
        })
        .encode(),
    );
    write(
        &mqtt,
        "hub-status",
        &HubStatusMsg::V1(HubStatus {
            online: true,
            version: "0.1.0".into(),
            checkpoint: Some(hub_checkpoint.to_string()),
        })
        .encode(),
    );
    write(&mqtt, "record", &recs[1]);

    note_seeds(
        &out,
        &agent,
        &hub,
        &cosigned,
        &signed(3),
        &checkpoint(3).text(),
    );
    println!("agent verifier key: {}", agent.verifier());
    println!("hub verifier key: {}", hub.verifier());
}
