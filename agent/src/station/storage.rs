//! The ledger's disk: pruning and the disk budget.
//!
//! Records are pruned only when the hub has cosigned them (they are below the last cosigned
//! size) and they are older than `retention_days`. The ledger's size on disk is checked against
//! `disk_budget_mb`: crossing `warn_percent` records a warning alarm; reaching the budget records
//! an alarm and makes the station stop taking new input, so devices are not acknowledged (a bench
//! handshake stalls where the technician sees it) instead of anything being dropped. Forwarding
//! and pruning go on, and the station resumes by itself once there is room again.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use proofline_common::alarm::AlarmCode;
use proofline_common::config::Problems;
use proofline_common::record::{now_micros, Alarm, Body, Severity, StationEvent};
use proofline_common::store::{Entry, LEDGER_DIR};
use proofline_common::writer::LedgerHandle;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            retention_days: default_retention_days(),
            disk_budget_mb: default_disk_budget_mb(),
            warn_percent: default_warn_percent(),
            check_interval_secs: default_check_interval_secs(),
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
    }
}

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
    /// Set to true while the budget is exhausted (the station then takes no input).
    pub full: watch::Sender<bool>,
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
        } = self;
        watch_disk(plan, ledger, data_dir, metrics, full, shutdown).await
    }
}

async fn watch_disk(
    cfg: StorageSection,
    ledger: LedgerHandle,
    data_dir: PathBuf,
    metrics: Arc<Metrics>,
    full: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let budget = cfg.disk_budget_mb * 1024 * 1024;
    let retention = Duration::from_secs(cfg.retention_days * 86_400);
    let dir = data_dir.join(LEDGER_DIR);
    let mut level = Level::Normal;
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
        // Straight to the ledger: the station is not taking input while the budget is exhausted.
        if let Err(e) = ledger
            .append(vec![Entry {
                received_at: now_micros(),
                body: Body::StationEvent(event),
            }])
            .await
        {
            tracing::error!(error = %e, "could not record a storage alarm");
        }
        level = now;
        metrics
            .storage_full
            .store(u64::from(level == Level::Exhausted), Ordering::Relaxed);
        full.send_replace(level == Level::Exhausted);
    }
}
