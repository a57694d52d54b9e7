//! One Modbus source at work: connect (or join its RTU line), run the result-ready pattern,
//! read the result block (behind the torn-read guard when it is split), hand the result to the
//! station and acknowledge the device only once the record is durable.

use std::sync::Arc;
use std::time::Duration;

use proofline_common::alarm::AlarmCode;
use proofline_common::backoff::Backoff;
use proofline_common::record::{now_micros, Severity, StationEvent};
use tokio::sync::{mpsc, oneshot};
use tokio_modbus::client::Context;
use tokio_modbus::Slave;
use tokio_util::sync::CancellationToken;

use super::bus::{exception_name, BusError, BusHandle, Conn, Link, RtuBus, RtuLine};
use super::{ModbusLink, ModbusPlan, ReadyPlan, TORN_READ_ATTEMPTS};
use crate::config::Table;
use crate::station::{alarm, DeviceResult, Input, Metrics};

/// One Modbus source: over its own TCP connection, or as a unit of the RTU line behind `bus`.
#[derive(Debug)]
pub struct ModbusSource {
    pub plan: ModbusPlan,
    /// The RTU line's handle; None for a TCP source.
    pub bus: Option<BusHandle>,
    pub station: mpsc::Sender<Input>,
    /// The raw registers of this source's last recorded result (from the ledger's tail): a block
    /// presented again after a restart is not recorded twice.
    pub last_raw: Option<Vec<u16>>,
    pub metrics: Arc<Metrics>,
    /// The route interlock's output on this device, if it is this source's to write.
    pub gate: Option<Gate>,
}

/// Where the interlock gate goes on the device, and the gate to show.
pub type Gate = (
    crate::interlock::GateTarget,
    tokio::sync::watch::Receiver<crate::interlock::Gate>,
);

impl ModbusSource {
    /// Runs the source until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let ModbusSource {
            plan,
            bus,
            station,
            last_raw,
            metrics,
            mut gate,
        } = self;
        run_source(plan, bus, station, last_raw, metrics, &mut gate, shutdown).await
    }
}

async fn run_source(
    plan: ModbusPlan,
    bus: Option<BusHandle>,
    station: mpsc::Sender<Input>,
    mut last_raw: Option<Vec<u16>>,
    metrics: Arc<Metrics>,
    gate: &mut Option<Gate>,
    shutdown: CancellationToken,
) {
    let name = plan.cfg.name.clone();
    // The result counter as last read, kept across reconnects: results counted during an outage
    // are missed results and get their alarm.
    let mut last_counter: Option<u16> = None;
    let address = match &plan.link {
        ModbusLink::Rtu(line) => format!("{} (RTU)", line.port.path.display()),
        ModbusLink::Tcp { address } => address.clone(),
    };
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
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
                    sleep(&shutdown, backoff.next_delay()).await;
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
                    sleep(&shutdown, backoff.next_delay()).await;
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
                    sleep(&shutdown, backoff.next_delay()).await;
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
            gate,
        )
        .await;
        set_up(false);
        match reason {
            BusError::Stopped => break,
            BusError::Link(e) => {
                report_down(&station, &name, &mut down_reported, e).await;
                sleep(&shutdown, backoff.next_delay()).await;
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
    gate: &mut Option<Gate>,
) -> BusError {
    let plan = link.plan;
    let name = plan.cfg.name.clone();
    let poll = Duration::from_millis(plan.cfg.poll_interval_ms);
    let mut last_exception: Option<String> = None;
    let mut state = PollState {
        last_counter: *last_counter,
        ..PollState::default()
    };
    // The gate is written on every new connection (the device may have restarted), then on
    // every change.
    let mut gate_written = false;
    loop {
        if let Some((target, rx)) = gate.as_mut() {
            if !gate_written || rx.has_changed().unwrap_or(false) {
                let g = rx.borrow_and_update().clone();
                match write_gate(link, *target, &g).await {
                    Ok(()) => gate_written = true,
                    Err(BusError::Exception(code)) => {
                        gate_written = true;
                        alarm(
                            station,
                            &name,
                            AlarmCode::ModbusException,
                            Severity::Error,
                            format!(
                                "the interlock output is refused: {}; check interlock.output",
                                exception_name(code)
                            ),
                        )
                        .await;
                    }
                    Err(other) => return other,
                }
            }
        }
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
                            code: AlarmCode::ModbusException.as_str().into(),
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
                        AlarmCode::ModbusException,
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

async fn write_gate(
    link: &mut Link<'_>,
    target: crate::interlock::GateTarget,
    g: &crate::interlock::Gate,
) -> Result<(), BusError> {
    let (value, on) = g.register_value(target);
    match target {
        crate::interlock::GateTarget::Register { addr, .. } => link.write(addr, value).await,
        crate::interlock::GateTarget::Coil { addr } => link.write_coil(addr, on).await,
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
                        code: AlarmCode::ModbusTornRead.as_str().into(),
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
                    AlarmCode::ModbusTornRead,
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
            AlarmCode::ModbusResultPresentedAgain,
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
            AlarmCode::ModbusDecode,
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
    match link.plan.ready {
        ReadyPlan::Handshake { ready, ack } => {
            poll_handshake(link, station, last_raw, state, ready, ack).await
        }
        ReadyPlan::Counter { counter } => {
            poll_counter(link, station, last_raw, state, counter).await
        }
        ReadyPlan::Flag { flag } => poll_flag(link, station, last_raw, state, flag).await,
        ReadyPlan::Toggle { toggle, mirror } => {
            poll_toggle(link, station, last_raw, state, toggle, mirror).await
        }
    }
}

/// Four-phase handshake: ready set by the device, ack written back once the record is durable,
/// released when the device drops ready.
async fn poll_handshake(
    link: &mut Link<'_>,
    station: &mpsc::Sender<Input>,
    last_raw: &mut Option<Vec<u16>>,
    state: &mut PollState,
    ready: u16,
    ack: u16,
) -> Result<(), BusError> {
    let plan = link.plan;
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
    Ok(())
}

/// A result counter: each new value is a new result; a jump over one means missed results.
async fn poll_counter(
    link: &mut Link<'_>,
    station: &mpsc::Sender<Input>,
    last_raw: &mut Option<Vec<u16>>,
    state: &mut PollState,
    counter: u16,
) -> Result<(), BusError> {
    let plan = link.plan;
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
                AlarmCode::DeviceRestarted,
                Severity::Warning,
                format!("result counter went back from {prev} to {c}: the device restarted"),
            )
            .await;
        } else if delta > 1 {
            alarm(
                station,
                &plan.cfg.name,
                AlarmCode::ModbusMissedResults,
                Severity::Error,
                format!(
                    "result counter jumped from {prev} to {c}: {} result(s) were never read",
                    delta - 1
                ),
            )
            .await;
        }
    }
    store_result(plan, station, regs, last_raw, known_new).await?;
    state.last_counter = Some(c);
    Ok(())
}

/// A read-to-clear flag: reading it consumes the event, so the block is read and stored at once.
async fn poll_flag(
    link: &mut Link<'_>,
    station: &mpsc::Sender<Input>,
    last_raw: &mut Option<Vec<u16>>,
    state: &mut PollState,
    flag: u16,
) -> Result<(), BusError> {
    let plan = link.plan;
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
                    AlarmCode::ModbusResultLost,
                    Severity::Error,
                    format!("the read-to-clear flag was consumed but the result could not be read and stored ({why}): it is lost unless the device presents it again"),
                )
                .await;
                return Err(e);
            }
        }
    }
    Ok(())
}

/// A toggle bit flipped per result, mirrored back once the record is durable.
async fn poll_toggle(
    link: &mut Link<'_>,
    station: &mpsc::Sender<Input>,
    last_raw: &mut Option<Vec<u16>>,
    state: &mut PollState,
    toggle: u16,
    mirror_reg: u16,
) -> Result<(), BusError> {
    let plan = link.plan;
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
    Ok(())
}

/// Reads the source's result block once (for `probe`), over TCP or on its RTU line.
pub async fn read_block_once(plan: &ModbusPlan) -> Result<Vec<u16>, String> {
    let shutdown = CancellationToken::new();
    let mut rtu_bus = None;
    let conn = match &plan.link {
        ModbusLink::Rtu(line) => {
            let (bus, handle) = RtuBus::new(RtuLine {
                pause: Duration::ZERO,
                ..line.clone()
            });
            rtu_bus = Some(bus);
            Conn::Rtu {
                bus: handle,
                unit: plan.cfg.unit_id,
            }
        }
        ModbusLink::Tcp { address } => {
            let timeout = Duration::from_millis(plan.cfg.timeout_ms);
            match tokio::time::timeout(timeout, connect(address, plan.cfg.unit_id)).await {
                Ok(Ok(ctx)) => Conn::Tcp(ctx),
                Ok(Err(e)) => return Err(format!("cannot connect to {address}: {e}")),
                Err(_) => {
                    return Err(format!(
                        "no connection to {address} within {} ms",
                        plan.cfg.timeout_ms
                    ))
                }
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
    let read = async {
        let r = read.await;
        // The RTU line's task, run beside this read, ends with it.
        shutdown.cancel();
        r
    };
    let serve = async {
        if let Some(bus) = rtu_bus {
            bus.run(shutdown.clone()).await;
        }
    };
    let (read, ()) = tokio::join!(read, serve);
    match read {
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
