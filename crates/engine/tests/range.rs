//! Range sync and backfill on the sans-IO core, driven by simulated peers
//! and a virtual clock. One test per "sync stuck" cause in the field notes.

use statesync_engine::range::{
    Action, BatchState, BlockInfo, Config, Processed, RangeSync, RequestFault, SCORE_INITIAL,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq)]
struct B {
    h: u64,
    hash: [u8; 32],
    parent: [u8; 32],
}

impl BlockInfo for B {
    fn height(&self) -> u64 {
        self.h
    }
    fn hash(&self) -> [u8; 32] {
        self.hash
    }
    fn parent(&self) -> [u8; 32] {
        self.parent
    }
}

fn hash_of(h: u64, fork: u8) -> [u8; 32] {
    let mut k = h.to_le_bytes().to_vec();
    k.push(fork);
    *blake3::hash(&k).as_bytes()
}

fn block(h: u64, fork: u8) -> B {
    B {
        h,
        hash: hash_of(h, fork),
        parent: if h == 1 {
            [0; 32]
        } else {
            hash_of(h - 1, fork)
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Good,
    /// Accepts requests and never answers.
    Silent,
    /// Claims more than it has and answers empty above what it has.
    Liar {
        has: u64,
    },
    /// Serves a forged (internally consistent) chain.
    Forger,
    /// Forges only the batch starting at this height.
    ForgeBatch(u64),
    /// Answers at most this many blocks per request (a size budget).
    Capped(u64),
}

struct SimPeer {
    mode: Mode,
    latency: Duration,
    low: u64,
    high: u64,
}

enum Event {
    Response { id: u64, peer: u32, blocks: Vec<B> },
    Processed { batch: u64, result: Processed },
}

struct Sim {
    now: Instant,
    rs: RangeSync<u32, B>,
    peers: HashMap<u32, SimPeer>,
    events: Vec<(Instant, Event)>,
    /// Forward: our head. Backward: our low.
    head: u64,
    local_failures_left: u32,
    processed_blocks: Vec<u64>,
    banned: Vec<u32>,
    max_buffered_seen: usize,
    steps: u64,
    late: Vec<(u64, u32, Vec<B>)>,
}

impl Sim {
    fn new(rs: RangeSync<u32, B>, head: u64) -> Sim {
        Sim {
            now: Instant::now(),
            rs,
            peers: HashMap::new(),
            events: Vec::new(),
            head,
            local_failures_left: 0,
            processed_blocks: Vec::new(),
            banned: Vec::new(),
            max_buffered_seen: 0,
            steps: 0,
            late: Vec::new(),
        }
    }

    fn add(&mut self, id: u32, mode: Mode, low: u64, high: u64, latency_ms: u64) {
        self.peers.insert(
            id,
            SimPeer {
                mode,
                latency: Duration::from_millis(latency_ms),
                low,
                high,
            },
        );
        self.rs.update_peer(id, low, high, self.now);
    }

    fn answer(&self, peer: &SimPeer, start: u64, count: u64) -> Option<Vec<B>> {
        let range = start..start + count;
        match peer.mode {
            Mode::Silent => None,
            Mode::Good => Some(
                range
                    .filter(|h| *h >= peer.low && *h <= peer.high)
                    .map(|h| block(h, 0))
                    .collect(),
            ),
            Mode::Liar { has } => Some(range.filter(|h| *h <= has).map(|h| block(h, 0)).collect()),
            Mode::Forger => Some(range.map(|h| block(h, 9)).collect()),
            Mode::ForgeBatch(s) => Some(
                range
                    .map(|h| block(h, if s == start { 9 } else { 0 }))
                    .collect(),
            ),
            Mode::Capped(n) => Some(range.take(n as usize).map(|h| block(h, 0)).collect()),
        }
    }

    /// Runs until the core is done or idle, or `limit` of virtual time.
    fn run(&mut self, limit: Duration) {
        let end = self.now + limit;
        loop {
            self.steps += 1;
            assert!(self.steps < 200_000, "busy loop: too many steps");
            while let Some(a) = self.rs.poll_action() {
                match a {
                    Action::Request {
                        peer,
                        id,
                        start,
                        count,
                    } => {
                        let p = &self.peers[&peer];
                        if let Some(blocks) = self.answer(p, start, count) {
                            self.events
                                .push((self.now + p.latency, Event::Response { id, peer, blocks }));
                        }
                    }
                    Action::Process { batch, blocks } => {
                        let result = self.process(&blocks);
                        self.events.push((
                            self.now + Duration::from_millis(1),
                            Event::Processed { batch, result },
                        ));
                    }
                    Action::Banned { peer, .. } => self.banned.push(peer),
                }
            }
            let buffered = self
                .rs
                .batch_states()
                .iter()
                .filter(|b| b.2 != BatchState::AwaitingValidation)
                .count();
            self.max_buffered_seen = self.max_buffered_seen.max(buffered);
            if self.rs.is_done() {
                return;
            }
            let next_ev = self.events.iter().map(|e| e.0).min();
            let next = match (next_ev, self.rs.poll_timeout()) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => return, // idle: nothing can happen
                },
            };
            assert!(next >= self.now, "a deadline in the past was reported");
            if next > end {
                return;
            }
            self.now = next;
            let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.events)
                .into_iter()
                .partition(|e| e.0 <= self.now);
            self.events = rest;
            for (_, ev) in due {
                match ev {
                    Event::Response { id, peer, blocks } => {
                        if self.peers.contains_key(&peer) {
                            self.rs.handle_blocks(id, &peer, blocks, self.now);
                        } else {
                            self.late.push((id, peer, blocks));
                        }
                    }
                    Event::Processed { batch, result } => {
                        self.rs.processed(batch, result, self.now)
                    }
                }
            }
            self.rs.handle_timeout(self.now);
        }
    }

    fn process(&mut self, blocks: &[B]) -> Processed {
        if self.local_failures_left > 0 {
            self.local_failures_left -= 1;
            return Processed::Local("disk full".into());
        }
        for b in blocks {
            if *b != block(b.h, 0) {
                return Processed::BadBlock(format!("block {} has a bad signature", b.h));
            }
        }
        // Forward: must attach to our head; backward: below our low.
        let fwd = blocks[0].h == self.head + 1;
        let bwd = blocks.last().map(|b| b.h + 1) == Some(self.head);
        assert!(
            fwd || bwd,
            "batch {}..{} handed out of order (head {})",
            blocks[0].h,
            blocks.last().unwrap().h,
            self.head
        );
        if fwd {
            self.head = blocks.last().unwrap().h;
        } else {
            self.head = blocks[0].h;
        }
        self.processed_blocks.extend(blocks.iter().map(|b| b.h));
        Processed::Ok
    }
}

fn cfg() -> Config {
    Config {
        batch_size: 16,
        max_buffered: 4,
        request_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

#[test]
fn forward_sync_from_mixed_peers_is_ordered_and_bounded() {
    let mut s = Sim::new(RangeSync::forward(0, cfg()), 0);
    for i in 0..12 {
        s.add(i, Mode::Good, 1, 1000, 5 + (i as u64 * 37) % 200);
    }
    s.run(Duration::from_secs(600));
    assert!(s.rs.is_done());
    assert_eq!(s.head, 1000);
    assert_eq!(s.processed_blocks, (1..=1000).collect::<Vec<_>>());
    assert!(
        s.max_buffered_seen <= 4,
        "window exceeded: {}",
        s.max_buffered_seen
    );
}

#[test]
fn first_batch_failing_repeatedly_while_later_ones_are_done() {
    // Peer 0 forges the first batch every time; later batches complete and
    // wait in the reorder buffer; the first batch moves to the honest peer.
    let mut s = Sim::new(RangeSync::forward(0, cfg()), 0);
    s.add(0, Mode::ForgeBatch(1), 1, 200, 1);
    s.add(1, Mode::Good, 1, 200, 300);
    s.run(Duration::from_secs(600));
    assert!(s.rs.is_done(), "stuck: {:?}", s.rs.batch_states());
    assert_eq!(s.head, 200);
    assert!(s.banned.contains(&0));
    assert!(s.rs.peer_score(&1).unwrap() >= SCORE_INITIAL);
}

#[test]
fn disconnect_with_batches_in_flight_and_no_peers_then_a_peer_joins() {
    let mut s = Sim::new(RangeSync::forward(0, cfg()), 0);
    s.add(0, Mode::Good, 1, 500, 50);
    s.run(Duration::from_millis(120));
    assert!(s.head < 500);
    s.peers.remove(&0);
    s.rs.remove_peer(&0, s.now);
    // No peers: idle, no busy loop, nothing lost.
    let steps = s.steps;
    s.run(Duration::from_secs(3600));
    assert!(s.steps - steps < 10, "spun without peers");
    assert!(!s.rs.is_done() || s.head == s.rs.target());
    // The old peer's responses arrive late: stale, dropped.
    for (id, p, blocks) in std::mem::take(&mut s.late) {
        s.rs.handle_blocks(id, &p, blocks, s.now);
    }
    s.add(1, Mode::Good, 1, 500, 10);
    s.run(Duration::from_secs(600));
    assert_eq!(s.head, 500);
    assert!(s.rs.is_done());
}

#[test]
fn a_run_of_empty_batches_longer_than_the_window() {
    // Peer 0 claims 2000 but has 300; empty answers lower its claim instead
    // of filling the window with batches nobody can serve.
    let mut s = Sim::new(RangeSync::forward(0, cfg()), 0);
    s.add(0, Mode::Liar { has: 300 }, 1, 2000, 1);
    s.run(Duration::from_secs(600));
    assert_eq!(s.head, 300, "{:?}", s.rs.batch_states());
    assert!(s.rs.is_done());
    // A real peer at 1000 appears: sync continues to it.
    s.add(1, Mode::Good, 1, 1000, 20);
    s.run(Duration::from_secs(600));
    assert_eq!(s.head, 1000);
    assert!(s.rs.stats.empty >= 1);
}

#[test]
fn a_peer_that_never_answers() {
    let mut s = Sim::new(RangeSync::forward(0, cfg()), 0);
    s.add(0, Mode::Silent, 1, 400, 1);
    s.add(1, Mode::Good, 1, 400, 40);
    s.run(Duration::from_secs(600));
    assert_eq!(s.head, 400);
    assert!(s.rs.stats.timeouts >= 1);
    assert!(s.rs.peer_score(&0).unwrap() < s.rs.peer_score(&1).unwrap());
    // Alone with the silent peer: requests keep timing out on the clock,
    // never in a loop.
    let mut s = Sim::new(RangeSync::forward(0, cfg()), 0);
    s.add(0, Mode::Silent, 1, 400, 1);
    s.run(Duration::from_secs(120));
    assert!(s.steps < 500, "{} steps in 120 s", s.steps);
    assert_eq!(s.head, 0);
}

#[test]
fn stale_response_after_a_reset_is_dropped() {
    let mut rs: RangeSync<u32, B> = RangeSync::forward(0, cfg());
    let t = Instant::now();
    rs.update_peer(7, 1, 32, t);
    let Some(Action::Request {
        id, start, count, ..
    }) = rs.poll_action()
    else {
        panic!("no request")
    };
    // Timed out and retried: the first answer is stale when it arrives.
    rs.handle_timeout(t + Duration::from_secs(3));
    let blocks: Vec<B> = (start..start + count).map(|h| block(h, 0)).collect();
    rs.handle_blocks(id, &7, blocks.clone(), t + Duration::from_secs(4));
    assert_eq!(rs.stats.stale_responses, 1);
    // And after the peer was removed and re-added.
    let mut next = None;
    while let Some(a) = rs.poll_action() {
        if let Action::Request { id, .. } = a {
            next = Some(id);
        }
    }
    let id2 = next.expect("retried");
    rs.remove_peer(&7, t + Duration::from_secs(5));
    rs.update_peer(7, 1, 32, t + Duration::from_secs(5));
    rs.handle_blocks(id2, &7, blocks, t + Duration::from_secs(5));
    assert_eq!(rs.stats.stale_responses, 2);
    assert!(
        rs.batch_states()
            .iter()
            .all(|b| b.2 != BatchState::AwaitingProcessing)
    );
}

#[test]
fn local_processing_failure_penalises_nobody() {
    let mut s = Sim::new(RangeSync::forward(0, cfg()), 0);
    s.local_failures_left = 5;
    s.add(0, Mode::Good, 1, 100, 10);
    s.run(Duration::from_secs(600));
    assert_eq!(s.head, 100);
    assert_eq!(s.rs.stats.local_failures, 5);
    assert!(
        s.rs.peer_score(&0).unwrap() >= SCORE_INITIAL,
        "penalised for our own failure"
    );
    assert!(s.banned.is_empty());
}

#[test]
fn forged_chain_bans_the_forger_and_completes_from_others() {
    let mut s = Sim::new(RangeSync::forward(0, cfg()), 0);
    s.add(0, Mode::Forger, 1, 300, 1);
    s.add(1, Mode::Good, 1, 300, 50);
    s.run(Duration::from_secs(600));
    assert_eq!(s.head, 300);
    assert!(s.banned.contains(&0));
}

#[test]
fn backfill_resumes_after_restart() {
    // Backfill from 1000 towards 1; "crash" after a while; a new core from
    // the persisted pointer finishes the job.
    let mut s = Sim::new(RangeSync::backward(1000, 1, cfg()), 1000);
    s.add(0, Mode::Good, 1, 1000, 20);
    s.add(1, Mode::Good, 1, 1000, 35);
    s.run(Duration::from_millis(300));
    let pointer = s.rs.position();
    assert!(pointer < 1000 && pointer > 1, "pointer {pointer}");
    assert_eq!(pointer, s.head);
    let mut s2 = Sim::new(RangeSync::backward(pointer, 1, cfg()), pointer);
    s2.add(0, Mode::Good, 1, 1000, 20);
    s2.run(Duration::from_secs(600));
    assert!(s2.rs.is_done());
    assert_eq!(s2.head, 1);
    let mut all: Vec<u64> = s
        .processed_blocks
        .iter()
        .chain(&s2.processed_blocks)
        .copied()
        .collect();
    all.sort_unstable();
    assert_eq!(all, (1..1000).collect::<Vec<_>>());
}

#[test]
fn backfill_skips_peers_without_history() {
    // Peer 0 itself started from a checkpoint at 600: it cannot serve below.
    let mut s = Sim::new(RangeSync::backward(1000, 1, cfg()), 1000);
    s.add(0, Mode::Good, 600, 1000, 1);
    s.add(1, Mode::Good, 1, 1000, 30);
    s.run(Duration::from_secs(600));
    assert_eq!(s.head, 1);
    assert_eq!(
        s.rs.stats.empty, 0,
        "asked a peer for history it does not claim"
    );
}

#[test]
fn no_tight_loop_at_the_end_or_with_peers_behind_us() {
    let mut s = Sim::new(RangeSync::forward(500, cfg()), 500);
    s.add(0, Mode::Good, 1, 400, 1);
    s.add(1, Mode::Good, 1, 500, 1);
    s.run(Duration::from_secs(3600));
    assert!(s.rs.is_done());
    assert!(s.rs.poll_action().is_none());
    assert_eq!(s.rs.poll_timeout(), None);
    assert!(s.steps <= 2);
    // Synced, then the head moves by one block.
    s.peers.get_mut(&1).unwrap().high = 501;
    s.rs.update_peer(1, 1, 501, s.now);
    s.run(Duration::from_secs(60));
    assert_eq!(s.head, 501);
    assert_eq!(s.rs.poll_timeout(), None);
}

#[test]
fn busy_is_not_a_fault_missing_is_mild() {
    let mut rs: RangeSync<u32, B> = RangeSync::forward(0, cfg());
    let t = Instant::now();
    rs.update_peer(1, 1, 64, t);
    rs.update_peer(2, 1, 64, t);
    let mut reqs = Vec::new();
    while let Some(a) = rs.poll_action() {
        if let Action::Request { peer, id, .. } = a {
            reqs.push((peer, id));
        }
    }
    assert!(reqs.len() >= 2);
    let (p1, id1) = reqs[0];
    rs.handle_failure(id1, RequestFault::Busy, t);
    assert_eq!(rs.peer_score(&p1), Some(SCORE_INITIAL));
    let (p2, id2) = reqs[1];
    rs.handle_failure(id2, RequestFault::Missing, t);
    assert!(rs.peer_score(&p2).unwrap() < SCORE_INITIAL);
}

#[test]
fn a_size_capped_peer_is_not_penalised_and_its_prefixes_are_kept() {
    let mut s = Sim::new(RangeSync::forward(0, cfg()), 0);
    s.add(0, Mode::Capped(5), 1, 200, 5);
    s.run(Duration::from_secs(600));
    assert_eq!(s.head, 200);
    assert!(s.rs.stats.partial > 0);
    assert!(s.banned.is_empty());
    assert!(s.rs.peer_score(&0).unwrap() >= SCORE_INITIAL);
    assert_eq!(s.processed_blocks, (1..=200).collect::<Vec<_>>());
}

#[test]
fn a_claim_lowered_then_raised_again_leaks_no_request_slots() {
    // The only peer answers NOT_FOUND for one batch (its claim drops below
    // it), then its status raises the claim again, repeatedly: batches in
    // flight must never be overwritten, and its request slots never leak.
    // Bans are short here: the point is what happens to the batches.
    let mut rs: RangeSync<u32, B> = RangeSync::forward(
        0,
        Config {
            ban_time: Duration::from_secs(1),
            ..cfg()
        },
    );
    let t = Instant::now();
    rs.update_peer(1, 1, 1000, t);
    let mut now = t;
    let mut head = 0u64;
    for round in 0..2000 {
        let mut reqs = Vec::new();
        let mut procs = Vec::new();
        while let Some(a) = rs.poll_action() {
            match a {
                Action::Request {
                    id, start, count, ..
                } => reqs.push((id, start, count)),
                Action::Process { batch, blocks } => procs.push((batch, blocks)),
                Action::Banned { .. } => {}
            }
        }
        for (batch, blocks) in procs {
            assert_eq!(blocks[0].h, head + 1);
            head = blocks.last().unwrap().h;
            rs.processed(batch, Processed::Ok, now);
        }
        for (i, (id, start, count)) in reqs.into_iter().enumerate() {
            if round % 3 == 0 && i == 0 {
                rs.handle_failure(id, RequestFault::Missing, now);
                rs.update_peer(1, 1, 1000, now);
            } else {
                let blocks = (start..start + count).map(|h| block(h, 0)).collect();
                rs.handle_blocks(id, &1, blocks, now);
            }
        }
        now += Duration::from_millis(600);
        rs.handle_timeout(now);
        if rs.is_done() {
            break;
        }
    }
    assert_eq!(head, 1000, "stuck at {head}: {:?}", rs.batch_states());
}
