//! The HTTP listener with the PostgreSQL plugin: the writer's and the
//! replay's metrics move with traffic, and `/status` follows a real
//! PostgreSQL server stopped and started again.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::time::Duration;

use rumqttc::QoS;
use support::http::*;
use support::pg_cluster::{PgCluster, StopMode};
use support::pgsql::*;
use support::*;
use tokio::time::Instant;

/// A broker with the PostgreSQL plugin (EMQX's default rules) and the HTTP listener.
async fn broker_with_http(db: &TestDb) -> Broker {
    let conf = pgsql_conf(db, EMQX_DEFAULT_RULES);
    Broker::start_with_files(
        &format!("plugins.load = backend_pgsql\n{HTTP_CONF}"),
        &[("backend_pgsql.conf", &conf)],
    )
    .await
}

#[tokio::test]
async fn writer_and_replay_metrics_move_with_traffic() {
    let db = TestDb::create().await;
    let b = broker_with_http(&db).await;
    let http = b.http_addr().await;
    let pool = "{pool=\"pool1\"}";
    let before = scrape(http).await;
    assert_eq!(value(&before, &format!("postbox_pgsql_outage{pool}")), 0.0);

    // A persistent subscriber goes offline, N messages are stored for it.
    let (mut sub, _) = V4Client::connect(v4_options(b.addr, "pg-sub", false)).await;
    sub.subscribe("pg/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    const N: usize = 12;
    publish_all(b.addr, "pg-pub", "pg/t", &numbered(0..N)).await;

    let stored = scrape(http).await;
    let moved =
        |now: &std::collections::HashMap<String, f64>, key: &str| value(now, key) - value(&before, key);
    assert_eq!(
        moved(&stored, &format!("postbox_pgsql_stored_messages_total{pool}")),
        N as f64
    );
    assert_eq!(
        moved(&stored, &format!("postbox_pgsql_writer_batch_size_sum{pool}")),
        N as f64
    );
    let batches = moved(&stored, &format!("postbox_pgsql_writer_batch_size_count{pool}"));
    assert!((1.0..=N as f64).contains(&batches), "{batches}");
    assert_eq!(
        moved(
            &stored,
            &format!("postbox_pgsql_writer_commit_duration_seconds_count{pool}")
        ),
        batches
    );
    // The storage callback is timed per hook point and plugin.
    let hook =
        "postbox_hook_callback_duration_seconds_count{hook=\"message.publish\",plugin=\"backend_pgsql\"}";
    assert!(moved(&stored, hook) >= N as f64, "{stored:?}");

    // After a restart the session is no longer in memory: the subscriber
    // comes back, subscribes again, and its backlog is replayed in pages.
    let mut b = b;
    b.restart().await;
    let http = b.http_addr().await;
    // The backlog is counted at start (then every 30 s): the N messages
    // the subscriber has not acknowledged.
    let backlog_key = format!("postbox_pgsql_backlog_messages{pool}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let backlog = loop {
        let v = value(&scrape(http).await, &backlog_key);
        if v >= 0.0 || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(backlog, N as f64, "the offline backlog");
    let (mut sub, _) = V4Client::connect(v4_options(b.addr, "pg-sub", false)).await;
    sub.subscribe("pg/#", QoS::AtLeastOnce).await;
    for _ in 0..N {
        sub.next_publish().await;
    }
    let replayed = scrape(http).await;
    assert!(value(&replayed, &format!("postbox_pgsql_replay_pages_total{pool}")) >= 1.0);
    assert_eq!(
        value(&replayed, &format!("postbox_pgsql_replay_messages_total{pool}")),
        N as f64
    );
}

async fn status_becomes(http: std::net::SocketAddr, want: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let a = request(http, "GET", "/status", None, None).await;
        if a.status == want {
            return a.body;
        }
        assert!(
            Instant::now() < deadline,
            "/status still {} after {within:?}: {}",
            a.status,
            a.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn status_follows_the_database() {
    let cluster = PgCluster::start().await;
    cluster.create_db("mqtt").await;
    let conf = format!(
        "backend.pgsql.pool1.server = {}\nbackend.pgsql.pool1.pool_size = 4\n\
         backend.pgsql.pool1.username = postgres\nbackend.pgsql.pool1.database = mqtt\n{EMQX_DEFAULT_RULES}\n",
        cluster.server()
    );
    let b = Broker::start_with_files(
        &format!("plugins.load = backend_pgsql\n{HTTP_CONF}"),
        &[("backend_pgsql.conf", &conf)],
    )
    .await;
    let http = b.http_addr().await;
    let body = status_becomes(http, 200, Duration::from_secs(10)).await;
    assert!(body.contains("postbox is running"), "{body}");

    cluster.stop(StopMode::Fast).await;
    let body = status_becomes(http, 503, Duration::from_secs(10)).await;
    assert!(body.contains("postbox is not_running"), "{body}");
    assert!(body.contains("plugin backend_pgsql"), "{body}");
    // MQTT itself still answers: only the health says the database is gone.
    let (c, _) = V4Client::connect(v4_options(b.addr, "while-down", true)).await;
    c.disconnect().await;

    cluster.start_again().await;
    status_becomes(http, 200, Duration::from_secs(15)).await;
}

/// With the PostgreSQL backend, `POST /api/v4/mqtt/subscribe` for a device
/// that never connected provisions the subscription (`mqtt_sub`): what is
/// published from then on reaches it at its first connect, nothing from before.
#[tokio::test]
async fn a_subscription_provisioned_through_the_api_is_drained_at_the_first_connect() {
    let db = TestDb::create().await;
    let b = broker_with_http(&db).await;
    let http = b.http_addr().await;
    let (mut p, _) = V4Client::connect(v4_options(b.addr, "ops", true)).await;
    p.publish_acked("fleet/d42/cmd", QoS::AtLeastOnce, false, "before")
        .await;
    let body = r#"{"clientid":"d42","topics":"fleet/d42/#,fleet/all","qos":1}"#;
    let a = request(
        http,
        "POST",
        "/api/v4/mqtt/subscribe",
        Some(("admin", "s3cret")),
        Some(body),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["data"]["provisioned"], true);
    let pg = db.client().await;
    assert_eq!(
        query_opt_i64(&pg, "select count(*) from mqtt_sub where clientid = 'd42'").await,
        Some(2)
    );
    for (topic, payload) in [
        ("fleet/d42/cmd", "reboot"),
        ("fleet/all", "update"),
        ("fleet/d7/cmd", "not yours"),
    ] {
        p.publish_acked(topic, QoS::AtLeastOnce, false, payload).await;
    }
    let (mut d42, _) = V4Client::connect(v4_options(b.addr, "d42", true)).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = d42.next_publish().await;
        got.push(format!("{} {}", m.topic, String::from_utf8_lossy(&m.payload)));
    }
    got.sort();
    assert_eq!(got, ["fleet/all update", "fleet/d42/cmd reboot"]);
    d42.expect_no_publish(Duration::from_millis(500)).await;
}
