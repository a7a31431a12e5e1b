//! The chain's state: a key-value store of fixed 64-byte slots laid out in
//! page files (`kv/NNNNN.bin`), so that a block changes a few pages and a
//! checkpoint changes only partially, like page-based replica state.
//!
//! Execution writes slots in place. A live file that is still a hard link
//! of a checkpoint file is copied first ("copy-up"), so checkpoints are
//! never modified. Every write is recorded in the change set the next
//! checkpoint's incremental manifest is built from.

use crate::types::{Block, Genesis, MAX_VALUE};
use statesync_manifest::ChangeSet;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Size of a slot in bytes: a length byte, up to [`MAX_VALUE`] value bytes,
/// zero padding.
pub const SLOT: u64 = 64;

/// Shape of the state: `files` page files `kv/NNNNN.bin` of `file_size`
/// bytes each; key `k` is slot `k` counting across the files in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateLayout {
    /// Number of page files.
    pub files: u32,
    /// Size of each page file in bytes (a multiple of [`SLOT`]).
    pub file_size: u32,
}

impl StateLayout {
    /// The layout a genesis specifies.
    pub fn of(g: &Genesis) -> StateLayout {
        StateLayout {
            files: g.state_files,
            file_size: g.file_size,
        }
    }

    /// Number of slots: the keyspace is `0..slots()`.
    pub fn slots(&self) -> u64 {
        self.files as u64 * (self.file_size as u64 / SLOT)
    }

    /// Total size of the state in bytes.
    pub fn bytes(&self) -> u64 {
        self.files as u64 * self.file_size as u64
    }

    /// Relative path (manifest path) of page file `file`: `kv/NNNNN.bin`,
    /// five digits, zero-padded.
    pub fn path_of(file: u32) -> String {
        format!("kv/{file:05}.bin")
    }

    /// (file index, byte offset in it) of a key's slot, or None beyond the
    /// keyspace.
    pub fn locate(&self, key: u64) -> Option<(u32, u64)> {
        if key >= self.slots() {
            return None;
        }
        let per = self.file_size as u64 / SLOT;
        Some(((key / per) as u32, (key % per) * SLOT))
    }

    /// Writes the genesis state into `dir` (created; must not hold other
    /// files): pseudo-random bytes derived from `seed`, so nothing is a
    /// zero chunk and every node generates the same bytes.
    pub fn generate(&self, dir: &Path, seed: u64) -> std::io::Result<()> {
        std::fs::create_dir_all(dir.join("kv"))?;
        let mut buf = vec![0u8; self.file_size as usize];
        for f in 0..self.files {
            let mut m = seed.to_le_bytes().to_vec();
            m.extend_from_slice(&f.to_le_bytes());
            blake3::Hasher::new_derive_key("statesync chain v1 genesis state")
                .update(&m)
                .finalize_xof()
                .fill(&mut buf);
            let p = dir.join(StateLayout::path_of(f));
            let mut file = File::create(&p)?;
            file.write_all(&buf)?;
        }
        Ok(())
    }
}

/// The state a node executes blocks into: a directory of page files (a
/// node's `live/`) at some height, the files opened for writing, and the
/// change set since the last checkpoint.
pub struct LiveState {
    dir: PathBuf,
    layout: StateLayout,
    height: u64,
    open: HashMap<u32, File>,
    changes: ChangeSet,
}

impl LiveState {
    /// Replaces `live` by hard links of a checkpoint's files (cheap: the
    /// first write to each file copies it up). The state is then at
    /// `height`, the checkpoint's, with an empty change set.
    pub fn from_checkpoint(
        checkpoint_state: &Path,
        live: &Path,
        layout: StateLayout,
        height: u64,
    ) -> std::io::Result<LiveState> {
        match std::fs::remove_dir_all(live) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        link_tree(checkpoint_state, live)?;
        Ok(LiveState {
            dir: live.to_path_buf(),
            layout,
            height,
            open: HashMap::new(),
            changes: ChangeSet::default(),
        })
    }

    /// Height of the last block executed (or of the checkpoint it started
    /// from).
    pub fn height(&self) -> u64 {
        self.height
    }

    /// The directory holding the live files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Executes block `height + 1`, writing each transaction's slot in place
    /// and recording it in the change set. A key beyond the keyspace or an
    /// oversize value is skipped (deterministically, on every node). Any
    /// other block height is an error; so is I/O, which may leave the block
    /// partly applied (the height does not advance).
    pub fn apply(&mut self, b: &Block) -> std::io::Result<()> {
        if b.height() != self.height + 1 {
            return Err(std::io::Error::other(format!(
                "execution out of order: state at {}, block {}",
                self.height,
                b.height()
            )));
        }
        let mut slot = [0u8; SLOT as usize];
        for t in &b.txs {
            let Some((file, off)) = self.layout.locate(t.key) else {
                continue;
            };
            if t.value.len() > MAX_VALUE {
                continue;
            }
            slot.fill(0);
            slot[0] = t.value.len() as u8;
            slot[1..1 + t.value.len()].copy_from_slice(&t.value);
            let f = self.writable(file)?;
            f.write_all_at(&slot, off)?;
            self.changes
                .written
                .entry(StateLayout::path_of(file))
                .or_default()
                .push((off, off + SLOT));
        }
        self.height += 1;
        Ok(())
    }

    fn writable(&mut self, file: u32) -> std::io::Result<&mut File> {
        if !self.open.contains_key(&file) {
            let p = self.dir.join(StateLayout::path_of(file));
            let md = std::fs::metadata(&p)?;
            if md.nlink() > 1 {
                // Shared with a checkpoint: copy up before the first write.
                let tmp = p.with_extension("copyup");
                std::fs::copy(&p, &tmp)?;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
                std::fs::rename(&tmp, &p)?;
            }
            let f = std::fs::OpenOptions::new().write(true).open(&p)?;
            self.open.insert(file, f);
        }
        self.open
            .get_mut(&file)
            .ok_or_else(|| std::io::Error::other("file handle vanished"))
    }

    /// The writes since the last call, with ranges merged: the change set of
    /// the checkpoint about to be taken.
    pub fn take_changes(&mut self) -> ChangeSet {
        let mut c = std::mem::take(&mut self.changes);
        for ranges in c.written.values_mut() {
            ranges.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
            for &(s, e) in ranges.iter() {
                match merged.last_mut() {
                    Some(last) if s <= last.1 => last.1 = last.1.max(e),
                    _ => merged.push((s, e)),
                }
            }
            *ranges = merged;
        }
        c
    }

    /// Puts back a change set taken for a checkpoint that failed.
    pub fn restore_changes(&mut self, c: ChangeSet) {
        for (path, ranges) in c.written {
            self.changes.written.entry(path).or_default().extend(ranges);
        }
        self.changes.removed.extend(c.removed);
    }

    /// Flushes the data of the files opened for writing to disk
    /// (`fdatasync`; before a checkpoint is copied).
    pub fn sync(&mut self) -> std::io::Result<()> {
        for f in self.open.values() {
            f.sync_data()?;
        }
        Ok(())
    }
}

fn link_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let t = e.file_type()?;
        let to = dst.join(e.file_name());
        if t.is_dir() {
            link_tree(&e.path(), &to)?;
        } else if t.is_file() {
            std::fs::hard_link(e.path(), &to)?;
        }
    }
    Ok(())
}
