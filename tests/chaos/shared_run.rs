//! The frame of a chaos run, shared by the single-node and the cluster
//! chaos tests: the schedule's rounds of faults ([`Rounds`]), and the steps
//! of the end of the run that are the same in both (publishing stopped,
//! the subscribers drained, their read positions awaited). Each test's own
//! `drain` module puts these together with its last step (a last broker
//! crash, a final move of every subscriber).
//!
//! It uses the including test's `FAULT_PAUSE_MS` and `DRAIN_TIMEOUT`.

use std::collections::HashMap;
use std::fmt::Debug;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::shared_clients::{stop_publishers, Sub, SubRecord};
use crate::world::{lock, Rng, World};
use crate::{DRAIN_TIMEOUT, FAULT_PAUSE_MS};

// ---------------------------------------------------------------------------
// The schedule
// ---------------------------------------------------------------------------

/// How the schedule went.
pub(crate) struct ScheduleRun {
    /// Rounds begun.
    pub(crate) rounds: usize,
    /// When the last fault was over (seconds since `t0`).
    pub(crate) faults_stopped: f64,
}

/// The schedule's faults, in rounds: each round is every kind of fault
/// once, in an order drawn from the seed, with a pause of
/// [`FAULT_PAUSE_MS`] drawn before each fault. The first round runs whole,
/// later ones stop once the time given has passed.
pub(crate) struct Rounds<F> {
    round: Vec<F>,
    end: Instant,
    rounds: usize,
    /// What is left of the current round.
    left: std::vec::IntoIter<F>,
}

impl<F: Clone + Debug> Rounds<F> {
    /// Rounds of `round`, for `secs` from now.
    pub(crate) fn new(round: &[F], secs: u64) -> Rounds<F> {
        Rounds {
            round: round.to_vec(),
            end: Instant::now() + Duration::from_secs(secs),
            rounds: 0,
            left: Vec::new().into_iter(),
        }
    }

    /// The next fault, once its pause is over; `None` when the schedule is.
    /// The random draws (the order, the pauses) come from `rng` in the
    /// order the faults are injected in, so the schedule depends on the
    /// seed only.
    pub(crate) async fn next(&mut self, world: &World, rng: &mut Rng) -> Option<F> {
        if self.left.len() == 0 {
            if self.rounds > 0 && Instant::now() >= self.end {
                return None;
            }
            self.rounds += 1;
            let mut order = self.round.clone();
            rng.shuffle(&mut order);
            world.note(format!("schedule: round {}: {order:?}", self.rounds));
            self.left = order.into_iter();
        }
        let fault = self.left.next()?;
        tokio::time::sleep(rng.ms(FAULT_PAUSE_MS.0, FAULT_PAUSE_MS.1)).await;
        if self.rounds > 1 && Instant::now() >= self.end {
            return None;
        }
        Some(fault)
    }

    /// The schedule is over: noted, and how it went.
    pub(crate) fn finish(self, world: &World) -> ScheduleRun {
        world.note("faults stop");
        ScheduleRun {
            rounds: self.rounds,
            faults_stopped: world.now(),
        }
    }
}

// ---------------------------------------------------------------------------
// The end of the run
// ---------------------------------------------------------------------------

/// What the end of the run found; `last`, what the test's last step after
/// the drain found.
pub(crate) struct Ending<T> {
    /// Payload -> when its PUBACK arrived: every message acknowledged to a
    /// publisher, which every subscriber must receive.
    pub(crate) expected: HashMap<String, f64>,
    /// How long the subscribers took to receive everything (or
    /// [`DRAIN_TIMEOUT`]).
    pub(crate) drained_in: Duration,
    /// Per subscriber, what it had not received at the end of the drain,
    /// oldest PUBACK first.
    pub(crate) lost_at_drain: Vec<Vec<String>>,
    /// The newest id in `mqtt_msg`.
    pub(crate) max_id: i64,
    /// The subscribers' read positions after the drain.
    pub(crate) positions: Vec<Option<i64>>,
    pub(crate) last: T,
}

/// Publishing goes on until a PUBACK after the last fault (at most
/// `within`: a stuck broker shows in the report, not as a hang), then the
/// publishers finish the message in hand and stop (each within
/// `stop_within`).
pub(crate) async fn stop_publishing(
    world: &World,
    publishers: Vec<JoinHandle<()>>,
    faults_stopped: f64,
    within: Duration,
    stop_within: Duration,
) {
    let deadline = Instant::now() + within;
    while *lock(&world.last_ack) < faults_stopped && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_publishers(world, publishers, stop_within).await;
}

/// The subscribers after the drain.
pub(crate) struct Drained {
    expected: HashMap<String, f64>,
    drained_in: Duration,
    lost_at_drain: Vec<Vec<String>>,
    /// When the drain had to be over.
    pub(crate) deadline: Instant,
}

impl Drained {
    /// The [`Ending`], with what the steps after the drain found.
    pub(crate) fn ending<T>(self, max_id: i64, positions: Vec<Option<i64>>, last: T) -> Ending<T> {
        Ending {
            expected: self.expected,
            drained_in: self.drained_in,
            lost_at_drain: self.lost_at_drain,
            max_id,
            positions,
            last,
        }
    }
}

/// The drain, once publishing has stopped: every subscriber is given
/// [`DRAIN_TIMEOUT`] to receive everything acknowledged (looked at every
/// `poll`). What a subscriber has not received by then is lost, even if
/// the test's last step after the drain brings it.
pub(crate) async fn drain_subscribers<L: SubRecord, C>(
    world: &World,
    subs: &[Sub<L, C>],
    poll: Duration,
) -> Drained {
    let expected: HashMap<String, f64> = lock(&world.acked).clone();
    let drain_start = Instant::now();
    let deadline = drain_start + DRAIN_TIMEOUT;
    while missing(subs, &expected) > 0 && Instant::now() < deadline {
        tokio::time::sleep(poll).await;
    }
    let drained_in = drain_start.elapsed();
    world.note(format!(
        "drained ({} deliveries missing)",
        missing(subs, &expected)
    ));
    let lost_at_drain = lost(subs, &expected);
    Drained {
        expected,
        drained_in,
        lost_at_drain,
        deadline,
    }
}

/// Deliveries of `expected` the subscribers have not received, in all.
fn missing<L: SubRecord, C>(subs: &[Sub<L, C>], expected: &HashMap<String, f64>) -> usize {
    subs.iter()
        .map(|s| {
            let l = lock(&s.log);
            let received = &l.common().received;
            expected.keys().filter(|p| !received.contains_key(*p)).count()
        })
        .sum()
}

/// Per subscriber, what of `expected` it has not received, oldest PUBACK first.
fn lost<L: SubRecord, C>(subs: &[Sub<L, C>], expected: &HashMap<String, f64>) -> Vec<Vec<String>> {
    subs.iter()
        .map(|s| {
            let l = lock(&s.log);
            let received = &l.common().received;
            let mut lost: Vec<String> = expected
                .keys()
                .filter(|p| !received.contains_key(*p))
                .cloned()
                .collect();
            lost.sort_by(|a, b| expected[a].total_cmp(&expected[b]));
            lost
        })
        .collect()
}

/// Every subscriber acknowledges everything it gets, so its read position
/// reaches the newest stored id, `max_id`: reads the positions (`read`,
/// every `poll`) until they all have or `deadline` has passed, and notes
/// and returns the last read.
pub(crate) async fn until_positions_reach(
    world: &World,
    max_id: i64,
    deadline: Instant,
    poll: Duration,
    mut read: impl AsyncFnMut() -> Vec<Option<i64>>,
) -> Vec<Option<i64>> {
    let mut positions;
    loop {
        positions = read().await;
        if positions.iter().all(|p| *p == Some(max_id)) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(poll).await;
    }
    world.note(format!("positions {positions:?}, newest stored id {max_id}"));
    positions
}

/// Per subscriber, its arrivals so far (see [`Sub::arrivals`]).
pub(crate) fn arrivals<L: SubRecord, C>(subs: &[Sub<L, C>]) -> Vec<usize> {
    subs.iter().map(Sub::arrivals).collect()
}

/// Per subscriber, its arrivals since `before` (what [`arrivals`] gave).
pub(crate) fn arrivals_since<L: SubRecord, C>(subs: &[Sub<L, C>], before: &[usize]) -> Vec<usize> {
    subs.iter()
        .zip(before)
        .map(|(s, before)| s.arrivals() - before)
        .collect()
}
