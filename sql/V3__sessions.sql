-- Postbox schema, version 3: persistent sessions survive a restart of the
-- broker (function on_session_restore, bound to session.restore).
-- Idempotent, like the others.

-- One row per persistent session (MQTT 3.1.1 clean session 0, MQTT 5
-- session expiry > 0). While no connection is attached the session expires
-- at `expires_at` (NULL: never, or connected); the retention sweep then
-- removes it with its rows in mqtt_sub, mqtt_acked and mqtt_client.
CREATE TABLE IF NOT EXISTS mqtt_session (
    clientid        varchar(255) PRIMARY KEY,
    username        varchar(255),
    expiry_secs     bigint NOT NULL,
    node            varchar(255),
    connected       boolean NOT NULL DEFAULT true,
    disconnected_at timestamptz,
    expires_at      timestamptz,
    created         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS mqtt_session_expires_at ON mqtt_session (expires_at) WHERE NOT connected;

-- A persistent session's subscriptions are rows of mqtt_sub with
-- `session = true` (kept in step with the session, removed with it). Rows
-- with `session = false` are EMQX's: provisioned, restored on every connect
-- by on_subscribe_lookup, never removed by the session machinery. The MQTT 5
-- options of a session's subscription are kept with it.
ALTER TABLE mqtt_sub ADD COLUMN IF NOT EXISTS session boolean NOT NULL DEFAULT false;
ALTER TABLE mqtt_sub ADD COLUMN IF NOT EXISTS no_local boolean;
ALTER TABLE mqtt_sub ADD COLUMN IF NOT EXISTS retain_as_published boolean;
ALTER TABLE mqtt_sub ADD COLUMN IF NOT EXISTS retain_handling smallint;
ALTER TABLE mqtt_sub ADD COLUMN IF NOT EXISTS subscription_id integer;
