//! Child processes and waiting.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// A child process that is killed (SIGKILL) and reaped when dropped, with
/// its stderr in a log file.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Where its stderr goes (stdout goes beside it, `.out`).
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stderr to `log` and stdout to `log` with the
    /// extension `out`.
    pub fn spawn(mut cmd: std::process::Command, log: &Path) -> Proc {
        let out = std::fs::File::create(log.with_extension("out")).expect("create stdout log");
        let err = std::fs::File::create(log).expect("create stderr log");
        let child = cmd
            .stdout(std::process::Stdio::from(out))
            .stderr(std::process::Stdio::from(err))
            .spawn()
            .expect("spawn");
        Proc {
            child,
            log: log.to_path_buf(),
        }
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGTERM and waits (up to 20 s) for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        // SAFETY: signals a child process we own.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        self.wait_exit(Duration::from_secs(20))
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit
    /// code, or None if it is still running (or died by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
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

/// Polls `f` every 50 ms until it is true; panics naming `what` after
/// `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `GET /metrics` from 127.0.0.1:`port` (the whole HTTP response).
pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send scrape");
    let mut out = String::new();
    c.read_to_string(&mut out).expect("read scrape");
    out
}

/// The value of the sample `name` (no labels) in a Prometheus text page.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Tests that mount a size-limited tmpfs do it in a new user and mount
/// namespace (`unshare -rm`), which needs no privileges on the host; this
/// fails the test, naming what is missing, where that is not possible.
pub fn require_unshare() {
    let probe = std::process::Command::new("unshare")
        .args(["-rm", "true"])
        .status();
    assert!(
        matches!(probe, Ok(st) if st.success()),
        "this test needs `unshare -rm` (util-linux, user namespaces): {probe:?}"
    );
}
