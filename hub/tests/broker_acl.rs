//! The broker is locked (DESIGN §4, "And still lock the broker"), on the embedded broker and on
//! Mosquitto configured as `proofline-hub broker-config` writes it: nobody connects without a
//! credential, a credential works only for its own client id and topics, nobody reads another
//! station's records, nobody takes the hub's session, a removed station is locked out within
//! seconds; and a genuine station is witnessed throughout.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode};

const A: &str = "st-a";
const B: &str = "st-b";

fn records(agent: &str) -> String {
    format!("proofline/v1/{SITE}/{agent}/records")
}

/// A raw client; Ok once the broker accepted its CONNECT.
async fn connect(
    broker: &str,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> Result<(AsyncClient, EventLoop), String> {
    connect_with_will(broker, client_id, login, None).await
}

async fn connect_with_will(
    broker: &str,
    client_id: &str,
    login: Option<(&str, &str)>,
    will: Option<&str>,
) -> Result<(AsyncClient, EventLoop), String> {
    let (host, port) = broker.rsplit_once(':').unwrap();
    let mut o = MqttOptions::new(client_id, host, port.parse().unwrap());
    if let Some(topic) = will {
        o.set_last_will(rumqttc::LastWill::new(
            topic,
            vec![0u8; 8],
            QoS::AtLeastOnce,
            true,
        ));
    }
    o.set_keep_alive(Duration::from_secs(10));
    if let Some((u, p)) = login {
        o.set_credentials(u, p);
    }
    let (client, mut events) = AsyncClient::new(o, 16);
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("no answer to CONNECT".into()));
    got.map(|()| (client, events))
}

fn secret(plant: &Plant, agent: &str) -> String {
    std::fs::read_to_string(plant.station_secret(agent))
        .unwrap()
        .trim()
        .to_owned()
}

/// A plant with stations A (forwarding) and B (enrolled, its credential used by the tests).
struct Scene {
    _dir: tempfile::TempDir,
    via: Via,
    plant: Plant,
    broker: String,
    hub: Hub,
    a: Station,
}

async fn scene(mosquitto: bool) -> Option<Scene> {
    let dir = tempfile::tempdir().unwrap();
    let via = Via::new(mosquitto, dir.path())?;
    let plant = Plant::new(dir.path());
    let broker = via.broker(&plant);
    let hub = Hub::start(&via.hub_toml(&plant, &[A, B], 0)).await;
    let mut a = Station::start(&plant, A, plant.hub_section(&broker, 1));
    a.produce(20, 5).await;
    a.wait_cosigned(Duration::from_secs(30)).await;
    Some(Scene {
        _dir: dir,
        via,
        plant,
        broker,
        hub,
        a,
    })
}

impl Scene {
    /// Station A is still witnessed: new records get cosigned.
    async fn still_witnessed(&mut self) {
        self.a.produce(10, 2).await;
        self.a.wait_cosigned(Duration::from_secs(30)).await;
        assert_eq!(hub_size(self.hub.api, A).await, self.a.ledger.head().size);
    }

    async fn stop(self) {
        self.a.stop().await;
        self.hub.stop().await;
        drop(self.via);
    }
}

async fn anonymous_and_wrong_passwords_are_refused(mosquitto: bool) {
    let Some(mut s) = scene(mosquitto).await else {
        return;
    };
    let id = format!("proofline-agent-{SITE}-{B}");
    assert!(connect(&s.broker, &id, None).await.is_err(), "anonymous");
    assert!(connect(&s.broker, "spy", None).await.is_err(), "anonymous");
    assert!(
        connect(&s.broker, &id, Some((B, "not-the-secret")))
            .await
            .is_err(),
        "wrong password"
    );
    let other = secret(&s.plant, A);
    assert!(
        connect(&s.broker, &id, Some((B, &other))).await.is_err(),
        "another station's password"
    );
    assert!(
        connect(&s.broker, &id, Some((B, &secret(&s.plant, B))))
            .await
            .is_ok(),
        "the genuine credential"
    );
    s.still_witnessed().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_and_wrong_password_clients_are_refused() {
    anonymous_and_wrong_passwords_are_refused(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_and_wrong_password_clients_are_refused_via_mosquitto() {
    anonymous_and_wrong_passwords_are_refused(true).await;
}

async fn no_one_reads_another_stations_records(mosquitto: bool) {
    let Some(mut s) = scene(mosquitto).await else {
        return;
    };
    let id = format!("proofline-agent-{SITE}-{B}");
    let (client, mut events) = connect(&s.broker, &id, Some((B, &secret(&s.plant, B))))
        .await
        .expect("B's own credential connects");
    client
        .subscribe("proofline/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe(records(A), QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe(format!("proofline/v1/{SITE}/+/records"), QoS::AtLeastOnce)
        .await
        .unwrap();
    // Nor anyone's route interlock questions, nor another station's answers.
    client
        .subscribe(format!("proofline/v1/{SITE}/+/interlock"), QoS::AtMostOnce)
        .await
        .unwrap();
    client
        .subscribe(
            format!("proofline/v1/{SITE}/{A}/clearance"),
            QoS::AtMostOnce,
        )
        .await
        .unwrap();
    let spy = tokio::spawn(async move {
        let (mut acks, mut data) = (Vec::new(), Vec::new());
        let _ = tokio::time::timeout(Duration::from_secs(8), async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(a))) => acks.extend(a.return_codes),
                    Ok(Event::Incoming(Packet::Publish(p))) => data.push(p.topic),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
        .await;
        (acks, data)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.still_witnessed().await;
    let (acks, data) = spy.await.unwrap();
    assert!(data.is_empty(), "B read {data:?}");
    if !mosquitto {
        assert_eq!(acks, vec![SubscribeReasonCode::Failure; 5]);
    }
    drop(client);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_to_everything_or_another_station_gets_no_data() {
    no_one_reads_another_stations_records(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_to_everything_or_another_station_gets_no_data_via_mosquitto() {
    no_one_reads_another_stations_records(true).await;
}

async fn credentials_bind_to_their_identity(mosquitto: bool) {
    let Some(mut s) = scene(mosquitto).await else {
        return;
    };
    let b = secret(&s.plant, B);
    if !mosquitto {
        // Mosquitto replaces the client id with the username instead of refusing it.
        assert!(
            connect(
                &s.broker,
                &format!("proofline-agent-{SITE}-{A}"),
                Some((B, &b))
            )
            .await
            .is_err(),
            "B's credential with A's client id"
        );
        assert!(
            connect(
                &s.broker,
                &format!("proofline-agent-{SITE}-{B}"),
                Some((A, &b))
            )
            .await
            .is_err(),
            "B's password under A's name"
        );
        let b_id = format!("proofline-agent-{SITE}-{B}");
        let a_status = format!("proofline/v1/{SITE}/{A}/status");
        assert!(
            connect_with_will(&s.broker, &b_id, Some((B, &b)), Some(&a_status))
                .await
                .is_err(),
            "B's last will on A's status topic"
        );
        let b_status = format!("proofline/v1/{SITE}/{B}/status");
        assert!(
            connect_with_will(&s.broker, &b_id, Some((B, &b)), Some(&b_status))
                .await
                .is_ok(),
            "B's last will on its own status topic"
        );
    }
    // B's credential, publishing as A: nothing reaches the hub as A's.
    let before = hub_size(s.hub.api, A).await;
    let (client, mut events) = connect(
        &s.broker,
        &format!("proofline-agent-{SITE}-{B}"),
        Some((B, &b)),
    )
    .await
    .unwrap();
    client
        .publish(records(A), QoS::AtLeastOnce, false, vec![0u8; 64])
        .await
        .unwrap();
    client
        .publish(
            format!("proofline/v1/{SITE}/{A}/ack"),
            QoS::AtLeastOnce,
            false,
            vec![0u8; 64],
        )
        .await
        .unwrap();
    for kind in ["interlock", "clearance"] {
        client
            .publish(
                format!("proofline/v1/{SITE}/{A}/{kind}"),
                QoS::AtMostOnce,
                false,
                vec![0u8; 64],
            )
            .await
            .unwrap();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while events.poll().await.is_ok() {}
    })
    .await;
    assert_eq!(hub_size(s.hub.api, A).await, before);
    let on_a: Vec<_> = alerts(s.hub.api)
        .await
        .into_iter()
        .filter(|a| a["agent_id"] == A)
        .collect();
    assert!(
        on_a.is_empty(),
        "a forged message reached the hub as A's: {on_a:?}"
    );
    // The broker dropped the question B published as A's: the hub never saw it.
    let (_, m) = http_get(s.hub.api, "/metrics").await;
    assert!(
        m.contains("proofline_hub_interlock_ignored_total 0"),
        "{}",
        m.lines()
            .filter(|l| l.contains("interlock"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    s.still_witnessed().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_credential_works_only_as_that_station() {
    credentials_bind_to_their_identity(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_credential_works_only_as_that_station_via_mosquitto() {
    credentials_bind_to_their_identity(true).await;
}

async fn the_hubs_session_cannot_be_taken(mosquitto: bool) {
    let Some(mut s) = scene(mosquitto).await else {
        return;
    };
    let hub_id = format!("proofline-hub-{SITE}");
    assert!(
        connect(&s.broker, &hub_id, None).await.is_err(),
        "anonymous"
    );
    assert!(
        connect(&s.broker, &hub_id, Some((B, &secret(&s.plant, B))))
            .await
            .is_err()
            || mosquitto,
        "a station's credential"
    );
    assert!(
        connect(&s.broker, &hub_id, Some((&hub_id, "guess")))
            .await
            .is_err(),
        "the hub's name with a guessed password"
    );
    s.still_witnessed().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_takes_over_the_hubs_client_id() {
    the_hubs_session_cannot_be_taken(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_takes_over_the_hubs_client_id_via_mosquitto() {
    the_hubs_session_cannot_be_taken(true).await;
}

async fn removal_locks_out(mosquitto: bool) {
    let Some(mut s) = scene(mosquitto).await else {
        return;
    };
    let id = format!("proofline-agent-{SITE}-{B}");
    let b = secret(&s.plant, B);
    assert!(connect(&s.broker, &id, Some((B, &b))).await.is_ok());
    // `proofline-hub agent remove` leaves this request; B is enrolled in the configuration here,
    // so the request stands for the removal (the rights end when it is seen).
    std::fs::write(
        proofline_hub::enroll::removal_path(&s.plant.hub_data, B),
        "",
    )
    .unwrap();
    if let Via::Mosquitto(m) = &s.via {
        m.reload(&s.plant);
    }
    let locked = until(Duration::from_secs(10), || {
        let (broker, b) = (s.broker.clone(), b.clone());
        let id = id.clone();
        async move { connect(&broker, &id, Some((B, &b))).await.is_err() }
    })
    .await;
    assert!(locked, "a removed station still connects after 10 s");
    s.still_witnessed().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_station_is_locked_out_within_seconds() {
    removal_locks_out(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_station_is_locked_out_within_seconds_via_mosquitto() {
    removal_locks_out(true).await;
}
