//! Connecting to an MQTT broker (the hub's embedded one or a plant's own): the `[mqtt]` settings
//! both programs share, their checks, and the jittered backoff rumqttc lacks (DESIGN §4, §7).

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{EventLoop, MqttOptions, TlsConfiguration, Transport};
use serde::Deserialize;

use crate::backoff::Backoff;
use crate::config::{is_host_port, Problems};

/// Largest MQTT packet either side accepts: a batch budget plus its checkpoint and framing.
pub const MAX_PACKET_BYTES: usize = 1 << 20;

/// How to reach the broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// `host:port` of the broker.
    pub broker: String,
    /// TLS to the broker. Plain MQTT to a non-loopback broker must be asked for with
    /// `allow_plain_non_loopback = true`.
    #[serde(default)]
    pub tls: Option<TlsSection>,
    #[serde(default)]
    pub allow_plain_non_loopback: bool,
    /// Optional username; the password is read from `password_file` (never from this file).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// MQTT keep-alive.
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// Reconnect backoff: first delay and cap (jittered, doubling).
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
}

fn default_keep_alive_secs() -> u64 {
    15
}
fn default_reconnect_min_ms() -> u64 {
    200
}
fn default_reconnect_max_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file of the CA that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate and key for mutual TLS.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

impl MqttSection {
    /// A section for a plain loopback broker (tests, the demo).
    pub fn plain(broker: impl Into<String>) -> Self {
        MqttSection {
            broker: broker.into(),
            tls: None,
            allow_plain_non_loopback: false,
            username: None,
            password_file: None,
            keep_alive_secs: default_keep_alive_secs(),
            reconnect_min_ms: default_reconnect_min_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
        }
    }

    /// Semantic problems, with key paths under `at`.
    pub fn check(&self, at: &str, p: &mut Problems) {
        if !is_host_port(&self.broker) {
            p.add(
                &format!("{at}.broker"),
                format!("{:?} is not host:port", self.broker),
            );
        } else if self.tls.is_none() && !self.allow_plain_non_loopback && !self.is_loopback() {
            p.add(
                &format!("{at}.broker"),
                format!(
                    "{} is not loopback; plain MQTT there needs [{at}.tls] or {at}.allow_plain_non_loopback = true",
                    self.broker
                ),
            );
        }
        if let Some(t) = &self.tls {
            if t.client_cert_file.is_some() != t.client_key_file.is_some() {
                p.add(
                    &format!("{at}.tls"),
                    "client_cert_file and client_key_file go together",
                );
            }
        }
        if self.username.is_some() != self.password_file.is_some() {
            p.add(
                &format!("{at}.username"),
                "username and password_file go together",
            );
        }
        if self.keep_alive_secs < 5 || self.keep_alive_secs > 600 {
            p.add(&format!("{at}.keep_alive_secs"), "must be 5 to 600");
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > self.reconnect_max_ms {
            p.add(
                &format!("{at}.reconnect_min_ms"),
                "must be at least 1 and at most reconnect_max_ms",
            );
        }
    }

    /// Problems with the files this section names (readable, PEM).
    pub fn environment_problems(&self, at: &str, p: &mut Problems) {
        let mut files = Vec::new();
        if let Some(t) = &self.tls {
            files.push(("tls.ca_file", &t.ca_file));
            if let Some(f) = &t.client_cert_file {
                files.push(("tls.client_cert_file", f));
            }
            if let Some(f) = &t.client_key_file {
                files.push(("tls.client_key_file", f));
            }
        }
        for (key, f) in files {
            match std::fs::read(f) {
                Ok(b) if b.windows(11).any(|w| w == b"-----BEGIN ") => {}
                Ok(_) => p.add(
                    &format!("{at}.{key}"),
                    format!("{} is not a PEM file", f.display()),
                ),
                Err(e) => p.add(&format!("{at}.{key}"), format!("{}: {e}", f.display())),
            }
        }
        if let Some(f) = &self.password_file {
            if let Err(e) = std::fs::read(f) {
                p.add(
                    &format!("{at}.password_file"),
                    format!("{}: {e}", f.display()),
                );
            }
        }
    }

    fn is_loopback(&self) -> bool {
        let host = self
            .broker
            .rsplit_once(':')
            .map_or("", |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// rumqttc options for a client with this id (keep-alive, packet size, TLS, credentials).
    pub fn options(&self, client_id: &str) -> anyhow::Result<MqttOptions> {
        use anyhow::Context;
        let (host, port) = self
            .broker
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .with_context(|| format!("broker {:?} is not host:port", self.broker))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let mut o = MqttOptions::new(client_id, host, port);
        o.set_keep_alive(Duration::from_secs(self.keep_alive_secs))
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        if let Some(t) = &self.tls {
            let read = |f: &PathBuf| {
                std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))
            };
            let ca = read(&t.ca_file)?;
            let client_auth = match (&t.client_cert_file, &t.client_key_file) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            };
            // rumqttc builds its rustls config with the process-wide provider. Naming *ring*
            // keeps that working if another crate ever enables a second provider (rustls then
            // refuses to pick one and panics on first use). Err means one is installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth,
            }));
        }
        if let (Some(u), Some(f)) = (&self.username, &self.password_file) {
            let pw = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            o.set_credentials(u.clone(), pw.trim_end_matches(['\r', '\n']));
        }
        Ok(o)
    }

    pub fn backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.reconnect_min_ms),
            Duration::from_millis(self.reconnect_max_ms),
        )
    }
}

/// A checked MQTT section, ready to connect. The broker address and the files were checked when
/// the plan was built (the options were built once then); each connection builds its options
/// again, so a renewed certificate or password file is taken at the next reconnect.
#[derive(Debug, Clone)]
pub struct MqttPlan {
    /// The broker's `host:port`, for logs.
    pub broker: String,
    section: MqttSection,
}

impl MqttPlan {
    /// Builds the plan of a section that passed its checks; an unreadable TLS or password file
    /// is an error naming the file.
    pub fn new(section: &MqttSection) -> anyhow::Result<MqttPlan> {
        section.options("proofline")?;
        Ok(MqttPlan {
            broker: section.broker.clone(),
            section: section.clone(),
        })
    }

    /// The options of one connection as `client_id`, with the TLS material and credentials as
    /// the files hold them now.
    pub fn options(&self, client_id: &str) -> anyhow::Result<MqttOptions> {
        self.section.options(client_id)
    }

    pub fn backoff(&self) -> Backoff {
        self.section.backoff()
    }
}

/// Socket options for every Proofline MQTT connection: `TCP_NODELAY`, so a batch or an ack is
/// not held back by Nagle's algorithm waiting for a delayed ACK (about 40 ms per hop otherwise).
pub fn tune(events: &mut EventLoop) {
    let mut n = events.network_options();
    n.set_tcp_nodelay(true);
    events.set_network_options(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_mqtt_off_loopback_needs_tls_or_consent() {
        let mut p = Problems::default();
        MqttSection::plain("10.0.0.5:1883").check("mqtt", &mut p);
        assert_eq!(p.0.len(), 1, "{:?}", p.0);
        assert!(p.0[0].message.contains("not loopback"));
        let mut p = Problems::default();
        MqttSection::plain("127.0.0.1:1883").check("mqtt", &mut p);
        MqttSection::plain("localhost:1883").check("mqtt", &mut p);
        assert!(p.0.is_empty(), "{:?}", p.0);
        let mut p = Problems::default();
        MqttSection::plain("nohost").check("mqtt", &mut p);
        assert_eq!(p.0[0].path, "mqtt.broker");
    }
}
