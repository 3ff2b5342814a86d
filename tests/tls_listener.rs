//! TLS listeners (`listener.ssl.<name>`): server certificates, client
//! certificate verification, the certificate's common name as username,
//! and startup errors for bad certificate files.
//!
//! Certificates are made at test time with the `openssl` command
//! (`support::certs`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::BytesMut;
use hooks_spec::{AclResult, AuthResult, ConfFile, Flow, Hooks, Plugin, PluginContext, PluginError};
use postbox::config::Config;
use postbox::Server;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use support::certs::Certs;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const VERIFY_PEER: (&str, &str) = ("verify", "verify_peer");
const CA: (&str, &str) = ("cacertfile", "CA");

// ---------------------------------------------------------------------------
// MQTT over TLS, in raw bytes
// ---------------------------------------------------------------------------

/// TCP connect and TLS handshake (10 s).
async fn tls_open(addr: SocketAddr, config: &Arc<ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(Arc::clone(config));
    let name = ServerName::try_from("localhost").unwrap();
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        connector.connect(name, tcp).await
    };
    tokio::time::timeout(TIMEOUT, attempt)
        .await
        .expect("TLS handshake did not finish within 10 s")
}

/// A raw MQTT connection over TLS.
struct TlsMqtt {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
}

impl TlsMqtt {
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// The next whole packet; `Ok(None)` when the broker closed (10 s, then panics).
    async fn read_packet(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let read = async {
            loop {
                if let Some(len) = frame_len(&self.buf) {
                    if self.buf.len() >= len {
                        return Ok(Some(self.buf.split_to(len).to_vec()));
                    }
                }
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    return Ok(None);
                }
            }
        };
        tokio::time::timeout(TIMEOUT, read)
            .await
            .expect("no packet and no close within 10 s")
    }
}

/// MQTT 3.1.1 CONNECT with a username and no password.
fn connect_with_username(client_id: &str, username: &str) -> Vec<u8> {
    let mut body = Vec::new();
    encode_str("MQTT", &mut body);
    body.push(4);
    body.push(0x80 | 0x02);
    body.extend_from_slice(&30u16.to_be_bytes());
    encode_str(client_id, &mut body);
    encode_str(username, &mut body);
    packet(0x10, &body)
}

/// Opens a TLS connection and sends `connect`; returns the CONNACK's return code.
async fn tls_connect_with(addr: SocketAddr, config: &Arc<ClientConfig>, connect: &[u8]) -> (TlsMqtt, u8) {
    let stream = tls_open(addr, config).await.expect("TLS handshake");
    let mut c = TlsMqtt {
        stream,
        buf: BytesMut::new(),
    };
    c.send(connect).await.expect("send CONNECT");
    let ack = c
        .read_packet()
        .await
        .expect("read CONNACK")
        .expect("closed before CONNACK");
    assert_eq!(packet_type(&ack), ptype::CONNACK, "{ack:02x?}");
    let code = ack[3];
    (c, code)
}

/// An MQTT 3.1.1 session over TLS, accepted.
async fn tls_client(addr: SocketAddr, config: &Arc<ClientConfig>, client_id: &str) -> TlsMqtt {
    let (c, code) = tls_connect_with(addr, config, &connect_v4_bytes(client_id, true, 30)).await;
    assert_eq!(code, 0, "CONNACK return code");
    c
}

/// The connection is refused at the TLS handshake: either the handshake
/// fails, or (TLS 1.3, where the client finishes first) the server's alert
/// ends the connection before any MQTT packet comes back.
async fn assert_refused_at_handshake(addr: SocketAddr, config: &Arc<ClientConfig>) {
    let Ok(stream) = tls_open(addr, config).await else {
        return;
    };
    let mut c = TlsMqtt {
        stream,
        buf: BytesMut::new(),
    };
    if c.send(&connect_v4_bytes("refused", true, 30)).await.is_err() {
        return;
    }
    match c.read_packet().await {
        Err(_) | Ok(None) => {}
        Ok(Some(p)) => panic!("expected the TLS handshake to be refused, got an MQTT packet {p:02x?}"),
    }
}

/// The (topic, payload) of an MQTT 3.1.1 PUBLISH with QoS > 0.
fn publish_fields(p: &[u8]) -> (String, Vec<u8>) {
    assert_eq!(packet_type(p), ptype::PUBLISH, "{p:02x?}");
    let mut i = 1;
    while p[i] & 0x80 != 0 {
        i += 1;
    }
    let body = &p[i + 1..];
    let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let topic = String::from_utf8(body[2..2 + tlen].to_vec()).unwrap();
    (topic, body[2 + tlen + 2..].to_vec())
}

async fn start_tls_broker(certs: &Certs, extra: &[(&str, &str)], conf: &str) -> (Broker, SocketAddr) {
    let broker = Broker::start(&format!("{}{conf}", certs.listener("secure", extra))).await;
    let tls_addr = broker.listener_addrs(2).await[1];
    (broker, tls_addr)
}

// ---------------------------------------------------------------------------
// Tests against the binary
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_client_trusting_the_ca_exchanges_messages_over_tls() {
    let certs = Certs::generate();
    let (broker, tls_addr) = start_tls_broker(&certs, &[], "").await;
    let trusting = certs.client_config("ca.pem", None);

    let mut sub = tls_client(tls_addr, &trusting, "tls-sub").await;
    sub.send(&subscribe_v4_bytes(1, "secure/#", 1)).await.unwrap();
    let suback = sub.read_packet().await.unwrap().unwrap();
    assert_eq!(suback, [0x90, 3, 0, 1, 1]);
    // A plain TCP subscriber on the other listener gets the same messages.
    let (mut tcp_sub, _) = V4Client::connect(v4_options(broker.addr, "tcp-sub", true)).await;
    tcp_sub.subscribe("secure/#", rumqttc::QoS::AtLeastOnce).await;

    let mut publisher = tls_client(tls_addr, &trusting, "tls-pub").await;
    publisher
        .send(&publish_v4_bytes("secure/t", 1, false, 7, b"over tls"))
        .await
        .unwrap();
    assert_eq!(publisher.read_packet().await.unwrap().unwrap(), [0x40, 2, 0, 7]);

    let (topic, payload) = publish_fields(&sub.read_packet().await.unwrap().unwrap());
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("secure/t", &b"over tls"[..])
    );
    let p = tcp_sub.next_publish().await;
    assert_eq!(&p.payload[..], b"over tls");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_server_certificate_fails_and_only_it() {
    let certs = Certs::generate();
    let (broker, tls_addr) = start_tls_broker(&certs, &[], "").await;
    let untrusting = certs.client_config("other-ca.pem", None);
    let err = tls_open(tls_addr, &untrusting)
        .await
        .expect_err("a client trusting another CA must not complete the handshake");
    assert!(err.to_string().contains("certificate"), "{err}");
    // The broker noticed, logged it, and serves the next client.
    broker.wait_for_log("TLS handshake failed").await;
    tls_client(tls_addr, &certs.client_config("ca.pem", None), "after").await;
}

#[tokio::test]
async fn verify_peer_with_fail_if_no_peer_cert_refuses_clients_without_a_valid_certificate() {
    let certs = Certs::generate();
    let extra = [VERIFY_PEER, CA, ("fail_if_no_peer_cert", "true")];
    let (broker, tls_addr) = start_tls_broker(&certs, &extra, "").await;
    assert_refused_at_handshake(tls_addr, &certs.client_config("ca.pem", None)).await;
    assert_refused_at_handshake(tls_addr, &certs.client_config("ca.pem", Some("intruder"))).await;
    broker.wait_for_log("TLS handshake failed").await;
    tls_client(
        tls_addr,
        &certs.client_config("ca.pem", Some("client")),
        "with-cert",
    )
    .await;
}

#[tokio::test]
async fn verify_peer_without_fail_if_no_peer_cert_lets_a_client_without_certificate_in() {
    let certs = Certs::generate();
    let (_broker, tls_addr) = start_tls_broker(&certs, &[VERIFY_PEER, CA], "").await;
    tls_client(tls_addr, &certs.client_config("ca.pem", None), "no-cert").await;
    // A certificate that is presented must still verify.
    assert_refused_at_handshake(tls_addr, &certs.client_config("ca.pem", Some("intruder"))).await;
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_closed_and_holds_up_no_one() {
    let certs = Certs::generate();
    let (_broker, tls_addr) = start_tls_broker(&certs, &[], "mqtt.connect_timeout = 500ms\n").await;
    // Silent: no ClientHello. Plain MQTT: not TLS at all.
    let mut silent = RawClient::connect(tls_addr).await;
    let mut plain = RawClient::connect(tls_addr).await;
    plain.send(&connect_v4_bytes("plain", true, 30)).await;
    // Meanwhile a TLS client connects: handshakes run in their own tasks.
    tls_client(tls_addr, &certs.client_config("ca.pem", None), "meanwhile").await;
    plain.expect_closed().await;
    silent.expect_closed().await;
}

#[tokio::test]
async fn bad_certificate_files_stop_startup_naming_file_line_and_key() {
    let certs = Certs::generate();
    let key = certs.path("server.key");
    // Lines 1-3 are the harness's; the listener starts on line 4.
    let cases = [
        (
            format!("listener.ssl.secure = 127.0.0.1:0\nlistener.ssl.secure.certfile = garbage.pem\nlistener.ssl.secure.keyfile = {key}\n"),
            "postbox.conf:5: `listener.ssl.secure.certfile`: ",
            "no PEM certificate",
        ),
        (
            format!("listener.ssl.secure = 127.0.0.1:0\nlistener.ssl.secure.certfile = {}\nlistener.ssl.secure.keyfile = missing.key\n", certs.path("server.pem")),
            "postbox.conf:6: `listener.ssl.secure.keyfile`: ",
            "missing.key",
        ),
        (
            format!("listener.ssl.secure = 127.0.0.1:0\nlistener.ssl.secure.keyfile = {key}\n"),
            "postbox.conf:4: `listener.ssl.secure`: ",
            "needs `listener.ssl.secure.certfile`",
        ),
    ];
    for (conf, location, what) in cases {
        let (status, out) =
            Broker::start_expect_failure(&conf, &[("garbage.pem", "this is not a certificate\n")]).await;
        assert!(!status.success(), "{out}");
        assert!(
            out.contains(location) && out.contains(what),
            "expected {location:?} and {what:?} in:\n{out}"
        );
        assert!(!out.contains("panicked"), "{out}");
    }
}

// ---------------------------------------------------------------------------
// peer_cert_as_username, observed by an in-process plugin
// ---------------------------------------------------------------------------

/// (hook, client id, username, certificate common name) as a plugin saw them.
type Seen = Arc<Mutex<Vec<(String, String, Option<String>, Option<String>)>>>;

struct Recorder(Seen);

#[async_trait]
impl Plugin for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    fn load_config(&mut self, _path: &Path) -> Result<(), PluginError> {
        Ok(())
    }

    async fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
        let seen = Arc::clone(&self.0);
        ctx.hooks.client_authenticate.add("recorder", 0, move |args, _| {
            let c = &args.client;
            seen.lock().unwrap().push((
                "authenticate".into(),
                c.clientid.to_string(),
                c.username.clone(),
                c.cert_common_name.as_deref().map(str::to_string),
            ));
            async { Ok(Flow::Continue(AuthResult::Allow)) }
        });
        let seen = Arc::clone(&self.0);
        ctx.hooks.client_check_acl.add("recorder", 0, move |args, _| {
            let c = &args.client;
            seen.lock().unwrap().push((
                "check_acl".into(),
                c.clientid.to_string(),
                c.username.clone(),
                c.cert_common_name.as_deref().map(str::to_string),
            ));
            async { Ok(Flow::Continue(AclResult::Allow)) }
        });
        Ok(())
    }

    async fn stop(&self, hooks: &Hooks) -> Result<(), PluginError> {
        hooks.remove_owner("recorder");
        Ok(())
    }
}

fn seen_by(seen: &Seen, hook: &str, clientid: &str) -> (Option<String>, Option<String>) {
    let seen = seen.lock().unwrap();
    let (_, _, user, cn) = seen
        .iter()
        .find(|(h, c, _, _)| h == hook && c == clientid)
        .unwrap_or_else(|| panic!("{hook} did not run for {clientid}: {seen:?}"))
        .clone();
    (user, cn)
}

#[tokio::test]
async fn peer_cert_as_username_makes_the_common_name_the_username() {
    let certs = Certs::generate();
    let text = format!(
        "{}{}",
        certs.listener("cn", &[VERIFY_PEER, CA, ("peer_cert_as_username", "cn")]),
        certs.listener("plain_names", &[VERIFY_PEER, CA])
    );
    let conf = ConfFile::parse(&certs.dir.join("inprocess.conf"), &text).unwrap();
    let config = Config::from_conf(&conf).unwrap();
    let seen: Seen = Arc::default();
    let server = Server::start(config, vec![Box::new(Recorder(Arc::clone(&seen)))])
        .await
        .unwrap();
    let (cn_addr, plain_addr) = (server.local_addrs()[0], server.local_addrs()[1]);
    let with_cert = certs.client_config("ca.pem", Some("client"));
    let without_cert = certs.client_config("ca.pem", None);

    // The certificate names the user, whatever CONNECT says.
    let (mut c, code) = tls_connect_with(cn_addr, &with_cert, &connect_with_username("c1", "impostor")).await;
    assert_eq!(code, 0);
    let cn = Some("device-42".to_string());
    assert_eq!(seen_by(&seen, "authenticate", "c1"), (cn.clone(), cn.clone()));
    // ACL checks see the same username.
    c.send(&publish_v4_bytes("t", 1, false, 1, b"x")).await.unwrap();
    assert_eq!(c.read_packet().await.unwrap().unwrap(), [0x40, 2, 0, 1]);
    assert_eq!(seen_by(&seen, "check_acl", "c1"), (cn.clone(), cn.clone()));

    // Without a certificate there is no username: a client cannot claim a certificate's name.
    let (_c2, code) =
        tls_connect_with(cn_addr, &without_cert, &connect_with_username("c2", "device-42")).await;
    assert_eq!(code, 0);
    assert_eq!(seen_by(&seen, "authenticate", "c2"), (None, None));

    // Without peer_cert_as_username the CONNECT's username stands; the common name is still given.
    let (_c3, code) = tls_connect_with(plain_addr, &with_cert, &connect_with_username("c3", "alice")).await;
    assert_eq!(code, 0);
    assert_eq!(seen_by(&seen, "authenticate", "c3"), (Some("alice".into()), cn));
    server.shutdown().await;
}
