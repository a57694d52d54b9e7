//! Proofline's plant hub: the MQTT broker (embedded or external), the witness of every
//! station's ledger, the hub's own ledger of alerts, and the HTTP API.
//!
//! # Layout (the folders follow the data)
//! - [`broker`]: the embedded rumqttd broker; [`acl`]: who may use it (and Mosquitto), for what;
//! - [`link`]: the hub's MQTT client: the event loop hands batches to the witness, the
//!   responder publishes answers and acknowledges messages;
//! - [`witness`]: checks batches (`witness/check.rs`), stores witnessed records, cosigns
//!   checkpoints; [`witness::worker`]: the thread that owns it;
//! - [`enroll`]: enrollments on disk, ticks and the hub's status;
//! - [`api`]: `/healthz`, `/metrics`, `/api/v1/...`; [`alerts`]: alert kinds and the book;
//! - [`web`]: accounts, sessions, the role × route matrix, the access audit and the pages;
//! - [`run`](mod@run): `run --config`, which wires the components from a checked [`plan`];
//! - [`verify`](mod@verify): `ledger verify`, offline re-verification of everything stored;
//! - [`reconcile`]: one timeline per injector across the stations' witnessed ledgers;
//! - [`evidence`](mod@evidence): one injector's evidence bundle, proven offline;
//! - [`spc`]: control limits, capability and the Nelson tests (issue 13 builds the charts on it);
//! - [`config`], [`cli`]: the configuration file and the command line.

pub mod acl;
pub mod alerts;
pub mod api;
pub mod broker;
pub mod cli;
pub mod config;
pub mod enroll;
pub mod evidence;
pub mod health;
pub mod interlock;
pub mod link;
pub mod plan;
pub mod qdas;
pub mod qms;
pub mod reconcile;
pub mod run;
pub mod spc;
pub mod verify;
pub mod web;
pub mod witness;
