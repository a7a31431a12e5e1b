//! Checkpoints on disk.
//!
//! Layout under the store root (docs/store.md):
//!
//! ```text
//! checkpoints/<height, 20 digits>/   promoted checkpoints, never modified
//!     state/...                      the checkpoint's files (read-only)
//!     manifest                       the encoded manifest
//!     stats                          local stat cache for incremental builds
//!     source-stats                   stat cache of the source directory
//! staging/<height>.<pid>.<ns>/       a checkpoint being written
//! staging/<height>.<pid>.<ns>.lock   held (flock) by its writer while alive
//! trash/                             checkpoints being deleted
//! pins/<height>.<name>               durable pins; content: the reason
//! ```
//!
//! A checkpoint is written in `staging/`, every new file and every
//! directory is fsynced, and the directory is renamed into `checkpoints/` in
//! one atomic step, then `checkpoints/` is fsynced. A crash leaves either
//! nothing or a stale staging directory, which the next [`Store::open`]
//! removes once no live writer holds its lock. Deletion renames into `trash/`
//! first, so a half-deleted checkpoint is never listed.
//!
//! This crate owns that directory tree: writing and promoting checkpoints
//! ([`Store::create_from_dir`], [`Store::adopt`], [`Staging`]), listing them
//! ([`Store::scan`]), pins and leases ([`Store::pin`], [`lease_name`]),
//! retention ([`Store::prune`]), and crash-safe creation of redb databases
//! ([`db`]).

#![warn(missing_docs)]

pub mod db;

use statesync_manifest::build::{
    BuildError, BuildOptions, BuildReport, ChangeSet, Hint, Previous, Progress, build,
    build_incremental,
};
use statesync_manifest::format::{Manifest, ManifestError};
use statesync_manifest::hash::Hash;
use statesync_manifest::stats::{FileStat, StatCache};
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Errors of [`Store`] and [`Staging`] operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`"read"`, `"rename"`, `"fsync"`, ...).
        op: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The error the operating system returned.
        source: std::io::Error,
    },
    /// A checkpoint directory at this height already exists under
    /// `checkpoints/`.
    #[error("checkpoint at height {0} already exists")]
    Exists(u64),
    /// There is no checkpoint directory at this height.
    #[error("no checkpoint at height {0}")]
    NotFound(u64),
    /// [`Store::remove`] refused to delete a pinned checkpoint.
    #[error("checkpoint {height} is pinned by {pins:?}")]
    Pinned {
        /// Height of the checkpoint.
        height: u64,
        /// Names of the pins that hold it.
        pins: Vec<String>,
    },
    /// A checkpoint's `manifest` file does not decode.
    #[error("checkpoint {path}: manifest: {err}")]
    BadManifest {
        /// Path of the manifest file.
        path: PathBuf,
        /// Why it does not decode.
        err: ManifestError,
    },
    /// A pin name that is not 1-64 characters of `[A-Za-z0-9_.-]`.
    #[error("pin name {0:?}: use 1-64 characters of [A-Za-z0-9_.-]")]
    PinName(String),
    /// [`Store::open_existing`] found no `checkpoints/` directory under this
    /// root.
    #[error("{0}: no checkpoint store there (it has no checkpoints/ directory)")]
    NoStore(PathBuf),
    /// Heights only grow: [`Store::create_from_dir`] and [`Store::adopt`]
    /// refuse a height not above the latest valid checkpoint.
    #[error("height {height} is not above the latest checkpoint {latest}")]
    NotNewer {
        /// The height asked for.
        height: u64,
        /// Height of the latest valid checkpoint.
        latest: u64,
    },
    /// Scanning a directory or building its manifest failed (for instance a
    /// symlink or special file in the source, named in the error).
    #[error(transparent)]
    Build(#[from] BuildError),
}

type Result<T> = std::result::Result<T, StoreError>;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A valid, promoted checkpoint, as listed by [`Store::scan`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointInfo {
    /// Its height (the 20-digit directory name under `checkpoints/`).
    pub height: u64,
    /// Root of its manifest (docs/manifest.md): the hash a fetcher trusts.
    pub root: Hash,
    /// Number of files in the manifest.
    pub files: u64,
    /// Number of chunks in the manifest.
    pub chunks: u64,
    /// Total size of its files, in bytes.
    pub bytes: u64,
    /// Chunk size of its manifest, in bytes.
    pub chunk_size: u32,
    /// Names of the pins on it, sorted (empty when just committed).
    pub pins: Vec<String>,
    /// Its `state/` directory, which holds the checkpoint's files (not the
    /// checkpoint directory itself).
    pub path: PathBuf,
}

/// A directory under `checkpoints/` that is not a valid checkpoint
/// (docs/store.md, invariant 3); [`Store::prune`] removes it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Invalid {
    /// The directory under `checkpoints/`.
    pub path: PathBuf,
    /// Why it is not valid: a name that is not a height, a manifest that
    /// does not decode, or no `state/` directory.
    pub reason: String,
}

/// What [`Store::open`] cleaned up.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct OpenReport {
    /// Stale staging directories of writers that died.
    pub removed_staging: Vec<PathBuf>,
    /// Entries removed from `trash/` (deletions a crash interrupted).
    pub emptied_trash: usize,
    /// Lease pins (`lease-<pid>-...`) removed because no process with that
    /// pid exists any more.
    pub stale_leases: usize,
}

/// The pid in a lease pin name (`lease-<pid>-<what>`), or `None` if the name
/// is not a lease.
pub fn lease_pid(name: &str) -> Option<u32> {
    name.strip_prefix("lease-")?.split('-').next()?.parse().ok()
}

/// The pin name of a lease held by this process: `lease-<pid>-<what>`.
/// [`Store::open`] removes such pins once that pid is gone. `what` must keep
/// the name a valid pin name (see [`StoreError::PinName`]).
pub fn lease_name(what: &str) -> String {
    format!("lease-{}-{what}", std::process::id())
}

/// What [`Store::prune`] did. Heights are in ascending order.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PruneReport {
    /// Checkpoints deleted.
    pub removed: Vec<u64>,
    /// Checkpoints kept as among the `keep_last` highest.
    pub kept: Vec<u64>,
    /// Older checkpoints kept only because they are pinned.
    pub kept_pinned: Vec<u64>,
    /// Invalid directories under `checkpoints/` that were deleted.
    pub removed_invalid: Vec<PathBuf>,
}

/// A checkpoint store: the directory tree described in the crate docs and
/// docs/store.md. It holds only the root path; all state is on disk.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

const HEIGHT_DIGITS: usize = 20;

fn height_name(h: u64) -> String {
    format!("{h:0HEIGHT_DIGITS$}")
}

fn parse_height(name: &str) -> Option<u64> {
    (name.len() == HEIGHT_DIGITS && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

fn valid_pin_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl Store {
    /// Opens a store that must exist already (a mistyped path is an error,
    /// not a new empty store); otherwise as [`Store::open`].
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<(Store, OpenReport)> {
        let root = root.into();
        if !root.join("checkpoints").is_dir() {
            return Err(StoreError::NoStore(root));
        }
        Store::open(root)
    }

    /// Opens the store at `root`, creating its directories if needed, and
    /// cleans up after crashes: removes staging directories (and lock files)
    /// whose lock no live process holds, empties the trash and drops lease
    /// pins of dead processes. Fails only on I/O errors.
    pub fn open(root: impl Into<PathBuf>) -> Result<(Store, OpenReport)> {
        let root = root.into();
        for d in ["checkpoints", "staging", "trash", "pins"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io("create", &p))?;
        }
        let store = Store { root };
        let mut rep = OpenReport::default();
        let staging = store.root.join("staging");
        for e in std::fs::read_dir(&staging).map_err(io("read", &staging))? {
            let e = e.map_err(io("read", &staging))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".lock") {
                continue;
            }
            let lock_path = staging.join(format!("{name}.lock"));
            // A live writer holds the lock; a dead one's lock is free.
            if let Ok(f) = File::open(&lock_path)
                && !try_flock(&f)
            {
                continue;
            }
            remove_tree(&e.path())?;
            let _ = std::fs::remove_file(&lock_path);
            rep.removed_staging.push(e.path());
        }
        // Lock files whose directory is gone.
        for e in std::fs::read_dir(&staging).map_err(io("read", &staging))? {
            let e = e.map_err(io("read", &staging))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(dir) = name.strip_suffix(".lock")
                && !staging.join(dir).exists()
                && let Ok(f) = File::open(e.path())
                && try_flock(&f)
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
        rep.emptied_trash = store.empty_trash()?;
        // Leases of serving processes that died (pins named lease-<pid>-...).
        for (h, name) in store.pins()? {
            if let Some(pid) = lease_pid(&name)
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = store.unpin(h, &name);
                rep.stale_leases += 1;
            }
        }
        Ok((store, rep))
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn checkpoint_dir(&self, h: u64) -> PathBuf {
        self.root.join("checkpoints").join(height_name(h))
    }

    /// Directory holding the files of checkpoint `h`
    /// (`checkpoints/<h>/state`), whether or not it exists.
    pub fn state_dir(&self, h: u64) -> PathBuf {
        self.checkpoint_dir(h).join("state")
    }

    fn empty_trash(&self) -> Result<usize> {
        let trash = self.root.join("trash");
        let mut n = 0;
        for e in std::fs::read_dir(&trash).map_err(io("read", &trash))? {
            let e = e.map_err(io("read", &trash))?;
            remove_tree(&e.path())?;
            n += 1;
        }
        Ok(n)
    }

    /// Valid checkpoints, lowest height first, and the directories under
    /// `checkpoints/` that are not valid. A checkpoint that fails to load is
    /// reported in the second list, not as an error; errors are I/O failures
    /// reading `checkpoints/` or `pins/`.
    pub fn scan(&self) -> Result<(Vec<CheckpointInfo>, Vec<Invalid>)> {
        let dir = self.root.join("checkpoints");
        let mut valid = Vec::new();
        let mut invalid = Vec::new();
        let pins = self.pins()?;
        for e in std::fs::read_dir(&dir).map_err(io("read", &dir))? {
            let e = e.map_err(io("read", &dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(h) = parse_height(&name) else {
                invalid.push(Invalid {
                    path: e.path(),
                    reason: "name is not a height".into(),
                });
                continue;
            };
            match self.load_manifest(h) {
                Ok(m) => {
                    if !e.path().join("state").is_dir() {
                        invalid.push(Invalid {
                            path: e.path(),
                            reason: "no state directory".into(),
                        });
                        continue;
                    }
                    valid.push(CheckpointInfo {
                        height: h,
                        root: m.root(),
                        files: m.files().len() as u64,
                        chunks: m.chunks().len() as u64,
                        bytes: m.total_size(),
                        chunk_size: m.chunk_size(),
                        pins: pins
                            .iter()
                            .filter(|(ph, _)| *ph == h)
                            .map(|(_, n)| n.clone())
                            .collect(),
                        path: self.state_dir(h),
                    })
                }
                Err(err) => invalid.push(Invalid {
                    path: e.path(),
                    reason: err.to_string(),
                }),
            }
        }
        valid.sort_by_key(|c| c.height);
        Ok((valid, invalid))
    }

    /// Valid checkpoints, lowest height first.
    pub fn list(&self) -> Result<Vec<CheckpointInfo>> {
        Ok(self.scan()?.0)
    }

    /// The highest valid checkpoint, or `None` if there is none.
    pub fn latest(&self) -> Result<Option<CheckpointInfo>> {
        Ok(self.list()?.pop())
    }

    /// Reads and decodes the manifest of checkpoint `h`.
    ///
    /// Errors: [`StoreError::NotFound`] if there is no checkpoint directory
    /// at `h`, [`StoreError::BadManifest`] if the file does not decode,
    /// [`StoreError::Io`] if it cannot be read.
    pub fn load_manifest(&self, h: u64) -> Result<Manifest> {
        let p = self.checkpoint_dir(h).join("manifest");
        let bytes = std::fs::read(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound && !self.checkpoint_dir(h).exists() {
                StoreError::NotFound(h)
            } else {
                io("read", &p)(e)
            }
        })?;
        Manifest::decode(&bytes).map_err(|err| StoreError::BadManifest { path: p, err })
    }

    /// The stat cache of checkpoint `h`, if present and readable (a missing
    /// or damaged cache only costs rehashing).
    pub fn load_stats(&self, h: u64) -> Option<StatCache> {
        let bytes = std::fs::read(self.checkpoint_dir(h).join("stats")).ok()?;
        StatCache::decode(&bytes).ok()
    }

    fn load_source_stats(&self, h: u64) -> Option<StatCache> {
        let bytes = std::fs::read(self.checkpoint_dir(h).join("source-stats")).ok()?;
        StatCache::decode(&bytes).ok()
    }

    /// Starts writing checkpoint `height` in the staging area: creates and
    /// flocks `staging/<height>.<pid>.<ns>.lock`, then the staging directory
    /// with an empty `state/`.
    ///
    /// Fails with [`StoreError::Exists`] if that height is already promoted.
    /// It does not check that `height` is above the latest checkpoint
    /// ([`Store::create_from_dir`] and [`Store::adopt`] do).
    pub fn begin(&self, height: u64) -> Result<Staging> {
        if self.checkpoint_dir(height).exists() {
            return Err(StoreError::Exists(height));
        }
        let name = format!(
            "{}.{}.{}",
            height_name(height),
            std::process::id(),
            statesync_manifest::stats::now_ns()
        );
        let staging = self.root.join("staging");
        let lock_path = staging.join(format!("{name}.lock"));
        let lock = File::create(&lock_path).map_err(io("create", &lock_path))?;
        if !try_flock(&lock) {
            return Err(StoreError::Io {
                op: "lock",
                path: lock_path,
                source: std::io::Error::other("staging lock is held"),
            });
        }
        let dir = staging.join(&name);
        std::fs::create_dir_all(dir.join("state")).map_err(io("create", &dir))?;
        Ok(Staging {
            height,
            dir,
            lock_path,
            _lock: lock,
            target: self.checkpoint_dir(height),
            checkpoints: self.root.join("checkpoints"),
            done: false,
        })
    }

    /// Creates checkpoint `height` from a copy of `src`.
    ///
    /// Files unchanged since the previous checkpoint (by the change set if
    /// given, else by the source file's recorded metadata) are hard-linked
    /// from it instead of copied, and the manifest is built incrementally:
    /// cost follows what changed, not the state size. Copied files are made
    /// read-only (0444, or 0555 if executable). Without a previous
    /// checkpoint, with `opts.incremental` false, or when the previous
    /// checkpoint's chunk size differs from `opts.chunk_size`, every file is
    /// copied and hashed.
    ///
    /// Errors: [`StoreError::NotNewer`] unless `height` is above the latest
    /// checkpoint, [`StoreError::Build`] for a symlink or special file in
    /// `src` or a failed build, [`StoreError::Io`] otherwise. On error
    /// nothing is left in the store.
    pub fn create_from_dir(
        &self,
        height: u64,
        src: &Path,
        opts: &CreateOptions,
    ) -> Result<Created> {
        let prev = self.latest()?;
        if let Some(p) = &prev
            && p.height >= height
        {
            return Err(StoreError::NotNewer {
                height,
                latest: p.height,
            });
        }
        let staging = self.begin(height)?;
        let state = staging.state_dir();
        let recorded = statesync_manifest::stats::now_ns();
        let files = statesync_manifest::build::scan(src)?;
        let prev_ctx = match &prev {
            Some(p) if opts.incremental => {
                let m = self.load_manifest(p.height)?;
                (m.chunk_size() == opts.chunk_size).then(|| {
                    (
                        p.height,
                        m,
                        self.load_stats(p.height),
                        self.load_source_stats(p.height),
                    )
                })
            }
            _ => None,
        };
        let mut source_stats = StatCache::new(recorded);
        let mut linked = 0u64;
        // Parents created so far: one mkdir per directory, not per file.
        let mut made: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
        for f in &files {
            let dst = statesync_manifest::path::join(&state, &f.path);
            if let Some(parent) = dst.parent()
                && !made.contains(parent)
            {
                std::fs::create_dir_all(parent).map_err(io("create", parent))?;
                made.insert(parent.to_path_buf());
            }
            let unchanged = prev_ctx.as_ref().is_some_and(|(ph, m, _, ss)| {
                let in_prev = m
                    .find(&f.path)
                    .is_some_and(|i| m.files()[i].size == f.stat.size);
                let by_changes = opts
                    .changes
                    .as_ref()
                    .map(|c| !c.written.contains_key(&f.path));
                let by_stat = || {
                    ss.as_ref()
                        .and_then(|s| s.get(&f.path))
                        .is_some_and(|c| c.trustworthy_match(&f.stat))
                };
                in_prev
                    && by_changes.unwrap_or_else(by_stat)
                    && self.state_dir(*ph).join(&f.path).is_file()
            });
            if let Some((ph, _, _, _)) = prev_ctx.as_ref().filter(|_| unchanged) {
                let from = statesync_manifest::path::join(&self.state_dir(*ph), &f.path);
                std::fs::hard_link(&from, &dst).map_err(io("link", &dst))?;
                linked += 1;
                // Nothing was read from the source: its metadata from the
                // scan is what the next build compares (had it changed
                // since, the next build sees another stat and rehashes).
                source_stats.insert(f.path.clone(), f.stat);
                continue;
            }
            copy_file(&f.abs, &dst, f.executable)?;
            // Record the source as it was when copied; a source file that
            // moved during the copy will not match next time.
            let now = std::fs::symlink_metadata(&f.abs).map_err(io("stat", &f.abs))?;
            if FileStat::of(&now) == f.stat {
                source_stats.insert(f.path.clone(), f.stat);
            }
        }
        let bopts = BuildOptions {
            chunk_size: opts.chunk_size,
            sample_rate: opts.sample_rate,
            sample_budget: opts.sample_budget,
            height,
            progress: opts.progress.clone(),
        };
        let built = match &prev_ctx {
            Some((ph, m, stats, _)) => {
                let pdir = self.state_dir(*ph);
                let p = Previous {
                    manifest: m,
                    dir: Some(&pdir),
                    stats: stats.as_ref(),
                };
                let hint = match &opts.changes {
                    Some(c) => Hint::Exact(c),
                    None => Hint::Auto,
                };
                build_incremental(&state, &bopts, &p, hint)?
            }
            None => build(&state, &bopts)?,
        };
        let info = staging.commit(&built.manifest, &built.stats, Some(&source_stats))?;
        Ok(Created {
            info,
            report: built.report,
            files_linked: linked,
            incremental: prev_ctx.is_some(),
        })
    }

    /// Takes in a complete, verified checkpoint directory (a state sync's
    /// result) as checkpoint `height` by renaming it into the store (same
    /// filesystem), with its manifest. The caller has verified `dir` against
    /// `manifest`; the store neither re-hashes `dir` nor changes its files'
    /// permissions.
    ///
    /// Errors: [`StoreError::NotNewer`] unless `height` is above the latest
    /// checkpoint. If it fails after `dir` was renamed into the staging
    /// area, `dir`'s files are deleted with the staging directory.
    pub fn adopt(&self, height: u64, dir: &Path, manifest: &Manifest) -> Result<CheckpointInfo> {
        if let Some(p) = self.latest()?
            && p.height >= height
        {
            return Err(StoreError::NotNewer {
                height,
                latest: p.height,
            });
        }
        let staging = self.begin(height)?;
        let state = staging.state_dir();
        std::fs::remove_dir(&state).map_err(io("remove", &state))?;
        std::fs::rename(dir, &state).map_err(io("rename", dir))?;
        let mut stats = StatCache::new(statesync_manifest::stats::now_ns());
        for f in statesync_manifest::build::scan(&state)? {
            stats.insert(f.path, f.stat);
        }
        staging.commit(manifest, &stats, None)
    }

    /// All durable pins as `(height, name)`, sorted, parsed from the
    /// `pins/<height>.<name>` file names.
    pub fn pins(&self) -> Result<Vec<(u64, String)>> {
        let dir = self.root.join("pins");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io("read", &dir))? {
            let e = e.map_err(io("read", &dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some((h, n)) = name.split_once('.')
                && let Some(h) = parse_height(h)
            {
                out.push((h, n.to_string()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Pins checkpoint `height` under `name`, durably (the pin file holds
    /// `reason`); pinning again under the same name replaces the reason. A
    /// pinned checkpoint is never deleted by [`Store::remove`] or
    /// [`Store::prune`].
    ///
    /// Errors: [`StoreError::PinName`] for an invalid name,
    /// [`StoreError::NotFound`] if there is no checkpoint directory at
    /// `height`.
    pub fn pin(&self, height: u64, name: &str, reason: &str) -> Result<()> {
        if !valid_pin_name(name) {
            return Err(StoreError::PinName(name.into()));
        }
        if !self.checkpoint_dir(height).exists() {
            return Err(StoreError::NotFound(height));
        }
        let p = self
            .root
            .join("pins")
            .join(format!("{}.{name}", height_name(height)));
        write_durable(&p, reason.as_bytes())
    }

    /// Removes pin `name` of checkpoint `height`, durably. Returns whether
    /// the pin existed; [`StoreError::PinName`] for an invalid name.
    pub fn unpin(&self, height: u64, name: &str) -> Result<bool> {
        if !valid_pin_name(name) {
            return Err(StoreError::PinName(name.into()));
        }
        let p = self
            .root
            .join("pins")
            .join(format!("{}.{name}", height_name(height)));
        match std::fs::remove_file(&p) {
            Ok(()) => {
                fsync_dir(&self.root.join("pins"))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("remove", &p)(e)),
        }
    }

    /// Deletes checkpoint `h` (renamed into `trash/` first) unless pinned.
    ///
    /// Errors: [`StoreError::Pinned`] naming its pins,
    /// [`StoreError::NotFound`] if there is no checkpoint directory at `h`.
    pub fn remove(&self, h: u64) -> Result<()> {
        let pins: Vec<String> = self
            .pins()?
            .into_iter()
            .filter(|(ph, _)| *ph == h)
            .map(|(_, n)| n)
            .collect();
        if !pins.is_empty() {
            return Err(StoreError::Pinned { height: h, pins });
        }
        let dir = self.checkpoint_dir(h);
        if !dir.exists() {
            return Err(StoreError::NotFound(h));
        }
        self.trash(&dir)
    }

    fn trash(&self, dir: &Path) -> Result<()> {
        let name = format!(
            "{}.{}",
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            statesync_manifest::stats::now_ns()
        );
        let t = self.root.join("trash").join(name);
        std::fs::rename(dir, &t).map_err(io("rename", dir))?;
        fsync_dir(&self.root.join("checkpoints"))?;
        remove_tree(&t)
    }

    /// Keeps the `keep_last` highest valid checkpoints and every pinned one;
    /// deletes the rest and every invalid directory under `checkpoints/`,
    /// then removes pins whose checkpoint no longer exists.
    pub fn prune(&self, keep_last: usize) -> Result<PruneReport> {
        let (valid, invalid) = self.scan()?;
        let mut rep = PruneReport::default();
        let n = valid.len();
        for (i, c) in valid.into_iter().enumerate() {
            if i + keep_last >= n {
                rep.kept.push(c.height);
            } else if !c.pins.is_empty() {
                rep.kept_pinned.push(c.height);
            } else {
                self.trash(&self.checkpoint_dir(c.height))?;
                rep.removed.push(c.height);
            }
        }
        for inv in invalid {
            self.trash(&inv.path)?;
            rep.removed_invalid.push(inv.path);
        }
        // Pins of checkpoints that no longer exist.
        for (h, n) in self.pins()? {
            if !self.checkpoint_dir(h).exists() {
                let _ = self.unpin(h, &n);
            }
        }
        Ok(rep)
    }
}

/// Options of [`Store::create_from_dir`]. The default builds incrementally
/// with the manifest crate's default chunk size (1 MiB) and sample rate
/// (1/128), without a change set.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Chunk size of the manifest, in bytes.
    pub chunk_size: u32,
    /// Fraction (0..=1) of reused chunks rehashed in an incremental build,
    /// to catch files modified behind the change set or through a hard link.
    pub sample_rate: f64,
    /// At most this many bytes rehashed by that sample
    /// (`statesync_manifest::build::DEFAULT_SAMPLE_BUDGET`).
    pub sample_budget: u64,
    /// Build from the previous checkpoint when there is one: hard-link
    /// unchanged files and hash only what changed. `false` copies and hashes
    /// everything (`--full`).
    pub incremental: bool,
    /// The application's exact change set since the previous checkpoint.
    /// With it, a file not in `written` counts as unchanged; without it, a
    /// file is unchanged if its recorded source metadata still matches.
    pub changes: Option<ChangeSet>,
    /// Counters the manifest build updates (bytes to hash, bytes hashed),
    /// for a progress display.
    pub progress: Option<Arc<Progress>>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            chunk_size: statesync_manifest::format::DEFAULT_CHUNK_SIZE,
            sample_rate: statesync_manifest::build::DEFAULT_SAMPLE_RATE,
            sample_budget: statesync_manifest::build::DEFAULT_SAMPLE_BUDGET,
            incremental: true,
            changes: None,
            progress: None,
        }
    }
}

/// What [`Store::create_from_dir`] made.
#[derive(Debug)]
pub struct Created {
    /// The promoted checkpoint.
    pub info: CheckpointInfo,
    /// What the manifest build hashed and reused.
    pub report: BuildReport,
    /// Files hard-linked from the previous checkpoint instead of copied.
    pub files_linked: u64,
    /// Whether it was built from the previous checkpoint (false for the
    /// first one, with `incremental: false`, or after a chunk size change).
    pub incremental: bool,
}

/// A checkpoint being written (from [`Store::begin`]), holding the lock on
/// its staging directory. Dropped without [`Staging::commit`], it is
/// removed; after a crash, the next [`Store::open`] removes it.
pub struct Staging {
    height: u64,
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: File,
    target: PathBuf,
    checkpoints: PathBuf,
    done: bool,
}

impl Staging {
    /// The height it will be promoted at.
    pub fn height(&self) -> u64 {
        self.height
    }

    /// Where to write the checkpoint's files (`state/` in the staging
    /// directory).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Makes the state directory durable, writes `manifest`, `stats` and
    /// (if given) `source-stats` durably, and promotes the checkpoint
    /// atomically: rename into `checkpoints/`, then fsync `checkpoints/`.
    ///
    /// Every directory and every file with a single link is fsynced; files
    /// with more links are taken to be hard links of an older, already
    /// durable checkpoint. Permissions are not changed: files should already
    /// be read-only. The manifest must describe the state directory (callers
    /// build it from there). Fails with [`StoreError::Exists`] if the height
    /// was promoted meanwhile.
    pub fn commit(
        mut self,
        manifest: &Manifest,
        stats: &StatCache,
        source_stats: Option<&StatCache>,
    ) -> Result<CheckpointInfo> {
        let state = self.state_dir();
        sync_tree(&state)?;
        write_durable(&self.dir.join("manifest"), &manifest.encode())?;
        write_durable(&self.dir.join("stats"), &stats.encode())?;
        if let Some(s) = source_stats {
            write_durable(&self.dir.join("source-stats"), &s.encode())?;
        }
        fsync_dir(&self.dir)?;
        if self.target.exists() {
            return Err(StoreError::Exists(self.height));
        }
        std::fs::rename(&self.dir, &self.target).map_err(io("rename", &self.dir))?;
        fsync_dir(&self.checkpoints)?;
        self.done = true;
        let _ = std::fs::remove_file(&self.lock_path);
        Ok(CheckpointInfo {
            height: self.height,
            root: manifest.root(),
            files: manifest.files().len() as u64,
            chunks: manifest.chunks().len() as u64,
            bytes: manifest.total_size(),
            chunk_size: manifest.chunk_size(),
            pins: Vec::new(),
            path: self.target.join("state"),
        })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = remove_tree(&self.dir);
            let _ = std::fs::remove_file(&self.lock_path);
        }
    }
}

fn try_flock(f: &File) -> bool {
    // SAFETY: flock on a file descriptor we own; no memory is touched.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Copies a file (copy_file_range where the kernel offers it), read-only.
fn copy_file(src: &Path, dst: &Path, executable: bool) -> Result<()> {
    std::fs::copy(src, dst).map_err(io("copy", src))?;
    let mode = if executable { 0o555 } else { 0o444 };
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode))
        .map_err(io("chmod", dst))?;
    Ok(())
}

fn write_durable(p: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    // A temporary name of its own (hidden, per process and call): two
    // writers of pins at one height must not share one, and a leftover
    // never parses as a pin.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = p
        .file_name()
        .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
    let tmp = p.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(data).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    std::fs::rename(&tmp, p).map_err(io("rename", &tmp))?;
    if let Some(parent) = p.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

fn fsync_dir(p: &Path) -> Result<()> {
    File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync", p))
}

/// fsyncs every directory under `root` (and `root`) and every file with a
/// single link; files with more links are taken to be hard links of an
/// older checkpoint, already durable, and skipped.
fn sync_tree(root: &Path) -> Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io("read", &d))? {
            let e = e.map_err(io("read", &d))?;
            let md = std::fs::symlink_metadata(e.path()).map_err(io("stat", &e.path()))?;
            if md.is_dir() {
                stack.push(e.path());
            } else if md.nlink() == 1 {
                File::open(e.path())
                    .and_then(|f| f.sync_all())
                    .map_err(io("fsync", &e.path()))?;
            }
        }
        fsync_dir(&d)?;
    }
    Ok(())
}

/// Removes a directory tree; read-only files go too (their directory is
/// writable).
fn remove_tree(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", p)(e)),
    }
}
