//! The cluster's PostgreSQL: a small pool for its statements (each task's
//! transaction runs on a connection of its own; broken connections are made
//! again) and one connection that LISTENs (its notifications are doorbells:
//! whoever hears one reads the tables, and after a reconnect everything is
//! read again, so a notification missed while disconnected loses nothing).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

/// The tables, created when missing (each node at start; idempotent).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS postbox_node (
    name         text PRIMARY KEY,
    address      text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS postbox_route (
    node   text NOT NULL,
    filter text NOT NULL,
    grp    text NOT NULL DEFAULT '',
    PRIMARY KEY (node, filter, grp)
);
-- One row per client id ever claimed; node '' when no node has it.
CREATE TABLE IF NOT EXISTS postbox_client (
    clientid text PRIMARY KEY,
    node     text NOT NULL,
    gen      bigint NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS postbox_claim_gen;
";

/// Serialises the creation of the tables across nodes starting together.
const SCHEMA_LOCK: i64 = 0x706f_7374_626f_7833;

/// How long a failed connection waits before the next attempt.
pub(crate) const RETRY: Duration = Duration::from_millis(500);

/// What the LISTEN connection reports.
#[derive(Debug)]
pub(crate) enum Heard {
    /// A notification: channel and payload.
    Notification(String, String),
    /// The LISTEN connection was (re)made: notifications may have been
    /// missed, read the tables again.
    Connected,
}

/// A database error of the cluster: getting a connection, or a statement.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    /// No connection could be had.
    #[error("cluster database: cannot get a connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("cluster database: {0}")]
    Query(#[from] tokio_postgres::Error),
}

/// The connections for statements: a small pool, so that the tasks'
/// transactions (claims, route writes, heartbeats) each have their own.
pub(crate) struct Db {
    config: tokio_postgres::Config,
    pool: deadpool_postgres::Pool,
}

impl Db {
    pub(crate) fn new(url: &str) -> Result<Db, String> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
        config.application_name("postbox-cluster");
        config.connect_timeout(Duration::from_secs(5));
        let manager = deadpool_postgres::Manager::from_config(
            config.clone(),
            NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(8)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| format!("{e}"))?;
        Ok(Db { config, pool })
    }

    /// A connection of the pool (made now if needed).
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        Ok(self.pool.get().await?)
    }

    /// Creates the cluster's tables when missing.
    pub(crate) async fn create_schema(&self) -> Result<(), DbError> {
        let client = self.client().await?;
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {SCHEMA} COMMIT;"
            ))
            .await?;
        Ok(())
    }

    /// LISTENs on `channels` for as long as the broker runs, reconnecting
    /// after every failure; reports on `tx`.
    pub(crate) fn listen(
        self: &Arc<Self>,
        channels: &'static [&'static str],
        tx: mpsc::UnboundedSender<Heard>,
    ) {
        let config = self.config.clone();
        tokio::spawn(async move {
            let mut logged = false;
            loop {
                match config.connect(NoTls).await {
                    Ok((client, mut connection)) => {
                        let (ntx, mut nrx) = mpsc::unbounded_channel();
                        let driver = tokio::spawn(async move {
                            let mut messages =
                                futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                            while let Some(Ok(m)) = messages.next().await {
                                if let AsyncMessage::Notification(n) = m {
                                    let _ = ntx.send(Heard::Notification(
                                        n.channel().to_string(),
                                        n.payload().to_string(),
                                    ));
                                }
                            }
                        });
                        let listen: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
                        if client.batch_execute(&listen).await.is_ok() {
                            if logged {
                                tracing::warn!("cluster: listening to the database again");
                                logged = false;
                            }
                            if tx.send(Heard::Connected).is_err() {
                                return;
                            }
                            while let Some(h) = nrx.recv().await {
                                if tx.send(h).is_err() {
                                    return;
                                }
                            }
                        }
                        driver.abort();
                    }
                    Err(e) if !logged => {
                        logged = true;
                        tracing::error!("cluster: cannot listen to the database (retrying): {e}");
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(RETRY).await;
            }
        });
    }
}
