//! The committee: validators that each hold one key (docs/chain.md,
//! "Validators"). Validator 0 proposes (fixed: see docs/chain.md for why);
//! it executes its proposal, signs it and spreads it with IDA gossip
//! (`statesync-gossip`, carried in `BlockRequest::Gossip`); every validator
//! that decodes it checks and executes it and sends its vote to the
//! proposer; a quorum of votes is the finality proof of the block.
//!
//! Nodes outside the committee (followers) are **listeners**: when a
//! validator's hello reaches one, it subscribes, and that validator relays
//! the shards it gets first-hand to it too; the follower decodes the
//! proposal like a member. Once final, the block travels as a small `Final`
//! message (header and finality proof) to peers that have the body from
//! gossip, joined there with the decoded body; other peers get the block
//! whole (pushed) or fetch it.
//!
//! This module holds the committee's state and the IDA core; the chain node
//! does the rest (executor commands, pushes). Nothing here performs I/O:
//! messages to send are queued as `(PeerId, BlockRequest)`.

use statesync_chain::{Block, FinalityProof, PROPOSER, Spec, ValidatorKey};
use statesync_gossip::{Action as GossipAction, Config as GossipConfig, Gossip, Message};
use statesync_manifest::hash::Hash;
use statesync_net::libp2p::PeerId;
use statesync_proto::blocks::BlockRequest;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a proposal waits for its quorum before it is spread again.
const RESEND_PROPOSAL: Duration = Duration::from_secs(2);
/// How often a validator sends its vote again while the block it voted for
/// is not final (the proposer may have restarted and lost it).
const RESEND_VOTE: Duration = Duration::from_secs(1);
/// How long a final head waits for its body from gossip (a decode under
/// way, pulls included) before the block is fetched whole instead.
const FINAL_WAITS: Duration = Duration::from_millis(1500);
/// Final heads waiting for their body at most.
const MAX_WAITING_FINALS: usize = 16;
/// Decoded bodies remembered (chain hash -> gossip block hash).
const MAX_BODIES: usize = 16;

/// What validators sign when they gossip a proposal: the gossip header,
/// bound to this chain.
fn gossip_sign_bytes(chain: &Hash, header: &[u8]) -> Vec<u8> {
    let mut m = b"statesync gossip v1 header".to_vec();
    m.extend_from_slice(&chain.0);
    m.extend_from_slice(header);
    m
}

/// Checks gossip headers against the validators' keys.
struct Keys(Spec);

impl statesync_gossip::Verifier for Keys {
    fn verify(
        &self,
        proposer: u16,
        header: &[u8; statesync_gossip::wire::HEADER_LEN],
        sig: &[u8; statesync_gossip::wire::SIG_LEN],
    ) -> bool {
        self.0
            .check_signed(proposer, &gossip_sign_bytes(&self.0.id, header), sig)
    }
}

/// The proposal being voted on (proposer only).
struct Proposal {
    block: Block,
    votes: BTreeMap<u16, [u8; 64]>,
    sent: Instant,
    finalizing: bool,
}

/// A vote sent and not yet followed by the final block (validators only).
struct MyVote {
    height: u64,
    hash: Hash,
    sig: [u8; 64],
    sent: Instant,
}

/// What the committee asks of the chain node.
pub(crate) enum CommitteeOut {
    /// Send this to that peer (answer ignored).
    Send(PeerId, BlockRequest),
    /// A proposal arrived whole and checked by the gossip layer: execute it
    /// and vote.
    Execute(Box<Block>),
    /// The proposal has its quorum: import it as final.
    Finalize(Box<Block>),
    /// A final head that waited met its body: the whole final block, from
    /// that peer's announcement.
    Assembled(PeerId, Box<Block>),
    /// A final head waited for its body in vain: fetch the block from that
    /// peer (it imported it).
    FetchFrom(PeerId, u64),
    /// A member sent forged gossip (bad signature or proof).
    Misbehaved(PeerId, String),
    /// A line for the log.
    Log(String),
}

/// Counters of the committee.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CommitteeStats {
    /// Proposals spread (resends included).
    pub proposals: u64,
    /// Votes sent (resends included).
    pub votes_sent: u64,
    /// Valid votes received (proposer).
    pub votes_received: u64,
    /// Proposals decoded from gossip.
    pub proposals_received: u64,
    /// Gossip from members that failed its checks.
    pub gossip_forged: u64,
    /// Proposals found inconsistently encoded (evidence).
    pub evidence: u64,
    /// Listeners subscribed to this validator.
    pub listeners: u64,
    /// Validators this listener subscribed to.
    pub subscribed: u64,
    /// Final blocks joined from a final head and a gossiped body.
    pub assembled: u64,
    /// Final heads whose body did not come by gossip in time (fetched).
    pub bodies_missed: u64,
}

/// A final head waiting for its body.
struct WaitingFinal {
    peer: PeerId,
    head: Block,
    since: Instant,
}

/// This node's part in the committee: a validator (member) or a listener.
pub(crate) struct Committee {
    spec: Spec,
    me: u16,
    /// `None` for a listener.
    key: Option<ValidatorKey>,
    gossip: Gossip<Keys>,
    peer_of: HashMap<u16, PeerId>,
    index_of: HashMap<PeerId, u16>,
    /// Listeners of this member: peer -> gossip id (`n` and up), and back.
    listener_id: HashMap<PeerId, u16>,
    listener_peer: HashMap<u16, PeerId>,
    /// Connected peers.
    connected: HashSet<PeerId>,
    /// Peers this node subscribed to (sent `Subscribe`).
    told: HashSet<PeerId>,
    /// Peers outside the committee that subscribed to this listener: they
    /// decode proposals from gossip too, so final heads suffice for them.
    heads_only: HashSet<PeerId>,
    /// Whether this listener has decoded a proposal from gossip.
    gets_gossip: bool,
    /// Decoded (or proposed) bodies: chain header hash -> gossip block hash.
    bodies: VecDeque<(Hash, Hash)>,
    waiting: Vec<WaitingFinal>,
    proposal: Option<Proposal>,
    my_vote: Option<MyVote>,
    out: VecDeque<CommitteeOut>,
    pub stats: CommitteeStats,
    /// Fault injection: relay forged shards (tests).
    pub forge: bool,
}

impl Committee {
    /// Validator `me` (its key) of `spec`'s committee.
    pub fn new(spec: Spec, me: u16, key: ValidatorKey) -> Committee {
        let n = spec.keys.len() as u16;
        let gossip = Gossip::new(me, n, GossipConfig::default(), Keys(spec.clone()));
        Committee::with(spec, me, Some(key), gossip)
    }

    /// A listener of `spec`'s committee (a node with no validator key).
    pub fn listener(spec: Spec) -> Committee {
        let n = spec.keys.len() as u16;
        let gossip = Gossip::listener(n, GossipConfig::default(), Keys(spec.clone()));
        Committee::with(spec, u16::MAX, None, gossip)
    }

    fn with(spec: Spec, me: u16, key: Option<ValidatorKey>, gossip: Gossip<Keys>) -> Committee {
        Committee {
            gossip,
            spec,
            me,
            key,
            peer_of: HashMap::new(),
            index_of: HashMap::new(),
            listener_id: HashMap::new(),
            listener_peer: HashMap::new(),
            connected: HashSet::new(),
            told: HashSet::new(),
            heads_only: HashSet::new(),
            gets_gossip: false,
            bodies: VecDeque::new(),
            waiting: Vec::new(),
            proposal: None,
            my_vote: None,
            out: VecDeque::new(),
            stats: CommitteeStats::default(),
            forge: false,
        }
    }

    /// Whether this node proposes.
    pub fn is_proposer(&self) -> bool {
        self.key.is_some() && self.me == PROPOSER
    }

    /// Whether this node is a validator (not a listener).
    pub fn is_member(&self) -> bool {
        self.key.is_some()
    }

    /// This validator's index.
    pub fn me(&self) -> u16 {
        self.me
    }

    /// The next thing to do.
    pub fn poll(&mut self) -> Option<CommitteeOut> {
        self.out.pop_front()
    }

    /// The hello a validator sends to a peer that connected (none from a
    /// listener).
    pub fn hello(&self, local: &PeerId) -> Option<BlockRequest> {
        let key = self.key.as_ref()?;
        Some(BlockRequest::Hello {
            index: self.me,
            sig: self.spec.sign_hello(key, self.me, &local.to_bytes()),
        })
    }

    /// A peer says it is validator `index`. False if the signature does not
    /// bind its peer id to that validator's key (its fault).
    pub fn on_hello(&mut self, peer: PeerId, index: u16, sig: &[u8; 64]) -> bool {
        if index == self.me || !self.spec.check_hello(index, &peer.to_bytes(), sig) {
            return false;
        }
        if let Some(old) = self.peer_of.insert(index, peer)
            && old != peer
        {
            self.index_of.remove(&old);
        }
        self.index_of.insert(peer, index);
        if !self.is_member() {
            // A listener asks every validator it meets for its shards.
            self.stats.subscribed = self.peer_of.len() as u64;
            self.subscribe(peer);
            return true;
        }
        // A proposer that came back may have lost the vote.
        if index == PROPOSER
            && let Some(v) = self.my_vote.as_mut()
        {
            v.sent = Instant::now() - RESEND_VOTE;
        }
        true
    }

    fn subscribe(&mut self, peer: PeerId) {
        self.told.insert(peer);
        self.out
            .push_back(CommitteeOut::Send(peer, BlockRequest::Subscribe));
    }

    /// A peer connected. A listener that gets proposals by gossip tells it
    /// so (a `Subscribe`): final heads suffice for it.
    pub fn on_connected(&mut self, peer: PeerId) {
        self.connected.insert(peer);
        if self.gets_gossip && !self.is_member() && !self.told.contains(&peer) {
            self.subscribe(peer);
        }
    }

    /// A peer subscribes. To a validator: it gets this validator's shards.
    /// To a listener: it decodes proposals from gossip too, so it is sent
    /// final heads. False when refused: the peer is a member, or the
    /// listeners are at their bound (it gets whole blocks then).
    pub fn on_subscribe(&mut self, peer: PeerId) -> bool {
        if self.index_of.contains_key(&peer) {
            return false;
        }
        if !self.is_member() {
            if self.heads_only.len() >= 1024 {
                return false;
            }
            self.heads_only.insert(peer);
            return true;
        }
        if self.listener_id.contains_key(&peer) {
            return true;
        }
        let n = self.spec.keys.len() as u16;
        let Some(id) = (n..u16::MAX).find(|i| !self.listener_peer.contains_key(i)) else {
            return false;
        };
        if !self.gossip.add_listener(id) {
            return false;
        }
        self.listener_id.insert(peer, id);
        self.listener_peer.insert(id, peer);
        self.stats.listeners = self.listener_id.len() as u64;
        true
    }

    /// A peer's last connection closed: it is neither member nor listener
    /// until it says hello or subscribes again.
    pub fn on_disconnected(&mut self, peer: &PeerId) {
        if let Some(id) = self.listener_id.remove(peer) {
            self.listener_peer.remove(&id);
            self.gossip.remove_listener(id);
            self.stats.listeners = self.listener_id.len() as u64;
        }
        if let Some(i) = self.index_of.remove(peer) {
            self.peer_of.remove(&i);
        }
        self.connected.remove(peer);
        self.told.remove(peer);
        self.heads_only.remove(peer);
        self.waiting.retain(|w| w.peer != *peer);
    }

    /// Whether `peer` gets this node's gossip or decodes proposals itself
    /// (a member, or a listener of this node): it is sent final heads, not
    /// whole blocks.
    pub fn has_gossip(&self, peer: &PeerId) -> bool {
        self.index_of.contains_key(peer)
            || self.listener_id.contains_key(peer)
            || self.heads_only.contains(peer)
    }

    fn remember_body(&mut self, chain_hash: Hash, block_hash: Hash) {
        self.bodies.push_back((chain_hash, block_hash));
        while self.bodies.len() > MAX_BODIES {
            self.bodies.pop_front();
        }
    }

    /// The final block of a final head, if this node has its body (decoded
    /// from gossip, or its own proposal).
    pub fn assemble(&self, head: &Block) -> Option<Block> {
        let hash = head.hash();
        let (_, bh) = self.bodies.iter().rev().find(|(h, _)| *h == hash)?;
        let body = Block::decode(self.gossip.delivered(bh)?).ok()?;
        (body.hash() == hash).then(|| Block {
            header: head.header.clone(),
            proof: head.proof.clone(),
            txs: body.txs,
        })
    }

    /// A verified final head from `peer` whose body is not here: true if it
    /// waits for the body (a decode of that height is under way), false if
    /// the block should be fetched now.
    pub fn wait_for_body(&mut self, peer: PeerId, head: Block, now: Instant) -> bool {
        if !self.gossip.is_receiving(head.height()) {
            return false;
        }
        if self.waiting.iter().any(|w| w.head.hash() == head.hash()) {
            return true;
        }
        if self.waiting.len() >= MAX_WAITING_FINALS {
            return false;
        }
        self.waiting.push(WaitingFinal {
            peer,
            head,
            since: now,
        });
        true
    }

    fn body_arrived(&mut self) {
        let mut i = 0;
        while i < self.waiting.len() {
            if let Some(b) = self.assemble(&self.waiting[i].head) {
                let w = self.waiting.swap_remove(i);
                self.stats.assembled += 1;
                self.out
                    .push_back(CommitteeOut::Assembled(w.peer, Box::new(b)));
            } else {
                i += 1;
            }
        }
    }

    /// The proposer's own proposal, executed and signed: spread it.
    pub fn start_proposal(&mut self, block: Block, now: Instant) {
        let mut votes = BTreeMap::new();
        if let Some((i, s)) = block.proof.sigs.first() {
            votes.insert(*i, *s);
        }
        self.proposal = Some(Proposal {
            block,
            votes,
            sent: now,
            finalizing: false,
        });
        self.spread(now);
        self.check_quorum();
    }

    fn spread(&mut self, now: Instant) {
        let Some(p) = self.proposal.as_mut() else {
            return;
        };
        p.sent = now;
        let bytes = p.block.encode();
        let height = p.block.height();
        let chain_hash = p.block.hash();
        let (spec, Some(key)) = (&self.spec, self.key.as_ref()) else {
            return;
        };
        let r = self.gossip.propose(&bytes, height, |h| {
            key.sign(&gossip_sign_bytes(&spec.id, h))
        });
        match r {
            Ok(_) => {
                self.stats.proposals += 1;
                let bh = Hash(*blake3::hash(&bytes).as_bytes());
                self.remember_body(chain_hash, bh);
            }
            Err(e) => self.out.push_back(CommitteeOut::Log(format!(
                "cannot encode proposal {height}: {e}"
            ))),
        }
        self.drain_gossip();
    }

    fn check_quorum(&mut self) {
        let q = self.spec.quorum();
        let Some(p) = self.proposal.as_mut() else {
            return;
        };
        if p.finalizing || p.votes.len() < q {
            return;
        }
        p.finalizing = true;
        let fin = Block {
            header: p.block.header.clone(),
            proof: FinalityProof {
                sigs: p.votes.iter().map(|(i, s)| (*i, *s)).collect(),
            },
            txs: p.block.txs.clone(),
        };
        self.out.push_back(CommitteeOut::Finalize(Box::new(fin)));
    }

    /// The final block at `height` was imported: the proposal or the vote
    /// for it is done.
    pub fn finalized(&mut self, height: u64) {
        if self
            .proposal
            .as_ref()
            .is_some_and(|p| p.block.height() <= height)
        {
            self.proposal = None;
        }
        if self.my_vote.as_ref().is_some_and(|v| v.height <= height) {
            self.my_vote = None;
        }
    }

    /// Finalizing failed locally: let the next vote or resend try again.
    pub fn finalize_failed(&mut self) {
        if let Some(p) = self.proposal.as_mut() {
            p.finalizing = false;
        }
    }

    /// A vote from `peer`. Counted when it is the signature of a validator
    /// other than the proposer over the current proposal.
    pub fn on_vote(&mut self, height: u64, hash: [u8; 32], index: u16, sig: &[u8; 64]) {
        let Some(p) = self.proposal.as_mut() else {
            return;
        };
        if p.block.height() != height || p.block.hash().0 != hash || p.votes.contains_key(&index) {
            return;
        }
        if !self.spec.check_vote(index, &Hash(hash), sig) {
            self.out.push_back(CommitteeOut::Log(format!(
                "a vote of validator {index} for {height} does not verify"
            )));
            return;
        }
        p.votes.insert(index, *sig);
        self.stats.votes_received += 1;
        self.check_quorum();
    }

    /// This validator executed `block` and signed `sig`: send it to the
    /// proposer (and again until the block is final).
    pub fn voted(&mut self, block: &Block, sig: [u8; 64], now: Instant) {
        self.my_vote = Some(MyVote {
            height: block.height(),
            hash: block.hash(),
            sig,
            sent: now,
        });
        self.send_vote();
    }

    fn send_vote(&mut self) {
        let Some(v) = self.my_vote.as_ref() else {
            return;
        };
        let Some(peer) = self.peer_of.get(&PROPOSER).copied() else {
            return;
        };
        self.stats.votes_sent += 1;
        self.out.push_back(CommitteeOut::Send(
            peer,
            BlockRequest::Vote {
                height: v.height,
                hash: v.hash.0,
                index: self.me,
                sig: v.sig,
            },
        ));
    }

    /// A gossip message from `peer`.
    pub fn on_gossip(&mut self, peer: PeerId, msg: &[u8], now: Instant) {
        let Some(&from) = self
            .index_of
            .get(&peer)
            .or_else(|| self.listener_id.get(&peer))
        else {
            // Not a member we know (no hello yet) nor a listener: ignored.
            return;
        };
        let m = match Message::decode(msg) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                self.stats.gossip_forged += 1;
                self.out.push_back(CommitteeOut::Misbehaved(
                    peer,
                    format!("undecodable gossip: {e}"),
                ));
                return;
            }
        };
        self.gossip.handle_message(from, &m, now);
        self.drain_gossip();
    }

    fn drain_gossip(&mut self) {
        while let Some(a) = self.gossip.poll_action() {
            match a {
                GossipAction::Send { to, msg } => {
                    let peer = self
                        .peer_of
                        .get(&to)
                        .or_else(|| self.listener_peer.get(&to))
                        .copied();
                    if let Some(peer) = peer {
                        let bytes = if self.forge {
                            forged(&msg)
                        } else {
                            msg.encode()
                        };
                        self.out.push_back(CommitteeOut::Send(
                            peer,
                            BlockRequest::Gossip { msg: bytes },
                        ));
                    }
                }
                GossipAction::Deliver { block, header, .. } => match Block::decode(&block) {
                    Ok(b) => {
                        self.stats.proposals_received += 1;
                        self.remember_body(b.hash(), header.block_hash);
                        self.body_arrived();
                        if !self.is_member() && !self.gets_gossip {
                            // Now other followers may send final heads.
                            self.gets_gossip = true;
                            let peers: Vec<PeerId> = self
                                .connected
                                .iter()
                                .filter(|p| !self.told.contains(p))
                                .copied()
                                .collect();
                            for p in peers {
                                self.subscribe(p);
                            }
                        }
                        if self.is_member() {
                            self.out.push_back(CommitteeOut::Execute(Box::new(b)));
                        }
                    }
                    Err(e) => self.out.push_back(CommitteeOut::Log(format!(
                        "a gossiped proposal does not decode as a block: {e}"
                    ))),
                },
                GossipAction::Misbehaved { peer, reason } => {
                    self.stats.gossip_forged += 1;
                    if let Some(p) = self.peer_of.get(&peer).copied() {
                        self.out.push_back(CommitteeOut::Misbehaved(p, reason));
                    }
                }
                GossipAction::Evidence { header, reason } => {
                    self.stats.evidence += 1;
                    self.out.push_back(CommitteeOut::Log(format!(
                        "proposer {} encoded block {} inconsistently: {reason}",
                        header.header.proposer, header.header.height
                    )));
                }
            }
        }
    }

    /// The earliest time [`Committee::on_timeout`] has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        [
            self.gossip.poll_timeout(),
            self.proposal
                .as_ref()
                .filter(|p| !p.finalizing)
                .map(|p| p.sent + RESEND_PROPOSAL),
            self.my_vote.as_ref().map(|v| v.sent + RESEND_VOTE),
            self.waiting.iter().map(|w| w.since + FINAL_WAITS).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Timers: gossip pulls, a proposal short of its quorum spread again,
    /// votes sent again.
    pub fn on_timeout(&mut self, now: Instant) {
        if self.gossip.poll_timeout().is_some_and(|t| t <= now) {
            self.gossip.handle_timeout(now);
            self.drain_gossip();
        }
        if self
            .proposal
            .as_ref()
            .is_some_and(|p| !p.finalizing && now >= p.sent + RESEND_PROPOSAL)
        {
            let (h, have) = self
                .proposal
                .as_ref()
                .map_or((0, 0), |p| (p.block.height(), p.votes.len()));
            self.out.push_back(CommitteeOut::Log(format!(
                "proposal {h}: {have} of {} votes after {:?}, spreading it again ({} members connected)",
                self.spec.quorum(),
                RESEND_PROPOSAL,
                self.peer_of.len()
            )));
            self.spread(now);
        }
        if let Some(v) = self.my_vote.as_mut()
            && now >= v.sent + RESEND_VOTE
        {
            v.sent = now;
            self.send_vote();
        }
        let mut i = 0;
        while i < self.waiting.len() {
            if now >= self.waiting[i].since + FINAL_WAITS {
                let w = self.waiting.swap_remove(i);
                self.stats.bodies_missed += 1;
                self.out
                    .push_back(CommitteeOut::FetchFrom(w.peer, w.head.height()));
            } else {
                i += 1;
            }
        }
    }
}

/// A relay that forges: the shard's bytes altered (fault injection).
fn forged(msg: &Message) -> Vec<u8> {
    match msg {
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
            Message::Shard {
                header: *header,
                index: *index,
                proof: proof.clone(),
                data: d.into(),
            }
            .encode()
        }
        other => other.encode(),
    }
}
