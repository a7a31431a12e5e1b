//! `statesync genesis` and `statesync node`: a node of the reference chain.

use crate::config::{self, NetOpts, ServeOpts};
use crate::netrun::{self, Side};
use clap::Args;
use serde::Deserialize;
use statesync_node::{CatchUp, ChainEvent, ChainSetup, Event, NodeBuilder};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Flags of `genesis`.
#[derive(Args, Clone)]
pub struct GenesisArgs {
    /// Directory for genesis.json and validator-<i>.key files.
    #[arg(long)]
    pub out: PathBuf,
    /// Validators (their keys are written beside genesis.json).
    #[arg(long, default_value_t = 4)]
    pub validators: u32,
    /// State size, MiB (files of --file-kib each).
    #[arg(long, default_value_t = 64)]
    pub state_mib: u64,
    /// Size of each state file, KiB.
    #[arg(long, default_value_t = 1024)]
    pub file_kib: u32,
    /// Blocks between checkpoints.
    #[arg(long, default_value_t = 10)]
    pub checkpoint_interval: u64,
    /// Block time, milliseconds.
    #[arg(long, default_value_t = 200)]
    pub block_ms: u64,
    /// Transactions per block.
    #[arg(long, default_value_t = 200)]
    pub txs_per_block: u32,
    /// Percent of the keyspace receiving 99% of the writes.
    #[arg(long, default_value_t = 5)]
    pub hot_percent: u32,
    /// Seed of the demo keys and the workload.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Opaque payload per block, KiB (at most 8192): blocks of several MB,
    /// spread by IDA gossip among validators.
    #[arg(long, default_value_t = 0)]
    pub payload_kib: u32,
}

/// Writes a genesis and its demo keys; returns the genesis path.
pub fn write_genesis(a: &GenesisArgs) -> Result<PathBuf> {
    let (mut g, keys) = statesync_chain::Genesis::demo(a.validators, a.seed);
    g.file_size = a.file_kib * 1024;
    g.state_files = ((a.state_mib << 20) / u64::from(g.file_size)).max(1) as u32;
    g.checkpoint_interval = a.checkpoint_interval;
    g.block_ms = a.block_ms;
    g.txs_per_block = a.txs_per_block;
    g.hot_percent = a.hot_percent;
    g.payload_bytes = a.payload_kib.saturating_mul(1024);
    g.spec()?;
    std::fs::create_dir_all(&a.out)?;
    let path = a.out.join("genesis.json");
    std::fs::write(&path, serde_json::to_string_pretty(&g)?)?;
    for (i, k) in keys.iter().enumerate() {
        use std::os::unix::fs::OpenOptionsExt;
        let p = a.out.join(format!("validator-{i}.key"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&p)?;
        f.write_all(k.secret_hex().as_bytes())?;
    }
    Ok(path)
}

/// `validator` or `follower`.
#[derive(Clone, Copy, Debug, clap::ValueEnum, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A validator: with one key, a process of the committee (validator 0
    /// proposes, the others check, execute and vote); with a quorum of
    /// keys, a leader that signs alone.
    Validator,
    /// Follows the chain.
    Follower,
}

/// `auto`, `replay` or `state-sync`.
#[derive(Clone, Copy, Debug, clap::ValueEnum, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CatchUpArg {
    /// Decide by measured replay and fetch rates.
    Auto,
    /// Always replay blocks (needs peers with the history).
    Replay,
    /// Always state sync to the latest checkpoint when behind.
    StateSync,
}

/// Flags of `node` (and keys of its `--config` TOML file).
#[derive(Args, Deserialize, Default, Clone)]
#[serde(default, rename_all = "kebab-case")]
pub struct NodeArgs {
    /// A TOML file with any of these options, keys as the flags without
    /// `--` (`peers` for `--peer`); flags override it.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// The chain's genesis.json.
    #[arg(long)]
    genesis: Option<PathBuf>,
    /// validator (one key: a member of the committee; a quorum of keys: a
    /// leader signing alone) or follower [default: follower].
    #[arg(long, value_enum)]
    role: Option<Role>,
    /// Validator key files: one (this validator's), or a quorum of them
    /// for a leader that signs alone.
    #[arg(long = "validator-key")]
    validator_keys: Vec<PathBuf>,
    /// Checkpoints kept by retention [default: 3].
    #[arg(long)]
    keep: Option<usize>,
    /// Backfill history down to this height; 0: no backfill [default: 1].
    #[arg(long)]
    horizon: Option<u64>,
    /// Blocks of history kept below the head (at least back to the oldest
    /// kept checkpoint); older blocks are deleted and not backfilled; 0
    /// keeps everything (an archive) [default: 50000].
    #[arg(long)]
    keep_blocks: Option<u64>,
    /// Without local state, replay from genesis when that is the better
    /// plan (default: state sync).
    #[arg(long)]
    replay_from_genesis: bool,
    /// Exit (code 0) after following the head for this many seconds, with
    /// backfill complete (demo, tests).
    #[arg(long)]
    exit_after_following: Option<f64>,
    /// A validator stops producing at this height.
    #[arg(long)]
    stop_at: Option<u64>,
    /// Exit with code 2 if the node does not follow the head within this
    /// many seconds, saying why (phase, decision, unreachable peers)
    /// [default: wait for ever].
    #[arg(long)]
    timeout: Option<f64>,
    /// Write a JSON-lines timeline of this node here (events, samples four
    /// times a second, a summary at the end).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Move a running state sync to a newer checkpoint when replaying the
    /// blocks in between would take longer than this many seconds
    /// [default: 2].
    #[arg(long)]
    switch_after_secs: Option<f64>,
    /// Blocks per range-sync request [default: 64].
    #[arg(long)]
    batch_size: Option<u64>,
    /// Catch-up plan: decided by measured rates, or forced [default: auto].
    #[arg(long, value_enum)]
    catch_up: Option<CatchUpArg>,
    #[command(flatten)]
    #[serde(flatten)]
    net: NetOpts,
    #[command(flatten)]
    #[serde(flatten)]
    serve: ServeOpts,
    /// Fault injection (tests): as a committee member, relay forged shards.
    #[cfg(feature = "fault-injection")]
    #[arg(long)]
    #[serde(skip)]
    forge_gossip: bool,
}

impl NodeArgs {
    /// Flags over file.
    fn over(self, f: NodeArgs) -> NodeArgs {
        NodeArgs {
            config: self.config,
            genesis: self.genesis.or(f.genesis),
            role: self.role.or(f.role),
            validator_keys: if self.validator_keys.is_empty() {
                f.validator_keys
            } else {
                self.validator_keys
            },
            keep: self.keep.or(f.keep),
            horizon: self.horizon.or(f.horizon),
            keep_blocks: self.keep_blocks.or(f.keep_blocks),
            replay_from_genesis: self.replay_from_genesis || f.replay_from_genesis,
            exit_after_following: self.exit_after_following.or(f.exit_after_following),
            stop_at: self.stop_at.or(f.stop_at),
            timeout: self.timeout.or(f.timeout),
            report: self.report.or(f.report),
            switch_after_secs: self.switch_after_secs.or(f.switch_after_secs),
            batch_size: self.batch_size.or(f.batch_size),
            catch_up: self.catch_up.or(f.catch_up),
            net: self.net.over(f.net),
            serve: self.serve.over(f.serve),
            #[cfg(feature = "fault-injection")]
            forge_gossip: self.forge_gossip,
        }
    }

    /// The chain setup, defaults from `ChainSetup::new`.
    fn setup(&self) -> Result<ChainSetup> {
        let genesis_path = self
            .genesis
            .clone()
            .ok_or("--genesis (or `genesis` in --config) is required")?;
        let genesis = statesync_chain::Genesis::load(&genesis_path)?;
        let mut s = ChainSetup::new(genesis);
        s.produce = self.role == Some(Role::Validator);
        for k in &self.validator_keys {
            s.keys.push(statesync_chain::ValidatorKey::load(k)?);
        }
        if let Some(k) = self.keep {
            s.keep = k.max(1);
        }
        if let Some(h) = self.horizon {
            s.horizon = h;
        }
        match self.keep_blocks {
            Some(0) => s.keep_blocks = None,
            Some(n) => s.keep_blocks = Some(n),
            None => {}
        }
        s.replay_from_genesis = self.replay_from_genesis;
        s.stop_at = self.stop_at;
        if let Some(x) = self.switch_after_secs {
            s.switch_after_secs = x;
        }
        if let Some(b) = self.batch_size {
            s.range.batch_size = b.clamp(
                1,
                u64::from(statesync_proto::blocks::MAX_BLOCKS_PER_REQUEST),
            );
        }
        s.catch_up = match self.catch_up {
            None | Some(CatchUpArg::Auto) => CatchUp::Auto,
            Some(CatchUpArg::Replay) => CatchUp::Replay,
            Some(CatchUpArg::StateSync) => CatchUp::StateSync,
        };
        #[cfg(feature = "fault-injection")]
        {
            s.forge_gossip = self.forge_gossip;
        }
        Ok(s)
    }
}

/// The `--report` timeline: JSON lines, as the demo's report reads them.
struct Report(Option<std::fs::File>);

impl Report {
    fn line(&mut self, v: &serde_json::Value) {
        if let Some(f) = self.0.as_mut() {
            let _ = writeln!(f, "{v}");
        }
    }

    fn on_event(&mut self, ev: &ChainEvent) {
        match ev {
            ChainEvent::Log { t, message } => {
                self.line(&serde_json::json!({"t": t, "event": message}));
            }
            ChainEvent::Sample(s) => {
                if let Ok(v) = serde_json::to_value(s) {
                    self.line(&v);
                }
            }
            ChainEvent::Summary(s) => {
                if let Ok(v) = serde_json::to_value(s) {
                    self.line(&serde_json::json!({ "summary": v }));
                }
                if let Some(f) = self.0.as_mut() {
                    let _ = f.flush();
                }
            }
            ChainEvent::CatchUp { t, note } => {
                if let statesync_engine::catchup::Note::Phase { from, to, head } = note {
                    self.line(&serde_json::json!({
                        "t": t,
                        "phase_change": {"from": from, "to": to, "head": head},
                    }));
                }
            }
        }
    }
}

/// Runs `node` until SIGTERM, Ctrl-C, a fatal error, or the exit
/// condition of `--exit-after-following`.
pub fn run(a: NodeArgs, json: bool, bars: bool) -> Result<ExitCode> {
    let file: NodeArgs = match &a.config {
        Some(p) => config::load(p)?,
        None => NodeArgs::default(),
    };
    let a = a.over(file);
    let setup = a.setup()?;
    let data = a.net.data_dir()?;
    let cfg = a.net.node_config(&a.serve)?;
    let mut report = Report(match &a.report {
        Some(p) => {
            Some(std::fs::File::create(p).map_err(|e| format!("create {}: {e}", p.display()))?)
        }
        None => None,
    });
    let exit_after = a.exit_after_following.map(Duration::from_secs_f64);
    let timeout = a.timeout;
    netrun::runtime()?.block_on(async move {
        let (node, mut events) = NodeBuilder::new(&data)
            .config(cfg)
            .chain(setup)
            .start()
            .await?;
        let mut side = Side::start(&node, &a.net).await?;
        let stop = netrun::stop_signal();
        tokio::pin!(stop);
        let mut check = tokio::time::interval(Duration::from_millis(250));
        let mut code = None;
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(Duration::from_secs_f64(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut dial_errors: std::collections::BTreeMap<String, String> = Default::default();
        let mut live = netrun::Live::new(bars);
        let mut live_tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = live_tick.tick(), if code.is_none() => {
                    if let Ok(st) = node.status().await {
                        live.update(&st);
                    }
                }
                _ = &mut deadline, if code.is_none() => {
                    let st = node.status().await.ok().and_then(|s| s.chain);
                    if st.as_ref().is_some_and(|c| c.following_secs.is_some()) {
                        continue;
                    }
                    let why = match &st {
                        Some(c) => format!(
                            "phase {} at height {} (best head known {}, {} peers reporting){}",
                            c.phase,
                            c.head,
                            c.best_head,
                            c.peers,
                            c.decision
                                .as_ref()
                                .map(|d| format!("; last decision: {}", d.reason))
                                .unwrap_or_default()
                        ),
                        None => "not started".into(),
                    };
                    let peers = if dial_errors.is_empty() {
                        String::new()
                    } else {
                        let v: Vec<String> = dial_errors.iter().map(|(p, e)| format!("{p}: {e}")).collect();
                        format!("; unreachable: {}", v.join("; "))
                    };
                    node.shutdown().await;
                    return Err(format!(
                        "not following the head after {:.0} s (--timeout): {why}{peers}",
                        timeout.unwrap_or(0.0)
                    )
                    .into());
                }
                c = &mut stop, if code.is_none() => {
                    live.clear();
                    code = Some(c);
                    node.shutdown().await;
                }
                _ = check.tick(), if exit_after.is_some() && code.is_none() => {
                    let Ok(st) = node.status().await else { continue };
                    let Some(c) = st.chain else { continue };
                    if let Some(d) = exit_after
                        && c.following_secs.is_some_and(|s| s >= d.as_secs_f64())
                        && c.backfill_done
                    {
                        let msg = format!("following the head at {} for {:.0?}: done", c.head, d);
                        tracing::info!("{msg}");
                        report.line(&serde_json::json!({"t": st_t(&c), "event": msg}));
                        code = Some(ExitCode::SUCCESS);
                        node.shutdown().await;
                    }
                }
                ev = events.recv() => {
                    let Some(ev) = ev else {
                        return Ok(code.unwrap_or(ExitCode::SUCCESS));
                    };
                    side.on_event(&ev)?;
                    match &ev {
                        Event::DialFailed { peer: Some(p), error }
                            if dial_errors.insert(p.to_string(), error.clone()).is_none() =>
                        {
                            tracing::warn!("cannot reach peer {p}: {error}");
                        }
                        Event::PeerConnected { peer } => {
                            dial_errors.remove(&peer.to_string());
                        }
                        _ => {}
                    }
                    if let Event::Chain(c) = &ev {
                        report.on_event(c);
                    }
                    if json && !matches!(ev, Event::Chain(ChainEvent::Sample(_)) | Event::Fetch { .. }) {
                        crate::output::print_json_line(&ev);
                    }
                    if let Event::Stopped { error } = ev {
                        return match error {
                            Some(e) => Err(e.into()),
                            None => Ok(code.unwrap_or(ExitCode::SUCCESS)),
                        };
                    }
                }
            }
        }
    })
}

/// The timeline's clock for a line the binary adds (the node's summary
/// follows with its own).
fn st_t(c: &statesync_node::ChainStatus) -> f64 {
    c.uptime_secs
}
