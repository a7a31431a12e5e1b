//! The catch-up decision: replay blocks, or state sync to the latest trusted
//! checkpoint and replay from there — never both at once — and when to move
//! a running state sync to a newer checkpoint.
//!
//! Pure functions of measured rates, so the shell can log the numbers that
//! led to each choice and tests can pin them. The catch-up phase machine
//! ([`crate::catchup`]) calls them.

/// What [`decide`] weighs.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Inputs {
    /// Height of the state we can execute on (0: genesis). None: no state.
    pub local_height: Option<u64>,
    /// Best final head known from peers.
    pub head: u64,
    /// Latest checkpoint peers can serve with a trusted root, if any.
    pub checkpoint: Option<u64>,
    /// Size of that checkpoint's state (bytes).
    pub state_bytes: u64,
    /// Bytes of it that local data already covers (not fetched).
    pub reusable_bytes: u64,
    /// Blocks this node replays per second (measured, else a default).
    pub replay_blocks_per_sec: f64,
    /// Bytes a state sync fetches per second (measured, else a default).
    pub fetch_bytes_per_sec: f64,
    /// Blocks the chain produces per second.
    pub produced_blocks_per_sec: f64,
}

/// How to catch up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Plan {
    /// Within a few blocks of the head: take new blocks as they come.
    Follow,
    /// Fetch and execute the missing blocks.
    Replay,
    /// Fetch the checkpoint at this height, then replay from it.
    StateSync {
        /// The checkpoint's height.
        height: u64,
    },
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Plan::Follow => f.write_str("follow the head"),
            Plan::Replay => f.write_str("replay blocks"),
            Plan::StateSync { height } => write!(f, "state sync to checkpoint {height}"),
        }
    }
}

/// A plan and the estimates that led to it, for logs and status.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Decision {
    /// What to do.
    pub plan: Plan,
    /// Estimated seconds to replay up to the head: 0 when following,
    /// infinite without local state or when replay cannot outpace
    /// production.
    pub replay_secs: f64,
    /// Estimated seconds to fetch the checkpoint (less the reusable bytes)
    /// and replay from it to the head, blocks produced meanwhile included;
    /// infinite without a checkpoint.
    pub state_sync_secs: f64,
    /// The choice and its numbers in one line, for humans.
    pub reason: String,
}

/// Blocks behind the head that count as following.
pub const FOLLOW_DISTANCE: u64 = 2;
/// State sync must promise to be this much faster than replay to be chosen
/// (replay is simpler and keeps history).
pub const STATE_SYNC_ADVANTAGE: f64 = 1.5;

/// Seconds to replay `blocks` at `replay` blocks/s while the chain grows by
/// `produced` blocks/s: 0 for no blocks, infinity if replay is not faster
/// than production.
pub fn replay_secs(blocks: u64, replay: f64, produced: f64) -> f64 {
    if blocks == 0 {
        return 0.0;
    }
    let net = replay - produced;
    if net <= 0.0 {
        f64::INFINITY
    } else {
        blocks as f64 / net
    }
}

/// Chooses how to catch up. Within [`FOLLOW_DISTANCE`] of the head:
/// follow. With local state: state sync to the checkpoint if it is above
/// the local height and promises to be [`STATE_SYNC_ADVANTAGE`] times
/// faster than replay, else replay. Without local state: state sync if a
/// checkpoint is offered, else replay (nothing to do but wait for one or
/// for blocks).
pub fn decide(i: &Inputs) -> Decision {
    let ss = |cp: u64| -> f64 {
        let bytes = i.state_bytes.saturating_sub(i.reusable_bytes) as f64;
        let fetch = if i.fetch_bytes_per_sec > 0.0 {
            bytes / i.fetch_bytes_per_sec
        } else {
            f64::INFINITY
        };
        // While fetching, the head moves on: those blocks are replayed too.
        let moved = (fetch * i.produced_blocks_per_sec).ceil() as u64;
        fetch
            + replay_secs(
                i.head.saturating_sub(cp).saturating_add(moved),
                i.replay_blocks_per_sec,
                i.produced_blocks_per_sec,
            )
    };
    let state_sync_secs = i.checkpoint.map(ss).unwrap_or(f64::INFINITY);
    let (plan, replay, reason) = match i.local_height {
        Some(h) if h + FOLLOW_DISTANCE >= i.head => (
            Plan::Follow,
            0.0,
            format!("{} blocks behind: follow", i.head.saturating_sub(h)),
        ),
        Some(h) => {
            let r = replay_secs(
                i.head - h,
                i.replay_blocks_per_sec,
                i.produced_blocks_per_sec,
            );
            match i.checkpoint {
                Some(cp) if cp > h && state_sync_secs * STATE_SYNC_ADVANTAGE < r => (
                    Plan::StateSync { height: cp },
                    r,
                    format!(
                        "{} blocks behind: replay ~{} vs state sync ~{}",
                        i.head - h,
                        fmt_secs(r),
                        fmt_secs(state_sync_secs)
                    ),
                ),
                _ => (
                    Plan::Replay,
                    r,
                    format!(
                        "{} blocks behind: replay ~{} vs state sync ~{}",
                        i.head - h,
                        fmt_secs(r),
                        fmt_secs(state_sync_secs)
                    ),
                ),
            }
        }
        None => match i.checkpoint {
            Some(cp) => (
                Plan::StateSync { height: cp },
                f64::INFINITY,
                "no local state: state sync".to_string(),
            ),
            None => (
                Plan::Replay,
                f64::INFINITY,
                "no local state and no checkpoint offered: wait and replay".to_string(),
            ),
        },
    };
    Decision {
        plan,
        replay_secs: replay,
        state_sync_secs,
        reason,
    }
}

/// Whether a running state sync to `current` should move to the newer
/// trusted checkpoint `newer`: when the blocks between them would take more
/// than `max_replay_secs` to replay afterwards. Chunks already fetched are
/// kept across the switch, so a switch costs only what changed in between.
/// A switch is also forced when nobody serves `current` any more.
pub fn should_switch(
    current: u64,
    newer: u64,
    current_served: bool,
    replay_blocks_per_sec: f64,
    produced_blocks_per_sec: f64,
    max_replay_secs: f64,
) -> bool {
    if newer <= current {
        return false;
    }
    !current_served
        || replay_secs(
            newer - current,
            replay_blocks_per_sec,
            produced_blocks_per_sec,
        ) > max_replay_secs
}

fn fmt_secs(s: f64) -> String {
    if s.is_finite() {
        format!("{s:.1}s")
    } else {
        "never".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Inputs {
        Inputs {
            local_height: Some(100),
            head: 110,
            checkpoint: Some(100),
            state_bytes: 1 << 30,
            reusable_bytes: 0,
            replay_blocks_per_sec: 500.0,
            fetch_bytes_per_sec: 100e6,
            produced_blocks_per_sec: 5.0,
        }
    }

    #[test]
    fn near_head_follows() {
        let mut i = base();
        i.local_height = Some(109);
        assert_eq!(decide(&i).plan, Plan::Follow);
    }

    #[test]
    fn short_gap_replays() {
        let mut i = base();
        i.checkpoint = Some(105);
        assert_eq!(decide(&i).plan, Plan::Replay);
    }

    #[test]
    fn long_gap_state_syncs() {
        let mut i = base();
        i.local_height = Some(0);
        i.head = 1_000_000;
        i.checkpoint = Some(999_990);
        assert_eq!(decide(&i).plan, Plan::StateSync { height: 999_990 });
    }

    #[test]
    fn replay_slower_than_production_never_replays() {
        let mut i = base();
        i.local_height = Some(10);
        i.head = 1000;
        i.checkpoint = Some(990);
        i.replay_blocks_per_sec = 6.0;
        let d = decide(&i);
        assert_eq!(d.plan, Plan::StateSync { height: 990 });
        assert!(replay_secs(10, 4.0, 5.0).is_infinite());
    }

    #[test]
    fn no_state_state_syncs_or_waits() {
        let mut i = base();
        i.local_height = None;
        assert_eq!(decide(&i).plan, Plan::StateSync { height: 100 });
        i.checkpoint = None;
        assert_eq!(decide(&i).plan, Plan::Replay);
    }

    #[test]
    fn reusable_bytes_make_state_sync_cheaper() {
        let mut i = base();
        i.local_height = Some(0);
        i.head = 3000;
        i.checkpoint = Some(2990);
        i.replay_blocks_per_sec = 200.0;
        // 1 GiB at 100 MB/s ~ 10.7 s vs 3000/195 ~ 15.4 s: not 1.5x better.
        assert_eq!(decide(&i).plan, Plan::Replay);
        i.reusable_bytes = 900 << 20;
        assert_eq!(decide(&i).plan, Plan::StateSync { height: 2990 });
    }

    #[test]
    fn switch_rules() {
        assert!(!should_switch(100, 100, true, 500.0, 5.0, 2.0));
        assert!(!should_switch(100, 110, true, 500.0, 5.0, 2.0));
        assert!(should_switch(100, 110, false, 500.0, 5.0, 2.0));
        assert!(should_switch(100, 2000, true, 500.0, 5.0, 2.0));
        assert!(should_switch(100, 110, true, 5.0, 5.0, 2.0));
    }
}
