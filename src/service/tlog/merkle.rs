//! The Merkle tree of RFC 9162 §2.1, as pure functions over leaf ranges: leaf and node
//! hashes, the ranges an inclusion or consistency proof is made of, and their verification.
//! `tree` stores each tenant's tree and reads proofs out of it; these are tested here
//! against a tree built leaf by leaf.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// `SHA-256(0x00 ‖ leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([0])
        .chain_update(leaf)
        .finalize()
        .into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new()
        .chain_update([1])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// The largest power of two smaller than `n` (`n` ≥ 2): where RFC 9162 splits a tree.
pub fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The root of a perfect tree over `hashes` (a power of two of them).
pub fn perfect_root(hashes: &[Hash]) -> Hash {
    let mut level = hashes.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| node_hash(&pair[0], &pair[1]))
            .collect();
    }
    level[0]
}

/// The leaf ranges `[lo, hi)` whose subtree hashes make the inclusion proof of leaf `index`
/// in a tree of `size` leaves (RFC 9162 §2.1.3.1), in proof order (nearest the leaf first).
pub fn inclusion_ranges(index: u64, size: u64) -> Vec<(u64, u64)> {
    let (mut lo, mut hi) = (0, size);
    let mut ranges = Vec::new();
    while hi - lo > 1 {
        let k = split(hi - lo);
        if index < lo + k {
            ranges.push((lo + k, hi));
            hi = lo + k;
        } else {
            ranges.push((lo, lo + k));
            lo += k;
        }
    }
    ranges.reverse();
    ranges
}

/// The leaf ranges whose subtree hashes make the consistency proof from a tree of `from`
/// leaves to one of `to` leaves (RFC 9162 §2.1.4.1, `0 < from ≤ to`), in proof order.
pub fn consistency_ranges(from: u64, to: u64) -> Vec<(u64, u64)> {
    let (mut lo, mut hi, mut m) = (0, to, from);
    let mut whole = true;
    let mut ranges = Vec::new();
    while m != hi - lo {
        let k = split(hi - lo);
        if m <= k {
            ranges.push((lo + k, hi));
            hi = lo + k;
        } else {
            ranges.push((lo, lo + k));
            m -= k;
            lo += k;
            whole = false;
        }
    }
    if !whole {
        ranges.push((lo, hi));
    }
    ranges.reverse();
    ranges
}

/// The root that an inclusion proof leads to (RFC 9162 §2.1.3.2), or `None` when the proof
/// has the wrong length for this index and size.
pub fn root_from_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return None;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    (s_n == 0).then_some(r)
}

/// Whether `proof` shows that the tree `(to, new_root)` extends `(from, old_root)`
/// (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    from: u64,
    to: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if from == 0 || from > to {
        return false;
    }
    if from == to {
        return proof.is_empty() && old_root == new_root;
    }
    let mut proof = proof.to_vec();
    if from.is_power_of_two() {
        proof.insert(0, *old_root);
    }
    let Some((first, rest)) = proof.split_first() else {
        return false;
    };
    let (mut f_n, mut s_n) = (from - 1, to - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut f_r, mut s_r) = (*first, *first);
    for c in rest {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && f_r == *old_root && s_r == *new_root
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MTH as RFC 9162 §2.1.1 defines it, leaf by leaf.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    fn hashes(leaves: &[Hash], ranges: &[(u64, u64)]) -> Vec<Hash> {
        ranges
            .iter()
            .map(|&(lo, hi)| mth(&leaves[lo as usize..hi as usize]))
            .collect()
    }

    #[test]
    fn inclusion_proofs_verify_for_every_leaf_and_size() {
        let all = leaves(70);
        for size in 1..=70 {
            let root = mth(&all[..size as usize]);
            for index in 0..size {
                let proof = hashes(&all, &inclusion_ranges(index, size));
                let leaf = all[index as usize];
                assert_eq!(root_from_inclusion(index, size, &leaf, &proof), Some(root));
                let other = leaf_hash(b"other");
                assert_ne!(root_from_inclusion(index, size, &other, &proof), Some(root));
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_for_every_pair_of_sizes() {
        let all = leaves(70);
        for to in 1..=70 {
            let new_root = mth(&all[..to as usize]);
            for from in 1..=to {
                let old_root = mth(&all[..from as usize]);
                let proof = hashes(&all, &consistency_ranges(from, to));
                assert!(
                    verify_consistency(from, to, &old_root, &new_root, &proof),
                    "{from}→{to}"
                );
                if from < to {
                    let wrong = leaf_hash(b"other");
                    assert!(!verify_consistency(from, to, &wrong, &new_root, &proof));
                }
            }
        }
    }

    #[test]
    fn rfc_9162_proof_sizes() {
        // The example tree of RFC 9162 §2.1.5, seven leaves a..g.
        assert_eq!(inclusion_ranges(0, 7), [(1, 2), (2, 4), (4, 7)]);
        assert_eq!(inclusion_ranges(3, 7), [(2, 3), (0, 2), (4, 7)]);
        assert_eq!(inclusion_ranges(4, 6), [(5, 6), (0, 4)]);
        assert_eq!(consistency_ranges(3, 7), [(2, 3), (3, 4), (0, 2), (4, 7)]);
        assert_eq!(consistency_ranges(4, 7), [(4, 7)]);
        assert_eq!(consistency_ranges(6, 7), [(4, 6), (6, 7), (0, 4)]);
    }
}
