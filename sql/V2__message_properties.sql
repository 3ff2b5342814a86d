-- Postbox schema, version 2: what MQTT 5 messages carry besides topic and
-- payload, so that a replayed message keeps its meaning. Every column is NULL
-- when the message had no such property (and for every MQTT 3.1.1 message).
-- Idempotent. Tables created from EMQX's documented schema get the columns
-- too (EMQX's own queries name their columns, so they are unaffected); where
-- the columns are missing anyway the plugin runs without them (sql/README.md).
--
-- expires_at        the absolute expiry (Message Expiry Interval), computed
--                   by the server at insert as now() + interval; NULL: never.
--                   timestamptz, so the server's TimeZone never shifts it.
--                   Expired rows are not replayed; a replayed message
--                   carries the time it has left.
-- payload_format    Payload Format Indicator (0 bytes, 1 UTF-8).
-- content_type      Content Type.
-- response_topic    Response Topic.
-- correlation_data  Correlation Data.
-- user_properties   User Properties: a JSON array of [key, value] pairs in
--                   the order sent (keys may repeat, so not an object).
-- Adding nullable columns without a default rewrites nothing.

ALTER TABLE IF EXISTS mqtt_msg
    ADD COLUMN IF NOT EXISTS expires_at       timestamptz,
    ADD COLUMN IF NOT EXISTS payload_format   smallint,
    ADD COLUMN IF NOT EXISTS content_type     text,
    ADD COLUMN IF NOT EXISTS response_topic   text,
    ADD COLUMN IF NOT EXISTS correlation_data bytea,
    ADD COLUMN IF NOT EXISTS user_properties  jsonb;

-- The same for retained messages (on_message_retain / on_retain_lookup).
ALTER TABLE IF EXISTS mqtt_retain
    ADD COLUMN IF NOT EXISTS expires_at       timestamptz,
    ADD COLUMN IF NOT EXISTS payload_format   smallint,
    ADD COLUMN IF NOT EXISTS content_type     text,
    ADD COLUMN IF NOT EXISTS response_topic   text,
    ADD COLUMN IF NOT EXISTS correlation_data bytea,
    ADD COLUMN IF NOT EXISTS user_properties  jsonb;
