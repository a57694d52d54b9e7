//! The agent's configuration: TOML as written by a technician (`config/agent.example.toml`),
//! read into raw structs, then checked as a whole.
//!
//! Reading stops at the first syntax or type error (the TOML parser names its line and key);
//! checking then collects *every* semantic problem with its key path, e.g.
//! `source[1].point[2].upper: 60.1 is below lower 62.0`, so one `check-config` run shows a
//! technician everything to fix. Keys are snake_case with units in the name.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::source::registers::{PointType, WordOrder};
use proofline_common::Origin;

mod check;
mod plan;

pub use plan::{AgentPlan, SourcePlan};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub station: Station,
    pub binder: BinderSection,
    pub http: HttpSection,
    /// Forwarding to the hub; without it the station keeps its ledger locally only.
    pub hub: Option<crate::forward::HubSection>,
    pub storage: crate::station::storage::StorageSection,
    pub sources: Vec<Source>,
    /// The route interlock, when this station asks the hub before each test.
    pub interlock: Option<crate::interlock::InterlockSection>,
}

/// The file as read: sources stay tables until their `type` says what they are, so that an
/// error inside one names its key and the others are still checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    station: Station,
    #[serde(default)]
    binder: BinderSection,
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    hub: Option<crate::forward::HubSection>,
    #[serde(default)]
    storage: crate::station::storage::StorageSection,
    #[serde(default)]
    source: Vec<toml::Table>,
    #[serde(default)]
    interlock: Option<crate::interlock::InterlockSection>,
}

fn source_from_table(mut t: toml::Table) -> Result<Source, String> {
    let ty = match t.remove("type") {
        Some(toml::Value::String(s)) => s,
        Some(other) => return Err(format!("type: {other:?} is not a string")),
        None => {
            return Err(
                "type: missing (modbus_tcp, modbus_rtu, serial_line, scanner, open_protocol)"
                    .into(),
            )
        }
    };
    fn de<T: serde::de::DeserializeOwned>(t: toml::Table) -> Result<T, String> {
        T::deserialize(toml::Value::Table(t))
            .map_err(|e| e.to_string().trim_end().replace('\n', " "))
    }
    match ty.as_str() {
        "modbus_tcp" => de(t).map(Source::ModbusTcp),
        "modbus_rtu" => de(t).map(Source::ModbusRtu),
        "serial_line" => de(t).map(Source::SerialLine),
        "scanner" => de(t).map(Source::Scanner),
        "open_protocol" => de(t).map(Source::OpenProtocol),
        other => Err(format!(
            "type: {other:?} is not modbus_tcp, modbus_rtu, serial_line, scanner or open_protocol"
        )),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Station {
    /// Site part of the origin `proofline/<site>/<agent_id>`.
    pub site: String,
    pub agent_id: String,
    pub data_dir: PathBuf,
    /// The station's private key (`proofline-agent keygen`).
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinderSection {
    /// A part scan binds results for this long; 0 = until the next scan.
    #[serde(default = "default_scan_valid_secs")]
    pub scan_valid_secs: u64,
    /// Each scan binds one result only; a retest needs a new scan.
    #[serde(default)]
    pub one_result_per_scan: bool,
}

fn default_scan_valid_secs() -> u64 {
    600
}

impl Default for BinderSection {
    fn default() -> Self {
        BinderSection {
            scan_valid_secs: default_scan_valid_secs(),
            one_result_per_scan: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// `/metrics` and `/healthz`.
    #[serde(default = "default_http_listen")]
    pub listen: String,
    /// Serving plain HTTP on a non-loopback address must be asked for.
    #[serde(default)]
    pub allow_non_loopback: bool,
    /// Connections served at once; more are closed as soon as they are accepted.
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
    /// Time a client has to send a request's headers.
    #[serde(default = "default_http_header_read_timeout_secs")]
    pub header_read_timeout_secs: u64,
    /// A connection on which nothing moves for this long is closed.
    #[serde(default = "default_http_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
}

fn default_http_listen() -> String {
    "127.0.0.1:9464".into()
}
fn default_http_max_connections() -> usize {
    proofline_common::http::DEFAULT_MAX_CONNECTIONS
}
fn default_http_header_read_timeout_secs() -> u64 {
    proofline_common::http::DEFAULT_HEADER_READ_TIMEOUT_SECS
}
fn default_http_idle_timeout_secs() -> u64 {
    proofline_common::http::DEFAULT_IDLE_TIMEOUT_SECS
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: default_http_listen(),
            allow_non_loopback: false,
            max_connections: default_http_max_connections(),
            header_read_timeout_secs: default_http_header_read_timeout_secs(),
            idle_timeout_secs: default_http_idle_timeout_secs(),
        }
    }
}

impl HttpSection {
    /// The endpoint's connection limits, with every problem of their settings added to `p`.
    pub fn limits(
        &self,
        p: &mut proofline_common::config::Problems,
    ) -> proofline_common::http::HttpLimits {
        proofline_common::http::HttpLimits::check(
            p,
            "http",
            self.max_connections,
            self.header_read_timeout_secs,
            self.idle_timeout_secs,
        )
    }
}

/// One data source of the station (`type = "..."` in its `[[source]]` table).
#[derive(Debug, Clone)]
pub enum Source {
    ModbusTcp(Modbus),
    ModbusRtu(Modbus),
    SerialLine(SerialLine),
    Scanner(Scanner),
    OpenProtocol(OpenProtocol),
}

impl Source {
    pub fn name(&self) -> &str {
        match self {
            Source::ModbusTcp(s) => &s.name,
            Source::ModbusRtu(s) => &s.name,
            Source::SerialLine(s) => &s.name,
            Source::Scanner(s) => &s.name,
            Source::OpenProtocol(s) => &s.name,
        }
    }
}

/// A Modbus device on TCP (`address`) or on an RTU line (`port`, `baud`, `frame`): unit,
/// register map and result-ready pattern.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Modbus {
    pub name: String,
    /// TCP: `host:port` of the bench or controller.
    #[serde(default)]
    pub address: Option<String>,
    /// RTU: the serial port; prefer `/dev/serial/by-id/...` (USB adapters re-enumerate).
    #[serde(default)]
    pub port: Option<PathBuf>,
    /// RTU line speed (the Modbus default is 19200 8E1; 9600 8N1 is common in the field).
    #[serde(default = "default_rtu_baud")]
    pub baud: u32,
    /// RTU character frame: `8N1`, `8E1`, `8O1`, `8N2`.
    #[serde(default = "default_rtu_frame")]
    pub frame: String,
    /// RTU: pause between requests on the line (some devices need it).
    #[serde(default)]
    pub inter_request_pause_ms: u64,
    pub unit_id: u8,
    /// Device identity recorded with each result (bench id, controller name).
    pub device: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// `zero_based` (addresses as on the wire) or `one_based` (4xxxx/3xxxx notation:
    /// 40001 = holding register 0). Stated, never guessed.
    pub addressing: Addressing,
    /// `holding` (function 3) or `input` (function 4).
    #[serde(default = "default_table")]
    pub table: Table,
    /// The result block: up to 125 registers are read in one request, up to 1000 in several
    /// behind the torn-read guard (see the `modbus` module).
    pub block_start: u32,
    pub block_registers: u16,
    pub ready: Ready,
    /// Where the device reports the part identifier it tested (ASCII registers), if it does.
    #[serde(default)]
    pub identifier: Option<TextField>,
    #[serde(default)]
    pub test_plan_id: Option<TextField>,
    #[serde(default)]
    pub test_plan_revision: Option<TextField>,
    /// Device result counter or id (a u16/u32 point), recorded as the device result id.
    #[serde(default)]
    pub result_id: Option<NumberField>,
    /// Device clock: six registers YY, MM, DD, hh, mm, ss from this offset (controllers seldom
    /// know their zone: recorded as reported, beside the agent's receive time).
    #[serde(default)]
    pub device_time_offset: Option<u16>,
    /// Register holding the device's own verdict, and the value that means OK (others: NOK).
    #[serde(default)]
    pub device_verdict: Option<VerdictField>,
    #[serde(default, rename = "point")]
    pub points: Vec<Point>,
}

fn default_rtu_baud() -> u32 {
    19_200
}

fn default_rtu_frame() -> String {
    "8E1".into()
}

fn default_timeout_ms() -> u64 {
    1_000
}

fn default_poll_interval_ms() -> u64 {
    100
}

fn default_table() -> Table {
    Table::Holding
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Addressing {
    ZeroBased,
    OneBased,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    Holding,
    Input,
}

/// The result-ready pattern (`reference/devices.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "pattern", rename_all = "snake_case", deny_unknown_fields)]
pub enum Ready {
    /// A register counts results; a jump over one means missed results.
    Counter { counter_register: u32 },
    /// A read-to-clear flag register: reading it consumes the event.
    Flag { flag_register: u32 },
    /// Four-phase handshake: ready set by the device, ack written by the agent after commit.
    Handshake {
        ready_register: u32,
        ack_register: u32,
    },
    /// The device flips a bit per result; the agent mirrors it back after commit.
    Toggle {
        toggle_register: u32,
        mirror_register: u32,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextField {
    /// Register offset within the result block.
    pub offset: u16,
    pub registers: u16,
    /// Devices that send the low byte first.
    #[serde(default)]
    pub swap_bytes: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictField {
    pub offset: u16,
    #[serde(default = "one_u16")]
    pub ok_value: u16,
}

fn one_u16() -> u16 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberField {
    pub offset: u16,
    #[serde(rename = "type")]
    pub ty: PointType,
    #[serde(default = "default_order")]
    pub order: WordOrder,
}

fn default_order() -> WordOrder {
    WordOrder::Abcd
}

/// One characteristic read from registers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    pub name: String,
    /// Register offset within the result block.
    pub offset: u16,
    #[serde(rename = "type")]
    pub ty: PointType,
    #[serde(default = "default_order")]
    pub order: WordOrder,
    /// value = raw × scale + add.
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub add: f64,
    pub unit: String,
    #[serde(default)]
    pub nominal: Option<f64>,
    #[serde(default)]
    pub lower: Option<f64>,
    #[serde(default)]
    pub upper: Option<f64>,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialLine {
    pub name: String,
    pub port: PathBuf,
    #[serde(default = "default_serial_baud")]
    pub baud: u32,
    #[serde(default = "default_serial_frame")]
    pub frame: String,
    pub device: String,
    /// `cr`, `lf`, `crlf`, or `byte` with `terminator_byte`.
    pub terminator: String,
    #[serde(default)]
    pub terminator_byte: Option<u8>,
    #[serde(default = "default_max_line")]
    pub max_line_bytes: usize,
    /// `delimited` (with `separator`), `key_value` (with `separator`) or `pattern` (with `pattern`).
    pub parser: String,
    #[serde(default)]
    pub separator: Option<String>,
    #[serde(default)]
    pub pattern: Option<String>,
    /// Field (position from 1, key, or group name) holding the part identifier, if any.
    #[serde(default)]
    pub identifier_field: Option<String>,
    /// Lines that carry no result (headers, timestamps) are skipped when this field is absent.
    #[serde(rename = "field")]
    pub fields: Vec<LineField>,
}

fn default_serial_baud() -> u32 {
    9_600
}

fn default_serial_frame() -> String {
    "8N1".into()
}

fn default_max_line() -> usize {
    1_024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineField {
    pub name: String,
    /// Position (1-based), key or group name in the line.
    pub from: String,
    /// `number` (default) or `ok_nok` for an attribute check.
    #[serde(default = "default_kind")]
    pub kind: String,
    #[serde(default)]
    pub unit: String,
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub nominal: Option<f64>,
    #[serde(default)]
    pub lower: Option<f64>,
    #[serde(default)]
    pub upper: Option<f64>,
}

fn default_kind() -> String {
    "number".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scanner {
    pub name: String,
    pub port: PathBuf,
    #[serde(default = "default_serial_baud")]
    pub baud: u32,
    /// `part`, `operator_badge` or `trim_code`.
    #[serde(default = "default_role")]
    pub role: String,
    /// Refuse frames without an AIM symbology identifier.
    #[serde(default = "yes")]
    pub require_aim: bool,
    /// `cr`, `lf`, `crlf` or `tab`.
    #[serde(default = "default_suffix")]
    pub suffix: String,
    /// Identical bytes from this scanner within this window are one read.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
}

fn default_role() -> String {
    "part".into()
}

fn yes() -> bool {
    true
}

fn default_suffix() -> String {
    "cr".into()
}

fn default_debounce_ms() -> u64 {
    1_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenProtocol {
    pub name: String,
    /// `host:port` of the controller (4545 by default on controllers).
    pub address: String,
    /// MID 0061 revision to subscribe to (1 or 2).
    #[serde(default = "default_op_revision")]
    pub revision: u16,
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Download the scanned UII to the controller (MID 0050) when a part is scanned.
    #[serde(default = "yes")]
    pub download_identifier: bool,
    #[serde(default = "default_torque_name")]
    pub torque_characteristic: String,
    #[serde(default = "default_angle_name")]
    pub angle_characteristic: String,
}

fn default_op_revision() -> u16 {
    1
}

fn default_keep_alive_secs() -> u64 {
    10
}

fn default_torque_name() -> String {
    "torque".into()
}

fn default_angle_name() -> String {
    "angle".into()
}

pub use proofline_common::config::{ConfigError, Problem};

impl AgentConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let (cfg, mut problems) =
            AgentConfig::parse(&text).map_err(|message| ConfigError::Syntax {
                path: path.to_owned(),
                message,
            })?;
        problems.extend(cfg.problems());
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// Parses the text. A syntax error (or one outside the sources) stops here; a source that
    /// does not read is a problem of its own, and the other sources are still read.
    pub fn parse(text: &str) -> Result<(AgentConfig, Vec<Problem>), String> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', "\n  "))?;
        let mut problems = Vec::new();
        let mut sources = Vec::new();
        for (i, t) in raw.source.into_iter().enumerate() {
            let name = t
                .get("name")
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_owned();
            match source_from_table(t) {
                Ok(s) => sources.push(s),
                Err(e) => problems.push(Problem {
                    path: format!("source[{i}] ({name})"),
                    message: e,
                }),
            }
        }
        Ok((
            AgentConfig {
                station: raw.station,
                binder: raw.binder,
                http: raw.http,
                hub: raw.hub,
                storage: raw.storage,
                sources,
                interlock: raw.interlock,
            },
            problems,
        ))
    }

    /// The ledger origin of this station.
    pub fn origin(&self) -> Result<Origin, String> {
        Origin::parse(&format!(
            "proofline/{}/{}",
            self.station.site, self.station.agent_id
        ))
        .map_err(|e| e.to_string())
    }
}

/// 4xxxx / 3xxxx notation to the wire address.
pub fn wire_address(addressing: Addressing, table: Table, configured: u32) -> Result<u16, String> {
    match addressing {
        Addressing::ZeroBased => {
            u16::try_from(configured).map_err(|_| format!("{configured} is beyond 65535"))
        }
        Addressing::OneBased => {
            let base = match table {
                Table::Holding => 40_001,
                Table::Input => 30_001,
            };
            configured
                .checked_sub(base)
                .filter(|a| *a <= 9_998 || configured >= 400_001)
                .and_then(|a| u16::try_from(a).ok())
                .ok_or_else(|| format!("{configured} is not a {base}-based address"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const EXAMPLE: &str = include_str!("../../../config/agent.example.toml");

    fn all_problems(text: &str) -> Vec<String> {
        let (cfg, mut p) = AgentConfig::parse(text).unwrap();
        p.extend(cfg.problems());
        p.into_iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect()
    }

    #[test]
    fn interlock_problems_are_named() {
        let (cfg, _) = AgentConfig::parse(EXAMPLE).unwrap();
        let plan = cfg
            .interlock
            .as_ref()
            .unwrap()
            .plan(&cfg.sources, true, &mut Default::default())
            .unwrap();
        assert_eq!(
            plan.output,
            crate::interlock::OutputPlan::Modbus {
                source: "flow-bench".into(),
                target: crate::interlock::GateTarget::Register {
                    addr: 97,
                    released: 1,
                    held: 2,
                    idle: 0
                }
            }
        );
        let with = |output: &str, policy: &str| {
            let start = EXAMPLE.find("[interlock]").unwrap();
            let end = start + EXAMPLE[start..].find("\n# ---").unwrap();
            format!(
                "{}[interlock]\ntimeout_ms = 50\non_unreachable = \"{policy}\"\noutput = {output}\n{}",
                &EXAMPLE[..start],
                &EXAMPLE[end..]
            )
        };
        let p = all_problems(&with(
            r#"{ kind = "modbus_coil", source = "nutrunner-op", coil = 3 }"#,
            "block",
        ));
        assert!(
            p.iter().any(|m| m.starts_with("interlock.timeout_ms")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.contains("\"nutrunner-op\" is not a Modbus source")),
            "{p:?}"
        );
        let p = all_problems(&with(
            r#"{ kind = "serial_display", port = "/dev/serial/by-id/usb-Honeywell_Imaging_1900-if00" }"#,
            "block",
        ));
        assert!(
            p.iter().any(|m| m.contains("already a source's port")),
            "{p:?}"
        );
        assert!(AgentConfig::parse(&with(
            r#"{ kind = "modbus_coil", source = "flow-bench", coil = 3 }"#,
            "maybe"
        ))
        .is_err());
        let no_hub = {
            let (mut cfg, _) = AgentConfig::parse(EXAMPLE).unwrap();
            cfg.hub = None;
            cfg.problems()
        };
        assert!(
            no_hub
                .iter()
                .any(|p| p.path == "interlock" && p.message.contains("[hub]")),
            "{no_hub:?}"
        );
    }

    #[test]
    fn the_example_config_is_valid_and_covers_every_source_type() {
        let (cfg, problems) = AgentConfig::parse(EXAMPLE).unwrap();
        assert_eq!(problems, vec![]);
        assert_eq!(cfg.problems(), vec![]);
        let kinds: HashSet<&str> = cfg
            .sources
            .iter()
            .map(|s| match s {
                Source::ModbusTcp(_) => "modbus_tcp",
                Source::ModbusRtu(_) => "modbus_rtu",
                Source::SerialLine(_) => "serial_line",
                Source::Scanner(_) => "scanner",
                Source::OpenProtocol(_) => "open_protocol",
            })
            .collect();
        assert_eq!(kinds.len(), 5);
        assert_eq!(
            cfg.origin().unwrap().as_str(),
            "proofline/plant-1/flow-bench-01"
        );
    }

    #[test]
    fn every_problem_is_listed_with_its_key_path() {
        let text = EXAMPLE
            .replace("upper = 63.86", "upper = 50.0")
            .replace("block_registers = 40", "block_registers = 1200")
            .replace("listen = \"127.0.0.1:9464\"", "listen = \"0.0.0.0:9464\"")
            .replace("keep_alive_secs = 10", "keep_alive_secs = 30")
            .replace("revision = 1", "revision = 7");
        let (cfg, _) = AgentConfig::parse(&text).unwrap();
        let paths: Vec<String> = cfg.problems().iter().map(|p| p.path.clone()).collect();
        for want in [
            "http.listen",
            "source[0].block_registers",
            "source[0].point[0].upper",
            "source[0].point[0].nominal",
            "source[4].keep_alive_secs",
            "source[4].revision",
        ] {
            assert!(paths.iter().any(|p| p == want), "{want} not in {paths:?}");
        }
    }

    #[test]
    fn long_blocks_are_read_in_several_requests_only_when_they_can_be_guarded() {
        let problems = |text: &str| -> Vec<String> {
            let (cfg, problems) = AgentConfig::parse(text).unwrap();
            assert_eq!(problems, vec![]);
            cfg.problems().iter().map(|p| p.to_string()).collect()
        };
        // A handshake bench freezes its block: 200 registers in two requests are fine.
        let handshake = EXAMPLE.replace("block_registers = 40", "block_registers = 200");
        assert_eq!(problems(&handshake), Vec::<String>::new());
        // A read-to-clear flag cannot be read twice: the result id must stand in for it.
        let flag = EXAMPLE.replace("block_registers = 30", "block_registers = 130");
        assert_eq!(problems(&flag), Vec::<String>::new());
        let flag = flag.replace(
            "result_id = { offset = 4, type = \"u32\" }               # tool serial, high word first\n",
            "",
        );
        let found = problems(&flag);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("source[1].result_id: 130 registers take 2 requests"),
            "{found:?}"
        );
        // Beyond the address space.
        let found = problems(&EXAMPLE.replace("block_start = 100", "block_start = 65500"));
        assert_eq!(
            found,
            vec!["source[0].block_registers: 40 registers from wire address 65500 run past 65535"]
        );
    }

    #[test]
    fn syntax_and_unknown_keys_are_named() {
        let (_, problems) =
            AgentConfig::parse(&EXAMPLE.replace("poll_interval_ms", "poll_intervall_ms")).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].path.starts_with("source[0]"), "{problems:?}");
        assert!(
            problems[0].message.contains("poll_intervall_ms"),
            "{problems:?}"
        );
        let (_, problems) = AgentConfig::parse(
            &EXAMPLE
                .replace("poll_interval_ms = 100", "poll_interval_ms = \"fast\"")
                .replace("type = \"scanner\"", "type = \"scaner\""),
        )
        .unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].message.contains("fast"), "{problems:?}");
        assert!(problems[1].message.contains("scaner"), "{problems:?}");
        let e = AgentConfig::parse("[station]\nsite = \n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn one_based_addresses_map_to_the_wire() {
        assert_eq!(
            wire_address(Addressing::OneBased, Table::Holding, 40_001),
            Ok(0)
        );
        assert_eq!(
            wire_address(Addressing::OneBased, Table::Holding, 40_101),
            Ok(100)
        );
        assert_eq!(
            wire_address(Addressing::OneBased, Table::Input, 30_010),
            Ok(9)
        );
        assert!(wire_address(Addressing::OneBased, Table::Holding, 100).is_err());
        assert_eq!(
            wire_address(Addressing::ZeroBased, Table::Holding, 100),
            Ok(100)
        );
        assert!(wire_address(Addressing::ZeroBased, Table::Holding, 70_000).is_err());
    }
}
