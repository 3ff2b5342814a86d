//! Helpers for tests of the PostgreSQL plugin: a `backend_pgsql.conf` for a
//! test database, and brokers started with it.

use super::*;

/// EMQX's default rule set (as shipped), for tests.
pub const EMQX_DEFAULT_RULES: &str = r##"
backend.pgsql.hook.client.connected.1    = {"action": {"function": "on_client_connected"}, "pool": "pool1"}
backend.pgsql.hook.client.connected.2    = {"action": {"function": "on_subscribe_lookup"}, "pool": "pool1"}
backend.pgsql.hook.client.disconnected.1 = {"action": {"function": "on_client_disconnected"}, "pool": "pool1"}
backend.pgsql.hook.session.subscribed.1  = {"topic": "#", "action": {"function": "on_message_fetch"}, "pool": "pool1"}
backend.pgsql.hook.session.subscribed.2  = {"topic": "#", "action": {"function": "on_retain_lookup"}, "pool": "pool1"}
backend.pgsql.hook.session.unsubscribed.1= {"topic": "#", "action": {"sql": ["delete from mqtt_acked where clientid = ${clientid} and topic = ${topic}"]}, "pool": "pool1"}
backend.pgsql.hook.message.publish.1     = {"topic": "#", "action": {"function": "on_message_publish"}, "pool": "pool1"}
backend.pgsql.hook.message.publish.2     = {"topic": "#", "action": {"function": "on_message_retain"}, "pool": "pool1"}
backend.pgsql.hook.message.publish.3     = {"topic": "#", "action": {"function": "on_retain_delete"}, "pool": "pool1"}
backend.pgsql.hook.message.acked.1       = {"topic": "#", "action": {"function": "on_message_acked"}, "pool": "pool1"}
"##;

/// Postbox's persistent sessions (shipped on): restored after a broker restart.
pub const SESSION_RULE: &str = r##"
backend.pgsql.hook.session.restore.1     = {"action": {"function": "on_session_restore"}, "pool": "pool1"}
"##;

/// Postbox's addition: keep `mqtt_sub` in step with clients' subscriptions.
pub const SUBSCRIBE_STORE_RULES: &str = r##"
backend.pgsql.hook.session.subscribed.3  = {"topic": "#", "action": {"function": "on_subscribe_store"}, "pool": "pool1"}
backend.pgsql.hook.session.unsubscribed.2= {"topic": "#", "action": {"function": "on_subscribe_store"}, "pool": "pool1"}
"##;

/// The CREATE TABLE statements of EMQX 4.4's documentation.
pub const EMQX_SCHEMA: &str = "
CREATE TABLE mqtt_client(id SERIAL primary key, clientid character varying(100), state integer,
  node character varying(100), online_at timestamp, offline_at timestamp,
  created timestamp without time zone, UNIQUE (clientid));
CREATE TABLE mqtt_sub(id SERIAL primary key, clientid character varying(100), topic character varying(200),
  qos integer, created timestamp without time zone, UNIQUE (clientid, topic));
CREATE TABLE mqtt_msg (id SERIAL primary key, msgid character varying(60), sender character varying(100),
  topic character varying(200), qos integer, retain integer, payload text, arrived timestamp without time zone);
CREATE TABLE mqtt_retain(id SERIAL primary key, topic character varying(200), msgid character varying(60),
  sender character varying(100), qos integer, payload text, arrived timestamp without time zone, UNIQUE (topic));
CREATE TABLE mqtt_acked (id SERIAL primary key, clientid character varying(100), topic character varying(100),
  mid integer, created timestamp without time zone, UNIQUE (clientid, topic));
";

/// host:port of the test PostgreSQL server.
pub fn pg_server() -> String {
    let url = pg_admin_url();
    let after = url.split("://").nth(1).unwrap_or(&url);
    let authority = after.split('/').next().unwrap_or(after);
    authority.rsplit('@').next().unwrap_or(authority).to_string()
}

/// A `backend_pgsql.conf` with pool1 on `db` and the given rules and globals.
pub fn pgsql_conf(db: &TestDb, rest: &str) -> String {
    format!(
        "backend.pgsql.pool1.server = {}\nbackend.pgsql.pool1.pool_size = 4\nbackend.pgsql.pool1.username = postgres\nbackend.pgsql.pool1.database = {}\n{rest}\n",
        pg_server(),
        db.name
    )
}

/// A broker with the plugin, EMQX's default rules plus `extra`.
pub async fn broker_with_pgsql(db: &TestDb, extra: &str) -> Broker {
    let conf = pgsql_conf(db, &format!("{EMQX_DEFAULT_RULES}\n{extra}"));
    Broker::start_with_files("plugins.load = backend_pgsql\n", &[("backend_pgsql.conf", &conf)]).await
}

/// The first column of the first row of `sql` as an `i64` (`None` for no row
/// or NULL). Integer columns of any width and `numeric`-free expressions work:
/// cast in the SQL (`::int8`) when needed.
pub async fn query_opt_i64(client: &tokio_postgres::Client, sql: &str) -> Option<i64> {
    let row = client
        .query_opt(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("query failed: {}\n{sql}", error_chain(&e)))?;
    row.get::<_, Option<i64>>(0)
}

/// Polls `sql` (see [`query_opt_i64`]) until it returns `want`; panics after
/// [`TIMEOUT`] with the last value seen.
pub async fn wait_for_db(client: &tokio_postgres::Client, sql: &str, want: Option<i64>) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let got = query_opt_i64(client, sql).await;
        if got == want {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("`{sql}` is {got:?}, expected {want:?} within {TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `sql` quoted as a string literal (for test-built statements only).
pub fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The read position `mqtt_acked.mid` of one client on one filter.
pub async fn position(client: &tokio_postgres::Client, clientid: &str, filter: &str) -> Option<i64> {
    query_opt_i64(
        client,
        &format!(
            "select mid::int8 from mqtt_acked where clientid = {} and topic = {}",
            sql_literal(clientid),
            sql_literal(filter)
        ),
    )
    .await
}

/// Waits until the read position of `clientid` on `filter` is `want`.
pub async fn wait_for_position(client: &tokio_postgres::Client, clientid: &str, filter: &str, want: i64) {
    wait_for_db(
        client,
        &format!(
            "select mid::int8 from mqtt_acked where clientid = {} and topic = {}",
            sql_literal(clientid),
            sql_literal(filter)
        ),
        Some(want),
    )
    .await
}

/// The stored ids of the messages on `topic`, oldest first.
pub async fn stored_ids(client: &tokio_postgres::Client, topic: &str) -> Vec<i64> {
    client
        .query(
            &format!(
                "select id::int8 from mqtt_msg where topic = {} order by id",
                sql_literal(topic)
            ),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("select mqtt_msg: {}", error_chain(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The payload of a received PUBLISH as text.
pub fn text(p: &rumqttc::Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

/// Acknowledges a PUBLISH received with manual acks and polls until the
/// PUBACK is written.
pub async fn ack_now(c: &mut V4Client, p: &rumqttc::Publish) {
    c.client.ack(p).await.expect("queue PUBACK");
    let pkid = p.pkid;
    c.poll_until(|ev| {
        matches!(ev, rumqttc::Event::Outgoing(rumqttc::Outgoing::PubAck(id)) if *id == pkid).then_some(())
    })
    .await
}

/// Waits until `mqtt_acked.acked_above` of (`clientid`, `filter`) holds
/// `n` ids: acknowledgements above the read position are recorded.
pub async fn wait_for_acked_above(client: &tokio_postgres::Client, clientid: &str, filter: &str, n: i64) {
    wait_for_db(
        client,
        &format!(
            "select coalesce(cardinality(acked_above), 0)::int8 from mqtt_acked where clientid = {} and topic = {}",
            sql_literal(clientid),
            sql_literal(filter)
        ),
        Some(n),
    )
    .await
}

/// Receives m0, m1 and m2 on `c` (manual acks) and acknowledges m1 and m2
/// only: m0 stays in flight and holds the read position below the others.
pub async fn ack_all_but_the_first_of_three(c: &mut V4Client) {
    for i in 0..3 {
        let p = c.next_publish().await;
        assert_eq!(text(&p), format!("m{i}"));
        if i > 0 {
            ack_now(c, &p).await;
        }
    }
}

/// Connects a 3.1.1 client (clean session) and publishes `payloads` to
/// `topic` at QoS 1, each acknowledged before the next.
pub async fn publish_all(addr: std::net::SocketAddr, id: &str, topic: &str, payloads: &[String]) {
    let (mut p, _) = V4Client::connect(v4_options(addr, id, true)).await;
    for payload in payloads {
        p.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.clone())
            .await;
    }
    p.disconnect().await;
}

/// `m{i}` for each i.
pub fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

// Database outages: the test database refuses connections and loses its
// existing ones, and gets them back when the guard drops.

/// `ALTER DATABASE .. WITH ALLOW_CONNECTIONS`.
pub async fn set_allow_connections(db: &str, allow: bool) {
    let admin = pg_connect(&pg_admin_url()).await;
    admin
        .batch_execute(&format!("ALTER DATABASE \"{db}\" WITH ALLOW_CONNECTIONS {allow}"))
        .await
        .unwrap();
}

/// Puts `ALLOW_CONNECTIONS` back even when the test fails (so the database can be dropped).
pub struct ReopenOnDrop {
    /// The database.
    pub db: String,
}

impl Drop for ReopenOnDrop {
    fn drop(&mut self) {
        let db = self.db.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(set_allow_connections(&db, true));
            }
        })
        .join();
    }
}

/// The database refuses new connections and every existing one is cut.
pub async fn outage_start(db: &TestDb) -> ReopenOnDrop {
    let guard = ReopenOnDrop { db: db.name.clone() };
    set_allow_connections(&db.name, false).await;
    let admin = pg_connect(&pg_admin_url()).await;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db.name],
        )
        .await
        .unwrap();
    wait_for_db(
        &admin,
        &format!(
            "select count(*) from pg_stat_activity where datname = {}",
            sql_literal(&db.name)
        ),
        Some(0),
    )
    .await;
    guard
}

/// The plugin config with EMQX's default rules and pages of `n` messages
/// (`max_returned_count`) for offline fetch.
pub fn paged_conf(db: &TestDb, n: usize) -> String {
    pgsql_conf(
        db,
        &EMQX_DEFAULT_RULES.replace(
            r##""action": {"function": "on_message_fetch"}, "pool""##,
            &format!(
                r##""action": {{"function": "on_message_fetch"}}, "offline_opts": {{"max_returned_count": {n}}}, "pool""##
            ),
        ),
    )
}

/// A broker with that plugin config.
pub async fn paged_broker(db: &TestDb, n: usize) -> Broker {
    let conf = paged_conf(db, n);
    Broker::start_with_files("plugins.load = backend_pgsql\n", &[("backend_pgsql.conf", &conf)]).await
}

/// Asserts that `mqtt_msg.payload` is still EMQX's `text` column (the
/// user's tables are used as they are).
pub async fn assert_emqx_text_payload(client: &tokio_postgres::Client) {
    assert_eq!(
        query_opt_i64(
            client,
            "select count(*) from information_schema.columns where table_name = 'mqtt_msg' \
             and column_name = 'payload' and data_type = 'text'"
        )
        .await,
        Some(1),
        "mqtt_msg.payload is still EMQX's text column"
    );
}

/// A clean-session device, EMQX-style: every connection subscribes again
/// (QoS 1) and the plugin replays from the stored position.
pub async fn device(broker: &Broker, id: &str, filter: &str) -> V4Client {
    let (mut c, _) = V4Client::connect(v4_options(broker.addr, id, true)).await;
    c.subscribe(filter, rumqttc::QoS::AtLeastOnce).await;
    c
}

/// The payloads (as text) of the next `n` messages `c` receives.
pub async fn receive_n(c: &mut V4Client, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(String::from_utf8_lossy(&c.next_publish().await.payload).into_owned());
    }
    got
}
