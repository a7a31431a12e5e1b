//! Admission of requests on the serving side, with no I/O: who gets served
//! now, who is told BUSY (and for how long), and who is refused for a while.
//!
//! # Rules
//!
//! - **Fair shares.** The global rate is split evenly among the peers that
//!   asked for something within [`AdmissionConfig::active_window`]: each
//!   active peer's token bucket refills at `min(peer limit, global /
//!   active peers)` bytes per second, so 32 concurrent fetchers get the same
//!   rate whoever connected first. A global bucket at the global rate caps
//!   bursts. Buckets hold one second's worth; a request costlier than that
//!   is charged one second's worth (it could never fit otherwise).
//! - **Bounded work.** A peer has at most
//!   [`AdmissionConfig::max_concurrent_per_peer`] requests and
//!   [`AdmissionConfig::max_inflight_per_peer`] bytes of answers in progress
//!   (from admission until the answer was sent or failed, not until the
//!   disk read ended: answers a peer does not drain still count); all peers
//!   together at most [`AdmissionConfig::max_inflight_total`] bytes.
//! - **Peers that do not drain.** An answer that could not be delivered
//!   (the peer stopped reading, reset the stream) is a strike; three cool
//!   the peer off (REFUSED) for 10 s, doubled each further time up to
//!   10 min. A delivered answer forgives the strikes.
//!
//! # Driving it
//!
//! Call [`Admission::admit`] with the peer, the answer's cost in bytes and
//! the current time for every data request; on [`Verdict::Admit`] serve it
//! and hand the [`Ticket`] back to [`Admission::done`] once the answer was
//! sent (or failed). Time is passed in; nothing here reads a clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Limits (the node's `ServeLimits` map onto these).
#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    /// Bytes per second one peer may get at most.
    pub peer_bytes_per_sec: u64,
    /// Bytes per second all peers together may get.
    pub global_bytes_per_sec: u64,
    /// Requests in progress per peer.
    pub max_concurrent_per_peer: usize,
    /// Bytes of answers in progress per peer.
    pub max_inflight_per_peer: u64,
    /// Bytes of answers in progress over all peers.
    pub max_inflight_total: u64,
    /// A peer that asked within this long shares the global rate.
    pub active_window: Duration,
    /// Undelivered answers in a row before a peer is refused for a while.
    pub max_drain_strikes: u32,
    /// First refusal period; doubled for each further one.
    pub cool_off: Duration,
    /// Longest refusal period.
    pub max_cool_off: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            peer_bytes_per_sec: 512 << 20,
            global_bytes_per_sec: 2 << 30,
            max_concurrent_per_peer: 16,
            max_inflight_per_peer: 32 << 20,
            max_inflight_total: 128 << 20,
            active_window: Duration::from_secs(2),
            max_drain_strikes: 3,
            cool_off: Duration::from_secs(10),
            max_cool_off: Duration::from_secs(600),
        }
    }
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it; give the ticket back to [`Admission::done`].
    Admit(Ticket),
    /// Answer BUSY: the peer may try again after this long.
    Busy {
        /// When a retry may succeed.
        retry_after: Duration,
        /// Which limit said no (for counters and logs).
        why: &'static str,
    },
    /// Answer REFUSED: the peer did not drain its answers; it is refused
    /// for this long.
    Refused {
        /// How long it stays refused.
        for_: Duration,
    },
}

/// An admitted request; hand it back to [`Admission::done`].
#[derive(Debug, PartialEq, Eq)]
pub struct Ticket {
    cost: u64,
}

/// How an admitted request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The answer was delivered.
    Sent,
    /// The answer could not be delivered because of the peer (it stopped
    /// reading, reset the stream, timed out).
    Undelivered,
    /// It ended for a reason that is nobody's fault (a local read error,
    /// the connection closing).
    Dropped,
}

#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    rate: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: rate,
            rate,
            last: now,
        }
    }

    /// Refills at the current rate up to one second's worth.
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        self.last = now;
    }

    fn set_rate(&mut self, rate: f64, now: Instant) {
        self.refill(now);
        self.rate = rate.max(1.0);
        self.tokens = self.tokens.min(self.rate);
    }

    /// Time until `cost` tokens are there (zero if they are).
    fn wait(&self, cost: f64) -> Duration {
        let cost = cost.min(self.rate);
        if self.tokens >= cost {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((cost - self.tokens) / self.rate)
        }
    }

    fn take(&mut self, cost: f64) {
        self.tokens -= cost.min(self.rate);
    }
}

#[derive(Clone, Debug)]
struct PeerRec {
    bucket: Bucket,
    last_request: Instant,
    active_requests: usize,
    inflight: u64,
    strikes: u32,
    cool_offs: u32,
    refused_until: Option<Instant>,
}

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AdmissionStats {
    /// Requests admitted.
    pub admitted: u64,
    /// BUSY answers.
    pub busy: u64,
    /// REFUSED answers (peers cooling off).
    pub refused: u64,
    /// Answers that could not be delivered.
    pub undelivered: u64,
    /// Bytes of answers in progress now.
    pub inflight_bytes: u64,
}

/// The admission state of a server; `P` identifies peers.
pub struct Admission<P> {
    cfg: AdmissionConfig,
    global: Bucket,
    peers: HashMap<P, PeerRec>,
    inflight_total: u64,
    stats: AdmissionStats,
    last_gc: Instant,
}

impl<P: Clone + Eq + Hash> Admission<P> {
    /// Admission with `cfg`, starting at `now`.
    pub fn new(cfg: AdmissionConfig, now: Instant) -> Admission<P> {
        Admission {
            global: Bucket::new(cfg.global_bytes_per_sec as f64, now),
            cfg,
            peers: HashMap::new(),
            inflight_total: 0,
            stats: AdmissionStats::default(),
            last_gc: now,
        }
    }

    /// Counters.
    pub fn stats(&self) -> AdmissionStats {
        AdmissionStats {
            inflight_bytes: self.inflight_total,
            ..self.stats.clone()
        }
    }

    /// Peers that asked within the active window.
    pub fn active_peers(&self, now: Instant) -> usize {
        self.peers
            .values()
            .filter(|p| now.saturating_duration_since(p.last_request) <= self.cfg.active_window)
            .count()
    }

    /// The fair share of one active peer now (bytes per second).
    fn share(&self, active: usize) -> f64 {
        (self.cfg.global_bytes_per_sec as f64 / active.max(1) as f64)
            .min(self.cfg.peer_bytes_per_sec as f64)
    }

    /// Decides on a request from `peer` whose answer costs `cost` bytes.
    pub fn admit(&mut self, peer: &P, cost: u64, now: Instant) -> Verdict {
        self.gc(now);
        let cfg = &self.cfg;
        let rec = self.peers.entry(peer.clone()).or_insert_with(|| PeerRec {
            bucket: Bucket::new(cfg.peer_bytes_per_sec as f64, now),
            last_request: now,
            active_requests: 0,
            inflight: 0,
            strikes: 0,
            cool_offs: 0,
            refused_until: None,
        });
        rec.last_request = now;
        if let Some(t) = rec.refused_until {
            if now < t {
                self.stats.refused += 1;
                return Verdict::Refused { for_: t - now };
            }
            rec.refused_until = None;
        }
        // Every active peer's bucket runs at the current fair share.
        let active = self.active_peers(now);
        let share = self.share(active);
        let busy = |why, retry_after: Duration| Verdict::Busy {
            retry_after: retry_after.clamp(Duration::from_millis(10), Duration::from_secs(30)),
            why,
        };
        let Some(rec) = self.peers.get_mut(peer) else {
            return busy("internal", Duration::from_millis(100));
        };
        rec.bucket.set_rate(share, now);
        if rec.active_requests >= self.cfg.max_concurrent_per_peer {
            self.stats.busy += 1;
            return busy("requests in progress", Duration::from_millis(100));
        }
        if rec.inflight > 0 && rec.inflight + cost > self.cfg.max_inflight_per_peer {
            self.stats.busy += 1;
            return busy(
                "bytes in progress for this peer",
                Duration::from_millis(200),
            );
        }
        if self.inflight_total > 0 && self.inflight_total + cost > self.cfg.max_inflight_total {
            self.stats.busy += 1;
            return busy("bytes in progress", Duration::from_millis(200));
        }
        let c = cost as f64;
        let wait = rec.bucket.wait(c);
        if !wait.is_zero() {
            self.stats.busy += 1;
            return busy("peer rate", wait);
        }
        self.global.refill(now);
        let gwait = self.global.wait(c);
        if !gwait.is_zero() {
            self.stats.busy += 1;
            return busy("global rate", gwait);
        }
        rec.bucket.take(c);
        self.global.take(c);
        rec.active_requests += 1;
        rec.inflight += cost;
        self.inflight_total += cost;
        self.stats.admitted += 1;
        Verdict::Admit(Ticket { cost })
    }

    /// An admitted request of `peer` ended.
    pub fn done(&mut self, peer: &P, ticket: Ticket, outcome: Outcome, now: Instant) {
        self.inflight_total = self.inflight_total.saturating_sub(ticket.cost);
        let Some(rec) = self.peers.get_mut(peer) else {
            return;
        };
        rec.active_requests = rec.active_requests.saturating_sub(1);
        rec.inflight = rec.inflight.saturating_sub(ticket.cost);
        match outcome {
            Outcome::Sent => rec.strikes = 0,
            Outcome::Dropped => {}
            Outcome::Undelivered => {
                self.stats.undelivered += 1;
                // Answers failing while the peer is already refused do not
                // escalate: one burst of stalls is one offence.
                if rec.refused_until.is_some_and(|t| t > now) {
                    return;
                }
                rec.strikes += 1;
                if rec.strikes >= self.cfg.max_drain_strikes {
                    rec.strikes = 0;
                    rec.cool_offs += 1;
                    let d = self
                        .cfg
                        .cool_off
                        .saturating_mul(1 << (rec.cool_offs - 1).min(16))
                        .min(self.cfg.max_cool_off);
                    rec.refused_until = Some(now + d);
                }
            }
        }
    }

    /// Forgets peers idle for a minute with nothing in progress and no
    /// penalty running (the map stays as small as the active set).
    fn gc(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_gc) < Duration::from_secs(10) {
            return;
        }
        self.last_gc = now;
        self.peers.retain(|_, r| {
            r.active_requests > 0
                || r.refused_until.is_some_and(|t| t > now)
                || r.cool_offs > 0
                || now.saturating_duration_since(r.last_request) < Duration::from_secs(60)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(global: u64) -> AdmissionConfig {
        AdmissionConfig {
            global_bytes_per_sec: global,
            ..AdmissionConfig::default()
        }
    }

    /// Greedy fetchers, each asking again as soon as it is allowed (a
    /// request of 4 MiB answered in 50 ms), the first of them starting
    /// seconds before the others: over the run every fetcher gets an equal
    /// share of the global rate.
    #[test]
    fn concurrent_fetchers_get_equal_shares_whoever_came_first() {
        let t0 = Instant::now();
        let mut a: Admission<usize> = Admission::new(cfg(128 << 20), t0);
        let n = 32;
        let req = 4u64 << 20;
        let mut next = vec![t0 + Duration::from_secs(3); n];
        next[0] = t0;
        let mut got = vec![0u64; n];
        let mut pending: Vec<(Instant, usize, Ticket)> = Vec::new();
        let end = t0 + Duration::from_secs(30);
        let mut now = t0;
        while now < end {
            now += Duration::from_millis(5);
            let (due, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(t, ..)| *t <= now);
            pending = rest;
            for (_, p, t) in due {
                a.done(&p, t, Outcome::Sent, now);
            }
            for p in 0..n {
                if next[p] > now {
                    continue;
                }
                match a.admit(&p, req, now) {
                    Verdict::Admit(t) => {
                        got[p] += req;
                        pending.push((now + Duration::from_millis(50), p, t));
                    }
                    Verdict::Busy { retry_after, .. } => next[p] = now + retry_after,
                    Verdict::Refused { .. } => panic!("refused an honest peer"),
                }
            }
        }
        // From 3 s on, all 32 share; compare what each got.
        let (min, max) = (
            *got[1..].iter().min().unwrap(),
            *got[1..].iter().max().unwrap(),
        );
        assert!(max as f64 <= 1.2 * min as f64, "shares {min}..{max}");
        assert!(
            (got[0] as f64) < 1.5 * max as f64 + 3.0 * (128 << 20) as f64,
            "the first one took {} against {max}",
            got[0]
        );
        // The global rate holds: 30 s at 128 MiB/s plus one second's burst.
        let total: u64 = got.iter().sum();
        assert!(total <= 31 * (128u64 << 20), "{total}");
        assert!(
            total >= 25 * (128u64 << 20),
            "{total}: capacity left unused"
        );
    }

    /// Answers a peer does not drain stay counted; the peer cannot hold
    /// more than its in-flight allowance, others are still served, and the
    /// undelivered answers get it refused for a while.
    #[test]
    fn a_peer_that_never_drains_is_bounded_then_refused() {
        let t0 = Instant::now();
        let mut a: Admission<u8> = Admission::new(AdmissionConfig::default(), t0);
        let mut held = Vec::new();
        let mut now = t0;
        for _ in 0..100 {
            now += Duration::from_millis(10);
            if let Verdict::Admit(t) = a.admit(&1, 4 << 20, now) {
                held.push(t);
            }
        }
        let cap = AdmissionConfig::default().max_inflight_per_peer;
        assert!(held.len() as u64 * (4 << 20) <= cap, "{} held", held.len());
        assert!(a.stats().inflight_bytes <= cap);
        // An honest peer is served meanwhile.
        match a.admit(&2, 4 << 20, now) {
            Verdict::Admit(t) => a.done(&2, t, Outcome::Sent, now),
            v => panic!("honest peer got {v:?}"),
        }
        // The held answers time out: strikes, then refusal.
        for t in held.drain(..) {
            a.done(&1, t, Outcome::Undelivered, now);
        }
        assert!(matches!(a.admit(&1, 1 << 20, now), Verdict::Refused { .. }));
        assert_eq!(a.stats().inflight_bytes, 0);
        // The refusal ends; repeat offences refuse for longer.
        now += Duration::from_secs(11);
        let Verdict::Admit(t) = a.admit(&1, 1 << 20, now) else {
            panic!(
                "still refused after the cool-off: {:?}",
                a.admit(&1, 1 << 20, now)
            );
        };
        a.done(&1, t, Outcome::Undelivered, now);
        for _ in 0..2 {
            let Verdict::Admit(t) = a.admit(&1, 1 << 20, now) else {
                panic!("refused too early");
            };
            a.done(&1, t, Outcome::Undelivered, now);
        }
        match a.admit(&1, 1 << 20, now) {
            Verdict::Refused { for_ } => assert!(for_ > Duration::from_secs(15), "{for_:?}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn total_bytes_in_flight_are_bounded_across_peers() {
        let t0 = Instant::now();
        let c = AdmissionConfig::default();
        let mut a: Admission<u32> = Admission::new(c.clone(), t0);
        let mut held = 0u64;
        for p in 0..1000u32 {
            if let Verdict::Admit(_) = a.admit(&p, 4 << 20, t0) {
                held += 4 << 20;
            }
        }
        assert!(held <= c.max_inflight_total, "{held}");
        assert!(held >= c.max_inflight_total / 2);
    }
}
