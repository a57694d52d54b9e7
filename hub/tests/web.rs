//! The web app's access control, run the way people use it: accounts made with `proofline-hub
//! user`, signed in with password and TOTP (enrolled from the page, as an authenticator app
//! would), then every route of the role × route matrix tried by every role, unauthenticated, by
//! a service token; lockout, code replay, CSRF, disabled accounts; every action in the access
//! audit, the hub ledger clean after; and access refused when the audit cannot be written.

mod common;
#[path = "common/web.rs"]
mod web_common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use proofline_hub::web::accounts::Role;
use proofline_hub::web::policy::{Access, Surface, RULES};

use common::*;
use web_common::*;

fn concrete(path: &str) -> String {
    path.replace("{uii}", "D1ABC57734-0000000007")
        .replace("{agent_id}", "flow-01")
}

async fn audit(addr: SocketAddr, b: &mut Browser) -> Vec<serde_json::Value> {
    let r = b.go(addr, "GET", "/api/v1/audit", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    v["records"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_only_the_roles_it_names_and_every_access_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let toml = plant.hub_toml(&["flow-01"], None, free_port());
    let cfg = dir.path().join("hub.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let hub = Hub::start(&toml).await;
    let addr = hub.api;

    // Unauthenticated: 401 for the API, a redirect to the sign-in for pages; nothing else.
    for r in RULES.iter().filter(|r| r.access != Access::Public) {
        let path = concrete(r.path);
        let resp = exchange(addr, r.method, &path, &[], "").await;
        match r.surface {
            Surface::Api => assert_eq!(resp.status, 401, "{} {path}", r.method),
            Surface::Page => {
                assert_eq!(resp.status, 303, "{} {path}: {}", r.method, resp.body);
                assert!(
                    resp.header("location").unwrap().starts_with("/signin"),
                    "{path}"
                );
            }
        }
    }
    // A bearer token nobody issued is nobody.
    let r = exchange(
        addr,
        "GET",
        "/api/v1/agents",
        &[("Authorization", "Bearer plt_forged".into())],
        "",
    )
    .await;
    assert_eq!(r.status, 401);

    // One person per role, and a service account.
    let mut people = BTreeMap::new();
    for role in Role::ALL {
        let name = format!("{}-1", role.name());
        let extra: &[&str] = if role == Role::Operator {
            &["--station", "flow-01"]
        } else {
            &[]
        };
        let password = add_user(&cfg, &name, role.name(), extra).await;
        people.insert(
            role,
            Person {
                name,
                password,
                secret: None,
                last_code: String::new(),
            },
        );
    }
    let token = add_user(&cfg, "qms-bridge", "quality", &["--service"]).await;
    let listed = hub_cli(&["user", "list", "--config", cfg.to_str().unwrap()]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("qms-bridge\tquality\tservice"), "{listed}");
    assert!(
        listed.contains("operator-1\toperator\tperson\tno\tflow-01\t-\tactive\tnever"),
        "{listed}"
    );

    let mut browsers = BTreeMap::new();
    for role in Role::ALL {
        let p = people.get_mut(&role).unwrap();
        browsers.insert(role, sign_in(addr, p).await);
    }

    // Every route × role: allowed exactly when the rule names the role.
    for r in RULES
        .iter()
        .filter(|r| r.access != Access::Public && r.method == "GET")
    {
        let path = concrete(r.path);
        for role in Role::ALL {
            let b = browsers.get_mut(&role).unwrap();
            let resp = b.go(addr, "GET", &path, "").await;
            let allowed = match r.access {
                Access::Roles(rs) => rs.contains(&role),
                _ => true,
            };
            if allowed {
                assert!(
                    ![401, 403, 303].contains(&resp.status) || (path == "/" && resp.status == 303),
                    "{} may {path}: got {} {}",
                    role.name(),
                    resp.status,
                    resp.body
                );
            } else {
                assert_eq!(
                    resp.status,
                    403,
                    "{} may not {path}: {}",
                    role.name(),
                    resp.body
                );
            }
        }
        // The service token: the API as a quality account, pages never.
        let resp = exchange(
            addr,
            "GET",
            &path,
            &[("Authorization", format!("Bearer {token}"))],
            "",
        )
        .await;
        match (r.surface, r.access) {
            (Surface::Page, _) => assert_eq!(resp.status, 303, "{path}"),
            (Surface::Api, Access::Roles(rs)) if !rs.contains(&Role::Quality) => {
                assert_eq!(resp.status, 403, "{path}")
            }
            (Surface::Api, _) => assert!(
                resp.status < 400 || resp.status == 404 || resp.status == 503,
                "{path}: {}",
                resp.status
            ),
        }
    }

    // The state changes (POST), each with the session's own CSRF token: allowed exactly when the
    // rule names the role (sign-out is tried last, below). A triage of a finding that does not
    // exist is a 404 page for quality, refused before that for everyone else.
    for r in RULES
        .iter()
        .filter(|r| r.method == "POST" && r.access != Access::Public && r.path != "/signout")
    {
        let path = concrete(&r.path.replace("{id}", "no-such-finding"));
        for role in Role::ALL {
            let b = browsers.get_mut(&role).unwrap();
            let page = b.go(addr, "GET", "/stations", "").await;
            let csrf = input(&page.body, "csrf");
            let resp = b
                .go(
                    addr,
                    "POST",
                    &path,
                    &form(&[("csrf", &csrf), ("action", "acknowledge")]),
                )
                .await;
            let allowed = match r.access {
                Access::Roles(rs) => rs.contains(&role),
                _ => true,
            };
            if allowed {
                assert_eq!(
                    resp.status,
                    404,
                    "{} may POST {path}: {}",
                    role.name(),
                    resp.body
                );
            } else {
                assert_eq!(
                    resp.status,
                    403,
                    "{} may not POST {path}: {}",
                    role.name(),
                    resp.body
                );
            }
        }
    }
    // Sign-out, for every role: the session ends (a page then redirects to the sign-in).
    for role in Role::ALL {
        let mut b = browsers[&role].clone();
        let page = b.go(addr, "GET", "/stations", "").await;
        let csrf = input(&page.body, "csrf");
        let out = b
            .go(addr, "POST", "/signout", &form(&[("csrf", &csrf)]))
            .await;
        assert_eq!(out.status, 303, "{}", role.name());
        // The browser kept the cookie the server told it to clear: it is dead all the same.
        let mut stale = browsers[&role].clone();
        assert_eq!(stale.go(addr, "GET", "/stations", "").await.status, 303);
    }
    let mut browsers = BTreeMap::new();
    for role in Role::ALL {
        let p = people.get_mut(&role).unwrap();
        browsers.insert(role, sign_in(addr, p).await);
    }

    // An operator sees only their own station.
    let op = browsers.get_mut(&Role::Operator).unwrap();
    assert_eq!(
        op.go(addr, "GET", "/stations/flow-01", "").await.status,
        200
    );
    assert_eq!(
        op.go(addr, "GET", "/stations/torque-09", "").await.status,
        403
    );

    // State changes come from the hub's own pages with the page's CSRF token.
    let q = browsers.get_mut(&Role::Quality).unwrap();
    let page = q.go(addr, "GET", "/stations", "").await;
    let csrf = input(&page.body, "csrf");
    assert_eq!(
        q.go(addr, "POST", "/signout", &form(&[("csrf", "forged")]))
            .await
            .status,
        403
    );
    let cross = exchange(
        addr,
        "POST",
        "/signout",
        &[
            (
                "Cookie",
                format!("proofline_session={}", q.cookie.clone().unwrap()),
            ),
            ("Origin", "https://evil.example".into()),
        ],
        &form(&[("csrf", &csrf)]),
    )
    .await;
    assert_eq!(cross.status, 403);
    let out = q
        .go(addr, "POST", "/signout", &form(&[("csrf", &csrf)]))
        .await;
    assert_eq!(out.status, 303);
    assert_eq!(
        q.go(addr, "GET", "/stations", "").await.status,
        303,
        "signed out"
    );

    // Lockout: three wrong passwords lock; while locked the right one is refused too.
    let a = people.get_mut(&Role::Auditor).unwrap();
    let mut b = Browser::default();
    for _ in 0..3 {
        let page = b.go(addr, "GET", "/signin", "").await;
        let csrf = input(&page.body, "csrf");
        let r = b
            .go(
                addr,
                "POST",
                "/signin",
                &form(&[("csrf", &csrf), ("name", &a.name), ("password", "wrong")]),
            )
            .await;
        assert_eq!(r.status, 200);
        assert!(r.body.contains("The name or the password is wrong."));
    }
    let page = b.go(addr, "GET", "/signin", "").await;
    let csrf = input(&page.body, "csrf");
    let r = b
        .go(
            addr,
            "POST",
            "/signin",
            &form(&[
                ("csrf", &csrf),
                ("name", &a.name),
                ("password", &a.password),
            ]),
        )
        .await;
    assert!(
        r.body.contains("this account is locked until"),
        "{}",
        r.body
    );
    // A wrong name reads as a wrong password.
    let page = b.go(addr, "GET", "/signin", "").await;
    let csrf = input(&page.body, "csrf");
    let r = b
        .go(
            addr,
            "POST",
            "/signin",
            &form(&[("csrf", &csrf), ("name", "nobody"), ("password", "x")]),
        )
        .await;
    assert!(r.body.contains("The name or the password is wrong."));
    // A form replayed after its session moved on is refused.
    let r = b
        .go(
            addr,
            "POST",
            "/signin",
            &form(&[
                ("csrf", "stale"),
                ("name", &a.name),
                ("password", &a.password),
            ]),
        )
        .await;
    assert_eq!(r.status, 400);

    // A TOTP code is good once.
    let mut adm = people.remove(&Role::Admin).unwrap();
    let mut b = Browser::default();
    let page = b.go(addr, "GET", "/signin", "").await;
    let csrf = input(&page.body, "csrf");
    let r = b
        .go(
            addr,
            "POST",
            "/signin",
            &form(&[
                ("csrf", &csrf),
                ("name", &adm.name),
                ("password", &adm.password),
            ]),
        )
        .await;
    assert_eq!(
        r.header("location").map(|l| l.starts_with("/signin/totp")),
        Some(true)
    );
    let page = b.go(addr, "GET", "/signin/totp", "").await;
    let csrf = input(&page.body, "csrf");
    // The code it enrolled with: within the clock-skew window its step is the one already
    // used, and later it is out of the window; refused either way.
    let used = adm.last_code.clone();
    let r = b
        .go(
            addr,
            "POST",
            "/signin/totp",
            &form(&[("csrf", &csrf), ("code", &used)]),
        )
        .await;
    assert!(
        r.body.contains("That code is wrong (or was used already)"),
        "{}: {}",
        r.status,
        r.body
    );
    let code = next_code(&adm).await;
    let r = b
        .go(
            addr,
            "POST",
            "/signin/totp",
            &form(&[("csrf", &csrf), ("code", &code)]),
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    adm.secret = None;

    // Disabling ends the sessions at once.
    let op_name = people[&Role::Operator].name.clone();
    let out = hub_cli(&[
        "user",
        "disable",
        "--config",
        cfg.to_str().unwrap(),
        "--name",
        &op_name,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let op = browsers.get_mut(&Role::Operator).unwrap();
    assert_eq!(op.go(addr, "GET", "/stations", "").await.status, 303);
    // A refused request names why.
    let out = hub_cli(&[
        "user",
        "add",
        "--config",
        cfg.to_str().unwrap(),
        "--name",
        &op_name,
        "--role",
        "quality",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists already"));

    // The audit has it all: sign-ins, failures, the lockout, denials, the account changes.
    let aud = browsers.get_mut(&Role::Auditor).unwrap();
    let records = audit(addr, aud).await;
    let has = |who: &str, what: &str, outcome: &str| {
        records.iter().any(|r| {
            r["who"].as_str() == Some(who)
                && r["what"].as_str().is_some_and(|w| w.starts_with(what))
                && r["outcome"]
                    .as_str()
                    .is_some_and(|o| o.starts_with(outcome))
        })
    };
    let auditor = people[&Role::Auditor].name.clone();
    assert!(has(&auditor, "signin (second factor enrolled)", "ok"));
    assert!(has(&auditor, "signin.failed", "wrong password"));
    assert!(has(&auditor, "lockout", "locked until"));
    assert!(has(&auditor, "signin", "refused: locked until"));
    assert!(has("nobody", "signin.failed", "no such account"));
    assert!(has(&op_name, "GET /stations/torque-09", "denied 403"));
    assert!(has("-", "GET /api/v1/agents", "denied: not signed in"));
    assert!(has("operator-1", "GET /audit", "denied: role operator"));
    assert!(has("qms-bridge", "GET /api/v1/findings", "allowed 200"));
    assert!(has("cli", "account.disable operator-1", "applied"));
    assert!(has(
        "cli",
        "account.add operator-1 role quality",
        "refused: an account operator-1 exists"
    ));
    assert!(has(&adm.name, "signin.failed", "wrong or reused TOTP code"));
    // The audit page shows the same.
    let page = aud.go(addr, "GET", "/audit", "").await;
    assert!(page.body.contains("account.disable operator-1"));

    hub.stop().await;
    let v = hub_cli(&[
        "ledger",
        "verify",
        "--data-dir",
        plant.hub_data.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_is_refused_when_the_audit_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let toml = plant.hub_toml(&["flow-01"], None, 0);
    let cfg = proofline_hub::config::HubConfig::parse(&toml).unwrap();
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(proofline_hub::run::run(
        proofline_hub::plan::HubPlan::build(&cfg).unwrap(),
        shutdown.clone(),
        proofline_hub::run::RunOptions {
            ready: Some(tx),
            fail_commits: Some(Arc::clone(&fail)),
            ..Default::default()
        },
    ));
    let addr = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .unwrap()
        .unwrap()
        .api;
    register_api(addr.port(), &plant.hub_data);
    assert_eq!(http_get(addr, "/api/v1/agents").await.0, 200);
    fail.store(true, Ordering::SeqCst);
    let (status, body) = http_get(addr, "/api/v1/agents").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("the access audit cannot be written"),
        "{body}"
    );
    // Denials too cannot be served without their record: nothing leaks while it is down.
    let r = exchange(addr, "GET", "/stations", &[], "").await;
    assert_eq!(r.status, 503);
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
}

/// The mark of an injector of the ITAR part type below (construct #2).
const ITAR_UII: &str = "D1ABC50445120123000777";

fn itar_records() -> Vec<proofline_common::record::Body> {
    use proofline_common::record::{
        Attribute, Binding, Body, Identity, PartScanned, ScanOutcome, ScanRole,
    };
    let a = |n: &str, v: &str| Attribute {
        name: n.into(),
        value: v.into(),
    };
    let scan = Body::PartScanned(PartScanned {
        source: "scanner".into(),
        role: ScanRole::Part,
        symbology: Some("]d2".into()),
        raw: proofline_common::bytes::Bytes(ITAR_UII.as_bytes().to_vec()),
        outcome: ScanOutcome::Identified(Identity {
            uii: ITAR_UII.into(),
            format: "06".into(),
            construct: "2".into(),
            attributes: vec![
                a("iac", "D"),
                a("enterprise", "1ABC5"),
                a("part_number", "0445120123"),
                a("serial", "000777"),
            ],
        }),
    });
    let mut result = proofline_common::synth::inspection_result(3, 8);
    if let Body::InspectionResult(r) = &mut result {
        r.binding = Binding::Bound {
            uii: ITAR_UII.into(),
            scan_seq: 0,
        };
    }
    vec![scan, result]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_controlled_technical_data_reaches_authorized_accounts_only() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let mut toml = plant.hub_toml(&["flow-01"], None, free_port());
    toml.push_str(
        "[[part_type]]\nname = \"CRI-M\"\npart_numbers = [\"0445120123\"]\nexport_control = \"ITAR\"\nusml_category = \"XIX(f)\"\n[[part_type.operation]]\nname = \"flow\"\nstations = [\"flow-01\"]\n",
    );
    let cfg = dir.path().join("hub.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let hub = Hub::start(&toml).await;
    let addr = hub.api;
    let mut st = Station::start(&plant, "flow-01", plant.hub_section(&plant.broker(), 1));
    let entries = itar_records()
        .into_iter()
        .map(|body| proofline_common::store::Entry {
            received_at: proofline_common::record::now_micros(),
            body,
        })
        .collect();
    st.ledger.append(entries).await.unwrap();
    st.wait_cosigned(Duration::from_secs(20)).await;
    assert!(
        until(Duration::from_secs(20), || async {
            http_get(addr, &format!("/api/v1/injectors/{ITAR_UII}"))
                .await
                .0
                == 200
        })
        .await
    );

    let mut us = Person {
        name: "auditor-us".into(),
        password: add_user(&cfg, "auditor-us", "auditor", &["--us-person"]).await,
        secret: None,
        last_code: String::new(),
    };
    let mut foreign = Person {
        name: "auditor-nn".into(),
        password: add_user(&cfg, "auditor-nn", "auditor", &[]).await,
        secret: None,
        last_code: String::new(),
    };
    let mut ok = sign_in(addr, &mut us).await;
    let mut no = sign_in(addr, &mut foreign).await;
    let path = format!("/injectors/{ITAR_UII}");

    // Authorized: everything, marked.
    let page = ok.go(addr, "GET", &path, "").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("Export-controlled: ITAR USML XIX(f)"),
        "{}",
        page.body
    );
    assert!(page.body.contains("full_load_delivery"));
    assert!(page.body.contains("Raw device data"));
    let api: serde_json::Value =
        serde_json::from_str(&ok.go(addr, "GET", &format!("/api/v1{path}"), "").await.body)
            .unwrap();
    assert_eq!(api["export_control"], "ITAR USML XIX(f)");
    assert!(api["timeline"].as_array().is_some_and(|t| t.len() == 2));
    let bundle = ok.go(addr, "GET", &format!("{path}/evidence"), "").await;
    assert_eq!(bundle.status, 200);

    // Not authorized: that it exists and where it is; no measurement, limit or raw byte.
    let page = no.go(addr, "GET", &path, "").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Export-controlled: ITAR USML XIX(f)"));
    assert!(page.body.contains("shown to authorized accounts only"));
    for secret in [
        "full_load_delivery",
        "Raw device data",
        "mm3/stroke",
        "Nominal",
    ] {
        assert!(!page.body.contains(secret), "{secret} shown: {}", page.body);
    }
    let api = no.go(addr, "GET", &format!("/api/v1{path}"), "").await;
    let v: serde_json::Value = serde_json::from_str(&api.body).unwrap();
    assert!(v.get("timeline").is_none(), "{v}");
    assert_eq!(v["stations"], serde_json::json!(["flow-01"]));
    assert!(!api.body.contains("full_load_delivery"));
    let bundle = no.go(addr, "GET", &format!("{path}/evidence"), "").await;
    assert_eq!(bundle.status, 403, "{}", bundle.body);
    let recs = no
        .go(
            addr,
            "GET",
            "/api/v1/agents/flow-01/records?from=0&limit=10",
            "",
        )
        .await;
    let recs: Vec<serde_json::Value> = serde_json::from_str(&recs.body).unwrap();
    assert!(recs.len() >= 2);
    assert!(
        recs.iter().filter(|r| r.get("withheld").is_some()).count() >= 2,
        "{recs:?}"
    );
    assert!(recs
        .iter()
        .all(|r| r.get("record").is_none() || r.get("withheld").is_none()));
    let station = no.go(addr, "GET", "/stations/flow-01", "").await;
    assert!(
        !station.body.contains("full_load_delivery"),
        "{}",
        station.body
    );

    // Every denial is in the audit.
    let records = audit(addr, &mut ok).await;
    let denied = |what: &str, outcome: &str| {
        records.iter().any(|r| {
            r["who"] == "auditor-nn"
                && r["what"].as_str().is_some_and(|w| w.starts_with(what))
                && r["outcome"]
                    .as_str()
                    .is_some_and(|o| o.starts_with(outcome))
        })
    };
    assert!(denied(
        &format!("GET {path}"),
        "denied 200: export-controlled technical data withheld"
    ));
    assert!(denied(
        &format!("GET /api/v1{path}"),
        "denied 200: export-controlled"
    ));
    assert!(denied(
        &format!("GET {path}/evidence"),
        "denied 403: export-controlled"
    ));
    assert!(denied("GET /api/v1/agents/flow-01/records", "denied 200:"));
    assert!(records.iter().any(|r| r["who"] == "auditor-us"
        && r["what"]
            .as_str()
            .is_some_and(|w| w.starts_with(&format!("GET {path}/evidence")))
        && r["outcome"] == "allowed 200"));

    st.stop().await;
    hub.stop().await;
}

/// The action URL and CSRF token of the first triage form with `action` on the findings page.
fn triage_form(html: &str, action: &str) -> (String, String) {
    let at = html
        .find(&format!("name=\"action\" value=\"{action}\""))
        .unwrap_or_else(|| panic!("no {action} form in {html}"));
    let form = html[..at].rfind("<form").unwrap();
    let head = &html[form..at];
    let url = head.split("action=\"").nth(1).unwrap();
    let url = url[..url.find('"').unwrap()].to_owned();
    (url, input(&html[form..], "csrf"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_are_triaged_by_quality_and_each_decision_is_in_the_hub_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let mut toml = plant.hub_toml(&["flow-01"], None, free_port());
    // The mark's enterprise is not the plant's: an enterprise_mismatch finding.
    toml.push_str("[reconcile]\nenterprises = [\"9ZZZ9\"]\n");
    let cfg = dir.path().join("hub.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let hub = Hub::start(&toml).await;
    let addr = hub.api;
    let mut st = Station::start(&plant, "flow-01", plant.hub_section(&plant.broker(), 1));
    let entries = itar_records()
        .into_iter()
        .map(|body| proofline_common::store::Entry {
            received_at: proofline_common::record::now_micros(),
            body,
        })
        .collect();
    st.ledger.append(entries).await.unwrap();
    st.wait_cosigned(Duration::from_secs(20)).await;
    assert!(
        until(Duration::from_secs(20), || async {
            get_json(addr, "/api/v1/findings?rule=enterprise_mismatch").await["count"] == 1
        })
        .await
    );
    let mut q = Person {
        name: "quality-1".into(),
        password: add_user(&cfg, "quality-1", "quality", &[]).await,
        secret: None,
        last_code: String::new(),
    };
    let mut a = Person {
        name: "auditor-1".into(),
        password: add_user(&cfg, "auditor-1", "auditor", &[]).await,
        secret: None,
        last_code: String::new(),
    };
    let mut qb = sign_in(addr, &mut q).await;
    let mut ab = sign_in(addr, &mut a).await;

    // An auditor reads, and may not triage.
    let page = ab.go(addr, "GET", "/findings", "").await;
    assert!(page.body.contains("enterprise_mismatch"));
    assert!(
        !page.body.contains("name=\"action\""),
        "no triage forms for an auditor"
    );
    let page = qb.go(addr, "GET", "/findings", "").await;
    let (url, csrf) = triage_form(&page.body, "acknowledge");
    let r = ab
        .go(
            addr,
            "POST",
            &url,
            &form(&[("csrf", &csrf), ("action", "acknowledge")]),
        )
        .await;
    assert_eq!(r.status, 403);

    // Acknowledge, then a close without a reason is refused, then closed with one.
    let r = qb
        .go(
            addr,
            "POST",
            &url,
            &form(&[("csrf", &csrf), ("action", "acknowledge")]),
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let done = qb.go(addr, "GET", r.header("location").unwrap(), "").await;
    assert!(done
        .body
        .contains("Recorded in the hub ledger: enterprise_mismatch acknowledged"));
    let v = get_json(addr, "/api/v1/findings?state=acknowledged").await;
    assert_eq!(v["count"], 1);
    assert_eq!(v["findings"][0]["triage"]["by"], "quality-1");
    let (url, csrf) = triage_form(&done.body, "close");
    let r = qb
        .go(
            addr,
            "POST",
            &url,
            &form(&[("csrf", &csrf), ("action", "close"), ("reason", " ")]),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("closing a finding needs a reason"));
    let reason = "supplier 1ABC5 approved under deviation D-2026-117";
    let r = qb
        .go(
            addr,
            "POST",
            &url,
            &form(&[("csrf", &csrf), ("action", "close"), ("reason", reason)]),
        )
        .await;
    assert_eq!(r.status, 303);
    let r = qb
        .go(
            addr,
            "POST",
            &url,
            &form(&[("csrf", &csrf), ("action", "close"), ("reason", reason)]),
        )
        .await;
    assert!(r.body.contains("closed already"), "{}", r.body);
    let metrics = http_get(addr, "/metrics").await.1;
    assert!(metrics.contains(
        "proofline_hub_findings{rule=\"enterprise_mismatch\",severity=\"hold\",state=\"closed\"} 1"
    ));

    st.stop().await;
    hub.stop().await;
    // Kept across a restart, and in the hub ledger with who and why.
    let hub = Hub::start(&toml).await;
    let v = get_json(hub.api, "/api/v1/findings?state=closed").await;
    assert_eq!(v["count"], 1);
    assert_eq!(v["findings"][0]["triage"]["reason"], reason);
    let export = ab.go(hub.api, "GET", "/audit/export", "").await;
    assert_eq!(export.status, 303, "the restart ended the sessions");
    let mut ab = sign_in(hub.api, &mut a).await;
    let export = ab.go(hub.api, "GET", "/audit/export", "").await;
    let triage: Vec<serde_json::Value> = export
        .body
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| {
            v["body"]["StationEvent"]["Triage"]
                .as_object()
                .cloned()
                .map(serde_json::Value::Object)
        })
        .collect();
    assert_eq!(triage.len(), 2, "{triage:?}");
    assert_eq!(triage[1]["state"], "closed");
    assert_eq!(triage[1]["by"], "quality-1");
    assert_eq!(triage[1]["reason"], reason);
    hub.stop().await;
    let v = hub_cli(&[
        "ledger",
        "verify",
        "--data-dir",
        plant.hub_data.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_flood_is_refused_and_summarized_not_written_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let toml = plant.hub_toml(&["flow-01"], None, free_port());
    let hub = Hub::start(&toml).await;
    let addr = hub.api;
    // Records of anonymous requests (the test's own reads, with the local token, are not).
    let anonymous = || async {
        get_json(addr, "/api/v1/audit").await["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["who"] == "-")
            .count()
    };
    let before = anonymous().await;
    for i in 0..300 {
        let path = if i % 2 == 0 {
            "/api/v1/agents"
        } else {
            "/no/such/page"
        };
        let r = exchange(addr, "GET", path, &[], "").await;
        assert!([401, 404].contains(&r.status), "{path}: {}", r.status);
    }
    // A burst of single records, then one summary within the summary period.
    assert!(
        until(Duration::from_secs(15), || async {
            get_json(addr, "/api/v1/audit").await["records"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| {
                    r["outcome"].as_str().is_some_and(|o| {
                        o.starts_with("denied:") && o.ends_with("more, not recorded one by one")
                    })
                })
        })
        .await,
        "no summary of the flood"
    );
    // The summary is one of them; the burst and what the rate refilled meanwhile the others.
    let singles = anonymous().await - before;
    assert!(singles < 80, "{singles} records for 300 anonymous requests");
    let m = http_get(addr, "/metrics").await.1;
    let summarized: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("proofline_hub_access_audit_summarized_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(summarized >= 240, "{summarized}");
    hub.stop().await;
}
