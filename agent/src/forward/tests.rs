//! The forwarding state machine driven event by event: a real ledger in a temporary directory,
//! a fake link that keeps what was published, a hub key to cosign with, and the time passed in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proofline_common::hash::leaf_hash;
use proofline_common::merkle::Frontier;
use proofline_common::mqtt::{MqttPlan, MqttSection};
use proofline_common::note::{Checkpoint, Note, NoteSigner, VerifierKey};
use proofline_common::record::{now_micros, Body, Record, StationEvent};
use proofline_common::store::{Access, Entry, Store, StoreOptions};
use proofline_common::synth::inspection_result;
use proofline_common::wire::{
    record_cost, Ack, AckBody, AckMsg, AgentStatusMsg, AgentTopics, Batch, Envelope, MsgId,
    RecordsMsg, RejectCode, Signed, StatusBody, DOMAIN_ACK, DOMAIN_BATCH, DOMAIN_STATUS,
};
use proofline_common::writer::{spawn_writer, LedgerHandle, WriterConfig, WriterThread};
use proofline_common::Origin;
use tokio::sync::watch;

use super::machine::{Event, Machine, Publisher, State, Step};
use super::{ForwardPlan, LinkError};
use crate::station::Metrics;

const ORIGIN: &str = "proofline/plant-1/station-a";
const HEARTBEAT: Duration = Duration::from_secs(10);
const ACK_TIMEOUT: Duration = Duration::from_secs(15);
/// Raw bytes per synthetic record: a few hundred bytes each, so a 1 KiB budget holds two.
const PAD: usize = 200;

/// What the machine published, its signatures checked and decoded (a batch in the shape of its
/// envelope); `down` makes every publish fail like a dead client.
#[derive(Debug)]
struct FakeLink {
    key: VerifierKey,
    batches: Vec<Batch>,
    ids: Vec<MsgId>,
    envelopes: Vec<Envelope>,
    statuses: Vec<bool>,
    status_bodies: Vec<StatusBody>,
    down: bool,
}

impl FakeLink {
    fn new(key: VerifierKey) -> Self {
        FakeLink {
            key,
            batches: Vec::new(),
            ids: Vec::new(),
            envelopes: Vec::new(),
            statuses: Vec::new(),
            status_bodies: Vec::new(),
            down: false,
        }
    }
}

impl Publisher for FakeLink {
    fn publish_records(&mut self, payload: Vec<u8>) -> Result<(), LinkError> {
        if self.down {
            return Err(LinkError::NotConnected);
        }
        let RecordsMsg::V2(b) = RecordsMsg::decode(&payload).expect("a records payload") else {
            panic!("a protocol v2 batch");
        };
        let env: Envelope = b
            .envelope
            .open(DOMAIN_BATCH, &self.key)
            .expect("signed by the station");
        self.batches.push(Batch {
            first: env.first,
            records: b.records,
            checkpoint: env.checkpoint.clone(),
            boot: env.id.boot,
            head: env.head,
            sent_at: env.sent_at,
        });
        self.ids.push(env.id);
        self.envelopes.push(env);
        Ok(())
    }

    fn publish_status(&mut self, payload: Vec<u8>) -> Result<(), LinkError> {
        if self.down {
            return Err(LinkError::NotConnected);
        }
        let AgentStatusMsg::V2(s) = AgentStatusMsg::decode(&payload).expect("a status payload")
        else {
            panic!("a protocol v2 status");
        };
        let s: StatusBody = s
            .open(DOMAIN_STATUS, &self.key)
            .expect("signed by the station");
        self.statuses.push(s.online);
        self.status_bodies.push(s);
        Ok(())
    }
}

/// A station's forwarder with everything but the broker real.
struct Rig {
    machine: Option<Machine>,
    writer: Option<WriterThread>,
    link: FakeLink,
    plan: ForwardPlan,
    hub: NoteSigner,
    metrics: Arc<Metrics>,
    cosigned: watch::Receiver<u64>,
    fail_commits: Arc<AtomicBool>,
    degraded: watch::Sender<Option<String>>,
    t0: Instant,
    _dir: tempfile::TempDir,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

impl Rig {
    fn new() -> Rig {
        Rig::with(|_| {})
    }

    /// A rig whose plan `tune` adjusts (byte budget, in-flight limit).
    fn with(tune: impl FnOnce(&mut ForwardPlan)) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let origin = Origin::parse(ORIGIN).unwrap();
        let (store, _) =
            Store::open(dir.path(), Access::Write(origin), &StoreOptions::default()).unwrap();
        let fail_commits = Arc::new(AtomicBool::new(false));
        let (ledger, writer) = spawn_writer(
            store,
            WriterConfig {
                fail_commits: Some(Arc::clone(&fail_commits)),
                ..WriterConfig::default()
            },
        )
        .unwrap();
        let hub = NoteSigner::generate("proofline/plant-1/hub").unwrap();
        let mut plan = ForwardPlan {
            mqtt: MqttPlan::new(&MqttSection::plain("127.0.0.1:1883")).unwrap(),
            cosigner: hub.cosignature_verifier(),
            signer: NoteSigner::generate(ORIGIN).unwrap(),
            topics: AgentTopics::new("plant-1", "station-a"),
            agent_id: "station-a".into(),
            client_id: "proofline-agent-plant-1-station-a".into(),
            batch_max_bytes: 64 * 1024,
            max_inflight: 8,
            heartbeat: HEARTBEAT,
            ack_timeout: ACK_TIMEOUT,
        };
        tune(&mut plan);
        let metrics = Arc::new(Metrics::default());
        let (tx, cosigned) = watch::channel(0);
        let (degraded, degraded_rx) = watch::channel(None);
        let t0 = Instant::now();
        let machine = Machine::new(
            plan.clone(),
            ledger,
            None,
            Arc::clone(&metrics),
            tx,
            degraded_rx,
            t0,
        );
        Rig {
            machine: Some(machine),
            writer: Some(writer),
            link: FakeLink::new(plan.signer.verifier()),
            degraded,
            plan,
            hub,
            metrics,
            cosigned,
            fail_commits,
            t0,
            _dir: dir,
        }
    }

    fn m(&self) -> &Machine {
        self.machine.as_ref().unwrap()
    }

    fn ledger(&self) -> &LedgerHandle {
        self.m().ledger()
    }

    /// Handles `event` `at` after the start.
    async fn on(&mut self, event: Event, at: Duration) -> Result<Step, LinkError> {
        let m = self.machine.as_mut().unwrap();
        m.handle(event, self.t0 + at, &mut self.link).await
    }

    async fn ok(&mut self, event: Event, at: Duration) -> Step {
        self.on(event, at).await.expect("no link error")
    }

    /// Connected and subscribed at `at`.
    async fn online(&mut self, at: Duration) {
        assert_eq!(self.ok(Event::Connected, at).await, Step::Continue);
        assert_eq!(self.ok(Event::Subscribed, at).await, Step::Continue);
    }

    /// Appends `n` synthetic results in one commit.
    async fn produce(&self, n: u64) {
        let base = self.ledger().head().size;
        let entries = (base..base + n)
            .map(|i| Entry {
                received_at: now_micros(),
                body: inspection_result(i, PAD),
            })
            .collect();
        self.ledger().append(entries).await.unwrap();
    }

    /// The hub's answer to `batch` when it stored it: the checkpoint with its cosignature.
    fn cosign(&self, batch: &Batch, timestamp: u64) -> Ack {
        let mut note = Note::parse(&batch.checkpoint).unwrap();
        note.push(self.hub.cosign(&note.text, timestamp).unwrap());
        Ack::Cosigned {
            note: note.to_string(),
        }
    }

    /// `ack` as the hub sends it: signed by the hub key, answering `id` of this station.
    fn answer_to(&self, id: MsgId, ack: Ack) -> Event {
        let body = AckBody {
            agent_id: "station-a".into(),
            answers: id,
            ack,
        };
        Event::Answer(AckMsg::V2(Signed::seal(DOMAIN_ACK, &body, &self.hub)).encode())
    }

    /// `ack` as the hub's answer to the oldest batch in flight (acks come back in the order
    /// the batches went out).
    fn answer(&self, ack: Ack) -> Event {
        let id = self.m().oldest_in_flight().expect("a batch in flight");
        self.answer_to(id, ack)
    }

    fn batch(&self, i: usize) -> Batch {
        self.link.batches[i].clone()
    }

    fn resends(&self) -> u64 {
        self.metrics.forward_resends.load(Ordering::Relaxed)
    }

    fn hub_connected(&self) -> bool {
        self.metrics.hub_connected.load(Ordering::Relaxed) == 1
    }

    fn ledger_errors(&self) -> u64 {
        self.metrics.ledger_errors.load(Ordering::Relaxed)
    }

    /// Stops the machine and the writer, as the agent does at exit, and hands back the store.
    fn finish(mut self) -> Store {
        drop(self.machine.take());
        self.writer.take().unwrap().join()
    }

    /// A new machine on the same ledger from the cosignature it stored, as after a restart.
    fn restart(&mut self) {
        drop(self.machine.take());
        let store = self.writer.take().unwrap().join();
        let start = store.cosigned().cloned();
        let (ledger, writer) = spawn_writer(store, WriterConfig::default()).unwrap();
        let (tx, rx) = watch::channel(0);
        self.machine = Some(Machine::new(
            self.plan.clone(),
            ledger,
            start,
            Arc::clone(&self.metrics),
            tx,
            self.degraded.subscribe(),
            self.t0,
        ));
        self.writer = Some(writer);
        self.cosigned = rx;
        self.link = FakeLink::new(self.plan.signer.verifier());
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // The writer ends once the machine's handle is gone; let it close the store before the
        // temporary directory goes.
        drop(self.machine.take());
        if let Some(w) = self.writer.take() {
            drop(w.join());
        }
    }
}

fn seqs(b: &Batch) -> std::ops::Range<u64> {
    b.first..b.first + b.records.len() as u64
}

fn checkpoint(b: &Batch) -> Checkpoint {
    Checkpoint::parse(&Note::parse(&b.checkpoint).unwrap().text).unwrap()
}

/// The Merkle root of the ledger's first `size` records.
fn root_at(ledger: &LedgerHandle, size: u64) -> proofline_common::hash::Hash {
    let mut f = Frontier::new();
    for item in ledger.reader().range(0..size) {
        f.push(leaf_hash(&item.unwrap().1));
    }
    f.root()
}

/// Batches one after the other from `first`: no gap, no restart.
fn assert_in_order(batches: &[Batch], first: u64) {
    let all: Vec<_> = batches.iter().map(seqs).collect();
    let mut next = first;
    for b in batches {
        assert_eq!(b.first, next, "{all:?}");
        next = seqs(b).end;
    }
}

fn small_batches(p: &mut ForwardPlan) {
    p.batch_max_bytes = 1024;
}

#[tokio::test]
async fn connecting_publishes_the_online_status_and_sends_nothing_until_subscribed() {
    let mut rig = Rig::new();
    rig.produce(3).await;
    rig.ok(Event::Connected, secs(0.0)).await;
    assert_eq!(rig.link.statuses, [true]);
    assert_eq!(rig.m().state(), State::Connecting { paused_until: None });
    rig.ok(Event::HeadAdvanced, secs(0.0)).await;
    rig.ok(Event::Tick, secs(11.0)).await;
    assert!(rig.link.batches.is_empty(), "an answer could be missed");
    assert!(!rig.hub_connected());

    rig.ok(Event::Subscribed, secs(11.0)).await;
    assert!(rig.hub_connected());
    assert_eq!(rig.link.batches.len(), 1);
    assert_eq!(seqs(&rig.batch(0)), 0..3);
    assert_eq!(rig.m().state(), State::CatchUp);
}

#[tokio::test]
async fn sends_from_the_last_cosigned_size_after_a_restart() {
    let mut rig = Rig::new();
    rig.produce(5).await;
    rig.online(secs(0.0)).await;
    let ack = rig.cosign(&rig.batch(0), 1);
    rig.ok(rig.answer(ack), secs(0.1)).await;
    rig.produce(3).await;

    rig.restart();
    assert_eq!(*rig.cosigned.borrow(), 5);
    assert_eq!(rig.m().cosigned_size(), 5);
    rig.online(secs(1.0)).await;
    assert_eq!(rig.link.batches.len(), 1);
    assert_eq!(seqs(&rig.batch(0)), 5..8);
}

#[tokio::test]
async fn reconnecting_sends_again_from_the_cosigned_size() {
    let mut rig = Rig::new();
    rig.produce(3).await;
    rig.online(secs(0.0)).await;
    rig.produce(2).await;
    rig.ok(Event::HeadAdvanced, secs(0.1)).await;
    assert_eq!(seqs(&rig.batch(1)), 3..5);
    let ack = rig.cosign(&rig.batch(0), 1);
    rig.ok(rig.answer(ack), secs(0.2)).await;

    rig.ok(Event::LinkLost, secs(0.3)).await;
    rig.online(secs(1.0)).await;
    assert_eq!(seqs(&rig.batch(2)), 3..5, "the batch lost with the link");
    assert_eq!(rig.m().in_flight(), 1, "what went out before is forgotten");
}

#[tokio::test]
async fn new_records_go_out_in_batches_under_the_byte_budget() {
    let mut rig = Rig::with(|p| {
        small_batches(p);
        p.max_inflight = 64;
    });
    rig.produce(9).await;
    rig.online(secs(0.0)).await;
    let batches = rig.link.batches.clone();
    assert!(batches.len() > 2, "{} batches", batches.len());
    let mut next = 0;
    for b in &batches {
        assert_eq!(b.first, next, "in seq order, no gap");
        let cost: usize = b.records.iter().map(|r| record_cost(r.0.len())).sum();
        assert!(cost <= 1024, "{cost} bytes in a batch");
        next = seqs(b).end;
        if let Ok(Some(following)) = rig.ledger().reader().get(next) {
            assert!(
                cost + record_cost(following.len()) > 1024,
                "the batch ending at {next} had room for one more"
            );
        }
        let cp = checkpoint(b);
        assert_eq!((cp.size, cp.root), (next, root_at(rig.ledger(), next)));
        assert_eq!(b.head, 9);
    }
    assert_eq!(next, 9);
}

#[tokio::test]
async fn no_more_batches_than_the_in_flight_limit_go_out_before_an_answer() {
    let mut rig = Rig::with(|p| {
        small_batches(p);
        p.max_inflight = 2;
    });
    rig.produce(10).await;
    rig.online(secs(0.0)).await;
    assert_eq!(rig.link.batches.len(), 2);
    rig.ok(Event::HeadAdvanced, secs(0.1)).await;
    rig.ok(Event::Tick, secs(0.2)).await;
    assert_eq!(rig.link.batches.len(), 2);

    let ack = rig.cosign(&rig.batch(0), 1);
    rig.ok(rig.answer(ack), secs(0.3)).await;
    assert_eq!(rig.link.batches.len(), 3);
    assert_eq!(rig.batch(2).first, seqs(&rig.batch(1)).end);
    assert_eq!(rig.m().in_flight(), 2);
}

#[tokio::test]
async fn an_idle_ledger_sends_a_heartbeat_after_the_heartbeat_interval() {
    let mut rig = Rig::new();
    rig.produce(2).await;
    rig.online(secs(0.0)).await;
    let ack = rig.cosign(&rig.batch(0), 1);
    rig.ok(rig.answer(ack), secs(0.1)).await;
    assert_eq!(rig.m().state(), State::Live);
    let statuses = rig.link.statuses.len();

    rig.ok(Event::Tick, secs(9.9)).await;
    assert_eq!(rig.link.batches.len(), 1);
    rig.ok(Event::Tick, secs(10.0)).await;
    assert_eq!(rig.link.batches.len(), 2);
    let hb = rig.batch(1);
    assert_eq!(
        (hb.first, hb.records.len(), checkpoint(&hb).size),
        (2, 0, 2)
    );
    assert_eq!(
        rig.link.statuses.len(),
        statuses + 1,
        "the status is refreshed too"
    );
    assert_eq!(rig.link.statuses.last(), Some(&true));

    rig.ok(Event::Tick, secs(20.0)).await;
    assert_eq!(
        rig.link.batches.len(),
        2,
        "one heartbeat in flight at a time"
    );
}

#[tokio::test]
async fn a_cosignature_is_verified_stored_and_pops_the_batch_it_answers() {
    let mut rig = Rig::new();
    rig.produce(3).await;
    rig.online(secs(0.0)).await;
    let ack = rig.cosign(&rig.batch(0), 1);
    let Ack::Cosigned { note } = &ack else {
        unreachable!()
    };
    let note = note.clone();
    rig.ok(rig.answer(ack), secs(0.1)).await;
    assert_eq!(rig.m().in_flight(), 0);
    assert_eq!(rig.m().cosigned_size(), 3);
    assert_eq!(*rig.cosigned.borrow(), 3);
    assert_eq!(rig.metrics.cosigned_size.load(Ordering::Relaxed), 3);
    assert_eq!(rig.m().state(), State::Live);

    let store = rig.finish();
    let stored = store.cosigned().expect("stored durably");
    assert_eq!((stored.size, &stored.note), (3, &note));
}

#[tokio::test]
async fn a_heartbeat_cosignature_at_the_cosigned_size_stores_nothing() {
    let mut rig = Rig::new();
    rig.produce(2).await;
    rig.online(secs(0.0)).await;
    let first = rig.cosign(&rig.batch(0), 1000);
    let Ack::Cosigned { note: first_note } = &first else {
        unreachable!()
    };
    let first_note = first_note.clone();
    rig.ok(rig.answer(first), secs(0.1)).await;
    rig.ok(Event::Tick, secs(10.0)).await;
    let heartbeat = rig.cosign(&rig.batch(1), 2000);
    rig.ok(rig.answer(heartbeat), secs(10.1)).await;
    assert_eq!(rig.m().in_flight(), 0, "the heartbeat was answered");
    assert_eq!(rig.m().cosigned_size(), 2);

    let store = rig.finish();
    assert_eq!(store.cosigned().unwrap().note, first_note);
}

#[tokio::test]
async fn a_cosignature_that_does_not_verify_is_ignored() {
    let mut rig = Rig::new();
    rig.produce(3).await;
    rig.online(secs(0.0)).await;
    let b = rig.batch(0);
    let mut by_another_hub = Note::parse(&b.checkpoint).unwrap();
    let stranger = NoteSigner::generate("proofline/plant-1/hub").unwrap();
    by_another_hub.push(stranger.cosign(&by_another_hub.text, 1).unwrap());
    let mut not_ours = checkpoint(&b)
        .sign(&NoteSigner::generate(ORIGIN).unwrap())
        .unwrap();
    not_ours.push(rig.hub.cosign(&not_ours.text, 1).unwrap());
    for note in [
        by_another_hub.to_string(),
        not_ours.to_string(),
        "not a note".to_owned(),
    ] {
        // Each on a fresh connection, answering the batch it sent.
        rig.ok(Event::LinkLost, secs(0.1)).await;
        rig.online(secs(0.1)).await;
        rig.ok(rig.answer(Ack::Cosigned { note }), secs(0.1)).await;
        assert_eq!(rig.m().cosigned_size(), 0);
    }
    assert_eq!(*rig.cosigned.borrow(), 0);
    assert!(rig.finish().cosigned().is_none());
}

#[tokio::test]
async fn resends_from_hub_size_after_gap() {
    let mut rig = Rig::with(small_batches);
    rig.produce(9).await;
    rig.online(secs(0.0)).await;
    let sent = rig.link.batches.len();
    assert!(sent > 2, "{sent} batches");

    rig.ok(rig.answer(Ack::Resend { from: 1 }), secs(0.1)).await;
    assert_eq!(rig.resends(), 1);
    let again = rig.link.batches[sent..].to_vec();
    assert_in_order(&again, 1);
    let cp = checkpoint(&again[0]);
    assert_eq!(cp.root, root_at(rig.ledger(), cp.size));
    assert_eq!(rig.m().in_flight(), sent - 1 + again.len());

    // The batches sent before are stale: a Resend answering one of them is already handled.
    rig.ok(rig.answer(Ack::Resend { from: 1 }), secs(0.2)).await;
    assert_eq!(rig.resends(), 1);
    assert_in_order(&rig.link.batches[sent..], 1);
}

#[tokio::test]
async fn a_resend_below_the_cosigned_size_records_one_hub_regression_alarm() {
    let mut rig = Rig::new();
    rig.produce(4).await;
    rig.online(secs(0.0)).await;
    let ack = rig.cosign(&rig.batch(0), 1);
    rig.ok(rig.answer(ack), secs(0.1)).await;
    rig.ok(Event::Tick, secs(10.0)).await;

    rig.ok(rig.answer(Ack::Resend { from: 1 }), secs(10.1))
        .await;
    assert_eq!(rig.ledger().head().size, 5, "the alarm is in the ledger");
    let resent = rig.link.batches.last().unwrap().clone();
    assert_eq!(seqs(&resent), 1..5, "what the hub lost, and the alarm");
    rig.ok(rig.answer(Ack::Resend { from: 1 }), secs(10.2))
        .await;
    assert_eq!(rig.resends(), 2, "each ask is answered");

    assert_eq!(rig.ledger().head().size, 5, "one alarm, not one per ask");
    let alarms = rig.metrics.alarms.lock().unwrap().clone();
    assert_eq!(alarms.get("forwarder|hub.regression"), Some(&1));
    let rec = Record::decode(&rig.ledger().reader().get(4).unwrap().unwrap()).unwrap();
    let Body::StationEvent(StationEvent::Alarm(a)) = rec.body() else {
        panic!("not an alarm: {:?}", rec.body());
    };
    assert_eq!(a.code, "hub.regression");
    assert!(
        a.message
            .starts_with("the hub asks for records from seq 1 but had cosigned 4"),
        "{}",
        a.message
    );
}

#[tokio::test]
async fn a_refusal_pauses_sending_for_the_heartbeat_interval_then_resumes() {
    let mut rig = Rig::new();
    rig.produce(3).await;
    rig.online(secs(0.0)).await;
    let refusal = Ack::Rejected {
        code: RejectCode::ChainBreak,
        reason: "test".into(),
    };
    rig.ok(rig.answer(refusal), secs(1.0)).await;
    assert_eq!(rig.metrics.forward_rejected.load(Ordering::Relaxed), 1);
    assert_eq!(
        rig.m().state(),
        State::Paused {
            until: rig.t0 + secs(11.0)
        }
    );
    rig.produce(2).await;
    rig.ok(Event::HeadAdvanced, secs(2.0)).await;
    rig.ok(Event::Tick, secs(10.9)).await;
    assert_eq!(rig.link.batches.len(), 1);

    rig.ok(Event::Tick, secs(11.0)).await;
    assert_eq!(rig.link.batches.len(), 2);
    assert_eq!(seqs(&rig.batch(1)), 0..5, "from the cosigned size");
    assert_eq!(rig.m().state(), State::CatchUp);
}

#[tokio::test]
async fn a_refusal_outlives_a_reconnect() {
    let mut rig = Rig::new();
    rig.produce(3).await;
    rig.online(secs(0.0)).await;
    let refusal = Ack::Rejected {
        code: RejectCode::Fork,
        reason: "test".into(),
    };
    rig.ok(rig.answer(refusal), secs(0.0)).await;
    rig.ok(Event::LinkLost, secs(1.0)).await;
    let until = rig.t0 + HEARTBEAT;
    assert_eq!(
        rig.m().state(),
        State::Disconnected {
            paused_until: Some(until)
        }
    );
    rig.online(secs(2.0)).await;
    assert_eq!(rig.m().state(), State::Paused { until });
    assert_eq!(rig.link.batches.len(), 1);
    rig.ok(Event::Tick, HEARTBEAT).await;
    assert_eq!(rig.link.batches.len(), 2);
}

#[tokio::test]
async fn an_ack_timeout_resends_from_the_cosigned_size() {
    let mut rig = Rig::new();
    rig.produce(3).await;
    rig.online(secs(0.0)).await;
    let ack = rig.cosign(&rig.batch(0), 1);
    rig.ok(rig.answer(ack), secs(0.1)).await;
    rig.produce(2).await;
    rig.ok(Event::HeadAdvanced, secs(1.0)).await;
    assert_eq!(seqs(&rig.batch(1)), 3..5);

    rig.ok(Event::Tick, secs(16.0)).await;
    assert_eq!((rig.link.batches.len(), rig.resends()), (2, 0));
    rig.ok(Event::Tick, secs(16.2)).await;
    assert_eq!(rig.resends(), 1);
    assert_eq!(rig.link.batches.len(), 3);
    assert_eq!(seqs(&rig.batch(2)), 3..5);
    assert_eq!(rig.m().in_flight(), 1, "the unanswered batch is forgotten");
}

#[tokio::test]
async fn answers_to_stale_batches_are_ignored_except_cosignatures() {
    let mut rig = Rig::with(small_batches);
    rig.produce(9).await;
    rig.online(secs(0.0)).await;
    let old = rig.link.batches.clone();
    assert!(old.len() >= 4, "{} batches", old.len());
    rig.ok(rig.answer(Ack::Resend { from: 0 }), secs(0.1)).await;

    let refusal = Ack::Rejected {
        code: RejectCode::ChainBreak,
        reason: "late".into(),
    };
    rig.ok(rig.answer(refusal), secs(0.2)).await;
    rig.ok(rig.answer(Ack::Resend { from: 7 }), secs(0.3)).await;
    assert_eq!(rig.metrics.forward_rejected.load(Ordering::Relaxed), 0);
    assert_eq!(rig.resends(), 1);
    assert_eq!(rig.m().state(), State::CatchUp, "not paused");
    assert_in_order(&rig.link.batches[old.len()..], 0);

    let late = rig.cosign(&old[3], 1);
    rig.ok(rig.answer(late), secs(0.4)).await;
    assert_eq!(rig.m().cosigned_size(), seqs(&old[3]).end);
    assert_eq!(*rig.cosigned.borrow(), seqs(&old[3]).end);
}

#[tokio::test]
async fn stale_batches_a_cosignature_covers_leave_the_in_flight_queue() {
    let mut rig = Rig::with(|p| {
        small_batches(p);
        p.max_inflight = 64;
    });
    rig.produce(9).await;
    rig.online(secs(0.0)).await;
    let old = rig.link.batches.clone();
    assert!(old.len() >= 3, "{} batches", old.len());
    rig.ok(rig.answer(Ack::Resend { from: 0 }), secs(0.1)).await;
    let in_flight = rig.m().in_flight();

    // The hub answers a batch it already holds with its latest cosignature.
    let latest = rig.cosign(&old[2], 1);
    rig.ok(rig.answer(latest), secs(0.2)).await;
    assert_eq!(rig.m().cosigned_size(), seqs(&old[2]).end);
    assert_eq!(
        rig.m().in_flight(),
        in_flight - 2,
        "the batch answered and the stale one the cosignature covers"
    );
}

#[tokio::test]
async fn a_lost_link_disconnects_and_only_a_connection_that_worked_resets_the_backoff() {
    let mut rig = Rig::new();
    let lost = Step::Reconnect { worked: false };
    assert_eq!(rig.ok(Event::LinkLost, secs(0.0)).await, lost);
    rig.ok(Event::Connected, secs(1.0)).await;
    assert_eq!(
        rig.ok(Event::LinkLost, secs(1.0)).await,
        lost,
        "never subscribed"
    );

    rig.online(secs(2.0)).await;
    assert!(rig.hub_connected());
    let step = rig.ok(Event::LinkLost, secs(3.0)).await;
    assert_eq!(step, Step::Reconnect { worked: true });
    assert!(!rig.hub_connected());
    assert_eq!(rig.m().state(), State::Disconnected { paused_until: None });
    assert_eq!(rig.ok(Event::LinkLost, secs(4.0)).await, lost);
}

#[tokio::test]
async fn a_failed_publish_is_a_link_error() {
    let mut rig = Rig::new();
    rig.produce(1).await;
    rig.ok(Event::Connected, secs(0.0)).await;
    rig.link.down = true;
    let e = rig.on(Event::Subscribed, secs(0.0)).await;
    assert!(matches!(e, Err(LinkError::NotConnected)), "{e:?}");
    assert_eq!(rig.ledger_errors(), 0);
}

#[tokio::test]
async fn shutdown_publishes_the_offline_status_and_stops() {
    let mut rig = Rig::new();
    rig.produce(1).await;
    rig.online(secs(0.0)).await;
    assert_eq!(rig.ok(Event::Shutdown, secs(1.0)).await, Step::Stop);
    assert_eq!(rig.link.statuses.last(), Some(&false));
    assert_eq!(rig.m().state(), State::Stopped);

    let published = (rig.link.batches.len(), rig.link.statuses.len());
    rig.produce(1).await;
    assert_eq!(rig.ok(Event::HeadAdvanced, secs(2.0)).await, Step::Stop);
    assert_eq!(rig.ok(Event::Tick, secs(30.0)).await, Step::Stop);
    assert_eq!((rig.link.batches.len(), rig.link.statuses.len()), published);
}

#[tokio::test]
async fn shutdown_while_disconnected_publishes_nothing() {
    let mut rig = Rig::new();
    assert_eq!(rig.ok(Event::Shutdown, secs(0.0)).await, Step::Stop);
    assert!(rig.link.statuses.is_empty());
}

#[tokio::test]
async fn a_cosignature_the_ledger_cannot_store_is_a_ledger_error_not_a_lost_link() {
    let mut rig = Rig::new();
    rig.produce(3).await;
    rig.online(secs(0.0)).await;
    rig.fail_commits.store(true, Ordering::SeqCst);
    let entry = Entry {
        received_at: now_micros(),
        body: inspection_result(3, PAD),
    };
    assert!(rig.ledger().append(vec![entry]).await.is_err());

    let ack = rig.cosign(&rig.batch(0), 1);
    assert_eq!(rig.ok(rig.answer(ack), secs(1.0)).await, Step::Continue);
    assert_eq!(rig.ledger_errors(), 1);
    assert!(rig.hub_connected());
    assert_eq!(rig.m().cosigned_size(), 0);
    assert_eq!(
        rig.m().state(),
        State::Paused {
            until: rig.t0 + secs(11.0)
        }
    );
}

#[tokio::test]
async fn a_resend_beyond_the_ledger_head_is_a_ledger_error_not_a_lost_link() {
    let mut rig = Rig::new();
    rig.produce(3).await;
    rig.online(secs(0.0)).await;
    let step = rig.ok(rig.answer(Ack::Resend { from: 7 }), secs(1.0)).await;
    assert_eq!(step, Step::Continue);
    assert_eq!(rig.ledger_errors(), 1);
    assert!(rig.hub_connected());
    assert_eq!(rig.m().next_seq(), 3, "nothing to start again from");
    assert!(matches!(rig.m().state(), State::Paused { .. }));
}

/// Shown: forged `Resend`/`Rejected` on the ack topic were believed: false `hub.regression`
/// alarms in the station's own ledger, thousands of duplicate resends, forwarding frozen.
#[tokio::test]
async fn forged_replayed_and_misdirected_answers_are_ignored() {
    let mut rig = Rig::new();
    rig.produce(4).await;
    rig.online(secs(0.0)).await;
    let first = rig.link.ids[0];
    let Event::Answer(genuine_resend) = rig.answer_to(first, Ack::Resend { from: 0 }) else {
        unreachable!()
    };
    let ack = rig.cosign(&rig.batch(0), 1);
    rig.ok(rig.answer(ack), secs(0.1)).await;
    assert_eq!(rig.m().cosigned_size(), 4);
    rig.produce(1).await;
    rig.ok(Event::HeadAdvanced, secs(0.2)).await;
    let in_flight = rig.m().oldest_in_flight().unwrap();
    let sent = rig.link.batches.len();
    let head = rig.ledger().head().size;

    let stranger = NoteSigner::generate("proofline/plant-1/hub").unwrap();
    let refusal = Ack::Rejected {
        code: RejectCode::Fork,
        reason: "forged".into(),
    };
    let signed_by = |key: &NoteSigner, agent: &str, id: MsgId, ack: Ack| {
        let body = AckBody {
            agent_id: agent.into(),
            answers: id,
            ack,
        };
        Event::Answer(AckMsg::V2(Signed::seal(DOMAIN_ACK, &body, key)).encode())
    };
    for i in 0..1000u32 {
        let t = secs(0.3 + f64::from(i) * 0.001);
        // Unsigned (protocol v1), as anyone on the network can publish.
        let v1 = AckMsg::V1(Ack::Resend { from: 1 }).encode();
        rig.ok(Event::Answer(v1), t).await;
        let v1 = AckMsg::V1(refusal.clone()).encode();
        rig.ok(Event::Answer(v1), t).await;
        // Signed by another key, for the batch in flight.
        let e = signed_by(&stranger, "station-a", in_flight, Ack::Resend { from: 1 });
        rig.ok(e, t).await;
        // Signed by the hub for another station, or for another boot.
        let e = signed_by(&rig.hub, "station-b", in_flight, refusal.clone());
        rig.ok(e, t).await;
        let other_boot = MsgId {
            boot: in_flight.boot + 1,
            ..in_flight
        };
        rig.ok(
            signed_by(&rig.hub, "station-a", other_boot, refusal.clone()),
            t,
        )
        .await;
        // A genuine answer replayed: its batch is no longer in flight.
        rig.ok(Event::Answer(genuine_resend.clone()), t).await;
        // Garbage.
        rig.ok(Event::Answer(vec![0xff; 40]), t).await;
    }
    assert_eq!(rig.m().ignored_answers(), 7000);
    assert_eq!(rig.resends(), 0, "no resend");
    assert_eq!(rig.link.batches.len(), sent, "nothing sent again");
    assert_eq!(rig.ledger().head().size, head, "no hub.regression alarm");
    assert!(matches!(rig.m().state(), State::CatchUp), "not paused");
    // The genuine answer to the batch in flight is still taken.
    let ack = rig.cosign(&rig.batch(sent - 1), 2);
    rig.ok(rig.answer_to(in_flight, ack), secs(2.0)).await;
    assert_eq!(rig.m().cosigned_size(), 5);
}

#[tokio::test]
async fn every_message_has_a_new_id_and_the_online_status_names_its_will() {
    let mut rig = Rig::new();
    rig.produce(3).await;
    let will = rig.machine.as_mut().unwrap().will();
    let AgentStatusMsg::V2(will) = AgentStatusMsg::decode(&will).unwrap() else {
        panic!("v2")
    };
    let will: StatusBody = will
        .open(DOMAIN_STATUS, &rig.plan.signer.verifier())
        .unwrap();
    assert!(!will.online);
    rig.online(secs(0.0)).await;
    let online = rig.link.status_bodies[0].clone();
    assert!(online.online);
    assert_eq!(online.will, Some(will.id.counter));
    assert!(online.id > will.id);
    assert!(rig.link.ids[0] > online.id);
    assert_eq!(rig.link.envelopes[0].agent_id, "station-a");
    assert_eq!(rig.link.envelopes[0].degraded, None);
    // A degraded station says so, signed, in a status at once and in its next heartbeat.
    rig.degraded
        .send_replace(Some("the ledger cannot store: disk full".into()));
    let statuses = rig.link.status_bodies.len();
    rig.ok(Event::Tick, secs(0.05)).await;
    assert_eq!(rig.link.status_bodies.len(), statuses + 1);
    assert_eq!(
        rig.link.status_bodies.last().unwrap().degraded.as_deref(),
        Some("the ledger cannot store: disk full")
    );
    let ack = rig.cosign(&rig.batch(0), 1);
    rig.ok(rig.answer(ack), secs(0.1)).await;
    rig.ok(Event::Tick, secs(10.2)).await;
    let hb = rig.link.envelopes.last().unwrap();
    assert_eq!(
        hb.degraded.as_deref(),
        Some("the ledger cannot store: disk full")
    );
    assert!(hb.id > rig.link.ids[0]);
    let st = rig.link.status_bodies.last().unwrap();
    assert_eq!(
        st.degraded.as_deref(),
        Some("the ledger cannot store: disk full")
    );
}
