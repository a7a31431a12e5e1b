//! Benchmarks of serving and fetching under hostile peers, with real
//! processes on 127.0.0.1 (not timed tests: they are `#[ignore]`d and run by
//! `scripts/bench.sh hostile`, which prints their figures). Rounds
//! alternate between the contenders; medians and ratios are printed.
//!
//! - `hostile_peers_cost`: a fetch from one honest server alone, against
//!   the same fetch with three peers that reset, truncate or refuse every
//!   data stream, and with two stallers and a trickler (issue 14, goal: at
//!   most 2x the honest-only time);
//! - `half_open_attack_cost`: an honest fetch while a client holds hundreds
//!   of never-read 4 MiB answers open on the same server, against the same
//!   fetch with no attacker, and the server's peak RSS (goal: under 256
//!   MiB, fetch within 2x);
//! - `fair_shares_of_32_fetchers`: 32 fetch processes at once from one
//!   server capped at 64 MiB/s: their durations (goal: within 1.5x of each
//!   other) and the server's peak RSS.

mod common;

use common::*;
use statesync_proto::Hash;
use statesync_testkit::hostile::{self, Mode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples `pid`'s RSS until dropped; the peak in KiB.
struct Peak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    h: Option<std::thread::JoinHandle<()>>,
}

impl Peak {
    fn start(pid: i32) -> Peak {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s2, p2) = (stop.clone(), peak.clone());
        let h = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                p2.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Peak {
            stop,
            peak,
            h: Some(h),
        }
    }
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.h.take() {
            let _ = h.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

fn timed_fetch(dir: &std::path::Path, name: &str, root: &str, peers: &[&str]) -> f64 {
    let out = dir.join(format!("{name}-out"));
    let t = Instant::now();
    let o = fetch(dir, name, root, &out, peers, &[]);
    let secs = t.elapsed().as_secs_f64();
    summary(&o, dir, name);
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(dir.join(name));
    secs
}

#[test]
#[ignore = "benchmark: scripts/bench.sh hostile"]
fn hostile_peers_cost() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 200, "256MiB", "41");
    let r = Hash::from_hex(&root).unwrap();
    let (_srv, good) = serve(d.path(), "good", &store, &[]);
    // Warm the server's page cache.
    timed_fetch(d.path(), "warm", &root, &[&good]);
    let (mut alone, mut failing, mut stalling) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..3 {
        alone.push(timed_fetch(d.path(), &format!("a{round}"), &root, &[&good]));
        let bad: Vec<_> = [Mode::Reset, Mode::Truncate, Mode::Refuse]
            .into_iter()
            .map(|m| hostile::start(m, r))
            .collect();
        let mut peers: Vec<&str> = bad.iter().map(|h| h.addr.as_str()).collect();
        peers.push(&good);
        failing.push(timed_fetch(d.path(), &format!("b{round}"), &root, &peers));
        drop(bad);
        let slow: Vec<_> = [Mode::Stall, Mode::Stall, Mode::Trickle]
            .into_iter()
            .map(|m| hostile::start(m, r))
            .collect();
        let mut peers: Vec<&str> = slow.iter().map(|h| h.addr.as_str()).collect();
        peers.push(&good);
        stalling.push(timed_fetch(d.path(), &format!("c{round}"), &root, &peers));
    }
    let (ma, mb, mc) = (
        median(&mut alone),
        median(&mut failing),
        median(&mut stalling),
    );
    println!(
        "hostile peers, 256 MiB, 3 rounds alternating (runs: {alone:.2?} / {failing:.2?} / {stalling:.2?} s)"
    );
    println!("  honest server alone                      {ma:7.2} s");
    println!(
        "  + 3 resetting/truncating/refusing peers  {mb:7.2} s  {:.2}x (goal <= 2x)",
        mb / ma
    );
    println!(
        "  + 2 stalling peers and a trickler        {mc:7.2} s  {:.2}x (goal <= 2x)",
        mc / ma
    );
}

#[test]
#[ignore = "benchmark: scripts/bench.sh hostile"]
fn half_open_attack_cost() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 200, "256MiB", "42");
    let r = Hash::from_hex(&root).unwrap();
    let (srv, addr) = serve(d.path(), "srv", &store, &[]);
    let pid = srv.pid();
    timed_fetch(d.path(), "warm", &root, &[&addr]);
    let (mut calm, mut attacked) = (Vec::new(), Vec::new());
    let mut peak_calm = 0;
    let mut peak_attacked = 0;
    for round in 0..3 {
        let p = Peak::start(pid);
        calm.push(timed_fetch(d.path(), &format!("a{round}"), &root, &[&addr]));
        peak_calm = peak_calm.max(p.finish());
        let p = Peak::start(pid);
        // 200 never-read streams of 4 MiB answers at once, then one more
        // every 50 ms.
        let attacker = hostile::client(hostile::ClientMode::NeverReads, &addr, r, 4, 200, 2000);
        std::thread::sleep(Duration::from_secs(2));
        attacked.push(timed_fetch(d.path(), &format!("b{round}"), &root, &[&addr]));
        drop(attacker);
        peak_attacked = peak_attacked.max(p.finish());
        std::thread::sleep(Duration::from_secs(1));
    }
    let (ma, mb) = (median(&mut calm), median(&mut attacked));
    println!(
        "half-open stream attack, 256 MiB, 3 rounds alternating (runs: {calm:.2?} / {attacked:.2?} s)"
    );
    println!(
        "  honest fetch, no attacker    {ma:7.2} s   server peak RSS {} MiB",
        peak_calm / 1024
    );
    println!(
        "  honest fetch, attacker       {mb:7.2} s   server peak RSS {} MiB   {:.2}x (goal <= 2x, RSS < 256 MiB)",
        peak_attacked / 1024,
        mb / ma
    );
}

#[test]
#[ignore = "benchmark: scripts/bench.sh hostile"]
fn fair_shares_of_32_fetchers() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 40, "32MiB", "43");
    let (srv, addr) = serve(d.path(), "srv", &store, &["--global-rate-mib", "64"]);
    let pid = srv.pid();
    timed_fetch(d.path(), "warm", &root, &[&addr]);
    let p = Peak::start(pid);
    let start = Instant::now();
    let handles: Vec<_> = (0..32)
        .map(|i| {
            let (dir, root, addr) = (d.path().to_path_buf(), root.clone(), addr.clone());
            std::thread::spawn(move || {
                let out = dir.join(format!("f{i}-out"));
                let t0 = start.elapsed().as_secs_f64();
                let o = fetch(&dir, &format!("f{i}"), &root, &out, &[&addr], &[]);
                let t1 = start.elapsed().as_secs_f64();
                summary(&o, &dir, &format!("f{i}"));
                (t0, t1)
            })
        })
        .collect();
    let spans: Vec<(f64, f64)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let peak = p.finish();
    let mut durs: Vec<f64> = spans.iter().map(|(a, b)| b - a).collect();
    let total = start.elapsed().as_secs_f64();
    let med = median(&mut durs);
    let (lo, hi) = (durs[0], durs[durs.len() - 1]);
    println!(
        "32 concurrent fetches of 32 MiB from one server capped at 64 MiB/s (all done in {total:.1} s)"
    );
    println!(
        "  durations: min {lo:.2} s, median {med:.2} s, max {hi:.2} s; max/min {:.2}x (goal <= 1.5x)",
        hi / lo
    );
    println!("  server peak RSS {} MiB", peak / 1024);
}
