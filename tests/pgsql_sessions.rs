//! Persistent sessions survive a restart of the broker (`on_session_restore`,
//! shipped on): a client with clean session 0 (MQTT 5: session expiry > 0)
//! reconnects after a graceful restart or a SIGKILL and gets session present
//! 1, its subscriptions (with their MQTT 5 options) and everything it missed,
//! without subscribing again. Expiry is honoured across the restart, expired
//! sessions' rows are removed, clean sessions are never stored, and another
//! user name does not inherit a session. Clients are rumqttc.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Filter, SubscribeProperties};
use rumqttc::QoS;
use support::pgsql::*;
use support::*;

async fn session_broker(db: &TestDb) -> Broker {
    broker_with_pgsql(db, SESSION_RULE).await
}

fn persistent(addr: std::net::SocketAddr, id: &str) -> rumqttc::MqttOptions {
    v4_options(addr, id, false)
}

/// Rows of the client's stored session: (mqtt_session, mqtt_sub with
/// session = true, mqtt_acked, mqtt_client).
async fn stored_rows(pg: &tokio_postgres::Client, clientid: &str) -> [i64; 4] {
    let lit = sql_literal(clientid);
    let mut out = [0; 4];
    for (i, sql) in [
        format!("select count(*) from mqtt_session where clientid = {lit}"),
        format!("select count(*) from mqtt_sub where clientid = {lit} and session"),
        format!("select count(*) from mqtt_acked where clientid = {lit}"),
        format!("select count(*) from mqtt_client where clientid = {lit}"),
    ]
    .iter()
    .enumerate()
    {
        out[i] = query_opt_i64(pg, sql).await.unwrap_or(0);
    }
    out
}

async fn wait_subscription_stored(pg: &tokio_postgres::Client, clientid: &str, n: i64) {
    wait_for_db(
        pg,
        &format!(
            "select count(*) from mqtt_sub where clientid = {} and session",
            sql_literal(clientid)
        ),
        Some(n),
    )
    .await;
}

/// 3.1.1, clean session 0, graceful restart (SIGTERM) while offline.
#[tokio::test]
async fn a_311_session_survives_a_graceful_restart_without_subscribing_again() {
    let db = TestDb::create().await;
    let mut broker = session_broker(&db).await;
    let pg = db.client().await;
    let (mut c, ack) = V4Client::connect(persistent(broker.addr, "dev-g")).await;
    assert!(!ack.session_present);
    c.subscribe("g/a", QoS::AtLeastOnce).await;
    c.subscribe("g/b/+", QoS::AtLeastOnce).await;
    c.disconnect().await;
    publish_all(broker.addr, "pub", "g/a", &strings(&["before"])).await;

    assert!(broker.terminate().await.success());
    broker.restart().await;
    publish_all(broker.addr, "pub", "g/b/x", &strings(&["while-offline"])).await;

    let (mut c, ack) = V4Client::connect(persistent(broker.addr, "dev-g")).await;
    assert!(ack.session_present, "the session survived the restart");
    let got = [text(&c.next_publish().await), text(&c.next_publish().await)];
    assert_eq!(got, ["before", "while-offline"], "what it missed, in order");
    // The subscriptions are live again: no SUBSCRIBE was sent.
    publish_all(broker.addr, "pub", "g/b/y", &strings(&["live"])).await;
    assert_eq!(text(&c.next_publish().await), "live");
    c.expect_no_publish(Duration::from_millis(300)).await;
    drop(pg);
}

/// 3.1.1, SIGKILL while the client is connected with a message in flight
/// (not acknowledged): after the restart it comes again, then what was
/// published while the broker was down.
#[tokio::test]
async fn a_311_session_survives_a_crash_with_a_message_in_flight() {
    let db = TestDb::create().await;
    let mut broker = session_broker(&db).await;
    let pg = db.client().await;
    let mut opts = persistent(broker.addr, "dev-k");
    opts.set_manual_acks(true);
    let (mut c, _) = V4Client::connect(opts.clone()).await;
    c.subscribe("k/t", QoS::AtLeastOnce).await;
    publish_all(broker.addr, "pub", "k/t", &strings(&["in-flight"])).await;
    assert_eq!(text(&c.next_publish().await), "in-flight");
    broker.kill().await;
    drop(c);
    broker.restart().await;
    publish_all(broker.addr, "pub", "k/t", &strings(&["after"])).await;

    let mut opts = persistent(broker.addr, "dev-k");
    opts.set_manual_acks(true);
    let (mut c, ack) = V4Client::connect(opts).await;
    assert!(ack.session_present);
    let first = c.next_publish().await;
    assert_eq!(text(&first), "in-flight", "not acknowledged: it comes again");
    ack_now(&mut c, &first).await;
    let second = c.next_publish().await;
    assert_eq!(text(&second), "after");
    ack_now(&mut c, &second).await;
    let last = *stored_ids(&pg, "k/t").await.last().unwrap();
    wait_for_position(&pg, "dev-k", "k/t", last).await;
}

/// MQTT 5, session expiry 3600: the subscription's options come back with
/// it (subscription identifier, no local).
/// What a client acknowledged above a message still in flight is recorded
/// with its position: a broker SIGKILLed and started again sends the one in
/// flight, not those.
#[tokio::test]
async fn a_crash_does_not_resend_what_was_acknowledged_above_a_message_in_flight() {
    let db = TestDb::create().await;
    let mut broker = session_broker(&db).await;
    let pg = db.client().await;
    let mut opts = persistent(broker.addr, "gap-crash");
    opts.set_manual_acks(true);
    let (mut c, _) = V4Client::connect(opts).await;
    c.subscribe("gap/c", QoS::AtLeastOnce).await;
    publish_all(broker.addr, "pub", "gap/c", &numbered(0..3)).await;
    ack_all_but_the_first_of_three(&mut c).await;
    wait_for_acked_above(&pg, "gap-crash", "gap/c", 2).await;

    broker.kill().await;
    broker.restart().await;
    let mut opts = persistent(broker.addr, "gap-crash");
    opts.set_manual_acks(true);
    let (mut back, ack) = V4Client::connect(opts).await;
    assert!(ack.session_present);
    let p = back.next_publish().await;
    assert_eq!(text(&p), "m0");
    ack_now(&mut back, &p).await;
    back.expect_no_publish(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn an_mqtt5_session_comes_back_with_its_subscription_options() {
    let db = TestDb::create().await;
    let mut broker = session_broker(&db).await;
    let pg = db.client().await;
    let options = |addr| {
        let mut o = v5_options(addr, "dev-5", false);
        o.set_session_expiry_interval(Some(3600));
        o
    };
    let (mut c, _) = V5Client::connect(options(broker.addr)).await;
    let mut filter = Filter::new("five/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
    filter.nolocal = true;
    c.client
        .subscribe_many_with_properties(
            [filter],
            SubscribeProperties {
                id: Some(7),
                user_properties: Vec::new(),
            },
        )
        .await
        .unwrap();
    c.next_suback().await;
    wait_subscription_stored(&pg, "dev-5", 1).await;
    broker.kill().await;
    drop(c);
    broker.restart().await;
    let (mut p, _) = V5Client::connect(v5_options(broker.addr, "pub-5", true)).await;
    p.publish(
        "five/missed",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        "missed",
    )
    .await;

    let (mut c, ack) = V5Client::connect(options(broker.addr)).await;
    assert!(ack.session_present);
    let missed = c.next_publish().await;
    assert_eq!(&missed.payload[..], b"missed", "replayed from the store");
    assert_eq!(
        missed.properties.expect("properties").subscription_identifiers,
        vec![7],
        "a replayed message carries its subscription's identifier too"
    );
    // No local: its own message does not come back to it (neither live nor
    // from the store when its position moves past it).
    c.publish("five/own", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "own")
        .await;
    p.publish(
        "five/other",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        "other",
    )
    .await;
    let got = c.next_publish().await;
    assert_eq!(&got.payload[..], b"other");
    let ids = got.properties.expect("properties").subscription_identifiers;
    assert_eq!(ids, vec![7], "the subscription identifier was kept");
    c.expect_no_publish(Duration::from_millis(300)).await;
}

/// The session expiry is honoured across a restart: a session that expired
/// while the broker was down is not restored, and its rows are removed.
#[tokio::test]
async fn a_session_that_expired_while_the_broker_was_down_is_gone_with_its_rows() {
    let db = TestDb::create().await;
    let mut broker = session_broker(&db).await;
    let pg = db.client().await;
    let options = |addr| {
        let mut o = v5_options(addr, "dev-x", false);
        o.set_session_expiry_interval(Some(1));
        o
    };
    let (mut c, _) = V5Client::connect(options(broker.addr)).await;
    c.subscribe("x/t", rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await;
    wait_subscription_stored(&pg, "dev-x", 1).await;
    broker.kill().await;
    drop(c);
    // The crash left the session marked connected; the restart starts its
    // expiry (1 s), and the sweep removes it with its rows.
    broker.restart().await;
    wait_for_db(
        &pg,
        "select count(*) from mqtt_session where clientid = 'dev-x'",
        Some(0),
    )
    .await;
    assert_eq!(
        stored_rows(&pg, "dev-x").await,
        [0, 0, 0, 0],
        "every row of the session"
    );
    let (_c, ack) = V5Client::connect(options(broker.addr)).await;
    assert!(!ack.session_present, "expired: a new session");

    // Expiry while connected to the broker: the broker ends it itself.
    let db2 = TestDb::create().await;
    let broker2 = session_broker(&db2).await;
    let pg2 = db2.client().await;
    let (mut c, _) = V5Client::connect({
        let mut o = v5_options(broker2.addr, "dev-y", false);
        o.set_session_expiry_interval(Some(1));
        o
    })
    .await;
    c.subscribe("y/t", rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await;
    wait_subscription_stored(&pg2, "dev-y", 1).await;
    c.disconnect().await;
    wait_for_db(
        &pg2,
        "select count(*) from mqtt_session where clientid = 'dev-y'",
        Some(0),
    )
    .await;
    assert_eq!(
        stored_rows(&pg2, "dev-y").await,
        [0, 0, 0, 0],
        "every row of the session"
    );
    drop(broker);
}

/// Clean sessions are never stored, and a clean start discards a stored one.
#[tokio::test]
async fn clean_sessions_are_never_stored_and_a_clean_start_discards_one() {
    let db = TestDb::create().await;
    let mut broker = session_broker(&db).await;
    let pg = db.client().await;
    let (mut c, _) = V4Client::connect(v4_options(broker.addr, "dev-c", true)).await;
    c.subscribe("c/t", QoS::AtLeastOnce).await;
    c.disconnect().await;
    assert_eq!(
        query_opt_i64(&pg, "select count(*) from mqtt_sub where clientid = 'dev-c'").await,
        Some(0)
    );
    assert_eq!(
        query_opt_i64(&pg, "select count(*) from mqtt_session where clientid = 'dev-c'").await,
        Some(0)
    );

    let (mut c, _) = V4Client::connect(persistent(broker.addr, "dev-d")).await;
    c.subscribe("d/t", QoS::AtLeastOnce).await;
    wait_subscription_stored(&pg, "dev-d", 1).await;
    c.disconnect().await;
    assert!(broker.terminate().await.success());
    broker.restart().await;
    // A clean start throws the stored session away ...
    let (c, ack) = V4Client::connect(v4_options(broker.addr, "dev-d", true)).await;
    assert!(!ack.session_present);
    c.disconnect().await;
    wait_subscription_stored(&pg, "dev-d", 0).await;
    // ... so a later persistent connect after a restart finds none.
    broker.kill().await;
    broker.restart().await;
    let (mut c, ack) = V4Client::connect(persistent(broker.addr, "dev-d")).await;
    assert!(!ack.session_present);
    publish_all(broker.addr, "pub", "d/t", &strings(&["nobody"])).await;
    c.expect_no_publish(Duration::from_millis(300)).await;
}

/// An unsubscribed filter is not restored; another user name does not
/// inherit the session (and replaces it).
#[tokio::test]
async fn unsubscribed_filters_stay_gone_and_another_user_starts_clean() {
    let db = TestDb::create().await;
    let mut broker = session_broker(&db).await;
    let pg = db.client().await;
    let as_user = |addr, user: &str| {
        let mut o = persistent(addr, "dev-u");
        o.set_credentials(user, "pw");
        o
    };
    let (mut c, _) = V4Client::connect(as_user(broker.addr, "alice")).await;
    c.subscribe("u/keep", QoS::AtLeastOnce).await;
    c.subscribe("u/drop", QoS::AtLeastOnce).await;
    c.unsubscribe("u/drop").await;
    c.disconnect().await;
    wait_subscription_stored(&pg, "dev-u", 1).await;
    assert!(broker.terminate().await.success());
    broker.restart().await;

    let (mut c, ack) = V4Client::connect(as_user(broker.addr, "alice")).await;
    assert!(ack.session_present);
    publish_all(broker.addr, "pub", "u/drop", &strings(&["unsubscribed"])).await;
    publish_all(broker.addr, "pub", "u/keep", &strings(&["kept"])).await;
    assert_eq!(text(&c.next_publish().await), "kept");
    c.expect_no_publish(Duration::from_millis(300)).await;
    c.disconnect().await;
    assert!(broker.terminate().await.success());
    broker.restart().await;

    let (b, ack) = V4Client::connect(as_user(broker.addr, "bob")).await;
    assert!(!ack.session_present, "alice's session is not bob's");
    b.disconnect().await;
    assert!(broker.terminate().await.success());
    broker.restart().await;
    let (_c, ack) = V4Client::connect(as_user(broker.addr, "alice")).await;
    assert!(!ack.session_present, "bob's new session replaced alice's");
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}
