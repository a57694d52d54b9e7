//! The access audit: every sign-in, sign-out, failure, lockout, page or API access, download,
//! denial and account change is appended to the hub's own ledger (hash-chained, checkpointed,
//! verified by `proofline-hub ledger verify`) as a `StationEvent::Access` record.
//!
//! Fail closed: an access is answered only once its record is durable. Records are grouped: one
//! task takes every record waiting (up to [`GROUP`]) and appends them in one durable commit, so
//! concurrent requests share an fsync. The queue is bounded ([`QUEUE`]); when it is full, or the
//! ledger cannot be written, the access is refused (503) and counted.
//!
//! Anonymous denials (nobody signed in: `who` is `-`) cost an attacker nothing, so each address
//! gets [`ANON_BURST`] of them recorded one by one, refilled at [`ANON_PER_SEC`] a second; past
//! that they are still refused, and counted, and every [`SUMMARY_EVERY`] one record per address
//! says how many were not recorded singly. The ledger cannot be flooded from outside.

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
/// Anonymous denials recorded one by one per address, at most at once ...
pub const ANON_BURST: f64 = 30.0;
/// ... and a second after that.
pub const ANON_PER_SEC: f64 = 5.0;
/// How often the counts of anonymous denials not recorded singly are recorded.
pub const SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// Addresses tracked at once (more: the quietest are forgotten, their counts recorded first).
const ANON_ADDRESSES: usize = 4096;

/// Per address: tokens, when last refilled, denials not recorded singly.
type Bucket = (f64, std::time::Instant, u64);

#[derive(Debug, Default)]
pub struct AuditCounters {
    pub recorded: AtomicU64,
    /// Accesses refused because their record could not be written.
    pub refused: AtomicU64,
    /// Commits (groups) made.
    pub commits: AtomicU64,
    /// Anonymous denials over the per-address rate, recorded only in the periodic summary.
    pub summarized: AtomicU64,
}

type Job = (AccessEvent, oneshot::Sender<Result<(), String>>);

#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    pub counters: Arc<AuditCounters>,
    anonymous: Arc<std::sync::Mutex<std::collections::HashMap<String, Bucket>>>,
}

/// The summary records of the anonymous denials not recorded singly (and the counts cleared).
fn summaries(
    anonymous: &std::sync::Mutex<std::collections::HashMap<String, Bucket>>,
) -> Vec<AccessEvent> {
    let mut m = anonymous.lock().unwrap_or_else(|p| p.into_inner());
    let now = std::time::Instant::now();
    let mut out = Vec::new();
    m.retain(|from, (tokens, last, n)| {
        if *n > 0 {
            out.push(AccessEvent {
                who: "-".into(),
                role: None,
                what: "anonymous requests over the rate of single records".into(),
                from: from.clone(),
                outcome: format!("denied: {n} more, not recorded one by one"),
            });
            *n = 0;
        }
        // Forget addresses whose bucket is full again.
        *tokens + now.duration_since(*last).as_secs_f64() * ANON_PER_SEC < ANON_BURST
    });
    out
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
        let anonymous = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let anon = Arc::clone(&anonymous);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SUMMARY_EVERY);
            loop {
                let first = tokio::select! {
                    j = rx.recv() => match j {
                        Some(j) => j,
                        None => break,
                    },
                    _ = tick.tick() => {
                        let events = summaries(&anon);
                        if !events.is_empty() {
                            let now = now_micros();
                            let entries = events.into_iter().map(|e| Entry {
                                received_at: now,
                                body: Body::StationEvent(StationEvent::Access(e)),
                            }).collect();
                            if let Err(e) = ledger.append(entries).await {
                                tracing::error!(error = %e, "the summary of anonymous denials could not be recorded");
                            }
                        }
                        continue;
                    }
                };
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
        AuditLog {
            tx,
            counters,
            anonymous,
        }
    }

    /// Whether an anonymous denial from `from` is recorded singly now (else it is counted for
    /// the next summary).
    fn anonymous_singly(&self, from: &str) -> bool {
        let mut m = self.anonymous.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if m.len() >= ANON_ADDRESSES && !m.contains_key(from) {
            // Full: the address with the fewest pending counts makes room (its count is lost
            // only from the summary, never an access granted).
            if let Some(k) = m.iter().min_by_key(|(_, b)| b.2).map(|(k, _)| k.clone()) {
                m.remove(&k);
            }
        }
        let b = m.entry(field(from)).or_insert((ANON_BURST, now, 0));
        b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * ANON_PER_SEC).min(ANON_BURST);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            b.2 += 1;
            self.counters.summarized.fetch_add(1, Ordering::Relaxed);
            false
        }
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
        if who == "-" && !self.anonymous_singly(from) {
            return Ok(());
        }
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
