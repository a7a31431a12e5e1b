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

/// Why a manifest could not be built (or a directory verified).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation (`"stat"`, `"open"`, `"read"`, ...).
        op: &'static str,
        /// The path it was applied to.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The checkpoint path is not a directory (a symlink to one is refused
    /// too).
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// The checkpoint holds a symlink.
    #[error("{path} is a symlink; a checkpoint may hold only regular files and directories")]
    Symlink {
        /// Filesystem path of the symlink.
        path: PathBuf,
    },
    /// The checkpoint holds a device, FIFO or socket.
    #[error("{path} is a {kind}; a checkpoint may hold only regular files and directories")]
    Special {
        /// Filesystem path of the file.
        path: PathBuf,
        /// Its type: `"block device"`, `"character device"`, `"FIFO"`,
        /// `"socket"` or `"special file"`.
        kind: &'static str,
    },
    /// A file's path relative to the checkpoint cannot be a manifest path
    /// (see [`crate::path`]).
    #[error("{path}: unusable path: {err}")]
    BadPath {
        /// Filesystem path of the file.
        path: PathBuf,
        /// The rule it breaks.
        err: PathError,
    },
    /// A file was replaced, resized or modified (mtime or ctime moved), grew,
    /// or read short while it was being hashed.
    #[error("{path} changed while it was being hashed ({what}); retry once writers are done")]
    Changed {
        /// Filesystem path of the file.
        path: PathBuf,
        /// What changed.
        what: String,
    },
    /// The exact change set ([`Hint::Exact`]) contradicts the directory: a
    /// file listed as removed is present, a file is missing but not listed
    /// as removed, a new file is not listed as written, or a file's size
    /// changed but it is not listed as written.
    #[error("change set contradicts the directory at {path:?}: {reason}")]
    ChangeSet {
        /// Manifest path of the file.
        path: String,
        /// Which contradiction.
        reason: String,
    },
    /// An incremental build was asked for a chunk size other than the
    /// previous manifest's.
    #[error("previous manifest has chunk size {prev}, this build uses {now}")]
    ChunkSizeMismatch {
        /// Chunk size of the previous manifest.
        prev: u32,
        /// Chunk size of this build ([`BuildOptions::chunk_size`]).
        now: u32,
    },
    /// A reused chunk picked for the sampled rehash no longer has the hash
    /// the previous manifest gives it.
    #[error(
        "sampled rehash: {path:?} chunk at offset {offset} no longer matches the previous manifest; \
         the reused hashes cannot be trusted (state modified in place?)"
    )]
    SampleMismatch {
        /// Manifest path of the file.
        path: String,
        /// Byte offset of the chunk in the file.
        offset: u64,
    },
    /// The chunk size is invalid, or the result breaks a manifest rule (for
    /// example too many files or chunks).
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

/// Parameters of a build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Chunk size in bytes: a power of two in [1 KiB, 64 MiB]. An incremental
    /// build must use the previous manifest's.
    pub chunk_size: u32,
    /// Fraction of reused chunks rehashed in an incremental build (clamped to
    /// 0..=1; ignored by a full build).
    pub sample_rate: f64,
    /// At most this many bytes of reused chunks are rehashed per build: the
    /// rate is lowered for states over `budget / rate` (4 GiB by default),
    /// so the re-check costs the same on any larger state.
    pub sample_budget: u64,
    /// Height of the checkpoint; seeds the sampled rehash so that every node
    /// picks the same chunks.
    pub height: u64,
    /// Counters updated while chunks are read and hashed, if any.
    pub progress: Option<Arc<Progress>>,
}

/// Default fraction of reused chunks rehashed: 1/128. The IC rehashes 1 in
/// 10, which makes an incremental manifest with 1% of chunks changed cost ~11%
/// of a full one; at 1/128 the re-check costs less than the changes themselves
/// and a systematic error (a writer bypassing the change set, a checkpoint
/// modified through a hard link) is still caught within a few checkpoints.
/// Configurable per call (`--sample-rate`).
pub const DEFAULT_SAMPLE_RATE: f64 = 1.0 / 128.0;

/// Default cap on the bytes rehashed by the sample: 32 MiB (about 20 ms of
/// hashing from the page cache on two cores, 0.2-0.3 s from a cold disk at
/// ~150 MB/s). Below 4 GiB of reused state the rate decides; above, every
/// build rehashes 32 MiB, a different sample each height (it is keyed by
/// the height), so a systematic error that touches a fraction `f` of the
/// chunks is caught within about `1 / (32 MiB / chunk size * f)` builds,
/// and any one reused chunk is covered after `state / 32 MiB` builds.
pub const DEFAULT_SAMPLE_BUDGET: u64 = 32 << 20;
impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            chunk_size: crate::format::DEFAULT_CHUNK_SIZE,
            sample_rate: DEFAULT_SAMPLE_RATE,
            sample_budget: DEFAULT_SAMPLE_BUDGET,
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
    /// Its manifest: the source of reused chunk hashes. Must have the build's
    /// chunk size.
    pub manifest: &'a Manifest,
    /// Its directory, to recognise files hard-linked from it (same device and
    /// inode at the same path). Used only with [`Hint::Auto`].
    pub dir: Option<&'a Path>,
    /// Metadata recorded when its manifest was built ([`Built::stats`]).
    /// Used only with [`Hint::Auto`].
    pub stats: Option<&'a StatCache>,
}

/// How an incremental build decides what it may reuse.
pub enum Hint<'a> {
    /// The application's exact change set: a chunk is reused when the
    /// previous manifest has it with the same length and no written range
    /// overlaps it. Contradictions with the directory are
    /// [`BuildError::ChangeSet`] errors.
    Exact(&'a ChangeSet),
    /// Reuse a file whole when its size equals the previous manifest's and it
    /// is a hard link of the previous checkpoint's file at the same path
    /// ([`Previous::dir`]) or its (device, inode, size, mtime, ctime) equal
    /// a non-racy record in [`Previous::stats`]. Other files are hashed whole.
    Auto,
}

/// What a build did, for reports and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BuildReport {
    /// Files in the manifest.
    pub files: u64,
    /// Chunks in the manifest.
    pub chunks: u64,
    /// Total size of the files, in bytes.
    pub bytes: u64,
    /// Files reused whole from the previous manifest: not listed as written
    /// in an exact change set, or matched by [`Hint::Auto`].
    pub files_reused: u64,
    /// Chunks read and hashed, including sampled ones.
    pub chunks_hashed: u64,
    /// Bytes read and hashed, including sampled chunks.
    pub bytes_hashed: u64,
    /// Chunks whose hash was taken from the previous manifest, including
    /// sampled ones.
    pub chunks_reused: u64,
    /// Reused chunks re-read and checked by the sampled rehash.
    pub chunks_sampled: u64,
}

/// The result of a build.
#[derive(Debug)]
pub struct Built {
    /// The manifest of the directory.
    pub manifest: Manifest,
    /// Metadata of the files as scanned, for the next automatic build.
    pub stats: StatCache,
    /// What the build did.
    pub report: BuildReport,
}

/// A regular file found in a checkpoint directory.
#[derive(Clone, Debug)]
pub struct ScannedFile {
    /// Manifest path, relative to the checkpoint directory.
    pub path: String,
    /// Filesystem path: the checkpoint directory joined with the file's
    /// relative path.
    pub abs: PathBuf,
    /// Owner execute bit.
    pub executable: bool,
    /// Metadata at scan time; the file must still match it when hashed.
    pub stat: FileStat,
}

/// Lists the regular files under `dir`, recursively, sorted by manifest path
/// bytes. Symlinks, devices, sockets and FIFOs are errors naming the path.
/// Empty directories are not part of a checkpoint. `dir` itself must be a
/// directory, not a symlink to one.
pub fn scan(dir: &Path) -> Result<Vec<ScannedFile>, BuildError> {
    let (files, odd) = scan_all(dir)?;
    match odd.into_iter().next() {
        None => Ok(files),
        Some(u) if u.kind == "symlink" => Err(BuildError::Symlink { path: u.abs }),
        Some(u) => Err(BuildError::Special {
            path: u.abs,
            kind: u.kind,
        }),
    }
}

/// An entry of a directory tree that a checkpoint cannot hold: a symlink,
/// a device, a socket, a FIFO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    /// Its path relative to the scanned directory (`/`-separated, lossy for
    /// names that are not UTF-8).
    pub path: String,
    /// Absolute path.
    pub abs: PathBuf,
    /// What it is (`symlink`, `FIFO`, `socket`, ...).
    pub kind: &'static str,
}

/// Like [`scan`], but reports what a checkpoint cannot hold instead of
/// failing on it (for [`crate::verify_dir`], which names every
/// difference). Names that are not valid manifest paths still fail.
pub fn scan_all(dir: &Path) -> Result<(Vec<ScannedFile>, Vec<Unsupported>), BuildError> {
    let meta = std::fs::symlink_metadata(dir).map_err(io_err("stat", dir))?;
    if !meta.is_dir() {
        return Err(BuildError::NotADirectory(dir.to_path_buf()));
    }
    let mut out = Vec::new();
    let mut odd = Vec::new();
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
            } else {
                use std::os::unix::fs::FileTypeExt;
                let kind = if ft.is_symlink() {
                    "symlink"
                } else if ft.is_block_device() {
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
                let rel = abs.strip_prefix(dir).unwrap_or(&abs);
                odd.push(Unsupported {
                    path: rel.to_string_lossy().into_owned(),
                    abs,
                    kind,
                });
            }
        }
    }
    out.sort_unstable_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    odd.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    Ok((out, odd))
}

/// Full computation: every chunk of every file of `dir`, in parallel over
/// all cores (nested over files and chunks). `opts.sample_rate` and
/// `opts.height` are unused.
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

/// Incremental computation from the previous checkpoint: chunks are reused
/// from `prev.manifest` as `hint` allows, everything else is read and
/// hashed, and reused chunks picked by [`sample_selected`] are rehashed and
/// compared ([`BuildError::SampleMismatch`]). The result is byte-identical
/// to a full build of the same directory when the reused hashes are right.
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
    // index in the new manifest: the same choice on every node. The rate is
    // lowered so that at most `sample_budget` bytes are expected.
    let reused_bytes: u64 = plans
        .iter()
        .zip(&files)
        .map(|(plan, f)| {
            (0..plan.count)
                .filter(|&k| plan.reuse.get(k as usize).copied().flatten().is_some())
                .map(|k| (f.stat.size - k * cs).min(cs))
                .sum::<u64>()
        })
        .sum();
    let rate = sample_rate_within(opts.sample_rate, opts.sample_budget, reused_bytes);
    let threshold = (rate * u64::MAX as f64) as u64;
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

/// The sample rate to use on `bytes` of reusable chunks: `rate` (clamped
/// to 0..=1), lowered so that about `budget` bytes are sampled at most.
pub fn sample_rate_within(rate: f64, budget: u64, bytes: u64) -> f64 {
    let rate = rate.clamp(0.0, 1.0);
    if bytes == 0 {
        return rate;
    }
    rate.min(budget as f64 / bytes as f64)
}

/// True if chunk `index` (in the new manifest) is in the sample for
/// `height`: the first 8 bytes of `H_sample(height || index)`, as a
/// little-endian `u64`, are below `threshold` (`rate * 2^64`). Threshold 0
/// selects nothing.
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
