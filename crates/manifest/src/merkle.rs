//! Binary Merkle trees with promotion, and logarithmic proofs: building the
//! file-table and chunk-table trees of a manifest, extracting proofs for any
//! node, and checking them knowing only the leaf count.
//!
//! Level 0 holds the leaves. Each next level pairs neighbours left to right:
//! `node(left, right)`; an odd node at the end of a level is promoted to the
//! next level unchanged. The root of an empty tree is [`Hash::ZERO`] (the leaf
//! count is committed separately, in the manifest's root header).
//!
//! With this shape, node `j` at level `m` covers exactly the leaves
//! `[j * 2^m, min((j + 1) * 2^m, n))`, so every aligned block of `2^m` leaves
//! (and the shorter last one) is a single node with a proof of at most
//! `ceil(log2 n) - m` sibling hashes. That is how a manifest piece is proven.

use crate::hash::{Hash, node_hash};
use rayon::prelude::*;

/// All levels of a tree, leaves first. Keeps every level in memory
/// (about twice the leaves' size) so proofs for any node are cheap.
#[derive(Clone, Debug)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash>>,
}

/// Why a proof is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The node to prove is outside the tree (or the tree is empty).
    #[error("node {index} at level {level} does not exist in a tree of {leaves} leaves")]
    NoSuchNode {
        /// Leaves of the tree.
        leaves: u64,
        /// Level of the node (0 = leaves).
        level: u32,
        /// Index of the node within its level.
        index: u64,
    },
    /// The proof has a different number of hashes than the tree shape needs
    /// (see [`proof_len`]).
    #[error("proof has {got} hashes, the tree shape needs {want}")]
    WrongLength {
        /// Hashes in the proof.
        got: usize,
        /// Hashes the shape requires.
        want: usize,
    },
    /// The recomputed root differs from the expected one.
    #[error("proof does not lead to the expected root")]
    Mismatch,
}

const PAR_THRESHOLD: usize = 1 << 14;

fn next_level(level: &[Hash]) -> Vec<Hash> {
    let pair = |c: &[Hash]| {
        if c.len() == 2 {
            node_hash(&c[0], &c[1])
        } else {
            c[0]
        }
    };
    if level.len() >= PAR_THRESHOLD {
        level.par_chunks(2).map(pair).collect()
    } else {
        level.chunks(2).map(pair).collect()
    }
}

impl MerkleTree {
    /// Builds every level from the leaves (level 0), hashing large levels in
    /// parallel.
    pub fn new(leaves: Vec<Hash>) -> MerkleTree {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let next = next_level(levels.last().map(Vec::as_slice).unwrap_or(&[]));
            levels.push(next);
        }
        MerkleTree { levels }
    }

    /// Number of leaves.
    pub fn leaf_count(&self) -> u64 {
        self.levels[0].len() as u64
    }

    /// The root: the single node of the top level, or [`Hash::ZERO`] for an
    /// empty tree.
    pub fn root(&self) -> Hash {
        match self.levels.last() {
            Some(top) if top.len() == 1 => top[0],
            _ => Hash::ZERO,
        }
    }

    /// The hash of node `index` at `level`, if it exists.
    /// Levels above the top are the root (index 0 only).
    pub fn node(&self, level: u32, index: u64) -> Option<Hash> {
        if level as usize >= self.levels.len() && !self.levels[0].is_empty() {
            return (index == 0).then(|| self.root());
        }
        self.levels
            .get(level as usize)
            .and_then(|l| l.get(usize::try_from(index).ok()?))
            .copied()
    }

    /// Sibling hashes from node (`level`, `index`) up to the root, bottom
    /// first, skipping levels where the node is promoted; empty for the root
    /// itself (index 0 at or above the top level). `None` if the node does not
    /// exist. The verifier is [`verify_proof`].
    pub fn proof(&self, level: u32, index: u64) -> Option<Vec<Hash>> {
        let mut i = usize::try_from(index).ok()?;
        let mut out = Vec::new();
        let start = level as usize;
        if start >= self.levels.len() && !self.levels[0].is_empty() {
            return (index == 0).then(Vec::new);
        }
        if start >= self.levels.len() || i >= self.levels[start].len() {
            return None;
        }
        for l in &self.levels[start..self.levels.len() - 1] {
            let sib = i ^ 1;
            if sib < l.len() {
                out.push(l[sib]);
            }
            i /= 2;
        }
        Some(out)
    }
}

/// Width of `level` in a tree of `leaves` leaves: `ceil(leaves / 2^level)`,
/// so 1 (the root) at and above the top level, 0 for an empty tree.
pub fn width(leaves: u64, level: u32) -> u64 {
    if level >= 64 {
        return u64::from(leaves > 0);
    }
    leaves.div_ceil(1u64 << level)
}

/// Number of sibling hashes a proof for node (`level`, `index`) must contain,
/// in a tree of `leaves` leaves; [`ProofError::NoSuchNode`] if there is no
/// such node.
pub fn proof_len(leaves: u64, level: u32, index: u64) -> Result<usize, ProofError> {
    let no_node = ProofError::NoSuchNode {
        leaves,
        level,
        index,
    };
    if leaves == 0 || index >= width(leaves, level) {
        return Err(no_node);
    }
    let (mut i, mut l, mut n) = (index, level, 0usize);
    while width(leaves, l) > 1 {
        if i % 2 == 1 || i + 1 < width(leaves, l) {
            n += 1;
        }
        i /= 2;
        l += 1;
    }
    Ok(n)
}

/// Recomputes the root of a tree of `leaves` leaves from node (`level`,
/// `index`) with hash `node` and its proof. Fails if the node does not exist
/// or the proof has the wrong length. Never panics, whatever the inputs.
pub fn root_from_proof(
    leaves: u64,
    level: u32,
    index: u64,
    node: Hash,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    let want = proof_len(leaves, level, index)?;
    if proof.len() != want {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want,
        });
    }
    let (mut i, mut l, mut h) = (index, level, node);
    let mut sibs = proof.iter();
    while width(leaves, l) > 1 {
        if i % 2 == 1 {
            let s = sibs.next().ok_or(ProofError::Mismatch)?;
            h = node_hash(s, &h);
        } else if i + 1 < width(leaves, l) {
            let s = sibs.next().ok_or(ProofError::Mismatch)?;
            h = node_hash(&h, s);
        }
        i /= 2;
        l += 1;
    }
    Ok(h)
}

/// Checks that node (`level`, `index`) with hash `node` belongs to the tree of
/// `leaves` leaves whose root is `root`.
pub fn verify_proof(
    root: &Hash,
    leaves: u64,
    level: u32,
    index: u64,
    node: Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if root_from_proof(leaves, level, index, node, proof)? == *root {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

/// Root of the subtree over `leaves` (which must be an aligned block, see the
/// module docs). Same shape rules as the full tree.
pub fn subtree_root(leaves: &[Hash]) -> Hash {
    let mut level = leaves.to_vec();
    if level.is_empty() {
        return Hash::ZERO;
    }
    while level.len() > 1 {
        level = next_level(&level);
    }
    level[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Domain;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n as u64)
            .map(|i| Domain::ChunkLeaf.hash(&i.to_le_bytes()))
            .collect()
    }

    #[test]
    fn every_leaf_and_node_proves() {
        for n in [1usize, 2, 3, 5, 7, 8, 9, 31, 33, 100] {
            let t = MerkleTree::new(leaves(n));
            let root = t.root();
            for level in 0..8u32 {
                for index in 0..width(n as u64, level) {
                    let node = t.node(level, index).unwrap();
                    let proof = t.proof(level, index).unwrap();
                    assert_eq!(proof.len(), proof_len(n as u64, level, index).unwrap());
                    verify_proof(&root, n as u64, level, index, node, &proof).unwrap();
                    // aligned block of leaves hashes to the same node
                    let lo = (index << level) as usize;
                    let hi = (((index + 1) << level) as usize).min(n);
                    assert_eq!(subtree_root(&t.levels[0][lo..hi]), node);
                    // tampering fails
                    let mut bad = proof.clone();
                    if let Some(h) = bad.first_mut() {
                        h.0[0] ^= 1;
                        assert!(verify_proof(&root, n as u64, level, index, node, &bad).is_err());
                    }
                    let mut wrong = node;
                    wrong.0[31] ^= 1;
                    assert!(verify_proof(&root, n as u64, level, index, wrong, &proof).is_err());
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(root_from_proof(0, 0, 0, Hash::ZERO, &[]).is_err());
        assert!(root_from_proof(4, 0, 4, Hash::ZERO, &[]).is_err());
        assert!(matches!(
            root_from_proof(4, 0, 1, Hash::ZERO, &[]),
            Err(ProofError::WrongLength { got: 0, want: 2 })
        ));
        assert!(root_from_proof(u64::MAX, 63, 1, Hash::ZERO, &[Hash::ZERO]).is_ok());
        assert!(root_from_proof(u64::MAX, 200, 0, Hash::ZERO, &[]).is_ok());
    }

    #[test]
    fn single_leaf_root_is_leaf_and_empty_is_zero() {
        let l = leaves(1);
        assert_eq!(MerkleTree::new(l.clone()).root(), l[0]);
        assert_eq!(MerkleTree::new(vec![]).root(), Hash::ZERO);
    }
}
