//! What a subscriber saw: per (publisher, sequence) receive counts and
//! per-message latencies, merged into losses, duplicates and percentiles.

use crate::payload::Header;

/// One subscriber's record of the messages it expects and receives.
#[derive(Debug)]
pub struct Tracker {
    /// Index of the first publisher this subscriber expects.
    first_publisher: u32,
    /// `counts[p][seq]`: copies received of message `seq` of publisher
    /// `first_publisher + p` (saturating).
    counts: Vec<Vec<u8>>,
    /// Latency of every received copy, microseconds.
    pub latencies_us: Vec<u64>,
    /// Copies received (duplicates included).
    pub received: u64,
    /// First copies received.
    pub unique: u64,
    /// Payloads that were not ours: too short, unknown publisher or sequence.
    pub foreign: u64,
}

impl Tracker {
    /// A tracker expecting `per_publisher[i]` messages from publisher
    /// `first_publisher + i`.
    pub fn new(first_publisher: u32, per_publisher: &[u32]) -> Self {
        let total: usize = per_publisher.iter().map(|n| *n as usize).sum();
        Tracker {
            first_publisher,
            counts: per_publisher.iter().map(|n| vec![0u8; *n as usize]).collect(),
            latencies_us: Vec::with_capacity(total),
            received: 0,
            unique: 0,
            foreign: 0,
        }
    }

    /// Messages this tracker expects.
    pub fn expected(&self) -> u64 {
        self.counts.iter().map(|c| c.len() as u64).sum()
    }

    /// Records one received copy at `now_ns`; returns true for a first copy.
    pub fn record(&mut self, header: Option<Header>, now_ns: u64) -> bool {
        let Some(h) = header else {
            self.foreign += 1;
            return false;
        };
        let slot = h
            .publisher
            .checked_sub(self.first_publisher)
            .and_then(|p| self.counts.get_mut(p as usize))
            .and_then(|c| c.get_mut(h.seq as usize));
        let Some(slot) = slot else {
            self.foreign += 1;
            return false;
        };
        *slot = slot.saturating_add(1);
        self.received += 1;
        self.latencies_us.push(now_ns.saturating_sub(h.sent_ns) / 1_000);
        if *slot == 1 {
            self.unique += 1;
            true
        } else {
            false
        }
    }

    /// Expected messages never received.
    pub fn lost(&self) -> u64 {
        self.counts.iter().flatten().filter(|c| **c == 0).count() as u64
    }

    /// Copies beyond the first.
    pub fn duplicates(&self) -> u64 {
        self.received - self.unique
    }
}

/// Totals over all subscribers of a run.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    /// Messages the subscribers should have received.
    pub expected: u64,
    /// Copies received, duplicates included.
    pub received: u64,
    /// First copies received.
    pub unique: u64,
    /// Expected messages never received.
    pub lost: u64,
    /// Copies beyond the first.
    pub dup: u64,
    /// Payloads that were not ours.
    pub foreign: u64,
    /// Latency percentiles of all received copies.
    pub latency: Latency,
}

/// Merges the trackers of a run (consumes their latency vectors).
pub fn merge(trackers: Vec<Tracker>) -> Totals {
    let mut t = Totals::default();
    let mut all: Vec<u64> = Vec::with_capacity(trackers.iter().map(|x| x.latencies_us.len()).sum());
    for tr in trackers {
        t.expected += tr.expected();
        t.received += tr.received;
        t.unique += tr.unique;
        t.lost += tr.lost();
        t.dup += tr.duplicates();
        t.foreign += tr.foreign;
        all.extend_from_slice(&tr.latencies_us);
    }
    t.latency = Latency::of(all);
    t
}

/// Median, 99th percentile and maximum of a set of durations (microseconds).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Number of samples.
    pub samples: u64,
    /// Median, microseconds.
    pub p50_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// Maximum, microseconds.
    pub max_us: u64,
}

impl Latency {
    /// Sorts the samples and takes nearest-rank percentiles.
    pub fn of(mut samples: Vec<u64>) -> Self {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        Latency {
            samples: samples.len() as u64,
            p50_us: nearest_rank(&samples, 50.0),
            p99_us: nearest_rank(&samples, 99.0),
            max_us: samples[samples.len() - 1],
        }
    }
}

/// The nearest-rank percentile `p` (0..=100] of sorted, non-empty samples.
fn nearest_rank(sorted: &[u64], p: f64) -> u64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(publisher: u32, seq: u32, sent_ns: u64) -> Option<Header> {
        Some(Header {
            sent_ns,
            publisher,
            seq,
        })
    }

    #[test]
    fn counts_losses_duplicates_and_foreign() {
        let mut t = Tracker::new(2, &[3, 2]);
        assert_eq!(t.expected(), 5);
        assert!(t.record(h(2, 0, 0), 5_000));
        assert!(!t.record(h(2, 0, 0), 7_000));
        assert!(t.record(h(3, 1, 1_000), 3_000));
        assert!(!t.record(h(1, 0, 0), 1)); // publisher below the range
        assert!(!t.record(h(4, 0, 0), 1)); // publisher above the range
        assert!(!t.record(h(2, 3, 0), 1)); // sequence beyond the count
        assert!(!t.record(None, 1));
        assert_eq!(t.received, 3);
        assert_eq!(t.unique, 2);
        assert_eq!(t.duplicates(), 1);
        assert_eq!(t.lost(), 3);
        assert_eq!(t.foreign, 4);
        assert_eq!(t.latencies_us, vec![5, 7, 2]);
    }

    #[test]
    fn merge_adds_up() {
        let mut a = Tracker::new(0, &[2]);
        let mut b = Tracker::new(0, &[2]);
        a.record(h(0, 0, 0), 1_000);
        a.record(h(0, 1, 0), 2_000);
        b.record(h(0, 1, 0), 3_000);
        let t = merge(vec![a, b]);
        assert_eq!(t.expected, 4);
        assert_eq!(t.unique, 3);
        assert_eq!(t.lost, 1);
        assert_eq!(t.latency.max_us, 3);
        assert_eq!(t.latency.samples, 3);
    }

    #[test]
    fn percentiles() {
        let l = Latency::of((1..=100).rev().collect());
        assert_eq!(l.p50_us, 50);
        assert_eq!(l.p99_us, 99);
        assert_eq!(l.max_us, 100);
        assert_eq!(Latency::of(vec![]), Latency::default());
        let one = Latency::of(vec![7]);
        assert_eq!((one.p50_us, one.p99_us, one.max_us), (7, 7, 7));
    }
}
