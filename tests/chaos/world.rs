//! What the whole run shares: the seeded random numbers of the schedule, the
//! run's settings from the environment, the clock and timeline ([`World`]),
//! and the records the clients and the faults leave for the report.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::support::pg_cluster::StopMode;
use crate::DEFAULT_SECS;

// ---------------------------------------------------------------------------
// Schedule randomness and settings
// ---------------------------------------------------------------------------

/// xorshift64: the fault schedule, reproducible from the seed.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        // Spread small seeds over the state; xorshift must not start at 0.
        let s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        Rng(if s == 0 { 1 } else { s })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi` milliseconds.
    pub(crate) fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    /// Fisher-Yates.
    pub(crate) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    Some(
        v.parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
    )
}

/// The run's settings: the schedule's seed (`POSTBOX_CHAOS_SEED`, else the
/// clock) and how long faults are injected (`POSTBOX_CHAOS_SECS`).
pub(crate) struct Settings {
    pub(crate) seed: u64,
    pub(crate) secs: u64,
}

impl Settings {
    /// Reads the environment and prints the seed and how to replay it.
    pub(crate) fn from_env() -> Settings {
        let seed = env_u64("POSTBOX_CHAOS_SEED").unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
        let secs = env_u64("POSTBOX_CHAOS_SECS").unwrap_or(DEFAULT_SECS);
        println!("chaos: seed {seed} (POSTBOX_CHAOS_SEED={seed} replays this schedule), {secs} s of faults (POSTBOX_CHAOS_SECS)");
        Settings { seed, secs }
    }
}

// ---------------------------------------------------------------------------
// Shared records
// ---------------------------------------------------------------------------

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the whole run shares: the clock, a timeline of faults and connection
/// events, and the publishers' results.
pub(crate) struct World {
    t0: Instant,
    /// The wall clock at `t0` (to find the broker's log lines of a moment).
    pub(crate) wall0: SystemTime,
    pub(crate) timeline: Mutex<Vec<(f64, String)>>,
    pub(crate) stop_publishing: AtomicBool,
    /// Payload -> when its PUBACK arrived (seconds since `t0`).
    pub(crate) acked: Mutex<HashMap<String, f64>>,
    /// When the newest PUBACK arrived.
    pub(crate) last_ack: Mutex<f64>,
    /// Publishes given up without PUBACK: (payload, when, why).
    pub(crate) unacked: Mutex<Vec<(String, f64, String)>>,
    pub(crate) attempts: AtomicUsize,
    /// Broker SIGKILLs: when, and each subscriber's read position read from
    /// the database just before (a lower bound of what was durable).
    pub(crate) kills: Mutex<Vec<Kill>>,
    /// PostgreSQL faults, in order.
    pub(crate) db_faults: Mutex<Vec<DbFault>>,
}

impl World {
    /// A world whose clock starts now.
    pub(crate) fn start() -> World {
        World {
            t0: Instant::now(),
            wall0: SystemTime::now(),
            timeline: Mutex::default(),
            stop_publishing: AtomicBool::new(false),
            acked: Mutex::default(),
            last_ack: Mutex::new(f64::MIN),
            unacked: Mutex::default(),
            attempts: AtomicUsize::new(0),
            kills: Mutex::default(),
            db_faults: Mutex::default(),
        }
    }

    pub(crate) fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    pub(crate) fn note(&self, what: impl Into<String>) {
        let t = self.now();
        lock(&self.timeline).push((t, what.into()));
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Kill {
    /// Just before the SIGKILL was sent.
    pub(crate) at: f64,
    /// When the process had exited.
    pub(crate) done: f64,
    /// When the new process listened again.
    pub(crate) restarted: f64,
    pub(crate) positions: Vec<Option<i64>>,
    /// False when the database could not be read just before: `positions`
    /// are the last ones read (still a lower bound).
    pub(crate) positions_read: bool,
}

/// A fault of the PostgreSQL server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DbFaultKind {
    /// `pg_terminate_backend` of the plugin's connections (the server stays up).
    Terminate,
    /// `pg_ctl restart -m <mode>`.
    Restart(StopMode),
    /// `pg_ctl stop -m <mode>`, a pause, `pg_ctl start`.
    StopStart(StopMode),
}

impl DbFaultKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            DbFaultKind::Terminate => "pg_terminate_backend",
            DbFaultKind::Restart(StopMode::Fast) => "restart -m fast",
            DbFaultKind::Restart(StopMode::Immediate) => "restart -m immediate",
            DbFaultKind::StopStart(StopMode::Fast) => "stop -m fast + start",
            DbFaultKind::StopStart(StopMode::Immediate) => "stop -m immediate + start",
        }
    }

    /// The group the longest stall is printed for.
    pub(crate) fn group(self) -> &'static str {
        match self {
            DbFaultKind::Terminate => "terminate",
            DbFaultKind::Restart(StopMode::Fast) => "restart fast",
            DbFaultKind::Restart(StopMode::Immediate) => "restart immediate",
            DbFaultKind::StopStart(_) => "stop/start",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct DbFault {
    pub(crate) kind: DbFaultKind,
    /// Just before `pg_ctl` (or the terminate query) was run.
    pub(crate) down_at: f64,
    /// When `pg_ctl` returned: the server accepts connections again.
    pub(crate) back_at: f64,
}

/// One subscriber's record: the single-node test's whole record, and the
/// part of the cluster test's that is the same.
#[derive(Default)]
pub(crate) struct SubLog {
    /// Payload -> every arrival.
    pub(crate) received: HashMap<String, Vec<Arrival>>,
    /// Payload -> when this subscriber's PUBACK for it was written, and on
    /// which connection (the single-node test keeps the first PUBACK, the
    /// cluster test the latest).
    pub(crate) ack_written: HashMap<String, (f64, usize)>,
    /// Arrivals of a payload whose PUBACK had been written before.
    pub(crate) repeats: Vec<Repeat>,
    /// Arrivals again of a payload whose PUBACK had not been written yet
    /// (allowed: at-least-once).
    pub(crate) redelivered_before_ack: usize,
    /// Connections that got a CONNACK.
    pub(crate) connects: usize,
    pub(crate) connected: bool,
    /// Times a drop armed with `DropAfter` fired.
    pub(crate) mid_stream_drops: usize,
}

impl SubLog {
    /// Records `arrival` of `payload`: a repeat when its PUBACK was written
    /// before, a redelivery when it came before without one.
    pub(crate) fn arrived(&mut self, payload: &str, arrival: Arrival) {
        if let Some(&(acked_at, acked_on)) = self.ack_written.get(payload) {
            self.repeats.push(Repeat {
                payload: payload.to_string(),
                acked_at,
                acked_on,
                again_at: arrival.at,
                again_on: arrival.connection,
            });
        } else if self.received.contains_key(payload) {
            self.redelivered_before_ack += 1;
        }
        self.received
            .entry(payload.to_string())
            .or_default()
            .push(arrival);
    }
}

/// One arrival of a PUBLISH at a subscriber.
#[derive(Clone, Copy)]
pub(crate) struct Arrival {
    /// Seconds since `t0`.
    pub(crate) at: f64,
    /// Which connection of the subscriber (1 = its first in the run).
    pub(crate) connection: usize,
    pub(crate) pkid: u16,
    pub(crate) dup: bool,
}

impl std::fmt::Debug for Arrival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} s (connection {}, packet id {}{})",
            self.at,
            self.connection,
            self.pkid,
            if self.dup { ", DUP" } else { "" }
        )
    }
}

/// An arrival of a payload whose PUBACK had been written before.
#[derive(Clone, Debug)]
pub(crate) struct Repeat {
    pub(crate) payload: String,
    /// When the PUBACK before it was written (see [`SubLog::ack_written`]),
    /// and on which connection.
    pub(crate) acked_at: f64,
    pub(crate) acked_on: usize,
    /// When it came again, and on which connection.
    pub(crate) again_at: f64,
    pub(crate) again_on: usize,
}
