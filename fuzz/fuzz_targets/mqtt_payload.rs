//! MQTT payloads: whatever the broker delivers, on whichever topic, every decoder the hub and the
//! agents run gives a message or a reasoned refusal, never a panic. A decoded message re-encodes
//! to bytes no longer than the input that decode to the same message, so decoding never inflates
//! what a peer sent. What comes next on the receiving side (records walked as a chain, checkpoint
//! and cosigned notes parsed and verified) never panics either.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use proofline_common::chain::ChainState;
use proofline_common::note::{Checkpoint, Note, VerifierKey};
use proofline_common::record::Record;
use proofline_common::bytes::Bytes;
use proofline_common::wire::{
    parse_topic, Ack, AckBody, AckMsg, AgentStatusMsg, AgentTopics, AskBody, ClearanceBody,
    ClearanceMsg, Envelope, HubStatusMsg, InterlockMsg, RecordsMsg, StatusBody, TopicKind,
    DOMAIN_ACK, DOMAIN_BATCH, DOMAIN_CLEARANCE, DOMAIN_INTERLOCK, DOMAIN_STATUS,
};

const SITE: &str = "plant-1";

// The test keys that signed the seeds (`cargo run -p proofline-common --example fuzz_seeds`
// prints them), so that seeded notes get through signature checks to what follows them.
static AGENT_KEY: LazyLock<VerifierKey> = LazyLock::new(|| {
    VerifierKey::parse(
        "proofline/plant-1/flow-01+113c6da6+AdBKsjJ0K7SrOhNovUYV5ObQIkq3GgFrr4UgozLJd4c3",
    )
    .unwrap()
});
static HUB_KEY: LazyLock<VerifierKey> = LazyLock::new(|| {
    VerifierKey::parse(
        "proofline/plant-1/hub+71d70203+AaCapfR6Z1mAL/lV+NwtKhSlyZ0jvpf4ZBJ/+Tg0VaTw",
    )
    .unwrap()
});

/// A record as the hub reads one from a batch (and an agent from its own ledger).
fn record(bytes: &[u8]) {
    if let Ok(r) = Record::decode(bytes) {
        let again = r.encode();
        assert!(
            again.len() <= bytes.len(),
            "{} bytes decode to a record of {}",
            bytes.len(),
            again.len()
        );
        // Measured values are f64 and NaN is not equal to itself: compare encodings instead.
        assert_eq!(
            Record::decode(&again)
                .expect("a re-encoded record decodes")
                .encode(),
            again
        );
    }
}

/// A signed checkpoint note as the hub opens a batch's, and the agent a cosigned one.
fn checkpoint_note(text: &str) {
    let _ = Checkpoint::open(text, &AGENT_KEY);
    if let Ok(note) = Note::parse(text) {
        let _ = AGENT_KEY.verify(&note);
        let _ = HUB_KEY.verify_cosignature(&note);
        let _ = Checkpoint::parse(&note.text);
    }
}

/// Records as the hub walks a batch's: decoded, and checked as a chain.
fn records(records: &[Bytes]) {
    let mut chain = ChainState::genesis("proofline/plant-1/flow-01");
    for r in records {
        record(&r.0);
        let _ = chain.check(&r.0);
    }
}

fuzz_target!(|data: &[u8]| {
    // A publish on any topic may carry any payload: every decoder sees every input.
    if let Ok(m) = RecordsMsg::decode(data) {
        let again = m.encode();
        assert!(again.len() <= data.len());
        assert_eq!(
            RecordsMsg::decode(&again).expect("a re-encoded batch decodes"),
            m
        );
        match &m {
            RecordsMsg::V1(b) => {
                checkpoint_note(&b.checkpoint);
                records(&b.records);
            }
            RecordsMsg::V2(b) => {
                if let Ok(env) = b.envelope.open::<Envelope>(DOMAIN_BATCH, &AGENT_KEY) {
                    checkpoint_note(&env.checkpoint);
                }
                records(&b.records);
            }
        }
    }
    if let Ok(m) = AckMsg::decode(data) {
        let again = m.encode();
        assert!(again.len() <= data.len());
        assert_eq!(AckMsg::decode(&again).expect("a re-encoded ack decodes"), m);
        let ack = match &m {
            AckMsg::V1(a) => Some(a.clone()),
            AckMsg::V2(s) => s
                .open::<AckBody>(DOMAIN_ACK, &HUB_KEY.as_cosignature_verifier())
                .ok()
                .map(|b| b.ack),
        };
        if let Some(Ack::Cosigned { note }) = &ack {
            checkpoint_note(note);
        }
    }
    if let Ok(m) = AgentStatusMsg::decode(data) {
        let again = m.encode();
        assert!(again.len() <= data.len());
        assert_eq!(
            AgentStatusMsg::decode(&again).expect("a re-encoded status decodes"),
            m
        );
        if let AgentStatusMsg::V2(s) = &m {
            let _ = s.open::<StatusBody>(DOMAIN_STATUS, &AGENT_KEY);
        }
    }
    if let Ok(m) = HubStatusMsg::decode(data) {
        let again = m.encode();
        assert!(again.len() <= data.len());
        assert_eq!(
            HubStatusMsg::decode(&again).expect("a re-encoded status decodes"),
            m
        );
        let HubStatusMsg::V1(s) = &m;
        if let Some(note) = &s.checkpoint {
            checkpoint_note(note);
        }
    }
    // Route interlock questions (the hub) and answers (the station).
    if let Ok(m) = InterlockMsg::decode(data) {
        let again = m.encode();
        assert!(again.len() <= data.len());
        assert_eq!(InterlockMsg::decode(&again).expect("re-encoded"), m);
        let InterlockMsg::V2(s) = &m;
        let _ = s.open::<AskBody>(DOMAIN_INTERLOCK, &AGENT_KEY);
    }
    if let Ok(m) = ClearanceMsg::decode(data) {
        let again = m.encode();
        assert!(again.len() <= data.len());
        assert_eq!(ClearanceMsg::decode(&again).expect("re-encoded"), m);
        let ClearanceMsg::V2(s) = &m;
        let _ = s.open::<ClearanceBody>(DOMAIN_CLEARANCE, &HUB_KEY);
    }
    record(data);

    // The topic comes from the broker too: one that parses names exactly that agent's topic.
    if let Ok(topic) = std::str::from_utf8(data) {
        if let Some((agent, kind)) = parse_topic(SITE, topic) {
            let t = AgentTopics::new(SITE, agent);
            let want = match kind {
                TopicKind::Records => t.records,
                TopicKind::Ack => t.ack,
                TopicKind::Status => t.status,
                TopicKind::Interlock => t.interlock,
                TopicKind::Clearance => t.clearance,
            };
            assert_eq!(topic, want);
        }
    }
});
