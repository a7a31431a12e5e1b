//! Verified blocks in redb: by height and by hash, plus the stored range.
//!
//! The store always holds one contiguous range `[low, high]` of blocks that
//! link by parent hash: `high` is the head, `low` is the backfill pointer
//! (the oldest block with unbroken ancestry to the head). Appends extend
//! `high`, backfill extends `low` downwards; both check the links and commit
//! in one transaction with the bounds, so a crash leaves a consistent range.

use crate::types::{Block, ChainError};
use redb::{Database, ReadableTable, TableDefinition};
use statesync_manifest::Hash;
use std::path::Path;

const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
const BY_HASH: TableDefinition<&[u8], u64> = TableDefinition::new("by_hash");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Errors of [`BlockStore`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed, or what it holds is inconsistent (a bound's
    /// block missing or not decoding, backfill into an empty store).
    #[error("block store: {0}")]
    Db(String),
    /// A block at a height that does not extend the stored range.
    #[error("block store: block {got} does not extend the stored range {low}..={high}")]
    NotContiguous {
        /// Height of the block.
        got: u64,
        /// Lowest stored height (1 on an empty store).
        low: u64,
        /// Highest stored height (0 on an empty store).
        high: u64,
    },
    /// A block does not link by parent hash ([`ChainError::ParentMismatch`]).
    #[error("block store: {0}")]
    Chain(#[from] ChainError),
}

fn db<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// redb's page cache for the block store: the B-tree's interior pages and
/// the recent blocks (the kernel's page cache holds the rest). redb's
/// default, 1 GiB, let a node's memory grow with its block history: every
/// appended block stays cached until the ceiling, about 10 KB a block here.
pub const CACHE_BYTES: usize = 8 << 20;

/// Verified blocks in a redb database: encoded blocks by height, heights by
/// header hash, and the bounds `low`/`high` of the stored range.
pub struct BlockStore {
    db: Database,
}

impl BlockStore {
    /// Opens the database at `path`, creating it if missing (crash-safely:
    /// [`statesync_store::db::open_or_create`]).
    pub fn open(path: &Path) -> Result<BlockStore, StoreError> {
        let database = statesync_store::db::open_or_create(
            path,
            CACHE_BYTES,
            |d| -> Result<(), statesync_store::db::Error> {
                let w = d.begin_write()?;
                {
                    w.open_table(BLOCKS)?;
                    w.open_table(BY_HASH)?;
                    w.open_table(META)?;
                }
                w.commit()?;
                Ok(())
            },
        )
        .map_err(db)?;
        Ok(BlockStore { db: database })
    }

    /// `(low, high)` of the stored range, or None when empty.
    pub fn bounds(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(META).map_err(db)?;
        let low = t.get("low").map_err(db)?.map(|v| v.value());
        let high = t.get("high").map_err(db)?.map(|v| v.value());
        Ok(low.zip(high))
    }

    /// The block at `height`, decoded, or None if it is not stored.
    pub fn get(&self, height: u64) -> Result<Option<Block>, StoreError> {
        Ok(match self.get_raw(height)? {
            // A stored block that does not decode is this node's damage,
            // never a peer's fault.
            Some(b) => Some(
                Block::decode(&b)
                    .map_err(|e| StoreError::Db(format!("stored block {height}: {e}")))?,
            ),
            None => None,
        })
    }

    /// The encoded block at `height`, or None if it is not stored.
    pub fn get_raw(&self, height: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(BLOCKS).map_err(db)?;
        Ok(t.get(height).map_err(db)?.map(|v| v.value().to_vec()))
    }

    /// Encoded blocks `start..start+count` that are stored, in order,
    /// stopping at the first gap or before the block that would take the
    /// total over `max_bytes` (the first block is returned whatever its
    /// size).
    pub fn range_raw(
        &self,
        start: u64,
        count: u64,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(BLOCKS).map_err(db)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for h in start..start.saturating_add(count) {
            match t.get(h).map_err(db)? {
                Some(v) => {
                    bytes += v.value().len();
                    if bytes > max_bytes && !out.is_empty() {
                        break;
                    }
                    out.push(v.value().to_vec());
                }
                None => break,
            }
        }
        Ok(out)
    }

    /// Height of the stored block with this header hash, if any.
    pub fn height_of(&self, hash: &Hash) -> Result<Option<u64>, StoreError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(BY_HASH).map_err(db)?;
        Ok(t.get(hash.0.as_slice()).map_err(db)?.map(|v| v.value()))
    }

    /// Replaces the contents with the single block `anchor` (range
    /// `[h, h]`), such as a state-synced or re-anchored checkpoint's block.
    /// The block is not verified here.
    pub fn reset_to(&self, anchor: &Block) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(db)?;
        {
            let mut b = w.open_table(BLOCKS).map_err(db)?;
            b.retain(|_, _| false).map_err(db)?;
            let mut h = w.open_table(BY_HASH).map_err(db)?;
            h.retain(|_, _| false).map_err(db)?;
            b.insert(anchor.height(), anchor.encode().as_slice())
                .map_err(db)?;
            h.insert(anchor.hash().0.as_slice(), anchor.height())
                .map_err(db)?;
            let mut m = w.open_table(META).map_err(db)?;
            m.insert("low", anchor.height()).map_err(db)?;
            m.insert("high", anchor.height()).map_err(db)?;
        }
        w.commit().map_err(db)?;
        Ok(())
    }

    /// Deletes the blocks below `low` (history retention): the stored range
    /// becomes `[low, high]`. Nothing happens when `low` is at or below the
    /// stored low; at most the head is kept. Returns how many blocks were
    /// deleted.
    pub fn prune_below(&self, low: u64) -> Result<u64, StoreError> {
        let Some((old_low, high)) = self.bounds()? else {
            return Ok(0);
        };
        let low = low.min(high);
        if low <= old_low {
            return Ok(0);
        }
        let w = self.db.begin_write().map_err(db)?;
        let mut n = 0;
        {
            let mut b = w.open_table(BLOCKS).map_err(db)?;
            for h in old_low..low {
                if b.remove(h).map_err(db)?.is_some() {
                    n += 1;
                }
            }
            // The hash index is pruned by height: entries pointing below
            // the new low go.
            let mut ht = w.open_table(BY_HASH).map_err(db)?;
            ht.retain(|_, height| height >= low).map_err(db)?;
            let mut m = w.open_table(META).map_err(db)?;
            m.insert("low", low).map_err(db)?;
        }
        w.commit().map_err(db)?;
        Ok(n)
    }

    /// Empties the store.
    pub fn clear(&self) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(db)?;
        {
            w.open_table(BLOCKS)
                .map_err(db)?
                .retain(|_, _| false)
                .map_err(db)?;
            w.open_table(BY_HASH)
                .map_err(db)?
                .retain(|_, _| false)
                .map_err(db)?;
            let mut m = w.open_table(META).map_err(db)?;
            m.remove("low").map_err(db)?;
            m.remove("high").map_err(db)?;
        }
        w.commit().map_err(db)?;
        Ok(())
    }

    /// Appends verified blocks `high+1..` (ascending). The first must link
    /// to the stored head (or to `genesis_parent` on an empty store, where it
    /// must be block 1). Heights are checked ([`StoreError::NotContiguous`])
    /// and parent links ([`ChainError::ParentMismatch`]); all or nothing is
    /// committed, with the new bounds.
    pub fn append(&self, blocks: &[Block], genesis_parent: &Hash) -> Result<(), StoreError> {
        if blocks.is_empty() {
            return Ok(());
        }
        let bounds = self.bounds()?;
        let w = self.db.begin_write().map_err(db)?;
        {
            let mut bt = w.open_table(BLOCKS).map_err(db)?;
            let mut ht = w.open_table(BY_HASH).map_err(db)?;
            let (mut prev_h, mut prev_hash) = match bounds {
                Some((_, high)) => {
                    let raw = bt
                        .get(high)
                        .map_err(db)?
                        .map(|v| v.value().to_vec())
                        .ok_or_else(|| StoreError::Db(format!("head block {high} missing")))?;
                    // Our own stored block: a decode failure is local.
                    let b = Block::decode(&raw)
                        .map_err(|e| StoreError::Db(format!("stored head {high}: {e}")))?;
                    (high, b.hash())
                }
                None => (0, *genesis_parent),
            };
            for b in blocks {
                if b.height() != prev_h + 1 {
                    let (low, high) = bounds.unwrap_or((1, 0));
                    return Err(StoreError::NotContiguous {
                        got: b.height(),
                        low,
                        high,
                    });
                }
                if b.header.parent != prev_hash {
                    return Err(ChainError::ParentMismatch { height: b.height() }.into());
                }
                bt.insert(b.height(), b.encode().as_slice()).map_err(db)?;
                ht.insert(b.hash().0.as_slice(), b.height()).map_err(db)?;
                prev_h = b.height();
                prev_hash = b.hash();
            }
            let mut m = w.open_table(META).map_err(db)?;
            if bounds.is_none() {
                m.insert("low", blocks[0].height()).map_err(db)?;
            }
            m.insert("high", prev_h).map_err(db)?;
        }
        w.commit().map_err(db)?;
        Ok(())
    }

    /// Prepends verified blocks below `low` (given in descending order:
    /// `low-1, low-2, ...`), each the parent of the one above it. Heights
    /// and parent links are checked as in [`BlockStore::append`]; all or
    /// nothing is committed, with the new `low`. An empty store is an error.
    pub fn prepend(&self, blocks: &[Block]) -> Result<(), StoreError> {
        if blocks.is_empty() {
            return Ok(());
        }
        let Some((low, high)) = self.bounds()? else {
            return Err(StoreError::Db("backfill into an empty store".into()));
        };
        let w = self.db.begin_write().map_err(db)?;
        {
            let mut bt = w.open_table(BLOCKS).map_err(db)?;
            let mut ht = w.open_table(BY_HASH).map_err(db)?;
            let raw = bt
                .get(low)
                .map_err(db)?
                .map(|v| v.value().to_vec())
                .ok_or_else(|| StoreError::Db(format!("low block {low} missing")))?;
            let mut child = Block::decode(&raw)
                .map_err(|e| StoreError::Db(format!("stored block {low}: {e}")))?
                .header;
            for b in blocks {
                if b.height() + 1 != child.height {
                    return Err(StoreError::NotContiguous {
                        got: b.height(),
                        low,
                        high,
                    });
                }
                if b.hash() != child.parent {
                    return Err(ChainError::ParentMismatch {
                        height: child.height,
                    }
                    .into());
                }
                bt.insert(b.height(), b.encode().as_slice()).map_err(db)?;
                ht.insert(b.hash().0.as_slice(), b.height()).map_err(db)?;
                child = b.header.clone();
            }
            let mut m = w.open_table(META).map_err(db)?;
            m.insert("low", child.height).map_err(db)?;
        }
        w.commit().map_err(db)?;
        Ok(())
    }
}
