//! The MQTT side of the forwarder: one task owns the connection and turns broker packets, ledger
//! changes and a 200 ms tick into [`Event`]s for the [`Machine`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use proofline_common::store::Cosigned;
use proofline_common::wire::AgentTopics;
use proofline_common::writer::LedgerHandle;
use rumqttc::{AsyncClient, LastWill, Packet, QoS};
use tokio::sync::watch;
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
        let Err(e) = connection(&mut m, &shutdown).await else {
            break;
        };
        let step = m
            .handle(Event::LinkLost, Instant::now(), &mut NoConnection)
            .await;
        let d = backoff.next_delay();
        tracing::warn!(broker = %m.plan().mqtt.broker, error = %e, retry_in_ms = d.as_millis() as u64, "hub connection lost");
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(d) => {}
        }
        if let Ok(Step::Reconnect { worked: true }) = step {
            backoff.reset();
        }
    }
    let _ = m
        .handle(Event::Shutdown, Instant::now(), &mut NoConnection)
        .await;
}

/// One connection: returns Ok on shutdown, Err when the connection failed.
async fn connection(m: &mut Machine, shutdown: &CancellationToken) -> Result<(), LinkError> {
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
                _ => continue,
            },
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
