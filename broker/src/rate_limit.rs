//! Token buckets for the rate limits, and a throttle for the log lines
//! they cause.
//!
//! - `listener.<tcp|ssl>.<name>.max_conn_rate`: one bucket per listener,
//!   owned by its accept loop (no lock: one task takes every token).
//! - `mqtt.publish_limit`: one bucket per client connection, owned by the
//!   session task that reads the connection.
//! - `listener.<kind>.<name>.rate_limit.conn_bytes_in`: one bucket of bytes
//!   per client connection, owned by the session task; a read may overdraw
//!   it, and the task then stops reading until it has refilled.

use std::time::{Duration, Instant};

/// A rate: at most `count` events per `per`, with bursts of up to `count`
/// (`mqtt.publish_limit = <count>,<duration>`; `max_conn_rate = n` is
/// `n` per second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Events allowed per `per`, and the burst size. Greater than 0.
    pub count: u32,
    /// The period. Greater than 0.
    pub per: Duration,
}

impl Rate {
    /// `count` events per second.
    pub fn per_second(count: u32) -> Rate {
        Rate {
            count,
            per: Duration::from_secs(1),
        }
    }
}

/// A token bucket: holds up to `count` tokens, starts full, refills
/// continuously at `count` tokens per `per`; each event takes one token.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    /// Tokens added per second.
    refill: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate`, as of `now`.
    pub fn new(rate: Rate, now: Instant) -> TokenBucket {
        let capacity = f64::from(rate.count.max(1));
        // A zero period would divide by zero; the config refuses it, this keeps it finite anyway.
        let secs = rate.per.as_secs_f64().max(1e-9);
        TokenBucket {
            capacity,
            tokens: capacity,
            refill: capacity / secs,
            last: now,
        }
    }

    /// Takes a token if there is one (true), after refilling for the time
    /// since the last call. A `now` earlier than the last call refills nothing.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        if now > self.last {
            self.last = now;
        }
        self.tokens = (self.tokens + elapsed * self.refill).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl TokenBucket {
    /// Takes `n` tokens, overdrawing the bucket if need be (after refilling
    /// for the time since the last call). Returns how long until the bucket
    /// is out of debt again (`None`: it is not in debt).
    pub fn take_overdraw(&mut self, n: usize, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        if now > self.last {
            self.last = now;
        }
        self.tokens = (self.tokens + elapsed * self.refill).min(self.capacity) - n as f64;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.refill))
    }
}

/// `rate_limit.conn_bytes_in` of one connection: the bytes read are taken
/// from a bucket, and reading pauses while it is overdrawn. Kept boxed by
/// the session (one allocation per connection, and only with the limit).
#[derive(Debug)]
pub struct ReadThrottle {
    bucket: TokenBucket,
    /// Armed while paused: when the bucket is out of debt.
    resume: std::pin::Pin<Box<tokio::time::Sleep>>,
    paused: bool,
}

impl ReadThrottle {
    /// A throttle with a full bucket for `rate`.
    pub fn new(rate: Rate) -> ReadThrottle {
        let now = tokio::time::Instant::now();
        ReadThrottle {
            bucket: TokenBucket::new(rate, now.into_std()),
            resume: Box::pin(tokio::time::sleep_until(now)),
            paused: false,
        }
    }

    /// Counts `n` bytes read; pauses reading if that overdrew the bucket.
    pub fn read(&mut self, n: usize) {
        let now = tokio::time::Instant::now();
        if let Some(wait) = self.bucket.take_overdraw(n, now.into_std()) {
            self.resume.as_mut().reset(now + wait);
            self.paused = true;
        }
    }

    /// True while reading is paused.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Polls for the moment reading may resume (call [`ReadThrottle::resume`] then).
    pub fn poll_wait(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::future::Future::poll(self.resume.as_mut(), cx)
    }

    /// Reading resumes.
    pub fn resume(&mut self) {
        self.paused = false;
    }
}

/// Lets a recurring log line through at most once per `every`, counting
/// what it held back, so a flood of refusals logs one line per period
/// instead of one per connection.
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl LogThrottle {
    /// A throttle that lets one line through per `every`.
    pub fn new(every: Duration) -> LogThrottle {
        LogThrottle {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// Records one occurrence. Returns `Some(n)` when a line should be
    /// logged now, `n` being the occurrences held back since the last line
    /// (this one included); `None` when this one is only counted.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.held_back += 1;
        let due = match self.last {
            None => true,
            Some(last) => now.saturating_duration_since(last) >= self.every,
        };
        if !due {
            return None;
        }
        self.last = Some(now);
        let n = self.held_back;
        self.held_back = 0;
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_full_bucket_allows_a_burst_of_count_then_refuses() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(
            Rate {
                count: 3,
                per: secs(10.0),
            },
            t0,
        );
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        assert!(!b.try_take(t0 + secs(3.0)), "0.9 tokens after 3 s");
    }

    #[test]
    fn tokens_refill_at_count_per_period_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(
            Rate {
                count: 100,
                per: secs(10.0),
            },
            t0,
        );
        for _ in 0..100 {
            assert!(b.try_take(t0));
        }
        assert!(!b.try_take(t0));
        // 10 tokens per second: 0.5 s gives 5.
        let t1 = t0 + secs(0.5);
        for _ in 0..5 {
            assert!(b.try_take(t1));
        }
        assert!(!b.try_take(t1));
        // A long pause refills to the burst size, not beyond.
        let t2 = t1 + secs(3600.0);
        for _ in 0..100 {
            assert!(b.try_take(t2));
        }
        assert!(!b.try_take(t2));
    }

    #[test]
    fn per_second_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::per_second(2), t0);
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        assert!(b.try_take(t0 + secs(0.5)));
        assert!(!b.try_take(t0 + secs(0.5)));
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let t0 = Instant::now() + secs(10.0);
        let mut b = TokenBucket::new(Rate::per_second(1), t0);
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0 - secs(5.0)));
        assert!(!b.try_take(t0));
        assert!(b.try_take(t0 + secs(1.0)));
    }

    #[test]
    fn log_throttle_lets_one_line_per_period_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut t = LogThrottle::new(secs(10.0));
        assert_eq!(t.hit(t0), Some(1));
        assert_eq!(t.hit(t0 + secs(1.0)), None);
        assert_eq!(t.hit(t0 + secs(2.0)), None);
        assert_eq!(t.hit(t0 + secs(10.0)), Some(3));
        assert_eq!(t.hit(t0 + secs(10.5)), None);
    }

    #[test]
    fn overdrawn_bytes_are_waited_for() {
        let t0 = Instant::now();
        // 4096 bytes per second, in bursts of 2048.
        let mut b = TokenBucket::new(
            Rate {
                count: 2048,
                per: secs(0.5),
            },
            t0,
        );
        assert_eq!(b.take_overdraw(2048, t0), None);
        let wait = b.take_overdraw(1024, t0).unwrap();
        assert!((wait.as_secs_f64() - 0.25).abs() < 1e-6, "{wait:?}");
        // Refilled by then: out of debt.
        assert_eq!(b.take_overdraw(0, t0 + secs(0.25)), None);
        assert_eq!(b.take_overdraw(1024, t0 + secs(0.5)), None);
    }
}
