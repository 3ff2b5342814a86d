//! The message writer: one task owns the writes to `mqtt_msg`.
//!
//! Publishers' `message.publish` callbacks send a [`StoreRequest`] and wait
//! for the row id. The task takes whatever has queued up while the previous
//! batch was committing (up to `backend.pgsql.batch_size`) and writes it as
//! one multi-row `INSERT ... SELECT FROM unnest(...)` in one transaction:
//! group commit, so throughput is not one round trip per message.
//!
//! Ids are assigned and committed while holding a transaction-scoped advisory
//! lock, so across every broker sharing the database, ids become visible in
//! increasing order: a reader that has seen id N can never later find a
//! smaller id committed (no gaps for positions to skip).
//!
//! A failed batch fails every request in it; the task logs once when an
//! outage starts and once when it ends, and counts what was not stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::{ToSql, Type};

use crate::error::PgsqlError;
use crate::pool::NamedPool;
use crate::schema::SchemaInfo;

/// Lock serializing id assignment and commit across writers ("postbox2").
pub const WRITE_LOCK: i64 = 0x706f_7374_626f_7832;

/// Requests waiting for the writer beyond this are refused at once (the
/// publisher is told the message was not stored) instead of growing memory.
const QUEUE_BOUND: usize = 100_000;

/// One message to store.
#[derive(Debug, Clone)]
pub struct StoreRequest {
    /// `${msgid}`: the message id as hex.
    pub msgid: String,
    /// Publisher client id.
    pub sender: Option<String>,
    /// Topic.
    pub topic: String,
    /// QoS.
    pub qos: i32,
    /// Retain flag as 0/1.
    pub retain: i32,
    /// Payload (already checked to be UTF-8 when the column is text).
    pub payload: Bytes,
}

struct Pending {
    req: StoreRequest,
    reply: oneshot::Sender<Result<i64, String>>,
}

/// Counters of the storage path.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Rows written.
    pub stored: AtomicU64,
    /// Messages that could not be stored (database errors, time-outs).
    pub failed: AtomicU64,
    /// Outages seen (a run of failures counts once).
    pub outages: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// The highest id this node committed.
    pub last_id: std::sync::atomic::AtomicI64,
}

/// Handle to the writer task.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Pending>,
    stats: Arc<StoreStats>,
}

impl Writer {
    /// Starts the writer task.
    pub fn spawn(pool: NamedPool, schema: SchemaInfo, batch_size: usize, stats: Arc<StoreStats>) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE_BOUND);
        tokio::spawn(run(pool, schema, batch_size.max(1), rx, Arc::clone(&stats)));
        Writer { tx, stats }
    }

    /// Stores one message; returns its row id once committed.
    pub async fn store(&self, req: StoreRequest, timeout: Duration) -> Result<i64, PgsqlError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.try_send(Pending { req, reply }).is_err() {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            return Err(PgsqlError::WriterGone);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(id))) => Ok(id),
            Ok(Ok(Err(msg))) => Err(PgsqlError::Store(msg)),
            Ok(Err(_)) => Err(PgsqlError::WriterGone),
            Err(_) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                Err(PgsqlError::Timeout(timeout))
            }
        }
    }
}

async fn run(
    pool: NamedPool,
    schema: SchemaInfo,
    batch_size: usize,
    mut rx: mpsc::Receiver<Pending>,
    stats: Arc<StoreStats>,
) {
    let mut in_outage = false;
    let mut batch: Vec<Pending> = Vec::with_capacity(batch_size);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < batch_size {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // A publisher that stopped waiting (store_timeout) was told "not stored";
        // storing its message now would make it arrive anyway, and again later.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let result = match write_batch(&pool, schema, &batch).await {
            // One bad row (say, a value too long for an EMQX varchar column) must
            // not fail its neighbours: retry them one by one before giving up.
            // (Only for a statement that failed: a connection problem fails each row alike.)
            Err(PgsqlError::Query { .. }) if batch.len() > 1 => {
                let mut ids = Vec::with_capacity(batch.len());
                let mut first_error = None;
                for p in batch.drain(..) {
                    match write_batch(&pool, schema, std::slice::from_ref(&p)).await {
                        Ok(one) => {
                            let id = one.first().copied().unwrap_or_default();
                            ids.push(id);
                            stats.last_id.fetch_max(id, Ordering::Relaxed);
                            stats.stored.fetch_add(1, Ordering::Relaxed);
                            let _ = p.reply.send(Ok(id));
                        }
                        Err(e) => {
                            stats.failed.fetch_add(1, Ordering::Relaxed);
                            let _ = p.reply.send(Err(e.to_string()));
                            first_error.get_or_insert(e);
                        }
                    }
                }
                match first_error {
                    Some(e) if ids.is_empty() => Err(e),
                    _ => Ok(Vec::new()),
                }
            }
            other => other,
        };
        match result {
            Ok(ids) => {
                if in_outage {
                    in_outage = false;
                    tracing::warn!(pool = %pool.name, "storing messages again: PostgreSQL is back");
                }
                stats.stored.fetch_add(ids.len() as u64, Ordering::Relaxed);
                if let Some(&last) = ids.last() {
                    stats.last_id.fetch_max(last, Ordering::Relaxed);
                }
                stats.batches.fetch_add(1, Ordering::Relaxed);
                let mut orphans = Vec::new();
                for (p, id) in batch.drain(..).zip(ids) {
                    if p.reply.send(Ok(id)).is_err() {
                        orphans.push(id);
                    }
                }
                if !orphans.is_empty() {
                    forget_orphans(&pool, &orphans, &stats).await;
                }
            }
            Err(e) => {
                if !in_outage {
                    in_outage = true;
                    stats.outages.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(pool = %pool.name, "cannot store messages (publishers are not acknowledged until this recovers): {e}");
                }
                stats.failed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                let msg = e.to_string();
                for p in batch.drain(..) {
                    let _ = p.reply.send(Err(msg.clone()));
                }
            }
        }
    }
}

/// Rows committed after their publisher stopped waiting (store_timeout) and
/// was told "not stored": removed, so that stays true (the publisher sends
/// again, or the message went out live without a storage id).
async fn forget_orphans(pool: &NamedPool, ids: &[i64], stats: &StoreStats) {
    stats.stored.fetch_sub(ids.len() as u64, Ordering::Relaxed);
    let result = async {
        let conn = pool.get().await?;
        conn.execute_typed(
            "DELETE FROM mqtt_msg WHERE id = ANY($1)",
            &[(&ids, Type::INT8_ARRAY)],
        )
        .await
        .map_err(PgsqlError::query("DELETE late rows from mqtt_msg"))
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(pool = %pool.name, ?ids, "cannot remove rows stored after their publisher gave up: {e}");
    }
}

/// Writes one batch; returns the ids in batch order.
///
/// BEGIN, the advisory lock, the INSERT and COMMIT are sent together
/// (tokio-postgres pipelines requests polled at once): one round trip per
/// batch. If the INSERT fails, PostgreSQL turns the COMMIT into a rollback.
async fn write_batch(
    pool: &NamedPool,
    schema: SchemaInfo,
    batch: &[Pending],
) -> Result<Vec<i64>, PgsqlError> {
    let conn = pool.get().await?;
    let client: &tokio_postgres::Client = &conn;
    let msgids: Vec<&str> = batch.iter().map(|p| p.req.msgid.as_str()).collect();
    let senders: Vec<Option<&str>> = batch.iter().map(|p| p.req.sender.as_deref()).collect();
    let topics: Vec<&str> = batch.iter().map(|p| p.req.topic.as_str()).collect();
    let qos: Vec<i32> = batch.iter().map(|p| p.req.qos).collect();
    let retain: Vec<i32> = batch.iter().map(|p| p.req.retain).collect();
    let bytes: Vec<&[u8]>;
    let texts: Vec<&str>;
    let (payloads, payload_type, cast): (&(dyn ToSql + Sync), Type, &str) = if schema.payload_bytea {
        bytes = batch.iter().map(|p| p.req.payload.as_ref()).collect();
        (&bytes, Type::BYTEA_ARRAY, "bytea[]")
    } else {
        // EMQX's schema: payload text. Callers checked the payloads are UTF-8.
        texts = batch
            .iter()
            .map(|p| std::str::from_utf8(&p.req.payload).unwrap_or_default())
            .collect();
        (&texts, Type::TEXT_ARRAY, "text[]")
    };
    let insert = format!(
        "INSERT INTO mqtt_msg (msgid, sender, topic, qos, retain, payload, arrived)
         SELECT m, s, t, q, r, p, now()
         FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int4[], $6::{cast})
              WITH ORDINALITY AS u(m, s, t, q, r, p, o)
         ORDER BY o
         RETURNING id::int8"
    );
    let params: [(&(dyn ToSql + Sync), Type); 6] = [
        (&msgids, Type::TEXT_ARRAY),
        (&senders, Type::TEXT_ARRAY),
        (&topics, Type::TEXT_ARRAY),
        (&qos, Type::INT4_ARRAY),
        (&retain, Type::INT4_ARRAY),
        (payloads, payload_type),
    ];
    let (begun, locked, inserted, committed) = tokio::join!(
        client.batch_execute("BEGIN"),
        client.execute_typed("SELECT pg_advisory_xact_lock($1)", &[(&WRITE_LOCK, Type::INT8)]),
        client.query_typed(&insert, &params),
        client.batch_execute("COMMIT"),
    );
    begun.map_err(PgsqlError::query("BEGIN (store)"))?;
    locked.map_err(PgsqlError::query("advisory lock (store)"))?;
    let rows = inserted.map_err(PgsqlError::query("INSERT INTO mqtt_msg"))?;
    committed.map_err(PgsqlError::query("COMMIT (store)"))?;
    // Under the lock nobody else takes ids, and rows are inserted in `o` order,
    // so ascending ids correspond to batch order.
    let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort_unstable();
    if ids.len() != batch.len() {
        return Err(PgsqlError::Store(format!(
            "INSERT returned {} ids for {} rows",
            ids.len(),
            batch.len()
        )));
    }
    Ok(ids)
}
