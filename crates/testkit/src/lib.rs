//! Test support for the statesync workspace, shared so that tests stop
//! redefining it: child processes that are killed when a test ends,
//! waiting with a deadline, free ports, Prometheus scrapes, directory trees
//! (write, read back, compare, copy), the project's PRNG, and a hostile
//! libp2p peer ([`hostile`]).
//!
//! A dev-dependency only: nothing here is part of a shipped binary.

#![warn(missing_docs)]

pub mod hostile;
pub mod proc;
pub mod tree;

pub use proc::{Proc, free_port, metric, require_unshare, scrape, wait_for};
pub use statesync_manifest::rng::SplitMix64 as Rng;
pub use tree::{copy_tree, count_files, read_tree, walk, write_file, write_tree};

/// `p` as a `&str` (test paths are UTF-8).
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}
