//! Diffing local checkpoints against a target manifest into a plan: which
//! files can be hard-linked, which chunks copied from local files, which are
//! all zeros, and which must be fetched. The network fetcher executes it.

use crate::format::Manifest;
use crate::hash::Hash;
use std::collections::HashMap;
use std::path::Path;

/// A local checkpoint (directory and its manifest) that may hold data the
/// target needs. Its manifest is our own; the executor still verifies every
/// copied byte against the target's hashes.
#[derive(Clone, Copy)]
pub struct LocalSource<'a> {
    /// The directory holding the source's files, laid out as its manifest says.
    pub dir: &'a Path,
    /// Its manifest; its chunk size may differ from the target's.
    pub manifest: &'a Manifest,
    /// For a partial source (an unfinished sync of another root): only these
    /// chunk indices of its manifest are present, and no file is complete
    /// enough to link. `None`: the source is complete.
    pub only_chunks: Option<&'a std::collections::HashSet<u64>>,
}

impl<'a> LocalSource<'a> {
    /// A complete local checkpoint.
    pub fn complete(dir: &'a Path, manifest: &'a Manifest) -> LocalSource<'a> {
        LocalSource {
            dir,
            manifest,
            only_chunks: None,
        }
    }
}

/// What to do for one chunk of the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ChunkAction {
    /// The whole file is hard-linked from a local source.
    Linked,
    /// All zeros: write nothing (a sparse region or a zeroed range).
    Zero,
    /// Same bytes exist locally: copy from `source`'s file `file` at `offset`.
    Copy {
        /// Index of the source in the `sources` passed to [`plan`].
        source: u32,
        /// Index of the file in that source's manifest.
        file: u32,
        /// Byte offset of the chunk in that file.
        offset: u64,
    },
    /// Must come from the network.
    Fetch,
}

/// Byte and count totals of a plan. Linked, zero, copy and fetch bytes add up
/// to `bytes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PlanTotals {
    /// Files in the target.
    pub files: u64,
    /// Total size of the target's files, in bytes.
    pub bytes: u64,
    /// Files hard-linked whole from a source.
    pub files_linked: u64,
    /// Bytes in linked files.
    pub bytes_linked: u64,
    /// Chunks that are all zeros ([`ChunkAction::Zero`]).
    pub chunks_zero: u64,
    /// Bytes in zero chunks.
    pub bytes_zero: u64,
    /// Chunks copied from a local source ([`ChunkAction::Copy`]).
    pub chunks_copy: u64,
    /// Bytes in copied chunks.
    pub bytes_copy: u64,
    /// Chunks to fetch from the network ([`ChunkAction::Fetch`]).
    pub chunks_fetch: u64,
    /// Bytes in chunks to fetch.
    pub bytes_fetch: u64,
}

/// A file-level hard-link candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Link {
    /// Index of the target file.
    pub file: u32,
    /// Index of the source in the `sources` passed to [`plan`].
    pub source: u32,
    /// Index of the identical file in the source's manifest.
    pub source_file: u32,
}

/// How to materialise a target manifest from local sources and the network;
/// made by [`plan`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    /// One action per chunk of the target, by chunk index.
    pub chunks: Vec<ChunkAction>,
    /// One entry per linked target file, in file order; their chunks are
    /// [`ChunkAction::Linked`].
    pub links: Vec<Link>,
    /// Counts and bytes per kind of action.
    pub totals: PlanTotals,
}

impl Plan {
    /// Indices of the chunks that must be fetched.
    pub fn to_fetch(&self) -> impl Iterator<Item = u64> + '_ {
        self.chunks
            .iter()
            .enumerate()
            .filter(|(_, a)| **a == ChunkAction::Fetch)
            .map(|(i, _)| i as u64)
    }
}

/// Plans how to materialise `target` from `sources`.
///
/// A non-empty file is linked when a complete source has a file with the same
/// content hash and the same executable bit (a hard link shares the mode).
/// Otherwise each chunk is zero (recognised by hash), copied from any present
/// local chunk with the same hash (preferring the same path and offset), or
/// fetched. Empty files get no action. Among equal candidates the first
/// source, then the first file or chunk, wins.
pub fn plan(target: &Manifest, sources: &[LocalSource<'_>]) -> Plan {
    let mut by_file: HashMap<(Hash, bool), (u32, u32)> = HashMap::new();
    let mut by_chunk: HashMap<Hash, (u32, u32, u64)> = HashMap::new();
    for (si, s) in sources.iter().enumerate() {
        for (fi, f) in s.manifest.files().iter().enumerate() {
            if f.size > 0 && s.only_chunks.is_none() {
                by_file
                    .entry((f.hash, f.executable))
                    .or_insert((si as u32, fi as u32));
            }
        }
        for (ci, c) in s.manifest.chunks().iter().enumerate() {
            if s.only_chunks.is_some_and(|set| !set.contains(&(ci as u64))) {
                continue;
            }
            by_chunk
                .entry(c.hash)
                .or_insert((si as u32, c.file, c.offset));
        }
    }
    let mut chunks = Vec::with_capacity(target.chunks().len());
    let mut links = Vec::new();
    let mut t = PlanTotals {
        files: target.files().len() as u64,
        bytes: target.total_size(),
        ..Default::default()
    };
    for (fi, f) in target.files().iter().enumerate() {
        let fchunks = target.file_chunks(fi);
        if f.size > 0
            && let Some(&(source, source_file)) = by_file.get(&(f.hash, f.executable))
        {
            links.push(Link {
                file: fi as u32,
                source,
                source_file,
            });
            t.files_linked += 1;
            t.bytes_linked += f.size;
            chunks.extend(fchunks.iter().map(|_| ChunkAction::Linked));
            continue;
        }
        for c in fchunks {
            let len = u64::from(c.len);
            let action = if c.is_zero() {
                t.chunks_zero += 1;
                t.bytes_zero += len;
                ChunkAction::Zero
            } else if let Some(a) = same_place(sources, &f.path, c.offset, &c.hash)
                .or_else(|| by_chunk.get(&c.hash).map(|&(s, fl, o)| (s, fl, o)))
            {
                t.chunks_copy += 1;
                t.bytes_copy += len;
                ChunkAction::Copy {
                    source: a.0,
                    file: a.1,
                    offset: a.2,
                }
            } else {
                t.chunks_fetch += 1;
                t.bytes_fetch += len;
                ChunkAction::Fetch
            };
            chunks.push(action);
        }
    }
    Plan {
        chunks,
        links,
        totals: t,
    }
}

/// The same chunk at the same path and offset in some source, if any: the
/// best copy source (sequential reads, likely cached).
fn same_place(
    sources: &[LocalSource<'_>],
    path: &str,
    offset: u64,
    hash: &Hash,
) -> Option<(u32, u32, u64)> {
    sources.iter().enumerate().find_map(|(si, s)| {
        let fi = s.manifest.find(path)?;
        let cs = u64::from(s.manifest.chunk_size());
        let k = (offset / cs) as usize;
        let c = s.manifest.file_chunks(fi).get(k)?;
        let index = s.manifest.first_chunk(fi) + k as u64;
        let present = s.only_chunks.is_none_or(|set| set.contains(&index));
        (present && c.offset == offset && c.hash == *hash).then_some((si as u32, fi as u32, offset))
    })
}
