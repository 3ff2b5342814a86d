//! After the faults: publishing stops once it has resumed, every subscriber
//! is given time to receive everything acknowledged and to acknowledge it, a
//! last broker crash shows whatever would come again, and the subscribers
//! stop.

use std::collections::HashMap;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clients::{self, Sub};
use crate::faults::Rig;
use crate::support::TIMEOUT;
use crate::world::lock;
use crate::{CONNECT_TIMEOUT, DRAIN_TIMEOUT, PUBACK_TIMEOUT, STALL_LIMIT};

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
    /// Per subscriber, the messages received after the last crash.
    pub(crate) after_last_crash: Vec<usize>,
}

/// Ends the run: see the module's comment.
pub(crate) async fn drain(rig: &mut Rig, publishers: Vec<JoinHandle<()>>, faults_stopped: f64) -> Ending {
    stop_publishing(rig, publishers, faults_stopped).await;
    let expected: HashMap<String, f64> = lock(&rig.world.acked).clone();

    // Drain: every subscriber gets everything acknowledged.
    let drain_start = Instant::now();
    let drain_deadline = drain_start + DRAIN_TIMEOUT;
    while missing(&rig.subs, &expected) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained_in = drain_start.elapsed();
    rig.world.note(format!(
        "drained ({} deliveries missing)",
        missing(&rig.subs, &expected)
    ));
    // What a subscriber has not received by now is lost, even if the
    // reconnect after the last crash below brings it.
    let lost_at_drain = lost(&rig.subs, &expected);

    let (max_id, positions) = wait_for_positions(rig, drain_deadline).await;
    let after_last_crash = last_crash(rig).await;
    clients::stop_subscribers(&mut rig.subs).await;
    Ending {
        expected,
        drained_in,
        lost_at_drain,
        max_id,
        positions,
        after_last_crash,
    }
}

/// Publishing goes on until a PUBACK after the last fault (bounded: a
/// stuck broker shows in the stall report), then publishers finish the
/// message in hand and stop.
async fn stop_publishing(rig: &Rig, publishers: Vec<JoinHandle<()>>, faults_stopped: f64) {
    let deadline = Instant::now() + STALL_LIMIT + PUBACK_TIMEOUT + CONNECT_TIMEOUT;
    while *lock(&rig.world.last_ack) < faults_stopped && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    clients::stop_publishers(&rig.world, publishers).await;
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

/// Positions: every subscriber acknowledges everything it gets, so its
/// read position reaches the newest stored id. Waits for that until 5 s
/// after `drain_deadline` (or now, if later): the newest id, the positions.
async fn wait_for_positions(rig: &mut Rig, drain_deadline: Instant) -> (i64, Vec<Option<i64>>) {
    let max_id = rig
        .db
        .i64("select max(id)::int8 from mqtt_msg")
        .await
        .unwrap_or(0);
    let positions_deadline = Instant::now().max(drain_deadline) + Duration::from_secs(5);
    let mut positions;
    loop {
        positions = rig
            .db
            .positions(&rig.sub_ids, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("positions: {e}"));
        if positions.iter().all(|p| *p == Some(max_id)) || Instant::now() >= positions_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rig.world
        .note(format!("positions {positions:?}, newest stored id {max_id}"));
    (max_id, positions)
}

/// A last crash after everything was acknowledged: what comes back now
/// was either never acknowledged or is a repeat. Per subscriber, how many
/// messages it received in the 3 s after it reconnected.
async fn last_crash(rig: &mut Rig) -> Vec<usize> {
    let received_before: Vec<usize> = rig.subs.iter().map(received).collect();
    let connects_before: Vec<usize> = rig.subs.iter().map(|s| lock(&s.log).connects).collect();
    rig.crash_and_restart(Duration::ZERO, false).await;
    let deadline = Instant::now() + TIMEOUT;
    while rig
        .subs
        .iter()
        .zip(&connects_before)
        .any(|(s, before)| lock(&s.log).connects <= *before)
    {
        assert!(
            Instant::now() < deadline,
            "the subscribers did not reconnect after the last restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_last_crash: Vec<usize> = rig
        .subs
        .iter()
        .zip(&received_before)
        .map(|(s, before)| received(s) - before)
        .collect();
    rig.world.note(format!(
        "after the last crash: {after_last_crash:?} messages received"
    ));
    after_last_crash
}

/// Every arrival at `sub` so far, repeats included.
fn received(sub: &Sub) -> usize {
    lock(&sub.log).received.values().map(Vec::len).sum()
}
