//! `statesync bench sync`: state sync over real processes on 127.0.0.1 vs an
//! rsync daemon serving the same directories, on the same generated data, in
//! the same run. Contenders alternate; inputs are re-read before each timed
//! run; medians and ratios are printed.

use crate::output as ui;
use statesync_synth::{self as synth, GenSpec, MutateSpec};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub struct Args {
    pub dir: PathBuf,
    pub size: u64,
    pub files: u64,
    pub rounds: usize,
    pub changed_pct: f64,
}

/// A child process killed when dropped (benchmark servers).
pub(crate) struct Killed(pub(crate) Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// This binary (benchmarks run its subcommands).
pub(crate) fn me() -> Result<PathBuf> {
    Ok(std::env::current_exe()?)
}

/// Runs `statesync --json --quiet ARGS` and parses its output.
pub(crate) fn run_json(args: &[&str]) -> Result<serde_json::Value> {
    let o = Command::new(me()?)
        .arg("--json")
        .arg("--quiet")
        .args(args)
        .output()?;
    if !o.status.success() {
        return Err(format!("statesync {args:?}: {}", String::from_utf8_lossy(&o.stderr)).into());
    }
    Ok(serde_json::from_slice(&o.stdout)?)
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap_or("")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits (up to 30 s) for a file a started process writes, and reads it.
pub(crate) fn wait_file(p: &Path) -> Result<String> {
    let t = Instant::now();
    while !p.exists() {
        if t.elapsed() > Duration::from_secs(30) {
            return Err(format!("timed out waiting for {}", p.display()).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(std::fs::read_to_string(p)?)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status()?;
    if !st.success() {
        return Err(format!("cp -a {} {}", from.display(), to.display()).into());
    }
    // Writable, like a node's working copy (cp -a kept the store's 0444).
    let st = Command::new("chmod")
        .arg("-R")
        .arg("u+w")
        .arg(to)
        .status()?;
    if !st.success() {
        return Err("chmod".into());
    }
    Ok(())
}

/// Every timed run starts with nothing dirty in the page cache: the removal
/// of the previous output and the copy of the old version are flushed first,
/// so no tool pays for another's writeback. And with warm free memory: on
/// this VM, memory left idle is handed back to the host within about a
/// minute and is slow to touch again, which penalises whoever writes through
/// the page cache (rsync) after a run that did not (statesync's direct
/// writes leave no freed page-cache pages behind). Touching and freeing the
/// state's size in memory first gives every contender the same start.
pub(crate) fn timed(mut c: Command, warm_bytes: usize) -> Result<f64> {
    drop(std::hint::black_box(vec![1u8; warm_bytes]));
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let t = Instant::now();
    let o = c.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    if !o.status.success() {
        return Err(format!("{c:?} failed: {}", String::from_utf8_lossy(&o.stderr)).into());
    }
    Ok(t.elapsed().as_secs_f64())
}

pub fn run(a: Args, json: bool) -> Result<ExitCode> {
    if Command::new("rsync")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        return Err("rsync not found: run scripts/bench.sh sync (it installs rsync)".into());
    }
    let dir = std::fs::canonicalize({
        std::fs::create_dir_all(&a.dir)?;
        &a.dir
    })?;
    let key = format!("{} {} {}", a.size, a.files, a.changed_pct);
    let marker = dir.join("spec.txt");
    let server_store = dir.join("server-store");
    let client_store = dir.join("client-store");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(key.as_str()) {
        for p in [&server_store, &client_store, &dir.join("src")] {
            let _ = std::fs::remove_dir_all(p);
        }
        let src = dir.join("src");
        eprintln!("generating {} in {} files", ui::bytes(a.size), a.files);
        synth::generate(
            &src,
            &GenSpec {
                files: a.files,
                size: a.size,
                seed: 3,
                zero_pct: 2.0,
                dup_pct: 1.0,
            },
        )?;
        run_json(&[
            "checkpoint",
            "create",
            "--store",
            s(&server_store),
            "--height",
            "1",
            "--from",
            s(&src),
        ])?;
        run_json(&[
            "checkpoint",
            "create",
            "--store",
            s(&client_store),
            "--height",
            "1",
            "--from",
            s(&src),
        ])?;
        synth::mutate(
            &src,
            &src,
            &MutateSpec {
                seed: 4,
                chunk_size: 1 << 20,
                changed_pct: a.changed_pct,
                appended_pct: 0.0,
                deleted_pct: 0.0,
                added_pct: 0.0,
                in_place: true,
            },
        )?;
        run_json(&[
            "checkpoint",
            "create",
            "--store",
            s(&server_store),
            "--height",
            "2",
            "--from",
            s(&src),
        ])?;
        std::fs::write(&marker, &key)?;
    }
    let list = run_json(&["checkpoint", "list", "--store", s(&server_store)])?;
    let cps = list["checkpoints"].as_array().ok_or("no checkpoints")?;
    let root = |i: usize| cps[i]["root"].as_str().unwrap_or("").to_string();
    let (r1, r2) = (root(0), root(1));
    let v1 = server_store.join("checkpoints/00000000000000000001/state");
    let v2 = server_store.join("checkpoints/00000000000000000002/state");
    let old = client_store.join("checkpoints/00000000000000000001/state");
    let old_manifest = client_store.join("checkpoints/00000000000000000001/manifest");
    let total = cps[1]["bytes"].as_u64().unwrap_or(0);
    let warm = usize::try_from(total + (512 << 20)).unwrap_or(usize::MAX);

    // Servers: 4 statesync processes and one rsync daemon.
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..4 {
        let af = dir.join(format!("srv{i}.addr"));
        let _ = std::fs::remove_file(&af);
        let c = Command::new(me()?)
            .args(["--quiet", "serve", "--store", s(&server_store), "--data"])
            .arg(dir.join(format!("srv{i}")))
            .arg("--addr-file")
            .arg(&af)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        servers.push(Killed(c));
        addrs.push(wait_file(&af)?);
    }
    let port = free_port()?;
    let conf = dir.join("rsyncd.conf");
    std::fs::write(
        &conf,
        format!(
            "use chroot = no\nread only = yes\npid file = {}\n[v1]\npath = {}\n[v2]\npath = {}\n",
            dir.join("rsyncd.pid").display(),
            v1.display(),
            v2.display()
        ),
    )?;
    let _ = std::fs::remove_file(dir.join("rsyncd.pid"));
    let _rsyncd = Killed(
        Command::new("rsync")
            .args(["--daemon", "--no-detach", "--address=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--config={}", conf.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(500));

    let names = [
        "statesync fetch, 1 server (full)",
        "statesync fetch, 4 servers (full)",
        "rsync daemon (full)",
        "rsync daemon --fsync (full, durable like statesync)",
        "statesync fetch --full-verify, 4 servers (full)",
        "statesync fetch, seeded by old checkpoint (incr.)",
        "statesync fetch --in-place old copy (incr.)",
        "rsync daemon, delta onto old copy (incr.)",
    ];
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let out = dir.join("out");
    let data = dir.join("client-data");
    let work = dir.join("work-copy");
    let clean = || {
        for p in [&out, &data, &work] {
            let _ = std::fs::remove_dir_all(p);
        }
        let _ = std::fs::remove_file(dir.join("out.manifest"));
    };
    let fetch_cmd = |root: &str, peers: &[String], extra: &[&str]| -> Result<Command> {
        let mut c = Command::new(me()?);
        c.args([
            "--quiet",
            "fetch",
            "--root",
            root,
            "--out",
            s(&out),
            "--data",
            s(&data),
        ]);
        for p in peers {
            c.args(["--peer", p]);
        }
        c.args(extra);
        Ok(c)
    };
    let seed_arg = format!("{}={}", s(&old), s(&old_manifest));
    let inplace_arg = format!("{}={}", s(&work), s(&old_manifest));
    for r in 0..a.rounds {
        // Full.
        clean();
        crate::bench::warm(&v1)?;
        runs[0].push(timed(fetch_cmd(&r1, &addrs[..1], &[])?, warm)?);
        clean();
        crate::bench::warm(&v1)?;
        runs[1].push(timed(fetch_cmd(&r1, &addrs, &[])?, warm)?);
        clean();
        crate::bench::warm(&v1)?;
        let mut c = Command::new("rsync");
        c.arg("-a")
            .arg(format!("rsync://127.0.0.1:{port}/v1/"))
            .arg(format!("{}/", s(&out)));
        runs[2].push(timed(c, warm)?);
        clean();
        crate::bench::warm(&v1)?;
        let mut c = Command::new("rsync");
        c.args(["-a", "--fsync"])
            .arg(format!("rsync://127.0.0.1:{port}/v1/"))
            .arg(format!("{}/", s(&out)));
        runs[3].push(timed(c, warm)?);
        clean();
        crate::bench::warm(&v1)?;
        runs[4].push(timed(fetch_cmd(&r1, &addrs, &["--full-verify"])?, warm)?);
        // Incremental.
        clean();
        crate::bench::warm(&v2)?;
        crate::bench::warm(&old)?;
        runs[5].push(timed(
            fetch_cmd(&r2, &addrs, &["--seed", &seed_arg])?,
            warm,
        )?);
        clean();
        copy_tree(&old, &work)?;
        crate::bench::warm(&v2)?;
        crate::bench::warm(&work)?;
        runs[6].push(timed(
            fetch_cmd(&r2, &addrs, &["--in-place", &inplace_arg])?,
            warm,
        )?);
        clean();
        copy_tree(&old, &work)?;
        crate::bench::warm(&v2)?;
        crate::bench::warm(&work)?;
        let mut c = Command::new("rsync");
        c.arg("-a")
            .arg(format!("rsync://127.0.0.1:{port}/v2/"))
            .arg(format!("{}/", s(&work)));
        runs[7].push(timed(c, warm)?);
        eprintln!("round {}/{} done", r + 1, a.rounds);
    }
    clean();
    let med: Vec<f64> = runs
        .iter()
        .map(|r| crate::bench::median(&mut r.clone()))
        .collect();
    let full_1 = med[2] / med[0];
    let full_4 = med[2] / med[1];
    let full_4_fsync = med[3] / med[1];
    let full_4_verify = med[2] / med[4];
    let inc_seed = med[7] / med[5];
    let inc_inplace = med[7] / med[6];
    if json {
        ui::print_json(&serde_json::json!({
            "bytes": total,
            "rows": names.iter().zip(&runs).zip(&med).map(|((n, r), m)| serde_json::json!({"name": n, "runs_s": r, "median_s": m})).collect::<Vec<_>>(),
            "full_1_server_vs_rsync": full_1,
            "full_4_servers_vs_rsync": full_4,
            "full_4_servers_vs_rsync_fsync": full_4_fsync,
            "full_4_servers_full_verify_vs_rsync": full_4_verify,
            "incremental_seeded_vs_rsync": inc_seed,
            "incremental_in_place_vs_rsync": inc_inplace,
        }));
    } else {
        crate::outln!(
            "state: {} ({} files), {}% of chunks changed for the incremental runs",
            ui::bytes(total),
            a.files,
            a.changed_pct
        );
        crate::outln!("{:<52} {:>9} {:>11}   runs (s)", "", "median s", "MB/s");
        for ((n, r), m) in names.iter().zip(&runs).zip(&med) {
            let rs: Vec<String> = r.iter().map(|x| format!("{x:.2}")).collect();
            crate::outln!(
                "{n:<52} {m:>9.2} {:>11.0}   {}",
                total as f64 / m / 1e6,
                rs.join(" ")
            );
        }
        crate::outln!(
            "full, 1 server: {full_1:.2}x rsync's throughput; 4 servers: {full_4:.2}x (goal >= 1.0x, encrypted and verified)"
        );
        crate::outln!(
            "full, 4 servers vs rsync --fsync (both durable on return): {full_4_fsync:.2}x"
        );
        crate::outln!(
            "full, 4 servers, every chunk re-read from disk at the end (--full-verify): {full_4_verify:.2}x rsync"
        );
        crate::outln!(
            "incremental: seeded {inc_seed:.2}x faster than rsync, in place {inc_inplace:.2}x (goal >= 5x)"
        );
    }
    Ok(ExitCode::SUCCESS)
}
