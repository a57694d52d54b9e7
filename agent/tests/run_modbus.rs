//! The agent run against the simulated flow bench: every result the bench reports complete is
//! recorded once, decoded, judged, with its raw registers, and acknowledged only after that.

mod common;

use std::time::Duration;

use common::{events, http_get, results, wait_metric};

use proofline_common::record::{
    Binding, Body, Measured, RawData, Record, StationEvent, UnboundReason, Verdict,
};
use proofline_tests::benchsim::{BenchOptions, FlowBench};

struct Station {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    agent: common::Running,
    http: std::net::SocketAddr,
}

async fn start_agent(bench: &FlowBench) -> Station {
    start_agent_with(bench, "").await
}

async fn start_agent_with(bench: &FlowBench, extra: &str) -> Station {
    start_agent_at(bench.addr, extra).await
}

/// An agent reading a flow bench at `addr` (the bench itself, or a proxy in front of it).
async fn start_agent_at(addr: std::net::SocketAddr, extra: &str) -> Station {
    let dir = tempfile::tempdir().unwrap();
    let (data, head) = common::station(dir.path(), "flow-bench-01");
    let text = head + &FlowBench::source_toml(addr, 2, 500) + extra;
    let agent = common::start(&text).await;
    Station {
        _dir: dir,
        data,
        http: agent.http,
        agent,
    }
}

async fn wait_acknowledged(bench: &FlowBench, n: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while bench.acknowledged() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} acknowledged",
            bench.acknowledged()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stop(st: Station) -> (std::path::PathBuf, Vec<Record>, tempfile::TempDir) {
    st.agent.stop().await;
    let records = common::records(&st.data);
    (st.data, records, st._dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_exceptions_and_a_hung_device_raise_alarms_and_lose_nothing() {
    let bench = FlowBench::start(BenchOptions {
        results: 30,
        cycle: Duration::from_millis(10),
        ..BenchOptions::default()
    })
    .await
    .unwrap();
    let st = start_agent(&bench).await;
    wait_acknowledged(&bench, 5).await;
    bench.set_exception(Some(tokio_modbus::ExceptionCode::ServerDeviceFailure));
    tokio::time::sleep(Duration::from_millis(300)).await;
    bench.set_exception(None);
    wait_acknowledged(&bench, 12).await;
    // Hung: requests time out (500 ms), the agent reconnects with backoff.
    bench.set_stalled(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    bench.set_stalled(false);
    wait_acknowledged(&bench, 20).await;
    // Reboot in the middle of a result: the same result is presented again.
    bench.reboot();
    wait_acknowledged(&bench, 30).await;
    let (_, records, _dir) = stop(st).await;

    let rs = results(&records);
    let ids: Vec<String> = rs
        .iter()
        .map(|r| r.device_result_id.clone().unwrap())
        .collect();
    let want: Vec<String> = (1..=30).map(|n: u32| n.to_string()).collect();
    assert_eq!(ids, want, "every result once, in order");
    let ev = events(&records);
    assert!(ev.iter().any(|e| matches!(e, StationEvent::Alarm(a) if a.code == "modbus.exception" && a.message.contains("server device failure (exception 04)"))), "{ev:?}");
    assert!(
        ev.iter().any(
            |e| matches!(e, StationEvent::AlarmCleared { code, .. } if code == "modbus.exception")
        ),
        "{ev:?}"
    );
    assert!(ev.iter().any(|e| matches!(e, StationEvent::SourceDown { error, .. } if error.contains("no reply within 500 ms"))), "{ev:?}");
    let ups = ev
        .iter()
        .filter(|e| matches!(e, StationEvent::SourceUp { .. }))
        .count();
    assert!(ups >= 2, "reconnected after the hang: {ev:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bench_result_is_recorded_once_decoded_and_judged_before_it_is_acknowledged() {
    let bench = FlowBench::start(BenchOptions {
        results: 25,
        ..BenchOptions::default()
    })
    .await
    .unwrap();
    let st = start_agent(&bench).await;
    wait_acknowledged(&bench, 25).await;
    let running_http = st.http;
    let health = http_get(running_http, "/healthz").await;
    assert!(
        health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"),
        "{health}"
    );
    let metrics = http_get(running_http, "/metrics").await;
    assert!(
        metrics.contains("proofline_agent_results_total{source=\"flow-bench\"} 25"),
        "{metrics}"
    );
    assert!(
        metrics.contains("proofline_agent_source_up{source=\"flow-bench\"} 1"),
        "{metrics}"
    );

    let (_, records, _dir) = stop(st).await;
    assert!(matches!(
        records.first().unwrap().body(),
        Body::StationEvent(StationEvent::Started { .. })
    ));
    assert!(matches!(
        records.last().unwrap().body(),
        Body::StationEvent(StationEvent::Stopped { .. })
    ));
    let results = results(&records);
    let produced = bench.produced();
    assert_eq!(results.len(), 25, "each result exactly once");
    for (r, p) in results.iter().zip(&produced) {
        assert_eq!(
            r.device_result_id.as_deref(),
            Some(p.counter.to_string().as_str())
        );
        assert_eq!(r.device_identifier.as_deref(), Some(p.uii.as_str()));
        assert_eq!(
            r.test_plan
                .as_ref()
                .map(|t| (t.id.as_str(), t.revision.as_str())),
            Some(("TP-0445", "C"))
        );
        assert_eq!(
            r.binding,
            Binding::Unbound {
                reason: UnboundReason::NoCurrentPart
            }
        );
        match &r.raw {
            RawData::ModbusRegisters {
                registers,
                address,
                function,
                unit,
            } => {
                assert_eq!((*address, *function, *unit), (100, 3, 1));
                assert_eq!(registers, &p.block, "raw registers of result {}", p.counter);
            }
            other => panic!("raw {other:?}"),
        }
        let value = |name: &str| match &r
            .characteristics
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .measured
        {
            Measured::Value { value, .. } => *value,
            other => panic!("{other:?}"),
        };
        assert_eq!(value("full_load_delivery"), f64::from(p.full_load));
        assert_eq!(value("back_leak"), f64::from(p.back_leak));
        assert!((value("fluid_temperature") - f64::from(p.temperature_tenths) / 10.0).abs() < 1e-9);
        let full_load = r
            .characteristics
            .iter()
            .find(|c| c.name == "full_load_delivery")
            .unwrap();
        let want = if p.counter % 7 == 0 {
            Verdict::Nok
        } else {
            Verdict::Ok
        };
        assert_eq!(full_load.verdict, want, "result {}", p.counter);
        assert_eq!(r.verdict, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_shows_each_point_in_all_four_word_orders_beside_the_raw_registers() {
    let bench = FlowBench::start(BenchOptions {
        results: 1,
        ..BenchOptions::default()
    })
    .await
    .unwrap();
    while bench.produced().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    let (_, head) = common::station(dir.path(), "flow-bench-01");
    std::fs::write(&cfg, head + &FlowBench::source_toml(bench.addr, 2, 500)).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_proofline-agent"))
        .args([
            "probe",
            "--config",
            cfg.to_str().unwrap(),
            "--source",
            "flow-bench",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = &bench.produced()[0];
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("full_load_delivery"))
        .unwrap();
    assert!(
        line.contains(&format!("ABCD*={}", f64::from(p.full_load))),
        "{line}"
    );
    for o in ["CDAB=", "BADC=", "DCBA="] {
        assert!(line.contains(o), "{line}");
    }
    assert!(
        line.contains(&format!("[{:04x} {:04x}]", p.block[0], p.block[1])),
        "{line}"
    );
    assert!(stdout.contains("  100: "), "{stdout}");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_proofline-agent"))
        .args([
            "probe",
            "--config",
            cfg.to_str().unwrap(),
            "--source",
            "nope",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sources: flow-bench"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanned_parts_bind_their_results_and_bad_or_repeated_scans_are_handled() {
    use tokio::io::AsyncWriteExt as _;
    use tokio_serial::SerialPort as _;
    let bench = FlowBench::start(BenchOptions {
        results: 0,
        nok_every: 0,
        ..BenchOptions::default()
    })
    .await
    .unwrap();
    let (mut scanner, slave) = tokio_serial::SerialStream::pair().unwrap();
    let port = slave.name().unwrap();
    drop(slave);
    let extra = format!(
        "\n[[source]]\nname = \"scanner\"\ntype = \"scanner\"\nport = \"{port}\"\nrequire_aim = true\nsuffix = \"cr\"\ndebounce_ms = 1000\n"
    );
    let st = start_agent_with(&bench, &extra).await;
    wait_metric(st.http, "proofline_agent_source_up{source=\"scanner\"} 1").await;
    let frame = |uii_serial: u32| {
        format!("]d1[)>\u{1e}06\u{1d}17V1ABC5\u{1d}1P7734-0012\u{1d}S{uii_serial:06}\u{1e}\u{4}\r")
    };
    let damaged = b"]d1[)>0617V1ABC51P7734-0012S000123\r";
    let mut scans = 0;
    for n in 1..=6u32 {
        if n == 2 {
            // A keyboard-wedge-damaged first try, refused; the second try reads.
            scanner.write_all(damaged).await.unwrap();
            scans += 1;
        }
        // Part 3 is scanned as another injector than the one the bench tests.
        let serial = if n == 3 { 900 } else { n };
        scanner.write_all(frame(serial).as_bytes()).await.unwrap();
        scans += 1;
        if n == 2 {
            // Presentation-mode repeat: one read.
            scanner.write_all(frame(serial).as_bytes()).await.unwrap();
        }
        if n == 6 {
            // Part 6 scanned, then a refused scan (the operator moved on to another injector,
            // unreadable): the result that follows belongs to no scanned part, not to part 6.
            scanner.write_all(damaged).await.unwrap();
            scans += 1;
        }
        wait_metric(
            st.http,
            &format!("proofline_agent_scans_total{{source=\"scanner\"}} {scans}"),
        )
        .await;
        bench.allow(n);
        wait_acknowledged(&bench, n).await;
    }
    let m = http_get(st.http, "/metrics").await;
    assert!(
        m.contains("proofline_agent_double_reads_total{source=\"scanner\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("proofline_agent_rejected_scans_total{source=\"scanner\"} 2"),
        "{m}"
    );
    let (_, records, _dir) = stop(st).await;

    let mut rejected = 0;
    let mut scan_seqs = std::collections::HashMap::new();
    for (seq, r) in records.iter().enumerate() {
        if let Body::PartScanned(p) = r.body() {
            match &p.outcome {
                proofline_common::record::ScanOutcome::Identified(id) => {
                    scan_seqs.insert(id.uii.clone(), seq as u64);
                    assert_eq!(p.symbology.as_deref(), Some("]d1"));
                }
                proofline_common::record::ScanOutcome::Rejected { code, .. } => {
                    assert_eq!(code, "missing_separators");
                    rejected += 1;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(
        (scan_seqs.len(), rejected),
        (6, 2),
        "the repeat within the window is not a second scan"
    );
    let rs = results(&records);
    assert_eq!(rs.len(), 6);
    for (i, r) in rs.iter().enumerate() {
        let n = i as u32 + 1;
        let tested = format!("D1ABC57734-0012{n:06}");
        if n == 6 {
            assert_eq!(
                r.binding,
                Binding::Unbound {
                    reason: proofline_common::record::UnboundReason::NoCurrentPart
                }
            );
        } else if n == 3 {
            let scanned = "D1ABC57734-0012000900".to_owned();
            assert_eq!(
                r.binding,
                Binding::Mismatch {
                    uii: scanned.clone(),
                    scan_seq: scan_seqs[&scanned],
                    device_identifier: tested
                }
            );
        } else {
            assert_eq!(
                r.binding,
                Binding::Bound {
                    uii: tested.clone(),
                    scan_seq: scan_seqs[&tested]
                }
            );
        }
    }
    assert!(events(&records)
        .iter()
        .any(|e| matches!(e, StationEvent::Alarm(a) if a.code == "binding.identifier_mismatch")));
    assert!(events(&records).iter().any(
        |e| matches!(e, StationEvent::ScanTimeout { uii, .. } if uii == "D1ABC57734-0012000006")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_replies_reconnect_and_lose_nothing() {
    let bench = FlowBench::start(BenchOptions {
        results: 20,
        cycle: Duration::from_millis(10),
        ..BenchOptions::default()
    })
    .await
    .unwrap();
    let proxy = proofline_tests::proxy::FaultProxy::start(bench.addr)
        .await
        .unwrap();
    let st = start_agent_at(proxy.addr, "").await;
    wait_acknowledged(&bench, 5).await;
    proxy.garbage_next();
    wait_acknowledged(&bench, 10).await;
    proxy.truncate_next();
    wait_acknowledged(&bench, 20).await;
    let (_, records, _dir) = stop(st).await;
    let ids: Vec<String> = results(&records)
        .iter()
        .map(|r| r.device_result_id.clone().unwrap())
        .collect();
    assert_eq!(
        ids,
        (1..=20).map(|n: u32| n.to_string()).collect::<Vec<_>>()
    );
    let downs = events(&records)
        .iter()
        .filter(|e| matches!(e, StationEvent::SourceDown { .. }))
        .count();
    assert!(downs >= 2, "each damaged reply dropped the link: {downs}");
}

/// An agent reading a bench whose result block has `block_registers` registers.
async fn start_agent_long(bench: &FlowBench, block_registers: usize) -> Station {
    let dir = tempfile::tempdir().unwrap();
    let (data, head) = common::station(dir.path(), "flow-bench-01");
    let text = head + &FlowBench::source_toml_for_block(bench.addr, 2, 500, block_registers);
    let agent = common::start(&text).await;
    Station {
        _dir: dir,
        data,
        http: agent.http,
        agent,
    }
}

fn raw_registers(r: &proofline_common::record::InspectionResult) -> &[u16] {
    match &r.raw {
        RawData::ModbusRegisters { registers, .. } => registers,
        other => panic!("raw {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_over_125_registers_is_read_in_several_requests_and_decoded_whole() {
    const LEN: usize = 300;
    let bench = FlowBench::start(BenchOptions {
        results: 12,
        block_registers: LEN,
        ..BenchOptions::default()
    })
    .await
    .unwrap();
    let st = start_agent_long(&bench, LEN).await;
    wait_acknowledged(&bench, 12).await;
    let (_, records, _dir) = stop(st).await;

    let rs = results(&records);
    let produced = bench.produced();
    assert_eq!(rs.len(), 12, "each result exactly once");
    for (r, p) in rs.iter().zip(&produced) {
        // The result id comes from the block's last registers, the deliveries from its first.
        assert_eq!(
            r.device_result_id.as_deref(),
            Some(p.counter.to_string().as_str())
        );
        assert_eq!(r.device_identifier.as_deref(), Some(p.uii.as_str()));
        assert_eq!(raw_registers(r).len(), LEN);
        assert_eq!(raw_registers(r), &p.block[..], "result {}", p.counter);
        let value = |name: &str| match &r
            .characteristics
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .measured
        {
            Measured::Value { value, .. } => *value,
            other => panic!("{other:?}"),
        };
        assert_eq!(value("full_load_delivery"), f64::from(p.full_load));
        let trace_end = f64::from(p.block[LEN - 4]) * 0.01;
        assert!((value("trace_end") - trace_end).abs() < 1e-9, "{trace_end}");
    }
    assert!(!events(&records)
        .iter()
        .any(|e| matches!(e, StationEvent::Alarm(a) if a.code == "modbus.torn_read")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_rewritten_between_its_requests_is_never_recorded_half_old_half_new() {
    use proofline_tests::benchsim::REVISION;
    const LEN: usize = 200;
    let bench = FlowBench::start(BenchOptions {
        results: 0,
        block_registers: LEN,
        ..BenchOptions::default()
    })
    .await
    .unwrap();
    let st = start_agent_long(&bench, LEN).await;
    bench.allow(2);
    wait_acknowledged(&bench, 2).await;

    // Rewritten once, after the first request: the guard sees it and reads the block again.
    bench.tear_reads(1);
    bench.allow(3);
    wait_acknowledged(&bench, 3).await;
    assert_eq!(bench.tears(), 1);

    // Rewritten during every read: one alarm, nothing recorded, nothing acknowledged, and the
    // agent keeps trying at each poll.
    bench.tear_reads(u32::MAX);
    bench.allow(4);
    let alarm_line =
        "proofline_agent_alarms_total{source=\"flow-bench\",code=\"modbus.torn_read\"} 1";
    wait_metric(st.http, alarm_line).await;
    let tears = bench.tears();
    common::until("more reads of the presented block", || {
        bench.tears() > tears + 4
    })
    .await;
    assert_eq!(bench.acknowledged(), 3);
    // The bench keeps its block still again: the result is read whole and recorded once.
    bench.tear_reads(0);
    wait_acknowledged(&bench, 4).await;
    bench.allow(6);
    wait_acknowledged(&bench, 6).await;
    let m = http_get(st.http, "/metrics").await;
    assert!(m.lines().any(|l| l == alarm_line), "one alarm: {m}");
    let (_, records, _dir) = stop(st).await;

    let rs = results(&records);
    let ids: Vec<String> = rs
        .iter()
        .map(|r| r.device_result_id.clone().unwrap())
        .collect();
    assert_eq!(
        ids,
        (1..=6).map(|n: u32| n.to_string()).collect::<Vec<_>>(),
        "every result once"
    );
    let produced = bench.produced();
    for (r, p) in rs.iter().zip(&produced) {
        let raw = raw_registers(r);
        assert_eq!(
            raw[REVISION],
            raw[LEN - 3],
            "result {}: start and end of the block from different revisions",
            p.counter
        );
        assert_eq!(raw, &p.block[..], "result {}", p.counter);
    }
    assert_eq!(raw_registers(&rs[2])[REVISION], 1, "result 3 as rewritten");
    assert!(
        raw_registers(&rs[3])[REVISION] > 1,
        "result 4 as last rewritten"
    );
    let ev = events(&records);
    let torn: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            StationEvent::Alarm(a) if a.code == "modbus.torn_read" => Some(a.message.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(torn.len(), 1, "{torn:?}");
    assert!(
        torn[0].contains("changed while it was read in 2 requests, 4 times in a row"),
        "{torn:?}"
    );
    assert!(
        ev.iter().any(
            |e| matches!(e, StationEvent::AlarmCleared { code, .. } if code == "modbus.torn_read")
        ),
        "{ev:?}"
    );
}
