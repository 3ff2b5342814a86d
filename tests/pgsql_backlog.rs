//! The visible backlog (issue 14): per client and per subscription, the
//! stored messages not yet acknowledged, in the `mqtt_backlog` view, in
//! `/metrics` (summaries), in the management API (`backlog`,
//! `_gte_backlog`), and, past `backend.pgsql.backlog_limit`, a warning and
//! the `session.backlog_exceeded` hook, once per crossing.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backend_pgsql::BackendPgsql;
use hooks_spec::{BacklogArgs, ConfFile, Hooks, Plugin, PluginContext, PluginError};
use postbox::config::Config;
use postbox::Server;
use rumqttc::QoS;
use serde_json::Value;
use support::http::*;
use support::pgsql::*;
use support::*;
use tokio::sync::mpsc;
use tokio::time::Instant;

const WARNING: &str = "backlog of a subscription passed backend.pgsql.backlog_limit";

/// Counted every 100 ms, so that tests wait for counts, not for 30 s.
fn backlog_conf(limit: u64) -> String {
    format!("backend.pgsql.backlog_limit = {limit}\nbackend.pgsql.backlog_interval = 100ms\n")
}

/// The client's JSON of `GET /api/v4/clients/{id}`.
async fn api_client(http: std::net::SocketAddr, id: &str) -> Value {
    let a = get(http, &format!("/api/v4/clients/{id}")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["data"][0].clone()
}

/// Polls the API until the client's `backlog` is `want`; returns its JSON.
async fn wait_api_backlog(http: std::net::SocketAddr, id: &str, want: u64) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let c = api_client(http, id).await;
        if c["backlog"].as_u64() == Some(want) {
            return c;
        }
        assert!(Instant::now() < deadline, "backlog of {id} is not {want}: {c}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The client ids `GET /api/v4/clients?_gte_backlog=n` lists.
async fn with_backlog_of_at_least(http: std::net::SocketAddr, n: u64) -> Vec<String> {
    let a = get(http, &format!("/api/v4/clients?_gte_backlog={n}")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["clientid"].as_str().unwrap().to_string())
        .collect()
}

/// `(filter, pending)` of each of the client's subscriptions in the view.
async fn view(pg: &tokio_postgres::Client, clientid: &str) -> Vec<(String, i64)> {
    pg.query(
        "select topic, pending from mqtt_backlog where clientid = $1 order by topic",
        &[&clientid],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn pairs(want: &[(&str, i64)]) -> Vec<(String, i64)> {
    want.iter().map(|(f, n)| (f.to_string(), *n)).collect()
}

/// Polls `/metrics` until `key` is `want`.
async fn wait_metric(http: std::net::SocketAddr, key: &str, want: f64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let v = value(&scrape(http).await, key);
        if v == want {
            return;
        }
        assert!(Instant::now() < deadline, "{key} is {v}, not {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_offline_backlog_past_the_limit_is_logged_shown_and_cleared_by_acknowledgements() {
    let db = TestDb::create().await;
    let pg = db.client().await;
    let conf = pgsql_conf(&db, &format!("{EMQX_DEFAULT_RULES}\n{}", backlog_conf(8)));
    let b = Broker::start_with_files(
        &format!("plugins.load = backend_pgsql\n{HTTP_CONF}"),
        &[("backend_pgsql.conf", &conf)],
    )
    .await;
    let http = b.http_addr().await;

    // A persistent subscriber with two subscriptions goes offline.
    let (mut sub, _) = V4Client::connect(v4_options(b.addr, "bl-sub", false)).await;
    sub.subscribe("bl/#", QoS::AtLeastOnce).await;
    sub.subscribe("bl2/a", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let c = wait_api_backlog(http, "bl-sub", 0).await;
    assert!(c["backlog_oldest_age"].is_null(), "{c}");

    // 10 messages for bl/# (past the limit of 8), 3 for bl2/a (under it).
    publish_all(b.addr, "bl-pub", "bl/a", &numbered(0..10)).await;
    publish_all(b.addr, "bl-pub", "bl2/a", &numbered(0..3)).await;

    b.wait_for_log(WARNING).await;
    let logs = b.logs();
    let line = logs.lines().find(|l| l.contains(WARNING)).unwrap();
    for part in [
        "clientid=bl-sub",
        "subscription=bl/#",
        "pending=10",
        "limit=8",
        "oldest_age_secs=",
    ] {
        assert!(line.contains(part), "`{part}` missing from: {line}");
    }
    assert_eq!(view(&pg, "bl-sub").await, pairs(&[("bl/#", 10), ("bl2/a", 3)]));
    let oldest: Option<f64> = pg
        .query_one(
            "select min(oldest_age_secs) from mqtt_backlog where clientid = 'bl-sub'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(oldest.is_some_and(|a| a >= 0.0), "{oldest:?}");

    let pool = "{pool=\"pool1\"}";
    let over = format!("postbox_pgsql_backlog_subscriptions_over_limit{pool}");
    let largest = format!("postbox_pgsql_backlog_max_subscription_messages{pool}");
    let age = format!("postbox_pgsql_backlog_oldest_age_seconds{pool}");
    wait_metric(http, &over, 1.0).await;
    wait_metric(http, &largest, 10.0).await;
    assert!(value(&scrape(http).await, &age) >= 0.0);

    let c = wait_api_backlog(http, "bl-sub", 13).await;
    assert!(c["backlog_oldest_age"].as_u64().is_some(), "{c}");
    assert_eq!(with_backlog_of_at_least(http, 13).await, ["bl-sub"]);
    assert!(with_backlog_of_at_least(http, 14).await.is_empty());
    let bad = get(http, "/api/v4/clients?_gte_backlog=many").await;
    assert_eq!(bad.status, 400, "{}", bad.body);

    // Still over the limit at the next counts: no second warning.
    publish_all(b.addr, "bl-pub", "bl/a", &numbered(10..11)).await;
    wait_api_backlog(http, "bl-sub", 14).await;
    assert_eq!(b.log_count(WARNING), 1, "{}", b.logs());

    // The client comes back and acknowledges what it receives: exactly the
    // backlog, then nothing is pending any more.
    let (mut sub, ack) = V4Client::connect(v4_options(b.addr, "bl-sub", false)).await;
    assert!(ack.session_present);
    for _ in 0..14 {
        sub.next_publish().await;
    }
    sub.expect_no_publish(Duration::from_millis(300)).await;
    wait_for_db(
        &pg,
        "select sum(pending)::int8 from mqtt_backlog where clientid = 'bl-sub'",
        Some(0),
    )
    .await;
    let c = wait_api_backlog(http, "bl-sub", 0).await;
    assert!(c["backlog_oldest_age"].is_null(), "{c}");
    wait_metric(http, &over, 0.0).await;
    wait_metric(http, &largest, 0.0).await;
    wait_metric(http, &age, 0.0).await;
    assert_eq!(b.log_count(WARNING), 1);
}

/// Without a plugin that counts backlogs the API has no `backlog` field and
/// refuses the filter.
#[tokio::test]
async fn without_the_plugin_the_backlog_filter_is_refused() {
    let b = Broker::start(HTTP_CONF).await;
    let http = b.http_addr().await;
    let (_c, _) = V4Client::connect(v4_options(b.addr, "plain", true)).await;
    let c = api_client(http, "plain").await;
    assert!(c.get("backlog").is_none(), "{c}");
    let a = get(http, "/api/v4/clients?_gte_backlog=1").await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("backend_pgsql"), "{}", a.body);
}

/// Persistent 3.1.1 options.
fn persistent(addr: std::net::SocketAddr, id: &str) -> rumqttc::MqttOptions {
    v4_options(addr, id, false)
}

fn v5_persistent(addr: std::net::SocketAddr, id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = v5_options(addr, id, false);
    o.set_session_expiry_interval(Some(3600));
    o
}

/// Receives publishes until none comes for 500 ms; returns how many.
async fn drain_v4(c: &mut V4Client) -> usize {
    let mut n = 0;
    while let Some(ev) = c.poll_once(Duration::from_millis(500)).await {
        if matches!(ev.unwrap(), rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))) {
            n += 1;
        }
    }
    n
}

/// The view's count of each subscription is what its client receives when it
/// comes back after a restart (everything replayed from the store): wildcard
/// filters, `$` topics a leading wildcard does not match, ids acknowledged
/// above the position (`acked_above`), and MQTT 5 no local.
#[tokio::test]
async fn the_view_counts_what_a_reconnecting_client_receives() {
    let db = TestDb::create().await;
    let pg = db.client().await;
    let mut b = broker_with_pgsql(&db, SESSION_RULE).await;
    let subs = [
        ("s-plus", "v/+/x"),
        ("s-hash", "v/#"),
        ("s-all", "#"),
        ("s-exact", "v/a/x"),
    ];
    for (id, filter) in subs {
        let (mut c, _) = V4Client::connect(persistent(b.addr, id)).await;
        c.subscribe(filter, QoS::AtLeastOnce).await;
        c.disconnect().await;
    }
    // No local: its own two messages are not for it.
    let (mut own, _) = V5Client::connect(v5_persistent(b.addr, "s-own")).await;
    let mut filter = rumqttc::v5::mqttbytes::v5::Filter::new("v/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
    filter.nolocal = true;
    own.client.subscribe_many([filter]).await.unwrap();
    own.next_suback().await;
    for i in 0..2 {
        own.publish(
            "v/n/x",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            format!("own{i}"),
        )
        .await;
    }
    own.disconnect().await;
    wait_for_db(
        &pg,
        "select count(*) from mqtt_sub where clientid = 's-own' and session and no_local",
        Some(1),
    )
    .await;

    publish_all(b.addr, "p", "v/a/x", &numbered(0..3)).await;
    publish_all(b.addr, "p", "v/b/x", &numbered(0..2)).await;
    publish_all(b.addr, "p", "v/a", &numbered(0..1)).await;
    publish_all(b.addr, "p", "v/a/x/y", &numbered(0..1)).await;
    publish_all(b.addr, "p", "other/x", &numbered(0..1)).await;

    // s-exact acknowledged the last two of v/a/x above its position; a
    // message on a `$` topic (the shipped rules do not store those: another
    // writer did) is not for `#`.
    b.terminate().await;
    pg.execute(
        "insert into mqtt_msg (topic, qos, payload) values ('$v/x', 1, 'x')",
        &[],
    )
    .await
    .unwrap();
    let ids = stored_ids(&pg, "v/a/x").await;
    pg.execute(
        "update mqtt_acked set acked_above = $1 where clientid = 's-exact'",
        &[&ids[1..].to_vec()],
    )
    .await
    .unwrap();
    b.restart().await;

    let want = [
        ("s-plus", "v/+/x", 7),
        ("s-hash", "v/#", 9),
        ("s-all", "#", 10),
        ("s-exact", "v/a/x", 1),
        ("s-own", "v/#", 7),
    ];
    for (id, filter, n) in want {
        assert_eq!(view(&pg, id).await, pairs(&[(filter, n)]), "{id}");
    }
    for (id, _, n) in &want[..4] {
        let (mut c, ack) = V4Client::connect(persistent(b.addr, id)).await;
        assert!(ack.session_present, "{id}");
        assert_eq!(
            drain_v4(&mut c).await,
            *n as usize,
            "{id} receives what the view counts"
        );
    }
    let (mut own, ack) = V5Client::connect(v5_persistent(b.addr, "s-own")).await;
    assert!(ack.session_present);
    for _ in 0..7 {
        let p = own.next_publish().await;
        assert!(!p.payload.starts_with(b"own"), "{p:?}");
    }
    own.expect_no_publish(Duration::from_millis(500)).await;
    wait_for_db(&pg, "select sum(pending)::int8 from mqtt_backlog", Some(0)).await;
}

/// What the observing plugin saw of `session.backlog_exceeded`.
struct Observer(Mutex<Option<mpsc::UnboundedSender<BacklogArgs>>>);

#[async_trait]
impl Plugin for Observer {
    fn name(&self) -> &str {
        "observer"
    }

    fn load_config(&mut self, _path: &Path) -> Result<(), PluginError> {
        Ok(())
    }

    async fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
        let tx = self.0.lock().unwrap().clone().unwrap();
        ctx.hooks
            .session_backlog_exceeded
            .add("observer", 0, move |args: Arc<BacklogArgs>, acc: ()| {
                let _ = tx.send((*args).clone());
                async move { Ok(hooks_spec::Flow::Continue(acc)) }
            });
        Ok(())
    }

    async fn stop(&self, hooks: &Hooks) -> Result<(), PluginError> {
        hooks.remove_owner("observer");
        Ok(())
    }
}

/// An in-process broker with the plugin and the observer; the conf files in `dir`.
async fn start_observed(
    db: &TestDb,
    dir: &Path,
    limit: u64,
) -> (Server, mpsc::UnboundedReceiver<BacklogArgs>) {
    let pg_conf = dir.join("backend_pgsql.conf");
    std::fs::write(
        &pg_conf,
        pgsql_conf(db, &format!("{EMQX_DEFAULT_RULES}\n{}", backlog_conf(limit))),
    )
    .unwrap();
    let mut pgsql = BackendPgsql::new();
    pgsql.load_config(&pg_conf).unwrap();
    let conf = ConfFile::parse(
        &dir.join("postbox.conf"),
        &format!("node.name = obs@127.0.0.1\nlistener.tcp.external = 127.0.0.1:0\n{HTTP_CONF}"),
    )
    .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let observer = Observer(Mutex::new(Some(tx)));
    let server = Server::start(
        Config::from_conf(&conf).unwrap(),
        vec![Box::new(pgsql), Box::new(observer)],
    )
    .await
    .unwrap();
    (server, rx)
}

#[tokio::test]
async fn session_backlog_exceeded_fires_once_per_crossing() {
    let db = TestDb::create().await;
    let dir = temp_dir("backlog-hook");
    let (server, mut events) = start_observed(&db, &dir, 3).await;
    let addr = server.local_addrs()[0];
    let http = server.http_addr().unwrap();

    let (mut sub, _) = V4Client::connect(persistent(addr, "hk-sub")).await;
    sub.subscribe("hk/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    publish_all(addr, "hk-pub", "hk/t", &numbered(0..4)).await;

    let e = tokio::time::timeout(TIMEOUT, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            e.clientid.as_str(),
            e.filter.as_str(),
            e.pending,
            e.limit,
            e.node.as_str()
        ),
        ("hk-sub", "hk/#", 4, 3, "obs@127.0.0.1")
    );
    // Counted again with one more: still over, not told again.
    publish_all(addr, "hk-pub", "hk/t", &numbered(4..5)).await;
    wait_api_backlog(http, "hk-sub", 5).await;
    assert!(
        events.try_recv().is_err(),
        "fired again while still over the limit"
    );

    // Acknowledged: under the limit again, so the next crossing fires.
    let (mut sub, _) = V4Client::connect(persistent(addr, "hk-sub")).await;
    for _ in 0..5 {
        sub.next_publish().await;
    }
    sub.expect_no_publish(Duration::from_millis(300)).await;
    wait_api_backlog(http, "hk-sub", 0).await;
    sub.disconnect().await;
    assert!(events.try_recv().is_err());
    publish_all(addr, "hk-pub", "hk/t", &numbered(5..9)).await;
    let e = tokio::time::timeout(TIMEOUT, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((e.pending, e.filter.as_str()), (4, "hk/#"));
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The SQL matching the view uses is the one offline replay binds: the same
/// regular expression for every filter, and `mqtt_topic_matches` agrees with
/// the broker's matching.
#[tokio::test]
async fn sql_filter_matching_is_the_replays() {
    use backend_pgsql::topic_match::{condition, TopicCondition};
    let db = TestDb::create().await;
    let mut pg = db.client().await;
    backend_pgsql::schema::migrate(&mut pg).await.unwrap();
    let filters = [
        "a/+/c",
        "a/#",
        "#",
        "+",
        "+/x",
        "a.b/+",
        "$SYS/#",
        "x(y)/[z]/#",
        "a/+/#",
        "a/b",
    ];
    for f in filters {
        let sql: String = pg
            .query_one("select mqtt_filter_regex($1)", &[&f])
            .await
            .unwrap()
            .get(0);
        match condition(f) {
            TopicCondition::Regex(re) => assert_eq!(sql, re, "{f}"),
            TopicCondition::Exact(_) => {}
        }
    }
    let topics = [
        "a",
        "a/b",
        "a/b/c",
        "a/x/c/d",
        "$SYS/x",
        "/x",
        "a.b/c",
        "axb/c",
        "x(y)/[z]",
        "x(y)/[z]/q",
    ];
    for f in filters {
        for t in topics {
            let sql: bool = pg
                .query_one("select mqtt_topic_matches($1, $2)", &[&t, &f])
                .await
                .unwrap()
                .get(0);
            assert_eq!(sql, backend_pgsql::mqtt_matches(f, t), "{t} against {f}");
        }
    }
}
