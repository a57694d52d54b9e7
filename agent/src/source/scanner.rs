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
use crate::line::{Framing, LineFramer};
use crate::serial_port::{OwnedPort, PortRead};
use crate::station::{Input, Metrics, Scan};

/// Longest scanner frame accepted.
pub const MAX_FRAME: usize = 4096;

pub fn role(s: &str) -> ScanRole {
    match s {
        "operator_badge" => ScanRole::OperatorBadge,
        "trim_code" => ScanRole::TrimCode,
        _ => ScanRole::Part,
    }
}

fn framing(suffix: &str) -> Framing {
    match suffix {
        "lf" => Framing::Lf,
        "crlf" => Framing::CrLf,
        "tab" => Framing::Byte(b'\t'),
        _ => Framing::Cr,
    }
}

/// Runs one scanner until `shutdown`.
pub async fn run(
    cfg: Scanner,
    station: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let role = role(&cfg.role);
    let opts = ScanOptions {
        require_aim: cfg.require_aim,
    };
    let debounce = Duration::from_millis(cfg.debounce_ms);
    let mut last: Option<(Vec<u8>, Instant)> = None;
    // Scanners in CDC mode ignore the character frame; 8N1 is what they announce.
    let mut port = OwnedPort::new(
        &cfg.name,
        cfg.port.clone(),
        cfg.baud,
        "8N1",
        station.clone(),
        Arc::clone(&metrics),
        shutdown,
    );
    let mut framer = LineFramer::new(framing(&cfg.suffix), MAX_FRAME);
    let mut buf = [0u8; 1024];
    loop {
        let n = match port.read(&mut buf).await {
            PortRead::Stopped => break,
            PortRead::Opened => {
                framer = LineFramer::new(framing(&cfg.suffix), MAX_FRAME);
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
