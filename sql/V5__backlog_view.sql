-- Postbox schema, version 5: the visible backlog. Per client and per
-- subscription filter, how many stored messages it has not acknowledged and
-- how old the oldest of them is. Idempotent, like the others.
--
-- "Pending" is exactly what offline replay (on_message_fetch) would hand the
-- subscription if its client subscribed now: rows of mqtt_msg with an id
-- above its read position (mqtt_acked.mid) whose topic matches the filter,
-- less the ids it acknowledged above the position (mqtt_acked.acked_above),
-- less expired messages (MQTT 5 expiry), less the client's own messages when
-- the stored subscription has MQTT 5 no local (mqtt_sub.no_local). The
-- plugin's `time_range` is configuration, not data: the view does not apply
-- it; mqtt_backlog_of(max_age) does.
--
-- The tables are read inside SQL function bodies, so the view depends on no
-- table: tables dropped and made again by hand (see sql/README.md) can still
-- be dropped without CASCADE.

-- Bodies are checked when called, not here: tables made by hand from EMQX's
-- schema after V2 was recorded lack `expires_at` (sql/README.md), and this
-- migration must not stop the broker there (the count fails, and says so).
SET LOCAL check_function_bodies = off;

-- The anchored POSIX regular expression matching the topics of an MQTT
-- topic filter: `+` is one level, a trailing `#` any number (the parent
-- level included: `a/#` matches `a`), a leading wildcard does not match
-- topics starting with `$`, every literal level is escaped. The same
-- expression offline replay binds (backend-pgsql/src/topic_match.rs).
CREATE OR REPLACE FUNCTION mqtt_filter_regex(filter text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
DECLARE
    levels text[] := string_to_array(filter, '/');
    n integer := cardinality(levels);
    re text := '^';
BEGIN
    IF levels[1] IN ('+', '#') THEN
        re := re || '(?!\$)';
    END IF;
    FOR i IN 1 .. n LOOP
        IF levels[i] = '#' THEN
            IF i = 1 THEN
                re := re || '.*';
            ELSE
                -- The separator before `#` becomes part of the optional tail.
                re := left(re, -1) || '(/.*)?';
            END IF;
        ELSIF levels[i] = '+' THEN
            re := re || '[^/]*';
        ELSE
            re := re || regexp_replace(levels[i], '([\\.^$|?*+()\[\]{}])', '\\\1', 'g');
        END IF;
        IF i < n THEN
            re := re || '/';
        END IF;
    END LOOP;
    RETURN re || '$';
END
$fn$;

-- Whether `topic` matches the MQTT topic filter `filter` (`+` and `#`).
CREATE OR REPLACE FUNCTION mqtt_topic_matches(topic text, filter text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
    SELECT CASE
        WHEN strpos(filter, '+') = 0 AND strpos(filter, '#') = 0 THEN topic = filter
        ELSE topic ~ mqtt_filter_regex(filter)
    END
$fn$;

-- The backlog of every subscription that has a read position, counting only
-- messages that arrived within `max_age` (NULL: all), as offline replay does
-- with `time_range`. One row per mqtt_acked row: `pending` 0 and the oldest_*
-- columns NULL when nothing is pending. A filter without wildcards is one
-- range scan of the (topic, id) index; one with wildcards scans the ids
-- above the position, as replay does.
CREATE OR REPLACE FUNCTION mqtt_backlog_of(max_age interval) RETURNS TABLE (
    clientid text,
    topic text,
    mid bigint,
    pending bigint,
    oldest_id bigint,
    oldest_ts timestamptz,
    oldest_age_secs double precision
)
LANGUAGE sql STABLE AS $fn$
    SELECT a.clientid::text, a.topic::text, a.mid::int8, p.pending, p.oldest_id, p.oldest_ts,
           EXTRACT(EPOCH FROM now() - p.oldest_ts)::float8
    FROM mqtt_acked a
    LEFT JOIN mqtt_sub s ON s.clientid = a.clientid AND s.topic = a.topic
    -- A shared group's row (`$share/<group>/<filter>`) matches by its filter.
    CROSS JOIN LATERAL (SELECT regexp_replace(a.topic, '^\$share/[^/]+/', '') AS filter) f
    CROSS JOIN LATERAL (
        SELECT count(*)::int8 AS pending, min(m.id)::int8 AS oldest_id,
               min(m.arrived)::timestamptz AS oldest_ts
        FROM (
            SELECT e.id, e.arrived, e.sender, e.expires_at FROM mqtt_msg e
            WHERE strpos(f.filter, '+') = 0 AND strpos(f.filter, '#') = 0
              AND e.topic = f.filter AND e.id > a.mid
            UNION ALL
            SELECT w.id, w.arrived, w.sender, w.expires_at FROM mqtt_msg w
            WHERE (strpos(f.filter, '+') > 0 OR strpos(f.filter, '#') > 0)
              AND w.id > a.mid AND w.topic ~ mqtt_filter_regex(f.filter)
        ) m
        WHERE NOT (m.id = ANY (COALESCE(a.acked_above, '{}'::int8[])))
          AND (m.expires_at IS NULL OR m.expires_at > now())
          AND ($1 IS NULL OR m.arrived >= now() - $1)
          AND NOT (COALESCE(s.no_local, false) AND m.sender IS NOT DISTINCT FROM a.clientid)
    ) p
$fn$;

-- Every subscription's backlog (mqtt_backlog_of without an age limit).
CREATE OR REPLACE VIEW mqtt_backlog AS
    SELECT clientid, topic, mid, pending, oldest_id, oldest_ts, oldest_age_secs
    FROM mqtt_backlog_of(NULL);

RESET check_function_bodies;
