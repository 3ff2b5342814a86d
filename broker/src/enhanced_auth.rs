//! MQTT 5 enhanced authentication during CONNECT (section 4.12): the AUTH
//! exchange between CONNECT and CONNACK, with a method a plugin registered
//! ([`hooks_spec::AuthMethod`]). Re-authentication on a connected client is
//! the session's (`session::reauth`).
//!
//! CONNECT names the method and may carry the first Authentication Data; the
//! method answers each step with more data (AUTH 0x18 to the client, whose
//! next packet must be AUTH 0x18 with the same method), success (the final
//! data goes in CONNACK) or failure. Each step waits at most
//! `mqtt.connect_timeout` for the client, and as long for the method (which
//! may be querying a database: one that does not answer refuses the client
//! with 0x86), and an exchange has at most [`MAX_STEPS`] steps.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hooks_spec::{AuthExchange, AuthStep, ClientInfo, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::codec::{Auth, Codec, Connect, Packet};
use crate::metrics::Metrics;
use crate::shared::Shared;
use crate::transport::Stream;

/// How an exchange ended.
#[derive(Debug)]
pub enum Outcome {
    /// Authenticated: the method's last data (for CONNACK) and the user it
    /// authenticated.
    Success {
        /// Authentication Data for CONNACK.
        data: Option<Bytes>,
        /// The authenticated user, if the method names one.
        username: Option<String>,
    },
    /// Refuse with this CONNACK reason code; the text says why (logged).
    Refuse(u8, String),
    /// The connection failed or timed out: close without CONNACK.
    Closed(String),
}

/// CONNACK 0x8C: no plugin offers the method.
pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
const BAD_USERNAME_OR_PASSWORD: u8 = 0x86;
const PROTOCOL_ERROR: u8 = 0x82;
/// The most steps one exchange may take (SCRAM takes 2): a method that
/// never concludes must not hold a connection forever.
pub const MAX_STEPS: usize = 16;
/// AUTH reason code: continue authentication.
pub const CONTINUE: u8 = 0x18;

/// Runs the exchange for `connect` (which names `method`), reading the
/// client's AUTH packets from `stream` through `buf`.
pub async fn run(
    shared: &Shared,
    stream: &mut Stream,
    buf: &mut BytesMut,
    connect: &Connect,
    client: &ClientInfo,
    method: &str,
) -> Outcome {
    let Some(provider) = shared.hooks.auth_methods.find(method) else {
        return Outcome::Refuse(
            BAD_AUTHENTICATION_METHOD,
            format!("authentication method {method:?} is not supported"),
        );
    };
    let codec = Codec::new(ProtocolVersion::V5, shared.config.mqtt.max_packet_size as usize);
    let mut exchange = provider.start(client);
    let mut data = connect.auth_data.clone().unwrap_or_default();
    for _ in 0..MAX_STEPS {
        match bounded_step(exchange.as_mut(), &data, shared.config.mqtt.connect_timeout).await {
            AuthStep::Success { data, username } => return Outcome::Success { data, username },
            AuthStep::Failure(why) => return Outcome::Refuse(BAD_USERNAME_OR_PASSWORD, why),
            AuthStep::Continue(challenge) => {
                let auth = Packet::Auth(Auth {
                    reason: CONTINUE,
                    method: Some(method.to_string()),
                    data: Some(challenge),
                    ..Auth::default()
                });
                let mut out = BytesMut::new();
                if let Err(e) = codec.encode(&auth, &mut out, connect.max_packet_size.map(|m| m as usize)) {
                    return Outcome::Refuse(PROTOCOL_ERROR, format!("cannot send AUTH: {e}"));
                }
                if let Err(e) = stream.write_all(&out).await {
                    return Outcome::Closed(format!("cannot send AUTH: {e}"));
                }
                Metrics::bump(&shared.metrics.packets_sent);
                Metrics::add(&shared.metrics.bytes_sent, out.len());
            }
        }
        let timeout = shared.config.mqtt.connect_timeout;
        let packet = match tokio::time::timeout(timeout, read_packet(shared, &codec, stream, buf)).await {
            Err(_) => return Outcome::Closed(format!("no AUTH within {timeout:?}")),
            Ok(Err(outcome)) => return outcome,
            Ok(Ok(p)) => p,
        };
        match packet {
            Packet::Auth(a) if a.reason == CONTINUE && a.method.as_deref() == Some(method) => {
                data = a.data.unwrap_or_default();
            }
            Packet::Auth(a) if a.reason == CONTINUE => {
                return Outcome::Refuse(
                    PROTOCOL_ERROR,
                    format!("AUTH with method {:?} in a {method:?} exchange", a.method),
                )
            }
            Packet::Disconnect(_) => return Outcome::Closed("DISCONNECT during authentication".into()),
            _ => return Outcome::Refuse(PROTOCOL_ERROR, "expected AUTH 0x18 during authentication".into()),
        }
    }
    Outcome::Refuse(
        BAD_USERNAME_OR_PASSWORD,
        format!("no conclusion after {MAX_STEPS} steps"),
    )
}

/// One step of `exchange`, given at most `limit`: a method waiting on a
/// store that does not answer refuses the client instead of holding it.
pub async fn bounded_step(exchange: &mut dyn AuthExchange, data: &[u8], limit: Duration) -> AuthStep {
    match tokio::time::timeout(limit, exchange.step(data)).await {
        Ok(step) => step,
        Err(_) => AuthStep::Failure(format!(
            "the authentication method did not answer within {limit:?}"
        )),
    }
}

/// The client's next packet.
async fn read_packet(
    shared: &Shared,
    codec: &Codec,
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<Packet, Outcome> {
    loop {
        match codec.decode(buf) {
            Ok(Some(p)) => {
                Metrics::bump(&shared.metrics.packets_received);
                return Ok(p);
            }
            Ok(None) => {}
            Err(e) => return Err(Outcome::Refuse(e.reason_code(), format!("bad packet: {e}"))),
        }
        match stream.read_buf(buf).await {
            Ok(0) => return Err(Outcome::Closed("connection closed during authentication".into())),
            Ok(n) => Metrics::add(&shared.metrics.bytes_received, n),
            Err(e) => return Err(Outcome::Closed(format!("read failed: {e}"))),
        }
    }
}
