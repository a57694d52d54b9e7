//! The repository's copy of the shared test vectors (`tests/vectors/`) matches `../shared/vectors`
//! when that is present, so tests never run against stale vectors.

#[test]
fn vector_copies_match_the_shared_originals() {
    let ours = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors");
    let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors");
    let Ok(entries) = std::fs::read_dir(shared) else {
        println!("skipped: {shared} is not present");
        return;
    };
    let mut n = 0;
    for e in entries {
        let e = e.unwrap();
        let name = e.file_name();
        let theirs = std::fs::read(e.path()).unwrap();
        let mine = std::fs::read(std::path::Path::new(ours).join(&name)).unwrap_or_else(|_| {
            panic!(
                "tests/vectors/{} is missing: copy it from shared/vectors",
                name.to_string_lossy()
            )
        });
        assert!(
            mine == theirs,
            "tests/vectors/{} differs from shared/vectors",
            name.to_string_lossy()
        );
        n += 1;
    }
    assert!(n > 0);
}
