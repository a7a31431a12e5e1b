//! The chain node: a replica of the reference chain inside the node's event
//! loop. It produces blocks (leader), serves blocks and checkpoints, and
//! catches up by the plan the catch-up decision picks:
//!
//! ```text
//! Waiting --decide--> Following                       (near the head)
//!         \---------> Replay (forward range sync) ---> Following
//!          \--------> StateSync (newer checkpoints: switch, keeping chunks)
//!                        -> Adopting -> Replay -> Following
//! ```
//!
//! plus backfill of history below a state-synced checkpoint, concurrently
//! with replay/following. Replay and state sync never run at once.
//!
//! All block and state execution happens on one executor thread that owns
//! the [`Replica`]; this file decides, the sans-IO cores schedule, the
//! event loop moves bytes.

use crate::fetch_driver::FetchDriver;
use crate::p2p::{FetchJob, FetchSummary, LoopMsg, NodeCfg};
use crate::serve::{ServeLimits, Server};
use crate::session;
use statesync_chain::blockstore::BlockStore;
use statesync_chain::replica::{ImportReport, OpenReport};
use statesync_chain::{Block, Genesis, ImportError, Replica, Spec, ValidatorKey};
use statesync_engine::decide::{self, Decision, Inputs, Plan};
use statesync_engine::lookup::{Admit, LookupConfig, Lookups};
use statesync_engine::peers::PeerManager;
use statesync_engine::range::{self, Action, Processed, RangeSync, RequestFault};
use statesync_manifest::format::Manifest;
use statesync_manifest::hash::Hash;
use statesync_net::Behaviour;
use statesync_net::libp2p::request_response::{OutboundRequestId, ResponseChannel};
use statesync_net::libp2p::{Multiaddr, PeerId, Swarm};
use statesync_proto::Advert;
use statesync_proto::blocks::{BlockRequest, BlockResponse, MAX_BLOCKS_PER_REQUEST, Status};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, Error>;

/// How a chain node runs.
#[derive(Clone)]
pub struct ChainSetup {
    pub genesis: Genesis,
    /// Validator keys this node signs with; a producing node needs a quorum.
    pub keys: Vec<ValidatorKey>,
    /// Produce blocks (the leader).
    pub produce: bool,
    /// Checkpoints kept by retention.
    pub keep: usize,
    /// Backfill history down to this height (1: genesis; 0: no backfill).
    pub horizon: u64,
    pub limits: ServeLimits,
    /// Without local state, replay from genesis when peers have the whole
    /// history and replay is the better plan (else: state sync).
    pub replay_from_genesis: bool,
    /// Exit with success after following the head this long (demo, tests).
    pub exit_after_following: Option<Duration>,
    /// The leader stops producing at this height.
    pub stop_at: Option<u64>,
    /// A JSON-lines timeline of this node (for the demo's report).
    pub report: Option<PathBuf>,
    /// Move a running state sync to a newer checkpoint when replaying the
    /// blocks between them would take longer than this.
    pub switch_after_secs: f64,
    pub range: range::Config,
    /// Force a catch-up plan instead of deciding by measured rates.
    pub catch_up: CatchUp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CatchUp {
    /// Decide by measured replay and fetch rates.
    Auto,
    /// Always replay blocks (needs peers with the history).
    Replay,
    /// Always state sync to the latest checkpoint when behind.
    StateSync,
}

impl ChainSetup {
    pub fn new(genesis: Genesis) -> ChainSetup {
        ChainSetup {
            genesis,
            keys: Vec::new(),
            produce: false,
            keep: 3,
            horizon: 1,
            limits: ServeLimits::default(),
            replay_from_genesis: false,
            exit_after_following: None,
            stop_at: None,
            report: None,
            switch_after_secs: 2.0,
            range: range::Config::default(),
            catch_up: CatchUp::Auto,
        }
    }
}

/// What the loop needs to give the chain node each step.
pub struct Ctx<'a> {
    pub swarm: &'a mut Swarm<Behaviour>,
    pub fetch: &'a mut Option<FetchDriver>,
    pub adverts: &'a HashMap<PeerId, Advert>,
    pub peers: &'a mut PeerManager<PeerId, Multiaddr>,
    pub local_id: PeerId,
    pub generation: &'a mut u64,
    pub tx: &'a mpsc::UnboundedSender<LoopMsg>,
}

pub enum ChainMsg {
    Exec(Box<ExecDone>),
    Served {
        peer: PeerId,
        channel: ResponseChannel<BlockResponse>,
        resp: BlockResponse,
        bytes: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ImportTag {
    Range(u64),
    Follow,
}

enum ExecCmd {
    Import {
        tag: ImportTag,
        blocks: Vec<Block>,
        from: Option<PeerId>,
    },
    Produce {
        time_ms: u64,
    },
    Backfill {
        batch: u64,
        desc: Vec<Block>,
    },
    Adopt {
        anchor: Box<Block>,
        dir: PathBuf,
        manifest: Box<Manifest>,
    },
    InitGenesis,
}

pub struct ExecDone {
    kind: ExecKind,
    head: (u64, Hash),
    low: u64,
    checkpoint: u64,
    has_state: bool,
}

enum ExecKind {
    Imported {
        tag: ImportTag,
        from: Option<PeerId>,
        result: std::result::Result<ImportReport, ImportError>,
        count: u64,
        secs: f64,
        last: Option<Block>,
    },
    Produced(std::result::Result<Block, String>),
    Backfilled {
        batch: u64,
        result: std::result::Result<(), ImportError>,
    },
    Adopted(std::result::Result<u64, String>),
    Genesis(std::result::Result<(), String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum PhaseName {
    Waiting,
    AwaitAnchor,
    StateSync,
    Adopting,
    Genesis,
    Replay,
    Following,
}

enum Phase {
    Waiting { since: Instant },
    AwaitAnchor { height: u64, asked: Instant },
    StateSync { height: u64, anchor: Block },
    Adopting,
    Genesis,
    Replay,
    Following { since: Instant },
}

enum Req {
    Status,
    Range { id: u64 },
    Backfill { id: u64 },
    Anchor { height: u64 },
    Lookup { pushed: Option<Block> },
    Push,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ChainStats {
    pub produced: u64,
    pub imported_range: u64,
    pub imported_follow: u64,
    pub backfill_batches: u64,
    pub switches: u64,
    pub state_syncs: u64,
    pub state_bytes_fetched: u64,
    pub state_bytes_reused: u64,
    pub lookups: u64,
    pub bad_pushes: u64,
    pub local_failures: u64,
}

pub struct ChainNode {
    spec: Spec,
    setup: ChainSetup,
    data: PathBuf,
    quiet: bool,
    exec: std::sync::mpsc::Sender<ExecCmd>,
    blocks: Arc<BlockStore>,
    head: u64,
    head_hash: Hash,
    low: u64,
    checkpoint: u64,
    has_state: bool,
    statuses: HashMap<PeerId, Status>,
    connected: HashSet<PeerId>,
    pending: HashMap<OutboundRequestId, Req>,
    phase: Phase,
    forward: Option<RangeSync<PeerId, Block>>,
    backward: Option<RangeSync<PeerId, Block>>,
    lookups: Lookups,
    follow_inflight: bool,
    producing: bool,
    last_status_poll: Instant,
    last_produce: Instant,
    last_decide: Instant,
    /// State syncs that failed locally in a row (a full disk, say): the
    /// next decision waits 0.5 s doubled this many times (at most 32 s).
    sync_failures_in_row: u32,
    last_switch: Instant,
    switch_asked: Option<Instant>,
    pending_anchor: Option<Block>,
    anchor_asks: usize,
    last_follow: Instant,
    unserved_since: Option<Instant>,
    /// Peers whose checkpoint claims proved false.
    distrusted: HashSet<PeerId>,
    /// Measured rates for the decision.
    replay_bps: f64,
    fetch_bps: f64,
    last_range_done: Option<Instant>,
    decision: Option<Decision>,
    start: Instant,
    last_sample: Instant,
    report: Option<std::fs::File>,
    pub stats: ChainStats,
    block_bytes_per_peer: HashMap<String, u64>,
    state_bytes_per_peer: HashMap<String, u64>,
    tx: mpsc::UnboundedSender<LoopMsg>,
}

fn blocks_of(peer_resp: Vec<Vec<u8>>) -> std::result::Result<Vec<Block>, String> {
    peer_resp
        .iter()
        .map(|b| Block::decode(b).map_err(|e| e.to_string()))
        .collect()
}

impl ChainNode {
    pub fn start(
        cfg: &NodeCfg,
        setup: ChainSetup,
        tx: mpsc::UnboundedSender<LoopMsg>,
    ) -> Result<ChainNode> {
        let spec = setup.genesis.spec()?;
        let create_genesis = setup.produce;
        let (mut replica, rep): (Replica, OpenReport) =
            Replica::open_with(&cfg.data, spec.clone(), create_genesis)
                .map_err(|e| format!("open chain data: {e}"))?;
        replica.keep = setup.keep;
        // A following node checkpoints at every checkpoint height so it can
        // serve them; catching up it checkpoints once per imported batch.
        if !cfg.quiet {
            eprintln!(
                "chain {}: state {}, head {}, history from {}, latest checkpoint {}{}",
                &spec.id.to_hex()[..16],
                if replica.has_state() {
                    "present"
                } else {
                    "absent"
                },
                rep.head,
                rep.low,
                rep.checkpoint,
                if rep.replayed > 0 {
                    format!(", replayed {} stored blocks", rep.replayed)
                } else {
                    String::new()
                }
            );
        }
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
        if setup.produce && keys.len() < spec.quorum() {
            return Err(format!(
                "producing blocks needs {} validator keys (the quorum), {} given",
                spec.quorum(),
                keys.len()
            )
            .into());
        }
        let (etx, erx) = std::sync::mpsc::channel::<ExecCmd>();
        let tx2 = tx.clone();
        std::thread::Builder::new()
            .name("executor".into())
            .spawn(move || executor(replica, keys, erx, tx2))?;
        let report = match &setup.report {
            Some(p) => {
                Some(std::fs::File::create(p).map_err(|e| format!("create {}: {e}", p.display()))?)
            }
            None => None,
        };
        let now = Instant::now();
        let past = now.checked_sub(Duration::from_secs(3600)).unwrap_or(now);
        let mut n = ChainNode {
            spec,
            data: cfg.data.clone(),
            quiet: cfg.quiet,
            exec: etx,
            blocks,
            head,
            head_hash,
            low,
            checkpoint: rep.checkpoint,
            has_state,
            statuses: HashMap::new(),
            connected: HashSet::new(),
            pending: HashMap::new(),
            phase: Phase::Waiting { since: now },
            forward: None,
            backward: None,
            lookups: Lookups::new(LookupConfig::default()),
            follow_inflight: false,
            producing: false,
            last_status_poll: past,
            last_produce: past,
            last_decide: past,
            sync_failures_in_row: 0,
            last_switch: past,
            switch_asked: None,
            pending_anchor: None,
            anchor_asks: 0,
            last_follow: now,
            unserved_since: None,
            distrusted: HashSet::new(),
            replay_bps: 500.0,
            fetch_bps: 50e6,
            last_range_done: None,
            decision: None,
            start: now,
            last_sample: past,
            report,
            stats: ChainStats::default(),
            block_bytes_per_peer: HashMap::new(),
            state_bytes_per_peer: HashMap::new(),
            tx,
            setup,
        };
        n.event(&format!(
            "started: head {head}, checkpoint {}",
            n.checkpoint
        ));
        Ok(n)
    }

    pub fn store_path(&self) -> PathBuf {
        self.data.join("store")
    }

    fn log(&self, msg: &str) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }

    fn event(&mut self, msg: &str) {
        self.log(msg);
        let t = self.start.elapsed().as_secs_f64();
        if let Some(f) = self.report.as_mut() {
            let _ = writeln!(f, "{}", serde_json::json!({"t": t, "event": msg}));
        }
    }

    fn phase_name(&self) -> PhaseName {
        match self.phase {
            Phase::Waiting { .. } => PhaseName::Waiting,
            Phase::AwaitAnchor { .. } => PhaseName::AwaitAnchor,
            Phase::StateSync { .. } => PhaseName::StateSync,
            Phase::Adopting => PhaseName::Adopting,
            Phase::Genesis => PhaseName::Genesis,
            Phase::Replay => PhaseName::Replay,
            Phase::Following { .. } => PhaseName::Following,
        }
    }

    fn set_phase(&mut self, p: Phase) {
        let from = self.phase_name();
        self.phase = p;
        let to = self.phase_name();
        if from != to {
            let h = self.head;
            self.event(&format!("phase {from:?} -> {to:?} at height {h}"));
        }
    }

    fn best_head(&self) -> u64 {
        self.statuses
            .values()
            .map(|s| s.head)
            .max()
            .unwrap_or(0)
            .max(self.head)
    }

    fn status(&self) -> Status {
        Status {
            head: self.head,
            head_hash: self.head_hash.0,
            low: if self.head == 0 { 0 } else { self.low },
            checkpoint: self.checkpoint,
        }
    }

    pub fn update_metrics(&self, m: &crate::metrics::Metrics) {
        use crate::metrics::{gauge, set};
        gauge(&m.chain_head, self.head);
        gauge(&m.chain_best_head, self.best_head());
        gauge(&m.chain_low, self.low);
        set(
            &m.blocks_imported,
            self.stats.imported_range + self.stats.imported_follow,
        );
        set(&m.blocks_produced, self.stats.produced);
        set(&m.state_syncs, self.stats.state_syncs);
        set(&m.checkpoint_switches, self.stats.switches);
    }

    pub fn status_json(&self) -> serde_json::Value {
        serde_json::json!({
            "phase": self.phase_name(),
            "head": self.head,
            "head_hash": self.head_hash.to_hex(),
            "low": self.low,
            "checkpoint": self.checkpoint,
            "has_state": self.has_state,
            "best_head": self.best_head(),
            "target": match &self.phase {
                Phase::AwaitAnchor { height, .. } | Phase::StateSync { height, .. } => Some(*height),
                _ => None,
            },
            "peers": self.statuses.len(),
            "stats": self.stats,
            "decision": self.decision,
            "replay_blocks_per_sec": self.replay_bps,
            "fetch_bytes_per_sec": self.fetch_bps,
            "forward": self.forward.as_ref().map(|f| f.stats.clone()),
            "backfill": self.backward.as_ref().map(|b| b.stats.clone()),
        })
    }

    fn send(&mut self, swarm: &mut Swarm<Behaviour>, peer: &PeerId, req: BlockRequest, kind: Req) {
        let rid = swarm.behaviour_mut().blocks.send_request(peer, req);
        self.pending.insert(rid, kind);
    }

    pub fn on_connected(&mut self, peer: PeerId, swarm: &mut Swarm<Behaviour>) {
        self.connected.insert(peer);
        self.send(swarm, &peer, BlockRequest::GetStatus, Req::Status);
    }

    pub fn on_disconnected(&mut self, peer: PeerId, now: Instant) {
        self.connected.remove(&peer);
        self.statuses.remove(&peer);
        if let Some(f) = self.forward.as_mut() {
            f.remove_peer(&peer, now);
        }
        if let Some(b) = self.backward.as_mut() {
            b.remove_peer(&peer, now);
        }
    }

    pub fn stop(&mut self) {
        self.write_summary();
    }

    /// Serving side of the blocks protocol.
    pub fn on_request(
        &mut self,
        peer: PeerId,
        req: BlockRequest,
        channel: ResponseChannel<BlockResponse>,
        swarm: &mut Swarm<Behaviour>,
        server: &mut Server,
        now: Instant,
    ) {
        match req {
            BlockRequest::GetStatus => {
                let _ = swarm
                    .behaviour_mut()
                    .blocks
                    .send_response(channel, BlockResponse::Status(self.status()));
            }
            BlockRequest::GetBlocks { start, count } => {
                if self.head == 0 || start < self.low || start > self.head {
                    let _ = swarm
                        .behaviour_mut()
                        .blocks
                        .send_response(channel, BlockResponse::NotFound);
                    return;
                }
                let count = count.min(MAX_BLOCKS_PER_REQUEST);
                // Charged at an estimate; blocks are small next to chunks.
                let est = u64::from(count) * (self.spec.genesis.txs_per_block as u64 * 48 + 400);
                if let Err(retry_after_ms) = server.charge(peer, est) {
                    let _ = swarm
                        .behaviour_mut()
                        .blocks
                        .send_response(channel, BlockResponse::Busy { retry_after_ms });
                    return;
                }
                let store = self.blocks.clone();
                let tx = self.tx.clone();
                tokio::task::spawn_blocking(move || {
                    let resp = match store.range_raw(start, u64::from(count), 8 << 20) {
                        Ok(blocks) => BlockResponse::Blocks { blocks },
                        Err(_) => BlockResponse::NotFound,
                    };
                    let bytes = match &resp {
                        BlockResponse::Blocks { blocks } => {
                            blocks.iter().map(|b| b.len() as u64).sum()
                        }
                        _ => 0,
                    };
                    let _ = tx.send(LoopMsg::Chain(ChainMsg::Served {
                        peer,
                        channel,
                        resp,
                        bytes,
                    }));
                });
            }
            BlockRequest::NewBlock { block } => {
                let _ = swarm
                    .behaviour_mut()
                    .blocks
                    .send_response(channel, BlockResponse::Ack);
                let b = match Block::decode(&block)
                    .map_err(|e| e.to_string())
                    .and_then(|b| {
                        self.spec.verify(&b).map_err(|e| e.to_string())?;
                        Ok(b)
                    }) {
                    Ok(b) => b,
                    Err(e) => {
                        self.stats.bad_pushes += 1;
                        self.log(&format!("dropped a bad block pushed by {peer}: {e}"));
                        return;
                    }
                };
                let h = b.height();
                if let Some(s) = self.statuses.get_mut(&peer)
                    && h > s.head
                {
                    s.head = h;
                    s.head_hash = b.hash().0;
                }
                match self.phase {
                    Phase::Following { .. } if self.has_state => {
                        if h == self.head + 1 && b.header.parent == self.head_hash {
                            if !self.follow_inflight {
                                self.follow_inflight = true;
                                let _ = self.exec.send(ExecCmd::Import {
                                    tag: ImportTag::Follow,
                                    blocks: vec![b],
                                    from: Some(peer),
                                });
                            }
                        } else if h > self.head + 1 {
                            match self.lookups.admit(self.head, h, now) {
                                Admit::Fetch { start, end } => {
                                    self.stats.lookups += 1;
                                    let count = (end - start + 1)
                                        .min(u64::from(MAX_BLOCKS_PER_REQUEST))
                                        as u32;
                                    self.send(
                                        swarm,
                                        &peer,
                                        BlockRequest::GetBlocks { start, count },
                                        Req::Lookup { pushed: Some(b) },
                                    );
                                }
                                Admit::TooDeep => self.start_replay(now),
                                Admit::Pending | Admit::Full => {}
                            }
                        }
                    }
                    Phase::Replay => {
                        if let (Some(f), Some(s)) =
                            (self.forward.as_mut(), self.statuses.get(&peer))
                        {
                            f.update_peer(peer, s.low.max(1), s.head, now);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    pub fn on_response(
        &mut self,
        rid: OutboundRequestId,
        peer: PeerId,
        resp: BlockResponse,
        swarm: &mut Swarm<Behaviour>,
        now: Instant,
    ) {
        let Some(kind) = self.pending.remove(&rid) else {
            return;
        };
        if let BlockResponse::Blocks { blocks } = &resp {
            *self
                .block_bytes_per_peer
                .entry(peer.to_string())
                .or_default() += blocks.iter().map(|b| b.len() as u64).sum::<u64>();
        }
        match kind {
            Req::Status => {
                if let BlockResponse::Status(s) = resp {
                    self.statuses.insert(peer, s);
                    if s.head > 0 {
                        if let Some(f) = self.forward.as_mut() {
                            f.update_peer(peer, s.low.max(1), s.head, now);
                        }
                        if let Some(b) = self.backward.as_mut() {
                            b.update_peer(peer, s.low.max(1), s.head, now);
                        }
                    }
                }
            }
            Req::Range { id } | Req::Backfill { id } => {
                let core = if matches!(kind, Req::Range { .. }) {
                    self.forward.as_mut()
                } else {
                    self.backward.as_mut()
                };
                let Some(core) = core else { return };
                match resp {
                    BlockResponse::Blocks { blocks } => match blocks_of(blocks) {
                        Ok(bs) => core.handle_blocks(id, &peer, bs, now),
                        Err(e) => core.handle_failure(id, RequestFault::Bad(e), now),
                    },
                    BlockResponse::Busy { .. } => core.handle_failure(id, RequestFault::Busy, now),
                    BlockResponse::NotFound => core.handle_failure(id, RequestFault::Missing, now),
                    _ => {
                        core.handle_failure(id, RequestFault::Bad("unexpected answer".into()), now)
                    }
                }
            }
            Req::Anchor { height } => {
                let anchor = match resp {
                    BlockResponse::Blocks { blocks } => {
                        blocks_of(blocks).ok().and_then(|v| v.into_iter().next())
                    }
                    _ => None,
                };
                // Only the answer we are waiting for: a late answer must not
                // start a state sync while replaying (never both at once).
                let wanted = match &self.phase {
                    Phase::AwaitAnchor { height: h, .. } => *h == height,
                    Phase::StateSync { height: cur, .. } => {
                        self.switch_asked.is_some() && height > *cur
                    }
                    _ => false,
                };
                if !wanted {
                    return;
                }
                match anchor {
                    Some(b)
                        if b.height() == height
                            && self.spec.verify(&b).is_ok()
                            && self.spec.is_checkpoint(height) =>
                    {
                        self.anchor_ready(b);
                    }
                    _ => {
                        // It claimed a checkpoint it cannot prove: ignore
                        // its checkpoint claims from now on.
                        self.distrusted.insert(peer);
                        self.log(&format!(
                            "checkpoint header {height} from {peer} unusable; deciding again"
                        ));
                        if matches!(self.phase, Phase::AwaitAnchor { .. }) {
                            self.set_phase(Phase::Waiting { since: now });
                        }
                        self.switch_asked = None;
                    }
                }
            }
            Req::Lookup { pushed } => {
                if let BlockResponse::Blocks { blocks } = resp
                    && let Ok(mut bs) = blocks_of(blocks)
                    && !self.follow_inflight
                    && matches!(self.phase, Phase::Following { .. })
                {
                    bs.retain(|b| b.height() > self.head);
                    if let Some(p) = pushed
                        && bs.last().is_some_and(|b| b.height() + 1 == p.height())
                    {
                        bs.push(p);
                    }
                    if bs.first().is_some_and(|b| b.height() == self.head + 1) {
                        self.follow_inflight = true;
                        let _ = self.exec.send(ExecCmd::Import {
                            tag: ImportTag::Follow,
                            blocks: bs,
                            from: Some(peer),
                        });
                    }
                }
            }
            Req::Push => {}
        }
        let _ = swarm;
    }

    pub fn on_failure(&mut self, rid: OutboundRequestId, now: Instant) {
        match self.pending.remove(&rid) {
            Some(Req::Range { id }) => {
                if let Some(f) = self.forward.as_mut() {
                    f.handle_failure(id, RequestFault::Io, now);
                }
            }
            Some(Req::Backfill { id }) => {
                if let Some(b) = self.backward.as_mut() {
                    b.handle_failure(id, RequestFault::Io, now);
                }
            }
            Some(Req::Anchor { .. }) => {
                if matches!(self.phase, Phase::AwaitAnchor { .. }) {
                    self.set_phase(Phase::Waiting { since: now });
                }
                self.switch_asked = None;
            }
            _ => {}
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        [
            self.forward.as_ref().and_then(|f| f.poll_timeout()),
            self.backward.as_ref().and_then(|b| b.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn on_timeout(&mut self, now: Instant) {
        if let Some(f) = self.forward.as_mut() {
            f.handle_timeout(now);
        }
        if let Some(b) = self.backward.as_mut() {
            b.handle_timeout(now);
        }
    }

    fn start_replay(&mut self, now: Instant) {
        let mut f = RangeSync::forward(self.head, self.setup.range.clone());
        for (p, s) in &self.statuses {
            if s.head > 0 {
                f.update_peer(*p, s.low.max(1), s.head, now);
            }
        }
        self.forward = Some(f);
        self.last_range_done = None;
        self.set_phase(Phase::Replay);
    }

    fn anchor_ready(&mut self, anchor: Block) {
        // Started (or switched) in step(), which has the context.
        self.pending_anchor = Some(anchor);
    }

    /// Drives phases and cores. Returns an exit code when the node's exit
    /// condition is met.
    pub fn step(&mut self, ctx: &mut Ctx<'_>) -> Result<Option<ExitCode>> {
        let now = Instant::now();
        if now.duration_since(self.last_status_poll) >= Duration::from_secs(1) {
            self.last_status_poll = now;
            for p in self.connected.clone() {
                self.send(ctx.swarm, &p, BlockRequest::GetStatus, Req::Status);
            }
        }
        if let Some(anchor) = self.pending_anchor.take()
            && let Err(e) = self.start_state_sync(ctx, anchor)
        {
            // A local failure (a full disk creating the staging area, say)
            // is retried like a failed sync, not the end of the node.
            self.on_fetch_failed(format!("cannot start: {e}"));
        }
        // The leader's block production.
        let block_every = Duration::from_millis(self.spec.genesis.block_ms.max(1));
        if self.setup.produce
            && matches!(self.phase, Phase::Following { .. })
            && !self.producing
            && now.duration_since(self.last_produce) >= block_every
            && self.setup.stop_at.is_none_or(|s| self.head < s)
        {
            self.producing = true;
            self.last_produce = now;
            let time_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let _ = self.exec.send(ExecCmd::Produce { time_ms });
        }
        match &self.phase {
            Phase::Waiting { since } => {
                let since = *since;
                if now.duration_since(self.last_decide) >= self.decide_pause() {
                    self.decide(ctx.swarm, since, now);
                }
            }
            Phase::AwaitAnchor { asked, .. } => {
                if now.duration_since(*asked) > Duration::from_secs(10) {
                    self.set_phase(Phase::Waiting { since: now });
                }
            }
            Phase::StateSync { height, .. } => {
                let height = *height;
                // Nobody serves it any more and nothing newer is offered:
                // give it up after a while and decide again (what was
                // fetched stays in the staging area for the next plan).
                let usable = ctx.fetch.as_ref().is_some_and(|f| f.usable_peers() > 0);
                if usable {
                    self.unserved_since = None;
                } else if self.unserved_since.is_none() {
                    self.unserved_since = Some(now);
                }
                if self
                    .unserved_since
                    .is_some_and(|t| now.duration_since(t) > Duration::from_secs(30))
                {
                    self.unserved_since = None;
                    if let Some(f) = ctx.fetch.as_mut() {
                        f.stop();
                    }
                    *ctx.fetch = None;
                    self.event(&format!(
                        "nobody serves checkpoint {height} any more: deciding again"
                    ));
                    self.set_phase(Phase::Waiting { since: now });
                } else {
                    self.check_switch(ctx, height, now);
                }
            }
            Phase::Replay => {
                if self.forward.is_none() {
                    self.start_replay(now);
                }
                let done = self.forward.as_ref().is_some_and(|f| f.is_done());
                if done && self.head + decide::FOLLOW_DISTANCE >= self.best_head() {
                    self.forward = None;
                    self.set_phase(Phase::Following { since: now });
                } else if now.duration_since(self.last_decide) >= Duration::from_secs(5) {
                    // Replay may be losing against production: decide again.
                    self.last_decide = now;
                    let d = self.decision_now();
                    if let Plan::StateSync { height } = d.plan
                        && height > self.head
                    {
                        self.event(&format!(
                            "replay is too slow ({}): state sync instead",
                            d.reason
                        ));
                        self.decision = Some(d);
                        if self.ask_anchor(ctx.swarm, height, now) {
                            // Never both at once: replay stops here.
                            self.forward = None;
                        }
                    }
                }
            }
            Phase::Following { since } => {
                let since = *since;
                if let Some(d) = self.setup.exit_after_following
                    && now.duration_since(since) >= d
                    && self.backward.as_ref().is_none_or(|b| b.is_done())
                    && (self.setup.horizon == 0
                        || self.low <= self.setup.horizon.max(1)
                        || self.head == 0)
                {
                    self.event(&format!(
                        "following the head at {} for {:.0?}: done",
                        self.head, d
                    ));
                    self.write_summary();
                    return Ok(Some(ExitCode::SUCCESS));
                }
                // A missed push must not leave us behind with nothing left
                // to wake us: chase the best head after a quiet second.
                let best = self.best_head();
                if !self.setup.produce
                    && best > self.head
                    && !self.follow_inflight
                    && now.duration_since(self.last_follow) > Duration::from_secs(1)
                    && best <= self.head + LookupConfig::default().max_depth
                    && let Admit::Fetch { start, end } =
                        self.lookups.admit(self.head, best + 1, now)
                    && let Some(p) = self
                        .statuses
                        .iter()
                        .find(|(_, s)| s.head >= end)
                        .map(|(p, _)| *p)
                {
                    self.stats.lookups += 1;
                    self.last_follow = now;
                    let count = (end - start + 1).min(u64::from(MAX_BLOCKS_PER_REQUEST)) as u32;
                    self.send(
                        ctx.swarm,
                        &p,
                        BlockRequest::GetBlocks { start, count },
                        Req::Lookup { pushed: None },
                    );
                }
                if !self.setup.produce
                    && self.best_head() > self.head + LookupConfig::default().max_depth
                    && now.duration_since(since) > Duration::from_secs(2)
                {
                    self.event(&format!(
                        "fell behind ({} < {}): range sync",
                        self.head,
                        self.best_head()
                    ));
                    self.start_replay(now);
                }
            }
            Phase::Adopting | Phase::Genesis => {}
        }
        // Backfill below a state-synced checkpoint.
        if self.backward.is_none()
            && self.setup.horizon > 0
            && self.has_state
            && self.low > self.setup.horizon.max(1)
            && matches!(self.phase, Phase::Replay | Phase::Following { .. })
        {
            let mut b = RangeSync::backward(self.low, self.setup.horizon, self.setup.range.clone());
            for (p, s) in &self.statuses {
                if s.head > 0 {
                    b.update_peer(*p, s.low.max(1), s.head, now);
                }
            }
            self.event(&format!(
                "backfill from {} down to {}",
                self.low,
                self.setup.horizon.max(1)
            ));
            self.backward = Some(b);
        }
        self.drive(ctx);
        if now.duration_since(self.last_sample) >= Duration::from_millis(250) {
            self.last_sample = now;
            self.sample(ctx.fetch.as_ref());
        }
        Ok(None)
    }

    /// Sends the requests of both range cores and hands their batches to
    /// the executor (forward: import; backward: backfill, descending).
    fn drive(&mut self, ctx: &mut Ctx<'_>) {
        for backfill in [false, true] {
            loop {
                let core = if backfill {
                    self.backward.as_mut()
                } else {
                    self.forward.as_mut()
                };
                let Some(a) = core.and_then(|c| c.poll_action()) else {
                    break;
                };
                match a {
                    Action::Request {
                        peer,
                        id,
                        start,
                        count,
                    } => {
                        let kind = if backfill {
                            Req::Backfill { id }
                        } else {
                            Req::Range { id }
                        };
                        let count = count as u32;
                        self.send(
                            ctx.swarm,
                            &peer,
                            BlockRequest::GetBlocks { start, count },
                            kind,
                        );
                    }
                    Action::Process { batch, mut blocks } => {
                        let cmd = if backfill {
                            blocks.reverse();
                            ExecCmd::Backfill {
                                batch,
                                desc: blocks,
                            }
                        } else {
                            ExecCmd::Import {
                                tag: ImportTag::Range(batch),
                                blocks,
                                from: None,
                            }
                        };
                        let _ = self.exec.send(cmd);
                    }
                    Action::Banned { peer, reason } => {
                        let what = if backfill { "backfill" } else { "range sync" };
                        self.event(&format!("{what}: peer {peer} banned for a while: {reason}"));
                        ctx.peers.penalize(&peer, Instant::now());
                    }
                }
            }
        }
    }

    fn decision_now(&self) -> Decision {
        let can_replay_from = |h: u64| {
            self.statuses
                .values()
                .any(|s| s.head > h && s.low.max(1) <= h + 1)
        };
        let local_height = if self.has_state && can_replay_from(self.head) {
            Some(self.head)
        } else if !self.has_state && self.setup.replay_from_genesis && can_replay_from(0) {
            Some(0)
        } else if self.has_state && self.best_head() <= self.head + decide::FOLLOW_DISTANCE {
            Some(self.head)
        } else {
            None
        };
        let checkpoint = self
            .statuses
            .iter()
            .filter(|(p, _)| !self.distrusted.contains(*p))
            .map(|(_, s)| s.checkpoint)
            .filter(|c| *c > 0 && self.spec.is_checkpoint(*c))
            .max();
        let mut d = decide::decide(&Inputs {
            local_height,
            head: self.best_head(),
            checkpoint,
            state_bytes: self.spec.genesis.state_files as u64 * self.spec.genesis.file_size as u64,
            reusable_bytes: 0,
            replay_blocks_per_sec: self.replay_bps,
            fetch_bytes_per_sec: self.fetch_bps,
            produced_blocks_per_sec: 1000.0 / self.spec.genesis.block_ms.max(1) as f64,
        });
        match (self.setup.catch_up, d.plan, checkpoint) {
            (CatchUp::Replay, Plan::StateSync { .. }, _)
                if local_height.is_some() || self.setup.replay_from_genesis =>
            {
                d.plan = Plan::Replay;
                d.reason = format!("replay forced ({})", d.reason);
            }
            (CatchUp::StateSync, Plan::Replay, Some(cp)) if cp > self.head => {
                d.plan = Plan::StateSync { height: cp };
                d.reason = format!("state sync forced ({})", d.reason);
            }
            _ => {}
        }
        d
    }

    fn decide(&mut self, swarm: &mut Swarm<Behaviour>, since: Instant, now: Instant) {
        self.last_decide = now;
        if self.setup.produce {
            // The leader is the head.
            self.set_phase(Phase::Following { since: now });
            return;
        }
        if self.statuses.values().all(|s| s.head == 0) {
            if now.duration_since(since) > Duration::from_secs(10)
                && self.stats.switches == 0
                && self.decision.is_none()
            {
                self.decision = Some(Decision {
                    plan: Plan::Replay,
                    replay_secs: 0.0,
                    state_sync_secs: 0.0,
                    reason: "no peer with blocks yet: waiting".into(),
                });
                self.log("no peer with blocks yet: waiting");
            }
            return;
        }
        let d = self.decision_now();
        let changed = self.decision.as_ref().is_none_or(|o| o.plan != d.plan);
        if changed {
            self.event(&format!("decision: {:?} ({})", d.plan, d.reason));
        }
        let plan = d.plan;
        self.decision = Some(d);
        match plan {
            Plan::Follow => self.set_phase(Phase::Following { since: now }),
            Plan::Replay if !self.has_state => {
                if self.setup.replay_from_genesis {
                    self.set_phase(Phase::Genesis);
                    let _ = self.exec.send(ExecCmd::InitGenesis);
                }
                // Else: wait for a checkpoint to be offered.
            }
            Plan::Replay => self.start_replay(now),
            Plan::StateSync { height } => {
                self.ask_anchor(swarm, height, now);
            }
        }
    }

    /// Asks a peer for the header of checkpoint `height`; false if no peer
    /// can serve it.
    fn ask_anchor(&mut self, swarm: &mut Swarm<Behaviour>, height: u64, now: Instant) -> bool {
        let mut cands: Vec<PeerId> = self
            .statuses
            .iter()
            .filter(|(p, s)| {
                s.low.max(1) <= height && s.head >= height && !self.distrusted.contains(*p)
            })
            .map(|(p, _)| *p)
            .collect();
        cands.sort();
        self.anchor_asks += 1;
        let Some(p) = cands.get(self.anchor_asks % cands.len().max(1)).copied() else {
            return false;
        };
        self.send(
            swarm,
            &p,
            BlockRequest::GetBlocks {
                start: height,
                count: 1,
            },
            Req::Anchor { height },
        );
        if matches!(self.phase, Phase::StateSync { .. }) {
            self.switch_asked = Some(now);
        } else {
            self.set_phase(Phase::AwaitAnchor { height, asked: now });
        }
        true
    }

    fn check_switch(&mut self, ctx: &mut Ctx<'_>, current: u64, now: Instant) {
        // Switches back off exponentially (2 s, 4 s, 8 s, ...): each costs
        // only what changed, and the backoff guarantees a sync finishes even
        // when checkpoints come faster than any switch could complete.
        let backoff =
            Duration::from_secs(2) * 2u32.saturating_pow(self.stats.switches.min(8) as u32);
        if self
            .switch_asked
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
            || now.duration_since(self.last_switch) < backoff
        {
            return;
        }
        let Some(newer) = self
            .statuses
            .iter()
            .filter(|(p, _)| !self.distrusted.contains(*p))
            .map(|(_, s)| s.checkpoint)
            .filter(|c| *c > current && self.spec.is_checkpoint(*c))
            .max()
        else {
            return;
        };
        let served = ctx
            .fetch
            .as_ref()
            .is_none_or(|f| f.usable_peers() > 0 || f.elapsed() < Duration::from_secs(5));
        if decide::should_switch(
            current,
            newer,
            served,
            self.replay_bps,
            1000.0 / self.spec.genesis.block_ms.max(1) as f64,
            self.setup.switch_after_secs,
        ) {
            self.ask_anchor(ctx.swarm, newer, now);
        }
    }

    fn start_state_sync(&mut self, ctx: &mut Ctx<'_>, anchor: Block) -> Result<()> {
        let height = anchor.height();
        if height <= self.head && self.has_state {
            return Ok(());
        }
        if let Phase::StateSync { height: cur, .. } = &self.phase {
            if *cur >= height {
                return Ok(());
            }
            let cur = *cur;
            self.stats.switches += 1;
            let kept = ctx.fetch.as_ref().map(|f| f.bytes_fetched()).unwrap_or(0);
            self.event(&format!(
                "switching state sync {cur} -> {height} (a newer checkpoint; {} fetched so far is kept)",
                crate::bytes(kept)
            ));
            if let Some(f) = ctx.fetch.as_mut() {
                f.stop();
            }
            if let Some(f) = ctx.fetch.as_ref() {
                self.stats.state_bytes_fetched += f.bytes_fetched();
                for (p, b) in &f.summary.bytes_per_peer {
                    *self.state_bytes_per_peer.entry(p.clone()).or_default() += b;
                }
            }
            *ctx.fetch = None;
        }
        self.switch_asked = None;
        self.unserved_since = None;
        self.last_switch = Instant::now();
        self.forward = None;
        let root = anchor.header.state_root;
        let out = self.data.join("incoming").join(format!("{height:020}"));
        std::fs::create_dir_all(self.data.join("incoming"))?;
        let _ = std::fs::remove_dir_all(&out);
        let _ = std::fs::remove_file(session::manifest_path_for(&out));
        // Every checkpoint on disk is a source of identical files/chunks.
        let (store, _) = statesync_store::Store::open(self.store_path())?;
        let mut seeds = Vec::new();
        for c in store.list()? {
            if let Ok(m) = store.load_manifest(c.height) {
                seeds.push((c.path.clone(), m));
            }
        }
        let job = FetchJob {
            root,
            out,
            seeds,
            crash_after_bytes: None,
            max_window: None,
            commit_bytes: None,
            in_place: None,
            full_verify: false,
        };
        *ctx.generation += 1;
        let mut d = FetchDriver::start(
            self.data.clone(),
            self.quiet,
            false,
            job,
            ctx.local_id,
            *ctx.generation,
            ctx.tx.clone(),
        )?;
        let now = Instant::now();
        for (p, a) in ctx.adverts {
            if a.entries.iter().any(|e| e.root == root) {
                d.add_peer(*p, now);
            }
        }
        *ctx.fetch = Some(d);
        self.stats.state_syncs += 1;
        self.event(&format!(
            "state sync to checkpoint {height} (root {})",
            &root.to_hex()[..16]
        ));
        self.set_phase(Phase::StateSync { height, anchor });
        Ok(())
    }

    pub fn on_fetch_done(&mut self, summary: FetchSummary, now: Instant) {
        self.sync_failures_in_row = 0;
        let Phase::StateSync { height, anchor } =
            std::mem::replace(&mut self.phase, Phase::Adopting)
        else {
            return;
        };
        self.phase = Phase::StateSync {
            height,
            anchor: anchor.clone(),
        };
        self.stats.state_bytes_fetched += summary.bytes_fetched;
        self.stats.state_bytes_reused += summary.local.reused();
        for (p, b) in &summary.bytes_per_peer {
            *self.state_bytes_per_peer.entry(p.clone()).or_default() += b;
        }
        if summary.seconds > 0.5 && summary.bytes_fetched > 0 {
            self.fetch_bps = summary.bytes_fetched as f64 / summary.seconds;
        }
        self.event(&format!(
            "state sync of checkpoint {height} done: fetched {}, reused {} locally, {:.1}s",
            crate::bytes(summary.bytes_fetched),
            crate::bytes(summary.local.reused()),
            summary.seconds
        ));
        let manifest = match std::fs::read(session::manifest_path_for(&summary.out))
            .map_err(|e| e.to_string())
            .and_then(|b| Manifest::decode(&b).map_err(|e| e.to_string()))
        {
            Ok(m) => m,
            Err(e) => {
                self.on_fetch_failed(format!("synced manifest unreadable: {e}"));
                return;
            }
        };
        let _ = now;
        self.set_phase(Phase::Adopting);
        let _ = self.exec.send(ExecCmd::Adopt {
            anchor: Box::new(anchor),
            dir: summary.out,
            manifest: Box::new(manifest),
        });
    }

    fn decide_pause(&self) -> Duration {
        Duration::from_millis(500) * 2u32.pow(self.sync_failures_in_row.min(6))
    }

    pub fn on_fetch_failed(&mut self, e: String) {
        self.stats.local_failures += 1;
        self.sync_failures_in_row += 1;
        self.last_decide = Instant::now();
        self.event(&format!(
            "state sync failed: {e}; deciding again in {:.1} s",
            self.decide_pause().as_secs_f64()
        ));
        self.set_phase(Phase::Waiting {
            since: Instant::now(),
        });
    }

    pub fn on_msg(
        &mut self,
        msg: ChainMsg,
        swarm: &mut Swarm<Behaviour>,
        server: Option<&mut Server>,
        now: Instant,
    ) -> Result<()> {
        let done = match msg {
            ChainMsg::Served {
                peer,
                channel,
                resp,
                bytes,
            } => {
                if let Some(s) = server {
                    s.finished_blocks(peer, bytes);
                }
                let _ = swarm.behaviour_mut().blocks.send_response(channel, resp);
                return Ok(());
            }
            ChainMsg::Exec(d) => *d,
        };
        let advanced = done.head.0 > self.head;
        self.head = done.head.0;
        self.head_hash = done.head.1;
        self.low = done.low;
        self.checkpoint = done.checkpoint;
        self.has_state = done.has_state;
        if advanced {
            self.lookups.advanced(self.head);
        }
        match done.kind {
            ExecKind::Imported {
                tag,
                from,
                result,
                count,
                secs,
                last,
            } => {
                if let Err(ImportError::Fatal(e)) = &result {
                    self.event(&format!("FATAL: {e}; stopping (a restart rebuilds the state from the last good checkpoint)"));
                    self.write_summary();
                    return Err(format!("state divergence: {e}").into());
                }
                match (&result, tag) {
                    (Ok(_), ImportTag::Range(_)) => {
                        self.stats.imported_range += count;
                        // End-to-end replay rate: blocks per wall second
                        // between consecutive processed batches.
                        if let Some(prev) = self.last_range_done {
                            let dt = now.duration_since(prev).as_secs_f64().max(secs).max(1e-3);
                            let r = count as f64 / dt;
                            self.replay_bps = 0.7 * self.replay_bps + 0.3 * r;
                        }
                        self.last_range_done = Some(now);
                    }
                    (Ok(_), ImportTag::Follow) => {
                        self.stats.imported_follow += count;
                        self.last_follow = now;
                        self.follow_inflight = false;
                        // Relay the new head to everyone but the sender.
                        if let Some(b) = last {
                            let enc = b.encode();
                            for p in self.connected.clone() {
                                if Some(p) != from {
                                    self.send(
                                        swarm,
                                        &p,
                                        BlockRequest::NewBlock { block: enc.clone() },
                                        Req::Push,
                                    );
                                }
                            }
                        }
                    }
                    (Err(e), ImportTag::Follow) => {
                        self.follow_inflight = false;
                        self.log(&format!("following: import failed: {e}"));
                    }
                    (Err(_), ImportTag::Range(_)) => {}
                }
                if let ImportTag::Range(batch) = tag
                    && let Some(f) = self.forward.as_mut()
                {
                    let p = match result {
                        Ok(_) => Processed::Ok,
                        Err(ImportError::Bad(e)) => Processed::BadBlock(e.to_string()),
                        Err(ImportError::Local(e)) | Err(ImportError::Fatal(e)) => {
                            self.stats.local_failures += 1;
                            Processed::Local(e)
                        }
                    };
                    f.processed(batch, p, now);
                }
            }
            ExecKind::Produced(r) => {
                self.producing = false;
                match r {
                    Ok(b) => {
                        self.stats.produced += 1;
                        let enc = b.encode();
                        for p in self.connected.clone() {
                            self.send(
                                swarm,
                                &p,
                                BlockRequest::NewBlock { block: enc.clone() },
                                Req::Push,
                            );
                        }
                    }
                    Err(e) => {
                        self.stats.local_failures += 1;
                        self.log(&format!("producing a block failed: {e}"));
                    }
                }
            }
            ExecKind::Backfilled { batch, result } => {
                if let Some(b) = self.backward.as_mut() {
                    let p = match result {
                        Ok(()) => Processed::Ok,
                        Err(ImportError::Bad(e)) => Processed::BadBlock(e.to_string()),
                        Err(ImportError::Local(e)) | Err(ImportError::Fatal(e)) => {
                            Processed::Local(e)
                        }
                    };
                    if p == Processed::Ok {
                        self.stats.backfill_batches += 1;
                    }
                    b.processed(batch, p, now);
                    if b.is_done() {
                        let low = self.low;
                        self.event(&format!("backfill complete: history from {low}"));
                    }
                }
            }
            ExecKind::Adopted(r) => match r {
                Ok(h) => {
                    let out = self.data.join("incoming").join(format!("{h:020}"));
                    let _ = std::fs::remove_file(session::manifest_path_for(&out));
                    self.event(&format!("checkpoint {h} adopted: state at height {h}"));
                    // History restarts at the new anchor: a backfill core
                    // from before (another low) would never fit again.
                    self.backward = None;
                    self.start_replay(now);
                }
                Err(e) => {
                    self.stats.local_failures += 1;
                    self.event(&format!("adopting the synced checkpoint failed: {e}"));
                    self.set_phase(Phase::Waiting { since: now });
                }
            },
            ExecKind::Genesis(r) => match r {
                Ok(()) => self.start_replay(now),
                Err(e) => {
                    self.event(&format!("genesis state failed: {e}"));
                    self.set_phase(Phase::Waiting { since: now });
                }
            },
        }
        Ok(())
    }

    fn sample(&mut self, fetch: Option<&FetchDriver>) {
        let t = self.start.elapsed().as_secs_f64();
        let (fetched, needed) = fetch
            .map(|f| (f.progress().bytes_done, f.progress().bytes_needed))
            .unwrap_or((0, 0));
        let line = serde_json::json!({
            "t": t,
            "phase": self.phase_name(),
            "head": self.head,
            "best_head": self.best_head(),
            "target": match &self.phase {
                Phase::AwaitAnchor { height, .. } | Phase::StateSync { height, .. } => Some(*height),
                _ => None,
            },
            "low": self.low,
            "state_fetched": self.stats.state_bytes_fetched + fetched,
            "state_needed": needed,
        });
        if let Some(f) = self.report.as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }

    fn write_summary(&mut self) {
        let line = serde_json::json!({
            "summary": {
                "t": self.start.elapsed().as_secs_f64(),
                "head": self.head,
                "low": self.low,
                "stats": self.stats,
                "decision": self.decision,
                "block_bytes_per_peer": self.block_bytes_per_peer,
                "state_bytes_per_peer": self.state_bytes_per_peer,
                "replay_blocks_per_sec": self.replay_bps,
            }
        });
        if let Some(f) = self.report.as_mut() {
            let _ = writeln!(f, "{line}");
            let _ = f.flush();
        }
    }
}

/// The executor thread: the only owner of the replica.
fn executor(
    mut r: Replica,
    keys: Vec<(u16, ValidatorKey)>,
    rx: std::sync::mpsc::Receiver<ExecCmd>,
    tx: mpsc::UnboundedSender<LoopMsg>,
) {
    while let Ok(cmd) = rx.recv() {
        let kind = match cmd {
            ExecCmd::Import { tag, blocks, from } => {
                let t = Instant::now();
                let count = blocks.len() as u64;
                let last = blocks.last().cloned();
                let result = r.import(&blocks);
                ExecKind::Imported {
                    tag,
                    from,
                    result,
                    count,
                    secs: t.elapsed().as_secs_f64(),
                    last,
                }
            }
            ExecCmd::Produce { time_ms } => {
                ExecKind::Produced(r.produce(&keys, time_ms).map_err(|e| e.to_string()))
            }
            ExecCmd::Backfill { batch, desc } => ExecKind::Backfilled {
                batch,
                result: r.backfill(&desc),
            },
            ExecCmd::Adopt {
                anchor,
                dir,
                manifest,
            } => {
                let h = anchor.height();
                ExecKind::Adopted(
                    r.adopt(&anchor, &dir, &manifest)
                        .map(|()| h)
                        .map_err(|e| e.to_string()),
                )
            }
            ExecCmd::InitGenesis => ExecKind::Genesis(r.init_genesis().map_err(|e| e.to_string())),
        };
        let checkpoint = r.store.latest().ok().flatten().map_or(0, |c| c.height);
        let done = ExecDone {
            kind,
            head: r.head(),
            low: r.low(),
            checkpoint,
            has_state: r.has_state(),
        };
        if tx
            .send(LoopMsg::Chain(ChainMsg::Exec(Box::new(done))))
            .is_err()
        {
            return;
        }
    }
}
