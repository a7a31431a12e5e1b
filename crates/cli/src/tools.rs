//! The developer and operator tools that need no network: synthetic
//! state, manifests, verification, local reuse plans, the checkpoint store.

use crate::outln;
use crate::output::{self as ui, print_json};
use clap::{Args, Subcommand};
use statesync_manifest::build::{BuildOptions, ChangeSet, Hint, Previous, Progress};
use statesync_manifest::diff::LocalSource;
use statesync_manifest::format::{DEFAULT_CHUNK_SIZE, Manifest};
use statesync_manifest::hash::Hash;
use statesync_manifest::stats::StatCache;
use statesync_store::{CreateOptions, Store};
use statesync_synth as synth;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, Error>;

/// The tool commands.
#[derive(Subcommand)]
pub enum ToolCmd {
    /// Generate or mutate deterministic synthetic state.
    #[command(subcommand)]
    GenState(GenCmd),
    /// Create or inspect manifests.
    #[command(subcommand)]
    Manifest(ManifestCmd),
    /// Check a directory against a manifest; exit code 1 if anything differs.
    Verify {
        /// The directory to check.
        dir: PathBuf,
        /// The manifest to check it against.
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
}

#[derive(Subcommand)]
pub enum GenCmd {
    /// Write a new synthetic state.
    New {
        /// Directory to create (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Number of files.
        #[arg(long, default_value_t = 1000)]
        files: u64,
        /// Total size, e.g. 256MiB, 2GiB.
        #[arg(long, default_value = "256MiB", value_parser = synth::parse_size)]
        size: u64,
        /// Seed: the same seed gives the same bytes.
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
        /// The state to derive from (must exist).
        #[arg(long)]
        from: PathBuf,
        /// New directory (unchanged files hard-linked); omit with --in-place.
        #[arg(long, required_unless_present = "in_place")]
        out: Option<PathBuf>,
        /// Modify --from itself (a file shared by hard links is copied first, never written through).
        #[arg(long)]
        in_place: bool,
        /// Where to write the change set (JSON).
        #[arg(long)]
        changes: Option<PathBuf>,
        /// Seed of the changes.
        #[arg(long, default_value_t = 2)]
        seed: u64,
        /// Chunk size the percentages refer to, bytes.
        #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE as u64)]
        chunk_size: u64,
        /// Percent of chunks rewritten.
        #[arg(long, default_value_t = 1.0)]
        changed_pct: f64,
        /// Percent of files that get data appended.
        #[arg(long, default_value_t = 0.0)]
        appended_pct: f64,
        /// Percent of files deleted.
        #[arg(long, default_value_t = 0.0)]
        deleted_pct: f64,
        /// New files, as a percent of the file count.
        #[arg(long, default_value_t = 0.0)]
        added_pct: f64,
    },
}

#[derive(Args)]
pub struct BuildArgs {
    /// Chunk size, bytes (a power of two, 1 KiB to 16 MiB; e.g. 1MiB).
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
pub enum ManifestCmd {
    /// Compute the manifest of a directory (in parallel; incremental with --prev).
    Create {
        /// The directory to describe.
        dir: PathBuf,
        /// Where to write the manifest (its stat cache goes beside it as OUT.stats).
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
        /// The manifest file.
        file: PathBuf,
        /// Trusted root (64 hex digits) the manifest must have.
        #[arg(long)]
        root: Option<String>,
        /// List every file (mode, size, hash, path).
        #[arg(long)]
        files: bool,
        /// List every chunk (file, offset, length, hash).
        #[arg(long)]
        chunks: bool,
    },
}

#[derive(Subcommand)]
pub enum CheckpointCmd {
    /// Copy a directory into the store as the checkpoint at a height.
    Create {
        /// The store (created if missing).
        #[arg(long)]
        store: PathBuf,
        /// Height of the new checkpoint (above the latest).
        #[arg(long)]
        height: u64,
        /// The directory to copy into the store.
        #[arg(long)]
        from: PathBuf,
        /// Exact change set since the latest checkpoint.
        #[arg(long)]
        changes: Option<PathBuf>,
        /// Ignore the previous checkpoint and hash everything.
        #[arg(long)]
        full: bool,
        /// Chunk size, bytes (a power of two, 1 KiB to 16 MiB).
        #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE, value_parser = parse_chunk_size)]
        chunk_size: u32,
        /// Fraction of reused chunks rehashed anyway in an incremental build.
        #[arg(long, default_value_t = statesync_manifest::build::DEFAULT_SAMPLE_RATE)]
        sample_rate: f64,
    },
    /// List valid checkpoints (and report invalid directories).
    List {
        /// The store (must exist).
        #[arg(long)]
        store: PathBuf,
    },
    /// Keep the last N checkpoints plus pinned ones; delete the rest.
    Prune {
        /// The store (must exist).
        #[arg(long)]
        store: PathBuf,
        /// Checkpoints to keep (the newest; pinned ones are kept too).
        #[arg(long)]
        keep: usize,
    },
    /// Pin a checkpoint so retention keeps it.
    Pin {
        /// The store (must exist).
        #[arg(long)]
        store: PathBuf,
        /// Height of the checkpoint to pin.
        #[arg(long)]
        height: u64,
        /// Name of the pin (1-64 of A-Z a-z 0-9 _ . -).
        #[arg(long)]
        name: String,
        /// Why it is pinned (kept in the pin file).
        #[arg(long, default_value = "")]
        reason: String,
    },
    Unpin {
        /// The store (must exist).
        #[arg(long)]
        store: PathBuf,
        /// Height of the checkpoint.
        #[arg(long)]
        height: u64,
        /// Name of the pin to remove.
        #[arg(long)]
        name: String,
    },
}

pub fn read_manifest(p: &Path) -> Result<Manifest> {
    let bytes = std::fs::read(p).map_err(|e| format!("read manifest {}: {e}", p.display()))?;
    Manifest::decode(&bytes).map_err(|e| format!("manifest {}: {e}", p.display()).into())
}

/// `DIR` or `DIR=MANIFEST` -> the directory and, if given, the manifest path.
pub fn split_dir_manifest(s: &str) -> (PathBuf, Option<PathBuf>) {
    match s.split_once('=') {
        Some((d, m)) => (PathBuf::from(d), Some(PathBuf::from(m))),
        None => (PathBuf::from(s), None),
    }
}

/// A local checkpoint argument: its manifest is read from `=MANIFEST` or
/// computed from the directory with `chunk_size`.
pub fn dir_and_manifest(s: &str, chunk_size: u32) -> Result<(PathBuf, Manifest)> {
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

pub fn parse_root(s: &str) -> Result<Hash> {
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

/// Runs a tool command.
pub fn run(cmd: ToolCmd, json: bool, bars: bool) -> Result<ExitCode> {
    match cmd {
        ToolCmd::GenState(GenCmd::New {
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
                print_json(&rep);
            } else {
                outln!(
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
        ToolCmd::GenState(GenCmd::Mutate {
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
                print_json(&rep);
            } else {
                outln!(
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
        ToolCmd::Manifest(ManifestCmd::Create {
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
                sample_budget: statesync_manifest::build::DEFAULT_SAMPLE_BUDGET,
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
                print_json(&serde_json::json!({
                    "root": m.root(),
                    "header": m.header(),
                    "report": built.report,
                    "seconds": secs,
                    "manifest": out,
                }));
            } else {
                let r = &built.report;
                outln!("root {}", m.root());
                outln!(
                    "{} files, {} chunks of {}, {} total",
                    r.files,
                    r.chunks,
                    ui::bytes(u64::from(m.chunk_size())),
                    ui::bytes(r.bytes)
                );
                outln!(
                    "hashed {} ({} chunks) at {}; reused {} chunks ({} files), {} sampled; {:.2}s",
                    ui::bytes(r.bytes_hashed),
                    r.chunks_hashed,
                    ui::rate(r.bytes_hashed, secs),
                    r.chunks_reused,
                    r.files_reused,
                    r.chunks_sampled,
                    secs
                );
                outln!("wrote {}", out.display());
            }
        }
        ToolCmd::Manifest(ManifestCmd::Show {
            file,
            root,
            files,
            chunks,
        }) => {
            let m = read_manifest(&file)?;
            check_root(&m, root.as_deref())?;
            let zero = m.chunks().iter().filter(|c| c.is_zero()).count();
            if json {
                print_json(&serde_json::json!({
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
                outln!("root        {}", m.root());
                outln!("version     {}", h.version);
                outln!("chunk size  {}", ui::bytes(u64::from(h.chunk_size)));
                outln!("files       {}", h.file_count);
                outln!("chunks      {} ({zero} all-zero)", h.chunk_count);
                outln!(
                    "bytes       {} ({})",
                    m.total_size(),
                    ui::bytes(m.total_size())
                );
                outln!(
                    "pieces      {} file, {} chunk",
                    h.file_piece_count(),
                    h.chunk_piece_count()
                );
                if files {
                    for f in m.files() {
                        outln!(
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
                        outln!(
                            "{i:>8} file {:>6} @{:>12} +{:>8} {}",
                            c.file,
                            c.offset,
                            c.len,
                            c.hash
                        );
                    }
                }
            }
        }
        ToolCmd::Verify {
            dir,
            manifest,
            root,
        } => {
            let m = read_manifest(&manifest)?;
            // A manifest that is not the trusted one is a difference (exit
            // 1), not a usage error.
            if let Some(r) = root.as_deref() {
                let want = parse_root(r)?;
                if m.root() != want {
                    if json {
                        print_json(&serde_json::json!({
                            "ok": false,
                            "root_mismatch": {"manifest": m.root(), "expected": want},
                        }));
                    } else {
                        outln!("root      manifest root is {}, expected {want}", m.root());
                        outln!("MISMATCH: the manifest is not the trusted one");
                    }
                    return Ok(ExitCode::from(1));
                }
            }
            let progress = Arc::new(Progress::default());
            let t = Instant::now();
            let bar = ui::Bar::start("verifying", progress.clone(), bars);
            let rep = statesync_manifest::verify_dir(&dir, &m, Some(&progress))?;
            drop(bar);
            if json {
                print_json(&rep);
            } else {
                for p in &rep.missing {
                    outln!("missing   {p}");
                }
                for p in &rep.extra {
                    outln!("extra     {p}");
                }
                for s in &rep.size_mismatch {
                    outln!(
                        "size      {} (expected {}, found {})",
                        s.path,
                        s.expected,
                        s.actual
                    );
                }
                for p in &rep.mode_mismatch {
                    outln!("mode      {p} (executable bit differs)");
                }
                for c in &rep.corrupt {
                    outln!(
                        "corrupt   {} chunk {} at offset {} (+{})",
                        c.path,
                        c.chunk,
                        c.offset,
                        c.len
                    );
                }
                for u in &rep.unsupported {
                    outln!(
                        "unsupported {} ({}: no checkpoint holds one)",
                        u.path,
                        u.kind
                    );
                }
                let counts: Vec<String> = rep
                    .counts()
                    .iter()
                    .map(|(k, n)| format!("{n} {k}"))
                    .collect();
                outln!(
                    "{}: {} files, {} checked in {:.2}s",
                    if rep.ok {
                        "OK".to_string()
                    } else {
                        format!("MISMATCH ({})", counts.join(", "))
                    },
                    rep.files_checked,
                    ui::bytes(rep.bytes_checked),
                    t.elapsed().as_secs_f64()
                );
            }
            if !rep.ok {
                return Ok(ExitCode::from(1));
            }
        }
        ToolCmd::Diff {
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
                print_json(&serde_json::json!({
                    "target_root": tm.root(),
                    "sources": sources.iter().map(|(d, m)| serde_json::json!({"dir": d, "root": m.root()})).collect::<Vec<_>>(),
                    "totals": t,
                    "links": plan.links,
                }));
            } else {
                outln!(
                    "target {} ({} files, {})",
                    tm.root(),
                    t.files,
                    ui::bytes(t.bytes)
                );
                outln!(
                    "  link   {:>8} files   {:>12}",
                    t.files_linked,
                    ui::bytes(t.bytes_linked)
                );
                outln!(
                    "  copy   {:>8} chunks  {:>12}",
                    t.chunks_copy,
                    ui::bytes(t.bytes_copy)
                );
                outln!(
                    "  zero   {:>8} chunks  {:>12}",
                    t.chunks_zero,
                    ui::bytes(t.bytes_zero)
                );
                outln!(
                    "  fetch  {:>8} chunks  {:>12}",
                    t.chunks_fetch,
                    ui::bytes(t.bytes_fetch)
                );
            }
        }
        ToolCmd::Checkpoint(c) => return checkpoint(c, json, bars),
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
                sample_budget: statesync_manifest::build::DEFAULT_SAMPLE_BUDGET,
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
                print_json(&serde_json::json!({
                    "checkpoint": created.info,
                    "report": created.report,
                    "files_linked": created.files_linked,
                    "incremental": created.incremental,
                    "seconds": secs,
                }));
            } else {
                outln!(
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
                print_json(&serde_json::json!({"checkpoints": valid, "invalid": invalid}));
            } else {
                for c in &valid {
                    outln!(
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
                    outln!("INVALID {}: {}", i.path.display(), i.reason);
                }
                if valid.is_empty() && invalid.is_empty() {
                    outln!("no checkpoints");
                }
            }
        }
        CheckpointCmd::Prune { store, keep } => {
            let st = open(&store)?;
            let rep = st.prune(keep)?;
            if json {
                print_json(&rep);
            } else {
                outln!(
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
                print_json(&serde_json::json!({"pinned": height, "name": name}));
            } else {
                outln!("pinned {height} as {name}");
            }
        }
        CheckpointCmd::Unpin {
            store,
            height,
            name,
        } => {
            let removed = open(&store)?.unpin(height, &name)?;
            if json {
                print_json(
                    &serde_json::json!({"unpinned": removed, "height": height, "name": name}),
                );
            } else {
                outln!("{}", if removed { "unpinned" } else { "no such pin" });
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
