//! CPU and memory of the processes involved, from `/proc`: CPU seconds are
//! `utime + stime` of `/proc/PID/stat`, memory is `VmRSS` (now) and `VmHWM` (peak) of
//! `/proc/PID/status`. The peak can be reset between scenarios (`clear_refs`).

use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};

/// A process to watch, by name as shown in the report.
#[derive(Debug, Clone)]
pub struct Proc {
    /// What the report calls it ("Prosody", "ngIRCd", "xmpp-gateway", "biboumi", "bench").
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// Whether the CPU of its child processes is counted with its own (a PostgreSQL
    /// server: the postmaster, its background workers and one backend per connection).
    pub children: bool,
}

impl Proc {
    /// A named process.
    pub fn new(name: &str, pid: u32) -> Proc {
        Proc { name: name.to_owned(), pid, children: false }
    }

    /// A process whose children's CPU (utime + stime of those alive at each reading) is
    /// added to its own; memory is its own.
    pub fn with_children(name: &str, pid: u32) -> Proc {
        Proc { name: name.to_owned(), pid, children: true }
    }

    /// This benchmark process itself (its load clients).
    pub fn bench() -> Proc {
        Proc::new("bench (load clients)", std::process::id())
    }
}

/// One reading of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// User + system CPU time since the process started, in seconds.
    pub cpu_s: f64,
    /// Resident set size now, KiB.
    pub rss_kib: u64,
    /// Peak resident set size (since start or the last [`reset_peak`]), KiB.
    pub hwm_kib: u64,
}

/// What a process used over a scenario.
#[derive(Debug, Clone)]
pub struct Usage {
    /// The process's name in the report.
    pub name: String,
    /// CPU seconds used between the two readings.
    pub cpu_s: f64,
    /// RSS at the end, KiB.
    pub rss_kib: u64,
    /// Peak RSS at the end, KiB.
    pub hwm_kib: u64,
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when it cannot be asked).
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Reads one process.
pub fn sample(pid: u32) -> Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid} is gone"))?;
    // "pid (comm) state ppid ..." - comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')').ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let ticks = |i: usize| -> Result<f64> { Ok(fields.get(i).ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?.parse::<f64>()?) };
    let cpu_s = (ticks(11)? + ticks(12)?) / clk_tck();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("process {pid} is gone"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Sample { cpu_s, rss_kib: kib("VmRSS:"), hwm_kib: kib("VmHWM:") })
}

/// Resets the peak RSS of `pid` to its current RSS (Linux `clear_refs` 5); best effort.
pub fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Reads every process of `procs` (a process that is gone reads as zeros).
pub fn snapshot(procs: &[Proc]) -> Vec<Sample> {
    procs
        .iter()
        .map(|p| {
            let mut s = sample(p.pid).unwrap_or_default();
            if p.children {
                s.cpu_s += children(p.pid).iter().map(|&c| sample(c).map(|c| c.cpu_s).unwrap_or(0.0)).sum::<f64>();
            }
            s
        })
        .collect()
}

/// The processes whose parent is `pid`, from `/proc/*/stat`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&c| {
            std::fs::read_to_string(format!("/proc/{c}/stat"))
                .ok()
                .and_then(|stat| stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().nth(1)?.parse::<u32>().ok()))
                == Some(pid)
        })
        .collect()
}

/// CPU seconds of each thread of `pid` so far, summed by thread name (`comm`).
pub fn threads(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return by_name };
    for tid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        *by_name.entry(stat[open + 1..close].to_owned()).or_insert(0.0) += (ticks(11) + ticks(12)) / clk_tck();
    }
    by_name
}

/// The CPU each thread name used between two [`threads`] readings, largest first, as
/// `name 1.23 s` items.
pub fn thread_usage(before: &std::collections::BTreeMap<String, f64>, after: &std::collections::BTreeMap<String, f64>) -> String {
    let mut used: Vec<(&String, f64)> = after.iter().map(|(name, a)| (name, a - before.get(name).copied().unwrap_or(0.0))).collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    used.iter().filter(|(_, s)| *s >= 0.005).map(|(name, s)| format!("{name} {s:.2} s")).collect::<Vec<_>>().join(", ")
}

/// What each process used between `before` and `after` (both from [`snapshot`]).
pub fn usage(procs: &[Proc], before: &[Sample], after: &[Sample]) -> Vec<Usage> {
    procs
        .iter()
        .zip(before.iter().zip(after))
        .map(|(p, (b, a))| Usage { name: p.name.clone(), cpu_s: a.cpu_s - b.cpu_s, rss_kib: a.rss_kib, hwm_kib: a.hwm_kib })
        .collect()
}
