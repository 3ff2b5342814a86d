//! Offline delivery (`on_message_fetch`): what a subscription missed.
//!
//! - First QoS>0 subscription of a client to a filter (no `mqtt_acked` row):
//!   the position becomes the newest stored id; nothing old is replayed.
//! - Later subscriptions (reconnect, restored subscription): stored messages
//!   matching the filter (wildcards included) with an id above the position
//!   and inside `time_range` are replayed oldest first, one page of
//!   `max_returned_count` at a time, through the session
//!   ([`BrokerHandle::replay`]). The next page is read as soon as the
//!   previous one is in the session's mailbox, while fewer than
//!   [`PAGES_AHEAD`](crate::positions::PAGES_AHEAD) handed pages wait for the
//!   client's acknowledgements (see [`crate::positions`]), from the last id
//!   handed out. Ids this client acknowledged above its position are left out.
//! - Messages whose MQTT 5 expiry passed are not replayed; the others keep
//!   their properties and carry the time they have left, so the broker
//!   forwards that and drops them if they expire while queued. (Only where
//!   `mqtt_msg` has the columns of `sql/V2__message_properties.sql`.)
//!
//! - A SUBSCRIBE with the user property `replay-from` (MQTT 5) replays from
//!   the first message stored at or after that time, acknowledged or not:
//!   the position is set back (in `mqtt_acked` too) and paging starts there.
//! - With `backend.pgsql.arrival_property` set, replayed messages carry the
//!   time the broker stored them as an MQTT 5 user property of that name
//!   (RFC 3339, UTC, milliseconds).
//!
//! Page reads must stay one short index range scan whatever the planner
//! believes: a freshly written backlog has no statistics yet (or ids above
//! the last ANALYZE), the planner then expects a handful of rows and picks a
//! bitmap scan plus a sort of *every* remaining row of the topic, which made
//! each page of a 100,000-message backlog cost 60-85 ms instead of 0.3 ms
//! (bench/ANALYSIS.md). The reads run in a transaction with bitmap scans and
//! sorts off ([`ORDERED_SCAN`]), leaving the ordered index scans.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use hooks_spec::{BrokerHandle, Delivery, Message, QoS};
use tokio::sync::mpsc;
use tokio_postgres::types::{ToSql, Type};

use crate::error::PgsqlError;
use crate::pool::NamedPool;
use crate::positions::{FetchOpts, PageDue, TrackKey, Tracks};
use crate::properties;
use crate::schema::SchemaCell;
use crate::topic_match::condition;

/// Opens a transaction whose plans read `mqtt_msg` in id order through an
/// index (`SET LOCAL`: it ends with the transaction, so it also holds behind
/// PgBouncer's transaction pooling). See the module documentation.
pub(crate) const ORDERED_SCAN: &str = "BEGIN; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off";

/// A subscription's QoS as the tracks keep it (an `i32`, as stored); 1
/// for anything that is not a QoS.
pub(crate) fn stored_qos(qos: i32) -> QoS {
    QoS::from_u8(u8::try_from(qos).unwrap_or(1)).unwrap_or(QoS::AtLeastOnce)
}

/// Reads pages of stored messages and replays them into sessions.
pub struct Fetcher {
    /// Pool of the fetch rule.
    pub pool: NamedPool,
    /// Column types, once the database has answered.
    pub schema: SchemaCell,
    /// To replay into sessions.
    pub handle: Arc<dyn BrokerHandle>,
    /// Per-subscription bookkeeping.
    pub tracks: Arc<Tracks>,
    /// Subscriptions whose position must be recomputed.
    pub dirty: mpsc::UnboundedSender<TrackKey>,
    /// Pages and messages replayed, the offline backlog.
    pub metrics: crate::metrics::ReplayMetrics,
    /// `backend.pgsql.arrival_property`: the user property replayed
    /// messages carry their storing time in; `None`: none.
    pub arrival_property: Option<Arc<str>>,
}

impl Fetcher {
    /// `session.subscribed`: registers the subscription or replays its
    /// backlog; from `replay_from` when the client asked for a time.
    pub async fn on_subscribed(
        &self,
        clientid: &str,
        filter: &str,
        qos: QoS,
        opts: FetchOpts,
        first_position_cap: i64,
        replay_from: Option<SystemTime>,
    ) -> Result<(), PgsqlError> {
        match replay_from {
            Some(from) if qos != QoS::AtMostOnce => {
                self.replay_from_time(clientid, filter, qos, opts, from).await
            }
            _ => {
                self.subscribed(clientid, filter, qos, opts, first_position_cap, false)
                    .await
            }
        }
    }

    /// The columns replayed messages are read with, in the order
    /// [`RowDecoder`] decodes them (`id, msgid, sender, topic, qos, payload`,
    /// the property columns where the table has them, the storing time with
    /// `arrival_property`), and the condition that leaves expired rows out
    /// (MQTT 5 3.3.2.3.3; what the others have left is computed by the
    /// server, whose clock set their expiry).
    fn message_columns(&self, schema: &crate::schema::SchemaInfo) -> (String, String) {
        let payload = if schema.payload_bytea {
            "payload"
        } else {
            "convert_to(payload, 'UTF8')"
        };
        let (props, not_expired) = if schema.message_properties {
            (
                format!(", {}", properties::SELECT_COLUMNS),
                format!("AND {}", properties::NOT_EXPIRED),
            )
        } else {
            (String::new(), String::new())
        };
        let columns = format!(
            "id::int8, msgid::text, sender::text, topic::text, qos::int4, {payload}{props}{}",
            self.arrival_column()
        );
        (columns, not_expired)
    }

    /// The storing time (seconds since the epoch) as a last column, when
    /// replayed messages carry it ([`Fetcher::arrival_property`]). `arrived`
    /// is a timestamp in the server's time zone (now() as the writer's
    /// session saw it).
    fn arrival_column(&self) -> &'static str {
        if self.arrival_property.is_some() {
            ", EXTRACT(EPOCH FROM arrived AT TIME ZONE current_setting('TimeZone'))::float8"
        } else {
            ""
        }
    }

    /// Sets the subscription's position back to just before the first
    /// message stored at or after `from` (by the server's clock; ids follow
    /// storing order), in `mqtt_acked` and here, and replays from there.
    async fn replay_from_time(
        &self,
        clientid: &str,
        filter: &str,
        qos: QoS,
        opts: FetchOpts,
        from: SystemTime,
    ) -> Result<(), PgsqlError> {
        let key: TrackKey = (clientid.to_string(), filter.to_string());
        let schema = self.schema.ready(&self.pool.name)?;
        let secs = from
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let clear_above = if schema.acked_above {
            ", acked_above = NULL"
        } else {
            ""
        };
        // `arrived` is a timestamp in the server's time zone (now() as the
        // writer's session saw it).
        let sql = format!(
            "WITH pos AS (
                 SELECT COALESCE(
                     (SELECT id - 1 FROM mqtt_msg
                      WHERE arrived >= (to_timestamp($3) AT TIME ZONE current_setting('TimeZone'))
                      ORDER BY arrived, id LIMIT 1),
                     (SELECT COALESCE(max(id), 0) FROM mqtt_msg))::int8 AS mid)
             INSERT INTO mqtt_acked (clientid, topic, mid, created)
             SELECT $1, $2, mid, now() FROM pos
             ON CONFLICT (clientid, topic) DO UPDATE SET mid = EXCLUDED.mid{clear_above}
             RETURNING mid::int8"
        );
        let conn = self.pool.get().await?;
        let row = conn
            .query_typed_one(
                &sql,
                &[
                    (&clientid, Type::TEXT),
                    (&filter, Type::TEXT),
                    (&secs, Type::FLOAT8),
                ],
            )
            .await
            .map_err(PgsqlError::query(
                "replay-from: set the position back (mqtt_acked)",
            ))?;
        drop(conn);
        let position: i64 = row
            .try_get(0)
            .map_err(PgsqlError::query("replay-from: mqtt_acked.mid"))?;
        tracing::info!(
            %clientid,
            %filter,
            from = %humantime::format_rfc3339_millis(from),
            position,
            "replay-from: replaying what was stored since"
        );
        let (from_id, epoch) = self
            .tracks
            .rewind(key.clone(), position, i32::from(qos.as_u8()), opts);
        self.tracks.begin_read(&key, epoch);
        self.page(&key, from_id, epoch).await
    }

    /// The subscription could not be registered or replayed (the database did
    /// not answer): its session holds the live stored messages of the filter
    /// (they come from the store, in order), what the client acknowledges
    /// meanwhile is collected, and the registration is tried again every
    /// [`RETRY_DELAY`](crate::positions::RETRY_DELAY) for as long as this is
    /// the client's subscription. Once registered, it replays from its
    /// position, so messages stored since the SUBSCRIBE arrive then.
    pub async fn register_later(
        self: Arc<Self>,
        clientid: String,
        filter: String,
        qos: QoS,
        opts: FetchOpts,
        first_position_cap: i64,
    ) {
        let key: TrackKey = (clientid.clone(), filter.clone());
        let epoch = self
            .tracks
            .start_unregistered(key.clone(), i32::from(qos.as_u8()), opts);
        let target = self.tracks.replay_to(&key).unwrap_or_else(|| clientid.clone());
        let _ = self.handle.replay(&target, &filter, Vec::new(), None).await;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(crate::positions::RETRY_DELAY).await;
                if !self.tracks.awaits_registration(&key, epoch) {
                    // Unsubscribed, subscribed again, or the session ended.
                    return;
                }
                if self
                    .subscribed(&clientid, &filter, qos, opts, first_position_cap, true)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
        });
    }

    /// `late`: registered after the SUBSCRIBE (see [`Fetcher::register_later`]):
    /// a first subscription replays from the position it gets.
    async fn subscribed(
        &self,
        clientid: &str,
        filter: &str,
        qos: QoS,
        opts: FetchOpts,
        first_position_cap: i64,
        late: bool,
    ) -> Result<(), PgsqlError> {
        if qos == QoS::AtMostOnce {
            return Ok(());
        }
        let key: TrackKey = (clientid.to_string(), filter.to_string());
        // Not before the migrations ran (the database answered since startup).
        let schema = self.schema.ready(&self.pool.name)?;
        let conn = self.pool.get().await?;
        let read_position = if schema.acked_above {
            "SELECT mid::int8, acked_above FROM mqtt_acked WHERE clientid = $1 AND topic = $2"
        } else {
            "SELECT mid::int8, NULL::int8[] FROM mqtt_acked WHERE clientid = $1 AND topic = $2"
        };
        let existing = conn
            .query_typed_opt(read_position, &[(&clientid, Type::TEXT), (&filter, Type::TEXT)])
            .await
            .map_err(PgsqlError::query("read position (mqtt_acked)"))?;
        if crate::groups::is_group(filter) && self.tracks.run_bound(&key).is_none() {
            // A shared group's backlog ends where its run here begins: what is
            // stored later is routed live to a member (see crate::groups).
            let newest: i64 = conn
                .query_typed_one("SELECT COALESCE(max(id), 0)::int8 FROM mqtt_msg", &[])
                .await
                .and_then(|r| r.try_get(0))
                .map_err(PgsqlError::query("newest stored id (mqtt_msg)"))?;
            self.tracks.bound_run(&key, newest);
        }
        match existing {
            None => {
                // First subscription: start at the newest stored id, or, for a
                // subscription provisioned in mqtt_sub before (EMQX's proxy
                // subscription, for a device that never connected), at the
                // newest id stored before it was provisioned. A concurrent
                // first subscription (restore racing the client) inserts nothing.
                let row = conn
                    .query_typed_one(
                        "WITH provisioned AS (
                             SELECT created FROM mqtt_sub WHERE clientid = $1 AND topic = $2
                                 AND created IS NOT NULL),
                         ins AS (
                             INSERT INTO mqtt_acked (clientid, topic, mid, created)
                             VALUES ($1, $2, LEAST(
                                 CASE WHEN EXISTS (SELECT 1 FROM provisioned)
                                      THEN (SELECT COALESCE(max(id), 0) FROM mqtt_msg
                                            WHERE arrived < (SELECT created FROM provisioned))
                                      ELSE (SELECT COALESCE(max(id), 0) FROM mqtt_msg) END,
                                 $3), now())
                             ON CONFLICT (clientid, topic) DO NOTHING
                             RETURNING mid)
                         SELECT COALESCE((SELECT mid FROM ins), (SELECT mid FROM mqtt_acked
                                WHERE clientid = $1 AND topic = $2))::int8,
                                EXISTS (SELECT 1 FROM provisioned)",
                        &[
                            (&clientid, Type::TEXT),
                            (&filter, Type::TEXT),
                            (&first_position_cap, Type::INT8),
                        ],
                    )
                    .await
                    .map_err(PgsqlError::query("record first position (mqtt_acked)"))?;
                let position: i64 = row
                    .try_get(0)
                    .map_err(PgsqlError::query("record first position (mqtt_acked)"))?;
                let provisioned: bool = row
                    .try_get(1)
                    .map_err(PgsqlError::query("record first position (mqtt_sub)"))?;
                let (from, epoch) =
                    self.tracks
                        .start(key.clone(), position, &[], i32::from(qos.as_u8()), opts);
                // A provisioned subscription has stored messages to replay,
                // like a returning one.
                if late || provisioned {
                    // What the client acknowledged meanwhile is recorded, and
                    // what was stored since the SUBSCRIBE (held by the session)
                    // comes from the store.
                    let _ = self.dirty.send(key.clone());
                    drop(conn);
                    self.tracks.begin_read(&key, epoch);
                    return self.page(&key, from, epoch).await;
                }
                // An empty, complete replay: the session tracks stored ids for this filter from now on.
                let target = self
                    .tracks
                    .replay_to(&key)
                    .unwrap_or_else(|| clientid.to_string());
                let _ = self
                    .handle
                    .replay(&target, filter, Vec::new(), Some(position))
                    .await;
                Ok(())
            }
            Some(row) => {
                let position: i64 = row.try_get(0).map_err(PgsqlError::query("mqtt_acked.mid"))?;
                let acked_above: Option<Vec<i64>> = row
                    .try_get(1)
                    .map_err(PgsqlError::query("mqtt_acked.acked_above"))?;
                let (from, epoch) = self.tracks.start(
                    key.clone(),
                    position,
                    acked_above.as_deref().unwrap_or_default(),
                    i32::from(qos.as_u8()),
                    opts,
                );
                // Acknowledgements collected while it was unregistered.
                let _ = self.dirty.send(key.clone());
                drop(conn);
                self.tracks.begin_read(&key, epoch);
                self.page(&key, from, epoch).await
            }
        }
    }

    /// Reads one page above `from` and replays it, then queues the next read
    /// if it is due already. Nothing happens when `epoch` is no longer the
    /// subscription's (it was unsubscribed, or subscribed again since).
    pub async fn page(&self, key: &TrackKey, from: i64, epoch: u64) -> Result<(), PgsqlError> {
        let Some((qos, opts)) = self.tracks.settings(key, epoch) else {
            return Ok(());
        };
        let (clientid, filter) = key;
        let (op, value) = condition(crate::groups::match_filter(filter)).into_sql();
        let schema = self.schema.ready(&self.pool.name)?;
        let (columns, not_expired) = self.message_columns(&schema);
        let sql = format!(
            "SELECT {columns} FROM mqtt_msg
             WHERE id > $1 AND topic {op} $2
               AND ($3::float8 IS NULL OR arrived >= now() - make_interval(secs => $3))
               AND NOT ($5::bool AND sender IS NOT DISTINCT FROM $6::text)
               AND ($7::int8 IS NULL OR id <= $7)
               {not_expired}
             ORDER BY id LIMIT $4"
        );
        let bound = self.tracks.run_bound(key);
        let limit = i64::try_from(opts.max_returned_count).unwrap_or(i64::MAX);
        let conn = self.pool.get().await?;
        let client: &tokio_postgres::Client = &conn;
        // No local (MQTT 5): the client's own messages are not for it.
        let params: [(&(dyn ToSql + Sync), Type); 7] = [
            (&from, Type::INT8),
            (&value, Type::TEXT),
            (&opts.time_range_secs, Type::FLOAT8),
            (&limit, Type::INT8),
            (&opts.no_local, Type::BOOL),
            (clientid, Type::TEXT),
            (&bound, Type::INT8),
        ];
        // One round trip: the requests are pipelined. The newest id is read
        // first: ids become visible in increasing order, so the page (a later
        // snapshot) sees every id up to it (see Tracks::page_read).
        let (begun, newest, rows, committed) = tokio::join!(
            client.batch_execute(ORDERED_SCAN),
            client.query_typed_one("SELECT COALESCE(max(id), 0)::int8 FROM mqtt_msg", &[]),
            client.query_typed(&sql, &params),
            client.batch_execute("COMMIT"),
        );
        let what = || format!("fetch offline messages for `{clientid}` on `{filter}`");
        begun.map_err(|e| PgsqlError::query(what())(e))?;
        let through: i64 = newest
            .and_then(|r| r.try_get(0))
            .map_err(|e| PgsqlError::query(what())(e))?;
        let mut rows = rows.map_err(|e| PgsqlError::query(what())(e))?;
        committed.map_err(|e| PgsqlError::query(what())(e))?;
        drop(conn);
        let mut full = rows.len() as i64 >= limit;
        // A page also ends at PAGE_BYTES of payload: the next one goes on
        // from its last id.
        let sizes = rows.iter().map(|r| {
            r.try_get::<_, Option<&[u8]>>(5)
                .ok()
                .flatten()
                .map_or(0, <[u8]>::len)
        });
        if let Some(keep) = cut_at(sizes, PAGE_BYTES) {
            rows.truncate(keep);
            full = true;
        }
        let first = rows.first().map(|r| r.try_get::<_, i64>(0)).transpose();
        let last = rows.last().map(|r| r.try_get::<_, i64>(0)).transpose();
        let (first, last) = (
            first.map_err(|e| PgsqlError::query(what())(e))?,
            last.map_err(|e| PgsqlError::query(what())(e))?,
        );
        let acked: HashSet<i64> = match (first, last) {
            (Some(a), Some(b)) => self.tracks.acked_within(key, a, b),
            _ => HashSet::new(),
        };
        let sub_qos = stored_qos(qos);
        let mut decoder = RowDecoder::new(sub_qos, schema.message_properties, self.arrival_property.clone());
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.try_get(0).map_err(|e| PgsqlError::query(what())(e))?;
            if acked.contains(&id) {
                continue;
            }
            deliveries.push(
                decoder
                    .decode(id, row)
                    .map_err(|e| PgsqlError::query(what())(e))?,
            );
        }
        let ids: Vec<i64> = deliveries
            .iter()
            .filter_map(|d| d.message.headers.stored_id)
            .collect();
        let Some(complete_through) =
            self.tracks
                .page_read(key, epoch, &ids, if full { last } else { None }, through)
        else {
            // The subscription ended (or was made again) while the page was
            // read: the page belongs to no session. Handed over, the client's
            // next session, subscribed to the same filter, would receive it
            // out of order (and wait for the rest of a replay that never comes).
            return Ok(());
        };
        if full && deliveries.is_empty() {
            // Everything on this page was acknowledged already: the position moves on.
            let _ = self.dirty.send(key.clone());
        }
        // QoS 0 deliveries are never acknowledged: done for the position once read.
        let at_most_once: Vec<(String, i64)> = deliveries
            .iter()
            .filter(|d| d.qos == QoS::AtMostOnce)
            .filter_map(|d| Some((d.message.topic.to_string(), d.message.headers.stored_id?)))
            .collect();
        let group = crate::groups::is_group(filter);
        for (topic, id) in at_most_once {
            if group {
                // A shared group's track, not a client's.
                let _ = self.tracks.acked_key(key, id, false).map(|k| self.dirty.send(k));
                continue;
            }
            for k in self.tracks.done_unsent(clientid, &topic, id) {
                let _ = self.dirty.send(k);
            }
        }
        self.metrics.pages.inc();
        self.metrics.messages.add(deliveries.len() as u64);
        // Err: the client left; its next subscription starts again from the position.
        // (A shared group's pages go to the member it replays to.)
        let target = self.tracks.replay_to(key);
        let handed = self
            .handle
            .replay(
                target.as_deref().unwrap_or(clientid),
                filter,
                deliveries,
                complete_through,
            )
            .await
            .is_ok();
        // Only now, with this page in the session's mailbox, may the next be read.
        if let Some(due) = self.tracks.page_handed(key, epoch, handed) {
            self.tracks.queue_page(due);
        }
        if !handed && group {
            // The member left: another one takes the replay from this page on.
            let tried = target.as_deref().unwrap_or(clientid);
            if let Some(due) = self.tracks.interrupted(key, epoch, from, tried) {
                self.tracks.queue_page(due);
            }
        }
        Ok(())
    }

    /// Hands a shared group's missed messages `ids` (dropped by a member's
    /// full queue) to `member`, oldest first; returns the ids handed (rows
    /// that expired or were deleted meanwhile are left out). Unlike a page,
    /// these are not a range: other members may hold the ids between them.
    pub async fn replay_missed(
        &self,
        key: &TrackKey,
        member: &str,
        ids: &[i64],
        qos: i32,
    ) -> Result<Vec<i64>, PgsqlError> {
        let schema = self.schema.ready(&self.pool.name)?;
        let (columns, not_expired) = self.message_columns(&schema);
        let sql = format!(
            "SELECT {columns} FROM mqtt_msg
             WHERE id = ANY($1) {not_expired} ORDER BY id"
        );
        let conn = self.pool.get().await?;
        let what = || format!("read missed messages of `{}`", key.1);
        let rows = conn
            .query_typed(&sql, &[(&ids, Type::INT8_ARRAY)])
            .await
            .map_err(|e| PgsqlError::query(what())(e))?;
        drop(conn);
        let sub_qos = stored_qos(qos);
        let mut decoder = RowDecoder::new(sub_qos, schema.message_properties, self.arrival_property.clone());
        let mut deliveries = Vec::with_capacity(rows.len());
        let mut handed = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.try_get(0).map_err(|e| PgsqlError::query(what())(e))?;
            deliveries.push(
                decoder
                    .decode(id, row)
                    .map_err(|e| PgsqlError::query(what())(e))?,
            );
            handed.push(id);
        }
        let through = handed.last().copied().unwrap_or(0);
        self.metrics.messages.add(deliveries.len() as u64);
        self.handle
            .replay(member, &key.1, deliveries, Some(through))
            .await
            .map_err(|e| PgsqlError::Store(format!("{}: {e}", what())))?;
        Ok(handed)
    }

    /// Serves page requests until the plugin stops.
    pub async fn serve_pages(self: Arc<Self>, mut pages: mpsc::UnboundedReceiver<PageDue>) {
        while let Some(due) = pages.recv().await {
            // A page that cannot be read is read again until it can: the
            // subscription waits for it (live messages are held meanwhile).
            let mut logged = false;
            while let Err(e) = self.page(&due.key, due.from, due.epoch).await {
                if !logged {
                    tracing::warn!(clientid = %due.key.0, filter = %due.key.1, "cannot fetch the next page (retrying): {e}");
                    logged = true;
                }
                tokio::time::sleep(crate::positions::RETRY_DELAY).await;
            }
        }
    }
}

/// Builds the deliveries of one page. A page holds up to thousands of rows,
/// usually of one topic and a few publishers: their `Arc<str>`s are shared
/// between consecutive rows, and the clock is read once per page (after the
/// page was read: a replayed message's expiry interval is what the database
/// said it had left, counted from then).
struct RowDecoder {
    sub_qos: QoS,
    /// The rows carry the property columns ([`properties::SELECT_COLUMNS`]).
    with_properties: bool,
    template: Message,
    topic: Option<Arc<str>>,
    publisher: Option<Arc<str>>,
    /// The rows end with the storing time (seconds since the epoch), given
    /// to the message as this user property.
    arrival_property: Option<Arc<str>>,
}

impl RowDecoder {
    fn new(sub_qos: QoS, with_properties: bool, arrival_property: Option<Arc<str>>) -> RowDecoder {
        let mut template = Message::new("", Bytes::new(), QoS::AtLeastOnce, false);
        template.timestamp = SystemTime::now();
        RowDecoder {
            sub_qos,
            with_properties,
            template,
            topic: None,
            publisher: None,
            arrival_property,
        }
    }

    /// `id, msgid, sender, topic, qos, payload` (text, text, text, int4,
    /// bytea), then the property columns when the table has them.
    fn decode(&mut self, id: i64, row: &tokio_postgres::Row) -> Result<Delivery, tokio_postgres::Error> {
        let msgid: Option<&str> = row.try_get(1)?;
        let sender: Option<&str> = row.try_get(2)?;
        let topic: &str = row.try_get(3)?;
        let qos: Option<i32> = row.try_get(4)?;
        let payload: Option<&[u8]> = row.try_get(5)?;
        let msg_qos = qos
            .and_then(|q| u8::try_from(q).ok())
            .and_then(QoS::from_u8)
            .unwrap_or(QoS::AtLeastOnce);
        let mut message = self.template.clone();
        message.id = match msgid.and_then(|h| u128::from_str_radix(h, 16).ok()) {
            Some(original) => original,
            None => hooks_spec::new_message_id(),
        };
        message.topic = shared(&mut self.topic, topic);
        message.publisher = sender.map(|s| shared(&mut self.publisher, s));
        message.payload = Bytes::copy_from_slice(payload.unwrap_or_default());
        message.qos = msg_qos;
        message.headers.stored_id = Some(id);
        if self.with_properties {
            let (expiry, props) = properties::decode(row, 6)?;
            message.expiry_interval = expiry;
            message.properties = props;
        }
        if let Some(name) = &self.arrival_property {
            let at: Option<f64> = row.try_get(row.len() - 1)?;
            if let Some(at) = at.filter(|s| s.is_finite() && *s >= 0.0) {
                let stored = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs_f64(at);
                message.properties.user_properties.push((
                    name.to_string(),
                    humantime::format_rfc3339_millis(stored).to_string(),
                ));
            }
        }
        Ok(Delivery {
            message,
            qos: self.sub_qos.min(msg_qos),
            retain: false,
            // The replay names its subscription once for the whole page.
            filter: None,
        })
    }
}

/// The most payload bytes one page holds (with up to `max_returned_count`
/// messages): a replaying client holds at most two pages, so large payloads
/// cannot make it hold `2 x max_returned_count x mqtt.max_packet_size`.
pub const PAGE_BYTES: usize = 4 << 20;

/// How many rows of a page to keep so their payloads stay within `budget`
/// bytes (always at least one); `None` when they all fit.
fn cut_at(sizes: impl Iterator<Item = usize>, budget: usize) -> Option<usize> {
    let mut total = 0usize;
    for (i, size) in sizes.enumerate() {
        total = total.saturating_add(size);
        if total > budget {
            return Some(i.max(1));
        }
    }
    None
}

/// `value` as an `Arc<str>`, reusing the previous one when it is the same.
fn shared(last: &mut Option<Arc<str>>, value: &str) -> Arc<str> {
    match last {
        Some(a) if &**a == value => Arc::clone(a),
        _ => {
            let a: Arc<str> = Arc::from(value);
            *last = Some(Arc::clone(&a));
            a
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_ends_where_its_payloads_pass_the_budget() {
        assert_eq!(cut_at([10, 10, 10].into_iter(), 30), None);
        assert_eq!(cut_at([10, 10, 11].into_iter(), 30), Some(2));
        // One message larger than the budget still makes a page of one.
        assert_eq!(cut_at([50, 1].into_iter(), 30), Some(1));
        assert_eq!(cut_at(std::iter::empty(), 30), None);
    }
}
