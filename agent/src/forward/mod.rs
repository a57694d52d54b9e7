//! Store-and-forward to the hub (DESIGN §2, §4).
//!
//! One task owns the MQTT connection. It publishes the ledger in seq order from the last
//! cosigned size, in batches under a byte budget, each ending with a checkpoint signed by the
//! station's key; an idle ledger sends a heartbeat checkpoint at its head. The hub's cosigned
//! checkpoint is the only delivery receipt: it is checked (station signature, hub cosignature,
//! root against the local ledger) and stored durably before anything counts as delivered.
//! `publish()` returning Ok means only "queued"; after a reconnect, an ack timeout, a `Resend`
//! or a refusal the task starts again from what the hub has.
//!
//! Acks come back in the order the batches went out (one connection, QoS 1, one hub), so each
//! ack answers the oldest batch in flight. After a reset the batches still in flight are
//! marked stale: their `Resend` or refusal answers are ignored, while a cosignature, which names
//! its own size, is always used.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proofline_common::bytes::Bytes;
use proofline_common::config::Problems;
use proofline_common::hash::leaf_hash;
use proofline_common::merkle::Frontier;
use proofline_common::mqtt::MqttSection;
use proofline_common::note::{Checkpoint, Note, NoteSigner, VerifierKey};
use proofline_common::record::{now_micros, Alarm, Body, Severity, StationEvent};
use proofline_common::store::{Cosigned, Entry, StoreError};
use proofline_common::wire::{
    record_cost, Ack, AckMsg, AgentStatus, AgentStatusMsg, AgentTopics, Batch, RecordsMsg,
};
use proofline_common::writer::LedgerHandle;
use rumqttc::{AsyncClient, Event, LastWill, Packet, QoS};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::station::Metrics;

/// `[hub]`: where and how the station forwards its ledger.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSection {
    /// The hub's cosignature verifier key, as `proofline-hub keygen` printed it.
    pub cosigner_key: String,
    pub mqtt: MqttSection,
    /// Largest batch of records in one message (their bytes).
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Batches sent before the first is acknowledged.
    #[serde(default = "default_max_inflight_batches")]
    pub max_inflight_batches: usize,
    /// Checkpoint sent when nothing new was recorded for this long, so the hub sees the station
    /// is alive and its ledger unchanged.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// A batch not answered within this time is sent again (from the last cosigned size).
    #[serde(default = "default_ack_timeout_secs")]
    pub ack_timeout_secs: u64,
}

fn default_batch_max_bytes() -> usize {
    64 * 1024
}
fn default_max_inflight_batches() -> usize {
    8
}
fn default_heartbeat_secs() -> u64 {
    10
}
fn default_ack_timeout_secs() -> u64 {
    15
}

impl HubSection {
    pub fn check(&self, p: &mut Problems) {
        if let Err(e) = VerifierKey::parse(&self.cosigner_key) {
            p.add("hub.cosigner_key", e.to_string());
        }
        self.mqtt.check("hub.mqtt", p);
        if !(1024..=512 * 1024).contains(&self.batch_max_bytes) {
            p.add("hub.batch_max_bytes", "must be 1024 to 524288");
        }
        if !(1..=64).contains(&self.max_inflight_batches) {
            p.add("hub.max_inflight_batches", "must be 1 to 64");
        }
        if !(1..=3600).contains(&self.heartbeat_secs) {
            p.add("hub.heartbeat_secs", "must be 1 to 3600");
        }
        if self.ack_timeout_secs == 0 || self.ack_timeout_secs > 600 {
            p.add("hub.ack_timeout_secs", "must be 1 to 600");
        }
    }
}

/// Everything the forwarder needs, checked.
#[derive(Debug, Clone)]
pub struct ForwardPlan {
    pub mqtt: MqttSection,
    pub cosigner: VerifierKey,
    pub signer: NoteSigner,
    pub topics: AgentTopics,
    pub client_id: String,
    pub batch_max_bytes: usize,
    pub max_inflight: usize,
    pub heartbeat: Duration,
    pub ack_timeout: Duration,
}

impl ForwardPlan {
    pub fn new(
        h: &HubSection,
        signer: NoteSigner,
        site: &str,
        agent_id: &str,
    ) -> anyhow::Result<Self> {
        Ok(ForwardPlan {
            mqtt: h.mqtt.clone(),
            cosigner: VerifierKey::parse(&h.cosigner_key)?,
            signer,
            topics: AgentTopics::new(site, agent_id),
            client_id: format!("proofline-agent-{site}-{agent_id}"),
            batch_max_bytes: h.batch_max_bytes,
            max_inflight: h.max_inflight_batches,
            heartbeat: Duration::from_secs(h.heartbeat_secs),
            ack_timeout: Duration::from_secs(h.ack_timeout_secs),
        })
    }
}

#[derive(Debug, Clone)]
struct Inflight {
    end: u64,
    frontier: Frontier,
    sent: Instant,
    stale: bool,
}

/// Forwarding state between connections.
struct State {
    plan: ForwardPlan,
    ledger: LedgerHandle,
    metrics: Arc<Metrics>,
    cosigned_tx: watch::Sender<u64>,
    own: VerifierKey,
    /// Last cosigned size and the Merkle frontier there.
    acked: Frontier,
    /// Next seq to send and the frontier there.
    next: Frontier,
    inflight: VecDeque<Inflight>,
    last_sent: Instant,
    paused_until: Option<Instant>,
    was_ready: bool,
    /// The `from` of the last hub regression recorded (one alarm per regression, not per ask).
    hub_regression: Option<u64>,
}

/// Runs the forwarder until `shutdown`; `cosigned` is where the last cosigned size is published.
pub async fn run(
    plan: ForwardPlan,
    ledger: LedgerHandle,
    start: Option<Cosigned>,
    metrics: Arc<Metrics>,
    cosigned_tx: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let acked = match start.and_then(|c| Frontier::from_parts(c.size, c.frontier).ok()) {
        Some(f) => f,
        None => Frontier::new(),
    };
    metrics.cosigned_size.store(acked.size(), Ordering::Relaxed);
    cosigned_tx.send_replace(acked.size());
    let own = plan.signer.verifier();
    let mut backoff = plan.mqtt.backoff();
    let mut st = State {
        next: acked.clone(),
        acked,
        plan,
        ledger,
        metrics,
        cosigned_tx,
        own,
        inflight: VecDeque::new(),
        last_sent: Instant::now(),
        paused_until: None,
        was_ready: false,
        hub_regression: None,
    };
    while !shutdown.is_cancelled() {
        match st.connection(&shutdown).await {
            Ok(()) => break,
            Err(e) => {
                st.metrics.hub_connected.store(0, Ordering::Relaxed);
                let d = backoff.next_delay();
                tracing::warn!(broker = %st.plan.mqtt.broker, error = %e, retry_in_ms = d.as_millis() as u64, "hub connection lost");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(d) => {}
                }
                if std::mem::take(&mut st.was_ready) {
                    // The connection worked before it failed: start the backoff over.
                    backoff.reset();
                }
            }
        }
    }
}

impl State {
    fn status(&self, online: bool) -> Vec<u8> {
        AgentStatusMsg::V1(AgentStatus {
            online,
            version: env!("CARGO_PKG_VERSION").into(),
            boot: self.ledger.boot(),
            size: self.ledger.head().size,
        })
        .encode()
    }

    /// One connection: returns Ok on shutdown, Err when the connection failed.
    async fn connection(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut opts = self.plan.mqtt.options(&self.plan.client_id)?;
        opts.set_clean_session(true).set_last_will(LastWill::new(
            &self.plan.topics.status,
            self.status(false),
            QoS::AtLeastOnce,
            true,
        ));
        // A fresh client per connection: rumqttc would otherwise replay its own queue after a
        // reconnect, on top of our resend from the cosigned size.
        let (client, mut events) = AsyncClient::new(opts, self.plan.max_inflight * 2 + 16);
        proofline_common::mqtt::tune(&mut events);
        // `EventLoop::poll` is not cancel-safe while it connects (TCP, TLS, CONNECT/CONNACK):
        // the tick or a ledger change in the select below would drop the half-made connection.
        // So the first poll, which connects, races only the shutdown.
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            ev = events.poll() => { ev?; }
        }
        client.try_subscribe(&self.plan.topics.ack, QoS::AtLeastOnce)?;
        client.try_publish(
            &self.plan.topics.status,
            QoS::AtLeastOnce,
            true,
            self.status(true),
        )?;
        let mut head = self.ledger.subscribe();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut ready = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = client.try_publish(&self.plan.topics.status, QoS::AtLeastOnce, true, self.status(false));
                    let _ = client.try_disconnect();
                    // Let the event loop send the offline status and the disconnect.
                    let _ = tokio::time::timeout(Duration::from_millis(500), async {
                        while events.poll().await.is_ok() {}
                    }).await;
                    return Ok(());
                }
                ev = events.poll() => match ev? {
                    Event::Incoming(Packet::SubAck(_)) => {
                        tracing::info!(broker = %self.plan.mqtt.broker, from = self.acked.size(), "connected to the hub; sending from the last cosigned size");
                        self.metrics.hub_connected.store(1, Ordering::Relaxed);
                        ready = true;
                        self.was_ready = true;
                        self.reset("connected", false);
                        self.inflight.clear();
                        self.fill(&client)?;
                    }
                    Event::Incoming(Packet::Publish(p)) if p.topic == self.plan.topics.ack => {
                        self.on_ack(&p.payload).await?;
                        if ready { self.fill(&client)?; }
                    }
                    _ => {}
                },
                r = head.changed() => {
                    if r.is_err() {
                        // The ledger writer stopped: the agent is shutting down.
                        shutdown.cancelled().await;
                        continue;
                    }
                    if ready { self.fill(&client)?; }
                }
                _ = tick.tick() => {
                    if !ready { continue; }
                    if let Some(front) = self.inflight.front() {
                        if front.sent.elapsed() > self.plan.ack_timeout {
                            tracing::warn!(end = front.end, "no answer from the hub in time; sending again from the last cosigned size");
                            self.inflight.clear();
                            self.reset("ack timeout", true);
                        }
                    }
                    self.fill(&client)?;
                }
            }
        }
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

    /// Sends batches while there is room in flight, then a heartbeat if idle.
    fn fill(&mut self, client: &AsyncClient) -> anyhow::Result<()> {
        if self.paused_until.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        self.paused_until = None;
        let head = self.ledger.head();
        while self.inflight.len() < self.plan.max_inflight && self.next.size() < head.size {
            let mut frontier = self.next.clone();
            let mut records = Vec::new();
            let mut bytes = 0usize;
            for item in self.ledger.reader().range(frontier.size()..head.size) {
                let (_, rec) = item?;
                if !records.is_empty() && bytes + record_cost(rec.len()) > self.plan.batch_max_bytes
                {
                    break;
                }
                bytes += record_cost(rec.len());
                frontier.push(leaf_hash(&rec));
                records.push(Bytes(rec));
            }
            if records.is_empty() {
                break;
            }
            self.send(client, records, frontier, head.size)?;
        }
        if self.inflight.is_empty()
            && self.next.size() == head.size
            && self.last_sent.elapsed() >= self.plan.heartbeat
        {
            let frontier = self.next.clone();
            self.send(client, Vec::new(), frontier, head.size)?;
            let _ = client.try_publish(
                &self.plan.topics.status,
                QoS::AtLeastOnce,
                true,
                self.status(true),
            );
        }
        Ok(())
    }

    fn send(
        &mut self,
        client: &AsyncClient,
        records: Vec<Bytes>,
        frontier: Frontier,
        head: u64,
    ) -> anyhow::Result<()> {
        let first = self.next.size();
        let cp = Checkpoint {
            origin: self.ledger.origin().to_string(),
            size: frontier.size(),
            root: frontier.root(),
        };
        let note = cp.sign(&self.plan.signer)?;
        let msg = RecordsMsg::V1(Batch {
            first,
            records,
            checkpoint: note.to_string(),
            boot: self.ledger.boot(),
            head,
            sent_at: now_micros(),
        });
        client.try_publish(
            &self.plan.topics.records,
            QoS::AtLeastOnce,
            false,
            msg.encode(),
        )?;
        self.inflight.push_back(Inflight {
            end: frontier.size(),
            frontier: frontier.clone(),
            sent: Instant::now(),
            stale: false,
        });
        self.next = frontier;
        self.last_sent = Instant::now();
        Ok(())
    }

    async fn on_ack(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let ack = match AckMsg::decode(payload) {
            Ok(AckMsg::V1(a)) => a,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an ack that does not decode");
                return Ok(());
            }
        };
        let answered = self.inflight.pop_front();
        let stale = answered.as_ref().is_some_and(|b| b.stale);
        match ack {
            Ack::Cosigned { note } => self.on_cosigned(&note).await?,
            Ack::Resend { from } if !stale => {
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
            }
            Ack::Rejected { code, reason } if !stale => {
                self.metrics
                    .forward_rejected
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(code = code.name(), %reason, "the hub refused the ledger; retrying after the heartbeat interval");
                self.reset("refused", false);
                self.paused_until = Some(Instant::now() + self.plan.heartbeat);
            }
            _ => {}
        }
        Ok(())
    }

    async fn on_cosigned(&mut self, text: &str) -> anyhow::Result<()> {
        let note = match Note::parse(text) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a cosignature that does not parse");
                return Ok(());
            }
        };
        if let Err(e) = self
            .own
            .verify(&note)
            .and_then(|_| self.plan.cosigner.verify_cosignature(&note).map(|_| ()))
        {
            tracing::error!(error = %e, "ignoring a cosigned checkpoint that does not verify (wrong hub key?)");
            return Ok(());
        }
        let cp = Checkpoint::parse(&note.text)?;
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
            Err(e) => return Err(e.into()),
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

    /// The hub asks again for records it had cosigned: its data was lost or rolled back (a
    /// restore from backup, a replaced disk). The station still resends what it holds; the
    /// regression goes into the station's own ledger, where it cannot be rolled back with the hub.
    async fn record_hub_regression(&mut self, from: u64) {
        let message = format!(
            "the hub asks for records from seq {from} but had cosigned {}: the hub's data was lost or rolled back",
            self.acked.size()
        );
        tracing::error!(from, cosigned = self.acked.size(), "{message}");
        Metrics::count(&self.metrics.alarms, "forwarder|hub.regression");
        let alarm = Entry {
            received_at: now_micros(),
            body: Body::StationEvent(StationEvent::Alarm(Alarm {
                source: "forwarder".into(),
                code: "hub.regression".into(),
                severity: Severity::Error,
                message,
            })),
        };
        if let Err(e) = self.ledger.append(vec![alarm]).await {
            tracing::error!(error = %e, "the hub regression alarm was not stored");
        }
    }

    /// The Merkle frontier at `size`, from the nearest known frontier below it.
    fn frontier_at(&self, size: u64) -> anyhow::Result<Frontier> {
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
            anyhow::bail!(
                "the hub asks for seq {size} but this ledger ends at {head} (was it rolled back?)"
            );
        }
        for item in self.ledger.reader().range(best.size()..size) {
            let (seq, rec) = item?;
            if seq != best.size() {
                anyhow::bail!("record {} is not in the ledger any more", best.size());
            }
            best.push(leaf_hash(&rec));
        }
        if best.size() != size {
            anyhow::bail!("records below {size} are not in the ledger any more");
        }
        Ok(best)
    }
}
