//! A fake of the plant's central QMS (Django REST Framework), faithful to
//! `reference/qms-api.md`, traps included, for the hub's QMS sync tests and the demo.
//!
//! What it reproduces, as the running QMS does:
//! - paths are case-sensitive CamelCase with a trailing slash: a path without it gets
//!   `301 Location: …/`, an unknown or lower-case one a 404 in HTML; every 500 is HTML
//!   ("Server Error (500)"), never JSON;
//! - `POST /auth/login/` → `{"key"}` (40 hex) and a session cookie; a request that sends the
//!   cookie back fails CSRF (403); only `Authorization: Token …` works (Bearer → 401
//!   `not_authenticated`); login is throttled to 10 a minute per address (429 `throttled`);
//! - tokens expire after [`FakeQms::set_token_ttl`] with `401 "Token has expired. Request a new
//!   token."`, and logging in again returns the same expired key;
//! - in a multi-tenant deployment every call needs `X-Tenant-ID`: without it `GET /api/Parts/` is
//!   a 500 (HTML), the GETs of QualityReports, MeasurementDefinitions, Equipment and
//!   QuarantineDispositions are 200 with an empty list, and a POST is 403 `No tenant context
//!   available`; an unknown tenant is 403 `tenant_access_denied`, one the user is not a member
//!   of 403 `permission_denied`; `GET /api/user/tenants/` works without the header;
//! - `?ERP_id=` is a case-insensitive substring match; nothing is de-duplicated (a repeated
//!   part or report is a new row with a new `report_number`);
//! - a QualityReport's `status` is stored as sent (never derived); `is_within_spec` is computed
//!   per measurement from nominal and the positive tolerances; a NUMERIC definition without
//!   nominal or tolerances makes the POST a 500; a FAIL report quarantines its part and opens a
//!   QuarantineDisposition (each time); with the task queue down ([`Faults::task_queue_down`])
//!   a FAIL report is committed and then answered 500;
//! - `?search=` on QualityReports matches `description` and the part's ERP_id; a PATCH with
//!   `measurements` answers 200 and ignores them; validation errors are
//!   `400 {"field": ["message"], "code": "invalid"}`; limit/offset pagination, default 25.
//!
//! Faults for the sync tests ([`Faults`]): the next N writes fail with a 500 before or after
//! they are committed, answer only after a delay (a client timeout), or have their connection
//! cut mid-answer, and the task queue can be down. Rows are inspected through [`FakeQms::reports`], [`FakeQms::parts`] and
//! [`FakeQms::dispositions`].

// Handlers answer with the error response itself; its size does not matter in a test fake.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Longest request body the fake reads.
const MAX_BODY: usize = 1 << 20;

/// Switchable misbehaviour for the sync tests.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// The next this many POSTs and PATCHes under `/api/` answer 500 (HTML) without committing.
    pub fail_before_commit: u32,
    /// The next this many POSTs and PATCHes under `/api/` commit, then answer 500 (HTML).
    pub fail_after_commit: u32,
    /// The next this many POSTs and PATCHes under `/api/` commit, then answer only after
    /// `slow_by` (longer than the client's timeout: the outcome is unknown to it).
    pub slow_writes: u32,
    pub slow_by: Duration,
    /// The next this many POSTs and PATCHes under `/api/` commit, then the connection is cut
    /// in the middle of the answer (its headers say more body than comes).
    pub cut_writes: u32,
    /// The task queue is down: every FAIL QualityReport is committed and answered 500.
    pub task_queue_down: bool,
}

/// One account of the fake.
#[derive(Debug, Clone)]
struct User {
    id: u64,
    email: String,
    password: String,
    tenants: Vec<String>,
}

#[derive(Debug, Clone)]
struct Token {
    key: String,
    user: u64,
    issued: Instant,
}

#[derive(Debug, Default)]
struct Db {
    users: Vec<User>,
    tokens: Vec<Token>,
    /// Tenant slug → id (uuid); `None` = a dedicated deployment (the header is ignored).
    tenants: Option<HashMap<String, String>>,
    /// Rows by resource name (`Parts`, `QualityReports`, …), each with its tenant.
    rows: HashMap<&'static str, Vec<(String, Value)>>,
    next_report: u64,
    next_uuid: u128,
    logins: HashMap<IpAddr, Vec<Instant>>,
    token_ttl: Option<Duration>,
    faults: Faults,
    /// Every request, as `METHOD path` (for tests that count calls).
    log: Vec<String>,
}

/// A fake QMS on a loopback port; stops when dropped.
#[derive(Debug)]
pub struct FakeQms {
    pub addr: SocketAddr,
    db: Arc<Mutex<Db>>,
    stop: CancellationToken,
}

impl Drop for FakeQms {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

const RESOURCES: [&str; 8] = [
    "Parts",
    "QualityReports",
    "MeasurementDefinitions",
    "Steps",
    "PartTypes",
    "Equipment",
    "CalibrationRecords",
    "QuarantineDispositions",
];

/// The GETs that answer an empty list, not an error, when the tenant header is missing.
const EMPTY_WITHOUT_TENANT: [&str; 4] = [
    "QualityReports",
    "MeasurementDefinitions",
    "Equipment",
    "QuarantineDispositions",
];

impl FakeQms {
    /// Starts a dedicated (single-tenant) fake on 127.0.0.1 and a free port.
    pub async fn start() -> std::io::Result<FakeQms> {
        FakeQms::start_on("127.0.0.1:0").await
    }

    /// Starts a dedicated fake on `addr`.
    pub async fn start_on(addr: &str) -> std::io::Result<FakeQms> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let db = Arc::new(Mutex::new(Db::default()));
        let stop = CancellationToken::new();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&db))
            .into_make_service_with_connect_info::<SocketAddr>();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await;
        });
        Ok(FakeQms { addr, db, stop })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the deployment multi-tenant with these tenant slugs; returns their ids.
    pub fn set_tenants(&self, slugs: &[&str]) -> Vec<String> {
        let mut db = self.db();
        let mut map = HashMap::new();
        let mut ids = Vec::new();
        for s in slugs {
            let id = db.uuid();
            map.insert(s.to_string(), id.clone());
            ids.push(id);
        }
        db.tenants = Some(map);
        ids
    }

    /// Adds an account, member of `tenants` (slugs); returns its id.
    pub fn add_user(&self, email: &str, password: &str, tenants: &[&str]) -> u64 {
        let mut db = self.db();
        let id = db.users.len() as u64 + 1;
        db.users.push(User {
            id,
            email: email.into(),
            password: password.into(),
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
        });
        id
    }

    /// Tokens expire this long after they were issued (`None`: never, the TTL-0 deployment).
    pub fn set_token_ttl(&self, ttl: Option<Duration>) {
        self.db().token_ttl = ttl;
    }

    pub fn set_faults(&self, f: Faults) {
        self.db().faults = f;
    }

    pub fn faults(&self) -> Faults {
        self.db().faults.clone()
    }

    /// Adds a row as the QMS administrator would (a part type, step, definition, bench,
    /// calibration record) in `tenant` ("" for a dedicated deployment); returns its id.
    pub fn seed(&self, resource: &'static str, tenant: &str, mut row: Value) -> String {
        assert!(RESOURCES.contains(&resource), "no resource {resource}");
        let mut db = self.db();
        let id = db.uuid();
        row["id"] = json!(id);
        db.rows
            .entry(resource)
            .or_default()
            .push((tenant.into(), row));
        id
    }

    /// Deletes a row, as the QMS administrator would (merging duplicate parts).
    pub fn delete(&self, resource: &str, id: &str) {
        if let Some(rows) = self.db().rows.get_mut(resource) {
            rows.retain(|(_, v)| v["id"].as_str() != Some(id));
        }
    }

    /// Every row of a resource, in creation order.
    pub fn rows(&self, resource: &str) -> Vec<Value> {
        self.db()
            .rows
            .get(resource)
            .map(|r| r.iter().map(|(_, v)| v.clone()).collect())
            .unwrap_or_default()
    }

    pub fn reports(&self) -> Vec<Value> {
        self.rows("QualityReports")
    }

    pub fn parts(&self) -> Vec<Value> {
        self.rows("Parts")
    }

    pub fn dispositions(&self) -> Vec<Value> {
        self.rows("QuarantineDispositions")
    }

    /// Every request so far, as `METHOD path`.
    pub fn requests(&self) -> Vec<String> {
        self.db().log.clone()
    }
}

impl Db {
    fn uuid(&mut self) -> String {
        self.next_uuid += 1;
        let n = self.next_uuid;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (n >> 32) as u32 ^ 0x5eed_0000,
            (n >> 16) as u16,
            (n & 0xfff) as u16,
            ((n >> 12) & 0xfff) as u16,
            n as u64 & 0xffff_ffff_ffff
        )
    }

    fn find(&self, resource: &str, tenant: &str, id: &str) -> Option<&Value> {
        self.rows
            .get(resource)?
            .iter()
            .find_map(|(t, v)| (t == tenant && v["id"].as_str() == Some(id)).then_some(v))
    }
}

fn html(status: StatusCode, title: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!("<!doctype html>\n<html lang=\"en\"><head><title>{title}</title></head><body><h1>{title}</h1></body></html>\n"),
    )
        .into_response()
}

fn server_error() -> Response {
    html(StatusCode::INTERNAL_SERVER_ERROR, "Server Error (500)")
}

fn detail(status: StatusCode, detail: &str, code: &str) -> Response {
    (status, axum::Json(json!({"detail": detail, "code": code}))).into_response()
}

fn invalid(fields: Value) -> Response {
    let mut body = fields;
    body["code"] = json!("invalid");
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// The authenticated caller.
struct Caller {
    user: u64,
}

async fn handle(
    State(db): State<Arc<Mutex<Db>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| {
            url_pairs(q)
                .into_iter()
                .collect::<HashMap<String, String>>()
        })
        .unwrap_or_default();
    let body = match to_bytes(Body::new(body), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return html(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large"),
    };
    let (resp, delay) = {
        let mut db = db.lock().unwrap_or_else(|p| p.into_inner());
        db.log.push(format!("{method} {path}"));
        route(
            &mut db,
            peer.ip(),
            &method,
            &path,
            &query,
            &parts.headers,
            &body,
        )
    };
    match delay {
        Some(CUT) => cut(resp),
        Some(d) => {
            tokio::time::sleep(d).await;
            resp
        }
        None => resp,
    }
}

/// `resp`'s status and headers, then a few bytes of a body that never completes: the
/// connection is closed with the answer half sent.
fn cut(resp: Response) -> Response {
    let (mut parts, _) = resp.into_parts();
    parts.headers.insert(
        header::CONTENT_LENGTH,
        header::HeaderValue::from_static("4096"),
    );
    let chunks: Vec<Result<&'static [u8], std::io::Error>> = vec![
        Ok(b"{\"id\": \""),
        Err(std::io::Error::other("connection cut")),
    ];
    Response::from_parts(parts, Body::from_stream(futures_util::stream::iter(chunks)))
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response, and whether it is delayed (`Some`) — by [`CUT`] meaning cut mid-answer.
type Routed = (Response, Option<Duration>);

/// The delay that means "cut the connection in the middle of the answer".
const CUT: Duration = Duration::from_nanos(1);

fn route(
    db: &mut Db,
    ip: IpAddr,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Routed {
    let plain = |r: Response| (r, None);
    match path {
        "/health/" | "/ready/" => {
            return plain(axum::Json(json!({"status": "ok"})).into_response())
        }
        "/auth/login/" if method == Method::POST => return plain(login(db, ip, body)),
        _ => {}
    }
    if !path.ends_with('/') {
        // Django's APPEND_SLASH: a redirect, for every method.
        return plain(
            (
                StatusCode::MOVED_PERMANENTLY,
                [(header::LOCATION, format!("{path}/"))],
            )
                .into_response(),
        );
    }
    if headers
        .get(header::COOKIE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| c.contains("sessionid="))
    {
        return plain(detail(
            StatusCode::FORBIDDEN,
            "CSRF Failed: CSRF token missing.",
            "permission_denied",
        ));
    }
    let caller = match authenticate(db, headers) {
        Ok(c) => c,
        Err(r) => return plain(r),
    };
    if path == "/api/user/tenants/" && method == Method::GET {
        let user = db.users.iter().find(|u| u.id == caller.user).cloned();
        let tenants: Vec<Value> = match (&db.tenants, user) {
            (Some(map), Some(u)) => u
                .tenants
                .iter()
                .filter_map(|s| map.get(s).map(|id| json!({"id": id, "slug": s})))
                .collect(),
            _ => Vec::new(),
        };
        return plain(
            axum::Json(json!({"count": tenants.len(), "results": tenants})).into_response(),
        );
    }
    let Some(rest) = path.strip_prefix("/api/") else {
        return plain(html(StatusCode::NOT_FOUND, "Not Found"));
    };
    let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let Some(&resource) = RESOURCES.iter().find(|r| **r == segs[0]) else {
        return plain(html(StatusCode::NOT_FOUND, "Not Found"));
    };
    let tenant = match tenant_of(db, &caller, headers) {
        Ok(t) => t,
        Err(r) => return plain(r),
    };
    let Some(tenant) = tenant else {
        // Multi-tenant deployment, no header: the observed mess.
        return plain(if method == Method::GET {
            if EMPTY_WITHOUT_TENANT.contains(&resource) {
                axum::Json(page(Vec::new(), query, path)).into_response()
            } else {
                server_error()
            }
        } else {
            detail(
                StatusCode::FORBIDDEN,
                "No tenant context available",
                "permission_denied",
            )
        });
    };
    match (method, segs.len()) {
        (&Method::GET, 1) => plain(list(db, resource, &tenant, query, path)),
        (&Method::GET, 2) => plain(match db.find(resource, &tenant, segs[1]) {
            Some(v) => axum::Json(v.clone()).into_response(),
            None => detail(
                StatusCode::NOT_FOUND,
                "No Parts matches the given query.",
                "not_found",
            ),
        }),
        (&Method::POST, 1) if resource == "Parts" || resource == "QualityReports" => {
            write(db, |db| create(db, resource, &tenant, body))
        }
        (&Method::PATCH, 2) if resource == "QualityReports" => {
            let id = segs[1].to_owned();
            write(db, |db| patch_report(db, &tenant, &id, body))
        }
        (&Method::GET, _) | (&Method::POST, _) | (&Method::PATCH, _) => {
            plain(html(StatusCode::NOT_FOUND, "Not Found"))
        }
        _ => plain(detail(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("Method \"{method}\" not allowed."),
            "method_not_allowed",
        )),
    }
}

/// A write through the switchable faults: `f` commits (or refuses) and answers.
fn write(db: &mut Db, f: impl FnOnce(&mut Db) -> Result<(Response, bool), Response>) -> Routed {
    if db.faults.fail_before_commit > 0 {
        db.faults.fail_before_commit -= 1;
        return (server_error(), None);
    }
    match f(db) {
        Err(r) => (r, None),
        Ok((resp, fail_report)) => {
            if db.faults.fail_after_commit > 0 {
                db.faults.fail_after_commit -= 1;
                return (server_error(), None);
            }
            if fail_report && db.faults.task_queue_down {
                return (server_error(), None);
            }
            if db.faults.slow_writes > 0 {
                db.faults.slow_writes -= 1;
                return (resp, Some(db.faults.slow_by));
            }
            if db.faults.cut_writes > 0 {
                db.faults.cut_writes -= 1;
                return (resp, Some(CUT));
            }
            (resp, None)
        }
    }
}

fn login(db: &mut Db, ip: IpAddr, body: &[u8]) -> Response {
    let now = Instant::now();
    let recent = db.logins.entry(ip).or_default();
    recent.retain(|t| now.duration_since(*t) < Duration::from_secs(60));
    if recent.len() >= 10 {
        let wait = 60 - now.duration_since(recent[0]).as_secs();
        return detail(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Request was throttled. Expected available in {wait} seconds."),
            "throttled",
        );
    }
    recent.push(now);
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return detail(StatusCode::BAD_REQUEST, "JSON parse error", "parse_error");
    };
    let (email, password) = (v["email"].as_str(), v["password"].as_str());
    let Some(user) = db
        .users
        .iter()
        .find(|u| Some(u.email.as_str()) == email && Some(u.password.as_str()) == password)
        .cloned()
    else {
        return invalid(
            json!({"non_field_errors": ["Unable to log in with provided credentials."]}),
        );
    };
    // One key per user, kept across logins even once it has expired (as observed).
    let key = match db.tokens.iter().find(|t| t.user == user.id) {
        Some(t) => t.key.clone(),
        None => {
            let key = format!(
                "{:040x}",
                0xa11c_e000_u128 + db.next_uuid * 7919 + user.id as u128
            );
            db.next_uuid += 1;
            db.tokens.push(Token {
                key: key.clone(),
                user: user.id,
                issued: now,
            });
            key
        }
    };
    (
        [(
            header::SET_COOKIE,
            "sessionid=fake-session; HttpOnly; Path=/; SameSite=Lax",
        )],
        axum::Json(json!({"key": key})),
    )
        .into_response()
}

fn authenticate(db: &Db, headers: &HeaderMap) -> Result<Caller, Response> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(key) = auth.strip_prefix("Token ") else {
        return Err(detail(
            StatusCode::UNAUTHORIZED,
            "Authentication credentials were not provided.",
            "not_authenticated",
        ));
    };
    let Some(t) = db.tokens.iter().find(|t| t.key == key.trim()) else {
        return Err(detail(
            StatusCode::UNAUTHORIZED,
            "Invalid token.",
            "authentication_failed",
        ));
    };
    if db.token_ttl.is_some_and(|ttl| t.issued.elapsed() >= ttl) {
        return Err(detail(
            StatusCode::UNAUTHORIZED,
            "Token has expired. Request a new token.",
            "authentication_failed",
        ));
    }
    Ok(Caller { user: t.user })
}

/// The tenant of the call: Ok(Some(id)) (or "" on a dedicated deployment), Ok(None) when a
/// multi-tenant deployment got no header, Err for a tenant refused.
fn tenant_of(db: &Db, caller: &Caller, headers: &HeaderMap) -> Result<Option<String>, Response> {
    let Some(map) = &db.tenants else {
        return Ok(Some(String::new()));
    };
    let Some(h) = headers.get("x-tenant-id").and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some((slug, id)) = map.iter().find(|(s, id)| *s == h || *id == h) else {
        return Err(detail(
            StatusCode::FORBIDDEN,
            &format!("Tenant '{h}' not found or inactive."),
            "tenant_access_denied",
        ));
    };
    let member = db
        .users
        .iter()
        .any(|u| u.id == caller.user && u.tenants.contains(slug));
    if !member {
        return Err(detail(
            StatusCode::FORBIDDEN,
            "You are not a member of the requested tenant.",
            "permission_denied",
        ));
    }
    Ok(Some(id.clone()))
}

fn page(rows: Vec<Value>, query: &HashMap<String, String>, path: &str) -> Value {
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(25)
        .clamp(1, 1000);
    let offset = query
        .get("offset")
        .and_then(|o| o.parse::<usize>().ok())
        .unwrap_or(0);
    let count = rows.len();
    let link = |o: usize| json!(format!("{path}?limit={limit}&offset={o}"));
    json!({
        "count": count,
        "next": if offset + limit < count { link(offset + limit) } else { Value::Null },
        "previous": if offset > 0 { link(offset.saturating_sub(limit)) } else { Value::Null },
        "results": rows.into_iter().skip(offset).take(limit).collect::<Vec<_>>(),
    })
}

fn list(
    db: &Db,
    resource: &str,
    tenant: &str,
    query: &HashMap<String, String>,
    path: &str,
) -> Response {
    let rows = db.rows.get(resource).map(Vec::as_slice).unwrap_or(&[]);
    let contains = |hay: &str, needle: &str| hay.to_lowercase().contains(&needle.to_lowercase());
    let mut out: Vec<Value> = rows
        .iter()
        .filter(|(t, _)| t == tenant)
        .map(|(_, v)| v)
        .filter(|v| {
            query.iter().all(|(k, want)| match k.as_str() {
                "limit" | "offset" | "ordering" => true,
                // The observed trap: a case-insensitive substring match.
                "ERP_id" => contains(v["ERP_id"].as_str().unwrap_or(""), want),
                "search" => {
                    let erp = v["part"]
                        .as_str()
                        .and_then(|p| db.find("Parts", tenant, p))
                        .and_then(|p| p["ERP_id"].as_str())
                        .unwrap_or("");
                    contains(v["description"].as_str().unwrap_or(""), want) || contains(erp, want)
                }
                field => match &v[field] {
                    Value::String(s) => s == want,
                    Value::Null => false,
                    other => serde_json::from_str::<Value>(want).ok().as_ref() == Some(other),
                },
            })
        })
        .cloned()
        .collect();
    if let Some(field) = query.get("ordering") {
        let (desc, f) = match field.strip_prefix('-') {
            Some(f) => (true, f),
            None => (false, field.as_str()),
        };
        out.sort_by(|a, b| {
            let o = a[f].to_string().cmp(&b[f].to_string());
            if desc {
                o.reverse()
            } else {
                o
            }
        });
    }
    axum::Json(page(out, query, path)).into_response()
}

/// Creates a Part or a QualityReport; Ok((response, is a FAIL report)).
fn create(
    db: &mut Db,
    resource: &'static str,
    tenant: &str,
    body: &[u8],
) -> Result<(Response, bool), Response> {
    let v = json_object(body)?;
    match resource {
        "Parts" => create_part(db, tenant, v).map(|r| (r, false)),
        _ => create_report(db, tenant, v),
    }
}

/// A request body that must be a JSON object.
fn json_object(body: &[u8]) -> Result<Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(v)) => Ok(v),
        _ => Err(detail(
            StatusCode::BAD_REQUEST,
            "JSON parse error",
            "parse_error",
        )),
    }
}

fn create_part(db: &mut Db, tenant: &str, v: Map<String, Value>) -> Result<Response, Response> {
    let mut errors = Map::new();
    match v.get("ERP_id").and_then(Value::as_str) {
        None | Some("") => {
            errors.insert("ERP_id".into(), json!(["This field is required."]));
        }
        Some(s) if s.chars().count() > 50 => {
            errors.insert(
                "ERP_id".into(),
                json!(["Ensure this field has no more than 50 characters."]),
            );
        }
        _ => {}
    }
    match v.get("part_type").and_then(Value::as_str) {
        None => {
            errors.insert("part_type".into(), json!(["This field is required."]));
        }
        Some(pt) if db.find("PartTypes", tenant, pt).is_none() => {
            errors.insert(
                "part_type".into(),
                json!([format!("Invalid pk \"{pt}\" - object does not exist.")]),
            );
        }
        _ => {}
    }
    if !errors.is_empty() {
        return Err(invalid(Value::Object(errors)));
    }
    let id = db.uuid();
    let row = json!({
        "id": id,
        "ERP_id": v["ERP_id"],
        "part_type": v["part_type"],
        "part_status": v.get("part_status").cloned().unwrap_or(json!("PENDING")),
        "work_order": v.get("work_order").cloned().unwrap_or(Value::Null),
        "step": v.get("step").cloned().unwrap_or(Value::Null),
    });
    db.rows
        .entry("Parts")
        .or_default()
        .push((tenant.into(), row.clone()));
    Ok((StatusCode::CREATED, axum::Json(row)).into_response())
}

fn decimal(v: &Value) -> Value {
    match v.as_f64() {
        Some(x) => json!(format!("{x:.6}")),
        None => Value::Null,
    }
}

/// `is_within_spec` of one nested measurement, as the server computes it from its definition
/// (null when no value was given); None for a NUMERIC definition without nominal and
/// tolerances, which makes the server fail.
fn within_spec(def: &Value, m: &Value) -> Option<Value> {
    if def["type"] != "NUMERIC" {
        return Some(match m["value_pass_fail"].as_str() {
            Some(p) => json!(p == "PASS"),
            None => Value::Null,
        });
    }
    let (n, u, l) = (
        def["nominal"].as_f64()?,
        def["upper_tol"].as_f64()?,
        def["lower_tol"].as_f64()?,
    );
    Some(match m["value_numeric"].as_f64() {
        Some(x) => json!(n - l <= x && x <= n + u),
        None => Value::Null,
    })
}

/// DRF's field errors of a QualityReport's own fields (its measurements are checked apart).
fn report_field_errors(db: &Db, tenant: &str, v: &Map<String, Value>) -> Map<String, Value> {
    let mut errors = Map::new();
    let status = v.get("status").and_then(Value::as_str).unwrap_or("");
    if !["PASS", "FAIL", "PENDING"].contains(&status) {
        errors.insert(
            "status".into(),
            json!([format!("\"{status}\" is not a valid choice.")]),
        );
    }
    if v.get("description")
        .and_then(Value::as_str)
        .is_some_and(|d| d.chars().count() > 300)
    {
        errors.insert(
            "description".into(),
            json!(["Ensure this field has no more than 300 characters."]),
        );
    }
    for (field, resource) in [
        ("part", "Parts"),
        ("step", "Steps"),
        ("production_equipment", "Equipment"),
    ] {
        if let Some(id) = v.get(field).and_then(Value::as_str) {
            if db.find(resource, tenant, id).is_none() {
                errors.insert(
                    field.into(),
                    json!([format!("Invalid pk \"{id}\" - object does not exist.")]),
                );
            }
        }
    }
    errors
}

fn create_report(
    db: &mut Db,
    tenant: &str,
    v: Map<String, Value>,
) -> Result<(Response, bool), Response> {
    let status = v.get("status").and_then(Value::as_str).unwrap_or("");
    let mut errors = report_field_errors(db, tenant, &v);
    let given = v
        .get("measurements")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut nested = Vec::new();
    let mut nested_errors = Vec::new();
    let mut broken_definition = false;
    for m in &given {
        let def = m["definition"]
            .as_str()
            .and_then(|d| db.find("MeasurementDefinitions", tenant, d))
            .cloned();
        let Some(def) = def else {
            nested_errors.push(json!({"definition": ["This field is required."]}));
            continue;
        };
        nested_errors.push(json!({}));
        let Some(within) = within_spec(&def, m) else {
            broken_definition = true;
            continue;
        };
        nested.push((def, m.clone(), within));
    }
    if nested_errors.iter().any(|e| e != &json!({})) {
        errors.insert("measurements".into(), Value::Array(nested_errors));
    }
    if !errors.is_empty() {
        return Err(invalid(Value::Object(errors)));
    }
    if broken_definition {
        return Err(server_error());
    }
    db.next_report += 1;
    let number = format!("QR-2026-{:06}", db.next_report);
    let id = db.uuid();
    let measurements: Vec<Value> = nested
        .into_iter()
        .map(|(def, m, within)| {
            json!({
                "id": db.uuid(),
                "report": format!("{number} ({status})"),
                "definition": def["id"],
                "definition_info": {
                    "label": def["label"], "type": def["type"], "unit": def["unit"],
                    "nominal": decimal(&def["nominal"]), "upper_tol": decimal(&def["upper_tol"]),
                    "lower_tol": decimal(&def["lower_tol"]),
                },
                "value_numeric": m.get("value_numeric").cloned().unwrap_or(Value::Null),
                "value_pass_fail": m.get("value_pass_fail").cloned().unwrap_or(Value::Null),
                "is_within_spec": within,
            })
        })
        .collect();
    let row = json!({
        "id": id,
        "report_number": number,
        "status": status,
        "part": v.get("part").cloned().unwrap_or(Value::Null),
        "step": v.get("step").cloned().unwrap_or(Value::Null),
        "production_equipment": v.get("production_equipment").cloned().unwrap_or(Value::Null),
        "operators": v.get("operators").cloned().unwrap_or(json!([])),
        "description": v.get("description").cloned().unwrap_or(json!("")),
        "sampling_method": v.get("sampling_method").cloned().unwrap_or(json!("")),
        "measurements": measurements,
        "created_at": "2026-12-07T00:00:00Z",
    });
    db.rows
        .entry("QualityReports")
        .or_default()
        .push((tenant.into(), row.clone()));
    let fail = status == "FAIL";
    if fail {
        // A FAIL report quarantines the part and opens a disposition, every time.
        if let Some(part) = row["part"].as_str() {
            if let Some(rows) = db.rows.get_mut("Parts") {
                for (t, p) in rows.iter_mut() {
                    if t == tenant && p["id"].as_str() == Some(part) {
                        p["part_status"] = json!("QUARANTINED");
                    }
                }
            }
        }
        let did = db.uuid();
        db.rows.entry("QuarantineDispositions").or_default().push((
            tenant.into(),
            json!({
                "id": did,
                "quality_report": id,
                "part": row["part"],
                "description": row["description"],
                "state": "OPEN",
            }),
        ));
    }
    Ok(((StatusCode::CREATED, axum::Json(row)).into_response(), fail))
}

fn patch_report(
    db: &mut Db,
    tenant: &str,
    id: &str,
    body: &[u8],
) -> Result<(Response, bool), Response> {
    let v = json_object(body)?;
    let Some(rows) = db.rows.get_mut("QualityReports") else {
        return Err(detail(StatusCode::NOT_FOUND, "Not found.", "not_found"));
    };
    let Some((_, row)) = rows
        .iter_mut()
        .find(|(t, r)| t == tenant && r["id"].as_str() == Some(id))
    else {
        return Err(detail(StatusCode::NOT_FOUND, "Not found.", "not_found"));
    };
    for (k, val) in v {
        // Measurements are accepted and silently ignored (as observed).
        if k == "description" || k == "status" || k == "sampling_method" {
            row[k.as_str()] = val;
        }
    }
    Ok((
        (StatusCode::OK, axum::Json(row.clone())).into_response(),
        false,
    ))
}
