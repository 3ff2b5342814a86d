-- Postbox schema, version 1: the tables of EMQX's backend_pgsql, with 64-bit
-- ids, binary payloads and the indexes the plugin's queries use.
-- Every statement is idempotent: a database created from EMQX's documented
-- schema keeps its tables (the plugin detects their column types).

CREATE TABLE IF NOT EXISTS mqtt_client (
    id          bigserial PRIMARY KEY,
    clientid    varchar(255) NOT NULL UNIQUE,
    state       integer,
    node        varchar(255),
    online_at   timestamp,
    offline_at  timestamp,
    created     timestamp DEFAULT now()
);

-- Subscriptions restored by on_subscribe_lookup (kept in step by on_subscribe_store).
CREATE TABLE IF NOT EXISTS mqtt_sub (
    id          bigserial PRIMARY KEY,
    clientid    varchar(255) NOT NULL,
    topic       varchar(1024) NOT NULL,
    qos         integer NOT NULL DEFAULT 1,
    created     timestamp DEFAULT now(),
    UNIQUE (clientid, topic)
);

-- Each stored message once, however many subscribers it has. Ids become
-- visible in increasing order (the writer assigns and commits them under one
-- advisory lock), so a reader that has seen id N never misses a smaller one.
CREATE TABLE IF NOT EXISTS mqtt_msg (
    id          bigserial PRIMARY KEY,
    msgid       varchar(64),
    sender      varchar(255),
    topic       varchar(1024) NOT NULL,
    qos         integer NOT NULL,
    retain      integer NOT NULL DEFAULT 0,
    payload     bytea,
    arrived     timestamp NOT NULL DEFAULT now()
);
-- Offline fetch for an exact filter: topic = $1 AND id > $2 ORDER BY id.
CREATE INDEX IF NOT EXISTS mqtt_msg_topic_id ON mqtt_msg (topic, id);
-- Retention: delete by age in bounded batches.
CREATE INDEX IF NOT EXISTS mqtt_msg_arrived ON mqtt_msg (arrived);

CREATE TABLE IF NOT EXISTS mqtt_retain (
    id          bigserial PRIMARY KEY,
    topic       varchar(1024) NOT NULL UNIQUE,
    msgid       varchar(64),
    sender      varchar(255),
    qos         integer,
    payload     bytea,
    arrived     timestamp DEFAULT now()
);

-- Each client's read position per subscription filter: the highest id below
-- which it has acknowledged every stored message matching the filter.
CREATE TABLE IF NOT EXISTS mqtt_acked (
    id          bigserial PRIMARY KEY,
    clientid    varchar(255) NOT NULL,
    topic       varchar(1024) NOT NULL,
    mid         bigint NOT NULL,
    created     timestamp DEFAULT now(),
    UNIQUE (clientid, topic)
);
