//! Q-DAS ASCII transfer format (AQDEF) export of the reconciled results, for quality staff's
//! SPC tools (`reference/traceability.md`).
//!
//! One `.dfq` file: for each part number a header block (`K0100` characteristics, `K1001`
//! part number, `K1002` part type), one characteristic per chart population — (part number,
//! characteristic, test plan revision, bench), never pooled — described by `K2001`/`K2002`
//! (number, and description naming the bench and plan), `K2101` nominal, `K2110`/`K2111` limits
//! and `K2142` unit, then each value as `K0001` value, `K0002` attribute (0: valid), `K0004`
//! date/time `DD.MM.YYYY/HH:MM:SS` (UTC), `K0008` operator, `K0012` gauge (the bench) and
//! `K0014` part identifier (the UII). Attribute (OK/NOK) characteristics are left out: they
//! belong on p charts, which AQDEF carries differently.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::reconcile::{EntryKind, Projection};

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct QdasQuery {
    pub part_type: String,
    pub characteristic: Option<String>,
    /// Station-clock bounds, UTC microseconds (from inclusive, to exclusive).
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// One chart population's values.
#[derive(Debug, Default)]
struct Population {
    nominal: Option<f64>,
    lower: Option<f64>,
    upper: Option<f64>,
    unit: Option<String>,
    values: Vec<Value>,
}

#[derive(Debug)]
struct Value {
    v: f64,
    at: i64,
    operator: Option<String>,
    bench: String,
    uii: String,
}

/// (part number, characteristic, plan id and revision, bench) → population.
type Key = (String, String, String, String);

/// The `.dfq` text, and how many values it holds.
pub fn export(p: &Projection, q: &QdasQuery) -> (String, usize) {
    let mut pops: BTreeMap<Key, Population> = BTreeMap::new();
    for (uii, timeline) in &p.injectors {
        let on_type = p
            .routes
            .get(uii)
            .and_then(|r| r.part_type.as_deref())
            .is_some_and(|t| t == q.part_type);
        if !on_type {
            continue;
        }
        let pn = timeline
            .iter()
            .find_map(|e| match &e.kind {
                EntryKind::Scan {
                    identity: Some(i), ..
                } => i.part_number.clone(),
                _ => None,
            })
            .unwrap_or_else(|| q.part_type.clone());
        for e in timeline {
            if q.from.is_some_and(|f| e.at < f) || q.to.is_some_and(|t| e.at >= t) {
                continue;
            }
            let EntryKind::Result {
                device,
                test_plan,
                operator,
                characteristics,
                ..
            } = &e.kind
            else {
                continue;
            };
            let plan = test_plan
                .as_ref()
                .map(|(id, rev)| format!("{id} rev {rev}"))
                .unwrap_or_else(|| "no plan".into());
            let bench = format!("{} ({device})", e.proof.agent_id);
            for c in characteristics {
                if q.characteristic.as_ref().is_some_and(|n| *n != c.name) {
                    continue;
                }
                let Some(v) = c.value else { continue };
                let pop = pops
                    .entry((pn.clone(), c.name.clone(), plan.clone(), bench.clone()))
                    .or_default();
                pop.nominal = c.nominal;
                pop.lower = c.lower;
                pop.upper = c.upper;
                pop.unit = c.unit.clone();
                pop.values.push(Value {
                    v,
                    at: e.at,
                    operator: operator.clone(),
                    bench: e.proof.agent_id.clone(),
                    uii: uii.clone(),
                });
            }
        }
    }
    let mut out = String::new();
    let mut n = 0;
    let mut by_part: BTreeMap<&str, Vec<(&Key, &Population)>> = BTreeMap::new();
    for (k, pop) in &pops {
        by_part.entry(k.0.as_str()).or_default().push((k, pop));
    }
    for (pn, list) in by_part {
        let _ = writeln!(out, "K0100 {}", list.len());
        let _ = writeln!(out, "K1001 {}", field(pn));
        let _ = writeln!(out, "K1002 {}", field(&q.part_type));
        for (i, (k, pop)) in list.iter().enumerate() {
            let i = i + 1;
            let _ = writeln!(out, "K2001/{i} {}", field(&k.1));
            let _ = writeln!(
                out,
                "K2002/{i} {}",
                field(&format!("{} at {}, {}", k.1, k.3, k.2))
            );
            if let Some(x) = pop.nominal {
                let _ = writeln!(out, "K2101/{i} {x}");
            }
            if let Some(x) = pop.lower {
                let _ = writeln!(out, "K2110/{i} {x}");
            }
            if let Some(x) = pop.upper {
                let _ = writeln!(out, "K2111/{i} {x}");
            }
            if let Some(u) = &pop.unit {
                let _ = writeln!(out, "K2142/{i} {}", field(u));
            }
        }
        for (i, (_, pop)) in list.iter().enumerate() {
            let i = i + 1;
            for v in &pop.values {
                let _ = writeln!(out, "K0001/{i} {}", v.v);
                let _ = writeln!(out, "K0002/{i} 0");
                let _ = writeln!(out, "K0004/{i} {}", qdas_time(v.at));
                if let Some(o) = &v.operator {
                    let _ = writeln!(out, "K0008/{i} {}", field(o));
                }
                let _ = writeln!(out, "K0012/{i} {}", field(&v.bench));
                let _ = writeln!(out, "K0014/{i} {}", field(&v.uii));
                n += 1;
            }
        }
    }
    (out, n)
}

/// A field's text on one line: control characters (a line break would start a new K-field)
/// become spaces.
fn field(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `DD.MM.YYYY/HH:MM:SS`, UTC.
pub fn qdas_time(micros: i64) -> String {
    let fmt = time::macros::format_description!("[day].[month].[year]/[hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp(micros.div_euclid(1_000_000))
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_day_month_year() {
        assert_eq!(
            qdas_time(1_796_601_600_000_000 + 3_723_000_000),
            "07.12.2026/01:02:03"
        );
        assert_eq!(field("a\nb\tc"), "a b c");
    }
}
