//! Modbus sources (TCP, RTU): one task owns each device connection and runs its result-ready
//! pattern.
//!
//! Invariants:
//! - every request has a timeout; after a timeout or a transport error the connection is
//!   dropped and rebuilt (a late reply would otherwise answer the next request), with jittered
//!   exponential backoff;
//! - a Modbus exception (illegal address, device failure, ...) is a device or configuration
//!   problem: it is recorded as an alarm and polling slows down, the connection is kept;
//! - a result block of up to 125 registers is read in one request; its raw registers go into
//!   the record;
//! - a longer block is read in requests of at most 125 registers behind the torn-read guard
//!   (below): a block mixing two results is never recorded;
//! - a device is acknowledged (handshake ack, toggle mirror) only after the record is durable;
//! - after a restart a block that equals the last one this source recorded is not recorded
//!   again: a kill between commit and ack neither loses nor duplicates the result.
//!
//! # Torn-read guard
//!
//! A device answers each request from one state of its registers, but may write a new result
//! between two requests. After the last chunk of a split block the agent reads again the
//! pattern's register that moves with each result (the counter, the ready flag, the toggle
//! bit), the first chunk, and the result id's registers when it lies beyond the first chunk.
//! If any of them changed, the whole block is read again, up to [`TORN_READ_ATTEMPTS`] times.
//! A block that changed during every attempt is not recorded: a `modbus.torn_read` alarm is.
//! A handshake or toggle device keeps its result until acknowledged, so it is read again at
//! the next poll; a counter device's result too, unless the counter moves on (then the missed
//! result is alarmed as such). A read-to-clear flag cannot be read twice (the second read
//! would consume the next event), so a split block with a flag needs a `result_id` inside the
//! block to stand in for it; `check-config` refuses one without. What the guard cannot see is
//! a device that stops half-way through rewriting its block for longer than a whole read and
//! changes neither the register that moves per result nor the first chunk meanwhile: devices
//! that freeze the block while it is presented (handshake, toggle) never do.

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

/// Registers one read request (function 3 or 4) can carry.
pub const MAX_READ: u16 = 125;

/// The longest result block: 8 requests. A longer read widens the window in which a device
/// can change the block, and every register is kept in the record.
pub const MAX_BLOCK: u16 = 8 * MAX_READ;

/// Reads of a split block before a block that keeps changing is reported as torn.
pub const TORN_READ_ATTEMPTS: u32 = 4;

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
        let block = w(cfg.table, cfg.block_start)?;
        if cfg.block_registers == 0 || cfg.block_registers > MAX_BLOCK {
            return Err(format!(
                "a result block of {} registers is not 1 to {MAX_BLOCK}",
                cfg.block_registers
            ));
        }
        if u32::from(block) + u32::from(cfg.block_registers) > 0x1_0000 {
            return Err(format!(
                "{} registers from wire address {block} run past 65535",
                cfg.block_registers
            ));
        }
        if cfg.block_registers > MAX_READ
            && matches!(ready, ReadyPlan::Flag { .. })
            && cfg.result_id.is_none()
        {
            return Err(
                "a block split over several requests with a read-to-clear flag needs result_id"
                    .into(),
            );
        }
        Ok(ModbusPlan {
            block,
            cfg: cfg.clone(),
            ready,
        })
    }

    /// The requests (wire address, count) that read the block: one when it fits in one, else
    /// chunks of at most [`MAX_READ`] registers in address order.
    pub fn chunks(&self) -> Vec<(u16, u16)> {
        let mut out = Vec::new();
        let mut offset = 0u16;
        while offset < self.cfg.block_registers {
            let count = (self.cfg.block_registers - offset).min(MAX_READ);
            // The block's end was checked to lie within the address space.
            out.push((self.block + offset, count));
            offset += count;
        }
        out
    }

    /// The register that moves with each result and is read again after a split block: the
    /// counter, the ready flag, the toggle bit. None for a read-to-clear flag.
    pub fn marker(&self) -> Option<u16> {
        match self.ready {
            ReadyPlan::Counter { counter } => Some(counter),
            ReadyPlan::Handshake { ready, .. } => Some(ready),
            ReadyPlan::Toggle { toggle, .. } => Some(toggle),
            ReadyPlan::Flag { .. } => None,
        }
    }

    /// The parts of a split block read again after its last chunk (offset in the block,
    /// count): the first chunk, and the result id when it lies beyond it.
    fn guard_reads(&self) -> Vec<(u16, u16)> {
        let first = self.cfg.block_registers.min(MAX_READ);
        let mut out = vec![(0, first)];
        if let Some(r) = &self.cfg.result_id {
            let width =
                r.ty.width()
                    .and_then(|w| u16::try_from(w).ok())
                    .unwrap_or(1);
            if r.offset.saturating_add(width) > first {
                out.push((r.offset, width));
            }
        }
        out
    }

    fn function(&self) -> u8 {
        match self.cfg.table {
            Table::Holding => 3,
            Table::Input => 4,
        }
    }

    /// The device's own result id in a block, when the source configures one.
    fn result_id(&self, regs: &[u16]) -> Option<String> {
        let r = self.cfg.result_id.as_ref()?;
        let w = r.ty.width()?;
        let slice = regs.get(usize::from(r.offset)..usize::from(r.offset) + w)?;
        match decode(slice, r.ty, r.order, 1.0, 0.0) {
            Ok(Value::Number(n)) => Some(format!("{n}")),
            _ => None,
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
        let device_result_id = self.result_id(regs);
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
        // Bytes of a reply that came after its request was given up are not an answer to the
        // next one.
        if let Err(e) = tokio_serial::SerialPort::clear(&stream, tokio_serial::ClearBuffer::Input) {
            tracing::debug!(port = %line.port.display(), error = %e, "cannot discard unread input");
        }
        let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tap = Tap {
            port: stream,
            heard: Arc::clone(&heard),
        };
        let mut ctx = tokio_modbus::client::rtu::attach_slave(tap, Slave(1));
        loop {
            let req = tokio::select! {
                () = shutdown.cancelled() => break 'port,
                r = rx.recv() => match r { Some(r) => r, None => break 'port },
            };
            use tokio_modbus::slave::SlaveContext as _;
            ctx.set_slave(Slave(req.unit));
            heard.lock().unwrap_or_else(|e| e.into_inner()).clear();
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
            // Name what came instead of a usable reply: a broken CRC points at the line or its
            // settings, a cut frame at the device, silence at the unit id or the cabling.
            let result = result.map_err(|e| match e {
                BusError::Link(why) => {
                    let heard = heard.lock().unwrap_or_else(|e| e.into_inner());
                    BusError::Link(unusable_reply(&heard, req.timeout_ms).unwrap_or(why))
                }
                other => other,
            });
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

/// An RTU line's port that keeps the bytes received since the current request was sent.
#[derive(Debug)]
struct Tap {
    port: tokio_serial::SerialStream,
    heard: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl tokio::io::AsyncRead for Tap {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.port).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = r {
            let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
            // One RTU frame is at most 256 bytes; more is noise already described.
            let room = 512usize.saturating_sub(heard.len());
            let new = &buf.filled()[before..];
            heard.extend_from_slice(&new[..new.len().min(room)]);
        }
        r
    }
}

impl tokio::io::AsyncWrite for Tap {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.port).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.port).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.port).poll_shutdown(cx)
    }
}

/// CRC-16/MODBUS (reflected polynomial 0xA001, initial value 0xFFFF).
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for b in bytes {
        crc ^= u16::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// What was received instead of a usable RTU reply: None when nothing was, or a whole frame
/// with a good CRC (then the Modbus library's own error says what is wrong with it).
fn unusable_reply(heard: &[u8], timeout_ms: u64) -> Option<String> {
    if heard.is_empty() {
        return None;
    }
    let expected = match heard.get(1) {
        Some(0x01..=0x04) => heard.get(2).map(|n| 5 + usize::from(*n)),
        Some(0x05 | 0x06 | 0x0F | 0x10) => Some(8),
        Some(f) if f & 0x80 != 0 => Some(5),
        _ => None,
    };
    Some(match expected {
        Some(n) if heard.len() < n => format!(
            "reply cut short: {} of {n} bytes within {timeout_ms} ms",
            heard.len()
        ),
        Some(n) if crc16(&heard[..n - 2]) != u16::from_le_bytes([heard[n - 2], heard[n - 1]]) => {
            format!("reply with a bad CRC ({n} bytes): line noise, or a baud rate or parity other than the device's")
        }
        Some(_) => return None,
        None => format!(
            "unreadable reply ({} bytes, starting {:02x?})",
            heard.len(),
            &heard[..heard.len().min(8)]
        ),
    })
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
    // The result counter as last read, kept across reconnects: results counted during an outage
    // are missed results and get their alarm.
    let mut last_counter: Option<u16> = None;
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
        down_reported = None;
        set_up(true);
        tracing::info!(source = %name, %address, "connected");
        let _ = station
            .send(Input::Event(StationEvent::SourceUp {
                source: name.clone(),
                detail: format!("{address}, unit {} answers", plan.cfg.unit_id),
            }))
            .await;
        let reason = poll_loop(
            &mut link,
            &station,
            &mut last_raw,
            &mut last_counter,
            &mut backoff,
        )
        .await;
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

/// What a source remembers between polls of one connection.
#[derive(Debug, Default)]
struct PollState {
    last_counter: Option<u16>,
    ack_set: Option<bool>,
    mirror: Option<u16>,
    /// A `modbus.torn_read` alarm is standing (cleared by the next whole block).
    torn_reported: bool,
    /// On this connection the device has taken a result we stored (handshake released, toggle
    /// mirrored, flag consumed): whatever it presents next is a new result, even with the same
    /// registers. Until then a block equal to the last recorded one is that result again.
    delivered: bool,
}

/// Polls until the link fails or shutdown. Exceptions are reported and slow the polling down.
async fn poll_loop(
    link: &mut Link<'_>,
    station: &mpsc::Sender<Input>,
    last_raw: &mut Option<Vec<u16>>,
    last_counter: &mut Option<u16>,
    backoff: &mut Backoff,
) -> BusError {
    let plan = link.plan;
    let name = plan.cfg.name.clone();
    let poll = Duration::from_millis(plan.cfg.poll_interval_ms);
    let mut last_exception: Option<String> = None;
    let mut state = PollState {
        last_counter: *last_counter,
        ..PollState::default()
    };
    loop {
        let step = poll_once(link, station, last_raw, &mut state).await;
        *last_counter = state.last_counter;
        match step {
            Ok(()) => {
                // A full exchange worked: the next reconnect starts from the shortest wait (a
                // device that accepts the connection and then fails never gets here).
                backoff.reset();
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

/// What reading the result block gave.
#[derive(Debug)]
enum BlockRead {
    /// The whole block as of one state of the device, and the value the register that moves
    /// with each result (if any) had in that state.
    Whole { regs: Vec<u16>, marker: Option<u16> },
    /// A split block changed during each of this many attempts.
    Torn { attempts: u32 },
}

/// Reads the result block: in one request when it fits, else chunk by chunk behind the
/// torn-read guard (module docs). `marker` is the value of [`ModbusPlan::marker`] as read just
/// before.
async fn read_block(link: &mut Link<'_>, marker: Option<u16>) -> Result<BlockRead, BusError> {
    let plan = link.plan;
    let chunks = plan.chunks();
    if let [(addr, count)] = chunks[..] {
        let regs = link.read(addr, count).await?;
        return Ok(BlockRead::Whole { regs, marker });
    }
    let mut before = marker;
    for attempt in 1..=TORN_READ_ATTEMPTS {
        let mut regs = Vec::with_capacity(usize::from(plan.cfg.block_registers));
        for &(addr, count) in &chunks {
            regs.extend(link.read(addr, count).await?);
        }
        let after = match plan.marker() {
            Some(addr) => Some(link.read(addr, 1).await?[0]),
            None => None,
        };
        let mut changed = (after != before).then(|| format!("{before:?} -> {after:?}"));
        for (offset, count) in plan.guard_reads() {
            if changed.is_some() {
                break;
            }
            let again = link.read(plan.block + offset, count).await?;
            let at = usize::from(offset);
            if regs.get(at..at + usize::from(count)) != Some(&again[..]) {
                changed = Some(format!("registers +{offset}..+{}", offset + count));
            }
        }
        match changed {
            None => {
                return Ok(BlockRead::Whole {
                    regs,
                    marker: after,
                })
            }
            Some(what) => {
                tracing::debug!(source = %plan.cfg.name, attempt, %what, "block changed while read in chunks");
                before = after;
            }
        }
    }
    Ok(BlockRead::Torn {
        attempts: TORN_READ_ATTEMPTS,
    })
}

/// Reads the block and handles a torn outcome: alarmed (once while it lasts, or each time for
/// a read-to-clear flag, whose result is then gone), nothing returned. A whole block clears a
/// standing alarm.
async fn read_guarded(
    link: &mut Link<'_>,
    station: &mpsc::Sender<Input>,
    state: &mut PollState,
    marker: Option<u16>,
) -> Result<Option<(Vec<u16>, Option<u16>)>, BusError> {
    let plan = link.plan;
    match read_block(link, marker).await? {
        BlockRead::Whole { regs, marker } => {
            if std::mem::take(&mut state.torn_reported) {
                let _ = station
                    .send(Input::Event(StationEvent::AlarmCleared {
                        source: plan.cfg.name.clone(),
                        code: "modbus.torn_read".into(),
                    }))
                    .await;
            }
            Ok(Some((regs, marker)))
        }
        BlockRead::Torn { attempts } => {
            let flag = matches!(plan.ready, ReadyPlan::Flag { .. });
            if flag || !state.torn_reported {
                let requests = plan.chunks().len();
                let what = if flag {
                    "the read-to-clear flag is consumed: this result is lost unless the device presents it again"
                } else {
                    "reading it again at the next poll"
                };
                alarm(
                    station,
                    &plan.cfg.name,
                    "modbus.torn_read",
                    Severity::Error,
                    format!("the result block changed while it was read in {requests} requests, {attempts} times in a row: nothing recorded; {what}"),
                )
                .await;
                state.torn_reported = true;
            }
            Ok(None)
        }
    }
}

/// Records a result block, unless it is the last recorded result presented again (agent
/// restart or reconnect between commit and acknowledgement, device reboot): that one is
/// acknowledged with an info alarm and no second record.
///
/// With a `result_id` configured, the device's id decides: the same id is the same result.
/// Without one, equal registers mean the same result only when `known_new` is false; the ready
/// pattern sets it when it proves a new result (a counter moved forward, a completed handshake,
/// a mirrored toggle), because two injectors in a row may well give the very same registers.
async fn store_result(
    plan: &ModbusPlan,
    station: &mpsc::Sender<Input>,
    regs: Vec<u16>,
    last_raw: &mut Option<Vec<u16>>,
    known_new: bool,
) -> Result<(), BusError> {
    let (result, problems) = plan.decode_block(&regs, now_micros());
    let again = match (last_raw.as_deref(), &result.device_result_id) {
        (None, _) => false,
        (Some(prev), Some(id)) => plan.result_id(prev).as_ref() == Some(id),
        (Some(prev), None) => !known_new && prev == regs.as_slice(),
    };
    if again {
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
    state: &mut PollState,
) -> Result<(), BusError> {
    let plan = link.plan;
    match plan.ready {
        ReadyPlan::Handshake { ready, ack } => {
            // The ack may still be set from before a restart: start from the device's state.
            let acked = match state.ack_set {
                Some(a) => a,
                None => link.read_in(Table::Holding, ack, 1).await?[0] != 0,
            };
            state.ack_set = Some(acked);
            let r = link.read(ready, 1).await?[0];
            // Waiting for the device to release the block: check that our ack is still there
            // (a device that rebooted has cleared it and presents the result again).
            let acked = if r != 0 && acked {
                link.read_in(Table::Holding, ack, 1).await?[0] != 0
            } else {
                acked
            };
            if r != 0 && !acked {
                let Some((regs, r)) = read_guarded(link, station, state, Some(r)).await? else {
                    return Ok(());
                };
                // Ready dropped while the block was read again: the device withdrew it.
                if r == Some(0) {
                    return Ok(());
                }
                store_result(plan, station, regs, last_raw, state.delivered).await?;
                state.delivered = false;
                link.write(ack, 1).await?;
                state.ack_set = Some(true);
            } else if r == 0 && acked {
                link.write(ack, 0).await?;
                state.ack_set = Some(false);
                // The device saw our ack and released the result: the handshake is complete.
                state.delivered = true;
            }
        }
        ReadyPlan::Counter { counter } => {
            let c = link.read(counter, 1).await?[0];
            if state.last_counter == Some(c) {
                return Ok(());
            }
            let Some((regs, moved)) = read_guarded(link, station, state, Some(c)).await? else {
                return Ok(());
            };
            // The block goes with the counter as read with it (it may have moved on meanwhile).
            let c = moved.unwrap_or(c);
            // A counter that moved forward announces a new result.
            let known_new = state
                .last_counter
                .is_some_and(|prev| (1..=0x8000).contains(&c.wrapping_sub(prev)));
            if let Some(prev) = state.last_counter {
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
            store_result(plan, station, regs, last_raw, known_new).await?;
            state.last_counter = Some(c);
        }
        ReadyPlan::Flag { flag } => {
            // Reading the flag clears it on the device: the block is read and stored at once.
            let f = link.read(flag, 1).await?[0];
            if f != 0 {
                // From here the device considers the result delivered: if it cannot be read and
                // stored now, it is gone, and the ledger says so.
                let stored = match read_guarded(link, station, state, None).await {
                    // A torn read already raised its own alarm.
                    Ok(None) => Ok(()),
                    Ok(Some((regs, _))) => {
                        store_result(plan, station, regs, last_raw, state.delivered).await
                    }
                    Err(e) => Err(e),
                };
                match stored {
                    Ok(()) => state.delivered = true,
                    Err(e) => {
                        let why = match &e {
                            BusError::Link(m) => m.clone(),
                            BusError::Exception(c) => exception_name(*c),
                            BusError::Stopped => "the agent stopped".into(),
                        };
                        alarm(
                            station,
                            &plan.cfg.name,
                            "modbus.result_lost",
                            Severity::Error,
                            format!("the read-to-clear flag was consumed but the result could not be read and stored ({why}): it is lost unless the device presents it again"),
                        )
                        .await;
                        return Err(e);
                    }
                }
            }
        }
        ReadyPlan::Toggle {
            toggle,
            mirror: mirror_reg,
        } => {
            let t = link.read(toggle, 1).await?[0];
            let m = match state.mirror {
                Some(m) => m,
                None => link.read_in(Table::Holding, mirror_reg, 1).await?[0],
            };
            state.mirror = Some(m);
            if t != m {
                let Some((regs, t)) = read_guarded(link, station, state, Some(t)).await? else {
                    return Ok(());
                };
                // The block goes with the toggle as read with it; flipped back: nothing new.
                let t = t.unwrap_or(m);
                if t == m {
                    return Ok(());
                }
                store_result(plan, station, regs, last_raw, state.delivered).await?;
                link.write(mirror_reg, t).await?;
                state.mirror = Some(t);
                state.delivered = true;
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
    let read = async {
        // A read-to-clear flag is not read: that would consume the device's event.
        let marker = match plan.marker() {
            Some(addr) => Some(link.read(addr, 1).await?[0]),
            None => None,
        };
        read_block(&mut link, marker).await
    };
    match read.await {
        Ok(BlockRead::Whole { regs, .. }) => Ok(regs),
        Ok(BlockRead::Torn { attempts }) => Err(format!(
            "the result block changed while it was read in {} requests, {attempts} times in a row",
            plan.chunks().len()
        )),
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
    fn a_long_block_is_split_into_requests_of_at_most_125_and_guarded_by_what_moves() {
        let example = include_str!("../../config/agent.example.toml");
        let text = example
            .replace("block_registers = 40", "block_registers = 300")
            .replace("result_id = { offset = 18,", "result_id = { offset = 296,");
        let (cfg, _) = AgentConfig::parse(&text).unwrap();
        assert_eq!(cfg.problems(), vec![]);
        let Some(Source::ModbusTcp(m)) = cfg.sources.first() else {
            panic!("example starts with the TCP bench");
        };
        let plan = ModbusPlan::new(m).unwrap();
        assert_eq!(plan.chunks(), vec![(100, 125), (225, 125), (350, 50)]);
        assert_eq!(plan.marker(), Some(98), "the handshake's ready register");
        assert_eq!(plan.guard_reads(), vec![(0, 125), (296, 2)]);

        let mut short = m.clone();
        short.block_registers = 125;
        let plan = ModbusPlan::new(&short).unwrap();
        assert_eq!(plan.chunks(), vec![(100, 125)]);

        let mut flag = m.clone();
        flag.ready = crate::config::Ready::Flag { flag_register: 90 };
        assert_eq!(ModbusPlan::new(&flag).unwrap().marker(), None);
        flag.result_id = None;
        assert!(ModbusPlan::new(&flag).unwrap_err().contains("result_id"));
    }

    #[test]
    fn an_unusable_rtu_reply_is_named_by_what_came() {
        // reference/devices.md: 01 03 00 00 00 0A -> C5 CD (low byte first).
        assert_eq!(crc16(&[1, 3, 0, 0, 0, 0x0A]).to_le_bytes(), [0xC5, 0xCD]);
        let mut reply = vec![1, 3, 4, 0, 1, 0, 2];
        let crc = crc16(&reply).to_le_bytes();
        reply.extend_from_slice(&crc);
        assert_eq!(unusable_reply(&[], 200), None);
        assert_eq!(
            unusable_reply(&reply[..5], 200).unwrap(),
            "reply cut short: 5 of 9 bytes within 200 ms"
        );
        let mut bad = reply.clone();
        bad[8] ^= 0x5a;
        assert!(unusable_reply(&bad, 200)
            .unwrap()
            .starts_with("reply with a bad CRC (9 bytes)"));
        assert_eq!(unusable_reply(&reply, 200), None);
        assert!(unusable_reply(&[1, 0x42, 7], 200)
            .unwrap()
            .starts_with("unreadable reply (3 bytes"));
    }

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
