//! The chain node's side of the blocks protocol: answering peers, handling
//! the answers to its own requests (statuses, range-sync batches, backfill,
//! checkpoint headers, lookups), driving the range cores and chasing the
//! head while following.

use super::executor::{ExecCmd, ImportTag};
use super::{ChainNode, ChainOut, Req};
use statesync_chain::Block;
use statesync_engine::catchup::PeerView;
use statesync_engine::lookup::{Admit, LookupConfig};
use statesync_engine::range::{Action, RequestFault};
use statesync_net::libp2p::PeerId;
use statesync_proto::blocks::{BlockRequest, BlockResponse, MAX_BLOCKS_PER_REQUEST, Status};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// How to answer a block request.
pub(crate) enum Answer {
    /// At once, with this.
    Now(BlockResponse),
    /// Blocks `start..start+count` from the block store (the loop charges
    /// the serving limits and reads them off the event loop).
    Blocks {
        /// First height.
        start: u64,
        /// How many (at most [`MAX_BLOCKS_PER_REQUEST`]).
        count: u32,
        /// Bytes the answer is estimated to cost.
        cost: u64,
    },
}

fn blocks_of(raw: Vec<Vec<u8>>) -> Result<Vec<Block>, String> {
    raw.iter()
        .map(|b| Block::decode(b).map_err(|e| e.to_string()))
        .collect()
}

impl ChainNode {
    fn status_of_self(&self) -> Status {
        Status {
            head: self.head,
            head_hash: self.head_hash.0,
            low: if self.head == 0 { 0 } else { self.low },
            checkpoint: self.checkpoint,
        }
    }

    /// A peer's block request: how to answer it.
    pub fn on_block_request(&mut self, peer: PeerId, req: BlockRequest, now: Instant) -> Answer {
        match req {
            BlockRequest::GetStatus => Answer::Now(BlockResponse::Status(self.status_of_self())),
            BlockRequest::GetBlocks { start, count } => {
                if self.head == 0 || start < self.low || start > self.head {
                    return Answer::Now(BlockResponse::NotFound);
                }
                let count = count.min(MAX_BLOCKS_PER_REQUEST);
                // Charged at an estimate; blocks are small next to chunks.
                let g = &self.spec.genesis;
                let cost = u64::from(count)
                    * (u64::from(g.txs_per_block) * 48
                        + u64::from(g.payload_bytes) * 72 / 63
                        + 400);
                Answer::Blocks { start, count, cost }
            }
            BlockRequest::NewBlock { block } => {
                self.on_pushed(peer, &block, now);
                Answer::Now(BlockResponse::Ack)
            }
            BlockRequest::Hello { index, sig } => {
                if let Some(c) = self.committee.as_mut()
                    && !c.on_hello(peer, index, &sig)
                {
                    warn!(%peer, index, "a hello that does not verify");
                    self.out.push_back(ChainOut::Penalize(peer));
                }
                Answer::Now(BlockResponse::Ack)
            }
            BlockRequest::Vote {
                height,
                hash,
                index,
                sig,
            } => {
                if let Some(c) = self.committee.as_mut() {
                    c.on_vote(height, hash, index, &sig);
                }
                self.drain_committee(now);
                Answer::Now(BlockResponse::Ack)
            }
            BlockRequest::Gossip { msg } => {
                if let Some(c) = self.committee.as_mut() {
                    c.on_gossip(peer, &msg, now);
                }
                self.drain_committee(now);
                Answer::Now(BlockResponse::Ack)
            }
            BlockRequest::Subscribe => {
                if let Some(c) = self.committee.as_mut()
                    && c.on_subscribe(peer)
                {
                    debug!(%peer, "a listener subscribed to this validator's gossip");
                }
                Answer::Now(BlockResponse::Ack)
            }
            BlockRequest::Final { head } => {
                self.on_final(peer, &head, now);
                self.drain_committee(now);
                Answer::Now(BlockResponse::Ack)
            }
        }
    }

    /// A final head (header and proof) from a peer: joined with the body
    /// gossip brought, or waited for while it is being decoded, or the
    /// block fetched from that peer.
    fn on_final(&mut self, peer: PeerId, head: &[u8], now: Instant) {
        let bad = |n: &mut Self, e: String| {
            n.stats.bad_pushes += 1;
            warn!(%peer, "dropped a bad final head from the peer: {e}");
            n.out.push_back(ChainOut::Penalize(peer));
        };
        let (header, proof) = match Block::decode_head(head) {
            Ok(x) => x,
            Err(e) => return bad(self, e.to_string()),
        };
        if header.chain != self.spec.id {
            return bad(self, "another chain".into());
        }
        let h = header.height;
        if h <= self.head.max(self.joined) {
            // Had, or joined and on its way in: one join per height, and no
            // signature checks spent on old news (a claim at or below our
            // head cannot mislead the catch-up).
            self.catchup.handle_peer_head(&peer, h);
            return;
        }
        if let Err(e) = self.spec.verify_proof(&header, &proof) {
            return bad(self, e.to_string());
        }
        let head = Block {
            header,
            proof,
            txs: Vec::new(),
        };
        let joined = self.committee.as_ref().and_then(|c| c.assemble(&head));
        if let Some(b) = joined {
            if self.on_pushed_block(peer, b, now) {
                self.joined = h;
                if let Some(c) = self.committee.as_mut() {
                    c.stats.assembled += 1;
                }
            }
            return;
        }
        self.catchup.handle_peer_head(&peer, h);
        if self
            .committee
            .as_mut()
            .is_some_and(|c| c.wait_for_body(peer, head, now))
        {
            return;
        }
        self.fetch_announced(peer, h, now);
    }

    /// `peer` has the final block `height` and this node does not have its
    /// body: fetch it (and what is missing below it) from that peer.
    pub(super) fn fetch_announced(&mut self, peer: PeerId, height: u64, now: Instant) {
        self.catchup.handle_peer_head(&peer, height);
        match self.catchup.phase() {
            statesync_engine::catchup::PhaseName::Following
                if self.has_state && height > self.head =>
            {
                if let Admit::Fetch { start, end } = self.lookups.admit(self.head, height + 1, now)
                {
                    self.stats.lookups += 1;
                    let count = (end - start + 1).min(u64::from(MAX_BLOCKS_PER_REQUEST)) as u32;
                    self.send(
                        peer,
                        BlockRequest::GetBlocks { start, count },
                        Req::Lookup { pushed: None },
                    );
                }
            }
            statesync_engine::catchup::PhaseName::Replay => {
                if let (Some(f), Some((_, s))) = (
                    self.forward.as_mut(),
                    self.catchup.peers().find(|(p, _)| **p == peer),
                ) {
                    f.update_peer(peer, s.low.max(1), s.head, now);
                }
            }
            _ => {}
        }
    }

    /// A block pushed by a peer (a new head).
    fn on_pushed(&mut self, peer: PeerId, block: &[u8], now: Instant) {
        match Block::decode(block) {
            Ok(b) => {
                self.on_pushed_block(peer, b, now);
            }
            Err(e) => {
                self.stats.bad_pushes += 1;
                warn!(%peer, "dropped a bad block pushed by the peer: {e}");
            }
        }
    }

    /// A whole final block from a peer (pushed, or joined from its final
    /// head and a gossiped body): verified, then imported at the head or
    /// its missing parents looked up.
    /// True when it was taken up (an import or a lookup started).
    pub(super) fn on_pushed_block(&mut self, peer: PeerId, b: Block, now: Instant) -> bool {
        if let Err(e) = self.spec.verify(&b) {
            self.stats.bad_pushes += 1;
            warn!(%peer, "dropped a bad block pushed by the peer: {e}");
            return false;
        }
        let h = b.height();
        self.catchup.handle_peer_head(&peer, h);
        match self.catchup.phase() {
            statesync_engine::catchup::PhaseName::Following if self.has_state => {
                if h == self.head + 1 && b.header.parent == self.head_hash {
                    if !self.follow_inflight {
                        self.follow_inflight = true;
                        let _ = self.exec.send(ExecCmd::Import {
                            tag: ImportTag::Follow,
                            blocks: vec![b],
                            from: Some(peer),
                        });
                        return true;
                    }
                } else if h > self.head + 1 {
                    match self.lookups.admit(self.head, h, now) {
                        Admit::Fetch { start, end } => {
                            self.stats.lookups += 1;
                            let count =
                                (end - start + 1).min(u64::from(MAX_BLOCKS_PER_REQUEST)) as u32;
                            self.send(
                                peer,
                                BlockRequest::GetBlocks { start, count },
                                Req::Lookup {
                                    pushed: Some(Box::new(b)),
                                },
                            );
                            return true;
                        }
                        Admit::TooDeep | Admit::Pending | Admit::Full => {}
                    }
                }
            }
            statesync_engine::catchup::PhaseName::Replay => {
                if let (Some(f), Some((_, s))) = (
                    self.forward.as_mut(),
                    self.catchup.peers().find(|(p, _)| **p == peer),
                ) {
                    f.update_peer(peer, s.low.max(1), s.head, now);
                }
            }
            _ => {}
        }
        false
    }

    /// The answer to the request tagged `tag`.
    pub fn on_block_response(&mut self, tag: u64, peer: PeerId, resp: BlockResponse, now: Instant) {
        let Some(kind) = self.pending.remove(&tag) else {
            return;
        };
        if let BlockResponse::Blocks { blocks } = &resp {
            *self
                .block_bytes_per_peer
                .entry(peer.to_string())
                .or_default() += blocks.iter().map(|b| b.len() as u64).sum::<u64>();
        }
        match kind {
            Req::Status => {
                if let BlockResponse::Status(s) = resp {
                    let view = PeerView {
                        head: s.head,
                        low: s.low,
                        checkpoint: s.checkpoint,
                    };
                    self.catchup.handle_peer_status(peer, view, now);
                    if s.head > 0 {
                        if let Some(f) = self.forward.as_mut() {
                            f.update_peer(peer, s.low.max(1), s.head, now);
                        }
                        if let Some(b) = self.backward.as_mut() {
                            b.update_peer(peer, s.low.max(1), s.head, now);
                        }
                    }
                }
            }
            Req::Range { id } | Req::Backfill { id } => {
                let core = if matches!(kind, Req::Range { .. }) {
                    self.forward.as_mut()
                } else {
                    self.backward.as_mut()
                };
                let Some(core) = core else { return };
                match resp {
                    BlockResponse::Blocks { blocks } => match blocks_of(blocks) {
                        Ok(bs) => core.handle_blocks(id, &peer, bs, now),
                        Err(e) => core.handle_failure(id, RequestFault::Bad(e), now),
                    },
                    BlockResponse::Busy { .. } => core.handle_failure(id, RequestFault::Busy, now),
                    BlockResponse::NotFound => core.handle_failure(id, RequestFault::Missing, now),
                    _ => {
                        core.handle_failure(id, RequestFault::Bad("unexpected answer".into()), now)
                    }
                }
            }
            Req::Anchor { height } => {
                let anchor = match resp {
                    BlockResponse::Blocks { blocks } => {
                        blocks_of(blocks).ok().and_then(|v| v.into_iter().next())
                    }
                    _ => None,
                };
                let valid = anchor.filter(|b| {
                    b.height() == height
                        && self.spec.verify(b).is_ok()
                        && self.spec.is_checkpoint(height)
                });
                let ok = valid.is_some();
                if let Some(b) = valid {
                    self.anchors.insert(height, b);
                } else {
                    debug!(%peer, height, "checkpoint header unusable");
                }
                self.catchup.handle_anchor(height, &peer, ok, now);
                // A header that started nothing is not kept.
                self.anchors.retain(|h, _| *h >= height);
            }
            Req::Lookup { pushed } => {
                if let BlockResponse::Blocks { blocks } = resp
                    && let Ok(mut bs) = blocks_of(blocks)
                    && !self.follow_inflight
                    && self.catchup.phase() == statesync_engine::catchup::PhaseName::Following
                {
                    bs.retain(|b| b.height() > self.head);
                    if let Some(p) = pushed
                        && bs.last().is_some_and(|b| b.height() + 1 == p.height())
                    {
                        bs.push(*p);
                    }
                    if bs.first().is_some_and(|b| b.height() == self.head + 1) {
                        self.follow_inflight = true;
                        let _ = self.exec.send(ExecCmd::Import {
                            tag: ImportTag::Follow,
                            blocks: bs,
                            from: Some(peer),
                        });
                    }
                }
            }
            Req::Push => {}
        }
    }

    /// The request tagged `tag` failed at the transport.
    pub fn on_block_failure(&mut self, tag: u64, now: Instant) {
        match self.pending.remove(&tag) {
            Some(Req::Range { id }) => {
                if let Some(f) = self.forward.as_mut() {
                    f.handle_failure(id, RequestFault::Io, now);
                }
            }
            Some(Req::Backfill { id }) => {
                if let Some(b) = self.backward.as_mut() {
                    b.handle_failure(id, RequestFault::Io, now);
                }
            }
            Some(Req::Anchor { height }) => self.catchup.handle_anchor_failed(height, now),
            _ => {}
        }
    }

    /// A missed push must not leave a follower behind with nothing left to
    /// wake it: chase the best head after a quiet second.
    pub(super) fn chase_head(&mut self, now: Instant) {
        let best = self.catchup.best_head();
        if self.setup.produce
            || best <= self.head
            || self.follow_inflight
            || now.saturating_duration_since(self.last_follow) <= Duration::from_secs(1)
            || best > self.head + LookupConfig::default().max_depth
        {
            return;
        }
        let Admit::Fetch { start, end } = self.lookups.admit(self.head, best + 1, now) else {
            return;
        };
        let Some(p) = self
            .catchup
            .peers()
            .find(|(_, s)| s.head >= end)
            .map(|(p, _)| *p)
        else {
            return;
        };
        self.stats.lookups += 1;
        self.last_follow = now;
        let count = (end - start + 1).min(u64::from(MAX_BLOCKS_PER_REQUEST)) as u32;
        self.send(
            p,
            BlockRequest::GetBlocks { start, count },
            Req::Lookup { pushed: None },
        );
    }

    /// Sends the requests of both range cores and hands their batches to
    /// the executor (forward: import; backward: backfill, descending).
    pub(super) fn drive(&mut self, now: Instant) {
        for backfill in [false, true] {
            loop {
                let core = if backfill {
                    self.backward.as_mut()
                } else {
                    self.forward.as_mut()
                };
                let Some(a) = core.and_then(|c| c.poll_action()) else {
                    break;
                };
                match a {
                    Action::Request {
                        peer,
                        id,
                        start,
                        count,
                    } => {
                        let kind = if backfill {
                            Req::Backfill { id }
                        } else {
                            Req::Range { id }
                        };
                        let count = count as u32;
                        self.send(peer, BlockRequest::GetBlocks { start, count }, kind);
                    }
                    Action::Process { batch, mut blocks } => {
                        let cmd = if backfill {
                            blocks.reverse();
                            ExecCmd::Backfill {
                                batch,
                                desc: blocks,
                            }
                        } else {
                            ExecCmd::Import {
                                tag: ImportTag::Range(batch),
                                blocks,
                                from: None,
                            }
                        };
                        let _ = self.exec.send(cmd);
                    }
                    Action::Banned { peer, reason } => {
                        let what = if backfill { "backfill" } else { "range sync" };
                        self.log(format!("{what}: peer {peer} banned for a while: {reason}"));
                        self.out.push_back(ChainOut::Penalize(peer));
                    }
                }
            }
        }
        let _ = now;
    }
}
