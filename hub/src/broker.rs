//! The embedded MQTT broker (rumqttd): one process for a small plant (DESIGN §4).
//!
//! It listens in plain MQTT on loopback by default; a TLS listener can be added, and it then
//! requires client certificates signed by the configured CA (mutual TLS). rumqttd runs on threads
//! of its own until the hub stops it ([`EmbeddedBroker::run`]), which frees its ports, so a hub
//! can be stopped and started again in one process. The hub itself connects to it over loopback
//! like any other client, so the embedded and an external broker take the same code path.

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::Context;
use proofline_common::mqtt::MAX_PACKET_BYTES;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings, TlsConfig};

use crate::plan::BrokerPlan;

/// The embedded broker, started; [`EmbeddedBroker::run`] keeps it until the shutdown.
#[derive(Debug)]
pub struct EmbeddedBroker {
    stop: tokio::sync::watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Serves until `shutdown`, then stops the broker and waits for its threads (the ports are
    /// free again when this returns).
    pub async fn run(self, shutdown: tokio_util::sync::CancellationToken) {
        shutdown.cancelled().await;
        self.stop.send_replace(true);
        let thread = self.thread;
        if tokio::task::spawn_blocking(move || thread.join())
            .await
            .is_err()
        {
            tracing::error!("the embedded MQTT broker did not stop cleanly");
        }
    }
}

/// Starts the broker; returns once its listeners are known to be free.
pub fn start(cfg: &BrokerPlan) -> anyhow::Result<EmbeddedBroker> {
    let conn = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: MAX_PACKET_BYTES,
        max_inflight_count: cfg.max_inflight,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let mut v4 = HashMap::new();
    let plain = cfg.listen;
    ensure_free(plain, "broker.listen")?;
    v4.insert(
        "plain".to_owned(),
        ServerSettings {
            name: "mqtt-plain".into(),
            listen: plain,
            tls: None,
            next_connection_delay_ms: 1,
            connections: conn.clone(),
        },
    );
    if let Some(t) = &cfg.tls {
        let listen = t.listen;
        ensure_free(listen, "broker.tls.listen")?;
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        v4.insert(
            "tls".to_owned(),
            ServerSettings {
                name: "mqtt-tls".into(),
                listen,
                tls: Some(TlsConfig::Rustls {
                    capath: Some(path(&t.client_ca_file)),
                    certpath: path(&t.cert_file),
                    keypath: path(&t.key_file),
                }),
                next_connection_delay_ms: 1,
                connections: conn,
            },
        );
    }
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 << 20,
            max_segment_count: 8,
            ..RouterConfig::default()
        },
        v4: Some(v4),
        ..Config::default()
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.run_until(stopped) {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .context("starting the embedded broker")?;
    Ok(EmbeddedBroker { stop, thread })
}

/// rumqttd reports a listener it cannot bind only in its log: find out first.
fn ensure_free(addr: SocketAddr, key: &str) -> anyhow::Result<()> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .with_context(|| format!("{key}: cannot listen on {addr}"))
}
