//! Offline delivery through PostgreSQL: each device receives what it missed,
//! once, in order, and never again after it acknowledged it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::time::Duration;

use rumqttc::QoS;
use support::pgsql::*;
use support::*;

async fn publish_n(broker: &Broker, topic: &str, range: std::ops::Range<usize>) {
    let (mut p, _) = V4Client::connect(v4_options(broker.addr, "publisher", true)).await;
    for i in range {
        p.publish(topic, QoS::AtLeastOnce, false, format!("m{i}")).await;
    }
    p.disconnect().await;
}

fn expected(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

#[tokio::test]
async fn reference_scenario_each_missed_message_once_in_order_then_nothing() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "").await;
    let c = device(&broker, "dev-1", "factory/line1").await;
    c.disconnect().await;

    publish_n(&broker, "factory/line1", 0..5).await;

    let mut c = device(&broker, "dev-1", "factory/line1").await;
    assert_eq!(receive_n(&mut c, 5).await, expected(0..5));
    c.expect_no_publish(Duration::from_millis(300)).await;
    c.disconnect().await;

    let mut c = device(&broker, "dev-1", "factory/line1").await;
    c.expect_no_publish(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn first_subscription_replays_no_history() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "").await;
    publish_n(&broker, "history/t", 0..3).await;
    let mut c = device(&broker, "newcomer", "history/t").await;
    c.expect_no_publish(Duration::from_millis(500)).await;
    publish_n(&broker, "history/t", 3..4).await;
    assert_eq!(receive_n(&mut c, 1).await, expected(3..4));
}

#[tokio::test]
async fn two_offline_subscribers_each_get_their_copy_of_one_stored_row() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "").await;
    for id in ["a", "b"] {
        device(&broker, id, "shared/news").await.disconnect().await;
    }
    publish_n(&broker, "shared/news", 0..4).await;
    for id in ["a", "b"] {
        let mut c = device(&broker, id, "shared/news").await;
        assert_eq!(receive_n(&mut c, 4).await, expected(0..4), "subscriber {id}");
        c.expect_no_publish(Duration::from_millis(200)).await;
    }
    let client = db.client().await;
    let rows: i64 = client
        .query_one("select count(*) from mqtt_msg", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 4, "stored once, however many subscribers");
}

#[tokio::test]
async fn wildcard_subscriptions_receive_offline_messages() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "").await;
    device(&broker, "plus", "site/+/temp").await.disconnect().await;
    device(&broker, "hash", "site/#").await.disconnect().await;
    let (mut p, _) = V4Client::connect(v4_options(broker.addr, "p", true)).await;
    p.publish("site/a/temp", QoS::AtLeastOnce, false, "1").await;
    p.publish("site/b/humidity", QoS::AtLeastOnce, false, "2").await;
    p.publish("site/b/temp", QoS::AtLeastOnce, false, "3").await;
    p.publish("other/a/temp", QoS::AtLeastOnce, false, "4").await;
    let mut plus = device(&broker, "plus", "site/+/temp").await;
    assert_eq!(receive_n(&mut plus, 2).await, vec!["1", "3"]);
    plus.expect_no_publish(Duration::from_millis(200)).await;
    let mut hash = device(&broker, "hash", "site/#").await;
    assert_eq!(receive_n(&mut hash, 3).await, vec!["1", "2", "3"]);
    hash.expect_no_publish(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn paging_drains_a_backlog_larger_than_a_page() {
    let db = TestDb::create().await;
    let rules = r##"backend.pgsql.hook.session.subscribed.1  = {"topic": "#", "action": {"function": "on_message_fetch"}, "offline_opts": {"max_returned_count": 3}, "pool": "pool1"}"##;
    let conf = pgsql_conf(&db, &EMQX_DEFAULT_RULES.replace(
        r##"backend.pgsql.hook.session.subscribed.1  = {"topic": "#", "action": {"function": "on_message_fetch"}, "pool": "pool1"}"##,
        rules,
    ));
    let broker =
        Broker::start_with_files("plugins.load = backend_pgsql\n", &[("backend_pgsql.conf", &conf)]).await;
    device(&broker, "pager", "big/backlog").await.disconnect().await;
    publish_n(&broker, "big/backlog", 0..10).await;
    let mut c = device(&broker, "pager", "big/backlog").await;
    assert_eq!(
        receive_n(&mut c, 10).await,
        expected(0..10),
        "nothing skipped, oldest first"
    );
    c.expect_no_publish(Duration::from_millis(300)).await;
    c.disconnect().await;
    let mut c = device(&broker, "pager", "big/backlog").await;
    c.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn live_messages_during_a_paged_replay_arrive_once_in_order() {
    let db = TestDb::create().await;
    let broker = paged_broker(&db, 5).await;
    device(&broker, "seam", "seam/t").await.disconnect().await;
    publish_n(&broker, "seam/t", 0..30).await;
    // Reconnect and, while the backlog is being paged, keep publishing.
    let live = {
        let addr = broker.addr;
        tokio::spawn(async move {
            let (mut p, _) = V4Client::connect(v4_options(addr, "live-pub", true)).await;
            for i in 30..50 {
                p.publish("seam/t", QoS::AtLeastOnce, false, format!("m{i}"))
                    .await;
            }
        })
    };
    let mut c = device(&broker, "seam", "seam/t").await;
    let got = receive_n(&mut c, 50).await;
    live.await.unwrap();
    assert_eq!(got, expected(0..50), "once each, in id order");
    c.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn time_range_excludes_old_rows() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "backend.pgsql.time_range = 1h\n").await;
    device(&broker, "tr", "tr/t").await.disconnect().await;
    publish_n(&broker, "tr/t", 0..2).await;
    let client = db.client().await;
    // The first one arrived three hours ago.
    client
        .execute("update mqtt_msg set arrived = arrived - interval '3 hours' where id = (select min(id) from mqtt_msg)", &[])
        .await
        .unwrap();
    let mut c = device(&broker, "tr", "tr/t").await;
    assert_eq!(receive_n(&mut c, 1).await, vec!["m1"]);
    c.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn binary_payloads_round_trip_through_the_database() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "").await;
    device(&broker, "bin", "bin/t").await.disconnect().await;
    let payload: Vec<u8> = (0..=255u8).rev().collect();
    let (mut p, _) = V4Client::connect(v4_options(broker.addr, "p", true)).await;
    p.publish("bin/t", QoS::AtLeastOnce, false, payload.clone()).await;
    let mut c = device(&broker, "bin", "bin/t").await;
    assert_eq!(c.next_publish().await.payload.to_vec(), payload);
}

/// The next page is read as soon as the previous one is handed to the
/// session (it does not wait for the acknowledgements: a backlog of 100,000
/// took 8.8 s in pages of 500 that way), but the session never holds more
/// than two pages the client has not acknowledged.
#[tokio::test]
async fn a_paged_replay_runs_at_most_two_pages_ahead_of_the_acknowledgements() {
    let db = TestDb::create().await;
    let broker = paged_broker(&db, 3).await;
    device(&broker, "ahead", "ahead/t").await.disconnect().await;
    publish_n(&broker, "ahead/t", 0..12).await;

    let mut opts = v4_options(broker.addr, "ahead", true);
    opts.set_manual_acks(true);
    let (mut c, _) = V4Client::connect(opts).await;
    c.subscribe("ahead/t", QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(c.next_publish().await);
    }
    assert_eq!(
        got.iter().map(text).collect::<Vec<_>>(),
        expected(0..6),
        "two pages without any acknowledgement"
    );
    c.expect_no_publish(Duration::from_millis(300)).await;

    // Acknowledging the first page lets the third one come.
    for p in &got[..3] {
        ack_now(&mut c, p).await;
    }
    let mut more = Vec::new();
    for _ in 0..3 {
        more.push(c.next_publish().await);
    }
    assert_eq!(more.iter().map(text).collect::<Vec<_>>(), expected(6..9));
    c.expect_no_publish(Duration::from_millis(300)).await;

    for p in got[3..].iter().chain(&more) {
        ack_now(&mut c, p).await;
    }
    let mut last = Vec::new();
    for _ in 0..3 {
        let p = c.next_publish().await;
        ack_now(&mut c, &p).await;
        last.push(p);
    }
    assert_eq!(last.iter().map(text).collect::<Vec<_>>(), expected(9..12));
    c.expect_no_publish(Duration::from_millis(300)).await;
    c.disconnect().await;

    // Everything was acknowledged: nothing comes again.
    let mut c = device(&broker, "ahead", "ahead/t").await;
    c.expect_no_publish(Duration::from_millis(300)).await;
}

/// The topics of the stored rows, in id order.
async fn stored_topics(pg: &tokio_postgres::Client) -> Vec<String> {
    pg.query("select topic::text from mqtt_msg order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// `backend.pgsql.msg_retention.<N>`: the first rule whose filter matches a
/// message's topic decides how long it is kept, rows no rule matches keep
/// `msg_retention`, and a device that comes back receives what is kept.
#[tokio::test]
async fn retention_rules_by_topic_decide_what_a_returning_device_still_gets() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(
        &db,
        "backend.pgsql.msg_retention = 10m\n\
         backend.pgsql.msg_retention.1 = short/# 20s\n\
         backend.pgsql.msg_retention.2 = keep/# infinity\n\
         backend.pgsql.msg_retention.3 = short/keep/# infinity\n\
         backend.pgsql.msg_retention.4 = x.y 20s\n",
    )
    .await;
    let pg = db.client().await;
    device(&broker, "archive", "#").await.disconnect().await;
    let topics = ["short/a", "short/keep/x", "keep/b", "other/c", "x.y", "xzy"];
    let (mut p, _) = V4Client::connect(v4_options(broker.addr, "publisher", true)).await;
    for t in topics {
        p.publish_acked(t, QoS::AtLeastOnce, false, t).await;
    }
    assert_eq!(stored_topics(&pg).await, topics);

    // Five minutes old: past the 20 s rules (rule 1 decides for short/keep/x,
    // although rule 3 would keep it; `.` in x.y is no wildcard), within the
    // 10 minute default.
    pg.batch_execute("update mqtt_msg set arrived = now() - interval '5 minutes'")
        .await
        .unwrap();
    wait_for_db(
        &pg,
        "select count(*) from mqtt_msg where topic in ('short/a', 'short/keep/x', 'x.y')",
        Some(0),
    )
    .await;
    assert_eq!(stored_topics(&pg).await, ["keep/b", "other/c", "xzy"]);

    // Two hours old: past the default; keep/# is kept for ever.
    pg.batch_execute("update mqtt_msg set arrived = now() - interval '2 hours'")
        .await
        .unwrap();
    wait_for_db(
        &pg,
        "select count(*) from mqtt_msg where topic in ('other/c', 'xzy')",
        Some(0),
    )
    .await;
    assert_eq!(stored_topics(&pg).await, ["keep/b"]);
    broker.wait_for_log("retention: deleted expired messages").await;

    let mut archive = device(&broker, "archive", "#").await;
    let got = archive.next_publish().await;
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("keep/b", &b"keep/b"[..]));
    archive.expect_no_publish(Duration::from_millis(500)).await;
}

/// EMQX's proxy subscription: a row an operator puts in `mqtt_sub` for a
/// device that never connected stores from that moment; the device's first
/// connect (`on_subscribe_lookup`) drains what was published since, and
/// nothing from before.
#[tokio::test]
async fn a_subscription_provisioned_in_mqtt_sub_stores_from_then_for_a_device_never_seen() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    let (mut p, _) = V4Client::connect(v4_options(broker.addr, "backend-service", true)).await;
    p.publish_acked("devices/d1/cmd", QoS::AtLeastOnce, false, "before provisioning")
        .await;
    pg.execute(
        "insert into mqtt_sub (clientid, topic, qos) values ('d1', 'devices/d1/#', 1)",
        &[],
    )
    .await
    .unwrap();
    for cmd in ["cmd-1", "cmd-2", "cmd-3"] {
        p.publish_acked("devices/d1/cmd", QoS::AtLeastOnce, false, cmd)
            .await;
    }
    // The device's first connect: it subscribes to nothing itself.
    let (mut d1, _) = V4Client::connect(v4_options(broker.addr, "d1", true)).await;
    assert_eq!(receive_n(&mut d1, 3).await, ["cmd-1", "cmd-2", "cmd-3"]);
    d1.expect_no_publish(Duration::from_millis(500)).await;
    // And it stays subscribed: live messages arrive too.
    p.publish_acked("devices/d1/cmd", QoS::AtLeastOnce, false, "live")
        .await;
    assert_eq!(receive_n(&mut d1, 1).await, ["live"]);
}

/// A replay page also ends at 4 MiB of payload: twelve messages of 512 KiB
/// (6 MiB) come in two pages, every one once and in order.
#[tokio::test]
async fn large_messages_replay_in_pages_bounded_by_bytes() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "").await;
    device(&broker, "big-dev", "big/t").await.disconnect().await;
    let (mut p, _) = V4Client::connect(v4_options(broker.addr, "big-pub", true)).await;
    for i in 0..12u8 {
        p.publish_acked("big/t", QoS::AtLeastOnce, false, vec![i; 512 * 1024])
            .await;
    }
    let mut dev = device(&broker, "big-dev", "big/t").await;
    for i in 0..12u8 {
        let m = dev.next_publish().await;
        assert_eq!((m.payload.len(), m.payload[0]), (512 * 1024, i), "message {i}");
    }
    dev.expect_no_publish(Duration::from_millis(500)).await;
}
