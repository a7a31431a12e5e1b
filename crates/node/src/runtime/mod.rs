//! The event loop: one tokio task per node that owns the libp2p swarm and
//! moves bytes between it, the disk and the sans-IO cores.
//!
//! It is a struct with one method per kind of input: a swarm event
//! ([`EventLoop::on_swarm_event`], in `swarm.rs`), a command from a handle
//! ([`EventLoop::on_command`]), a message from a helper task or thread
//! ([`EventLoop::on_task`]), a core's deadline ([`EventLoop::on_timer`])
//! and the quarter-second tick ([`EventLoop::on_tick`]). After each input,
//! [`EventLoop::drive`] polls every core for what it wants done. The loop
//! sleeps until the earliest deadline any core reports (none when idle:
//! no busy loops).

mod providers;
mod swarm;

pub use providers::ProviderStats;

use crate::chain::executor::ExecDone;
use crate::chain::{ChainNode, ChainOut, ChainSetup};
use crate::event::{ChainEvent, Event, FetchError, FetchEvent, FetchId};
use crate::fetch::IoOptions;
use crate::fetch::driver::{FetchDriver, FetchMsg, FetchOut, FetchRequest};
use crate::metrics::Metrics;
use crate::node::{FetchStatus, NodeConfig, StartError, Status};
use crate::serve::Server;
use statesync_engine::admission::{Outcome, Ticket};
use statesync_engine::peers::{PeerAction, PeerManager, PeerManagerConfig};
use statesync_net::libp2p::identity::Keypair;
use statesync_net::libp2p::multiaddr::Protocol;
use statesync_net::libp2p::request_response::{
    InboundRequestId, OutboundRequestId, ResponseChannel,
};
use statesync_net::libp2p::{Multiaddr, PeerId, Swarm};
use statesync_net::{Behaviour, NetConfig};
use statesync_proto::blocks::BlockResponse;
use statesync_proto::{Advert, Request, Response};
use statesync_store::Store;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tracing::info;

/// Messages from helper tasks and threads to the loop.
pub(crate) enum Task {
    /// From a fetch driver's planner, writer or promoter.
    Fetch { id: FetchId, msg: Box<FetchMsg> },
    /// A state request answered off the loop.
    Served {
        peer: PeerId,
        request: InboundRequestId,
        ticket: Option<Ticket>,
        channel: ResponseChannel<Response>,
        resp: Response,
    },
    /// A block request answered off the loop.
    BlocksServed {
        peer: PeerId,
        request: InboundRequestId,
        ticket: Ticket,
        channel: ResponseChannel<BlockResponse>,
        resp: BlockResponse,
        bytes: u64,
    },
    /// The chain executor finished a command.
    Exec(Box<ExecDone>),
}

/// Requests from handles.
pub(crate) enum Command {
    Fetch {
        req: Box<FetchRequest>,
        reply: oneshot::Sender<Result<FetchId, FetchError>>,
    },
    CancelFetch {
        id: FetchId,
        reply: oneshot::Sender<bool>,
    },
    Publish,
    Dial {
        addr: Multiaddr,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// What a request in flight was for.
enum Pending {
    Advert(PeerId),
    Fetch { id: FetchId, sched: u64 },
    Announce,
    Chain { tag: u64 },
}

/// Whether the loop goes on.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop(Option<String>),
}

pub(crate) struct EventLoop {
    kp: Keypair,
    local_id: PeerId,
    data: PathBuf,
    io: IoOptions,
    swarm: Swarm<Behaviour>,
    server: Option<Server>,
    fetches: BTreeMap<FetchId, FetchDriver>,
    fetch_ids: Arc<AtomicU64>,
    chain: Option<ChainNode>,
    peers: PeerManager<PeerId, Multiaddr>,
    adverts: HashMap<PeerId, Advert>,
    connected: HashSet<PeerId>,
    pending: HashMap<OutboundRequestId, Pending>,
    /// Answers handed to libp2p and not yet delivered (state, blocks):
    /// their admission tickets, released when delivered or failed.
    answering: HashMap<InboundRequestId, (PeerId, Ticket)>,
    answering_blocks: HashMap<InboundRequestId, (PeerId, Ticket)>,
    /// Malformed requests per peer (oversized, undecodable): three and it
    /// is disconnected and kept away.
    malformed: HashMap<PeerId, u32>,
    /// Peers blocked (connections refused) until then.
    blocked_until: HashMap<PeerId, Instant>,
    /// The bootstrap peers (always named when a fetch stalls).
    bootstrap: Vec<PeerId>,
    /// The last dial error per peer not connected.
    dial_errors: HashMap<PeerId, String>,
    /// Per fetch: (what progress looked like, since when, last stall report).
    stalls: HashMap<FetchId, (u64, Instant, Option<Instant>)>,
    listen: Vec<Multiaddr>,
    cmds: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    tasks_tx: mpsc::UnboundedSender<Task>,
    tasks: mpsc::UnboundedReceiver<Task>,
    metrics: Arc<Metrics>,
    /// Fetch counters of drivers that ended: (bytes, chunks, rejected).
    fetched_before: [u64; 3],
    last_advert_poll: Instant,
    /// Kademlia provider records: roots announced, lookups.
    providers: providers::Providers,
    #[cfg(feature = "fault-injection")]
    fault: Option<crate::fault::ServeFault>,
    #[cfg(feature = "fault-injection")]
    silent_channels: Vec<ResponseChannel<Response>>,
}

/// Fails if `addr` (a TCP or UDP address with a fixed port) is already in
/// use. libp2p listens with `SO_REUSEPORT` (to dial from its listen port),
/// which lets a second process bind the same port and silently take half of
/// the incoming connections; a plain bind first refuses that.
fn probe_listen(addr: &Multiaddr) -> Result<(), String> {
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some((p, true)),
            Protocol::Udp(p) => port = Some((p, false)),
            _ => {}
        }
    }
    let (Some(ip), Some((port, tcp))) = (ip, port) else {
        return Ok(());
    };
    if port == 0 {
        return Ok(());
    }
    let sa = std::net::SocketAddr::new(ip, port);
    let r = if tcp {
        std::net::TcpListener::bind(sa).map(drop)
    } else {
        std::net::UdpSocket::bind(sa).map(drop)
    };
    r.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            format!("address already in use (is another node listening on port {port}?)")
        }
        _ => e.to_string(),
    })
}

impl EventLoop {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        kp: Keypair,
        data: PathBuf,
        cfg: NodeConfig,
        store: Option<Store>,
        chain: Option<ChainSetup>,
        cmds: mpsc::UnboundedReceiver<Command>,
        events: mpsc::UnboundedSender<Event>,
        metrics: Arc<Metrics>,
    ) -> Result<EventLoop, StartError> {
        let local_id = kp.public().to_peer_id();
        let mut swarm = statesync_net::build_swarm(
            kp.clone(),
            &NetConfig {
                security: cfg.security,
                ..NetConfig::default()
            },
        )
        .map_err(|e| StartError::Network(e.to_string()))?;
        let listen = if cfg.listen.is_empty() {
            vec![
                "/ip4/127.0.0.1/tcp/0"
                    .parse::<Multiaddr>()
                    .map_err(|e| StartError::Network(e.to_string()))?,
            ]
        } else {
            cfg.listen.clone()
        };
        for a in &listen {
            probe_listen(a).map_err(|reason| StartError::Listen {
                addr: a.clone(),
                reason,
            })?;
            swarm.listen_on(a.clone()).map_err(|e| StartError::Listen {
                addr: a.clone(),
                reason: e.to_string(),
            })?;
        }
        let mut peers = PeerManager::new(PeerManagerConfig {
            min_peers: cfg.min_peers,
            max_peers: cfg.max_peers,
            ..Default::default()
        });
        let now = Instant::now();
        for a in &cfg.peers {
            let Some(Protocol::P2p(pid)) = a.iter().last() else {
                return Err(StartError::PeerAddress(a.clone()));
            };
            swarm.behaviour_mut().kad.add_address(&pid, a.clone());
            peers.add_known(pid, a.clone(), true, now);
        }
        let (tasks_tx, tasks) = mpsc::unbounded_channel();
        let fetch_ids = Arc::new(AtomicU64::new(1));
        let chain = match chain {
            Some(setup) => Some(
                ChainNode::start(
                    data.clone(),
                    setup,
                    local_id,
                    fetch_ids.clone(),
                    tasks_tx.clone(),
                )
                .map_err(StartError::Chain)?,
            ),
            None => None,
        };
        let store = match (store, &chain) {
            (Some(s), _) => Some(s),
            (None, Some(c)) => Some(
                Store::open(c.store_path())
                    .map_err(|e| StartError::Storage(e.to_string()))?
                    .0,
            ),
            (None, None) => None,
        };
        let mut server = store.map(|s| Server::new(Some(s), cfg.limits.clone()));
        if let Some(s) = server.as_mut() {
            s.refresh(true);
        }
        #[cfg(feature = "fault-injection")]
        if cfg.serve_fault == Some(crate::fault::ServeFault::Traversal)
            && let Some(s) = server.as_mut()
        {
            let r = crate::fault::enable_evil(s).ok_or_else(|| {
                StartError::Storage("fault traversal needs a checkpoint to forge".into())
            })?;
            tracing::warn!(root = %r, "fault injection: advertising a forged root");
            std::fs::write(data.join("forged-root"), r.to_hex())
                .map_err(|e| StartError::Storage(e.to_string()))?;
        }
        Ok(EventLoop {
            kp,
            local_id,
            data,
            io: cfg.io,
            swarm,
            server,
            fetches: BTreeMap::new(),
            fetch_ids,
            chain,
            peers,
            adverts: HashMap::new(),
            connected: HashSet::new(),
            pending: HashMap::new(),
            answering: HashMap::new(),
            answering_blocks: HashMap::new(),
            malformed: HashMap::new(),
            blocked_until: HashMap::new(),
            bootstrap: cfg
                .peers
                .iter()
                .filter_map(|a| match a.iter().last() {
                    Some(Protocol::P2p(p)) => Some(p),
                    _ => None,
                })
                .collect(),
            dial_errors: HashMap::new(),
            stalls: HashMap::new(),
            listen: Vec::new(),
            cmds,
            events,
            tasks_tx,
            tasks,
            metrics,
            fetched_before: [0; 3],
            last_advert_poll: now,
            providers: providers::Providers::default(),
            #[cfg(feature = "fault-injection")]
            fault: cfg.serve_fault,
            #[cfg(feature = "fault-injection")]
            silent_channels: Vec::new(),
        })
    }

    fn emit(&self, ev: Event) {
        let _ = self.events.send(ev);
    }

    /// Runs until shut down (or every handle is gone, or the chain node
    /// hits a fatal error).
    pub(crate) async fn run(mut self) {
        use futures::StreamExt;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reply_on_stop = None;
        let error;
        loop {
            if let Flow::Stop(e) = self.drive() {
                error = e;
                break;
            }
            let deadline = self.deadline();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending::<()>().await,
                }
            };
            let flow = tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                Some(t) = self.tasks.recv() => self.on_task(t),
                cmd = self.cmds.recv() => match cmd {
                    Some(Command::Shutdown { reply }) => {
                        reply_on_stop = Some(reply);
                        Flow::Stop(None)
                    }
                    Some(c) => self.on_command(c),
                    // Every handle is gone.
                    None => Flow::Stop(None),
                },
                _ = sleep => self.on_timer(),
                _ = tick.tick() => self.on_tick(),
            };
            if let Flow::Stop(e) = flow {
                error = e;
                break;
            }
        }
        self.stop();
        self.emit(Event::Stopped { error });
        if let Some(r) = reply_on_stop {
            let _ = r.send(());
        }
    }

    /// Makes progress durable and releases leases (shutdown).
    fn stop(&mut self) {
        info!("stopping: saving progress");
        if let Some(s) = self.server.as_mut() {
            s.release_leases(true);
        }
        for f in self.fetches.values_mut() {
            f.stop();
        }
        if let Some(c) = self.chain.as_ref() {
            let summary = c.summary();
            self.emit(Event::Chain(ChainEvent::Summary(Box::new(summary))));
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.fetches
            .values()
            .filter_map(|f| f.deadline())
            .chain(self.chain.as_ref().and_then(|c| c.deadline()))
            .min()
    }

    /// Polls every core and performs what it asks.
    fn drive(&mut self) -> Flow {
        let now = Instant::now();
        if let Some(c) = self.chain.as_mut() {
            let fetch = c.fetch_id().and_then(|id| self.fetches.get(&id));
            c.step(now, fetch);
        }
        if let Flow::Stop(e) = self.drain_chain(now) {
            return Flow::Stop(e);
        }
        self.drain_fetches(now);
        while let Some(a) = self.peers.poll_action() {
            match a {
                PeerAction::Dial(p, addr) => {
                    let _ = self.swarm.dial(addr.with_p2p(p).unwrap_or_else(|a| a));
                }
                PeerAction::Discover => {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .get_closest_peers(PeerId::random());
                }
                PeerAction::Disconnect(p) => {
                    let _ = self.swarm.disconnect_peer_id(p);
                }
            }
        }
        Flow::Continue
    }

    /// Performs what the chain node asks.
    fn drain_chain(&mut self, now: Instant) -> Flow {
        loop {
            let Some(out) = self.chain.as_mut().and_then(|c| c.poll_out()) else {
                return Flow::Continue;
            };
            match out {
                ChainOut::Send { peer, tag, req } => {
                    let rid = self
                        .swarm
                        .behaviour_mut()
                        .blocks
                        .send_request(&peer, req.into());
                    self.pending.insert(rid, Pending::Chain { tag });
                }
                ChainOut::StartFetch { id, req } => {
                    if let Err(mut e) = self.start_fetch(id, *req, now) {
                        e.message = format!("state sync cannot start: {}", e.message);
                        let ev = FetchEvent::Failed(e);
                        if let Some(c) = self.chain.as_mut() {
                            c.on_fetch_event(id, &ev, now);
                        }
                        self.emit(Event::Fetch { id, event: ev });
                    }
                }
                ChainOut::StopFetch { id } => self.end_fetch(id),
                ChainOut::Penalize(p) => self.peers.penalize(&p, now),
                ChainOut::Event(e) => self.emit(Event::Chain(e)),
                ChainOut::Fatal(e) => return Flow::Stop(Some(e)),
            }
        }
    }

    /// Performs what every fetch driver asks; removes ended drivers.
    fn drain_fetches(&mut self, now: Instant) {
        let ids: Vec<FetchId> = self.fetches.keys().copied().collect();
        for id in ids {
            while let Some(out) = self.fetches.get_mut(&id).and_then(|f| f.poll()) {
                match out {
                    FetchOut::Send { peer, sched, req } => {
                        let rid = self
                            .swarm
                            .behaviour_mut()
                            .state
                            .send_request(&peer, req.into());
                        self.pending.insert(rid, Pending::Fetch { id, sched });
                    }
                    FetchOut::Penalize(p) => self.peers.penalize(&p, now),
                    FetchOut::Event(ev) => {
                        if let Some(c) = self.chain.as_mut() {
                            c.on_fetch_event(id, &ev, now);
                        }
                        self.emit(Event::Fetch { id, event: ev });
                    }
                }
            }
            if self.fetches.get(&id).is_some_and(|f| f.has_ended()) {
                self.end_fetch(id);
            }
        }
    }

    /// Starts a driver and hands it the peers that advertise its root.
    fn start_fetch(
        &mut self,
        id: FetchId,
        req: FetchRequest,
        now: Instant,
    ) -> Result<(), FetchError> {
        if self.fetches.values().any(|f| f.out_dir() == req.out) {
            return Err(FetchError::input(format!(
                "{} is already the target of a running fetch",
                req.out.display()
            )));
        }
        if self.fetches.values().any(|f| f.root() == req.root) {
            return Err(FetchError::input(format!(
                "a fetch of {} is already running",
                req.root
            )));
        }
        let seed = u64::from_le_bytes(self.local_id.to_bytes()[..8].try_into().unwrap_or([7; 8]));
        let mut d = FetchDriver::start(
            id,
            self.data.clone(),
            self.io,
            req,
            seed,
            self.tasks_tx.clone(),
        )?;
        let root = d.root();
        for (p, a) in &self.adverts {
            if a.entries.iter().any(|e| e.root == root) {
                d.add_peer(*p, now);
            }
        }
        self.fetches.insert(id, d);
        // Ask every connected peer for its advert now rather than at the
        // next poll.
        self.last_advert_poll = now.checked_sub(Duration::from_secs(10)).unwrap_or(now);
        Ok(())
    }

    /// Stops and removes a driver, keeping its counters for the metrics.
    fn end_fetch(&mut self, id: FetchId) {
        if let Some(mut f) = self.fetches.remove(&id) {
            let p = f.scheduler_progress();
            self.fetched_before[0] += f.bytes_fetched();
            self.fetched_before[1] += p.chunks_done;
            self.fetched_before[2] += p.rejected_chunks;
            f.stop();
            self.update_metrics();
        }
    }

    fn on_command(&mut self, c: Command) -> Flow {
        let now = Instant::now();
        match c {
            Command::Fetch { req, reply } => {
                let id = self
                    .fetch_ids
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let r = self.start_fetch(id, *req, now).map(|()| id);
                let _ = reply.send(r);
            }
            Command::CancelFetch { id, reply } => {
                let owned_by_chain = self.chain.as_ref().and_then(|c| c.fetch_id()) == Some(id);
                let found = !owned_by_chain && self.fetches.contains_key(&id);
                if found {
                    self.end_fetch(id);
                }
                let _ = reply.send(found);
            }
            Command::Publish => self.refresh_and_announce(true),
            Command::Dial { addr } => {
                if let Some(Protocol::P2p(pid)) = addr.iter().last() {
                    self.peers.add_known(pid, addr.clone(), true, now);
                }
                let _ = self.swarm.dial(addr);
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Shutdown { .. } => return Flow::Stop(None),
        }
        Flow::Continue
    }

    fn on_task(&mut self, t: Task) -> Flow {
        let now = Instant::now();
        match t {
            Task::Served {
                peer,
                request,
                ticket,
                channel,
                resp,
            } => {
                if let Some(s) = self.server.as_mut() {
                    s.record(&resp);
                }
                let sent = self
                    .swarm
                    .behaviour_mut()
                    .state
                    .send_response(channel, resp);
                if let Some(t) = ticket {
                    match sent {
                        // Counted until delivered: an answer the peer does
                        // not drain still holds memory.
                        Ok(()) => {
                            self.answering.insert(request, (peer, t));
                        }
                        Err(_) => self.answer_done(peer, t, Outcome::Dropped),
                    }
                }
            }
            Task::BlocksServed {
                peer,
                request,
                ticket,
                channel,
                resp,
                bytes,
            } => {
                if let Some(s) = self.server.as_mut() {
                    s.stats.block_bytes_served += bytes;
                }
                match self
                    .swarm
                    .behaviour_mut()
                    .blocks
                    .send_response(channel, resp)
                {
                    Ok(()) => {
                        self.answering_blocks.insert(request, (peer, ticket));
                    }
                    Err(_) => self.answer_done(peer, ticket, Outcome::Dropped),
                }
            }
            Task::Fetch { id, msg } => {
                // From a replaced or stopped driver: dropped.
                if let Some(f) = self.fetches.get_mut(&id) {
                    f.on_msg(*msg, now);
                }
            }
            Task::Exec(done) => {
                if let Some(c) = self.chain.as_mut() {
                    c.on_exec(*done, now);
                }
            }
        }
        Flow::Continue
    }

    fn on_timer(&mut self) -> Flow {
        let now = Instant::now();
        for f in self.fetches.values_mut() {
            f.on_timeout(now);
        }
        if let Some(c) = self.chain.as_mut() {
            c.on_timeout(now);
        }
        Flow::Continue
    }

    fn on_tick(&mut self) -> Flow {
        let now = Instant::now();
        self.peers.tick(now);
        self.update_metrics();
        self.refresh_and_announce(false);
        self.poll_adverts(now);
        self.lookup_providers(now);
        for (&id, f) in &self.fetches {
            self.emit(Event::Fetch {
                id,
                event: FetchEvent::Progress(f.progress()),
            });
        }
        self.report_stalls(now);
        if let Some(s) = self.server.as_mut() {
            s.release_leases(false);
        }
        let expired: Vec<PeerId> = self
            .blocked_until
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in expired {
            self.blocked_until.remove(&p);
            self.swarm.behaviour_mut().blocked.unblock_peer(p);
        }
        Flow::Continue
    }

    /// Says why, peer by peer, for each fetch without progress for 5 s
    /// (every 5 s while it lasts).
    fn report_stalls(&mut self, now: Instant) {
        let ids: Vec<FetchId> = self.fetches.keys().copied().collect();
        self.stalls.retain(|id, _| ids.contains(id));
        for id in ids {
            let Some(f) = self.fetches.get(&id) else {
                continue;
            };
            let p = f.progress();
            // Anything that moves counts as progress.
            let key = p
                .bytes_done
                .wrapping_add(p.chunks_needed.rotate_left(20))
                .wrapping_add(p.requests.rotate_left(40))
                .wrapping_add(p.stage.len() as u64);
            let e = self.stalls.entry(id).or_insert((key, now, None));
            if e.0 != key {
                *e = (key, now, None);
                continue;
            }
            let quiet = now.saturating_duration_since(e.1);
            if quiet < Duration::from_secs(5)
                || e.2
                    .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(5))
            {
                continue;
            }
            e.2 = Some(now);
            let stall = self.why_stalled(f, quiet.as_secs_f64());
            self.emit(Event::Fetch {
                id,
                event: FetchEvent::Stalled(stall),
            });
        }
    }

    fn why_stalled(&self, f: &FetchDriver, seconds: f64) -> crate::event::Stall {
        use crate::event::PeerWhy;
        use statesync_engine::fetch::PeerState;
        let root = f.root();
        let states: HashMap<PeerId, PeerState> =
            f.peer_states().map(|(p, s)| (*p, s.clone())).collect();
        let mut peers: Vec<PeerId> = self.bootstrap.clone();
        peers.extend(self.connected.iter().copied());
        peers.extend(self.dial_errors.keys().copied());
        peers.extend(states.keys().copied());
        peers.sort();
        peers.dedup();
        let mut out = Vec::new();
        let mut useless = 0;
        for p in &peers {
            let why = match states.get(p) {
                Some(PeerState::Active) => "serving".to_string(),
                Some(PeerState::Waiting(_)) => "BUSY or cooling off after failures".into(),
                Some(PeerState::NotFound) => {
                    useless += 1;
                    "NOT_FOUND for this root".into()
                }
                Some(PeerState::Banned(r)) => {
                    useless += 1;
                    format!("banned: {r}")
                }
                None if self.connected.contains(p) => match self.adverts.get(p) {
                    Some(a) if !a.entries.iter().any(|e| e.root == root) => {
                        useless += 1;
                        "does not advertise this root".into()
                    }
                    Some(_) => "advertises it; not asked yet".into(),
                    None => "connected, no advert yet".into(),
                },
                None => match self.dial_errors.get(p) {
                    Some(e) => format!("dial failed: {e}"),
                    None => "not connected".into(),
                },
            };
            out.push(PeerWhy {
                peer: p.to_string(),
                why,
            });
        }
        let reachable = peers
            .iter()
            .filter(|p| self.connected.contains(p) || states.contains_key(p))
            .count();
        crate::event::Stall {
            seconds,
            nobody_has_it: reachable > 0 && useless == reachable && f.usable_peers() == 0,
            peers: out,
        }
    }

    /// Releases an answer's admission ticket.
    fn answer_done(&mut self, peer: PeerId, ticket: Ticket, outcome: Outcome) {
        if let Some(s) = self.server.as_mut() {
            s.done(peer, ticket, outcome);
        }
    }

    /// Re-reads the store (at most once a second unless `force`) and
    /// announces a changed checkpoint list to connected peers.
    fn refresh_and_announce(&mut self, force: bool) {
        let Some(s) = self.server.as_mut() else {
            return;
        };
        let changed = s.refresh(force);
        let damaged = s.take_damaged();
        let heights = s.heights();
        let adv = statesync_net::advert::sign(&self.kp, &s.advert());
        for (height, root, what) in damaged {
            self.emit(Event::CheckpointDamaged { height, root, what });
        }
        if changed {
            self.emit(Event::ServingChanged { heights });
            for p in self.connected.iter().copied().collect::<Vec<_>>() {
                let rid = self.swarm.behaviour_mut().state.send_request(
                    &p,
                    Request::Announce {
                        advert: adv.clone(),
                    }
                    .into(),
                );
                self.pending.insert(rid, Pending::Announce);
            }
        }
        self.update_providing();
    }

    /// Asks connected peers that have not advertised a root being fetched
    /// again, every few seconds (they may have just promoted it).
    fn poll_adverts(&mut self, now: Instant) {
        if self.fetches.is_empty()
            || now.saturating_duration_since(self.last_advert_poll) <= Duration::from_secs(3)
        {
            return;
        }
        self.last_advert_poll = now;
        let wanted: Vec<(statesync_manifest::hash::Hash, bool)> = self
            .fetches
            .values()
            .filter(|f| !f.is_done())
            .map(|f| (f.root(), f.usable_peers() == 0))
            .collect();
        for p in self.connected.iter().copied().collect::<Vec<_>>() {
            let ask = wanted.iter().any(|(root, starving)| {
                *starving
                    || !self
                        .adverts
                        .get(&p)
                        .is_some_and(|a| a.entries.iter().any(|e| e.root == *root))
            });
            if ask {
                let rid = self
                    .swarm
                    .behaviour_mut()
                    .state
                    .send_request(&p, Request::GetAdvert.into());
                self.pending.insert(rid, Pending::Advert(p));
            }
        }
    }

    fn update_metrics(&self) {
        use crate::metrics::{gauge, set};
        let m = &self.metrics;
        if let Some(s) = self.server.as_ref() {
            set(&m.bytes_served, s.stats.bytes_served);
            set(&m.block_bytes_served, s.stats.block_bytes_served);
            set(&m.requests_served, s.stats.requests);
            set(&m.busy_answers, s.stats.busy);
            set(&m.not_found_answers, s.stats.not_found);
        }
        let mut cur = [0u64; 3];
        let mut needed = 0;
        for f in self.fetches.values() {
            let p = f.scheduler_progress();
            cur[0] += f.bytes_fetched();
            cur[1] += p.chunks_done;
            cur[2] += p.rejected_chunks;
            needed += p.bytes_needed;
        }
        gauge(&m.fetch_bytes_needed, needed);
        set(&m.bytes_fetched, self.fetched_before[0] + cur[0]);
        set(&m.chunks_verified, self.fetched_before[1] + cur[1]);
        set(&m.chunks_rejected, self.fetched_before[2] + cur[2]);
        gauge(&m.peers, self.connected.len() as u64);
        set(&m.dials, self.peers.stats.dials);
        set(&m.discoveries, self.peers.stats.discoveries);
        if let Some(c) = self.chain.as_ref() {
            c.update_metrics(m);
        }
    }

    fn status(&self) -> Status {
        let b = self.swarm.behaviour();
        Status {
            peer_id: self.local_id.to_string(),
            listen: self.listen.iter().map(|a| a.to_string()).collect(),
            connections: self
                .connected
                .iter()
                .map(|c| (c.to_string(), b.one_per_peer.connections(c)))
                .collect(),
            duplicates_closed: b.one_per_peer.duplicates_closed,
            dials: self.peers.stats.dials,
            discoveries: self.peers.stats.discoveries,
            providers: self.providers.stats.clone(),
            blocked: self.blocked_until.len(),
            serve: self.server.as_ref().map(|s| s.stats.clone()),
            fetch: self
                .fetches
                .values()
                .next()
                .map(|f| f.scheduler_progress().clone()),
            fetches: self
                .fetches
                .iter()
                .map(|(&id, f)| FetchStatus {
                    id,
                    root: f.root().to_hex(),
                    out: f.out_dir().to_path_buf(),
                    progress: f.progress(),
                })
                .collect(),
            chain: self.chain.as_ref().map(|c| c.status()),
        }
    }
}
