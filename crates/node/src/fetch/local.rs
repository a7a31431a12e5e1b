//! Local reuse: executing the plan of what a sync can take from local
//! checkpoints (hard links, zero chunks, chunks kept in place, chunk copies
//! or clones) before and while peers are asked for the rest.

use super::Result;
use super::staging::Staging;
use super::target::{READ_BUF, Target, with_aligned};
use statesync_manifest::diff::{ChunkAction, LocalSource, Plan};
use statesync_manifest::format::Manifest;
use statesync_manifest::hash::chunk_hash;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What executing the local plan did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LocalReport {
    /// Files hard-linked (or copied whole) from identical local files.
    pub files_linked: u64,
    /// Their bytes.
    pub bytes_linked: u64,
    /// Chunks copied from local sources (verified first).
    pub chunks_copied: u64,
    /// Their bytes.
    pub bytes_copied: u64,
    /// Of the copied bytes, those shared with their source (reflink) rather
    /// than written.
    pub bytes_cloned: u64,
    /// All-zero chunks (left sparse, or zeroed).
    pub chunks_zero: u64,
    /// Their bytes.
    pub bytes_zero: u64,
    /// Chunks done by an earlier run of this sync.
    pub chunks_resumed: u64,
    /// Their bytes.
    pub bytes_resumed: u64,
    /// Copy sources whose bytes did not match (they are fetched instead).
    pub copy_mismatches: u64,
    /// Chunks already right in a consumed stale checkpoint (in-place mode).
    pub chunks_kept: u64,
    /// Their bytes.
    pub bytes_kept: u64,
    /// Bytes reused locally that failed the final check and were fetched
    /// after all (a seed changed after the plan used it).
    pub bytes_refetched: u64,
}

impl LocalReport {
    /// Bytes that did not have to be fetched.
    pub fn reused(&self) -> u64 {
        (self.bytes_linked
            + self.bytes_copied
            + self.bytes_zero
            + self.bytes_resumed
            + self.bytes_kept)
            .saturating_sub(self.bytes_refetched)
    }

    /// Adds what [`LocalCopies::run`] did.
    pub fn add_copies(&mut self, c: &LocalReport) {
        self.chunks_copied += c.chunks_copied;
        self.bytes_copied += c.bytes_copied;
        self.bytes_cloned += c.bytes_cloned;
        self.copy_mismatches += c.copy_mismatches;
    }
}

/// The local chunk copies a plan calls for, prepared by [`prepare_local`]
/// (their files exist at their final size) and run by [`LocalCopies::run`],
/// which may overlap with fetching the other chunks from peers: each
/// writes its own ranges of the files.
pub struct LocalCopies {
    files: Vec<FileCopies>,
}

struct FileCopies {
    /// Opened again to copy: holding every file open until then could run
    /// out of file descriptors.
    dst: PathBuf,
    /// (chunk index, its entry, source path, offset in the source).
    copies: Vec<(u64, statesync_manifest::ChunkEntry, PathBuf, u64)>,
}

impl LocalCopies {
    /// Chunks to copy.
    pub fn chunks(&self) -> u64 {
        self.files.iter().map(|f| f.copies.len() as u64).sum()
    }

    /// Bytes to copy.
    pub fn bytes(&self) -> u64 {
        self.files
            .iter()
            .flat_map(|f| f.copies.iter())
            .map(|(_, c, _, _)| u64::from(c.len))
            .sum()
    }

    /// Copies (or clones) every chunk after verifying it, makes them durable
    /// and records them as done. Returns the chunks whose source did not
    /// match (to fetch from peers) and what was copied.
    ///
    /// The copies run on a thread pool of their own: on rayon's global pool
    /// they would hold up the writer's verification of fetched chunks (a
    /// pool finishes its own work before it takes outside jobs), and the
    /// delay would count against the peers' request timeouts. `cancel`
    /// (a replaced or stopped sync) ends the run between chunks; a chunk
    /// not copied is neither recorded nor reported.
    pub fn run(
        self,
        staging: &Staging,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<(Vec<u64>, LocalReport)> {
        if self.files.is_empty() {
            return Ok((Vec::new(), LocalReport::default()));
        }
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("local-copy-{i}"))
            .build()
            .map_err(|e| format!("start the local copy threads: {e}"))?;
        let mut rep = LocalReport::default();
        let mut mismatched = Vec::new();
        // Cleared once the staging filesystem refuses to clone.
        let can_clone = std::sync::atomic::AtomicBool::new(true);
        for fc in self.files {
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let (done, bad) = pool.install(|| fc.run(staging, &can_clone, cancel, &mut rep))?;
            mismatched.extend(bad);
            // Recorded file by file: after a crash only the file being
            // copied is copied again.
            staging.commit_written(&done)?;
        }
        Ok((mismatched, rep))
    }
}

impl FileCopies {
    fn run(
        &self,
        staging: &Staging,
        can_clone: &std::sync::atomic::AtomicBool,
        cancel: &std::sync::atomic::AtomicBool,
        rep: &mut LocalReport,
    ) -> Result<(Vec<u64>, Vec<u64>)> {
        let file = Target::open(&self.dst, staging.io)
            .map_err(|e| format!("open {}: {e}", self.dst.display()))?;
        let file = &file;
        // Copies run in parallel (reads from the page cache, hashing and
        // direct writes overlap); each is verified before it is written.
        // Where the filesystem shares extents (XFS, btrfs) a chunk is cloned
        // instead, then verified by reading it back from the device: no
        // bytes written, no space used twice.
        // Per chunk: None if cancelled, else (verified, cloned).
        let outcomes: Vec<std::io::Result<Option<(bool, bool)>>> = {
            use rayon::prelude::*;
            self.copies
                .par_iter()
                .map(|(_, c, src, offset)| {
                    if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                        return Ok(None);
                    }
                    let Ok(h) = File::open(src) else {
                        return Ok(Some((false, false)));
                    };
                    if file.clone_range(&h, *offset, u64::from(c.len), c.offset, can_clone) {
                        // A range that cannot be read back is fetched (and
                        // written) like one that does not match.
                        let ok = file
                            .read_back_hash(c.offset, c.len as usize)
                            .is_ok_and(|h| h == c.hash);
                        return Ok(Some((ok, true)));
                    }
                    with_aligned(&READ_BUF, c.len as usize, |buf| {
                        let ok = h.read_exact_at(buf, *offset).is_ok() && chunk_hash(buf) == c.hash;
                        if ok {
                            file.write_at(buf, c.offset)?;
                        }
                        Ok(Some((ok, false)))
                    })
                })
                .collect()
        };
        let mut wrote = false;
        let (mut copied, mut bad) = (Vec::new(), Vec::new());
        for ((idx, c, _, _), r) in self.copies.iter().zip(outcomes) {
            let Some((ok, cloned)) = r.map_err(|e| format!("write {}: {e}", self.dst.display()))?
            else {
                continue;
            };
            if cloned {
                // A clone whose bytes did not verify left foreign bytes in
                // the range; the fetched chunk overwrites them.
                wrote = true;
            }
            if ok {
                wrote = true;
                rep.chunks_copied += 1;
                rep.bytes_copied += u64::from(c.len);
                if cloned {
                    rep.bytes_cloned += u64::from(c.len);
                }
                copied.push(*idx);
            } else {
                rep.copy_mismatches += 1;
                bad.push(*idx);
            }
        }
        if wrote {
            file.sync_data()
                .map_err(|e| format!("fsync {}: {e}", self.dst.display()))?;
        }
        Ok((copied, bad))
    }
}

/// The fast part of executing a local plan: creates the target files
/// (sparse, at their final size), hard-links identical files, writes zero
/// chunks, keeps what a consumed checkpoint has right, records all that as
/// done, and returns the chunks to fetch from peers and the local copies
/// still to run ([`LocalCopies::run`]).
pub fn prepare_local(
    staging: &Staging,
    m: &Manifest,
    plan: &Plan,
    sources: &[LocalSource<'_>],
    in_place: Option<&Manifest>,
) -> Result<(Vec<u64>, LocalReport, LocalCopies)> {
    let state = staging.state_dir();
    let done = staging.done()?;
    let mut rep = LocalReport::default();
    let mut trusted = Vec::new();
    let mut touched_dirs: std::collections::BTreeSet<PathBuf> = std::collections::BTreeSet::new();
    if in_place.is_some() {
        // Files of the consumed checkpoint that the target does not have.
        for f in statesync_manifest::build::scan(&state)? {
            if m.find(&f.path).is_none() {
                std::fs::remove_file(&f.abs)?;
                if let Some(parent) = f.abs.parent() {
                    touched_dirs.insert(parent.to_path_buf());
                }
            }
        }
    }
    let linked: HashMap<u32, (u32, u32)> = plan
        .links
        .iter()
        .map(|l| (l.file, (l.source, l.source_file)))
        .collect();
    let mut newly_done = Vec::new();
    let mut to_copy = Vec::new();
    let mut need = Vec::new();
    // Directories whose entries this run changed (`touched_dirs`) are the
    // only ones fsynced: an in-place or resumed sync touches few.
    for (fi, f) in m.files().iter().enumerate() {
        let dst = statesync_manifest::path::join(&state, &f.path);
        if let Some(parent) = dst.parent() {
            if !parent.exists() {
                let mut d = parent.to_path_buf();
                while d.starts_with(&state) && !d.exists() {
                    touched_dirs.insert(d.clone());
                    if !d.pop() {
                        break;
                    }
                }
                touched_dirs.insert(d);
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("create {}: {e}", parent.display()))?;
            }
            if std::fs::symlink_metadata(&dst).is_err() || linked.contains_key(&(fi as u32)) {
                touched_dirs.insert(parent.to_path_buf());
            }
        }
        let first = m.first_chunk(fi);
        let count = m.file_chunks(fi).len() as u64;
        if let Some(&(si, sf)) = linked.get(&(fi as u32)) {
            let s = &sources[si as usize];
            let src = statesync_manifest::path::join(s.dir, &s.manifest.files()[sf as usize].path);
            let _ = std::fs::remove_file(&dst);
            // Link only immutable (read-only) files, such as a store's
            // checkpoints: a writable source could later change under the
            // synced copy. Otherwise copy (copy_file_range / reflink).
            use std::os::unix::fs::PermissionsExt;
            let read_only =
                std::fs::metadata(&src).is_ok_and(|md| md.permissions().mode() & 0o222 == 0);
            if !read_only || std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst).map_err(|e| format!("copy {}: {e}", src.display()))?;
                let mode = if f.executable { 0o755 } else { 0o644 };
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))?;
            }
            rep.files_linked += 1;
            rep.bytes_linked += f.size;
            // Verified with the whole checkpoint before promotion.
            newly_done.extend(first..first + count);
            continue;
        }
        // The consumed checkpoint's chunks of this path, as they were.
        let old_chunks = in_place.and_then(|om| om.find(&f.path).map(|oi| om.file_chunks(oi)));
        let old_len = std::fs::symlink_metadata(&dst)
            .map(|md| md.len())
            .unwrap_or(0);
        let keeps = |k: usize, c: &statesync_manifest::ChunkEntry| {
            old_chunks.and_then(|o| o.get(k)).is_some_and(|oc| {
                oc.hash == c.hash && oc.len == c.len && old_len >= c.offset + u64::from(c.len)
            })
        };
        let exec_ok = std::fs::symlink_metadata(&dst).is_ok_and(|md| {
            use std::os::unix::fs::PermissionsExt;
            (md.permissions().mode() & 0o100 != 0) == f.executable
        });
        let all_kept = old_len == f.size
            && exec_ok
            && m.file_chunks(fi)
                .iter()
                .enumerate()
                .all(|(k, c)| keeps(k, c) || done.contains(&(first + k as u64)));
        if all_kept {
            for (k, c) in m.file_chunks(fi).iter().enumerate() {
                let idx = first + k as u64;
                if done.contains(&idx) {
                    rep.chunks_resumed += 1;
                    rep.bytes_resumed += u64::from(c.len);
                } else {
                    rep.chunks_kept += 1;
                    rep.bytes_kept += u64::from(c.len);
                    trusted.push(idx);
                }
            }
            continue;
        }
        // Never write through a hard link: in place, a file shared with
        // another checkpoint; otherwise, a file linked from a seed by an
        // earlier run whose chunks were since found bad (see `promote`).
        make_private_writable(&dst)?;
        let file =
            Target::open(&dst, staging.io).map_err(|e| format!("create {}: {e}", dst.display()))?;
        let len = file.file.metadata()?.len();
        if len != f.size {
            file.file
                .set_len(f.size)
                .map_err(|e| format!("size {}: {e}", dst.display()))?;
        }
        let mut wrote = false;
        // Local copies of this file: (index, entry, source path, offset).
        let mut copies = Vec::new();
        for (k, c) in m.file_chunks(fi).iter().enumerate() {
            let idx = first + k as u64;
            if done.contains(&idx) {
                rep.chunks_resumed += 1;
                rep.bytes_resumed += u64::from(c.len);
                continue;
            }
            if keeps(k, c) {
                rep.chunks_kept += 1;
                rep.bytes_kept += u64::from(c.len);
                trusted.push(idx);
                continue;
            }
            match plan.chunks[idx as usize] {
                ChunkAction::Zero => {
                    // Region of a fresh sparse file: already zeros. A file
                    // reused from an earlier run may hold other bytes there.
                    if len != 0 {
                        file.write_at(&vec![0u8; c.len as usize], c.offset)?;
                        wrote = true;
                    }
                    rep.chunks_zero += 1;
                    rep.bytes_zero += u64::from(c.len);
                    newly_done.push(idx);
                }
                ChunkAction::Copy {
                    source,
                    file: sf,
                    offset,
                } => {
                    let s = &sources[source as usize];
                    let src = statesync_manifest::path::join(
                        s.dir,
                        &s.manifest.files()[sf as usize].path,
                    );
                    copies.push((idx, *c, src, offset));
                }
                ChunkAction::Fetch | ChunkAction::Linked => need.push(idx),
            }
        }
        // Zeros written over a reused file's bytes: durable before they are
        // recorded as done below.
        if wrote {
            file.sync_data()?;
        }
        if !copies.is_empty() {
            to_copy.push(FileCopies { dst, copies });
        }
    }
    if in_place.is_some() {
        touched_dirs.insert(state.clone());
    }
    for d in &touched_dirs {
        File::open(d)
            .and_then(|h| h.sync_all())
            .map_err(|e| format!("fsync {}: {e}", d.display()))?;
    }
    staging.commit_with(&newly_done, &trusted)?;
    Ok((need, rep, LocalCopies { files: to_copy }))
}

/// Makes a file of a consumed checkpoint safe to modify: a hard link shared
/// with another checkpoint is replaced by a private copy first (writing
/// through it would change that checkpoint too), and it is made writable.
fn make_private_writable(p: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return Ok(());
    };
    if !md.is_file() {
        return Ok(());
    }
    if md.nlink() > 1 {
        let tmp = p.with_extension("statesync-private");
        std::fs::copy(p, &tmp)?;
        std::fs::rename(&tmp, p)?;
    }
    let mode = md.permissions().mode() & 0o7777;
    if mode & 0o200 == 0 {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o200))?;
    }
    Ok(())
}
