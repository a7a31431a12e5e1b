//! The demo's HTML report: static SVG charts and tables, readable without
//! JavaScript. Every node's height over time; a zoomed panel of the
//! joiner's catch-up with its phases as labelled spans; bytes per second
//! per peer; a summary table; the joiner's events.

use crate::output as ui;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

/// One node's timeline as read from its `--report` file.
pub struct Timeline {
    /// The node's name in the demo.
    pub name: String,
    /// Demo seconds at which the node's own clock started.
    pub offset: f64,
    /// Its report lines (samples, events, summary).
    pub lines: Vec<Value>,
}

impl Timeline {
    fn samples(&self) -> impl Iterator<Item = &Value> {
        self.lines.iter().filter(|l| l.get("phase").is_some())
    }

    fn summary(&self) -> &Value {
        self.lines
            .iter()
            .rev()
            .find_map(|l| l.get("summary"))
            .unwrap_or(&Value::Null)
    }

    fn t(&self, l: &Value) -> f64 {
        self.offset + l["t"].as_f64().unwrap_or(0.0)
    }
}

/// What the report is about.
pub struct Report<'a> {
    /// One line on the setup.
    pub setup: String,
    /// Every node, the joiner last.
    pub nodes: &'a [Timeline],
    /// Peer id -> node name.
    pub names: &'a HashMap<String, String>,
    /// Seconds from the joiner's start to done.
    pub took: f64,
}

const WIDTH: f64 = 820.0;
const PALETTE: [&str; 6] = [
    "#333333", "#4878d0", "#6acc64", "#956cb4", "#8c613c", "#dc7ec0",
];
const JOINER: &str = "#d65f5f";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Round tick values covering `[lo, hi]`: steps of 1, 2 or 5 times a
/// power of ten, about `n` of them.
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-9);
    let raw = span / n.max(1) as f64;
    let p = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p);
    let mut v = Vec::new();
    let mut x = (lo / step).ceil() * step;
    while x <= hi + 1e-9 {
        v.push(if x.abs() < 1e-9 { 0.0 } else { x });
        x += step;
    }
    v
}

fn fmt_tick(x: f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{}", x.round() as i64)
    } else {
        format!("{x:.1}")
    }
}

/// A chart area with axes mapping data to pixels.
struct Axes {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    w: f64,
    h: f64,
    left: f64,
    top: f64,
    bottom: f64,
}

impl Axes {
    fn sx(&self, x: f64) -> f64 {
        self.left + (x - self.x0) / (self.x1 - self.x0).max(1e-9) * (self.w - self.left - 12.0)
    }
    fn sy(&self, y: f64) -> f64 {
        self.h
            - self.bottom
            - (y - self.y0) / (self.y1 - self.y0).max(1e-9) * (self.h - self.bottom - self.top)
    }

    fn frame(&self, o: &mut String, xlabel: &str, ylabel: &str) {
        let (l, b, h, w) = (self.left, self.bottom, self.h, self.w);
        for y in ticks(self.y0, self.y1, 5) {
            let py = self.sy(y);
            let _ = write!(
                o,
                r##"<line x1="{l}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                w - 12.0,
                l - 6.0,
                py + 4.0,
                fmt_tick(y)
            );
        }
        for x in ticks(self.x0, self.x1, 8) {
            let px = self.sx(x);
            let _ = write!(
                o,
                r##"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="#999"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                h - b,
                h - b + 4.0,
                h - b + 18.0,
                fmt_tick(x)
            );
        }
        let _ = write!(
            o,
            r##"<line x1="{l}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/><line x1="{l}" y1="{:.1}" x2="{l}" y2="{:.1}" stroke="#333"/>"##,
            h - b,
            w - 12.0,
            h - b,
            self.top,
            h - b
        );
        let _ = write!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{xlabel}</text><text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">{ylabel}</text>"#,
            (l + w) / 2.0,
            h - 6.0,
            (self.top + h - b) / 2.0,
            (self.top + h - b) / 2.0
        );
    }

    fn line(&self, o: &mut String, id: &str, colour: &str, pts: &[(f64, f64)], width: f64) {
        let p: Vec<String> = pts
            .iter()
            .filter(|(x, _)| *x >= self.x0 - 1e-9 && *x <= self.x1 + 1e-9)
            .map(|(x, y)| format!("{:.1},{:.1}", self.sx(*x), self.sy(*y)))
            .collect();
        let _ = write!(
            o,
            r#"<polyline class="series" data-series="{}" fill="none" stroke="{colour}" stroke-width="{width}" points="{}"/>"#,
            esc(id),
            p.join(" ")
        );
    }
}

fn svg_open(id: &str, w: f64, h: f64) -> String {
    format!(
        r#"<svg id="{id}" width="{w}" height="{h}" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="12">"#
    )
}

/// A legend in rows from `(x, y)`, wrapping before the chart's right edge;
/// returns the height it took.
fn legend(o: &mut String, items: &[(String, &str)], x: f64, y: f64) -> f64 {
    let mut cx = x;
    let mut y = y;
    let mut rows = 1.0;
    for (label, colour) in items {
        let w = 26.0 + 7.0 * label.len() as f64;
        if cx > x && cx + w > WIDTH - 12.0 {
            cx = x;
            y += 16.0;
            rows += 1.0;
        }
        let _ = write!(
            o,
            r#"<rect x="{cx:.1}" y="{:.1}" width="14" height="4" fill="{colour}"/><text x="{:.1}" y="{y:.1}">{}</text>"#,
            y - 5.0,
            cx + 18.0,
            esc(label)
        );
        cx += w;
    }
    rows * 16.0
}

fn phase_colour(p: &str) -> &'static str {
    match p {
        "waiting" => "#c8c8c8",
        "await-anchor" => "#9db9e6",
        "state-sync" => "#4878d0",
        "adopting" => "#2f4f9a",
        "genesis" => "#b0b0b0",
        "replay" => "#ee854a",
        "following" => "#6acc64",
        _ => "#dddddd",
    }
}

/// Phase spans of a timeline: (start, end, phase), from its phase changes
/// (exact), up to its last line.
fn spans(n: &Timeline) -> Vec<(f64, f64, String)> {
    let end = n
        .lines
        .iter()
        .filter_map(|l| l["t"].as_f64())
        .fold(0.0, f64::max)
        + n.offset;
    let mut out: Vec<(f64, f64, String)> = Vec::new();
    for l in &n.lines {
        let Some(c) = l.get("phase_change") else {
            continue;
        };
        let t = n.t(l);
        if out.is_empty() {
            out.push((n.offset, t, c["from"].as_str().unwrap_or("").to_string()));
        }
        if let Some(last) = out.last_mut() {
            last.1 = t;
        }
        out.push((t, t, c["to"].as_str().unwrap_or("").to_string()));
    }
    if let Some(last) = out.last_mut() {
        last.1 = end.max(last.0);
    }
    out
}

fn heights(n: &Timeline) -> Vec<(f64, f64)> {
    n.samples()
        .map(|s| (n.t(s), s["head"].as_u64().unwrap_or(0) as f64))
        .collect()
}

/// Every node's height over the whole demo.
fn overview(r: &Report<'_>) -> String {
    let all: Vec<(f64, f64)> = r.nodes.iter().flat_map(heights).collect();
    let ax = Axes {
        x0: 0.0,
        x1: all.iter().map(|p| p.0).fold(1.0, f64::max),
        y0: 0.0,
        y1: all.iter().map(|p| p.1).fold(1.0, f64::max),
        w: WIDTH,
        h: 300.0,
        left: 60.0,
        top: 30.0,
        bottom: 42.0,
    };
    let mut o = svg_open("heights", WIDTH, 300.0);
    ax.frame(&mut o, "seconds since the demo started", "block height");
    let mut items = Vec::new();
    for (i, n) in r.nodes.iter().enumerate() {
        let last = i + 1 == r.nodes.len();
        let colour = if last {
            JOINER
        } else {
            PALETTE[i % PALETTE.len()]
        };
        ax.line(
            &mut o,
            &n.name,
            colour,
            &heights(n),
            if last { 3.0 } else { 1.5 },
        );
        items.push((n.name.clone(), colour));
    }
    legend(&mut o, &items, 70.0, 18.0);
    o + "</svg>"
}

/// The joiner's catch-up: its height against the chain head, with a lane
/// of labelled phase spans under it.
fn zoom(r: &Report<'_>) -> String {
    let Some(j) = r.nodes.last() else {
        return String::new();
    };
    let sp = spans(j);
    let (t0, t1) = match (sp.first(), sp.last()) {
        (Some(a), Some(b)) => (a.0 - 0.5, b.1 + 0.5),
        _ => (0.0, 1.0),
    };
    let chain: Vec<(f64, f64)> = r
        .nodes
        .first()
        .map(heights)
        .unwrap_or_default()
        .into_iter()
        .filter(|(t, _)| *t >= t0 && *t <= t1)
        .collect();
    // Before it adopted a checkpoint the joiner had nothing (height 0):
    // its line starts with the state it had.
    let jh: Vec<(f64, f64)> = heights(j).into_iter().filter(|p| p.1 > 0.0).collect();
    let ymax = chain
        .iter()
        .chain(jh.iter())
        .map(|p| p.1)
        .fold(1.0, f64::max);
    let ymin = jh
        .iter()
        .map(|p| p.1)
        .filter(|h| *h > 0.0)
        .fold(ymax, f64::min)
        .min(chain.iter().map(|p| p.1).fold(ymax, f64::min));
    let (h, lane) = (340.0, 34.0);
    let ax = Axes {
        x0: t0,
        x1: t1,
        y0: (ymin - 5.0).max(0.0),
        y1: ymax + 2.0,
        w: WIDTH,
        h,
        left: 60.0,
        top: 46.0,
        bottom: 42.0 + lane,
    };
    let mut o = svg_open("zoom", WIDTH, h);
    ax.frame(&mut o, "seconds since the demo started", "block height");
    ax.line(&mut o, "chain head", PALETTE[0], &chain, 1.5);
    ax.line(&mut o, &j.name, JOINER, &jh, 3.0);
    // The phase lane, under the plot.
    let ly = h - 42.0 - lane + 24.0;
    for (a, b, p) in &sp {
        let (x, w) = (ax.sx(*a), (ax.sx(*b) - ax.sx(*a)).max(1.0));
        let _ = write!(
            o,
            r#"<rect class="phase" data-phase="{p}" x="{x:.1}" y="{ly:.1}" width="{w:.1}" height="20" fill="{}"><title>{p}: {:.1} s</title></rect>"#,
            phase_colour(p),
            b - a
        );
        // A label only where it fits inside its span.
        let label = format!("{p} {:.1} s", b - a);
        if w > 7.0 * label.len() as f64 + 6.0 {
            let _ = write!(
                o,
                r##"<text x="{:.1}" y="{:.1}" fill="#fff">{label}</text>"##,
                x + 4.0,
                ly + 14.0
            );
        }
    }
    let mut items: Vec<(String, &str)> =
        vec![("chain head".into(), PALETTE[0]), (j.name.clone(), JOINER)];
    let mut seen = Vec::new();
    for (_, _, p) in &sp {
        if !seen.contains(p) {
            seen.push(p.clone());
        }
    }
    for p in &seen {
        let total: f64 = sp.iter().filter(|s| &s.2 == p).map(|s| s.1 - s.0).sum();
        items.push((format!("{p} {total:.1} s"), phase_colour(p)));
    }
    legend(&mut o, &items, 70.0, 16.0);
    o + "</svg>"
}

/// Bytes per second the joiner received from each peer (state and blocks
/// together), over one-second windows.
fn rates(r: &Report<'_>) -> String {
    let Some(j) = r.nodes.last() else {
        return String::new();
    };
    let mut cum: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for s in j.samples() {
        let t = j.t(s);
        let mut per: BTreeMap<String, f64> = BTreeMap::new();
        for key in ["state_bytes_per_peer", "block_bytes_per_peer"] {
            for (id, b) in s[key].as_object().into_iter().flatten() {
                *per.entry(id.clone()).or_default() += b.as_f64().unwrap_or(0.0);
            }
        }
        for (id, b) in per {
            cum.entry(id).or_default().push((t, b));
        }
    }
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for (id, pts) in cum {
        let mut out = Vec::new();
        let mut k = 0;
        for i in 0..pts.len() {
            while pts[i].0 - pts[k].0 > 1.0 {
                k += 1;
            }
            let dt = pts[i].0 - pts[k].0;
            let rate = if dt > 0.0 {
                (pts[i].1 - pts[k].1) / dt / (1u64 << 20) as f64
            } else {
                0.0
            };
            out.push((pts[i].0, rate.max(0.0)));
        }
        let name = r.names.get(&id).cloned().unwrap_or(id);
        series.push((name, out));
    }
    let sp = spans(j);
    let (t0, t1) = match (sp.first(), sp.last()) {
        (Some(a), Some(b)) => (a.0 - 0.5, b.1 + 0.5),
        _ => (0.0, 1.0),
    };
    let ymax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let ax = Axes {
        x0: t0,
        x1: t1,
        y0: 0.0,
        y1: ymax * 1.05,
        w: WIDTH,
        h: 260.0,
        left: 60.0,
        top: 30.0,
        bottom: 42.0,
    };
    let mut o = svg_open("rates", WIDTH, 260.0);
    ax.frame(&mut o, "seconds since the demo started", "MiB/s received");
    let mut items = Vec::new();
    for (i, (name, pts)) in series.iter().enumerate() {
        let colour = PALETTE[(i + 1) % PALETTE.len()];
        ax.line(&mut o, name, colour, pts, 2.0);
        items.push((name.clone(), colour));
    }
    legend(&mut o, &items, 70.0, 18.0);
    o + "</svg>"
}

fn table(rows: &[(String, String)]) -> String {
    let mut o = String::from("<table class=\"summary\">");
    for (k, v) in rows {
        let _ = write!(o, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    o + "</table>"
}

/// The whole page.
pub fn render(r: &Report<'_>) -> String {
    let Some(j) = r.nodes.last() else {
        return String::from("<!doctype html><p>no data</p>");
    };
    let sum = j.summary();
    let st = &sum["stats"];
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let rows = vec![
        ("from start to done".to_string(), format!("{:.1} s", r.took)),
        (
            "decision".into(),
            sum["decision"]["reason"].as_str().unwrap_or("-").into(),
        ),
        (
            "state fetched from peers".into(),
            ui::bytes(u(&st["state_bytes_fetched"])),
        ),
        (
            "state reused locally".into(),
            ui::bytes(u(&st["state_bytes_reused"])),
        ),
        (
            "moves to a newer checkpoint".into(),
            u(&st["switches"]).to_string(),
        ),
        (
            "blocks replayed (range sync)".into(),
            u(&st["imported_range"]).to_string(),
        ),
        (
            "blocks taken at the head".into(),
            u(&st["imported_follow"]).to_string(),
        ),
        (
            "backfill batches".into(),
            u(&st["backfill_batches"]).to_string(),
        ),
        ("history from height".into(), u(&sum["low"]).to_string()),
        ("head at the end".into(), u(&sum["head"]).to_string()),
    ];
    let mut peers: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (key, i) in [("state_bytes_per_peer", 0), ("block_bytes_per_peer", 1)] {
        for (id, b) in sum[key].as_object().into_iter().flatten() {
            let name = r.names.get(id).cloned().unwrap_or_else(|| id.clone());
            let e = peers.entry(name).or_default();
            if i == 0 {
                e.0 += b.as_u64().unwrap_or(0);
            } else {
                e.1 += b.as_u64().unwrap_or(0);
            }
        }
    }
    let mut ptable =
        String::from("<table class=\"peers\"><tr><th>peer</th><th>state</th><th>blocks</th></tr>");
    for (name, (s, b)) in &peers {
        let _ = write!(
            ptable,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            ui::bytes(*s),
            ui::bytes(*b)
        );
    }
    ptable += "</table>";
    let mut events = String::from("<table class=\"events\">");
    for l in &j.lines {
        if let Some(e) = l.get("event").and_then(|e| e.as_str()) {
            let _ = write!(
                events,
                "<tr><td>{:.1} s</td><td>{}</td></tr>",
                j.t(l),
                esc(e)
            );
        }
    }
    events += "</table>";
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>statesync demo</title>
<style>body{{font-family:sans-serif;max-width:860px;margin:2em auto;color:#222}} th{{text-align:left;font-weight:normal;color:#555;padding:2px 14px 2px 0}} td{{padding:2px 14px 2px 0;vertical-align:top}} h2{{margin-top:1.6em}} table.events td:first-child{{color:#777;white-space:nowrap}}</style></head><body>
<h1>statesync demo: a late joiner catches up</h1>
<p>{}</p>
<h2>Summary</h2>{}
<h2>Every node's height</h2>{}
<h2>The joiner's catch-up</h2>{}
<p>Under the chart, the joiner's phases: waiting and asking for a checkpoint header, state sync, adopting the checkpoint, replaying the blocks since, following the head.</p>
<h2>Bytes per second the joiner received, per peer</h2>{}
<h2>Per peer, in all</h2>{}
<h2>The joiner's events</h2>{}
</body></html>"#,
        esc(&r.setup),
        table(&rows),
        overview(r),
        zoom(r),
        rates(r),
        ptable,
        events
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(
            ticks(0.0, 40.0, 8),
            vec![0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0]
        );
        assert_eq!(ticks(1.0, 40.0, 4), vec![10.0, 20.0, 30.0, 40.0]);
        assert_eq!(
            ticks(28.5, 41.0, 8),
            vec![30.0, 32.0, 34.0, 36.0, 38.0, 40.0]
        );
    }
}
