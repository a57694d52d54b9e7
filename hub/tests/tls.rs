//! Mutual TLS on the embedded broker (DESIGN §7): a station whose client certificate the plant
//! CA signed forwards and is cosigned; a station without a client certificate, or with one from
//! another CA, is refused in the TLS handshake and the hub stores nothing of its ledger.
//!
//! Revocation: a certificate listed in the CRL file (`broker.tls.crl_file`) is refused at new
//! connections and cut off if connected, within seconds of the file's change, without a restart;
//! an unusable CRL file never re-admits it.
//!
//! HTTPS on the web app and API: served with the configured certificate, required for a
//! non-loopback address, a renewed certificate taken without a restart, a broken one refused.
//!
//! Certificates and CRLs are made here with rcgen. The hub's own client connects over the plain
//! loopback listener, as `run` does; only the stations use the TLS listener.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use proofline_common::mqtt::{MqttSection, TlsSection};
use proofline_hub::config::HubConfig;
use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams,
    CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use rumqttc::{AsyncClient, ConnectionError, Event, Packet};

/// A certificate authority: its certificate and the key it signs with.
struct Ca {
    cert: Certificate,
    key: KeyPair,
    /// Serial numbers of the certificates issued, by name.
    serials: RefCell<HashMap<String, u64>>,
    next_serial: Cell<u64>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).unwrap();
        Ca {
            cert,
            key,
            serials: RefCell::default(),
            next_serial: Cell::new(1000),
        }
    }

    /// Signs a leaf certificate; writes `<name>.pem` and `<name>.key` into `dir`.
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
        // No organization (O): rumqttd with verify-client-cert takes it as a tenant id, which
        // must be alphanumeric and renames the client to "<O>.<client id>".
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![usage];
        let serial = self.next_serial.replace(self.next_serial.get() + 1);
        p.serial_number = Some(SerialNumber::from(serial));
        self.serials.borrow_mut().insert(name.to_owned(), serial);
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.cert.pem()).unwrap();
        path.to_owned()
    }

    /// A CRL (PEM) revoking the certificates issued to `revoked`, valid until `next_year`.
    fn crl_until(&self, revoked: &[&str], next_year: i32) -> String {
        let serials = self.serials.borrow();
        CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(next_year, 1, 1),
            crl_number: SerialNumber::from(self.next_serial.get()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|name| RevokedCertParams {
                    serial_number: SerialNumber::from(serials[*name]),
                    revocation_time: date_time_ymd(2024, 6, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.cert, &self.key)
        .unwrap()
        .pem()
        .unwrap()
    }

    /// A current CRL (PEM) revoking the certificates issued to `revoked`.
    fn crl(&self, revoked: &[&str]) -> String {
        self.crl_until(revoked, 2100)
    }
}

/// The `[hub.mqtt]` section of a station on the TLS listener, with an optional client identity.
fn tls_mqtt(broker: &str, ca_file: &Path, client: Option<&(PathBuf, PathBuf)>) -> MqttSection {
    let mut m = MqttSection::plain(broker);
    m.reconnect_max_ms = 1000;
    m.tls = Some(TlsSection {
        ca_file: ca_file.to_owned(),
        client_cert_file: client.map(|c| c.0.clone()),
        client_key_file: client.map(|c| c.1.clone()),
    });
    m
}

/// One MQTT connection attempt with the station's settings: Ok on CONNACK, else the error.
async fn connect_once(mqtt: &MqttSection, client_id: &str) -> Result<(), ConnectionError> {
    let (_client, mut eventloop) = AsyncClient::new(mqtt.options(client_id).unwrap(), 10);
    let attempt = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .expect("the broker neither accepted nor refused within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_stations_with_a_certificate_from_the_plant_ca_reach_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();

    let ca = Ca::new("Proofline plant-1 CA");
    let ca_file = ca.write(&pki.join("ca.pem"));
    let server = ca.issue(
        &pki,
        "hub",
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let good = ca.issue(&pki, "good-01", &[], ExtendedKeyUsagePurpose::ClientAuth);
    // Signed by a CA the hub does not trust: an impostor named like the plant CA, and one with
    // a name of its own. rustls finds the impostor's "issuer" among its roots by name, and then
    // the signature fails (alert DecryptError); the other is an unknown issuer (UnknownCA).
    let impostor_ca = Ca::new("Proofline plant-1 CA");
    let rogue = impostor_ca.issue(&pki, "rogue-01", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let other_ca = Ca::new("Some other plant CA");
    let other = other_ca.issue(&pki, "other-01", &[], ExtendedKeyUsagePurpose::ClientAuth);

    let tls_port = free_port();
    let tls_broker = format!("127.0.0.1:{tls_port}");
    let mut toml = plant.hub_toml(&["good-01", "nocert-01", "rogue-01"], None, 0);
    toml.push_str(&format!(
        "[broker.tls]\nlisten = \"{tls_broker}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
        server.0.display(),
        server.1.display(),
        ca_file.display()
    ));
    let hub = Hub::start(&toml).await;

    // The refusals are made in the TLS handshake; a station with the plant's certificate is
    // accepted with the very same settings otherwise (so the refusals are not a setup error).
    let with_cert = tls_mqtt(&tls_broker, &ca_file, Some(&good));
    let without_cert = tls_mqtt(&tls_broker, &ca_file, None);
    let wrong_ca = tls_mqtt(&tls_broker, &ca_file, Some(&rogue));
    let other_ca = tls_mqtt(&tls_broker, &ca_file, Some(&other));
    // The certificate (CN good-01) is the station's broker credential.
    connect_once(&with_cert, &format!("proofline-agent-{SITE}-good-01"))
        .await
        .unwrap();
    for (mqtt, id, alert) in [
        (&without_cert, "probe-nocert", "CertificateRequired"),
        (&wrong_ca, "probe-rogue", "DecryptError"),
        (&other_ca, "probe-other", "UnknownCA"),
    ] {
        let e = connect_once(mqtt, id)
            .await
            .expect_err("the broker accepted a client it should refuse");
        let text = format!("{e} / {e:?}");
        assert!(
            // rumqttc 0.25 reports an alert read after the handshake as a state error.
            matches!(
                e,
                ConnectionError::Io(_) | ConnectionError::Tls(_) | ConnectionError::MqttState(_)
            ),
            "{id}: {text}"
        );
        assert!(text.contains(alert), "{id}: expected {alert}: {text}");
    }

    let station = |id: &str, mqtt: MqttSection| {
        let mut hs = plant.hub_section(&tls_broker, 1);
        hs.mqtt = mqtt;
        Station::start(&plant, id, hs)
    };
    let mut a = station("good-01", with_cert);
    let b = station("nocert-01", without_cert);
    let c = station("rogue-01", wrong_ca);
    for s in [&a, &b, &c] {
        s.produce(50, 5).await;
    }
    let started = tokio::time::Instant::now();
    a.wait_cosigned(Duration::from_secs(30)).await;
    assert_eq!(hub_size(hub.api, "good-01").await, 50);

    // The refused stations keep retrying (with backoff) and never get through.
    tokio::time::sleep_until(started + Duration::from_secs(5)).await;
    for s in [&b, &c] {
        assert_eq!(*s.cosigned.borrow(), 0, "{} was cosigned", s.agent_id);
        assert_eq!(
            s.metrics.hub_connected.load(Ordering::Relaxed),
            0,
            "{} connected",
            s.agent_id
        );
        assert_eq!(hub_size(hub.api, &s.agent_id).await, 0, "{}", s.agent_id);
    }

    for s in [a, b, c] {
        s.stop().await;
    }
    hub.stop().await;
}

/// The `[broker.tls]` section of a hub whose listener checks the CRLs in `crl_file`.
fn tls_section(listen: &str, server: &(PathBuf, PathBuf), ca: &Path, crl: &Path) -> String {
    format!(
        "[broker.tls]\nlisten = \"{listen}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\ncrl_file = \"{}\"\n",
        server.0.display(),
        server.1.display(),
        ca.display(),
        crl.display()
    )
}

/// An MQTT connection kept open in the background; the receiver gets a value when the broker
/// closes it after it was accepted.
async fn hold_connection(
    mqtt: &MqttSection,
    client_id: &str,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Receiver<String>,
) {
    let (_client, mut eventloop) = AsyncClient::new(mqtt.options(client_id).unwrap(), 10);
    let (up_tx, up) = tokio::sync::oneshot::channel();
    let (down_tx, down) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let _client = _client;
        let mut up_tx = Some(up_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = up_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(e) if up_tx.is_none() => {
                    let _ = down_tx.send(e.to_string());
                    return;
                }
                Err(e) => panic!("{e}"),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), up)
        .await
        .expect("not accepted within 10 s")
        .unwrap();
    (task, down)
}

/// Waits (up to 15 s) until a connection attempt with `mqtt` gives `want` (true: accepted).
async fn until_connects(mqtt: &MqttSection, client_id: &str, want: bool) -> Option<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = connect_once(mqtt, client_id).await;
        let last = r.as_ref().err().map(|e| format!("{e} / {e:?}"));
        if r.is_ok() == want {
            return last;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{client_id}: still {} after 15 s: {last:?}",
            if want { "refused" } else { "accepted" }
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_station_certificate_is_refused_and_cut_off_within_seconds_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = Ca::new("Proofline plant-1 CA");
    let ca_file = ca.write(&pki.join("ca.pem"));
    let server = ca.issue(
        &pki,
        "hub",
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let stolen = ca.issue(&pki, "st-01", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let other = ca.issue(&pki, "st-02", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let crl_file = pki.join("clients.crl");
    std::fs::write(&crl_file, ca.crl(&[])).unwrap();

    let tls_broker = format!("127.0.0.1:{}", free_port());
    let mut toml = plant.hub_toml(&["st-01", "st-02"], None, 0);
    toml.push_str(&tls_section(&tls_broker, &server, &ca_file, &crl_file));
    let hub = Hub::start(&toml).await;

    let stolen_mqtt = tls_mqtt(&tls_broker, &ca_file, Some(&stolen));
    let other_mqtt = tls_mqtt(&tls_broker, &ca_file, Some(&other));
    let (stolen_id, other_id) = (
        format!("proofline-agent-{SITE}-st-01"),
        format!("proofline-agent-{SITE}-st-02"),
    );
    // Both genuine stations get in; the one whose certificate is about to be revoked stays
    // connected, and so does the other.
    connect_once(&stolen_mqtt, &stolen_id).await.unwrap();
    let (stolen_conn, stolen_down) = hold_connection(&stolen_mqtt, &stolen_id).await;
    let (other_conn, mut other_down) = hold_connection(&other_mqtt, &other_id).await;

    // Revoked by rewriting the file in place (as `openssl ca -gencrl -out` does).
    std::fs::write(&crl_file, ca.crl(&["st-01"])).unwrap();
    let refusal = until_connects(&stolen_mqtt, &stolen_id, false).await;
    assert!(
        refusal
            .as_deref()
            .is_some_and(|e| e.contains("CertificateRevoked")),
        "{refusal:?}"
    );
    // The connected one is cut off too.
    let closed = tokio::time::timeout(Duration::from_secs(15), stolen_down)
        .await
        .expect("the revoked station is still connected after 15 s");
    assert!(closed.is_ok());
    // The other station is untouched: still connected, and new connections with its
    // certificate are accepted (one replaces the held connection: same client id).
    assert!(
        other_down.try_recv().is_err(),
        "the other station was cut off"
    );
    other_conn.abort();
    connect_once(&other_mqtt, &other_id).await.unwrap();
    let (other_conn, mut other_down) = hold_connection(&other_mqtt, &other_id).await;

    // A CRL file damaged while running (a half-written copy, here garbage) is never "no CRL":
    // new TLS connections are refused until it is usable again, and the revoked certificate
    // stays out all along. Connections already up are judged by the last good list: the other
    // station stays connected.
    std::fs::write(&crl_file, "-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(connect_once(&other_mqtt, &other_id).await.is_err());
    assert!(connect_once(&stolen_mqtt, &stolen_id).await.is_err());
    std::fs::remove_file(&crl_file).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(connect_once(&other_mqtt, &other_id).await.is_err());
    assert!(connect_once(&stolen_mqtt, &stolen_id).await.is_err());
    assert!(
        other_down.try_recv().is_err(),
        "the other station was cut off"
    );

    // Fixed: the other station connects again; the revoked one does not.
    std::fs::write(&crl_file, ca.crl(&["st-01"])).unwrap();
    until_connects(&other_mqtt, &other_id, true).await;
    let e = connect_once(&stolen_mqtt, &stolen_id).await.unwrap_err();
    assert!(format!("{e:?}").contains("CertificateRevoked"), "{e:?}");

    stolen_conn.abort();
    other_conn.abort();
    hub.stop().await;
}

#[test]
fn a_crl_file_that_cannot_be_used_is_a_config_error_naming_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = Ca::new("Proofline plant-1 CA");
    let ca_file = ca.write(&pki.join("ca.pem"));
    let server = ca.issue(
        &pki,
        "hub",
        &["localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let other_ca = Ca::new("Some other plant CA");
    // Named like the plant CA, with a key of its own.
    let impostor_ca = Ca::new("Proofline plant-1 CA");

    let problem = |name: &str, content: Option<&str>| {
        let crl = pki.join(name);
        if let Some(c) = content {
            std::fs::write(&crl, c).unwrap();
        }
        let mut toml = plant.hub_toml(&[], None, 0);
        toml.push_str(&tls_section("127.0.0.1:8883", &server, &ca_file, &crl));
        let cfg = HubConfig::parse(&toml).unwrap();
        // The hub does not start with it.
        let problems = proofline_hub::plan::HubPlan::build(&cfg).unwrap_err();
        let p: Vec<_> = problems
            .iter()
            .filter(|p| p.path == "broker.tls.crl_file")
            .collect();
        assert_eq!(p.len(), 1, "{name}: {problems:?}");
        assert!(
            p[0].message.contains(&crl.display().to_string()),
            "{name}: {}",
            p[0].message
        );
        p[0].message.clone()
    };
    let ok = pki.join("ok.crl");
    std::fs::write(&ok, ca.crl(&[])).unwrap();
    let mut toml = plant.hub_toml(&[], None, 0);
    toml.push_str(&tls_section("127.0.0.1:8883", &server, &ca_file, &ok));
    assert!(HubConfig::parse(&toml)
        .unwrap()
        .environment_problems()
        .is_empty());
    // DER is read too.
    let der = pki.join("ok.der");
    let pem = ca.crl(&[]);
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine as _;
    std::fs::write(
        &der,
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap();
    let mut toml = plant.hub_toml(&[], None, 0);
    toml.push_str(&tls_section("127.0.0.1:8883", &server, &ca_file, &der));
    assert!(HubConfig::parse(&toml)
        .unwrap()
        .environment_problems()
        .is_empty());

    for (name, content, want) in [
        ("missing.crl", None, "cannot read"),
        ("garbage.crl", Some("not a CRL at all"), "CRL 1"),
        (
            "cert.crl",
            Some(std::fs::read_to_string(&ca_file).unwrap().as_str()),
            "no X509 CRL",
        ),
        (
            "other-ca.crl",
            Some(other_ca.crl(&[]).as_str()),
            "not by the client CA",
        ),
        (
            "impostor.crl",
            Some(impostor_ca.crl(&[]).as_str()),
            "signature does not verify",
        ),
        (
            "expired.crl",
            Some(ca.crl_until(&[], 2025).as_str()),
            "expired",
        ),
    ] {
        let m = problem(name, content);
        assert!(m.contains(want), "{name}: {m}");
    }
}

/// The certificate an HTTPS server presents (trusting `ca`), and its answer to `GET path`.
async fn https_get(addr: std::net::SocketAddr, ca: &Path, path: &str) -> (Vec<u8>, String) {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    (served, String::from_utf8_lossy(&out).into_owned())
}

fn der_of(pem_file: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(pem_file)
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_app_serves_https_and_takes_a_renewed_certificate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = Ca::new("Proofline plant-1 CA");
    let ca_file = ca.write(&pki.join("ca.pem"));
    let (cert, key) = ca.issue(
        &pki,
        "web",
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let port = free_port();
    let tls = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let toml = plant.hub_toml(&["flow-01"], None, port).replacen(
        "[witness]\n",
        &format!("{tls}[witness]\n"),
        1,
    );
    // With HTTPS the web app may listen on the plant network; without, it may not.
    let anywhere = toml.replace(&format!("127.0.0.1:{port}"), &format!("0.0.0.0:{port}"));
    let problems = HubConfig::parse(&anywhere).unwrap().problems();
    assert!(
        problems.iter().all(|p| !p.path.starts_with("api.")),
        "{problems:?}"
    );
    let plain = anywhere.replace(&tls, "");
    let problems = HubConfig::parse(&plain).unwrap().problems();
    assert!(
        problems
            .iter()
            .any(|p| p.path == "api.listen" && p.message.contains("tls_cert_file")),
        "{problems:?}"
    );
    // A key that is not the certificate's is named.
    let (_, other_key) = ca.issue(
        &pki,
        "other",
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let mismatched = toml.replace(&key.display().to_string(), &other_key.display().to_string());
    let problems = HubConfig::parse(&mismatched).unwrap().problems();
    assert!(
        problems.iter().any(|p| p.path == "api.tls_cert_file"),
        "{problems:?}"
    );

    let hub = Hub::start(&toml).await;
    let addr = hub.api;
    let first = der_of(&cert);
    let (served, answer) = https_get(addr, &ca_file, "/signin").await;
    assert_eq!(served, first);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("Secure; SameSite=Strict"), "{answer}");
    // Plain HTTP on the HTTPS port gets no page.
    let (status, _) = http_get(addr, "/signin").await;
    assert_ne!(status, 200);

    // Renewed in place: served from the next handshake on.
    let (cert2, _) = ca.issue(
        &pki,
        "web",
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    assert_eq!(cert2, cert);
    let second = der_of(&cert);
    assert_ne!(first, second);
    let mut renewed = false;
    for _ in 0..100 {
        if https_get(addr, &ca_file, "/healthz").await.0 == second {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        renewed,
        "the renewed certificate was not served within 10 s"
    );
    // A broken file is refused; the certificate in use stays.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(https_get(addr, &ca_file, "/healthz").await.0, second);
    hub.stop().await;
}
