//! What the tests of the `statesync` binary share: how to run it, and the
//! setups they use most (a store, a server, a fetch). Everything else comes
//! from `statesync-testkit`.
#![allow(dead_code)]

pub use statesync_testkit::*;

use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_statesync"))
}

/// Starts the binary with `args`, stderr to `log`.
pub fn spawn(args: &[&str], log: &Path) -> Proc {
    let mut c = bin();
    c.args(args);
    Proc::spawn(c, log)
}

/// Runs the binary with `--json --quiet`; panics unless it succeeds.
pub fn ok_json(args: &[&str]) -> Value {
    let out = bin()
        .arg("--json")
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Starts `statesync serve` and returns it with its listen address.
pub fn serve(dir: &Path, name: &str, store: &Path, extra: &[&str]) -> (Proc, String) {
    let data = dir.join(name);
    let addr = dir.join(format!("{name}.addr"));
    let mut args = vec![
        "serve",
        "--store",
        s(store),
        "--data",
        s(&data),
        "--addr-file",
        s(&addr),
    ];
    args.extend_from_slice(extra);
    let p = spawn(&args, &dir.join(format!("{name}.log")));
    wait_for("server address", Duration::from_secs(30), || addr.exists());
    let a = std::fs::read_to_string(&addr).unwrap();
    (p, a)
}

pub fn peer_id(addr: &str) -> String {
    addr.rsplit('/').next().unwrap().to_string()
}

/// A store with one checkpoint of generated state; returns (store, root).
pub fn make_store(dir: &Path, name: &str, files: u64, size: &str, seed: &str) -> (PathBuf, String) {
    let state = dir.join(format!("{name}-src"));
    let store = dir.join(name);
    ok_json(&[
        "gen-state",
        "new",
        "--out",
        s(&state),
        "--files",
        &files.to_string(),
        "--size",
        size,
        "--seed",
        seed,
    ]);
    let c = ok_json(&[
        "checkpoint",
        "create",
        "--store",
        s(&store),
        "--height",
        "10",
        "--from",
        s(&state),
    ]);
    (store, c["checkpoint"]["root"].as_str().unwrap().to_string())
}

/// Runs `statesync fetch` to completion (or the deadline) and returns its
/// output.
pub fn fetch(
    dir: &Path,
    name: &str,
    root: &str,
    out: &Path,
    peers: &[&str],
    extra: &[&str],
) -> Output {
    let data = dir.join(name);
    let mut args = vec![
        "--json".to_string(),
        "fetch".into(),
        "--root".into(),
        root.into(),
        "--out".into(),
        s(out).into(),
        "--data".into(),
        s(&data).into(),
        "--status-file".into(),
        s(&dir.join(format!("{name}.status"))).into(),
    ];
    for p in peers {
        args.push("--peer".into());
        args.push(p.to_string());
    }
    args.extend(extra.iter().map(|x| x.to_string()));
    let mut child = bin()
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            File::create(dir.join(format!("{name}.log"))).unwrap(),
        ))
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "fetch {name} did not finish: {}",
                std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

pub fn summary(o: &Output, dir: &Path, name: &str) -> Value {
    assert!(
        o.status.success(),
        "fetch {name} failed ({}): {}",
        o.status,
        std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

pub fn verify(out: &Path, root: &str) {
    let m = PathBuf::from(format!("{}.manifest", s(out)));
    let v = ok_json(&["verify", s(out), "--manifest", s(&m), "--root", root]);
    assert_eq!(v["ok"], true, "{v}");
}

pub fn peer_of(data: &Path) -> String {
    let o = bin().args(["id", "--data", s(data)]).output().unwrap();
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}
