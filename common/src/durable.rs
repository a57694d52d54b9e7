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
use std::time::SystemTime;

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
/// [`DirSync::sync_if_changed`] fsyncs it when its entries changed since the last fsync, so a
/// caller can make every commit cover them for one `readdir` when nothing changed.
///
/// "Changed" is judged by the directory's entries themselves (every name with its inode number)
/// and its modification time: a create, unlink or rename changes the names or the inode behind
/// a name. A modification time alone cannot tell two changes within one tick of the kernel's
/// coarse clock apart, which once forced an fsync on every commit for a while after any change
/// (and on every commit of a freshly created ledger). The one change neither shows is a name
/// unlinked and created again, in the same clock tick, on a reused inode number; the storage
/// engine gives each snapshot a new name, so it does not do that.
#[derive(Debug)]
pub struct DirSync {
    dir: PathBuf,
    synced: Option<DirState>,
}

#[derive(Debug, PartialEq, Eq)]
struct DirState {
    modified: SystemTime,
    entries: Vec<(std::ffi::OsString, u64)>,
}

impl DirSync {
    pub fn new(dir: &Path) -> DirSync {
        DirSync {
            dir: dir.to_owned(),
            synced: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state(&self) -> io::Result<DirState> {
        use std::os::unix::fs::DirEntryExt;
        let modified = std::fs::metadata(&self.dir)?.modified()?;
        let mut entries = std::fs::read_dir(&self.dir)?
            .map(|e| e.map(|e| (e.file_name(), e.ino())))
            .collect::<io::Result<Vec<_>>>()?;
        entries.sort_unstable();
        Ok(DirState { modified, entries })
    }

    /// fsyncs the directory if its entries may have changed since the last fsync. The state is
    /// read before the fsync: a change that lands in between is covered by this fsync and
    /// seen as a change by the next call.
    pub fn sync_if_changed(&mut self) -> io::Result<()> {
        let now = self.state()?;
        if self.synced.as_ref() == Some(&now) {
            return Ok(());
        }
        sync_dir(&self.dir)?;
        self.synced = Some(now);
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
        std::fs::write(d.path().join("db"), b"x").unwrap();
        s.sync_if_changed().unwrap();
        let first = s.state().unwrap();
        assert_eq!(s.synced.as_ref(), Some(&first));
        // Writing to a file is no change of the directory's entries.
        std::fs::write(d.path().join("db"), b"more").unwrap();
        s.sync_if_changed().unwrap();
        assert_eq!(s.synced.as_ref(), Some(&first));
        // A new entry, a rename over an existing name (a new inode behind it) and an unlink
        // are each a change, however soon they follow one another (one clock tick or not).
        type Change = Box<dyn Fn(&Path)>;
        let changes: Vec<Change> = vec![
            Box::new(|d| std::fs::write(d.join("snap.1.generating"), b"x").unwrap()),
            Box::new(|d| std::fs::rename(d.join("snap.1.generating"), d.join("snap.1")).unwrap()),
            Box::new(|d| {
                std::fs::write(d.join("conf.tmp"), b"c").unwrap();
                std::fs::rename(d.join("conf.tmp"), d.join("db")).unwrap()
            }),
            Box::new(|d| std::fs::remove_file(d.join("snap.1")).unwrap()),
        ];
        for change in changes {
            let before = s.state().unwrap();
            change(d.path());
            let after = s.state().unwrap();
            assert_ne!(before.entries, after.entries);
            s.sync_if_changed().unwrap();
            assert_eq!(s.synced, Some(after));
        }
    }
}
