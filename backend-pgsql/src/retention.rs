//! Retention: deletes `mqtt_msg` rows older than `backend.pgsql.msg_retention`
//! in bounded batches, so writers are never blocked behind one huge DELETE.
//!
//! Each batch is the oldest rows by `arrived`, read through the `arrived`
//! index whatever the statistics say ([`ORDERED_SCAN`]): ordered by id, an
//! unanalyzed table made every sweep walk the whole primary key (100 ms at
//! 360,000 rows, every minute, growing with the table) even with nothing to
//! delete.

use std::time::Duration;

use tokio_postgres::types::{ToSql, Type};

use crate::error::PgsqlError;
use crate::fetch::ORDERED_SCAN;
use crate::pool::NamedPool;

/// Rows deleted per statement.
const BATCH: i64 = 5_000;

/// How often to look for expired rows: a tenth of the retention, between 1 s and 60 s.
pub fn interval(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Deletes every expired row, batch by batch; returns how many.
pub async fn sweep(pool: &NamedPool, retention: Duration) -> Result<u64, PgsqlError> {
    let secs = retention.as_secs_f64();
    let mut total = 0;
    loop {
        let conn = pool.get().await?;
        let client: &tokio_postgres::Client = &conn;
        let params: [(&(dyn ToSql + Sync), Type); 2] = [(&secs, Type::FLOAT8), (&BATCH, Type::INT8)];
        // One round trip: the three requests are pipelined.
        let (begun, deleted, committed) = tokio::join!(
            client.batch_execute(ORDERED_SCAN),
            client.execute_typed(
                "DELETE FROM mqtt_msg WHERE id IN (
                     SELECT id FROM mqtt_msg WHERE arrived < now() - make_interval(secs => $1)
                     ORDER BY arrived LIMIT $2)",
                &params,
            ),
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

/// Runs [`sweep`] every [`interval`] until the task is aborted.
pub async fn run(pool: NamedPool, retention: Duration) {
    let every = interval(retention);
    let mut failing = false;
    loop {
        match sweep(&pool, retention).await {
            Ok(n) => {
                failing = false;
                if n > 0 {
                    tracing::info!(pool = %pool.name, deleted = n, "retention: deleted expired messages");
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(pool = %pool.name, "retention sweep failed (will retry): {e}");
                }
                failing = true;
            }
        }
        tokio::time::sleep(every).await;
    }
}
