//! The manifest: data model, canonical encoding, strict bounded decoding, the
//! root header and proofs of pieces and chunks. The byte layout is specified in
//! docs/manifest.md; golden tests pin it.

use crate::hash::{Domain, Hash, file_hash, zero_chunk_hash};
use crate::merkle::{self, MerkleTree, ProofError};
use crate::path::{self, PathError};
use std::collections::HashSet;

/// First 4 bytes of an encoded manifest and of a root header.
pub const MAGIC: [u8; 4] = *b"SSMF";
/// The format version this build writes and the only one it reads.
pub const VERSION: u16 = 1;
/// Default chunk size in bytes: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Smallest allowed chunk size in bytes: 1 KiB.
pub const MIN_CHUNK_SIZE: u32 = 1 << 10;
/// Largest allowed chunk size in bytes: 64 MiB.
pub const MAX_CHUNK_SIZE: u32 = 1 << 26;
/// Most files in one manifest (2^24).
pub const MAX_FILES: u32 = 1 << 24;
/// Most chunks in one manifest (4 Gi chunks = 4 PiB at 1 MiB).
pub const MAX_CHUNKS: u64 = 1 << 32;
/// Bytes in the fixed prefix of the encoding: magic, version, flags, chunk
/// size, file count, chunk count.
pub const PREFIX_LEN: usize = 24;
/// Bytes in the root header (88): the prefix followed by the two table roots.
pub const ROOT_HEADER_LEN: usize = PREFIX_LEN + 64;
/// Bytes in an encoded chunk entry: file, length, offset, hash.
pub const CHUNK_ENTRY_LEN: usize = 48;
/// Bytes in the smallest encoded file entry (a one-byte path); an entry is
/// `43 + path_len` bytes.
pub const MIN_FILE_ENTRY_LEN: usize = 2 + 1 + 8 + 1 + 32;
/// A file-table piece is the node at this level: 1024 entries.
pub const FILE_PIECE_LEVEL: u32 = 10;
/// A chunk-table piece is the node at this level: 4096 entries (192 KiB).
pub const CHUNK_PIECE_LEVEL: u32 = 12;

/// One regular file of a checkpoint: an entry of the file table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FileEntry {
    /// Normalised relative path (see [`crate::path`]).
    pub path: String,
    /// Size in bytes; determines the file's chunks.
    pub size: u64,
    /// Owner execute bit; encoded as the mode byte (0 = regular,
    /// 1 = executable).
    pub executable: bool,
    /// [`crate::hash::file_hash`] of the content.
    pub hash: Hash,
}

/// One fixed-size piece of a file (the last one of a file may be shorter):
/// an entry of the chunk table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChunkEntry {
    /// Index into the file table.
    pub file: u32,
    /// Byte offset in the file: `k * chunk_size` for the file's chunk `k`.
    pub offset: u64,
    /// Length in bytes: `min(chunk_size, size - offset)`, never 0 in a valid
    /// manifest.
    pub len: u32,
    /// [`crate::hash::chunk_hash`] of the chunk's bytes.
    pub hash: Hash,
}

impl ChunkEntry {
    /// True if this chunk is all zeros, recognised by its hash
    /// ([`crate::hash::zero_chunk_hash`] of its length).
    pub fn is_zero(&self) -> bool {
        self.hash == zero_chunk_hash(self.len)
    }
}

/// Everything wrong a manifest (encoded or in memory) can be. Decoding a
/// root header or a [`crate::stats::StatCache`] reports its errors with the
/// same type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The input ends inside a field.
    #[error("manifest truncated: {what} needs {need} bytes at offset {at}, {have} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Byte offset at which the field starts.
        at: usize,
        /// Bytes the field needs.
        need: usize,
        /// Bytes left in the input.
        have: usize,
    },
    /// The first 4 bytes are not [`MAGIC`] (or, for a stat cache, its own
    /// magic).
    #[error("not a manifest: bad magic bytes")]
    BadMagic,
    /// The version field holds this value instead of [`VERSION`] (or the
    /// stat cache's version).
    #[error("unsupported manifest version {0} (this build reads version {VERSION})")]
    UnsupportedVersion(u16),
    /// The reserved flags field holds this non-zero value.
    #[error("reserved flags are {0:#06x}, must be 0")]
    Flags(u16),
    /// This chunk size is not a power of two from [`MIN_CHUNK_SIZE`] to
    /// [`MAX_CHUNK_SIZE`].
    #[error("chunk size {0} is not a power of two between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}")]
    ChunkSize(u32),
    /// More than [`MAX_FILES`] files.
    #[error("{count} files exceed the limit of {MAX_FILES}")]
    TooManyFiles {
        /// Files claimed by the header or given.
        count: u64,
    },
    /// More than [`MAX_CHUNKS`] chunks.
    #[error("{count} chunks exceed the limit of {MAX_CHUNKS}")]
    TooManyChunks {
        /// Chunks claimed by the header, given, or implied by the file sizes
        /// (counted up to the first file that crosses the limit).
        count: u64,
    },
    /// A count from the header cannot fit in the bytes that remain, even at
    /// the smallest entry size; detected before anything is allocated.
    #[error(
        "manifest truncated or corrupt: {count} {what} cannot fit in the {left} bytes that remain"
    )]
    CountTooLarge {
        /// What is counted (`"file entries"`, `"chunk entries"`, ...).
        what: &'static str,
        /// The claimed count.
        count: u64,
        /// Bytes remaining when the count was checked.
        left: usize,
    },
    /// A file entry's path bytes are not UTF-8.
    #[error("file entry {index}: path is not UTF-8")]
    PathNotUtf8 {
        /// Index of the entry in the file table.
        index: u32,
    },
    /// A file entry's path breaks a rule of [`crate::path`].
    #[error("file entry {index} ({path:?}): {err}")]
    BadPath {
        /// Index of the entry in the file table.
        index: u32,
        /// The offending path.
        path: String,
        /// The rule it breaks.
        err: PathError,
    },
    /// Two file entries have the same path.
    #[error("file {path:?} is listed twice")]
    DuplicatePath {
        /// The repeated path.
        path: String,
    },
    /// A path does not sort strictly after the previous one (by bytes).
    #[error("file {path:?} is out of order (paths must be sorted by bytes)")]
    Unsorted {
        /// The out-of-order path.
        path: String,
    },
    /// A file's path lies under another file's path, as if that file were a
    /// directory.
    #[error("file {path:?} is under {parent:?}, which is a file")]
    FileUnderFile {
        /// The nested path.
        path: String,
        /// Its prefix that is itself listed as a file.
        parent: String,
    },
    /// A file entry's mode byte is neither 0 nor 1.
    #[error("file {path:?}: mode byte {mode} (0 = regular, 1 = executable)")]
    BadMode {
        /// Path of the entry.
        path: String,
        /// The mode byte found.
        mode: u8,
    },
    /// A chunk entry's file, offset or length differs from what the file
    /// sizes and the chunk size imply.
    #[error("chunk {index}: {reason}")]
    BadChunk {
        /// Index in the chunk table.
        index: u64,
        /// The values found and the values expected.
        reason: String,
    },
    /// The chunk table's length differs from the sum over files of
    /// `ceil(size / chunk_size)`.
    #[error("chunk table has {got} chunks, file sizes need {want}")]
    ChunkCount {
        /// Entries in the chunk table.
        got: u64,
        /// Chunks the file sizes require.
        want: u64,
    },
    /// A file's hash is not [`crate::hash::file_hash`] of its size and its
    /// chunks' hashes.
    #[error("file {path:?}: file hash does not match its chunk hashes")]
    FileHash {
        /// Path of the file.
        path: String,
    },
    /// The sum of the file sizes does not fit in a `u64`.
    #[error("sum of file sizes overflows")]
    SizeOverflow,
    /// This many bytes follow the end of the encoding.
    #[error("{0} trailing bytes after the chunk table")]
    Trailing(usize),
    /// The decoded manifest's root is not the trusted one.
    #[error("manifest root is {got}, expected {want}")]
    RootMismatch {
        /// Root of the decoded manifest.
        got: Hash,
        /// The trusted root.
        want: Hash,
    },
}

/// A decoded, validated manifest with its Merkle trees.
///
/// Only [`Manifest::new`] creates one ([`Manifest::decode`] ends with it), so
/// every value obeys all the rules of docs/manifest.md. Two manifests are equal when
/// their root headers are, that is, when they have the same root.
#[derive(Clone, Debug)]
pub struct Manifest {
    chunk_size: u32,
    files: Vec<FileEntry>,
    chunks: Vec<ChunkEntry>,
    /// `first_chunk[i]` = index of file i's first chunk; one extra at the end.
    first_chunk: Vec<u64>,
    file_tree: MerkleTree,
    chunk_tree: MerkleTree,
    header: RootHeader,
}

impl PartialEq for Manifest {
    fn eq(&self, other: &Self) -> bool {
        self.header == other.header
    }
}
impl Eq for Manifest {}

/// Number of chunks a file of `size` bytes has: `ceil(size / chunk_size)`, 0
/// for an empty file. `chunk_size` must not be 0.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size))
}

/// Checks that `cs` is a valid chunk size: a power of two from
/// [`MIN_CHUNK_SIZE`] to [`MAX_CHUNK_SIZE`] inclusive; otherwise
/// [`ManifestError::ChunkSize`].
pub fn check_chunk_size(cs: u32) -> Result<(), ManifestError> {
    if cs.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) {
        Ok(())
    } else {
        Err(ManifestError::ChunkSize(cs))
    }
}

impl Manifest {
    /// Builds a manifest from its tables, checking every invariant that
    /// decoding checks (chunk size, limits, paths and their order, chunk
    /// layout against the file sizes, file hashes), then computes both
    /// Merkle trees. `files` must already be sorted by path bytes.
    pub fn new(
        chunk_size: u32,
        files: Vec<FileEntry>,
        chunks: Vec<ChunkEntry>,
    ) -> Result<Manifest, ManifestError> {
        check_chunk_size(chunk_size)?;
        if files.len() as u64 > u64::from(MAX_FILES) {
            return Err(ManifestError::TooManyFiles {
                count: files.len() as u64,
            });
        }
        if chunks.len() as u64 > MAX_CHUNKS {
            return Err(ManifestError::TooManyChunks {
                count: chunks.len() as u64,
            });
        }
        check_paths(&files)?;
        let mut first_chunk = Vec::with_capacity(files.len() + 1);
        let mut next = 0u64;
        let mut total = 0u64;
        for f in &files {
            first_chunk.push(next);
            total = total
                .checked_add(f.size)
                .ok_or(ManifestError::SizeOverflow)?;
            next += chunk_count(f.size, chunk_size);
            if next > MAX_CHUNKS {
                return Err(ManifestError::TooManyChunks { count: next });
            }
        }
        first_chunk.push(next);
        if next != chunks.len() as u64 {
            return Err(ManifestError::ChunkCount {
                got: chunks.len() as u64,
                want: next,
            });
        }
        for (i, f) in files.iter().enumerate() {
            let lo = first_chunk[i] as usize;
            let hi = first_chunk[i + 1] as usize;
            for (k, c) in chunks[lo..hi].iter().enumerate() {
                let offset = k as u64 * u64::from(chunk_size);
                let len = (f.size - offset).min(u64::from(chunk_size)) as u32;
                if c.file as usize != i || c.offset != offset || c.len != len {
                    return Err(ManifestError::BadChunk {
                        index: (lo + k) as u64,
                        reason: format!(
                            "is (file {}, offset {}, len {}), file sizes say (file {i}, offset {offset}, len {len})",
                            c.file, c.offset, c.len
                        ),
                    });
                }
            }
            if file_hash(f.size, chunks[lo..hi].iter().map(|c| &c.hash)) != f.hash {
                return Err(ManifestError::FileHash {
                    path: f.path.clone(),
                });
            }
        }
        Ok(Self::assemble(chunk_size, files, chunks, first_chunk))
    }

    fn assemble(
        chunk_size: u32,
        files: Vec<FileEntry>,
        chunks: Vec<ChunkEntry>,
        first_chunk: Vec<u64>,
    ) -> Manifest {
        use rayon::prelude::*;
        let (file_leaves, chunk_leaves) = rayon::join(
            || files.par_iter().map(file_leaf).collect::<Vec<_>>(),
            || chunks.par_iter().map(chunk_leaf).collect::<Vec<_>>(),
        );
        let (file_tree, chunk_tree) = rayon::join(
            || MerkleTree::new(file_leaves),
            || MerkleTree::new(chunk_leaves),
        );
        let header = RootHeader {
            version: VERSION,
            chunk_size,
            file_count: files.len() as u32,
            chunk_count: chunks.len() as u64,
            files_root: file_tree.root(),
            chunks_root: chunk_tree.root(),
        };
        Manifest {
            chunk_size,
            files,
            chunks,
            first_chunk,
            file_tree,
            chunk_tree,
            header,
        }
    }

    /// Chunk size in bytes.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }
    /// The file table, sorted by path bytes.
    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }
    /// The chunk table: the chunks of each file in file-table order, each
    /// file's in offset order.
    pub fn chunks(&self) -> &[ChunkEntry] {
        &self.chunks
    }
    /// The root header: the prefix fields and both table roots.
    pub fn header(&self) -> &RootHeader {
        &self.header
    }
    /// The root hash: what the chain commits to.
    pub fn root(&self) -> Hash {
        self.header.root()
    }
    /// Sum of the file sizes in bytes (cannot overflow: checked by
    /// [`Manifest::new`]).
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
    /// Index in the chunk table of the first chunk of file `file`.
    /// `file == files().len()` gives the chunk count; larger values panic.
    pub fn first_chunk(&self, file: usize) -> u64 {
        self.first_chunk[file]
    }
    /// The chunks of file `file`, in offset order (empty for an empty file).
    /// Panics if `file` is not an index of the file table.
    pub fn file_chunks(&self, file: usize) -> &[ChunkEntry] {
        &self.chunks[self.first_chunk[file] as usize..self.first_chunk[file + 1] as usize]
    }
    /// Index in the file table of the file at `path` (binary search), or
    /// `None` if it is not listed.
    pub fn find(&self, path: &str) -> Option<usize> {
        self.files
            .binary_search_by(|f| f.path.as_bytes().cmp(path.as_bytes()))
            .ok()
    }

    /// Canonical encoding (docs/manifest.md): prefix, file table, chunk
    /// table. [`Manifest::decode`] gives back an equal manifest.
    pub fn encode(&self) -> Vec<u8> {
        let paths: usize = self.files.iter().map(|f| f.path.len()).sum();
        let mut out = Vec::with_capacity(
            PREFIX_LEN
                + paths
                + self.files.len() * MIN_FILE_ENTRY_LEN
                + self.chunks.len() * CHUNK_ENTRY_LEN,
        );
        out.extend_from_slice(&self.header.encode()[..PREFIX_LEN]);
        for f in &self.files {
            encode_file_entry(f, &mut out);
        }
        for c in &self.chunks {
            encode_chunk_entry(c, &mut out);
        }
        out
    }

    /// Strict decoding: checks every length before allocating and every
    /// invariant of [`Manifest::new`]; trailing bytes are rejected, so only
    /// canonical encodings are accepted. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let mut r = Reader { buf: bytes, at: 0 };
        let prefix = decode_prefix(&mut r)?;
        let left = r.left();
        if u64::from(prefix.file_count) * MIN_FILE_ENTRY_LEN as u64 > left as u64 {
            return Err(ManifestError::CountTooLarge {
                what: "file entries",
                count: u64::from(prefix.file_count),
                left,
            });
        }
        let mut files = Vec::with_capacity(prefix.file_count as usize);
        for i in 0..prefix.file_count {
            files.push(decode_file_entry(&mut r, i)?);
        }
        let left = r.left();
        if prefix.chunk_count.saturating_mul(CHUNK_ENTRY_LEN as u64) > left as u64 {
            return Err(ManifestError::CountTooLarge {
                what: "chunk entries",
                count: prefix.chunk_count,
                left,
            });
        }
        let mut chunks = Vec::with_capacity(prefix.chunk_count as usize);
        for _ in 0..prefix.chunk_count {
            chunks.push(decode_chunk_entry(&mut r)?);
        }
        if r.left() != 0 {
            return Err(ManifestError::Trailing(r.left()));
        }
        Manifest::new(prefix.chunk_size, files, chunks)
    }

    /// Decodes and checks the result against a trusted root
    /// ([`ManifestError::RootMismatch`] if it differs).
    pub fn decode_verified(bytes: &[u8], root: &Hash) -> Result<Manifest, ManifestError> {
        let m = Manifest::decode(bytes)?;
        let got = m.root();
        if got != *root {
            return Err(ManifestError::RootMismatch { got, want: *root });
        }
        Ok(m)
    }

    /// Proof that chunk entry `index` belongs to this manifest: its sibling
    /// hashes in the chunk tree, for [`RootHeader::verify_chunk_entry`].
    /// `None` if there is no such chunk.
    pub fn chunk_proof(&self, index: u64) -> Option<Vec<Hash>> {
        self.chunk_tree.proof(0, index)
    }

    /// Piece `j` of the file table (up to 1024 entries, see
    /// [`FILE_PIECE_LEVEL`]): its entries and the proof of their node, for
    /// [`RootHeader::verify_file_piece`]. `None` if there is no such piece.
    pub fn file_piece(&self, j: u64) -> Option<(&[FileEntry], Vec<Hash>)> {
        let (lo, hi) = piece_range(self.files.len() as u64, FILE_PIECE_LEVEL, j)?;
        let proof = self
            .file_tree
            .proof(piece_level(self.files.len() as u64, FILE_PIECE_LEVEL), j)?;
        Some((&self.files[lo..hi], proof))
    }

    /// Piece `j` of the chunk table (up to 4096 entries, see
    /// [`CHUNK_PIECE_LEVEL`]): its entries and the proof of their node, for
    /// [`RootHeader::verify_chunk_piece`]. `None` if there is no such piece.
    pub fn chunk_piece(&self, j: u64) -> Option<(&[ChunkEntry], Vec<Hash>)> {
        let (lo, hi) = piece_range(self.chunks.len() as u64, CHUNK_PIECE_LEVEL, j)?;
        let proof = self
            .chunk_tree
            .proof(piece_level(self.chunks.len() as u64, CHUNK_PIECE_LEVEL), j)?;
        Some((&self.chunks[lo..hi], proof))
    }
}

/// Level at which pieces of a table of `leaves` entries are proven: the piece
/// level, or the root's level when the whole table is smaller than a piece.
pub fn piece_level(leaves: u64, level: u32) -> u32 {
    let t = if leaves <= 1 {
        0
    } else {
        64 - (leaves - 1).leading_zeros()
    };
    level.min(t)
}

/// Entry range `[lo, hi)` of piece `j` at `level` in a table of `n` entries,
/// or `None` if the piece starts past the end.
pub fn piece_range(n: u64, level: u32, j: u64) -> Option<(usize, usize)> {
    let lo = j.checked_mul(1u64 << level)?;
    if lo >= n {
        return None;
    }
    let hi = (lo + (1u64 << level)).min(n);
    Some((lo as usize, hi as usize))
}

/// Number of pieces of a table of `n` entries at `level` (0 for an empty
/// table).
pub fn piece_count(n: u64, level: u32) -> u64 {
    n.div_ceil(1u64 << level)
}

fn check_paths(files: &[FileEntry]) -> Result<(), ManifestError> {
    let mut set: HashSet<&str> = HashSet::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        path::validate(&f.path).map_err(|err| ManifestError::BadPath {
            index: i as u32,
            path: f.path.clone(),
            err,
        })?;
        if i > 0 {
            match files[i - 1].path.as_bytes().cmp(f.path.as_bytes()) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => {
                    return Err(ManifestError::DuplicatePath {
                        path: f.path.clone(),
                    });
                }
                std::cmp::Ordering::Greater => {
                    return Err(ManifestError::Unsorted {
                        path: f.path.clone(),
                    });
                }
            }
        }
        set.insert(&f.path);
    }
    for f in files {
        for (pos, _) in f.path.match_indices('/') {
            let parent = &f.path[..pos];
            if set.contains(parent) {
                return Err(ManifestError::FileUnderFile {
                    path: f.path.clone(),
                    parent: parent.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Appends the encoding of one file entry (`43 + path_len` bytes) to `out`.
/// The path length is written as a `u16` without a check: `f.path` must be
/// valid (at most [`MAX_PATH_LEN`](crate::path::MAX_PATH_LEN) bytes).
pub fn encode_file_entry(f: &FileEntry, out: &mut Vec<u8>) {
    out.extend_from_slice(&(f.path.len() as u16).to_le_bytes());
    out.extend_from_slice(f.path.as_bytes());
    out.extend_from_slice(&f.size.to_le_bytes());
    out.push(u8::from(f.executable));
    out.extend_from_slice(&f.hash.0);
}

/// Appends the 48-byte encoding of one chunk entry to `out`.
pub fn encode_chunk_entry(c: &ChunkEntry, out: &mut Vec<u8>) {
    out.extend_from_slice(&c.file.to_le_bytes());
    out.extend_from_slice(&c.len.to_le_bytes());
    out.extend_from_slice(&c.offset.to_le_bytes());
    out.extend_from_slice(&c.hash.0);
}

/// Leaf of the file-table tree: `H_file_leaf` of the encoded entry.
pub fn file_leaf(f: &FileEntry) -> Hash {
    let mut buf = Vec::with_capacity(MIN_FILE_ENTRY_LEN + f.path.len());
    encode_file_entry(f, &mut buf);
    Domain::FileLeaf.hash(&buf)
}

/// Leaf of the chunk-table tree: `H_chunk_leaf` of the 48-byte encoded
/// entry.
pub fn chunk_leaf(c: &ChunkEntry) -> Hash {
    let mut buf = Vec::with_capacity(CHUNK_ENTRY_LEN);
    encode_chunk_entry(c, &mut buf);
    Domain::ChunkLeaf.hash(&buf)
}

/// A bounds-checked cursor over untrusted bytes: every read checks what
/// remains and fails with [`ManifestError::Truncated`], naming the field,
/// instead of panicking. Integers are little-endian.
pub struct Reader<'a> {
    /// The whole input.
    pub buf: &'a [u8],
    /// Offset of the next byte to read; must not exceed `buf.len()`.
    pub at: usize,
}

impl<'a> Reader<'a> {
    /// Bytes not yet read.
    pub fn left(&self) -> usize {
        self.buf.len() - self.at
    }
    /// Takes the next `n` bytes; if fewer remain, fails with
    /// [`ManifestError::Truncated`] naming `what` and does not move.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ManifestError> {
        if self.left() < n {
            return Err(ManifestError::Truncated {
                what,
                at: self.at,
                need: n,
                have: self.left(),
            });
        }
        let s = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    /// Takes the next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ManifestError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    /// Reads one byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, ManifestError> {
        Ok(self.array::<1>(what)?[0])
    }
    /// Reads a little-endian `u16`.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, ManifestError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    /// Reads a little-endian `u32`.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, ManifestError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    /// Reads a little-endian `u64`.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, ManifestError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// Reads a 32-byte hash.
    pub fn hash(&mut self, what: &'static str) -> Result<Hash, ManifestError> {
        Ok(Hash(self.array(what)?))
    }
}

struct Prefix {
    chunk_size: u32,
    file_count: u32,
    chunk_count: u64,
}

fn decode_prefix(r: &mut Reader<'_>) -> Result<Prefix, ManifestError> {
    if r.array::<4>("magic")? != MAGIC {
        return Err(ManifestError::BadMagic);
    }
    let version = r.u16("version")?;
    if version != VERSION {
        return Err(ManifestError::UnsupportedVersion(version));
    }
    let flags = r.u16("flags")?;
    if flags != 0 {
        return Err(ManifestError::Flags(flags));
    }
    let chunk_size = r.u32("chunk size")?;
    check_chunk_size(chunk_size)?;
    let file_count = r.u32("file count")?;
    if file_count > MAX_FILES {
        return Err(ManifestError::TooManyFiles {
            count: u64::from(file_count),
        });
    }
    let chunk_count = r.u64("chunk count")?;
    if chunk_count > MAX_CHUNKS {
        return Err(ManifestError::TooManyChunks { count: chunk_count });
    }
    Ok(Prefix {
        chunk_size,
        file_count,
        chunk_count,
    })
}

/// Decodes one file entry; checks the path and mode, not the order.
/// `index` is the entry's position in the file table, used in errors.
pub fn decode_file_entry(r: &mut Reader<'_>, index: u32) -> Result<FileEntry, ManifestError> {
    let len = r.u16("path length")? as usize;
    let raw = r.take(len, "path")?;
    let path = std::str::from_utf8(raw)
        .map_err(|_| ManifestError::PathNotUtf8 { index })?
        .to_string();
    path::validate(&path).map_err(|err| ManifestError::BadPath {
        index,
        path: path.clone(),
        err,
    })?;
    let size = r.u64("file size")?;
    let mode = r.u8("mode")?;
    if mode > 1 {
        return Err(ManifestError::BadMode { path, mode });
    }
    let hash = r.hash("file hash")?;
    Ok(FileEntry {
        path,
        size,
        executable: mode == 1,
        hash,
    })
}

/// Decodes one 48-byte chunk entry. Checks nothing: the entry's consistency
/// is checked by [`Manifest::new`], [`RootHeader::verify_chunk_piece`] or
/// [`RootHeader::verify_chunk_entry`].
pub fn decode_chunk_entry(r: &mut Reader<'_>) -> Result<ChunkEntry, ManifestError> {
    let file = r.u32("chunk file index")?;
    let len = r.u32("chunk length")?;
    let offset = r.u64("chunk offset")?;
    let hash = r.hash("chunk hash")?;
    Ok(ChunkEntry {
        file,
        offset,
        len,
        hash,
    })
}

/// What the root hash is computed over: the fixed prefix of the manifest and
/// the roots of its two tables. A fetcher gets this first (88 bytes), checks
/// it against the trusted root, and can then check any piece or chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RootHeader {
    /// Format version; always [`VERSION`] in a decoded header.
    pub version: u16,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Entries in the file table.
    pub file_count: u32,
    /// Entries in the chunk table.
    pub chunk_count: u64,
    /// Merkle root over [`file_leaf`] of every file entry
    /// ([`Hash::ZERO`] if there are none).
    pub files_root: Hash,
    /// Merkle root over [`chunk_leaf`] of every chunk entry
    /// ([`Hash::ZERO`] if there are none).
    pub chunks_root: Hash,
}

/// Why a root header, a piece, a chunk entry or chunk data received on its
/// own fails verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PieceError {
    /// The root header does not decode, or does not hash to the trusted root.
    #[error("root header does not hash to the trusted root")]
    Header,
    /// The piece index is past the end of its table.
    #[error("{what} piece {index} does not exist in this manifest")]
    NoSuchPiece {
        /// Which table: `"file"` or `"chunk"`.
        what: &'static str,
        /// The piece index.
        index: u64,
    },
    /// The piece has the wrong number of entries.
    #[error("{what} piece {index} has {got} entries, expected {want}")]
    EntryCount {
        /// Which table: `"file"` or `"chunk"`.
        what: &'static str,
        /// The piece index.
        index: u64,
        /// Entries received.
        got: usize,
        /// Entries the piece has according to the header.
        want: usize,
    },
    /// A file entry of a file-table piece has an invalid path.
    #[error("file piece {index}: {err}")]
    Entry {
        /// The piece index.
        index: u64,
        /// The error; its entry index is the position in the whole table.
        err: ManifestError,
    },
    /// An entry is invalid on its own (chunk file index, length or
    /// alignment) or out of order within its piece (file paths).
    #[error("{what} piece {index}: entry {entry} is inconsistent: {reason}")]
    Inconsistent {
        /// Which table: `"file"`, `"chunk"`, or `"chunk entry"` for
        /// [`RootHeader::verify_chunk_entry`].
        what: &'static str,
        /// The piece index, or the chunk index for a single chunk entry.
        index: u64,
        /// Position of the entry within the piece (0 for a single entry).
        entry: usize,
        /// What is wrong.
        reason: String,
    },
    /// The proof does not lead from the piece or entry to the table root.
    #[error("{what} piece {index}: proof: {err}")]
    Proof {
        /// Which table: `"file"`, `"chunk"`, or `"chunk entry"`.
        what: &'static str,
        /// The piece index, or the chunk index for a single chunk entry.
        index: u64,
        /// How the proof failed.
        err: ProofError,
    },
    /// Chunk data has a different length than its entry.
    #[error("chunk {index}: data is {got} bytes, the entry says {want}")]
    DataLength {
        /// Index in the chunk table.
        index: u64,
        /// Bytes received.
        got: usize,
        /// Length in the entry.
        want: u32,
    },
    /// Chunk data does not hash to its entry's hash.
    #[error("chunk {index}: data does not match its hash")]
    DataHash {
        /// Index in the chunk table.
        index: u64,
    },
}

impl RootHeader {
    /// The 88-byte encoding: the 24-byte prefix (flags 0) followed by
    /// `files_root` and `chunks_root`. Its first [`PREFIX_LEN`] bytes are
    /// also the prefix of the manifest's encoding.
    pub fn encode(&self) -> [u8; ROOT_HEADER_LEN] {
        let mut b = [0u8; ROOT_HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        // 6..8: flags, zero
        b[8..12].copy_from_slice(&self.chunk_size.to_le_bytes());
        b[12..16].copy_from_slice(&self.file_count.to_le_bytes());
        b[16..24].copy_from_slice(&self.chunk_count.to_le_bytes());
        b[24..56].copy_from_slice(&self.files_root.0);
        b[56..88].copy_from_slice(&self.chunks_root.0);
        b
    }

    /// Decodes exactly [`ROOT_HEADER_LEN`] bytes, checking the prefix rules
    /// (magic, version, flags, chunk size, count limits).
    pub fn decode(bytes: &[u8]) -> Result<RootHeader, ManifestError> {
        let mut r = Reader { buf: bytes, at: 0 };
        let p = decode_prefix(&mut r)?;
        let files_root = r.hash("files root")?;
        let chunks_root = r.hash("chunks root")?;
        if r.left() != 0 {
            return Err(ManifestError::Trailing(r.left()));
        }
        Ok(RootHeader {
            version: VERSION,
            chunk_size: p.chunk_size,
            file_count: p.file_count,
            chunk_count: p.chunk_count,
            files_root,
            chunks_root,
        })
    }

    /// Decodes a root header and checks it against the trusted root. A
    /// decoding error is reported as [`PieceError::Header`] too.
    pub fn decode_verified(bytes: &[u8], root: &Hash) -> Result<RootHeader, PieceError> {
        let h = RootHeader::decode(bytes).map_err(|_| PieceError::Header)?;
        if h.root() != *root {
            return Err(PieceError::Header);
        }
        Ok(h)
    }

    /// The manifest root: `H_root` of the 88-byte encoding.
    pub fn root(&self) -> Hash {
        Domain::Root.hash(&self.encode())
    }

    /// Number of file-table pieces (1024 entries each, the last may be
    /// shorter).
    pub fn file_piece_count(&self) -> u64 {
        piece_count(u64::from(self.file_count), FILE_PIECE_LEVEL)
    }

    /// Number of chunk-table pieces (4096 entries each, the last may be
    /// shorter).
    pub fn chunk_piece_count(&self) -> u64 {
        piece_count(self.chunk_count, CHUNK_PIECE_LEVEL)
    }

    /// Checks file-table piece `index` on its own (before the rest of the
    /// manifest is known): entry count, paths, order within the piece, proof.
    pub fn verify_file_piece(
        &self,
        index: u64,
        entries: &[FileEntry],
        proof: &[Hash],
    ) -> Result<(), PieceError> {
        let n = u64::from(self.file_count);
        let what = "file";
        let (lo, hi) = piece_range(n, FILE_PIECE_LEVEL, index)
            .ok_or(PieceError::NoSuchPiece { what, index })?;
        if entries.len() != hi - lo {
            return Err(PieceError::EntryCount {
                what,
                index,
                got: entries.len(),
                want: hi - lo,
            });
        }
        for (k, e) in entries.iter().enumerate() {
            path::validate(&e.path).map_err(|err| PieceError::Entry {
                index,
                err: ManifestError::BadPath {
                    index: (lo + k) as u32,
                    path: e.path.clone(),
                    err,
                },
            })?;
            if k > 0 && entries[k - 1].path.as_bytes() >= e.path.as_bytes() {
                return Err(PieceError::Inconsistent {
                    what,
                    index,
                    entry: k,
                    reason: "paths not strictly sorted".into(),
                });
            }
        }
        let leaves: Vec<Hash> = entries.iter().map(file_leaf).collect();
        let level = piece_level(n, FILE_PIECE_LEVEL);
        merkle::verify_proof(
            &self.files_root,
            n,
            level,
            index,
            merkle::subtree_root(&leaves),
            proof,
        )
        .map_err(|err| PieceError::Proof { what, index, err })
    }

    /// Checks chunk-table piece `index` on its own: entry count, offsets and
    /// lengths consistent with the chunk size, proof.
    pub fn verify_chunk_piece(
        &self,
        index: u64,
        entries: &[ChunkEntry],
        proof: &[Hash],
    ) -> Result<(), PieceError> {
        let n = self.chunk_count;
        let what = "chunk";
        let (lo, hi) = piece_range(n, CHUNK_PIECE_LEVEL, index)
            .ok_or(PieceError::NoSuchPiece { what, index })?;
        if entries.len() != hi - lo {
            return Err(PieceError::EntryCount {
                what,
                index,
                got: entries.len(),
                want: hi - lo,
            });
        }
        for (k, e) in entries.iter().enumerate() {
            self.check_chunk_entry(e)
                .map_err(|reason| PieceError::Inconsistent {
                    what,
                    index,
                    entry: k,
                    reason,
                })?;
        }
        let leaves: Vec<Hash> = entries.iter().map(chunk_leaf).collect();
        let level = piece_level(n, CHUNK_PIECE_LEVEL);
        merkle::verify_proof(
            &self.chunks_root,
            n,
            level,
            index,
            merkle::subtree_root(&leaves),
            proof,
        )
        .map_err(|err| PieceError::Proof { what, index, err })
    }

    fn check_chunk_entry(&self, e: &ChunkEntry) -> Result<(), String> {
        if e.file >= self.file_count {
            return Err(format!("file index {} >= {}", e.file, self.file_count));
        }
        if e.len == 0 || e.len > self.chunk_size {
            return Err(format!("length {} not in 1..={}", e.len, self.chunk_size));
        }
        if !e.offset.is_multiple_of(u64::from(self.chunk_size)) {
            return Err(format!("offset {} not chunk-aligned", e.offset));
        }
        Ok(())
    }

    /// Checks chunk entry `index` on its own against the root with its proof
    /// (logarithmic, needs only this header): file index, length and
    /// alignment, then the proof at level 0 of the chunk tree.
    pub fn verify_chunk_entry(
        &self,
        index: u64,
        entry: &ChunkEntry,
        proof: &[Hash],
    ) -> Result<(), PieceError> {
        let what = "chunk entry";
        self.check_chunk_entry(entry)
            .map_err(|reason| PieceError::Inconsistent {
                what,
                index,
                entry: 0,
                reason,
            })?;
        merkle::verify_proof(
            &self.chunks_root,
            self.chunk_count,
            0,
            index,
            chunk_leaf(entry),
            proof,
        )
        .map_err(|err| PieceError::Proof { what, index, err })
    }
}

/// Checks chunk data against its (already verified) entry: its length, then
/// its hash. `index` is the chunk's index, used in errors.
pub fn verify_chunk_data(index: u64, entry: &ChunkEntry, data: &[u8]) -> Result<(), PieceError> {
    if data.len() != entry.len as usize {
        return Err(PieceError::DataLength {
            index,
            got: data.len(),
            want: entry.len,
        });
    }
    if crate::hash::chunk_hash(data) != entry.hash {
        return Err(PieceError::DataHash { index });
    }
    Ok(())
}
