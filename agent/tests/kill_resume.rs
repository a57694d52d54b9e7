//! The agent binary SIGKILLed while a simulated bench delivers results through the four-phase
//! handshake, and started again, several times: every result the bench delivered is recorded
//! exactly once (a kill between commit and ack neither loses nor duplicates it).

use std::time::Duration;

use proofline_common::record::{Body, Record};
use proofline_common::store::{Access, Store, StoreOptions};
use proofline_tests::benchsim::{BenchOptions, FlowBench};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_resumes_without_losing_or_duplicating_a_result() {
    let bench = FlowBench::start(BenchOptions {
        results: 60,
        cycle: Duration::from_millis(15),
        ..BenchOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("agent.key");
    let origin = proofline_common::Origin::parse("proofline/plant-1/flow-bench-01").unwrap();
    proofline_agent::keyfile::generate(&origin, &key).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[station]
site = "plant-1"
agent_id = "flow-bench-01"
data_dir = "{}"
key_file = "{}"
[http]
listen = "127.0.0.1:0"
[[source]]
name = "flow-bench"
type = "modbus_tcp"
address = "{}"
unit_id = 1
device = "SIM"
poll_interval_ms = 1
addressing = "zero_based"
block_start = 100
block_registers = 40
ready = {{ pattern = "handshake", ready_register = 98, ack_register = 99 }}
result_id = {{ offset = 18, type = "u32" }}
[[source.point]]
name = "full_load_delivery"
offset = 0
type = "f32"
unit = "mm3/stroke"
"#,
            data.display(),
            key.display(),
            bench.addr
        ),
    )
    .unwrap();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rand = move |lo: u64, hi: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        lo + seed % (hi - lo)
    };
    let mut kills = 0;
    while bench.acknowledged() < 60 {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_proofline-agent"))
            .args(["run", "--config", cfg.to_str().unwrap()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(rand(30, 250))).await;
        if bench.acknowledged() >= 60 {
            child.kill().await.unwrap();
            break;
        }
        child.kill().await.unwrap(); // SIGKILL
        kills += 1;
        assert!(kills < 200, "the bench never finished");
    }
    assert!(
        kills >= 3,
        "only {kills} kills happened before the bench finished"
    );
    let (store, _) = Store::open(&data, Access::Read, &StoreOptions::default()).unwrap();
    let ids: Vec<String> = store
        .reader()
        .range(0..store.head().size)
        .filter_map(|r| match Record::decode(&r.unwrap().1).unwrap().body() {
            Body::InspectionResult(ir) => ir.device_result_id.clone(),
            _ => None,
        })
        .collect();
    let want: Vec<String> = (1..=60u32).map(|n| n.to_string()).collect();
    assert_eq!(ids, want, "after {kills} kills");
    println!("{kills} kills, 60 results, each recorded once");
}
