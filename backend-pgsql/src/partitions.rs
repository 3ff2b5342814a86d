//! Time partitioning of `mqtt_msg` (`backend.pgsql.msg_partition`): the
//! table is range-partitioned on `arrived`, and retention drops whole
//! partitions instead of deleting rows one by one.
//!
//! Opt-in, and done in code rather than as a numbered migration: with the
//! key set, [`convert`] turns a plain `mqtt_msg` into a partitioned one at
//! start (under the migration advisory lock, so brokers starting together
//! convert once), and [`run`] keeps partitions created ahead and drops
//! those whose every row is older than the longest retention, under its own
//! advisory lock (brokers sharing the database take turns). The DDL lives in
//! `sql/msg_partitioning.sql` as SQL functions called with bind parameters.
//!
//! Retention by rows ([`crate::retention`]) still handles every retention
//! shorter than the longest; rows of the longest are left to the partition
//! drop (see [`crate::retention::Policy::partition_drop`]).

use std::time::Duration;

use crate::config::PgsqlConfig;
use crate::error::PgsqlError;
use crate::pool::NamedPool;
use crate::schema::MIGRATION_LOCK;

/// The partitioning functions, created (or replaced) at every start.
const FUNCTIONS: &str = include_str!("../../sql/msg_partitioning.sql");

/// Arbitrary constant for the partition maintenance lock ("postbox2").
const PARTITION_LOCK: i64 = 0x706f_7374_626f_7832;

/// How long maintenance waits for a table lock before it gives up (and
/// tries again at the next pass).
const MAINTENANCE_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '2s'";

/// Partitions kept ahead of the current one, so that an insert lands in a
/// range partition even when maintenance has not run for a while.
pub const AHEAD: i32 = 3;

/// What partition maintenance does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitioning {
    /// `backend.pgsql.msg_partition`: the width of one partition.
    pub width: Duration,
    /// Partitions whose upper bound is this much in the past are dropped:
    /// the longest retention of the default and of every rule; `None` when
    /// any of them is `infinity` (nothing is dropped).
    pub drop_after: Option<Duration>,
}

impl Partitioning {
    /// What the configuration asks for (`None`: partitioning off).
    pub fn of(cfg: &PgsqlConfig) -> Option<Partitioning> {
        let width = cfg.msg_partition?;
        Some(Partitioning {
            width,
            drop_after: longest_retention(cfg),
        })
    }

    /// How often maintenance runs: a quarter of the width, between 1 s and
    /// 5 minutes (a partition is dropped at most this late).
    pub fn interval(&self) -> Duration {
        (self.width / 4).clamp(Duration::from_secs(1), Duration::from_secs(300))
    }
}

/// The longest retention of the default and the rules; `None` when one of
/// them keeps messages for ever.
pub fn longest_retention(cfg: &PgsqlConfig) -> Option<Duration> {
    let mut longest = cfg.msg_retention?;
    for rule in &cfg.topic_retention {
        longest = longest.max(rule.retention?);
    }
    Some(longest)
}

/// Converts `mqtt_msg` to a partitioned table if it is not one yet, and
/// creates the partitions of now and ahead; returns whether it converted.
/// Runs in one transaction under the migration lock: a second broker
/// starting meanwhile waits and then finds the table converted.
pub async fn convert(client: &mut tokio_postgres::Client, width: Duration) -> Result<bool, PgsqlError> {
    let secs = width.as_secs_f64();
    let tx = client
        .transaction()
        .await
        .map_err(PgsqlError::query("BEGIN (partition mqtt_msg)"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(PgsqlError::query("pg_advisory_xact_lock (partition mqtt_msg)"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
        .await
        .map_err(PgsqlError::query("pg_advisory_xact_lock (partition mqtt_msg)"))?;
    tx.batch_execute(FUNCTIONS).await.map_err(PgsqlError::query(
        "create the partitioning functions (sql/msg_partitioning.sql)",
    ))?;
    let converted: bool = tx
        .query_one("SELECT mqtt_msg_partition_convert($1)", &[&secs])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(PgsqlError::query(
            "partition mqtt_msg (mqtt_msg_partition_convert)",
        ))?;
    tx.execute("SELECT mqtt_msg_partitions_ensure($1, $2)", &[&secs, &AHEAD])
        .await
        .map_err(PgsqlError::query(
            "create mqtt_msg partitions (mqtt_msg_partitions_ensure)",
        ))?;
    tx.commit()
        .await
        .map_err(PgsqlError::query("COMMIT (partition mqtt_msg)"))?;
    Ok(converted)
}

/// One maintenance pass: partitions created ahead, partitions past the
/// longest retention dropped. Returns how many were created and the names
/// of those dropped.
pub async fn maintain(pool: &NamedPool, p: &Partitioning) -> Result<(i32, Vec<String>), PgsqlError> {
    let secs = p.width.as_secs_f64();
    let mut conn = pool.get().await?;
    let tx = conn
        .transaction()
        .await
        .map_err(PgsqlError::query("BEGIN (partition maintenance)"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
        .await
        .map_err(PgsqlError::query("pg_advisory_xact_lock (partition maintenance)"))?;
    // DROP waits for every running reader of mqtt_msg, and inserts queue
    // behind it: rather give up and try again at the next pass.
    tx.batch_execute(MAINTENANCE_LOCK_TIMEOUT)
        .await
        .map_err(PgsqlError::query(
            "SET LOCAL lock_timeout (partition maintenance)",
        ))?;
    let created: i32 = tx
        .query_one("SELECT mqtt_msg_partitions_ensure($1, $2)", &[&secs, &AHEAD])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(PgsqlError::query(
            "create mqtt_msg partitions (mqtt_msg_partitions_ensure)",
        ))?;
    let mut dropped = Vec::new();
    if let Some(after) = p.drop_after {
        let rows = tx
            .query(
                "SELECT mqtt_msg_partitions_drop(localtimestamp - make_interval(secs => $1))",
                &[&after.as_secs_f64()],
            )
            .await
            .map_err(PgsqlError::query(
                "drop old mqtt_msg partitions (mqtt_msg_partitions_drop)",
            ))?;
        for r in &rows {
            dropped.push(
                r.try_get(0)
                    .map_err(PgsqlError::query("drop old mqtt_msg partitions"))?,
            );
        }
    }
    tx.commit()
        .await
        .map_err(PgsqlError::query("COMMIT (partition maintenance)"))?;
    Ok((created, dropped))
}

/// Runs [`maintain`] every [`Partitioning::interval`] until aborted.
pub async fn run(pool: NamedPool, p: Partitioning) {
    let mut failing = false;
    loop {
        match maintain(&pool, &p).await {
            Ok((created, dropped)) => {
                failing = false;
                if created > 0 {
                    tracing::debug!(pool = %pool.name, created, "created mqtt_msg partitions");
                }
                if !dropped.is_empty() {
                    tracing::info!(pool = %pool.name, ?dropped, "retention: dropped expired mqtt_msg partitions");
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(pool = %pool.name, "mqtt_msg partition maintenance failed (will retry): {e}");
                }
                failing = true;
            }
        }
        tokio::time::sleep(p.interval()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hooks_spec::ConfFile;
    use std::path::Path;

    fn cfg(text: &str) -> PgsqlConfig {
        let conf = ConfFile::parse(Path::new("backend_pgsql.conf"), text).unwrap();
        PgsqlConfig::from_conf(&conf).unwrap()
    }

    #[test]
    fn partitions_are_dropped_after_the_longest_retention_and_never_when_one_is_infinite() {
        let p = Partitioning::of(&cfg("backend.pgsql.msg_partition = 1d\n\
             backend.pgsql.msg_retention = 7d\n\
             backend.pgsql.msg_retention.1 = alerts/# 30d\n\
             backend.pgsql.msg_retention.2 = raw/# 1h\n"))
        .unwrap();
        assert_eq!(p.drop_after, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(p.interval(), Duration::from_secs(300));
        let keep = cfg("backend.pgsql.msg_partition = 1d\nbackend.pgsql.msg_retention.1 = a/# infinity\n");
        assert_eq!(Partitioning::of(&keep).unwrap().drop_after, None);
        let forever = cfg("backend.pgsql.msg_partition = 2s\nbackend.pgsql.msg_retention = infinity\n");
        let p = Partitioning::of(&forever).unwrap();
        assert_eq!((p.drop_after, p.interval()), (None, Duration::from_secs(1)));
        assert_eq!(Partitioning::of(&cfg("")), None, "off by default");
    }
}
