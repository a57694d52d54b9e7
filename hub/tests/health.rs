//! `/healthz` tells the truth, and a hub that cannot go on stops with an error (so its unit
//! restarts it) instead of exiting 0 or running on without doing its job.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use proofline_hub::config::HubConfig;
use tokio_util::sync::CancellationToken;

/// A hub configured from `toml` with the commit-failure hook, in-process.
async fn hub_with_hook(
    toml: &str,
    fail: &Arc<AtomicBool>,
) -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let cfg = HubConfig::parse(toml).unwrap();
    let plan = proofline_hub::plan::HubPlan::build(&cfg).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(proofline_hub::run::run(
        plan,
        shutdown.clone(),
        proofline_hub::run::RunOptions {
            ready: Some(tx),
            fail_commits: Some(Arc::clone(fail)),
            // An outsider's publish makes the hub write an alert: its broker lets it in.
            unlocked_broker: true,
            ..Default::default()
        },
    ));
    let api = tokio::time::timeout(Duration::from_secs(15), rx)
        .await
        .unwrap()
        .unwrap()
        .api;
    (api, shutdown, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_says_when_the_mqtt_session_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    // An external broker nobody runs.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let never = Arc::new(AtomicBool::new(false));
    let (api, shutdown, task) =
        hub_with_hook(&plant.hub_toml(&["flow-01"], Some(&nowhere), 0), &never).await;
    let unhealthy = until(Duration::from_secs(30), || async {
        let (code, text) = http_get(api, "/healthz").await;
        code == 503 && text.contains("no MQTT session")
    })
    .await;
    assert!(unhealthy, "{:?}", http_get(api, "/healthz").await);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_hub_says_ok() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let hub = Hub::start(&plant.hub_toml(&["flow-01"], None, 0)).await;
    let ok = until(Duration::from_secs(10), || async {
        http_get(hub.api, "/healthz").await == (200, "ok\n".to_owned())
    })
    .await;
    assert!(ok, "{:?}", http_get(hub.api, "/healthz").await);
    hub.stop().await;
}

/// Shown: a failure that stopped the hub made it exit 0, so `Restart=on-failure` left it down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_whose_store_fails_stops_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let fail = Arc::new(AtomicBool::new(false));
    let (_api, _shutdown, task) =
        hub_with_hook(&plant.hub_toml(&["flow-01"], None, 0), &fail).await;
    let mut s = Station::start(&plant, "flow-01", plant.hub_section(&plant.broker(), 1));
    s.produce(5, 5).await;
    s.wait_cosigned(Duration::from_secs(20)).await;
    fail.store(true, Ordering::Relaxed);
    // Something the hub records (an alert): the write fails, the ledger is not writable.
    let (host, port) = plant
        .broker()
        .rsplit_once(':')
        .map(|(h, p)| (h.to_owned(), p.parse::<u16>().unwrap()))
        .unwrap();
    let (c, mut events) =
        rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("outsider", host, port), 10);
    let topic = proofline_common::wire::AgentTopics::new(SITE, "flow-01").records;
    c.publish(topic, rumqttc::QoS::AtLeastOnce, false, vec![1, 2, 3])
        .await
        .unwrap();
    let driver = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.produce(5, 5).await;
    let ended = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the hub stops by itself")
        .unwrap();
    let err = ended.expect_err("a failed store is an error exit");
    assert!(
        format!("{err:#}").contains("witness storage failed"),
        "{err:#}"
    );
    assert_eq!(*s.cosigned.borrow(), 5, "nothing unstored was cosigned");
    driver.abort();
    s.stop().await;
}
