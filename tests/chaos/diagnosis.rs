//! On a failure, after the report: the events of the run and the broker's
//! log lines around each subscriber's first lost message and first repeat
//! (the first that is a violation, if any), and around the first stall;
//! then the whole timeline.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::drain::Ending;
use crate::faults::Rig;
use crate::logs::broker_log_window;
use crate::report::Verdict;
use crate::world::lock;
use crate::STALL_LIMIT;

/// What happened around a moment: the run's events and the broker's log.
struct Record {
    timeline: Vec<(f64, String)>,
    logs: String,
    wall0: SystemTime,
}

impl Record {
    /// The events between `from` and `to` (seconds since `t0`).
    fn events(&self, from: f64, to: f64) -> String {
        let mut s = String::new();
        for (t, what) in self.timeline.iter().filter(|(t, _)| *t >= from && *t <= to) {
            let _ = writeln!(s, "    {t:8.3}  {what}");
        }
        s
    }

    /// The events, then the broker's log lines, between `from` and `to`.
    fn window(&self, from: f64, to: f64) -> String {
        let mut s = self.events(from, to);
        let _ = writeln!(s, "  broker log lines (time since the start, then the line):");
        let _ = write!(s, "{}", broker_log_window(&self.logs, self.wall0, from, to, 80));
        s
    }
}

/// Prints the diagnosis (the first lost and repeated message of each
/// subscriber, the first stall) and the timeline.
pub(crate) async fn diagnose(rig: &mut Rig, end: &Ending, verdict: &Verdict) {
    let record = Record {
        timeline: lock(&rig.world.timeline).clone(),
        logs: rig.broker.logs(),
        wall0: rig.world.wall0,
    };
    let mut diag = String::new();
    for i in 0..rig.subs.len() {
        first_lost(&mut diag, rig, i, end, verdict, &record).await;
        first_repeat(&mut diag, rig, i, verdict, &record).await;
    }
    if let Some(s) = verdict.stall_failures().first() {
        let _ = writeln!(
            diag,
            "first stall: {}\n  events from 1 s before PostgreSQL went down to {:?} after it answered:\n{}",
            s.describe(),
            STALL_LIMIT * 2,
            record.window(
                s.fault.down_at - 1.0,
                s.fault.back_at + 2.0 * STALL_LIMIT.as_secs_f64()
            )
        );
    }
    let unacked = lock(&rig.world.unacked).clone();
    let _ = writeln!(
        diag,
        "publishes given up without PUBACK (first 20): {:?}",
        &unacked[..unacked.len().min(20)]
    );
    println!("===== diagnosis =====\n{diag}");
    println!("===== timeline =====\n{}", record.events(f64::MIN, f64::MAX));
}

/// Subscriber `i`'s first lost message, and what happened around its PUBACK.
async fn first_lost(
    diag: &mut String,
    rig: &mut Rig,
    i: usize,
    end: &Ending,
    verdict: &Verdict,
    record: &Record,
) {
    let lost = &verdict.lost_by_sub[i];
    let Some(first) = lost.first() else {
        return;
    };
    let t = end.expected[first];
    let stored = rig.db.stored_as(first).await;
    let _ = writeln!(
        diag,
        "{}: first lost {first} (PUBACK at {t:.3} s; stored as {stored:?}; {} lost in all: {:?})\n  \
         events from 5 s before to 5 s after:\n{}",
        rig.subs[i].id,
        lost.len(),
        &lost[..lost.len().min(10)],
        record.window(t - 5.0, t + 5.0)
    );
}

/// Subscriber `i`'s first repeat that is a violation, or else its first
/// repeat, and what happened from its first arrival to the repeat.
async fn first_repeat(diag: &mut String, rig: &mut Rig, i: usize, verdict: &Verdict, record: &Record) {
    let repeats = &verdict.repeats_by_sub[i];
    let first_repeat = match verdict.violating_by_sub[i].first() {
        Some((r, why)) => Some((r, format!("first repeat that is a violation ({why})"))),
        None => repeats.first().map(|r| (r, "first repeat".to_string())),
    };
    let Some((r, what)) = first_repeat else {
        return;
    };
    let arrivals = lock(&rig.subs[i].log)
        .received
        .get(&r.payload)
        .cloned()
        .unwrap_or_default();
    let from = arrivals.first().map_or(r.acked_at, |a| a.at.min(r.acked_at));
    let stored = rig.db.stored_as(&r.payload).await;
    let _ = writeln!(
        diag,
        "{}: {what}: {} (arrivals {arrivals:?}, PUBACK written at {:.3}, again at {:.3}; stored as \
         {stored:?}; {} repeats in all: {:?})\n  events from 2 s before the first arrival to the repeat:\n{}",
        rig.subs[i].id,
        r.payload,
        r.acked_at,
        r.again_at,
        repeats.len(),
        repeats
            .iter()
            .take(10)
            .map(|r| r.payload.as_str())
            .collect::<Vec<_>>(),
        record.window(from - 2.0, r.again_at + 0.5)
    );
}
