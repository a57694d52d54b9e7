//! The ledger's disk: pruning, the disk budget and the free-space reserve.
//!
//! Records are pruned only when the hub has cosigned them (they are below the last cosigned
//! size) and they are older than `retention_days`. The ledger's size on disk is checked against
//! `disk_budget_mb`: crossing `warn_percent` records a warning alarm; reaching the budget records
//! an alarm and makes the station stop taking new input, so devices are not acknowledged (a bench
//! handshake stalls where the technician sees it) instead of anything being dropped. Forwarding
//! and pruning go on, and the station resumes by itself once there is room again.
//!
//! The disk is shared with other programs, so the budget alone does not keep it from filling:
//! the free space of the data directory's file system (`statvfs`) is checked against
//! `min_free_mib` too. Below it the station stops taking input the same way, records a
//! `storage.reserve_breached` alarm and reports itself degraded ([`Health`]), rather than
//! writing until a commit fails and the ledger writer refuses everything.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use proofline_common::alarm::AlarmCode;
use proofline_common::config::Problems;
use proofline_common::record::{now_micros, Alarm, Body, Severity, StationEvent};
use proofline_common::store::{free_bytes, Entry, LEDGER_DIR};
use proofline_common::writer::LedgerHandle;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::station::health::Health;
use crate::station::Metrics;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// Cosigned records are kept at least this long.
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
    /// Most disk the ledger may take.
    #[serde(default = "default_disk_budget_mb")]
    pub disk_budget_mb: u64,
    /// Warn when the ledger takes this share of the budget.
    #[serde(default = "default_warn_percent")]
    pub warn_percent: u64,
    #[serde(default = "default_check_interval_secs")]
    pub check_interval_secs: u64,
    /// Free space the ledger's file system must keep; below it no new input is taken.
    #[serde(default = "default_min_free_mib")]
    pub min_free_mib: u64,
}

fn default_retention_days() -> u64 {
    90
}
fn default_disk_budget_mb() -> u64 {
    4096
}
fn default_warn_percent() -> u64 {
    80
}
fn default_check_interval_secs() -> u64 {
    30
}
fn default_min_free_mib() -> u64 {
    64
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            retention_days: default_retention_days(),
            disk_budget_mb: default_disk_budget_mb(),
            warn_percent: default_warn_percent(),
            check_interval_secs: default_check_interval_secs(),
            min_free_mib: default_min_free_mib(),
        }
    }
}

impl StorageSection {
    pub fn check(&self, p: &mut Problems) {
        if self.disk_budget_mb == 0 {
            p.add("storage.disk_budget_mb", "must be at least 1");
        }
        if !(1..=99).contains(&self.warn_percent) {
            p.add("storage.warn_percent", "must be 1 to 99");
        }
        if !(1..=3600).contains(&self.check_interval_secs) {
            p.add("storage.check_interval_secs", "must be 1 to 3600");
        }
        if !(1..=MAX_MIN_FREE_MIB).contains(&self.min_free_mib) {
            p.add(
                "storage.min_free_mib",
                format!("must be 1 to {MAX_MIN_FREE_MIB}"),
            );
        }
    }
}

/// Largest `min_free_mib` (1 EiB): more is a typo.
const MAX_MIN_FREE_MIB: u64 = 1 << 40;

/// Bytes taken by the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Normal,
    Warning,
    Exhausted,
}

/// The disk watch: prunes cosigned records past retention and enforces the disk budget.
#[derive(Debug)]
pub struct StorageWatch {
    pub plan: StorageSection,
    pub ledger: LedgerHandle,
    pub data_dir: PathBuf,
    pub metrics: Arc<Metrics>,
    /// Set to true while the budget is exhausted or the free-space reserve breached (the station
    /// then takes no input).
    pub full: watch::Sender<bool>,
    /// Told while the free-space reserve is breached.
    pub health: Arc<Health>,
}

impl StorageWatch {
    /// Watches the ledger's disk until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let StorageWatch {
            plan,
            ledger,
            data_dir,
            metrics,
            full,
            health,
        } = self;
        watch_disk(plan, ledger, data_dir, metrics, full, health, shutdown).await
    }
}

/// Appends a storage alarm straight to the ledger: the station is not taking input while the
/// budget is exhausted or the reserve breached.
async fn record_storage_event(ledger: &LedgerHandle, event: StationEvent) {
    if let Err(e) = ledger
        .append(vec![Entry {
            received_at: now_micros(),
            body: Body::StationEvent(event),
        }])
        .await
    {
        tracing::error!(error = %e, "could not record a storage alarm");
    }
}

/// Checks the free space against the reserve; returns whether it is breached now, having
/// recorded, logged and reported a change.
async fn check_reserve(
    cfg: &StorageSection,
    ledger: &LedgerHandle,
    data_dir: &Path,
    metrics: &Metrics,
    health: &Health,
    breached: bool,
) -> bool {
    let d = data_dir.to_owned();
    let free = match tokio::task::spawn_blocking(move || free_bytes(&d)).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, dir = %data_dir.display(), "cannot read the free space of the ledger's disk");
            return breached;
        }
        Err(_) => return breached,
    };
    metrics.storage_free_bytes.store(free, Ordering::Relaxed);
    let reserve = cfg.min_free_mib.saturating_mul(1024 * 1024);
    let now = free < reserve;
    if now == breached {
        return now;
    }
    let free_mib = free / (1024 * 1024);
    let event = if now {
        let why = format!(
            "only {free_mib} MiB free on the ledger's disk, below the reserve of {} MiB (storage.min_free_mib): no new results are taken",
            cfg.min_free_mib
        );
        tracing::error!(
            free_mib,
            min_free_mib = cfg.min_free_mib,
            "free-space reserve breached: not acknowledging devices"
        );
        health.set_reserve_breached(Some(why.clone()));
        StationEvent::Alarm(Alarm {
            source: "storage".into(),
            code: AlarmCode::StorageReserveBreached.as_str().into(),
            severity: Severity::Error,
            message: format!("{why}; free disk space (old files, other programs' data) to resume"),
        })
    } else {
        tracing::warn!(
            free_mib,
            min_free_mib = cfg.min_free_mib,
            "free space back above the reserve"
        );
        health.set_reserve_breached(None);
        StationEvent::AlarmCleared {
            source: "storage".into(),
            code: AlarmCode::StorageReserveBreached.as_str().into(),
        }
    };
    record_storage_event(ledger, event).await;
    now
}

async fn watch_disk(
    cfg: StorageSection,
    ledger: LedgerHandle,
    data_dir: PathBuf,
    metrics: Arc<Metrics>,
    full: watch::Sender<bool>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let budget = cfg.disk_budget_mb * 1024 * 1024;
    let retention = Duration::from_secs(cfg.retention_days * 86_400);
    let dir = data_dir.join(LEDGER_DIR);
    let mut level = Level::Normal;
    let mut breached = false;
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.check_interval_secs));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let before = now_micros() - retention.as_micros() as i64;
        match ledger.prune(before, 1024).await {
            Ok(p) if p.records > 0 => {
                tracing::info!(
                    records = p.records,
                    floor = p.floor,
                    "pruned cosigned records past retention"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "pruning failed"),
        }
        breached = check_reserve(&cfg, &ledger, &data_dir, &metrics, &health, breached).await;
        let d = dir.clone();
        let used = tokio::task::spawn_blocking(move || dir_bytes(&d))
            .await
            .unwrap_or(0);
        metrics.storage_bytes.store(used, Ordering::Relaxed);
        let now = if used >= budget {
            Level::Exhausted
        } else if used * 100 >= budget * cfg.warn_percent {
            Level::Warning
        } else {
            Level::Normal
        };
        if now == level {
            set_full(&metrics, &full, level == Level::Exhausted || breached);
            continue;
        }
        let mb = used / (1024 * 1024);
        let event = match now {
            Level::Exhausted => StationEvent::Alarm(Alarm {
                source: "storage".into(),
                code: AlarmCode::StorageBudgetExhausted.as_str().into(),
                severity: Severity::Error,
                message: format!(
                    "the ledger takes {mb} MiB of its {} MiB budget: devices are not acknowledged until the hub has cosigned and old records are pruned",
                    cfg.disk_budget_mb
                ),
            }),
            Level::Warning if level < Level::Warning => StationEvent::Alarm(Alarm {
                source: "storage".into(),
                code: AlarmCode::StorageBudgetWarning.as_str().into(),
                severity: Severity::Warning,
                message: format!(
                    "the ledger takes {mb} MiB, over {} % of its {} MiB budget (is the hub reachable?)",
                    cfg.warn_percent, cfg.disk_budget_mb
                ),
            }),
            _ => StationEvent::AlarmCleared {
                source: "storage".into(),
                code: if level == Level::Exhausted {
                    AlarmCode::StorageBudgetExhausted.as_str().into()
                } else {
                    AlarmCode::StorageBudgetWarning.as_str().into()
                },
            },
        };
        if now == Level::Exhausted {
            tracing::error!(
                used_mib = mb,
                budget_mib = cfg.disk_budget_mb,
                "disk budget exhausted: not acknowledging devices"
            );
        } else {
            tracing::warn!(
                used_mib = mb,
                budget_mib = cfg.disk_budget_mb,
                "disk budget level changed"
            );
        }
        record_storage_event(&ledger, event).await;
        level = now;
        set_full(&metrics, &full, level == Level::Exhausted || breached);
    }
}

/// Whether the station takes input: not while the budget is exhausted or the reserve breached.
fn set_full(metrics: &Metrics, full: &watch::Sender<bool>, is_full: bool) {
    metrics
        .storage_full
        .store(u64::from(is_full), Ordering::Relaxed);
    full.send_if_modified(|f| std::mem::replace(f, is_full) != is_full);
}
