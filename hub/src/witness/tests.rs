use super::*;
use proofline_common::bytes::Bytes;
use proofline_common::note::Checkpoint;
use proofline_common::record::now_micros;
use proofline_common::record::MAX_RECORD_BYTES;
use proofline_common::store::{Access, Entry, Store, StoreOptions};
use proofline_common::synth::inspection_result;
use proofline_common::wire::{Batch, RecordsMsg, RejectCode};
use proofline_common::writer::{spawn_writer, WriterConfig};

const ORIGIN: &str = "proofline/plant-1/flow-01";

struct Fixture {
    _dir: tempfile::TempDir,
    w: Witness,
    records: Vec<Vec<u8>>,
    signer: NoteSigner,
}

/// A witness enrolling `flow-01`, and 30 records of that station's ledger.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let signer = NoteSigner::generate(ORIGIN).unwrap();
    let station = dir.path().join("station");
    std::fs::create_dir(&station).unwrap();
    let (mut s, _) = Store::open(
        &station,
        Access::Write(Origin::parse(ORIGIN).unwrap()),
        &StoreOptions::default(),
    )
    .unwrap();
    for i in 0..30 {
        s.append(&[Entry {
            received_at: now_micros(),
            body: inspection_result(i, 8),
        }])
        .unwrap();
    }
    let records = s.reader().range(0..30).map(|r| r.unwrap().1).collect();
    let hub_dir = dir.path().join("hub");
    std::fs::create_dir(&hub_dir).unwrap();
    let (hub, _) = Store::open(
        &hub_dir,
        Access::Write(Origin::hub("plant-1").unwrap()),
        &StoreOptions::default(),
    )
    .unwrap();
    let witnessed = hub.witness_store();
    let (durable, _writer) = spawn_writer(hub, WriterConfig::default()).unwrap();
    let w = Witness::open(
        witnessed,
        durable,
        NoteSigner::generate("proofline/plant-1/hub").unwrap(),
        vec![Enrolled {
            agent_id: "flow-01".into(),
            origin: Origin::parse(ORIGIN).unwrap(),
            key: signer.verifier(),
        }],
        WitnessConfig {
            max_clock_skew_micros: 60_000_000,
            gap_alert_after_micros: 10_000_000,
            stale_after_micros: 60_000_000,
        },
        now_micros(),
    )
    .unwrap();
    Fixture {
        _dir: dir,
        w,
        records,
        signer,
    }
}

impl Fixture {
    /// Records `from..to` as a batch with a signed checkpoint at `to`.
    fn batch(&self, from: u64, to: u64, head: u64, sent_at: i64) -> Vec<u8> {
        let mut f = Frontier::new();
        for r in &self.records[..to as usize] {
            f.push(proofline_common::hash::leaf_hash(r));
        }
        let cp = Checkpoint {
            origin: ORIGIN.into(),
            size: to,
            root: f.root(),
        };
        RecordsMsg::V1(Batch {
            first: from,
            records: self.records[from as usize..to as usize]
                .iter()
                .map(|r| Bytes(r.clone()))
                .collect(),
            checkpoint: cp.sign(&self.signer).unwrap().to_string(),
            boot: 1,
            head,
            sent_at,
        })
        .encode()
    }

    fn send(&mut self, payload: Vec<u8>, now: i64) -> Reply {
        self.w
            .handle(&[("flow-01".into(), payload)], now)
            .unwrap()
            .remove(0)
    }
}

#[test]
fn gaps_are_answered_with_resend_and_duplicates_are_counted_not_stored() {
    let mut fx = fixture();
    let now = now_micros();
    let r = fx.send(fx.batch(0, 10, 10, now), now);
    assert!(matches!(r.ack, Ack::Cosigned { .. }), "{r:?}");
    assert_eq!(r.stored, 10);
    // A batch from 20: the hub has 10.
    let r = fx.send(fx.batch(20, 30, 30, now + 1), now);
    assert_eq!(r.ack, Ack::Resend { from: 10 });
    // Overlapping resend 5..20: 5 duplicates, 10 new.
    let r = fx.send(fx.batch(5, 20, 30, now + 2), now);
    assert!(matches!(r.ack, Ack::Cosigned { .. }), "{r:?}");
    assert_eq!(r.stored, 10);
    let a = &fx.w.agents()[0];
    assert_eq!((a.size, a.duplicates), (20, 5));
    // The gap did not stay open: no alert later.
    assert!(fx.w.tick(now + 20_000_000).is_empty());
}

#[test]
fn an_unfilled_gap_and_a_skewed_clock_are_alerted_once() {
    let mut fx = fixture();
    let now = now_micros();
    let r = fx.send(fx.batch(10, 20, 20, now + 120_000_000), now);
    assert_eq!(r.ack, Ack::Resend { from: 0 });
    assert_eq!(r.alerts.len(), 1);
    assert_eq!(r.alerts[0].kind, AlertKind::ClockSkew);
    let later = fx.w.tick(now + 11_000_000);
    assert!(
        later.iter().any(|a| a.kind == AlertKind::UnfilledGap),
        "{later:?}"
    );
    assert!(fx.w.tick(now + 12_000_000).is_empty());
}

#[test]
fn a_record_over_the_size_limit_is_refused_and_nothing_of_its_batch_is_stored() {
    let mut fx = fixture();
    let now = now_micros();
    let good = fx.records[5].clone();
    // Signed by the agent's own key: a faulty or compromised station.
    fx.records[5] = vec![0x55; MAX_RECORD_BYTES + 1];
    let r = fx.send(fx.batch(0, 10, 10, now), now);
    assert!(
        matches!(&r.ack, Ack::Rejected { code: RejectCode::Malformed, reason } if reason.contains("record 5 is")),
        "{r:?}"
    );
    assert_eq!(r.stored, 0);
    assert_eq!(r.alerts[0].kind, AlertKind::Malformed);
    fx.records[5] = good;
    let r = fx.send(fx.batch(0, 10, 10, now + 1), now);
    assert!(matches!(r.ack, Ack::Cosigned { .. }), "{r:?}");
    assert_eq!(r.stored, 10);
}

#[test]
fn a_replayed_old_message_is_not_taken_for_a_rollback() {
    let mut fx = fixture();
    let now = now_micros();
    let early = fx.batch(0, 10, 10, now);
    fx.send(early.clone(), now);
    fx.send(fx.batch(10, 30, 30, now + 5), now);
    // The broker delivers the first batch again: an old head, but an old message too.
    let r = fx.send(early, now);
    assert!(matches!(r.ack, Ack::Cosigned { .. }), "{r:?}");
    assert!(r.alerts.is_empty(), "{:?}", r.alerts);
    // A new message claiming the old head is a rollback.
    let r = fx.send(fx.batch(0, 10, 10, now + 10), now);
    assert!(
        matches!(
            r.ack,
            Ack::Rejected {
                code: RejectCode::SizeRegression,
                ..
            }
        ),
        "{r:?}"
    );
}

#[test]
fn a_different_record_at_a_known_seq_is_a_fork_and_changes_nothing() {
    let mut fx = fixture();
    let now = now_micros();
    fx.send(fx.batch(0, 20, 20, now), now);
    let mut other = fx.records.clone();
    other[12][40] ^= 1;
    let genuine = std::mem::replace(&mut fx.records, other);
    let r = fx.send(fx.batch(10, 25, 25, now + 1), now);
    assert!(
        matches!(
            r.ack,
            Ack::Rejected {
                code: RejectCode::Fork,
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(r.alerts[0].seq, Some(12));
    fx.records = genuine;
    let (reader, size) = fx.w.reader("flow-01").unwrap();
    assert_eq!(size, 20);
    assert_eq!(reader.get(12).unwrap().unwrap(), fx.records[12]);
}

#[test]
fn messages_that_waited_in_a_broker_queue_are_not_clock_skew() {
    let mut fx = fixture();
    let now = now_micros();
    // A backlog queued for two minutes arrives in a burst, then fresh messages.
    for i in 0..6u64 {
        let r = fx.send(
            fx.batch(i, i + 1, 30, now - 120_000_000 + i as i64),
            now + i as i64 * 1000,
        );
        assert!(r.alerts.is_empty(), "{:?}", r.alerts);
    }
    let r = fx.send(fx.batch(6, 7, 30, now + 1_000_000), now + 1_000_000);
    assert!(r.alerts.is_empty(), "{:?}", r.alerts);
    // A clock really behind: every message for 10 s and more says so.
    let mut raised = Vec::new();
    for i in 0..6u64 {
        let t = now + 2_000_000 + i as i64 * 3_000_000;
        let r = fx.send(fx.batch(7 + i, 8 + i, 30, t - 120_000_000), t);
        raised.extend(r.alerts);
    }
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0].kind, AlertKind::ClockSkew);
}
