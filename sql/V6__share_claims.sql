-- Postbox schema, version 6: which node replays a shared group's backlog.
-- Idempotent, like the others.
--
-- When the first members of a `$share` group subscribe on several nodes at
-- the same moment (a whole cluster restarted), only the node that holds the
-- group's row here replays the group's backlog; the others deliver live
-- messages only. A claim is a lease: renewed while the node's run lasts,
-- deleted when it ends, and taken over once `until` has passed (a node that
-- died). Rows, not advisory locks, so it also holds behind a
-- transaction-pooling proxy.
CREATE TABLE IF NOT EXISTS mqtt_share_claim (
    grp   text PRIMARY KEY,       -- '$share/<group>/<filter>', as in mqtt_acked.topic
    node  text NOT NULL,          -- node.name of the claiming broker
    until timestamptz NOT NULL
);
