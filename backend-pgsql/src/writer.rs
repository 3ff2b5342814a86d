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
//! A batch the database could not take for now (connection lost, server
//! restarting, disk full: [`PgsqlError::is_transient`]) is written again,
//! oldest first and ahead of anything newer, every [`RETRY_DELAY`] until it
//! commits or its publishers stop waiting: nothing is acknowledged that is not
//! stored, and storing resumes by itself when PostgreSQL answers. When the
//! connection broke after the statements were sent, the commit may have
//! happened unseen: before writing such requests again the task looks for
//! their message ids in `mqtt_msg` (so a message is not stored twice). A
//! batch whose statement fails is written again row by row (one bad row must
//! not fail its neighbours), and a row the database refuses fails. The task
//! logs once when an outage starts and once when it ends, and counts what was
//! not stored.

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
use crate::metrics::WriterMetrics;
use crate::pool::NamedPool;
use crate::positions::RETRY_DELAY;
use crate::schema::{SchemaCell, SchemaInfo};

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
    /// A batch holding it failed in a way that may have hidden a commit (the
    /// connection broke after the statements were sent): before it is
    /// written again, the database is asked whether it is there already.
    unsure: bool,
}

impl Pending {
    fn new(req: StoreRequest, reply: Reply) -> Pending {
        Pending {
            req,
            reply,
            unsure: false,
        }
    }
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
    metrics: WriterMetrics,
}

impl Writer {
    /// Starts the writer task.
    /// Requests queue (and their publishers wait) until `schema` is known:
    /// the database has answered at least once.
    pub fn spawn(pool: NamedPool, schema: SchemaCell, batch_size: usize, stats: Arc<StoreStats>) -> Writer {
        Writer::spawn_with_metrics(pool, schema, batch_size, stats, WriterMetrics::detached())
    }

    /// [`Writer::spawn`], updating `metrics` (registered with the broker).
    pub fn spawn_with_metrics(
        pool: NamedPool,
        schema: SchemaCell,
        batch_size: usize,
        stats: Arc<StoreStats>,
        metrics: WriterMetrics,
    ) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE_BOUND);
        let task_stats = Arc::clone(&stats);
        let task_metrics = metrics.clone();
        tokio::spawn(async move {
            let schema = schema.wait().await;
            run(pool, schema, batch_size.max(1), rx, task_stats, task_metrics).await;
        });
        Writer { tx, stats, metrics }
    }

    /// Stores one message; returns its row id once committed.
    ///
    /// Not bounded in time: while the database is unreachable the request is
    /// written again every [`RETRY_DELAY`] until it commits. A caller that
    /// stops waiting (an MQTT 5 publisher's `store_timeout`, see
    /// `register::store_limit`) drops this future and with it the reply's
    /// receiver, which the writer sees: a request not yet written is skipped,
    /// a row committed after all is deleted again (`forget_orphans`).
    pub async fn store(&self, req: StoreRequest) -> Result<i64, PgsqlError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.try_send(Pending::new(req, reply)).is_err() {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            self.metrics.failed.inc();
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
    /// The outcome, with the requests back (for retries or another try),
    /// and how long the write took.
    done: JoinHandle<(
        Vec<StoreRequest>,
        Result<Outcome, PgsqlError>,
        std::time::Duration,
    )>,
}

fn send(pool: &NamedPool, schema: SchemaInfo, batch: Vec<Pending>, after: Option<i64>) -> Sent {
    let (reqs, replies): (Vec<StoreRequest>, Vec<Reply>) =
        batch.into_iter().map(|p| (p.req, p.reply)).unzip();
    let (locked_tx, locked) = oneshot::channel();
    let pool = pool.clone();
    let done = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let result = batch::write(&pool, schema, &reqs, after, Some(locked_tx)).await;
        (reqs, result, started.elapsed())
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
    metrics: WriterMetrics,
    in_outage: bool,
    /// Requests to write before anything queued, oldest first: those of
    /// batches that did not commit (the database was unreachable, or the
    /// batch they were sent behind failed).
    carry: VecDeque<Pending>,
}

/// What became of a batch, for the loop.
enum Settled {
    /// Committed, publishers answered.
    Committed,
    /// Not written, to be written again (oldest first); `transient`: because
    /// the database failed (wait before trying again), not only because the
    /// batch ahead of it did.
    Again { requests: Vec<Pending>, transient: bool },
    /// Failed for good (its publishers were told).
    Failed,
}

async fn run(
    pool: NamedPool,
    schema: SchemaInfo,
    batch_size: usize,
    mut rx: mpsc::Receiver<Pending>,
    stats: Arc<StoreStats>,
    metrics: WriterMetrics,
) {
    // Open the two connections the batches in flight use now, not when the
    // first publishes wait for them (errors show on the first batch).
    let _ = tokio::join!(pool.get(), pool.get());
    let mut w = Run {
        pool,
        schema,
        stats,
        metrics,
        in_outage: false,
        carry: VecDeque::new(),
    };
    // The older batch in flight: it holds (or held) the lock.
    let mut ahead: Option<Sent> = None;
    loop {
        if ahead.is_none() && w.carry.front().is_some_and(|p| p.unsure) && !w.resolve_unsure().await {
            tokio::time::sleep(RETRY_DELAY).await;
            continue;
        }
        let mut batch: Vec<Pending> = Vec::with_capacity(batch_size);
        while batch.len() < batch_size {
            match w.carry.pop_front() {
                Some(p) if p.unsure => {
                    // Written only once resolved (next turn, nothing in flight).
                    w.carry.push_front(p);
                    break;
                }
                Some(p) => batch.push(p),
                None => break,
            }
        }
        if batch.is_empty() && ahead.is_none() && w.carry.is_empty() {
            match rx.recv().await {
                Some(p) => batch.push(p),
                None => return,
            }
        }
        // Newer requests only once everything carried is in a batch (order).
        while batch.len() < batch_size && w.carry.is_empty() {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // A publisher that stopped waiting (an MQTT 5 publisher's store_timeout,
        // a session that ended) was told "not stored"; storing its message now
        // would make it arrive anyway, and again when it is sent again.
        batch.retain(|p| !p.reply.is_closed());
        let waiting = rx.len() + w.carry.len() + batch.len();
        w.metrics.queue.set(i64::try_from(waiting).unwrap_or(i64::MAX));
        let after = ahead.as_ref().and_then(|a| a.txid);
        let mut next = (!batch.is_empty()).then(|| send(&w.pool, w.schema, batch, after));
        let mut again: Vec<Pending> = Vec::new();
        let mut wait = false;
        let mut absorb = |settled: Settled| match settled {
            Settled::Committed => true,
            Settled::Again { requests, transient } => {
                again.extend(requests);
                wait |= transient;
                false
            }
            Settled::Failed => false,
        };
        if let Some(prev) = ahead.take() {
            if !absorb(w.settle(prev).await) {
                // The batch sent behind it wrote nothing (or failed itself): its
                // requests go again, after the ones just carried back.
                if let Some(n) = next.take() {
                    absorb(w.settle(n).await);
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
                    absorb(w.settle(n).await);
                }
            }
        }
        for p in again.into_iter().rev() {
            w.carry.push_front(p);
        }
        if wait {
            // The database is down or restarting (nothing is in flight now):
            // try again shortly, oldest first. The publishers keep waiting
            // (MQTT 3.1.1 has no way to say "not stored"); MQTT 5 publishers
            // stop waiting at store_timeout.
            tokio::time::sleep(RETRY_DELAY).await;
        }
    }
}

impl Run {
    /// Waits for a batch and answers its publishers.
    async fn settle(&mut self, sent: Sent) -> Settled {
        let Sent { replies, done, .. } = sent;
        let (reqs, result, took) = match done.await {
            Ok(r) => r,
            Err(e) => {
                // The batch's task panicked or was cancelled: nothing is known stored.
                self.fail(replies, &PgsqlError::Store(format!("writer batch task: {e}")));
                return Settled::Failed;
            }
        };
        match result {
            Ok(Outcome::Stored(ids)) => {
                self.metrics.commit_seconds.observe_duration(took);
                self.stored(replies, ids).await;
                Settled::Committed
            }
            Ok(Outcome::PredecessorFailed) => Settled::Again {
                requests: pair(reqs, replies, false),
                transient: false,
            },
            Err(e) if e.is_transient() => {
                self.note_outage(&e);
                // Statements reached the server (it had a connection): a commit
                // may have happened whose answer was lost with the connection.
                let unsure = !matches!(e, PgsqlError::Pool { .. });
                Settled::Again {
                    requests: pair(reqs, replies, unsure),
                    transient: true,
                }
            }
            // One bad row (say, a value too long for an EMQX varchar column) must
            // not fail its neighbours: retry them one by one before giving up.
            Err(PgsqlError::Query { .. }) if reqs.len() > 1 => self.one_by_one(reqs, replies).await,
            Err(e) => {
                self.fail(replies, &e);
                Settled::Failed
            }
        }
    }

    async fn stored(&mut self, replies: Vec<Reply>, ids: Vec<i64>) {
        if self.in_outage {
            self.in_outage = false;
            self.metrics.outage.set(0);
            tracing::warn!(pool = %self.pool.name, "storing messages again: PostgreSQL is back");
        }
        let stats = &self.stats;
        stats.stored.fetch_add(ids.len() as u64, Ordering::Relaxed);
        self.metrics.stored.add(ids.len() as u64);
        self.metrics.batch_size.observe(ids.len() as f64);
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

    /// After a statement error: each row alone, so only bad rows fail. Rows
    /// the database could not take for now (it went away meanwhile) are
    /// returned to be written again.
    async fn one_by_one(&mut self, reqs: Vec<StoreRequest>, replies: Vec<Reply>) -> Settled {
        let mut first_error = None;
        let mut any = false;
        let mut rest = reqs.into_iter().zip(replies);
        while let Some((req, reply)) = rest.next() {
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
                Err(e) if e.is_transient() => {
                    self.note_outage(&e);
                    let unsure = !matches!(e, PgsqlError::Pool { .. });
                    let mut requests = vec![Pending { req, reply, unsure }];
                    requests.extend(rest.map(|(req, reply)| Pending::new(req, reply)));
                    return Settled::Again {
                        requests,
                        transient: true,
                    };
                }
                Err(e) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    self.metrics.failed.inc();
                    tracing::warn!(pool = %self.pool.name, topic = %req.topic, "message refused by the database: {e}");
                    let _ = reply.send(Err(e.to_string()));
                    first_error.get_or_insert(e);
                }
            }
        }
        if let (Some(e), false) = (first_error, any) {
            // Every row failed: treat it as an outage (logged once).
            self.note_outage(&e);
        }
        Settled::Failed
    }

    /// The requests at the front of the carry whose batch may have committed
    /// unseen: those found in `mqtt_msg` (by message id, above the last id
    /// this writer knew committed) are answered with their ids, the others
    /// are written again. False when the database could not be asked.
    async fn resolve_unsure(&mut self) -> bool {
        let n = self.carry.iter().take_while(|p| p.unsure).count();
        let msgids: Vec<&str> = self.carry.iter().take(n).map(|p| p.req.msgid.as_str()).collect();
        let floor = self.stats.last_id.load(Ordering::Relaxed);
        let found =
            async {
                let conn = self.pool.get().await?;
                conn.query_typed(
                "SELECT id::int8, msgid::text FROM mqtt_msg WHERE id > $1 AND msgid = ANY($2) ORDER BY id",
                &[(&floor, Type::INT8), (&msgids, Type::TEXT_ARRAY)],
            )
            .await
            .map_err(PgsqlError::query("find messages of a batch whose commit went unanswered"))
            }
            .await;
        let rows = match found {
            Ok(rows) => rows,
            Err(e) => {
                self.note_outage(&e);
                return false;
            }
        };
        let mut committed: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
        for row in &rows {
            if let (Ok(id), Ok(msgid)) = (row.try_get::<_, i64>(0), row.try_get::<_, String>(1)) {
                committed.insert(msgid, id);
            }
        }
        let unsure: Vec<Pending> = self.carry.drain(..n).collect();
        let mut again = Vec::new();
        let (mut replies, mut ids) = (Vec::new(), Vec::new());
        for mut p in unsure {
            match committed.get(&p.req.msgid) {
                Some(&id) => {
                    replies.push(p.reply);
                    ids.push(id);
                }
                None => {
                    p.unsure = false;
                    again.push(p);
                }
            }
        }
        if !ids.is_empty() {
            tracing::info!(pool = %self.pool.name, rows = ids.len(), "a batch whose commit went unanswered had committed");
            self.stored(replies, ids).await;
        }
        for p in again.into_iter().rev() {
            self.carry.push_front(p);
        }
        true
    }

    fn fail(&mut self, replies: Vec<Reply>, e: &PgsqlError) {
        self.note_outage(e);
        self.stats
            .failed
            .fetch_add(replies.len() as u64, Ordering::Relaxed);
        self.metrics.failed.add(replies.len() as u64);
        let msg = e.to_string();
        for reply in replies {
            let _ = reply.send(Err(msg.clone()));
        }
    }

    fn note_outage(&mut self, e: &PgsqlError) {
        if !self.in_outage {
            self.in_outage = true;
            self.metrics.outage.set(1);
            self.stats.outages.fetch_add(1, Ordering::Relaxed);
            tracing::error!(pool = %self.pool.name, "cannot store messages (publishers are not acknowledged until this recovers): {e}");
        }
    }
}

/// Requests and their publishers back together, in batch order.
fn pair(reqs: Vec<StoreRequest>, replies: Vec<Reply>, unsure: bool) -> Vec<Pending> {
    reqs.into_iter()
        .zip(replies)
        .map(|(req, reply)| Pending { req, reply, unsure })
        .collect()
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
