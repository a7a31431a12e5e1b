//! The peer set manager: keeps between `min_peers` and `max_peers`
//! connections, dials known peers with a per-peer exponential backoff, runs
//! discovery with a cooldown that grows after rounds that find nobody, and
//! never loops when there is nothing to do. It owns the known peers (up to
//! 4096, with up to 8 addresses each), their dial state and backoffs, and
//! the discovery schedule; the shell owns the swarm.
//!
//! This is the Harmony incident (CPU and memory to 100% after 2-3 days of
//! discovery and stream setup storms) turned into rules:
//! - at most `max_concurrent_dials` dials in flight;
//! - a peer whose dial failed waits `dial_backoff_base * 2^(failures - 1)`
//!   (capped at `dial_backoff_max`) before the next dial, on its next
//!   address; a peer that disconnected waits
//!   `dial_backoff_base * 2^(drops - 1)` (capped), `drops` counting every
//!   time it was dropped;
//! - discovery runs only below `min_peers`, never while another round is in
//!   flight, and waits `discovery_cooldown` after a round that found peers and
//!   `empty_cooldown_base * 2^(empty rounds - 1)` (capped) after one that found
//!   nobody;
//! - a dial with no outcome is given up after `dial_timeout` (a failure),
//!   and so is a discovery round (as one that found nobody).
//!
//! Sans-IO: the shell reports events with the current time
//! ([`PeerManager::add_known`], [`PeerManager::connected`],
//! [`PeerManager::disconnected`], [`PeerManager::dial_failed`],
//! [`PeerManager::discovery_done`], [`PeerManager::penalize`]), calls
//! [`PeerManager::tick`] periodically, and performs the [`PeerAction`]s it
//! takes from [`PeerManager::poll_action`].

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Tunables.
#[derive(Clone, Debug)]
pub struct PeerManagerConfig {
    /// Below this many connections, known peers are dialled and, with none
    /// to dial, discovery runs.
    pub min_peers: usize,
    /// Above this many connections, the newest non-bootstrap ones are
    /// closed.
    pub max_peers: usize,
    /// Dials in flight at most.
    pub max_concurrent_dials: usize,
    /// A dial, or a discovery round, with no outcome after this long is
    /// given up.
    pub dial_timeout: Duration,
    /// Wait before redialling a peer after its first failed dial or drop;
    /// doubled for each further one.
    pub dial_backoff_base: Duration,
    /// Longest such wait.
    pub dial_backoff_max: Duration,
    /// Wait before the next discovery round after one that found peers.
    pub discovery_cooldown: Duration,
    /// Wait after a first discovery round that found nobody; doubled for
    /// each further empty round.
    pub empty_cooldown_base: Duration,
    /// Longest such wait.
    pub empty_cooldown_max: Duration,
    /// Wait before redialing a peer we banned or that misbehaved.
    pub penalty: Duration,
}

impl Default for PeerManagerConfig {
    fn default() -> Self {
        // Harmony mainnet: low 6 / soft low 8 / high 128, checks every 30 s,
        // discovery timeout 10 s. Ours are per node role; these defaults suit
        // a syncing node.
        PeerManagerConfig {
            min_peers: 8,
            max_peers: 64,
            max_concurrent_dials: 8,
            dial_timeout: Duration::from_secs(20),
            dial_backoff_base: Duration::from_secs(1),
            dial_backoff_max: Duration::from_secs(300),
            discovery_cooldown: Duration::from_secs(10),
            empty_cooldown_base: Duration::from_secs(30),
            empty_cooldown_max: Duration::from_secs(600),
            penalty: Duration::from_secs(600),
        }
    }
}

/// What the shell must do, from [`PeerManager::poll_action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAction<P, A> {
    /// Dial this peer at this address (its addresses are tried in turn
    /// after failures); report [`PeerManager::connected`] or
    /// [`PeerManager::dial_failed`].
    Dial(P, A),
    /// Run a discovery round; report [`PeerManager::discovery_done`].
    Discover,
    /// Close the connections to this peer (over `max_peers`); report
    /// [`PeerManager::disconnected`] once closed.
    Disconnect(P),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Idle,
    Dialing(Instant),
    Connected(Instant),
}

#[derive(Clone, Debug)]
struct Known<A> {
    addrs: Vec<A>,
    bootstrap: bool,
    state: State,
    next_dial: Instant,
    failures: u32,
    drops: u32,
    next_addr: usize,
}

/// Counters, for metrics and the churn regression test.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Dials started.
    pub dials: u64,
    /// Discovery rounds started.
    pub discoveries: u64,
    /// Disconnects asked for (over `max_peers`).
    pub disconnects: u64,
}

/// The peer set manager; see the module documentation. `P` identifies a
/// peer, `A` is an address.
pub struct PeerManager<P, A> {
    cfg: PeerManagerConfig,
    known: HashMap<P, Known<A>>,
    actions: VecDeque<PeerAction<P, A>>,
    discovering: Option<Instant>,
    next_discovery: Option<Instant>,
    empty_rounds: u32,
    /// Counters.
    pub stats: PeerStats,
}

const MAX_ADDRS: usize = 8;
const MAX_KNOWN: usize = 4096;

impl<P: Clone + Eq + Hash + Ord + Debug, A: Clone + PartialEq> PeerManager<P, A> {
    /// No known peers yet; nothing happens until the first event or tick.
    pub fn new(cfg: PeerManagerConfig) -> PeerManager<P, A> {
        PeerManager {
            cfg,
            known: HashMap::new(),
            actions: VecDeque::new(),
            discovering: None,
            next_discovery: None,
            empty_rounds: 0,
            stats: PeerStats::default(),
        }
    }

    /// Peers currently connected.
    pub fn connected_count(&self) -> usize {
        self.known
            .values()
            .filter(|k| matches!(k.state, State::Connected(_)))
            .count()
    }

    fn dialing_count(&self) -> usize {
        self.known
            .values()
            .filter(|k| matches!(k.state, State::Dialing(_)))
            .count()
    }

    /// The next action for the shell, in order; `None` until an event or a
    /// tick creates more.
    pub fn poll_action(&mut self) -> Option<PeerAction<P, A>> {
        self.actions.pop_front()
    }

    /// A peer and one of its addresses became known (bootstrap list,
    /// identify, discovery). Bounded: addresses per peer and peers in total
    /// (beyond them the address or peer is ignored). A new peer may be
    /// dialled at once.
    pub fn add_known(&mut self, peer: P, addr: A, bootstrap: bool, now: Instant) {
        if !self.known.contains_key(&peer) && self.known.len() >= MAX_KNOWN {
            return;
        }
        let k = self.known.entry(peer).or_insert_with(|| Known {
            addrs: Vec::new(),
            bootstrap,
            state: State::Idle,
            next_dial: now,
            failures: 0,
            drops: 0,
            next_addr: 0,
        });
        k.bootstrap |= bootstrap;
        if !k.addrs.contains(&addr) && k.addrs.len() < MAX_ADDRS {
            k.addrs.push(addr);
        }
        self.tick(now);
    }

    /// A connection to `peer` is established (dialled by either side): it
    /// counts towards the limits and its dial failures are forgotten. An
    /// unknown peer becomes known, without an address to redial.
    pub fn connected(&mut self, peer: P, now: Instant) {
        let k = self.known.entry(peer).or_insert_with(|| Known {
            addrs: Vec::new(),
            bootstrap: false,
            state: State::Idle,
            next_dial: now,
            failures: 0,
            drops: 0,
            next_addr: 0,
        });
        k.state = State::Connected(now);
        k.failures = 0;
        self.tick(now);
    }

    /// The connection to `peer` closed: it may be dialled again after
    /// `dial_backoff_base * 2^(drops - 1)` (capped), `drops` counting every
    /// disconnect of this peer so far. That wait replaces any earlier one,
    /// a [`PeerManager::penalize`] included.
    pub fn disconnected(&mut self, peer: P, now: Instant) {
        let (base, max) = (self.cfg.dial_backoff_base, self.cfg.dial_backoff_max);
        if let Some(k) = self.known.get_mut(&peer) {
            k.state = State::Idle;
            k.drops = k.drops.saturating_add(1);
            k.next_dial = now + backoff(base, k.drops, max);
        }
        self.tick(now);
    }

    /// A dial of `peer` failed (or timed out): its next dial waits
    /// `dial_backoff_base * 2^(failures - 1)` (capped) and uses its next
    /// address. Ignored for a connected peer.
    pub fn dial_failed(&mut self, peer: P, now: Instant) {
        let (base, max) = (self.cfg.dial_backoff_base, self.cfg.dial_backoff_max);
        if let Some(k) = self.known.get_mut(&peer)
            && !matches!(k.state, State::Connected(_))
        {
            k.state = State::Idle;
            k.failures = k.failures.saturating_add(1);
            k.next_dial = now + backoff(base, k.failures, max);
            k.next_addr += 1;
        }
        self.tick(now);
    }

    /// The peer misbehaved: do not dial it for [`PeerManagerConfig::penalty`]
    /// from now. It is not disconnected, and a later
    /// [`PeerManager::disconnected`] replaces the wait with its own.
    pub fn penalize(&mut self, peer: &P, now: Instant) {
        if let Some(k) = self.known.get_mut(peer) {
            k.next_dial = now + self.cfg.penalty;
        }
    }

    /// A discovery round finished and found `new_peers` addresses.
    pub fn discovery_done(&mut self, new_peers: usize, now: Instant) {
        self.discovering = None;
        if new_peers == 0 {
            self.empty_rounds = self.empty_rounds.saturating_add(1);
            self.next_discovery = Some(
                now + backoff(
                    self.cfg.empty_cooldown_base,
                    self.empty_rounds,
                    self.cfg.empty_cooldown_max,
                ),
            );
        } else {
            self.empty_rounds = 0;
            self.next_discovery = Some(now + self.cfg.discovery_cooldown);
        }
        self.tick(now);
    }

    /// The periodic check, also run by every event method but
    /// [`PeerManager::penalize`]: gives up dials and discovery rounds with no
    /// outcome, dials or discovers below `min_peers`, disconnects above
    /// `max_peers`.
    pub fn tick(&mut self, now: Instant) {
        // Dials with no outcome.
        let timeout = self.cfg.dial_timeout;
        let stuck: Vec<P> = self
            .known
            .iter()
            .filter(|(_, k)| matches!(k.state, State::Dialing(t) if now.saturating_duration_since(t) >= timeout))
            .map(|(p, _)| p.clone())
            .collect();
        for p in stuck {
            self.dial_failed(p, now);
        }
        if self
            .discovering
            .is_some_and(|t| now.saturating_duration_since(t) >= timeout)
        {
            self.discovery_done(0, now);
        }
        let connected = self.connected_count();
        if connected < self.cfg.min_peers {
            let want = (self.cfg.min_peers - connected).min(
                self.cfg
                    .max_concurrent_dials
                    .saturating_sub(self.dialing_count()),
            );
            let mut cands: Vec<(&P, &Known<A>)> = self
                .known
                .iter()
                .filter(|(_, k)| {
                    k.state == State::Idle && k.next_dial <= now && !k.addrs.is_empty()
                })
                .collect();
            // Bootstrap peers first, then those that failed least.
            cands.sort_by(|a, b| {
                b.1.bootstrap
                    .cmp(&a.1.bootstrap)
                    .then(a.1.failures.cmp(&b.1.failures))
                    .then(a.0.cmp(b.0))
            });
            let picks: Vec<P> = cands
                .into_iter()
                .take(want)
                .map(|(p, _)| p.clone())
                .collect();
            let have_candidates = !picks.is_empty();
            for p in picks {
                if let Some(k) = self.known.get_mut(&p) {
                    let addr = k.addrs[k.next_addr % k.addrs.len()].clone();
                    k.state = State::Dialing(now);
                    self.stats.dials += 1;
                    self.actions.push_back(PeerAction::Dial(p, addr));
                }
            }
            if !have_candidates
                && self.dialing_count() == 0
                && self.discovering.is_none()
                && self.next_discovery.is_none_or(|t| t <= now)
            {
                self.discovering = Some(now);
                self.stats.discoveries += 1;
                self.actions.push_back(PeerAction::Discover);
            }
        } else if connected > self.cfg.max_peers {
            // Drop the most recently connected non-bootstrap peers.
            let mut conns: Vec<(P, Instant, bool)> = self
                .known
                .iter()
                .filter_map(|(p, k)| match k.state {
                    State::Connected(t) => Some((p.clone(), t, k.bootstrap)),
                    _ => None,
                })
                .collect();
            conns.sort_by(|a, b| a.2.cmp(&b.2).then(b.1.cmp(&a.1)).then(a.0.cmp(&b.0)));
            for (p, _, _) in conns.into_iter().take(connected - self.cfg.max_peers) {
                if let Some(k) = self.known.get_mut(&p) {
                    // Counted as disconnected when the shell reports it.
                    k.next_dial = now + self.cfg.dial_backoff_max;
                }
                self.stats.disconnects += 1;
                self.actions.push_back(PeerAction::Disconnect(p));
            }
        }
    }

    /// When the shell should call [`PeerManager::tick`] next, if anything is
    /// scheduled; `None` means only an event can create work. It can be in
    /// the past with nothing due (a peer whose backoff is over, or a
    /// discovery cooldown that ended, while enough peers are connected): a
    /// shell that sleeps until then must sleep at least a little.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let dials = self
            .known
            .values()
            .filter(|k| k.state == State::Idle && !k.addrs.is_empty())
            .map(|k| k.next_dial);
        let stuck = self.known.values().filter_map(|k| match k.state {
            State::Dialing(t) => Some(t + self.cfg.dial_timeout),
            _ => None,
        });
        let disc = self.next_discovery.into_iter();
        dials.chain(stuck).chain(disc).min()
    }
}

fn backoff(base: Duration, n: u32, max: Duration) -> Duration {
    let f = 2u32.saturating_pow(n.saturating_sub(1).min(20));
    base.saturating_mul(f).min(max)
}
