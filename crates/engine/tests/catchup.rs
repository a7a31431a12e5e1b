//! Deterministic simulation of the catch-up phase machine on a virtual
//! clock: a chain that grows at its block rate, peers that report their
//! heads and serve their last few checkpoints, a state fetch whose progress
//! survives a switch to a newer checkpoint (except what changed between
//! them), replay at a given rate, adoption and genesis. Every transition of
//! the machine is driven here, the IC incident and a checkpoint that nobody
//! serves any more included. Runs in milliseconds.

use statesync_engine::catchup::{Action, CatchUp, Config, Force, Note, PeerView, PhaseName};
use statesync_manifest::rng::SplitMix64;
use std::time::{Duration, Instant};

/// How a simulated peer behaves.
#[derive(Clone, Debug)]
struct PeerSpec {
    /// Blocks behind the chain's head it runs.
    lag: u64,
    /// Its block history starts here (1: genesis).
    low: u64,
    /// Checkpoints it keeps (and serves).
    keep: u64,
    /// Claims a checkpoint that it cannot prove (its latest, with a bad
    /// header).
    lies: bool,
    /// Claims a checkpoint above its own head.
    boasts: bool,
    /// Never answers a request for a checkpoint header.
    mute: bool,
    /// Stops serving (and claiming) checkpoints at this virtual second.
    stops_serving_at: Option<f64>,
}

impl Default for PeerSpec {
    fn default() -> Self {
        PeerSpec {
            lag: 0,
            low: 1,
            keep: 3,
            lies: false,
            boasts: false,
            mute: false,
            stops_serving_at: None,
        }
    }
}

/// The world around one catching-up node.
#[derive(Clone, Debug)]
struct World {
    block_ms: u64,
    interval: u64,
    /// Chain head at virtual time 0.
    start_head: u64,
    state_bytes: u64,
    /// Fraction of the state that changes per checkpoint interval.
    churn: f64,
    /// Fetch rate of the whole state sync (bytes/s) while served.
    fetch_bps: f64,
    /// Blocks per second the node replays.
    replay_bps: f64,
    /// The node's own chain at time 0: (head, has state).
    local: (u64, bool),
    peers: Vec<PeerSpec>,
    cfg: Config,
}

impl Default for World {
    fn default() -> Self {
        World {
            block_ms: 200,
            interval: 50,
            start_head: 1_000,
            state_bytes: 100 << 20,
            churn: 0.02,
            fetch_bps: 50.0 * (1 << 20) as f64,
            replay_bps: 200.0,
            local: (0, false),
            peers: vec![PeerSpec::default(), PeerSpec::default()],
            cfg: Config::default(),
        }
    }
}

struct Sync {
    height: u64,
    /// Bytes of the target state already held (fetched or kept).
    have: f64,
    started: f64,
    fetched: f64,
}

struct Sim {
    w: World,
    core: CatchUp<usize>,
    t0: Instant,
    now: f64,
    head: u64,
    low: u64,
    has_state: bool,
    replaying: bool,
    sync: Option<Sync>,
    /// Pending events: (virtual second, what).
    pending: Vec<(f64, Ev)>,
    phases: Vec<PhaseName>,
    notes: Vec<Note>,
    /// Bytes that crossed the network for state syncs.
    wire_bytes: f64,
    replays_started: u64,
    trace: Vec<String>,
    rng: SplitMix64,
}

#[derive(Clone, Debug)]
enum Ev {
    Anchor {
        height: u64,
        peer: usize,
        valid: bool,
    },
    Adopted {
        height: u64,
    },
    Genesis,
}

const STEP: f64 = 0.05;

impl Sim {
    fn new(mut w: World) -> Sim {
        w.cfg.checkpoint_interval = w.interval;
        w.cfg.block_interval = Duration::from_millis(w.block_ms);
        w.cfg.state_bytes = w.state_bytes;
        let t0 = Instant::now();
        let (head, has_state) = w.local;
        let core = CatchUp::new(w.cfg.clone(), head, head.max(1), has_state, t0);
        Sim {
            core,
            t0,
            now: 0.0,
            head,
            low: head.max(1),
            has_state,
            replaying: false,
            sync: None,
            pending: Vec::new(),
            phases: vec![PhaseName::Waiting],
            notes: Vec::new(),
            wire_bytes: 0.0,
            replays_started: 0,
            trace: Vec::new(),
            rng: SplitMix64::new(7),
            w,
        }
    }

    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }

    fn chain_head(&self) -> u64 {
        self.w.start_head + (self.now * 1000.0 / self.w.block_ms as f64) as u64
    }

    fn peer_head(&self, i: usize) -> u64 {
        self.chain_head().saturating_sub(self.w.peers[i].lag)
    }

    fn serving(&self, i: usize) -> bool {
        self.w.peers[i]
            .stops_serving_at
            .is_none_or(|t| self.now < t)
    }

    /// Checkpoints peer `i` serves: its last `keep` checkpoint heights.
    fn serves(&self, i: usize, h: u64) -> bool {
        let latest = self.peer_head(i) / self.w.interval * self.w.interval;
        self.serving(i)
            && h > 0
            && h.is_multiple_of(self.w.interval)
            && h <= latest
            && latest - h < self.w.peers[i].keep * self.w.interval
    }

    fn view(&self, i: usize) -> PeerView {
        let p = &self.w.peers[i];
        let head = self.peer_head(i);
        let latest = head / self.w.interval * self.w.interval;
        PeerView {
            head,
            low: p.low,
            checkpoint: if p.boasts {
                latest + 10 * self.w.interval
            } else if self.serving(i) || p.lies {
                latest
            } else {
                0
            },
        }
    }

    fn drain(&mut self) {
        while let Some(a) = self.core.poll_action() {
            let now = self.now;
            self.trace.push(format!("{now:.2} {a:?}"));
            match a {
                Action::AskAnchor { peer, height } => {
                    let p = &self.w.peers[peer];
                    if p.mute {
                        continue;
                    }
                    let valid = !p.lies && self.peer_head(peer) >= height && p.low <= height;
                    self.pending.push((
                        now + 0.05,
                        Ev::Anchor {
                            height,
                            peer,
                            valid,
                        },
                    ));
                }
                Action::StartStateSync {
                    height,
                    switch_from,
                } => {
                    // What an earlier sync fetched is kept where it did not
                    // change since.
                    let have = match (self.sync.take(), switch_from) {
                        (Some(old), Some(_)) => {
                            let intervals = (height - old.height) as f64 / self.w.interval as f64;
                            old.have * (1.0 - self.w.churn).powf(intervals)
                        }
                        _ => 0.0,
                    };
                    self.sync = Some(Sync {
                        height,
                        have,
                        started: now,
                        fetched: 0.0,
                    });
                }
                Action::StopStateSync => self.sync = None,
                Action::Adopt { height } => {
                    self.pending.push((now + 0.2, Ev::Adopted { height }));
                }
                Action::InitGenesis => self.pending.push((now + 0.1, Ev::Genesis)),
                Action::StartReplay => {
                    self.replaying = true;
                    self.replays_started += 1;
                }
                Action::StopReplay => self.replaying = false,
                Action::Note(n) => {
                    if let Note::Phase { to, .. } = &n {
                        self.phases.push(*to);
                    }
                    self.notes.push(n);
                }
            }
        }
    }

    fn step(&mut self) {
        self.now += STEP;
        let now = self.at(self.now);
        // Events due.
        let due: Vec<Ev> = {
            let (d, rest): (Vec<_>, Vec<_>) =
                self.pending.drain(..).partition(|(t, _)| *t <= self.now);
            self.pending = rest;
            d.into_iter().map(|(_, e)| e).collect()
        };
        for e in due {
            match e {
                Ev::Anchor {
                    height,
                    peer,
                    valid,
                } => self.core.handle_anchor(height, &peer, valid, now),
                Ev::Adopted { height } => {
                    self.head = height;
                    self.low = height;
                    self.has_state = true;
                    self.core.handle_local(self.head, self.low, true);
                    self.core.handle_adopted(true, now);
                }
                Ev::Genesis => {
                    self.has_state = true;
                    self.head = 0;
                    self.core.handle_local(0, 1, true);
                    self.core.handle_genesis(true, now);
                }
            }
            self.drain();
        }
        // Peers report once a second.
        if ((self.now / STEP).round() as u64).is_multiple_of(20) {
            for i in 0..self.w.peers.len() {
                let v = self.view(i);
                self.core.handle_peer_status(i, v, now);
                self.drain();
            }
        }
        // The state fetch.
        if let Some(h) = self.sync.as_ref().map(|s| s.height) {
            let usable = (0..self.w.peers.len())
                .filter(|&i| self.serves(i, h))
                .count();
            let Some(s) = self.sync.as_mut() else {
                return;
            };
            if usable > 0 {
                let need = self.w.state_bytes as f64 - s.have;
                let got = (self.w.fetch_bps * STEP).min(need);
                s.have += got;
                s.fetched += got;
                self.wire_bytes += got;
            }
            let done = s.have >= self.w.state_bytes as f64 - 0.5;
            let (fetched, secs) = (s.fetched, self.now - s.started);
            self.core.handle_state_sync_peers(usable, now);
            if done {
                self.core.handle_state_sync_done(fetched as u64, secs, now);
                self.sync = None;
            }
            self.drain();
        }
        // Replay and following.
        let best = (0..self.w.peers.len())
            .map(|i| self.peer_head(i))
            .max()
            .unwrap_or(0);
        if self.replaying && self.has_state {
            let can = (self.w.replay_bps * STEP).max(1.0) as u64;
            let n = can.min(best.saturating_sub(self.head));
            if n > 0 {
                self.head += n;
                self.core.handle_local(self.head, self.low, true);
                self.core.handle_replay_batch(n, STEP, now);
            }
            if self.head >= best {
                self.core.handle_replay_done(now);
            }
            self.drain();
        } else if self.core.phase() == PhaseName::Following && self.has_state {
            // Pushed blocks: the node keeps up with the head.
            self.head = self.head.max(best.min(self.head + 5));
            self.core.handle_local(self.head, self.low, true);
        }
        self.core.handle_timeout(now);
        self.drain();
        // Determinism check material.
        let _ = self.rng.next_u64();
    }

    /// Runs until following for a second, or `limit` virtual seconds.
    fn run(&mut self, limit: f64) -> Option<f64> {
        self.drain();
        while self.now < limit {
            self.step();
            if self.core.phase() == PhaseName::Following
                && self
                    .core
                    .following_since()
                    .is_some_and(|t| self.at(self.now).duration_since(t) > Duration::from_secs(1))
            {
                return Some(self.now);
            }
        }
        None
    }

    fn saw(&self, f: impl Fn(&Note) -> bool) -> bool {
        self.notes.iter().any(f)
    }
}

fn phases(s: &Sim) -> Vec<PhaseName> {
    let mut v = s.phases.clone();
    v.dedup();
    v
}

use PhaseName::*;

#[test]
fn a_fresh_node_state_syncs_adopts_replays_and_follows() {
    let mut s = Sim::new(World::default());
    let t = s.run(120.0).expect("never followed");
    assert_eq!(
        phases(&s),
        vec![Waiting, AwaitAnchor, StateSync, Adopting, Replay, Following],
        "{:#?}",
        s.trace
    );
    assert!(s.saw(|n| matches!(n, Note::Decided { .. })));
    // 100 MiB at 50 MiB/s plus the blocks produced meanwhile.
    assert!(t < 10.0, "{t:.1}s");
    assert_eq!(s.core.stats().state_syncs, 1);
    assert!(s.head + 2 >= s.chain_head());
}

#[test]
fn a_node_at_the_head_follows_at_once() {
    // Peers first report at 1 s, when the chain is at 1_005.
    let mut s = Sim::new(World {
        local: (1_004, true),
        ..World::default()
    });
    s.run(30.0).expect("never followed");
    assert_eq!(phases(&s), vec![Waiting, Following]);
    assert_eq!(s.replays_started, 0);
}

#[test]
fn a_node_behind_by_a_few_hundred_blocks_replays() {
    let mut s = Sim::new(World {
        local: (800, true),
        replay_bps: 2_000.0,
        ..World::default()
    });
    s.run(60.0).expect("never followed");
    assert_eq!(phases(&s), vec![Waiting, Replay, Following]);
    assert_eq!(s.core.stats().state_syncs, 0);
}

#[test]
fn a_producer_is_the_head() {
    let mut w = World {
        local: (0, true),
        peers: vec![],
        ..World::default()
    };
    w.cfg.produce = true;
    let mut s = Sim::new(w);
    s.drain();
    s.step();
    assert_eq!(s.core.phase(), Following);
}

/// The IC incident, scaled: fetching the state takes longer than the
/// checkpoint interval, and peers keep only the last three checkpoints, so
/// the checkpoint being fetched stops being served before the sync ends.
/// The node must switch to newer checkpoints keeping what it fetched, and
/// finish; the bytes it moves stay close to what it needs.
#[test]
fn ic_incident_a_sync_slower_than_the_checkpoint_interval_finishes() {
    let w = World {
        state_bytes: 1 << 30,
        fetch_bps: 10.0 * (1 << 20) as f64, // ~102 s for the state
        interval: 50,                       // a checkpoint every 10 s
        churn: 0.01,
        ..World::default()
    };
    let mut s = Sim::new(w);
    let t = s.run(900.0).expect("the sync never finished");
    let st = s.core.stats();
    assert!(st.switches >= 1, "never switched: {:#?}", s.trace);
    assert_eq!(st.given_up, 0, "{:#?}", s.notes);
    assert!(phases(&s).ends_with(&[StateSync, Adopting, Replay, Following]));
    let ideal = (1u64 << 30) as f64 / (10.0 * (1 << 20) as f64);
    assert!(
        t < 2.0 * ideal,
        "{t:.0}s against {ideal:.0}s for the bytes alone"
    );
    let needed = (1u64 << 30) as f64;
    assert!(
        s.wire_bytes < 1.2 * needed,
        "moved {:.2}x the state",
        s.wire_bytes / needed
    );
}

/// Every peer stops serving checkpoints (they pruned them, or left) and
/// nothing newer is offered: the sync is given up after the grace period
/// and the node decides again; when checkpoints come back it syncs again.
#[test]
fn a_checkpoint_nobody_serves_any_more_is_given_up_then_retried() {
    let w = World {
        state_bytes: 1 << 30,
        fetch_bps: 10.0 * (1 << 20) as f64,
        peers: vec![
            PeerSpec {
                stops_serving_at: Some(20.0),
                ..PeerSpec::default()
            },
            PeerSpec {
                stops_serving_at: Some(20.0),
                ..PeerSpec::default()
            },
        ],
        ..World::default()
    };
    let mut s = Sim::new(w);
    // Nobody serves from 20 s: given up by ~50 s.
    assert!(s.run(70.0).is_none());
    assert!(
        s.saw(|n| matches!(n, Note::GaveUp { .. })),
        "{:#?}",
        s.notes
    );
    assert_eq!(s.core.stats().given_up, 1);
    assert_eq!(s.core.phase(), Waiting);
    assert!(s.sync.is_none(), "the stopped sync still runs");
    // Serving again: the node syncs and follows.
    for p in &mut s.w.peers {
        p.stops_serving_at = None;
    }
    let t = s.run(400.0).expect("never followed after serving resumed");
    assert!(t > 70.0);
    assert!(s.core.stats().state_syncs >= 2);
}

/// A peer claims a checkpoint it cannot prove: it is distrusted and the
/// node uses the honest peer's checkpoint. A claim above the claimer's own
/// head is ignored outright.
#[test]
fn an_unprovable_checkpoint_claim_is_distrusted() {
    for liar_first in [true, false] {
        let liar = PeerSpec {
            lies: true,
            ..PeerSpec::default()
        };
        let boaster = PeerSpec {
            boasts: true,
            ..PeerSpec::default()
        };
        let mut peers = vec![liar, PeerSpec::default()];
        if !liar_first {
            peers.reverse();
        }
        peers.push(boaster);
        let mut s = Sim::new(World {
            peers,
            ..World::default()
        });
        s.run(120.0).expect("never followed");
        assert!(phases(&s).contains(&StateSync));
        // The liar is asked at most once; the boaster never.
        assert!(s.core.stats().anchors_unusable <= 1);
        assert!(
            !s.trace.iter().any(|l| l.contains("peer: 2,")),
            "{:#?}",
            s.trace
        );
    }
    // The liar alone: asked once, distrusted, and then nothing to sync to.
    let mut s = Sim::new(World {
        peers: vec![PeerSpec {
            lies: true,
            ..PeerSpec::default()
        }],
        ..World::default()
    });
    assert!(s.run(60.0).is_none());
    assert!(s.saw(|n| matches!(n, Note::AnchorUnusable { .. })));
    assert_eq!(s.core.stats().anchors_unusable, 1);
    assert_eq!(s.core.stats().state_syncs, 0);
}

/// The peer asked for the checkpoint header never answers: after the
/// anchor timeout the node decides again and asks the next peer.
#[test]
fn an_unanswered_anchor_request_times_out_and_another_peer_is_asked() {
    let w = World {
        peers: vec![
            PeerSpec {
                mute: true,
                ..PeerSpec::default()
            },
            PeerSpec {
                mute: true,
                ..PeerSpec::default()
            },
            PeerSpec::default(),
        ],
        ..World::default()
    };
    let mut s = Sim::new(w);
    let t = s.run(120.0).expect("never followed");
    let asked: Vec<usize> = s
        .trace
        .iter()
        .filter(|l| l.contains("AskAnchor"))
        .map(|l| l.split("peer: ").nth(1).unwrap().chars().next().unwrap() as usize - '0' as usize)
        .collect();
    assert!(
        asked.contains(&2),
        "never asked the answering peer: {asked:?}"
    );
    assert!(asked.len() >= 2);
    let v: Vec<PhaseName> = phases(&s);
    assert!(v.windows(2).any(|w| w == [AwaitAnchor, Waiting]), "{v:?}");
    assert!(t > 10.0);
}

/// Replay slower than production: the node notices within the re-decide
/// period and state syncs instead, never running both at once.
#[test]
fn replay_slower_than_production_turns_into_a_state_sync() {
    let mut w = World {
        local: (100, true),
        replay_bps: 4.0, // production is 5 blocks/s
        ..World::default()
    };
    w.cfg.force = Force::Auto;
    w.cfg.initial_replay_bps = 10_000.0; // optimistic until measured
    let mut s = Sim::new(w);
    s.run(200.0).expect("never followed");
    let v = phases(&s);
    assert_eq!(v[..2], [Waiting, Replay], "{v:?}");
    assert!(s.saw(|n| matches!(n, Note::ReplayTooSlow { .. })));
    assert!(v.contains(&StateSync));
    // Replay was stopped before the state sync began.
    let stop = s.trace.iter().position(|l| l.contains("StopReplay"));
    let start = s.trace.iter().position(|l| l.contains("StartStateSync"));
    assert!(stop.is_some() && stop < start, "{:#?}", s.trace);
}

/// Following, the node falls far behind (it was paused): it replays.
#[test]
fn a_follower_that_falls_far_behind_replays() {
    let mut s = Sim::new(World {
        local: (1_000, true),
        replay_bps: 1_000.0,
        ..World::default()
    });
    s.run(10.0).expect("never followed");
    // The chain jumps ahead (the node was stopped for a while).
    s.w.start_head += 500;
    let before = s.replays_started;
    for _ in 0..200 {
        s.step();
    }
    s.run(60.0).expect("never followed again");
    assert!(s.saw(|n| matches!(n, Note::FellBehind { .. })));
    assert!(s.replays_started > before);
}

/// A state sync that fails locally (a full disk) is retried after pauses
/// that double: the node never gives up, never spins.
#[test]
fn a_failing_state_sync_is_retried_with_doubling_pauses() {
    let mut s = Sim::new(World::default());
    let mut retries = Vec::new();
    for _ in 0..5 {
        // Run until a sync starts, then fail it.
        for _ in 0..2_000 {
            s.step();
            if s.sync.is_some() {
                break;
            }
        }
        assert!(s.sync.is_some(), "no sync started: {:#?}", s.trace);
        s.sync = None;
        s.core.handle_state_sync_failed(s.at(s.now));
        s.drain();
        let last = s.notes.iter().rev().find_map(|n| match n {
            Note::SyncFailed { retry_in_secs, .. } => Some(*retry_in_secs),
            _ => None,
        });
        retries.extend(last);
    }
    assert_eq!(retries, vec![1.0, 2.0, 4.0, 8.0, 16.0]);
    // And it succeeds in the end.
    s.run(200.0).expect("never followed");
}

#[test]
fn without_state_a_node_replays_from_genesis_when_told_to() {
    let mut w = World {
        start_head: 200,
        replay_bps: 5_000.0,
        ..World::default()
    };
    w.cfg.replay_from_genesis = true;
    w.cfg.initial_replay_bps = 5_000.0;
    let mut s = Sim::new(w);
    s.run(60.0).expect("never followed");
    assert_eq!(phases(&s), vec![Waiting, Genesis, Replay, Following]);
    assert_eq!(s.core.stats().state_syncs, 0);
}

#[test]
fn with_no_peer_it_waits_quietly_and_says_so_once() {
    let mut s = Sim::new(World {
        peers: vec![],
        ..World::default()
    });
    assert!(s.run(60.0).is_none());
    assert_eq!(phases(&s), vec![Waiting]);
    let said = s
        .notes
        .iter()
        .filter(|n| matches!(n, Note::NoPeerWithBlocks))
        .count();
    assert_eq!(said, 1);
    // An idle core asks to be woken rarely, not in a loop.
    let next = s.core.poll_timeout().unwrap();
    assert!(next > s.at(s.now - 1.0));
}

#[test]
fn forced_plans_are_obeyed() {
    // Forced replay with state, even far behind.
    let mut w = World {
        local: (100, true),
        replay_bps: 20_000.0,
        ..World::default()
    };
    w.cfg.force = Force::Replay;
    let mut s = Sim::new(w);
    s.run(60.0).expect("never followed");
    assert_eq!(s.core.stats().state_syncs, 0);
    // Forced state sync, even a few hundred blocks behind.
    let mut w = World {
        local: (900, true),
        replay_bps: 20_000.0,
        ..World::default()
    };
    w.cfg.force = Force::StateSync;
    let mut s = Sim::new(w);
    s.run(60.0).expect("never followed");
    assert_eq!(s.core.stats().state_syncs, 1);
}

#[test]
fn the_simulation_is_deterministic() {
    let w = World {
        state_bytes: 1 << 30,
        fetch_bps: 10.0 * (1 << 20) as f64,
        ..World::default()
    };
    let mut a = Sim::new(w.clone());
    let mut b = Sim::new(w);
    assert_eq!(a.run(900.0), b.run(900.0));
    assert_eq!(a.trace, b.trace);
}

/// The decision uses the production rate it measures from peers' heads,
/// not the configured one: a chain configured for 5 blocks/s that makes 20.
#[test]
fn the_production_rate_is_measured_from_the_heads() {
    let mut w = World {
        local: (900, true),
        block_ms: 50, // the chain really makes 20 blocks/s
        start_head: 1_000,
        replay_bps: 60.0,
        ..World::default()
    };
    w.cfg.initial_replay_bps = 60.0;
    let mut s = Sim::new(w);
    let configured = Config {
        block_interval: Duration::from_millis(200),
        ..s.w.cfg.clone()
    };
    s.core = CatchUp::new(configured, 900, 900, true, s.t0);
    assert!((s.core.production_rate() - 5.0).abs() < 1e-9);
    s.run(120.0).expect("never followed");
    for _ in 0..400 {
        s.step(); // 20 s more of peers reporting their heads
    }
    let r = s.core.production_rate();
    assert!((r - 20.0).abs() < 3.0, "measured {r} blocks/s");
}
