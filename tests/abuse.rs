//! Limits hold under abuse (issue 5, "Bad input"): a CONNECT trickled byte by
//! byte is cut off at the connect timeout, topic level and subscription
//! limits refuse with the right codes, an oversized 3.1.1 packet closes the
//! connection, and in every case the broker keeps serving everyone else.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::time::Duration;

use rumqttc::QoS;
use support::*;

const CONNACK: u8 = 2;
const SUBACK: u8 = 9;
const DISCONNECT: u8 = 14;

async fn raw_v4(addr: std::net::SocketAddr, id: &str) -> RawClient {
    let mut raw = RawClient::connect(addr).await;
    raw.send(&connect_v4_bytes(id, true, 60)).await;
    let ack = raw.read_packet().await.expect("CONNACK");
    assert_eq!(ack, vec![0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    raw
}

async fn raw_v5(addr: std::net::SocketAddr, id: &str) -> RawClient {
    let mut raw = RawClient::connect(addr).await;
    raw.send(&connect_v5_bytes(id, true, 60)).await;
    let ack = raw.read_packet().await.expect("CONNACK");
    assert_eq!(packet_type(&ack), CONNACK);
    assert_eq!(ack[3], 0, "CONNACK reason");
    raw
}

/// The reason codes of a SUBACK (`v5`: skips the properties).
fn suback_codes(p: &[u8], v5: bool) -> Vec<u8> {
    assert_eq!(packet_type(p), SUBACK, "expected SUBACK, got {p:02x?}");
    // Fixed header (2 bytes: these SUBACKs are short), packet id, properties.
    let mut i = 4;
    if v5 {
        i += 1 + usize::from(p[4]);
    }
    p[i..].to_vec()
}

/// The broker still routes between two fresh clients.
async fn still_serving(addr: std::net::SocketAddr) {
    let (mut sub, _) = V4Client::connect(v4_options(addr, "bystander-sub", true)).await;
    sub.subscribe("still/works", QoS::AtLeastOnce).await;
    let (mut publ, _) = V4Client::connect(v4_options(addr, "bystander-pub", true)).await;
    publ.publish("still/works", QoS::AtLeastOnce, false, "yes").await;
    assert_eq!(&sub.next_publish().await.payload[..], b"yes");
}

#[tokio::test]
async fn a_connect_trickled_byte_by_byte_is_cut_off_at_the_connect_timeout() {
    let broker = Broker::start("mqtt.connect_timeout = 1s\n").await;
    // With a long client id the CONNECT takes about 7 s at one byte per
    // 100 ms, far past the timeout.
    let connect = connect_v4_bytes(&"s".repeat(60), true, 60);
    let mut raw = RawClient::connect(broker.addr).await;
    let mut closed_after = None;
    for (i, b) in connect.iter().enumerate() {
        if raw.try_send(&[*b]).await.is_err() {
            closed_after = Some(i);
            break;
        }
        match raw.read_packet_within(Duration::from_millis(100)).await {
            RawRead::TimedOut => {}
            RawRead::Closed => {
                closed_after = Some(i + 1);
                break;
            }
            RawRead::Packet(p) => panic!("the broker answered a trickled CONNECT: {p:02x?}"),
        }
    }
    let sent = closed_after.expect("the whole CONNECT went through without the broker closing");
    assert!(
        sent < connect.len(),
        "closed only after {sent} of {} bytes",
        connect.len()
    );
    still_serving(broker.addr).await;
}

#[tokio::test]
async fn topic_levels_over_the_limit_are_refused() {
    let broker = Broker::start("mqtt.max_topic_levels = 3\n").await;
    let mut v4 = raw_v4(broker.addr, "deep-v4").await;
    v4.send(&subscribe_v4_bytes(1, "a/b/c", 1)).await;
    assert_eq!(suback_codes(&v4.read_packet().await.unwrap(), false), vec![1]);
    v4.send(&subscribe_v4_bytes(2, "a/b/c/d", 1)).await;
    assert_eq!(suback_codes(&v4.read_packet().await.unwrap(), false), vec![0x80]);

    let mut v5 = raw_v5(broker.addr, "deep-v5").await;
    v5.send(&subscribe_v5_bytes(1, "a/b/c/#", 1)).await;
    assert_eq!(suback_codes(&v5.read_packet().await.unwrap(), true), vec![0x8F]);
    // A topic name over the limit is a bad packet: DISCONNECT 0x90.
    v5.send(&publish_v5_bytes("a/b/c/d", 1, false, 7, b"deep")).await;
    let d = v5.read_packet().await.expect("DISCONNECT");
    assert_eq!(packet_type(&d), DISCONNECT);
    assert_eq!(d[2], 0x90);
    v5.expect_closed().await;
    still_serving(broker.addr).await;
}

#[tokio::test]
async fn subscriptions_over_the_per_client_limit_are_refused() {
    let broker = Broker::start("mqtt.max_subscriptions = 2\n").await;
    let mut v5 = raw_v5(broker.addr, "greedy").await;
    for (pkid, filter) in [(1, "one/#"), (2, "two/#")] {
        v5.send(&subscribe_v5_bytes(pkid, filter, 1)).await;
        assert_eq!(suback_codes(&v5.read_packet().await.unwrap(), true), vec![1]);
    }
    v5.send(&subscribe_v5_bytes(3, "three/#", 1)).await;
    assert_eq!(
        suback_codes(&v5.read_packet().await.unwrap(), true),
        vec![0x97],
        "quota exceeded"
    );
    // Replacing a subscription it holds is not a new one.
    v5.send(&subscribe_v5_bytes(4, "two/#", 0)).await;
    assert_eq!(suback_codes(&v5.read_packet().await.unwrap(), true), vec![0]);

    let mut v4 = raw_v4(broker.addr, "greedy-v4").await;
    for (pkid, filter) in [(1, "one/#"), (2, "two/#")] {
        v4.send(&subscribe_v4_bytes(pkid, filter, 1)).await;
        assert_eq!(suback_codes(&v4.read_packet().await.unwrap(), false), vec![1]);
    }
    v4.send(&subscribe_v4_bytes(3, "three/#", 1)).await;
    assert_eq!(suback_codes(&v4.read_packet().await.unwrap(), false), vec![0x80]);
    still_serving(broker.addr).await;
}

#[tokio::test]
async fn an_oversized_packet_closes_a_3_1_1_connection() {
    let broker = Broker::start("mqtt.max_packet_size = 1KB\n").await;
    let mut raw = raw_v4(broker.addr, "bulky").await;
    // Only the header announcing 2 KB is needed: the broker must not wait for
    // (or buffer) the rest.
    let big = publish_v4_bytes("big", 0, false, 0, &[0u8; 2048]);
    raw.send(&big[..16]).await;
    raw.expect_closed().await;
    still_serving(broker.addr).await;
}
