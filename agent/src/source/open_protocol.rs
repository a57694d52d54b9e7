//! Torque controllers on Open Protocol (TCP, usually port 4545).
//!
//! One task owns the connection: communication start (MID 0001 → 0002, or 0004 with an error
//! code), result subscription (MID 0060 → 0005), then each tightening result (MID 0061) is
//! decoded, de-duplicated on (controller, tightening id), checked for gaps in the tightening
//! ids, handed to the station, and acknowledged with MID 0062 **only once it is durable**.
//! Keep-alives (MID 9999) go out every `keep_alive_secs`; a link silent for three keep-alive
//! periods is dropped and rebuilt with backoff. When a part is scanned its UII is downloaded to
//! the controller (MID 0050) so every result carries it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proofline_common::alarm::AlarmCode;
use proofline_common::backoff::Backoff;
use proofline_common::record::{
    now_micros, DeviceTime, Measured, RawData, Severity, StationEvent, TestPlan, Verdict,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::OpenProtocol;
use crate::station::{alarm, DeviceResult, Input, Measurement, Metrics};
use proofline_common::open_protocol::{mid, Frame, FrameReader, Tightening};

/// The tightening ids recorded per (source, controller): from the ledger at start, then kept up
/// to date. De-duplication is on (controller, tightening id), as Open Protocol defines it.
pub type LastTightening = HashMap<(String, String), Recorded>;

/// Tightening ids recorded from one controller since its counter last started over.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// The highest id recorded.
    pub max: u64,
    /// The most recent ids (at most [`Recorded::KEEP`]): a result resent after a reconnect, a
    /// restart or from the controller's offline buffer is one of these.
    recent: std::collections::BTreeSet<u64>,
}

impl Recorded {
    const KEEP: usize = 1024;

    pub fn contains(&self, id: u64) -> bool {
        self.recent.contains(&id)
    }

    /// Notes `id` as recorded. An id below the highest that is not a known one means the
    /// controller's counter started over (reset, replaced): the ids before it are another run.
    pub fn insert(&mut self, id: u64) {
        if id < self.max {
            self.recent.clear();
        }
        self.max = id;
        self.recent.insert(id);
        while self.recent.len() > Self::KEEP {
            self.recent.pop_first();
        }
    }
}

/// Notes the tightening in a recorded result's raw MID 0061 frame (bytes as stored, without the
/// NUL terminator) as recorded from `source`.
pub fn remember(recorded: &mut LastTightening, source: &str, raw: &[u8]) {
    let mut fr = FrameReader::new();
    fr.push(raw);
    fr.push(&[0]);
    if let Some(Ok(frame)) = fr.next_frame() {
        if let Ok(t) = Tightening::decode(&frame) {
            recorded
                .entry((source.to_owned(), t.controller))
                .or_default()
                .insert(t.tightening_id);
        }
    }
}

enum LinkEnd {
    Stopped,
    Failed(String),
}

fn status_verdict(s: u8) -> Verdict {
    if s == 1 {
        Verdict::Ok
    } else {
        Verdict::Nok
    }
}

/// A tightening as the station's result.
pub fn to_result(cfg: &OpPlan, t: &Tightening, raw: &[u8], received_at: i64) -> DeviceResult {
    DeviceResult {
        source: cfg.name.clone(),
        device: match &t.tool_serial {
            Some(serial) if !serial.is_empty() => format!("{} tool {serial}", t.controller),
            _ => t.controller.clone(),
        },
        device_result_id: Some(t.tightening_id.to_string()),
        device_identifier: Some(t.identifier.clone()).filter(|s| !s.is_empty()),
        test_plan: Some(TestPlan {
            id: format!("pset {}", t.pset),
            revision: format!("job {}", t.job_id),
        }),
        measurements: vec![
            Measurement {
                name: cfg.torque_characteristic.clone(),
                measured: Measured::Value {
                    value: t.torque,
                    unit: "N.m".into(),
                },
                nominal: Some(t.torque_target),
                lower: Some(t.torque_min),
                upper: Some(t.torque_max),
                device_verdict: Some(status_verdict(t.torque_status)),
            },
            Measurement {
                name: cfg.angle_characteristic.clone(),
                measured: Measured::Value {
                    value: t.angle,
                    unit: "deg".into(),
                },
                nominal: Some(t.angle_target),
                lower: Some(t.angle_min),
                upper: Some(t.angle_max),
                device_verdict: Some(status_verdict(t.angle_status)),
            },
        ],
        device_verdict: Some(if t.ok { Verdict::Ok } else { Verdict::Nok }),
        device_time: Some(DeviceTime {
            reported: t.time.clone(),
            utc_micros: None,
        }),
        raw: RawData::OpenProtocol(raw.to_vec().into()),
        received_at,
    }
}

/// A checked Open Protocol source.
#[derive(Debug, Clone)]
pub struct OpPlan {
    pub name: String,
    /// `host:port` of the controller.
    pub address: String,
    /// MID 0061 revision subscribed to (1 or 2).
    pub revision: u16,
    pub keep_alive: Duration,
    pub timeout: Duration,
    /// Download the scanned UII to the controller (MID 0050) when a part is scanned.
    pub download_identifier: bool,
    pub torque_characteristic: String,
    pub angle_characteristic: String,
}

/// Longest keep-alive interval: controllers drop links idle for 15 s.
pub const MAX_KEEP_ALIVE_SECS: u64 = 14;

impl OpPlan {
    pub fn new(cfg: &OpenProtocol) -> Result<OpPlan, String> {
        if !matches!(cfg.revision, 1 | 2) {
            return Err(format!(
                "revision: MID 0061 revision {} is not supported (1 or 2)",
                cfg.revision
            ));
        }
        if cfg.keep_alive_secs == 0 || cfg.keep_alive_secs > MAX_KEEP_ALIVE_SECS {
            return Err(
                "keep_alive_secs: must be 1 to 14: controllers drop links idle for 15 s".into(),
            );
        }
        Ok(OpPlan {
            name: cfg.name.clone(),
            address: cfg.address.clone(),
            revision: cfg.revision,
            keep_alive: Duration::from_secs(cfg.keep_alive_secs),
            timeout: Duration::from_millis(cfg.timeout_ms),
            download_identifier: cfg.download_identifier,
            torque_characteristic: cfg.torque_characteristic.clone(),
            angle_characteristic: cfg.angle_characteristic.clone(),
        })
    }
}

/// One torque controller: owns its connection until shutdown.
#[derive(Debug)]
pub struct OpSource {
    pub plan: OpPlan,
    pub station: mpsc::Sender<Input>,
    /// The station's current part, downloaded to the controller (MID 0050) when it changes.
    pub current_part: watch::Receiver<Option<String>>,
    /// The tightenings already recorded (from the ledger's tail), so a resend is not recorded
    /// twice.
    pub recorded: LastTightening,
    pub metrics: Arc<Metrics>,
}

impl OpSource {
    /// Runs the source until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let OpSource {
            plan: cfg,
            station,
            mut current_part,
            recorded: mut last,
            metrics,
        } = self;
        run(
            cfg,
            station,
            &mut current_part,
            &mut last,
            metrics,
            shutdown,
        )
        .await
    }
}

async fn run(
    cfg: OpPlan,
    station: mpsc::Sender<Input>,
    current_part: &mut watch::Receiver<Option<String>>,
    last: &mut LastTightening,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    // One SourceDown per outage: set when reported, cleared when the link is up again.
    let down_reported = AtomicBool::new(false);
    let set_down = || metrics.set_up(&cfg.name, false);
    let came_up = || {
        metrics.set_up(&cfg.name, true);
        down_reported.store(false, Ordering::Relaxed);
    };
    set_down();
    while !shutdown.is_cancelled() {
        let timeout = cfg.timeout;
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            r = tokio::time::timeout(timeout, TcpStream::connect(&cfg.address)) => r,
        };
        let end = match stream {
            Ok(Ok(stream)) => {
                session(
                    &cfg,
                    stream,
                    &station,
                    current_part,
                    last,
                    &shutdown,
                    &came_up,
                )
                .await
            }
            Ok(Err(e)) => LinkEnd::Failed(format!("cannot connect to {}: {e}", cfg.address)),
            Err(_) => LinkEnd::Failed(format!(
                "no connection to {} within {} ms",
                cfg.address,
                cfg.timeout.as_millis()
            )),
        };
        set_down();
        match end {
            LinkEnd::Stopped => break,
            LinkEnd::Failed(e) => {
                // Back to the shortest wait only when the link came up since the last reported
                // outage: a controller that accepts and then refuses at once is not retried
                // every 200 ms.
                if !down_reported.load(Ordering::Relaxed) {
                    backoff.reset();
                    tracing::warn!(source = %cfg.name, error = %e, "controller down");
                    let _ = station
                        .send(Input::Event(StationEvent::SourceDown {
                            source: cfg.name.clone(),
                            error: e,
                        }))
                        .await;
                    down_reported.store(true, Ordering::Relaxed);
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
    set_down();
}

async fn send(stream: &mut TcpStream, mid: u16, revision: u16, data: &[u8]) -> Result<(), LinkEnd> {
    stream
        .write_all(&Frame::encode(mid, revision, data))
        .await
        .map_err(|e| LinkEnd::Failed(format!("write: {e}")))
}

/// Reads the next frame within `limit`.
async fn next_frame(
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    limit: Duration,
    shutdown: &CancellationToken,
) -> Result<Frame, LinkEnd> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        if let Some(f) = reader.next_frame() {
            return f.map_err(|e| LinkEnd::Failed(format!("garbage from the controller: {e}")));
        }
        let n = tokio::select! {
            () = shutdown.cancelled() => return Err(LinkEnd::Stopped),
            r = tokio::time::timeout_at(deadline, stream.read(&mut buf)) => match r {
                Err(_) => return Err(LinkEnd::Failed(format!("controller silent for {} ms", limit.as_millis()))),
                Ok(Ok(0)) => return Err(LinkEnd::Failed("controller closed the connection".into())),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(LinkEnd::Failed(format!("read: {e}"))),
            },
        };
        reader.push(&buf[..n]);
    }
}

fn command_error(f: &Frame) -> String {
    let d = String::from_utf8_lossy(&f.data);
    let (m, code) = (d.get(..4).unwrap_or(""), d.get(4..6).unwrap_or(""));
    format!("controller refused MID {m} with error {code}")
}

/// Sends one request and waits for its answer: `expected`, or a command error (alarmed with
/// `refused` and ending the link).
#[allow(clippy::too_many_arguments)]
async fn request(
    cfg: &OpPlan,
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    station: &mpsc::Sender<Input>,
    shutdown: &CancellationToken,
    mid_sent: u16,
    revision: u16,
    expected: u16,
    refused: AlarmCode,
) -> Result<(), LinkEnd> {
    send(stream, mid_sent, revision, b"").await?;
    let f = next_frame(stream, reader, cfg.timeout, shutdown).await?;
    if f.mid == expected {
        return Ok(());
    }
    if f.mid == mid::COMMAND_ERROR {
        let m = command_error(&f);
        alarm(station, &cfg.name, refused, Severity::Error, m.clone()).await;
        return Err(LinkEnd::Failed(m));
    }
    Err(LinkEnd::Failed(format!(
        "expected MID {expected:04}, got MID {:04}",
        f.mid
    )))
}

async fn session(
    cfg: &OpPlan,
    mut stream: TcpStream,
    station: &mpsc::Sender<Input>,
    current_part: &mut watch::Receiver<Option<String>>,
    last: &mut LastTightening,
    shutdown: &CancellationToken,
    came_up: &impl Fn(),
) -> LinkEnd {
    let mut reader = FrameReader::new();
    // Communication start, then the subscription to results in the configured revision.
    for (sent, revision, expected, refused) in [
        (
            mid::COMM_START,
            1,
            mid::COMM_START_ACK,
            AlarmCode::OpStartRefused,
        ),
        (
            mid::RESULT_SUBSCRIBE,
            cfg.revision,
            mid::COMMAND_ACCEPTED,
            AlarmCode::OpSubscribeRefused,
        ),
    ] {
        let asked = request(
            cfg,
            &mut stream,
            &mut reader,
            station,
            shutdown,
            sent,
            revision,
            expected,
            refused,
        );
        if let Err(e) = asked.await {
            return e;
        }
    }
    // The link is up (again): its next loss is a new fault and gets its own SourceDown.
    came_up();
    tracing::info!(source = %cfg.name, address = %cfg.address, "controller connected");
    let _ = station
        .send(Input::Event(StationEvent::SourceUp {
            source: cfg.name.clone(),
            detail: format!(
                "connected to {}, MID 0061 revision {}",
                cfg.address, cfg.revision
            ),
        }))
        .await;
    let keep_alive = cfg.keep_alive;
    let silence = keep_alive * 3;
    let mut ping = tokio::time::interval(keep_alive);
    ping.tick().await;
    current_part.mark_changed();
    let mut buf = [0u8; 4096];
    let mut last_heard = tokio::time::Instant::now();
    loop {
        if let Err(e) = handle_frames(cfg, &mut reader, &mut stream, station, last).await {
            return e;
        }
        tokio::select! {
            () = shutdown.cancelled() => return LinkEnd::Stopped,
            _ = ping.tick() => {
                if last_heard.elapsed() > silence {
                    return LinkEnd::Failed(format!("controller silent for {} s", silence.as_secs()));
                }
                if let Err(e) = send(&mut stream, mid::KEEP_ALIVE, 1, b"").await {
                    return e;
                }
            }
            changed = current_part.changed(), if cfg.download_identifier => {
                if changed.is_err() {
                    continue;
                }
                let uii = current_part.borrow_and_update().clone();
                if let Some(uii) = uii {
                    // MID 0050: the identifier, at most 25 characters.
                    let id: String = uii.chars().take(25).collect();
                    if let Err(e) = send(&mut stream, mid::IDENTIFIER_DOWNLOAD, 1, id.as_bytes()).await {
                        return e;
                    }
                }
            }
            r = stream.read(&mut buf) => match r {
                Ok(0) => return LinkEnd::Failed("controller closed the connection".into()),
                Ok(n) => {
                    last_heard = tokio::time::Instant::now();
                    reader.push(&buf[..n]);
                }
                Err(e) => return LinkEnd::Failed(format!("read: {e}")),
            },
        }
    }
}

/// Handles every whole frame received so far: results (recorded, then acknowledged), command
/// errors (alarmed); keep-alive echoes and acceptances need nothing.
async fn handle_frames(
    cfg: &OpPlan,
    reader: &mut FrameReader,
    stream: &mut TcpStream,
    station: &mpsc::Sender<Input>,
    last: &mut LastTightening,
) -> Result<(), LinkEnd> {
    while let Some(f) = reader.next_frame() {
        let frame = match f {
            Ok(f) => f,
            Err(e) => {
                alarm(
                    station,
                    &cfg.name,
                    AlarmCode::OpGarbage,
                    Severity::Warning,
                    format!("garbage from the controller: {e}"),
                )
                .await;
                return Err(LinkEnd::Failed(format!("garbage from the controller: {e}")));
            }
        };
        match frame.mid {
            mid::RESULT => {
                on_result(cfg, &frame, stream, station, last).await?;
            }
            mid::COMMAND_ERROR => {
                alarm(
                    station,
                    &cfg.name,
                    AlarmCode::OpCommandError,
                    Severity::Warning,
                    command_error(&frame),
                )
                .await;
            }
            _ => {} // keep-alive echoes, command accepted
        }
    }
    Ok(())
}

async fn on_result(
    cfg: &OpPlan,
    frame: &Frame,
    stream: &mut TcpStream,
    station: &mpsc::Sender<Input>,
    last: &mut LastTightening,
) -> Result<(), LinkEnd> {
    let t = match Tightening::decode(frame) {
        Ok(t) => t,
        Err(e) => {
            // Not acknowledged: the controller sends it again, and the technician sees why.
            alarm(
                station,
                &cfg.name,
                AlarmCode::OpBadResult,
                Severity::Error,
                format!("MID 0061 not understood: {e}"),
            )
            .await;
            return Ok(());
        }
    };
    let key = (cfg.name.clone(), t.controller.clone());
    if let Some(seen) = last.get(&key) {
        let prev = seen.max;
        if seen.contains(t.tightening_id) {
            // Already durable (a resend after a reconnect or a restart): acknowledge only.
            tracing::info!(source = %cfg.name, id = t.tightening_id, "tightening already recorded");
            return send(stream, mid::RESULT_ACK, 1, b"").await;
        }
        if t.tightening_id < prev {
            alarm(
                station,
                &cfg.name,
                AlarmCode::OpTighteningIdReset,
                Severity::Warning,
                format!(
                    "tightening id went back from {prev} to {}: the controller's counter started over (reset or replaced); result recorded",
                    t.tightening_id
                ),
            )
            .await;
        } else if t.tightening_id > prev + 1 {
            alarm(
                station,
                &cfg.name,
                AlarmCode::OpTighteningGap,
                Severity::Error,
                format!(
                    "tightening ids jumped from {prev} to {}: {} result(s) missing",
                    t.tightening_id,
                    t.tightening_id - prev - 1
                ),
            )
            .await;
        }
    }
    let result = to_result(cfg, &t, &frame.raw, now_micros());
    let (tx, rx) = oneshot::channel();
    station
        .send(Input::Result(result, tx))
        .await
        .map_err(|_| LinkEnd::Stopped)?;
    match rx.await {
        Ok(Ok(_seq)) => {
            last.entry(key).or_default().insert(t.tightening_id);
            // MID 0062 only now: the result is durable.
            send(stream, mid::RESULT_ACK, 1, b"").await
        }
        Ok(Err(e)) => Err(LinkEnd::Failed(format!(
            "result not stored ({e}); not acknowledged"
        ))),
        Err(_) => Err(LinkEnd::Stopped),
    }
}

#[cfg(test)]
mod tests {
    use super::Recorded;

    #[test]
    fn recorded_ids_are_resends_and_a_lower_unknown_id_starts_a_new_run() {
        let mut r = Recorded::default();
        for id in 100..=105 {
            r.insert(id);
        }
        assert!(r.contains(105) && r.contains(100));
        assert_eq!(r.max, 105);
        // A counter that started over: new ids, the old run forgotten.
        r.insert(1);
        assert_eq!(r.max, 1);
        assert!(r.contains(1) && !r.contains(105));
        r.insert(2);
        assert_eq!(r.max, 2);
        // Bounded.
        for id in 3..3000 {
            r.insert(id);
        }
        assert!(!r.contains(2) && r.contains(2999));
    }
}
