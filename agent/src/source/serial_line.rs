//! Benches that report each test as a line of text on a serial port.
//!
//! One task owns the port. Lines are framed and parsed ([`crate::source::line`]); a line that yields the
//! configured fields becomes a result with the raw line in the record. Lines that are not
//! results (headers, timestamps) are skipped; damaged lines (non-printable bytes, overlong,
//! a field missing or not a number) raise an alarm naming the problem and carrying the line, and
//! the port keeps being read. The port is an [`OwnedPort`]: reopened after an unplug.

use std::sync::Arc;

use proofline_common::alarm::AlarmCode;
use proofline_common::record::{now_micros, Measured, RawData, Severity};
use regex::Regex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::SerialLine;
use crate::source::line::{field, Framing, LineError, LineFramer, LineParser};
use crate::source::port::{OwnedPort, PortRead, SerialSettings};
use crate::station::{alarm, DeviceResult, Input, Measurement, Metrics};

/// Longest line a serial-line source may be configured to take: half a ledger record, so the
/// line and the fields read from it (an identifier field repeats part of the line) fit in one
/// record. A result that still does not fit is alarmed by the station with its hash.
pub const MAX_LINE_BYTES: usize = proofline_common::record::MAX_RECORD_BYTES / 2;

/// What a line field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Number,
    /// An attribute check: `OK`/`NOK` (also `1`/`0`, `PASS`/`FAIL`, `IO`/`NIO`).
    OkNok,
}

impl FieldKind {
    pub fn parse(s: &str) -> Result<FieldKind, String> {
        match s {
            "number" => Ok(FieldKind::Number),
            "ok_nok" => Ok(FieldKind::OkNok),
            other => Err(format!("{other:?} is not number or ok_nok")),
        }
    }
}

/// The line ending as configured: `cr`, `lf`, `crlf`, or `byte` with its value.
pub fn parse_terminator(terminator: &str, byte: Option<u8>) -> Result<Framing, String> {
    match (terminator, byte) {
        ("cr", None) => Ok(Framing::Cr),
        ("lf", None) => Ok(Framing::Lf),
        ("crlf", None) => Ok(Framing::CrLf),
        ("byte", Some(b)) => Ok(Framing::Byte(b)),
        ("byte", None) => Err("terminator = \"byte\" needs terminator_byte".into()),
        ("cr" | "lf" | "crlf", Some(_)) => Err("only with terminator = \"byte\"".into()),
        (other, _) => Err(format!("{other:?} is not cr, lf, crlf or byte")),
    }
}

/// A field separator as configured.
pub fn parse_separator(s: Option<&str>, parser: &str) -> Result<u8, String> {
    match s {
        Some(s @ ("," | ";" | "\t" | " ")) => Ok(s.as_bytes()[0]),
        Some(s) => Err(format!("{s:?} is not \",\", \";\", \"\\t\" or \" \"")),
        None => Err(format!("parser = {parser:?} needs a separator")),
    }
}

/// A checked serial-line source.
#[derive(Debug, Clone)]
pub struct LinePlan {
    pub cfg: SerialLine,
    pub port: SerialSettings,
    pub framing: Framing,
    pub parser: LineParser,
    /// What each of `cfg.fields` holds, in the same order.
    pub kinds: Vec<FieldKind>,
}

impl LinePlan {
    pub fn new(cfg: &SerialLine) -> Result<Self, String> {
        let framing = parse_terminator(&cfg.terminator, cfg.terminator_byte)?;
        let parser = match cfg.parser.as_str() {
            "delimited" => LineParser::Delimited {
                separator: parse_separator(cfg.separator.as_deref(), &cfg.parser)?,
            },
            "key_value" => LineParser::KeyValue {
                separator: parse_separator(cfg.separator.as_deref(), &cfg.parser)?,
            },
            "pattern" => match cfg.pattern.as_deref() {
                Some(p) => LineParser::Pattern(
                    Regex::new(p)
                        .map_err(|e| format!("pattern: {}", e.to_string().replace('\n', " ")))?,
                ),
                None => return Err("parser = \"pattern\" needs a pattern".into()),
            },
            p => return Err(format!("{p:?} is not delimited, key_value or pattern")),
        };
        let kinds = cfg
            .fields
            .iter()
            .map(|f| FieldKind::parse(&f.kind))
            .collect::<Result<_, _>>()?;
        Ok(LinePlan {
            port: SerialSettings::new(&cfg.port, cfg.baud, &cfg.frame)?,
            cfg: cfg.clone(),
            framing,
            parser,
            kinds,
        })
    }

    /// What a line is: a result, a line to skip, or a damaged line (with why).
    pub fn read_line(&self, line: &[u8], received_at: i64) -> LineOutcome {
        if line
            .iter()
            .any(|b| !(0x20..=0x7e).contains(b) && *b != b'\t' && *b != b'\r')
        {
            return LineOutcome::Damaged("line holds non-printable bytes".into());
        }
        let fields = match self.parser.parse(line) {
            Ok(f) => f,
            Err(LineError::NoMatch) => return LineOutcome::NotAResult,
            Err(e) => return LineOutcome::Damaged(e.to_string()),
        };
        if fields.is_empty() {
            // No key=value pair at all: a header or status line.
            return LineOutcome::NotAResult;
        }
        let mut measurements = Vec::new();
        for (f, kind) in self.cfg.fields.iter().zip(&self.kinds) {
            let text = match field(&fields, &f.from) {
                Ok(t) => t,
                Err(e) => return LineOutcome::Damaged(format!("{}: {e}", f.name)),
            };
            let measured = if *kind == FieldKind::OkNok {
                match text.to_ascii_uppercase().as_str() {
                    "OK" | "1" | "PASS" | "IO" => Measured::Attribute { ok: true },
                    "NOK" | "0" | "FAIL" | "NIO" => Measured::Attribute { ok: false },
                    other => {
                        return LineOutcome::Damaged(format!(
                            "{}: {other:?} is not OK or NOK",
                            f.name
                        ))
                    }
                }
            } else {
                match text.replace(',', ".").parse::<f64>() {
                    Ok(v) if v.is_finite() => Measured::Value {
                        value: v * f.scale,
                        unit: f.unit.clone(),
                    },
                    _ => {
                        return LineOutcome::Damaged(format!(
                            "{}: {text:?} is not a number",
                            f.name
                        ))
                    }
                }
            };
            measurements.push(Measurement {
                name: f.name.clone(),
                measured,
                nominal: f.nominal,
                lower: f.lower,
                upper: f.upper,
                device_verdict: None,
            });
        }
        let device_identifier = self
            .cfg
            .identifier_field
            .as_deref()
            .and_then(|n| field(&fields, n).ok())
            .map(str::to_owned)
            .filter(|s| !s.is_empty());
        LineOutcome::Result(Box::new(DeviceResult {
            source: self.cfg.name.clone(),
            device: self.cfg.device.clone(),
            device_result_id: None,
            device_identifier,
            test_plan: None,
            measurements,
            device_verdict: None,
            device_time: None,
            raw: RawData::SerialLine(line.to_vec().into()),
            received_at,
        }))
    }
}

#[derive(Debug)]
pub enum LineOutcome {
    Result(Box<DeviceResult>),
    NotAResult,
    Damaged(String),
}

/// One serial-line bench: owns its port until shutdown.
#[derive(Debug)]
pub struct LineSource {
    pub plan: LinePlan,
    pub station: mpsc::Sender<Input>,
    pub metrics: Arc<Metrics>,
}

impl LineSource {
    /// Runs the source until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let LineSource {
            plan,
            station,
            metrics,
        } = self;
        let cfg = &plan.cfg;
        let mut port = OwnedPort::new(
            &cfg.name,
            plan.port.clone(),
            station.clone(),
            Arc::clone(&metrics),
            shutdown,
        );
        let mut framer = LineFramer::new(plan.framing, cfg.max_line_bytes);
        let mut buf = [0u8; 1024];
        loop {
            let n = match port.read(&mut buf).await {
                PortRead::Stopped => break,
                PortRead::Opened => {
                    framer = LineFramer::new(plan.framing, cfg.max_line_bytes);
                    continue;
                }
                PortRead::Bytes(n) => n,
            };
            for line in framer.push(&buf[..n]) {
                let line = match line {
                    Ok(l) => l,
                    Err(e) => {
                        alarm(
                            &station,
                            &cfg.name,
                            AlarmCode::SerialOverlongLine,
                            Severity::Warning,
                            e.to_string(),
                        )
                        .await;
                        continue;
                    }
                };
                match plan.read_line(&line, now_micros()) {
                    LineOutcome::Result(r) => {
                        let (tx, rx) = oneshot::channel();
                        if station.send(Input::Result(*r, tx)).await.is_err() {
                            return;
                        }
                        // Wait for the record: a fast bench is slowed down, never dropped.
                        let _ = rx.await;
                    }
                    LineOutcome::NotAResult => {
                        tracing::debug!(source = %cfg.name, line = %String::from_utf8_lossy(&line), "not a result line");
                    }
                    LineOutcome::Damaged(why) => {
                        let shown: String =
                            String::from_utf8_lossy(&line).chars().take(200).collect();
                        alarm(
                            &station,
                            &cfg.name,
                            AlarmCode::SerialBadLine,
                            Severity::Warning,
                            format!("{why}; line {shown:?}"),
                        )
                        .await;
                    }
                }
            }
        }
    }
}
