//! The web app in a real browser: headless Chromium driven over WebDriver (chromedriver, both
//! Debian packages), against a real hub holding two stations' records.
//!
//! - every account signs in with its password and enrolls its second factor from the page, as an
//!   authenticator app would (the key shown under the QR code);
//! - each role opens the pages it may and is refused the others;
//! - an export-controlled injector is seen in full by a US-person auditor and withheld from
//!   another auditor;
//! - the injector page shows the results, limits and raw data; the evidence bundle is downloaded
//!   by the browser and verified offline;
//! - three wrong passwords lock an account;
//! - the access audit shows every one of these actions, and `ledger verify` is clean after.
//!
//! Screenshots of each step go to `target/browser-screenshots/` (CI keeps them as artifacts).
//! Without chromium and chromedriver the test says so and skips, unless
//! PROOFLINE_REQUIRE_PEERS=1 (CI installs both).

mod common;
#[path = "common/web.rs"]
mod web_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use proofline_common::record::{
    now_micros, Attribute, Binding, Body, Identity, PartScanned, ScanOutcome, ScanRole, Verdict,
};
use proofline_common::store::Entry;
use proofline_hub::web::accounts::totp;
use serde_json::{json, Value};

use common::*;
use web_common::hub_cli;

/// A WebDriver session on a chromedriver this test started.
struct Driver {
    http: reqwest::Client,
    base: String,
    child: std::process::Child,
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for n in names {
        for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

impl Driver {
    async fn start(downloads: &Path) -> Option<Driver> {
        let (Some(chromium), Some(driver)) = (
            find_program(&["chromium", "chromium-browser", "google-chrome"]),
            find_program(&["chromedriver"]),
        ) else {
            assert!(
                std::env::var_os("PROOFLINE_REQUIRE_PEERS").is_none(),
                "chromium and chromedriver are required (PROOFLINE_REQUIRE_PEERS is set) but not installed"
            );
            eprintln!("skipped: chromium or chromedriver is not installed (CI installs them: apt-get install chromium chromium-driver)");
            return None;
        };
        let port = free_port();
        let child = std::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let root = format!("http://127.0.0.1:{port}");
        let mut ready = false;
        for _ in 0..100 {
            if http.get(format!("{root}/status")).send().await.is_ok() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "chromedriver did not start");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1000", "--no-first-run", "--disable-extensions"],
                "prefs": {"download.default_directory": downloads, "download.prompt_for_download": false},
            }
        }}});
        let r: Value = http
            .post(format!("{root}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_owned();
        Some(Driver {
            http,
            base: format!("{root}/session/{id}"),
            child,
        })
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {v}\n{}", "(see the screenshots)"))
            .to_owned()
    }

    async fn fill(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{el}/clear"),
            Some(json!({})),
        )
        .await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{el}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn text(&self, css: &str) -> String {
        let el = self.find(css).await;
        self.cmd(reqwest::Method::GET, &format!("/element/{el}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn source(&self) -> String {
        self.cmd(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page source once it holds `needle` (a click's navigation may still be loading).
    async fn wait_for(&self, needle: &str) -> String {
        let mut src = String::new();
        for _ in 0..100 {
            src = self.source().await;
            if src.contains(needle) {
                return src;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the page never showed {needle:?}:\n{src}")
    }

    async fn forget_cookies(&self) {
        self.cmd(reqwest::Method::DELETE, "/cookie", None).await;
    }

    async fn screenshot(&self, name: &str) {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .unwrap_or_default();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs `name` in through the pages, enrolling the second factor from the key shown.
async fn sign_in(d: &Driver, base: &str, name: &str, password: &str, shot: Option<&str>) {
    d.forget_cookies().await;
    d.goto(&format!("{base}/signin")).await;
    d.fill("input[name=name]", name).await;
    d.fill("input[name=password]", password).await;
    d.click("main button[type=submit]").await;
    let page = d.wait_for("Enroll your second factor").await;
    assert!(page.contains("<svg"), "the QR code is shown");
    if let Some(s) = shot {
        d.screenshot(s).await;
    }
    let b32 = d.text("#secret").await;
    let secret = totp_rs::Secret::Encoded(b32).to_bytes().unwrap();
    let code = totp(&secret, SITE, name).unwrap().generate(now_secs());
    d.fill("input[name=code]", &code).await;
    d.click("main button[type=submit]").await;
    d.wait_for("Sign out").await;
}

fn mark(uii: &str, part_number: &str, serial: &str) -> Body {
    let a = |n: &str, v: &str| Attribute {
        name: n.into(),
        value: v.into(),
    };
    Body::PartScanned(PartScanned {
        source: "scanner".into(),
        role: ScanRole::Part,
        symbology: Some("]d2".into()),
        raw: proofline_common::bytes::Bytes(uii.as_bytes().to_vec()),
        outcome: ScanOutcome::Identified(Identity {
            uii: uii.into(),
            format: "06".into(),
            construct: "2".into(),
            attributes: vec![
                a("iac", "D"),
                a("enterprise", "1ABC5"),
                a("part_number", part_number),
                a("serial", serial),
            ],
        }),
    })
}

fn result(uii: &str, i: u64) -> Body {
    let mut b = proofline_common::synth::inspection_result(i, 16);
    if let Body::InspectionResult(r) = &mut b {
        r.binding = Binding::Bound {
            uii: uii.into(),
            scan_seq: 0,
        };
        r.verdict = Verdict::Ok;
    }
    b
}

async fn append(st: &Station, bodies: Vec<Body>) {
    let entries = bodies
        .into_iter()
        .map(|body| Entry {
            received_at: now_micros(),
            body,
        })
        .collect();
    st.ledger.append(entries).await.unwrap();
}

fn add_user(cfg: &Path, name: &str, role: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "user",
        "add",
        "--config",
        cfg.to_str().unwrap(),
        "--name",
        name,
        "--role",
        role,
    ];
    args.extend_from_slice(extra);
    let out = hub_cli(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("one-time password (shown once): "))
        .unwrap()
        .trim()
        .to_owned()
}

const UII: &str = "D1ABC50445120123000100";
const ITAR_UII: &str = "D1ABC50445999999000200";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_staff_use_the_web_app_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let downloads = dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let Some(d) = Driver::start(&downloads).await else {
        return;
    };
    let plant = Plant::new(dir.path());
    let mut toml = plant.hub_toml(&["flow-01", "torque-01"], None, free_port());
    toml.push_str(concat!(
        "[[part_type]]\nname = \"CRI-2.2\"\npart_numbers = [\"0445120123\"]\n",
        "[[part_type.operation]]\nname = \"flow\"\nstations = [\"flow-01\"]\n",
        "[[part_type.operation]]\nname = \"torque\"\nstations = [\"torque-01\"]\n",
        "[[part_type]]\nname = \"CRI-M\"\npart_numbers = [\"0445999999\"]\nexport_control = \"ITAR\"\nusml_category = \"XIX(f)\"\n",
        "[[part_type.operation]]\nname = \"flow\"\nstations = [\"flow-01\"]\n",
    ));
    let cfg = dir.path().join("hub.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let hub = Hub::start(&toml).await;
    let base = format!("http://{}", hub.api);
    let mut flow = Station::start(&plant, "flow-01", plant.hub_section(&plant.broker(), 1));
    let mut torque = Station::start(&plant, "torque-01", plant.hub_section(&plant.broker(), 1));
    append(
        &flow,
        vec![mark(UII, "0445120123", "000100"), result(UII, 1)],
    )
    .await;
    append(
        &flow,
        vec![mark(ITAR_UII, "0445999999", "000200"), result(ITAR_UII, 2)],
    )
    .await;
    let mut torque_result = proofline_common::synth::inspection_result(3, 8);
    if let Body::InspectionResult(r) = &mut torque_result {
        r.binding = Binding::Bound {
            uii: UII.into(),
            scan_seq: 0,
        };
        r.characteristics.truncate(1);
        r.characteristics[0].name = "nozzle_nut_torque".into();
        r.verdict = Verdict::Ok;
    }
    append(
        &torque,
        vec![mark(UII, "0445120123", "000100"), torque_result],
    )
    .await;
    flow.wait_cosigned(Duration::from_secs(20)).await;
    torque.wait_cosigned(Duration::from_secs(20)).await;
    assert!(
        until(Duration::from_secs(20), || async {
            let v = http_get(hub.api, &format!("/api/v1/injectors/{UII}")).await;
            v.0 == 200 && v.1.contains("torque-01")
        })
        .await
    );

    let accounts = [
        ("operator-1", "operator", vec!["--station", "flow-01"]),
        ("quality-1", "quality", vec![]),
        ("auditor-us", "auditor", vec!["--us-person"]),
        ("auditor-nn", "auditor", vec![]),
        ("admin-1", "admin", vec![]),
    ];
    let mut passwords = std::collections::BTreeMap::new();
    for (name, role, extra) in &accounts {
        passwords.insert(*name, add_user(&cfg, name, role, extra));
    }

    // The auditor authorized for export-controlled data: the injector, its evidence.
    sign_in(
        &d,
        &base,
        "auditor-us",
        &passwords["auditor-us"],
        Some("01-enroll-second-factor"),
    )
    .await;
    d.goto(&format!("{base}/injectors")).await;
    d.fill("input[name=q]", "000100").await;
    d.click("main button[type=submit]").await;
    d.wait_for("id=\"results\"").await;
    d.click("#results a").await;
    let page = d.wait_for("<h2>Timeline</h2>").await;
    d.screenshot("02-injector-page").await;
    for shown in [
        "CRI-2.2",
        "Route complete",
        "full_load_delivery",
        "nozzle_nut_torque",
        "Raw device data",
        "witnessed",
    ] {
        assert!(
            page.contains(shown),
            "{shown} missing from the injector page"
        );
    }
    d.click("#evidence").await;
    let bundle_file = downloads.join(format!("evidence-{UII}.json"));
    let mut got = false;
    for _ in 0..100 {
        if bundle_file.is_file() {
            got = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        got,
        "the browser did not download the bundle: {:?}",
        std::fs::read_dir(&downloads).unwrap().collect::<Vec<_>>()
    );
    let trust = dir.path().join("trust.txt");
    std::fs::write(&trust, format!("{}\n", plant.cosigner)).unwrap();
    let verdict = format!(
        "{:?}",
        proofline_agent::commands::main_from([
            "proofline-agent",
            "evidence",
            "verify",
            bundle_file.to_str().unwrap(),
            "--trust",
            trust.to_str().unwrap(),
        ])
    );
    assert_eq!(verdict, format!("{:?}", std::process::ExitCode::SUCCESS));
    d.goto(&format!("{base}/injectors/{ITAR_UII}")).await;
    let page = d.source().await;
    d.screenshot("03-export-controlled-authorized").await;
    assert!(
        page.contains("Export-controlled: ITAR USML XIX(f)") && page.contains("full_load_delivery")
    );
    d.click("header button[type=submit]").await;
    d.wait_for("<h1>Sign in</h1>").await;

    // Another auditor, not authorized: the injector exists, its technical data does not show.
    sign_in(&d, &base, "auditor-nn", &passwords["auditor-nn"], None).await;
    d.goto(&format!("{base}/injectors/{ITAR_UII}")).await;
    let page = d.source().await;
    d.screenshot("04-export-controlled-withheld").await;
    assert!(page.contains("shown to authorized accounts only"));
    for hidden in ["full_load_delivery", "Raw device data", "mm3/stroke"] {
        assert!(
            !page.contains(hidden),
            "{hidden} shown to an unauthorized account"
        );
    }

    // Each role: the pages it may open, and a refusal for the others.
    let pages = [
        "/stations",
        "/stations/flow-01",
        "/injectors",
        "/findings",
        "/alerts",
        "/audit",
        "/accounts",
    ];
    let may = |role: &str, page: &str| {
        matches!(
            (role, page),
            (_, "/stations" | "/stations/flow-01")
                | ("quality", "/injectors" | "/findings" | "/alerts")
                | ("auditor", _)
                | ("admin", "/alerts" | "/audit" | "/accounts")
        )
    };
    for (name, role, _) in &accounts {
        if *name == "auditor-us" || *name == "auditor-nn" {
            continue;
        }
        sign_in(&d, &base, name, &passwords[name], None).await;
        for p in pages {
            d.goto(&format!("{base}{p}")).await;
            let src = d.source().await;
            let refused = src.contains("403 Forbidden") || src.contains("<h1>Forbidden</h1>");
            assert_eq!(!refused, may(role, p), "{role} on {p}");
        }
        if *role == "operator" {
            // Only their own station.
            d.goto(&format!("{base}/stations/torque-01")).await;
            assert!(d.source().await.contains("Forbidden"));
        }
        d.goto(&format!("{base}/audit")).await;
        d.screenshot(&format!("05-role-{role}-on-audit")).await;
    }
    // The administrator is signed in last: the audit log as they read it.
    d.goto(&format!("{base}/accounts")).await;
    d.screenshot("06-accounts").await;

    // Three wrong passwords lock the account; then the right one is refused too.
    d.forget_cookies().await;
    for _ in 0..3 {
        d.goto(&format!("{base}/signin")).await;
        d.fill("input[name=name]", "quality-1").await;
        d.fill("input[name=password]", "not the password").await;
        d.click("main button[type=submit]").await;
        d.wait_for("The name or the password is wrong.").await;
    }
    d.goto(&format!("{base}/signin")).await;
    d.fill("input[name=name]", "quality-1").await;
    d.fill("input[name=password]", &passwords["quality-1"])
        .await;
    d.click("main button[type=submit]").await;
    d.wait_for("this account is locked until").await;
    d.screenshot("07-locked-out").await;

    // The access audit holds every action above.
    let records = get_json(hub.api, "/api/v1/audit").await["records"]
        .as_array()
        .unwrap()
        .clone();
    let has = |who: &str, what: &str, outcome: &str| {
        records.iter().any(|r| {
            r["who"] == who
                && r["what"].as_str().is_some_and(|w| w.starts_with(what))
                && r["outcome"]
                    .as_str()
                    .is_some_and(|o| o.starts_with(outcome))
        })
    };
    for (name, role, _) in &accounts {
        assert!(
            has(name, "signin (second factor enrolled)", "ok"),
            "{name}'s sign-in"
        );
        if name.starts_with("auditor") {
            continue;
        }
        // Every page each role opened, with what it was answered (a page shown with
        // export-controlled records withheld is a 200 recorded as a denial).
        for p in pages {
            let answered = records.iter().any(|r| {
                r["who"] == *name
                    && r["what"] == format!("GET {p}")
                    && r["outcome"].as_str().is_some_and(|o| {
                        if may(role, p) {
                            o.contains(" 200")
                        } else {
                            o.starts_with("denied") && !o.contains(" 200")
                        }
                    })
            });
            assert!(answered, "{name} on {p}: not in the audit as answered");
        }
    }
    assert!(has(
        "auditor-us",
        &format!("GET /injectors/{UII}/evidence"),
        "allowed 200"
    ));
    assert!(has("auditor-us", "POST /signout", "allowed 303"));
    assert!(has(
        "auditor-nn",
        &format!("GET /injectors/{ITAR_UII}"),
        "denied 200: export-controlled"
    ));
    assert!(has("quality-1", "GET /audit", "denied: role quality"));
    assert!(has("operator-1", "GET /stations/torque-01", "denied 403"));
    assert!(has("quality-1", "signin.failed", "wrong password"));
    assert!(has("quality-1", "lockout", "locked until"));
    assert!(has("quality-1", "signin", "refused: locked until"));

    drop(d);
    flow.stop().await;
    torque.stop().await;
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
