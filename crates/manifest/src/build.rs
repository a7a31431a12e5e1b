//! Computing manifests from a checkpoint directory: full and parallel, or
//! incremental from the previous checkpoint (an exact change set from the
//! application, or automatic from hard links and file metadata), with a
//! deterministic sampled rehash of reused chunks.
//!
//! Every file is opened without following symlinks and `fstat`ed before and
//! after it is read; a file whose identity, size, mtime or ctime moved while it
//! was being hashed, or that reads short, is an error ([`BuildError::Changed`]),
//! never a wrong manifest.

use crate::format::{
    ChunkEntry, FileEntry, Manifest, ManifestError, check_chunk_size, chunk_count,
};
use crate::hash::{Domain, Hash, file_hash};
use crate::path::{self, PathError};
use crate::stats::{FileStat, StatCache};
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("{path} is a symlink; a checkpoint may hold only regular files and directories")]
    Symlink { path: PathBuf },
    #[error("{path} is a {kind}; a checkpoint may hold only regular files and directories")]
    Special { path: PathBuf, kind: &'static str },
    #[error("{path}: unusable path: {err}")]
    BadPath { path: PathBuf, err: PathError },
    #[error("{path} changed while it was being hashed ({what}); retry once writers are done")]
    Changed { path: PathBuf, what: String },
    #[error("change set contradicts the directory at {path:?}: {reason}")]
    ChangeSet { path: String, reason: String },
    #[error("previous manifest has chunk size {prev}, this build uses {now}")]
    ChunkSizeMismatch { prev: u32, now: u32 },
    #[error(
        "sampled rehash: {path:?} chunk at offset {offset} no longer matches the previous manifest; \
         the reused hashes cannot be trusted (state modified in place?)"
    )]
    SampleMismatch { path: String, offset: u64 },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BuildError + 'a {
    move |source| BuildError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Progress counters a caller may poll from another thread.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes that will be read and hashed (known after the scan).
    pub total: AtomicU64,
    /// Bytes read and hashed so far.
    pub done: AtomicU64,
}

#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub chunk_size: u32,
    /// Fraction of reused chunks rehashed in an incremental build (0..=1).
    pub sample_rate: f64,
    /// Height of the checkpoint; seeds the sampled rehash so that every node
    /// picks the same chunks.
    pub height: u64,
    pub progress: Option<Arc<Progress>>,
}

/// Default fraction of reused chunks rehashed: 1/128. The IC rehashes 1 in
/// 10, which makes an incremental manifest with 1% of chunks changed cost ~11%
/// of a full one; at 1/128 the re-check costs less than the changes themselves
/// and a systematic error (a writer bypassing the change set, a checkpoint
/// modified through a hard link) is still caught within a few checkpoints.
/// Configurable per call (`--sample-rate`).
pub const DEFAULT_SAMPLE_RATE: f64 = 1.0 / 128.0;

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            chunk_size: crate::format::DEFAULT_CHUNK_SIZE,
            sample_rate: DEFAULT_SAMPLE_RATE,
            height: 0,
            progress: None,
        }
    }
}

/// Byte ranges written to files since the previous checkpoint, as the
/// application reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangeSet {
    /// Path -> written `[start, end)` byte ranges. New files belong here too
    /// (any range, or none: a file absent from the previous manifest is always
    /// hashed whole). A truncation is a written file whose size shrank.
    #[serde(default)]
    pub written: BTreeMap<String, Vec<(u64, u64)>>,
    /// Paths deleted since the previous checkpoint.
    #[serde(default)]
    pub removed: BTreeSet<String>,
}

/// What the previous checkpoint gives an incremental build.
pub struct Previous<'a> {
    pub manifest: &'a Manifest,
    /// Its directory, to recognise files hard-linked from it (same device and
    /// inode at the same path).
    pub dir: Option<&'a Path>,
    /// Metadata recorded when its manifest was built.
    pub stats: Option<&'a StatCache>,
}

pub enum Hint<'a> {
    /// The application's exact change set.
    Exact(&'a ChangeSet),
    /// Reuse files that are hard links of the previous checkpoint's or whose
    /// (device, inode, size, mtime, ctime) are unchanged.
    Auto,
}

/// What a build did, for reports and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BuildReport {
    pub files: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub files_reused: u64,
    pub chunks_hashed: u64,
    pub bytes_hashed: u64,
    pub chunks_reused: u64,
    pub chunks_sampled: u64,
}

#[derive(Debug)]
pub struct Built {
    pub manifest: Manifest,
    /// Metadata of the files as hashed, for the next automatic build.
    pub stats: StatCache,
    pub report: BuildReport,
}

/// A regular file found in a checkpoint directory.
#[derive(Clone, Debug)]
pub struct ScannedFile {
    pub path: String,
    pub abs: PathBuf,
    pub executable: bool,
    pub stat: FileStat,
}

/// Lists the regular files under `dir`, sorted by manifest path. Symlinks,
/// devices, sockets and FIFOs are errors naming the path. Empty directories
/// are not part of a checkpoint.
pub fn scan(dir: &Path) -> Result<Vec<ScannedFile>, BuildError> {
    let meta = std::fs::symlink_metadata(dir).map_err(io_err("stat", dir))?;
    if !meta.is_dir() {
        return Err(BuildError::NotADirectory(dir.to_path_buf()));
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(io_err("read directory", &d))?;
        for ent in rd {
            let ent = ent.map_err(io_err("read directory", &d))?;
            let abs = ent.path();
            let md = std::fs::symlink_metadata(&abs).map_err(io_err("stat", &abs))?;
            let ft = md.file_type();
            if ft.is_dir() {
                stack.push(abs);
            } else if ft.is_file() {
                let rel = abs.strip_prefix(dir).unwrap_or(&abs);
                let path = path::from_fs(rel).map_err(|err| BuildError::BadPath {
                    path: abs.clone(),
                    err,
                })?;
                out.push(ScannedFile {
                    path,
                    executable: md.permissions().mode() & 0o100 != 0,
                    stat: FileStat::of(&md),
                    abs,
                });
            } else if ft.is_symlink() {
                return Err(BuildError::Symlink { path: abs });
            } else {
                use std::os::unix::fs::FileTypeExt;
                let kind = if ft.is_block_device() {
                    "block device"
                } else if ft.is_char_device() {
                    "character device"
                } else if ft.is_fifo() {
                    "FIFO"
                } else if ft.is_socket() {
                    "socket"
                } else {
                    "special file"
                };
                return Err(BuildError::Special { path: abs, kind });
            }
        }
    }
    out.sort_unstable_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    Ok(out)
}

/// Full computation: every chunk of every file, in parallel over all cores.
pub fn build(dir: &Path, opts: &BuildOptions) -> Result<Built, BuildError> {
    check_chunk_size(opts.chunk_size)?;
    let recorded_ns = crate::stats::now_ns();
    let files = scan(dir)?;
    let plans = files
        .iter()
        .map(|f| FilePlan {
            reuse: Vec::new(),
            sample: Vec::new(),
            count: chunk_count(f.stat.size, opts.chunk_size),
        })
        .collect();
    execute(files, plans, opts, recorded_ns, 0)
}

/// Incremental computation from the previous checkpoint.
pub fn build_incremental(
    dir: &Path,
    opts: &BuildOptions,
    prev: &Previous<'_>,
    hint: Hint<'_>,
) -> Result<Built, BuildError> {
    check_chunk_size(opts.chunk_size)?;
    let pm = prev.manifest;
    if pm.chunk_size() != opts.chunk_size {
        return Err(BuildError::ChunkSizeMismatch {
            prev: pm.chunk_size(),
            now: opts.chunk_size,
        });
    }
    let recorded_ns = crate::stats::now_ns();
    let files = scan(dir)?;
    let cs = u64::from(opts.chunk_size);
    let mut plans = Vec::with_capacity(files.len());
    let mut files_reused = 0u64;

    if let Hint::Exact(changes) = &hint {
        for p in &changes.removed {
            if files
                .binary_search_by(|f| f.path.as_bytes().cmp(p.as_bytes()))
                .is_ok()
            {
                return Err(BuildError::ChangeSet {
                    path: p.clone(),
                    reason: "listed as removed but present".into(),
                });
            }
        }
        for f in pm.files() {
            let present = files
                .binary_search_by(|s| s.path.as_bytes().cmp(f.path.as_bytes()))
                .is_ok();
            if !present && !changes.removed.contains(&f.path) {
                return Err(BuildError::ChangeSet {
                    path: f.path.clone(),
                    reason: "missing but not listed as removed".into(),
                });
            }
        }
    }

    for f in &files {
        let size = f.stat.size;
        let count = chunk_count(size, opts.chunk_size);
        let Some(pi) = pm.find(&f.path) else {
            if let Hint::Exact(c) = &hint
                && !c.written.contains_key(&f.path)
            {
                return Err(BuildError::ChangeSet {
                    path: f.path.clone(),
                    reason: "new file not listed as written".into(),
                });
            }
            plans.push(FilePlan::full(count));
            continue;
        };
        let pf = &pm.files()[pi];
        let pchunks = pm.file_chunks(pi);
        let reuse: Vec<Option<Hash>> = match &hint {
            Hint::Exact(changes) => match changes.written.get(&f.path) {
                None => {
                    if pf.size != size {
                        return Err(BuildError::ChangeSet {
                            path: f.path.clone(),
                            reason: format!(
                                "size changed from {} to {} but the file is not listed as written",
                                pf.size, size
                            ),
                        });
                    }
                    files_reused += 1;
                    pchunks.iter().map(|c| Some(c.hash)).collect()
                }
                Some(ranges) => (0..count)
                    .map(|k| {
                        let off = k * cs;
                        let len = (size - off).min(cs);
                        let old = pchunks.get(k as usize)?;
                        let touched = ranges
                            .iter()
                            .any(|&(a, b)| a < off + len && b > off && a < b);
                        (u64::from(old.len) == len && !touched).then_some(old.hash)
                    })
                    .collect(),
            },
            Hint::Auto => {
                if pf.size == size && unchanged_since_prev(f, prev) {
                    files_reused += 1;
                    pchunks.iter().map(|c| Some(c.hash)).collect()
                } else {
                    Vec::new()
                }
            }
        };
        plans.push(FilePlan {
            reuse,
            sample: Vec::new(),
            count,
        });
    }

    // Deterministic sample of reused chunks, keyed by height and the chunk's
    // index in the new manifest: the same choice on every node.
    let threshold = (opts.sample_rate.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
    let mut global = 0u64;
    for plan in &mut plans {
        for k in 0..plan.count {
            if plan.reuse.get(k as usize).copied().flatten().is_some()
                && sample_selected(opts.height, global + k, threshold)
            {
                plan.sample.push(k);
            }
        }
        global += plan.count;
    }
    execute(files, plans, opts, recorded_ns, files_reused)
}

fn unchanged_since_prev(f: &ScannedFile, prev: &Previous<'_>) -> bool {
    if let Some(dir) = prev.dir
        && let Ok(md) = std::fs::symlink_metadata(path::join(dir, &f.path))
        && md.is_file()
        && md.dev() == f.stat.dev
        && md.ino() == f.stat.ino
    {
        return true;
    }
    prev.stats
        .and_then(|s| s.get(&f.path))
        .is_some_and(|old| old.trustworthy_match(&f.stat))
}

/// True if chunk `index` is in the sample for `height`.
pub fn sample_selected(height: u64, index: u64, threshold: u64) -> bool {
    if threshold == 0 {
        return false;
    }
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&height.to_le_bytes());
    buf[8..].copy_from_slice(&index.to_le_bytes());
    let h = Domain::Sample.hash(&buf);
    let mut v = [0u8; 8];
    v.copy_from_slice(&h.0[..8]);
    u64::from_le_bytes(v) < threshold
}

struct FilePlan {
    /// Known hash per chunk (empty: nothing reused).
    reuse: Vec<Option<Hash>>,
    /// Reused chunk indices to rehash and compare.
    sample: Vec<u64>,
    count: u64,
}

impl FilePlan {
    fn full(count: u64) -> FilePlan {
        FilePlan {
            reuse: Vec::new(),
            sample: Vec::new(),
            count,
        }
    }
    fn known(&self, k: u64) -> Option<Hash> {
        self.reuse.get(k as usize).copied().flatten()
    }
    /// Chunks that must be read: unknown ones and sampled ones.
    fn to_read(&self) -> Vec<u64> {
        let mut v: Vec<u64> = (0..self.count)
            .filter(|&k| self.known(k).is_none())
            .collect();
        v.extend_from_slice(&self.sample);
        v.sort_unstable();
        v
    }
}

fn execute(
    files: Vec<ScannedFile>,
    plans: Vec<FilePlan>,
    opts: &BuildOptions,
    recorded_ns: i64,
    files_reused: u64,
) -> Result<Built, BuildError> {
    let cs = opts.chunk_size;
    let reads: Vec<Vec<u64>> = plans.iter().map(FilePlan::to_read).collect();
    let bytes_to_read: u64 = files
        .iter()
        .zip(&reads)
        .map(|(f, r)| {
            r.iter()
                .map(|&k| (f.stat.size - k * u64::from(cs)).min(u64::from(cs)))
                .sum::<u64>()
        })
        .sum();
    if let Some(p) = &opts.progress {
        p.total.store(bytes_to_read, Ordering::Relaxed);
    }
    let hashed: Vec<Vec<(u64, Hash)>> = files
        .par_iter()
        .zip(reads.par_iter())
        .map(|(f, r)| {
            if r.is_empty() {
                Ok(Vec::new())
            } else {
                hash_chunks(f, cs, r, opts.progress.as_deref(), &|_| {})
            }
        })
        .collect::<Result<_, _>>()?;

    let mut report = BuildReport {
        files: files.len() as u64,
        files_reused,
        ..Default::default()
    };
    let mut entries = Vec::with_capacity(files.len());
    let mut chunks = Vec::new();
    let mut stats = StatCache::new(recorded_ns);
    for (i, ((f, plan), got)) in files.into_iter().zip(plans).zip(hashed).enumerate() {
        let size = f.stat.size;
        let first = chunks.len();
        let mut got = got.into_iter().peekable();
        for k in 0..plan.count {
            let offset = k * u64::from(cs);
            let len = (size - offset).min(u64::from(cs)) as u32;
            let fresh = if got.peek().is_some_and(|(gk, _)| *gk == k) {
                got.next().map(|(_, h)| h)
            } else {
                None
            };
            let hash = match (plan.known(k), fresh) {
                (Some(old), Some(new)) => {
                    report.chunks_sampled += 1;
                    report.chunks_reused += 1;
                    if old != new {
                        return Err(BuildError::SampleMismatch {
                            path: f.path,
                            offset,
                        });
                    }
                    old
                }
                (Some(old), None) => {
                    report.chunks_reused += 1;
                    old
                }
                (None, Some(new)) => new,
                (None, None) => {
                    // Unreachable by construction: every unknown chunk is read.
                    return Err(BuildError::Changed {
                        path: f.abs,
                        what: format!("chunk {k} was not read"),
                    });
                }
            };
            chunks.push(ChunkEntry {
                file: i as u32,
                offset,
                len,
                hash,
            });
        }
        report.bytes += size;
        stats.insert(f.path.clone(), f.stat);
        entries.push(FileEntry {
            hash: file_hash(size, chunks[first..].iter().map(|c| &c.hash)),
            path: f.path,
            size,
            executable: f.executable,
        });
    }
    report.chunks = chunks.len() as u64;
    report.bytes_hashed = bytes_to_read;
    report.chunks_hashed = report.chunks - report.chunks_reused + report.chunks_sampled;
    let manifest = Manifest::new(cs, entries, chunks)?;
    Ok(Built {
        manifest,
        stats,
        report,
    })
}

/// Bytes read per `pread`: small enough to stay in L2 while hashed.
const READ_PIECE: usize = 64 * 1024;

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Opens a file of a checkpoint for reading, refusing symlinks, and checks it
/// is the file that was scanned.
fn open_checked(f: &ScannedFile) -> Result<File, BuildError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&f.abs)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                BuildError::Symlink {
                    path: f.abs.clone(),
                }
            } else {
                io_err("open", &f.abs)(e)
            }
        })?;
    check_same(&file, f, "before reading")?;
    Ok(file)
}

fn check_same(file: &File, f: &ScannedFile, when: &str) -> Result<(), BuildError> {
    let md = file.metadata().map_err(io_err("stat", &f.abs))?;
    let now = FileStat::of(&md);
    if now != f.stat {
        return Err(BuildError::Changed {
            path: f.abs.clone(),
            what: format!("{} {when}", f.stat.describe_change(&now)),
        });
    }
    Ok(())
}

/// Reads and hashes chunks `which` (sorted) of one file, in parallel.
/// `after_read` is a test hook called with each chunk index after it is read.
pub(crate) fn hash_chunks(
    f: &ScannedFile,
    chunk_size: u32,
    which: &[u64],
    progress: Option<&Progress>,
    after_read: &(dyn Fn(u64) + Sync),
) -> Result<Vec<(u64, Hash)>, BuildError> {
    let file = open_checked(f)?;
    let cs = u64::from(chunk_size);
    let size = f.stat.size;
    let hash_one = |k: u64| -> Result<(u64, Hash), BuildError> {
        let offset = k * cs;
        let len = (size - offset).min(cs);
        BUF.with(|b| {
            let mut buf = b.borrow_mut();
            if buf.len() < READ_PIECE {
                buf.resize(READ_PIECE, 0);
            }
            // Read and hash in cache-sized pieces: the bytes are hashed while
            // still in L2, instead of a 1 MiB copy evicting them first.
            let mut hasher = Domain::Chunk.hasher();
            let mut at = 0u64;
            while at < len {
                let n = (len - at).min(READ_PIECE as u64) as usize;
                let data = &mut buf[..n];
                read_exact_at(&file, data, offset + at).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        BuildError::Changed {
                            path: f.abs.clone(),
                            what: format!("short read at offset {}", offset + at),
                        }
                    } else {
                        io_err("read", &f.abs)(e)
                    }
                })?;
                hasher.update(data);
                at += n as u64;
            }
            after_read(k);
            if let Some(p) = progress {
                p.done.fetch_add(len, Ordering::Relaxed);
            }
            Ok((k, Hash(*hasher.finalize().as_bytes())))
        })
    };
    let out: Vec<(u64, Hash)> = if which.len() > 1 {
        which
            .par_iter()
            .map(|&k| hash_one(k))
            .collect::<Result<_, _>>()?
    } else {
        which
            .iter()
            .map(|&k| hash_one(k))
            .collect::<Result<_, _>>()?
    };
    // A file that grew past its scanned size also changed.
    let mut probe = [0u8; 1];
    match file.read_at(&mut probe, size) {
        Ok(0) => {}
        Ok(_) => {
            return Err(BuildError::Changed {
                path: f.abs.clone(),
                what: "grew while hashed".into(),
            });
        }
        Err(e) => return Err(io_err("read", &f.abs)(e)),
    }
    check_same(&file, f, "after reading")?;
    Ok(out)
}

fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn file_modified_while_hashed_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 64 * 1024]).unwrap();
        let files = scan(dir.path()).unwrap();
        let f = &files[0];
        // The writer rewrites a later chunk after the first one is read.
        let hook = |k: u64| {
            if k == 0 {
                let mut h = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
                std::io::Seek::seek(&mut h, std::io::SeekFrom::Start(40_000)).unwrap();
                h.write_all(b"changed").unwrap();
                h.sync_all().unwrap();
                // ctime/mtime granularity can be coarse: also grow the file,
                // which a concurrent writer appending would do.
                h.write_all(&[1u8; 10]).unwrap();
            }
        };
        let which: Vec<u64> = (0..16).collect();
        let err = hash_chunks(f, 4096, &which[..1], None, &hook).unwrap_err();
        assert!(matches!(err, BuildError::Changed { .. }), "{err}");
    }

    #[test]
    fn truncated_while_hashed_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 64 * 1024]).unwrap();
        let files = scan(dir.path()).unwrap();
        let hook = |k: u64| {
            if k == 0 {
                let h = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
                h.set_len(5000).unwrap();
            }
        };
        let which: Vec<u64> = (0..16).collect();
        // Sequential order so chunk 0 is read first.
        let err = which
            .iter()
            .map(|&k| hash_chunks(&files[0], 4096, &[k], None, &hook))
            .find_map(Result::err)
            .expect("truncation must be detected");
        assert!(matches!(err, BuildError::Changed { .. }), "{err}");
    }

    #[test]
    fn symlink_and_fifo_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("sub/link")).unwrap();
        let err = scan(dir.path()).unwrap_err();
        assert!(
            matches!(&err, BuildError::Symlink { path } if path.ends_with("sub/link")),
            "{err}"
        );
        assert!(err.to_string().contains("sub/link"));

        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = scan(dir.path()).unwrap_err();
        assert!(
            matches!(&err, BuildError::Special { kind: "FIFO", .. }),
            "{err}"
        );
    }

    #[test]
    fn sample_is_deterministic_and_near_rate() {
        let t = (0.25 * u64::MAX as f64) as u64;
        let n = (0..10_000).filter(|&i| sample_selected(7, i, t)).count();
        assert!((2000..3000).contains(&n), "{n}");
        let a: Vec<bool> = (0..100).map(|i| sample_selected(7, i, t)).collect();
        let b: Vec<bool> = (0..100).map(|i| sample_selected(7, i, t)).collect();
        let c: Vec<bool> = (0..100).map(|i| sample_selected(8, i, t)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(!sample_selected(7, 1, 0));
    }
}
