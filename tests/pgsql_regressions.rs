//! Regression tests for defects of the PostgreSQL offline-message plugin found
//! in review: database errors that stalled a paged replay, a registration lost
//! to an outage, a refused QoS 2 delivery that held a subscription back, a
//! store time-out that delivered a message twice, an unsubscribe that a
//! delayed position write undid, a NUL byte that failed a whole group commit,
//! `on_message_store` messages delivered again after their acknowledgement,
//! and a first subscription that skipped a committed but not yet routed
//! message. Plus the documented limitation of out-of-order acknowledgements
//! across a broker restart (duplicates possible, never loss).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, PubAckReason};
use rumqttc::QoS;
use support::pgsql::*;
use support::*;
use tokio::time::Instant;

/// The writer's advisory lock (`backend_pgsql::writer::WRITE_LOCK`, "postbox2"):
/// holding it keeps every store waiting.
const WRITE_LOCK: i64 = 0x706f_7374_626f_7832;

/// Connects a clean-session 3.1.1 device and subscribes it to `filters` at QoS 1.
/// "pager", subscribed to `st/t` at QoS 1, offline while `n` messages are
/// stored there, then back (acknowledging by hand): its backlog is paging.
async fn pager_with_backlog(broker: &Broker, n: usize) -> V4Client {
    device(broker, "pager", &["st/t"], false).await.disconnect().await;
    publish_all(broker.addr, "p", "st/t", &numbered(0..n)).await;
    device(broker, "pager", &["st/t"], true).await
}

async fn device(broker: &Broker, id: &str, filters: &[&str], manual_acks: bool) -> V4Client {
    let mut opts = v4_options(broker.addr, id, true);
    opts.set_manual_acks(manual_acks);
    let (mut c, _) = V4Client::connect(opts).await;
    for f in filters {
        c.subscribe(f, QoS::AtLeastOnce).await;
    }
    c
}

/// Takes the PUBLISH packets already in the backlog.
fn drain_backlog(c: &mut V4Client) -> Vec<rumqttc::Publish> {
    let mut got = Vec::new();
    let mut rest = std::collections::VecDeque::new();
    while let Some(ev) = c.backlog.pop_front() {
        match ev {
            rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => got.push(p),
            other => rest.push_back(other),
        }
    }
    c.backlog = rest;
    got
}

/// Receives (acknowledging each message when `manual_acks`) until every
/// payload of `want` has arrived and every acknowledgement is written; returns
/// all payloads received, in order. Panics after `within` with what arrived.
async fn receive_all(c: &mut V4Client, want: &[String], manual_acks: bool, within: Duration) -> Vec<String> {
    let mut got: Vec<String> = Vec::new();
    let (mut queued, mut written) = (0usize, 0usize);
    for p in drain_backlog(c) {
        if manual_acks {
            c.client.ack(&p).await.expect("queue PUBACK");
            queued += 1;
        }
        got.push(text(&p));
    }
    let deadline = Instant::now() + within;
    while !want.iter().all(|w| got.contains(w)) || written < queued {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.poll_once(left).await {
            None => panic!("within {within:?} received only {got:?}; expected (at least) {want:?}"),
            Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                if manual_acks {
                    c.client.ack(&p).await.expect("queue PUBACK");
                    queued += 1;
                }
                got.push(text(&p));
            }
            Some(Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::PubAck(_)))) => written += 1,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("connection failed after receiving {got:?}: {e:?}"),
        }
    }
    got
}

/// Everything received for `within` (auto-acknowledged clients only).
async fn gather_for(c: &mut V4Client, within: Duration) -> Vec<String> {
    let mut got: Vec<String> = drain_backlog(c).iter().map(text).collect();
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return got;
        }
        match c.poll_once(left).await {
            None => return got,
            Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => got.push(text(&p)),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("connection failed after receiving {got:?}: {e:?}"),
        }
    }
}

/// EMQX's default rules with a page size of `n` for `on_message_fetch`.
fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_string()).collect()
}

async fn max_id(pg: &tokio_postgres::Client) -> i64 {
    query_opt_i64(pg, "select coalesce(max(id), 0)::int8 from mqtt_msg")
        .await
        .unwrap_or(0)
}

/// Waits until one backend of this database waits for a lock matching `condition` (a `pg_locks` predicate).
async fn wait_for_lock_waiter(pg: &tokio_postgres::Client, condition: &str) {
    wait_for_db(
        pg,
        &format!(
            "select count(*) from pg_locks where not granted and {condition}
               and database = (select oid from pg_database where datname = current_database())"
        ),
        Some(1),
    )
    .await;
}

// ---------------------------------------------------------------------------
// Database outages
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// exp1 / exp1b: a database error during a paged replay
// ---------------------------------------------------------------------------

/// Old behaviour: the position write failed while the page's last
/// acknowledgements came in; it was retried only on the next acknowledgement,
/// which never came, so the rest of the backlog and every later live message
/// were held forever.
#[tokio::test]
async fn a_failed_position_write_during_a_paged_replay_is_retried_and_the_backlog_resumes() {
    let db = TestDb::create().await;
    let broker = paged_broker(&db, 3).await;
    let mut c = pager_with_backlog(&broker, 10).await;
    let mut page1 = Vec::new();
    for _ in 0..3 {
        page1.push(c.next_publish().await);
    }
    assert_eq!(
        page1.iter().map(text).collect::<Vec<_>>(),
        numbered(0..3),
        "the first page"
    );

    // The page's acknowledgements arrive while the database is away.
    let outage = outage_start(&db).await;
    for p in &page1 {
        ack_now(&mut c, p).await;
    }
    broker.wait_for_log("cannot record read positions").await;
    set_allow_connections(&db.name, true).await;
    drop(outage);
    let pg = db.client().await; // (the outage cut the old connection)

    // A live message, published (and stored) once the database is back.
    expect_rest_then_live(&broker, &mut c, &pg).await;
}

/// Old behaviour: a failed read of the next page was logged and dropped; the
/// subscription waited for that page forever.
#[tokio::test]
async fn a_failed_next_page_read_is_retried_and_the_backlog_resumes() {
    let db = TestDb::create().await;
    let broker = paged_broker(&db, 3).await;
    let pg = db.client().await;
    let mut c = pager_with_backlog(&broker, 10).await;
    let mut page1 = Vec::new();
    for _ in 0..3 {
        page1.push(c.next_publish().await);
    }
    assert_eq!(
        page1.iter().map(text).collect::<Vec<_>>(),
        numbered(0..3),
        "the first page"
    );

    // Page reads fail (a column they select is missing); position writes do not.
    pg.batch_execute("ALTER TABLE mqtt_msg RENAME COLUMN sender TO sender_x")
        .await
        .unwrap();
    for p in &page1 {
        ack_now(&mut c, p).await;
    }
    broker.wait_for_log("cannot fetch the next page").await;
    pg.batch_execute("ALTER TABLE mqtt_msg RENAME COLUMN sender_x TO sender")
        .await
        .unwrap();

    expect_rest_then_live(&broker, &mut c, &pg).await;
}

/// After a paged replay stalled at m3: a live message is published; the rest
/// of the backlog (m3..m9) and then the live message arrive once each, and the
/// position reaches the newest id.
async fn expect_rest_then_live(broker: &Broker, c: &mut V4Client, pg: &tokio_postgres::Client) {
    publish_all(broker.addr, "p2", "st/t", &strings(&["live-after"])).await;
    let mut want = numbered(3..10);
    want.push("live-after".to_string());
    let rest = receive_all(c, &want, true, Duration::from_secs(20)).await;
    assert_eq!(
        rest, want,
        "the rest of the backlog, then the live message, once each"
    );
    wait_for_position(pg, "pager", "st/t", max_id(pg).await).await;
}

// ---------------------------------------------------------------------------
// exp2: a registration that failed during an outage
// ---------------------------------------------------------------------------

/// Old behaviour: a first subscription made while the database was away left
/// no `mqtt_acked` row; the client's next subscription registered at the
/// newest id, skipping everything published (and acknowledged to its
/// publishers) in between.
#[tokio::test]
async fn a_subscription_made_during_an_outage_is_registered_when_the_database_is_back() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    // Some history, so the broker has stored something before the subscribe.
    publish_all(broker.addr, "p0", "reg/t", &strings(&["old"])).await;
    let stored_before = max_id(&pg).await;
    assert!(stored_before > 0);

    let mut c = device(&broker, "reg", &[], false).await;
    let outage = outage_start(&db).await;
    c.subscribe("reg/t", QoS::AtLeastOnce).await;
    set_allow_connections(&db.name, true).await;
    drop(outage);
    let pg = db.client().await; // (the outage cut the old connection)

    // The registration is retried on its own once the database answers.
    let sql = "select count(*) from mqtt_acked where clientid = 'reg' and topic = 'reg/t'";
    let deadline = Instant::now() + Duration::from_secs(10);
    while query_opt_i64(&pg, sql).await != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the subscription made during the outage was never registered (no mqtt_acked row)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let registered = position(&pg, "reg", "reg/t").await.unwrap();
    assert!(
        registered <= stored_before,
        "registered at {registered}, later than what the broker had stored at subscribe time ({stored_before})"
    );
    c.disconnect().await;

    // Published while the client is away; each one acknowledged to the publisher.
    publish_all(broker.addr, "p", "reg/t", &numbered(0..3)).await;
    let mut c = device(&broker, "reg", &["reg/t"], false).await;
    // ("old" may come too: only the messages after the subscribe are owed.)
    let got = receive_all(&mut c, &numbered(0..3), false, TIMEOUT).await;
    let after: Vec<String> = got.into_iter().filter(|m| m != "old").collect();
    assert_eq!(
        after,
        numbered(0..3),
        "everything published after the subscribe, once, in order"
    );
}

// ---------------------------------------------------------------------------
// exp9: a QoS 2 delivery refused with PUBREC >= 0x80
// ---------------------------------------------------------------------------

/// (packet id, QoS, payload) of a PUBLISH packet from the broker (MQTT 5).
fn parse_v5_publish(p: &[u8]) -> (u16, u8, String) {
    let qos = (p[0] >> 1) & 0x03;
    let mut i = 1;
    while p[i] & 0x80 != 0 {
        i += 1;
    }
    i += 1;
    let topic_len = usize::from(u16::from_be_bytes([p[i], p[i + 1]]));
    i += 2 + topic_len;
    let mut pkid = 0;
    if qos > 0 {
        pkid = u16::from_be_bytes([p[i], p[i + 1]]);
        i += 2;
    }
    let mut props_len = 0usize;
    let mut shift = 0;
    loop {
        let b = p[i];
        i += 1;
        props_len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    i += props_len;
    (pkid, qos, String::from_utf8_lossy(&p[i..]).into_owned())
}

/// Old behaviour: the refused message was never "done" for the plugin: the
/// position stayed before it, the next page was never read, and live messages
/// were held behind the replay.
#[tokio::test]
async fn a_qos2_delivery_refused_with_an_error_pubrec_does_not_stall_the_subscription() {
    let db = TestDb::create().await;
    let broker = paged_broker(&db, 3).await;
    let pg = db.client().await;
    let mut r = RawClient::connect(broker.addr).await;
    r.send(&connect_v5_bytes("rej", true, 60)).await;
    assert_eq!(packet_type(&r.read_packet().await.unwrap()), ptype::CONNACK);
    r.send(&subscribe_v5_bytes(1, "rej/t", 2)).await;
    assert_eq!(packet_type(&r.read_packet().await.unwrap()), ptype::SUBACK);
    r.send(&disconnect_bytes()).await;
    r.expect_closed().await;
    wait_for_position(&pg, "rej", "rej/t", 0).await;

    let (mut p, _) = V4Client::connect(v4_options(broker.addr, "p", true)).await;
    for i in 0..5 {
        p.publish("rej/t", QoS::ExactlyOnce, false, format!("m{i}")).await;
    }

    let mut r = RawClient::connect(broker.addr).await;
    r.send(&connect_v5_bytes("rej", true, 60)).await;
    assert_eq!(packet_type(&r.read_packet().await.unwrap()), ptype::CONNACK);
    r.send(&subscribe_v5_bytes(1, "rej/t", 2)).await;
    let mut want = numbered(0..5);
    want.push("live".to_string());
    let mut got: Vec<String> = Vec::new();
    let mut live_published = false;
    // Accepted deliveries and the PUBCOMPs that finished them.
    let (mut accepted, mut completed) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !want.iter().all(|w| got.contains(w)) || completed < accepted {
        // The live message goes out once the first page has been handled.
        if !live_published && got.len() >= 3 {
            p.publish("rej/t", QoS::ExactlyOnce, false, "live").await;
            live_published = true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match r.read_packet_within(left).await {
            RawRead::Packet(pk) => match packet_type(&pk) {
                ptype::PUBLISH => {
                    let (pkid, qos, payload) = parse_v5_publish(&pk);
                    assert_eq!(qos, 2, "{payload} at QoS {qos}");
                    // m0 is refused; the others are accepted.
                    let reason = if payload == "m0" { 0x80 } else { 0x00 };
                    if reason == 0 {
                        accepted += 1;
                    }
                    got.push(payload);
                    let mut body = pkid.to_be_bytes().to_vec();
                    body.push(reason);
                    r.send(&packet(0x50, &body)).await;
                }
                ptype::PUBREL => {
                    r.send(&packet(0x70, &pk[2..4])).await;
                    completed += 1;
                }
                _ => {}
            },
            other => panic!("{other:?} after receiving {got:?}; expected {want:?}"),
        }
    }
    assert_eq!(got, want, "every message once, in order (m0 refused)");
    wait_for_position(&pg, "rej", "rej/t", max_id(&pg).await).await;
}

// ---------------------------------------------------------------------------
// exp4: a store time-out
// ---------------------------------------------------------------------------

fn assert_not_stored(ack: Option<rumqttc::v5::Event>, what: &str) {
    match ack {
        Some(rumqttc::v5::Event::Incoming(V5Packet::PubAck(a))) => assert!(
            !matches!(
                a.reason,
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers
            ),
            "{what}: the store timed out, expected an error reason code, got {:?}",
            a.reason
        ),
        other => panic!("{what}: expected a PUBACK, got {other:?}"),
    }
}

/// After "slow" timed out and "next" was stored: receives until the
/// subscriber's position has reached the newest row (whatever replay the
/// acknowledgements cause has come by then), and checks "slow" came at most once.
async fn assert_slow_at_most_once(sub: &mut V4Client, pg: &tokio_postgres::Client) {
    let mut got = receive_all(sub, &strings(&["next"]), false, TIMEOUT).await;
    let newest = max_id(pg).await;
    let deadline = Instant::now() + TIMEOUT;
    while position(pg, "sub", "to/t").await != Some(newest) {
        assert!(
            Instant::now() < deadline,
            "the position of sub did not reach {newest}; received {got:?}"
        );
        got.extend(gather_for(sub, Duration::from_millis(100)).await);
    }
    got.extend(gather_for(sub, Duration::from_millis(300)).await);
    let slow = got.iter().filter(|m| *m == "slow").count();
    assert!(slow <= 1, "the timed-out message arrived {slow} times: {got:?}");
    assert_eq!(got.iter().filter(|m| *m == "next").count(), 1, "{got:?}");
}

/// The writer is busy with another batch when "slow" times out in its queue.
/// Old behaviour: the writer stored it anyway once free; the subscriber had
/// got it live (without a stored id), and the next acknowledgement found the
/// row as a gap and replayed it: twice.
#[tokio::test]
async fn a_message_whose_store_timed_out_in_the_writer_queue_reaches_a_subscriber_at_most_once() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "backend.pgsql.store_timeout = 1s\n").await;
    let pg = db.client().await;
    let mut sub = device(&broker, "sub", &["to/t"], false).await;

    let admin = db.client().await;
    admin
        .batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK});"))
        .await
        .unwrap();
    // The writer is stuck on a message of another topic...
    let addr = broker.addr;
    let other = tokio::spawn(async move {
        let (mut p, _) = V5Client::connect(v5_options(addr, "pub-other", true)).await;
        p.publish_acked(
            "other/t",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "other",
        )
        .await
    });
    wait_for_lock_waiter(&pg, "locktype = 'advisory'").await;
    // ... while "slow" waits behind it and times out.
    let (mut p5, _) = V5Client::connect(v5_options(broker.addr, "pub5", true)).await;
    let ack = p5
        .publish_acked("to/t", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "slow")
        .await;
    assert_not_stored(ack, "slow");
    assert_not_stored(
        tokio::time::timeout(TIMEOUT, other).await.unwrap().unwrap(),
        "other",
    );
    admin.batch_execute("COMMIT").await.unwrap();
    let ack = p5
        .publish_acked("to/t", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "next")
        .await;
    match ack {
        Some(rumqttc::v5::Event::Incoming(V5Packet::PubAck(a))) => {
            assert_eq!(a.reason, PubAckReason::Success, "stored")
        }
        other => panic!("expected a PUBACK, got {other:?}"),
    }
    assert_eq!(
        stored_ids(&pg, "to/t").await.len(),
        1,
        "only \"next\" is stored on to/t: the writer skipped \"slow\""
    );
    assert_slow_at_most_once(&mut sub, &pg).await;
}

/// The writer is already writing "slow" (its batch waits for the lock) when
/// the publisher's store_timeout fires: the row is committed afterwards.
/// (The reviewer's exp4 exactly.)
#[tokio::test]
async fn a_message_whose_store_timed_out_in_flight_reaches_a_subscriber_at_most_once() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "backend.pgsql.store_timeout = 1s\n").await;
    let pg = db.client().await;
    let mut sub = device(&broker, "sub", &["to/t"], false).await;

    let admin = db.client().await;
    admin
        .batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK});"))
        .await
        .unwrap();
    let (mut p5, _) = V5Client::connect(v5_options(broker.addr, "pub5", true)).await;
    let ack = p5
        .publish_acked("to/t", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "slow")
        .await;
    assert_not_stored(ack, "slow");
    admin.batch_execute("COMMIT").await.unwrap();
    let ack = p5
        .publish_acked("to/t", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "next")
        .await;
    match ack {
        Some(rumqttc::v5::Event::Incoming(V5Packet::PubAck(a))) => {
            assert_eq!(a.reason, PubAckReason::Success, "stored")
        }
        other => panic!("expected a PUBACK, got {other:?}"),
    }
    assert_slow_at_most_once(&mut sub, &pg).await;
}

// ---------------------------------------------------------------------------
// exp5: unsubscribe racing a delayed position write
// ---------------------------------------------------------------------------

/// Old behaviour: the position write (an upsert) that was waiting when the
/// client unsubscribed put the deleted `mqtt_acked` row back; the next
/// subscription then replayed what was published while unsubscribed.
#[tokio::test]
async fn an_unsubscribe_racing_a_delayed_position_write_stays_unsubscribed() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    let mut c = device(&broker, "un", &["un/t", "un/side"], true).await;
    publish_all(broker.addr, "p", "un/t", &strings(&["x"])).await;
    let x = c.next_publish().await;
    assert_eq!(text(&x), "x");

    // Position writes read mqtt_msg first: hold them up.
    let admin = db.client().await;
    admin
        .batch_execute("BEGIN; LOCK TABLE mqtt_msg IN ACCESS EXCLUSIVE MODE;")
        .await
        .unwrap();
    ack_now(&mut c, &x).await;
    wait_for_lock_waiter(&pg, "relation = 'mqtt_msg'::regclass").await;
    c.unsubscribe("un/t").await;
    wait_for_db(
        &pg,
        "select count(*) from mqtt_acked where clientid = 'un' and topic = 'un/t'",
        Some(0),
    )
    .await;
    admin.batch_execute("COMMIT").await.unwrap();

    // Barrier: positions are written one after another, so once an
    // acknowledgement made after the delayed write is recorded, that write is done.
    publish_all(broker.addr, "p", "un/side", &strings(&["barrier"])).await;
    let b = c.next_publish().await;
    assert_eq!(text(&b), "barrier");
    ack_now(&mut c, &b).await;
    let barrier_id = *stored_ids(&pg, "un/side").await.last().unwrap();
    wait_for_position(&pg, "un", "un/side", barrier_id).await;
    assert_eq!(
        position(&pg, "un", "un/t").await,
        None,
        "the unsubscribed position came back"
    );

    // A resubscribe is a first subscription: nothing from before is replayed.
    publish_all(broker.addr, "p", "un/t", &strings(&["while-unsubscribed"])).await;
    c.subscribe("un/t", QoS::AtLeastOnce).await;
    publish_all(broker.addr, "p", "un/t", &strings(&["after-resubscribe"])).await;
    let first = c.next_publish().await;
    assert_eq!(
        text(&first),
        "after-resubscribe",
        "the first message after the resubscribe is the live one"
    );
}

// ---------------------------------------------------------------------------
// exp6: EMQX text schema and a NUL byte
// ---------------------------------------------------------------------------

/// Publishes at QoS 1 from a new MQTT 5 client; `sent` fires once the PUBLISH
/// is written; returns the PUBACK reason.
async fn publish_v5_reason(
    addr: std::net::SocketAddr,
    id: &str,
    topic: &str,
    payload: &[u8],
    sent: tokio::sync::oneshot::Sender<()>,
) -> PubAckReason {
    let (mut p, _) = V5Client::connect(v5_options(addr, id, true)).await;
    p.client
        .publish(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            payload.to_vec(),
        )
        .await
        .expect("queue PUBLISH");
    let mut sent = Some(sent);
    p.poll_until(|ev| match ev {
        rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Publish(_)) => {
            if let Some(s) = sent.take() {
                let _ = s.send(());
            }
            None
        }
        rumqttc::v5::Event::Incoming(V5Packet::PubAck(a)) => Some(a.reason),
        _ => None,
    })
    .await
}

/// Old behaviour: a payload with U+0000 passed the UTF-8 check, and
/// PostgreSQL's refusal of it in the text column failed the whole group
/// commit, so a concurrent, unrelated message was not stored either.
#[tokio::test]
async fn a_nul_payload_is_refused_and_does_not_fail_a_concurrent_store() {
    let db = TestDb::create().await;
    // EMQX's schema: payload text.
    db.batch_execute(
        "CREATE TABLE mqtt_msg (id SERIAL primary key, msgid character varying(60), sender character varying(100),
           topic character varying(200), qos integer, retain integer, payload text, arrived timestamp without time zone);
         CREATE TABLE mqtt_acked (id SERIAL primary key, clientid character varying(100), topic character varying(100),
           mid integer, created timestamp without time zone, UNIQUE (clientid, topic));",
    )
    .await;
    let broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    let mut sub = device(&broker, "sub", &["nul/#"], false).await;

    // Hold the writer on a first message so the next two queue up together.
    let admin = db.client().await;
    admin
        .batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK});"))
        .await
        .unwrap();
    let addr = broker.addr;
    let (tx, _) = tokio::sync::oneshot::channel();
    let a = tokio::spawn(async move { publish_v5_reason(addr, "pa", "nul/a", b"first", tx).await });
    wait_for_lock_waiter(&pg, "locktype = 'advisory'").await;
    let (tx_b, sent_b) = tokio::sync::oneshot::channel();
    let (tx_c, sent_c) = tokio::sync::oneshot::channel();
    let b = tokio::spawn(async move { publish_v5_reason(addr, "pb", "nul/b", b"has\0nul", tx_b).await });
    let c = tokio::spawn(async move { publish_v5_reason(addr, "pc", "nul/c", b"innocent", tx_c).await });
    tokio::time::timeout(TIMEOUT, sent_b).await.unwrap().unwrap();
    tokio::time::timeout(TIMEOUT, sent_c).await.unwrap().unwrap();
    // Let the broker take both PUBLISH packets to the (blocked) writer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    admin.batch_execute("COMMIT").await.unwrap();

    let (a, b, c) = (a.await.unwrap(), b.await.unwrap(), c.await.unwrap());
    assert_eq!(a, PubAckReason::Success, "first");
    assert_eq!(
        b,
        PubAckReason::NotAuthorized,
        "the NUL payload is refused (0x87)"
    );
    assert_eq!(c, PubAckReason::Success, "the concurrent message is stored");
    let rows = pg
        .query("select topic::text from mqtt_msg order by id", &[])
        .await
        .unwrap();
    let topics: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(topics, ["nul/a", "nul/c"]);
    let got = receive_all(&mut sub, &strings(&["first", "innocent"]), false, TIMEOUT).await;
    assert!(
        !got.iter().any(|m| m.contains('\0')),
        "the refused message is not routed: {got:?}"
    );
}

// ---------------------------------------------------------------------------
// exp8: on_message_store with on_message_fetch
// ---------------------------------------------------------------------------

/// Old behaviour: `on_message_store` attached no stored id to live messages,
/// so their acknowledgements never moved the position and the next
/// subscription replayed them all.
#[tokio::test]
async fn acknowledged_messages_stored_by_on_message_store_are_not_delivered_again() {
    let db = TestDb::create().await;
    let rules = EMQX_DEFAULT_RULES.replace(
        r##"{"function": "on_message_publish"}"##,
        r##"{"function": "on_message_store"}"##,
    );
    assert_ne!(rules, EMQX_DEFAULT_RULES);
    let conf = pgsql_conf(&db, &rules);
    let broker =
        Broker::start_with_files("plugins.load = backend_pgsql\n", &[("backend_pgsql.conf", &conf)]).await;
    let pg = db.client().await;
    let mut c = device(&broker, "st", &["ms/t"], false).await;
    publish_all(broker.addr, "p", "ms/t", &numbered(0..3)).await;
    let got = receive_all(&mut c, &numbered(0..3), false, TIMEOUT).await;
    assert_eq!(got, numbered(0..3), "live, acknowledged");
    c.disconnect().await;

    let mut c = device(&broker, "st", &["ms/t"], false).await;
    publish_all(broker.addr, "p", "ms/t", &strings(&["after"])).await;
    let first = c.next_publish().await;
    assert_eq!(
        text(&first),
        "after",
        "nothing acknowledged is replayed before the live message"
    );
    wait_for_position(&pg, "st", "ms/t", max_id(&pg).await).await;
}

// ---------------------------------------------------------------------------
// exp7: first subscription vs. a committed, not yet routed message
// ---------------------------------------------------------------------------

/// Old behaviour: the first subscription's position was the newest stored id,
/// including a message whose `message.publish` chain had not finished; it
/// reached the subscriber live, and when that clean session ended without
/// acknowledging it, nothing ever delivered it again.
#[tokio::test]
async fn a_first_subscription_does_not_count_a_stored_but_unrouted_message_as_history() {
    let db = TestDb::create().await;
    db.batch_execute("CREATE TABLE blocker (x int)").await;
    // A rule after the store that can be held up: M is committed but not routed.
    let extra = r##"backend.pgsql.hook.message.publish.9 = {"topic": "#", "action": {"sql": ["insert into blocker values (${qos})"]}, "pool": "pool1"}"##;
    let broker = broker_with_pgsql(&db, extra).await;
    let pg = db.client().await;
    let admin = db.client().await;
    admin
        .batch_execute("BEGIN; LOCK TABLE blocker IN ACCESS EXCLUSIVE MODE;")
        .await
        .unwrap();
    let addr = broker.addr;
    let publisher = tokio::spawn(async move { publish_all(addr, "p", "fr/t", &strings(&["M"])).await });
    // The chain has stored M and now waits on `blocker`.
    wait_for_lock_waiter(&pg, "relation = 'blocker'::regclass").await;
    let m_id = *stored_ids(&pg, "fr/t").await.last().expect("M is stored");

    let mut c = device(&broker, "newbie", &["fr/t"], true).await;
    let first = position(&pg, "newbie", "fr/t").await.expect("registered");
    assert!(
        first < m_id,
        "the first position ({first}) counts M ({m_id}), not yet routed, as history"
    );
    admin.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(TIMEOUT, publisher).await.unwrap().unwrap();
    assert_eq!(text(&c.next_publish().await), "M", "live, left unacknowledged");
    c.disconnect().await;

    let mut c = device(&broker, "newbie", &["fr/t"], false).await;
    assert_eq!(text(&c.next_publish().await), "M", "replayed to the next session");
    wait_for_position(&pg, "newbie", "fr/t", m_id).await;
}

// ---------------------------------------------------------------------------
// exp3: out-of-order acknowledgements across a broker restart
// ---------------------------------------------------------------------------

/// Documented limitation: acknowledgements above the position live in memory
/// only, so after a broker restart they may be delivered again. Never lost:
/// every unacknowledged message arrives after the restart.
#[tokio::test]
async fn out_of_order_acks_across_a_broker_restart_lose_nothing() {
    let db = TestDb::create().await;
    let mut broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    device(&broker, "ooo", &["ooo/t", "ooo/side"], false)
        .await
        .disconnect()
        .await;
    publish_all(broker.addr, "p", "ooo/t", &numbered(0..4)).await;

    let mut c = device(&broker, "ooo", &["ooo/t", "ooo/side"], true).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(c.next_publish().await);
    }
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), numbered(0..4));
    ack_now(&mut c, &got[3]).await;
    ack_now(&mut c, &got[1]).await;
    // Barrier: once a later acknowledgement is recorded, those two were handled.
    publish_all(broker.addr, "p", "ooo/side", &strings(&["barrier"])).await;
    let b = c.next_publish().await;
    assert_eq!(text(&b), "barrier");
    ack_now(&mut c, &b).await;
    let barrier_id = *stored_ids(&pg, "ooo/side").await.last().unwrap();
    wait_for_position(&pg, "ooo", "ooo/side", barrier_id).await;
    c.disconnect().await;

    broker.kill().await;
    broker.restart().await;
    let mut c = device(&broker, "ooo", &["ooo/t"], false).await;
    publish_all(broker.addr, "p", "ooo/t", &strings(&["after-restart"])).await;
    // m1 and m3 may come again (duplicates are the limitation); m0 and m2 must.
    let again = receive_all(&mut c, &strings(&["m0", "m2", "after-restart"]), false, TIMEOUT).await;
    let unacked: Vec<&String> = again.iter().filter(|m| *m == "m0" || *m == "m2").collect();
    assert_eq!(
        unacked,
        ["m0", "m2"],
        "the unacknowledged ones, in order: {again:?}"
    );
}

// ---------------------------------------------------------------------------
// Review of 49e21ad (read-ahead): a page read for a session that has ended
// ---------------------------------------------------------------------------

/// Old behaviour (read-ahead): a page read that was running when the session
/// ended was still handed over when it returned. The client, reconnected with
/// a clean session and subscribed at QoS 0 (no offline messages), received the
/// dead subscription's page, and from then on every live stored message on
/// the topic was held for a replay that never completed: lost.
#[tokio::test]
async fn a_page_read_in_flight_when_the_session_ends_is_not_handed_to_the_next_session() {
    let db = TestDb::create().await;
    let broker = paged_broker(&db, 3).await;
    let pg = db.client().await;
    // Pages 1 and 2 (read ahead) arrive; page 3 waits for page 1's acknowledgements.
    let mut c = pager_with_backlog(&broker, 9).await;
    let mut first = Vec::new();
    for _ in 0..6 {
        first.push(c.next_publish().await);
    }
    assert_eq!(first.iter().map(text).collect::<Vec<_>>(), numbered(0..6));

    // Hold page 3's read in the database, then end the session.
    let admin = db.client().await;
    admin
        .batch_execute("BEGIN; LOCK TABLE mqtt_msg IN ACCESS EXCLUSIVE MODE;")
        .await
        .unwrap();
    for p in &first[..3] {
        ack_now(&mut c, p).await;
    }
    wait_for_db(
        &pg,
        "select count(*) from pg_stat_activity
          where datname = current_database() and wait_event_type = 'Lock'
            and (query like '%ORDER BY id LIMIT%' or query like '%max(id), 0)::int8 FROM mqtt_msg%')",
        Some(1),
    )
    .await;
    c.disconnect().await;

    // A new clean session subscribes at QoS 0: no offline messages for it.
    let opts = v4_options(broker.addr, "pager", true);
    let (mut c, _) = V4Client::connect(opts).await;
    c.subscribe("st/t", QoS::AtMostOnce).await;
    admin.batch_execute("COMMIT").await.unwrap();
    // The held read has returned once the table can be read again.
    wait_for_db(
        &pg,
        "select count(*) from pg_stat_activity
          where datname = current_database()
            and (query like '%ORDER BY id LIMIT%' or query like '%max(id), 0)::int8 FROM mqtt_msg%')
            and state <> 'idle' and pid <> pg_backend_pid()",
        Some(0),
    )
    .await;

    for live in ["live-1", "live-2"] {
        publish_all(broker.addr, "p2", "st/t", &strings(&[live])).await;
        let got = c.next_publish().await;
        assert_eq!(
            text(&got),
            live,
            "the new session gets live messages only, none from the ended one's page"
        );
    }
}
