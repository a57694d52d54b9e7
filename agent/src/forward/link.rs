//! The MQTT side of the forwarder: one task owns the connection and turns broker packets, ledger
//! changes and a 200 ms tick into [`Event`]s for the [`Machine`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use proofline_common::store::Cosigned;
use proofline_common::wire::AgentTopics;
use proofline_common::writer::LedgerHandle;
use rumqttc::{AsyncClient, LastWill, Packet, QoS};
use std::collections::HashMap;

use proofline_common::wire::MsgId;
use tokio::sync::{mpsc, watch};

use crate::interlock::HubAsk;
use tokio_util::sync::CancellationToken;

use super::machine::{Event, Machine, Publisher, Step};
use super::{ForwardPlan, LinkError};
use crate::station::Metrics;

/// Publishes on one connection's client; `try_publish` only queues, which is all the machine
/// may assume.
struct Connection<'a> {
    client: &'a AsyncClient,
    topics: &'a AgentTopics,
}

impl Publisher for Connection<'_> {
    fn publish_records(&mut self, payload: Vec<u8>) -> Result<(), LinkError> {
        self.client
            .try_publish(&self.topics.records, QoS::AtLeastOnce, false, payload)?;
        Ok(())
    }

    fn publish_status(&mut self, payload: Vec<u8>) -> Result<(), LinkError> {
        self.client
            .try_publish(&self.topics.status, QoS::AtLeastOnce, true, payload)?;
        Ok(())
    }
}

/// Between connections there is nothing to publish on.
struct NoConnection;

impl Publisher for NoConnection {
    fn publish_records(&mut self, _: Vec<u8>) -> Result<(), LinkError> {
        Err(LinkError::NotConnected)
    }

    fn publish_status(&mut self, _: Vec<u8>) -> Result<(), LinkError> {
        Err(LinkError::NotConnected)
    }
}

/// Runs the forwarder until `shutdown`; `cosigned_tx` is where the last cosigned size is
/// published.
pub async fn run(
    plan: ForwardPlan,
    ledger: LedgerHandle,
    start: Option<Cosigned>,
    metrics: Arc<Metrics>,
    cosigned_tx: watch::Sender<u64>,
    degraded: watch::Receiver<Option<String>>,
    shutdown: CancellationToken,
) {
    run_with_interlock(
        plan,
        ledger,
        start,
        metrics,
        cosigned_tx,
        degraded,
        None,
        shutdown,
    )
    .await
}

/// Route interlock questions waiting for their answer, by message id.
type Open = HashMap<MsgId, HubAsk>;

/// [`run`], also carrying the route interlock's questions (`asks`) on the same session.
#[allow(clippy::too_many_arguments)]
pub async fn run_with_interlock(
    plan: ForwardPlan,
    ledger: LedgerHandle,
    start: Option<Cosigned>,
    metrics: Arc<Metrics>,
    cosigned_tx: watch::Sender<u64>,
    degraded: watch::Receiver<Option<String>>,
    mut asks: Option<mpsc::Receiver<HubAsk>>,
    shutdown: CancellationToken,
) {
    let mut backoff = plan.mqtt.backoff();
    let mut m = Machine::new(
        plan,
        ledger,
        start,
        metrics,
        cosigned_tx,
        degraded,
        Instant::now(),
    );
    while !shutdown.is_cancelled() {
        let Err(e) = connection(&mut m, &mut asks, &shutdown).await else {
            break;
        };
        let step = m
            .handle(Event::LinkLost, Instant::now(), &mut NoConnection)
            .await;
        let d = backoff.next_delay();
        tracing::warn!(broker = %m.plan().mqtt.broker, error = %e, retry_in_ms = d.as_millis() as u64, "hub connection lost");
        // Between connections a question cannot be asked: its station hears so at once.
        let wake = tokio::time::Instant::now() + d;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(wake) => break,
                Some(ask) = next_ask(&mut asks) => {
                    let _ = ask.reply.send(Err(format!("not connected to the broker: {e}")));
                }
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
        if let Ok(Step::Reconnect { worked: true }) = step {
            backoff.reset();
        }
    }
    let _ = m
        .handle(Event::Shutdown, Instant::now(), &mut NoConnection)
        .await;
}

async fn next_ask(asks: &mut Option<mpsc::Receiver<HubAsk>>) -> Option<HubAsk> {
    match asks {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Publishes a question (QoS 0: one lost is decided by the station's policy, never sent late).
fn ask(m: &mut Machine, client: &AsyncClient, open: &mut Open, ask: HubAsk) {
    open.retain(|_, a| !a.reply.is_closed());
    let (id, payload) = m.sign_ask(&ask.uii, ask.scan_seq, ask.part_number.clone());
    let topic = m.plan().topics.interlock.clone();
    match client.try_publish(topic, QoS::AtMostOnce, false, payload) {
        Ok(()) => {
            open.insert(id, ask);
        }
        Err(e) => {
            let _ = ask
                .reply
                .send(Err(format!("cannot publish the question: {e}")));
        }
    }
}

/// Hands a verified answer to the question it answers; anything else is counted and dropped.
fn clearance(m: &Machine, open: &mut Open, payload: &[u8], metrics: &Metrics) {
    let taken = m
        .open_clearance(payload)
        .and_then(|body| match open.remove(&body.answers) {
            Some(a) if a.uii == body.uii => {
                let _ = a.reply.send(Ok((body, payload.to_vec())));
                Ok(())
            }
            Some(a) => {
                let why = format!(
                    "it names {:?}, the question was about {:?}",
                    body.uii, a.uii
                );
                open.insert(body.answers, a);
                Err(why)
            }
            None => Err(format!("it answers {}, no open question", body.answers)),
        });
    if let Err(why) = taken {
        metrics
            .forward_ignored_answers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(%why, "interlock answer not taken");
    }
}

/// One connection: returns Ok on shutdown, Err when the connection failed.
async fn connection(
    m: &mut Machine,
    asks: &mut Option<mpsc::Receiver<HubAsk>>,
    shutdown: &CancellationToken,
) -> Result<(), LinkError> {
    let will = m.will();
    let plan = m.plan();
    let topics = plan.topics.clone();
    let mut opts = plan
        .mqtt
        .options(&plan.client_id)
        .map_err(|e| LinkError::Options(format!("{e:#}")))?;
    opts.set_clean_session(true).set_last_will(LastWill::new(
        &topics.status,
        will,
        QoS::AtLeastOnce,
        true,
    ));
    // A fresh client per connection: rumqttc would otherwise replay its own queue after a
    // reconnect, on top of our resend from the cosigned size.
    let (client, mut events) = AsyncClient::new(opts, plan.max_inflight * 2 + 16);
    proofline_common::mqtt::tune(&mut events);
    // `EventLoop::poll` is not cancel-safe while it connects (TCP, TLS, CONNECT/CONNACK):
    // the tick or a ledger change in the select below would drop the half-made connection.
    // So the first poll, which connects, races only the shutdown.
    tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        ev = events.poll() => { ev?; }
    }
    client.try_subscribe(&topics.ack, QoS::AtLeastOnce)?;
    if asks.is_some() {
        client.try_subscribe(&topics.clearance, QoS::AtMostOnce)?;
    }
    let mut open = Open::new();
    let metrics = m.metrics();
    let mut out = Connection {
        client: &client,
        topics: &topics,
    };
    m.handle(Event::Connected, Instant::now(), &mut out).await?;
    let mut head = m.ledger().subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => {
                let _ = m.handle(Event::Shutdown, Instant::now(), &mut out).await;
                let _ = client.try_disconnect();
                // Let the event loop send the offline status and the disconnect.
                let _ = tokio::time::timeout(Duration::from_millis(500), async {
                    while events.poll().await.is_ok() {}
                }).await;
                return Ok(());
            }
            ev = events.poll() => match ev? {
                rumqttc::Event::Incoming(Packet::SubAck(_)) => Event::Subscribed,
                rumqttc::Event::Incoming(Packet::Publish(p)) if p.topic == topics.ack => {
                    Event::Answer(p.payload.to_vec())
                }
                rumqttc::Event::Incoming(Packet::Publish(p)) if p.topic == topics.clearance => {
                    clearance(m, &mut open, &p.payload, &metrics);
                    continue;
                }
                _ => continue,
            },
            Some(a) = next_ask(asks) => {
                ask(m, &client, &mut open, a);
                continue;
            }
            r = head.changed() => {
                if r.is_err() {
                    // The ledger writer stopped: the agent is shutting down.
                    shutdown.cancelled().await;
                    continue;
                }
                Event::HeadAdvanced
            }
            _ = tick.tick() => Event::Tick,
        };
        m.handle(event, Instant::now(), &mut out).await?;
    }
}
