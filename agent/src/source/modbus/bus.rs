//! The link to a Modbus device: its own TCP connection, or its unit on a shared RTU line whose
//! port one task owns ([`run_bus`]).
//!
//! Invariants: every request has a timeout; after a timeout or a transport error the TCP
//! connection or the serial port is dropped and rebuilt (a late reply would otherwise be taken
//! as the next request's answer); a device exception keeps the link. A unit that does not answer
//! costs only its own timeouts: the others on its line keep being served.

use std::sync::Arc;
use std::time::Duration;

use proofline_common::backoff::Backoff;
use tokio::sync::{mpsc, oneshot};
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::{ExceptionCode, Slave};
use tokio_util::sync::CancellationToken;

use super::ModbusPlan;
use crate::config::Table;
use crate::source::port::SerialSettings;

/// Why a bus call failed.
#[derive(Debug)]
pub(super) enum BusError {
    /// Timeout or transport failure: drop the connection and reconnect.
    Link(String),
    /// The device answered with an exception: report, keep the connection.
    Exception(ExceptionCode),
    /// Shutting down.
    Stopped,
}

pub(super) fn exception_name(e: ExceptionCode) -> String {
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

/// How a source reaches its device: its own TCP connection, or its unit on a shared RTU line
/// whose port is owned by a [`run_bus`] task.
pub(super) enum Conn {
    Tcp(Context),
    Rtu { bus: BusHandle, unit: u8 },
}

pub(super) struct Link<'a> {
    pub(super) plan: &'a ModbusPlan,
    pub(super) conn: Conn,
    pub(super) shutdown: &'a CancellationToken,
}

fn link_error(timeout_ms: u64, e: Option<String>) -> BusError {
    BusError::Link(e.unwrap_or_else(|| format!("no reply within {timeout_ms} ms")))
}

/// A Modbus call's outcome within its timeout: no reply or a transport error is a link error,
/// a device exception is reported as one.
fn settle<T, E: std::fmt::Display>(
    r: Result<Result<Result<T, ExceptionCode>, E>, tokio::time::error::Elapsed>,
    timeout_ms: u64,
) -> Result<T, BusError> {
    match r {
        Err(_) => Err(link_error(timeout_ms, None)),
        Ok(Err(e)) => Err(link_error(timeout_ms, Some(e.to_string()))),
        Ok(Ok(Err(code))) => Err(BusError::Exception(code)),
        Ok(Ok(Ok(v))) => Ok(v),
    }
}

impl Link<'_> {
    /// Reads from the source's table (holding or input registers).
    pub(super) async fn read(&mut self, addr: u16, count: u16) -> Result<Vec<u16>, BusError> {
        self.read_in(self.plan.cfg.table, addr, count).await
    }

    pub(super) async fn read_in(
        &mut self,
        table: Table,
        addr: u16,
        count: u16,
    ) -> Result<Vec<u16>, BusError> {
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

    /// Writes one holding register (function 6).
    pub(super) async fn write(&mut self, addr: u16, value: u16) -> Result<(), BusError> {
        self.write_op(BusOp::Write { addr, value }).await
    }

    /// Writes one coil (function 5).
    pub(super) async fn write_coil(&mut self, addr: u16, on: bool) -> Result<(), BusError> {
        self.write_op(BusOp::WriteCoil { addr, on }).await
    }

    async fn write_op(&mut self, op: BusOp) -> Result<(), BusError> {
        let timeout_ms = self.plan.cfg.timeout_ms;
        match &mut self.conn {
            Conn::Tcp(ctx) => {
                let call = async {
                    match op {
                        BusOp::Write { addr, value } => {
                            ctx.write_single_register(addr, value).await
                        }
                        BusOp::WriteCoil { addr, on } => ctx.write_single_coil(addr, on).await,
                        BusOp::Read { .. } => unreachable!("reads go through read_in"),
                    }
                };
                tokio::select! {
                    () = self.shutdown.cancelled() => Err(BusError::Stopped),
                    r = tokio::time::timeout(Duration::from_millis(timeout_ms), call) => settle(r, timeout_ms),
                }
            }
            Conn::Rtu { bus, unit } => bus
                .call(*unit, op, timeout_ms, self.shutdown)
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
    WriteCoil { addr: u16, on: bool },
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

/// An RTU line: its port settings and the pause its devices need between requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtuLine {
    pub port: SerialSettings,
    pub pause: Duration,
}

/// The task that owns an RTU line; its sources reach it through [`BusHandle`]s.
#[derive(Debug)]
pub struct RtuBus {
    line: RtuLine,
    requests: mpsc::Receiver<BusRequest>,
}

impl RtuBus {
    /// The bus for `line` and the handle its sources share.
    pub fn new(line: RtuLine) -> (RtuBus, BusHandle) {
        let (tx, requests) = mpsc::channel(64);
        (RtuBus { line, requests }, BusHandle { tx })
    }

    /// Serves the line until `shutdown` or until every handle is gone.
    pub async fn run(self, shutdown: CancellationToken) {
        run_bus(self.line, self.requests, shutdown).await
    }
}

/// Owns one serial port and serves its units' requests one at a time, with the configured
/// pause between requests. After a timeout or a transport error the port is closed and reopened
/// (a late reply would otherwise be taken as the next request's answer). A unit that does not
/// answer costs only its own timeouts: its source backs off, the others keep being served.
async fn run_bus(line: RtuLine, mut rx: mpsc::Receiver<BusRequest>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    'port: while !shutdown.is_cancelled() {
        let stream = match crate::source::port::open_port(&line.port) {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("cannot open {}: {e}", line.port.path.display());
                tracing::warn!(port = %line.port.path.display(), error = %e, "RTU line unavailable");
                // Answer what is waiting, so sources report it and back off.
                let wait = backoff.next_delay();
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
            tracing::debug!(port = %line.port.path.display(), error = %e, "cannot discard unread input");
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
                BusOp::Write { addr, value } => settle(
                    tokio::time::timeout(timeout, ctx.write_single_register(addr, value)).await,
                    req.timeout_ms,
                )
                .map(|()| BusReply::Written),
                BusOp::WriteCoil { addr, on } => settle(
                    tokio::time::timeout(timeout, ctx.write_single_coil(addr, on)).await,
                    req.timeout_ms,
                )
                .map(|()| BusReply::Written),
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
pub(super) fn crc16(bytes: &[u8]) -> u16 {
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
pub(super) fn unusable_reply(heard: &[u8], timeout_ms: u64) -> Option<String> {
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
