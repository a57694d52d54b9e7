//! Signing in: name and password, then the TOTP code (or, the first time, enrolling the second
//! factor from a QR code), each step on a new session token; signing out.
//!
//! Every attempt is audited: `signin` (succeeded), `signin.failed` (which step, why), `lockout`,
//! `signout`. A wrong name and a wrong password look the same to the browser and cost the same
//! time (a decoy hash is checked). While an account is locked no password is checked.

// The steps' helpers fail with the response to send; it goes straight back out.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use super::accounts::{self, Kind};
use super::pages;
use super::session::{self, same_secret, Stage};
use super::{Principal, Web};
use crate::api::AppState;

#[derive(Debug, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct PasswordForm {
    csrf: String,
    name: String,
    password: String,
    #[serde(default)]
    next: String,
}

#[derive(Debug, Deserialize)]
pub struct CodeForm {
    csrf: String,
    code: String,
    #[serde(default)]
    next: String,
}

fn web(s: &AppState) -> Result<Arc<Web>, Response> {
    s.web.clone().ok_or_else(|| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "this server has no accounts",
        )
            .into_response()
    })
}

/// The peer's address, as the audit records it (`unknown` when the server did not say).
#[derive(Debug, Clone)]
pub struct Peer(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or_else(|| "unknown".into(), |c| c.0.ip().to_string()),
        ))
    }
}

fn with_cookie(token: &str, resp: impl IntoResponse) -> Response {
    ([(header::SET_COOKIE, session::set_cookie(token))], resp).into_response()
}

fn next_of(n: &str) -> String {
    super::policy::safe_next(n).unwrap_or("/").to_owned()
}

fn now_micros() -> i64 {
    proofline_common::record::now_micros()
}

/// Records an attempt; the sign-in stops (503) if it cannot be recorded.
async fn audit(
    w: &Web,
    who: &str,
    role: Option<&str>,
    what: &str,
    from: &str,
    outcome: &str,
) -> Result<(), Response> {
    w.audit
        .record(who, role, what, from, outcome)
        .await
        .map_err(|_| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                pages::message_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The access audit cannot be written, so nobody can sign in now. Tell the hub's administrator.",
                ),
            )
                .into_response()
        })
}

/// `locked until <time>`.
fn locked_until(until: i64) -> String {
    format!(
        "locked until {}",
        proofline_common::evidence::rfc3339(until)
    )
}

/// Counts a failed step against `a` and records it (and the lockout it may start); Ok(the
/// lockout's text) when this failure locked the account.
async fn count_failure(
    w: &Web,
    mut a: accounts::Account,
    now: i64,
    from: &str,
    why: &str,
) -> Result<Option<String>, Response> {
    let locked = a.fail(now);
    let (name, role) = (a.name.clone(), a.role);
    if let Err(e) = w.accounts().put(a) {
        tracing::error!(error = %e, "a failed sign-in could not be counted");
    }
    audit(w, &name, Some(role.name()), "signin.failed", from, why).await?;
    let Some(until) = locked else {
        return Ok(None);
    };
    let msg = locked_until(until);
    audit(w, &name, None, "lockout", from, &msg).await?;
    Ok(Some(msg))
}

/// `GET /signin`: the form, on a fresh anonymous session.
pub async fn form(State(s): State<AppState>, Query(q): Query<NextQuery>) -> Response {
    let w = match web(&s) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let next = next_of(q.next.as_deref().unwrap_or("/"));
    let Some((token, sess)) = w.sessions.create(Stage::Anonymous) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            pages::message_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many people are signed in; try again later.",
            ),
        )
            .into_response();
    };
    with_cookie(&token, pages::signin_page(&sess.csrf, &next, None))
}

/// The session a sign-in step continues, if its CSRF token matches.
fn continuing(w: &Web, headers: &HeaderMap, csrf: &str) -> Option<(String, session::Session)> {
    let token = session::token_of(headers)?;
    let s = w.sessions.get(&token)?;
    same_secret(&s.csrf, csrf).then_some((token, s))
}

fn expired() -> Response {
    (
        StatusCode::BAD_REQUEST,
        pages::message_page_with_link(
            StatusCode::BAD_REQUEST,
            "The sign-in form has expired. Sign in again.",
            "/signin",
        ),
    )
        .into_response()
}

/// `POST /signin`: name and password.
pub async fn password(
    State(s): State<AppState>,
    Peer(from): Peer,
    headers: HeaderMap,
    Form(f): Form<PasswordForm>,
) -> Response {
    let w = match web(&s) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let next = next_of(&f.next);
    let Some((token, sess)) = continuing(&w, &headers, &f.csrf) else {
        return expired();
    };
    if sess.stage != Stage::Anonymous {
        return expired();
    }
    let name: String = f.name.trim().chars().take(64).collect();
    let now = now_micros();
    let again = |msg: &str| with_cookie(&token, pages::signin_page(&sess.csrf, &next, Some(msg)));
    let wrong = "The name or the password is wrong.";
    let account = w.accounts().get(&name).cloned();
    if let Some(until) = account.as_ref().and_then(|a| a.locked_at(now)) {
        let msg = locked_until(until);
        if let Err(r) = audit(&w, &name, None, "signin", &from, &format!("refused: {msg}")).await {
            return r;
        }
        return again(&format!(
            "Too many failed attempts: this account is {msg}. An administrator can unlock it with `proofline-hub user reset`."
        ));
    }
    let Ok(_slot) = w.checks.acquire().await else {
        return expired();
    };
    let phc = account
        .as_ref()
        .and_then(|a| a.password.clone())
        .unwrap_or_else(|| accounts::decoy_hash().to_owned());
    let password = f.password.chars().take(1024).collect::<String>();
    let matches = tokio::task::spawn_blocking(move || accounts::password_matches(&phc, &password))
        .await
        .unwrap_or(false);
    drop(_slot);
    let usable = account
        .as_ref()
        .is_some_and(|a| a.kind == Kind::Person && !a.disabled);
    if !(matches && usable) {
        let why = match &account {
            None => "no such account",
            Some(a) if a.kind == Kind::Service => "a service account cannot sign in",
            Some(a) if a.disabled => "the account is disabled",
            Some(_) => "wrong password",
        };
        let recorded = match account.filter(|_| !matches) {
            Some(a) => count_failure(&w, a, now, &from, why).await.map(|_| ()),
            None => audit(&w, &name, None, "signin.failed", &from, why).await,
        };
        if let Err(r) = recorded {
            return r;
        }
        return again(wrong);
    }
    let a = account.expect("usable");
    let stage = match &a.totp {
        Some(_) => Stage::Password {
            account: a.name.clone(),
        },
        None => match accounts::new_totp_secret() {
            Ok(secret) => Stage::Enrolling {
                account: a.name.clone(),
                secret,
            },
            Err(_) => return expired(),
        },
    };
    let to = if matches!(stage, Stage::Password { .. }) {
        "/signin/totp"
    } else {
        "/signin/enroll"
    };
    let Some((token, _)) = w.sessions.advance(&token, stage) else {
        return expired();
    };
    if let Err(r) = audit(
        &w,
        &name,
        Some(a.role.name()),
        "signin.password",
        &from,
        "ok: second factor asked",
    )
    .await
    {
        return r;
    }
    with_cookie(
        &token,
        Redirect::to(&format!("{to}?next={}", pages::url_encode(&next))),
    )
}

fn stage_of(w: &Web, headers: &HeaderMap) -> Option<(String, session::Session)> {
    let token = session::token_of(headers)?;
    let s = w.sessions.get(&token)?;
    Some((token, s))
}

/// `GET /signin/totp`.
pub async fn totp_form(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let w = match web(&s) {
        Ok(w) => w,
        Err(r) => return r,
    };
    match stage_of(&w, &headers) {
        Some((_, sess)) if matches!(sess.stage, Stage::Password { .. }) => {
            pages::code_page(&sess.csrf, &next_of(q.next.as_deref().unwrap_or("/")), None)
                .into_response()
        }
        _ => Redirect::to("/signin").into_response(),
    }
}

/// `GET /signin/enroll`: the QR code of a new second factor.
pub async fn enroll_form(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let w = match web(&s) {
        Ok(w) => w,
        Err(r) => return r,
    };
    match stage_of(&w, &headers) {
        Some((_, sess)) => match &sess.stage {
            Stage::Enrolling { account, secret } => {
                match accounts::totp(secret, &w.site, account) {
                    Ok(t) => pages::enroll_page(
                        &sess.csrf,
                        &next_of(q.next.as_deref().unwrap_or("/")),
                        &t.get_url(),
                        &t.get_secret_base32(),
                        None,
                    )
                    .into_response(),
                    Err(_) => expired(),
                }
            }
            _ => Redirect::to("/signin").into_response(),
        },
        None => Redirect::to("/signin").into_response(),
    }
}

/// `POST /signin/totp` and `POST /signin/enroll`: the code.
async fn code(
    s: AppState,
    from: String,
    headers: HeaderMap,
    f: CodeForm,
    enrolling: bool,
) -> Response {
    let w = match web(&s) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let next = next_of(&f.next);
    let Some((token, sess)) = continuing(&w, &headers, &f.csrf) else {
        return expired();
    };
    let (name, secret) = match (&sess.stage, enrolling) {
        (Stage::Password { account }, false) => (account.clone(), None),
        (Stage::Enrolling { account, secret }, true) => (account.clone(), Some(secret.clone())),
        _ => return expired(),
    };
    let now = now_micros();
    let Some(mut a) = w.accounts().get(&name).cloned() else {
        return expired();
    };
    if a.disabled || a.locked_at(now).is_some() {
        w.sessions.end(&token);
        return expired();
    }
    let Some(key) = secret.clone().or_else(|| a.totp.clone()) else {
        return expired();
    };
    let step = accounts::totp(&key, &w.site, &name)
        .ok()
        .and_then(|t| accounts::totp_step(&t, f.code.trim(), (now / 1_000_000) as u64))
        .filter(|&st| st > a.totp_last_step);
    let role = a.role;
    let Some(step) = step else {
        let locked = match count_failure(&w, a, now, &from, "wrong or reused TOTP code").await {
            Ok(l) => l,
            Err(r) => return r,
        };
        if let Some(msg) = locked {
            w.sessions.end(&token);
            return pages::message_page_with_link(
                StatusCode::FORBIDDEN,
                &format!("Too many failed attempts: this account is {msg}."),
                "/signin",
            )
            .into_response();
        }
        let msg = "That code is wrong (or was used already). Enter the current one.";
        return match &secret {
            None => pages::code_page(&sess.csrf, &next, Some(msg)).into_response(),
            Some(sec) => match accounts::totp(sec, &w.site, &name) {
                Ok(t) => pages::enroll_page(
                    &sess.csrf,
                    &next,
                    &t.get_url(),
                    &t.get_secret_base32(),
                    Some(msg),
                )
                .into_response(),
                Err(_) => expired(),
            },
        };
    };
    a.totp_last_step = step;
    if let Some(sec) = secret {
        a.totp = Some(sec);
    }
    a.succeed(now);
    if let Err(e) = w.accounts().put(a) {
        tracing::error!(error = %e, "a sign-in could not be stored");
        return expired();
    }
    let what = if enrolling {
        "signin (second factor enrolled)"
    } else {
        "signin"
    };
    if let Err(r) = audit(&w, &name, Some(role.name()), what, &from, "ok").await {
        return r;
    }
    let Some((token, _)) = w.sessions.advance(&token, Stage::Active { account: name }) else {
        return expired();
    };
    with_cookie(&token, Redirect::to(&next))
}

pub async fn totp(
    State(s): State<AppState>,
    Peer(from): Peer,
    headers: HeaderMap,
    Form(f): Form<CodeForm>,
) -> Response {
    code(s, from, headers, f, false).await
}

pub async fn enroll(
    State(s): State<AppState>,
    Peer(from): Peer,
    headers: HeaderMap,
    Form(f): Form<CodeForm>,
) -> Response {
    code(s, from, headers, f, true).await
}

#[derive(Debug, Deserialize)]
pub struct SignoutForm {
    csrf: String,
}

/// `POST /signout` (the guard has audited it).
pub async fn signout(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Form(f): Form<SignoutForm>,
) -> Response {
    let Some((token, csrf)) = p.session else {
        return Redirect::to("/signin").into_response();
    };
    if !same_secret(&csrf, &f.csrf) {
        return (
            StatusCode::FORBIDDEN,
            pages::message_page(
                StatusCode::FORBIDDEN,
                "The form has expired; reload the page.",
            ),
        )
            .into_response();
    }
    if let Some(w) = &s.web {
        w.sessions.end(&token);
    }
    (
        [(header::SET_COOKIE, session::clear_cookie())],
        Redirect::to("/signin"),
    )
        .into_response()
}
