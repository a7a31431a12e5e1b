//! Block range sync: forward (towards the head) and backward (backfill
//! down to a horizon), as one sans-IO state machine.
//!
//! It owns the batches of one sync, the requests for them, the order in
//! which they are handed out for processing, and the score of every peer;
//! the shell fetches, verifies signatures and executes.
//!
//! The range to cover is cut into batches of `batch_size` heights. Each
//! batch is always in exactly one [`BatchState`]:
//!
//! ```text
//! AwaitingDownload -> Downloading -> AwaitingProcessing -> Processing -> AwaitingValidation (forward)
//!        ^                 |  (timeout, empty, bad, peer gone)   |  (bad block: re-download elsewhere)
//!        +-----------------+-------------------------------------+
//! ```
//!
//! * At most `max_buffered` batches are between AwaitingDownload and
//!   Processing (backpressure: downloads never run ahead of execution by
//!   more than the window). Batches awaiting validation are not counted.
//! * A reorder buffer: batches complete in any order, but exactly one batch
//!   is handed out for processing at a time, the next in order (ascending
//!   forward, descending backward).
//! * Every request has an id and a deadline; a response whose id is not the
//!   batch's current request is stale and dropped.
//! * A short answer that is a valid prefix of the range (a size budget on
//!   the server) is kept and the rest re-queued as its own batch, without
//!   penalty; batches in flight are never replaced or dropped under a
//!   changing target (their request slots would leak).
//! * Peer scores with fault attribution: bad data -1000 (banned for a
//!   while), empty answers -100 (and the peer's claimed range is lowered so
//!   we stop asking it), timeouts and transport errors -50, success +10; a
//!   local processing failure penalises nobody and is retried after a
//!   pause. A peer is banned when its score goes below zero. Banned peers
//!   come back after `ban_time` with half the initial score, so a node can
//!   never end up with no peers forever.
//! * Forward, a processed batch waits in AwaitingValidation until the next
//!   batch imports on top of it, and is then dropped. (It is bookkeeping
//!   only: if the next batch fails, the batch below it is not downloaded
//!   again.)
//!
//! The shell creates it with [`RangeSync::forward`] or
//! [`RangeSync::backward`], calls [`RangeSync::update_peer`] /
//! [`RangeSync::remove_peer`], [`RangeSync::handle_blocks`],
//! [`RangeSync::handle_failure`], [`RangeSync::processed`] and
//! [`RangeSync::handle_timeout`] with the current time, then drains
//! [`RangeSync::poll_action`] and sleeps until [`RangeSync::poll_timeout`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// What the core needs to know about a block.
pub trait BlockInfo: Clone {
    /// The block's height.
    fn height(&self) -> u64;
    /// The block's hash.
    fn hash(&self) -> [u8; 32];
    /// The hash of the block it builds on (the one at `height - 1`).
    fn parent(&self) -> [u8; 32];
}

/// Which way a [`RangeSync`] goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Up from the local head towards the best head peers claim.
    Forward,
    /// Down from the lowest local block to a horizon (backfill).
    Backward,
}

/// Tunables.
#[derive(Clone, Debug)]
pub struct Config {
    /// Heights per batch, so per request (at least 1).
    pub batch_size: u64,
    /// Batches between AwaitingDownload and Processing at most (batches
    /// awaiting validation are not counted).
    pub max_buffered: usize,
    /// Requests in flight to one peer at most.
    pub max_requests_per_peer: usize,
    /// Deadline of a request; past it the batch is asked again and the peer
    /// scores [`SCORE_TIMEOUT`].
    pub request_timeout: Duration,
    /// Pause before a batch whose download failed on every peer is retried.
    pub retry_pause: Duration,
    /// Pause before retrying a batch after a local processing failure.
    pub local_retry_pause: Duration,
    /// How long a peer whose score went below zero is not asked; it then
    /// comes back with half of [`SCORE_INITIAL`].
    pub ban_time: Duration,
}

impl Default for Config {
    fn default() -> Self {
        // Nimbus requests 32 slots; Lighthouse buffers ~5 batches.
        Config {
            batch_size: 64,
            max_buffered: 5,
            max_requests_per_peer: 2,
            request_timeout: Duration::from_secs(10),
            retry_pause: Duration::from_millis(500),
            local_retry_pause: Duration::from_secs(1),
            ban_time: Duration::from_secs(60),
        }
    }
}

/// Score of a newly seen peer. A peer whose score goes below zero is banned
/// for [`Config::ban_time`].
pub const SCORE_INITIAL: i32 = 100;
/// Highest score: good service cannot bank more credit than this.
pub const SCORE_MAX: i32 = 300;
/// Added for an answer of the right shape.
pub const SCORE_GOOD: i32 = 10;
/// Added for a request that timed out or failed in transport.
pub const SCORE_TIMEOUT: i32 = -50;
/// Added for an empty answer, or for not having a range the peer claimed.
pub const SCORE_EMPTY: i32 = -100;
/// Added for bad data (a malformed or unverifiable answer, a block that
/// processing rejected): bans any peer at once.
pub const SCORE_BAD: i32 = -1000;

/// Where a batch is; see the diagram in the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchState {
    /// Not requested yet, or back in the queue after a failure (possibly
    /// paused until a retry time).
    AwaitingDownload,
    /// Requested from one peer; waiting for its answer or its deadline.
    Downloading,
    /// Downloaded and of the right shape; waits for its turn to be
    /// processed.
    AwaitingProcessing,
    /// Handed to the shell ([`Action::Process`]); waits for
    /// [`RangeSync::processed`].
    Processing,
    /// Forward only: processed; dropped once the next batch is processed on
    /// top of it.
    AwaitingValidation,
}

/// Why a request failed, as seen by the shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestFault {
    /// The peer answered BUSY: not a fault (no score change); the batch is
    /// asked of another peer if there is one.
    Busy,
    /// The peer does not have the range: [`SCORE_EMPTY`], and the range it
    /// claims is lowered so it is not asked for those heights again.
    Missing,
    /// Transport error or malformed answer: [`SCORE_TIMEOUT`].
    Io,
    /// The answer could not be decoded or verified (bad data):
    /// [`SCORE_BAD`].
    Bad(String),
}

/// The outcome of processing a batch, reported by the shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Processed {
    /// Every block of the batch was imported.
    Ok,
    /// A block of the batch is invalid (signature, linkage, execution
    /// rejected it): the peer that served it is at fault.
    BadBlock(String),
    /// Our own failure (disk, database): nobody is penalised.
    Local(String),
}

/// What the shell must do next, from [`RangeSync::poll_action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<P, B> {
    /// Ask `peer` for blocks `start..start+count` (ascending), tagged `id`.
    Request {
        /// The peer to ask.
        peer: P,
        /// The request's id; quote it in [`RangeSync::handle_blocks`] or
        /// [`RangeSync::handle_failure`].
        id: u64,
        /// The first height.
        start: u64,
        /// Heights asked for, at most [`Config::batch_size`].
        count: u64,
    },
    /// Process these blocks (ascending heights) and report with
    /// [`RangeSync::processed`] quoting `batch`.
    Process {
        /// The batch's id: its start height.
        batch: u64,
        /// Its blocks, ascending, linked by parent hash.
        blocks: Vec<B>,
    },
    /// The peer's score went below zero: it is not asked for
    /// [`Config::ban_time`].
    Banned {
        /// The banned peer.
        peer: P,
        /// The fault that crossed the threshold, for logs.
        reason: String,
    },
}

#[derive(Debug)]
struct Batch<P, B> {
    start: u64,
    end: u64,
    state: BatchState,
    peer: Option<P>,
    req: Option<u64>,
    deadline: Option<Instant>,
    not_before: Option<Instant>,
    blocks: Vec<B>,
    download_attempts: u32,
    processing_attempts: u32,
    failed_peers: Vec<P>,
}

impl<P, B> Batch<P, B> {
    /// A batch of `start..=end` awaiting its first download.
    fn new(start: u64, end: u64) -> Self {
        Batch {
            start,
            end,
            state: BatchState::AwaitingDownload,
            peer: None,
            req: None,
            deadline: None,
            not_before: None,
            blocks: Vec::new(),
            download_attempts: 0,
            processing_attempts: 0,
            failed_peers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct PeerState {
    low: u64,
    high: u64,
    score: i32,
    inflight: usize,
    banned_until: Option<Instant>,
}

/// Counters, for metrics and tests.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    /// Requests sent.
    pub requests: u64,
    /// Answers and failures reported for a request that is no longer the
    /// batch's current one (or from another peer), dropped.
    pub stale_responses: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Empty answers and [`RequestFault::Missing`] failures.
    pub empty: u64,
    /// Answers of the wrong shape, [`RequestFault::Bad`] failures and
    /// batches that processing rejected.
    pub bad: u64,
    /// [`RequestFault::Busy`] failures.
    pub busy: u64,
    /// Answers with a valid prefix of the range (the rest re-queued).
    pub partial: u64,
    /// Local processing failures ([`Processed::Local`]).
    pub local_failures: u64,
    /// Blocks received in current answers, whatever became of them.
    pub blocks_received: u64,
    /// Batches processed successfully.
    pub batches_processed: u64,
}

/// One range sync, forward or backward; see the module documentation for
/// the calling order. `P` identifies a peer, `B` is a block.
pub struct RangeSync<P, B> {
    dir: Direction,
    cfg: Config,
    /// Forward: highest processed height. Backward: lowest processed height.
    processed: u64,
    /// Forward: the best head peers claim. Backward: the lowest height wanted.
    target: u64,
    /// Forward: next height to put in a batch. Backward: one above it.
    cursor: u64,
    batches: BTreeMap<u64, Batch<P, B>>,
    peers: HashMap<P, PeerState>,
    requests: HashMap<u64, u64>,
    next_id: u64,
    actions: VecDeque<Action<P, B>>,
    /// Counters.
    pub stats: Stats,
}

impl<P: Clone + Eq + Hash + Ord + Debug, B: BlockInfo> RangeSync<P, B> {
    /// Forward sync above `head` (the highest height we have).
    pub fn forward(head: u64, cfg: Config) -> Self {
        Self::new(Direction::Forward, head, head, head + 1, cfg)
    }

    /// Backfill below `low` (the lowest block we have) down to `horizon`
    /// (>= 1).
    pub fn backward(low: u64, horizon: u64, cfg: Config) -> Self {
        let horizon = horizon.max(1);
        Self::new(Direction::Backward, low, horizon, low, cfg)
    }

    fn new(dir: Direction, processed: u64, target: u64, cursor: u64, cfg: Config) -> Self {
        RangeSync {
            dir,
            cfg,
            processed,
            target,
            cursor,
            batches: BTreeMap::new(),
            peers: HashMap::new(),
            requests: HashMap::new(),
            next_id: 1,
            actions: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// Forward: highest processed height. Backward: the backfill pointer.
    pub fn position(&self) -> u64 {
        self.processed
    }

    /// Forward: the best head claimed by a peer not banned (never below the
    /// position). Backward: the horizon.
    pub fn target(&self) -> u64 {
        self.target
    }

    /// Nothing left: every height up to the target (forward) or down to the
    /// horizon (backward) is processed.
    pub fn is_done(&self) -> bool {
        let reached = match self.dir {
            Direction::Forward => self.processed >= self.target,
            Direction::Backward => self.processed <= self.target,
        };
        reached
            && self
                .batches
                .values()
                .all(|b| b.state == BatchState::AwaitingValidation)
    }

    /// Every live batch as `(start, end, state)`, heights inclusive,
    /// ascending.
    pub fn batch_states(&self) -> Vec<(u64, u64, BatchState)> {
        self.batches
            .values()
            .map(|b| (b.start, b.end, b.state))
            .collect()
    }

    /// The score of `p`, if it is known.
    pub fn peer_score(&self, p: &P) -> Option<i32> {
        self.peers.get(p).map(|s| s.score)
    }

    /// Peers known, banned ones included.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// A peer and the range of blocks it can serve (`low..=high`). Called
    /// again when its status changes; a known peer keeps its score and ban.
    /// Forward, the target follows the best head claimed.
    pub fn update_peer(&mut self, p: P, low: u64, high: u64, now: Instant) {
        let e = self.peers.entry(p).or_insert(PeerState {
            low,
            high,
            score: SCORE_INITIAL,
            inflight: 0,
            banned_until: None,
        });
        e.low = low;
        e.high = high;
        self.retarget();
        self.schedule(now);
    }

    /// A peer disconnected: its requests go back to the queue, without
    /// counting an attempt or a penalty.
    pub fn remove_peer(&mut self, p: &P, now: Instant) {
        self.peers.remove(p);
        let ids: Vec<u64> = self
            .batches
            .values()
            .filter(|b| b.state == BatchState::Downloading && b.peer.as_ref() == Some(p))
            .filter_map(|b| b.req)
            .collect();
        for id in ids {
            if let Some(start) = self.requests.remove(&id)
                && let Some(b) = self.batches.get_mut(&start)
            {
                b.state = BatchState::AwaitingDownload;
                b.peer = None;
                b.req = None;
                b.deadline = None;
            }
        }
        self.retarget();
        self.schedule(now);
    }

    fn retarget(&mut self) {
        if self.dir == Direction::Backward {
            return;
        }
        let best = self
            .peers
            .values()
            .filter(|s| s.banned_until.is_none())
            .map(|s| s.high)
            .max()
            .unwrap_or(self.processed);
        self.target = best.max(self.processed);
        // Batches above what anyone claims would wait for a peer forever:
        // trim the tail of batches not yet requested, from the top, down to
        // the first one that is in flight or done (never below it, so the
        // cursor never moves under a live batch).
        let target = self.target;
        while let Some((&start, b)) = self.batches.iter().next_back() {
            if b.state != BatchState::AwaitingDownload || b.end <= target {
                break;
            }
            if start > target {
                self.batches.remove(&start);
                self.cursor = start;
            } else {
                if let Some(b) = self.batches.get_mut(&start) {
                    b.end = target;
                }
                self.cursor = target + 1;
                break;
            }
        }
    }

    fn buffered(&self) -> usize {
        self.batches
            .values()
            .filter(|b| b.state != BatchState::AwaitingValidation)
            .count()
    }

    fn fault(&mut self, p: &P, delta: i32, reason: &str, now: Instant) {
        let ban_time = self.cfg.ban_time;
        if let Some(s) = self.peers.get_mut(p) {
            s.score = (s.score + delta).min(SCORE_MAX);
            if s.score < 0 && s.banned_until.is_none() {
                s.banned_until = Some(now + ban_time);
                self.actions.push_back(Action::Banned {
                    peer: p.clone(),
                    reason: reason.to_string(),
                });
            }
        }
    }

    /// Creates batches, assigns peers and hands out the next batch to
    /// process.
    fn schedule(&mut self, now: Instant) {
        // Pauses that are over are lifted (so no past deadline is ever
        // reported again: no busy loop).
        for b in self.batches.values_mut() {
            if b.not_before.is_some_and(|t| t <= now) {
                b.not_before = None;
            }
        }
        // Ban expiry: a banned peer returns with a small score.
        let mut returned = false;
        for s in self.peers.values_mut() {
            if s.banned_until.is_some_and(|t| t <= now) {
                s.banned_until = None;
                s.score = SCORE_INITIAL / 2;
                returned = true;
            }
        }
        if returned {
            self.retarget();
        }
        // New batches within the window.
        while self.buffered() < self.cfg.max_buffered {
            let (start, end) = match self.dir {
                Direction::Forward => {
                    if self.cursor > self.target {
                        break;
                    }
                    let end = (self.cursor + self.cfg.batch_size - 1).min(self.target);
                    (self.cursor, end)
                }
                Direction::Backward => {
                    if self.cursor <= self.target {
                        break;
                    }
                    let end = self.cursor - 1;
                    let start = end.saturating_sub(self.cfg.batch_size - 1).max(self.target);
                    (start, end)
                }
            };
            if let Some(existing) = self.batches.get(&start) {
                // Already covered (the tail was trimmed and regrown): move on.
                self.cursor = match self.dir {
                    Direction::Forward => existing.end + 1,
                    Direction::Backward => existing.start,
                };
                continue;
            }
            self.batches.insert(start, Batch::new(start, end));
            self.cursor = match self.dir {
                Direction::Forward => end + 1,
                Direction::Backward => start,
            };
        }
        // Downloads, in processing order so the batch everyone waits for
        // gets the first free peer.
        let order = self.order();
        for start in &order {
            let Some(b) = self.batches.get(start) else {
                continue;
            };
            if b.state != BatchState::AwaitingDownload || b.not_before.is_some_and(|t| t > now) {
                continue;
            }
            let (bs, be) = (b.start, b.end);
            let eligible = |s: &PeerState| s.banned_until.is_none() && s.low <= bs && s.high >= be;
            let mut cands: Vec<(&P, &PeerState)> = self
                .peers
                .iter()
                .filter(|(_, s)| eligible(s) && s.inflight < self.cfg.max_requests_per_peer)
                .collect();
            let fresh: Vec<(&P, &PeerState)> = cands
                .iter()
                .filter(|(p, _)| !b.failed_peers.contains(p))
                .cloned()
                .collect();
            if !fresh.is_empty() {
                cands = fresh;
            }
            cands.sort_by(|a, b2| {
                a.1.inflight
                    .cmp(&b2.1.inflight)
                    .then(b2.1.score.cmp(&a.1.score))
                    .then(a.0.cmp(b2.0))
            });
            let Some(peer) = cands.first().map(|(p, _)| (*p).clone()) else {
                continue;
            };
            let id = self.next_id;
            self.next_id += 1;
            if let Some(s) = self.peers.get_mut(&peer) {
                s.inflight += 1;
            }
            self.requests.insert(id, bs);
            self.stats.requests += 1;
            if let Some(b) = self.batches.get_mut(start) {
                b.state = BatchState::Downloading;
                b.peer = Some(peer.clone());
                b.req = Some(id);
                b.deadline = Some(now + self.cfg.request_timeout);
                b.download_attempts += 1;
            }
            self.actions.push_back(Action::Request {
                peer,
                id,
                start: bs,
                count: be - bs + 1,
            });
        }
        // Processing: one batch at a time, strictly in order.
        if self
            .batches
            .values()
            .any(|b| b.state == BatchState::Processing)
        {
            return;
        }
        let next = match self.dir {
            Direction::Forward => self.batches.get(&(self.processed + 1)),
            Direction::Backward => self.batches.values().find(|b| b.end + 1 == self.processed),
        };
        if let Some(b) = next
            && b.state == BatchState::AwaitingProcessing
            && b.not_before.is_none_or(|t| t <= now)
        {
            let start = b.start;
            if let Some(b) = self.batches.get_mut(&start) {
                b.state = BatchState::Processing;
                let blocks = b.blocks.clone();
                self.actions.push_back(Action::Process {
                    batch: start,
                    blocks,
                });
            }
        }
    }

    fn order(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.batches.keys().copied().collect();
        if self.dir == Direction::Backward {
            v.reverse();
        }
        v
    }

    fn take_request(&mut self, id: u64) -> Option<(u64, P)> {
        let start = self.requests.remove(&id)?;
        let b = self.batches.get_mut(&start)?;
        if b.req != Some(id) || b.state != BatchState::Downloading {
            return None;
        }
        let p = b.peer.clone()?;
        b.req = None;
        b.deadline = None;
        if let Some(s) = self.peers.get_mut(&p) {
            s.inflight = s.inflight.saturating_sub(1);
        }
        Some((start, p))
    }

    fn retry(&mut self, start: u64, p: &P, now: Instant) {
        let all_failed = {
            let Some(b) = self.batches.get_mut(&start) else {
                return;
            };
            b.state = BatchState::AwaitingDownload;
            b.peer = None;
            b.blocks.clear();
            if !b.failed_peers.contains(p) {
                b.failed_peers.push(p.clone());
            }
            let (bs, be) = (b.start, b.end);
            let failed = b.failed_peers.clone();
            !self.peers.iter().any(|(q, s)| {
                s.banned_until.is_none() && s.low <= bs && s.high >= be && !failed.contains(q)
            })
        };
        if all_failed && let Some(b) = self.batches.get_mut(&start) {
            // Everyone failed this batch once: start over with all of them
            // after a pause (never give up, never spin).
            b.failed_peers.clear();
            b.not_before = Some(now + self.cfg.retry_pause);
        }
    }

    /// Blocks answering request `id` from `peer`. Checks the shape (the
    /// requested heights, in order, linked by parent hash); the shell checks
    /// signatures when processing. A valid prefix of the range is kept and
    /// the rest queued as its own batch; an empty answer scores
    /// [`SCORE_EMPTY`] and a wrong shape [`SCORE_BAD`], and the batch is
    /// asked again, preferably of another peer. An answer to a request that
    /// is not the batch's current one is counted stale and dropped.
    pub fn handle_blocks(&mut self, id: u64, peer: &P, blocks: Vec<B>, now: Instant) {
        let Some((start, p)) = self.take_request(id) else {
            self.stats.stale_responses += 1;
            return;
        };
        if &p != peer {
            self.stats.stale_responses += 1;
            return;
        }
        self.stats.blocks_received += blocks.len() as u64;
        let Some(b) = self.batches.get(&start) else {
            return;
        };
        let (bs, be) = (b.start, b.end);
        let want = (be - bs + 1) as usize;
        let shape = if blocks.is_empty() {
            Err(None)
        } else if blocks.len() > want {
            Err(Some(format!("{} blocks for {want} heights", blocks.len())))
        } else {
            let mut bad = None;
            for (i, blk) in blocks.iter().enumerate() {
                if blk.height() != bs + i as u64 {
                    bad = Some(format!(
                        "height {} at position {i} of {bs}..={be}",
                        blk.height()
                    ));
                    break;
                }
                if i > 0 && blk.parent() != blocks[i - 1].hash() {
                    bad = Some(format!(
                        "block {} does not link to its parent",
                        blk.height()
                    ));
                    break;
                }
            }
            bad.map_or(Ok(()), |r| Err(Some(r)))
        };
        match shape {
            Ok(()) => {
                if let Some(s) = self.peers.get_mut(&p) {
                    s.score = (s.score + SCORE_GOOD).min(SCORE_MAX);
                }
                let got = blocks.len() as u64;
                if let Some(b) = self.batches.get_mut(&start) {
                    b.state = BatchState::AwaitingProcessing;
                    b.peer = Some(p);
                    b.blocks = blocks;
                    b.not_before = None;
                    b.end = bs + got - 1;
                }
                if got < want as u64 {
                    // A valid prefix (the server's size budget, or it has no
                    // more yet): keep it, queue the rest as its own batch.
                    self.stats.partial += 1;
                    self.batches.insert(bs + got, Batch::new(bs + got, be));
                }
            }
            Err(None) => {
                // The peer has none of the range: mild, and stop asking it
                // for heights it has shown it does not have.
                self.stats.empty += 1;
                if let Some(s) = self.peers.get_mut(&p) {
                    match self.dir {
                        Direction::Forward => s.high = s.high.min(bs.saturating_sub(1)),
                        Direction::Backward => s.low = s.low.max(be + 1),
                    }
                }
                self.fault(&p, SCORE_EMPTY, "empty or short batches", now);
                self.retry(start, &p, now);
                self.retarget();
            }
            Err(Some(reason)) => {
                self.stats.bad += 1;
                self.fault(&p, SCORE_BAD, &reason, now);
                self.retry(start, &p, now);
            }
        }
        self.schedule(now);
    }

    /// Request `id` failed; [`RequestFault`] says what it costs the peer.
    /// The batch is asked again, preferably of another peer (after
    /// [`Config::retry_pause`] once every eligible peer has failed it).
    pub fn handle_failure(&mut self, id: u64, fault: RequestFault, now: Instant) {
        let Some((start, p)) = self.take_request(id) else {
            self.stats.stale_responses += 1;
            return;
        };
        match &fault {
            RequestFault::Busy => self.stats.busy += 1,
            RequestFault::Missing => {
                self.stats.empty += 1;
                self.fault(&p, SCORE_EMPTY, "does not have the range it claims", now);
                if let Some(b) = self.batches.get(&start) {
                    let (bs, be) = (b.start, b.end);
                    if let Some(s) = self.peers.get_mut(&p) {
                        match self.dir {
                            Direction::Forward => s.high = s.high.min(bs.saturating_sub(1)),
                            Direction::Backward => s.low = s.low.max(be + 1),
                        }
                    }
                }
                self.retarget();
            }
            RequestFault::Io => self.fault(&p, SCORE_TIMEOUT, "transport errors", now),
            RequestFault::Bad(r) => {
                self.stats.bad += 1;
                self.fault(&p, SCORE_BAD, r, now);
            }
        }
        self.retry(start, &p, now);
        self.schedule(now);
    }

    /// Result of processing batch `batch` (its start height, from
    /// [`Action::Process`]); ignored unless that batch is being processed.
    /// A bad block scores [`SCORE_BAD`] for the peer that served the batch,
    /// which is downloaded again; a local failure retries the same blocks
    /// after [`Config::local_retry_pause`].
    pub fn processed(&mut self, batch: u64, result: Processed, now: Instant) {
        let Some(b) = self.batches.get_mut(&batch) else {
            return;
        };
        if b.state != BatchState::Processing {
            return;
        }
        match result {
            Processed::Ok => {
                self.stats.batches_processed += 1;
                let (bs, be) = (b.start, b.end);
                match self.dir {
                    Direction::Forward => {
                        b.state = BatchState::AwaitingValidation;
                        b.blocks.clear();
                        self.processed = be;
                        // Batches below this one are now validated by it.
                        let done: Vec<u64> = self.batches.range(..bs).map(|(s, _)| *s).collect();
                        for s in done {
                            self.batches.remove(&s);
                        }
                    }
                    Direction::Backward => {
                        self.batches.remove(&bs);
                        self.processed = bs;
                    }
                }
            }
            Processed::BadBlock(reason) => {
                b.processing_attempts += 1;
                let p = b.peer.clone();
                self.stats.bad += 1;
                if let Some(p) = p {
                    self.fault(&p, SCORE_BAD, &reason, now);
                    self.retry(batch, &p, now);
                }
            }
            Processed::Local(_) => {
                // Our fault: same blocks, same peer's credit, try again later.
                self.stats.local_failures += 1;
                b.state = BatchState::AwaitingProcessing;
                b.not_before = Some(now + self.cfg.local_retry_pause);
            }
        }
        self.schedule(now);
    }

    /// Expires requests past their deadline and lifts pauses.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .batches
            .values()
            .filter(|b| b.state == BatchState::Downloading && b.deadline.is_some_and(|d| d <= now))
            .filter_map(|b| b.req)
            .collect();
        for id in expired {
            if let Some((start, p)) = self.take_request(id) {
                self.stats.timeouts += 1;
                self.fault(&p, SCORE_TIMEOUT, "requests time out", now);
                self.retry(start, &p, now);
            }
        }
        self.schedule(now);
    }

    /// The next action for the shell, in order; `None` until an event or
    /// [`RangeSync::handle_timeout`] creates more.
    pub fn poll_action(&mut self) -> Option<Action<P, B>> {
        self.actions.pop_front()
    }

    /// The next instant at which [`RangeSync::handle_timeout`] has work: a
    /// deadline, the end of a pause or of a ban. None when idle.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let b = self.batches.values().filter_map(|b| match b.state {
            BatchState::Downloading => b.deadline,
            BatchState::AwaitingDownload | BatchState::AwaitingProcessing => b.not_before,
            _ => None,
        });
        let p = self.peers.values().filter_map(|s| s.banned_until);
        b.chain(p).min()
    }
}
