//! The fetcher's files: a staging area per root, durable progress in redb,
//! the local reuse plan, chunk writes, final verification and promotion.
//!
//! Layout under the data directory:
//!
//! ```text
//! fetch/<root hex>/state/...     the checkpoint being assembled
//! fetch/<root hex>/manifest      the verified manifest (once fetched)
//! fetch/<root hex>/progress.redb chunk indices durably written
//! ```
//!
//! Durability order: chunk bytes are verified, written (with direct I/O
//! where the filesystem allows, see [`Target`]) and `fdatasync`ed, and a
//! sample of them read back, before their indices are committed to redb, so
//! a committed index always has its bytes on disk. After SIGKILL a restart
//! refetches only chunks that were in flight or written since the last
//! commit.

use redb::{Database, ReadableTable, TableDefinition};
use statesync_manifest::diff::{ChunkAction, LocalSource, Plan};
use statesync_manifest::format::Manifest;
use statesync_manifest::hash::{Hash, chunk_hash};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DONE: TableDefinition<u64, ()> = TableDefinition::new("done");
/// Done chunks whose bytes were not written by this sync but kept in place
/// from a consumed stale checkpoint or hard-linked from an immutable one.
const TRUSTED: TableDefinition<u64, ()> = TableDefinition::new("trusted");
/// Done chunks written by this sync: verified in memory, from the very
/// buffer handed to the kernel, then made durable; a sample of them was read
/// back from disk. The final verification samples them like trusted ones.
const WRITTEN: TableDefinition<u64, ()> = TableDefinition::new("written");

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, Error>;

pub struct Staging {
    pub dir: PathBuf,
    pub root: Hash,
    db: Database,
}

pub fn staging_dir(data: &Path, root: &Hash) -> PathBuf {
    data.join("fetch").join(root.to_hex())
}

impl Staging {
    /// Opens (or creates) the staging area of `root` for this sync. A
    /// progress database that is not a readable redb file vouches for none of
    /// the staged bytes: the staging area is started over.
    pub fn open(data: &Path, root: Hash) -> Result<Staging> {
        Self::open_with(data, root, true)
    }

    /// Opens another root's staging area to reuse its durable chunks; never
    /// removes anything.
    pub fn open_for_reuse(data: &Path, root: Hash) -> Result<Staging> {
        Self::open_with(data, root, false)
    }

    fn open_with(data: &Path, root: Hash, start_over_if_unreadable: bool) -> Result<Staging> {
        let dir = staging_dir(data, &root);
        std::fs::create_dir_all(dir.join("state"))
            .map_err(|e| format!("create staging {}: {e}", dir.display()))?;
        let init = |db: &Database| -> Result<()> {
            let tx = db.begin_write()?;
            tx.open_table(DONE)?;
            tx.open_table(TRUSTED)?;
            tx.open_table(WRITTEN)?;
            tx.commit()?;
            Ok(())
        };
        let path = dir.join("progress.redb");
        let db = match statesync_store::db::open_or_create(&path, init) {
            Ok(db) => db,
            Err(e) if start_over_if_unreadable && statesync_store::db::is_unreadable(&path) => {
                // An unreadable progress database (damaged on disk, or left
                // half-created by an older version on a full disk) vouches
                // for none of the staged bytes: start this sync over rather
                // than stay stuck on it.
                eprintln!("warning: {e}; starting the sync of {root} over");
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| format!("remove staging {}: {e}", dir.display()))?;
                std::fs::create_dir_all(dir.join("state"))
                    .map_err(|e| format!("create staging {}: {e}", dir.display()))?;
                statesync_store::db::open_or_create(&path, init)?
            }
            Err(e) => return Err(e),
        };
        Ok(Staging { dir, root, db })
    }

    /// Keys the deterministic samples of chunks re-read from disk.
    pub fn sample_seed(&self) -> u64 {
        u64::from_le_bytes(self.root.0[..8].try_into().unwrap_or([0; 8]))
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The manifest saved by an earlier run, if any (verified again).
    pub fn saved_manifest(&self) -> Option<Manifest> {
        let bytes = std::fs::read(self.dir.join("manifest")).ok()?;
        Manifest::decode_verified(&bytes, &self.root).ok()
    }

    pub fn save_manifest(&self, m: &Manifest) -> Result<()> {
        let p = self.dir.join("manifest");
        let tmp = self.dir.join("manifest.tmp");
        let f = File::create(&tmp)?;
        f.write_all_at(&m.encode(), 0)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// Chunk indices durably written.
    pub fn done(&self) -> Result<HashSet<u64>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(DONE)?;
        let mut out = HashSet::new();
        for r in t.iter()? {
            let (k, _) = r?;
            out.insert(k.value());
        }
        Ok(out)
    }

    /// Commits done chunks, some of them trusted (see [`TRUSTED`]).
    pub fn commit_with(&self, indices: &[u64], trusted: &[u64]) -> Result<()> {
        if indices.is_empty() && trusted.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(DONE)?;
            for &i in indices.iter().chain(trusted) {
                t.insert(i, ())?;
            }
            let mut t = tx.open_table(TRUSTED)?;
            for &i in trusted {
                t.insert(i, ())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Commits done chunks written by this sync (see [`WRITTEN`]).
    pub fn commit_written(&self, indices: &[u64]) -> Result<()> {
        if indices.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(DONE)?;
            for &i in indices {
                t.insert(i, ())?;
            }
            let mut t = tx.open_table(WRITTEN)?;
            for &i in indices {
                t.insert(i, ())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn trusted(&self) -> Result<HashSet<u64>> {
        self.set(TRUSTED)
    }

    /// Drops chunks from the progress record (they are not done any more).
    pub fn forget(&self, indices: &[u64]) -> Result<()> {
        let tx = self.db.begin_write()?;
        for table in [DONE, TRUSTED, WRITTEN] {
            let mut t = tx.open_table(table)?;
            for &i in indices {
                t.remove(i)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Chunks written by this sync (see [`WRITTEN`]).
    pub fn written(&self) -> Result<HashSet<u64>> {
        self.set(WRITTEN)
    }

    fn set(&self, table: TableDefinition<u64, ()>) -> Result<HashSet<u64>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table)?;
        let mut out = HashSet::new();
        for r in t.iter()? {
            out.insert(r?.0.value());
        }
        Ok(out)
    }

    /// Consumes a stale local checkpoint for an in-place sync: its directory
    /// becomes the staging state (a rename, same filesystem) and its manifest
    /// is kept beside it. Idempotent across restarts.
    pub fn consume_in_place(&self, dir: &Path, old: &Manifest) -> Result<()> {
        let saved = self.dir.join("in-place-manifest");
        if !saved.exists() {
            let tmp = self.dir.join("in-place-manifest.tmp");
            std::fs::write(&tmp, old.encode())?;
            File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &saved)?;
        }
        if dir.exists() {
            let state = self.state_dir();
            // Only an empty staging state can be replaced.
            std::fs::remove_dir(&state).map_err(|e| {
                format!(
                    "staging {} is not empty, cannot consume {}: {e}",
                    state.display(),
                    dir.display()
                )
            })?;
            std::fs::rename(dir, &state).map_err(|e| {
                format!(
                    "move {} into {} (in-place needs both on one filesystem): {e}",
                    dir.display(),
                    state.display()
                )
            })?;
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The consumed checkpoint's manifest, if this is an in-place sync.
    pub fn in_place_manifest(&self) -> Option<Manifest> {
        let bytes = std::fs::read(self.dir.join("in-place-manifest")).ok()?;
        Manifest::decode(&bytes).ok()
    }
}

/// In-place mode keeps a stale checkpoint's chunks on the word of its
/// manifest (they are sampled, not all rehashed, at promotion). A file that
/// changed after that manifest was written breaks the word: this removes
/// every file of `dir` that is missing, has another size than `m` says, or
/// was modified after `written` (the manifest file's mtime), so its chunks
/// are fetched or copied instead of kept. Returns the paths removed. A
/// directory copied without its timestamps (plain `cp`) loses them all:
/// safe, only slower.
pub fn drop_changed_since(
    dir: &Path,
    m: &Manifest,
    written: std::time::SystemTime,
) -> Result<Vec<String>> {
    let mut dropped = Vec::new();
    for f in m.files() {
        let p = statesync_manifest::path::join(dir, &f.path);
        // Never follow a symlinked directory out of DIR.
        let mut anc = p.parent();
        while let Some(a) = anc.filter(|a| a.starts_with(dir) && *a != dir) {
            if std::fs::symlink_metadata(a).is_ok_and(|md| md.file_type().is_symlink()) {
                return Err(format!(
                    "{} is a symlink; refusing to consume {}",
                    a.display(),
                    dir.display()
                )
                .into());
            }
            anc = a.parent();
        }
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let changed =
            !md.is_file() || md.len() != f.size || md.modified().map_or(true, |t| t > written);
        if changed {
            if md.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            }
            .map_err(|e| format!("remove {}: {e}", p.display()))?;
            dropped.push(f.path.clone());
        }
    }
    Ok(dropped)
}

/// Other roots' unfinished stagings in the data directory: their verified
/// chunks are reusable when the target root changes mid-sync.
pub fn other_stagings(data: &Path, root: &Hash) -> Vec<(PathBuf, Manifest, HashSet<u64>)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(data.join("fetch")) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(r) = Hash::from_hex(&name) else {
            continue;
        };
        if r == *root {
            continue;
        }
        let Ok(st) = Staging::open_for_reuse(data, r) else {
            continue;
        };
        let (Some(m), Ok(done)) = (st.saved_manifest(), st.done()) else {
            continue;
        };
        out.push((st.state_dir(), m, done));
    }
    out
}

fn open_target(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(path)
}

/// Block alignment of direct I/O (a multiple of every logical block size
/// in use: 512 and 4096).
const DIRECT_ALIGN: usize = 4096;

/// Whether chunk writes may bypass the page cache (`STATESYNC_DIRECT_IO=0`
/// turns it off, e.g. to compare, or on a filesystem that misbehaves).
fn direct_io_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    switched_on(&ON, "STATESYNC_DIRECT_IO")
}

/// An optimisation that is on unless the environment sets `var` to `0`
/// (read once per process).
fn switched_on(cell: &'static std::sync::OnceLock<bool>, var: &str) -> bool {
    *cell.get_or_init(|| std::env::var(var).map_or(true, |v| v != "0"))
}

/// `STATESYNC_REFLINK=0` turns off extent sharing for local chunk copies
/// (to measure, or on a filesystem whose clones misbehave).
fn reflink_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    switched_on(&ON, "STATESYNC_REFLINK")
}

thread_local! {
    /// One reusable aligned buffer per writing thread: fresh pages are slow
    /// to touch on a VM, and a chunk-sized allocation per write would touch
    /// new ones every time.
    static ALIGNED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The same for reading chunks back.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on a `len`-byte slice of `cell`'s buffer aligned for direct I/O.
fn with_aligned<R>(
    cell: &'static std::thread::LocalKey<std::cell::RefCell<Vec<u8>>>,
    len: usize,
    f: impl FnOnce(&mut [u8]) -> R,
) -> R {
    cell.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < len + DIRECT_ALIGN {
            b.resize(len + DIRECT_ALIGN, 0);
        }
        let at = b.as_ptr().align_offset(DIRECT_ALIGN);
        f(&mut b[at..at + len])
    })
}

/// A file of the staging area, opened for buffered writes and, where the
/// filesystem allows, a second time with `O_DIRECT`.
///
/// Fetched chunks are written with direct I/O: the device reads them from
/// our buffer, so the kernel neither copies them into fresh page-cache
/// pages (the most expensive step of a fetch on this kind of machine) nor
/// writes them back later on its own schedule. The unaligned tail of a
/// file's last chunk goes through the page cache. `fdatasync` is still what
/// makes either durable (extent metadata, device cache).
pub struct Target {
    path: PathBuf,
    file: File,
    direct: Option<File>,
    direct_ok: std::sync::atomic::AtomicBool,
}

impl Target {
    pub fn open(path: &Path) -> std::io::Result<Target> {
        let file = open_target(path)?;
        let direct = if direct_io_enabled() {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECT)
                .open(path)
                .ok()
        } else {
            None
        };
        let direct_ok = std::sync::atomic::AtomicBool::new(direct.is_some());
        Ok(Target {
            path: path.to_path_buf(),
            file,
            direct,
            direct_ok,
        })
    }

    /// The direct handle, if `offset` and this file allow direct I/O, and
    /// how many bytes of `len` it covers.
    fn direct_part(&self, offset: u64, len: usize) -> Option<(&File, usize)> {
        let d = self.direct.as_ref()?;
        let n = len / DIRECT_ALIGN * DIRECT_ALIGN;
        (offset.is_multiple_of(DIRECT_ALIGN as u64)
            && n > 0
            && self.direct_ok.load(std::sync::atomic::Ordering::Relaxed))
        .then_some((d, n))
    }

    /// Direct I/O was refused with EINVAL: buffered from now on.
    fn refused(&self, e: &std::io::Error) -> bool {
        let refused = e.raw_os_error() == Some(libc::EINVAL);
        if refused {
            self.direct_ok
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        refused
    }

    /// Reads `len` bytes at `offset` back from the device (past the page
    /// cache where direct I/O is in use) and returns their chunk hash.
    pub fn read_back_hash(&self, offset: u64, len: usize) -> std::io::Result<Hash> {
        with_aligned(&READ_BUF, len.next_multiple_of(DIRECT_ALIGN), |buf| {
            let buf = &mut buf[..len];
            let mut from = 0;
            if let Some((d, n)) = self.direct_part(offset, len) {
                match d.read_exact_at(&mut buf[..n], offset) {
                    Ok(()) => from = n,
                    Err(e) if self.refused(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            self.file
                .read_exact_at(&mut buf[from..], offset + from as u64)?;
            Ok(chunk_hash(buf))
        })
    }

    /// Writes `data` at `offset`: the block-aligned part directly, the rest
    /// (or everything, where direct I/O is refused) through the page cache.
    pub fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        if let Some((d, n)) = self.direct_part(offset, data.len()) {
            // Chunks read off the network arrive in aligned buffers
            // (statesync_net::chunkbuf) and go to the device as they are;
            // others are copied into this thread's aligned buffer first.
            let r = if (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) {
                d.write_all_at(&data[..n], offset)
            } else {
                with_aligned(&ALIGNED, n, |buf| {
                    buf.copy_from_slice(&data[..n]);
                    d.write_all_at(buf, offset)
                })
            };
            match r {
                Ok(()) => return self.file.write_all_at(&data[n..], offset + n as u64),
                // Opened with O_DIRECT but the write refused: the whole
                // chunk goes through the page cache.
                Err(e) if self.refused(&e) => {}
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(data, offset)
    }

    pub fn sync_data(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Makes `len` bytes at `offset` share the extents of `src` at
    /// `src_offset` (FICLONERANGE: XFS, btrfs; nothing is copied or
    /// written). False where that is not possible (another filesystem,
    /// unaligned ranges, no support): the caller copies instead; `enabled`
    /// is cleared when the staging filesystem cannot clone at all (a source
    /// on another filesystem, EXDEV, does not clear it).
    pub fn clone_range(
        &self,
        src: &File,
        src_offset: u64,
        len: u64,
        offset: u64,
        enabled: &std::sync::atomic::AtomicBool,
    ) -> bool {
        use std::os::fd::AsRawFd;
        let a = DIRECT_ALIGN as u64;
        if !reflink_enabled()
            || !enabled.load(std::sync::atomic::Ordering::Relaxed)
            || len == 0
            || !len.is_multiple_of(a)
            || !src_offset.is_multiple_of(a)
            || !offset.is_multiple_of(a)
        {
            return false;
        }
        let arg = libc::file_clone_range {
            src_fd: i64::from(src.as_raw_fd()),
            src_offset,
            src_length: len,
            dest_offset: offset,
        };
        // SAFETY: both descriptors stay open for the call and the kernel
        // only reads `arg`.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::FICLONERANGE, &arg) };
        if r == 0 {
            return true;
        }
        let e = std::io::Error::last_os_error();
        if matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::ENOSYS)
        ) {
            enabled.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        false
    }
}

/// What executing the local plan did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LocalReport {
    pub files_linked: u64,
    pub bytes_linked: u64,
    pub chunks_copied: u64,
    pub bytes_copied: u64,
    /// Of the copied bytes, those shared with their source (reflink) rather
    /// than written.
    pub bytes_cloned: u64,
    pub chunks_zero: u64,
    pub bytes_zero: u64,
    /// Chunks done by an earlier run of this sync.
    pub chunks_resumed: u64,
    pub bytes_resumed: u64,
    /// Copy sources whose bytes did not match (they are fetched instead).
    pub copy_mismatches: u64,
    /// Chunks already right in a consumed stale checkpoint (in-place mode).
    pub chunks_kept: u64,
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
            let (done, bad) = pool.install(|| fc.run(&can_clone, cancel, &mut rep))?;
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
        can_clone: &std::sync::atomic::AtomicBool,
        cancel: &std::sync::atomic::AtomicBool,
        rep: &mut LocalReport,
    ) -> Result<(Vec<u64>, Vec<u64>)> {
        let file =
            Target::open(&self.dst).map_err(|e| format!("open {}: {e}", self.dst.display()))?;
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
        let file = Target::open(&dst).map_err(|e| format!("create {}: {e}", dst.display()))?;
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

/// Per-chunk verdicts for the scheduler.
pub type ChunkResults = Vec<(u64, std::result::Result<(), String>)>;

/// Verified chunk writes with batched durability.
///
/// Chunks of a response are verified and written in place in parallel
/// (rayon). Durability runs on a separate syncer thread so that the writer
/// never waits for it: every `commit_bytes` or `commit_every`, the files
/// touched and the chunks written are handed to the syncer, which
/// `fdatasync`s those files, reads a sample of the chunks back from the
/// device, and only then commits the indices to redb.
/// At most [`SYNC_QUEUE`] batches wait for it (backpressure), so after a
/// crash at most that many batches plus what was in flight are refetched.
pub struct Writer {
    staging_state: PathBuf,
    files: HashMap<u32, Arc<Target>>,
    dirty: HashMap<u32, Arc<Target>>,
    pending: Vec<Written>,
    pending_bytes: u64,
    last_commit: Instant,
    /// Commit after this many bytes or this long, whichever first.
    pub commit_bytes: u64,
    pub commit_every: Duration,
    syncer: Option<std::sync::mpsc::SyncSender<SyncJob>>,
    syncer_handle: Option<std::thread::JoinHandle<()>>,
    sync_error: Arc<std::sync::Mutex<Option<String>>>,
}

/// A chunk written and not yet durable.
struct Written {
    index: u64,
    target: Arc<Target>,
    offset: u64,
    len: u32,
    hash: Hash,
}

/// Reads a sample of a synced batch back from the device (in parallel, so
/// it sees more than one request at a time) and checks each chunk against
/// the hash its bytes were verified with before they were written. A
/// mismatch is a local storage fault: nothing of the batch is recorded and
/// the sync stops. `seed` keys the sample (the root: each sync samples
/// other chunks).
fn read_back_sample(chunks: &[Written], seed: u64) -> std::result::Result<(), String> {
    use rayon::prelude::*;
    let threshold = (TRUSTED_SAMPLE_RATE * u64::MAX as f64) as u64;
    let sampled =
        |w: &&Written| statesync_manifest::build::sample_selected(seed, w.index, threshold);
    chunks.par_iter().filter(sampled).try_for_each(|w| {
        let h = w
            .target
            .read_back_hash(w.offset, w.len as usize)
            .map_err(|e| format!("read back {}: {e}", w.target.path.display()))?;
        if h == w.hash {
            Ok(())
        } else {
            Err(format!(
                "chunk {} of {} read back from disk differs from the verified bytes written \
                 at offset {} (local storage fault)",
                w.index,
                w.target.path.display(),
                w.offset
            ))
        }
    })
}

/// Batches waiting for the syncer at most.
pub const SYNC_QUEUE: usize = 2;

enum SyncJob {
    Batch {
        files: Vec<Arc<Target>>,
        chunks: Vec<Written>,
    },
    Barrier(std::sync::mpsc::Sender<()>),
}

use std::sync::Arc;

impl Writer {
    pub fn new(staging: Arc<Staging>) -> Writer {
        let (tx, rx) = std::sync::mpsc::sync_channel::<SyncJob>(SYNC_QUEUE);
        let err = Arc::new(std::sync::Mutex::new(None));
        let err2 = err.clone();
        let st = staging.clone();
        let handle = std::thread::spawn(move || {
            while let Ok(job) = rx.recv() {
                match job {
                    SyncJob::Batch { files, chunks } => {
                        let r = files
                            .iter()
                            .try_for_each(|f| f.sync_data())
                            .map_err(|e| format!("fsync: {e}"))
                            .and_then(|()| read_back_sample(&chunks, st.sample_seed()))
                            .and_then(|()| {
                                let indices: Vec<u64> = chunks.iter().map(|w| w.index).collect();
                                st.commit_written(&indices)
                                    .map_err(|e| format!("commit progress: {e}"))
                            });
                        if let Err(e) = r
                            && let Ok(mut g) = err2.lock()
                        {
                            g.get_or_insert(e);
                        }
                    }
                    SyncJob::Barrier(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Writer {
            staging_state: staging.state_dir(),
            files: HashMap::new(),
            dirty: HashMap::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            last_commit: Instant::now(),
            commit_bytes: 64 << 20,
            commit_every: Duration::from_millis(500),
            syncer: Some(tx),
            syncer_handle: Some(handle),
            sync_error: err,
        }
    }

    fn sync_failed(&self) -> Option<String> {
        self.sync_error.lock().ok().and_then(|g| g.clone())
    }

    /// Verifies and writes chunks; returns per-chunk results for the
    /// scheduler. A local failure is returned as `Err` (no peer is at fault).
    pub fn write(
        &mut self,
        m: &Manifest,
        chunks: Vec<(u64, statesync_proto::Bytes)>,
    ) -> std::result::Result<ChunkResults, String> {
        use rayon::prelude::*;
        if let Some(e) = self.sync_failed() {
            return Err(e);
        }
        // Open the target files first (sequential: the handle cache), then
        // verify and write every chunk in parallel: the kernel's copy into
        // the page cache is the most expensive step of a fetch, and a single
        // writer thread would serialise it.
        let mut targets: Vec<Option<Arc<Target>>> = Vec::with_capacity(chunks.len());
        for (i, _) in &chunks {
            let Some(c) = m.chunks().get(*i as usize) else {
                targets.push(None);
                continue;
            };
            let file = match self.files.entry(c.file) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut().clone(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let p = statesync_manifest::path::join(
                        &self.staging_state,
                        &m.files()[c.file as usize].path,
                    );
                    v.insert(Arc::new(
                        Target::open(&p).map_err(|e| format!("open {}: {e}", p.display()))?,
                    ))
                    .clone()
                }
            };
            targets.push(Some(file));
        }
        // Per chunk: Ok(Ok(())) written, Ok(Err) bad data (the peer's
        // fault), Err a local write failure.
        type Outcome = std::result::Result<std::result::Result<(), String>, String>;
        let outcomes: Vec<Outcome> = chunks
            .par_iter()
            .zip(targets.par_iter())
            .map(|((i, data), file)| {
                let (Some(c), Some(file)) = (m.chunks().get(*i as usize), file) else {
                    return Ok(Err(format!("no chunk {i} in the manifest")));
                };
                if let Err(e) = statesync_manifest::format::verify_chunk_data(*i, c, data) {
                    return Ok(Err(e.to_string()));
                }
                file.write_at(data, c.offset)
                    .map(Ok)
                    .map_err(|e| format!("write {}: {e}", m.files()[c.file as usize].path))
            })
            .collect();
        let mut out = Vec::with_capacity(chunks.len());
        for (((i, data), outcome), file) in chunks.into_iter().zip(outcomes).zip(targets) {
            match outcome? {
                Err(bad) => out.push((i, Err(bad))),
                Ok(()) => {
                    if let (Some(f), Some(c)) = (file, m.chunks().get(i as usize)) {
                        self.dirty.insert(c.file, f.clone());
                        self.pending.push(Written {
                            index: i,
                            target: f,
                            offset: c.offset,
                            len: c.len,
                            hash: c.hash,
                        });
                    }
                    self.pending_bytes += data.len() as u64;
                    out.push((i, Ok(())));
                }
            }
        }
        if self.pending_bytes >= self.commit_bytes
            || self.last_commit.elapsed() >= self.commit_every
        {
            self.hand_off()?;
        }
        Ok(out)
    }

    /// Hands the current batch to the syncer (blocks only if it is
    /// [`SYNC_QUEUE`] batches behind).
    fn hand_off(&mut self) -> std::result::Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let files = self.dirty.drain().map(|(_, f)| f).collect();
        let chunks = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.last_commit = Instant::now();
        self.syncer
            .as_ref()
            .ok_or("syncer stopped")?
            .send(SyncJob::Batch { files, chunks })
            .map_err(|_| "syncer stopped".to_string())?;
        // Keep the number of open files bounded.
        if self.files.len() > 256 {
            self.files.clear();
        }
        Ok(())
    }

    /// Drops every open file handle: files were replaced on disk (by a
    /// repair in `promote`), so later writes must open them again.
    pub fn forget_files(&mut self) {
        self.files.clear();
        self.dirty.clear();
    }

    /// Makes everything written so far durable and recorded; waits for it.
    pub fn flush(&mut self) -> std::result::Result<(), String> {
        self.hand_off()?;
        let (tx, rx) = std::sync::mpsc::channel();
        self.syncer
            .as_ref()
            .ok_or("syncer stopped")?
            .send(SyncJob::Barrier(tx))
            .map_err(|_| "syncer stopped".to_string())?;
        rx.recv().map_err(|_| "syncer stopped".to_string())?;
        match self.sync_failed() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.syncer.take();
        if let Some(h) = self.syncer_handle.take() {
            let _ = h.join();
        }
    }
}

/// Fraction of trusted (kept or linked) chunks rehashed at the end of a sync.
pub const TRUSTED_SAMPLE_RATE: f64 = 1.0 / 64.0;

/// What the final check before promotion found.
#[derive(Debug)]
pub enum Promotion {
    /// Verified and renamed into place.
    Done,
    /// Staged bytes did not verify (a seed file changed after the plan used
    /// it, or the disk altered them): the files holding them were replaced
    /// by empty ones and their chunks dropped from the progress record, so
    /// they must be fetched (from peers) before promoting again.
    Refetch {
        chunks: Vec<u64>,
        files: Vec<String>,
    },
}

pub fn promote(
    staging: &Staging,
    m: &Manifest,
    out: &Path,
    full_verify: bool,
) -> Result<Promotion> {
    use std::os::unix::fs::PermissionsExt;
    for f in m.files() {
        let p = statesync_manifest::path::join(&staging.state_dir(), &f.path);
        let mode = std::fs::symlink_metadata(&p)?.permissions().mode() & 0o7777;
        if (mode & 0o100 != 0) != f.executable {
            let want = if f.executable {
                mode | 0o111
            } else {
                mode & !0o111
            };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(want))?;
        }
    }
    // Chunks this sync wrote were verified before they went to disk (and a
    // sample read back after); they are sampled like trusted ones, with
    // another key than the read-back sample. Everything else (linked files,
    // chunks from older staging formats) is verified whole; with
    // full_verify, every chunk is.
    let trusted = if full_verify {
        HashSet::new()
    } else {
        let mut t = staging.trusted()?;
        t.extend(staging.written()?);
        t
    };
    let threshold = (TRUSTED_SAMPLE_RATE * u64::MAX as f64) as u64;
    let seed = staging.sample_seed() ^ 0x9e37_79b9_7f4a_7c15;
    let check = |i: u64| {
        !trusted.contains(&i) || statesync_manifest::build::sample_selected(seed, i, threshold)
    };
    let rep = statesync_manifest::verify_dir_filtered(&staging.state_dir(), m, None, &check)?;
    if !rep.ok {
        let state = staging.state_dir();
        for path in &rep.extra {
            let p = statesync_manifest::path::join(&state, path);
            std::fs::remove_file(&p).map_err(|e| format!("remove {}: {e}", p.display()))?;
        }
        let mut files: Vec<String> = rep
            .corrupt
            .iter()
            .map(|c| c.path.clone())
            .chain(rep.missing.iter().cloned())
            .chain(rep.size_mismatch.iter().map(|x| x.path.clone()))
            .collect();
        files.sort();
        files.dedup();
        let mut chunks = Vec::new();
        let mut fis = Vec::new();
        for path in &files {
            let fi = m
                .find(path)
                .ok_or_else(|| format!("verification named {path}, not in the manifest"))?;
            let first = m.first_chunk(fi);
            chunks.extend(first..first + m.file_chunks(fi).len() as u64);
            fis.push(fi);
        }
        // Not done any more before anything is touched: a crash in between
        // leaves chunks to fetch, never a recreated file recorded as done.
        staging.forget(&chunks)?;
        for (path, &fi) in files.iter().zip(&fis) {
            let p = statesync_manifest::path::join(&state, path);
            // Unlink first: a hard-linked file is its source's inode, which
            // the refetch must not write into.
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("remove {}: {e}", p.display()).into()),
            }
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            Target::open(&p)
                .and_then(|t| t.file.set_len(m.files()[fi].size))
                .map_err(|e| format!("recreate {}: {e}", p.display()))?;
        }
        if files.is_empty() && rep.extra.is_empty() {
            return Err(format!(
                "assembled checkpoint does not verify: {} files with wrong modes",
                rep.mode_mismatch.len()
            )
            .into());
        }
        for path in &files {
            if let Some(parent) = statesync_manifest::path::join(&state, path).parent() {
                File::open(parent)?.sync_all()?;
            }
        }
        return Ok(Promotion::Refetch { chunks, files });
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    // The manifest lands first (written aside, made durable, renamed), then
    // the state in one rename: wherever a crash falls, OUT never exists
    // without its manifest, and a rerun finds either the staging area to
    // resume or the finished checkpoint.
    if std::fs::symlink_metadata(out).is_ok() {
        return Err(format!(
            "{} appeared during the sync; the verified checkpoint stays staged",
            out.display()
        )
        .into());
    }
    let manifest_out = manifest_path_for(out);
    let mut tmp = manifest_out.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let f = File::create(&tmp).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    f.write_all_at(&m.encode(), 0)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &manifest_out)?;
    if let Err(e) = std::fs::rename(staging.state_dir(), out) {
        let _ = std::fs::remove_file(&manifest_out);
        return Err(format!("move checkpoint to {}: {e}", out.display()).into());
    }
    File::open(&parent)?.sync_all()?;
    Ok(Promotion::Done)
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

/// Where `fetch` leaves the manifest of a checkpoint written to `out`.
pub fn manifest_path_for(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".manifest");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_changed_after_their_manifest_are_not_kept_in_place() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("old");
        for (name, len) in [("a", 5000), ("b", 7000), ("c", 9000)] {
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join(name), vec![1u8; len]).expect("write");
        }
        let m = statesync_manifest::build(&dir, &Default::default())
            .expect("build")
            .manifest;
        let written = std::time::SystemTime::now();
        std::thread::sleep(Duration::from_millis(20));
        // b moves on (same size), c is resized; a is untouched.
        std::fs::write(dir.join("b"), vec![2u8; 7000]).expect("write");
        std::fs::write(dir.join("c"), vec![1u8; 100]).expect("write");
        let dropped = drop_changed_since(&dir, &m, written).expect("drop");
        assert_eq!(dropped, vec!["b".to_string(), "c".to_string()]);
        assert!(dir.join("a").exists() && !dir.join("b").exists() && !dir.join("c").exists());
    }

    /// A progress database that cannot be read vouches for nothing staged:
    /// the sync starts over instead of failing on every restart.
    #[test]
    fn an_unreadable_progress_database_starts_the_sync_over() {
        let data = tempfile::tempdir().expect("tempdir");
        let root = Hash([3; 32]);
        let st = Staging::open(data.path(), root).expect("open");
        st.commit_with(&[1, 2], &[]).expect("commit");
        std::fs::write(st.state_dir().join("f"), b"staged").expect("write");
        let dir = st.dir.clone();
        drop(st);
        assert_eq!(
            Staging::open(data.path(), root)
                .expect("reopen")
                .done()
                .expect("done")
                .len(),
            2
        );
        std::fs::write(dir.join("progress.redb"), b"what a full disk left").expect("write");
        let st = Staging::open(data.path(), root).expect("open over a damaged database");
        assert!(st.done().expect("done").is_empty());
        assert!(!st.state_dir().join("f").exists(), "unvouched bytes kept");
    }

    /// Chunks of every shape (aligned or not, shorter or longer than a
    /// block, a file's short tail) land exactly where they belong, whether
    /// the filesystem takes direct I/O (ext4, tmpfs on new kernels) or not.
    #[test]
    fn direct_and_buffered_writes_land_byte_exact() {
        for base in [std::env::temp_dir(), PathBuf::from("/dev/shm")] {
            let Ok(dir) = tempfile::tempdir_in(&base) else {
                continue;
            };
            let path = dir.path().join("f");
            let t = Target::open(&path).expect("open");
            // (offset, len): aligned 1 MiB, aligned with a tail, sub-block,
            // unaligned offset (1 KiB chunks), one byte.
            let writes: [(u64, usize); 6] = [
                (0, 1 << 20),
                (1 << 20, (1 << 20) + 7),
                (3 << 20, 4095),
                (4 << 20, 4096),
                ((5 << 20) + 1024, 5000),
                (6 << 20, 1),
            ];
            let size = (6 << 20) + 1;
            t.file.set_len(size).expect("size");
            let mut want = vec![0u8; size as usize];
            for (k, &(off, len)) in writes.iter().enumerate() {
                let data: Vec<u8> = (0..len).map(|i| (i * 31 + k * 7 + 1) as u8).collect();
                t.write_at(&data, off).expect("write");
                want[off as usize..off as usize + len].copy_from_slice(&data);
                assert_eq!(
                    t.read_back_hash(off, len).expect("read back"),
                    chunk_hash(&data),
                    "{} offset {off} len {len}",
                    base.display()
                );
            }
            t.sync_data().expect("fdatasync");
            assert_eq!(
                std::fs::read(&path).expect("read"),
                want,
                "{}",
                base.display()
            );
            // Where the filesystem opened the file for direct I/O, the
            // aligned writes above really went that way.
            if t.direct.is_some() {
                assert!(
                    t.direct_ok.load(std::sync::atomic::Ordering::Relaxed),
                    "{}: direct I/O fell back to buffered",
                    base.display()
                );
            }
        }
    }

    /// A chunk whose bytes on disk differ from what was verified and
    /// written is caught by the read-back sample as a local fault.
    #[test]
    fn read_back_catches_bytes_changed_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let t = Arc::new(Target::open(&path).expect("open"));
        let data = vec![5u8; 64 << 10];
        let seed = 7;
        let threshold = (TRUSTED_SAMPLE_RATE * u64::MAX as f64) as u64;
        // Chunk indices the sample picks for this seed, and one it skips.
        let picked: Vec<u64> = (0..10_000)
            .filter(|&i| statesync_manifest::build::sample_selected(seed, i, threshold))
            .take(2)
            .collect();
        assert_eq!(picked.len(), 2);
        let chunk = |index: u64, offset: u64| Written {
            index,
            target: t.clone(),
            offset,
            len: data.len() as u32,
            hash: chunk_hash(&data),
        };
        t.write_at(&data, 0).expect("write");
        t.write_at(&data, 64 << 10).expect("write");
        t.sync_data().expect("sync");
        let batch = [chunk(picked[0], 0), chunk(picked[1], 64 << 10)];
        assert_eq!(read_back_sample(&batch, seed), Ok(()));
        // The device (or anything else) changes a byte under us.
        t.file
            .write_all_at(&[6], (64 << 10) + 100)
            .expect("corrupt");
        let err = read_back_sample(&batch, seed).expect_err("corruption not caught");
        assert!(err.contains("local storage fault"), "{err}");
        assert!(err.contains(&format!("chunk {}", picked[1])), "{err}");
    }
}
