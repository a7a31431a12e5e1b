//! Validators as separate processes, each with its own key only: the
//! proposer spreads 2 MiB block proposals by IDA gossip, the others check,
//! execute and vote, and a quorum of votes makes each block final. Real
//! processes on 127.0.0.1, real libp2p, real files, real redb; the crash is
//! a SIGKILL.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Net {
    dir: PathBuf,
    genesis: PathBuf,
}

impl Net {
    fn new(dir: &Path, extra: &[&str]) -> Net {
        let g = dir.join("genesis");
        let mut args = vec!["genesis", "--out", s(&g)];
        args.extend_from_slice(extra);
        let out = bin().args(&args).output().unwrap();
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

    fn node(&self, name: &str, extra: &[String]) -> (Proc, String) {
        let data = self.dir.join(name);
        let addr = self.dir.join(format!("{name}.addr"));
        let _ = std::fs::remove_file(&addr);
        let status = self.dir.join(format!("{name}.status"));
        let mut args: Vec<String> = [
            "node",
            "--genesis",
            s(&self.genesis),
            "--data",
            s(&data),
            "--addr-file",
            s(&addr),
            "--status-file",
            s(&status),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        args.extend_from_slice(extra);
        let refs: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
        let p = spawn(&refs, &self.dir.join(format!("{name}.log")));
        wait_for(&format!("{name} address"), Duration::from_secs(60), || {
            addr.exists()
        });
        (p, std::fs::read_to_string(&addr).unwrap())
    }

    /// Validator `i` with its own key only, peering with `peers`.
    fn validator(&self, i: usize, peers: &[String], extra: &[&str]) -> (Proc, String) {
        let key = self.dir.join("genesis").join(format!("validator-{i}.key"));
        let mut args = vec![
            "--role".to_string(),
            "validator".into(),
            "--validator-key".into(),
            s(&key).into(),
        ];
        for p in peers {
            args.push("--peer".into());
            args.push(p.clone());
        }
        args.extend(extra.iter().map(|x| x.to_string()));
        self.node(&format!("v{i}"), &args)
    }

    fn status(&self, name: &str) -> Value {
        std::fs::read(self.dir.join(format!("{name}.status")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    fn head(&self, name: &str) -> u64 {
        self.status(name)["chain"]["head"].as_u64().unwrap_or(0)
    }

    fn committee(&self, name: &str, what: &str) -> u64 {
        self.status(name)["chain"]["stats"]["committee"][what]
            .as_u64()
            .unwrap_or(0)
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out += &format!("--- {}\n", p.display());
                for l in tail.into_iter().rev() {
                    out += l;
                    out += "\n";
                }
            }
        }
        out
    }
}

/// Seven validators (quorum 5), one of which relays forged shards, and two
/// followers: 2 MiB proposals reach every honest validator and the
/// followers by gossip, and every block becomes final with votes of
/// independent keys, announced as final heads; the forger is detected;
/// with a validator SIGKILLed the chain keeps finalising; restarted, it
/// catches up and votes again.
#[test]
fn seven_validator_processes_finalise_multi_mb_blocks_through_faults() {
    let d = tempfile::tempdir().unwrap();
    let net = Net::new(
        d.path(),
        &[
            "--validators",
            "7",
            "--state-mib",
            "8",
            "--file-kib",
            "256",
            "--checkpoint-interval",
            "10",
            "--block-ms",
            "400",
            "--payload-kib",
            "2048",
        ],
    );
    let mut procs: Vec<Option<Proc>> = Vec::new();
    let mut addrs: Vec<String> = Vec::new();
    for i in 0..7 {
        let extra: &[&str] = if i == 3 { &["--forge-gossip"] } else { &[] };
        let (p, a) = net.validator(i, &addrs, extra);
        procs.push(Some(p));
        addrs.push(a);
    }
    // f1 knows every validator (it subscribes to all of them), f2 only the
    // proposer and validator 1.
    let mut followers = Vec::new();
    for (f, n) in [("f1", 7), ("f2", 2)] {
        let mut args = Vec::new();
        for a in &addrs[..n] {
            args.push("--peer".to_string());
            args.push(a.clone());
        }
        followers.push(net.node(f, &args).0);
    }
    let logs = || net.logs();
    wait_for("12 final blocks", Duration::from_secs(120), || {
        net.head("v0") >= 12
    });
    // Every honest validator and both followers have the blocks.
    wait_for("everyone near the head", Duration::from_secs(60), || {
        let h = net.head("v0");
        (0..7)
            .filter(|i| *i != 3)
            .all(|i| net.head(&format!("v{i}")) + 2 >= h)
            && ["f1", "f2"].iter().all(|f| net.head(f) >= 10)
    });
    let h = net.head("v0");
    assert!(
        net.committee("v0", "votes_received") >= 4 * (h - 1),
        "finality without the voters' own votes? {}",
        net.status("v0")
    );
    for i in [1, 2, 4, 5, 6] {
        assert!(
            net.committee(&format!("v{i}"), "votes_sent") >= h - 3,
            "v{i} did not vote: {}\n{}",
            net.status(&format!("v{i}")),
            logs()
        );
    }
    // The followers follow at the head.
    wait_for("followers at the head", Duration::from_secs(60), || {
        let h = net.head("v0");
        ["f1", "f2"].iter().all(|f| net.head(f) + 2 >= h)
    });
    let start = net.head("v0");
    wait_for("5 more blocks", Duration::from_secs(60), || {
        net.head("v0") >= start + 5
    });
    std::thread::sleep(Duration::from_secs(2));
    let h = net.head("v0");
    for n in ["v0", "v1", "f1", "f2"] {
        eprintln!(
            "{n}: head {}, stats {}",
            net.head(n),
            net.status(n)["chain"]["stats"]
        );
    }
    let chain_stat = |n: &str, w: &str| net.status(n)["chain"]["stats"][w].as_u64().unwrap_or(0);
    // Followers receive proposals by gossip like the validators: f1 (a
    // listener of every validator) decodes them and joins each with its
    // final head instead of receiving the block whole.
    assert!(
        net.committee("f1", "subscribed") >= 6,
        "f1 subscribed to {} validators\n{}",
        net.committee("f1", "subscribed"),
        logs()
    );
    for f in ["f1", "f2"] {
        let follow = chain_stat(f, "imported_follow");
        assert!(
            follow >= 4
                && net.committee(f, "proposals_received") >= h - 4
                && net.committee(f, "assembled") + 2 >= follow,
            "{f} did not get the proposals by gossip: {}\n{}",
            net.status(f),
            logs()
        );
        // Followers tell each other they have the bodies: no whole blocks
        // between them.
        assert!(
            chain_stat(f, "pushed_bytes") <= 2 * (2 << 20) + (1 << 20),
            "{f} pushed whole blocks: {}",
            net.status(f)
        );
    }
    // The proposer uploads each block about once, as shards: final blocks
    // go out as final heads to the members and listeners, whole to nobody.
    assert!(
        chain_stat("v0", "finals_sent") >= 6 * (h - 2),
        "{}",
        net.status("v0")
    );
    assert!(
        chain_stat("v0", "pushed_bytes") <= 3 * (2 << 20),
        "the proposer pushed whole blocks: {}",
        net.status("v0")
    );
    // The forging relay is detected by honest validators.
    let forged: u64 = [1, 2, 4, 5, 6]
        .iter()
        .map(|i| net.committee(&format!("v{i}"), "gossip_forged"))
        .sum();
    assert!(forged > 0, "forged shards went unnoticed\n{}", logs());
    // One validator down: the chain keeps finalising with the other six.
    if let Some(mut p) = procs[5].take() {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    let before = net.head("v0");
    wait_for(
        "8 more final blocks with validator 5 down",
        Duration::from_secs(60),
        || net.head("v0") >= before + 8,
    );
    // It comes back (same data, same key), catches up and votes again.
    let (p, _) = net.validator(5, &addrs[..2], &[]);
    procs[5] = Some(p);
    wait_for(
        "validator 5 back at the head and voting",
        Duration::from_secs(90),
        || net.head("v5") + 2 >= net.head("v0") && net.committee("v5", "votes_sent") > 0,
    );
    assert!(net.head("v0") >= before + 8);
}
