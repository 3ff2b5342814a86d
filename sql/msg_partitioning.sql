-- Time partitioning of mqtt_msg (`backend.pgsql.msg_partition`), native
-- PostgreSQL range partitioning on `arrived`.
--
-- NOT a numbered migration: it is opt-in. With `msg_partition` set, the
-- plugin runs this file at start (every statement is CREATE OR REPLACE, so
-- idempotent) under the migration advisory lock, then calls
-- mqtt_msg_partition_convert and mqtt_msg_partitions_ensure in the same
-- transaction; a maintenance task later calls mqtt_msg_partitions_ensure and
-- mqtt_msg_partitions_drop under its own advisory lock. The functions only
-- build DDL from their (typed) arguments with format(%I, %L).
--
-- Layout once converted:
--   mqtt_msg          PARTITION BY RANGE (arrived), PRIMARY KEY (id, arrived),
--                     indexes (topic, id) and (arrived), same columns and id
--                     sequence as before (ids keep growing)
--   mqtt_msg_legacy   the table as it was: FROM (MINVALUE) TO (just after its
--                     newest row, or the time of the conversion)
--   mqtt_msg_pYYYYMMDD_HH24MISS  one per width (named by its lower bound),
--                     created a few widths ahead
--   mqtt_msg_default  DEFAULT: whatever no range covers, so an insert never
--                     fails; its rows move into a range partition when one
--                     is created for them

-- The partition boundary at or below `ts`: widths counted from the Unix
-- epoch, in the column's own (time-zone-less) time.
CREATE OR REPLACE FUNCTION mqtt_msg_bin(ts timestamp, width_secs float8) RETURNS timestamp
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
    SELECT to_timestamp(floor(extract(epoch FROM ts)::float8 / width_secs) * width_secs) AT TIME ZONE 'UTC'
$fn$;

-- The partitions of mqtt_msg and their bounds (NULL: MINVALUE; both NULL
-- and is_default: the DEFAULT partition). Empty when mqtt_msg is not
-- partitioned.
CREATE OR REPLACE FUNCTION mqtt_msg_partitions() RETURNS TABLE (
    name text,
    lower_bound timestamp,
    upper_bound timestamp,
    is_default boolean
)
LANGUAGE sql STABLE AS $fn$
    SELECT c.relname::text,
           substring(b FROM 'FROM \(''([^'']*)''\)')::timestamp,
           substring(b FROM 'TO \(''([^'']*)''\)')::timestamp,
           b = 'DEFAULT'
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL pg_get_expr(c.relpartbound, c.oid) AS b
    WHERE i.inhparent = to_regclass('mqtt_msg')
$fn$;

-- Turns a plain mqtt_msg into a partitioned one (false: it already is).
-- The caller holds the migration lock; the table is locked for the length
-- of the transaction (one scan and one index build over the old rows).
CREATE OR REPLACE FUNCTION mqtt_msg_partition_convert(width_secs float8) RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    seq text;
    newest timestamp;
    cutoff timestamp;
    idx record;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'mqtt_msg'::regclass) = 'p' THEN
        RETURN false;
    END IF;
    LOCK TABLE mqtt_msg IN ACCESS EXCLUSIVE MODE;
    seq := pg_get_serial_sequence('mqtt_msg', 'id');
    IF seq IS NULL THEN
        RAISE EXCEPTION 'mqtt_msg.id takes no value from a sequence (serial or bigserial): cannot partition mqtt_msg';
    END IF;
    IF to_regclass('mqtt_msg_legacy') IS NOT NULL THEN
        RAISE EXCEPTION 'a table mqtt_msg_legacy exists already: rename or drop it to partition mqtt_msg';
    END IF;
    -- A range partition holds no NULL key (EMQX's schema allows NULL).
    UPDATE mqtt_msg SET arrived = localtimestamp WHERE arrived IS NULL;
    SELECT max(arrived) INTO newest FROM mqtt_msg;
    -- The old table keeps what it holds and takes nothing new: the first
    -- new partition starts just after its newest row (or now), so it can
    -- be dropped as soon as that row is past every retention.
    cutoff := COALESCE(newest + interval '1 microsecond', localtimestamp);

    ALTER TABLE mqtt_msg RENAME TO mqtt_msg_legacy;
    ALTER TABLE mqtt_msg_legacy ALTER COLUMN arrived SET NOT NULL;
    -- Its primary key (id) gives way to the parent's (id, arrived), which
    -- ATTACH builds on it.
    FOR idx IN SELECT conname::text AS name FROM pg_constraint
               WHERE conrelid = 'mqtt_msg_legacy'::regclass AND contype = 'p' LOOP
        EXECUTE format('ALTER TABLE mqtt_msg_legacy DROP CONSTRAINT %I', idx.name);
    END LOOP;
    -- The parent's indexes take the usual names.
    FOR idx IN SELECT c.relname::text AS name FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
               WHERE x.indrelid = 'mqtt_msg_legacy'::regclass AND c.relname LIKE 'mqtt\_msg\_%' LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', idx.name,
                       'mqtt_msg_legacy_' || substr(idx.name, length('mqtt_msg_') + 1));
    END LOOP;

    CREATE TABLE mqtt_msg (
        LIKE mqtt_msg_legacy INCLUDING DEFAULTS INCLUDING STORAGE INCLUDING COMMENTS,
        PRIMARY KEY (id, arrived)
    ) PARTITION BY RANGE (arrived);
    -- The id default (nextval) moved with LIKE; the sequence must not go
    -- when the old table is dropped.
    EXECUTE format('ALTER SEQUENCE %s OWNED BY mqtt_msg.id', seq);
    CREATE INDEX mqtt_msg_topic_id ON mqtt_msg (topic, id);
    CREATE INDEX mqtt_msg_arrived ON mqtt_msg (arrived);
    CREATE TABLE mqtt_msg_default PARTITION OF mqtt_msg DEFAULT;
    EXECUTE format('ALTER TABLE mqtt_msg ATTACH PARTITION mqtt_msg_legacy FOR VALUES FROM (MINVALUE) TO (%L)',
                   cutoff);
    RETURN true;
END
$fn$;

-- Creates range partitions from the highest upper bound up to `ahead`
-- widths past the current one (a partition up to the current boundary
-- first when the highest bound is behind, so a long stop leaves no run of
-- empty tables); a range the DEFAULT partition holds rows of gets no
-- partition (its rows stay there). Returns how many it created. The caller
-- holds the partition lock.
CREATE OR REPLACE FUNCTION mqtt_msg_partitions_ensure(width_secs float8, ahead integer) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    width interval := make_interval(secs => width_secs);
    now_bin timestamp := mqtt_msg_bin(localtimestamp, width_secs);
    horizon timestamp := now_bin + width * (ahead + 1);
    top timestamp;
    lo timestamp;
    hi timestamp;
    part text;
    def text;
    occupied boolean;
    created integer := 0;
BEGIN
    SELECT name INTO def FROM mqtt_msg_partitions() WHERE is_default;
    IF def IS NULL THEN
        CREATE TABLE mqtt_msg_default PARTITION OF mqtt_msg DEFAULT;
        def := 'mqtt_msg_default';
    END IF;
    SELECT max(upper_bound) INTO top FROM mqtt_msg_partitions() WHERE NOT is_default;
    top := COALESCE(top, now_bin);
    WHILE top < horizon LOOP
        lo := top;
        hi := CASE WHEN lo < now_bin THEN now_bin ELSE mqtt_msg_bin(lo, width_secs) + width END;
        part := 'mqtt_msg_p' || to_char(lo, 'YYYYMMDD"_"HH24MISS');
        -- Rows the DEFAULT partition holds for this range stay there, and
        -- so does the range (no partition for it): moving them out made
        -- them invisible, for an instant, to readers such as a replay page.
        -- The row sweep deletes them from the DEFAULT partition.
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE arrived >= $1 AND arrived < $2)', def)
            INTO occupied USING lo, hi;
        IF NOT occupied THEN
            EXECUTE format('CREATE TABLE %I (LIKE mqtt_msg INCLUDING DEFAULTS INCLUDING STORAGE)', part);
            -- ATTACH, not CREATE ... PARTITION OF: inserts into other partitions go on meanwhile.
            EXECUTE format('ALTER TABLE mqtt_msg ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
            created := created + 1;
        END IF;
        top := hi;
    END LOOP;
    RETURN created;
END
$fn$;

-- Drops the range partitions whose every row arrived before `older_than`
-- (upper bound at or below it), the old table included; returns their
-- names. Never the DEFAULT partition. The caller holds the partition lock.
CREATE OR REPLACE FUNCTION mqtt_msg_partitions_drop(older_than timestamp) RETURNS SETOF text
LANGUAGE plpgsql AS $fn$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT name FROM mqtt_msg_partitions()
             WHERE NOT is_default AND upper_bound <= older_than ORDER BY upper_bound LOOP
        EXECUTE format('DROP TABLE %I', p.name);
        RETURN NEXT p.name;
    END LOOP;
END
$fn$;
