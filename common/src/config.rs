//! Configuration primitives shared by the agent and the hub (DESIGN §6): problems with their
//! key paths, and the errors a configuration file can give.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// One problem found in a configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {}: {message}", .path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("config file {}: {} problem(s):\n{}", .path.display(), .problems.len(), .problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl Problem {
    /// One problem as a list: what a plan builder answers when one value does not convert.
    pub fn only(path: &str, message: impl ToString) -> Vec<Problem> {
        vec![Problem {
            path: path.to_owned(),
            message: message.to_string(),
        }]
    }
}

/// A listen address as a socket address (what [`check_listen`] accepts).
pub fn listen_addr(at: &str, addr: &str) -> Result<SocketAddr, Vec<Problem>> {
    addr.parse()
        .map_err(|_| Problem::only(at, format!("{addr:?} is not an address:port")))
}

/// Collects problems while a configuration is checked as a whole.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn add(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.to_owned(),
            message: message.into(),
        });
    }
}

/// Whether `addr` is `host:port` with a non-zero port.
pub fn is_host_port(addr: &str) -> bool {
    matches!(addr.rsplit_once(':'), Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// Checks a listen address: `address:port`, and loopback unless `allowed` (the key named
/// `allow_key`) says plain text off loopback is wanted.
pub fn check_listen(p: &mut Problems, at: &str, addr: &str, allowed: bool, allow_key: &str) {
    match listen_addr(at, addr) {
        Err(mut problems) => p.0.append(&mut problems),
        Ok(a) if !a.ip().is_loopback() && !allowed => p.add(
            at,
            format!("{a} is not loopback; serving it in plain text needs {allow_key} = true"),
        ),
        Ok(_) => {}
    }
}

/// The problems with what a program's configuration points at on this machine: its key file (a
/// Proofline key made for `origin`, when the origin itself is valid) and its data directory.
pub fn check_key_and_data_dir(
    p: &mut Problems,
    section: &str,
    who: &str,
    key_file: &Path,
    origin: Option<&crate::Origin>,
    data_dir: &Path,
) {
    let key_at = format!("{section}.key_file");
    match origin {
        Some(origin) => {
            if let Err(e) = crate::keyfile::load_for(key_file, origin, who) {
                p.add(&key_at, e);
            }
        }
        None => {
            if let Err(e) = crate::keyfile::load(key_file) {
                p.add(&key_at, format!("{e:#}"));
            }
        }
    }
    let dir_at = format!("{section}.data_dir");
    match std::fs::metadata(data_dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => p.add(
            &dir_at,
            format!("{} is not a directory", data_dir.display()),
        ),
        Err(e) => p.add(&dir_at, format!("{}: {e}", data_dir.display())),
    }
}
