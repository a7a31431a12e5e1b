//! State sync of one trusted root: the sans-IO scheduler
//! ([`statesync_engine::fetch::Fetch`]) driven by the fetch driver ([`driver`]),
//! and the files it writes.
//!
//! Layout under the node's data directory:
//!
//! ```text
//! fetch/<root hex>/state/...     the checkpoint being assembled
//! fetch/<root hex>/manifest      the verified manifest (once fetched)
//! fetch/<root hex>/progress.redb chunk indices durably written
//! ```
//!
//! Durability order: chunk bytes are verified, written (with direct I/O
//! where the filesystem allows, see [`target::Target`]) and `fdatasync`ed,
//! and a sample of them read back, before their indices are committed to
//! redb, so a committed index always has its bytes on disk. After SIGKILL a
//! restart refetches only chunks that were in flight or written since the
//! last commit. Nothing is promoted before the whole checkpoint passed its
//! final check ([`promote`]). docs/sync.md has the whole story.
//!
//! - [`staging`]: a staging area per root, its progress database, other
//!   roots' stagings as reuse sources, the in-place consumption of a stale
//!   checkpoint;
//! - [`target`]: staged files, direct I/O and extent clones ([`IoOptions`]);
//! - [`local`]: what local checkpoints provide (links, zero chunks, kept
//!   chunks, copies);
//! - [`writer`]: verified writes with batched durability;
//! - [`promote`]: the final check and the rename into place.

pub mod driver;
pub mod local;
pub mod promote;
pub mod request;
pub mod staging;
pub mod target;
pub mod writer;

pub use driver::{FetchRequest, FetchSummary, PeerReport};
pub use local::LocalReport;
pub use promote::manifest_path_for;
pub use target::IoOptions;

/// Errors of the fetch's file work: messages that name the file and the
/// cause (all local: no peer is at fault for them).
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Result<T> = std::result::Result<T, Error>;
