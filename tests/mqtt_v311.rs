//! MQTT 3.1.1 behaviour of the real `postbox` binary, driven by rumqttc.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::time::Duration;

use rumqttc::QoS;
use support::*;

#[tokio::test]
async fn publish_and_subscribe_at_every_qos() {
    let broker = Broker::start("").await;
    let (mut sub, _) = V4Client::connect(v4_options(broker.addr, "sub", true)).await;
    let (mut publ, _) = V4Client::connect(v4_options(broker.addr, "pub", true)).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let topic = format!("qos/{i}");
        sub.subscribe(&topic, qos).await;
        publ.publish(&topic, qos, false, format!("m{i}")).await;
        let p = sub.next_publish().await;
        assert_eq!(p.topic, topic);
        assert_eq!(p.qos, qos, "delivered at the subscription's QoS");
        assert_eq!(&p.payload[..], format!("m{i}").as_bytes());
    }
    // Delivery QoS is the minimum of publish and subscription QoS.
    sub.subscribe("down/grade", QoS::AtLeastOnce).await;
    publ.publish("down/grade", QoS::ExactlyOnce, false, "x").await;
    assert_eq!(sub.next_publish().await.qos, QoS::AtLeastOnce);
}

#[tokio::test]
async fn offline_messages_are_queued_and_delivered_on_reconnect() {
    let broker = Broker::start("").await;
    let (mut sub, ack) = V4Client::connect(v4_options(broker.addr, "device-1", false)).await;
    assert!(!ack.session_present);
    sub.subscribe("devices/1/cmd", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let (mut publ, _) = V4Client::connect(v4_options(broker.addr, "backend", true)).await;
    for i in 0..5 {
        publ.publish("devices/1/cmd", QoS::AtLeastOnce, false, format!("cmd-{i}"))
            .await;
    }

    let (mut sub, ack) = V4Client::connect(v4_options(broker.addr, "device-1", false)).await;
    assert!(ack.session_present, "persistent session resumed");
    for i in 0..5 {
        let p = sub.next_publish().await;
        assert_eq!(&p.payload[..], format!("cmd-{i}").as_bytes(), "in order");
    }
    sub.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn clean_session_discards_the_old_session() {
    let broker = Broker::start("").await;
    let (mut c, _) = V4Client::connect(v4_options(broker.addr, "cleaner", false)).await;
    c.subscribe("t", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let (mut c, ack) = V4Client::connect(v4_options(broker.addr, "cleaner", true)).await;
    assert!(!ack.session_present);
    let (mut publ, _) = V4Client::connect(v4_options(broker.addr, "p", true)).await;
    publ.publish("t", QoS::AtLeastOnce, false, "after clean").await;
    c.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn retained_messages_match_wildcards_and_empty_payload_deletes() {
    let broker = Broker::start("").await;
    let (mut publ, _) = V4Client::connect(v4_options(broker.addr, "p", true)).await;
    publ.publish("home/kitchen/temp", QoS::AtLeastOnce, true, "21")
        .await;
    publ.publish("home/hall/temp", QoS::AtLeastOnce, true, "19").await;
    publ.publish("home/hall/temp", QoS::AtLeastOnce, true, "20").await; // replaces
    publ.publish("office/temp", QoS::AtLeastOnce, true, "25").await;

    let (mut sub, _) = V4Client::connect(v4_options(broker.addr, "s", true)).await;
    sub.subscribe("home/+/temp", QoS::AtLeastOnce).await;
    let mut got = [sub.next_publish().await, sub.next_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert!(
        got.iter().all(|p| p.retain),
        "retained flag set on subscribe delivery"
    );
    assert_eq!(
        (got[0].topic.as_str(), &got[0].payload[..]),
        ("home/hall/temp", &b"20"[..])
    );
    assert_eq!(
        (got[1].topic.as_str(), &got[1].payload[..]),
        ("home/kitchen/temp", &b"21"[..])
    );
    sub.expect_no_publish(Duration::from_millis(200)).await;

    // Live delivery to an existing subscription has retain = 0.
    publ.publish("home/kitchen/temp", QoS::AtLeastOnce, true, "22")
        .await;
    let live = sub.next_publish().await;
    assert!(!live.retain);

    publ.publish("home/kitchen/temp", QoS::AtLeastOnce, true, "")
        .await; // delete
    let _deleted_live = sub.next_publish().await;
    let (mut sub2, _) = V4Client::connect(v4_options(broker.addr, "s2", true)).await;
    sub2.subscribe("home/#", QoS::AtMostOnce).await;
    let only = sub2.next_publish().await;
    assert_eq!(only.topic, "home/hall/temp");
    sub2.expect_no_publish(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_one_copy_at_the_highest_qos() {
    let broker = Broker::start("").await;
    let (mut sub, _) = V4Client::connect(v4_options(broker.addr, "overlap", true)).await;
    sub.subscribe("a/#", QoS::AtMostOnce).await;
    sub.subscribe("a/+", QoS::AtLeastOnce).await;
    sub.subscribe("a/b", QoS::AtMostOnce).await;
    let (mut publ, _) = V4Client::connect(v4_options(broker.addr, "p", true)).await;
    publ.publish("a/b", QoS::ExactlyOnce, false, "once").await;
    let p = sub.next_publish().await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    sub.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let broker = Broker::start("").await;
    let (mut all, _) = V4Client::connect(v4_options(broker.addr, "all", true)).await;
    all.subscribe("#", QoS::AtMostOnce).await;
    all.subscribe("+/status", QoS::AtMostOnce).await;
    let (mut sys, _) = V4Client::connect(v4_options(broker.addr, "sys", true)).await;
    // Not `$SYS`: the broker publishes its own counters there.
    sys.subscribe("$app/#", QoS::AtMostOnce).await;
    let (mut publ, _) = V4Client::connect(v4_options(broker.addr, "p", true)).await;
    publ.publish("$app/status", QoS::AtLeastOnce, false, "x").await;
    assert_eq!(sys.next_publish().await.topic, "$app/status");
    all.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn shared_subscription_distributes_each_message_to_one_member() {
    let broker = Broker::start("").await;
    let (mut m1, _) = V4Client::connect(v4_options(broker.addr, "m1", true)).await;
    let (mut m2, _) = V4Client::connect(v4_options(broker.addr, "m2", true)).await;
    let (mut plain, _) = V4Client::connect(v4_options(broker.addr, "plain", true)).await;
    m1.subscribe("$share/workers/jobs/+", QoS::AtLeastOnce).await;
    m2.subscribe("$share/workers/jobs/+", QoS::AtLeastOnce).await;
    plain.subscribe("jobs/+", QoS::AtLeastOnce).await;
    let (mut publ, _) = V4Client::connect(v4_options(broker.addr, "p", true)).await;
    let n = 10;
    for i in 0..n {
        publ.publish(&format!("jobs/{i}"), QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    for _ in 0..n {
        plain.next_publish().await;
    }
    let mut seen = Vec::new();
    let (mut c1, mut c2) = (0, 0);
    while seen.len() < n {
        tokio::select! {
            p = m1.next_publish() => { c1 += 1; seen.push(p.payload.to_vec()); }
            p = m2.next_publish() => { c2 += 1; seen.push(p.payload.to_vec()); }
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), n, "every job exactly once across the group");
    assert!(c1 > 0 && c2 > 0, "both members got work ({c1}/{c2})");
    m1.expect_no_publish(Duration::from_millis(200)).await;
    m2.expect_no_publish(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn will_is_published_on_abrupt_close_but_not_on_disconnect() {
    let broker = Broker::start("").await;
    let (mut watcher, _) = V4Client::connect(v4_options(broker.addr, "watcher", true)).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;

    // Normal DISCONNECT: no will.
    let mut opts = v4_options(broker.addr, "polite", true);
    opts.set_last_will(rumqttc::LastWill::new(
        "wills/polite",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (polite, _) = V4Client::connect(opts).await;
    polite.disconnect().await;

    // Abrupt close: raw client with a will, socket dropped.
    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(&connect_v4_with_will("rude", "wills/rude", b"lost", 1))
        .await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), 2, "CONNACK");
    drop(raw);

    let p = watcher.next_publish().await;
    assert_eq!(p.topic, "wills/rude");
    assert_eq!(&p.payload[..], b"lost");
    watcher.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn takeover_closes_the_first_connection_and_keeps_the_session() {
    let broker = Broker::start("").await;
    let (mut first, _) = V4Client::connect(v4_options(broker.addr, "same-id", false)).await;
    first.subscribe("take/over", QoS::AtLeastOnce).await;
    let (mut second, ack) = V4Client::connect(v4_options(broker.addr, "same-id", false)).await;
    assert!(ack.session_present, "the session moved to the new connection");
    first.expect_disconnected().await;
    let (mut publ, _) = V4Client::connect(v4_options(broker.addr, "p", true)).await;
    publ.publish("take/over", QoS::AtLeastOnce, false, "to the new one")
        .await;
    assert_eq!(&second.next_publish().await.payload[..], b"to the new one");
}

/// A 3.1.1 CONNECT with a will and clean session.
fn connect_v4_with_will(client_id: &str, will_topic: &str, will_payload: &[u8], will_qos: u8) -> Vec<u8> {
    let mut body = Vec::new();
    encode_str("MQTT", &mut body);
    body.push(4);
    body.push(0x02 | 0x04 | (will_qos << 3));
    body.extend_from_slice(&30u16.to_be_bytes());
    encode_str(client_id, &mut body);
    encode_str(will_topic, &mut body);
    body.extend_from_slice(&(will_payload.len() as u16).to_be_bytes());
    body.extend_from_slice(will_payload);
    packet(0x10, &body)
}
