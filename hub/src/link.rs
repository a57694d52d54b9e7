//! The hub's MQTT client: one task owns the event loop (persistent session, manual acks) and
//! hands every message to the witness thread in arrival order; the responder publishes each
//! answer and only then acknowledges the message it answers.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use proofline_common::backoff::Backoff;
use proofline_common::record::now_micros;
use proofline_common::wire::{self, TopicKind};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::api::HubMetrics;
use crate::witness::worker::{Cmd, Outgoing};

/// The MQTT event loop.
pub struct MqttLink {
    pub client: AsyncClient,
    pub events: EventLoop,
    pub commands: mpsc::Sender<Cmd>,
    pub metrics: Arc<HubMetrics>,
    pub site: String,
    pub backoff: Backoff,
    /// Set once the subscriptions stand.
    pub subscribed: watch::Sender<bool>,
    /// Route interlock questions, to their own responder (never behind the witness).
    pub questions: mpsc::Sender<crate::interlock::Question>,
}

impl std::fmt::Debug for MqttLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttLink")
            .field("site", &self.site)
            .finish()
    }
}

impl MqttLink {
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let ev = tokio::select! {
                () = shutdown.cancelled() => break,
                ev = self.events.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    self.backoff.reset();
                    self.metrics.mqtt_connected.store(1, Ordering::Relaxed);
                    self.metrics
                        .mqtt_connections
                        .fetch_add(1, Ordering::Relaxed);
                    self.metrics.health.set_mqtt(true, now_micros());
                    tracing::info!(
                        session_present = ack.session_present,
                        "connected to the broker"
                    );
                    let filters = [
                        wire::records_filter(&self.site),
                        wire::status_filter(&self.site),
                    ];
                    for f in filters {
                        if let Err(e) = self.client.try_subscribe(f, QoS::AtLeastOnce) {
                            tracing::error!(error = %e, "could not subscribe");
                        }
                    }
                    // Questions at QoS 0: one not answered while the operator waits is not
                    // worth keeping for later (the station's offline policy decides).
                    let f = wire::interlock_filter(&self.site);
                    if let Err(e) = self.client.try_subscribe(f, QoS::AtMostOnce) {
                        tracing::error!(error = %e, "could not subscribe");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some((agent, TopicKind::Interlock)) =
                        wire::parse_topic(&self.site, &p.topic)
                    {
                        let q = crate::interlock::Question {
                            agent_id: agent.to_owned(),
                            payload: p.payload.to_vec(),
                        };
                        if self.questions.try_send(q).is_err() {
                            self.metrics
                                .interlock_dropped
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        if p.qos == QoS::AtMostOnce {
                            continue;
                        }
                    }
                    let cmd = match wire::parse_topic(&self.site, &p.topic) {
                        Some((agent, TopicKind::Records)) => Cmd::Batch {
                            agent_id: agent.to_owned(),
                            publish: p,
                        },
                        Some((agent, TopicKind::Status)) if agent != "hub" => Cmd::Status {
                            agent_id: agent.to_owned(),
                            publish: p,
                        },
                        Some((_, TopicKind::Status | TopicKind::Interlock)) => Cmd::Ignore(p),
                        // Not a station's topic, or an id no station can have: dropped and
                        // counted, and acknowledged in turn (rumqttd drops a client that acks
                        // out of order).
                        _ => {
                            self.metrics.dropped_topics.fetch_add(1, Ordering::Relaxed);
                            Cmd::Ignore(p)
                        }
                    };
                    if self.commands.send(cmd).await.is_err() {
                        break;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    self.subscribed.send_replace(true);
                }
                Ok(_) => {}
                Err(e) => {
                    self.metrics.mqtt_connected.store(0, Ordering::Relaxed);
                    self.metrics.health.set_mqtt(false, now_micros());
                    let d = self.backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "broker connection lost");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(d) => {}
                    }
                }
            }
        }
    }
}

/// Publishes each answer, then acknowledges the message it answers.
#[derive(Debug)]
pub struct Responder {
    pub client: AsyncClient,
    pub answers: mpsc::Receiver<Outgoing>,
}

impl Responder {
    /// Runs until the witness thread is gone.
    pub async fn run(mut self) {
        while let Some(o) = self.answers.recv().await {
            if let Some((topic, payload)) = o.ack {
                let sent = self
                    .client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await;
                if let Err(e) = sent {
                    tracing::warn!(error = %e, "could not queue an ack");
                }
            }
            if let Err(e) = self.client.ack(&o.publish).await {
                tracing::warn!(error = %e, "could not acknowledge a message");
            }
        }
    }
}
