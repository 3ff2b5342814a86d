//! The connection handshake: from an accepted socket to a session.
//!
//! Reads CONNECT within `mqtt.connect_timeout`, refuses what must be refused
//! (unknown protocol version, bad client id, failed authentication, too many
//! clients) with the right CONNACK, and hands the socket to the session task
//! of its client id, creating one if there is none. Everything after CONNACK
//! happens in the session task. A session last used under another user name
//! is not resumed: the connection starts clean, so no one inherits the
//! subscriptions (checked by the ACL for their maker) or queued messages of
//! another user.
//!
//! A CONNECT that names an Authentication Method (MQTT 5 enhanced
//! authentication) runs that method's AUTH exchange here (`enhanced_auth`)
//! instead of `client.authenticate`; a method no plugin offers gets CONNACK
//! 0x8C.
//!
//! A connection over its listener's `max_conn_rate` still gets its CONNECT
//! read, so it can be told why it is refused (CONNACK 0x9F, 3.1.1: 0x03);
//! no hook runs for it. Neither does one that arrives while the node drains
//! (`POST /api/v4/nodes/{node}/drain`): CONNACK 0x9D, Server moved, with
//! `mqtt.server_reference` (3.1.1: 0x03). TLS connections arrive here after their handshake
//! (`tls.rs`), which shares the `mqtt.connect_timeout` deadline.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use hooks_spec::{
    AuthArgs, AuthResult, ClientInfo, ConnInfo, ConnProperties, ConnackArgs, ProtocolVersion, Restore,
    SessionArgs, SessionInfo,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::transport::{Peer, Stream};

use crate::codec::{self, Codec, ConnAck, ConnAckProps, Connect, DecodeError, Packet};
use crate::delivery::Attach;
use crate::shared::Shared;

/// CONNACK reason codes used here (MQTT 5 numbering; the codec maps them for 3.1.1).
mod rc {
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    pub const CLIENT_ID_NOT_VALID: u8 = 0x85;
    pub const BAD_USERNAME_OR_PASSWORD: u8 = 0x86;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
    pub const SERVER_MOVED: u8 = 0x9D;
    pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
    pub const PROTOCOL_ERROR: u8 = 0x82;
}

/// How a listener admitted a connection.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// When the connection must have completed CONNECT (and, over TLS, the
    /// handshake before it): accept time plus `mqtt.connect_timeout`.
    pub deadline: Instant,
    /// The listener's `max_conn_rate` was exceeded: refuse after CONNECT.
    pub rate_limited: bool,
    /// `peer_cert_as_username = cn`: the client certificate's common name
    /// replaces the CONNECT's username.
    pub cert_cn_as_username: bool,
    /// The listener's `rate_limit.conn_bytes_in`: how fast the session reads the connection.
    pub conn_bytes_in: Option<crate::rate_limit::Rate>,
}

impl Admission {
    /// A connection accepted now, with no listener limits or options.
    pub fn now(shared: &Shared) -> Admission {
        Admission {
            deadline: Instant::now() + shared.config.mqtt.connect_timeout,
            rate_limited: false,
            cert_cn_as_username: false,
            conn_bytes_in: None,
        }
    }
}

/// Handles one socket a plain TCP listener accepted, as it admitted it,
/// until it is handed to a session or refused.
pub async fn handle_tcp(shared: Arc<Shared>, stream: TcpStream, addr: SocketAddr, admission: Admission) {
    let _ = stream.set_nodelay(true);
    handle_admitted(shared, Stream::Tcp(stream), Peer::plain(addr), admission).await;
}

/// Handles one accepted stream of any kind (TCP, TLS, in-memory) until it is
/// handed to a session or refused.
pub async fn handle_stream(shared: Arc<Shared>, stream: Stream, peer_info: Peer) {
    let admission = Admission::now(&shared);
    handle_admitted(shared, stream, peer_info, admission).await;
}

/// Handles one accepted stream, as its listener admitted it.
pub async fn handle_admitted(shared: Arc<Shared>, mut stream: Stream, peer_info: Peer, admission: Admission) {
    let _task = shared.tasks.enter();
    let peer = peer_info.addr;
    let max = shared.config.mqtt.max_packet_size as usize;
    let mut buf = BytesMut::with_capacity(1024);
    let timeout = shared.config.mqtt.connect_timeout;
    let mut shutdown = shared.shutdown_rx();
    let read = tokio::select! {
        r = tokio::time::timeout_at(admission.deadline, read_connect(&shared, &mut stream, &mut buf, max)) => r,
        // Shutdown does not wait for a client that has not finished connecting.
        _ = shutdown.changed() => return,
    };
    let mut connect = match read {
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within {timeout:?}, closing");
            return;
        }
        Ok(Err(ReadError::Io(e))) => {
            tracing::debug!(%peer, "connection closed before CONNECT: {e}");
            return;
        }
        Ok(Err(ReadError::Decode(DecodeError::UnsupportedProtocol(level)))) => {
            tracing::info!(%peer, level, "refusing unsupported protocol level");
            // The client's version is unknown: answer in 3.1.1 form (code 0x01), as the spec asks.
            refuse(
                &shared,
                &mut stream,
                ProtocolVersion::V311,
                rc::UNSUPPORTED_PROTOCOL_VERSION,
            )
            .await;
            return;
        }
        Ok(Err(ReadError::Decode(e))) => {
            tracing::info!(%peer, "bad CONNECT: {e}");
            return;
        }
        Ok(Ok(c)) => c,
    };
    let protocol = connect.protocol;
    if admission.rate_limited {
        // Logged (throttled) and counted by the accept loop; this is the detail.
        tracing::debug!(%peer, clientid = %connect.client_id, "refused: listener connection rate exceeded");
        refuse(&shared, &mut stream, protocol, rc::CONNECTION_RATE_EXCEEDED).await;
        return;
    }
    if shared.is_draining() {
        // MQTT 5: CONNACK 0x9D with the server reference; 3.1.1: return code 3.
        tracing::info!(%peer, clientid = %connect.client_id, "refused: the node drains (server moved)");
        let props = ConnAckProps {
            server_reference: shared.config.mqtt.server_reference.clone(),
            ..ConnAckProps::default()
        };
        refuse_with(&shared, &mut stream, protocol, rc::SERVER_MOVED, props).await;
        return;
    }
    if admission.cert_cn_as_username {
        // Only a verified certificate names the user: without one there is no username.
        connect.username = peer_info.cert_common_name.as_deref().map(str::to_string);
    }
    if let Some(will) = &connect.will {
        if let Err(e) = crate::topic::validate_topic_name(&will.topic, shared.config.mqtt.max_topic_levels) {
            tracing::info!(%peer, topic = %will.topic, "refused: invalid will topic: {e}");
            if protocol == ProtocolVersion::V5 {
                refuse(&shared, &mut stream, protocol, rc::TOPIC_NAME_INVALID).await;
            }
            return;
        }
        if will.retain && !shared.config.mqtt.retain_available && protocol == ProtocolVersion::V5 {
            // A retained will the server cannot retain: refused (MQTT-3.2.2-13).
            tracing::info!(%peer, topic = %will.topic, "refused: retained will, retain not available");
            refuse(&shared, &mut stream, protocol, rc::RETAIN_NOT_SUPPORTED).await;
            return;
        }
        if let Some(rt) = &will.properties.response_topic {
            if crate::topic::validate_topic_name(rt, 0).is_err() {
                // A Response Topic is a topic name: no wildcards (MQTT-3.3.2-14).
                tracing::info!(%peer, response_topic = %rt, "refused: invalid will Response Topic");
                refuse(&shared, &mut stream, protocol, rc::PROTOCOL_ERROR).await;
                return;
            }
        }
    }
    let hooks = Arc::clone(&shared.hooks);
    let mut conn = ConnInfo {
        clientid: connect.client_id.clone(),
        username: connect.username.clone(),
        peer,
        protocol,
        clean_start: connect.clean_start,
        keepalive: connect.keepalive,
    };
    let mut props = ConnProperties {
        user_properties: connect.user_properties.clone(),
        reason_string: None,
    };
    if !hooks.client_connect.is_empty() {
        props = hooks
            .client_connect
            .run_fold(Arc::new(conn.clone()), props)
            .await
            .into_inner();
    }

    // Client id: assign one where the protocol allows it.
    let mut assigned_id = false;
    let clientid: Arc<str> = if connect.client_id.is_empty() {
        if protocol == ProtocolVersion::V5 || connect.clean_start {
            assigned_id = true;
            Arc::from(format!("postbox-{:x}", hooks_spec::new_message_id()))
        } else {
            refuse_with_hook(&shared, &mut stream, &conn, rc::CLIENT_ID_NOT_VALID).await;
            return;
        }
    } else {
        Arc::from(connect.client_id.as_str())
    };

    let limits = &shared.config.mqtt;
    let keepalive = match (protocol, limits.server_keepalive) {
        (ProtocolVersion::V5, Some(k)) => k,
        _ => connect.keepalive,
    };
    let session_expiry = match protocol {
        ProtocolVersion::V5 => shared.cap_expiry(connect.session_expiry.unwrap_or(0)),
        _ if connect.clean_start => 0,
        _ => shared.cap_expiry(u32::MAX),
    };
    let mut client = ClientInfo {
        clientid: Arc::clone(&clientid),
        username: connect.username.clone(),
        peer,
        protocol,
        clean_start: connect.clean_start,
        session_expiry,
        keepalive,
        cert_common_name: peer_info.cert_common_name.clone(),
    };

    // MQTT 5 enhanced authentication: the method decides, client.authenticate does not run.
    let mut auth_data = None;
    let auth = if let Some(method) = connect.auth_method.clone() {
        let outcome =
            crate::enhanced_auth::run(&shared, &mut stream, &mut buf, &connect, &client, &method).await;
        match outcome {
            crate::enhanced_auth::Outcome::Success { data, username } => {
                if client.username.is_none() {
                    client.username = username;
                    conn.username = client.username.clone();
                }
                auth_data = data;
                AuthResult::Allow
            }
            crate::enhanced_auth::Outcome::Refuse(code, why) => {
                tracing::info!(%peer, clientid = %clientid, method = %method, reason_code = code, "refused: enhanced authentication: {why}");
                Metrics::bump(&shared.metrics.auth_failures);
                refuse_with_hook(&shared, &mut stream, &conn, code).await;
                return;
            }
            crate::enhanced_auth::Outcome::Closed(why) => {
                tracing::info!(%peer, clientid = %clientid, method = %method, "closed during enhanced authentication: {why}");
                return;
            }
        }
    } else if hooks.client_authenticate.is_empty() {
        AuthResult::Ignore
    } else {
        let args = Arc::new(AuthArgs {
            client: client.clone(),
            password: connect.password.clone(),
        });
        hooks
            .client_authenticate
            .run_fold(args, AuthResult::Ignore)
            .await
            .into_inner()
    };
    match auth {
        AuthResult::Allow => {}
        AuthResult::Ignore if limits.allow_anonymous => {}
        AuthResult::Ignore => {
            tracing::info!(%peer, clientid = %clientid, "refused: anonymous access is off");
            Metrics::bump(&shared.metrics.auth_failures);
            refuse_with_hook(&shared, &mut stream, &conn, rc::NOT_AUTHORIZED).await;
            return;
        }
        AuthResult::Deny => {
            tracing::info!(%peer, clientid = %clientid, "refused: authentication failed");
            Metrics::bump(&shared.metrics.auth_failures);
            refuse_with_hook(&shared, &mut stream, &conn, rc::BAD_USERNAME_OR_PASSWORD).await;
            return;
        }
    }
    // In a cluster: one live connection per client id, whichever node it is
    // on; the node that had it lets it go (and its session follows) first.
    let claim = match shared.ownership.get() {
        Some(own) => own.claim(&clientid).await,
        None => None,
    };
    let existing = shared.registry.get(&clientid);
    if let Some(session) = existing.as_ref().filter(|s| s.client.username != client.username) {
        // The ACL decided the session's subscriptions (and so its queued
        // messages) for the user who made them: another user name does not
        // resume it, it starts clean.
        if !client.clean_start {
            tracing::info!(%peer, clientid = %clientid, previous = ?session.client.username, username = ?client.username,
                "session of another user name: starting clean");
            client.clean_start = true;
        }
    }
    if shared.connected() >= limits.max_clients && existing.is_none() {
        tracing::warn!(%peer, clientid = %clientid, "refused: mqtt.max_clients reached");
        refuse_with_hook(&shared, &mut stream, &conn, rc::QUOTA_EXCEEDED).await;
        return;
    }

    // A session to resume that is not in memory (a broker restart, or the
    // client came from another node): a plugin may have kept it.
    let restored = if existing.is_none() && !client.clean_start && client.session_expiry > 0 {
        match restore(&shared, &client).await {
            Restore::Kept(stored) => Some(stored),
            Restore::Nothing => None,
            Restore::Unavailable => {
                tracing::warn!(%peer, clientid = %clientid, "refused: the stored session cannot be read now (server unavailable)");
                refuse_with_hook(&shared, &mut stream, &conn, rc::SERVER_UNAVAILABLE).await;
                if let (Some(own), Some(gen)) = (shared.ownership.get(), claim) {
                    own.release(&clientid, gen).await;
                }
                return;
            }
        }
    } else {
        None
    };
    let attach = Attach {
        stream,
        inbuf: buf,
        connect,
        client,
        conn,
        assigned_id,
        props,
        claim,
        restored,
        conn_bytes_in: admission.conn_bytes_in,
        auth_data,
    };
    let (Some(own), Some(gen)) = (shared.ownership.get(), claim) else {
        crate::session::start(&shared, attach);
        return;
    };
    let attached = own.attach(
        &clientid,
        gen,
        Box::new(|| crate::session::start(&shared, attach)),
    );
    if !attached {
        // Another node took the client id over between the claim and now
        // (the client connected there too): the later connection stays, and
        // this one is closed without CONNACK.
        tracing::info!(%peer, clientid = %clientid, "closed: the client connected to another node meanwhile");
    }
}

enum ReadError {
    Io(std::io::Error),
    Decode(DecodeError),
}

async fn read_connect(
    shared: &Shared,
    stream: &mut Stream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Connect, ReadError> {
    loop {
        match codec::decode_connect(buf, max) {
            Ok(Some(c)) => {
                Metrics::bump(&shared.metrics.packets_received);
                Metrics::bump(&shared.metrics.connects_received);
                return Ok(c);
            }
            Ok(None) => {}
            Err(e) => return Err(ReadError::Decode(e)),
        }
        let n = stream.read_buf(buf).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Metrics::add(&shared.metrics.bytes_received, n);
    }
}

/// The `session.restore` fold for `client`, before its session exists.
async fn restore(shared: &Shared, client: &ClientInfo) -> Restore {
    if shared.hooks.session_restore.is_empty() {
        return Restore::Nothing;
    }
    let args = Arc::new(SessionArgs {
        client: client.clone(),
        session: SessionInfo {
            clientid: Arc::clone(&client.clientid),
            subscriptions: 0,
            inflight: 0,
            queued: 0,
            created_at: std::time::SystemTime::now(),
        },
    });
    shared
        .hooks
        .session_restore
        .run_fold(args, Restore::Nothing)
        .await
        .into_inner()
}

/// Runs client.connack for a refusal, sends the CONNACK and closes.
async fn refuse_with_hook(shared: &Shared, stream: &mut Stream, conn: &ConnInfo, code: u8) {
    if !shared.hooks.client_connack.is_empty() {
        let args = Arc::new(ConnackArgs {
            conn: conn.clone(),
            reason_code: code,
        });
        shared
            .hooks
            .client_connack
            .run_fold(args, ConnProperties::default())
            .await;
    }
    refuse(shared, stream, conn.protocol, code).await;
}

async fn refuse(shared: &Shared, stream: &mut Stream, protocol: ProtocolVersion, code: u8) {
    refuse_with(shared, stream, protocol, code, ConnAckProps::default()).await;
}

/// Sends a refusing CONNACK with MQTT 5 properties (dropped on 3.1.x) and closes.
async fn refuse_with(
    shared: &Shared,
    stream: &mut Stream,
    protocol: ProtocolVersion,
    code: u8,
    props: ConnAckProps,
) {
    let codec = Codec {
        protocol,
        max_packet_size: u32::MAX,
    };
    let mut out = BytesMut::new();
    let connack = ConnAck {
        session_present: false,
        code,
        props,
    };
    if codec.encode(&Packet::ConnAck(connack), &mut out, None).is_ok() && stream.write_all(&out).await.is_ok()
    {
        Metrics::bump(&shared.metrics.packets_sent);
        Metrics::add(&shared.metrics.bytes_sent, out.len());
    }
    let _ = stream.shutdown().await;
}
