//! The state fetch scheduler: a deterministic state machine with no I/O.
//!
//! It owns one sync of the state committed to by a trusted root: it decides
//! which peer to ask for what (header, manifest pieces, batches of chunks),
//! verifies the header and manifest pieces it is given against the root,
//! keeps every chunk in exactly one state (done, pending, in flight), keeps
//! each peer's window, rate and strikes, and attributes faults. The async
//! shell owns the sockets, the clock, the files and chunk verification.
//!
//! # Driving it
//!
//! 1. [`Fetch::new`] with the trusted root, a per-node seed and a config.
//! 2. Tell it about peers that advertise the root ([`Fetch::add_peer`]) and
//!    peers that went away ([`Fetch::remove_peer`]).
//! 3. Loop: take actions from [`Fetch::poll_action`] until `None`, perform
//!    them, feed results back with the `handle_*` methods, and call
//!    [`Fetch::handle_timeout`] at [`Fetch::poll_timeout`]. Time is always
//!    passed in; nothing here reads a clock.
//! 4. When [`Fetch::poll_action`] yields [`Action::ManifestReady`], the shell
//!    plans what it already has locally and calls [`Fetch::set_needed`] with
//!    the chunks still to fetch. Chunk responses are verified by the shell
//!    (it has the data) and reported per chunk with [`Fetch::handle_chunks`].
//! 5. [`Fetch::is_done`] when every needed chunk is in.
//!
//! # Fault attribution
//!
//! - A header, piece or chunk that fails verification bans the peer for this
//!   sync at once; its requests are re-issued elsewhere.
//! - `NotFound` drops the peer for this root (it does not have it, or no
//!   longer does): no penalty beyond that.
//! - `Busy` backs the peer off for the time it asked, halving its window.
//! - A timeout, a transport failure (a stream reset, an answer cut short, a
//!   closed connection) or a `Refused` answer is a strike: the peer's window
//!   halves and, until it delivers data again, it is on probation (one
//!   request at a time, ranked after peers without strikes, no endgame
//!   duplicates). [`Config::max_strikes`] strikes cool it off for
//!   [`Config::cool_off`], doubled with every further cool-off up to
//!   [`Config::max_cool_off`]; it comes back on probation, so one more
//!   failure cools it off again. Only delivered data forgives strikes (and
//!   one cool-off each time). The record outlives a disconnect, so
//!   reconnecting clears nothing.
//! - The root header is asked of up to three peers at once (topped up as
//!   peers appear); small requests (header, manifest pieces) still
//!   unanswered after eight times the quickest small answer seen (at least
//!   100 ms, at most [`Config::hedge_after`], which is also the wait before
//!   any answer) are also sent to another peer (four copies that are not
//!   overdue, eight in all); the first valid answer wins. Peers that delivered something valid rank
//!   before untried ones, so once the header is in, pieces go to a peer
//!   known to answer. A staller delays the manifest by a hedge interval,
//!   not by its timeout.
//! - Equal peers are ranked by a per-node pseudo-random order of their ids
//!   (seeded), never by the ids themselves: anyone can generate ids until
//!   one sorts first.
//! - Local failures are the shell's and never reach a peer's record.

use statesync_manifest::format::{
    CHUNK_PIECE_LEVEL, ChunkEntry, FILE_PIECE_LEVEL, FileEntry, Manifest, RootHeader,
};
use statesync_manifest::hash::Hash;
use statesync_manifest::rng::SplitMix64;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash as StdHash;
use std::time::{Duration, Instant};

/// Tunables; defaults follow the field notes (IC: 10 requests in flight per
/// peer, 10 s chunk timeout) adapted to batched requests.
#[derive(Clone, Debug)]
pub struct Config {
    /// Most bytes asked in one chunk request, also bounded by the peer's
    /// free window; a larger chunk is asked alone (protocol limit: 16 MiB).
    pub max_batch_bytes: u64,
    /// Most chunks in one request (protocol limit: 1024).
    pub max_batch_chunks: usize,
    /// Starting per-peer window of bytes in flight.
    pub initial_window: u64,
    /// Smallest per-peer window (bytes): halving on a strike or a `Busy`
    /// answer stops here.
    pub min_window: u64,
    /// Largest per-peer window (bytes): each response grows it by the bytes
    /// delivered (at most 4 MiB at a time) up to this.
    pub max_window: u64,
    /// Most chunk requests in flight to one peer (one while it is on
    /// probation). A header or manifest piece is asked only of a peer with
    /// fewer than two requests in flight (one on probation).
    pub max_requests_per_peer: usize,
    /// Fixed part of every request's timeout. The rest is three times what
    /// the peer needs, at its measured (else assumed) rate but at least
    /// 64 KiB/s, to send the bytes it has in flight, this request's
    /// included.
    pub base_timeout: Duration,
    /// Longest timeout of any request.
    pub max_timeout: Duration,
    /// Rate assumed for a peer before it has been measured (bytes/s), for
    /// its timeouts and its rank.
    pub assumed_rate: f64,
    /// Strikes (timeouts, transport failures, refusals) before a peer is
    /// cooled off.
    pub max_strikes: u32,
    /// First cool-off; doubled for each further one.
    pub cool_off: Duration,
    /// Longest cool-off.
    pub max_cool_off: Duration,
    /// A header or manifest piece unanswered this long is also asked of
    /// another peer.
    pub hedge_after: Duration,
    /// Copies of one chunk in flight at most during the endgame.
    pub endgame_copies: u8,
    /// Consecutive chunks kept together in the per-node random order (server
    /// read locality).
    pub order_run: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_batch_bytes: 4 << 20,
            max_batch_chunks: 1024,
            initial_window: 8 << 20,
            min_window: 1 << 20,
            max_window: 64 << 20,
            max_requests_per_peer: 8,
            base_timeout: Duration::from_secs(5),
            max_timeout: Duration::from_secs(60),
            assumed_rate: 4.0 * 1024.0 * 1024.0,
            max_strikes: 3,
            cool_off: Duration::from_secs(5),
            max_cool_off: Duration::from_secs(300),
            hedge_after: Duration::from_secs(1),
            endgame_copies: 2,
            order_run: 16,
        }
    }
}

/// What to ask a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ask {
    /// The root header (verified against the root; it gives the number of
    /// manifest pieces). Answer: [`Fetch::handle_header`].
    Header,
    /// Piece `j` of the manifest's file table, with its proof. Answer:
    /// [`Fetch::handle_file_piece`].
    FilePiece(u64),
    /// Piece `j` of the manifest's chunk table, with its proof. Answer:
    /// [`Fetch::handle_chunk_piece`].
    ChunkPiece(u64),
    /// These chunks, by index in the manifest's chunk table, in the order
    /// to ask for them. Answer: [`Fetch::handle_chunks`].
    Chunks(Vec<u64>),
}

/// What the shell must do next, from [`Fetch::poll_action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<P> {
    /// Send this request; report its outcome with the same `id`.
    Send {
        /// The peer to ask.
        peer: P,
        /// The request's id, unique in this fetch; quote it in the
        /// `handle_*` call that reports the outcome.
        id: u64,
        /// What to ask for.
        ask: Ask,
    },
    /// The manifest is complete and verified: plan local reuse, then call
    /// [`Fetch::set_needed`].
    ManifestReady,
    /// The peer is banned for this sync (it sent bad data): the shell may
    /// disconnect it and should not offer it again for this root.
    Banned {
        /// The banned peer.
        peer: P,
        /// What was wrong with what it sent, for logs.
        reason: String,
    },
}

/// Outcome of a request that did not carry the expected data, for
/// [`Fetch::handle_failure`]. `Io` and `Refused` are strikes (see the
/// module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The peer is overloaded: it is not asked again for `retry_after` and
    /// its window halves. Not a strike.
    Busy {
        /// The wait the peer asked for (clamped to 50 ms ..= 30 s).
        retry_after: Duration,
    },
    /// The peer does not have the root (or no longer has it): it is not
    /// asked again for this root, without further penalty.
    NotFound,
    /// Transport failure: the stream was reset or closed before a whole
    /// answer arrived, the connection dropped, the transport timed out.
    Io,
    /// The peer refused to answer (a strike).
    Refused,
    /// The peer sent something that is not a valid answer to the request:
    /// it is banned for this sync.
    Malformed(String),
}

/// A peer's record, visible for progress display and tests.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerStats {
    /// Whether it may be asked.
    pub state: PeerState,
    /// Bytes it may have in flight at once (its congestion window).
    pub window: u64,
    /// Bytes asked of it and not yet answered (header and pieces at an
    /// estimated size).
    pub inflight_bytes: u64,
    /// Requests to it not yet answered.
    pub inflight_requests: usize,
    /// Measured throughput, bytes/s (EWMA over responses of 64 KiB or
    /// more), if any.
    pub rate: Option<f64>,
    /// Bytes of valid answers it delivered (chunks and headers by their
    /// length, manifest pieces by an estimate).
    pub bytes_received: u64,
    /// Chunks it delivered that the shell verified (duplicates included).
    pub chunks_ok: u64,
    /// Requests to it that timed out.
    pub timeouts: u64,
    /// `Busy` answers.
    pub busy: u64,
    /// Transport failures and refusals.
    pub failures: u64,
    /// Requests sent to this peer.
    pub requests: u64,
    /// Strikes not yet forgiven by delivered data.
    pub strikes: u32,
    /// Times it was cooled off.
    pub cool_offs: u32,
}

/// Whether a peer may be asked, in this sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// May be asked (on probation while it has strikes).
    Active,
    /// Backed off (Busy or cool-off) until then.
    Waiting(Instant),
    /// Does not have the root.
    NotFound,
    /// Sent bad data: never asked again in this sync.
    Banned(String),
}

#[derive(Clone, Debug)]
struct Peer {
    stats: PeerStats,
    /// Rank among otherwise equal peers (per node, not the id's order).
    tiebreak: u64,
}

impl Peer {
    fn on_probation(&self) -> bool {
        self.stats.strikes > 0
    }
}

/// Misbehaviour records of peers that went away are kept (so reconnecting
/// clears nothing), up to this many.
const MAX_REMEMBERED: usize = 4096;

/// Requests for the same header or manifest piece in flight at most.
const MAX_SMALL_COPIES: u8 = 4;

/// Peers asked for the root header at once: it is a few dozen bytes and
/// any one honest answer will do, so a staller or two among the first
/// peers ranked do not delay the sync by [`Config::hedge_after`].
const HEADER_FANOUT: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Not needed (available locally) or already fetched.
    Done,
    Pending,
    /// In flight in this many requests.
    InFlight(u8),
}

#[derive(Clone, Debug)]
struct Inflight<P> {
    peer: P,
    ask: Ask,
    sent: Instant,
    deadline: Instant,
    bytes: u64,
    /// A small request that already made another peer be asked too (that
    /// request may in turn hedge, up to [`MAX_SMALL_COPIES`] in flight).
    hedged: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Header,
    Manifest,
    /// Manifest complete; waiting for the shell's plan.
    Planning,
    Chunks,
    Done,
    Failed(String),
}

/// Progress counters of one fetch ([`Fetch::progress`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    /// Chunks in the manifest (0 until it is known).
    pub chunks_total: u64,
    /// Chunks to fetch: those given to [`Fetch::set_needed`] and
    /// [`Fetch::add_needed`].
    pub chunks_needed: u64,
    /// Needed chunks fetched and verified so far.
    pub chunks_done: u64,
    /// Bytes of the needed chunks.
    pub bytes_needed: u64,
    /// Bytes of the needed chunks fetched and verified so far.
    pub bytes_done: u64,
    /// Requests of every kind sent, hedged copies included.
    pub requests_sent: u64,
    /// Verified chunks that arrived after another copy (endgame
    /// duplicates).
    pub duplicate_chunks: u64,
    /// Chunk responses rejected for a chunk that failed verification (the
    /// first bad chunk of each; its sender is banned).
    pub rejected_chunks: u64,
}

/// The state fetch scheduler for one trusted root; see the module
/// documentation for the calling order. `P` identifies a peer.
pub struct Fetch<P> {
    root: Hash,
    cfg: Config,
    seed: u64,
    phase: Phase,
    header: Option<RootHeader>,
    file_pieces: BTreeMap<u64, Vec<FileEntry>>,
    chunk_pieces: BTreeMap<u64, Vec<ChunkEntry>>,
    /// Pieces not yet received: (is_file, index).
    pieces_wanted: VecDeque<(bool, u64)>,
    /// Requests in flight per piece (more than one when hedged).
    pieces_inflight: HashMap<(bool, u64), u8>,
    manifest: Option<Manifest>,
    chunks: Vec<Chunk>,
    /// Chunk lengths (from the manifest).
    lens: Vec<u32>,
    /// Fetch order (per-node permutation); pending chunks are taken from the front.
    queue: VecDeque<u64>,
    /// Chunks in flight -> peers asked.
    holders: HashMap<u64, Vec<P>>,
    peers: BTreeMap<P, Peer>,
    inflight: BTreeMap<u64, Inflight<P>>,
    next_id: u64,
    actions: VecDeque<Action<P>>,
    progress: Progress,
    /// Header requests in flight (more than one when hedged).
    header_inflight: u8,
    /// The quickest answer to a small request so far: hedging waits a
    /// multiple of it (a peer far slower than the quickest is stalling).
    fastest_small: Option<Duration>,
    /// The lowest round-trip time measured to any peer (pings).
    min_rtt: Option<Duration>,
    /// Strikes and cool-offs of peers that disconnected.
    remembered: HashMap<P, (u32, u32)>,
}

const ALPHA: f64 = 0.3;

impl<P: Clone + Eq + Ord + StdHash + Debug> Fetch<P> {
    /// A fetch of the state committed to by `root`, starting with its
    /// header. `seed` (per node) fixes the order in which chunks are asked
    /// for and the rank of otherwise equal peers.
    pub fn new(root: Hash, seed: u64, cfg: Config) -> Fetch<P> {
        Fetch {
            root,
            cfg,
            seed,
            phase: Phase::Header,
            header: None,
            file_pieces: BTreeMap::new(),
            chunk_pieces: BTreeMap::new(),
            pieces_wanted: VecDeque::new(),
            pieces_inflight: HashMap::new(),
            manifest: None,
            chunks: Vec::new(),
            lens: Vec::new(),
            queue: VecDeque::new(),
            holders: HashMap::new(),
            peers: BTreeMap::new(),
            inflight: BTreeMap::new(),
            next_id: 1,
            actions: VecDeque::new(),
            progress: Progress::default(),
            header_inflight: 0,
            fastest_small: None,
            min_rtt: None,
            remembered: HashMap::new(),
        }
    }

    /// Starts from an already verified manifest (resume, or a manifest fetched
    /// by an earlier run): goes straight to planning.
    pub fn with_manifest(root: Hash, seed: u64, cfg: Config, manifest: Manifest) -> Fetch<P> {
        let mut f = Fetch::new(root, seed, cfg);
        f.header = Some(*manifest.header());
        f.install_manifest(manifest);
        f
    }

    /// The trusted root being fetched.
    pub fn root(&self) -> Hash {
        self.root
    }

    /// The verified manifest, from [`Action::ManifestReady`] on.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    /// Progress counters.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The record of every peer added and not removed, in peer order;
    /// banned and not-found peers stay listed after they went away.
    pub fn peer_stats(&self) -> impl Iterator<Item = (&P, &PeerStats)> {
        self.peers.iter().map(|(p, s)| (p, &s.stats))
    }

    /// Whether every needed chunk is in. False before [`Fetch::set_needed`]
    /// and after a failure ([`Fetch::failure`]); true again only once
    /// chunks given to [`Fetch::add_needed`] are in too.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Peers that may still be asked (active or waiting).
    pub fn usable_peers(&self) -> usize {
        self.peers
            .values()
            .filter(|p| matches!(p.stats.state, PeerState::Active | PeerState::Waiting(_)))
            .count()
    }

    /// A round-trip time measured to `peer` (a ping): before any small
    /// answer arrived, hedging waits a multiple of the lowest one.
    pub fn handle_rtt(&mut self, _peer: &P, rtt: Duration) {
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
    }

    /// A peer that serves the root is connected: requests go to it from
    /// now on. A peer already known (banned or not found in this sync
    /// included) stays as it is; one that went away with strikes or
    /// cool-offs gets them back.
    pub fn add_peer(&mut self, peer: P, now: Instant) {
        if !self.peers.contains_key(&peer) {
            let (strikes, cool_offs) = self.remembered.remove(&peer).unwrap_or((0, 0));
            let tiebreak = self.tiebreak(&peer);
            self.peers.insert(
                peer,
                Peer {
                    stats: PeerStats {
                        state: PeerState::Active,
                        window: self.cfg.initial_window,
                        inflight_bytes: 0,
                        inflight_requests: 0,
                        rate: None,
                        bytes_received: 0,
                        chunks_ok: 0,
                        timeouts: 0,
                        busy: 0,
                        failures: 0,
                        requests: 0,
                        strikes,
                        cool_offs,
                    },
                    tiebreak,
                },
            );
        }
        self.schedule(now);
    }

    /// A per-node pseudo-random rank for `peer` (splitmix64 of the seed and
    /// the peer's hash).
    fn tiebreak(&self, peer: &P) -> u64 {
        use std::hash::Hasher;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        peer.hash(&mut h);
        statesync_manifest::rng::mix(h.finish() ^ self.seed.rotate_left(29) ^ 0x7469_6562_7265_616b)
    }

    /// The peer disconnected: its requests go back to the queue (no penalty).
    /// A banned or not-found peer keeps its record, and the strikes and
    /// cool-offs of any other are remembered (up to 4096 peers), so
    /// reconnecting clears nothing.
    pub fn remove_peer(&mut self, peer: &P, now: Instant) {
        self.cancel_peer(peer);
        if self
            .peers
            .get(peer)
            .is_some_and(|p| matches!(p.stats.state, PeerState::Active | PeerState::Waiting(_)))
            && let Some(p) = self.peers.remove(peer)
            && (p.stats.strikes > 0 || p.stats.cool_offs > 0)
            && self.remembered.len() < MAX_REMEMBERED
        {
            self.remembered
                .insert(peer.clone(), (p.stats.strikes, p.stats.cool_offs));
        }
        self.schedule(now);
    }

    /// The next action for the shell, in order; `None` until a `handle_*`
    /// call, [`Fetch::add_peer`] or a timeout creates more.
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    /// The earliest deadline: a request timeout, a small request to hedge,
    /// or the end of a back-off.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let req = self
            .inflight
            .values()
            .map(|r| match self.hedge_at(r) {
                Some(h) => h.min(r.deadline),
                None => r.deadline,
            })
            .min();
        let wait = self
            .peers
            .values()
            .filter_map(|p| match p.stats.state {
                PeerState::Waiting(t) => Some(t),
                _ => None,
            })
            .min();
        match (req, wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Call at [`Fetch::poll_timeout`] (earlier is harmless): expires
    /// requests past their deadline (a strike each), also asks another peer
    /// for small requests unanswered for [`Config::hedge_after`], ends
    /// back-offs that are over, and schedules.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(r) = self.release(id) {
                if let Some(p) = self.peers.get_mut(&r.peer) {
                    p.stats.timeouts += 1;
                }
                self.strike(&r.peer, now);
            }
        }
        // Small requests waiting too long: ask another peer as well.
        let hedge: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, r)| self.hedge_at(r).is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in hedge {
            self.hedge(id, now);
        }
        for p in self.peers.values_mut() {
            if let PeerState::Waiting(t) = p.stats.state
                && t <= now
            {
                // Back on probation: strikes are kept, so one more failure
                // cools it off again (for longer).
                p.stats.state = PeerState::Active;
            }
        }
        self.schedule(now);
    }

    /// When a small request should be hedged, if it is one that may be.
    fn hedge_at(&self, r: &Inflight<P>) -> Option<Instant> {
        let small = matches!(r.ask, Ask::Header | Ask::FilePiece(_) | Ask::ChunkPiece(_));
        (small && !r.hedged).then(|| r.sent + self.hedge_delay())
    }

    /// How long a small request waits before it is hedged: eight times the
    /// quickest small answer seen, or before any, the lowest round-trip
    /// time measured (at least 100 ms), at most [`Config::hedge_after`]
    /// (the wait when nothing was measured).
    fn hedge_delay(&self) -> Duration {
        match self.fastest_small.or(self.min_rtt) {
            Some(f) => (f * 8).clamp(
                Duration::from_millis(100).min(self.cfg.hedge_after),
                self.cfg.hedge_after,
            ),
            None => self.cfg.hedge_after,
        }
    }

    /// Sends request `id`'s ask to the best other peer that can take it.
    fn hedge(&mut self, id: u64, now: Instant) {
        let Some(r) = self.inflight.get_mut(&id) else {
            return;
        };
        r.hedged = true;
        let (from, ask, bytes) = (r.peer.clone(), r.ask.clone(), r.bytes);
        let asked: HashSet<P> = self
            .inflight
            .values()
            .filter(|x| x.ask == ask)
            .map(|x| x.peer.clone())
            .collect();
        let Some(peer) = self
            .ranked_peers()
            .into_iter()
            .find(|p| *p != from && !asked.contains(p) && self.piece_slots(p) > 0)
        else {
            return;
        };
        // Copies not yet overdue (not hedged themselves) are capped at
        // MAX_SMALL_COPIES, all copies at twice that: an overdue copy is
        // likely at a staller, and must not keep the ask from the peers
        // ranked after it.
        let fresh = self
            .inflight
            .values()
            .filter(|x| x.ask == ask && !x.hedged)
            .count();
        let count = match &ask {
            Ask::Header => &mut self.header_inflight,
            Ask::FilePiece(j) => self.pieces_inflight.entry((true, *j)).or_default(),
            Ask::ChunkPiece(j) => self.pieces_inflight.entry((false, *j)).or_default(),
            Ask::Chunks(_) => return,
        };
        if fresh >= usize::from(MAX_SMALL_COPIES) || *count >= 2 * MAX_SMALL_COPIES {
            return;
        }
        *count += 1;
        self.send(peer, ask, bytes, now);
    }

    /// Small requests `peer` may take now (two at a time, one on probation).
    fn piece_slots(&self, peer: &P) -> usize {
        self.peers.get(peer).map_or(0, |x| {
            let max = if x.on_probation() { 1 } else { 2 };
            max - x.stats.inflight_requests.min(max)
        })
    }

    /// A timeout, transport failure or refusal by `peer`: halve its window;
    /// cool it off at [`Config::max_strikes`].
    fn strike(&mut self, peer: &P, now: Instant) {
        let cfg = &self.cfg;
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        p.stats.strikes += 1;
        p.stats.window = (p.stats.window / 2).max(cfg.min_window);
        if p.stats.strikes >= cfg.max_strikes && p.stats.state == PeerState::Active {
            p.stats.cool_offs += 1;
            let d = cfg
                .cool_off
                .saturating_mul(1u32 << (p.stats.cool_offs - 1).min(16))
                .min(cfg.max_cool_off);
            p.stats.state = PeerState::Waiting(now + d);
            // What it still holds is unlikely to come: ask elsewhere now.
            self.cancel_peer(peer);
        }
    }

    /// Request `id` ended without the data asked for; [`Failure`] says what
    /// each outcome costs the peer. Ids not in flight (answered, timed out,
    /// cancelled) are ignored.
    pub fn handle_failure(&mut self, id: u64, failure: Failure, now: Instant) {
        let Some(r) = self.release(id) else {
            return;
        };
        let min_window = self.cfg.min_window;
        match failure {
            Failure::Busy { retry_after } => {
                if let Some(p) = self.peers.get_mut(&r.peer) {
                    p.stats.busy += 1;
                    p.stats.window = (p.stats.window / 2).max(min_window);
                    let retry =
                        retry_after.clamp(Duration::from_millis(50), Duration::from_secs(30));
                    p.stats.state = PeerState::Waiting(now + retry);
                }
            }
            Failure::NotFound => {
                if let Some(p) = self.peers.get_mut(&r.peer) {
                    p.stats.state = PeerState::NotFound;
                }
                self.cancel_peer(&r.peer);
            }
            Failure::Io | Failure::Refused => {
                if let Some(p) = self.peers.get_mut(&r.peer) {
                    p.stats.failures += 1;
                }
                self.strike(&r.peer, now);
            }
            Failure::Malformed(why) => self.ban(&r.peer, format!("malformed response: {why}")),
        }
        self.schedule(now);
    }

    /// A header arrived for request `id`. It is verified against the root;
    /// one that does not verify bans the peer. Once a header is known,
    /// further ones are ignored. Ids not in flight are ignored.
    pub fn handle_header(&mut self, id: u64, bytes: &[u8], now: Instant) {
        let Some(r) = self.release(id) else {
            return;
        };
        if self.header.is_some() {
            self.schedule(now);
            return;
        }
        match RootHeader::decode_verified(bytes, &self.root) {
            Ok(h) => {
                self.credit(&r, bytes.len() as u64, now);
                self.header = Some(h);
                for j in 0..h.file_piece_count() {
                    self.pieces_wanted.push_back((true, j));
                }
                for j in 0..h.chunk_piece_count() {
                    self.pieces_wanted.push_back((false, j));
                }
                self.phase = Phase::Manifest;
                self.maybe_assemble();
            }
            Err(e) => self.ban(&r.peer, format!("header: {e}")),
        }
        self.schedule(now);
    }

    /// Piece `index` of the file table arrived for request `id`, with its
    /// proof. A piece other than the one asked, or one that does not verify
    /// against the header, bans the peer. An answer to a request that was
    /// not for a file piece, or an id not in flight, is ignored.
    pub fn handle_file_piece(
        &mut self,
        id: u64,
        index: u64,
        entries: Vec<FileEntry>,
        proof: &[Hash],
        now: Instant,
    ) {
        let Some(r) = self.release(id) else {
            return;
        };
        let (Some(h), Ask::FilePiece(asked)) = (self.header, &r.ask) else {
            return;
        };
        if *asked != index {
            self.ban(
                &r.peer,
                format!("answered file piece {index} to a request for {asked}"),
            );
        } else if let Err(e) = h.verify_file_piece(index, &entries, proof) {
            self.ban(&r.peer, e.to_string());
        } else {
            self.credit(&r, entries.len() as u64 * 64, now);
            self.file_pieces.insert(index, entries);
            self.maybe_assemble();
        }
        self.schedule(now);
    }

    /// Piece `index` of the chunk table arrived for request `id`, with its
    /// proof. A piece other than the one asked, or one that does not verify
    /// against the header, bans the peer. An answer to a request that was
    /// not for a chunk piece, or an id not in flight, is ignored.
    pub fn handle_chunk_piece(
        &mut self,
        id: u64,
        index: u64,
        entries: Vec<ChunkEntry>,
        proof: &[Hash],
        now: Instant,
    ) {
        let Some(r) = self.release(id) else {
            return;
        };
        let (Some(h), Ask::ChunkPiece(asked)) = (self.header, &r.ask) else {
            return;
        };
        if *asked != index {
            self.ban(
                &r.peer,
                format!("answered chunk piece {index} to a request for {asked}"),
            );
        } else if let Err(e) = h.verify_chunk_piece(index, &entries, proof) {
            self.ban(&r.peer, e.to_string());
        } else {
            self.credit(&r, entries.len() as u64 * 48, now);
            self.chunk_pieces.insert(index, entries);
            self.maybe_assemble();
        }
        self.schedule(now);
    }

    /// The shell's plan: these chunks must be fetched; all others are
    /// available locally (or were fetched by an earlier run). Call it once,
    /// after [`Action::ManifestReady`]: before the manifest there is no
    /// chunk, and the fetch would count as done. Indices beyond the chunk
    /// table are ignored.
    pub fn set_needed(&mut self, needed: impl IntoIterator<Item = u64>, now: Instant) {
        let n = self.chunks.len();
        for c in &mut self.chunks {
            *c = Chunk::Done;
        }
        let mut list: Vec<u64> = needed.into_iter().filter(|&i| (i as usize) < n).collect();
        list.sort_unstable();
        list.dedup();
        for &i in &list {
            self.chunks[i as usize] = Chunk::Pending;
        }
        self.progress.chunks_needed = list.len() as u64;
        self.progress.bytes_needed = list.iter().map(|&i| u64::from(self.lens[i as usize])).sum();
        self.progress.chunks_done = 0;
        self.progress.bytes_done = 0;
        self.queue = self.node_order(list);
        self.phase = Phase::Chunks;
        self.check_done();
        self.schedule(now);
    }

    /// Chunks to fetch after all, on top of those given to
    /// [`Fetch::set_needed`]: local copies, run while the fetch is under
    /// way, whose source did not match. A fetch that had finished goes back
    /// to fetching. Chunks already pending or in flight, and calls before
    /// `set_needed`, change nothing; a chunk given here is fetched even if
    /// it was fetched before (the caller names chunks it did not get).
    pub fn add_needed(&mut self, more: impl IntoIterator<Item = u64>, now: Instant) {
        if !matches!(self.phase, Phase::Chunks | Phase::Done) {
            return;
        }
        let n = self.chunks.len();
        let mut list: Vec<u64> = more
            .into_iter()
            .filter(|&i| (i as usize) < n && self.chunks[i as usize] == Chunk::Done)
            .collect();
        list.sort_unstable();
        list.dedup();
        if list.is_empty() {
            return;
        }
        for &i in &list {
            self.chunks[i as usize] = Chunk::Pending;
        }
        self.progress.chunks_needed += list.len() as u64;
        self.progress.bytes_needed += list
            .iter()
            .map(|&i| u64::from(self.lens[i as usize]))
            .sum::<u64>();
        let order = self.node_order(list);
        self.queue.extend(order);
        self.phase = Phase::Chunks;
        self.schedule(now);
    }

    /// Per-chunk outcome of chunk request `id`: `Ok(())` for a verified
    /// chunk (already written by the shell), `Err(reason)` for one that
    /// failed verification. Requested chunks absent from `results` were not
    /// sent (byte budget) and go back to the queue without penalty. A chunk
    /// that failed, or one that was not requested, bans the peer; the
    /// chunks before it in `results` still count. Ids not in flight are
    /// ignored.
    pub fn handle_chunks(&mut self, id: u64, results: &[(u64, Result<(), String>)], now: Instant) {
        let Some(r) = self.release(id) else {
            return;
        };
        let Ask::Chunks(asked) = &r.ask else {
            return;
        };
        let asked: HashSet<u64> = asked.iter().copied().collect();
        let mut bytes = 0u64;
        let mut bad = None;
        for (i, res) in results {
            if !asked.contains(i) {
                bad = Some(format!("sent chunk {i}, which was not requested"));
                break;
            }
            match res {
                Ok(()) => {
                    let len = u64::from(self.lens[*i as usize]);
                    bytes += len;
                    match self.chunks[*i as usize] {
                        Chunk::Done => self.progress.duplicate_chunks += 1,
                        _ => {
                            self.chunks[*i as usize] = Chunk::Done;
                            self.progress.chunks_done += 1;
                            self.progress.bytes_done += len;
                            self.holders.remove(i);
                        }
                    }
                }
                Err(why) => {
                    self.progress.rejected_chunks += 1;
                    bad = Some(format!("chunk {i}: {why}"));
                    break;
                }
            }
        }
        if let Some(p) = self.peers.get_mut(&r.peer) {
            p.stats.chunks_ok += results.iter().filter(|(_, r)| r.is_ok()).count() as u64;
        }
        match bad {
            Some(why) => self.ban(&r.peer, why),
            None => self.credit(&r, bytes, now),
        }
        self.check_done();
        self.schedule(now);
    }

    /// Whether chunk `i` still needs fetching.
    pub fn is_needed(&self, i: u64) -> bool {
        matches!(
            self.chunks.get(i as usize),
            Some(Chunk::Pending | Chunk::InFlight(_))
        )
    }

    // ---- internals ----

    fn node_order(&self, list: Vec<u64>) -> VecDeque<u64> {
        // Runs of consecutive chunks, shuffled per node (Fisher-Yates with a
        // seeded splitmix64): different fetchers ask different servers for
        // different parts, and each request still reads sequentially.
        let run = self.cfg.order_run.max(1);
        let mut runs: Vec<&[u64]> = list.chunks(run).collect();
        SplitMix64::new(self.seed ^ 0x0ddc_0ffe).shuffle(&mut runs);
        runs.into_iter().flatten().copied().collect()
    }

    fn maybe_assemble(&mut self) {
        let Some(h) = self.header else { return };
        if self.phase != Phase::Manifest
            || (self.file_pieces.len() as u64) < h.file_piece_count()
            || (self.chunk_pieces.len() as u64) < h.chunk_piece_count()
        {
            return;
        }
        let files: Vec<FileEntry> = std::mem::take(&mut self.file_pieces)
            .into_values()
            .flatten()
            .collect();
        let chunks: Vec<ChunkEntry> = std::mem::take(&mut self.chunk_pieces)
            .into_values()
            .flatten()
            .collect();
        match Manifest::new(h.chunk_size, files, chunks) {
            Ok(m) if m.root() == self.root => self.install_manifest(m),
            // Every piece was proven against the root, so the signer
            // committed to an invalid manifest: no peer is at fault and
            // there is nothing to fetch.
            Ok(_) => self.fail("the assembled manifest does not hash to the root".into()),
            Err(e) => self.fail(format!(
                "the manifest committed to by the root is invalid: {e}"
            )),
        }
    }

    fn fail(&mut self, why: String) {
        self.phase = Phase::Failed(why);
        let ids: Vec<u64> = self.inflight.keys().copied().collect();
        for id in ids {
            self.release(id);
        }
    }

    /// Why the sync cannot complete (not a peer's fault), if so.
    pub fn failure(&self) -> Option<&str> {
        match &self.phase {
            Phase::Failed(w) => Some(w),
            _ => None,
        }
    }

    fn install_manifest(&mut self, m: Manifest) {
        self.lens = m.chunks().iter().map(|c| c.len).collect();
        self.chunks = vec![Chunk::Pending; self.lens.len()];
        self.progress.chunks_total = self.lens.len() as u64;
        self.manifest = Some(m);
        self.pieces_wanted.clear();
        self.phase = Phase::Planning;
        self.actions.push_back(Action::ManifestReady);
    }

    fn check_done(&mut self) {
        if self.phase == Phase::Chunks && self.chunks.iter().all(|c| *c == Chunk::Done) {
            self.phase = Phase::Done;
            // Outstanding duplicates are no longer needed.
            let ids: Vec<u64> = self.inflight.keys().copied().collect();
            for id in ids {
                self.release(id);
            }
        }
    }

    /// Removes a request from the in-flight set, returning its chunks or
    /// piece to the queue.
    fn release(&mut self, id: u64) -> Option<Inflight<P>> {
        let r = self.inflight.remove(&id)?;
        if let Some(p) = self.peers.get_mut(&r.peer) {
            p.stats.inflight_bytes = p.stats.inflight_bytes.saturating_sub(r.bytes);
            p.stats.inflight_requests = p.stats.inflight_requests.saturating_sub(1);
        }
        match &r.ask {
            Ask::Header => self.header_inflight = self.header_inflight.saturating_sub(1),
            Ask::FilePiece(j) => self.release_piece(true, *j),
            Ask::ChunkPiece(j) => self.release_piece(false, *j),
            Ask::Chunks(list) => {
                for &i in list {
                    if let Some(h) = self.holders.get_mut(&i) {
                        h.retain(|p| p != &r.peer);
                    }
                    if let Some(c) = self.chunks.get_mut(i as usize) {
                        *c = match *c {
                            Chunk::InFlight(n) if n > 1 => Chunk::InFlight(n - 1),
                            Chunk::InFlight(_) => {
                                // Back to the front: these were next in line.
                                self.queue.push_front(i);
                                Chunk::Pending
                            }
                            other => other,
                        };
                    }
                }
            }
        }
        Some(r)
    }

    /// One request for a piece ended; when none is left and the piece is
    /// not (about to be) stored, it goes back to the front of the queue.
    /// The scheduler skips queued pieces that arrived meanwhile.
    fn release_piece(&mut self, is_file: bool, j: u64) {
        let key = (is_file, j);
        let left = match self.pieces_inflight.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                *n
            }
            _ => {
                self.pieces_inflight.remove(&key);
                0
            }
        };
        if left == 0 && self.phase == Phase::Manifest && !self.pieces_wanted.contains(&key) {
            self.pieces_wanted.push_front(key);
        }
    }

    fn have_piece(&self, (is_file, j): (bool, u64)) -> bool {
        if is_file {
            self.file_pieces.contains_key(&j)
        } else {
            self.chunk_pieces.contains_key(&j)
        }
    }

    fn cancel_peer(&mut self, peer: &P) {
        let ids: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, r)| &r.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.release(id);
        }
    }

    fn ban(&mut self, peer: &P, reason: String) {
        if let Some(p) = self.peers.get_mut(peer) {
            if matches!(p.stats.state, PeerState::Banned(_)) {
                return;
            }
            p.stats.state = PeerState::Banned(reason.clone());
        }
        self.cancel_peer(peer);
        self.actions.push_back(Action::Banned {
            peer: peer.clone(),
            reason,
        });
    }

    /// Measures the peer after a successful response and grows its window.
    fn credit(&mut self, r: &Inflight<P>, bytes: u64, now: Instant) {
        let max_window = self.cfg.max_window;
        if matches!(r.ask, Ask::Header | Ask::FilePiece(_) | Ask::ChunkPiece(_)) {
            let took = now.saturating_duration_since(r.sent);
            self.fastest_small = Some(self.fastest_small.map_or(took, |f| f.min(took)));
        }
        if let Some(p) = self.peers.get_mut(&r.peer) {
            // Delivered data forgives strikes, and one cool-off.
            p.stats.strikes = 0;
            p.stats.cool_offs = p.stats.cool_offs.saturating_sub(1);
            p.stats.bytes_received += bytes;
            let secs = now
                .saturating_duration_since(r.sent)
                .as_secs_f64()
                .max(1e-4);
            if bytes >= 64 * 1024 {
                let rate = bytes as f64 / secs;
                p.stats.rate = Some(match p.stats.rate {
                    Some(old) => old * (1.0 - ALPHA) + rate * ALPHA,
                    None => rate,
                });
            }
            // Additive increase by what was delivered, up to the cap.
            if bytes > 0 {
                p.stats.window = (p.stats.window + bytes.min(4 << 20)).min(max_window);
            }
        }
    }

    fn timeout_for(&self, peer: &Peer, bytes: u64) -> Duration {
        let rate = peer
            .stats
            .rate
            .unwrap_or(self.cfg.assumed_rate)
            .max(64.0 * 1024.0);
        // Everything queued at this peer must drain before our bytes arrive.
        let queued = (peer.stats.inflight_bytes + bytes) as f64;
        let t = self.cfg.base_timeout + Duration::from_secs_f64(3.0 * queued / rate);
        t.min(self.cfg.max_timeout)
    }

    fn send(&mut self, peer: P, ask: Ask, bytes: u64, now: Instant) -> Option<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let p = self.peers.get(&peer)?;
        let deadline = now + self.timeout_for(p, bytes);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stats.inflight_bytes += bytes;
            p.stats.inflight_requests += 1;
            p.stats.requests += 1;
        }
        self.progress.requests_sent += 1;
        self.inflight.insert(
            id,
            Inflight {
                peer: peer.clone(),
                ask: ask.clone(),
                sent: now,
                deadline,
                bytes,
                hedged: false,
            },
        );
        self.actions.push_back(Action::Send { peer, id, ask });
        Some(id)
    }

    /// Active peers: those without strikes first, then fastest first
    /// (unmeasured ones in the middle), then in this node's own order.
    fn ranked_peers(&self) -> Vec<P> {
        let mut v: Vec<(&P, u32, bool, f64, u64)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.stats.state == PeerState::Active)
            .map(|(k, p)| {
                let rate = p.stats.rate.unwrap_or(self.cfg.assumed_rate);
                (
                    k,
                    p.stats.strikes,
                    p.stats.bytes_received > 0,
                    rate,
                    p.tiebreak,
                )
            })
            .collect();
        // Fewest strikes; then peers that have delivered something valid
        // (the header, a piece) before untried ones; then the faster.
        v.sort_by(|a, b| {
            a.1.cmp(&b.1)
                .then_with(|| b.2.cmp(&a.2))
                .then_with(|| b.3.total_cmp(&a.3))
                .then_with(|| a.4.cmp(&b.4))
                .then_with(|| a.0.cmp(b.0))
        });
        v.into_iter().map(|(k, ..)| k.clone()).collect()
    }

    fn schedule(&mut self, now: Instant) {
        match self.phase {
            Phase::Header => {
                // Up to HEADER_FANOUT copies, topped up as peers appear.
                let asked: HashSet<P> = self
                    .inflight
                    .values()
                    .filter(|x| x.ask == Ask::Header)
                    .map(|x| x.peer.clone())
                    .collect();
                let room = usize::from(HEADER_FANOUT.saturating_sub(self.header_inflight));
                let peers: Vec<P> = self
                    .ranked_peers()
                    .into_iter()
                    .filter(|p| !asked.contains(p) && self.piece_slots(p) > 0)
                    .take(room)
                    .collect();
                for peer in peers {
                    self.header_inflight += 1;
                    self.send(peer, Ask::Header, 128, now);
                }
            }
            Phase::Manifest => {
                // Pieces spread over peers, a few at a time each.
                while let Some(&(is_file, j)) = self.pieces_wanted.front() {
                    if self.have_piece((is_file, j))
                        || self.pieces_inflight.contains_key(&(is_file, j))
                    {
                        self.pieces_wanted.pop_front();
                        continue;
                    }
                    // Ranked order, the least loaded first (a stable
                    // minimum keeps the ranking among equals).
                    let peer = self
                        .ranked_peers()
                        .into_iter()
                        .filter(|p| self.piece_slots(p) > 0)
                        .min_by_key(|p| {
                            self.peers
                                .get(p)
                                .map(|x| x.stats.inflight_requests)
                                .unwrap_or(0)
                        });
                    let Some(peer) = peer else { break };
                    self.pieces_wanted.pop_front();
                    self.pieces_inflight.insert((is_file, j), 1);
                    let (ask, bytes) = if is_file {
                        (Ask::FilePiece(j), (1u64 << FILE_PIECE_LEVEL) * 100)
                    } else {
                        (Ask::ChunkPiece(j), (1u64 << CHUNK_PIECE_LEVEL) * 48)
                    };
                    self.send(peer, ask, bytes, now);
                }
            }
            Phase::Planning | Phase::Done | Phase::Failed(_) => {}
            Phase::Chunks => self.schedule_chunks(now),
        }
    }

    fn schedule_chunks(&mut self, now: Instant) {
        let peers = self.ranked_peers();
        let mut progress = true;
        // Round-robin over peers in rank order so one fast peer does not take
        // every pending chunk in a single pass.
        while progress {
            progress = false;
            for peer in &peers {
                let Some(p) = self.peers.get(peer) else {
                    continue;
                };
                let max_requests = if p.on_probation() {
                    1
                } else {
                    self.cfg.max_requests_per_peer
                };
                if p.stats.inflight_requests >= max_requests
                    || p.stats.inflight_bytes >= p.stats.window
                {
                    continue;
                }
                let budget = (p.stats.window - p.stats.inflight_bytes)
                    .min(self.cfg.max_batch_bytes)
                    .max(1);
                let batch = self.take_batch(peer, budget);
                if batch.is_empty() {
                    continue;
                }
                let bytes: u64 = batch
                    .iter()
                    .map(|&i| u64::from(self.lens[i as usize]))
                    .sum();
                for &i in &batch {
                    let c = &mut self.chunks[i as usize];
                    *c = match *c {
                        Chunk::InFlight(n) => Chunk::InFlight(n + 1),
                        _ => Chunk::InFlight(1),
                    };
                    self.holders.entry(i).or_default().push(peer.clone());
                }
                self.send(peer.clone(), Ask::Chunks(batch), bytes, now);
                progress = true;
            }
        }
    }

    /// Next chunks for `peer`: pending ones in node order; in the endgame
    /// (nothing pending), chunks in flight elsewhere with fewer than the
    /// allowed copies.
    fn take_batch(&mut self, peer: &P, budget: u64) -> Vec<u64> {
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        while let Some(&i) = self.queue.front() {
            if self.chunks[i as usize] != Chunk::Pending {
                self.queue.pop_front();
                continue;
            }
            let len = u64::from(self.lens[i as usize]);
            if !batch.is_empty()
                && (bytes + len > budget || batch.len() >= self.cfg.max_batch_chunks)
            {
                break;
            }
            self.queue.pop_front();
            // Mark now so a second pass over the queue does not take it again.
            self.chunks[i as usize] = Chunk::InFlight(0);
            batch.push(i);
            bytes += len;
        }
        if !batch.is_empty() {
            return batch;
        }
        // Endgame: duplicates of chunks in flight elsewhere, by peers in
        // good standing only; copies held by peers on probation do not
        // count against the limit (they may never come).
        if self.peers.get(peer).is_none_or(|p| p.on_probation()) {
            return batch;
        }
        let limit = usize::from(self.cfg.endgame_copies);
        let good = |p: &P| self.peers.get(p).is_some_and(|x| !x.on_probation());
        let mut candidates: Vec<u64> = self
            .holders
            .iter()
            .filter(|(i, h)| {
                !h.contains(peer)
                    && matches!(self.chunks[**i as usize], Chunk::InFlight(_))
                    && h.iter().filter(|p| good(p)).count() < limit
            })
            .map(|(i, _)| *i)
            .collect();
        candidates.sort_unstable();
        for i in candidates {
            let len = u64::from(self.lens[i as usize]);
            if !batch.is_empty()
                && (bytes + len > budget || batch.len() >= self.cfg.max_batch_chunks)
            {
                break;
            }
            batch.push(i);
            bytes += len;
        }
        batch
    }
}
