//! One batch's transaction: the statements the writer sends for a batch.

use hooks_spec::PublishProperties;
use tokio::sync::oneshot;
use tokio_postgres::types::{ToSql, Type};

use super::{StoreRequest, WRITE_LOCK};
use crate::error::PgsqlError;
use crate::pool::NamedPool;
use crate::properties;
use crate::schema::SchemaInfo;

/// What became of a batch.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Committed; the row ids in batch order.
    Stored(Vec<i64>),
    /// Nothing was written because the batch it was sent behind did not
    /// commit: its requests go again, after that batch's retries.
    PredecessorFailed,
}

/// The INSERT's answer: its ids ascending, as one array (one row to send
/// and decode per batch instead of one per message); empty when nothing was
/// written (the predecessor did not commit).
const IDS: &str = "SELECT COALESCE(array_agg(id::int8 ORDER BY id), '{}') FROM ins";

/// Writes one batch in one transaction; returns the ids in batch order.
///
/// BEGIN, the advisory lock, `txid_current()`, the INSERT and COMMIT are
/// sent together (tokio-postgres pipelines requests polled at once): one
/// round trip per batch. If the INSERT fails, PostgreSQL turns the COMMIT
/// into a rollback.
///
/// `locked` receives the transaction id as soon as the batch holds the lock
/// (the writer then sends the next batch, which queues behind it on the
/// server). `after`: the transaction id of the batch sent just before; the
/// INSERT writes nothing unless that transaction committed. The lock orders
/// the two, so when this batch gets it the other one has ended, and its
/// outcome is final: a batch never commits ahead of rows its predecessor
/// will write again (one by one, after a failed statement).
pub(super) async fn write(
    pool: &NamedPool,
    schema: SchemaInfo,
    batch: &[StoreRequest],
    after: Option<i64>,
    locked: Option<oneshot::Sender<i64>>,
) -> Result<Outcome, PgsqlError> {
    let conn = pool.get().await?;
    let client: &tokio_postgres::Client = &conn;
    let msgids: Vec<&str> = batch.iter().map(|r| r.msgid.as_str()).collect();
    let senders: Vec<Option<&str>> = batch.iter().map(|r| r.sender.as_deref()).collect();
    let topics: Vec<&str> = batch.iter().map(|r| &*r.topic).collect();
    let qos: Vec<i32> = batch.iter().map(|r| r.qos).collect();
    let retain: Vec<i32> = batch.iter().map(|r| r.retain).collect();
    let bytes: Vec<&[u8]>;
    let texts: Vec<&str>;
    let (payloads, payload_type, cast): (&(dyn ToSql + Sync), Type, &str) = if schema.payload_bytea {
        bytes = batch.iter().map(|r| r.payload.as_ref()).collect();
        (&bytes, Type::BYTEA_ARRAY, "bytea[]")
    } else {
        // EMQX's schema: payload text. Callers checked the payloads are UTF-8.
        texts = batch
            .iter()
            .map(|r| std::str::from_utf8(&r.payload).unwrap_or_default())
            .collect();
        (&texts, Type::TEXT_ARRAY, "text[]")
    };
    let base_params: [(&(dyn ToSql + Sync), Type); 7] = [
        (&msgids, Type::TEXT_ARRAY),
        (&senders, Type::TEXT_ARRAY),
        (&topics, Type::TEXT_ARRAY),
        (&qos, Type::INT4_ARRAY),
        (&retain, Type::INT4_ARRAY),
        (payloads, payload_type),
        (&after, Type::INT8),
    ];
    let props = schema
        .message_properties
        .then(|| PropertyArrays::of(batch))
        .flatten();
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> = base_params.to_vec();
    // The predecessor's status is read once (an InitPlan), not per row.
    let insert = match &props {
        None => format!(
            "WITH ins AS (
             INSERT INTO mqtt_msg (msgid, sender, topic, qos, retain, payload, arrived)
             SELECT m, s, t, q, r, p, now()
             FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int4[], $6::{cast})
                  WITH ORDINALITY AS u(m, s, t, q, r, p, o)
             WHERE $7::int8 IS NULL OR (SELECT txid_status($7::int8)) = 'committed'
             ORDER BY o
             RETURNING id)
             {IDS}"
        ),
        Some(a) => {
            params.extend(a.params());
            // User properties travel as JSON text (unnest cannot carry an array
            // per row); the expiry is made absolute by the server's clock, the
            // one replay compares it with.
            format!(
                "WITH ins AS (
                 INSERT INTO mqtt_msg (msgid, sender, topic, qos, retain, payload, arrived, expires_at,
                     payload_format, content_type, response_topic, correlation_data, user_properties)
                 SELECT m, s, t, q, r, p, now(), now() + make_interval(secs => e), pf, ct, rt, cd, up::jsonb
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int4[], $6::{cast},
                             $8::float8[], $9::int2[], $10::text[], $11::text[], $12::bytea[], $13::text[])
                      WITH ORDINALITY AS u(m, s, t, q, r, p, e, pf, ct, rt, cd, up, o)
                 WHERE $7::int8 IS NULL OR (SELECT txid_status($7::int8)) = 'committed'
                 ORDER BY o
                 RETURNING id)
                 {IDS}"
            )
        }
    };
    let txid = async {
        let row = client.query_typed_one("SELECT txid_current()", &[]).await;
        if let (Ok(row), Some(tx)) = (&row, locked) {
            if let Ok(id) = row.try_get::<_, i64>(0) {
                let _ = tx.send(id);
            }
        }
        row
    };
    let (begun, lock, txid, inserted, committed) = tokio::join!(
        client.batch_execute("BEGIN"),
        client.execute_typed("SELECT pg_advisory_xact_lock($1)", &[(&WRITE_LOCK, Type::INT8)]),
        txid,
        client.query_typed_one(&insert, &params),
        client.batch_execute("COMMIT"),
    );
    begun.map_err(PgsqlError::query("BEGIN (store)"))?;
    lock.map_err(PgsqlError::query("advisory lock (store)"))?;
    txid.map_err(PgsqlError::query("txid_current (store)"))?;
    let row = inserted.map_err(PgsqlError::query("INSERT INTO mqtt_msg"))?;
    committed.map_err(PgsqlError::query("COMMIT (store)"))?;
    // Under the lock nobody else takes ids, and rows are inserted in `o` order,
    // so ascending ids correspond to batch order.
    let ids: Vec<i64> = row
        .try_get(0)
        .map_err(PgsqlError::query("INSERT INTO mqtt_msg: ids"))?;
    if ids.is_empty() && after.is_some() && !batch.is_empty() {
        return Ok(Outcome::PredecessorFailed);
    }
    if ids.len() != batch.len() {
        return Err(PgsqlError::Store(format!(
            "INSERT returned {} ids for {} rows",
            ids.len(),
            batch.len()
        )));
    }
    Ok(Outcome::Stored(ids))
}

/// The property columns of one batch, one array per column (NULL where a
/// message has no such property).
struct PropertyArrays<'a> {
    expiry: Vec<Option<f64>>,
    format: Vec<Option<i16>>,
    content_type: Vec<Option<&'a str>>,
    response_topic: Vec<Option<&'a str>>,
    correlation: Vec<Option<&'a [u8]>>,
    user: Vec<Option<String>>,
}

impl<'a> PropertyArrays<'a> {
    /// `None` when no message of the batch has an expiry or a property: the
    /// batch is then written without them (most traffic, and all of MQTT
    /// 3.1.1, sends six arrays of NULLs less).
    fn of(batch: &'a [StoreRequest]) -> Option<PropertyArrays<'a>> {
        let none = PublishProperties::default();
        if batch
            .iter()
            .all(|r| r.expiry_secs.is_none() && r.properties == none)
        {
            return None;
        }
        Some(PropertyArrays {
            expiry: batch.iter().map(|r| r.expiry_secs).collect(),
            format: batch
                .iter()
                .map(|r| r.properties.payload_format_indicator.map(i16::from))
                .collect(),
            content_type: batch
                .iter()
                .map(|r| r.properties.content_type.as_deref())
                .collect(),
            response_topic: batch
                .iter()
                .map(|r| r.properties.response_topic.as_deref())
                .collect(),
            correlation: batch
                .iter()
                .map(|r| r.properties.correlation_data.as_deref())
                .collect(),
            user: batch
                .iter()
                .map(|r| properties::user_properties_json(&r.properties))
                .collect(),
        })
    }

    /// Parameters $8 to $13 of the INSERT.
    fn params(&self) -> [(&(dyn ToSql + Sync), Type); 6] {
        [
            (&self.expiry, Type::FLOAT8_ARRAY),
            (&self.format, Type::INT2_ARRAY),
            (&self.content_type, Type::TEXT_ARRAY),
            (&self.response_topic, Type::TEXT_ARRAY),
            (&self.correlation, Type::BYTEA_ARRAY),
            (&self.user, Type::TEXT_ARRAY),
        ]
    }
}
