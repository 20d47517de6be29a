//! What a simulated day comes to, per policy: SLA compliance by contract
//! and priority, reader utilisation, escalations; as a table, as JSON, and
//! as an SVG of queue depth and SLA at risk over the day.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use meridian_events::UnixMicros;
use serde::Serialize;

use super::run::{Outcome, Strategy, StudyOutcome};
use crate::domain::model::Priority;

#[derive(Clone, Debug, Serialize)]
pub struct Compliance {
    pub contract: String,
    pub priority: Priority,
    pub studies: usize,
    pub met: usize,
    pub compliance_pct: f64,
    /// Turnaround of the signed first reads, in minutes.
    pub p50_minutes: Option<f64>,
    pub p90_minutes: Option<f64>,
    /// Never signed by the end of the simulated day.
    pub unread: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Utilisation {
    pub group: String,
    pub region: String,
    pub readers: usize,
    pub on_shift_hours: f64,
    pub reading_hours: f64,
    pub utilisation_pct: f64,
    pub reads: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub policy: Strategy,
    pub studies: usize,
    pub unrouted: usize,
    /// By contract and priority, then "all" contracts by priority.
    pub compliance: Vec<Compliance>,
    pub utilisation: Vec<Utilisation>,
    pub escalations: BTreeMap<u8, u32>,
    pub finals_signed: usize,
    /// Minutes since the start, queue depth, studies at risk.
    pub series: Vec<(f64, usize, usize)>,
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    (!sorted.is_empty()).then(|| sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1])
}

fn compliance(contract: &str, priority: Priority, studies: &[&StudyOutcome]) -> Compliance {
    let met = studies.iter().filter(|s| s.met()).count();
    let mut tat: Vec<f64> =
        studies.iter().filter_map(|s| s.signed.map(|x| (x.0 - s.arrived.0) as f64 / 60e6)).collect();
    tat.sort_by(f64::total_cmp);
    Compliance {
        contract: contract.to_owned(),
        priority,
        studies: studies.len(),
        met,
        compliance_pct: if studies.is_empty() { 100.0 } else { 100.0 * met as f64 / studies.len() as f64 },
        p50_minutes: percentile(&tat, 0.5),
        p90_minutes: percentile(&tat, 0.9),
        unread: studies.iter().filter(|s| s.signed.is_none()).count(),
    }
}

pub fn summarise(o: &Outcome, start: UnixMicros) -> Summary {
    let mut by: BTreeMap<(String, Priority), Vec<&StudyOutcome>> = BTreeMap::new();
    let mut all: BTreeMap<Priority, Vec<&StudyOutcome>> = BTreeMap::new();
    for s in &o.studies {
        by.entry((s.contract.clone(), s.priority)).or_default().push(s);
        all.entry(s.priority).or_default().push(s);
    }
    let mut rows: Vec<Compliance> = by.iter().map(|((c, p), ss)| compliance(c, *p, ss)).collect();
    rows.extend(all.iter().map(|(p, ss)| compliance("all", *p, ss)));
    let mut groups: BTreeMap<(String, String), Utilisation> = BTreeMap::new();
    for r in &o.readers {
        let u = groups.entry((r.group.clone(), r.region.clone())).or_insert_with(|| Utilisation {
            group: r.group.clone(),
            region: r.region.clone(),
            readers: 0,
            on_shift_hours: 0.0,
            reading_hours: 0.0,
            utilisation_pct: 0.0,
            reads: 0,
        });
        u.readers += 1;
        u.on_shift_hours += r.on_shift_minutes / 60.0;
        u.reading_hours += r.reading_minutes / 60.0;
        u.reads += r.reads;
    }
    let utilisation = groups
        .into_values()
        .map(|mut u| {
            u.utilisation_pct = if u.on_shift_hours > 0.0 { 100.0 * u.reading_hours / u.on_shift_hours } else { 0.0 };
            u
        })
        .collect();
    Summary {
        policy: o.strategy,
        studies: o.studies.len(),
        unrouted: o.unrouted,
        compliance: rows,
        utilisation,
        escalations: o.escalations.clone(),
        finals_signed: o.finals_signed,
        series: o.samples.iter().map(|s| ((s.at.0 - start.0) as f64 / 60e6, s.queue_depth, s.at_risk)).collect(),
    }
}

fn minutes(m: Option<f64>) -> String {
    m.map_or("—".into(), |m| format!("{m:.0}m"))
}

/// The policies side by side, as a person reads them.
pub fn table(summaries: &[Summary]) -> String {
    let mut out = String::new();
    let Some(first) = summaries.first() else { return out };
    let _ = writeln!(out, "{} studies ({} unrouted: no contract)", first.studies, first.unrouted);
    let _ = writeln!(out, "\nSLA compliance: first read signed within the contract's turnaround (p50/p90 turnaround)");
    let _ = write!(out, "{:<24} {:<8} {:>7}", "contract", "priority", "studies");
    for s in summaries {
        let _ = write!(out, "   {:<28}", s.policy.as_str());
    }
    let _ = writeln!(out);
    for (i, row) in first.compliance.iter().enumerate() {
        let _ = write!(out, "{:<24} {:<8} {:>7}", row.contract, row.priority.as_str(), row.studies);
        for s in summaries {
            let r = &s.compliance[i];
            let cell = format!(
                "{:>6.1}% {} / {}{}",
                r.compliance_pct,
                minutes(r.p50_minutes),
                minutes(r.p90_minutes),
                if r.unread > 0 { format!(", {} unread", r.unread) } else { String::new() }
            );
            let _ = write!(out, "   {cell:<28}");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "\nReader utilisation: reading time / time on shift");
    let _ = write!(out, "{:<24} {:<10} {:>7}", "group", "region", "readers");
    for s in summaries {
        let _ = write!(out, "   {:<20}", s.policy.as_str());
    }
    let _ = writeln!(out);
    for (i, u) in first.utilisation.iter().enumerate() {
        let _ = write!(out, "{:<24} {:<10} {:>7}", u.group, u.region, u.readers);
        for s in summaries {
            let v = &s.utilisation[i];
            let _ = write!(out, "   {:<20}", format!("{:>5.1}% ({} reads)", v.utilisation_pct, v.reads));
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out);
    for s in summaries {
        let escalations: Vec<String> = s.escalations.iter().map(|(l, n)| format!("level {l}: {n}")).collect();
        let _ = writeln!(
            out,
            "{:<9} escalations: {}; finals signed: {}",
            s.policy.as_str(),
            if escalations.is_empty() { "none".into() } else { escalations.join(", ") },
            s.finals_signed
        );
    }
    out
}

/// One plotted quantity of a series point (minutes, queue depth, at risk).
type Measure = fn(&(f64, usize, usize)) -> usize;

/// Queue depth and SLA at risk over the day, one line per policy.
pub fn svg(summaries: &[Summary]) -> String {
    const W: f64 = 900.0;
    const PANEL: f64 = 220.0;
    const LEFT: f64 = 60.0;
    const TOP: f64 = 40.0;
    let colours = ["#1f77b4", "#d62728", "#2ca02c"];
    let span = summaries.iter().flat_map(|s| s.series.last()).map(|p| p.0).fold(1.0, f64::max);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n",
        TOP + 2.0 * (PANEL + 50.0)
    );
    let panels: [(&str, Measure); 2] = [
        ("Unassigned studies (queue depth)", |p| p.1),
        ("First reads past half their SLA, unsigned (at risk)", |p| p.2),
    ];
    for (k, (title, value)) in panels.iter().enumerate() {
        let y0 = TOP + k as f64 * (PANEL + 50.0);
        let max = summaries.iter().flat_map(|s| s.series.iter().map(value)).max().unwrap_or(0).max(1) as f64;
        let x = |m: f64| LEFT + (W - LEFT - 20.0) * m / span;
        let y = |v: usize| y0 + PANEL - PANEL * v as f64 / max;
        let _ = writeln!(out, "<text x=\"{LEFT}\" y=\"{}\" font-weight=\"bold\">{title}</text>", y0 - 10.0);
        let _ = writeln!(
            out,
            "<rect x=\"{LEFT}\" y=\"{y0}\" width=\"{}\" height=\"{PANEL}\" fill=\"none\" stroke=\"#999\"/>",
            W - LEFT - 20.0
        );
        let _ = writeln!(out, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{max}</text>", LEFT - 5.0, y0 + 10.0);
        let _ = writeln!(out, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>", LEFT - 5.0, y0 + PANEL);
        for h in (0..=(span / 60.0) as u32).step_by(6) {
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{h}h</text>",
                x(f64::from(h) * 60.0),
                y0 + PANEL + 15.0
            );
        }
        for (i, s) in summaries.iter().enumerate() {
            let points: Vec<String> = s.series.iter().map(|p| format!("{:.1},{:.1}", x(p.0), y(value(p)))).collect();
            let _ = writeln!(
                out,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
                colours[i % colours.len()],
                points.join(" ")
            );
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" fill=\"{}\">{}</text>",
                W - 140.0,
                y0 + 15.0 + 15.0 * i as f64,
                colours[i % colours.len()],
                s.policy.as_str()
            );
        }
    }
    out.push_str("</svg>\n");
    out
}
