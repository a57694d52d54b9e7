//! `proofline-hub run`: the broker (embedded or external), the witness, the hub's own ledger and
//! the HTTP API.
//!
//! Tasks: the MQTT event loop (one owner of the connection; persistent session, manual acks)
//! hands every record batch to the witness thread, which checks a group of them, stores what
//! they add with one fsync, and hands the answers to the responder, which publishes each ack
//! (cosignature, resend or rejection) and only then acknowledges the MQTT message. A message
//! whose batch is not stored is never acknowledged, so the broker delivers it again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use proofline_common::hash::Hash;
use proofline_common::note::{Checkpoint, NoteSigner};
use proofline_common::record::{now_micros, Alarm, Body, Severity, StationEvent};
use proofline_common::store::{Access, Entry, Store, StoreOptions};
use proofline_common::wire::{
    self, AckMsg, AgentStatusMsg, AgentTopics, HubStatus, HubStatusMsg, TopicKind,
};
use proofline_common::writer::{spawn_writer, LedgerHandle, WriterConfig};
use rumqttc::{AsyncClient, Event, LastWill, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::alerts::{AlertBook, Raised};
use crate::api::{AppState, HubMetrics, Snapshot};
use crate::config::{BrokerKind, HubConfig};
use crate::witness::{Enrolled, Witness, WitnessConfig};

/// Batches checked together and made durable with one fsync.
const MAX_GROUP: usize = 64;
/// Time allowed for an orderly stop (below systemd's stop timeout).
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often enrollments in the data directory are re-read and the hub status republished.
const SLOW_TICK: Duration = Duration::from_secs(5);
/// Directory (in the data directory) of agents enrolled with `proofline-hub agent enroll`.
pub const ENROLLED_DIR: &str = "enrolled";
/// Tree holding the hub's cosigner verifier key, for offline verification.
pub const META_TREE: &str = "hub";

#[derive(Debug, Clone)]
pub struct Running {
    pub api: SocketAddr,
    /// The broker the hub is connected to (host:port).
    pub broker: String,
}

#[derive(Debug, Default)]
pub struct RunOptions {
    pub ready: Option<tokio::sync::oneshot::Sender<Running>>,
    /// Crash drill: abort the process (as a power cut or SIGKILL would) right after the n-th
    /// group of batches is durable and before any of it is cosigned or acknowledged. Set from
    /// `PROOFLINE_DRILL_ABORT_AFTER_PERSIST` by `run --config`.
    pub abort_after_persist: Option<u64>,
}

/// Environment variable for the crash drill of [`RunOptions::abort_after_persist`].
pub const DRILL_ABORT_AFTER_PERSIST: &str = "PROOFLINE_DRILL_ABORT_AFTER_PERSIST";

enum Cmd {
    Batch {
        agent_id: String,
        publish: Publish,
    },
    Status {
        agent_id: String,
        publish: Publish,
    },
    Tick,
    Enroll(Enrolled),
    /// A message the hub does not handle (its own status): acknowledged in turn.
    Ignore(Publish),
}

/// What the responder sends: an optional ack message, then the MQTT acknowledgement.
struct Outgoing {
    ack: Option<(String, Vec<u8>)>,
    publish: Publish,
}

/// Enrollments made with `proofline-hub agent enroll`: `<data_dir>/enrolled/<agent_id>.key`.
pub fn read_enrollments(data_dir: &Path, site: &str) -> Vec<Enrolled> {
    let dir = data_dir.join(ENROLLED_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".key"))
        else {
            continue;
        };
        match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|k| crate::config::enrolled(site, id, k.trim()))
        {
            Ok(en) => out.push(en),
            Err(err) => {
                tracing::error!(file = %path.display(), error = %err, "ignoring a bad enrollment")
            }
        }
    }
    out
}

/// Runs the hub until `shutdown` is cancelled.
pub async fn run(
    cfg: HubConfig,
    shutdown: CancellationToken,
    opts: RunOptions,
) -> anyhow::Result<()> {
    let origin = cfg.origin().map_err(anyhow::Error::msg)?;
    let site = cfg.hub.site.clone();
    let (signer, key_origin) = proofline_common::keyfile::load(&cfg.hub.key_file)?;
    if key_origin != origin {
        bail!(
            "key {} signs for {key_origin}, this hub is {origin}",
            cfg.hub.key_file.display()
        );
    }
    let mut enrolled = cfg.enrolled().map_err(anyhow::Error::msg)?;
    for e in read_enrollments(&cfg.hub.data_dir, &site) {
        match enrolled.iter().find(|x| x.agent_id == e.agent_id) {
            None => enrolled.push(e),
            Some(c) if c.key != e.key => tracing::warn!(
                agent = %e.agent_id,
                file = %enrollment_path(&cfg.hub.data_dir, &e.agent_id).display(),
                "the configuration enrolls this station with another key; the configured key applies (remove the file)"
            ),
            Some(_) => {}
        }
    }
    let api_listen: SocketAddr = cfg.api.listen.parse().context("api.listen")?;

    let (store, report) = Store::open(
        &cfg.hub.data_dir,
        Access::Write(origin.clone()),
        &StoreOptions::default(),
    )
    .with_context(|| format!("opening the hub's data in {}", cfg.hub.data_dir.display()))?;
    tracing::info!(ledger = %origin, size = report.head.size, boot = report.boot, "hub ledger open");
    let shared = store.shared()?;
    shared
        .db
        .open_tree(META_TREE)
        .and_then(|t| {
            t.insert(
                "cosigner",
                signer.cosignature_verifier().to_string().as_bytes(),
            )
        })
        .map_err(|e| shared.error(e))?;
    let (ledger, writer) = spawn_writer(store, WriterConfig::default())?;
    ledger
        .append(vec![Entry {
            received_at: now_micros(),
            body: Body::StationEvent(StationEvent::Started {
                version: env!("CARGO_PKG_VERSION").into(),
                config_sha256: Hash::default(),
            }),
        }])
        .await
        .context("recording the start")?;

    let wcfg = WitnessConfig {
        max_clock_skew_micros: cfg.witness.max_clock_skew_secs as i64 * 1_000_000,
        gap_alert_after_micros: cfg.witness.gap_alert_after_secs as i64 * 1_000_000,
        stale_after_micros: cfg.witness.stale_after_secs as i64 * 1_000_000,
    };
    let witness = Witness::open(shared, signer.clone(), enrolled, wcfg, now_micros())?;

    if cfg.broker_kind() == BrokerKind::Embedded {
        crate::broker::start(&cfg.broker)?;
        tracing::info!(listen = %cfg.broker.listen, tls = ?cfg.broker.tls.as_ref().map(|t| &t.listen), "embedded MQTT broker started");
    }
    let mqtt = cfg.client_mqtt();
    let mut mopts = mqtt.options(&format!("proofline-hub-{site}"))?;
    let hub_status_topic = wire::hub_status_topic(&site);
    mopts
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_inflight(cfg.broker.max_inflight.min(u16::MAX as usize) as u16)
        .set_last_will(LastWill::new(
            &hub_status_topic,
            HubStatusMsg::V1(HubStatus {
                online: false,
                version: env!("CARGO_PKG_VERSION").into(),
                checkpoint: None,
            })
            .encode(),
            QoS::AtLeastOnce,
            true,
        ));
    let (client, mut eventloop) = AsyncClient::new(mopts, 1024);
    proofline_common::mqtt::tune(&mut eventloop);

    let metrics = Arc::new(HubMetrics::default());
    let alerts = Arc::new(Mutex::new(AlertBook::new(1000)));
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Cmd>(1024);
    let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(4096);

    // The witness thread: the one owner of the witnessed ledgers.
    let witness_thread = {
        let mut io = WitnessIo {
            ledger: ledger.clone(),
            metrics: Arc::clone(&metrics),
            alerts: Arc::clone(&alerts),
            out: out_tx,
            site: site.clone(),
            drill: opts.abort_after_persist,
        };
        let shutdown = shutdown.clone();
        std::thread::Builder::new().name("witness".into()).spawn(move || {
            let mut w = witness;
            publish_snapshot(&w, &snap_tx);
            while let Some(first) = cmd_rx.blocking_recv() {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match cmd_rx.try_recv() {
                        Ok(c) => group.push(c),
                        Err(_) => break,
                    }
                }
                if let Err(e) = witness_group(&mut w, group, &mut io) {
                    tracing::error!(error = %e, "witness storage failed; stopping the hub (unacknowledged batches will be delivered again)");
                    shutdown.cancel();
                    break;
                }
                publish_snapshot(&w, &snap_tx);
            }
        })?
    };

    // The responder: ack message first, then the MQTT acknowledgement of the batch.
    let responder = tokio::spawn({
        let client = client.clone();
        async move {
            while let Some(o) = out_rx.recv().await {
                if let Some((topic, payload)) = o.ack {
                    if let Err(e) = client
                        .publish(topic, QoS::AtLeastOnce, false, payload)
                        .await
                    {
                        tracing::warn!(error = %e, "could not queue an ack");
                    }
                }
                if let Err(e) = client.ack(&o.publish).await {
                    tracing::warn!(error = %e, "could not acknowledge a message");
                }
            }
        }
    });

    // The MQTT event loop.
    let (subscribed_tx, mut subscribed) = watch::channel(false);
    let events = tokio::spawn({
        let client = client.clone();
        let cmd_tx = cmd_tx.clone();
        let metrics = Arc::clone(&metrics);
        let shutdown = shutdown.clone();
        let site = cfg.hub.site.clone();
        let mut backoff = mqtt.backoff();
        async move {
            loop {
                let ev = tokio::select! {
                    () = shutdown.cancelled() => break,
                    ev = eventloop.poll() => ev,
                };
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        backoff.reset();
                        metrics.mqtt_connected.store(1, Ordering::Relaxed);
                        tracing::info!(
                            session_present = ack.session_present,
                            "connected to the broker"
                        );
                        for f in [wire::records_filter(&site), wire::status_filter(&site)] {
                            if let Err(e) = client.try_subscribe(f, QoS::AtLeastOnce) {
                                tracing::error!(error = %e, "could not subscribe");
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let topic = p.topic.clone();
                        let cmd = match wire::parse_topic(&site, &topic) {
                            Some((agent, TopicKind::Records)) => Cmd::Batch {
                                agent_id: agent.to_owned(),
                                publish: p,
                            },
                            Some((agent, TopicKind::Status)) if agent != "hub" => Cmd::Status {
                                agent_id: agent.to_owned(),
                                publish: p,
                            },
                            // Acknowledged in turn: rumqttd drops a client that acks out of order.
                            _ => Cmd::Ignore(p),
                        };
                        if cmd_tx.send(cmd).await.is_err() {
                            break;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subscribed_tx.send_replace(true);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        metrics.mqtt_connected.store(0, Ordering::Relaxed);
                        let d = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "broker connection lost");
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(d) => {}
                        }
                    }
                }
            }
        }
    });

    // Ticks: time-based alerts every second; enrollments and the hub status every few seconds.
    let ticker = tokio::spawn({
        let cmd_tx = cmd_tx.clone();
        let client = client.clone();
        let shutdown = shutdown.clone();
        let ledger = ledger.clone();
        let data_dir = cfg.hub.data_dir.clone();
        let site = cfg.hub.site.clone();
        let signer = signer.clone();
        let topic = hub_status_topic.clone();
        // A station in the configuration keeps its configured key: an enrollment file for the
        // same station (left from before it was configured) does not replace it, as at start
        // and in `ledger verify`.
        let configured: std::collections::HashSet<String> = cfg
            .enrolled()
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .map(|e| e.agent_id)
            .collect();
        async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            let mut n = 0u64;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = t.tick() => {}
                }
                let _ = cmd_tx.send(Cmd::Tick).await;
                if n % SLOW_TICK.as_secs() == 0 {
                    for e in read_enrollments(&data_dir, &site) {
                        if !configured.contains(&e.agent_id) {
                            let _ = cmd_tx.send(Cmd::Enroll(e)).await;
                        }
                    }
                    let status = hub_status(true, &ledger, &signer);
                    let _ = client.try_publish(&topic, QoS::AtLeastOnce, true, status);
                }
                n += 1;
            }
        }
    });
    drop(cmd_tx);

    let listener = tokio::net::TcpListener::bind(api_listen)
        .await
        .with_context(|| format!("binding api.listen {api_listen}"))?;
    let api_addr = listener.local_addr()?;
    let app = crate::api::router(AppState {
        snapshot: snap_rx,
        alerts: Arc::clone(&alerts),
        metrics: Arc::clone(&metrics),
    });
    let http = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        }
    });

    // Ready once the subscriptions stand, so no agent publishes into a void on a first start.
    if tokio::time::timeout(Duration::from_secs(10), subscribed.wait_for(|s| *s))
        .await
        .is_err()
    {
        tracing::warn!(broker = %mqtt.broker, "not subscribed at the broker yet; agents' batches wait for it");
    }
    proofline_common::systemd::notify("READY=1");
    let watchdog = proofline_common::systemd::spawn_watchdog(shutdown.clone());
    tracing::info!(%origin, api = %api_addr, broker = %mqtt.broker, "hub running");
    if let Some(r) = opts.ready {
        let _ = r.send(Running {
            api: api_addr,
            broker: mqtt.broker.clone(),
        });
    }

    shutdown.cancelled().await;
    proofline_common::systemd::notify("STOPPING=1");
    tracing::info!("stopping");
    let stop = async {
        let _ = ticker.await;
        let _ = events.await;
        // The witness thread ends when the event loop and ticker dropped their senders.
        let _ = tokio::task::spawn_blocking(move || witness_thread.join()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), responder).await;
        let _ = client.try_publish(
            &hub_status_topic,
            QoS::AtLeastOnce,
            true,
            hub_status(false, &ledger, &signer),
        );
        let _ = client.try_disconnect();
        let _ = ledger
            .append(vec![Entry {
                received_at: now_micros(),
                body: Body::StationEvent(StationEvent::Stopped {
                    reason: "signal".into(),
                }),
            }])
            .await;
        drop(ledger);
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        let _ = http.await;
    };
    if tokio::time::timeout(STOP_GRACE, stop).await.is_err() {
        tracing::error!(
            "stop took longer than {} s; exiting anyway",
            STOP_GRACE.as_secs()
        );
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    Ok(())
}

fn hub_status(online: bool, ledger: &LedgerHandle, signer: &NoteSigner) -> Vec<u8> {
    let head = ledger.head();
    let cp = Checkpoint {
        origin: ledger.origin().to_string(),
        size: head.size,
        root: head.root,
    };
    HubStatusMsg::V1(HubStatus {
        online,
        version: env!("CARGO_PKG_VERSION").into(),
        checkpoint: cp.sign(signer).ok().map(|n| n.to_string()),
    })
    .encode()
}

fn publish_snapshot(w: &Witness, tx: &watch::Sender<Arc<Snapshot>>) {
    let agents = w.agents();
    let readers = agents
        .iter()
        .filter_map(|a| Some((a.agent_id.clone(), w.reader(&a.agent_id)?)))
        .collect();
    tx.send_replace(Arc::new(Snapshot { agents, readers }));
}

/// Handles one group of commands; batches are stored with one fsync before any answer goes out.
/// What the witness thread works with besides the witness itself.
struct WitnessIo {
    ledger: LedgerHandle,
    metrics: Arc<HubMetrics>,
    alerts: Arc<Mutex<AlertBook>>,
    out: mpsc::Sender<Outgoing>,
    site: String,
    /// Groups left before the crash drill aborts (see [`RunOptions::abort_after_persist`]).
    drill: Option<u64>,
}

fn witness_group(w: &mut Witness, group: Vec<Cmd>, io: &mut WitnessIo) -> anyhow::Result<()> {
    let now = now_micros();
    let mut items = Vec::new();
    let mut publishes = Vec::new();
    let mut raised: Vec<Raised> = Vec::new();
    // Answers in the order the messages came: rumqttd requires in-order acknowledgements.
    let mut after: Vec<Option<Outgoing>> = Vec::new();
    let mut batch_slots = Vec::new();
    for c in group {
        match c {
            Cmd::Ignore(publish) => after.push(Some(Outgoing { ack: None, publish })),
            Cmd::Batch { agent_id, publish } => {
                items.push((agent_id, publish.payload.to_vec()));
                publishes.push(publish);
                batch_slots.push(after.len());
                after.push(None);
            }
            Cmd::Status { agent_id, publish } => {
                match AgentStatusMsg::decode(&publish.payload) {
                    Ok(AgentStatusMsg::V1(s)) => w.status(&agent_id, s.online),
                    Err(e) => {
                        tracing::warn!(agent = %agent_id, error = %e, "ignoring an agent status")
                    }
                }
                after.push(Some(Outgoing { ack: None, publish }));
            }
            Cmd::Tick => raised.extend(w.tick(now)),
            Cmd::Enroll(e) => {
                if !w.is_enrolled(&e.agent_id) {
                    tracing::info!(agent = %e.agent_id, "enrolled");
                }
                w.enroll(e)?;
            }
        }
    }
    let replies = w.handle(&items, now)?;
    if replies.iter().any(|r| r.stored > 0) {
        if let Some(n) = io.drill.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                tracing::error!(
                    "crash drill: aborting after a durable witness commit, before its acks"
                );
                std::process::abort();
            }
        }
    }
    io.metrics.witness_groups.fetch_add(1, Ordering::Relaxed);
    for ((reply, publish), slot) in replies.into_iter().zip(publishes).zip(batch_slots) {
        io.metrics.batches.fetch_add(1, Ordering::Relaxed);
        io.metrics
            .records_stored
            .fetch_add(reply.stored, Ordering::Relaxed);
        match &reply.ack {
            proofline_common::wire::Ack::Rejected { .. } => {
                io.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            }
            proofline_common::wire::Ack::Resend { .. } => {
                io.metrics.resends.fetch_add(1, Ordering::Relaxed);
            }
            proofline_common::wire::Ack::Cosigned { .. } => {}
        }
        raised.extend(reply.alerts);
        let topic = AgentTopics::new(&io.site, &reply.agent_id).ack;
        after[slot] = Some(Outgoing {
            ack: Some((topic, AckMsg::V1(reply.ack).encode())),
            publish,
        });
    }
    io.metrics
        .duplicates
        .store(w.duplicates_total(), Ordering::Relaxed);
    let mut entries = Vec::new();
    if !raised.is_empty() {
        let mut book = io.alerts.lock().unwrap_or_else(|p| p.into_inner());
        for r in &raised {
            if book.raise(r, now) {
                tracing::error!(agent = %r.agent_id, kind = r.kind.name(), seq = ?r.seq, "{}", r.message);
                entries.push(Entry {
                    received_at: now,
                    body: Body::StationEvent(StationEvent::Alarm(Alarm {
                        source: r.agent_id.clone(),
                        code: format!("witness.{}", r.kind.name()),
                        severity: Severity::Error,
                        message: r.message.clone(),
                    })),
                });
            }
        }
    }
    if !entries.is_empty() {
        io.ledger
            .append_blocking(entries)
            .context("recording alerts in the hub ledger")?;
    }
    for o in after.into_iter().flatten() {
        if io.out.blocking_send(o).is_err() {
            break;
        }
    }
    Ok(())
}

/// `run --config FILE`.
pub fn main_run(path: &Path) -> anyhow::Result<()> {
    let cfg = load_checked(path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = proofline_common::process::cancel_on_signals(shutdown.clone());
        let abort_after_persist = match std::env::var(DRILL_ABORT_AFTER_PERSIST) {
            Ok(v) => Some(
                v.parse::<u64>()
                    .with_context(|| format!("{DRILL_ABORT_AFTER_PERSIST}={v:?} is not a count"))?,
            ),
            Err(_) => None,
        };
        let r = run(
            cfg,
            shutdown,
            RunOptions {
                ready: None,
                abort_after_persist,
            },
        )
        .await;
        signals.abort();
        r
    })
}

/// Loads the configuration and checks it and what it points at, like `check-config`.
pub fn load_checked(path: &Path) -> anyhow::Result<HubConfig> {
    let cfg = HubConfig::load(path)?;
    let problems = cfg.environment_problems();
    if !problems.is_empty() {
        return Err(proofline_common::config::ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        }
        .into());
    }
    Ok(cfg)
}

/// Where `proofline-hub agent enroll` writes an enrollment.
pub fn enrollment_path(data_dir: &Path, agent_id: &str) -> PathBuf {
    data_dir.join(ENROLLED_DIR).join(format!("{agent_id}.key"))
}
