//! State sync with real processes on 127.0.0.1, real libp2p connections,
//! real files and a real redb database; crashes are SIGKILL.

mod common;

use common::*;
use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[test]
fn four_servers_one_fetcher_byte_identical() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 300, "24MiB", "1");
    let servers: Vec<(Proc, String)> = (0..4)
        .map(|i| serve(d.path(), &format!("s{i}"), &store, &[]))
        .collect();
    let addrs: Vec<&str> = servers.iter().map(|(_, a)| a.as_str()).collect();
    let out = d.path().join("out");
    let o = fetch(d.path(), "f", &root, &out, &addrs, &[]);
    let sum = summary(&o, d.path(), "f");
    verify(&out, &root);
    // Byte-identical to the source, file by file.
    let src = d.path().join("store-src");
    let a = read_tree(&src);
    let b = read_tree(&out);
    assert_eq!(a, b);
    let used = sum["bytes_per_peer"].as_object().unwrap().len();
    assert!(used >= 2, "only {used} peer(s) used: {sum}");
    assert!(sum["peers_banned"].as_array().unwrap().is_empty());
    // Nothing left in the staging area.
    assert!(!d.path().join("f/fetch").exists());
    // The same command again (a script retrying, or a crash right after the
    // promotion) succeeds without fetching; another root into the same
    // directory is refused.
    let o = fetch(d.path(), "f", &root, &out, &addrs, &[]);
    let again = summary(&o, d.path(), "f");
    assert_eq!(again["already_synced"], true, "{again}");
    let other = "11".repeat(32);
    let o = fetch(d.path(), "f", &other, &out, &addrs, &[]);
    assert!(!o.status.success());
    assert!(
        std::fs::read_to_string(d.path().join("f.log"))
            .unwrap()
            .contains("already exists"),
    );
}

#[test]
fn peer_serving_corrupted_chunks_is_banned_and_sync_completes() {
    let d = tempfile::tempdir().unwrap();
    let (good, root) = make_store(d.path(), "good", 60, "16MiB", "2");
    // A lying peer: its data on disk is right, what it sends is not.
    let (_b, bad_addr) = serve(d.path(), "bad-srv", &good, &["--fault", "corrupt"]);
    let (_g, good_addr) = serve(d.path(), "good-srv", &good, &[]);
    let out = d.path().join("out");
    let o = fetch(d.path(), "f", &root, &out, &[&bad_addr, &good_addr], &[]);
    let sum = summary(&o, d.path(), "f");
    verify(&out, &root);
    let banned = sum["peers_banned"].as_array().unwrap();
    assert_eq!(banned.len(), 1, "{sum}");
    assert!(
        banned[0].as_str().unwrap().starts_with(&peer_id(&bad_addr)),
        "{sum}"
    );
    assert!(sum["rejected_chunks"].as_u64().unwrap() >= 1);
}

#[test]
fn peer_that_never_answers_does_not_stall_the_sync() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 40, "8MiB", "3");
    let (_silent, silent_addr) = serve(d.path(), "silent", &store, &["--fault", "silent"]);
    let (_good, good_addr) = serve(d.path(), "good", &store, &[]);
    let out = d.path().join("out");
    let o = fetch(d.path(), "f", &root, &out, &[&silent_addr, &good_addr], &[]);
    let sum = summary(&o, d.path(), "f");
    verify(&out, &root);
    assert!(sum["bytes_per_peer"].get(peer_id(&silent_addr)).is_none());
}

#[test]
fn server_killed_mid_transfer_and_prune_mid_sync() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 100, "32MiB", "4");
    let (pruned_store, _) = make_store(d.path(), "pruned", 100, "32MiB", "4");
    // Slow servers so that the transfer is still running when we act.
    let slow = ["--peer-rate-mib", "4"];
    let (mut killed, a1) = serve(d.path(), "s1", &store, &slow);
    let (_s2, a2) = serve(d.path(), "s2", &store, &slow);
    let (_s3, a3) = serve(d.path(), "s3", &pruned_store, &slow);
    let out = d.path().join("out");
    let status = d.path().join("f.status");
    let dir = d.path().to_path_buf();
    let (r, p1, p2, p3) = (root.clone(), a1.clone(), a2.clone(), a3.clone());
    let o2 = out.clone();
    let h = std::thread::spawn(move || fetch(&dir, "f", &r, &o2, &[&p1, &p2, &p3], &[]));
    wait_for("transfer under way", Duration::from_secs(60), || {
        std::fs::read_to_string(&status)
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v["fetch"]["bytes_done"].as_u64())
            .is_some_and(|b| b > 2 << 20)
    });
    // One server dies; retention runs on another server's store meanwhile.
    unsafe { libc::kill(killed.pid(), libc::SIGKILL) };
    let _ = killed.child.wait();
    let p = ok_json(&[
        "checkpoint",
        "prune",
        "--store",
        s(&pruned_store),
        "--keep",
        "0",
    ]);
    // The serving process leases (pins) the checkpoint while peers fetch it,
    // so retention run by another process keeps it.
    assert_eq!(p["kept_pinned"], serde_json::json!([10]), "{p}");
    assert_eq!(p["removed"], serde_json::json!([]), "{p}");
    let o = h.join().unwrap();
    let sum = summary(&o, d.path(), "f");
    verify(&out, &root);
    assert!(
        sum["peers_banned"].as_array().unwrap().is_empty(),
        "no one lied: {sum}"
    );
}

fn status_of(p: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

#[test]
fn fetcher_killed_with_sigkill_resumes_without_refetching() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 120, "48MiB", "5");
    let (_srv, addr) = serve(d.path(), "srv", &store, &["--peer-rate-mib", "12"]);
    let out = d.path().join("out");
    // First run: SIGKILL from outside once some progress is durable.
    let status = d.path().join("f.status");
    let fdata = d.path().join("f");
    let args = [
        "fetch",
        "--root",
        &root,
        "--out",
        s(&out),
        "--data",
        s(&fdata),
        "--peer",
        &addr,
        "--status-file",
        s(&status),
        "--commit-mib",
        "2",
    ];
    let p = spawn(&args, &d.path().join("f1.log"));
    wait_for("progress", Duration::from_secs(60), || {
        status_of(&status)
            .and_then(|v| v["fetch"]["bytes_done"].as_u64())
            .is_some_and(|b| b > 12 << 20)
    });
    unsafe { libc::kill(p.pid(), libc::SIGKILL) };
    drop(p);
    assert!(!out.exists(), "nothing promoted by a killed fetch");
    // Second run resumes.
    let o = fetch(d.path(), "f", &root, &out, &[&addr], &[]);
    let sum = summary(&o, d.path(), "f");
    verify(&out, &root);
    let resumed = sum["local"]["bytes_resumed"].as_u64().unwrap();
    let fetched = sum["bytes_fetched"].as_u64().unwrap();
    let total = sum["bytes"].as_u64().unwrap();
    assert!(resumed > 4 << 20, "resumed only {resumed}: {sum}");
    assert!(
        fetched + resumed <= total,
        "fetched {fetched} + resumed {resumed} > total {total}"
    );
}

#[test]
fn refetch_after_crash_is_bounded_by_what_was_in_flight() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 100, "48MiB", "6");
    let (_srv, addr) = serve(d.path(), "srv", &store, &[]);
    let out = d.path().join("out");
    let crash_at: u64 = 24 << 20;
    let window: u64 = 4 << 20;
    let commit: u64 = 2 << 20;
    let o = fetch(
        d.path(),
        "f",
        &root,
        &out,
        &[&addr],
        &[
            "--crash-after-bytes",
            &crash_at.to_string(),
            "--max-window-mib",
            "4",
            "--commit-mib",
            "2",
        ],
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGKILL),
        "crash hook did not fire"
    );
    let o = fetch(
        d.path(),
        "f",
        &root,
        &out,
        &[&addr],
        &["--max-window-mib", "4"],
    );
    let sum = summary(&o, d.path(), "f");
    verify(&out, &root);
    let resumed = sum["local"]["bytes_resumed"].as_u64().unwrap();
    // Received before the crash: at least crash_at, at most one more batch.
    // Lost = received - resumed <= in-flight window + uncommitted batch + the
    // response that crossed the line.
    let lost = crash_at.saturating_sub(resumed);
    assert!(
        lost <= window + commit + window,
        "lost {lost} bytes, resumed {resumed}: {sum}"
    );
}

#[test]
fn incremental_fetch_seeded_by_old_checkpoint_and_switching_roots() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("src");
    let store = d.path().join("store");
    ok_json(&[
        "gen-state",
        "new",
        "--out",
        s(&state),
        "--files",
        "80",
        "--size",
        "24MiB",
        "--seed",
        "7",
    ]);
    let c1 = ok_json(&[
        "checkpoint",
        "create",
        "--store",
        s(&store),
        "--height",
        "1",
        "--from",
        s(&state),
    ]);
    let r1 = c1["checkpoint"]["root"].as_str().unwrap().to_string();
    ok_json(&[
        "gen-state",
        "mutate",
        "--from",
        s(&state),
        "--in-place",
        "--changed-pct",
        "5",
        "--seed",
        "9",
    ]);
    let c2 = ok_json(&[
        "checkpoint",
        "create",
        "--store",
        s(&store),
        "--height",
        "2",
        "--from",
        s(&state),
    ]);
    let r2 = c2["checkpoint"]["root"].as_str().unwrap().to_string();
    let (_srv, addr) = serve(d.path(), "srv", &store, &[]);

    // Switching roots: a sync of r1 dies half-way; the sync of r2 in the same
    // data directory reuses what the first one fetched.
    let partial = d.path().join("partial");
    let o = fetch(
        d.path(),
        "f",
        &r1,
        &partial,
        &[&addr],
        &[
            "--crash-after-bytes",
            &(12u64 << 20).to_string(),
            "--commit-mib",
            "1",
            "--max-window-mib",
            "2",
        ],
    );
    assert!(!o.status.success());
    let out2 = d.path().join("out2");
    let o = fetch(d.path(), "f", &r2, &out2, &[&addr], &[]);
    let sum = summary(&o, d.path(), "f");
    verify(&out2, &r2);
    let copied = sum["local"]["bytes_copied"].as_u64().unwrap();
    // 12 MiB were received; at most the window (2), the uncommitted batch
    // (1), the crossing response (2) and the changed chunks may be lost.
    assert!(copied >= 6 << 20, "switch kept only {copied} bytes: {sum}");

    // Seeded: a node holding checkpoint r1 fetches only what changed for r2.
    let out1 = d.path().join("out1");
    summary(
        &fetch(d.path(), "g", &r1, &out1, &[&addr], &[]),
        d.path(),
        "g",
    );
    let seed = format!("{}={}.manifest", s(&out1), s(&out1));
    let out3 = d.path().join("out3");
    let o = fetch(d.path(), "h", &r2, &out3, &[&addr], &["--seed", &seed]);
    let sum = summary(&o, d.path(), "h");
    verify(&out3, &r2);
    let fetched = sum["bytes_fetched"].as_u64().unwrap();
    let total = sum["bytes"].as_u64().unwrap();
    assert!(
        fetched * 4 < total,
        "seeded fetch moved {fetched} of {total}: {sum}"
    );
}

#[test]
fn forged_manifest_with_traversal_paths_writes_nothing_outside() {
    let d = tempfile::tempdir().unwrap();
    let (store, _) = make_store(d.path(), "store", 10, "1MiB", "8");
    let (_evil, addr) = serve(d.path(), "evil", &store, &["--fault", "traversal"]);
    let forged = std::fs::read_to_string(d.path().join("evil/forged-root")).unwrap();
    let work = d.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let out = work.join("out");
    let status = d.path().join("f.status");
    let wdata = work.join("data");
    let args = [
        "fetch",
        "--root",
        &forged,
        "--out",
        s(&out),
        "--data",
        s(&wdata),
        "--peer",
        &addr,
        "--status-file",
        s(&status),
    ];
    let mut p = spawn(&args, &d.path().join("f.log"));
    wait_for("the forger to be banned", Duration::from_secs(60), || {
        p.log().contains("banned")
    });
    assert!(p.log().contains(".."), "{}", p.log());
    // SIGTERM stops it cleanly.
    unsafe { libc::kill(p.pid(), libc::SIGTERM) };
    let st = p.child.wait().unwrap();
    assert_eq!(st.code(), Some(143));
    // Nothing escaped: no file anywhere named escape-*, and no output.
    let mut stack = vec![d.path().to_path_buf()];
    while let Some(x) = stack.pop() {
        for e in std::fs::read_dir(&x).unwrap().flatten() {
            assert!(
                !e.file_name().to_string_lossy().starts_with("escape-"),
                "{:?}",
                e.path()
            );
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    assert!(!out.exists());
}

#[test]
fn two_nodes_dialing_each_other_at_once_keep_one_connection() {
    let d = tempfile::tempdir().unwrap();
    let (store, _) = make_store(d.path(), "store", 4, "64KiB", "9");
    let (da, db) = (d.path().join("a"), d.path().join("b"));
    let (ia, ib) = (peer_of(&da), peer_of(&db));
    for round in 0..3 {
        let (pa, pb) = (free_port(), free_port());
        let aa = format!("/ip4/127.0.0.1/tcp/{pa}/p2p/{ia}");
        let ab = format!("/ip4/127.0.0.1/tcp/{pb}/p2p/{ib}");
        let (sa, sb) = (
            d.path().join(format!("a{round}.status")),
            d.path().join(format!("b{round}.status")),
        );
        let la = format!("/ip4/127.0.0.1/tcp/{pa}");
        let lb = format!("/ip4/127.0.0.1/tcp/{pb}");
        let a = spawn(
            &[
                "serve",
                "--store",
                s(&store),
                "--data",
                s(&da),
                "--listen",
                &la,
                "--peer",
                &ab,
                "--status-file",
                s(&sa),
            ],
            &d.path().join(format!("a{round}.log")),
        );
        let b = spawn(
            &[
                "serve",
                "--store",
                s(&store),
                "--data",
                s(&db),
                "--listen",
                &lb,
                "--peer",
                &aa,
                "--status-file",
                s(&sb),
            ],
            &d.path().join(format!("b{round}.log")),
        );
        let conns = |p: &Path, other: &str| {
            status_of(p)
                .and_then(|v| v["connections"][other].as_u64())
                .unwrap_or(0)
        };
        wait_for("both connected", Duration::from_secs(30), || {
            conns(&sa, &ib) >= 1 && conns(&sb, &ia) >= 1
        });
        // Let duplicates settle, then require exactly one on both sides,
        // stable over a second.
        std::thread::sleep(Duration::from_millis(1500));
        for _ in 0..4 {
            assert_eq!(conns(&sa, &ib), 1, "a: {}", a.log());
            assert_eq!(conns(&sb, &ia), 1, "b: {}", b.log());
            std::thread::sleep(Duration::from_millis(300));
        }
        drop(a);
        drop(b);
    }
}

fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 (1-based) of the whole line.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// The Harmony incident: a node whose peers are unreachable must not dial or
/// discover in a storm. Dials back off exponentially and CPU stays near idle.
#[test]
fn unreachable_peers_cause_no_dial_storm_and_no_busy_loop() {
    let d = tempfile::tempdir().unwrap();
    let (store, _) = make_store(d.path(), "store", 4, "64KiB", "10");
    let ghost_data = d.path().join("ghost");
    let ghost = peer_of(&ghost_data);
    let dead = format!("/ip4/127.0.0.1/tcp/{}/p2p/{ghost}", free_port());
    let status = d.path().join("n.status");
    let p = spawn(
        &[
            "serve",
            "--store",
            s(&store),
            "--data",
            s(&d.path().join("n")),
            "--peer",
            &dead,
            "--status-file",
            s(&status),
        ],
        &d.path().join("n.log"),
    );
    wait_for("status", Duration::from_secs(30), || {
        status_of(&status).is_some()
    });
    let t0 = cpu_ticks(p.pid());
    std::thread::sleep(Duration::from_secs(6));
    let used = cpu_ticks(p.pid()) - t0;
    let v = status_of(&status).unwrap();
    let dials = v["dials"].as_u64().unwrap();
    // Backoff 1, 2, 4 s...: a handful of dials in ~7 s, never hundreds.
    assert!(dials <= 6, "{dials} dials: {v}");
    // Well under 10% of one core over 6 s (100 ticks per second).
    assert!(used < 60, "{used} CPU ticks in 6 s");
}

#[test]
fn fetch_over_quic() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 30, "4MiB", "11");
    let (_srv, addr) = serve(
        d.path(),
        "srv",
        &store,
        &["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"],
    );
    assert!(addr.contains("quic-v1"), "{addr}");
    let out = d.path().join("out");
    let o = fetch(
        d.path(),
        "f",
        &root,
        &out,
        &[&addr],
        &["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"],
    );
    summary(&o, d.path(), "f");
    verify(&out, &root);
}

#[test]
fn a_fetcher_preferring_noise_syncs_from_servers_preferring_tls() {
    // The fetcher dials, so its preference decides: the whole sync runs
    // over noise (which proposal wins is pinned by crates/net/tests/tls.rs).
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 30, "8MiB", "12");
    let (_a, a) = serve(d.path(), "sa", &store, &[]);
    let (_b, b) = serve(d.path(), "sb", &store, &["--security", "tls"]);
    let out = d.path().join("out");
    let o = fetch(
        d.path(),
        "f",
        &root,
        &out,
        &[&a, &b],
        &["--security", "noise"],
    );
    summary(&o, d.path(), "f");
    verify(&out, &root);
}

#[test]
fn in_place_sync_consumes_a_stale_checkpoint_and_survives_sigkill() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("src");
    let store = d.path().join("store");
    ok_json(&[
        "gen-state",
        "new",
        "--out",
        s(&state),
        "--files",
        "60",
        "--size",
        "32MiB",
        "--seed",
        "12",
    ]);
    let c1 = ok_json(&[
        "checkpoint",
        "create",
        "--store",
        s(&store),
        "--height",
        "1",
        "--from",
        s(&state),
    ]);
    let r1 = c1["checkpoint"]["root"].as_str().unwrap().to_string();
    ok_json(&[
        "gen-state",
        "mutate",
        "--from",
        s(&state),
        "--in-place",
        "--changed-pct",
        "10",
        "--appended-pct",
        "5",
        "--deleted-pct",
        "5",
        "--added-pct",
        "5",
        "--seed",
        "13",
    ]);
    let c2 = ok_json(&[
        "checkpoint",
        "create",
        "--store",
        s(&store),
        "--height",
        "2",
        "--from",
        s(&state),
    ]);
    let r2 = c2["checkpoint"]["root"].as_str().unwrap().to_string();
    let (_srv, addr) = serve(d.path(), "srv", &store, &[]);
    let stale = d.path().join("stale");
    summary(
        &fetch(d.path(), "a", &r1, &stale, &[&addr], &[]),
        d.path(),
        "a",
    );
    let arg = format!("{}={}.manifest", s(&stale), s(&stale));
    let out = d.path().join("out");
    // Killed half-way through the in-place update...
    let o = fetch(
        d.path(),
        "b",
        &r2,
        &out,
        &[&addr],
        &[
            "--in-place",
            &arg,
            "--crash-after-bytes",
            &(1u64 << 20).to_string(),
            "--commit-mib",
            "1",
            "--max-window-mib",
            "1",
        ],
    );
    assert!(!o.status.success());
    assert!(!stale.exists(), "the stale checkpoint was consumed");
    // ...and resumed with the same command line.
    let o = fetch(d.path(), "b", &r2, &out, &[&addr], &["--in-place", &arg]);
    let sum = summary(&o, d.path(), "b");
    verify(&out, &r2);
    // Chunks kept in place by the first run are "resumed" in the second.
    let kept = sum["local"]["bytes_kept"].as_u64().unwrap()
        + sum["local"]["bytes_resumed"].as_u64().unwrap();
    let fetched = sum["bytes_fetched"].as_u64().unwrap();
    let total = sum["bytes"].as_u64().unwrap();
    assert!(kept > total / 2, "kept only {kept} of {total}: {sum}");
    assert!(fetched < total / 2, "fetched {fetched} of {total}: {sum}");
    // Full verification agrees.
    let m = PathBuf::from(format!("{}.manifest", s(&out)));
    assert_eq!(
        ok_json(&["verify", s(&out), "--manifest", s(&m)])["ok"],
        true
    );
}

/// A node that knows only a bootstrap peer finds the others through
/// Kademlia and connects to them (below --min-peers), and both sides expose
/// Prometheus metrics.
#[test]
fn kademlia_discovers_peers_beyond_the_bootstrap_and_metrics_are_served() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 8, "4MiB", "12");
    let mport = free_port();
    let mp = format!("127.0.0.1:{mport}");
    let (_a, addr_a) = serve(d.path(), "a", &store, &["--metrics", &mp]);
    // b and c serve another checkpoint: only a has the root fetched below.
    let (other, _) = make_store(d.path(), "other", 2, "64KiB", "13");
    let (_b, addr_b) = serve(d.path(), "b", &other, &["--peer", &addr_a]);
    let status = d.path().join("c.status");
    let _c = serve(
        d.path(),
        "c",
        &other,
        &[
            "--peer",
            &addr_a,
            "--min-peers",
            "2",
            "--status-file",
            s(&status),
        ],
    );
    let b_id = peer_id(&addr_b);
    wait_for("c to find b through a", Duration::from_secs(60), || {
        status_of(&status).is_some_and(|v| v["connections"].get(&b_id).is_some())
    });
    let v = status_of(&status).unwrap();
    assert!(v["discoveries"].as_u64().unwrap() >= 1, "{v}");
    // A fetch from a; a's metrics show it.
    let out = d.path().join("out");
    ok_json(&[
        "fetch",
        "--root",
        &root,
        "--out",
        s(&out),
        "--data",
        s(&d.path().join("f")),
        "--peer",
        &addr_a,
    ]);
    // Values refresh every 250 ms.
    let mut m;
    let t = Instant::now();
    loop {
        m = scrape(mport);
        if metric(&m, "statesync_served_bytes_total").unwrap_or(0.0) >= (3 << 20) as f64 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no served bytes in the metrics:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(metric(&m, "statesync_peers").unwrap_or(0.0) >= 1.0, "{m}");
    assert!(metric(&m, "statesync_busy_answers_total").is_some(), "{m}");
}

/// Runs a shell script in a new user and mount namespace, where it may mount
/// a size-limited tmpfs (no privileges needed on the host).
fn in_mount_namespace(script: &str) -> std::process::ExitStatus {
    common::require_unshare();
    std::process::Command::new("unshare")
        .args(["-rm", "sh", "-c", script])
        .status()
        .unwrap()
}

#[test]
fn full_disk_stops_the_fetch_blaming_nobody_and_a_restart_resumes() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 24, "32MiB", "7");
    // Slow enough that several progress commits (every 500 ms) happen before
    // the disk fills.
    let (_srv, addr) = serve(d.path(), "srv", &store, &["--peer-rate-mib", "12"]);
    let exe = env!("CARGO_BIN_EXE_statesync");
    let dp = s(d.path());
    // Three filesystems: one too small for the progress database, one that
    // fills mid-transfer; each grows afterwards and the same command runs
    // again. Everything the assertions read is written outside the tmpfs.
    let mut script = String::from("set -u\n");
    for (case, size) in [("tiny", "64k"), ("mid", "20m")] {
        let mnt = format!("{dp}/mnt-{case}");
        let fetch = format!(
            "{exe} --json fetch --root {root} --out {mnt}/out --data {mnt}/data --peer {addr}"
        );
        script.push_str(&format!(
            "mkdir -p {mnt} && mount -t tmpfs -o size={size} tmpfs {mnt} || exit 90\n\
             {fetch} > {dp}/{case}.o1 2> {dp}/{case}.e1; echo $? > {dp}/{case}.rc1\n\
             ls {mnt} > {dp}/{case}.ls1\n\
             mount -o remount,size=200m {mnt} || exit 91\n\
             {fetch} > {dp}/{case}.o2 2> {dp}/{case}.e2; echo $? > {dp}/{case}.rc2\n\
             {exe} --json verify {mnt}/out --manifest {mnt}/out.manifest --root {root} \
               > {dp}/{case}.v 2>&1; echo $? > {dp}/{case}.vrc\n"
        ));
    }
    let st = in_mount_namespace(&script);
    assert!(st.success(), "namespace script: {st:?}");
    let read = |n: &str| std::fs::read_to_string(d.path().join(n)).unwrap_or_default();
    for case in ["tiny", "mid"] {
        let e1 = read(&format!("{case}.e1"));
        // The first run stops with an exit code, names the disk, blames no
        // peer and promotes nothing.
        assert_eq!(read(&format!("{case}.rc1")).trim(), "2", "{case}: {e1}");
        assert!(e1.contains("No space left on device"), "{case}: {e1}");
        assert!(!e1.contains("panicked"), "{case}: {e1}");
        assert!(!e1.to_lowercase().contains("banned"), "{case}: {e1}");
        assert!(
            !read(&format!("{case}.ls1")).lines().any(|l| l == "out"),
            "{case}: a partial checkpoint was promoted"
        );
        // The same command after space is freed completes, bans nobody, and
        // its result verifies against the trusted root.
        let o2 = read(&format!("{case}.o2"));
        assert_eq!(
            read(&format!("{case}.rc2")).trim(),
            "0",
            "{case}: {}",
            read(&format!("{case}.e2"))
        );
        let sum: Value = serde_json::from_str(&o2).unwrap();
        assert_eq!(
            sum["peers_banned"].as_array().map(Vec::len),
            Some(0),
            "{o2}"
        );
        assert_eq!(
            read(&format!("{case}.vrc")).trim(),
            "0",
            "{}",
            read(&format!("{case}.v"))
        );
        if case == "mid" {
            // Progress made durable before the disk filled is kept: the
            // restart fetches less than the whole state.
            assert!(e1.contains("no peer at fault"), "{e1}");
            let fetched = sum["bytes_fetched"].as_u64().unwrap();
            assert!(fetched < 32 << 20, "refetched everything: {o2}");
            assert!(
                read("mid.e2").contains("from an earlier run"),
                "{}",
                read("mid.e2")
            );
        }
    }
}

/// An XFS filesystem in a loop-mounted image, unmounted when dropped.
struct XfsMount(PathBuf);

impl XfsMount {
    /// None where this machine cannot make one (no mkfs.xfs, not root):
    /// `.ci/run` installs xfsprogs and runs as root.
    fn new(dir: &Path) -> Option<XfsMount> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let mkfs = std::process::Command::new("mkfs.xfs")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !root || !mkfs {
            eprintln!(
                "NOT RUN: the reflink test needs root and mkfs.xfs (xfsprogs); \
                 root={root} mkfs.xfs={mkfs}"
            );
            return None;
        }
        let img = dir.join("xfs.img");
        let mnt = dir.join("xfs");
        std::fs::create_dir_all(&mnt).unwrap();
        File::create(&img).unwrap().set_len(1 << 30).unwrap();
        let run = |c: &mut std::process::Command| {
            let o = c.output().unwrap();
            assert!(
                o.status.success(),
                "{c:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        run(std::process::Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&img));
        run(std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt));
        Some(XfsMount(mnt))
    }

    fn used_bytes(&self) -> u64 {
        let c = std::ffi::CString::new(s(&self.0)).unwrap();
        // SAFETY: statvfs writes into the zeroed struct we pass.
        let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut v) }, 0);
        (v.f_blocks - v.f_bfree) * v.f_frsize
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn seeded_fetch_on_a_reflink_filesystem_shares_the_seeds_extents() {
    let d = tempfile::tempdir().unwrap();
    let Some(xfs) = XfsMount::new(d.path()) else {
        return;
    };
    // A copy of the old checkpoint on the XFS: unchanged files are
    // hard-linked, the unchanged chunks of changed files are copied (cloned).
    let (server, old, root) = two_versions(d.path(), &xfs.0.join("old-store"), "12", "64MiB", 21);
    let seed = xfs.0.join("seed");
    copy_tree(&old.join("state"), &seed);
    let (_srv, addr) = serve(d.path(), "srv", &server, &[]);
    let seed_arg = format!("{}={}", s(&seed), s(&old.join("manifest")));
    let before = xfs.used_bytes();
    let out = xfs.0.join("out");
    // Fetch with --data on the XFS so the staging shares the filesystem.
    let o = bin()
        .args([
            "--json",
            "--quiet",
            "fetch",
            "--root",
            &root,
            "--out",
            s(&out),
        ])
        .args([
            "--data",
            s(&xfs.0.join("client")),
            "--peer",
            &addr,
            "--seed",
            &seed_arg,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sum: Value = serde_json::from_slice(&o.stdout).unwrap();
    let copied = sum["local"]["bytes_copied"].as_u64().unwrap();
    let cloned = sum["local"]["bytes_cloned"].as_u64().unwrap();
    let linked = sum["local"]["bytes_linked"].as_u64().unwrap();
    assert!(copied > 16 << 20, "too little to copy for the test: {sum}");
    // Every aligned chunk is cloned; only files' unaligned tails are copied.
    assert!(cloned * 10 >= copied * 9, "{sum}");
    verify(&out, &root);
    // Cloned bytes take no new space: the filesystem grew by what was
    // fetched and written, not by what was reused.
    let grown = xfs.used_bytes() - before;
    let fetched = sum["bytes_fetched"].as_u64().unwrap();
    assert!(
        grown < fetched + linked + (copied - cloned) + (8 << 20),
        "grew {grown} for {fetched} fetched, {cloned} cloned: {sum}"
    );
    assert!(grown < copied / 2, "clones took space: grew {grown}, {sum}");
}

#[test]
fn a_seed_that_changed_behind_its_manifest_is_refetched_not_stuck() {
    let d = tempfile::tempdir().unwrap();
    // The seed directory moved on after its manifest was written (a node's
    // live state, say): every file differs at byte 100 but stays read-only,
    // so the plan hard-links the unchanged ones on the manifest's word.
    let (server, old, root) =
        two_versions(d.path(), &d.path().join("old-store"), "12", "32MiB", 31);
    let seed = d.path().join("seed");
    copy_tree(&old.join("state"), &seed);
    let mut seeds = Vec::new();
    for e in walk(&seed) {
        write_keeping_read_only(&e, b"changed!", 100);
        seeds.push(e);
    }
    let (_srv, addr) = serve(d.path(), "srv", &server, &[]);
    let seed_arg = format!("{}={}", s(&seed), s(&old.join("manifest")));
    let out = d.path().join("out");
    let o = fetch(d.path(), "f", &root, &out, &[&addr], &["--seed", &seed_arg]);
    let sum = summary(&o, d.path(), "f");
    let log = std::fs::read_to_string(d.path().join("f.log")).unwrap();
    assert!(sum["local"]["files_linked"].as_u64().unwrap() > 0, "{sum}");
    // Chunk copies from the changed files do not match either: added to the
    // fetch while it runs (the local copies overlap with it).
    assert!(
        sum["local"]["copy_mismatches"].as_u64().unwrap() > 0,
        "{sum}"
    );
    assert!(log.contains("did not match their source"), "{log}");
    assert!(log.contains("final check:"), "{log}");
    assert!(
        sum["local"]["bytes_refetched"].as_u64().unwrap() > 0,
        "{sum}"
    );
    verify(&out, &root);
    // The refetch never wrote into the seed's files (the hard links were
    // broken first).
    for e in &seeds {
        let b = std::fs::read(e).unwrap();
        assert_eq!(&b[100..108], b"changed!", "{}", e.display());
    }
}

#[test]
fn a_local_copy_that_does_not_match_is_fetched_while_the_sync_runs() {
    let d = tempfile::tempdir().unwrap();
    let (server, old, root) =
        two_versions(d.path(), &d.path().join("old-store"), "12", "32MiB", 51);
    let v2 = server.join("checkpoints/00000000000000000002/state");
    // The seed is the old state, except that in every file the new version
    // changed, one chunk both versions share is spoiled: the plan copies it
    // from the seed, the copy does not verify, and it must be fetched.
    let seed = d.path().join("seed");
    copy_tree(&old.join("state"), &seed);
    let chunk = 1usize << 20;
    let mut spoiled = 0;
    for e in walk(&seed) {
        let new = std::fs::read(v2.join(e.strip_prefix(&seed).unwrap())).unwrap();
        let before = std::fs::read(&e).unwrap();
        if new == before {
            continue;
        }
        let shared = (0..before.len().div_ceil(chunk)).find(|k| {
            let r = k * chunk..((k + 1) * chunk).min(before.len());
            r.end <= new.len() && before[r.clone()] == new[r]
        });
        if let Some(k) = shared {
            write_keeping_read_only(&e, b"spoiled!", (k * chunk) as u64);
            spoiled += 1;
        }
    }
    assert!(
        spoiled > 0,
        "no changed file shares a chunk with its old version"
    );
    let (_srv, addr) = serve(d.path(), "srv", &server, &[]);
    let seed_arg = format!("{}={}", s(&seed), s(&old.join("manifest")));
    let out = d.path().join("out");
    let o = fetch(d.path(), "f", &root, &out, &[&addr], &["--seed", &seed_arg]);
    let sum = summary(&o, d.path(), "f");
    let log = std::fs::read_to_string(d.path().join("f.log")).unwrap();
    assert!(
        sum["local"]["copy_mismatches"].as_u64().unwrap() >= spoiled,
        "{sum}"
    );
    assert!(sum["local"]["chunks_copied"].as_u64().unwrap() > 0, "{sum}");
    // Fetched during the sync, not by a repair after a failed final check.
    assert!(!log.contains("final check:"), "{log}");
    assert_eq!(sum["local"]["bytes_refetched"], 0, "{sum}");
    verify(&out, &root);
}

/// Writes `bytes` at `offset` into a (read-only) checkpoint file and puts
/// its mode back: the file changes behind its manifest, still looking
/// immutable.
fn write_keeping_read_only(path: &Path, bytes: &[u8], offset: u64) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o200)).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, bytes, offset).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn in_place_never_keeps_a_file_changed_after_its_manifest() {
    let d = tempfile::tempdir().unwrap();
    let (_srv, addr, r2, stale) = stale_copy_and_next_root(d.path(), 10, "8MiB", 41, "10");
    // The stale copy moves on after its manifest was written: one byte in
    // every file, sizes unchanged (what a node's live state does).
    std::thread::sleep(Duration::from_millis(20));
    for e in walk(&stale) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&e, std::fs::Permissions::from_mode(0o644)).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&e).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"x", 7).unwrap();
    }
    let arg = format!("{}={}.manifest", s(&stale), s(&stale));
    let out = d.path().join("out");
    let o = fetch(d.path(), "b", &r2, &out, &[&addr], &["--in-place", &arg]);
    let sum = summary(&o, d.path(), "b");
    let log = std::fs::read_to_string(d.path().join("b.log")).unwrap();
    assert!(log.contains("in place: 10 files of"), "{log}");
    assert_eq!(sum["local"]["bytes_kept"].as_u64(), Some(0), "{sum}");
    // Every byte, not a sample: nothing of the altered copy survived.
    let m = PathBuf::from(format!("{}.manifest", s(&out)));
    let v = ok_json(&["verify", s(&out), "--manifest", s(&m), "--root", &r2]);
    assert_eq!(v["ok"], true, "{v}");
}

/// In place with `--full-verify`: a kept chunk altered behind its manifest
/// (mtime restored, so only the final check can tell) is caught, its file
/// replaced and refetched, and the refetched chunks land in the new file, not
/// in a handle the writer still held on the old one.
#[test]
fn a_kept_chunk_found_bad_at_the_end_is_refetched_into_the_new_file() {
    let d = tempfile::tempdir().unwrap();
    let (_srv, addr, r2, stale) = stale_copy_and_next_root(d.path(), 4, "16MiB", 51, "25");
    for e in walk(&stale) {
        use std::os::unix::fs::PermissionsExt;
        let mtime = std::fs::metadata(&e).unwrap().modified().unwrap();
        std::fs::set_permissions(&e, std::fs::Permissions::from_mode(0o644)).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&e).unwrap();
        // One byte in every chunk: a file with a changed chunk (fetched
        // first) and kept ones (caught at the end) has both.
        let len = f.metadata().unwrap().len();
        for off in (7..len).step_by(1 << 20) {
            std::os::unix::fs::FileExt::write_all_at(&f, b"x", off).unwrap();
        }
        f.set_modified(mtime).unwrap();
    }
    let arg = format!("{}={}.manifest", s(&stale), s(&stale));
    let out = d.path().join("out");
    let o = fetch(
        d.path(),
        "b",
        &r2,
        &out,
        &[&addr],
        &["--in-place", &arg, "--full-verify"],
    );
    let sum = summary(&o, d.path(), "b");
    let log = std::fs::read_to_string(d.path().join("b.log")).unwrap();
    assert!(log.contains("final check:"), "{log}");
    assert!(sum["local"]["bytes_kept"].as_u64().unwrap() > 0, "{sum}");
    assert!(sum["bytes_fetched"].as_u64().unwrap() > 0, "{sum}");
    verify(&out, &r2);
}

/// Generated state in two versions (5% of chunks changed): the server store
/// holds both (heights 1, 2), `old_store` the first. Returns the server
/// store, the old checkpoint's directory in `old_store` and the second
/// version's root.
fn two_versions(
    d: &Path,
    old_store: &Path,
    files: &str,
    size: &str,
    seed: u64,
) -> (PathBuf, PathBuf, String) {
    let src = d.join("src");
    let (s1, s2) = (seed.to_string(), (seed + 1).to_string());
    ok_json(&[
        "gen-state",
        "new",
        "--out",
        s(&src),
        "--files",
        files,
        "--size",
        size,
        "--seed",
        &s1,
    ]);
    let server = d.join("server-store");
    for store in [&server, old_store] {
        ok_json(&[
            "checkpoint",
            "create",
            "--store",
            s(store),
            "--height",
            "1",
            "--from",
            s(&src),
        ]);
    }
    ok_json(&[
        "gen-state",
        "mutate",
        "--from",
        s(&src),
        "--in-place",
        "--changed-pct",
        "5",
        "--seed",
        &s2,
    ]);
    let c = ok_json(&[
        "checkpoint",
        "create",
        "--store",
        s(&server),
        "--height",
        "2",
        "--from",
        s(&src),
    ]);
    let root = c["checkpoint"]["root"].as_str().unwrap().to_string();
    (
        server,
        old_store.join("checkpoints/00000000000000000001"),
        root,
    )
}

/// A server with generated state at heights 10 and 11 (`pct`% of chunks
/// changed), and a fetched copy of height 10 in `stale` (with
/// `stale.manifest`). Returns the server, its address, the root of height
/// 11 and the stale copy.
fn stale_copy_and_next_root(
    d: &Path,
    files: u64,
    size: &str,
    seed: u64,
    pct: &str,
) -> (Proc, String, String, PathBuf) {
    let (store, r1) = make_store(d, "store", files, size, &seed.to_string());
    let src = d.join("store-src");
    let next = (seed + 1).to_string();
    ok_json(&[
        "gen-state",
        "mutate",
        "--from",
        s(&src),
        "--in-place",
        "--changed-pct",
        pct,
        "--seed",
        &next,
    ]);
    let c = ok_json(&[
        "checkpoint",
        "create",
        "--store",
        s(&store),
        "--height",
        "11",
        "--from",
        s(&src),
    ]);
    let r2 = c["checkpoint"]["root"].as_str().unwrap().to_string();
    let (srv, addr) = serve(d, "srv", &store, &[]);
    let stale = d.join("stale");
    summary(&fetch(d, "a", &r1, &stale, &[&addr], &[]), d, "a");
    (srv, addr, r2, stale)
}

/// A server whose checkpoint was altered on disk finds out by itself (the
/// first chunk it serves is checked, then one in 64), says so, withdraws the
/// checkpoint and answers NOT_FOUND; the fetch completes from the others.
#[test]
fn a_server_whose_checkpoint_is_damaged_on_disk_withdraws_it() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 60, "8MiB", "61");
    let bad_store = d.path().join("bad-store");
    copy_tree(&store, &bad_store);
    for e in walk(&bad_store.join("checkpoints")) {
        if !s(&e).contains("/state/") {
            continue;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&e, std::fs::Permissions::from_mode(0o644)).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&e).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"!", 7).unwrap();
    }
    let (_good, good) = serve(d.path(), "good", &store, &[]);
    let (bad, bad_addr) = serve(d.path(), "bad", &bad_store, &[]);
    let out = d.path().join("out");
    let o = fetch(d.path(), "f", &root, &out, &[&bad_addr, &good], &[]);
    summary(&o, d.path(), "f");
    verify(&out, &root);
    wait_for(
        "the damaged server's report",
        Duration::from_secs(10),
        || bad.log().contains("is damaged on disk"),
    );
    let log = bad.log();
    assert!(log.contains("does not match its manifest"), "{log}");
    assert_eq!(log.matches("is damaged on disk").count(), 1, "{log}");
}

/// A fetch that cannot make progress says why, peer by peer, and
/// `--timeout` ends it with that reason (exit 2): a peer that does not have
/// the root, a port nobody listens on, an address whose peer id is wrong.
#[test]
fn a_fetch_says_why_it_waits_and_gives_up_at_its_timeout() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 10, "2MiB", "41");
    let (_srv, addr) = serve(d.path(), "srv", &store, &[]);
    let stranger = peer_of(&d.path().join("stranger"));
    let refused = format!("/ip4/127.0.0.1/tcp/{}/p2p/{stranger}", free_port());
    // The server's address under another peer id.
    let wrong = format!("{}/p2p/{stranger}", addr.rsplit_once("/p2p/").unwrap().0);
    let unknown = "22".repeat(32);
    let t = Instant::now();
    let o = bin()
        .args(["fetch", "--root", &unknown, "--out"])
        .arg(d.path().join("out"))
        .args(["--data", s(&d.path().join("f")), "--timeout", "7"])
        .args(["--peer", &addr, "--peer", &refused, "--peer", &wrong])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "did not stop at its timeout"
    );
    assert!(err.contains("--timeout"), "{err}");
    assert!(err.contains("does not advertise this root"), "{err}");
    assert!(err.contains("Connection refused"), "{err}");
    assert!(err.contains("wrong peer id"), "{err}");
    // With the right root it works at once, and the staging area of the
    // unknown one was left behind cleanly.
    let out = d.path().join("out");
    let o = fetch(d.path(), "f", &root, &out, &[&addr], &[]);
    summary(&o, d.path(), "f");
    verify(&out, &root);
}

/// A second server on a port already in use fails at once with a clear
/// error instead of silently sharing the port (libp2p listens with
/// SO_REUSEPORT).
#[test]
fn listening_on_a_port_in_use_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let (store, _) = make_store(d.path(), "store", 4, "64KiB", "42");
    let port = free_port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let (_a, _) = serve(d.path(), "a", &store, &["--listen", &listen]);
    let o = bin()
        .args(["serve", "--store", s(&store), "--data"])
        .arg(d.path().join("b"))
        .args(["--listen", &listen])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("already in use"), "{err}");
}

/// Finding servers of a root beyond one hop: the joiner knows only a
/// bootstrap peer that serves another root, and keeps to one connection
/// (`--min-peers 1`); the server of its root announced itself in the DHT
/// as a provider, and the joiner's provider lookup finds it. (In a network
/// this small, Kademlia's own bootstrap query also reaches the server; in
/// a large one only the provider records lead to it.)
#[test]
fn a_joiner_finds_the_server_of_its_root_through_dht_provider_records() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 6, "64KiB", "21");
    let (other, other_root) = make_store(d.path(), "other", 2, "64KiB", "22");
    assert_ne!(root, other_root);
    let bstatus = d.path().join("b.status");
    let (_b, baddr) = serve(
        d.path(),
        "b",
        &other,
        &["--status-file", s(&bstatus), "--min-peers", "1"],
    );
    let sstatus = d.path().join("s.status");
    let (_s, saddr) = serve(
        d.path(),
        "s",
        &store,
        &[
            "--peer",
            &baddr,
            "--status-file",
            s(&sstatus),
            "--min-peers",
            "1",
        ],
    );
    let sid = peer_id(&saddr);
    // The server's provider record reached the bootstrap peer.
    wait_for(
        "the provider record published",
        Duration::from_secs(60),
        || {
            status_of(&sstatus)
                .is_some_and(|v| v["providers"]["published"].as_u64().unwrap_or(0) >= 1)
        },
    );
    let out = d.path().join("out");
    let o = fetch(
        d.path(),
        "j",
        &root,
        &out,
        &[&baddr],
        &["--min-peers", "1", "--timeout", "120"],
    );
    let v = summary(&o, d.path(), "j");
    verify(&out, &root);
    let per_peer = &v["bytes_per_peer"];
    assert!(
        per_peer[&sid].as_u64().unwrap_or(0) > 0,
        "the data came from the provider: {v}"
    );
    // The status file may predate the end of so short a fetch: the log
    // says how the server was found.
    let log = std::fs::read_to_string(d.path().join("j.log")).unwrap_or_default();
    assert!(
        log.contains("found providers of the root in the DHT") && log.contains("providers=1"),
        "found through a provider lookup: {log}"
    );
    let bs = status_of(&bstatus).unwrap_or(Value::Null);
    assert_eq!(
        bs["serve"]["bytes_served"].as_u64().unwrap_or(0),
        0,
        "the bootstrap peer served nothing of it"
    );
}
