//! Persistent sessions in PostgreSQL (`on_session_restore`, bound to
//! `session.restore`): a client with clean session 0 (MQTT 5: session expiry
//! > 0) gets its session back after the broker restarted, gracefully or not.
//!
//! The session is `mqtt_session` (who, which user, its expiry, whether a
//! connection is attached, when it expires) plus its subscriptions, rows of
//! `mqtt_sub` with `session = true` and the MQTT 5 options. Its read positions
//! are `mqtt_acked`, kept by the offline delivery as for any subscriber. When
//! the broker asks (`session.restore`, a connection that wants its session
//! and none is in memory), the session is handed back if it has not expired;
//! the broker resubscribes it, and `on_message_fetch` replays from the
//! positions everything the client missed, the messages that were in flight
//! or queued at a crash included.
//!
//! One task ([`SessionStore`]) owns these writes, in the order the hooks
//! fired them, so a session ended and made again, or discarded by a clean
//! start, is never restored from a write that came later. Each operation is
//! one statement (several tables through data-modifying CTEs); what queued up
//! goes out pipelined in one transaction. While the database is unreachable
//! the batch is tried again every [`RETRY_DELAY`]: nothing here is dropped.
//!
//! Subscriptions and unsubscriptions are awaited by the hook (so SUBACK
//! follows the row's commit), at most the hook's time limit, and not at all
//! while the database is down (they are written when it answers); the rest
//! is written behind the connection. Clean-session subscriptions are never
//! stored, and a clean start deletes any stored session of its client id.
//! The sweep ([`SWEEP_EVERY`]) removes sessions that expired while the
//! broker was down, with their rows in `mqtt_sub`, `mqtt_acked` and
//! `mqtt_client`; a session expiring in the broker's memory is removed at once.

use std::sync::Arc;
use std::time::Duration;

use hooks_spec::{
    DisconnectReason, Flow, Hooks, QoS, Registration, Restore, SessionArgs, StoredSession, SubOpts,
    TopicFilter,
};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::{ToSql, Type};

use crate::error::PgsqlError;
use crate::pool::NamedPool;
use crate::positions::RETRY_DELAY;
use crate::schema::SchemaCell;
use crate::NAME;

/// How often sessions that expired while nobody watched are removed.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// How long after its expiry a session is swept: a broker that still holds
/// the session in memory ends it itself at the moment it expires.
const SWEEP_GRACE_SECS: f64 = 2.0;

/// Most operations written in one transaction.
const BATCH: usize = 256;

/// "Never expires" (the broker's `u32::MAX`).
const NEVER: i64 = u32::MAX as i64;

/// One write (or the lookup) of the session store.
enum Op {
    /// This node's sessions still marked connected are from before a crash:
    /// their connections are gone, their expiry runs from now.
    Recover {
        node: String,
    },
    /// A persistent session got a connection; `fresh`: a new session (any
    /// subscriptions stored for the client id belong to an older one).
    Open {
        clientid: String,
        username: Option<String>,
        expiry: i64,
        node: String,
        fresh: bool,
    },
    /// A session with expiry 0 began: no stored session survives it.
    Discard {
        clientid: String,
    },
    Subscribe {
        clientid: String,
        filter: String,
        opts: SubOpts,
        done: Option<oneshot::Sender<()>>,
    },
    Unsubscribe {
        clientid: String,
        filter: String,
        done: Option<oneshot::Sender<()>>,
    },
    /// The connection closed: the expiry starts.
    Disconnected {
        clientid: String,
        expiry: i64,
    },
    /// The session ended; `expired`: the client is forgotten (positions and
    /// client row too).
    End {
        clientid: String,
        expired: bool,
    },
    Restore {
        clientid: String,
        reply: oneshot::Sender<Option<StoredSession>>,
    },
    Sweep,
    /// Answered once every operation before it is written.
    Barrier(oneshot::Sender<()>),
}

/// Handle to the session store's task.
pub struct SessionStore {
    tx: mpsc::UnboundedSender<Op>,
    /// Client ids whose session this broker recorded as persistent: only
    /// their disconnections and ends are written (a clean session's are not).
    persistent: std::sync::Mutex<std::collections::HashSet<Arc<str>>>,
    /// The last write failed (the database is down): a restore is not waited
    /// for (the client gets a new session and subscribes again) rather than
    /// holding every persistent client's CONNACK for the hook's time limit.
    failing: Arc<std::sync::atomic::AtomicBool>,
    schema: SchemaCell,
}

impl SessionStore {
    /// Starts the task; it writes once the pool's database has answered
    /// (`schema`), first marking this node's sessions of a crash disconnected.
    pub fn spawn(pool: NamedPool, schema: SchemaCell, node: String) -> Arc<SessionStore> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Op::Recover { node });
        let sweep = tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                if sweep.send(Op::Sweep).is_err() {
                    return;
                }
            }
        });
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        tokio::spawn(run(pool, schema.clone(), rx, Arc::clone(&failing)));
        Arc::new(SessionStore {
            tx,
            persistent: Default::default(),
            failing,
            schema,
        })
    }

    /// The database cannot answer a restore now (it has not answered since
    /// startup, or the last write failed).
    fn unavailable(&self) -> bool {
        self.schema.get().is_none() || self.failing.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn persistent(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Arc<str>>> {
        self.persistent.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, op: Op) {
        let _ = self.tx.send(op);
    }

    /// The stored session of `clientid`, if it has not expired.
    async fn restore(&self, clientid: &str) -> Option<StoredSession> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Restore {
            clientid: clientid.to_string(),
            reply,
        });
        rx.await.ok().flatten()
    }

    /// Queues a write and waits until it is committed, unless the database
    /// is down: then the write waits in the queue (it is retried until the
    /// database answers) and the SUBACK does not.
    async fn committed(&self, make: impl FnOnce(oneshot::Sender<()>) -> Op) {
        let (done, rx) = oneshot::channel();
        self.send(make(done));
        if !self.unavailable() {
            let _ = rx.await;
        }
    }
}

async fn run(
    pool: NamedPool,
    schema: SchemaCell,
    mut rx: mpsc::UnboundedReceiver<Op>,
    down: Arc<std::sync::atomic::AtomicBool>,
) {
    schema.wait().await;
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // Every operation is idempotent: a batch that failed is written again whole.
        let results = loop {
            match write(&pool, &batch).await {
                Ok(results) => break results,
                Err(e) => {
                    down.store(true, std::sync::atomic::Ordering::Relaxed);
                    if !failing {
                        failing = true;
                        tracing::error!(pool = %pool.name, "cannot record persistent sessions (retrying until the database answers): {e}");
                    }
                    tokio::time::sleep(RETRY_DELAY).await;
                }
            }
        };
        down.store(false, std::sync::atomic::Ordering::Relaxed);
        if failing {
            failing = false;
            tracing::warn!(pool = %pool.name, "recording persistent sessions again");
        }
        for (op, result) in batch.into_iter().zip(results) {
            match op {
                Op::Subscribe { done: Some(done), .. } | Op::Unsubscribe { done: Some(done), .. } => {
                    let _ = done.send(());
                }
                Op::Restore { reply, .. } => {
                    let _ = reply.send(result);
                }
                Op::Barrier(done) => {
                    let _ = done.send(());
                }
                _ => {}
            }
        }
    }
}

/// Writes one batch in one transaction, its statements pipelined in order;
/// returns each restore's answer (`None` for the other operations).
async fn write(pool: &NamedPool, batch: &[Op]) -> Result<Vec<Option<StoredSession>>, PgsqlError> {
    let conn = pool.get().await?;
    let client: &tokio_postgres::Client = &conn;
    let ops = futures_util::future::join_all(batch.iter().map(|op| run_op(client, op)));
    let (begun, results, committed) =
        tokio::join!(client.batch_execute("BEGIN"), ops, client.batch_execute("COMMIT"));
    begun.map_err(PgsqlError::query("BEGIN (sessions)"))?;
    let results: Vec<Option<StoredSession>> = results.into_iter().collect::<Result<_, _>>()?;
    committed.map_err(PgsqlError::query("COMMIT (sessions)"))?;
    Ok(results)
}

/// One operation: a single statement (its first poll sends it, so the
/// batch's statements reach the server in batch order).
async fn run_op(client: &tokio_postgres::Client, op: &Op) -> Result<Option<StoredSession>, PgsqlError> {
    let exec = |sql, params, what| exec(client, sql, params, what);
    match op {
        Op::Recover { node } => {
            exec(
                "UPDATE mqtt_session SET connected = false, disconnected_at = now(),
                     expires_at = CASE WHEN expiry_secs >= 4294967295 THEN NULL
                                       ELSE now() + make_interval(secs => expiry_secs::float8) END
                 WHERE node = $1 AND connected",
                &[(node, Type::TEXT)],
                "sessions: mark the sessions of before a crash disconnected",
            )
            .await
        }
        Op::Open {
            clientid,
            username,
            expiry,
            node,
            fresh,
        } => {
            exec(
                "WITH cleared AS (DELETE FROM mqtt_sub WHERE $5 AND clientid = $1 AND session)
                 INSERT INTO mqtt_session (clientid, username, expiry_secs, node, connected, created)
                 VALUES ($1, $2, $3, $4, true, now())
                 ON CONFLICT (clientid) DO UPDATE SET username = EXCLUDED.username,
                     expiry_secs = EXCLUDED.expiry_secs, node = EXCLUDED.node, connected = true,
                     disconnected_at = NULL, expires_at = NULL,
                     created = CASE WHEN $5 THEN now() ELSE mqtt_session.created END",
                &[
                    (clientid, Type::TEXT),
                    (username, Type::TEXT),
                    (expiry, Type::INT8),
                    (node, Type::TEXT),
                    (fresh, Type::BOOL),
                ],
                "sessions: record a session",
            )
            .await
        }
        Op::Discard { clientid } => {
            exec(
                "WITH subs AS (DELETE FROM mqtt_sub WHERE clientid = $1 AND session)
                 DELETE FROM mqtt_session WHERE clientid = $1",
                &[(clientid, Type::TEXT)],
                "sessions: discard a stored session",
            )
            .await
        }
        Op::Subscribe {
            clientid,
            filter,
            opts,
            ..
        } => {
            let qos = i32::from(opts.qos.as_u8());
            let rh = i16::from(opts.retain_handling);
            let sub_id = opts.subscription_id.and_then(|i| i32::try_from(i).ok());
            exec(
                // A provisioned row (session = false) of the same filter stays provisioned.
                "INSERT INTO mqtt_sub (clientid, topic, qos, created, session, no_local,
                                       retain_as_published, retain_handling, subscription_id)
                 VALUES ($1, $2, $3, now(), true, $4, $5, $6, $7)
                 ON CONFLICT (clientid, topic) DO UPDATE SET qos = EXCLUDED.qos,
                     no_local = EXCLUDED.no_local, retain_as_published = EXCLUDED.retain_as_published,
                     retain_handling = EXCLUDED.retain_handling, subscription_id = EXCLUDED.subscription_id",
                &[
                    (clientid, Type::TEXT),
                    (filter, Type::TEXT),
                    (&qos, Type::INT4),
                    (&opts.no_local, Type::BOOL),
                    (&opts.retain_as_published, Type::BOOL),
                    (&rh, Type::INT2),
                    (&sub_id, Type::INT4),
                ],
                "sessions: record a subscription",
            )
            .await
        }
        Op::Unsubscribe { clientid, filter, .. } => {
            exec(
                "DELETE FROM mqtt_sub WHERE clientid = $1 AND topic = $2 AND session",
                &[(clientid, Type::TEXT), (filter, Type::TEXT)],
                "sessions: remove a subscription",
            )
            .await
        }
        Op::Disconnected { clientid, expiry } => {
            exec(
                "UPDATE mqtt_session SET connected = false, disconnected_at = now(), expiry_secs = $2,
                     expires_at = CASE WHEN $2 >= 4294967295 THEN NULL
                                       ELSE now() + make_interval(secs => $2::float8) END
                 WHERE clientid = $1",
                &[(clientid, Type::TEXT), (expiry, Type::INT8)],
                "sessions: record a disconnection",
            )
            .await
        }
        Op::End { clientid, expired } => {
            // Never a shared group's position (`$share/...` topics): a client
            // id `$share/<group>` must not take it along (crate::groups).
            exec(
                "WITH s AS (DELETE FROM mqtt_session WHERE clientid = $1),
                      subs AS (DELETE FROM mqtt_sub WHERE clientid = $1 AND session),
                      acked AS (DELETE FROM mqtt_acked WHERE $2 AND clientid = $1 AND topic NOT LIKE '$share/%'),
                      c AS (DELETE FROM mqtt_client WHERE $2 AND clientid = $1)
                 SELECT 1",
                &[(clientid, Type::TEXT), (expired, Type::BOOL)],
                "sessions: remove an ended session",
            )
            .await
        }
        Op::Barrier(_) => Ok(None),
        Op::Sweep => {
            let rows = client
                .query_typed(
                    "WITH gone AS (DELETE FROM mqtt_session
                                   WHERE NOT connected AND expires_at < now() - make_interval(secs => $1)
                                   RETURNING clientid),
                          subs AS (DELETE FROM mqtt_sub USING gone
                                   WHERE mqtt_sub.clientid = gone.clientid AND mqtt_sub.session),
                          acked AS (DELETE FROM mqtt_acked USING gone WHERE mqtt_acked.clientid = gone.clientid
                                    AND mqtt_acked.topic NOT LIKE '$share/%'),
                          c AS (DELETE FROM mqtt_client USING gone WHERE mqtt_client.clientid = gone.clientid)
                     SELECT count(*)::int8 FROM gone",
                    &[(&SWEEP_GRACE_SECS, Type::FLOAT8)],
                )
                .await
                .map_err(PgsqlError::query("sessions: remove expired sessions"))?;
            let n: i64 = rows.first().and_then(|r| r.try_get(0).ok()).unwrap_or(0);
            if n > 0 {
                tracing::info!(sessions = n, "removed expired persistent sessions");
            }
            Ok(None)
        }
        Op::Restore { clientid, .. } => {
            let rows = client
                .query_typed(
                    "SELECT s.username::text, (s.expires_at IS NULL OR s.expires_at > now()),
                            sub.topic::text, sub.qos, sub.no_local, sub.retain_as_published,
                            sub.retain_handling, sub.subscription_id
                     FROM mqtt_session s
                     LEFT JOIN mqtt_sub sub ON sub.clientid = s.clientid AND sub.session
                     WHERE s.clientid = $1
                     ORDER BY sub.id",
                    &[(clientid, Type::TEXT)],
                )
                .await
                .map_err(PgsqlError::query("sessions: read a stored session"))?;
            stored_session(&rows).map_err(PgsqlError::query("sessions: read a stored session"))
        }
    }
}

async fn exec(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
    what: &'static str,
) -> Result<Option<StoredSession>, PgsqlError> {
    client
        .execute_typed(sql, params)
        .await
        .map(|_| None)
        .map_err(PgsqlError::query(what))
}

/// The session in `rows` (one per subscription; one with NULLs for none),
/// `None` when there is none or it has expired.
fn stored_session(rows: &[tokio_postgres::Row]) -> Result<Option<StoredSession>, tokio_postgres::Error> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    if !first.try_get::<_, bool>(1)? {
        return Ok(None);
    }
    let username: Option<String> = first.try_get(0)?;
    let mut subscriptions = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(filter) = row.try_get::<_, Option<String>>(2)? else {
            continue;
        };
        let qos = row
            .try_get::<_, Option<i32>>(3)?
            .and_then(|q| QoS::from_u8(u8::try_from(q).ok()?))
            .unwrap_or(QoS::AtLeastOnce);
        let mut opts = SubOpts::with_qos(qos);
        opts.no_local = row.try_get::<_, Option<bool>>(4)?.unwrap_or(false);
        opts.retain_as_published = row.try_get::<_, Option<bool>>(5)?.unwrap_or(false);
        opts.retain_handling = row
            .try_get::<_, Option<i16>>(6)?
            .and_then(|r| u8::try_from(r).ok())
            .unwrap_or(0);
        opts.subscription_id = row
            .try_get::<_, Option<i32>>(7)?
            .and_then(|i| u32::try_from(i).ok())
            .filter(|i| *i > 0);
        subscriptions.push(TopicFilter { filter, opts });
    }
    Ok(Some(StoredSession {
        username,
        subscriptions,
    }))
}

/// The filter as the client sent it (`$share/<group>/` included).
fn full_filter(filter: &str, opts: &SubOpts) -> String {
    match &opts.share_group {
        Some(group) => format!("$share/{group}/{filter}"),
        None => filter.to_string(),
    }
}

/// Registers the session store's callbacks: the restore itself, and the
/// bookkeeping that keeps `mqtt_session` and the session rows of `mqtt_sub`
/// in step with the broker's sessions.
pub(crate) fn register(store: &Arc<SessionStore>, hooks: &Hooks, node: &str) {
    let s = Arc::clone(store);
    hooks.session_restore.register(Registration {
        owner: NAME.to_string(),
        priority: 0,
        timeout: None,
        // The database did not answer in time: the client is refused and
        // comes back, rather than given a new session (which would lose
        // what the stored one is owed).
        on_failure: Some(Arc::new(|_| Flow::Continue(Restore::Unavailable))),
        filter: None,
        callback: Arc::new(move |args: Arc<SessionArgs>, acc| {
            let s = Arc::clone(&s);
            Box::pin(async move {
                if acc != Restore::Nothing {
                    return Ok(Flow::Continue(acc));
                }
                if s.unavailable() {
                    tracing::warn!(clientid = %args.client.clientid, "PostgreSQL is down: the stored session cannot be read now (the connection is refused; the client tries again)");
                    return Ok(Flow::Continue(Restore::Unavailable));
                }
                Ok(Flow::Continue(match s.restore(&args.client.clientid).await {
                    Some(stored) => Restore::Kept(stored),
                    None => Restore::Nothing,
                }))
            })
        }),
    });
    for (chain, fresh) in [(&hooks.session_created, true), (&hooks.session_resumed, false)] {
        let (s, node) = (Arc::clone(store), node.to_string());
        chain.add(NAME, 0, move |args: Arc<SessionArgs>, ()| {
            let c = &args.client;
            let clientid = c.clientid.to_string();
            if c.session_expiry == 0 {
                // Clean start (or expiry 0): whatever is stored goes (it may
                // be from before a restart, so this is written every time).
                s.persistent().remove(&c.clientid);
                s.send(Op::Discard { clientid });
            } else {
                s.persistent().insert(Arc::clone(&c.clientid));
                s.send(Op::Open {
                    clientid,
                    username: c.username.clone(),
                    expiry: i64::from(c.session_expiry),
                    node: node.clone(),
                    fresh,
                });
            }
            std::future::ready(Ok(Flow::Continue(())))
        });
    }
    let s = Arc::clone(store);
    hooks.session_subscribed.add(NAME, 0, move |args, ()| {
        let s = Arc::clone(&s);
        async move {
            // A restored subscription is stored already; a clean session's never is.
            if !args.restored && args.client.session_expiry > 0 {
                let (clientid, filter, opts) = (
                    args.client.clientid.to_string(),
                    full_filter(&args.filter, &args.opts),
                    args.opts.clone(),
                );
                s.committed(|done| Op::Subscribe {
                    clientid,
                    filter,
                    opts,
                    done: Some(done),
                })
                .await;
            }
            Ok(Flow::Continue(()))
        }
    });
    let s = Arc::clone(store);
    hooks.session_unsubscribed.add(NAME, 0, move |args, ()| {
        let s = Arc::clone(&s);
        async move {
            if args.client.session_expiry > 0 {
                let (clientid, filter) = (
                    args.client.clientid.to_string(),
                    full_filter(&args.filter, &args.opts),
                );
                s.committed(|done| Op::Unsubscribe {
                    clientid,
                    filter,
                    done: Some(done),
                })
                .await;
            }
            Ok(Flow::Continue(()))
        }
    });
    let s = Arc::clone(store);
    hooks.client_disconnected.add(NAME, 0, move |args, ()| {
        let c = &args.client;
        // (An MQTT 5 DISCONNECT may have set the expiry to 0: the session
        // ends right after, and its end removes the row.)
        if c.session_expiry > 0 && s.persistent().contains(&c.clientid) {
            s.send(Op::Disconnected {
                clientid: c.clientid.to_string(),
                expiry: i64::from(c.session_expiry).min(NEVER),
            });
        }
        std::future::ready(Ok(Flow::Continue(())))
    });
    let s = Arc::clone(store);
    hooks.session_terminated.add(NAME, 0, move |args, ()| {
        let s = Arc::clone(&s);
        async move {
            let persistent = s.persistent().remove(&args.client.clientid);
            if args.reason == DisconnectReason::Moved {
                // It continues on another node, which restores it from here:
                // everything recorded for it so far must be written first.
                if persistent && !s.unavailable() {
                    let (done, rx) = oneshot::channel();
                    s.send(Op::Barrier(done));
                    let _ = rx.await;
                }
            } else if persistent {
                s.send(Op::End {
                    clientid: args.client.clientid.to_string(),
                    expired: args.reason == DisconnectReason::Expired,
                });
            }
            Ok(Flow::Continue(()))
        }
    });
}
