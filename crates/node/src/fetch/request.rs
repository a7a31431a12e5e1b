//! What a fetch is asked to do ([`FetchRequest`]) and what it reports
//! when done ([`FetchSummary`]).

use super::local::LocalReport;
use statesync_manifest::format::Manifest;
use statesync_manifest::hash::Hash;
use std::collections::HashMap;
use std::path::PathBuf;

/// A state sync to run: the trusted root, where to put it, and what local
/// data may be reused.
#[derive(Clone, Debug)]
pub struct FetchRequest {
    /// The trusted root (from a signed chain header, or the operator).
    pub root: Hash,
    /// Where the checkpoint lands (must not exist; its manifest is written
    /// beside it as `<out>.manifest`, see [`super::manifest_path_for`]).
    pub out: PathBuf,
    /// Local checkpoint directories with their manifests: identical files
    /// are hard-linked (read-only ones) or copied, identical chunks copied.
    pub seeds: Vec<(PathBuf, Manifest)>,
    /// A stale local checkpoint (directory and manifest) to consume and
    /// update in place: cost follows the changed bytes. The directory is
    /// moved into the staging area (same filesystem) and is gone afterwards.
    pub in_place: Option<(PathBuf, Manifest)>,
    /// Rehash every chunk at the end, also those kept or linked (default:
    /// every fetched chunk is verified before it is written, and a 1/64
    /// sample of the rest is re-read).
    pub full_verify: bool,
    /// Largest per-peer window of bytes in flight (default 64 MiB).
    pub max_window: Option<u64>,
    /// Bytes written between durable progress commits (default 64 MiB).
    pub commit_bytes: Option<u64>,
    /// Fault injection: kill this process (SIGKILL) once this many chunk
    /// bytes arrived, to test crash recovery at a known point.
    #[cfg(feature = "fault-injection")]
    pub crash_after_bytes: Option<u64>,
}

impl FetchRequest {
    /// A plain fetch of `root` into `out`, reusing nothing.
    pub fn new(root: Hash, out: impl Into<PathBuf>) -> FetchRequest {
        FetchRequest {
            root,
            out: out.into(),
            seeds: Vec::new(),
            in_place: None,
            full_verify: false,
            max_window: None,
            commit_bytes: None,
            #[cfg(feature = "fault-injection")]
            crash_after_bytes: None,
        }
    }
}

/// Final figures of a fetch.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FetchSummary {
    /// The root (hex).
    pub root: String,
    /// Where the checkpoint is.
    pub out: PathBuf,
    /// Files in the checkpoint.
    pub files: u64,
    /// Bytes in the checkpoint.
    pub bytes: u64,
    /// Bytes fetched from peers (repairs included).
    pub bytes_fetched: u64,
    /// Chunks fetched from peers.
    pub chunks_fetched: u64,
    /// What local data provided.
    pub local: LocalReport,
    /// Wall time of the sync.
    pub seconds: f64,
    /// Peers that delivered data.
    pub peers_used: usize,
    /// Peers banned for bad data, with the reason.
    pub peers_banned: Vec<String>,
    /// Chunk bytes received per peer.
    pub bytes_per_peer: HashMap<String, u64>,
    /// Requests sent.
    pub requests: u64,
    /// Chunks that failed verification.
    pub rejected_chunks: u64,
    /// Every peer the scheduler knew, with what it did.
    pub peers: Vec<PeerReport>,
}

/// One peer's record in a fetch: what it delivered and how it failed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PeerReport {
    /// The peer id.
    pub peer: String,
    /// `active`, `cooling off`, `not found` or `banned: <reason>`.
    pub state: String,
    /// Bytes it delivered.
    pub bytes: u64,
    /// Requests sent to it.
    pub requests: u64,
    /// Requests it let time out.
    pub timeouts: u64,
    /// Streams reset or cut short, refusals.
    pub failures: u64,
    /// BUSY answers.
    pub busy: u64,
    /// Times it was cooled off.
    pub cool_offs: u32,
}
