//! After the faults: publishing stops once it has resumed, every subscriber
//! is given time to receive everything acknowledged, every subscriber then
//! moves to another node once more (what comes after is a repeat, or was
//! lost before), and the subscribers stop.

use std::collections::HashMap;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clients::{self, Sub};
use crate::publishers;
use crate::rig::Rig;
use crate::schedule::move_sub;
use crate::world::lock;
use crate::{AFTER_FINAL_MOVE, CONNECT_TIMEOUT, DRAIN_TIMEOUT, PUBACK_TIMEOUT};

/// What the end of the run found.
pub(crate) struct Ending {
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
    /// Per subscriber, the node it moved to at the end (`None`: it did not).
    pub(crate) final_moves: Vec<Option<usize>>,
    /// Per subscriber, the messages received after the final move.
    pub(crate) after_final_move: Vec<usize>,
}

/// Ends the run: see the module's comment.
pub(crate) async fn drain(rig: &mut Rig, publishers: Vec<JoinHandle<()>>, faults_stopped: f64) -> Ending {
    stop_publishing(rig, publishers, faults_stopped).await;
    let expected: HashMap<String, f64> = lock(&rig.world.acked).clone();

    let drain_start = Instant::now();
    let drain_deadline = drain_start + DRAIN_TIMEOUT;
    while missing(&rig.subs, &expected) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained_in = drain_start.elapsed();
    rig.world.note(format!(
        "drained ({} deliveries missing)",
        missing(&rig.subs, &expected)
    ));
    // What a subscriber has not received by now is lost, even if the final
    // move below brings it.
    let lost_at_drain = lost(&rig.subs, &expected);

    let (max_id, positions) = wait_for_positions(rig).await;
    let (final_moves, after_final_move) = final_move(rig).await;
    clients::stop_subscribers(&mut rig.subs).await;
    Ending {
        expected,
        drained_in,
        lost_at_drain,
        max_id,
        positions,
        final_moves,
        after_final_move,
    }
}

/// Publishing goes on until a PUBACK after the last fault (bounded), then
/// publishers finish the message in hand and stop.
async fn stop_publishing(rig: &Rig, publishers: Vec<JoinHandle<()>>, faults_stopped: f64) {
    let deadline = Instant::now() + PUBACK_TIMEOUT + CONNECT_TIMEOUT;
    while *lock(&rig.world.last_ack) < faults_stopped && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publishers::stop_publishers(&rig.world, publishers).await;
}

/// Deliveries of `expected` the subscribers have not received, in all.
fn missing(subs: &[Sub], expected: &HashMap<String, f64>) -> usize {
    subs.iter()
        .map(|s| {
            let l = lock(&s.log);
            expected.keys().filter(|p| !l.received.contains_key(*p)).count()
        })
        .sum()
}

/// Per subscriber, what of `expected` it has not received, oldest PUBACK first.
fn lost(subs: &[Sub], expected: &HashMap<String, f64>) -> Vec<Vec<String>> {
    subs.iter()
        .map(|s| {
            let l = lock(&s.log);
            let mut lost: Vec<String> = expected
                .keys()
                .filter(|p| !l.received.contains_key(*p))
                .cloned()
                .collect();
            lost.sort_by(|a, b| expected[a].total_cmp(&expected[b]));
            lost
        })
        .collect()
}

/// Every subscriber acknowledges everything it gets, so its read position
/// reaches the newest stored id: waits for that, at most 5 s. The newest id,
/// the positions.
async fn wait_for_positions(rig: &Rig) -> (i64, Vec<Option<i64>>) {
    let max_id = rig.i64("select max(id)::int8 from mqtt_msg").await.unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut positions;
    loop {
        positions = rig.positions().await;
        if positions.iter().all(|p| *p == Some(max_id)) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rig.world
        .note(format!("positions {positions:?}, newest stored id {max_id}"));
    (max_id, positions)
}

/// Every subscriber moves to another node with everything acknowledged;
/// per subscriber, the node it moved to and how many messages it received
/// in the [`AFTER_FINAL_MOVE`] after.
async fn final_move(rig: &mut Rig) -> (Vec<Option<usize>>, Vec<usize>) {
    let before: Vec<usize> = rig.subs.iter().map(received).collect();
    let mut moved = Vec::new();
    for s in 0..rig.subs.len() {
        moved.push(move_sub(rig, s, s as u64).await);
    }
    tokio::time::sleep(AFTER_FINAL_MOVE).await;
    let after: Vec<usize> = rig
        .subs
        .iter()
        .zip(&before)
        .map(|(s, before)| received(s) - before)
        .collect();
    rig.world.note(format!(
        "after the final move (to {moved:?}): {after:?} messages received"
    ));
    (moved, after)
}

/// Every arrival at `sub` so far, repeats included.
fn received(sub: &Sub) -> usize {
    lock(&sub.log).received.values().map(Vec::len).sum()
}
