//! Offline delivery (`on_message_fetch`): what a subscription missed.
//!
//! - First QoS>0 subscription of a client to a filter (no `mqtt_acked` row):
//!   the position becomes the newest stored id; nothing old is replayed.
//! - Later subscriptions (reconnect, restored subscription): stored messages
//!   matching the filter (wildcards included) with an id above the position
//!   and inside `time_range` are replayed oldest first, one page of
//!   `max_returned_count` at a time, through the session
//!   ([`BrokerHandle::replay`]). The next page is read once the position has
//!   reached the end of the page, that is when the client acknowledged it.
//!   Ids this client acknowledged above its position are left out.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use hooks_spec::{BrokerHandle, Delivery, Headers, Message, QoS};
use tokio::sync::mpsc;
use tokio_postgres::types::Type;

use crate::error::PgsqlError;
use crate::pool::NamedPool;
use crate::positions::{FetchOpts, PageDue, TrackKey, Tracks};
use crate::schema::SchemaInfo;
use crate::topic_match::{condition, TopicCondition};

/// Reads pages of stored messages and replays them into sessions.
pub struct Fetcher {
    /// Pool of the fetch rule.
    pub pool: NamedPool,
    /// Column types.
    pub schema: SchemaInfo,
    /// To replay into sessions.
    pub handle: Arc<dyn BrokerHandle>,
    /// Per-subscription bookkeeping.
    pub tracks: Arc<Tracks>,
    /// Subscriptions whose position must be recomputed.
    pub dirty: mpsc::UnboundedSender<TrackKey>,
}

impl Fetcher {
    /// `session.subscribed`: registers the subscription or replays its backlog.
    pub async fn on_subscribed(
        &self,
        clientid: &str,
        filter: &str,
        qos: QoS,
        opts: FetchOpts,
        first_position_cap: i64,
    ) -> Result<(), PgsqlError> {
        if qos == QoS::AtMostOnce {
            return Ok(());
        }
        let key: TrackKey = (clientid.to_string(), filter.to_string());
        let conn = self.pool.get().await?;
        let existing = conn
            .query_typed_opt(
                "SELECT mid::int8 FROM mqtt_acked WHERE clientid = $1 AND topic = $2",
                &[(&clientid, Type::TEXT), (&filter, Type::TEXT)],
            )
            .await
            .map_err(PgsqlError::query("read position (mqtt_acked)"))?;
        match existing {
            None => {
                // First subscription: start at the newest stored id. A concurrent
                // first subscription (restore racing the client) inserts nothing.
                let row = conn
                    .query_typed_one(
                        "WITH ins AS (
                             INSERT INTO mqtt_acked (clientid, topic, mid, created)
                             VALUES ($1, $2, LEAST((SELECT COALESCE(max(id), 0) FROM mqtt_msg), $3), now())
                             ON CONFLICT (clientid, topic) DO NOTHING
                             RETURNING mid)
                         SELECT COALESCE((SELECT mid FROM ins), (SELECT mid FROM mqtt_acked
                                WHERE clientid = $1 AND topic = $2))::int8",
                        &[
                            (&clientid, Type::TEXT),
                            (&filter, Type::TEXT),
                            (&first_position_cap, Type::INT8),
                        ],
                    )
                    .await
                    .map_err(PgsqlError::query("record first position (mqtt_acked)"))?;
                self.tracks.start(key, row.get(0), i32::from(qos.as_u8()), opts);
                // An empty, complete replay: the session tracks stored ids for this filter from now on.
                let _ = self.handle.replay(clientid, filter, Vec::new(), true).await;
                Ok(())
            }
            Some(row) => {
                let from = self
                    .tracks
                    .start(key.clone(), row.get(0), i32::from(qos.as_u8()), opts);
                drop(conn);
                self.page(&key, from).await
            }
        }
    }

    /// Reads one page above `from` and replays it.
    pub async fn page(&self, key: &TrackKey, from: i64) -> Result<(), PgsqlError> {
        let Some((qos, opts)) = self.tracks.settings(key) else {
            return Ok(());
        };
        let (clientid, filter) = key;
        let (op, value) = match condition(filter) {
            TopicCondition::Exact(t) => ("=", t),
            TopicCondition::Regex(r) => ("~", r),
        };
        let payload = if self.schema.payload_bytea {
            "payload"
        } else {
            "convert_to(payload, 'UTF8')"
        };
        let sql = format!(
            "SELECT id::int8, msgid, sender, topic, qos, {payload} FROM mqtt_msg
             WHERE id > $1 AND topic {op} $2
               AND ($3::float8 IS NULL OR arrived >= now() - make_interval(secs => $3))
             ORDER BY id LIMIT $4"
        );
        let limit = i64::try_from(opts.max_returned_count).unwrap_or(i64::MAX);
        let conn = self.pool.get().await?;
        let rows = conn
            .query_typed(
                &sql,
                &[
                    (&from, Type::INT8),
                    (&value, Type::TEXT),
                    (&opts.time_range_secs, Type::FLOAT8),
                    (&limit, Type::INT8),
                ],
            )
            .await
            .map_err(PgsqlError::query(format!(
                "fetch offline messages for `{clientid}` on `{filter}`"
            )))?;
        drop(conn);
        let full = rows.len() as i64 >= limit;
        let last = rows.last().map(|r| r.get::<_, i64>(0));
        let acked: HashSet<i64> = self.tracks.acked_above(key);
        let sub_qos = QoS::from_u8(u8::try_from(qos).unwrap_or(1)).unwrap_or(QoS::AtLeastOnce);
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.get(0);
            if acked.contains(&id) {
                continue;
            }
            let msg_qos =
                QoS::from_u8(u8::try_from(row.get::<_, i32>(4)).unwrap_or(1)).unwrap_or(QoS::AtLeastOnce);
            let msgid: Option<String> = row.get(1);
            let mut message = Message::new(
                row.get::<_, String>(3),
                Bytes::from(row.get::<_, Option<Vec<u8>>>(5).unwrap_or_default()),
                msg_qos,
                false,
            );
            if let Some(original) = msgid.as_deref().and_then(|h| u128::from_str_radix(h, 16).ok()) {
                message.id = original;
            }
            message.publisher = row.get::<_, Option<String>>(2).map(Arc::from);
            message.timestamp = SystemTime::now();
            message.headers = Headers {
                stored_id: Some(id),
                ..Headers::default()
            };
            deliveries.push(Delivery {
                message,
                qos: sub_qos.min(msg_qos),
                retain: false,
                filter: Some(filter.clone()),
            });
        }
        let page_last = if full { last } else { None };
        self.tracks.set_page(key, page_last);
        if full && deliveries.is_empty() {
            // Everything on this page was acknowledged already: move on at once.
            let _ = self.dirty.send(key.clone());
        }
        // QoS 0 deliveries are never acknowledged: they are done once sent.
        let at_most_once: Vec<(String, i64)> = deliveries
            .iter()
            .filter(|d| d.qos == QoS::AtMostOnce)
            .filter_map(|d| Some((d.message.topic.to_string(), d.message.headers.stored_id?)))
            .collect();
        for (topic, id) in at_most_once {
            for k in self.tracks.acked(clientid, &topic, id) {
                let _ = self.dirty.send(k);
            }
        }
        match self.handle.replay(clientid, filter, deliveries, !full).await {
            Ok(()) => Ok(()),
            // The client left; its next subscription starts again from the position.
            Err(_) => Ok(()),
        }
    }

    /// Serves page requests from the position task until the plugin stops.
    pub async fn serve_pages(self: Arc<Self>, mut pages: mpsc::UnboundedReceiver<PageDue>) {
        while let Some(due) = pages.recv().await {
            // A page that cannot be read is read again until it can: the
            // subscription waits for it (live messages are held meanwhile).
            let mut logged = false;
            while let Err(e) = self.page(&due.key, due.from).await {
                if !logged {
                    tracing::warn!(clientid = %due.key.0, filter = %due.key.1, "cannot fetch the next page (retrying): {e}");
                    logged = true;
                }
                tokio::time::sleep(crate::positions::RETRY_DELAY).await;
            }
        }
    }
}
