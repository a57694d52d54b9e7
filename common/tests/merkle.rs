//! Merkle tree tests: the transparency-dev/merkle (RFC 6962/9162) known-answer vectors, a
//! cross-check against an independent implementation (the `ct-merkle` crate), and property tests
//! against a naive model.

use ct_merkle::mem_backed_tree::MemoryBackedTree;
use proofline_common::hash::{leaf_hash, Hash};
use proofline_common::merkle::{
    consistency_proof, inclusion_proof, root_of, verify_consistency, verify_inclusion, Frontier,
    ProofBuilder,
};
use proptest::prelude::*;

fn h(s: &str) -> Hash {
    Hash::from_hex(s).unwrap()
}

// transparency-dev/merkle proof/verify_test.go: leaves, roots of sizes 1..=8, proofs.
const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];
const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];
/// (1-based leaf, size, proof)
const INCLUSION: &[(u64, u64, &[&str])] = &[
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        3,
        3,
        &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    ),
    (
        2,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];
/// (size1, size2, proof)
const CONSISTENCY: &[(u64, u64, &[&str])] = &[
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

fn leaf_hashes() -> Vec<Hash> {
    LEAVES
        .iter()
        .map(|l| leaf_hash(&hex::decode(l).unwrap()))
        .collect()
}

fn proof(p: &[&str]) -> Vec<Hash> {
    p.iter().map(|s| h(s)).collect()
}

#[test]
fn roots_match_the_published_vectors() {
    let leaves = leaf_hashes();
    let mut f = Frontier::new();
    for (i, l) in leaves.iter().enumerate() {
        f.push(*l);
        assert_eq!(f.root(), h(ROOTS[i]), "frontier root of size {}", i + 1);
        assert_eq!(root_of(&leaves[..=i]), h(ROOTS[i]), "MTH of size {}", i + 1);
    }
    assert_eq!(
        Frontier::new().root().to_hex(),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn inclusion_proofs_match_and_verify() {
    let leaves = leaf_hashes();
    for (leaf, size, p) in INCLUSION {
        let idx = leaf - 1;
        let want = proof(p);
        let got = inclusion_proof(&leaves[..*size as usize], idx).unwrap();
        assert_eq!(got, want, "inclusion proof for leaf {idx} in size {size}");
        let root = h(ROOTS[*size as usize - 1]);
        verify_inclusion(idx, *size, &leaves[idx as usize], &want, &root).unwrap();
    }
}

#[test]
fn consistency_proofs_match_and_verify() {
    let leaves = leaf_hashes();
    for (s1, s2, p) in CONSISTENCY {
        let want = proof(p);
        let got = consistency_proof(&leaves[..*s2 as usize], *s1).unwrap();
        assert_eq!(got, want, "consistency proof {s1} -> {s2}");
        let (r1, r2) = (h(ROOTS[*s1 as usize - 1]), h(ROOTS[*s2 as usize - 1]));
        verify_consistency(*s1, *s2, &want, &r1, &r2).unwrap();
    }
}

/// The corruptions the transparency-dev tests apply to every known-good proof.
#[test]
fn corrupted_inclusion_proofs_are_rejected() {
    let leaves = leaf_hashes();
    let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
    for (leaf, size, p) in INCLUSION.iter().filter(|(_, _, p)| !p.is_empty()) {
        let idx = leaf - 1;
        let good = proof(p);
        let root = h(ROOTS[*size as usize - 1]);
        let l = leaves[idx as usize];
        let reject = |i: u64, s: u64, leaf: &Hash, pr: &[Hash], r: &Hash, what: &str| {
            assert!(
                verify_inclusion(i, s, leaf, pr, r).is_err(),
                "{what} accepted for leaf {idx} size {size}"
            );
        };
        if idx > 0 {
            reject(idx - 1, *size, &l, &good, &root, "index - 1");
        }
        reject(idx + 1, *size, &l, &good, &root, "index + 1");
        reject(idx ^ 2, *size, &l, &good, &root, "index ^ 2");
        reject(idx, size * 2, &l, &good, &root, "size * 2");
        reject(idx, size / 2, &l, &good, &root, "size / 2");
        reject(
            idx,
            *size,
            &leaf_hash(b"WrongLeaf"),
            &good,
            &root,
            "wrong leaf",
        );
        reject(idx, *size, &l, &good, &some, "random root");
        let mut longer = good.clone();
        longer.push(root);
        reject(idx, *size, &l, &longer, &root, "trailing root");
        let mut front = vec![root];
        front.extend_from_slice(&good);
        reject(idx, *size, &l, &front, &root, "preceding root");
        reject(
            idx,
            *size,
            &l,
            &good[..good.len() - 1],
            &root,
            "removed component",
        );
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i].0[0] ^= 8;
            reject(idx, *size, &l, &bad, &root, "flipped bit");
        }
    }
}

#[test]
fn corrupted_consistency_proofs_are_rejected() {
    for (s1, s2, p) in CONSISTENCY.iter().filter(|(_, _, p)| !p.is_empty()) {
        let good = proof(p);
        let (r1, r2) = (h(ROOTS[*s1 as usize - 1]), h(ROOTS[*s2 as usize - 1]));
        let reject = |a: u64, b: u64, pr: &[Hash], x: &Hash, y: &Hash, what: &str| {
            assert!(
                verify_consistency(a, b, pr, x, y).is_err(),
                "{what} accepted for {s1}->{s2}"
            );
        };
        reject(s1 - 1, *s2, &good, &r1, &r2, "size1 - 1");
        reject(s1 + 1, *s2, &good, &r1, &r2, "size1 + 1");
        reject(s1 ^ 2, *s2, &good, &r1, &r2, "size1 ^ 2");
        reject(*s1, s2 * 2, &good, &r1, &r2, "size2 * 2");
        reject(*s1, s2 / 2, &good, &r1, &r2, "size2 / 2");
        reject(*s1, *s2, &good, &r2, &r1, "swapped roots");
        reject(*s1, *s2, &[], &r1, &r2, "empty proof");
        let mut longer = good.clone();
        longer.push(r2);
        reject(*s1, *s2, &longer, &r1, &r2, "trailing root2");
        let mut front = vec![good[0]];
        front.extend_from_slice(&good);
        reject(*s1, *s2, &front, &r1, &r2, "preceding proof[0]");
        reject(
            *s1,
            *s2,
            &good[..good.len() - 1],
            &r1,
            &r2,
            "truncated proof",
        );
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i].0[0] ^= 16;
            reject(*s1, *s2, &bad, &r1, &r2, "flipped bit");
        }
    }
}

#[test]
fn trivial_consistency_cases_follow_the_reference() {
    let (a, b) = (leaf_hash(b"a"), leaf_hash(b"b"));
    let empty = Frontier::new().root();
    assert!(verify_consistency(0, 0, &[], &a, &a).is_ok());
    assert!(verify_consistency(0, 1, &[], &a, &b).is_ok());
    assert!(verify_consistency(1, 1, &[], &b, &b).is_ok());
    assert!(verify_consistency(1, 1, &[], &a, &b).is_err());
    assert!(verify_consistency(1, 0, &[], &a, &b).is_err());
    assert!(verify_consistency(2, 1, &[], &a, &b).is_err());
    assert!(verify_consistency(1, 2, &[], &a, &b).is_err());
    assert!(verify_consistency(0, 0, &[empty], &empty, &empty).is_err());
    assert!(verify_consistency(0, 1, &[empty], &empty, &empty).is_err());
}

/// Roots computed by `ct-merkle`, an independent RFC 6962 implementation.
fn independent_root(data: &[Vec<u8>]) -> Hash {
    let mut t = MemoryBackedTree::<sha2_011::Sha256, Vec<u8>>::new();
    for d in data {
        t.push(d.clone());
    }
    Hash::from_slice(t.root().as_bytes()).unwrap()
}

#[test]
fn roots_equal_an_independent_implementation_on_the_vectors() {
    let data: Vec<Vec<u8>> = LEAVES.iter().map(|l| hex::decode(l).unwrap()).collect();
    for n in 1..=data.len() {
        assert_eq!(independent_root(&data[..n]), h(ROOTS[n - 1]));
    }
}

/// The streaming root (the frontier every verifier keeps: one subtree root per set bit of the
/// size, never the leaves) equals the full RFC 9162 computation over all leaves, at every size
/// up to 1100 and around every power of two up to 2^14.
#[test]
fn frontier_root_equals_the_full_computation_at_every_size() {
    let max = (1u64 << 14) + 1;
    let leaves: Vec<Hash> = (0..max).map(|i| leaf_hash(&i.to_be_bytes())).collect();
    let mut checked = std::collections::BTreeSet::new();
    checked.extend(0..=1100u64);
    for k in 0..=14 {
        let p = 1u64 << k;
        checked.extend([p - 1, p, p + 1]);
    }
    let mut f = Frontier::new();
    assert_eq!(f.root(), root_of(&[]), "size 0");
    for (i, l) in leaves.iter().enumerate() {
        f.push(*l);
        let size = i as u64 + 1;
        assert_eq!(f.size(), size);
        assert_eq!(f.nodes().len(), size.count_ones() as usize, "size {size}");
        if checked.contains(&size) {
            assert_eq!(f.root(), root_of(&leaves[..=i]), "size {size}");
        }
    }
}

/// Naive model: MTH by its recursive definition over leaf *data*.
fn model_root(data: &[Vec<u8>]) -> Hash {
    let leaves: Vec<Hash> = data.iter().map(|d| leaf_hash(d)).collect();
    fn mth(l: &[Hash]) -> Hash {
        match l.len() {
            0 => proofline_common::hash::empty_root(),
            1 => l[0],
            n => {
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                proofline_common::hash::node_hash(&mth(&l[..k]), &mth(&l[k..]))
            }
        }
    }
    mth(&leaves)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn frontier_root_equals_model_and_independent_root(
        data in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 0..140)
    ) {
        let mut f = Frontier::new();
        for d in &data {
            f.push(leaf_hash(d));
        }
        prop_assert_eq!(f.root(), model_root(&data));
        if !data.is_empty() {
            prop_assert_eq!(f.root(), independent_root(&data));
        }
        let rebuilt = Frontier::from_parts(f.size(), f.nodes().to_vec()).unwrap();
        prop_assert_eq!(rebuilt.root(), f.root());
    }

    #[test]
    fn every_inclusion_proof_verifies_and_no_other_index_does(
        n in 1usize..70, pick in any::<prop::sample::Index>()
    ) {
        let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let root = root_of(&leaves);
        let i = pick.index(n) as u64;
        let p = inclusion_proof(&leaves, i).unwrap();
        prop_assert!(verify_inclusion(i, n as u64, &leaves[i as usize], &p, &root).is_ok());
        for j in 0..n as u64 {
            if j != i {
                prop_assert!(verify_inclusion(j, n as u64, &leaves[i as usize], &p, &root).is_err());
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_detects_a_changed_prefix(
        n in 1usize..70, pick in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>()
    ) {
        let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let m = pick.index(n + 1) as u64;
        let p = consistency_proof(&leaves, m).unwrap();
        let (r1, r2) = (root_of(&leaves[..m as usize]), root_of(&leaves));
        prop_assert!(verify_consistency(m, n as u64, &p, &r1, &r2).is_ok());
        // A log that rewrote any record of the old prefix cannot prove consistency.
        if m > 0 && (m as usize) < n {
            let mut forked = leaves.clone();
            let k = flip.index(m as usize);
            forked[k] = leaf_hash(b"rewritten");
            let fp = consistency_proof(&forked, m).unwrap();
            prop_assert!(verify_consistency(m, n as u64, &fp, &r1, &root_of(&forked)).is_err());
        }
    }

    #[test]
    fn streamed_proofs_equal_the_slice_proofs(
        n in 1u64..300, picks in proptest::collection::vec(any::<prop::sample::Index>(), 1..8)
    ) {
        let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let idx: Vec<u64> = picks.iter().map(|p| p.index(n as usize) as u64).collect();
        let mut b = ProofBuilder::new(n, &idx).unwrap();
        for l in &leaves {
            b.push(*l);
        }
        // Leaves beyond the size do not change the proofs.
        b.push(leaf_hash(b"beyond"));
        let got = b.finish().unwrap();
        prop_assert_eq!(got.len(), idx.len());
        for (i, p) in got {
            prop_assert_eq!(&p, &inclusion_proof(&leaves, i).unwrap());
        }
    }

    #[test]
    fn proofs_verify_with_the_independent_implementation(n in 2u64..60, pick in any::<prop::sample::Index>()) {
        let data: Vec<Vec<u8>> = (0..n).map(|i| i.to_be_bytes().to_vec()).collect();
        let mut t = MemoryBackedTree::<sha2_011::Sha256, Vec<u8>>::new();
        for d in &data { t.push(d.clone()); }
        let leaves: Vec<Hash> = data.iter().map(|d| leaf_hash(d)).collect();
        let i = pick.index(n as usize);
        // Their inclusion proof bytes are ours, hash for hash.
        let theirs = t.prove_inclusion(i);
        let ours: Vec<u8> = inclusion_proof(&leaves, i as u64).unwrap().iter().flat_map(|h| h.0).collect();
        prop_assert_eq!(theirs.as_bytes(), &ours[..]);
        let m = (i as u64).max(1);
        let their_cons = t.prove_consistency((n - m) as usize);
        let our_cons: Vec<u8> = consistency_proof(&leaves, m).unwrap().iter().flat_map(|h| h.0).collect();
        prop_assert_eq!(their_cons.as_bytes(), &our_cons[..]);
    }
}

#[test]
fn a_streamed_proof_needs_every_leaf_and_an_index_inside_the_tree() {
    assert!(ProofBuilder::new(4, &[4]).is_err());
    let mut b = ProofBuilder::new(4, &[1]).unwrap();
    for i in 0..3u64 {
        b.push(leaf_hash(&i.to_be_bytes()));
    }
    assert!(b.finish().is_err());
}
