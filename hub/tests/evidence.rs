//! Evidence bundles end to end: two stations forward to a real hub; the injector's bundle is
//! taken from the running hub's API and from the stopped hub's store (`proofline-hub
//! evidence`), checked offline (`proofline-agent evidence verify`) with nothing but the hub's
//! key, and every kind of tampering is refused with its reason.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use proofline_common::evidence::{self, Bundle, Refused};
use proofline_common::note::{NoteSigner, VerifierKey};
use proofline_common::record::{
    now_micros, Attribute, Body, Identity, PartScanned, Record, ScanOutcome, ScanRole,
};
use proofline_common::store::Entry;
use proofline_common::synth::inspection_result;
use proofline_common::Origin;
use serde_json::Value;

use common::*;

/// The synthetic result `I` is bound to this UII (see `synth::inspection_result`).
const I: u64 = 7;
const UII: &str = "D1ABC57734-0000000007";

fn scan(uii: &str) -> Body {
    Body::PartScanned(PartScanned {
        source: "scanner".into(),
        role: ScanRole::Part,
        symbology: Some("]d2".into()),
        raw: proofline_common::bytes::Bytes(uii.as_bytes().to_vec()),
        outcome: ScanOutcome::Identified(Identity {
            uii: uii.into(),
            format: "06".into(),
            construct: "2".into(),
            attributes: vec![Attribute {
                name: "serial".into(),
                value: "0000000007".into(),
            }],
        }),
    })
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

/// Other injectors' results, so that the proofs are not trivial.
async fn noise(st: &Station, from: u64, n: u64) {
    append(
        st,
        (from..from + n)
            .map(|i| inspection_result(1000 + i, 32))
            .collect(),
    )
    .await;
}

async fn timeline_len(api: std::net::SocketAddr) -> usize {
    let (status, body) = http_get(api, &format!("/api/v1/injectors/{UII}")).await;
    if status != 200 {
        return 0;
    }
    let v: Value = serde_json::from_str(&body).unwrap();
    v["timeline"].as_array().map_or(0, Vec::len)
}

async fn bundle_from_api(api: std::net::SocketAddr) -> (Bundle, Vec<u8>) {
    let (status, body) = http_get(api, &format!("/api/v1/injectors/{UII}/evidence")).await;
    assert_eq!(status, 200, "{body}");
    (evidence::parse(body.as_bytes()).unwrap(), body.into_bytes())
}

fn refused(b: &Bundle, trust: &[VerifierKey]) -> Refused {
    match evidence::verify(b, trust) {
        Ok(p) => panic!("a tampered bundle verified: {p}"),
        Err(e) => e,
    }
}

fn tampered(r: Refused, needle: &str) {
    match &r {
        Refused::Tampered(m) if m.contains(needle) => {}
        other => panic!("expected tampering naming {needle:?}, got {other:?}"),
    }
}

/// Exit status of `proofline-agent <args>` run in-process, as the shell would see it.
fn agent(args: &[&str]) -> String {
    let mut a = vec!["proofline-agent"];
    a.extend_from_slice(args);
    format!("{:?}", proofline_agent::commands::main_from(a))
}

fn exit(code: u8) -> String {
    format!("{:?}", std::process::ExitCode::from(code))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_verifies_offline_and_every_tampering_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let agents = ["flow-01", "torque-01"];
    let toml = plant.hub_toml(&agents, None, free_port());
    let hub = Hub::start(&toml).await;
    let mut flow = Station::start(&plant, "flow-01", plant.hub_section(&plant.broker(), 1));
    let mut torque = Station::start(&plant, "torque-01", plant.hub_section(&plant.broker(), 1));

    noise(&flow, 0, 40).await;
    append(&flow, vec![scan(UII), inspection_result(I, 32)]).await;
    noise(&flow, 40, 25).await;
    noise(&torque, 100, 9).await;
    append(&torque, vec![scan(UII), inspection_result(I, 8)]).await;
    flow.wait_cosigned(Duration::from_secs(20)).await;
    torque.wait_cosigned(Duration::from_secs(20)).await;
    assert!(
        until(Duration::from_secs(20), || async {
            timeline_len(hub.api).await >= 4
        })
        .await,
        "the injector's four records never reached its timeline"
    );

    // From the running hub.
    let (early, _) = bundle_from_api(hub.api).await;
    let hub_key = VerifierKey::parse(&plant.cosigner).unwrap();
    let trust = vec![hub_key.clone()];
    let proven = evidence::verify(&early, &trust).unwrap();
    assert_eq!(proven.uii, UII);
    assert_eq!(proven.records(), 4, "{proven}");
    assert_eq!(proven.stations.len(), 2);
    let flow_proven = proven
        .stations
        .iter()
        .find(|s| s.agent_id == "flow-01")
        .unwrap();
    assert_eq!(
        flow_proven
            .records
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        [40, 41]
    );
    assert_eq!(flow_proven.size, 67);
    assert!(!flow_proven.trusted_directly);
    let text = proven.to_string();
    assert!(
        text.contains("result OK") || text.contains("result NOK"),
        "{text}"
    );
    assert!(text.contains("full_load_delivery"), "{text}");

    // A later bundle: the flow station has recorded more since; its checkpoint is larger.
    noise(&flow, 65, 30).await;
    flow.wait_cosigned(Duration::from_secs(20)).await;
    let later = loop {
        let (b, _) = bundle_from_api(hub.api).await;
        let p = evidence::verify(&b, &trust).unwrap();
        if p.stations
            .iter()
            .any(|s| s.agent_id == "flow-01" && s.size == 97)
        {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The CLI asks the running hub's API (its store is locked).
    let cfg_path = dir.path().join("hub.toml");
    std::fs::write(&cfg_path, &toml).unwrap();
    let out_running = dir.path().join("running.json");
    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_proofline-hub"))
        .args(["evidence", "--config"])
        .arg(&cfg_path)
        .args(["--uii", UII, "--out"])
        .arg(&out_running)
        .output()
        .await
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let from_running = evidence::parse(&std::fs::read(&out_running).unwrap()).unwrap();
    assert_eq!(
        evidence::verify(&from_running, &trust).unwrap().records(),
        4
    );

    flow.stop().await;
    torque.stop().await;
    hub.stop().await;

    // From the stopped hub's store, checked by the station program's verifier.
    let out = dir.path().join("bundle.json");
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_proofline-hub"))
        .args(["evidence", "--config"])
        .arg(&cfg_path)
        .args(["--uii", UII, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let trust_file = dir.path().join("trust.txt");
    std::fs::write(
        &trust_file,
        format!("# the hub of plant-1\n{}\n", plant.cosigner),
    )
    .unwrap();
    let (o, t) = (out.to_str().unwrap(), trust_file.to_str().unwrap());
    assert_eq!(agent(&["evidence", "verify", o, "--trust", t]), exit(0));

    // An unknown injector is an error naming it.
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_proofline-hub"))
        .args(["evidence", "--config"])
        .arg(&cfg_path)
        .args(["--uii", "D1ABC5NOSUCHPART", "--out"])
        .arg(dir.path().join("none.json"))
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&cli.stderr).contains("no injector \"D1ABC5NOSUCHPART\""));

    let bundle = evidence::parse(&std::fs::read(&out).unwrap()).unwrap();
    evidence::verify(&bundle, &trust).unwrap();
    let fi = bundle
        .stations
        .iter()
        .position(|s| s.agent_id == "flow-01")
        .unwrap();

    // Station keys in the trust file are used (and must match).
    let flow_key = plant.station_key("flow-01").verifier();
    let p = evidence::verify(&bundle, &[hub_key.clone(), flow_key.clone()]).unwrap();
    assert!(p
        .stations
        .iter()
        .any(|s| s.agent_id == "flow-01" && s.trusted_directly));
    let stranger = NoteSigner::generate("proofline/plant-1/flow-01").unwrap();
    match refused(&bundle, &[hub_key.clone(), stranger.verifier()]) {
        Refused::Untrusted(m) => assert!(m.contains("flow-01"), "{m}"),
        other => panic!("{other:?}"),
    }

    // A changed value in the readable body.
    let mut b = bundle.clone();
    let body = &mut b.stations[fi].records[1].body;
    body["InspectionResult"]["characteristics"][0]["measured"]["Value"]["value"] =
        Value::from(99.0);
    tampered(refused(&b, &trust), "readable body differs");

    // A changed value in the record bytes themselves, with or without a matching leaf.
    let mut b = bundle.clone();
    let r = &mut b.stations[fi].records[1];
    let mut rec = Record::decode(&B64.decode(&r.record).unwrap()).unwrap();
    let Record::V1(v1) = &mut rec;
    let Body::InspectionResult(x) = &mut v1.body else {
        panic!("record 41 is the result")
    };
    x.characteristics[0].measured = proofline_common::record::Measured::Value {
        value: 99.0,
        unit: "mm3/stroke".into(),
    };
    let forged = postcard::to_allocvec(&rec).unwrap();
    r.record = B64.encode(&forged);
    tampered(refused(&b, &trust), "leaf hash does not match");
    let r = &mut b.stations[fi].records[1];
    r.leaf = proofline_common::hash::leaf_hash(&forged);
    r.body = serde_json::to_value(rec.body()).unwrap();
    tampered(refused(&b, &trust), "not in the hub's manifest");

    // A dropped record, and a dropped station.
    let mut b = bundle.clone();
    b.stations[fi].records.remove(0);
    tampered(
        refused(&b, &trust),
        "flow-01 seq 40 is listed in the hub's manifest but missing",
    );
    let mut b = bundle.clone();
    b.stations.remove(fi);
    tampered(refused(&b, &trust), "missing from the bundle");

    // A proof from another checkpoint (the earlier bundle's, size 67, against size 97)...
    let ei = early
        .stations
        .iter()
        .position(|s| s.agent_id == "flow-01")
        .unwrap();
    let mut b = bundle.clone();
    assert_ne!(
        b.stations[fi].records[0].proof,
        early.stations[ei].records[0].proof
    );
    b.stations[fi].records[0].proof = early.stations[ei].records[0].proof.clone();
    tampered(
        refused(&b, &trust),
        "inclusion proof does not lead to the checkpoint",
    );
    // ... and the earlier checkpoint with its own proofs: not the one the manifest names.
    let mut b = bundle.clone();
    b.stations[fi].checkpoint = early.stations[ei].checkpoint.clone();
    b.stations[fi].records = early.stations[ei].records.clone();
    tampered(refused(&b, &trust), "not the one the hub's manifest names");
    // The later bundle from the running hub is as good as the one from the store.
    assert_eq!(evidence::verify(&later, &trust).unwrap().records(), 4);

    // An edited manifest (a record line dropped with its record).
    let mut b = bundle.clone();
    let line = b
        .manifest
        .lines()
        .find(|l| l.starts_with("record proofline/plant-1/flow-01 40 "))
        .unwrap()
        .to_owned();
    b.manifest = b.manifest.replace(&format!("{line}\n"), "");
    b.stations[fi].records.remove(0);
    tampered(
        refused(&b, &trust),
        "signature on the manifest does not verify",
    );

    // A bundle made by another hub key, and a genuine bundle checked with another hub's key.
    let other_hub = NoteSigner::generate(Origin::hub(SITE).unwrap().as_str()).unwrap();
    let mut b = bundle.clone();
    b.hub_key = other_hub.cosignature_verifier().to_string();
    match refused(&b, &trust) {
        Refused::Untrusted(m) => assert!(m.contains("trust file holds"), "{m}"),
        other => panic!("{other:?}"),
    }
    match refused(&bundle, &[other_hub.cosignature_verifier()]) {
        Refused::Untrusted(_) => {}
        other => panic!("{other:?}"),
    }
    let elsewhere = NoteSigner::generate("proofline/plant-2/hub").unwrap();
    match refused(&bundle, &[elsewhere.cosignature_verifier()]) {
        Refused::Untrusted(m) => assert!(m.contains("is not in the trust file"), "{m}"),
        other => panic!("{other:?}"),
    }

    // The station program's verifier exits 3 naming the fault.
    let mut b = bundle.clone();
    b.stations[fi].records.remove(0);
    let bad = dir.path().join("dropped.json");
    std::fs::write(&bad, serde_json::to_vec_pretty(&b).unwrap()).unwrap();
    assert_eq!(
        agent(&["evidence", "verify", bad.to_str().unwrap(), "--trust", t]),
        exit(3)
    );
    std::fs::write(&bad, b"{\"format\": \"something else\"").unwrap();
    assert_eq!(
        agent(&["evidence", "verify", bad.to_str().unwrap(), "--trust", t]),
        exit(3)
    );
}
