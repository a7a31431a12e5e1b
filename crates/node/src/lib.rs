//! The embeddable statesync node.
//!
//! A node of a replicated state machine embeds this crate to serve its
//! checkpoints to peers and to catch up from them: fetch a checkpoint whose
//! root it trusts (every byte verified, local data reused, progress durable
//! across crashes), and, for the reference chain, decide between replaying
//! blocks and state sync and carry it out.
//!
//! - [`NodeBuilder`] -> [`Node`] (a cloneable handle) and [`Events`] (a
//!   stream of typed [`Event`]s): serve a [`statesync_store::Store`],
//!   [`Node::fetch`] a trusted root with seeds or in place, [`Node::publish`]
//!   a new checkpoint, [`Node::status`], [`Node::shutdown`].
//! - Failures say whose fault they were ([`Fault`]): a peer's (it is
//!   penalised), nobody has it (look elsewhere), or this node's own (no
//!   penalty).
//! - The library prints nothing, never exits the process and reads no
//!   environment variables: it emits [`tracing`] events and typed
//!   [`Event`]s; the embedder (like the `statesync` binary) decides what a
//!   person sees.
//!
//! Inside, protocol decisions are made by the sans-IO cores of
//! `statesync-engine`; this crate is their async shell (docs/architecture.md):
//! `runtime` (the event loop), [`serve`] (the serving side), [`fetch`]
//! (state sync and its files), [`chain`] (the reference chain node),
//! [`metrics`].
//!
//! `crates/node/examples/kv.rs` is a complete embedding: a key-value store
//! that checkpoints its files every N writes and serves them, and a second
//! instance that starts empty, fetches the latest checkpoint and continues.

#![warn(missing_docs)]

pub mod chain;
pub mod event;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod fetch;
pub mod metrics;
mod node;
pub(crate) mod runtime;
pub mod serve;

pub use chain::{ChainSetup, ChainStatus};
pub use event::{
    ChainEvent, Event, Fault, FetchError, FetchEvent, FetchId, FetchProgress, PeerWhy, Stall,
};
pub use fetch::{FetchRequest, FetchSummary, IoOptions, LocalReport, PeerReport};
pub use node::{Events, FetchStatus, Node, NodeBuilder, NodeConfig, StartError, Status, Stopped};
pub use runtime::ProviderStats;
pub use serve::{ServeLimits, ServeStats};
pub use statesync_engine::catchup::Force as CatchUp;
pub use statesync_net::Security;

/// Bytes in binary units for log lines (`1.5 MiB`).
pub fn bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// A rate for log lines (`12.0 MiB/s`).
pub fn rate(bytes_: u64, secs: f64) -> String {
    if secs <= 0.0 {
        return "-".into();
    }
    format!("{}/s", bytes(((bytes_ as f64) / secs) as u64))
}
