//! A slow, obviously-correct reference implementation: the oracle that the
//! parallel and incremental builders are tested against. Sequential, whole
//! files in memory, no reuse.

use crate::format::{ChunkEntry, FileEntry, Manifest, ManifestError};
use crate::hash::{chunk_hash, file_hash};

/// One file of an in-memory tree: path, content, executable bit.
pub type TreeFile = (String, Vec<u8>, bool);

/// The manifest of an in-memory tree. `files` need not be sorted; duplicate
/// or invalid paths are [`Manifest::new`]'s errors.
pub fn manifest_of_tree(chunk_size: u32, files: &[TreeFile]) -> Result<Manifest, ManifestError> {
    let mut sorted: Vec<&TreeFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut entries = Vec::new();
    let mut chunks = Vec::new();
    for (i, (path, data, exec)) in sorted.into_iter().enumerate() {
        let mut hashes = Vec::new();
        for (k, piece) in data.chunks(chunk_size as usize).enumerate() {
            let h = chunk_hash(piece);
            hashes.push(h);
            chunks.push(ChunkEntry {
                file: i as u32,
                offset: k as u64 * u64::from(chunk_size),
                len: piece.len() as u32,
                hash: h,
            });
        }
        entries.push(FileEntry {
            path: path.clone(),
            size: data.len() as u64,
            executable: *exec,
            hash: file_hash(data.len() as u64, &hashes),
        });
    }
    Manifest::new(chunk_size, entries, chunks)
}

/// Reads a directory into an in-memory tree, recursively. Only regular files
/// are read; symlinks and special files are skipped silently (unlike
/// [`crate::build::scan`], which refuses them).
pub fn read_tree(dir: &std::path::Path) -> std::io::Result<Vec<TreeFile>> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(
        root: &std::path::Path,
        d: &std::path::Path,
        out: &mut Vec<TreeFile>,
    ) -> std::io::Result<()> {
        for e in std::fs::read_dir(d)? {
            let e = e?;
            let md = std::fs::symlink_metadata(e.path())?;
            if md.is_dir() {
                walk(root, &e.path(), out)?;
            } else if md.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .map_err(std::io::Error::other)?
                    .to_path_buf();
                let rel = rel
                    .to_str()
                    .ok_or_else(|| std::io::Error::other("non-UTF-8 path"))?
                    .to_string();
                out.push((
                    rel,
                    std::fs::read(e.path())?,
                    md.permissions().mode() & 0o100 != 0,
                ));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}
