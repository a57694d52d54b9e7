//! Barcode scanners on serial / USB CDC ports.
//!
//! One task owns each scanner port. Frames end at the configured suffix; each is parsed
//! ([`proofline_common::scan`]) and handed to the station, accepted or rejected (a rejected scan
//! is recorded with its error code, never dropped). Identical bytes from the same scanner within
//! the debounce window are one read (presentation mode repeats); a repeat after the window is a
//! traceability fact and is kept. The port is an [`OwnedPort`]: reopened after an unplug.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proofline_common::record::{now_micros, ScanRole};
use proofline_common::scan::{parse_scan, ScanOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Scanner;
use crate::source::line::{Framing, LineFramer};
use crate::source::port::{OwnedPort, PortRead, SerialSettings};
use crate::station::{Input, Metrics, Scan};

/// Longest scanner frame accepted.
pub const MAX_FRAME: usize = 4096;

/// A checked scanner source.
#[derive(Debug, Clone)]
pub struct ScannerPlan {
    pub name: String,
    pub port: SerialSettings,
    pub role: ScanRole,
    pub require_aim: bool,
    pub framing: Framing,
    /// Identical bytes from this scanner within this window are one read.
    pub debounce: Duration,
}

/// A scanner role as configured: `part`, `operator_badge` or `trim_code`.
pub fn parse_role(s: &str) -> Result<ScanRole, String> {
    match s {
        "part" => Ok(ScanRole::Part),
        "operator_badge" => Ok(ScanRole::OperatorBadge),
        "trim_code" => Ok(ScanRole::TrimCode),
        other => Err(format!(
            "{other:?} is not part, operator_badge or trim_code"
        )),
    }
}

/// The suffix a scanner ends each frame with: `cr`, `lf`, `crlf` or `tab`.
pub fn parse_suffix(s: &str) -> Result<Framing, String> {
    match s {
        "cr" => Ok(Framing::Cr),
        "lf" => Ok(Framing::Lf),
        "crlf" => Ok(Framing::CrLf),
        "tab" => Ok(Framing::Byte(b'\t')),
        other => Err(format!("{other:?} is not cr, lf, crlf or tab")),
    }
}

/// Longest debounce window: a longer one would swallow real rescans.
pub const MAX_DEBOUNCE_MS: u64 = 10_000;

impl ScannerPlan {
    pub fn new(cfg: &Scanner) -> Result<ScannerPlan, String> {
        if cfg.debounce_ms > MAX_DEBOUNCE_MS {
            return Err("debounce_ms: over 10 s would swallow real rescans".into());
        }
        Ok(ScannerPlan {
            name: cfg.name.clone(),
            // Scanners in CDC mode ignore the character frame; 8N1 is what they announce.
            port: SerialSettings::new(&cfg.port, cfg.baud, "8N1")?,
            role: parse_role(&cfg.role).map_err(|e| format!("role: {e}"))?,
            require_aim: cfg.require_aim,
            framing: parse_suffix(&cfg.suffix).map_err(|e| format!("suffix: {e}"))?,
            debounce: Duration::from_millis(cfg.debounce_ms),
        })
    }
}

/// One scanner: owns its port until shutdown.
#[derive(Debug)]
pub struct ScannerSource {
    pub plan: ScannerPlan,
    pub station: mpsc::Sender<Input>,
    pub metrics: Arc<Metrics>,
}

impl ScannerSource {
    /// Runs the scanner until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let ScannerSource {
            plan: cfg,
            station,
            metrics,
        } = self;
        let role = cfg.role;
        let opts = ScanOptions {
            require_aim: cfg.require_aim,
        };
        let debounce = cfg.debounce;
        let mut last: Option<(Vec<u8>, Instant)> = None;
        // Scanners in CDC mode ignore the character frame; 8N1 is what they announce.
        let mut port = OwnedPort::new(
            &cfg.name,
            cfg.port.clone(),
            station.clone(),
            Arc::clone(&metrics),
            shutdown,
        );
        let mut framer = LineFramer::new(cfg.framing, MAX_FRAME);
        let mut buf = [0u8; 1024];
        loop {
            let n = match port.read(&mut buf).await {
                PortRead::Stopped => break,
                PortRead::Opened => {
                    framer = LineFramer::new(cfg.framing, MAX_FRAME);
                    continue;
                }
                PortRead::Bytes(n) => n,
            };
            for frame in framer.push(&buf[..n]) {
                let received_at = now_micros();
                let (raw, parsed) = match frame {
                    Ok(f) => {
                        let now = Instant::now();
                        if let Some((prev, at)) = &last {
                            if *prev == f && now.duration_since(*at) < debounce {
                                Metrics::count(&metrics.double_reads, &cfg.name);
                                continue;
                            }
                        }
                        last = Some((f.clone(), now));
                        let parsed = match role {
                            ScanRole::Part => Some(parse_scan(&f, &opts)),
                            _ => None,
                        };
                        (f, parsed)
                    }
                    Err(e) => {
                        // An overlong frame: record it as rejected (its bytes are gone).
                        (
                            Vec::new(),
                            Some(Err(proofline_common::scan::ScanError {
                                code: proofline_common::scan::ScanErrorCode::IllegalChar,
                                detail: e.to_string(),
                            })),
                        )
                    }
                };
                let scan = Scan {
                    source: cfg.name.clone(),
                    role,
                    raw,
                    parsed,
                    received_at,
                };
                if station.send(Input::Scan(scan)).await.is_err() {
                    return;
                }
            }
        }
    }
}
