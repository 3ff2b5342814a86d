//! MQTT 5.0 behaviour of the real `postbox` binary, driven by rumqttc's v5 client.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Filter, PublishProperties, RetainForwardRule, SubscribeProperties};
use rumqttc::v5::mqttbytes::QoS;
use support::*;

fn opts_with_expiry(
    addr: std::net::SocketAddr,
    id: &str,
    clean: bool,
    expiry: u32,
) -> rumqttc::v5::MqttOptions {
    let mut o = v5_options(addr, id, clean);
    o.set_session_expiry_interval(Some(expiry));
    o
}

#[tokio::test]
async fn session_expiry_keeps_then_ends_the_session() {
    let broker = Broker::start("").await;
    let (mut c, _) = V5Client::connect(opts_with_expiry(broker.addr, "exp", true, 1)).await;
    c.subscribe("e", QoS::AtLeastOnce).await;
    c.disconnect().await;
    // Within the interval: resumed.
    let (c, ack) = V5Client::connect(opts_with_expiry(broker.addr, "exp", false, 1)).await;
    assert!(ack.session_present);
    c.disconnect().await;
    // Past it: gone.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (_c, ack) = V5Client::connect(opts_with_expiry(broker.addr, "exp", false, 1)).await;
    assert!(!ack.session_present, "session expired after 1 s");
}

#[tokio::test]
async fn session_expiry_zero_ends_the_session_at_disconnect() {
    let broker = Broker::start("").await;
    let (mut c, _) = V5Client::connect(v5_options(broker.addr, "zero", true)).await;
    c.subscribe("z", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let (_c, ack) = V5Client::connect(v5_options(broker.addr, "zero", false)).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn expired_messages_are_not_delivered_and_the_rest_carry_the_remaining_interval() {
    let broker = Broker::start("").await;
    let (mut c, _) = V5Client::connect(opts_with_expiry(broker.addr, "late", true, 300)).await;
    c.subscribe("news", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let (mut publ, _) = V5Client::connect(v5_options(broker.addr, "p", true)).await;
    let short = PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    let long = PublishProperties {
        message_expiry_interval: Some(120),
        ..Default::default()
    };
    publ.publish_with_properties("news", "stale", short).await;
    publ.publish_with_properties("news", "fresh", long).await;
    publ.publish("news", QoS::AtLeastOnce, false, "forever").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (mut c, _) = V5Client::connect(opts_with_expiry(broker.addr, "late", false, 300)).await;
    let fresh = c.next_publish().await;
    assert_eq!(&fresh.payload[..], b"fresh");
    let left = fresh
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .unwrap();
    assert!(
        left <= 119 && left > 100,
        "remaining interval forwarded, got {left}"
    );
    let forever = c.next_publish().await;
    assert_eq!(&forever.payload[..], b"forever");
    assert!(forever
        .properties
        .and_then(|p| p.message_expiry_interval)
        .is_none());
    c.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn overlapping_subscriptions_carry_every_subscription_identifier() {
    let broker = Broker::start("").await;
    let (mut c, _) = V5Client::connect(v5_options(broker.addr, "ids", true)).await;
    for (filter, id) in [("s/#", 7), ("s/+", 9)] {
        let props = SubscribeProperties {
            id: Some(id),
            user_properties: vec![],
        };
        c.client
            .subscribe_with_properties(filter, QoS::AtLeastOnce, props)
            .await
            .unwrap();
        c.next_suback().await;
    }
    let (mut publ, _) = V5Client::connect(v5_options(broker.addr, "p", true)).await;
    publ.publish("s/x", QoS::AtLeastOnce, false, "one copy").await;
    let p = c.next_publish().await;
    let mut ids = p.properties.unwrap().subscription_identifiers;
    ids.sort();
    assert_eq!(ids, vec![7, 9]);
    c.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn no_local_and_retain_options() {
    let broker = Broker::start("").await;
    let (mut publ, _) = V5Client::connect(v5_options(broker.addr, "p", true)).await;
    publ.publish("r/t", QoS::AtLeastOnce, true, "retained").await;

    let (mut c, _) = V5Client::connect(v5_options(broker.addr, "opts", true)).await;
    let mut never = Filter::new("r/t", QoS::AtLeastOnce);
    never.retain_forward_rule = RetainForwardRule::Never;
    c.client.subscribe_many(vec![never]).await.unwrap();
    c.poll_until(|ev| {
        matches!(
            ev,
            rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::SubAck(_))
        )
        .then_some(())
    })
    .await;
    c.expect_no_publish(Duration::from_millis(300)).await;

    let mut nolocal = Filter::new("mine", QoS::AtLeastOnce);
    nolocal.nolocal = true;
    let mut rap = Filter::new("rap", QoS::AtLeastOnce);
    rap.preserve_retain = true;
    c.client.subscribe_many(vec![nolocal, rap]).await.unwrap();
    c.poll_until(|ev| {
        matches!(
            ev,
            rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::SubAck(_))
        )
        .then_some(())
    })
    .await;
    c.publish("mine", QoS::AtLeastOnce, false, "echo?").await;
    c.expect_no_publish(Duration::from_millis(300)).await;
    publ.publish("mine", QoS::AtLeastOnce, false, "from others").await;
    assert_eq!(&c.next_publish().await.payload[..], b"from others");
    publ.publish("rap", QoS::AtLeastOnce, true, "kept flag").await;
    assert!(c.next_publish().await.retain, "retain as published");
}

#[tokio::test]
async fn user_and_request_response_properties_pass_through() {
    let broker = Broker::start("").await;
    let (mut c, _) = V5Client::connect(v5_options(broker.addr, "responder", true)).await;
    c.subscribe("req", QoS::AtLeastOnce).await;
    let (mut publ, _) = V5Client::connect(v5_options(broker.addr, "requester", true)).await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        response_topic: Some("resp/requester".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "v2".into())],
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    publ.publish_with_properties("req", "ping", props).await;
    let got = c.next_publish().await.properties.unwrap();
    assert_eq!(got.response_topic.as_deref(), Some("resp/requester"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"\x00\x01corr"[..]));
    assert_eq!(
        got.user_properties,
        vec![
            ("k".to_string(), "v".to_string()),
            ("k".to_string(), "v2".to_string())
        ]
    );
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.payload_format_indicator, Some(1));
}

#[tokio::test]
async fn topic_alias_from_the_client_is_resolved() {
    let broker = Broker::start("").await;
    let (mut c, _) = V5Client::connect(v5_options(broker.addr, "s", true)).await;
    c.subscribe("long/topic/name", QoS::AtLeastOnce).await;
    let (mut publ, _) = V5Client::connect(v5_options(broker.addr, "aliaser", true)).await;
    let set = PublishProperties {
        topic_alias: Some(3),
        ..Default::default()
    };
    publ.publish_with_properties("long/topic/name", "first", set)
        .await;
    let use_alias = PublishProperties {
        topic_alias: Some(3),
        ..Default::default()
    };
    publ.publish_with_properties("", "second", use_alias).await;
    for expected in ["first", "second"] {
        let p = c.next_publish().await;
        assert_eq!(
            (&p.topic[..], &p.payload[..]),
            (&b"long/topic/name"[..], expected.as_bytes())
        );
    }
}

#[tokio::test]
async fn empty_client_id_is_assigned() {
    let broker = Broker::start("").await;
    let (_c, ack) = V5Client::connect(v5_options(broker.addr, "", true)).await;
    let id = ack
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("assigned id");
    assert!(id.starts_with("postbox-"));
}

#[tokio::test]
async fn takeover_sends_session_taken_over_to_the_first_connection() {
    let broker = Broker::start("").await;
    let (mut first, _) = V5Client::connect(opts_with_expiry(broker.addr, "twin", true, 60)).await;
    let (_second, ack) = V5Client::connect(opts_with_expiry(broker.addr, "twin", false, 60)).await;
    assert!(ack.session_present);
    let d = first.next_disconnect().await;
    assert_eq!(
        d.reason_code,
        rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver
    );
}

#[tokio::test]
async fn delayed_will_is_cancelled_by_a_reconnect_and_sent_otherwise() {
    let broker = Broker::start("").await;
    let (mut watcher, _) = V5Client::connect(v5_options(broker.addr, "watcher", true)).await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;

    // Abrupt close, then reconnect inside the delay: no will.
    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(&connect_v5_with_will("flaky", 2)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), 2);
    drop(raw);
    let (_back, ack) = V5Client::connect(opts_with_expiry(broker.addr, "flaky", false, 60)).await;
    assert!(ack.session_present);

    // Abrupt close without reconnect: the will arrives after the delay.
    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(&connect_v5_with_will("gone-for-good", 1)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), 2);
    drop(raw);
    let p = watcher.next_publish().await;
    assert_eq!(&p.topic[..], b"will/gone-for-good");
    watcher.expect_no_publish(Duration::from_millis(1500)).await;
}

/// A session's one timer serves, in turn, the keep-alive check of its
/// connection, the delayed will once the connection is gone, and the
/// session's expiry: a silent client is closed after 1.5 times its keep
/// alive, its will follows after the will delay, and the session ends at
/// its expiry.
#[tokio::test]
async fn keepalive_timeout_then_delayed_will_then_expiry_follow_one_another() {
    let broker = Broker::start("").await;
    let (mut watcher, _) = V5Client::connect(v5_options(broker.addr, "watcher", true)).await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;

    let mut body = Vec::new();
    encode_str("MQTT", &mut body);
    body.extend_from_slice(&[5, 0x02 | 0x04 | 0x08, 0, 1]); // keep alive 1 s
    body.extend_from_slice(&[5, 0x11, 0, 0, 0, 3]); // session expiry 3 s
    encode_str("silent", &mut body);
    body.extend_from_slice(&[5, 0x18, 0, 0, 0, 1]); // will delay 1 s
    encode_str("will/silent", &mut body);
    encode_str("gone", &mut body);
    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(&packet(0x10, &body)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), 2);
    // No packet from the client: the broker closes it (keep alive timeout).
    raw.expect_closed().await;
    let closed = std::time::Instant::now();
    let p = watcher.next_publish().await;
    assert_eq!(&p.topic[..], b"will/silent");
    assert!(
        closed.elapsed() >= Duration::from_millis(900),
        "the will came {:?} after the close, before its 1 s delay",
        closed.elapsed()
    );
    // Past the session's expiry (3 s after the close): it is gone.
    watcher.expect_no_publish(Duration::from_millis(2600)).await;
    let (_c, ack) = V5Client::connect(opts_with_expiry(broker.addr, "silent", false, 60)).await;
    assert!(
        !ack.session_present,
        "the session expired 3 s after its connection closed"
    );
}

#[tokio::test]
async fn disconnect_with_will_message_publishes_the_will() {
    let broker = Broker::start("").await;
    let (mut watcher, _) = V5Client::connect(v5_options(broker.addr, "watcher", true)).await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;
    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(&connect_v5_with_will("leaver", 0)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), 2);
    raw.send(&[0xE0, 0x01, 0x04]).await; // DISCONNECT 0x04: with will message
    raw.expect_closed().await;
    assert_eq!(&watcher.next_publish().await.topic[..], b"will/leaver");
}

#[tokio::test]
async fn receive_maximum_of_the_client_bounds_unacknowledged_deliveries() {
    let broker = Broker::start("").await;
    // Raw v5 client announcing receive maximum 2, never acknowledging.
    let mut body = Vec::new();
    encode_str("MQTT", &mut body);
    body.extend_from_slice(&[5, 0x02, 0, 60]);
    body.extend_from_slice(&[3, 0x21, 0, 2]); // properties: receive maximum = 2
    encode_str("slow", &mut body);
    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(&packet(0x10, &body)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), 2);
    raw.send(&subscribe_v5_bytes(1, "flood", 1)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), 9);
    let (mut publ, _) = V5Client::connect(v5_options(broker.addr, "p", true)).await;
    for i in 0..5 {
        publ.publish("flood", QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    let mut pkids = Vec::new();
    for _ in 0..2 {
        let p = raw.read_packet().await.unwrap();
        assert_eq!(packet_type(&p), 3);
        let tlen = u16::from_be_bytes([p[2], p[3]]) as usize;
        pkids.push([p[4 + tlen], p[5 + tlen]]);
    }
    raw.expect_silence(Duration::from_millis(300)).await;
    // One PUBACK opens one slot.
    raw.send(&[0x40, 0x02, pkids[0][0], pkids[0][1]]).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), 3);
    raw.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn graceful_shutdown_tells_mqtt5_clients_and_exits_cleanly() {
    let mut broker = Broker::start("").await;
    let (mut c, _) = V5Client::connect(v5_options(broker.addr, "stay", true)).await;
    let status = broker.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    let d = c.next_disconnect().await;
    assert_eq!(
        d.reason_code,
        rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::ServerShuttingDown
    );
}

/// An MQTT 5 CONNECT with session expiry 60 and a will (QoS 1) with a delay.
fn connect_v5_with_will(id: &str, delay: u32) -> Vec<u8> {
    let mut body = Vec::new();
    encode_str("MQTT", &mut body);
    body.extend_from_slice(&[5, 0x02 | 0x04 | 0x08, 0, 60]);
    body.extend_from_slice(&[5, 0x11, 0, 0, 0, 60]); // session expiry 60
    encode_str(id, &mut body);
    body.extend_from_slice(&[5, 0x18]); // will properties: delay
    body.extend_from_slice(&delay.to_be_bytes());
    encode_str(&format!("will/{id}"), &mut body);
    encode_str("gone", &mut body);
    packet(0x10, &body)
}
