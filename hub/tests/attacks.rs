//! Attacks on the evidence flow by someone on the plant network with no station key, through
//! the broker (issue: nobody can stop, steer or impersonate the evidence flow). The broker is
//! locked (`broker_acl.rs`), but the hub trusts it no more than before (DESIGN §4): these tests
//! run with a broker that lets the attacker in, as one in an attacker's hands would. Each test is a
//! case that was shown to work against an earlier hub; each ends with genuine stations still
//! witnessed and the hub still running.

mod common;

use std::time::Duration;

use common::*;
use proofline_common::wire::{
    Ack, AckMsg, AgentTopics, Envelope, MsgId, RecordsMsg, RejectCode, Signed, SignedBatch,
};
use rumqttc::{AsyncClient, MqttOptions, QoS};

const HEARTBEAT: u64 = 1;

/// An MQTT client of the attacker's, connected, its event loop driven in the background.
async fn attacker(broker: &str) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let (host, port) = broker.rsplit_once(':').unwrap();
    let mut o = MqttOptions::new(
        format!("attacker-{}", free_port()),
        host,
        port.parse().unwrap(),
    );
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(o, 10_000);
    let task = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    (client, task)
}

/// Publishes `n` messages made by `payload(i)` on `topic(i)` and waits until the broker has
/// taken them all.
async fn flood(
    c: &AsyncClient,
    n: usize,
    topic: impl Fn(usize) -> String,
    payload: impl Fn(usize) -> Vec<u8>,
) {
    for i in 0..n {
        c.publish(topic(i), QoS::AtLeastOnce, false, payload(i))
            .await
            .unwrap();
    }
    // Let the broker deliver before the test looks.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The hub is still up: its run has not ended, and a genuine station's new records are
/// cosigned.
async fn still_witnessing(plant: &Plant, hub: &Hub, agent: &str, expect: u64) {
    assert!(!hub.task.is_finished(), "the hub stopped");
    let mut s = Station::start(plant, agent, plant.hub_section(&plant.broker(), HEARTBEAT));
    s.produce(5, 5).await;
    s.wait_cosigned(Duration::from_secs(20)).await;
    assert_eq!(hub_size(hub.api, agent).await, expect);
    s.stop().await;
}

/// Shown: one PUBLISH on a 9000-character station id stopped the hub (the alert record was over
/// the record limit, and the failure path stopped the hub, exiting 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_9000_character_station_id_does_not_stop_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let hub = Hub::start_unlocked(&plant.hub_toml(&["flow-01"], None, 0)).await;
    let (c, task) = attacker(&plant.broker()).await;
    let long = "x".repeat(9000);
    flood(
        &c,
        3,
        |_| format!("proofline/v1/{SITE}/{long}/records"),
        |_| vec![1, 2, 3],
    )
    .await;
    still_witnessing(&plant, &hub, "flow-01", 5).await;
    let (_, metrics) = http_get(hub.api, "/metrics").await;
    assert!(
        metrics.contains("proofline_hub_dropped_topic_messages_total 3"),
        "{metrics}"
    );
    task.abort();
    hub.stop().await;
    verify_clean(&plant, &["flow-01"]);
}

/// Shown: every distinct unknown station id became one fsync'd record in the hub's permanent
/// ledger, and the flood evicted real alerts from `/api/v1/alerts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_ids_costs_the_hub_ledger_one_record_and_evicts_no_alert() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let hub = Hub::start_unlocked(&plant.hub_toml(&["flow-01"], None, 0)).await;
    let (c, task) = attacker(&plant.broker()).await;
    // A forged batch on a real station's topic: a security alert.
    let forged = RecordsMsg::V2(SignedBatch {
        envelope: Signed {
            body: postcard::to_stdvec(&Envelope {
                agent_id: "flow-01".into(),
                id: MsgId {
                    boot: u32::MAX,
                    counter: 0,
                },
                first: 0,
                checkpoint: String::new(),
                head: 0,
                sent_at: 0,
                degraded: None,
            })
            .unwrap()
            .into(),
            signature: vec![0; 64].into(),
        },
        records: vec![],
    })
    .encode();
    let topics = AgentTopics::new(SITE, "flow-01");
    c.publish(&topics.records, QoS::AtLeastOnce, false, forged.clone())
        .await
        .unwrap();
    assert!(
        wait_alert(hub.api, "bad_signature", "flow-01", Duration::from_secs(10))
            .await
            .is_some(),
        "the forgery is alerted"
    );
    flood(
        &c,
        3000,
        |i| format!("proofline/v1/{SITE}/ghost-{i}/records"),
        |_| forged.clone(),
    )
    .await;
    assert!(
        until(Duration::from_secs(30), || async {
            let a = alerts(hub.api).await;
            a.iter()
                .any(|a| a["kind"] == "unknown_agent" && a["count"].as_u64() == Some(3000))
        })
        .await,
        "{} alert entries",
        alerts(hub.api).await.len()
    );
    let a = alerts(hub.api).await;
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a[0]["kind"], "bad_signature", "security alerts first");
    assert!(a[1]["sample"].as_array().unwrap().len() <= 8);
    still_witnessing(&plant, &hub, "flow-01", 5).await;
    task.abort();
    let hub_dir = plant.hub_data.clone();
    hub.stop().await;
    // The hub ledger holds one record for the whole flood, not one per message.
    let alarms: Vec<String> = alarms(&hub_dir).into_iter().map(|(c, _)| c).collect();
    let unknown = alarms
        .iter()
        .filter(|c| *c == "witness.unknown_agent")
        .count();
    assert_eq!(unknown, 1, "{alarms:?}");
    assert!(alarms.len() <= 3, "{alarms:?}");
    verify_clean(&plant, &["flow-01"]);
}

/// `ledger verify --config` over the hub's data after an attack: every ledger is whole.
fn verify_clean(plant: &Plant, agents: &[&str]) {
    let config = plant.dir.join("verify-hub.toml");
    std::fs::write(&config, plant.hub_toml(agents, None, 0)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_proofline-hub"))
        .args(["ledger", "verify", "--data-dir"])
        .arg(&plant.hub_data)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Shown: forged `Resend`/`Rejected` on a station's ack topic were believed: false
/// `hub.regression` alarms written into the station's own ledger, duplicate resends, forwarding
/// frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_answers_on_a_station_ack_topic_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let hub = Hub::start_unlocked(&plant.hub_toml(&["flow-01"], None, 0)).await;
    let mut s = Station::start(
        &plant,
        "flow-01",
        plant.hub_section(&plant.broker(), HEARTBEAT),
    );
    s.produce(5, 5).await;
    s.wait_cosigned(Duration::from_secs(20)).await;
    let (c, task) = attacker(&plant.broker()).await;
    let ack_topic = AgentTopics::new(SITE, "flow-01").ack;
    flood(
        &c,
        1000,
        |_| ack_topic.clone(),
        |i| {
            let ack = if i % 2 == 0 {
                Ack::Resend { from: 0 }
            } else {
                Ack::Rejected {
                    code: RejectCode::Fork,
                    reason: "forged".into(),
                }
            };
            AckMsg::V1(ack).encode()
        },
    )
    .await;
    // Forwarding goes on.
    s.produce(5, 5).await;
    s.wait_cosigned(Duration::from_secs(20)).await;
    assert_eq!(hub_size(hub.api, "flow-01").await, 10);
    let ignored = s
        .metrics
        .forward_ignored_answers
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(ignored >= 1000, "{ignored} answers ignored");
    task.abort();
    let data = s.stop().await;
    let alarms: Vec<String> = alarms(&data).into_iter().map(|(c, _)| c).collect();
    assert!(
        alarms.is_empty(),
        "alarms in the station ledger: {alarms:?}"
    );
    hub.stop().await;
}
