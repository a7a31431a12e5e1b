//! `statesync demo --walkthrough`: the state layer on generated data, end to
//! end on one machine. The default `statesync demo` is the network demo
//! (demo_net.rs).

use crate::output as ui;
use clap::Args;
use statesync_manifest::diff::LocalSource;
use statesync_store::{CreateOptions, Store};
use statesync_synth::{self as synth, GenSpec, MutateSpec};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Args)]
pub struct DemoArgs {
    /// Working directory (default: a temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Instead of the network demo, walk through the state layer (manifest,
    /// checkpoints, incremental builds, diff, a network fetch).
    #[arg(long)]
    walkthrough: bool,
    /// Walkthrough: state size.
    #[arg(long, default_value = "256MiB", value_parser = synth::parse_size)]
    size: u64,
    /// Walkthrough: number of files.
    #[arg(long, default_value_t = 800)]
    files: u64,
    #[command(flatten)]
    net: crate::demo_net::NetDemoArgs,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub fn run(a: DemoArgs, json: bool) -> Result<ExitCode> {
    let tmp;
    let dir = match a.dir {
        Some(d) => d,
        None => {
            tmp = tempdir()?;
            tmp.0.clone()
        }
    };
    if !a.walkthrough {
        return crate::demo_net::run(a.net, &dir, json);
    }
    let say = |s: String| {
        if !json {
            crate::outln!("{s}");
        }
    };
    let mut summary = serde_json::Map::new();
    let state = dir.join("app-state");
    let t = Instant::now();
    let g = synth::generate(
        &state,
        &GenSpec {
            files: a.files,
            size: a.size,
            seed: 42,
            zero_pct: 5.0,
            dup_pct: 3.0,
        },
    )?;
    say(format!(
        "[1/7] generated application state: {} files, {} ({} zero blocks, {} duplicate files) in {:.1}s",
        g.files,
        ui::bytes(g.bytes),
        g.zero_blocks,
        g.duplicate_files,
        t.elapsed().as_secs_f64()
    ));

    let (store, _) = Store::open(dir.join("store"))?;
    let t = Instant::now();
    let c1 = store.create_from_dir(100, &state, &CreateOptions::default())?;
    let full_s = t.elapsed().as_secs_f64();
    say(format!(
        "[2/7] checkpoint 100: root {} — copy, fsync and full parallel manifest of {} in {:.2}s ({})",
        c1.info.root,
        ui::bytes(c1.info.bytes),
        full_s,
        ui::rate(c1.report.bytes_hashed, full_s)
    ));

    let (mrep, changes) = synth::mutate(
        &state,
        &state,
        &MutateSpec {
            seed: 7,
            chunk_size: 1 << 20,
            changed_pct: 1.0,
            appended_pct: 2.0,
            deleted_pct: 1.0,
            added_pct: 1.0,
            in_place: true,
        },
    )?;
    let t = Instant::now();
    let c2 = store.create_from_dir(
        200,
        &state,
        &CreateOptions {
            changes: Some(changes),
            ..Default::default()
        },
    )?;
    let inc_s = t.elapsed().as_secs_f64();
    say(format!(
        "[3/7] the application changed {} chunks, appended to {} files, deleted {}, added {};\n      checkpoint 200: root {} — incremental: hashed {} ({} chunks, {} of them a sampled re-check), {} files hard-linked, {:.2}s",
        mrep.chunks_changed,
        mrep.files_appended,
        mrep.files_deleted,
        mrep.files_added,
        c2.info.root,
        ui::bytes(c2.report.bytes_hashed),
        c2.report.chunks_hashed,
        c2.report.chunks_sampled,
        c2.files_linked,
        inc_s
    ));

    let m1 = store.load_manifest(100)?;
    let m2 = store.load_manifest(200)?;
    let plan = statesync_manifest::plan(&m2, &[LocalSource::complete(&store.state_dir(100), &m1)]);
    let p = plan.totals;
    say(format!(
        "[4/7] a node holding checkpoint 100 that must reach 200 plans: link {} files ({}), copy {} chunks ({}), skip {} zero chunks ({}), fetch {} chunks ({}) — {:.2}% of the state",
        p.files_linked,
        ui::bytes(p.bytes_linked),
        p.chunks_copy,
        ui::bytes(p.bytes_copy),
        p.chunks_zero,
        ui::bytes(p.bytes_zero),
        p.chunks_fetch,
        ui::bytes(p.bytes_fetch),
        100.0 * p.bytes_fetch as f64 / p.bytes.max(1) as f64
    ));

    let t = Instant::now();
    let v = statesync_manifest::verify_dir(&store.state_dir(200), &m2, None)?;
    say(format!(
        "[5/7] verify checkpoint 200 against its root: {} ({} in {:.2}s)",
        if v.ok { "OK" } else { "MISMATCH" },
        ui::bytes(v.bytes_checked),
        t.elapsed().as_secs_f64()
    ));
    if !v.ok {
        return Err("a freshly created checkpoint does not verify".into());
    }

    // A copy with one flipped byte: verify names the file and chunk.
    let copy = dir.join("tampered");
    let victim = m2
        .files()
        .iter()
        .max_by_key(|f| f.size)
        .ok_or("empty state")?
        .clone();
    copy_tree(&store.state_dir(200), &copy)?;
    let vpath = statesync_manifest::path::join(&copy, &victim.path);
    std::fs::set_permissions(&vpath, std::fs::Permissions::from_mode(0o644))?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&vpath)?;
    let mut b = [0u8; 1];
    f.read_at(&mut b, victim.size / 2)?;
    b[0] ^= 0x01;
    f.write_at(&b, victim.size / 2)?;
    std::fs::set_permissions(&vpath, std::fs::Permissions::from_mode(0o444))?;
    let bad = statesync_manifest::verify_dir(&copy, &m2, None)?;
    let c = bad.corrupt.first().ok_or("tampering was not detected")?;
    say(format!(
        "[6/7] one flipped byte in a copy: verify reports {} chunk {} at offset {} — and nothing else ({} corrupt chunk)",
        c.path,
        c.chunk,
        c.offset,
        bad.corrupt.len()
    ));
    // A late joiner syncs checkpoint 200 over libp2p from three serving
    // processes, starting from its stale copy of checkpoint 100 (in place).
    let net = network_sync(&dir, &store, &m1, &c2.info.root.to_hex(), json)?;
    say(format!(
        "[7/7] 3 nodes serve the store; a late joiner holding checkpoint 100 syncs 200 over libp2p ({}, every chunk verified):\n      fetched {} from {} peers, kept {} in place, {:.2}s — the result verifies against root {}",
        statesync_net::tls::bulk_cipher(),
        ui::bytes(net["bytes_fetched"].as_u64().unwrap_or(0)),
        net["peers_used"].as_u64().unwrap_or(0),
        ui::bytes(net["local"]["bytes_kept"].as_u64().unwrap_or(0)),
        net["seconds"].as_f64().unwrap_or(0.0),
        c2.info.root
    ));
    let pr = store.prune(1)?;
    say(format!(
        "retention (keep 1): removed checkpoints {:?}",
        pr.removed
    ));
    say("\nThe whole chain (validator, followers, a late joiner catching up): `statesync demo` without --walkthrough.".into());
    summary.insert("network_sync".into(), net);
    summary.insert("generated".into(), serde_json::to_value(&g)?);
    summary.insert("checkpoint_full".into(), serde_json::to_value(&c1.info)?);
    summary.insert(
        "checkpoint_incremental".into(),
        serde_json::to_value(&c2.info)?,
    );
    summary.insert(
        "incremental_report".into(),
        serde_json::to_value(&c2.report)?,
    );
    summary.insert("plan".into(), serde_json::to_value(p)?);
    summary.insert("full_seconds".into(), full_s.into());
    summary.insert("incremental_seconds".into(), inc_s.into());
    if json {
        ui::print_json(&summary);
    }
    Ok(ExitCode::SUCCESS)
}

/// Starts three `statesync serve` processes on the store and runs a fetch
/// of `root` in place of a copy of checkpoint 100; returns the fetch summary.
fn network_sync(
    dir: &std::path::Path,
    store: &Store,
    m100: &statesync_manifest::Manifest,
    root: &str,
    _json: bool,
) -> Result<serde_json::Value> {
    use std::process::{Command, Stdio};
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let me = std::env::current_exe()?;
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..3 {
        let af = dir.join(format!("node{i}.addr"));
        let c = Command::new(&me)
            .args(["--quiet", "serve", "--store"])
            .arg(store.root())
            .arg("--data")
            .arg(dir.join(format!("node{i}")))
            .arg("--addr-file")
            .arg(&af)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        servers.push(Kill(c));
        let t = Instant::now();
        while !af.exists() {
            if t.elapsed().as_secs() > 30 {
                return Err("a demo node did not start".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        addrs.push(std::fs::read_to_string(&af)?);
    }
    // The joiner's stale checkpoint: a private copy of checkpoint 100.
    let stale = dir.join("joiner-stale");
    copy_tree(&store.state_dir(100), &stale)?;
    let mf = dir.join("joiner-stale.manifest");
    std::fs::write(&mf, m100.encode())?;
    let out = dir.join("joiner-synced");
    let mut c = Command::new(&me);
    c.args(["--json", "--quiet", "fetch", "--root", root, "--out"])
        .arg(&out)
        .arg("--data")
        .arg(dir.join("joiner"))
        .arg("--in-place")
        .arg(format!("{}={}", stale.display(), mf.display()));
    for a in &addrs {
        c.args(["--peer", a]);
    }
    let o = c.output()?;
    if !o.status.success() {
        return Err(format!("demo fetch failed: {}", String::from_utf8_lossy(&o.stderr)).into());
    }
    Ok(serde_json::from_slice(&o.stdout)?)
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dst = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &dst)?;
        } else {
            std::fs::copy(e.path(), &dst)?;
        }
    }
    Ok(())
}

/// A temporary directory removed on drop (in the system temp dir).
struct TempDir(PathBuf);

fn tempdir() -> std::io::Result<TempDir> {
    let p = std::env::temp_dir().join(format!(
        "statesync-demo-{}-{}",
        std::process::id(),
        statesync_manifest::stats::now_ns()
    ));
    std::fs::create_dir_all(&p)?;
    Ok(TempDir(p))
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
