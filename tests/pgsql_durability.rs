//! Offline delivery when things go wrong: acknowledgements out of order,
//! broker crashes, restored subscriptions racing the client, two brokers on
//! one database, a database that goes away, and retention.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, PubAckReason};
use rumqttc::QoS;
use support::pgsql::*;
use support::*;

/// Connects a clean-session device and subscribes it to `filters` at QoS 1.
async fn device(broker: &Broker, id: &str, filters: &[&str], manual_acks: bool) -> V4Client {
    let mut opts = v4_options(broker.addr, id, true);
    opts.set_manual_acks(manual_acks);
    let (mut c, _) = V4Client::connect(opts).await;
    for f in filters {
        c.subscribe(f, QoS::AtLeastOnce).await;
    }
    c
}

async fn receive(c: &mut V4Client, n: usize) -> Vec<rumqttc::Publish> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        got.push(c.next_publish().await);
    }
    got
}

fn texts(ps: &[rumqttc::Publish]) -> Vec<String> {
    ps.iter().map(text).collect()
}

#[tokio::test]
async fn out_of_order_acks_never_move_the_position_back_and_only_unacked_messages_come_again() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    let (topic, side) = ("ooo/t", "ooo/side");
    device(&broker, "ooo", &[topic, side], false)
        .await
        .disconnect()
        .await;
    let before = position(&pg, "ooo", topic).await.expect("registered");

    publish_all(broker.addr, "pub", topic, &numbered(0..4)).await;
    let ids = stored_ids(&pg, topic).await;
    assert_eq!(ids.len(), 4);

    let mut c = device(&broker, "ooo", &[topic, side], true).await;
    let got = receive(&mut c, 4).await;
    assert_eq!(texts(&got), numbered(0..4));
    // m3 first, then m1; m0 and m2 stay unacknowledged.
    ack_now(&mut c, &got[3]).await;
    ack_now(&mut c, &got[1]).await;
    // Barrier: a stored message on another subscription of the same client,
    // acknowledged after them. Positions are written in acknowledgement order,
    // so once this one is recorded, the two above have been handled too.
    publish_all(broker.addr, "pub", side, &["barrier".to_string()]).await;
    let b = c.next_publish().await;
    assert_eq!(text(&b), "barrier");
    ack_now(&mut c, &b).await;
    let barrier_id = *stored_ids(&pg, side).await.last().unwrap();
    wait_for_position(&pg, "ooo", side, barrier_id).await;
    assert_eq!(
        position(&pg, "ooo", topic).await,
        Some(before),
        "m0 is unacknowledged: the position stays before it"
    );
    c.disconnect().await;

    let mut c = device(&broker, "ooo", &[topic, side], true).await;
    let again = receive(&mut c, 2).await;
    assert_eq!(texts(&again), ["m0", "m2"], "only the unacknowledged ones");
    c.expect_no_publish(Duration::from_millis(500)).await;
    assert_eq!(position(&pg, "ooo", topic).await, Some(before));
    ack_now(&mut c, &again[0]).await;
    ack_now(&mut c, &again[1]).await;
    wait_for_position(&pg, "ooo", topic, ids[3]).await;
    c.disconnect().await;

    let mut c = device(&broker, "ooo", &[topic, side], true).await;
    c.expect_no_publish(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_persistent_client_gets_what_it_missed_across_a_broker_crash() {
    let db = TestDb::create().await;
    let mut broker = broker_with_pgsql(&db, SUBSCRIBE_STORE_RULES).await;
    let pg = db.client().await;
    let filter = "plant/+/alarm";
    let (mut c, _) = V4Client::connect(v4_options(broker.addr, "persist", false)).await;
    c.subscribe(filter, QoS::AtLeastOnce).await;
    wait_for_db(
        &pg,
        "select qos::int8 from mqtt_sub where clientid = 'persist' and topic = 'plant/+/alarm'",
        Some(1),
    )
    .await;
    c.disconnect().await;

    broker.kill().await;
    broker.restart().await;

    let (mut p, _) = V4Client::connect(v4_options(broker.addr, "pub", true)).await;
    for i in 0..5 {
        p.publish(
            &format!("plant/{i}/alarm"),
            QoS::AtLeastOnce,
            false,
            format!("m{i}"),
        )
        .await;
    }
    p.disconnect().await;

    // Reconnects without subscribing: the subscription comes from mqtt_sub.
    let (mut c, _) = V4Client::connect(v4_options(broker.addr, "persist", false)).await;
    assert_eq!(texts(&receive(&mut c, 5).await), numbered(0..5));
    c.expect_no_publish(Duration::from_millis(500)).await;
    let last = query_opt_i64(&pg, "select max(id)::int8 from mqtt_msg")
        .await
        .unwrap();
    wait_for_position(&pg, "persist", filter, last).await;
    c.disconnect().await;

    // Acknowledged before the next crash: nothing comes again.
    broker.kill().await;
    broker.restart().await;
    let (mut c, _) = V4Client::connect(v4_options(broker.addr, "persist", false)).await;
    c.expect_no_publish(Duration::from_millis(500)).await;
}

/// A client that subscribes itself on connecting, while on_subscribe_lookup
/// restores the same subscription from mqtt_sub: with `eager`, the SUBSCRIBE
/// goes out right behind CONNECT (usually handled before the restore); else
/// after CONNACK (usually after it).
async fn restore_races_resubscribe(rules: &str, backlog: usize, eager: bool) {
    let db = TestDb::create().await;
    let conf = pgsql_conf(&db, rules);
    let broker =
        Broker::start_with_files("plugins.load = backend_pgsql\n", &[("backend_pgsql.conf", &conf)]).await;
    let pg = db.client().await;
    let filter = "race/t";
    device(&broker, "racer", &[filter], false)
        .await
        .disconnect()
        .await;
    pg.batch_execute("insert into mqtt_sub (clientid, topic, qos) values ('racer', 'race/t', 1)")
        .await
        .unwrap();
    publish_all(broker.addr, "pub", filter, &numbered(0..backlog)).await;

    let mut c = if eager {
        let (client, events) = rumqttc::AsyncClient::new(v4_options(broker.addr, "racer", true), 64);
        // Queued before CONNECT goes out: sent right behind it.
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        V4Client {
            client,
            events,
            backlog: Default::default(),
        }
    } else {
        device(&broker, "racer", &[filter], false).await
    };
    let got = receive(&mut c, backlog).await;
    assert_eq!(
        texts(&got),
        numbered(0..backlog),
        "each missed message once, in order"
    );
    c.expect_no_publish(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_restored_subscription_racing_the_clients_own_subscribe_replays_once() {
    restore_races_resubscribe(EMQX_DEFAULT_RULES, 10, true).await;
    restore_races_resubscribe(EMQX_DEFAULT_RULES, 10, false).await;
}

#[tokio::test]
async fn a_restored_subscription_racing_the_clients_own_subscribe_replays_once_when_paged() {
    let rules = EMQX_DEFAULT_RULES.replace(
        r##""action": {"function": "on_message_fetch"}, "pool""##,
        r##""action": {"function": "on_message_fetch"}, "offline_opts": {"max_returned_count": 4}, "pool""##,
    );
    assert_ne!(rules, EMQX_DEFAULT_RULES);
    restore_races_resubscribe(&rules, 13, true).await;
    restore_races_resubscribe(&rules, 13, false).await;
}

/// Everything `c` receives until it has `n` messages or nothing arrives for 3 s.
async fn collect(c: &mut V4Client, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(ev) = c.backlog.pop_front() {
        if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
            got.push(text(&p));
        }
    }
    while got.len() < n {
        match c.poll_once(Duration::from_secs(3)).await {
            None => break,
            Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => got.push(text(&p)),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("connection failed after {} messages: {e:?}", got.len()),
        }
    }
    got
}

#[tokio::test]
async fn messages_published_while_paged_backlogs_drain_are_never_lost() {
    let db = TestDb::create().await;
    let rules = EMQX_DEFAULT_RULES.replace(
        r##""action": {"function": "on_message_fetch"}, "pool""##,
        r##""action": {"function": "on_message_fetch"}, "offline_opts": {"max_returned_count": 3}, "pool""##,
    );
    let conf = pgsql_conf(&db, &rules);
    let broker =
        Broker::start_with_files("plugins.load = backend_pgsql\n", &[("backend_pgsql.conf", &conf)]).await;
    let ids: Vec<String> = (0..4).map(|i| format!("drain-{i}")).collect();
    for id in &ids {
        device(&broker, id, &["drain/t"], false).await.disconnect().await;
    }
    publish_all(broker.addr, "backlog", "drain/t", &numbered(0..15)).await;
    // Each subscriber's backlog ends while new messages keep arriving: the
    // moment its replay completes is the seam where a message could fall through.
    let addr = broker.addr;
    let live = tokio::spawn(async move { publish_all(addr, "live", "drain/t", &numbered(15..55)).await });
    let mut readers = Vec::new();
    for id in ids {
        readers.push(tokio::spawn(async move {
            let (mut c, _) = V4Client::connect(v4_options(addr, &id, true)).await;
            c.subscribe("drain/t", QoS::AtLeastOnce).await;
            let got = collect(&mut c, 55).await;
            (id, got)
        }));
    }
    live.await.unwrap();
    for r in readers {
        let (id, got) = r.await.unwrap();
        assert_eq!(got, numbered(0..55), "{id}: every message once, in order");
    }
}

#[tokio::test]
async fn an_online_subscriber_gets_every_message_of_concurrent_publishers() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "").await;
    // Stored ids are assigned in commit order, but the publishers' sessions
    // route independently: live messages reach the subscriber out of id order.
    let mut c = device(&broker, "online", &["busy/#"], false).await;
    const PUBLISHERS: usize = 6;
    const EACH: usize = 40;
    let mut pubs = Vec::new();
    for k in 0..PUBLISHERS {
        let addr = broker.addr;
        pubs.push(tokio::spawn(async move {
            let payloads: Vec<String> = (0..EACH).map(|i| format!("p{k}-{i}")).collect();
            publish_all(addr, &format!("busy-pub-{k}"), &format!("busy/{k}"), &payloads).await;
        }));
    }
    let got = collect(&mut c, PUBLISHERS * EACH).await;
    for p in pubs {
        p.await.unwrap();
    }
    c.expect_no_publish(Duration::from_millis(300)).await;
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(
        (got.len(), unique.len()),
        (PUBLISHERS * EACH, PUBLISHERS * EACH),
        "every message once"
    );
    for k in 0..PUBLISHERS {
        let prefix = format!("p{k}-");
        let mine: Vec<&String> = got.iter().filter(|p| p.starts_with(&prefix)).collect();
        let want: Vec<String> = (0..EACH).map(|i| format!("p{k}-{i}")).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>(), "publisher {k}'s order");
    }
}

#[tokio::test]
async fn two_brokers_writing_one_database_lose_and_duplicate_nothing() {
    let db = TestDb::create().await;
    let a = broker_with_pgsql(&db, "").await;
    let b = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    let filter = "fleet/#";
    device(&a, "collector", &[filter], false).await.disconnect().await;

    const N: usize = 200;
    let mut writers = Vec::new();
    for (name, addr) in [("a", a.addr), ("b", b.addr)] {
        writers.push(tokio::spawn(async move {
            let payloads: Vec<String> = (0..N).map(|i| format!("{name}-{i}")).collect();
            publish_all(addr, &format!("pub-{name}"), &format!("fleet/{name}"), &payloads).await;
        }));
    }
    for w in writers {
        w.await.unwrap();
    }

    assert_eq!(
        query_opt_i64(&pg, "select count(*) from mqtt_msg").await,
        Some(2 * N as i64)
    );
    assert_eq!(
        query_opt_i64(&pg, "select count(distinct payload) from mqtt_msg").await,
        Some(2 * N as i64),
        "each message's row exists once"
    );
    assert_eq!(
        query_opt_i64(&pg, "select count(distinct id) from mqtt_msg").await,
        Some(2 * N as i64)
    );

    // Reconnect through the other broker.
    let mut c = device(&b, "collector", &[filter], false).await;
    let got = texts(&receive(&mut c, 2 * N).await);
    c.expect_no_publish(Duration::from_millis(500)).await;
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), 2 * N, "every message exactly once");
    for name in ["a", "b"] {
        let mine: Vec<&String> = got.iter().filter(|p| p.starts_with(name)).collect();
        let want: Vec<String> = (0..N).map(|i| format!("{name}-{i}")).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>(), "publisher {name}'s order");
    }
    // Delivered in id order.
    let rows = pg
        .query(
            "select convert_from(payload, 'UTF8') from mqtt_msg order by id",
            &[],
        )
        .await
        .unwrap();
    let by_id: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, by_id);
    let last = query_opt_i64(&pg, "select max(id)::int8 from mqtt_msg")
        .await
        .unwrap();
    wait_for_position(&pg, "collector", filter, last).await;
}

/// A database outage (connections refused and cut; tests/pgsql_faults.rs
/// restarts a real server): nothing is acknowledged or routed that is not
/// stored. MQTT 5 publishers are told (PUBACK 0x80 after store_timeout) and
/// their message is not delivered; a 3.1.1 publisher, which cannot be told,
/// is acknowledged once the database takes the message, and only then is it
/// delivered.
#[tokio::test]
async fn a_database_outage_holds_or_refuses_publishes_and_heals() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(
        &db,
        "backend.pgsql.store_timeout = 1s
",
    )
    .await;
    let topic = "outage/t";
    let mut sub = device(&broker, "watcher", &[topic], false).await;
    let (mut p5, _) = V5Client::connect(v5_options(broker.addr, "pub-v5", true)).await;
    let (mut p4, _) = V4Client::connect(v4_options(broker.addr, "pub-v4", true)).await;
    p5.publish(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "before")
        .await;
    assert_eq!(text(&sub.next_publish().await), "before");

    // The outage: no new connections, and the existing ones are cut.
    let reopen = outage_start(&db).await;

    // MQTT 5: told the message was not stored.
    let ack = p5
        .publish_acked(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "during-v5",
        )
        .await;
    match ack {
        Some(rumqttc::v5::Event::Incoming(V5Packet::PubAck(a))) => assert_eq!(
            a.reason,
            PubAckReason::UnspecifiedError,
            "expected 0x80, got {:?}",
            a.reason
        ),
        other => panic!("expected a PUBACK, got {other:?}"),
    }

    // MQTT 3.1.1 has no error code: no PUBACK while nothing can be stored.
    p4.client
        .publish(topic, QoS::AtLeastOnce, false, "during-v4")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match p4.poll_once(left).await {
            None => break,
            Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(a)))) => {
                panic!("a 3.1.1 publisher was acknowledged during the outage: {a:?}")
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("publisher connection failed: {e:?}"),
        }
    }
    // Neither message went out unstored.
    sub.expect_no_publish(Duration::from_millis(200)).await;

    // The database comes back: the held 3.1.1 message is stored, acknowledged
    // and delivered; the refused MQTT 5 one is not.
    drop(reopen);
    p4.poll_until(|ev| matches!(ev, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))).then_some(()))
        .await;
    assert_eq!(text(&sub.next_publish().await), "during-v4");
    let ack = p5
        .publish_acked(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "after")
        .await;
    match ack {
        Some(rumqttc::v5::Event::Incoming(V5Packet::PubAck(a))) => {
            assert_eq!(a.reason, PubAckReason::Success, "stored again")
        }
        other => panic!("expected a PUBACK, got {other:?}"),
    }
    assert_eq!(text(&sub.next_publish().await), "after");
    p4.publish(topic, QoS::AtLeastOnce, false, "after-v4").await;
    assert_eq!(text(&sub.next_publish().await), "after-v4");
    let pg = db.client().await;
    let rows = pg
        .query(
            "select convert_from(payload, 'UTF8') from mqtt_msg order by id",
            &[],
        )
        .await
        .unwrap();
    let stored: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        stored,
        ["before", "during-v4", "after", "after-v4"],
        "everything acknowledged, once"
    );
    let logs = broker.logs();
    assert_eq!(
        logs.matches("cannot store messages").count(),
        1,
        "the outage is logged once\n{logs}"
    );
}

#[tokio::test]
async fn retention_deletes_expired_rows_and_keeps_newer_ones() {
    let db = TestDb::create().await;
    // 10 s rather than 2 s: the sweep runs every second either way, and the
    // "newer" rows must not themselves expire while the test looks at them.
    let broker = broker_with_pgsql(&db, "backend.pgsql.msg_retention = 10s\n").await;
    let pg = db.client().await;
    publish_all(broker.addr, "pub", "ret/t", &numbered(0..4)).await;
    let ids = stored_ids(&pg, "ret/t").await;
    pg.execute(
        "update mqtt_msg set arrived = now() - interval '1 hour' where id = any($1)",
        &[&&ids[..2]],
    )
    .await
    .unwrap();
    wait_for_db(
        &pg,
        &format!("select count(*) from mqtt_msg where id <= {}", ids[1]),
        Some(0),
    )
    .await;
    assert_eq!(stored_ids(&pg, "ret/t").await, &ids[2..], "newer rows stay");
    broker.wait_for_log("retention: deleted expired messages").await;
}

/// The writer keeps two batches in flight (the second waits for the write
/// lock on the server). When the first fails on a bad row, its other rows
/// are written again one by one; the second batch must not commit before
/// them, or a publisher's later message would get a smaller id than its
/// earlier one, and an offline subscriber would receive them out of order.
#[tokio::test]
async fn a_batch_behind_a_failed_one_commits_after_the_failed_ones_rows() {
    use backend_pgsql::writer::{StoreRequest, StoreStats, Writer};
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    let db = TestDb::create().await;
    let pg = db.client().await;
    let mut schema_client = db.client().await;
    backend_pgsql::schema::migrate(&mut schema_client).await.unwrap();
    let schema = backend_pgsql::schema::detect(&schema_client).await.unwrap();
    // A bad row fails its statement (after waiting for lock 43); a row on
    // order/wait waits for lock 42. The test holds both to set the scene.
    pg.batch_execute(
        "CREATE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.topic = 'order/wait' THEN PERFORM pg_advisory_xact_lock_shared(42); END IF;
           IF NEW.topic = 'order/bad' THEN
             PERFORM pg_advisory_xact_lock_shared(43);
             RAISE EXCEPTION 'a bad row';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER test_gate BEFORE INSERT ON mqtt_msg FOR EACH ROW EXECUTE FUNCTION test_gate();",
    )
    .await
    .unwrap();
    let server = pg_server();
    let (host, port) = server.rsplit_once(':').unwrap();
    let pool = backend_pgsql::pool::build(&backend_pgsql::config::PoolConfig {
        name: "pool1".into(),
        host: host.to_string(),
        port: port.parse().unwrap(),
        pool_size: 4,
        username: "postgres".into(),
        password: None,
        database: db.name.clone(),
        ssl: Default::default(),
        line: 1,
    })
    .unwrap();
    // Two rows per batch, so the three queued below form two batches.
    let cell = backend_pgsql::schema::SchemaCell::default();
    cell.set(schema);
    let writer = Writer::spawn(pool, cell, 2, Arc::new(StoreStats::default()));
    let req = |topic: &str, payload: &str| StoreRequest {
        msgid: String::new(),
        sender: Some(Arc::from("p")),
        topic: Arc::from(topic),
        qos: 1,
        retain: 0,
        payload: bytes::Bytes::from(payload.to_string()),
        expiry_secs: None,
        properties: Default::default(),
    };
    let timeout = Duration::from_secs(20);

    let gate = db.client().await;
    gate.batch_execute("SELECT pg_advisory_lock(42); SELECT pg_advisory_lock(43);")
        .await
        .unwrap();
    let waiters = "select count(*) from pg_locks where locktype = 'advisory' and not granted";
    let w = {
        let writer = writer.clone();
        let r = req("order/wait", "w");
        tokio::spawn(async move {
            tokio::time::timeout(timeout, writer.store(r))
                .await
                .expect("the writer answers within the test's limit")
        })
    };
    wait_for_db(&pg, waiters, Some(1)).await;
    // The writer is busy with "w": these three queue up, in this order.
    let mut queued = Vec::new();
    for (topic, payload) in [("order/bad", "bad"), ("order/t", "x"), ("order/t", "y")] {
        let mut f = Box::pin({
            let writer = writer.clone();
            let r = req(topic, payload);
            async move {
                tokio::time::timeout(timeout, writer.store(r))
                    .await
                    .expect("the writer answers within the test's limit")
            }
        });
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(f.as_mut().poll(&mut cx), Poll::Pending), "queued");
        queued.push(f);
    }
    gate.execute("SELECT pg_advisory_unlock(42)", &[]).await.unwrap();
    // "bad" and "x" form a batch that waits on lock 43 while holding the write
    // lock; "y" forms the next batch, sent behind it: it waits for the write lock.
    wait_for_db(&pg, waiters, Some(2)).await;
    gate.execute("SELECT pg_advisory_unlock(43)", &[]).await.unwrap();

    assert!(w.await.unwrap().is_ok(), "w is stored");
    let mut results = Vec::new();
    for f in queued {
        results.push(f.await);
    }
    assert!(results[0].is_err(), "the bad row is refused");
    let x = *results[1].as_ref().expect("x is stored");
    let y = *results[2].as_ref().expect("y is stored");
    assert!(x < y, "x was published before y: ids {x} and {y}");
    assert_eq!(stored_ids(&pg, "order/t").await, vec![x, y]);
}

/// A graceful shutdown records the acknowledgements of its last moments. The
/// position write of the last three acknowledgements is held by a row lock
/// until the broker is stopping; PostgreSQL is told to drop statements whose
/// client went away, so only a broker that waits for that write records it.
/// After the restart the device gets the next new message, not those three
/// again.
#[tokio::test]
async fn acknowledgements_just_before_a_graceful_shutdown_are_not_delivered_again() {
    let db = TestDb::create().await;
    db.batch_execute(&format!(
        "ALTER DATABASE \"{}\" SET client_connection_check_interval = '20ms'",
        db.name
    ))
    .await;
    let mut broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    let (mut dev, _) = V4Client::connect(v4_options(broker.addr, "dev", false)).await;
    dev.subscribe("last/#", QoS::AtLeastOnce).await;
    publish_all(broker.addr, "p1", "last/t", &numbered(0..3)).await;
    for _ in 0..3 {
        dev.next_publish().await;
    }
    let stored = stored_ids(&pg, "last/t").await;
    wait_for_position(&pg, "dev", "last/#", stored[2]).await;

    // Hold the position row; the next write waits on it.
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; SELECT 1 FROM mqtt_acked WHERE clientid = 'dev' FOR UPDATE")
        .await
        .unwrap();
    publish_all(broker.addr, "p2", "last/t", &numbered(3..6)).await;
    for _ in 0..3 {
        dev.next_publish().await; // rumqttc acknowledges each
    }
    let waiting = format!(
        "select count(*)::int8 from pg_stat_activity where datname = '{}' \
         and wait_event_type = 'Lock' and query like 'UPDATE mqtt_acked%'",
        db.name
    );
    wait_for_db(&pg, &waiting, Some(1)).await;

    let pid = broker.pid().unwrap();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    broker
        .wait_for_log("stopping: recording the last read positions")
        .await;
    holder.batch_execute("COMMIT").await.unwrap();
    assert!(broker.terminate().await.success(), "{}", broker.logs());

    let stored = stored_ids(&pg, "last/t").await;
    assert_eq!(position(&pg, "dev", "last/#").await, Some(stored[5]));
    broker.restart().await;
    let (mut dev, _) = V4Client::connect(v4_options(broker.addr, "dev", false)).await;
    dev.subscribe("last/#", QoS::AtLeastOnce).await;
    publish_all(broker.addr, "p3", "last/t", &["after".to_string()]).await;
    assert_eq!(text(&dev.next_publish().await), "after");
}

/// Ten devices acknowledge at about the same time, so the position flusher
/// writes their positions in shared rounds (one UPDATE for many rows): each
/// subscription's row gets its own device's position, not a neighbour's.
#[tokio::test]
async fn positions_written_in_one_round_each_land_on_their_own_subscription() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    let mut devices = Vec::new();
    for i in 0..10 {
        let (mut d, _) = V4Client::connect(v4_options(broker.addr, &format!("round{i}"), false)).await;
        d.subscribe(&format!("round/{i}"), QoS::AtLeastOnce).await;
        devices.push(d);
    }
    // Device i gets i + 1 messages of its own topic.
    for i in 0..10 {
        publish_all(
            broker.addr,
            &format!("rp{i}"),
            &format!("round/{i}"),
            &numbered(0..i + 1),
        )
        .await;
    }
    for (i, d) in devices.iter_mut().enumerate() {
        for _ in 0..=i {
            d.next_publish().await; // rumqttc acknowledges each
        }
    }
    for i in 0..10 {
        let ids = stored_ids(&pg, &format!("round/{i}")).await;
        assert_eq!(ids.len(), i + 1);
        wait_for_position(&pg, &format!("round{i}"), &format!("round/{i}"), ids[i]).await;
    }
}
