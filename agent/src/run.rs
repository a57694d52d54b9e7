//! `proofline-agent run`: sources → station → ledger, with `/metrics` and `/healthz`, systemd
//! readiness and watchdog, and an orderly stop.
//!
//! Start: check the key against the station's origin, open (verify, repair) the ledger, start
//! the writer, record `Started` (version and configuration hash), start the station task, the
//! sources and the HTTP endpoint, then tell systemd READY.
//! Stop (SIGTERM/SIGINT → the shutdown token): sources stop polling (a device is never
//! acknowledged for a record that is not durable), the station drains what it was handed,
//! `Stopped` is recorded, and the ledger writer is joined last.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use proofline_common::hash::Hash;
use proofline_common::record::{now_micros, Body, RawData, Record, StationEvent};
use proofline_common::store::{Access, Entry, Reader, Store, StoreOptions};
use proofline_common::writer::{spawn_writer, WriterConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::binder::BinderConfig;
use crate::config::{AgentConfig, Source};
use crate::modbus::ModbusPlan;
use crate::station::{Input, Metrics};

/// How far back the ledger is searched for each source's last recorded result.
const LAST_RESULT_SEARCH: u64 = 100_000;
/// Time allowed for an orderly stop (below systemd's default stop timeout of 90 s).
const STOP_GRACE: Duration = Duration::from_secs(20);
/// How long a stopping agent waits for the hub to cosign its last records.
const FORWARD_GRACE: Duration = Duration::from_secs(3);

/// Where the running agent can be reached (tests start it on port 0).
#[derive(Debug, Clone)]
pub struct Running {
    pub http: SocketAddr,
    /// The size the hub last cosigned (stays 0 without a `[hub]`).
    pub cosigned: tokio::sync::watch::Receiver<u64>,
}

/// Options of an in-process run (tests, drills).
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Receives the bound HTTP address once everything is started.
    pub ready: Option<tokio::sync::oneshot::Sender<Running>>,
    /// While set, ledger commits fail (fault injection; see `WriterConfig::fail_commits`).
    pub commit_fault: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(
    cfg: AgentConfig,
    config_sha256: Hash,
    shutdown: CancellationToken,
    opts: RunOptions,
) -> anyhow::Result<()> {
    let origin = cfg.origin().map_err(anyhow::Error::msg)?;
    let (signer, key_origin) = crate::keyfile::load(&cfg.station.key_file)?;
    if key_origin != origin {
        bail!(
            "key {} signs for {key_origin}, this station is {origin}",
            cfg.station.key_file.display()
        );
    }
    let mut plans = Vec::new();
    let mut scanners = Vec::new();
    let mut lines = Vec::new();
    let mut controllers = Vec::new();
    let mut rtu = Vec::new();
    for (i, s) in cfg.sources.iter().enumerate() {
        match s {
            Source::ModbusTcp(m) => plans.push(
                ModbusPlan::new(m).map_err(|e| anyhow::anyhow!("source[{i}] ({}): {e}", m.name))?,
            ),
            Source::Scanner(sc) => scanners.push(sc.clone()),
            Source::OpenProtocol(o) => controllers.push(o.clone()),
            Source::SerialLine(l) => lines.push(
                crate::serial_line::LinePlan::new(l)
                    .map_err(|e| anyhow::anyhow!("source[{i}] ({}): {e}", l.name))?,
            ),
            Source::ModbusRtu(m) => rtu.push(
                ModbusPlan::new(m).map_err(|e| anyhow::anyhow!("source[{i}] ({}): {e}", m.name))?,
            ),
        }
    }
    let listen: SocketAddr = cfg.http.listen.parse().context("http.listen")?;

    let (store, report) = Store::open(
        &cfg.station.data_dir,
        Access::Write(origin.clone()),
        &StoreOptions::default(),
    )
    .with_context(|| format!("opening the ledger in {}", cfg.station.data_dir.display()))?;
    tracing::info!(ledger = %origin, size = report.head.size, boot = report.boot, repaired = report.repaired, "ledger open");
    let (last_raw, last_tightening) = last_results(&store.reader(), report.head.size);
    let cosigned = store.cosigned().cloned();
    let (ledger, writer) = spawn_writer(
        store,
        WriterConfig {
            fail_commits: opts.commit_fault,
            ..WriterConfig::default()
        },
    )?;
    ledger
        .append(vec![Entry {
            received_at: now_micros(),
            body: Body::StationEvent(StationEvent::Started {
                version: env!("CARGO_PKG_VERSION").into(),
                config_sha256,
            }),
        }])
        .await
        .context("recording the start")?;

    let metrics = Arc::new(Metrics::default());
    metrics
        .ledger_size
        .store(ledger.head().size, std::sync::atomic::Ordering::Relaxed);
    let (tx, rx) = mpsc::channel::<Input>(1024);
    let (current_part, current_part_rx) = tokio::sync::watch::channel(None);
    let (storage_full_tx, storage_full) = tokio::sync::watch::channel(false);
    let storage = tokio::spawn(crate::storage::run(
        cfg.storage.clone(),
        ledger.clone(),
        cfg.station.data_dir.clone(),
        Arc::clone(&metrics),
        storage_full_tx,
        shutdown.clone(),
    ));
    let station = tokio::spawn(crate::station::run(
        ledger.clone(),
        rx,
        BinderConfig {
            scan_valid_micros: (cfg.binder.scan_valid_secs > 0)
                .then(|| cfg.binder.scan_valid_secs as i64 * 1_000_000),
            one_result_per_scan: cfg.binder.one_result_per_scan,
        },
        Arc::clone(&metrics),
        current_part,
        storage_full,
        shutdown.clone(),
    ));
    let sources = TaskTracker::new();
    for plan in plans {
        let last = last_raw.get(&plan.cfg.name).cloned();
        sources.spawn(crate::modbus::run_source(
            plan,
            None,
            tx.clone(),
            last,
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
    }
    // One bus task per RTU port; the units on it share it.
    let buses = TaskTracker::new();
    let mut rtu_buses: HashMap<std::path::PathBuf, crate::modbus::BusHandle> = HashMap::new();
    for plan in rtu {
        let port = plan
            .cfg
            .port
            .clone()
            .expect("checked: RTU sources have a port");
        let bus = rtu_buses
            .entry(port.clone())
            .or_insert_with(|| {
                crate::modbus::spawn_bus(
                    crate::modbus::RtuLine {
                        port,
                        baud: plan.cfg.baud,
                        frame: plan.cfg.frame.clone(),
                        pause: Duration::from_millis(plan.cfg.inter_request_pause_ms),
                    },
                    &buses,
                    shutdown.clone(),
                )
            })
            .clone();
        let last = last_raw.get(&plan.cfg.name).cloned();
        sources.spawn(crate::modbus::run_source(
            plan,
            Some(bus),
            tx.clone(),
            last,
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
    }
    buses.close();
    for l in lines {
        sources.spawn(crate::serial_line::run(
            l,
            tx.clone(),
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
    }
    for o in controllers {
        sources.spawn(crate::op_source::run(
            o,
            tx.clone(),
            current_part_rx.clone(),
            last_tightening.clone(),
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
    }
    for sc in scanners {
        sources.spawn(crate::scanner::run(
            sc,
            tx.clone(),
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
    }
    sources.close();

    // The forwarder outlives the sources on a stop: it forwards the last records, `Stopped`
    // included, for a moment before it is stopped itself.
    let forward_stop = CancellationToken::new();
    let (cosigned_tx, cosigned_rx) =
        tokio::sync::watch::channel(cosigned.as_ref().map_or(0, |c| c.size));
    let forwarder = match &cfg.hub {
        Some(h) => {
            let plan = crate::forward::ForwardPlan::new(
                h,
                signer,
                &cfg.station.site,
                &cfg.station.agent_id,
            )
            .context("hub")?;
            Some(tokio::spawn(crate::forward::run(
                plan,
                ledger.clone(),
                cosigned,
                Arc::clone(&metrics),
                cosigned_tx,
                forward_stop.clone(),
            )))
        }
        None => {
            tracing::warn!("no [hub] configured: records are kept in the local ledger only");
            drop((signer, cosigned, cosigned_tx));
            None
        }
    };

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding http.listen {listen}"))?;
    let http_addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/metrics",
            axum::routing::get({
                let m = Arc::clone(&metrics);
                move || {
                    let m = Arc::clone(&m);
                    async move {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "text/plain; version=0.0.4",
                            )],
                            m.render(),
                        )
                    }
                }
            }),
        );
    let http = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        }
    });

    crate::systemd::notify("READY=1");
    let watchdog = crate::systemd::spawn_watchdog(shutdown.clone());
    tracing::info!(%origin, http = %http_addr, sources = cfg.sources.len(), "running");
    if let Some(r) = opts.ready {
        let _ = r.send(Running {
            http: http_addr,
            cosigned: cosigned_rx.clone(),
        });
    }

    shutdown.cancelled().await;
    crate::systemd::notify("STOPPING=1");
    tracing::info!("stopping");
    let stop = async {
        sources.wait().await;
        buses.wait().await;
        drop(tx);
        let _ = station.await;
        let _ = storage.await;
        let stopped = ledger
            .append(vec![Entry {
                received_at: now_micros(),
                body: Body::StationEvent(StationEvent::Stopped {
                    reason: "signal".into(),
                }),
            }])
            .await;
        if let Err(e) = stopped {
            tracing::error!(error = %e, "could not record the stop");
        }
        if let Some(f) = forwarder {
            let head = ledger.head().size;
            let mut cosigned = cosigned_rx;
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
            forward_stop.cancel();
            let _ = f.await;
        }
        drop(ledger);
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        let _ = http.await;
    };
    if tokio::time::timeout(STOP_GRACE, stop).await.is_err() {
        tracing::error!(
            "stop took longer than {} s; exiting anyway (records already durable are kept)",
            STOP_GRACE.as_secs()
        );
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    Ok(())
}

/// From the ledger's tail: the raw registers of each Modbus source's last result, and the
/// tightening ids recorded from each Open Protocol controller.
fn last_results(
    reader: &Reader,
    size: u64,
) -> (HashMap<String, Vec<u16>>, crate::op_source::LastTightening) {
    let mut registers = HashMap::new();
    let mut tightenings = HashMap::new();
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
            RawData::ModbusRegisters {
                registers: regs, ..
            } => {
                registers.insert(r.source.clone(), regs.clone());
            }
            RawData::OpenProtocol(raw) => {
                let mut fr = proofline_common::open_protocol::FrameReader::new();
                fr.push(raw.as_slice());
                fr.push(&[0]);
                if let Some(Ok(frame)) = fr.next_frame() {
                    if let Ok(t) = proofline_common::open_protocol::Tightening::decode(&frame) {
                        tightenings
                            .entry((r.source.clone(), t.controller))
                            .or_insert_with(crate::op_source::Recorded::default)
                            .insert(t.tightening_id);
                    }
                }
            }
            _ => {}
        }
    }
    (registers, tightenings)
}

/// `run --config FILE`: checks the configuration like `check-config`, then runs until SIGTERM or
/// SIGINT.
pub fn main_run(path: &std::path::Path) -> Result<(), crate::ledger_cmds::Failure> {
    use crate::config::ConfigError;
    let cfg = AgentConfig::load(path)?;
    let problems = cfg.environment_problems();
    if !problems.is_empty() {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        }
        .into());
    }
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let hash = proofline_common::hash::sha256(&text);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = proofline_common::process::cancel_on_signals(shutdown.clone());
        let r = run(cfg, hash, shutdown, RunOptions::default()).await;
        signals.abort();
        r
    })?;
    Ok(())
}
