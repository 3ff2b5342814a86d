//! Metrics: how a plugin shows an operator what it is doing.
//!
//! The broker owns one [`MetricsRegistry`] and hands it to every plugin in
//! [`PluginContext::metrics`](crate::PluginContext). A plugin registers its
//! metrics once, at start, and keeps the handles it gets back:
//! [`Counter`], [`Gauge`] and [`Histogram`] are cheap to clone and update
//! with atomics only (no lock, no allocation), so they can sit on a per
//! message path. The broker reads every registered metric when it is
//! scraped (`GET /metrics` on the HTTP listener) and writes it out in the
//! Prometheus text format, next to its own.
//!
//! ## Names
//! A name is the full Prometheus name, `postbox_<plugin>_<what>_<unit>`
//! (for example `postbox_pgsql_commit_duration_seconds`), in base units
//! (seconds, bytes). A counter's name leaves out `_total`: the text format
//! adds it. Metrics of one name differ by their labels (for example
//! `pool="pool1"`); registering a name again with the same labels returns
//! the metric already registered (a plugin stopped and started again keeps
//! counting), with another kind or help text it is an error.
//!
//! ## Hook timing
//! The time each hook callback takes and its failures are measured by the
//! [`Chain`](crate::Chain) itself, per owner and hook point
//! ([`CallStats`], read through [`Hooks::call_stats`](crate::Hooks::call_stats)):
//! a plugin does nothing for those.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Why a metric could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// The name or a label name is not a Prometheus name.
    #[error("`{0}` is not a valid metric or label name ([a-zA-Z_][a-zA-Z0-9_]*)")]
    InvalidName(String),
    /// The name is registered already as another kind, or with another help text.
    #[error("metric `{0}` is registered already with another kind or help text")]
    Conflict(String),
}

/// A monotonic count (Prometheus counter).
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (Prometheus gauge).
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Adds `delta` (negative to subtract).
    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::Relaxed);
    }

    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bucket bounds for durations in seconds, 100 µs to 10 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Observations in buckets (Prometheus histogram): counts per upper bound,
/// their sum and their number. Lock-free: an observation is three atomic
/// additions and a compare-and-swap of the sum.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramCore>);

#[derive(Debug)]
struct HistogramCore {
    bounds: Box<[f64]>,
    /// One per bound, and the last for values above every bound.
    counts: Box<[AtomicU64]>,
    /// The sum, as `f64` bits.
    sum: AtomicU64,
}

/// What a [`Histogram`] holds at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations at or below it)`, cumulative, ending with
    /// `+Inf` (the total count).
    pub buckets: Vec<(f64, u64)>,
    /// The sum of the observations.
    pub sum: f64,
    /// The number of observations.
    pub count: u64,
}

impl Histogram {
    /// A histogram with these upper bounds (sorted, finite; others are left out).
    pub fn new(bounds: &[f64]) -> Histogram {
        let mut b: Vec<f64> = bounds.iter().copied().filter(|v| v.is_finite()).collect();
        b.sort_by(f64::total_cmp);
        b.dedup();
        let counts = (0..=b.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram(Arc::new(HistogramCore {
            bounds: b.into_boxed_slice(),
            counts,
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    /// A histogram of durations in seconds ([`DURATION_BUCKETS`]).
    pub fn durations() -> Histogram {
        Histogram::new(DURATION_BUCKETS)
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let core = &self.0;
        let i = core.bounds.partition_point(|b| *b < v);
        if let Some(c) = core.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let mut cur = core.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(cur) + v).to_bits();
            match core
                .sum
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Records a duration, in seconds.
    pub fn observe_duration(&self, d: std::time::Duration) {
        self.observe(d.as_secs_f64());
    }

    /// The buckets, sum and count now (not atomic as a whole: a scrape
    /// racing an observation may see it in one bucket and not yet the sum).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let core = &self.0;
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(core.counts.len());
        for (i, c) in core.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let bound = core.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, cumulative));
        }
        HistogramSnapshot {
            buckets,
            sum: f64::from_bits(core.sum.load(Ordering::Relaxed)),
            count: cumulative,
        }
    }
}

/// A registered metric's handle, as the broker reads it.
#[derive(Debug, Clone)]
pub enum Metric {
    /// A counter.
    Counter(Counter),
    /// A gauge.
    Gauge(Gauge),
    /// A histogram.
    Histogram(Histogram),
}

impl Metric {
    fn same_kind(&self, other: &Metric) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// Labels of one metric: `(name, value)` pairs.
pub type Labels = Vec<(String, String)>;

/// Every metric of one name.
#[derive(Debug, Clone)]
pub struct Family {
    /// The Prometheus name (counters without `_total`).
    pub name: String,
    /// The help text.
    pub help: String,
    /// Each label set and its metric, in registration order.
    pub members: Vec<(Labels, Metric)>,
}

/// The metrics plugins registered; the broker owns it and reads it on
/// every scrape. See the module documentation.
#[derive(Debug, Default)]
pub struct MetricsRegistry {
    families: RwLock<Vec<Family>>,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl MetricsRegistry {
    /// An empty registry.
    pub fn new() -> MetricsRegistry {
        MetricsRegistry::default()
    }

    /// Registers (or finds) a counter.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Result<Counter, MetricsError> {
        match self.register(name, help, labels, Metric::Counter(Counter::default()))? {
            Metric::Counter(c) => Ok(c),
            _ => Err(MetricsError::Conflict(name.to_string())),
        }
    }

    /// Registers (or finds) a gauge.
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Result<Gauge, MetricsError> {
        match self.register(name, help, labels, Metric::Gauge(Gauge::default()))? {
            Metric::Gauge(g) => Ok(g),
            _ => Err(MetricsError::Conflict(name.to_string())),
        }
    }

    /// Registers (or finds) a histogram with these bucket bounds (a
    /// histogram found keeps the bounds it was registered with).
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
    ) -> Result<Histogram, MetricsError> {
        match self.register(name, help, labels, Metric::Histogram(Histogram::new(bounds)))? {
            Metric::Histogram(h) => Ok(h),
            _ => Err(MetricsError::Conflict(name.to_string())),
        }
    }

    fn register(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        metric: Metric,
    ) -> Result<Metric, MetricsError> {
        if !valid_name(name) {
            return Err(MetricsError::InvalidName(name.to_string()));
        }
        if let Some((bad, _)) = labels.iter().find(|(k, _)| !valid_name(k)) {
            return Err(MetricsError::InvalidName((*bad).to_string()));
        }
        let labels: Labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        let mut families = self.families.write().unwrap_or_else(|p| p.into_inner());
        let Some(family) = families.iter_mut().find(|f| f.name == name) else {
            families.push(Family {
                name: name.to_string(),
                help: help.to_string(),
                members: vec![(labels, metric.clone())],
            });
            return Ok(metric);
        };
        let other_kind = family.members.first().is_some_and(|(_, m)| !m.same_kind(&metric));
        if family.help != help || other_kind {
            return Err(MetricsError::Conflict(name.to_string()));
        }
        if let Some((_, existing)) = family.members.iter().find(|(l, _)| *l == labels) {
            return Ok(existing.clone());
        }
        family.members.push((labels, metric.clone()));
        Ok(metric)
    }

    /// Every family, in registration order (the broker's scrape).
    pub fn families(&self) -> Vec<Family> {
        self.families.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// How one owner's callbacks on one hook point fared: the time each call
/// took (seconds, [`DURATION_BUCKETS`]) and the calls that failed (error,
/// panic or time-out). Kept by the chain; see [`crate::Hooks::call_stats`].
#[derive(Debug, Clone)]
pub struct CallStats {
    /// Duration of each call, in seconds (a failed call counts too).
    pub latency: Histogram,
    /// Failed calls.
    pub failures: Counter,
}

impl Default for CallStats {
    fn default() -> Self {
        CallStats {
            latency: Histogram::durations(),
            failures: Counter::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[1.0, 5.0]);
        h.observe(0.5);
        h.observe(1.0);
        h.observe(3.0);
        h.observe(7.0);
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(1.0, 2), (5.0, 3), (f64::INFINITY, 4)]);
        assert_eq!(s.count, 4);
        assert!((s.sum - 11.5).abs() < 1e-9);
    }

    #[test]
    fn registering_again_returns_the_same_metric() {
        let r = MetricsRegistry::new();
        let a = r.counter("postbox_x", "x", &[("pool", "p1")]).unwrap();
        a.add(3);
        let b = r.counter("postbox_x", "x", &[("pool", "p1")]).unwrap();
        assert_eq!(b.get(), 3);
        let other = r.counter("postbox_x", "x", &[("pool", "p2")]).unwrap();
        assert_eq!(other.get(), 0);
        assert_eq!(r.families()[0].members.len(), 2);
    }

    #[test]
    fn conflicts_and_bad_names_are_refused() {
        let r = MetricsRegistry::new();
        r.counter("postbox_x", "x", &[]).unwrap();
        assert_eq!(
            r.gauge("postbox_x", "x", &[]).unwrap_err(),
            MetricsError::Conflict("postbox_x".into())
        );
        assert!(matches!(
            r.gauge("postbox-y", "y", &[]),
            Err(MetricsError::InvalidName(_))
        ));
        assert!(matches!(
            r.gauge("postbox_y", "y", &[("bad label", "v")]),
            Err(MetricsError::InvalidName(_))
        ));
    }
}
