//! Server redirection (MQTT 5 reason code 0x9D, Server moved, with a Server
//! Reference): a draining node sends its clients to `mqtt.server_reference`
//! and refuses new ones, keeping sessions; at shutdown, with a reference
//! set, MQTT 5 clients are sent there instead of hearing 0x8B.
//!
//! rumqttc reports a DISCONNECT's or CONNACK's reason code but drops the
//! Server Reference property, so the property is checked on raw bytes.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, DisconnectReasonCode};
use rumqttc::QoS;
use support::http::*;
use support::*;

const REFERENCE: &str = "other.example:1883";

fn conf() -> String {
    format!("{HTTP_CONF}mqtt.server_reference = {REFERENCE}\n")
}

/// The Server Reference property (0x1C) of `REFERENCE`, length-prefixed.
fn reference_property() -> Vec<u8> {
    let mut p = vec![0x1C];
    encode_str(REFERENCE, &mut p);
    p
}

/// DISCONNECT 0x9D with the Server Reference, as the broker must write it.
fn moved_disconnect() -> Vec<u8> {
    let props = reference_property();
    let mut body = vec![0x9D];
    encode_varint(props.len(), &mut body);
    body.extend_from_slice(&props);
    packet(0xE0, &body)
}

/// CONNACK 0x9D (not session present) with the Server Reference.
fn moved_connack() -> Vec<u8> {
    let props = reference_property();
    let mut body = vec![0x00, 0x9D];
    encode_varint(props.len(), &mut body);
    body.extend_from_slice(&props);
    packet(0x20, &body)
}

async fn raw_v5(b: &Broker, id: &str) -> RawClient {
    let mut raw = RawClient::connect(b.addr).await;
    raw.send(&connect_v5_bytes(id, true, 30)).await;
    let connack = raw.read_packet().await.expect("CONNACK");
    assert_eq!(packet_type(&connack), ptype::CONNACK);
    assert_eq!(connack[3], 0x00, "refused: {connack:02x?}");
    raw
}

async fn drain(http: std::net::SocketAddr, node: &str) -> Answer {
    request(
        http,
        "POST",
        &format!("/api/v4/nodes/{node}/drain"),
        Some(("admin", "s3cret")),
        None,
    )
    .await
}

#[tokio::test]
async fn drain_sends_clients_to_the_server_reference_and_keeps_sessions() {
    let b = Broker::start(&conf()).await;
    let http = b.http_addr().await;

    let mut opts = v5_options(b.addr, "v5-kept", false);
    opts.set_session_expiry_interval(Some(600));
    let (mut v5, _) = V5Client::connect(opts).await;
    v5.subscribe("drain/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    let mut raw = raw_v5(&b, "raw-5").await;
    let (mut v4, _) = V4Client::connect(v4_options(b.addr, "v4-kept", false)).await;
    v4.subscribe("drain/#", QoS::AtLeastOnce).await;

    // Another node's name: not drained here.
    let other = drain(http, "postbox@10.9.9.9").await;
    assert_eq!(other.status, 404, "{}", other.body);
    assert_eq!(get(http, "/status").await.status, 200);

    let a = drain(http, "postbox@127.0.0.1").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let data = &a.json()["data"];
    assert_eq!(data["draining"], true);
    assert_eq!(data["disconnected"], 3, "{}", a.body);
    assert_eq!(data["server_reference"], REFERENCE);

    // MQTT 5: DISCONNECT 0x9D with the Server Reference; 3.1.1: closed.
    let d = v5.next_disconnect().await;
    assert_eq!(d.reason_code, DisconnectReasonCode::ServerMoved);
    assert_eq!(raw.read_packet().await, Some(moved_disconnect()));
    raw.expect_closed().await;
    v4.expect_disconnected().await;

    // New connections are refused the same way while the node drains.
    let mut again = RawClient::connect(b.addr).await;
    again.send(&connect_v5_bytes("raw-new", true, 30)).await;
    assert_eq!(again.read_packet().await, Some(moved_connack()));
    again.expect_closed().await;
    let mut opts = v5_options(b.addr, "v5-kept", false);
    opts.set_session_expiry_interval(Some(600));
    match V5Client::try_connect(opts).await {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::ServerMoved)
        }
        other => panic!("expected CONNACK 0x9D, got {:?}", other.map(|(_, ack)| ack)),
    }
    match V4Client::try_connect(v4_options(b.addr, "v4-new", true)).await {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, rumqttc::ConnectReturnCode::ServiceUnavailable)
        }
        other => panic!(
            "expected CONNACK return code 3, got {:?}",
            other.map(|(_, ack)| ack)
        ),
    }

    // The persistent sessions stay, disconnected, for the clients' return
    // (here or on the node they were sent to).
    for id in ["v5-kept", "v4-kept"] {
        let one = get(http, &format!("/api/v4/clients/{id}")).await;
        assert_eq!(one.status, 200, "{}", one.body);
        assert_eq!(one.json()["data"][0]["connected"], false, "{}", one.body);
        assert_eq!(one.json()["data"][0]["subscriptions_cnt"], 1, "{}", one.body);
    }
    // A load balancer stops sending clients here.
    let status = get(http, "/status").await;
    assert_eq!(status.status, 503, "{}", status.body);
    assert!(status.body.contains("drains"), "{}", status.body);
    let nodes = get(http, "/api/v4/nodes").await.json();
    assert_eq!(nodes["data"][0]["node_status"], "Draining");
}

#[tokio::test]
async fn shutdown_with_a_server_reference_sends_mqtt5_clients_there() {
    let mut b = Broker::start(&conf()).await;
    let (mut v5, _) = V5Client::connect(v5_options(b.addr, "v5-down", true)).await;
    let mut raw = raw_v5(&b, "raw-down").await;
    b.terminate().await;
    assert_eq!(raw.read_packet().await, Some(moved_disconnect()));
    let d = v5.next_disconnect().await;
    assert_eq!(d.reason_code, DisconnectReasonCode::ServerMoved);
}

#[tokio::test]
async fn without_a_server_reference_drain_and_shutdown_say_so_plainly() {
    let mut b = Broker::start(HTTP_CONF).await;
    let http = b.http_addr().await;
    let mut raw = raw_v5(&b, "raw-plain").await;
    let a = drain(http, "postbox@127.0.0.1").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["data"]["server_reference"], serde_json::Value::Null);
    // 0x9D without properties: the client finds another server itself.
    assert_eq!(raw.read_packet().await, Some(vec![0xE0, 2, 0x9D, 0]));
    raw.expect_closed().await;

    let mut b2 = Broker::start("").await;
    let mut raw = raw_v5(&b2, "raw-shut").await;
    b2.terminate().await;
    assert_eq!(raw.read_packet().await, Some(vec![0xE0, 2, 0x8B, 0]));
    b.terminate().await;
}
