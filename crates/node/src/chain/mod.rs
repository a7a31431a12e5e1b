//! The chain node: a replica of the reference chain inside the node's event
//! loop. It produces blocks (a leader), serves blocks and checkpoints, and
//! catches up by the plan the catch-up core
//! ([`statesync_engine::catchup`]) picks: follow, replay blocks (forward
//! range sync), or state sync to a trusted checkpoint and replay from it;
//! backfill of history below a state-synced checkpoint runs beside replay
//! and following.
//!
//! This is a shell around sans-IO cores: the catch-up machine decides, the
//! range-sync and lookup cores schedule, the executor thread
//! (`executor`) executes, and the event loop moves bytes. The shell never
//! touches the network: it queues `ChainOut`s that the loop performs.

mod blocks;
pub(crate) mod committee;
pub(crate) mod executor;
mod types;

pub use types::{
    ChainSample, ChainSetup, ChainStats, ChainStatus, ChainSummary, DEFAULT_KEEP_BLOCKS,
};

pub(crate) use blocks::Answer;
pub use committee::CommitteeStats;
use committee::{Committee, CommitteeOut};

use crate::event::{ChainEvent, FetchError, FetchEvent, FetchId};
use crate::fetch::driver::{FetchDriver, FetchRequest, FetchSummary};
use crate::runtime::Task;
use executor::{ExecCmd, ExecDone, ExecKind, ImportTag};
use statesync_chain::blockstore::BlockStore;
use statesync_chain::replica::OpenReport;
use statesync_chain::{Block, ImportError, PROPOSER, Replica, Spec};
use statesync_engine::catchup::{self, CatchUp, Note, PhaseName};
use statesync_engine::lookup::{LookupConfig, Lookups};
use statesync_engine::range::{Processed, RangeSync};
use statesync_manifest::format::Manifest;
use statesync_manifest::hash::Hash;
use statesync_net::libp2p::PeerId;
use statesync_proto::blocks::BlockRequest;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// What the event loop must do for the chain node.
pub(crate) enum ChainOut {
    /// Send a block request; its answer comes back with `tag`.
    Send {
        peer: PeerId,
        tag: u64,
        req: BlockRequest,
    },
    /// Start a state sync with this id.
    StartFetch { id: FetchId, req: Box<FetchRequest> },
    /// Stop (and drop) the state sync with this id.
    StopFetch { id: FetchId },
    /// The peer misbehaved: keep it away for a while.
    Penalize(PeerId),
    /// For the embedder.
    Event(ChainEvent),
    /// The state diverged from the chain: the node must stop.
    Fatal(String),
}

/// Kinds of block requests in flight.
enum Req {
    Status,
    Range { id: u64 },
    Backfill { id: u64 },
    Anchor { height: u64 },
    Lookup { pushed: Option<Box<Block>> },
    Push,
}

/// A state sync the chain node runs.
struct Syncing {
    id: FetchId,
    height: u64,
    anchor: Block,
    out: PathBuf,
}

/// The chain node (see the module doc).
pub(crate) struct ChainNode {
    spec: Spec,
    setup: ChainSetup,
    data: PathBuf,
    exec: std::sync::mpsc::Sender<ExecCmd>,
    blocks: Arc<BlockStore>,
    head: u64,
    head_hash: Hash,
    low: u64,
    checkpoint: u64,
    has_state: bool,
    connected: HashSet<PeerId>,
    pending: HashMap<u64, Req>,
    next_tag: u64,
    catchup: CatchUp<PeerId>,
    forward: Option<RangeSync<PeerId, Block>>,
    backward: Option<RangeSync<PeerId, Block>>,
    lookups: Lookups,
    follow_inflight: bool,
    producing: bool,
    last_status_poll: Option<Instant>,
    next_block_at: Option<Instant>,
    last_follow: Instant,
    /// Verified checkpoint headers by height, until a sync starts from one.
    anchors: HashMap<u64, Block>,
    syncing: Option<Syncing>,
    fetch_ids: Arc<std::sync::atomic::AtomicU64>,
    start: Instant,
    last_sample: Option<Instant>,
    stats: ChainStats,
    block_bytes_per_peer: HashMap<String, u64>,
    state_bytes_per_peer: HashMap<String, u64>,
    out: VecDeque<ChainOut>,
    /// Committee mode (one key per validator process): this validator's
    /// part.
    committee: Option<Committee>,
    /// Highest block joined from a final head and a gossiped body and
    /// handed on (imported or looked up): later heads of it are not joined
    /// again.
    joined: u64,
    local_peer: PeerId,
    /// A gossiped proposal above head+1, executed once the head reaches
    /// its parent (its parent's final block may come after it).
    proposal_waiting: Option<Box<Block>>,
}

impl ChainNode {
    /// Opens the chain data in `data` (creating genesis state if this node
    /// produces) and starts the executor.
    pub fn start(
        data: PathBuf,
        mut setup: ChainSetup,
        local_peer: PeerId,
        fetch_ids: Arc<std::sync::atomic::AtomicU64>,
        tx: mpsc::UnboundedSender<Task>,
    ) -> Result<ChainNode, String> {
        let spec = setup.genesis.spec().map_err(|e| e.to_string())?;
        let (mut replica, rep): (Replica, OpenReport) =
            Replica::open_with(&data, spec.clone(), setup.produce)
                .map_err(|e| format!("open chain data in {}: {e}", data.display()))?;
        replica.keep = setup.keep.max(1);
        replica.keep_blocks = setup.keep_blocks;
        info!(
            chain = &spec.id.to_hex()[..16],
            state = if replica.has_state() {
                "present"
            } else {
                "absent"
            },
            head = rep.head,
            low = rep.low,
            checkpoint = rep.checkpoint,
            replayed = rep.replayed,
            "chain data opened"
        );
        let (head, head_hash) = replica.head();
        let low = replica.low();
        let has_state = replica.has_state();
        let blocks = replica.blocks.clone();
        let mut keys = Vec::new();
        for k in &setup.keys {
            let i = spec.index_of(k).ok_or_else(|| {
                format!("key {} is not a validator of this chain", k.public_hex())
            })?;
            keys.push((i, k.clone()));
        }
        // One key of a chain whose quorum needs more: a validator process
        // of the committee (validator 0 proposes, the others vote).
        let committee = if setup.produce && keys.len() == 1 && spec.quorum() > 1 {
            let (i, k) = keys[0].clone();
            let mut c = Committee::new(spec.clone(), i, k);
            #[cfg(feature = "fault-injection")]
            {
                c.forge = setup.forge_gossip;
            }
            #[cfg(not(feature = "fault-injection"))]
            {
                c.forge = false;
            }
            setup.produce = i == PROPOSER;
            Some(c)
        } else if keys.is_empty() && spec.quorum() > 1 {
            // No key: a listener of the committee's gossip, should its
            // validators run one key each.
            Some(Committee::listener(spec.clone()))
        } else {
            None
        };
        if setup.produce
            && !committee.as_ref().is_some_and(|c| c.is_member())
            && keys.len() < spec.quorum()
        {
            return Err(format!(
                "producing blocks needs {} validator keys (the quorum), {} given; with one key, a node is a validator of the committee",
                spec.quorum(),
                keys.len()
            ));
        }
        let (etx, erx) = std::sync::mpsc::channel::<ExecCmd>();
        executor::spawn(replica, keys, erx, tx).map_err(|e| format!("start executor: {e}"))?;
        let now = Instant::now();
        let g = &spec.genesis;
        let cfg = catchup::Config {
            produce: setup.produce,
            replay_from_genesis: setup.replay_from_genesis,
            force: setup.catch_up,
            switch_after_secs: setup.switch_after_secs,
            state_bytes: u64::from(g.state_files) * u64::from(g.file_size),
            checkpoint_interval: g.checkpoint_interval,
            block_interval: Duration::from_millis(g.block_ms.max(1)),
            lookup_depth: LookupConfig::default().max_depth,
            ..catchup::Config::default()
        };
        let mut n = ChainNode {
            catchup: CatchUp::new(cfg, head, low, has_state, now),
            spec,
            data,
            exec: etx,
            blocks,
            head,
            head_hash,
            low,
            checkpoint: rep.checkpoint,
            has_state,
            connected: HashSet::new(),
            pending: HashMap::new(),
            next_tag: 1,
            forward: None,
            backward: None,
            lookups: Lookups::new(LookupConfig::default()),
            follow_inflight: false,
            producing: false,
            last_status_poll: None,
            next_block_at: None,
            last_follow: now,
            anchors: HashMap::new(),
            syncing: None,
            fetch_ids,
            start: now,
            last_sample: None,
            stats: ChainStats::default(),
            block_bytes_per_peer: HashMap::new(),
            state_bytes_per_peer: HashMap::new(),
            out: VecDeque::new(),
            committee,
            joined: 0,
            local_peer,
            proposal_waiting: None,
            setup,
        };
        n.log(format!("started: head {head}, checkpoint {}", n.checkpoint));
        if let Some(c) = n.committee.as_ref().filter(|c| c.is_member()) {
            let role = if c.is_proposer() {
                "the proposer"
            } else {
                "a voter"
            };
            let me = c.me();
            n.log(format!("validator {me} of the committee, {role}"));
        }
        Ok(n)
    }

    /// The node's checkpoint store.
    pub fn store_path(&self) -> PathBuf {
        self.data.join("store")
    }

    /// The block store (read by the loop to serve blocks).
    pub fn block_store(&self) -> Arc<BlockStore> {
        self.blocks.clone()
    }

    /// The id of the state sync this node runs, if any.
    pub fn fetch_id(&self) -> Option<FetchId> {
        self.syncing.as_ref().map(|s| s.id)
    }

    /// What the loop must do next.
    pub fn poll_out(&mut self) -> Option<ChainOut> {
        self.out.pop_front()
    }

    fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// A line of the node's story: logged, and an event for timelines.
    fn log(&mut self, message: String) {
        info!("{message}");
        let t = self.t();
        self.out
            .push_back(ChainOut::Event(ChainEvent::Log { t, message }));
    }

    fn send(&mut self, peer: PeerId, req: BlockRequest, kind: Req) {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.pending.insert(tag, kind);
        self.out.push_back(ChainOut::Send { peer, tag, req });
    }

    /// A peer connected: ask for its status (and, in the committee, say
    /// which validator this node is).
    pub fn on_connected(&mut self, peer: PeerId) {
        self.connected.insert(peer);
        self.send(peer, BlockRequest::GetStatus, Req::Status);
        if let Some(hello) = self
            .committee
            .as_ref()
            .and_then(|c| c.hello(&self.local_peer))
        {
            self.send(peer, hello, Req::Push);
        }
        if let Some(c) = self.committee.as_mut() {
            c.on_connected(peer);
        }
        self.drain_committee(Instant::now());
    }

    /// A peer's last connection closed.
    pub fn on_disconnected(&mut self, peer: PeerId, now: Instant) {
        self.connected.remove(&peer);
        if let Some(c) = self.committee.as_mut() {
            c.on_disconnected(&peer);
        }
        self.catchup.handle_peer_gone(&peer);
        if let Some(f) = self.forward.as_mut() {
            f.remove_peer(&peer, now);
        }
        if let Some(b) = self.backward.as_mut() {
            b.remove_peer(&peer, now);
        }
    }

    /// The status for [`crate::Status`].
    pub fn status(&self) -> ChainStatus {
        let now = Instant::now();
        ChainStatus {
            uptime_secs: self.t(),
            phase: self.catchup.phase(),
            following_secs: self
                .catchup
                .following_since()
                .map(|t| now.saturating_duration_since(t).as_secs_f64()),
            head: self.head,
            head_hash: self.head_hash.to_hex(),
            low: self.low,
            checkpoint: self.checkpoint,
            has_state: self.has_state,
            best_head: self.catchup.best_head(),
            target: self.catchup.target(),
            peers: self.catchup.peers().count(),
            backfill_done: self.backfill_done(),
            stats: self.stats(),
            decision: self.catchup.decision().cloned(),
            replay_blocks_per_sec: self.catchup.replay_rate(),
            fetch_bytes_per_sec: self.catchup.fetch_rate(),
            production_blocks_per_sec: self.catchup.production_rate(),
            forward: self.forward.as_ref().map(|f| f.stats.clone()),
            backfill: self.backward.as_ref().map(|b| b.stats.clone()),
        }
    }

    /// How far down history is backfilled: the horizon, or less where
    /// retention would delete it again.
    fn backfill_floor(&self) -> u64 {
        let h = self.setup.horizon.max(1);
        match self.setup.keep_blocks {
            Some(n) => h.max(self.head.saturating_sub(n)),
            None => h,
        }
    }

    fn backfill_done(&self) -> bool {
        self.backward.as_ref().is_none_or(|b| b.is_done())
            && (self.setup.horizon == 0 || self.low <= self.backfill_floor() || self.head == 0)
    }

    fn stats(&self) -> ChainStats {
        let c = self.catchup.stats();
        ChainStats {
            switches: c.switches,
            state_syncs: c.state_syncs,
            committee: self.committee.as_ref().map(|c| c.stats.clone()),
            ..self.stats.clone()
        }
    }

    /// Totals of the run.
    pub fn summary(&self) -> ChainSummary {
        ChainSummary {
            t: self.t(),
            head: self.head,
            low: self.low,
            stats: self.stats(),
            decision: self.catchup.decision().cloned(),
            block_bytes_per_peer: self.block_bytes_per_peer.clone(),
            state_bytes_per_peer: self.state_bytes_per_peer.clone(),
            replay_blocks_per_sec: self.catchup.replay_rate(),
        }
    }

    /// Updates the Prometheus metrics.
    pub fn update_metrics(&self, m: &crate::metrics::Metrics) {
        use crate::metrics::{gauge, set};
        let st = self.stats();
        gauge(&m.chain_head, self.head);
        gauge(&m.chain_best_head, self.catchup.best_head());
        gauge(&m.chain_low, self.low);
        set(&m.blocks_imported, st.imported_range + st.imported_follow);
        set(&m.blocks_produced, st.produced);
        set(&m.state_syncs, st.state_syncs);
        set(&m.checkpoint_switches, st.switches);
    }

    /// The earliest deadline of the cores.
    pub fn deadline(&self) -> Option<Instant> {
        [
            self.forward.as_ref().and_then(|f| f.poll_timeout()),
            self.backward.as_ref().and_then(|b| b.poll_timeout()),
            self.catchup.poll_timeout(),
            self.committee.as_ref().and_then(|c| c.deadline()),
            self.next_block_at.filter(|_| {
                self.setup.produce
                    && !self.producing
                    && self.catchup.phase() == PhaseName::Following
                    && self.setup.stop_at.is_none_or(|s| self.head < s)
            }),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Timers of the range cores.
    pub fn on_timeout(&mut self, now: Instant) {
        if let Some(c) = self.committee.as_mut() {
            c.on_timeout(now);
        }
        self.drain_committee(now);
        if let Some(f) = self.forward.as_mut() {
            f.handle_timeout(now);
        }
        if let Some(b) = self.backward.as_mut() {
            b.handle_timeout(now);
        }
    }

    /// Drives production, the catch-up machine, backfill and the range
    /// cores; `fetch` is this node's running state sync, if any.
    pub fn step(&mut self, now: Instant, fetch: Option<&FetchDriver>) {
        if self
            .last_status_poll
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            self.last_status_poll = Some(now);
            for p in self.connected.clone() {
                self.send(p, BlockRequest::GetStatus, Req::Status);
            }
        }
        self.produce(now);
        if let Some(f) = fetch {
            self.catchup.handle_state_sync_peers(f.usable_peers(), now);
        } else if self.syncing.is_some() {
            self.catchup.handle_state_sync_peers(0, now);
        }
        if self.forward.as_ref().is_some_and(|f| f.is_done()) {
            self.catchup.handle_replay_done(now);
        }
        self.catchup.handle_timeout(now);
        self.run_catchup(now, fetch);
        if self.catchup.phase() == PhaseName::Following {
            self.chase_head(now);
        }
        // Backfill below a state-synced checkpoint.
        if self.backward.is_none()
            && self.setup.horizon > 0
            && self.has_state
            && self.low > self.backfill_floor()
            && matches!(
                self.catchup.phase(),
                PhaseName::Replay | PhaseName::Following
            )
        {
            let floor = self.backfill_floor();
            let mut b = RangeSync::backward(self.low, floor, self.setup.range.clone());
            for (p, s) in self.catchup.peers() {
                if s.head > 0 {
                    b.update_peer(*p, s.low.max(1), s.head, now);
                }
            }
            let msg = format!("backfill from {} down to {floor}", self.low);
            self.log(msg);
            self.backward = Some(b);
        }
        self.drive(now);
        if self
            .last_sample
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_millis(250))
        {
            self.last_sample = Some(now);
            let (fetched, needed) = fetch
                .map(|f| (f.bytes_fetched(), f.scheduler_progress().bytes_needed))
                .unwrap_or((0, 0));
            let mut state_bytes_per_peer: std::collections::BTreeMap<String, u64> = self
                .state_bytes_per_peer
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            if let Some(f) = fetch {
                for (p, b) in f.bytes_per_peer() {
                    *state_bytes_per_peer.entry(p.clone()).or_default() += b;
                }
            }
            let sample = ChainSample {
                t: self.t(),
                phase: self.catchup.phase(),
                head: self.head,
                best_head: self.catchup.best_head(),
                target: self.catchup.target(),
                low: self.low,
                state_fetched: self.stats.state_bytes_fetched + fetched,
                state_needed: needed,
                state_bytes_per_peer,
                block_bytes_per_peer: self
                    .block_bytes_per_peer
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect(),
            };
            self.out
                .push_back(ChainOut::Event(ChainEvent::Sample(sample)));
        }
    }

    /// The leader's block production, one block per block time (a timer
    /// per block, not the loop's tick).
    fn produce(&mut self, now: Instant) {
        if !self.setup.produce
            || self.catchup.phase() != PhaseName::Following
            || self.producing
            || self.setup.stop_at.is_some_and(|s| self.head >= s)
        {
            return;
        }
        let every = Duration::from_millis(self.spec.genesis.block_ms.max(1));
        let due = self.next_block_at.unwrap_or(now);
        if now < due {
            return;
        }
        self.producing = true;
        // The next block is due one block time after this one was due (not
        // after it was produced), so production keeps the chain's rate.
        let next = due + every;
        self.next_block_at = Some(if next < now { now + every } else { next });
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let cmd = if self.committee.as_ref().is_some_and(|c| c.is_member()) {
            ExecCmd::Propose { time_ms }
        } else {
            ExecCmd::Produce { time_ms }
        };
        let _ = self.exec.send(cmd);
    }

    /// Executes (and votes for) the proposal that waits, once this node
    /// follows at its parent.
    fn vote_if_ready(&mut self) {
        let Some(b) = self.proposal_waiting.take() else {
            return;
        };
        if b.height() <= self.head {
            return;
        }
        if self.catchup.phase() == PhaseName::Following
            && self.has_state
            && b.height() == self.head + 1
        {
            let _ = self.exec.send(ExecCmd::Vote { block: b });
        } else {
            self.proposal_waiting = Some(b);
        }
    }

    /// Performs what the committee asks.
    pub(crate) fn drain_committee(&mut self, now: Instant) {
        while let Some(o) = self.committee.as_mut().and_then(|c| c.poll()) {
            match o {
                CommitteeOut::Send(peer, req) => self.send(peer, req, Req::Push),
                CommitteeOut::Execute(b) => {
                    if b.height() > self.head {
                        self.proposal_waiting = Some(b);
                    }
                    self.vote_if_ready();
                }
                CommitteeOut::Finalize(b) => {
                    let _ = self.exec.send(ExecCmd::Import {
                        tag: ImportTag::Finalized,
                        blocks: vec![*b],
                        from: None,
                    });
                }
                CommitteeOut::Assembled(peer, b) => {
                    let h = b.height();
                    if h > self.head.max(self.joined) && self.on_pushed_block(peer, *b, now) {
                        self.joined = h;
                    }
                }
                CommitteeOut::FetchFrom(peer, height) => self.fetch_announced(peer, height, now),
                CommitteeOut::Misbehaved(peer, reason) => {
                    self.log(format!("gossip: peer {peer} sent forged data: {reason}"));
                    self.out.push_back(ChainOut::Penalize(peer));
                }
                CommitteeOut::Log(m) => self.log(m),
            }
        }
    }

    /// Performs what the catch-up machine asks.
    fn run_catchup(&mut self, now: Instant, fetch: Option<&FetchDriver>) {
        while let Some(a) = self.catchup.poll_action() {
            match a {
                catchup::Action::AskAnchor { peer, height } => {
                    self.send(
                        peer,
                        BlockRequest::GetBlocks {
                            start: height,
                            count: 1,
                        },
                        Req::Anchor { height },
                    );
                }
                catchup::Action::StartStateSync {
                    height,
                    switch_from,
                } => {
                    if let Err(e) = self.start_state_sync(height, switch_from, fetch) {
                        // A local failure (a full disk creating the staging
                        // area, say) is retried like a failed sync.
                        self.log(format!("state sync to {height} cannot start: {e}"));
                        self.stats.local_failures += 1;
                        self.catchup.handle_state_sync_failed(now);
                    }
                }
                catchup::Action::StopStateSync => self.stop_state_sync(fetch),
                catchup::Action::Adopt { height } => self.adopt(height, now),
                catchup::Action::InitGenesis => {
                    let _ = self.exec.send(ExecCmd::InitGenesis);
                }
                catchup::Action::StartReplay => {
                    let mut f = RangeSync::forward(self.head, self.setup.range.clone());
                    for (p, s) in self.catchup.peers() {
                        if s.head > 0 {
                            f.update_peer(*p, s.low.max(1), s.head, now);
                        }
                    }
                    self.forward = Some(f);
                }
                catchup::Action::StopReplay => self.forward = None,
                catchup::Action::Note(n) => self.note(n),
            }
        }
    }

    fn note(&mut self, n: Note) {
        let msg = match &n {
            Note::Phase { from, to, head } => format!("phase {from} -> {to} at height {head}"),
            Note::Decided { decision } => {
                format!("decision: {} ({})", decision.plan, decision.reason)
            }
            Note::NoPeerWithBlocks => "no peer with blocks yet: waiting".into(),
            Note::AnchorUnusable { height } => {
                format!("checkpoint header {height} unusable; its sender's claims are ignored")
            }
            Note::Switching { from, to } => {
                format!(
                    "switching state sync {from} -> {to} (a newer checkpoint; what was fetched is kept)"
                )
            }
            Note::GaveUp { height } => {
                format!("nobody serves checkpoint {height} any more: deciding again")
            }
            Note::SyncFailed {
                height,
                retry_in_secs,
            } => format!("state sync of {height} failed; deciding again in {retry_in_secs:.1} s"),
            Note::ReplayTooSlow { reason } => {
                format!("replay is too slow ({reason}): state sync instead")
            }
            Note::FellBehind { head, best } => format!("fell behind ({head} < {best}): range sync"),
        };
        self.log(msg);
        let t = self.t();
        self.out
            .push_back(ChainOut::Event(ChainEvent::CatchUp { t, note: n }));
    }

    fn start_state_sync(
        &mut self,
        height: u64,
        switch_from: Option<u64>,
        fetch: Option<&FetchDriver>,
    ) -> Result<(), String> {
        let anchor = self
            .anchors
            .remove(&height)
            .ok_or_else(|| format!("no verified header of checkpoint {height}"))?;
        if switch_from.is_some() {
            self.stop_state_sync(fetch);
        }
        self.forward = None;
        let root = anchor.header.state_root;
        let incoming = self.data.join("incoming");
        let out = incoming.join(format!("{height:020}"));
        std::fs::create_dir_all(&incoming)
            .map_err(|e| format!("create {}: {e}", incoming.display()))?;
        let _ = std::fs::remove_dir_all(&out);
        let _ = std::fs::remove_file(crate::fetch::manifest_path_for(&out));
        // Every checkpoint on disk is a source of identical files/chunks.
        let (store, _) =
            statesync_store::Store::open(self.store_path()).map_err(|e| e.to_string())?;
        let mut seeds = Vec::new();
        for c in store.list().map_err(|e| e.to_string())? {
            if let Ok(m) = store.load_manifest(c.height) {
                seeds.push((c.path.clone(), m));
            }
        }
        let mut req = FetchRequest::new(root, out.clone());
        req.seeds = seeds;
        let id = self
            .fetch_ids
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.syncing = Some(Syncing {
            id,
            height,
            anchor,
            out,
        });
        self.out.push_back(ChainOut::StartFetch {
            id,
            req: Box::new(req),
        });
        let msg = format!(
            "state sync to checkpoint {height} (root {})",
            &root.to_hex()[..16]
        );
        self.log(msg);
        Ok(())
    }

    /// Stops the running sync, keeping its figures (and its staged chunks,
    /// which the next plan reuses).
    fn stop_state_sync(&mut self, fetch: Option<&FetchDriver>) {
        let Some(s) = self.syncing.take() else {
            return;
        };
        if let Some(f) = fetch.filter(|f| f.id == s.id) {
            self.stats.state_bytes_fetched += f.bytes_fetched();
            for (p, b) in f.bytes_per_peer() {
                *self.state_bytes_per_peer.entry(p.clone()).or_default() += b;
            }
        }
        self.out.push_back(ChainOut::StopFetch { id: s.id });
    }

    fn adopt(&mut self, height: u64, now: Instant) {
        let Some(s) = self.syncing.take().filter(|s| s.height == height) else {
            self.catchup.handle_adopted(false, now);
            return;
        };
        let manifest = match std::fs::read(crate::fetch::manifest_path_for(&s.out))
            .map_err(|e| e.to_string())
            .and_then(|b| Manifest::decode(&b).map_err(|e| e.to_string()))
        {
            Ok(m) => m,
            Err(e) => {
                self.log(format!("synced manifest unreadable: {e}"));
                self.stats.local_failures += 1;
                self.catchup.handle_adopted(false, now);
                return;
            }
        };
        let _ = self.exec.send(ExecCmd::Adopt {
            anchor: Box::new(s.anchor),
            dir: s.out,
            manifest: Box::new(manifest),
        });
    }

    /// An event of this node's state sync.
    pub fn on_fetch_event(&mut self, id: FetchId, ev: &FetchEvent, now: Instant) {
        if self.fetch_id() != Some(id) {
            return;
        }
        match ev {
            FetchEvent::Done(summary) => self.sync_done(summary, now),
            FetchEvent::Failed(e) => self.sync_failed(e, now),
            _ => {}
        }
    }

    fn sync_done(&mut self, summary: &FetchSummary, now: Instant) {
        self.stats.state_bytes_fetched += summary.bytes_fetched;
        self.stats.state_bytes_reused += summary.local.reused();
        for (p, b) in &summary.bytes_per_peer {
            *self.state_bytes_per_peer.entry(p.clone()).or_default() += b;
        }
        let height = self.syncing.as_ref().map_or(0, |s| s.height);
        self.log(format!(
            "state sync of checkpoint {height} done: fetched {}, reused {} locally, {:.1}s",
            crate::bytes(summary.bytes_fetched),
            crate::bytes(summary.local.reused()),
            summary.seconds
        ));
        self.catchup
            .handle_state_sync_done(summary.bytes_fetched, summary.seconds, now);
        self.run_catchup(now, None);
    }

    fn sync_failed(&mut self, e: &FetchError, now: Instant) {
        warn!(fault = ?e.fault, "state sync failed: {}", e.message);
        self.syncing = None;
        self.stats.local_failures += 1;
        self.catchup.handle_state_sync_failed(now);
        self.run_catchup(now, None);
    }

    /// The executor finished a command.
    pub fn on_exec(&mut self, done: ExecDone, now: Instant) {
        let advanced = done.head.0 > self.head;
        self.head = done.head.0;
        self.head_hash = done.head.1;
        self.low = done.low;
        self.checkpoint = done.checkpoint;
        self.has_state = done.has_state;
        self.catchup
            .handle_local(self.head, self.low, self.has_state);
        if advanced {
            self.lookups.advanced(self.head);
            self.vote_if_ready();
        }
        match done.kind {
            ExecKind::Imported {
                tag,
                from,
                result,
                count,
                secs,
                last,
            } => self.imported(tag, from, result, count, secs, last, now),
            ExecKind::Produced(r) => {
                self.producing = false;
                match r {
                    Ok(b) => {
                        self.stats.produced += 1;
                        self.push_to_all(&b, None);
                    }
                    Err(e) => {
                        self.stats.local_failures += 1;
                        warn!("producing a block failed: {e}");
                    }
                }
            }
            ExecKind::Proposed(r) => match r {
                Ok(b) => {
                    let h = b.height();
                    debug!(height = h, "proposal executed, spreading it");
                    if let Some(c) = self.committee.as_mut() {
                        c.start_proposal(b, now);
                    }
                    self.drain_committee(now);
                }
                Err(e) => {
                    self.producing = false;
                    self.stats.local_failures += 1;
                    warn!("proposing a block failed: {e}");
                }
            },
            ExecKind::Voted { block, result } => match result {
                Ok(sig) => {
                    if let Some(c) = self.committee.as_mut() {
                        c.voted(&block, sig, now);
                    }
                    self.drain_committee(now);
                }
                Err(ImportError::Bad(e)) => {
                    self.log(format!(
                        "no vote for proposal {}: {e} (the proposer's fault)",
                        block.height()
                    ));
                }
                Err(e) => debug!(height = block.height(), "no vote: {e}"),
            },
            ExecKind::Backfilled { batch, result } => {
                if let Some(b) = self.backward.as_mut() {
                    let p = processed(result);
                    if p == Processed::Ok {
                        self.stats.backfill_batches += 1;
                    }
                    b.processed(batch, p, now);
                    if b.is_done() {
                        let low = self.low;
                        self.log(format!("backfill complete: history from {low}"));
                    }
                }
            }
            ExecKind::Adopted(r) => {
                match r {
                    Ok(h) => {
                        self.log(format!("checkpoint {h} adopted: state at height {h}"));
                        // History restarts at the new anchor: a backfill
                        // core from before (another low) would never fit.
                        self.backward = None;
                        self.catchup.handle_adopted(true, now);
                    }
                    Err(e) => {
                        self.stats.local_failures += 1;
                        self.log(format!("adopting the synced checkpoint failed: {e}"));
                        self.catchup.handle_adopted(false, now);
                    }
                }
                self.run_catchup(now, None);
            }
            ExecKind::Genesis(r) => {
                if let Err(e) = &r {
                    self.log(format!("genesis state failed: {e}"));
                }
                self.catchup.handle_genesis(r.is_ok(), now);
                self.run_catchup(now, None);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn imported(
        &mut self,
        tag: ImportTag,
        from: Option<PeerId>,
        result: Result<statesync_chain::replica::ImportReport, ImportError>,
        count: u64,
        secs: f64,
        last: Option<Block>,
        now: Instant,
    ) {
        if let Err(ImportError::Fatal(e)) = &result {
            self.log(format!(
                "FATAL: {e}; stopping (a restart rebuilds the state from the last good checkpoint)"
            ));
            self.out
                .push_back(ChainOut::Fatal(format!("state divergence: {e}")));
            return;
        }
        match (&result, tag) {
            (Ok(_), ImportTag::Range(_)) => {
                self.stats.imported_range += count;
                self.catchup.handle_replay_batch(count, secs, now);
            }
            (Ok(_), ImportTag::Follow) => {
                if let Some(c) = self.committee.as_mut() {
                    c.finalized(self.head);
                }
                self.stats.imported_follow += count;
                self.last_follow = now;
                self.follow_inflight = false;
                // Relay the new head to everyone but the sender.
                if let Some(b) = last {
                    self.push_to_all(&b, from);
                }
            }
            (Err(e), ImportTag::Follow) => {
                self.follow_inflight = false;
                warn!("following: import failed: {e}");
            }
            (Ok(_), ImportTag::Finalized) => {
                self.producing = false;
                self.stats.produced += 1;
                if let Some(c) = self.committee.as_mut() {
                    c.finalized(self.head);
                }
                if let Some(b) = last {
                    self.push_to_all(&b, None);
                }
            }
            (Err(e), ImportTag::Finalized) => {
                self.stats.local_failures += 1;
                if let Some(c) = self.committee.as_mut() {
                    c.finalize_failed();
                }
                warn!("finalizing the proposal failed: {e}");
            }
            (Err(_), ImportTag::Range(_)) => {}
        }
        if let ImportTag::Range(batch) = tag
            && let Some(f) = self.forward.as_mut()
        {
            let p = processed(result.map(|_| ()));
            if let Processed::Local(_) = p {
                self.stats.local_failures += 1;
            }
            f.processed(batch, p, now);
        }
    }

    /// Announces a final block to every peer but `except`: its final head
    /// (header and proof) to peers that have the body from gossip (members
    /// of the committee, this validator's listeners), the whole block to
    /// the others.
    fn push_to_all(&mut self, b: &Block, except: Option<PeerId>) {
        let mut enc = None;
        let mut head = None;
        let h = b.height();
        // Peers that told us of this height (a push, a final head or a
        // status) have it already.
        let known: HashSet<PeerId> = self
            .catchup
            .peers()
            .filter(|(_, v)| v.head >= h)
            .map(|(p, _)| *p)
            .collect();
        for p in self.connected.clone() {
            if Some(p) == except || known.contains(&p) {
                continue;
            }
            if self.committee.as_ref().is_some_and(|c| c.has_gossip(&p)) {
                let head = head.get_or_insert_with(|| b.encode_head()).clone();
                self.stats.finals_sent += 1;
                self.send(p, BlockRequest::Final { head }, Req::Push);
            } else {
                let block = enc.get_or_insert_with(|| b.encode()).clone();
                self.stats.blocks_pushed += 1;
                self.stats.pushed_bytes += block.len() as u64;
                self.send(p, BlockRequest::NewBlock { block }, Req::Push);
            }
        }
    }
}

fn processed(r: Result<(), ImportError>) -> Processed {
    match r {
        Ok(()) => Processed::Ok,
        Err(ImportError::Bad(e)) => Processed::BadBlock(e.to_string()),
        Err(ImportError::Local(e)) | Err(ImportError::Fatal(e)) => Processed::Local(e),
    }
}
