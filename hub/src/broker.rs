//! The embedded MQTT broker (rumqttd): one process for a small plant (DESIGN §4).
//!
//! It listens in plain MQTT on loopback by default; a TLS listener can be added, and it then
//! requires client certificates signed by the configured CA (mutual TLS). rumqttd runs on threads
//! of its own until the hub stops it ([`EmbeddedBroker::run`]), which frees its ports, so a hub
//! can be stopped and started again in one process. The hub itself connects to it over loopback
//! like any other client, so the embedded and an external broker take the same code path.
//!
//! Anyone on the plant network may reach the TLS listener (DESIGN §7), so everything a peer can
//! make the broker hold is bounded: open connections per listener and per IP address (counted
//! from `accept()`, TLS handshake included, which must end within the connection timeout), the
//! client id, the keep-alive (a client silent for 1.5 times its keep-alive is dropped), QoS 2
//! state per connection, saved sessions of disconnected clients, and retained messages (kept only on `proofline/v1/<site>/<id>/status`
//! topics, at most [`MAX_RETAINED_MESSAGES`] of them and [`MAX_RETAINED_BYTES`] in all).
//!
//! Nobody uses it without authenticating, and each client reaches only its own topics
//! ([`crate::acl`]); the hub's own client has a secret made at each start.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use proofline_common::mqtt::MAX_PACKET_BYTES;
use proofline_common::wire::TOPIC_ROOT;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings, TlsConfig};

use crate::acl::BrokerAcl;
use crate::plan::BrokerPlan;

/// Time a new connection has to finish its TLS handshake, and then again to send CONNECT.
const CONNECTION_TIMEOUT_MS: u16 = 10_000;
/// Longest client id accepted (station ids and the hub's own are far shorter).
const MAX_CLIENT_ID_BYTES: usize = 128;
/// Longest keep-alive accepted: the most a station or hub client may be configured with
/// (`keep_alive_secs`, 5 to 600).
const MAX_KEEP_ALIVE_SECS: u16 = 600;
/// Retained messages kept: one status per station and the hub's, with room to spare.
pub const MAX_RETAINED_MESSAGES: usize = 10_000;
/// Bytes of retained messages kept (topics and payloads).
pub const MAX_RETAINED_BYTES: usize = 16 << 20;

/// The embedded broker, started; [`EmbeddedBroker::run`] keeps it until the shutdown.
#[derive(Debug)]
pub struct EmbeddedBroker {
    stop: tokio::sync::watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
    /// Closed when the broker thread ends, however it ends.
    ended: tokio::sync::oneshot::Receiver<()>,
}

impl EmbeddedBroker {
    /// Serves until `shutdown`, then stops the broker and waits for its threads (the ports are
    /// free again when this returns).
    ///
    /// A broker that stops by itself (a listener failed) calls `failed`, which stops the hub
    /// with an error, so systemd restarts it: a hub must never stay up without its broker
    /// (DESIGN §7). A panic in any broker thread ends the process already
    /// ([`proofline_common::process::abort_on_panic`]).
    pub async fn run(
        self,
        shutdown: tokio_util::sync::CancellationToken,
        failed: impl FnOnce(&str) + Send,
    ) {
        tokio::select! {
            () = shutdown.cancelled() => {}
            _ = self.ended => {
                tracing::error!("the embedded MQTT broker stopped by itself; stopping the hub so it is restarted");
                failed("the embedded MQTT broker stopped by itself");
            }
        }
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
///
/// Every client authenticates and is held to its topics by `acl` (see [`crate::acl`]); only
/// test builds start one without (`RunOptions::unlocked_broker`).
pub fn start(cfg: &BrokerPlan, acl: Option<Arc<BrokerAcl>>) -> anyhow::Result<EmbeddedBroker> {
    let conn = ConnectionSettings {
        connection_timeout_ms: CONNECTION_TIMEOUT_MS,
        max_payload_size: MAX_PACKET_BYTES,
        max_inflight_count: cfg.max_inflight,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
        max_connections_per_ip: Some(cfg.max_connections_per_ip),
        max_client_id_len: Some(MAX_CLIENT_ID_BYTES),
        max_keep_alive_secs: Some(MAX_KEEP_ALIVE_SECS),
        authorizer: acl.map(|a| a as Arc<dyn rumqttd::Authorizer>),
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
            max_connections: Some(cfg.max_connections),
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
                    crlpath: t.crl_file.as_deref().map(path),
                }),
                next_connection_delay_ms: 1,
                connections: conn,
                max_connections: Some(cfg.max_connections),
            },
        );
    }
    let config = Config {
        id: 0,
        router: RouterConfig {
            // Sessions over both listeners.
            max_connections: 2 * cfg.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 << 20,
            max_segment_count: 8,
            retained_topic_filters: Some(vec![format!("{TOPIC_ROOT}/+/+/status")]),
            max_retained_messages: Some(MAX_RETAINED_MESSAGES),
            max_retained_bytes: Some(MAX_RETAINED_BYTES),
            // Disconnected clients remembered (a station's session, the hub's own): one per
            // station with room to spare; a peer cycling client ids only pushes out the oldest.
            max_saved_sessions: Some(2 * cfg.max_connections),
            ..RouterConfig::default()
        },
        v4: Some(v4),
        ..Config::default()
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (ended_tx, ended) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            // Dropped (closing `ended`) when this thread ends, by a return or a panic.
            let _ended = ended_tx;
            let mut broker = Broker::new(config);
            if let Err(e) = broker.run_until(stopped) {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .context("starting the embedded broker")?;
    Ok(EmbeddedBroker {
        stop,
        thread,
        ended,
    })
}

/// rumqttd reports a listener it cannot bind only in its log: find out first.
fn ensure_free(addr: SocketAddr, key: &str) -> anyhow::Result<()> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .with_context(|| format!("{key}: cannot listen on {addr}"))
}
