//! Mosquitto's load figures (`$SYS/broker/load/<what>/<1min|5min|15min>`):
//! for each counter, the number per minute, as an exponentially weighted
//! moving average over 1, 5 and 15 minutes, the way Unix load averages are
//! computed. At every `$SYS` tick the rate since the previous tick enters
//! each average with the weight `1 - e^(-elapsed / window)`.

use std::time::Duration;

use tokio::time::Instant;

/// The averaging windows and their topic suffixes.
const WINDOWS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

/// The counters the averages follow, read at one tick.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Totals {
    /// MQTT packets received.
    pub messages_received: u64,
    /// MQTT packets sent.
    pub messages_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// CONNECT packets received.
    pub connections: u64,
}

impl Totals {
    /// Each counter with its topic part, in publishing order.
    fn named(&self) -> [(&'static str, u64); 5] {
        [
            ("messages/received", self.messages_received),
            ("messages/sent", self.messages_sent),
            ("bytes/received", self.bytes_received),
            ("bytes/sent", self.bytes_sent),
            ("connections", self.connections),
        ]
    }
}

/// The averages, and what the previous tick saw.
#[derive(Debug)]
pub(super) struct Loads {
    last_at: Instant,
    last: Totals,
    /// Per counter (in [`Totals::named`] order), per window.
    averages: [[f64; 3]; 5],
}

impl Loads {
    /// All averages at 0, counting from `now` (the broker's start).
    pub(super) fn new(now: Instant) -> Loads {
        Loads {
            last_at: now,
            last: Totals::default(),
            averages: [[0.0; 3]; 5],
        }
    }

    /// Takes the counters as they are at `now`.
    pub(super) fn update(&mut self, totals: &Totals, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_at);
        if elapsed.is_zero() {
            return;
        }
        let previous = self.last.named();
        for (i, (_, total)) in totals.named().into_iter().enumerate() {
            let delta = total.saturating_sub(previous[i].1);
            mix(&mut self.averages[i], delta, elapsed);
        }
        self.last = *totals;
        self.last_at = now;
    }

    /// `(<what>/<window>, per minute)` for every counter and window.
    pub(super) fn values(&self) -> Vec<(String, f64)> {
        let mut out = Vec::with_capacity(15);
        for (i, (what, _)) in self.last.named().into_iter().enumerate() {
            for (j, (window, _)) in WINDOWS.iter().enumerate() {
                out.push((format!("{what}/{window}"), self.averages[i][j]));
            }
        }
        out
    }
}

/// Enters `delta` counted over `elapsed` into one counter's averages.
fn mix(averages: &mut [f64; 3], delta: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    #[allow(clippy::cast_precision_loss)] // counts beyond 2^52 per tick do not happen
    let per_minute = delta as f64 * 60.0 / secs;
    for (avg, (_, window)) in averages.iter_mut().zip(WINDOWS) {
        let keep = (-secs / window).exp();
        *avg = *avg * keep + per_minute * (1.0 - keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_rate_is_reached_by_the_one_minute_average_first() {
        let start = Instant::now();
        let mut loads = Loads::new(start);
        // 10 messages received every second, for 5 minutes.
        for s in 1..=300u64 {
            let totals = Totals {
                messages_received: 10 * s,
                ..Totals::default()
            };
            loads.update(&totals, start + Duration::from_secs(s));
        }
        let values: std::collections::HashMap<String, f64> = loads.values().into_iter().collect();
        let one = values["messages/received/1min"];
        let five = values["messages/received/5min"];
        let fifteen = values["messages/received/15min"];
        // 600 per minute for 5 minutes: each average has come 1 - e^(-5 min / window)
        // of the way from 0 to 600 (99.3 %, 63.2 %, 28.3 %).
        let reached = |window: f64| 600.0 * (1.0 - (-300.0 / window).exp());
        assert!((one - reached(60.0)).abs() < 0.5, "1min: {one}");
        assert!((five - reached(300.0)).abs() < 0.5, "5min: {five}");
        assert!((fifteen - reached(900.0)).abs() < 0.5, "15min: {fifteen}");
        assert_eq!(values["bytes/sent/1min"], 0.0);
    }

    #[test]
    fn a_tick_with_no_time_elapsed_changes_nothing() {
        let start = Instant::now();
        let mut loads = Loads::new(start);
        let totals = Totals {
            bytes_sent: 1000,
            ..Totals::default()
        };
        loads.update(&totals, start);
        assert!(loads.values().iter().all(|(_, v)| *v == 0.0));
        assert_eq!(loads.values().len(), 15);
    }
}
