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

use std::time::Duration;

use proofline_common::record::{DeviceTime, Measured, RawData, TestPlan, Verdict};

mod bus;
mod poll;

pub use bus::{BusHandle, RtuBus, RtuLine};
pub use poll::{read_block_once, ModbusSource};

use crate::config::{wire_address, Modbus, Ready, Table, TextField};
use crate::source::port::SerialSettings;
use crate::source::registers::{decode, PointType, Value, WordOrder};
use crate::station::{DeviceResult, Measurement};

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

/// How a Modbus source reaches its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModbusLink {
    /// Its own TCP connection to `host:port`.
    Tcp { address: String },
    /// Its unit on an RTU line, shared with the other sources on the same port.
    Rtu(RtuLine),
}

/// A checked Modbus source.
#[derive(Debug, Clone)]
pub struct ModbusPlan {
    pub cfg: Modbus,
    pub link: ModbusLink,
    pub block: u16,
    pub ready: ReadyPlan,
}

impl ModbusPlan {
    /// A `modbus_tcp` source (`rtu` false) or a `modbus_rtu` one.
    pub fn new(cfg: &Modbus, rtu: bool) -> Result<Self, String> {
        let link = match (rtu, &cfg.address, &cfg.port) {
            (false, Some(address), None) => ModbusLink::Tcp {
                address: address.clone(),
            },
            (true, None, Some(port)) => ModbusLink::Rtu(RtuLine {
                port: SerialSettings::new(port, cfg.baud, &cfg.frame)?,
                pause: Duration::from_millis(cfg.inter_request_pause_ms),
            }),
            (false, _, _) => return Err("a modbus_tcp source needs address and no port".into()),
            (true, _, _) => return Err("a modbus_rtu source needs port and no address".into()),
        };
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
            link,
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

#[cfg(test)]
mod tests {
    use super::bus::{crc16, unusable_reply};
    use super::*;
    use crate::config::{AgentConfig, Source};

    #[test]
    fn a_long_block_is_split_into_requests_of_at_most_125_and_guarded_by_what_moves() {
        let example = include_str!("../../../../config/agent.example.toml");
        let text = example
            .replace("block_registers = 40", "block_registers = 300")
            .replace("result_id = { offset = 18,", "result_id = { offset = 296,");
        let (cfg, _) = AgentConfig::parse(&text).unwrap();
        assert_eq!(cfg.problems(), vec![]);
        let Some(Source::ModbusTcp(m)) = cfg.sources.first() else {
            panic!("example starts with the TCP bench");
        };
        let plan = ModbusPlan::new(m, false).unwrap();
        assert_eq!(plan.chunks(), vec![(100, 125), (225, 125), (350, 50)]);
        assert_eq!(plan.marker(), Some(98), "the handshake's ready register");
        assert_eq!(plan.guard_reads(), vec![(0, 125), (296, 2)]);

        let mut short = m.clone();
        short.block_registers = 125;
        let plan = ModbusPlan::new(&short, false).unwrap();
        assert_eq!(plan.chunks(), vec![(100, 125)]);

        let mut flag = m.clone();
        flag.ready = crate::config::Ready::Flag { flag_register: 90 };
        assert_eq!(ModbusPlan::new(&flag, false).unwrap().marker(), None);
        flag.result_id = None;
        assert!(ModbusPlan::new(&flag, false)
            .unwrap_err()
            .contains("result_id"));
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
        let example = include_str!("../../../../config/agent.example.toml");
        let (cfg, _) = AgentConfig::parse(example).unwrap();
        let Some(Source::ModbusRtu(m)) = cfg.sources.iter().find(|s| s.name() == "nutrunner-rtu")
        else {
            panic!("example has the RTU nutrunner");
        };
        let plan = ModbusPlan::new(m, true).unwrap();
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
