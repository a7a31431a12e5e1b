//! Missing-parent lookups near the head, bounded in number, depth and age.
//!
//! When a block announced by a peer does not attach to our head, the shell
//! asks for the blocks in between. A lookup deeper than `max_depth` is not a
//! lookup but a range sync; more than `max_active` at once are refused; a
//! lookup older than `ttl` is dropped even if nothing ever answers it (the
//! "event-driven lookup with nothing left to wake it" of the field notes).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct LookupConfig {
    pub max_active: usize,
    pub max_depth: u64,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Fetch `start..=end` (the missing blocks between our head and it).
    Fetch { start: u64, end: u64 },
    /// Already being looked up.
    Pending,
    /// Too deep: hand over to range sync.
    TooDeep,
    /// Too many lookups in flight.
    Full,
}

#[derive(Debug)]
pub struct Lookups {
    cfg: LookupConfig,
    /// announced height -> started
    active: BTreeMap<u64, Instant>,
}

impl Lookups {
    pub fn new(cfg: LookupConfig) -> Lookups {
        Lookups {
            cfg,
            active: BTreeMap::new(),
        }
    }

    /// A block at `height` arrived while our head is `head`.
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

    pub fn expire(&mut self, now: Instant) {
        let ttl = self.cfg.ttl;
        self.active.retain(|_, t| now.duration_since(*t) < ttl);
    }

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
