//! After the faults: publishing stops once it has resumed, every subscriber
//! is given time to receive everything acknowledged, every subscriber then
//! moves to another node once more (what comes after is a repeat, or was
//! lost before), and the subscribers stop. The steps the single-node test
//! ends with too are in [`crate::shared_run`].

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::rig::Rig;
use crate::schedule::move_sub;
use crate::shared_clients::stop_subscribers;
use crate::shared_run::{
    self, arrivals, arrivals_since, drain_subscribers, stop_publishing, until_positions_reach,
};
use crate::{AFTER_FINAL_MOVE, CONNECT_TIMEOUT, PUBACK_TIMEOUT};

/// What the end of the run found.
pub(crate) type Ending = shared_run::Ending<FinalMove>;

/// What the final move found.
pub(crate) struct FinalMove {
    /// Per subscriber, the node it moved to (`None`: it did not).
    pub(crate) moved_to: Vec<Option<usize>>,
    /// Per subscriber, the messages received in the [`AFTER_FINAL_MOVE`]
    /// after.
    pub(crate) received: Vec<usize>,
}

/// Ends the run: see the module's comment.
pub(crate) async fn drain(rig: &mut Rig, publishers: Vec<JoinHandle<()>>, faults_stopped: f64) -> Ending {
    // Stopping takes at most a PUBACK wait and two connects (a takeover
    // connects while connected).
    stop_publishing(
        &rig.world,
        publishers,
        faults_stopped,
        PUBACK_TIMEOUT + CONNECT_TIMEOUT,
        PUBACK_TIMEOUT + 2 * CONNECT_TIMEOUT + Duration::from_secs(5),
    )
    .await;
    let drained = drain_subscribers(&rig.world, &rig.subs, Duration::from_millis(100)).await;
    let max_id = rig.i64("select max(id)::int8 from mqtt_msg").await.unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    let read = async || rig.positions().await;
    let positions =
        until_positions_reach(&rig.world, max_id, deadline, Duration::from_millis(100), read).await;
    let last = final_move(rig).await;
    stop_subscribers(&mut rig.subs).await;
    drained.ending(max_id, positions, last)
}

/// Every subscriber moves to another node with everything acknowledged:
/// see [`FinalMove`].
async fn final_move(rig: &mut Rig) -> FinalMove {
    let before = arrivals(&rig.subs);
    let mut moved_to = Vec::new();
    for s in 0..rig.subs.len() {
        moved_to.push(move_sub(rig, s, s as u64).await);
    }
    tokio::time::sleep(AFTER_FINAL_MOVE).await;
    let received = arrivals_since(&rig.subs, &before);
    rig.world.note(format!(
        "after the final move (to {moved_to:?}): {received:?} messages received"
    ));
    FinalMove { moved_to, received }
}
