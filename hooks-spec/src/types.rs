//! The values hooks carry: who a client is, how it connected, what it subscribed
//! with, and the message itself.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// MQTT quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// At most once (0).
    AtMostOnce = 0,
    /// At least once (1).
    AtLeastOnce = 1,
    /// Exactly once (2).
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a wire value, `None` for anything but 0, 1, 2.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// MQTT protocol version a client connected with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1 (`MQIsdp`, level 3).
    V31,
    /// MQTT 3.1.1 (level 4).
    V311,
    /// MQTT 5.0 (level 5).
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V31 => 3,
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProtocolVersion::V31 => "3.1",
            ProtocolVersion::V311 => "3.1.1",
            ProtocolVersion::V5 => "5.0",
        })
    }
}

/// Who a client is. Shared (`Arc`) by every hook call of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client identifier (assigned by the broker when the client sent none).
    pub clientid: Arc<str>,
    /// User name from CONNECT, if any.
    pub username: Option<String>,
    /// Remote socket address.
    pub peer: SocketAddr,
    /// Protocol version of the connection.
    pub protocol: ProtocolVersion,
    /// Clean session (3.1.1) / clean start (5.0).
    pub clean_start: bool,
    /// Session expiry interval in seconds in force (0: ends with the connection;
    /// `u32::MAX`: never).
    pub session_expiry: u32,
    /// Keep alive in seconds in force (after any server override).
    pub keepalive: u16,
    /// The common name of the client's verified TLS certificate, when it
    /// connected over TLS with one.
    pub cert_common_name: Option<Arc<str>>,
}

/// What a client sent in CONNECT, for `client.connect`/`client.connack`
/// (the accumulator of those hooks holds the properties).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Client identifier as sent (may be empty).
    pub clientid: String,
    /// User name as sent.
    pub username: Option<String>,
    /// Remote socket address.
    pub peer: SocketAddr,
    /// Protocol version.
    pub protocol: ProtocolVersion,
    /// Clean session / clean start flag.
    pub clean_start: bool,
    /// Keep alive the client asked for, seconds.
    pub keepalive: u16,
}

/// MQTT 5 user properties and the CONNECT/CONNACK properties a hook may read or set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnProperties {
    /// User properties, in order.
    pub user_properties: Vec<(String, String)>,
    /// Reason string (CONNACK only).
    pub reason_string: Option<String>,
}

/// Subscription options, as granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubOpts {
    /// Granted maximum QoS.
    pub qos: QoS,
    /// MQTT 5 no local: do not deliver the client's own publishes.
    pub no_local: bool,
    /// MQTT 5 retain as published.
    pub retain_as_published: bool,
    /// MQTT 5 retain handling: 0 send on subscribe, 1 only when new, 2 never.
    pub retain_handling: u8,
    /// MQTT 5 subscription identifier.
    pub subscription_id: Option<u32>,
    /// Shared subscription group (`$share/<group>/...`), if any.
    pub share_group: Option<String>,
    /// True when the subscription did not exist before (false for a re-subscribe).
    pub is_new: bool,
    /// MQTT 5: the SUBSCRIBE asked for stored messages from this time on
    /// (user property [`REPLAY_FROM`]); a storage plugin replays from the
    /// first message it stored at or after it, acknowledged or not.
    pub replay_from: Option<std::time::SystemTime>,
}

/// The SUBSCRIBE user property that asks a storage plugin to replay from a
/// time: an RFC 3339 time (`2026-12-07T10:00:00Z`) or a duration ago (`90m`).
pub const REPLAY_FROM: &str = "replay-from";

impl SubOpts {
    /// Plain options for a QoS: what a 3.1.1 SUBSCRIBE carries.
    pub fn with_qos(qos: QoS) -> SubOpts {
        SubOpts {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            subscription_id: None,
            share_group: None,
            is_new: true,
            replay_from: None,
        }
    }
}

/// A topic filter with the options a client asked for: the accumulator of
/// `client.subscribe` (a callback may remove or rewrite entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    /// The filter as sent, `$share/<group>/` prefix included.
    pub filter: String,
    /// Requested options.
    pub opts: SubOpts,
}

/// A session a plugin kept (in a database) and hands back to the broker
/// after a restart: the accumulator of `session.restore`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// The user name that last used the session: another user name does not
    /// resume it (as for a session in memory).
    pub username: Option<String>,
    /// Its subscriptions: filters as the client sent them (`$share/...`
    /// included) with their options.
    pub subscriptions: Vec<TopicFilter>,
}

/// The accumulator of `session.restore`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Restore {
    /// Nothing kept (or no plugin keeps sessions): a new session.
    #[default]
    Nothing,
    /// The session as a plugin kept it.
    Kept(StoredSession),
    /// A plugin keeps sessions but cannot read them now (its database does
    /// not answer): the broker refuses the connection (CONNACK 0x88, 3.1.1:
    /// 3, server unavailable) and the client tries again later, instead of
    /// a new session that would lose what the kept one is owed.
    Unavailable,
}

/// MQTT 5 PUBLISH properties that travel with a message end to end.
/// Topic alias and subscription identifiers are per hop and are not here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    /// Payload format indicator (1: UTF-8).
    pub payload_format_indicator: Option<u8>,
    /// Content type.
    pub content_type: Option<String>,
    /// Response topic (request/response).
    pub response_topic: Option<String>,
    /// Correlation data (request/response).
    pub correlation_data: Option<Bytes>,
    /// User properties, in order.
    pub user_properties: Vec<(String, String)>,
}

/// Values plugins attach to a message as it passes through hooks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// Row id in the storage backend (`mqtt_msg.id`), set by the plugin that stored it.
    pub stored_id: Option<i64>,
    /// Set by a storage callback that had to store the message and could not:
    /// the broker then withholds the publisher's success acknowledgement.
    pub not_stored: bool,
    /// Any other plugin-defined values.
    pub extra: BTreeMap<String, String>,
}

static NEXT_MESSAGE_ID: AtomicU64 = AtomicU64::new(1);

/// This node's number in message ids (see [`set_node_id`]).
static NODE_ID: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// Sets the node number [`new_message_id`] puts in every id from now on:
/// the broker calls it once at startup (the cluster's number for the node,
/// else one derived from its name), so ids made on different nodes of a
/// cluster never collide.
pub fn set_node_id(node: u16) {
    NODE_ID.store(node, Ordering::Relaxed);
}

/// The node number message ids carry (see [`set_node_id`]).
pub fn node_id() -> u16 {
    NODE_ID.load(Ordering::Relaxed)
}

/// A node number derived from a node name (FNV-1a folded to 16 bits), for
/// a broker that is not given one.
pub fn node_id_from_name(name: &str) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    ((h >> 16) ^ (h & 0xffff)) as u16
}

/// A unique message id: time-ordered, and unique across the nodes of a
/// cluster: wall-clock microseconds in the high 64 bits, then the node
/// number (16 bits, [`set_node_id`]) and a per-process counter (48 bits).
pub fn new_message_id() -> u128 {
    let micros = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let seq = NEXT_MESSAGE_ID.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff_ffff;
    (micros << 64) | (u128::from(node_id()) << 48) | u128::from(seq)
}

/// The node number in a message id made by [`new_message_id`].
pub fn message_id_node(id: u128) -> u16 {
    ((id >> 48) & 0xffff) as u16
}

/// An application message as it flows through the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Unique id (see [`new_message_id`]); printed as 32 hex digits for `${msgid}`.
    pub id: u128,
    /// Topic name.
    pub topic: Arc<str>,
    /// Payload bytes (binary-safe).
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// Publishing client id; `None` for messages published by the broker or a plugin.
    pub publisher: Option<Arc<str>>,
    /// Arrival time at the broker.
    pub timestamp: SystemTime,
    /// MQTT 5 message expiry interval as received; `None`: never expires.
    pub expiry_interval: Option<Duration>,
    /// MQTT 5 properties passed through.
    pub properties: PublishProperties,
    /// Plugin-set values.
    pub headers: Headers,
}

impl Message {
    /// A new message with a fresh id and the current time.
    pub fn new(topic: impl Into<Arc<str>>, payload: impl Into<Bytes>, qos: QoS, retain: bool) -> Message {
        Message {
            id: new_message_id(),
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
            publisher: None,
            timestamp: SystemTime::now(),
            expiry_interval: None,
            properties: PublishProperties::default(),
            headers: Headers::default(),
        }
    }

    /// The id as 32 hex digits, as `${msgid}` prints it.
    pub fn id_hex(&self) -> String {
        // By hand: `format!("{:032x}")` goes through the formatting machinery,
        // about ten times the instructions, and this runs for every stored message.
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 32];
        let mut v = self.id;
        for b in buf.iter_mut().rev() {
            *b = DIGITS[(v & 0xf) as usize];
            v >>= 4;
        }
        // Hex digits are ASCII: this never fails.
        String::from_utf8(buf.to_vec()).unwrap_or_default()
    }

    /// Time left before the message expires: `None` when it never does,
    /// `Some(ZERO)` once it has.
    pub fn remaining_expiry(&self, now: SystemTime) -> Option<Duration> {
        let interval = self.expiry_interval?;
        let age = now.duration_since(self.timestamp).unwrap_or(Duration::ZERO);
        Some(interval.saturating_sub(age))
    }

    /// True when the message has an expiry interval that has passed.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.remaining_expiry(now) == Some(Duration::ZERO)
    }
}

/// Why a message was dropped (`message.dropped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// No subscriber matched.
    NoSubscribers,
    /// A session's queue was full.
    QueueFull,
    /// Its expiry interval passed before delivery.
    Expired,
    /// A hook stopped it (authorization, a plugin's decision).
    Denied,
    /// Larger than the receiver's maximum packet size.
    TooLarge,
    /// A storage plugin could not store it.
    StoreFailed,
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropReason::NoSubscribers => "no_subscribers",
            DropReason::QueueFull => "queue_full",
            DropReason::Expired => "expired",
            DropReason::Denied => "denied",
            DropReason::TooLarge => "too_large",
            DropReason::StoreFailed => "store_failed",
        })
    }
}

/// Why a client or session went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT.
    Normal,
    /// The socket closed or failed without DISCONNECT.
    SocketClosed,
    /// No packet within 1.5 times the keep alive.
    KeepaliveTimeout,
    /// A malformed or protocol-violating packet; the text says which.
    ProtocolError(String),
    /// Another connection took the client id over.
    TakenOver,
    /// The broker is shutting down.
    ServerShutdown,
    /// The session expired.
    Expired,
    /// The session was discarded by a clean start.
    Discarded,
    /// The client connected to another node of the cluster, which takes the
    /// session over: it ends here but continues there (a storage plugin
    /// records what it must before the other node restores it, and keeps
    /// the stored session).
    Moved,
    /// An operator closed the connection (management API
    /// `DELETE /api/v4/clients/{clientid}`, `postbox ctl kick`).
    Kicked,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Normal => f.write_str("normal"),
            DisconnectReason::SocketClosed => f.write_str("closed"),
            DisconnectReason::KeepaliveTimeout => f.write_str("keepalive_timeout"),
            DisconnectReason::ProtocolError(e) => write!(f, "protocol_error: {e}"),
            DisconnectReason::TakenOver => f.write_str("takenover"),
            DisconnectReason::ServerShutdown => f.write_str("shutdown"),
            DisconnectReason::Expired => f.write_str("expired"),
            DisconnectReason::Discarded => f.write_str("discarded"),
            DisconnectReason::Moved => f.write_str("moved"),
            DisconnectReason::Kicked => f.write_str("kicked"),
        }
    }
}

/// What a session looks like to hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Owning client id.
    pub clientid: Arc<str>,
    /// Number of subscriptions.
    pub subscriptions: usize,
    /// Messages waiting for acknowledgement.
    pub inflight: usize,
    /// Messages queued and not yet sent.
    pub queued: usize,
    /// When the session was created.
    pub created_at: SystemTime,
}

/// Result of `client.authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthResult {
    /// Let the client in.
    Allow,
    /// Refuse: bad user name or password.
    Deny,
    /// No provider decided; the broker applies its anonymous policy.
    Ignore,
}

/// Access being checked by `client.check_acl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclAction {
    /// The client publishes to the topic.
    Publish,
    /// The client subscribes to the filter.
    Subscribe,
}

/// Result of `client.check_acl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclResult {
    /// Access granted.
    Allow,
    /// Access refused.
    Deny,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_id_prints_as_32_lowercase_hex_digits() {
        for id in [
            0u128,
            1,
            0xabc,
            u128::MAX,
            new_message_id(),
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            let mut m = Message::new("t", "p", QoS::AtLeastOnce, false);
            m.id = id;
            assert_eq!(m.id_hex(), format!("{id:032x}"));
        }
    }
}
