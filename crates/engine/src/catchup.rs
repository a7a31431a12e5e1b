//! The catch-up phase machine of a chain node, with no I/O.
//!
//! It decides, from what peers report and what the node measures, how a
//! node that fell behind (or has nothing) gets to the head of the chain,
//! and when to change its mind:
//!
//! ```text
//! Waiting --decide--> Following                        (near the head)
//!    |    \---------> Replay ----------------------> Following
//!    |     \--------> AwaitAnchor -> StateSync -> Adopting -> Replay -> Following
//!    |                    ^   |          | (newer checkpoint: switch, keeping chunks)
//!    |                    |   v          v (nobody serves it: give up)
//!    +<-------------------+---+----------+  (anchor unusable, sync failed)
//!    \--------> Genesis -> Replay            (no state, replay from genesis)
//! ```
//!
//! Replay and state sync never run at once. A producing node (a leader) is
//! the head: it goes straight to following.
//!
//! # Driving it
//!
//! The shell (the chain node of `statesync-node`) owns the network, the
//! block store, the executor and the state fetch; it calls:
//!
//! 1. [`CatchUp::handle_peer_status`] / [`CatchUp::handle_peer_gone`] as
//!    peers report (head, history low, latest checkpoint) and leave, and
//!    [`CatchUp::handle_local`] after every change of the local chain
//!    (head, history low, whether it has state);
//! 2. the outcome of every action it performed: `handle_anchor*`,
//!    `handle_state_sync_*`, `handle_adopted`, `handle_genesis`,
//!    [`CatchUp::handle_replay_batch`] for each imported batch and
//!    [`CatchUp::handle_replay_done`] while the replay core has nothing
//!    left to fetch;
//! 3. [`CatchUp::handle_timeout`] at [`CatchUp::poll_timeout`] (or more
//!    often: it is idempotent), then takes [`CatchUp::poll_action`] until
//!    `None` and performs each [`Action`].
//!
//! Time is always passed in; nothing here reads a clock, so the
//! simulations in `tests/catchup.rs` run every transition on a virtual
//! clock, including the IC incident (a sync slower than the checkpoint
//! interval) and a checkpoint that nobody serves any more.
//!
//! # Rules
//!
//! - **Decide** (in `Waiting`, after a pause that doubles with each failed
//!   state sync, 0.5 s to 32 s): [`crate::decide::decide`] on the best
//!   head and the newest checkpoint offered by a peer not distrusted, with
//!   the measured replay and fetch rates.
//! - **Anchor**: a state sync starts only from a checkpoint header a peer
//!   sent and the shell verified (quorum signatures). Peers are asked in
//!   turn; a peer whose claimed checkpoint cannot be proven is distrusted
//!   (its checkpoint claims ignored from then on). No answer in
//!   [`Config::anchor_timeout`]: decide again.
//! - **Switch**: while syncing, a newer checkpoint is adopted when
//!   replaying the blocks in between would take longer than
//!   [`Config::switch_after_secs`] ([`crate::decide::should_switch`]),
//!   with a backoff of 2 s doubled per switch (so a sync always finishes,
//!   however fast checkpoints come).
//! - **Give up**: no peer has served the sync for
//!   [`Config::unserved_give_up`]: stop it (what was fetched is kept by
//!   the shell) and decide again.
//! - **Replay too slow**: every [`Config::redecide_every`] during replay,
//!   decide again; state sync replaces replay when it promises to be
//!   clearly faster.
//! - **Fell behind**: following, more than [`Config::lookup_depth`]
//!   blocks behind the best head for [`Config::fell_behind_after`]: replay.

use crate::decide::{self, Decision, Inputs, Plan};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::time::{Duration, Instant};

/// How the node may catch up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Force {
    /// Decide by measured replay and fetch rates.
    #[default]
    Auto,
    /// Always replay blocks (needs peers with the history).
    Replay,
    /// Always state sync to the latest checkpoint when behind.
    StateSync,
}

/// Tunables and facts about the chain.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node produces blocks: it is the head and only follows.
    pub produce: bool,
    /// Without local state, replay from genesis when that is the better
    /// plan and peers have the whole history (else: state sync).
    pub replay_from_genesis: bool,
    /// Force a plan instead of deciding by measured rates.
    pub force: Force,
    /// Move a running state sync to a newer checkpoint when replaying the
    /// blocks between them would take longer than this (seconds).
    pub switch_after_secs: f64,
    /// Size of the chain's state (bytes), for the decision.
    pub state_bytes: u64,
    /// Blocks between checkpoints (checkpoints are at its multiples).
    pub checkpoint_interval: u64,
    /// The chain's block time, for the decision's production rate.
    pub block_interval: Duration,
    /// Waiting this long for a checkpoint header: decide again.
    pub anchor_timeout: Duration,
    /// A state sync no peer serves this long is given up.
    pub unserved_give_up: Duration,
    /// During replay, decide again this often.
    pub redecide_every: Duration,
    /// Following further behind than this many blocks (the depth of a
    /// missing-block lookup) ...
    pub lookup_depth: u64,
    /// ... for this long: replay instead.
    pub fell_behind_after: Duration,
    /// With no peer reporting any block for this long, say so once.
    pub waiting_note_after: Duration,
    /// Replay rate assumed until measured (blocks per second).
    pub initial_replay_bps: f64,
    /// Fetch rate assumed until measured (bytes per second).
    pub initial_fetch_bps: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            produce: false,
            replay_from_genesis: false,
            force: Force::Auto,
            switch_after_secs: 2.0,
            state_bytes: 0,
            checkpoint_interval: 10,
            block_interval: Duration::from_millis(200),
            anchor_timeout: Duration::from_secs(10),
            unserved_give_up: Duration::from_secs(30),
            redecide_every: Duration::from_secs(5),
            lookup_depth: 32,
            fell_behind_after: Duration::from_secs(2),
            waiting_note_after: Duration::from_secs(10),
            initial_replay_bps: 500.0,
            initial_fetch_bps: 50e6,
        }
    }
}

/// What a peer reports about its chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PeerView {
    /// Its head height (0: nothing).
    pub head: u64,
    /// The lowest height of its block history.
    pub low: u64,
    /// Its latest checkpoint height (0: none).
    pub checkpoint: u64,
}

/// The phases, by name (for status and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseName {
    /// Deciding, or waiting for peers or a checkpoint.
    Waiting,
    /// Waiting for a checkpoint's header from a peer.
    AwaitAnchor,
    /// Fetching a checkpoint's state.
    StateSync,
    /// Installing a fetched checkpoint.
    Adopting,
    /// Creating the genesis state.
    Genesis,
    /// Fetching and executing blocks.
    Replay,
    /// At the head, taking new blocks as they come.
    Following,
}

impl PhaseName {
    /// A short lower-case label (`state sync`).
    pub fn label(self) -> &'static str {
        match self {
            PhaseName::Waiting => "waiting",
            PhaseName::AwaitAnchor => "await anchor",
            PhaseName::StateSync => "state sync",
            PhaseName::Adopting => "adopting",
            PhaseName::Genesis => "genesis",
            PhaseName::Replay => "replay",
            PhaseName::Following => "following",
        }
    }
}

impl std::fmt::Display for PhaseName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Phase {
    Waiting { since: Instant },
    AwaitAnchor { height: u64, asked: Instant },
    StateSync { height: u64, since: Instant },
    Adopting { height: u64 },
    Genesis,
    Replay,
    Following { since: Instant },
}

impl Phase {
    fn name(&self) -> PhaseName {
        match self {
            Phase::Waiting { .. } => PhaseName::Waiting,
            Phase::AwaitAnchor { .. } => PhaseName::AwaitAnchor,
            Phase::StateSync { .. } => PhaseName::StateSync,
            Phase::Adopting { .. } => PhaseName::Adopting,
            Phase::Genesis => PhaseName::Genesis,
            Phase::Replay => PhaseName::Replay,
            Phase::Following { .. } => PhaseName::Following,
        }
    }
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action<P> {
    /// Ask `peer` for the header (the block) of checkpoint `height`, verify
    /// it (quorum signatures), and report with [`CatchUp::handle_anchor`]
    /// or [`CatchUp::handle_anchor_failed`].
    AskAnchor {
        /// Who to ask.
        peer: P,
        /// The checkpoint's height.
        height: u64,
    },
    /// Start a state sync to the checkpoint at `height` (its verified
    /// header gives the root). With `switch_from`, a sync to that lower
    /// height is running: replace it, keeping what it fetched.
    StartStateSync {
        /// The checkpoint's height.
        height: u64,
        /// The height of the sync being replaced.
        switch_from: Option<u64>,
    },
    /// Stop the running state sync (what it fetched stays on disk).
    StopStateSync,
    /// Install the synced checkpoint of `height`; report with
    /// [`CatchUp::handle_adopted`].
    Adopt {
        /// The checkpoint's height.
        height: u64,
    },
    /// Create the genesis state; report with [`CatchUp::handle_genesis`].
    InitGenesis,
    /// Start fetching and executing blocks from the local head.
    StartReplay,
    /// Stop replaying (a state sync takes over).
    StopReplay,
    /// Something a person or a timeline should see.
    Note(Note),
}

/// Events worth a log line.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Note {
    /// The phase changed.
    Phase {
        /// Previous phase.
        from: PhaseName,
        /// New phase.
        to: PhaseName,
        /// Local head at the change.
        head: u64,
    },
    /// A new plan was chosen.
    Decided {
        /// The decision with its figures.
        decision: Decision,
    },
    /// No peer has reported any block yet.
    NoPeerWithBlocks,
    /// A peer could not prove the checkpoint it claimed: its checkpoint
    /// claims are ignored from now on.
    AnchorUnusable {
        /// The checkpoint's height.
        height: u64,
    },
    /// A running state sync moves to a newer checkpoint.
    Switching {
        /// The height being left.
        from: u64,
        /// The newer checkpoint.
        to: u64,
    },
    /// Nobody serves the checkpoint being synced any more.
    GaveUp {
        /// The checkpoint's height.
        height: u64,
    },
    /// A state sync failed locally (a full disk, say): decide again after
    /// a pause.
    SyncFailed {
        /// The checkpoint's height.
        height: u64,
        /// Seconds until the next decision.
        retry_in_secs: f64,
    },
    /// Replay is losing against production: state sync instead.
    ReplayTooSlow {
        /// Why.
        reason: String,
    },
    /// Following fell too far behind for lookups: replay.
    FellBehind {
        /// Local head.
        head: u64,
        /// Best head known.
        best: u64,
    },
}

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// State syncs started (switches included).
    pub state_syncs: u64,
    /// Moves of a running sync to a newer checkpoint.
    pub switches: u64,
    /// State syncs given up because nobody served them.
    pub given_up: u64,
    /// State syncs that failed locally.
    pub failed: u64,
    /// Checkpoint headers that proved unusable.
    pub anchors_unusable: u64,
}

/// The catch-up core; `P` identifies peers.
pub struct CatchUp<P> {
    cfg: Config,
    phase: Phase,
    head: u64,
    low: u64,
    has_state: bool,
    peers: BTreeMap<P, PeerView>,
    distrusted: BTreeSet<P>,
    replay_bps: f64,
    fetch_bps: f64,
    last_replay_batch: Option<Instant>,
    last_decide: Option<Instant>,
    failures_in_row: u32,
    last_switch: Option<Instant>,
    switch_asked: Option<(u64, Instant)>,
    /// Switches are considered at most once a second.
    last_switch_check: Option<Instant>,
    anchor_asks: usize,
    sync_usable: usize,
    unserved_since: Option<Instant>,
    behind_since: Option<Instant>,
    decision: Option<Decision>,
    noted_no_peers: bool,
    /// (time, best head) as the head moved, over the last minute.
    head_samples: VecDeque<(Instant, u64)>,
    actions: VecDeque<Action<P>>,
    stats: Stats,
}

impl<P: Clone + Ord + Debug> CatchUp<P> {
    /// A node whose local chain is at `head` (history from `low`, with or
    /// without executable state), starting to wait at `now`.
    pub fn new(cfg: Config, head: u64, low: u64, has_state: bool, now: Instant) -> CatchUp<P> {
        CatchUp {
            replay_bps: cfg.initial_replay_bps,
            fetch_bps: cfg.initial_fetch_bps,
            cfg,
            phase: Phase::Waiting { since: now },
            head,
            low,
            has_state,
            peers: BTreeMap::new(),
            distrusted: BTreeSet::new(),
            last_replay_batch: None,
            last_decide: None,
            failures_in_row: 0,
            last_switch: None,
            switch_asked: None,
            last_switch_check: None,
            anchor_asks: 0,
            sync_usable: 0,
            unserved_since: None,
            behind_since: None,
            decision: None,
            noted_no_peers: false,
            head_samples: VecDeque::new(),
            actions: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    // ---- observation ----

    /// The current phase.
    pub fn phase(&self) -> PhaseName {
        self.phase.name()
    }

    /// The checkpoint height being fetched or awaited, if any.
    pub fn target(&self) -> Option<u64> {
        match self.phase {
            Phase::AwaitAnchor { height, .. }
            | Phase::StateSync { height, .. }
            | Phase::Adopting { height } => Some(height),
            _ => None,
        }
    }

    /// Since when the node follows the head, if it does.
    pub fn following_since(&self) -> Option<Instant> {
        match self.phase {
            Phase::Following { since } => Some(since),
            _ => None,
        }
    }

    /// The highest head reported by a peer, or the local one if higher.
    pub fn best_head(&self) -> u64 {
        self.peers
            .values()
            .map(|s| s.head)
            .max()
            .unwrap_or(0)
            .max(self.head)
    }

    /// What each peer reported.
    pub fn peers(&self) -> impl Iterator<Item = (&P, &PeerView)> {
        self.peers.iter()
    }

    /// The last decision, with its figures.
    pub fn decision(&self) -> Option<&Decision> {
        self.decision.as_ref()
    }

    /// Measured replay rate (blocks per second, smoothed).
    pub fn replay_rate(&self) -> f64 {
        self.replay_bps
    }

    /// Measured state fetch rate (bytes per second).
    pub fn fetch_rate(&self) -> f64 {
        self.fetch_bps
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    // ---- inputs ----

    /// `peer` reported its chain.
    pub fn handle_peer_status(&mut self, peer: P, view: PeerView, now: Instant) {
        self.peers.insert(peer, view);
        self.sample_head(now);
        self.handle_timeout(now);
    }

    /// `peer` announced a block at `height` (a push): its head is at least
    /// that.
    pub fn handle_peer_head(&mut self, peer: &P, height: u64) {
        if let Some(v) = self.peers.get_mut(peer) {
            v.head = v.head.max(height);
        }
    }

    /// `peer` went away.
    pub fn handle_peer_gone(&mut self, peer: &P) {
        self.peers.remove(peer);
    }

    /// The local chain changed: head, history low, state.
    pub fn handle_local(&mut self, head: u64, low: u64, has_state: bool) {
        self.head = head;
        self.low = low;
        self.has_state = has_state;
    }

    /// The header of checkpoint `height` asked of `peer` arrived: `valid`
    /// if it verified (a checkpoint height, signed by a quorum).
    pub fn handle_anchor(&mut self, height: u64, peer: &P, valid: bool, now: Instant) {
        // Only the answer being waited for: a late one must not start a
        // state sync while replaying (never both at once).
        let wanted = match &self.phase {
            Phase::AwaitAnchor { height: h, .. } => *h == height,
            Phase::StateSync { height: cur, .. } => {
                self.switch_asked.is_some_and(|(h, _)| h == height) && height > *cur
            }
            _ => false,
        };
        if !wanted {
            return;
        }
        if valid && self.is_checkpoint(height) {
            self.start_state_sync(height, now);
        } else {
            self.distrusted.insert(peer.clone());
            self.stats.anchors_unusable += 1;
            self.note(Note::AnchorUnusable { height });
            self.switch_asked = None;
            if matches!(self.phase, Phase::AwaitAnchor { .. }) {
                self.set_phase(Phase::Waiting { since: now });
            }
        }
    }

    /// The request for checkpoint `height`'s header failed (no answer).
    pub fn handle_anchor_failed(&mut self, height: u64, now: Instant) {
        if matches!(self.phase, Phase::AwaitAnchor { height: h, .. } if h == height) {
            self.set_phase(Phase::Waiting { since: now });
        }
        if self.switch_asked.is_some_and(|(h, _)| h == height) {
            self.switch_asked = None;
        }
    }

    /// How many peers the running state sync can still ask.
    pub fn handle_state_sync_peers(&mut self, usable: usize, now: Instant) {
        self.sync_usable = usable;
        if usable > 0 {
            self.unserved_since = None;
        } else if self.unserved_since.is_none() {
            self.unserved_since = Some(now);
        }
    }

    /// The state sync finished: `bytes` fetched from peers in `secs`.
    pub fn handle_state_sync_done(&mut self, bytes: u64, secs: f64, _now: Instant) {
        let Phase::StateSync { height, .. } = self.phase else {
            return;
        };
        self.failures_in_row = 0;
        if secs > 0.5 && bytes > 0 {
            self.fetch_bps = bytes as f64 / secs;
        }
        self.set_phase(Phase::Adopting { height });
        self.actions.push_back(Action::Adopt { height });
    }

    /// The state sync could not start or failed locally (a full disk):
    /// decide again after a pause that doubles with each failure in a row.
    pub fn handle_state_sync_failed(&mut self, now: Instant) {
        let height = self.target().unwrap_or(0);
        self.stats.failed += 1;
        self.failures_in_row += 1;
        self.last_decide = Some(now);
        let retry_in_secs = self.decide_pause().as_secs_f64();
        self.note(Note::SyncFailed {
            height,
            retry_in_secs,
        });
        self.set_phase(Phase::Waiting { since: now });
    }

    /// The synced checkpoint was installed (or not).
    pub fn handle_adopted(&mut self, ok: bool, now: Instant) {
        if !matches!(self.phase, Phase::Adopting { .. }) {
            return;
        }
        if ok {
            self.start_replay();
        } else {
            self.stats.failed += 1;
            self.set_phase(Phase::Waiting { since: now });
        }
    }

    /// The genesis state was created (or not).
    pub fn handle_genesis(&mut self, ok: bool, now: Instant) {
        if self.phase != Phase::Genesis {
            return;
        }
        if ok {
            self.start_replay();
        } else {
            self.set_phase(Phase::Waiting { since: now });
        }
    }

    /// A replayed batch of `blocks` was imported at `now` (the rate is
    /// measured end to end, between consecutive batches).
    pub fn handle_replay_batch(&mut self, blocks: u64, secs: f64, now: Instant) {
        if let Some(prev) = self.last_replay_batch {
            let dt = now
                .saturating_duration_since(prev)
                .as_secs_f64()
                .max(secs)
                .max(1e-3);
            self.replay_bps = 0.7 * self.replay_bps + 0.3 * (blocks as f64 / dt);
        }
        self.last_replay_batch = Some(now);
    }

    /// The replay core has nothing left to fetch: following if at the head.
    pub fn handle_replay_done(&mut self, now: Instant) {
        if self.phase == Phase::Replay && self.head + decide::FOLLOW_DISTANCE >= self.best_head() {
            self.actions.push_back(Action::StopReplay);
            self.set_phase(Phase::Following { since: now });
        }
    }

    /// The earliest time [`CatchUp::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let after = |t: Option<Instant>, d: Duration| t.map(|t| t + d);
        match &self.phase {
            Phase::Waiting { since } => {
                let decide = self.last_decide.map(|t| t + self.decide_pause());
                Some(decide.unwrap_or(*since))
            }
            Phase::AwaitAnchor { asked, .. } => Some(*asked + self.cfg.anchor_timeout),
            Phase::StateSync { .. } => {
                let give_up = after(self.unserved_since, self.cfg.unserved_give_up);
                let switch = self.next_switch_check();
                [give_up, switch].into_iter().flatten().min()
            }
            Phase::Replay => after(self.last_decide, self.cfg.redecide_every),
            Phase::Following { .. } => after(self.behind_since, self.cfg.fell_behind_after),
            Phase::Adopting { .. } | Phase::Genesis => None,
        }
    }

    /// Time-driven transitions: decide, anchor timeouts, switches, giving
    /// up, re-deciding during replay, falling behind.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase.clone() {
            Phase::Waiting { since } => {
                if self
                    .last_decide
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.decide_pause())
                {
                    self.decide(since, now);
                }
            }
            Phase::AwaitAnchor { asked, .. } => {
                if now.saturating_duration_since(asked) >= self.cfg.anchor_timeout {
                    self.set_phase(Phase::Waiting { since: now });
                }
            }
            Phase::StateSync { height, .. } => {
                if self
                    .unserved_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.unserved_give_up)
                {
                    self.unserved_since = None;
                    self.switch_asked = None;
                    self.stats.given_up += 1;
                    self.actions.push_back(Action::StopStateSync);
                    self.note(Note::GaveUp { height });
                    self.set_phase(Phase::Waiting { since: now });
                } else {
                    self.check_switch(height, now);
                }
            }
            Phase::Replay => {
                if self
                    .last_decide
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.redecide_every)
                {
                    self.last_decide = Some(now);
                    let d = self.decision_now();
                    if let Plan::StateSync { height } = d.plan
                        && height > self.head
                    {
                        self.note(Note::ReplayTooSlow {
                            reason: d.reason.clone(),
                        });
                        self.decision = Some(d);
                        if self.ask_anchor(height, now) {
                            // Never both at once: replay stops here.
                            self.actions.push_back(Action::StopReplay);
                        }
                    }
                }
            }
            Phase::Following { .. } => {
                let behind =
                    !self.cfg.produce && self.best_head() > self.head + self.cfg.lookup_depth;
                if !behind {
                    self.behind_since = None;
                } else if let Some(t) = self.behind_since {
                    if now.saturating_duration_since(t) >= self.cfg.fell_behind_after {
                        self.behind_since = None;
                        self.note(Note::FellBehind {
                            head: self.head,
                            best: self.best_head(),
                        });
                        self.start_replay();
                    }
                } else {
                    self.behind_since = Some(now);
                }
            }
            Phase::Adopting { .. } | Phase::Genesis => {}
        }
    }

    // ---- internals ----

    fn is_checkpoint(&self, h: u64) -> bool {
        h > 0 && h.is_multiple_of(self.cfg.checkpoint_interval.max(1))
    }

    fn note(&mut self, n: Note) {
        self.actions.push_back(Action::Note(n));
    }

    fn set_phase(&mut self, p: Phase) {
        let from = self.phase.name();
        self.phase = p;
        let to = self.phase.name();
        if from != to {
            let head = self.head;
            self.note(Note::Phase { from, to, head });
        }
    }

    fn decide_pause(&self) -> Duration {
        Duration::from_millis(500) * 2u32.pow(self.failures_in_row.min(6))
    }

    /// The chain's production rate: measured from the best head over the
    /// last 5 to 60 s, the configured block time until then.
    fn produced_bps(&self) -> f64 {
        let configured = 1.0 / self.cfg.block_interval.as_secs_f64().max(1e-3);
        match (self.head_samples.front(), self.head_samples.back()) {
            (Some(a), Some(b)) if b.0.saturating_duration_since(a.0) >= Duration::from_secs(5) => {
                let dt = b.0.saturating_duration_since(a.0).as_secs_f64();
                (b.1.saturating_sub(a.1) as f64 / dt).max(0.0)
            }
            _ => configured,
        }
    }

    /// The production rate the decisions use (blocks per second).
    pub fn production_rate(&self) -> f64 {
        self.produced_bps()
    }

    /// Records the best head as it moves (for the production rate).
    fn sample_head(&mut self, now: Instant) {
        let best = self.best_head();
        if self.head_samples.back().is_some_and(|s| s.1 >= best) {
            return;
        }
        self.head_samples.push_back((now, best));
        while self
            .head_samples
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.0) > Duration::from_secs(60))
        {
            self.head_samples.pop_front();
        }
    }

    fn start_replay(&mut self) {
        self.last_replay_batch = None;
        self.last_decide = None;
        self.actions.push_back(Action::StartReplay);
        self.set_phase(Phase::Replay);
    }

    /// Newest checkpoint offered by a peer we trust. A claim above the
    /// claimer's own head is nonsense and ignored (no peer could be asked
    /// for its header, and it would hold the decision forever).
    fn offered_checkpoint(&self) -> Option<u64> {
        self.peers
            .iter()
            .filter(|(p, _)| !self.distrusted.contains(*p))
            .filter(|(_, s)| s.checkpoint <= s.head)
            .map(|(_, s)| s.checkpoint)
            .filter(|c| self.is_checkpoint(*c))
            .max()
    }

    fn decision_now(&self) -> Decision {
        let can_replay_from = |h: u64| {
            self.peers
                .values()
                .any(|s| s.head > h && s.low.max(1) <= h + 1)
        };
        let local_height = if self.has_state && can_replay_from(self.head) {
            Some(self.head)
        } else if !self.has_state && self.cfg.replay_from_genesis && can_replay_from(0) {
            Some(0)
        } else if self.has_state && self.best_head() <= self.head + decide::FOLLOW_DISTANCE {
            Some(self.head)
        } else {
            None
        };
        let checkpoint = self.offered_checkpoint();
        let mut d = decide::decide(&Inputs {
            local_height,
            head: self.best_head(),
            checkpoint,
            state_bytes: self.cfg.state_bytes,
            reusable_bytes: 0,
            replay_blocks_per_sec: self.replay_bps,
            fetch_bytes_per_sec: self.fetch_bps,
            produced_blocks_per_sec: self.produced_bps(),
        });
        match (self.cfg.force, d.plan, checkpoint) {
            (Force::Replay, Plan::StateSync { .. }, _)
                if local_height.is_some() || self.cfg.replay_from_genesis =>
            {
                d.plan = Plan::Replay;
                d.reason = format!("replay forced ({})", d.reason);
            }
            (Force::StateSync, Plan::Replay, Some(cp)) if cp > self.head => {
                d.plan = Plan::StateSync { height: cp };
                d.reason = format!("state sync forced ({})", d.reason);
            }
            _ => {}
        }
        d
    }

    fn decide(&mut self, since: Instant, now: Instant) {
        self.last_decide = Some(now);
        if self.cfg.produce {
            self.set_phase(Phase::Following { since: now });
            return;
        }
        if self.peers.values().all(|s| s.head == 0) {
            // Peers at genesis like us: we are at the head (a validator of
            // a chain that has not begun).
            if self.has_state && self.head == 0 && !self.peers.is_empty() {
                self.set_phase(Phase::Following { since: now });
                return;
            }
            if now.saturating_duration_since(since) > self.cfg.waiting_note_after
                && !self.noted_no_peers
            {
                self.noted_no_peers = true;
                self.note(Note::NoPeerWithBlocks);
            }
            return;
        }
        let d = self.decision_now();
        if self.decision.as_ref().is_none_or(|o| o.plan != d.plan) {
            self.note(Note::Decided {
                decision: d.clone(),
            });
        }
        let plan = d.plan;
        self.decision = Some(d);
        match plan {
            Plan::Follow => self.set_phase(Phase::Following { since: now }),
            Plan::Replay if !self.has_state => {
                if self.cfg.replay_from_genesis {
                    self.set_phase(Phase::Genesis);
                    self.actions.push_back(Action::InitGenesis);
                }
                // Else: wait for a checkpoint to be offered.
            }
            Plan::Replay => self.start_replay(),
            Plan::StateSync { height } => {
                self.ask_anchor(height, now);
            }
        }
    }

    /// Asks a peer that should have it for the header of checkpoint
    /// `height` (peers in turn); false if no peer can serve it.
    fn ask_anchor(&mut self, height: u64, now: Instant) -> bool {
        let cands: Vec<P> = self
            .peers
            .iter()
            .filter(|(p, s)| {
                s.low.max(1) <= height && s.head >= height && !self.distrusted.contains(*p)
            })
            .map(|(p, _)| p.clone())
            .collect();
        self.anchor_asks += 1;
        let Some(peer) = cands.get(self.anchor_asks % cands.len().max(1)).cloned() else {
            return false;
        };
        self.actions.push_back(Action::AskAnchor { peer, height });
        if matches!(self.phase, Phase::StateSync { .. }) {
            self.switch_asked = Some((height, now));
        } else {
            self.set_phase(Phase::AwaitAnchor { height, asked: now });
        }
        true
    }

    fn switch_backoff(&self) -> Duration {
        Duration::from_secs(2) * 2u32.saturating_pow(self.stats.switches.min(8) as u32)
    }

    fn next_switch_check(&self) -> Option<Instant> {
        let newer = self.offered_checkpoint()?;
        match self.phase {
            Phase::StateSync { height, .. } if newer > height => {}
            _ => return None,
        }
        let backoff = self.last_switch.map(|t| t + self.switch_backoff());
        let asked = self.switch_asked.map(|(_, t)| t + self.cfg.anchor_timeout);
        let throttle = self.last_switch_check.map(|t| t + Duration::from_secs(1));
        [backoff, asked, throttle].into_iter().flatten().max()
    }

    fn check_switch(&mut self, current: u64, now: Instant) {
        // Switches back off exponentially (2 s, 4 s, 8 s, ...): each costs
        // only what changed, and the backoff guarantees a sync finishes even
        // when checkpoints come faster than any switch could complete.
        if self
            .last_switch_check
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_switch_check = Some(now);
        if self
            .switch_asked
            .is_some_and(|(_, t)| now.saturating_duration_since(t) < self.cfg.anchor_timeout)
            || self
                .last_switch
                .is_some_and(|t| now.saturating_duration_since(t) < self.switch_backoff())
        {
            return;
        }
        let Some(newer) = self.offered_checkpoint().filter(|c| *c > current) else {
            return;
        };
        let since = match self.phase {
            Phase::StateSync { since, .. } => since,
            _ => now,
        };
        let served =
            self.sync_usable > 0 || now.saturating_duration_since(since) < Duration::from_secs(5);
        if decide::should_switch(
            current,
            newer,
            served,
            self.replay_bps,
            self.produced_bps(),
            self.cfg.switch_after_secs,
        ) {
            self.ask_anchor(newer, now);
        }
    }

    fn start_state_sync(&mut self, height: u64, now: Instant) {
        if height <= self.head && self.has_state {
            return;
        }
        let switch_from = match self.phase {
            Phase::StateSync { height: cur, .. } if cur >= height => return,
            Phase::StateSync { height: cur, .. } => {
                self.stats.switches += 1;
                self.note(Note::Switching {
                    from: cur,
                    to: height,
                });
                Some(cur)
            }
            _ => None,
        };
        self.switch_asked = None;
        self.unserved_since = None;
        self.sync_usable = 0;
        // The switch backoff counts from the start of every sync.
        self.last_switch = Some(now);
        self.stats.state_syncs += 1;
        self.actions.push_back(Action::StartStateSync {
            height,
            switch_from,
        });
        self.set_phase(Phase::StateSync { height, since: now });
    }
}
