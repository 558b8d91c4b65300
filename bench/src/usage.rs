//! What `/proc` says about a child process: CPU seconds and peak memory (Linux only).

use anyhow::Context;
use std::process::Command;

/// CPU seconds (user + system) and peak RSS of a live process, from `/proc`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcUsage {
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
}

pub fn usage(pid: u32) -> anyhow::Result<ProcUsage> {
    let cpu_seconds = cpu_seconds(pid).with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    let peak = status_bytes(pid, "VmHWM")
        .with_context(|| format!("cannot read VmHWM in /proc/{pid}/status"))?;
    Ok(ProcUsage {
        cpu_seconds,
        peak_rss_mb: peak as f64 / (1024.0 * 1024.0),
    })
}

/// A `kB` line of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in bytes.
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// CPU time (user + system) of a process so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`, which may hold spaces, start at field 3 (state): utime (14)
    // is index 11, stime (15) index 12.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux we run on (`getconf CLK_TCK` says so).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// Resident bytes of a live process by what they belong to, from `/proc/<pid>/smaps`: each
/// mapped file by its name (`libduckdb.so`, the binary), anonymous memory as `[anon]` (the
/// heap, DuckDB's pool, thread stacks), largest first.
pub fn rss_by_mapping(pid: u32) -> Vec<(String, u64)> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return Vec::new();
    };
    let mut totals: std::collections::BTreeMap<String, u64> = Default::default();
    let mut current = String::from("[anon]");
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: address range, perms, offset, device, inode, [path].
            current = match fields.nth(4) {
                Some(path) if path.starts_with('/') => {
                    path.rsplit('/').next().unwrap_or(path).to_string()
                }
                Some("[heap]") | None => "[anon]".to_string(),
                Some(other) => other.to_string(),
            };
        } else if first == "Rss:" {
            let kb: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            *totals.entry(current.clone()).or_default() += kb * 1024;
        }
    }
    let mut out: Vec<(String, u64)> = totals.into_iter().filter(|(_, b)| *b > 0).collect();
    out.sort_by_key(|b| std::cmp::Reverse(b.1));
    out
}
