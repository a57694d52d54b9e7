//! `probe --config FILE --source NAME`: reads a Modbus source's result block once and shows
//! every point decoded in all four word orders beside the raw registers, so a technician can
//! see which order (and which address base) the device really uses.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, Context};

use crate::commands::ledger::Failure;
use crate::config::{AgentConfig, ConfigError, SourcePlan};
use crate::source::modbus::{read_block_once, ModbusPlan};
use crate::source::registers::{decode, Value, WordOrder};

pub fn probe(config: &Path, source: &str) -> Result<(), Failure> {
    let cfg = AgentConfig::load(config)?;
    let plans = cfg
        .source_plans()
        .map_err(|problems| ConfigError::Invalid {
            path: config.to_owned(),
            problems,
        })?;
    let names: Vec<&str> = plans.iter().map(|s| s.name()).collect();
    let src = plans.iter().find(|s| s.name() == source).ok_or_else(|| {
        anyhow!(
            "no source {source:?} in {} (sources: {})",
            config.display(),
            names.join(", ")
        )
    })?;
    let SourcePlan::Modbus(plan) = src else {
        return Err(anyhow!(
            "source {source:?} is not a Modbus source; probe reads Modbus sources"
        )
        .into());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let regs = rt
        .block_on(read_block_once(plan))
        .map_err(anyhow::Error::msg)?;
    print!("{}", render(plan, &regs));
    Ok(())
}

/// The probe report for a block.
pub fn render(plan: &ModbusPlan, regs: &[u16]) -> String {
    let c = &plan.cfg;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "source {} ({}), unit {}, {:?} registers {}..{} (wire addresses)",
        c.name,
        c.address
            .clone()
            .or_else(|| c.port.as_ref().map(|p| format!("{} RTU", p.display())))
            .unwrap_or_default(),
        c.unit_id,
        c.table,
        plan.block,
        u32::from(plan.block) + regs.len() as u32 - 1
    );
    for (i, chunk) in regs.chunks(8).enumerate() {
        let addr = usize::from(plan.block) + i * 8;
        let hex: Vec<String> = chunk.iter().map(|r| format!("{r:04x}")).collect();
        let _ = writeln!(out, "  {addr:5}: {}", hex.join(" "));
    }
    for p in &c.points {
        let w = p.ty.width().unwrap_or(1);
        let Some(slice) = regs.get(usize::from(p.offset)..usize::from(p.offset) + w) else {
            let _ = writeln!(out, "  {} @+{}: outside the block", p.name, p.offset);
            continue;
        };
        let decoded: Vec<String> = WordOrder::ALL
            .iter()
            .map(|o| {
                let v = match decode(slice, p.ty, *o, p.scale, p.add) {
                    Ok(Value::Number(n)) => format!("{n}"),
                    Ok(Value::Text(t)) => format!("{t:?}"),
                    Err(e) => format!("({e})"),
                };
                let mark = if *o == p.order { "*" } else { "" };
                format!("{o}{mark}={v}")
            })
            .collect();
        let raw: Vec<String> = slice.iter().map(|r| format!("{r:04x}")).collect();
        let _ = writeln!(
            out,
            "  {} @+{} {:?} [{}] {} {}",
            p.name,
            p.offset,
            p.ty,
            raw.join(" "),
            decoded.join("  "),
            p.unit
        );
    }
    out
}
