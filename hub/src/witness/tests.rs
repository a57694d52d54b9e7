use super::*;
use proofline_common::bytes::Bytes;
use proofline_common::note::Checkpoint;
use proofline_common::record::now_micros;
use proofline_common::record::MAX_RECORD_BYTES;
use proofline_common::store::{Access, Entry, Store, StoreOptions};
use proofline_common::synth::inspection_result;
use proofline_common::wire::{
    AgentStatusMsg, Envelope, MsgId, RecordsMsg, RejectCode, Signed, SignedBatch, StatusBody,
    DOMAIN_BATCH, DOMAIN_STATUS, MAX_REASON_BYTES,
};
use proofline_common::writer::{spawn_writer, WriterConfig};

const ORIGIN: &str = "proofline/plant-1/flow-01";

struct Fixture {
    _dir: tempfile::TempDir,
    w: Witness,
    records: Vec<Vec<u8>>,
    signer: NoteSigner,
    /// The station's boot and next message counter.
    boot: u32,
    counter: std::cell::Cell<u64>,
}

impl Reply {
    /// What the hub answered (the test expects an answer).
    fn ack(&self) -> Ack {
        self.answer.as_ref().expect("an answer").ack().clone()
    }
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
        boot: 1,
        counter: std::cell::Cell::new(0),
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
        let env = Envelope {
            agent_id: "flow-01".into(),
            id: self.next_id(),
            first: from,
            checkpoint: cp.sign(&self.signer).unwrap().to_string(),
            head,
            sent_at,
            degraded: None,
        };
        self.seal(&env, from, to)
    }

    fn next_id(&self) -> MsgId {
        let counter = self.counter.get();
        self.counter.set(counter + 1);
        MsgId {
            boot: self.boot,
            counter,
        }
    }

    /// `env` signed by the station, with records `from..to`.
    fn seal(&self, env: &Envelope, from: u64, to: u64) -> Vec<u8> {
        RecordsMsg::V2(SignedBatch {
            envelope: Signed::seal(DOMAIN_BATCH, env, &self.signer),
            records: self.records[from as usize..to as usize]
                .iter()
                .map(|r| Bytes(r.clone()))
                .collect(),
        })
        .encode()
    }

    /// A signed status.
    fn status(&self, online: bool, will: Option<u64>) -> (MsgId, Vec<u8>) {
        let id = self.next_id();
        let body = StatusBody {
            agent_id: "flow-01".into(),
            id,
            online,
            will,
            version: "test".into(),
            size: 0,
            degraded: None,
            sent_at: now_micros(),
        };
        let msg = AgentStatusMsg::V2(Signed::seal(DOMAIN_STATUS, &body, &self.signer));
        (id, msg.encode())
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
    assert!(matches!(r.ack(), Ack::Cosigned { .. }), "{r:?}");
    assert_eq!(r.stored, 10);
    // A batch from 20: the hub has 10.
    let r = fx.send(fx.batch(20, 30, 30, now + 1), now);
    assert_eq!(r.ack(), Ack::Resend { from: 10 });
    // Overlapping resend 5..20: 5 duplicates, 10 new.
    let r = fx.send(fx.batch(5, 20, 30, now + 2), now);
    assert!(matches!(r.ack(), Ack::Cosigned { .. }), "{r:?}");
    assert_eq!(r.stored, 10);
    let a = &fx.w.agents()[0];
    assert_eq!((a.size, a.duplicates), (20, 5));
    // The gap did not stay open: no alert later.
    assert!(fx.w.tick(now + 20_000_000).is_empty());
}

#[test]
fn an_unfilled_gap_is_alerted_once() {
    let mut fx = fixture();
    let now = now_micros();
    let r = fx.send(fx.batch(10, 20, 20, now), now);
    assert_eq!(r.ack(), Ack::Resend { from: 0 });
    assert!(r.alerts.is_empty(), "{:?}", r.alerts);
    let later = fx.w.tick(now + 11_000_000);
    assert!(
        later.iter().any(|a| a.kind == AlertKind::UnfilledGap),
        "{later:?}"
    );
    assert!(fx.w.tick(now + 12_000_000).is_empty());
}

#[test]
fn a_send_time_ahead_beyond_the_bound_is_refused_not_stored_and_checks_stay_on() {
    let mut fx = fixture();
    let now = now_micros();
    fx.send(fx.batch(0, 20, 20, now), now);
    // A station clock two minutes ahead: refused, alerted, nothing stored.
    let r = fx.send(fx.batch(20, 30, 30, now + 120_000_000), now);
    assert!(
        matches!(
            r.ack(),
            Ack::Rejected {
                code: RejectCode::ClockSkew,
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(r.alerts[0].kind, AlertKind::ClockSkew);
    assert_eq!(fx.w.agents()[0].size, 20);
    // A future send time bought nothing: the next message claiming a shorter ledger is still a
    // size regression.
    let r = fx.send(fx.batch(0, 10, 10, now + 1), now + 2);
    assert!(
        matches!(
            r.ack(),
            Ack::Rejected {
                code: RejectCode::SizeRegression,
                ..
            }
        ),
        "{r:?}"
    );
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
        matches!(&r.ack(), Ack::Rejected { code: RejectCode::Malformed, reason } if reason.contains("record 5 is")),
        "{r:?}"
    );
    assert_eq!(r.stored, 0);
    assert_eq!(r.alerts[0].kind, AlertKind::Malformed);
    fx.records[5] = good;
    let r = fx.send(fx.batch(0, 10, 10, now + 1), now);
    assert!(matches!(r.ack(), Ack::Cosigned { .. }), "{r:?}");
    assert_eq!(r.stored, 10);
}

#[test]
fn a_replayed_old_message_is_not_taken_for_a_rollback() {
    let mut fx = fixture();
    let now = now_micros();
    let early = fx.batch(0, 10, 10, now);
    fx.send(early.clone(), now);
    fx.send(fx.batch(10, 30, 30, now + 5), now);
    // The broker delivers the first batch again: an old message, told by its counter.
    let r = fx.send(early, now);
    assert_eq!(r.answer, None, "a replay is not answered");
    assert!(r.alerts.is_empty(), "{:?}", r.alerts);
    assert_eq!(fx.w.replays_total(), 1);
    // A new message claiming the old head is a rollback.
    let r = fx.send(fx.batch(0, 10, 10, now + 10), now);
    assert!(
        matches!(
            r.ack(),
            Ack::Rejected {
                code: RejectCode::SizeRegression,
                ..
            }
        ),
        "{r:?}"
    );
}

/// Shown: `boot`, `head` and `sent_at` were outside the signature; one captured batch
/// republished with `boot = 2^32-1` locked the station out for good, and a forged `sent_at`
/// turned the truncation checks off.
#[test]
fn an_altered_envelope_is_refused_unanswered_and_locks_nobody_out() {
    let mut fx = fixture();
    let now = now_micros();
    let genuine = fx.batch(0, 10, 10, now);
    let RecordsMsg::V2(captured) = RecordsMsg::decode(&genuine).unwrap() else {
        unreachable!()
    };
    let key = fx.signer.verifier();
    let env: Envelope = captured.envelope.open(DOMAIN_BATCH, &key).unwrap();
    let forgeries = [
        Envelope {
            id: MsgId {
                boot: u32::MAX,
                counter: u64::MAX,
            },
            ..env.clone()
        },
        Envelope {
            sent_at: now + 3_600_000_000,
            head: 0,
            ..env.clone()
        },
    ];
    for forged in forgeries {
        let mut m = captured.clone();
        m.envelope.body = Bytes(postcard::to_stdvec(&forged).unwrap());
        let r = fx.send(RecordsMsg::V2(m).encode(), now);
        assert_eq!(r.answer, None, "a forgery is never answered: {r:?}");
        assert_eq!(r.alerts[0].kind, AlertKind::BadSignature);
        assert_eq!(r.stored, 0);
    }
    let a = &fx.w.agents()[0];
    assert_eq!((a.size, a.boot), (0, 0));
    // The genuine message, and the station's next ones, are taken.
    let r = fx.send(genuine, now);
    assert!(matches!(r.ack(), Ack::Cosigned { .. }), "{r:?}");
    let r = fx.send(fx.batch(10, 20, 20, now + 1), now + 1);
    assert!(matches!(r.ack(), Ack::Cosigned { .. }), "{r:?}");
    assert_eq!(
        fx.w.agents()[0].boot,
        1,
        "the boot the records were written in"
    );
}

#[test]
fn a_boot_the_records_do_not_back_is_not_kept_and_an_older_boot_is_a_regression() {
    let mut fx = fixture();
    let now = now_micros();
    // A station (its own key) claiming boot 7 for records written in boot 1.
    fx.boot = 7;
    let r = fx.send(fx.batch(0, 10, 10, now), now);
    assert!(matches!(r.ack(), Ack::Cosigned { .. }), "{r:?}");
    assert_eq!(fx.w.agents()[0].boot, 1, "proven by the records only");
    // A message from an older boot after boot 7: an old copy of the ledger, or a replay.
    fx.boot = 3;
    let r = fx.send(fx.batch(10, 20, 20, now), now);
    assert!(
        matches!(
            r.ack(),
            Ack::Rejected {
                code: RejectCode::BootRegression,
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(fx.w.agents()[0].size, 10);
}

/// Shown: `last_seen` was set before the signature check and statuses were unsigned, so a dead
/// station could be kept "online" with no stale alert.
#[test]
fn only_verified_new_messages_keep_a_station_alive() {
    let mut fx = fixture();
    let now = now_micros();
    let genuine = fx.batch(0, 0, 0, now);
    fx.send(genuine.clone(), now);
    let mut forged = fx.batch(0, 0, 0, now + 1);
    let n = forged.len();
    forged[n - 70] ^= 1;
    let stale_at = now + 61_000_000;
    // For the next minute: forged heartbeats, a replayed genuine one, and forged "online"
    // statuses in both protocol versions.
    for t in (1..60).map(|s| now + s * 1_000_000) {
        fx.send(forged.clone(), t);
        fx.send(genuine.clone(), t);
        let v1 = AgentStatusMsg::V1(proofline_common::wire::AgentStatus {
            online: true,
            version: "x".into(),
            boot: 1,
            size: 0,
        });
        assert_eq!(fx.w.status("flow-01", &v1.encode()), StatusTaken::Version);
        let (_, mut s) = fx.status(true, None);
        let n = s.len();
        s[n - 1] ^= 1;
        assert!(matches!(
            fx.w.status("flow-01", &s),
            StatusTaken::Refused(..)
        ));
    }
    assert!(!fx.w.agents()[0].online);
    let alerts = fx.w.tick(stale_at);
    assert!(
        alerts.iter().any(|a| a.kind == AlertKind::StaleAgent),
        "{alerts:?}"
    );
}

#[test]
fn a_status_is_taken_once_and_its_last_will_only_for_its_own_connection() {
    let mut fx = fixture();
    let (will_1, offline_1) = fx.status(false, None);
    let (_, online_1) = fx.status(true, Some(will_1.counter));
    assert_eq!(fx.w.status("flow-01", &online_1), StatusTaken::Taken(None));
    assert!(fx.w.agents()[0].online);
    assert_eq!(fx.w.status("flow-01", &online_1), StatusTaken::Replay);
    // The connection drops: the broker publishes its will.
    assert_eq!(fx.w.status("flow-01", &offline_1), StatusTaken::Taken(None));
    assert!(!fx.w.agents()[0].online);
    // Reconnected; the old will replayed does not take the station offline.
    let (will_2, _) = fx.status(false, None);
    let (_, online_2) = fx.status(true, Some(will_2.counter));
    assert_eq!(fx.w.status("flow-01", &online_2), StatusTaken::Taken(None));
    assert_eq!(fx.w.status("flow-01", &offline_1), StatusTaken::Replay);
    assert!(fx.w.agents()[0].online);
    assert_eq!(fx.w.status("ghost", &online_2), StatusTaken::Unknown);
}

#[test]
fn unknown_stations_and_garbage_get_no_answer() {
    let mut fx = fixture();
    let now = now_micros();
    let b = fx.batch(0, 10, 10, now);
    let r =
        fx.w.handle(&[("ghost".into(), b.clone())], now)
            .unwrap()
            .remove(0);
    assert_eq!(r.answer, None);
    assert_eq!(r.alerts[0].kind, AlertKind::UnknownAgent);
    for garbage in [vec![], vec![1], vec![0xff; 64], b[..b.len() / 2].to_vec()] {
        let r = fx.send(garbage, now);
        assert_eq!(r.answer, None);
        assert_eq!(r.stored, 0);
    }
    // A protocol v1 station hears why, in v1.
    let v1 = RecordsMsg::V1(proofline_common::wire::Batch {
        first: 0,
        records: vec![],
        checkpoint: String::new(),
        boot: 1,
        head: 0,
        sent_at: now,
    });
    let r = fx.send(v1.encode(), now);
    assert!(
        matches!(&r.answer, Some(Answer::V1(Ack::Rejected { code: RejectCode::Version, reason })) if reason.contains("protocol v1")),
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
            r.ack(),
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

/// Shown: a changed key in an enrollment silently replaced a station's key.
#[test]
fn a_changed_key_is_refused_and_only_a_rotation_replaces_it() {
    let mut fx = fixture();
    let now = now_micros();
    let r = fx.send(fx.batch(0, 10, 10, now), now);
    assert!(matches!(r.ack(), Ack::Cosigned { .. }), "{r:?}");
    let genuine = fx.signer.clone();
    let other = NoteSigner::generate(ORIGIN).unwrap();
    let enrolled = |key: &NoteSigner| Enrolled {
        agent_id: "flow-01".into(),
        origin: Origin::parse(ORIGIN).unwrap(),
        key: key.verifier(),
    };
    // Behind the hub's back: refused, and the station keeps being witnessed with its key.
    let outcome = fx.w.enroll(enrolled(&other)).unwrap();
    assert!(
        matches!(&outcome, Enrolling::KeyRefused { offered, .. } if *offered == other.verifier().to_string()),
        "{outcome:?}"
    );
    assert_eq!(
        fx.w.enroll(enrolled(&genuine)).unwrap(),
        Enrolling::Unchanged
    );
    fx.signer = other.clone();
    let r = fx.send(fx.batch(10, 20, 20, now + 1), now + 1);
    assert_eq!(r.answer, None);
    assert_eq!(r.alerts[0].kind, AlertKind::BadSignature);
    fx.signer = genuine.clone();
    let r = fx.send(fx.batch(10, 20, 20, now + 2), now + 2);
    assert!(matches!(r.ack(), Ack::Cosigned { .. }), "{r:?}");
    // A rotation replaces it.
    let old = fx.w.rotate("flow-01", other.verifier()).unwrap();
    assert_eq!(old, Some(genuine.verifier().to_string()));
    fx.signer = other.clone();
    let r = fx.send(fx.batch(20, 30, 30, now + 3), now + 3);
    assert!(matches!(r.ack(), Ack::Cosigned { .. }), "{r:?}");
    assert_eq!(fx.w.enroll(enrolled(&other)).unwrap(), Enrolling::Unchanged);
    // Removed: nothing more is taken, and nothing witnessed is lost.
    assert!(fx.w.remove("flow-01").is_some());
    assert!(!fx.w.is_enrolled("flow-01"));
    let r = fx.send(fx.batch(30, 30, 30, now + 4), now + 4);
    assert_eq!(r.answer, None);
    assert_eq!(r.alerts[0].kind, AlertKind::UnknownAgent);
    // Enrolled again with its witnessed key: it resumes where it was.
    assert_eq!(fx.w.enroll(enrolled(&other)).unwrap(), Enrolling::Resumed);
    assert_eq!(fx.w.agents()[0].size, 30);
}

/// A compromised station holds its key and may sign anything: extreme values in every field
/// are refused or taken, never a panic (a panic would end the hub for every station).
#[test]
fn extreme_values_signed_by_a_station_are_handled() {
    let mut fx = fixture();
    let now = now_micros();
    let cp = |size: u64| {
        Checkpoint {
            origin: ORIGIN.into(),
            size,
            root: Frontier::new().root(),
        }
        .sign(&fx.signer)
        .unwrap()
        .to_string()
    };
    let envelopes = [
        (i64::MIN, 0, 0, u64::MAX, cp(0)),
        (i64::MAX, 0, 0, 0, cp(0)),
        (now, u64::MAX, u64::MAX, u64::MAX, cp(u64::MAX)),
        (now, u64::MAX - 1, 0, 0, cp(0)),
        (now, 0, u64::MAX, 0, cp(0)),
    ];
    for (i, (sent_at, first, head, counter, checkpoint)) in envelopes.into_iter().enumerate() {
        let env = Envelope {
            agent_id: "flow-01".into(),
            id: MsgId {
                boot: 1,
                counter: counter.saturating_sub(10 - i as u64),
            },
            first,
            checkpoint,
            head,
            sent_at,
            degraded: Some("é".repeat(10_000)),
        };
        let r = fx.send(fx.seal(&env, 0, 0), now);
        assert_eq!(r.stored, 0, "{r:?}");
        for a in &r.alerts {
            assert!(a.message.len() < 2048, "{}", a.message.len());
        }
    }
    assert_eq!(fx.w.agents()[0].size, 0);
    assert!(fx.w.agents()[0].degraded.as_ref().unwrap().len() <= MAX_REASON_BYTES);
}

#[test]
fn a_station_reporting_itself_degraded_is_alerted_once() {
    let mut fx = fixture();
    let status = |fx: &Fixture, degraded: Option<&str>| {
        let body = StatusBody {
            agent_id: "flow-01".into(),
            id: fx.next_id(),
            online: true,
            will: None,
            version: "test".into(),
            size: 0,
            degraded: degraded.map(str::to_owned),
            sent_at: now_micros(),
        };
        AgentStatusMsg::V2(Signed::seal(DOMAIN_STATUS, &body, &fx.signer)).encode()
    };
    let s = status(&fx, Some("ledger cannot be written: disk full"));
    let StatusTaken::Taken(Some(a)) = fx.w.status("flow-01", &s) else {
        panic!("an alert")
    };
    assert_eq!(a.kind, AlertKind::StationDegraded);
    let s = status(&fx, Some("ledger cannot be written: disk full"));
    assert_eq!(fx.w.status("flow-01", &s), StatusTaken::Taken(None));
    assert_eq!(
        fx.w.agents()[0].degraded.as_deref(),
        Some("ledger cannot be written: disk full")
    );
    let s = status(&fx, None);
    assert_eq!(fx.w.status("flow-01", &s), StatusTaken::Taken(None));
    assert_eq!(fx.w.agents()[0].degraded, None);
}
