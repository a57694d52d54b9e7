//! The pages: server-rendered HTML (escaped by `maud`), no script, one small stylesheet, fast
//! on a plant PC. Each page reads the witness's published snapshot and the reconciled view;
//! reads that walk the store run off the async threads.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use proofline_common::evidence::rfc3339;
use proofline_common::record::{Body, RawData, Record, StationEvent, Verdict};
use serde::Deserialize;

use super::accounts::Role;
use super::policy::{self, Access, Denied};
use super::Principal;
use crate::api::{AppState, Snapshot};
use crate::reconcile::{Entry, EntryKind};

const CSS: &str = r#"
*{box-sizing:border-box}body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#1f2d3d;color:#fff;padding:.5rem 1rem;display:flex;gap:1rem;align-items:center;flex-wrap:wrap}
header a{color:#dfe8f2;text-decoration:none}header a:hover{text-decoration:underline}
header .who{margin-left:auto;font-size:.9em}header form{display:inline}
header button{background:none;border:1px solid #8aa;color:#fff;border-radius:3px;cursor:pointer}
main{padding:1rem;max-width:1200px}h1{font-size:1.35rem;margin:.2rem 0 1rem}h2{font-size:1.1rem;margin-top:1.5rem}
table{border-collapse:collapse;background:#fff;width:100%;margin:.5rem 0}
th,td{border:1px solid #d5d9de;padding:.25rem .5rem;text-align:left;vertical-align:top}th{background:#eef1f4}
.ok{color:#176d2c;font-weight:600}.nok{color:#b3261e;font-weight:600}.warn{color:#8a5a00;font-weight:600}
.muted{color:#5d6670}.mono{font-family:ui-monospace,monospace;font-size:.85em;word-break:break-all}
.card{background:#fff;border:1px solid #d5d9de;padding:1rem;margin:.5rem 0;max-width:28rem}
label{display:block;margin:.5rem 0}input{font:inherit;padding:.3rem;width:100%}
button.primary{font:inherit;padding:.4rem 1rem;background:#1f5fa8;color:#fff;border:0;border-radius:3px;cursor:pointer}
.error{background:#fdecea;border:1px solid #f5c2bd;padding:.5rem;margin:.5rem 0}
.notice{background:#fff7e0;border:1px solid #f0d999;padding:.5rem;margin:.5rem 0}
form.inline{display:inline}nav.pager{margin:.5rem 0}
"#;

/// `GET /static/style.css`.
pub async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn may(p: &Principal, method: &str, path: &str) -> bool {
    policy::RULES
        .iter()
        .find(|r| r.method == method && r.path == path)
        .is_some_and(|r| match r.access {
            Access::Public | Access::SignedIn => true,
            Access::Roles(rs) => rs.contains(&p.role),
        })
}

fn layout(p: Option<&Principal>, title: &str, body: Markup) -> Markup {
    let links = [
        ("/stations", "Stations"),
        ("/injectors", "Injectors"),
        ("/findings", "Findings"),
        ("/alerts", "Alerts"),
        ("/audit", "Audit log"),
        ("/accounts", "Accounts"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Proofline" }
                link rel="stylesheet" href="/static/style.css";
            }
            body {
                header {
                    strong { "Proofline" }
                    @if let Some(p) = p {
                        @for (href, label) in links {
                            @if may(p, "GET", href) { a href=(href) { (label) } }
                        }
                        span.who {
                            (p.name) " · " (p.role.name())
                            @if p.us_person { " · US person" }
                            @if let Some((_, csrf)) = &p.session {
                                " "
                                form method="post" action="/signout" {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub fn message_page(status: StatusCode, msg: &str) -> Markup {
    layout(
        None,
        status.canonical_reason().unwrap_or("Error"),
        html! { h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) } p { (msg) } },
    )
}

pub fn message_page_with_link(status: StatusCode, msg: &str, link: &str) -> Markup {
    layout(
        None,
        status.canonical_reason().unwrap_or("Error"),
        html! { h1 { (status.canonical_reason().unwrap_or("")) } p { (msg) } p { a href=(link) { "Continue" } } },
    )
}

pub fn signin_page(csrf: &str, next: &str, error: Option<&str>) -> Markup {
    layout(
        None,
        "Sign in",
        html! {
            h1 { "Sign in" }
            div.card {
                @if let Some(e) = error { div.error role="alert" { (e) } }
                form method="post" action="/signin" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="next" value=(next);
                    label { "Name" input name="name" autocomplete="username" required autofocus; }
                    label { "Password" input name="password" type="password" autocomplete="current-password" required; }
                    button.primary type="submit" { "Continue" }
                }
            }
        },
    )
}

pub fn code_page(csrf: &str, next: &str, error: Option<&str>) -> Markup {
    layout(
        None,
        "Second factor",
        html! {
            h1 { "Second factor" }
            div.card {
                @if let Some(e) = error { div.error role="alert" { (e) } }
                form method="post" action="/signin/totp" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="next" value=(next);
                    label { "The 6-digit code from your authenticator" input name="code" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" required autofocus; }
                    button.primary type="submit" { "Sign in" }
                }
            }
        },
    )
}

pub fn enroll_page(
    csrf: &str,
    next: &str,
    url: &str,
    secret_b32: &str,
    error: Option<&str>,
) -> Markup {
    let svg = qrcode::QrCode::new(url.as_bytes())
        .map(|q| {
            q.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(220, 220)
                .build()
        })
        .unwrap_or_default();
    layout(
        None,
        "Enroll your second factor",
        html! {
            h1 { "Enroll your second factor" }
            div.card {
                p { "Every account signs in with a password and a code from an authenticator app (TOTP). Scan this code with the app, then enter the 6 digits it shows." }
                div id="qr" { (PreEscaped(svg)) }
                p.muted { "Or enter this key by hand: " span.mono id="secret" { (secret_b32) } }
                @if let Some(e) = error { div.error role="alert" { (e) } }
                form method="post" action="/signin/enroll" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="next" value=(next);
                    label { "Code" input name="code" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" required autofocus; }
                    button.primary type="submit" { "Enroll and sign in" }
                }
            }
        },
    )
}

fn snap(s: &AppState) -> Arc<Snapshot> {
    s.snapshot.borrow().clone()
}

fn ago(micros: i64) -> String {
    let secs = (proofline_common::record::now_micros() - micros) / 1_000_000;
    match secs {
        s if s < 0 => "just now".into(),
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s if s < 172_800 => format!("{} h ago", s / 3600),
        s => format!("{} days ago", s / 86_400),
    }
}

fn verdict(v: Verdict) -> Markup {
    match v {
        Verdict::Ok => html! { span.ok { "OK" } },
        Verdict::Nok => html! { span.nok { "NOK" } },
        Verdict::NotEvaluated => html! { span.muted { "not evaluated" } },
    }
}

/// `GET /`: what this account may open.
pub async fn home(Extension(p): Extension<Principal>) -> Response {
    let first = match p.role {
        Role::Operator => "/stations",
        Role::Quality => "/injectors",
        Role::Auditor => "/injectors",
        Role::Admin => "/accounts",
    };
    Redirect::to(first).into_response()
}

/// `GET /stations`: live status of every station.
pub async fn stations(State(s): State<AppState>, Extension(p): Extension<Principal>) -> Response {
    let snap = snap(&s);
    let alerts = s.alerts.lock().map(|b| b.list()).unwrap_or_default();
    let now = proofline_common::record::now_micros();
    let body = html! {
        h1 { "Stations" }
        table {
            thead { tr { th { "Station" } th { "Status" } th { "Ledger size" } th { "Last cosigned checkpoint" } th { "Last seen" } th { "Version" } th { "Alerts" } } }
            tbody {
                @for a in &snap.agents {
                    @let n = alerts.iter().filter(|x| x.agent_id == a.agent_id).count();
                    tr {
                        td { @if may_station(&p, &a.agent_id) { a href=(format!("/stations/{}", url_encode(&a.agent_id))) { (a.agent_id) } } @else { (a.agent_id) } }
                        td {
                            @if let Some(d) = &a.degraded { span.nok { "degraded: " (d) } }
                            @else if a.online { span.ok { "online" } }
                            @else { span.warn { "offline" } }
                        }
                        td { (a.size) }
                        td {
                            @match a.last_cosigned_at {
                                Some(t) => { "size " (a.size) ", " (ago(t as i64 * 1_000_000)) }
                                None => span.muted { "none yet" },
                            }
                        }
                        td { @match a.last_seen { Some(t) => (ago(t)), None => span.muted { "never" } } }
                        td { (a.version.as_deref().unwrap_or("")) }
                        td { @if n > 0 { span.nok { (n) } } @else { "0" } }
                    }
                }
            }
        }
        p.muted { "As of " (rfc3339(now)) ". Stations send a heartbeat checkpoint while idle; a station not seen for longer than its heartbeat raises an alert." }
    };
    layout(Some(&p), "Stations", body).into_response()
}

fn may_station(p: &Principal, agent_id: &str) -> bool {
    p.role != Role::Operator || p.station.as_deref() == Some(agent_id)
}

/// `GET /stations/{id}`: the station's recent records (an operator sees only their own).
pub async fn station(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(agent_id): Path<String>,
) -> Response {
    if !may_station(&p, &agent_id) {
        let mut r = (
            StatusCode::FORBIDDEN,
            layout(
                Some(&p),
                "Forbidden",
                html! { h1 { "Forbidden" } p { "An operator sees only their own station." } },
            ),
        )
            .into_response();
        r.extensions_mut()
            .insert(Denied(format!("operator of {:?}", p.station)));
        return r;
    }
    let snap = snap(&s);
    let Some((reader, size)) = snap.readers.get(&agent_id).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            layout(
                Some(&p),
                "No such station",
                html! { h1 { "No station " (agent_id) } },
            ),
        )
            .into_response();
    };
    let from = size.saturating_sub(50);
    let (lookup, rules, p2, id) = (
        snap.lookup.clone(),
        s.web.as_ref().map(|w| Arc::clone(&w.rules)),
        p.clone(),
        agent_id.clone(),
    );
    let (rows, withheld) = tokio::task::spawn_blocking(move || {
        let (Some(lookup), Some(rules)) = (lookup, rules) else {
            return (Vec::new(), 0);
        };
        let gate = super::ExportGate::new(&rules, &lookup, &p2);
        let mut v = Vec::new();
        let mut withheld = 0;
        for (seq, bytes) in reader.range(from..size).flatten() {
            if let Ok(r) = Record::decode(&bytes) {
                let uii = proofline_common::evidence::body_uii(r.body());
                let text = match gate.withheld_record(&id, uii) {
                    Some(m) => {
                        withheld += 1;
                        format!("{} (export-controlled, {m}: withheld)", r.body().kind())
                    }
                    None => proofline_common::evidence::summary(r.body()),
                };
                v.push((seq, r.v1().received_at, text));
            }
        }
        v.reverse();
        (v, withheld)
    })
    .await
    .unwrap_or_default();
    let body = html! {
        h1 { "Station " (agent_id) }
        p.muted { (size) " records witnessed; the latest " (rows.len()) ", newest first." }
        table {
            thead { tr { th { "Seq" } th { "Received" } th { "Record" } } }
            tbody { @for (seq, at, text) in &rows { tr { td { (seq) } td { (rfc3339(*at)) } td { (text) } } } }
        }
    };
    let mut r = layout(Some(&p), &format!("Station {agent_id}"), body).into_response();
    if withheld > 0 {
        r.extensions_mut().insert(Denied(format!(
            "{withheld} export-controlled record(s) withheld"
        )));
    }
    r
}

#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
}

/// `GET /injectors?q=`: search by UII, serial or a part of either.
pub async fn injectors(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<SearchQuery>,
) -> Response {
    let needle: String =
        q.q.unwrap_or_default()
            .trim()
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
    let snap = snap(&s);
    let mut found = (Vec::new(), false);
    if !needle.is_empty() {
        if let Some(lookup) = snap.lookup.clone() {
            let n = needle.clone();
            found = tokio::task::spawn_blocking(move || lookup.search(&n, 50))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
        }
    }
    if found.0.len() == 1 && found.0[0].eq_ignore_ascii_case(&needle) {
        return Redirect::to(&format!("/injectors/{}", url_encode(&found.0[0]))).into_response();
    }
    let body = html! {
        h1 { "Injectors" }
        form method="get" action="/injectors" {
            label { "UII, serial number, or a part of either" input name="q" value=(needle) autofocus; }
            button.primary type="submit" { "Search" }
        }
        @if !needle.is_empty() {
            @if found.0.is_empty() { p { "No injector matches " strong { (needle) } "." } }
            @else {
                ul id="results" { @for u in &found.0 { li { a href=(format!("/injectors/{}", url_encode(u))) { (u) } } } }
                @if found.1 { p.muted { "Only the first 50 are shown; narrow the search." } }
            }
        }
    };
    layout(Some(&p), "Injectors", body).into_response()
}

fn raw_text(raw: &RawData) -> String {
    match raw {
        RawData::ModbusRegisters {
            unit,
            function,
            address,
            registers,
        } => {
            let regs: Vec<String> = registers.iter().map(|r| format!("{r:04x}")).collect();
            format!(
                "Modbus unit {unit} function {function} address {address}: {}",
                regs.join(" ")
            )
        }
        RawData::SerialLine(b) => format!("serial line: {}", hex::encode(b.as_slice())),
        RawData::OpenProtocol(b) => {
            format!("Open Protocol: {}", String::from_utf8_lossy(b.as_slice()))
        }
        RawData::Other(b) => format!("bytes: {}", hex::encode(b.as_slice())),
    }
}

struct InjectorView {
    /// The export-control marking of its part type, and whether this account may not see its
    /// technical data.
    marking: Option<String>,
    withheld: bool,
    timeline: Vec<Entry>,
    route: Option<crate::reconcile::rules::RouteState>,
    findings: Vec<crate::reconcile::rules::Finding>,
    raw: std::collections::BTreeMap<(String, u64), String>,
    qms: std::collections::BTreeMap<(String, u64), crate::qms::OutboxEntry>,
}

/// `GET /injectors/{uii}`: the route, the timeline, every result with its characteristics and
/// raw device bytes, the evidence status of each record, QMS delivery, findings.
pub async fn injector(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(uii): Path<String>,
) -> Response {
    let snap = snap(&s);
    let Some(lookup) = snap.lookup.clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            layout(
                Some(&p),
                "Not ready",
                html! { p { "The reconciled view is not open yet." } },
            ),
        )
            .into_response();
    };
    if uii.is_empty() || uii.len() > proofline_common::evidence::MAX_UII_BYTES {
        return (
            StatusCode::BAD_REQUEST,
            layout(
                Some(&p),
                "Bad UII",
                html! { p { "A UII has 1 to 64 characters." } },
            ),
        )
            .into_response();
    }
    let (u, snap2) = (uii.clone(), Arc::clone(&snap));
    let (rules, p2) = (s.web.as_ref().map(|w| Arc::clone(&w.rules)), p.clone());
    let view = tokio::task::spawn_blocking(move || -> Result<InjectorView, String> {
        let timeline = lookup.timeline(&u).map_err(|e| e.to_string())?;
        let route = lookup.route(&u).map_err(|e| e.to_string())?;
        let rules = rules.ok_or("no rules")?;
        let gate = super::ExportGate::new(&rules, &lookup, &p2);
        let marking = gate.marking(&u);
        if let Some(m) = gate.withheld(&u) {
            return Ok(InjectorView {
                marking: Some(m),
                withheld: true,
                timeline,
                route,
                findings: Vec::new(),
                raw: Default::default(),
                qms: Default::default(),
            });
        }
        let mut findings = Vec::new();
        for f in lookup.findings() {
            let f = f.map_err(|e| e.to_string())?;
            if f.uii.as_deref() == Some(u.as_str()) {
                findings.push(f);
            }
        }
        let mut raw = std::collections::BTreeMap::new();
        let mut qms = std::collections::BTreeMap::new();
        for e in &timeline {
            if let EntryKind::Result { .. } = e.kind {
                let key = (e.proof.agent_id.clone(), e.proof.seq);
                if let Some((reader, _)) = snap2.readers.get(&e.proof.agent_id) {
                    if let Ok(Some(bytes)) = reader.get(e.proof.seq) {
                        if let Ok(r) = Record::decode(&bytes) {
                            if let Body::InspectionResult(ir) = r.body() {
                                raw.insert(key.clone(), raw_text(&ir.raw));
                            }
                        }
                    }
                }
                if let Ok(Some(o)) = lookup.outbox(&e.proof.agent_id, e.proof.seq) {
                    qms.insert(key, o);
                }
            }
        }
        Ok(InjectorView {
            marking,
            withheld: false,
            timeline,
            route,
            findings,
            raw,
            qms,
        })
    })
    .await;
    let v = match view {
        Ok(Ok(v)) => v,
        _ => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                layout(
                    Some(&p),
                    "Error",
                    html! { p { "The reconciled view could not be read." } },
                ),
            )
                .into_response()
        }
    };
    if v.timeline.is_empty() {
        return (
            StatusCode::NOT_FOUND,
            layout(Some(&p), "No such injector", html! { h1 { "No injector " (uii) } p { "Nothing about this UII has been witnessed." } p { a href="/injectors" { "Search" } } }),
        )
            .into_response();
    }
    let cosigned = |agent: &str, seq: u64| -> Markup {
        match snap.agents.iter().find(|a| a.agent_id == agent) {
            Some(a) if seq < a.size && a.last_cosigned_at.is_some() => html! {
                span.ok { "witnessed" } ", cosigned in checkpoint size " (a.size) " at " (rfc3339(a.last_cosigned_at.unwrap_or(0) as i64 * 1_000_000))
            },
            Some(_) => html! { span.warn { "witnessed, not yet cosigned" } },
            None => html! { span.muted { "station no longer enrolled" } },
        }
    };
    if v.withheld {
        return withheld_page(&p, &uii, &v);
    }
    // Its hold findings all closed by triage: the interlock releases it.
    let hold_released = s.web.as_ref().is_some_and(|w| {
        let t = w.triage();
        v.findings
            .iter()
            .filter(|f| f.severity == crate::reconcile::rules::FindingSeverity::Hold)
            .all(|f| t.state(&f.id) == super::triage::State::Closed)
    });
    let body = html! {
        h1 { "Injector " span.mono { (uii) } }
        @if let Some(m) = &v.marking { div.notice id="export-control" { strong { "Export-controlled: " (m) "." } " Shown to you as an authorized account; do not pass it on." } }
        @if let Some(r) = &v.route {
            p {
                "Part type " strong { (r.part_type.as_deref().unwrap_or("(none configured)")) } ". "
                @if r.on_hold && !hold_released { span.nok { "ON HOLD. " } } @else if r.on_hold { span.warn { "Hold released: every hold finding is closed. " } }
                @if r.complete { span.ok { "Route complete." } }
                @else if let Some(n) = &r.next { "Next operation: " strong { (n) } "." }
            }
            @if !r.passed.is_empty() {
                p { "Passed: " @for (i, (op, proof)) in r.passed.iter().enumerate() { @if i > 0 { " → " } (op) " (" (proof.agent_id) " #" (proof.seq) ")" } }
            }
        }
        @if may(&p, "GET", "/injectors/{uii}/evidence") {
            p { a id="evidence" href=(format!("/injectors/{}/evidence", url_encode(&uii))) { "Download the evidence bundle" } " (verify it with " span.mono { "proofline-agent evidence verify FILE --trust KEYFILE" } ")" }
        }
        h2 { "Findings" }
        @if v.findings.is_empty() { p.muted { "None." } }
        @else {
            table { thead { tr { th { "Rule" } th { "Severity" } th { "Station" } th { "Explanation" } } }
                tbody { @for f in &v.findings { tr { td { (f.rule.name()) } td { (format!("{:?}", f.severity).to_lowercase()) } td { (f.station.as_deref().unwrap_or("")) } td { (f.explanation) } } } } }
        }
        h2 { "Timeline" }
        table id="timeline" {
            thead { tr { th { "Station clock" } th { "Station" } th { "Record" } th { "Evidence" } } }
            tbody {
                @for e in &v.timeline {
                    tr {
                        td { (rfc3339(e.at)) }
                        td { (e.proof.agent_id) " #" (e.proof.seq) }
                        td { (entry_markup(e, &v)) }
                        td { (cosigned(&e.proof.agent_id, e.proof.seq)) }
                    }
                }
            }
        }
    };
    layout(Some(&p), &format!("Injector {uii}"), body).into_response()
}

/// The injector page for an account that may not see its export-controlled technical data:
/// that it exists, its part type, where it is on its route, which stations saw it.
fn withheld_page(p: &Principal, uii: &str, v: &InjectorView) -> Response {
    let stations: std::collections::BTreeSet<&str> = v
        .timeline
        .iter()
        .map(|e| e.proof.agent_id.as_str())
        .collect();
    let m = v.marking.clone().unwrap_or_default();
    let body = html! {
        h1 { "Injector " span.mono { (uii) } }
        div.notice id="export-control" { strong { "Export-controlled: " (m) "." } " Its technical data (measurements, limits, raw device data, evidence) is shown to authorized accounts only; this account is not marked as one. The access is recorded." }
        @if let Some(r) = &v.route {
            p {
                "Part type " strong { (r.part_type.as_deref().unwrap_or("")) } ". "
                @if r.on_hold { span.nok { "ON HOLD. " } }
                @if r.complete { span.ok { "Route complete." } }
                @else if let Some(n) = &r.next { "Next operation: " strong { (n) } "." }
            }
        }
        p { "Seen at: " (stations.into_iter().collect::<Vec<_>>().join(", ")) "." }
    };
    let mut r = layout(Some(p), &format!("Injector {uii}"), body).into_response();
    r.extensions_mut().insert(Denied(format!(
        "export-controlled technical data withheld ({m})"
    )));
    r
}

fn entry_markup(e: &Entry, v: &InjectorView) -> Markup {
    let key = (e.proof.agent_id.clone(), e.proof.seq);
    match &e.kind {
        EntryKind::Scan {
            role,
            identity,
            rejected,
            value,
        } => html! {
            (format!("{role:?} scan")) @if let Some(r) = rejected { " refused: " (r) }
            @if let Some(v) = value { ": " (v) }
            @if let Some(i) = identity { span.muted { " (construct " (i.construct) @if let Some(pn) = &i.part_number { ", part number " (pn) } @if let Some(sn) = &i.serial { ", serial " (sn) } ")" } }
        },
        EntryKind::Result {
            source,
            device,
            test_plan,
            operator,
            verdict: vd,
            device_identifier_mismatch,
            characteristics,
            ..
        } => html! {
            "Result " (verdict(*vd)) " from " (device) " on " (source)
            @if let Some((id, rev)) = test_plan { ", test plan " (id) " rev " (rev) }
            @if let Some(o) = operator { ", operator " (o) }
            @if let Some(m) = device_identifier_mismatch { br; span.nok { "The device reported " (m) } }
            table.result {
                thead { tr { th { "Characteristic" } th { "Value" } th { "Nominal" } th { "Lower" } th { "Upper" } th { "Verdict" } } }
                tbody { @for c in characteristics { tr {
                    td { (c.name) }
                    td { @if let Some(x) = c.value { (x) " " (c.unit.as_deref().unwrap_or("")) } @else if let Some(ok) = c.ok { @if ok { "OK" } @else { "NOK" } } }
                    td { @if let Some(x) = c.nominal { (x) } }
                    td { @if let Some(x) = c.lower { (x) } }
                    td { @if let Some(x) = c.upper { (x) } }
                    td { (verdict(c.verdict)) }
                } } }
            }
            @if let Some(r) = v.raw.get(&key) { div.mono { "Raw device data: " (r) } }
            @if let Some(o) = v.qms.get(&key) {
                div { "QMS: " @match &o.state {
                    crate::qms::Delivery::Delivered { report_number, at, .. } => { span.ok { "delivered" } ", report " strong { (report_number) } " at " (rfc3339(*at)) },
                    crate::qms::Delivery::Pending => { span.warn { "pending" } " (" (o.attempts) " attempts" @if let Some(e) = &o.last_error { ", last error: " (e) } ")" },
                    crate::qms::Delivery::Parked { error } => { span.nok { "parked" } ": " (error) },
                } }
            }
        },
        EntryKind::ScanTimeout => html! { "Scanned but not tested in time" },
        EntryKind::Alarm {
            source,
            code,
            message,
        } => html! { span.warn { "Alarm " (code) } " on " (source) ": " (message) },
        EntryKind::Station { event } => html! { "Station event: " (event) },
        EntryKind::Interlock {
            outcome,
            released,
            detail,
            hub_signed,
        } => html! {
            "Route interlock " (outcome) ": " (detail) "; bench " @if *released { "released" } @else { "held" }
            @if !*hub_signed { span.warn { " (not answered by the hub)" } }
        },
    }
}

#[derive(Debug, Deserialize)]
pub struct FindingsQuery {
    rule: Option<String>,
    uii: Option<String>,
    state: Option<String>,
    /// What the last triage did (shown once after the redirect).
    done: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct TriageForm {
    csrf: String,
    action: String,
    #[serde(default)]
    reason: String,
}

/// `POST /findings/{id}/triage`: acknowledge, close (with a reason) or reopen; the decision is
/// in the hub ledger before the page says it is done.
pub async fn triage(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    axum::Form(f): axum::Form<TriageForm>,
) -> Response {
    use super::triage::{self, Action, Decision};
    let refuse = |status: StatusCode, msg: &str| {
        (status, layout(Some(&p), "Triage", html! { h1 { "Triage refused" } p { (msg) } p { a href="/findings" { "Back to the findings" } } })).into_response()
    };
    let Some((_, csrf)) = &p.session else {
        return refuse(
            StatusCode::FORBIDDEN,
            "Triage is done from the findings page.",
        );
    };
    if !super::session::same_secret(csrf, &f.csrf) {
        return refuse(
            StatusCode::FORBIDDEN,
            "The form has expired; reload the page.",
        );
    }
    let Some(web) = s.web.clone() else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "No triage on this server.");
    };
    let Some(action) = Action::parse(&f.action) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "The action is acknowledge, close or reopen.",
        );
    };
    let Some(lookup) = snap(&s).lookup.clone() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "The reconciled view is not open yet.",
        );
    };
    let i = id.clone();
    let finding = tokio::task::spawn_blocking(move || lookup.finding(&i))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let Some(finding) = finding else {
        return refuse(
            StatusCode::NOT_FOUND,
            "There is no such finding (it may have been withdrawn).",
        );
    };
    let decision = {
        let t = web.triage();
        match t.check(&id, action, &f.reason) {
            Ok((state, reason)) => Decision {
                state,
                by: p.name.clone(),
                at: proofline_common::record::now_micros(),
                reason,
            },
            Err(e) => return refuse(StatusCode::BAD_REQUEST, &e),
        }
    };
    let before = web.triage().decision(&id).cloned();
    if let Err(e) = web.triage().put(&id, decision.clone()) {
        tracing::error!(error = %e, "a triage decision could not be stored");
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "The decision could not be stored.",
        );
    }
    let entry = triage::entry(&id, finding.uii.as_deref(), &decision);
    if let Err(e) = web.ledger.append(vec![entry]).await {
        // Not in the ledger: not taken.
        tracing::error!(error = %e, "a triage decision could not be recorded in the hub ledger");
        let mut t = web.triage();
        let _ = match before {
            Some(b) => t.put(&id, b),
            None => t.put(
                &id,
                Decision {
                    state: triage::State::Open,
                    by: "-".into(),
                    at: 0,
                    reason: String::new(),
                },
            ),
        };
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "The decision could not be recorded in the hub ledger; nothing changed.",
        );
    }
    let done = format!("{} {}", finding.rule.name(), decision.state.name());
    Redirect::to(&format!("/findings?done={}", url_encode(&done))).into_response()
}

/// `GET /findings?rule=&uii=&state=`: the findings, filtered, with their triage.
pub async fn findings(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<FindingsQuery>,
) -> Response {
    use super::triage::State as Triaged;
    use crate::reconcile::rules::Rule;
    let rule = q
        .rule
        .as_deref()
        .filter(|r| !r.is_empty())
        .and_then(Rule::parse);
    let uii = q.uii.clone().filter(|u| !u.is_empty());
    let want = q.state.as_deref().and_then(Triaged::parse);
    let snap = snap(&s);
    let (web, p2) = (s.web.clone(), p.clone());
    let list = match (snap.lookup.clone(), web) {
        (Some(lookup), Some(web)) => tokio::task::spawn_blocking(move || {
            let gate = super::ExportGate::new(&web.rules, &lookup, &p2);
            let mut list = lookup
                .findings()
                .flatten()
                .filter(|f| rule.is_none_or(|r| f.rule == r))
                .filter(|f| uii.as_deref().is_none_or(|u| f.uii.as_deref() == Some(u)))
                .filter(|f| want.is_none_or(|w| web.triage().state(&f.id) == w))
                .take(500)
                .collect::<Vec<_>>();
            for f in &mut list {
                crate::api::withhold_finding(&gate, f);
            }
            list.into_iter()
                .map(|f| {
                    let d = web.triage().decision(&f.id).cloned();
                    (f, d)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default(),
        _ => Vec::new(),
    };
    let triage_form = may(&p, "POST", "/findings/{id}/triage");
    let body = html! {
        h1 { "Findings" }
        form method="get" action="/findings" {
            label { "Rule" select name="rule" {
                option value="" { "any" }
                @for r in Rule::ALL { option value=(r.name()) selected[q.rule.as_deref() == Some(r.name())] { (r.name()) } }
            } }
            label { "UII" input name="uii" value=(q.uii.as_deref().unwrap_or("")); }
            label { "State" select name="state" {
                option value="" { "any" }
                @for st in ["open", "acknowledged", "closed"] { option value=(st) selected[q.state.as_deref() == Some(st)] { (st) } }
            } }
            button.primary type="submit" { "Filter" }
        }
        @if let Some(d) = &q.done { div.notice id="done" { "Recorded in the hub ledger: " (d) "." } }
        p.muted { (list.len()) " shown (at most 500). A finding is open until someone triages it; each decision is recorded in the hub ledger." }
        table id="findings" {
            thead { tr { th { "Rule" } th { "Severity" } th { "Injector" } th { "Station" } th { "Explanation" } th { "Triage" } } }
            tbody { @for (f, d) in &list { tr {
                td { (f.rule.name()) }
                td { @match f.severity { crate::reconcile::rules::FindingSeverity::Hold => span.nok { "hold" }, crate::reconcile::rules::FindingSeverity::Review => span.warn { "review" } } }
                td { @if let Some(u) = &f.uii { @if may(&p, "GET", "/injectors/{uii}") { a href=(format!("/injectors/{}", url_encode(u))) { (u) } } @else { (u) } } }
                td { (f.station.as_deref().unwrap_or("")) }
                td { (f.explanation) @if f.low_confidence { span.muted { " (low confidence: station clocks)" } } }
                td {
                    @let state = d.as_ref().map_or(Triaged::Open, |d| d.state);
                    strong.state { (state.name()) }
                    @if let Some(d) = d.as_ref().filter(|d| d.at > 0) {
                        br; span.muted { "by " (d.by) " at " (rfc3339(d.at)) }
                        @if !d.reason.is_empty() { br; "“" (d.reason) "”" }
                    }
                    @if let (true, Some((_, csrf))) = (triage_form, &p.session) {
                        @let action = format!("/findings/{}/triage", url_encode(&f.id));
                        @if state == Triaged::Open {
                            form method="post" action=(action) { input type="hidden" name="csrf" value=(csrf); input type="hidden" name="action" value="acknowledge"; button type="submit" { "Acknowledge" } }
                        }
                        @if state != Triaged::Closed {
                            form method="post" action=(action) { input type="hidden" name="csrf" value=(csrf); input type="hidden" name="action" value="close"; input name="reason" placeholder="reason (required)" required maxlength="500"; button type="submit" { "Close" } }
                        } @else {
                            form method="post" action=(action) { input type="hidden" name="csrf" value=(csrf); input type="hidden" name="action" value="reopen"; button type="submit" { "Reopen" } }
                        }
                    }
                }
            } } }
        }
    };
    layout(Some(&p), "Findings", body).into_response()
}

/// `GET /alerts`.
pub async fn alerts(State(s): State<AppState>, Extension(p): Extension<Principal>) -> Response {
    let list = s.alerts.lock().map(|b| b.list()).unwrap_or_default();
    let body = html! {
        h1 { "Alerts" }
        @if list.is_empty() { p.muted { "None." } }
        table id="alerts" {
            thead { tr { th { "Kind" } th { "Station" } th { "Message" } th { "Count" } th { "Last" } } }
            tbody { @for a in &list { tr {
                td { @if a.security { span.nok { (a.kind.name()) } } @else { (a.kind.name()) } }
                td { (a.agent_id) } td { (a.message) } td { (a.count) } td { (rfc3339(a.last_at)) }
            } } }
        }
    };
    layout(Some(&p), "Alerts", body).into_response()
}

/// One access record of the hub ledger.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRow {
    pub seq: u64,
    pub at: i64,
    #[serde(flatten)]
    pub event: proofline_common::record::AccessEvent,
}

/// The access records before `before` (newest first), at most `limit`, and the seq to page on.
fn audit_rows(
    s: &AppState,
    before: Option<u64>,
    limit: usize,
) -> Option<(Vec<AuditRow>, Option<u64>)> {
    let web = s.web.as_ref()?;
    let ledger = web.ledger.clone();
    let end = before.unwrap_or(u64::MAX).min(ledger.head().size);
    let mut rows = Vec::new();
    let mut hi = end;
    while hi > 0 && rows.len() < limit {
        let lo = hi.saturating_sub(1000);
        let mut chunk = Vec::new();
        for (seq, bytes) in ledger.reader().range(lo..hi).flatten() {
            if let Ok(r) = Record::decode(&bytes) {
                if let Body::StationEvent(StationEvent::Access(e)) = r.body() {
                    chunk.push(AuditRow {
                        seq,
                        at: r.v1().received_at,
                        event: e.clone(),
                    });
                }
            }
        }
        while let Some(r) = chunk.pop() {
            if rows.len() == limit {
                return Some((rows, Some(r.seq + 1)));
            }
            rows.push(r);
        }
        hi = lo;
    }
    Some((rows, (hi > 0).then_some(hi)))
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    before: Option<u64>,
}

/// `GET /audit?before=`: the access audit, newest first.
pub async fn audit(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<AuditQuery>,
) -> Response {
    let s2 = s.clone();
    let rows = tokio::task::spawn_blocking(move || audit_rows(&s2, q.before, 200))
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let body = html! {
        h1 { "Access audit" }
        p.muted { "Every sign-in, sign-out, failure, lockout, access and denial, as recorded in the hub's ledger (verified by " span.mono { "proofline-hub ledger verify" } "). " a href="/audit/export" { "Export the hub ledger" } " (JSON lines, as " span.mono { "ledger export" } " writes them)." }
        table id="audit" {
            thead { tr { th { "Seq" } th { "When" } th { "Who" } th { "Role" } th { "What" } th { "From" } th { "Outcome" } } }
            tbody { @for r in &rows.0 { tr {
                td { (r.seq) } td { (rfc3339(r.at)) } td { (r.event.who) } td { (r.event.role.as_deref().unwrap_or("")) }
                td.mono { (r.event.what) } td { (r.event.from) }
                td { @if r.event.outcome.starts_with("allowed") || r.event.outcome.starts_with("ok") || r.event.outcome.starts_with("applied") { (r.event.outcome) } @else { span.nok { (r.event.outcome) } } }
            } } }
        }
        @if let Some(b) = rows.1 { nav.pager { a href=(format!("/audit?before={b}")) { "Older" } } }
    };
    layout(Some(&p), "Access audit", body).into_response()
}

/// `GET /api/v1/audit?before=`: the same as JSON.
pub async fn audit_api(State(s): State<AppState>, Query(q): Query<AuditQuery>) -> Response {
    let s2 = s.clone();
    match tokio::task::spawn_blocking(move || audit_rows(&s2, q.before, 1000))
        .await
        .ok()
        .flatten()
    {
        Some((rows, older)) => {
            axum::Json(serde_json::json!({ "records": rows, "older_before": older }))
                .into_response()
        }
        None => policy::api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no access audit on this server",
        ),
    }
}

#[derive(Debug, Deserialize)]
pub struct ExportQuery {
    from: Option<u64>,
}

/// Records one export holds at most (`?from=` continues).
pub const EXPORT_MAX: u64 = 100_000;

/// `GET /audit/export?from=`: the hub ledger as export lines (every record, so that the chain
/// can be checked), a download.
pub async fn audit_export(State(s): State<AppState>, Query(q): Query<ExportQuery>) -> Response {
    let Some(web) = s.web.clone() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let from = q.from.unwrap_or(0);
    let body = tokio::task::spawn_blocking(move || {
        let head = web.ledger.head().size;
        let to = from.saturating_add(EXPORT_MAX).min(head);
        let mut out = String::new();
        if from < to {
            for (seq, bytes) in web.ledger.reader().range(from..to).flatten() {
                if let Ok(line) = proofline_common::export::export_line(seq, &bytes) {
                    out.push_str(&line);
                    out.push('\n');
                }
            }
        }
        out
    })
    .await
    .unwrap_or_default();
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"hub-ledger.jsonl\"",
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /accounts`: every account with its role, MFA state and lockout (the access review).
pub async fn accounts(State(s): State<AppState>, Extension(p): Extension<Principal>) -> Response {
    let views: Vec<_> = s
        .web
        .as_ref()
        .map(|w| w.accounts().all().map(|a| a.view()).collect())
        .unwrap_or_default();
    let body = html! {
        h1 { "Accounts" }
        p.muted { "Accounts are added, disabled and reset with " span.mono { "proofline-hub user" } " on the hub; every change is in the access audit." }
        table id="accounts" {
            thead { tr { th { "Name" } th { "Role" } th { "Kind" } th { "US person" } th { "Station" } th { "Second factor" } th { "State" } th { "Last sign-in" } } }
            tbody { @for a in &views { tr {
                td { (a.name) } td { (a.role) } td { (a.kind) } td { @if a.us_person { "yes" } @else { "no" } }
                td { (a.station.as_deref().unwrap_or("")) }
                td { @if a.kind == "service" { "token" } @else if a.mfa_enrolled { "enrolled" } @else { span.warn { "not yet enrolled" } } }
                td { @if a.disabled { span.nok { "disabled" } } @else if let Some(t) = a.locked_until.filter(|t| *t > proofline_common::record::now_micros()) { span.nok { "locked until " (rfc3339(t)) } } @else { "active" } @if a.failures > 0 { " (" (a.failures) " failed)" } }
                td { @match a.last_signin { Some(t) => (rfc3339(t)), None => span.muted { "never" } } }
            } } }
        }
    };
    layout(Some(&p), "Accounts", body).into_response()
}
