//! Rate limits: `listener.tcp.<name>.max_conn_rate` (connections per
//! second per listener) and `mqtt.publish_limit` (PUBLISH packets per
//! client connection). Over a limit nothing is dropped silently: the client
//! is told (CONNACK 0x9F / 3.1.1 0x03; DISCONNECT 0x96 / 3.1.1 close), the
//! refusal is logged and counted under `$SYS`, and a QoS 1 message refused
//! is re-sent by the client after it reconnects.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::net::SocketAddr;

use support::*;

const SYS: &str = "$SYS/brokers/postbox@127.0.0.1/metrics";

/// Connections tried before giving up on hitting the limit; with one
/// connection per second allowed, the second attempt is refused unless it
/// comes a whole second after the first.
const ATTEMPTS: usize = 50;

/// A `$SYS` counter watcher: waits until the published value reaches `at_least`, returns it.
async fn await_counter(watcher: &mut V4Client, name: &str, at_least: u64) -> u64 {
    let topic = format!("{SYS}/{name}");
    loop {
        let p = watcher.next_publish().await;
        if p.topic != topic {
            continue;
        }
        let v: u64 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
        if v >= at_least {
            return v;
        }
    }
}

async fn counter_watcher(addr: SocketAddr, name: &str) -> V4Client {
    let (mut w, _) = V4Client::connect(v4_options(addr, &format!("watch-{name}"), true)).await;
    w.subscribe(&format!("{SYS}/{name}"), rumqttc::QoS::AtMostOnce)
        .await;
    w
}

/// Connects raw clients to `addr` with `connect(i)` until one gets a refusal;
/// returns that CONNACK. With `fresh` (the listener's bucket is full) the
/// first connection must be accepted.
async fn connect_until_refused(addr: SocketAddr, fresh: bool, connect: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
    let mut accepted = Vec::new();
    for i in 0..ATTEMPTS {
        let mut c = RawClient::connect(addr).await;
        c.send(&connect(i)).await;
        let ack = c.read_packet().await.expect("closed before CONNACK");
        assert_eq!(packet_type(&ack), ptype::CONNACK, "{ack:02x?}");
        if ack[3] == 0 {
            accepted.push(c);
            continue;
        }
        assert!(
            i > 0 || !fresh,
            "the first connection on the listener was refused: {ack:02x?}"
        );
        c.expect_closed().await;
        return ack;
    }
    panic!("{ATTEMPTS} connections in a row were accepted at max_conn_rate = 1");
}

#[tokio::test]
async fn connections_over_the_rate_get_0x9f_or_3_and_are_counted() {
    let broker = Broker::start(
        "listener.tcp.limited.max_conn_rate = 1\nlistener.tcp.limited = 127.0.0.1:0\nsys.interval = 100ms\n",
    )
    .await;
    let limited = broker.listener_addrs(2).await[1];
    // The watcher uses the other listener, which has no limit.
    let mut watcher = counter_watcher(broker.addr, "client.rate_limited.connect").await;

    let v5 = connect_until_refused(limited, true, |i| connect_v5_bytes(&format!("v5-{i}"), true, 30)).await;
    assert_eq!(v5[3], 0x9F, "MQTT 5: Connection rate exceeded: {v5:02x?}");
    let v4 = connect_until_refused(limited, false, |i| connect_v4_bytes(&format!("v4-{i}"), true, 30)).await;
    assert_eq!(v4, [0x20, 2, 0, 3], "3.1.1: server unavailable");

    assert_eq!(
        await_counter(&mut watcher, "client.rate_limited.connect", 2).await,
        2
    );
    broker.wait_for_log("connection rate exceeded").await;
    // The unlimited listener is not affected.
    V4Client::connect(v4_options(broker.addr, "unlimited", true)).await;
}

#[tokio::test]
async fn a_publish_over_the_limit_gets_disconnect_0x96_and_is_neither_acknowledged_nor_routed() {
    let broker = Broker::start("mqtt.publish_limit = 2,1h\nsys.interval = 100ms\n").await;
    let mut watcher = counter_watcher(broker.addr, "client.rate_limited.publish").await;
    let (mut sub, _) = V5Client::connect(v5_options(broker.addr, "sub", true)).await;
    sub.subscribe("rl/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;

    let mut publisher = RawClient::connect(broker.addr).await;
    publisher.send(&connect_v5_bytes("pub", true, 30)).await;
    let ack = publisher.read_packet().await.unwrap();
    assert_eq!((packet_type(&ack), ack[3]), (ptype::CONNACK, 0));
    let mut burst = Vec::new();
    for (pkid, payload) in [(1u16, "m1"), (2, "m2"), (3, "m3")] {
        burst.extend(publish_v5_bytes("rl/t", 1, false, pkid, payload.as_bytes()));
    }
    publisher.send(&burst).await;
    for pkid in [1u8, 2] {
        let a = publisher.read_packet().await.unwrap();
        assert_eq!(
            (packet_type(&a), a[2], a[3]),
            (ptype::PUBACK, 0, pkid),
            "{a:02x?}"
        );
    }
    let d = publisher
        .read_packet()
        .await
        .expect("DISCONNECT, not a bare close");
    assert_eq!((packet_type(&d), d[2]), (ptype::DISCONNECT, 0x96), "{d:02x?}");
    publisher.expect_closed().await;

    for expected in ["m1", "m2"] {
        assert_eq!(&sub.next_publish().await.payload[..], expected.as_bytes());
    }
    // m3 was routed before the DISCONNECT or not at all: a marker published
    // after it must be the subscriber's next message.
    let (mut other, _) = V5Client::connect(v5_options(broker.addr, "other", true)).await;
    other
        .publish("rl/t", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "marker")
        .await;
    assert_eq!(&sub.next_publish().await.payload[..], b"marker");

    assert_eq!(
        await_counter(&mut watcher, "client.rate_limited.publish", 1).await,
        1
    );
    broker.wait_for_log("publish rate over mqtt.publish_limit").await;
}

#[tokio::test]
async fn a_qos1_message_over_the_limit_arrives_after_the_publisher_reconnects_and_resends() {
    let broker = Broker::start("mqtt.publish_limit = 2,1h\n").await;
    let (mut sub, _) = V4Client::connect(v4_options(broker.addr, "sub", true)).await;
    sub.subscribe("rl/#", rumqttc::QoS::AtLeastOnce).await;

    // A persistent session: rumqttc re-sends unacknowledged publishes when it resumes.
    let (mut publisher, _) = V4Client::connect(v4_options(broker.addr, "pub", false)).await;
    publisher
        .publish("rl/t", rumqttc::QoS::AtLeastOnce, false, "m1")
        .await;
    publisher
        .publish("rl/t", rumqttc::QoS::AtLeastOnce, false, "m2")
        .await;
    publisher
        .client
        .publish("rl/t", rumqttc::QoS::AtLeastOnce, false, "m3")
        .await
        .unwrap();
    // 3.1.1 has no DISCONNECT from the server: the connection is closed.
    publisher.expect_disconnected().await;
    // Polling again reconnects (a new connection, a new bucket) and re-sends m3.
    let resumed = publisher
        .poll_until(|ev| match ev {
            rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)) => Some(a.session_present),
            _ => None,
        })
        .await;
    assert!(resumed, "the publisher's session should be resumed");
    publisher
        .poll_until(|ev| matches!(ev, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))).then_some(()))
        .await;

    for expected in ["m1", "m2", "m3"] {
        assert_eq!(&sub.next_publish().await.payload[..], expected.as_bytes());
    }
    broker.wait_for_log("publish rate over mqtt.publish_limit").await;
}
