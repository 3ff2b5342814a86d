//! What the Postbox fuzz targets run, shared with the stable regression test.
//!
//! The fuzz targets (`fuzz_targets/*.rs`) are one-line wrappers around
//! [`decode_packet`] and [`connection`]; `tests/fuzz_regressions.rs` includes
//! this file with `#[path]` and replays the seed corpus and every kept crash
//! through the very same functions on stable, without fuzzing flags, so a
//! regression fails CI. It also holds the seed generator ([`seeds`]), which
//! writes `fuzz/corpus/<target>/`.
//!
//! Only `postbox`, `hooks_spec`, `bytes`, `tokio` and `async_trait` are used:
//! the broker's test crate has all of them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hooks_spec::{ProtocolVersion, QoS};
use postbox::codec::{decode_connect, Codec, Packet};
use postbox::config::Config;
use postbox::transport::Peer;
use postbox::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The protocols a byte stream is decoded as (3.1 and 3.1.1 share one codec).
const PROTOCOLS: [ProtocolVersion; 3] = [ProtocolVersion::V31, ProtocolVersion::V311, ProtocolVersion::V5];

/// Packets decoded from one input, at most: inputs are small, and a limit
/// keeps a run of tiny packets (PINGREQ is 2 bytes) from dominating.
const MAX_PACKETS: usize = 64;

/// Target `decode_packet`: `data` as the bytes of a connection, decoded as
/// 3.1, 3.1.1 and 5.0 packets after CONNECT (with a large and a small size
/// limit), and as a CONNECT followed by packets of its protocol.
///
/// Panics when decoding panics, when a decoded packet cannot be encoded again,
/// when the encoding does not decode to the same packet, or when encoding is
/// not stable (encode, decode, encode gives other bytes).
pub fn decode_packet(data: &[u8]) {
    for protocol in PROTOCOLS {
        decode_stream(protocol, data, usize::MAX);
        // A small limit exercises the size checks on the fixed header.
        decode_stream(protocol, data, 64);
    }
    for max in [usize::MAX, 64] {
        let mut buf = BytesMut::from(data);
        if let Ok(Some(connect)) = decode_connect(&mut buf, max) {
            let protocol = connect.protocol;
            let packet = Packet::Connect(Box::new(connect));
            let first = encode(protocol, &packet);
            let mut again = BytesMut::from(&first[..]);
            let back = match decode_connect(&mut again, usize::MAX) {
                Ok(Some(c)) => Packet::Connect(Box::new(c)),
                other => panic!("{packet:?} encoded as {first:02x?} decodes to {other:?}"),
            };
            assert_eq!(back, packet, "CONNECT round trip changed the packet");
            assert!(again.is_empty(), "CONNECT encoding longer than its packet");
            assert_eq!(encode(protocol, &back), first, "CONNECT encoding is not stable");
            decode_stream(protocol, &buf, max);
        }
    }
}

/// Decodes packets from `data` as a connection after CONNECT would, checking
/// that each decoded packet round-trips.
fn decode_stream(protocol: ProtocolVersion, data: &[u8], max: usize) {
    let codec = Codec::new(protocol, max);
    let mut buf = BytesMut::from(data);
    for _ in 0..MAX_PACKETS {
        let before = buf.len();
        match codec.decode(&mut buf) {
            Ok(Some(packet)) => {
                assert!(
                    buf.len() < before,
                    "decode returned a packet but consumed nothing"
                );
                round_trip(protocol, &packet);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete packet was consumed");
                return;
            }
            Err(_) => return,
        }
    }
}

/// Encodes `packet` (decoded on `protocol`) and checks it decodes back to
/// itself, and that encoding that gives the same bytes.
fn round_trip(protocol: ProtocolVersion, packet: &Packet) {
    // 3.1.x has no server DISCONNECT: the encoder writes nothing, by design.
    if matches!(packet, Packet::Disconnect(_)) && protocol != ProtocolVersion::V5 {
        return;
    }
    let first = encode(protocol, packet);
    let codec = Codec::new(protocol, usize::MAX);
    let mut again = BytesMut::from(&first[..]);
    let back = match codec.decode(&mut again) {
        Ok(Some(p)) => p,
        other => panic!("{packet:?} encoded as {first:02x?} decodes to {other:?}"),
    };
    assert_eq!(&back, packet, "round trip on {protocol:?} changed the packet");
    assert!(
        again.is_empty(),
        "encoding of {packet:?} is followed by extra bytes"
    );
    assert_eq!(
        encode(protocol, &back),
        first,
        "encoding of {packet:?} is not stable"
    );
}

/// The encoding of a packet that must be encodable (it was decoded).
fn encode(protocol: ProtocolVersion, packet: &Packet) -> Bytes {
    let mut out = BytesMut::new();
    if let Err(e) = Codec::new(protocol, usize::MAX).encode(packet, &mut out, None) {
        panic!("decoded {packet:?} on {protocol:?} cannot be encoded: {e}");
    }
    out.freeze()
}

/// How long one fuzz input's connections may take, in all: far above what a
/// few kilobytes need, so only a hang reaches it.
const CONNECTION_LIMIT: Duration = Duration::from_secs(10);

/// The health check runs after the first input and then after every this many.
const HEALTH_EVERY: u64 = 256;

/// Between two connections of one input: the next connects after the
/// previous one has closed (a persistent session resumes, queued messages
/// and unacknowledged deliveries are sent again).
pub const NEXT: &[u8] = b"~next~";
/// Between two connections of one input: the next connects while the
/// previous one is still open (with the same client id: a takeover).
pub const ALSO: &[u8] = b"~also~";
/// Connections per input, at most.
const MAX_CONNECTIONS: usize = 4;

/// The broker the `connection` target feeds, started once per process.
struct Harness {
    runtime: tokio::runtime::Runtime,
    server: Server,
    inputs: AtomicU64,
}

/// The in-process broker's configuration. Small limits, so inputs of a few
/// kilobytes reach them (queue full, inflight window, awaiting PUBREL, topic
/// aliases, packet size). Sessions may persist (within an input; the harness
/// ends them after each input), `$SYS` publishing is off: inputs stay
/// independent of each other.
const BROKER_CONF: &str = "\
listener.tcp.fuzz = 127.0.0.1:0
mqtt.max_packet_size = 4KB
mqtt.max_inflight = 4
mqtt.max_queue_len = 8
mqtt.max_awaiting_rel = 4
mqtt.max_topic_alias = 4
mqtt.max_subscriptions = 8
mqtt.max_topic_levels = 8
mqtt.session_expiry_interval = 1h
mqtt.connect_timeout = 5s
mqtt.allow_anonymous = true
mqtt.retain_available = true
sys.interval = 0s
log.level = error
hooks.timeout = 5s
shutdown.timeout = 1s
";

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        // One thread: inputs run one after the other and everything they
        // spawn runs while the input is driven, which keeps runs repeatable.
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => panic!("tokio runtime: {e}"),
        };
        let conf = match hooks_spec::ConfFile::parse(std::path::Path::new("fuzz.conf"), BROKER_CONF) {
            Ok(c) => c,
            Err(e) => panic!("fuzz config: {e}"),
        };
        let config = match Config::from_conf(&conf) {
            Ok(c) => c,
            Err(e) => panic!("fuzz config: {e}"),
        };
        let plugins: Vec<Box<dyn hooks_spec::Plugin>> = vec![Box::new(plugin::FuzzPlugin)];
        let server = match runtime.block_on(Server::start(config, plugins)) {
            Ok(s) => s,
            Err(e) => panic!("starting the broker: {e}"),
        };
        Harness {
            runtime,
            server,
            inputs: AtomicU64::new(0),
        }
    })
}

/// Target `connection`: client connections fed `data`, on the broker this
/// process started once.
///
/// `data` is up to [`MAX_CONNECTIONS`] segments separated by [`NEXT`] or
/// [`ALSO`], one per connection. A segment's first byte picks a valid CONNECT
/// from [`seeds::connect_prefixes`] to put before the rest (so the fuzzer
/// spends its time in sessions, not in the handshake), or none (values past
/// the list). Each connection is an in-memory pipe the broker serves like an
/// accepted socket; the segment is written into it, and it is closed before
/// the next connection starts ([`NEXT`]) or after ([`ALSO`]). The broker
/// must close every connection once the client has, within
/// [`CONNECTION_LIMIT`], and its tasks must not panic. Then the harness ends
/// the sessions left (a clean-start connection for each) and deletes the
/// retained messages. After the first input and every [`HEALTH_EVERY`]
/// inputs the broker must still accept a well-formed client and have no
/// connection or session left over.
pub fn connection(data: &[u8]) {
    connection_outputs(data);
}

/// [`connection`], returning what the broker sent on each connection (its
/// first 64 KiB).
pub fn connection_outputs(data: &[u8]) -> Vec<Vec<u8>> {
    let h = harness();
    let n = h.inputs.fetch_add(1, Ordering::Relaxed);
    h.runtime.block_on(async {
        let outputs = match tokio::time::timeout(CONNECTION_LIMIT, run_connections(&h.server, data)).await {
            Ok(outputs) => outputs,
            Err(_) => panic!("the broker did not close the connections within {CONNECTION_LIMIT:?}"),
        };
        match tokio::time::timeout(CONNECTION_LIMIT, end_sessions(&h.server)).await {
            Ok(()) => {}
            Err(_) => panic!("ending the sessions left took more than {CONNECTION_LIMIT:?}"),
        }
        forget_retained(&h.server);
        if n.is_multiple_of(HEALTH_EVERY) {
            health_check(&h.server).await;
        }
        outputs
    })
}

/// Runs the health check of the `connection` target now (the regression
/// test does after every input).
pub fn health_check_now() {
    let h = harness();
    h.runtime.block_on(health_check(&h.server));
}

/// The segments of an input, each with whether it overlaps the previous
/// connection (it came after [`ALSO`]).
fn segments(data: &[u8]) -> Vec<(&[u8], bool)> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut overlap = false;
    while out.len() + 1 < MAX_CONNECTIONS {
        let found = rest.windows(NEXT.len()).position(|w| w == NEXT || w == ALSO);
        let Some(at) = found else {
            break;
        };
        let (segment, tail) = rest.split_at(at);
        out.push((segment, overlap));
        overlap = tail.starts_with(ALSO);
        rest = tail.get(NEXT.len()..).unwrap_or_default();
    }
    out.push((rest, overlap));
    out
}

/// The bytes a segment's connection sends: the CONNECT its first byte picks
/// (if any), then the rest.
fn stream_of(segment: &[u8]) -> Option<Vec<u8>> {
    let (&selector, rest) = segment.split_first()?;
    let mut stream = seeds::connect_prefixes()
        .get(usize::from(selector))
        .map(|(_, bytes)| bytes.clone())
        .unwrap_or_default();
    stream.extend_from_slice(rest);
    Some(stream)
}

async fn run_connections(server: &Server, data: &[u8]) -> Vec<Vec<u8>> {
    let mut outputs = Vec::new();
    let mut open: Vec<Open> = Vec::new();
    for (segment, overlap) in segments(data) {
        let Some(stream) = stream_of(segment) else {
            continue;
        };
        if !overlap {
            for conn in open.drain(..) {
                outputs.push(conn.close().await);
            }
        }
        open.push(Open::start(server, &stream).await);
    }
    for conn in open {
        outputs.push(conn.close().await);
    }
    outputs
}

/// A client connection whose bytes are written and whose writing side is
/// still open.
struct Open {
    /// What the client sent (to know its protocol and maximum packet size).
    sent: Vec<u8>,
    writer: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    reader: tokio::task::JoinHandle<Vec<u8>>,
    handshake: tokio::task::JoinHandle<()>,
}

impl Open {
    /// Connects and writes `stream`.
    async fn start(server: &Server, stream: &[u8]) -> Open {
        // Larger than any input, so writing never waits for the broker.
        let (client, broker_end) = tokio::io::duplex(64 * 1024);
        let handshake = server.serve_stream(broker_end, peer());
        let (mut rd, mut writer) = tokio::io::split(client);
        // Everything the broker says is read, so it never blocks on a full
        // pipe; EOF means it closed the connection.
        let reader = tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut chunk = vec![0u8; 16 * 1024];
            while let Ok(n) = rd.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                let room = (64 * 1024usize).saturating_sub(kept.len());
                kept.extend_from_slice(chunk.get(..n.min(room)).unwrap_or_default());
            }
            kept
        });
        // The broker may close first (malformed input): a failed write is expected.
        let _ = writer.write_all(stream).await;
        Open {
            sent: stream.to_vec(),
            writer,
            reader,
            handshake,
        }
    }

    /// Closes the client's side; returns what the broker sent once it has
    /// closed its side too.
    async fn close(mut self) -> Vec<u8> {
        let _ = self.writer.shutdown().await;
        let output = match self.reader.await {
            Ok(output) => output,
            Err(e) => panic!("reading from the broker failed: {e}"),
        };
        if let Err(e) = self.handshake.await {
            panic!("the connection task failed: {e}");
        }
        check_output(&self.sent, &output);
        output
    }
}

/// What the broker sent on a connection must be what a client can read:
/// CONNACK first, then well-formed packets of the client's protocol, none
/// larger than the maximum packet size the client set in CONNECT (MQTT 5).
/// Only checked when the client sent a valid CONNECT; a stream cut at the
/// 64 KiB kept, or by the close, may end in part of a packet.
///
/// One exception, left as it is: a refusing CONNACK (5 bytes) is sent even
/// to a client whose maximum packet size is smaller than that.
fn check_output(sent: &[u8], output: &[u8]) {
    let Ok(Some(connect)) = decode_connect(&mut BytesMut::from(sent), usize::MAX) else {
        return;
    };
    let max = connect
        .max_packet_size
        .and_then(|m| usize::try_from(m).ok())
        .unwrap_or(usize::MAX);
    let codec = Codec::new(connect.protocol, usize::MAX);
    let mut buf = BytesMut::from(output);
    let mut first = true;
    loop {
        let before = buf.len();
        match codec.decode(&mut buf) {
            Ok(Some(packet)) => {
                let size = before - buf.len();
                let refusal = matches!(&packet, Packet::ConnAck(c) if c.code >= 0x80);
                assert!(
                    size <= max || (first && refusal),
                    "the broker sent {size} bytes to a client that accepts {max}: {packet:?}"
                );
                assert!(
                    !first || matches!(packet, Packet::ConnAck(_)),
                    "the broker's first packet is not CONNACK: {packet:?}"
                );
                first = false;
            }
            Ok(None) => return,
            Err(e) => panic!(
                "the broker sent a packet a {:?} client cannot read ({e}); output: {output:02x?}",
                connect.protocol
            ),
        }
    }
}

/// A peer address for in-memory connections (never bound).
fn peer() -> Peer {
    Peer::plain(SocketAddr::from(([127, 0, 0, 1], 1)))
}

/// Ends every session an input left (persistent ones): a clean-start
/// connection with its client id, with session expiry 0, that disconnects.
async fn end_sessions(server: &Server) {
    for session in server.shared().registry.all() {
        let connect = seeds::encode_connect(&postbox::codec::Connect {
            keepalive: 0,
            ..seeds::plain_connect(ProtocolVersion::V5, &session.client.clientid)
        });
        let mut stream = connect;
        stream.extend_from_slice(&[0xE0, 0x00]);
        Open::start(server, &stream).await.close().await;
    }
}

/// Deletes every retained message, so one input's retained publishes do not
/// reach the next input's subscriptions.
fn forget_retained(server: &Server) {
    let retain = &server.shared().retain;
    for m in retain.matching("#") {
        retain.apply(&Arc::new(hooks_spec::Message::new(
            Arc::clone(&m.topic),
            Bytes::new(),
            QoS::AtMostOnce,
            true,
        )));
    }
}

/// The broker still serves a well-formed client: CONNECT gets CONNACK,
/// PINGREQ gets PINGRESP, DISCONNECT closes; afterwards no connection and no
/// session is left (the harness ended the persistent ones).
async fn health_check(server: &Server) {
    let (mut client, broker_end) = tokio::io::duplex(4096);
    let handshake = server.serve_stream(broker_end, peer());
    let mut connect = seeds::encode_connect(&seeds::plain_connect(ProtocolVersion::V311, "fuzz-health"));
    connect.extend_from_slice(&[0xC0, 0x00]);
    let exchange = async {
        client.write_all(&connect).await?;
        let mut answer = [0u8; 6];
        client.read_exact(&mut answer).await?;
        client.write_all(&[0xE0, 0x00]).await?;
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await?;
        Ok::<_, std::io::Error>((answer, rest))
    };
    match tokio::time::timeout(CONNECTION_LIMIT, exchange).await {
        Ok(Ok((answer, rest))) => {
            assert_eq!(
                answer,
                [0x20, 0x02, 0x00, 0x00, 0xD0, 0x00],
                "health check: CONNACK and PINGRESP expected"
            );
            assert!(rest.is_empty(), "health check: unexpected bytes {rest:02x?}");
        }
        Ok(Err(e)) => panic!("health check: {e}"),
        Err(_) => panic!("health check: no answer within {CONNECTION_LIMIT:?}"),
    }
    if let Err(e) = handshake.await {
        panic!("health check: the connection task failed: {e}");
    }
    let shared = server.shared();
    let settled = tokio::time::timeout(CONNECTION_LIMIT, async {
        while shared.connected() != 0 || !shared.registry.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "health check: {} connections and {} sessions left after every client closed",
        shared.connected(),
        shared.registry.len()
    );
}

/// A plugin with a callback on the hooks the session consults, so the paths
/// taken when chains are not empty are fuzzed too: user `deny` fails
/// authentication, `allow` passes; topics and filters starting with `deny`
/// fail the ACL; publishes to `stop...` are stopped by `message.publish`,
/// which otherwise yields once (it completes later, as a storing plugin's would).
mod plugin {
    use async_trait::async_trait;
    use hooks_spec::{AclResult, AuthResult, Flow, Hooks, Plugin, PluginContext, PluginError};

    const NAME: &str = "fuzz";

    /// See the module documentation.
    pub struct FuzzPlugin;

    #[async_trait]
    impl Plugin for FuzzPlugin {
        fn name(&self) -> &str {
            NAME
        }

        fn load_config(&mut self, _path: &std::path::Path) -> Result<(), PluginError> {
            Ok(())
        }

        async fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
            let hooks = &ctx.hooks;
            hooks.client_authenticate.add(NAME, 0, |args, acc| async move {
                Ok(match args.client.username.as_deref() {
                    Some("deny") => Flow::Stop(AuthResult::Deny),
                    Some("allow") => Flow::Stop(AuthResult::Allow),
                    _ => Flow::Continue(acc),
                })
            });
            hooks.client_check_acl.add(NAME, 0, |args, acc| async move {
                Ok(if args.topic.starts_with("deny") {
                    Flow::Stop(AclResult::Deny)
                } else {
                    Flow::Continue(acc)
                })
            });
            hooks.message_publish.add(NAME, 0, |_, msg| async move {
                if msg.topic.starts_with("stop") {
                    return Ok(Flow::Stop(msg));
                }
                tokio::task::yield_now().await;
                Ok(Flow::Continue(msg))
            });
            hooks
                .message_delivered
                .add(NAME, 0, |_, msg| async move { Ok(Flow::Continue(msg)) });
            hooks
                .message_acked
                .add(NAME, 0, |_, ()| async move { Ok(Flow::Continue(())) });
            Ok(())
        }

        async fn stop(&self, hooks: &Hooks) -> Result<(), PluginError> {
            hooks.remove_owner(NAME);
            Ok(())
        }
    }
}

/// The seed corpus: valid packets of every type in both protocol versions,
/// built with the codec, and the CONNECT prefixes of the `connection` target.
pub mod seeds {
    use bytes::{Bytes, BytesMut};
    use hooks_spec::{ProtocolVersion, PublishProperties, QoS};
    use postbox::codec::{
        Ack, Codec, ConnAck, ConnAckProps, Connect, Disconnect, Packet, Publish, SubAck, Subscribe,
        SubscribeFilter, UnsubAck, Unsubscribe, Will,
    };

    fn proto_name(p: ProtocolVersion) -> &'static str {
        match p {
            ProtocolVersion::V31 => "v31",
            ProtocolVersion::V311 => "v311",
            ProtocolVersion::V5 => "v5",
        }
    }

    fn pairs(n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("key{i}"), format!("value {i}")))
            .collect()
    }

    fn pub_props() -> PublishProperties {
        PublishProperties {
            payload_format_indicator: Some(1),
            content_type: Some("application/json".into()),
            response_topic: Some("reply/fz".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
            user_properties: pairs(2),
        }
    }

    /// A CONNECT with a clean session, keep alive 60 and nothing else.
    pub fn plain_connect(protocol: ProtocolVersion, client_id: &str) -> Connect {
        Connect {
            protocol,
            clean_start: true,
            keepalive: 60,
            client_id: client_id.into(),
            ..Connect::default()
        }
    }

    /// The encoding of a CONNECT in its own protocol.
    pub fn encode_connect(c: &Connect) -> Vec<u8> {
        encode(c.protocol, &Packet::Connect(Box::new(c.clone())))
    }

    /// The encoding of `packet` on `protocol` (panics on a packet built wrong here).
    pub fn encode(protocol: ProtocolVersion, packet: &Packet) -> Vec<u8> {
        let mut out = BytesMut::new();
        if let Err(e) = Codec::new(protocol, usize::MAX).encode(packet, &mut out, None) {
            panic!("seed {packet:?} on {protocol:?}: {e}");
        }
        out.to_vec()
    }

    /// Every CONNECT variant worth seeding, named.
    fn connects(protocol: ProtocolVersion) -> Vec<(&'static str, Connect)> {
        let v5 = protocol == ProtocolVersion::V5;
        let will = Will {
            topic: "will/fz".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            delay_interval: v5.then_some(0),
            message_expiry: v5.then_some(60),
            properties: if v5 {
                pub_props()
            } else {
                PublishProperties::default()
            },
        };
        let mut out = vec![
            ("connect-plain", plain_connect(protocol, "fz-plain")),
            (
                "connect-persistent-will-login",
                Connect {
                    clean_start: false,
                    client_id: "fz-will".into(),
                    username: Some("allow".into()),
                    password: Some(Bytes::from_static(b"\xff\x00 binary")),
                    will: Some(will.clone()),
                    ..plain_connect(protocol, "")
                },
            ),
            (
                "connect-empty-id-login",
                Connect {
                    username: Some(String::new()),
                    password: Some(Bytes::new()),
                    keepalive: 0,
                    ..plain_connect(protocol, "")
                },
            ),
            (
                "connect-denied",
                Connect {
                    username: Some("deny".into()),
                    ..plain_connect(protocol, "fz-denied")
                },
            ),
        ];
        if v5 {
            out.push((
                "connect-properties",
                Connect {
                    clean_start: false,
                    session_expiry: Some(300),
                    receive_maximum: Some(2),
                    max_packet_size: Some(512),
                    topic_alias_max: Some(4),
                    request_response_info: Some(1),
                    request_problem_info: Some(0),
                    user_properties: pairs(2),
                    will: Some(Will {
                        delay_interval: Some(1),
                        qos: QoS::ExactlyOnce,
                        ..will
                    }),
                    ..plain_connect(protocol, "fz-props")
                },
            ));
            out.push((
                "connect-auth-method-denied",
                Connect {
                    auth_method: Some("SCRAM-SHA-1".into()),
                    auth_data: Some(Bytes::from_static(b"client-first")),
                    ..plain_connect(protocol, "fz-auth")
                },
            ));
        }
        out
    }

    /// Every other packet type, named; `protocol` decides which MQTT 5 fields
    /// and reason codes are set (3.1.1 has none).
    fn packets(protocol: ProtocolVersion) -> Vec<(&'static str, Packet)> {
        let v5 = protocol == ProtocolVersion::V5;
        let props = |p: PublishProperties| if v5 { p } else { PublishProperties::default() };
        let ack = |pkid: u16, reason: u8| Ack {
            pkid,
            reason: if v5 { reason } else { 0 },
            reason_string: (v5 && reason != 0).then(|| "because".to_string()),
            user_properties: if v5 { pairs(1) } else { Vec::new() },
        };
        let mut out = vec![
            (
                "connack",
                Packet::ConnAck(ConnAck {
                    session_present: true,
                    code: 0,
                    props: ConnAckProps::default(),
                }),
            ),
            (
                "connack-refused",
                Packet::ConnAck(ConnAck {
                    session_present: false,
                    code: 0x86,
                    props: ConnAckProps::default(),
                }),
            ),
            (
                "publish-qos0",
                Packet::Publish(Publish {
                    topic: "a/b".into(),
                    payload: Bytes::from_static(b"hello"),
                    ..Publish::default()
                }),
            ),
            (
                "publish-qos1-props",
                Packet::Publish(Publish {
                    qos: QoS::AtLeastOnce,
                    dup: true,
                    topic: "a/b/c".into(),
                    pkid: 1,
                    payload: Bytes::from_static(b"{\"t\":21.5}"),
                    properties: props(pub_props()),
                    message_expiry: v5.then_some(30),
                    ..Publish::default()
                }),
            ),
            (
                "publish-qos2-retain",
                Packet::Publish(Publish {
                    qos: QoS::ExactlyOnce,
                    retain: true,
                    topic: "x".into(),
                    pkid: 65_535,
                    payload: Bytes::from(vec![7u8; 200]),
                    ..Publish::default()
                }),
            ),
            ("puback", Packet::PubAck(ack(1, 0x10))),
            ("pubrec", Packet::PubRec(ack(2, 0x80))),
            ("pubrel", Packet::PubRel(ack(3, 0x92))),
            ("pubcomp", Packet::PubComp(ack(4, 0))),
            (
                "subscribe",
                Packet::Subscribe(Subscribe {
                    pkid: 5,
                    filters: vec![
                        SubscribeFilter::new("a/+", QoS::AtMostOnce),
                        SubscribeFilter {
                            filter: if v5 { "$share/g/b/#".into() } else { "b/#".into() },
                            qos: QoS::ExactlyOnce,
                            no_local: v5,
                            retain_as_published: v5,
                            retain_handling: if v5 { 1 } else { 0 },
                        },
                    ],
                    subscription_id: v5.then_some(42),
                    user_properties: if v5 { pairs(1) } else { Vec::new() },
                }),
            ),
            (
                "suback",
                Packet::SubAck(SubAck {
                    pkid: 5,
                    codes: if v5 { vec![0, 2, 0x87] } else { vec![0, 2, 0x80] },
                    reason_string: v5.then(|| "partly".to_string()),
                }),
            ),
            (
                "unsubscribe",
                Packet::Unsubscribe(Unsubscribe {
                    pkid: 6,
                    filters: vec!["a/+".into(), "b/#".into()],
                    user_properties: if v5 { pairs(1) } else { Vec::new() },
                }),
            ),
            (
                "unsuback",
                Packet::UnsubAck(UnsubAck {
                    pkid: 6,
                    codes: if v5 { vec![0, 0x11] } else { Vec::new() },
                }),
            ),
            ("pingreq", Packet::PingReq),
            ("pingresp", Packet::PingResp),
        ];
        if v5 {
            out.extend([
                (
                    "connack-properties",
                    Packet::ConnAck(ConnAck {
                        session_present: false,
                        code: 0,
                        props: ConnAckProps {
                            session_expiry: Some(0),
                            receive_maximum: Some(32),
                            max_qos: Some(1),
                            retain_available: Some(true),
                            max_packet_size: Some(4096),
                            assigned_client_id: Some("postbox-1".into()),
                            topic_alias_max: Some(4),
                            reason_string: Some("welcome".into()),
                            user_properties: pairs(1),
                            wildcard_available: Some(true),
                            sub_ids_available: Some(true),
                            shared_available: Some(true),
                            server_keepalive: Some(30),
                            response_info: Some("resp/".into()),
                            server_reference: Some("other:1884".into()),
                            auth_method: None,
                            auth_data: None,
                        },
                    }),
                ),
                (
                    "publish-alias-set",
                    Packet::Publish(Publish {
                        qos: QoS::AtLeastOnce,
                        topic: "alias/t".into(),
                        pkid: 7,
                        payload: Bytes::from_static(b"1"),
                        topic_alias: Some(1),
                        ..Publish::default()
                    }),
                ),
                (
                    "publish-alias-use",
                    Packet::Publish(Publish {
                        topic: String::new(),
                        payload: Bytes::from_static(b"2"),
                        topic_alias: Some(1),
                        ..Publish::default()
                    }),
                ),
                (
                    "publish-subscription-ids",
                    Packet::Publish(Publish {
                        topic: "a/b".into(),
                        payload: Bytes::from_static(b"3"),
                        subscription_ids: vec![1, 268_435_455],
                        ..Publish::default()
                    }),
                ),
                ("puback-plain", Packet::PubAck(Ack::new(8))),
                ("disconnect", Packet::Disconnect(Disconnect::default())),
                (
                    "disconnect-with-will",
                    Packet::Disconnect(Disconnect {
                        reason: 0x04,
                        ..Disconnect::default()
                    }),
                ),
                (
                    "disconnect-properties",
                    Packet::Disconnect(Disconnect {
                        reason: 0x8E,
                        session_expiry: Some(0),
                        reason_string: Some("bye".into()),
                        server_reference: Some("elsewhere".into()),
                        user_properties: pairs(2),
                    }),
                ),
            ]);
        }
        out
    }

    /// MQTT 5 AUTH packets, written by hand: the codec has no AUTH type
    /// (Postbox refuses AUTH as a protocol error), but the decoder must see them.
    fn auth_packets() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("auth-empty", vec![0xF0, 0x00]),
            ("auth-success", vec![0xF0, 0x02, 0x00, 0x00]),
            (
                // Continue authentication (0x18), method "SCRAM", data "abc".
                "auth-continue",
                vec![
                    0xF0, 0x10, 0x18, 0x0E, 0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M', 0x16, 0x00, 0x03,
                    b'a', b'b', b'c',
                ],
            ),
        ]
    }

    /// A 3.1.1 DISCONNECT, which the server-side encoder does not write.
    const V311_DISCONNECT: [u8; 2] = [0xE0, 0x00];

    /// Seeds of the `decode_packet` target: one packet per file.
    pub fn decode_corpus() -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for protocol in [ProtocolVersion::V31, ProtocolVersion::V311, ProtocolVersion::V5] {
            let p = proto_name(protocol);
            for (name, c) in connects(protocol) {
                out.push((format!("{p}-{name}"), encode_connect(&c)));
            }
            if protocol == ProtocolVersion::V31 {
                continue; // 3.1 differs from 3.1.1 only in CONNECT.
            }
            for (name, packet) in packets(protocol) {
                out.push((format!("{p}-{name}"), encode(protocol, &packet)));
            }
        }
        out.push(("v311-disconnect".into(), V311_DISCONNECT.to_vec()));
        for (name, bytes) in auth_packets() {
            out.push((format!("v5-{name}"), bytes));
        }
        out
    }

    /// The CONNECTs the `connection` target's first byte picks from (index =
    /// byte value); other values send no prefix.
    pub fn connect_prefixes() -> &'static [(String, Vec<u8>)] {
        static PREFIXES: std::sync::OnceLock<Vec<(String, Vec<u8>)>> = std::sync::OnceLock::new();
        PREFIXES.get_or_init(|| {
            let mut out = Vec::new();
            for protocol in [ProtocolVersion::V311, ProtocolVersion::V5, ProtocolVersion::V31] {
                for (name, c) in connects(protocol) {
                    out.push((format!("{}-{name}", proto_name(protocol)), encode_connect(&c)));
                }
            }
            // A client that takes small packets only: what the broker sends
            // it must fit (checked on every output), so acknowledgements with
            // diagnostics, SUBACKs and deliveries meet the limit quickly.
            let small = Connect {
                clean_start: false,
                session_expiry: Some(60),
                max_packet_size: Some(64),
                receive_maximum: Some(1),
                ..plain_connect(ProtocolVersion::V5, "fz-small")
            };
            out.push(("v5-connect-small-max".to_string(), encode_connect(&small)));
            out
        })
    }

    /// A session's worth of client packets: subscribe, publish at every QoS
    /// to topics it subscribed (so deliveries and their acknowledgements
    /// happen), the QoS 2 exchange, a retained message, ping, unsubscribe and
    /// disconnect.
    fn session(protocol: ProtocolVersion) -> Vec<u8> {
        let v5 = protocol == ProtocolVersion::V5;
        let mut packets = vec![
            Packet::Subscribe(Subscribe {
                pkid: 1,
                filters: vec![
                    SubscribeFilter::new("a/#", QoS::ExactlyOnce),
                    SubscribeFilter::new("+/b", QoS::AtLeastOnce),
                ],
                subscription_id: v5.then_some(7),
                ..Subscribe::default()
            }),
            Packet::Publish(Publish {
                topic: "a/b".into(),
                payload: Bytes::from_static(b"qos0"),
                ..Publish::default()
            }),
            Packet::Publish(Publish {
                qos: QoS::AtLeastOnce,
                topic: "a/b".into(),
                pkid: 10,
                payload: Bytes::from_static(b"qos1"),
                ..Publish::default()
            }),
            Packet::Publish(Publish {
                qos: QoS::ExactlyOnce,
                retain: true,
                topic: "a/c".into(),
                pkid: 11,
                payload: Bytes::from_static(b"qos2"),
                ..Publish::default()
            }),
            Packet::PubRel(Ack::new(11)),
            // Acknowledgements of the broker's deliveries (its ids start at 1).
            Packet::PubAck(Ack::new(1)),
            Packet::PubRec(Ack::new(2)),
            Packet::PubComp(Ack::new(2)),
            Packet::PubAck(Ack::new(3)),
            Packet::Subscribe(Subscribe {
                pkid: 2,
                filters: vec![SubscribeFilter::new("a/c", QoS::AtLeastOnce)],
                ..Subscribe::default()
            }),
            Packet::PingReq,
            Packet::Unsubscribe(Unsubscribe {
                pkid: 3,
                filters: vec!["a/#".into()],
                user_properties: Vec::new(),
            }),
            Packet::Publish(Publish {
                qos: QoS::AtLeastOnce,
                topic: "deny/x".into(),
                pkid: 12,
                payload: Bytes::from_static(b"denied"),
                ..Publish::default()
            }),
            Packet::Publish(Publish {
                qos: QoS::AtLeastOnce,
                topic: "stop/x".into(),
                pkid: 13,
                payload: Bytes::from_static(b"stopped"),
                ..Publish::default()
            }),
        ];
        if v5 {
            packets.extend([
                Packet::Publish(Publish {
                    qos: QoS::AtLeastOnce,
                    topic: "z/b".into(),
                    pkid: 14,
                    payload: Bytes::from_static(b"aliased"),
                    topic_alias: Some(1),
                    message_expiry: Some(60),
                    properties: pub_props(),
                    ..Publish::default()
                }),
                Packet::Publish(Publish {
                    topic: String::new(),
                    payload: Bytes::from_static(b"by alias"),
                    topic_alias: Some(1),
                    ..Publish::default()
                }),
            ]);
        }
        let mut out = Vec::new();
        for p in &packets {
            out.extend(encode(protocol, p));
        }
        if v5 {
            out.extend(encode(
                protocol,
                &Packet::Disconnect(Disconnect {
                    reason: 0x04,
                    ..Disconnect::default()
                }),
            ));
        } else {
            out.extend(V311_DISCONNECT);
        }
        out
    }

    /// Seeds of the `connection` target: for each CONNECT prefix, the prefix
    /// selector followed by a session; and raw streams (selector past the
    /// prefixes) that carry their own CONNECT or garbage.
    pub fn connection_corpus() -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for (i, (name, connect)) in connect_prefixes().iter().enumerate() {
            let Ok(selector) = u8::try_from(i) else {
                break;
            };
            let protocol = if name.starts_with("v5-") {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V311
            };
            let mut input = vec![selector];
            input.extend(session(protocol));
            out.push((format!("{name}-session"), input));
            // The same prefix with nothing after it: the client just closes.
            out.push((format!("{name}-close"), vec![selector]));
            // A raw stream holding the same CONNECT and session.
            let mut raw = vec![0xFF];
            raw.extend(connect);
            raw.extend(session(protocol));
            out.push((format!("raw-{name}-session"), raw));
        }
        out.push(("raw-not-connect".into(), vec![0xFF, 0x30, 0x03, 0x00, 0x01, b'a']));
        out.push(("raw-empty".into(), vec![0xFF]));
        out.extend(multi_connection_seeds());
        out
    }

    /// The selector byte of a named prefix.
    fn selector(name: &str) -> u8 {
        let i = connect_prefixes().iter().position(|(n, _)| n == name);
        match i.and_then(|i| u8::try_from(i).ok()) {
            Some(s) => s,
            None => panic!("no CONNECT prefix {name}"),
        }
    }

    /// Packets encoded one after the other.
    fn stream(protocol: ProtocolVersion, packets: &[Packet]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in packets {
            out.extend(encode(protocol, p));
        }
        out
    }

    fn publish(qos: QoS, topic: &str, pkid: u16, payload: &'static [u8]) -> Packet {
        Packet::Publish(Publish {
            qos,
            topic: topic.into(),
            pkid,
            payload: Bytes::from_static(payload),
            ..Publish::default()
        })
    }

    fn subscribe(pkid: u16, filter: &str, qos: QoS) -> Packet {
        Packet::Subscribe(Subscribe {
            pkid,
            filters: vec![SubscribeFilter::new(filter, qos)],
            ..Subscribe::default()
        })
    }

    /// Inputs of several connections (see `NEXT` and `ALSO`): a persistent
    /// session that goes offline, gets messages queued, comes back and
    /// acknowledges; a takeover while deliveries are unacknowledged; 3.1.1
    /// and 5.0 clients exchanging messages.
    fn multi_connection_seeds() -> Vec<(String, Vec<u8>)> {
        use ProtocolVersion::{V311, V5};
        let v3_persistent = selector("v311-connect-persistent-will-login");
        let v3_plain = selector("v311-connect-plain");
        let v5_persistent = selector("v5-connect-properties");
        let v5_assigned = selector("v5-connect-empty-id-login");
        let mut offline = vec![v3_persistent];
        offline.extend(stream(V311, &[subscribe(1, "a/#", QoS::ExactlyOnce)]));
        offline.extend(V311_DISCONNECT);
        offline.extend(super::NEXT);
        offline.push(v3_plain);
        offline.extend(stream(
            V311,
            &[
                publish(QoS::AtLeastOnce, "a/1", 1, b"one"),
                publish(QoS::ExactlyOnce, "a/2", 2, b"two"),
                Packet::PubRel(Ack::new(2)),
                publish(QoS::AtMostOnce, "a/3", 0, b"three"),
            ],
        ));
        offline.extend(V311_DISCONNECT);
        offline.extend(super::NEXT);
        offline.push(v3_persistent);
        offline.extend(stream(
            V311,
            &[
                Packet::PubAck(Ack::new(1)),
                Packet::PubRec(Ack::new(2)),
                Packet::PubComp(Ack::new(2)),
                Packet::PingReq,
            ],
        ));
        offline.extend(V311_DISCONNECT);

        // Delivered to itself and not acknowledged, then taken over: the new
        // connection gets the delivery again (DUP) and acknowledges it.
        let mut takeover = vec![v5_persistent];
        takeover.extend(stream(
            V5,
            &[
                subscribe(1, "t/#", QoS::AtLeastOnce),
                publish(QoS::AtLeastOnce, "t/1", 10, b"unacked"),
                publish(QoS::ExactlyOnce, "t/2", 11, b"awaiting rel"),
            ],
        ));
        takeover.extend(super::ALSO);
        takeover.push(v5_persistent);
        takeover.extend(stream(
            V5,
            &[
                Packet::PubRel(Ack::new(11)),
                Packet::PubAck(Ack::new(1)),
                Packet::PubRec(Ack::new(2)),
                Packet::PubComp(Ack::new(2)),
                Packet::Disconnect(Disconnect::default()),
            ],
        ));

        // A 3.1.1 subscriber and an MQTT 5 publisher with properties, online together.
        let mut mixed = vec![v3_plain];
        mixed.extend(stream(V311, &[subscribe(1, "m/+", QoS::AtLeastOnce)]));
        mixed.extend(super::ALSO);
        mixed.push(v5_assigned);
        mixed.extend(stream(
            V5,
            &[
                Packet::Publish(Publish {
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    topic: "m/1".into(),
                    pkid: 1,
                    payload: Bytes::from_static(b"{}"),
                    properties: pub_props(),
                    message_expiry: Some(60),
                    ..Publish::default()
                }),
                subscribe(2, "m/#", QoS::ExactlyOnce),
                Packet::Disconnect(Disconnect::default()),
            ],
        ));
        vec![
            ("multi-v311-offline-queue".into(), offline),
            ("multi-v5-takeover".into(), takeover),
            ("multi-v311-v5-mixed".into(), mixed),
        ]
    }
}
