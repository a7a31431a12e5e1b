//! Wire messages of the state sync protocol, their canonical encoding and
//! strictly bounded decoding. No async, no I/O: the network layer frames these
//! bytes on streams. The byte layout is specified in docs/protocol.md and
//! pinned by golden tests (`tests/wire.rs`).
//!
//! This module owns the `/statesync/state/1` messages ([`Request`],
//! [`Response`]), the advert body and its signed form ([`Advert`],
//! [`SignedAdvert`]), the decode limits, and the length-prefix framing
//! helpers ([`frame`], [`check_frame_len`]). The blocks protocol is in
//! [`blocks`].

#![warn(missing_docs)]

pub mod blocks;

use statesync_manifest::format::{
    CHUNK_ENTRY_LEN, ChunkEntry, FileEntry, ManifestError, ROOT_HEADER_LEN, Reader,
    decode_chunk_entry, decode_file_entry, encode_chunk_entry, encode_file_entry,
};
/// The 32-byte hashes messages carry (roots, chunk hashes).
pub use statesync_manifest::hash::Hash;

/// Chunk data: reference-counted slices, so a decoded response shares the
/// frame it was read into and an encoded one the buffers it was read from.
pub use bytes::Bytes;

/// Protocol name for requests and responses (one request per stream).
pub const PROTOCOL: &str = "/statesync/state/1";
/// Largest encoded request in bytes (16 KiB): the frame limit for requests,
/// also checked by [`Request::decode`].
pub const MAX_REQUEST_LEN: usize = 16 * 1024;
/// Largest encoded response in bytes (17 MiB: a full chunk batch plus its
/// headers), also checked by [`Response::decode`].
pub const MAX_RESPONSE_LEN: usize = 17 * 1024 * 1024;
/// Most chunks in one `GetChunks` request or `Chunks` response.
pub const MAX_BATCH_CHUNKS: usize = 1024;
/// Most chunk data bytes in one `Chunks` response (16 MiB): a server stops
/// adding chunks before this.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Most checkpoints in one advert.
pub const MAX_ADVERT_ENTRIES: usize = 64;
/// Most hashes in a piece's Merkle proof, checked on decode before
/// allocating; a generous bound (a manifest has at most 2^32 chunks, so real
/// proofs have at most 32).
pub const MAX_PROOF_LEN: usize = 64;
/// Most entries in a manifest piece (the chunk piece size; file pieces are smaller).
pub const MAX_PIECE_ENTRIES: usize = 4096;
/// Longest `Refused` reason in bytes; [`Response::encode`] truncates longer
/// ones at a character boundary.
pub const MAX_REASON_LEN: usize = 1024;

/// Why bytes are not a valid message (or frame length).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// A message or frame length above the limit for its direction.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// The length, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// A message without a tag byte, or a frame length of 0.
    #[error("empty message")]
    Empty,
    /// The first byte is not a tag of this protocol and direction.
    #[error("unknown message tag {0:#04x}")]
    UnknownTag(u8),
    /// A count or length over its protocol limit, or more entries than the
    /// remaining bytes could hold. The blocks protocol also reports a
    /// message cut short this way (`what` = `"truncated message"`, `count` =
    /// bytes present, `max` = bytes needed).
    #[error("{what}: {count} exceeds the limit of {max}")]
    Limit {
        /// What was counted.
        what: &'static str,
        /// The value found.
        count: usize,
        /// The largest value allowed.
        max: usize,
    },
    /// A field that does not decode: cut short (see [`truncated`]), an
    /// invalid manifest file or chunk entry, or an unsupported advert
    /// version.
    #[error("{0}")]
    Field(#[from] ManifestError),
    /// This many bytes follow a complete message.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// A `Refused` reason that is not valid UTF-8.
    #[error("reason is not UTF-8")]
    Utf8,
}

/// What a fetcher asks a server (tags `0x01`-`0x06` in docs/protocol.md,
/// "Requests"). Every request about a checkpoint names its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The 88-byte root header of the manifest with this root (`0x01`).
    GetHeader {
        /// Root of the manifest.
        root: Hash,
    },
    /// File-table piece `index` (`0x02`).
    GetFilePiece {
        /// Root of the manifest.
        root: Hash,
        /// Index of the piece in the file table.
        index: u64,
    },
    /// Chunk-table piece `index` (`0x03`).
    GetChunkPiece {
        /// Root of the manifest.
        root: Hash,
        /// Index of the piece in the chunk table.
        index: u64,
    },
    /// A batch of chunks by index in the chunk table (`0x04`).
    GetChunks {
        /// Root of the manifest.
        root: Hash,
        /// Chunk indices, 1 to [`MAX_BATCH_CHUNKS`] of them; the answer
        /// keeps this order.
        indices: Vec<u64>,
    },
    /// The server's signed advert (`0x05`).
    GetAdvert,
    /// The sender's own signed advert, pushed when its checkpoints change
    /// (`0x06`); answered with [`Response::Ack`].
    Announce {
        /// The sender's advert and its signature.
        advert: SignedAdvert,
    },
}

/// What a server answers (tags `0x81`-`0x86` and `0xE0`-`0xE2` in
/// docs/protocol.md, "Responses"). Never silence: overload is
/// [`Response::Busy`], absence is [`Response::NotFound`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The root header asked for by `GetHeader` (`0x81`); the fetcher checks
    /// that it hashes to the requested root.
    Header {
        /// The encoded root header (docs/manifest.md).
        header: [u8; ROOT_HEADER_LEN],
    },
    /// A file-table piece with its Merkle proof (`0x82`).
    FilePiece {
        /// Index of the piece, as requested.
        index: u64,
        /// The piece's file entries in manifest encoding (at most
        /// [`MAX_PIECE_ENTRIES`]).
        entries: Vec<FileEntry>,
        /// Proof of the piece against the root header (at most
        /// [`MAX_PROOF_LEN`] hashes).
        proof: Vec<Hash>,
    },
    /// A chunk-table piece with its Merkle proof (`0x83`).
    ChunkPiece {
        /// Index of the piece, as requested.
        index: u64,
        /// The piece's chunk entries in manifest encoding (at most
        /// [`MAX_PIECE_ENTRIES`]).
        entries: Vec<ChunkEntry>,
        /// Proof of the piece against the root header (at most
        /// [`MAX_PROOF_LEN`] hashes).
        proof: Vec<Hash>,
    },
    /// Chunks in request order (`0x84`); possibly only a prefix of the
    /// request when the byte budget ran out (the fetcher asks again for the
    /// rest).
    Chunks {
        /// `(chunk index, chunk bytes)` pairs: at most [`MAX_BATCH_CHUNKS`]
        /// and [`MAX_BATCH_BYTES`] of data in total.
        chunks: Vec<(u64, Bytes)>,
    },
    /// The server's signed advert, answering `GetAdvert` (`0x85`).
    Advert {
        /// The advert and its signature.
        advert: SignedAdvert,
    },
    /// Acknowledges an `Announce` (`0x86`).
    Ack,
    /// Overloaded: try again after this many milliseconds (or elsewhere)
    /// (`0xE0`).
    Busy {
        /// How long the fetcher backs off this peer, in milliseconds.
        retry_after_ms: u32,
    },
    /// This server does not (or no longer) serve that root or index
    /// (`0xE1`).
    NotFound,
    /// The request was malformed or refused (`0xE2`).
    Refused {
        /// Why, for people; at most [`MAX_REASON_LEN`] bytes of UTF-8 on
        /// the wire.
        reason: String,
    },
}

/// One checkpoint a node offers: `height:u64 root:hash bytes:u64` (48 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AdvertEntry {
    /// Height of the checkpoint.
    pub height: u64,
    /// Root of its manifest.
    pub root: Hash,
    /// Total size of its files, in bytes.
    pub bytes: u64,
}

/// The body of an advert: the checkpoints a node serves, with a sequence
/// number that grows with every change (newer adverts replace older ones).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Advert {
    /// Sequence number; a receiver keeps the advert with the highest one
    /// per peer.
    pub seq: u64,
    /// The checkpoints offered, at most [`MAX_ADVERT_ENTRIES`].
    pub entries: Vec<AdvertEntry>,
}

/// An advert with its signature by the sender's identity key. The signature
/// is over [`Advert::signing_bytes`]; the network layer signs and verifies
/// (it owns the keys). Wire form: `body_len:u32 body sig_len:u16 signature`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedAdvert {
    /// The encoded [`Advert`] (decode it with [`Advert::decode`]); at most
    /// the size of an advert with [`MAX_ADVERT_ENTRIES`] entries.
    pub body: Vec<u8>,
    /// The signature (ed25519 in practice), at most 256 bytes.
    pub signature: Vec<u8>,
}

const ADVERT_DOMAIN: &[u8] = b"statesync advert v1";
const MAX_SIGNATURE_LEN: usize = 256;

impl Advert {
    /// Encodes the body: `version:u8 (=1) seq:u64 count:u16 entry*count`.
    /// The entry limit is not checked here.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(11 + self.entries.len() * 48);
        out.push(1);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u16).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.height.to_le_bytes());
            out.extend_from_slice(&e.root.0);
            out.extend_from_slice(&e.bytes.to_le_bytes());
        }
        out
    }

    /// Decodes a body. Errors: a version other than 1, more than
    /// [`MAX_ADVERT_ENTRIES`] entries, truncation or trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Advert, ProtoError> {
        let mut r = Reader { buf: bytes, at: 0 };
        let v = r.u8("advert version")?;
        if v != 1 {
            return Err(ProtoError::Field(ManifestError::UnsupportedVersion(
                u16::from(v),
            )));
        }
        let seq = r.u64("advert seq")?;
        let n = r.u16("advert entry count")? as usize;
        if n > MAX_ADVERT_ENTRIES {
            return Err(ProtoError::Limit {
                what: "advert entries",
                count: n,
                max: MAX_ADVERT_ENTRIES,
            });
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(AdvertEntry {
                height: r.u64("advert height")?,
                root: r.hash("advert root")?,
                bytes: r.u64("advert bytes")?,
            });
        }
        if r.left() != 0 {
            return Err(ProtoError::Trailing(r.left()));
        }
        Ok(Advert { seq, entries })
    }

    /// What is signed: `"statesync advert v1" || peer_id_len:u16 || peer_id
    /// || body`. Binding the peer id stops a relayed advert from being
    /// claimed by another node.
    pub fn signing_bytes(peer_id: &[u8], body: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(ADVERT_DOMAIN.len() + 2 + peer_id.len() + body.len());
        v.extend_from_slice(ADVERT_DOMAIN);
        v.extend_from_slice(&(peer_id.len() as u16).to_le_bytes());
        v.extend_from_slice(peer_id);
        v.extend_from_slice(body);
        v
    }
}

fn put_hash(out: &mut Vec<u8>, h: &Hash) {
    out.extend_from_slice(&h.0);
}

fn put_proof(out: &mut Vec<u8>, proof: &[Hash]) {
    out.push(proof.len() as u8);
    for h in proof {
        put_hash(out, h);
    }
}

fn get_proof(r: &mut Reader<'_>) -> Result<Vec<Hash>, ProtoError> {
    let n = r.u8("proof length")? as usize;
    if n > MAX_PROOF_LEN {
        return Err(ProtoError::Limit {
            what: "proof hashes",
            count: n,
            max: MAX_PROOF_LEN,
        });
    }
    (0..n).map(|_| Ok(r.hash("proof hash")?)).collect()
}

fn put_signed(out: &mut Vec<u8>, a: &SignedAdvert) {
    out.extend_from_slice(&(a.body.len() as u32).to_le_bytes());
    out.extend_from_slice(&a.body);
    out.extend_from_slice(&(a.signature.len() as u16).to_le_bytes());
    out.extend_from_slice(&a.signature);
}

fn get_signed(r: &mut Reader<'_>) -> Result<SignedAdvert, ProtoError> {
    let n = r.u32("advert length")? as usize;
    let max = 11 + MAX_ADVERT_ENTRIES * 48;
    if n > max {
        return Err(ProtoError::Limit {
            what: "advert bytes",
            count: n,
            max,
        });
    }
    let body = r.take(n, "advert body")?.to_vec();
    let s = r.u16("signature length")? as usize;
    if s > MAX_SIGNATURE_LEN {
        return Err(ProtoError::Limit {
            what: "signature bytes",
            count: s,
            max: MAX_SIGNATURE_LEN,
        });
    }
    let signature = r.take(s, "signature")?.to_vec();
    Ok(SignedAdvert { body, signature })
}

mod tag {
    pub const GET_HEADER: u8 = 0x01;
    pub const GET_FILE_PIECE: u8 = 0x02;
    pub const GET_CHUNK_PIECE: u8 = 0x03;
    pub const GET_CHUNKS: u8 = 0x04;
    pub const GET_ADVERT: u8 = 0x05;
    pub const ANNOUNCE: u8 = 0x06;
    pub const HEADER: u8 = 0x81;
    pub const FILE_PIECE: u8 = 0x82;
    pub const CHUNK_PIECE: u8 = 0x83;
    pub const CHUNKS: u8 = 0x84;
    pub const ADVERT: u8 = 0x85;
    pub const ACK: u8 = 0x86;
    pub const BUSY: u8 = 0xe0;
    pub const NOT_FOUND: u8 = 0xe1;
    pub const REFUSED: u8 = 0xe2;
}

impl Request {
    /// Encodes as `tag || fields`, without the frame length prefix. Limits
    /// are not checked here (only on decode).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Request::GetHeader { root } => {
                out.push(tag::GET_HEADER);
                put_hash(&mut out, root);
            }
            Request::GetFilePiece { root, index } => {
                out.push(tag::GET_FILE_PIECE);
                put_hash(&mut out, root);
                out.extend_from_slice(&index.to_le_bytes());
            }
            Request::GetChunkPiece { root, index } => {
                out.push(tag::GET_CHUNK_PIECE);
                put_hash(&mut out, root);
                out.extend_from_slice(&index.to_le_bytes());
            }
            Request::GetChunks { root, indices } => {
                out.push(tag::GET_CHUNKS);
                put_hash(&mut out, root);
                out.extend_from_slice(&(indices.len() as u16).to_le_bytes());
                for i in indices {
                    out.extend_from_slice(&i.to_le_bytes());
                }
            }
            Request::GetAdvert => out.push(tag::GET_ADVERT),
            Request::Announce { advert } => {
                out.push(tag::ANNOUNCE);
                put_signed(&mut out, advert);
            }
        }
        out
    }

    /// Decodes a request (without the frame prefix). Checks
    /// [`MAX_REQUEST_LEN`], a chunk count of 1 to [`MAX_BATCH_CHUNKS`], the
    /// advert and signature sizes, and that no bytes trail.
    pub fn decode(bytes: &[u8]) -> Result<Request, ProtoError> {
        if bytes.len() > MAX_REQUEST_LEN {
            return Err(ProtoError::TooLong {
                len: bytes.len(),
                max: MAX_REQUEST_LEN,
            });
        }
        let mut r = Reader { buf: bytes, at: 0 };
        let t = r.u8("tag").map_err(|_| ProtoError::Empty)?;
        let req = match t {
            tag::GET_HEADER => Request::GetHeader {
                root: r.hash("root")?,
            },
            tag::GET_FILE_PIECE => Request::GetFilePiece {
                root: r.hash("root")?,
                index: r.u64("index")?,
            },
            tag::GET_CHUNK_PIECE => Request::GetChunkPiece {
                root: r.hash("root")?,
                index: r.u64("index")?,
            },
            tag::GET_CHUNKS => {
                let root = r.hash("root")?;
                let n = r.u16("chunk count")? as usize;
                if n == 0 || n > MAX_BATCH_CHUNKS {
                    return Err(ProtoError::Limit {
                        what: "chunks in a request (1..)",
                        count: n,
                        max: MAX_BATCH_CHUNKS,
                    });
                }
                let mut indices = Vec::with_capacity(n);
                for _ in 0..n {
                    indices.push(r.u64("chunk index")?);
                }
                Request::GetChunks { root, indices }
            }
            tag::GET_ADVERT => Request::GetAdvert,
            tag::ANNOUNCE => Request::Announce {
                advert: get_signed(&mut r)?,
            },
            t => return Err(ProtoError::UnknownTag(t)),
        };
        if r.left() != 0 {
            return Err(ProtoError::Trailing(r.left()));
        }
        Ok(req)
    }
}

impl Response {
    /// Encodes as `tag || fields`, without the frame length prefix. A
    /// `Refused` reason is truncated to [`MAX_REASON_LEN`] bytes; other
    /// limits are not checked here (only on decode).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Response::Header { header } => {
                out.push(tag::HEADER);
                out.extend_from_slice(header);
            }
            Response::FilePiece {
                index,
                entries,
                proof,
            } => {
                out.push(tag::FILE_PIECE);
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for e in entries {
                    encode_file_entry(e, &mut out);
                }
                put_proof(&mut out, proof);
            }
            Response::ChunkPiece {
                index,
                entries,
                proof,
            } => {
                out.reserve(13 + entries.len() * CHUNK_ENTRY_LEN + 1 + proof.len() * 32);
                out.push(tag::CHUNK_PIECE);
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for e in entries {
                    encode_chunk_entry(e, &mut out);
                }
                put_proof(&mut out, proof);
            }
            Response::Chunks { chunks } => {
                let total: usize = chunks.iter().map(|(_, d)| 12 + d.len()).sum();
                out.reserve(3 + total);
                out.push(tag::CHUNKS);
                out.extend_from_slice(&(chunks.len() as u16).to_le_bytes());
                for (i, d) in chunks {
                    out.extend_from_slice(&i.to_le_bytes());
                    out.extend_from_slice(&(d.len() as u32).to_le_bytes());
                    out.extend_from_slice(d);
                }
            }
            Response::Advert { advert } => {
                out.push(tag::ADVERT);
                put_signed(&mut out, advert);
            }
            Response::Ack => out.push(tag::ACK),
            Response::Busy { retry_after_ms } => {
                out.push(tag::BUSY);
                out.extend_from_slice(&retry_after_ms.to_le_bytes());
            }
            Response::NotFound => out.push(tag::NOT_FOUND),
            Response::Refused { reason } => {
                out.push(tag::REFUSED);
                let r = truncate_utf8(reason, MAX_REASON_LEN);
                out.extend_from_slice(&(r.len() as u16).to_le_bytes());
                out.extend_from_slice(r.as_bytes());
            }
        }
        out
    }

    /// The encoding as a sequence of pieces whose concatenation is
    /// [`Response::encode`]: chunk data is not copied, so a server can hand
    /// the buffers it read from disk to the stream as they are.
    pub fn encode_parts(&self) -> Vec<Bytes> {
        match self {
            Response::Chunks { chunks } => {
                let mut parts = Vec::with_capacity(1 + 2 * chunks.len());
                let mut head = Vec::with_capacity(3);
                head.push(tag::CHUNKS);
                head.extend_from_slice(&(chunks.len() as u16).to_le_bytes());
                parts.push(Bytes::from(head));
                for (i, d) in chunks {
                    let mut h = Vec::with_capacity(12);
                    h.extend_from_slice(&i.to_le_bytes());
                    h.extend_from_slice(&(d.len() as u32).to_le_bytes());
                    parts.push(Bytes::from(h));
                    parts.push(d.clone());
                }
                parts
            }
            _ => vec![Bytes::from(self.encode())],
        }
    }

    /// Decodes a response (without the frame prefix), copying chunk data.
    /// Checks [`MAX_RESPONSE_LEN`] and every count and length limit before
    /// allocating, and that no bytes trail. Pieces and chunks are not
    /// verified against the root here: that is the fetcher's job.
    pub fn decode(bytes: &[u8]) -> Result<Response, ProtoError> {
        Self::decode_from(bytes, None)
    }

    /// Decodes a frame it takes over: chunk data are slices of it, not
    /// copies. Same rules and errors as [`Response::decode`].
    pub fn decode_owned(bytes: Bytes) -> Result<Response, ProtoError> {
        Self::decode_from(&bytes, Some(&bytes))
    }

    fn decode_from(bytes: &[u8], owner: Option<&Bytes>) -> Result<Response, ProtoError> {
        if bytes.len() > MAX_RESPONSE_LEN {
            return Err(ProtoError::TooLong {
                len: bytes.len(),
                max: MAX_RESPONSE_LEN,
            });
        }
        let mut r = Reader { buf: bytes, at: 0 };
        let t = r.u8("tag").map_err(|_| ProtoError::Empty)?;
        let resp = match t {
            tag::HEADER => Response::Header {
                header: r.array("root header")?,
            },
            tag::FILE_PIECE => {
                let index = r.u64("piece index")?;
                let n = piece_count(&mut r, statesync_manifest::format::MIN_FILE_ENTRY_LEN)?;
                let mut entries = Vec::with_capacity(n);
                for i in 0..n {
                    entries.push(decode_file_entry(&mut r, i as u32)?);
                }
                Response::FilePiece {
                    index,
                    entries,
                    proof: get_proof(&mut r)?,
                }
            }
            tag::CHUNK_PIECE => {
                let index = r.u64("piece index")?;
                let n = piece_count(&mut r, CHUNK_ENTRY_LEN)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(decode_chunk_entry(&mut r)?);
                }
                Response::ChunkPiece {
                    index,
                    entries,
                    proof: get_proof(&mut r)?,
                }
            }
            tag::CHUNKS => {
                let n = r.u16("chunk count")? as usize;
                check_chunk_count(n, r.left())?;
                let mut chunks = Vec::with_capacity(n);
                let mut total = 0usize;
                for _ in 0..n {
                    let i = r.u64("chunk index")?;
                    let len = r.u32("chunk length")? as usize;
                    total += len;
                    check_chunk_total(total)?;
                    let at = r.at;
                    let data = r.take(len, "chunk data")?;
                    chunks.push((
                        i,
                        match owner {
                            Some(b) => b.slice(at..at + len),
                            None => Bytes::copy_from_slice(data),
                        },
                    ));
                }
                Response::Chunks { chunks }
            }
            tag::ADVERT => Response::Advert {
                advert: get_signed(&mut r)?,
            },
            tag::ACK => Response::Ack,
            tag::BUSY => Response::Busy {
                retry_after_ms: r.u32("retry after")?,
            },
            tag::NOT_FOUND => Response::NotFound,
            tag::REFUSED => {
                let n = r.u16("reason length")? as usize;
                if n > MAX_REASON_LEN {
                    return Err(ProtoError::Limit {
                        what: "reason bytes",
                        count: n,
                        max: MAX_REASON_LEN,
                    });
                }
                let reason = std::str::from_utf8(r.take(n, "reason")?)
                    .map_err(|_| ProtoError::Utf8)?
                    .to_string();
                Response::Refused { reason }
            }
            t => return Err(ProtoError::UnknownTag(t)),
        };
        if r.left() != 0 {
            return Err(ProtoError::Trailing(r.left()));
        }
        Ok(resp)
    }
}

/// Tag of a `Chunks` response, for readers that take its chunk data
/// straight off the stream (see [`check_chunk_count`]).
pub const CHUNKS_TAG: u8 = tag::CHUNKS;
/// Bytes before each chunk's data in a `Chunks` response: index u64, len u32.
pub const CHUNK_HEADER_LEN: usize = 12;

/// Checks a `Chunks` response's count `n` against [`MAX_BATCH_CHUNKS`] and
/// the `left` bytes that follow it (each chunk takes at least its 12-byte
/// header). Shared by
/// [`Response::decode`] and readers that decode `Chunks` off a stream, so
/// both accept exactly the same frames.
pub fn check_chunk_count(n: usize, left: usize) -> Result<(), ProtoError> {
    if n > MAX_BATCH_CHUNKS || n * CHUNK_HEADER_LEN > left {
        return Err(ProtoError::Limit {
            what: "chunks in a response",
            count: n,
            max: MAX_BATCH_CHUNKS.min(left / CHUNK_HEADER_LEN),
        });
    }
    Ok(())
}

/// Checks the running total of chunk bytes in a `Chunks` response against
/// [`MAX_BATCH_BYTES`]; called after each chunk header, before its data is
/// read.
pub fn check_chunk_total(total: usize) -> Result<(), ProtoError> {
    if total > MAX_BATCH_BYTES {
        return Err(ProtoError::Limit {
            what: "chunk bytes in a response",
            count: total,
            max: MAX_BATCH_BYTES,
        });
    }
    Ok(())
}

/// The error for a field cut short in a frame read off a stream: `what`
/// starts at byte offset `at` and needs `need` bytes, of which `have` remain.
pub fn truncated(what: &'static str, at: usize, need: usize, have: usize) -> ProtoError {
    ProtoError::Field(ManifestError::Truncated {
        what,
        at,
        need,
        have,
    })
}

/// Reads a piece's entry count and checks it against the limit and the bytes
/// that remain (each entry takes at least `min_len`), before allocating.
fn piece_count(r: &mut Reader<'_>, min_len: usize) -> Result<usize, ProtoError> {
    let n = r.u32("entry count")? as usize;
    if n > MAX_PIECE_ENTRIES || n.saturating_mul(min_len) > r.left() {
        return Err(ProtoError::Limit {
            what: "piece entries",
            count: n,
            max: MAX_PIECE_ENTRIES.min(r.left() / min_len),
        });
    }
    Ok(n)
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Frames a message: `len:u32 LE || message`. No limit is checked here;
/// receivers check the prefix with [`check_frame_len`].
pub fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + msg.len());
    out.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    out.extend_from_slice(msg);
    out
}

/// Checks a frame's 4-byte little-endian length prefix before anything is
/// read or allocated: returns the length, [`ProtoError::TooLong`] above
/// `max`, or [`ProtoError::Empty`] for 0.
pub fn check_frame_len(prefix: [u8; 4], max: usize) -> Result<usize, ProtoError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > max {
        return Err(ProtoError::TooLong { len, max });
    }
    if len == 0 {
        return Err(ProtoError::Empty);
    }
    Ok(len)
}
