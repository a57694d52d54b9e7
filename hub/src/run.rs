//! `proofline-hub run`: wires the hub's components from a checked [`HubPlan`] and runs them
//! until the shutdown token is cancelled.
//!
//! ```text
//!  stations ─MQTT─▶ broker ─▶ MqttLink ──Cmd──▶ WitnessWorker (thread) ──Outgoing──▶ Responder
//!                             (one owner,      (check, store, one sync      (publish the answer,
//!                              manual acks)     through the ledger writer)   then ack the message)
//!  Ticker (ticks, enrollments, hub status) ──Cmd──▶ WitnessWorker      ApiServer ◀── snapshot
//! ```
//!
//! A message whose batch is not durable is never acknowledged, so the broker delivers it again.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use proofline_common::hash::Hash;
use proofline_common::record::{now_micros, Body, StationEvent};
use proofline_common::store::{Access, Entry, Store, StoreOptions};
use proofline_common::wire::{self, HubStatus, HubStatusMsg};
use proofline_common::writer::{spawn_writer, LedgerHandle, WriterConfig};
use rumqttc::{AsyncClient, EventLoop, LastWill, QoS};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alerts::AlertBook;
use crate::api::{ApiServer, AppState, HubMetrics, Snapshot};
use crate::config::HubConfig;
use crate::enroll::{enrollment_path, hub_status, read_enrollments, Ticker};
use crate::link::{MqttLink, Responder};
use crate::plan::HubPlan;
use crate::witness::worker::{Cmd, Outgoing, Reserve, WitnessWorker};
use crate::witness::{Enrolled, Witness};

/// Time allowed for an orderly stop (below systemd's stop timeout).
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Metadata key of the hub's cosigner verifier key, for offline verification.
pub const META_COSIGNER: &str = "cosigner";

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
    /// `PROOFLINE_DRILL_ABORT_AFTER_PERSIST` by `run --config` (test builds only).
    #[cfg(feature = "test-hooks")]
    pub abort_after_persist: Option<u64>,
    /// Fault injection: while set, the hub ledger's commits fail as a failed fsync would (test
    /// builds only).
    #[cfg(feature = "test-hooks")]
    pub fail_commits: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// The embedded broker lets any client in and anywhere, as a broker in an attacker's hands
    /// would: tests that the hub itself trusts nothing it did not verify use it (test builds
    /// only).
    #[cfg(feature = "test-hooks")]
    pub unlocked_broker: bool,
}

/// Environment variable for the crash drill of [`RunOptions::abort_after_persist`].
#[cfg(feature = "test-hooks")]
pub const DRILL_ABORT_AFTER_PERSIST: &str = "PROOFLINE_DRILL_ABORT_AFTER_PERSIST";

/// Every station the hub accepts: those in the configuration, then those enrolled on disk (a
/// configured station keeps its configured key).
fn all_enrolled(plan: &HubPlan) -> Vec<Enrolled> {
    let mut enrolled = plan.enrolled.clone();
    for e in read_enrollments(&plan.data_dir, &plan.site) {
        match enrolled.iter().find(|x| x.agent_id == e.agent_id) {
            None => enrolled.push(e),
            Some(c) if c.key != e.key => tracing::warn!(
                agent = %e.agent_id,
                file = %enrollment_path(&plan.data_dir, &e.agent_id).display(),
                "the configuration enrolls this station with another key; the configured key applies (remove the file)"
            ),
            Some(_) => {}
        }
    }
    enrolled
}

fn configured_ids(plan: &HubPlan) -> std::collections::HashSet<String> {
    plan.enrolled.iter().map(|e| e.agent_id.clone()).collect()
}

/// The hub's MQTT client: persistent session, manual acks, an offline last will.
/// `secret`: the hub's credential at the embedded broker (with an external one, `[mqtt]`
/// names the credential).
fn mqtt_client(
    plan: &HubPlan,
    status_topic: &str,
    secret: Option<&str>,
) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let id = crate::acl::hub_client_id(&plan.site);
    let mut mopts = plan.mqtt.options(&id)?;
    if let Some(secret) = secret {
        mopts.set_credentials(id, secret);
    }
    mopts
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_inflight(plan.max_inflight)
        .set_last_will(LastWill::new(
            status_topic,
            HubStatusMsg::V1(HubStatus {
                online: false,
                version: env!("CARGO_PKG_VERSION").into(),
                checkpoint: None,
            })
            .encode(),
            QoS::AtLeastOnce,
            true,
        ));
    let (client, mut events) = AsyncClient::new(mopts, 1024);
    proofline_common::mqtt::tune(&mut events);
    Ok((client, events))
}

async fn record_event(ledger: &LedgerHandle, event: StationEvent) -> anyhow::Result<()> {
    ledger
        .append(vec![Entry {
            received_at: now_micros(),
            body: Body::StationEvent(event),
        }])
        .await?;
    Ok(())
}

/// The hub's ledger (through its writer) and the witness over the hub's database.
async fn open_stores(
    plan: &HubPlan,
    opts: &RunOptions,
) -> anyhow::Result<(
    LedgerHandle,
    proofline_common::writer::WriterThread,
    Witness,
    proofline_common::store::Index,
    proofline_common::store::Index,
)> {
    let enrolled = all_enrolled(plan);
    let (store, report) = Store::open(
        &plan.data_dir,
        Access::Write(plan.origin.clone()),
        &StoreOptions::default(),
    )
    .with_context(|| format!("opening the hub's data in {}", plan.data_dir.display()))?;
    tracing::info!(ledger = %plan.origin, size = report.head.size, boot = report.boot, "hub ledger open");
    let witnessed = store.witness_store();
    let accounts = witnessed
        .index(crate::web::accounts::INDEX)
        .context("opening the accounts")?;
    let triage = witnessed
        .index(crate::web::triage::INDEX)
        .context("opening the findings' triage")?;
    witnessed.set_meta(
        META_COSIGNER,
        plan.signer.cosignature_verifier().to_string().as_bytes(),
    )?;
    #[cfg(not(feature = "test-hooks"))]
    let _ = opts;
    let config = WriterConfig {
        #[cfg(feature = "test-hooks")]
        fail_commits: opts.fail_commits.clone(),
        ..WriterConfig::default()
    };
    let (ledger, writer) = spawn_writer(store, config)?;
    let started = StationEvent::Started {
        version: env!("CARGO_PKG_VERSION").into(),
        config_sha256: Hash::default(),
    };
    record_event(&ledger, started)
        .await
        .context("recording the start")?;
    let reconciler = crate::reconcile::Reconciler::open(&witnessed, plan.rules.clone())
        .context("opening the reconciled view")?;
    let mut witness = Witness::open(
        witnessed,
        ledger.clone(),
        plan.signer.clone(),
        enrolled,
        plan.witness.clone(),
        now_micros(),
    )?;
    // Caught up on the witness thread before its first group.
    witness.set_reconciler(reconciler);
    Ok((ledger, writer, witness, accounts, triage))
}

/// The components once started, in the order they stop.
struct Started {
    tasks: TaskTracker,
    ticker: tokio::task::JoinHandle<()>,
    link: tokio::task::JoinHandle<()>,
    witness_thread: std::thread::JoinHandle<()>,
    responder: tokio::task::JoinHandle<()>,
    api: tokio::task::JoinHandle<()>,
    subscribed: watch::Receiver<bool>,
    metrics: Arc<HubMetrics>,
    /// The QMS delivery loop, when a QMS is configured.
    qms: Option<tokio::task::JoinHandle<()>>,
}

/// Starts the route interlock's responder thread; its questions go to the returned sender
/// (the thread ends when the sender is dropped).
fn spawn_interlock(
    plan: &HubPlan,
    client: &AsyncClient,
    snapshot: &watch::Receiver<Arc<Snapshot>>,
    metrics: &Arc<HubMetrics>,
    web: &Arc<crate::web::Web>,
) -> std::io::Result<mpsc::Sender<crate::interlock::Question>> {
    let (tx, questions) = mpsc::channel(crate::interlock::QUEUE);
    let responder = crate::interlock::Responder {
        questions,
        client: client.clone(),
        snapshot: snapshot.clone(),
        rules: Arc::clone(&plan.rules),
        signer: plan.signer.clone(),
        site: plan.site.clone(),
        metrics: Arc::clone(metrics),
        web: Some(Arc::clone(web)),
    };
    std::thread::Builder::new()
        .name("interlock".into())
        .spawn(move || responder.run())?;
    Ok(tx)
}

/// Starts the witness thread and the tasks around it.
#[allow(clippy::too_many_arguments)]
fn start(
    plan: &HubPlan,
    witness: Witness,
    ledger: &LedgerHandle,
    client: &AsyncClient,
    events: EventLoop,
    listener: tokio::net::TcpListener,
    status_topic: &str,
    opts: &RunOptions,
    shutdown: &CancellationToken,
    fatal: &Arc<std::sync::OnceLock<String>>,
    acl: Option<Arc<crate::acl::BrokerAcl>>,
    web: Arc<crate::web::Web>,
) -> anyhow::Result<Started> {
    let broker = if plan.broker.is_some() {
        crate::health::BROKER_RUNNING
    } else {
        crate::health::BROKER_EXTERNAL
    };
    let metrics = Arc::new(HubMetrics {
        health: crate::health::HealthSignals::new(broker, now_micros()),
        broker_acl: acl.clone(),
        ..HubMetrics::default()
    });
    let alerts = Arc::new(Mutex::new(AlertBook::new()));
    let qms_status = plan
        .qms
        .as_ref()
        .map(|_| Arc::new(Mutex::new(crate::qms::worker::QmsStatus::default())));
    let qms_worker = match (&plan.qms, witness.reconciler_lookup(), &qms_status) {
        (Some(q), Some(lookup), Some(status)) => Some(crate::qms::worker::QmsWorker {
            plan: q.clone(),
            site: plan.site.clone(),
            index: lookup.index().clone(),
            ledger: ledger.clone(),
            alerts: Arc::clone(&alerts),
            status: Arc::clone(status),
            retry_dir: crate::qms::retry_dir(&plan.data_dir),
        }),
        _ => None,
    };
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (cmd_tx, cmd_rx) = mpsc::channel::<Cmd>(1024);
    let (out_tx, out_rx) = mpsc::channel::<Outgoing>(4096);
    let worker = WitnessWorker {
        witness,
        commands: cmd_rx,
        ledger: ledger.clone(),
        metrics: Arc::clone(&metrics),
        alerts: Arc::clone(&alerts),
        out: out_tx,
        snapshot: snap_tx,
        site: plan.site.clone(),
        signer: plan.signer.clone(),
        fatal: Arc::clone(fatal),
        data_dir: plan.data_dir.clone(),
        reserve: Reserve::new(plan.min_free_bytes),
        #[cfg(feature = "test-hooks")]
        drill: opts.abort_after_persist,
    };
    #[cfg(not(feature = "test-hooks"))]
    let _ = opts;
    let witness_thread = std::thread::Builder::new().name("witness".into()).spawn({
        let shutdown = shutdown.clone();
        move || worker.run(shutdown)
    })?;
    let tasks = TaskTracker::new();
    let responder = Responder {
        client: client.clone(),
        answers: out_rx,
    };
    let (subscribed_tx, subscribed) = watch::channel(false);
    let questions_tx = spawn_interlock(plan, client, &snap_rx, &metrics, &web)?;
    let link = MqttLink {
        questions: questions_tx,
        client: client.clone(),
        events,
        commands: cmd_tx.clone(),
        metrics: Arc::clone(&metrics),
        site: plan.site.clone(),
        backoff: plan.mqtt.backoff(),
        subscribed: subscribed_tx,
    };
    let ticker = Ticker {
        commands: cmd_tx,
        client: client.clone(),
        ledger: ledger.clone(),
        signer: plan.signer.clone(),
        data_dir: plan.data_dir.clone(),
        site: plan.site.clone(),
        status_topic: status_topic.to_owned(),
        configured: configured_ids(plan),
        acl,
    };
    let state = AppState {
        snapshot: snap_rx,
        alerts,
        metrics: Arc::clone(&metrics),
        qms: qms_status,
        evidence: Some(crate::api::EvidenceMaker::new(plan.signer.clone())),
        web: Some(Arc::clone(&web)),
    };
    tasks.spawn(web.run_requests(shutdown.clone()));
    let tls = match &plan.api_tls {
        None => None,
        Some((cert, key)) => {
            let c = proofline_common::http::ReloadingCert::load(cert, key)
                .map_err(|e| anyhow::anyhow!("api.tls_cert_file: {e}"))?;
            tasks.spawn(Arc::clone(&c).watch(Duration::from_secs(2), shutdown.clone()));
            Some(c.acceptor().map_err(anyhow::Error::msg)?)
        }
    };
    let started = Started {
        responder: tasks.spawn(responder.run()),
        link: tasks.spawn(link.run(shutdown.clone())),
        ticker: tasks.spawn(ticker.run(shutdown.clone())),
        api: tasks.spawn(
            ApiServer {
                listener,
                state,
                tls,
            }
            .run_with(plan.api_limits, shutdown.clone()),
        ),
        witness_thread,
        subscribed,
        metrics,
        qms: qms_worker.map(|w| tokio::spawn(w.run(shutdown.clone()))),
        tasks,
    };
    started.tasks.close();
    Ok(started)
}

/// Runs the hub until `shutdown` is cancelled.
pub async fn run(
    plan: HubPlan,
    shutdown: CancellationToken,
    opts: RunOptions,
) -> anyhow::Result<()> {
    let (ledger, writer, witness, accounts, triage) = open_stores(&plan, &opts).await?;
    let web = crate::web::Web::start(&plan, accounts, triage, ledger.clone())?;
    // Set by a component that stops the hub because it cannot go on: the hub then exits
    // non-zero, so its unit restarts it.
    let fatal = Arc::new(std::sync::OnceLock::new());
    // The broker outlives every other component on a stop: it carries the hub's last status.
    let broker_stop = CancellationToken::new();
    let broker = TaskTracker::new();
    let mut acl = None;
    if let Some(b) = &plan.broker {
        let a = crate::acl::BrokerAcl::new(&plan.site, crate::acl::new_secret());
        a.refresh(&plan.data_dir, &configured_ids(&plan));
        acl = Some(Arc::clone(&a));
        #[cfg(feature = "test-hooks")]
        let a = (!opts.unlocked_broker).then_some(a);
        #[cfg(not(feature = "test-hooks"))]
        let a = Some(a);
        let embedded = crate::broker::start(b, a)?;
        tracing::info!(listen = %b.listen, tls = ?b.tls.as_ref().map(|t| t.listen), "embedded MQTT broker started");
        let (fatal, shutdown) = (Arc::clone(&fatal), shutdown.clone());
        broker.spawn(embedded.run(broker_stop.clone(), move |why: &str| {
            let _ = fatal.set(why.to_owned());
            shutdown.cancel();
        }));
    }
    broker.close();
    let status_topic = wire::hub_status_topic(&plan.site);
    let (client, events) = mqtt_client(&plan, &status_topic, acl.as_ref().map(|a| a.hub_secret()))?;
    let listener = tokio::net::TcpListener::bind(plan.api_listen)
        .await
        .with_context(|| format!("binding api.listen {}", plan.api_listen))?;
    let api_addr = listener.local_addr()?;
    let mut started = start(
        &plan,
        witness,
        &ledger,
        &client,
        events,
        listener,
        &status_topic,
        &opts,
        &shutdown,
        &fatal,
        acl,
        web,
    )?;

    // Ready once the subscriptions stand, so no agent publishes into a void on a first start.
    let subscribed = started.subscribed.wait_for(|s| *s);
    if tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .is_err()
    {
        tracing::warn!(broker = %plan.mqtt.broker, "not subscribed at the broker yet; agents' batches wait for it");
    }
    proofline_common::systemd::notify("READY=1");
    let metrics = Arc::clone(&started.metrics);
    proofline_common::systemd::spawn_watchdog(&started.tasks, shutdown.clone(), move || {
        metrics.health.check(now_micros(), crate::health::WATCHDOG)
    });
    tracing::info!(origin = %plan.origin, api = %api_addr, broker = %plan.mqtt.broker, "hub running");
    if let Some(r) = opts.ready {
        let _ = r.send(Running {
            api: api_addr,
            broker: plan.mqtt.broker.clone(),
        });
    }

    shutdown.cancelled().await;
    proofline_common::systemd::notify("STOPPING=1");
    tracing::info!("stopping");
    let stop = async {
        let _ = started.ticker.await;
        let _ = started.link.await;
        // The witness thread ends when the link and the ticker dropped their senders.
        let witness_thread = started.witness_thread;
        let _ = tokio::task::spawn_blocking(move || witness_thread.join()).await;
        if let Some(q) = started.qms {
            // It holds a handle of the hub ledger's writer, which ends below.
            let _ = q.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), started.responder).await;
        let offline = hub_status(false, &ledger, &plan.signer);
        let _ = client.try_publish(&status_topic, QoS::AtLeastOnce, true, offline);
        let _ = client.try_disconnect();
        let stopped = StationEvent::Stopped {
            reason: "signal".into(),
        };
        let _ = record_event(&ledger, stopped).await;
        drop(ledger);
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        let _ = started.api.await;
        started.tasks.wait().await;
    };
    if tokio::time::timeout(STOP_GRACE, stop).await.is_err() {
        tracing::error!(
            "stop took longer than {} s; exiting anyway",
            STOP_GRACE.as_secs()
        );
    }
    broker_stop.cancel();
    let _ = tokio::time::timeout(STOP_GRACE, broker.wait()).await;
    match fatal.get() {
        Some(why) => Err(anyhow::anyhow!("the hub stopped: {why}")),
        None => Ok(()),
    }
}

/// `run --config FILE`.
pub fn main_run(path: &Path) -> anyhow::Result<()> {
    let plan = load_plan(path)?;
    #[cfg(feature = "test-hooks")]
    let abort_after_persist = match std::env::var(DRILL_ABORT_AFTER_PERSIST) {
        Ok(v) => Some(
            v.parse::<u64>()
                .with_context(|| format!("{DRILL_ABORT_AFTER_PERSIST}={v:?} is not a count"))?,
        ),
        Err(_) => None,
    };
    let opts = RunOptions {
        ready: None,
        #[cfg(feature = "test-hooks")]
        abort_after_persist,
        #[cfg(feature = "test-hooks")]
        fail_commits: None,
        #[cfg(feature = "test-hooks")]
        unlocked_broker: false,
    };
    proofline_common::process::run_until_signal(|shutdown| run(plan, shutdown, opts))
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

/// The configuration at `path`, checked and turned into a plan.
pub fn load_plan(path: &Path) -> anyhow::Result<HubPlan> {
    let cfg = HubConfig::load(path)?;
    HubPlan::build(&cfg).map_err(|problems| {
        proofline_common::config::ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        }
        .into()
    })
}
