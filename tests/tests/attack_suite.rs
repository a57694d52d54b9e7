//! The attack suite: the plant network in an attacker's hands, against the embedded broker and
//! against Mosquitto (configured as `proofline-hub broker-config` writes it).
//!
//! Two attackers, two scenes per broker:
//! - **Locked** (the broker as shipped): an outsider with no login, and a compromised station
//!   (`rogue-01`: enrolled, its key and broker login in the attacker's hands, the other stations'
//!   not). The broker keeps each of them to what its identity may do.
//! - **Open** (a broker that lets anyone in anywhere, as one in the attacker's hands would): the
//!   hub and the stations trust nothing they did not verify (DESIGN §4), so every forgery,
//!   replay and garbage payload that reaches them changes nothing.
//!
//! After every case the genuine stations keep being witnessed (new records cosigned, nothing
//! lost), the hub is still running and `/healthz` says ok; each case checks the alert it must
//! raise (or that none is raised). At the end the genuine stations' ledgers hold no alarm, and
//! `proofline-hub ledger verify --config` over the hub's data is clean.
//!
//! Disk full on the hub (a real small file system, a tmpfs): below its free-space reserve the
//! hub takes no new batches, says why and resumes by itself; filled to the last byte faster
//! than it checks, it stops with an error (its unit restarts it) or its reserve catches it
//! first; either way nothing is lost once there is room again. The broker-level cases that only
//! concern the embedded broker's own code (a TLS handshake that never ends, file descriptors
//! running out, per-address caps, keep-alive) are in `hub/tests/broker_attacks.rs`; disk full on
//! a station (a real full tmpfs too) in `agent/tests/ledger_failure.rs`.

#[path = "../../hub/tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use proofline_common::note::NoteSigner;
use proofline_common::record::now_micros;
use proofline_common::wire::{
    hub_status_topic, Ack, AckBody, AckMsg, AgentStatus, AgentStatusMsg, AgentTopics, Envelope,
    MsgId, RecordsMsg, RejectCode, Signed, SignedBatch, StatusBody, DOMAIN_ACK, DOMAIN_BATCH,
    DOMAIN_STATUS,
};
use proofline_tests::tmpfs::{fill, fill_leaving, Tmpfs};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::AsyncReadExt;

/// The genuine stations: they forward all through the suite.
const FLOW: &str = "flow-01";
const TORQUE: &str = "torque-01";
/// The compromised station: enrolled, its key and login in the attacker's hands.
const ROGUE: &str = "rogue-01";
const HEARTBEAT: u64 = 1;

/// Messages an attacker's client received: (topic, payload).
type Inbox = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An MQTT client of the attacker's. Its event loop runs in the background, reconnects after
/// the broker drops it (a refused PUBLISH disconnects on the embedded broker) and keeps what
/// arrives.
struct Attacker {
    client: AsyncClient,
    inbox: Inbox,
    task: tokio::task::JoinHandle<()>,
}

impl Attacker {
    async fn connect(broker: &str, client_id: &str, login: Option<(&str, &str)>) -> Attacker {
        let (host, port) = broker.rsplit_once(':').unwrap();
        let mut o = MqttOptions::new(client_id, host, port.parse().unwrap());
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_keep_alive(Duration::from_secs(30));
        if let Some((u, p)) = login {
            o.set_credentials(u, p);
        }
        let (client, mut events) = AsyncClient::new(o, 10_000);
        let inbox: Inbox = Arc::default();
        let got = Arc::clone(&inbox);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => got
                        .lock()
                        .unwrap()
                        .push((p.topic.clone(), p.payload.to_vec())),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("the attacker's client connects")
            .unwrap();
        Attacker {
            client,
            inbox,
            task,
        }
    }

    /// Publishes each (topic, payload, retain) and gives the broker time to deliver.
    async fn send(&self, msgs: impl IntoIterator<Item = (String, Vec<u8>, bool)>) {
        for (topic, payload, retain) in msgs {
            self.client
                .publish(topic, QoS::AtLeastOnce, retain, payload)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    async fn subscribe(&self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    fn received(&self, topic: &str) -> Vec<Vec<u8>> {
        self.inbox
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| p.clone())
            .collect()
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether the broker answers a CONNECT with these credentials.
async fn connect_accepted(broker: &str, client_id: &str, login: Option<(&str, &str)>) -> bool {
    let (host, port) = broker.rsplit_once(':').unwrap();
    let mut o = MqttOptions::new(client_id, host, port.parse().unwrap());
    o.set_keep_alive(Duration::from_secs(10));
    if let Some((u, p)) = login {
        o.set_credentials(u, p);
    }
    let (_client, mut events) = AsyncClient::new(o, 4);
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false)
}

fn secret(plant: &Plant, agent: &str) -> String {
    std::fs::read_to_string(plant.station_secret(agent))
        .unwrap()
        .trim()
        .to_owned()
}

/// A batch envelope signed by `signer`, claiming to be from `agent_id`, with no records.
fn envelope(signer: &NoteSigner, agent_id: &str, boot: u32, counter: u64) -> Vec<u8> {
    RecordsMsg::V2(SignedBatch {
        envelope: Signed::seal(
            DOMAIN_BATCH,
            &Envelope {
                agent_id: agent_id.into(),
                id: MsgId { boot, counter },
                first: 0,
                checkpoint: String::new(),
                head: 0,
                sent_at: now_micros(),
                degraded: None,
            },
            signer,
        ),
        records: vec![],
    })
    .encode()
}

/// An "online" status, signed by `signer`, claiming to be from `agent_id`.
fn online_status(signer: &NoteSigner, agent_id: &str, counter: u64) -> Vec<u8> {
    AgentStatusMsg::V2(Signed::seal(
        DOMAIN_STATUS,
        &StatusBody {
            agent_id: agent_id.into(),
            id: MsgId {
                boot: u32::MAX,
                counter,
            },
            online: true,
            will: None,
            version: "forged".into(),
            size: u64::MAX,
            degraded: None,
            sent_at: now_micros(),
        },
        signer,
    ))
    .encode()
}

/// Every prefix of `payload` shorter than it (at most `n` of them, spread evenly), and
/// `payload` with each of a few bytes flipped.
fn truncated_and_flipped(payload: &[u8], n: usize) -> Vec<Vec<u8>> {
    let step = (payload.len() / n).max(1);
    let mut out: Vec<Vec<u8>> = (0..payload.len())
        .step_by(step)
        .map(|k| payload[..k].to_vec())
        .collect();
    for k in (0..payload.len()).step_by(step) {
        let mut p = payload.to_vec();
        p[k] ^= 0x5a;
        out.push(p);
    }
    out
}

/// Bytes no encoder made: empty, random, huge lengths, all ones.
fn garbage() -> Vec<Vec<u8>> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = |n: usize| {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect::<Vec<u8>>()
    };
    vec![
        Vec::new(),
        vec![0],
        vec![1],
        vec![0xff; 64],
        vec![1, 0xff, 0xff, 0xff, 0xff, 0x0f],
        random(17),
        random(1000),
        random(200_000),
        "{\"online\":true}".as_bytes().to_vec(),
    ]
}

fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A plant under attack: a hub, its broker, the genuine stations forwarding.
struct Scene {
    _dir: tempfile::TempDir,
    via: Via,
    plant: Plant,
    broker: String,
    hub: Hub,
    stations: Vec<Station>,
    /// Alert (kind, station) pairs the cases so far raised, as they were expected to.
    raised: BTreeSet<(String, String)>,
    /// Those, and others the cases allow (raised or not, depending on timing).
    allowed: BTreeSet<(String, String)>,
    label: String,
}

impl Scene {
    async fn new(mosquitto: bool, open: bool) -> Option<Scene> {
        let dir = tempfile::tempdir().unwrap();
        let via = if open {
            Via::new_open(mosquitto, dir.path())?
        } else {
            Via::new(mosquitto, dir.path())?
        };
        let plant = Plant::new(dir.path());
        let broker = via.broker(&plant);
        let hub = via
            .start_hub(&via.hub_toml(&plant, &[FLOW, TORQUE, ROGUE], 0), open)
            .await;
        let mut stations = Vec::new();
        for id in [FLOW, TORQUE] {
            let mut s = Station::start(&plant, id, plant.hub_section(&broker, HEARTBEAT));
            s.produce(10, 5).await;
            s.wait_cosigned(Duration::from_secs(30)).await;
            stations.push(s);
        }
        let label = format!(
            "{} broker, {}",
            if mosquitto { "Mosquitto" } else { "embedded" },
            if open { "open" } else { "locked" }
        );
        Some(Scene {
            _dir: dir,
            via,
            plant,
            broker,
            hub,
            stations,
            // The rogue station never sends anything it signed in the locked scene: the hub
            // rightly says it has heard nothing verified from it.
            raised: BTreeSet::new(),
            allowed: BTreeSet::from([("stale_agent".to_owned(), ROGUE.to_owned())]),
            label,
        })
    }

    fn station(&self, id: &str) -> &Station {
        self.stations.iter().find(|s| s.agent_id == id).unwrap()
    }

    /// After a case: the hub runs, says it is healthy, and every genuine station still running
    /// gets its new records cosigned, the hub holding all of them.
    async fn still_witnessed(&mut self, case: &str) {
        assert!(
            !self.hub.task.is_finished(),
            "{}: {case}: the hub stopped",
            self.label
        );
        for s in &mut self.stations {
            s.produce(4, 2).await;
            s.wait_cosigned(Duration::from_secs(30)).await;
            // The API's view is published just after the answers go out: give it a moment.
            let head = s.ledger.head().size;
            let api = self.hub.api;
            let whole = until(Duration::from_secs(5), || async {
                hub_size(api, &s.agent_id).await == head
            })
            .await;
            assert!(
                whole,
                "{}: {case}: {} not whole at the hub: {} of {head}",
                self.label,
                s.agent_id,
                hub_size(api, &s.agent_id).await
            );
        }
        let (status, body) = http_get(self.hub.api, "/healthz").await;
        assert_eq!(status, 200, "{}: {case}: /healthz: {body}", self.label);
        eprintln!("{}: {case}: genuine stations still witnessed", self.label);
    }

    /// Waits for the alert `kind` about `agent` and notes it as expected.
    async fn expect_alert(&mut self, kind: &str, agent: &str, case: &str) -> serde_json::Value {
        let Some(a) = wait_alert(self.hub.api, kind, agent, Duration::from_secs(15)).await else {
            let all = alerts(self.hub.api).await;
            panic!(
                "{}: {case}: no {kind} alert about {agent}; alerts: {all:?}",
                self.label
            );
        };
        self.raised.insert((kind.into(), agent.into()));
        self.allowed.insert((kind.into(), agent.into()));
        a
    }

    /// No alert the cases did not expect, and none at all about a genuine station unless
    /// expected.
    async fn no_other_alerts(&self, case: &str) {
        for a in alerts(self.hub.api).await {
            let key = (
                a["kind"].as_str().unwrap_or_default().to_owned(),
                a["agent_id"].as_str().unwrap_or_default().to_owned(),
            );
            let unknown = key.1 == "*";
            assert!(
                unknown || self.allowed.contains(&key),
                "{}: {case}: unexpected alert {a}",
                self.label
            );
        }
    }

    async fn metrics(&self) -> String {
        http_get(self.hub.api, "/metrics").await.1
    }

    /// Stops everything: the hub's run must end well (it never stopped on its own), the genuine
    /// stations' ledgers hold no alarm, and `ledger verify --config` over the hub's data is
    /// clean.
    ///
    /// Returns the codes of the alarms in the hub's own ledger.
    async fn finish(self) -> Vec<String> {
        let Scene {
            _dir,
            via,
            plant,
            hub,
            stations,
            label,
            ..
        } = self;
        for s in stations {
            let id = s.agent_id.clone();
            let data = s.stop().await;
            let alarms = alarms(&data);
            assert!(
                alarms.is_empty(),
                "{label}: alarms in {id}'s own ledger: {alarms:?}"
            );
        }
        hub.stop().await;
        drop(via);
        ledger_verify_clean(&plant, &[FLOW, TORQUE, ROGUE], &label);
        eprintln!("{label}: ledger verify --config clean");
        let codes: Vec<String> = alarms(&plant.hub_data)
            .into_iter()
            .map(|(code, _)| code)
            .collect();
        // Alerts reach the hub ledger folded (per kind and station, at most once a minute):
        // thousands of hostile messages cost it a handful of records.
        assert!(codes.len() <= 16, "{label}: hub ledger alarms: {codes:?}");
        codes
    }
}

/// `proofline-hub ledger verify --data-dir <hub data> --config <hub.toml>`, run as the shell
/// runs it (in-process: the same code path and exit status as the binary).
fn ledger_verify_clean(plant: &Plant, agents: &[&str], label: &str) {
    let config = plant.dir.join("verify-hub.toml");
    std::fs::write(&config, plant.hub_toml(agents, None, 0)).unwrap();
    let code = proofline_hub::cli::main_from([
        "proofline-hub".as_ref(),
        "ledger".as_ref(),
        "verify".as_ref(),
        "--data-dir".as_ref(),
        plant.hub_data.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert_eq!(
        code,
        std::process::ExitCode::SUCCESS,
        "{label}: ledger verify --config over the hub's data is not clean"
    );
}

// ---------------------------------------------------------------------------------------------
// Locked broker: an outsider, and a compromised station.

async fn locked(mosquitto: bool) {
    let Some(mut sc) = Scene::new(mosquitto, false).await else {
        return;
    };
    let broker = sc.broker.clone();
    let rogue_secret = secret(&sc.plant, ROGUE);
    let site = SITE;

    // Shown 6: nobody without a login gets in, nobody takes the hub's or a station's id.
    let case = "outsiders are refused at CONNECT";
    let hub_id = proofline_hub::acl::hub_client_id(site);
    let flow_id = proofline_hub::acl::station_client_id(site, FLOW);
    assert!(
        !connect_accepted(&broker, "outsider", None).await,
        "{case}: anonymous"
    );
    assert!(
        !connect_accepted(&broker, &hub_id, Some((&hub_id, "guess"))).await,
        "{case}: the hub's id with a guessed password"
    );
    assert!(
        !connect_accepted(&broker, &flow_id, Some((FLOW, &rogue_secret))).await,
        "{case}: another station's name with the rogue's secret"
    );
    let sessions = metric(&sc.metrics().await, "proofline_hub_mqtt_connections_total");
    // The embedded broker refuses a client id that is not the login's; Mosquitto (with
    // `use_username_as_clientid`) replaces it with the login's. Either way the hub keeps its
    // session.
    let took = connect_accepted(&broker, &hub_id, Some((ROGUE, &rogue_secret))).await;
    assert!(
        mosquitto || !took,
        "{case}: the hub's client id with the rogue's login"
    );
    sc.still_witnessed(case).await;
    let m = sc.metrics().await;
    assert_eq!(
        (
            metric(&m, "proofline_hub_mqtt_connections_total"),
            metric(&m, "proofline_hub_mqtt_connected")
        ),
        (sessions, 1),
        "{case}: the hub lost its session"
    );

    // The rogue connects afresh for each case: a refused PUBLISH costs it its connection on
    // the embedded broker, and its client would send it again on every reconnect.
    let rogue_id = proofline_hub::acl::station_client_id(site, ROGUE);
    let connect_rogue = || Attacker::connect(&broker, &rogue_id, Some((ROGUE, &rogue_secret)));
    let rogue = connect_rogue().await;
    let rogue_key = sc.plant.station_key(ROGUE);
    let flow = AgentTopics::new(site, FLOW);

    // Shown 6: nobody reads another station's records (CUI).
    let case = "a station subscribing to everything or to another station gets no data";
    for filter in [
        "#".to_owned(),
        "proofline/#".to_owned(),
        flow.records.clone(),
        flow.ack.clone(),
        format!("proofline/v1/{site}/+/records"),
    ] {
        rogue.subscribe(&filter).await;
    }
    sc.still_witnessed(case).await;
    let leaked: Vec<String> = rogue
        .inbox
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| t.clone())
        .filter(|t| !t.starts_with(&format!("proofline/v1/{site}/{ROGUE}/")))
        .collect();
    assert!(leaked.is_empty(), "{case}: the rogue read {leaked:?}");

    // Shown 7 and a station's key on another's topic: nothing reaches the other station or the
    // hub through the broker.
    let case = "a station publishing on another station's topics is stopped by the broker";
    drop(rogue);
    let rogue = connect_rogue().await;
    let ignored_before = sc
        .station(FLOW)
        .metrics
        .forward_ignored_answers
        .load(std::sync::atomic::Ordering::Relaxed);
    rogue
        .send([
            (
                flow.ack.clone(),
                AckMsg::V1(Ack::Resend { from: 0 }).encode(),
                false,
            ),
            (
                flow.records.clone(),
                envelope(&rogue_key, FLOW, u32::MAX, 0),
                false,
            ),
            (
                flow.status.clone(),
                online_status(&rogue_key, FLOW, 1),
                true,
            ),
            (hub_status_topic(site), vec![0; 8], true),
        ])
        .await;
    sc.still_witnessed(case).await;
    let ignored = sc
        .station(FLOW)
        .metrics
        .forward_ignored_answers
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(ignored, ignored_before, "{case}: an answer reached {FLOW}");
    sc.no_other_alerts(case).await;

    // Shown 1 and 2: hostile topic bytes do not stop the broker or the hub.
    let case = "9000-character and non-ASCII topics";
    let long = "x".repeat(9000);
    drop(rogue);
    let rogue = connect_rogue().await;
    rogue
        .send([
            (
                format!("proofline/v1/{site}/{long}/records"),
                vec![1],
                false,
            ),
            ("é/records".to_owned(), vec![1], false),
            (format!("proofline/v1/{site}/é/records"), vec![1], false),
            (
                format!("proofline/v1/{site}/{ROGUE}é/status"),
                vec![1],
                true,
            ),
        ])
        .await;
    sc.still_witnessed(case).await;

    // Garbage and truncated payloads on the topics the rogue may use: its own.
    let case = "garbage and truncated payloads on the rogue's own topics";
    let rogue_topics = AgentTopics::new(site, ROGUE);
    drop(rogue);
    let rogue = connect_rogue().await;
    let genuine_looking = envelope(&rogue_key, ROGUE, 1, now_micros() as u64);
    let mut msgs = Vec::new();
    for p in garbage()
        .into_iter()
        .chain(truncated_and_flipped(&genuine_looking, 24))
    {
        msgs.push((rogue_topics.records.clone(), p.clone(), false));
        msgs.push((rogue_topics.status.clone(), p, true));
    }
    rogue.send(msgs).await;
    sc.expect_alert("malformed", ROGUE, case).await;
    // The flipped bytes of a signed envelope break its signature.
    sc.expect_alert("bad_signature", ROGUE, case).await;
    sc.still_witnessed(case).await;

    // The rogue's key, claiming another station's id, on its own topic.
    let case = "the rogue's key naming another station";
    rogue
        .send([(
            rogue_topics.records.clone(),
            envelope(&rogue_key, FLOW, 1, 1),
            false,
        )])
        .await;
    sc.still_witnessed(case).await;
    for a in alerts(sc.hub.api).await {
        assert_ne!(a["agent_id"], FLOW, "{case}: an alert names {FLOW}: {a}");
    }

    // Shown 10: retained messages from anyone do not pile up.
    let case = "a retained-message flood";
    rogue
        .send((0..2000).map(|i| (rogue_topics.status.clone(), vec![i as u8; 32], true)))
        .await;
    drop(rogue);
    let rogue = connect_rogue().await;
    rogue
        .send((0..2000).map(|i| (format!("proofline/v1/{site}/{ROGUE}/r{i}"), vec![1], true)))
        .await;
    drop(rogue);
    sc.still_witnessed(case).await;
    // What a client with a station's login is given on subscribing to the whole tree: nothing
    // (it reads its ack topic only), whatever was retained.
    let probe = connect_rogue().await;
    probe.subscribe(&format!("proofline/v1/{site}/#")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let retained = probe.inbox.lock().unwrap().len();
    assert_eq!(
        retained, 0,
        "{case}: {retained} retained messages delivered"
    );
    drop(probe);

    // The embedded broker counts what it refused, on the hub's /metrics.
    if !mosquitto {
        let m = sc.metrics().await;
        for (name, at_least) in [
            ("proofline_hub_broker_refused_connects_total", 4),
            ("proofline_hub_broker_denied_publishes_total", 3),
            ("proofline_hub_broker_denied_subscribes_total", 4),
        ] {
            let n = metric(&m, name);
            assert!(n >= at_least, "{}: {name} is {n}", sc.label);
        }
    }

    slow_http_clients(&mut sc).await;

    sc.no_other_alerts("the end").await;
    sc.finish().await;
}

/// Shown 9: 3,000 clients that open a connection to the hub's API and never finish their
/// headers. Over the cap they are closed at once, the others at the header timeout; a genuine
/// request is answered; witnessing goes on.
async fn slow_http_clients(sc: &mut Scene) {
    const CLIENTS: usize = 3000;
    let case = "3,000 slow HTTP clients";
    raise_fd_limit(2 * CLIENTS as u64 + 1024);
    let api = sc.hub.api;
    let mut conns = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut s = tokio::net::TcpStream::connect(api).await.unwrap();
        let _ = tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /healthz HTTP/1.1\r\n").await;
        conns.push(s);
    }
    // While they hang: a genuine request is answered within the header timeout (retrying while
    // the cap is full), and the stations are witnessed.
    let answered = until(Duration::from_secs(20), || async {
        let Ok(mut s) = tokio::net::TcpStream::connect(api).await else {
            return false;
        };
        let auth = api_token(api).unwrap_or_default();
        let req = format!(
            "GET /api/v1/agents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {auth}\r\nConnection: close\r\n\r\n"
        );
        if tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes())
            .await
            .is_err()
        {
            return false;
        }
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
        out.starts_with(b"HTTP/1.1 200")
    })
    .await;
    assert!(
        answered,
        "{}: {case}: no answer to a genuine request",
        sc.label
    );
    for s in &mut sc.stations {
        s.produce(4, 2).await;
        s.wait_cosigned(Duration::from_secs(30)).await;
    }
    // Every one of them is closed by the hub within the header timeout (10 s) and a margin.
    let closes = conns.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 256];
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    });
    let handles: Vec<_> = closes.map(tokio::spawn).collect();
    let mut open = 0;
    for h in handles {
        open += usize::from(!h.await.unwrap());
    }
    assert_eq!(
        open, 0,
        "{}: {case}: {open} connections left open",
        sc.label
    );
    let refused = metric(
        &sc.metrics().await,
        "proofline_hub_http_refused_connections_total",
    );
    assert!(
        refused >= (CLIENTS - 256) as u64,
        "{}: {case}: only {refused} connections over the cap refused",
        sc.label
    );
    sc.still_witnessed(case).await;
}

/// Raises this process's open-file limit to at least `want` (up to the hard limit).
fn raise_fd_limit(want: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < want {
        assert!(
            hard >= want,
            "the suite needs {want} open files; the hard limit is {hard} (raise it: ulimit -Hn)"
        );
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Open broker: forgeries, replays and garbage reach the hub and the stations.

async fn open(mosquitto: bool) {
    let Some(mut sc) = Scene::new(mosquitto, true).await else {
        return;
    };
    let site = SITE;
    let broker = sc.broker.clone();
    let attacker = Attacker::connect(&broker, &format!("attacker-{}", free_port()), None).await;
    // Everything on the wire, from now on, is the attacker's to replay.
    attacker.subscribe("proofline/#").await;
    sc.still_witnessed("the attacker listens").await;
    let flow = AgentTopics::new(site, FLOW);
    let torque = AgentTopics::new(site, TORQUE);
    let rogue_key = sc.plant.station_key(ROGUE);
    let captured_batches = attacker.received(&flow.records);
    let captured_acks = attacker.received(&flow.ack);
    let captured_status = attacker.received(&torque.status);
    assert!(
        !captured_batches.is_empty() && !captured_acks.is_empty() && !captured_status.is_empty(),
        "the open broker delivers the stations' traffic to the attacker"
    );

    // Shown 1.
    let case = "a 9000-character station id";
    let dropped = metric(
        &sc.metrics().await,
        "proofline_hub_dropped_topic_messages_total",
    );
    let long = "x".repeat(9000);
    attacker
        .send((0..3).map(|_| {
            (
                format!("proofline/v1/{site}/{long}/records"),
                vec![1, 2, 3],
                false,
            )
        }))
        .await;
    sc.still_witnessed(case).await;
    let now = metric(
        &sc.metrics().await,
        "proofline_hub_dropped_topic_messages_total",
    );
    assert_eq!(now, dropped + 3, "{case}: dropped and counted");

    // Shown 2.
    let case = "non-ASCII topics";
    attacker
        .send([
            ("é".to_owned(), vec![1], false),
            (format!("proofline/v1/{site}/é/records"), vec![1], false),
            (format!("proofline/v1/{site}/flow-01/é"), vec![1], false),
        ])
        .await;
    sc.still_witnessed(case).await;

    // Shown 4: a batch with a forged boot, head or send time, from the captured genuine ones:
    // each change breaks the station's signature.
    let case = "forged boot, head and send time on a captured batch";
    let mut forged = Vec::new();
    for b in &captured_batches {
        let Ok(RecordsMsg::V2(batch)) = RecordsMsg::decode(b) else {
            panic!("{case}: a captured batch is not v2");
        };
        let env: Envelope = postcard::from_bytes(&batch.envelope.body.0).unwrap();
        for change in 0..3 {
            let mut e = env.clone();
            match change {
                0 => e.id.boot = u32::MAX,
                1 => e.head = 0,
                _ => e.sent_at += 3_600_000_000,
            }
            let mut b = batch.clone();
            b.envelope.body = postcard::to_stdvec(&e).unwrap().into();
            forged.push((flow.records.clone(), RecordsMsg::V2(b).encode(), false));
        }
    }
    attacker.send(forged).await;
    sc.expect_alert("bad_signature", FLOW, case).await;
    sc.still_witnessed(case).await;

    // Replay of old genuine batches: counted, not answered, nothing changes.
    let case = "replay of old genuine batches";
    let replays = metric(&sc.metrics().await, "proofline_hub_replayed_messages_total");
    attacker
        .send(
            captured_batches
                .iter()
                .map(|b| (flow.records.clone(), b.clone(), false)),
        )
        .await;
    sc.still_witnessed(case).await;
    let now = metric(&sc.metrics().await, "proofline_hub_replayed_messages_total");
    assert!(
        now >= replays + captured_batches.len() as u64,
        "{case}: {now} replays counted, {replays} before, {} replayed",
        captured_batches.len()
    );

    // Another station's key on this station's topic.
    let case = "a station's key used on another station's topic";
    attacker
        .send([
            (
                flow.records.clone(),
                envelope(&rogue_key, FLOW, 1, u64::MAX),
                false,
            ),
            (
                flow.records.clone(),
                envelope(&rogue_key, ROGUE, 1, u64::MAX),
                false,
            ),
            (
                flow.status.clone(),
                online_status(&rogue_key, FLOW, u64::MAX),
                true,
            ),
        ])
        .await;
    sc.expect_alert("bad_signature", FLOW, case).await;
    sc.still_witnessed(case).await;

    // Shown 8.
    let case = "3,000 unknown station ids";
    let forged = envelope(&rogue_key, FLOW, 1, 1);
    attacker
        .send((0..3000).map(|i| {
            (
                format!("proofline/v1/{site}/ghost-{i}/records"),
                forged.clone(),
                false,
            )
        }))
        .await;
    let ok = until(Duration::from_secs(30), || async {
        alerts(sc.hub.api)
            .await
            .iter()
            .any(|a| a["kind"] == "unknown_agent" && a["count"].as_u64() >= Some(3000))
    })
    .await;
    assert!(ok, "{}: {case}: one folded unknown_agent alert", sc.label);
    for (kind, agent) in sc.raised.clone() {
        assert!(
            wait_alert(sc.hub.api, &kind, &agent, Duration::ZERO)
                .await
                .is_some(),
            "{}: {case}: the flood evicted the {kind} alert about {agent}",
            sc.label
        );
    }
    sc.still_witnessed(case).await;

    // Shown 7 and forged Cosigned: answers not signed by the hub for this station and batch.
    let case = "forged and replayed answers on a station's ack topic";
    let ignored_before = sc
        .station(FLOW)
        .metrics
        .forward_ignored_answers
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut msgs = Vec::new();
    for i in 0..200u64 {
        let ack = match i % 3 {
            0 => Ack::Resend { from: 0 },
            1 => Ack::Rejected {
                code: RejectCode::Fork,
                reason: "forged".into(),
            },
            _ => Ack::Cosigned {
                note: "forged".into(),
            },
        };
        msgs.push((flow.ack.clone(), AckMsg::V1(ack.clone()).encode(), false));
        let body = AckBody {
            agent_id: FLOW.into(),
            answers: MsgId {
                boot: 1,
                counter: i,
            },
            ack,
        };
        msgs.push((
            flow.ack.clone(),
            AckMsg::V2(Signed::seal(DOMAIN_ACK, &body, &rogue_key)).encode(),
            false,
        ));
    }
    msgs.extend(
        captured_acks
            .iter()
            .map(|a| (flow.ack.clone(), a.clone(), false)),
    );
    let sent = msgs.len() as u64;
    attacker.send(msgs).await;
    sc.still_witnessed(case).await;
    let ignored = sc
        .station(FLOW)
        .metrics
        .forward_ignored_answers
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        ignored >= ignored_before + sent,
        "{case}: {} of {sent} answers ignored",
        ignored - ignored_before
    );

    // Garbage and truncated payloads on every topic.
    let case = "garbage and truncated payloads on every topic";
    let mut topics = vec![
        hub_status_topic(site),
        format!("proofline/v1/{site}"),
        format!("proofline/v1/{site}/{FLOW}"),
        format!("proofline/v1/{site}/{FLOW}/other"),
        format!("proofline/v1/other-site/{FLOW}/records"),
    ];
    for t in [&flow, &torque, &AgentTopics::new(site, ROGUE)] {
        topics.extend([t.records.clone(), t.status.clone(), t.ack.clone()]);
    }
    let mut payloads = garbage();
    payloads.extend(truncated_and_flipped(&captured_batches[0], 24));
    payloads.extend(truncated_and_flipped(&captured_status[0], 8));
    payloads.extend(truncated_and_flipped(&captured_acks[0], 8));
    let mut msgs = Vec::new();
    for t in &topics {
        for p in &payloads {
            msgs.push((t.clone(), p.clone(), false));
        }
    }
    attacker.send(msgs).await;
    for id in [FLOW, TORQUE, ROGUE] {
        sc.expect_alert("malformed", id, case).await;
    }
    sc.still_witnessed(case).await;
    sc.allowed.insert(("bad_signature".into(), TORQUE.into()));
    sc.allowed.insert(("bad_signature".into(), ROGUE.into()));

    // Shown 5: a dead station is not kept "online" by forged, unsigned or replayed statuses.
    let case = "a dead station kept online by forged statuses";
    let stopped = sc.stations.pop().unwrap();
    assert_eq!(stopped.agent_id, TORQUE);
    let data = stopped.stop().await;
    assert!(
        alarms(&data).is_empty(),
        "{case}: alarms in {TORQUE}'s ledger"
    );
    let keep_alive = {
        let (attacker, status, rogue_key) = (&attacker, torque.status.clone(), &rogue_key);
        let captured = captured_status.clone();
        async move {
            for i in 0..40u64 {
                let mut msgs = vec![
                    (
                        status.clone(),
                        AgentStatusMsg::V1(AgentStatus {
                            online: true,
                            version: "forged".into(),
                            boot: u32::MAX,
                            size: u64::MAX,
                        })
                        .encode(),
                        true,
                    ),
                    (status.clone(), online_status(rogue_key, TORQUE, i), true),
                ];
                msgs.extend(captured.iter().map(|c| (status.clone(), c.clone(), true)));
                attacker.send(msgs).await;
            }
        }
    };
    let (stale, ()) = tokio::join!(
        wait_alert(sc.hub.api, "stale_agent", TORQUE, Duration::from_secs(30)),
        keep_alive
    );
    assert!(
        stale.is_some(),
        "{}: {case}: no stale_agent alert",
        sc.label
    );
    sc.allowed.insert(("stale_agent".into(), TORQUE.into()));
    sc.still_witnessed(case).await;

    drop(attacker);
    sc.no_other_alerts("the end").await;
    let codes = sc.finish().await;
    let unknown = codes
        .iter()
        .filter(|c| *c == "witness.unknown_agent")
        .count();
    assert_eq!(
        unknown, 1,
        "one hub ledger record for 3,000 unknown ids: {codes:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Disk full on the hub: a real full filesystem.

async fn hub_disk_full(mosquitto: bool) {
    let dir = tempfile::tempdir().unwrap();
    let Some(via) = Via::new(mosquitto, dir.path()) else {
        return;
    };
    let plant = Plant::new(dir.path());
    let Some(_fs) = Tmpfs::mount(&plant.hub_data, 32) else {
        return;
    };
    let label = if mosquitto { "Mosquitto" } else { "embedded" };
    let broker = via.broker(&plant);
    let with_reserve = |mib: u64| {
        via.hub_toml(&plant, &[FLOW], 0).replacen(
            "[api]",
            &format!("min_free_mib = {mib}\n[api]"),
            1,
        )
    };
    let hub = Hub::start(&with_reserve(8)).await;
    let mut s = Station::start(&plant, FLOW, plant.hub_section(&broker, HEARTBEAT));
    s.produce(20, 5).await;
    s.wait_cosigned(Duration::from_secs(30)).await;

    // Another program fills the disk to 4 MiB short of full: below the hub's reserve (8 MiB).
    // The hub takes no new batches, says why, and stays up; the station keeps its records.
    let filler = fill_leaving(&plant.hub_data, 4 << 20);
    let alert = wait_alert(hub.api, "disk_low", "hub", Duration::from_secs(10)).await;
    let alert = alert.unwrap_or_else(|| panic!("{label}: no disk_low alert"));
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .contains("hub.min_free_mib"),
        "{alert}"
    );
    let before = *s.cosigned.borrow();
    s.produce(20, 5).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        *s.cosigned.borrow(),
        before,
        "{label}: a batch was taken below the reserve"
    );
    let (status, body) = http_get(hub.api, "/healthz").await;
    assert_eq!(status, 503, "{label}: /healthz below the reserve: {body}");
    assert!(body.contains("below the reserve"), "{body}");
    assert!(
        !hub.task.is_finished(),
        "{label}: the hub stopped below the reserve"
    );
    let deferred = metric(
        &http_get(hub.api, "/metrics").await.1,
        "proofline_hub_deferred_batches_total",
    );
    assert!(deferred > 0, "{label}: no deferred batch counted");

    // Room again: the hub takes the batches the station sends again, by itself.
    std::fs::remove_file(&filler).unwrap();
    s.wait_cosigned(Duration::from_secs(30)).await;
    assert_eq!(hub_size(hub.api, FLOW).await, s.ledger.head().size);
    let healthy = until(Duration::from_secs(10), || async {
        http_get(hub.api, "/healthz").await.0 == 200
    })
    .await;
    assert!(healthy, "{label}: /healthz after the disk has room again");
    hub.stop().await;
    eprintln!("{label}: below the reserve: {deferred} batches deferred, then all witnessed");

    // The disk fills to the last byte faster than the hub checks its reserve (once a second):
    // a commit may fail. The hub then stops with an error (exit status 1, its unit restarts it)
    // rather than answer for what it could not store; or its reserve catches it first.
    let hub = Hub::start(&with_reserve(1)).await;
    s.produce(5, 5).await;
    s.wait_cosigned(Duration::from_secs(30)).await;
    let filler = fill(&plant.hub_data);
    let cosigned = *s.cosigned.borrow();
    let mut outcome = None;
    for _ in 0..50 {
        s.produce(20, 5).await;
        if hub.task.is_finished() {
            outcome = Some("stopped");
            break;
        }
        // A hub started afresh: a disk_low alert is this one's.
        if wait_alert(hub.api, "disk_low", "hub", Duration::ZERO)
            .await
            .is_some()
        {
            outcome = Some("deferred");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hub = match outcome {
        Some("stopped") => {
            let result = tokio::time::timeout(Duration::from_secs(10), hub.task)
                .await
                .unwrap()
                .unwrap();
            let err = result.expect_err("a hub that cannot store stops with an error");
            eprintln!("{label}: disk full: the hub stopped: {err:#}");
            std::fs::remove_file(&filler).unwrap();
            // As its unit does.
            Hub::start(&with_reserve(1)).await
        }
        Some(_) => {
            eprintln!("{label}: disk full: the reserve stopped intake first");
            std::fs::remove_file(&filler).unwrap();
            hub
        }
        None => panic!("{label}: the hub went on as if it could store on a full disk"),
    };
    assert!(
        s.ledger.head().size > cosigned,
        "{label}: records past the hub's last answer stay with the station"
    );
    s.produce(5, 5).await;
    s.wait_cosigned(Duration::from_secs(60)).await;
    assert_eq!(hub_size(hub.api, FLOW).await, s.ledger.head().size);
    let data = s.stop().await;
    assert!(
        alarms(&data).is_empty(),
        "{label}: alarms in the station's ledger"
    );
    hub.stop().await;
    drop(via);
    ledger_verify_clean(&plant, &[FLOW], label);
}

/// A station's disk filling up (another program, a real tmpfs): below its reserve the station
/// takes no new results, says so in its signed heartbeat, and the hub raises `station_degraded`;
/// with room again it goes on, and the hub holds every record.
async fn station_disk_full(mosquitto: bool) {
    use proofline_tests::benchsim::{BenchOptions, FlowBench};
    let dir = tempfile::tempdir().unwrap();
    let Some(via) = Via::new(mosquitto, dir.path()) else {
        return;
    };
    let plant = Plant::new(dir.path());
    let data = plant.dir.join("flow-01-ledger");
    std::fs::create_dir(&data).unwrap();
    let Some(_fs) = Tmpfs::mount(&data, 16) else {
        return;
    };
    let label = if mosquitto { "Mosquitto" } else { "embedded" };
    let broker = via.broker(&plant);
    let hub = Hub::start(&via.hub_toml(&plant, &[FLOW], 0)).await;
    let bench = FlowBench::start(BenchOptions {
        results: u32::MAX,
        cycle: Duration::from_millis(20),
        ..BenchOptions::default()
    })
    .await
    .unwrap();
    plant.station_key(FLOW);
    let text = format!(
        "[station]\nsite = \"{SITE}\"\nagent_id = \"{FLOW}\"\ndata_dir = \"{}\"\nkey_file = \"{}\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n[storage]\nmin_free_mib = 4\ncheck_interval_secs = 1\n{}\n\
         [hub]\ncosigner_key = \"{}\"\nheartbeat_secs = 1\n[hub.mqtt]\nbroker = \"{broker}\"\n\
         username = \"{FLOW}\"\npassword_file = \"{}\"\n",
        data.display(),
        plant.dir.join(format!("{FLOW}.key")).display(),
        FlowBench::source_toml(bench.addr, 5, 500),
        plant.cosigner,
        plant.station_secret(FLOW).display(),
    );
    let (cfg, problems) = proofline_agent::config::AgentConfig::parse(&text).unwrap();
    assert!(
        problems.is_empty() && cfg.problems().is_empty(),
        "{problems:?}"
    );
    let plan = proofline_agent::config::AgentPlan::build(
        &cfg,
        proofline_common::hash::sha256(text.as_bytes()),
    )
    .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (ready, started) = tokio::sync::oneshot::channel();
    let agent = tokio::spawn(proofline_agent::run::run(
        plan,
        shutdown.clone(),
        proofline_agent::run::RunOptions {
            ready: Some(ready),
            ..Default::default()
        },
    ));
    let http = started.await.unwrap().http;
    let witnessed = until(Duration::from_secs(30), || async {
        hub_size(hub.api, FLOW).await > 10
    })
    .await;
    assert!(witnessed, "{label}: the station's results reach the hub");

    // 2 MiB left: below the station's reserve of 4 MiB.
    let filler = fill_leaving(&data, 2 << 20);
    let Some(alert) = wait_alert(hub.api, "station_degraded", FLOW, Duration::from_secs(20)).await
    else {
        panic!(
            "{label}: no station_degraded alert; alerts: {:?}",
            alerts(hub.api).await
        );
    };
    assert!(
        alert["message"].as_str().unwrap().contains("free"),
        "{label}: {alert}"
    );
    let (status, body) = http_get(http, "/healthz").await;
    assert_eq!(status, 503, "{label}: station /healthz: {body}");
    assert!(
        !agent.is_finished(),
        "{label}: the station stopped below its reserve"
    );

    // Room again: results flow, and the hub gets every one of them.
    std::fs::remove_file(&filler).unwrap();
    let acked = bench.acknowledged();
    let resumed = until(Duration::from_secs(30), || async {
        bench.acknowledged() > acked + 5
    })
    .await;
    assert!(resumed, "{label}: the station did not resume");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let head = station_records(&data).len() as u64;
    let results = station_records(&data)
        .iter()
        .filter(|r| {
            matches!(
                r.body(),
                proofline_common::record::Body::InspectionResult(_)
            )
        })
        .count() as u32;
    assert!(
        results >= bench.acknowledged(),
        "{label}: {results} results in the ledger, {} acknowledged",
        bench.acknowledged()
    );
    // The agent forwarded until its stop; the hub holds at least what it cosigned, and all of
    // it once the station sent its last batch.
    let held = hub_size(hub.api, FLOW).await;
    assert!(
        held > 10 && held <= head,
        "{label}: hub holds {held} of {head}"
    );
    hub.stop().await;
    drop(via);
    ledger_verify_clean(&plant, &[FLOW], label);
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_embedded_broker() {
    locked(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_mosquitto() {
    locked(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_embedded_broker() {
    open(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mosquitto() {
    open(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_disk_full_embedded_broker() {
    hub_disk_full(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_disk_full_mosquitto() {
    hub_disk_full(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn station_disk_full_embedded_broker() {
    station_disk_full(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn station_disk_full_mosquitto() {
    station_disk_full(true).await;
}
