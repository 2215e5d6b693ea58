//! The results: one row per figure with both gateways side by side, the ratio
//! gateway/biboumi and the target, then the CPU and memory of every process per
//! scenario; printed as Markdown (pasted as it is into BENCHMARKS.md).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::peers::Peer;
use crate::procstat::Usage;

/// What one scenario measured against one gateway.
#[derive(Debug, Default)]
pub struct Measured {
    /// Figures by key (see each scenario's [`Spec`] list).
    pub values: BTreeMap<&'static str, f64>,
    /// CPU and memory per process, per phase of the scenario.
    pub usage: Vec<(String, Vec<Usage>)>,
    /// Things the reader should know (caps, pacing, errors that were tolerated).
    pub notes: Vec<String>,
}

impl Measured {
    /// Records figure `key`.
    pub fn set(&mut self, key: &'static str, value: f64) {
        self.values.insert(key, value);
    }
}

/// How a scenario presents one of its figures.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The key in [`Measured::values`].
    pub key: &'static str,
    /// What the row says.
    pub label: &'static str,
    /// Unit after the number.
    pub unit: &'static str,
    /// Digits after the decimal point.
    pub decimals: usize,
    /// The target and biboumi's reference figure from issue 5 (printed, not asserted).
    pub target: &'static str,
}

/// One scenario's name, its figures' specs, and what each gateway measured.
pub type ScenarioResults = (String, Vec<Spec>, Vec<(Peer, Measured)>);

/// A whole run.
#[derive(Debug, Default)]
pub struct Report {
    /// Every scenario run, in order.
    pub scenarios: Vec<ScenarioResults>,
    /// How the run was made (sizes, versions, flags).
    pub header: Vec<String>,
}

fn number(value: Option<f64>, decimals: usize, unit: &str) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$} {unit}").trim_end().to_owned(),
        Some(_) => "-".into(),
        None => "n/a".into(),
    }
}

impl Report {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        for line in &self.header {
            let _ = writeln!(out, "{line}  ");
        }
        let _ = writeln!(out, "\n| scenario | figure | xmpp-gateway | biboumi | gateway/biboumi | target (issue 5; biboumi reference) |");
        let _ = writeln!(out, "|---|---|---:|---:|---:|---|");
        for (scenario, specs, results) in &self.scenarios {
            let get = |peer: Peer, key: &str| results.iter().find(|(p, _)| *p == peer).and_then(|(_, m)| m.values.get(key).copied());
            for spec in specs {
                let ours = get(Peer::Ours, spec.key);
                let theirs = get(Peer::Biboumi, spec.key);
                let ratio = match (ours, theirs) {
                    (Some(a), Some(b)) if b.abs() > f64::EPSILON => format!("{:.2}", a / b),
                    (Some(_), Some(_)) => "-".into(),
                    _ => "n/a".into(),
                };
                let _ = writeln!(
                    out,
                    "| {scenario} | {} | {} | {} | {ratio} | {} |",
                    spec.label,
                    number(ours, spec.decimals, spec.unit),
                    number(theirs, spec.decimals, spec.unit),
                    spec.target
                );
            }
        }
        let _ = writeln!(out, "\nCPU and memory of every process (CPU = utime+stime during the phase; RSS at its end; peak = VmHWM since the scenario started):\n");
        let _ = writeln!(out, "| scenario | phase | gateway under test | process | CPU s | RSS MiB | peak RSS MiB |");
        let _ = writeln!(out, "|---|---|---|---|---:|---:|---:|");
        for (scenario, _, results) in &self.scenarios {
            for (peer, measured) in results {
                for (phase, usage) in &measured.usage {
                    for u in usage {
                        let _ = writeln!(
                            out,
                            "| {scenario} | {phase} | {} | {} | {:.2} | {:.1} | {:.1} |",
                            peer.name(),
                            u.name,
                            u.cpu_s,
                            u.rss_kib as f64 / 1024.0,
                            u.hwm_kib as f64 / 1024.0
                        );
                    }
                }
            }
        }
        let notes: Vec<String> = self
            .scenarios
            .iter()
            .flat_map(|(scenario, _, results)| results.iter().flat_map(move |(peer, m)| m.notes.iter().map(move |n| format!("- {scenario}, {}: {n}", peer.name()))))
            .collect();
        if !notes.is_empty() {
            let _ = writeln!(out, "\nNotes:\n");
            for note in notes {
                let _ = writeln!(out, "{note}");
            }
        }
        out
    }
}

/// The `p`-quantile (0..=1) of sorted `values` (nearest rank).
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
