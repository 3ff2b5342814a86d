//! `backend.pgsql.msg_delete_acked`: a stored message is deleted once every
//! subscription that needed it has acknowledged it, and not before.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::time::Duration;

use support::pgsql::*;
use support::*;

/// How many rows of `mqtt_msg` have `topic`.
fn count(topic: &str) -> String {
    format!(
        "select count(*) from mqtt_msg where topic = {}",
        sql_literal(topic)
    )
}

/// Polls until `sql` returns `want` (the deletion runs every 5 s, on
/// messages older than 2 s: longer than [`wait_for_db`] waits).
async fn wait_long(pg: &tokio_postgres::Client, sql: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = query_opt_i64(pg, sql).await;
        if got == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{sql}` is {got:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_message_goes_once_every_subscription_that_needed_it_acknowledged_it() {
    let db = TestDb::create().await;
    let pg = db.client().await;
    let broker = broker_with_pgsql(&db, "backend.pgsql.msg_delete_acked = on\n").await;
    device(&broker, "wide", "a/#").await.disconnect().await;
    device(&broker, "narrow", "a/b").await.disconnect().await;
    // Provisioned for a device never seen: it needs what arrives from now.
    pg.batch_execute("insert into mqtt_sub (clientid, topic, qos) values ('prov', 'p/#', 1)")
        .await
        .unwrap();
    publish_all(broker.addr, "pub", "a/b", &numbered(0..2)).await;
    publish_all(broker.addr, "pub", "a/c", &numbered(2..3)).await;
    publish_all(broker.addr, "pub", "p/x", &numbered(3..4)).await;
    publish_all(broker.addr, "pub", "nobody/x", &numbered(4..5)).await;

    // What no subscription needs goes first; everything else stays.
    wait_long(&pg, &count("nobody/x"), 0).await;
    broker
        .wait_for_log("deleted messages every subscription acknowledged")
        .await;
    assert_eq!(stored_ids(&pg, "a/b").await.len(), 2);
    assert_eq!(stored_ids(&pg, "a/c").await.len(), 1);
    assert_eq!(stored_ids(&pg, "p/x").await.len(), 1);

    // One of the two subscribers of a/b acknowledges: still needed by the other.
    let mut narrow = device(&broker, "narrow", "a/b").await;
    assert_eq!(receive_n(&mut narrow, 2).await, numbered(0..2));
    let ids = stored_ids(&pg, "a/b").await;
    wait_for_position(&pg, "narrow", "a/b", ids[1]).await;
    narrow.disconnect().await;
    let passes = broker.log_count("deleted messages every subscription acknowledged");
    publish_all(broker.addr, "pub", "nobody/y", &numbered(5..6)).await;
    wait_long(&pg, &count("nobody/y"), 0).await;
    assert!(broker.log_count("deleted messages every subscription acknowledged") > passes);
    assert_eq!(
        stored_ids(&pg, "a/b").await.len(),
        2,
        "`wide` has not acknowledged them"
    );

    // The other acknowledges: a/b and a/c go; p/x waits for its device.
    let mut wide = device(&broker, "wide", "a/#").await;
    assert_eq!(receive_n(&mut wide, 3).await, numbered(0..3));
    wide.disconnect().await;
    wait_long(&pg, "select count(*) from mqtt_msg where topic like 'a/%'", 0).await;
    assert_eq!(stored_ids(&pg, "p/x").await.len(), 1);

    let (mut prov, _) = V4Client::connect(v4_options(broker.addr, "prov", true)).await;
    assert_eq!(receive_n(&mut prov, 1).await, numbered(3..4));
    prov.disconnect().await;
    wait_long(&pg, "select count(*) from mqtt_msg", 0).await;

    // Nothing comes again.
    let mut wide = device(&broker, "wide", "a/#").await;
    wide.expect_no_publish(Duration::from_millis(500)).await;
}
