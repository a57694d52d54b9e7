//! The station task: the one place where device results, scans and events become ledger
//! records.
//!
//! Sources send [`Input`]s through a bounded channel. The station binds each result to the
//! current part ([`crate::station::binder`]), judges its characteristics, and queues the record with the
//! ledger writer in arrival order. A source that must acknowledge its device gets the committed
//! seq back on a oneshot only once the record is durable; if the ledger fails, it gets an error
//! and must not acknowledge (the bench handshake stalls: visible and safe).
//!
//! A result too large for one ledger record (`MAX_RECORD_BYTES`) could never be stored, and a
//! device that is never acknowledged resends it for ever (Open Protocol) or its result is lost
//! without a trace. Such a result is recorded as a `result.too_large` alarm carrying the SHA-256
//! and length of the device's raw bytes, and the source is answered with the alarm's seq, so it
//! acknowledges the device once that alarm is durable.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use proofline_common::alarm::AlarmCode;
use proofline_common::record::{
    now_micros, Alarm, Binding, Body, Characteristic, DeviceTime, InspectionResult, Measured,
    PartScanned, RawData, ScanOutcome, ScanRole, Severity, StationEvent, TestPlan, Verdict,
    MAX_RECORD_BYTES,
};
use proofline_common::scan::{split_aim, ParsedScan, ScanError};
use proofline_common::store::Entry;
use proofline_common::writer::LedgerHandle;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod binder;
pub mod health;
mod metrics;
pub mod storage;

pub use health::Health;
pub use metrics::Metrics;

use self::binder::{judge, overall, Binder, BinderConfig, Notice};

/// One measured or judged value as a source read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub name: String,
    pub measured: Measured,
    pub nominal: Option<f64>,
    pub lower: Option<f64>,
    pub upper: Option<f64>,
    pub device_verdict: Option<Verdict>,
}

/// A complete result as a device reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceResult {
    pub source: String,
    pub device: String,
    pub device_result_id: Option<String>,
    pub device_identifier: Option<String>,
    pub test_plan: Option<TestPlan>,
    pub measurements: Vec<Measurement>,
    pub device_verdict: Option<Verdict>,
    pub device_time: Option<DeviceTime>,
    pub raw: RawData,
    pub received_at: i64,
}

/// A scanner frame, parsed by the scanner source (part scans) or to be read by role.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    pub source: String,
    pub role: ScanRole,
    /// The bytes as the scanner sent them, terminator removed.
    pub raw: Vec<u8>,
    /// Part scans: what the parser made of them.
    pub parsed: Option<Result<ParsedScan, ScanError>>,
    pub received_at: i64,
}

/// What sources send to the station.
#[derive(Debug)]
pub enum Input {
    /// A scan: recorded (accepted or rejected) before anything after it is bound.
    Scan(Scan),
    /// A result; the reply carries its seq once it is durable.
    Result(DeviceResult, oneshot::Sender<Result<u64, String>>),
    /// An event to record (source up/down, alarms).
    Event(StationEvent),
    /// An event whose sender waits until it is durable (an interlock decision).
    Recorded(StationEvent, oneshot::Sender<Result<u64, String>>),
}

/// Hands an alarm to the station (logged here at WARN; recorded and counted there).
pub async fn alarm(
    station: &mpsc::Sender<Input>,
    source: &str,
    code: AlarmCode,
    severity: Severity,
    message: String,
) {
    tracing::warn!(source = %source, code = code.as_str(), %message, "alarm");
    let _ = station
        .send(Input::Event(StationEvent::Alarm(Alarm {
            source: source.to_owned(),
            code: code.as_str().to_owned(),
            severity,
            message,
        })))
        .await;
}

/// Builds the record body of a result: judges each characteristic, binds it.
pub fn result_body(r: DeviceResult, binding: Binding, operator: Option<String>) -> Body {
    let characteristics: Vec<Characteristic> = r
        .measurements
        .into_iter()
        .map(|m| {
            let verdict = match &m.measured {
                Measured::Value { value, .. } => judge(*value, m.lower, m.upper),
                Measured::Attribute { ok } => {
                    if *ok {
                        Verdict::Ok
                    } else {
                        Verdict::Nok
                    }
                }
            };
            Characteristic {
                name: m.name,
                measured: m.measured,
                nominal: m.nominal,
                lower: m.lower,
                upper: m.upper,
                verdict,
                device_verdict: m.device_verdict,
            }
        })
        .collect();
    let verdict = overall(characteristics.iter().map(|c| c.verdict));
    Body::InspectionResult(InspectionResult {
        source: r.source,
        device: r.device,
        device_result_id: r.device_result_id,
        binding,
        device_identifier: r.device_identifier,
        test_plan: r.test_plan,
        operator,
        characteristics,
        verdict,
        device_verdict: r.device_verdict,
        device_time: r.device_time,
        raw: r.raw,
    })
}

/// The station: the one task that turns inputs into records, in arrival order.
#[derive(Debug)]
pub struct Station {
    pub ledger: LedgerHandle,
    pub inputs: mpsc::Receiver<Input>,
    pub binder: BinderConfig,
    pub metrics: Arc<Metrics>,
    /// The current part's UII, for sources that tell their device (Open Protocol MID 0050).
    pub current_part: watch::Sender<Option<String>>,
    /// True while the disk budget is exhausted: nothing new is taken.
    pub storage_full: watch::Receiver<bool>,
    /// The route interlock, when configured: each accepted part scan is asked about.
    pub interlock: Option<mpsc::Sender<crate::interlock::PartAsk>>,
}

impl Station {
    /// Runs until every source has dropped its sender, or until `shutdown` (then it records
    /// what sources already handed over and stops).
    pub async fn run(self, shutdown: CancellationToken) {
        let Station {
            ledger,
            inputs: mut rx,
            binder: binder_cfg,
            metrics,
            current_part,
            mut storage_full,
            interlock,
        } = self;
        let mut binder = Binder::new(binder_cfg);
        // One waiter per record in flight: it answers the source once the record is durable.
        let waiters = TaskTracker::new();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            // While the disk budget is exhausted nothing new is taken: sources wait with their
            // device unacknowledged.
            while *storage_full.borrow_and_update() && !shutdown.is_cancelled() {
                tokio::select! {
                    r = storage_full.changed() => if r.is_err() { break },
                    () = shutdown.cancelled() => {}
                }
            }
            let input = tokio::select! {
                i = rx.recv() => match i { Some(i) => i, None => break },
                _ = tick.tick() => {
                    if let Some(n) = binder.tick(now_micros()) {
                        record_notice(&ledger, &metrics, &waiters, n).await;
                    }
                    continue;
                }
                () = shutdown.cancelled() => {
                    // Take what sources already handed over, then stop.
                    rx.close();
                    match rx.recv().await { Some(i) => i, None => break }
                }
            };
            match input {
                Input::Scan(scan) => {
                    let ask = handle_scan(&ledger, &metrics, &waiters, &mut binder, scan).await;
                    let uii = binder.current_uii().map(str::to_owned);
                    current_part.send_if_modified(|c| {
                        let changed = *c != uii;
                        *c = uii;
                        changed
                    });
                    if let (Some(tx), Some(ask)) = (&interlock, ask) {
                        if tx.try_send(ask).is_err() {
                            tracing::error!(
                                "route interlock not taking questions: the part stays held"
                            );
                        }
                    }
                }
                Input::Recorded(ev, reply) => {
                    let entries = vec![entry(Body::StationEvent(ev))];
                    append_detached(&ledger, &metrics, &waiters, entries, Some(reply)).await;
                }
                Input::Event(ev) => {
                    if let StationEvent::Alarm(a) = &ev {
                        Metrics::count(&metrics.alarms, &format!("{}|{}", a.source, a.code));
                    }
                    let entries = vec![entry(Body::StationEvent(ev))];
                    append_detached(&ledger, &metrics, &waiters, entries, None).await;
                }
                Input::Result(r, reply) => {
                    handle_result(&ledger, &metrics, &waiters, &mut binder, r, reply).await;
                }
            }
        }
        // Every record handed to the writer is answered before the station is done.
        waiters.close();
        waiters.wait().await;
    }
}

/// Binds a result to the current part and records it (with an alarm when the device tested
/// another part than the one scanned); the source hears back once it is durable.
async fn handle_result(
    ledger: &LedgerHandle,
    metrics: &Arc<Metrics>,
    waiters: &TaskTracker,
    binder: &mut Binder,
    r: DeviceResult,
    reply: oneshot::Sender<Result<u64, String>>,
) {
    let binding = binder.bind(r.device_identifier.as_deref(), r.received_at);
    let source = r.source.clone();
    let mut entries = Vec::with_capacity(2);
    match &binding {
        Binding::Unbound { reason } => {
            metrics.unbound_results.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(source = %source, ?reason, "result recorded without a part");
        }
        Binding::Mismatch {
            uii,
            device_identifier,
            ..
        } => {
            metrics.mismatched_results.fetch_add(1, Ordering::Relaxed);
            Metrics::count(
                &metrics.alarms,
                &format!("{source}|{}", AlarmCode::BindingIdentifierMismatch),
            );
            tracing::error!(source = %source, scanned = %uii, reported = %device_identifier, "device tested another part than the one scanned");
            entries.push(entry(Body::StationEvent(StationEvent::Alarm(Alarm {
                source: source.clone(),
                code: AlarmCode::BindingIdentifierMismatch.as_str().into(),
                severity: Severity::Error,
                message: format!(
                    "scanned {uii}, device reports {device_identifier}; result kept and flagged"
                ),
            }))));
        }
        Binding::Bound { .. } => {}
    }
    let received_at = r.received_at;
    let raw = raw_bytes(&r.raw);
    let (device, result_id) = (r.device.clone(), r.device_result_id.clone());
    let body = result_body(r, binding, binder.operator().map(str::to_owned));
    let size = record_size(ledger, received_at, &body);
    let body = if size > MAX_RECORD_BYTES {
        drop(body);
        Metrics::count(
            &metrics.alarms,
            &format!("{source}|{}", AlarmCode::ResultTooLarge),
        );
        let digest = proofline_common::hash::sha256(&raw).to_hex();
        let shown = |s: &str| s.chars().take(64).collect::<String>();
        tracing::error!(source = %source, record_bytes = size, raw_bytes = raw.len(), sha256 = %digest, "result too large for a record; recorded as an alarm with its hash");
        Body::StationEvent(StationEvent::Alarm(Alarm {
            source: source.clone(),
            code: AlarmCode::ResultTooLarge.as_str().into(),
            severity: Severity::Error,
            message: format!(
                "result {} from {:?} needs a {size}-byte record, over the {MAX_RECORD_BYTES}-byte limit: not recorded as a result; the device's {} bytes have SHA-256 {digest}; acknowledged to the device so it is not sent again",
                shown(result_id.as_deref().unwrap_or("(no id)")),
                shown(&device),
                raw.len()
            ),
        }))
    } else {
        Metrics::count(&metrics.results, &source);
        body
    };
    entries.insert(0, Entry { received_at, body });
    append_detached(ledger, metrics, waiters, entries, Some(reply)).await;
}

/// The device's own bytes of a result (registers high byte first), as hashed in a
/// `result.too_large` alarm.
fn raw_bytes(raw: &RawData) -> Vec<u8> {
    match raw {
        RawData::ModbusRegisters { registers, .. } => {
            registers.iter().flat_map(|r| r.to_be_bytes()).collect()
        }
        RawData::SerialLine(b) | RawData::OpenProtocol(b) | RawData::Other(b) => {
            b.as_slice().to_vec()
        }
    }
}

/// The size `body` takes as a record of this ledger, at most: the seq and boot are taken at
/// their largest encoding, so a body that passes here fits whatever seq it gets.
fn record_size(ledger: &LedgerHandle, received_at: i64, body: &Body) -> usize {
    proofline_common::record::encode_v1(
        ledger.origin().as_str(),
        u64::MAX,
        ledger.boot(),
        received_at,
        &proofline_common::Hash([0xff; 32]),
        body,
    )
    .len()
}

/// An opaque code (badge, trim code): printable, no spaces, at most 64 characters.
fn opaque(raw: &[u8]) -> Result<String, (String, String)> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| ("illegal_char".to_owned(), "not ASCII".to_owned()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(("empty_element".into(), "empty code".into()));
    }
    if text.len() > 64 || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err((
            "illegal_char".into(),
            format!("{text:?} is not a printable code of at most 64 characters"),
        ));
    }
    Ok(text.to_owned())
}

/// Records a scan; for an accepted part scan, what the route interlock asks about it.
async fn handle_scan(
    ledger: &LedgerHandle,
    metrics: &Arc<Metrics>,
    waiters: &TaskTracker,
    binder: &mut Binder,
    scan: Scan,
) -> Option<crate::interlock::PartAsk> {
    let (symbology, _) = split_aim(&scan.raw);
    let mut uii = None;
    let mut part_number = None;
    let mut events = Vec::new();
    let outcome = match scan.role {
        ScanRole::Part => match scan.parsed.clone() {
            Some(Ok(p)) => {
                uii = Some(p.uii.to_string());
                let identity = p.identity();
                part_number = identity
                    .attributes
                    .iter()
                    .find(|a| a.name == "part_number" || a.name == "current_part_number")
                    .map(|a| a.value.clone());
                ScanOutcome::Identified(identity)
            }
            Some(Err(e)) => ScanOutcome::Rejected {
                code: e.code.as_str().to_owned(),
                detail: e.detail,
            },
            None => ScanOutcome::Rejected {
                code: "unknown_format".into(),
                detail: "not parsed".into(),
            },
        },
        ScanRole::TrimCode => match opaque(&scan.raw) {
            Ok(v) => ScanOutcome::Value(v),
            Err((code, detail)) => ScanOutcome::Rejected { code, detail },
        },
        ScanRole::OperatorBadge => match opaque(&scan.raw) {
            Ok(badge) => {
                let (out, logged_in) = binder.badge(&badge);
                if let Some(b) = out {
                    events.push(StationEvent::OperatorLogout {
                        badge: b,
                        reason: if logged_in {
                            "another badge was scanned".into()
                        } else {
                            "badge scanned again".into()
                        },
                    });
                }
                if logged_in {
                    events.push(StationEvent::OperatorLogin {
                        badge: badge.clone(),
                        source: scan.source.clone(),
                    });
                }
                ScanOutcome::Value(badge)
            }
            Err((code, detail)) => ScanOutcome::Rejected { code, detail },
        },
    };
    if let ScanOutcome::Rejected { code, detail } = &outcome {
        Metrics::count(&metrics.rejected_scans, &scan.source);
        tracing::warn!(source = %scan.source, code = %code, %detail, "scan refused (recorded)");
    }
    Metrics::count(&metrics.scans, &scan.source);
    let mut entries = vec![Entry {
        received_at: scan.received_at,
        body: Body::PartScanned(PartScanned {
            source: scan.source.clone(),
            role: scan.role,
            symbology,
            raw: scan.raw.into(),
            outcome,
        }),
    }];
    entries.extend(events.into_iter().map(|e| entry(Body::StationEvent(e))));
    let part_role = scan.role == ScanRole::Part;
    // A part scan is committed before anything after it is bound: its seq is the binding.
    let mut ask = None;
    let notice = match ledger.append(entries).await {
        Ok(a) => {
            metrics.ledger_size.store(a.head.size, Ordering::Relaxed);
            match uii {
                Some(uii) => {
                    ask = Some(crate::interlock::PartAsk {
                        uii: uii.clone(),
                        scan_seq: a.seqs.start,
                        part_number,
                    });
                    binder.part_scanned(&uii, a.seqs.start, scan.received_at)
                }
                // A refused part scan: the operator is at another injector now.
                None if part_role => binder.part_scan_refused(scan.received_at),
                None => None,
            }
        }
        Err(e) => {
            metrics.ledger_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "scan not stored; no part is current, scan it again");
            if part_role {
                binder.part_scan_refused(scan.received_at)
            } else {
                None
            }
        }
    };
    if let Some(n) = notice {
        record_notice(ledger, metrics, waiters, n).await;
    }
    ask
}

fn entry(body: Body) -> Entry {
    Entry {
        received_at: now_micros(),
        body,
    }
}

async fn record_notice(
    ledger: &LedgerHandle,
    metrics: &Arc<Metrics>,
    waiters: &TaskTracker,
    n: Notice,
) {
    let ev = match n {
        Notice::ScanExpired { uii, scan_seq } | Notice::ScannedNotTested { uii, scan_seq } => {
            StationEvent::ScanTimeout { uii, scan_seq }
        }
    };
    append_detached(
        ledger,
        metrics,
        waiters,
        vec![entry(Body::StationEvent(ev))],
        None,
    )
    .await;
}

/// Queues `entries` in order now; answers `reply` with the first seq once durable.
async fn append_detached(
    ledger: &LedgerHandle,
    metrics: &Arc<Metrics>,
    waiters: &TaskTracker,
    entries: Vec<Entry>,
    reply: Option<oneshot::Sender<Result<u64, String>>>,
) {
    let metrics = Arc::clone(metrics);
    match ledger.submit(entries).await {
        Ok(rx) => {
            waiters.spawn(async move {
                let r = match rx.await {
                    Ok(Ok(a)) => {
                        metrics.ledger_size.store(a.head.size, Ordering::Relaxed);
                        Ok(a.seqs.start)
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("ledger writer stopped".to_owned()),
                };
                if let Err(e) = &r {
                    metrics.ledger_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "record not stored; the device is not acknowledged");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            });
        }
        Err(e) => {
            metrics.ledger_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "record not stored; the device is not acknowledged");
            if let Some(reply) = reply {
                let _ = reply.send(Err(e.to_string()));
            }
        }
    }
}
