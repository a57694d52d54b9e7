//! The hub's HTTP API (loopback only until the API has user accounts): health, Prometheus
//! metrics, agents, alerts and the witnessed records of each agent in the same JSON shape as
//! `proofline-agent ledger export`.
//!
//! It is served by [`proofline_common::http::serve`]: a header-read timeout, an idle timeout and
//! a cap on connections (`[api]` settings), so slow or silent clients cannot use up the hub's
//! descriptors; refused connections are counted in `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use proofline_common::http::{HttpCounters, HttpLimits};
use proofline_common::store::Reader;
use serde::Deserialize;

use crate::alerts::{AlertBook, AlertKind};
use crate::web::Principal;
use crate::witness::AgentView;

/// What the witness last published for readers.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub agents: Vec<AgentView>,
    pub readers: BTreeMap<String, (Reader, u64)>,
    /// The reconciled view (findings, timelines, routes).
    pub lookup: Option<crate::reconcile::Lookup>,
    /// Each witnessed station's key (the route interlock checks its questions with it).
    pub keys: BTreeMap<String, proofline_common::note::VerifierKey>,
}

#[derive(Debug, Default)]
pub struct HubMetrics {
    pub batches: AtomicU64,
    pub records_stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected: AtomicU64,
    pub resends: AtomicU64,
    pub mqtt_connected: AtomicU64,
    /// Sessions the broker accepted (each CONNACK): more than one means the session was lost
    /// (broker restart, network, or someone taking the hub's client id).
    pub mqtt_connections: AtomicU64,
    pub witness_groups: AtomicU64,
    /// Verified messages taken before (broker redeliveries, replays).
    pub replays: AtomicU64,
    /// Messages not acted on: unknown or unverified senders, replays, protocol v1.
    pub ignored: AtomicU64,
    /// Messages on topics that are not Proofline's, or with an id no station can have.
    pub dropped_topics: AtomicU64,
    /// Alerts that could not be written into the hub ledger.
    pub alerts_unrecorded: AtomicU64,
    /// Batches not taken while the disk was below the free-space reserve (the stations send
    /// them again).
    pub deferred: AtomicU64,
    /// Findings raised or changed (each change counted).
    pub findings_changed: AtomicU64,
    /// Route interlock questions answered, allowed and refused.
    pub interlock_allowed: AtomicU64,
    pub interlock_refused: AtomicU64,
    /// Questions not answered: unknown or unverified senders, replays, malformed, or the
    /// hub too busy (its queue full; the station's offline policy decides).
    pub interlock_ignored: AtomicU64,
    pub interlock_dropped: AtomicU64,
    /// Free bytes on the data directory's file system, as last checked.
    pub storage_free_bytes: AtomicU64,
    /// What `/healthz` and the watchdog report.
    pub health: crate::health::HealthSignals,
    /// The API's connections: open, refused over the cap, timed out.
    pub http: Arc<HttpCounters>,
    /// The embedded broker's access control, for its refusal counters (None: another broker).
    pub broker_acl: Option<Arc<crate::acl::BrokerAcl>>,
}

#[derive(Debug, Clone)]
pub struct AppState {
    pub snapshot: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    pub alerts: Arc<Mutex<AlertBook>>,
    pub metrics: Arc<HubMetrics>,
    /// The QMS delivery's state, when a QMS is configured.
    pub qms: Option<Arc<Mutex<crate::qms::worker::QmsStatus>>>,
    /// Evidence bundles (None: this server makes none).
    pub evidence: Option<EvidenceMaker>,
    /// Accounts, sessions and the access audit (None: nothing but `/healthz` is served).
    pub web: Option<Arc<crate::web::Web>>,
}

/// What the API needs to make evidence bundles: the hub's key, and a bound on how many are made
/// at once (each reads its stations' ledgers up to their checkpoints).
#[derive(Debug, Clone)]
pub struct EvidenceMaker {
    pub signer: proofline_common::note::NoteSigner,
    pub slots: Arc<tokio::sync::Semaphore>,
}

impl EvidenceMaker {
    /// Bundles made at once; further requests wait their turn.
    pub const AT_ONCE: usize = 2;

    pub fn new(signer: proofline_common::note::NoteSigner) -> Self {
        EvidenceMaker {
            signer,
            slots: Arc::new(tokio::sync::Semaphore::new(Self::AT_ONCE)),
        }
    }
}

/// The HTTP API server.
pub struct ApiServer {
    pub listener: tokio::net::TcpListener,
    pub state: AppState,
    /// HTTPS (None: plain HTTP, loopback only).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Serves with the default limits until `shutdown`.
    pub async fn run(self, shutdown: tokio_util::sync::CancellationToken) {
        self.run_with(HttpLimits::default(), shutdown).await
    }

    /// Serves within `limits` (the plan's `api_limits`) until `shutdown`.
    pub async fn run_with(self, limits: HttpLimits, shutdown: tokio_util::sync::CancellationToken) {
        let counters = Arc::clone(&self.state.metrics.http);
        proofline_common::http::serve_with(
            self.listener,
            router(self.state),
            limits,
            counters,
            "api",
            self.tls,
            shutdown,
        )
        .await
    }
}

/// Every route behind the access control ([`crate::web::policy`]).
pub fn router(state: AppState) -> Router {
    crate::web::policy::router(state)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

pub(crate) async fn agents(State(s): State<AppState>) -> Response {
    let snap = s.snapshot.borrow().clone();
    Json(&snap.agents).into_response()
}

pub(crate) async fn alerts(State(s): State<AppState>) -> Response {
    let list = s.alerts.lock().map(|b| b.list()).unwrap_or_default();
    Json(list).into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct RecordsQuery {
    from: Option<String>,
    limit: Option<String>,
}

/// Most records one request returns.
pub const MAX_LIMIT: u64 = 1000;

pub(crate) async fn records(
    State(s): State<AppState>,
    p: Option<Extension<Principal>>,
    Path(agent_id): Path<String>,
    Query(q): Query<RecordsQuery>,
) -> Response {
    let parse = |name: &str, v: &Option<String>, default: u64| -> Result<u64, String> {
        match v {
            None => Ok(default),
            Some(t) => t
                .parse::<u64>()
                .map_err(|_| format!("{name}={t:?} is not a non-negative integer")),
        }
    };
    let (from, limit) = match (parse("from", &q.from, 0), parse("limit", &q.limit, 100)) {
        (Ok(_), Ok(0)) => return error(StatusCode::BAD_REQUEST, "limit must be at least 1"),
        (Ok(f), Ok(l)) => (f, l.min(MAX_LIMIT)),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Some((reader, size)) = s.snapshot.borrow().readers.get(&agent_id).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no enrolled agent {agent_id:?}"),
        );
    };
    let to = from.saturating_add(limit).min(size);
    let gate = export_gate(&s, p.as_deref());
    // Each record is rendered exactly as `ledger export` renders it (re-parsing would reprint
    // f32 values as f64); an export-controlled one the account may not see is only named.
    let out = tokio::task::spawn_blocking(move || -> Result<(String, usize), String> {
        let mut out = String::from("[");
        let mut withheld = 0;
        if from < to {
            let gate = gate
                .as_ref()
                .map(|(rules, lookup, p)| crate::web::ExportGate::new(rules, lookup, p));
            for item in reader.range(from..to) {
                let (seq, bytes) = item.map_err(|e| e.to_string())?;
                let hidden = gate.as_ref().and_then(|g| {
                    let rec = proofline_common::record::Record::decode(&bytes).ok();
                    let uii = rec
                        .as_ref()
                        .and_then(|r| proofline_common::evidence::body_uii(r.body()));
                    g.withheld_record(&agent_id, uii)
                });
                let line = match &hidden {
                    Some(m) => serde_json::json!({
                        "seq": seq,
                        "withheld": format!("export-controlled technical data ({m}): shown to authorized accounts only"),
                    })
                    .to_string(),
                    None => proofline_common::export::export_line(seq, &bytes)
                        .map_err(|e| e.to_string())?,
                };
                withheld += usize::from(hidden.is_some());
                if out.len() > 1 {
                    out.push(',');
                }
                out.push_str(&line);
            }
        }
        out.push(']');
        Ok((out, withheld))
    })
    .await;
    match out {
        Ok(Ok((v, withheld))) => {
            let mut r = ([(header::CONTENT_TYPE, "application/json")], v).into_response();
            if withheld > 0 {
                r.extensions_mut()
                    .insert(crate::web::policy::Denied(format!(
                        "{withheld} export-controlled record(s) withheld"
                    )));
            }
            r
        }
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the witnessed ledger: {e}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct FindingsQuery {
    state: Option<String>,
    rule: Option<String>,
    uii: Option<String>,
    limit: Option<String>,
}

/// A finding as the API shows it: with its triage state (`open` until someone triages it) and
/// the last decision.
#[derive(Debug, serde::Serialize)]
struct FindingOut<'a> {
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    triage: Option<crate::web::triage::Decision>,
    #[serde(flatten)]
    finding: &'a crate::reconcile::rules::Finding,
}

/// The triage state and last decision of a finding (open when nothing records otherwise).
fn triage_of(
    web: Option<&Arc<crate::web::Web>>,
    id: &str,
) -> (&'static str, Option<crate::web::triage::Decision>) {
    match web {
        Some(w) => {
            let t = w.triage();
            (t.state(id).name(), t.decision(id).cloned())
        }
        None => ("open", None),
    }
}

const FINDING_STATES: [&str; 3] = ["open", "acknowledged", "closed"];

/// `GET /api/v1/findings?state=&rule=&uii=&limit=`: findings in id order, filtered.
pub(crate) async fn findings(
    State(s): State<AppState>,
    p: Option<Extension<Principal>>,
    Query(q): Query<FindingsQuery>,
) -> Response {
    use crate::reconcile::rules::Rule;
    if let Some(st) = &q.state {
        if !FINDING_STATES.contains(&st.as_str()) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("state={st:?} is not one of {}", FINDING_STATES.join(", ")),
            );
        }
    }
    let rule = match q.rule.as_deref().map(|r| (r, Rule::parse(r))) {
        None => None,
        Some((_, Some(r))) => Some(r),
        Some((r, None)) => {
            let names: Vec<_> = Rule::ALL.iter().map(|r| r.name()).collect();
            return error(
                StatusCode::BAD_REQUEST,
                format!("rule={r:?} is not one of {}", names.join(", ")),
            );
        }
    };
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) if n >= 1 => n.min(MAX_LIMIT as usize),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "limit must be an integer of at least 1",
            )
        }
    };
    let Some(lookup) = s.snapshot.borrow().lookup.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the reconciled view is not open yet",
        );
    };
    let want = q.state.clone();
    let web = s.web.clone();
    let gate = export_gate(&s, p.as_deref());
    let out = tokio::task::spawn_blocking(move || -> Result<String, String> {
        let gate = gate
            .as_ref()
            .map(|(rules, lookup, p)| crate::web::ExportGate::new(rules, lookup, p));
        let mut list = Vec::new();
        let mut matched = 0usize;
        for f in lookup.findings() {
            let f = f.map_err(|e| e.to_string())?;
            let keep = want
                .as_deref()
                .is_none_or(|st| triage_of(web.as_ref(), &f.id).0 == st)
                && rule.is_none_or(|r| f.rule == r)
                && q.uii.as_deref().is_none_or(|u| f.uii.as_deref() == Some(u));
            if keep {
                matched += 1;
                if list.len() < limit {
                    list.push(f);
                }
            }
        }
        if let Some(g) = &gate {
            for f in &mut list {
                withhold_finding(g, f);
            }
        }
        let out: Vec<_> = list
            .iter()
            .map(|f| {
                let (state, triage) = triage_of(web.as_ref(), &f.id);
                FindingOut {
                    state,
                    triage,
                    finding: f,
                }
            })
            .collect();
        serde_json::to_string(&serde_json::json!({ "count": matched, "findings": out }))
            .map_err(|e| e.to_string())
    })
    .await;
    json_or_500(out)
}

/// What [`crate::web::ExportGate`] needs, for a blocking task (None: a server without
/// accounts, which serves no data routes at all).
type GateParts = (
    Arc<crate::reconcile::rules::Rules>,
    crate::reconcile::Lookup,
    Principal,
);

fn export_gate(s: &AppState, p: Option<&Principal>) -> Option<GateParts> {
    let web = s.web.as_ref()?;
    let lookup = s.snapshot.borrow().lookup.clone()?;
    // No principal is nobody: nothing export-controlled.
    let p = p.cloned().unwrap_or(Principal {
        name: "-".into(),
        role: crate::web::accounts::Role::Operator,
        us_person: false,
        station: None,
        session: None,
    });
    Some((Arc::clone(&web.rules), lookup, p))
}

fn json_or_500(out: Result<Result<String, String>, tokio::task::JoinError>) -> Response {
    match out {
        Ok(Ok(v)) => ([(header::CONTENT_TYPE, "application/json")], v).into_response(),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the reconciled view: {e}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A finding about an export-controlled injector, for an account that may not see its
/// technical data: its explanation (which may quote measurements) is replaced.
pub(crate) fn withhold_finding(
    g: &crate::web::ExportGate<'_>,
    f: &mut crate::reconcile::rules::Finding,
) {
    let m = match f.uii.as_deref() {
        Some(u) => g.withheld(u),
        None => f
            .station
            .as_deref()
            .and_then(|st| g.withheld_record(st, None)),
    };
    if let Some(m) = m {
        f.explanation = format!("withheld: export-controlled technical data ({m})");
    }
}

/// `GET /api/v1/qms`: the outbox's depth, oldest entry, last error, and whether delivery is
/// stopped (and why).
pub(crate) async fn qms(State(s): State<AppState>) -> Response {
    match &s.qms {
        Some(q) => {
            let st = q.lock().map(|g| g.clone()).unwrap_or_default();
            Json(serde_json::json!({"configured": true, "status": st})).into_response()
        }
        None => Json(serde_json::json!({"configured": false})).into_response(),
    }
}

/// `GET /api/v1/injectors/{uii}`: the timeline, route state and findings of one injector.
pub(crate) async fn injector(
    State(s): State<AppState>,
    p: Option<Extension<Principal>>,
    Path(uii): Path<String>,
) -> Response {
    if uii.is_empty() || uii.len() > 50 {
        return error(StatusCode::BAD_REQUEST, "a UII has 1 to 50 characters");
    }
    let Some(lookup) = s.snapshot.borrow().lookup.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the reconciled view is not open yet",
        );
    };
    let u = uii.clone();
    let gate = export_gate(&s, p.as_deref());
    let web = s.web.clone();
    let out = tokio::task::spawn_blocking(move || -> Result<Option<(String, bool)>, String> {
        let timeline = lookup.timeline(&u).map_err(|e| e.to_string())?;
        if timeline.is_empty() {
            return Ok(None);
        }
        let route = lookup.route(&u).map_err(|e| e.to_string())?;
        let gate = gate
            .as_ref()
            .map(|(rules, lookup, p)| crate::web::ExportGate::new(rules, lookup, p));
        if let Some(m) = gate.as_ref().and_then(|g| g.withheld(&u)) {
            // That it exists and where it is on its route; nothing of its technical data.
            let stations: std::collections::BTreeSet<&str> =
                timeline.iter().map(|e| e.proof.agent_id.as_str()).collect();
            return serde_json::to_string(&serde_json::json!({
                "uii": u,
                "export_control": m,
                "route": route,
                "stations": stations,
                "withheld": "export-controlled technical data: shown to authorized accounts only",
            }))
            .map(|t| Some((t, true)))
            .map_err(|e| e.to_string());
        }
        let mut qms = Vec::new();
        for e in &timeline {
            if let crate::reconcile::EntryKind::Result { .. } = e.kind {
                if let Some(o) = lookup
                    .outbox(&e.proof.agent_id, e.proof.seq)
                    .map_err(|e| e.to_string())?
                {
                    qms.push(serde_json::json!({"proof": e.proof, "qms": o}));
                }
            }
        }
        let mut fs = Vec::new();
        for f in lookup.findings() {
            let f = f.map_err(|e| e.to_string())?;
            if f.uii.as_deref() == Some(u.as_str()) {
                fs.push(f);
            }
        }
        let out: Vec<_> = fs
            .iter()
            .map(|f| {
                let (state, triage) = triage_of(web.as_ref(), &f.id);
                FindingOut {
                    state,
                    triage,
                    finding: f,
                }
            })
            .collect();
        let marking = gate.as_ref().and_then(|g| g.marking(&u));
        serde_json::to_string(&serde_json::json!({
            "uii": u, "export_control": marking, "route": route, "timeline": timeline,
            "findings": out, "qms": qms,
        }))
        .map(|t| Some((t, false)))
        .map_err(|e| e.to_string())
    })
    .await;
    match out {
        Ok(Ok(None)) => error(
            StatusCode::NOT_FOUND,
            format!("no injector {uii:?} in the witnessed records"),
        ),
        Ok(Ok(Some((v, withheld)))) => {
            let mut r = json_or_500(Ok(Ok(v)));
            if withheld {
                r.extensions_mut().insert(crate::web::policy::Denied(
                    "export-controlled technical data withheld".into(),
                ));
            }
            r
        }
        Ok(Err(e)) => json_or_500(Ok(Err(e))),
        Err(e) => json_or_500(Err(e)),
    }
}

/// `GET /api/v1/injectors/{uii}/evidence`: the injector's evidence bundle, as a download.
pub(crate) async fn evidence(
    State(s): State<AppState>,
    p: Option<Extension<Principal>>,
    Path(uii): Path<String>,
) -> Response {
    use crate::evidence::{EvidenceError, StationSource};
    if uii.is_empty() || uii.len() > proofline_common::evidence::MAX_UII_BYTES {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "a UII has 1 to {} characters",
                proofline_common::evidence::MAX_UII_BYTES
            ),
        );
    }
    let Some(maker) = s.evidence.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server makes no evidence bundles",
        );
    };
    let snap = s.snapshot.borrow().clone();
    let Some(lookup) = snap.lookup.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the reconciled view is not open yet",
        );
    };
    // A bundle holds every measurement: export-controlled ones go to authorized accounts only.
    if let Some((rules, lookup, p)) = export_gate(&s, p.as_deref()) {
        let u = uii.clone();
        let m = tokio::task::spawn_blocking(move || {
            crate::web::ExportGate::new(&rules, &lookup, &p).withheld(&u)
        })
        .await
        .unwrap_or_else(|_| Some("export control unknown".into()));
        if let Some(m) = m {
            let mut r = error(
                StatusCode::FORBIDDEN,
                format!("{uii} is export-controlled ({m}): its evidence bundle goes to authorized accounts only"),
            );
            r.extensions_mut()
                .insert(crate::web::policy::Denied(format!(
                    "export-controlled ({m})"
                )));
            return r;
        }
    }
    let Ok(_slot) = maker.slots.acquire().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the hub is stopping");
    };
    let u = uii.clone();
    let made = tokio::task::spawn_blocking(move || {
        let now = u64::try_from(proofline_common::record::now_micros() / 1_000_000).unwrap_or(0);
        let source = |id: &str| {
            let (reader, _) = snap.readers.get(id)?;
            let view = snap.agents.iter().find(|a| a.agent_id == id)?;
            Some(StationSource {
                key: snap.keys.get(id)?.clone(),
                cosigned: view.last_cosigned.clone(),
                reader: reader.clone(),
            })
        };
        crate::evidence::make(&u, &lookup, source, &maker.signer, now)
            .map(|b| serde_json::to_vec_pretty(&b).expect("bundles serialise"))
    })
    .await;
    match made {
        Ok(Ok(body)) => (
            [
                (header::CONTENT_TYPE, "application/json".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!(
                        "attachment; filename=\"{}\"",
                        crate::evidence::file_name(&uii)
                    ),
                ),
            ],
            body,
        )
            .into_response(),
        Ok(Err(e @ EvidenceError::NotFound(_))) => error(StatusCode::NOT_FOUND, e.to_string()),
        Ok(Err(e @ EvidenceError::Unavailable(_))) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("making the bundle: {e}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// 200 `ok` while the broker runs, the MQTT session is up, the witness progresses and the
/// ledger can be written; 503 naming every problem otherwise.
pub(crate) async fn healthz(State(s): State<AppState>) -> Response {
    let problems = s.metrics.health.check(
        proofline_common::record::now_micros(),
        crate::health::HEALTHZ,
    );
    if problems.is_empty() {
        "ok\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {}\n", problems.join("; ")),
        )
            .into_response()
    }
}

/// Findings standing, by rule (read from the reconciled view off the async threads).
async fn findings_metrics(
    lookup: crate::reconcile::Lookup,
    web: Option<Arc<crate::web::Web>>,
    m: &HubMetrics,
    o: &mut String,
) {
    use std::fmt::Write;
    let counts = tokio::task::spawn_blocking(move || {
        let mut by: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
        for f in lookup.findings().flatten() {
            *by.entry((f.rule.name(), triage_of(web.as_ref(), &f.id).0))
                .or_default() += 1;
        }
        by
    })
    .await
    .unwrap_or_default();
    let _ = writeln!(o, "# HELP proofline_hub_findings Findings standing, by rule, severity and triage state.\n# TYPE proofline_hub_findings gauge");
    for r in crate::reconcile::rules::Rule::ALL {
        let sev = match r.severity() {
            crate::reconcile::rules::FindingSeverity::Hold => "hold",
            crate::reconcile::rules::FindingSeverity::Review => "review",
        };
        for st in ["open", "acknowledged", "closed"] {
            let n = counts.get(&(r.name(), st)).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "proofline_hub_findings{{rule=\"{}\",severity=\"{sev}\",state=\"{st}\"}} {n}",
                r.name()
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP proofline_hub_findings_changed_total Findings raised or changed since start.\n# TYPE proofline_hub_findings_changed_total counter\nproofline_hub_findings_changed_total {}",
        m.findings_changed.load(Ordering::Relaxed)
    );
}

/// The QMS delivery's gauges and counters.
fn qms_metrics(q: &Mutex<crate::qms::worker::QmsStatus>, o: &mut String) {
    use std::fmt::Write;
    let st = q.lock().map(|g| g.clone()).unwrap_or_default();
    let mut gauge = |name: &str, help: &str, v: f64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge(
        "proofline_hub_qms_outbox_depth",
        "Results not yet delivered to the QMS.",
        st.depth as f64,
    );
    gauge(
        "proofline_hub_qms_oldest_pending_seconds",
        "Age of the oldest result not yet delivered (0 when none).",
        st.oldest_age_secs.unwrap_or(0.0),
    );
    gauge(
        "proofline_hub_qms_parked",
        "Results the QMS refused, waiting for `proofline-hub qms retry`.",
        st.parked as f64,
    );
    gauge(
        "proofline_hub_qms_stopped",
        "1 while delivery is stopped until someone acts (GET /api/v1/qms says why).",
        f64::from(u8::from(st.stopped.is_some())),
    );
    let _ = writeln!(
        o,
        "# HELP proofline_hub_qms_delivered_total Results delivered since start.\n# TYPE proofline_hub_qms_delivered_total counter\nproofline_hub_qms_delivered_total {}\n# HELP proofline_hub_qms_transient_failures_total QMS calls with an unknown outcome since start.\n# TYPE proofline_hub_qms_transient_failures_total counter\nproofline_hub_qms_transient_failures_total {}",
        st.delivered, st.transient_failures
    );
}

/// The route interlock's counters.
fn interlock_counters(counter: &mut impl FnMut(&str, &str, u64), m: &HubMetrics) {
    for (name, help, v) in [
        (
            "proofline_hub_interlock_allowed_total",
            "Route interlock questions answered: allowed.",
            &m.interlock_allowed,
        ),
        (
            "proofline_hub_interlock_refused_total",
            "Route interlock questions answered: refused.",
            &m.interlock_refused,
        ),
        (
            "proofline_hub_interlock_ignored_total",
            "Route interlock questions not answered: unknown or unverified sender, replay, malformed.",
            &m.interlock_ignored,
        ),
        (
            "proofline_hub_interlock_dropped_total",
            "Route interlock questions dropped with the hub's queue full (the station's policy decides).",
            &m.interlock_dropped,
        ),
    ] {
        counter(name, help, v.load(Ordering::Relaxed));
    }
}

/// The embedded broker's refusals, as counters.
fn acl_counters(counter: &mut impl FnMut(&str, &str, u64), c: &crate::acl::AclCounters) {
    counter(
        "proofline_hub_broker_refused_connects_total",
        "CONNECTs the embedded broker refused (no or wrong login, client id not the login's, station not enrolled).",
        c.refused_connects.load(Ordering::Relaxed),
    );
    counter(
        "proofline_hub_broker_denied_publishes_total",
        "PUBLISHes the embedded broker denied (topic not the client's); the client is disconnected.",
        c.denied_publishes.load(Ordering::Relaxed),
    );
    counter(
        "proofline_hub_broker_denied_subscribes_total",
        "SUBSCRIBEs the embedded broker denied (filter not the client's).",
        c.denied_subscribes.load(Ordering::Relaxed),
    );
}

pub(crate) async fn metrics(State(s): State<AppState>) -> Response {
    use std::fmt::Write;
    let m = &s.metrics;
    let mut o = String::new();
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    };
    counter(
        "proofline_hub_batches_total",
        "Record batches and heartbeats received.",
        m.batches.load(Ordering::Relaxed),
    );
    counter(
        "proofline_hub_records_stored_total",
        "Records witnessed and stored since start.",
        m.records_stored.load(Ordering::Relaxed),
    );
    counter(
        "proofline_hub_duplicate_records_total",
        "Byte-identical records received again.",
        m.duplicates.load(Ordering::Relaxed),
    );
    counter(
        "proofline_hub_rejected_batches_total",
        "Batches refused.",
        m.rejected.load(Ordering::Relaxed),
    );
    counter(
        "proofline_hub_resend_requests_total",
        "Resend answers to gaps.",
        m.resends.load(Ordering::Relaxed),
    );
    counter(
        "proofline_hub_replayed_messages_total",
        "Verified messages taken before (broker redeliveries or replays): not acted on.",
        m.replays.load(Ordering::Relaxed),
    );
    counter(
        "proofline_hub_ignored_messages_total",
        "Messages not acted on: unknown or unverified senders, replays, protocol v1.",
        m.ignored.load(Ordering::Relaxed),
    );
    counter(
        "proofline_hub_dropped_topic_messages_total",
        "Messages on topics that are not Proofline's or name an id no station can have.",
        m.dropped_topics.load(Ordering::Relaxed),
    );
    counter(
        "proofline_hub_unrecorded_alerts_total",
        "Alerts that could not be written into the hub ledger.",
        m.alerts_unrecorded.load(Ordering::Relaxed),
    );
    counter(
        "proofline_hub_deferred_batches_total",
        "Batches not taken while the disk was below the free-space reserve (stations resend them).",
        m.deferred.load(Ordering::Relaxed),
    );
    if let Some(acl) = &m.broker_acl {
        acl_counters(&mut counter, &acl.counters);
    }
    interlock_counters(&mut counter, m);
    if let Some(w) = &s.web {
        let c = &w.audit.counters;
        for (name, help, v) in [
            (
                "proofline_hub_access_audit_recorded_total",
                "Accesses recorded in the hub ledger's access audit.",
                &c.recorded,
            ),
            (
                "proofline_hub_access_audit_refused_total",
                "Accesses refused because their audit record could not be written.",
                &c.refused,
            ),
            (
                "proofline_hub_access_audit_commits_total",
                "Durable commits of the access audit (each holds every record waiting).",
                &c.commits,
            ),
            (
                "proofline_hub_access_audit_summarized_total",
                "Anonymous denials over the per-address rate, counted in a summary record instead of one each.",
                &c.summarized,
            ),
        ] {
            counter(name, help, v.load(Ordering::Relaxed));
        }
    }
    counter(
        "proofline_hub_mqtt_connections_total",
        "Sessions the broker accepted since start (more than one: the session was lost).",
        m.mqtt_connections.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        o,
        "# HELP proofline_hub_storage_free_bytes Free bytes on the data directory's file system.\n# TYPE proofline_hub_storage_free_bytes gauge\nproofline_hub_storage_free_bytes {}",
        m.storage_free_bytes.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        o,
        "# HELP proofline_hub_mqtt_connected Whether the hub is connected to the broker.\n# TYPE proofline_hub_mqtt_connected gauge\nproofline_hub_mqtt_connected {}",
        m.mqtt_connected.load(Ordering::Relaxed)
    );
    let _ = writeln!(o, "# HELP proofline_hub_alerts_total Alerts raised, by kind.\n# TYPE proofline_hub_alerts_total counter");
    if let Ok(book) = s.alerts.lock() {
        for k in AlertKind::ALL {
            let _ = writeln!(
                o,
                "proofline_hub_alerts_total{{kind=\"{}\"}} {}",
                k.name(),
                book.count(k)
            );
        }
    }
    let snap = s.snapshot.borrow().clone();
    let _ = writeln!(o, "# HELP proofline_hub_agent_size Records witnessed per agent.\n# TYPE proofline_hub_agent_size gauge");
    for a in &snap.agents {
        let _ = writeln!(
            o,
            "proofline_hub_agent_size{{agent=\"{}\"}} {}",
            a.agent_id, a.size
        );
    }
    let _ = writeln!(o, "# HELP proofline_hub_agent_online Agent status (its last will sets 0).\n# TYPE proofline_hub_agent_online gauge");
    for a in &snap.agents {
        let _ = writeln!(
            o,
            "proofline_hub_agent_online{{agent=\"{}\"}} {}",
            a.agent_id,
            u8::from(a.online)
        );
    }
    if let Some(lookup) = snap.lookup.clone() {
        findings_metrics(lookup, s.web.clone(), m, &mut o).await;
    }
    if let Some(q) = &s.qms {
        qms_metrics(q, &mut o);
    }
    m.http.render("proofline_hub", &mut o);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], o).into_response()
}
