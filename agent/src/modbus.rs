//! Modbus TCP sources: one task owns each device connection and runs its result-ready pattern.
//!
//! Invariants:
//! - every request has a timeout; after a timeout or a transport error the connection is
//!   dropped and rebuilt (a late reply would otherwise answer the next request), with jittered
//!   exponential backoff;
//! - a Modbus exception (illegal address, device failure, ...) is a device or configuration
//!   problem: it is recorded as an alarm and polling slows down, the connection is kept;
//! - the result block is read in one request, its raw registers go into the record;
//! - a device is acknowledged (handshake ack, toggle mirror) only after the record is durable;
//! - after a restart a block that equals the last one this source recorded is not recorded
//!   again: a kill between commit and ack neither loses nor duplicates the result.

use std::sync::Arc;
use std::time::Duration;

use proofline_common::record::{
    now_micros, DeviceTime, Measured, RawData, Severity, StationEvent, TestPlan, Verdict,
};
use tokio::sync::{mpsc, oneshot};
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::{ExceptionCode, Slave};
use tokio_util::sync::CancellationToken;

use crate::config::{wire_address, Modbus, Ready, Table, TextField};
use crate::registers::{decode, PointType, Value, WordOrder};
use crate::station::{alarm, DeviceResult, Input, Measurement, Metrics};

/// Result-ready registers as wire addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyPlan {
    Counter { counter: u16 },
    Flag { flag: u16 },
    Handshake { ready: u16, ack: u16 },
    Toggle { toggle: u16, mirror: u16 },
}

/// A checked Modbus source.
#[derive(Debug, Clone)]
pub struct ModbusPlan {
    pub cfg: Modbus,
    pub block: u16,
    pub ready: ReadyPlan,
}

impl ModbusPlan {
    pub fn new(cfg: &Modbus) -> Result<Self, String> {
        let w = |table, a| wire_address(cfg.addressing, table, a);
        let ready = match cfg.ready {
            Ready::Counter { counter_register } => ReadyPlan::Counter {
                counter: w(cfg.table, counter_register)?,
            },
            Ready::Flag { flag_register } => ReadyPlan::Flag {
                flag: w(cfg.table, flag_register)?,
            },
            Ready::Handshake {
                ready_register,
                ack_register,
            } => ReadyPlan::Handshake {
                ready: w(cfg.table, ready_register)?,
                ack: w(Table::Holding, ack_register)?,
            },
            Ready::Toggle {
                toggle_register,
                mirror_register,
            } => ReadyPlan::Toggle {
                toggle: w(cfg.table, toggle_register)?,
                mirror: w(Table::Holding, mirror_register)?,
            },
        };
        Ok(ModbusPlan {
            block: w(cfg.table, cfg.block_start)?,
            cfg: cfg.clone(),
            ready,
        })
    }

    fn function(&self) -> u8 {
        match self.cfg.table {
            Table::Holding => 3,
            Table::Input => 4,
        }
    }

    /// Turns a result block into a result.
    pub fn decode_block(&self, regs: &[u16], received_at: i64) -> (DeviceResult, Vec<String>) {
        let mut problems = Vec::new();
        let text =
            |f: &Option<TextField>, problems: &mut Vec<String>, what: &str| -> Option<String> {
                let f = f.as_ref()?;
                let slice = regs
                    .get(usize::from(f.offset)..usize::from(f.offset) + usize::from(f.registers))?;
                let order = if f.swap_bytes {
                    WordOrder::Badc
                } else {
                    WordOrder::Abcd
                };
                match decode(slice, PointType::String, order, 1.0, 0.0) {
                    Ok(Value::Text(t)) if !t.is_empty() => Some(t),
                    Ok(_) => None,
                    Err(e) => {
                        problems.push(format!("{what}: {e}"));
                        None
                    }
                }
            };
        let device_identifier = text(&self.cfg.identifier, &mut problems, "identifier");
        let plan_id = text(&self.cfg.test_plan_id, &mut problems, "test_plan_id");
        let plan_rev = text(
            &self.cfg.test_plan_revision,
            &mut problems,
            "test_plan_revision",
        );
        let device_result_id = self.cfg.result_id.as_ref().and_then(|r| {
            let w = r.ty.width()?;
            let slice = regs.get(usize::from(r.offset)..usize::from(r.offset) + w)?;
            match decode(slice, r.ty, r.order, 1.0, 0.0) {
                Ok(Value::Number(n)) => Some(format!("{n}")),
                _ => None,
            }
        });
        let device_time = self.cfg.device_time_offset.and_then(|o| {
            let r = regs.get(usize::from(o)..usize::from(o) + 6)?;
            let (yy, mo, dd, hh, mi, ss) = (r[0], r[1], r[2], r[3], r[4], r[5]);
            let year = if yy < 100 {
                2000 + u32::from(yy)
            } else {
                u32::from(yy)
            };
            if !(1..=12).contains(&mo) || !(1..=31).contains(&dd) || hh > 23 || mi > 59 || ss > 60 {
                problems.push(format!(
                    "device time registers {r:?} are not a date and time"
                ));
                return None;
            }
            Some(DeviceTime {
                reported: format!("{year:04}-{mo:02}-{dd:02}T{hh:02}:{mi:02}:{ss:02}"),
                utc_micros: None,
            })
        });
        let device_verdict = self.cfg.device_verdict.as_ref().and_then(|v| {
            let r = *regs.get(usize::from(v.offset))?;
            Some(if r == v.ok_value {
                Verdict::Ok
            } else {
                Verdict::Nok
            })
        });
        let measurements = self
            .cfg
            .points
            .iter()
            .map(|p| {
                let w = p.ty.width().unwrap_or(1);
                let slice = regs
                    .get(usize::from(p.offset)..usize::from(p.offset) + w)
                    .unwrap_or(&[]);
                let value = match decode(slice, p.ty, p.order, p.scale, p.add) {
                    Ok(Value::Number(n)) => n,
                    Ok(Value::Text(_)) => f64::NAN,
                    Err(e) => {
                        problems.push(format!("point {}: {e}", p.name));
                        f64::NAN
                    }
                };
                Measurement {
                    name: p.name.clone(),
                    measured: Measured::Value {
                        value,
                        unit: p.unit.clone(),
                    },
                    nominal: p.nominal,
                    lower: p.lower,
                    upper: p.upper,
                    device_verdict: None,
                }
            })
            .collect();
        let result = DeviceResult {
            source: self.cfg.name.clone(),
            device: self.cfg.device.clone(),
            device_result_id,
            device_identifier,
            test_plan: plan_id.map(|id| TestPlan {
                id,
                revision: plan_rev.unwrap_or_default(),
            }),
            measurements,
            device_verdict,
            device_time,
            raw: RawData::ModbusRegisters {
                unit: self.cfg.unit_id,
                function: self.function(),
                address: self.block,
                registers: regs.to_vec(),
            },
            received_at,
        };
        (result, problems)
    }
}

/// Why a bus call failed.
#[derive(Debug)]
enum BusError {
    /// Timeout or transport failure: drop the connection and reconnect.
    Link(String),
    /// The device answered with an exception: report, keep the connection.
    Exception(ExceptionCode),
    /// Shutting down.
    Stopped,
}

fn exception_name(e: ExceptionCode) -> String {
    let (code, name) = match e {
        ExceptionCode::IllegalFunction => (1, "illegal function"),
        ExceptionCode::IllegalDataAddress => (2, "illegal data address"),
        ExceptionCode::IllegalDataValue => (3, "illegal data value"),
        ExceptionCode::ServerDeviceFailure => (4, "server device failure"),
        ExceptionCode::Acknowledge => (5, "acknowledge"),
        ExceptionCode::ServerDeviceBusy => (6, "server device busy"),
        ExceptionCode::MemoryParityError => (8, "memory parity error"),
        ExceptionCode::GatewayPathUnavailable => (10, "gateway path unavailable"),
        ExceptionCode::GatewayTargetDevice => (11, "gateway target failed to respond"),
        ExceptionCode::Custom(c) => (c, "device-specific exception"),
    };
    format!("{name} (exception {code:02})")
}

/// Jittered exponential backoff.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    seed: u64,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(30);

    fn new() -> Self {
        Backoff {
            next: Self::MIN,
            seed: now_micros() as u64 | 1,
        }
    }

    fn reset(&mut self) {
        self.next = Self::MIN;
    }

    fn step(&mut self) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        // ±20 %
        let jitter = 0.8 + (self.seed % 401) as f64 / 1000.0;
        let d = self.next.mul_f64(jitter);
        self.next = (self.next * 2).min(Self::MAX);
        d
    }
}

/// How a source reaches its device: its own TCP connection, or its unit on a shared RTU line
/// whose port is owned by a [`run_bus`] task.
enum Conn {
    Tcp(Context),
    Rtu { bus: BusHandle, unit: u8 },
}

struct Link<'a> {
    plan: &'a ModbusPlan,
    conn: Conn,
    shutdown: &'a CancellationToken,
}

fn link_error(timeout_ms: u64, e: Option<String>) -> BusError {
    BusError::Link(e.unwrap_or_else(|| format!("no reply within {timeout_ms} ms")))
}

impl Link<'_> {
    /// Reads from the source's table (holding or input registers).
    async fn read(&mut self, addr: u16, count: u16) -> Result<Vec<u16>, BusError> {
        self.read_in(self.plan.cfg.table, addr, count).await
    }

    async fn read_in(&mut self, table: Table, addr: u16, count: u16) -> Result<Vec<u16>, BusError> {
        let timeout_ms = self.plan.cfg.timeout_ms;
        let regs = match &mut self.conn {
            Conn::Tcp(ctx) => {
                let r = tokio::select! {
                    () = self.shutdown.cancelled() => return Err(BusError::Stopped),
                    r = tokio::time::timeout(Duration::from_millis(timeout_ms), async {
                        match table {
                            Table::Holding => ctx.read_holding_registers(addr, count).await,
                            Table::Input => ctx.read_input_registers(addr, count).await,
                        }
                    }) => r,
                };
                match r {
                    Err(_) => return Err(link_error(timeout_ms, None)),
                    Ok(Err(e)) => return Err(link_error(timeout_ms, Some(e.to_string()))),
                    Ok(Ok(Err(code))) => return Err(BusError::Exception(code)),
                    Ok(Ok(Ok(v))) => v,
                }
            }
            Conn::Rtu { bus, unit } => {
                let op = BusOp::Read { table, addr, count };
                match bus.call(*unit, op, timeout_ms, self.shutdown).await? {
                    BusReply::Registers(v) => v,
                    BusReply::Written => {
                        return Err(link_error(timeout_ms, Some("unexpected reply".into())))
                    }
                }
            }
        };
        if regs.len() != usize::from(count) {
            return Err(BusError::Link(format!(
                "asked for {count} registers, got {}",
                regs.len()
            )));
        }
        Ok(regs)
    }

    async fn write(&mut self, addr: u16, value: u16) -> Result<(), BusError> {
        let timeout_ms = self.plan.cfg.timeout_ms;
        match &mut self.conn {
            Conn::Tcp(ctx) => {
                let r = tokio::select! {
                    () = self.shutdown.cancelled() => return Err(BusError::Stopped),
                    r = tokio::time::timeout(Duration::from_millis(timeout_ms), ctx.write_single_register(addr, value)) => r,
                };
                match r {
                    Err(_) => Err(link_error(timeout_ms, None)),
                    Ok(Err(e)) => Err(link_error(timeout_ms, Some(e.to_string()))),
                    Ok(Ok(Err(code))) => Err(BusError::Exception(code)),
                    Ok(Ok(Ok(()))) => Ok(()),
                }
            }
            Conn::Rtu { bus, unit } => bus
                .call(
                    *unit,
                    BusOp::Write { addr, value },
                    timeout_ms,
                    self.shutdown,
                )
                .await
                .map(|_| ()),
        }
    }
}

/// What a source asks of a shared RTU line.
#[derive(Debug, Clone, Copy)]
enum BusOp {
    Read { table: Table, addr: u16, count: u16 },
    Write { addr: u16, value: u16 },
}

#[derive(Debug)]
enum BusReply {
    Registers(Vec<u16>),
    Written,
}

#[derive(Debug)]
struct BusRequest {
    unit: u8,
    op: BusOp,
    timeout_ms: u64,
    reply: oneshot::Sender<Result<BusReply, BusError>>,
}

/// A source's handle on a shared RTU line.
#[derive(Debug, Clone)]
pub struct BusHandle {
    tx: mpsc::Sender<BusRequest>,
}

impl BusHandle {
    async fn call(
        &self,
        unit: u8,
        op: BusOp,
        timeout_ms: u64,
        shutdown: &CancellationToken,
    ) -> Result<BusReply, BusError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(BusRequest {
                unit,
                op,
                timeout_ms,
                reply,
            })
            .await
            .map_err(|_| BusError::Stopped)?;
        tokio::select! {
            () = shutdown.cancelled() => Err(BusError::Stopped),
            r = rx => r.unwrap_or(Err(BusError::Stopped)),
        }
    }
}

/// An RTU line: its port settings and the sources (units) on it.
#[derive(Debug, Clone)]
pub struct RtuLine {
    pub port: std::path::PathBuf,
    pub baud: u32,
    pub frame: String,
    pub pause: Duration,
}

/// Starts the task that owns an RTU line and returns the handle its sources share.
pub fn spawn_bus(
    line: RtuLine,
    tracker: &tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
) -> BusHandle {
    let (tx, rx) = mpsc::channel(64);
    tracker.spawn(run_bus(line, rx, shutdown));
    BusHandle { tx }
}

/// Owns one serial port and serves its units' requests one at a time, with the configured
/// pause between requests. After a timeout or a transport error the port is closed and reopened
/// (a late reply would otherwise be taken as the next request's answer). A unit that does not
/// answer costs only its own timeouts: its source backs off, the others keep being served.
async fn run_bus(line: RtuLine, mut rx: mpsc::Receiver<BusRequest>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new();
    'port: while !shutdown.is_cancelled() {
        let stream = match crate::serial_port::open_port(&line.port, line.baud, &line.frame) {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("cannot open {}: {e}", line.port.display());
                tracing::warn!(port = %line.port.display(), error = %e, "RTU line unavailable");
                // Answer what is waiting, so sources report it and back off.
                let wait = backoff.step();
                let deadline = tokio::time::Instant::now() + wait;
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break 'port,
                        () = tokio::time::sleep_until(deadline) => continue 'port,
                        req = rx.recv() => match req {
                            Some(r) => { let _ = r.reply.send(Err(BusError::Link(msg.clone()))); }
                            None => break 'port,
                        },
                    }
                }
            }
        };
        backoff.reset();
        let mut ctx = tokio_modbus::client::rtu::attach_slave(stream, Slave(1));
        loop {
            let req = tokio::select! {
                () = shutdown.cancelled() => break 'port,
                r = rx.recv() => match r { Some(r) => r, None => break 'port },
            };
            use tokio_modbus::slave::SlaveContext as _;
            ctx.set_slave(Slave(req.unit));
            let timeout = Duration::from_millis(req.timeout_ms);
            let result = match req.op {
                BusOp::Read { table, addr, count } => {
                    let fut = async {
                        match table {
                            Table::Holding => ctx.read_holding_registers(addr, count).await,
                            Table::Input => ctx.read_input_registers(addr, count).await,
                        }
                    };
                    match tokio::time::timeout(timeout, fut).await {
                        Err(_) => Err(link_error(req.timeout_ms, None)),
                        Ok(Err(e)) => Err(link_error(req.timeout_ms, Some(e.to_string()))),
                        Ok(Ok(Err(code))) => Err(BusError::Exception(code)),
                        Ok(Ok(Ok(v))) => Ok(BusReply::Registers(v)),
                    }
                }
                BusOp::Write { addr, value } => {
                    match tokio::time::timeout(timeout, ctx.write_single_register(addr, value))
                        .await
                    {
                        Err(_) => Err(link_error(req.timeout_ms, None)),
                        Ok(Err(e)) => Err(link_error(req.timeout_ms, Some(e.to_string()))),
                        Ok(Ok(Err(code))) => Err(BusError::Exception(code)),
                        Ok(Ok(Ok(()))) => Ok(BusReply::Written),
                    }
                }
            };
            let rebuild = matches!(result, Err(BusError::Link(_)));
            let _ = req.reply.send(result);
            if rebuild {
                continue 'port;
            }
            if !line.pause.is_zero() {
                tokio::time::sleep(line.pause).await;
            }
        }
    }
}

/// Runs one Modbus source until `shutdown`: over its own TCP connection, or as a unit of the
/// RTU line behind `bus`.
pub async fn run_source(
    plan: ModbusPlan,
    bus: Option<BusHandle>,
    station: mpsc::Sender<Input>,
    mut last_raw: Option<Vec<u16>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let name = plan.cfg.name.clone();
    let address = match &plan.cfg.port {
        Some(p) => format!("{} (RTU)", p.display()),
        None => plan.cfg.address.clone().unwrap_or_default(),
    };
    let mut backoff = Backoff::new();
    let mut down_reported: Option<String> = None;
    let set_up = |up: bool| metrics.set_up(&name, up);
    set_up(false);
    while !shutdown.is_cancelled() {
        let conn = if let Some(bus) = &bus {
            Conn::Rtu {
                bus: bus.clone(),
                unit: plan.cfg.unit_id,
            }
        } else {
            let connected = tokio::select! {
                () = shutdown.cancelled() => break,
                r = tokio::time::timeout(Duration::from_millis(plan.cfg.timeout_ms), connect(&address, plan.cfg.unit_id)) => r,
            };
            match connected {
                Ok(Ok(ctx)) => Conn::Tcp(ctx),
                Ok(Err(e)) => {
                    report_down(
                        &station,
                        &name,
                        &mut down_reported,
                        format!("cannot connect to {address}: {e}"),
                    )
                    .await;
                    sleep(&shutdown, backoff.step()).await;
                    continue;
                }
                Err(_) => {
                    report_down(
                        &station,
                        &name,
                        &mut down_reported,
                        format!(
                            "no connection to {address} within {} ms",
                            plan.cfg.timeout_ms
                        ),
                    )
                    .await;
                    sleep(&shutdown, backoff.step()).await;
                    continue;
                }
            }
        };
        let mut link = Link {
            plan: &plan,
            conn,
            shutdown: &shutdown,
        };
        // An RTU unit is up once it answers; a TCP device once connected.
        if bus.is_some() {
            match link.read(plan.block, 1).await {
                Ok(_) | Err(BusError::Exception(_)) => {}
                Err(BusError::Stopped) => break,
                Err(BusError::Link(e)) => {
                    report_down(&station, &name, &mut down_reported, e).await;
                    sleep(&shutdown, backoff.step()).await;
                    continue;
                }
            }
        }
        backoff.reset();
        down_reported = None;
        set_up(true);
        tracing::info!(source = %name, %address, "connected");
        let _ = station
            .send(Input::Event(StationEvent::SourceUp {
                source: name.clone(),
                detail: format!("{address}, unit {} answers", plan.cfg.unit_id),
            }))
            .await;
        let reason = poll_loop(&mut link, &station, &mut last_raw).await;
        set_up(false);
        match reason {
            BusError::Stopped => break,
            BusError::Link(e) => {
                report_down(&station, &name, &mut down_reported, e).await;
                sleep(&shutdown, backoff.step()).await;
            }
            BusError::Exception(_) => unreachable!("exceptions are handled in the poll loop"),
        }
    }
    set_up(false);
}

async fn connect(address: &str, unit: u8) -> std::io::Result<Context> {
    let mut last = None;
    for addr in tokio::net::lookup_host(address).await? {
        match tokio_modbus::client::tcp::connect_slave(addr, Slave(unit)).await {
            Ok(ctx) => return Ok(ctx),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "address resolves to nothing")
    }))
}

async fn sleep(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(d) => {}
    }
}

async fn report_down(
    station: &mpsc::Sender<Input>,
    name: &str,
    reported: &mut Option<String>,
    error: String,
) {
    // One event per outage; the metric and the log carry the rest.
    if reported.is_none() {
        tracing::warn!(source = %name, %error, "source down");
        let _ = station
            .send(Input::Event(StationEvent::SourceDown {
                source: name.to_owned(),
                error: error.clone(),
            }))
            .await;
        *reported = Some(error);
    } else {
        tracing::debug!(source = %name, %error, "still down");
    }
}

/// Polls until the link fails or shutdown. Exceptions are reported and slow the polling down.
async fn poll_loop(
    link: &mut Link<'_>,
    station: &mpsc::Sender<Input>,
    last_raw: &mut Option<Vec<u16>>,
) -> BusError {
    let plan = link.plan;
    let name = plan.cfg.name.clone();
    let poll = Duration::from_millis(plan.cfg.poll_interval_ms);
    let mut last_exception: Option<String> = None;
    let mut last_counter: Option<u16> = None;
    let mut ack_set: Option<bool> = None;
    let mut mirror: Option<u16> = None;
    loop {
        let step = poll_once(
            link,
            station,
            last_raw,
            &mut last_counter,
            &mut ack_set,
            &mut mirror,
        )
        .await;
        match step {
            Ok(()) => {
                if last_exception.take().is_some() {
                    let _ = station
                        .send(Input::Event(StationEvent::AlarmCleared {
                            source: name.clone(),
                            code: "modbus.exception".into(),
                        }))
                        .await;
                }
                sleep(link.shutdown, poll).await;
            }
            Err(BusError::Exception(code)) => {
                let text = exception_name(code);
                if last_exception.as_deref() != Some(text.as_str()) {
                    alarm(
                        station,
                        &name,
                        "modbus.exception",
                        Severity::Error,
                        format!("device answers {text}: check the register map and the device"),
                    )
                    .await;
                    last_exception = Some(text);
                }
                sleep(link.shutdown, (poll * 20).min(Duration::from_secs(5))).await;
            }
            Err(other) => return other,
        }
        if link.shutdown.is_cancelled() {
            return BusError::Stopped;
        }
    }
}

/// Hands a result to the station and waits until it is durable.
async fn record(station: &mpsc::Sender<Input>, result: DeviceResult) -> Result<u64, BusError> {
    let (tx, rx) = oneshot::channel();
    station
        .send(Input::Result(result, tx))
        .await
        .map_err(|_| BusError::Stopped)?;
    match rx.await {
        Ok(Ok(seq)) => Ok(seq),
        // Not durable: do not acknowledge; try again on the next poll (the device keeps the
        // result frozen until it is acknowledged).
        Ok(Err(e)) => Err(BusError::Link(format!("ledger refused the result: {e}"))),
        Err(_) => Err(BusError::Stopped),
    }
}

async fn read_result(link: &mut Link<'_>) -> Result<Vec<u16>, BusError> {
    let plan = link.plan;
    link.read(plan.block, plan.cfg.block_registers).await
}

async fn store_result(
    plan: &ModbusPlan,
    station: &mpsc::Sender<Input>,
    regs: Vec<u16>,
    last_raw: &mut Option<Vec<u16>>,
) -> Result<(), BusError> {
    if last_raw.as_deref() == Some(regs.as_slice()) {
        alarm(
            station,
            &plan.cfg.name,
            "modbus.result_presented_again",
            Severity::Info,
            "the device presented a result that is already recorded (device reboot or agent restart); acknowledged without a second record".into(),
        )
        .await;
        return Ok(());
    }
    let (result, problems) = plan.decode_block(&regs, now_micros());
    for p in problems {
        alarm(
            station,
            &plan.cfg.name,
            "modbus.decode",
            Severity::Warning,
            p,
        )
        .await;
    }
    record(station, result).await?;
    *last_raw = Some(regs);
    Ok(())
}

async fn poll_once(
    link: &mut Link<'_>,
    station: &mpsc::Sender<Input>,
    last_raw: &mut Option<Vec<u16>>,
    last_counter: &mut Option<u16>,
    ack_set: &mut Option<bool>,
    mirror: &mut Option<u16>,
) -> Result<(), BusError> {
    let plan = link.plan;
    match plan.ready {
        ReadyPlan::Handshake { ready, ack } => {
            // The ack may still be set from before a restart: start from the device's state.
            let acked = match *ack_set {
                Some(a) => a,
                None => link.read_in(Table::Holding, ack, 1).await?[0] != 0,
            };
            *ack_set = Some(acked);
            let r = link.read(ready, 1).await?[0];
            // Waiting for the device to release the block: check that our ack is still there
            // (a device that rebooted has cleared it and presents the result again).
            let acked = if r != 0 && acked {
                link.read_in(Table::Holding, ack, 1).await?[0] != 0
            } else {
                acked
            };
            if r != 0 && !acked {
                let regs = read_result(link).await?;
                store_result(plan, station, regs, last_raw).await?;
                link.write(ack, 1).await?;
                *ack_set = Some(true);
            } else if r == 0 && acked {
                link.write(ack, 0).await?;
                *ack_set = Some(false);
            }
        }
        ReadyPlan::Counter { counter } => {
            let c = link.read(counter, 1).await?[0];
            let changed = match *last_counter {
                None => true,
                Some(prev) => prev != c,
            };
            if changed {
                if let Some(prev) = *last_counter {
                    let delta = c.wrapping_sub(prev);
                    if delta > 0x8000 {
                        alarm(
                            station,
                            &plan.cfg.name,
                            "device.restarted",
                            Severity::Warning,
                            format!(
                                "result counter went back from {prev} to {c}: the device restarted"
                            ),
                        )
                        .await;
                    } else if delta > 1 {
                        alarm(station, &plan.cfg.name, "modbus.missed_results", Severity::Error, format!("result counter jumped from {prev} to {c}: {} result(s) were never read", delta - 1)).await;
                    }
                }
                let regs = read_result(link).await?;
                store_result(plan, station, regs, last_raw).await?;
                *last_counter = Some(c);
            }
        }
        ReadyPlan::Flag { flag } => {
            // Reading the flag clears it on the device: the block is read and stored at once.
            let f = link.read(flag, 1).await?[0];
            if f != 0 {
                let regs = read_result(link).await?;
                store_result(plan, station, regs, last_raw).await?;
            }
        }
        ReadyPlan::Toggle {
            toggle,
            mirror: mirror_reg,
        } => {
            let t = link.read(toggle, 1).await?[0];
            let m = match *mirror {
                Some(m) => m,
                None => link.read_in(Table::Holding, mirror_reg, 1).await?[0],
            };
            *mirror = Some(m);
            if t != m {
                let regs = read_result(link).await?;
                store_result(plan, station, regs, last_raw).await?;
                link.write(mirror_reg, t).await?;
                *mirror = Some(t);
            }
        }
    }
    Ok(())
}

/// Reads the source's result block once (for `probe`), over TCP or on its RTU line.
pub async fn read_block_once(plan: &ModbusPlan) -> Result<Vec<u16>, String> {
    let shutdown = CancellationToken::new();
    let conn = if let Some(port) = &plan.cfg.port {
        let tracker = tokio_util::task::TaskTracker::new();
        let bus = spawn_bus(
            RtuLine {
                port: port.clone(),
                baud: plan.cfg.baud,
                frame: plan.cfg.frame.clone(),
                pause: Duration::ZERO,
            },
            &tracker,
            shutdown.clone(),
        );
        Conn::Rtu {
            bus,
            unit: plan.cfg.unit_id,
        }
    } else {
        let address = plan.cfg.address.clone().unwrap_or_default();
        let timeout = Duration::from_millis(plan.cfg.timeout_ms);
        match tokio::time::timeout(timeout, connect(&address, plan.cfg.unit_id)).await {
            Ok(Ok(ctx)) => Conn::Tcp(ctx),
            Ok(Err(e)) => return Err(format!("cannot connect to {address}: {e}")),
            Err(_) => {
                return Err(format!(
                    "no connection to {address} within {} ms",
                    plan.cfg.timeout_ms
                ))
            }
        }
    };
    let mut link = Link {
        plan,
        conn,
        shutdown: &shutdown,
    };
    match read_result(&mut link).await {
        Ok(regs) => Ok(regs),
        Err(BusError::Exception(code)) => {
            Err(format!("the device answers {}", exception_name(code)))
        }
        Err(BusError::Link(e)) => Err(e),
        Err(BusError::Stopped) => Err("stopped".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentConfig, Source};

    #[test]
    fn a_torque_block_yields_torque_device_time_verdict_tool_serial_and_barcode() {
        let example = include_str!("../../config/agent.example.toml");
        let (cfg, _) = AgentConfig::parse(example).unwrap();
        let Some(Source::ModbusRtu(m)) = cfg.sources.iter().find(|s| s.name() == "nutrunner-rtu")
        else {
            panic!("example has the RTU nutrunner");
        };
        let plan = ModbusPlan::new(m).unwrap();
        let mut regs = vec![0u16; 30];
        regs[0] = 5012; // cN.m
        regs[1] = 47;
        regs[2] = 1; // OK
        regs[3] = 12; // program
        regs[4] = 0x0001; // tool serial, high word first
        regs[5] = 0xE240;
        for (i, pair) in b"D1ABC57734-0012000123\0".chunks(2).enumerate() {
            regs[10 + i] = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        }
        regs[24..30].copy_from_slice(&[25, 3, 5, 14, 22, 31]);
        let (r, problems) = plan.decode_block(&regs, 0);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            r.device_identifier.as_deref(),
            Some("D1ABC57734-0012000123")
        );
        assert_eq!(r.device_result_id.as_deref(), Some("123456"));
        assert_eq!(r.device_verdict, Some(Verdict::Ok));
        assert_eq!(r.device_time.unwrap().reported, "2025-03-05T14:22:31");
        let torque = &r.measurements[0];
        assert_eq!(
            torque.measured,
            Measured::Value {
                value: 50.12,
                unit: "N.m".into()
            }
        );
        regs[2] = 0;
        regs[25] = 13;
        let (r, problems) = plan.decode_block(&regs, 0);
        assert_eq!(r.device_verdict, Some(Verdict::Nok));
        assert!(r.device_time.is_none());
        assert_eq!(problems.len(), 1, "{problems:?}");
    }
}
