//! `statesync bench gossip`: IDA gossip against flooding over a
//! gossipsub-like mesh and a Turbine-like tree, in the deterministic
//! network simulation of `statesync-gossip` (the real gossip core on every
//! node), on the same topology and seed; honest, with a share of the relays
//! Byzantine, and with a proposer that encodes inconsistently. Prints
//! p50/p95/max delivery times, the proposer's upload and the bytes on all
//! links, the ratios to flooding and the goals; writes an HTML report with
//! the delivery-time distributions (CDF).

use crate::outln;
use crate::output as ui;
use statesync_gossip::sim::{self, Byzantine, Outcome, SimConfig};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What to simulate.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Committee size (the proposer included).
    #[arg(long, default_value_t = 512)]
    pub nodes: usize,
    /// Block size (e.g. 2MB).
    #[arg(long, default_value = "2MB", value_parser = statesync_synth::parse_size)]
    pub block: u64,
    /// Upload and download bandwidth of every node, Mbit/s.
    #[arg(long, default_value_t = 20.0)]
    pub mbit: f64,
    /// Link latency range in ms, drawn per pair (e.g. 50-150).
    #[arg(long, default_value = "50-150", value_parser = parse_range)]
    pub latency: (u64, u64),
    /// Share of the relays that are Byzantine in the Byzantine runs.
    #[arg(long, default_value_t = 1.0 / 3.0)]
    pub byzantine: f64,
    /// Seed of the topology, latencies and faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The HTML report (delivery-time CDFs).
    #[arg(long, default_value = "gossip-report.html")]
    pub out: PathBuf,
}

fn parse_range(s: &str) -> std::result::Result<(u64, u64), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected LOW-HIGH in ms, e.g. 50-150"))?;
    let a: u64 = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u64 = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a > b {
        return Err(format!("{s:?}: the low end is above the high end"));
    }
    Ok((a, b))
}

#[derive(serde::Serialize)]
struct Run {
    scenario: &'static str,
    strategy: &'static str,
    honest: usize,
    delivered: usize,
    p50_s: f64,
    p95_s: f64,
    max_s: f64,
    proposer_upload: u64,
    proposer_upload_x_block: f64,
    total_bytes: u64,
    total_x_block: f64,
    rejected: usize,
    forged_detected: u64,
    wall_ms: u128,
    #[serde(skip)]
    delivery: Vec<f64>,
}

fn run_of(scenario: &'static str, cfg: &SimConfig, o: Outcome) -> Run {
    let block = cfg.block_len.max(1) as f64;
    Run {
        scenario,
        strategy: o.strategy,
        honest: o.delivery.len(),
        delivered: o.delivered(),
        p50_s: o.percentile(50.0),
        p95_s: o.percentile(95.0),
        max_s: o.percentile(100.0),
        proposer_upload: o.proposer_upload,
        proposer_upload_x_block: o.proposer_upload as f64 / block,
        total_bytes: o.total_bytes,
        total_x_block: o.total_bytes as f64 / block,
        rejected: o.rejected,
        forged_detected: o.forged_detected,
        wall_ms: o.wall_ms,
        delivery: o.delivery,
    }
}

#[derive(serde::Serialize)]
struct Goals {
    ida_p95_over_flood_p95: f64,
    ida_p95_goal_met: bool,
    proposer_upload_x_block: f64,
    upload_goal_met: bool,
    byzantine_all_decode: bool,
    inconsistent_all_reject: bool,
}

#[derive(serde::Serialize)]
struct Report<'a> {
    config: &'a SimConfig,
    runs: &'a [Run],
    goals: Goals,
}

pub fn run(args: Args, json: bool) -> Result<ExitCode> {
    if args.nodes < 2 || args.nodes > 4096 {
        return Err(format!("--nodes {}: between 2 and 4096", args.nodes).into());
    }
    if !(0.0..0.5).contains(&args.byzantine) {
        return Err(format!("--byzantine {}: a share below one half", args.byzantine).into());
    }
    if args.block == 0 || args.block > 32 << 20 {
        return Err(format!("--block {}: between 1 byte and 32 MiB", args.block).into());
    }
    if args.mbit.is_nan() || args.mbit <= 0.0 {
        return Err(format!("--mbit {}: a positive rate", args.mbit).into());
    }
    let base = SimConfig {
        nodes: args.nodes,
        up_bytes_per_sec: args.mbit * 1e6 / 8.0,
        down_bytes_per_sec: args.mbit * 1e6 / 8.0,
        latency_ms: args.latency,
        block_len: args.block as usize,
        seed: args.seed,
        ..SimConfig::default()
    };
    let drop = SimConfig {
        byzantine: args.byzantine,
        byzantine_mode: Byzantine::Drop,
        ..base.clone()
    };
    let forge = SimConfig {
        byzantine: args.byzantine,
        byzantine_mode: Byzantine::Forge,
        ..base.clone()
    };
    let bad_proposer = SimConfig {
        inconsistent_proposer: true,
        ..base.clone()
    };
    if !json {
        outln!(
            "gossip: {} nodes, {} block, {} Mbit/s up and down, {}-{} ms links, seed {}",
            args.nodes,
            ui::bytes(args.block),
            args.mbit,
            args.latency.0,
            args.latency.1,
            args.seed
        );
    }
    let mut runs: Vec<Run> = Vec::new();
    let mut step = |scenario: &'static str, cfg: &SimConfig, which: &[&str]| {
        for s in which {
            let o = match *s {
                "ida" => sim::run_ida(cfg),
                "flood" => sim::run_flood(cfg),
                _ => sim::run_tree(cfg),
            };
            let r = run_of(scenario, cfg, o);
            if !json {
                print_row(&r);
            }
            runs.push(r);
        }
    };
    if !json {
        outln!(
            "{:<20} {:<6} {:>9} {:>8} {:>8} {:>8} {:>12} {:>10} {:>7}",
            "scenario",
            "how",
            "delivered",
            "p50 s",
            "p95 s",
            "max s",
            "proposer up",
            "all links",
            "wall"
        );
    }
    let all = ["ida", "flood", "tree"];
    step("honest", &base, &all);
    step("byzantine-drop", &drop, &all);
    step("byzantine-forge", &forge, &["ida"]);
    step("inconsistent", &bad_proposer, &["ida"]);

    let find = |sc: &str, st: &str| runs.iter().find(|r| r.scenario == sc && r.strategy == st);
    let (Some(ida), Some(flood)) = (find("honest", "ida"), find("honest", "flood")) else {
        return Err("the honest runs are missing".into());
    };
    let p95_ratio = ida.p95_s / flood.p95_s;
    let byz_ok = ["byzantine-drop", "byzantine-forge"]
        .iter()
        .all(|sc| find(sc, "ida").is_some_and(|r| r.delivered == r.honest && r.honest > 0));
    let incons_ok = find("inconsistent", "ida")
        .is_some_and(|r| r.delivered == 0 && r.rejected == args.nodes - 1);
    let goals = Goals {
        ida_p95_over_flood_p95: p95_ratio,
        ida_p95_goal_met: p95_ratio <= 0.2,
        proposer_upload_x_block: ida.proposer_upload_x_block,
        upload_goal_met: ida.proposer_upload_x_block <= 2.0,
        byzantine_all_decode: byz_ok,
        inconsistent_all_reject: incons_ok,
    };
    std::fs::write(&args.out, html(&base, &runs, &goals))
        .map_err(|e| format!("writing {}: {e}", args.out.display()))?;
    if json {
        ui::print_json(&Report {
            config: &base,
            runs: &runs,
            goals,
        });
    } else {
        let tree = find("honest", "tree").map_or(f64::NAN, |t| t.p95_s / flood.p95_s);
        outln!(
            "p95 vs flooding: ida {:.3}x (goal <= 0.2x: {}), tree {:.3}x",
            p95_ratio,
            yes(goals.ida_p95_goal_met),
            tree
        );
        outln!(
            "proposer upload: {:.2}x the block (goal <= 2x: {})",
            goals.proposer_upload_x_block,
            yes(goals.upload_goal_met)
        );
        outln!(
            "every honest node decodes with {:.0}% of relays Byzantine (dropping, forging): {}",
            args.byzantine * 100.0,
            yes(byz_ok)
        );
        outln!(
            "every honest node rejects an inconsistently encoded block, with evidence: {}",
            yes(incons_ok)
        );
        outln!("report: {}", args.out.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn yes(b: bool) -> &'static str {
    if b { "met" } else { "NOT met" }
}

fn secs(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "never".into()
    }
}

fn print_row(r: &Run) {
    outln!(
        "{:<20} {:<6} {:>9} {:>8} {:>8} {:>8} {:>11.2}x {:>9.0}x {:>5}ms",
        r.scenario,
        r.strategy,
        format!("{}/{}", r.delivered, r.honest),
        secs(r.p50_s),
        secs(r.p95_s),
        secs(r.max_s),
        r.proposer_upload_x_block,
        r.total_x_block,
        r.wall_ms
    );
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLOURS: [(&str, &str); 3] = [
    ("ida", "#1b7837"),
    ("flood", "#b2182b"),
    ("tree", "#2166ac"),
];

/// One CDF chart: the share of honest nodes that have the block by time t.
fn cdf_svg(id: &str, title: &str, runs: &[&Run]) -> String {
    let (w, h, left, right, top, bottom) = (760.0, 320.0, 56.0, 16.0, 48.0, 40.0);
    let last = runs
        .iter()
        .flat_map(|r| r.delivery.iter().copied().filter(|t| t.is_finite()))
        .fold(0.1f64, f64::max);
    // Round ticks: a step of 1, 2 or 5 times a power of ten, at most 8.
    let mut step = 10f64.powf((last / 8.0).log10().floor());
    for f in [1.0, 2.0, 5.0, 10.0] {
        if last / (step * f) <= 8.0 {
            step *= f;
            break;
        }
    }
    let ticks = (last / step).ceil().max(1.0) as u32;
    let xmax = step * f64::from(ticks);
    let sx = |x: f64| left + (w - left - right) * x / xmax;
    let sy = |y: f64| h - bottom - (h - top - bottom) * y;
    let mut o = format!(
        r#"<svg id="{id}" width="{w}" height="{h}" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="12"><text x="{left}" y="16" font-weight="bold">{}</text>"#,
        esc(title)
    );
    for i in 0..=4 {
        let y = f64::from(i) / 4.0;
        let _ = write!(
            o,
            r##"<line x1="{left}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}%</text>"##,
            w - right,
            sy(y),
            sy(y),
            left - 6.0,
            sy(y) + 4.0,
            y * 100.0
        );
    }
    let prec = (-step.log10().floor()).max(0.0) as usize;
    for i in 0..=ticks {
        let x = step * f64::from(i);
        let _ = write!(
            o,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{top}" y2="{:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{x:.prec$}</text>"##,
            sx(x),
            sx(x),
            h - bottom,
            sx(x),
            h - bottom + 16.0
        );
    }
    let _ = write!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds after the proposal</text>"#,
        (left + w - right) / 2.0,
        h - 6.0
    );
    for (i, r) in runs.iter().enumerate() {
        let colour = COLOURS
            .iter()
            .find(|(s, _)| *s == r.strategy)
            .map_or("#444", |c| c.1);
        let n = r.delivery.len().max(1) as f64;
        let mut pts = vec![format!("{:.1},{:.1}", sx(0.0), sy(0.0))];
        for (j, t) in r.delivery.iter().enumerate() {
            if !t.is_finite() {
                break;
            }
            pts.push(format!("{:.1},{:.1}", sx(*t), sy(j as f64 / n)));
            pts.push(format!("{:.1},{:.1}", sx(*t), sy((j + 1) as f64 / n)));
        }
        let _ = write!(
            o,
            r#"<polyline class="series" data-series="{}" fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            r.strategy,
            pts.join(" ")
        );
        let lx = left + 10.0 + 170.0 * i as f64;
        let _ = write!(
            o,
            r#"<rect x="{lx:.1}" y="{:.1}" width="14" height="4" fill="{colour}"/><text x="{:.1}" y="{:.1}">{} (p95 {})</text>"#,
            top - 19.0,
            lx + 18.0,
            top - 14.0,
            r.strategy,
            secs(r.p95_s)
        );
    }
    o + "</svg>"
}

fn html(cfg: &SimConfig, runs: &[Run], goals: &Goals) -> String {
    let mut o = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>statesync: block gossip</title><style>body{font-family:sans-serif;max-width:800px;margin:2em auto;color:#222}table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}td:first-child,td:nth-child(2),th{text-align:left}</style></head><body>",
    );
    let _ = write!(
        o,
        "<h1>Block gossip</h1><p>{} nodes, a {} block, {:.0} Mbit/s up and down per node, {}-{} ms links, seed {}. The same topology and seed for every strategy; delivery is the time until an honest node has the whole block, checked.</p>",
        cfg.nodes,
        ui::bytes(cfg.block_len as u64),
        cfg.up_bytes_per_sec * 8.0 / 1e6,
        cfg.latency_ms.0,
        cfg.latency_ms.1,
        cfg.seed
    );
    for (sc, title) in [
        ("honest", "Every node honest"),
        ("byzantine-drop", "A third of the relays dropping"),
    ] {
        let rs: Vec<&Run> = runs.iter().filter(|r| r.scenario == sc).collect();
        if !rs.is_empty() {
            o += &cdf_svg(sc, title, &rs);
        }
    }
    o += "<table><tr><th>scenario</th><th>strategy</th><th>delivered</th><th>p50 s</th><th>p95 s</th><th>max s</th><th>proposer upload</th><th>all links</th></tr>";
    for r in runs {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}x</td><td>{:.0}x</td></tr>",
            r.scenario,
            r.strategy,
            r.delivered,
            r.honest,
            secs(r.p50_s),
            secs(r.p95_s),
            secs(r.max_s),
            r.proposer_upload_x_block,
            r.total_x_block
        );
    }
    let _ = write!(
        o,
        "</table><p>IDA p95 / flooding p95: {:.3} (goal at most 0.2: {}). Proposer upload {:.2}x the block (goal at most 2: {}). Every honest node decodes with Byzantine relays: {}. An inconsistently encoded block is rejected by every honest node: {}.</p></body></html>",
        goals.ida_p95_over_flood_p95,
        yes(goals.ida_p95_goal_met),
        goals.proposer_upload_x_block,
        yes(goals.upload_goal_met),
        yes(goals.byzantine_all_decode),
        yes(goals.inconsistent_all_reject)
    );
    o
}
