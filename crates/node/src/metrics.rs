//! Prometheus metrics of a node: bytes served and fetched, chunks verified
//! and rejected, peers, BUSY answers, and the chain node's heights and
//! catch-up counters. The event loop refreshes the values every tick;
//! [`Metrics::render`] only reads atomics (an embedder serves the text
//! wherever it likes; the `statesync` binary on `--metrics ADDR`).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The node's metrics (names prefixed `statesync_`).
#[derive(Default)]
#[allow(missing_docs)]
pub struct Metrics {
    registry: Registry,
    pub bytes_served: Counter,
    pub block_bytes_served: Counter,
    pub requests_served: Counter,
    pub busy_answers: Counter,
    pub not_found_answers: Counter,
    pub bytes_fetched: Counter,
    pub chunks_verified: Counter,
    pub chunks_rejected: Counter,
    pub fetch_bytes_needed: Gauge,
    pub peers: Gauge,
    pub dials: Counter,
    pub discoveries: Counter,
    pub chain_head: Gauge,
    pub chain_best_head: Gauge,
    pub chain_low: Gauge,
    pub blocks_imported: Counter,
    pub blocks_produced: Counter,
    pub state_syncs: Counter,
    pub checkpoint_switches: Counter,
}

/// Raises a counter to an absolute value read from elsewhere.
pub fn set(c: &Counter, v: u64) {
    let cur = c.get();
    if v > cur {
        c.inc_by(v - cur);
    }
}

/// Sets a gauge to `v` (saturating at `i64::MAX`).
pub fn gauge(g: &Gauge, v: u64) {
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Arc<Metrics> {
        let mut m = Metrics::default();
        let mut r = Registry::with_prefix("statesync");
        r.register(
            "served_bytes",
            "Checkpoint chunk bytes served",
            m.bytes_served.clone(),
        );
        r.register(
            "served_block_bytes",
            "Block bytes served",
            m.block_bytes_served.clone(),
        );
        r.register(
            "served_requests",
            "State requests received",
            m.requests_served.clone(),
        );
        r.register(
            "busy_answers",
            "Requests answered BUSY (rate limit or concurrency cap)",
            m.busy_answers.clone(),
        );
        r.register(
            "not_found_answers",
            "Requests answered NOT_FOUND",
            m.not_found_answers.clone(),
        );
        r.register(
            "fetched_bytes",
            "Chunk bytes fetched and verified",
            m.bytes_fetched.clone(),
        );
        r.register(
            "verified_chunks",
            "Chunks fetched and verified",
            m.chunks_verified.clone(),
        );
        r.register(
            "rejected_chunks",
            "Chunks that failed verification",
            m.chunks_rejected.clone(),
        );
        r.register(
            "fetch_needed_bytes",
            "Bytes the running state sync must fetch",
            m.fetch_bytes_needed.clone(),
        );
        r.register("peers", "Connected peers", m.peers.clone());
        r.register("dials", "Outgoing dials", m.dials.clone());
        r.register("discoveries", "Discovery rounds", m.discoveries.clone());
        r.register("chain_head", "Executed head height", m.chain_head.clone());
        r.register(
            "chain_best_head",
            "Best head reported by peers",
            m.chain_best_head.clone(),
        );
        r.register(
            "chain_low",
            "Lowest stored block (backfill pointer)",
            m.chain_low.clone(),
        );
        r.register(
            "blocks_imported",
            "Blocks imported by range sync and following",
            m.blocks_imported.clone(),
        );
        r.register(
            "blocks_produced",
            "Blocks produced",
            m.blocks_produced.clone(),
        );
        r.register("state_syncs", "State syncs started", m.state_syncs.clone());
        r.register(
            "checkpoint_switches",
            "State syncs moved to a newer checkpoint",
            m.checkpoint_switches.clone(),
        );
        m.registry = r;
        Arc::new(m)
    }

    /// The OpenMetrics text of all metrics.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = encode(&mut s, &self.registry);
        s
    }
}
