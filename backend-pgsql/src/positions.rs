//! Read positions: `mqtt_acked.mid` per (client, subscription filter).
//!
//! The position only moves forward, and only over a contiguous range: it
//! becomes the largest N such that every stored message matching the filter
//! with an id in (position, N] has been acknowledged by the client. The
//! database is the judge of which ids match (the flusher reads the matching
//! ids in the range, the first one not acknowledged is the gap, and the
//! position is updated with `GREATEST`), so out-of-order acknowledgements,
//! messages written by another broker that never reached this one live, and
//! messages a full queue dropped can never be skipped. Failed writes are
//! retried until the database answers.
//!
//! The per-subscription bookkeeping ([`Track`]) lives behind a `std` mutex
//! held only for short, await-free updates; one task ([`Flusher`]) owns the
//! writes of positions and batches them: whatever acknowledgements arrived
//! while it was writing are folded into the next write per subscription.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_postgres::types::Type;

use crate::error::PgsqlError;
use crate::pool::NamedPool;
use crate::topic_match::{condition, TopicCondition};

/// (client id, subscription filter).
pub type TrackKey = (String, String);

/// What the plugin knows of one subscription's stored messages.
#[derive(Debug, Default, Clone)]
pub struct Track {
    /// Persisted (or about to be) position.
    pub position: i64,
    /// Stored ids above the position delivered and not yet acknowledged.
    pub delivered: BTreeSet<i64>,
    /// Stored ids above the position acknowledged.
    pub acked: BTreeSet<i64>,
    /// While a backlog is replayed page by page: the last id of the page out.
    pub page_last: Option<i64>,
    /// The subscription's QoS (for the deliveries of later pages).
    pub qos: i32,
    /// Page size and age limit of the rule that fetches for it.
    pub opts: FetchOpts,
    /// A session is subscribed (false: kept after the session ended only to
    /// remember what the client acknowledged above the position).
    pub active: bool,
}

/// `offline_opts` of a fetch rule, with the globals filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FetchOpts {
    /// Messages per page.
    pub max_returned_count: usize,
    /// Only messages that arrived within this many seconds; `None`: no limit.
    pub time_range_secs: Option<f64>,
}

impl Default for FetchOpts {
    fn default() -> Self {
        FetchOpts {
            max_returned_count: 500,
            time_range_secs: None,
        }
    }
}

/// Every tracked subscription.
#[derive(Default)]
pub struct Tracks {
    map: Mutex<TrackMap>,
}

/// Tracks by client id, then filter: every stored message delivered or
/// acknowledged looks only at its own client's subscriptions.
#[derive(Default)]
struct TrackMap(HashMap<String, HashMap<String, Track>>);

impl TrackMap {
    fn get(&self, (c, f): &TrackKey) -> Option<&Track> {
        self.0.get(c)?.get(f)
    }

    fn get_mut(&mut self, (c, f): &TrackKey) -> Option<&mut Track> {
        self.0.get_mut(c)?.get_mut(f)
    }

    fn entry(&mut self, (c, f): TrackKey) -> &mut Track {
        self.0.entry(c).or_default().entry(f).or_default()
    }

    fn remove(&mut self, (c, f): &TrackKey) {
        if let Some(by_filter) = self.0.get_mut(c) {
            by_filter.remove(f);
            if by_filter.is_empty() {
                self.0.remove(c);
            }
        }
    }

    /// One client's tracks (filter, track).
    fn client_mut(&mut self, clientid: &str) -> impl Iterator<Item = (&String, &mut Track)> {
        self.0.get_mut(clientid).into_iter().flat_map(|m| m.iter_mut())
    }
}

/// What a page fetch needs to know after a position moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageDue {
    /// The subscription.
    pub key: TrackKey,
    /// Fetch ids above this.
    pub from: i64,
}

impl Tracks {
    fn lock(&self) -> std::sync::MutexGuard<'_, TrackMap> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts (or restarts, on a re-subscribe) tracking. The position never
    /// goes back below what this node already knew; returns the position to
    /// fetch from.
    pub fn start(&self, key: TrackKey, db_position: i64, qos: i32, opts: FetchOpts) -> i64 {
        let mut map = self.lock();
        let t = map.entry(key);
        t.opts = opts;
        t.position = t.position.max(db_position);
        let p = t.position;
        t.delivered.retain(|&id| id > p);
        t.acked.retain(|&id| id > p);
        t.qos = qos;
        t.active = true;
        p
    }

    /// Ids above the position this client already acknowledged (left out of pages).
    pub fn acked_above(&self, key: &TrackKey) -> HashSet<i64> {
        self.lock()
            .get(key)
            .map(|t| t.acked.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The subscription's QoS and fetch options.
    pub fn settings(&self, key: &TrackKey) -> Option<(i32, FetchOpts)> {
        self.lock().get(key).map(|t| (t.qos, t.opts))
    }

    /// Records the page now out (None when the backlog is drained).
    pub fn set_page(&self, key: &TrackKey, page_last: Option<i64>) {
        if let Some(t) = self.lock().get_mut(key) {
            t.page_last = page_last;
        }
    }

    /// A stored message was written to the client.
    pub fn delivered(&self, clientid: &str, topic: &str, id: i64) {
        let mut map = self.lock();
        for (f, t) in map.client_mut(clientid) {
            if t.active && id > t.position && hooks_match(f, topic) {
                t.delivered.insert(id);
            }
        }
    }

    /// The client acknowledged (or the broker gave up on, for a reason that
    /// makes it undeliverable) a stored message; returns the subscriptions
    /// whose position should be recomputed.
    pub fn acked(&self, clientid: &str, topic: &str, id: i64) -> Vec<TrackKey> {
        let mut map = self.lock();
        let mut dirty = Vec::new();
        for (f, t) in map.client_mut(clientid) {
            if hooks_match(f, topic) {
                t.delivered.remove(&id);
                if id > t.position {
                    t.acked.insert(id);
                    dirty.push((clientid.to_string(), f.clone()));
                }
            }
        }
        dirty
    }

    /// Forgets one subscription (unsubscribe).
    pub fn forget(&self, key: &TrackKey) {
        self.lock().remove(key);
    }

    /// A client's session ended. What it acknowledged above a position stays
    /// known, so that its next session is not sent those messages again (the
    /// position cannot pass an unacknowledged id below them); what was in
    /// flight or paged belonged to the session and is dropped.
    pub fn forget_client(&self, clientid: &str) {
        let mut map = self.lock();
        if let Some(by_filter) = map.0.get_mut(clientid) {
            by_filter.retain(|_, t| {
                t.active = false;
                t.delivered.clear();
                t.page_last = None;
                !t.acked.is_empty()
            });
            if by_filter.is_empty() {
                map.0.remove(clientid);
            }
        }
    }

    /// The candidate advance of one subscription.
    fn candidate(&self, key: &TrackKey) -> Option<Candidate> {
        let map = self.lock();
        let t = map.get(key)?;
        // With a page out and nothing newly acknowledged, the page end is the candidate
        // (a page whose messages were all acknowledged before must still move on).
        let high = t.acked.last().copied().or(t.page_last)?;
        Some(Candidate {
            from: t.position,
            high,
            acked: t.acked.iter().copied().collect(),
            time_range_secs: t.opts.time_range_secs,
        })
    }

    /// Applies a verified position; returns a page fetch that is due, if any:
    /// the next page when the page out is fully acknowledged, or a page from
    /// the new position when the first unacknowledged matching id is not on
    /// its way to the client (a gap nothing else will fill).
    fn advanced(&self, key: &TrackKey, position: i64, first_gap: Option<i64>) -> Option<PageDue> {
        let mut map = self.lock();
        let t = map.get_mut(key)?;
        if position > t.position {
            t.position = position;
            t.acked.retain(|&id| id > position);
            t.delivered.retain(|&id| id > position);
        }
        if !t.active {
            // No session is subscribed: nothing to page to; once nothing is left
            // to record, the entry goes.
            if t.acked.is_empty() {
                map.remove(key);
            }
            return None;
        }
        if let Some(last) = t.page_last {
            if t.position >= last {
                t.page_last = None;
                return Some(PageDue {
                    key: key.clone(),
                    from: t.position,
                });
            }
            return None;
        }
        match first_gap {
            Some(gap) if !t.delivered.contains(&gap) => Some(PageDue {
                key: key.clone(),
                from: t.position,
            }),
            _ => None,
        }
    }
}

fn hooks_match(filter: &str, topic: &str) -> bool {
    crate::mqtt_matches(filter, topic)
}

/// A position to verify and write.
#[derive(Debug, PartialEq)]
struct Candidate {
    from: i64,
    high: i64,
    acked: Vec<i64>,
    time_range_secs: Option<f64>,
}

/// How long a failed position write or page read waits before it is tried again.
pub const RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

/// The task that writes positions.
pub struct Flusher {
    /// Our own queue: subscriptions whose write failed go back on it.
    retry: mpsc::UnboundedSender<TrackKey>,
    pool: NamedPool,
    tracks: Arc<Tracks>,
    rx: mpsc::UnboundedReceiver<TrackKey>,
    pages: mpsc::UnboundedSender<PageDue>,
}

impl Flusher {
    /// Starts the task; send dirty subscriptions to the returned sender.
    pub fn spawn(
        pool: NamedPool,
        tracks: Arc<Tracks>,
        pages: mpsc::UnboundedSender<PageDue>,
    ) -> mpsc::UnboundedSender<TrackKey> {
        let (tx, rx) = mpsc::unbounded_channel();
        let retry = tx.clone();
        tokio::spawn(
            Flusher {
                retry,
                pool,
                tracks,
                rx,
                pages,
            }
            .run(),
        );
        tx
    }

    async fn run(mut self) {
        let mut in_outage = false;
        while let Some(first) = self.rx.recv().await {
            let mut dirty: Vec<TrackKey> = vec![first];
            while let Ok(k) = self.rx.try_recv() {
                if !dirty.contains(&k) {
                    dirty.push(k);
                }
            }
            for key in dirty {
                let Some(c) = self.tracks.candidate(&key) else {
                    continue;
                };
                match advance(&self.pool, &key, &c).await {
                    Ok((position, gap)) => {
                        if in_outage {
                            in_outage = false;
                            tracing::warn!(pool = %self.pool.name, "recording read positions again");
                        }
                        if let Some(due) = self.tracks.advanced(&key, position, gap) {
                            let _ = self.pages.send(due);
                        }
                    }
                    Err(e) => {
                        if !in_outage {
                            in_outage = true;
                            tracing::error!(pool = %self.pool.name, "cannot record read positions (kept in memory, retried until the database answers): {e}");
                        }
                        // Retried by itself: waiting for the next acknowledgement
                        // would stall a page whose acknowledgements all came in.
                        let retry = self.retry.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(RETRY_DELAY).await;
                            let _ = retry.send(key);
                        });
                    }
                }
            }
        }
    }
}

/// One statement: the first matching id in (from, high] not acknowledged
/// decides the new position; the upsert never moves it backwards.
async fn advance(
    pool: &NamedPool,
    (clientid, filter): &TrackKey,
    c: &Candidate,
) -> Result<(i64, Option<i64>), PgsqlError> {
    let conn = pool.get().await?;
    let (op, value) = match condition(filter) {
        TopicCondition::Exact(t) => ("=", t),
        TopicCondition::Regex(r) => ("~", r),
    };
    // The matching ids in (from, high], in order; the first one not
    // acknowledged is the gap. (Compared here: a large acknowledged set as an
    // SQL array would be scanned once per row.)
    let sql = format!(
        "SELECT id::int8 FROM mqtt_msg
         WHERE id > $1 AND id <= $2 AND topic {op} $3
           AND ($4::float8 IS NULL OR arrived >= now() - make_interval(secs => $4))
         ORDER BY id"
    );
    let rows = conn
        .query_typed(
            &sql,
            &[
                (&c.from, Type::INT8),
                (&c.high, Type::INT8),
                (&value, Type::TEXT),
                (&c.time_range_secs, Type::FLOAT8),
            ],
        )
        .await
        .map_err(PgsqlError::query(format!(
            "find unacknowledged messages of `{clientid}` on `{filter}`"
        )))?;
    let gap = first_gap(rows.iter().map(|r| r.get::<_, i64>(0)), &c.acked);
    let position = gap.map_or(c.high, |g| g - 1);
    let row = conn
        .query_typed_opt(
            // UPDATE only: the row exists since the first subscription; an
            // unsubscribe that deleted it meanwhile must not see it come back.
            "UPDATE mqtt_acked SET mid = GREATEST(mid, $3) WHERE clientid = $1 AND topic = $2
             RETURNING mid::int8",
            &[
                (clientid, Type::TEXT),
                (filter, Type::TEXT),
                (&position, Type::INT8),
            ],
        )
        .await
        .map_err(PgsqlError::query(format!(
            "advance position of `{clientid}` on `{filter}`"
        )))?;
    // No row: unsubscribed meanwhile; the position stays in memory only.
    Ok((row.map_or(position, |r| r.get(0)), gap))
}

/// The first id of `matching` (ascending) that is not in `acked` (ascending).
fn first_gap(matching: impl Iterator<Item = i64>, acked: &[i64]) -> Option<i64> {
    let mut matching = matching;
    matching.find(|id| acked.binary_search(id).is_err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_unacknowledged_matching_id_is_the_gap() {
        assert_eq!(first_gap([3, 5, 8].into_iter(), &[3, 5, 8]), None);
        assert_eq!(first_gap([3, 5, 8].into_iter(), &[3, 8]), Some(5));
        assert_eq!(first_gap([3, 5, 8].into_iter(), &[4, 5, 8, 9]), Some(3));
        assert_eq!(first_gap(std::iter::empty(), &[1]), None);
    }

    fn key() -> TrackKey {
        ("c".into(), "a/#".into())
    }

    #[test]
    fn positions_never_go_back_on_restart() {
        let t = Tracks::default();
        assert_eq!(t.start(key(), 10, 1, FetchOpts::default()), 10);
        assert_eq!(
            t.start(key(), 4, 1, FetchOpts::default()),
            10,
            "a stale database position does not move it back"
        );
    }

    #[test]
    fn acks_are_tracked_per_matching_subscription() {
        let t = Tracks::default();
        t.start(key(), 10, 1, FetchOpts::default());
        t.start(("c".into(), "b".into()), 0, 1, FetchOpts::default());
        t.delivered("c", "a/x", 12);
        assert_eq!(t.acked("c", "a/x", 12), vec![key()]);
        assert!(
            t.acked("c", "a/x", 9).is_empty(),
            "an id at or below the position changes nothing"
        );
        let c = t.candidate(&key()).unwrap();
        assert_eq!((c.from, c.high, c.acked), (10, 12, vec![12]));
    }

    #[test]
    fn a_gap_not_in_flight_asks_for_a_page_and_an_in_flight_one_does_not() {
        let t = Tracks::default();
        t.start(key(), 10, 1, FetchOpts::default());
        t.delivered("c", "a/x", 11);
        t.acked("c", "a/x", 12);
        assert_eq!(t.advanced(&key(), 10, Some(11)), None, "11 is on its way");
        t.acked("c", "a/x", 11);
        assert_eq!(t.advanced(&key(), 12, None), None);
        t.acked("c", "a/x", 15);
        assert_eq!(
            t.advanced(&key(), 12, Some(13)),
            Some(PageDue { key: key(), from: 12 })
        );
    }

    #[test]
    fn acks_above_the_position_outlive_the_session() {
        let t = Tracks::default();
        t.start(key(), 10, 1, FetchOpts::default());
        t.start(("c".into(), "b".into()), 3, 1, FetchOpts::default());
        t.delivered("c", "a/x", 11);
        t.delivered("c", "a/x", 12);
        t.acked("c", "a/x", 12);
        t.forget_client("c");
        assert_eq!(t.settings(&("c".into(), "b".into())), None, "nothing to remember");
        assert_eq!(t.advanced(&key(), 10, Some(11)), None, "no session to page to");
        assert_eq!(t.start(key(), 10, 1, FetchOpts::default()), 10);
        assert_eq!(
            t.acked_above(&key()),
            HashSet::from([12]),
            "left out of the next session's replay"
        );
        assert!(t.lock().get(&key()).unwrap().delivered.is_empty());
    }

    #[test]
    fn the_next_page_is_due_when_the_page_is_acknowledged() {
        let t = Tracks::default();
        t.start(key(), 0, 1, FetchOpts::default());
        t.set_page(&key(), Some(5));
        assert_eq!(t.advanced(&key(), 4, None), None);
        assert_eq!(t.advanced(&key(), 5, None), Some(PageDue { key: key(), from: 5 }));
    }
}
