//! Prometheus `/metrics` over plain HTTP (`--metrics 127.0.0.1:9100`):
//! bytes served and fetched, chunks verified and rejected, peers, BUSY
//! answers, and the chain node's heights and catch-up counters. The event
//! loop refreshes the values every tick; scrapes only read atomics.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
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

pub fn gauge(g: &Gauge, v: u64) {
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
}

impl Metrics {
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

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = encode(&mut s, &self.registry);
        s
    }
}

/// Serves `GET /metrics` on `addr` until the process exits.
pub async fn serve(addr: SocketAddr, m: Arc<Metrics>) -> std::io::Result<()> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            let m = m.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                // Read the request head (bounded; slow clients time out).
                let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                    while n < buf.len() {
                        match sock.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => n += k,
                        }
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                })
                .await;
                let ok = read.is_ok() && buf[..n].starts_with(b"GET /metrics");
                let (status, body, ctype) = if ok {
                    (
                        "200 OK",
                        m.render(),
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                } else {
                    (
                        "404 Not Found",
                        "only GET /metrics\n".to_string(),
                        "text/plain",
                    )
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(())
}
