//! The position flusher: the one task that verifies and writes read
//! positions (`mqtt_acked.mid`), and asks for page reads a position makes due.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::{ToSql, Type};

use super::{Candidate, PageDue, TrackKey, Tracks};
use crate::error::PgsqlError;
use crate::pool::NamedPool;
use crate::schema::SchemaCell;
use crate::topic_match::condition;

/// How long a failed position write or page read waits before it is tried again.
pub const RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

/// The task that writes positions.
pub struct Flusher {
    /// Our own queue: subscriptions whose write failed go back on it.
    retry: mpsc::UnboundedSender<TrackKey>,
    /// Subscriptions waiting out RETRY_DELAY after a failed write (so a
    /// drain at shutdown writes them too).
    retrying: HashSet<TrackKey>,
    pool: NamedPool,
    /// Whether `mqtt_msg` has `expires_at`
    /// ([`crate::schema::SchemaInfo::message_properties`]), once known.
    schema: SchemaCell,
    tracks: Arc<Tracks>,
    rx: mpsc::UnboundedReceiver<TrackKey>,
    drain: mpsc::UnboundedReceiver<Request>,
    pages: mpsc::UnboundedSender<PageDue>,
    /// Shortest time between the starts of two rounds
    /// (`backend.pgsql.position_flush_interval`).
    every: std::time::Duration,
}

/// What the flusher is asked besides positions to write.
#[derive(Debug)]
enum Request {
    /// A last round at shutdown, then stop.
    Drain(oneshot::Sender<()>),
    /// A round for these subscriptions now (their session moved to another
    /// node, which reads the positions next).
    Flush(Vec<TrackKey>, oneshot::Sender<()>),
}

/// Asks the flusher for a last round at shutdown, or a round for some
/// subscriptions now.
#[derive(Clone, Debug)]
pub struct DrainHandle(mpsc::UnboundedSender<Request>);

impl DrainHandle {
    /// Writes the positions of `keys` now (one attempt; what fails is
    /// retried as usual) and returns when that is done.
    pub async fn flush(&self, keys: Vec<TrackKey>) {
        let (tx, rx) = oneshot::channel();
        if self.0.send(Request::Flush(keys, tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Writes every position still pending (one attempt each) and stops the
    /// flusher; returns when that is done, or at once if it already stopped.
    /// Without it, acknowledgements received in the last rounds before a
    /// graceful shutdown would be delivered again after the restart.
    pub async fn drain(&self) {
        let (tx, rx) = oneshot::channel();
        if self.0.send(Request::Drain(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

impl Flusher {
    /// Starts the task; send dirty subscriptions to the returned sender.
    /// `schema`: the pool's, for whether `mqtt_msg` has `expires_at`;
    /// `every`: the shortest time between the starts of two rounds.
    pub fn spawn(
        pool: NamedPool,
        schema: SchemaCell,
        tracks: Arc<Tracks>,
        pages: mpsc::UnboundedSender<PageDue>,
        every: std::time::Duration,
    ) -> (mpsc::UnboundedSender<TrackKey>, DrainHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (drain_tx, drain) = mpsc::unbounded_channel();
        let retry = tx.clone();
        let _ = tracks.pages.set(pages.clone());
        tokio::spawn(
            Flusher {
                retry,
                retrying: HashSet::new(),
                pool,
                schema,
                tracks,
                rx,
                drain,
                pages,
                every,
            }
            .run(),
        );
        (tx, DrainHandle(drain_tx))
    }

    async fn run(mut self) {
        let mut in_outage = false;
        let mut last_round = tokio::time::Instant::now();
        loop {
            let first = tokio::select! {
                k = self.rx.recv() => match k {
                    Some(k) => k,
                    None => return,
                },
                Some(request) = self.drain.recv() => match request {
                    Request::Drain(done) => {
                        self.final_round().await;
                        let _ = done.send(());
                        return;
                    }
                    Request::Flush(keys, done) => {
                        self.flush_now(keys).await;
                        let _ = done.send(());
                        continue;
                    }
                },
            };
            self.retrying.remove(&first);
            // Under a stream of acknowledgements, rounds start at most every
            // `every` (position_flush_interval): each round costs the database
            // a statement per subscription whatever it covers, and paging does
            // not wait for it.
            let since = last_round.elapsed();
            if since < self.every {
                tokio::time::sleep(self.every - since).await;
            }
            last_round = tokio::time::Instant::now();
            let round = self.candidates(vec![first]);
            if round.is_empty() {
                continue;
            }
            match advance(&self.pool, &self.schema, &round).await {
                Ok(advanced) => {
                    if in_outage {
                        in_outage = false;
                        tracing::warn!(pool = %self.pool.name, "recording read positions again");
                    }
                    self.apply(&round, advanced);
                }
                Err(e) => {
                    if !in_outage {
                        in_outage = true;
                        tracing::error!(pool = %self.pool.name, "cannot record read positions (kept in memory, retried until the database answers): {e}");
                    }
                    // Retried by themselves: waiting for the next acknowledgement
                    // would stall a page whose acknowledgements all came in.
                    let keys: Vec<TrackKey> = round.into_iter().map(|(key, _)| key).collect();
                    self.retrying.extend(keys.iter().cloned());
                    let retry = self.retry.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(RETRY_DELAY).await;
                        for key in keys {
                            let _ = retry.send(key);
                        }
                    });
                }
            }
        }
    }
}

impl Flusher {
    /// Applies a round's recorded positions (and the page reads they make
    /// due).
    fn apply(&self, round: &[(TrackKey, Candidate)], advanced: Vec<Advanced>) {
        for ((key, _), a) in round.iter().zip(advanced) {
            if let Some(due) = self.tracks.advanced(key, a.mid, a.gap) {
                let _ = self.pages.send(due);
            }
        }
    }

    /// `dirty` plus every key queued since, without repeats.
    fn take_dirty(&mut self, mut dirty: Vec<TrackKey>) -> Vec<TrackKey> {
        while let Ok(k) = self.rx.try_recv() {
            self.retrying.remove(&k);
            if !dirty.contains(&k) {
                dirty.push(k);
            }
        }
        dirty
    }

    /// The subscriptions of `dirty` plus every one queued since, each with the
    /// position it may move to (those with nothing to write are left out).
    fn candidates(&mut self, dirty: Vec<TrackKey>) -> Vec<(TrackKey, Candidate)> {
        self.take_dirty(dirty)
            .into_iter()
            .filter_map(|key| self.tracks.candidate(&key).map(|c| (key, c)))
            .collect()
    }

    /// One round for `keys` (and what else is queued) now; what fails goes
    /// back to be retried.
    async fn flush_now(&mut self, keys: Vec<TrackKey>) {
        let round = self.candidates(keys);
        if round.is_empty() {
            return;
        }
        match advance(&self.pool, &self.schema, &round).await {
            Ok(advanced) => self.apply(&round, advanced),
            Err(e) => {
                tracing::warn!(pool = %self.pool.name, "cannot record the read positions of a session that moved (retried): {e}");
                for (key, _) in round {
                    let _ = self.retry.send(key);
                }
            }
        }
    }

    /// At shutdown: one attempt for every pending subscription, including
    /// those waiting to be retried; what fails stays unrecorded (those
    /// messages are delivered again after the restart: a duplicate, never a
    /// loss) and is logged.
    async fn final_round(&mut self) {
        let retrying: Vec<TrackKey> = self.retrying.drain().collect();
        let round = self.candidates(retrying);
        let failed = if round.is_empty() || advance(&self.pool, &self.schema, &round).await.is_ok() {
            0
        } else {
            round.len()
        };
        if failed > 0 {
            tracing::warn!(
                pool = %self.pool.name,
                failed,
                "shutdown: read positions of {failed} subscriptions could not be recorded; \
                 their acknowledged messages will be delivered again"
            );
        }
    }
}

/// A bound on a round's wait for the shared groups' rows. A node that
/// vanished without closing its database connection (host lost) holds their
/// locks until PostgreSQL notices: the round then fails, is rolled back and
/// retried like any failed round, rather than stop every later one.
const ROUND_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '2s'";

/// Verifies and writes the positions of one round of subscriptions; returns
/// each one's recorded position and first unacknowledged id, in `round`'s
/// order. Two round trips whatever the number of subscriptions: one
/// read-only transaction with every subscription's read (pipelined), then one
/// UPDATE for all of them (one commit, so one WAL flush, per round: they were
/// one each, and competed with the message writer's commits).
///
/// For each subscription, the first matching id in (from, high] not
/// acknowledged decides the new position; the update never moves it back.
/// With `expiry`, an expired row is no gap: it is never replayed, so it
/// would never be acknowledged and the position would stop there for good.
///
/// The reads and the update are one transaction, which first locks the rows
/// of the round's shared groups (in key order, so two nodes' rounds cannot
/// deadlock): a node's write for a group then waits for another node's,
/// and reads what it recorded. Without it both read before either wrote,
/// each saw the other's acknowledgements as gaps, and the position stopped
/// below what was acknowledged (19 with `acked_above` `{20}`) until a
/// further acknowledgement came, if any.
async fn advance(
    pool: &NamedPool,
    schema: &SchemaCell,
    round: &[(TrackKey, Candidate)],
) -> Result<Vec<Advanced>, PgsqlError> {
    let info = schema.ready(&pool.name)?;
    let conn = pool.get().await?;
    let client: &tokio_postgres::Client = &conn;
    let result = advance_in(client, info, round).await;
    if result.is_err() {
        // The pool hands the connection out again as it is: no transaction
        // may stay open on it. (Already closed when COMMIT itself failed.)
        // A round dropped midway (only at shutdown, past the drain timeout)
        // leaves it open, as the plugin stops.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

/// [`advance`] on one connection, in one transaction it opens and commits.
async fn advance_in(
    client: &tokio_postgres::Client,
    info: crate::schema::SchemaInfo,
    round: &[(TrackKey, Candidate)],
) -> Result<Vec<Advanced>, PgsqlError> {
    let expiry = info.message_properties;
    let (lock_clients, lock_filters): (Vec<&str>, Vec<&str>) = round
        .iter()
        .filter(|((_, filter), _)| info.acked_above && crate::groups::is_group(filter))
        .map(|((clientid, filter), _)| (clientid.as_str(), filter.as_str()))
        .unzip();
    let lock = async {
        if lock_clients.is_empty() {
            return Ok(());
        }
        client
            .query_typed(
                "SELECT 1 FROM mqtt_acked
                 WHERE (clientid, topic) IN (SELECT * FROM unnest($1::text[], $2::text[]))
                 ORDER BY clientid, topic FOR UPDATE",
                &[
                    (&lock_clients, Type::TEXT_ARRAY),
                    (&lock_filters, Type::TEXT_ARRAY),
                ],
            )
            .await
            .map(drop)
    };
    let reads: Vec<(String, String, usize)> = round
        .iter()
        .map(|((_, filter), _)| {
            let (op, value) = condition(crate::groups::match_filter(filter)).into_sql();
            // The matching ids in (from, high], in order; the first one not
            // acknowledged is the gap. (Compared here: a large acknowledged
            // set as an SQL array would be scanned once per row.)
            let not_expired = crate::properties::and_not_expired(expiry);
            // A shared group's members may be on several nodes of a cluster,
            // each recording what its members acknowledged: what the others
            // recorded (the row's acked_above) is no gap either, and the read
            // goes up to the highest of it. Each id says whether it is there.
            // It starts at the recorded position when that is ahead of this
            // node's: the ids another node moved it over are in neither
            // acked_above nor this node's acknowledgements, and would be a gap
            // below the position that strands what this node records above it.
            let sql = if info.acked_above && crate::groups::is_group(filter) {
                format!(
                    "SELECT id::int8, id = ANY(o.ids) FROM mqtt_msg,
                         (SELECT COALESCE((SELECT acked_above FROM mqtt_acked
                                           WHERE clientid = $6::text AND topic = $7::text), '{{}}'::int8[]) AS ids,
                                 COALESCE((SELECT mid FROM mqtt_acked
                                           WHERE clientid = $6::text AND topic = $7::text), 0)::int8 AS mid) o
                     WHERE id > GREATEST($1, o.mid) AND id <= GREATEST($2, (SELECT max(x) FROM unnest(o.ids) x))
                       AND topic {op} $3
                       AND ($4::float8 IS NULL OR arrived >= now() - make_interval(secs => $4))
                       AND NOT ($5::bool AND sender IS NOT DISTINCT FROM $6::text)
                       {not_expired}
                     ORDER BY id"
                )
            } else {
                format!(
                    "SELECT id::int8, false FROM mqtt_msg
                     WHERE id > $1 AND id <= $2 AND topic {op} $3
                       AND ($4::float8 IS NULL OR arrived >= now() - make_interval(secs => $4))
                       AND NOT ($5::bool AND sender IS NOT DISTINCT FROM $6::text)
                       {not_expired}
                     ORDER BY id"
                )
            };
            // $7 is named only by a shared group's read.
            let used = if sql.contains("$7") { 7 } else { 6 };
            (sql, value, used)
        })
        .collect();
    let queries = round
        .iter()
        .zip(&reads)
        .map(|(((clientid, filter), c), (sql, value, used))| async move {
            let params: [(&(dyn ToSql + Sync), Type); 7] = [
                (&c.from, Type::INT8),
                (&c.high, Type::INT8),
                (value, Type::TEXT),
                (&c.time_range_secs, Type::FLOAT8),
                (&c.no_local, Type::BOOL),
                (clientid, Type::TEXT),
                (filter, Type::TEXT),
            ];
            client.query_typed(sql, &params[..*used]).await
        });
    // Read in id order through an index whatever the statistics say (see
    // fetch::ORDERED_SCAN). Requests go out in the order they are first
    // polled, so BEGIN, the lock and the reads are one pipelined round trip
    // (each read, a statement of its own, sees what was committed before
    // the lock was granted).
    let (begun, bounded, locked, read) = tokio::join!(
        client.batch_execute(crate::fetch::ORDERED_SCAN),
        client.batch_execute(ROUND_LOCK_TIMEOUT),
        lock,
        futures_util::future::join_all(queries),
    );
    let what = || format!("find unacknowledged messages of {} subscriptions", round.len());
    begun.map_err(|e| PgsqlError::query(what())(e))?;
    bounded.map_err(PgsqlError::query(ROUND_LOCK_TIMEOUT))?;
    locked.map_err(PgsqlError::query(format!(
        "lock the positions of {} shared groups",
        lock_clients.len()
    )))?;
    let mut computed = Vec::with_capacity(round.len());
    for ((_, c), rows) in round.iter().zip(read) {
        let rows = rows.map_err(|e| PgsqlError::query(what())(e))?;
        let mut ids = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: i64 = r.try_get(0).map_err(|e| PgsqlError::query(what())(e))?;
            // Recorded by another node (a shared group): acknowledged.
            let elsewhere: bool = r.try_get(1).map_err(|e| PgsqlError::query(what())(e))?;
            if !elsewhere {
                ids.push(id);
            }
        }
        let gap = first_gap(ids.into_iter(), &c.acked);
        // Without a gap: up to the last id read (beyond `high` only for a
        // group, over what another node recorded).
        let last = rows
            .last()
            .and_then(|r| r.try_get::<_, i64>(0).ok())
            .unwrap_or(c.high);
        computed.push((gap.map_or(c.high.max(last), |g| g - 1), gap));
    }
    let clientids: Vec<&str> = round.iter().map(|((clientid, _), _)| clientid.as_str()).collect();
    let filters: Vec<&str> = round.iter().map(|((_, filter), _)| filter.as_str()).collect();
    let mids: Vec<i64> = computed.iter().map(|(position, _)| *position).collect();
    // What was acknowledged above each new position, as an array literal per
    // subscription (one bind parameter for all of them; NULL: nothing).
    let above: Vec<Option<String>> = round
        .iter()
        .zip(&computed)
        .map(|((_, c), (position, _))| acked_above_literal(&c.acked, *position))
        .collect();
    let update = if info.acked_above {
        // Merged with what is recorded, not replaced: a write from a node the
        // session left, retried late, must not erase what the node it moved
        // to recorded (every id in either was acknowledged by the client).
        "UPDATE mqtt_acked AS a SET mid = GREATEST(a.mid, u.mid),
                acked_above = (SELECT array_agg(DISTINCT x ORDER BY x)
                               FROM unnest(a.acked_above || u.above::int8[]) AS x
                               WHERE x > GREATEST(a.mid, u.mid))
         FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[]) AS u(clientid, topic, mid, above)
         WHERE a.clientid = u.clientid AND a.topic = u.topic
         RETURNING a.clientid::text, a.topic::text, a.mid::int8"
    } else {
        "UPDATE mqtt_acked AS a SET mid = GREATEST(a.mid, u.mid)
         FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[]) AS u(clientid, topic, mid, above)
         WHERE a.clientid = u.clientid AND a.topic = u.topic
         RETURNING a.clientid::text, a.topic::text, a.mid::int8"
    };
    // The update and COMMIT are one pipelined round trip (COMMIT ends the
    // transaction, as a rollback, when the update failed).
    let params: [(&(dyn ToSql + Sync), Type); 4] = [
        (&clientids, Type::TEXT_ARRAY),
        (&filters, Type::TEXT_ARRAY),
        (&mids, Type::INT8_ARRAY),
        (&above, Type::TEXT_ARRAY),
    ];
    // UPDATE only: the row exists since the first subscription; an
    // unsubscribe that deleted it meanwhile must not see it come back.
    let (updated, committed) = tokio::join!(
        client.query_typed(update, &params),
        client.batch_execute("COMMIT"),
    );
    let what = || format!("advance the positions of {} subscriptions", round.len());
    let rows = updated.map_err(|e| PgsqlError::query(what())(e))?;
    committed.map_err(|e| PgsqlError::query(what())(e))?;
    let mut recorded = HashMap::with_capacity(rows.len());
    for row in &rows {
        let clientid: &str = row.try_get(0).map_err(PgsqlError::query("mqtt_acked.clientid"))?;
        let filter: &str = row.try_get(1).map_err(PgsqlError::query("mqtt_acked.topic"))?;
        let mid: i64 = row.try_get(2).map_err(PgsqlError::query("mqtt_acked.mid"))?;
        recorded.insert((clientid, filter), mid);
    }
    // No row: unsubscribed meanwhile; the position stays in memory only.
    Ok(round
        .iter()
        .zip(computed)
        .map(|(((clientid, filter), _), (position, gap))| {
            let mid = recorded
                .get(&(clientid.as_str(), filter.as_str()))
                .copied()
                .unwrap_or(position);
            Advanced { mid, gap }
        })
        .collect())
}

/// What one subscription's write recorded.
struct Advanced {
    /// Its position now.
    mid: i64,
    /// The first matching id not acknowledged, if any.
    gap: Option<i64>,
}

/// `acked` (ascending) above `position` as a PostgreSQL array literal
/// (`{12,13}`), or `None` when there is none.
pub(super) fn acked_above_literal(acked: &[i64], position: i64) -> Option<String> {
    let start = acked.partition_point(|&id| id <= position);
    let above = &acked[start..];
    if above.is_empty() {
        return None;
    }
    let ids: Vec<String> = above.iter().map(i64::to_string).collect();
    Some(format!("{{{}}}", ids.join(",")))
}

/// The first id of `matching` (ascending) that is not in `acked` (ascending).
pub(super) fn first_gap(matching: impl Iterator<Item = i64>, acked: &[i64]) -> Option<i64> {
    let mut matching = matching;
    matching.find(|id| acked.binary_search(id).is_err())
}
