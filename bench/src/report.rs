//! The results: one row per figure with both gateways side by side, the ratio
//! gateway/biboumi and the target, then the CPU and memory of every process per
//! scenario; printed as Markdown (pasted as it is into BENCHMARKS.md).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::peers::Peer;
use crate::procstat::Usage;
use crate::stats::{self, Summary};

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

/// One scenario's name, its figures' specs, and what each gateway measured, run by run.
pub type ScenarioResults = (String, Vec<Spec>, Vec<(Peer, Vec<Measured>)>);

/// A whole run.
#[derive(Debug, Default)]
pub struct Report {
    /// Every scenario run, in order.
    pub scenarios: Vec<ScenarioResults>,
    /// How the run was made (sizes, versions, flags).
    pub header: Vec<String>,
}

fn figure(summary: Option<Summary>, decimals: usize, unit: &str) -> String {
    match summary {
        Some(Summary { median, min, max }) => {
            let unit = if unit.is_empty() { String::new() } else { format!(" {unit}") };
            format!("{median:.decimals$}{unit} [{min:.decimals$}-{max:.decimals$}]")
        }
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
        let _ = writeln!(
            out,
            "\nEach figure: the median over the runs, and [min-max]. Ratio: of the medians; \"tie\" when the difference of the medians is no larger than the wider spread.\n"
        );
        let _ = writeln!(out, "| scenario | figure | xmpp-gateway | biboumi | gateway/biboumi | target (issue 5; biboumi reference) |");
        let _ = writeln!(out, "|---|---|---:|---:|---:|---|");
        for (scenario, specs, results) in &self.scenarios {
            let summary = |peer: Peer, key: &str| {
                let runs: Vec<f64> = results.iter().filter(|(p, _)| *p == peer).flat_map(|(_, runs)| runs.iter().filter_map(|m| m.values.get(key).copied())).collect();
                Summary::of(&runs)
            };
            for spec in specs {
                let ours = summary(Peer::Ours, spec.key);
                let theirs = summary(Peer::Biboumi, spec.key);
                let ratio = match (&ours, &theirs) {
                    (Some(a), Some(b)) => stats::ratio(a, b),
                    _ => "n/a".into(),
                };
                let _ = writeln!(
                    out,
                    "| {scenario} | {} | {} | {} | {ratio} | {} |",
                    spec.label,
                    figure(ours, spec.decimals, spec.unit),
                    figure(theirs, spec.decimals, spec.unit),
                    spec.target
                );
            }
        }
        let _ = writeln!(out, "\nCPU and memory of every process, first run of each (CPU = utime+stime during the phase; RSS at its end; peak = VmHWM since the scenario started):\n");
        let _ = writeln!(out, "| scenario | phase | gateway under test | process | CPU s | RSS MiB | peak RSS MiB |");
        let _ = writeln!(out, "|---|---|---|---|---:|---:|---:|");
        for (scenario, _, results) in &self.scenarios {
            for (peer, measured) in results.iter().filter_map(|(peer, runs)| Some((peer, runs.first()?))) {
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
            .flat_map(|(scenario, _, results)| {
                results.iter().flat_map(move |(peer, runs)| {
                    runs.iter().enumerate().flat_map(move |(run, m)| m.notes.iter().map(move |n| format!("- {scenario}, {}, run {}: {n}", peer.name(), run + 1)))
                })
            })
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
