//! Retention: deletes `mqtt_msg` rows older than their retention in bounded
//! batches, so writers are never blocked behind one huge DELETE.
//!
//! A row's retention is that of the first `backend.pgsql.msg_retention.<N>`
//! rule whose topic filter matches its topic, or `backend.pgsql.msg_retention`
//! when none does ([`Policy`]). The rules are applied when the sweep runs,
//! so a changed rule applies to the rows already stored too. Each finite
//! retention is one DELETE, its filter an anchored regular expression bound
//! as a parameter (the same conversion offline fetch uses), the filters of
//! earlier rules excluded.
//!
//! Each batch is the oldest rows by `arrived`, read through the `arrived`
//! index whatever the statistics say ([`ORDERED_SCAN`]): ordered by id, an
//! unanalyzed table made every sweep walk the whole primary key (100 ms at
//! 360,000 rows, every minute, growing with the table) even with nothing to
//! delete.
//!
//! With `mqtt_msg` partitioned by time ([`crate::partitions`]), rows of the
//! longest retention are left to the partition drop, except in the DEFAULT
//! partition (which is never dropped): deleting them row by row as they
//! expire would empty each partition before it could be dropped whole.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::types::{ToSql, Type};

use crate::config::PgsqlConfig;
use crate::error::PgsqlError;
use crate::fetch::ORDERED_SCAN;
use crate::pool::NamedPool;
use crate::schema::SchemaCell;
use crate::topic_match::anchored_regex;

/// Rows deleted per statement.
const BATCH: i64 = 5_000;

/// Which rows expire when: the default retention and the rules by topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `backend.pgsql.msg_retention`; `None`: rows no rule matches are kept.
    pub default: Option<Duration>,
    /// `(anchored regular expression of the filter, retention)` per rule, in
    /// the order they are tried; `None`: matching rows are kept.
    pub rules: Vec<(String, Option<Duration>)>,
    /// `mqtt_msg` is partitioned by time and partitions older than this
    /// retention (the longest) are dropped whole: rows kept this long are
    /// deleted here only from the DEFAULT partition.
    pub partition_drop: Option<Duration>,
}

impl Policy {
    /// The policy the configuration asks for.
    pub fn of(cfg: &PgsqlConfig) -> Policy {
        Policy {
            default: cfg.msg_retention,
            rules: cfg
                .topic_retention
                .iter()
                .map(|r| (anchored_regex(&r.filter), r.retention))
                .collect(),
            partition_drop: cfg
                .msg_partition
                .and_then(|_| crate::partitions::longest_retention(cfg)),
        }
    }

    /// The table a retention's rows are deleted from: all of `mqtt_msg`, or
    /// only its DEFAULT partition when partitions are dropped at `retention`.
    fn table(&self, retention: Duration) -> Table {
        match self.partition_drop {
            Some(d) if d == retention => Table::DefaultPartition,
            _ => Table::All,
        }
    }

    /// The shortest finite retention; `None` when nothing ever expires (no sweep).
    pub fn shortest(&self) -> Option<Duration> {
        self.rules
            .iter()
            .filter_map(|(_, d)| *d)
            .chain(self.default)
            .min()
    }
}

/// Where a sweep deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    /// `mqtt_msg`, every partition.
    All,
    /// `mqtt_msg_default` only.
    DefaultPartition,
}

/// How often to look for expired rows: a tenth of the shortest retention,
/// between 1 s and 60 s.
pub fn interval(shortest: Duration) -> Duration {
    (shortest / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Deletes every expired row, rule by rule and batch by batch; returns how many.
pub async fn sweep(pool: &NamedPool, policy: &Policy) -> Result<u64, PgsqlError> {
    let mut total = 0;
    for (i, (re, retention)) in policy.rules.iter().enumerate() {
        if let Some(d) = retention {
            let earlier: Vec<&str> = policy.rules[..i].iter().map(|(r, _)| r.as_str()).collect();
            total += sweep_one(pool, policy.table(*d), *d, Some(re), &earlier).await?;
        }
    }
    if let Some(d) = policy.default {
        let all: Vec<&str> = policy.rules.iter().map(|(r, _)| r.as_str()).collect();
        total += sweep_one(pool, policy.table(d), d, None, &all).await?;
    }
    Ok(total)
}

/// Deletes the rows older than `retention` whose topic matches `only` (any
/// topic when `None`) and none of `excluded`.
async fn sweep_one(
    pool: &NamedPool,
    table: Table,
    retention: Duration,
    only: Option<&String>,
    excluded: &[&str],
) -> Result<u64, PgsqlError> {
    let secs = retention.as_secs_f64();
    let mut total = 0;
    loop {
        let conn = pool.get().await?;
        let client: &tokio_postgres::Client = &conn;
        let params: [(&(dyn ToSql + Sync), Type); 4] = [
            (&secs, Type::FLOAT8),
            (&BATCH, Type::INT8),
            (&only, Type::TEXT),
            (&excluded, Type::TEXT_ARRAY),
        ];
        // The table name is one of two constants; the values are bound.
        let name = match table {
            Table::All => "mqtt_msg",
            Table::DefaultPartition => "mqtt_msg_default",
        };
        let sql = format!(
            "DELETE FROM {name} WHERE id IN (
                 SELECT id FROM {name} WHERE arrived < now() - make_interval(secs => $1)
                     AND ($3::text IS NULL OR topic ~ $3)
                     AND NOT (topic ~ ANY($4::text[]))
                 ORDER BY arrived LIMIT $2)"
        );
        // One round trip: the three requests are pipelined.
        let (begun, deleted, committed) = tokio::join!(
            client.batch_execute(ORDERED_SCAN),
            client.execute_typed(&sql, &params),
            client.batch_execute("COMMIT"),
        );
        const WHAT: &str = "retention DELETE FROM mqtt_msg";
        begun.map_err(PgsqlError::query(WHAT))?;
        let n = deleted.map_err(PgsqlError::query(WHAT))?;
        committed.map_err(PgsqlError::query(WHAT))?;
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
        // Let writers in between batches.
        tokio::task::yield_now().await;
    }
}

/// Starts what removes stored messages from a pool the functions store in:
/// the retention sweep (unless nothing expires), partition maintenance
/// (`msg_partition`) and the deletion of acknowledged messages
/// (`msg_delete_acked`).
pub fn spawn_all(pool: &NamedPool, schema: &SchemaCell, cfg: &PgsqlConfig) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let policy = Policy::of(cfg);
    if policy.shortest().is_some() {
        tasks.push(tokio::spawn(run(pool.clone(), policy)));
    }
    if let Some(p) = crate::partitions::Partitioning::of(cfg) {
        tasks.push(tokio::spawn(crate::partitions::run(pool.clone(), p)));
    }
    if cfg.msg_delete_acked.is_some() {
        tasks.push(tokio::spawn(crate::acked_delete::run(
            pool.clone(),
            schema.clone(),
        )));
    }
    tasks
}

/// Runs [`sweep`] every [`interval`] of the shortest retention until the
/// task is aborted; returns at once when nothing ever expires.
pub async fn run(pool: NamedPool, policy: Policy) {
    let Some(shortest) = policy.shortest() else {
        return;
    };
    let done = "retention: deleted expired messages";
    let failed = "retention sweep failed (will retry)";
    repeat(&pool.name, interval(shortest), done, failed, || {
        sweep(&pool, &policy)
    })
    .await
}

/// Runs a clean-up `sweep` every `every` until the task is aborted: logs
/// `done` with what it deleted, and `failed` once until it succeeds again.
pub(crate) async fn repeat<F, Fut>(pool: &str, every: Duration, done: &str, failed: &str, mut sweep: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, PgsqlError>>,
{
    let mut failing = false;
    loop {
        match sweep().await {
            Ok(n) => {
                failing = false;
                if n > 0 {
                    tracing::info!(pool = %pool, deleted = n, "{done}");
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(pool = %pool, "{failed}: {e}");
                }
                failing = true;
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_runs_as_often_as_the_shortest_retention_needs() {
        let hour = Duration::from_secs(3600);
        let p = Policy {
            default: Some(hour),
            rules: vec![
                ("^a$".into(), None),
                ("^b$".into(), Some(Duration::from_secs(20))),
            ],
            partition_drop: None,
        };
        assert_eq!(p.shortest(), Some(Duration::from_secs(20)));
        assert_eq!(interval(Duration::from_secs(20)), Duration::from_secs(2));
        let forever = Policy {
            default: None,
            rules: vec![("^a$".into(), None)],
            partition_drop: None,
        };
        assert_eq!(forever.shortest(), None);
        assert_eq!(p.table(hour), Table::All, "not partitioned");
        let partitioned = Policy {
            partition_drop: Some(hour),
            ..p
        };
        assert_eq!(partitioned.table(hour), Table::DefaultPartition);
        assert_eq!(partitioned.table(Duration::from_secs(20)), Table::All);
    }
}
