//! The relay rules of IDA gossip, with no I/O.
//!
//! A committee of `n` members (indices `0..n`) spreads blocks:
//!
//! 1. The proposer encodes a block into `k + m` shards ([`params`]: about
//!    one shard per member, `k` a little over half, so the proposer uploads
//!    each byte about 1.8 times) and sends shard `i` to its relayer: the
//!    members other than the proposer in turn, from an offset taken from
//!    the block id (so the load moves around). The proposer relays nothing
//!    itself: its upload is the block's shards once.
//! 2. A member that gets a shard **first-hand** (from the proposer, for
//!    which it is the relayer) sends it once to every other member. Shards
//!    from anyone else are kept, never relayed: every member uploads about
//!    `(k + m) / k` times the block, and every shard crosses two hops.
//! 3. Everything is checked before it is kept or relayed: the header's
//!    signature (once per block), the shard's Merkle proof against the
//!    signed root, its index. A sender of a forged header or shard is
//!    reported ([`Action::Misbehaved`]).
//! 4. With `k` valid shards a member decodes, checks the block's hash, and
//!    re-encodes to check the shard root: a proposer that encoded
//!    inconsistently (shards that are each proven but do not belong to one
//!    block) is caught and reported with its signed header as evidence
//!    ([`Action::Evidence`]); nothing is delivered.
//! 5. A member still short of `k` shards when none has arrived for
//!    [`Config::pull_after`] pulls: it asks up to [`Config::pull_peers`]
//!    members that sent it shards (the proposer last: its upload is what
//!    IDA saves) each for a different part of what it lacks (what it needs
//!    and a quarter more), again every [`Config::pull_retry`] with other
//!    members; a member answers with the shards it holds, or re-encodes a
//!    block it has delivered.
//! 6. **Listeners** (nodes outside the committee that want the blocks,
//!    such as followers) subscribe to members: a member also sends each
//!    shard it got first-hand to its listeners (ids `n` and up, at most
//!    [`Config::max_listeners`]), and answers their pulls. A listener core
//!    ([`Gossip::listener`]) checks and decodes like a member but never
//!    relays: a listener subscribed to every member gets every shard once,
//!    from as many senders, and the proposer sends it nothing.
//! 7. Bounds: at most [`Config::max_in_flight_per_proposer`] blocks per
//!    proposer and [`Config::max_pending_bytes`] of shards in all are held;
//!    shards of a block already delivered or rejected, of a stale height,
//!    or beyond the bounds are dropped; duplicates are not relayed; an
//!    undecodable block is given up after [`Config::give_up_after`].
//!
//! # Driving it
//!
//! [`Gossip::propose`] a block (proposer), [`Gossip::handle_message`] for
//! every message from a member, [`Gossip::handle_timeout`] at
//! [`Gossip::poll_timeout`], and perform the [`Action`]s from
//! [`Gossip::poll_action`]. Time is passed in; nothing here reads a clock.

use crate::code::{self, Encoded};
use crate::wire::{HEADER_LEN, Header, Message, SIG_LEN, SignedHeader};
use statesync_manifest::hash::Hash;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Checks proposers' signatures.
pub trait Verifier {
    /// Whether `sig` is `proposer`'s signature over `header`.
    fn verify(&self, proposer: u16, header: &[u8; HEADER_LEN], sig: &[u8; SIG_LEN]) -> bool;
}

/// Tunables.
#[derive(Clone, Debug)]
pub struct Config {
    /// Short of `k` shards and none new for this long: pull.
    pub pull_after: Duration,
    /// Pull again this often while short.
    pub pull_retry: Duration,
    /// Peers asked per pull.
    pub pull_peers: usize,
    /// Give a block up this long after its first shard.
    pub give_up_after: Duration,
    /// Blocks per proposer held at once.
    pub max_in_flight_per_proposer: usize,
    /// Bytes of shards held at once over all blocks.
    pub max_pending_bytes: usize,
    /// Largest block.
    pub max_block_len: u32,
    /// Blocks more than this many heights below a proposer's latest
    /// delivered one are stale.
    pub stale_heights: u64,
    /// Delivered blocks whose shards are kept to answer pulls.
    pub keep_served: usize,
    /// Listeners a member relays to at most.
    pub max_listeners: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pull_after: Duration::from_millis(1000),
            pull_retry: Duration::from_millis(1000),
            pull_peers: 3,
            give_up_after: Duration::from_secs(30),
            max_in_flight_per_proposer: 4,
            max_pending_bytes: 256 << 20,
            max_block_len: 32 << 20,
            stale_heights: 64,
            keep_served: 8,
            max_listeners: 64,
        }
    }
}

/// Shards for a committee of `n` members: `(k, m)` with `k + m` one per
/// member other than the proposer (at least 8) and `k` 55% of them, so
/// that the honest two thirds of the relayers carry comfortably more than
/// `k` shards.
pub fn params(n: usize) -> (usize, usize) {
    let total = n.saturating_sub(1).clamp(8, code::MAX_SHARDS);
    let k = (total * 55).div_ceil(100);
    (k, total - k)
}

/// The member of a committee of `n` that relays shard `i` of block `id`
/// from `proposer` (see [`Gossip::relayer`]).
pub fn relayer(n: u16, id: &Hash, proposer: u16, i: u16) -> u16 {
    if n < 2 {
        return 0;
    }
    let offset = u32::from(u16::from_le_bytes([id.0[0], id.0[1]]));
    let r = ((offset + u32::from(i)) % u32::from(n - 1)) as u16;
    if r >= proposer { r + 1 } else { r }
}

/// What the shell must do.
#[derive(Clone, Debug)]
pub enum Action {
    /// Send `msg` to member `to`.
    Send {
        /// The member.
        to: u16,
        /// The message.
        msg: Arc<Message>,
    },
    /// A block arrived whole and checked.
    Deliver {
        /// Its id.
        id: Hash,
        /// Its header.
        header: Header,
        /// Its bytes.
        block: Vec<u8>,
    },
    /// A member sent something forged (a bad signature, proof or index).
    Misbehaved {
        /// The member.
        peer: u16,
        /// What it sent.
        reason: String,
    },
    /// The proposer encoded a block inconsistently: the signed header and
    /// what was found are the evidence; the block is not delivered.
    Evidence {
        /// The proposer's signed header.
        header: SignedHeader,
        /// What was found.
        reason: String,
    },
}

struct Pending {
    header: SignedHeader,
    shards: HashMap<u16, (Arc<[u8]>, Vec<Hash>)>,
    first: Instant,
    /// When the last new valid shard arrived.
    progress: Instant,
    last_pull: Option<Instant>,
    senders: Vec<u16>,
    pulls: usize,
    bytes: usize,
}

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Blocks delivered.
    pub delivered: u64,
    /// Blocks rejected (inconsistent encoding).
    pub rejected: u64,
    /// Blocks given up (never decodable).
    pub given_up: u64,
    /// Shards received and valid.
    pub shards_ok: u64,
    /// Shards dropped as duplicates or for a finished block.
    pub shards_dropped: u64,
    /// Shards or headers that failed their checks.
    pub forged: u64,
    /// Pulls sent.
    pub pulls: u64,
}

/// The gossip core of one committee member.
pub struct Gossip<V> {
    me: u16,
    n: u16,
    cfg: Config,
    verifier: V,
    pending: HashMap<Hash, Pending>,
    pending_bytes: usize,
    /// Recently finished blocks (delivered, rejected, given up).
    done: VecDeque<Hash>,
    done_set: HashSet<Hash>,
    /// Encodings of recent delivered blocks, to answer pulls.
    served: VecDeque<(Hash, Arc<Served>)>,
    latest: HashMap<u16, u64>,
    /// Listeners (ids `n` and up) this member relays to.
    listeners: Vec<u16>,
    actions: VecDeque<Action>,
    stats: Stats,
}

/// A delivered block kept to answer pulls; its shards are re-encoded on
/// the first pull (a node keeps the block, not twice its size in shards).
struct Served {
    header: SignedHeader,
    block: Vec<u8>,
    enc: std::sync::OnceLock<Option<Encoded>>,
}

impl Served {
    fn shards(&self) -> Option<&Encoded> {
        self.enc
            .get_or_init(|| {
                let h = self.header.header;
                code::encode(&self.block, usize::from(h.k), usize::from(h.m)).ok()
            })
            .as_ref()
    }
}

impl<V: Verifier> Gossip<V> {
    /// Member `me` of a committee of `n`.
    pub fn new(me: u16, n: u16, cfg: Config, verifier: V) -> Gossip<V> {
        Gossip {
            me,
            n,
            cfg,
            verifier,
            pending: HashMap::new(),
            pending_bytes: 0,
            done: VecDeque::new(),
            done_set: HashSet::new(),
            served: VecDeque::new(),
            latest: HashMap::new(),
            listeners: Vec::new(),
            actions: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// A listener of a committee of `n`: it receives, checks, decodes and
    /// delivers blocks like a member, and pulls from the members that sent
    /// it shards, but it never relays nor proposes. Its id is `u16::MAX`.
    pub fn listener(n: u16, cfg: Config, verifier: V) -> Gossip<V> {
        Gossip::new(u16::MAX, n, cfg, verifier)
    }

    /// Whether this core is a listener.
    pub fn is_listener(&self) -> bool {
        self.me >= self.n
    }

    /// Adds listener `id` (`n` or more): it gets the shards this member
    /// relays, and its pulls are answered. False when `id` is not a
    /// listener id, this core is a listener itself, or
    /// [`Config::max_listeners`] are subscribed already.
    pub fn add_listener(&mut self, id: u16) -> bool {
        if id < self.n || self.is_listener() || id == self.me {
            return false;
        }
        if self.listeners.contains(&id) {
            return true;
        }
        if self.listeners.len() >= self.cfg.max_listeners {
            return false;
        }
        self.listeners.push(id);
        true
    }

    /// Removes listener `id`.
    pub fn remove_listener(&mut self, id: u16) {
        self.listeners.retain(|l| *l != id);
    }

    /// Listeners subscribed.
    pub fn listeners(&self) -> usize {
        self.listeners.len()
    }

    /// Whether shards of a block at this height are arriving (its decode
    /// may be near).
    pub fn is_receiving(&self, height: u64) -> bool {
        self.pending
            .values()
            .any(|p| p.header.header.height == height)
    }

    /// The bytes of a recently delivered (or proposed) block with this
    /// block hash.
    pub fn delivered(&self, block_hash: &Hash) -> Option<&[u8]> {
        self.served
            .iter()
            .find(|(_, s)| s.header.header.block_hash == *block_hash)
            .map(|(_, s)| s.block.as_slice())
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The next action.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The member that relays shard `i` of block `id` from `proposer`: the
    /// other members in turn, from an offset the block id gives.
    pub fn relayer(&self, id: &Hash, proposer: u16, i: u16) -> u16 {
        relayer(self.n, id, proposer, i)
    }

    /// Encodes `block` at `height` and sends its shards to their relayers;
    /// `sign` signs the header. Returns the block id. The proposer counts
    /// its own block as delivered.
    pub fn propose(
        &mut self,
        block: &[u8],
        height: u64,
        sign: impl FnOnce(&[u8; HEADER_LEN]) -> [u8; SIG_LEN],
    ) -> Result<Hash, code::CodeError> {
        let (k, m) = params(usize::from(self.n));
        let enc = code::encode(block, k, m)?;
        let header = Header {
            proposer: self.me,
            height,
            block_hash: Hash(*blake3::hash(block).as_bytes()),
            block_len: block.len() as u32,
            k: k as u16,
            m: m as u16,
            shard_len: enc.shard_len as u32,
            shard_root: enc.root(),
        };
        let signature = sign(&header.encode());
        let sh = SignedHeader { header, signature };
        let id = header.id();
        for i in 0..(k + m) as u16 {
            let msg = Arc::new(Message::Shard {
                header: sh,
                index: i,
                proof: enc.proof(i),
                data: enc.shards[usize::from(i)].as_slice().into(),
            });
            let r = self.relayer(&id, self.me, i);
            if r == self.me {
                self.broadcast(&msg, 0, &[]);
            } else {
                self.actions.push_back(Action::Send { to: r, msg });
            }
        }
        self.finish(id);
        self.latest.insert(self.me, height);
        self.keep_served(id, sh, block.to_vec(), Some(enc));
        Ok(id)
    }

    /// Sends `msg` to every other member, starting with the one after this
    /// member: each relayer serves the others in a different order, so no
    /// member is last in every relayer's queue and each gets its `k` shards
    /// at an even pace.
    fn broadcast(&mut self, msg: &Arc<Message>, start: u16, except: &[u16]) {
        for j in 0..self.n {
            let to = ((u32::from(start) + u32::from(j)) % u32::from(self.n)) as u16;
            if to != self.me && !except.contains(&to) {
                self.actions.push_back(Action::Send {
                    to,
                    msg: msg.clone(),
                });
            }
        }
    }

    fn finish(&mut self, id: Hash) {
        if let Some(p) = self.pending.remove(&id) {
            self.pending_bytes -= p.bytes;
        }
        if self.done_set.insert(id) {
            self.done.push_back(id);
            if self.done.len() > 1024
                && let Some(old) = self.done.pop_front()
            {
                self.done_set.remove(&old);
            }
        }
    }

    fn keep_served(
        &mut self,
        id: Hash,
        header: SignedHeader,
        block: Vec<u8>,
        enc: Option<Encoded>,
    ) {
        if self.cfg.keep_served == 0 {
            return;
        }
        let cell = std::sync::OnceLock::new();
        if let Some(e) = enc {
            let _ = cell.set(Some(e));
        }
        self.served.push_back((
            id,
            Arc::new(Served {
                header,
                block,
                enc: cell,
            }),
        ));
        while self.served.len() > self.cfg.keep_served {
            self.served.pop_front();
        }
    }

    fn misbehaved(&mut self, peer: u16, reason: String) {
        self.stats.forged += 1;
        self.actions.push_back(Action::Misbehaved { peer, reason });
    }

    /// A message from member `from`.
    /// Members send shards and pulls; listeners (added with
    /// [`Gossip::add_listener`]) only pulls.
    pub fn handle_message(&mut self, from: u16, msg: &Arc<Message>, now: Instant) {
        if from == self.me {
            return;
        }
        if from >= self.n {
            if let Message::Pull { block, indices } = msg.as_ref()
                && self.listeners.contains(&from)
            {
                self.answer_pull(from, block, indices);
            }
            return;
        }
        match msg.as_ref() {
            Message::Pull { block, indices } => self.answer_pull(from, block, indices),
            Message::Shard {
                header,
                index,
                proof,
                data,
            } => self.on_shard(from, msg, header, *index, proof, data, now),
        }
    }

    fn answer_pull(&mut self, from: u16, block: &Hash, indices: &[u16]) {
        if let Some((_, s)) = self.served.iter().find(|(id, _)| id == block) {
            let s = s.clone();
            let Some(enc) = s.shards() else {
                return;
            };
            for &i in indices {
                if let Some(d) = enc.shards.get(usize::from(i)) {
                    self.actions.push_back(Action::Send {
                        to: from,
                        msg: Arc::new(Message::Shard {
                            header: s.header,
                            index: i,
                            proof: enc.proof(i),
                            data: d.as_slice().into(),
                        }),
                    });
                }
            }
            return;
        }
        if let Some(p) = self.pending.get(block) {
            let header = p.header;
            let have: Vec<(u16, Arc<[u8]>, Vec<Hash>)> = indices
                .iter()
                .filter_map(|i| p.shards.get(i).map(|(d, pr)| (*i, d.clone(), pr.clone())))
                .collect();
            for (i, d, pr) in have {
                self.actions.push_back(Action::Send {
                    to: from,
                    msg: Arc::new(Message::Shard {
                        header,
                        index: i,
                        proof: pr,
                        data: d,
                    }),
                });
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_shard(
        &mut self,
        from: u16,
        msg: &Arc<Message>,
        sh: &SignedHeader,
        index: u16,
        proof: &[Hash],
        data: &Arc<[u8]>,
        now: Instant,
    ) {
        let h = sh.header;
        let id = h.id();
        if self.done_set.contains(&id) {
            self.stats.shards_dropped += 1;
            return;
        }
        if h.proposer >= self.n || h.block_len > self.cfg.max_block_len {
            self.misbehaved(
                from,
                format!(
                    "shard of an impossible block (proposer {}, {} bytes)",
                    h.proposer, h.block_len
                ),
            );
            return;
        }
        if self
            .latest
            .get(&h.proposer)
            .is_some_and(|l| h.height + self.cfg.stale_heights < *l)
        {
            self.stats.shards_dropped += 1;
            return;
        }
        if !self.pending.contains_key(&id) {
            // A new block: bounds first, then the signature (once).
            let held = self
                .pending
                .values()
                .filter(|p| p.header.header.proposer == h.proposer)
                .count();
            let size = h.shard_count() * h.shard_len as usize;
            if held >= self.cfg.max_in_flight_per_proposer
                || self.pending_bytes + size > self.cfg.max_pending_bytes
            {
                self.stats.shards_dropped += 1;
                return;
            }
            if !self.verifier.verify(h.proposer, &h.encode(), &sh.signature) {
                self.misbehaved(
                    from,
                    format!("header of block {id} not signed by proposer {}", h.proposer),
                );
                return;
            }
            self.pending.insert(
                id,
                Pending {
                    header: *sh,
                    shards: HashMap::new(),
                    first: now,
                    progress: now,
                    last_pull: None,
                    senders: Vec::new(),
                    pulls: 0,
                    bytes: 0,
                },
            );
        }
        let Some(p) = self.pending.get(&id) else {
            return;
        };
        if p.header.signature != sh.signature {
            // Same header, another signature: not the one we checked.
            self.misbehaved(from, format!("block {id} with a second signature"));
            return;
        }
        if p.shards.contains_key(&index) {
            self.stats.shards_dropped += 1;
            return;
        }
        if !code::verify_shard(&h.shard_root, h.shard_count(), index, data, proof) {
            self.misbehaved(from, format!("shard {index} of block {id} fails its proof"));
            return;
        }
        self.stats.shards_ok += 1;
        let first_hand = from == h.proposer && self.relayer(&id, h.proposer, index) == self.me;
        let stored = data.clone();
        if let Some(p) = self.pending.get_mut(&id) {
            p.progress = now;
            p.bytes += data.len();
            p.shards.insert(index, (stored, proof.to_vec()));
            if !p.senders.contains(&from) {
                p.senders.push(from);
            }
        }
        self.pending_bytes += data.len();
        if first_hand {
            let n = u32::from(self.n.max(1));
            let start = ((n - u32::from(index) % n) % n) as u16;
            self.broadcast(msg, start, &[h.proposer]);
            for &l in &self.listeners {
                self.actions.push_back(Action::Send {
                    to: l,
                    msg: msg.clone(),
                });
            }
        }
        self.try_decode(id);
    }

    fn try_decode(&mut self, id: Hash) {
        let Some(p) = self.pending.get(&id) else {
            return;
        };
        let h = p.header.header;
        if p.shards.len() < usize::from(h.k) {
            return;
        }
        let have: Vec<(u16, &[u8])> = p
            .shards
            .iter()
            .map(|(i, (d, _))| (*i, d.as_ref()))
            .collect();
        let sh = p.header;
        let (k, m) = (usize::from(h.k), usize::from(h.m));
        let verdict = code::decode(h.block_len as usize, k, m, &have)
            .map_err(|e| format!("undecodable: {e}"))
            .and_then(|block| {
                if Hash(*blake3::hash(&block).as_bytes()) != h.block_hash {
                    return Err("the decoded block does not hash to the signed block hash".into());
                }
                let enc = code::encode(&block, k, m).map_err(|e| e.to_string())?;
                if enc.root() != h.shard_root {
                    return Err("re-encoding the decoded block gives another shard root: the shards do not belong to one block".into());
                }
                Ok((block, enc))
            });
        self.finish(id);
        match verdict {
            Ok((block, _enc)) => {
                self.stats.delivered += 1;
                let l = self.latest.entry(h.proposer).or_default();
                *l = (*l).max(h.height);
                self.keep_served(id, sh, block.clone(), None);
                self.actions.push_back(Action::Deliver {
                    id,
                    header: h,
                    block,
                });
            }
            Err(reason) => {
                self.stats.rejected += 1;
                self.actions
                    .push_back(Action::Evidence { header: sh, reason });
            }
        }
    }

    /// The earliest time [`Gossip::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|p| match p.last_pull {
                None => (p.progress + self.cfg.pull_after).min(p.first + self.cfg.give_up_after),
                Some(t) => (t + self.cfg.pull_retry)
                    .max(p.progress + self.cfg.pull_after)
                    .min(p.first + self.cfg.give_up_after),
            })
            .min()
    }

    /// Pulls missing shards of blocks that are late; gives up hopeless ones.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<Hash> = self.pending.keys().copied().collect();
        for id in ids {
            let Some(p) = self.pending.get_mut(&id) else {
                continue;
            };
            if now.saturating_duration_since(p.first) >= self.cfg.give_up_after {
                self.stats.given_up += 1;
                self.finish(id);
                continue;
            }
            let due = match p.last_pull {
                None => p.progress + self.cfg.pull_after,
                Some(t) => (t + self.cfg.pull_retry).max(p.progress + self.cfg.pull_after),
            };
            if now < due {
                continue;
            }
            p.last_pull = Some(now);
            let h = p.header.header;
            let need = usize::from(h.k).saturating_sub(p.shards.len());
            let want = (need + need / 4 + 1).min(crate::wire::MAX_PULL);
            let missing: Vec<u16> = (0..h.shard_count() as u16)
                .filter(|i| !p.shards.contains_key(i))
                .collect();
            if missing.is_empty() || p.senders.is_empty() {
                continue;
            }
            // Other indices on every retry: the ones asked before may sit
            // with members that do not have them.
            let skip = (p.pulls * want) % missing.len();
            let wanted: Vec<u16> = missing
                .iter()
                .cycle()
                .skip(skip)
                .take(want.min(missing.len()))
                .copied()
                .collect();
            // Members that sent shards are alive; the proposer last.
            let mut order: Vec<u16> = p
                .senders
                .iter()
                .copied()
                .filter(|s| *s != h.proposer)
                .collect();
            if order.is_empty() {
                order.push(h.proposer);
            }
            let peers = self.cfg.pull_peers.clamp(1, order.len());
            let ask: Vec<u16> = (0..peers)
                .map(|j| order[(p.pulls * peers + j) % order.len()])
                .collect();
            p.pulls += 1;
            // Each asked member gets a different part of the wanted shards.
            for (j, to) in ask.into_iter().enumerate() {
                let indices: Vec<u16> = wanted.iter().skip(j).step_by(peers).copied().collect();
                if indices.is_empty() {
                    continue;
                }
                self.stats.pulls += 1;
                self.actions.push_back(Action::Send {
                    to,
                    msg: Arc::new(Message::Pull { block: id, indices }),
                });
            }
        }
    }
}
