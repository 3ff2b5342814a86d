//! The report: the counts of the run, the PUBACK stalls after PostgreSQL's
//! faults and the longest gaps between PUBACKs, each subscriber's lost and
//! repeated messages, and the repeats sorted by cause. What it finds is the
//! [`Verdict`] the test asserts on.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::db::Db;
use crate::drain::Ending;
use crate::faults::Rig;
use crate::shared_run::ScheduleRun;
use crate::world::{lock, DbFault, Kill, Repeat, Settings};
use crate::{STALL_LIMIT, SUBSCRIBERS};

// ---------------------------------------------------------------------------
// Repeats
// ---------------------------------------------------------------------------

/// Why a message came again after its PUBACK was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RepeatKind {
    /// No SIGKILL between the PUBACK and the repeat.
    NoCrashBetween,
    /// The position read just before a SIGKILL in between already covered
    /// the message: durably acknowledged, sent again anyway.
    DurablyAckedBeforeCrash,
    /// The PUBACK was written less than [`IN_FLIGHT`] before the SIGKILL that
    /// followed it (or while it was under way), and the position did not
    /// cover it: it may not have been read, or not yet recorded, when the
    /// broker died.
    AckInFlightAtCrash,
    /// The PUBACK was written at least [`IN_FLIGHT`] before the SIGKILL, and
    /// the position still did not cover it: known only in memory.
    AckNotDurableAtCrash,
}

impl RepeatKind {
    /// A repeat of an acknowledgement the broker had recorded: no crash in
    /// between, or a position that covered it just before the crash. An
    /// acknowledgement that died with the broker (in flight, or held in
    /// memory only) cannot be honoured by any broker.
    fn is_violation(self) -> bool {
        matches!(
            self,
            RepeatKind::NoCrashBetween | RepeatKind::DurablyAckedBeforeCrash
        )
    }
}

/// See [`RepeatKind::AckInFlightAtCrash`].
const IN_FLIGHT: f64 = 0.1;

/// The kind of a repeat, a description, and how long after the PUBACK the
/// first SIGKILL in between came (seconds).
fn classify(r: &Repeat, sub: usize, id: Option<i64>, kills: &[Kill]) -> (RepeatKind, String, Option<f64>) {
    let between: Vec<&Kill> = kills
        .iter()
        .filter(|k| k.done > r.acked_at && k.at < r.again_at)
        .collect();
    let what = |extra: String| {
        format!(
            "{} (id {id:?}) PUBACK written at {:.3} s, again at {:.3} s{extra}",
            r.payload, r.acked_at, r.again_at
        )
    };
    let (Some(first), Some(last)) = (between.first(), between.last()) else {
        return (RepeatKind::NoCrashBetween, what(String::new()), None);
    };
    let lead = first.at - r.acked_at;
    let pos = last.positions.get(sub).copied().flatten();
    let read = if last.positions_read {
        "just before"
    } else {
        "read last (the database was down at the SIGKILL)"
    };
    let extra = if lead < 0.0 {
        format!("; PUBACK written while the broker was being killed, position {read} {pos:?}")
    } else {
        format!(
            "; SIGKILL {:.0} ms after the PUBACK, position {read} {pos:?}",
            lead * 1000.0
        )
    };
    let kind = match (id, pos) {
        (Some(id), Some(pos)) if id <= pos => RepeatKind::DurablyAckedBeforeCrash,
        _ if lead < IN_FLIGHT => RepeatKind::AckInFlightAtCrash,
        _ => RepeatKind::AckNotDurableAtCrash,
    };
    (kind, what(extra), Some(lead))
}

/// The repeats of one subscriber of one [`RepeatKind`].
struct Cause {
    kind: RepeatKind,
    count: usize,
    /// The description of the first.
    example: String,
    /// The longest time from a PUBACK to the SIGKILL after it (seconds).
    max_lead: f64,
    /// How many had a PostgreSQL fault between the PUBACK and the SIGKILL.
    with_db_fault: usize,
}

// ---------------------------------------------------------------------------
// PUBACK stalls
// ---------------------------------------------------------------------------

/// What followed one PostgreSQL fault.
pub(crate) struct Stall {
    pub(crate) fault: DbFault,
    /// The first PUBACK at or after `back_at` (seconds since `t0`).
    first_ack: Option<f64>,
    /// Why the window is not judged: a broker SIGKILL, or another database
    /// fault, came within [`STALL_LIMIT`] of `back_at` and before that PUBACK.
    excluded: Option<String>,
}

impl Stall {
    /// From PostgreSQL answering again to the next PUBACK.
    fn secs(&self) -> Option<f64> {
        self.first_ack.map(|a| a - self.fault.back_at)
    }

    /// Judged, and no PUBACK within [`STALL_LIMIT`].
    fn failed(&self) -> bool {
        self.excluded.is_none() && self.secs().is_none_or(|s| s > STALL_LIMIT.as_secs_f64())
    }

    pub(crate) fn describe(&self) -> String {
        let f = &self.fault;
        let head = format!(
            "{:8.3} s  {:<26} down {:>5.0} ms  ",
            f.back_at,
            f.kind.name(),
            (f.back_at - f.down_at) * 1000.0
        );
        let first = match self.secs() {
            Some(s) => format!("first PUBACK after +{:.0} ms", s * 1000.0),
            None => "no PUBACK after it".to_string(),
        };
        match &self.excluded {
            Some(why) => format!("{head}excluded: {why}, before the first PUBACK ({first})"),
            None if self.failed() => format!("{head}{first}  <-- more than {STALL_LIMIT:?}"),
            None => format!("{head}{first}"),
        }
    }
}

/// For each PostgreSQL fault, the first PUBACK after the server answered
/// again. `acks` is sorted.
fn stalls(db_faults: &[DbFault], kills: &[Kill], acks: &[f64]) -> Vec<Stall> {
    let limit = STALL_LIMIT.as_secs_f64();
    db_faults
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let back = f.back_at;
            let first_ack = acks.get(acks.partition_point(|&a| a < back)).copied();
            let mut interrupts: Vec<(f64, String)> = Vec::new();
            for k in kills {
                if k.at <= back + limit && k.restarted >= back {
                    interrupts.push((
                        k.at.max(back),
                        format!("broker SIGKILL at {:+.0} ms", (k.at - back) * 1000.0),
                    ));
                }
            }
            for (j, g) in db_faults.iter().enumerate() {
                if j != i && g.down_at > back && g.down_at <= back + limit {
                    interrupts.push((
                        g.down_at,
                        format!(
                            "PostgreSQL {} at +{:.0} ms",
                            g.kind.name(),
                            (g.down_at - back) * 1000.0
                        ),
                    ));
                }
            }
            interrupts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let excluded = interrupts
                .into_iter()
                .next()
                .filter(|(t, _)| first_ack.is_none_or(|a| a > *t))
                .map(|(_, why)| why);
            Stall {
                fault: f.clone(),
                first_ack,
                excluded,
            }
        })
        .collect()
}

/// The longest gap between two consecutive PUBACKs (sorted) that overlaps
/// none of `windows`: (from, to).
fn longest_gap(acks: &[f64], windows: &[(f64, f64)]) -> Option<(f64, f64)> {
    acks.windows(2)
        .map(|w| (w[0], w[1]))
        .filter(|(a, b)| !windows.iter().any(|(s, e)| s < b && e > a))
        .max_by(|x, y| (x.1 - x.0).total_cmp(&(y.1 - y.0)))
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

/// What the report found: the test passes when nothing was lost, no repeat
/// is a violation, and no stall failed.
pub(crate) struct Verdict {
    pub(crate) total_lost: usize,
    /// Repeats of an acknowledgement the broker had recorded.
    pub(crate) violations: usize,
    stalls: Vec<Stall>,
    /// Per subscriber: what it had not received at the end of the drain.
    pub(crate) lost_by_sub: Vec<Vec<String>>,
    /// Per subscriber: every repeat after its PUBACK was written.
    pub(crate) repeats_by_sub: Vec<Vec<Repeat>>,
    /// Per subscriber: the repeats that are violations, with their description.
    pub(crate) violating_by_sub: Vec<Vec<(Repeat, String)>>,
}

impl Verdict {
    /// The PostgreSQL faults without a PUBACK within [`STALL_LIMIT`] after.
    pub(crate) fn stall_failures(&self) -> Vec<&Stall> {
        self.stalls.iter().filter(|s| s.failed()).collect()
    }

    pub(crate) fn passed(&self) -> bool {
        self.total_lost == 0 && self.violations == 0 && self.stall_failures().is_empty()
    }
}

/// Prints the report of the run and returns what it found.
pub(crate) async fn report(
    rig: &mut Rig,
    settings: &Settings,
    schedule: &ScheduleRun,
    end: &Ending,
) -> Verdict {
    let kills = lock(&rig.world.kills).clone();
    let db_faults = lock(&rig.world.db_faults).clone();
    let mut report = String::new();
    write_counts(&mut report, rig, settings, schedule, end).await;
    let mut acks: Vec<f64> = end.expected.values().copied().collect();
    acks.sort_by(f64::total_cmp);
    let stalls = write_stalls(&mut report, &db_faults, &kills, &acks);
    let (lost_by_sub, repeats_by_sub) = write_subscribers(&mut report, rig, end);
    let total_lost = lost_by_sub.iter().map(Vec::len).sum();
    let (violations, violating_by_sub) = if repeats_by_sub.iter().any(|r| !r.is_empty()) {
        write_repeats(&mut report, rig, &repeats_by_sub, &kills, &db_faults).await
    } else {
        (0, vec![Vec::new(); SUBSCRIBERS])
    };
    let verdict = Verdict {
        total_lost,
        violations,
        stalls,
        lost_by_sub,
        repeats_by_sub,
        violating_by_sub,
    };
    let _ = writeln!(
        report,
        "repeats of an acknowledgement the broker had recorded (violations): {violations}; \
         PostgreSQL faults without a PUBACK within {STALL_LIMIT:?} after: {}",
        verdict.stall_failures().len()
    );
    println!("{report}");
    verdict
}

/// The run, the faults injected, the publishes, what was stored.
async fn write_counts(
    report: &mut String,
    rig: &mut Rig,
    settings: &Settings,
    schedule: &ScheduleRun,
    end: &Ending,
) {
    let Settings { seed, secs } = settings;
    let ScheduleRun {
        rounds,
        faults_stopped,
    } = schedule;
    let faults = &rig.faults;
    let _ = writeln!(
        report,
        "\n===== chaos: seed {seed}, {secs} s of faults (rounds: {rounds}; faults stopped at {faults_stopped:.1} s), \
         {:.1} s in all (drain {:.1} s) =====",
        rig.world.now(),
        end.drained_in.as_secs_f64()
    );
    let _ = writeln!(
        report,
        "faults: PostgreSQL {} restarts -m fast, {} restarts -m immediate, {} stops+starts, {} terminations \
         ({} connections terminated), {} of these timed into a subscriber's replay; {} broker SIGKILLs ({} shortly \
         after a PostgreSQL restart, {} while it was stopped, the last one after the drain); {} subscriber drops \
         ({} armed to land mid-replay, {} fired)",
        faults.pg_restarts_fast,
        faults.pg_restarts_immediate,
        faults.pg_stop_starts,
        faults.pg_terminations,
        faults.pg_connections_terminated,
        faults.db_faults_in_replay,
        faults.broker_kills,
        faults.restart_then_kill,
        faults.kill_in_outage,
        faults.sub_drops,
        faults.mid_stream_armed,
        rig.subs.iter().map(|s| lock(&s.log).mid_stream_drops).sum::<usize>(),
    );
    let _ = writeln!(
        report,
        "publishers: {} publishes, {} acknowledged, {} given up without PUBACK (published again)",
        rig.world.attempts.load(Ordering::SeqCst),
        end.expected.len(),
        lock(&rig.world.unacked).len()
    );
    let stored_rows = rig.db.i64("select count(*) from mqtt_msg").await.unwrap_or(0);
    let Ending {
        max_id,
        positions,
        last: after_last_crash,
        ..
    } = end;
    let _ = writeln!(
        report,
        "stored: {stored_rows} rows, newest id {max_id}; positions at the end {positions:?}; received after the last crash {after_last_crash:?}",
    );
}

/// Every PostgreSQL fault's stall, the longest per kind of fault, and the
/// longest gaps between PUBACKs.
fn write_stalls(report: &mut String, db_faults: &[DbFault], kills: &[Kill], acks: &[f64]) -> Vec<Stall> {
    let stalls = stalls(db_faults, kills, acks);
    let _ = writeln!(
        report,
        "PUBACK stalls: from PostgreSQL answering again (pg_ctl, or the terminate query, returned) to the next \
         PUBACK (limit {STALL_LIMIT:?}; down = from pg_ctl's start to then):"
    );
    for s in &stalls {
        let _ = writeln!(report, "  {}", s.describe());
    }
    let mut groups: Vec<&str> = Vec::new();
    for s in &stalls {
        if !groups.contains(&s.fault.kind.group()) {
            groups.push(s.fault.kind.group());
        }
    }
    for group in groups {
        let of: Vec<&Stall> = stalls.iter().filter(|s| s.fault.kind.group() == group).collect();
        let judged: Vec<&&Stall> = of.iter().filter(|s| s.excluded.is_none()).collect();
        let longest = judged
            .iter()
            .map(|s| s.secs().unwrap_or(f64::INFINITY))
            .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s))));
        let _ = writeln!(
            report,
            "  longest stall after {group:<17} {} ({} judged, {} excluded)",
            longest.map_or("-".to_string(), |s| format!("{:.0} ms", s * 1000.0)),
            judged.len(),
            of.len() - judged.len()
        );
    }
    write_gaps(report, db_faults, kills, acks);
    stalls
}

/// The longest gaps between PUBACKs, outside the SIGKILL windows (from the
/// kill to the next PUBACK can be anything), and outside PostgreSQL's faults
/// too.
fn write_gaps(report: &mut String, db_faults: &[DbFault], kills: &[Kill], acks: &[f64]) {
    let kill_windows: Vec<(f64, f64)> = kills.iter().map(|k| (k.at, k.restarted)).collect();
    let mut fault_windows = kill_windows.clone();
    fault_windows.extend(db_faults.iter().map(|f| (f.down_at, f.back_at)));
    let during = |a: f64, b: f64| -> String {
        let overlapping: Vec<String> = db_faults
            .iter()
            .filter(|f| f.down_at < b && f.back_at > a)
            .map(|f| {
                format!(
                    "PostgreSQL {} down {:.0} ms",
                    f.kind.name(),
                    (f.back_at - f.down_at) * 1000.0
                )
            })
            .collect();
        if overlapping.is_empty() {
            String::new()
        } else {
            format!("; spans {}", overlapping.join(", "))
        }
    };
    for (what, windows) in [
        ("outside broker SIGKILLs", &kill_windows),
        ("outside broker SIGKILLs and PostgreSQL faults", &fault_windows),
    ] {
        let _ = match longest_gap(acks, windows) {
            Some((a, b)) => writeln!(
                report,
                "  longest gap between PUBACKs {what}: {:.0} ms ({a:.3} s to {b:.3} s{})",
                (b - a) * 1000.0,
                during(a, b)
            ),
            None => writeln!(report, "  longest gap between PUBACKs {what}: -"),
        };
    }
}

/// The table of subscribers: expected, received, lost, repeated. Returns,
/// per subscriber, what it lost and its repeats.
fn write_subscribers(report: &mut String, rig: &Rig, end: &Ending) -> (Vec<Vec<String>>, Vec<Vec<Repeat>>) {
    let expected = &end.expected;
    let _ = writeln!(
        report,
        "{:<12} {:>8} {:>9} {:>5} {:>9} {:>12} {:>10} {:>8}",
        "subscriber", "expected", "received", "lost", "repeated", "redelivered", "unacked-ok", "connects"
    );
    let _ = writeln!(
        report,
        "{:<12} {:>8} {:>9} {:>5} {:>9} {:>12} {:>10} {:>8}",
        "", "", "distinct", "", "after ack", "before ack", "extra", ""
    );
    let mut total_lost = 0;
    let mut total_repeated = 0;
    let mut lost_by_sub: Vec<Vec<String>> = Vec::new();
    let mut repeats_by_sub: Vec<Vec<Repeat>> = Vec::new();
    let mut late = Vec::new();
    for (sub, lost) in rig.subs.iter().zip(&end.lost_at_drain) {
        let id = &sub.id;
        let l = lock(&sub.log);
        let came_late = lost.iter().filter(|p| l.received.contains_key(*p)).count();
        if came_late > 0 {
            late.push(format!("{id}: {came_late}"));
        }
        let extra = l.received.keys().filter(|p| !expected.contains_key(*p)).count();
        let _ = writeln!(
            report,
            "{:<12} {:>8} {:>9} {:>5} {:>9} {:>12} {:>10} {:>8}",
            id,
            expected.len(),
            l.received.len(),
            lost.len(),
            l.repeats.len(),
            l.redelivered_before_ack,
            extra,
            l.connects
        );
        total_lost += lost.len();
        total_repeated += l.repeats.len();
        lost_by_sub.push(lost.clone());
        repeats_by_sub.push(l.repeats.clone());
    }
    let _ = writeln!(
        report,
        "{:<12} {:>8} {:>9} {:>5} {:>9}",
        "total",
        expected.len() * SUBSCRIBERS,
        rig.subs
            .iter()
            .map(|s| lock(&s.log).received.len())
            .sum::<usize>(),
        total_lost,
        total_repeated
    );
    let _ = writeln!(report, "lost: {total_lost}, repeated after ack: {total_repeated}");
    if !late.is_empty() {
        let _ = writeln!(
            report,
            "of the lost, received only after the reconnect that followed the last crash: {}",
            late.join(", ")
        );
    }
    (lost_by_sub, repeats_by_sub)
}

/// Where each repeat comes from, judged by the SIGKILLs between the PUBACK
/// and the repeat and the positions read just before them. Returns the
/// number of violations and, per subscriber, the violations with their
/// description.
async fn write_repeats(
    report: &mut String,
    rig: &mut Rig,
    repeats_by_sub: &[Vec<Repeat>],
    kills: &[Kill],
    db_faults: &[DbFault],
) -> (usize, Vec<Vec<(Repeat, String)>>) {
    let mut violations = 0;
    let mut violating_by_sub: Vec<Vec<(Repeat, String)>> = vec![Vec::new(); SUBSCRIBERS];
    let ids = stored_ids(&mut rig.db).await;
    let _ = writeln!(report, "repeats by cause:");
    for (i, reps) in repeats_by_sub.iter().enumerate() {
        let mut causes: Vec<Cause> = Vec::new();
        for r in reps {
            let (kind, why, lead) = classify(r, i, ids.get(&r.payload).copied(), kills);
            if kind.is_violation() {
                violations += 1;
                violating_by_sub[i].push((r.clone(), format!("{kind:?}: {why}")));
            }
            let db_fault_before_kill = kills
                .iter()
                .find(|k| k.done > r.acked_at && k.at < r.again_at)
                .is_some_and(|k| {
                    db_faults
                        .iter()
                        .any(|f| f.down_at <= k.at && f.back_at >= r.acked_at)
                });
            let lead = lead.unwrap_or(0.0);
            match causes.iter_mut().find(|c| c.kind == kind) {
                Some(c) => {
                    c.count += 1;
                    c.max_lead = c.max_lead.max(lead);
                    c.with_db_fault += usize::from(db_fault_before_kill);
                }
                None => causes.push(Cause {
                    kind,
                    count: 1,
                    example: why,
                    max_lead: lead,
                    with_db_fault: usize::from(db_fault_before_kill),
                }),
            }
        }
        for c in causes {
            let Cause {
                kind,
                count: n,
                example,
                max_lead,
                with_db_fault: with_db,
            } = c;
            let lead = if kind == RepeatKind::NoCrashBetween {
                String::new()
            } else {
                format!(
                    " (PUBACK at most {:.0} ms before the SIGKILL; {with_db} with a PostgreSQL fault between \
                     the PUBACK and the SIGKILL)",
                    max_lead.max(0.0) * 1000.0
                )
            };
            let _ = writeln!(
                report,
                "  {:<12} {n:>4}  {kind:?}{lead}; first: {example}",
                rig.sub_ids[i]
            );
        }
    }
    (violations, violating_by_sub)
}

/// Payload -> id of every stored message.
async fn stored_ids(db: &mut Db) -> HashMap<String, i64> {
    db.rows(
        "select convert_from(payload, 'UTF8'), id::int8 from mqtt_msg",
        &[],
    )
    .await
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}
