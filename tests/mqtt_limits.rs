//! Configured limits and MQTT 5 negotiation of the real `postbox` binary:
//! offline queue and inflight window bounds, `mqtt.max_clients`, session
//! expiry changed at DISCONNECT, UNSUBSCRIBE, `mqtt.server_keepalive` and the
//! client's Maximum Packet Size.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::time::Duration;

use rumqttc::QoS;
use support::*;

const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const SUBACK: u8 = 9;
const UNSUBACK: u8 = 11;
const DISCONNECT: u8 = 14;

/// (topic, packet id, payload) of a QoS 1/2 PUBLISH; `v5` skips the properties.
fn publish_fields(p: &[u8], v5: bool) -> (String, u16, Vec<u8>) {
    assert_eq!(packet_type(p), PUBLISH, "expected PUBLISH, got {p:02x?}");
    let (n, _) = read_varint(&p[1..]);
    let mut i = 1 + n;
    let tlen = usize::from(u16::from_be_bytes([p[i], p[i + 1]]));
    let topic = String::from_utf8(p[i + 2..i + 2 + tlen].to_vec()).unwrap();
    i += 2 + tlen;
    let pkid = u16::from_be_bytes([p[i], p[i + 1]]);
    i += 2;
    if v5 {
        let (n, props) = read_varint(&p[i..]);
        i += n + props;
    }
    (topic, pkid, p[i..].to_vec())
}

fn puback_bytes(pkid: u16) -> Vec<u8> {
    let id = pkid.to_be_bytes();
    vec![0x40, 0x02, id[0], id[1]]
}

/// An MQTT 5 CONNECT carrying the given (already encoded) CONNECT properties.
fn connect_v5_with_props(client_id: &str, clean: bool, keepalive: u16, props: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    encode_str("MQTT", &mut body);
    body.push(5);
    body.push(if clean { 0x02 } else { 0x00 });
    body.extend_from_slice(&keepalive.to_be_bytes());
    encode_varint(props.len(), &mut body);
    body.extend_from_slice(props);
    encode_str(client_id, &mut body);
    packet(0x10, &body)
}

/// Session Expiry Interval property (0x11).
fn session_expiry_prop(secs: u32) -> Vec<u8> {
    let mut p = vec![0x11];
    p.extend_from_slice(&secs.to_be_bytes());
    p
}

/// An MQTT 5 DISCONNECT with reason 0x00 and a Session Expiry Interval.
fn disconnect_v5_with_expiry(secs: u32) -> Vec<u8> {
    let props = session_expiry_prop(secs);
    let mut body = vec![0x00];
    encode_varint(props.len(), &mut body);
    body.extend_from_slice(&props);
    packet(0xE0, &body)
}

/// An MQTT 5 UNSUBSCRIBE (no properties).
fn unsubscribe_v5_bytes(pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    body.push(0);
    for f in filters {
        encode_str(f, &mut body);
    }
    packet(0xA2, &body)
}

/// Raw 3.1.1 connection whose CONNACK accepted it; returns the session-present flag.
async fn raw_v4(addr: std::net::SocketAddr, id: &str, clean: bool) -> (RawClient, bool) {
    let mut raw = RawClient::connect(addr).await;
    raw.send(&connect_v4_bytes(id, clean, 60)).await;
    let ack = raw.read_packet().await.expect("CONNACK");
    assert_eq!(ack[..2], [CONNACK << 4, 2], "CONNACK: {ack:02x?}");
    assert_eq!(ack[3], 0, "connection accepted: {ack:02x?}");
    (raw, ack[2] & 1 == 1)
}

/// Reads one QoS 1 PUBLISH and returns (payload, packet id).
async fn read_v4_publish(raw: &mut RawClient) -> (String, u16) {
    let p = raw.read_packet().await.expect("PUBLISH");
    let (_, pkid, payload) = publish_fields(&p, false);
    (String::from_utf8(payload).unwrap(), pkid)
}

#[tokio::test]
async fn offline_queue_keeps_the_first_messages_that_fit_and_drops_newer_ones() {
    let broker = Broker::start("mqtt.max_queue_len = 3\nmqtt.max_inflight = 1\n").await;
    let (mut raw, _) = raw_v4(broker.addr, "sleeper", false).await;
    raw.send(&subscribe_v4_bytes(1, "q/cmd", 1)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), SUBACK);
    raw.send(&disconnect_bytes()).await;
    raw.expect_closed().await;

    let (mut publ, _) = V4Client::connect(v4_options(broker.addr, "p", true)).await;
    for i in 0..6 {
        publ.publish("q/cmd", QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }

    let (mut raw, present) = raw_v4(broker.addr, "sleeper", false).await;
    assert!(present, "session present");
    // The queue held m0..m2 (m3..m5 arrived when it was full and were
    // dropped); with an inflight window of one, each comes after the previous
    // one is acknowledged.
    for i in 0..3 {
        let (payload, pkid) = read_v4_publish(&mut raw).await;
        assert_eq!(payload, format!("m{i}"), "oldest queued first");
        raw.expect_silence(Duration::from_millis(200)).await;
        raw.send(&puback_bytes(pkid)).await;
    }
    raw.expect_silence(Duration::from_millis(400)).await;
}

#[tokio::test]
async fn a_connected_slow_subscriber_gets_the_window_plus_the_queue() {
    let broker = Broker::start("mqtt.max_queue_len = 3\nmqtt.max_inflight = 1\n").await;
    let (mut raw, _) = raw_v4(broker.addr, "slow", true).await;
    raw.send(&subscribe_v4_bytes(1, "q/live", 1)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), SUBACK);

    let (mut publ, _) = V4Client::connect(v4_options(broker.addr, "p", true)).await;
    for i in 0..6 {
        publ.publish("q/live", QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    // m0 is inflight, m1..m3 fill the queue, m4 and m5 are dropped.
    let mut got = Vec::new();
    for _ in 0..4 {
        let (payload, pkid) = read_v4_publish(&mut raw).await;
        raw.expect_silence(Duration::from_millis(200)).await;
        got.push(payload);
        raw.send(&puback_bytes(pkid)).await;
    }
    assert_eq!(got, ["m0", "m1", "m2", "m3"]);
    raw.expect_silence(Duration::from_millis(400)).await;
}

#[tokio::test]
async fn max_clients_refuses_new_clients_but_admits_a_known_client_id() {
    let broker = Broker::start("mqtt.max_clients = 2\n").await;
    let (_first, _) = V4Client::connect(v4_options(broker.addr, "first", false)).await;
    let (_second, _) = V5Client::connect(v5_options(broker.addr, "second", true)).await;

    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(&connect_v4_bytes("third", true, 30)).await;
    assert_eq!(
        raw.read_packet().await.unwrap(),
        vec![0x20, 0x02, 0x00, 0x03],
        "3.1.1: server unavailable"
    );
    raw.expect_closed().await;

    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(&connect_v5_bytes("third-v5", true, 30)).await;
    let ack = raw.read_packet().await.unwrap();
    assert_eq!(packet_type(&ack), CONNACK);
    assert_eq!(ack[3], 0x97, "MQTT 5: quota exceeded, got {ack:02x?}");
    raw.expect_closed().await;

    // A connection for an id that already has a session takes it over.
    let (mut again, ack) = V4Client::connect(v4_options(broker.addr, "first", false)).await;
    assert!(ack.session_present);
    again.subscribe("still/in", QoS::AtLeastOnce).await;
}

#[tokio::test]
async fn session_expiry_set_at_disconnect_after_zero_at_connect_is_a_protocol_error() {
    let broker = Broker::start("").await;
    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(&connect_v5_bytes("zero-then-60", true, 30)).await; // no expiry: 0
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), CONNACK);
    raw.send(&disconnect_v5_with_expiry(60)).await;
    let d = raw.read_packet().await.expect("DISCONNECT from the broker");
    assert_eq!(packet_type(&d), DISCONNECT, "got {d:02x?}");
    assert_eq!(d[2], 0x82, "protocol error, got {d:02x?}");
    raw.expect_closed().await;
    // The session (expiry 0) did not survive.
    let (_c, ack) = V5Client::connect(v5_options(broker.addr, "zero-then-60", false)).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn session_expiry_zero_at_disconnect_ends_a_persistent_session() {
    let broker = Broker::start("").await;
    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(&connect_v5_with_props(
        "60-then-zero",
        true,
        30,
        &session_expiry_prop(60),
    ))
    .await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), CONNACK);
    raw.send(&subscribe_v5_bytes(1, "gone/soon", 1)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), SUBACK);
    raw.send(&disconnect_v5_with_expiry(0)).await;
    raw.expect_closed().await;

    let mut opts = v5_options(broker.addr, "60-then-zero", false);
    opts.set_session_expiry_interval(Some(60));
    let (_c, ack) = V5Client::connect(opts).await;
    assert!(!ack.session_present, "the session ended at DISCONNECT");
}

#[tokio::test]
async fn after_unsubscribe_nothing_arrives_on_that_filter() {
    let broker = Broker::start("").await;
    let (mut sub, _) = V4Client::connect(v4_options(broker.addr, "unsub", true)).await;
    sub.subscribe("u/a", QoS::AtLeastOnce).await;
    sub.subscribe("u/b", QoS::AtLeastOnce).await;
    sub.unsubscribe("u/a").await;
    let (mut publ, _) = V4Client::connect(v4_options(broker.addr, "p", true)).await;
    publ.publish("u/a", QoS::AtLeastOnce, false, "dropped").await;
    publ.publish("u/b", QoS::AtLeastOnce, false, "kept").await;
    let p = sub.next_publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("u/b", &b"kept"[..]));
    sub.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn mqtt5_unsuback_reports_no_subscription_existed() {
    let broker = Broker::start("").await;
    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(&connect_v5_bytes("unsub5", true, 30)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), CONNACK);
    raw.send(&subscribe_v5_bytes(1, "have/it", 1)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), SUBACK);
    raw.send(&unsubscribe_v5_bytes(7, &["have/it", "never/had"]))
        .await;
    let u = raw.read_packet().await.unwrap();
    assert_eq!(packet_type(&u), UNSUBACK, "got {u:02x?}");
    let (n, _) = read_varint(&u[1..]);
    let mut i = 1 + n;
    assert_eq!(u16::from_be_bytes([u[i], u[i + 1]]), 7, "packet id");
    i += 2;
    let (n, props) = read_varint(&u[i..]);
    i += n + props;
    assert_eq!(&u[i..], &[0x00, 0x11], "success, then no subscription existed");
}

#[tokio::test]
async fn server_keepalive_overrides_the_clients_keep_alive() {
    let broker = Broker::start("mqtt.server_keepalive = 2\n").await;
    let mut opts = v5_options(broker.addr, "asks-60", true);
    opts.set_keep_alive(Duration::from_secs(60));
    let (_c, ack) = V5Client::connect(opts).await;
    let props = ack.properties.expect("CONNACK properties");
    assert_eq!(props.server_keep_alive, Some(2));

    // A silent client that asked for 60 s is held to 2 s (closed after 1.5 x 2 s).
    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(&connect_v5_bytes("silent-60", true, 60)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), CONNACK);
    let start = tokio::time::Instant::now();
    let d = raw.read_packet().await.expect("DISCONNECT before close");
    let waited = start.elapsed();
    assert_eq!(packet_type(&d), DISCONNECT, "got {d:02x?}");
    assert_eq!(d[2], 0x8D, "keep alive timeout, got {d:02x?}");
    raw.expect_closed().await;
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(5),
        "closed after {waited:?}, expected about 3 s"
    );
}

#[tokio::test]
async fn messages_above_the_clients_maximum_packet_size_are_not_delivered() {
    let broker = Broker::start("").await;
    let mut props = vec![0x27];
    props.extend_from_slice(&64u32.to_be_bytes()); // Maximum Packet Size 64
    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(&connect_v5_with_props("tiny", true, 30, &props)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), CONNACK);
    raw.send(&subscribe_v5_bytes(1, "sized", 1)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), SUBACK);

    let (mut publ, _) = V5Client::connect(v5_options(broker.addr, "p", true)).await;
    publ.publish(
        "sized",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        vec![b'x'; 200],
    )
    .await;
    publ.publish("sized", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "small")
        .await;
    let p = raw.read_packet().await.unwrap();
    assert!(
        p.len() <= 64,
        "a {}-byte packet exceeds the client's maximum",
        p.len()
    );
    let (topic, _, payload) = publish_fields(&p, true);
    assert_eq!((topic.as_str(), payload.as_slice()), ("sized", &b"small"[..]));
    raw.expect_silence(Duration::from_millis(300)).await;
}
