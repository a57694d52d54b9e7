//! Alterations of ledger exports (JSON lines `{"seq","leaf","record","body"}`).

use anyhow::{anyhow, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use proofline_common::export::export_line;
use proofline_common::record::Record;

fn record_bytes(line: &str) -> Result<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_str(line).context("export line is JSON")?;
    let rec = v["record"]
        .as_str()
        .ok_or_else(|| anyhow!("no record field"))?;
    Ok(B64.decode(rec)?)
}

fn index_of(lines: &[String], seq: u64) -> Result<usize> {
    lines
        .iter()
        .position(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["seq"].as_u64())
                == Some(seq)
        })
        .ok_or_else(|| anyhow!("seq {seq} not in export"))
}

/// Rewrites record `seq` with a different receive time and re-renders the whole line (leaf and
/// body consistent with the new bytes): the careful forger's edit.
pub fn modify_record(lines: &mut [String], seq: u64) -> Result<()> {
    let i = index_of(lines, seq)?;
    let Record::V1(mut r) = Record::decode(&record_bytes(&lines[i])?)?;
    r.received_at += 1_000_000;
    lines[i] = export_line(seq, &Record::V1(r).encode())?;
    Ok(())
}

/// Flips one bit of record `seq`'s stored bytes and leaves the rest of the line alone.
pub fn flip_record_byte(lines: &mut [String], seq: u64, byte: usize) -> Result<()> {
    let i = index_of(lines, seq)?;
    let mut bytes = record_bytes(&lines[i])?;
    let at = byte % bytes.len();
    bytes[at] ^= 0x01;
    let mut v: serde_json::Value = serde_json::from_str(&lines[i])?;
    v["record"] = serde_json::Value::String(B64.encode(&bytes));
    lines[i] = v.to_string();
    Ok(())
}

pub fn remove(lines: &mut Vec<String>, seq: u64) -> Result<()> {
    let i = index_of(lines, seq)?;
    lines.remove(i);
    Ok(())
}

pub fn swap(lines: &mut [String], a: u64, b: u64) -> Result<()> {
    let (i, j) = (index_of(lines, a)?, index_of(lines, b)?);
    lines.swap(i, j);
    Ok(())
}

/// Keeps the first `keep` lines.
pub fn truncate(lines: &mut Vec<String>, keep: usize) {
    lines.truncate(keep);
}

/// Replaces the lines from `at` on with `foreign` lines (another station's export).
pub fn splice(lines: &mut Vec<String>, at: u64, foreign: &[String]) -> Result<()> {
    let i = index_of(lines, at)?;
    let end = (i + foreign.len()).min(lines.len());
    lines.splice(i..end, foreign.iter().cloned());
    Ok(())
}
