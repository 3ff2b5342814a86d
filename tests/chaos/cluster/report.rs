//! The report: the counts of the run (faults, moves, connects, publishes),
//! each subscriber's lost, repeated and overlapping arrivals, and the
//! repeats sorted by cause. What it finds is the [`Verdict`] the test
//! asserts on.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::clients::{ConnRecord, SubLog};
use crate::drain::Ending;
use crate::rig::{NodeKill, Rig};
use crate::shared_run::ScheduleRun;
use crate::world::{lock, Arrival, Repeat, Settings};
use crate::{AFTER_FINAL_MOVE, DOWN_MARGIN, NODE_TIMEOUT, SUBSCRIBERS, TAKEOVER_LIMIT};

// ---------------------------------------------------------------------------
// Repeats
// ---------------------------------------------------------------------------

/// Why a message came again after its PUBACK was written. The node the
/// PUBACK was written to holds the acknowledgement until it is recorded; a
/// session that leaves that node (takeover, or a reconnect elsewhere) takes
/// it along (the node records it first). So only a SIGKILL of that node
/// before the session left it can lose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RepeatKind {
    /// The node of the PUBACK was not SIGKILLed between the PUBACK and the
    /// session leaving it (or the repeat).
    NoKillOfItsNode,
    /// The position read just before that SIGKILL already covered the
    /// message: durably acknowledged, sent again anyway.
    DurablyAckedBeforeKill,
    /// The PUBACK was written less than [`IN_FLIGHT`] before the SIGKILL (or
    /// while it was under way), and the position did not cover it.
    AckInFlightAtKill,
    /// The PUBACK was written at least [`IN_FLIGHT`] before the SIGKILL,
    /// and the position still did not cover it: known only in the node's
    /// memory (out of order, above a message not yet acknowledged).
    AckNotDurableAtKill,
    /// No SIGKILL, but the node closed the PUBACK's connection to hand the
    /// session over (the client moved) less than [`IN_FLIGHT`] after the
    /// PUBACK was written: it was still on its way (or unread in the
    /// node's socket) when the node let the connection go.
    AckInFlightAtMove,
}

impl RepeatKind {
    /// A repeat of an acknowledgement the cluster had recorded.
    pub(crate) fn is_violation(self) -> bool {
        matches!(
            self,
            RepeatKind::NoKillOfItsNode | RepeatKind::DurablyAckedBeforeKill
        )
    }
}

/// See [`RepeatKind::AckInFlightAtKill`].
const IN_FLIGHT: f64 = 0.1;

/// The kind of a repeat of subscriber `sub` and a description.
fn classify(
    r: &Repeat,
    sub: usize,
    log: &SubLog,
    ids: &HashMap<String, i64>,
    kills: &[NodeKill],
) -> (RepeatKind, String) {
    let conns = &log.connections;
    let node = conns[r.acked_on - 1].node;
    // The session left that node at the first CONNACK elsewhere after the PUBACK.
    let left = conns[r.acked_on..]
        .iter()
        .filter(|c| c.node != node)
        .find_map(|c| c.connack)
        .unwrap_or(f64::INFINITY);
    let end = left.min(r.again_at);
    let id = ids.get(&r.payload).copied();
    let path: Vec<String> = conns[r.acked_on - 1..r.again_on]
        .iter()
        .enumerate()
        .map(|(i, c)| describe_conn(r.acked_on + i, c))
        .collect();
    let mut what = format!(
        "{} (id {id:?}) PUBACK written at {:.3} s on connection {}, again at {:.3} s on connection {}; \
         connections: {}",
        r.payload,
        r.acked_at,
        r.acked_on,
        r.again_at,
        r.again_on,
        path.join(", ")
    );
    let between: Vec<&NodeKill> = kills
        .iter()
        .filter(|k| k.node == node && k.done > r.acked_at && k.at < end)
        .collect();
    let (Some(first), Some(last)) = (between.first(), between.last()) else {
        // The node closed the PUBACK's connection for a move: how long after.
        let acked_conn = &conns[r.acked_on - 1];
        let closed_for_move = conns
            .get(r.acked_on)
            .filter(|next| next.by_move && acked_conn.closed_by_node)
            .and(acked_conn.ended)
            .map(|e| e - r.acked_at);
        if let Some(lead) = closed_for_move {
            let _ = write!(
                what,
                "; node-{node} closed that connection for the move {:.0} ms after the PUBACK",
                lead * 1000.0
            );
            if lead < IN_FLIGHT {
                return (RepeatKind::AckInFlightAtMove, what);
            }
        }
        if let Some(id) = id {
            let later = out_of_order(log, ids, id, r.acked_at);
            if let Some(lowest) = later.iter().min() {
                let _ = write!(
                    what,
                    "; acknowledged out of order: {} messages with lower ids came after this PUBACK (lowest \
                     {lowest})",
                    later.len()
                );
            }
        }
        return (RepeatKind::NoKillOfItsNode, what);
    };
    let lead = first.at - r.acked_at;
    let pos = last.positions.get(sub).copied().flatten();
    let _ = write!(
        what,
        "; node-{node} SIGKILLed {:.0} ms after the PUBACK, position just before {pos:?}",
        lead * 1000.0
    );
    let kind = match (id, pos) {
        (Some(id), Some(pos)) if id <= pos => RepeatKind::DurablyAckedBeforeKill,
        _ if lead < IN_FLIGHT => RepeatKind::AckInFlightAtKill,
        _ => RepeatKind::AckNotDurableAtKill,
    };
    (kind, what)
}

/// The ids below `id` that first arrived after `t`.
fn out_of_order(log: &SubLog, ids: &HashMap<String, i64>, id: i64, t: f64) -> Vec<i64> {
    log.common
        .received
        .iter()
        .filter(|(_, a)| a.first().is_some_and(|a| a.at > t))
        .filter_map(|(p, _)| ids.get(p).copied())
        .filter(|&i| i < id)
        .collect()
}

pub(crate) fn describe_conn(no: usize, c: &ConnRecord) -> String {
    let end = match c.ended {
        Some(e) if c.closed_by_node => format!("closed by the node at {e:.3}"),
        Some(e) => format!("dropped here at {e:.3}"),
        None => "open".to_string(),
    };
    let connack = c
        .connack
        .map_or("no CONNACK".to_string(), |t| format!("CONNACK {t:.3}"));
    format!(
        "#{no} node-{} ({}{connack}, {end})",
        c.node,
        if c.by_move { "move, " } else { "" }
    )
}

/// Arrivals on a connection after a later connection of the same
/// subscriber had its CONNACK: (payload, arrival, that later connection).
pub(crate) fn overlaps(log: &SubLog) -> Vec<(String, Arrival, usize)> {
    let mut out = Vec::new();
    for (p, arrivals) in &log.common.received {
        for a in arrivals {
            let later = log.connections[a.connection..]
                .iter()
                .position(|c| c.connack.is_some_and(|t| t < a.at));
            if let Some(i) = later {
                out.push((p.clone(), *a, a.connection + 1 + i));
            }
        }
    }
    out.sort_by(|a, b| a.1.at.total_cmp(&b.1.at));
    out
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

/// What the report found: the test passes when nothing was lost, no repeat
/// is a violation, no client had two live connections (a subscriber
/// receiving on two at once, or a connection taken over and left open), and
/// every node kept down was declared down in time.
pub(crate) struct Verdict {
    pub(crate) total_lost: usize,
    pub(crate) violations: usize,
    pub(crate) overlaps: usize,
    /// Connections taken over and still open [`TAKEOVER_LIMIT`] after the
    /// new CONNACK: when that CONNACK came, what.
    pub(crate) two_live: Vec<(f64, String)>,
    pub(crate) down_late: usize,
    pub(crate) lost_by_sub: Vec<Vec<String>>,
    /// Per subscriber: the repeats that are violations, with their description.
    pub(crate) violating_by_sub: Vec<Vec<(Repeat, String)>>,
    /// Per subscriber: its first repeat (allowed or not), described.
    pub(crate) first_repeat: Vec<Option<(Repeat, String)>>,
}

impl Verdict {
    pub(crate) fn passed(&self) -> bool {
        self.total_lost == 0
            && self.violations == 0
            && self.overlaps == 0
            && self.two_live.is_empty()
            && self.down_late == 0
    }
}

/// Prints the report of the run and returns what it found.
pub(crate) async fn report(rig: &Rig, settings: &Settings, schedule: &ScheduleRun, end: &Ending) -> Verdict {
    let mut out = String::new();
    let down_late = write_counts(&mut out, rig, settings, schedule, end).await;
    let two_live = write_takeovers(&mut out, rig);
    write_node_warnings(&mut out, rig);
    let (lost_by_sub, overlaps) = write_subscribers(&mut out, rig, end);
    let ids = stored_ids(rig).await;
    let (violating_by_sub, first_repeat) = write_repeats(&mut out, rig, &ids);
    let violations = violating_by_sub.iter().map(Vec::len).sum();
    let total_lost = lost_by_sub.iter().map(Vec::len).sum();
    let _ = writeln!(
        out,
        "lost: {total_lost}; repeats of an acknowledgement the cluster had recorded (violations): {violations}; \
         arrivals on a connection after a later one's CONNACK: {overlaps}; connections taken over and still \
         open {TAKEOVER_LIMIT:?} after the new CONNACK: {}; nodes not declared down within {:?}: {down_late}",
        two_live.len(),
        NODE_TIMEOUT + DOWN_MARGIN
    );
    println!("{out}");
    Verdict {
        total_lost,
        violations,
        overlaps,
        two_live,
        down_late,
        lost_by_sub,
        violating_by_sub,
        first_repeat,
    }
}

/// The run, the faults, the moves and connects, the publishes, what was
/// stored. Returns how many nodes were not declared down in time.
async fn write_counts(
    out: &mut String,
    rig: &Rig,
    settings: &Settings,
    schedule: &ScheduleRun,
    end: &Ending,
) -> usize {
    let Settings { seed, secs } = settings;
    let _ = writeln!(
        out,
        "\n===== cluster chaos: seed {seed}, {secs} s of faults (rounds: {}; faults stopped at {:.1} s), \
         {:.1} s in all (drain {:.1} s) =====",
        schedule.rounds,
        schedule.faults_stopped,
        rig.world.now(),
        end.drained_in.as_secs_f64()
    );
    let kills = &rig.kills;
    let by = |what: &str| kills.iter().filter(|k| k.what == what).count();
    let declared: Vec<f64> = kills.iter().filter_map(|k| k.declared_down.flatten()).collect();
    let down_late = kills.iter().filter(|k| k.declared_down == Some(None)).count();
    let f = &rig.faults;
    let _ = writeln!(
        out,
        "node SIGKILLs: {} ({} restarted at once, {} kept down until declared down (after {:.0} ms at most; {} \
         not within {:?}), {} two at once, {} right after a subscriber moved there, {} in the replay of a \
         subscriber back there)",
        kills.len(),
        by("restarted at once"),
        by("kept down until declared down"),
        declared.iter().fold(0.0f64, |m, s| m.max(*s)) * 1000.0,
        down_late,
        NODE_TIMEOUT + DOWN_MARGIN,
        f.double_kills,
        f.kills_after_move,
        f.kills_in_replay,
    );
    let logs: Vec<_> = rig.subs.iter().map(|s| lock(&s.log)).collect();
    let conns: Vec<&ConnRecord> = logs.iter().flat_map(|l| l.connections.iter()).collect();
    let _ = writeln!(
        out,
        "subscribers: {} drops ({} armed to land mid-replay, {} fired), {} moves in the schedule (+{} at the \
         end)",
        f.sub_drops,
        f.mid_stream_armed,
        logs.iter().map(|l| l.common.mid_stream_drops).sum::<usize>(),
        f.moves,
        end.last.moved_to.iter().flatten().count(),
    );
    let waits: Vec<f64> = conns
        .iter()
        .filter_map(|c| c.connack.map(|a| a - c.opened))
        .collect();
    let _ = writeln!(
        out,
        "connects: {} subscriber connections ({} got a CONNACK; longest CONNECT to CONNACK {:.0} ms, {} over 1 s)",
        conns.len(),
        waits.len(),
        waits.iter().fold(0.0f64, |m, w| m.max(*w)) * 1000.0,
        waits.iter().filter(|w| **w > 1.0).count()
    );
    drop(logs);
    let _ = writeln!(
        out,
        "publishers: {} connections, {} publishes, {} acknowledged, {} given up without PUBACK (published again)",
        lock(&rig.publog).connects,
        rig.world.attempts.load(Ordering::SeqCst),
        end.expected.len(),
        lock(&rig.world.unacked).len()
    );
    let mut acks: Vec<f64> = end.expected.values().copied().collect();
    acks.sort_by(f64::total_cmp);
    if let Some((a, b)) = acks
        .windows(2)
        .map(|w| (w[0], w[1]))
        .max_by(|x, y| (x.1 - x.0).total_cmp(&(y.1 - y.0)))
    {
        let kills: Vec<String> = kills
            .iter()
            .filter(|k| k.at < b && k.restarted > a)
            .map(|k| format!("node-{} SIGKILLed at {:.3} s", k.node, k.at))
            .collect();
        let _ = writeln!(
            out,
            "  longest gap between two PUBACKs: {:.0} ms ({a:.3} s to {b:.3} s; {})",
            (b - a) * 1000.0,
            if kills.is_empty() {
                "no node down".to_string()
            } else {
                kills.join(", ")
            }
        );
    }
    let stored = rig.i64("select count(*) from mqtt_msg").await.unwrap_or(0);
    let _ = writeln!(
        out,
        "stored: {stored} rows, newest id {}; positions after the drain {:?}; after the final move (to nodes \
         {:?}), received in {AFTER_FINAL_MOVE:?}: {:?}",
        end.max_id, end.positions, end.last.moved_to, end.last.received
    );
    down_late
}

/// Right-aligned table cells.
fn cells<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter().map(|c| format!("{c:>11}")).collect::<Vec<_>>().join(" ")
}

/// Takeovers (a client connecting to another node while connected): when
/// the old connection closed, for subscribers and publishers. Returns the
/// old connections still open [`TAKEOVER_LIMIT`] after the new CONNACK
/// (when that CONNACK came, what), in time order.
fn write_takeovers(out: &mut String, rig: &Rig) -> Vec<(f64, String)> {
    let limit = TAKEOVER_LIMIT.as_secs_f64();
    let now = rig.world.now();
    let mut before = 0;
    let mut after: Vec<f64> = Vec::new();
    let mut two_live = Vec::new();
    let mut moves = 0;
    for sub in &rig.subs {
        let l = lock(&sub.log);
        for (i, c) in l.connections.iter().enumerate().skip(1) {
            let (true, Some(at)) = (c.by_move, c.connack) else {
                continue;
            };
            moves += 1;
            let old = &l.connections[i - 1];
            let end = old.ended.unwrap_or(now);
            match (old.closed_by_node, end - at) {
                (true, lag) if lag <= 0.0 => before += 1,
                (true, lag) if lag <= limit => after.push(lag),
                // Dropped here (or the run ended) before the limit: not judged.
                (false, lag) if lag <= limit => {}
                (_, lag) => two_live.push((
                    at,
                    format!(
                    "{}: connection {i} (node-{}) still open {:.0} ms after connection {} (node-{}) got its \
                     CONNACK at {at:.3} s",
                    sub.id,
                    old.node,
                    lag * 1000.0,
                    i + 1,
                    c.node
                ),
                )),
            }
        }
    }
    let p = lock(&rig.publog);
    let longest = |v: &[f64]| v.iter().fold(0.0f64, |m, l| m.max(*l)) * 1000.0;
    let _ = writeln!(
        out,
        "takeovers (a connection to another node while connected; the old one closed by its node before the \
         new CONNACK / after it / still open {TAKEOVER_LIMIT:?} after): subscribers {moves} ({before} / {} (at \
         most {:.0} ms after) / {}), publishers {} ({} / {} (at most {:.0} ms after) / {})",
        after.len(),
        longest(&after),
        two_live.len(),
        p.takeovers,
        p.old_closed_before,
        p.old_closed_after.len(),
        longest(&p.old_closed_after),
        p.two_live.len()
    );
    two_live.extend(p.two_live.iter().cloned());
    two_live.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (_, t) in &two_live {
        let _ = writeln!(out, "  TWO LIVE CONNECTIONS: {t}");
    }
    two_live
}

/// The table of subscribers. Returns, per subscriber, what it lost, and the
/// overlapping arrivals in all.
fn write_subscribers(out: &mut String, rig: &Rig, end: &Ending) -> (Vec<Vec<String>>, usize) {
    let expected = &end.expected;
    let head = [
        "subscriber",
        "expected",
        "received",
        "lost",
        "repeated",
        "redelivered",
        "unacked-ok",
        "connects",
        "moves",
        "overlaps",
    ];
    let _ = writeln!(out, "{:<12} {}", head[0], cells(&head[1..]));
    let sub_head = [
        "",
        "",
        "distinct",
        "",
        "after ack",
        "before ack",
        "extra",
        "",
        "",
        "",
    ];
    let _ = writeln!(out, "{:<12} {}", "", cells(&sub_head[1..]));
    let mut lost_by_sub = Vec::new();
    let mut total_overlaps = 0;
    let mut late = Vec::new();
    for (sub, lost) in rig.subs.iter().zip(&end.lost_at_drain) {
        let l = lock(&sub.log);
        let came_late = lost.iter().filter(|p| l.common.received.contains_key(*p)).count();
        if came_late > 0 {
            late.push(format!("{}: {came_late}", sub.id));
        }
        let overlaps = overlaps(&l).len();
        total_overlaps += overlaps;
        let cols = [
            expected.len(),
            l.common.received.len(),
            lost.len(),
            l.common.repeats.len(),
            l.common.redelivered_before_ack,
            l.common
                .received
                .keys()
                .filter(|p| !expected.contains_key(*p))
                .count(),
            l.common.connects,
            l.moves,
            overlaps,
        ];
        let _ = writeln!(out, "{:<12} {}", sub.id, cells(&cols));
        lost_by_sub.push(lost.clone());
    }
    if !late.is_empty() {
        let _ = writeln!(
            out,
            "of the lost, received only after the final move: {}",
            late.join(", ")
        );
    }
    (lost_by_sub, total_overlaps)
}

/// The repeats of each subscriber by cause. Returns, per subscriber, the
/// violations and the first repeat, described.
#[allow(clippy::type_complexity)]
fn write_repeats(
    out: &mut String,
    rig: &Rig,
    ids: &HashMap<String, i64>,
) -> (Vec<Vec<(Repeat, String)>>, Vec<Option<(Repeat, String)>>) {
    let mut violating: Vec<Vec<(Repeat, String)>> = vec![Vec::new(); SUBSCRIBERS];
    let mut first: Vec<Option<(Repeat, String)>> = vec![None; SUBSCRIBERS];
    let _ = writeln!(
        out,
        "repeats by cause (a violation unless the PUBACK died with its node, or was in flight when the node \
         handed the session over):"
    );
    for (i, sub) in rig.subs.iter().enumerate() {
        let l = lock(&sub.log);
        let mut causes: Vec<(RepeatKind, usize, String)> = Vec::new();
        for r in &l.common.repeats {
            let (kind, why) = classify(r, i, &l, ids, &rig.kills);
            if kind.is_violation() {
                violating[i].push((r.clone(), format!("{kind:?}: {why}")));
            }
            if first[i].is_none() {
                first[i] = Some((r.clone(), format!("{kind:?}: {why}")));
            }
            match causes.iter_mut().find(|c| c.0 == kind) {
                Some(c) => c.1 += 1,
                None => causes.push((kind, 1, why)),
            }
        }
        for (kind, n, example) in causes {
            let _ = writeln!(
                out,
                "  {:<12} {n:>4}  {kind:?}{}; first: {example}",
                sub.id,
                if kind.is_violation() { " (VIOLATION)" } else { "" }
            );
        }
    }
    (violating, first)
}

/// The nodes' WARN and ERROR lines, counted by message (their fields cut),
/// the most frequent first.
fn write_node_warnings(out: &mut String, rig: &Rig) {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for node in &rig.nodes {
        for line in node.logs().lines() {
            let Some(level) = ["WARN", "ERROR"]
                .into_iter()
                .find(|l| line.contains(&format!(" {l} ")))
            else {
                continue;
            };
            let message = line.split_once(": ").map_or(line, |(_, m)| m);
            let mut words: Vec<&str> = message.split(' ').collect();
            while words.len() > 1 && words.last().is_some_and(|w| w.contains('=')) {
                words.pop();
            }
            *counts.entry(format!("{level} {}", words.join(" "))).or_default() += 1;
        }
    }
    let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let _ = writeln!(out, "node log warnings and errors (all nodes, by message):");
    for (m, n) in counts.iter().take(12) {
        let _ = writeln!(out, "  {n:>5}  {m}");
    }
}

/// Payload -> id of every stored message.
pub(crate) async fn stored_ids(rig: &Rig) -> HashMap<String, i64> {
    rig.pg
        .query(
            "select convert_from(payload, 'UTF8'), id::int8 from mqtt_msg",
            &[],
        )
        .await
        .expect("stored ids")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}
