//! Results: the table printed at the end, the `--json` lines, and the
//! once-per-second progress line on stderr.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::stats::Latency;

/// The outcome of one scenario against one target.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    /// `one-to-one`, `fan-in`, `fan-out`, `replay`, `connections` or `copy`.
    pub scenario: String,
    /// Label of the system measured (`--target`, or the broker address).
    pub target: String,
    /// Clients, as `publishers/subscribers` (or connections, or COPY sessions).
    pub clients: String,
    /// QoS of the messages, when messages were sent.
    pub qos: Option<u8>,
    /// Payload size in bytes, when messages were sent.
    pub payload: Option<usize>,
    /// Messages published (connections attempted, rows written).
    pub sent: u64,
    /// Distinct messages received (connections established, rows committed).
    pub received: u64,
    /// Expected messages never received (connections that failed).
    pub lost: u64,
    /// Copies received beyond the first.
    pub dup: u64,
    /// Messages received per second (connections or rows per second).
    pub rate: f64,
    /// Latency percentiles; what they time depends on the scenario.
    pub latency: Option<Latency>,
    /// Measured interval, seconds.
    pub duration_s: f64,
    /// A short human note (what the latency means, memory per connection...).
    pub note: String,
    /// Further scenario-specific figures for `--json`.
    pub extra: Map<String, Value>,
}

impl ScenarioResult {
    /// The result as one JSON object.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "scenario": self.scenario,
            "target": self.target,
            "clients": self.clients,
            "qos": self.qos,
            "payload": self.payload,
            "sent": self.sent,
            "received": self.received,
            "lost": self.lost,
            "dup": self.dup,
            "rate": round3(self.rate),
            "duration_s": round3(self.duration_s),
            "p50_ms": self.latency.map(|l| ms(l.p50_us)),
            "p99_ms": self.latency.map(|l| ms(l.p99_us)),
            "max_ms": self.latency.map(|l| ms(l.max_us)),
            "note": self.note,
        });
        if let Value::Object(map) = &mut v {
            for (k, x) in &self.extra {
                map.insert(k.clone(), x.clone());
            }
        }
        v
    }
}

fn ms(us: u64) -> f64 {
    round3(us as f64 / 1000.0)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Formats a latency in milliseconds for the table.
fn fmt_ms(us: u64) -> String {
    let m = us as f64 / 1000.0;
    if m < 10.0 {
        format!("{m:.2}")
    } else if m < 100.0 {
        format!("{m:.1}")
    } else {
        format!("{m:.0}")
    }
}

/// The results as an aligned text table (one line per result).
pub fn table(results: &[ScenarioResult]) -> String {
    let header = [
        "scenario", "target", "clients", "qos", "payload", "sent", "received", "lost", "dup", "msgs/s",
        "p50 ms", "p99 ms", "max ms", "note",
    ];
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let lat = |f: fn(&Latency) -> u64| r.latency.map(|l| fmt_ms(f(&l))).unwrap_or_else(|| "-".into());
            vec![
                r.scenario.clone(),
                r.target.clone(),
                r.clients.clone(),
                r.qos.map(|q| q.to_string()).unwrap_or_else(|| "-".into()),
                r.payload.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                r.sent.to_string(),
                r.received.to_string(),
                r.lost.to_string(),
                r.dup.to_string(),
                format!("{:.0}", r.rate),
                lat(|l| l.p50_us),
                lat(|l| l.p99_us),
                lat(|l| l.max_us),
                r.note.clone(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            // Text columns left, numbers right.
            if i <= 2 || i == cells.len() - 1 {
                let _ = write!(s, "{c:<w$}");
            } else {
                let _ = write!(s, "{c:>w$}");
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&header.map(String::from));
    for row in &rows {
        line(row);
    }
    out
}

/// Prints the results: JSON lines with `json`, else the table.
pub fn print(results: &[ScenarioResult], json: bool) {
    if json {
        for r in results {
            println!("{}", r.to_json());
        }
    } else {
        print!("{}", table(results));
    }
}

/// Live counters the progress line shows.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages published (or connections attempted, rows written).
    pub sent: AtomicU64,
    /// PUBACKs received by publishers.
    pub acked: AtomicU64,
    /// Distinct messages received (or connections established).
    pub received: AtomicU64,
    /// Errors seen so far.
    pub errors: AtomicU64,
}

/// Prints a progress line on stderr once per second until dropped.
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts the progress line for `label`; `expected` is the goal for
    /// `received` (0: nothing is received, the rate shown is of `acked`).
    pub fn start(label: String, counters: Arc<Counters>, expected: u64) -> Self {
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + Duration::from_secs(1),
                Duration::from_secs(1),
            );
            let mut last = 0u64;
            loop {
                tick.tick().await;
                let sent = counters.sent.load(Ordering::Relaxed);
                let acked = counters.acked.load(Ordering::Relaxed);
                let rcv = counters.received.load(Ordering::Relaxed);
                let errors = counters.errors.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64();
                if expected > 0 {
                    eprintln!(
                        "[{label}] {secs:>4.0}s  sent {sent}  acked {acked}  received {rcv}/{expected}  ({}/s)  errors {errors}",
                        rcv.saturating_sub(last),
                    );
                    last = rcv;
                } else {
                    eprintln!(
                        "[{label}] {secs:>4.0}s  sent {sent}  acked {acked}  ({}/s)  errors {errors}",
                        acked.saturating_sub(last),
                    );
                    last = acked;
                }
            }
        });
        Progress { task }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ScenarioResult {
        ScenarioResult {
            scenario: "one-to-one".into(),
            target: "postbox".into(),
            clients: "10/10".into(),
            qos: Some(1),
            payload: Some(64),
            sent: 1000,
            received: 999,
            lost: 1,
            dup: 0,
            rate: 12345.678,
            latency: Some(Latency {
                samples: 999,
                p50_us: 1500,
                p99_us: 25_000,
                max_us: 250_000,
            }),
            duration_s: 0.0811,
            note: String::new(),
            extra: Map::new(),
        }
    }

    #[test]
    fn json_has_the_columns() {
        let mut r = sample();
        r.extra.insert("rss_kib".into(), json!(42));
        let v = r.to_json();
        assert_eq!(v["scenario"], "one-to-one");
        assert_eq!(v["received"], 999);
        assert_eq!(v["p50_ms"], 1.5);
        assert_eq!(v["p99_ms"], 25.0);
        assert_eq!(v["rate"], 12345.678);
        assert_eq!(v["rss_kib"], 42);
    }

    #[test]
    fn table_aligns() {
        let mut r2 = sample();
        r2.latency = None;
        r2.qos = None;
        let t = table(&[sample(), r2]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("scenario"));
        assert!(lines[1].contains("1.50"));
        assert!(lines[1].contains("25.0"));
        assert!(lines[1].contains("250"));
        assert!(lines[2].contains(" - "));
    }
}
