//! The quality staff's web app and the API behind one access control (DESIGN §7).
//!
//! - [`policy`]: the role × route matrix. The router is built from it, so a route exists only
//!   with its rule, and every request passes one guard that decides from it (deny by default).
//! - [`accounts`]: people and service accounts, argon2id, TOTP, lockout, changed by requests
//!   from `proofline-hub user ...`; [`session`]: cookie sessions with CSRF tokens;
//!   [`signin`](mod@signin): the sign-in, second factor and its enrollment, sign-out.
//! - [`audit`]: every access and denial appended to the hub ledger before it is answered.
//! - [`pages`]: the server-rendered pages (no script; charts as SVG).

pub mod accounts;
pub mod audit;
pub mod pages;
pub mod policy;
pub mod session;
pub mod signin;
pub mod triage;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use proofline_common::hash::Hash;
use proofline_common::store::Index;
use proofline_common::writer::LedgerHandle;

use self::accounts::{Accounts, Kind, Paths, Role};
use self::audit::AuditLog;
use self::session::{Sessions, Stage};

/// Who is asking, once the guard has let them in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// Authorized for export-controlled technical data.
    pub us_person: bool,
    pub station: Option<String>,
    /// The session token and its CSRF token (None for a bearer token).
    pub session: Option<(String, String)>,
}

/// The hub's own principal for tools on its host (`accounts/local.token`).
pub const LOCAL: &str = "local";

/// What the web app keeps.
#[derive(Debug)]
pub struct Web {
    pub site: String,
    pub accounts: Mutex<Accounts>,
    pub sessions: Sessions,
    pub audit: AuditLog,
    pub paths: Paths,
    /// The hub's own ledger (the audit log is read from it).
    pub ledger: LedgerHandle,
    local_token: Hash,
    /// Password checks (argon2id, ~19 MiB and tens of ms each) running at once.
    pub checks: tokio::sync::Semaphore,
    /// The part types, with their export-control markings.
    pub rules: Arc<crate::reconcile::rules::Rules>,
    /// Each finding's triage state.
    pub triage: Mutex<triage::Triage>,
}

/// Password checks at once; further sign-ins wait.
pub const CHECKS_AT_ONCE: usize = 2;

impl Web {
    /// Opens the accounts in `index`, starts the access audit on `ledger`, and writes a new
    /// local token (mode 0600) for tools on the hub's host.
    pub fn start(
        plan: &crate::plan::HubPlan,
        index: Index,
        triage_index: Index,
        ledger: LedgerHandle,
    ) -> anyhow::Result<Arc<Web>> {
        let (site, data_dir) = (plan.site.as_str(), plan.data_dir.as_path());
        let (idle, absolute) = (plan.session_idle, plan.session_max);
        let rules = Arc::clone(&plan.rules);
        use anyhow::Context;
        let paths = Paths::new(data_dir);
        let accounts = Accounts::open(index).context("opening the accounts")?;
        let triage = triage::Triage::open(triage_index).context("opening the findings' triage")?;
        for d in [paths.requests(), paths.done()] {
            proofline_common::durable::create_dir_all(&d)
                .with_context(|| format!("creating {}", d.display()))?;
        }
        accounts.write_list(&paths)?;
        let token = accounts::random_secret("pll_")?;
        crate::acl::write_secret_file(&paths.local_token(), &token)
            .with_context(|| format!("writing {}", paths.local_token().display()))?;
        Ok(Arc::new(Web {
            site: site.to_owned(),
            accounts: Mutex::new(accounts),
            sessions: Sessions::new(idle, absolute),
            audit: AuditLog::spawn(ledger.clone()),
            paths,
            ledger,
            local_token: accounts::token_hash(&token),
            checks: tokio::sync::Semaphore::new(CHECKS_AT_ONCE),
            rules,
            triage: Mutex::new(triage),
        }))
    }

    pub fn accounts(&self) -> std::sync::MutexGuard<'_, Accounts> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn triage(&self) -> std::sync::MutexGuard<'_, triage::Triage> {
        self.triage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The principal of a request: a bearer token (API only) or a signed-in session.
    pub fn principal(&self, headers: &HeaderMap, api: bool) -> Option<Principal> {
        if api {
            if let Some(t) = bearer(headers) {
                if accounts::token_hash(&t) == self.local_token {
                    return Some(Principal {
                        name: LOCAL.into(),
                        role: Role::Auditor,
                        us_person: true,
                        station: None,
                        session: None,
                    });
                }
                let accounts = self.accounts();
                let a = accounts.by_token(&t).filter(|a| !a.disabled)?;
                return Some(Principal {
                    name: a.name.clone(),
                    role: a.role,
                    us_person: a.us_person,
                    station: a.station.clone(),
                    session: None,
                });
            }
        }
        let token = session::token_of(headers)?;
        let s = self.sessions.get(&token)?;
        let Stage::Active { account } = &s.stage else {
            return None;
        };
        let accounts = self.accounts();
        let a = accounts
            .get(account)
            .filter(|a| !a.disabled && a.kind == Kind::Person)?;
        Some(Principal {
            name: a.name.clone(),
            role: a.role,
            us_person: a.us_person,
            station: a.station.clone(),
            session: Some((token, s.csrf)),
        })
    }

    /// Carries out the account requests waiting, each recorded in the access audit before its
    /// outcome is written for the command that asked.
    pub async fn apply_requests(&self) {
        for path in accounts::pending(&self.paths) {
            let name = path
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_default();
            let now = proofline_common::record::now_micros();
            let (what, outcome) = match accounts::read_request(&path) {
                Err(e) => ("account request".to_owned(), Err(e)),
                Ok(req) => {
                    let r = self.accounts().apply(&req, now);
                    match r {
                        Ok(o) => {
                            if o.is_ok() && !matches!(req, accounts::Request::Add { .. }) {
                                self.sessions.end_all(req.name());
                            }
                            (req.describe(), o)
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "an account change could not be stored");
                            return;
                        }
                    }
                }
            };
            let text = match &outcome {
                Ok(m) => format!("applied: {m}"),
                Err(m) => format!("refused: {m}"),
            };
            if let Err(e) = self.audit.record("cli", None, &what, "local", &text).await {
                tracing::error!(error = %e, "an account change could not be recorded; it is retried");
                return;
            }
            let _ = crate::enroll::write_atomically(&self.paths.done().join(&name), &text);
            let _ = std::fs::remove_file(&path);
            if let Err(e) = self.accounts().write_list(&self.paths) {
                tracing::warn!(error = %format!("{e:#}"), "accounts/list.json could not be written");
            }
            tracing::info!(request = %what, "{text}");
        }
        // Outcomes nobody collected are kept a day.
        if let Ok(rd) = std::fs::read_dir(self.paths.done()) {
            for e in rd.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|d| d > Duration::from_secs(86_400));
                if old {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Applies account requests every second until `shutdown`.
    pub async fn run_requests(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            self.apply_requests().await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// What one account may see of export-controlled technical data (measurements, raw device
/// data, limits, SPC): everything when it is authorized (a US person); otherwise nothing of an
/// injector whose part type is marked ITAR or EAR, nor of a record from a station on such a
/// part type's route that names no injector. When the reconciled view cannot be read, the data
/// is withheld (fail closed).
#[derive(Debug)]
pub struct ExportGate<'a> {
    rules: &'a crate::reconcile::rules::Rules,
    lookup: &'a crate::reconcile::Lookup,
    authorized: bool,
    cache: std::cell::RefCell<std::collections::HashMap<String, Option<String>>>,
}

impl<'a> ExportGate<'a> {
    pub fn new(
        rules: &'a crate::reconcile::rules::Rules,
        lookup: &'a crate::reconcile::Lookup,
        p: &Principal,
    ) -> ExportGate<'a> {
        ExportGate {
            rules,
            lookup,
            authorized: p.us_person,
            cache: Default::default(),
        }
    }

    /// The marking of `uii`'s part type, whoever asks.
    pub fn marking(&self, uii: &str) -> Option<String> {
        if let Some(m) = self.cache.borrow().get(uii) {
            return m.clone();
        }
        let m = match self.lookup.route(uii) {
            Ok(Some(r)) => r.part_type.and_then(|pt| {
                self.rules
                    .part_types
                    .iter()
                    .find(|t| t.name == pt)
                    .and_then(|t| t.export_control.clone())
            }),
            Ok(None) => None,
            Err(_) => Some("export control unknown (the reconciled view could not be read)".into()),
        };
        self.cache.borrow_mut().insert(uii.to_owned(), m.clone());
        m
    }

    /// Some(marking) when `uii`'s technical data is withheld from this account.
    pub fn withheld(&self, uii: &str) -> Option<String> {
        if self.authorized {
            return None;
        }
        self.marking(uii)
    }

    /// Some(marking) when a record of `agent_id` about `uii` (or about no injector) is withheld.
    pub fn withheld_record(&self, agent_id: &str, uii: Option<&str>) -> Option<String> {
        if self.authorized {
            return None;
        }
        match uii {
            Some(u) => self.marking(u),
            None => self
                .rules
                .part_types
                .iter()
                .filter(|t| {
                    t.operations
                        .iter()
                        .any(|o| o.stations.iter().any(|s| s == agent_id))
                })
                .find_map(|t| t.export_control.clone()),
        }
    }
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let t = v.strip_prefix("Bearer ")?.trim();
    (!t.is_empty() && t.len() <= 128).then(|| t.to_owned())
}
