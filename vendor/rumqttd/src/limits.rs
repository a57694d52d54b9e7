//! Bounds that keep one misbehaving peer from exhausting the broker: connection counts per
//! listener and per source address, a backoff for failing `accept()` calls, and a rate limit
//! for log lines that a peer can trigger at will.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lets a log line through at most once per `interval`, counting the ones it held back.
///
/// Meant for `static`s at the call sites of log lines a remote peer can provoke (a refused
/// connection, a malformed packet): the first one is logged, the rest of a flood is summed up.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimiter {
    pub(crate) const fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed)` when a line may be logged now (with the number held back since the
    /// last one), `None` when it should be dropped.
    pub(crate) fn check(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.interval => {
                state.1 += 1;
                None
            }
            _ => {
                let suppressed = state.1;
                *state = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

/// Delay before the next `accept()` after a failure: starts at `min`, doubles up to `max`,
/// and starts over after a success. Without it a listener out of file descriptors (EMFILE)
/// retries in a tight loop, the pending connection still there, at full CPU.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay to wait after one more failure.
    pub(crate) fn failed(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub(crate) fn succeeded(&mut self) {
        self.next = self.min;
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The listener has `max_connections` open connections.
    Total(usize),
    /// The source address has `max_connections_per_ip` open connections.
    PerAddress(usize),
}

/// Open connections of one listener, in total and per source address. A connection counts
/// from `accept()` until its [`Admission`] is dropped, so connections that are still in the
/// TLS handshake or have not sent CONNECT count too.
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    max_total: Option<usize>,
    max_per_ip: Option<usize>,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl ConnectionLimits {
    pub(crate) fn new(max_total: Option<usize>, max_per_ip: Option<usize>) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            max_total,
            max_per_ip,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// Counts a new connection from `ip`, or says which limit it would exceed.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(max) = self.max_total {
            if open.0 >= max {
                return Err(Refusal::Total(max));
            }
        }
        let from_ip = open.1.get(&ip).copied().unwrap_or(0);
        if let Some(max) = self.max_per_ip {
            if from_ip >= max {
                return Err(Refusal::PerAddress(max));
            }
        }
        open.0 += 1;
        open.1.insert(ip, from_ip + 1);
        Ok(Admission {
            limits: Arc::clone(self),
            ip,
        })
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_maximum_and_starts_over_after_a_success() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        let delays: Vec<_> = (0..9).map(|_| b.failed().as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(10));
    }

    #[test]
    fn log_limiter_lets_one_line_through_per_interval_and_counts_the_rest() {
        let l = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(l.check(), Some(0));
        for _ in 0..1000 {
            assert_eq!(l.check(), None);
        }
        let l = LogLimiter::new(Duration::ZERO);
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), Some(0));
    }

    #[test]
    fn connections_are_counted_per_address_until_dropped() {
        let limits = ConnectionLimits::new(Some(3), Some(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), Refusal::PerAddress(2));
        let _b1 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), Refusal::Total(3));
        drop(a1);
        let _a3 = limits.admit(a).unwrap();
        assert_eq!(limits.open.lock().unwrap().0, 3);
    }
}
