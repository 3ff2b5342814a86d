//! `backend.pgsql.msg_delete_acked`: a stored message is deleted once no
//! subscription still needs it, instead of waiting for its retention.
//!
//! A subscription needs a message when offline replay would hand it the
//! message: its id is above the subscription's read position
//! (`mqtt_acked.mid`), its topic matches the filter, and the subscription
//! has not acknowledged it above its position (`acked_above`). A
//! subscription provisioned in `mqtt_sub` that has no read position yet
//! needs what arrived since it was created (the first connect replays
//! that). Subscriptions made after a message was stored start at a position
//! past it, so "every subscription that existed when it was stored" is what
//! counts. A message no subscription matches is deleted too.
//!
//! The check is conservative where replay is not: expired messages, a
//! client's own messages under MQTT 5 no local, and `time_range` still
//! count as needed (retention removes them). `$share/<group>/` filters are
//! matched without their prefix. Messages younger than [`GRACE`] are left
//! alone, so a subscription whose read position is being written at that
//! very moment is not missed.

use std::time::Duration;

use tokio_postgres::types::{ToSql, Type};

use crate::error::PgsqlError;
use crate::pool::NamedPool;
use crate::schema::SchemaCell;

/// How often the deletion runs.
pub const EVERY: Duration = Duration::from_secs(5);

/// Messages stored less than this long ago are kept whatever the positions say.
pub const GRACE: Duration = Duration::from_secs(2);

/// Rows deleted per statement.
const BATCH: i64 = 5_000;

/// The DELETE, with `$above` the expression of a position's ids
/// acknowledged above it.
macro_rules! delete_acked {
    ($above:literal) => {
        concat!(
            "WITH subs AS (
                 SELECT regexp_replace(a.topic, '^\\$share/[^/]*/', '') AS filter, a.mid::int8 AS mid,
                        ",
            $above,
            " AS above, NULL::timestamp AS since
                 FROM mqtt_acked a
                 UNION ALL
                 SELECT regexp_replace(s.topic, '^\\$share/[^/]*/', ''), NULL::int8, '{}'::int8[],
                        COALESCE(s.created::timestamp, '-infinity'::timestamp)
                 FROM mqtt_sub s
                 WHERE NOT EXISTS (SELECT 1 FROM mqtt_acked p WHERE p.clientid = s.clientid AND p.topic = s.topic)
             ),
             needed AS (
                 SELECT e.id FROM subs CROSS JOIN LATERAL (
                     SELECT x.id FROM mqtt_msg x
                     WHERE strpos(subs.filter, '+') = 0 AND strpos(subs.filter, '#') = 0
                       AND x.topic = subs.filter
                       AND (subs.mid IS NULL OR x.id > subs.mid)
                       AND (subs.since IS NULL OR x.arrived >= subs.since)
                     UNION ALL
                     SELECT w.id FROM mqtt_msg w
                     WHERE (strpos(subs.filter, '+') > 0 OR strpos(subs.filter, '#') > 0)
                       AND (subs.mid IS NULL OR w.id > subs.mid)
                       AND (subs.since IS NULL OR w.arrived >= subs.since)
                       AND w.topic ~ mqtt_filter_regex(subs.filter)
                 ) e
                 WHERE NOT (e.id = ANY (subs.above))
             )
             DELETE FROM mqtt_msg WHERE id IN (
                 SELECT m.id FROM mqtt_msg m
                 WHERE m.arrived < localtimestamp - make_interval(secs => $2)
                   AND NOT EXISTS (SELECT 1 FROM needed n WHERE n.id = m.id)
                 ORDER BY m.id LIMIT $1)"
        )
    };
}

/// With `mqtt_acked.acked_above` (schema V4).
const WITH_ABOVE: &str = delete_acked!("COALESCE(a.acked_above::int8[], '{}'::int8[])");
/// Without it (tables made by hand after the migrations were recorded).
const WITHOUT_ABOVE: &str = delete_acked!("'{}'::int8[]");

/// Deletes every message no subscription needs, batch by batch; returns how many.
pub async fn sweep(pool: &NamedPool, acked_above: bool) -> Result<u64, PgsqlError> {
    let sql = if acked_above { WITH_ABOVE } else { WITHOUT_ABOVE };
    let grace = GRACE.as_secs_f64();
    let params: [(&(dyn ToSql + Sync), Type); 2] = [(&BATCH, Type::INT8), (&grace, Type::FLOAT8)];
    let mut total = 0;
    loop {
        let conn = pool.get().await?;
        let n = conn.execute_typed(sql, &params).await.map_err(PgsqlError::query(
            "delete acknowledged messages (msg_delete_acked)",
        ))?;
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
        // Let writers in between batches.
        tokio::task::yield_now().await;
    }
}

/// Runs [`sweep`] every [`EVERY`] once the schema is known, until aborted.
pub async fn run(pool: NamedPool, schema: SchemaCell) {
    let info = schema.wait().await;
    let done = "deleted messages every subscription acknowledged";
    let failed = "deleting acknowledged messages failed (will retry)";
    crate::retention::repeat(&pool.name, EVERY, done, failed, || sweep(&pool, info.acked_above)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_statements_bind_their_values() {
        for sql in [WITH_ABOVE, WITHOUT_ABOVE] {
            assert!(sql.contains("LIMIT $1") && sql.contains("secs => $2"));
        }
        assert!(WITH_ABOVE.contains("acked_above") && !WITHOUT_ABOVE.contains("acked_above"));
    }
}
