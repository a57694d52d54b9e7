//! What `/healthz` and the systemd watchdog report (DESIGN §7): the hub is healthy only while
//! its embedded broker runs, its MQTT session is up, the witness thread makes progress and its
//! ledger can be written. Each component sets its signal; [`HealthSignals::check`] reads them.
//!
//! The watchdog is held to looser bounds than `/healthz`: it restarts the hub, which helps a
//! stalled witness or a dead broker at once but a broker outage elsewhere only after a while.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// `broker` values.
pub const BROKER_EXTERNAL: u64 = 0;
pub const BROKER_RUNNING: u64 = 1;
pub const BROKER_STOPPED: u64 = 2;

/// The signals, set by the components (all times UTC microseconds).
#[derive(Debug)]
pub struct HealthSignals {
    /// The embedded broker's state ([`BROKER_EXTERNAL`] when the hub uses another broker).
    pub broker: AtomicU64,
    /// 1 while the MQTT session is up, and since when it is in its current state.
    pub mqtt_up: AtomicU64,
    pub mqtt_since: AtomicI64,
    /// When the witness thread last finished a group (it gets a tick every second).
    pub witness_beat_at: AtomicI64,
    /// Why the hub ledger cannot be written, once it cannot.
    pub store_failed: Mutex<Option<String>>,
    /// Why the hub takes no new batches while its disk is below the free-space reserve.
    pub disk_low: Mutex<Option<String>>,
    /// Why the reconciler could not apply the last records (it retries with each batch).
    pub reconcile_failed: Mutex<Option<String>>,
}

/// How long each condition may last before it counts.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub mqtt_down_micros: i64,
    pub witness_stall_micros: i64,
    /// Whether a disk below the free-space reserve, or a reconciler that cannot apply records,
    /// counts: for `/healthz` (someone must act), not for the watchdog (a restart fixes
    /// neither).
    pub disk_low: bool,
}

/// For `/healthz`: a reconnect or a slow group is not yet a fault.
pub const HEALTHZ: Bounds = Bounds {
    mqtt_down_micros: 10_000_000,
    witness_stall_micros: 10_000_000,
    disk_low: true,
};
/// For the watchdog: a restart must be worth it.
pub const WATCHDOG: Bounds = Bounds {
    mqtt_down_micros: 120_000_000,
    witness_stall_micros: 30_000_000,
    disk_low: false,
};

impl Default for HealthSignals {
    /// Healthy as of now, with no embedded broker to watch.
    fn default() -> Self {
        let h = HealthSignals::new(BROKER_EXTERNAL, proofline_common::record::now_micros());
        h.mqtt_up.store(1, Ordering::Relaxed);
        h
    }
}

impl HealthSignals {
    /// Signals of a hub started at `now`.
    pub fn new(broker: u64, now: i64) -> Self {
        HealthSignals {
            broker: AtomicU64::new(broker),
            mqtt_up: AtomicU64::new(0),
            mqtt_since: AtomicI64::new(now),
            witness_beat_at: AtomicI64::new(now),
            store_failed: Mutex::new(None),
            disk_low: Mutex::new(None),
            reconcile_failed: Mutex::new(None),
        }
    }

    pub fn set_mqtt(&self, up: bool, now: i64) {
        if self.mqtt_up.swap(u64::from(up), Ordering::Relaxed) != u64::from(up) {
            self.mqtt_since.store(now, Ordering::Relaxed);
        }
    }

    /// Every problem at `now` within `bounds`; empty when healthy.
    pub fn check(&self, now: i64, bounds: Bounds) -> Vec<String> {
        let mut out = Vec::new();
        if self.broker.load(Ordering::Relaxed) == BROKER_STOPPED {
            out.push("the embedded MQTT broker has stopped".to_owned());
        }
        let since = self.mqtt_since.load(Ordering::Relaxed);
        if self.mqtt_up.load(Ordering::Relaxed) == 0 && now - since > bounds.mqtt_down_micros {
            out.push(format!(
                "no MQTT session for {} s",
                (now - since) / 1_000_000
            ));
        }
        let beat = self.witness_beat_at.load(Ordering::Relaxed);
        if now - beat > bounds.witness_stall_micros {
            out.push(format!(
                "the witness has made no progress for {} s",
                (now - beat) / 1_000_000
            ));
        }
        if let Some(e) = self
            .store_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            out.push(format!("the hub ledger cannot be written: {e}"));
        }
        if bounds.disk_low {
            if let Some(why) = self
                .disk_low
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
            {
                out.push(why.clone());
            }
            // A restart would not fix it either: someone must look.
            if let Some(e) = self
                .reconcile_failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
            {
                out.push(format!(
                    "the reconciler cannot apply the witnessed records: {e}"
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_signal_counts_only_past_its_bound() {
        let h = HealthSignals::new(BROKER_RUNNING, 0);
        h.set_mqtt(true, 0);
        assert!(h.check(5_000_000, HEALTHZ).is_empty());
        h.set_mqtt(false, 5_000_000);
        assert!(h
            .check(14_000_000, HEALTHZ)
            .iter()
            .all(|p| !p.contains("MQTT")));
        h.witness_beat_at.store(14_000_000, Ordering::Relaxed);
        let p = h.check(16_000_000, HEALTHZ);
        assert_eq!(p, vec!["no MQTT session for 11 s".to_owned()]);
        assert!(h.check(16_000_000, WATCHDOG).is_empty());
        h.broker.store(BROKER_STOPPED, Ordering::Relaxed);
        *h.store_failed.lock().unwrap() = Some("disk full".into());
        let p = h.check(60_000_000, WATCHDOG);
        assert_eq!(p.len(), 3, "{p:?}");
        *h.disk_low.lock().unwrap() = Some("only 3 MiB free".into());
        assert_eq!(
            h.check(60_000_000, WATCHDOG).len(),
            3,
            "a restart frees no disk"
        );
        let p = h.check(60_000_000, HEALTHZ);
        assert!(p.iter().any(|p| p == "only 3 MiB free"), "{p:?}");
    }
}
