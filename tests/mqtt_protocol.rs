//! Byte-level protocol behaviour: what a client library cannot express
//! (malformed packets, unacknowledged deliveries, timeouts, refusals).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::time::Duration;

use rumqttc::QoS;
use support::*;

const CONNACK: u8 = 2;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const SUBACK: u8 = 9;
const DISCONNECT: u8 = 14;

async fn raw_session(
    addr: std::net::SocketAddr,
    id: &str,
    clean: bool,
    keepalive: u16,
) -> (RawClient, Vec<u8>) {
    let mut raw = RawClient::connect(addr).await;
    raw.send(&connect_v4_bytes(id, clean, keepalive)).await;
    let connack = raw.read_packet().await.expect("CONNACK");
    assert_eq!(packet_type(&connack), CONNACK);
    (raw, connack)
}

/// Offset of the payload in a 3.1.1 PUBLISH: after fixed header, topic and packet id.
fn publish_parts(p: &[u8]) -> (u8, String, u16, Vec<u8>) {
    let mut i = 1;
    while p[i] & 0x80 != 0 {
        i += 1;
    }
    i += 1;
    let tlen = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
    let topic = String::from_utf8(p[i + 2..i + 2 + tlen].to_vec()).unwrap();
    i += 2 + tlen;
    let qos = (p[0] >> 1) & 3;
    let pkid = if qos > 0 {
        let id = u16::from_be_bytes([p[i], p[i + 1]]);
        i += 2;
        id
    } else {
        0
    };
    (p[0], topic, pkid, p[i..].to_vec())
}

#[tokio::test]
async fn unacknowledged_delivery_is_resent_with_dup_after_reconnect() {
    let broker = Broker::start("").await;
    let (mut raw, _) = raw_session(broker.addr, "no-acker", false, 60).await;
    raw.send(&subscribe_v4_bytes(1, "inbox", 1)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), SUBACK);

    let (mut publ, _) = V4Client::connect(v4_options(broker.addr, "p", true)).await;
    publ.publish("inbox", QoS::AtLeastOnce, false, "important").await;
    let first = raw.read_packet().await.unwrap();
    let (flags, topic, pkid, payload) = publish_parts(&first);
    assert_eq!(flags & 0x08, 0, "first delivery has no DUP");
    assert_eq!((topic.as_str(), payload.as_slice()), ("inbox", &b"important"[..]));
    drop(raw); // never acknowledged

    let (mut raw, connack) = raw_session(broker.addr, "no-acker", false, 60).await;
    assert_eq!(connack[2] & 1, 1, "session present");
    let again = raw.read_packet().await.unwrap();
    let (flags, _, pkid2, payload2) = publish_parts(&again);
    assert_eq!(flags & 0x08, 0x08, "redelivery carries DUP");
    assert_eq!(
        (pkid2, payload2.as_slice()),
        (pkid, &b"important"[..]),
        "same packet id and message"
    );
    // Acknowledge it: a further reconnect gets nothing.
    raw.send(&[0x40, 0x02, (pkid >> 8) as u8, pkid as u8]).await;
    raw.send(&disconnect_bytes()).await;
    raw.expect_closed().await;
    let (mut raw, _) = raw_session(broker.addr, "no-acker", false, 60).await;
    raw.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn qos2_resent_publish_is_routed_once() {
    let broker = Broker::start("").await;
    let (mut sub, _) = V4Client::connect(v4_options(broker.addr, "s", true)).await;
    sub.subscribe("q2", QoS::ExactlyOnce).await;
    let (mut raw, _) = raw_session(broker.addr, "q2-pub", true, 60).await;
    let publish = publish_v4_bytes("q2", 2, false, 7, b"exactly");
    raw.send(&publish).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), PUBREC);
    // The client did not see PUBREC and sends again with DUP.
    let mut dup = publish.clone();
    dup[0] |= 0x08;
    raw.send(&dup).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), PUBREC);
    raw.send(&[0x62, 0x02, 0x00, 0x07]).await; // PUBREL
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), 7, "PUBCOMP");
    assert_eq!(&sub.next_publish().await.payload[..], b"exactly");
    sub.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn keepalive_timeout_closes_the_connection_and_fires_the_will() {
    let broker = Broker::start("").await;
    let (mut watcher, _) = V4Client::connect(v4_options(broker.addr, "watcher", true)).await;
    watcher.subscribe("lwt", QoS::AtLeastOnce).await;
    let mut body = Vec::new();
    encode_str("MQTT", &mut body);
    body.extend_from_slice(&[4, 0x02 | 0x04 | 0x08, 0, 1]); // will QoS 1, keepalive 1 s
    encode_str("silent", &mut body);
    encode_str("lwt", &mut body);
    encode_str("silent went away", &mut body);
    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(&packet(0x10, &body)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), CONNACK);
    // Send nothing: the broker closes after 1.5 s.
    raw.expect_closed().await;
    assert_eq!(&watcher.next_publish().await.payload[..], b"silent went away");
}

#[tokio::test]
async fn pings_keep_a_connection_alive() {
    let broker = Broker::start("").await;
    let (mut raw, _) = raw_session(broker.addr, "pinger", true, 1).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        raw.send(&pingreq_bytes()).await;
        assert_eq!(raw.read_packet().await.unwrap(), vec![0xD0, 0x00], "PINGRESP");
    }
    // The deadline followed the pings; once they stop, it still comes.
    raw.expect_closed().await;
}

#[tokio::test]
async fn a_connection_that_never_sends_connect_is_closed() {
    let broker = Broker::start("mqtt.connect_timeout = 1s\n").await;
    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(&[0x10]).await; // the start of a CONNECT, then nothing
    raw.expect_closed().await;
}

#[tokio::test]
async fn unknown_protocol_level_gets_connack_0x01() {
    let broker = Broker::start("").await;
    let mut raw = RawClient::connect(broker.addr).await;
    let mut bytes = connect_v4_bytes("future", true, 30);
    bytes[8] = 9; // protocol level byte
    raw.send(&bytes).await;
    assert_eq!(raw.read_packet().await.unwrap(), vec![0x20, 0x02, 0x00, 0x01]);
    raw.expect_closed().await;
}

#[tokio::test]
async fn mqtt_3_1_clients_are_accepted() {
    let broker = Broker::start("").await;
    let mut body = Vec::new();
    encode_str("MQIsdp", &mut body);
    body.extend_from_slice(&[3, 0x02, 0, 30]);
    encode_str("old-java-client", &mut body);
    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(&packet(0x10, &body)).await;
    assert_eq!(raw.read_packet().await.unwrap(), vec![0x20, 0x02, 0x00, 0x00]);
    raw.send(&subscribe_v4_bytes(1, "legacy", 1)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), SUBACK);
    let (mut publ, _) = V4Client::connect(v4_options(broker.addr, "p", true)).await;
    publ.publish("legacy", QoS::AtLeastOnce, false, "hello 3.1").await;
    let (_, topic, _, payload) = publish_parts(&raw.read_packet().await.unwrap());
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("legacy", &b"hello 3.1"[..])
    );
}

#[tokio::test]
async fn empty_client_id_without_clean_session_is_refused() {
    let broker = Broker::start("").await;
    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(&connect_v4_bytes("", false, 30)).await;
    assert_eq!(raw.read_packet().await.unwrap(), vec![0x20, 0x02, 0x00, 0x02]);
    raw.expect_closed().await;
    // With clean session an id is assigned and the client is in.
    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(&connect_v4_bytes("", true, 30)).await;
    assert_eq!(raw.read_packet().await.unwrap(), vec![0x20, 0x02, 0x00, 0x00]);
}

#[tokio::test]
async fn malformed_packet_closes_only_that_connection() {
    let broker = Broker::start("").await;
    let (mut bystander, _) = V4Client::connect(v4_options(broker.addr, "bystander", true)).await;
    bystander.subscribe("still/works", QoS::AtLeastOnce).await;

    let bad_inputs: Vec<Vec<u8>> = vec![
        vec![0x32, 0x03, 0x00, 0x05, b'a'], // topic length past the packet
        vec![0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01], // QoS 3
        vec![0x80, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], // SUBSCRIBE with wrong flags
        vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], // remaining length > 4 bytes
        vec![0x20, 0x02, 0x00, 0x00],       // CONNACK from a client
        vec![0x82, 0x02, 0x00, 0x01],       // SUBSCRIBE with no filters
        connect_v4_bytes("again", true, 30), // second CONNECT
        publish_v4_bytes("a/+/wild", 0, false, 0, b"x"), // wildcard in a topic name
    ];
    for bad in bad_inputs {
        let (mut raw, _) = raw_session(broker.addr, "vandal", true, 60).await;
        raw.send(&bad).await;
        raw.expect_closed().await;
    }
    let (mut publ, _) = V4Client::connect(v4_options(broker.addr, "p", true)).await;
    publ.publish("still/works", QoS::AtLeastOnce, false, "yes").await;
    assert_eq!(&bystander.next_publish().await.payload[..], b"yes");
}

#[tokio::test]
async fn mqtt5_malformed_packet_gets_disconnect_with_reason() {
    let broker = Broker::start("mqtt.max_packet_size = 1KB\n").await;
    let cases: Vec<(Vec<u8>, u8)> = vec![
        (vec![0x32, 0x03, 0x00, 0x05, b'a'], 0x81), // malformed
        (vec![0x82, 0x03, 0x00, 0x01, 0x00], 0x82), // SUBSCRIBE without filters: protocol error
        (publish_v5_bytes("big", 0, false, 0, &[0u8; 2048]), 0x95), // packet too large
        (publish_v5_bytes("a/#", 0, false, 0, b"x"), 0x90), // topic name invalid
    ];
    for (bad, code) in cases {
        let mut raw = RawClient::connect(broker.addr).await;
        raw.send(&connect_v5_bytes("v5-vandal", true, 60)).await;
        assert_eq!(packet_type(&raw.read_packet().await.unwrap()), CONNACK);
        raw.send(&bad).await;
        let d = raw.read_packet().await.expect("DISCONNECT before close");
        assert_eq!(packet_type(&d), DISCONNECT);
        assert_eq!(d[2], code, "reason code for {bad:02x?}");
        raw.expect_closed().await;
    }
}

#[tokio::test]
async fn a_publisher_gets_puback_and_subscribers_the_payload_unchanged() {
    let broker = Broker::start("").await;
    let (mut sub, _) = V4Client::connect(v4_options(broker.addr, "s", true)).await;
    sub.subscribe("bin", QoS::AtLeastOnce).await;
    let (mut raw, _) = raw_session(broker.addr, "binary-pub", true, 60).await;
    let payload: Vec<u8> = (0..=255u8).collect();
    raw.send(&publish_v4_bytes("bin", 1, false, 42, &payload)).await;
    assert_eq!(raw.read_packet().await.unwrap(), vec![PUBACK << 4, 2, 0, 42]);
    assert_eq!(&sub.next_publish().await.payload[..], &payload[..]);
}
