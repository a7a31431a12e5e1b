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

/// The files a command keeps beside its node.
pub struct Side {
    addr_file: Option<PathBuf>,
    addr_written: bool,
}

impl Side {
    /// Starts the status writer and the metrics endpoint of `node` as
    /// `net` asks.
    pub async fn start(node: &Node, net: &NetOpts) -> Result<Side> {
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
