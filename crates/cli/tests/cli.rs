//! The `statesync` binary as a user runs it: real processes, real files.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

/// Runs the binary quietly.
fn run(args: &[&str]) -> Output {
    bin()
        .arg("--quiet")
        .args(args)
        .output()
        .expect("spawn statesync")
}

#[test]
fn generate_manifest_show_verify_and_detect_corruption() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let g = ok_json(&[
        "gen-state",
        "new",
        "--out",
        s(&state),
        "--files",
        "40",
        "--size",
        "3MiB",
        "--zero-pct",
        "20",
    ]);
    assert_eq!(g["files"], 40);
    let m = d.path().join("m");
    let c = ok_json(&[
        "manifest",
        "create",
        s(&state),
        "--out",
        s(&m),
        "--chunk-size",
        "64KiB",
    ]);
    let root = c["root"].as_str().unwrap().to_string();
    let show = ok_json(&["manifest", "show", s(&m), "--root", &root]);
    assert_eq!(show["root"], root.as_str());
    assert_eq!(show["header"]["file_count"], 40);
    assert!(show["zero_chunks"].as_u64().unwrap() > 0);
    // A wrong trusted root is refused.
    let wrong = "0".repeat(64);
    let out = run(&["manifest", "show", s(&m), "--root", &wrong]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected"));

    let v = ok_json(&["verify", s(&state), "--manifest", s(&m), "--root", &root]);
    assert_eq!(v["ok"], true);

    // Flip one byte deep inside the largest file.
    let files = show_files(&m);
    let (path, size) = files.iter().max_by_key(|(_, sz)| *sz).unwrap().clone();
    let p = state.join(&path);
    let mut data = std::fs::read(&p).unwrap();
    let at = (size / 2) as usize;
    data[at] ^= 0x40;
    std::fs::write(&p, &data).unwrap();
    let out = run(&["--json", "verify", s(&state), "--manifest", s(&m)]);
    assert_eq!(out.status.code(), Some(1), "verify must fail");
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["ok"], false);
    let corrupt = rep["corrupt"].as_array().unwrap();
    assert_eq!(corrupt.len(), 1);
    assert_eq!(corrupt[0]["path"], path.as_str());
    assert_eq!(
        corrupt[0]["offset"].as_u64().unwrap(),
        (at as u64) / 65536 * 65536
    );
}

fn show_files(m: &Path) -> Vec<(String, u64)> {
    let v = ok_json(&["manifest", "show", s(m), "--files"]);
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn malicious_manifest_with_traversal_is_refused_with_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    std::fs::create_dir_all(state.join("aa")).unwrap();
    std::fs::write(state.join("aa/x"), b"payload").unwrap();
    let m = d.path().join("m");
    ok_json(&[
        "manifest",
        "create",
        s(&state),
        "--out",
        s(&m),
        "--chunk-size",
        "4KiB",
    ]);
    let mut enc = std::fs::read(&m).unwrap();
    let pos = enc.windows(4).position(|w| w == b"aa/x").unwrap();
    enc[pos..pos + 2].copy_from_slice(b"..");
    let evil = d.path().join("evil");
    std::fs::write(&evil, &enc).unwrap();
    for args in [
        vec!["manifest", "show", s(&evil)],
        vec!["verify", s(&state), "--manifest", s(&evil)],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("`..`") && err.contains("../x"), "{err}");
    }
    // Truncated and empty manifests too.
    std::fs::write(&evil, &enc[..enc.len() / 2]).unwrap();
    let out = run(&["manifest", "show", s(&evil)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"));
}

#[test]
fn symlink_in_checkpoint_is_named() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    std::fs::create_dir_all(state.join("sub")).unwrap();
    std::fs::write(state.join("a"), b"a").unwrap();
    std::os::unix::fs::symlink("../../etc/passwd", state.join("sub/evil")).unwrap();
    let out = run(&[
        "manifest",
        "create",
        s(&state),
        "--out",
        s(&d.path().join("m")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sub/evil") && err.contains("symlink"), "{err}");
    assert!(!d.path().join("m").exists(), "no manifest written");
    // verify names such entries as differences (exit 1) with counts, and
    // checks the rest; a wrong trusted root is a difference too.
    std::fs::remove_file(state.join("sub/evil")).unwrap();
    let m = d.path().join("m");
    ok_json(&["manifest", "create", s(&state), "--out", s(&m)]);
    std::os::unix::fs::symlink("../../etc/passwd", state.join("sub/evil")).unwrap();
    let fifo = state.join("pipe");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::fs::write(state.join("extra"), b"x").unwrap();
    let out = run(&["verify", s(&state), "--manifest", s(&m)]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("unsupported sub/evil (symlink"), "{text}");
    assert!(text.contains("unsupported pipe (FIFO"), "{text}");
    assert!(text.contains("MISMATCH (1 extra, 2 unsupported)"), "{text}");
    let wrong = "33".repeat(32);
    let out = run(&["verify", s(&state), "--manifest", s(&m), "--root", &wrong]);
    assert_eq!(out.status.code(), Some(1));
    let out = run(&["verify", s(&state), "--manifest", s(&d.path().join("nope"))]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a usage error is not a difference"
    );
}

#[test]
fn mutate_incremental_manifest_and_diff() {
    let d = tempfile::tempdir().unwrap();
    let v1 = d.path().join("v1");
    let v2 = d.path().join("v2");
    let changes = d.path().join("changes.json");
    ok_json(&[
        "gen-state",
        "new",
        "--out",
        s(&v1),
        "--files",
        "50",
        "--size",
        "4MiB",
    ]);
    let m1 = d.path().join("m1");
    ok_json(&[
        "manifest",
        "create",
        s(&v1),
        "--out",
        s(&m1),
        "--chunk-size",
        "16KiB",
    ]);
    let mu = ok_json(&[
        "gen-state",
        "mutate",
        "--from",
        s(&v1),
        "--out",
        s(&v2),
        "--changes",
        s(&changes),
        "--chunk-size",
        "16384",
        "--changed-pct",
        "3",
        "--appended-pct",
        "10",
        "--deleted-pct",
        "4",
        "--added-pct",
        "4",
    ]);
    assert!(mu["chunks_changed"].as_u64().unwrap() > 0);
    let m2 = d.path().join("m2");
    let inc = ok_json(&[
        "manifest",
        "create",
        s(&v2),
        "--out",
        s(&m2),
        "--chunk-size",
        "16KiB",
        "--prev",
        s(&m1),
        "--changes",
        s(&changes),
        "--height",
        "5",
    ]);
    let m2f = d.path().join("m2f");
    let full = ok_json(&[
        "manifest",
        "create",
        s(&v2),
        "--out",
        s(&m2f),
        "--chunk-size",
        "16KiB",
    ]);
    assert_eq!(inc["root"], full["root"]);
    assert!(inc["report"]["bytes_hashed"].as_u64() < full["report"]["bytes_hashed"].as_u64());
    // Automatic mode from hard links gives the same root.
    let m2a = d.path().join("m2a");
    let auto = ok_json(&[
        "manifest",
        "create",
        s(&v2),
        "--out",
        s(&m2a),
        "--chunk-size",
        "16KiB",
        "--prev",
        s(&m1),
        "--prev-dir",
        s(&v1),
    ]);
    assert_eq!(auto["root"], full["root"]);
    assert!(auto["report"]["files_reused"].as_u64().unwrap() > 0);

    let local = format!("{}={}", s(&v1), s(&m1));
    let plan = ok_json(&["diff", "--target", s(&m2), "--local", &local]);
    let t = &plan["totals"];
    let sum: u64 = ["bytes_linked", "bytes_copy", "bytes_zero", "bytes_fetch"]
        .iter()
        .map(|k| t[k].as_u64().unwrap())
        .sum();
    assert_eq!(sum, t["bytes"].as_u64().unwrap());
    assert!(t["files_linked"].as_u64().unwrap() > 0);
    assert!(t["bytes_fetch"].as_u64().unwrap() > 0);
    assert!(t["bytes_fetch"].as_u64().unwrap() < t["bytes"].as_u64().unwrap() / 2);
    // Without a manifest for the local directory, it is computed.
    let plan2 = ok_json(&["diff", "--target", s(&m2), "--local", s(&v1)]);
    assert_eq!(plan2["totals"], plan["totals"]);
}

#[test]
fn checkpoint_store_commands() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let store = d.path().join("store");
    ok_json(&[
        "gen-state",
        "new",
        "--out",
        s(&state),
        "--files",
        "20",
        "--size",
        "2MiB",
    ]);
    for h in ["10", "20", "30"] {
        ok_json(&[
            "gen-state",
            "mutate",
            "--from",
            s(&state),
            "--in-place",
            "--chunk-size",
            "65536",
            "--changed-pct",
            "5",
            "--seed",
            h,
        ]);
        let c = ok_json(&[
            "checkpoint",
            "create",
            "--store",
            s(&store),
            "--height",
            h,
            "--from",
            s(&state),
            "--chunk-size",
            "64KiB",
        ]);
        assert_eq!(c["checkpoint"]["height"].as_u64().unwrap().to_string(), h);
        assert_eq!(c["incremental"], h != "10");
    }
    ok_json(&[
        "checkpoint",
        "pin",
        "--store",
        s(&store),
        "--height",
        "10",
        "--name",
        "syncing-peer",
    ]);
    let l = ok_json(&["checkpoint", "list", "--store", s(&store)]);
    assert_eq!(l["checkpoints"].as_array().unwrap().len(), 3);
    let p = ok_json(&["checkpoint", "prune", "--store", s(&store), "--keep", "1"]);
    assert_eq!(p["removed"], serde_json::json!([20]));
    assert_eq!(p["kept_pinned"], serde_json::json!([10]));
    let l = ok_json(&["checkpoint", "list", "--store", s(&store)]);
    let hs: Vec<u64> = l["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["height"].as_u64().unwrap())
        .collect();
    assert_eq!(hs, vec![10, 30]);
    // Height must grow.
    let out = run(&[
        "checkpoint",
        "create",
        "--store",
        s(&store),
        "--height",
        "25",
        "--from",
        s(&state),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not above"));
}

/// A checkpoint being created when the process is killed with SIGKILL is
/// never listed; the next open removes its staging directory; creating it
/// again works.
#[test]
fn kill_9_during_checkpoint_create_leaves_nothing_listed() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let store = d.path().join("store");
    ok_json(&[
        "gen-state",
        "new",
        "--out",
        s(&state),
        "--files",
        "400",
        "--size",
        "300MiB",
    ]);
    let mut child = bin()
        .arg("--quiet")
        .args([
            "checkpoint",
            "create",
            "--store",
            s(&store),
            "--height",
            "7",
            "--from",
            s(&state),
        ])
        .spawn()
        .unwrap();
    // Wait until the writer has copied some files into staging.
    let staging = store.join("staging");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut killed_mid_write = false;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            // Finished before we could kill it: still a valid run, but say so.
            eprintln!("create finished first ({status}); machine too fast for this size");
            break;
        }
        let busy = std::fs::read_dir(&staging)
            .map(|r| {
                r.filter_map(Result::ok)
                    .any(|e| count_files(&e.path()) > 20)
            })
            .unwrap_or(false);
        if busy {
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            killed_mid_write = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Reap it in every case (killed, finished, or past the deadline).
    let _ = child.kill();
    let _ = child.wait();
    let l = ok_json(&["checkpoint", "list", "--store", s(&store)]);
    if killed_mid_write {
        assert_eq!(
            l["checkpoints"].as_array().unwrap().len(),
            0,
            "half-written checkpoint listed"
        );
        assert_eq!(
            std::fs::read_dir(&staging).unwrap().count(),
            0,
            "stale staging not removed"
        );
        let c = ok_json(&[
            "checkpoint",
            "create",
            "--store",
            s(&store),
            "--height",
            "7",
            "--from",
            s(&state),
        ]);
        assert_eq!(c["checkpoint"]["height"], 7);
    }
    let l = ok_json(&["checkpoint", "list", "--store", s(&store)]);
    assert_eq!(l["checkpoints"].as_array().unwrap().len(), 1);
    assert!(killed_mid_write, "the writer was never caught mid-write");
}

#[test]
fn demo_runs_and_reports() {
    let d = tempfile::tempdir().unwrap();
    let v = ok_json(&[
        "demo",
        "--walkthrough",
        "--dir",
        s(d.path()),
        "--size",
        "8MiB",
        "--files",
        "60",
    ]);
    let plan = &v["plan"];
    assert!(plan["bytes_fetch"].as_u64().unwrap() < plan["bytes"].as_u64().unwrap());
    assert!(v["incremental_report"]["files_reused"].as_u64().unwrap() > 0);
}

/// The README's main command, scaled down: a network of node processes, a
/// late joiner reaching the head, a summary and an HTML report.
#[test]
fn network_demo_joiner_reaches_the_head_and_reports() {
    let d = tempfile::tempdir().unwrap();
    let report = d.path().join("report.html");
    let v = ok_json(&[
        "demo",
        "--dir",
        s(&d.path().join("work")),
        "--state-mib",
        "16",
        "--block-ms",
        "100",
        "--join-after",
        "6",
        "--follow-secs",
        "2",
        "--report",
        s(&report),
    ]);
    let sum = &v["summary"];
    assert!(sum["stats"]["state_syncs"].as_u64().unwrap() >= 1, "{v}");
    assert!(
        sum["stats"]["state_bytes_fetched"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert_eq!(sum["low"].as_u64(), Some(1), "history not backfilled: {v}");
    let html = std::fs::read_to_string(&report).unwrap();
    // Every node is plotted under its name; the phases are spans; no peer
    // ids on display.
    for name in ["validator", "follower-1", "joiner"] {
        assert!(
            html.contains(&format!("data-series=\"{name}\"")),
            "{name} not plotted"
        );
    }
    assert!(
        html.contains("data-phase=\"state-sync\""),
        "no state sync span"
    );
    assert!(
        html.contains("data-phase=\"following\""),
        "no following span"
    );
    assert!(!html.contains("12D3KooW"), "peer ids on display");
    rendered_in_a_browser(&report, d.path());
}

/// Loads the report in headless Chromium and checks, on the screenshot,
/// that the plots were drawn: the joiner's line and the state sync and
/// following spans have their colours on screen.
fn rendered_in_a_browser(report: &Path, dir: &Path) {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("this test needs headless Chromium (Debian: apt-get install chromium); .ci/run installs it");
    let shot = dir.join("report.png");
    let st = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=900,2400",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium").display()
        ))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", report.display()))
        .output()
        .unwrap();
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let count = |rgb: [u8; 3]| {
        buf[..info.buffer_size()]
            .chunks(px)
            .filter(|p| p[..3].iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= 6))
            .count()
    };
    let joiner = count([0xd6, 0x5f, 0x5f]);
    let sync = count([0x48, 0x78, 0xd0]);
    let following = count([0x6a, 0xcc, 0x64]);
    assert!(joiner > 500, "joiner's line not drawn ({joiner} px)");
    assert!(sync > 500, "state sync span not drawn ({sync} px)");
    assert!(following > 500, "following span not drawn ({following} px)");
}

/// Output to a closed pipe ends the command quietly (no panic, exit 0);
/// errors come as JSON with --json; existing outputs and missing inputs
/// are refused.
#[test]
fn closed_stdout_json_errors_and_refused_inputs() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    ok_json(&[
        "gen-state",
        "new",
        "--out",
        s(&src),
        "--files",
        "3000",
        "--size",
        "4MiB",
    ]);
    let m = d.path().join("m");
    ok_json(&["manifest", "create", s(&src), "--out", s(&m)]);
    // `manifest show --files | head -1`.
    let mut child = bin()
        .args(["manifest", "show", s(&m), "--files"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Read;
        let mut out = child.stdout.take().unwrap();
        let mut first = [0u8; 64];
        out.read_exact(&mut first).unwrap();
    } // the reader goes away
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // An existing --out is refused, nothing written through it.
    let o = run(&["--json", "gen-state", "new", "--out", s(&src)]);
    assert_eq!(o.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON error");
    assert!(
        v["error"].as_str().unwrap().contains("already exists"),
        "{v}"
    );
    // A missing store is not created by a typo.
    let typo = d.path().join("typo");
    let o = run(&["checkpoint", "list", "--store", s(&typo)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!typo.exists());
    let o = run(&[
        "checkpoint",
        "create",
        "--store",
        s(&typo),
        "--height",
        "1",
        "--from",
        s(&d.path().join("missing")),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!typo.exists());
    // `id` and `genesis` speak JSON too.
    let v = ok_json(&["id", "--data", s(&d.path().join("n"))]);
    assert!(v["peer_id"].as_str().unwrap().starts_with("12D3"));
}

/// `bench gossip` on a small committee: JSON with every run and the goals,
/// and an HTML report with the three strategies' CDFs.
#[test]
fn bench_gossip_reports_runs_goals_and_cdfs() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("gossip.html");
    let out = bin()
        .args([
            "--json", "bench", "gossip", "--nodes", "64", "--block", "256KB",
        ])
        .arg("--out")
        .arg(&html)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = v["runs"].as_array().unwrap();
    let find = |sc: &str, st: &str| {
        runs.iter()
            .find(|r| r["scenario"] == sc && r["strategy"] == st)
            .unwrap_or_else(|| panic!("no {sc} {st} run"))
    };
    for st in ["ida", "flood", "tree"] {
        let r = find("honest", st);
        assert_eq!(r["delivered"], 63, "{st}: {r}");
    }
    for sc in ["byzantine-drop", "byzantine-forge"] {
        let r = find(sc, "ida");
        assert_eq!(r["delivered"], r["honest"], "{sc}: {r}");
        assert_eq!(r["honest"], 42);
    }
    assert!(
        find("byzantine-forge", "ida")["forged_detected"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(find("inconsistent", "ida")["rejected"], 63);
    assert_eq!(v["goals"]["byzantine_all_decode"], true);
    assert_eq!(v["goals"]["inconsistent_all_reject"], true);
    assert!(v["goals"]["proposer_upload_x_block"].as_f64().unwrap() < 2.0);
    let page = std::fs::read_to_string(&html).unwrap();
    for st in ["ida", "flood", "tree"] {
        assert!(
            page.contains(&format!("data-series=\"{st}\"")),
            "no {st} CDF in the report"
        );
    }
    // Bad input: a clear error, no report.
    let bad = run(&[
        "bench",
        "gossip",
        "--nodes",
        "1",
        "--out",
        "/nonexistent/x.html",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--nodes 1"));
}
