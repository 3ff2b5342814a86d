//! The plugin's metrics, registered in the broker's
//! [`MetricsRegistry`](hooks_spec::MetricsRegistry) at start and served by
//! the broker on `/metrics` (labels: `pool`, the `backend.pgsql.<pool>` name):
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `postbox_pgsql_writer_batch_size` | histogram | messages per committed batch |
//! | `postbox_pgsql_writer_commit_duration_seconds` | histogram | time from sending a batch to its commit |
//! | `postbox_pgsql_writer_queue` | gauge | messages waiting for the writer (queued and carried for a retry) |
//! | `postbox_pgsql_outage` | gauge | 1 while the writer cannot store (PostgreSQL unreachable or refusing), else 0 |
//! | `postbox_pgsql_stored_messages_total` | counter | rows written to `mqtt_msg` |
//! | `postbox_pgsql_store_failures_total` | counter | messages that could not be stored |
//! | `postbox_pgsql_replay_pages_total` | counter | pages of stored messages read for offline replay |
//! | `postbox_pgsql_replay_messages_total` | counter | stored messages handed to sessions by replays |
//! | `postbox_pgsql_backlog_messages` | gauge | stored messages above the lowest read position of any subscription (not yet acknowledged by every subscriber), counted every [`BACKLOG_EVERY`]; -1 until first counted |
//! | `postbox_pgsql_backlog_subscriptions_over_limit` | gauge | subscriptions with more stored, unacknowledged messages than `backlog_limit` (0 without a limit) |
//! | `postbox_pgsql_backlog_oldest_age_seconds` | gauge | age of the oldest message some subscription has not acknowledged (0: none) |
//! | `postbox_pgsql_backlog_max_subscription_messages` | gauge | the largest backlog of a single subscription |
//!
//! The last three come from the per-subscription count of [`crate::backlog`],
//! every `backlog_interval` (-1 until first counted): summaries, never one
//! series per client or subscription (the `mqtt_backlog` view and the
//! management API have those).
//!
//! Updating them is atomics only (no lock) on the storage path.

use std::time::Duration;

use hooks_spec::{Counter, Gauge, Histogram, MetricsError, MetricsRegistry};
use tokio_postgres::types::Type;

use crate::pool::NamedPool;

/// How often the offline backlog is counted (one index range count).
pub const BACKLOG_EVERY: Duration = Duration::from_secs(30);

/// Bucket bounds of the batch size histogram.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// The writer's metrics, for one pool.
#[derive(Debug, Clone)]
pub struct WriterMetrics {
    /// Messages per committed batch.
    pub batch_size: Histogram,
    /// Send-to-commit time of a batch.
    pub commit_seconds: Histogram,
    /// Requests waiting.
    pub queue: Gauge,
    /// 1 during an outage.
    pub outage: Gauge,
    /// Rows written.
    pub stored: Counter,
    /// Messages not stored.
    pub failed: Counter,
}

impl WriterMetrics {
    /// Registers (or finds) the writer metrics of `pool`.
    pub fn register(registry: &MetricsRegistry, pool: &str) -> Result<WriterMetrics, MetricsError> {
        let l = [("pool", pool)];
        Ok(WriterMetrics {
            batch_size: registry.histogram(
                "postbox_pgsql_writer_batch_size",
                "Messages per batch the PostgreSQL writer committed.",
                &l,
                BATCH_BUCKETS,
            )?,
            commit_seconds: registry.histogram(
                "postbox_pgsql_writer_commit_duration_seconds",
                "Time from sending a batch of messages to PostgreSQL to its commit.",
                &l,
                hooks_spec::metrics::DURATION_BUCKETS,
            )?,
            queue: registry.gauge(
                "postbox_pgsql_writer_queue",
                "Messages waiting for the PostgreSQL writer.",
                &l,
            )?,
            outage: registry.gauge(
                "postbox_pgsql_outage",
                "1 while the PostgreSQL writer cannot store messages, else 0.",
                &l,
            )?,
            stored: registry.counter(
                "postbox_pgsql_stored_messages",
                "Messages written to mqtt_msg.",
                &l,
            )?,
            failed: registry.counter(
                "postbox_pgsql_store_failures",
                "Messages that could not be stored.",
                &l,
            )?,
        })
    }

    /// Unregistered metrics (for a writer started outside the broker).
    pub fn detached() -> WriterMetrics {
        WriterMetrics {
            batch_size: Histogram::new(BATCH_BUCKETS),
            commit_seconds: Histogram::durations(),
            queue: Gauge::default(),
            outage: Gauge::default(),
            stored: Counter::default(),
            failed: Counter::default(),
        }
    }
}

/// The offline replay's metrics (on the pool of the fetch rule).
#[derive(Debug, Clone, Default)]
pub struct ReplayMetrics {
    /// Pages read.
    pub pages: Counter,
    /// Messages handed to sessions.
    pub messages: Counter,
    /// The offline backlog (see the module documentation).
    pub backlog: Gauge,
}

impl ReplayMetrics {
    /// Registers (or finds) the replay metrics of `pool`.
    pub fn register(registry: &MetricsRegistry, pool: &str) -> Result<ReplayMetrics, MetricsError> {
        let l = [("pool", pool)];
        let m = ReplayMetrics {
            pages: registry.counter(
                "postbox_pgsql_replay_pages",
                "Pages of stored messages read for offline replay.",
                &l,
            )?,
            messages: registry.counter(
                "postbox_pgsql_replay_messages",
                "Stored messages handed to sessions by offline replay.",
                &l,
            )?,
            backlog: registry.gauge(
                "postbox_pgsql_backlog_messages",
                "Stored messages not yet acknowledged by every subscriber (above the lowest read position).",
                &l,
            )?,
        };
        m.backlog.set(-1);
        Ok(m)
    }
}

/// Counts the offline backlog every [`BACKLOG_EVERY`] until aborted. A
/// database that does not answer leaves the last count in place.
pub async fn count_backlog(pool: NamedPool, backlog: Gauge) {
    let mut tick = tokio::time::interval(BACKLOG_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let counted = async {
            let conn = pool.get().await.ok()?;
            // Positions (mqtt_acked.mid) are few; the count is one range scan
            // of mqtt_msg's primary key.
            let row = conn
                .query_typed_one(
                    "SELECT count(*)::int8 FROM mqtt_msg
                     WHERE id > (SELECT COALESCE(min(mid), (SELECT COALESCE(max(id), 0) FROM mqtt_msg)) FROM mqtt_acked)",
                    &[] as &[(&(dyn tokio_postgres::types::ToSql + Sync), Type)],
                )
                .await
                .ok()?;
            row.try_get::<_, i64>(0).ok()
        }
        .await;
        if let Some(n) = counted {
            backlog.set(n);
        }
    }
}

/// Whether `pool` answers a query now (the plugin's health). A connection
/// the pool kept from before a database restart may fail once: one more try
/// takes a fresh one.
pub async fn pool_answers(pool: &NamedPool) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(2), crate::pool::check(pool)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no answer within 2s".to_string(),
        }
    }
    Err(format!(
        "PostgreSQL at {} (pool {}): {last}",
        pool.addr, pool.name
    ))
}
