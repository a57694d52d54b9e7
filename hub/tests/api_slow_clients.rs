//! The hub's HTTP API under slow clients: connections that send nothing, or their headers a
//! byte at a time, are cut off after the header-read timeout; connections over the cap are
//! closed at once and counted; a genuine request still gets its answer. And the API serves
//! loopback only: it has no user accounts yet.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use proofline_hub::alerts::AlertBook;
use proofline_hub::api::{ApiServer, AppState, HubMetrics, Snapshot};
use proofline_hub::config::HubConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The default connection cap and header-read timeout the API runs with.
const CAP: usize = 256;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

async fn get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    (!out.is_empty()).then_some(out)
}

/// Reads until the server closes the connection; true if it did within `limit`.
async fn closed_within(mut s: TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_a_genuine_request_still_answers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_snap_tx, snapshot) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let hub_metrics = Arc::new(HubMetrics::default());
    let state = AppState {
        snapshot,
        alerts: Arc::new(Mutex::new(AlertBook::new())),
        metrics: Arc::clone(&hub_metrics),
        qms: None,
        evidence: None,
        web: None,
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(
        ApiServer {
            listener,
            state,
            tls: None,
        }
        .run(shutdown.clone()),
    );

    // The cap and 50 more: half say nothing at all, half trickle a request line.
    let opened = tokio::time::Instant::now();
    let mut silent = Vec::new();
    let mut tricklers = Vec::new();
    for i in 0..CAP + 50 {
        let s = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 0 {
            silent.push(s);
        } else {
            tricklers.push(s);
        }
    }
    let trickle = tokio::spawn(async move {
        // One byte per half second, for longer than the header timeout.
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n";
        for &b in request.iter().cycle().take(26) {
            for s in tricklers.iter_mut() {
                let _ = s.write_all(&[b]).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tricklers
    });

    // A genuine client (retrying when refused) is answered within the header timeout.
    let answered = tokio::time::timeout(HEADER_TIMEOUT + Duration::from_secs(5), async {
        loop {
            if let Some(r) = get(addr, "/healthz").await {
                // Answered at all: with no witness running in this test, /healthz itself
                // says 503 once the witness has been silent for 10 s.
                if r.starts_with("HTTP/1.1 ") {
                    return r;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(answered.is_ok(), "/healthz never answered");

    // Every silent connection is closed by the server: over the cap at once, the others at
    // the header timeout.
    let limit = HEADER_TIMEOUT + Duration::from_secs(5) - opened.elapsed().min(HEADER_TIMEOUT);
    let closes = silent.into_iter().map(|s| closed_within(s, limit));
    let closed = futures_all(closes).await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(
        open, 0,
        "{open} silent connections still open after the header timeout"
    );
    // The trickling ones too, although they keep sending.
    let tricklers = trickle.await.unwrap();
    let closes = tricklers
        .into_iter()
        .map(|s| closed_within(s, Duration::from_secs(1)));
    let open = futures_all(closes).await.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "{open} trickling connections still open");

    // As `/metrics` renders it (this server has no accounts, so it serves only `/healthz`).
    let mut metrics = String::new();
    hub_metrics.http.render("proofline_hub", &mut metrics);
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("proofline_hub_http_refused_connections_total "))
        .unwrap_or_else(|| panic!("no refused-connections counter in\n{metrics}"))
        .parse()
        .unwrap();
    assert!(refused >= 50, "{refused} refused\n{metrics}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

/// Awaits every future, concurrently, in order.
async fn futures_all<F: std::future::Future<Output = bool> + Send + 'static>(
    fs: impl Iterator<Item = F>,
) -> Vec<bool> {
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_cap_connections_close_at_once_and_quiet_keep_alive_ones_at_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_snap_tx, snapshot) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let metrics = Arc::new(HubMetrics::default());
    let state = AppState {
        snapshot,
        alerts: Arc::new(Mutex::new(AlertBook::new())),
        metrics: Arc::clone(&metrics),
        qms: None,
        evidence: None,
        web: None,
    };
    // The header timeout is long enough that the quiet client below is still open (holding
    // its slot) while the 99 others connect, even on a loaded machine.
    let limits = proofline_common::http::HttpLimits {
        max_connections: 64,
        header_read_timeout: Duration::from_secs(6),
        idle_timeout: Duration::from_secs(8),
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(
        ApiServer {
            listener,
            state,
            tls: None,
        }
        .run_with(limits, shutdown.clone()),
    );

    // A keep-alive client answered once, then quiet: closed at the header timeout.
    let mut quiet = TcpStream::connect(addr).await.unwrap();
    quiet
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = quiet.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let held: Vec<_> = connect_many(addr, 63).await;
    // Over the cap: closed at once.
    let over = connect_many(addr, 36).await;
    let closes = over
        .into_iter()
        .map(|s| closed_within(s, Duration::from_millis(500)));
    let open = futures_all(closes).await.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "{open} connections over the cap left open");
    assert_eq!(
        metrics
            .http
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        36
    );
    assert!(closed_within(quiet, Duration::from_secs(8)).await);
    let closes = held
        .into_iter()
        .map(|s| closed_within(s, Duration::from_secs(8)));
    let open = futures_all(closes).await.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "{open} silent connections left open");
    assert!(get(addr, "/healthz")
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

async fn connect_many(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(TcpStream::connect(addr).await.unwrap());
    }
    out
}

#[test]
fn the_api_refuses_a_non_loopback_address_even_when_allowed() {
    let cfg = HubConfig::parse(
        r#"
[hub]
site = "plant-1"
data_dir = "/tmp/x"
key_file = "/tmp/k"
[api]
listen = "0.0.0.0:8480"
allow_non_loopback = true
"#,
    )
    .unwrap();
    let problems = cfg.problems();
    let api = problems
        .iter()
        .find(|p| p.path == "api.listen")
        .unwrap_or_else(|| panic!("api.listen not refused: {problems:?}"));
    assert!(api.message.contains("loopback"), "{api}");
}
