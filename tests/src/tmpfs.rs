//! A small file system that really fills: a tmpfs mounted for one test, and a filler that takes
//! its last byte. For the disk-full cases of the agent and the hub (a real `ENOSPC`, not an
//! injected failure).

use std::io::Write;
use std::path::{Path, PathBuf};

/// A tmpfs mounted on a directory, unmounted when dropped.
#[derive(Debug)]
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB on `at` (an existing, empty directory). None, with the reason
    /// printed, where this process may not mount (not root); with `PROOFLINE_REQUIRE_PEERS` set
    /// (CI) that is a failure instead.
    pub fn mount(at: &Path, mib: u64) -> Option<Tmpfs> {
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(at.to_owned())),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var_os("PROOFLINE_REQUIRE_PEERS").is_none(),
                    "a small file system is required (PROOFLINE_REQUIRE_PEERS is set) but mount failed: {why}"
                );
                eprintln!("skipped: cannot mount a tmpfs here ({why}); CI runs as root");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system holding `dir` to the last byte with a file in `dir`; returns its path.
pub fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("creating the filler");
    let mut chunk = 1 << 20;
    while chunk > 0 {
        if f.write_all(&vec![0u8; chunk]).is_err() {
            chunk /= 2;
        }
    }
    let _ = f.sync_all();
    path
}

/// Fills the file system holding `dir` until `leave` bytes are free, with one write of the
/// difference (a program filling the disk to just short of full: never full on the way).
pub fn fill_leaving(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let free = proofline_common::store::free_bytes(dir).expect("reading the free space");
    let mut f = std::fs::File::create(&path).expect("creating the filler");
    let mut left = free.saturating_sub(leave);
    let chunk = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).expect("filling the disk");
        left -= n as u64;
    }
    let _ = f.sync_all();
    path
}
