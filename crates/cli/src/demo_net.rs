//! `statesync demo`: a local network of chain nodes on 127.0.0.1 — one
//! validator producing blocks over a generated state, followers that join
//! by state sync — and a fresh node that joins late. Shows the late
//! joiner's phases with progress, ends with a summary, and writes an HTML
//! report (heights over time, bytes per peer, events).

use crate::output as ui;
use serde_json::Value;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(clap::Args, Clone)]
pub struct NetDemoArgs {
    /// State size of the generated chain, MiB.
    #[arg(long, default_value_t = 256)]
    pub state_mib: u64,
    /// Block time of the demo chain, milliseconds.
    #[arg(long, default_value_t = 200)]
    pub block_ms: u64,
    /// Blocks between checkpoints.
    #[arg(long, default_value_t = 10)]
    pub checkpoint_interval: u64,
    /// Followers started with the validator (they join by state sync too).
    #[arg(long, default_value_t = 2)]
    pub followers: usize,
    /// Seconds before the late joiner starts.
    #[arg(long, default_value_t = 30)]
    pub join_after: u64,
    /// Seconds the joiner follows the head before the demo ends.
    #[arg(long, default_value_t = 5)]
    pub follow_secs: u64,
    /// Serving limit per peer, MiB/s (makes the transfer visible).
    #[arg(long, default_value_t = 16)]
    pub serve_mib: u64,
    /// Where to write the HTML report.
    #[arg(long, default_value = "statesync-demo.html")]
    pub report: PathBuf,
}

struct Node {
    name: String,
    /// Demo seconds when it was started (its report's clock starts there).
    started: f64,
    child: Child,
    status: PathBuf,
    report: PathBuf,
    addr: String,
    log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        // SAFETY: signals a child process we own.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status(p: &Path) -> Value {
    std::fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .unwrap_or(Value::Null)
}

fn start(dir: &Path, genesis: &Path, name: &str, args: &[String], started: f64) -> Result<Node> {
    let exe = std::env::current_exe()?;
    let data = dir.join(name);
    let addr = dir.join(format!("{name}.addr"));
    let status = dir.join(format!("{name}.status"));
    let report = dir.join(format!("{name}.report"));
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(exe)
        .arg("node")
        .arg("--genesis")
        .arg(genesis)
        .arg("--data")
        .arg(&data)
        .arg("--addr-file")
        .arg(&addr)
        .arg("--status-file")
        .arg(&status)
        .arg("--report")
        .arg(&report)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::from(File::create(&log)?))
        .spawn()?;
    let t = Instant::now();
    while !addr.exists() {
        if t.elapsed() > Duration::from_secs(60) {
            return Err(format!("{name} did not start; see {}", log.display()).into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let a = std::fs::read_to_string(&addr)?;
    Ok(Node {
        name: name.into(),
        started,
        child,
        status,
        report,
        addr: a,
        log,
    })
}

pub fn run(a: NetDemoArgs, dir: &Path, json: bool) -> Result<ExitCode> {
    let say = |s: String| {
        if !json {
            crate::outln!("{s}");
        }
    };
    let t0 = Instant::now();
    let el = || t0.elapsed().as_secs_f64();
    let gdir = dir.join("genesis");
    let g = crate::node::GenesisArgs {
        out: gdir.clone(),
        validators: 4,
        state_mib: a.state_mib,
        file_kib: 1024,
        checkpoint_interval: a.checkpoint_interval,
        block_ms: a.block_ms,
        txs_per_block: 200,
        hot_percent: 5,
        seed: 1,
        payload_kib: 0,
    };
    let genesis = crate::node::write_genesis(&g)?;
    say(format!(
        "[{:5.1}s] chain: 4 validators (quorum 3), {} state in 1 MiB page files, a block every {} ms, a checkpoint every {} blocks",
        el(),
        ui::bytes(a.state_mib << 20),
        a.block_ms,
        a.checkpoint_interval
    ));
    let limits = vec![
        "--peer-rate-mib".to_string(),
        a.serve_mib.to_string(),
        "--global-rate-mib".to_string(),
        (a.serve_mib * 2).to_string(),
    ];
    // Four validator processes, each with its own key: validator 0
    // proposes, the others check, execute and vote (3 votes make a block
    // final); proposals travel by IDA gossip among them.
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..4 {
        let mut vargs = vec![
            "--role".to_string(),
            "validator".to_string(),
            "--validator-key".into(),
            gdir.join(format!("validator-{i}.key"))
                .display()
                .to_string(),
        ];
        for n in &nodes {
            vargs.push("--peer".into());
            vargs.push(n.addr.clone());
        }
        vargs.extend(limits.clone());
        let name = if i == 0 {
            "validator".to_string()
        } else {
            format!("validator-{i}")
        };
        nodes.push(start(dir, &genesis, &name, &vargs, el())?);
    }
    say(format!(
        "[{:5.1}s] 4 validator processes started, one key each: validator 0 proposes, the others execute and vote (3 votes make a block final)",
        el()
    ));
    for i in 0..a.followers {
        let mut args = vec!["--peer".to_string(), nodes[0].addr.clone()];
        args.extend(limits.clone());
        let n = start(dir, &genesis, &format!("follower-{}", i + 1), &args, el())?;
        nodes.push(n);
    }
    say(format!(
        "[{:5.1}s] {} followers started: they state sync from the validator as soon as it has a checkpoint",
        el(),
        a.followers
    ));
    // Wait for the join time, reporting the network.
    let join_at = Duration::from_secs(a.join_after);
    let mut last = Instant::now();
    let mut heads: Vec<(f64, u64)> = Vec::new();
    while t0.elapsed() < join_at {
        std::thread::sleep(Duration::from_millis(200));
        heads.push((
            el(),
            status(&nodes[0].status)["chain"]["head"]
                .as_u64()
                .unwrap_or(0),
        ));
        if last.elapsed() >= Duration::from_secs(4) {
            last = Instant::now();
            let line: Vec<String> = nodes
                .iter()
                .map(|n| {
                    let c = &status(&n.status)["chain"];
                    format!(
                        "{} {} {}",
                        n.name,
                        c["phase"].as_str().unwrap_or("starting"),
                        c["head"].as_u64().unwrap_or(0)
                    )
                })
                .collect();
            say(format!("[{:5.1}s] network: {}", el(), line.join(" | ")));
        }
    }
    let mut jargs: Vec<String> = Vec::new();
    for n in &nodes {
        jargs.push("--peer".into());
        jargs.push(n.addr.clone());
    }
    jargs.push("--exit-after-following".into());
    jargs.push(a.follow_secs.to_string());
    let head_at_join = status(&nodes[0].status)["chain"]["head"]
        .as_u64()
        .unwrap_or(0);
    let mut joiner = start(dir, &genesis, "joiner", &jargs, el())?;
    say(format!(
        "[{:5.1}s] a fresh node joins at chain height {head_at_join}, with no state and no blocks",
        el()
    ));
    let mut last_phase = String::new();
    let mut last_line = Instant::now();
    let joined = Instant::now();
    let code = loop {
        if let Ok(Some(st)) = joiner.child.try_wait() {
            break st.code();
        }
        if joined.elapsed() > Duration::from_secs(300) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(250));
        let v = status(&nodes[0].status)["chain"]["head"]
            .as_u64()
            .unwrap_or(0);
        heads.push((el(), v));
        let st = status(&joiner.status);
        let c = &st["chain"];
        let phase = c["phase"].as_str().unwrap_or("starting").to_string();
        let show = phase != last_phase || last_line.elapsed() >= Duration::from_secs(1);
        if show {
            last_line = Instant::now();
            let detail = match phase.as_str() {
                "state-sync" if st["fetch"]["bytes_needed"].as_u64().unwrap_or(0) == 0 => format!(
                    "checkpoint {}: fetching the manifest and planning",
                    c["target"].as_u64().unwrap_or(0)
                ),
                "state-sync" => {
                    let f = &st["fetch"];
                    let done = f["bytes_done"].as_u64().unwrap_or(0);
                    let need = f["bytes_needed"].as_u64().unwrap_or(0);
                    format!(
                        "checkpoint {}: {} / {} fetched ({:.0}%)",
                        c["target"].as_u64().unwrap_or(0),
                        ui::bytes(done),
                        ui::bytes(need),
                        100.0 * done as f64 / need.max(1) as f64
                    )
                }
                "replay" | "following" => format!(
                    "height {} of {}, history from {}",
                    c["head"].as_u64().unwrap_or(0),
                    v,
                    c["low"].as_u64().unwrap_or(0)
                ),
                _ => format!("chain at {v}"),
            };
            say(format!("[{:5.1}s] joiner {phase:<10} {detail}", el()));
            last_phase = phase;
        }
    };
    if code != Some(0) {
        return Err(format!(
            "the joiner did not reach the head (exit {code:?}); its log: {}",
            joiner.log.display()
        )
        .into());
    }
    let took = joined.elapsed().as_secs_f64();
    let final_head = status(&nodes[0].status)["chain"]["head"]
        .as_u64()
        .unwrap_or(0);
    // Names for peer ids.
    let mut names: HashMap<String, String> = HashMap::new();
    for n in &nodes {
        if let Some(id) = n.addr.rsplit('/').next() {
            names.insert(id.to_string(), n.name.clone());
        }
    }
    let report = std::fs::read_to_string(&joiner.report)?;
    let lines: Vec<Value> = report
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let summary = lines
        .iter()
        .rev()
        .find_map(|l| l.get("summary").cloned())
        .unwrap_or(Value::Null);
    let stats = &summary["stats"];
    let fetched = stats["state_bytes_fetched"].as_u64().unwrap_or(0);
    let reused = stats["state_bytes_reused"].as_u64().unwrap_or(0);
    say(String::new());
    say(format!(
        "joiner reached the head and followed it for {}s: {:.1}s from start to done",
        a.follow_secs, took
    ));
    say(format!(
        "  state sync: {} fetched from peers, {} reused locally, {} switch(es) to a newer checkpoint",
        ui::bytes(fetched),
        ui::bytes(reused),
        stats["switches"].as_u64().unwrap_or(0)
    ));
    say(format!(
        "  replay: {} blocks by range sync, {} followed at the head; backfill: {} batches, history from {}",
        stats["imported_range"].as_u64().unwrap_or(0),
        stats["imported_follow"].as_u64().unwrap_or(0),
        stats["backfill_batches"].as_u64().unwrap_or(0),
        summary["low"].as_u64().unwrap_or(0)
    ));
    say(format!(
        "  heads: joiner {} / validator {final_head}; decision: {}",
        summary["head"].as_u64().unwrap_or(0),
        summary["decision"]["reason"].as_str().unwrap_or("-")
    ));
    for (id, b) in summary["state_bytes_per_peer"]
        .as_object()
        .into_iter()
        .flatten()
    {
        say(format!(
            "  from {:<12} {:>10} of state",
            names.get(id).map(String::as_str).unwrap_or(id),
            ui::bytes(b.as_u64().unwrap_or(0))
        ));
    }
    // Every node's timeline, the joiner last (the nodes still run: their
    // reports hold samples up to now).
    let mut timelines = Vec::new();
    for n in nodes.iter().chain(std::iter::once(&joiner)) {
        let text = std::fs::read_to_string(&n.report).unwrap_or_default();
        timelines.push(crate::report::Timeline {
            name: n.name.clone(),
            offset: n.started,
            lines: text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect(),
        });
    }
    let setup = format!(
        "Four validator processes (one key each; validator 0 proposes, the others vote) made a block final every {} ms over a {} state (a checkpoint every {} blocks); {} followers joined by state sync. A fresh node joined after {} s and reached the head, then followed it: {:.1} s from its start to done.",
        a.block_ms,
        ui::bytes(a.state_mib << 20),
        a.checkpoint_interval,
        a.followers,
        a.join_after,
        took
    );
    let html = crate::report::render(&crate::report::Report {
        setup,
        nodes: &timelines,
        names: &names,
        took,
    });
    let _ = &heads;
    std::fs::write(&a.report, html)?;
    say(format!("report: {}", a.report.display()));
    if json {
        crate::output::print_json(&serde_json::json!({
            "seconds_to_done": took,
            "summary": summary,
            "report": a.report,
        }));
    }
    drop(nodes);
    Ok(ExitCode::SUCCESS)
}
