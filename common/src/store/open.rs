//! Open = verify: the chain is walked from the last cosigned checkpoint (or genesis, or the
//! pruning floor) to the committed head; a torn tail is cut by a writer and recorded.

use super::*;

/// The stored metadata a ledger is opened with.
struct Meta {
    boot: u32,
    head: HeadMeta,
    cosigned: Option<Cosigned>,
    floor: Option<Floor>,
}

/// Checks the data directory and, for a writer, creates the ledger directory in it.
fn prepare_dir(data_dir: &Path, writable: bool) -> Result<PathBuf, StoreError> {
    match std::fs::metadata(data_dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(StoreError::NotADirectory(data_dir.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StoreError::NoDataDir(data_dir.to_owned()))
        }
        Err(e) => {
            return Err(StoreError::Io {
                what: "cannot read data directory",
                path: data_dir.to_owned(),
                source: e,
            })
        }
    }
    let path = data_dir.join(LEDGER_DIR);
    if !writable && !path.join("db").exists() {
        return Err(StoreError::NoLedger(data_dir.to_owned()));
    }
    if writable {
        crate::durable::create_dir_all(&path).map_err(|e| StoreError::Io {
            what: "cannot create ledger directory",
            path: path.clone(),
            source: e,
        })?;
    }
    Ok(path)
}

/// A writer's open: the files sled created (and its `conf`, which it writes without an fsync)
/// are made durable with their names, before anything is appended.
fn sync_created(path: &Path) -> Result<(), StoreError> {
    let io = |what, p: &Path| {
        let p = p.to_owned();
        move |source| StoreError::Io {
            what,
            path: p,
            source,
        }
    };
    let conf = path.join("conf");
    if conf.exists() {
        crate::durable::sync_file(&conf).map_err(io("fsync failed on", &conf))?;
    }
    crate::durable::sync_dir(path).map_err(io("fsync failed on", path))
}

/// Opens the sled database, waiting a little for a lock the previous `Store` of this process
/// still holds; a panic of the engine while it recovers its log is a classified error.
fn open_db(path: &Path, opts: &StoreOptions) -> Result<sled::Db, StoreError> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(opts.cache_capacity_bytes)
        .segment_size(SEGMENT_SIZE)
        .flush_every_ms(None);
    // sled releases its file lock when its last background task lets go of the database,
    // which can be a moment after the previous `Store` in this process was dropped: wait a
    // little for it before reporting the ledger as held by someone else.
    let deadline = std::time::Instant::now() + opts.lock_wait;
    loop {
        match crate::process::contained(|| config.open()) {
            Ok(Ok(db)) => return Ok(db),
            Ok(Err(e)) => match StoreError::engine(path, e) {
                StoreError::Locked(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return Err(other),
            },
            Err(_) => {
                return Err(StoreError::Engine {
                    path: path.to_owned(),
                    message: "the storage engine failed while recovering the log (damaged files)"
                        .into(),
                })
            }
        }
    }
}

/// The ledger's origin: checked against the requested one, or written with the format marker
/// when a writer creates the ledger.
fn open_origin(
    db: &sled::Db,
    path: &Path,
    data_dir: &Path,
    access: &Access,
) -> Result<Origin, StoreError> {
    let get = |k: &[u8]| db.get(k).map_err(|e| StoreError::engine(path, e));
    match (get(K_FORMAT)?, access) {
        (Some(v), _) => {
            let found =
                u32::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                    StoreError::CorruptMeta("format version is not 4 bytes".into())
                })?);
            if found != FORMAT_VERSION {
                return Err(StoreError::UnsupportedFormat {
                    path: path.to_owned(),
                    found,
                });
            }
            let stored = get(K_ORIGIN)?
                .ok_or_else(|| StoreError::CorruptMeta("origin is missing".into()))?;
            let stored = std::str::from_utf8(&stored)
                .ok()
                .and_then(|s| Origin::parse(s).ok())
                .ok_or_else(|| StoreError::CorruptMeta("origin is not valid".into()))?;
            if let Access::Write(requested) = access {
                if *requested != stored {
                    return Err(StoreError::OriginMismatch {
                        path: path.to_owned(),
                        ledger: stored.to_string(),
                        requested: requested.to_string(),
                    });
                }
            }
            Ok(stored)
        }
        (None, Access::Write(origin)) => {
            if db.scan_prefix(b"p").next().is_some() {
                return Err(StoreError::CorruptMeta(
                    "records exist but the format marker is missing".into(),
                ));
            }
            let mut b = sled::Batch::default();
            b.insert(K_FORMAT, &FORMAT_VERSION.to_be_bytes());
            b.insert(K_ORIGIN, origin.as_str().as_bytes());
            b.insert(K_BOOT, &0u32.to_be_bytes());
            db.apply_batch(b).map_err(|e| StoreError::engine(path, e))?;
            Ok(origin.clone())
        }
        (None, Access::Read) => Err(StoreError::NoLedger(data_dir.to_owned())),
    }
}

/// Boot counter, head, cosigned checkpoint and pruning floor as stored.
fn read_meta(db: &sled::Db, path: &Path, origin: &Origin) -> Result<Meta, StoreError> {
    let get = |k: &[u8]| db.get(k).map_err(|e| StoreError::engine(path, e));
    let boot = match get(K_BOOT)? {
        Some(v) => u32::from_be_bytes(
            v.as_ref()
                .try_into()
                .map_err(|_| StoreError::CorruptMeta("boot counter is not 4 bytes".into()))?,
        ),
        None => 0,
    };
    let head: HeadMeta = match get(K_HEAD)? {
        Some(v) => postcard::from_bytes(&v)
            .map_err(|_| StoreError::CorruptMeta("head does not decode".into()))?,
        None => HeadMeta {
            size: 0,
            last_leaf: genesis_prev(origin.as_str()),
        },
    };
    let cosigned: Option<Cosigned> =
        match get(K_COSIGNED)? {
            Some(v) => Some(postcard::from_bytes(&v).map_err(|_| {
                StoreError::CorruptMeta("cosigned checkpoint does not decode".into())
            })?),
            None => None,
        };
    let floor: Option<Floor> = match get(K_FLOOR)? {
        Some(v) => Some(
            postcard::from_bytes(&v)
                .map_err(|_| StoreError::CorruptMeta("pruning floor does not decode".into()))?,
        ),
        None => None,
    };
    Ok(Meta {
        boot,
        head,
        cosigned,
        floor,
    })
}

impl Store {
    /// Opens the ledger in `data_dir` (its `ledger/` subdirectory) and verifies it.
    pub fn open(
        data_dir: &Path,
        access: Access,
        opts: &StoreOptions,
    ) -> Result<(Store, OpenReport), StoreError> {
        let writable = matches!(access, Access::Write(_));
        let path = prepare_dir(data_dir, writable)?;
        let db = open_db(&path, opts)?;
        if writable {
            sync_created(&path)?;
        }
        let log_path = path.join("db");
        let log = File::open(&log_path).map_err(|e| StoreError::Io {
            what: "cannot open ledger log",
            path: log_path.clone(),
            source: e,
        })?;
        let origin = open_origin(&db, &path, data_dir, &access)?;
        let meta = read_meta(&db, &path, &origin)?;
        let (chain, torn) = verify_chain(
            &db,
            &path,
            &origin,
            meta.head,
            meta.cosigned.as_ref(),
            meta.floor.as_ref(),
            opts.verify,
        )?;
        let verified_from = match (opts.verify, &meta.cosigned, &meta.floor) {
            (VerifyScope::SinceCosigned, Some(c), _) => c.size,
            (_, _, Some(f)) => f.size,
            _ => 0,
        };
        let mut store = Store {
            dir: std::sync::Mutex::new(crate::durable::DirSync::new(&path)),
            path,
            db,
            log,
            origin,
            boot: meta.boot,
            chain,
            cosigned: meta.cosigned,
            writable,
        };
        let repaired = if writable {
            store.start_boot(&torn)?
        } else {
            false
        };
        let report = OpenReport {
            head: store.head(),
            boot: store.boot,
            verified_from,
            torn_records: torn.records,
            repaired,
        };
        Ok((store, report))
    }

    /// A writer's start: the next boot counter and the cut of a torn tail are made durable
    /// before anything new is appended under the new boot; the cut is recorded. Returns whether
    /// a tail was cut.
    fn start_boot(&mut self, torn: &Torn) -> Result<bool, StoreError> {
        self.boot = self
            .boot
            .checked_add(1)
            .ok_or_else(|| StoreError::CorruptMeta("boot counter is exhausted".into()))?;
        let mut b = sled::Batch::default();
        b.insert(K_BOOT, &self.boot.to_be_bytes());
        for first in &torn.pages {
            b.remove(&pkey(*first));
        }
        self.db
            .apply_batch(b)
            .map_err(|e| StoreError::engine(&self.path, e))?;
        self.sync()?;
        let Some(&from_seq) = torn.pages.first() else {
            return Ok(false);
        };
        tracing::warn!(
            ledger = %self.origin,
            from_seq,
            removed = torn.records,
            "cut a torn tail: records beyond the last complete commit"
        );
        self.append(&[Entry {
            received_at: crate::record::now_micros(),
            body: Body::StationEvent(StationEvent::LedgerRepaired {
                from_seq,
                removed: torn.records,
                detail: "incomplete last batch cut on open; it was never acknowledged".into(),
            }),
        }])?;
        Ok(true)
    }
}

/// Pages beyond the committed head: an incomplete batch.
#[derive(Debug, Default)]
struct Torn {
    pages: Vec<u64>,
    records: u64,
}

/// Walks the chain from the verification start to the committed head. Returns the chain state at
/// the head and the pages beyond it (a torn tail).
fn verify_chain(
    db: &sled::Db,
    path: &Path,
    origin: &Origin,
    head: HeadMeta,
    cosigned: Option<&Cosigned>,
    floor: Option<&Floor>,
    scope: VerifyScope,
) -> Result<(ChainState, Torn), StoreError> {
    let fault = |seq: u64, kind| StoreError::Fault(Fault::at(seq, kind));
    if let Some(c) = cosigned {
        if c.size > head.size {
            return Err(fault(
                head.size,
                FaultKind::Truncated {
                    end: head.size,
                    size: c.size,
                },
            ));
        }
    }
    let mut chain = match (scope, cosigned) {
        (VerifyScope::SinceCosigned, Some(c)) => {
            let f = Frontier::from_parts(c.size, c.frontier.clone())
                .map_err(|e| StoreError::CorruptMeta(format!("cosigned frontier: {e}")))?;
            if f.root() != c.root {
                return Err(StoreError::CorruptMeta(
                    "cosigned frontier does not give the cosigned root".into(),
                ));
            }
            if c.size > 0 {
                let reader = Reader::for_tree(sled::Tree::clone(db), path.to_owned());
                if let Some(v) = reader.get(c.size - 1)? {
                    if leaf_hash(&v) != c.last_leaf {
                        return Err(fault(
                            c.size - 1,
                            FaultKind::Modified("differs from the cosigned checkpoint".into()),
                        ));
                    }
                }
            }
            ChainState::resume(origin.as_str(), f, c.last_leaf)
        }
        // Pruned records are gone: a full verification starts at the floor.
        (_, _) if floor.is_some_and(|f| f.size > 0) => {
            let fl = floor.expect("checked");
            let f = Frontier::from_parts(fl.size, fl.frontier.clone())
                .map_err(|e| StoreError::CorruptMeta(format!("pruning floor: {e}")))?;
            ChainState::resume(origin.as_str(), f, fl.last_leaf)
        }
        _ => ChainState::genesis(origin.as_str()),
    };
    let start = page_start(db, path, chain.size())?;
    let mut torn = Torn::default();
    for item in Pages::new(db, pkey(start)..=pkey(u64::MAX)) {
        let (k, v) = item.map_err(|e| StoreError::engine(path, e))?;
        let first = first_of_key(&k)
            .ok_or_else(|| StoreError::CorruptMeta(format!("unexpected key {k:?}")))?;
        let Some(records) = page_records(&v) else {
            return Err(fault(
                first.max(chain.size()),
                FaultKind::Modified(format!("the page of records from seq {first} is damaged")),
            ));
        };
        if first >= head.size {
            torn.pages.push(first);
            torn.records += records.len() as u64;
            if torn.records > MAX_TORN_RECORDS {
                return Err(StoreError::CorruptMeta(format!(
                    "more than {MAX_TORN_RECORDS} records beyond the committed head {}; refusing to cut them",
                    head.size
                )));
            }
            continue;
        }
        if first > chain.size() {
            return Err(fault(chain.size(), FaultKind::Missing));
        }
        for (i, bytes) in records.iter().enumerate() {
            let seq = first + i as u64;
            if seq < chain.size() {
                // Resuming inside a page: records before the resume point were verified then.
                continue;
            }
            if seq >= head.size {
                return Err(StoreError::CorruptMeta(format!(
                    "the page from seq {first} runs past the committed head {}",
                    head.size
                )));
            }
            check_link(&mut chain, seq, bytes, head.size)?;
            if let (VerifyScope::Full, Some(c)) = (scope, cosigned) {
                if chain.size() == c.size && chain.root() != c.root {
                    return Err(fault(seq, FaultKind::RootMismatch { size: c.size }));
                }
            }
        }
    }
    if chain.size() < head.size {
        return Err(fault(
            chain.size(),
            FaultKind::Truncated {
                end: chain.size(),
                size: head.size,
            },
        ));
    }
    if chain.last_leaf() != head.last_leaf {
        return Err(fault(
            head.size.saturating_sub(1),
            FaultKind::Modified("differs from the committed head".into()),
        ));
    }
    Ok((chain, torn))
}

/// Checks that the record stored at `seq` extends the chain, classifying what is wrong if not.
fn check_link(
    chain: &mut ChainState,
    seq: u64,
    bytes: &[u8],
    head_size: u64,
) -> Result<(), StoreError> {
    chain
        .check(bytes)
        .map(drop)
        .map_err(|e| StoreError::Fault(e.fault_at(seq, Some(head_size))))
}
