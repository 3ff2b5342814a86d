//! `backend.pgsql.msg_partition`: `mqtt_msg` partitioned by arrival time.
//! Today's table is converted at start without losing or repeating a
//! message, retention drops whole partitions, and brokers starting together
//! on one database convert it once.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::time::Duration;

use support::pgsql::*;
use support::*;

/// `mqtt_msg`'s relkind: `r` a plain table, `p` partitioned.
async fn relkind(pg: &tokio_postgres::Client) -> String {
    let row = pg
        .query_one(
            "select relkind::text from pg_class where oid = 'mqtt_msg'::regclass",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

/// The partitions of `mqtt_msg` (pg_inherits), by name.
async fn partitions(pg: &tokio_postgres::Client) -> Vec<String> {
    pg.query(
        "select c.relname::text from pg_inherits i join pg_class c on c.oid = i.inhrelid
         where i.inhparent = 'mqtt_msg'::regclass order by 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn table_exists(pg: &tokio_postgres::Client, name: &str) -> bool {
    query_opt_i64(
        pg,
        &format!(
            "select count(*) from pg_class where relname = {}",
            sql_literal(name)
        ),
    )
    .await
        == Some(1)
}

const PARTITIONED: &str = "mqtt_msg is now partitioned";

#[tokio::test]
async fn todays_table_is_converted_at_start_and_a_returning_device_gets_what_it_missed_once_in_order() {
    let db = TestDb::create().await;
    let pg = db.client().await;
    // Today: one plain table, a device offline with messages waiting.
    let mut broker = broker_with_pgsql(&db, "").await;
    device(&broker, "dev-1", "line/#").await.disconnect().await;
    publish_all(broker.addr, "pub", "line/1", &numbered(0..10)).await;
    assert_eq!(relkind(&pg).await, "r");
    broker.terminate().await;
    // Some of them stored hours ago (different partitions once converted).
    pg.batch_execute("update mqtt_msg set arrived = arrived - interval '5 hours' where id <= 5")
        .await
        .unwrap();
    let before = stored_ids(&pg, "line/1").await;
    assert_eq!(before.len(), 10);

    let broker = broker_with_pgsql(&db, "backend.pgsql.msg_partition = 1h\n").await;
    broker.wait_for_log(PARTITIONED).await;
    assert_eq!(relkind(&pg).await, "p");
    let parts = partitions(&pg).await;
    assert!(parts.contains(&"mqtt_msg_legacy".to_string()), "{parts:?}");
    assert!(parts.contains(&"mqtt_msg_default".to_string()), "{parts:?}");
    assert!(
        parts.len() >= 2 + 4,
        "the current partition and 3 ahead: {parts:?}"
    );
    assert!(parts.iter().filter(|p| p.starts_with("mqtt_msg_p")).count() >= 4);
    assert_eq!(stored_ids(&pg, "line/1").await, before, "no row lost or moved");

    // New messages take ids above the old ones (the sequence is kept) and
    // land in the new partitions.
    publish_all(broker.addr, "pub", "line/1", &numbered(10..15)).await;
    let after = stored_ids(&pg, "line/1").await;
    assert_eq!(after.len(), 15);
    assert!(after[10] > before[9], "{after:?}");
    let legacy = query_opt_i64(
        &pg,
        "select count(*) from mqtt_msg where tableoid = 'mqtt_msg_legacy'::regclass",
    )
    .await;
    assert_eq!(legacy, Some(10), "the old rows stay where they were");

    let mut dev = device(&broker, "dev-1", "line/#").await;
    assert_eq!(receive_n(&mut dev, 15).await, numbered(0..15));
    dev.expect_no_publish(Duration::from_millis(500)).await;
    dev.disconnect().await;
    let mut dev = device(&broker, "dev-1", "line/#").await;
    dev.expect_no_publish(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn retention_drops_the_old_table_whole_once_its_newest_row_is_past_every_retention() {
    let db = TestDb::create().await;
    let pg = db.client().await;
    let mut broker = broker_with_pgsql(&db, "").await;
    device(&broker, "dev-1", "t/#").await.disconnect().await;
    publish_all(broker.addr, "pub", "t/old", &numbered(0..5)).await;
    broker.terminate().await;
    // Everything in today's table is 10 hours old: past the rules' 2 hours.
    pg.batch_execute("update mqtt_msg set arrived = arrived - interval '10 hours'")
        .await
        .unwrap();

    let broker = broker_with_pgsql(
        &db,
        "backend.pgsql.msg_partition = 1h\n\
         backend.pgsql.msg_retention = 2h\n\
         backend.pgsql.msg_retention.1 = t/keep/# 10s\n",
    )
    .await;
    broker.wait_for_log(PARTITIONED).await;
    broker
        .wait_for_log("retention: dropped expired mqtt_msg partitions")
        .await;
    assert!(!table_exists(&pg, "mqtt_msg_legacy").await, "dropped as a whole");
    assert_eq!(stored_ids(&pg, "t/old").await, Vec::<i64>::new());
    // A row older than every partition lands in the DEFAULT partition, which
    // is never dropped: the row sweep deletes it there.
    pg.batch_execute(
        "insert into mqtt_msg (topic, qos, payload, arrived) values ('t/late', 1, 'x', now() - interval '1 day')",
    )
    .await
    .unwrap();
    wait_for_db(
        &pg,
        "select count(*) from mqtt_msg_default where topic = 't/late'",
        Some(1),
    )
    .await;
    wait_for_db(
        &pg,
        "select count(*) from mqtt_msg where topic = 't/late'",
        Some(0),
    )
    .await;
    assert!(table_exists(&pg, "mqtt_msg_default").await);

    publish_all(broker.addr, "pub", "t/new", &numbered(5..8)).await;
    let mut dev = device(&broker, "dev-1", "t/#").await;
    assert_eq!(receive_n(&mut dev, 3).await, numbered(5..8));
    dev.expect_no_publish(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn retention_drops_partitions_as_they_age_and_keeps_the_newer_ones() {
    let db = TestDb::create().await;
    let pg = db.client().await;
    let broker = broker_with_pgsql(
        &db,
        "backend.pgsql.msg_partition = 1s\nbackend.pgsql.msg_retention = 4s\n",
    )
    .await;
    broker.wait_for_log(PARTITIONED).await;
    device(&broker, "dev-1", "t/#").await.disconnect().await;
    publish_all(broker.addr, "pub", "t/a", &numbered(0..1)).await;
    let part: String = pg
        .query_one(
            "select tableoid::regclass::text from mqtt_msg where topic = 't/a'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(part.starts_with("mqtt_msg_p"), "{part}");

    // About 5 s later the partition of m0 is dropped: a table, not rows.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while table_exists(&pg, &part).await {
        assert!(tokio::time::Instant::now() < deadline, "{part} still exists");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored_ids(&pg, "t/a").await, Vec::<i64>::new());
    // Newer partitions are there, and what they hold is delivered.
    publish_all(broker.addr, "pub", "t/b", &numbered(1..2)).await;
    assert_eq!(stored_ids(&pg, "t/b").await.len(), 1);
    let mut dev = device(&broker, "dev-1", "t/#").await;
    assert_eq!(receive_n(&mut dev, 1).await, numbered(1..2));
    dev.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn two_brokers_starting_at_once_convert_the_table_once() {
    let db = TestDb::create().await;
    let pg = db.client().await;
    let mut first = broker_with_pgsql(&db, "").await;
    publish_all(first.addr, "pub", "t/x", &numbered(0..3)).await;
    first.terminate().await;
    let before = stored_ids(&pg, "t/x").await;

    let conf = "backend.pgsql.msg_partition = 1d\n";
    let (a, b) = tokio::join!(broker_with_pgsql(&db, conf), broker_with_pgsql(&db, conf));
    // Both started; one of them converted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.log_count(PARTITIONED) + b.log_count(PARTITIONED) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "nobody converted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.log_count(PARTITIONED) + b.log_count(PARTITIONED), 1);
    assert_eq!(relkind(&pg).await, "p");
    assert_eq!(stored_ids(&pg, "t/x").await, before);
    // Both store into it.
    publish_all(a.addr, "pub-a", "t/x", &numbered(3..4)).await;
    publish_all(b.addr, "pub-b", "t/x", &numbered(4..5)).await;
    assert_eq!(stored_ids(&pg, "t/x").await.len(), 5);
    for broker in [&a, &b] {
        assert!(!broker.logs().contains("maintenance failed"), "{}", broker.logs());
    }
}

#[tokio::test]
async fn emqx_schema_is_converted_too_and_emqx_style_inserts_keep_working() {
    let db = TestDb::create().await;
    db.batch_execute(EMQX_SCHEMA).await;
    let pg = db.client().await;
    // A row EMQX wrote without an arrival time (its column allows NULL).
    pg.batch_execute(
        "insert into mqtt_msg (msgid, sender, topic, qos, retain, payload) values ('a1', 'emqx', 'e/t', 1, 0, 'from emqx')",
    )
    .await
    .unwrap();
    let broker = broker_with_pgsql(&db, "backend.pgsql.msg_partition = 1d\n").await;
    broker.wait_for_log(PARTITIONED).await;
    assert_eq!(relkind(&pg).await, "p");
    assert_emqx_text_payload(&pg).await;
    assert_eq!(
        query_opt_i64(&pg, "select count(*) from mqtt_msg where arrived is not null").await,
        Some(1),
        "the NULL arrival became the conversion time"
    );
    let dev = device(&broker, "emqx-dev", "e/#").await;
    dev.disconnect().await;
    // EMQX's own INSERT (a node still running EMQX on the same database).
    pg.batch_execute(
        "insert into mqtt_msg (msgid, sender, topic, qos, retain, payload, arrived) \
         values ('a2', 'emqx', 'e/t', 1, 0, 'emqx again', now())",
    )
    .await
    .unwrap();
    publish_all(broker.addr, "pub", "e/t", &["postbox".to_string()]).await;
    let mut dev = device(&broker, "emqx-dev", "e/#").await;
    assert_eq!(receive_n(&mut dev, 2).await, ["emqx again", "postbox"]);
    dev.expect_no_publish(Duration::from_millis(300)).await;
}

/// A row stored for a time no partition covers yet (a clock ahead) lands
/// in the DEFAULT partition and stays there: maintenance creates the
/// partitions around it but none for its range (moving it out made it
/// invisible to readers for an instant), and the device still gets it.
#[tokio::test]
async fn a_row_no_partition_covers_yet_stays_in_the_default_partition_and_is_delivered() {
    let db = TestDb::create().await;
    let pg = db.client().await;
    let broker = broker_with_pgsql(&db, "backend.pgsql.msg_partition = 1s\n").await;
    broker.wait_for_log(PARTITIONED).await;
    device(&broker, "dev-1", "f/#").await.disconnect().await;
    // Stored with a clock 8 s ahead: past the partitions created ahead.
    pg.batch_execute(
        "insert into mqtt_msg (topic, qos, payload, arrived) values ('f/t', 1, 'ahead', now() + interval '8 seconds')",
    )
    .await
    .unwrap();
    let home = "select tableoid::regclass::text from mqtt_msg where topic = 'f/t'";
    let at: String = pg.query_one(home, &[]).await.unwrap().get(0);
    assert_eq!(at, "mqtt_msg_default");
    // Maintenance goes past the row's time (partitions beyond it exist)...
    wait_for_db(
        &pg,
        "select (max(upper_bound) > (select arrived from mqtt_msg where topic = 'f/t'))::int4::int8
         from mqtt_msg_partitions() where not is_default",
        Some(1),
    )
    .await;
    // ...with none for the row's range; the row never left the DEFAULT partition.
    let at: String = pg.query_one(home, &[]).await.unwrap().get(0);
    assert_eq!(at, "mqtt_msg_default");
    assert_eq!(
        query_opt_i64(
            &pg,
            "select count(*) from mqtt_msg_partitions() p, mqtt_msg m where m.topic = 'f/t'
             and not p.is_default and m.arrived >= p.lower_bound and m.arrived < p.upper_bound"
        )
        .await,
        Some(0)
    );
    let mut dev = device(&broker, "dev-1", "f/#").await;
    assert_eq!(receive_n(&mut dev, 1).await, ["ahead"]);
    dev.expect_no_publish(Duration::from_millis(300)).await;
}
