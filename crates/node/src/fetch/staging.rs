//! The staging area of one root: its directory, its verified manifest, and
//! the redb database of chunk indices durably done (with which of them were
//! written by this sync and which were trusted from a local source). Also
//! the in-place consumption of a stale checkpoint, and other roots' unfinished
//! stagings as sources of verified chunks.

use super::Result;
use super::target::IoOptions;
use redb::{Database, ReadableTable, TableDefinition};
use statesync_manifest::format::Manifest;
use statesync_manifest::hash::Hash;
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// redb's page cache for a fetch's staging database (its default is 1 GiB).
const STAGING_CACHE_BYTES: usize = 64 << 20;

const DONE: TableDefinition<u64, ()> = TableDefinition::new("done");
/// Done chunks whose bytes were not written by this sync but kept in place
/// from a consumed stale checkpoint or hard-linked from an immutable one.
const TRUSTED: TableDefinition<u64, ()> = TableDefinition::new("trusted");
/// Done chunks written by this sync: verified in memory, from the very
/// buffer handed to the kernel, then made durable; a sample of them was read
/// back from disk. The final verification samples them like trusted ones.
const WRITTEN: TableDefinition<u64, ()> = TableDefinition::new("written");

/// The staging area of one root: its directory, the verified manifest once
/// fetched, and the progress database.
pub struct Staging {
    /// `fetch/<root hex>` under the data directory.
    pub dir: PathBuf,
    /// The root being assembled.
    pub root: Hash,
    /// How its files are written.
    pub io: IoOptions,
    db: Database,
}

/// The staging area of `root` under the data directory `data`.
pub fn staging_dir(data: &Path, root: &Hash) -> PathBuf {
    data.join("fetch").join(root.to_hex())
}

impl Staging {
    /// Opens (or creates) the staging area of `root` for this sync. A
    /// progress database that is not a readable redb file vouches for none of
    /// the staged bytes: the staging area is started over.
    pub fn open(data: &Path, root: Hash, io: IoOptions) -> Result<Staging> {
        Self::open_with(data, root, io, true)
    }

    /// Opens another root's staging area to reuse its durable chunks; never
    /// removes anything.
    pub fn open_for_reuse(data: &Path, root: Hash) -> Result<Staging> {
        Self::open_with(data, root, IoOptions::default(), false)
    }

    fn open_with(
        data: &Path,
        root: Hash,
        io: IoOptions,
        start_over_if_unreadable: bool,
    ) -> Result<Staging> {
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
        let db = match statesync_store::db::open_or_create(&path, STAGING_CACHE_BYTES, init) {
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
                statesync_store::db::open_or_create(&path, STAGING_CACHE_BYTES, init)?
            }
            Err(e) => return Err(e),
        };
        Ok(Staging { dir, root, io, db })
    }

    /// Keys the deterministic samples of chunks re-read from disk.
    pub fn sample_seed(&self) -> u64 {
        u64::from_le_bytes(self.root.0[..8].try_into().unwrap_or([0; 8]))
    }

    /// Where the checkpoint's files are assembled.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The manifest saved by an earlier run, if any (verified again).
    pub fn saved_manifest(&self) -> Option<Manifest> {
        let bytes = std::fs::read(self.dir.join("manifest")).ok()?;
        Manifest::decode_verified(&bytes, &self.root).ok()
    }

    /// Saves the verified manifest durably (a restart need not fetch it).
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

    /// Commits done chunks, some of them trusted (see `TRUSTED`).
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

    /// Commits done chunks written by this sync (see `WRITTEN`).
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

    /// Chunks done without being written by this sync (see `TRUSTED`).
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

    /// Chunks written by this sync (see `WRITTEN`).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        let st = Staging::open(data.path(), root, IoOptions::default()).expect("open");
        st.commit_with(&[1, 2], &[]).expect("commit");
        std::fs::write(st.state_dir().join("f"), b"staged").expect("write");
        let dir = st.dir.clone();
        drop(st);
        assert_eq!(
            Staging::open(data.path(), root, IoOptions::default())
                .expect("reopen")
                .done()
                .expect("done")
                .len(),
            2
        );
        std::fs::write(dir.join("progress.redb"), b"what a full disk left").expect("write");
        let st = Staging::open(data.path(), root, IoOptions::default())
            .expect("open over a damaged database");
        assert!(st.done().expect("done").is_empty());
        assert!(!st.state_dir().join("f").exists(), "unvouched bytes kept");
    }
}
