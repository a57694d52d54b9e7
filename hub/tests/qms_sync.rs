//! Delivery to the central QMS, exactly once, against the fake QMS with its faults: each fault
//! alone, then all together with the hub SIGKILLed mid-sync; every result's report arrives
//! once, with its measurements and status. Also: an expired token stops delivery with the
//! remedy (no login loop), and two QMS parts with one ERP_id park the entry with a finding until
//! an operator's `qms retry`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use proofline_common::record::{now_micros, Body, Record, Verdict};
use proofline_common::store::Entry;
use proofline_common::synth::inspection_result;
use proofline_tests::qms::{FakeQms, Faults};
use serde_json::{json, Value};

const STATIONS: [&str; 2] = ["flow-01", "torque-01"];
const CHARS: [&str; 5] = [
    "full_load_delivery",
    "idle_delivery",
    "pilot_delivery",
    "back_leak",
    "opening_pressure",
];
const PASSWORD: &str = "hub-secret-pw";

/// The fake QMS as the plant's QMS administrator set it up: a tenant, the hub's account, a
/// part type, a step and bench per station, a definition per characteristic.
struct Qms {
    fake: FakeQms,
    tenant: String,
    toml: String,
}

async fn qms(dir: &Path) -> Qms {
    let fake = FakeQms::start().await.unwrap();
    let tenant = fake.set_tenants(&["plant-1", "plant-2"])[0].clone();
    fake.add_user("hub@plant.example", PASSWORD, &["plant-1"]);
    let pt = fake.seed("PartTypes", &tenant, json!({"name": "CRI-2.2"}));
    let pw = dir.join("qms-password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let mut toml = format!(
        "[qms]\nbase_url = \"{}\"\nemail = \"hub@plant.example\"\npassword_file = \"{}\"\ntenant = \"plant-1\"\ntimeout_secs = 1\npart_type = \"{pt}\"\n",
        fake.base_url(),
        pw.display()
    );
    for s in STATIONS {
        let step = fake.seed(
            "Steps",
            &tenant,
            json!({"name": format!("test at {s}"), "part_type": pt}),
        );
        let eq = fake.seed(
            "Equipment",
            &tenant,
            json!({"name": s, "status": "IN_SERVICE"}),
        );
        toml.push_str(&format!(
            "[[qms.station]]\nagent_id = \"{s}\"\nstep = \"{step}\"\nequipment = \"{eq}\"\n[qms.station.measurements]\n"
        ));
        for c in CHARS {
            let d = fake.seed(
                "MeasurementDefinitions",
                &tenant,
                json!({"label": c, "type": "NUMERIC", "step": step, "unit": "mm3/stroke",
                       "nominal": 50.0, "upper_tol": 200.0, "lower_tol": 50.0}),
            );
            toml.push_str(&format!("{c} = \"{d}\"\n"));
        }
    }
    Qms { fake, tenant, toml }
}

/// Appends `n` results, every third one failed.
async fn produce(st: &Station, n: u64) {
    let base = st.ledger.head().size;
    let entries = (0..n)
        .map(|i| {
            let mut b = inspection_result(base + i, 16);
            if let Body::InspectionResult(r) = &mut b {
                if (base + i) % 3 == 0 {
                    r.verdict = Verdict::Nok;
                }
            }
            Entry {
                received_at: now_micros(),
                body: b,
            }
        })
        .collect();
    st.ledger.append(entries).await.unwrap();
}

/// What every station recorded: (event id → (status, measurement values)).
fn expected(datas: &[(String, std::path::PathBuf)]) -> BTreeMap<String, (String, Vec<f64>)> {
    let mut out = BTreeMap::new();
    for (id, data) in datas {
        for r in station_records(data) {
            let Record::V1(v) = &r;
            let Body::InspectionResult(res) = &v.body else {
                continue;
            };
            let status = match res.verdict {
                Verdict::Ok => "PASS",
                Verdict::Nok => "FAIL",
                Verdict::NotEvaluated => "PENDING",
            };
            let values = res
                .characteristics
                .iter()
                .filter_map(|c| match c.measured {
                    proofline_common::record::Measured::Value { value, .. } => Some(value),
                    _ => None,
                })
                .collect();
            out.insert(
                format!("proofline:proofline/{SITE}/{id}:{}", v.seq),
                (status.to_owned(), values),
            );
        }
    }
    out
}

/// Every expected report is in the QMS exactly once, with its status and measurements; and
/// there is one part per injector.
fn check_exactly_once(fake: &FakeQms, want: &BTreeMap<String, (String, Vec<f64>)>) {
    let reports = fake.reports();
    let mut seen: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in &reports {
        let d = r["description"].as_str().unwrap_or("");
        let id = d.split(' ').next().unwrap_or("").to_owned();
        seen.entry(id).or_default().push(r);
    }
    let mut dup = 0;
    let mut missing = 0;
    for (id, (status, values)) in want {
        match seen.get(id).map(Vec::as_slice) {
            None => missing += 1,
            Some([r]) => {
                assert_eq!(r["status"], status.as_str(), "{id}: status");
                let got: Vec<f64> = r["measurements"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["value_numeric"].as_f64().unwrap())
                    .collect();
                let mut a = got.clone();
                let mut b = values.clone();
                a.sort_by(f64::total_cmp);
                b.sort_by(f64::total_cmp);
                // The QMS keeps Decimal(9,6).
                let same =
                    a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6);
                assert!(same, "{id}: measurements {a:?}, recorded {b:?}");
            }
            Some(more) => dup += more.len() - 1,
        }
    }
    assert_eq!((dup, missing), (0, 0), "duplicate and missing reports");
    assert_eq!(reports.len(), want.len(), "reports the hub never made");
    let parts = fake.parts();
    let mut erp: Vec<&str> = parts
        .iter()
        .map(|p| p["ERP_id"].as_str().unwrap_or(""))
        .collect();
    let n = erp.len();
    erp.sort();
    erp.dedup();
    assert_eq!(n, erp.len(), "one QMS part per injector");
    // Every FAIL report opened exactly one disposition (the QMS's doing, never the hub's).
    let fails = want.values().filter(|(s, _)| s == "FAIL").count();
    assert_eq!(fake.dispositions().len(), fails);
}

async fn qms_status(api: std::net::SocketAddr) -> Value {
    get_json(api, "/api/v1/qms").await["status"].clone()
}

/// Waits until the fake has `n` reports and the outbox is empty.
async fn wait_delivered(api: std::net::SocketAddr, fake: &FakeQms, n: usize, within: Duration) {
    let ok = until(within, || async {
        let st = http_get(api, "/api/v1/qms").await;
        let depth = serde_json::from_str::<Value>(&st.1)
            .ok()
            .and_then(|v| v["status"]["depth"].as_u64());
        fake.reports().len() >= n && depth == Some(0)
    })
    .await;
    assert!(
        ok,
        "{} of {n} reports; qms status {}",
        fake.reports().len(),
        http_get(api, "/api/v1/qms").await.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_alone_gives_every_report_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let plant = Plant::new(tmp.path());
    let q = qms(tmp.path()).await;
    let toml = format!("{}{}", plant.hub_toml(&STATIONS, None, 0), q.toml);
    let hub = Hub::start(&toml).await;
    let mut stations: Vec<Station> = STATIONS
        .iter()
        .map(|s| Station::start(&plant, s, plant.hub_section(&plant.broker(), 1)))
        .collect();
    let faults = [
        Faults::default(),
        Faults {
            fail_before_commit: 3,
            ..Faults::default()
        },
        Faults {
            fail_after_commit: 3,
            ..Faults::default()
        },
        Faults {
            slow_writes: 2,
            slow_by: Duration::from_millis(1500),
            ..Faults::default()
        },
        Faults {
            cut_writes: 3,
            ..Faults::default()
        },
        Faults {
            task_queue_down: true,
            ..Faults::default()
        },
    ];
    let mut total = 0;
    for f in faults {
        let name = format!("{f:?}");
        q.fake.set_faults(f);
        for s in &stations {
            produce(s, 6).await;
        }
        total += 12;
        for s in &mut stations {
            s.wait_cosigned(Duration::from_secs(20)).await;
        }
        wait_delivered(hub.api, &q.fake, total, Duration::from_secs(60)).await;
        assert_eq!(q.fake.reports().len(), total, "after {name}");
    }
    let st = qms_status(hub.api).await;
    assert!(st["transient_failures"].as_u64().unwrap() >= 10, "{st}");
    assert!(st["found_existing"].as_u64().unwrap() >= 3, "{st}");
    // The report numbers are on the injector's timeline.
    let uii = "D1ABC57734-0000000001";
    let inj = get_json(hub.api, &format!("/api/v1/injectors/{uii}")).await;
    let delivered = inj["qms"].as_array().unwrap();
    assert_eq!(delivered.len(), 2, "one result per station: {inj}");
    assert!(delivered
        .iter()
        .all(|d| d["qms"]["state"]["delivered"]["report_number"]
            .as_str()
            .is_some_and(|n| n.starts_with("QR-"))));
    hub.stop().await;
    let mut datas = Vec::new();
    for s in stations {
        let id = s.agent_id.clone();
        datas.push((id, s.stop().await));
    }
    check_exactly_once(&q.fake, &expected(&datas));
    // Every call carried the tenant: nothing landed in plant-2 or nowhere.
    let _ = &q.tenant;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_stops_delivery_with_the_remedy_and_no_login_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let plant = Plant::new(tmp.path());
    let q = qms(tmp.path()).await;
    q.fake.set_token_ttl(Some(Duration::from_millis(500)));
    let toml = format!("{}{}", plant.hub_toml(&STATIONS[..1], None, 0), q.toml);
    let hub = Hub::start(&toml).await;
    let mut st = Station::start(&plant, STATIONS[0], plant.hub_section(&plant.broker(), 1));
    produce(&st, 2).await;
    st.wait_cosigned(Duration::from_secs(20)).await;
    wait_delivered(hub.api, &q.fake, 2, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    produce(&st, 2).await;
    st.wait_cosigned(Duration::from_secs(20)).await;
    let api = hub.api;
    assert!(
        until(Duration::from_secs(20), || async move {
            qms_status(api).await["stopped"].is_string()
        })
        .await
    );
    let status = qms_status(api).await;
    assert!(
        status["stopped"]
            .as_str()
            .unwrap()
            .contains("API_TOKEN_TTL_SECONDS=0"),
        "{status}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logins = q
        .fake
        .requests()
        .iter()
        .filter(|r| r.as_str() == "POST /auth/login/")
        .count();
    assert!(logins <= 2, "{logins} logins: a login loop");
    assert_eq!(q.fake.reports().len(), 2);
    assert!(alerts(api).await.iter().any(|a| a["kind"] == "qms_stopped"));
    hub.stop().await;
    st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_qms_parts_with_one_erp_id_park_the_result_until_an_operator_retries() {
    let tmp = tempfile::tempdir().unwrap();
    let plant = Plant::new(tmp.path());
    let q = qms(tmp.path()).await;
    let uii = "D1ABC57734-0000000000";
    let pt = q.fake.rows("PartTypes")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = q
        .fake
        .seed("Parts", &q.tenant, json!({"ERP_id": uii, "part_type": pt}));
    q.fake
        .seed("Parts", &q.tenant, json!({"ERP_id": uii, "part_type": pt}));
    // A part whose ERP_id merely contains the UII is not it (the filter is a substring match).
    q.fake.seed(
        "Parts",
        &q.tenant,
        json!({"ERP_id": format!("{uii}-X"), "part_type": pt}),
    );
    let toml = format!("{}{}", plant.hub_toml(&STATIONS[..1], None, 0), q.toml);
    let cfg_path = tmp.path().join("hub.toml");
    std::fs::write(&cfg_path, &toml).unwrap();
    let hub = Hub::start(&toml).await;
    let mut st = Station::start(&plant, STATIONS[0], plant.hub_section(&plant.broker(), 1));
    produce(&st, 2).await;
    st.wait_cosigned(Duration::from_secs(20)).await;
    let api = hub.api;
    // Result 1 (another UII) is delivered; result 0 is parked with a finding.
    let fake = &q.fake;
    assert!(
        until(Duration::from_secs(20), || async move {
            qms_status(api).await["parked"].as_u64() == Some(1) && fake.reports().len() == 1
        })
        .await,
        "{}",
        qms_status(api).await
    );
    let f = get_json(api, "/api/v1/findings?rule=qms_duplicate_part").await;
    assert_eq!(f["count"], 1, "{f}");
    assert_eq!(f["findings"][0]["uii"], uii);
    assert_eq!(f["findings"][0]["state"], "open");
    // Filters: by UII, by state; a wrong filter is named.
    let f = get_json(api, &format!("/api/v1/findings?uii={uii}&state=open")).await;
    assert_eq!(f["count"], 1, "{f}");
    let f = get_json(api, "/api/v1/findings?state=closed").await;
    assert_eq!(f["count"], 0, "{f}");
    for bad in ["rule=duplicates", "state=gone", "limit=0"] {
        let (code, body) = http_get(api, &format!("/api/v1/findings?{bad}")).await;
        assert_eq!(code, 400, "{bad}: {body}");
    }
    let (code, _) = http_get(api, "/api/v1/injectors/NO-SUCH-UII").await;
    assert_eq!(code, 404);
    let (_, metrics) = http_get(api, "/metrics").await;
    for line in [
        "proofline_hub_qms_parked 1",
        "proofline_hub_qms_outbox_depth 0",
        "proofline_hub_findings{rule=\"qms_duplicate_part\",severity=\"review\",state=\"open\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in /metrics");
    }
    // The QMS administrator merges the two; the operator retries.
    q.fake.delete("Parts", &first);
    let code = proofline_hub::cli::main_from([
        "proofline-hub",
        "qms",
        "retry",
        "--config",
        cfg_path.to_str().unwrap(),
        &format!("proofline:proofline/{SITE}/{}:0", STATIONS[0]),
    ]);
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    wait_delivered(api, &q.fake, 2, Duration::from_secs(20)).await;
    assert!(
        until(Duration::from_secs(5), || async move {
            qms_status(api).await["parked"] == 0
        })
        .await
    );
    hub.stop().await;
    st.stop().await;
}

fn spawn_hub(cfg: &Path, log: &Path) -> tokio::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_proofline-hub"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("PROOFLINE_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn wait_api(api: std::net::SocketAddr) {
    assert!(
        until(Duration::from_secs(20), || async move {
            tokio::net::TcpStream::connect(api).await.is_ok()
        })
        .await,
        "the hub's API did not come up"
    );
}

/// Every fault at once, and the hub SIGKILLed while it delivers: still every report once; and
/// the reconciled view the hub kept equals one rebuilt from the records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_faults_together_with_the_hub_sigkilled_mid_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let plant = Plant::new(tmp.path());
    let q = qms(tmp.path()).await;
    q.fake.set_faults(Faults {
        fail_before_commit: 4,
        fail_after_commit: 4,
        slow_writes: 2,
        slow_by: Duration::from_millis(1500),
        cut_writes: 4,
        task_queue_down: true,
    });
    let api_port = free_port();
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], api_port));
    let cfg = tmp.path().join("hub.toml");
    std::fs::write(
        &cfg,
        format!("{}{}", plant.hub_toml(&STATIONS, None, api_port), q.toml),
    )
    .unwrap();
    let log = tmp.path().join("hub.log");
    let mut hub = spawn_hub(&cfg, &log);
    wait_api(api).await;
    let mut stations: Vec<Station> = STATIONS
        .iter()
        .map(|s| Station::start(&plant, s, plant.hub_section(&plant.broker(), 1)))
        .collect();
    for _ in 0..3 {
        for s in &stations {
            produce(s, 10).await;
        }
    }
    // Killed once some reports are in, and again while it catches up.
    for at in [8, 30] {
        let fake = &q.fake;
        assert!(
            until(Duration::from_secs(60), || async move {
                fake.reports().len() >= at
            })
            .await,
            "{} reports; see {}",
            fake.reports().len(),
            log.display()
        );
        hub.start_kill().unwrap();
        hub.wait().await.unwrap();
        hub = spawn_hub(&cfg, &log);
        wait_api(api).await;
    }
    for s in &mut stations {
        s.wait_cosigned(Duration::from_secs(60)).await;
    }
    wait_delivered(api, &q.fake, 60, Duration::from_secs(120)).await;
    let pid = hub.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let st = tokio::time::timeout(Duration::from_secs(30), hub.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(st.success(), "{st}");
    let mut datas = Vec::new();
    for s in stations {
        let id = s.agent_id.clone();
        datas.push((id, s.stop().await));
    }
    check_exactly_once(&q.fake, &expected(&datas));
    let found = std::fs::read_to_string(&log).unwrap();
    assert!(
        found.contains("found=true"),
        "no unknown outcome was settled by a search"
    );
    let code = proofline_hub::cli::main_from([
        "proofline-hub",
        "reconcile",
        "--rebuild",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(code, std::process::ExitCode::SUCCESS, "rebuilt ≠ kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_online_finds_every_mapped_id_and_refuses_a_definition_without_tolerances() {
    let tmp = tempfile::tempdir().unwrap();
    let plant = Plant::new(tmp.path());
    let q = qms(tmp.path()).await;
    let cfg = tmp.path().join("hub.toml");
    let toml = format!("{}{}", plant.hub_toml(&STATIONS, None, 0), q.toml);
    std::fs::write(&cfg, &toml).unwrap();
    let run = |cfg: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            proofline_hub::cli::main_from([
                "proofline-hub",
                "check-config",
                "--config",
                cfg.to_str().unwrap(),
                "--online",
            ])
        })
    };
    assert_eq!(
        run(cfg.clone()).await.unwrap(),
        std::process::ExitCode::SUCCESS
    );
    // A definition without tolerances, and a step id the QMS does not have.
    let step = q.fake.rows("Steps")[0]["id"].as_str().unwrap().to_owned();
    let bare = q.fake.seed(
        "MeasurementDefinitions",
        &q.tenant,
        json!({"label": "x", "type": "NUMERIC", "step": step, "nominal": null, "upper_tol": null, "lower_tol": null}),
    );
    let first_def = q.fake.rows("MeasurementDefinitions")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let broken = toml.replacen(&first_def, &bare, 1).replacen(
        &step,
        "00000000-0000-4000-8000-00000000dead",
        1,
    );
    std::fs::write(&cfg, &broken).unwrap();
    assert_ne!(run(cfg).await.unwrap(), std::process::ExitCode::SUCCESS);
    let plan = proofline_hub::config::HubConfig::parse(&broken)
        .unwrap()
        .qms_plan(&mut Default::default())
        .unwrap();
    let problems = proofline_hub::qms::check_online(&plan).await.unwrap();
    assert!(
        problems[0].contains("station[0] (flow-01).step") && problems[0].contains("no such row"),
        "{problems:#?}"
    );
    // The other station's mapping is right: nothing about it.
    assert!(
        problems.iter().all(|p| p.contains("flow-01")),
        "{problems:#?}"
    );
    assert!(problems
        .iter()
        .any(|p| p.contains("NUMERIC without nominal, upper_tol, lower_tol")));
    assert!(problems.iter().any(|p| p.contains("another step")));
}
