//! The QMS's REST API as the hub uses it, every answer classified ([`Failure`]).
//!
//! The HTTP client never follows a redirect (a 3xx is a configuration error: a followed POST
//! becomes a GET that answers 200 with a list), keeps no cookies (the session cookie login
//! sets makes token calls fail CSRF), sends `X-Tenant-ID` on every call when a tenant is
//! configured, and uses only the `Token` scheme.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::QmsPlan;

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// No answer, a 5xx, a cut connection or an answer that does not read: for a write, the
    /// outcome is unknown. Retried later, after a search.
    Transient(String),
    /// 429: retry after this long.
    Throttled(Duration, String),
    /// A 4xx the QMS will give again: the entry is parked with it.
    Refused(String),
    /// The hub cannot go on until someone acts (expired token, bad login, a redirect, a
    /// tenant the account is not in): delivery stops and an alert says what to do.
    Stopped(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transient(s) | Failure::Refused(s) | Failure::Stopped(s) => f.write_str(s),
            Failure::Throttled(d, s) => write!(f, "{s} (retry in {} s)", d.as_secs()),
        }
    }
}

/// Most bytes of a QMS error kept in a message.
const MAX_ERROR: usize = 400;
/// Most parts with one ERP_id read (there should be one).
const MAX_PAGE: usize = 200;

#[derive(Debug)]
pub struct QmsClient {
    http: reqwest::Client,
    base: String,
    tenant: Option<String>,
    email: String,
    password: String,
    token: Option<String>,
}

impl QmsClient {
    /// A client for `plan`, with its password read from its file.
    pub fn new(plan: &QmsPlan) -> Result<QmsClient, String> {
        let password = std::fs::read_to_string(&plan.password_file)
            .map_err(|e| format!("reading {}: {e}", plan.password_file.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_owned();
        if password.is_empty() {
            return Err(format!("{} is empty", plan.password_file.display()));
        }
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(plan.timeout)
            .connect_timeout(plan.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("proofline-hub/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &plan.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("reading {}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
        let http = b.build().map_err(|e| format!("the HTTP client: {e}"))?;
        Ok(QmsClient {
            http,
            base: plan.base_url.clone(),
            tenant: plan.tenant.clone(),
            email: plan.email.clone(),
            password,
            token: None,
        })
    }

    async fn login(&mut self) -> Result<(), Failure> {
        let r = self
            .http
            .post(format!("{}/auth/login/", self.base))
            .json(&serde_json::json!({"email": self.email, "password": self.password}))
            .send()
            .await
            .map_err(|e| Failure::Transient(format!("login: {}", describe(&e))))?;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        match status {
            StatusCode::OK => {
                let v: Value = serde_json::from_str(&text)
                    .map_err(|_| Failure::Transient("login: the answer is not JSON".into()))?;
                let key = v["key"].as_str().unwrap_or_default();
                if key.is_empty() || key.len() > 200 {
                    return Err(Failure::Transient("login: the answer has no key".into()));
                }
                self.token = Some(key.to_owned());
                Ok(())
            }
            StatusCode::TOO_MANY_REQUESTS => Err(throttled(&text)),
            s if s.is_redirection() => Err(redirected("login", s)),
            s if s.is_server_error() => Err(Failure::Transient(format!("login: HTTP {s}"))),
            s => Err(Failure::Stopped(format!(
                "the QMS refused the hub's login as {} (HTTP {s}: {}): check qms.email and qms.password_file",
                self.email,
                short(&text)
            ))),
        }
    }

    /// One call, logged in first if need be; a 401 that is not an expiry is answered with one
    /// new login, never more.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), Failure> {
        for fresh_login in [false, true] {
            if self.token.is_none() || fresh_login {
                self.login().await?;
            }
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .query(query)
                .header(
                    reqwest::header::AUTHORIZATION,
                    format!("Token {}", self.token.as_deref().unwrap_or("")),
                );
            if let Some(t) = &self.tenant {
                req = req.header("X-Tenant-ID", t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let what = format!("{method} {path}");
            let r = req
                .send()
                .await
                .map_err(|e| Failure::Transient(format!("{what}: {}", describe(&e))))?;
            let status = r.status();
            let text = r.text().await.map_err(|e| {
                Failure::Transient(format!("{what}: the answer was cut: {}", describe(&e)))
            })?;
            match status {
                s if s.is_success() => {
                    let v = serde_json::from_str(&text).map_err(|_| {
                        Failure::Transient(format!(
                            "{what}: HTTP {s} with an answer that is not JSON"
                        ))
                    })?;
                    return Ok((s, v));
                }
                StatusCode::UNAUTHORIZED if text.contains("expired") => {
                    return Err(Failure::Stopped(
                        "the QMS token has expired, and the QMS logs the hub in again with the same expired key: have the QMS administrator set API_TOKEN_TTL_SECONDS=0 for the deployment (or issue the hub's account a new token), then restart the hub".into(),
                    ));
                }
                StatusCode::UNAUTHORIZED if !fresh_login => continue,
                StatusCode::TOO_MANY_REQUESTS => return Err(throttled(&text)),
                s if s.is_redirection() => return Err(redirected(&what, s)),
                s if s.is_server_error() => {
                    let html = text.trim_start().starts_with('<');
                    return Err(Failure::Transient(format!(
                        "{what}: HTTP {s}{}",
                        if html { " (HTML)" } else { "" }
                    )));
                }
                StatusCode::FORBIDDEN if text.contains("tenant") => {
                    return Err(Failure::Stopped(format!(
                        "{what}: the QMS refuses the tenant {:?}: {}",
                        self.tenant.as_deref().unwrap_or(""),
                        short(&text)
                    )))
                }
                // A missing permission refuses every entry alike: parking them one by one
                // would hide it. Delivery stops until the account is given it.
                StatusCode::FORBIDDEN => {
                    return Err(Failure::Stopped(format!(
                        "{what}: the QMS refuses the hub's account {} (HTTP 403: {}): give it the permissions it needs (view and add Parts and QualityReports)",
                        self.email,
                        short(&text)
                    )))
                }
                s => {
                    return Err(Failure::Refused(format!(
                        "{what}: HTTP {s}: {}",
                        short(&text)
                    )))
                }
            }
        }
        Err(Failure::Stopped(
            "the QMS refuses the hub's token right after a login: check the account's permissions"
                .into(),
        ))
    }

    /// Checks the configured tenant is one of the account's (`/api/user/tenants/`, which
    /// works without the header).
    pub async fn check_tenant(&mut self) -> Result<(), Failure> {
        let Some(t) = self.tenant.clone() else {
            return Ok(());
        };
        let (_, v) = self
            .call(Method::GET, "/api/user/tenants/", &[], None)
            .await?;
        let listed = v["results"].as_array().is_some_and(|l| {
            l.iter()
                .any(|x| x["id"].as_str() == Some(&t) || x["slug"].as_str() == Some(&t))
        });
        if listed {
            Ok(())
        } else {
            Err(Failure::Stopped(format!(
                "the QMS account {} is not a member of tenant {t:?} (qms.tenant)",
                self.email
            )))
        }
    }

    /// The parts whose ERP_id is exactly `erp_id` (the QMS filter matches substrings).
    pub async fn parts(&mut self, erp_id: &str) -> Result<Vec<Value>, Failure> {
        let limit = MAX_PAGE.to_string();
        let (_, v) = self
            .call(
                Method::GET,
                "/api/Parts/",
                &[("ERP_id", erp_id), ("limit", &limit)],
                None,
            )
            .await?;
        Ok(results(&v)
            .into_iter()
            .filter(|p| p["ERP_id"].as_str() == Some(erp_id))
            .collect())
    }

    /// Creates a part; its id.
    pub async fn create_part(&mut self, erp_id: &str, part_type: &str) -> Result<String, Failure> {
        let body = serde_json::json!({"ERP_id": erp_id, "part_type": part_type});
        let (_, v) = self
            .call(Method::POST, "/api/Parts/", &[], Some(&body))
            .await?;
        id_of(&v, "the new part")
    }

    /// The report whose description starts with `event_id`, if the QMS has one.
    pub async fn report(&mut self, event_id: &str) -> Result<Option<Value>, Failure> {
        let (_, v) = self
            .call(
                Method::GET,
                "/api/QualityReports/",
                &[("search", event_id), ("limit", "50")],
                None,
            )
            .await?;
        Ok(results(&v).into_iter().find(|r| {
            r["description"].as_str().and_then(|d| d.split(' ').next()) == Some(event_id)
        }))
    }

    /// Posts a report; the created row.
    pub async fn post_report(&mut self, body: &Value) -> Result<Value, Failure> {
        let (_, v) = self
            .call(Method::POST, "/api/QualityReports/", &[], Some(body))
            .await?;
        id_of(&v, "the new report")?;
        Ok(v)
    }

    /// One row by id (None: the QMS has no such row).
    pub async fn get(&mut self, resource: &str, id: &str) -> Result<Option<Value>, Failure> {
        match self
            .call(Method::GET, &format!("/api/{resource}/{id}/"), &[], None)
            .await
        {
            Ok((_, v)) => Ok(Some(v)),
            Err(Failure::Refused(e)) if e.contains("404") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The latest calibration record of a bench.
    pub async fn latest_calibration(&mut self, equipment: &str) -> Result<Option<Value>, Failure> {
        let (_, v) = self
            .call(
                Method::GET,
                "/api/CalibrationRecords/",
                &[
                    ("equipment", equipment),
                    ("ordering", "-calibration_date"),
                    ("limit", "1"),
                ],
                None,
            )
            .await?;
        Ok(results(&v).into_iter().next())
    }
}

fn results(v: &Value) -> Vec<Value> {
    v["results"].as_array().cloned().unwrap_or_default()
}

fn id_of(v: &Value, what: &str) -> Result<String, Failure> {
    match v["id"].as_str() {
        Some(id) if !id.is_empty() && id.len() <= 64 => Ok(id.to_owned()),
        _ => Err(Failure::Transient(format!(
            "{what} came back without an id"
        ))),
    }
}

fn throttled(text: &str) -> Failure {
    // "Request was throttled. Expected available in N seconds."
    let secs = text
        .split("available in ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(60)
        .clamp(1, 3600);
    Failure::Throttled(
        Duration::from_secs(secs),
        "the QMS throttles the hub".into(),
    )
}

fn redirected(what: &str, s: StatusCode) -> Failure {
    Failure::Stopped(format!(
        "{what}: the QMS answered HTTP {s} (a redirect, never followed): qms.base_url must be the QMS's own root, https, with no path"
    ))
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "no answer in time".into()
    } else if e.is_connect() {
        format!("cannot connect: {e}")
    } else {
        e.to_string()
    }
}

fn short(text: &str) -> String {
    let t = text.trim();
    if t.len() <= MAX_ERROR {
        return t.to_owned();
    }
    let mut end = MAX_ERROR;
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &t[..end])
}
