//! MQTT over WebSocket (`listener.ws.<name>`, `listener.wss.<name>`):
//! rumqttc's WebSocket transport (an independent client) against TCP
//! clients, packets split across and packed into WebSocket messages, the
//! upgrade's refusals (wrong path, foreign subprotocol), bad input closing
//! only its own connection, the packet size limit, authentication and ACLs,
//! and `wss` (TLS, then the upgrade). tests/browser.rs drives a real browser.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as V5Code, SubscribeReasonCode as V5SubCode};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::{ConnectReturnCode as V4Code, QoS, Transport};
use rustls::pki_types::ServerName;
use support::auth::{v4_refusal, v5_refusal};
use support::certs::Certs;
use support::ptype::*;
use support::*;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// A broker with the harness's TCP listener (first, `broker.addr`) and a
/// WebSocket listener (second), plus `extra` config; returns it and the
/// WebSocket listener's address.
async fn ws_broker(extra: &str) -> (Broker, SocketAddr) {
    ws_broker_with_files(extra, &[]).await
}

async fn ws_broker_with_files(extra: &str, files: &[(&str, &str)]) -> (Broker, SocketAddr) {
    let broker = Broker::start_with_files(&format!("listener.ws.web = 127.0.0.1:0\n{extra}"), files).await;
    let addrs = broker.listener_addrs(2).await;
    (broker, addrs[1])
}

/// rumqttc MQTT 3.1.1 options over WebSocket (`ws://addr/mqtt`).
fn v4_ws_options(addr: SocketAddr, client_id: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(client_id, format!("ws://{addr}/mqtt"), addr.port());
    o.set_transport(Transport::Ws);
    o.set_keep_alive(std::time::Duration::from_secs(30));
    o
}

/// rumqttc MQTT 5 options over WebSocket (`ws://addr/mqtt`).
fn v5_ws_options(addr: SocketAddr, client_id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(client_id, format!("ws://{addr}/mqtt"), addr.port());
    o.set_transport(rumqttc::Transport::Ws);
    o.set_keep_alive(std::time::Duration::from_secs(30));
    o
}

// ---------------------------------------------------------------------------
// A raw MQTT client over WebSocket (tokio-tungstenite's client)
// ---------------------------------------------------------------------------

/// MQTT bytes over WebSocket messages, for byte-level tests.
struct WsRaw<S> {
    ws: WebSocketStream<S>,
    buf: BytesMut,
    /// The subprotocol the server chose, if any.
    protocol: Option<String>,
}

/// The upgrade of `stream` to `url` offering `protocols`; the server's
/// refusal status on an HTTP error.
async fn ws_open_over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    url: &str,
    protocols: Option<&str>,
) -> Result<WsRaw<S>, StatusCode> {
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = protocols {
        req.headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(p).unwrap());
    }
    let attempt = tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(req, stream))
        .await
        .expect("WebSocket upgrade did not finish within 10 s");
    match attempt {
        Ok((ws, resp)) => Ok(WsRaw {
            ws,
            buf: BytesMut::new(),
            protocol: resp
                .headers()
                .get(header::SEC_WEBSOCKET_PROTOCOL)
                .map(|v| v.to_str().unwrap().to_string()),
        }),
        Err(WsError::Http(resp)) => Err(resp.status()),
        Err(e) => panic!("WebSocket upgrade failed: {e}"),
    }
}

async fn ws_open(
    addr: SocketAddr,
    path: &str,
    protocols: Option<&str>,
) -> Result<WsRaw<TcpStream>, StatusCode> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    ws_open_over(tcp, &format!("ws://{addr}{path}"), protocols).await
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsRaw<S> {
    /// Sends `bytes` as one binary message.
    async fn send(&mut self, bytes: &[u8]) {
        self.ws.send(Message::binary(bytes.to_vec())).await.unwrap();
    }

    /// The next whole MQTT packet, from however many messages it takes;
    /// `None` when the broker closes the connection (10 s, then panics).
    async fn read_packet(&mut self) -> Option<Vec<u8>> {
        let read = async {
            loop {
                if let Some(len) = frame_len(&self.buf) {
                    if self.buf.len() >= len {
                        return Some(self.buf.split_to(len).to_vec());
                    }
                }
                match self.ws.next().await {
                    Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(other)) => panic!("expected binary messages, got {other:?}"),
                }
            }
        };
        tokio::time::timeout(TIMEOUT, read)
            .await
            .expect("no packet and no close within 10 s")
    }

    /// CONNECT as `connect` and expect a successful CONNACK.
    async fn connect(&mut self, connect: &[u8]) {
        self.send(connect).await;
        let ack = self.read_packet().await.expect("CONNACK");
        assert_eq!(packet_type(&ack), CONNACK);
        assert_eq!(ack[3], 0, "CONNACK refused: {ack:02x?}");
    }

    async fn expect_closed(&mut self) {
        if let Some(p) = self.read_packet().await {
            panic!("expected the broker to close, got {p:02x?}");
        }
    }
}

/// The topic and payload of a QoS 0 MQTT 3.1.1 PUBLISH.
fn qos0_publish_fields(p: &[u8]) -> (String, Vec<u8>) {
    assert_eq!(packet_type(p), PUBLISH, "{p:02x?}");
    let topic_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let topic = String::from_utf8(p[4..4 + topic_len].to_vec()).unwrap();
    (topic, p[4 + topic_len..].to_vec())
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn websocket_and_tcp_clients_exchange_messages_both_ways() {
    let (broker, ws_addr) = ws_broker("").await;
    let (mut tcp_sub, _) = V4Client::connect(v4_options(broker.addr, "tcp-sub", true)).await;
    tcp_sub.subscribe("from/ws", QoS::AtLeastOnce).await;

    // MQTT 3.1.1 over WebSocket receives what a TCP client publishes.
    let (mut ws_sub, _) = V4Client::connect(v4_ws_options(ws_addr, "ws-sub-v4")).await;
    ws_sub.subscribe("from/tcp", QoS::AtLeastOnce).await;
    let (mut tcp_pub, _) = V4Client::connect(v4_options(broker.addr, "tcp-pub", true)).await;
    tcp_pub
        .publish_acked("from/tcp", QoS::AtLeastOnce, false, "over tcp")
        .await;
    let got = ws_sub.next_publish().await;
    assert_eq!((&got.topic[..], &got.payload[..]), ("from/tcp", &b"over tcp"[..]));

    // MQTT 5 over WebSocket publishes at QoS 1 (acknowledged) to a TCP subscriber.
    let (mut ws_pub, _) = V5Client::connect(v5_ws_options(ws_addr, "ws-pub-v5")).await;
    ws_pub
        .publish_acked("from/ws", V5QoS::AtLeastOnce, false, "over websocket")
        .await;
    let got = tcp_sub.next_publish().await;
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        ("from/ws", &b"over websocket"[..])
    );
    // Retained messages reach WebSocket subscribers too.
    tcp_pub
        .publish_acked("state/lamp", QoS::AtLeastOnce, true, "on")
        .await;
    let (mut late, _) = V5Client::connect(v5_ws_options(ws_addr, "ws-late")).await;
    late.subscribe("state/#", V5QoS::AtLeastOnce).await;
    let got = late.next_publish().await;
    assert_eq!(
        (&got.topic[..], &got.payload[..], got.retain),
        (&b"state/lamp"[..], &b"on"[..], true)
    );
}

#[tokio::test]
async fn packets_may_be_split_across_and_packed_into_websocket_messages() {
    let (broker, ws_addr) = ws_broker("").await;
    let mut raw = ws_open(ws_addr, "/mqtt", Some("mqtt")).await.unwrap();
    assert_eq!(raw.protocol.as_deref(), Some("mqtt"));
    // CONNECT in two messages.
    let connect = connect_v4_bytes("split", true, 60);
    raw.send(&connect[..3]).await;
    raw.send(&connect[3..]).await;
    let ack = raw.read_packet().await.expect("CONNACK");
    assert_eq!(ack, vec![CONNACK << 4, 2, 0, 0]);
    // SUBSCRIBE and PINGREQ in one message: both answered.
    let mut both = subscribe_v4_bytes(7, "packed/#", 0);
    both.extend_from_slice(&pingreq_bytes());
    raw.send(&both).await;
    assert_eq!(raw.read_packet().await.unwrap(), vec![SUBACK << 4, 3, 0, 7, 0]);
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), PINGRESP);
    // And a TCP publisher's message arrives as an MQTT packet.
    let (mut publ, _) = V4Client::connect(v4_options(broker.addr, "tcp-pub", true)).await;
    publ.publish_acked("packed/a", QoS::AtMostOnce, false, "hello")
        .await;
    let p = raw.read_packet().await.unwrap();
    assert_eq!(
        qos0_publish_fields(&p),
        ("packed/a".to_string(), b"hello".to_vec())
    );
    // An MQTT 3.1 client offers `mqttv3.1`, and gets it.
    let old = ws_open(ws_addr, "/mqtt", Some("mqttv3.1")).await.unwrap();
    assert_eq!(old.protocol.as_deref(), Some("mqttv3.1"));
}

#[tokio::test]
async fn the_upgrade_is_refused_off_the_path_and_for_foreign_subprotocols() {
    let (_broker, ws_addr) = ws_broker("listener.ws.web.mqtt_path = /devices/mqtt\n").await;
    // The default path is not served when another is configured.
    assert_eq!(
        ws_open(ws_addr, "/mqtt", Some("mqtt")).await.err(),
        Some(StatusCode::NOT_FOUND)
    );
    assert_eq!(
        ws_open(ws_addr, "/devices/mqtt", Some("wamp, soap")).await.err(),
        Some(StatusCode::BAD_REQUEST)
    );
    // The configured path, with or without a subprotocol offered.
    let mut raw = ws_open(ws_addr, "/devices/mqtt", Some("wamp, mqtt"))
        .await
        .unwrap();
    assert_eq!(raw.protocol.as_deref(), Some("mqtt"));
    raw.connect(&connect_v5_bytes("configured-path", true, 60)).await;
    let mut bare = ws_open(ws_addr, "/devices/mqtt", None).await.unwrap();
    assert_eq!(bare.protocol, None);
    bare.connect(&connect_v4_bytes("no-subprotocol", true, 60)).await;
}

#[tokio::test]
async fn a_text_message_or_a_malformed_packet_closes_only_that_connection() {
    let (broker, ws_addr) = ws_broker("mqtt.max_packet_size = 1KB\n").await;
    let (mut bystander, _) = V4Client::connect(v4_ws_options(ws_addr, "bystander")).await;
    bystander.subscribe("still/#", QoS::AtLeastOnce).await;

    let mut texter = ws_open(ws_addr, "/mqtt", Some("mqtt")).await.unwrap();
    texter.connect(&connect_v4_bytes("texter", true, 60)).await;
    texter.ws.send(Message::text("PUBLISH please")).await.unwrap();
    texter.expect_closed().await;

    // MQTT 5: a malformed packet and a packet over mqtt.max_packet_size get
    // DISCONNECT with their reason codes, as over TCP.
    for (bad, code) in [
        (vec![0x32, 0x03, 0x00, 0x05, b'a'], 0x81),
        (publish_v5_bytes("big", 0, false, 0, &[0u8; 2048]), 0x95),
    ] {
        let mut raw = ws_open(ws_addr, "/mqtt", Some("mqtt")).await.unwrap();
        raw.connect(&connect_v5_bytes("vandal", true, 60)).await;
        raw.send(&bad).await;
        let d = raw.read_packet().await.expect("DISCONNECT before close");
        assert_eq!((packet_type(&d), d[2]), (DISCONNECT, code), "for {bad:02x?}");
        raw.expect_closed().await;
    }
    // A message far beyond the limit is refused by the WebSocket layer.
    let mut huge = ws_open(ws_addr, "/mqtt", Some("mqtt")).await.unwrap();
    huge.connect(&connect_v4_bytes("huge", true, 60)).await;
    let _ = huge.ws.send(Message::binary(vec![0u8; 200 * 1024])).await;
    huge.expect_closed().await;

    let (mut publ, _) = V4Client::connect(v4_options(broker.addr, "p", true)).await;
    publ.publish_acked("still/works", QoS::AtLeastOnce, false, "yes")
        .await;
    assert_eq!(&bystander.next_publish().await.payload[..], b"yes");
}

#[tokio::test]
async fn authentication_and_acls_apply_over_websocket() {
    // alice's password is `secret`.
    let passwd = "alice:$7$101$k3j3KbNrhWR6L5pp$YcsRjdbOC1lWI2VaQVSAx6w0MFZ23Nlz9ZbL7V3fNsS4lIQrext0kfL+gcWpFviRX8i16ZjNyvbMxit4WbyCzg==\n";
    let acl = "user alice\ntopic readwrite sensors/#\ntopic deny sensors/secret\n";
    let (broker, ws_addr) = ws_broker_with_files(
        "plugins.load = auth_file\nmqtt.allow_anonymous = false\n",
        &[
            (
                "auth_file.conf",
                "auth.file.password_file = passwd\nauth.file.acl_file = acl\n",
            ),
            ("passwd", passwd),
            ("acl", acl),
        ],
    )
    .await;
    let login = |id: &str, pw: &str| {
        let mut o = v5_ws_options(ws_addr, id);
        o.set_credentials("alice", pw);
        o
    };
    assert_eq!(
        v5_refusal(login("wrong", "guess")).await,
        V5Code::BadUserNamePassword
    );
    assert_eq!(
        v4_refusal(v4_ws_options(ws_addr, "anonymous")).await,
        V4Code::NotAuthorized
    );
    let (mut alice, _) = V5Client::connect(login("alice-ws", "secret")).await;
    // The ACL decides over WebSocket as over TCP.
    assert_eq!(
        alice.subscribe("sensors/secret", V5QoS::AtLeastOnce).await,
        [V5SubCode::NotAuthorized]
    );
    assert_eq!(
        alice.subscribe("sensors/temp", V5QoS::AtLeastOnce).await,
        [V5SubCode::Success(V5QoS::AtLeastOnce)]
    );
    let mut tcp = rumqttc::MqttOptions::new("alice-tcp", "127.0.0.1", broker.addr.port());
    tcp.set_credentials("alice", "secret");
    let (mut alice_tcp, _) = V4Client::connect(tcp).await;
    alice_tcp
        .publish_acked("sensors/temp", QoS::AtLeastOnce, false, "21")
        .await;
    let got = alice.next_publish().await;
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        (&b"sensors/temp"[..], &b"21"[..])
    );
}

#[tokio::test]
async fn wss_runs_the_upgrade_inside_tls() {
    let certs = Certs::generate();
    let conf = certs.listener_of_kind("wss", "secure", &[("mqtt_path", "/mqtt")]);
    let broker = Broker::start(&conf).await;
    let wss_addr = broker.listener_addrs(2).await[1];
    let open = |config: Arc<rustls::ClientConfig>| async move {
        let tcp = TcpStream::connect(wss_addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        TlsConnector::from(config).connect(name, tcp).await
    };
    // A client that does not trust the server's CA fails at the TLS handshake.
    assert!(open(certs.client_config("other-ca.pem", None)).await.is_err());
    let tls = open(certs.client_config("ca.pem", None)).await.unwrap();
    let mut raw = ws_open_over(tls, "wss://localhost/mqtt", Some("mqtt"))
        .await
        .unwrap();
    raw.connect(&connect_v4_bytes("secure-ws", true, 60)).await;
    raw.send(&subscribe_v4_bytes(1, "secure/#", 0)).await;
    assert_eq!(packet_type(&raw.read_packet().await.unwrap()), SUBACK);
    let (mut publ, _) = V4Client::connect(v4_options(broker.addr, "tcp-pub", true)).await;
    publ.publish_acked("secure/door", QoS::AtMostOnce, false, "locked")
        .await;
    let p = raw.read_packet().await.unwrap();
    assert_eq!(
        qos0_publish_fields(&p),
        ("secure/door".to_string(), b"locked".to_vec())
    );
}
