//! MQTT 5 messages keep their meaning through PostgreSQL: a replayed message
//! that expired is not delivered, the others carry the time they have left
//! and every property they were published with (issue 11, item 5).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, PublishProperties, SubscribeReasonCode as SubCode};
use rumqttc::v5::mqttbytes::QoS;
use support::pgsql::*;
use support::*;

/// An MQTT 5 client whose session outlives its connection by an hour.
fn hour_session(addr: std::net::SocketAddr, id: &str, clean_start: bool) -> rumqttc::v5::MqttOptions {
    let mut o = v5_options(addr, id, clean_start);
    o.set_session_expiry_interval(Some(3600));
    o
}

fn expiring(secs: u32) -> PublishProperties {
    PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    }
}

/// Everything a PUBLISH can carry end to end (two user properties whose
/// order is not alphabetical, so a reordering shows).
fn full_properties(expiry: u32) -> PublishProperties {
    PublishProperties {
        message_expiry_interval: Some(expiry),
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("reply/sensor-7".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\xffreq-42")),
        user_properties: vec![("zone".into(), "north".into()), ("alarm".into(), "high".into())],
        ..Default::default()
    }
}

/// Asserts `got` carries every property of [`full_properties`] and an expiry
/// interval that is what was left (counting down from `original`), not the original.
fn assert_full_properties(got: &rumqttc::v5::mqttbytes::v5::Publish, original: u32) {
    let p = got.properties.as_ref().expect("the message has properties");
    let want = full_properties(original);
    assert_eq!(p.payload_format_indicator, want.payload_format_indicator);
    assert_eq!(p.content_type, want.content_type);
    assert_eq!(p.response_topic, want.response_topic);
    assert_eq!(p.correlation_data, want.correlation_data);
    assert_eq!(p.user_properties, want.user_properties, "in the order published");
    let left = p.message_expiry_interval.expect("an expiry interval");
    assert!(
        left > 0 && left < original,
        "the remaining interval, not the original {original}: got {left}"
    );
}

/// Waits (on the database's clock, which decides) until the stored message
/// with `payload` has expired.
async fn wait_until_expired(pg: &tokio_postgres::Client, table: &str, payload: &str) {
    wait_for_db(
        pg,
        &format!(
            "select count(*) from {table} where payload = {} and expires_at <= now()",
            sql_literal_bytea(payload)
        ),
        Some(1),
    )
    .await;
}

fn sql_literal_bytea(s: &str) -> String {
    format!("convert_to({}, 'UTF8')", sql_literal(s))
}

/// The user's report: a subscriber with an hour-long session is offline; a
/// message that expires in 1 s and one with an hour and properties are
/// published; the broker restarts; once the first has expired the
/// subscriber comes back: it gets only the second, as it was published.
async fn expired_dropped_and_properties_kept_across_a_restart(sigkill: bool) {
    let db = TestDb::create().await;
    let mut broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    let (mut sub, _) = V5Client::connect(hour_session(broker.addr, "sensor-sub", true)).await;
    sub.subscribe("sensors/7", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let (mut publ, _) = V5Client::connect(v5_options(broker.addr, "sensor-7", true)).await;
    publ.publish_with_properties("sensors/7", "short-lived", expiring(1))
        .await;
    publ.publish_with_properties("sensors/7", "reading", full_properties(3600))
        .await;
    publ.disconnect().await;
    assert_eq!(stored_ids(&pg, "sensors/7").await.len(), 2, "both stored");

    if sigkill {
        broker.kill().await;
    } else {
        assert!(broker.terminate().await.success());
    }
    broker.restart().await;
    wait_until_expired(&pg, "mqtt_msg", "short-lived").await;

    let (mut sub, _) = V5Client::connect(hour_session(broker.addr, "sensor-sub", false)).await;
    sub.subscribe("sensors/7", QoS::AtLeastOnce).await;
    let got = sub.next_publish().await;
    assert_eq!(
        &got.payload[..],
        b"reading",
        "the expired message is not replayed"
    );
    assert_full_properties(&got, 3600);
    sub.expect_no_publish(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn after_a_graceful_restart_an_expired_message_is_not_replayed_and_the_other_keeps_its_properties() {
    expired_dropped_and_properties_kept_across_a_restart(false).await;
}

#[tokio::test]
async fn after_a_crash_an_expired_message_is_not_replayed_and_the_other_keeps_its_properties() {
    expired_dropped_and_properties_kept_across_a_restart(true).await;
}

/// An expired message is never delivered, so never acknowledged: the read
/// position must still move past it, or every later message would be
/// replayed again on each reconnect (once the broker's memory is gone).
#[tokio::test]
async fn the_read_position_moves_past_an_expired_message() {
    let db = TestDb::create().await;
    let mut broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    let device = |addr| async move {
        let (mut c, _) = V5Client::connect(v5_options(addr, "dev", true)).await;
        c.subscribe("dev/t", QoS::AtLeastOnce).await;
        c
    };
    device(broker.addr).await.disconnect().await;

    let (mut publ, _) = V5Client::connect(v5_options(broker.addr, "pub", true)).await;
    publ.publish_with_properties("dev/t", "expired", expiring(1))
        .await;
    publ.publish("dev/t", QoS::AtLeastOnce, false, "fresh").await;
    publ.disconnect().await;
    let fresh_id = *stored_ids(&pg, "dev/t").await.last().unwrap();
    wait_until_expired(&pg, "mqtt_msg", "expired").await;

    let mut c = device(broker.addr).await;
    assert_eq!(&c.next_publish().await.payload[..], b"fresh");
    c.expect_no_publish(Duration::from_millis(300)).await;
    // Acknowledged (rumqttc acknowledges by itself): the position passes
    // both rows, the expired one included.
    wait_for_position(&pg, "dev", "dev/t", fresh_id).await;
    c.disconnect().await;

    // Nothing comes again, from this broker or after a restart.
    let mut c = device(broker.addr).await;
    c.expect_no_publish(Duration::from_millis(300)).await;
    c.disconnect().await;
    assert!(broker.terminate().await.success());
    broker.restart().await;
    let mut c = device(broker.addr).await;
    c.expect_no_publish(Duration::from_millis(500)).await;
}

/// PUBLISH retained with properties, at QoS 1, and wait for its PUBACK.
async fn publish_retained(c: &mut V5Client, topic: &str, payload: &str, props: PublishProperties) {
    c.client
        .publish_with_properties(topic, QoS::AtLeastOnce, true, payload.to_string(), props)
        .await
        .unwrap();
    c.poll_until(|ev| matches!(ev, rumqttc::v5::Event::Incoming(V5Packet::PubAck(_))).then_some(()))
        .await;
}

/// Retained messages in `mqtt_retain` keep their properties and expiry too:
/// after a restart (the broker's own retained store is gone) a new
/// subscriber gets the live one as published, and not the expired one.
#[tokio::test]
async fn retained_messages_from_the_database_keep_properties_and_expire() {
    let db = TestDb::create().await;
    let mut broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    let (mut publ, _) = V5Client::connect(v5_options(broker.addr, "pub", true)).await;
    publish_retained(&mut publ, "status/a", "gone", expiring(1)).await;
    publish_retained(&mut publ, "status/b", "current", full_properties(3600)).await;
    publ.disconnect().await;
    assert!(broker.terminate().await.success());
    broker.restart().await;
    wait_until_expired(&pg, "mqtt_retain", "gone").await;

    let (mut sub, _) = V5Client::connect(v5_options(broker.addr, "late", true)).await;
    sub.subscribe("status/+", QoS::AtLeastOnce).await;
    let got = sub.next_publish().await;
    assert_eq!(&got.payload[..], b"current");
    assert!(got.retain);
    assert_full_properties(&got, 3600);
    sub.expect_no_publish(Duration::from_millis(500)).await;
}

/// A database made from EMQX's documented schema (text payloads) gets the
/// property columns from the migration, as it gets the indexes: MQTT 5
/// properties are kept there too.
#[tokio::test]
async fn on_emqx_schema_the_migration_adds_the_columns_and_properties_are_kept() {
    let db = TestDb::create().await;
    db.batch_execute(EMQX_SCHEMA).await;
    let broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    let (mut sub, _) = V5Client::connect(v5_options(broker.addr, "emqx-sub", true)).await;
    sub.subscribe("emqx/p", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let (mut publ, _) = V5Client::connect(v5_options(broker.addr, "emqx-pub", true)).await;
    publ.publish_with_properties("emqx/p", "reading", full_properties(3600))
        .await;
    publ.disconnect().await;
    assert_emqx_text_payload(&pg).await;
    let (mut sub, _) = V5Client::connect(v5_options(broker.addr, "emqx-sub", true)).await;
    sub.subscribe("emqx/p", QoS::AtLeastOnce).await;
    let got = sub.next_publish().await;
    assert_eq!(&got.payload[..], b"reading");
    assert_full_properties(&got, 3600);
}

/// Where `mqtt_msg` lacks the columns although the migrations are recorded
/// as applied (EMQX's tables made by hand afterwards), the broker starts,
/// says so, and stores and replays messages without their properties.
#[tokio::test]
async fn without_the_columns_messages_are_stored_and_replayed_without_properties() {
    let db = TestDb::create().await;
    db.batch_execute(EMQX_SCHEMA).await;
    db.batch_execute(
        "CREATE TABLE postbox_schema_version (
             version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO postbox_schema_version (version, name)
             VALUES (1, 'offline_messages'), (2, 'message_properties');",
    )
    .await;
    let broker = broker_with_pgsql(&db, "").await;
    broker
        .wait_for_log("mqtt_msg lacks the message property columns")
        .await;
    let (mut sub, _) = V5Client::connect(v5_options(broker.addr, "plain-sub", true)).await;
    sub.subscribe("plain/p", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let (mut publ, _) = V5Client::connect(v5_options(broker.addr, "plain-pub", true)).await;
    publ.publish_with_properties("plain/p", "reading", full_properties(3600))
        .await;
    publ.disconnect().await;

    let (mut sub, _) = V5Client::connect(v5_options(broker.addr, "plain-sub", true)).await;
    sub.subscribe("plain/p", QoS::AtLeastOnce).await;
    let got = sub.next_publish().await;
    assert_eq!(&got.payload[..], b"reading", "stored and replayed");
    let props = got.properties.unwrap_or_default();
    assert!(
        props.user_properties.is_empty() && props.content_type.is_none(),
        "no columns, no properties: {props:?}"
    );
    sub.expect_no_publish(Duration::from_millis(300)).await;
}

/// A device that subscribed once, EMQX-style (its position is kept by client id).
async fn v5_device(addr: std::net::SocketAddr) -> V5Client {
    let (mut c, _) = V5Client::connect(v5_options(addr, "dev", true)).await;
    c.subscribe("dev/t", QoS::AtLeastOnce).await;
    c
}

fn texts(ps: &[rumqttc::v5::mqttbytes::v5::Publish]) -> Vec<String> {
    ps.iter()
        .map(|p| String::from_utf8(p.payload.to_vec()).unwrap())
        .collect()
}

async fn receive(c: &mut V5Client, n: usize) -> Vec<rumqttc::v5::mqttbytes::v5::Publish> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(c.next_publish().await);
    }
    got
}

/// `backend.pgsql.arrival_property`: a replayed message carries the time the
/// broker stored it; a live one does not.
#[tokio::test]
async fn replayed_messages_carry_the_time_they_were_stored() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "backend.pgsql.arrival_property = stored-at\n").await;
    v5_device(broker.addr).await.disconnect().await;
    let (mut publ, _) = V5Client::connect(v5_options(broker.addr, "pub", true)).await;
    let before = std::time::SystemTime::now();
    publ.publish_acked("dev/t", QoS::AtLeastOnce, false, "stored")
        .await;
    let after = std::time::SystemTime::now();

    let mut dev = v5_device(broker.addr).await;
    let got = dev.next_publish().await;
    assert_eq!(&got.payload[..], b"stored");
    let props = got.properties.expect("a replayed message with properties");
    let stamps: Vec<&String> = props
        .user_properties
        .iter()
        .filter(|(k, _)| k == "stored-at")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(stamps.len(), 1, "{:?}", props.user_properties);
    let stored = humantime::parse_rfc3339(stamps[0]).unwrap();
    // Milliseconds: the stamp is truncated.
    assert!(
        stored + Duration::from_millis(1) >= before && stored <= after,
        "stored at {} between {} and {}",
        stamps[0],
        humantime::format_rfc3339_millis(before),
        humantime::format_rfc3339_millis(after)
    );
    publ.publish_acked("dev/t", QoS::AtLeastOnce, false, "live").await;
    let live = dev.next_publish().await;
    assert_eq!(&live.payload[..], b"live");
    assert!(live
        .properties
        .is_none_or(|p| p.user_properties.iter().all(|(k, _)| k != "stored-at")));
}

/// A SUBSCRIBE with the user property `replay-from` gets again what was
/// stored since that time, acknowledged or not, and nothing from before;
/// the position then moves on as usual.
#[tokio::test]
async fn replay_from_a_time_sends_again_what_was_stored_since() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    let mut dev = v5_device(broker.addr).await;
    let (mut publ, _) = V5Client::connect(v5_options(broker.addr, "pub", true)).await;
    for m in ["m0", "m1"] {
        publ.publish_acked("dev/t", QoS::AtLeastOnce, false, m).await;
    }
    // PUBACK comes after the commit: m0 and m1 were stored before `since`.
    let since = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    for m in ["m2", "m3"] {
        publ.publish_acked("dev/t", QoS::AtLeastOnce, false, m).await;
    }
    assert_eq!(texts(&receive(&mut dev, 4).await), ["m0", "m1", "m2", "m3"]);
    let ids = stored_ids(&pg, "dev/t").await;
    wait_for_position(&pg, "dev", "dev/t", ids[3]).await;
    dev.disconnect().await;

    // A plain SUBSCRIBE: everything was acknowledged, nothing comes.
    let mut dev = v5_device(broker.addr).await;
    dev.expect_no_publish(Duration::from_millis(300)).await;
    // From `since`: m2 and m3 again.
    let codes = dev
        .subscribe_with_user_property("dev/t", QoS::AtLeastOnce, ("replay-from", &since))
        .await;
    assert_eq!(codes, [SubCode::Success(QoS::AtLeastOnce)]);
    assert_eq!(texts(&receive(&mut dev, 2).await), ["m2", "m3"]);
    dev.expect_no_publish(Duration::from_millis(300)).await;
    wait_for_position(&pg, "dev", "dev/t", ids[3]).await;
    // A duration ago: everything stored in the last hour.
    dev.subscribe_with_user_property("dev/t", QoS::AtLeastOnce, ("replay-from", "1h"))
        .await;
    assert_eq!(texts(&receive(&mut dev, 4).await), ["m0", "m1", "m2", "m3"]);
    // A value that is neither: the SUBSCRIBE is refused (0x83).
    let codes = dev
        .subscribe_with_user_property("dev/t", QoS::AtLeastOnce, ("replay-from", "yesterday"))
        .await;
    assert_eq!(codes, [SubCode::ImplementationSpecific]);
}
