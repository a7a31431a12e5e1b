//! Process helpers shared by the integration tests.
#![allow(dead_code)]

use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_statesync"))
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    /// SIGTERM and wait for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        // SAFETY: signals a child process we own.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(args: &[&str], log: &Path) -> Proc {
    let child = bin()
        .args(args)
        .stdout(Stdio::from(
            File::create(log.with_extension("out")).unwrap(),
        ))
        .stderr(Stdio::from(File::create(log).unwrap()))
        .spawn()
        .unwrap();
    Proc {
        child,
        log: log.to_path_buf(),
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET /metrics` from 127.0.0.1:port.
pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Tests that mount a size-limited tmpfs do it in a new user and mount
/// namespace (`unshare -rm`), which needs no privileges on the host.
pub fn require_unshare() {
    let probe = Command::new("unshare").args(["-rm", "true"]).status();
    assert!(
        matches!(probe, Ok(st) if st.success()),
        "this test needs `unshare -rm` (util-linux, user namespaces): {probe:?}"
    );
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn peer_of(data: &Path) -> String {
    let o = bin().args(["id", "--data", s(data)]).output().unwrap();
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}
