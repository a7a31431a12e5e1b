//! `statesync bench blocks`: block range sync over libp2p against replaying
//! the same blocks from the local store, on the same generated chain, runs
//! alternated; and the time to the head of the scaled IC incident.

use crate::bench::median;
use crate::output as ui;
use serde_json::Value;
use statesync_chain::{Block, BlockStore, Genesis, Replica, ValidatorKey};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node(dir: &Path, genesis: &Path, name: &str, args: &[&str]) -> Result<(Kill, String)> {
    let addr = dir.join(format!("{name}.addr"));
    let _ = std::fs::remove_file(&addr);
    let child = Command::new(std::env::current_exe()?)
        .arg("--quiet")
        .arg("node")
        .arg("--genesis")
        .arg(genesis)
        .arg("--data")
        .arg(dir.join(name))
        .arg("--addr-file")
        .arg(&addr)
        .arg("--report")
        .arg(dir.join(format!("{name}.report")))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(
            dir.join(format!("{name}.log")),
        )?))
        .spawn()?;
    let k = Kill(child);
    let t = Instant::now();
    while !addr.exists() {
        if t.elapsed() > Duration::from_secs(60) {
            return Err(format!("{name} did not start").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let a = std::fs::read_to_string(&addr)?;
    Ok((k, a))
}

/// Seconds between two phase events in a node's report.
fn phase_span(report: &Path, from: &str, to: &str) -> Option<f64> {
    let r = std::fs::read_to_string(report).ok()?;
    let ev: Vec<(f64, String)> = r
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["t"].as_f64()?, v["event"].as_str()?.to_string())))
        .collect();
    let a = ev.iter().find(|(_, e)| e.contains(from))?.0;
    let b = ev.iter().find(|(t, e)| *t >= a && e.contains(to))?.0;
    Some(b - a)
}

pub fn run(
    dir: &Path,
    blocks: u64,
    rounds: usize,
    state_mib: u64,
    incident: bool,
    json: bool,
) -> Result<ExitCode> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let (mut g, keys) = Genesis::demo(4, 11);
    g.state_files = ((state_mib << 20) / (256 << 10)).max(1) as u32;
    g.file_size = 256 << 10;
    g.checkpoint_interval = 10;
    g.block_ms = 1;
    let spec = g.spec()?;
    let genesis = dir.join("genesis.json");
    std::fs::write(&genesis, serde_json::to_string_pretty(&g)?)?;
    let signers: Vec<(u16, ValidatorKey)> = keys
        .into_iter()
        .take(3)
        .enumerate()
        .map(|(i, k)| (i as u16, k))
        .collect();
    // The chain: produced in process.
    let t = Instant::now();
    {
        let (mut a, _) =
            Replica::open(&dir.join("source"), spec.clone()).map_err(|e| e.to_string())?;
        for i in 0..blocks {
            a.produce(&signers, 1_700_000_000_000 + i)
                .map_err(|e| e.to_string())?;
        }
    }
    eprintln!(
        "chain of {blocks} blocks ({} txs each) over {} generated in {:.1}s",
        g.txs_per_block,
        ui::bytes(state_mib << 20),
        t.elapsed().as_secs_f64()
    );
    let mut local = Vec::new();
    let mut range = Vec::new();
    for round in 0..rounds {
        // A: replay from the local block store, batches of 64 as range sync.
        let bdir = dir.join(format!("replay-{round}"));
        let (mut b, _) = Replica::open(&bdir, spec.clone()).map_err(|e| e.to_string())?;
        let src = BlockStore::open(&dir.join("source").join("blocks.redb"))?;
        let t = Instant::now();
        let mut h = 1;
        while h <= blocks {
            let end = (h + 63).min(blocks);
            let batch: Vec<Block> = (h..=end)
                .map(|x| {
                    src.get(x)
                        .ok()
                        .flatten()
                        .ok_or(format!("block {x} missing"))
                })
                .collect::<std::result::Result<_, _>>()?;
            b.import(&batch).map_err(|e| e.to_string())?;
            h = end + 1;
        }
        let s = t.elapsed().as_secs_f64();
        drop(src);
        drop(b);
        let _ = std::fs::remove_dir_all(&bdir);
        local.push(s);
        // B: range sync over libp2p from a node serving the source.
        let (server, addr) = node(dir, &genesis, "source", &[])?;
        let name = format!("range-{round}");
        {
            // Genesis state prepared outside the timed window.
            let _ = Replica::open(&dir.join(&name), spec.clone()).map_err(|e| e.to_string())?;
        }
        let (mut j, _) = node(
            dir,
            &genesis,
            &name,
            &[
                "--peer",
                &addr,
                "--catch-up",
                "replay",
                "--exit-after-following",
                "0",
                "--horizon",
                "0",
            ],
        )?;
        let t = Instant::now();
        loop {
            if let Some(st) = j.0.try_wait()? {
                if !st.success() {
                    return Err(format!(
                        "range sync run {round} failed; see {}",
                        dir.join(format!("{name}.log")).display()
                    )
                    .into());
                }
                break;
            }
            if t.elapsed() > Duration::from_secs(600) {
                return Err("range sync run timed out".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let s = phase_span(
            &dir.join(format!("{name}.report")),
            "-> Replay",
            "-> Following",
        )
        .ok_or("range sync report lacks the replay phase")?;
        range.push(s);
        drop(server);
        let _ = std::fs::remove_dir_all(dir.join(&name));
        eprintln!(
            "round {}: local replay {:.2}s, range sync {:.2}s",
            round + 1,
            local[round],
            s
        );
    }
    let (ml, mr) = (median(&mut local), median(&mut range));
    let (rl, rr) = (blocks as f64 / ml, blocks as f64 / mr);
    let mut out = serde_json::json!({
        "blocks": blocks,
        "local_replay_blocks_per_sec": rl,
        "range_sync_blocks_per_sec": rr,
        "ratio": rr / rl,
    });
    if !json {
        crate::outln!(
            "blocks: {blocks}, {} txs each, checkpoint every 10 blocks, medians of {rounds} alternating runs",
            g.txs_per_block
        );
        crate::outln!("  replay from the local store   {ml:>7.2}s  {rl:>8.0} blocks/s");
        crate::outln!("  range sync over libp2p        {mr:>7.2}s  {rr:>8.0} blocks/s");
        crate::outln!(
            "  range sync / local replay     {:.2}x (goal >= 0.8x)",
            rr / rl
        );
    }
    if incident {
        let secs = incident_run(&dir.join("incident"))?;
        out["incident_seconds_to_head"] = serde_json::json!(secs);
        if !json {
            crate::outln!(
                "  scaled IC incident (192 MiB state, 24 MiB/s serving, a checkpoint every 1 s): joiner start to following the head in {secs:.1}s"
            );
        }
    }
    if json {
        ui::print_json(&out);
    }
    Ok(ExitCode::SUCCESS)
}

/// The scaled incident: seconds from the joiner's start to following.
fn incident_run(dir: &Path) -> Result<f64> {
    let _ = std::fs::remove_dir_all(dir);
    let ga = crate::node::GenesisArgs {
        out: dir.join("g"),
        validators: 4,
        state_mib: 192,
        file_kib: 1024,
        checkpoint_interval: 10,
        block_ms: 100,
        txs_per_block: 200,
        hot_percent: 3,
        seed: 5,
        payload_kib: 0,
    };
    let genesis = crate::node::write_genesis(&ga)?;
    let k = |i: u32| {
        dir.join("g")
            .join(format!("validator-{i}.key"))
            .display()
            .to_string()
    };
    let (k0, k1, k2) = (k(0), k(1), k(2));
    let (_v, addr) = node(
        dir,
        &genesis,
        "v0",
        &[
            "--role",
            "validator",
            "--validator-key",
            &k0,
            "--validator-key",
            &k1,
            "--validator-key",
            &k2,
            "--peer-rate-mib",
            "24",
            "--global-rate-mib",
            "24",
        ],
    )?;
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    let (mut j, _) = node(
        dir,
        &genesis,
        "j",
        &[
            "--peer",
            &addr,
            "--exit-after-following",
            "0",
            "--horizon",
            "0",
        ],
    )?;
    loop {
        if let Some(st) = j.0.try_wait()? {
            if !st.success() {
                return Err("incident joiner failed".into());
            }
            return Ok(t.elapsed().as_secs_f64());
        }
        if t.elapsed() > Duration::from_secs(600) {
            return Err("incident joiner timed out".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
