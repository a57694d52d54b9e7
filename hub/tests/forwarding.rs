//! Store-and-forward through the embedded broker, in-process: every record arrives once, is
//! cosigned, and reads back byte-identical through the API.

mod common;

use std::time::Duration;

use common::*;
use proofline_common::export::export_line;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_the_hub_once_and_are_cosigned() {
    forwards(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_the_hub_once_and_are_cosigned_via_mosquitto() {
    forwards(true).await;
}

async fn forwards(mosquitto: bool) {
    let dir = tempfile::tempdir().unwrap();
    let Some(via) = Via::new(mosquitto, dir.path()) else {
        return;
    };
    let plant = Plant::new(dir.path());
    let broker = via.broker(&plant);
    let hub = Hub::start(&via.hub_toml(&plant, &["flow-01", "torque-01"], 0)).await;
    let mut a = Station::start(&plant, "flow-01", plant.hub_section(&broker, 1));
    let mut b = Station::start(&plant, "torque-01", plant.hub_section(&broker, 1));
    a.produce(500, 7).await;
    b.produce(120, 1).await;
    a.wait_cosigned(Duration::from_secs(30)).await;
    b.wait_cosigned(Duration::from_secs(30)).await;
    assert_eq!(hub_size(hub.api, "flow-01").await, 500);
    assert_eq!(hub_size(hub.api, "torque-01").await, 120);

    // The hub's copy is byte-identical, in the export's JSON shape.
    let got = get_json(hub.api, "/api/v1/agents/flow-01/records?from=490&limit=50").await;
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), 10);
    for (i, rec) in got.iter().enumerate() {
        let seq = 490 + i as u64;
        let bytes = a.ledger.reader().get(seq).unwrap().unwrap();
        let want: serde_json::Value =
            serde_json::from_str(&export_line(seq, &bytes).unwrap()).unwrap();
        assert_eq!(rec, &want);
    }
    assert!(
        alerts(hub.api).await.is_empty(),
        "{:?}",
        alerts(hub.api).await
    );
    let (status, body) = http_get(hub.api, "/api/v1/agents/flow-01/records?limit=x").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("limit"), "{body}");
    let (status, _) = http_get(hub.api, "/api/v1/agents/nobody/records").await;
    assert_eq!(status, 404);
    let (_, metrics) = http_get(hub.api, "/metrics").await;
    assert!(
        metrics.contains("proofline_hub_agent_size{agent=\"flow-01\"} 500"),
        "{metrics}"
    );

    // Heartbeats keep cosigning an idle ledger; the cosigned size survives a restart of the
    // station, which then sends nothing twice.
    let data = a.stop().await;
    let a = Station::start(&plant, "flow-01", plant.hub_section(&broker, 1));
    assert_eq!(*a.cosigned.borrow(), 500);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dups = get_json(hub.api, "/api/v1/agents").await;
    let flow = dups
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["agent_id"] == "flow-01")
        .unwrap()
        .clone();
    assert_eq!(flow["duplicates"], 0, "{flow}");
    assert_eq!(flow["size"], 500);
    drop(data);
    a.stop().await;
    b.stop().await;
    hub.stop().await;
}

/// An MQTT 3.1.1 CONNECT for `client_id` (clean session, 60 s keep-alive).
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend_from_slice(&body);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_mid_connect_do_not_lock_stations_out() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let hub = Hub::start(&plant.hub_toml(&["flow-01"], None, 0)).await;
    // Stations that lose power between CONNECT and CONNACK, with the station's own client id.
    for _ in 0..30 {
        let mut s = tokio::net::TcpStream::connect(plant.broker())
            .await
            .unwrap();
        s.write_all(&connect_packet("proofline-agent-plant-1-flow-01"))
            .await
            .unwrap();
        // Gone at once, with a reset: the broker's CONNACK finds no one.
        s.set_zero_linger().unwrap();
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut a = Station::start(&plant, "flow-01", plant.hub_section(&plant.broker(), 1));
    a.produce(20, 4).await;
    a.wait_cosigned(Duration::from_secs(20)).await;
    assert_eq!(hub_size(hub.api, "flow-01").await, 20);
    a.stop().await;
    hub.stop().await;
}
