//! Checkpoint manifests for statesync.
//!
//! A checkpoint is a directory of regular files. Its manifest lists the files
//! (path, size, executable bit, content hash) and their fixed-size chunks
//! (file, offset, length, hash), and commits to all of it with one root hash
//! that the chain signs. Any single chunk or any piece of the manifest can be
//! checked against the root with a logarithmic proof. See docs/manifest.md for
//! the byte-level format.
//!
//! This crate does no async I/O and knows nothing about the network.

#![warn(missing_docs)]

pub mod build;
pub mod diff;
pub mod format;
pub mod hash;
pub mod merkle;
pub mod path;
pub mod reference;
pub mod rng;
pub mod stats;
pub mod verify;

pub use build::{
    BuildError, BuildOptions, BuildReport, Built, ChangeSet, Hint, Previous, Progress, build,
    build_incremental,
};
pub use diff::{ChunkAction, LocalSource, Plan, PlanTotals, plan};
pub use format::{ChunkEntry, FileEntry, Manifest, ManifestError, RootHeader};
pub use hash::Hash;
pub use stats::{FileStat, StatCache};
pub use verify::{VerifyReport, verify_dir, verify_dir_filtered};
