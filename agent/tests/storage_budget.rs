//! With the disk budget exhausted the station stops acknowledging the bench (its handshake
//! stalls, visibly) instead of dropping anything, and says so in an alarm.

mod common;

use std::time::Duration;

use common::*;
use proofline_common::record::StationEvent;
use proofline_tests::benchsim::{BenchOptions, FlowBench};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_disk_budget_stalls_the_bench_and_loses_nothing() {
    let bench = FlowBench::start(BenchOptions {
        results: u32::MAX,
        cycle: Duration::from_millis(5),
        ..BenchOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (data, station) = station(dir.path(), "flow-bench-01");
    // sled's log alone passes 1 MiB after a few hundred results.
    let text = format!(
        "{station}[storage]\ndisk_budget_mb = 1\nwarn_percent = 50\ncheck_interval_secs = 1\n{}",
        FlowBench::source_toml(bench.addr, 1, 500)
    );
    let agent = start(&text).await;
    wait_metric(agent.http, "proofline_agent_storage_full 1").await;
    // Stalled: the bench's result waits unacknowledged.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stalled_at = bench.acknowledged();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        bench.acknowledged() <= stalled_at + 1,
        "acknowledged {} after stalling at {stalled_at}",
        bench.acknowledged()
    );
    let body = http_get(agent.http, "/metrics").await;
    assert!(body.contains("proofline_agent_storage_bytes "), "{body}");
    agent.stop().await;

    let recs = records(&data);
    let ev = events(&recs);
    assert!(
        ev.iter()
            .any(|e| matches!(e, StationEvent::Alarm(a) if a.code == "storage.budget_warning")),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|e| matches!(e, StationEvent::Alarm(a) if a.code == "storage.budget_exhausted")),
        "{ev:?}"
    );
    // Every result the bench saw acknowledged is in the ledger, once; at most the one whose
    // handshake the stop interrupted is recorded without its acknowledgement finished.
    let got = results(&recs).len() as u32;
    let acked = bench.acknowledged();
    assert!(
        (acked..=acked + 1).contains(&got),
        "{got} results in the ledger, {acked} acknowledged by the bench"
    );
}
