//! RFC 9162 Merkle trees over ledger leaves: the compact frontier the writer keeps, tree roots,
//! and inclusion and consistency proofs with their verifiers (RFC 9162 §2.1.1–2.1.4).
//!
//! The frontier holds one subtree root per set bit of the tree size (largest subtree first), so
//! appending is O(log n) and the root of the whole ledger is available without reading it.
//! Proof generation works on a slice of leaf hashes; verification needs only the proof.

use std::ops::Range;

use crate::hash::{empty_root, node_hash, Hash};

/// Compact range `[0, size)`: the roots of the perfect subtrees that make up the tree.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Frontier {
    size: u64,
    /// Subtree roots, largest (leftmost) first; `nodes.len() == size.count_ones()`.
    nodes: Vec<Hash>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrontierError {
    #[error("frontier of size {size} must hold {expected} subtree roots, found {found}")]
    Shape {
        size: u64,
        expected: u32,
        found: usize,
    },
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a frontier from stored parts, checking that they fit together.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Result<Self, FrontierError> {
        if nodes.len() != size.count_ones() as usize {
            return Err(FrontierError::Shape {
                size,
                expected: size.count_ones(),
                found: nodes.len(),
            });
        }
        Ok(Frontier { size, nodes })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut s = self.size;
        while s & 1 == 1 {
            // A set low bit means a subtree of the same height is waiting on the left.
            let left = self
                .nodes
                .pop()
                .expect("frontier shape: one node per set bit");
            h = node_hash(&left, &h);
            s >>= 1;
        }
        self.nodes.push(h);
        self.size += 1;
    }

    /// The RFC 9162 Merkle Tree Hash of all leaves pushed so far.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

/// Largest power of two strictly smaller than `n` (n ≥ 2).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// `MTH(D[n])` straight from RFC 9162 §2.1.1 (used for proofs; the writer uses [`Frontier`]).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split_point(n as u64) as usize;
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error(
        "sizes {first} and {second} cannot be proven consistent (first must not exceed second)"
    )]
    BadSizes { first: u64, second: u64 },
    #[error("proof has the wrong length")]
    WrongLength,
    #[error("proof does not lead to the expected root")]
    RootMismatch,
}

/// Inclusion proof for leaf `index` in the tree of all `leaves` (RFC 9162 §2.1.3.1), bottom first.
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Result<Vec<Hash>, ProofError> {
    let size = leaves.len() as u64;
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::new();
    path(index as usize, leaves, &mut out);
    Ok(out)
}

fn path(m: usize, d: &[Hash], out: &mut Vec<Hash>) {
    if d.len() <= 1 {
        return;
    }
    let k = split_point(d.len() as u64) as usize;
    if m < k {
        path(m, &d[..k], out);
        out.push(root_of(&d[k..]));
    } else {
        path(m - k, &d[k..], out);
        out.push(root_of(&d[..k]));
    }
}

/// The leaf ranges whose subtree roots make up the inclusion proof of leaf `index` in a tree of
/// `size` leaves, bottom first (the same decomposition as [`inclusion_proof`]).
pub fn inclusion_ranges(index: u64, size: u64) -> Result<Vec<Range<u64>>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::new();
    let (mut lo, mut hi) = (0, size);
    // Walk down from the root; the sibling of each step is pushed, then reversed (bottom first).
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if index < lo + k {
            out.push(lo + k..hi);
            hi = lo + k;
        } else {
            out.push(lo..lo + k);
            lo += k;
        }
    }
    out.reverse();
    Ok(out)
}

/// Inclusion proofs for a few leaves of a ledger too large to hold as a slice of leaf hashes:
/// the leaves are fed once, in order, and only the subtrees the proofs need are hashed (each in
/// a [`Frontier`] of its own, so memory stays O(proofs × log size)).
#[derive(Debug)]
pub struct ProofBuilder {
    size: u64,
    wanted: Vec<(u64, Vec<Range<u64>>)>,
    /// Distinct ranges in start order, with their frontiers; `open` indexes those being fed.
    ranges: Vec<(Range<u64>, Frontier)>,
    next_range: usize,
    open: Vec<usize>,
    fed: u64,
}

impl ProofBuilder {
    /// Proofs of `indices` in the tree of the first `size` leaves.
    pub fn new(size: u64, indices: &[u64]) -> Result<Self, ProofError> {
        let mut wanted = Vec::with_capacity(indices.len());
        let mut distinct = std::collections::BTreeSet::new();
        for &i in indices {
            let r = inclusion_ranges(i, size)?;
            distinct.extend(r.iter().map(|r| (r.start, r.end)));
            wanted.push((i, r));
        }
        Ok(ProofBuilder {
            size,
            wanted,
            ranges: distinct
                .into_iter()
                .map(|(a, b)| (a..b, Frontier::new()))
                .collect(),
            next_range: 0,
            open: Vec::new(),
            fed: 0,
        })
    }

    /// Leaves fed so far.
    pub fn fed(&self) -> u64 {
        self.fed
    }

    /// Feeds the next leaf hash (leaf `fed()`); leaves beyond `size` are ignored.
    pub fn push(&mut self, leaf: Hash) {
        let j = self.fed;
        if j >= self.size {
            return;
        }
        while self.next_range < self.ranges.len() && self.ranges[self.next_range].0.start == j {
            self.open.push(self.next_range);
            self.next_range += 1;
        }
        for &r in &self.open {
            self.ranges[r].1.push(leaf);
        }
        let ranges = &self.ranges;
        self.open.retain(|&r| ranges[r].0.end > j + 1);
        self.fed += 1;
    }

    /// The proofs, in the order the indices were given; `WrongLength` if fewer than `size`
    /// leaves were fed.
    pub fn finish(self) -> Result<Vec<(u64, Vec<Hash>)>, ProofError> {
        if self.fed < self.size {
            return Err(ProofError::WrongLength);
        }
        let root = |r: &Range<u64>| {
            let at = self
                .ranges
                .binary_search_by(|(x, _)| (x.start, x.end).cmp(&(r.start, r.end)))
                .expect("every wanted range is kept");
            self.ranges[at].1.root()
        };
        Ok(self
            .wanted
            .iter()
            .map(|(i, rs)| (*i, rs.iter().map(root).collect()))
            .collect())
    }
}

/// Consistency proof between the tree of the first `first` leaves and the tree of all `leaves`
/// (RFC 9162 §2.1.4.1).
pub fn consistency_proof(leaves: &[Hash], first: u64) -> Result<Vec<Hash>, ProofError> {
    let second = leaves.len() as u64;
    if first > second {
        return Err(ProofError::BadSizes { first, second });
    }
    let mut out = Vec::new();
    if first > 0 && first < second {
        subproof(first as usize, leaves, true, &mut out);
    }
    Ok(out)
}

fn subproof(m: usize, d: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = d.len();
    if m == n {
        if !complete {
            out.push(root_of(d));
        }
        return;
    }
    let k = split_point(n as u64) as usize;
    if m <= k {
        subproof(m, &d[..k], complete, out);
        out.push(root_of(&d[k..]));
    } else {
        subproof(m - k, &d[k..], false, out);
        out.push(root_of(&d[..k]));
    }
}

/// Computes the root implied by an inclusion proof (RFC 9162 §2.1.3.2).
pub fn root_from_inclusion_proof(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    Ok(r)
}

/// Verifies that `leaf` is at `index` in the tree of `size` leaves with `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if root_from_inclusion_proof(index, size, leaf, proof)? == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// Verifies that the tree (`first`, `first_root`) is a prefix of (`second`, `second_root`)
/// (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    first: u64,
    second: u64,
    proof: &[Hash],
    first_root: &Hash,
    second_root: &Hash,
) -> Result<(), ProofError> {
    if first > second {
        return Err(ProofError::BadSizes { first, second });
    }
    if first == second {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if first_root == second_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if first == 0 {
        // The empty tree is a prefix of every tree.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let (mut fn_, mut sn) = (first - 1, second - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr != *first_root || sr != *second_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}
