//! The broker's log lines of a moment: its lines carry tracing's wall-clock
//! stamp, the run's timeline the seconds since its start. Shared by the
//! single-node and the cluster chaos tests.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// The lines of `logs` stamped between `from` and `to` (seconds since `t0`,
/// which was `wall0` on the wall clock), each with its time since `t0`.
pub(crate) fn stamped_lines(logs: &str, wall0: SystemTime, from: f64, to: f64) -> Vec<(f64, &str)> {
    let day = 86_400.0;
    let w0 = wall0
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() % day)
        .unwrap_or(0.0);
    // tracing's default stamp: 2026-12-07T03:41:50.123456Z
    let stamp = |line: &str| -> Option<f64> {
        let time = line
            .split_whitespace()
            .next()?
            .strip_suffix('Z')?
            .split_once('T')?
            .1;
        let mut hms = time.split(':');
        let h: f64 = hms.next()?.parse().ok()?;
        let m: f64 = hms.next()?.parse().ok()?;
        let s: f64 = hms.next()?.parse().ok()?;
        let mut t = h * 3600.0 + m * 60.0 + s - w0;
        if t < -day / 2.0 {
            t += day;
        } else if t > day / 2.0 {
            t -= day;
        }
        Some(t)
    };
    logs.lines()
        .filter_map(|l| Some((stamp(l)?, l)))
        .filter(|(t, _)| *t >= from && *t <= to)
        .collect()
}

/// The broker's log lines stamped between `from` and `to` (see
/// [`stamped_lines`]), at most `max`, each prefixed with its time since `t0`.
pub(crate) fn broker_log_window(logs: &str, wall0: SystemTime, from: f64, to: f64, max: usize) -> String {
    let lines = stamped_lines(logs, wall0, from, to);
    let mut out = String::new();
    for (t, l) in lines.iter().take(max) {
        let _ = writeln!(out, "    {t:8.3}  {l}");
    }
    if lines.len() > max {
        let _ = writeln!(out, "    ... {} more lines", lines.len() - max);
    }
    out
}
