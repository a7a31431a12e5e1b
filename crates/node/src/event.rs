//! What a running node tells its embedder: typed [`Event`]s, and errors
//! that say whose fault a failure was ([`Fault`]).

use crate::chain::{ChainSample, ChainSummary};
use crate::fetch::{FetchSummary, LocalReport};
use serde::Serialize;
use statesync_engine::catchup::Note;
use statesync_manifest::hash::Hash;
use statesync_net::libp2p::{Multiaddr, PeerId};

/// Identifies one fetch started with [`crate::Node::fetch`] (or by the
/// chain node) for the life of the node.
pub type FetchId = u64;

/// Whose fault a failure was, and so what to do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// A peer sent bad data or misbehaved; it was penalised (banned for
    /// the sync, or cooled off).
    Peer,
    /// What was asked for is not available from any peer reached: try
    /// other peers, or later.
    Missing,
    /// This node's own failure (a full disk, an I/O error); no peer was
    /// penalised and durable progress is kept for a retry.
    Local,
    /// The request itself cannot be satisfied (a trusted root that commits
    /// to an invalid manifest, an output directory that holds something
    /// else).
    Input,
}

/// A fetch that failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    /// Whose fault it was.
    pub fault: Fault,
    /// What happened, naming the files, peers or root concerned.
    pub message: String,
}

impl FetchError {
    pub(crate) fn local(message: impl std::fmt::Display) -> FetchError {
        FetchError {
            fault: Fault::Local,
            message: format!("local failure (no peer at fault): {message}"),
        }
    }

    pub(crate) fn input(message: impl Into<String>) -> FetchError {
        FetchError {
            fault: Fault::Input,
            message: message.into(),
        }
    }
}

/// Progress of a fetch, sent about four times a second while it runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FetchProgress {
    /// Bytes fetched from peers and verified so far.
    pub bytes_done: u64,
    /// Bytes to fetch from peers in all (known once the local plan ran).
    pub bytes_needed: u64,
    /// Chunks fetched and verified so far.
    pub chunks_done: u64,
    /// Chunks to fetch in all.
    pub chunks_needed: u64,
    /// Peers that advertise the root and may still be asked.
    pub peers_usable: usize,
    /// Requests sent so far.
    pub requests: u64,
    /// Seconds since the fetch started.
    pub seconds: f64,
    /// What the fetch is doing (`manifest`, `planning`, `chunks`,
    /// `finishing`).
    pub stage: &'static str,
}

/// Why a fetch makes no progress.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stall {
    /// Seconds without progress.
    pub seconds: f64,
    /// Every peer the node knows of, with what stands in the way.
    pub peers: Vec<PeerWhy>,
    /// Every peer that could be asked answered NOT_FOUND (or does not
    /// advertise the root): nobody reachable has it.
    pub nobody_has_it: bool,
}

/// One peer in a [`Stall`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerWhy {
    /// The peer id.
    pub peer: String,
    /// Why it does not help: `dial failed: ...`, `NOT_FOUND for this
    /// root`, `does not advertise this root`, `BUSY or cooling off`,
    /// `banned: ...`, `no advert yet`, or `serving` when it does.
    pub why: String,
}

impl Stall {
    /// One line for a person.
    pub fn summary(&self) -> String {
        let per: Vec<String> = self
            .peers
            .iter()
            .map(|p| format!("{}: {}", short(&p.peer), p.why))
            .collect();
        let head = if self.peers.is_empty() {
            "no peer known".to_string()
        } else if self.nobody_has_it {
            "no reachable peer has this root".to_string()
        } else {
            format!("no progress for {:.0} s", self.seconds)
        };
        if per.is_empty() {
            head
        } else {
            format!("{head} ({})", per.join("; "))
        }
    }
}

/// The last 8 characters of a peer id (enough to tell peers apart in a
/// line).
fn short(p: &str) -> &str {
    &p[p.len().saturating_sub(8)..]
}

/// What happens in one fetch.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FetchEvent {
    /// The fetch started (or resumed, with its manifest already fetched).
    Started {
        /// The trusted root.
        root: Hash,
        /// Resumed from an earlier run's staging area.
        resumed: bool,
    },
    /// The manifest arrived and verified against the root.
    ManifestVerified {
        /// Files in the checkpoint.
        files: u64,
        /// Bytes in the checkpoint.
        bytes: u64,
    },
    /// The local plan ran: what local data provides, and what peers must.
    Planned {
        /// What was linked, kept, zero or resumed.
        local: LocalReport,
        /// Chunks copied from local sources while peers are asked.
        copy_chunks: u64,
        /// Their bytes.
        copy_bytes: u64,
        /// Chunks to fetch from peers.
        fetch_chunks: u64,
        /// Their bytes.
        fetch_bytes: u64,
    },
    /// Progress (about four times a second).
    Progress(FetchProgress),
    /// No progress for a while: why, peer by peer (sent every 5 s while
    /// it lasts).
    Stalled(Stall),
    /// A peer sent bad data: banned for this sync.
    PeerBanned {
        /// The peer.
        peer: PeerId,
        /// What it sent.
        reason: String,
    },
    /// The final check found files that do not verify (a local source
    /// changed, or the disk altered them); their chunks are fetched again.
    Repairing {
        /// The files.
        files: Vec<String>,
        /// Chunks to fetch again.
        chunks: u64,
    },
    /// Verified and promoted into place.
    Done(Box<FetchSummary>),
    /// Stopped for good; durable progress is kept for a retry.
    Failed(FetchError),
}

/// What the chain node reports.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ChainEvent {
    /// A line of the node's story (phases, decisions, syncs, backfill).
    Log {
        /// Seconds since the node started.
        t: f64,
        /// What happened.
        message: String,
    },
    /// A decision or phase change of the catch-up machine.
    CatchUp {
        /// Seconds since the node started.
        t: f64,
        /// What it was.
        note: Note,
    },
    /// Heights and progress, four times a second (for timelines).
    Sample(ChainSample),
    /// Totals, when the node stops or fails.
    Summary(Box<ChainSummary>),
}

/// Everything a running node reports, in order, on the stream returned
/// with the handle ([`crate::Events`]).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Event {
    /// A listen address is ready (with `/p2p/<peer id>`).
    Listening {
        /// The address.
        addr: Multiaddr,
    },
    /// A connection to a new peer was established.
    PeerConnected {
        /// The peer.
        peer: PeerId,
    },
    /// The last connection to a peer closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A dial failed.
    DialFailed {
        /// The peer, if known.
        peer: Option<PeerId>,
        /// Why (refused, timed out, wrong peer id, ...).
        error: String,
    },
    /// Something happened in a fetch.
    Fetch {
        /// Which fetch.
        id: FetchId,
        /// What.
        event: FetchEvent,
    },
    /// A served checkpoint was found damaged on disk and withdrawn.
    CheckpointDamaged {
        /// Its height.
        height: u64,
        /// Its root.
        root: Hash,
        /// What did not match.
        what: String,
    },
    /// The set of served checkpoints changed (and was announced).
    ServingChanged {
        /// Heights now served.
        heights: Vec<u64>,
    },
    /// Something happened in the chain node.
    Chain(ChainEvent),
    /// The node stopped (after [`crate::Node::shutdown`], or because the
    /// chain node hit a fatal error).
    Stopped {
        /// Why, if it was not asked to.
        error: Option<String>,
    },
}
