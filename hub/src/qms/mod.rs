//! Delivery of every inspection result to the plant's central QMS, exactly once
//! (`reference/qms-api.md`).
//!
//! - **Outbox.** A bound result of a mapped station gets an [`OutboxEntry`] in the reconciler's
//!   index, in the batch that reconciles its record: it is durable with the record, before
//!   anything is sent. It is never made again, not even by a rebuild.
//! - **Exactly once.** The QMS de-duplicates nothing and can answer 5xx after committing, so
//!   the hub owns idempotency: each report's `description` starts with the hub event id
//!   (`proofline:<origin>:<seq>`), and before every POST the worker searches the QMS for that
//!   id (compared exactly: the search is a substring match) and posts only when it is absent.
//!   Entries are delivered one at a time, so the writes for one part are serialized.
//! - **Parts** are found by exact ERP_id (the UII; the filter is a substring match) or created;
//!   two QMS parts with the same ERP_id raise a finding and park the entry: never a guess.
//! - **Failures.** Timeout, 5xx (HTML), a cut connection: outcome unknown, retried with backoff
//!   (search first). 429: the server's wait. 401 "expired": the worker stops calling and alerts
//!   with the remedy (the QMS logs in again with the same expired key: no login loop). A 3xx is
//!   a configuration error (redirects are never followed), and so is a 403 (the account lacks a
//!   permission: every entry would be refused alike). A permanent 4xx parks the entry with
//!   the QMS's error; `proofline-hub qms retry <event id>` puts it back.
//!
//! - `client`: the QMS's API, answers classified; `worker`: the delivery loop.

use std::collections::BTreeMap;
use std::path::PathBuf;

use proofline_common::config::Problems;
use serde::{Deserialize, Serialize};

use crate::reconcile::{Entry, EntryKind};

pub mod client;
pub mod worker;

/// `[qms]` in hub.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QmsSection {
    /// `https://qms.plant.example` (plain `http://` only on loopback).
    pub base_url: String,
    /// The hub's dedicated, least-privilege QMS account.
    pub email: String,
    /// One line: the account's password.
    pub password_file: PathBuf,
    /// `X-Tenant-ID` (uuid or slug) of a multi-tenant QMS; checked against the account's
    /// tenants at start. Leave out for a dedicated deployment.
    #[serde(default)]
    pub tenant: Option<String>,
    /// CA that signed the QMS's certificate, when the system's roots do not.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// The QMS part type of new parts (uuid).
    pub part_type: String,
    /// station → Step, bench → Equipment, characteristic → MeasurementDefinition.
    #[serde(default)]
    pub station: Vec<QmsStation>,
}

fn default_timeout_secs() -> u64 {
    10
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QmsStation {
    pub agent_id: String,
    /// The QMS Step this station performs (uuid).
    pub step: String,
    /// The QMS Equipment row of its bench (uuid).
    #[serde(default)]
    pub equipment: Option<String>,
    /// Characteristic name → MeasurementDefinition (uuid) of that step.
    #[serde(default)]
    pub measurements: BTreeMap<String, String>,
}

/// The mapping, checked.
#[derive(Debug, Clone)]
pub struct QmsPlan {
    pub base_url: String,
    pub email: String,
    pub password_file: PathBuf,
    pub tenant: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub timeout: std::time::Duration,
    pub part_type: String,
    pub stations: BTreeMap<String, QmsStation>,
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

impl QmsSection {
    /// Checks the section, adding every problem with its key path.
    pub fn plan(&self, p: &mut Problems) -> QmsPlan {
        match reqwest::Url::parse(&self.base_url) {
            Ok(u) => {
                let loopback = u.host_str().is_some_and(|h| {
                    h == "localhost"
                        || h.trim_matches(['[', ']'])
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|a| a.is_loopback())
                });
                if u.scheme() != "https" && !(u.scheme() == "http" && loopback) {
                    p.add(
                        "qms.base_url",
                        "must be https:// (plain http only to a QMS on this machine): the hub sends its password and token",
                    );
                }
                if u.path() != "/" || u.query().is_some() {
                    p.add(
                        "qms.base_url",
                        "is the QMS's root (scheme, host and port): the hub adds /api/...",
                    );
                }
            }
            Err(e) => p.add("qms.base_url", format!("{:?}: {e}", self.base_url)),
        }
        if !self.email.contains('@') {
            p.add("qms.email", "is not an e-mail address");
        }
        if !(1..=300).contains(&self.timeout_secs) {
            p.add("qms.timeout_secs", "must be 1 to 300");
        }
        if let Some(t) = &self.tenant {
            if t.is_empty() || t.len() > 100 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                p.add("qms.tenant", "must be a uuid or a slug");
            }
        }
        if !is_uuid(&self.part_type) {
            p.add(
                "qms.part_type",
                format!("{:?} is not a uuid", self.part_type),
            );
        }
        let mut stations = BTreeMap::new();
        for (i, s) in self.station.iter().enumerate() {
            let at = format!("qms.station[{i}]");
            if !is_uuid(&s.step) {
                p.add(&format!("{at}.step"), format!("{:?} is not a uuid", s.step));
            }
            if let Some(e) = &s.equipment {
                if !is_uuid(e) {
                    p.add(&format!("{at}.equipment"), format!("{e:?} is not a uuid"));
                }
            }
            for (c, d) in &s.measurements {
                if !is_uuid(d) {
                    p.add(
                        &format!("{at}.measurements.{c}"),
                        format!("{d:?} is not a uuid"),
                    );
                }
            }
            if stations.insert(s.agent_id.clone(), s.clone()).is_some() {
                p.add(
                    &format!("{at}.agent_id"),
                    format!("{} is mapped twice", s.agent_id),
                );
            }
        }
        QmsPlan {
            base_url: self.base_url.trim_end_matches('/').to_owned(),
            email: self.email.clone(),
            password_file: self.password_file.clone(),
            tenant: self.tenant.clone(),
            ca_file: self.ca_file.clone(),
            timeout: std::time::Duration::from_secs(self.timeout_secs.clamp(1, 300)),
            part_type: self.part_type.clone(),
            stations,
        }
    }
}

/// `check-config --online`: logs in, checks the tenant and that every mapped id exists, and
/// refuses a NUMERIC measurement definition without nominal and tolerances (the QMS fails every
/// report that uses one). The problems, each naming its key.
pub async fn check_online(plan: &QmsPlan) -> Result<Vec<String>, anyhow::Error> {
    let mut c = client::QmsClient::new(plan).map_err(anyhow::Error::msg)?;
    c.check_tenant().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = Vec::new();
    let check = |out: &mut Vec<String>,
                 key: String,
                 r: Result<Option<serde_json::Value>, client::Failure>| match r {
        Ok(Some(v)) => Some(v),
        Ok(None) => {
            out.push(format!("{key}: no such row in the QMS"));
            None
        }
        Err(e) => {
            out.push(format!("{key}: {e}"));
            None
        }
    };
    let r = c.get("PartTypes", &plan.part_type).await;
    check(&mut out, "qms.part_type".into(), r);
    for (i, (id, s)) in plan.stations.iter().enumerate() {
        let at = format!("qms.station[{i}] ({id})");
        let r = c.get("Steps", &s.step).await;
        check(&mut out, format!("{at}.step"), r);
        if let Some(e) = &s.equipment {
            let r = c.get("Equipment", e).await;
            check(&mut out, format!("{at}.equipment"), r);
        }
        for (name, d) in &s.measurements {
            let r = c.get("MeasurementDefinitions", d).await;
            let Some(def) = check(&mut out, format!("{at}.measurements.{name}"), r) else {
                continue;
            };
            let missing = ["nominal", "upper_tol", "lower_tol"]
                .into_iter()
                .filter(|k| def[*k].is_null())
                .collect::<Vec<_>>();
            if def["type"] == "NUMERIC" && !missing.is_empty() {
                out.push(format!(
                    "{at}.measurements.{name}: definition {d} is NUMERIC without {} — the QMS fails every report that uses it; set them in the QMS",
                    missing.join(", ")
                ));
            }
            if def["step"].as_str().is_some_and(|st| st != s.step) {
                out.push(format!(
                    "{at}.measurements.{name}: definition {d} belongs to another step than {}",
                    s.step
                ));
            }
        }
    }
    Ok(out)
}

/// Where `proofline-hub qms retry` leaves its requests for the running hub.
pub fn retry_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("qms-retry")
}

/// Where an outbox entry is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Not yet delivered (or its last attempt's outcome is unknown).
    Pending,
    /// In the QMS: its report's id and number.
    Delivered {
        report_id: String,
        report_number: String,
        /// UTC microseconds.
        at: i64,
    },
    /// Refused by the QMS (or unsendable): waits for an operator (`qms retry`).
    Parked { error: String },
}

/// One result to deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub uii: String,
    pub agent_id: String,
    pub seq: u64,
    /// Station clock of the result (its timeline key).
    pub at: i64,
    pub state: Delivery,
    pub attempts: u32,
    pub last_error: Option<String>,
}

impl OutboxEntry {
    pub fn new(uii: &str, e: &Entry) -> OutboxEntry {
        OutboxEntry {
            uii: uii.to_owned(),
            agent_id: e.proof.agent_id.clone(),
            seq: e.proof.seq,
            at: e.at,
            state: Delivery::Pending,
            attempts: 0,
            last_error: None,
        }
    }

    /// The hub event id, `proofline:<origin>:<seq>`, carried in the report's description.
    pub fn event_id(&self, site: &str) -> String {
        format!("proofline:proofline/{site}/{}:{}", self.agent_id, self.seq)
    }
}

/// A report as it is posted: built from the result's timeline entry and the mapping. Err names
/// why it cannot be sent (parked at once, nothing sent).
pub fn report_body(
    plan: &QmsPlan,
    event_id: &str,
    uii: &str,
    part_id: &str,
    e: &Entry,
) -> Result<serde_json::Value, String> {
    use proofline_common::record::Verdict;
    let EntryKind::Result {
        verdict,
        characteristics,
        device,
        ..
    } = &e.kind
    else {
        return Err("the outbox entry's record is not an inspection result".into());
    };
    let Some(st) = plan.stations.get(&e.proof.agent_id) else {
        return Err(format!(
            "station {} is no longer mapped to a QMS Step ([[qms.station]])",
            e.proof.agent_id
        ));
    };
    let mut measurements = Vec::new();
    for c in characteristics {
        let Some(def) = st.measurements.get(&c.name) else {
            continue;
        };
        let (numeric, pass_fail) = match (c.value, c.ok) {
            (Some(v), _) => {
                // Decimal(9,6) on the QMS side.
                if !(v.is_finite() && v.abs() < 1000.0) {
                    return Err(format!(
                        "{} = {v} does not fit the QMS's measurement field (|value| < 1000)",
                        c.name
                    ));
                }
                (Some(v), None)
            }
            (None, Some(ok)) => (None, Some(if ok { "PASS" } else { "FAIL" })),
            (None, None) => (None, None),
        };
        measurements.push(serde_json::json!({
            "definition": def,
            "value_numeric": numeric,
            "value_pass_fail": pass_fail,
        }));
    }
    let status = match verdict {
        Verdict::Ok => "PASS",
        Verdict::Nok => "FAIL",
        Verdict::NotEvaluated => "PENDING",
    };
    let bench_time = utc(e.at);
    let mut description = format!("{event_id} bench {device} at {bench_time} UII {uii}");
    if description.len() > 300 {
        description.truncate(300);
    }
    let mut body = serde_json::json!({
        "status": status,
        "part": part_id,
        "step": st.step,
        "description": description,
        "sampling_method": "100% (Proofline)",
        "measurements": measurements,
    });
    if let Some(eq) = &st.equipment {
        body["production_equipment"] = serde_json::json!(eq);
    }
    Ok(body)
}

/// UTC microseconds as RFC 3339 (`2026-12-07T08:15:00.123456Z`).
pub fn utc(micros: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{micros} µs since 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_format_as_rfc3339() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_796_601_600_123_456), "2026-12-07T00:00:00.123456Z");
    }
}
