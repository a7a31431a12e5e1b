//! `statesync serve`: a node that serves the checkpoints of a store.

use crate::config::{self, NetOpts, ServeOpts};
use crate::netrun::{self, Side};
use clap::Args;
use serde::Deserialize;
use statesync_node::{Event, NodeBuilder};
use statesync_store::Store;
use std::path::PathBuf;
use std::process::ExitCode;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Flags of `serve` (and keys of its `--config` file).
#[derive(Args, Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// A TOML file with any of these options (flags override it).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// The checkpoint store to serve (it must exist).
    #[arg(long)]
    store: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    net: NetOpts,
    #[command(flatten)]
    #[serde(flatten)]
    serve: ServeOpts,
    /// Fault injection (tests): silent, traversal or corrupt.
    #[cfg(feature = "fault-injection")]
    #[arg(long, value_parser = parse_fault)]
    #[serde(skip)]
    fault: Option<statesync_node::fault::ServeFault>,
}

#[cfg(feature = "fault-injection")]
fn parse_fault(s: &str) -> std::result::Result<statesync_node::fault::ServeFault, String> {
    use statesync_node::fault::ServeFault;
    match s {
        "silent" => Ok(ServeFault::Silent),
        "traversal" => Ok(ServeFault::Traversal),
        "corrupt" => Ok(ServeFault::Corrupt),
        _ => Err(format!("{s:?}: silent, traversal or corrupt")),
    }
}

/// Runs `serve` until SIGTERM or Ctrl-C.
pub fn run(a: ServeArgs, json: bool, bars: bool) -> Result<ExitCode> {
    let file: ServeArgs = match &a.config {
        Some(p) => config::load(p)?,
        None => ServeArgs::default(),
    };
    let store_path = a
        .store
        .or(file.store)
        .ok_or("--store (or `store` in --config) is required")?;
    let net = a.net.over(file.net);
    let serve = a.serve.over(file.serve);
    let data = net.data_dir()?;
    let (store, rep) = Store::open_existing(&store_path)?;
    for d in &rep.removed_staging {
        tracing::info!("removed stale staging directory {}", d.display());
    }
    #[allow(unused_mut)]
    let mut cfg = net.node_config(&serve)?;
    #[cfg(feature = "fault-injection")]
    {
        cfg.serve_fault = a.fault;
    }
    netrun::runtime()?.block_on(async move {
        let (node, mut events) = NodeBuilder::new(data)
            .config(cfg)
            .serve(store)
            .start()
            .await?;
        let mut side = Side::start(&node, &net).await?;
        let stop = netrun::stop_signal();
        tokio::pin!(stop);
        let mut live = netrun::Live::new(bars);
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                code = &mut stop => {
                    live.clear();
                    node.shutdown().await;
                    return Ok(code);
                }
                _ = tick.tick() => {
                    if let Ok(st) = node.status().await {
                        live.update(&st);
                    }
                }
                ev = events.recv() => {
                    let Some(ev) = ev else {
                        return Ok(ExitCode::SUCCESS);
                    };
                    side.on_event(&ev)?;
                    show(&ev, json);
                    if let Event::Stopped { error: Some(e) } = ev {
                        return Err(e.into());
                    }
                }
            }
        }
    })
}

/// JSON lines of the events that matter to an operator of a server.
fn show(ev: &Event, json: bool) {
    if !json {
        return;
    }
    match ev {
        Event::Fetch { .. } => {}
        _ => crate::output::print_json_line(ev),
    }
}
