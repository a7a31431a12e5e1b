//! The relay rules one by one: checks before relaying, first-hand relay
//! once, duplicates dropped, bounds, stale blocks, pulls.

use statesync_gossip::relay::{Action, Config, Gossip, Verifier, relayer};
use statesync_gossip::wire::{HEADER_LEN, Message, SIG_LEN};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Keyed;

fn sign(p: u16, h: &[u8; HEADER_LEN]) -> [u8; SIG_LEN] {
    let mut k = [0u8; 32];
    k[..2].copy_from_slice(&p.to_le_bytes());
    let mut out = [0u8; SIG_LEN];
    blake3::Hasher::new_keyed(&k)
        .update(h)
        .finalize_xof()
        .fill(&mut out);
    out
}

impl Verifier for Keyed {
    fn verify(&self, p: u16, h: &[u8; HEADER_LEN], s: &[u8; SIG_LEN]) -> bool {
        sign(p, h) == *s
    }
}

const N: u16 = 10;

fn node(me: u16, cfg: Config) -> Gossip<Keyed> {
    Gossip::new(me, N, cfg, Keyed)
}

fn drain(g: &mut Gossip<Keyed>) -> Vec<Action> {
    std::iter::from_fn(|| g.poll_action()).collect()
}

fn sends(a: &[Action]) -> Vec<(u16, Arc<Message>)> {
    a.iter()
        .filter_map(|a| match a {
            Action::Send { to, msg } => Some((*to, msg.clone())),
            _ => None,
        })
        .collect()
}

fn block(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Proposer 0's shards of a block at `height`, as (relayer, message).
fn proposal(height: u64, seed: u8) -> Vec<(u16, Arc<Message>)> {
    let mut p = node(0, Config::default());
    p.propose(&block(5000, seed), height, |h| sign(0, h))
        .expect("propose");
    sends(&drain(&mut p))
}

#[test]
fn the_proposer_sends_each_shard_once_to_its_relayer() {
    let s = proposal(1, 0);
    assert_eq!(s.len(), 9, "one shard per member other than the proposer");
    let mut to: Vec<u16> = s.iter().map(|(t, _)| *t).collect();
    to.sort();
    assert_eq!(to, (1..N).collect::<Vec<_>>());
    for (t, m) in &s {
        let Message::Shard { header, index, .. } = m.as_ref() else {
            panic!("not a shard")
        };
        assert_eq!(relayer(N, &header.header.id(), 0, *index), *t);
    }
}

#[test]
fn first_hand_shards_are_relayed_once_to_everyone_else_and_others_are_kept() {
    let now = Instant::now();
    let s = proposal(1, 0);
    let (to, msg) = s[0].clone();
    let mut g = node(to, Config::default());
    g.handle_message(0, &msg, now);
    let out = sends(&drain(&mut g));
    let mut targets: Vec<u16> = out.iter().map(|(t, _)| *t).collect();
    targets.sort();
    let want: Vec<u16> = (1..N).filter(|x| *x != to).collect();
    assert_eq!(
        targets, want,
        "relayed to every member but itself and the proposer"
    );
    // The same shard again: dropped, not relayed.
    g.handle_message(0, &msg, now);
    assert!(drain(&mut g).is_empty());
    assert_eq!(g.stats().shards_dropped, 1);
    // A shard from someone else: kept, not relayed.
    let (_, other) = s[1].clone();
    g.handle_message(7, &other, now);
    assert!(sends(&drain(&mut g)).is_empty());
    assert_eq!(g.stats().shards_ok, 2);
}

#[test]
fn k_shards_deliver_the_block() {
    let now = Instant::now();
    let s = proposal(1, 0);
    let k = match s[0].1.as_ref() {
        Message::Shard { header, .. } => usize::from(header.header.k),
        _ => unreachable!(),
    };
    let mut g = node(9, Config::default());
    let mut delivered = None;
    for (i, (_, m)) in s.iter().enumerate() {
        g.handle_message(if i == 0 { 1 } else { 2 }, m, now);
        for a in drain(&mut g) {
            if let Action::Deliver { block: b, .. } = a {
                delivered = Some((i + 1, b));
            }
        }
    }
    let (after, b) = delivered.expect("delivered");
    assert_eq!(after, k);
    assert_eq!(b, block(5000, 0));
    // Shards of a delivered block are dropped.
    let before = g.stats().shards_dropped;
    g.handle_message(3, &s[0].1, now);
    assert_eq!(g.stats().shards_dropped, before + 1);
}

#[test]
fn forged_shards_and_headers_are_reported_and_not_relayed() {
    let now = Instant::now();
    let s = proposal(1, 0);
    let (to, msg) = s[0].clone();
    let Message::Shard {
        header,
        index,
        proof,
        data,
    } = msg.as_ref().clone()
    else {
        panic!()
    };
    let mut g = node(to, Config::default());
    // Altered bytes: fails the proof.
    let mut d = data.to_vec();
    d[0] ^= 1;
    let forged = Arc::new(Message::Shard {
        header,
        index,
        proof: proof.clone(),
        data: d.into(),
    });
    g.handle_message(0, &forged, now);
    let a = drain(&mut g);
    assert!(sends(&a).is_empty(), "a forged shard was relayed");
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Misbehaved { peer: 0, .. }))
    );
    // A header not signed by its proposer.
    let mut h2 = header;
    h2.signature[0] ^= 1;
    let bad_sig = Arc::new(Message::Shard {
        header: h2,
        index,
        proof,
        data: data.clone(),
    });
    let mut g = node(to, Config::default());
    g.handle_message(4, &bad_sig, now);
    let a = drain(&mut g);
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Misbehaved { peer: 4, .. }))
    );
    // The genuine shard still goes through afterwards.
    g.handle_message(0, &msg, now);
    assert!(!sends(&drain(&mut g)).is_empty());
}

#[test]
fn blocks_in_flight_per_proposer_and_bytes_are_bounded() {
    let now = Instant::now();
    let cfg = Config {
        max_in_flight_per_proposer: 2,
        ..Config::default()
    };
    let mut g = node(9, cfg);
    for h in 1..=4u64 {
        let s = proposal(h, h as u8);
        g.handle_message(3, &s[0].1, now);
    }
    assert_eq!(
        g.stats().shards_ok,
        2,
        "only two blocks of one proposer held"
    );
    assert_eq!(g.stats().shards_dropped, 2);
    let cfg = Config {
        max_pending_bytes: 100,
        ..Config::default()
    };
    let mut g = node(9, cfg);
    g.handle_message(3, &proposal(1, 0)[0].1, now);
    assert_eq!(
        g.stats().shards_ok,
        0,
        "a block over the byte bound was held"
    );
}

#[test]
fn stale_heights_are_dropped() {
    let now = Instant::now();
    let cfg = Config {
        stale_heights: 2,
        ..Config::default()
    };
    let mut g = node(9, cfg);
    for (_, m) in proposal(10, 1) {
        g.handle_message(2, &m, now);
    }
    assert_eq!(g.stats().delivered, 1);
    let (ok, dropped) = (g.stats().shards_ok, g.stats().shards_dropped);
    g.handle_message(2, &proposal(7, 2)[0].1, now);
    assert_eq!(g.stats().shards_ok, ok, "a stale block's shard was kept");
    assert_eq!(g.stats().shards_dropped, dropped + 1);
    // Within the window: kept.
    g.handle_message(2, &proposal(9, 3)[0].1, now);
    assert_eq!(g.stats().shards_ok, ok + 1);
}

#[test]
fn a_short_member_pulls_from_senders_and_is_answered() {
    let t0 = Instant::now();
    let s = proposal(1, 0);
    // Member 9 got two shards from member 5; member 5 has the block.
    let mut have = node(5, Config::default());
    for (_, m) in &s {
        have.handle_message(1, m, t0);
    }
    drain(&mut have);
    assert_eq!(have.stats().delivered, 1);
    let mut g = node(9, Config::default());
    g.handle_message(5, &s[0].1, t0);
    g.handle_message(5, &s[1].1, t0);
    drain(&mut g);
    let due = g.poll_timeout().expect("a pull is scheduled");
    assert_eq!(due, t0 + Config::default().pull_after);
    g.handle_timeout(due);
    let pulls = sends(&drain(&mut g));
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].0, 5, "asks the member that sent shards");
    have.handle_message(9, &pulls[0].1, due);
    let answers = sends(&drain(&mut have));
    assert!(!answers.is_empty());
    for (to, m) in answers {
        assert_eq!(to, 9);
        g.handle_message(5, &m, due + Duration::from_millis(50));
    }
    assert!(
        drain(&mut g)
            .iter()
            .any(|a| matches!(a, Action::Deliver { .. }))
    );
}

#[test]
fn an_undecodable_block_is_given_up() {
    let t0 = Instant::now();
    let s = proposal(1, 0);
    let mut g = node(9, Config::default());
    g.handle_message(5, &s[0].1, t0);
    let mut t = t0;
    while let Some(next) = g.poll_timeout() {
        t = next;
        g.handle_timeout(t);
        drain(&mut g);
        if g.stats().given_up > 0 {
            break;
        }
    }
    assert_eq!(g.stats().given_up, 1);
    assert!(t - t0 >= Config::default().give_up_after);
    assert!(g.poll_timeout().is_none());
}

/// Runs a committee of `N` (proposer 0) plus one listener (id `N`)
/// subscribed to `subscribed`, until nothing moves; returns the listener,
/// the messages each member sent it, and the time reached.
/// Messages received, as (sender, message).
type Received = Vec<(u16, Arc<Message>)>;

fn with_listener(subscribed: &[u16]) -> (Gossip<Keyed>, Received, Instant) {
    let t0 = Instant::now();
    let mut cores: Vec<Gossip<Keyed>> = (0..N).map(|i| node(i, Config::default())).collect();
    let mut l = Gossip::listener(N, Config::default(), Keyed);
    assert!(l.is_listener());
    for &m in subscribed {
        assert!(cores[usize::from(m)].add_listener(N));
    }
    cores[0]
        .propose(&block(5000, 7), 1, |h| sign(0, h))
        .expect("propose");
    let mut queue: std::collections::VecDeque<(u16, u16, Arc<Message>)> = Default::default();
    let mut to_listener = Vec::new();
    let mut t = t0;
    for _round in 0..20 {
        for (i, c) in cores.iter_mut().enumerate() {
            for (to, m) in sends(&drain(c)) {
                queue.push_back((i as u16, to, m));
            }
        }
        for (to, m) in sends(&drain(&mut l)) {
            queue.push_back((N, to, m));
        }
        if queue.is_empty() {
            // Nothing in flight: the next timer.
            let next = cores
                .iter()
                .filter_map(|c| c.poll_timeout())
                .chain(l.poll_timeout())
                .min();
            let Some(next) = next else { break };
            t = next;
            l.handle_timeout(t);
            for c in cores.iter_mut() {
                c.handle_timeout(t);
            }
            continue;
        }
        while let Some((from, to, m)) = queue.pop_front() {
            if to == N {
                to_listener.push((from, m.clone()));
                l.handle_message(from, &m, t);
            } else {
                cores[usize::from(to)].handle_message(from, &m, t);
            }
        }
    }
    (l, to_listener, t)
}

#[test]
fn a_listener_subscribed_to_every_member_gets_each_shard_once_and_relays_nothing() {
    let all: Vec<u16> = (0..N).collect();
    let (mut l, got, _) = with_listener(&all);
    assert_eq!(l.stats().delivered, 1, "the listener decoded the block");
    assert_eq!(l.stats().pulls, 0, "no pull needed");
    assert!(drain(&mut l).is_empty());
    let (k, m) = statesync_gossip::relay::params(usize::from(N));
    assert_eq!(
        got.len(),
        k + m,
        "every shard once (first-hand relays only)"
    );
    assert!(
        got.iter().all(|(from, _)| *from != 0),
        "the proposer sends a listener nothing"
    );
    let mut idx: Vec<u16> = got
        .iter()
        .filter_map(|(_, m)| match m.as_ref() {
            Message::Shard { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    idx.sort();
    idx.dedup();
    assert_eq!(idx.len(), k + m, "distinct shards");
}

#[test]
fn a_listener_subscribed_to_few_members_pulls_the_rest_from_them() {
    let (l, got, _) = with_listener(&[3, 4]);
    assert_eq!(l.stats().delivered, 1, "decoded after pulling");
    assert!(l.stats().pulls > 0);
    assert!(
        got.iter().all(|(from, _)| *from == 3 || *from == 4),
        "only its members send to it"
    );
}

#[test]
fn pulls_and_shards_from_strangers_are_ignored_and_listeners_are_bounded() {
    let t0 = Instant::now();
    let mut g = node(
        5,
        Config {
            max_listeners: 2,
            ..Config::default()
        },
    );
    assert!(!g.add_listener(3), "a member id is not a listener id");
    assert!(g.add_listener(N));
    assert!(g.add_listener(N + 1));
    assert!(!g.add_listener(N + 2), "bounded");
    assert_eq!(g.listeners(), 2);
    let s = proposal(1, 0);
    for (_, m) in &s {
        g.handle_message(1, m, t0);
    }
    drain(&mut g);
    // A stranger (not subscribed) pulls or sends shards: nothing happens.
    let Message::Shard { header, .. } = s[0].1.as_ref() else {
        panic!("not a shard")
    };
    let pull = Arc::new(Message::Pull {
        block: header.header.id(),
        indices: vec![0, 1],
    });
    g.handle_message(N + 2, &pull, t0);
    assert!(drain(&mut g).is_empty());
    // A subscribed listener's pull is answered.
    g.handle_message(N + 1, &pull, t0);
    assert_eq!(sends(&drain(&mut g)).len(), 2);
    g.remove_listener(N + 1);
    g.handle_message(N + 1, &pull, t0);
    assert!(drain(&mut g).is_empty(), "removed: ignored");
    let mut l = Gossip::listener(N, Config::default(), Keyed);
    assert!(!l.add_listener(N + 1), "a listener takes no listeners");
    l.handle_message(N + 1, &s[0].1, t0);
    assert_eq!(l.stats().shards_ok, 0, "shards only from members");
}
