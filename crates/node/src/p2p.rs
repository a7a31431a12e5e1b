//! The async shell: one tokio event loop per node that owns the libp2p
//! swarm, serves a checkpoint store, and drives a state fetch. Protocol
//! decisions are made by the sans-IO cores (`statesync_engine`); this file
//! moves bytes between them, the network and the disk.

use crate::serve::{ServeLimits, Server};
use crate::session::{self, LocalReport, Staging, Writer};
use crate::ui;
use futures::StreamExt;
use statesync_engine::fetch::{Action, Ask, Config as FetchConfig, Failure, Fetch};
use statesync_engine::peers::{PeerAction, PeerManager, PeerManagerConfig};
use statesync_manifest::diff::LocalSource;
use statesync_manifest::format::Manifest;
use statesync_manifest::hash::Hash;
use statesync_net::libp2p::identity::{Keypair, PublicKey};
use statesync_net::libp2p::multiaddr::Protocol;
use statesync_net::libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use statesync_net::libp2p::swarm::SwarmEvent;
use statesync_net::libp2p::{Multiaddr, PeerId, Swarm, identify, kad};
use statesync_net::{Behaviour, BehaviourEvent, NetConfig};
use statesync_proto::{Advert, Request, Response, SignedAdvert};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
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
}

/// A state sync to run.
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
}

enum Pending {
    Advert(PeerId),
    Fetch(u64),
    Announce,
}

enum LoopMsg {
    Served {
        peer: PeerId,
        channel: ResponseChannel<Response>,
        resp: Response,
    },
    Planned(Result<(Vec<u64>, LocalReport)>),
    Written {
        id: u64,
        results: Vec<(u64, std::result::Result<(), String>)>,
        bytes: u64,
    },
    Flushed(std::result::Result<(), String>),
    Promoted(Result<()>),
    LocalFailure(String),
}

enum WriteJob {
    Chunks {
        id: u64,
        chunks: Vec<(u64, Vec<u8>)>,
    },
    Flush,
}

fn peer_public_key(p: &PeerId) -> Option<PublicKey> {
    let mh: &statesync_net::libp2p::multihash::Multihash<64> = p.as_ref();
    if mh.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(mh.digest()).ok()
}

fn sign_advert(kp: &Keypair, advert: &Advert) -> SignedAdvert {
    let body = advert.encode();
    let msg = Advert::signing_bytes(&kp.public().to_peer_id().to_bytes(), &body);
    SignedAdvert {
        signature: kp.sign(&msg).unwrap_or_default(),
        body,
    }
}

fn verify_advert(peer: &PeerId, sa: &SignedAdvert) -> Option<Advert> {
    let key = peer_public_key(peer)?;
    let msg = Advert::signing_bytes(&peer.to_bytes(), &sa.body);
    if !key.verify(&msg, &sa.signature) {
        return None;
    }
    Advert::decode(&sa.body).ok()
}

fn ask_to_request(root: Hash, ask: Ask) -> Request {
    match ask {
        Ask::Header => Request::GetHeader { root },
        Ask::FilePiece(index) => Request::GetFilePiece { root, index },
        Ask::ChunkPiece(index) => Request::GetChunkPiece { root, index },
        Ask::Chunks(indices) => Request::GetChunks { root, indices },
    }
}

fn log(cfg: &NodeCfg, msg: impl AsRef<str>) {
    if !cfg.quiet {
        eprintln!("{}", msg.as_ref());
    }
}

/// Runs a node: serves `server` (if any) and performs `job` (if any). Returns
/// when the job is done, or on SIGTERM/SIGINT.
pub async fn run(
    cfg: NodeCfg,
    mut server: Option<Server>,
    job: Option<FetchJob>,
    fault: Option<Fault>,
) -> Result<ExitCode> {
    let kp = statesync_net::load_or_create_identity(&cfg.data.join("identity.key"))?;
    let local_id = kp.public().to_peer_id();
    let mut swarm: Swarm<Behaviour> =
        statesync_net::build_swarm(kp.clone(), &NetConfig::default())?;
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

    let (tx, mut rx) = mpsc::unbounded_channel::<LoopMsg>();
    let mut pending: HashMap<OutboundRequestId, Pending> = HashMap::new();
    let mut silent_channels = Vec::new();
    let mut adverts: HashMap<PeerId, u64> = HashMap::new();
    let mut connected: HashSet<PeerId> = HashSet::new();
    let mut addr_written = false;

    // Fetch state.
    let mut fetch: Option<Fetch<PeerId>> = None;
    let mut staging: Option<Arc<Staging>> = None;
    let mut manifest: Option<Arc<Manifest>> = None;
    let mut writer_tx: Option<std::sync::mpsc::Sender<WriteJob>> = None;
    let mut summary = FetchSummary::default();
    let mut received = 0u64;
    let mut finishing = false;
    let mut promoting = false;
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut seed_dirs: Vec<(PathBuf, Manifest)> = Vec::new();
    if let Some(j) = &job {
        let st = Arc::new(Staging::open(&cfg.data, j.root)?);
        if let Some((dir, old)) = &j.in_place {
            st.consume_in_place(dir, old)?;
            log(
                &cfg,
                format!("in place: consumed {} as the starting point", dir.display()),
            );
        }
        let seed = u64::from_le_bytes(local_id.to_bytes()[..8].try_into().unwrap_or([7; 8]));
        let mut fcfg = FetchConfig::default();
        if let Some(w) = j.max_window {
            fcfg.max_window = w;
            fcfg.initial_window = fcfg.initial_window.min(w);
            fcfg.max_batch_bytes = fcfg.max_batch_bytes.min(w);
        }
        let f = match st.saved_manifest() {
            Some(m) => {
                log(
                    &cfg,
                    format!("resuming sync of {} (manifest already fetched)", j.root),
                );
                Fetch::with_manifest(j.root, seed, fcfg, m)
            }
            None => Fetch::new(j.root, seed, fcfg),
        };
        fetch = Some(f);
        staging = Some(st);
        summary.root = j.root.to_hex();
        summary.out = j.out.clone();
        seed_dirs = j
            .seeds
            .iter()
            .map(|(d, m)| (d.clone(), m.clone()))
            .collect();
        if !cfg.quiet && !cfg.json && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let pb = indicatif::ProgressBar::new(0);
            if let Ok(st) = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                pb.set_style(st.progress_chars("=> "));
            }
            bar = Some(pb);
        }
    }
    let root = job.as_ref().map(|j| j.root);
    let crash_after = job.as_ref().and_then(|j| j.crash_after_bytes);
    let commit_bytes = job.as_ref().and_then(|j| j.commit_bytes);

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_log = Instant::now();
    let mut last_advert_poll = Instant::now();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    loop {
        // 1. Scheduler actions.
        if let Some(f) = fetch.as_mut() {
            let now = Instant::now();
            while let Some(a) = f.poll_action() {
                match a {
                    Action::Send { peer, id, ask } => {
                        let req = ask_to_request(f.root(), ask);
                        let rid = swarm.behaviour_mut().state.send_request(&peer, req);
                        pending.insert(rid, Pending::Fetch(id));
                    }
                    Action::ManifestReady => {
                        let (Some(st), Some(m)) = (staging.clone(), f.manifest().cloned()) else {
                            continue;
                        };
                        st.save_manifest(&m)?;
                        let m = Arc::new(m);
                        manifest = Some(m.clone());
                        summary.files = m.files().len() as u64;
                        summary.bytes = m.total_size();
                        let seeds = seed_dirs.clone();
                        let data = cfg.data.clone();
                        let tx2 = tx.clone();
                        log(
                            &cfg,
                            format!(
                                "manifest verified: {} files, {}; planning local reuse",
                                m.files().len(),
                                ui::bytes(m.total_size())
                            ),
                        );
                        tokio::task::spawn_blocking(move || {
                            let others = session::other_stagings(&data, &st.root);
                            let mut sources: Vec<LocalSource<'_>> = seeds
                                .iter()
                                .map(|(d, sm)| LocalSource::complete(d, sm))
                                .collect();
                            for (d, om, done) in &others {
                                sources.push(LocalSource {
                                    dir: d,
                                    manifest: om,
                                    only_chunks: Some(done),
                                });
                            }
                            let plan = statesync_manifest::plan(&m, &sources);
                            let inplace = st.in_place_manifest();
                            let r =
                                session::execute_local(&st, &m, &plan, &sources, inplace.as_ref());
                            let _ = tx2.send(LoopMsg::Planned(r));
                        });
                        // Start the writer for fetched chunks.
                        let (wtx, wrx) = std::sync::mpsc::channel::<WriteJob>();
                        writer_tx = Some(wtx);
                        let st = staging.clone().ok_or("no staging")?;
                        let m = manifest.clone().ok_or("no manifest")?;
                        let tx3 = tx.clone();
                        std::thread::spawn(move || {
                            let mut w = Writer::new(st.clone());
                            if let Some(c) = commit_bytes {
                                w.commit_bytes = c;
                            }
                            while let Ok(job) = wrx.recv() {
                                match job {
                                    WriteJob::Chunks { id, chunks } => {
                                        let bytes =
                                            chunks.iter().map(|(_, d)| d.len() as u64).sum();
                                        match w.write(&m, chunks) {
                                            Ok(results) => {
                                                let _ = tx3.send(LoopMsg::Written {
                                                    id,
                                                    results,
                                                    bytes,
                                                });
                                            }
                                            Err(e) => {
                                                let _ = tx3.send(LoopMsg::LocalFailure(e));
                                                return;
                                            }
                                        }
                                    }
                                    WriteJob::Flush => {
                                        let _ = tx3.send(LoopMsg::Flushed(w.flush()));
                                    }
                                }
                            }
                        });
                    }
                    Action::Banned { peer, reason } => {
                        log(&cfg, format!("banned {peer} for this sync: {reason}"));
                        summary.peers_banned.push(format!("{peer}: {reason}"));
                        peers.penalize(&peer, now);
                    }
                }
            }
            if f.is_done() && !finishing {
                finishing = true;
                if let Some(w) = &writer_tx {
                    let _ = w.send(WriteJob::Flush);
                } else {
                    let _ = tx.send(LoopMsg::Flushed(Ok(())));
                }
            }
            if let Some(why) = f.failure() {
                return Err(format!("sync of {} cannot complete: {why}", f.root()).into());
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

        let deadline = fetch.as_ref().and_then(|f| f.poll_timeout());
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
                        {
                            peers.connected(peer_id, now);
                            let rid = swarm.behaviour_mut().state.send_request(&peer_id, Request::GetAdvert);
                            pending.insert(rid, Pending::Advert(peer_id));
                            if endpoint.is_dialer() {
                                swarm.behaviour_mut().kad.add_address(&peer_id, endpoint.get_remote_address().clone());
                            }
                        }
                    }
                    SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } if connected.contains(&peer_id) => {
                        connected.remove(&peer_id);
                        {
                            peers.disconnected(peer_id, now);
                            adverts.remove(&peer_id);
                            if let Some(f) = fetch.as_mut() {
                                f.remove_peer(&peer_id, now);
                            }
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
                    SwarmEvent::Behaviour(BehaviourEvent::State(ev)) => match ev {
                        request_response::Event::Message { peer, message, .. } => match message {
                            request_response::Message::Request { request, channel, .. } => {
                                match request {
                                    Request::GetAdvert => {
                                        let adv = server.as_ref().map(|s| s.advert()).unwrap_or(Advert { seq: 0, entries: vec![] });
                                        let _ = swarm.behaviour_mut().state.send_response(channel, Response::Advert { advert: sign_advert(&kp, &adv) });
                                    }
                                    Request::Announce { advert } => {
                                        if let Some(a) = verify_advert(&peer, &advert) {
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
                                                    let resp = job.run();
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
                                            && let Some(a) = verify_advert(&p, &advert)
                                        {
                                            on_advert(&mut adverts, &mut fetch, p, a, now);
                                        }
                                    }
                                    Some(Pending::Fetch(id)) => {
                                        if let Some(f) = fetch.as_mut() {
                                            match response {
                                                Response::Header { header } => f.handle_header(id, &header, now),
                                                Response::FilePiece { index, entries, proof } => f.handle_file_piece(id, index, entries, &proof, now),
                                                Response::ChunkPiece { index, entries, proof } => f.handle_chunk_piece(id, index, entries, &proof, now),
                                                Response::Chunks { chunks } => {
                                                    received += chunks.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
                                                    *summary.bytes_per_peer.entry(peer.to_string()).or_default() += chunks.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
                                                    if finishing {
                                                        // A late endgame duplicate: everything is in and
                                                        // being verified; nothing may touch the files now.
                                                    } else {
                                                        match &writer_tx {
                                                            Some(w) => { let _ = w.send(WriteJob::Chunks { id, chunks }); }
                                                            None => f.handle_failure(id, Failure::Malformed("chunks before the manifest".into()), now),
                                                        }
                                                    }
                                                    if crash_after.is_some_and(|c| received >= c) {
                                                        // Test hook: die by SIGKILL at a known point.
                                                        eprintln!("crash hook: SIGKILL after {received} bytes received");
                                                        // SAFETY: sends a signal to this process.
                                                        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                                                    }
                                                }
                                                Response::Busy { retry_after_ms } => f.handle_failure(id, Failure::Busy { retry_after: Duration::from_millis(u64::from(retry_after_ms)) }, now),
                                                Response::NotFound => f.handle_failure(id, Failure::NotFound, now),
                                                Response::Refused { .. } => f.handle_failure(id, Failure::Io, now),
                                                other => f.handle_failure(id, Failure::Malformed(format!("unexpected {}", kind(&other))), now),
                                            }
                                        }
                                    }
                                    Some(Pending::Announce) | None => {}
                                }
                            }
                        },
                        request_response::Event::OutboundFailure { request_id, error, .. } => {
                            if let Some(Pending::Fetch(id)) = pending.remove(&request_id)
                                && let Some(f) = fetch.as_mut()
                            {
                                let fl = match &error {
                                    request_response::OutboundFailure::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => Failure::Malformed(e.to_string()),
                                    _ => Failure::Io,
                                };
                                f.handle_failure(id, fl, now);
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
                    LoopMsg::Planned(r) => {
                        let (need, rep) = r?;
                        log(&cfg, format!(
                            "local reuse: {} files linked ({}), {} chunks copied ({}), {} zero chunks, {} chunks from an earlier run; {} chunks ({}) to fetch",
                            rep.files_linked, ui::bytes(rep.bytes_linked), rep.chunks_copied, ui::bytes(rep.bytes_copied),
                            rep.chunks_zero, rep.chunks_resumed, need.len(),
                            ui::bytes(manifest.as_ref().map(|m| need.iter().map(|&i| u64::from(m.chunks()[i as usize].len)).sum()).unwrap_or(0))
                        ));
                        summary.local = rep;
                        if let Some(f) = fetch.as_mut() {
                            f.set_needed(need, now);
                            if let Some(pb) = &bar {
                                pb.set_length(f.progress().bytes_needed);
                            }
                        }
                    }
                    LoopMsg::Written { id, results, bytes } => {
                        let _ = bytes;
                        if let Some(f) = fetch.as_mut() {
                            f.handle_chunks(id, &results, now);
                        }
                    }
                    LoopMsg::Flushed(r) => {
                        r.map_err(|e| format!("local failure (no peer at fault): {e}"))?;
                        if finishing && !promoting {
                            promoting = true;
                            let (Some(st), Some(m), Some(j)) = (staging.clone(), manifest.clone(), job.as_ref()) else {
                                return Err("sync finished without a manifest".into());
                            };
                            let out = j.out.clone();
                            let full_verify = j.full_verify;
                            let tx2 = tx.clone();
                            log(&cfg, "all chunks in; verifying the whole checkpoint");
                            tokio::task::spawn_blocking(move || {
                                let _ = tx2.send(LoopMsg::Promoted(session::promote(&st, &m, &out, full_verify)));
                            });
                        }
                    }
                    LoopMsg::Promoted(r) => {
                        r?;
                        if let Some(pb) = &bar {
                            pb.finish_and_clear();
                        }
                        // The staging area and older unfinished ones are no
                        // longer needed: nothing leaks.
                        let _ = std::fs::remove_dir_all(cfg.data.join("fetch"));
                        if let Some(f) = fetch.as_ref() {
                            let p = f.progress();
                            summary.bytes_fetched = p.bytes_done;
                            summary.chunks_fetched = p.chunks_done;
                            summary.requests = p.requests_sent;
                            summary.rejected_chunks = p.rejected_chunks;
                            summary.peers_used = summary.bytes_per_peer.len();
                        }
                        summary.seconds = start.elapsed().as_secs_f64();
                        if cfg.json {
                            ui::print_json(&summary);
                        } else {
                            println!(
                                "synced {} into {}: {} files, {}; fetched {} from {} peers, reused {} locally; {:.1}s ({})",
                                summary.root, summary.out.display(), summary.files, ui::bytes(summary.bytes),
                                ui::bytes(summary.bytes_fetched), summary.peers_used,
                                ui::bytes(summary.local.bytes_linked + summary.local.bytes_copied + summary.local.bytes_zero + summary.local.bytes_resumed + summary.local.bytes_kept),
                                summary.seconds, ui::rate(summary.bytes_fetched, summary.seconds)
                            );
                            for b in &summary.peers_banned {
                                println!("  banned {b}");
                            }
                        }
                        return Ok(ExitCode::SUCCESS);
                    }
                    LoopMsg::LocalFailure(e) => {
                        return Err(format!("local failure (no peer at fault), progress is kept for a restart: {e}").into());
                    }
                }
            }
            _ = sleep => {
                if let Some(f) = fetch.as_mut() {
                    f.handle_timeout(Instant::now());
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                peers.tick(now);
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
                    });
                    let tmp = p.with_extension("tmp");
                    if std::fs::write(&tmp, status.to_string()).is_ok() {
                        let _ = std::fs::rename(&tmp, p);
                    }
                }
                if let Some(s) = server.as_mut()
                    && s.refresh(false)
                {
                    let adv = sign_advert(&kp, &s.advert());
                    for p in connected.iter().copied().collect::<Vec<_>>() {
                        let rid = swarm.behaviour_mut().state.send_request(&p, Request::Announce { advert: adv.clone() });
                        pending.insert(rid, Pending::Announce);
                    }
                }
                // Ask connected peers that have not advertised our root again,
                // every few seconds (they may have just promoted it).
                if let Some(r) = root
                    && last_advert_poll.elapsed() > Duration::from_secs(3)
                    && fetch.as_ref().is_some_and(|f| !f.is_done())
                {
                    last_advert_poll = now;
                    for p in connected.iter().copied().collect::<Vec<_>>() {
                        if adverts.get(&p).is_none_or(|_| fetch.as_ref().is_some_and(|f| f.usable_peers() == 0)) {
                            let rid = swarm.behaviour_mut().state.send_request(&p, Request::GetAdvert);
                            pending.insert(rid, Pending::Advert(p));
                        }
                    }
                    let _ = r;
                }
                if let Some(f) = fetch.as_ref() {
                    let p = f.progress();
                    if let Some(pb) = &bar {
                        pb.set_length(p.bytes_needed.max(1));
                        pb.set_position(p.bytes_done);
                        pb.set_message(format!("fetch ({} peers)", f.usable_peers()));
                    } else if !cfg.quiet && last_log.elapsed() > Duration::from_secs(2) {
                        last_log = now;
                        let secs = start.elapsed().as_secs_f64();
                        eprintln!(
                            "fetch: {}/{} ({:.0}%), {} chunks, {}, {} peers usable, {} requests",
                            ui::bytes(p.bytes_done), ui::bytes(p.bytes_needed),
                            100.0 * p.bytes_done as f64 / p.bytes_needed.max(1) as f64,
                            p.chunks_done, ui::rate(p.bytes_done, secs), f.usable_peers(), p.requests_sent
                        );
                    }
                }
            }
            _ = sigterm.recv() => {
                log(&cfg, "SIGTERM: saving progress and stopping");
                if let Some(s) = server.as_mut() {
                    s.release_leases(true);
                }
                if let Some(w) = &writer_tx {
                    let _ = w.send(WriteJob::Flush);
                    // Give the writer a moment to commit.
                    if let Ok(Some(LoopMsg::Flushed(_))) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {}
                }
                return Ok(ExitCode::from(143));
            }
            _ = tokio::signal::ctrl_c() => {
                log(&cfg, "interrupted: saving progress and stopping");
                if let Some(s) = server.as_mut() {
                    s.release_leases(true);
                }
                if let Some(w) = &writer_tx {
                    let _ = w.send(WriteJob::Flush);
                }
                return Ok(ExitCode::from(130));
            }
        }
    }
}

fn kind(r: &Response) -> &'static str {
    match r {
        Response::Header { .. } => "header",
        Response::FilePiece { .. } => "file piece",
        Response::ChunkPiece { .. } => "chunk piece",
        Response::Chunks { .. } => "chunks",
        Response::Advert { .. } => "advert",
        Response::Ack => "ack",
        Response::Busy { .. } => "busy",
        Response::NotFound => "not found",
        Response::Refused { .. } => "refused",
    }
}

fn is_dialable(a: &Multiaddr) -> bool {
    !a.iter()
        .any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_unspecified()))
}

fn on_advert(
    adverts: &mut HashMap<PeerId, u64>,
    fetch: &mut Option<Fetch<PeerId>>,
    peer: PeerId,
    a: Advert,
    now: Instant,
) {
    if adverts.get(&peer).is_some_and(|s| *s > a.seq) {
        return; // an older advert arriving late
    }
    adverts.insert(peer, a.seq);
    if let Some(f) = fetch.as_mut()
        && a.entries.iter().any(|e| e.root == f.root())
    {
        f.add_peer(peer, now);
    }
}

pub fn limits(peer_mib: u64, global_mib: u64, concurrent: usize) -> ServeLimits {
    ServeLimits {
        peer_bytes_per_sec: peer_mib << 20,
        global_bytes_per_sec: global_mib << 20,
        max_concurrent_per_peer: concurrent,
    }
}
