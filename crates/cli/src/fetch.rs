//! `statesync fetch`: fetch the checkpoint of a trusted root from peers
//! into a new directory, reusing local data, resuming after a crash.

use crate::config::{self, NetOpts};
use crate::netrun::{self, Side};
use crate::outln;
use crate::output::{self as ui, print_json};
use crate::tools::{dir_and_manifest, parse_root, read_manifest, split_dir_manifest};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use statesync_manifest::format::{DEFAULT_CHUNK_SIZE, Manifest};
use statesync_node::fetch::staging;
use statesync_node::{Event, FetchEvent, FetchProgress, FetchRequest, FetchSummary, NodeBuilder};
use statesync_store::Store;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Flags of `fetch` (and keys of its `--config` file).
#[derive(Args, Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
pub struct FetchArgs {
    /// A TOML file with any of these options (flags override it).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// The trusted root hash (64 hex digits).
    #[arg(long)]
    #[serde(skip)]
    root: String,
    /// Where to put the checkpoint (must not exist; its manifest lands
    /// beside it as OUT.manifest).
    #[arg(long)]
    #[serde(skip)]
    out: PathBuf,
    /// A local checkpoint to reuse data from: DIR (manifest computed) or
    /// DIR=MANIFEST.
    #[arg(long = "seed")]
    seeds: Vec<String>,
    /// Reuse data from every checkpoint of this store.
    #[arg(long)]
    seed_store: Option<PathBuf>,
    /// Consume this stale local checkpoint (DIR or DIR=MANIFEST) and update
    /// it in place: cost follows the changed bytes. DIR is moved into the
    /// data directory (same filesystem) and is gone afterwards.
    #[arg(long)]
    #[serde(skip)]
    in_place: Option<String>,
    /// Rehash every chunk from disk before promotion (default: every chunk
    /// is verified before it is written, and a 1/64 sample of written and
    /// kept chunks is re-read from disk).
    #[arg(long)]
    full_verify: bool,
    /// Largest window of bytes in flight per peer, MiB [default: 64].
    #[arg(long)]
    max_window_mib: Option<u64>,
    /// Bytes written between durable progress commits, MiB [default: 64].
    #[arg(long)]
    commit_mib: Option<u64>,
    /// Give up after this many seconds, exiting with code 2 and the reason
    /// peer by peer (durable progress is kept for a retry) [default: wait
    /// for ever, saying why every 5 s].
    #[arg(long)]
    timeout: Option<f64>,
    #[command(flatten)]
    #[serde(flatten)]
    net: NetOpts,
    /// Fault injection (tests): die by SIGKILL after this many chunk bytes.
    #[cfg(feature = "fault-injection")]
    #[arg(long)]
    #[serde(skip)]
    crash_after_bytes: Option<u64>,
}

/// `fetch` again after a finished sync (or a crash right after promotion)
/// succeeds without fetching: OUT's manifest verifies against the root,
/// every file is there at its size, and no staged copy is left.
fn already_synced(
    out: &std::path::Path,
    data: &std::path::Path,
    root: &statesync_manifest::hash::Hash,
) -> Option<Manifest> {
    let staging = staging::staging_dir(data, root);
    std::fs::read(statesync_node::fetch::manifest_path_for(out))
        .ok()
        .and_then(|b| Manifest::decode_verified(&b, root).ok())
        .filter(|m| {
            m.files().iter().all(|f| {
                std::fs::symlink_metadata(statesync_manifest::path::join(out, &f.path))
                    .is_ok_and(|md| md.is_file() && md.len() == f.size)
            })
        })
        .filter(|_| !staging.join("state").exists())
}

/// Runs `fetch` to the end.
pub fn run(a: FetchArgs, json: bool, bars: bool) -> Result<ExitCode> {
    let file: FetchArgs = match &a.config {
        Some(p) => config::load(p)?,
        None => FetchArgs::default(),
    };
    let net = a.net.over(file.net);
    let data = net.data_dir()?;
    let root = parse_root(&a.root)?;
    let out = a.out.clone();
    if out.exists() {
        let Some(m) = already_synced(&out, &data, &root) else {
            return Err(format!(
                "{} already exists; fetch writes a new directory",
                out.display()
            )
            .into());
        };
        let _ = std::fs::remove_dir_all(staging::staging_dir(&data, &root));
        if json {
            print_json(&serde_json::json!({
                "root": root.to_hex(),
                "out": out,
                "files": m.files().len(),
                "bytes": m.total_size(),
                "already_synced": true,
            }));
        } else {
            tracing::info!("{} already holds {root}; nothing to fetch", out.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let chunk_size = DEFAULT_CHUNK_SIZE;
    let mut req = FetchRequest::new(root, out);
    let seeds = if a.seeds.is_empty() {
        file.seeds
    } else {
        a.seeds
    };
    for s in &seeds {
        req.seeds.push(dir_and_manifest(s, chunk_size)?);
    }
    if let Some(sp) = a.seed_store.or(file.seed_store) {
        let (st, _) = Store::open_existing(&sp)?;
        for c in st.list()? {
            req.seeds
                .push((st.state_dir(c.height), st.load_manifest(c.height)?));
        }
    }
    req.in_place = match a.in_place.as_deref().map(|s| (s, split_dir_manifest(s).0)) {
        // Already consumed by an interrupted run: the staging area has it.
        Some((_, dir)) if !dir.exists() => {
            let saved = staging::staging_dir(&data, &root).join("in-place-manifest");
            Some((dir, read_manifest(&saved)?))
        }
        Some((s, _)) => {
            let (dir, m) = dir_and_manifest(s, chunk_size)?;
            // A manifest given beside the directory vouches only for files
            // not modified since it was written.
            if let (_, Some(mp)) = split_dir_manifest(s) {
                let written = std::fs::metadata(&mp)?.modified()?;
                let dropped = staging::drop_changed_since(&dir, &m, written)?;
                if !dropped.is_empty() {
                    tracing::warn!(
                        "in place: {} files of {} changed after {} was written; they are fetched, not kept: {}",
                        dropped.len(),
                        dir.display(),
                        mp.display(),
                        dropped.join(", ")
                    );
                }
            }
            Some((dir, m))
        }
        None => None,
    };
    req.full_verify = a.full_verify || file.full_verify;
    let timeout = a.timeout.or(file.timeout);
    req.max_window = a.max_window_mib.or(file.max_window_mib).map(|m| m << 20);
    req.commit_bytes = a.commit_mib.or(file.commit_mib).map(|m| m << 20);
    #[cfg(feature = "fault-injection")]
    {
        req.crash_after_bytes = a.crash_after_bytes;
    }
    let cfg = net.node_config(&Default::default())?;
    netrun::runtime()?.block_on(async move {
        let (node, mut events) = NodeBuilder::new(&data).config(cfg).start().await?;
        let mut side = Side::start(&node, &net).await?;
        let id = match node.fetch(req).await {
            Ok(id) => id,
            Err(e) => {
                node.shutdown().await;
                return Err(e.into());
            }
        };
        let mut view = Progress::new(bars);
        let stop = netrun::stop_signal();
        tokio::pin!(stop);
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(Duration::from_secs_f64(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut last_stall: Option<String> = None;
        let mut dial_said = std::collections::HashSet::new();
        loop {
            let ev = tokio::select! {
                code = &mut stop => {
                    view.clear();
                    node.shutdown().await;
                    return Ok(code);
                }
                _ = &mut deadline => {
                    view.clear();
                    let why = match last_stall.take() {
                        Some(s) => s,
                        None => match node.status().await.ok().and_then(|s| s.fetches.into_iter().next()) {
                            Some(f) => format!(
                                "{} of {} fetched, {} peers usable",
                                ui::bytes(f.progress.bytes_done),
                                ui::bytes(f.progress.bytes_needed),
                                f.progress.peers_usable
                            ),
                            None => "no progress".into(),
                        },
                    };
                    node.shutdown().await;
                    return Err(format!(
                        "fetch of {root} gave up after {:.0} s (--timeout): {why}",
                        timeout.unwrap_or(0.0)
                    )
                    .into());
                }
                ev = events.recv() => ev,
            };
            let Some(ev) = ev else {
                return Err("the node stopped".into());
            };
            side.on_event(&ev)?;
            if let Event::DialFailed { peer: Some(p), error } = &ev
                && dial_said.insert(*p)
            {
                tracing::warn!("cannot reach peer {p}: {error}");
            }
            let Event::Fetch { id: fid, event } = ev else {
                continue;
            };
            if fid != id {
                continue;
            }
            match event {
                FetchEvent::Progress(p) => view.update(&p),
                FetchEvent::Stalled(st) => {
                    let line = st.summary();
                    view.note(&line);
                    last_stall = Some(line);
                }
                FetchEvent::Planned { fetch_bytes, .. } => view.set_total(fetch_bytes),
                FetchEvent::Done(summary) => {
                    view.finish(&summary);
                    node.shutdown().await;
                    print_summary(&summary, json);
                    return Ok(ExitCode::SUCCESS);
                }
                FetchEvent::Failed(e) => {
                    view.clear();
                    node.shutdown().await;
                    return Err(e.message.into());
                }
                _ => {}
            }
        }
    })
}

fn print_summary(summary: &FetchSummary, json: bool) {
    if json {
        print_json(summary);
        return;
    }
    outln!(
        "synced {} into {}: {} files, {}; fetched {} from {} peers, reused {} locally; {:.1}s ({})",
        summary.root,
        summary.out.display(),
        summary.files,
        ui::bytes(summary.bytes),
        ui::bytes(summary.bytes_fetched),
        summary.peers_used,
        ui::bytes(summary.local.reused()),
        summary.seconds,
        ui::rate(summary.bytes_fetched, summary.seconds)
    );
    for b in &summary.peers_banned {
        outln!("  banned {b}");
    }
}

/// A progress bar on a terminal, or a line every 2 s otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    last_line: Instant,
    log_lines: bool,
}

impl Progress {
    fn new(bars: bool) -> Progress {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = (bars && terminal).then(|| {
            let pb = ProgressBar::hidden();
            if let Ok(st) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                pb.set_style(st.progress_chars("=> "));
            }
            pb
        });
        Progress {
            bar,
            last_line: Instant::now(),
            log_lines: bars || !terminal,
        }
    }

    fn set_total(&mut self, bytes: u64) {
        if let Some(pb) = &self.bar
            && bytes > 0
        {
            pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            pb.set_length(bytes);
        }
    }

    fn update(&mut self, p: &FetchProgress) {
        if let Some(pb) = &self.bar {
            // No bar until there is something to measure: a placeholder
            // "0 B/1 B" helps nobody.
            if p.bytes_needed > 0 {
                pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                pb.set_length(p.bytes_needed);
                pb.set_position(p.bytes_done);
                pb.set_message(format!("fetch ({} peers)", p.peers_usable));
            }
        } else if self.log_lines
            && p.bytes_needed > 0
            && self.last_line.elapsed() > Duration::from_secs(2)
        {
            self.last_line = Instant::now();
            tracing::info!(
                "fetch {}: {}/{} ({:.0}%), {} chunks, {}, {} peers usable, {} requests",
                p.stage,
                ui::bytes(p.bytes_done),
                ui::bytes(p.bytes_needed),
                100.0 * p.bytes_done as f64 / p.bytes_needed.max(1) as f64,
                p.chunks_done,
                ui::rate(p.bytes_done, p.seconds),
                p.peers_usable,
                p.requests
            );
        }
    }

    /// The bar ends at exactly what was fetched.
    fn finish(&mut self, s: &FetchSummary) {
        if let Some(pb) = self.bar.take() {
            pb.set_length(s.bytes_fetched.max(pb.position()));
            pb.set_position(s.bytes_fetched.max(pb.position()));
            pb.finish_and_clear();
        }
    }

    /// A line above the bar (or a log line).
    fn note(&mut self, line: &str) {
        match &self.bar {
            Some(pb) => pb.println(format!("waiting: {line}")),
            None => tracing::warn!("fetch waiting: {line}"),
        }
    }

    fn clear(&mut self) {
        if let Some(pb) = self.bar.take() {
            pb.finish_and_clear();
        }
    }
}
