//! Ledger commands for operators and auditors.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use proofline_common::export::{export_line, verify_export as verify_export_lines, ExportError};
use proofline_common::note::{Checkpoint, VerifierKey};
use proofline_common::store::{Access, Store, StoreError, StoreOptions, VerifyScope};
use proofline_common::Origin;

/// How a command failed: a fault found by verification (exit 3) or any other error (exit 1).
#[derive(Debug)]
pub enum Failure {
    Fault(String),
    Error(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Error(e.into())
    }
}

fn open_read(
    data_dir: &Path,
    scope: VerifyScope,
) -> Result<(Store, proofline_common::store::OpenReport), Failure> {
    let opts = StoreOptions {
        verify: scope,
        ..StoreOptions::default()
    };
    match Store::open(data_dir, Access::Read, &opts) {
        Ok(v) => Ok(v),
        Err(StoreError::Fault(f)) => Err(Failure::Fault(format!(
            "ledger in {}: {f}",
            data_dir.display()
        ))),
        Err(e) => Err(Failure::Error(e.into())),
    }
}

pub fn check_config(path: &Path) -> Result<(), Failure> {
    use crate::config::{AgentConfig, ConfigError};
    let cfg = AgentConfig::load(path)?;
    let problems = cfg.environment_problems();
    if !problems.is_empty() {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        }
        .into());
    }
    let names: Vec<&str> = cfg.sources.iter().map(|s| s.name()).collect();
    println!(
        "ok: {} is station {} with {} source(s): {}",
        path.display(),
        cfg.origin().map_err(anyhow::Error::msg)?,
        names.len(),
        names.join(", ")
    );
    Ok(())
}

pub fn keygen(origin: &str, out: &Path) -> Result<(), Failure> {
    let origin = Origin::parse(origin)?;
    let signer = crate::keyfile::generate(&origin, out)?;
    println!("{}", signer.verifier());
    Ok(())
}

pub fn verify(data_dir: &Path, full: bool) -> Result<(), Failure> {
    let scope = if full {
        VerifyScope::Full
    } else {
        VerifyScope::SinceCosigned
    };
    let (store, report) = open_read(data_dir, scope)?;
    let cosigned = store
        .cosigned()
        .map_or_else(|| "none".to_owned(), |c| c.size.to_string());
    let mut line = format!(
        "ok: ledger {} size {} root {} boot {} verified from seq {}{}; last cosigned size {}",
        store.origin(),
        report.head.size,
        report.head.root,
        report.boot,
        report.verified_from,
        if full { " (full)" } else { "" },
        cosigned,
    );
    if report.torn_records > 0 {
        line.push_str(&format!(
            "; {} never-acknowledged records beyond the last commit will be cut when the agent starts",
            report.torn_records
        ));
    }
    println!("{line}");
    Ok(())
}

pub fn export(data_dir: &Path, from: u64, to: Option<u64>) -> Result<(), Failure> {
    let (store, report) = open_read(data_dir, VerifyScope::SinceCosigned)?;
    let end = match to {
        Some(to) => to.saturating_add(1).min(report.head.size),
        None => report.head.size,
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for item in store.reader().range(from..end) {
        let (seq, bytes) = item?;
        let line = export_line(seq, &bytes)
            .map_err(|e| Failure::Fault(format!("seq {seq}: modified: {e}")))?;
        writeln!(out, "{line}").context("writing export")?;
    }
    out.flush().context("writing export")?;
    Ok(())
}

pub fn checkpoint(data_dir: &Path, key: &Path) -> Result<(), Failure> {
    let (signer, origin) = crate::keyfile::load(key)?;
    let (store, report) = open_read(data_dir, VerifyScope::SinceCosigned)?;
    if *store.origin() != origin {
        return Err(anyhow::anyhow!(
            "key {} signs for {origin}, but the ledger in {} is {}",
            key.display(),
            data_dir.display(),
            store.origin()
        )
        .into());
    }
    let cp = Checkpoint {
        origin: origin.to_string(),
        size: report.head.size,
        root: report.head.root,
    };
    print!("{}", cp.sign(&signer)?);
    Ok(())
}

/// `evidence verify`: prints what the bundle proves, or the first thing wrong with it.
pub fn verify_evidence(file: &Path, trust: &Path) -> Result<(), Failure> {
    use proofline_common::evidence;
    let text = std::fs::read_to_string(trust)
        .with_context(|| format!("cannot read trust file {}", trust.display()))?;
    let keys = evidence::parse_trust(&text)
        .map_err(|e| anyhow::anyhow!("trust file {}: {e}", trust.display()))?;
    let meta = std::fs::metadata(file)
        .with_context(|| format!("cannot read bundle {}", file.display()))?;
    if meta.len() > evidence::MAX_BUNDLE_BYTES as u64 {
        return Err(Failure::Fault(format!(
            "{}: {} bytes, larger than any bundle ({} MiB)",
            file.display(),
            meta.len(),
            evidence::MAX_BUNDLE_BYTES >> 20
        )));
    }
    let bytes =
        std::fs::read(file).with_context(|| format!("cannot read bundle {}", file.display()))?;
    let proven = evidence::parse(&bytes)
        .and_then(|b| evidence::verify(&b, &keys))
        .map_err(|e| Failure::Fault(format!("{}: {e}", file.display())))?;
    print!("{proven}");
    println!(
        "ok: {} record(s) of injector {} verified: every station signature, hub cosignature and inclusion proof checks, and none listed in the hub's manifest is missing",
        proven.records(),
        proven.uii
    );
    Ok(())
}

pub fn verify_export(file: &Path, checkpoint: &Path, pubkey: &str) -> Result<(), Failure> {
    let key = match VerifierKey::parse(pubkey) {
        Ok(k) => k,
        Err(e) if Path::new(pubkey).is_file() => {
            let text = std::fs::read_to_string(pubkey)
                .with_context(|| format!("cannot read verifier key file {pubkey}"))?;
            VerifierKey::parse(&text)
                .map_err(|_| e)
                .with_context(|| format!("verifier key file {pubkey}"))?
        }
        Err(e) => return Err(Failure::Error(e.into())),
    };
    let note = std::fs::read_to_string(checkpoint)
        .with_context(|| format!("cannot read checkpoint file {}", checkpoint.display()))?;
    let f =
        File::open(file).with_context(|| format!("cannot open export file {}", file.display()))?;
    match verify_export_lines(BufReader::new(f), &note, &key) {
        Ok(r) => {
            let mut line = format!(
                "ok: {} records of {} verified against checkpoint size {} root {} signed by {}+{}",
                r.records,
                r.checkpoint.origin,
                r.checkpoint.size,
                r.checkpoint.root,
                key.name(),
                key.key_id_hex()
            );
            if r.beyond_checkpoint > 0 {
                line.push_str(&format!(
                    "; {} later records are chained but not covered by this checkpoint",
                    r.beyond_checkpoint
                ));
            }
            println!("{line}");
            Ok(())
        }
        Err(ExportError::Fault(f)) => Err(Failure::Fault(f.to_string())),
        Err(ExportError::Checkpoint(e)) => Err(Failure::Error(
            anyhow::Error::new(e).context(format!("checkpoint file {}", checkpoint.display())),
        )),
        Err(e) => Err(Failure::Error(
            anyhow::Error::new(e).context(format!("export file {}", file.display())),
        )),
    }
}
