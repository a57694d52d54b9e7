//! The Proofline station agent.
//!
//! # Layout
//! - [`run`](mod@run): `run --config`, the station at work; [`systemd`]: readiness and watchdog;
//! - [`cli`]: command-line parsing and dispatch (`keygen`, `ledger ...`);
//! - [`config`]: the configuration file and its checks (`check-config`);
//! - [`keyfile`]: the agent's Ed25519 key file (create with mode 0600, load, check);
//! - [`ledger_cmds`]: operator and auditor commands on a ledger: verify, export, checkpoint,
//!   offline verification of an export;
//! - [`binder`]: binding results to the scanned injector, judging characteristics;
//! - [`line`](mod@line): serial-line framing and field parsing;
//! - [`modbus`]: Modbus TCP sources and their result-ready patterns;
//! - [`scanner`]: barcode scanners on serial ports (debounce, roles, reopen after unplug);
//! - [`serial_line`]: benches that report each test as a line on a serial port;
//! - [`serial_port`]: a serial port owned by one source, reopened after it fails;
//! - [`station`]: the station task, where results become records;
//! - [`forward`]: store-and-forward to the hub, a state machine behind the MQTT link;
//! - [`op_source`]: torque controllers on Open Protocol (ack after durable, dedup, gaps);
//! - [`probe`]: commissioning read of a source's result block in every word order;
//! - [`registers`]: Modbus register decoding (types, word orders, scale and offset);
//! - [`scan_cmd`]: `scan-parse`, the commissioning check of scanner frames;
//! - [`bench`](mod@bench): `ledger bench`, durable append throughput through the real writer.

pub mod bench;
pub mod binder;
pub mod cli;
pub mod config;
pub mod forward;
pub mod ledger_cmds;
pub mod line;
pub mod modbus;
pub mod op_source;
pub mod probe;
pub mod registers;
pub mod run;
pub mod scan_cmd;
pub mod scanner;
pub mod serial_line;
pub mod serial_port;
pub mod station;
pub mod storage;

pub use proofline_common::{keyfile, systemd};
