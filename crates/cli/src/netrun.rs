//! What every network command does around its node: the tokio runtime,
//! the address file, the status file, the metrics endpoint, and signals
//! (SIGTERM and Ctrl-C stop the node gracefully: progress is saved).

use crate::config::NetOpts;
use statesync_node::{Event, Node};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A multi-threaded tokio runtime.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Writes `data` to `p` atomically (a temporary file renamed over it).
pub fn write_atomic(p: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = p.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, p)
}

/// Hands the heap's free memory back to the kernel every 30 s. The
/// allocator is tuned to keep freed buffers for reuse (`tune_allocator` in
/// main.rs), which a fetch needs for speed; a node that runs for days must
/// not keep every arena at its high-water mark (the resident set grew for
/// the whole of a 30-minute soak before this).
fn trim_heap_periodically() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        tick.tick().await;
        loop {
            tick.tick().await;
            // SAFETY: malloc_trim only returns free memory to the kernel;
            // it is thread-safe (it locks each arena in turn).
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    });
}

/// The files a command keeps beside its node.
pub struct Side {
    addr_file: Option<PathBuf>,
    addr_written: bool,
}

impl Side {
    /// Starts the status writer and the metrics endpoint of `node` as
    /// `net` asks.
    pub async fn start(node: &Node, net: &NetOpts) -> Result<Side> {
        trim_heap_periodically();
        if let Some(p) = net.status_file.clone() {
            let node = node.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    let Ok(st) = node.status().await else {
                        return;
                    };
                    if let Ok(b) = serde_json::to_vec(&st) {
                        let _ = write_atomic(&p, &b);
                    }
                }
            });
        }
        if let Some(addr) = net.metrics {
            crate::metrics_http::serve(addr, node.metrics())
                .await
                .map_err(|e| format!("metrics on {addr}: {e}"))?;
            tracing::info!("metrics on http://{addr}/metrics");
        }
        Ok(Side {
            addr_file: net.addr_file.clone(),
            addr_written: false,
        })
    }

    /// Writes the first listen address to the address file.
    pub fn on_event(&mut self, ev: &Event) -> Result<()> {
        if let Event::Listening { addr } = ev
            && !self.addr_written
            && let Some(p) = &self.addr_file
        {
            write_atomic(p, addr.to_string().as_bytes())
                .map_err(|e| format!("write {}: {e}", p.display()))?;
            self.addr_written = true;
        }
        Ok(())
    }
}

/// Resolves with the exit code of the signal that asks the process to stop
/// (SIGTERM: 143, SIGINT: 130).
pub async fn stop_signal() -> ExitCode {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {
            tracing::info!("SIGTERM: saving progress and stopping");
            ExitCode::from(143)
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted: saving progress and stopping");
            ExitCode::from(130)
        }
    }
}

/// A compact live status of a long-running node: one line redrawn on a
/// terminal, a timestamped log line every 10 s otherwise.
pub struct Live {
    bar: Option<indicatif::ProgressBar>,
    last_line: std::time::Instant,
    prev: Option<(std::time::Instant, u64, u64)>,
}

impl Live {
    /// A status line on stderr if `enabled` (not with --quiet or --json).
    pub fn new(enabled: bool) -> Live {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = (enabled && terminal).then(|| {
            let pb = indicatif::ProgressBar::new_spinner();
            if let Ok(st) = indicatif::ProgressStyle::with_template("{spinner} {msg}") {
                pb.set_style(st);
            }
            pb.enable_steady_tick(Duration::from_millis(250));
            pb
        });
        Live {
            bar,
            last_line: std::time::Instant::now()
                .checked_sub(Duration::from_secs(8))
                .unwrap_or_else(std::time::Instant::now),
            prev: None,
        }
    }

    /// Redraws from a status snapshot.
    pub fn update(&mut self, st: &statesync_node::Status) {
        use crate::output::{bytes, rate};
        let now = std::time::Instant::now();
        let out = st
            .serve
            .as_ref()
            .map_or(0, |s| s.bytes_served + s.block_bytes_served);
        let inb = st.chain.as_ref().map_or(0, |c| c.stats.state_bytes_fetched)
            + st.fetches
                .iter()
                .map(|f| f.progress.bytes_done)
                .sum::<u64>();
        let (out_rate, in_rate) = match self.prev {
            Some((t, o, i)) => {
                let dt = now.saturating_duration_since(t).as_secs_f64().max(1e-3);
                (
                    out.saturating_sub(o) as f64 / dt,
                    inb.saturating_sub(i) as f64 / dt,
                )
            }
            None => (0.0, 0.0),
        };
        self.prev = Some((now, out, inb));
        let peers = st.connections.len();
        let line = match &st.chain {
            Some(c) => {
                let eta = match c.phase {
                    statesync_engine::catchup::PhaseName::StateSync => st
                        .fetches
                        .first()
                        .filter(|_| in_rate > 0.0)
                        .map(|f| {
                            let left = f
                                .progress
                                .bytes_needed
                                .saturating_sub(f.progress.bytes_done);
                            format!(
                                " {} of {}, eta {:.0} s",
                                bytes(f.progress.bytes_done),
                                bytes(f.progress.bytes_needed),
                                left as f64 / in_rate
                            )
                        })
                        .unwrap_or_default(),
                    statesync_engine::catchup::PhaseName::Replay
                        if c.replay_blocks_per_sec > 0.0 =>
                    {
                        format!(
                            " eta {:.0} s",
                            c.best_head.saturating_sub(c.head) as f64 / c.replay_blocks_per_sec
                        )
                    }
                    _ => String::new(),
                };
                format!(
                    "{}{eta} | head {} of {} | history from {} | {peers} peers | out {} in {}",
                    c.phase,
                    c.head,
                    c.best_head,
                    c.low,
                    rate(out_rate as u64, 1.0),
                    rate(in_rate as u64, 1.0),
                )
            }
            None => {
                let s = st.serve.clone().unwrap_or_default();
                format!(
                    "serving | {peers} peers | out {} | {} requests, {} busy, {} refused, {} in progress",
                    rate(out_rate as u64, 1.0),
                    s.requests,
                    s.busy,
                    s.refused,
                    bytes(s.inflight_bytes)
                )
            }
        };
        match &self.bar {
            Some(pb) => pb.set_message(line),
            None if self.last_line.elapsed() >= Duration::from_secs(10) => {
                self.last_line = std::time::Instant::now();
                tracing::info!("{line}");
            }
            None => {}
        }
    }

    /// Removes the line.
    pub fn clear(&mut self) {
        if let Some(pb) = self.bar.take() {
            pb.finish_and_clear();
        }
    }
}
