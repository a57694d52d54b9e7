//! The embedded MQTT broker (rumqttd): one process for a small plant (DESIGN §4).
//!
//! It listens in plain MQTT on loopback by default; a TLS listener can be added, and it then
//! requires client certificates signed by the configured CA (mutual TLS). rumqttd runs on its
//! own threads for the life of the process. The hub itself connects to it over loopback like
//! any other client, so the embedded and an external broker take the same code path.

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::Context;
use proofline_common::mqtt::MAX_PACKET_BYTES;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings, TlsConfig};

use crate::plan::BrokerPlan;

/// Starts the broker; returns once its listeners are known to be free.
pub fn start(cfg: &BrokerPlan) -> anyhow::Result<()> {
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
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .context("starting the embedded broker")?;
    Ok(())
}

/// rumqttd reports a listener it cannot bind only in its log: find out first.
fn ensure_free(addr: SocketAddr, key: &str) -> anyhow::Result<()> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .with_context(|| format!("{key}: cannot listen on {addr}"))
}
