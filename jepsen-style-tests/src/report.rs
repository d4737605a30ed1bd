//! Report pieces: operation counts, the longest stretch without a successful operation,
//! and the latency plot (SVG, fault windows shaded).

use crate::history::{Call, OpType};
use crate::run::Summary;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Debug, Default, Clone, Serialize)]
pub struct Counts {
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct OpCounts {
    pub total: usize,
    #[serde(flatten)]
    pub all: Counts,
    pub by_f: BTreeMap<String, Counts>,
}

pub fn counts(calls: &[Call]) -> OpCounts {
    let mut c = OpCounts { total: calls.len(), ..Default::default() };
    for call in calls {
        let e = c.by_f.entry(call.f.clone()).or_default();
        match call.kind {
            OpType::Ok => {
                c.all.ok += 1;
                e.ok += 1
            }
            OpType::Fail => {
                c.all.fail += 1;
                e.fail += 1
            }
            _ => {
                c.all.info += 1;
                e.info += 1
            }
        }
    }
    c
}

/// The longest interval (ns) in [first invocation, `until`] in which no operation
/// completed ok, and where it began.
pub fn longest_without_ok(calls: &[Call], until: u64) -> (u64, u64) {
    // Completions after `until` (the final reads, which may wait on purpose) are not
    // part of the window.
    let mut oks: Vec<u64> =
        calls.iter().filter(|c| c.kind == OpType::Ok).filter_map(|c| c.complete_ns).filter(|&t| t <= until).collect();
    oks.sort_unstable();
    let mut prev = calls.iter().map(|c| c.invoke_ns).min().unwrap_or(0);
    let (mut best, mut from) = (0, prev);
    for t in oks.into_iter().chain(std::iter::once(until)) {
        if t > prev && t - prev > best {
            best = t - prev;
            from = prev;
        }
        prev = prev.max(t);
    }
    (best, from)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Latency (log scale) of every operation over time, coloured by outcome, with each
/// fault window shaded and labelled and the start of the liveness phase marked.
pub fn latency_svg(calls: &[Call], s: &Summary, live_start_ns: u64) -> String {
    let (w, h, left, right, top, bottom) = (1400.0, 600.0, 70.0, 20.0, 40.0, 60.0);
    let end_ns = calls.iter().filter_map(|c| c.gave_up_ns.or(c.complete_ns)).max().unwrap_or(1).max(1);
    let x = |ns: u64| left + (ns as f64 / end_ns as f64) * (w - left - right);
    let (lo, hi) = (0.1f64.log10(), 10_000f64.log10()); // 0.1 ms .. 10 s
    let y = |ms: f64| {
        let v = ms.max(0.1).log10().min(hi);
        top + (1.0 - (v - lo) / (hi - lo)) * (h - top - bottom)
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let title = format!(
        "{} × {} — {} nodes, seed {}{} — verdict: {:?}",
        s.workload.name(),
        s.nemeses.join(","),
        s.nodes,
        s.seed,
        if s.canary { ", canary" } else { "" },
        s.verdict
    );
    let _ = writeln!(o, r#"<text x="{left}" y="20" font-size="15">{}</text>"#, esc(&title));
    for f in &s.faults {
        let (x0, x1) = (x(f.start_ns), x(f.end_ns.max(f.start_ns)));
        let _ = writeln!(
            o,
            r##"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="#f4a6a6" fill-opacity="0.35"><title>{}</title></rect>"##,
            (x1 - x0).max(1.0),
            h - top - bottom,
            esc(&f.description)
        );
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="#a03030">{}</text>"##,
            x0 + 2.0,
            top + 12.0,
            esc(f.nemesis.name())
        );
    }
    let lx = x(live_start_ns);
    let _ = writeln!(
        o,
        r##"<line x1="{lx:.1}" x2="{lx:.1}" y1="{top}" y2="{:.1}" stroke="#3060c0" stroke-dasharray="4,3"/><text x="{:.1}" y="{:.1}" fill="#3060c0">liveness</text>"##,
        h - bottom,
        lx + 3.0,
        h - bottom - 4.0
    );
    // Axes and grid.
    for p in -1..=4 {
        let ms = 10f64.powi(p);
        let yy = y(ms);
        let label = if ms < 1.0 { format!("{ms}") } else { format!("{}", ms as u64) };
        let _ = writeln!(
            o,
            r##"<line x1="{left}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            w - right,
            left - 5.0,
            yy + 4.0
        );
    }
    let secs = end_ns as f64 / 1e9;
    let step = if secs > 300.0 {
        60.0
    } else if secs > 60.0 {
        10.0
    } else {
        5.0
    };
    let mut t = 0.0;
    while t <= secs {
        let xx = x((t * 1e9) as u64);
        let _ = writeln!(
            o,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{:.1}" y2="{:.1}" stroke="#999"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{t}</text>"##,
            h - bottom,
            h - bottom + 5.0,
            h - bottom + 18.0
        );
        t += step;
    }
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since start (s)</text><text x="15" y="{:.1}" transform="rotate(-90 15 {:.1})" text-anchor="middle">latency (ms, log)</text>"#,
        (w + left) / 2.0,
        h - 15.0,
        h / 2.0,
        h / 2.0
    );
    // Points: at most ~30k, thinning evenly beyond that.
    let every = (calls.len() / 30_000).max(1);
    for c in calls.iter().step_by(every) {
        let Some(done) = c.complete_ns.or(c.gave_up_ns) else { continue };
        let ms = (done.saturating_sub(c.invoke_ns)) as f64 / 1e6;
        let color = match c.kind {
            OpType::Ok => "#2a9d4a",
            OpType::Fail => "#d03030",
            _ => "#e69a00",
        };
        let _ = writeln!(o, r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{color}"/>"#, x(c.invoke_ns), y(ms));
    }
    for (i, (label, color)) in [("ok", "#2a9d4a"), ("fail", "#d03030"), ("info", "#e69a00")].iter().enumerate() {
        let lx = w - right - 200.0 + i as f64 * 60.0;
        let _ = writeln!(
            o,
            r#"<circle cx="{lx}" cy="16" r="4" fill="{color}"/><text x="{:.1}" y="20">{label}</text>"#,
            lx + 8.0
        );
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(kind: OpType, inv: u64, done: u64) -> Call {
        Call {
            process: 0,
            f: "read".into(),
            key: None,
            input: serde_json::Value::Null,
            output: serde_json::Value::Null,
            kind,
            invoke_ns: inv,
            complete_ns: Some(done),
            gave_up_ns: Some(done),
            node: None,
            error: None,
        }
    }

    #[test]
    fn longest_gap_counts_only_ok_completions() {
        let calls = vec![call(OpType::Ok, 0, 10), call(OpType::Fail, 10, 500), call(OpType::Ok, 20, 100)];
        assert_eq!(longest_without_ok(&calls, 1000), (900, 100));
    }
}
