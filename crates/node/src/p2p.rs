//! The async shell: one tokio event loop per node that owns the libp2p
//! swarm, serves a checkpoint store, and drives a state fetch. Protocol
//! decisions are made by the sans-IO cores (`statesync_engine`); this file
//! moves bytes between them, the network and the disk.

use crate::chain_node::{ChainMsg, ChainNode, ChainSetup, Ctx};
use crate::fetch_driver::{FetchDriver, FetchMsg};
use crate::serve::{ServeLimits, Server};
use crate::session::LocalReport;
use futures::StreamExt;
use statesync_engine::peers::{PeerAction, PeerManager, PeerManagerConfig};
use statesync_manifest::format::Manifest;
use statesync_manifest::hash::Hash;
use statesync_net::libp2p::multiaddr::Protocol;
use statesync_net::libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use statesync_net::libp2p::swarm::SwarmEvent;
use statesync_net::libp2p::{Multiaddr, PeerId, Swarm, identify, kad};
use statesync_net::{Behaviour, BehaviourEvent, NetConfig};
use statesync_proto::blocks::BlockResponse;
use statesync_proto::{Advert, Request, Response};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, Error>;

/// Settings common to every node.
pub struct NodeCfg {
    pub data: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub peers: Vec<Multiaddr>,
    /// Write the first listen address (with /p2p/ id) here once known.
    pub addr_file: Option<PathBuf>,
    pub json: bool,
    pub quiet: bool,
    pub min_peers: usize,
    pub max_peers: usize,
    /// Write a JSON status here every tick (peers, connections, progress).
    pub status_file: Option<PathBuf>,
    /// Serve Prometheus metrics on this address.
    pub metrics: Option<std::net::SocketAddr>,
    /// Security protocol proposed first on TCP.
    pub security: statesync_net::Security,
}

/// A state sync to run.
#[derive(Clone)]
pub struct FetchJob {
    pub root: Hash,
    pub out: PathBuf,
    /// Local checkpoint directories with their manifests, as reuse sources.
    pub seeds: Vec<(PathBuf, Manifest)>,
    /// Exit (as if killed) after this many chunk bytes were received: test
    /// hook for crash/resume tests, hidden from --help.
    pub crash_after_bytes: Option<u64>,
    /// Scheduler and durability tunables (hidden flags; tests use small ones).
    pub max_window: Option<u64>,
    pub commit_bytes: Option<u64>,
    /// A stale local checkpoint (directory and manifest) to consume and
    /// update in place.
    pub in_place: Option<(PathBuf, Manifest)>,
    /// Rehash every chunk at the end, also those kept or linked.
    pub full_verify: bool,
}

/// Fault injection for the serving side (tests only, hidden from --help).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// Accept data requests and never answer them.
    Silent,
    /// Advertise and serve a forged manifest whose paths escape with `../`.
    Traversal,
    /// Serve chunks with their first byte flipped: a lying peer (an honest
    /// one whose disk is damaged finds out by itself, see serve.rs).
    Corrupt,
}

/// Final figures of a fetch, printed as the summary.
#[derive(Debug, Default, serde::Serialize)]
pub struct FetchSummary {
    pub root: String,
    pub out: PathBuf,
    pub files: u64,
    pub bytes: u64,
    pub bytes_fetched: u64,
    pub chunks_fetched: u64,
    pub local: LocalReport,
    pub seconds: f64,
    pub peers_used: usize,
    pub peers_banned: Vec<String>,
    pub bytes_per_peer: HashMap<String, u64>,
    pub requests: u64,
    pub rejected_chunks: u64,
    /// Every peer the scheduler knew, with what it did.
    pub peers: Vec<PeerReport>,
}

/// One peer's record in a fetch: what it delivered and how it failed.
#[derive(Debug, Default, serde::Serialize)]
pub struct PeerReport {
    pub peer: String,
    /// `active`, `cooling off`, `not found` or `banned: <reason>`.
    pub state: String,
    pub bytes: u64,
    pub requests: u64,
    pub timeouts: u64,
    /// Streams reset or cut short, refusals.
    pub failures: u64,
    pub busy: u64,
    pub cool_offs: u32,
}

pub enum Pending {
    Advert(PeerId),
    Fetch { generation: u64, id: u64 },
    Announce,
}

pub enum LoopMsg {
    Served {
        peer: PeerId,
        channel: ResponseChannel<Response>,
        resp: Response,
    },
    Fetch {
        generation: u64,
        msg: Box<FetchMsg>,
    },
    Chain(ChainMsg),
}

fn log(cfg: &NodeCfg, msg: impl AsRef<str>) {
    if !cfg.quiet {
        eprintln!("{}", msg.as_ref());
    }
}

/// Runs a node: serves `server` (if any), performs `job` (if any) and runs
/// the chain (if any). Returns when the job is done (or the chain's exit
/// condition is met), or on SIGTERM/SIGINT.
pub async fn run(
    cfg: NodeCfg,
    mut server: Option<Server>,
    job: Option<FetchJob>,
    fault: Option<Fault>,
    chain_setup: Option<ChainSetup>,
) -> Result<ExitCode> {
    let kp = statesync_net::load_or_create_identity(&cfg.data.join("identity.key"))?;
    let local_id = kp.public().to_peer_id();
    let mut swarm: Swarm<Behaviour> = statesync_net::build_swarm(
        kp.clone(),
        &NetConfig {
            security: cfg.security,
            ..NetConfig::default()
        },
    )?;
    let listen = if cfg.listen.is_empty() {
        vec!["/ip4/127.0.0.1/tcp/0".parse::<Multiaddr>()?]
    } else {
        cfg.listen.clone()
    };
    for a in &listen {
        swarm
            .listen_on(a.clone())
            .map_err(|e| format!("listen on {a}: {e}"))?;
    }
    let mut peers = PeerManager::new(PeerManagerConfig {
        min_peers: cfg.min_peers,
        max_peers: cfg.max_peers,
        ..Default::default()
    });
    let start = Instant::now();
    for a in &cfg.peers {
        let Some(Protocol::P2p(pid)) = a.iter().last() else {
            return Err(format!("peer address {a} must end with /p2p/<peer id>").into());
        };
        swarm.behaviour_mut().kad.add_address(&pid, a.clone());
        peers.add_known(pid, a.clone(), true, start);
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<LoopMsg>();
    let mut chain = match chain_setup {
        Some(setup) => {
            let limits = setup.limits.clone();
            let c = ChainNode::start(&cfg, setup, tx.clone())?;
            if server.is_none() {
                let (store, _) = statesync_store::Store::open(c.store_path())?;
                server = Some(Server::new(Some(store), limits));
            }
            Some(c)
        }
        None => None,
    };
    if let Some(s) = server.as_mut() {
        s.refresh(true);
        if fault == Some(Fault::Traversal) {
            let r = s
                .enable_evil()
                .ok_or("fault traversal needs a checkpoint to forge")?;
            log(
                &cfg,
                format!("fault traversal: advertising forged root {r}"),
            );
            std::fs::write(cfg.data.join("forged-root"), r.to_hex())?;
        }
    }

    let metrics = crate::metrics::Metrics::new();
    if let Some(addr) = cfg.metrics {
        crate::metrics::serve(addr, metrics.clone())
            .await
            .map_err(|e| format!("metrics on {addr}: {e}"))?;
        log(&cfg, format!("metrics on http://{addr}/metrics"));
    }
    let mut fetch_base = [0u64; 3];
    let mut fetch_last: (Option<u64>, [u64; 3]) = (None, [0; 3]);
    let mut pending: HashMap<OutboundRequestId, Pending> = HashMap::new();
    let mut silent_channels = Vec::new();
    let mut adverts: HashMap<PeerId, Advert> = HashMap::new();
    let mut connected: HashSet<PeerId> = HashSet::new();
    let mut addr_written = false;
    let mut generation = 0u64;
    let mut fetch: Option<FetchDriver> = match job {
        Some(j) => Some(FetchDriver::start(
            cfg.data.clone(),
            cfg.quiet,
            cfg.json,
            j,
            local_id,
            generation,
            tx.clone(),
        )?),
        None => None,
    };

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_advert_poll = Instant::now();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    loop {
        // 1. Scheduler actions.
        if let Some(c) = chain.as_mut() {
            let mut ctx = Ctx {
                swarm: &mut swarm,
                fetch: &mut fetch,
                adverts: &adverts,
                peers: &mut peers,
                local_id,
                generation: &mut generation,
                tx: &tx,
            };
            if let Some(code) = c.step(&mut ctx)? {
                if let Some(s) = server.as_mut() {
                    s.release_leases(true);
                }
                return Ok(code);
            }
        }
        if let Some(f) = fetch.as_mut()
            && let Err(e) = f.poll(&mut swarm, &mut pending, &mut peers)
        {
            match chain.as_mut() {
                Some(c) => {
                    f.stop();
                    fetch = None;
                    c.on_fetch_failed(e.to_string());
                }
                None => {
                    // What is written becomes durable: a retry resumes it.
                    f.stop();
                    return Err(e);
                }
            }
        }
        // 2. Peer manager actions (dials, discovery, trimming).
        while let Some(a) = peers.poll_action() {
            match a {
                PeerAction::Dial(p, addr) => {
                    let _ = swarm.dial(addr.with_p2p(p).unwrap_or_else(|a| a));
                }
                PeerAction::Discover => {
                    swarm
                        .behaviour_mut()
                        .kad
                        .get_closest_peers(PeerId::random());
                }
                PeerAction::Disconnect(p) => {
                    let _ = swarm.disconnect_peer_id(p);
                }
            }
        }

        let deadline = [
            fetch.as_ref().and_then(|f| f.deadline()),
            chain.as_ref().and_then(|c| c.deadline()),
        ]
        .into_iter()
        .flatten()
        .min();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending::<()>().await,
            }
        };

        tokio::select! {
            ev = swarm.select_next_some() => {
                let now = Instant::now();
                match ev {
                    SwarmEvent::NewListenAddr { address, .. } => {
                        let full = address.clone().with(Protocol::P2p(local_id));
                        log(&cfg, format!("listening on {full}"));
                        if !addr_written && let Some(p) = &cfg.addr_file {
                            let tmp = p.with_extension("tmp");
                            std::fs::write(&tmp, full.to_string())?;
                            std::fs::rename(&tmp, p)?;
                            addr_written = true;
                        }
                    }
                    SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } if !connected.contains(&peer_id) => {
                        connected.insert(peer_id);
                        peers.connected(peer_id, now);
                        let rid = swarm.behaviour_mut().state.send_request(&peer_id, Request::GetAdvert);
                        pending.insert(rid, Pending::Advert(peer_id));
                        if endpoint.is_dialer() {
                            swarm.behaviour_mut().kad.add_address(&peer_id, endpoint.get_remote_address().clone());
                        }
                        if let Some(c) = chain.as_mut() {
                            c.on_connected(peer_id, &mut swarm);
                        }
                    }
                    SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } if connected.contains(&peer_id) => {
                        connected.remove(&peer_id);
                        peers.disconnected(peer_id, now);
                        adverts.remove(&peer_id);
                        if let Some(f) = fetch.as_mut() {
                            f.remove_peer(&peer_id, now);
                        }
                        if let Some(c) = chain.as_mut() {
                            c.on_disconnected(peer_id, now);
                        }
                    }
                    SwarmEvent::OutgoingConnectionError { peer_id: Some(p), .. } => {
                        peers.dial_failed(p, now);
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                        for a in info.listen_addrs {
                            if is_dialable(&a) {
                                swarm.behaviour_mut().kad.add_address(&peer_id, a.clone());
                                peers.add_known(peer_id, a, false, now);
                            }
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed { result: kad::QueryResult::GetClosestPeers(r), .. })) => {
                        let found: Vec<_> = match r {
                            Ok(ok) => ok.peers,
                            Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                        };
                        let mut n = 0;
                        for p in found {
                            if p.peer_id == local_id {
                                continue;
                            }
                            for a in p.addrs {
                                if is_dialable(&a) {
                                    peers.add_known(p.peer_id, a, false, now);
                                    n += 1;
                                }
                            }
                        }
                        peers.discovery_done(n, now);
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Blocks(ev)) => match ev {
                        request_response::Event::Message { peer, message, .. } => match message {
                            request_response::Message::Request { request, channel, .. } => match (chain.as_mut(), server.as_mut()) {
                                (Some(c), Some(s)) => c.on_request(peer, request, channel, &mut swarm, s, now),
                                _ => {
                                    let _ = swarm.behaviour_mut().blocks.send_response(channel, BlockResponse::NotFound);
                                }
                            },
                            request_response::Message::Response { request_id, response } => {
                                if let Some(c) = chain.as_mut() {
                                    c.on_response(request_id, peer, response, &mut swarm, now);
                                }
                            }
                        },
                        request_response::Event::OutboundFailure { request_id, .. } => {
                            if let Some(c) = chain.as_mut() {
                                c.on_failure(request_id, now);
                            }
                        }
                        _ => {}
                    },
                    SwarmEvent::Behaviour(BehaviourEvent::State(ev)) => match ev {
                        request_response::Event::Message { peer, message, .. } => match message {
                            request_response::Message::Request { request, channel, .. } => {
                                match request {
                                    Request::GetAdvert => {
                                        let adv = server.as_ref().map(|s| s.advert()).unwrap_or(Advert { seq: 0, entries: vec![] });
                                        let _ = swarm.behaviour_mut().state.send_response(channel, Response::Advert { advert: statesync_net::advert::sign(&kp, &adv) });
                                    }
                                    Request::Announce { advert } => {
                                        if let Some(a) = statesync_net::advert::verify(&peer, &advert) {
                                            on_advert(&mut adverts, &mut fetch, peer, a, now);
                                        }
                                        let _ = swarm.behaviour_mut().state.send_response(channel, Response::Ack);
                                    }
                                    req => match server.as_mut() {
                                        None => {
                                            let _ = swarm.behaviour_mut().state.send_response(channel, Response::NotFound);
                                        }
                                        Some(s) => match s.admit(peer, &req) {
                                            Err(resp) => {
                                                let _ = swarm.behaviour_mut().state.send_response(channel, resp);
                                            }
                                            Ok(_) if fault == Some(Fault::Silent) => silent_channels.push(channel),
                                            Ok(job) => {
                                                let tx2 = tx.clone();
                                                tokio::task::spawn_blocking(move || {
                                                    let mut resp = job.run();
                                                    if fault == Some(Fault::Corrupt)
                                                        && let Response::Chunks { chunks } = &mut resp
                                                    {
                                                        for (_, c) in chunks.iter_mut() {
                                                            let mut v = c.to_vec();
                                                            if let Some(b) = v.first_mut() {
                                                                *b ^= 0xff;
                                                            }
                                                            *c = v.into();
                                                        }
                                                    }
                                                    let _ = tx2.send(LoopMsg::Served { peer, channel, resp });
                                                });
                                            }
                                        },
                                    },
                                }
                            }
                            request_response::Message::Response { request_id, response } => {
                                match pending.remove(&request_id) {
                                    Some(Pending::Advert(p)) => {
                                        if let Response::Advert { advert } = response
                                            && let Some(a) = statesync_net::advert::verify(&p, &advert)
                                        {
                                            on_advert(&mut adverts, &mut fetch, p, a, now);
                                        }
                                    }
                                    Some(Pending::Fetch { generation: g, id }) => {
                                        if let Some(f) = fetch.as_mut().filter(|f| f.generation == g) {
                                            f.on_response(id, peer, response, now);
                                        }
                                    }
                                    Some(Pending::Announce) | None => {}
                                }
                            }
                        },
                        request_response::Event::OutboundFailure { request_id, error, .. } => {
                            if let Some(Pending::Fetch { generation: g, id }) = pending.remove(&request_id)
                                && let Some(f) = fetch.as_mut().filter(|f| f.generation == g)
                            {
                                f.on_failure(id, &error, now);
                            }
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
            Some(msg) = rx.recv() => {
                let now = Instant::now();
                match msg {
                    LoopMsg::Served { peer, channel, resp } => {
                        if let Some(s) = server.as_mut() {
                            s.finished(peer, &resp);
                        }
                        let _ = swarm.behaviour_mut().state.send_response(channel, resp);
                    }
                    LoopMsg::Chain(m) => {
                        if let Some(c) = chain.as_mut() {
                            c.on_msg(m, &mut swarm, server.as_mut(), now)?;
                        }
                    }
                    LoopMsg::Fetch { generation: g, msg } => {
                        let Some(f) = fetch.as_mut().filter(|f| f.generation == g) else {
                            continue; // from a replaced driver
                        };
                        match (f.on_msg(*msg, now), chain.as_mut()) {
                            (Ok(None), _) => {}
                            (Ok(Some(summary)), Some(c)) => {
                                fetch = None;
                                c.on_fetch_done(summary, now);
                            }
                            (Ok(Some(summary)), None) => {
                                print_summary(&cfg, &summary);
                                return Ok(ExitCode::SUCCESS);
                            }
                            (Err(e), Some(c)) => {
                                f.stop();
                                fetch = None;
                                c.on_fetch_failed(e.to_string());
                            }
                            (Err(e), None) => {
                                f.stop();
                                return Err(e);
                            }
                        }
                    }
                }
            }
            _ = sleep => {
                let now = Instant::now();
                if let Some(f) = fetch.as_mut() {
                    f.on_timeout(now);
                }
                if let Some(c) = chain.as_mut() {
                    c.on_timeout(now);
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                peers.tick(now);
                {
                    use crate::metrics::{gauge, set};
                    let m = &metrics;
                    if let Some(s) = server.as_ref() {
                        set(&m.bytes_served, s.stats.bytes_served);
                        set(&m.block_bytes_served, s.stats.block_bytes_served);
                        set(&m.requests_served, s.stats.requests);
                        set(&m.busy_answers, s.stats.busy);
                        set(&m.not_found_answers, s.stats.not_found);
                    }
                    // Counters survive drivers being replaced (root switches).
                    let cur = fetch.as_ref().map(|f| {
                        let p = f.progress();
                        (f.generation, [p.bytes_done, p.chunks_done, p.rejected_chunks], p.bytes_needed)
                    });
                    if cur.map(|c| c.0) != fetch_last.0 {
                        for (b, l) in fetch_base.iter_mut().zip(fetch_last.1) {
                            *b += l;
                        }
                        fetch_last = (cur.map(|c| c.0), [0; 3]);
                    }
                    if let Some((_, v, needed)) = cur {
                        fetch_last.1 = v;
                        gauge(&m.fetch_bytes_needed, needed);
                    }
                    set(&m.bytes_fetched, fetch_base[0] + fetch_last.1[0]);
                    set(&m.chunks_verified, fetch_base[1] + fetch_last.1[1]);
                    set(&m.chunks_rejected, fetch_base[2] + fetch_last.1[2]);
                    gauge(&m.peers, connected.len() as u64);
                    set(&m.dials, peers.stats.dials);
                    set(&m.discoveries, peers.stats.discoveries);
                    if let Some(c) = chain.as_ref() {
                        c.update_metrics(m);
                    }
                }
                if let Some(p) = &cfg.status_file {
                    let conns: HashMap<String, usize> = connected
                        .iter()
                        .map(|c| (c.to_string(), swarm.behaviour().one_per_peer.connections(c)))
                        .collect();
                    let status = serde_json::json!({
                        "peer_id": local_id.to_string(),
                        "connections": conns,
                        "duplicates_closed": swarm.behaviour().one_per_peer.duplicates_closed,
                        "dials": peers.stats.dials,
                        "discoveries": peers.stats.discoveries,
                        "serve": server.as_ref().map(|s| s.stats.clone()),
                        "fetch": fetch.as_ref().map(|f| f.progress().clone()),
                        "chain": chain.as_ref().map(|c| c.status_json()),
                    });
                    let tmp = p.with_extension("tmp");
                    if std::fs::write(&tmp, status.to_string()).is_ok() {
                        let _ = std::fs::rename(&tmp, p);
                    }
                }
                if let Some(s) = server.as_mut()
                    && s.refresh(false)
                {
                    let adv = statesync_net::advert::sign(&kp, &s.advert());
                    for p in connected.iter().copied().collect::<Vec<_>>() {
                        let rid = swarm.behaviour_mut().state.send_request(&p, Request::Announce { advert: adv.clone() });
                        pending.insert(rid, Pending::Announce);
                    }
                }
                // Ask connected peers that have not advertised our root again,
                // every few seconds (they may have just promoted it).
                if let Some(f) = fetch.as_ref()
                    && !f.is_done()
                    && last_advert_poll.elapsed() > Duration::from_secs(3)
                {
                    last_advert_poll = now;
                    let root = f.root();
                    for p in connected.iter().copied().collect::<Vec<_>>() {
                        let has = adverts.get(&p).is_some_and(|a| a.entries.iter().any(|e| e.root == root));
                        if !has || f.usable_peers() == 0 {
                            let rid = swarm.behaviour_mut().state.send_request(&p, Request::GetAdvert);
                            pending.insert(rid, Pending::Advert(p));
                        }
                    }
                }
                if let Some(f) = fetch.as_mut() {
                    f.report(if chain.is_some() { "state sync" } else { "fetch" });
                }
            }
            _ = sigterm.recv() => {
                log(&cfg, "SIGTERM: saving progress and stopping");
                if let Some(s) = server.as_mut() {
                    s.release_leases(true);
                }
                if let Some(f) = fetch.as_mut() {
                    f.stop();
                }
                if let Some(c) = chain.as_mut() {
                    c.stop();
                }
                return Ok(ExitCode::from(143));
            }
            _ = tokio::signal::ctrl_c() => {
                log(&cfg, "interrupted: saving progress and stopping");
                if let Some(s) = server.as_mut() {
                    s.release_leases(true);
                }
                if let Some(f) = fetch.as_mut() {
                    f.stop();
                }
                if let Some(c) = chain.as_mut() {
                    c.stop();
                }
                return Ok(ExitCode::from(130));
            }
        }
    }
}

fn print_summary(cfg: &NodeCfg, summary: &FetchSummary) {
    if cfg.json {
        println!(
            "{}",
            serde_json::to_string_pretty(summary).unwrap_or_default()
        );
    } else {
        println!(
            "synced {} into {}: {} files, {}; fetched {} from {} peers, reused {} locally; {:.1}s ({})",
            summary.root,
            summary.out.display(),
            summary.files,
            crate::bytes(summary.bytes),
            crate::bytes(summary.bytes_fetched),
            summary.peers_used,
            crate::bytes(summary.local.reused()),
            summary.seconds,
            crate::rate(summary.bytes_fetched, summary.seconds)
        );
        for b in &summary.peers_banned {
            println!("  banned {b}");
        }
    }
}

fn is_dialable(a: &Multiaddr) -> bool {
    !a.iter()
        .any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_unspecified()))
}

fn on_advert(
    adverts: &mut HashMap<PeerId, Advert>,
    fetch: &mut Option<FetchDriver>,
    peer: PeerId,
    a: Advert,
    now: Instant,
) {
    if adverts.get(&peer).is_some_and(|old| old.seq > a.seq) {
        return; // an older advert arriving late
    }
    if let Some(f) = fetch.as_mut()
        && a.entries.iter().any(|e| e.root == f.root())
    {
        f.add_peer(peer, now);
    }
    adverts.insert(peer, a);
}

pub fn limits(peer_mib: u64, global_mib: u64, concurrent: usize) -> ServeLimits {
    ServeLimits {
        peer_bytes_per_sec: peer_mib << 20,
        global_bytes_per_sec: global_mib << 20,
        max_concurrent_per_peer: concurrent,
    }
}
