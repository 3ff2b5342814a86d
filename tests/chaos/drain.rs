//! After the faults: publishing stops once it has resumed, every subscriber
//! is given time to receive everything acknowledged and to acknowledge it, a
//! last broker crash shows whatever would come again, and the subscribers
//! stop. The steps the cluster test ends with too are in
//! [`crate::shared_run`].

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::faults::Rig;
use crate::shared_clients::stop_subscribers;
use crate::shared_run::{
    self, arrivals, arrivals_since, drain_subscribers, stop_publishing, until_positions_reach,
};
use crate::support::TIMEOUT;
use crate::{CONNECT_TIMEOUT, PUBACK_TIMEOUT, STALL_LIMIT};

/// What the end of the run found; `last`: per subscriber, the messages
/// received after the last crash.
pub(crate) type Ending = shared_run::Ending<Vec<usize>>;

/// Ends the run: see the module's comment.
pub(crate) async fn drain(rig: &mut Rig, publishers: Vec<JoinHandle<()>>, faults_stopped: f64) -> Ending {
    // A PUBACK after the last fault is due within the stall limit (and a
    // publish and a connect under way); a stuck broker shows in the stall
    // report. Stopping takes at most a PUBACK wait and a connect.
    stop_publishing(
        &rig.world,
        publishers,
        faults_stopped,
        STALL_LIMIT + PUBACK_TIMEOUT + CONNECT_TIMEOUT,
        PUBACK_TIMEOUT + CONNECT_TIMEOUT + Duration::from_secs(5),
    )
    .await;
    let drained = drain_subscribers(&rig.world, &rig.subs, Duration::from_millis(200)).await;
    let (max_id, positions) = wait_for_positions(rig, drained.deadline).await;
    let after_last_crash = last_crash(rig).await;
    stop_subscribers(&mut rig.subs).await;
    drained.ending(max_id, positions, after_last_crash)
}

/// The newest stored id, and the subscribers' positions once they reach it
/// (see [`until_positions_reach`]), waited for until 5 s after
/// `drain_deadline` (or now, if later).
async fn wait_for_positions(rig: &mut Rig, drain_deadline: Instant) -> (i64, Vec<Option<i64>>) {
    let max_id = rig
        .db
        .i64("select max(id)::int8 from mqtt_msg")
        .await
        .unwrap_or(0);
    let deadline = Instant::now().max(drain_deadline) + Duration::from_secs(5);
    let Rig {
        world, db, sub_ids, ..
    } = rig;
    let read = async || {
        db.positions(sub_ids, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("positions: {e}"))
    };
    let positions = until_positions_reach(world, max_id, deadline, Duration::from_millis(200), read).await;
    (max_id, positions)
}

/// A last crash after everything was acknowledged: what comes back now
/// was either never acknowledged or is a repeat. Per subscriber, how many
/// messages it received in the 3 s after it reconnected.
async fn last_crash(rig: &mut Rig) -> Vec<usize> {
    let received_before = arrivals(&rig.subs);
    let connects_before: Vec<usize> = rig.subs.iter().map(|s| s.connects()).collect();
    rig.crash_and_restart(Duration::ZERO, false).await;
    let deadline = Instant::now() + TIMEOUT;
    while rig
        .subs
        .iter()
        .zip(&connects_before)
        .any(|(s, before)| s.connects() <= *before)
    {
        assert!(
            Instant::now() < deadline,
            "the subscribers did not reconnect after the last restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_last_crash = arrivals_since(&rig.subs, &received_before);
    rig.world.note(format!(
        "after the last crash: {after_last_crash:?} messages received"
    ));
    after_last_crash
}
