//! The gossip protocol's messages, byte by byte (docs/protocol.md,
//! "Block gossip"). Little-endian integers; every length is checked before
//! anything is allocated; decoding never panics.
//!
//! ```text
//! header (87 bytes, signed by the proposer):
//!   0  u8    version (1)
//!   1  u16   proposer (its index in the committee)
//!   3  u64   height
//!   11 [32]  block hash (BLAKE3 of the block's bytes)
//!   43 u32   block length
//!   47 u16   k (data shards)
//!   49 u16   m (parity shards)
//!   51 u32   shard length
//!   55 [32]  shard root (Merkle root over the k + m shard leaves)
//! signed header: header || signature [64]
//! block id: BLAKE3 of the 87 header bytes
//!
//! shard (tag 0x01): tag || signed header || index u16 || proof count u8 ||
//!                   proof [32] x count || data (shard length bytes)
//! pull  (tag 0x02): tag || block id [32] || count u16 || index u16 x count
//! ```

use crate::code::{MAX_SHARD_LEN, MAX_SHARDS};
use statesync_manifest::hash::Hash;

/// Bytes of a header.
pub const HEADER_LEN: usize = 87;
/// Bytes of a signature.
pub const SIG_LEN: usize = 64;
/// Bytes of a signed header.
pub const SIGNED_HEADER_LEN: usize = HEADER_LEN + SIG_LEN;
/// Most hashes in a shard's proof (a tree of at most [`MAX_SHARDS`] leaves).
pub const MAX_PROOF: usize = 13;
/// Most shards asked for in one pull.
pub const MAX_PULL: usize = 1024;
/// Largest message.
pub const MAX_MESSAGE_LEN: usize = 1 + SIGNED_HEADER_LEN + 2 + 1 + 32 * MAX_PROOF + MAX_SHARD_LEN;
/// The version this code speaks.
pub const VERSION: u8 = 1;

const TAG_SHARD: u8 = 0x01;
const TAG_PULL: u8 = 0x02;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its fields.
    #[error("truncated: {0}")]
    Truncated(&'static str),
    /// Bytes after the message.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// A field out of its range.
    #[error("{0}")]
    Invalid(String),
}

/// The header a proposer signs for one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The proposer's index in the committee.
    pub proposer: u16,
    /// The block's height.
    pub height: u64,
    /// BLAKE3 of the block's bytes.
    pub block_hash: Hash,
    /// Bytes in the block.
    pub block_len: u32,
    /// Data shards.
    pub k: u16,
    /// Parity shards.
    pub m: u16,
    /// Bytes per shard.
    pub shard_len: u32,
    /// Merkle root over the shards' leaves.
    pub shard_root: Hash,
}

impl Header {
    /// The 87 bytes that are signed.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = VERSION;
        b[1..3].copy_from_slice(&self.proposer.to_le_bytes());
        b[3..11].copy_from_slice(&self.height.to_le_bytes());
        b[11..43].copy_from_slice(&self.block_hash.0);
        b[43..47].copy_from_slice(&self.block_len.to_le_bytes());
        b[47..49].copy_from_slice(&self.k.to_le_bytes());
        b[49..51].copy_from_slice(&self.m.to_le_bytes());
        b[51..55].copy_from_slice(&self.shard_len.to_le_bytes());
        b[55..87].copy_from_slice(&self.shard_root.0);
        b
    }

    /// Decodes and checks a header's fields.
    pub fn decode(b: &[u8]) -> Result<Header, WireError> {
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated("header"));
        }
        if b[0] != VERSION {
            return Err(WireError::Invalid(format!("header version {}", b[0])));
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let hash_at = |i: usize| {
            let mut h = [0u8; 32];
            h.copy_from_slice(&b[i..i + 32]);
            Hash(h)
        };
        let mut height = [0u8; 8];
        height.copy_from_slice(&b[3..11]);
        let h = Header {
            proposer: u16_at(1),
            height: u64::from_le_bytes(height),
            block_hash: hash_at(11),
            block_len: u32_at(43),
            k: u16_at(47),
            m: u16_at(49),
            shard_len: u32_at(51),
            shard_root: hash_at(55),
        };
        let (k, m, s) = (usize::from(h.k), usize::from(h.m), h.shard_len as usize);
        if k == 0 || m == 0 || k + m > MAX_SHARDS {
            return Err(WireError::Invalid(format!("k {k}, m {m}")));
        }
        if s != crate::code::shard_len(h.block_len as usize, k) || s > MAX_SHARD_LEN {
            return Err(WireError::Invalid(format!(
                "shard length {s} for a block of {} bytes in {k} shards",
                h.block_len
            )));
        }
        Ok(h)
    }

    /// The block id: BLAKE3 of the header's bytes.
    pub fn id(&self) -> Hash {
        Hash(*blake3::hash(&self.encode()).as_bytes())
    }

    /// Shards in all.
    pub fn shard_count(&self) -> usize {
        usize::from(self.k) + usize::from(self.m)
    }
}

/// A header with the proposer's signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignedHeader {
    /// The header.
    pub header: Header,
    /// Ed25519 (or any 64-byte) signature over the header's bytes.
    pub signature: [u8; SIG_LEN],
}

/// A message of the gossip protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// One shard of a block with its proof.
    Shard {
        /// The block's signed header.
        header: SignedHeader,
        /// The shard's index (data `0..k`, parity `k..k+m`).
        index: u16,
        /// Sibling hashes from the leaf up.
        proof: Vec<Hash>,
        /// The shard's bytes (shared: relaying does not copy them).
        data: std::sync::Arc<[u8]>,
    },
    /// A request for shards of a block the sender could not decode yet.
    Pull {
        /// The block id.
        block: Hash,
        /// The shards wanted.
        indices: Vec<u16>,
    },
}

impl Message {
    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Shard {
                header,
                index,
                proof,
                data,
            } => {
                let mut b =
                    Vec::with_capacity(1 + SIGNED_HEADER_LEN + 3 + 32 * proof.len() + data.len());
                b.push(TAG_SHARD);
                b.extend_from_slice(&header.header.encode());
                b.extend_from_slice(&header.signature);
                b.extend_from_slice(&index.to_le_bytes());
                b.push(proof.len() as u8);
                for h in proof {
                    b.extend_from_slice(&h.0);
                }
                b.extend_from_slice(data);
                b
            }
            Message::Pull { block, indices } => {
                let mut b = Vec::with_capacity(35 + 2 * indices.len());
                b.push(TAG_PULL);
                b.extend_from_slice(&block.0);
                b.extend_from_slice(&(indices.len() as u16).to_le_bytes());
                for i in indices {
                    b.extend_from_slice(&i.to_le_bytes());
                }
                b
            }
        }
    }

    /// Size of the encoding.
    pub fn len(&self) -> usize {
        match self {
            Message::Shard { proof, data, .. } => {
                1 + SIGNED_HEADER_LEN + 3 + 32 * proof.len() + data.len()
            }
            Message::Pull { indices, .. } => 35 + 2 * indices.len(),
        }
    }

    /// Whether it is empty (never: every message has a tag).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Decodes a message, refusing anything out of bounds.
    pub fn decode(b: &[u8]) -> Result<Message, WireError> {
        if b.len() > MAX_MESSAGE_LEN {
            return Err(WireError::Invalid(format!(
                "{} bytes, over {MAX_MESSAGE_LEN}",
                b.len()
            )));
        }
        let Some((&tag, rest)) = b.split_first() else {
            return Err(WireError::Truncated("tag"));
        };
        match tag {
            TAG_SHARD => {
                if rest.len() < SIGNED_HEADER_LEN + 3 {
                    return Err(WireError::Truncated("shard"));
                }
                let header = Header::decode(&rest[..HEADER_LEN])?;
                let mut signature = [0u8; SIG_LEN];
                signature.copy_from_slice(&rest[HEADER_LEN..SIGNED_HEADER_LEN]);
                let r = &rest[SIGNED_HEADER_LEN..];
                let index = u16::from_le_bytes([r[0], r[1]]);
                if usize::from(index) >= header.shard_count() {
                    return Err(WireError::Invalid(format!(
                        "shard {index} of {}",
                        header.shard_count()
                    )));
                }
                let n = usize::from(r[2]);
                if n > MAX_PROOF {
                    return Err(WireError::Invalid(format!("proof of {n} hashes")));
                }
                let r = &r[3..];
                let want = 32 * n + header.shard_len as usize;
                if r.len() < want {
                    return Err(WireError::Truncated("shard proof and data"));
                }
                if r.len() > want {
                    return Err(WireError::Trailing(r.len() - want));
                }
                let proof = r[..32 * n]
                    .chunks_exact(32)
                    .map(|c| {
                        let mut h = [0u8; 32];
                        h.copy_from_slice(c);
                        Hash(h)
                    })
                    .collect();
                Ok(Message::Shard {
                    header: SignedHeader { header, signature },
                    index,
                    proof,
                    data: r[32 * n..].into(),
                })
            }
            TAG_PULL => {
                if rest.len() < 34 {
                    return Err(WireError::Truncated("pull"));
                }
                let mut block = [0u8; 32];
                block.copy_from_slice(&rest[..32]);
                let n = usize::from(u16::from_le_bytes([rest[32], rest[33]]));
                if n > MAX_PULL {
                    return Err(WireError::Invalid(format!("pull of {n} shards")));
                }
                let r = &rest[34..];
                if r.len() < 2 * n {
                    return Err(WireError::Truncated("pull indices"));
                }
                if r.len() > 2 * n {
                    return Err(WireError::Trailing(r.len() - 2 * n));
                }
                Ok(Message::Pull {
                    block: Hash(block),
                    indices: r
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .collect(),
                })
            }
            t => Err(WireError::Invalid(format!("unknown tag {t:#04x}"))),
        }
    }
}
