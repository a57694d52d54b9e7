//! The hub's configuration (`config/hub.example.toml`): read into raw structs, then checked as a
//! whole so `check-config` lists every problem with its key path (DESIGN §6).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use proofline_common::config::{check_listen, listen_addr, ConfigError, Problem, Problems};
use proofline_common::http::HttpLimits;
use proofline_common::mqtt::MqttSection;
use proofline_common::note::VerifierKey;
use proofline_common::Origin;
use serde::Deserialize;

use crate::reconcile::rules::{
    CharacteristicSection, PartTypeSection, ReconcileSection, Rules, StationSection,
};
use crate::witness::Enrolled;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    pub hub: HubSection,
    #[serde(default)]
    pub broker: BrokerSection,
    /// How the hub reaches an external broker (`broker.type = "external"`).
    #[serde(default)]
    pub mqtt: Option<MqttSection>,
    #[serde(default)]
    pub api: ApiSection,
    #[serde(default)]
    pub witness: WitnessSection,
    /// Agents enrolled in this file (more can be enrolled with `proofline-hub agent enroll`).
    #[serde(default)]
    pub agent: Vec<AgentEntry>,
    /// Findings rules (`reference/traceability.md`).
    #[serde(default)]
    pub reconcile: ReconcileSection,
    /// Part types and their routes.
    #[serde(default)]
    pub part_type: Vec<PartTypeSection>,
    /// What the rules know of each station.
    #[serde(default)]
    pub station: Vec<StationSection>,
    /// What the rules know of each characteristic.
    #[serde(default)]
    pub characteristic: Vec<CharacteristicSection>,
    /// The central QMS the results are delivered to (none: no delivery).
    #[serde(default)]
    pub qms: Option<crate::qms::QmsSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSection {
    /// Site part of every origin the hub witnesses: `proofline/<site>/<agent_id>`.
    pub site: String,
    pub data_dir: PathBuf,
    /// The hub's private key (`proofline-hub keygen`); it cosigns agent checkpoints and signs
    /// the hub's own ledger.
    pub key_file: PathBuf,
    /// Free space the data directory's file system must keep. Below it the hub takes no new
    /// batches (the stations keep them and send them again) and `/healthz` says why, rather
    /// than writing until the disk is full and a commit fails.
    #[serde(default = "default_min_free_mib")]
    pub min_free_mib: u64,
}

fn default_min_free_mib() -> u64 {
    256
}

/// Largest `hub.min_free_mib` (1 EiB): more is a typo.
const MAX_MIN_FREE_MIB: u64 = 1 << 40;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    /// `embedded` (rumqttd inside the hub) or `external` (the `[mqtt]` section says where).
    #[serde(rename = "type", default = "default_broker_type")]
    pub kind: String,
    /// Plain MQTT listener of the embedded broker.
    #[serde(default = "default_broker_listen")]
    pub listen: String,
    /// Kept so existing files still read; `true` is refused (the plain listener is loopback
    /// only).
    #[serde(default)]
    pub allow_non_loopback: bool,
    /// Mutual-TLS listener of the embedded broker (client certificates required).
    #[serde(default)]
    pub tls: Option<BrokerTls>,
    /// Largest in-flight QoS 1 window per connection.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: usize,
    /// Most MQTT connections open at once on each listener of the embedded broker (sessions
    /// and connections still in the TLS handshake alike); more are closed at once.
    #[serde(default = "default_broker_max_connections")]
    pub max_connections: usize,
    /// Most connections open at once from one IP address on each listener.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
}

fn default_broker_type() -> String {
    "embedded".into()
}
fn default_broker_listen() -> String {
    "127.0.0.1:1883".into()
}
fn default_max_inflight() -> usize {
    100
}
fn default_broker_max_connections() -> usize {
    1024
}
fn default_max_connections_per_ip() -> usize {
    32
}

impl Default for BrokerSection {
    fn default() -> Self {
        BrokerSection {
            kind: default_broker_type(),
            listen: default_broker_listen(),
            allow_non_loopback: false,
            tls: None,
            max_inflight: default_max_inflight(),
            max_connections: default_broker_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerTls {
    pub listen: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA that signed the agents' client certificates.
    pub client_ca_file: PathBuf,
    /// Certificate revocation lists of `client_ca_file`'s CA (PEM, one or more CRLs as
    /// `openssl ca -gencrl` writes them, or one DER CRL). Re-read within seconds of a change:
    /// new connections with a revoked certificate are refused and connected ones closed. While
    /// the file is unusable or past its nextUpdate, new TLS connections are refused.
    #[serde(default)]
    pub crl_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Loopback only: the API has no user accounts yet, so it is never served to the network
    /// (a TLS reverse proxy with its own access control can be put in front).
    #[serde(default = "default_api_listen")]
    pub listen: String,
    /// Kept so existing files still read; `true` is refused until the API has users.
    #[serde(default)]
    pub allow_non_loopback: bool,
    /// Connections served at once; more are closed as soon as they are accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a client has to send a request's headers.
    #[serde(default = "default_header_read_timeout_secs")]
    pub header_read_timeout_secs: u64,
    /// A connection on which nothing moves for this long is closed.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// HTTPS: the server certificate chain (PEM, leaf first) and its private key (PEM). With
    /// them the web app and API may listen on the plant network; the files are read again
    /// within seconds of a change (a renewed certificate needs no restart).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// A signed-in session unused for this long ends (1 to 240).
    #[serde(default = "default_session_idle_mins")]
    pub session_idle_mins: u64,
    /// A session ends this long after its sign-in, used or not (1 to 24).
    #[serde(default = "default_session_max_hours")]
    pub session_max_hours: u64,
}

fn default_session_idle_mins() -> u64 {
    15
}
fn default_session_max_hours() -> u64 {
    8
}

fn default_api_listen() -> String {
    "127.0.0.1:8480".into()
}
fn default_max_connections() -> usize {
    proofline_common::http::DEFAULT_MAX_CONNECTIONS
}
fn default_header_read_timeout_secs() -> u64 {
    proofline_common::http::DEFAULT_HEADER_READ_TIMEOUT_SECS
}
fn default_idle_timeout_secs() -> u64 {
    proofline_common::http::DEFAULT_IDLE_TIMEOUT_SECS
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: default_api_listen(),
            allow_non_loopback: false,
            max_connections: default_max_connections(),
            header_read_timeout_secs: default_header_read_timeout_secs(),
            idle_timeout_secs: default_idle_timeout_secs(),
            tls_cert_file: None,
            tls_key_file: None,
            session_idle_mins: default_session_idle_mins(),
            session_max_hours: default_session_max_hours(),
        }
    }
}

impl ApiSection {
    /// The API's connection limits, with every problem of their settings added to `p`.
    pub fn limits(&self, p: &mut Problems) -> HttpLimits {
        HttpLimits::check(
            p,
            "api",
            self.max_connections,
            self.header_read_timeout_secs,
            self.idle_timeout_secs,
        )
    }

    /// The sessions' idle and absolute timeouts, with their problems added to `p`.
    pub fn session_timeouts(&self, p: &mut Problems) -> (std::time::Duration, std::time::Duration) {
        if !(1..=240).contains(&self.session_idle_mins) {
            p.add(
                "api.session_idle_mins",
                format!("{} is outside 1 to 240", self.session_idle_mins),
            );
        }
        if !(1..=24).contains(&self.session_max_hours) {
            p.add(
                "api.session_max_hours",
                format!("{} is outside 1 to 24", self.session_max_hours),
            );
        }
        (
            std::time::Duration::from_secs(self.session_idle_mins.clamp(1, 240) * 60),
            std::time::Duration::from_secs(self.session_max_hours.clamp(1, 24) * 3600),
        )
    }

    /// The certificate and key files, when HTTPS is configured.
    pub fn tls(&self) -> Option<(PathBuf, PathBuf)> {
        Some((self.tls_cert_file.clone()?, self.tls_key_file.clone()?))
    }

    /// HTTPS may listen anywhere; plain HTTP serves loopback only (passwords and session
    /// cookies never cross the plant network in the clear), whatever `allow_non_loopback` says.
    fn check_listen(&self, p: &mut Problems) {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => p.add("api.tls_key_file", "is needed with api.tls_cert_file"),
            (None, Some(_)) => p.add("api.tls_cert_file", "is needed with api.tls_key_file"),
            (Some(c), Some(k)) => {
                if let Err(e) = proofline_common::http::ReloadingCert::load(c, k) {
                    p.add("api.tls_cert_file", e);
                }
            }
            (None, None) => {}
        }
        match listen_addr("api.listen", &self.listen) {
            Err(mut problems) => p.0.append(&mut problems),
            Ok(a) if !a.ip().is_loopback() && self.tls().is_none() => p.add(
                "api.listen",
                format!(
                    "{a} is not loopback: plain HTTP serves loopback only; set api.tls_cert_file and api.tls_key_file to serve HTTPS on the plant network"
                ),
            ),
            Ok(_) => {}
        }
        if self.allow_non_loopback {
            p.add(
                "api.allow_non_loopback",
                "must be false: plain HTTP serves loopback only (configure HTTPS with api.tls_cert_file and api.tls_key_file)",
            );
        }
        self.limits(p);
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessSection {
    /// Alert when an enrolled agent has sent nothing (not even a heartbeat) for this long.
    #[serde(default = "default_stale_after_secs")]
    pub stale_after_secs: u64,
    /// Alert when an agent's clock is further off than this.
    #[serde(default = "default_max_clock_skew_secs")]
    pub max_clock_skew_secs: u64,
    /// Alert when records missing from an agent's ledger have not arrived after this long.
    #[serde(default = "default_gap_alert_after_secs")]
    pub gap_alert_after_secs: u64,
}

fn default_stale_after_secs() -> u64 {
    60
}
fn default_max_clock_skew_secs() -> u64 {
    120
}
fn default_gap_alert_after_secs() -> u64 {
    30
}

impl Default for WitnessSection {
    fn default() -> Self {
        WitnessSection {
            stale_after_secs: default_stale_after_secs(),
            max_clock_skew_secs: default_max_clock_skew_secs(),
            gap_alert_after_secs: default_gap_alert_after_secs(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    pub agent_id: String,
    /// The agent's verifier key, as `proofline-agent keygen` prints it.
    pub key: String,
}

/// Whether the embedded broker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Embedded,
    External,
}

impl BrokerKind {
    pub fn parse(s: &str) -> Result<BrokerKind, String> {
        match s {
            "embedded" => Ok(BrokerKind::Embedded),
            "external" => Ok(BrokerKind::External),
            other => Err(format!("{other:?} is not embedded or external")),
        }
    }
}

impl HubConfig {
    pub fn load(path: &Path) -> Result<HubConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg = HubConfig::parse(&text).map_err(|message| ConfigError::Syntax {
            path: path.to_owned(),
            message,
        })?;
        let problems = cfg.problems();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    pub fn parse(text: &str) -> Result<HubConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', "\n  "))
    }

    pub fn origin(&self) -> Result<Origin, String> {
        Origin::hub(&self.hub.site).map_err(|e| e.to_string())
    }

    /// `broker.type`, checked.
    pub fn broker_kind(&self) -> Result<BrokerKind, String> {
        BrokerKind::parse(&self.broker.kind)
    }

    /// The broker the hub's own client connects to: the `[mqtt]` section for an external
    /// broker, the embedded broker's plain listener otherwise.
    pub fn client_mqtt(&self) -> MqttSection {
        match (self.broker_kind(), &self.mqtt) {
            (Ok(BrokerKind::External), Some(m)) => m.clone(),
            _ => MqttSection::plain(self.broker.listen.clone()),
        }
    }

    /// The agents enrolled in the file, checked.
    pub fn enrolled(&self) -> Result<Vec<Enrolled>, String> {
        self.agent
            .iter()
            .enumerate()
            .map(|(i, a)| {
                enrolled(&self.hub.site, &a.agent_id, &a.key)
                    .map_err(|e| format!("agent[{i}].key: {e}"))
            })
            .collect()
    }

    /// The findings rules, with the problems of their sections (and which stations' results
    /// go to the QMS).
    pub fn rules(&self, p: &mut Problems) -> Rules {
        let mut r = Rules::from_config(
            &self.reconcile,
            &self.part_type,
            &self.station,
            &self.characteristic,
            p,
        );
        if let Some(q) = self.qms_plan(p) {
            r.qms_stations = q.stations.keys().cloned().collect();
        }
        r
    }

    /// The QMS mapping, checked, when there is a `[qms]` section.
    pub fn qms_plan(&self, p: &mut Problems) -> Option<crate::qms::QmsPlan> {
        self.qms.as_ref().map(|q| q.plan(p))
    }

    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        self.rules(&mut p);
        if let Err(e) = self.origin() {
            p.add("hub.site", e);
        }
        self.api.check_listen(&mut p);
        self.api.session_timeouts(&mut p);
        match self.broker_kind() {
            Ok(BrokerKind::Embedded) => {
                // The plain listener carries credentials in clear text: loopback only. Stations
                // on other machines use the TLS listener.
                if self.broker.allow_non_loopback {
                    p.add(
                        "broker.allow_non_loopback",
                        "true is refused: the plain MQTT listener serves loopback only (credentials would cross the network in clear text); stations on other machines use [broker.tls]",
                    );
                }
                check_listen(
                    &mut p,
                    "broker.listen",
                    &self.broker.listen,
                    false,
                    "broker.allow_non_loopback",
                );
                if let Some(t) = &self.broker.tls {
                    if t.listen.parse::<SocketAddr>().is_err() {
                        p.add("broker.tls.listen", format!("{:?} is not an address:port", t.listen));
                    }
                }
                if self.mqtt.is_some() {
                    p.add("mqtt", "[mqtt] is for broker.type = \"external\"");
                }
            }
            Ok(BrokerKind::External) => match &self.mqtt {
                Some(m) => m.check("mqtt", &mut p),
                None => p.add("mqtt", "broker.type = \"external\" needs an [mqtt] section with broker = \"host:port\""),
            },
            Err(e) => p.add("broker.type", e),
        }
        if self.broker.max_inflight == 0 || self.broker.max_inflight > u16::MAX as usize {
            p.add("broker.max_inflight", "must be 1 to 65535");
        }
        if !(2..=100_000).contains(&self.broker.max_connections) {
            p.add("broker.max_connections", "must be 2 to 100000");
        }
        if self.broker.max_connections_per_ip == 0
            || self.broker.max_connections_per_ip > self.broker.max_connections
        {
            p.add(
                "broker.max_connections_per_ip",
                "must be 1 to broker.max_connections",
            );
        }
        if !(1..=MAX_MIN_FREE_MIB).contains(&self.hub.min_free_mib) {
            p.add(
                "hub.min_free_mib",
                format!("must be 1 to {MAX_MIN_FREE_MIB}"),
            );
        }
        let w = &self.witness;
        if w.stale_after_secs < 5 {
            p.add(
                "witness.stale_after_secs",
                "must be at least 5 (agents send a heartbeat every few seconds)",
            );
        }
        if w.max_clock_skew_secs == 0 {
            p.add("witness.max_clock_skew_secs", "must be at least 1");
        }
        let mut ids = HashSet::new();
        for (i, a) in self.agent.iter().enumerate() {
            if !ids.insert(a.agent_id.clone()) {
                p.add(
                    &format!("agent[{i}].agent_id"),
                    format!("{:?} is enrolled twice", a.agent_id),
                );
            }
            if let Err(e) = enrolled(&self.hub.site, &a.agent_id, &a.key) {
                p.add(&format!("agent[{i}]"), e);
            }
        }
        p.0
    }

    /// Problems with what the configuration points at: the key file and the data directory.
    pub fn environment_problems(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        let origin = self.origin().ok();
        proofline_common::config::check_key_and_data_dir(
            &mut p,
            "hub",
            "hub",
            &self.hub.key_file,
            origin.as_ref(),
            &self.hub.data_dir,
        );
        if let Some(t) = &self.broker.tls {
            for (k, f) in [
                ("cert_file", &t.cert_file),
                ("key_file", &t.key_file),
                ("client_ca_file", &t.client_ca_file),
            ] {
                if let Err(e) = std::fs::metadata(f) {
                    p.add(&format!("broker.tls.{k}"), format!("{}: {e}", f.display()));
                }
            }
            if let Some(crl) = &t.crl_file {
                check_crl_file(&mut p, crl, &t.client_ca_file);
            }
        }
        if let (Ok(BrokerKind::External), Some(m)) = (self.broker_kind(), &self.mqtt) {
            m.environment_problems("mqtt", &mut p);
        }
        if let Some(q) = &self.qms {
            match std::fs::read_to_string(&q.password_file) {
                Ok(t) if t.trim().is_empty() => p.add(
                    "qms.password_file",
                    format!("{} is empty", q.password_file.display()),
                ),
                Ok(_) => {}
                Err(e) => p.add(
                    "qms.password_file",
                    format!("{}: {e}", q.password_file.display()),
                ),
            }
            if let Some(ca) = &q.ca_file {
                if let Err(e) = std::fs::metadata(ca) {
                    p.add("qms.ca_file", format!("{}: {e}", ca.display()));
                }
            }
        }
        p.0
    }
}

/// A CRL file is usable as the broker will use it: readable, CRLs of the client CA with a
/// valid signature, and not past its nextUpdate (the broker then refuses new TLS connections).
fn check_crl_file(p: &mut Problems, crl: &Path, ca: &Path) {
    let key = "broker.tls.crl_file";
    match rumqttd::check_crl_file(&crl.to_string_lossy(), &ca.to_string_lossy()) {
        Err(e) => p.add(key, e.to_string()),
        Ok(s) => {
            let now = std::time::SystemTime::now();
            if let Some(ago) = s.next_update.and_then(|t| now.duration_since(t).ok()) {
                p.add(
                    key,
                    format!(
                        "{}: expired, its nextUpdate passed {} min ago; issue a new one (openssl ca -gencrl)",
                        crl.display(),
                        ago.as_secs() / 60
                    ),
                );
            }
        }
    }
}

/// Checks an enrollment: the key parses and names exactly `proofline/<site>/<agent_id>`.
pub fn enrolled(site: &str, agent_id: &str, key: &str) -> Result<Enrolled, String> {
    let origin =
        Origin::parse(&format!("proofline/{site}/{agent_id}")).map_err(|e| e.to_string())?;
    if origin.agent_id() == "hub" {
        return Err("agent id \"hub\" is the hub's own".into());
    }
    let key = VerifierKey::parse(key).map_err(|e| e.to_string())?;
    if key.name() != origin.as_str() {
        return Err(format!("the key is for {}, not {origin}", key.name()));
    }
    Ok(Enrolled {
        agent_id: agent_id.to_owned(),
        origin,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_listener_is_loopback_only_whatever_allow_non_loopback_says() {
        let toml = |listen: &str, allow: bool| {
            format!(
                "[hub]\nsite = \"plant-1\"\ndata_dir = \"/tmp/x\"\nkey_file = \"/tmp/k\"\n[broker]\nlisten = \"{listen}\"\nallow_non_loopback = {allow}\n"
            )
        };
        let problems = |t: String| HubConfig::parse(&t).unwrap().problems();
        assert!(problems(toml("127.0.0.1:1883", false)).is_empty());
        let p = problems(toml("0.0.0.0:1883", true));
        assert!(
            p.iter()
                .any(|p| p.path == "broker.allow_non_loopback"
                    && p.message.contains("loopback only")),
            "{p:?}"
        );
        let p = problems(toml("127.0.0.1:1883", true));
        assert!(
            p.iter().any(|p| p.path == "broker.allow_non_loopback"),
            "{p:?}"
        );
        assert!(problems(toml("0.0.0.0:1883", false))
            .iter()
            .any(|p| p.path == "broker.listen"));
    }

    #[test]
    fn export_control_markings_are_checked_and_named() {
        let toml = |extra: &str| {
            format!(
                "[hub]\nsite = \"plant-1\"\ndata_dir = \"/tmp/x\"\nkey_file = \"/tmp/k\"\n[[part_type]]\nname = \"CRI\"\npart_numbers = [\"0445\"]\n{extra}"
            )
        };
        let problems = |extra: &str| {
            let cfg = HubConfig::parse(&toml(extra)).unwrap();
            let mut p = Problems::default();
            let rules = cfg.rules(&mut p);
            (p.0, rules.part_types[0].export_control.clone())
        };
        let (p, m) = problems("export_control = \"ITAR\"\nusml_category = \"XIX(f)\"\n");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(m.as_deref(), Some("ITAR USML XIX(f)"));
        let (p, m) = problems("export_control = \"EAR\"\neccn = \"9A619.x\"\n");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(m.as_deref(), Some("EAR ECCN 9A619.x"));
        assert_eq!(problems("").1, None);
        // Each mistake is named, and the part type stays controlled (never silently open).
        for (extra, path) in [
            ("export_control = \"ITAR\"\n", "part_type[0].usml_category"),
            (
                "export_control = \"EAR\"\nusml_category = \"XIX\"\n",
                "part_type[0].eccn",
            ),
            (
                "export_control = \"SECRET\"\n",
                "part_type[0].export_control",
            ),
            ("eccn = \"9A619.x\"\n", "part_type[0].export_control"),
        ] {
            let (p, m) = problems(extra);
            assert!(p.iter().any(|p| p.path == path), "{extra}: {p:?}");
            assert!(m.is_some(), "{extra}");
        }
    }

    #[test]
    fn every_problem_is_listed_with_its_key_path() {
        let cfg = HubConfig::parse(
            r#"
[hub]
site = "plant 1"
data_dir = "/tmp/x"
key_file = "/tmp/k"
[broker]
type = "cloud"
[api]
listen = "0.0.0.0:80"
[witness]
stale_after_secs = 1
[[agent]]
agent_id = "a"
key = "nonsense"
[[agent]]
agent_id = "a"
key = "nonsense"
"#,
        )
        .unwrap();
        let paths: Vec<String> = cfg.problems().into_iter().map(|p| p.path).collect();
        for want in [
            "hub.site",
            "api.listen",
            "broker.type",
            "witness.stale_after_secs",
            "agent[1].agent_id",
            "agent[0]",
        ] {
            assert!(
                paths.iter().any(|p| p == want),
                "{want} missing from {paths:?}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let e = HubConfig::parse(
            "[hub]\nsite = \"p\"\ndata_dir = \"/d\"\nkey_file = \"/k\"\nport = 3\n",
        )
        .unwrap_err();
        assert!(e.contains("port"), "{e}");
    }
}
