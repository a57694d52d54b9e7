//! The group-commit writer: one thread owns the [`Store`] and makes every append durable.
//!
//! Callers send appends through a bounded channel and wait on a oneshot reply. The writer takes
//! the first request, drains whatever else is already queued (up to `max_batch_records`), commits
//! all of it with one fsync, then answers every waiter. While one fsync runs, the next requests
//! queue up, so durable throughput scales with load instead of being capped by fsync latency.
//!
//! Invariants:
//! - a reply `Ok` means the records are durable (DESIGN §3); a caller acknowledges its device
//!   only after it;
//! - each request is all-or-nothing (I4), and requests are committed in arrival order;
//! - after a failed commit the writer is poisoned: the page cache can no longer be trusted to
//!   match the disk, so every later append fails until the program restarts and re-verifies.
//!   [`LedgerHandle::poisoned`] and [`LedgerHandle::watch_poisoned`] tell the program, which
//!   reports it (health endpoint) and stops with an error so that it is restarted.

use std::ops::Range;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

use crate::note::Checkpoint;
use crate::origin::Origin;
use crate::store::{Entry, Head, Pruned, Reader, Staging, Store, StoreError};

#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Most records committed with one fsync.
    pub max_batch_records: u64,
    /// Requests waiting for the writer before senders wait too (backpressure).
    pub queue_depth: usize,
    /// Fault injection for tests and drills: while set, commits fail as a failed fsync would,
    /// which poisons the writer. Only in builds with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    pub fail_commits: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_batch_records: 4096,
            queue_depth: 1024,
            #[cfg(feature = "test-hooks")]
            fail_commits: None,
        }
    }
}

/// Result of a durable append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Seqs assigned to the request's entries.
    pub seqs: Range<u64>,
    /// The head right after the commit that included them.
    pub head: Head,
}

enum Cmd {
    Append {
        entries: Vec<Entry>,
        reply: oneshot::Sender<Result<Appended, StoreError>>,
    },
    Cosigned {
        note: String,
        checkpoint: Checkpoint,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Prune {
        received_before: i64,
        max_pages: usize,
        reply: oneshot::Sender<Result<Pruned, StoreError>>,
    },
    /// Make durable what was applied to other trees of the database (the witnessed ledgers).
    Sync {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Cheap, cloneable access to the ledger writer.
#[derive(Debug, Clone)]
pub struct LedgerHandle {
    tx: mpsc::Sender<Cmd>,
    head: watch::Receiver<Head>,
    reader: Reader,
    origin: Origin,
    boot: u32,
    /// Why the writer refuses appends, once a commit failed.
    poisoned: watch::Receiver<Option<String>>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmd::Append { entries, .. } => write!(f, "Append({} entries)", entries.len()),
            Cmd::Cosigned { checkpoint, .. } => write!(f, "Cosigned(size {})", checkpoint.size),
            Cmd::Prune { .. } => write!(f, "Prune"),
            Cmd::Sync { .. } => write!(f, "Sync"),
        }
    }
}

/// The writer thread; join it after the last handle is dropped.
#[derive(Debug)]
pub struct WriterThread {
    join: JoinHandle<Store>,
}

impl WriterThread {
    /// Waits for the writer to finish its queue and returns the store.
    pub fn join(self) -> Store {
        match self.join.join() {
            Ok(store) => store,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

/// Starts the writer thread for `store`.
pub fn spawn_writer(
    store: Store,
    cfg: WriterConfig,
) -> std::io::Result<(LedgerHandle, WriterThread)> {
    let (tx, rx) = mpsc::channel(cfg.queue_depth.max(1));
    let (head_tx, head_rx) = watch::channel(store.head());
    let (poisoned_tx, poisoned) = watch::channel(None);
    let handle = LedgerHandle {
        tx,
        head: head_rx,
        reader: store.reader(),
        origin: store.origin().clone(),
        boot: store.boot(),
        poisoned,
    };
    let join = std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || run(store, rx, head_tx, poisoned_tx, cfg))?;
    Ok((handle, WriterThread { join }))
}

/// The writer thread's state.
struct Writer {
    store: Store,
    head_tx: watch::Sender<Head>,
    cfg: WriterConfig,
    /// Why commits are refused since a failed one.
    poisoned: Option<String>,
    /// The same, for the handles.
    poisoned_tx: watch::Sender<Option<String>>,
}

fn run(
    store: Store,
    mut rx: mpsc::Receiver<Cmd>,
    head_tx: watch::Sender<Head>,
    poisoned_tx: watch::Sender<Option<String>>,
    cfg: WriterConfig,
) -> Store {
    let mut w = Writer {
        store,
        head_tx,
        cfg,
        poisoned: None,
        poisoned_tx,
    };
    let mut next: Option<Cmd> = None;
    loop {
        let cmd = match next.take() {
            Some(c) => c,
            None => match rx.blocking_recv() {
                Some(c) => c,
                None => break,
            },
        };
        match cmd {
            Cmd::Cosigned {
                note,
                checkpoint,
                reply,
            } => {
                let r = w
                    .usable()
                    .and_then(|()| w.store.record_cosigned(&note, &checkpoint));
                let _ = reply.send(r);
            }
            Cmd::Prune {
                received_before,
                max_pages,
                reply,
            } => {
                let r = w
                    .usable()
                    .and_then(|()| w.store.prune(received_before, max_pages));
                let _ = reply.send(r);
            }
            Cmd::Sync { reply } => {
                let r = w.usable().and_then(|()| w.store.sync());
                if let Err(e) = &r {
                    w.poison(e, 0);
                }
                let _ = reply.send(r);
            }
            Cmd::Append { entries, reply } => next = w.group_commit(entries, reply, &mut rx),
        }
    }
    w.store
}

impl Writer {
    fn usable(&self) -> Result<(), StoreError> {
        match &self.poisoned {
            Some(p) => Err(StoreError::Poisoned(p.clone())),
            None => Ok(()),
        }
    }

    fn poison(&mut self, e: &StoreError, records: u64) {
        // With its causes: "storage I/O error in <dir>: No space left on device (os error 28)"
        // tells a technician what to do.
        let why = with_causes(e);
        tracing::error!(
            ledger = %self.store.origin(),
            records,
            error = %why,
            "ledger commit failed; refusing further appends until restart"
        );
        self.poisoned = Some(why);
        self.poisoned_tx.send_replace(self.poisoned.clone());
    }

    /// Commits this append and every append already queued behind it with one fsync, then
    /// answers their waiters. Returns a command taken from the queue that is not an append.
    fn group_commit(
        &mut self,
        entries: Vec<Entry>,
        reply: oneshot::Sender<Result<Appended, StoreError>>,
        rx: &mut mpsc::Receiver<Cmd>,
    ) -> Option<Cmd> {
        if let Err(e) = self.usable() {
            let _ = reply.send(Err(e));
            return None;
        }
        let store = &self.store;
        let mut staging = store.staging();
        let mut waiters = Vec::new();
        // Requests are freed only after every waiter has its answer: dropping bodies is work
        // the devices need not wait for.
        let mut done: Vec<Vec<Entry>> = Vec::new();
        let mut take = |entries: Vec<Entry>, reply: oneshot::Sender<_>, st: &mut _| {
            match store.stage(st, &entries) {
                Ok(seqs) => waiters.push((reply, seqs)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
            done.push(entries);
        };
        take(entries, reply, &mut staging);
        let mut next = None;
        while staging.len() < self.cfg.max_batch_records {
            match rx.try_recv() {
                Ok(Cmd::Append { entries, reply }) => take(entries, reply, &mut staging),
                Ok(other) => {
                    next = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        if waiters.is_empty() {
            return next;
        }
        let records = staging.len();
        match self.commit(staging) {
            Ok(head) => {
                self.head_tx.send_replace(head);
                for (reply, seqs) in waiters {
                    let _ = reply.send(Ok(Appended { seqs, head }));
                }
            }
            Err(e) => {
                self.poison(&e, records);
                let msg = with_causes(&e);
                for (reply, _) in waiters {
                    let _ = reply.send(Err(StoreError::Poisoned(msg.clone())));
                }
            }
        }
        drop(done);
        next
    }

    fn commit(&mut self, staging: Staging) -> Result<Head, StoreError> {
        #[cfg(feature = "test-hooks")]
        if self
            .cfg
            .fail_commits
            .as_ref()
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst))
        {
            return Err(StoreError::Io {
                what: "injected commit failure on",
                path: self.store.path().to_owned(),
                source: std::io::Error::other("fault injection"),
            });
        }
        self.store.commit(staging)
    }
}

impl LedgerHandle {
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Boot counter of this run.
    pub fn boot(&self) -> u32 {
        self.boot
    }

    /// Appends `entries` as one all-or-nothing group; resolves once they are durable.
    pub async fn append(&self, entries: Vec<Entry>) -> Result<Appended, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append { entries, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues `entries` and returns at once with a receiver for the durable result. Requests
    /// queued one after the other get their seqs in that order, so a caller can keep several
    /// in flight and still know their order.
    pub async fn submit(
        &self,
        entries: Vec<Entry>,
    ) -> Result<oneshot::Receiver<Result<Appended, StoreError>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append { entries, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(rx)
    }

    /// [`append`](Self::append) for threads outside an async runtime.
    pub fn append_blocking(&self, entries: Vec<Entry>) -> Result<Appended, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(Cmd::Append { entries, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// Stores a checkpoint the hub cosigned.
    pub async fn record_cosigned(
        &self,
        note: String,
        checkpoint: Checkpoint,
    ) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Cosigned {
                note,
                checkpoint,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Removes records below the last cosigned size received before `received_before`
    /// (see [`Store::prune`]).
    pub async fn prune(
        &self,
        received_before: i64,
        max_pages: usize,
    ) -> Result<Pruned, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Prune {
                received_before,
                max_pages,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Makes durable everything applied to the database so far, the witnessed ledgers included
    /// (one thread, the writer, owns the database's fsyncs). For threads outside a runtime.
    pub fn sync_blocking(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(Cmd::Sync { reply })
            .map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// The head as of the last durable commit.
    pub fn head(&self) -> Head {
        *self.head.borrow()
    }

    /// Watch the head move (the forwarder wakes on it).
    pub fn subscribe(&self) -> watch::Receiver<Head> {
        self.head.clone()
    }

    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// Why the writer refuses every append since a commit failed; `None` while it is sound.
    pub fn poisoned(&self) -> Option<String> {
        self.poisoned.borrow().clone()
    }

    /// Watch for the writer being poisoned (it never recovers without a restart).
    pub fn watch_poisoned(&self) -> watch::Receiver<Option<String>> {
        self.poisoned.clone()
    }
}

/// An error and its causes, one after the other (`a: b: c`).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
