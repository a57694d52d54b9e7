//! The access audit: every sign-in, sign-out, failure, lockout, page or API access, download,
//! denial and account change is appended to the hub's own ledger (hash-chained, checkpointed,
//! verified by `proofline-hub ledger verify`) as a `StationEvent::Access` record.
//!
//! Fail closed: an access is answered only once its record is durable. Records are grouped: one
//! task takes every record waiting (up to [`GROUP`]) and appends them in one durable commit, so
//! concurrent requests share an fsync. The queue is bounded ([`QUEUE`]); when it is full, or the
//! ledger cannot be written, the access is refused (503) and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use proofline_common::record::{now_micros, AccessEvent, Body, StationEvent};
use proofline_common::store::Entry;
use proofline_common::writer::LedgerHandle;
use tokio::sync::{mpsc, oneshot};

/// Records waiting at most.
pub const QUEUE: usize = 1024;
/// Records appended in one commit at most.
pub const GROUP: usize = 256;
/// Longest field kept (longer ones are cut, marked with `…`).
pub const MAX_FIELD: usize = 240;

#[derive(Debug, Default)]
pub struct AuditCounters {
    pub recorded: AtomicU64,
    /// Accesses refused because their record could not be written.
    pub refused: AtomicU64,
    /// Commits (groups) made.
    pub commits: AtomicU64,
}

type Job = (AccessEvent, oneshot::Sender<Result<(), String>>);

#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    pub counters: Arc<AuditCounters>,
}

/// Bounded, printable: control characters become `?`, long fields are cut.
pub fn field(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_FIELD)
        .collect();
    if s.chars().count() > MAX_FIELD {
        out.push('…');
    }
    out
}

impl AuditLog {
    /// Starts the task that appends to `ledger`; it ends when every [`AuditLog`] is dropped.
    pub fn spawn(ledger: LedgerHandle) -> AuditLog {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let counters = Arc::new(AuditCounters::default());
        let c = Arc::clone(&counters);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut jobs = vec![first];
                while jobs.len() < GROUP {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                let now = now_micros();
                let entries = jobs
                    .iter()
                    .map(|(e, _)| Entry {
                        received_at: now,
                        body: Body::StationEvent(StationEvent::Access(e.clone())),
                    })
                    .collect();
                let r = ledger
                    .append(entries)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                c.commits.fetch_add(1, Ordering::Relaxed);
                if r.is_ok() {
                    c.recorded.fetch_add(jobs.len() as u64, Ordering::Relaxed);
                } else {
                    tracing::error!(error = ?r, "the access audit cannot be written: accesses are refused");
                }
                for (_, reply) in jobs {
                    let _ = reply.send(r.clone());
                }
            }
        });
        AuditLog { tx, counters }
    }

    /// Records one access; Ok once it is durable.
    pub async fn record(
        &self,
        who: &str,
        role: Option<&str>,
        what: &str,
        from: &str,
        outcome: &str,
    ) -> Result<(), String> {
        let e = AccessEvent {
            who: field(who),
            role: role.map(field),
            what: field(what),
            from: field(from),
            outcome: field(outcome),
        };
        let (reply, rx) = oneshot::channel();
        let refused = |why: String| {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            Err(why)
        };
        if self.tx.try_send((e, reply)).is_err() {
            return refused("the access audit is behind or stopped".into());
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => refused(e),
            Err(_) => refused("the access audit stopped".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_bounded_and_printable() {
        assert_eq!(field("GET /x\r\nInjected: 1"), "GET /x??Injected: 1");
        let long = "é".repeat(300);
        let f = field(&long);
        assert_eq!(f.chars().count(), MAX_FIELD + 1);
        assert!(f.ends_with('…'));
    }
}
