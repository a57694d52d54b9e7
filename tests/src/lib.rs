//! Test support shared by Proofline's test suites.
//!
//! - [`tamper`]: the ways an export (or a copy of a ledger) gets altered — a modified record, a
//!   removed one, two swapped, a tail cut, records spliced in from another station — used to
//!   show that verification names each one;
//! - [`fixtures`]: small ledgers built through the real store;
//! - [`benchsim`]: a simulated Modbus TCP flow bench with the four-phase handshake;
//! - [`torque`]: a simulated Open Protocol torque controller;
//! - [`proxy`]: a TCP proxy and an RTU line bridge that damage a device's replies (garbage,
//!   broken CRCs, truncated frames);
//! - [`tmpfs`]: a small file system that really fills, for the disk-full cases;
//! - [`powercut`]: a file system that loses power on command (unsynced writes and directory
//!   entries dropped, whole or torn), for the power-loss cases;
//! - [`qms`]: a fake of the central QMS's REST API, its observed traps included;
//! - [`seeded`]: the fault campaigns' seeded generator.

pub mod benchsim;
pub mod fixtures;
pub mod powercut;
pub mod proxy;
pub mod qms;
pub mod registers;
pub mod seeded;
pub mod tamper;
pub mod tmpfs;
pub mod torque;
