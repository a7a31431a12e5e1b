//! A deterministic network simulation for block dissemination: per-node
//! upload and download bandwidth (each a FIFO link: a message takes its
//! size over the rate to serialise), per-pair latency, up to thousands of
//! nodes on a virtual clock, and three strategies on the same topology and
//! seed:
//!
//! - **IDA gossip**: the real [`Gossip`] core of every node, the real
//!   shards, proofs and decoding;
//! - **flooding**: whole blocks over a gossipsub-like mesh (degree
//!   [`SimConfig::mesh_degree`], 8), each node forwarding to its mesh peers
//!   once it has the block (no IDONTWANT);
//! - **Turbine-like tree**: the block in shreds of
//!   [`SimConfig::shred_len`] bytes, FEC sets of 32 data + 32 coding
//!   shreds, each shred sent down its own random tree of fanout
//!   [`SimConfig::tree_fanout`] (200); a node has the block once it holds 32
//!   shreds of every set.
//!
//! A fraction of the relays can be Byzantine: they drop what they should
//! relay, or forge shards; the proposer can encode inconsistently. The
//! report: when every honest node had the block, the proposer's upload and
//! the bytes on all links.

use crate::code;
use crate::relay::{Action, Config, Gossip, Verifier};
use crate::wire::{HEADER_LEN, Header, Message, SIG_LEN, SignedHeader};
use statesync_manifest::hash::Hash;
use statesync_manifest::rng::{SplitMix64, mix};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How Byzantine relays misbehave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Byzantine {
    /// They relay nothing.
    Drop,
    /// They relay shards with their bytes altered.
    Forge,
}

/// The simulated network and block.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SimConfig {
    /// Nodes, the proposer (node 0) included.
    pub nodes: usize,
    /// Upload bandwidth of every node, bytes per second.
    pub up_bytes_per_sec: f64,
    /// Download bandwidth of every node, bytes per second.
    pub down_bytes_per_sec: f64,
    /// Latency of a link, drawn per pair uniformly in this range (ms).
    pub latency_ms: (u64, u64),
    /// Bytes of the block.
    pub block_len: usize,
    /// Seed of the topology, latencies and faults.
    pub seed: u64,
    /// Fraction of the non-proposer nodes that are Byzantine.
    pub byzantine: f64,
    /// What they do.
    pub byzantine_mode: Byzantine,
    /// The proposer encodes the IDA shards inconsistently.
    pub inconsistent_proposer: bool,
    /// Mesh degree of flooding (gossipsub's D).
    pub mesh_degree: usize,
    /// Fanout of the Turbine-like tree.
    pub tree_fanout: usize,
    /// Bytes of a shred (Turbine-like tree).
    pub shred_len: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 512,
            up_bytes_per_sec: 20e6 / 8.0,
            down_bytes_per_sec: 20e6 / 8.0,
            latency_ms: (50, 150),
            block_len: 2_000_000,
            seed: 1,
            byzantine: 0.0,
            byzantine_mode: Byzantine::Drop,
            inconsistent_proposer: false,
            mesh_degree: 8,
            tree_fanout: 200,
            shred_len: 1228,
        }
    }
}

/// What a strategy achieved.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    /// `ida`, `flood` or `tree`.
    pub strategy: &'static str,
    /// Seconds until each honest node other than the proposer had the
    /// block (`f64::INFINITY` if it never did), sorted.
    pub delivery: Vec<f64>,
    /// Bytes the proposer uploaded.
    pub proposer_upload: u64,
    /// Bytes over all links.
    pub total_bytes: u64,
    /// Honest nodes that rejected the block as inconsistently encoded.
    pub rejected: usize,
    /// Forged messages detected (IDA).
    pub forged_detected: u64,
    /// Wall time of the simulation, milliseconds.
    pub wall_ms: u128,
}

impl Outcome {
    /// The `p`-th percentile (0..=100) of delivery times.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.delivery.is_empty() {
            return f64::INFINITY;
        }
        let i = ((p / 100.0) * (self.delivery.len() - 1) as f64).round() as usize;
        self.delivery[i.min(self.delivery.len() - 1)]
    }

    /// Honest nodes (other than the proposer) that had the block.
    pub fn delivered(&self) -> usize {
        self.delivery.iter().filter(|t| t.is_finite()).count()
    }
}

/// Links with serialisation and latency, on a virtual clock in seconds.
struct Net {
    up: f64,
    down: f64,
    up_free: Vec<f64>,
    down_free: Vec<f64>,
    bytes_up: Vec<u64>,
    lat: (u64, u64),
    seed: u64,
}

impl Net {
    fn new(cfg: &SimConfig) -> Net {
        Net {
            up: cfg.up_bytes_per_sec,
            down: cfg.down_bytes_per_sec,
            up_free: vec![0.0; cfg.nodes],
            down_free: vec![0.0; cfg.nodes],
            bytes_up: vec![0; cfg.nodes],
            lat: cfg.latency_ms,
            seed: cfg.seed,
        }
    }

    /// Latency between two nodes (the same both ways), seconds.
    fn latency(&self, a: usize, b: usize) -> f64 {
        let (lo, hi) = (a.min(b) as u64, a.max(b) as u64);
        let r = mix(self.seed ^ lo.wrapping_mul(0x9e37_79b9) ^ hi.rotate_left(32));
        let span = self.lat.1.saturating_sub(self.lat.0) + 1;
        (self.lat.0 + r % span) as f64 / 1000.0
    }

    /// A message of `size` bytes leaves `from` at `now`: when it reaches
    /// `to`'s download link.
    fn send(&mut self, now: f64, from: usize, to: usize, size: usize) -> f64 {
        let start = now.max(self.up_free[from]);
        let done = start + size as f64 / self.up;
        self.up_free[from] = done;
        self.bytes_up[from] += size as u64;
        done + self.latency(from, to)
    }

    /// It arrived at `to` at `now`: when it is fully received.
    fn receive(&mut self, now: f64, to: usize, size: usize) -> f64 {
        let done = now.max(self.down_free[to]) + size as f64 / self.down;
        self.down_free[to] = done;
        done
    }
}

/// An event queue on the virtual clock (nanosecond keys, then order).
struct Queue<E> {
    heap: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<E>>,
    free: Vec<usize>,
    seq: u64,
}

impl<E> Queue<E> {
    fn new() -> Queue<E> {
        Queue {
            heap: BinaryHeap::new(),
            events: Vec::new(),
            free: Vec::new(),
            seq: 0,
        }
    }
    fn push(&mut self, t: f64, e: E) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.events[slot] = Some(e);
                slot
            }
            None => {
                self.events.push(Some(e));
                self.events.len() - 1
            }
        };
        self.seq += 1;
        self.heap.push(Reverse(((t * 1e9) as u64, self.seq, slot)));
    }
    fn pop(&mut self) -> Option<(f64, E)> {
        let Reverse((t, _, slot)) = self.heap.pop()?;
        let e = self.events[slot].take()?;
        self.free.push(slot);
        Some((t as f64 / 1e9, e))
    }
}

fn byzantine_set(cfg: &SimConfig) -> HashSet<usize> {
    let mut ids: Vec<usize> = (1..cfg.nodes).collect();
    SplitMix64::new(cfg.seed ^ 0xb12a).shuffle(&mut ids);
    let n = ((cfg.nodes - 1) as f64 * cfg.byzantine).floor() as usize;
    ids.into_iter().take(n).collect()
}

fn test_block(cfg: &SimConfig) -> Vec<u8> {
    let mut r = SplitMix64::new(cfg.seed ^ 0xb10c);
    (0..cfg.block_len).map(|_| r.next_u64() as u8).collect()
}

/// Signatures in the simulation: a keyed hash per proposer stands in for
/// ed25519 (checking them is not what is measured).
struct SimVerifier;

fn sim_sign(proposer: u16, header: &[u8; HEADER_LEN]) -> [u8; SIG_LEN] {
    let mut k = [0u8; 32];
    k[..2].copy_from_slice(&proposer.to_le_bytes());
    let mut out = [0u8; SIG_LEN];
    blake3::Hasher::new_keyed(&k)
        .update(header)
        .finalize_xof()
        .fill(&mut out);
    out
}

impl Verifier for SimVerifier {
    fn verify(&self, proposer: u16, header: &[u8; HEADER_LEN], sig: &[u8; SIG_LEN]) -> bool {
        sim_sign(proposer, header) == *sig
    }
}

enum IdaEvent {
    Arrive {
        from: usize,
        to: usize,
        msg: Arc<Message>,
    },
    Receive {
        from: usize,
        to: usize,
        msg: Arc<Message>,
    },
    Timer {
        node: usize,
        at: Instant,
    },
}

/// The proposer's shards when it encodes inconsistently: data shards of
/// the block, parity shards of another block, all under one signed root.
fn inconsistent_shards(
    cfg: &SimConfig,
    block: &[u8],
    id_of: impl Fn(&Header) -> Hash,
) -> Vec<(u16, Arc<Message>)> {
    let (k, m) = crate::relay::params(cfg.nodes);
    let (Ok(a), Ok(b)) = (
        code::encode(block, k, m),
        code::encode(&block.iter().map(|x| x ^ 0x5a).collect::<Vec<u8>>(), k, m),
    ) else {
        return Vec::new();
    };
    let shards: Vec<Vec<u8>> = a.shards[..k]
        .iter()
        .chain(b.shards[k..].iter())
        .cloned()
        .collect();
    let tree = statesync_manifest::merkle::MerkleTree::new(
        shards
            .iter()
            .enumerate()
            .map(|(i, d)| code::leaf(i as u16, d))
            .collect(),
    );
    let header = Header {
        proposer: 0,
        height: 1,
        block_hash: Hash(*blake3::hash(block).as_bytes()),
        block_len: block.len() as u32,
        k: k as u16,
        m: m as u16,
        shard_len: a.shard_len as u32,
        shard_root: tree.root(),
    };
    let sh = SignedHeader {
        header,
        signature: sim_sign(0, &header.encode()),
    };
    let _ = id_of(&header);
    shards
        .iter()
        .enumerate()
        .map(|(i, d)| {
            (
                i as u16,
                Arc::new(Message::Shard {
                    header: sh,
                    index: i as u16,
                    proof: tree.proof(0, i as u64).unwrap_or_default(),
                    data: d.as_slice().into(),
                }),
            )
        })
        .collect()
}

/// IDA gossip with the real relay core on every node.
pub fn run_ida(cfg: &SimConfig) -> Outcome {
    let wall = Instant::now();
    let n = cfg.nodes;
    let byz = byzantine_set(cfg);
    let t0 = Instant::now();
    let gcfg = Config {
        keep_served: 1,
        ..Config::default()
    };
    let mut nodes: Vec<Gossip<SimVerifier>> = (0..n)
        .map(|i| Gossip::new(i as u16, n as u16, gcfg.clone(), SimVerifier))
        .collect();
    let mut net = Net::new(cfg);
    let mut q: Queue<IdaEvent> = Queue::new();
    let mut delivered = vec![f64::INFINITY; n];
    let mut rejected = 0;
    let mut forged = 0u64;
    let mut timer_at: Vec<Option<Instant>> = vec![None; n];
    let block = test_block(cfg);
    if cfg.inconsistent_proposer {
        let shards = inconsistent_shards(cfg, &block, |h| h.id());
        let id = shards
            .first()
            .and_then(|(_, m)| match m.as_ref() {
                Message::Shard { header, .. } => Some(header.header.id()),
                _ => None,
            })
            .unwrap_or(Hash::ZERO);
        for (i, msg) in shards {
            let r = usize::from(nodes[0].relayer(&id, 0, i));
            let targets: Vec<usize> = if r == 0 { (1..n).collect() } else { vec![r] };
            for to in targets {
                let size = msg.len();
                let at = net.send(0.0, 0, to, size);
                q.push(
                    at,
                    IdaEvent::Arrive {
                        from: 0,
                        to,
                        msg: msg.clone(),
                    },
                );
            }
        }
    } else if nodes[0].propose(&block, 1, |h| sim_sign(0, h)).is_err() {
        return empty("ida", wall);
    }
    // Performs what node `i` asks, at virtual time `now`.
    let act = |i: usize,
               now: f64,
               nodes: &mut Vec<Gossip<SimVerifier>>,
               net: &mut Net,
               q: &mut Queue<IdaEvent>,
               delivered: &mut Vec<f64>,
               rejected: &mut usize,
               timer_at: &mut Vec<Option<Instant>>| {
        while let Some(a) = nodes[i].poll_action() {
            match a {
                Action::Send { to, msg } => {
                    let to = usize::from(to);
                    let msg = if byz.contains(&i) {
                        match cfg.byzantine_mode {
                            Byzantine::Drop => continue,
                            Byzantine::Forge => match msg.as_ref() {
                                Message::Shard {
                                    header,
                                    index,
                                    proof,
                                    data,
                                } => {
                                    let mut d = data.to_vec();
                                    if let Some(b) = d.first_mut() {
                                        *b ^= 0xff;
                                    }
                                    Arc::new(Message::Shard {
                                        header: *header,
                                        index: *index,
                                        proof: proof.clone(),
                                        data: d.into(),
                                    })
                                }
                                _ => msg,
                            },
                        }
                    } else {
                        msg
                    };
                    let at = net.send(now, i, to, msg.len());
                    q.push(at, IdaEvent::Arrive { from: i, to, msg });
                }
                Action::Deliver { .. } => delivered[i] = delivered[i].min(now),
                Action::Evidence { .. } => *rejected += 1,
                Action::Misbehaved { .. } => {}
            }
        }
        if let Some(t) = nodes[i].poll_timeout()
            && timer_at[i].is_none_or(|old| t < old)
        {
            timer_at[i] = Some(t);
            let secs = t.saturating_duration_since(t0).as_secs_f64();
            q.push(secs, IdaEvent::Timer { node: i, at: t });
        }
    };
    act(
        0,
        0.0,
        &mut nodes,
        &mut net,
        &mut q,
        &mut delivered,
        &mut rejected,
        &mut timer_at,
    );
    let limit = 120.0;
    while let Some((now, e)) = q.pop() {
        if now > limit {
            break;
        }
        let vt = t0 + Duration::from_secs_f64(now);
        match e {
            IdaEvent::Arrive { from, to, msg } => {
                let at = net.receive(now, to, msg.len());
                q.push(at, IdaEvent::Receive { from, to, msg });
            }
            IdaEvent::Receive { from, to, msg } => {
                nodes[to].handle_message(from as u16, &msg, vt);
                act(
                    to,
                    now,
                    &mut nodes,
                    &mut net,
                    &mut q,
                    &mut delivered,
                    &mut rejected,
                    &mut timer_at,
                );
            }
            IdaEvent::Timer { node, at } => {
                if timer_at[node] != Some(at) {
                    continue; // superseded
                }
                timer_at[node] = None;
                // The exact instant asked for: the queue's key is rounded.
                nodes[node].handle_timeout(at.max(vt));
                act(
                    node,
                    now,
                    &mut nodes,
                    &mut net,
                    &mut q,
                    &mut delivered,
                    &mut rejected,
                    &mut timer_at,
                );
            }
        }
    }
    for (i, g) in nodes.iter().enumerate() {
        if !byz.contains(&i) {
            forged += g.stats().forged;
        }
    }
    let mut delivery: Vec<f64> = (1..n)
        .filter(|i| !byz.contains(i))
        .map(|i| delivered[i])
        .collect();
    delivery.sort_by(f64::total_cmp);
    Outcome {
        strategy: "ida",
        delivery,
        proposer_upload: net.bytes_up[0],
        total_bytes: net.bytes_up.iter().sum(),
        rejected,
        forged_detected: forged,
        wall_ms: wall.elapsed().as_millis(),
    }
}

fn empty(strategy: &'static str, wall: Instant) -> Outcome {
    Outcome {
        strategy,
        delivery: Vec::new(),
        proposer_upload: 0,
        total_bytes: 0,
        rejected: 0,
        forged_detected: 0,
        wall_ms: wall.elapsed().as_millis(),
    }
}

/// A random mesh of about `d` neighbours per node (each node links to `d/2`
/// random others; links are both ways).
fn mesh(cfg: &SimConfig) -> Vec<Vec<usize>> {
    let n = cfg.nodes;
    let mut adj: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut r = SplitMix64::new(cfg.seed ^ 0x3e54);
    for a in 0..n {
        let mut tries = 0;
        while adj[a].len() < cfg.mesh_degree / 2 + 1 && tries < 100 {
            tries += 1;
            let b = r.below(n as u64) as usize;
            if b != a && !adj[a].contains(&b) && adj[b].len() < cfg.mesh_degree + 4 {
                adj[a].push(b);
                adj[b].push(a);
            }
        }
    }
    adj
}

/// Flooding of the whole block over a gossipsub-like mesh.
pub fn run_flood(cfg: &SimConfig) -> Outcome {
    let wall = Instant::now();
    let n = cfg.nodes;
    let byz = byzantine_set(cfg);
    let adj = mesh(cfg);
    let mut net = Net::new(cfg);
    let size = cfg.block_len + 200;
    let mut have = vec![f64::INFINITY; n];
    have[0] = 0.0;
    // (kind 0 = arrive, 1 = received), from, to
    let mut q: Queue<(u8, usize, usize)> = Queue::new();
    for &b in &adj[0] {
        let at = net.send(0.0, 0, b, size);
        q.push(at, (0, 0, b));
    }
    while let Some((now, (kind, from, to))) = q.pop() {
        if kind == 0 {
            let at = net.receive(now, to, size);
            q.push(at, (1, from, to));
            continue;
        }
        if have[to].is_finite() {
            continue;
        }
        have[to] = now;
        if byz.contains(&to) {
            continue;
        }
        for &b in &adj[to] {
            if b != from {
                let at = net.send(now, to, b, size);
                q.push(at, (0, to, b));
            }
        }
    }
    let mut delivery: Vec<f64> = (1..n)
        .filter(|i| !byz.contains(i))
        .map(|i| have[i])
        .collect();
    delivery.sort_by(f64::total_cmp);
    Outcome {
        strategy: "flood",
        delivery,
        proposer_upload: net.bytes_up[0],
        total_bytes: net.bytes_up.iter().sum(),
        rejected: 0,
        forged_detected: 0,
        wall_ms: wall.elapsed().as_millis(),
    }
}

/// A Turbine-like tree per shred: FEC sets of 32 data + 32 coding shreds,
/// each shred sent by the proposer to the root of its own random tree of
/// fanout `tree_fanout`, the root to its layer, each of those to its own
/// children.
pub fn run_tree(cfg: &SimConfig) -> Outcome {
    let wall = Instant::now();
    let n = cfg.nodes;
    let byz = byzantine_set(cfg);
    let mut net = Net::new(cfg);
    let payload = cfg.shred_len.max(64);
    let data_shreds = cfg.block_len.div_ceil(payload);
    let sets = data_shreds.div_ceil(32);
    let shreds = sets * 64;
    let size = payload + 88; // + header, signature, proof (Solana's ~1228 + headers)
    let f = cfg.tree_fanout.max(1);
    // got[node][set] = shreds of that set received.
    let mut got = vec![vec![0u16; sets]; n];
    let mut complete = vec![0usize; n];
    let mut have = vec![f64::INFINITY; n];
    have[0] = 0.0;
    // (kind, shred, from, to): kind 0 arrive, 1 received.
    let mut q: Queue<(u8, usize, usize, usize)> = Queue::new();
    let order = |s: usize| -> Vec<usize> {
        let mut v: Vec<usize> = (1..n).collect();
        SplitMix64::new(cfg.seed ^ (s as u64).wrapping_mul(0x7f4a_7c15)).shuffle(&mut v);
        v
    };
    for s in 0..shreds {
        let root = order(s)[0];
        let at = net.send(0.0, 0, root, size);
        q.push(at, (0, s, 0, root));
    }
    while let Some((now, (kind, s, from, to))) = q.pop() {
        if kind == 0 {
            let at = net.receive(now, to, size);
            q.push(at, (1, s, from, to));
            continue;
        }
        let set = s / 64;
        got[to][set] += 1;
        if got[to][set] == 32 {
            complete[to] += 1;
            if complete[to] == sets {
                have[to] = now;
            }
        }
        if byz.contains(&to) {
            continue;
        }
        // Children of `to` in shred `s`'s tree.
        let ord = order(s);
        let pos = ord.iter().position(|&x| x == to).unwrap_or(usize::MAX);
        let children: Vec<usize> = if pos == 0 {
            ord.iter().skip(1).take(f).copied().collect()
        } else if pos <= f {
            let lo = 1 + f + (pos - 1) * f;
            ord.iter().skip(lo).take(f).copied().collect()
        } else {
            Vec::new()
        };
        for c in children {
            let at = net.send(now, to, c, size);
            q.push(at, (0, s, to, c));
        }
    }
    let mut delivery: Vec<f64> = (1..n)
        .filter(|i| !byz.contains(i))
        .map(|i| have[i])
        .collect();
    delivery.sort_by(f64::total_cmp);
    Outcome {
        strategy: "tree",
        delivery,
        proposer_upload: net.bytes_up[0],
        total_bytes: net.bytes_up.iter().sum(),
        rejected: 0,
        forged_detected: 0,
        wall_ms: wall.elapsed().as_millis(),
    }
}
