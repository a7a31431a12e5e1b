//! Erasure coding of a block into shards and the Merkle tree over them.
//!
//! A block of `len` bytes is cut into `k` data shards of `shard_len` bytes
//! (the last zero-padded; `shard_len` a multiple of 64, at least 64), and
//! `m` parity shards are computed with Reed-Solomon over GF(2^16)
//! (reed-solomon-simd): any `k` of the `k + m` shards give the block back.
//! Shard `i` (data `0..k`, parity `k..k+m`) is a leaf
//! `H_shard(i_le16 || shard)` of a Merkle tree (the manifest's tree shape
//! and interior hash, docs/manifest.md) whose root the proposer signs; every
//! shard travels with its proof. Reed-Solomon does not detect corruption:
//! the proofs do, and a receiver re-encodes what it decoded and checks the
//! root, so a proposer that encoded inconsistently is caught, not obeyed.

use statesync_manifest::hash::Hash;
use statesync_manifest::merkle::MerkleTree;

/// Most shards of one block (data and parity together).
pub const MAX_SHARDS: usize = 4096;
/// Largest shard.
pub const MAX_SHARD_LEN: usize = 1 << 20;

/// Why coding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// `k`, `m` or the sizes are out of range.
    #[error("bad parameters: {0}")]
    Params(String),
    /// Fewer than `k` distinct valid shards.
    #[error("{have} shards of the {need} needed")]
    NotEnough {
        /// Shards given.
        have: usize,
        /// Shards needed.
        need: usize,
    },
    /// The Reed-Solomon library refused.
    #[error("reed-solomon: {0}")]
    Rs(String),
}

/// The bytes of every shard, for a block of `len` bytes cut into `k`.
pub fn shard_len(len: usize, k: usize) -> usize {
    len.div_ceil(k.max(1)).next_multiple_of(64).max(64)
}

/// The leaf hash of shard `index`.
pub fn leaf(index: u16, shard: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new_derive_key("statesync gossip shard v1");
    h.update(&index.to_le_bytes());
    h.update(shard);
    Hash(*h.finalize().as_bytes())
}

fn check(k: usize, m: usize, len: usize) -> Result<usize, CodeError> {
    if k == 0 || m == 0 || k + m > MAX_SHARDS {
        return Err(CodeError::Params(format!(
            "k {k}, m {m}: need 1 <= k, 1 <= m, k + m <= {MAX_SHARDS}"
        )));
    }
    let s = shard_len(len, k);
    if s > MAX_SHARD_LEN {
        return Err(CodeError::Params(format!(
            "a block of {len} bytes in {k} shards makes shards of {s} bytes, over {MAX_SHARD_LEN}"
        )));
    }
    Ok(s)
}

/// A block cut into shards, with their tree.
pub struct Encoded {
    /// Bytes per shard.
    pub shard_len: usize,
    /// Data shards then parity shards.
    pub shards: Vec<Vec<u8>>,
    /// The Merkle tree over the shards' leaves.
    pub tree: MerkleTree,
}

impl Encoded {
    /// The root the proposer signs.
    pub fn root(&self) -> Hash {
        self.tree.root()
    }

    /// The proof of shard `index`.
    pub fn proof(&self, index: u16) -> Vec<Hash> {
        self.tree.proof(0, u64::from(index)).unwrap_or_default()
    }
}

/// Encodes `block` into `k` data and `m` parity shards.
pub fn encode(block: &[u8], k: usize, m: usize) -> Result<Encoded, CodeError> {
    let s = check(k, m, block.len())?;
    let mut shards: Vec<Vec<u8>> = (0..k)
        .map(|i| {
            let mut v = vec![0u8; s];
            let lo = (i * s).min(block.len());
            let hi = ((i + 1) * s).min(block.len());
            v[..hi - lo].copy_from_slice(&block[lo..hi]);
            v
        })
        .collect();
    let parity =
        reed_solomon_simd::encode(k, m, &shards).map_err(|e| CodeError::Rs(e.to_string()))?;
    shards.extend(parity);
    let tree = MerkleTree::new(
        shards
            .iter()
            .enumerate()
            .map(|(i, d)| leaf(i as u16, d))
            .collect(),
    );
    Ok(Encoded {
        shard_len: s,
        shards,
        tree,
    })
}

/// Checks shard `index` against the `root` of a tree of `count` leaves.
pub fn verify_shard(root: &Hash, count: usize, index: u16, shard: &[u8], proof: &[Hash]) -> bool {
    statesync_manifest::merkle::verify_proof(
        root,
        count as u64,
        0,
        u64::from(index),
        leaf(index, shard),
        proof,
    )
    .is_ok()
}

/// Rebuilds the block of `len` bytes from at least `k` distinct shards
/// `(index, bytes)` (each already verified against the root).
pub fn decode(len: usize, k: usize, m: usize, have: &[(u16, &[u8])]) -> Result<Vec<u8>, CodeError> {
    let s = check(k, m, len)?;
    let mut data: Vec<Option<&[u8]>> = vec![None; k];
    let mut parity: Vec<(usize, &[u8])> = Vec::new();
    let mut distinct = 0;
    for &(i, d) in have {
        let i = usize::from(i);
        if d.len() != s {
            continue;
        }
        if i < k {
            if data[i].is_none() {
                data[i] = Some(d);
                distinct += 1;
            }
        } else if i < k + m && !parity.iter().any(|(j, _)| *j == i - k) {
            parity.push((i - k, d));
            distinct += 1;
        }
    }
    if distinct < k {
        return Err(CodeError::NotEnough {
            have: distinct,
            need: k,
        });
    }
    let mut out = Vec::with_capacity(k * s);
    if data.iter().all(Option::is_some) {
        for d in data.iter().flatten() {
            out.extend_from_slice(d);
        }
    } else {
        let originals: Vec<(usize, &[u8])> = data
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.map(|d| (i, d)))
            .collect();
        let restored = reed_solomon_simd::decode(k, m, originals, parity)
            .map_err(|e| CodeError::Rs(e.to_string()))?;
        for (i, d) in data.iter().enumerate() {
            match d {
                Some(d) => out.extend_from_slice(d),
                None => out.extend_from_slice(
                    restored
                        .get(&i)
                        .ok_or_else(|| CodeError::Rs(format!("shard {i} not restored")))?,
                ),
            }
        }
    }
    out.truncate(len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn any_k_shards_give_the_block_back_and_proofs_check() {
        let b = block(100_000);
        let (k, m) = (10, 8);
        let e = encode(&b, k, m).unwrap();
        assert_eq!(e.shards.len(), k + m);
        for (i, s) in e.shards.iter().enumerate() {
            assert!(verify_shard(
                &e.root(),
                k + m,
                i as u16,
                s,
                &e.proof(i as u16)
            ));
            assert!(!verify_shard(
                &e.root(),
                k + m,
                (i as u16 + 1) % 18,
                s,
                &e.proof(i as u16)
            ));
        }
        // Parity only, mixed, data only.
        for pick in [
            (8..18).collect::<Vec<usize>>(),
            vec![0, 2, 4, 6, 8, 10, 12, 14, 16, 17],
            (0..10).collect(),
        ] {
            let have: Vec<(u16, &[u8])> = pick
                .iter()
                .map(|&i| (i as u16, e.shards[i].as_slice()))
                .collect();
            assert_eq!(decode(b.len(), k, m, &have).unwrap(), b);
        }
        let few: Vec<(u16, &[u8])> = (0..9).map(|i| (i as u16, e.shards[i].as_slice())).collect();
        assert!(matches!(
            decode(b.len(), k, m, &few),
            Err(CodeError::NotEnough { .. })
        ));
    }

    #[test]
    fn a_corrupt_shard_fails_its_proof() {
        let b = block(5000);
        let e = encode(&b, 4, 4).unwrap();
        let mut bad = e.shards[2].clone();
        bad[0] ^= 1;
        assert!(!verify_shard(&e.root(), 8, 2, &bad, &e.proof(2)));
    }

    #[test]
    fn parameters_are_bounded() {
        assert!(encode(&[1, 2, 3], 0, 1).is_err());
        assert!(encode(&[1, 2, 3], 4000, 200).is_err());
        assert_eq!(shard_len(1, 1), 64);
        assert_eq!(shard_len(1000, 3), 384);
    }
}
