//! MQTT 5 flow control of the real `postbox` binary: topic aliases towards
//! clients, the broker's Receive Maximum, QoS 0 queued for offline sessions
//! (`mqtt.mqueue_store_qos0`) and per-connection byte-rate limits
//! (`listener.*.rate_limit.conn_bytes_in`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use support::*;

/// An MQTT 5 CONNECT carrying the given (already encoded) CONNECT properties.
fn connect_v5_with_props(client_id: &str, clean: bool, props: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    encode_str("MQTT", &mut body);
    body.extend_from_slice(&[5, if clean { 0x02 } else { 0x00 }, 0, 60]);
    encode_varint(props.len(), &mut body);
    body.extend_from_slice(props);
    encode_str(client_id, &mut body);
    packet(0x10, &body)
}

/// A v5 PUBLISH from the broker: topic name, topic alias, payload.
#[derive(Debug, PartialEq)]
struct V5Pub {
    topic: String,
    alias: Option<u16>,
    payload: Vec<u8>,
}

/// Parses a v5 PUBLISH (any QoS); panics on anything else.
fn parse_v5_publish(p: &[u8]) -> V5Pub {
    assert_eq!(packet_type(p), ptype::PUBLISH, "expected PUBLISH, got {p:02x?}");
    let qos = (p[0] >> 1) & 3;
    let (n, _) = read_varint(&p[1..]);
    let mut i = 1 + n;
    let tlen = usize::from(u16::from_be_bytes([p[i], p[i + 1]]));
    let topic = String::from_utf8(p[i + 2..i + 2 + tlen].to_vec()).unwrap();
    i += 2 + tlen;
    if qos > 0 {
        i += 2;
    }
    let (n, plen) = read_varint(&p[i..]);
    i += n;
    let end = i + plen;
    let mut alias = None;
    while i < end {
        match p[i] {
            0x23 => {
                alias = Some(u16::from_be_bytes([p[i + 1], p[i + 2]]));
                i += 3;
            }
            0x01 => i += 2,
            0x02 => i += 5,
            0x0B => i += 1 + read_varint(&p[i + 1..]).0,
            other => panic!("unexpected PUBLISH property 0x{other:02x}: {p:02x?}"),
        }
    }
    V5Pub {
        topic,
        alias,
        payload: p[end..].to_vec(),
    }
}

/// A raw v5 subscriber to `filter` (QoS 0) announcing `alias_max` (none when `None`).
async fn raw_v5_subscriber(
    addr: std::net::SocketAddr,
    id: &str,
    alias_max: Option<u16>,
    filter: &str,
) -> RawClient {
    let mut props = Vec::new();
    if let Some(m) = alias_max {
        props.push(0x22);
        props.extend_from_slice(&m.to_be_bytes());
    }
    let mut raw = RawClient::connect(addr).await;
    raw.send(&connect_v5_with_props(id, true, &props)).await;
    let ack = raw.read_packet().await.expect("CONNACK");
    assert_eq!(packet_type(&ack), ptype::CONNACK);
    raw.send(&subscribe_v5_bytes(1, filter, 0)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), ptype::SUBACK);
    raw
}

fn expected(topic: &str, alias: Option<u16>, payload: &str) -> V5Pub {
    V5Pub {
        topic: topic.to_string(),
        alias,
        payload: payload.as_bytes().to_vec(),
    }
}

#[tokio::test]
async fn topic_aliases_are_assigned_reused_and_reset_per_connection() {
    let broker = Broker::start("").await;
    let mut sub = raw_v5_subscriber(broker.addr, "aliased", Some(2), "al/#").await;
    let mut plain = raw_v5_subscriber(broker.addr, "plain", None, "al/#").await;
    let mut zero = raw_v5_subscriber(broker.addr, "zero", Some(0), "al/#").await;
    let mut publ = RawClient::connect(broker.addr).await;
    publ.send(&connect_v5_bytes("pub", true, 60)).await;
    publ.read_packet().await.unwrap();
    let sends = ["al/a", "al/a", "al/b", "al/c", "al/a", "al/a"];
    for (i, t) in sends.iter().enumerate() {
        publ.send(&publish_v5_bytes(t, 0, false, 0, format!("m{i}").as_bytes()))
            .await;
    }
    // Alias maximum 2: the least recently used alias goes to a new topic.
    let want = [
        expected("al/a", Some(1), "m0"),
        expected("", Some(1), "m1"),
        expected("al/b", Some(2), "m2"),
        expected("al/c", Some(1), "m3"),
        expected("al/a", Some(2), "m4"),
        expected("", Some(2), "m5"),
    ];
    for w in want {
        assert_eq!(parse_v5_publish(&sub.read_packet().await.unwrap()), w);
    }
    // Clients that allow no alias get the topic name every time.
    for raw in [&mut plain, &mut zero] {
        for (i, t) in sends.iter().enumerate() {
            let got = parse_v5_publish(&raw.read_packet().await.unwrap());
            assert_eq!(got, expected(t, None, &format!("m{i}")));
        }
    }
    // A new connection starts with no alias: the topic name is sent again.
    sub.send(&disconnect_bytes()).await;
    sub.expect_closed().await;
    let mut sub = raw_v5_subscriber(broker.addr, "aliased", Some(2), "al/#").await;
    publ.send(&publish_v5_bytes("al/c", 0, false, 0, b"again")).await;
    publ.send(&publish_v5_bytes("al/c", 0, false, 0, b"again2")).await;
    assert_eq!(
        parse_v5_publish(&sub.read_packet().await.unwrap()),
        expected("al/c", Some(1), "again")
    );
    assert_eq!(
        parse_v5_publish(&sub.read_packet().await.unwrap()),
        expected("", Some(1), "again2")
    );
}

#[tokio::test]
async fn rumqttc_with_topic_alias_max_resolves_every_topic() {
    let broker = Broker::start("").await;
    let mut o = v5_options(broker.addr, "rumq-alias", true);
    o.set_topic_alias_max(Some(3));
    let (mut sub, _) = V5Client::connect(o).await;
    sub.subscribe("ra/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = V5Client::connect(v5_options(broker.addr, "rumq-pub", true)).await;
    let topics = ["ra/one", "ra/two", "ra/three", "ra/four", "ra/five"];
    let sent: Vec<(String, String)> = (0..40)
        .map(|i| (topics[(i * 7 / 3) % topics.len()].to_string(), format!("p{i}")))
        .collect();
    for (t, p) in &sent {
        publ.publish(t, QoS::AtLeastOnce, false, p.clone()).await;
    }
    // rumqttc 0.25 reports the PUBLISH as received (an aliased one with an
    // empty topic) and keeps its own alias table: resolved here the same way.
    let mut table: HashMap<u16, String> = HashMap::new();
    let mut aliased_only = 0;
    for (t, p) in &sent {
        let got = sub.next_publish().await;
        let alias = got.properties.as_ref().and_then(|pr| pr.topic_alias);
        let alias = alias.expect("every PUBLISH carries an alias");
        assert!(
            (1..=3).contains(&alias),
            "alias {alias} within the client's maximum 3"
        );
        let topic = if got.topic.is_empty() {
            aliased_only += 1;
            table.get(&alias).cloned().expect("a known alias")
        } else {
            let topic = String::from_utf8(got.topic.to_vec()).unwrap();
            table.insert(alias, topic.clone());
            topic
        };
        assert_eq!((&topic, &got.payload[..]), (t, p.as_bytes()));
    }
    assert!(aliased_only > 0, "some PUBLISH went out with the alias alone");
    // The client found nothing to object to: still connected.
    publ.publish("ra/one", QoS::AtLeastOnce, false, "last").await;
    assert_eq!(&sub.next_publish().await.payload[..], b"last");
}

/// A QoS 1/2 PUBLISH (no properties) for protocol `level` 4 or 5.
fn publish_bytes(level: u8, topic: &str, qos: u8, pkid: u16) -> Vec<u8> {
    if level == 5 {
        publish_v5_bytes(topic, qos, false, pkid, b"x")
    } else {
        publish_v4_bytes(topic, qos, false, pkid, b"x")
    }
}

/// With `mqtt.max_inflight = 3`: three QoS 2 PUBLISH left without PUBREL
/// (unacknowledged until PUBCOMP), one released, then QoS 1 and QoS 2 up to
/// the maximum (accepted), then one more QoS 1. Returns what the broker
/// answered that last one with: the packet, or `None` when it closed.
async fn exceed_receive_maximum(broker: &Broker, level: u8) -> Option<Vec<u8>> {
    let mut raw = RawClient::connect(broker.addr).await;
    let connect = if level == 5 {
        connect_v5_bytes("eager", true, 60)
    } else {
        connect_v4_bytes("eager", true, 60)
    };
    raw.send(&connect).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), ptype::CONNACK);
    for pkid in 1..=3 {
        raw.send(&publish_bytes(level, "rm", 2, pkid)).await;
        assert_eq!(packet_type(&raw.read_packet().await.unwrap()), ptype::PUBREC);
    }
    // PUBREL 1: PUBCOMP frees one.
    raw.send(&[0x62, 0x02, 0, 1]).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), ptype::PUBCOMP);
    // A QoS 1 PUBLISH is acknowledged at once: it never counts for long.
    raw.send(&publish_bytes(level, "rm", 1, 4)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), ptype::PUBACK);
    raw.send(&publish_bytes(level, "rm", 2, 5)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), ptype::PUBREC);
    // Three unacknowledged (2, 3, 5): a fourth exceeds the Receive Maximum.
    raw.send(&publish_bytes(level, "rm", 1, 6)).await;
    raw.read_packet().await
}

#[tokio::test]
async fn exceeding_the_receive_maximum_gets_disconnect_0x93() {
    let broker = Broker::start("mqtt.max_inflight = 3\n").await;
    let got = exceed_receive_maximum(&broker, 5).await.expect("DISCONNECT");
    assert_eq!(packet_type(&got), ptype::DISCONNECT, "{got:02x?}");
    assert_eq!(got[2], 0x93, "reason: Receive Maximum exceeded: {got:02x?}");
}

#[tokio::test]
async fn backpressure_keeps_clients_over_the_receive_maximum() {
    let broker = Broker::start("mqtt.max_inflight = 3\nmqtt.receive_maximum_exceeded = backpressure\n").await;
    let got = exceed_receive_maximum(&broker, 5).await.expect("PUBACK");
    assert_eq!(packet_type(&got), ptype::PUBACK, "{got:02x?}");
}

#[tokio::test]
async fn mqtt311_clients_are_not_held_to_the_receive_maximum() {
    let broker = Broker::start("mqtt.max_inflight = 3\n").await;
    let got = exceed_receive_maximum(&broker, 4).await.expect("PUBACK");
    assert_eq!(packet_type(&got), ptype::PUBACK, "{got:02x?}");
}

/// A persistent 3.1.1 session subscribed to `q0` at QoS 0 goes offline; three
/// QoS 0 then two QoS 1 messages are published (the last acknowledged, so
/// all were routed); returns the payloads it gets when it reconnects.
async fn offline_qos0(broker: &Broker) -> Vec<String> {
    let (mut sub, _) = V4Client::connect(v4_options(broker.addr, "sleeper0", false)).await;
    sub.subscribe("q0", rumqttc::QoS::AtMostOnce).await;
    sub.disconnect().await;
    let (mut publ, _) = V4Client::connect(v4_options(broker.addr, "pub0", true)).await;
    for i in 0..3 {
        publ.publish("q0", rumqttc::QoS::AtMostOnce, false, format!("m{i}"))
            .await;
    }
    for i in 3..5 {
        publ.publish("q0", rumqttc::QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    let (mut sub, ack) = V4Client::connect(v4_options(broker.addr, "sleeper0", false)).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    loop {
        match sub.poll_once(Duration::from_millis(500)).await {
            None => return got,
            Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                assert_eq!(p.qos, rumqttc::QoS::AtMostOnce);
                got.push(String::from_utf8(p.payload.to_vec()).unwrap());
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("connection error: {e:?}"),
        }
    }
}

#[tokio::test]
async fn qos0_is_queued_for_offline_sessions_within_the_queue_length() {
    let broker = Broker::start("mqtt.max_queue_len = 3\n").await;
    // The queue holds three: m3 and m4 found it full.
    assert_eq!(offline_qos0(&broker).await, ["m0", "m1", "m2"]);
}

#[tokio::test]
async fn mqueue_store_qos0_false_drops_qos0_for_offline_sessions() {
    let broker = Broker::start("mqtt.max_queue_len = 3\nmqtt.mqueue_store_qos0 = false\n").await;
    assert!(offline_qos0(&broker).await.is_empty());
}

/// Sends ten QoS 1 PUBLISH of 1000 bytes in one write; returns how long
/// after it the first and the last PUBACK came (all ten must come).
async fn ten_kilobytes_in(broker: &Broker) -> (Duration, Duration) {
    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(&connect_v4_bytes("bulk", true, 60)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), ptype::CONNACK);
    let mut burst = Vec::new();
    for pkid in 1..=10 {
        burst.extend(publish_v4_bytes("bulk", 1, false, pkid, &[b'x'; 1000]));
    }
    let start = std::time::Instant::now();
    raw.send(&burst).await;
    let mut first = None;
    for _ in 0..10 {
        let p = raw.read_packet().await.expect("PUBACK, not a closed connection");
        assert_eq!(packet_type(&p), ptype::PUBACK);
        first.get_or_insert_with(|| start.elapsed());
    }
    (first.unwrap(), start.elapsed())
}

#[tokio::test]
async fn conn_bytes_in_slows_the_reader_down() {
    // 4 KB/s in bursts of 2 KB: the 10 KB take about two seconds.
    let broker = Broker::start("listener.tcp.external.rate_limit.conn_bytes_in = 2KB,500ms\n").await;
    let (first, last) = ten_kilobytes_in(&broker).await;
    assert!(
        first < Duration::from_secs(1),
        "the burst is read at once: {first:?}"
    );
    assert!(
        last >= Duration::from_millis(1500),
        "slowed to the rate: {last:?}"
    );
}

#[tokio::test]
async fn without_conn_bytes_in_the_reader_is_not_slowed() {
    let broker = Broker::start("").await;
    let (_, last) = ten_kilobytes_in(&broker).await;
    assert!(last < Duration::from_secs(1), "{last:?}");
}
