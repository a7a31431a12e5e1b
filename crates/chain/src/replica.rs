//! A replica of the reference chain on disk: checkpoint store, block store
//! and live state, kept consistent across crashes.
//!
//! This module owns a node's data directory (docs/chain.md, "On disk"):
//! importing and producing blocks, taking checkpoints with retention,
//! backfill, adopting state-synced checkpoints, and recovery on open.
//!
//! Layout of the data directory:
//! * `store/`: checkpoints (see docs/store.md) at checkpoint heights (every
//!   `checkpoint_interval` blocks; while catching up, only the last one of
//!   each import), the last `keep` kept (plus pins/leases);
//! * `anchors/<height>`: the block at each checkpoint height, so the block
//!   store can always be re-anchored on a checkpoint;
//! * `blocks.redb`: verified blocks `[low, high]`;
//! * `live/`: the state being executed into (rebuilt from the latest
//!   checkpoint + stored blocks on every start, so a crash at any write
//!   leaves nothing to repair by hand).

use crate::blockstore::{BlockStore, StoreError as BlockStoreError};
use crate::state::{LiveState, StateLayout};
use crate::types::{Block, ChainError, Spec, ValidatorKey};
use statesync_manifest::{Hash, Manifest};
use statesync_store::{CreateOptions, Store};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Whose fault an import failure is.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The block is invalid: the peer that sent it is at fault.
    #[error("bad block: {0}")]
    Bad(#[from] ChainError),
    /// Our own failure (disk, database): nobody else's; retry later.
    #[error("local failure: {0}")]
    Local(String),
    /// Our state diverged from the chain's committed root: a critical error,
    /// never retried silently (the IC treats it the same way).
    #[error("fatal: {0}")]
    Fatal(String),
}

fn local<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> ImportError + '_ {
    move |e| ImportError::Local(format!("{what}: {e}"))
}

impl From<BlockStoreError> for ImportError {
    fn from(e: BlockStoreError) -> Self {
        match e {
            BlockStoreError::Chain(c) => ImportError::Bad(c),
            other => ImportError::Local(other.to_string()),
        }
    }
}

/// What [`Replica::open_with`] found and did. All zero/false when it opened
/// without state.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct OpenReport {
    /// Height of the checkpoint the live state was rebuilt from (0: genesis).
    pub checkpoint: u64,
    /// Stored blocks replayed above it.
    pub replayed: u64,
    /// Executed head after the replay.
    pub head: u64,
    /// The block store's backfill pointer ([`Replica::low`]).
    pub low: u64,
    /// Whether the genesis state was generated (there was no checkpoint).
    pub generated_genesis: bool,
    /// Whether the block store, which did not reach the checkpoint, was
    /// reset to the checkpoint's anchor block.
    pub reanchored: bool,
}

/// What an import did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ImportReport {
    /// Blocks executed.
    pub imported: u64,
    /// Checkpoints taken: (height, state root in hex).
    pub checkpoints: Vec<(u64, String)>,
    /// Wall-clock seconds spent executing blocks.
    pub exec_secs: f64,
    /// Wall-clock seconds spent taking checkpoints.
    pub checkpoint_secs: f64,
}

/// A replica of the chain in a data directory (layout in the module docs):
/// checkpoint store, block store and live state.
pub struct Replica {
    /// The chain's verified genesis.
    pub spec: Spec,
    /// The checkpoint store (`store/`).
    pub store: Store,
    /// The block store (`blocks.redb`), shareable with the serving side.
    pub blocks: std::sync::Arc<BlockStore>,
    live: Option<LiveState>,
    data: PathBuf,
    /// Checkpoints kept by retention (pins and serving leases come on top);
    /// 3 after open.
    pub keep: usize,
    /// Blocks of history kept below the head (never fewer than back to the
    /// oldest kept checkpoint); `None` keeps all (an archive). `None` after
    /// open.
    pub keep_blocks: Option<u64>,
    /// Take a checkpoint at every checkpoint height even inside a long
    /// import (else only at the last one of each import call); false after
    /// open.
    pub checkpoint_every: bool,
    head_hash: Hash,
    /// A proposal executed into the live state but not final yet (this
    /// node's own as the proposer, or one it voted for).
    pending: Option<Block>,
}

fn anchor_path(data: &Path, h: u64) -> PathBuf {
    data.join("anchors").join(format!("{h:020}"))
}

impl Replica {
    /// Opens (or creates) a replica, generating the genesis state if there
    /// is no checkpoint on disk: [`Replica::open_with`] with `create_genesis`.
    pub fn open(data: &Path, spec: Spec) -> Result<(Replica, OpenReport), ImportError> {
        Replica::open_with(data, spec, true)
    }

    /// Opens (or creates) a replica in `data` and recovers from a crash:
    /// drops checkpoints without an anchor block, makes the block store
    /// reach the latest checkpoint (extended by its anchor block when that
    /// links, else reset to it), rebuilds `live/` from the checkpoint and
    /// replays the stored blocks above it. Without a checkpoint on disk, the
    /// genesis state is generated when `create_genesis`; otherwise the block
    /// store is cleared and the replica has no state until
    /// [`Replica::adopt`] or [`Replica::init_genesis`].
    pub fn open_with(
        data: &Path,
        spec: Spec,
        create_genesis: bool,
    ) -> Result<(Replica, OpenReport), ImportError> {
        std::fs::create_dir_all(data.join("anchors")).map_err(local("create data dir"))?;
        let (store, _) = Store::open(data.join("store")).map_err(local("open checkpoint store"))?;
        let blocks = BlockStore::open(&data.join("blocks.redb"))?;
        let layout = StateLayout::of(&spec.genesis);
        let mut rep = OpenReport::default();
        // A checkpoint without its anchor block was never made final (the
        // leader crashed between the two): drop it.
        let mut latest = store.latest().map_err(local("list checkpoints"))?;
        while let Some(c) = latest
            .as_ref()
            .filter(|c| c.height > 0 && !anchor_path(data, c.height).exists())
        {
            store
                .remove(c.height)
                .map_err(local("remove unanchored checkpoint"))?;
            latest = store.latest().map_err(local("list checkpoints"))?;
        }
        let bounds = blocks.bounds()?;
        let latest = match latest {
            Some(c) => c,
            None if !create_genesis => {
                blocks.clear()?;
                let r = Replica {
                    head_hash: spec.id,
                    spec,
                    store,
                    blocks: std::sync::Arc::new(blocks),
                    live: None,
                    data: data.to_path_buf(),
                    keep: 3,
                    keep_blocks: None,
                    checkpoint_every: false,
                    pending: None,
                };
                return Ok((r, rep));
            }
            None => {
                // No checkpoint: genesis. Blocks above it only make sense
                // if they start at 1.
                if bounds.is_some_and(|(low, _)| low > 1) {
                    blocks.clear()?;
                }
                let tmp = data.join("genesis.tmp");
                let _ = std::fs::remove_dir_all(&tmp);
                layout
                    .generate(&tmp, spec.genesis.seed)
                    .map_err(local("generate genesis state"))?;
                let c = store
                    .create_from_dir(0, &tmp, &CreateOptions::default())
                    .map_err(local("create genesis checkpoint"))?;
                let _ = std::fs::remove_dir_all(&tmp);
                rep.generated_genesis = true;
                c.info
            }
        };
        let c = latest.height;
        rep.checkpoint = c;
        // Make the block store start at or below the checkpoint and reach it.
        let bounds = blocks.bounds()?;
        if c > 0 {
            let anchor = std::fs::read(anchor_path(data, c))
                .map_err(local("read checkpoint anchor block"))
                .and_then(|b| Block::decode(&b).map_err(local("decode checkpoint anchor block")))?;
            let ok = match bounds {
                Some((low, high)) => low <= c && high >= c,
                None => false,
            };
            if !ok {
                let linkable = match bounds {
                    Some((low, high)) if high + 1 == c && low <= high => blocks
                        .get(high)?
                        .is_some_and(|b| b.hash() == anchor.header.parent),
                    _ => false,
                };
                if linkable {
                    blocks.append(std::slice::from_ref(&anchor), &spec.id)?;
                } else {
                    blocks.reset_to(&anchor)?;
                    rep.reanchored = true;
                }
            }
        }
        let live = LiveState::from_checkpoint(&latest.path, &data.join("live"), layout, c)
            .map_err(local("link live state"))?;
        let mut r = Replica {
            head_hash: spec.id,
            spec,
            store,
            blocks: std::sync::Arc::new(blocks),
            live: Some(live),
            data: data.to_path_buf(),
            keep: 3,
            keep_blocks: None,
            checkpoint_every: false,
            pending: None,
        };
        // Replay what the block store holds above the checkpoint.
        rep.replayed = r.replay_stored()?;
        rep.head = r.head().0;
        rep.low = r.low();
        Ok((r, rep))
    }

    /// The data directory.
    pub fn data(&self) -> &Path {
        &self.data
    }

    /// Final head: height and block hash (genesis, or no state: 0 and the
    /// chain id). A pending proposal executed above it is not counted
    /// ([`Replica::pending`]).
    pub fn head(&self) -> (u64, Hash) {
        if let Some(p) = &self.pending {
            return (p.height() - 1, p.header.parent);
        }
        (self.live.as_ref().map_or(0, |l| l.height()), self.head_hash)
    }

    /// The proposal executed above the final head, not final yet.
    pub fn pending(&self) -> Option<&Block> {
        self.pending.as_ref()
    }

    fn proposal_path(&self) -> PathBuf {
        self.data.join("proposal")
    }

    fn vote_path(&self) -> PathBuf {
        self.data.join("vote")
    }

    /// The proposer's step when validators vote: builds block head+1 (or
    /// takes the one it proposed before a crash, which validators may have
    /// voted for), saves it durably, executes it (taking the checkpoint its
    /// header commits to, not served before the block is final) and signs
    /// it as [`crate::PROPOSER`]. The block stays pending until
    /// [`Replica::import`] gets it with a quorum. A pending proposal is
    /// returned again.
    pub fn propose(&mut self, key: &ValidatorKey, time_ms: u64) -> Result<Block, ImportError> {
        if let Some(p) = &self.pending {
            return Ok(p.clone());
        }
        let (head, parent) = self.head();
        let h = head + 1;
        let saved = std::fs::read(self.proposal_path())
            .ok()
            .and_then(|b| Block::decode(&b).ok())
            .filter(|b| {
                b.height() == h && b.header.parent == parent && self.spec.verify_proposal(b).is_ok()
            });
        if let Some(b) = saved {
            self.execute_pending(b.clone())?;
            return Ok(b);
        }
        let txs = self.spec.gen_txs(h);
        let r = (|| {
            let unsigned = self
                .spec
                .produce(parent, h, txs.clone(), Hash::ZERO, time_ms, &[]);
            self.live()?.apply(&unsigned).map_err(local("execute"))?;
            let root = if self.spec.is_checkpoint(h) {
                let live = self.live()?;
                live.sync().map_err(local("flush live state"))?;
                let changes = live.take_changes();
                let dir = live.dir().to_path_buf();
                self.create_checkpoint(h, &dir, changes, None)?
            } else {
                Hash::ZERO
            };
            let b = self.spec.produce(
                parent,
                h,
                txs,
                root,
                time_ms,
                &[(crate::types::PROPOSER, key.clone())],
            );
            write_durable(&self.proposal_path(), &b.encode()).map_err(local("save proposal"))?;
            Ok(b)
        })();
        match r {
            Ok(b) => {
                self.pending = Some(b.clone());
                Ok(b)
            }
            Err(e) => {
                self.rebuild()?;
                Err(e)
            }
        }
    }

    /// A validator's step: checks proposal `b` ([`Spec::verify_proposal`],
    /// its parent is the final head), executes it (and its checkpoint,
    /// whose root must match the header), records the vote durably and
    /// returns validator `me`'s vote. One vote per height, ever: another
    /// block at a height already voted for is refused (a restart
    /// included); the same block again gets the same vote.
    pub fn vote(
        &mut self,
        me: u16,
        key: &ValidatorKey,
        b: &Block,
    ) -> Result<[u8; 64], ImportError> {
        self.spec.verify_proposal(b)?;
        let _ = me;
        let hash = b.hash();
        if let Some(p) = &self.pending {
            if p.hash() == hash {
                return Ok(Spec::vote(key, &hash));
            }
            if p.height() == b.height() {
                return Err(ImportError::Local(format!(
                    "already voted for another block at height {}",
                    b.height()
                )));
            }
            // A stale proposal (the chain moved on without it).
            self.drop_pending()?;
        }
        let (head, parent) = self.head();
        if b.height() != head + 1 {
            return Err(ImportError::Local(format!(
                "a proposal for height {}, the head is {head}",
                b.height()
            )));
        }
        if b.header.parent != parent {
            return Err(ChainError::ParentMismatch { height: b.height() }.into());
        }
        if let Ok(v) = std::fs::read(self.vote_path())
            && v.len() == 40
        {
            let mut hh = [0u8; 8];
            hh.copy_from_slice(&v[..8]);
            let mut voted = [0u8; 32];
            voted.copy_from_slice(&v[8..]);
            if u64::from_le_bytes(hh) == b.height() && voted != hash.0 {
                return Err(ImportError::Local(format!(
                    "already voted for another block at height {} (before a restart)",
                    b.height()
                )));
            }
        }
        self.execute_pending(b.clone())?;
        let mut rec = b.height().to_le_bytes().to_vec();
        rec.extend_from_slice(&hash.0);
        if let Err(e) = write_durable(&self.vote_path(), &rec) {
            self.drop_pending()?;
            return Err(ImportError::Local(format!("record vote: {e}")));
        }
        Ok(Spec::vote(key, &hash))
    }

    /// Executes proposal `b` above the final head into the live state (and
    /// its checkpoint, checked against the header) and holds it pending.
    fn execute_pending(&mut self, b: Block) -> Result<(), ImportError> {
        let h = b.height();
        let r = (|| {
            self.live()?.apply(&b).map_err(local("execute"))?;
            if self.spec.is_checkpoint(h) {
                let live = self.live()?;
                live.sync().map_err(local("flush live state"))?;
                let changes = live.take_changes();
                let dir = live.dir().to_path_buf();
                let root = self.create_checkpoint(h, &dir, changes, None)?;
                if root != b.header.state_root {
                    let _ = self.store.remove(h);
                    return Err(ChainError::StateRoot { height: h }.into());
                }
            }
            Ok(())
        })();
        match r {
            Ok(()) => {
                self.pending = Some(b);
                Ok(())
            }
            Err(e) => {
                self.rebuild()?;
                Err(e)
            }
        }
    }

    /// Forgets the pending proposal: the live state is rebuilt from the
    /// latest checkpoint and the stored (final) blocks; its unanchored
    /// checkpoint, if any, is removed.
    pub fn drop_pending(&mut self) -> Result<(), ImportError> {
        if self.pending.take().is_some() {
            self.rebuild()?;
        }
        Ok(())
    }

    /// The pending proposal became final as `fin` (the same header with a
    /// quorum): stored, its checkpoint anchored.
    fn finalize_pending(&mut self, fin: &Block) -> Result<(), ImportError> {
        let h = fin.height();
        let stored_high = self.blocks.bounds()?.map(|b| b.1).unwrap_or(0);
        if stored_high < h {
            self.blocks
                .append(std::slice::from_ref(fin), &self.spec.id)?;
        }
        self.pending = None;
        self.head_hash = fin.hash();
        if self.spec.is_checkpoint(h) {
            write_durable(&anchor_path(&self.data, h), &fin.encode())
                .map_err(local("write anchor"))?;
            self.retain()?;
        }
        let _ = std::fs::remove_file(self.proposal_path());
        Ok(())
    }

    /// Whether there is a state to execute on.
    pub fn has_state(&self) -> bool {
        self.live.is_some()
    }

    fn live(&mut self) -> Result<&mut LiveState, ImportError> {
        self.live
            .as_mut()
            .ok_or_else(|| ImportError::Local("no state yet: state sync or genesis first".into()))
    }

    /// Generates the genesis state on a replica opened without it (to replay
    /// from block 1): creates checkpoint 0, clears the block store and
    /// links the live state. Does nothing if there is a state already.
    pub fn init_genesis(&mut self) -> Result<(), ImportError> {
        if self.live.is_some() {
            return Ok(());
        }
        let data = self.data.clone();
        let layout = StateLayout::of(&self.spec.genesis);
        let tmp = data.join("genesis.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        layout
            .generate(&tmp, self.spec.genesis.seed)
            .map_err(local("generate genesis state"))?;
        let c = self
            .store
            .create_from_dir(0, &tmp, &CreateOptions::default())
            .map_err(local("create genesis checkpoint"))?;
        let _ = std::fs::remove_dir_all(&tmp);
        self.blocks.clear()?;
        self.live = Some(
            LiveState::from_checkpoint(&c.info.path, &data.join("live"), layout, 0)
                .map_err(local("link live state"))?,
        );
        self.head_hash = self.spec.id;
        Ok(())
    }

    /// The backfill pointer: lowest stored block with unbroken ancestry (1
    /// when history is complete; on a fresh genesis node, 1 as well).
    pub fn low(&self) -> u64 {
        match self.blocks.bounds() {
            Ok(Some((low, _))) => low,
            _ => 1,
        }
    }

    /// Size of the state in bytes, from the genesis layout.
    pub fn state_bytes(&self) -> u64 {
        StateLayout::of(&self.spec.genesis).bytes()
    }

    /// Verifies, stores and executes blocks (ascending, starting at or
    /// below head+1; those at or below the head are checked and skipped).
    /// Takes a checkpoint at the last checkpoint height among them (at each
    /// one with `checkpoint_every`) and checks its root against the header.
    ///
    /// Errors: [`ImportError::Bad`] for an invalid block or a broken parent
    /// link; [`ImportError::Local`] without state, for blocks that do not
    /// start at head+1, or a local failure; [`ImportError::Fatal`] when a
    /// computed state root differs from the committed one (the checkpoint
    /// and its anchor are removed first).
    pub fn import(&mut self, blocks: &[Block]) -> Result<ImportReport, ImportError> {
        for b in blocks {
            self.spec.verify(b)?;
        }
        if let Some(p) = self.pending.clone()
            && let Some(fin) = blocks.iter().find(|b| b.height() == p.height())
        {
            if fin.hash() == p.hash() {
                if fin.header.parent != p.header.parent {
                    return Err(ChainError::ParentMismatch {
                        height: fin.height(),
                    }
                    .into());
                }
                self.finalize_pending(fin)?;
            } else {
                // Another block is final at that height.
                self.drop_pending()?;
            }
        }
        if self.pending.is_some() {
            // Blocks below the pending one: already final here.
            return Ok(ImportReport::default());
        }
        let head = self.live()?.height();
        let new: Vec<Block> = blocks
            .iter()
            .filter(|b| b.height() > head)
            .cloned()
            .collect();
        if new.is_empty() {
            return Ok(ImportReport::default());
        }
        if new[0].height() != head + 1 {
            return Err(ImportError::Local(format!(
                "import of {}.. does not start at head+1 ({})",
                new[0].height(),
                head + 1
            )));
        }
        if new[0].header.parent != self.head_hash {
            return Err(ChainError::ParentMismatch {
                height: new[0].height(),
            }
            .into());
        }
        for w in new.windows(2) {
            if w[1].header.parent != w[0].hash() {
                return Err(ChainError::ParentMismatch {
                    height: w[1].height(),
                }
                .into());
            }
        }
        let stored_high = self.blocks.bounds()?.map(|b| b.1).unwrap_or(0);
        let to_store: Vec<Block> = new
            .iter()
            .filter(|b| b.height() > stored_high)
            .cloned()
            .collect();
        self.blocks.append(&to_store, &self.spec.id)?;
        self.execute(&new, true)
    }

    fn execute(&mut self, blocks: &[Block], last_call: bool) -> Result<ImportReport, ImportError> {
        let mut rep = ImportReport::default();
        let last_cp = blocks
            .iter()
            .rev()
            .find(|b| self.spec.is_checkpoint(b.height()))
            .map(|b| b.height());
        for b in blocks {
            let t = Instant::now();
            self.live()?.apply(b).map_err(local("execute"))?;
            rep.exec_secs += t.elapsed().as_secs_f64();
            rep.imported += 1;
            self.head_hash = b.hash();
            let h = b.height();
            if self.spec.is_checkpoint(h)
                && (self.checkpoint_every || (last_call && Some(h) == last_cp))
            {
                let t = Instant::now();
                let root = self.checkpoint(b)?;
                rep.checkpoint_secs += t.elapsed().as_secs_f64();
                if root != b.header.state_root {
                    // Never keep or serve a checkpoint the chain does not
                    // commit to.
                    let _ = self.store.remove(h);
                    let _ = std::fs::remove_file(anchor_path(&self.data, h));
                    return Err(ImportError::Fatal(format!(
                        "state diverged at {h}: computed root {root}, the header commits {}",
                        b.header.state_root
                    )));
                }
                rep.checkpoints.push((h, root.to_hex()));
            }
        }
        Ok(rep)
    }

    /// Takes the checkpoint of the current live state (after block `b`),
    /// incrementally from the change set, and applies retention.
    fn checkpoint(&mut self, b: &Block) -> Result<Hash, ImportError> {
        let h = b.height();
        let live = self.live()?;
        live.sync().map_err(local("flush live state"))?;
        let changes = live.take_changes();
        let dir = live.dir().to_path_buf();
        let r = self.create_checkpoint(h, &dir, changes.clone(), Some(b));
        if r.is_err()
            && let Some(l) = self.live.as_mut()
        {
            // The writes must be in the next checkpoint's change set, or it
            // would link stale files from the previous one.
            l.restore_changes(changes);
        }
        r
    }

    fn create_checkpoint(
        &mut self,
        h: u64,
        dir: &Path,
        changes: statesync_manifest::ChangeSet,
        anchor: Option<&Block>,
    ) -> Result<Hash, ImportError> {
        let opts = CreateOptions {
            changes: Some(changes),
            ..CreateOptions::default()
        };
        if let Some(b) = anchor {
            write_durable(&anchor_path(&self.data, h), &b.encode())
                .map_err(local("write anchor"))?;
        }
        let c = self
            .store
            .create_from_dir(h, dir, &opts)
            .map_err(local("create checkpoint"))?;
        if anchor.is_some() {
            self.retain()?;
        }
        Ok(c.info.root)
    }

    fn retain(&mut self) -> Result<(), ImportError> {
        self.store
            .prune(self.keep)
            .map_err(local("prune checkpoints"))?;
        let kept: std::collections::HashSet<u64> = self
            .store
            .list()
            .map_err(local("list checkpoints"))?
            .iter()
            .map(|c| c.height)
            .collect();
        // Block history: the last `keep_blocks` blocks, and never less than
        // back to the oldest checkpoint kept (a node state-syncing from it
        // must be able to replay from there).
        if let Some(n) = self.keep_blocks {
            let head = self.head().0;
            let floor = head.saturating_sub(n).max(1);
            let floor = kept
                .iter()
                .copied()
                .min()
                .map_or(floor, |c| floor.min(c.max(1)));
            self.blocks
                .prune_below(floor)
                .map_err(|e| ImportError::Local(format!("prune blocks: {e}")))?;
        }
        if let Ok(rd) = std::fs::read_dir(self.data.join("anchors")) {
            for e in rd.flatten() {
                let h = e.file_name().to_string_lossy().parse::<u64>().ok();
                if h.is_none_or(|h| !kept.contains(&h)) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    /// The leader's step: builds block head+1 from the generated
    /// transactions, executes it, checkpoints when due (the header commits
    /// the root), signs it with `keys` and stores it. On failure the live
    /// state is rebuilt, so a failed step leaves nothing half done.
    pub fn produce(
        &mut self,
        keys: &[(u16, ValidatorKey)],
        time_ms: u64,
    ) -> Result<Block, ImportError> {
        let txs = self.spec.gen_txs(self.head().0 + 1);
        self.produce_txs(keys, time_ms, txs)
    }

    /// [`Replica::produce`] with the given transactions (a mempool's).
    pub fn produce_txs(
        &mut self,
        keys: &[(u16, ValidatorKey)],
        time_ms: u64,
        txs: Vec<crate::types::Tx>,
    ) -> Result<Block, ImportError> {
        let r = self.produce_inner(keys, time_ms, txs);
        if r.is_err() && self.live.is_some() {
            self.rebuild()?;
        }
        r
    }

    fn produce_inner(
        &mut self,
        keys: &[(u16, ValidatorKey)],
        time_ms: u64,
        txs: Vec<crate::types::Tx>,
    ) -> Result<Block, ImportError> {
        let (head, parent) = self.head();
        let h = head + 1;
        let unsigned = self
            .spec
            .produce(parent, h, txs.clone(), Hash::ZERO, time_ms, &[]);
        self.live()?.apply(&unsigned).map_err(local("execute"))?;
        let root = if self.spec.is_checkpoint(h) {
            // Checkpoint first (the header commits its root); the anchor
            // is written with the signed block.
            let live = self.live()?;
            live.sync().map_err(local("flush live state"))?;
            let changes = live.take_changes();
            let dir = live.dir().to_path_buf();
            self.create_checkpoint(h, &dir, changes, None)?
        } else {
            Hash::ZERO
        };
        let b = self.spec.produce(parent, h, txs, root, time_ms, keys);
        if self.spec.is_checkpoint(h) {
            write_durable(&anchor_path(&self.data, h), &b.encode())
                .map_err(local("write anchor"))?;
            self.retain()?;
        }
        self.blocks
            .append(std::slice::from_ref(&b), &self.spec.id)?;
        self.head_hash = b.hash();
        Ok(b)
    }

    /// Rebuilds the live state from the latest checkpoint and replays the
    /// stored blocks above it (what `open` does after a crash).
    pub fn rebuild(&mut self) -> Result<(), ImportError> {
        loop {
            let Some(latest) = self.store.latest().map_err(local("list checkpoints"))? else {
                return Ok(());
            };
            // A checkpoint without an anchor (a failed step) is dropped.
            if latest.height > 0 && !anchor_path(&self.data, latest.height).exists() {
                self.store
                    .remove(latest.height)
                    .map_err(local("remove unanchored checkpoint"))?;
                continue;
            }
            self.live = Some(
                LiveState::from_checkpoint(
                    &latest.path,
                    &self.data.join("live"),
                    StateLayout::of(&self.spec.genesis),
                    latest.height,
                )
                .map_err(local("link live state"))?,
            );
            self.head_hash = match latest.height {
                0 => self.spec.id,
                h => self
                    .blocks
                    .get(h)?
                    .map(|b| b.hash())
                    .ok_or_else(|| ImportError::Local(format!("block {h} missing")))?,
            };
            self.replay_stored()?;
            return Ok(());
        }
    }

    /// Executes the stored blocks above the live state's height (after a
    /// restart or a rebuild), in batches; returns how many.
    fn replay_stored(&mut self) -> Result<u64, ImportError> {
        let mut replayed = 0;
        if let Some((_, high)) = self.blocks.bounds()? {
            let mut h = self.head().0 + 1;
            while h <= high {
                let end = (h + 255).min(high);
                let mut batch = Vec::new();
                for x in h..=end {
                    batch.push(
                        self.blocks.get(x)?.ok_or_else(|| {
                            ImportError::Local(format!("stored block {x} missing"))
                        })?,
                    );
                }
                self.execute(&batch, end == high)?;
                replayed += batch.len() as u64;
                h = end + 1;
            }
            if let Some(b) = self.blocks.get(self.head().0)? {
                self.head_hash = b.hash();
            }
        }
        Ok(replayed)
    }

    /// Backfill: verifies blocks below `low` (given in descending order:
    /// `low-1`, `low-2`, ...) and prepends them to the block store; they are
    /// not executed.
    pub fn backfill(&mut self, desc: &[Block]) -> Result<(), ImportError> {
        for b in desc {
            self.spec.verify(b)?;
        }
        self.blocks.prepend(desc)?;
        Ok(())
    }

    /// Adopts a state-synced checkpoint: `dir` (verified against
    /// `manifest`, whose root `anchor` commits) becomes checkpoint
    /// `anchor.height()`, the block store restarts at `anchor`, and the live
    /// state at it; retention then applies.
    ///
    /// Errors: [`ImportError::Bad`] if `anchor` does not verify;
    /// [`ImportError::Local`] if `manifest`'s root is not the anchor's state
    /// root or the store refuses the checkpoint (not above the latest).
    pub fn adopt(
        &mut self,
        anchor: &Block,
        dir: &Path,
        manifest: &Manifest,
    ) -> Result<(), ImportError> {
        self.spec.verify(anchor)?;
        let h = anchor.height();
        if manifest.root() != anchor.header.state_root {
            return Err(ImportError::Local(format!(
                "checkpoint {h}: manifest root {} is not the committed {}",
                manifest.root(),
                anchor.header.state_root
            )));
        }
        write_durable(&anchor_path(&self.data, h), &anchor.encode())
            .map_err(local("write anchor"))?;
        let info = self
            .store
            .adopt(h, dir, manifest)
            .map_err(local("adopt checkpoint"))?;
        self.blocks.reset_to(anchor)?;
        self.live = Some(
            LiveState::from_checkpoint(
                &info.path,
                &self.data.join("live"),
                StateLayout::of(&self.spec.genesis),
                h,
            )
            .map_err(local("link live state"))?,
        );
        self.head_hash = anchor.hash();
        self.retain()?;
        Ok(())
    }
}

fn write_durable(p: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = p.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, p)?;
    // The rename itself is durable only once the directory is.
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => std::fs::File::open(d)?.sync_all(),
        _ => Ok(()),
    }
}
