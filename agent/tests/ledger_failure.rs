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

/// A real full disk (a tmpfs filled to its last byte by another program, between two checks of
/// the reserve): the commit fails with `ENOSPC`, `/healthz` says so, the run ends with an error;
/// once there is room the station starts again (as its unit does) with every acknowledged
/// result in a ledger that opens and verifies, and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filled_to_the_last_byte_fails_the_commit_and_loses_nothing_acknowledged() {
    let bench = FlowBench::start(BenchOptions {
        results: u32::MAX,
        cycle: Duration::from_millis(20),
        ..BenchOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (data, station) = station(dir.path(), "flow-bench-01");
    let Some(_fs) = proofline_tests::tmpfs::Tmpfs::mount(&data, 16) else {
        return;
    };
    // The reserve is checked at start and then only hourly: the disk fills in between.
    let text = format!(
        "{station}[storage]\nmin_free_mib = 1\ncheck_interval_secs = 3600\n{}",
        FlowBench::source_toml(bench.addr, 5, 500)
    );
    let agent = start(&text).await;
    until("a few results", || bench.acknowledged() >= 3).await;

    let filler = proofline_tests::tmpfs::fill(&data);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let unhealthy = loop {
        let h = healthz(agent.http).await;
        if h.starts_with("HTTP/1.0 503") || agent.task.is_finished() {
            break h;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "healthz still says\n{h}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ended = tokio::time::timeout(Duration::from_secs(30), agent.task)
        .await
        .expect("the agent kept running on a full disk")
        .unwrap();
    let err = ended.expect_err("the run ended without an error");
    let err = format!("{err:#}");
    // Both name the cause a technician can act on.
    assert!(err.contains("No space left"), "{err}");
    assert!(
        unhealthy.contains("No space left") || unhealthy.is_empty(),
        "{unhealthy}"
    );
    let acked = bench.acknowledged();

    // Room again; started again: nothing acknowledged is missing, and results flow.
    std::fs::remove_file(filler).unwrap();
    let agent = start(&text).await;
    until("results after the restart", || {
        bench.acknowledged() >= acked + 3
    })
    .await;
    agent.stop().await;
    let got = results(&records(&data)).len() as u32;
    assert!(
        got >= bench.acknowledged(),
        "{got} results in the ledger, {} acknowledged",
        bench.acknowledged()
    );
}
