//! Proofline's plant hub: the MQTT broker (embedded or external), the witness of every
//! station's ledger, the hub's own ledger of alerts, and the HTTP API.
//!
//! - [`witness`]: checks batches, stores witnessed records, cosigns checkpoints;
//! - [`run`](mod@run): `run --config`, the tasks around the witness;
//! - [`broker`]: the embedded rumqttd broker;
//! - [`api`]: `/healthz`, `/metrics`, `/api/v1/...`;
//! - [`alerts`]: alert kinds and the alert book;
//! - [`verify`](mod@verify): `ledger verify`, offline re-verification of everything stored;
//! - [`config`], [`cli`]: the configuration file and the command line.

pub mod alerts;
pub mod api;
pub mod broker;
pub mod cli;
pub mod config;
pub mod run;
pub mod verify;
pub mod witness;
