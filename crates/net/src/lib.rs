//! The libp2p layer of statesync: it owns the swarm a node runs
//! ([`build_swarm`], [`Behaviour`], [`NetConfig`]), the wire codecs, the
//! node's identity, and the buffers chunk data is read into.
//!
//! - Transports: TCP (bulk, the default) secured by libp2p's TLS 1.3 with
//!   the cheapest cipher of this CPU ([`tls`]) or, for peers without TLS,
//!   noise; yamux on top. QUIC as well.
//! - Protocols: `/statesync/state/1` and `/statesync/blocks/3`
//!   (request/response, one stream per request, framed and bounded by
//!   `statesync-proto`: [`StateCodec`], [`BlocksCodec`]), identify, ping,
//!   Kademlia for discovery.
//! - [`OnePerPeer`]: when two nodes dial each other at once, both keep the
//!   same single connection (the one dialed by the smaller peer id) and close
//!   the other.
//! - [`chunkbuf`]: block-aligned, pooled buffers that chunk data is read
//!   into off the stream, for direct I/O without a copy.
//! - [`advert`]: adverts of the checkpoints a node serves, signed with its
//!   identity.
//! - A persistent ed25519 identity in the data directory
//!   ([`load_or_create_identity`]).

#![warn(missing_docs)]

pub mod advert;
pub mod chunkbuf;
mod codec;
mod one_per_peer;
pub mod tls;

pub use codec::{BlocksCodec, Inbound, StateCodec};
pub use libp2p;
pub use one_per_peer::OnePerPeer;

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    StreamProtocol, Swarm, allow_block_list, connection_limits, identify, kad,
    memory_connection_limits, noise, ping, request_response, tcp, yamux,
};
use std::path::Path;
use std::time::Duration;

pub use behaviour::{Behaviour, BehaviourEvent};

mod behaviour {
    // The derive generates `BehaviourEvent`, whose variants it leaves
    // undocumented.
    #![allow(missing_docs)]

    use super::*;

    /// Everything a statesync node speaks.
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        /// `/statesync/state/1`: manifest headers and pieces, chunks and
        /// adverts ([`NetConfig::request_timeout`],
        /// [`NetConfig::max_concurrent_streams`]).
        pub state: request_response::Behaviour<StateCodec>,
        /// `/statesync/blocks/3`: chain statuses, block ranges and new blocks
        /// (30 s timeout, 64 streams per connection).
        pub blocks: request_response::Behaviour<BlocksCodec>,
        /// Identify (`/statesync/id/1`): a peer's listen addresses and
        /// protocols.
        pub identify: identify::Behaviour,
        /// Ping: liveness and round-trip times.
        pub ping: ping::Behaviour,
        /// Kademlia in server mode with an in-memory store, for discovery.
        pub kad: kad::Behaviour<kad::store::MemoryStore>,
        /// Closes duplicate connections to a peer.
        pub one_per_peer: OnePerPeer,
        /// Bounds on connections: established in total and per peer,
        /// pending incoming ([`NetConfig::max_connections`] and friends).
        pub limits: connection_limits::Behaviour,
        /// Refuses new connections while the process uses more than
        /// [`NetConfig::max_memory_fraction`] of the machine's memory.
        pub memory: memory_connection_limits::Behaviour,
        /// Peers refused outright (in and out) while they are blocked: the
        /// node blocks peers that sent malformed requests.
        pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    }
}

/// Why the node's identity or swarm could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Reading, decoding, creating or writing the identity file failed.
    #[error("identity file {path}: {err}")]
    Identity {
        /// The identity file.
        path: String,
        /// What went wrong.
        err: String,
    },
    /// Building the swarm failed (a security upgrade's configuration or
    /// the behaviour).
    #[error("building the swarm: {0}")]
    Build(String),
}

/// Loads the node's identity from `path`, creating an ed25519 one (mode
/// 0600) if the file is absent. A new key is written to a temporary file,
/// synced and renamed into place; missing parent directories are created.
/// Errors: [`NetError::Identity`].
pub fn load_or_create_identity(path: &Path) -> Result<Keypair, NetError> {
    let err = |e: String| NetError::Identity {
        path: path.display().to_string(),
        err: e,
    };
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let kp = Keypair::generate_ed25519();
            let bytes = kp.to_protobuf_encoding().map_err(|e| err(e.to_string()))?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
            }
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| err(e.to_string()))?;
            f.write_all(&bytes).map_err(|e| err(e.to_string()))?;
            f.sync_all().map_err(|e| err(e.to_string()))?;
            std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
            Ok(kp)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Streams per connection yamux 0.13 allows by default.
const YAMUX_MAX_STREAMS: usize = 512;

/// Network tunables.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Timeout of one state protocol request/response exchange at the
    /// transport level (the scheduler has its own, adaptive, shorter ones;
    /// the blocks protocol has a fixed 30 s).
    pub request_timeout: Duration,
    /// Streams of the state protocol open at once per connection (capped
    /// at 512, yamux's limit).
    pub max_concurrent_streams: usize,
    /// How long a connection that no protocol needs any more is kept open.
    pub idle_connection_timeout: Duration,
    /// The security protocol this node proposes first when it dials over
    /// TCP; the other one is proposed second and both are accepted.
    pub security: Security,
    /// Established connections at most, in and out together.
    pub max_connections: u32,
    /// Incoming connections still in their handshake at most.
    pub max_pending_incoming: u32,
    /// Established connections to one peer at most (two nodes dialling
    /// each other at once briefly hold two).
    pub max_connections_per_peer: u32,
    /// Refuse new connections while this process uses more than this
    /// fraction of the machine's memory.
    pub max_memory_fraction: f64,
}

/// The security protocol a node proposes first on TCP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Security {
    /// libp2p's TLS 1.3 with the cheapest cipher of this CPU ([`tls`]).
    #[default]
    Tls,
    /// libp2p's noise (`Noise_XX_25519_ChaChaPoly_SHA256`).
    Noise,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            request_timeout: Duration::from_secs(120),
            max_concurrent_streams: 256,
            idle_connection_timeout: Duration::from_secs(60),
            security: Security::Tls,
            max_connections: 256,
            max_pending_incoming: 64,
            max_connections_per_peer: 2,
            max_memory_fraction: 0.8,
        }
    }
}

/// Builds the swarm: TCP + (TLS or noise) + yamux, and QUIC, on tokio.
///
/// As a dialer it proposes `/tls/1.0.0` first and `/noise` second (the
/// other way round with [`Security::Noise`]); as a listener it accepts
/// either. Between statesync nodes that is TLS 1.3 with
/// AES-128-GCM where the CPU has AES instructions (see [`tls`]: it halves
/// the CPU spent encrypting bulk transfers compared with noise's
/// ChaCha20-Poly1305); a stock libp2p node that speaks only noise still
/// connects either way. Listening and dialling are the caller's.
///
/// Errors: [`NetError::Build`].
pub fn build_swarm(keypair: Keypair, cfg: &NetConfig) -> Result<Swarm<Behaviour>, NetError> {
    let b = |e: &dyn std::fmt::Display| NetError::Build(e.to_string());
    let rr_cfg = request_response::Config::default()
        .with_request_timeout(cfg.request_timeout)
        .with_max_concurrent_streams(cfg.max_concurrent_streams.min(YAMUX_MAX_STREAMS));
    // yamux 0.13 as libp2p-yamux's default gives it: up to 512 streams per
    // connection, receive windows auto-tuned towards the bandwidth-delay
    // product. Every setter of libp2p-yamux's `Config` (set_max_num_streams
    // included) silently switches it back to yamux 0.12 with fixed 256 KiB
    // windows per stream, so none is called.
    let yamux_cfg = yamux::Config::default();
    let limits = (
        cfg.max_connections,
        cfg.max_pending_incoming,
        cfg.max_connections_per_peer,
        cfg.max_memory_fraction,
    );
    let behaviour = |key: &Keypair| -> Behaviour {
        let peer_id = key.public().to_peer_id();
        // Provider records of checkpoint roots (see the node's
        // runtime/providers.rs): checkpoints come and go within hours, so
        // records live an hour and are republished every 20 minutes (the
        // defaults, 48 h and 12 h, suit content that stays).
        let mut kcfg = kad::Config::new(kad::PROTOCOL_NAME);
        kcfg.set_provider_record_ttl(Some(Duration::from_secs(3600)));
        kcfg.set_provider_publication_interval(Some(Duration::from_secs(1200)));
        let mut kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kcfg);
        kad.set_mode(Some(kad::Mode::Server));
        Behaviour {
            state: request_response::Behaviour::new(
                [(
                    StreamProtocol::new(statesync_proto::PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                rr_cfg.clone(),
            ),
            blocks: request_response::Behaviour::new(
                [(
                    StreamProtocol::new(statesync_proto::blocks::BLOCKS_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(30))
                    .with_max_concurrent_streams(64),
            ),
            identify: identify::Behaviour::new(identify::Config::new(
                "/statesync/id/1".into(),
                key.public(),
            )),
            ping: ping::Behaviour::new(ping::Config::new()),
            kad,
            one_per_peer: OnePerPeer::new(peer_id),
            limits: connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established(Some(limits.0))
                    .with_max_pending_incoming(Some(limits.1))
                    .with_max_established_per_peer(Some(limits.2)),
            ),
            memory: memory_connection_limits::Behaviour::with_max_percentage(limits.3),
            blocked: allow_block_list::Behaviour::default(),
        }
    };
    let idle = cfg.idle_connection_timeout;
    let builder = libp2p::SwarmBuilder::with_existing_identity(keypair).with_tokio();
    // The same swarm either way; only the order in which the dialer proposes
    // the two security protocols differs (the listener accepts both). The
    // two orders are two types, hence one builder chain in a macro.
    macro_rules! with_security {
        ($first:expr, $second:expr) => {
            builder
                .with_tcp(
                    tcp::Config::default().nodelay(true),
                    ($first, $second),
                    move || yamux_cfg.clone(),
                )
                .map_err(|e| b(&e))?
                .with_quic()
                .with_behaviour(behaviour)
                .map_err(|e| b(&e))?
                .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
                .build()
        };
    }
    let swarm = match cfg.security {
        Security::Tls => with_security!(tls::Config::new, noise::Config::new),
        Security::Noise => with_security!(noise::Config::new, tls::Config::new),
    };
    Ok(swarm)
}
