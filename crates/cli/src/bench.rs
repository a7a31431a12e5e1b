//! Benchmarks against the reference tools, in the same run on the same data.
//!
//! The VM this project is developed on is noisy and reclaims idle page cache
//! within a minute, so every timed run is preceded by a re-read of its inputs,
//! contenders alternate (A B A B ...), and medians and ratios are reported.

use crate::output as ui;
use clap::Subcommand;
use rayon::prelude::*;
use statesync_manifest::build::{BuildOptions, Built, Hint, Previous};
use statesync_manifest::diff::LocalSource;
use statesync_synth::{self as synth, GenSpec, MutateSpec};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Full manifest vs b3sum; incremental (1% changed) vs full; verify; diff.
    Manifest {
        /// Where generated data is kept between runs.
        #[arg(long, default_value = "bench-data")]
        dir: PathBuf,
        /// Total size of the generated state (e.g. 2GiB).
        #[arg(long, default_value = "2GiB", value_parser = synth::parse_size)]
        size: u64,
        /// Number of files.
        #[arg(long, default_value_t = 600)]
        files: u64,
        /// Timed rounds (medians are reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Percent of chunks changed between the two versions.
        #[arg(long, default_value_t = 1.0)]
        changed_pct: f64,
    },
    /// State sync (1 and 4 serving processes) vs an rsync daemon: full, and
    /// incremental from an old checkpoint.
    Sync {
        /// Where generated data is kept between runs.
        #[arg(long, default_value = "bench-data-sync")]
        dir: PathBuf,
        /// Total size of the generated state (e.g. 2GiB).
        #[arg(long, default_value = "2GiB", value_parser = synth::parse_size)]
        size: u64,
        /// Number of files.
        #[arg(long, default_value_t = 600)]
        files: u64,
        /// Timed rounds, alternating statesync and rsync (medians are reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Percent of chunks changed for the incremental runs.
        #[arg(long, default_value_t = 5.0)]
        changed_pct: f64,
    },
    /// Block range sync over libp2p vs replaying the same blocks from the
    /// local store; time to head of the scaled IC incident.
    Blocks {
        /// Where generated data is kept between runs.
        #[arg(long, default_value = "bench-data-blocks")]
        dir: PathBuf,
        /// Blocks to sync and replay.
        #[arg(long, default_value_t = 3000)]
        blocks: u64,
        /// Timed rounds (medians are reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// State size of the chain, MiB.
        #[arg(long, default_value_t = 64)]
        state_mib: u64,
        /// Skip the scaled incident run.
        #[arg(long)]
        no_incident: bool,
    },
    /// Block gossip in simulation: IDA gossip vs flooding (gossipsub-like
    /// mesh) vs a Turbine-like tree, honest and with Byzantine relays;
    /// writes an HTML report with the delivery-time CDFs.
    Gossip(crate::bench_gossip::Args),
    /// Cost with the state's size: the same change on a small and a large
    /// state (incremental checkpoint, in-place sync); prints large / small.
    Scale(crate::bench_scale::Args),
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Median of the runs (NaN for none); sorts `v`.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Reads every file under `dir` so the timed run starts from a warm cache.
pub fn warm(dir: &Path) -> Result<u64> {
    let files = statesync_manifest::build::scan(dir)?;
    let total: std::io::Result<u64> = files
        .par_iter()
        .map(|f| {
            let mut h = std::fs::File::open(&f.abs)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let k = h.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
            Ok(n)
        })
        .sum();
    Ok(total?)
}

fn b3sum_available() -> bool {
    Command::new("b3sum")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs b3sum (default threads) over every file of `dir`; returns seconds.
fn time_b3sum(dir: &Path) -> Result<f64> {
    let files = statesync_manifest::build::scan(dir)?;
    let t = Instant::now();
    for batch in files.chunks(2000) {
        let st = Command::new("b3sum")
            .args(batch.iter().map(|f| &f.abs))
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            return Err(format!("b3sum failed: {st}").into());
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let t = Instant::now();
    let v = f()?;
    Ok((t.elapsed().as_secs_f64(), v))
}

#[derive(serde::Serialize)]
struct Row {
    name: &'static str,
    median_s: f64,
    runs_s: Vec<f64>,
    bytes: u64,
    gb_per_s: f64,
}

pub fn run(cmd: BenchCmd, json: bool) -> Result<ExitCode> {
    match cmd {
        BenchCmd::Gossip(args) => crate::bench_gossip::run(args, json),
        BenchCmd::Scale(args) => crate::bench_scale::run(args, json),
        BenchCmd::Manifest {
            dir,
            size,
            files,
            rounds,
            changed_pct,
        } => manifest_bench(&dir, size, files, rounds, changed_pct, json),
        BenchCmd::Blocks {
            dir,
            blocks,
            rounds,
            state_mib,
            no_incident,
        } => crate::bench_blocks::run(&dir, blocks, rounds, state_mib, !no_incident, json),
        BenchCmd::Sync {
            dir,
            size,
            files,
            rounds,
            changed_pct,
        } => crate::bench_sync::run(
            crate::bench_sync::Args {
                dir,
                size,
                files,
                rounds,
                changed_pct,
            },
            json,
        ),
    }
}

fn prepare(
    dir: &Path,
    size: u64,
    files: u64,
    changed_pct: f64,
) -> Result<(PathBuf, PathBuf, statesync_manifest::ChangeSet)> {
    let spec = GenSpec {
        files,
        size,
        seed: 1,
        zero_pct: 2.0,
        dup_pct: 1.0,
    };
    let key = format!("{spec:?} {changed_pct}");
    let marker = dir.join("spec.txt");
    let v1 = dir.join("v1");
    let v2 = dir.join("v2");
    let changes_path = dir.join("changes.json");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(key.as_str()) {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        eprintln!(
            "generating {} in {} files under {}",
            ui::bytes(size),
            files,
            v1.display()
        );
        synth::generate(&v1, &spec)?;
        let ms = MutateSpec {
            seed: 2,
            chunk_size: u64::from(statesync_manifest::format::DEFAULT_CHUNK_SIZE),
            changed_pct,
            appended_pct: 0.0,
            deleted_pct: 0.0,
            added_pct: 0.0,
            in_place: false,
        };
        let (_, cs) = synth::mutate(&v1, &v2, &ms)?;
        std::fs::write(&changes_path, serde_json::to_vec(&cs)?)?;
        std::fs::write(&marker, &key)?;
    }
    let cs = serde_json::from_slice(&std::fs::read(&changes_path)?)?;
    Ok((v1, v2, cs))
}

fn manifest_bench(
    dir: &Path,
    size: u64,
    files: u64,
    rounds: usize,
    changed_pct: f64,
    json: bool,
) -> Result<ExitCode> {
    let (v1, v2, changes) = prepare(dir, size, files, changed_pct)?;
    let have_b3sum = b3sum_available();
    if !have_b3sum {
        eprintln!("b3sum not found: run scripts/bench.sh (installs it) for the comparison");
    }
    let opts = BuildOptions::default();
    let bytes1 = warm(&v1)?;
    let m1 = statesync_manifest::build(&v1, &opts)?;
    let bytes2 = warm(&v2)?;
    let m2 = statesync_manifest::build(&v2, &opts)?;
    let threads = rayon::current_num_threads();
    eprintln!(
        "data: v1 {} ({} files), v2 = v1 with {changed_pct}% of chunks changed; {rounds} rounds, {threads} threads",
        ui::bytes(bytes1),
        m1.manifest.files().len()
    );

    let names = [
        "b3sum (v1)",
        "statesync full (v1)",
        "statesync full (v2)",
        "statesync incremental, change set (v2)",
        "statesync incremental, auto (v2)",
        "  same, change set, no sampled re-check",
        "statesync verify (v1)",
        "statesync diff plan (v2 vs v1)",
    ];
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut last_inc: Option<Built> = None;
    for r in 0..rounds {
        if have_b3sum {
            warm(&v1)?;
            runs[0].push(time_b3sum(&v1)?);
        }
        warm(&v1)?;
        let (s, b) = timed(|| Ok(statesync_manifest::build(&v1, &opts)?))?;
        if b.manifest.root() != m1.manifest.root() {
            return Err("full build not reproducible".into());
        }
        runs[1].push(s);
        warm(&v2)?;
        runs[2].push(timed(|| Ok(statesync_manifest::build(&v2, &opts)?))?.0);
        warm(&v2)?;
        let prev = Previous {
            manifest: &m1.manifest,
            dir: None,
            stats: None,
        };
        let o = BuildOptions {
            height: r as u64,
            ..opts.clone()
        };
        let (s, inc) = timed(|| {
            Ok(statesync_manifest::build_incremental(
                &v2,
                &o,
                &prev,
                Hint::Exact(&changes),
            )?)
        })?;
        if inc.manifest.root() != m2.manifest.root() {
            return Err("incremental manifest differs from the full one".into());
        }
        runs[3].push(s);
        warm(&v2)?;
        let prev = Previous {
            manifest: &m1.manifest,
            dir: Some(&v1),
            stats: None,
        };
        let (s, auto) = timed(|| {
            Ok(statesync_manifest::build_incremental(
                &v2,
                &o,
                &prev,
                Hint::Auto,
            )?)
        })?;
        if auto.manifest.root() != m2.manifest.root() {
            return Err("automatic incremental manifest differs from the full one".into());
        }
        runs[4].push(s);
        warm(&v2)?;
        let o0 = BuildOptions {
            sample_rate: 0.0,
            ..o.clone()
        };
        let prev = Previous {
            manifest: &m1.manifest,
            dir: None,
            stats: None,
        };
        let (s, _) = timed(|| {
            Ok(statesync_manifest::build_incremental(
                &v2,
                &o0,
                &prev,
                Hint::Exact(&changes),
            )?)
        })?;
        runs[5].push(s);
        warm(&v1)?;
        let (s, rep) = timed(|| Ok(statesync_manifest::verify_dir(&v1, &m1.manifest, None)?))?;
        if !rep.ok {
            return Err("verify failed on unchanged data".into());
        }
        runs[6].push(s);
        let (s, _) = timed(|| {
            Ok(statesync_manifest::plan(
                &m2.manifest,
                &[LocalSource::complete(&v1, &m1.manifest)],
            ))
        })?;
        runs[7].push(s);
        last_inc = Some(inc);
        eprintln!("round {}/{rounds} done", r + 1);
    }
    let byte_counts = [
        bytes1, bytes1, bytes2, bytes2, bytes2, bytes2, bytes1, bytes2,
    ];
    let rows: Vec<Row> = names
        .iter()
        .zip(runs.iter_mut())
        .zip(byte_counts)
        .map(|((name, r), bytes)| {
            let runs_s = r.clone();
            let m = median(r);
            Row {
                name,
                median_s: m,
                runs_s,
                bytes,
                gb_per_s: bytes as f64 / m / 1e9,
            }
        })
        .collect();
    let ratio_b3 = rows[0].median_s / rows[1].median_s;
    let inc_vs_full = rows[3].median_s / rows[2].median_s;
    let auto_vs_full = rows[4].median_s / rows[2].median_s;
    let nosample_vs_full = rows[5].median_s / rows[2].median_s;
    let inc = last_inc.map(|b| b.report).unwrap_or_default();
    if json {
        ui::print_json(&serde_json::json!({
            "rows": rows,
            "throughput_vs_b3sum": if have_b3sum { Some(ratio_b3) } else { None },
            "incremental_over_full_time": inc_vs_full,
            "auto_incremental_over_full_time": auto_vs_full,
            "unsampled_incremental_over_full_time": nosample_vs_full,
            "incremental_report": inc,
            "threads": threads,
        }));
    } else {
        crate::outln!("{:<42} {:>10} {:>10}   runs (s)", "", "median s", "GB/s");
        for r in &rows {
            if r.runs_s.is_empty() {
                continue;
            }
            let runs: Vec<String> = r.runs_s.iter().map(|s| format!("{s:.3}")).collect();
            crate::outln!(
                "{:<42} {:>10.3} {:>10.2}   {}",
                r.name,
                r.median_s,
                r.gb_per_s,
                runs.join(" ")
            );
        }
        if have_b3sum {
            crate::outln!(
                "full manifest throughput / b3sum throughput: {ratio_b3:.2}x (goal >= 0.85x)"
            );
        }
        crate::outln!(
            "incremental (change set) time / full time: 1/{:.1} (goal <= 1/20); hashed {} of {} chunks ({} sampled)",
            1.0 / inc_vs_full,
            inc.chunks_hashed,
            inc.chunks,
            inc.chunks_sampled
        );
        crate::outln!(
            "incremental (change set, no re-check) time / full time: 1/{:.1}",
            1.0 / nosample_vs_full
        );
        crate::outln!(
            "incremental (auto, hard links) time / full time: 1/{:.1}",
            1.0 / auto_vs_full
        );
    }
    Ok(ExitCode::SUCCESS)
}
