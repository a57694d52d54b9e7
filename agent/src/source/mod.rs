//! Where results come from: one task owns each device link and hands what it reads to the
//! station ([`crate::station`]) over a bounded channel.
//!
//! - [`modbus`]: Modbus TCP and RTU benches and their result-ready patterns; one task owns each
//!   TCP device, one task owns each RTU line (`modbus/bus.rs`);
//! - [`registers`]: register decoding (types, word orders, scale and offset);
//! - [`serial_line`]: benches that report each test as a line of text; [`line`](mod@line): the
//!   framing and field parsing;
//! - [`scanner`]: barcode scanners (debounce, roles, reopen after unplug);
//! - [`open_protocol`]: torque controllers on Open Protocol (ack after durable, dedup, gaps);
//! - [`port`]: a serial port owned by one source, reopened with backoff after it fails.
//!
//! Every source keeps the same promise: a device is acknowledged (handshake write-back, MID 0062)
//! only after the station answered that the record is durable.

pub mod line;
pub mod modbus;
pub mod open_protocol;
pub mod port;
pub mod registers;
pub mod scanner;
pub mod serial_line;
