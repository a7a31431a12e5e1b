//! The chain node's setup and what it reports: counters, status, timeline
//! samples and the summary of a run.

use serde::Serialize;
use statesync_chain::{Genesis, ValidatorKey};
use statesync_engine::catchup::{Force, PhaseName};
use statesync_engine::range;
use std::collections::HashMap;

/// Blocks of history a node keeps by default (about 2.8 hours at 200 ms
/// blocks; roughly 500 MB with the reference chain's blocks).
pub const DEFAULT_KEEP_BLOCKS: u64 = 50_000;

/// How a chain node runs.
#[derive(Clone)]
pub struct ChainSetup {
    /// The chain.
    pub genesis: Genesis,
    /// Validator keys this node signs with; a producing node needs a quorum.
    pub keys: Vec<ValidatorKey>,
    /// Produce blocks (the leader).
    pub produce: bool,
    /// Checkpoints kept by retention (at least 1).
    pub keep: usize,
    /// Backfill history down to this height (1: genesis; 0: no backfill).
    pub horizon: u64,
    /// Blocks of history kept below the head (never fewer than back to the
    /// oldest kept checkpoint); older ones are deleted and backfill stops
    /// there. `None`: keep everything (an archive node).
    pub keep_blocks: Option<u64>,
    /// Without local state, replay from genesis when peers have the whole
    /// history and replay is the better plan (else: state sync).
    pub replay_from_genesis: bool,
    /// The leader stops producing at this height.
    pub stop_at: Option<u64>,
    /// Move a running state sync to a newer checkpoint when replaying the
    /// blocks between them would take longer than this (seconds).
    pub switch_after_secs: f64,
    /// Range sync tunables (batch size, window, attempts).
    pub range: range::Config,
    /// Force a catch-up plan instead of deciding by measured rates.
    pub catch_up: Force,
    /// Fault injection (tests): as a committee member, relay forged
    /// shards.
    #[cfg(feature = "fault-injection")]
    pub forge_gossip: bool,
}

impl ChainSetup {
    /// A follower of `genesis` with the default settings.
    pub fn new(genesis: Genesis) -> ChainSetup {
        ChainSetup {
            genesis,
            keys: Vec::new(),
            produce: false,
            keep: 3,
            horizon: 1,
            keep_blocks: Some(DEFAULT_KEEP_BLOCKS),
            replay_from_genesis: false,
            stop_at: None,
            switch_after_secs: 2.0,
            range: range::Config::default(),
            catch_up: Force::Auto,
            #[cfg(feature = "fault-injection")]
            forge_gossip: false,
        }
    }
}

/// Counters of the chain node.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChainStats {
    /// Blocks produced (as the proposer: made final).
    pub produced: u64,
    /// Blocks imported by range sync.
    pub imported_range: u64,
    /// Blocks imported at the head.
    pub imported_follow: u64,
    /// Backfilled batches.
    pub backfill_batches: u64,
    /// Moves of a state sync to a newer checkpoint.
    pub switches: u64,
    /// State syncs started.
    pub state_syncs: u64,
    /// State bytes fetched from peers.
    pub state_bytes_fetched: u64,
    /// State bytes reused locally.
    pub state_bytes_reused: u64,
    /// Missing-block lookups.
    pub lookups: u64,
    /// Pushed blocks (or final heads) that did not verify.
    pub bad_pushes: u64,
    /// Whole blocks pushed to peers, and their bytes.
    pub blocks_pushed: u64,
    /// Bytes of those pushes.
    pub pushed_bytes: u64,
    /// Final heads (header and proof, no transactions) sent to peers that
    /// have the block's body from gossip.
    pub finals_sent: u64,
    /// Local failures (imports, syncs, adoption).
    pub local_failures: u64,
    /// Committee counters (validators with one key each).
    pub committee: Option<super::CommitteeStats>,
}

/// The chain node's status (part of [`crate::Status`]).
#[derive(Clone, Debug, Serialize)]
pub struct ChainStatus {
    /// Seconds since the node started.
    pub uptime_secs: f64,
    /// Catch-up phase.
    pub phase: PhaseName,
    /// Seconds in the `following` phase, if following.
    pub following_secs: Option<f64>,
    /// Local head height.
    pub head: u64,
    /// Its hash (hex).
    pub head_hash: String,
    /// Lowest height of the local history.
    pub low: u64,
    /// Latest local checkpoint.
    pub checkpoint: u64,
    /// Whether the node has executable state.
    pub has_state: bool,
    /// Best head reported by peers.
    pub best_head: u64,
    /// The checkpoint being synced or awaited.
    pub target: Option<u64>,
    /// Peers that reported their chain.
    pub peers: usize,
    /// Backfill has reached the horizon (or is not needed).
    pub backfill_done: bool,
    /// Counters.
    pub stats: ChainStats,
    /// The last catch-up decision.
    pub decision: Option<statesync_engine::decide::Decision>,
    /// Measured replay rate (blocks/s).
    pub replay_blocks_per_sec: f64,
    /// Measured state fetch rate (bytes/s).
    pub fetch_bytes_per_sec: f64,
    /// The chain's production rate (blocks/s), measured from peers' heads.
    pub production_blocks_per_sec: f64,
    /// Forward range sync counters.
    pub forward: Option<range::Stats>,
    /// Backfill counters.
    pub backfill: Option<range::Stats>,
}

/// A point of the node's timeline (four a second).
#[derive(Clone, Debug, Serialize)]
pub struct ChainSample {
    /// Seconds since the node started.
    pub t: f64,
    /// Catch-up phase.
    pub phase: PhaseName,
    /// Local head.
    pub head: u64,
    /// Best head reported by peers.
    pub best_head: u64,
    /// The checkpoint being synced or awaited.
    pub target: Option<u64>,
    /// Lowest height of the local history.
    pub low: u64,
    /// State bytes fetched so far (all syncs).
    pub state_fetched: u64,
    /// Bytes the running sync must fetch.
    pub state_needed: u64,
    /// State bytes received so far, per peer (all syncs).
    pub state_bytes_per_peer: std::collections::BTreeMap<String, u64>,
    /// Block bytes received so far, per peer.
    pub block_bytes_per_peer: std::collections::BTreeMap<String, u64>,
}

/// Totals of a chain node's run.
#[derive(Clone, Debug, Serialize)]
pub struct ChainSummary {
    /// Seconds since the node started.
    pub t: f64,
    /// Local head.
    pub head: u64,
    /// Lowest height of the local history.
    pub low: u64,
    /// Counters.
    pub stats: ChainStats,
    /// The last catch-up decision.
    pub decision: Option<statesync_engine::decide::Decision>,
    /// Block bytes received per peer.
    pub block_bytes_per_peer: HashMap<String, u64>,
    /// State bytes received per peer.
    pub state_bytes_per_peer: HashMap<String, u64>,
    /// Measured replay rate.
    pub replay_blocks_per_sec: f64,
}
