//! Swarm events: connections, discovery, and the two request/response
//! protocols (state and blocks), inbound and outbound.

use super::{EventLoop, Flow, Pending, Task};
use crate::chain::Answer;
use crate::event::Event;
use statesync_engine::admission::Outcome;
use statesync_net::libp2p::multiaddr::Protocol;
use statesync_net::libp2p::request_response::{self, ResponseChannel};
use statesync_net::libp2p::request_response::{InboundFailure, InboundRequestId};
use statesync_net::libp2p::swarm::SwarmEvent;
use statesync_net::libp2p::{Multiaddr, PeerId, identify, kad, ping};
use statesync_net::{BehaviourEvent, Inbound};
use statesync_proto::blocks::{BlockRequest, BlockResponse};
use statesync_proto::{Advert, Request, Response};
use std::time::Instant;
use tracing::{debug, info};

/// A dial error in a few words: refused, timed out, wrong peer id, ...
fn dial_error_text(e: &statesync_net::libp2p::swarm::DialError) -> String {
    use statesync_net::libp2p::swarm::DialError as D;
    match e {
        D::WrongPeerId { obtained, .. } => {
            format!("wrong peer id (the address belongs to {obtained})")
        }
        D::Denied { cause } => format!("denied: {cause}"),
        D::Aborted => "aborted".into(),
        D::NoAddresses => "no address known".into(),
        D::LocalPeerId { .. } => "that is this node".into(),
        D::DialPeerConditionFalse(_) => "already connected or dialling".into(),
        D::Transport(errs) => {
            let t: Vec<String> = errs.iter().map(|(_, e)| transport_text(e)).collect();
            t.join(", ")
        }
    }
}

fn transport_text(e: &statesync_net::libp2p::TransportError<std::io::Error>) -> String {
    use statesync_net::libp2p::TransportError as T;
    match e {
        T::MultiaddrNotSupported(a) => format!("address not supported: {a}"),
        T::Other(io) => {
            // The root cause names the failure (connection refused, timed
            // out, ...).
            let mut cause: &dyn std::error::Error = io;
            while let Some(s) = cause.source() {
                cause = s;
            }
            cause.to_string()
        }
    }
}

fn is_dialable(a: &Multiaddr) -> bool {
    !a.iter()
        .any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_unspecified()))
}

impl EventLoop {
    pub(super) fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) -> Flow {
        let now = Instant::now();
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address.with(Protocol::P2p(self.local_id));
                info!(addr = %full, "listening");
                self.listen.push(full.clone());
                self.emit(Event::Listening { addr: full });
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } if !self.connected.contains(&peer_id) => {
                self.connected.insert(peer_id);
                self.dial_errors.remove(&peer_id);
                self.peers.connected(peer_id, now);
                let rid = self
                    .swarm
                    .behaviour_mut()
                    .state
                    .send_request(&peer_id, Request::GetAdvert.into());
                self.pending.insert(rid, Pending::Advert(peer_id));
                if endpoint.is_dialer() {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, endpoint.get_remote_address().clone());
                }
                if let Some(c) = self.chain.as_mut() {
                    c.on_connected(peer_id);
                }
                self.emit(Event::PeerConnected { peer: peer_id });
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } if self.connected.contains(&peer_id) => {
                self.connected.remove(&peer_id);
                self.peers.disconnected(peer_id, now);
                self.adverts.remove(&peer_id);
                for f in self.fetches.values_mut() {
                    f.remove_peer(&peer_id, now);
                }
                if let Some(c) = self.chain.as_mut() {
                    c.on_disconnected(peer_id, now);
                }
                self.emit(Event::PeerDisconnected { peer: peer_id });
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                if let Some(p) = peer_id {
                    self.peers.dial_failed(p, now);
                    self.dial_errors.insert(p, dial_error_text(&error));
                }
                let error = dial_error_text(&error);
                debug!(peer = ?peer_id, "dial failed: {error}");
                self.emit(Event::DialFailed {
                    peer: peer_id,
                    error,
                });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for a in info.listen_addrs {
                    if is_dialable(&a) {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer_id, a.clone());
                        self.peers.add_known(peer_id, a, false, now);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(ev)) if self.on_kad_providers(&ev) => {}
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetClosestPeers(r),
                ..
            })) => {
                let found: Vec<_> = match r {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                let mut n = 0;
                for p in found {
                    if p.peer_id == self.local_id {
                        continue;
                    }
                    for a in p.addrs {
                        if is_dialable(&a) {
                            self.peers.add_known(p.peer_id, a, false, now);
                            n += 1;
                        }
                    }
                }
                self.peers.discovery_done(n, now);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                for f in self.fetches.values_mut() {
                    f.peer_rtt(&peer, rtt);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Blocks(ev)) => self.on_blocks_event(ev, now),
            SwarmEvent::Behaviour(BehaviourEvent::State(ev)) => self.on_state_event(ev, now),
            _ => {}
        }
        Flow::Continue
    }

    fn on_blocks_event(
        &mut self,
        ev: request_response::Event<Inbound<BlockRequest>, BlockResponse>,
        now: Instant,
    ) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request_id,
                    request,
                    channel,
                } => match request {
                    Inbound::Request(r) => self.on_block_request(peer, request_id, r, channel, now),
                    // No answer: the stream closes.
                    Inbound::Malformed(why) => self.malformed_request(peer, &why, now),
                },
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(Pending::Chain { tag }) = self.pending.remove(&request_id)
                        && let Some(c) = self.chain.as_mut()
                    {
                        c.on_block_response(tag, peer, response, now);
                    }
                }
            },
            request_response::Event::OutboundFailure { request_id, .. } => {
                if let Some(Pending::Chain { tag }) = self.pending.remove(&request_id)
                    && let Some(c) = self.chain.as_mut()
                {
                    c.on_block_failure(tag, now);
                }
            }
            request_response::Event::ResponseSent { request_id, .. } => {
                if let Some((peer, t)) = self.answering_blocks.remove(&request_id) {
                    self.answer_done(peer, t, Outcome::Sent);
                }
            }
            request_response::Event::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let answer = self.answering_blocks.remove(&request_id);
                self.inbound_failed(peer, answer, &error, now);
            }
        }
    }

    /// An inbound request or its answer failed: release the answer's
    /// ticket (a strike if the peer did not drain it), and count malformed
    /// requests against the peer.
    fn inbound_failed(
        &mut self,
        peer: PeerId,
        answer: Option<(PeerId, statesync_engine::admission::Ticket)>,
        error: &InboundFailure,
        now: Instant,
    ) {
        if let Some((p, t)) = answer {
            let outcome = match error {
                InboundFailure::Timeout | InboundFailure::Io(_) => Outcome::Undelivered,
                _ => Outcome::Dropped,
            };
            self.answer_done(p, t, outcome);
            return;
        }
        if let InboundFailure::Io(e) = error
            && e.kind() == std::io::ErrorKind::InvalidData
        {
            self.malformed_request(peer, &e.to_string(), now);
        }
    }

    /// A request that was not well formed: three from a peer and it is
    /// blocked for ten minutes.
    fn malformed_request(&mut self, peer: PeerId, why: &str, now: Instant) {
        let n = self.malformed.entry(peer).or_default();
        *n += 1;
        debug!(%peer, "malformed request: {why}");
        {
            if *n >= 3 {
                self.malformed.remove(&peer);
                tracing::warn!(%peer, "blocking a peer that sent malformed requests for 10 min");
                self.peers.penalize(&peer, now);
                self.swarm.behaviour_mut().blocked.block_peer(peer);
                self.blocked_until
                    .insert(peer, now + std::time::Duration::from_secs(600));
            }
        }
    }

    fn on_block_request(
        &mut self,
        peer: PeerId,
        request: InboundRequestId,
        req: BlockRequest,
        channel: ResponseChannel<BlockResponse>,
        now: Instant,
    ) {
        let answer = match self.chain.as_mut() {
            Some(c) => c.on_block_request(peer, req, now),
            None => Answer::Now(BlockResponse::NotFound),
        };
        let (start, count, cost) = match answer {
            Answer::Now(resp) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .blocks
                    .send_response(channel, resp);
                return;
            }
            Answer::Blocks { start, count, cost } => (start, count, cost),
        };
        let (Some(server), Some(chain)) = (self.server.as_mut(), self.chain.as_ref()) else {
            return;
        };
        let ticket = match server.charge(peer, cost) {
            Ok(t) => t,
            Err(resp) => {
                let retry_after_ms = match resp {
                    statesync_proto::Response::Busy { retry_after_ms } => retry_after_ms,
                    _ => 10_000,
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .blocks
                    .send_response(channel, BlockResponse::Busy { retry_after_ms });
                return;
            }
        };
        let store = chain.block_store();
        let tx = self.tasks_tx.clone();
        tokio::task::spawn_blocking(move || {
            let resp = match store.range_raw(start, u64::from(count), 8 << 20) {
                Ok(blocks) => BlockResponse::Blocks { blocks },
                Err(_) => BlockResponse::NotFound,
            };
            let bytes = match &resp {
                BlockResponse::Blocks { blocks } => blocks.iter().map(|b| b.len() as u64).sum(),
                _ => 0,
            };
            let _ = tx.send(Task::BlocksServed {
                peer,
                request,
                ticket,
                channel,
                resp,
                bytes,
            });
        });
    }

    fn on_state_event(
        &mut self,
        ev: request_response::Event<Inbound<Request>, Response>,
        now: Instant,
    ) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request_id,
                    request,
                    channel,
                } => match request {
                    Inbound::Request(r) => self.on_state_request(peer, request_id, r, channel, now),
                    Inbound::Malformed(why) => self.malformed_request(peer, &why, now),
                },
                request_response::Message::Response {
                    request_id,
                    response,
                } => match self.pending.remove(&request_id) {
                    Some(Pending::Advert(p)) => {
                        if let Response::Advert { advert } = response
                            && let Some(a) = statesync_net::advert::verify(&p, &advert)
                        {
                            self.on_advert(p, a, now);
                        }
                    }
                    Some(Pending::Fetch { id, sched }) => {
                        if let Some(f) = self.fetches.get_mut(&id) {
                            f.on_response(sched, peer, response, now);
                        }
                    }
                    Some(Pending::Announce) | Some(Pending::Chain { .. }) | None => {}
                },
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(Pending::Fetch { id, sched }) = self.pending.remove(&request_id)
                    && let Some(f) = self.fetches.get_mut(&id)
                {
                    f.on_failure(sched, &error, now);
                }
            }
            request_response::Event::ResponseSent { request_id, .. } => {
                if let Some((peer, t)) = self.answering.remove(&request_id) {
                    self.answer_done(peer, t, Outcome::Sent);
                }
            }
            request_response::Event::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let answer = self.answering.remove(&request_id);
                self.inbound_failed(peer, answer, &error, now);
            }
        }
    }

    fn on_state_request(
        &mut self,
        peer: PeerId,
        request_id: InboundRequestId,
        request: Request,
        channel: ResponseChannel<Response>,
        now: Instant,
    ) {
        let respond = |s: &mut Self, channel, resp| {
            let _ = s.swarm.behaviour_mut().state.send_response(channel, resp);
        };
        match request {
            Request::GetAdvert => {
                let adv = self.server.as_ref().map(|s| s.advert()).unwrap_or(Advert {
                    seq: 0,
                    entries: vec![],
                });
                let advert = statesync_net::advert::sign(&self.kp, &adv);
                respond(self, channel, Response::Advert { advert });
            }
            Request::Announce { advert } => {
                if let Some(a) = statesync_net::advert::verify(&peer, &advert) {
                    self.on_advert(peer, a, now);
                }
                respond(self, channel, Response::Ack);
            }
            req => {
                let Some(s) = self.server.as_mut() else {
                    respond(self, channel, Response::NotFound);
                    return;
                };
                match s.admit(peer, &req) {
                    Err(resp) => respond(self, channel, resp),
                    Ok(job) => {
                        #[cfg(feature = "fault-injection")]
                        if self.fault == Some(crate::fault::ServeFault::Silent) {
                            self.silent_channels.push(channel);
                            return;
                        }
                        #[cfg(feature = "fault-injection")]
                        let corrupt = self.fault == Some(crate::fault::ServeFault::Corrupt);
                        let tx = self.tasks_tx.clone();
                        tokio::task::spawn_blocking(move || {
                            #[allow(unused_mut)]
                            let (mut resp, ticket) = job.run();
                            #[cfg(feature = "fault-injection")]
                            if corrupt {
                                crate::fault::corrupt(&mut resp);
                            }
                            let _ = tx.send(Task::Served {
                                peer,
                                request: request_id,
                                ticket,
                                channel,
                                resp,
                            });
                        });
                    }
                }
            }
        }
    }

    /// A verified advert of `peer`: newer than the one known, it updates
    /// which fetches may ask it.
    fn on_advert(&mut self, peer: PeerId, a: Advert, now: Instant) {
        if self.adverts.get(&peer).is_some_and(|old| old.seq > a.seq) {
            return; // an older advert arriving late
        }
        for f in self.fetches.values_mut() {
            if a.entries.iter().any(|e| e.root == f.root()) {
                f.add_peer(peer, now);
            }
        }
        self.adverts.insert(peer, a);
    }
}
