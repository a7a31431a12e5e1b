//! Exactly one connection per peer, even when both sides dial at once.
//!
//! When a peer has more than one established connection, both sides keep the
//! connection that was dialed by the smaller of the two peer ids (if there
//! are several, the one with the lowest local connection id, i.e. the first
//! one started here; if there is none, the lowest local id of all) and close
//! the rest. Both sides apply the same rule to the same facts, so they
//! converge on the same connection instead of each closing a different one
//! (Harmony keyed streams by peer id for the same reason). The behaviour
//! adds no protocol of its own.

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::{
    CloseConnection, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use std::collections::{HashMap, VecDeque};
use std::task::{Context, Poll};

/// The behaviour that closes duplicate connections; see the module
/// documentation.
pub struct OnePerPeer {
    local: PeerId,
    /// Established connections per peer: (id, dialed by us).
    conns: HashMap<PeerId, Vec<(ConnectionId, bool)>>,
    to_close: VecDeque<(PeerId, ConnectionId)>,
    /// Connections closed as duplicates (for metrics and tests).
    pub duplicates_closed: u64,
}

impl OnePerPeer {
    /// For the node whose peer id is `local`.
    pub fn new(local: PeerId) -> OnePerPeer {
        OnePerPeer {
            local,
            conns: HashMap::new(),
            to_close: VecDeque::new(),
            duplicates_closed: 0,
        }
    }

    /// Connections currently established with `peer`.
    pub fn connections(&self, peer: &PeerId) -> usize {
        self.conns.get(peer).map_or(0, Vec::len)
    }

    fn dedupe(&mut self, peer: PeerId) {
        let Some(list) = self.conns.get(&peer) else {
            return;
        };
        if list.len() < 2 {
            return;
        }
        // The connection dialed by the smaller peer id wins.
        let we_are_smaller = self.local.to_bytes() < peer.to_bytes();
        let keep = list
            .iter()
            .filter(|(_, dialed_by_us)| *dialed_by_us == we_are_smaller)
            .map(|(id, _)| *id)
            .min()
            .or_else(|| list.iter().map(|(id, _)| *id).min());
        for (id, _) in list {
            if Some(*id) != keep && !self.to_close.iter().any(|(_, c)| c == id) {
                self.to_close.push_back((peer, *id));
                self.duplicates_closed += 1;
            }
        }
    }
}

impl NetworkBehaviour for OnePerPeer {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.conns
                    .entry(e.peer_id)
                    .or_default()
                    .push((e.connection_id, e.endpoint.is_dialer()));
                self.dedupe(e.peer_id);
            }
            FromSwarm::ConnectionClosed(e) => {
                if let Some(list) = self.conns.get_mut(&e.peer_id) {
                    list.retain(|(id, _)| *id != e.connection_id);
                    if list.is_empty() {
                        self.conns.remove(&e.peer_id);
                    }
                }
                self.to_close.retain(|(_, id)| *id != e.connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        ev: THandlerOutEvent<Self>,
    ) {
        match ev {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.to_close.pop_front() {
            Some((peer_id, id)) => Poll::Ready(ToSwarm::CloseConnection {
                peer_id,
                connection: CloseConnection::One(id),
            }),
            None => Poll::Pending,
        }
    }
}
