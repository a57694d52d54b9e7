//! `proofline-agent run`: wires the station's components from a checked [`AgentPlan`] and runs
//! them under one task tracker until the shutdown token is cancelled.
//!
//! ```text
//!  sources ──Input──▶ Station ──append──▶ ledger writer (thread) ──head──▶ Forwarder ──MQTT──▶ hub
//!  (one task          (binds, judges)      (group commit, fsync)           (cosigned = receipt)
//!   per link)               ▲                      ▲
//!                      StorageWatch ───prune───────┘          MetricsEndpoint (/metrics, /healthz)
//! ```
//!
//! Start: open (verify, repair) the ledger, start the writer, record `Started` (version and
//! configuration hash), start every component, then tell systemd READY.
//! Stop (SIGTERM/SIGINT → the shutdown token): sources stop polling (a device is never
//! acknowledged for a record that is not durable), the station records what it was handed,
//! `Stopped` is recorded, the forwarder gets a moment to have it cosigned, and the ledger writer
//! is joined last.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use proofline_common::record::{now_micros, Body, RawData, Record, StationEvent};
use proofline_common::store::{Access, Entry, Reader, Store, StoreOptions};
use proofline_common::writer::{spawn_writer, LedgerHandle, WriterConfig, WriterThread};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AgentConfig, AgentPlan, SourcePlan};
use crate::forward::Forwarder;
use crate::source::modbus::{BusHandle, ModbusLink, ModbusSource, RtuBus};
use crate::source::open_protocol::{LastTightening, OpSource};
use crate::source::scanner::ScannerSource;
use crate::source::serial_line::LineSource;
use crate::station::storage::StorageWatch;
use crate::station::{Health, Input, Metrics, Station};

/// How far back the ledger is searched for each source's last recorded result.
const LAST_RESULT_SEARCH: u64 = 100_000;
/// Time allowed for an orderly stop (below systemd's default stop timeout of 90 s).
const STOP_GRACE: Duration = Duration::from_secs(20);
/// How long a stopping agent waits for the hub to cosign its last records.
const FORWARD_GRACE: Duration = Duration::from_secs(3);
/// How long an agent whose ledger cannot be written keeps answering `/healthz` with the reason
/// before it stops (and exits non-zero, so the service manager restarts it).
const FAILED_LINGER: Duration = Duration::from_secs(2);

/// Where the running agent can be reached (tests start it on port 0).
#[derive(Debug, Clone)]
pub struct Running {
    pub http: SocketAddr,
    /// The size the hub last cosigned (stays 0 without a `[hub]`).
    pub cosigned: watch::Receiver<u64>,
}

/// Options of an in-process run (tests, drills).
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Receives the bound HTTP address once everything is started.
    pub ready: Option<tokio::sync::oneshot::Sender<Running>>,
    /// While set, ledger commits fail (fault injection; see `WriterConfig::fail_commits`).
    #[cfg(feature = "test-hooks")]
    pub commit_fault: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// `/metrics` (Prometheus text) and `/healthz` (200 `ok`, or 503 with why the station is
/// degraded), served within the `[http]` connection limits.
#[derive(Debug)]
pub struct MetricsEndpoint {
    pub listener: tokio::net::TcpListener,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub limits: proofline_common::http::HttpLimits,
}

impl MetricsEndpoint {
    pub async fn run(self, shutdown: CancellationToken) {
        let (m, health) = (self.metrics, self.health);
        let counters = Arc::clone(&m.http);
        let h = Arc::clone(&health);
        let app = axum::Router::new()
            .route(
                "/healthz",
                axum::routing::get(move || {
                    let degraded = h.degraded();
                    async move {
                        match degraded {
                            None => (axum::http::StatusCode::OK, "ok\n".to_owned()),
                            Some(why) => (
                                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                format!("degraded: {why}\n"),
                            ),
                        }
                    }
                }),
            )
            .route(
                "/metrics",
                axum::routing::get(move || {
                    m.degraded.store(
                        u64::from(health.degraded().is_some()),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    let body = m.render();
                    async move {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "text/plain; version=0.0.4",
                            )],
                            body,
                        )
                    }
                }),
            );
        proofline_common::http::serve(
            self.listener,
            app,
            self.limits,
            counters,
            "metrics",
            shutdown,
        )
        .await
    }
}

/// The opened ledger, what its tail says each source last recorded and the last cosigned
/// checkpoint.
struct Opened {
    ledger: LedgerHandle,
    history: History,
    cosigned: Option<proofline_common::store::Cosigned>,
}

/// Opens (verifies, repairs) the ledger, starts its writer thread and records `Started`.
async fn open_ledger(
    plan: &AgentPlan,
    opts: &mut RunOptions,
) -> anyhow::Result<(Opened, WriterThread)> {
    let (store, report) = Store::open(
        &plan.data_dir,
        Access::Write(plan.origin.clone()),
        &StoreOptions::default(),
    )
    .with_context(|| format!("opening the ledger in {}", plan.data_dir.display()))?;
    tracing::info!(ledger = %plan.origin, size = report.head.size, boot = report.boot, repaired = report.repaired, "ledger open");
    let history = last_results(&store.reader(), report.head.size);
    let cosigned = store.cosigned().cloned();
    let writer_cfg = WriterConfig {
        #[cfg(feature = "test-hooks")]
        fail_commits: opts.commit_fault.take(),
        ..WriterConfig::default()
    };
    #[cfg(not(feature = "test-hooks"))]
    let _ = opts;
    let (ledger, writer) = spawn_writer(store, writer_cfg)?;
    record_event(
        &ledger,
        StationEvent::Started {
            version: env!("CARGO_PKG_VERSION").into(),
            config_sha256: plan.config_sha256,
        },
    )
    .await
    .context("recording the start")?;
    let opened = Opened {
        ledger,
        history,
        cosigned,
    };
    Ok((opened, writer))
}

/// The components once started, in the order they stop.
struct Started {
    tasks: TaskTracker,
    sources: TaskTracker,
    station: tokio::task::JoinHandle<()>,
    storage: tokio::task::JoinHandle<()>,
    forwarder: Option<tokio::task::JoinHandle<()>>,
    http: tokio::task::JoinHandle<()>,
    cosigned: watch::Receiver<u64>,
    /// Stops the forwarder, which outlives the sources on a stop for the last records.
    late_stop: CancellationToken,
}

/// The station's degraded state as the forwarder reads it (into every signed message), looked
/// at every second until `stop`.
fn watch_degraded(
    tasks: &TaskTracker,
    health: &Arc<Health>,
    stop: CancellationToken,
) -> watch::Receiver<Option<String>> {
    let (tx, rx) = watch::channel(health.degraded());
    let health = Arc::clone(health);
    tasks.spawn(async move {
        let mut t = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = t.tick() => {}
            }
            let now = health.degraded();
            tx.send_if_modified(|d| {
                let changed = *d != now;
                *d = now;
                changed
            });
        }
    });
    rx
}

fn start(
    plan: AgentPlan,
    opened: Opened,
    listener: tokio::net::TcpListener,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    shutdown: &CancellationToken,
) -> Started {
    let Opened {
        ledger,
        history,
        cosigned,
    } = opened;
    let tasks = TaskTracker::new();
    let late_stop = CancellationToken::new();
    let (inputs, inputs_rx) = mpsc::channel::<Input>(1024);
    let (current_part, current_part_rx) = watch::channel(None);
    let (storage_full_tx, storage_full) = watch::channel(false);
    let storage = StorageWatch {
        plan: plan.storage.clone(),
        ledger: ledger.clone(),
        data_dir: plan.data_dir.clone(),
        metrics: Arc::clone(metrics),
        full: storage_full_tx,
        health: Arc::clone(health),
    };
    let (gate_tx, gate_rx) = watch::channel(crate::interlock::Gate::idle());
    let (parts_tx, parts_rx) = mpsc::channel(32);
    let (asks_tx, asks_rx) = mpsc::channel(32);
    let interlock = plan.interlock.clone();
    let station = Station {
        ledger: ledger.clone(),
        inputs: inputs_rx,
        binder: plan.binder.clone(),
        metrics: Arc::clone(metrics),
        current_part,
        storage_full,
        interlock: interlock.as_ref().map(|_| parts_tx),
    };
    let gate = match interlock.as_ref().map(|i| &i.output) {
        Some(crate::interlock::OutputPlan::Modbus { source, target }) => {
            Some((source.clone(), *target, gate_rx.clone()))
        }
        _ => None,
    };
    let sources = spawn_sources(
        plan.sources,
        &inputs,
        &current_part_rx,
        history,
        metrics,
        gate,
        shutdown,
    );
    if let Some(i) = interlock.clone() {
        if let crate::interlock::OutputPlan::Display(port) = &i.output {
            let display = crate::interlock::Display {
                port: port.clone(),
                gate: gate_rx.clone(),
            };
            tasks.spawn(display.run(shutdown.clone()));
        }
        let task = crate::interlock::Interlock {
            plan: i,
            parts: parts_rx,
            hub: asks_tx,
            station: inputs.clone(),
            current_part: current_part_rx.clone(),
            gate: gate_tx,
            metrics: Arc::clone(metrics),
        };
        tasks.spawn(task.run(shutdown.clone()));
    }
    let (cosigned_tx, cosigned_rx) = watch::channel(cosigned.as_ref().map_or(0, |c| c.size));
    let forwarder = match plan.hub {
        Some(plan) => {
            let forwarder = Forwarder {
                plan,
                ledger: ledger.clone(),
                start: cosigned,
                metrics: Arc::clone(metrics),
                cosigned: cosigned_tx,
                degraded: watch_degraded(&tasks, health, late_stop.clone()),
                asks: interlock.is_some().then_some(asks_rx),
            };
            Some(tasks.spawn(forwarder.run(late_stop.clone())))
        }
        None => {
            tracing::warn!("no [hub] configured: records are kept in the local ledger only");
            None
        }
    };
    let http = MetricsEndpoint {
        listener,
        metrics: Arc::clone(metrics),
        health: Arc::clone(health),
        limits: plan.http_limits,
    };
    let started = Started {
        storage: tasks.spawn(storage.run(shutdown.clone())),
        station: tasks.spawn(station.run(shutdown.clone())),
        http: tasks.spawn(http.run(shutdown.clone())),
        forwarder,
        sources,
        cosigned: cosigned_rx,
        late_stop,
        tasks,
    };
    started.tasks.close();
    started
}

/// Runs the agent until `shutdown` is cancelled, or until its ledger cannot be written any more:
/// then `/healthz` says why for a moment, the agent stops in order (records already durable stay
/// on disk) and the run ends with an error, so the process exits non-zero and is restarted.
pub async fn run(
    plan: AgentPlan,
    shutdown: CancellationToken,
    mut opts: RunOptions,
) -> anyhow::Result<()> {
    let (opened, writer) = open_ledger(&plan, &mut opts).await?;
    let ledger = opened.ledger.clone();
    let metrics = Arc::new(Metrics::default());
    metrics
        .ledger_size
        .store(ledger.head().size, std::sync::atomic::Ordering::Relaxed);
    // The one health of this station: `/healthz` reads it, the disk watch reports into it, and
    // the forwarder may put `health.degraded()` in its signed heartbeat.
    let health = Arc::new(Health::new(&ledger));
    let listener = tokio::net::TcpListener::bind(plan.http_listen)
        .await
        .with_context(|| format!("binding http.listen {}", plan.http_listen))?;
    let http_addr = listener.local_addr()?;
    let origin = plan.origin.clone();
    // Stops every component: on a signal, or when the ledger fails.
    let stopping = shutdown.child_token();
    let started = start(plan, opened, listener, &metrics, &health, &stopping);

    crate::systemd::notify("READY=1");
    let watched = Arc::clone(&health);
    // A failed ledger ends the run; a full disk does not (a restart would not free it).
    crate::systemd::spawn_watchdog(&started.tasks, stopping.clone(), move || {
        watched.ledger_failed().into_iter().collect()
    });
    tracing::info!(%origin, http = %http_addr, "running");
    if let Some(r) = opts.ready {
        let _ = r.send(Running {
            http: http_addr,
            cosigned: started.cosigned.clone(),
        });
    }

    let mut poisoned = ledger.watch_poisoned();
    let ledger_failed = async {
        let why = poisoned
            .wait_for(Option::is_some)
            .await
            .map(|why| why.clone().unwrap_or_default());
        match why {
            Ok(why) => why,
            // The writer is gone only after every handle is dropped: not while running.
            Err(_) => std::future::pending().await,
        }
    };
    let failure = tokio::select! {
        () = shutdown.cancelled() => None,
        why = ledger_failed => Some(why),
    };
    if let Some(why) = &failure {
        tracing::error!(error = %why, "the ledger cannot be written; stopping so the service is restarted (records already durable are kept)");
        crate::systemd::notify(&format!("STATUS=ledger cannot be written: {why}"));
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(FAILED_LINGER) => {}
        }
    }
    stopping.cancel();
    crate::systemd::notify("STOPPING=1");
    tracing::info!("stopping");
    let late_stop = started.late_stop.clone();
    if tokio::time::timeout(STOP_GRACE, stop(started, ledger, writer))
        .await
        .is_err()
    {
        tracing::error!(
            "stop took longer than {} s; exiting anyway (records already durable are kept)",
            STOP_GRACE.as_secs()
        );
    }
    late_stop.cancel();
    match failure {
        None => Ok(()),
        Some(why) => Err(anyhow::anyhow!(
            "the ledger cannot be written ({why}); stopped so the service manager restarts the agent"
        )),
    }
}

/// The orderly stop: sources first, then the station; `Stopped` is recorded, the forwarder gets
/// a moment to have it cosigned, and the ledger writer is joined last.
async fn stop(started: Started, ledger: LedgerHandle, writer: WriterThread) {
    started.sources.wait().await;
    let _ = started.station.await;
    let _ = started.storage.await;
    // A failed ledger takes no more records: its stop shows as the error it ended with.
    if ledger.poisoned().is_none() {
        let stopped = StationEvent::Stopped {
            reason: "signal".into(),
        };
        if let Err(e) = record_event(&ledger, stopped).await {
            tracing::error!(error = %e, "could not record the stop");
        }
    }
    if let Some(f) = started.forwarder {
        await_cosigned(ledger.head().size, started.cosigned).await;
        started.late_stop.cancel();
        let _ = f.await;
    }
    drop(ledger);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    let _ = started.http.await;
    started.tasks.wait().await;
}

/// Starts every source (and one bus task per RTU line, shared by the units on it) on a tracker
/// of their own, so the stop can wait for exactly them.
fn spawn_sources(
    plans: Vec<SourcePlan>,
    inputs: &mpsc::Sender<Input>,
    current_part: &watch::Receiver<Option<String>>,
    mut history: History,
    metrics: &Arc<Metrics>,
    mut gate: Option<(
        String,
        crate::interlock::GateTarget,
        watch::Receiver<crate::interlock::Gate>,
    )>,
    shutdown: &CancellationToken,
) -> TaskTracker {
    let sources = TaskTracker::new();
    let mut buses: HashMap<std::path::PathBuf, BusHandle> = HashMap::new();
    for plan in plans {
        let station = inputs.clone();
        let metrics = Arc::clone(metrics);
        let stop = shutdown.clone();
        match plan {
            SourcePlan::Modbus(plan) => {
                let bus = match &plan.link {
                    ModbusLink::Tcp { .. } => None,
                    ModbusLink::Rtu(line) => Some(
                        buses
                            .entry(line.port.path.clone())
                            .or_insert_with(|| {
                                let (bus, handle) = RtuBus::new(line.clone());
                                sources.spawn(bus.run(shutdown.clone()));
                                handle
                            })
                            .clone(),
                    ),
                };
                let last_raw = history.registers.remove(&plan.cfg.name);
                let gate = match &gate {
                    Some((name, _, _)) if *name == plan.cfg.name => {
                        gate.take().map(|(_, t, rx)| (t, rx))
                    }
                    _ => None,
                };
                let source = ModbusSource {
                    plan,
                    bus,
                    station,
                    last_raw,
                    metrics,
                    gate,
                };
                sources.spawn(source.run(stop));
            }
            SourcePlan::SerialLine(plan) => {
                let source = LineSource {
                    plan,
                    station,
                    metrics,
                };
                sources.spawn(source.run(stop));
            }
            SourcePlan::Scanner(plan) => {
                let source = ScannerSource {
                    plan,
                    station,
                    metrics,
                };
                sources.spawn(source.run(stop));
            }
            SourcePlan::OpenProtocol(plan) => {
                let source = OpSource {
                    plan,
                    station,
                    current_part: current_part.clone(),
                    recorded: history.tightenings.clone(),
                    metrics,
                };
                sources.spawn(source.run(stop));
            }
        }
    }
    sources.close();
    sources
}

async fn record_event(
    ledger: &LedgerHandle,
    event: StationEvent,
) -> Result<(), proofline_common::store::StoreError> {
    ledger
        .append(vec![Entry {
            received_at: now_micros(),
            body: Body::StationEvent(event),
        }])
        .await
        .map(|_| ())
}

/// Waits (briefly) for the hub to cosign the ledger up to `head`.
async fn await_cosigned(head: u64, mut cosigned: watch::Receiver<u64>) {
    if tokio::time::timeout(FORWARD_GRACE, cosigned.wait_for(|c| *c >= head))
        .await
        .is_err()
    {
        tracing::info!(
            head,
            cosigned = *cosigned.borrow(),
            "stopping before the hub cosigned everything; the rest goes at the next start"
        );
    }
}

/// What the ledger's tail says each source last recorded.
#[derive(Debug, Default)]
struct History {
    /// The raw registers of each Modbus source's last result.
    registers: HashMap<String, Vec<u16>>,
    /// The tightening ids recorded from each Open Protocol controller.
    tightenings: LastTightening,
}

fn last_results(reader: &Reader, size: u64) -> History {
    let mut h = History::default();
    let from = size.saturating_sub(LAST_RESULT_SEARCH);
    for item in reader.range(from..size) {
        let Ok((_, bytes)) = item else { continue };
        let Ok(rec) = Record::decode(&bytes) else {
            continue;
        };
        let Body::InspectionResult(r) = rec.body() else {
            continue;
        };
        match &r.raw {
            RawData::ModbusRegisters { registers, .. } => {
                h.registers.insert(r.source.clone(), registers.clone());
            }
            RawData::OpenProtocol(raw) => {
                crate::source::open_protocol::remember(
                    &mut h.tightenings,
                    &r.source,
                    raw.as_slice(),
                );
            }
            _ => {}
        }
    }
    h
}

/// `run --config FILE`: checks the configuration like `check-config`, then runs until SIGTERM or
/// SIGINT.
pub fn main_run(path: &std::path::Path) -> Result<(), crate::commands::ledger::Failure> {
    use crate::config::ConfigError;
    let cfg = AgentConfig::load(path)?;
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let plan =
        AgentPlan::build(&cfg, proofline_common::hash::sha256(&text)).map_err(|problems| {
            ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            }
        })?;
    proofline_common::process::run_until_signal(|shutdown| {
        run(plan, shutdown, RunOptions::default())
    })?;
    Ok(())
}
