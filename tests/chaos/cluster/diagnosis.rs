//! On a failure, after the report: the events of the run and the nodes' log
//! lines around each subscriber's first lost message, first violating
//! repeat and first overlapping arrival; then the whole timeline.

use std::fmt::Write as _;

use crate::drain::Ending;
use crate::logs::stamped_lines;
use crate::report::{describe_conn, overlaps, Verdict};
use crate::rig::Rig;
use crate::world::lock;

/// Most log lines printed per window.
const MAX_LINES: usize = 150;

/// What happened around a moment: the run's events and every node's log.
struct Record<'a> {
    rig: &'a Rig,
    timeline: Vec<(f64, String)>,
    logs: Vec<String>,
}

impl Record<'_> {
    /// The events between `from` and `to` (seconds since `t0`).
    fn events(&self, from: f64, to: f64) -> String {
        let mut s = String::new();
        for (t, what) in self.timeline.iter().filter(|(t, _)| *t >= from && *t <= to) {
            let _ = writeln!(s, "    {t:8.3}  {what}");
        }
        s
    }

    /// The events between `from` and `to`, then the nodes' log lines between
    /// `log_from` and `log_to`, merged in time order.
    fn window(&self, from: f64, to: f64, log_from: f64, log_to: f64) -> String {
        let mut s = self.events(from, to);
        let mut lines: Vec<(f64, usize, &str)> = Vec::new();
        for (n, logs) in self.logs.iter().enumerate() {
            let stamped = stamped_lines(logs, self.rig.world.wall0, log_from, log_to);
            lines.extend(stamped.into_iter().map(|(t, l)| (t, n, l)));
        }
        lines.sort_by(|a, b| a.0.total_cmp(&b.0));
        let _ = writeln!(
            s,
            "  node log lines from {log_from:.3} s to {log_to:.3} s (time since the start, node, line):"
        );
        for (t, n, l) in lines.iter().take(MAX_LINES) {
            let _ = writeln!(s, "    {t:8.3}  node-{n}  {l}");
        }
        if lines.len() > MAX_LINES {
            let _ = writeln!(s, "    ... {} more lines", lines.len() - MAX_LINES);
        }
        s
    }
}

/// Where the cluster stored `payload`: (id, msgid, topic) of each row.
async fn stored_as(rig: &Rig, payload: &str) -> Vec<(i64, Option<String>, String)> {
    rig.pg
        .query(
            "select id::int8, msgid::text, topic::text from mqtt_msg where payload = $1",
            &[&payload.as_bytes()],
        )
        .await
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
        .unwrap_or_default()
}

/// Prints the diagnosis and the timeline.
pub(crate) async fn diagnose(rig: &Rig, end: &Ending, verdict: &Verdict) {
    let record = Record {
        rig,
        timeline: lock(&rig.world.timeline).clone(),
        logs: rig.nodes.iter().map(|n| n.logs()).collect(),
    };
    let mut diag = String::new();
    for (i, sub) in rig.subs.iter().enumerate() {
        let (conns, first_overlap) = {
            let log = lock(&sub.log);
            let conns: Vec<String> = log
                .connections
                .iter()
                .enumerate()
                .map(|(j, c)| describe_conn(j + 1, c))
                .collect();
            (conns, overlaps(&log).into_iter().next())
        };
        if let Some(first) = verdict.lost_by_sub[i].first() {
            let t = end.expected[first];
            let lost = &verdict.lost_by_sub[i];
            let _ = writeln!(
                diag,
                "{}: first lost {first} (PUBACK to the publisher at {t:.3} s; stored as {:?}; {} lost in all: {:?})\n  \
                 events from 3 s before to 3 s after:\n{}",
                sub.id,
                stored_as(rig, first).await,
                lost.len(),
                &lost[..lost.len().min(10)],
                record.window(t - 3.0, t + 3.0, t - 0.5, t + 0.5)
            );
        }
        let repeat = verdict.violating_by_sub[i]
            .first()
            .map(|(r, why)| (r, format!("first repeat that is a violation: {why}")))
            .or_else(|| {
                verdict.first_repeat[i]
                    .as_ref()
                    .map(|(r, why)| (r, format!("first repeat (allowed): {why}")))
            });
        if let Some((r, what)) = repeat {
            let _ = writeln!(
                diag,
                "{}: {what}; stored as {:?}\n  events from 2 s before the PUBACK to the repeat:\n{}",
                sub.id,
                stored_as(rig, &r.payload).await,
                record.window(
                    r.acked_at - 2.0,
                    r.again_at + 0.5,
                    r.acked_at - 0.3,
                    r.again_at + 0.2
                )
            );
        }
        if let Some((payload, a, later)) = first_overlap {
            let _ = writeln!(
                diag,
                "{}: first arrival on a connection after a later one's CONNACK: {payload} at {:.3} s on \
                 connection {} (connection {later} had its CONNACK)\n{}",
                sub.id,
                a.at,
                a.connection,
                record.window(a.at - 2.0, a.at + 0.5, a.at - 1.0, a.at + 0.2)
            );
        }
        let _ = writeln!(diag, "{}: connections: {}", sub.id, conns.join(", "));
    }
    if let Some((at, what)) = verdict.two_live.first() {
        let _ = writeln!(
            diag,
            "first connection taken over and left open: {what}\n{}",
            record.window(at - 2.0, at + 1.5, at - 1.0, at + 0.3)
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
