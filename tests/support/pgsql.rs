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

/// Postbox's addition: keep `mqtt_sub` in step with clients' subscriptions.
pub const SUBSCRIBE_STORE_RULES: &str = r##"
backend.pgsql.hook.session.subscribed.3  = {"topic": "#", "action": {"function": "on_subscribe_store"}, "pool": "pool1"}
backend.pgsql.hook.session.unsubscribed.2= {"topic": "#", "action": {"function": "on_subscribe_store"}, "pool": "pool1"}
"##;

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
