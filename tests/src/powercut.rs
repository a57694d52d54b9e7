//! A file system that loses power on command (`tests/peers/powercut_fs.py`, FUSE).
//!
//! Writes not yet made durable by an fsync of their file, and creates, renames and unlinks not
//! yet made durable by an fsync of their parent directory, live in a volatile layer. [`PowerCut::cut`]
//! drops that layer (wholly, or torn at 4 KiB pages in a seeded random subset) and switches the
//! machine off: every later operation on the mount fails with `EIO`, so nothing a process does
//! after the cut can become durable. [`PowerCut::reboot`] unmounts and mounts the durable state
//! alone. The mount serves nothing from the kernel's caches (direct I/O, zero attribute and
//! entry timeouts), so what a reader sees is what the file system holds.
//!
//! It needs a Python with the `fusepy` package (`PROOFLINE_PYTHON` names it, default `python3`),
//! `libfuse.so.2` and `/dev/fuse`, and the right to mount (root, or `fusermount`). Where any of
//! it is missing, [`PowerCut::mount`] prints why and returns None, so the test skips; with
//! `PROOFLINE_REQUIRE_PEERS` set (CI) that is a failure instead.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The file system's script, next to the other independent peers.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/powercut_fs.py");

/// How the volatile layer is dropped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cut {
    /// Nothing that was not made durable survives.
    Whole,
    /// Each pending 4 KiB page, pending size change and directory's pending entries reaches the
    /// disk with probability `keep`; the same seed gives the same subset for the same history.
    Torn { seed: u64, keep: f64 },
}

/// What a cut did, as the file system reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutReport {
    pub kept_pages: u64,
    pub dropped_pages: u64,
    pub kept_dirs: u64,
    pub dropped_dirs: u64,
    /// Files in the durable state.
    pub files: u64,
}

/// A mounted power-cut file system; unmounted when dropped.
#[derive(Debug)]
pub struct PowerCut {
    python: String,
    mnt: PathBuf,
    control: PathBuf,
    image: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

fn skip(why: String) -> Option<PowerCut> {
    assert!(
        std::env::var_os("PROOFLINE_REQUIRE_PEERS").is_none(),
        "the power-cut file system is required (PROOFLINE_REQUIRE_PEERS is set) but {why}"
    );
    eprintln!("skipped: {why}");
    None
}

impl PowerCut {
    /// Mounts an empty power-cut file system on `work/mnt`; its control socket and its durable
    /// image live in `work` (outside the mount). None, with the reason printed, where it cannot
    /// run here.
    pub fn mount(work: &Path) -> Option<PowerCut> {
        let python = std::env::var("PROOFLINE_PYTHON").unwrap_or_else(|_| "python3".into());
        if !Path::new("/dev/fuse").exists() {
            return skip("/dev/fuse does not exist".into());
        }
        match Command::new(&python)
            .args(["-c", "import fuse"])
            .stdout(Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                let last = err.lines().last().unwrap_or("").trim().to_owned();
                return skip(format!(
                    "{python} cannot load fusepy over libfuse2 ({last}); set PROOFLINE_PYTHON to a Python with fusepy and install libfuse2"
                ));
            }
            Err(e) => return skip(format!("cannot run {python}: {e}")),
        }
        let mnt = work.join("mnt");
        std::fs::create_dir_all(&mnt).expect("creating the mount point");
        let mut fs = PowerCut {
            python,
            mnt,
            control: work.join("powercut.sock"),
            image: work.join("powercut.image"),
            log: work.join("powercut.log"),
            child: None,
        };
        match fs.start() {
            Ok(()) => Some(fs),
            Err(why) => skip(why),
        }
    }

    /// The mount point: the root of the file system.
    pub fn root(&self) -> &Path {
        &self.mnt
    }

    fn start(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("cannot open {}: {e}", self.log.display()))?;
        let mut child = Command::new(&self.python)
            .args(["-W", "ignore::DeprecationWarning", SCRIPT])
            .arg(&self.mnt)
            .arg(&self.control)
            .arg(&self.image)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {SCRIPT}: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.trim() == "READY" {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let last = log.lines().last().unwrap_or("").trim().to_owned();
            return Err(format!("the power-cut file system did not mount ({last})"));
        }
        self.child = Some(child);
        Ok(())
    }

    fn request(&self, line: &str) -> String {
        let mut s = UnixStream::connect(&self.control).expect("connecting to the control socket");
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).unwrap();
        let reply = reply.trim().to_owned();
        assert!(
            reply.starts_with("ok"),
            "power-cut file system refused {line:?}: {reply}"
        );
        reply
    }

    /// `files=.. dirty_pages=.. dirty_dirs=..`: what is pending right now.
    pub fn stats(&self) -> String {
        self.request("stats")
    }

    /// Cuts the power: drops the volatile layer as `how` says and switches the machine off
    /// (every later operation on the mount fails with `EIO`) until [`PowerCut::reboot`].
    pub fn cut(&mut self, how: Cut) -> CutReport {
        let reply = match how {
            Cut::Whole => self.request("cut whole"),
            Cut::Torn { seed, keep } => self.request(&format!("cut torn {seed} {keep}")),
        };
        let field = |k: &str| -> u64 {
            reply
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {k} in {reply:?}"))
        };
        CutReport {
            kept_pages: field("kept_pages"),
            dropped_pages: field("dropped_pages"),
            kept_dirs: field("kept_dirs"),
            dropped_dirs: field("dropped_dirs"),
            files: field("files"),
        }
    }

    /// Unmounts and mounts the durable state alone. Every process that had files open on the
    /// mount must be gone first (a machine that lost power runs nothing).
    pub fn reboot(&mut self) {
        self.unmount();
        self.start()
            .unwrap_or_else(|why| panic!("remounting after a cut: {why}"));
    }

    fn unmount(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let ok = |c: &mut Command| c.stderr(Stdio::null()).status().is_ok_and(|s| s.success());
        if !ok(Command::new("umount").arg(&self.mnt))
            && !ok(Command::new("fusermount").arg("-u").arg(&self.mnt))
        {
            // Something still holds a file there: detach it anyway.
            let _ = ok(Command::new("umount").arg("-l").arg(&self.mnt))
                || ok(Command::new("fusermount")
                    .arg("-u")
                    .arg("-z")
                    .arg(&self.mnt));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PowerCut {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// fsyncs the directory `dir` (what makes the entries in it durable).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
