//! Plans: a checked configuration in the types the running agent uses.
//!
//! [`AgentPlan::build`] runs every check of `check-config` (the file's and the machine's: the
//! key, the data directory) and turns the raw sections into plans: socket addresses, durations,
//! serial settings, enums. Nothing at run time reads a configuration string again or picks a
//! default of its own, and a plan that cannot be built is a list of problems with key paths, never
//! a panic.

use std::net::SocketAddr;
use std::path::PathBuf;

use proofline_common::config::{listen_addr, Problem};
use proofline_common::hash::Hash;
use proofline_common::note::NoteSigner;
use proofline_common::Origin;

use super::{AgentConfig, Source};
use crate::forward::ForwardPlan;
use crate::source::modbus::ModbusPlan;
use crate::source::open_protocol::OpPlan;
use crate::source::scanner::ScannerPlan;
use crate::source::serial_line::LinePlan;
use crate::station::binder::BinderConfig;
use crate::station::storage::StorageSection;

/// One source, checked.
#[derive(Debug, Clone)]
pub enum SourcePlan {
    /// Modbus TCP or RTU (the link says which).
    Modbus(ModbusPlan),
    SerialLine(LinePlan),
    Scanner(ScannerPlan),
    OpenProtocol(OpPlan),
}

impl SourcePlan {
    pub fn name(&self) -> &str {
        match self {
            SourcePlan::Modbus(p) => &p.cfg.name,
            SourcePlan::SerialLine(p) => &p.cfg.name,
            SourcePlan::Scanner(p) => &p.name,
            SourcePlan::OpenProtocol(p) => &p.name,
        }
    }

    fn new(s: &Source) -> Result<SourcePlan, String> {
        Ok(match s {
            Source::ModbusTcp(m) => SourcePlan::Modbus(ModbusPlan::new(m, false)?),
            Source::ModbusRtu(m) => SourcePlan::Modbus(ModbusPlan::new(m, true)?),
            Source::SerialLine(l) => SourcePlan::SerialLine(LinePlan::new(l)?),
            Source::Scanner(s) => SourcePlan::Scanner(ScannerPlan::new(s)?),
            Source::OpenProtocol(o) => SourcePlan::OpenProtocol(OpPlan::new(o)?),
        })
    }
}

/// Everything `run` needs, checked.
#[derive(Debug)]
pub struct AgentPlan {
    pub origin: Origin,
    /// The station's signing key, loaded and checked against `origin`.
    pub signer: NoteSigner,
    pub data_dir: PathBuf,
    pub http_listen: SocketAddr,
    /// Connection cap and timeouts of `/metrics` and `/healthz`.
    pub http_limits: proofline_common::http::HttpLimits,
    pub binder: BinderConfig,
    pub storage: StorageSection,
    /// Forwarding to the hub; without it the ledger stays local.
    pub hub: Option<ForwardPlan>,
    pub sources: Vec<SourcePlan>,
    /// The route interlock, when configured.
    pub interlock: Option<crate::interlock::InterlockPlan>,
    /// SHA-256 of the configuration file, recorded in the `Started` event.
    pub config_sha256: Hash,
}

impl AgentConfig {
    /// The sources' plans (what `probe` needs: no key, no data directory).
    pub fn source_plans(&self) -> Result<Vec<SourcePlan>, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut plans = Vec::new();
        for (i, s) in self.sources.iter().enumerate() {
            match SourcePlan::new(s) {
                Ok(p) => plans.push(p),
                Err(message) => problems.push(Problem {
                    path: format!("source[{i}] ({})", s.name()),
                    message,
                }),
            }
        }
        if problems.is_empty() {
            Ok(plans)
        } else {
            Err(problems)
        }
    }
}

impl AgentPlan {
    /// Checks `cfg` as `check-config` does and builds the plan; every problem found, with its key
    /// path, otherwise.
    pub fn build(cfg: &AgentConfig, config_sha256: Hash) -> Result<AgentPlan, Vec<Problem>> {
        let mut problems = cfg.problems();
        problems.extend(cfg.environment_problems());
        if !problems.is_empty() {
            return Err(problems);
        }
        let origin = cfg
            .origin()
            .map_err(|e| Problem::only("station.site/agent_id", e))?;
        let signer = crate::keyfile::load_for(&cfg.station.key_file, &origin, "station")
            .map_err(|e| Problem::only("station.key_file", e))?;
        let http_listen = listen_addr("http.listen", &cfg.http.listen)?;
        let hub = match &cfg.hub {
            Some(h) => Some(
                ForwardPlan::new(h, signer.clone(), &cfg.station.site, &cfg.station.agent_id)
                    .map_err(|e| Problem::only("hub", format!("{e:#}")))?,
            ),
            None => None,
        };
        Ok(AgentPlan {
            origin,
            signer,
            data_dir: cfg.station.data_dir.clone(),
            http_listen,
            http_limits: cfg
                .http
                .limits(&mut proofline_common::config::Problems::default()),
            binder: BinderConfig {
                scan_valid_micros: (cfg.binder.scan_valid_secs > 0)
                    .then(|| cfg.binder.scan_valid_secs as i64 * 1_000_000),
                one_result_per_scan: cfg.binder.one_result_per_scan,
            },
            storage: cfg.storage.clone(),
            hub,
            sources: cfg.source_plans()?,
            interlock: cfg.interlock.as_ref().and_then(|i| {
                i.plan(
                    &cfg.sources,
                    cfg.hub.is_some(),
                    &mut proofline_common::config::Problems::default(),
                )
            }),
            config_sha256,
        })
    }
}
