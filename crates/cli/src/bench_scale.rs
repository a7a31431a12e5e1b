//! `statesync bench scale`: does the cost follow the change or the state?
//! The same amount of changed data on a small and a large state (same file
//! size, generated state, exact change set): an incremental checkpoint
//! (`checkpoint create --changes`) and an in-place sync from one server
//! (`fetch --in-place`), timed alternately on both sizes, inputs re-read
//! before each run; medians and the large / small ratios are printed.

use crate::bench_sync::{Killed, me, run_json, s, timed, wait_file};
use crate::output as ui;
use statesync_synth::{self as synth, GenSpec, MutateSpec};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(clap::Args)]
pub struct Args {
    /// Where generated data is kept between runs.
    #[arg(long, default_value = "bench-data-scale")]
    pub dir: PathBuf,
    /// The small state's size.
    #[arg(long, default_value = "1GiB", value_parser = synth::parse_size)]
    pub small: u64,
    /// The large state's size.
    #[arg(long, default_value = "8GiB", value_parser = synth::parse_size)]
    pub large: u64,
    /// Size of every file, on both states.
    #[arg(long, default_value = "4MiB", value_parser = synth::parse_size)]
    pub file_size: u64,
    /// Data changed between the two versions, on both states (as 1 MiB
    /// chunks with a 4 KiB region rewritten).
    #[arg(long, default_value = "100MiB", value_parser = synth::parse_size)]
    pub changed: u64,
    /// Timed rounds (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// One state size: its data, store, server and roots.
struct Setup {
    size: u64,
    src: PathBuf,
    store: PathBuf,
    changes: PathBuf,
    old_state: PathBuf,
    old_manifest: PathBuf,
    new_root: String,
    addr: String,
    _server: Killed,
}

fn setup(dir: &Path, size: u64, a: &Args) -> Result<Setup> {
    let base = dir.join(format!("{}", size >> 20));
    let key = format!("{size} {} {}", a.file_size, a.changed);
    let marker = base.join("spec.txt");
    let src = base.join("src");
    let store = base.join("store");
    let changes = base.join("changes.json");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(key.as_str()) {
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base)?;
        let files = (size / a.file_size).max(1);
        eprintln!("generating {} in {files} files", ui::bytes(size));
        synth::generate(
            &src,
            &GenSpec {
                files,
                size,
                seed: 3,
                zero_pct: 2.0,
                dup_pct: 1.0,
            },
        )?;
        run_json(&[
            "checkpoint",
            "create",
            "--store",
            s(&store),
            "--height",
            "1",
            "--from",
            s(&src),
        ])?;
        let (_, cs) = synth::mutate(
            &src,
            &src,
            &MutateSpec {
                seed: 4,
                chunk_size: 1 << 20,
                changed_pct: a.changed as f64 / size as f64 * 100.0,
                appended_pct: 0.0,
                deleted_pct: 0.0,
                added_pct: 0.0,
                in_place: true,
            },
        )?;
        std::fs::write(&changes, serde_json::to_vec(&cs)?)?;
        run_json(&[
            "checkpoint",
            "create",
            "--store",
            s(&store),
            "--height",
            "2",
            "--from",
            s(&src),
            "--changes",
            s(&changes),
        ])?;
        std::fs::write(&marker, &key)?;
    }
    let list = run_json(&["checkpoint", "list", "--store", s(&store)])?;
    let cps = list["checkpoints"].as_array().ok_or("no checkpoints")?;
    let new_root = cps
        .iter()
        .find(|c| c["height"].as_u64() == Some(2))
        .and_then(|c| c["root"].as_str())
        .ok_or("checkpoint 2 missing")?
        .to_string();
    let cp1 = store.join("checkpoints/00000000000000000001");
    let af = base.join("srv.addr");
    let _ = std::fs::remove_file(&af);
    let server = Killed(
        Command::new(me()?)
            .args(["--quiet", "serve", "--store", s(&store), "--data"])
            .arg(base.join("srv"))
            .arg("--addr-file")
            .arg(&af)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    Ok(Setup {
        size,
        src,
        store,
        changes,
        old_state: cp1.join("state"),
        old_manifest: cp1.join("manifest"),
        new_root,
        addr: wait_file(&af)?,
        _server: server,
    })
}

/// An incremental checkpoint of the changed state at a fresh height (then
/// removed, so every round builds on checkpoint 2 the same way).
fn incremental(x: &Setup, height: u64) -> Result<f64> {
    crate::bench::warm(&x.src)?;
    let mut c = Command::new(me()?);
    c.args(["--quiet", "checkpoint", "create", "--store"])
        .arg(&x.store)
        .args(["--height", &height.to_string(), "--from"])
        .arg(&x.src)
        .arg("--changes")
        .arg(&x.changes);
    let t = timed(c, 0)?;
    let (st, _) = statesync_store::Store::open(&x.store)?;
    st.remove(height)?;
    Ok(t)
}

/// An in-place sync of checkpoint 2 onto a writable copy of checkpoint 1.
fn in_place(x: &Setup, dir: &Path) -> Result<f64> {
    let work = dir.join("work");
    let out = dir.join("out");
    let data = dir.join("client-data");
    for p in [&work, &out, &data] {
        let _ = std::fs::remove_dir_all(p);
    }
    let _ = std::fs::remove_file(dir.join("out.manifest"));
    let st = Command::new("cp")
        .arg("-a")
        .arg(&x.old_state)
        .arg(&work)
        .status()?;
    if !st.success() {
        return Err("cp -a".into());
    }
    let st = Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(&work)
        .status()?;
    if !st.success() {
        return Err("chmod".into());
    }
    crate::bench::warm(&work)?;
    crate::bench::warm(&x.store.join("checkpoints/00000000000000000002/state"))?;
    let mut c = Command::new(me()?);
    c.args(["--quiet", "fetch", "--root", &x.new_root, "--out"])
        .arg(&out)
        .arg("--data")
        .arg(&data)
        .args(["--peer", &x.addr, "--in-place"])
        .arg(format!("{}={}", s(&work), s(&x.old_manifest)));
    let t = timed(c, 0)?;
    for p in [&work, &out, &data] {
        let _ = std::fs::remove_dir_all(p);
    }
    let _ = std::fs::remove_file(dir.join("out.manifest"));
    Ok(t)
}

pub fn run(a: Args, json: bool) -> Result<ExitCode> {
    let dir = std::fs::canonicalize({
        std::fs::create_dir_all(&a.dir)?;
        &a.dir
    })?;
    let small = setup(&dir, a.small, &a)?;
    let large = setup(&dir, a.large, &a)?;
    let mut runs: [Vec<f64>; 4] = Default::default();
    for r in 0..a.rounds {
        let h = 10 + r as u64;
        runs[0].push(incremental(&small, h)?);
        runs[1].push(incremental(&large, h)?);
        runs[2].push(in_place(&small, &dir)?);
        runs[3].push(in_place(&large, &dir)?);
        eprintln!("round {}/{} done", r + 1, a.rounds);
    }
    let med: Vec<f64> = runs
        .iter()
        .map(|r| crate::bench::median(&mut r.clone()))
        .collect();
    let (ratio_inc, ratio_inplace) = (med[1] / med[0], med[3] / med[2]);
    let names = [
        format!("incremental checkpoint, {}", ui::bytes(small.size)),
        format!("incremental checkpoint, {}", ui::bytes(large.size)),
        format!("fetch --in-place, 1 server, {}", ui::bytes(small.size)),
        format!("fetch --in-place, 1 server, {}", ui::bytes(large.size)),
    ];
    if json {
        ui::print_json(&serde_json::json!({
            "small_bytes": small.size,
            "large_bytes": large.size,
            "changed_bytes": a.changed,
            "rows": names.iter().zip(&runs).zip(&med).map(|((n, r), m)| serde_json::json!({"name": n, "runs_s": r, "median_s": m})).collect::<Vec<_>>(),
            "incremental_large_vs_small": ratio_inc,
            "in_place_large_vs_small": ratio_inplace,
        }));
    } else {
        crate::outln!(
            "{} changed on a {} and a {} state ({} files)",
            ui::bytes(a.changed),
            ui::bytes(small.size),
            ui::bytes(large.size),
            ui::bytes(a.file_size)
        );
        crate::outln!("{:<48} {:>9}   runs (s)", "", "median s");
        for ((n, r), m) in names.iter().zip(&runs).zip(&med) {
            let rs: Vec<String> = r.iter().map(|x| format!("{x:.2}")).collect();
            crate::outln!("{n:<48} {m:>9.2}   {}", rs.join(" "));
        }
        crate::outln!(
            "large / small: incremental checkpoint {ratio_inc:.2}x, in-place sync {ratio_inplace:.2}x (1.0x: cost follows the change)"
        );
    }
    Ok(ExitCode::SUCCESS)
}
