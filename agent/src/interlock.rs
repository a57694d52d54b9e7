//! The route interlock, station side (optional, `[interlock]`): after each accepted part scan
//! the station asks the hub, over its MQTT session, whether the part may be tested here, and
//! shows the answer to the bench or the operator.
//!
//! - The question is signed by the station key with a new message id; only an answer signed by
//!   the hub key for this station, that id and that UII is taken (`forward::link`).
//! - While the question is open the output holds the bench. The decision is recorded in the
//!   ledger (`StationEvent::Interlock`, with the hub's signed answer verbatim) and only once it
//!   is durable does the output release the bench: a decision nobody can audit releases nothing.
//! - No answer within `timeout_ms` (hub or broker down, hub too busy): `on_unreachable` decides,
//!   `block` (hold) or `allow_and_flag` (release; the hub raises `interlock_bypassed` when the
//!   record reaches it). The outcome is recorded either way.
//! - The output follows the current part: released only while the allowed part is current at
//!   the station; another scan, a scan timeout or a consumed scan holds the bench again.
//!   Outputs: a holding register or a coil of one of the station's Modbus sources (written by
//!   the task that owns that connection, again after every reconnect), or a line on a serial
//!   display.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proofline_common::backoff::Backoff;
use proofline_common::config::Problems;
use proofline_common::record::{InterlockDecision, InterlockOutcome, StationEvent};
use proofline_common::wire::{Clearance, ClearanceBody};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Addressing, Source, Table};
use crate::source::port::SerialSettings;
use crate::station::Input;

/// `[interlock]` in agent.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterlockSection {
    /// How long the station waits for the hub's answer.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// When no answer comes in time: `block` or `allow_and_flag`. Stated, never defaulted.
    pub on_unreachable: Policy,
    pub output: OutputSection,
}

fn default_timeout_ms() -> u64 {
    3_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    Block,
    AllowAndFlag,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Block => "block",
            Policy::AllowAndFlag => "allow_and_flag",
        }
    }
}

/// Where the answer goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputSection {
    /// A holding register of a Modbus source of this station (the bench's interlock input),
    /// in that source's addressing.
    ModbusRegister {
        source: String,
        register: u32,
        #[serde(default = "one")]
        released_value: u16,
        #[serde(default = "two")]
        held_value: u16,
        #[serde(default)]
        idle_value: u16,
    },
    /// A coil of a Modbus source of this station: on = released (`one_based`: coil 1 is wire
    /// address 0).
    ModbusCoil { source: String, coil: u32 },
    /// A line per decision on a serial display (ASCII, CR LF).
    SerialDisplay {
        port: PathBuf,
        #[serde(default = "default_display_baud")]
        baud: u32,
        #[serde(default = "default_display_frame")]
        frame: String,
    },
}

fn one() -> u16 {
    1
}
fn two() -> u16 {
    2
}
fn default_display_baud() -> u32 {
    9_600
}
fn default_display_frame() -> String {
    "8N1".into()
}

/// How a Modbus source shows the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateTarget {
    Register {
        addr: u16,
        released: u16,
        held: u16,
        idle: u16,
    },
    Coil {
        addr: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputPlan {
    /// Written by the Modbus source named.
    Modbus {
        source: String,
        target: GateTarget,
    },
    Display(SerialSettings),
}

/// `[interlock]`, checked.
#[derive(Debug, Clone)]
pub struct InterlockPlan {
    pub timeout: Duration,
    pub policy: Policy,
    pub output: OutputPlan,
}

impl InterlockSection {
    /// Checks the section against the station's sources and hub; the plan when all is well.
    pub fn plan(
        &self,
        sources: &[Source],
        has_hub: bool,
        p: &mut Problems,
    ) -> Option<InterlockPlan> {
        let before = p.0.len();
        if !has_hub {
            p.add(
                "interlock",
                "the interlock asks the hub: it needs a [hub] section",
            );
        }
        if !(100..=30_000).contains(&self.timeout_ms) {
            p.add("interlock.timeout_ms", "must be 100 to 30000");
        }
        if !sources.iter().any(|s| matches!(s, Source::Scanner(_))) {
            p.add(
                "interlock",
                "the station has no scanner source: no part scan would ever be asked about",
            );
        }
        let modbus = |name: &str, p: &mut Problems| {
            let found = sources.iter().find_map(|s| match s {
                Source::ModbusTcp(m) | Source::ModbusRtu(m) if m.name == name => Some(m),
                _ => None,
            });
            if found.is_none() {
                p.add(
                    "interlock.output.source",
                    format!("{name:?} is not a Modbus source of this station"),
                );
            }
            found
        };
        let output = match &self.output {
            OutputSection::ModbusRegister {
                source,
                register,
                released_value,
                held_value,
                idle_value,
            } => {
                let m = modbus(source, p);
                if released_value == held_value || released_value == idle_value {
                    p.add(
                        "interlock.output.released_value",
                        "must differ from held_value and idle_value",
                    );
                }
                m.and_then(|m| {
                    match crate::config::wire_address(m.addressing, Table::Holding, *register) {
                        Ok(addr) => Some(OutputPlan::Modbus {
                            source: source.clone(),
                            target: GateTarget::Register {
                                addr,
                                released: *released_value,
                                held: *held_value,
                                idle: *idle_value,
                            },
                        }),
                        Err(e) => {
                            p.add("interlock.output.register", e);
                            None
                        }
                    }
                })
            }
            OutputSection::ModbusCoil { source, coil } => modbus(source, p).and_then(|m| {
                let addr = match m.addressing {
                    Addressing::ZeroBased => u16::try_from(*coil).ok(),
                    Addressing::OneBased => coil.checked_sub(1).and_then(|c| u16::try_from(c).ok()),
                };
                match addr {
                    Some(addr) => Some(OutputPlan::Modbus {
                        source: source.clone(),
                        target: GateTarget::Coil { addr },
                    }),
                    None => {
                        p.add(
                            "interlock.output.coil",
                            format!("{coil} is not a coil address in the source's addressing"),
                        );
                        None
                    }
                }
            }),
            OutputSection::SerialDisplay { port, baud, frame } => {
                let used = sources.iter().any(|s| match s {
                    Source::SerialLine(l) => &l.port == port,
                    Source::Scanner(sc) => &sc.port == port,
                    Source::ModbusRtu(m) => m.port.as_ref() == Some(port),
                    _ => false,
                });
                if used {
                    p.add(
                        "interlock.output.port",
                        format!("{} is already a source's port", port.display()),
                    );
                }
                match SerialSettings::new(port, *baud, frame) {
                    Ok(s) => Some(OutputPlan::Display(s)),
                    Err(e) => {
                        p.add("interlock.output", e);
                        None
                    }
                }
            }
        };
        (p.0.len() == before).then_some(InterlockPlan {
            timeout: Duration::from_millis(self.timeout_ms),
            policy: self.on_unreachable,
            output: output?,
        })
    }
}

/// What the output shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateState {
    /// No part is current.
    Idle,
    /// A part is current and may not be tested (yet).
    Held,
    Released,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    pub state: GateState,
    pub uii: Option<String>,
    /// For a display: what the operator reads.
    pub text: String,
}

impl Gate {
    pub fn idle() -> Gate {
        Gate {
            state: GateState::Idle,
            uii: None,
            text: "SCAN PART".into(),
        }
    }

    /// The value a Modbus target takes.
    pub fn register_value(&self, t: GateTarget) -> (u16, bool) {
        let on = self.state == GateState::Released;
        match t {
            GateTarget::Register {
                released,
                held,
                idle,
                ..
            } => (
                match self.state {
                    GateState::Released => released,
                    GateState::Held => held,
                    GateState::Idle => idle,
                },
                on,
            ),
            GateTarget::Coil { .. } => (u16::from(on), on),
        }
    }

    /// One display line: printable ASCII, at most 80 characters, CR LF.
    pub fn line(&self) -> String {
        let state = match self.state {
            GateState::Idle => "IDLE",
            GateState::Held => "HOLD",
            GateState::Released => "GO",
        };
        let mut s = format!(
            "{state} {} {}",
            self.uii.as_deref().unwrap_or("-"),
            self.text
        );
        s.retain(|c| c.is_ascii_graphic() || c == ' ');
        s.truncate(80);
        s + "\r\n"
    }
}

/// A part scan to ask about (from the station).
#[derive(Debug)]
pub struct PartAsk {
    pub uii: String,
    pub scan_seq: u64,
    pub part_number: Option<String>,
}

/// A question for the forwarder to send; the reply is the hub's verified answer and its exact
/// bytes, or why none could be had.
#[derive(Debug)]
pub struct HubAsk {
    pub uii: String,
    pub scan_seq: u64,
    pub part_number: Option<String>,
    pub reply: oneshot::Sender<Result<(ClearanceBody, Vec<u8>), String>>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct InterlockMetrics {
    pub allowed: AtomicU64,
    pub refused: AtomicU64,
    pub unreachable: AtomicU64,
    /// Decisions that could not be recorded (the part stays held).
    pub unrecorded: AtomicU64,
}

/// The interlock task: one question at a time, in scan order.
#[derive(Debug)]
pub struct Interlock {
    pub plan: InterlockPlan,
    pub parts: mpsc::Receiver<PartAsk>,
    pub hub: mpsc::Sender<HubAsk>,
    pub station: mpsc::Sender<Input>,
    pub current_part: watch::Receiver<Option<String>>,
    pub gate: watch::Sender<Gate>,
    pub metrics: Arc<crate::station::Metrics>,
}

impl Interlock {
    pub async fn run(mut self, shutdown: CancellationToken) {
        // The part the bench is released for, while it is current.
        let mut released: Option<String> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                r = self.current_part.changed() => {
                    if r.is_err() {
                        break;
                    }
                    let current = self.current_part.borrow_and_update().clone();
                    if current != released {
                        released = None;
                    }
                    // No part: idle. Another part than the gate's: held until its own decision.
                    // The gate's own part: its decision stands.
                    self.gate.send_if_modified(|g| {
                        let next = match &current {
                            None => Gate::idle(),
                            Some(u) if g.uii.as_ref() == Some(u) => return false,
                            Some(u) => held(u, "waiting for the route check"),
                        };
                        let changed = *g != next;
                        *g = next;
                        changed
                    });
                }
                ask = self.parts.recv() => {
                    let Some(ask) = ask else { break };
                    released = self.decide(ask, &shutdown).await;
                }
            }
        }
        self.gate.send_replace(Gate::idle());
    }

    /// Asks, records the decision, then drives the output; the part released for, if any.
    async fn decide(&mut self, ask: PartAsk, shutdown: &CancellationToken) -> Option<String> {
        let uii = ask.uii.clone();
        self.gate.send_replace(held(&uii, "asking the hub"));
        let (reply, answer) = oneshot::channel();
        let sent = self.hub.try_send(HubAsk {
            uii: ask.uii.clone(),
            scan_seq: ask.scan_seq,
            part_number: ask.part_number.clone(),
            reply,
        });
        let got = match sent {
            Err(_) => Err("the forwarder is not taking questions".to_owned()),
            Ok(()) => tokio::select! {
                () = shutdown.cancelled() => Err("the station is stopping".to_owned()),
                r = tokio::time::timeout(self.plan.timeout, answer) => match r {
                    Err(_) => Err(format!("no answer within {} ms", self.plan.timeout.as_millis())),
                    Ok(Err(_)) => Err("the forwarder dropped the question".to_owned()),
                    Ok(Ok(r)) => r,
                },
            },
        };
        let (outcome, released, bytes, text) = match got {
            Ok((body, bytes)) => match body.clearance {
                Clearance::Allowed { operation } => {
                    self.metrics
                        .interlock
                        .allowed
                        .fetch_add(1, Ordering::Relaxed);
                    let text = format!("OK {operation}");
                    (
                        InterlockOutcome::Allowed { operation },
                        true,
                        Some(bytes),
                        text,
                    )
                }
                Clearance::Refused { code, reason } => {
                    self.metrics
                        .interlock
                        .refused
                        .fetch_add(1, Ordering::Relaxed);
                    let text = format!("REFUSED {reason}");
                    (
                        InterlockOutcome::Refused { code, reason },
                        false,
                        Some(bytes),
                        text,
                    )
                }
            },
            Err(detail) => {
                self.metrics
                    .interlock
                    .unreachable
                    .fetch_add(1, Ordering::Relaxed);
                let policy = self.plan.policy;
                let released = policy == Policy::AllowAndFlag;
                let text = if released {
                    "HUB UNREACHABLE: allowed, flagged".to_owned()
                } else {
                    "HUB UNREACHABLE: blocked".to_owned()
                };
                tracing::warn!(%uii, %detail, policy = policy.name(), "route interlock: no answer from the hub");
                (
                    InterlockOutcome::Unreachable {
                        policy: policy.name().to_owned(),
                        detail,
                    },
                    released,
                    None,
                    text,
                )
            }
        };
        let decision = InterlockDecision {
            uii: uii.clone(),
            scan_seq: ask.scan_seq,
            released,
            outcome,
            answer: bytes.map(Into::into),
        };
        let (tx, rx) = oneshot::channel();
        let recorded = match self
            .station
            .send(Input::Recorded(StationEvent::Interlock(decision), tx))
            .await
        {
            Ok(()) => rx.await.unwrap_or_else(|_| Err("station stopped".into())),
            Err(_) => Err("station stopped".into()),
        };
        if let Err(e) = recorded {
            self.metrics
                .interlock
                .unrecorded
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(%uii, error = %e, "interlock decision not recorded: the part stays held");
            self.gate
                .send_replace(held(&uii, "decision not recorded: call maintenance"));
            return None;
        }
        // Another part may be current by now: its own question follows.
        if self.current_part.borrow().as_deref() != Some(uii.as_str()) {
            return None;
        }
        let state = if released {
            GateState::Released
        } else {
            GateState::Held
        };
        self.gate.send_replace(Gate {
            state,
            uii: Some(uii.clone()),
            text,
        });
        released.then_some(uii)
    }
}

fn held(uii: &str, why: &str) -> Gate {
    Gate {
        state: GateState::Held,
        uii: Some(uii.to_owned()),
        text: why.to_owned(),
    }
}

/// Shows the gate on a serial display: the current line on every change and after every
/// reopen of the port.
#[derive(Debug)]
pub struct Display {
    pub port: SerialSettings,
    pub gate: watch::Receiver<Gate>,
}

impl Display {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        'open: while !shutdown.is_cancelled() {
            let mut port = match crate::source::port::open_port(&self.port) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(port = %self.port.path.display(), error = %e, "interlock display unavailable");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            };
            backoff.reset();
            loop {
                let line = self.gate.borrow_and_update().line();
                let wrote = tokio::time::timeout(Duration::from_secs(2), async {
                    port.write_all(line.as_bytes()).await?;
                    port.flush().await
                })
                .await;
                if !matches!(wrote, Ok(Ok(()))) {
                    tracing::warn!(port = %self.port.path.display(), "interlock display write failed; reopening");
                    continue 'open;
                }
                tokio::select! {
                    () = shutdown.cancelled() => break 'open,
                    r = self.gate.changed() => if r.is_err() { break 'open },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proofline_common::wire::MsgId;

    struct Rig {
        parts: mpsc::Sender<PartAsk>,
        current: watch::Sender<Option<String>>,
        gate: watch::Receiver<Gate>,
        decisions: Arc<std::sync::Mutex<Vec<InterlockDecision>>>,
        shutdown: CancellationToken,
    }

    /// An interlock whose hub allows `A…`, refuses `B…` and never answers anything else, and
    /// whose station records every decision (or fails to, for `F…`).
    fn rig(policy: Policy) -> Rig {
        let (parts, parts_rx) = mpsc::channel(8);
        let (hub, mut hub_rx) = mpsc::channel::<HubAsk>(8);
        let (station, mut station_rx) = mpsc::channel(8);
        let (current, current_rx) = watch::channel(None);
        let (gate_tx, gate) = watch::channel(Gate::idle());
        let decisions = Arc::new(std::sync::Mutex::new(Vec::new()));
        tokio::spawn(async move {
            let mut silent = Vec::new();
            while let Some(a) = hub_rx.recv().await {
                let clearance = if a.uii.starts_with('A') || a.uii.starts_with('F') {
                    Clearance::Allowed {
                        operation: "flow".into(),
                    }
                } else if a.uii.starts_with('B') {
                    Clearance::Refused {
                        code: "out_of_sequence".into(),
                        reason: "flow not done".into(),
                    }
                } else {
                    silent.push(a);
                    continue;
                };
                let body = ClearanceBody {
                    agent_id: "flow-01".into(),
                    answers: MsgId {
                        boot: 1,
                        counter: 1,
                    },
                    uii: a.uii.clone(),
                    clearance,
                    at: 0,
                };
                let _ = a.reply.send(Ok((body, b"signed".to_vec())));
            }
        });
        let seen = Arc::clone(&decisions);
        tokio::spawn(async move {
            while let Some(i) = station_rx.recv().await {
                if let Input::Recorded(StationEvent::Interlock(d), reply) = i {
                    let fail = d.uii.starts_with('F');
                    seen.lock().unwrap().push(d);
                    let _ = reply.send(if fail { Err("disk".into()) } else { Ok(7) });
                }
            }
        });
        let shutdown = CancellationToken::new();
        let task = Interlock {
            plan: InterlockPlan {
                timeout: Duration::from_millis(200),
                policy,
                output: OutputPlan::Modbus {
                    source: "bench".into(),
                    target: GateTarget::Coil { addr: 0 },
                },
            },
            parts: parts_rx,
            hub,
            station,
            current_part: current_rx,
            gate: gate_tx,
            metrics: Arc::default(),
        };
        tokio::spawn(task.run(shutdown.clone()));
        Rig {
            parts,
            current,
            gate,
            decisions,
            shutdown,
        }
    }

    impl Rig {
        /// Scans `uii` as the station does and waits for the decision's gate.
        async fn scan(&mut self, uii: &str) -> Gate {
            let n = self.decisions.lock().unwrap().len();
            self.current.send_replace(Some(uii.into()));
            self.parts
                .send(PartAsk {
                    uii: uii.into(),
                    scan_seq: 3,
                    part_number: None,
                })
                .await
                .unwrap();
            for _ in 0..200 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if self.decisions.lock().unwrap().len() > n {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
            self.gate.borrow().clone()
        }

        fn last(&self) -> InterlockDecision {
            self.decisions.lock().unwrap().last().cloned().unwrap()
        }
    }

    #[tokio::test]
    async fn the_bench_is_released_only_for_an_allowed_recorded_part_and_the_policy_decides_without_the_hub(
    ) {
        let mut r = rig(Policy::Block);
        let g = r.scan("A1").await;
        assert_eq!(g.state, GateState::Released, "{g:?}");
        let d = r.last();
        assert!(
            d.released && d.answer.as_ref().map(|b| b.0.as_slice()) == Some(&b"signed"[..]),
            "{d:?}"
        );
        assert_eq!(d.scan_seq, 3);
        // The part is no longer current: held no more for it.
        r.current.send_replace(None);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(r.gate.borrow().state, GateState::Idle);
        let g = r.scan("B1").await;
        assert_eq!(g.state, GateState::Held);
        assert!(
            g.line().starts_with("HOLD B1 REFUSED flow not done"),
            "{}",
            g.line()
        );
        assert!(
            matches!(r.last().outcome, InterlockOutcome::Refused { ref code, .. } if code == "out_of_sequence")
        );
        // The refused part is gone (scan timeout): the display says so, the bench stays off.
        r.current.send_replace(None);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*r.gate.borrow(), Gate::idle());
        // No answer: blocked, and recorded as such.
        let g = r.scan("C1").await;
        assert_eq!(g.state, GateState::Held);
        let d = r.last();
        assert!(!d.released && d.answer.is_none(), "{d:?}");
        assert!(
            matches!(&d.outcome, InterlockOutcome::Unreachable { policy, detail } if policy == "block" && detail.contains("200 ms")),
            "{d:?}"
        );
        // An allowed part whose decision cannot be recorded stays held.
        let g = r.scan("F1").await;
        assert_eq!(g.state, GateState::Held, "{g:?}");
        r.shutdown.cancel();

        let mut r = rig(Policy::AllowAndFlag);
        let g = r.scan("C2").await;
        assert_eq!(g.state, GateState::Released);
        let d = r.last();
        assert!(d.released, "{d:?}");
        assert!(
            matches!(&d.outcome, InterlockOutcome::Unreachable { policy, .. } if policy == "allow_and_flag")
        );
        // Another part scanned: the bench is held again until its own decision.
        r.current.send_replace(Some("D2".into()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(r.gate.borrow().state, GateState::Held);
        r.shutdown.cancel();
    }

    #[test]
    fn display_lines_are_bounded_printable_ascii() {
        let g = Gate {
            state: GateState::Held,
            uii: Some("D1ABC".into()),
            text: format!("REFUSED é\u{1b}[2J{}", "x".repeat(200)),
        };
        let l = g.line();
        assert!(l.ends_with("\r\n") && l.len() <= 82, "{l:?}");
        assert!(l[..l.len() - 2]
            .bytes()
            .all(|b| b.is_ascii_graphic() || b == b' '));
        assert_eq!(
            Gate::idle().register_value(GateTarget::Register {
                addr: 1,
                released: 1,
                held: 2,
                idle: 0
            }),
            (0, false)
        );
    }
}
