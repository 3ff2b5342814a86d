//! Retention: deletes `mqtt_msg` rows older than `backend.pgsql.msg_retention`
//! in bounded batches, so writers are never blocked behind one huge DELETE.

use std::time::Duration;

use tokio_postgres::types::Type;

use crate::pool::NamedPool;

/// Rows deleted per statement.
const BATCH: i64 = 5_000;

/// How often to look for expired rows: a tenth of the retention, between 1 s and 60 s.
pub fn interval(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Deletes every expired row, batch by batch; returns how many.
pub async fn sweep(pool: &NamedPool, retention: Duration) -> Result<u64, crate::error::PgsqlError> {
    let secs = retention.as_secs_f64();
    let mut total = 0;
    loop {
        let conn = pool.get().await?;
        let n = conn
            .execute_typed(
                "DELETE FROM mqtt_msg WHERE id IN (
                     SELECT id FROM mqtt_msg WHERE arrived < now() - make_interval(secs => $1)
                     ORDER BY id LIMIT $2)",
                &[(&secs, Type::FLOAT8), (&BATCH, Type::INT8)],
            )
            .await
            .map_err(crate::error::PgsqlError::query("retention DELETE FROM mqtt_msg"))?;
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
