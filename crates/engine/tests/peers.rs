//! The Harmony regression on the sans-IO peer manager: days of churn on a
//! virtual clock must cost a bounded number of dials and discovery rounds,
//! and an empty network must not wake the node in a loop.

use statesync_engine::peers::{PeerAction, PeerManager, PeerManagerConfig};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use statesync_manifest::rng::SplitMix64 as Rng;

fn cfg() -> PeerManagerConfig {
    PeerManagerConfig {
        min_peers: 8,
        max_peers: 16,
        ..Default::default()
    }
}

#[test]
fn three_days_of_churn_cost_bounded_dials_and_discoveries() {
    let mut pm: PeerManager<u32, String> = PeerManager::new(cfg());
    let start = Instant::now();
    let mut now = start;
    let mut rng = Rng::new(1);
    // 60 peers; a third never answer; the rest stay connected for a random
    // few minutes and then drop.
    for p in 0..60u32 {
        pm.add_known(p, format!("/ip4/10.0.0.{p}/tcp/1"), p < 4, now);
    }
    let unreachable = |p: u32| p.is_multiple_of(3);
    let mut connected_until: BTreeMap<u32, Instant> = BTreeMap::new();
    let mut pending_dials: Vec<(Instant, u32)> = Vec::new();
    let step = Duration::from_secs(1);
    let days = 3;
    let end = start + Duration::from_secs(days * 86_400);
    let mut max_actions_per_step = 0;
    while now < end {
        now += step;
        // Outcomes of dials started earlier (100 ms later).
        let (due, rest): (Vec<_>, Vec<_>) = pending_dials.into_iter().partition(|(t, _)| *t <= now);
        pending_dials = rest;
        for (_, p) in due {
            if unreachable(p) {
                pm.dial_failed(p, now);
            } else {
                let stay = Duration::from_secs(60 + rng.next_u64() % 600);
                connected_until.insert(p, now + stay);
                pm.connected(p, now);
            }
        }
        let drops: Vec<u32> = connected_until
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in drops {
            connected_until.remove(&p);
            pm.disconnected(p, now);
        }
        pm.tick(now);
        let mut n = 0;
        while let Some(a) = pm.poll_action() {
            n += 1;
            match a {
                PeerAction::Dial(p, _) => pending_dials.push((now + Duration::from_millis(100), p)),
                // Discovery finds nothing new most of the time.
                PeerAction::Discover => pm.discovery_done(usize::from(rng.unit() < 0.1), now),
                PeerAction::Disconnect(p) => {
                    connected_until.remove(&p);
                    pm.disconnected(p, now);
                }
            }
        }
        max_actions_per_step = max_actions_per_step.max(n);
    }
    let st = pm.stats.clone();
    // Unreachable peers back off to 5 minutes: 20 of them over 3 days is at
    // most ~20 * 864 dials; reachable ones reconnect after each drop with a
    // growing backoff. Without backoff this loop would dial ~60 peers every
    // second: 15 million dials.
    let secs = days * 86_400;
    assert!(st.dials < 60 * secs / 300 + 2_000, "{st:?}");
    assert!(st.dials > 100, "the churn must exercise dialing: {st:?}");
    assert!(st.discoveries < secs / 30, "{st:?}");
    assert!(
        max_actions_per_step <= 16,
        "burst of {max_actions_per_step} actions"
    );
    assert!(pm.connected_count() <= 16);
}

#[test]
fn no_peers_at_all_means_rare_discovery_and_no_self_wakeups_in_a_loop() {
    let mut pm: PeerManager<u32, String> = PeerManager::new(cfg());
    let start = Instant::now();
    let mut now = start;
    let mut discoveries = 0;
    for _ in 0..86_400 {
        now += Duration::from_secs(1);
        pm.tick(now);
        while let Some(a) = pm.poll_action() {
            if a == PeerAction::Discover {
                discoveries += 1;
                pm.discovery_done(0, now);
            }
        }
        if let Some(w) = pm.next_wakeup() {
            assert!(w > now, "a wakeup in the past would spin the loop");
        }
    }
    // Empty rounds back off to the 10-minute cap: about 150 a day.
    assert!(discoveries < 200, "{discoveries} discoveries in a day");
}

#[test]
fn over_max_disconnects_newest_non_bootstrap_peers() {
    let mut pm: PeerManager<u32, String> = PeerManager::new(PeerManagerConfig {
        min_peers: 1,
        max_peers: 3,
        ..Default::default()
    });
    let mut now = Instant::now();
    pm.add_known(0, "a".into(), true, now);
    while pm.poll_action().is_some() {}
    for p in 0..6u32 {
        now += Duration::from_secs(1);
        pm.connected(p, now);
    }
    let mut dropped = Vec::new();
    while let Some(a) = pm.poll_action() {
        if let PeerAction::Disconnect(p) = a {
            dropped.push(p);
        }
    }
    dropped.sort();
    dropped.dedup();
    assert!(!dropped.contains(&0), "bootstrap peer kept: {dropped:?}");
    assert!(dropped.len() >= 3, "{dropped:?}");
}
