//! The message writer: one task owns the writes to `mqtt_msg`.
//!
//! Publishers' `message.publish` callbacks send a [`StoreRequest`] and wait
//! for the row id. The task takes whatever has queued up (up to
//! `backend.pgsql.batch_size`) and writes it as one multi-row
//! `INSERT ... SELECT FROM unnest(...)` in one transaction: group commit, so
//! throughput is not one round trip per message.
//!
//! Ids are assigned and committed while holding a transaction-scoped advisory
//! lock, so across every broker sharing the database, ids become visible in
//! increasing order: a reader that has seen id N can never later find a
//! smaller id committed (no gaps for positions to skip).
//!
//! Two batches are in flight at most, on two connections: as soon as a batch
//! holds the lock, the next one is sent and waits for the lock on the server,
//! so the database goes from one commit straight to the next batch instead of
//! waiting for the broker to answer publishers and send more (that turnaround
//! made each batch take about three times its database time,
//! `bench/ANALYSIS.md`). The second batch writes only if the first committed
//! ([`batch::write`]), so batches commit in the order they were formed, and
//! rows a failed batch writes again come before the next batch's.
//!
//! A batch whose statement fails is written again row by row (one bad row
//! must not fail its neighbours); one that fails otherwise fails every request
//! in it. The task logs once when an outage starts and once when it ends, and
//! counts what was not stored.

mod batch;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::types::Type;

use self::batch::Outcome;

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
    /// Publisher client id (shared with the message: no copy per message).
    pub sender: Option<Arc<str>>,
    /// Topic (shared with the message).
    pub topic: Arc<str>,
    /// QoS.
    pub qos: i32,
    /// Retain flag as 0/1.
    pub retain: i32,
    /// Payload (already checked to be UTF-8 when the column is text).
    pub payload: Bytes,
    /// Seconds the message has left to live (MQTT 5 Message Expiry
    /// Interval less its time in the broker so far); the database stores
    /// `now() + this` as `expires_at`. `None`: it never expires.
    pub expiry_secs: Option<f64>,
    /// MQTT 5 properties that travel with the message (empty for 3.1.1).
    /// Kept only where `mqtt_msg` has the columns
    /// ([`SchemaInfo::message_properties`]), as is the expiry.
    pub properties: hooks_spec::PublishProperties,
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
    /// Messages that could not be stored (database errors, a full queue;
    /// time-outs are the hook chain's failures).
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
    ///
    /// Not bounded in time here: the caller's `message.publish` callback is
    /// registered with `store_timeout` as its limit, and the hook chain drops
    /// it when that passes (one timer per message, not two). Dropping this
    /// future drops the reply's receiver, which the writer sees: a request
    /// not yet written is skipped, a row committed after all is deleted again
    /// (`forget_orphans`).
    pub async fn store(&self, req: StoreRequest) -> Result<i64, PgsqlError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.try_send(Pending { req, reply }).is_err() {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            return Err(PgsqlError::WriterGone);
        }
        match rx.await {
            Ok(Ok(id)) => Ok(id),
            Ok(Err(msg)) => Err(PgsqlError::Store(msg)),
            Err(_) => Err(PgsqlError::WriterGone),
        }
    }
}

type Reply = oneshot::Sender<Result<i64, String>>;

/// A batch handed to the database (its own task, on its own connection).
struct Sent {
    /// The publishers waiting, in batch order.
    replies: Vec<Reply>,
    /// Its transaction id, once it holds the write lock.
    locked: oneshot::Receiver<i64>,
    txid: Option<i64>,
    /// The outcome, with the requests back (for retries or another try).
    done: JoinHandle<(Vec<StoreRequest>, Result<Outcome, PgsqlError>)>,
}

fn send(pool: &NamedPool, schema: SchemaInfo, batch: Vec<Pending>, after: Option<i64>) -> Sent {
    let (reqs, replies): (Vec<StoreRequest>, Vec<Reply>) =
        batch.into_iter().map(|p| (p.req, p.reply)).unzip();
    let (locked_tx, locked) = oneshot::channel();
    let pool = pool.clone();
    let done = tokio::spawn(async move {
        let result = batch::write(&pool, schema, &reqs, after, Some(locked_tx)).await;
        (reqs, result)
    });
    Sent {
        replies,
        locked,
        txid: None,
        done,
    }
}

/// The writer task's state.
struct Run {
    pool: NamedPool,
    schema: SchemaInfo,
    stats: Arc<StoreStats>,
    in_outage: bool,
    /// Requests to write before anything queued: a batch that wrote nothing
    /// because the one before it failed. Oldest first.
    carry: VecDeque<Pending>,
}

async fn run(
    pool: NamedPool,
    schema: SchemaInfo,
    batch_size: usize,
    mut rx: mpsc::Receiver<Pending>,
    stats: Arc<StoreStats>,
) {
    // Open the two connections the batches in flight use now, not when the
    // first publishes wait for them (errors show on the first batch).
    let _ = tokio::join!(pool.get(), pool.get());
    let mut w = Run {
        pool,
        schema,
        stats,
        in_outage: false,
        carry: VecDeque::new(),
    };
    // The older batch in flight: it holds (or held) the lock.
    let mut ahead: Option<Sent> = None;
    loop {
        let mut batch: Vec<Pending> = Vec::with_capacity(batch_size);
        while batch.len() < batch_size {
            match w.carry.pop_front() {
                Some(p) => batch.push(p),
                None => break,
            }
        }
        if batch.is_empty() && ahead.is_none() {
            match rx.recv().await {
                Some(p) => batch.push(p),
                None => return,
            }
        }
        while batch.len() < batch_size {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // A publisher that stopped waiting (store_timeout) was told "not stored";
        // storing its message now would make it arrive anyway, and again later.
        batch.retain(|p| !p.reply.is_closed());
        let after = ahead.as_ref().and_then(|a| a.txid);
        let mut next = (!batch.is_empty()).then(|| send(&w.pool, w.schema, batch, after));
        if let Some(prev) = ahead.take() {
            if !w.settle(prev).await {
                // The batch sent behind it wrote nothing (or failed itself): its
                // requests go again, after the retries just made.
                if let Some(n) = next.take() {
                    w.settle(n).await;
                }
            }
        }
        if let Some(mut n) = next {
            match (&mut n.locked).await {
                Ok(txid) => {
                    n.txid = Some(txid);
                    ahead = Some(n);
                }
                // It ended without the lock (no connection, BEGIN failed).
                Err(_) => {
                    w.settle(n).await;
                }
            }
        }
    }
}

impl Run {
    /// Waits for a batch and answers its publishers; true when it committed.
    async fn settle(&mut self, sent: Sent) -> bool {
        let Sent { replies, done, .. } = sent;
        let (reqs, result) = match done.await {
            Ok(r) => r,
            Err(e) => {
                // The batch's task panicked or was cancelled: nothing is known stored.
                self.fail(replies, &PgsqlError::Store(format!("writer batch task: {e}")));
                return false;
            }
        };
        match result {
            Ok(Outcome::Stored(ids)) => {
                self.stored(replies, ids).await;
                true
            }
            Ok(Outcome::PredecessorFailed) => {
                let again = reqs
                    .into_iter()
                    .zip(replies)
                    .map(|(req, reply)| Pending { req, reply });
                // Before anything carried later: these are older.
                for p in again.rev() {
                    self.carry.push_front(p);
                }
                false
            }
            // One bad row (say, a value too long for an EMQX varchar column) must
            // not fail its neighbours: retry them one by one before giving up.
            // (Only for a statement that failed: a connection problem fails each row alike.)
            Err(PgsqlError::Query { .. }) if reqs.len() > 1 => {
                self.one_by_one(reqs, replies).await;
                false
            }
            Err(e) => {
                self.fail(replies, &e);
                false
            }
        }
    }

    async fn stored(&mut self, replies: Vec<Reply>, ids: Vec<i64>) {
        if self.in_outage {
            self.in_outage = false;
            tracing::warn!(pool = %self.pool.name, "storing messages again: PostgreSQL is back");
        }
        let stats = &self.stats;
        stats.stored.fetch_add(ids.len() as u64, Ordering::Relaxed);
        if let Some(&last) = ids.last() {
            stats.last_id.fetch_max(last, Ordering::Relaxed);
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        let mut orphans = Vec::new();
        for (reply, id) in replies.into_iter().zip(ids) {
            if reply.send(Ok(id)).is_err() {
                orphans.push(id);
            }
        }
        if !orphans.is_empty() {
            forget_orphans(&self.pool, &orphans, stats).await;
        }
    }

    async fn one_by_one(&mut self, reqs: Vec<StoreRequest>, replies: Vec<Reply>) {
        let mut first_error = None;
        let mut any = false;
        for (req, reply) in reqs.into_iter().zip(replies) {
            if reply.is_closed() {
                continue;
            }
            match batch::write(&self.pool, self.schema, std::slice::from_ref(&req), None, None).await {
                Ok(Outcome::Stored(one)) => {
                    any = true;
                    self.stored(vec![reply], one).await;
                }
                Ok(Outcome::PredecessorFailed) => {
                    // Not sent behind anything: cannot happen.
                    self.fail(vec![reply], &PgsqlError::Store("not written".into()));
                }
                Err(e) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Err(e.to_string()));
                    first_error.get_or_insert(e);
                }
            }
        }
        if let (Some(e), false) = (first_error, any) {
            // Every row failed: treat it as an outage (logged once).
            self.note_outage(&e);
        }
    }

    fn fail(&mut self, replies: Vec<Reply>, e: &PgsqlError) {
        self.note_outage(e);
        self.stats
            .failed
            .fetch_add(replies.len() as u64, Ordering::Relaxed);
        let msg = e.to_string();
        for reply in replies {
            let _ = reply.send(Err(msg.clone()));
        }
    }

    fn note_outage(&mut self, e: &PgsqlError) {
        if !self.in_outage {
            self.in_outage = true;
            self.stats.outages.fetch_add(1, Ordering::Relaxed);
            tracing::error!(pool = %self.pool.name, "cannot store messages (publishers are not acknowledged until this recovers): {e}");
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
