//! Finding servers of a root beyond one hop: Kademlia provider records.
//!
//! A node that serves checkpoints announces itself in the DHT as a
//! provider of each root it serves (`start_providing`, republished by
//! Kademlia; stopped locally when it stops serving the root, so remote
//! records lapse within their TTL). A fetch short of peers that advertise
//! its root asks the DHT for providers of the root (`get_providers`, at
//! most every [`LOOKUP_EVERY`] per root) and dials them; their adverts then
//! make them usable as for any connected peer. A provider found without an
//! address is looked up by its peer id (`get_closest_peers`) and dialled
//! with the addresses found. Provider records are only hints: nothing from
//! them is trusted (the advert, header and data are verified as always).

use super::EventLoop;
use statesync_manifest::hash::Hash;
use statesync_net::libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use statesync_net::libp2p::{PeerId, kad};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tracing::{debug, info};

/// A root is looked up again at most this often while its fetch is short
/// of peers.
pub(super) const LOOKUP_EVERY: Duration = Duration::from_secs(10);
/// A fetch with fewer usable peers than this looks for providers.
pub(super) const WANT_PEERS: usize = 3;
/// Providers dialled per lookup at most.
const MAX_DIALS_PER_LOOKUP: usize = 16;

/// The DHT key of a root: domain-separated, so it cannot collide with other
/// uses of the DHT.
pub(crate) fn key(root: &Hash) -> kad::RecordKey {
    let mut k = b"statesync/root/v1/".to_vec();
    k.extend_from_slice(&root.0);
    kad::RecordKey::new(&k)
}

/// Provider state and counters of one node.
#[derive(Default)]
pub(super) struct Providers {
    /// Roots this node announces.
    pub providing: HashSet<Hash>,
    /// Lookups in flight: query -> root.
    pub lookups: std::collections::HashMap<kad::QueryId, Hash>,
    /// Last lookup per root.
    pub last_lookup: std::collections::HashMap<Hash, Instant>,
    /// Peer-id lookups of providers found without an address.
    pub find_peer: std::collections::HashMap<kad::QueryId, PeerId>,
    /// Providers found and not yet connected: dial them when an address
    /// turns up.
    pub wanted: HashSet<PeerId>,
    /// Counters.
    pub stats: ProviderStats,
}

/// Counters of provider records (part of [`crate::Status`]).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ProviderStats {
    /// Roots announced as provided now.
    pub providing: u64,
    /// Provider records published (first announcements and republishes
    /// that reached at least one peer).
    pub published: u64,
    /// Provider lookups made for roots being fetched.
    pub lookups: u64,
    /// Providers found (other than this node).
    pub found: u64,
    /// Providers dialled.
    pub dialled: u64,
}

impl EventLoop {
    /// Announces the roots served now and withdraws the others.
    pub(super) fn update_providing(&mut self) {
        let Some(s) = self.server.as_ref() else {
            return;
        };
        let now: HashSet<Hash> = s.advert().entries.iter().map(|e| e.root).collect();
        let kad = &mut self.swarm.behaviour_mut().kad;
        for r in now.difference(&self.providers.providing) {
            match kad.start_providing(key(r)) {
                Ok(_) => debug!(root = %r, "announcing this node as a provider"),
                Err(e) => debug!(root = %r, "cannot announce as a provider: {e}"),
            }
        }
        for r in self.providers.providing.difference(&now) {
            kad.stop_providing(&key(r));
        }
        self.providers.providing = now;
        self.providers.stats.providing = self.providers.providing.len() as u64;
    }

    /// Looks up providers for fetches short of peers.
    pub(super) fn lookup_providers(&mut self, now: Instant) {
        let short: Vec<Hash> = self
            .fetches
            .values()
            .filter(|f| !f.is_done() && f.usable_peers() < WANT_PEERS)
            .map(|f| f.root())
            .collect();
        for root in short {
            if self
                .providers
                .last_lookup
                .get(&root)
                .is_some_and(|t| now.saturating_duration_since(*t) < LOOKUP_EVERY)
            {
                continue;
            }
            self.providers.last_lookup.insert(root, now);
            let q = self.swarm.behaviour_mut().kad.get_providers(key(&root));
            self.providers.lookups.insert(q, root);
            self.providers.stats.lookups += 1;
            debug!(%root, "looking up providers of the root in the DHT");
        }
        let roots: HashSet<Hash> = self.fetches.values().map(|f| f.root()).collect();
        self.providers.last_lookup.retain(|r, _| roots.contains(r));
    }

    /// Kademlia reported on a provider lookup, an announcement or a peer
    /// lookup. Returns false if the event was not ours.
    pub(super) fn on_kad_providers(&mut self, ev: &kad::Event) -> bool {
        let kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        } = ev
        else {
            return false;
        };
        match result {
            kad::QueryResult::GetProviders(r) => {
                let Some(root) = self.providers.lookups.get(id).copied() else {
                    return true;
                };
                if step.last {
                    self.providers.lookups.remove(id);
                }
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = r {
                    let found: Vec<PeerId> = providers
                        .iter()
                        .filter(|p| **p != self.local_id)
                        .copied()
                        .collect();
                    self.providers.stats.found += found.len() as u64;
                    if !found.is_empty() {
                        info!(%root, providers = found.len(), "found providers of the root in the DHT");
                    }
                    for p in found.into_iter().take(MAX_DIALS_PER_LOOKUP) {
                        self.dial_provider(p);
                    }
                }
                true
            }
            kad::QueryResult::StartProviding(r) | kad::QueryResult::RepublishProvider(r) => {
                if r.is_ok() {
                    self.providers.stats.published += 1;
                }
                true
            }
            kad::QueryResult::GetClosestPeers(r) => {
                let Some(want) = self.providers.find_peer.remove(id) else {
                    return false;
                };
                let peers = match r {
                    Ok(ok) => &ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                if let Some(info) = peers.iter().find(|p| p.peer_id == want)
                    && !info.addrs.is_empty()
                    && !self.connected.contains(&want)
                {
                    let opts = DialOpts::peer_id(want)
                        .addresses(info.addrs.clone())
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    if self.swarm.dial(opts).is_ok() {
                        self.providers.stats.dialled += 1;
                    }
                }
                self.providers.wanted.remove(&want);
                true
            }
            _ => false,
        }
    }

    /// Dials a provider by peer id: Kademlia supplies the addresses its
    /// lookup returned; without any, the peer id is looked up.
    fn dial_provider(&mut self, p: PeerId) {
        if self.connected.contains(&p) || self.providers.wanted.contains(&p) {
            return;
        }
        let opts = DialOpts::peer_id(p)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) => self.providers.stats.dialled += 1,
            Err(e) => {
                debug!(peer = %p, "provider not dialled ({e}): looking up its address");
                self.find_provider_address(p);
            }
        }
    }

    /// A dial of a wanted provider failed for want of an address.
    pub(super) fn find_provider_address(&mut self, p: PeerId) {
        if self.providers.wanted.insert(p) {
            let q = self.swarm.behaviour_mut().kad.get_closest_peers(p);
            self.providers.find_peer.insert(q, p);
        }
    }
}
