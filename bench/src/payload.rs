//! The benchmark payload: who sent a message, when, and its sequence number.
//!
//! Layout (big endian), then zero padding up to the payload size:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | send time, nanoseconds since the process's [`Clock`] base |
//! | 8..12 | publisher index |
//! | 12..16 | sequence number within that publisher |
//!
//! All clients live in one process and share one [`Clock`], so send and
//! receive times come from the same monotonic clock.

use std::time::{Duration, Instant};

/// Size of the header; also the smallest payload.
pub const HEADER_LEN: usize = 16;

/// A monotonic clock shared by every client of the process.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    /// A clock whose zero is now.
    pub fn new() -> Self {
        Clock { base: Instant::now() }
    }

    /// Nanoseconds since the base.
    pub fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }

    /// Nanoseconds from the base to `t` (0 for an instant before the base).
    pub fn ns_at(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `ns` nanoseconds after the base.
    pub fn instant_at(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The decoded header of a benchmark payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Send time, nanoseconds since the shared clock's base.
    pub sent_ns: u64,
    /// Index of the publisher.
    pub publisher: u32,
    /// Sequence number within the publisher, from 0.
    pub seq: u32,
}

/// Builds a payload of `size` bytes (at least [`HEADER_LEN`]) carrying `header`.
pub fn encode(header: Header, size: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(size.max(HEADER_LEN));
    buf.extend_from_slice(&header.sent_ns.to_be_bytes());
    buf.extend_from_slice(&header.publisher.to_be_bytes());
    buf.extend_from_slice(&header.seq.to_be_bytes());
    buf.resize(size.max(HEADER_LEN), 0);
    buf
}

/// Reads the header of a payload; `None` when it is shorter than [`HEADER_LEN`].
pub fn decode(payload: &[u8]) -> Option<Header> {
    let sent_ns = u64::from_be_bytes(payload.get(0..8)?.try_into().ok()?);
    let publisher = u32::from_be_bytes(payload.get(8..12)?.try_into().ok()?);
    let seq = u32::from_be_bytes(payload.get(12..16)?.try_into().ok()?);
    Some(Header {
        sent_ns,
        publisher,
        seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let h = Header {
            sent_ns: 0x0102_0304_0506_0708,
            publisher: 7,
            seq: 123_456,
        };
        let p = encode(h, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(decode(&p), Some(h));
        assert!(p[16..].iter().all(|b| *b == 0));
    }

    #[test]
    fn minimum_size_is_the_header() {
        let h = Header {
            sent_ns: 1,
            publisher: 2,
            seq: 3,
        };
        assert_eq!(encode(h, 0).len(), HEADER_LEN);
        assert_eq!(decode(&encode(h, 0)), Some(h));
        assert_eq!(decode(&[0u8; 15]), None);
    }

    #[test]
    fn clock_is_monotonic() {
        let c = Clock::new();
        let a = c.now_ns();
        let b = c.now_ns();
        assert!(b >= a);
        assert_eq!(c.ns_at(c.instant_at(5_000)), 5_000);
    }
}
