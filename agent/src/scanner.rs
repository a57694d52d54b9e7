//! Barcode scanners on serial / USB CDC ports.
//!
//! One task owns each scanner port. Frames end at the configured suffix; each is parsed
//! ([`proofline_common::scan`]) and handed to the station, accepted or rejected (a rejected scan
//! is recorded with its error code, never dropped). Identical bytes from the same scanner within
//! the debounce window are one read (presentation mode repeats); a repeat after the window is a
//! traceability fact and is kept. A port that disappears (USB unplugged) is reopened with
//! backoff; configure `/dev/serial/by-id/...` so it is found again after re-enumeration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proofline_common::record::{now_micros, ScanRole, StationEvent};
use proofline_common::scan::{parse_scan, ScanOptions};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

use crate::config::Scanner;
use crate::line::{Framing, LineFramer};
use crate::station::{Input, Metrics, Scan};

/// Longest scanner frame accepted.
pub const MAX_FRAME: usize = 4096;

/// Opens a serial port with a character frame like `8N1` or `8E1`.
pub fn open_port(
    path: &std::path::Path,
    baud: u32,
    frame: &str,
) -> std::io::Result<tokio_serial::SerialStream> {
    use tokio_serial::{DataBits, Parity, StopBits};
    let b = frame.as_bytes();
    let data = if b.first() == Some(&b'7') {
        DataBits::Seven
    } else {
        DataBits::Eight
    };
    let parity = match b.get(1) {
        Some(b'E') => Parity::Even,
        Some(b'O') => Parity::Odd,
        _ => Parity::None,
    };
    let stop = if b.get(2) == Some(&b'2') {
        StopBits::Two
    } else {
        StopBits::One
    };
    tokio_serial::new(path.to_string_lossy(), baud)
        .data_bits(data)
        .parity(parity)
        .stop_bits(stop)
        .open_native_async()
        .map_err(std::io::Error::from)
}

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
    let mut backoff = Duration::from_millis(200);
    let mut down = false;
    let mut last: Option<(Vec<u8>, Instant)> = None;
    let set_up = |up: bool| {
        metrics
            .source_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cfg.name.clone(), up);
    };
    set_up(false);
    while !shutdown.is_cancelled() {
        let mut port = match open_port(&cfg.port, cfg.baud, "8N1") {
            Ok(p) => p,
            Err(e) => {
                if !down {
                    tracing::warn!(source = %cfg.name, port = %cfg.port.display(), error = %e, "scanner port unavailable");
                    let _ = station
                        .send(Input::Event(StationEvent::SourceDown {
                            source: cfg.name.clone(),
                            error: format!("cannot open {}: {e}", cfg.port.display()),
                        }))
                        .await;
                    down = true;
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        set_up(true);
        let _ = station
            .send(Input::Event(StationEvent::SourceUp {
                source: cfg.name.clone(),
                detail: format!("opened {}", cfg.port.display()),
            }))
            .await;
        let mut framer = LineFramer::new(framing(&cfg.suffix), MAX_FRAME);
        let mut buf = [0u8; 1024];
        let error = loop {
            let n = tokio::select! {
                () = shutdown.cancelled() => break None,
                r = port.read(&mut buf) => match r {
                    Ok(0) => break Some("port closed".to_owned()),
                    Ok(n) => n,
                    Err(e) => break Some(e.to_string()),
                },
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
        };
        set_up(false);
        match error {
            None => break,
            Some(e) => {
                tracing::warn!(source = %cfg.name, error = %e, "scanner lost; reopening");
                let _ = station
                    .send(Input::Event(StationEvent::SourceDown {
                        source: cfg.name.clone(),
                        error: e,
                    }))
                    .await;
                down = true;
            }
        }
    }
    set_up(false);
}
