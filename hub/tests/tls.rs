//! Mutual TLS on the embedded broker (DESIGN §7): a station whose client certificate the plant
//! CA signed forwards and is cosigned; a station without a client certificate, or with one from
//! another CA, is refused in the TLS handshake and the hub stores nothing of its ledger.
//!
//! Certificates are made here with rcgen. The hub's own client connects over the plain
//! loopback listener, as `run` does; only the stations use the TLS listener.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use proofline_common::mqtt::{MqttSection, TlsSection};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rumqttc::{AsyncClient, ConnectionError, Event, Packet};

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
