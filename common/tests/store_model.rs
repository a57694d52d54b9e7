//! Model-based test of the ledger store: random sequences of appends, reads, cosigned
//! checkpoints, pruning, reopening and crashes in the middle of a batch, run against a real store
//! in a temporary directory and against a plain list of the record bytes the store must hold.
//!
//! The model encodes every record itself (origin, seq, boot, received time, previous leaf hash,
//! body) and computes the Merkle root from its own leaves, so a store that assigns a wrong seq,
//! boot or link, loses or reorders a record, or reports a wrong head fails here even when its own
//! verification agrees with it. After every step the test compares the head, the floor, the
//! cosigned size and every record, and walks the stored chain from genesis.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::Path;

use proofline_common::chain::ChainState;
use proofline_common::hash::{genesis_prev, leaf_hash, Hash};
use proofline_common::merkle::root_of;
use proofline_common::note::{Checkpoint, NoteSigner};
use proofline_common::record::{Body, Record, RecordV1, StationEvent, MAX_RECORD_BYTES};
use proofline_common::store::{
    Access, Entry, OpenReport, Store, StoreError, StoreOptions, VerifyScope,
};
use proofline_common::synth::inspection_result;
use proofline_common::writer::{spawn_writer, WriterConfig};
use proofline_common::Origin;
use proptest::prelude::*;

const ORIGIN: &str = "proofline/plant-1/flow-01";
/// Received times come from a logical clock so that pruning by age is predictable.
const CLOCK_START: i64 = 1_000_000;

/// How big one record should be.
#[derive(Debug, Clone, Copy)]
enum Size {
    /// A few hundred bytes: many records share a page.
    Small(u16),
    /// Around the page target: records open new pages and pages hold one or two records.
    Medium(u16),
    /// Within a few bytes of the record limit, on either side of it.
    NearLimit(i8),
}

#[derive(Debug, Clone, Copy)]
enum CosignHow {
    /// At a size between the last cosigned size and the head, with the right root.
    Valid,
    /// Below the last cosigned size: refused.
    BelowLast,
    /// Beyond the head: refused.
    BeyondHead,
    /// The right size with another root: refused.
    WrongRoot,
}

#[derive(Debug, Clone)]
enum Op {
    /// One `Store::append`: one commit, all or nothing.
    Append(Vec<Size>),
    /// Requests queued to the group-commit writer one after the other; each is all or nothing,
    /// and they may share commits.
    WriterAppend(Vec<Vec<Size>>),
    Read {
        from: u16,
        to: u16,
    },
    Cosign {
        pick: u16,
        how: CosignHow,
    },
    Prune {
        /// Per mille of the clock so far; 1000 and above means "everything is old".
        before: u16,
        max_pages: usize,
    },
    Reopen {
        full_verify: bool,
        read_first: bool,
    },
    /// A crash in the middle of a commit: pages of records beyond the committed head are on
    /// disk, the head is not. Then a restart.
    Tear {
        pads: Vec<u16>,
        per_page: usize,
        read_first: bool,
    },
}

fn size() -> impl Strategy<Value = Size> {
    prop_oneof![
        5 => (0u16..200).prop_map(Size::Small),
        3 => (1_000u16..4_500).prop_map(Size::Medium),
        2 => (-3i8..=2).prop_map(Size::NearLimit),
    ]
}

fn batch() -> impl Strategy<Value = Vec<Size>> {
    prop_oneof![
        1 => Just(Vec::new()),
        8 => proptest::collection::vec(size(), 1..7),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let how = prop_oneof![
        6 => Just(CosignHow::Valid),
        1 => Just(CosignHow::BelowLast),
        1 => Just(CosignHow::BeyondHead),
        1 => Just(CosignHow::WrongRoot),
    ];
    prop_oneof![
        10 => batch().prop_map(Op::Append),
        2 => proptest::collection::vec(batch(), 1..5).prop_map(Op::WriterAppend),
        4 => (any::<u16>(), any::<u16>()).prop_map(|(from, to)| Op::Read { from, to }),
        4 => (any::<u16>(), how).prop_map(|(pick, how)| Op::Cosign { pick, how }),
        4 => (0u16..1_500, prop_oneof![Just(0usize), Just(1), Just(2), Just(usize::MAX)])
            .prop_map(|(before, max_pages)| Op::Prune { before, max_pages }),
        2 => (any::<bool>(), any::<bool>())
            .prop_map(|(full_verify, read_first)| Op::Reopen { full_verify, read_first }),
        2 => (proptest::collection::vec(0u16..3_000, 1..6), 1usize..4, any::<bool>())
            .prop_map(|(pads, per_page, read_first)| Op::Tear { pads, per_page, read_first }),
    ]
}

/// What the store must hold.
#[derive(Debug)]
struct Model {
    origin: String,
    /// Every record ever appended, pruned or not, as the exact bytes the store must return.
    records: Vec<Vec<u8>>,
    leaves: Vec<Hash>,
    received: Vec<i64>,
    boot: u32,
    floor: u64,
    cosigned: Option<u64>,
    /// Seqs where a page certainly starts: the start of every commit.
    page_starts: BTreeSet<u64>,
    clock: i64,
    /// Distinguishes the bodies of successive entries.
    next_body: u64,
}

impl Model {
    fn new() -> Self {
        Model {
            origin: ORIGIN.to_owned(),
            records: Vec::new(),
            leaves: Vec::new(),
            received: Vec::new(),
            boot: 0,
            floor: 0,
            cosigned: None,
            page_starts: BTreeSet::new(),
            clock: CLOCK_START,
            next_body: 0,
        }
    }

    fn len(&self) -> u64 {
        self.records.len() as u64
    }

    fn last_leaf(&self) -> Hash {
        self.leaves
            .last()
            .copied()
            .unwrap_or_else(|| genesis_prev(&self.origin))
    }

    fn root_at(&self, size: u64) -> Hash {
        root_of(&self.leaves[..size as usize])
    }

    /// The bytes record `seq` must have, built without the store's encoder.
    fn encode(&self, seq: u64, prev: Hash, received_at: i64, body: &Body) -> Vec<u8> {
        Record::V1(RecordV1 {
            origin: self.origin.clone(),
            seq,
            boot: self.boot,
            received_at,
            prev,
            body: body.clone(),
        })
        .encode()
    }

    /// An entry of about the asked size, to be appended at `seq`.
    fn entry(&mut self, size: Size, seq: u64) -> Entry {
        let i = self.next_body;
        self.next_body += 1;
        self.clock += 1;
        let received_at = self.clock;
        let pad = match size {
            Size::Small(p) | Size::Medium(p) => usize::from(p),
            Size::NearLimit(delta) => {
                // From 128 padding bytes on, the padding's length prefix takes two bytes.
                let bare = self
                    .encode(seq, Hash::default(), received_at, &inspection_result(i, 0))
                    .len();
                (MAX_RECORD_BYTES as isize + isize::from(delta) - bare as isize - 1).max(0) as usize
            }
        };
        Entry {
            received_at,
            body: inspection_result(i, pad),
        }
    }

    fn push(&mut self, bytes: Vec<u8>, received_at: i64) {
        self.leaves.push(leaf_hash(&bytes));
        self.records.push(bytes);
        self.received.push(received_at);
    }

    /// Applies one all-or-nothing group: the seqs it gets, or `None` when one of its records
    /// is over the limit.
    fn append(&mut self, entries: &[Entry]) -> Option<Range<u64>> {
        let start = self.len();
        let mut prev = self.last_leaf();
        let mut staged = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let bytes = self.encode(start + i as u64, prev, e.received_at, &e.body);
            if bytes.len() > MAX_RECORD_BYTES {
                return None;
            }
            prev = leaf_hash(&bytes);
            staged.push((bytes, e.received_at));
        }
        for (bytes, at) in staged {
            self.push(bytes, at);
        }
        Some(start..self.len())
    }

    /// Where verification on open starts.
    fn verified_from(&self, scope: VerifyScope) -> u64 {
        match (scope, self.cosigned) {
            (VerifyScope::SinceCosigned, Some(c)) => c,
            _ => self.floor,
        }
    }
}

fn origin() -> Origin {
    Origin::parse(ORIGIN).unwrap()
}

fn options(scope: VerifyScope) -> StoreOptions {
    StoreOptions {
        verify: scope,
        ..StoreOptions::default()
    }
}

fn open(
    dir: &Path,
    access: Access,
    scope: VerifyScope,
) -> Result<(Store, OpenReport), TestCaseError> {
    Store::open(dir, access, &options(scope))
        .map_err(|e| TestCaseError::fail(format!("open failed: {e}")))
}

/// Everything observable about the store agrees with the model.
fn check(store: &Store, m: &Model) -> Result<(), TestCaseError> {
    let head = store.head();
    prop_assert_eq!(head.size, m.len(), "head size");
    prop_assert_eq!(head.last_leaf, m.last_leaf(), "last leaf");
    prop_assert_eq!(head.root, m.root_at(m.len()), "root");
    prop_assert_eq!(store.frontier().root(), head.root);
    prop_assert_eq!(store.floor().unwrap(), m.floor, "floor");
    prop_assert_eq!(
        store.cosigned().map(|c| c.size),
        m.cosigned,
        "cosigned size"
    );
    if let Some(c) = store.cosigned() {
        prop_assert_eq!(c.root, m.root_at(c.size), "cosigned root");
    }

    // Every record from the floor to the head, byte for byte, and nothing else, even when the
    // range asked for reaches past both ends.
    let stored: Vec<(u64, Vec<u8>)> = store
        .reader()
        .range(0..m.len() + 3)
        .collect::<Result<_, _>>()
        .map_err(|e| TestCaseError::fail(format!("reading the ledger: {e}")))?;
    let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
    prop_assert_eq!(seqs, (m.floor..m.len()).collect::<Vec<_>>(), "stored seqs");
    for (seq, bytes) in &stored {
        prop_assert!(
            *bytes == m.records[*seq as usize],
            "record {} differs from the model",
            seq
        );
    }
    if m.floor > 0 {
        prop_assert!(store.reader().get(m.floor - 1).unwrap().is_none());
    }
    prop_assert!(store.reader().get(m.len()).unwrap().is_none());

    // The chain verifies from genesis: the model's bytes below the floor (the hub holds those),
    // the stored bytes from there on.
    let mut chain = ChainState::genesis(ORIGIN);
    for bytes in m.records[..m.floor as usize]
        .iter()
        .chain(stored.iter().map(|(_, b)| b))
    {
        chain
            .check(bytes)
            .map_err(|e| TestCaseError::fail(format!("chain broken at {}: {e:?}", chain.size())))?;
    }
    prop_assert_eq!(chain.root(), head.root, "chain root");
    Ok(())
}

/// Checks what opening found against the model, for an open that found nothing to repair.
fn check_clean_open(r: &OpenReport, m: &Model, scope: VerifyScope) -> Result<(), TestCaseError> {
    prop_assert_eq!(r.head.size, m.len());
    prop_assert_eq!(r.boot, m.boot);
    prop_assert_eq!((r.torn_records, r.repaired), (0, false));
    prop_assert_eq!(r.verified_from, m.verified_from(scope));
    Ok(())
}

/// Writes pages of `records` beyond the head as a commit does before it writes the head, then
/// makes them durable: what a power cut between the two leaves behind. Written the way a disk
/// editor would, with the store closed: pages are `p` ‖ first seq (u64 BE) → records, each
/// preceded by its length (u16 LE).
fn leave_torn_pages(dir: &Path, records: &[Vec<u8>], first: u64, per_page: usize) {
    let config = sled::Config::new()
        .path(dir.join(proofline_common::store::LEDGER_DIR))
        .segment_size(1 << 20)
        .flush_every_ms(None);
    // sled lets go of its file lock a moment after the store that held it was dropped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let db = loop {
        match config.open() {
            Ok(db) => break db,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("cannot open the ledger to tear its tail: {e}"),
        }
    };
    for (i, chunk) in records.chunks(per_page).enumerate() {
        let mut page = Vec::new();
        for r in chunk {
            page.extend_from_slice(&(r.len() as u16).to_le_bytes());
            page.extend_from_slice(r);
        }
        let mut key = vec![b'p'];
        key.extend_from_slice(&(first + (i * per_page) as u64).to_be_bytes());
        db.insert(key, page).unwrap();
    }
    db.flush().unwrap();
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let signer = NoteSigner::generate(ORIGIN).unwrap();
    let mut m = Model::new();
    let (s, r) = open(dir, Access::Write(origin()), VerifyScope::SinceCosigned)?;
    m.boot = 1;
    check_clean_open(&r, &m, VerifyScope::SinceCosigned)?;
    let mut store = Some(s);

    for op in ops {
        let s = store.as_mut().expect("the store is open between steps");
        match op {
            Op::Append(sizes) => {
                let start = m.len();
                let entries: Vec<Entry> = sizes.iter().map(|z| m.entry(*z, start)).collect();
                let want = m.append(&entries);
                match (s.append(&entries), want) {
                    (Ok(got), Some(want)) => {
                        prop_assert_eq!(got, want.clone());
                        if !want.is_empty() {
                            m.page_starts.insert(want.start);
                        }
                    }
                    (Err(StoreError::RecordTooLarge { size }), None) => {
                        prop_assert!(size > MAX_RECORD_BYTES);
                    }
                    (got, want) => {
                        return Err(TestCaseError::fail(format!(
                            "append: store {got:?}, model {want:?}"
                        )))
                    }
                }
            }
            Op::WriterAppend(groups) => {
                let taken = store.take().expect("open");
                let (handle, thread) = spawn_writer(taken, WriterConfig::default()).unwrap();
                prop_assert_eq!(handle.boot(), m.boot);
                // Seqs depend on which earlier groups were refused, so the model applies each
                // group right after building it, in the order they are queued.
                let start = m.len();
                let mut queued = Vec::new();
                for sizes in &groups {
                    let at = m.len();
                    let entries: Vec<Entry> = sizes.iter().map(|z| m.entry(*z, at)).collect();
                    let want = m.append(&entries);
                    queued.push((entries, want));
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                let results = rt.block_on(async {
                    let mut replies = Vec::new();
                    for (entries, _) in &queued {
                        replies.push(handle.submit(entries.clone()).await.unwrap());
                    }
                    let mut out = Vec::new();
                    for r in replies {
                        out.push(r.await.unwrap());
                    }
                    out
                });
                for (got, (_, want)) in results.into_iter().zip(&queued) {
                    match (got, want) {
                        (Ok(a), Some(want)) => {
                            prop_assert_eq!(&a.seqs, want);
                            prop_assert!(a.head.size >= want.end && a.head.size <= m.len());
                        }
                        (Err(StoreError::RecordTooLarge { .. }), None) => {}
                        (got, want) => {
                            return Err(TestCaseError::fail(format!(
                                "writer append: store {got:?}, model {want:?}"
                            )))
                        }
                    }
                }
                prop_assert_eq!(handle.head().size, m.len());
                drop(handle);
                // Only the first commit surely starts at the op's first seq; how the writer
                // grouped the rest depends on timing.
                if m.len() > start {
                    m.page_starts.insert(start);
                }
                store = Some(thread.join());
            }
            Op::Read { from, to } => {
                let span = m.len() + 4;
                let (from, to) = (u64::from(from) % span, u64::from(to) % span);
                let got: Vec<(u64, Vec<u8>)> = s
                    .reader()
                    .range(from..to)
                    .collect::<Result<_, _>>()
                    .map_err(|e| TestCaseError::fail(format!("range {from}..{to}: {e}")))?;
                let want: Vec<(u64, Vec<u8>)> = (from.max(m.floor)..to.min(m.len()))
                    .map(|q| (q, m.records[q as usize].clone()))
                    .collect();
                prop_assert!(got == want, "range {}..{} differs from the model", from, to);
                let one = s.reader().get(from).unwrap();
                let want_one = (m.floor..m.len())
                    .contains(&from)
                    .then(|| m.records[from as usize].clone());
                prop_assert!(one == want_one, "get({}) differs from the model", from);
            }
            Op::Cosign { pick, how } => {
                let last = m.cosigned.unwrap_or(0);
                let valid = last + u64::from(pick) % (m.len() - last + 1);
                let (size, root) = match how {
                    CosignHow::Valid => (valid, m.root_at(valid)),
                    CosignHow::BelowLast if last > 0 => {
                        let below = u64::from(pick) % last;
                        (below, m.root_at(below))
                    }
                    CosignHow::BelowLast => continue,
                    CosignHow::BeyondHead => (m.len() + 1, leaf_hash(b"beyond the head")),
                    CosignHow::WrongRoot => (valid, leaf_hash(b"another ledger")),
                };
                let cp = Checkpoint {
                    origin: ORIGIN.into(),
                    size,
                    root,
                };
                // The store keeps the note as it came; the agent checked both signatures first.
                let note = cp.sign(&signer).unwrap().to_string();
                let got = s.record_cosigned(&note, &cp);
                match how {
                    CosignHow::Valid => {
                        prop_assert!(got.is_ok(), "cosign at {}: {:?}", size, got);
                        m.cosigned = Some(size);
                        prop_assert_eq!(s.cosigned().map(|c| c.note.as_str()), Some(&*note));
                    }
                    _ => prop_assert!(
                        matches!(got, Err(StoreError::CosignedMismatch(_))),
                        "cosign {:?} at {}: {:?}",
                        how,
                        size,
                        got
                    ),
                }
            }
            Op::Prune { before, max_pages } => {
                let received_before = if before >= 1_000 {
                    i64::MAX
                } else {
                    CLOCK_START + (m.clock - CLOCK_START) * i64::from(before) / 1_000
                };
                let old_floor = m.floor;
                let p = s
                    .prune(received_before, max_pages)
                    .map_err(|e| TestCaseError::fail(format!("prune: {e}")))?;
                prop_assert_eq!(p.records, p.floor - old_floor);
                let limit = m.cosigned.unwrap_or(0).max(old_floor);
                prop_assert!(p.floor >= old_floor && p.floor <= limit, "{:?}", p);
                prop_assert!(
                    m.received[old_floor as usize..p.floor as usize]
                        .iter()
                        .all(|t| *t < received_before),
                    "pruned a record received at or after {}",
                    received_before
                );
                if max_pages == 0 {
                    prop_assert_eq!(p.floor, old_floor);
                }
                if max_pages == usize::MAX {
                    // Whole pages up to the last commit start at or below the cosigned size
                    // whose records are all old must go.
                    let young = m.received[old_floor as usize..]
                        .iter()
                        .position(|t| *t >= received_before)
                        .map_or(m.len(), |i| old_floor + i as u64);
                    let reach = m
                        .page_starts
                        .range(..=limit.min(young))
                        .next_back()
                        .copied()
                        .unwrap_or(0);
                    prop_assert!(
                        p.floor >= reach,
                        "pruning stopped at {} before the page start {}",
                        p.floor,
                        reach
                    );
                }
                m.floor = p.floor;
                m.page_starts.insert(p.floor);
            }
            Op::Reopen {
                full_verify,
                read_first,
            } => {
                let scope = if full_verify {
                    VerifyScope::Full
                } else {
                    VerifyScope::SinceCosigned
                };
                drop(store.take());
                if read_first {
                    let (ro, r) = open(dir, Access::Read, scope)?;
                    check_clean_open(&r, &m, scope)?;
                    check(&ro, &m)?;
                }
                let (rw, r) = open(dir, Access::Write(origin()), scope)?;
                m.boot += 1;
                check_clean_open(&r, &m, scope)?;
                store = Some(rw);
            }
            Op::Tear {
                pads,
                per_page,
                read_first,
            } => {
                // The batch that was being committed: chained on from the head, written by this
                // boot, never acknowledged, so never in the model.
                let first = m.len();
                let mut prev = m.last_leaf();
                let mut torn = Vec::new();
                for (i, pad) in pads.iter().enumerate() {
                    let bytes = m.encode(
                        first + i as u64,
                        prev,
                        m.clock + 1,
                        &inspection_result(m.next_body, usize::from(*pad)),
                    );
                    prev = leaf_hash(&bytes);
                    torn.push(bytes);
                }
                drop(store.take());
                leave_torn_pages(dir, &torn, first, per_page);
                if read_first {
                    // Read access reports the torn records and changes nothing.
                    let (ro, r) = open(dir, Access::Read, VerifyScope::SinceCosigned)?;
                    prop_assert_eq!((r.head.size, r.boot), (m.len(), m.boot));
                    prop_assert_eq!((r.torn_records, r.repaired), (torn.len() as u64, false));
                    drop(ro);
                }
                let (rw, r) = open(dir, Access::Write(origin()), VerifyScope::SinceCosigned)?;
                m.boot += 1;
                prop_assert_eq!((r.torn_records, r.repaired), (torn.len() as u64, true));
                prop_assert_eq!(r.boot, m.boot);
                prop_assert_eq!(r.head.size, m.len() + 1, "the repair is recorded");
                // The repair record: the next seq, this boot, naming what was cut.
                let bytes = rw.reader().get(first).unwrap().unwrap();
                let rec = Record::decode(&bytes).unwrap();
                let Body::StationEvent(StationEvent::LedgerRepaired {
                    from_seq, removed, ..
                }) = rec.body()
                else {
                    return Err(TestCaseError::fail(format!(
                        "expected a repair record at {first}, found {rec:?}"
                    )));
                };
                prop_assert_eq!((*from_seq, *removed), (first, torn.len() as u64));
                let received_at = rec.v1().received_at;
                prop_assert!(
                    bytes == m.encode(first, m.last_leaf(), received_at, rec.body()),
                    "the repair record is not chained on from the head under the new boot"
                );
                m.push(bytes, received_at);
                m.page_starts.insert(first);
                store = Some(rw);
            }
        }
        check(store.as_ref().expect("open"), &m)?;
    }

    // Whatever happened, the ledger opens and verifies from genesis (or the floor) at the end.
    drop(store);
    let (ro, r) = open(dir, Access::Read, VerifyScope::Full)?;
    check_clean_open(&r, &m, VerifyScope::Full)?;
    check(&ro, &m)?;
    Ok(())
}

proptest! {
    // Every step commits with an fsync and some reopen sled: a few dozen sequences keep the
    // test to seconds in a debug build.
    #![proptest_config(ProptestConfig {
        cases: 40,
        max_shrink_iters: 512,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_store_agrees_with_a_list_of_records_through_appends_crashes_and_pruning(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        run(ops)?;
    }
}
