-- Tables of the `auth_pgsql` plugin (authentication and ACL), EMQX's layout.
--
-- NOT applied by the broker: create them yourself, once, in the database
-- `auth.pgsql.database` names:
--
--   psql -d mqtt -f sql/auth_pgsql.sql
--
-- The statements are idempotent. An EMQX 4 `mqtt_user` table (whose hash
-- column is called `password`) works as it is with
-- `auth.pgsql.auth_query = select password, salt from mqtt_user where username = '%u' limit 1`.

-- Users: the default auth_query reads password_hash and salt by username.
-- password_hash: hex digest for md5/sha*/salted forms and pbkdf2, the whole
-- bcrypt string for bcrypt (see `auth.pgsql.password_hash`).
CREATE TABLE IF NOT EXISTS mqtt_user (
    id            SERIAL PRIMARY KEY,
    username      character varying(100) NOT NULL UNIQUE,
    password_hash character varying(200),
    salt          character varying(100),
    is_superuser  boolean NOT NULL DEFAULT false,
    created       timestamp with time zone DEFAULT now()
);

-- ACL rows (EMQX 4's mqtt_acl):
--   allow    1 allow, 0 deny
--   ipaddr   the client's address, or a CIDR block (10.0.0.0/8); NULL: any
--   username the user name; '$all': every client (the other columns are then ignored)
--   clientid the client id; NULL: any
--   access   1 subscribe, 2 publish, 3 both
--   topic    a topic filter; %u / %c as a whole level (or ${username} /
--            ${clientid} anywhere) are the client's user name / id;
--            'eq <topic>' compares literally ('eq #' is the filter # itself)
-- Rows are tried in the order acl_query returns them (the shipped query
-- orders by id) and the first that matches decides.
CREATE TABLE IF NOT EXISTS mqtt_acl (
    id       SERIAL PRIMARY KEY,
    allow    integer,
    ipaddr   character varying(60),
    username character varying(100),
    clientid character varying(100),
    access   integer,
    topic    character varying(100)
);
CREATE INDEX IF NOT EXISTS mqtt_acl_username ON mqtt_acl (username);
CREATE INDEX IF NOT EXISTS mqtt_acl_clientid ON mqtt_acl (clientid);
CREATE INDEX IF NOT EXISTS mqtt_acl_ipaddr ON mqtt_acl (ipaddr);

-- Examples (EMQX's default rows), not inserted:
--
-- INSERT INTO mqtt_acl (allow, ipaddr, username, clientid, access, topic) VALUES
--   (0, NULL, '$all', NULL, 1, '$SYS/#'),   -- nobody subscribes to $SYS ...
--   (0, NULL, '$all', NULL, 1, 'eq #'),     -- ... nor to everything at once
--   (1, '127.0.0.1', NULL, NULL, 3, '#'),   -- local clients may do anything else
--   (1, NULL, '$all', NULL, 3, 'users/%u/#'); -- everyone: their own subtree
--
-- A user with a salted SHA-256 password (password_hash = salt,sha256):
--
-- INSERT INTO mqtt_user (username, password_hash, salt)
--   VALUES ('alice', encode(sha256(convert_to('s4lt' || 'secret', 'UTF8')), 'hex'), 's4lt');
