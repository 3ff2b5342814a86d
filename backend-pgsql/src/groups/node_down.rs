//! A shared group's messages lost with another node of the cluster.
//!
//! The node whose run replays a group's backlog tracks what its own members
//! were handed and acknowledged; the other nodes' members get live messages
//! only, and what they acknowledge reaches this node through the group's
//! row (`acked_above`). When such a node dies, what its members held
//! unacknowledged, and what was forwarded to it before it was declared down,
//! is stored but reaches no one: the group's position stops below it, and
//! nothing in this run would deliver it again.
//!
//! So on `node.down` the replaying node reads the group's stored messages
//! above its position (the greater of its own and the row's) that no node
//! recorded as acknowledged, keeps those its own members do not hold and its
//! replay does not still bring, and hands them to a member as missed
//! messages ([`crate::positions::Tracks::recover`]). A message the dead node
//! delivered, whose acknowledgement it had not recorded yet, comes twice (at
//! least once). With more than two nodes, a message another live node's
//! member holds unacknowledged comes twice as well.

use std::sync::Arc;

use tokio_postgres::types::{ToSql, Type};

use crate::error::PgsqlError;
use crate::fetch::Fetcher;
use crate::positions::{FetchOpts, TrackKey};
use crate::topic_match::condition;

impl crate::Engine {
    /// `node.down`: another node is down (its routes are forgotten here).
    /// Each group whose run replays here gets what was lost with it.
    pub(crate) async fn group_node_down(&self, node: &str) {
        let Some(fetcher) = &self.fetcher else { return };
        for (key, member) in self.members.replaying() {
            let Some((position, unread, opts)) = self.tracks.lost_scope(&key) else {
                continue;
            };
            let ids = match unacknowledged(fetcher, &key, position, unread, opts).await {
                Ok(ids) => ids,
                Err(e) => {
                    // Not retried: the group's next run (or a takeover)
                    // replays from the position, which stays below them.
                    tracing::warn!(group = %key.1, %node, "shared group: messages lost with the node not read (a later run replays them): {e}");
                    continue;
                }
            };
            // Stored here and not routed yet: they go live to a member.
            let ids: Vec<i64> = {
                let pending = self.route_pending.lock().unwrap_or_else(|p| p.into_inner());
                ids.into_iter().filter(|id| !pending.contains(id)).collect()
            };
            let lost = self.tracks.recover(&key, &ids, unread);
            if lost > 0 {
                tracing::info!(group = %key.1, %node, lost, "shared group: node down; delivering again the messages no member here holds and no node acknowledged");
                let member = self.tracks.replay_to(&key).unwrap_or(member);
                self.group_catch_up(&key, &member);
            }
        }
    }
}

/// The ids of group `key`'s stored messages above `position` (or the row's,
/// if greater) that match its filter, are not acknowledged in its row
/// (`acked_above`), are not in `unread` (exclusive, inclusive: its replay
/// still brings them) and are within `opts`' age limit and not expired.
async fn unacknowledged(
    fetcher: &Arc<Fetcher>,
    key: &TrackKey,
    position: i64,
    unread: (i64, i64),
    opts: FetchOpts,
) -> Result<Vec<i64>, PgsqlError> {
    let schema = fetcher.schema.ready(&fetcher.pool.name)?;
    let (op, value) = condition(crate::groups::match_filter(&key.1)).into_sql();
    let not_expired = crate::properties::and_not_expired(schema.message_properties);
    // The group's row: at most one (clientid, topic is unique).
    let not_acked = if schema.acked_above {
        "AND NOT id = ANY(COALESCE((SELECT acked_above FROM mqtt_acked
                                    WHERE clientid = $1 AND topic = $2), '{}'::int8[]))"
    } else {
        ""
    };
    let sql = format!(
        "SELECT id::int8 FROM mqtt_msg
         WHERE id > GREATEST($3, COALESCE((SELECT mid::int8 FROM mqtt_acked
                                           WHERE clientid = $1 AND topic = $2), 0))
           AND NOT (id > $4 AND id <= $5)
           AND topic {op} $6
           AND ($7::float8 IS NULL OR arrived >= now() - make_interval(secs => $7))
           {not_acked}
           {not_expired}
         ORDER BY id"
    );
    let params: [(&(dyn ToSql + Sync), Type); 7] = [
        (&key.0, Type::TEXT),
        (&key.1, Type::TEXT),
        (&position, Type::INT8),
        (&unread.0, Type::INT8),
        (&unread.1, Type::INT8),
        (&value, Type::TEXT),
        (&opts.time_range_secs, Type::FLOAT8),
    ];
    let conn = fetcher.pool.get().await?;
    let what = || format!("read the messages of `{}` lost with a node", key.1);
    let rows = conn
        .query_typed(&sql, &params)
        .await
        .map_err(|e| PgsqlError::query(what())(e))?;
    rows.iter()
        .map(|r| r.try_get::<_, i64>(0))
        .collect::<Result<_, _>>()
        .map_err(|e| PgsqlError::query(what())(e))
}

#[cfg(test)]
mod tests {
    use crate::groups::group_key;
    use crate::positions::{FetchOpts, Tracks};

    #[test]
    fn what_a_dead_node_held_is_missed_and_what_this_node_holds_is_not() {
        let tracks = Tracks::default();
        let key = group_key("g", "t/#");
        assert!(tracks.lost_scope(&key).is_none(), "no run here");
        tracks.start(key.clone(), 10, &[12], 1, FetchOpts::default());
        assert!(tracks.lost_scope(&key).is_none(), "the run has no bound yet");
        tracks.bound_run(&key, 20);
        let (position, unread, _) = tracks.lost_scope(&key).expect("a replaying run");
        assert_eq!((position, unread), (10, (0, 0)), "nothing left to page");
        tracks.delivered_key(&key, 13);
        tracks.missed(&key, 14);
        // 9: below the position; 12: acknowledged here; 13: a member here
        // holds it; 14: already missed; 17: its replay still brings it.
        let lost = tracks.recover(&key, &[9, 11, 12, 13, 14, 15, 17], (16, 20));
        assert_eq!(lost, 2, "11 and 15");
        let (ids, qos) = tracks.take_missed(&key, 10).expect("missed messages to hand");
        assert_eq!((ids, qos), (vec![11, 14, 15], 1));
        assert_eq!(tracks.recover(&key, &[11], (0, 0)), 0, "being handed: not again");
    }
}
