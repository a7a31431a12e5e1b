//! The embedder's API: [`NodeConfig`], [`NodeBuilder`] -> [`Node`] (a
//! cloneable handle) and [`Events`] (the stream of typed [`Event`]s).

use crate::chain::{ChainSetup, ChainStatus};
use crate::event::{Event, FetchError, FetchId, FetchProgress};
use crate::fetch::{FetchRequest, IoOptions};
use crate::metrics::Metrics;
use crate::runtime::{Command, EventLoop};
use crate::serve::{ServeLimits, ServeStats};
use serde::Serialize;
use statesync_engine::fetch::Progress;
use statesync_net::Security;
use statesync_net::libp2p::identity::Keypair;
use statesync_net::libp2p::multiaddr::Protocol;
use statesync_net::libp2p::{Multiaddr, PeerId};
use statesync_store::Store;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// How a node runs. `Default` holds every default in one place; the
/// `statesync` binary's flags and config file map onto these fields.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Addresses to listen on (default: a free TCP port on 127.0.0.1).
    pub listen: Vec<Multiaddr>,
    /// Peers to connect to at start: multiaddrs ending in `/p2p/<peer id>`.
    pub peers: Vec<Multiaddr>,
    /// Keep at least this many peers connected (discovery runs below it).
    pub min_peers: usize,
    /// Connect to at most this many peers.
    pub max_peers: usize,
    /// The security protocol proposed first when dialling over TCP (both
    /// TLS and noise are always accepted).
    pub security: Security,
    /// Serving limits.
    pub limits: ServeLimits,
    /// How fetched state is written.
    pub io: IoOptions,
    /// Fault injection for tests: how this node misbehaves as a server.
    #[cfg(feature = "fault-injection")]
    pub serve_fault: Option<crate::fault::ServeFault>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: Vec::new(),
            peers: Vec::new(),
            min_peers: 8,
            max_peers: 64,
            security: Security::Tls,
            limits: ServeLimits::default(),
            io: IoOptions::default(),
            #[cfg(feature = "fault-injection")]
            serve_fault: None,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The identity key could not be read or created.
    #[error("identity: {0}")]
    Identity(String),
    /// A listen address cannot be used (in use, not local, unsupported).
    #[error("listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// A peer address lacks its `/p2p/<peer id>`.
    #[error("peer address {0} must end with /p2p/<peer id>")]
    PeerAddress(Multiaddr),
    /// The data directory or the store could not be used.
    #[error("{0}")]
    Storage(String),
    /// The chain node could not start.
    #[error("chain: {0}")]
    Chain(String),
    /// The network stack could not be built.
    #[error("network: {0}")]
    Network(String),
}

/// Builds a node: an identity, a data directory, listen addresses, an
/// optional store to serve, an optional chain to run.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use statesync_node::{NodeBuilder, NodeConfig};
/// let (store, _) = statesync_store::Store::open("/var/lib/app/store")?;
/// let (node, mut events) = NodeBuilder::new("/var/lib/app/node")
///     .config(NodeConfig::default())
///     .serve(store)
///     .start()
///     .await?;
/// while let Some(ev) = events.recv().await {
///     println!("{ev:?}");
/// }
/// node.shutdown().await;
/// # Ok(()) }
/// ```
pub struct NodeBuilder {
    data: PathBuf,
    identity: Option<Keypair>,
    config: NodeConfig,
    store: Option<Store>,
    chain: Option<ChainSetup>,
}

impl NodeBuilder {
    /// A node whose identity (`identity.key`, created if absent), fetch
    /// staging areas and chain data live in `data`.
    pub fn new(data: impl Into<PathBuf>) -> NodeBuilder {
        NodeBuilder {
            data: data.into(),
            identity: None,
            config: NodeConfig::default(),
            store: None,
            chain: None,
        }
    }

    /// Uses this identity instead of the one in the data directory.
    pub fn identity(mut self, kp: Keypair) -> NodeBuilder {
        self.identity = Some(kp);
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: NodeConfig) -> NodeBuilder {
        self.config = config;
        self
    }

    /// Adds a listen address.
    pub fn listen(mut self, addr: Multiaddr) -> NodeBuilder {
        self.config.listen.push(addr);
        self
    }

    /// Adds a bootstrap peer (`.../p2p/<peer id>`).
    pub fn peer(mut self, addr: Multiaddr) -> NodeBuilder {
        self.config.peers.push(addr);
        self
    }

    /// Serves the promoted checkpoints of `store` (and announces new ones
    /// as they appear, see [`Node::publish`]).
    pub fn serve(mut self, store: Store) -> NodeBuilder {
        self.store = Some(store);
        self
    }

    /// Runs a node of the reference chain (it serves its own store).
    pub fn chain(mut self, setup: ChainSetup) -> NodeBuilder {
        self.chain = Some(setup);
        self
    }

    /// Starts the node on the current tokio runtime: listens, dials the
    /// bootstrap peers and begins serving. Fails with a clear error when a
    /// listen address is in use or the data directory is unusable.
    pub async fn start(self) -> Result<(Node, Events), StartError> {
        std::fs::create_dir_all(&self.data)
            .map_err(|e| StartError::Storage(format!("create {}: {e}", self.data.display())))?;
        let kp = match self.identity {
            Some(k) => k,
            None => statesync_net::load_or_create_identity(&self.data.join("identity.key"))
                .map_err(|e| StartError::Identity(e.to_string()))?,
        };
        let peer_id = kp.public().to_peer_id();
        for a in &self.config.peers {
            if !matches!(a.iter().last(), Some(Protocol::P2p(_))) {
                return Err(StartError::PeerAddress(a.clone()));
            }
        }
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let metrics = Metrics::new();
        let lp = EventLoop::new(
            kp,
            self.data,
            self.config,
            self.store,
            self.chain,
            cmd_rx,
            ev_tx,
            metrics.clone(),
        )?;
        tokio::spawn(lp.run());
        Ok((
            Node {
                peer_id,
                cmd: cmd_tx,
                metrics,
            },
            Events(ev_rx),
        ))
    }
}

/// A handle to a running node: cheap to clone; the node stops when it is
/// shut down or every handle is dropped.
#[derive(Clone)]
pub struct Node {
    peer_id: PeerId,
    cmd: mpsc::UnboundedSender<Command>,
    metrics: Arc<Metrics>,
}

/// The node stopped before it could answer.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the node has stopped")]
pub struct Stopped;

impl Node {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Its metrics (render them with [`Metrics::render`]).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Starts fetching `req.root` from peers that advertise it; progress
    /// and the outcome arrive as [`crate::FetchEvent`]s with the returned
    /// id. Fails at once (with [`crate::Fault::Input`] or
    /// [`crate::Fault::Local`]) when the sync cannot even start.
    pub async fn fetch(&self, req: FetchRequest) -> Result<FetchId, FetchError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Fetch {
                req: Box::new(req),
                reply,
            })
            .map_err(|_| FetchError::local("the node has stopped"))?;
        rx.await
            .map_err(|_| FetchError::local("the node has stopped"))?
    }

    /// Stops a fetch (its durable progress stays for a later one); false
    /// if there is no such fetch.
    pub async fn cancel_fetch(&self, id: FetchId) -> Result<bool, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::CancelFetch { id, reply })
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Re-reads the store now and announces new checkpoints to connected
    /// peers (the node also does this by itself every second).
    pub fn publish(&self) {
        let _ = self.cmd.send(Command::Publish);
    }

    /// Connects to a peer (`.../p2p/<peer id>`).
    pub fn dial(&self, addr: Multiaddr) {
        let _ = self.cmd.send(Command::Dial { addr });
    }

    /// A snapshot of the node's state.
    pub async fn status(&self) -> Result<Status, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Status { reply })
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Stops gracefully: makes fetch progress durable, releases leases,
    /// closes connections; returns once the node has stopped.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.cmd.send(Command::Shutdown { reply }).is_ok() {
            let _ = rx.await;
        }
    }
}

/// The stream of a node's [`Event`]s, in order. Read it: events queue up
/// (progress events are rate-limited, so they stay few) until it is read
/// or dropped.
pub struct Events(mpsc::UnboundedReceiver<Event>);

impl Events {
    /// The next event; `None` once the node has stopped.
    pub async fn recv(&mut self) -> Option<Event> {
        self.0.recv().await
    }

    /// The next event if one is ready now.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.0.try_recv().ok()
    }
}

impl futures::Stream for Events {
    type Item = Event;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Event>> {
        self.0.poll_recv(cx)
    }
}

/// A running fetch in [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct FetchStatus {
    /// Its id.
    pub id: FetchId,
    /// The root (hex).
    pub root: String,
    /// Where it lands.
    pub out: PathBuf,
    /// How far it is.
    pub progress: FetchProgress,
}

/// A snapshot of a node ([`Node::status`]).
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// This node's peer id.
    pub peer_id: String,
    /// Listen addresses (with `/p2p/`).
    pub listen: Vec<String>,
    /// Connections per connected peer.
    pub connections: BTreeMap<String, usize>,
    /// Duplicate connections closed (two nodes dialling each other).
    pub duplicates_closed: u64,
    /// Dials made.
    pub dials: u64,
    /// Discovery rounds run.
    pub discoveries: u64,
    /// Kademlia provider records: roots announced, lookups, providers
    /// found and dialled.
    pub providers: crate::runtime::ProviderStats,
    /// Peers blocked now (their connections are refused), for sending
    /// malformed requests.
    pub blocked: usize,
    /// Serving counters, if it serves.
    pub serve: Option<ServeStats>,
    /// The scheduler counters of the first running fetch, if any.
    pub fetch: Option<Progress>,
    /// Every running fetch.
    pub fetches: Vec<FetchStatus>,
    /// The chain node, if it runs one.
    pub chain: Option<ChainStatus>,
}
