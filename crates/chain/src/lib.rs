//! The reference chain: a small but real replicated state machine that the
//! sync engine runs against end to end.
//!
//! * [`types`]: blocks, headers, transactions, quorum finality proofs and
//!   the genesis configuration, with their byte encodings (docs/chain.md).
//! * [`state`]: the key-value state as fixed-slot page files, deterministic
//!   execution with copy-up of files shared with checkpoints, and the change
//!   set every checkpoint is built from.
//! * [`blockstore`]: blocks by height and hash, the head and the backfill
//!   pointer, in redb.
//! * [`replica`]: a node's data directory tying these to the checkpoint
//!   store: import, block production, checkpoints with retention, backfill,
//!   adoption of state-synced checkpoints and crash recovery.
//!
//! No async code and no networking here.

#![warn(missing_docs)]

pub mod blockstore;
pub mod replica;
pub mod state;
pub mod types;

pub use blockstore::BlockStore;
pub use replica::{ImportError, Replica};
pub use state::{LiveState, StateLayout};
pub use types::{
    Block, ChainError, FinalityProof, Genesis, Header, PROPOSER, Spec, Tx, ValidatorKey,
};
