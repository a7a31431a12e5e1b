//! Checking a directory against a manifest, reporting exactly what differs:
//! missing and extra files, size and mode mismatches, and corrupt chunks.

use crate::build::{BuildError, Progress, ScannedFile, hash_chunks, scan_all};
use crate::format::Manifest;
use rayon::prelude::*;
use std::path::Path;
use std::sync::atomic::Ordering;

/// What a verification found. Path lists hold manifest paths, in path order.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// True if every other list is empty: the directory holds exactly the
    /// manifest's files and modes, and every chunk that was hashed matches.
    pub ok: bool,
    /// Files present with the expected size, whose chunks were eligible for
    /// hashing.
    pub files_checked: u64,
    /// Total size of those files, in bytes (with [`verify_dir_filtered`],
    /// more than was actually hashed).
    pub bytes_checked: u64,
    /// In the manifest, not in the directory.
    pub missing: Vec<String>,
    /// In the directory, not in the manifest.
    pub extra: Vec<String>,
    /// Present with a different size (their chunks are not hashed).
    pub size_mismatch: Vec<SizeMismatch>,
    /// Executable bit differs.
    pub mode_mismatch: Vec<String>,
    /// Chunks whose bytes do not hash to the manifest's chunk hash.
    pub corrupt: Vec<CorruptChunk>,
    /// Entries a checkpoint cannot hold (symlinks, FIFOs, devices,
    /// sockets), by relative path with their kind.
    pub unsupported: Vec<UnsupportedEntry>,
}

/// An entry of the directory that no checkpoint can hold.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UnsupportedEntry {
    /// Path relative to the directory.
    pub path: String,
    /// `symlink`, `FIFO`, `socket`, `block device`, `character device`.
    pub kind: &'static str,
}

impl VerifyReport {
    /// Differences found, by kind: (kind, count), kinds with none left out.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        [
            ("missing", self.missing.len()),
            ("extra", self.extra.len()),
            ("size", self.size_mismatch.len()),
            ("mode", self.mode_mismatch.len()),
            ("corrupt chunks", self.corrupt.len()),
            ("unsupported", self.unsupported.len()),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

/// A file whose size differs from the manifest's.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SizeMismatch {
    /// Manifest path.
    pub path: String,
    /// Size in the manifest, in bytes.
    pub expected: u64,
    /// Size on disk, in bytes.
    pub actual: u64,
}

/// A chunk whose bytes on disk do not match the manifest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CorruptChunk {
    /// Manifest path of its file.
    pub path: String,
    /// Index in the manifest's chunk table.
    pub chunk: u64,
    /// Byte offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

/// Verifies `dir` against `manifest`, hashing every chunk in parallel.
///
/// Differences are reported in the [`VerifyReport`], entries a checkpoint
/// cannot hold (symlinks, FIFOs, ...) among them; an `Err` means the
/// directory could not be checked: it is not a directory, a name is not a
/// valid manifest path, a file changed while hashed, or I/O failed.
pub fn verify_dir(
    dir: &Path,
    manifest: &Manifest,
    progress: Option<&Progress>,
) -> Result<VerifyReport, BuildError> {
    verify_dir_filtered(dir, manifest, progress, &|_| true)
}

/// Like [`verify_dir`], but hashes only the chunks (by index in the chunk
/// table) for which `check` is true; the file list, sizes and modes are
/// always checked. Used after a sync to skip chunks whose provenance is
/// already trusted (kept in place or hard-linked from an immutable local
/// checkpoint), apart from a sample.
pub fn verify_dir_filtered(
    dir: &Path,
    manifest: &Manifest,
    progress: Option<&Progress>,
    check: &(dyn Fn(u64) -> bool + Sync),
) -> Result<VerifyReport, BuildError> {
    let (scanned, odd) = scan_all(dir)?;
    let mut rep = VerifyReport {
        unsupported: odd
            .into_iter()
            .map(|u| UnsupportedEntry {
                path: u.path,
                kind: u.kind,
            })
            .collect(),
        ..VerifyReport::default()
    };
    let mut to_hash: Vec<(usize, &ScannedFile)> = Vec::new();
    let mut si = 0;
    for (fi, f) in manifest.files().iter().enumerate() {
        while si < scanned.len() && scanned[si].path.as_bytes() < f.path.as_bytes() {
            rep.extra.push(scanned[si].path.clone());
            si += 1;
        }
        match scanned.get(si) {
            Some(s) if s.path == f.path => {
                si += 1;
                if s.executable != f.executable {
                    rep.mode_mismatch.push(f.path.clone());
                }
                if s.stat.size != f.size {
                    rep.size_mismatch.push(SizeMismatch {
                        path: f.path.clone(),
                        expected: f.size,
                        actual: s.stat.size,
                    });
                } else {
                    to_hash.push((fi, s));
                }
            }
            _ => rep.missing.push(f.path.clone()),
        }
    }
    rep.extra
        .extend(scanned[si..].iter().map(|s| s.path.clone()));
    if let Some(p) = progress {
        let total = to_hash.iter().map(|(_, s)| s.stat.size).sum();
        p.total.store(total, Ordering::Relaxed);
    }
    let cs = manifest.chunk_size();
    let results: Vec<Vec<crate::verify::CorruptChunk>> = to_hash
        .par_iter()
        .map(|&(fi, s)| {
            let chunks = manifest.file_chunks(fi);
            let first = manifest.first_chunk(fi);
            let which: Vec<u64> = (0..chunks.len() as u64)
                .filter(|k| check(first + k))
                .collect();
            if which.is_empty() {
                return Ok(Vec::new());
            }
            let got = hash_chunks(s, cs, &which, progress, &|_| {})?;
            Ok(got
                .into_iter()
                .filter(|(k, h)| chunks[*k as usize].hash != *h)
                .map(|(k, _)| CorruptChunk {
                    path: s.path.clone(),
                    chunk: manifest.first_chunk(fi) + k,
                    offset: chunks[k as usize].offset,
                    len: chunks[k as usize].len,
                })
                .collect())
        })
        .collect::<Result<_, BuildError>>()?;
    rep.corrupt = results.into_iter().flatten().collect();
    rep.files_checked = to_hash.len() as u64;
    rep.bytes_checked = to_hash.iter().map(|(_, s)| s.stat.size).sum();
    rep.ok = rep.missing.is_empty()
        && rep.extra.is_empty()
        && rep.size_mismatch.is_empty()
        && rep.mode_mismatch.is_empty()
        && rep.corrupt.is_empty()
        && rep.unsupported.is_empty();
    Ok(rep)
}
