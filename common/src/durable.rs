//! File-system metadata made durable.
//!
//! A file's data is durable once the file is fsynced; the file's *name* (a create, a rename, an
//! unlink) is durable only once its directory is fsynced. Linux file systems in their default
//! modes often make it so sooner, but POSIX does not promise it and some file systems and mount
//! options do not: a power cut can then take away a ledger created a moment ago, or bring back a
//! credential file that was deleted. Every place Proofline creates, renames or removes a file
//! whose presence matters goes through here.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// fsyncs the directory `dir` (its entries: names created, renamed or removed in it).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// fsyncs the directory holding `path`.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

/// fsyncs the file at `path` (data and metadata).
pub fn sync_file(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Creates `dir` and any missing parents, each made durable in its own parent.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d.to_owned());
        at = d.parent();
    }
    std::fs::create_dir_all(dir)?;
    for d in missing.iter().rev() {
        sync_parent(d)?;
    }
    Ok(())
}

/// Replaces the file at `path` with `bytes` atomically and durably: a temporary file beside it
/// is written and fsynced, renamed over `path`, and the directory fsynced. After a power cut
/// `path` holds the old bytes or the new ones, whole.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

/// Renames `from` to `to` durably (both directories fsynced).
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    sync_parent(to)?;
    if from.parent() != to.parent() {
        sync_parent(from)?;
    }
    Ok(())
}

/// Removes the file at `path` durably; Ok if it was not there.
pub fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_parent(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A directory whose entries another component changes (the storage engine's snapshot files):
/// [`DirSync::sync_if_changed`] fsyncs it when its modification time says its entries changed
/// since the last fsync, so a caller can make every commit cover them for one `stat` when
/// nothing changed.
#[derive(Debug)]
pub struct DirSync {
    dir: PathBuf,
    synced: Option<SystemTime>,
}

impl DirSync {
    /// A change this recent may share its timestamp with one still to come: file times come
    /// from the kernel's coarse clock (one tick, 1–10 ms). Until the directory's time is older,
    /// every call fsyncs.
    const SETTLED_AFTER: Duration = Duration::from_millis(100);

    pub fn new(dir: &Path) -> DirSync {
        DirSync {
            dir: dir.to_owned(),
            synced: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// fsyncs the directory if its entries may have changed since the last fsync.
    pub fn sync_if_changed(&mut self) -> io::Result<()> {
        let modified = std::fs::metadata(&self.dir)?.modified()?;
        let settled = SystemTime::now()
            .duration_since(modified)
            .is_ok_and(|age| age >= Self::SETTLED_AFTER);
        if settled && self.synced == Some(modified) {
            return Ok(());
        }
        sync_dir(&self.dir)?;
        self.synced = Some(modified);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("enrolled").join("a.key");
        create_dir_all(p.parent().unwrap()).unwrap();
        write_atomically(&p, b"one\n").unwrap();
        write_atomically(&p, b"two\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two\n");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.key")]);
        remove_file(&p).unwrap();
        remove_file(&p).unwrap();
        assert!(!p.exists());
    }

    #[test]
    fn a_directory_is_synced_again_after_its_entries_change() {
        let d = tempfile::tempdir().unwrap();
        let mut s = DirSync::new(d.path());
        s.sync_if_changed().unwrap();
        let first = s.synced;
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(d.path().join("snap.1"), b"x").unwrap();
        s.sync_if_changed().unwrap();
        let modified = std::fs::metadata(d.path()).unwrap().modified().unwrap();
        assert_ne!(s.synced, first, "a new entry is a change");
        assert_eq!(s.synced, Some(modified));
    }
}
