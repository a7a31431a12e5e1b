//! Block range sync: forward (towards the head) and backward (backfill
//! towards genesis), as one sans-IO state machine.
//!
//! The range to cover is cut into batches of `batch_size` heights. Each batch
//! is always in exactly one [`BatchState`]:
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
//!   we stop asking it), timeouts -50, success +10; a local
//!   processing failure penalises nobody and is retried after a pause.
//!   Banned peers come back after `ban_time` with a fresh score, so a node
//!   can never end up with no peers forever.
//! * Forward, a processed batch waits in AwaitingValidation until the next
//!   batch imports on top of it (a batch is trusted only once a later one
//!   builds on it).
//!
//! The shell calls `add_peer`/`remove_peer`, `handle_blocks`,
//! `handle_failure`, `processed` and `handle_timeout(now)`, then drains
//! [`RangeSync::poll_action`] and sleeps until [`RangeSync::poll_timeout`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// What the core needs to know about a block.
pub trait BlockInfo: Clone {
    fn height(&self) -> u64;
    fn hash(&self) -> [u8; 32];
    fn parent(&self) -> [u8; 32];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub batch_size: u64,
    pub max_buffered: usize,
    pub max_requests_per_peer: usize,
    pub request_timeout: Duration,
    /// Pause before a batch whose download failed on every peer is retried.
    pub retry_pause: Duration,
    /// Pause before retrying a batch after a local processing failure.
    pub local_retry_pause: Duration,
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

pub const SCORE_INITIAL: i32 = 100;
pub const SCORE_MAX: i32 = 300;
pub const SCORE_GOOD: i32 = 10;
pub const SCORE_TIMEOUT: i32 = -50;
pub const SCORE_EMPTY: i32 = -100;
pub const SCORE_BAD: i32 = -1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchState {
    AwaitingDownload,
    Downloading,
    AwaitingProcessing,
    Processing,
    AwaitingValidation,
}

/// Why a request failed, as seen by the shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestFault {
    /// The peer answered BUSY: not a fault, try elsewhere.
    Busy,
    /// The peer does not have the range (mild).
    Missing,
    /// Transport error or malformed answer.
    Io,
    /// The answer could not be decoded or verified (bad data).
    Bad(String),
}

/// The outcome of processing a batch, reported by the shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Processed {
    Ok,
    /// A block of the batch is invalid (signature, linkage, execution
    /// rejected it): the peer that served it is at fault.
    BadBlock(String),
    /// Our own failure (disk, database): nobody is penalised.
    Local(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<P, B> {
    /// Ask `peer` for blocks `start..start+count` (ascending), tagged `id`.
    Request {
        peer: P,
        id: u64,
        start: u64,
        count: u64,
    },
    /// Process these blocks (ascending heights) and report with
    /// [`RangeSync::processed`] quoting `batch`.
    Process { batch: u64, blocks: Vec<B> },
    /// The peer crossed the ban threshold.
    Banned { peer: P, reason: String },
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

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub requests: u64,
    pub stale_responses: u64,
    pub timeouts: u64,
    pub empty: u64,
    pub bad: u64,
    pub busy: u64,
    /// Answers with a valid prefix of the range (the rest re-queued).
    pub partial: u64,
    pub local_failures: u64,
    pub blocks_received: u64,
    pub batches_processed: u64,
}

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

    pub fn batch_states(&self) -> Vec<(u64, u64, BatchState)> {
        self.batches
            .values()
            .map(|b| (b.start, b.end, b.state))
            .collect()
    }

    pub fn peer_score(&self, p: &P) -> Option<i32> {
        self.peers.get(p).map(|s| s.score)
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// A peer and the range of blocks it can serve (`low..=high`). Called
    /// again when its status changes.
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
    /// signatures when processing.
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

    /// Request `id` failed.
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

    /// Result of processing batch `batch`.
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
