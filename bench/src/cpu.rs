//! CPU time of other processes (the broker, PostgreSQL's server processes)
//! over a measured phase, from `/proc/PID/stat`: user + system time.
//!
//! On a shared machine wall-clock figures move with whatever else runs;
//! the CPU time a phase cost per message moves much less, so before/after
//! comparisons of a change use it (`--cpu-pids`).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::scenarios::BenchError;

/// Clock ticks per second of `/proc/PID/stat` (`sysconf(_SC_CLK_TCK)`;
/// 100 on every Linux architecture this tool runs on).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU time of each watched process at the start of a phase.
#[derive(Debug, Clone)]
pub struct CpuWatch {
    start: BTreeMap<u32, u64>,
}

impl CpuWatch {
    /// Starts watching; processes that cannot be read count from zero.
    pub fn start(pids: &[u32]) -> CpuWatch {
        CpuWatch {
            start: pids.iter().map(|&p| (p, ticks(p).unwrap_or(0))).collect(),
        }
    }

    /// True when no process is watched.
    pub fn is_empty(&self) -> bool {
        self.start.is_empty()
    }

    /// CPU seconds each process used since [`CpuWatch::start`], and their sum,
    /// as JSON: `{"total": s, "per_pid": {"PID": s, ...}}`.
    pub fn finish(&self) -> Value {
        let mut per = Map::new();
        let mut total = 0.0;
        for (&pid, &t0) in &self.start {
            let t1 = ticks(pid).unwrap_or(t0);
            let s = t1.saturating_sub(t0) as f64 / TICKS_PER_SEC;
            total += s;
            per.insert(pid.to_string(), json!(s));
        }
        json!({ "total": (total * 100.0).round() / 100.0, "per_pid": per })
    }
}

/// Parses `--cpu-pids 12,34`.
pub fn parse_pids(s: &str) -> Result<Vec<u32>, BenchError> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse()
                .map_err(|_| format!("--cpu-pids: `{p}` is not a process id").into())
        })
        .collect()
}

/// utime + stime of a process in clock ticks.
fn ticks(pid: u32) -> Option<u64> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Fields 14 and 15 of `/proc/PID/stat`; the command name (field 2) may hold
/// spaces and parentheses, so counting starts after its closing parenthesis.
fn parse_stat(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        let s = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat(s), Some(300));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_measured() {
        let w = CpuWatch::start(&[std::process::id()]);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        assert!(w.finish()["total"].as_f64().unwrap() >= 0.0);
    }

    #[test]
    fn pid_lists() {
        assert_eq!(parse_pids("1, 2,3").unwrap(), vec![1, 2, 3]);
        assert!(parse_pids("1,x").is_err());
    }
}
