//! The reference chain end to end: real node processes on 127.0.0.1, real
//! libp2p, real files, real redb; crashes are SIGKILL.

mod common;

use common::*;
use serde_json::Value;
use statesync_chain::BlockStore;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Net {
    dir: PathBuf,
    genesis: PathBuf,
}

impl Net {
    fn new(dir: &Path, extra: &[&str]) -> Net {
        let g = dir.join("genesis");
        let mut args = vec!["genesis", "--out", s(&g)];
        args.extend_from_slice(extra);
        let out = common::bin().args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Net {
            dir: dir.to_path_buf(),
            genesis: g.join("genesis.json"),
        }
    }

    /// Starts a node; returns it and its address once listening.
    fn node(&self, name: &str, extra: &[&str]) -> (Proc, String) {
        let data = self.dir.join(name);
        let addr = self.dir.join(format!("{name}.addr"));
        let _ = std::fs::remove_file(&addr);
        let status = self.dir.join(format!("{name}.status"));
        let report = self.dir.join(format!("{name}.report"));
        let mut args = vec![
            "node",
            "--genesis",
            s(&self.genesis),
            "--data",
            s(&data),
            "--addr-file",
            s(&addr),
            "--status-file",
            s(&status),
            "--report",
            s(&report),
        ];
        args.extend_from_slice(extra);
        let p = spawn(&args, &self.dir.join(format!("{name}.log")));
        wait_for(&format!("{name} address"), Duration::from_secs(60), || {
            addr.exists()
        });
        (p, std::fs::read_to_string(&addr).unwrap())
    }

    fn validator(&self, extra: &[&str]) -> (Proc, String) {
        let k = |i: u32| self.dir.join("genesis").join(format!("validator-{i}.key"));
        let (k0, k1, k2) = (k(0), k(1), k(2));
        let mut args = vec![
            "--role",
            "validator",
            "--validator-key",
            s(&k0),
            "--validator-key",
            s(&k1),
            "--validator-key",
            s(&k2),
        ];
        args.extend_from_slice(extra);
        self.node("v0", &args)
    }

    fn status(&self, name: &str) -> Value {
        std::fs::read(self.dir.join(format!("{name}.status")))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|v| v["chain"].clone())
            .unwrap_or(Value::Null)
    }

    fn head(&self, name: &str) -> u64 {
        self.status(name)["head"].as_u64().unwrap_or(0)
    }

    fn phase(&self, name: &str) -> String {
        self.status(name)["phase"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn summary(&self, name: &str) -> Value {
        let r = std::fs::read_to_string(self.dir.join(format!("{name}.report"))).unwrap();
        r.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|v| v.get("summary").cloned())
            .unwrap_or_else(|| panic!("no summary in {name}'s report:\n{r}"))
    }

    fn events(&self, name: &str) -> Vec<String> {
        let r =
            std::fs::read_to_string(self.dir.join(format!("{name}.report"))).unwrap_or_default();
        r.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v.get("event").and_then(|e| e.as_str()).map(String::from))
            .collect()
    }

    fn blocks(&self, name: &str) -> BlockStore {
        BlockStore::open(&self.dir.join(name).join("blocks.redb")).unwrap()
    }
}

/// Every block the joiner holds is the validator's block at that height.
fn same_chain(a: &BlockStore, b: &BlockStore) -> (u64, u64) {
    let (low, high) = b.bounds().unwrap().unwrap();
    for h in low..=high {
        let x = a
            .get(h)
            .unwrap()
            .unwrap_or_else(|| panic!("validator lacks {h}"));
        let y = b.get(h).unwrap().unwrap();
        assert_eq!(x.hash(), y.hash(), "block {h} differs");
    }
    (low, high)
}

fn finish(p: &mut Proc, name: &str, timeout: Duration) {
    let code = p.wait_exit(timeout);
    assert_eq!(code, Some(0), "{name} did not finish; log:\n{}", p.log());
}

#[test]
fn a_late_joiner_state_syncs_backfills_and_follows() {
    let t = tempfile::tempdir().unwrap();
    let net = Net::new(
        t.path(),
        &[
            "--state-mib",
            "32",
            "--block-ms",
            "100",
            "--checkpoint-interval",
            "10",
        ],
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let maddr = format!("127.0.0.1:{port}");
    let (mut v0, a0) = net.validator(&["--metrics", &maddr]);
    let (mut f1, a1) = net.node("f1", &["--peer", &a0]);
    wait_for("f1 following", Duration::from_secs(60), || {
        net.phase("f1") == "following" && net.head("v0") >= 30
    });
    let (mut j, _) = net.node(
        "j",
        &["--peer", &a0, "--peer", &a1, "--exit-after-following", "3"],
    );
    finish(&mut j, "joiner", Duration::from_secs(120));
    let sum = net.summary("j");
    assert!(sum["stats"]["state_syncs"].as_u64().unwrap() >= 1, "{sum}");
    assert!(
        sum["stats"]["imported_follow"].as_u64().unwrap() >= 1,
        "never followed: {sum}"
    );
    let events = net.events("j");
    assert!(
        events.iter().any(|e| e.contains("backfill complete")),
        "{events:?}"
    );
    let joiner_head = sum["head"].as_u64().unwrap();
    let m = scrape(port);
    assert!(
        metric(&m, "statesync_chain_head").unwrap_or(0.0) >= joiner_head as f64 - 5.0,
        "{m}"
    );
    assert!(
        metric(&m, "statesync_served_block_bytes_total").unwrap_or(0.0) > 0.0,
        "{m}"
    );
    assert!(
        metric(&m, "statesync_blocks_produced_total").unwrap_or(0.0) >= joiner_head as f64 - 5.0,
        "{m}"
    );
    assert_eq!(v0.terminate(), Some(143));
    assert_eq!(f1.terminate(), Some(143));
    let (low, high) = same_chain(&net.blocks("v0"), &net.blocks("j"));
    assert_eq!(low, 1, "history not backfilled to genesis");
    // The executor may have stored one more block while the loop was exiting.
    assert!(high >= joiner_head, "{high} < {joiner_head}");
    // The joiner's checkpoints verify against their manifests.
    let (store, _) = statesync_store::Store::open(t.path().join("j/store")).unwrap();
    let cps = store.list().unwrap();
    assert!(!cps.is_empty());
    for c in cps {
        let m = store.load_manifest(c.height).unwrap();
        statesync_manifest::verify_dir(&store.state_dir(c.height), &m, None).unwrap();
    }
}

#[test]
fn a_node_behind_by_a_few_blocks_catches_up_by_replay_alone() {
    let t = tempfile::tempdir().unwrap();
    let net = Net::new(
        t.path(),
        &[
            "--state-mib",
            "16",
            "--block-ms",
            "100",
            "--checkpoint-interval",
            "10",
        ],
    );
    let (mut v0, a0) = net.validator(&[]);
    let (f1, _) = net.node("f1", &["--peer", &a0]);
    wait_for("f1 following", Duration::from_secs(60), || {
        net.phase("f1") == "following" && net.head("f1") >= 25
    });
    drop(f1); // SIGKILL
    let killed_at = net.head("f1");
    wait_for("the chain moves on", Duration::from_secs(30), || {
        net.head("v0") >= killed_at + 20
    });
    let (mut f1, _) = net.node("f1", &["--peer", &a0, "--exit-after-following", "2"]);
    finish(&mut f1, "restarted follower", Duration::from_secs(60));
    let sum = net.summary("f1");
    assert_eq!(sum["stats"]["state_syncs"].as_u64(), Some(0), "{sum}");
    assert!(
        sum["stats"]["imported_range"].as_u64().unwrap() >= 10,
        "{sum}"
    );
    assert_eq!(sum["decision"]["plan"].as_str(), Some("Replay"), "{sum}");
    assert_eq!(v0.terminate(), Some(143));
    same_chain(&net.blocks("v0"), &net.blocks("f1"));
}

#[test]
fn a_joiner_with_an_old_checkpoint_fetches_only_what_changed() {
    let t = tempfile::tempdir().unwrap();
    let state: u64 = 64 << 20;
    let net = Net::new(
        t.path(),
        &[
            "--state-mib",
            "64",
            "--file-kib",
            "256",
            "--block-ms",
            "50",
            "--checkpoint-interval",
            "10",
            "--hot-percent",
            "5",
        ],
    );
    let (mut v0, a0) = net.validator(&[]);
    let (f1, _) = net.node("f1", &["--peer", &a0]);
    wait_for("f1 following", Duration::from_secs(60), || {
        net.phase("f1") == "following" && net.head("f1") >= 25
    });
    drop(f1);
    let h = net.head("f1");
    wait_for("the chain moves on", Duration::from_secs(60), || {
        net.head("v0") >= h + 60
    });
    let (mut f1, _) = net.node(
        "f1",
        &[
            "--peer",
            &a0,
            "--catch-up",
            "state-sync",
            "--exit-after-following",
            "2",
        ],
    );
    finish(&mut f1, "restarted follower", Duration::from_secs(90));
    let sum = net.summary("f1");
    let fetched = sum["stats"]["state_bytes_fetched"].as_u64().unwrap();
    let reused = sum["stats"]["state_bytes_reused"].as_u64().unwrap();
    assert!(sum["stats"]["state_syncs"].as_u64().unwrap() >= 1, "{sum}");
    assert!(fetched < state / 3, "fetched {fetched} of {state}: {sum}");
    assert!(reused > state / 2, "reused only {reused}: {sum}");
    assert_eq!(v0.terminate(), Some(143));
    same_chain(&net.blocks("v0"), &net.blocks("f1"));
}

/// The Internet Computer's incident, scaled down: a state that takes longer
/// to sync than the checkpoint interval. The joiner switches to newer
/// checkpoints (keeping what it fetched), then replays and follows.
#[test]
fn ic_incident_scaled_state_sync_slower_than_checkpoints() {
    let t = tempfile::tempdir().unwrap();
    let state: u64 = 192 << 20;
    let net = Net::new(
        t.path(),
        &[
            "--state-mib",
            "192",
            "--block-ms",
            "100",
            "--checkpoint-interval",
            "10",
            "--hot-percent",
            "3",
        ],
    );
    // Serving capped at 24 MiB/s: the sync takes ~8 s, checkpoints come
    // every second.
    let (mut v0, a0) = net.validator(&["--peer-rate-mib", "24", "--global-rate-mib", "24"]);
    wait_for("a few checkpoints", Duration::from_secs(120), || {
        net.head("v0") >= 20
    });
    let start = Instant::now();
    let (mut j, _) = net.node(
        "j",
        &[
            "--peer",
            &a0,
            "--switch-after-secs",
            "0",
            "--exit-after-following",
            "3",
            "--horizon",
            "0",
        ],
    );
    finish(&mut j, "joiner", Duration::from_secs(240));
    let took = start.elapsed();
    let validator_head = net.head("v0");
    let sum = net.summary("j");
    let fetched = sum["stats"]["state_bytes_fetched"].as_u64().unwrap();
    eprintln!("scaled incident: joiner reached the head and followed; {took:.1?} in all, {sum}");
    assert!(
        sum["stats"]["switches"].as_u64().unwrap() >= 1,
        "never moved to a newer checkpoint: {sum}"
    );
    assert!(
        fetched < state + state / 2,
        "switching refetched too much: {fetched} of {state}"
    );
    assert!(
        sum["stats"]["imported_follow"].as_u64().unwrap() >= 1,
        "{sum}"
    );
    // At exit the joiner was at the head: within a few blocks of the
    // validator's status (written every 250 ms, i.e. ~3 blocks stale).
    let head = sum["head"].as_u64().unwrap();
    assert!(
        head + 6 >= validator_head,
        "joiner at {head}, validator at {validator_head}"
    );
    assert_eq!(v0.terminate(), Some(143));
    same_chain(&net.blocks("v0"), &net.blocks("j"));
}

/// NEAR's "restart during sync left nodes unbootable": a joiner killed by
/// SIGKILL in the middle of its state sync restarts, reuses what it had
/// fetched (even though the chain has a newer checkpoint by then) and
/// reaches the head.
#[test]
fn a_joiner_killed_mid_state_sync_restarts_and_keeps_its_chunks() {
    let t = tempfile::tempdir().unwrap();
    let state: u64 = 64 << 20;
    let net = Net::new(
        t.path(),
        &[
            "--state-mib",
            "64",
            "--block-ms",
            "100",
            "--checkpoint-interval",
            "10",
            "--hot-percent",
            "3",
        ],
    );
    let (mut v0, a0) = net.validator(&["--peer-rate-mib", "12", "--global-rate-mib", "12"]);
    wait_for("a checkpoint", Duration::from_secs(60), || {
        net.head("v0") >= 12
    });
    let (j, _) = net.node("j", &["--peer", &a0]);
    let fetched = || {
        std::fs::read(t.path().join("j.status"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["fetch"]["bytes_done"].as_u64())
            .unwrap_or(0)
    };
    wait_for("half the state fetched", Duration::from_secs(60), || {
        fetched() >= state / 2
    });
    let before = fetched();
    drop(j); // SIGKILL mid-transfer
    let (mut j, _) = net.node(
        "j",
        &[
            "--peer",
            &a0,
            "--exit-after-following",
            "2",
            "--horizon",
            "0",
        ],
    );
    finish(&mut j, "restarted joiner", Duration::from_secs(120));
    let sum = net.summary("j");
    let refetched = sum["stats"]["state_bytes_fetched"].as_u64().unwrap();
    let reused = sum["stats"]["state_bytes_reused"].as_u64().unwrap();
    assert!(
        reused >= before / 2,
        "kept only {reused} of the {before} fetched before the crash: {sum}"
    );
    assert!(
        refetched + before / 2 <= state + state / 4,
        "refetched {refetched}: {sum}"
    );
    assert_eq!(v0.terminate(), Some(143));
    same_chain(&net.blocks("v0"), &net.blocks("j"));
}

/// A joiner whose disk is full when it starts a state sync keeps running
/// (each failure is local: retried with a growing pause, no peer blamed)
/// and catches up once space is freed. Before, the node exited when the
/// staging area could not be created.
#[test]
fn a_node_whose_disk_fills_during_state_sync_recovers_when_space_is_freed() {
    let t = tempfile::tempdir().unwrap();
    let net = Net::new(
        t.path(),
        &[
            "--state-mib",
            "32",
            "--block-ms",
            "100",
            "--checkpoint-interval",
            "10",
        ],
    );
    let (_v0, a0) = net.validator(&[]);
    let dir = s(t.path());
    let mnt = format!("{dir}/mnt");
    // The joiner runs in a user and mount namespace on a 20 MiB tmpfs that
    // grows when the test says so; its log and status stay outside.
    let script = format!(
        "mkdir -p {mnt} && mount -t tmpfs -o size=20m tmpfs {mnt} || exit 90\n\
         {exe} node --genesis {genesis} --data {mnt}/j --peer {a0} --status-file {dir}/j.status \
           > {dir}/j.log 2>&1 &\n\
         P=$!\n\
         while [ ! -e {dir}/grow ]; do sleep 0.1; done\n\
         mount -o remount,size=1g {mnt} || exit 91\n\
         while [ ! -e {dir}/stop ]; do sleep 0.1; done\n\
         kill $P; wait $P; echo $? > {dir}/j.rc\n",
        exe = env!("CARGO_BIN_EXE_statesync"),
        genesis = s(&net.genesis),
    );
    common::require_unshare();
    /// Releases the namespace script (and so the node) however the test
    /// ends, so no process outlives it holding the harness's pipes.
    struct Release<'a>(&'a Path, std::process::Child);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0.join("grow"), b"");
            let _ = std::fs::write(self.0.join("stop"), b"");
            let _ = self.1.wait();
        }
    }
    let mut ns = Release(
        t.path(),
        std::process::Command::new("unshare")
            .args(["-rm", "sh", "-c", &script])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(t.path().join("j.log")).unwrap_or_default();
    // Failing even to create the next staging area (the old code exited
    // here).
    wait_for(
        "a state sync that cannot start on the full disk",
        Duration::from_secs(60),
        || log().contains("cannot start"),
    );
    assert!(log().contains("No space left on device"), "{}", log());
    std::fs::write(t.path().join("grow"), b"").unwrap();
    wait_for(
        "the joiner following after space was freed",
        Duration::from_secs(90),
        || net.phase("j") == "following" && net.head("j") > 0,
    );
    std::fs::write(t.path().join("stop"), b"").unwrap();
    let st = ns.1.wait().unwrap();
    assert!(st.success(), "namespace script: {st:?}\n{}", log());
    // Stopped by SIGTERM, not dead before.
    assert_eq!(
        std::fs::read_to_string(t.path().join("j.rc"))
            .unwrap()
            .trim(),
        "143",
        "{}",
        log()
    );
    let failures = log().matches("state sync failed").count();
    assert!(failures <= 12, "retried {failures} times: {}", log());
    assert!(!log().to_lowercase().contains("banned"), "{}", log());
}
