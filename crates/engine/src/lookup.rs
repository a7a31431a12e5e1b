//! Missing-parent lookups near the head, bounded in number, depth and age.
//!
//! When a block announced by a peer does not attach to our head, the shell
//! asks for the blocks in between. A lookup deeper than `max_depth` is not a
//! lookup but a range sync; more than `max_active` at once are refused; a
//! lookup older than `ttl` is dropped even if nothing ever answers it (the
//! "event-driven lookup with nothing left to wake it" of the field notes).
//!
//! [`Lookups`] owns the set of active lookups (by announced height) and only
//! admits or refuses them; the shell fetches the blocks, calls
//! [`Lookups::advanced`] when its head moves and [`Lookups::expire`] now and
//! then.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Bounds on lookups.
#[derive(Clone, Debug)]
pub struct LookupConfig {
    /// Lookups active at once at most; more are refused ([`Admit::Full`]).
    pub max_active: usize,
    /// Deepest lookup: the announced height at most this far above the head
    /// (`height - head`); deeper is [`Admit::TooDeep`].
    pub max_depth: u64,
    /// Age at which a lookup is dropped, answered or not.
    pub ttl: Duration,
}

impl Default for LookupConfig {
    fn default() -> Self {
        LookupConfig {
            max_active: 4,
            max_depth: 32,
            ttl: Duration::from_secs(10),
        }
    }
}

/// The answer of [`Lookups::admit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Fetch `start..=end` (the missing blocks between our head and it).
    Fetch {
        /// The first missing height: the head plus one.
        start: u64,
        /// The last missing height: the announced height minus one.
        end: u64,
    },
    /// Nothing to start: a lookup at or above this height is active, or
    /// nothing is missing (the block is at most one above the head).
    Pending,
    /// Too deep: hand over to range sync.
    TooDeep,
    /// Too many lookups in flight.
    Full,
}

/// The active lookups; see the module documentation.
#[derive(Debug)]
pub struct Lookups {
    cfg: LookupConfig,
    /// announced height -> started
    active: BTreeMap<u64, Instant>,
}

impl Lookups {
    /// No lookups yet.
    pub fn new(cfg: LookupConfig) -> Lookups {
        Lookups {
            cfg,
            active: BTreeMap::new(),
        }
    }

    /// A block at `height` arrived while our head is `head`: whether to
    /// look up the blocks in between. Expired lookups are dropped first. An
    /// admitted lookup stays active until [`Lookups::advanced`] passes its
    /// height or it is older than [`LookupConfig::ttl`].
    pub fn admit(&mut self, head: u64, height: u64, now: Instant) -> Admit {
        self.expire(now);
        if height <= head + 1 {
            return Admit::Pending;
        }
        if height - head > self.cfg.max_depth {
            return Admit::TooDeep;
        }
        if self.active.range(height..).next().is_some() {
            return Admit::Pending;
        }
        if self.active.len() >= self.cfg.max_active {
            return Admit::Full;
        }
        self.active.insert(height, now);
        Admit::Fetch {
            start: head + 1,
            end: height - 1,
        }
    }

    /// Our head moved to `head`: lookups at or below it are satisfied.
    pub fn advanced(&mut self, head: u64) {
        self.active = self.active.split_off(&(head + 1));
    }

    /// Drops lookups older than [`LookupConfig::ttl`]. [`Lookups::admit`]
    /// calls it; call it before reading [`Lookups::active`].
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.cfg.ttl;
        self.active.retain(|_, t| now.duration_since(*t) < ttl);
    }

    /// Lookups active (neither satisfied nor dropped by the last expiry).
    pub fn active(&self) -> usize {
        self.active.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_number_depth_and_age() {
        let t0 = Instant::now();
        let mut l = Lookups::new(LookupConfig::default());
        assert_eq!(l.admit(100, 101, t0), Admit::Pending);
        assert_eq!(l.admit(100, 200, t0), Admit::TooDeep);
        assert_eq!(
            l.admit(100, 105, t0),
            Admit::Fetch {
                start: 101,
                end: 104
            }
        );
        assert_eq!(l.admit(100, 104, t0), Admit::Pending);
        for h in [110, 115, 120] {
            assert!(matches!(l.admit(h - 3, h, t0), Admit::Fetch { .. }));
        }
        assert_eq!(l.active(), 4);
        assert_eq!(l.admit(120, 125, t0), Admit::Full);
        // Nothing answers: they age out.
        let later = t0 + Duration::from_secs(11);
        assert_eq!(
            l.admit(100, 125, later),
            Admit::Fetch {
                start: 101,
                end: 124
            }
        );
        l.advanced(130);
        assert_eq!(l.active(), 0);
    }
}
