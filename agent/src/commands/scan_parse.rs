//! `scan-parse`: what the agent makes of scanner frames, for commissioning a scanner (is the
//! AIM prefix on, does the keyboard wedge eat the separators) and for checking labels.

use std::io::{BufRead, Write};

use anyhow::Context;
use proofline_common::scan::{parse_scan, to_json, ScanOptions};

use crate::commands::ledger::Failure;

/// Longest frame read; a longer line is reported, not parsed.
use crate::source::scanner::MAX_FRAME;

pub fn scan_parse(require_aim: bool) -> Result<(), Failure> {
    let opts = ScanOptions { require_aim };
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut input = stdin.lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .context("reading stdin")?;
        if n == 0 {
            break;
        }
        let mut frame = &line[..];
        if let Some(f) = frame.strip_suffix(b"\n") {
            frame = f;
        }
        if let Some(f) = frame.strip_suffix(b"\r") {
            frame = f;
        }
        if frame.is_empty() {
            continue;
        }
        let json = if frame.len() > MAX_FRAME {
            serde_json::json!({
                "ok": false,
                "error": "illegal_char",
                "detail": format!("frame of {} bytes is longer than {MAX_FRAME}", frame.len()),
            })
        } else {
            to_json(&parse_scan(frame, &opts))
        };
        writeln!(out, "{json}").context("writing stdout")?;
    }
    out.flush().context("writing stdout")?;
    Ok(())
}
