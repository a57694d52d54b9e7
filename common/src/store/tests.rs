use super::page::push_record;
use super::*;
use crate::note::NoteSigner;
use crate::record::{Record, RecordV1};
use crate::synth::inspection_result;
use crate::writer::{spawn_writer, WriterConfig};

const ORIGIN: &str = "proofline/plant-1/flow-01";

fn origin() -> Origin {
    Origin::parse(ORIGIN).unwrap()
}

fn entries(from: u64, n: u64) -> Vec<Entry> {
    (from..from + n)
        .map(|i| Entry {
            received_at: 1_700_000_000_000_000 + i as i64,
            body: inspection_result(i, 8),
        })
        .collect()
}

fn open_rw(dir: &Path) -> Result<(Store, OpenReport), StoreError> {
    Store::open(dir, Access::Write(origin()), &StoreOptions::default())
}

fn open_ro(dir: &Path) -> Result<(Store, OpenReport), StoreError> {
    Store::open(dir, Access::Read, &StoreOptions::default())
}

/// A ledger of `n` records in batches of 5, closed again.
fn ledger(n: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_rw(dir.path()).unwrap();
    let mut i = 0;
    while i < n {
        let k = 5.min(n - i);
        s.append(&entries(i, k)).unwrap();
        i += k;
    }
    dir
}

/// Edits the sled database directly, as damage or an attacker would.
fn raw(dir: &Path, f: impl FnOnce(&sled::Db)) {
    let config = sled::Config::new()
        .path(dir.join(LEDGER_DIR))
        .segment_size(SEGMENT_SIZE)
        .flush_every_ms(None);
    // The store just dropped may still hold sled's lock for a moment (see `Store::open`).
    let mut tries = 0;
    let db = loop {
        match config.open() {
            Ok(db) => break db,
            Err(e) if tries < 100 => {
                tries += 1;
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("cannot open the ledger for editing: {e}"),
        }
    };
    f(&db);
    db.flush().unwrap();
}

/// Rewrites the stored records through a seq → bytes map, one record per page, as a disk editor
/// (or an attacker) could. The committed head is left as it was.
fn rewrite(dir: &Path, f: impl FnOnce(&mut std::collections::BTreeMap<u64, Vec<u8>>)) {
    raw(dir, |db| {
        let mut map = std::collections::BTreeMap::new();
        let keys: Vec<_> = db.scan_prefix(b"p").map(|kv| kv.unwrap()).collect();
        for (k, v) in &keys {
            let first = first_of_key(k).unwrap();
            for (i, r) in page_records(v).unwrap().into_iter().enumerate() {
                map.insert(first + i as u64, r.to_vec());
            }
            db.remove(k).unwrap();
        }
        f(&mut map);
        for (seq, bytes) in map {
            let mut page = Vec::new();
            push_record(&mut page, &bytes);
            db.insert(pkey(seq), page).unwrap();
        }
    });
}

fn fault_of(r: Result<(Store, OpenReport), StoreError>) -> Fault {
    match r {
        Err(StoreError::Fault(f)) => f,
        Err(e) => panic!("expected a fault, got error {e}"),
        Ok(_) => panic!("expected a fault, ledger opened"),
    }
}

#[test]
fn appends_survive_reopen_and_each_open_is_a_new_boot() {
    let dir = ledger(23);
    let (s, r) = open_rw(dir.path()).unwrap();
    assert_eq!(r.head.size, 23);
    assert_eq!(r.boot, 2);
    let recs: Vec<_> = s.reader().range(0..23).map(|x| x.unwrap()).collect();
    assert_eq!(recs.len(), 23);
    assert_eq!(Record::decode(&recs[22].1).unwrap().v1().boot, 1);
    drop(s);
    let (_, r) = open_ro(dir.path()).unwrap();
    assert_eq!(
        (r.head.size, r.boot),
        (23, 2),
        "read access changes nothing"
    );
}

#[test]
fn a_batch_is_one_group_and_seqs_are_contiguous() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_rw(dir.path()).unwrap();
    assert_eq!(s.append(&entries(0, 3)).unwrap(), 0..3);
    assert_eq!(s.append(&entries(3, 4)).unwrap(), 3..7);
    let mut chain = ChainState::genesis(ORIGIN);
    for item in s.reader().range(0..7) {
        chain.check(&item.unwrap().1).unwrap();
    }
    assert_eq!(chain.root(), s.head().root);
}

#[test]
fn an_oversized_record_rejects_its_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_rw(dir.path()).unwrap();
    let mut group = entries(0, 2);
    group.push(Entry {
        received_at: 0,
        body: inspection_result(9, MAX_RECORD_BYTES),
    });
    assert!(matches!(
        s.append(&group),
        Err(StoreError::RecordTooLarge { .. })
    ));
    assert_eq!(s.head().size, 0);
    assert_eq!(s.append(&entries(0, 1)).unwrap(), 0..1);
}

#[test]
fn bad_data_dirs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    assert!(matches!(open_rw(&missing), Err(StoreError::NoDataDir(_))));
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(open_rw(&file), Err(StoreError::NotADirectory(_))));
    assert!(matches!(open_ro(dir.path()), Err(StoreError::NoLedger(_))));
}

#[test]
fn a_ledger_refuses_another_origin() {
    let dir = ledger(3);
    let other = Origin::parse("proofline/plant-1/flow-02").unwrap();
    let r = Store::open(dir.path(), Access::Write(other), &StoreOptions::default());
    assert!(matches!(r, Err(StoreError::OriginMismatch { .. })), "{r:?}");
}

#[test]
fn a_ledger_open_elsewhere_is_reported_as_locked() {
    let dir = ledger(3);
    let (_s, _) = open_rw(dir.path()).unwrap();
    let quick = StoreOptions {
        lock_wait: std::time::Duration::from_millis(100),
        ..StoreOptions::default()
    };
    let r = Store::open(dir.path(), Access::Read, &quick);
    assert!(matches!(r, Err(StoreError::Locked(_))), "{r:?}");
}

#[test]
fn a_flipped_byte_is_found_at_its_seq() {
    let dir = ledger(20);
    rewrite(dir.path(), |m| {
        let v = m.get_mut(&7).unwrap();
        let n = v.len();
        v[n - 20] ^= 0x40;
    });
    let f = fault_of(open_ro(dir.path()));
    assert_eq!((f.seq, f.kind.name()), (Some(7), "modified"), "{f}");
    let f = fault_of(open_rw(dir.path()));
    assert_eq!(f.seq, Some(7));
}

#[test]
fn a_modified_last_record_is_found_against_the_head() {
    let dir = ledger(20);
    rewrite(dir.path(), |m| {
        let Record::V1(mut r) = Record::decode(&m[&19]).unwrap();
        r.received_at += 1;
        m.insert(19, Record::V1(r).encode());
    });
    let f = fault_of(open_ro(dir.path()));
    assert_eq!((f.seq, f.kind.name()), (Some(19), "modified"), "{f}");
}

#[test]
fn a_dropped_record_is_missing() {
    let dir = ledger(20);
    rewrite(dir.path(), |m| {
        m.remove(&11);
    });
    let f = fault_of(open_ro(dir.path()));
    assert_eq!((f.seq, f.kind.name()), (Some(11), "missing"), "{f}");
}

#[test]
fn two_swapped_records_are_reordered() {
    let dir = ledger(20);
    rewrite(dir.path(), |m| {
        let a = m.remove(&4).unwrap();
        let b = m.remove(&5).unwrap();
        m.insert(4, b);
        m.insert(5, a);
    });
    let f = fault_of(open_ro(dir.path()));
    assert_eq!((f.seq, f.kind.name()), (Some(4), "reordered"), "{f}");
}

#[test]
fn a_cut_tail_is_truncated() {
    let dir = ledger(20);
    rewrite(dir.path(), |m| m.retain(|s, _| *s < 15));
    let f = fault_of(open_ro(dir.path()));
    assert_eq!((f.seq, f.kind.name()), (Some(15), "truncated"), "{f}");
}

#[test]
fn records_spliced_from_another_ledger_are_foreign() {
    let dir = ledger(20);
    let other = tempfile::tempdir().unwrap();
    let o = Origin::parse("proofline/plant-1/flow-02").unwrap();
    let (mut s2, _) =
        Store::open(other.path(), Access::Write(o), &StoreOptions::default()).unwrap();
    s2.append(&entries(0, 20)).unwrap();
    let foreign: Vec<_> = s2.reader().range(8..10).map(|r| r.unwrap()).collect();
    drop(s2);
    rewrite(dir.path(), |m| m.extend(foreign));
    let f = fault_of(open_ro(dir.path()));
    assert_eq!((f.seq, f.kind.name()), (Some(8), "foreign origin"), "{f}");
}

#[test]
fn a_torn_tail_is_reported_read_only_and_cut_by_a_writer() {
    let dir = ledger(10);
    // A record beyond the committed head: written, never committed as part of a batch.
    let (s, _) = open_ro(dir.path()).unwrap();
    let head = s.head();
    drop(s);
    let torn = Record::V1(RecordV1 {
        origin: ORIGIN.into(),
        seq: 10,
        boot: 1,
        received_at: 0,
        prev: head.last_leaf,
        body: inspection_result(10, 0),
    })
    .encode();
    rewrite(dir.path(), |m| {
        m.insert(10, torn.clone());
        m.insert(11, torn.clone());
    });
    let (_, r) = open_ro(dir.path()).unwrap();
    assert_eq!((r.head.size, r.torn_records, r.repaired), (10, 2, false));
    let (s, r) = open_rw(dir.path()).unwrap();
    assert_eq!((r.torn_records, r.repaired), (2, true));
    assert_eq!(s.head().size, 11, "the repair itself is recorded");
    let last = Record::decode(&s.reader().get(10).unwrap().unwrap()).unwrap();
    assert!(matches!(
        last.body(),
        Body::StationEvent(StationEvent::LedgerRepaired {
            from_seq: 10,
            removed: 2,
            ..
        })
    ));
    drop(s);
    let (_, r) = open_ro(dir.path()).unwrap();
    assert_eq!((r.head.size, r.torn_records), (11, 0));
}

#[test]
fn verification_resumes_from_the_cosigned_checkpoint() {
    let dir = ledger(30);
    let signer = NoteSigner::generate(ORIGIN).unwrap();
    let (mut s, _) = open_rw(dir.path()).unwrap();
    // Cosign size 17 (below the head): the store computes the frontier there itself.
    let mut chain = ChainState::genesis(ORIGIN);
    for item in s.reader().range(0..17) {
        chain.check(&item.unwrap().1).unwrap();
    }
    let cp = Checkpoint {
        origin: ORIGIN.into(),
        size: 17,
        root: chain.root(),
    };
    let note = cp.sign(&signer).unwrap().to_string();
    s.record_cosigned(&note, &cp).unwrap();
    let bad = Checkpoint {
        size: 18,
        ..cp.clone()
    };
    assert!(matches!(
        s.record_cosigned(&note, &bad),
        Err(StoreError::CosignedMismatch(_))
    ));
    drop(s);

    let (s, r) = open_ro(dir.path()).unwrap();
    assert_eq!(r.verified_from, 17);
    assert_eq!(s.cosigned().unwrap().size, 17);
    assert_eq!(s.head().size, 30);
    drop(s);
    let full = StoreOptions {
        verify: VerifyScope::Full,
        ..StoreOptions::default()
    };
    let (_, r) = Store::open(dir.path(), Access::Read, &full).unwrap();
    assert_eq!(r.verified_from, 0);

    // A record below the cosigned size rewritten: a full verify finds it; so does the
    // default verify when it is the cosigned record itself.
    rewrite(dir.path(), |m| {
        let Record::V1(mut r) = Record::decode(&m[&16]).unwrap();
        r.received_at += 1;
        m.insert(16, Record::V1(r).encode());
    });
    let f = fault_of(Store::open(dir.path(), Access::Read, &full));
    assert_eq!(f.seq, Some(16), "{f}");
    let f = fault_of(open_ro(dir.path()));
    assert_eq!(f.seq, Some(16), "{f}");
}

#[test]
fn writer_commits_concurrent_appends_durably_and_in_groups() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open_rw(dir.path()).unwrap();
    let (handle, thread) = spawn_writer(s, WriterConfig::default()).unwrap();
    let mut joins = Vec::new();
    for t in 0..8u64 {
        let h = handle.clone();
        joins.push(std::thread::spawn(move || {
            (0..40u64)
                .map(|i| h.append_blocking(entries(t * 1000 + i, 1)).unwrap())
                .collect::<Vec<_>>()
        }));
    }
    let results: Vec<_> = joins.into_iter().flat_map(|j| j.join().unwrap()).collect();
    let mut seqs: Vec<u64> = results.iter().map(|a| a.seqs.start).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..320).collect::<Vec<_>>());
    let commits: std::collections::BTreeSet<u64> = results.iter().map(|a| a.head.size).collect();
    assert!(commits.len() <= 320);
    assert_eq!(handle.head().size, 320);
    drop(handle);
    let s = thread.join();
    drop(s);
    let (_, r) = open_ro(dir.path()).unwrap();
    assert_eq!(r.head.size, 320);
}

#[test]
fn a_damaged_page_is_named_at_its_first_seq() {
    let dir = ledger(20);
    raw(dir.path(), |db| {
        // Pages follow commits of 5: damage the framing of the page from seq 10.
        let mut v = db.get(pkey(10)).unwrap().unwrap().to_vec();
        v[0] = 0xff;
        v[1] = 0xff;
        v[2] = 0xff;
        db.insert(pkey(10), v).unwrap();
    });
    let f = fault_of(open_ro(dir.path()));
    assert_eq!((f.seq, f.kind.name()), (Some(10), "modified"), "{f}");
}

#[test]
fn pages_never_exceed_their_bound_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_rw(dir.path()).unwrap();
    let big: Vec<Entry> = (0..40)
        .map(|i| Entry {
            received_at: 0,
            body: inspection_result(i, 3000 + 40 * i as usize),
        })
        .collect();
    s.append(&big).unwrap();
    s.append(&entries(40, 3)).unwrap();
    let pages: Vec<_> = s.db.scan_prefix(b"p").map(|kv| kv.unwrap()).collect();
    assert!(pages.len() >= 20, "40 records of ~3 KiB span several pages");
    assert!(pages
        .iter()
        .all(|(_, v)| v.len() <= PAGE_TARGET_BYTES || page_records(v).unwrap().len() == 1));
    assert!(pages.iter().all(|(_, v)| v.len() <= PAGE_MAX_BYTES));
    let seqs: Vec<u64> = s.reader().range(3..42).map(|r| r.unwrap().0).collect();
    assert_eq!(seqs, (3..42).collect::<Vec<_>>());
    assert!(s.reader().get(43).unwrap().is_none());
    assert_eq!(
        Record::decode(&s.reader().get(41).unwrap().unwrap())
            .unwrap()
            .seq(),
        41
    );
}

#[test]
fn page_framing_rejects_damage() {
    let mut page = Vec::new();
    push_record(&mut page, &[1; 200]);
    push_record(&mut page, &[2; 3]);
    assert_eq!(
        page_records(&page).unwrap(),
        vec![&[1u8; 200][..], &[2u8; 3][..]]
    );
    assert!(page_records(&page[..page.len() - 1]).is_none());
    assert!(page_records(&[]).is_none());
    assert!(page_records(&[0xff, 0xff, 0x01]).is_none());
    assert!(page_records(&[0x00, 0x00]).is_none());
}

/// Cosigns the first `size` records of `s`.
fn cosign(s: &mut Store, size: u64) {
    let signer = NoteSigner::generate(ORIGIN).unwrap();
    let mut chain = ChainState::genesis(ORIGIN);
    for item in s.reader().range(0..size) {
        chain.check(&item.unwrap().1).unwrap();
    }
    let cp = Checkpoint {
        origin: ORIGIN.into(),
        size,
        root: chain.root(),
    };
    let note = cp.sign(&signer).unwrap().to_string();
    s.record_cosigned(&note, &cp).unwrap();
}

#[test]
fn pruning_takes_only_cosigned_records_past_retention_and_verification_still_holds() {
    // Big records: a page holds a few, so pruning works page by page.
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_rw(dir.path()).unwrap();
    let big = |from: u64, n: u64| -> Vec<Entry> {
        (from..from + n)
            .map(|i| Entry {
                received_at: 1_000 + i as i64,
                body: inspection_result(i, 1500),
            })
            .collect()
    };
    for i in 0..20 {
        s.append(&big(i * 5, 5)).unwrap();
    }
    // Nothing is cosigned: nothing goes, however old.
    assert_eq!(s.prune(i64::MAX, 100).unwrap().records, 0);
    cosign(&mut s, 60);
    // Only records received before 1_030 (seq < 30) may go, and only whole pages.
    let p = s.prune(1_030, 100).unwrap();
    assert!(p.records > 0 && p.floor <= 30, "{p:?}");
    assert_eq!(s.floor().unwrap(), p.floor);
    assert!(s.reader().get(p.floor - 1).unwrap().is_none());
    assert!(s.reader().get(p.floor).unwrap().is_some());
    // Old enough but beyond the cosigned size: kept.
    let p2 = s.prune(i64::MAX, 100).unwrap();
    assert!(p2.floor <= 60 && p2.floor > p.floor, "{p2:?}");
    assert!(s.reader().get(60).unwrap().is_some());
    let head = s.head();
    drop(s);
    for verify in [VerifyScope::SinceCosigned, VerifyScope::Full] {
        let (s, r) = Store::open(
            dir.path(),
            Access::Read,
            &StoreOptions {
                verify,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        assert_eq!(s.head(), head);
        assert!(r.verified_from >= p2.floor, "{r:?}");
    }
    // Appending goes on after pruning.
    let (mut s, _) = open_rw(dir.path()).unwrap();
    s.append(&big(100, 3)).unwrap();
    assert_eq!(s.head().size, 103);
}
