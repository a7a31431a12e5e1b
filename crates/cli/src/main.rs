//! `statesync`: the command-line interface.

mod bench;
mod bench_blocks;
mod bench_sync;
mod demo;
mod demo_net;
mod ui;

use statesync_node::{chain_node, p2p, serve, session};
use statesync_synth as synth;

use clap::{Args, Parser, Subcommand};
use statesync_manifest::build::{BuildOptions, ChangeSet, Hint, Previous, Progress};
use statesync_manifest::diff::LocalSource;
use statesync_manifest::format::{DEFAULT_CHUNK_SIZE, Manifest};
use statesync_manifest::hash::Hash;
use statesync_manifest::stats::StatCache;
use statesync_store::{CreateOptions, Store};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, Error>;

#[derive(Parser)]
#[command(
    name = "statesync",
    version,
    about = "Fast, safe catch-up for replicated state machines"
)]
struct Cli {
    /// Machine-readable JSON output on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate or mutate deterministic synthetic state.
    #[command(subcommand)]
    GenState(GenCmd),
    /// Create or inspect manifests.
    #[command(subcommand)]
    Manifest(ManifestCmd),
    /// Check a directory against a manifest; exit code 1 if anything differs.
    Verify {
        dir: PathBuf,
        #[arg(long)]
        manifest: PathBuf,
        /// Trusted root the manifest must have.
        #[arg(long)]
        root: Option<String>,
    },
    /// Plan how to build a target manifest from local data: links, copies,
    /// zero chunks, fetches.
    Diff {
        /// The target manifest.
        #[arg(long)]
        target: PathBuf,
        /// A local directory, optionally with its manifest: DIR or DIR=MANIFEST
        /// (without one, the directory's manifest is computed).
        #[arg(long = "local")]
        locals: Vec<String>,
        /// Use every checkpoint of this store as a local source.
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Manage the checkpoint store.
    #[command(subcommand)]
    Checkpoint(CheckpointCmd),
    /// Benchmarks against the reference tools (minutes; not part of the tests).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// A local network of chain nodes and a late joiner catching up (see
    /// README); --walkthrough for the state layer alone.
    Demo(demo::DemoArgs),
    /// Serve the checkpoints of a store to peers.
    Serve {
        /// The checkpoint store to serve.
        #[arg(long)]
        store: PathBuf,
        #[command(flatten)]
        net: NetArgs,
        /// Per-peer serving rate limit, MiB/s.
        #[arg(long, default_value_t = 512)]
        peer_rate_mib: u64,
        /// Global serving rate limit, MiB/s.
        #[arg(long, default_value_t = 2048)]
        global_rate_mib: u64,
        /// Requests answered at once per peer; more get BUSY.
        #[arg(long, default_value_t = 16)]
        max_concurrent: usize,
        #[arg(long, hide = true)]
        fault: Option<p2p::Fault>,
    },
    /// Fetch the checkpoint with a trusted root from peers.
    Fetch {
        /// The trusted root hash (64 hex digits).
        #[arg(long)]
        root: String,
        /// Where to put the checkpoint (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// A local checkpoint to reuse data from: DIR (manifest computed) or
        /// DIR=MANIFEST.
        #[arg(long = "seed")]
        seeds: Vec<String>,
        /// Reuse data from every checkpoint of this store.
        #[arg(long)]
        seed_store: Option<PathBuf>,
        #[command(flatten)]
        net: NetArgs,
        #[arg(long, hide = true)]
        crash_after_bytes: Option<u64>,
        /// Consume this stale local checkpoint (DIR or DIR=MANIFEST) and update
        /// it in place: cost follows the changed bytes. DIR is moved into the
        /// data directory (same filesystem) and is gone afterwards.
        #[arg(long)]
        in_place: Option<String>,
        /// Rehash every chunk from disk before promotion (default: every
        /// chunk is verified before it is written, and a 1/64 sample of
        /// written and kept chunks is re-read from disk).
        #[arg(long)]
        full_verify: bool,
        #[arg(long, hide = true)]
        max_window_mib: Option<u64>,
        #[arg(long, hide = true)]
        commit_mib: Option<u64>,
    },
    /// Write a chain's genesis (and demo validator keys) into a directory.
    Genesis(GenesisArgs),
    /// Run a node of the reference chain: produce or follow blocks, serve
    /// blocks and checkpoints, catch up by replay or state sync.
    Node(NodeArgs),
    /// Print this node's peer id (creating its identity if needed).
    Id {
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(Args)]
struct NetArgs {
    /// Data directory: identity key, fetch staging and progress.
    #[arg(long)]
    data: PathBuf,
    /// Listen address(es), e.g. /ip4/127.0.0.1/tcp/0 or /ip4/127.0.0.1/udp/0/quic-v1.
    #[arg(long)]
    listen: Vec<String>,
    /// Peers to connect to: multiaddrs ending in /p2p/<peer id>.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Write the first listen address here (for scripts and tests).
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Keep at least this many peers (discovery runs below it).
    #[arg(long, default_value_t = 8)]
    min_peers: usize,
    #[arg(long, default_value_t = 64)]
    max_peers: usize,
    /// Write a JSON status (peers, connections, progress) here every 250 ms.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9100).
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// Security protocol proposed first when dialling over TCP (both are
    /// always accepted): tls = libp2p's TLS 1.3 with AES-128-GCM where the
    /// CPU has AES instructions (the fast path), noise = libp2p's noise
    /// (ChaCha20-Poly1305).
    #[arg(long, value_enum, default_value_t = SecurityArg::Tls)]
    security: SecurityArg,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum SecurityArg {
    Tls,
    Noise,
}

impl NetArgs {
    fn cfg(&self, json: bool, quiet: bool) -> Result<p2p::NodeCfg> {
        let parse = |s: &String| -> Result<statesync_net::libp2p::Multiaddr> {
            s.parse().map_err(|e| format!("address {s:?}: {e}").into())
        };
        Ok(p2p::NodeCfg {
            data: self.data.clone(),
            listen: self.listen.iter().map(parse).collect::<Result<_>>()?,
            peers: self.peers.iter().map(parse).collect::<Result<_>>()?,
            addr_file: self.addr_file.clone(),
            json,
            quiet,
            min_peers: self.min_peers,
            max_peers: self.max_peers,
            status_file: self.status_file.clone(),
            metrics: self.metrics,
            security: match self.security {
                SecurityArg::Tls => statesync_net::Security::Tls,
                SecurityArg::Noise => statesync_net::Security::Noise,
            },
        })
    }
}

#[derive(Args, Clone)]
pub struct GenesisArgs {
    /// Directory for genesis.json and validator-<i>.key files.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 4)]
    validators: u32,
    /// State size in MiB (files of --file-kib each).
    #[arg(long, default_value_t = 64)]
    state_mib: u64,
    #[arg(long, default_value_t = 1024)]
    file_kib: u32,
    #[arg(long, default_value_t = 10)]
    checkpoint_interval: u64,
    #[arg(long, default_value_t = 200)]
    block_ms: u64,
    #[arg(long, default_value_t = 200)]
    txs_per_block: u32,
    /// Percent of the keyspace receiving 99% of the writes.
    #[arg(long, default_value_t = 5)]
    hot_percent: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
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
        std::io::Write::write_all(&mut f, k.secret_hex().as_bytes())?;
    }
    Ok(path)
}

#[derive(Args, Clone, Default)]
pub struct NodeArgs {
    /// A JSON file with any of these options (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The chain's genesis.json.
    #[arg(long)]
    genesis: Option<PathBuf>,
    /// Data directory (identity, blocks, checkpoints, live state).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Listen address(es), e.g. /ip4/0.0.0.0/tcp/5001 (default: a free
    /// port on 127.0.0.1).
    #[arg(long)]
    listen: Vec<String>,
    /// Bootstrap peers: multiaddrs ending in /p2p/<peer id>.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// validator (produces blocks with its keys) or follower.
    #[arg(long)]
    role: Option<String>,
    /// Validator key files (a producing node needs a quorum of them).
    #[arg(long = "validator-key")]
    validator_keys: Vec<PathBuf>,
    /// Checkpoints kept by retention.
    #[arg(long)]
    keep: Option<usize>,
    /// Backfill history down to this height (0: no backfill).
    #[arg(long)]
    horizon: Option<u64>,
    /// Without local state, replay from genesis when that is the better plan.
    #[arg(long)]
    replay_from_genesis: bool,
    /// Exit after following the head for this many seconds (demo, tests).
    #[arg(long)]
    exit_after_following: Option<f64>,
    /// Stop producing at this height.
    #[arg(long)]
    stop_at: Option<u64>,
    /// Write a JSON-lines timeline here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the first listen address (with /p2p/ id) here.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Write a JSON status (phase, heights, peers, progress) here every 250 ms.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// Serving limits: MiB/s per peer and overall, requests at once per peer.
    #[arg(long)]
    peer_rate_mib: Option<u64>,
    #[arg(long)]
    global_rate_mib: Option<u64>,
    #[arg(long)]
    max_concurrent: Option<usize>,
    /// Move a running state sync to a newer checkpoint when replaying the
    /// blocks in between would take longer than this many seconds.
    #[arg(long)]
    switch_after_secs: Option<f64>,
    /// Blocks per range-sync request.
    #[arg(long)]
    batch_size: Option<u64>,
    /// Catch-up plan: decided by measured rates, or forced.
    #[arg(long, value_enum)]
    catch_up: Option<chain_node::CatchUp>,
    /// Security protocol proposed first when dialling over TCP (tls or
    /// noise; both are always accepted). Default tls.
    #[arg(long, value_enum)]
    security: Option<SecurityArg>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    genesis: Option<PathBuf>,
    data: Option<PathBuf>,
    #[serde(default)]
    listen: Vec<String>,
    #[serde(default)]
    peers: Vec<String>,
    role: Option<String>,
    #[serde(default)]
    validator_keys: Vec<PathBuf>,
    keep: Option<usize>,
    horizon: Option<u64>,
    replay_from_genesis: Option<bool>,
    peer_rate_mib: Option<u64>,
    global_rate_mib: Option<u64>,
    max_concurrent: Option<usize>,
    switch_after_secs: Option<f64>,
    batch_size: Option<u64>,
    security: Option<SecurityArg>,
}

pub fn run_node(a: NodeArgs, json: bool, quiet: bool) -> Result<ExitCode> {
    let file: NodeFile = match &a.config {
        Some(p) => serde_json::from_str(
            &std::fs::read_to_string(p).map_err(|e| format!("read {}: {e}", p.display()))?,
        )
        .map_err(|e| format!("config {}: {e}", p.display()))?,
        None => NodeFile::default(),
    };
    let genesis_path = a
        .genesis
        .or(file.genesis)
        .ok_or("--genesis (or \"genesis\" in --config) is required")?;
    let data = a
        .data
        .or(file.data)
        .ok_or("--data (or \"data\" in --config) is required")?;
    let genesis = statesync_chain::Genesis::load(&genesis_path)?;
    let role = a.role.or(file.role).unwrap_or_else(|| "follower".into());
    let produce = match role.as_str() {
        "validator" => true,
        "follower" => false,
        r => return Err(format!("--role {r:?}: validator or follower").into()),
    };
    let key_files = if a.validator_keys.is_empty() {
        file.validator_keys
    } else {
        a.validator_keys
    };
    let mut keys = Vec::new();
    for k in &key_files {
        keys.push(statesync_chain::ValidatorKey::load(k)?);
    }
    let mut setup = chain_node::ChainSetup::new(genesis);
    setup.keys = keys;
    setup.produce = produce;
    setup.keep = a.keep.or(file.keep).unwrap_or(3).max(1);
    setup.horizon = a.horizon.or(file.horizon).unwrap_or(1);
    setup.replay_from_genesis = a.replay_from_genesis || file.replay_from_genesis.unwrap_or(false);
    setup.exit_after_following = a
        .exit_after_following
        .map(std::time::Duration::from_secs_f64);
    setup.stop_at = a.stop_at;
    setup.report = a.report;
    setup.limits = p2p::limits(
        a.peer_rate_mib.or(file.peer_rate_mib).unwrap_or(512),
        a.global_rate_mib.or(file.global_rate_mib).unwrap_or(2048),
        a.max_concurrent.or(file.max_concurrent).unwrap_or(16),
    );
    if let Some(s) = a.switch_after_secs.or(file.switch_after_secs) {
        setup.switch_after_secs = s;
    }
    if let Some(c) = a.catch_up {
        setup.catch_up = c;
    }
    if let Some(b) = a.batch_size.or(file.batch_size) {
        setup.range.batch_size = b.clamp(
            1,
            u64::from(statesync_proto::blocks::MAX_BLOCKS_PER_REQUEST),
        );
    }
    let net = NetArgs {
        data,
        listen: if a.listen.is_empty() {
            file.listen
        } else {
            a.listen
        },
        peers: if a.peers.is_empty() {
            file.peers
        } else {
            a.peers
        },
        addr_file: a.addr_file,
        min_peers: 8,
        max_peers: 64,
        status_file: a.status_file,
        metrics: a.metrics,
        security: a.security.or(file.security).unwrap_or(SecurityArg::Tls),
    };
    let cfg = net.cfg(json, quiet)?;
    std::fs::create_dir_all(&cfg.data)?;
    runtime()?.block_on(p2p::run(cfg, None, None, None, Some(setup)))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

#[derive(Subcommand)]
enum GenCmd {
    /// Write a new synthetic state.
    New {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1000)]
        files: u64,
        /// Total size, e.g. 256MiB, 2GiB.
        #[arg(long, default_value = "256MiB", value_parser = synth::parse_size)]
        size: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Percent of 1 MiB blocks that are all zeros.
        #[arg(long, default_value_t = 5.0)]
        zero_pct: f64,
        /// Percent of files that duplicate another file.
        #[arg(long, default_value_t = 2.0)]
        dup_pct: f64,
    },
    /// Derive the next version of a state and write its exact change set.
    Mutate {
        #[arg(long)]
        from: PathBuf,
        /// New directory (unchanged files hard-linked); omit with --in-place.
        #[arg(long, required_unless_present = "in_place")]
        out: Option<PathBuf>,
        #[arg(long)]
        in_place: bool,
        /// Where to write the change set (JSON).
        #[arg(long)]
        changes: Option<PathBuf>,
        #[arg(long, default_value_t = 2)]
        seed: u64,
        #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE as u64)]
        chunk_size: u64,
        /// Percent of chunks rewritten.
        #[arg(long, default_value_t = 1.0)]
        changed_pct: f64,
        #[arg(long, default_value_t = 0.0)]
        appended_pct: f64,
        #[arg(long, default_value_t = 0.0)]
        deleted_pct: f64,
        #[arg(long, default_value_t = 0.0)]
        added_pct: f64,
    },
}

#[derive(Args)]
struct BuildArgs {
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE, value_parser = parse_chunk_size)]
    chunk_size: u32,
    /// Height of the checkpoint (seeds the sampled rehash).
    #[arg(long, default_value_t = 0)]
    height: u64,
    /// Fraction of reused chunks rehashed in incremental builds.
    #[arg(long, default_value_t = statesync_manifest::build::DEFAULT_SAMPLE_RATE)]
    sample_rate: f64,
}

fn parse_chunk_size(s: &str) -> std::result::Result<u32, String> {
    let v = synth::parse_size(s)?;
    let v = u32::try_from(v).map_err(|_| format!("chunk size {v} too large"))?;
    statesync_manifest::format::check_chunk_size(v).map_err(|e| e.to_string())?;
    Ok(v)
}

#[derive(Subcommand)]
enum ManifestCmd {
    /// Compute the manifest of a directory (in parallel; incremental with --prev).
    Create {
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        build: BuildArgs,
        /// Previous checkpoint's manifest: build incrementally from it.
        #[arg(long)]
        prev: Option<PathBuf>,
        /// Previous checkpoint's directory (hard links of its files are reused).
        #[arg(long, requires = "prev")]
        prev_dir: Option<PathBuf>,
        /// Exact change set since the previous checkpoint (JSON, as written by
        /// `gen-state mutate`); without it, changes are detected automatically.
        #[arg(long, requires = "prev")]
        changes: Option<PathBuf>,
    },
    /// Print a manifest's header and root (and optionally its tables).
    Show {
        file: PathBuf,
        #[arg(long)]
        root: Option<String>,
        #[arg(long)]
        files: bool,
        #[arg(long)]
        chunks: bool,
    },
}

#[derive(Subcommand)]
enum CheckpointCmd {
    /// Copy a directory into the store as the checkpoint at a height.
    Create {
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        height: u64,
        #[arg(long)]
        from: PathBuf,
        /// Exact change set since the latest checkpoint.
        #[arg(long)]
        changes: Option<PathBuf>,
        /// Ignore the previous checkpoint and hash everything.
        #[arg(long)]
        full: bool,
        #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE, value_parser = parse_chunk_size)]
        chunk_size: u32,
        #[arg(long, default_value_t = statesync_manifest::build::DEFAULT_SAMPLE_RATE)]
        sample_rate: f64,
    },
    /// List valid checkpoints (and report invalid directories).
    List {
        #[arg(long)]
        store: PathBuf,
    },
    /// Keep the last N checkpoints plus pinned ones; delete the rest.
    Prune {
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        keep: usize,
    },
    /// Pin a checkpoint so retention keeps it.
    Pin {
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        height: u64,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    Unpin {
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        height: u64,
        #[arg(long)]
        name: String,
    },
}

/// Keeps freed buffers in the heap instead of returning them to the kernel:
/// chunk responses are megabytes each, and glibc's default (mmap per large
/// block, trim on free) makes every response fault in and zero fresh pages,
/// which measured as a quarter of the fetcher's CPU time.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            let mut src = e.source();
            while let Some(s) = src {
                eprintln!("  caused by: {s}");
                src = s.source();
            }
            ExitCode::from(2)
        }
    }
}

fn read_manifest(p: &Path) -> Result<Manifest> {
    let bytes = std::fs::read(p).map_err(|e| format!("read manifest {}: {e}", p.display()))?;
    Manifest::decode(&bytes).map_err(|e| format!("manifest {}: {e}", p.display()).into())
}

/// `DIR` or `DIR=MANIFEST` -> the directory and, if given, the manifest path.
fn split_dir_manifest(s: &str) -> (PathBuf, Option<PathBuf>) {
    match s.split_once('=') {
        Some((d, m)) => (PathBuf::from(d), Some(PathBuf::from(m))),
        None => (PathBuf::from(s), None),
    }
}

/// A local checkpoint argument: its manifest is read from `=MANIFEST` or
/// computed from the directory with `chunk_size`.
fn dir_and_manifest(s: &str, chunk_size: u32) -> Result<(PathBuf, Manifest)> {
    let (dir, manifest) = split_dir_manifest(s);
    let m = match manifest {
        Some(p) => read_manifest(&p)?,
        None => {
            let opts = BuildOptions {
                chunk_size,
                ..Default::default()
            };
            statesync_manifest::build(&dir, &opts)?.manifest
        }
    };
    Ok((dir, m))
}

/// Checks a manifest against an optional trusted `--root`.
fn check_root(m: &Manifest, root: Option<&str>) -> Result<()> {
    if let Some(r) = root {
        let want = parse_root(r)?;
        if m.root() != want {
            return Err(format!("manifest root is {}, expected {want}", m.root()).into());
        }
    }
    Ok(())
}

fn parse_root(s: &str) -> Result<Hash> {
    Hash::from_hex(s).map_err(|e| format!("--root: {e}").into())
}

fn read_changes(p: &Path) -> Result<ChangeSet> {
    let bytes = std::fs::read(p).map_err(|e| format!("read change set {}: {e}", p.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("change set {}: {e}", p.display()).into())
}

fn write_file(p: &Path, data: &[u8]) -> Result<()> {
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, p).map_err(|e| format!("rename to {}: {e}", p.display()))?;
    Ok(())
}

fn stats_path(manifest: &Path) -> PathBuf {
    let mut s = manifest.as_os_str().to_owned();
    s.push(".stats");
    PathBuf::from(s)
}

fn run(cli: Cli) -> Result<ExitCode> {
    let json = cli.json;
    let quiet = cli.quiet;
    let bars = !cli.quiet && !json;
    match cli.cmd {
        Cmd::GenState(GenCmd::New {
            out,
            files,
            size,
            seed,
            zero_pct,
            dup_pct,
        }) => {
            let spec = synth::GenSpec {
                files,
                size,
                seed,
                zero_pct,
                dup_pct,
            };
            let t = Instant::now();
            let rep = synth::generate(&out, &spec)
                .map_err(|e| format!("generate into {}: {e}", out.display()))?;
            if json {
                ui::print_json(&rep);
            } else {
                println!(
                    "generated {} files, {} ({} zero blocks, {} duplicate files) in {} in {:.1}s",
                    rep.files,
                    ui::bytes(rep.bytes),
                    rep.zero_blocks,
                    rep.duplicate_files,
                    out.display(),
                    t.elapsed().as_secs_f64()
                );
            }
        }
        Cmd::GenState(GenCmd::Mutate {
            from,
            out,
            in_place,
            changes,
            seed,
            chunk_size,
            changed_pct,
            appended_pct,
            deleted_pct,
            added_pct,
        }) => {
            let spec = synth::MutateSpec {
                seed,
                chunk_size,
                changed_pct,
                appended_pct,
                deleted_pct,
                added_pct,
                in_place,
            };
            let out = out.unwrap_or_else(|| from.clone());
            let (rep, cs) = synth::mutate(&from, &out, &spec)?;
            if let Some(p) = &changes {
                write_file(p, &serde_json::to_vec_pretty(&cs)?)?;
            }
            if json {
                ui::print_json(&rep);
            } else {
                println!(
                    "mutated: {} chunks changed, {} files appended, {} deleted, {} added, {} unchanged files linked; {} written",
                    rep.chunks_changed,
                    rep.files_appended,
                    rep.files_deleted,
                    rep.files_added,
                    rep.files_linked,
                    ui::bytes(rep.bytes_written)
                );
            }
        }
        Cmd::Manifest(ManifestCmd::Create {
            dir,
            out,
            build,
            prev,
            prev_dir,
            changes,
        }) => {
            let progress = Arc::new(Progress::default());
            let opts = BuildOptions {
                chunk_size: build.chunk_size,
                sample_rate: build.sample_rate,
                height: build.height,
                progress: Some(progress.clone()),
            };
            let t = Instant::now();
            let bar = ui::Bar::start("hashing", progress, bars);
            let built = match &prev {
                Some(pm) => {
                    let pmanifest = read_manifest(pm)?;
                    let pstats = std::fs::read(stats_path(pm))
                        .ok()
                        .and_then(|b| StatCache::decode(&b).ok());
                    let p = Previous {
                        manifest: &pmanifest,
                        dir: prev_dir.as_deref(),
                        stats: pstats.as_ref(),
                    };
                    let cs = changes.as_deref().map(read_changes).transpose()?;
                    let hint = match &cs {
                        Some(c) => Hint::Exact(c),
                        None => Hint::Auto,
                    };
                    statesync_manifest::build_incremental(&dir, &opts, &p, hint)?
                }
                None => statesync_manifest::build(&dir, &opts)?,
            };
            drop(bar);
            let secs = t.elapsed().as_secs_f64();
            write_file(&out, &built.manifest.encode())?;
            write_file(&stats_path(&out), &built.stats.encode())?;
            let m = &built.manifest;
            if json {
                ui::print_json(&serde_json::json!({
                    "root": m.root(),
                    "header": m.header(),
                    "report": built.report,
                    "seconds": secs,
                    "manifest": out,
                }));
            } else {
                let r = &built.report;
                println!("root {}", m.root());
                println!(
                    "{} files, {} chunks of {}, {} total",
                    r.files,
                    r.chunks,
                    ui::bytes(u64::from(m.chunk_size())),
                    ui::bytes(r.bytes)
                );
                println!(
                    "hashed {} ({} chunks) at {}; reused {} chunks ({} files), {} sampled; {:.2}s",
                    ui::bytes(r.bytes_hashed),
                    r.chunks_hashed,
                    ui::rate(r.bytes_hashed, secs),
                    r.chunks_reused,
                    r.files_reused,
                    r.chunks_sampled,
                    secs
                );
                println!("wrote {}", out.display());
            }
        }
        Cmd::Manifest(ManifestCmd::Show {
            file,
            root,
            files,
            chunks,
        }) => {
            let m = read_manifest(&file)?;
            check_root(&m, root.as_deref())?;
            let zero = m.chunks().iter().filter(|c| c.is_zero()).count();
            if json {
                ui::print_json(&serde_json::json!({
                    "root": m.root(),
                    "header": m.header(),
                    "bytes": m.total_size(),
                    "zero_chunks": zero,
                    "encoded_len": m.encode().len(),
                    "files": if files { Some(m.files()) } else { None },
                    "chunks": if chunks { Some(m.chunks()) } else { None },
                }));
            } else {
                let h = m.header();
                println!("root        {}", m.root());
                println!("version     {}", h.version);
                println!("chunk size  {}", ui::bytes(u64::from(h.chunk_size)));
                println!("files       {}", h.file_count);
                println!("chunks      {} ({zero} all-zero)", h.chunk_count);
                println!(
                    "bytes       {} ({})",
                    m.total_size(),
                    ui::bytes(m.total_size())
                );
                println!(
                    "pieces      {} file, {} chunk",
                    h.file_piece_count(),
                    h.chunk_piece_count()
                );
                if files {
                    for f in m.files() {
                        println!(
                            "{} {:>12} {} {}",
                            if f.executable { "x" } else { "-" },
                            f.size,
                            f.hash,
                            f.path
                        );
                    }
                }
                if chunks {
                    for (i, c) in m.chunks().iter().enumerate() {
                        println!(
                            "{i:>8} file {:>6} @{:>12} +{:>8} {}",
                            c.file, c.offset, c.len, c.hash
                        );
                    }
                }
            }
        }
        Cmd::Verify {
            dir,
            manifest,
            root,
        } => {
            let m = read_manifest(&manifest)?;
            check_root(&m, root.as_deref())?;
            let progress = Arc::new(Progress::default());
            let t = Instant::now();
            let bar = ui::Bar::start("verifying", progress.clone(), bars);
            let rep = statesync_manifest::verify_dir(&dir, &m, Some(&progress))?;
            drop(bar);
            if json {
                ui::print_json(&rep);
            } else {
                for p in &rep.missing {
                    println!("missing   {p}");
                }
                for p in &rep.extra {
                    println!("extra     {p}");
                }
                for s in &rep.size_mismatch {
                    println!(
                        "size      {} (expected {}, found {})",
                        s.path, s.expected, s.actual
                    );
                }
                for p in &rep.mode_mismatch {
                    println!("mode      {p} (executable bit differs)");
                }
                for c in &rep.corrupt {
                    println!(
                        "corrupt   {} chunk {} at offset {} (+{})",
                        c.path, c.chunk, c.offset, c.len
                    );
                }
                println!(
                    "{}: {} files, {} checked in {:.2}s",
                    if rep.ok { "OK" } else { "MISMATCH" },
                    rep.files_checked,
                    ui::bytes(rep.bytes_checked),
                    t.elapsed().as_secs_f64()
                );
            }
            if !rep.ok {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Diff {
            target,
            locals,
            store,
        } => {
            let tm = read_manifest(&target)?;
            let mut sources: Vec<(PathBuf, Manifest)> = Vec::new();
            for l in &locals {
                let (dir, man) = dir_and_manifest(l, tm.chunk_size())?;
                sources.push((dir, man));
            }
            if let Some(s) = &store {
                let (st, _) = Store::open(s)?;
                for c in st.list()? {
                    sources.push((st.state_dir(c.height), st.load_manifest(c.height)?));
                }
            }
            let srcs: Vec<LocalSource<'_>> = sources
                .iter()
                .map(|(d, m)| LocalSource::complete(d, m))
                .collect();
            let plan = statesync_manifest::plan(&tm, &srcs);
            let t = plan.totals;
            if json {
                ui::print_json(&serde_json::json!({
                    "target_root": tm.root(),
                    "sources": sources.iter().map(|(d, m)| serde_json::json!({"dir": d, "root": m.root()})).collect::<Vec<_>>(),
                    "totals": t,
                    "links": plan.links,
                }));
            } else {
                println!(
                    "target {} ({} files, {})",
                    tm.root(),
                    t.files,
                    ui::bytes(t.bytes)
                );
                println!(
                    "  link   {:>8} files   {:>12}",
                    t.files_linked,
                    ui::bytes(t.bytes_linked)
                );
                println!(
                    "  copy   {:>8} chunks  {:>12}",
                    t.chunks_copy,
                    ui::bytes(t.bytes_copy)
                );
                println!(
                    "  zero   {:>8} chunks  {:>12}",
                    t.chunks_zero,
                    ui::bytes(t.bytes_zero)
                );
                println!(
                    "  fetch  {:>8} chunks  {:>12}",
                    t.chunks_fetch,
                    ui::bytes(t.bytes_fetch)
                );
            }
        }
        Cmd::Checkpoint(c) => return checkpoint(c, json, bars),
        Cmd::Bench(b) => return bench::run(b, json),
        Cmd::Demo(a) => return demo::run(a, json),
        Cmd::Genesis(a) => {
            let p = write_genesis(&a)?;
            println!("{}", p.display());
        }
        Cmd::Node(a) => return run_node(a, json, quiet),
        Cmd::Id { data } => {
            let kp = statesync_net::load_or_create_identity(&data.join("identity.key"))?;
            println!("{}", kp.public().to_peer_id());
        }
        Cmd::Serve {
            store,
            net,
            peer_rate_mib,
            global_rate_mib,
            max_concurrent,
            fault,
        } => {
            let (st, _) = Store::open(&store)?;
            let server = serve::Server::new(
                Some(st),
                p2p::limits(peer_rate_mib, global_rate_mib, max_concurrent),
            );
            let cfg = net.cfg(json, quiet)?;
            return runtime()?.block_on(p2p::run(cfg, Some(server), None, fault, None));
        }
        Cmd::Fetch {
            root,
            out,
            seeds,
            seed_store,
            net,
            crash_after_bytes,
            max_window_mib,
            commit_mib,
            in_place,
            full_verify,
        } => {
            let root = parse_root(&root)?;
            if out.exists() {
                // The same command after a finished sync (or a crash right
                // after promotion): nothing to do.
                // Its manifest must verify against the root, every file be
                // there at its size, and no staged copy of the root be left
                // (a promotion that did not finish).
                let staging = session::staging_dir(&net.data, &root);
                let synced = std::fs::read(session::manifest_path_for(&out))
                    .ok()
                    .and_then(|b| Manifest::decode_verified(&b, &root).ok())
                    .filter(|m| {
                        m.files().iter().all(|f| {
                            std::fs::symlink_metadata(statesync_manifest::path::join(&out, &f.path))
                                .is_ok_and(|md| md.is_file() && md.len() == f.size)
                        })
                    })
                    .filter(|_| !staging.join("state").exists());
                let Some(m) = synced else {
                    return Err(format!(
                        "{} already exists; fetch writes a new directory",
                        out.display()
                    )
                    .into());
                };
                let _ = std::fs::remove_dir_all(&staging);
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "root": root.to_hex(),
                            "out": out,
                            "files": m.files().len(),
                            "bytes": m.total_size(),
                            "already_synced": true,
                        })
                    );
                } else if !quiet {
                    eprintln!("{} already holds {root}; nothing to fetch", out.display());
                }
                return Ok(ExitCode::SUCCESS);
            }
            let chunk_size = DEFAULT_CHUNK_SIZE;
            let mut seed_list = Vec::new();
            for s in &seeds {
                seed_list.push(dir_and_manifest(s, chunk_size)?);
            }
            let in_place = match in_place.as_deref().map(|s| (s, split_dir_manifest(s).0)) {
                // Already consumed by an interrupted run: the staging area has it.
                Some((_, dir)) if !dir.exists() => {
                    let saved = session::staging_dir(&net.data, &root).join("in-place-manifest");
                    Some((dir, read_manifest(&saved)?))
                }
                Some((s, _)) => {
                    let (dir, m) = dir_and_manifest(s, chunk_size)?;
                    // A manifest given beside the directory vouches only for
                    // files not modified since it was written.
                    if let (_, Some(mp)) = split_dir_manifest(s) {
                        let written = std::fs::metadata(&mp)?.modified()?;
                        let dropped = session::drop_changed_since(&dir, &m, written)?;
                        if !dropped.is_empty() && !quiet {
                            eprintln!(
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
            if let Some(sp) = &seed_store {
                let (st, _) = Store::open(sp)?;
                for c in st.list()? {
                    seed_list.push((st.state_dir(c.height), st.load_manifest(c.height)?));
                }
            }
            let job = p2p::FetchJob {
                root,
                out,
                seeds: seed_list,
                crash_after_bytes,
                max_window: max_window_mib.map(|m| m << 20),
                commit_bytes: commit_mib.map(|m| m << 20),
                in_place,
                full_verify,
            };
            let cfg = net.cfg(json, quiet)?;
            return runtime()?.block_on(p2p::run(cfg, None, Some(job), None, None));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn checkpoint(c: CheckpointCmd, json: bool, bars: bool) -> Result<ExitCode> {
    // Only `checkpoint create` makes a new store; the other commands need
    // one that exists.
    let create = matches!(c, CheckpointCmd::Create { .. });
    let open = |p: &Path| -> Result<Store> {
        let (s, rep) = if create {
            Store::open(p)?
        } else {
            Store::open_existing(p)?
        };
        for d in &rep.removed_staging {
            eprintln!("removed stale staging directory {}", d.display());
        }
        Ok(s)
    };
    match c {
        CheckpointCmd::Create {
            store,
            height,
            from,
            changes,
            full,
            chunk_size,
            sample_rate,
        } => {
            if !from.is_dir() {
                return Err(format!("--from {}: not a directory", from.display()).into());
            }
            let st = open(&store)?;
            let progress = Arc::new(Progress::default());
            let opts = CreateOptions {
                chunk_size,
                sample_rate,
                incremental: !full,
                changes: changes.as_deref().map(read_changes).transpose()?,
                progress: Some(progress.clone()),
            };
            let t = Instant::now();
            let bar = ui::Bar::start("hashing", progress, bars);
            let created = st.create_from_dir(height, &from, &opts)?;
            drop(bar);
            let secs = t.elapsed().as_secs_f64();
            if json {
                ui::print_json(&serde_json::json!({
                    "checkpoint": created.info,
                    "report": created.report,
                    "files_linked": created.files_linked,
                    "incremental": created.incremental,
                    "seconds": secs,
                }));
            } else {
                println!(
                    "checkpoint {} root {}: {} files, {}; {} files linked from the previous checkpoint, {} hashed; {:.2}s",
                    created.info.height,
                    created.info.root,
                    created.info.files,
                    ui::bytes(created.info.bytes),
                    created.files_linked,
                    ui::bytes(created.report.bytes_hashed),
                    secs
                );
            }
        }
        CheckpointCmd::List { store } => {
            let st = open(&store)?;
            let (valid, invalid) = st.scan()?;
            if json {
                ui::print_json(&serde_json::json!({"checkpoints": valid, "invalid": invalid}));
            } else {
                for c in &valid {
                    println!(
                        "{:>10}  {}  {:>6} files  {:>10}{}",
                        c.height,
                        c.root,
                        c.files,
                        ui::bytes(c.bytes),
                        if c.pins.is_empty() {
                            String::new()
                        } else {
                            format!("  pinned: {}", c.pins.join(","))
                        }
                    );
                }
                for i in &invalid {
                    println!("INVALID {}: {}", i.path.display(), i.reason);
                }
                if valid.is_empty() && invalid.is_empty() {
                    println!("no checkpoints");
                }
            }
        }
        CheckpointCmd::Prune { store, keep } => {
            let st = open(&store)?;
            let rep = st.prune(keep)?;
            if json {
                ui::print_json(&rep);
            } else {
                println!(
                    "removed {:?}, kept {:?}, kept (pinned) {:?}, removed {} invalid",
                    rep.removed,
                    rep.kept,
                    rep.kept_pinned,
                    rep.removed_invalid.len()
                );
            }
        }
        CheckpointCmd::Pin {
            store,
            height,
            name,
            reason,
        } => {
            open(&store)?.pin(height, &name, &reason)?;
            if json {
                ui::print_json(&serde_json::json!({"pinned": height, "name": name}));
            } else {
                println!("pinned {height} as {name}");
            }
        }
        CheckpointCmd::Unpin {
            store,
            height,
            name,
        } => {
            let removed = open(&store)?.unpin(height, &name)?;
            if json {
                ui::print_json(
                    &serde_json::json!({"unpinned": removed, "height": height, "name": name}),
                );
            } else {
                println!("{}", if removed { "unpinned" } else { "no such pin" });
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
