//! The embedded broker against an attacker on the plant network (DESIGN §7, availability): each
//! test makes one attack with a raw socket, then shows that the broker is still up and a genuine
//! station is still witnessed (or a genuine client still publishes to a subscriber).
//!
//! Attacks: topics and filters that are not ASCII or not valid, an idle connection to the TLS
//! listener, running the hub out of file descriptors, too many connections from one address,
//! an oversized client id, retained messages outside the status topics, a client that goes
//! silent. Everything binds loopback addresses and stops by itself.
//!
//! The in-process hubs here run their broker unlocked (`Hub::start_unlocked`): these bounds hold
//! for every client, an authenticated one too (a station's credential may be stolen), and the
//! raw sockets send no login. `broker_acl.rs` tests the lock itself.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use proofline_common::mqtt::{MqttSection, TlsSection};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

// ---------------------------------------------------------------------------------------------
// Raw MQTT 3.1.1 packets, written by hand so they can be wrong on purpose.

fn remaining_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return;
        }
    }
}

fn packet(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![byte1];
    remaining_length(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn connect_packet(client_id: &[u8], keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    field(&mut body, b"MQTT");
    body.push(4); // protocol level 3.1.1
    body.push(0x02); // clean session
    body.extend_from_slice(&keep_alive.to_be_bytes());
    field(&mut body, client_id);
    packet(0x10, &body)
}

fn publish_packet(topic: &[u8], payload: &[u8], retain: bool) -> Vec<u8> {
    let mut body = Vec::new();
    field(&mut body, topic);
    body.extend_from_slice(payload);
    packet(0x30 | u8::from(retain), &body)
}

fn subscribe_packet(pkid: u16, filter: &[u8]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    field(&mut body, filter);
    body.push(0);
    packet(0x82, &body)
}

/// A TCP connection to `to`, from `from` when given (any loopback address works on Linux).
async fn tcp(to: SocketAddr, from: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(to).await
}

/// What the broker answered to a CONNECT.
#[derive(Debug, PartialEq)]
enum Answer {
    /// CONNACK with this return code (0: accepted).
    ConnAck(u8),
    /// The connection was closed without a CONNACK.
    Closed,
}

async fn read_connack(s: &mut TcpStream) -> Answer {
    let mut buf = [0u8; 4];
    match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf)).await {
        Ok(Ok(_)) if buf[0] == 0x20 => Answer::ConnAck(buf[3]),
        Ok(Ok(_)) => panic!("not a CONNACK: {buf:?}"),
        Ok(Err(_)) => Answer::Closed,
        Err(_) => panic!("the broker neither answered nor closed within 10 s"),
    }
}

/// Sends a CONNECT and returns the connection and the broker's answer.
async fn raw_connect(
    to: SocketAddr,
    from: Option<IpAddr>,
    client_id: &[u8],
    keep_alive: u16,
) -> (TcpStream, Answer) {
    let mut s = tcp(to, from).await.unwrap();
    s.write_all(&connect_packet(client_id, keep_alive))
        .await
        .unwrap();
    let answer = read_connack(&mut s).await;
    (s, answer)
}

/// Whether the broker closes `s` within `within` (reading and dropping whatever it sends).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let read_to_end = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_to_end).await.is_ok()
}

// ---------------------------------------------------------------------------------------------
// Genuine clients.

/// A genuine client subscribes to a topic of its own, another publishes on it (QoS 1); the
/// subscriber must receive it. Panics (with `what`) otherwise.
async fn genuine_round_trip(broker: SocketAddr, tag: &str) {
    let topic = format!("probe/{tag}");
    let options = |id: String| {
        let mut o = MqttOptions::new(id, broker.ip().to_string(), broker.port());
        o.set_keep_alive(Duration::from_secs(5));
        o
    };
    let (sub, mut sub_loop) = AsyncClient::new(options(format!("probe-sub-{tag}")), 10);
    let (publ, mut pub_loop) = AsyncClient::new(options(format!("probe-pub-{tag}")), 10);
    let run = async {
        sub.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = sub_loop.poll().await.unwrap() {
                break;
            }
        }
        publ.publish(&topic, QoS::AtLeastOnce, false, b"hello".to_vec())
            .await
            .unwrap();
        let publisher = tokio::spawn(async move {
            loop {
                if pub_loop.poll().await.is_err() {
                    return;
                }
            }
        });
        loop {
            if let Event::Incoming(Packet::Publish(p)) = sub_loop.poll().await.unwrap() {
                assert_eq!(p.topic, topic);
                assert_eq!(&p.payload[..], b"hello");
                break;
            }
        }
        publisher.abort();
    };
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .unwrap_or_else(|_| panic!("{tag}: a genuine client got nothing through within 20 s"));
}

/// A genuine station's client (its enrollment credential) connects and subscribes to its ack
/// topic, at a broker that holds everyone to the ACL.
async fn genuine_station_subscribes(plant: &Plant, broker: SocketAddr, tag: &str) {
    let secret = std::fs::read_to_string(plant.station_secret("st-01")).unwrap();
    let mut o = MqttOptions::new(
        format!("proofline-agent-{SITE}-st-01"),
        broker.ip().to_string(),
        broker.port(),
    );
    o.set_keep_alive(Duration::from_secs(5))
        .set_credentials("st-01", secret.trim());
    let (c, mut events) = AsyncClient::new(o, 10);
    c.subscribe(format!("proofline/v1/{SITE}/st-01/ack"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let run = async {
        loop {
            if let Event::Incoming(Packet::SubAck(a)) = events.poll().await.unwrap() {
                assert_eq!(
                    a.return_codes,
                    vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
                );
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .unwrap_or_else(|_| panic!("{tag}: a genuine station got nothing through within 20 s"));
}

/// A genuine station forwards 20 results and the hub cosigns them all.
async fn genuine_station_witnessed(plant: &Plant, hub: &Hub, agent_id: &str, broker: &str) {
    let mut station = Station::start(plant, agent_id, plant.hub_section(broker, 1));
    station.produce(20, 5).await;
    station.wait_cosigned(Duration::from_secs(30)).await;
    assert_eq!(hub_size(hub.api, agent_id).await, 20);
    station.stop().await;
}

fn broker_addr(plant: &Plant) -> SocketAddr {
    plant.broker().parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1. Topics and filters.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_filters_that_are_not_ascii_or_not_valid_do_not_stop_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let hub = Hub::start_unlocked(&plant.hub_toml(&["st-01"], None, 0)).await;
    let broker = broker_addr(&plant);

    let topics: Vec<&[u8]> = vec![
        "é".as_bytes(),
        "é/x".as_bytes(),
        "€uro/status".as_bytes(),
        "😀".as_bytes(),
        "proofline/v1/plant-1/é/records".as_bytes(),
        b"",
        b"#",
        b"+",
        b"a/#/b",
        b"a/+",
        b"$SYS/x",
        b"\xff\xfe",
        b"a\0b",
        b"/",
        b"//",
    ];
    let filters: Vec<&[u8]> = vec![
        "é/#".as_bytes(),
        "é".as_bytes(),
        "+/é".as_bytes(),
        "😀/+".as_bytes(),
        b"",
        b"a/#/b",
        b"a#",
        b"a/b+",
        b"$share/g/",
        b"$share/",
        "$share/é".as_bytes(),
        b"\xff",
        b"#/#",
    ];
    for (i, topic) in topics.iter().enumerate() {
        for retain in [false, true] {
            let (mut s, answer) =
                raw_connect(broker, None, format!("attacker-t{i}").as_bytes(), 30).await;
            assert_eq!(answer, Answer::ConnAck(0));
            let _ = s.write_all(&publish_packet(topic, b"x", retain)).await;
            let _ = s.write_all(&publish_packet(b"x/y", b"x", false)).await;
            // Give the router the packet before the next one; then close.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for (i, filter) in filters.iter().enumerate() {
        let (mut s, answer) =
            raw_connect(broker, None, format!("attacker-f{i}").as_bytes(), 30).await;
        assert_eq!(answer, Answer::ConnAck(0));
        let _ = s.write_all(&subscribe_packet(1, filter)).await;
        // A publish after the subscription makes the router match against the filter.
        let _ = s
            .write_all(&publish_packet("é/x".as_bytes(), b"x", false))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    genuine_round_trip(broker, "after-topics").await;
    genuine_station_witnessed(&plant, &hub, "st-01", &plant.broker()).await;
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. TLS handshake.

/// A certificate authority: its certificate and the key it signs with.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// Signs a leaf certificate (no organization: rumqttd would take it as a tenant); writes
    /// `<name>.pem` and `<name>.key` into `dir`.
    fn issue(
        &self,
        dir: &Path,
        name: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_to_the_tls_listener_do_not_block_stations() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = Ca::new("Proofline plant-1 CA");
    let ca_file = pki.join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let server = ca.issue(
        &pki,
        "hub",
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let good = ca.issue(&pki, "st-01", &[], ExtendedKeyUsagePurpose::ClientAuth);

    let tls_port = free_port();
    let tls_broker = format!("127.0.0.1:{tls_port}");
    let mut toml = plant.hub_toml(&["st-01"], None, 0);
    toml.push_str(&format!(
        "[broker.tls]\nlisten = \"{tls_broker}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
        server.0.display(),
        server.1.display(),
        ca_file.display()
    ));
    let hub = Hub::start_unlocked(&toml).await;

    // Idle connections: no ClientHello at all, and one that stops half-way through it.
    let tls_addr: SocketAddr = tls_broker.parse().unwrap();
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tcp(tls_addr, None).await.unwrap());
    }
    let mut partial = tcp(tls_addr, None).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    idle.push(partial);

    // A station with the plant's certificate connects while they hang.
    let mut mqtt = MqttSection::plain(&tls_broker);
    mqtt.reconnect_max_ms = 1000;
    mqtt.tls = Some(TlsSection {
        ca_file: ca_file.clone(),
        client_cert_file: Some(good.0.clone()),
        client_key_file: Some(good.1.clone()),
    });
    let (_client, mut eventloop) = AsyncClient::new(mqtt.options("st-01-probe").unwrap(), 10);
    let connack = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    assert!(
        matches!(connack, Ok(Ok(()))),
        "a station with a good certificate was not accepted while idle connections hung: {connack:?}"
    );
    drop(eventloop);

    // The idle connections are closed after the connection timeout (10 s in the hub).
    for s in &mut idle {
        assert!(
            closed_within(s, Duration::from_secs(30)).await,
            "an idle TLS connection was kept open"
        );
    }

    let mut hs = plant.hub_section(&tls_broker, 1);
    hs.mqtt = mqtt;
    let mut station = Station::start(&plant, "st-01", hs);
    station.produce(20, 5).await;
    station.wait_cosigned(Duration::from_secs(30)).await;
    station.stop().await;
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. File descriptors run out.

/// The hub as a process with at most `nofile` open files (set by util-linux `prlimit`), logging
/// to `log`. None (with the reason printed) when `prlimit` is missing.
fn spawn_hub_with_nofile(config: &Path, log: &Path, nofile: u32) -> Option<tokio::process::Child> {
    let found = std::process::Command::new("prlimit")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return None;
    }
    let log = std::fs::File::create(log).unwrap();
    Some(
        tokio::process::Command::new("prlimit")
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_proofline-hub"))
            .args(["run", "--config"])
            .arg(config)
            .env("PROOFLINE_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap(),
    )
}

fn lines(p: &Path) -> usize {
    std::fs::read(p)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_does_not_flood_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let api_port = free_port();
    let config = dir.path().join("hub.toml");
    std::fs::write(&config, plant.hub_toml(&["st-01"], None, api_port)).unwrap();
    let log = dir.path().join("hub.log");
    let Some(mut child) = spawn_hub_with_nofile(&config, &log, 128) else {
        return;
    };
    let api: SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    assert!(
        until(Duration::from_secs(20), || async move {
            TcpStream::connect(api).await.is_ok()
        })
        .await,
        "the hub did not come up with 128 files; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let broker = broker_addr(&plant);
    genuine_station_subscribes(&plant, broker, "before").await;

    // Far more connections than the hub has descriptors; they are never used. The kernel
    // keeps completing handshakes into the listen backlog, so accept() keeps failing.
    let mut held = Vec::new();
    for _ in 0..300 {
        match tcp(broker, None).await {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    assert!(
        held.len() > 150,
        "only {} connections were made",
        held.len()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = lines(&log);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logged = lines(&log) - before;
    assert!(
        logged < 1000,
        "{logged} log lines in 2 s while out of file descriptors"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the hub exited while out of file descriptors"
    );

    drop(held);
    genuine_station_subscribes(&plant, broker, "after").await;
    child.kill().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 4. Limits on connections and state.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_one_address_are_capped_and_others_still_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let mut toml = plant.hub_toml(&["st-01"], None, 0);
    toml = toml.replacen(
        "[broker]\n",
        "[broker]\nmax_connections_per_ip = 4\nmax_connections = 64\n",
        1,
    );
    let hub = Hub::start_unlocked(&toml).await;
    let broker = broker_addr(&plant);
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();

    let mut held = Vec::new();
    let mut accepted = 0;
    for i in 0..12 {
        let (s, answer) =
            raw_connect(broker, Some(attacker), format!("flood-{i}").as_bytes(), 60).await;
        if answer == Answer::ConnAck(0) {
            accepted += 1;
        }
        held.push(s);
    }
    assert_eq!(accepted, 4, "connections accepted from one address");

    // Idle sockets that never send a CONNECT count too.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(tcp(broker, Some(attacker)).await.unwrap());
    }
    for s in &mut idle {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "a connection over the limit was kept open"
        );
    }

    // More than the listener's total, from many addresses: the ones over it are closed, and
    // the places are free again once they go.
    let mut others = Vec::new();
    for k in 3..=80u8 {
        let from: IpAddr = format!("127.0.1.{k}").parse().unwrap();
        others.push(tcp(broker, Some(from)).await.unwrap());
    }
    drop(others);
    tokio::time::sleep(Duration::from_millis(500)).await;

    genuine_round_trip(broker, "after-flood").await;
    genuine_station_witnessed(&plant, &hub, "st-01", &plant.broker()).await;
    drop(held);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_over_128_bytes_and_a_zero_keep_alive_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let hub = Hub::start_unlocked(&plant.hub_toml(&["st-01"], None, 0)).await;
    let broker = broker_addr(&plant);

    let (_s, answer) = raw_connect(broker, None, &[b'a'; 128], 30).await;
    assert_eq!(answer, Answer::ConnAck(0), "a 128-byte client id is fine");
    for id in [vec![b'a'; 129], vec![b'b'; 65_535]] {
        let (_s, answer) = raw_connect(broker, None, &id, 30).await;
        assert_ne!(
            answer,
            Answer::ConnAck(0),
            "a {}-byte client id was accepted",
            id.len()
        );
    }
    let (_s, answer) = raw_connect(broker, None, b"no-keep-alive", 0).await;
    assert_ne!(answer, Answer::ConnAck(0), "a keep-alive of 0 was accepted");
    let (_s, answer) = raw_connect(broker, None, b"huge-keep-alive", u16::MAX).await;
    assert_ne!(
        answer,
        Answer::ConnAck(0),
        "a keep-alive of 18 hours was accepted"
    );

    genuine_round_trip(broker, "after-ids").await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_silent_is_disconnected_after_one_and_a_half_keep_alives() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let hub = Hub::start_unlocked(&plant.hub_toml(&["st-01"], None, 0)).await;
    let broker = broker_addr(&plant);

    let (mut silent, answer) = raw_connect(broker, None, b"silent", 2).await;
    assert_eq!(answer, Answer::ConnAck(0));
    // Subscribed, so the broker has something to send it: receiving does not keep it alive.
    silent
        .write_all(&subscribe_packet(1, b"probe/#"))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let chatter = tokio::spawn(async move {
        for _ in 0..40 {
            genuine_round_trip(broker, "chatter").await;
        }
    });
    assert!(
        closed_within(&mut silent, Duration::from_secs(20)).await,
        "a client silent for 20 s with a keep-alive of 2 s was kept"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "disconnected before its keep-alive ran out"
    );
    chatter.abort();
    genuine_station_witnessed(&plant, &hub, "st-01", &plant.broker()).await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_kept_only_on_status_topics_and_only_so_many() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let hub = Hub::start_unlocked(&plant.hub_toml(&["st-01"], None, 0)).await;
    let broker = broker_addr(&plant);

    let (mut s, answer) = raw_connect(broker, None, b"retainer", 30).await;
    assert_eq!(answer, Answer::ConnAck(0));
    let mut burst = Vec::new();
    for topic in [
        "junk/a",
        "proofline/v1/plant-1/x1/records",
        "proofline/v1/plant-1/x1/ack",
        "proofline/v1/plant-1/x1/status/more",
        "proofline/v2/plant-1/x1/status",
        "proofline/v1/plant-1/x1/status",
    ] {
        burst.extend(publish_packet(topic.as_bytes(), b"kept?", true));
    }
    // Far more status topics than the broker keeps (10 000).
    for i in 0..10_100 {
        burst.extend(publish_packet(
            format!("proofline/v1/flood/a{i}/status").as_bytes(),
            b"x",
            true,
        ));
    }
    s.write_all(&burst).await.unwrap();
    // A round trip through the same connection: everything above has been routed.
    s.write_all(&subscribe_packet(7, b"nothing/here"))
        .await
        .unwrap();
    let mut suback = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut suback))
        .await
        .unwrap()
        .unwrap();

    // A new subscription gets the retained message of each topic it matches; one exact
    // filter per topic (the broker hands a new subscription at most 100 retained messages).
    let kept_topics = [
        "proofline/v1/plant-1/x1/status",
        "proofline/v1/flood/a0/status",
    ];
    let dropped_topics = [
        "junk/a",
        "proofline/v1/plant-1/x1/records",
        "proofline/v1/plant-1/x1/ack",
        "proofline/v1/plant-1/x1/status/more",
        "proofline/v2/plant-1/x1/status",
        // Beyond the count limit.
        "proofline/v1/flood/a10099/status",
    ];
    let mut o = MqttOptions::new("retain-reader", "127.0.0.1", plant.broker_port);
    o.set_keep_alive(Duration::from_secs(5));
    let (reader, mut eventloop) = AsyncClient::new(o, 100);
    for topic in kept_topics.iter().chain(&dropped_topics) {
        reader.subscribe(*topic, QoS::AtMostOnce).await.unwrap();
    }
    let mut retained = std::collections::BTreeSet::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = eventloop.poll().await.unwrap() {
                if p.retain {
                    retained.insert(p.topic.clone());
                }
            }
        }
    })
    .await;
    for topic in dropped_topics {
        assert!(!retained.contains(topic), "{topic} was retained");
    }
    for topic in kept_topics {
        assert!(retained.contains(topic), "{topic} was not retained");
    }
    drop(eventloop);

    genuine_station_witnessed(&plant, &hub, "st-01", &plant.broker()).await;
    hub.stop().await;
}
