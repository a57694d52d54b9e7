//! The Proofline station agent.
//!
//! # Layout (the folders follow the data)
//! - [`source`]: device links (Modbus TCP/RTU benches, serial-line benches, scanners, Open
//!   Protocol torque controllers): one task per link reads results and scans;
//! - [`station`]: the station task, where results are bound to the scanned injector, judged
//!   and appended to the ledger ([`station::binder`]); the disk budget ([`station::storage`]);
//! - [`forward`]: store-and-forward of the ledger to the hub over MQTT: a state machine
//!   ([`forward::machine`]) driven by the MQTT link;
//! - [`run`](mod@run): `run --config`, which wires the components above from a checked plan;
//! - [`config`]: the configuration file, its checks (`check-config`) and the plans built from
//!   it;
//! - [`commands`]: the command line (`keygen`, `ledger ...`, `probe`, `scan-parse`).

pub mod commands;
pub mod config;
pub mod forward;
pub mod interlock;
pub mod run;
pub mod source;
pub mod station;

pub use proofline_common::{keyfile, systemd};
