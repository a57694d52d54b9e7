//! Forwarding figures (DESIGN §9), printed, never asserted, all against one hub with its
//! embedded rumqttd broker on loopback, in one run:
//!
//! 1. Backlog drain: a station ledger filled with `RECORDS` records of about `RECORD_BYTES`
//!    (large appends, before its forwarder starts) is forwarded until the hub has cosigned all
//!    of it; records/s from the forwarder's start.
//! 2. Raw broker QoS 1: a plain rumqttc client publishes the same record bytes, one per message,
//!    to a topic with one QoS 1 subscriber; messages/s until the subscriber has them all. The
//!    drain figure is then printed as a share of it (budget: ≥ 25 %).
//! 3. Latency: a second station appends one record at a time at `LATENCY_RATE` records/s; for
//!    each record, the time from its durable append returning to the forwarder's cosigned size
//!    covering it; p50, p99, max (budget: p99 ≤ 50 ms).
//!
//! Beside them, for reading the latency: the round trip of one record-sized QoS 1 message
//! through the broker to an echoing client and back, one at a time (two broker hops, as between
//! an append and its cosignature).
//!
//! The stations forward with the shipped `[hub]` defaults (batch size, batches in flight).
//! Environment: `PROOFLINE_BENCH_LATENCY_SECS` sets the latency window (default 20 s);
//! `PROOFLINE_BENCH_BATCH_BYTES` and `PROOFLINE_BENCH_INFLIGHT` override `batch_max_bytes` and
//! `max_inflight_batches`, for tuning.
//!
//! Run with `cargo bench -p proofline-hub --bench forwarding`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use proofline_agent::forward::{ForwardPlan, HubSection};
use proofline_agent::station::Metrics;
use proofline_common::mqtt::MqttSection;
use proofline_common::record::now_micros;
use proofline_common::store::{Access, Entry, Store, StoreOptions};
use proofline_common::synth::{inspection_result, pad_for};
use proofline_common::writer::{spawn_writer, WriterConfig};
use proofline_common::Origin;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio_util::sync::CancellationToken;

const RECORDS: u64 = 100_000;
const RECORD_BYTES: usize = 512;
/// Records per durable append while filling the backlog (the writer's largest group).
const FILL_APPEND: u64 = 4096;
/// The drain is given up on after this long, so a stalled forwarder still ends the run.
const DRAIN_WITHIN: Duration = Duration::from_secs(120);
const LATENCY_RATE: u64 = 100;
const RAW_TOPIC: &str = "bench/raw";
const RAW_RUNS: usize = 3;
/// Round trips through the broker alone, the floor under the append-to-cosigned latency.
const ROUND_TRIPS: usize = 100;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let latency_secs = env("PROOFLINE_BENCH_LATENCY_SECS").unwrap_or(20);
    rt.block_on(run(latency_secs));
}

async fn run(latency_secs: u64) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant::new(dir.path());
    let hub = Hub::start(&plant.hub_toml(&["drain-01", "steady-01"], None, 0)).await;
    let section = hub_section(&plant);
    println!(
        "forwarding: embedded rumqttd on {}, batch_max_bytes {}, max_inflight_batches {}",
        plant.broker(),
        section.batch_max_bytes,
        section.max_inflight_batches
    );

    // 1. Backlog drain.
    let fill_start = Instant::now();
    let (mut drain, forwarder_start) = filled_station(&plant, "drain-01", section.clone()).await;
    let fill = fill_start.elapsed();
    let bytes: u64 = drain
        .ledger
        .reader()
        .range(0..RECORDS)
        .map(|r| r.unwrap().1.len() as u64)
        .sum();
    println!(
        "  backlog: {RECORDS} records, {:.0} B average, filled in {:.2} s",
        bytes as f64 / RECORDS as f64,
        fill.as_secs_f64()
    );
    let drained = tokio::time::timeout(DRAIN_WITHIN, drain.cosigned.wait_for(|s| *s >= RECORDS))
        .await
        .is_ok();
    let drain_time = forwarder_start.elapsed();
    let cosigned = *drain.cosigned.borrow();
    let drain_rate = cosigned as f64 / drain_time.as_secs_f64();
    println!(
        "  backlog drain: {cosigned} records cosigned in {:.2} s: {drain_rate:.0} records/s ({:.1} MB/s){}",
        drain_time.as_secs_f64(),
        drain_rate * bytes as f64 / RECORDS as f64 / 1e6,
        if drained { "" } else { " — NOT DRAINED, gave up waiting" }
    );
    println!(
        "  hub size for drain-01 (API): {}",
        hub_size(hub.api, "drain-01").await
    );
    let (_, metrics) = http_get(hub.api, "/metrics").await;
    for line in metrics.lines().filter(|l| {
        l.starts_with("proofline_hub_batches")
            || l.starts_with("proofline_hub_duplicate")
            || l.starts_with("proofline_hub_resend")
    }) {
        println!("    {line}");
    }
    println!(
        "    station forward_resends {}",
        drain
            .metrics
            .forward_resends
            .load(std::sync::atomic::Ordering::Relaxed)
    );

    // 2. Raw broker QoS 1 throughput, with the same bytes.
    let payloads: Vec<Vec<u8>> = drain
        .ledger
        .reader()
        .range(0..RECORDS)
        .map(|r| r.unwrap().1)
        .collect();
    drain.stop().await;
    let rtt = raw_round_trips(&plant.broker(), payloads[0].clone()).await;
    // The median of a few runs: one run is short and the machine's other load shows in it.
    let mut raws = Vec::new();
    for run in 0..RAW_RUNS {
        raws.push(raw_qos1(&plant.broker(), run, payloads.clone()).await);
    }
    raws.sort_by(f64::total_cmp);
    let raw_rate = raws[raws.len() / 2];
    println!(
        "  raw broker QoS 1: {RECORDS} messages of ~{RECORD_BYTES} B to one subscriber: {raw_rate:.0} messages/s (median of {RAW_RUNS}: {})",
        raws.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ")
    );
    println!(
        "  drain / raw: {:.1} % (budget ≥ 25 %)",
        100.0 * drain_rate / raw_rate
    );

    // 3. Latency from durable append to cosigned, at a steady rate.
    let lat = steady_latency(&plant, section, latency_secs).await;
    println!(
        "  latency append → cosigned at {LATENCY_RATE} records/s for {latency_secs} s ({} records, {} never cosigned): p50 {}, p99 {}, max {} (budget p99 ≤ 50 ms)",
        lat.len(),
        lat.iter().filter(|l| l.is_none()).count(),
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
        ms(percentile(&lat, 1.0))
    );
    println!(
        "  raw broker QoS 1 round trip (ping → echo → pong, one at a time, {ROUND_TRIPS}): p50 {}, p99 {}, max {}",
        ms(percentile(&rtt, 0.50)),
        ms(percentile(&rtt, 0.99)),
        ms(percentile(&rtt, 1.0))
    );
    let (_, metrics) = http_get(hub.api, "/metrics").await;
    for line in metrics.lines().filter(|l| {
        (l.starts_with("proofline_hub_resend") || l.starts_with("proofline_hub_alerts_total{"))
            && !l.ends_with(" 0")
    }) {
        println!("    {line}");
    }

    hub.stop().await;
    println!(
        "forwarding: whole run {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}: cannot parse {v:?}")),
    )
}

/// The stations' `[hub]` section: the shipped defaults unless overridden for tuning.
fn hub_section(plant: &Plant) -> HubSection {
    let mut h: HubSection = toml::from_str(&format!(
        "cosigner_key = \"{}\"\n[mqtt]\nbroker = \"{}\"\nreconnect_max_ms = 1000\n",
        plant.cosigner,
        plant.broker()
    ))
    .unwrap();
    if let Some(b) = env("PROOFLINE_BENCH_BATCH_BYTES") {
        h.batch_max_bytes = b;
    }
    if let Some(n) = env("PROOFLINE_BENCH_INFLIGHT") {
        h.max_inflight_batches = n;
    }
    h
}

/// A station whose ledger holds `RECORDS` records before its forwarder starts; returns it and
/// the forwarder's start.
async fn filled_station(plant: &Plant, agent_id: &str, hub: HubSection) -> (Station, Instant) {
    let signer = plant.station_key(agent_id);
    let data = plant.dir.join(agent_id);
    std::fs::create_dir_all(&data).unwrap();
    let origin = Origin::parse(&format!("proofline/{SITE}/{agent_id}")).unwrap();
    let (store, _) = Store::open(&data, Access::Write(origin), &StoreOptions::default()).unwrap();
    let (ledger, writer) = spawn_writer(store, WriterConfig::default()).unwrap();
    let pad = pad_for(RECORD_BYTES);
    let mut i = 0;
    while i < RECORDS {
        let k = FILL_APPEND.min(RECORDS - i);
        let entries = (i..i + k)
            .map(|seq| Entry {
                received_at: now_micros(),
                body: inspection_result(seq, pad),
            })
            .collect();
        ledger.append(entries).await.unwrap();
        i += k;
    }
    let plan = ForwardPlan::new(&hub, signer, SITE, agent_id).unwrap();
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = tokio::sync::watch::channel(0);
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    let task = tokio::spawn(proofline_agent::forward::run(
        plan,
        ledger.clone(),
        None,
        Arc::clone(&metrics),
        tx,
        tokio::sync::watch::channel(None).1,
        shutdown.clone(),
    ));
    let station = Station {
        agent_id: agent_id.into(),
        ledger,
        writer: Some(writer),
        cosigned: rx,
        metrics,
        shutdown,
        task,
        data,
    };
    (station, start)
}

/// Messages/s from the first publish until one QoS 1 subscriber has received every payload.
async fn raw_qos1(broker: &str, run: usize, payloads: Vec<Vec<u8>>) -> f64 {
    let n = payloads.len();
    let mqtt = MqttSection::plain(broker);

    let (sub, mut sub_events) = AsyncClient::new(
        mqtt.options(&format!("bench-raw-subscriber-{run}"))
            .unwrap(),
        1024,
    );
    proofline_common::mqtt::tune(&mut sub_events);
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let receiver = tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        let mut got = 0usize;
        while got < n {
            match sub_events.poll().await.unwrap() {
                Event::Incoming(Packet::ConnAck(_)) => {
                    sub.subscribe(RAW_TOPIC, QoS::AtLeastOnce).await.unwrap()
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) if p.topic == RAW_TOPIC => got += 1,
                _ => {}
            }
        }
        let done = Instant::now();
        // Let the last acknowledgements go out.
        let _ = sub.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            while sub_events.poll().await.is_ok() {}
        })
        .await;
        done
    });
    subscribed.await.unwrap();

    let (publisher, mut pub_events) = AsyncClient::new(
        mqtt.options(&format!("bench-raw-publisher-{run}")).unwrap(),
        1024,
    );
    proofline_common::mqtt::tune(&mut pub_events);
    let pub_loop = tokio::spawn(async move {
        while let Ok(ev) = pub_events.poll().await {
            if let Event::Incoming(Packet::Disconnect) = ev {
                break;
            }
        }
    });
    let start = Instant::now();
    for p in payloads {
        publisher
            .publish(RAW_TOPIC, QoS::AtLeastOnce, false, p)
            .await
            .unwrap();
    }
    let done = tokio::time::timeout(Duration::from_secs(120), receiver)
        .await
        .expect("the raw subscriber did not receive every message in time")
        .unwrap();
    let _ = publisher.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), pub_loop).await;
    n as f64 / (done - start).as_secs_f64()
}

/// Round trips (sorted) of one record-sized QoS 1 message to an echoing client and back, one
/// at a time: two broker hops, as between a durable append and its cosignature.
async fn raw_round_trips(broker: &str, payload: Vec<u8>) -> Vec<Option<Duration>> {
    let mqtt = MqttSection::plain(broker);
    let (echo, mut echo_events) = AsyncClient::new(mqtt.options("bench-echo").unwrap(), 16);
    proofline_common::mqtt::tune(&mut echo_events);
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let echo_task = tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        while let Ok(ev) = echo_events.poll().await {
            match ev {
                Event::Incoming(Packet::ConnAck(_)) => echo
                    .subscribe("bench/ping", QoS::AtLeastOnce)
                    .await
                    .unwrap(),
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => echo
                    .publish("bench/pong", QoS::AtLeastOnce, false, p.payload.to_vec())
                    .await
                    .unwrap(),
                _ => {}
            }
        }
    });
    ready.await.unwrap();
    let (pinger, mut ping_events) = AsyncClient::new(mqtt.options("bench-pinger").unwrap(), 16);
    proofline_common::mqtt::tune(&mut ping_events);
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let (pong_tx, mut pong) = tokio::sync::mpsc::unbounded_channel();
    let ping_task = tokio::spawn({
        let pinger = pinger.clone();
        async move {
            let mut ready_tx = Some(ready_tx);
            while let Ok(ev) = ping_events.poll().await {
                match ev {
                    Event::Incoming(Packet::ConnAck(_)) => pinger
                        .subscribe("bench/pong", QoS::AtLeastOnce)
                        .await
                        .unwrap(),
                    Event::Incoming(Packet::SubAck(_)) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Event::Incoming(Packet::Publish(_)) => {
                        let _ = pong_tx.send(Instant::now());
                    }
                    _ => {}
                }
            }
        }
    });
    ready.await.unwrap();
    let mut rtt = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let sent = Instant::now();
        pinger
            .publish("bench/ping", QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), pong.recv()).await;
        rtt.push(got.ok().flatten().map(|t| t - sent));
    }
    ping_task.abort();
    echo_task.abort();
    rtt.sort_by_key(|l| l.unwrap_or(Duration::MAX));
    rtt
}

/// Latencies (sorted) from each durable append returning to the cosigned size covering it.
/// `None`: not cosigned within 10 s after the last append.
async fn steady_latency(plant: &Plant, hub: HubSection, secs: u64) -> Vec<Option<Duration>> {
    let mut station = Station::start(plant, "steady-01", hub);
    // Cosigned sizes as the forwarder publishes them, with the time they were seen.
    let mut cosigned = station.cosigned.clone();
    let seen = tokio::spawn(async move {
        let mut seen = Vec::new();
        while cosigned.changed().await.is_ok() {
            let size = *cosigned.borrow_and_update();
            seen.push((size, Instant::now()));
        }
        seen
    });
    let pad = pad_for(RECORD_BYTES);
    let total = LATENCY_RATE * secs;
    let mut appended = Vec::with_capacity(total as usize);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / LATENCY_RATE as u32);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..total {
        tick.tick().await;
        let a = station
            .ledger
            .append(vec![Entry {
                received_at: now_micros(),
                body: inspection_result(i, pad),
            }])
            .await
            .unwrap();
        appended.push((a.seqs.start, Instant::now()));
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        station.cosigned.wait_for(|s| *s >= total),
    )
    .await;
    station.stop().await;
    let seen = seen.await.unwrap();
    let mut lat: Vec<Option<Duration>> = appended
        .iter()
        .map(|&(seq, at)| {
            let (_, when) = seen.iter().find(|(size, _)| *size > seq)?;
            // A cosignature seen before the append's reply was: zero.
            Some(when.saturating_duration_since(at))
        })
        .collect();
    // Records never cosigned sort last, as the longest.
    lat.sort_by_key(|l| l.unwrap_or(Duration::MAX));
    lat
}

fn percentile(sorted: &[Option<Duration>], p: f64) -> Option<Duration> {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1e3),
        None => "never".into(),
    }
}
