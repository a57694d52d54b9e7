//! `check-config`: every semantic problem of a configuration, with its key path.
//!
//! Where a value is turned into a type (a serial frame, a scanner role, a line terminator), the
//! check calls the same constructor the plan builder uses ([`super::plan`]), so what is accepted
//! here is exactly what the running agent can use.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use proofline_common::config::{Problem, Problems};

use super::{
    wire_address, AgentConfig, Modbus, OpenProtocol, Ready, Scanner, SerialLine, Source, Table,
};
use crate::source::modbus::{MAX_BLOCK, MAX_READ};
use crate::source::open_protocol::MAX_KEEP_ALIVE_SECS;
use crate::source::port::{CharFrame, BAUD_RATES};
use crate::source::scanner::{parse_role, parse_suffix, MAX_DEBOUNCE_MS};
use crate::source::serial_line::{parse_separator, parse_terminator, FieldKind, MAX_LINE_BYTES};
use proofline_common::record::MAX_RECORD_BYTES;

impl AgentConfig {
    /// Every semantic problem, with its key path.
    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Problems(Vec::new());
        if let Some(h) = &self.hub {
            h.check(&mut p);
        }
        self.storage.check(&mut p);
        if let Err(e) = self.origin() {
            p.add("station.site/agent_id", e);
        }
        proofline_common::config::check_listen(
            &mut p,
            "http.listen",
            &self.http.listen,
            self.http.allow_non_loopback,
            "http.allow_non_loopback",
        );
        self.http.limits(&mut p);
        self.check_sources(&mut p);
        if let Some(i) = &self.interlock {
            i.plan(&self.sources, self.hub.is_some(), &mut p);
        }
        p.0
    }

    fn check_sources(&self, p: &mut Problems) {
        if self.sources.is_empty() {
            p.add("source", "no sources: the station would record nothing");
        }
        let mut names = HashSet::new();
        let mut ports = HashSet::new();
        let mut rtu_ports = HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let at = format!("source[{i}]");
            check_name(p, &at, s.name(), &mut names);
            match s {
                Source::ModbusTcp(m) => check_modbus_tcp(p, &at, m),
                Source::ModbusRtu(m) => {
                    // Several units on one RS-485 line share their port: one bus.
                    if let Some(port) = &m.port {
                        rtu_ports.insert(port.clone());
                    }
                    check_modbus_rtu(p, &at, m);
                }
                Source::SerialLine(l) => {
                    check_port_free(p, &at, &l.port, &mut ports);
                    check_serial(p, &at, l.baud, &l.frame);
                    check_line(p, &at, l);
                }
                Source::Scanner(sc) => {
                    check_port_free(p, &at, &sc.port, &mut ports);
                    check_scanner(p, &at, sc);
                }
                Source::OpenProtocol(o) => check_open_protocol(p, &at, o),
            }
        }
        for port in ports.intersection(&rtu_ports) {
            p.add(
                "source",
                format!(
                    "{} is both a Modbus RTU line and a serial line or scanner",
                    port.display()
                ),
            );
        }
    }
}

fn check_name(p: &mut Problems, at: &str, name: &str, names: &mut HashSet<String>) {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        p.add(
            &format!("{at}.name"),
            format!("{name:?} must be letters, digits, - or _"),
        );
    }
    if !names.insert(name.to_owned()) {
        p.add(
            &format!("{at}.name"),
            format!("{name:?} is used by another source"),
        );
    }
}

fn check_port_free(p: &mut Problems, at: &str, port: &Path, ports: &mut HashSet<PathBuf>) {
    if !ports.insert(port.to_owned()) {
        p.add(
            &format!("{at}.port"),
            format!("{} is used by another source", port.display()),
        );
    }
}

fn check_modbus_tcp(p: &mut Problems, at: &str, m: &Modbus) {
    match &m.address {
        Some(a) => check_host_port(p, &format!("{at}.address"), a),
        None => p.add(
            &format!("{at}.address"),
            "a modbus_tcp source needs address = \"host:port\"",
        ),
    }
    if m.port.is_some() {
        p.add(&format!("{at}.port"), "port is for modbus_rtu sources");
    }
    check_modbus(p, at, m);
}

fn check_modbus_rtu(p: &mut Problems, at: &str, m: &Modbus) {
    if m.port.is_none() {
        p.add(
            &format!("{at}.port"),
            "a modbus_rtu source needs port = \"/dev/serial/by-id/...\"",
        );
    }
    if m.address.is_some() {
        p.add(
            &format!("{at}.address"),
            "address is for modbus_tcp sources",
        );
    }
    check_serial(p, at, m.baud, &m.frame);
    check_modbus(p, at, m);
    if m.unit_id == 0 || m.unit_id > 247 {
        p.add(&format!("{at}.unit_id"), "an RTU unit id is 1 to 247");
    }
}

fn check_scanner(p: &mut Problems, at: &str, sc: &Scanner) {
    if let Err(e) = parse_role(&sc.role) {
        p.add(&format!("{at}.role"), e);
    }
    if let Err(e) = parse_suffix(&sc.suffix) {
        p.add(&format!("{at}.suffix"), e);
    }
    if sc.debounce_ms > MAX_DEBOUNCE_MS {
        p.add(
            &format!("{at}.debounce_ms"),
            "over 10 s would swallow real rescans",
        );
    }
}

fn check_open_protocol(p: &mut Problems, at: &str, o: &OpenProtocol) {
    check_host_port(p, &format!("{at}.address"), &o.address);
    if !matches!(o.revision, 1 | 2) {
        p.add(
            &format!("{at}.revision"),
            format!("MID 0061 revision {} is not supported (1 or 2)", o.revision),
        );
    }
    if o.keep_alive_secs == 0 || o.keep_alive_secs > MAX_KEEP_ALIVE_SECS {
        p.add(
            &format!("{at}.keep_alive_secs"),
            "must be 1 to 14: controllers drop links idle for 15 s",
        );
    }
}

fn check_host_port(p: &mut Problems, at: &str, addr: &str) {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
        _ => p.add(at, format!("{addr:?} is not host:port")),
    }
}

fn check_serial(p: &mut Problems, at: &str, baud: u32, frame: &str) {
    if !BAUD_RATES.contains(&baud) {
        p.add(
            &format!("{at}.baud"),
            format!("{baud} is not a standard rate"),
        );
    }
    if let Err(e) = CharFrame::parse(frame) {
        p.add(&format!("{at}.frame"), e);
    }
}

fn check_modbus(p: &mut Problems, at: &str, d: &Modbus) {
    check_modbus_block(p, at, d);
    check_ready(p, at, d);
    check_block_fields(p, at, d);
    check_points(p, at, d);
}

fn check_modbus_block(p: &mut Problems, at: &str, d: &Modbus) {
    if d.timeout_ms == 0 || d.timeout_ms > 60_000 {
        p.add(&format!("{at}.timeout_ms"), "must be 1 to 60000");
    }
    if d.poll_interval_ms == 0 {
        p.add(&format!("{at}.poll_interval_ms"), "must be at least 1");
    }
    // Up to 125 registers are read in one request; a longer block in several, behind the
    // torn-read guard (`modbus` module docs), which needs something to watch.
    let (one_request, longest) = (MAX_READ, MAX_BLOCK);
    if d.block_registers == 0 || d.block_registers > longest {
        p.add(
            &format!("{at}.block_registers"),
            format!(
                "{} registers: a result block is 1 to {longest} ({one_request} per request)",
                d.block_registers
            ),
        );
    } else if d.block_registers > one_request
        && matches!(d.ready, Ready::Flag { .. })
        && d.result_id.is_none()
    {
        p.add(
            &format!("{at}.result_id"),
            format!(
                "{} registers take {} requests, and a read-to-clear flag cannot be read again to see whether the block changed between them: set result_id (a result counter or id inside the block) or keep block_registers at {one_request} or fewer",
                d.block_registers,
                d.block_registers.div_ceil(one_request)
            ),
        );
    }
    match wire_address(d.addressing, d.table, d.block_start) {
        Err(e) => p.add(&format!("{at}.block_start"), e),
        Ok(start) if u32::from(start) + u32::from(d.block_registers) > 0x1_0000 => p.add(
            &format!("{at}.block_registers"),
            format!(
                "{} registers from wire address {start} run past 65535",
                d.block_registers
            ),
        ),
        Ok(_) => {}
    }
}

fn check_ready(p: &mut Problems, at: &str, d: &Modbus) {
    // Registers the agent reads live in the block's table; those it writes are holding registers.
    let regs = |name: &str, table: Table, addr: u32, p: &mut Problems| {
        if let Err(e) = wire_address(d.addressing, table, addr) {
            p.add(&format!("{at}.ready.{name}"), e);
        }
    };
    match &d.ready {
        Ready::Counter { counter_register } => {
            regs("counter_register", d.table, *counter_register, p)
        }
        Ready::Flag { flag_register } => regs("flag_register", d.table, *flag_register, p),
        Ready::Handshake {
            ready_register,
            ack_register,
        } => {
            regs("ready_register", d.table, *ready_register, p);
            regs("ack_register", Table::Holding, *ack_register, p);
            if ready_register == ack_register {
                p.add(
                    &format!("{at}.ready"),
                    "ready and ack must be different registers",
                );
            }
            if d.table == Table::Input {
                p.add(
                    &format!("{at}.table"),
                    "a handshake needs writable holding registers",
                );
            }
        }
        Ready::Toggle {
            toggle_register,
            mirror_register,
        } => {
            regs("toggle_register", d.table, *toggle_register, p);
            regs("mirror_register", Table::Holding, *mirror_register, p);
        }
    }
}

/// The block's width in registers holds `width` registers from `offset`.
fn fits(d: &Modbus, offset: u16, width: u16) -> bool {
    u32::from(offset) + u32::from(width) <= u32::from(d.block_registers)
}

fn check_block_fields(p: &mut Problems, at: &str, d: &Modbus) {
    for (key, f) in [
        ("identifier", &d.identifier),
        ("test_plan_id", &d.test_plan_id),
        ("test_plan_revision", &d.test_plan_revision),
    ] {
        if let Some(f) = f {
            if f.registers == 0 || !fits(d, f.offset, f.registers) {
                p.add(
                    &format!("{at}.{key}"),
                    format!(
                        "registers {}..{} are outside the block of {}",
                        f.offset,
                        u32::from(f.offset) + u32::from(f.registers),
                        d.block_registers
                    ),
                );
            }
        }
    }
    if let Some(o) = d.device_time_offset {
        if !fits(d, o, 6) {
            p.add(
                &format!("{at}.device_time_offset"),
                "six registers from there fall outside the block",
            );
        }
    }
    if let Some(v) = &d.device_verdict {
        if !fits(d, v.offset, 1) {
            p.add(&format!("{at}.device_verdict"), "outside the result block");
        }
    }
    if let Some(r) = &d.result_id {
        match r.ty.width() {
            Some(w) if fits(d, r.offset, w as u16) => {}
            Some(_) => p.add(&format!("{at}.result_id"), "outside the result block"),
            None => p.add(&format!("{at}.result_id.type"), "a result id is a number"),
        }
    }
}

fn check_points(p: &mut Problems, at: &str, d: &Modbus) {
    if d.points.is_empty() {
        p.add(
            &format!("{at}.point"),
            "no points: results would carry no characteristics",
        );
    }
    let mut names = HashSet::new();
    for (j, pt) in d.points.iter().enumerate() {
        let pat = format!("{at}.point[{j}]");
        if pt.name.is_empty() || !names.insert(pt.name.clone()) {
            p.add(
                &format!("{pat}.name"),
                format!("{:?} is empty or used twice", pt.name),
            );
        }
        match pt.ty.width() {
            None => p.add(
                &format!("{pat}.type"),
                "a characteristic is a number; text goes in identifier or test_plan_*",
            ),
            Some(w) if !fits(d, pt.offset, w as u16) => p.add(
                &format!("{pat}.offset"),
                format!(
                    "{:?} at {} spans {} registers, outside the block of {}",
                    pt.ty, pt.offset, w, d.block_registers
                ),
            ),
            Some(_) => {}
        }
        check_limits(p, &pat, pt.nominal, pt.lower, pt.upper);
        if !pt.scale.is_finite() || pt.scale == 0.0 {
            p.add(&format!("{pat}.scale"), "must be a non-zero number");
        }
    }
}

fn check_limits(
    p: &mut Problems,
    at: &str,
    nominal: Option<f64>,
    lower: Option<f64>,
    upper: Option<f64>,
) {
    if let (Some(l), Some(u)) = (lower, upper) {
        if u < l {
            p.add(&format!("{at}.upper"), format!("{u} is below lower {l}"));
        }
    }
    if let Some(n) = nominal {
        if lower.is_some_and(|l| n < l) || upper.is_some_and(|u| n > u) {
            p.add(
                &format!("{at}.nominal"),
                format!("{n} is outside its own limits"),
            );
        }
    }
}

fn check_line(p: &mut Problems, at: &str, l: &SerialLine) {
    if let Err(e) = parse_terminator(&l.terminator, l.terminator_byte) {
        let key = match l.terminator.as_str() {
            "cr" | "lf" | "crlf" | "byte" => "terminator_byte",
            _ => "terminator",
        };
        p.add(&format!("{at}.{key}"), e);
    }
    if l.max_line_bytes < 16 || l.max_line_bytes > MAX_LINE_BYTES {
        p.add(
            &format!("{at}.max_line_bytes"),
            format!(
                "{} must be 16 to {MAX_LINE_BYTES}: a line is recorded whole, with the fields read from it, in one ledger record of at most {MAX_RECORD_BYTES} bytes",
                l.max_line_bytes
            ),
        );
    }
    check_line_parser(p, at, l);
    if l.fields.is_empty() {
        p.add(
            &format!("{at}.field"),
            "no fields: results would carry no characteristics",
        );
    }
    for (j, f) in l.fields.iter().enumerate() {
        let fat = format!("{at}.field[{j}]");
        if l.parser == "delimited" && f.from.parse::<usize>().map_or(true, |n| n == 0) {
            p.add(
                &format!("{fat}.from"),
                format!("{:?} is not a field position (1, 2, ...)", f.from),
            );
        }
        if let Err(e) = FieldKind::parse(&f.kind) {
            p.add(&format!("{fat}.kind"), e);
        }
        check_limits(p, &fat, f.nominal, f.lower, f.upper);
    }
}

fn check_line_parser(p: &mut Problems, at: &str, l: &SerialLine) {
    match l.parser.as_str() {
        "delimited" | "key_value" => {
            if let Err(e) = parse_separator(l.separator.as_deref(), &l.parser) {
                p.add(&format!("{at}.separator"), e);
            }
        }
        "pattern" => match l.pattern.as_deref().map(regex::Regex::new) {
            Some(Ok(re)) => {
                for (j, f) in l.fields.iter().enumerate() {
                    if !re.capture_names().flatten().any(|n| n == f.from) {
                        p.add(
                            &format!("{at}.field[{j}].from"),
                            format!("the pattern has no group named {:?}", f.from),
                        );
                    }
                }
            }
            Some(Err(e)) => p.add(&format!("{at}.pattern"), e.to_string().replace('\n', " ")),
            None => p.add(
                &format!("{at}.pattern"),
                "parser = \"pattern\" needs a pattern",
            ),
        },
        other => p.add(
            &format!("{at}.parser"),
            format!("{other:?} is not delimited, key_value or pattern"),
        ),
    }
}

impl AgentConfig {
    /// Problems with what the configuration points at on this machine: the key file (readable,
    /// a Proofline key, made for this station's origin) and the data directory.
    pub fn environment_problems(&self) -> Vec<Problem> {
        let mut p = Problems(Vec::new());
        if let Some(h) = &self.hub {
            h.mqtt.environment_problems("hub.mqtt", &mut p);
        }
        let origin = self.origin().ok();
        proofline_common::config::check_key_and_data_dir(
            &mut p,
            "station",
            "station",
            &self.station.key_file,
            origin.as_ref(),
            &self.station.data_dir,
        );
        p.0
    }
}
