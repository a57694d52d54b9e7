//! The power-cut file system is not a no-op: data that was never fsynced is gone (or torn) after
//! a cut, a file whose create was never made durable by an fsync of its directory is gone, and
//! only a file fsynced with its directory survives whole. And the store works on it.
//!
//! Skips with the reason when FUSE or fusepy is missing (see `proofline_tests::powercut`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use proofline_common::record::now_micros;
use proofline_common::store::{Access, Entry, Store, StoreOptions, VerifyScope};
use proofline_common::synth::inspection_result;
use proofline_common::Origin;
use proofline_tests::powercut::{sync_dir, Cut, PowerCut};

const PAGE: usize = 4096;

fn write_file(path: &Path, bytes: &[u8], fsync: bool) {
    let mut f = File::create(path).unwrap();
    f.write_all(bytes).unwrap();
    if fsync {
        f.sync_all().unwrap();
    }
}

/// A file of `pages` pages of `fill`, fsynced with its directory: on the disk for sure.
fn durable_file(path: &Path, pages: usize, fill: u8) {
    write_file(path, &vec![fill; pages * PAGE], true);
    sync_dir(path.parent().unwrap()).unwrap();
}

#[test]
fn a_write_never_fsynced_is_gone_after_a_whole_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut fs) = PowerCut::mount(tmp.path()) else {
        return;
    };
    let a = fs.root().join("a");
    durable_file(&a, 4, 0xAA);
    // Overwritten and extended, never fsynced: still readable before the cut.
    let mut f = OpenOptions::new().write(true).open(&a).unwrap();
    f.write_all(&vec![0xBB; 16 * PAGE]).unwrap();
    drop(f);
    assert_eq!(fs::read(&a).unwrap(), vec![0xBB; 16 * PAGE]);
    assert!(fs.stats().contains("dirty_pages=16"), "{}", fs.stats());

    let cut = fs.cut(Cut::Whole);
    assert_eq!((cut.kept_pages, cut.dropped_pages), (0, 16));
    assert!(
        fs::read(&a).is_err(),
        "after the cut the machine is off: reads fail"
    );
    fs.reboot();
    assert_eq!(
        fs::read(&a).unwrap(),
        vec![0xAA; 4 * PAGE],
        "only the fsynced content is left"
    );
}

/// Which pages of `path` hold `new` (the others must hold `old`).
fn pages_holding(path: &Path, old: u8, new: u8) -> Vec<bool> {
    let bytes = fs::read(path).unwrap();
    bytes
        .chunks(PAGE)
        .map(|p| {
            assert!(
                p.iter().all(|&b| b == old) || p.iter().all(|&b| b == new),
                "a page is torn inside: the model tears at 4 KiB pages"
            );
            p[0] == new
        })
        .collect()
}

#[test]
fn a_torn_cut_keeps_a_random_reproducible_subset_of_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut fs) = PowerCut::mount(tmp.path()) else {
        return;
    };
    let mut seen = Vec::new();
    for round in 0..2 {
        let a = fs.root().join(format!("a{round}"));
        durable_file(&a, 32, 0xAA);
        let mut f = OpenOptions::new().write(true).open(&a).unwrap();
        f.write_all(&vec![0xBB; 32 * PAGE]).unwrap();
        drop(f);
        let cut = fs.cut(Cut::Torn { seed: 7, keep: 0.5 });
        fs.reboot();
        let kept = pages_holding(&a, 0xAA, 0xBB);
        assert_eq!(kept.len(), 32, "the size did not change");
        let n = kept.iter().filter(|&&k| k).count() as u64;
        assert_eq!(n, cut.kept_pages, "{cut:?}");
        assert!(
            n > 0 && n < 32,
            "torn: some pages kept, some lost ({n} of 32)"
        );
        seen.push(kept);
    }
    assert_eq!(seen[0], seen[1], "the same seed tears the same pages");
}

#[test]
fn a_file_fsynced_without_its_directory_is_gone_after_a_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut fs) = PowerCut::mount(tmp.path()) else {
        return;
    };
    let root = fs.root().to_owned();
    durable_file(&root.join("old"), 1, 0x11);
    write_file(
        &root.join("new"),
        b"fsynced, but its directory entry was not",
        true,
    );
    // A rename and an unlink, neither made durable either.
    fs::rename(root.join("old"), root.join("renamed")).unwrap();
    fs::create_dir(root.join("dir")).unwrap();
    assert!(fs.stats().contains("dirty_dirs=1"), "{}", fs.stats());

    fs.cut(Cut::Whole);
    fs.reboot();
    assert!(!root.join("new").exists(), "the create was never durable");
    assert!(!root.join("dir").exists(), "the mkdir was never durable");
    assert!(
        !root.join("renamed").exists(),
        "the rename was never durable"
    );
    assert_eq!(fs::read(root.join("old")).unwrap(), vec![0x11; PAGE]);
}

#[test]
fn a_file_fsynced_with_its_directory_survives_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut fs) = PowerCut::mount(tmp.path()) else {
        return;
    };
    let root = fs.root().to_owned();
    fs::create_dir(root.join("d")).unwrap();
    sync_dir(&root).unwrap();
    let bytes: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
    write_file(&root.join("d/f"), &bytes, true);
    sync_dir(&root.join("d")).unwrap();
    for (i, how) in [Cut::Whole, Cut::Torn { seed: 3, keep: 0.5 }]
        .into_iter()
        .enumerate()
    {
        let cut = fs.cut(how);
        assert_eq!(
            cut.dropped_pages + cut.dropped_dirs,
            0,
            "nothing was pending"
        );
        fs.reboot();
        assert_eq!(fs::read(root.join("d/f")).unwrap(), bytes, "cut {i}");
    }
}

#[test]
fn the_store_works_on_the_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = PowerCut::mount(tmp.path()) else {
        return;
    };
    let data = fs.root().join("data");
    fs::create_dir(&data).unwrap();
    sync_dir(fs.root()).unwrap();
    let origin = Origin::parse("proofline/plant-1/powercut").unwrap();
    let entries: Vec<Entry> = (0..50)
        .map(|i| Entry {
            received_at: now_micros(),
            body: inspection_result(i, 64),
        })
        .collect();
    let (mut store, _) = Store::open(
        &data,
        Access::Write(origin.clone()),
        &StoreOptions::default(),
    )
    .unwrap();
    for chunk in entries.chunks(10) {
        store.append(chunk).unwrap();
    }
    drop(store);
    let opts = StoreOptions {
        verify: VerifyScope::Full,
        ..StoreOptions::default()
    };
    let (store, report) = Store::open(&data, Access::Read, &opts).unwrap();
    assert_eq!(report.head.size, 50);
    assert_eq!(store.reader().range(0..50).count(), 50);
    // Cuts are the campaign's business (agent/tests/powercut.rs): there the store runs in a
    // process of its own that the cut ends, as a power cut ends everything. Here sled's
    // background threads in this process would outlive the cut and the unmount.
}
