//! The agent's `/metrics` and `/healthz` endpoint under slow clients: connections that send
//! nothing are cut off after the header-read timeout, connections over the cap are closed at
//! once and counted, and a genuine request still gets its answer.

mod common;

use std::time::Duration;

use proofline_tests::benchsim::{BenchOptions, FlowBench};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The default connection cap and header-read timeout of the endpoint.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_cut_off_and_healthz_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (_data, head) = common::station(dir.path(), "flow-bench-01");
    let bench = FlowBench::start(BenchOptions::default()).await.unwrap();
    let text = head + &FlowBench::source_toml(bench.addr, 20, 500);
    let agent = common::start(&text).await;
    let opened = tokio::time::Instant::now();
    let mut idle = Vec::new();
    for _ in 0..CAP + 50 {
        idle.push(TcpStream::connect(agent.http).await.unwrap());
    }
    let answered = tokio::time::timeout(HEADER_TIMEOUT + Duration::from_secs(5), async {
        loop {
            if let Some(r) = get(agent.http, "/healthz").await {
                if r.starts_with("HTTP/1.1 200") {
                    return r;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(answered.is_ok(), "/healthz never answered");

    let limit = HEADER_TIMEOUT + Duration::from_secs(5) - opened.elapsed().min(HEADER_TIMEOUT);
    let waits: Vec<_> = idle
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
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
            })
        })
        .collect();
    let mut open = 0;
    for w in waits {
        if !w.await.unwrap() {
            open += 1;
        }
    }
    assert_eq!(
        open, 0,
        "{open} idle connections still open after the header timeout"
    );

    let metrics = get(agent.http, "/metrics").await.unwrap();
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("proofline_agent_http_refused_connections_total "))
        .unwrap_or_else(|| panic!("no refused-connections counter in\n{metrics}"))
        .parse()
        .unwrap();
    assert!(refused >= 50, "{refused} refused\n{metrics}");
    agent.stop().await;
}
