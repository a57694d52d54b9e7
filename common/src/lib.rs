//! Proofline's shared core: the record model, the hash-chained ledger with RFC 9162 Merkle
//! checkpoints, C2SP signed notes and cosignatures, and the durable sled store.
//!
//! # Layout
//! - [`record`]: what a station writes (`Record`, bodies for scans, results, station events);
//!   [`alarm`]: every alarm code;
//! - [`hash`], [`merkle`]: leaf/chain hashing, the Merkle frontier, inclusion and consistency
//!   proofs;
//! - [`chain`]: walking a chain of records and classifying what is wrong ([`chain::Fault`]);
//! - [`note`]: signed-note checkpoints and `cosignature/v1`, keys and verifier keys;
//! - [`store`]: the sled store (durable commit, verify-on-open, torn-tail repair) and the
//!   ledgers a hub witnesses beside its own;
//! - [`writer`]: the single group-commit writer that owns the store;
//! - [`export`]: the JSON-lines export format and its offline verification;
//! - [`open_protocol`]: Open Protocol framing and MID 0061 tightening results;
//! - [`scan`]: scanner frames to UIIs (ISO/IEC 15434, MIL-STD-130, GS1);
//! - [`wire`]: the MQTT payloads and topics between agents and the hub;
//! - [`keyfile`], [`systemd`], [`process`]: signing keys on disk, sd_notify and the watchdog,
//!   signals and logging;
//! - [`backoff`]: the one retry delay of every link;
//! - [`http`]: the server loop of every HTTP endpoint, bounded against slow clients;
//! - [`origin`], [`bytes`]: small validated types;
//! - `synth` (with the `test-hooks` feature only): synthetic results for benchmarks and tests.
//!
//! DESIGN.md §2 (ledger) and §3 (storage) are normative for everything here.

pub mod alarm;
pub mod backoff;
pub mod bytes;
pub mod chain;
pub mod config;
pub mod durable;
pub mod evidence;
pub mod export;
pub mod hash;
pub mod http;
pub mod keyfile;
pub mod merkle;
pub mod mqtt;
pub mod note;
pub mod open_protocol;
pub mod origin;
pub mod process;
pub mod record;
pub mod scan;
pub mod store;
#[cfg(feature = "test-hooks")]
pub mod synth;
pub mod systemd;
pub mod wire;
pub mod writer;

pub use hash::Hash;
pub use origin::Origin;
