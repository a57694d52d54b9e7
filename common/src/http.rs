//! The one server loop of every HTTP endpoint (the hub's API, the agent's `/metrics` and
//! `/healthz`), bounded against slow and idle clients (DESIGN §7: no input from the network may
//! wedge or starve a program).
//!
//! `axum::serve` reads request headers without a deadline and takes every connection offered,
//! so clients that connect and say nothing, or send their headers a byte at a time, hold a
//! descriptor each until the process runs out. Here, instead:
//!
//! - at most [`HttpLimits::max_connections`] connections are served at once; a connection over
//!   the cap is closed as soon as it is accepted, counted, and logged (at most every 10 s);
//! - a client has [`HttpLimits::header_read_timeout`] to send a request's headers, counted from
//!   when the server starts waiting for them: on a new connection and again between requests
//!   of a keep-alive connection, so a silent, trickling or idle keep-alive client is cut off;
//! - a connection on which no byte moves either way for [`HttpLimits::idle_timeout`] (a client
//!   that stopped reading its response) is closed;
//! - on shutdown no connection is accepted any more, requests in progress are answered, and
//!   whatever is still open after [`DRAIN`] is closed.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Default cap on connections served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default time a client has to send a request's headers.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// Default time a connection may move no byte at all.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 30;
/// Longest a stopping server waits for the requests in progress.
pub const DRAIN: Duration = Duration::from_secs(5);

/// How much an HTTP endpoint gives its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECS),
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
        }
    }
}

impl HttpLimits {
    /// Checks the raw settings of a section (`max_connections`, `header_read_timeout_secs`,
    /// `idle_timeout_secs` under `section`) and builds the limits; every problem is added to `p`.
    pub fn check(
        p: &mut crate::config::Problems,
        section: &str,
        max_connections: usize,
        header_read_timeout_secs: u64,
        idle_timeout_secs: u64,
    ) -> HttpLimits {
        if !(1..=65_536).contains(&max_connections) {
            p.add(
                &format!("{section}.max_connections"),
                format!("{max_connections} must be 1 to 65536"),
            );
        }
        if !(1..=300).contains(&header_read_timeout_secs) {
            p.add(
                &format!("{section}.header_read_timeout_secs"),
                format!("{header_read_timeout_secs} must be 1 to 300"),
            );
        }
        if !(1..=3600).contains(&idle_timeout_secs) {
            p.add(
                &format!("{section}.idle_timeout_secs"),
                format!("{idle_timeout_secs} must be 1 to 3600"),
            );
        }
        HttpLimits {
            max_connections: max_connections.max(1),
            header_read_timeout: Duration::from_secs(header_read_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(idle_timeout_secs.max(1)),
        }
    }
}

/// What an endpoint's connections did, for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Connections being served now.
    pub open: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    /// Connections closed because headers did not arrive in time or nothing moved.
    pub timed_out: AtomicU64,
}

impl HttpCounters {
    /// Prometheus text for the counters, each named `<prefix>_http_...`.
    pub fn render(&self, prefix: &str, out: &mut String) {
        use std::fmt::Write;
        for (name, kind, help, v) in [
            (
                "http_connections_open",
                "gauge",
                "HTTP connections being served.",
                &self.open,
            ),
            (
                "http_refused_connections_total",
                "counter",
                "HTTP connections closed at once because the connection cap was reached.",
                &self.refused,
            ),
            (
                "http_timed_out_connections_total",
                "counter",
                "HTTP connections closed for headers not sent in time or no traffic.",
                &self.timed_out,
            ),
        ] {
            let _ = writeln!(out, "# HELP {prefix}_{name} {help}");
            let _ = writeln!(out, "# TYPE {prefix}_{name} {kind}");
            let _ = writeln!(out, "{prefix}_{name} {}", v.load(Ordering::Relaxed));
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown`; `what` names the endpoint in
/// the log.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    counters: Arc<HttpCounters>,
    what: &'static str,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let stop = shutdown.child_token();
    let mut conns = tokio::task::JoinSet::new();
    let mut refusal_logged: Option<Instant> = None;
    let mut refused_since_log = 0u64;
    loop {
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                tracing::error!(endpoint = what, error = %e, "accepting a connection failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            counters.refused.fetch_add(1, Ordering::Relaxed);
            refused_since_log += 1;
            if refusal_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(
                    endpoint = what,
                    max_connections = limits.max_connections,
                    refused = refused_since_log,
                    "connection cap reached; closing new connections at once"
                );
                refusal_logged = Some(Instant::now());
                refused_since_log = 0;
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: Arc::clone(&activity),
        });
        let conn = builder.serve_connection(io, TowerToHyperService::new(router.clone()));
        let counters = Arc::clone(&counters);
        let stop = stop.clone();
        let idle = limits.idle_timeout;
        counters.open.fetch_add(1, Ordering::Relaxed);
        conns.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let mut draining = false;
            loop {
                let deadline = activity.last() + idle;
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            if e.is_timeout() {
                                counters.timed_out.fetch_add(1, Ordering::Relaxed);
                            }
                            tracing::debug!(endpoint = what, %peer, error = %e, "connection ended");
                        }
                        break;
                    }
                    () = stop.cancelled(), if !draining => {
                        conn.as_mut().graceful_shutdown();
                        draining = true;
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        if activity.last() + idle <= Instant::now() {
                            counters.timed_out.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(endpoint = what, %peer, "no traffic; connection closed");
                            break;
                        }
                    }
                }
            }
            counters.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    stop.cancel();
    let drained =
        tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::info!(
            endpoint = what,
            open = conns.len(),
            "closing connections still open at the stop"
        );
        conns.shutdown().await;
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// When a connection last moved a byte, in milliseconds since it was accepted.
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A connection that notes every byte read or written in its [`Activity`].
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_out_of_range_are_named_by_key() {
        let mut p = crate::config::Problems::default();
        HttpLimits::check(&mut p, "api", 0, 0, 0);
        let paths: Vec<&str> = p.0.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "api.max_connections",
                "api.header_read_timeout_secs",
                "api.idle_timeout_secs"
            ]
        );
        let mut p = crate::config::Problems::default();
        let l = HttpLimits::check(&mut p, "http", 64, 10, 30);
        assert!(p.0.is_empty());
        assert_eq!(l.max_connections, 64);
    }
}
