//! EMQX's functions and `sql` actions against a real database, as a user
//! sees them: retained messages, client state, restored subscriptions,
//! `sql` rules with placeholders, unsubscribe, and EMQX's own schema.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, PubAckReason};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::QoS;
use support::pgsql::*;
use support::*;

async fn start(db: &TestDb, broker_conf: &str, rules: &str) -> Broker {
    let conf = pgsql_conf(db, rules);
    Broker::start_with_files(
        &format!("plugins.load = backend_pgsql\n{broker_conf}"),
        &[("backend_pgsql.conf", &conf)],
    )
    .await
}

async fn retained_rows(pg: &tokio_postgres::Client) -> Vec<(String, Vec<u8>)> {
    pg.query("select topic::text, payload from mqtt_retain order by topic", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn retained_messages_are_kept_in_the_database_and_delivered_once() {
    let db = TestDb::create().await;
    let mut broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    let (mut p, _) = V4Client::connect(v4_options(broker.addr, "retainer", true)).await;
    p.publish("r/a", QoS::AtLeastOnce, true, "a1").await;
    p.publish("r/b", QoS::AtLeastOnce, true, "b1").await;
    assert_eq!(
        retained_rows(&pg).await,
        [
            ("r/a".to_string(), b"a1".to_vec()),
            ("r/b".to_string(), b"b1".to_vec())
        ]
    );
    p.publish("r/a", QoS::AtLeastOnce, true, "a2").await;
    p.publish("r/b", QoS::AtLeastOnce, true, "").await;
    p.disconnect().await;
    assert_eq!(
        retained_rows(&pg).await,
        [("r/a".to_string(), b"a2".to_vec())],
        "replaced, and deleted by an empty payload"
    );

    // The broker's own retained store and the plugin's lookup both offer it: once.
    let (mut s, _) = V4Client::connect(v4_options(broker.addr, "s1", true)).await;
    s.subscribe("r/#", QoS::AtLeastOnce).await;
    let m = s.next_publish().await;
    assert_eq!(
        (m.topic.as_str(), text(&m).as_str(), m.retain),
        ("r/a", "a2", true)
    );
    s.expect_no_publish(Duration::from_millis(500)).await;
    s.disconnect().await;

    // After a restart only the database has it.
    broker.kill().await;
    broker.restart().await;
    let (mut s, _) = V4Client::connect(v4_options(broker.addr, "s2", true)).await;
    s.subscribe("r/#", QoS::AtLeastOnce).await;
    let m = s.next_publish().await;
    assert_eq!(
        (m.topic.as_str(), text(&m).as_str(), m.retain),
        ("r/a", "a2", true)
    );
    assert_eq!(m.qos, QoS::AtLeastOnce);
    s.expect_no_publish(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn mqtt_client_follows_connect_and_disconnect() {
    let db = TestDb::create().await;
    let broker = start(&db, "node.name = pbtest@10.1.2.3\n", EMQX_DEFAULT_RULES).await;
    let pg = db.client().await;
    let state = "select state::int8 from mqtt_client where clientid = 'tracked'";
    let (c, _) = V4Client::connect(v4_options(broker.addr, "tracked", true)).await;
    wait_for_db(&pg, state, Some(1)).await;
    let row = pg
        .query_one(
            "select node::text, online_at is not null, offline_at is null from mqtt_client where clientid = 'tracked'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, bool>(1),
            row.get::<_, bool>(2)
        ),
        ("pbtest@10.1.2.3".to_string(), true, true)
    );
    c.disconnect().await;
    wait_for_db(&pg, state, Some(0)).await;
    let row = pg
        .query_one(
            "select offline_at is not null, online_at is not null from mqtt_client where clientid = 'tracked'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, bool>(0), row.get::<_, bool>(1)), (true, true));

    // Back online: offline_at is cleared again, still one row.
    let (_c, _) = V4Client::connect(v4_options(broker.addr, "tracked", true)).await;
    wait_for_db(&pg, state, Some(1)).await;
    assert_eq!(
        query_opt_i64(
            &pg,
            "select count(*) from mqtt_client where clientid = 'tracked' and offline_at is null"
        )
        .await,
        Some(1)
    );
}

#[tokio::test]
async fn an_operator_filled_mqtt_sub_row_subscribes_the_client() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    pg.batch_execute("insert into mqtt_sub (clientid, topic, qos) values ('restored', 'ops/+/cmd', 1)")
        .await
        .unwrap();
    let (mut c, _) = V4Client::connect(v4_options(broker.addr, "restored", true)).await;
    // The restored subscription registered its read position: it is in place.
    wait_for_db(
        &pg,
        "select count(*) from mqtt_acked where clientid = 'restored' and topic = 'ops/+/cmd'",
        Some(1),
    )
    .await;
    let (mut p, _) = V4Client::connect(v4_options(broker.addr, "operator", true)).await;
    p.publish("ops/other/thing", QoS::AtLeastOnce, false, "not for you")
        .await;
    p.publish("ops/dev1/cmd", QoS::AtLeastOnce, false, "reboot").await;
    let m = c.next_publish().await;
    assert_eq!((m.topic.as_str(), text(&m).as_str()), ("ops/dev1/cmd", "reboot"));
    assert_eq!(m.qos, QoS::AtLeastOnce);
    c.expect_no_publish(Duration::from_millis(300)).await;
    assert_eq!(
        query_opt_i64(&pg, "select count(*) from mqtt_sub").await,
        Some(1),
        "on_subscribe_lookup never writes mqtt_sub"
    );
}

#[tokio::test]
async fn sql_actions_bind_placeholders_as_values() {
    let db = TestDb::create().await;
    db.batch_execute(
        "create table conn_log (clientid text, username text, peer text, node text);
         create table pub_log (topic text, qos integer, payload bytea, ts bigint);",
    )
    .await;
    let rules = format!(
        "{EMQX_DEFAULT_RULES}\n{}\n{}\n",
        r##"backend.pgsql.hook.client.connected.3 = {"action": {"sql": ["insert into conn_log (clientid, username, peer, node) values (${clientid}, ${username}, ${peerhost}, ${node})"]}, "pool": "pool1"}"##,
        r##"backend.pgsql.hook.message.publish.4 = {"topic": "log/#", "action": {"sql": ["insert into pub_log (topic, qos, payload, ts) values (${topic}, ${qos}, ${payload}, ${timestamp})"]}, "pool": "pool1"}"##,
    );
    let broker = start(&db, "node.name = sqltest@127.0.0.1\n", &rules).await;
    let pg = db.client().await;

    let evil = "evil'); drop table conn_log; --";
    let mut opts = v4_options(broker.addr, evil, true);
    opts.set_credentials("o'brien", "secret");
    let (mut c, _) = V4Client::connect(opts).await;
    wait_for_db(&pg, "select count(*) from conn_log", Some(1)).await;
    let row = pg
        .query_one("select clientid, username, peer, node from conn_log", &[])
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3)
        ),
        (
            evil.to_string(),
            "o'brien".to_string(),
            "127.0.0.1".to_string(),
            "sqltest@127.0.0.1".to_string()
        )
    );
    assert_eq!(
        query_opt_i64(&pg, "select count(*) from pg_tables where tablename = 'conn_log'").await,
        Some(1),
        "the table is still there"
    );

    let t0 = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let binary: Vec<u8> = vec![0, 0xff, b'\'', 0xfe, b';'];
    c.publish("log/bin", QoS::AtLeastOnce, false, binary.clone())
        .await;
    c.publish("log/q0", QoS::AtMostOnce, false, "zero").await;
    c.publish("nolog/x", QoS::AtLeastOnce, false, "ignored").await;
    wait_for_db(&pg, "select count(*) from pub_log", Some(2)).await;
    let t1 = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let rows = pg
        .query("select topic, qos, payload, ts from pub_log order by topic", &[])
        .await
        .unwrap();
    let got: Vec<(String, i32, Vec<u8>)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(
        got,
        [
            ("log/bin".to_string(), 1, binary),
            ("log/q0".to_string(), 0, b"zero".to_vec())
        ]
    );
    for r in &rows {
        let ts: i64 = r.get(3);
        assert!((t0..=t1).contains(&ts), "timestamp {ts} not within [{t0}, {t1}]");
    }
}

#[tokio::test]
async fn unsubscribing_forgets_the_position() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    let (mut c, _) = V4Client::connect(v4_options(broker.addr, "leaver", true)).await;
    c.subscribe("news/t", QoS::AtLeastOnce).await;
    assert!(position(&pg, "leaver", "news/t").await.is_some());
    c.unsubscribe("news/t").await;
    wait_for_db(
        &pg,
        "select count(*) from mqtt_acked where clientid = 'leaver'",
        Some(0),
    )
    .await;
    c.disconnect().await;

    publish_all(broker.addr, "pub", "news/t", &numbered(0..3)).await;
    let (mut c, _) = V4Client::connect(v4_options(broker.addr, "leaver", true)).await;
    c.subscribe("news/t", QoS::AtLeastOnce).await;
    c.expect_no_publish(Duration::from_millis(500)).await;
    let last = *stored_ids(&pg, "news/t").await.last().unwrap();
    assert_eq!(
        position(&pg, "leaver", "news/t").await,
        Some(last),
        "a first subscription again"
    );
    publish_all(broker.addr, "pub", "news/t", &["fresh".to_string()]).await;
    assert_eq!(text(&c.next_publish().await), "fresh");
}

#[tokio::test]
async fn emqx_schema_stores_text_and_refuses_binary_payloads() {
    let db = TestDb::create().await;
    db.batch_execute(EMQX_SCHEMA).await;
    let broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    assert_emqx_text_payload(&pg).await;
    let (mut d, _) = V4Client::connect(v4_options(broker.addr, "emqx-dev", true)).await;
    d.subscribe("emqx/t", QoS::AtLeastOnce).await;
    d.disconnect().await;
    let (mut live, _) = V4Client::connect(v4_options(broker.addr, "emqx-live", true)).await;
    live.subscribe("emqx/t", QoS::AtLeastOnce).await;

    let (mut p, _) = V5Client::connect(v5_options(broker.addr, "emqx-pub", true)).await;
    let utf8 = "héllo ✓";
    match p.publish_acked("emqx/t", V5QoS::AtLeastOnce, false, utf8).await {
        Some(rumqttc::v5::Event::Incoming(V5Packet::PubAck(a))) => {
            assert_eq!(a.reason, PubAckReason::Success)
        }
        other => panic!("expected a PUBACK, got {other:?}"),
    }
    assert_eq!(query_opt_i64(&pg, "select count(*) from mqtt_msg").await, Some(1));
    assert_eq!(text(&live.next_publish().await), utf8);
    match p
        .publish_acked("emqx/t", V5QoS::AtLeastOnce, false, vec![0xff, 0xfe, 0x00, b'x'])
        .await
    {
        Some(rumqttc::v5::Event::Incoming(V5Packet::PubAck(a))) => {
            assert_eq!(a.reason, PubAckReason::NotAuthorized, "refused (0x87)")
        }
        other => panic!("expected a PUBACK, got {other:?}"),
    }
    assert_eq!(
        query_opt_i64(&pg, "select count(*) from mqtt_msg").await,
        Some(1),
        "never stored corrupted"
    );
    broker
        .wait_for_log("refusing a message whose payload is not UTF-8")
        .await;
    live.expect_no_publish(Duration::from_millis(300)).await;

    let (mut d, _) = V4Client::connect(v4_options(broker.addr, "emqx-dev", true)).await;
    d.subscribe("emqx/t", QoS::AtLeastOnce).await;
    assert_eq!(text(&d.next_publish().await), utf8);
    d.expect_no_publish(Duration::from_millis(500)).await;
    let last = query_opt_i64(&pg, "select max(id)::int8 from mqtt_msg")
        .await
        .unwrap();
    wait_for_position(&pg, "emqx-dev", "emqx/t", last).await;
}

/// Offline fetch and retention by topic select rows with regular
/// expressions made from MQTT filters: PostgreSQL must match exactly the
/// topics the broker's own matcher does (wildcards, `$` topics, empty
/// levels, regex metacharacters in literal levels).
#[tokio::test]
async fn filter_regexes_match_in_postgresql_what_the_broker_matches() {
    let db = TestDb::create().await;
    let pg = db.client().await;
    let filters = [
        "#", "+", "a/#", "a/+", "+/b", "a/+/c", "a/b", "a", "+/+", "/#", "+/", "a.b/#", "$SYS/#", "$SYS/+",
        "(x)/+", "a|b", "a*/#", "[a]/+", "a\\b", "a^b/$c",
    ];
    let topics = [
        "a", "a/b", "a/b/c", "ab", "a//c", "a/x/c", "a.b/c", "axb/c", "$SYS/x", "$SYS", "/a", "a/", "/",
        "(x)/y", "x/y", "a|b", "b", "a*/q", "aa/q", "[a]/z", "a/z", "a\\b", "a^b/$c", "ab/c",
    ];
    let mut checked = 0;
    for f in filters {
        let re = backend_pgsql::topic_match::anchored_regex(f);
        for t in topics {
            let row = pg
                .query_one("select $1::text ~ $2::text", &[&t, &re])
                .await
                .unwrap();
            let pg_says: bool = row.get(0);
            assert_eq!(
                pg_says,
                postbox::topic::matches(f, t),
                "filter {f:?} ({re}) topic {t:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, filters.len() * topics.len());
}
