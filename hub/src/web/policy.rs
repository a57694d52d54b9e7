//! The role × route matrix, and the one guard every request passes.
//!
//! [`RULES`] is the only list of routes: the router is built from it ([`router`]), so a route
//! cannot exist without its rule, and the guard decides every request from the rule of the route
//! it matched. Anything else is a 404 (audited like every other answer).
//!
//! - Public routes: `/healthz`, the sign-in steps, the stylesheet.
//! - Not signed in: 401 (JSON) for the API, a redirect to the sign-in for pages.
//! - Signed in without the role: 403, recorded as a denial.
//! - Allowed: the handler runs with the [`Principal`](super::Principal) and the answer goes out
//!   only once the access is durably recorded (or a 503 if it cannot be).
//! - Every state change (POST) must come from the hub's own pages: a cross-site `Sec-Fetch-Site`
//!   or a foreign `Origin` is refused here, and each form's CSRF token is checked by its handler.
//!
//! API routes also take `Authorization: Bearer <token>` (service accounts, the local token);
//! pages take only the session cookie.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};

use super::accounts::Role;
use crate::api::{self, AppState};

/// Pages answer people; the API answers programs (JSON, bearer tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Page,
    Api,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (nothing audited but the sign-in steps, which audit themselves).
    Public,
    /// Any signed-in account.
    SignedIn,
    /// Accounts with one of these roles.
    Roles(&'static [Role]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub method: &'static str,
    pub path: &'static str,
    pub surface: Surface,
    pub access: Access,
}

use Role::{Admin, Auditor, Operator, Quality};
use Surface::{Api, Page};

const fn rule(method: &'static str, path: &'static str, surface: Surface, access: Access) -> Rule {
    Rule {
        method,
        path,
        surface,
        access,
    }
}

const ALL: Access = Access::Roles(&[Operator, Quality, Auditor, Admin]);
const STAFF: Access = Access::Roles(&[Quality, Auditor, Admin]);
const EVIDENCE: Access = Access::Roles(&[Quality, Auditor]);
const AUDIT: Access = Access::Roles(&[Auditor, Admin]);

/// Every route, with who may use it.
pub const RULES: &[Rule] = &[
    rule("GET", "/healthz", Api, Access::Public),
    rule("GET", "/static/style.css", Page, Access::Public),
    rule("GET", "/signin", Page, Access::Public),
    rule("POST", "/signin", Page, Access::Public),
    rule("GET", "/signin/totp", Page, Access::Public),
    rule("POST", "/signin/totp", Page, Access::Public),
    rule("GET", "/signin/enroll", Page, Access::Public),
    rule("POST", "/signin/enroll", Page, Access::Public),
    rule("POST", "/signout", Page, Access::SignedIn),
    rule("GET", "/", Page, Access::SignedIn),
    rule("GET", "/stations", Page, ALL),
    rule("GET", "/stations/{agent_id}", Page, ALL),
    rule("GET", "/injectors", Page, EVIDENCE),
    rule("GET", "/injectors/{uii}", Page, EVIDENCE),
    rule(
        "GET",
        "/injectors/{uii}/evidence",
        Page,
        Access::Roles(&[Auditor]),
    ),
    rule("GET", "/findings", Page, EVIDENCE),
    rule(
        "POST",
        "/findings/{id}/triage",
        Page,
        Access::Roles(&[Quality]),
    ),
    rule("GET", "/alerts", Page, STAFF),
    rule("GET", "/audit", Page, AUDIT),
    rule("GET", "/audit/export", Page, AUDIT),
    rule("GET", "/accounts", Page, AUDIT),
    rule("GET", "/metrics", Api, STAFF),
    rule("GET", "/api/v1/agents", Api, ALL),
    rule("GET", "/api/v1/alerts", Api, STAFF),
    rule("GET", "/api/v1/agents/{agent_id}/records", Api, EVIDENCE),
    rule("GET", "/api/v1/findings", Api, EVIDENCE),
    rule("GET", "/api/v1/injectors/{uii}", Api, EVIDENCE),
    rule(
        "GET",
        "/api/v1/injectors/{uii}/evidence",
        Api,
        Access::Roles(&[Auditor]),
    ),
    rule("GET", "/api/v1/qms", Api, STAFF),
    rule("GET", "/api/v1/audit", Api, AUDIT),
];

/// The handler of a rule's route.
fn handler(r: &Rule) -> MethodRouter<AppState> {
    use super::{pages, signin};
    match (r.method, r.path) {
        ("GET", "/healthz") => get(api::healthz),
        ("GET", "/static/style.css") => get(pages::style),
        ("GET", "/signin") => get(signin::form),
        ("POST", "/signin") => post(signin::password),
        ("GET", "/signin/totp") => get(signin::totp_form),
        ("POST", "/signin/totp") => post(signin::totp),
        ("GET", "/signin/enroll") => get(signin::enroll_form),
        ("POST", "/signin/enroll") => post(signin::enroll),
        ("POST", "/signout") => post(signin::signout),
        ("GET", "/") => get(pages::home),
        ("GET", "/stations") => get(pages::stations),
        ("GET", "/stations/{agent_id}") => get(pages::station),
        ("GET", "/injectors") => get(pages::injectors),
        ("GET", "/injectors/{uii}") => get(pages::injector),
        ("GET", "/injectors/{uii}/evidence") => get(api::evidence),
        ("GET", "/findings") => get(pages::findings),
        ("POST", "/findings/{id}/triage") => post(pages::triage),
        ("GET", "/alerts") => get(pages::alerts),
        ("GET", "/audit") => get(pages::audit),
        ("GET", "/audit/export") => get(pages::audit_export),
        ("GET", "/accounts") => get(pages::accounts),
        ("GET", "/metrics") => get(api::metrics),
        ("GET", "/api/v1/agents") => get(api::agents),
        ("GET", "/api/v1/alerts") => get(api::alerts),
        ("GET", "/api/v1/agents/{agent_id}/records") => get(api::records),
        ("GET", "/api/v1/findings") => get(api::findings),
        ("GET", "/api/v1/injectors/{uii}") => get(api::injector),
        ("GET", "/api/v1/injectors/{uii}/evidence") => get(api::evidence),
        ("GET", "/api/v1/qms") => get(api::qms),
        ("GET", "/api/v1/audit") => get(pages::audit_api),
        (m, p) => panic!("no handler for the rule {m} {p}"),
    }
}

pub fn find(method: &Method, path: &str) -> Option<&'static Rule> {
    RULES
        .iter()
        .find(|r| r.method == method.as_str() && r.path == path)
}

/// The router: every route of [`RULES`] behind the one guard that decides each request.
pub fn router(state: AppState) -> Router {
    let mut by_path: std::collections::BTreeMap<&str, MethodRouter<AppState>> =
        std::collections::BTreeMap::new();
    for r in RULES {
        let h = handler(r);
        let merged = match by_path.remove(r.path) {
            Some(m) => m.merge(h),
            None => h,
        };
        by_path.insert(r.path, merged);
    }
    let mut router = Router::new();
    for (path, m) in by_path {
        router = router.route(path, m);
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .fallback(not_found)
        .with_state(state)
}

fn peer(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".into(), |c| c.0.ip().to_string())
}

/// `METHOD /path?query`, as the audit records it.
fn what(req: &Request) -> String {
    let uri = req.uri();
    format!(
        "{} {}",
        req.method(),
        uri.path_and_query().map_or(uri.path(), |p| p.as_str())
    )
}

pub fn api_error(status: StatusCode, msg: &str) -> Response {
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}

fn page_error(status: StatusCode, msg: &str) -> Response {
    (status, super::pages::message_page(status, msg)).into_response()
}

fn refuse(surface: Surface, status: StatusCode, msg: &str) -> Response {
    match surface {
        Surface::Api => api_error(status, msg),
        Surface::Page => page_error(status, msg),
    }
}

/// Where a page redirect may send a browser back to: a path on this hub, bounded.
pub fn safe_next(next: &str) -> Option<&str> {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && next.len() <= 256
        && next
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'\\' && b != b'"' && b != b'<' && b != b'>');
    ok.then_some(next)
}

/// A POST from a page of another site (or a form the browser says is cross-site).
fn cross_site(req: &Request) -> bool {
    let h = req.headers();
    if h.get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site" || v == "same-site")
    {
        return true;
    }
    match (h.get(header::ORIGIN), h.get(header::HOST)) {
        (Some(o), Some(host)) => {
            let (Ok(o), Ok(host)) = (o.to_str(), host.to_str()) else {
                return true;
            };
            let o = o
                .strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"))
                .unwrap_or("");
            o != host
        }
        (Some(_), None) => true,
        _ => false,
    }
}

async fn guard(
    State(s): State<AppState>,
    matched: MatchedPath,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(rule) = find(req.method(), matched.as_str()) else {
        // Not reachable: routes come from the rules.
        return api_error(StatusCode::FORBIDDEN, "no rule for this route");
    };
    if rule.access == Access::Public {
        if req.method() == Method::POST && cross_site(&req) {
            return refuse(
                rule.surface,
                StatusCode::FORBIDDEN,
                "cross-site form refused",
            );
        }
        return next.run(req).await;
    }
    let Some(web) = s.web.clone() else {
        return refuse(
            rule.surface,
            StatusCode::SERVICE_UNAVAILABLE,
            "this server has no access control and serves nothing but /healthz",
        );
    };
    let (from, what) = (peer(&req), what(&req));
    let principal = web.principal(req.headers(), rule.surface == Surface::Api);
    let audit = |who: String, role: Option<Role>, outcome: String| {
        let (web, what, from) = (web.clone(), what.clone(), from.clone());
        async move {
            web.audit
                .record(&who, role.map(Role::name), &what, &from, &outcome)
                .await
        }
    };
    let Some(p) = principal else {
        let recorded = audit("-".into(), None, "denied: not signed in".into()).await;
        if recorded.is_err() {
            return refuse(
                rule.surface,
                StatusCode::SERVICE_UNAVAILABLE,
                "the access audit cannot be written: access refused",
            );
        }
        return match rule.surface {
            Surface::Api => api_error(
                StatusCode::UNAUTHORIZED,
                "sign in first: a session cookie, or Authorization: Bearer <token>",
            ),
            Surface::Page => {
                let next = req
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                let mut url = String::from("/signin");
                if let Some(n) = safe_next(&next).filter(|n| *n != "/") {
                    url.push_str("?next=");
                    url.push_str(&super::pages::url_encode(n));
                }
                Redirect::to(&url).into_response()
            }
        };
    };
    if let Access::Roles(roles) = rule.access {
        if !roles.contains(&p.role) {
            let outcome = format!("denied: role {} may not", p.role.name());
            if audit(p.name.clone(), Some(p.role), outcome).await.is_err() {
                return refuse(
                    rule.surface,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the access audit cannot be written: access refused",
                );
            }
            return refuse(
                rule.surface,
                StatusCode::FORBIDDEN,
                &format!("the {} role may not use this page", p.role.name()),
            );
        }
    }
    if req.method() == Method::POST && cross_site(&req) {
        let _ = audit(p.name.clone(), Some(p.role), "denied: cross-site".into()).await;
        return refuse(
            rule.surface,
            StatusCode::FORBIDDEN,
            "cross-site form refused",
        );
    }
    let (who, role) = (p.name.clone(), p.role);
    req.extensions_mut().insert(p);
    let resp = next.run(req).await;
    let mut outcome = format!("allowed {}", resp.status().as_u16());
    if let Some(d) = resp.extensions().get::<Denied>() {
        outcome = format!("denied {}: {}", resp.status().as_u16(), d.0);
    }
    match audit(who, Some(role), outcome).await {
        Ok(()) => resp,
        Err(_) => refuse(
            rule.surface,
            StatusCode::SERVICE_UNAVAILABLE,
            "the access audit cannot be written: access refused",
        ),
    }
}

/// Set on a response by a handler that refused part of what was asked (an operator asking for
/// another station, export-controlled data for an account not authorized): the audit records it
/// as a denial with this reason.
#[derive(Debug, Clone)]
pub struct Denied(pub String);

async fn not_found(State(s): State<AppState>, req: Request) -> Response {
    let api = req.uri().path().starts_with("/api/");
    if let Some(web) = &s.web {
        let p = web.principal(req.headers(), api);
        let (who, role) = p.map_or(("-".into(), None), |p| (p.name, Some(p.role.name())));
        if web
            .audit
            .record(&who, role, &what(&req), &peer(&req), "not found 404")
            .await
            .is_err()
        {
            return api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the access audit cannot be written: access refused",
            );
        }
    }
    if api {
        api_error(StatusCode::NOT_FOUND, "no such endpoint")
    } else {
        page_error(StatusCode::NOT_FOUND, "There is no such page.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_has_a_handler_and_paths_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in RULES {
            let _ = handler(r);
            assert!(
                seen.insert((r.method, r.path)),
                "{} {} twice",
                r.method,
                r.path
            );
        }
    }

    #[test]
    fn next_stays_on_this_hub() {
        assert_eq!(safe_next("/injectors/X?q=1"), Some("/injectors/X?q=1"));
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/a\\b",
            "/\"><script>",
            "x",
        ] {
            assert_eq!(safe_next(bad), None, "{bad}");
        }
    }
}
