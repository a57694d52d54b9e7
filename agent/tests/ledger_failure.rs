//! A station whose ledger cannot be written says so: `/healthz` answers 503 with the reason,
//! and the run ends with an error (so the service manager restarts it and the failure shows),
//! keeping every record already durable. Below the free-space reserve it takes no new results,
//! alarms, and reports itself degraded instead of filling the disk until a write fails.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use proofline_common::record::StationEvent;
use proofline_tests::benchsim::{BenchOptions, FlowBench};

/// Status line and body of `GET /healthz`.
async fn healthz(http: std::net::SocketAddr) -> String {
    http_get(http, "/healthz").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_ledger_commit_turns_healthz_503_and_ends_the_run_with_an_error() {
    let bench = FlowBench::start(BenchOptions {
        results: u32::MAX,
        cycle: Duration::from_millis(20),
        ..BenchOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (data, station) = station(dir.path(), "flow-bench-01");
    let text = format!("{station}{}", FlowBench::source_toml(bench.addr, 5, 500));
    let fault = Arc::new(AtomicBool::new(false));
    let agent = start_with(&text, Some(Arc::clone(&fault))).await;
    until("a few results", || bench.acknowledged() >= 3).await;
    assert!(healthz(agent.http).await.starts_with("HTTP/1.0 200"));

    fault.store(true, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let unhealthy = loop {
        let h = healthz(agent.http).await;
        if h.starts_with("HTTP/1.0 503") {
            break h;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "healthz still says\n{h}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(unhealthy.contains("ledger"), "{unhealthy}");

    // The run ends by itself, with an error.
    let ended = tokio::time::timeout(Duration::from_secs(30), agent.task)
        .await
        .expect("the agent kept running with a failed ledger")
        .unwrap();
    let err = ended.expect_err("the run ended without an error");
    assert!(format!("{err:#}").contains("ledger"), "{err:#}");

    // Nothing the bench saw acknowledged is lost.
    let acked = bench.acknowledged();
    let got = results(&records(&data)).len() as u32;
    assert!(
        got >= acked,
        "{got} results in the ledger, {acked} acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_reserve_the_station_takes_no_results_and_healthz_says_why() {
    let bench = FlowBench::start(BenchOptions {
        results: u32::MAX,
        cycle: Duration::from_millis(5),
        ..BenchOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (data, station) = station(dir.path(), "flow-bench-01");
    // A reserve no disk here has free: breached from the first check.
    let text = format!(
        "{station}[storage]\nmin_free_mib = 1000000000\ncheck_interval_secs = 1\n{}",
        FlowBench::source_toml(bench.addr, 5, 500)
    );
    let agent = start(&text).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let unhealthy = loop {
        let h = healthz(agent.http).await;
        if h.starts_with("HTTP/1.0 503") {
            break h;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "healthz still says\n{h}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(unhealthy.contains("free"), "{unhealthy}");
    // Stalled, not failed: the bench waits unacknowledged and the agent stays up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stalled_at = bench.acknowledged();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        bench.acknowledged() <= stalled_at + 1,
        "acknowledged {} after stalling at {stalled_at}",
        bench.acknowledged()
    );
    assert!(!agent.task.is_finished());
    agent.stop().await;

    let ev = events(&records(&data));
    assert!(
        ev.iter()
            .any(|e| matches!(e, StationEvent::Alarm(a) if a.code == "storage.reserve_breached")),
        "{ev:?}"
    );
}
