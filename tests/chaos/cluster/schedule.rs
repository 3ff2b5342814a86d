//! The kinds of fault and the schedule: rounds of every kind once, in an
//! order drawn from the seed, with pauses between faults.

use std::time::Duration;

use tokio::sync::oneshot;

use crate::clients::SubCmd;
use crate::rig::Rig;
use crate::shared_run::{Rounds, ScheduleRun};
use crate::world::Rng;
use crate::{CONNECT_TIMEOUT, NODES, SUBSCRIBERS};

/// The kinds of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// A subscriber loses its connection at a random moment.
    SubDrop,
    /// ... and, back on some node, loses it again inside the replay of what
    /// it missed.
    SubDropMidReplay,
    /// A subscriber connects to another node while connected (takeover).
    SubMove,
    /// A node SIGKILLed and started again at once (before `node_timeout`);
    /// sometimes a subscriber then drops inside its replay.
    NodeKill,
    /// A node SIGKILLed and started again once the others declared it down.
    NodeKillDeclaredDown,
    /// Two nodes SIGKILLed at once and started again.
    TwoNodesKilled,
    /// A subscriber moves to another node, which is SIGKILLed right after
    /// the CONNACK (while the session is restored and replayed there).
    MoveThenKill,
    /// A subscriber drops; the node it comes back to is SIGKILLed right
    /// after its CONNACK (inside its replay there).
    DropThenKill,
}

/// One round of the schedule: every kind of fault once.
pub(crate) const ROUND: [Fault; 8] = [
    Fault::SubDrop,
    Fault::SubDropMidReplay,
    Fault::SubMove,
    Fault::NodeKill,
    Fault::NodeKillDeclaredDown,
    Fault::TwoNodesKilled,
    Fault::MoveThenKill,
    Fault::DropThenKill,
];

/// Faults, in [`Rounds`] of every kind for `secs`.
pub(crate) async fn run(rig: &mut Rig, rng: &mut Rng, secs: u64) -> ScheduleRun {
    let mut rounds = Rounds::new(&ROUND, secs);
    while let Some(fault) = rounds.next(&rig.world, rng).await {
        inject(rig, fault, rng).await;
    }
    rounds.finish(&rig.world)
}

/// Tells subscriber `s` to move to another node (draw `r`); the node it
/// moved to once it has its CONNACK, `None` when the move did not happen.
pub(crate) async fn move_sub(rig: &mut Rig, s: usize, r: u64) -> Option<usize> {
    let (tx, rx) = oneshot::channel();
    let _ = rig.subs[s].tx.send(SubCmd::Move { r, reply: tx });
    let node = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), rx)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    if node.is_none() {
        rig.world
            .note(format!("schedule: {} did not move", rig.sub_ids[s]));
    }
    node
}

/// Drops subscriber `s` for `down`; with `wait`, returns the node it is
/// connected to again.
async fn drop_sub(rig: &mut Rig, s: usize, down: Duration, wait: bool) -> Option<usize> {
    rig.faults.sub_drops += 1;
    let (tx, rx) = oneshot::channel();
    let reply = wait.then_some(tx);
    let _ = rig.subs[s].tx.send(SubCmd::Drop { down, reply });
    if !wait {
        return None;
    }
    let node = tokio::time::timeout(down + CONNECT_TIMEOUT + Duration::from_secs(1), rx)
        .await
        .ok()
        .and_then(Result::ok);
    if node.is_none() {
        rig.world.note(format!(
            "schedule: {} did not connect again in time",
            rig.sub_ids[s]
        ));
    }
    node
}

fn arm_mid_stream_drop(rig: &mut Rig, s: usize, n: u64, down: Duration) {
    rig.faults.mid_stream_armed += 1;
    rig.world.note(format!(
        "schedule: {} will drop after {n} messages of its replay",
        rig.sub_ids[s]
    ));
    let _ = rig.subs[s].tx.send(SubCmd::DropAfter { n, down });
}

/// SIGKILLs node `n`, starts it again after `down`.
async fn kill_and_restart(rig: &mut Rig, n: usize, down: Duration, what: &'static str) {
    let k = rig.sigkill(n, what).await;
    tokio::time::sleep(down).await;
    rig.restart(k).await;
}

/// Runs one fault. Every random draw is made whatever the branch, so the
/// schedule depends on the seed only.
async fn inject(rig: &mut Rig, fault: Fault, rng: &mut Rng) {
    let s = rng.below(SUBSCRIBERS as u64) as usize;
    let n = rng.below(NODES as u64) as usize;
    let other = (n + 1 + rng.below(NODES as u64 - 1) as usize) % NODES;
    let r = rng.below(1 << 32);
    let quick_down = rng.ms(0, 1500);
    let down = rng.ms(300, 1500);
    let count = 1 + rng.below(30);
    let down_after = rng.ms(0, 800);
    let node_down = rng.ms(0, 800);
    let gap = rng.ms(0, 300);
    let coin = rng.below(2) == 0;
    rig.world.note(format!("schedule: {fault:?}"));
    match fault {
        Fault::SubDrop => {
            drop_sub(rig, s, quick_down, false).await;
        }
        Fault::SubDropMidReplay => {
            drop_sub(rig, s, down, false).await;
            arm_mid_stream_drop(rig, s, count, down_after);
        }
        Fault::SubMove => {
            rig.faults.moves += 1;
            move_sub(rig, s, r).await;
        }
        Fault::NodeKill => {
            kill_and_restart(rig, n, node_down, "restarted at once").await;
            if coin {
                arm_mid_stream_drop(rig, s, count, down_after);
            }
        }
        Fault::NodeKillDeclaredDown => {
            let k = rig.sigkill(n, "kept down until declared down").await;
            rig.until_declared_down(k).await;
            tokio::time::sleep(gap).await;
            rig.restart(k).await;
        }
        Fault::TwoNodesKilled => {
            rig.faults.double_kills += 1;
            let a = rig.sigkill(n, "two at once").await;
            let b = rig.sigkill(other, "two at once").await;
            tokio::time::sleep(node_down).await;
            rig.restart(a).await;
            rig.restart(b).await;
        }
        Fault::MoveThenKill => {
            rig.faults.moves += 1;
            if let Some(to) = move_sub(rig, s, r).await {
                rig.faults.kills_after_move += 1;
                tokio::time::sleep(gap).await;
                kill_and_restart(rig, to, node_down, "right after a subscriber moved there").await;
            }
        }
        Fault::DropThenKill => {
            if let Some(to) = drop_sub(rig, s, down, true).await {
                rig.faults.kills_in_replay += 1;
                tokio::time::sleep(gap).await;
                kill_and_restart(rig, to, node_down, "in the replay of a subscriber back there").await;
            }
        }
    }
}
