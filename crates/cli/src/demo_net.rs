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

fn start(dir: &Path, genesis: &Path, name: &str, args: &[String]) -> Result<Node> {
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
    let mut vargs = vec!["--role".to_string(), "validator".to_string()];
    for i in 0..3 {
        vargs.push("--validator-key".into());
        vargs.push(
            gdir.join(format!("validator-{i}.key"))
                .display()
                .to_string(),
        );
    }
    vargs.extend(limits.clone());
    let v0 = start(dir, &genesis, "validator", &vargs)?;
    say(format!(
        "[{:5.1}s] validator started (leader, signs with 3 of the 4 keys), generating the genesis state",
        el()
    ));
    let mut nodes = vec![v0];
    for i in 0..a.followers {
        let mut args = vec!["--peer".to_string(), nodes[0].addr.clone()];
        args.extend(limits.clone());
        let n = start(dir, &genesis, &format!("follower-{}", i + 1), &args)?;
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
    let mut joiner = start(dir, &genesis, "joiner", &jargs)?;
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
    let html = render_html(&a, &lines, &heads, &names, took);
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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// (label, colour, points)
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A small SVG line chart: series of (x, y) with a colour and a label.
fn line_chart(
    series: &[Series<'_>],
    bands: &[(f64, f64, &str, &str)],
    xlabel: &str,
    ylabel: &str,
) -> String {
    let (w, h, l, b) = (760.0, 300.0, 60.0, 40.0);
    let pts = series.iter().flat_map(|s| s.2.iter());
    let xmax = pts.clone().map(|p| p.0).fold(1.0f64, f64::max);
    let xmin = pts
        .clone()
        .map(|p| p.0)
        .fold(xmax, f64::min)
        .min(bands.iter().map(|b| b.0).fold(xmax, f64::min));
    let ymax = pts.map(|p| p.1).fold(1.0f64, f64::max);
    let sx = |x: f64| l + (x - xmin) / (xmax - xmin).max(1e-9) * (w - l - 10.0);
    let sy = |y: f64| h - b - y / ymax * (h - b - 10.0);
    let mut o = format!(
        r#"<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="12">"#
    );
    for (x0, x1, colour, label) in bands {
        o += &format!(
            r##"<rect x="{:.1}" y="10" width="{:.1}" height="{:.1}" fill="{colour}" opacity="0.25"><title>{label}</title></rect><text x="{:.1}" y="24" fill="#444">{label}</text>"##,
            sx(*x0),
            (sx(*x1) - sx(*x0)).max(1.0),
            h - b - 10.0,
            sx(*x0) + 2.0
        );
    }
    o += &format!(
        r#"<line x1="{l}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        h - b,
        w - 10.0,
        h - b
    );
    o += &format!(
        r#"<line x1="{l}" y1="10" x2="{l}" y2="{}" stroke="black"/>"#,
        h - b
    );
    for i in 0..=4 {
        let y = ymax * i as f64 / 4.0;
        o += &format!(
            r#"<text x="{}" y="{:.1}" text-anchor="end">{:.0}</text>"#,
            l - 4.0,
            sy(y) + 4.0,
            y
        );
        let x = xmin + (xmax - xmin) * i as f64 / 4.0;
        o += &format!(
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{:.0}</text>"#,
            sx(x),
            h - b + 16.0,
            x
        );
    }
    o += &format!(
        r#"<text x="{}" y="{}" text-anchor="middle">{xlabel}</text>"#,
        (l + w) / 2.0,
        h - 4.0
    );
    o += &format!(
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{ylabel}</text>"#,
        h / 2.0,
        h / 2.0
    );
    for (i, (label, colour, s)) in series.iter().enumerate() {
        let path: Vec<String> = s
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        o += &format!(
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        o += &format!(
            r#"<text x="{}" y="{}" fill="{colour}">{label}</text>"#,
            l + 10.0 + 160.0 * i as f64,
            h - b - 8.0
        );
    }
    o + "</svg>"
}

fn bar_chart(bars: &[(String, u64, u64)]) -> String {
    let (w, row) = (760.0, 26.0);
    let h = row * bars.len() as f64 + 30.0;
    let max = bars.iter().map(|b| b.1 + b.2).max().unwrap_or(1).max(1) as f64;
    let mut o = format!(
        r#"<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="12">"#
    );
    for (i, (name, state, blocks)) in bars.iter().enumerate() {
        let y = 10.0 + row * i as f64;
        let ws = *state as f64 / max * 480.0;
        let wb = *blocks as f64 / max * 480.0;
        o += &format!(r#"<text x="0" y="{:.1}">{}</text>"#, y + 15.0, esc(name));
        o += &format!(r##"<rect x="130" y="{y:.1}" width="{ws:.1}" height="18" fill="#4878d0"/>"##);
        o += &format!(
            r##"<rect x="{:.1}" y="{y:.1}" width="{wb:.1}" height="18" fill="#ee854a"/>"##,
            130.0 + ws
        );
        o += &format!(
            r#"<text x="{:.1}" y="{:.1}">{} state + {} blocks</text>"#,
            136.0 + ws + wb,
            y + 14.0,
            ui::bytes(*state),
            ui::bytes(*blocks)
        );
    }
    o + "</svg>"
}

fn render_html(
    a: &NetDemoArgs,
    lines: &[Value],
    heads: &[(f64, u64)],
    names: &HashMap<String, String>,
    took: f64,
) -> String {
    // The joiner's clock starts at its own start; align with the demo's by
    // its first sample and the validator samples' times.
    let samples: Vec<&Value> = lines.iter().filter(|l| l.get("phase").is_some()).collect();
    let offset = a.join_after as f64;
    let joiner: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| {
            (
                offset + s["t"].as_f64().unwrap_or(0.0),
                s["head"].as_u64().unwrap_or(0) as f64,
            )
        })
        .collect();
    let chain: Vec<(f64, f64)> = heads.iter().map(|(t, h)| (*t, *h as f64)).collect();
    let mut bands = Vec::new();
    let colour = |p: &str| match p {
        "state-sync" | "await-anchor" | "adopting" => "#4878d0",
        "replay" => "#ee854a",
        "following" => "#6acc64",
        _ => "#cccccc",
    };
    let mut cur: Option<(f64, String)> = None;
    for s in &samples {
        let t = offset + s["t"].as_f64().unwrap_or(0.0);
        let p = s["phase"].as_str().unwrap_or("").to_string();
        match &cur {
            Some((_, q)) if *q == p => {}
            Some((t0, q)) => {
                bands.push((*t0, t, colour(q), q.clone()));
                cur = Some((t, p));
            }
            None => cur = Some((t, p)),
        }
    }
    if let (Some((t0, q)), Some(last)) = (cur, joiner.last()) {
        bands.push((t0, last.0, colour(&q), q));
    }
    let band_refs: Vec<(f64, f64, &str, &str)> = bands
        .iter()
        .map(|(a, b, c, d)| (*a, *b, *c, d.as_str()))
        .collect();
    let heights = line_chart(
        &[
            ("chain head (validator)", "#333333", chain),
            ("late joiner", "#d65f5f", joiner),
        ],
        &band_refs,
        "seconds since the demo started",
        "block height",
    );
    let summary = lines
        .iter()
        .rev()
        .find_map(|l| l.get("summary"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut per_peer: HashMap<String, (u64, u64)> = HashMap::new();
    for (id, b) in summary["state_bytes_per_peer"]
        .as_object()
        .into_iter()
        .flatten()
    {
        per_peer.entry(id.clone()).or_default().0 += b.as_u64().unwrap_or(0);
    }
    for (id, b) in summary["block_bytes_per_peer"]
        .as_object()
        .into_iter()
        .flatten()
    {
        per_peer.entry(id.clone()).or_default().1 += b.as_u64().unwrap_or(0);
    }
    let mut bars: Vec<(String, u64, u64)> = per_peer
        .into_iter()
        .map(|(id, (s, b))| (names.get(&id).cloned().unwrap_or(id), s, b))
        .collect();
    bars.sort();
    let events: Vec<String> = lines
        .iter()
        .filter_map(|l| {
            let e = l.get("event")?.as_str()?;
            Some(format!(
                "<tr><td>{:.1}</td><td>{}</td></tr>",
                offset + l["t"].as_f64().unwrap_or(0.0),
                esc(e)
            ))
        })
        .collect();
    let stats = serde_json::to_string_pretty(&summary).unwrap_or_default();
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>statesync demo</title>
<style>body{{font-family:sans-serif;max-width:820px;margin:2em auto;color:#222}} td{{padding:2px 10px;vertical-align:top}} pre{{background:#f6f6f6;padding:8px;overflow:auto}}</style></head><body>
<h1>statesync demo: a late joiner catches up</h1>
<p>A validator produced a block every {} ms over a {} state (checkpoint every {} blocks); {} followers joined by state sync. A fresh node joined after {} s and reached the head, then followed it: {:.1} s from its start to done.</p>
<h2>Block height over time</h2>{heights}
<p>Bands: blue = state sync, orange = replay (range sync), green = following.</p>
<h2>Bytes the joiner received, per peer</h2>{}
<p>Blue: state (checkpoint chunks); orange: blocks (replay and backfill).</p>
<h2>Joiner events</h2><table>{}</table>
<h2>Joiner summary</h2><pre>{}</pre>
</body></html>"#,
        a.block_ms,
        ui::bytes(a.state_mib << 20),
        a.checkpoint_interval,
        a.followers,
        a.join_after,
        took,
        bar_chart(&bars),
        events.join(""),
        esc(&stats)
    )
}
