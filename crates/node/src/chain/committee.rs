//! The committee: validators that each hold one key (docs/chain.md,
//! "Validators"). Validator 0 proposes (fixed: see docs/chain.md for why);
//! it executes its proposal, signs it and spreads it with IDA gossip
//! (`statesync-gossip`, carried in `BlockRequest::Gossip`); every validator
//! that decodes it checks and executes it and sends its vote to the
//! proposer; a quorum of votes is the finality proof of the block, which
//! then travels like every final block (pushed, range-synced).
//!
//! This module holds the committee's state and the IDA core; the chain node
//! does the rest (executor commands, pushes). Nothing here performs I/O:
//! messages to send are queued as `(PeerId, BlockRequest)`.

use statesync_chain::{Block, FinalityProof, PROPOSER, Spec, ValidatorKey};
use statesync_gossip::{Action as GossipAction, Config as GossipConfig, Gossip, Message};
use statesync_manifest::hash::Hash;
use statesync_net::libp2p::PeerId;
use statesync_proto::blocks::BlockRequest;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a proposal waits for its quorum before it is spread again.
const RESEND_PROPOSAL: Duration = Duration::from_secs(2);
/// How often a validator sends its vote again while the block it voted for
/// is not final (the proposer may have restarted and lost it).
const RESEND_VOTE: Duration = Duration::from_secs(1);

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
}

/// This node's part in the committee.
pub(crate) struct Committee {
    spec: Spec,
    me: u16,
    key: ValidatorKey,
    gossip: Gossip<Keys>,
    peer_of: HashMap<u16, PeerId>,
    index_of: HashMap<PeerId, u16>,
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
        Committee {
            gossip: Gossip::new(me, n, GossipConfig::default(), Keys(spec.clone())),
            spec,
            me,
            key,
            peer_of: HashMap::new(),
            index_of: HashMap::new(),
            proposal: None,
            my_vote: None,
            out: VecDeque::new(),
            stats: CommitteeStats::default(),
            forge: false,
        }
    }

    /// Whether this node proposes.
    pub fn is_proposer(&self) -> bool {
        self.me == PROPOSER
    }

    /// This validator's index.
    pub fn me(&self) -> u16 {
        self.me
    }

    /// The next thing to do.
    pub fn poll(&mut self) -> Option<CommitteeOut> {
        self.out.pop_front()
    }

    /// The hello this node sends to a peer that connected.
    pub fn hello(&self, local: &PeerId) -> BlockRequest {
        BlockRequest::Hello {
            index: self.me,
            sig: self.spec.sign_hello(&self.key, self.me, &local.to_bytes()),
        }
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
        // A proposer that came back may have lost the vote.
        if index == PROPOSER
            && let Some(v) = self.my_vote.as_mut()
        {
            v.sent = Instant::now() - RESEND_VOTE;
        }
        true
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
        let (spec, key) = (&self.spec, &self.key);
        let r = self.gossip.propose(&bytes, height, |h| {
            key.sign(&gossip_sign_bytes(&spec.id, h))
        });
        match r {
            Ok(_) => self.stats.proposals += 1,
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
        let Some(&from) = self.index_of.get(&peer) else {
            // Not a member we know (no hello yet): ignored.
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
                    if let Some(peer) = self.peer_of.get(&to).copied() {
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
                GossipAction::Deliver { block, .. } => match Block::decode(&block) {
                    Ok(b) => {
                        self.stats.proposals_received += 1;
                        self.out.push_back(CommitteeOut::Execute(Box::new(b)));
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
