//! The forwarder as a state machine: what to send and when, with no socket and no clock.
//!
//! [`Machine::handle`] takes one [`Event`] and the time it happened, publishes through a
//! [`Publisher`] and answers with the [`Step`] the link takes next. Besides the publisher, the
//! machine's only peer is the local ledger: records are read from it, cosignatures stored in it.
//!
//! ```text
//!                Connected              Subscribed
//! Disconnected ────────────► Connecting ───────────► CatchUp ◄──────► Live
//!      ▲                                              │   ▲
//!      │ LinkLost                   refused or ledger │   │ the pause is over
//!      │ (from any state                      failure ▼   │
//!      │  but Stopped)                               Paused
//!
//! any state ── Shutdown ──► Stopped
//! ```
//!
//! A pause outlives the connection: a refusal followed by a reconnect still waits its time.
//! `CatchUp` and `Live` differ in what the hub holds (the head cosigned or not), not in what the
//! machine does: both send while there is room in flight and both send a heartbeat when idle.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use proofline_common::alarm::AlarmCode;
use proofline_common::bytes::Bytes;
use proofline_common::hash::leaf_hash;
use proofline_common::merkle::Frontier;
use proofline_common::note::{Checkpoint, Note, VerifierKey};
use proofline_common::record::{now_micros, Alarm, Body, Severity, StationEvent};
use proofline_common::store::{Cosigned, Entry, StoreError};
use proofline_common::wire::{
    record_cost, truncate_utf8, Ack, AckBody, AckMsg, AgentStatusMsg, Envelope, MsgId, RecordsMsg,
    RejectCode, Signed, SignedBatch, StatusBody, DOMAIN_ACK, DOMAIN_BATCH, DOMAIN_STATUS,
    MAX_REASON_BYTES,
};
use proofline_common::writer::LedgerHandle;
use tokio::sync::watch;

use super::{ForwardError, ForwardPlan, LedgerError, LinkError};
use crate::station::Metrics;

/// Where the MQTT messages go. `Ok` means queued for the broker, never delivered.
pub trait Publisher {
    /// A batch on the records topic (QoS 1, not retained).
    fn publish_records(&mut self, payload: Vec<u8>) -> Result<(), LinkError>;
    /// The agent status (QoS 1, retained).
    fn publish_status(&mut self, payload: Vec<u8>) -> Result<(), LinkError>;
}

/// Where the forwarder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No connection to the broker.
    Disconnected { paused_until: Option<Instant> },
    /// Connected, the ack subscription not confirmed yet: nothing is sent, since its answer
    /// could be lost.
    Connecting { paused_until: Option<Instant> },
    /// The hub has not cosigned the head: batches go out while there is room in flight.
    CatchUp,
    /// The hub has cosigned the head.
    Live,
    /// After a refusal or a ledger failure nothing is sent before `until`; answers are still
    /// taken.
    Paused { until: Instant },
    /// Shut down: nothing more is sent.
    Stopped,
}

/// What happened, as the link saw it.
#[derive(Debug)]
pub enum Event {
    /// The broker accepted the connection and the ack subscription was requested.
    Connected,
    /// The broker confirmed the ack subscription: from now on no answer is missed.
    Subscribed,
    /// A message on the ack topic: the machine takes it only if the hub signed it and it answers
    /// a batch in flight.
    Answer(Vec<u8>),
    /// The ledger's durable head moved.
    HeadAdvanced,
    /// Time passed (ack timeout, end of a pause, heartbeat).
    Tick,
    /// The connection failed or could not be made.
    LinkLost,
    /// The agent stops.
    Shutdown,
}

/// What the link does after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Carry on with this connection.
    Continue,
    /// Connect again after the backoff; `worked` (the last connection got as far as the
    /// subscription) starts the backoff over.
    Reconnect { worked: bool },
    /// Disconnect and end.
    Stop,
}

#[derive(Debug, Clone)]
struct Inflight {
    id: MsgId,
    end: u64,
    frontier: Frontier,
    sent: Instant,
    stale: bool,
}

/// The forwarding state, kept across connections.
#[derive(Debug)]
pub struct Machine {
    plan: ForwardPlan,
    ledger: LedgerHandle,
    metrics: Arc<Metrics>,
    cosigned_tx: watch::Sender<u64>,
    own: VerifierKey,
    state: State,
    /// Last cosigned size and the Merkle frontier there.
    acked: Frontier,
    /// Next seq to send and the frontier there.
    next: Frontier,
    inflight: VecDeque<Inflight>,
    last_sent: Instant,
    /// The `from` of the last hub regression recorded (one alarm per regression, not per ask).
    hub_regression: Option<u64>,
    /// The next message counter of this boot: every message gets a higher one.
    counter: u64,
    /// Counter of the offline last will left with the broker for the current connection.
    will: Option<u64>,
    /// What is wrong with the station, if anything: put in every signed message, and a status
    /// goes out at once when it changes.
    degraded: watch::Receiver<Option<String>>,
    last_degraded: Option<String>,
    /// Answers not taken (unsigned, for another station or boot, for no batch in flight), and
    /// when one was last logged.
    ignored: u64,
    ignored_logged: Option<Instant>,
}

impl Machine {
    /// Starts disconnected from `start`, the last cosignature stored; publishes its size on
    /// `cosigned_tx`.
    pub fn new(
        plan: ForwardPlan,
        ledger: LedgerHandle,
        start: Option<Cosigned>,
        metrics: Arc<Metrics>,
        cosigned_tx: watch::Sender<u64>,
        degraded: watch::Receiver<Option<String>>,
        now: Instant,
    ) -> Self {
        let acked = start
            .and_then(|c| Frontier::from_parts(c.size, c.frontier).ok())
            .unwrap_or_default();
        metrics.cosigned_size.store(acked.size(), Ordering::Relaxed);
        cosigned_tx.send_replace(acked.size());
        Machine {
            own: plan.signer.verifier(),
            plan,
            ledger,
            metrics,
            cosigned_tx,
            state: State::Disconnected { paused_until: None },
            next: acked.clone(),
            acked,
            inflight: VecDeque::new(),
            last_sent: now,
            hub_regression: None,
            // The hub tells replays by (boot, counter) alone. A ledger restored from an old copy
            // comes back with a boot number it may have used before; starting the counter at
            // the clock makes its new messages new all the same, so the hub sees the rollback
            // instead of taking them for replays.
            counter: now_micros().max(0) as u64,
            will: None,
            degraded,
            last_degraded: None,
            ignored: 0,
            ignored_logged: None,
        }
    }

    /// A new message id of this boot.
    fn next_id(&mut self) -> MsgId {
        let id = MsgId {
            boot: self.ledger.boot(),
            counter: self.counter,
        };
        self.counter += 1;
        id
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// A route interlock question, signed with a new message id.
    pub fn sign_ask(
        &mut self,
        uii: &str,
        scan_seq: u64,
        part_number: Option<String>,
    ) -> (MsgId, Vec<u8>) {
        let id = self.next_id();
        let body = proofline_common::wire::AskBody {
            agent_id: self.plan.agent_id.clone(),
            id,
            uii: uii.to_owned(),
            scan_seq,
            part_number,
            sent_at: now_micros(),
        };
        let msg = proofline_common::wire::InterlockMsg::V2(Signed::seal(
            proofline_common::wire::DOMAIN_INTERLOCK,
            &body,
            &self.plan.signer,
        ));
        (id, msg.encode())
    }

    /// The hub's answer to a question, if the hub key signed it for this station.
    pub fn open_clearance(
        &self,
        payload: &[u8],
    ) -> Result<proofline_common::wire::ClearanceBody, String> {
        let proofline_common::wire::ClearanceMsg::V2(signed) =
            proofline_common::wire::ClearanceMsg::decode(payload).map_err(|e| e.to_string())?;
        let body: proofline_common::wire::ClearanceBody = signed
            .open(
                proofline_common::wire::DOMAIN_CLEARANCE,
                &self.plan.cosigner,
            )
            .map_err(|e| format!("it is not signed by the hub: {e}"))?;
        if body.agent_id != self.plan.agent_id {
            return Err(format!("it answers station {:?}", body.agent_id));
        }
        Ok(body)
    }

    fn degraded_now(&self) -> Option<String> {
        self.degraded
            .borrow()
            .as_deref()
            .map(|d| truncate_utf8(d, MAX_REASON_BYTES).to_owned())
    }

    /// The oldest batch in flight, if any.
    pub fn oldest_in_flight(&self) -> Option<MsgId> {
        self.inflight.front().map(|b| b.id)
    }

    /// Answers not taken since start.
    pub fn ignored_answers(&self) -> u64 {
        self.ignored
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn plan(&self) -> &ForwardPlan {
        &self.plan
    }

    pub fn ledger(&self) -> &LedgerHandle {
        &self.ledger
    }

    /// The last size the hub cosigned.
    pub fn cosigned_size(&self) -> u64 {
        self.acked.size()
    }

    /// The seq the next batch starts at.
    pub fn next_seq(&self) -> u64 {
        self.next.size()
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// A signed retained status payload (a new message).
    pub fn status(&mut self, online: bool) -> Vec<u8> {
        let id = self.next_id();
        let will = if online { self.will } else { None };
        self.signed_status(id, online, will)
    }

    /// The offline status to leave with the broker as the last will of a new connection. It is
    /// signed now, so its counter is below every message of that connection: the online status
    /// names it, and the hub takes it as that connection's will, once.
    pub fn will(&mut self) -> Vec<u8> {
        let id = self.next_id();
        self.will = Some(id.counter);
        self.signed_status(id, false, None)
    }

    fn signed_status(&self, id: MsgId, online: bool, will: Option<u64>) -> Vec<u8> {
        let body = StatusBody {
            agent_id: self.plan.agent_id.clone(),
            id,
            online,
            will,
            version: env!("CARGO_PKG_VERSION").into(),
            size: self.ledger.head().size,
            degraded: self.degraded_now(),
            sent_at: now_micros(),
        };
        AgentStatusMsg::V2(Signed::seal(DOMAIN_STATUS, &body, &self.plan.signer)).encode()
    }

    /// Applies `event`, which happened at `now`. An error is the link's: the connection is to
    /// be dropped. Ledger failures are handled here and never end the connection.
    pub async fn handle(
        &mut self,
        event: Event,
        now: Instant,
        out: &mut impl Publisher,
    ) -> Result<Step, LinkError> {
        if self.state == State::Stopped {
            return Ok(Step::Stop);
        }
        let done = match event {
            Event::Connected => self.connected(out),
            Event::Subscribed => self.subscribed(now, out),
            Event::Answer(payload) => self.answered(&payload, now, out).await,
            Event::HeadAdvanced => self.fill(now, out),
            Event::Tick => self.tick(now, out),
            Event::LinkLost => return Ok(self.link_lost()),
            Event::Shutdown => return Ok(self.shutdown(out)),
        };
        match done {
            Ok(()) => Ok(Step::Continue),
            Err(ForwardError::Link(e)) => Err(e),
            Err(ForwardError::Ledger(e)) => {
                self.ledger_failed(&e, now);
                Ok(Step::Continue)
            }
        }
    }

    fn subscribed_now(&self) -> bool {
        matches!(
            self.state,
            State::CatchUp | State::Live | State::Paused { .. }
        )
    }

    fn paused_until(&self) -> Option<Instant> {
        match self.state {
            State::Disconnected { paused_until } | State::Connecting { paused_until } => {
                paused_until
            }
            State::Paused { until } => Some(until),
            State::CatchUp | State::Live | State::Stopped => None,
        }
    }

    fn pause(&mut self, until: Instant) {
        self.state = match self.state {
            State::Disconnected { .. } => State::Disconnected {
                paused_until: Some(until),
            },
            State::Connecting { .. } => State::Connecting {
                paused_until: Some(until),
            },
            State::Stopped => State::Stopped,
            State::CatchUp | State::Live | State::Paused { .. } => State::Paused { until },
        };
    }

    fn connected(&mut self, out: &mut impl Publisher) -> Result<(), ForwardError> {
        self.state = State::Connecting {
            paused_until: self.paused_until(),
        };
        out.publish_status(self.status(true))?;
        Ok(())
    }

    fn subscribed(&mut self, now: Instant, out: &mut impl Publisher) -> Result<(), ForwardError> {
        tracing::info!(broker = %self.plan.mqtt.broker, from = self.acked.size(), "connected to the hub; sending from the last cosigned size");
        self.metrics.hub_connected.store(1, Ordering::Relaxed);
        self.state = match self.paused_until() {
            Some(until) => State::Paused { until },
            None => State::CatchUp,
        };
        // Whatever was in flight went out on a connection that is gone.
        self.reset("connected", false);
        self.inflight.clear();
        self.fill(now, out)
    }

    fn link_lost(&mut self) -> Step {
        self.metrics.hub_connected.store(0, Ordering::Relaxed);
        let worked = self.subscribed_now();
        self.state = State::Disconnected {
            paused_until: self.paused_until(),
        };
        Step::Reconnect { worked }
    }

    fn shutdown(&mut self, out: &mut impl Publisher) -> Step {
        if !matches!(self.state, State::Disconnected { .. }) {
            // Best effort: the last will says the same if this does not get out.
            let _ = out.publish_status(self.status(false));
        }
        self.state = State::Stopped;
        Step::Stop
    }

    fn tick(&mut self, now: Instant, out: &mut impl Publisher) -> Result<(), ForwardError> {
        if !self.subscribed_now() {
            return Ok(());
        }
        let degraded = self.degraded_now();
        if degraded != self.last_degraded {
            // The hub hears it now, not at the next heartbeat (a failed ledger ends the agent
            // within seconds).
            self.last_degraded = degraded;
            out.publish_status(self.status(true))?;
        }
        if let Some(front) = self.inflight.front() {
            if now.saturating_duration_since(front.sent) > self.plan.ack_timeout {
                tracing::warn!(
                    end = front.end,
                    "no answer from the hub in time; sending again from the last cosigned size"
                );
                self.inflight.clear();
                self.reset("ack timeout", true);
            }
        }
        self.fill(now, out)
    }

    /// Starts again from the last cosigned size; batches in flight become stale.
    fn reset(&mut self, why: &str, count: bool) {
        for b in &mut self.inflight {
            b.stale = true;
        }
        self.next = self.acked.clone();
        if count {
            self.metrics.forward_resends.fetch_add(1, Ordering::Relaxed);
            tracing::info!(from = self.acked.size(), why, "resending");
        }
    }

    /// A failing ledger is not a reason to drop the connection: it would not come back any
    /// better. Sending waits a heartbeat interval instead of hammering the ledger every tick;
    /// batches already in flight stay valid.
    fn ledger_failed(&mut self, e: &LedgerError, now: Instant) {
        self.metrics.ledger_errors.fetch_add(1, Ordering::Relaxed);
        let retry = self.plan.heartbeat;
        tracing::error!(error = %e, retry_in_s = retry.as_secs(), "the ledger failed while forwarding; sending waits");
        self.pause(now + retry);
    }

    /// Sends batches while there is room in flight, then a heartbeat if idle.
    fn fill(&mut self, now: Instant, out: &mut impl Publisher) -> Result<(), ForwardError> {
        match self.state {
            State::CatchUp | State::Live => {}
            State::Paused { until } if now >= until => {}
            _ => return Ok(()),
        }
        let head = self.ledger.head();
        while self.inflight.len() < self.plan.max_inflight && self.next.size() < head.size {
            let (records, frontier) = self.read_batch(head.size)?;
            if records.is_empty() {
                break;
            }
            self.send(out, records, frontier, head.size, now)?;
        }
        if self.inflight.is_empty()
            && self.next.size() == head.size
            && now.saturating_duration_since(self.last_sent) >= self.plan.heartbeat
        {
            let frontier = self.next.clone();
            self.send(out, Vec::new(), frontier, head.size, now)?;
            let _ = out.publish_status(self.status(true));
        }
        self.state = if self.acked.size() >= head.size {
            State::Live
        } else {
            State::CatchUp
        };
        Ok(())
    }

    /// The records from the next seq on that fit the byte budget, and the frontier after them.
    fn read_batch(&self, head: u64) -> Result<(Vec<Bytes>, Frontier), LedgerError> {
        let mut frontier = self.next.clone();
        let mut records = Vec::new();
        let mut bytes = 0usize;
        for item in self.ledger.reader().range(frontier.size()..head) {
            let (_, rec) = item.map_err(|source| LedgerError::Read {
                seq: frontier.size(),
                source,
            })?;
            if !records.is_empty() && bytes + record_cost(rec.len()) > self.plan.batch_max_bytes {
                break;
            }
            bytes += record_cost(rec.len());
            frontier.push(leaf_hash(&rec));
            records.push(Bytes(rec));
        }
        Ok((records, frontier))
    }

    fn send(
        &mut self,
        out: &mut impl Publisher,
        records: Vec<Bytes>,
        frontier: Frontier,
        head: u64,
        now: Instant,
    ) -> Result<(), ForwardError> {
        let cp = Checkpoint {
            origin: self.ledger.origin().to_string(),
            size: frontier.size(),
            root: frontier.root(),
        };
        let note = cp
            .sign(&self.plan.signer)
            .map_err(|source| LedgerError::Sign {
                size: cp.size,
                source,
            })?;
        let id = self.next_id();
        let envelope = Envelope {
            agent_id: self.plan.agent_id.clone(),
            id,
            first: self.next.size(),
            checkpoint: note.to_string(),
            head,
            sent_at: now_micros(),
            degraded: self.degraded_now(),
        };
        let msg = RecordsMsg::V2(SignedBatch {
            envelope: Signed::seal(DOMAIN_BATCH, &envelope, &self.plan.signer),
            records,
        });
        out.publish_records(msg.encode())?;
        self.inflight.push_back(Inflight {
            id,
            end: frontier.size(),
            frontier: frontier.clone(),
            sent: now,
            stale: false,
        });
        self.next = frontier;
        self.last_sent = now;
        Ok(())
    }

    async fn answered(
        &mut self,
        payload: &[u8],
        now: Instant,
        out: &mut impl Publisher,
    ) -> Result<(), ForwardError> {
        let (id, ack) = match self.open_answer(payload) {
            Ok(a) => a,
            Err(why) => {
                self.ignore_answer(&why, now);
                return Ok(());
            }
        };
        // Only an answer to a batch in flight is taken: an old genuine answer replayed, or one
        // to a batch of a connection that is gone, says nothing about what the hub holds now.
        let Some(pos) = self.inflight.iter().position(|b| b.id == id) else {
            self.ignore_answer(&format!("it answers {id}, which is not in flight"), now);
            return Ok(());
        };
        let answered = self.inflight.remove(pos).expect("found above");
        let stale = answered.stale;
        match ack {
            Ack::Cosigned { note } => self.cosigned(&note).await?,
            Ack::Resend { from } if !stale => self.resend(from).await?,
            Ack::Rejected { code, reason } if !stale => self.refused(code, &reason, now),
            // The reset that made the batch stale already did what this answer asks.
            Ack::Resend { .. } | Ack::Rejected { .. } => {}
        }
        self.fill(now, out)
    }

    /// The batch an answer names and what it says, if the hub signed it for this station and
    /// boot.
    fn open_answer(&self, payload: &[u8]) -> Result<(MsgId, Ack), String> {
        let signed = match AckMsg::decode(payload) {
            Ok(AckMsg::V2(s)) => s,
            Ok(AckMsg::V1(ack)) => {
                return Err(format!(
                    "it is an unsigned protocol v1 answer (an old hub, or a forgery): {ack:?}"
                ))
            }
            Err(e) => return Err(e.to_string()),
        };
        let body: AckBody = signed
            .open(DOMAIN_ACK, &self.plan.cosigner)
            .map_err(|e| format!("it is not signed by the hub: {e}"))?;
        if body.agent_id != self.plan.agent_id || body.answers.boot != self.ledger.boot() {
            return Err(format!(
                "it answers {} of station {:?}, not this station's boot {}",
                body.answers,
                body.agent_id,
                self.ledger.boot()
            ));
        }
        Ok((body.answers, body.ack))
    }

    /// Counts an answer not taken; logs at most one every ten seconds (anyone on the network
    /// can publish on the ack topic).
    fn ignore_answer(&mut self, why: &str, now: Instant) {
        self.ignored += 1;
        self.metrics
            .forward_ignored_answers
            .fetch_add(1, Ordering::Relaxed);
        let due = self
            .ignored_logged
            .is_none_or(|t| now.saturating_duration_since(t) >= std::time::Duration::from_secs(10));
        if due {
            self.ignored_logged = Some(now);
            tracing::warn!(
                ignored = self.ignored,
                "ignoring an answer on the ack topic: {why}"
            );
        }
    }

    async fn resend(&mut self, from: u64) -> Result<(), ForwardError> {
        tracing::info!(from, "the hub asks to resend");
        if from < self.acked.size() && self.hub_regression != Some(from) {
            self.hub_regression = Some(from);
            self.record_hub_regression(from).await;
        }
        let f = self.frontier_at(from)?;
        for b in &mut self.inflight {
            b.stale = true;
        }
        self.next = f;
        self.metrics.forward_resends.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn refused(&mut self, code: RejectCode, reason: &str, now: Instant) {
        self.metrics
            .forward_rejected
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            code = code.name(),
            %reason,
            "the hub refused the ledger; retrying after the heartbeat interval"
        );
        self.reset("refused", false);
        self.pause(now + self.plan.heartbeat);
    }

    async fn cosigned(&mut self, text: &str) -> Result<(), ForwardError> {
        let Some(cp) = self.verified(text) else {
            return Ok(());
        };
        if cp.size < self.acked.size() {
            return Ok(());
        }
        if cp.size == self.acked.size() && cp.size > 0 {
            // A heartbeat cosignature: nothing new to store.
            return Ok(());
        }
        match self
            .ledger
            .record_cosigned(text.to_owned(), cp.clone())
            .await
        {
            Ok(()) => {}
            Err(StoreError::CosignedMismatch(m)) => {
                tracing::error!(%m, "the hub cosigned a checkpoint that does not match this ledger");
                return Ok(());
            }
            Err(source) => {
                return Err(LedgerError::Store {
                    size: cp.size,
                    source,
                }
                .into())
            }
        }
        let f = match self.inflight.iter().find(|b| b.end == cp.size) {
            Some(b) => b.frontier.clone(),
            None => self.frontier_at(cp.size)?,
        };
        self.acked = f;
        while self
            .inflight
            .front()
            .is_some_and(|b| b.end <= cp.size && b.stale)
        {
            self.inflight.pop_front();
        }
        if self.next.size() < cp.size {
            self.next = self.acked.clone();
        }
        self.metrics.cosigned_size.store(cp.size, Ordering::Relaxed);
        self.cosigned_tx.send_replace(cp.size);
        Ok(())
    }

    /// The checkpoint of a cosigned note that carries this station's signature and the hub's
    /// cosignature; `None` (logged) for anything else.
    fn verified(&self, text: &str) -> Option<Checkpoint> {
        let note = match Note::parse(text) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a cosignature that does not parse");
                return None;
            }
        };
        if let Err(e) = self
            .own
            .verify(&note)
            .and_then(|_| self.plan.cosigner.verify_cosignature(&note).map(|_| ()))
        {
            tracing::error!(error = %e, "ignoring a cosigned checkpoint that does not verify (wrong hub key?)");
            return None;
        }
        match Checkpoint::parse(&note.text) {
            Ok(cp) => Some(cp),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a cosigned note that is not a checkpoint");
                None
            }
        }
    }

    /// The hub asks again for records it had cosigned: its data was lost or rolled back (a
    /// restore from backup, a replaced disk). The station still resends what it holds; the
    /// regression goes into the station's own ledger, where it cannot be rolled back with the hub.
    async fn record_hub_regression(&mut self, from: u64) {
        let message = format!(
            "the hub asks for records from seq {from} but had cosigned {}: the hub's data was lost or rolled back",
            self.acked.size()
        );
        tracing::error!(from, cosigned = self.acked.size(), "{message}");
        Metrics::count(
            &self.metrics.alarms,
            &format!("forwarder|{}", AlarmCode::HubRegression),
        );
        let alarm = Entry {
            received_at: now_micros(),
            body: Body::StationEvent(StationEvent::Alarm(Alarm {
                source: "forwarder".into(),
                code: AlarmCode::HubRegression.as_str().into(),
                severity: Severity::Error,
                message,
            })),
        };
        if let Err(e) = self.ledger.append(vec![alarm]).await {
            self.metrics.ledger_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "the hub regression alarm was not stored");
        }
    }

    /// The Merkle frontier at `size`, from the nearest known frontier below it.
    fn frontier_at(&self, size: u64) -> Result<Frontier, LedgerError> {
        let mut best = if self.acked.size() <= size {
            self.acked.clone()
        } else {
            Frontier::new()
        };
        for f in self
            .inflight
            .iter()
            .map(|b| &b.frontier)
            .chain([&self.next])
        {
            if f.size() <= size && f.size() > best.size() {
                best = f.clone();
            }
        }
        let head = self.ledger.head().size;
        if size > head {
            return Err(LedgerError::BeyondHead { asked: size, head });
        }
        for item in self.ledger.reader().range(best.size()..size) {
            let (seq, rec) = item.map_err(|source| LedgerError::Read {
                seq: best.size(),
                source,
            })?;
            if seq != best.size() {
                return Err(LedgerError::Missing { seq: best.size() });
            }
            best.push(leaf_hash(&rec));
        }
        if best.size() != size {
            return Err(LedgerError::Missing { seq: best.size() });
        }
        Ok(best)
    }
}
