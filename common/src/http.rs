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
    serve_with(listener, router, limits, counters, what, None, shutdown).await
}

/// [`serve`], over TLS when `tls` is given: the handshake must end within the header-read
/// timeout (a client that opens a connection and never finishes it is cut off like a silent
/// one), and the certificate in use is whatever `tls` holds at the handshake.
pub async fn serve_with(
    listener: TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    counters: Arc<HttpCounters>,
    what: &'static str,
    tls: Option<tokio_rustls::TlsAcceptor>,
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
        let tracked = Tracked {
            inner: stream,
            activity: Arc::clone(&activity),
        };
        // Handlers see the peer as `ConnectInfo<SocketAddr>` (the access audit's "from where").
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                let mut router = router.clone();
                // A Router is always ready: no poll_ready needed before the call.
                async move { tower_service::Service::call(&mut router, req).await }
            });
        let counters = Arc::clone(&counters);
        let stop = stop.clone();
        let idle = limits.idle_timeout;
        let handshake = limits.header_read_timeout;
        let builder = builder.clone();
        let tls = tls.clone();
        counters.open.fetch_add(1, Ordering::Relaxed);
        conns.spawn(async move {
            match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tracked), service);
                    drive(conn, &activity, &counters, &stop, idle, what, peer).await;
                }
                Some(acceptor) => {
                    match tokio::time::timeout(handshake, acceptor.accept(tracked)).await {
                        Ok(Ok(stream)) => {
                            let conn = builder.serve_connection(TokioIo::new(stream), service);
                            drive(conn, &activity, &counters, &stop, idle, what, peer).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(endpoint = what, %peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            counters.timed_out.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(endpoint = what, %peer, "TLS handshake not finished in time");
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

/// Serves one connection until it ends, goes idle for `idle`, or the server stops (then the
/// requests in progress are answered first).
async fn drive<C>(
    conn: C,
    activity: &Activity,
    counters: &HttpCounters,
    stop: &CancellationToken,
    idle: Duration,
    what: &'static str,
    peer: std::net::SocketAddr,
) where
    C: std::future::Future<Output = Result<(), hyper::Error>> + GracefulShutdown,
{
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
                conn.as_mut().shutdown_gracefully();
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
}

/// hyper's `graceful_shutdown`, for connections over any stream.
trait GracefulShutdown {
    fn shutdown_gracefully(self: Pin<&mut Self>);
}

impl<I, S> GracefulShutdown for hyper::server::conn::http1::Connection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shutdown_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
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

/// A server certificate and its key from PEM files, reloaded when either file changes: a new
/// certificate is used from the next handshake, and one that does not load (half-written, key
/// not matching) is refused and the one in use kept.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
    stamp: std::sync::Mutex<Stamp>,
}

type Stamp = (
    Option<std::time::SystemTime>,
    Option<std::time::SystemTime>,
    u64,
);

fn stamp(cert: &std::path::Path, key: &std::path::Path) -> Stamp {
    let m = |p: &std::path::Path| std::fs::metadata(p).ok();
    let (c, k) = (m(cert), m(key));
    (
        c.as_ref().and_then(|m| m.modified().ok()),
        k.as_ref().and_then(|m| m.modified().ok()),
        c.map_or(0, |m| m.len()) ^ k.map_or(0, |m| m.len()).rotate_left(32),
    )
}

impl ReloadingCert {
    /// Loads the certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8, PKCS#1
    /// or SEC1).
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<Arc<Self>, String> {
        let s = stamp(cert, key);
        let ck = Self::read(cert, key)?;
        Ok(Arc::new(ReloadingCert {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: std::sync::RwLock::new(Arc::new(ck)),
            stamp: std::sync::Mutex::new(s),
        }))
    }

    fn read(
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<rustls::sign::CertifiedKey, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| format!("{}: {e}", cert.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        if chain.is_empty() {
            return Err(format!("{}: no certificate in it", cert.display()));
        }
        let der =
            PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
        rustls::sign::CertifiedKey::from_der(chain, der, &rustls::crypto::ring::default_provider())
            .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))
    }

    /// Loads the files again if either changed; Ok(true) when a new certificate is in use.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = stamp(&self.cert, &self.key);
        let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if *last == now {
            return Ok(false);
        }
        *last = now;
        let ck = Self::read(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ck);
        Ok(true)
    }

    /// The TLS acceptor serving this certificate (TLS 1.2 and 1.3, HTTP/1.1).
    pub fn acceptor(self: &Arc<Self>) -> Result<tokio_rustls::TlsAcceptor, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(self) as Arc<dyn rustls::server::ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    /// Checks the files every `every` until `shutdown`, logging each new certificate and each
    /// refused one.
    pub async fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match self.reload_if_changed() {
                Ok(true) => {
                    tracing::info!(cert = %self.cert.display(), "new TLS certificate in use")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "the changed TLS certificate does not load; the previous one stays in use")
                }
            }
        }
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}
