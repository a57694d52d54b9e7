//! The station's health: what `/healthz` answers, and what the forwarder may put in its signed
//! heartbeat so the hub sees a degraded station too.
//!
//! The run wiring owns one [`Health`] (an `Arc`) and hands it to the components that report
//! or read it. Two conditions make a station degraded:
//!
//! - the ledger writer is poisoned (a commit failed: disk full, an fsync error). Nothing can be
//!   recorded any more; the agent then stops with an error so the service manager restarts it
//!   and re-verifies the ledger. Records already durable stay on disk;
//! - the free space of the ledger's disk is below `storage.min_free_mib`. The station takes no
//!   new input (devices are not acknowledged) until there is room again; it keeps running.
//!
//! [`Health::degraded`] names the first of them that holds, as one line of text; `None` means
//! healthy.

use std::sync::Mutex;

use proofline_common::writer::LedgerHandle;
use tokio::sync::watch;

/// Shared health of a running station (see the module docs).
#[derive(Debug)]
pub struct Health {
    /// Why the ledger writer refuses appends, once it does.
    ledger: watch::Receiver<Option<String>>,
    /// Why the station takes no input for lack of free disk space, while it does.
    reserve: Mutex<Option<String>>,
}

impl Health {
    /// Health of a station writing through `ledger`.
    pub fn new(ledger: &LedgerHandle) -> Health {
        Health {
            ledger: ledger.watch_poisoned(),
            reserve: Mutex::new(None),
        }
    }

    /// Why the station is not healthy, or `None`. Meant for `/healthz` and for the forwarder's
    /// heartbeat (bounded: one line, at most a few hundred bytes).
    pub fn degraded(&self) -> Option<String> {
        if let Some(e) = self.ledger_failed() {
            return Some(format!("ledger cannot be written: {e}"));
        }
        self.reserve
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Why the ledger writer refuses appends, once a commit failed (it never recovers without a
    /// restart).
    pub fn ledger_failed(&self) -> Option<String> {
        let e = self.ledger.borrow().clone()?;
        Some(e.chars().take(300).collect())
    }

    /// Set by the disk watch while free space is below the reserve, cleared when it is back.
    pub fn set_reserve_breached(&self, why: Option<String>) {
        *self.reserve.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }
}
