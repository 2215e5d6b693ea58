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
}

impl Proc {
    /// A named process.
    pub fn new(name: &str, pid: u32) -> Proc {
        Proc { name: name.to_owned(), pid }
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
    procs.iter().map(|p| sample(p.pid).unwrap_or_default()).collect()
}

/// What each process used between `before` and `after` (both from [`snapshot`]).
pub fn usage(procs: &[Proc], before: &[Sample], after: &[Sample]) -> Vec<Usage> {
    procs
        .iter()
        .zip(before.iter().zip(after))
        .map(|(p, (b, a))| Usage { name: p.name.clone(), cpu_s: a.cpu_s - b.cpu_s, rss_kib: a.rss_kib, hwm_kib: a.hwm_kib })
        .collect()
}
