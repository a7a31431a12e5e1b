//! `/statesync/blocks/3`: block range sync, status, new-block pushes, and
//! the committee's messages (hellos, votes, IDA gossip of proposals,
//! subscriptions of listeners, final heads).
//! Blocks travel as opaque encoded bytes (the chain crate decodes and
//! verifies them); this module bounds their number and size. Byte layout in
//! docs/protocol.md ("Blocks protocol").
//!
//! This module owns the blocks protocol's messages ([`BlockRequest`],
//! [`BlockResponse`], [`Status`]) and limits. Framing is the same as the
//! state protocol's ([`crate::frame`], [`crate::check_frame_len`]).

use crate::ProtoError;

/// Protocol name of the blocks protocol (one request per stream).
pub const BLOCKS_PROTOCOL: &str = "/statesync/blocks/3";
/// Largest encoded blocks request in bytes (13 MiB, room for a pushed
/// block): the frame limit, checked by the network layer, not by
/// [`BlockRequest::decode`].
pub const MAX_BLOCKS_REQUEST_LEN: usize = 13 * 1024 * 1024;
/// Largest encoded blocks response in bytes (16 MiB): the frame limit,
/// checked by the network layer, not by [`BlockResponse::decode`].
pub const MAX_BLOCKS_RESPONSE_LEN: usize = 16 * 1024 * 1024;
/// Most blocks asked or answered at once.
pub const MAX_BLOCKS_PER_REQUEST: u32 = 256;
/// Largest single encoded block on the wire, in bytes (12 MiB).
pub const MAX_BLOCK_LEN: usize = 12 * 1024 * 1024;
/// Largest IDA gossip message carried ([`BlockRequest::Gossip`]): a shard of
/// at most 1 MiB with its signed header and proof.
pub const MAX_GOSSIP_LEN: usize = (1 << 20) + 1024;
/// Largest final head ([`BlockRequest::Final`]): a header with up to 1024
/// signatures (docs/chain.md).
pub const MAX_FINAL_LEN: usize = 145 + 2 + 1024 * 66;

mod tag {
    pub const GET_STATUS: u8 = 0x10;
    pub const GET_BLOCKS: u8 = 0x11;
    pub const NEW_BLOCK: u8 = 0x12;
    pub const HELLO: u8 = 0x13;
    pub const VOTE: u8 = 0x14;
    pub const GOSSIP: u8 = 0x15;
    pub const SUBSCRIBE: u8 = 0x16;
    pub const FINAL: u8 = 0x17;
    pub const STATUS: u8 = 0x90;
    pub const BLOCKS: u8 = 0x91;
    pub const ACK: u8 = 0x92;
    pub const BUSY: u8 = 0xe0;
    pub const NOT_FOUND: u8 = 0xe1;
}

/// A request of the blocks protocol (tags `0x10`-`0x17` in
/// docs/protocol.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockRequest {
    /// The peer's [`Status`] (`0x10`).
    GetStatus,
    /// Blocks `start..start+count`, ascending (`0x11`).
    GetBlocks {
        /// Height of the first block.
        start: u64,
        /// How many blocks, 1 to [`MAX_BLOCKS_PER_REQUEST`].
        count: u32,
    },
    /// A new final block (pushed by whoever imported or produced it)
    /// (`0x12`); answered with [`BlockResponse::Ack`] whatever it holds.
    NewBlock {
        /// The encoded block (docs/chain.md), at most [`MAX_BLOCK_LEN`]
        /// bytes; not decoded here.
        block: Vec<u8>,
    },
    /// A validator binds the sender's peer id to its key (`0x13`): `sig` is
    /// its signature over the chain's hello bytes (docs/chain.md).
    /// Answered with [`BlockResponse::Ack`].
    Hello {
        /// The validator's index.
        index: u16,
        /// Its signature.
        sig: [u8; 64],
    },
    /// A validator's vote for a proposal (`0x14`), sent to the proposer:
    /// the signature a finality proof holds. Answered with
    /// [`BlockResponse::Ack`].
    Vote {
        /// Height of the proposal.
        height: u64,
        /// Its header hash.
        hash: [u8; 32],
        /// The voter's index.
        index: u16,
        /// The vote.
        sig: [u8; 64],
    },
    /// An IDA gossip message (`0x15`; its own layout in docs/protocol.md,
    /// "Block gossip"), at most [`MAX_GOSSIP_LEN`] bytes, not decoded
    /// here. Answered with [`BlockResponse::Ack`].
    Gossip {
        /// The message.
        msg: Vec<u8>,
    },
    /// A node outside the committee asks the validator it sends this to
    /// for the gossip shards it relays (`0x16`): it becomes a listener.
    /// Answered with [`BlockResponse::Ack`].
    Subscribe,
    /// A block became final (`0x17`): its header and finality proof
    /// without the transactions, for a peer that has (or is decoding) the
    /// proposal from gossip; the others fetch the block. At most
    /// [`MAX_FINAL_LEN`] bytes, not decoded here. Answered with
    /// [`BlockResponse::Ack`].
    Final {
        /// `header || u16 count || (u16 index, sig[64]) * count`
        /// (docs/chain.md).
        head: Vec<u8>,
    },
}

/// A node's view of its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Status {
    /// Height of the highest executed block.
    pub head: u64,
    /// Header hash of that block.
    pub head_hash: [u8; 32],
    /// Lowest block it can serve (its backfill pointer).
    pub low: u64,
    /// Latest checkpoint it serves (0: none but genesis).
    pub checkpoint: u64,
}

/// A response of the blocks protocol (tags `0x90`-`0x92`, `0xE0`, `0xE1` in
/// docs/protocol.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockResponse {
    /// Answer to `GetStatus` (`0x90`).
    Status(Status),
    /// Consecutive blocks from the requested start (`0x91`); fewer than
    /// asked when the server has fewer (or hit the byte budget); empty if it
    /// has none.
    Blocks {
        /// Encoded blocks, at most [`MAX_BLOCKS_PER_REQUEST`], each at most
        /// [`MAX_BLOCK_LEN`] bytes; not decoded here.
        blocks: Vec<Vec<u8>>,
    },
    /// Answer to `NewBlock`, whatever the block (`0x92`).
    Ack,
    /// Rate or concurrency limit hit (`0xE0`).
    Busy {
        /// How long to back off this peer, in milliseconds.
        retry_after_ms: u32,
    },
    /// The requested start is outside the blocks the server holds (`0xE1`).
    NotFound,
}

fn u32_at(b: &[u8], o: usize) -> Result<u32, ProtoError> {
    b.get(o..o + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(ProtoError::Limit {
            what: "truncated message",
            count: b.len(),
            max: o + 4,
        })
}

fn u64_at(b: &[u8], o: usize) -> Result<u64, ProtoError> {
    let s = b.get(o..o + 8).ok_or(ProtoError::Limit {
        what: "truncated message",
        count: b.len(),
        max: o + 8,
    })?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

fn exact(b: &[u8], len: usize) -> Result<(), ProtoError> {
    if b.len() < len {
        return Err(ProtoError::Limit {
            what: "truncated message",
            count: b.len(),
            max: len,
        });
    }
    if b.len() > len {
        return Err(ProtoError::Trailing(b.len() - len));
    }
    Ok(())
}

impl BlockRequest {
    /// Encodes as `tag || fields`, without the frame length prefix. Limits
    /// are not checked here (only on decode).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            BlockRequest::GetStatus => out.push(tag::GET_STATUS),
            BlockRequest::GetBlocks { start, count } => {
                out.push(tag::GET_BLOCKS);
                out.extend_from_slice(&start.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
            }
            BlockRequest::NewBlock { block } => {
                out.push(tag::NEW_BLOCK);
                out.extend_from_slice(&(block.len() as u32).to_le_bytes());
                out.extend_from_slice(block);
            }
            BlockRequest::Hello { index, sig } => {
                out.push(tag::HELLO);
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(sig);
            }
            BlockRequest::Vote {
                height,
                hash,
                index,
                sig,
            } => {
                out.push(tag::VOTE);
                out.extend_from_slice(&height.to_le_bytes());
                out.extend_from_slice(hash);
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(sig);
            }
            BlockRequest::Gossip { msg } => {
                out.push(tag::GOSSIP);
                out.extend_from_slice(&(msg.len() as u32).to_le_bytes());
                out.extend_from_slice(msg);
            }
            BlockRequest::Subscribe => out.push(tag::SUBSCRIBE),
            BlockRequest::Final { head } => {
                out.push(tag::FINAL);
                out.extend_from_slice(&(head.len() as u32).to_le_bytes());
                out.extend_from_slice(head);
            }
        }
        out
    }

    /// Decodes a request (without the frame prefix). Checks a block count of
    /// 1 to [`MAX_BLOCKS_PER_REQUEST`], a pushed block of at most
    /// [`MAX_BLOCK_LEN`] bytes, and the exact length.
    pub fn decode(b: &[u8]) -> Result<BlockRequest, ProtoError> {
        let (&t, _) = b.split_first().ok_or(ProtoError::Empty)?;
        match t {
            tag::GET_STATUS => {
                exact(b, 1)?;
                Ok(BlockRequest::GetStatus)
            }
            tag::GET_BLOCKS => {
                exact(b, 13)?;
                let start = u64_at(b, 1)?;
                let count = u32_at(b, 9)?;
                if count == 0 || count > MAX_BLOCKS_PER_REQUEST {
                    return Err(ProtoError::Limit {
                        what: "blocks requested",
                        count: count as usize,
                        max: MAX_BLOCKS_PER_REQUEST as usize,
                    });
                }
                Ok(BlockRequest::GetBlocks { start, count })
            }
            tag::NEW_BLOCK => {
                let n = u32_at(b, 1)? as usize;
                if n > MAX_BLOCK_LEN {
                    return Err(ProtoError::Limit {
                        what: "block bytes",
                        count: n,
                        max: MAX_BLOCK_LEN,
                    });
                }
                exact(b, 5 + n)?;
                Ok(BlockRequest::NewBlock {
                    block: b[5..].to_vec(),
                })
            }
            tag::HELLO => {
                exact(b, 67)?;
                let mut sig = [0u8; 64];
                sig.copy_from_slice(&b[3..67]);
                Ok(BlockRequest::Hello {
                    index: u16::from_le_bytes([b[1], b[2]]),
                    sig,
                })
            }
            tag::VOTE => {
                exact(b, 107)?;
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&b[9..41]);
                let mut sig = [0u8; 64];
                sig.copy_from_slice(&b[43..107]);
                Ok(BlockRequest::Vote {
                    height: u64_at(b, 1)?,
                    hash,
                    index: u16::from_le_bytes([b[41], b[42]]),
                    sig,
                })
            }
            tag::GOSSIP => {
                let n = u32_at(b, 1)? as usize;
                if n > MAX_GOSSIP_LEN {
                    return Err(ProtoError::Limit {
                        what: "gossip message bytes",
                        count: n,
                        max: MAX_GOSSIP_LEN,
                    });
                }
                exact(b, 5 + n)?;
                Ok(BlockRequest::Gossip {
                    msg: b[5..].to_vec(),
                })
            }
            tag::SUBSCRIBE => {
                exact(b, 1)?;
                Ok(BlockRequest::Subscribe)
            }
            tag::FINAL => {
                let n = u32_at(b, 1)? as usize;
                if n > MAX_FINAL_LEN {
                    return Err(ProtoError::Limit {
                        what: "final head bytes",
                        count: n,
                        max: MAX_FINAL_LEN,
                    });
                }
                exact(b, 5 + n)?;
                Ok(BlockRequest::Final {
                    head: b[5..].to_vec(),
                })
            }
            other => Err(ProtoError::UnknownTag(other)),
        }
    }
}

impl BlockResponse {
    /// Encodes as `tag || fields`, without the frame length prefix. Limits
    /// are not checked here (only on decode).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            BlockResponse::Status(s) => {
                out.push(tag::STATUS);
                out.extend_from_slice(&s.head.to_le_bytes());
                out.extend_from_slice(&s.head_hash);
                out.extend_from_slice(&s.low.to_le_bytes());
                out.extend_from_slice(&s.checkpoint.to_le_bytes());
            }
            BlockResponse::Blocks { blocks } => {
                out.push(tag::BLOCKS);
                out.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
                for b in blocks {
                    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                    out.extend_from_slice(b);
                }
            }
            BlockResponse::Ack => out.push(tag::ACK),
            BlockResponse::Busy { retry_after_ms } => {
                out.push(tag::BUSY);
                out.extend_from_slice(&retry_after_ms.to_le_bytes());
            }
            BlockResponse::NotFound => out.push(tag::NOT_FOUND),
        }
        out
    }

    /// Decodes a response (without the frame prefix). Checks at most
    /// [`MAX_BLOCKS_PER_REQUEST`] blocks of at most [`MAX_BLOCK_LEN`] bytes
    /// each, and the exact length.
    pub fn decode(b: &[u8]) -> Result<BlockResponse, ProtoError> {
        let (&t, _) = b.split_first().ok_or(ProtoError::Empty)?;
        match t {
            tag::STATUS => {
                exact(b, 1 + 8 + 32 + 8 + 8)?;
                let mut head_hash = [0u8; 32];
                head_hash.copy_from_slice(&b[9..41]);
                Ok(BlockResponse::Status(Status {
                    head: u64_at(b, 1)?,
                    head_hash,
                    low: u64_at(b, 41)?,
                    checkpoint: u64_at(b, 49)?,
                }))
            }
            tag::BLOCKS => {
                let n = u32_at(b, 1)?;
                if n > MAX_BLOCKS_PER_REQUEST {
                    return Err(ProtoError::Limit {
                        what: "blocks",
                        count: n as usize,
                        max: MAX_BLOCKS_PER_REQUEST as usize,
                    });
                }
                let mut o = 5;
                let mut blocks = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let len = u32_at(b, o)? as usize;
                    if len > MAX_BLOCK_LEN {
                        return Err(ProtoError::Limit {
                            what: "block bytes",
                            count: len,
                            max: MAX_BLOCK_LEN,
                        });
                    }
                    let s = b.get(o + 4..o + 4 + len).ok_or(ProtoError::Limit {
                        what: "truncated message",
                        count: b.len(),
                        max: o + 4 + len,
                    })?;
                    blocks.push(s.to_vec());
                    o += 4 + len;
                }
                if o != b.len() {
                    return Err(ProtoError::Trailing(b.len() - o));
                }
                Ok(BlockResponse::Blocks { blocks })
            }
            tag::ACK => {
                exact(b, 1)?;
                Ok(BlockResponse::Ack)
            }
            tag::BUSY => {
                exact(b, 5)?;
                Ok(BlockResponse::Busy {
                    retry_after_ms: u32_at(b, 1)?,
                })
            }
            tag::NOT_FOUND => {
                exact(b, 1)?;
                Ok(BlockResponse::NotFound)
            }
            other => Err(ProtoError::UnknownTag(other)),
        }
    }
}
