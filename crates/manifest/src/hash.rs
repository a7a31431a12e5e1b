//! Hash kinds and their domains.
//!
//! Every hash in a manifest is BLAKE3 in keyed mode, with one key per kind of
//! hash. Each key is derived once with `blake3::derive_key` from a context
//! string that names the kind and the format version, so a chunk hash can never
//! be confused with a file hash, a Merkle leaf, an interior node or a root.
//! Keyed BLAKE3 runs at the same speed as plain BLAKE3.

use std::fmt;
use std::sync::LazyLock;

/// A 32-byte BLAKE3 output, normally keyed with one of the [`Domain`] keys.
///
/// Displays, debugs and serialises as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// 32 zero bytes: the root of an empty Merkle tree.
    pub const ZERO: Hash = Hash([0u8; 32]);

    /// The raw 32 bytes, as they appear in the encoding.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[(b >> 4) as usize]));
            s.push(char::from(HEX[(b & 15) as usize]));
        }
        s
    }

    /// Parses 64 hexadecimal digits (either case), ignoring surrounding
    /// whitespace.
    ///
    /// # Errors
    ///
    /// [`HexError::Length`] if the trimmed input is not 64 bytes long,
    /// [`HexError::Digit`] at the first byte that is not a hex digit.
    pub fn from_hex(s: &str) -> Result<Hash, HexError> {
        let b = s.trim().as_bytes();
        if b.len() != 64 {
            return Err(HexError::Length(b.len()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or(HexError::Digit(i * 2))?;
            let lo = hex_val(pair[1]).ok_or(HexError::Digit(i * 2 + 1))?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Hash(out))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Why a string is not a hex-encoded [`Hash`](struct@Hash).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HexError {
    /// The input (after trimming whitespace) is this many bytes, not 64.
    #[error("a hash is 64 hex digits, got {0} characters")]
    Length(usize),
    /// The byte at this index of the trimmed input is not a hex digit.
    #[error("not a hex digit at position {0}")]
    Digit(usize),
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl serde::Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        Hash::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// The kinds of hash, each with its own key. The context strings are part of
/// the format (docs/manifest.md) and pinned by golden tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// The bytes of one chunk.
    Chunk,
    /// A file's content: its size and the hashes of its chunks.
    File,
    /// A leaf of the file-table Merkle tree: one encoded file entry.
    FileLeaf,
    /// A leaf of the chunk-table Merkle tree: one encoded chunk entry.
    ChunkLeaf,
    /// An interior Merkle node: left child || right child.
    Node,
    /// The manifest root: the encoded root header.
    Root,
    /// Selection of reused chunks for the sampled rehash:
    /// `height:u64 || chunk_index:u64`. Local choice, not part of the root.
    Sample,
}

impl Domain {
    /// The `blake3::derive_key` context string of this kind (part of the
    /// format, see the table in docs/manifest.md).
    pub const fn context(self) -> &'static str {
        match self {
            Domain::Chunk => "statesync manifest v1 chunk",
            Domain::File => "statesync manifest v1 file",
            Domain::FileLeaf => "statesync manifest v1 file-table leaf",
            Domain::ChunkLeaf => "statesync manifest v1 chunk-table leaf",
            Domain::Node => "statesync manifest v1 merkle node",
            Domain::Root => "statesync manifest v1 root",
            Domain::Sample => "statesync manifest v1 rehash sample",
        }
    }

    /// The 32-byte key, `blake3::derive_key(self.context(), b"")`, derived
    /// once per process and cached.
    pub fn key(self) -> &'static [u8; 32] {
        static KEYS: LazyLock<[[u8; 32]; 7]> = LazyLock::new(|| {
            [
                Domain::Chunk,
                Domain::File,
                Domain::FileLeaf,
                Domain::ChunkLeaf,
                Domain::Node,
                Domain::Root,
                Domain::Sample,
            ]
            .map(|d| blake3::derive_key(d.context(), &[]))
        });
        &KEYS[self as usize]
    }

    /// An incremental keyed hasher for this domain, for input fed in pieces.
    pub fn hasher(self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(self.key())
    }

    /// Keyed hash of `data` in this domain: `H_d(data)`.
    pub fn hash(self, data: &[u8]) -> Hash {
        Hash(*blake3::keyed_hash(self.key(), data).as_bytes())
    }
}

/// Hash of one chunk's bytes: `H_chunk(data)`.
pub fn chunk_hash(data: &[u8]) -> Hash {
    Domain::Chunk.hash(data)
}

/// Hash of a whole file's content, from its size and its chunk hashes in
/// order: `H_file(size:u64 || chunk_hash_0 || ...)`. It does not depend on
/// the path or the mode, so identical files have identical file hashes
/// wherever they sit.
pub fn file_hash<'a>(size: u64, chunks: impl IntoIterator<Item = &'a Hash>) -> Hash {
    let mut h = Domain::File.hasher();
    h.update(&size.to_le_bytes());
    for c in chunks {
        h.update(&c.0);
    }
    Hash(*h.finalize().as_bytes())
}

/// Interior Merkle node: `H_node(left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(&left.0);
    buf[32..].copy_from_slice(&right.0);
    Domain::Node.hash(&buf)
}

/// Hash of an all-zero chunk of `len` bytes, equal to
/// `chunk_hash(&vec![0; len])` without allocating. Memoised per length (up to
/// 4096 distinct lengths).
pub fn zero_chunk_hash(len: u32) -> Hash {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static CACHE: LazyLock<Mutex<HashMap<u32, Hash>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    if let Ok(cache) = CACHE.lock()
        && let Some(h) = cache.get(&len)
    {
        return *h;
    }
    let mut h = Domain::Chunk.hasher();
    let zeros = [0u8; 16384];
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(zeros.len());
        h.update(&zeros[..n]);
        left -= n;
    }
    let out = Hash(*h.finalize().as_bytes());
    if let Ok(mut cache) = CACHE.lock()
        && cache.len() < 4096
    {
        cache.insert(len, out);
    }
    out
}

/// True if the buffer holds only zero bytes. Works on 64-byte blocks with an
/// OR-fold the compiler vectorises, exiting at the first non-zero block.
pub fn is_all_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(64);
    for b in &mut blocks {
        if b.iter().fold(0u8, |a, &x| a | x) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roundtrip() {
        let h = Domain::Chunk.hash(b"x");
        assert_eq!(Hash::from_hex(&h.to_hex()), Ok(h));
        assert_eq!(Hash::from_hex("00"), Err(HexError::Length(2)));
        assert!(matches!(
            Hash::from_hex(&"g".repeat(64)),
            Err(HexError::Digit(0))
        ));
    }

    #[test]
    fn domains_are_distinct() {
        let all = [
            Domain::Chunk,
            Domain::File,
            Domain::FileLeaf,
            Domain::ChunkLeaf,
            Domain::Node,
            Domain::Root,
            Domain::Sample,
        ];
        let hashes: std::collections::HashSet<_> = all.iter().map(|d| d.hash(b"same")).collect();
        assert_eq!(hashes.len(), all.len());
    }

    #[test]
    fn zero_hash_matches_direct() {
        for len in [1u32, 100, 16384, 16385, 1 << 20] {
            assert_eq!(zero_chunk_hash(len), chunk_hash(&vec![0u8; len as usize]));
        }
        assert!(is_all_zero(&[0u8; 33]));
        let mut v = vec![0u8; 100];
        v[99] = 1;
        assert!(!is_all_zero(&v));
        v[99] = 0;
        v[5] = 1;
        assert!(!is_all_zero(&v));
    }
}
