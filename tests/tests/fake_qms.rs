//! The fake QMS behaves as `reference/qms-api.md` says the real one does, each observed trap
//! included: the hub's QMS client is tested against it, so a trap it lacks is a bug the hub
//! would meet only in the plant.

use std::time::Duration;

use proofline_tests::qms::{FakeQms, Faults};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An answer: status, headers (lower-case names), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request on its own connection, no redirects followed, no cookies kept.
async fn call(
    qms: &FakeQms,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    let mut s = tokio::net::TcpStream::connect(qms.addr).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: qms\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let body = if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// A fake with one account, logged in: the fake and the `Authorization` value.
async fn logged_in(tenants: &[&str]) -> (FakeQms, String) {
    let qms = FakeQms::start().await.unwrap();
    if !tenants.is_empty() {
        qms.set_tenants(tenants);
    }
    qms.add_user("hub@plant.example", "s3cret", tenants);
    let a = call(
        &qms,
        "POST",
        "/auth/login/",
        &[],
        Some(json!({"email": "hub@plant.example", "password": "s3cret"})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let key = a.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(key.len(), 40);
    (qms, format!("Token {key}"))
}

/// Part type, step, bench and two definitions (NUMERIC with tolerances, PASS_FAIL).
fn seed_plant(qms: &FakeQms, tenant: &str) -> (String, String, String, String, String) {
    let pt = qms.seed("PartTypes", tenant, json!({"name": "injector"}));
    let step = qms.seed(
        "Steps",
        tenant,
        json!({"name": "flow test", "part_type": pt}),
    );
    let bench = qms.seed(
        "Equipment",
        tenant,
        json!({"name": "flow bench 1", "status": "IN_SERVICE"}),
    );
    let num = qms.seed(
        "MeasurementDefinitions",
        tenant,
        json!({"label": "full_load_delivery", "type": "NUMERIC", "step": step, "unit": "mm3/stroke",
               "nominal": 120.0, "upper_tol": 2.0, "lower_tol": 2.0}),
    );
    let pf = qms.seed(
        "MeasurementDefinitions",
        tenant,
        json!({"label": "spray_pattern", "type": "PASS_FAIL", "step": step}),
    );
    (pt, step, bench, num, pf)
}

#[tokio::test]
async fn login_tokens_cookies_and_throttling_behave_as_observed() {
    let (qms, auth) = logged_in(&[]).await;
    let ok = call(
        &qms,
        "GET",
        "/api/Parts/",
        &[("Authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["count"], 0);
    let bearer = auth.replace("Token ", "Bearer ");
    let a = call(
        &qms,
        "GET",
        "/api/Parts/",
        &[("Authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(
        (a.status, a.json()["code"].clone()),
        (401, json!("not_authenticated"))
    );
    // The session cookie login set, sent back, makes CSRF apply.
    let a = call(
        &qms,
        "GET",
        "/api/Parts/",
        &[
            ("Authorization", &auth),
            ("Cookie", "sessionid=fake-session"),
        ],
        None,
    )
    .await;
    assert_eq!(a.status, 403);
    // Ten logins a minute per address, then 429 throttled.
    let mut codes = Vec::new();
    for _ in 0..10 {
        let a = call(
            &qms,
            "POST",
            "/auth/login/",
            &[],
            Some(json!({"email": "hub@plant.example", "password": "s3cret"})),
        )
        .await;
        codes.push(a.status);
    }
    assert_eq!(codes[..9], [200; 9]);
    assert_eq!(codes[9], 429);
}

#[tokio::test]
async fn an_expired_token_stays_expired_after_logging_in_again() {
    let (qms, auth) = logged_in(&[]).await;
    qms.set_token_ttl(Some(Duration::ZERO));
    let a = call(
        &qms,
        "GET",
        "/api/Parts/",
        &[("Authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.json()["detail"],
        "Token has expired. Request a new token."
    );
    let again = call(
        &qms,
        "POST",
        "/auth/login/",
        &[],
        Some(json!({"email": "hub@plant.example", "password": "s3cret"})),
    )
    .await;
    assert_eq!(
        format!("Token {}", again.json()["key"].as_str().unwrap()),
        auth
    );
    let a = call(
        &qms,
        "GET",
        "/api/Parts/",
        &[("Authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(a.status, 401);
}

#[tokio::test]
async fn a_missing_slash_redirects_and_errors_are_html() {
    let (qms, auth) = logged_in(&[]).await;
    let a = call(
        &qms,
        "POST",
        "/api/Parts",
        &[("Authorization", &auth)],
        Some(json!({})),
    )
    .await;
    assert_eq!(a.status, 301);
    assert_eq!(a.header("location"), Some("/api/Parts/"));
    let a = call(
        &qms,
        "GET",
        "/api/parts/",
        &[("Authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(a.status, 404);
    assert!(a.header("content-type").unwrap().starts_with("text/html"));
    qms.set_faults(Faults {
        fail_before_commit: 1,
        ..Faults::default()
    });
    let (pt, ..) = seed_plant(&qms, "");
    let a = call(
        &qms,
        "POST",
        "/api/Parts/",
        &[("Authorization", &auth)],
        Some(json!({"ERP_id": "INJ-1", "part_type": pt})),
    )
    .await;
    assert_eq!(a.status, 500);
    assert!(a.header("content-type").unwrap().starts_with("text/html"));
    assert!(a.body.contains("Server Error (500)"));
    assert!(
        qms.parts().is_empty(),
        "a failure before commit stores nothing"
    );
}

#[tokio::test]
async fn without_the_tenant_header_reads_are_empty_or_500_and_writes_403() {
    let (qms, auth) = logged_in(&["plant-1"]).await;
    let ids = qms.set_tenants(&["plant-1", "plant-2"]);
    let tenant = &ids[0];
    let (pt, step, ..) = seed_plant(&qms, tenant);
    let with = [("Authorization", auth.as_str()), ("X-Tenant-ID", "plant-1")];
    let a = call(
        &qms,
        "POST",
        "/api/QualityReports/",
        &with,
        Some(json!({"status": "PASS", "step": step})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let without = [("Authorization", auth.as_str())];
    let a = call(&qms, "GET", "/api/Parts/", &without, None).await;
    assert_eq!(a.status, 500);
    let a = call(&qms, "GET", "/api/QualityReports/", &without, None).await;
    assert_eq!((a.status, a.json()["count"].clone()), (200, json!(0)));
    let a = call(&qms, "GET", "/api/QualityReports/", &with, None).await;
    assert_eq!(a.json()["count"], 1);
    let a = call(
        &qms,
        "POST",
        "/api/Parts/",
        &without,
        Some(json!({"ERP_id": "INJ-1", "part_type": pt})),
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(a.json()["detail"], "No tenant context available");
    let a = call(
        &qms,
        "GET",
        "/api/Parts/",
        &[("Authorization", auth.as_str()), ("X-Tenant-ID", "nowhere")],
        None,
    )
    .await;
    assert_eq!(
        (a.status, a.json()["code"].clone()),
        (403, json!("tenant_access_denied"))
    );
    let a = call(
        &qms,
        "GET",
        "/api/Parts/",
        &[("Authorization", auth.as_str()), ("X-Tenant-ID", "plant-2")],
        None,
    )
    .await;
    assert_eq!(
        (a.status, a.json()["code"].clone()),
        (403, json!("permission_denied"))
    );
    let a = call(&qms, "GET", "/api/user/tenants/", &without, None).await;
    assert_eq!(a.json()["results"][0]["slug"], "plant-1");
}

#[tokio::test]
async fn erp_id_filters_by_substring_and_nothing_is_deduplicated() {
    let (qms, auth) = logged_in(&[]).await;
    let (pt, ..) = seed_plant(&qms, "");
    let h = [("Authorization", auth.as_str())];
    for erp in ["INJ-1", "INJ-10", "INJ-1"] {
        let a = call(
            &qms,
            "POST",
            "/api/Parts/",
            &h,
            Some(json!({"ERP_id": erp, "part_type": pt})),
        )
        .await;
        assert_eq!(a.status, 201);
    }
    let a = call(&qms, "GET", "/api/Parts/?ERP_id=inj-1", &h, None).await;
    assert_eq!(a.json()["count"], 3, "a case-insensitive substring match");
    let a = call(&qms, "GET", "/api/Parts/?limit=2&offset=0", &h, None).await;
    let page = a.json();
    assert_eq!(
        (
            page["count"].clone(),
            page["results"].as_array().unwrap().len()
        ),
        (json!(3), 2)
    );
    assert!(page["next"].as_str().unwrap().contains("offset=2"));
    let a = call(
        &qms,
        "POST",
        "/api/Parts/",
        &h,
        Some(json!({"part_type": pt})),
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["ERP_id"][0], "This field is required.");
    assert_eq!(a.json()["code"], "invalid");
}

#[tokio::test]
async fn reports_keep_the_status_sent_and_a_fail_quarantines_every_time() {
    let (qms, auth) = logged_in(&[]).await;
    let (pt, step, bench, num, pf) = seed_plant(&qms, "");
    let h = [("Authorization", auth.as_str())];
    let part = call(
        &qms,
        "POST",
        "/api/Parts/",
        &h,
        Some(json!({"ERP_id": "INJ-7", "part_type": pt})),
    )
    .await
    .json()["id"]
        .clone();
    let report = |status: &str, value: f64, event: &str| {
        json!({"status": status, "part": part, "step": step, "production_equipment": bench,
               "description": format!("proofline:{event} bench 2026-12-07T10:00:00"),
               "measurements": [{"definition": num, "value_numeric": value, "value_pass_fail": null},
                                {"definition": pf, "value_numeric": null, "value_pass_fail": "PASS"}]})
    };
    // PASS with an out-of-spec value is stored as PASS, the measurement marked out of spec.
    let a = call(
        &qms,
        "POST",
        "/api/QualityReports/",
        &h,
        Some(report("PASS", 125.0, "a:1")),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let r = a.json();
    assert_eq!(r["status"], "PASS");
    assert_eq!(r["measurements"][0]["is_within_spec"], false);
    assert_eq!(
        r["measurements"][0]["definition_info"]["nominal"],
        "120.000000"
    );
    assert!(r["measurements"][0]["report"].is_string());
    assert_eq!(r["report_number"], "QR-2026-000001");
    // A FAIL twice: two reports, two dispositions, the part quarantined.
    for n in 2..4 {
        let a = call(
            &qms,
            "POST",
            "/api/QualityReports/",
            &h,
            Some(report("FAIL", 110.0, "a:2")),
        )
        .await;
        assert_eq!(a.json()["report_number"], format!("QR-2026-{n:06}"));
    }
    assert_eq!(qms.dispositions().len(), 2);
    assert_eq!(qms.parts()[0]["part_status"], "QUARANTINED");
    // Task queue down: a FAIL report is committed, then answered 500.
    qms.set_faults(Faults {
        task_queue_down: true,
        ..Faults::default()
    });
    let a = call(
        &qms,
        "POST",
        "/api/QualityReports/",
        &h,
        Some(report("FAIL", 110.0, "a:3")),
    )
    .await;
    assert_eq!(a.status, 500);
    let a = call(
        &qms,
        "POST",
        "/api/QualityReports/",
        &h,
        Some(report("PASS", 120.0, "a:4")),
    )
    .await;
    assert_eq!(a.status, 201, "PASS reports are unaffected");
    let found = call(
        &qms,
        "GET",
        "/api/QualityReports/?search=proofline%3Aa%3A3",
        &h,
        None,
    )
    .await;
    assert_eq!(found.json()["count"], 1, "the 500 came after the commit");
    let by_part = call(&qms, "GET", "/api/QualityReports/?search=inj-7", &h, None).await;
    assert_eq!(by_part.json()["count"], 5);
    // A PATCH with measurements answers 200 and ignores them.
    let id = found.json()["results"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = call(
        &qms,
        "PATCH",
        &format!("/api/QualityReports/{id}/"),
        &h,
        Some(json!({"measurements": [], "description": "changed"})),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["measurements"].as_array().unwrap().len(), 2);
    assert_eq!(a.json()["description"], "changed");
}

#[tokio::test]
async fn a_numeric_definition_without_tolerances_fails_the_report_with_500() {
    let (qms, auth) = logged_in(&[]).await;
    let (_, step, ..) = seed_plant(&qms, "");
    let bare = qms.seed(
        "MeasurementDefinitions",
        "",
        json!({"label": "back_leak", "type": "NUMERIC", "step": step, "unit": "mm3/stroke"}),
    );
    let a = call(
        &qms,
        "POST",
        "/api/QualityReports/",
        &[("Authorization", auth.as_str())],
        Some(
            json!({"status": "PASS", "measurements": [{"definition": bare, "value_numeric": 3.0}]}),
        ),
    )
    .await;
    assert_eq!(a.status, 500);
    assert!(qms.reports().is_empty());
}

#[tokio::test]
async fn a_failure_after_commit_and_a_slow_write_both_leave_the_row() {
    let (qms, auth) = logged_in(&[]).await;
    let (pt, ..) = seed_plant(&qms, "");
    let h = [("Authorization", auth.as_str())];
    qms.set_faults(Faults {
        fail_after_commit: 1,
        slow_writes: 1,
        slow_by: Duration::from_millis(300),
        ..Faults::default()
    });
    let a = call(
        &qms,
        "POST",
        "/api/Parts/",
        &h,
        Some(json!({"ERP_id": "INJ-1", "part_type": pt})),
    )
    .await;
    assert_eq!(a.status, 500);
    let t = std::time::Instant::now();
    let a = call(
        &qms,
        "POST",
        "/api/Parts/",
        &h,
        Some(json!({"ERP_id": "INJ-2", "part_type": pt})),
    )
    .await;
    assert_eq!(a.status, 201);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(qms.parts().len(), 2);
    assert_eq!(qms.faults().fail_after_commit, 0);
}
