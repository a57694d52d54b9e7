//! The hub's plan: a checked configuration in the types the running hub uses.
//!
//! [`HubPlan::build`] runs every check of `check-config` (the file's and the machine's: the key,
//! the data directory, the TLS files) and turns the raw sections into socket addresses,
//! durations and enums. Nothing at run time reads a configuration string again or picks a
//! default of its own.

use std::net::SocketAddr;
use std::path::PathBuf;

use proofline_common::config::{listen_addr, Problem, Problems};
use proofline_common::http::HttpLimits;
use proofline_common::mqtt::MqttPlan;
use proofline_common::note::NoteSigner;
use proofline_common::Origin;

use crate::config::{BrokerKind, HubConfig};
use crate::witness::{Enrolled, WitnessConfig};

/// The embedded broker's listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerPlan {
    /// Plain MQTT (loopback unless allowed otherwise).
    pub listen: SocketAddr,
    pub tls: Option<TlsListener>,
    /// Largest in-flight QoS 1 window per connection.
    pub max_inflight: usize,
    /// Most connections open at once on each listener.
    pub max_connections: usize,
    /// Most connections open at once from one IP address on each listener.
    pub max_connections_per_ip: usize,
}

/// A mutual-TLS listener: the broker's certificate and key, and the CA of the stations'
/// client certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListener {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: PathBuf,
    /// Revocation lists for the client certificates, re-read when the file changes.
    pub crl_file: Option<PathBuf>,
}

/// Everything `run` needs, checked.
#[derive(Debug)]
pub struct HubPlan {
    pub origin: Origin,
    pub site: String,
    /// The hub's key: it cosigns station checkpoints and signs the hub's own ledger.
    pub signer: NoteSigner,
    pub data_dir: PathBuf,
    /// Free space the data directory's file system keeps (`hub.min_free_mib`), in bytes.
    pub min_free_bytes: u64,
    pub api_listen: SocketAddr,
    /// The API's connection cap and timeouts (`[api]`); `ApiServer::run_with` takes them.
    pub api_limits: HttpLimits,
    /// HTTPS certificate and key files (None: plain HTTP on loopback).
    pub api_tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Web sessions: idle and absolute timeouts.
    pub session_idle: std::time::Duration,
    pub session_max: std::time::Duration,
    /// The embedded broker; None when the hub uses an external one.
    pub broker: Option<BrokerPlan>,
    /// How the hub's own client reaches the broker.
    pub mqtt: MqttPlan,
    pub max_inflight: u16,
    /// Stations enrolled in the configuration file (they keep their configured keys).
    pub enrolled: Vec<Enrolled>,
    pub witness: WitnessConfig,
    /// The findings rules and routes.
    pub rules: std::sync::Arc<crate::reconcile::rules::Rules>,
    /// Delivery to the central QMS, when configured.
    pub qms: Option<crate::qms::QmsPlan>,
}

impl HubPlan {
    /// Checks `cfg` as `check-config` does and builds the plan; every problem found, with its key
    /// path, otherwise.
    pub fn build(cfg: &HubConfig) -> Result<HubPlan, Vec<Problem>> {
        let mut problems = cfg.problems();
        problems.extend(cfg.environment_problems());
        if !problems.is_empty() {
            return Err(problems);
        }
        let origin = cfg.origin().map_err(|e| Problem::only("hub.site", e))?;
        let signer = proofline_common::keyfile::load_for(&cfg.hub.key_file, &origin, "hub")
            .map_err(|e| Problem::only("hub.key_file", e))?;
        let broker = match cfg
            .broker_kind()
            .map_err(|e| Problem::only("broker.type", e))?
        {
            BrokerKind::External => None,
            BrokerKind::Embedded => Some(BrokerPlan {
                listen: listen_addr("broker.listen", &cfg.broker.listen)?,
                tls: match &cfg.broker.tls {
                    Some(t) => Some(TlsListener {
                        listen: listen_addr("broker.tls.listen", &t.listen)?,
                        cert_file: t.cert_file.clone(),
                        key_file: t.key_file.clone(),
                        client_ca_file: t.client_ca_file.clone(),
                        crl_file: t.crl_file.clone(),
                    }),
                    None => None,
                },
                max_inflight: cfg.broker.max_inflight,
                max_connections: cfg.broker.max_connections,
                max_connections_per_ip: cfg.broker.max_connections_per_ip,
            }),
        };
        let secs = |s: u64| s as i64 * 1_000_000;
        Ok(HubPlan {
            origin,
            site: cfg.hub.site.clone(),
            signer,
            data_dir: cfg.hub.data_dir.clone(),
            min_free_bytes: cfg.hub.min_free_mib.saturating_mul(1024 * 1024),
            api_listen: listen_addr("api.listen", &cfg.api.listen)?,
            api_limits: cfg.api.limits(&mut Problems::default()),
            api_tls: cfg.api.tls(),
            session_idle: cfg.api.session_timeouts(&mut Problems::default()).0,
            session_max: cfg.api.session_timeouts(&mut Problems::default()).1,
            broker,
            mqtt: MqttPlan::new(&cfg.client_mqtt())
                .map_err(|e| Problem::only("mqtt", format!("{e:#}")))?,
            max_inflight: u16::try_from(cfg.broker.max_inflight)
                .map_err(|_| Problem::only("broker.max_inflight", "must be 1 to 65535"))?,
            enrolled: cfg.enrolled().map_err(|e| Problem::only("agent", e))?,
            rules: std::sync::Arc::new(cfg.rules(&mut Default::default())),
            qms: cfg.qms_plan(&mut Default::default()),
            witness: WitnessConfig {
                max_clock_skew_micros: secs(cfg.witness.max_clock_skew_secs),
                gap_alert_after_micros: secs(cfg.witness.gap_alert_after_secs),
                stale_after_micros: secs(cfg.witness.stale_after_secs),
            },
        })
    }
}
