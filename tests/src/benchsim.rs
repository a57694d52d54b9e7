//! A simulated injector flow-test bench on Modbus TCP with the four-phase handshake.
//!
//! Register map (holding registers, wire addresses) — the one `config/agent.example.toml`
//! describes for its `flow-bench` source:
//!
//! | registers | content |
//! |---|---|
//! | 98 | ready: 1 while a result is frozen in the block |
//! | 99 | ack: written by the agent after it stored the result |
//! | 100–101, 102–103, 104–105, 106–107 | full load, idle, pilot, back-leak (f32 ABCD, mm³/stroke) |
//! | 108 | fluid temperature (i16, 0.1 °C) |
//! | 118–119 | result counter (u32 ABCD) |
//! | 120–132 | tested injector's UII (ASCII, 2 chars per register) |
//! | 133–137, 138 | test plan id, revision (ASCII) |
//!
//! With [`BenchOptions::block_registers`] over 40 the block goes on (`n` registers in all,
//! more than one request can read when over 125):
//!
//! | registers | content |
//! |---|---|
//! | 109 | block revision: 0, raised each time a misbehaving bench rewrites a presented block |
//! | 140 … 100+n−4 | delivery trace, one sample per register (u16, 0.01 mm³/stroke) |
//! | 100+n−3 | block revision again |
//! | 100+n−2 … 100+n−1 | result counter again (u32 ABCD) |
//!
//! Cycle: the bench writes a result, sets ready; when the agent sets ack it clears ready; when
//! ack is cleared it starts the next test. Every result it produced is kept in
//! [`FlowBench::produced`] so tests can compare what the agent recorded.
//!
//! Faults: [`FlowBench::tear_reads`] makes the bench rewrite its presented block right after
//! serving a read of the block's first registers that does not cover the whole block, as a
//! bench that breaks the handshake's promise to freeze it would: a reader that reads the block
//! in several requests gets the start of one version and the rest of the next.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Request, Response};

pub const READY: usize = 98;
pub const ACK: usize = 99;
/// The bench's interlock input (written by the station's route interlock): 1 released, 2 held,
/// 0 idle.
pub const INTERLOCK: usize = 97;
/// Coils the bench has (its interlock can be wired to one).
pub const COILS: usize = 16;
pub const BLOCK: usize = 100;
pub const BLOCK_LEN: usize = 40;
/// Offset of the block revision in the block (and, in a long block, 3 from its end).
pub const REVISION: usize = 9;
const REGISTERS: usize = 200;

/// One result the bench produced.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchResult {
    pub counter: u32,
    pub uii: String,
    pub full_load: f32,
    pub idle: f32,
    pub pilot: f32,
    pub back_leak: f32,
    pub temperature_tenths: i16,
    /// The block as the agent should read it.
    pub block: Vec<u16>,
}

#[derive(Debug, Default)]
struct State {
    regs: Vec<u16>,
    coils: [bool; COILS],
    /// Writes to the interlock register or a coil, in order.
    interlock_writes: u32,
    produced: Vec<BenchResult>,
    counter: u32,
    /// Refuse requests with this exception (fault injection).
    exception: Option<ExceptionCode>,
    /// Never answer (a hung device or a cut cable).
    stalled: bool,
    /// Results the bench may produce in all.
    limit: u32,
    /// Registers in the result block.
    block_len: usize,
    /// Reads of the block's first registers still to be followed by a rewrite.
    tears_left: u32,
    /// Rewrites done.
    tears: u32,
}

/// Options for the simulated bench.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Time between the end of one handshake and the next result.
    pub cycle: Duration,
    /// Stop after this many results (see [`FlowBench::allow`]).
    pub results: u32,
    /// Every `nok_every`-th part has an out-of-limit full-load delivery (0: never).
    pub nok_every: u32,
    /// UII of the n-th part.
    pub uii: fn(u32) -> String,
    /// Registers in the result block: 40, or more for a block with a delivery trace.
    pub block_registers: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            cycle: Duration::from_millis(5),
            results: 10,
            nok_every: 7,
            uii: |n| format!("D1ABC57734-0012{:06}", n),
            block_registers: BLOCK_LEN,
        }
    }
}

/// A running simulated bench.
#[derive(Debug, Clone)]
pub struct FlowBench {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

fn put_f32(regs: &mut [u16], at: usize, v: f32) {
    let b = v.to_be_bytes();
    regs[at] = u16::from_be_bytes([b[0], b[1]]);
    regs[at + 1] = u16::from_be_bytes([b[2], b[3]]);
}

/// The delivery trace sample `i` of result `n` at block revision `rev`.
fn trace_sample(n: u32, i: usize, rev: u16) -> u16 {
    6_000 + ((n as usize * 31 + i * 7) % 500) as u16 + rev
}

/// Writes the registers a long block has beyond the first 40.
fn put_long_tail(regs: &mut [u16], len: usize, n: u32, rev: u16) {
    if len <= BLOCK_LEN {
        return;
    }
    regs[BLOCK + REVISION] = rev;
    for i in BLOCK_LEN..len - 3 {
        regs[BLOCK + i] = trace_sample(n, i, rev);
    }
    regs[BLOCK + len - 3] = rev;
    regs[BLOCK + len - 2] = (n >> 16) as u16;
    regs[BLOCK + len - 1] = n as u16;
}

fn put_text(regs: &mut [u16], at: usize, len: usize, s: &str) {
    let mut bytes = s.as_bytes().to_vec();
    bytes.resize(len * 2, 0);
    for i in 0..len {
        regs[at + i] = u16::from_be_bytes([bytes[2 * i], bytes[2 * i + 1]]);
    }
}

fn new_state(opts: &BenchOptions) -> Arc<Mutex<State>> {
    Arc::new(Mutex::new(State {
        regs: vec![0; REGISTERS.max(BLOCK + opts.block_registers)],
        limit: opts.results,
        block_len: opts.block_registers,
        ..State::default()
    }))
}

impl FlowBench {
    /// Starts the bench on 127.0.0.1, port 0. It stops when the runtime does.
    pub async fn start(opts: BenchOptions) -> std::io::Result<FlowBench> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = new_state(&opts);
        let service = Service(Arc::clone(&state));
        tokio::spawn(async move {
            let server = Server::new(listener);
            let on_connected = |stream, _addr| {
                let service = service.clone();
                async move { Ok(Some((service, stream))) }
            };
            let _ = server.serve(&on_connected, |_err| {}).await;
        });
        tokio::spawn(cycle(Arc::clone(&state), opts));
        Ok(FlowBench { addr, state })
    }

    /// Starts the bench as Modbus RTU unit `unit` on `serial` (one end of a pty pair); requests
    /// to other units are not answered, as on a shared RS-485 line.
    pub fn start_rtu(
        opts: BenchOptions,
        serial: tokio_serial::SerialStream,
        unit: u8,
    ) -> FlowBench {
        let state = new_state(&opts);
        let service = RtuService {
            inner: Service(Arc::clone(&state)),
            unit,
        };
        tokio::spawn(async move {
            let _ = tokio_modbus::server::rtu::Server::new(serial)
                .serve_forever(service)
                .await;
        });
        tokio::spawn(cycle(Arc::clone(&state), opts));
        FlowBench {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            state,
        }
    }

    /// The agent's `[[source]]` table for a bench of this kind reached at `addr` (Modbus TCP,
    /// its register map, the flow-test characteristics and their limits).
    pub fn source_toml(addr: SocketAddr, poll_interval_ms: u64, timeout_ms: u64) -> String {
        Self::source_toml_for_block(addr, poll_interval_ms, timeout_ms, BLOCK_LEN)
    }

    /// [`FlowBench::source_toml`] for a bench started with `block_registers`: a long block
    /// adds the last trace sample as a point and takes the result id from the block's end.
    pub fn source_toml_for_block(
        addr: SocketAddr,
        poll_interval_ms: u64,
        timeout_ms: u64,
        block_registers: usize,
    ) -> String {
        let (result_id, tail) = if block_registers > BLOCK_LEN {
            (
                block_registers - 2,
                format!(
                    r#"
[[source.point]]
name = "trace_end"
offset = {}
type = "u16"
scale = 0.01
unit = "mm3/stroke"
"#,
                    block_registers - 4
                ),
            )
        } else {
            (18, String::new())
        };
        format!(
            r#"
[[source]]
name = "flow-bench"
type = "modbus_tcp"
address = "{addr}"
unit_id = 1
device = "EPS815-SIM"
timeout_ms = {timeout_ms}
poll_interval_ms = {poll_interval_ms}
addressing = "zero_based"
block_start = 100
block_registers = {block_registers}
ready = {{ pattern = "handshake", ready_register = 98, ack_register = 99 }}
identifier = {{ offset = 20, registers = 13 }}
test_plan_id = {{ offset = 33, registers = 5 }}
test_plan_revision = {{ offset = 38, registers = 1 }}
result_id = {{ offset = {result_id}, type = "u32" }}

[[source.point]]
name = "full_load_delivery"
offset = 0
type = "f32"
unit = "mm3/stroke"
nominal = 62.0
lower = 60.14
upper = 63.86

[[source.point]]
name = "idle_delivery"
offset = 2
type = "f32"
unit = "mm3/stroke"
nominal = 4.1
lower = 3.9
upper = 4.3

[[source.point]]
name = "pilot_delivery"
offset = 4
type = "f32"
unit = "mm3/stroke"
nominal = 1.5
lower = 1.0
upper = 2.0

[[source.point]]
name = "back_leak"
offset = 6
type = "f32"
unit = "mm3/stroke"
upper = 35.0

[[source.point]]
name = "fluid_temperature"
offset = 8
type = "i16"
scale = 0.1
unit = "degC"
{tail}"#
        )
    }

    /// The interlock register as last written.
    pub fn interlock(&self) -> u16 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).regs[INTERLOCK]
    }

    /// Coil `n` as last written.
    pub fn coil(&self, n: usize) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).coils[n]
    }

    /// Writes to the interlock register and coils so far.
    pub fn interlock_writes(&self) -> u32 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .interlock_writes
    }

    /// Results produced so far.
    pub fn produced(&self) -> Vec<BenchResult> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .produced
            .clone()
    }

    /// Results the agent acknowledged (the handshake of each completed).
    pub fn acknowledged(&self) -> u32 {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let pending = s.regs[READY] != 0 || s.regs[ACK] != 0;
        s.counter - u32::from(pending)
    }

    /// From now on every request is answered with `code` (until cleared with `None`).
    pub fn set_exception(&self, code: Option<ExceptionCode>) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .exception = code;
    }

    /// Lets the bench produce results up to `n` in all (tests pace it part by part).
    pub fn allow(&self, n: u32) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).limit = n;
    }

    /// While stalled the bench answers nothing (requests time out); results are kept.
    pub fn set_stalled(&self, stalled: bool) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stalled = stalled;
    }

    /// The next `n` reads of the block's first registers that do not cover the whole block are
    /// each followed by a rewrite of the presented block (its revision and trace change), as
    /// long as a result is presented. `u32::MAX`: until told otherwise; 0: stop.
    pub fn tear_reads(&self, n: u32) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tears_left = n;
    }

    /// Rewrites done by [`FlowBench::tear_reads`] so far.
    pub fn tears(&self) -> u32 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).tears
    }

    /// Simulates a reboot in the middle of a result: the handshake registers are cleared and
    /// the interrupted result is presented again from scratch (same counter and values).
    pub fn reboot(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.regs[ACK] = 0;
        s.regs[READY] = 0;
        let len = s.block_len;
        if let Some(last) = s.produced.last().cloned() {
            s.regs[BLOCK..BLOCK + len].copy_from_slice(&last.block);
            s.regs[READY] = 1;
        }
    }
}

async fn cycle(state: Arc<Mutex<State>>, opts: BenchOptions) {
    let mut n = 0u32;
    loop {
        tokio::time::sleep(opts.cycle).await;
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        let (ready, ack) = (s.regs[READY], s.regs[ACK]);
        match (ready, ack) {
            // Idle: start the next test.
            (0, 0) => {
                if n >= s.limit {
                    continue;
                }
                n += 1;
                let j = ((n.wrapping_mul(2_654_435_761) >> 8) % 1000) as f32 / 1000.0 - 0.5;
                let full_load = if opts.nok_every > 0 && n % opts.nok_every == 0 {
                    66.5
                } else {
                    62.0 + 2.0 * j
                };
                let r = BenchResult {
                    counter: n,
                    uii: (opts.uii)(n),
                    full_load,
                    idle: 4.1 + 0.2 * j,
                    pilot: 1.5 + 0.4 * j,
                    back_leak: 20.0 + 10.0 * j,
                    temperature_tenths: 400 + (j * 10.0) as i16,
                    block: Vec::new(),
                };
                let regs = &mut s.regs;
                put_f32(regs, BLOCK, r.full_load);
                put_f32(regs, BLOCK + 2, r.idle);
                put_f32(regs, BLOCK + 4, r.pilot);
                put_f32(regs, BLOCK + 6, r.back_leak);
                regs[BLOCK + 8] = r.temperature_tenths as u16;
                regs[BLOCK + 18] = (n >> 16) as u16;
                regs[BLOCK + 19] = n as u16;
                put_text(regs, BLOCK + 20, 13, &r.uii);
                put_text(regs, BLOCK + 33, 5, "TP-0445");
                put_text(regs, BLOCK + 38, 1, "C");
                let len = s.block_len;
                put_long_tail(&mut s.regs, len, n, 0);
                let block = s.regs[BLOCK..BLOCK + len].to_vec();
                s.counter = n;
                s.produced.push(BenchResult { block, ..r });
                s.regs[READY] = 1;
            }
            // The agent stored the result: release the block.
            (1, 1) => s.regs[READY] = 0,
            _ => {}
        }
    }
}

/// Rewrites the presented block as its next revision (a bench that does not keep it frozen).
fn rewrite_presented(s: &mut State) {
    s.tears_left -= 1;
    s.tears += 1;
    let (n, len) = (s.counter, s.block_len);
    let rev = s.regs[BLOCK + REVISION].wrapping_add(1);
    put_long_tail(&mut s.regs, len, n, rev);
    let block = s.regs[BLOCK..BLOCK + len].to_vec();
    if let Some(last) = s.produced.last_mut() {
        last.block = block;
    }
}

#[derive(Debug, Clone)]
struct Service(Arc<Mutex<State>>);

impl tokio_modbus::server::Service for Service {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.stalled {
            return Box::pin(std::future::pending());
        }
        let r = if let Some(code) = s.exception {
            Err(code)
        } else {
            match req {
                Request::ReadHoldingRegisters(addr, cnt) => {
                    let (a, c) = (usize::from(addr), usize::from(cnt));
                    let r = match s.regs.get(a..a + c) {
                        Some(v) => Ok(Response::ReadHoldingRegisters(v.to_vec())),
                        None => Err(ExceptionCode::IllegalDataAddress),
                    };
                    if a == BLOCK && c < s.block_len && s.tears_left > 0 && s.regs[READY] != 0 {
                        rewrite_presented(&mut s);
                    }
                    r
                }
                Request::WriteSingleRegister(addr, value) => {
                    let a = usize::from(addr);
                    if a == ACK || a == INTERLOCK {
                        s.regs[a] = value;
                        if a == INTERLOCK {
                            s.interlock_writes += 1;
                        }
                        Ok(Response::WriteSingleRegister(addr, value))
                    } else {
                        Err(ExceptionCode::IllegalDataAddress)
                    }
                }
                Request::WriteSingleCoil(addr, on) => match s.coils.get_mut(usize::from(addr)) {
                    Some(c) => {
                        *c = on;
                        s.interlock_writes += 1;
                        Ok(Response::WriteSingleCoil(addr, on))
                    }
                    None => Err(ExceptionCode::IllegalDataAddress),
                },
                _ => Err(ExceptionCode::IllegalFunction),
            }
        };
        Box::pin(std::future::ready(r))
    }
}

#[derive(Debug, Clone)]
struct RtuService {
    inner: Service,
    unit: u8,
}

impl tokio_modbus::server::Service for RtuService {
    type Request = tokio_modbus::SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        if req.slave != self.unit {
            return Box::pin(std::future::ready(Ok(None)));
        }
        let fut = tokio_modbus::server::Service::call(&self.inner, req.request);
        Box::pin(async move { fut.await.map(Some) })
    }
}
