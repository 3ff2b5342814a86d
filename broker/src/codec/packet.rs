//! Postbox's own, protocol-neutral MQTT packet types.
//!
//! One set of types serves MQTT 3.1, 3.1.1 and 5.0: fields that only exist in
//! MQTT 5 are `Option`s or empty `Vec`s, and are ignored when a packet is
//! encoded for a 3.1.x connection. Reason codes always use the MQTT 5
//! numbering; the 3.1.1 encoder maps them to the nearest 3.1.1 return code.

use bytes::Bytes;
use hooks_spec::{ProtocolVersion, PublishProperties, QoS};

/// An MQTT control packet.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// CONNECT (client to server). Boxed: it is much larger than the others.
    Connect(Box<Connect>),
    /// CONNACK (server to client).
    ConnAck(ConnAck),
    /// PUBLISH (both ways).
    Publish(Publish),
    /// PUBACK (both ways).
    PubAck(Ack),
    /// PUBREC (both ways).
    PubRec(Ack),
    /// PUBREL (both ways).
    PubRel(Ack),
    /// PUBCOMP (both ways).
    PubComp(Ack),
    /// SUBSCRIBE (client to server).
    Subscribe(Subscribe),
    /// SUBACK (server to client).
    SubAck(SubAck),
    /// UNSUBSCRIBE (client to server).
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (server to client).
    UnsubAck(UnsubAck),
    /// PINGREQ (client to server).
    PingReq,
    /// PINGRESP (server to client).
    PingResp,
    /// DISCONNECT (both ways in MQTT 5, client to server in 3.1.x).
    Disconnect(Disconnect),
    /// AUTH (both ways, MQTT 5 only): enhanced authentication.
    Auth(Auth),
}

/// CONNECT: the first packet of a connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    /// Protocol version the client speaks.
    pub protocol: ProtocolVersion,
    /// Clean session (3.1.x) / clean start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds, 0: none.
    pub keepalive: u16,
    /// Client identifier as sent (may be empty).
    pub client_id: String,
    /// User name; `Some("")` when the flag was set with an empty name.
    pub username: Option<String>,
    /// Password (binary data).
    pub password: Option<Bytes>,
    /// Will message.
    pub will: Option<Will>,
    /// MQTT 5 session expiry interval, seconds.
    pub session_expiry: Option<u32>,
    /// MQTT 5 receive maximum.
    pub receive_maximum: Option<u16>,
    /// MQTT 5 maximum packet size the client accepts.
    pub max_packet_size: Option<u32>,
    /// MQTT 5 topic alias maximum the client accepts.
    pub topic_alias_max: Option<u16>,
    /// MQTT 5 request response information (0 or 1).
    pub request_response_info: Option<u8>,
    /// MQTT 5 request problem information (0 or 1).
    pub request_problem_info: Option<u8>,
    /// MQTT 5 user properties, in order.
    pub user_properties: Vec<(String, String)>,
    /// MQTT 5 authentication method.
    pub auth_method: Option<String>,
    /// MQTT 5 authentication data.
    pub auth_data: Option<Bytes>,
}

impl Default for Connect {
    fn default() -> Self {
        Connect {
            protocol: ProtocolVersion::V311,
            clean_start: true,
            keepalive: 0,
            client_id: String::new(),
            username: None,
            password: None,
            will: None,
            session_expiry: None,
            receive_maximum: None,
            max_packet_size: None,
            topic_alias_max: None,
            request_response_info: None,
            request_problem_info: None,
            user_properties: Vec::new(),
            auth_method: None,
            auth_data: None,
        }
    }
}

/// The will message of a CONNECT.
#[derive(Debug, Clone, PartialEq)]
pub struct Will {
    /// Will topic.
    pub topic: String,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain flag.
    pub retain: bool,
    /// MQTT 5 will delay interval, seconds.
    pub delay_interval: Option<u32>,
    /// MQTT 5 message expiry interval, seconds.
    pub message_expiry: Option<u32>,
    /// MQTT 5 properties that travel with the message.
    pub properties: PublishProperties,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// DUP flag (only with QoS 1 and 2).
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name; may be empty when `topic_alias` is set (MQTT 5).
    pub topic: String,
    /// Packet identifier; 0 for QoS 0 (and ignored when encoding QoS 0).
    pub pkid: u16,
    /// Payload.
    pub payload: Bytes,
    /// MQTT 5 properties that travel with the message.
    pub properties: PublishProperties,
    /// MQTT 5 message expiry interval, seconds.
    pub message_expiry: Option<u32>,
    /// MQTT 5 topic alias (per hop).
    pub topic_alias: Option<u16>,
    /// MQTT 5 subscription identifiers (server to client only, per hop).
    pub subscription_ids: Vec<u32>,
}

/// A PUBLISH without MQTT 5 properties, borrowing its topic and payload:
/// what a delivery to a 3.1/3.1.1 client encodes ([`super::Codec::encode_publish_ref`]).
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    /// DUP flag (only with QoS 1 and 2).
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name (not empty).
    pub topic: &'a str,
    /// Packet identifier (ignored for QoS 0).
    pub pkid: u16,
    /// Payload.
    pub payload: &'a [u8],
}

impl Default for Publish {
    fn default() -> Self {
        Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: String::new(),
            pkid: 0,
            payload: Bytes::new(),
            properties: PublishProperties::default(),
            message_expiry: None,
            topic_alias: None,
            subscription_ids: Vec::new(),
        }
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ack {
    /// Packet identifier (non-zero).
    pub pkid: u16,
    /// MQTT 5 reason code, 0: success (always 0 on 3.1.x).
    pub reason: u8,
    /// MQTT 5 reason string.
    pub reason_string: Option<String>,
    /// MQTT 5 user properties.
    pub user_properties: Vec<(String, String)>,
}

impl Ack {
    /// A plain success acknowledgement for a packet id.
    pub fn new(pkid: u16) -> Ack {
        Ack {
            pkid,
            ..Ack::default()
        }
    }

    /// An acknowledgement with an MQTT 5 reason code (dropped on 3.1.x).
    pub fn with_reason(pkid: u16, reason: u8) -> Ack {
        Ack {
            pkid,
            reason,
            ..Ack::default()
        }
    }
}

/// CONNACK.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnAck {
    /// Session present flag.
    pub session_present: bool,
    /// Reason code in MQTT 5 numbering (0: success); mapped to a 3.1.1 return
    /// code on 3.1.x connections.
    pub code: u8,
    /// MQTT 5 properties.
    pub props: ConnAckProps,
}

/// MQTT 5 CONNACK properties.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnAckProps {
    /// Session expiry interval in force, seconds.
    pub session_expiry: Option<u32>,
    /// Receive maximum of the server.
    pub receive_maximum: Option<u16>,
    /// Maximum QoS the server supports (0 or 1; absent: 2).
    pub max_qos: Option<u8>,
    /// Whether retained messages are supported.
    pub retain_available: Option<bool>,
    /// Maximum packet size the server accepts.
    pub max_packet_size: Option<u32>,
    /// Client identifier assigned by the server.
    pub assigned_client_id: Option<String>,
    /// Topic alias maximum the server accepts.
    pub topic_alias_max: Option<u16>,
    /// Reason string.
    pub reason_string: Option<String>,
    /// User properties.
    pub user_properties: Vec<(String, String)>,
    /// Whether wildcard subscriptions are supported.
    pub wildcard_available: Option<bool>,
    /// Whether subscription identifiers are supported.
    pub sub_ids_available: Option<bool>,
    /// Whether shared subscriptions are supported.
    pub shared_available: Option<bool>,
    /// Keep alive the server imposes, seconds.
    pub server_keepalive: Option<u16>,
    /// Response information.
    pub response_info: Option<String>,
    /// Server reference (another server to use).
    pub server_reference: Option<String>,
    /// Authentication method of an enhanced authentication (as in CONNECT).
    pub auth_method: Option<String>,
    /// Authentication data: the method's last message to the client.
    pub auth_data: Option<Bytes>,
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeFilter {
    /// The topic filter as sent.
    pub filter: String,
    /// Requested maximum QoS.
    pub qos: QoS,
    /// MQTT 5 no local.
    pub no_local: bool,
    /// MQTT 5 retain as published.
    pub retain_as_published: bool,
    /// MQTT 5 retain handling: 0, 1 or 2.
    pub retain_handling: u8,
}

impl SubscribeFilter {
    /// A filter with plain options (what 3.1.x carries).
    pub fn new(filter: impl Into<String>, qos: QoS) -> SubscribeFilter {
        SubscribeFilter {
            filter: filter.into(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }
    }
}

/// SUBSCRIBE.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subscribe {
    /// Packet identifier (non-zero).
    pub pkid: u16,
    /// Topic filters, at least one.
    pub filters: Vec<SubscribeFilter>,
    /// MQTT 5 subscription identifier (1 to 268,435,455).
    pub subscription_id: Option<u32>,
    /// MQTT 5 user properties.
    pub user_properties: Vec<(String, String)>,
}

/// SUBACK.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubAck {
    /// Packet identifier (non-zero).
    pub pkid: u16,
    /// One code per filter: granted QoS 0, 1, 2 or an MQTT 5 failure code
    /// (>= 0x80; any failure is 0x80 on 3.1.x).
    pub codes: Vec<u8>,
    /// MQTT 5 reason string.
    pub reason_string: Option<String>,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Unsubscribe {
    /// Packet identifier (non-zero).
    pub pkid: u16,
    /// Topic filters, at least one.
    pub filters: Vec<String>,
    /// MQTT 5 user properties.
    pub user_properties: Vec<(String, String)>,
}

/// UNSUBACK.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnsubAck {
    /// Packet identifier (non-zero).
    pub pkid: u16,
    /// MQTT 5 reason codes, one per filter (not sent on 3.1.x, empty when
    /// decoded from 3.1.x).
    pub codes: Vec<u8>,
}

/// DISCONNECT.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Disconnect {
    /// MQTT 5 reason code, 0: normal disconnection.
    pub reason: u8,
    /// MQTT 5 session expiry interval (client to server only).
    pub session_expiry: Option<u32>,
    /// MQTT 5 reason string.
    pub reason_string: Option<String>,
    /// MQTT 5 server reference.
    pub server_reference: Option<String>,
    /// MQTT 5 user properties.
    pub user_properties: Vec<(String, String)>,
}

/// AUTH (MQTT 5): one step of an enhanced authentication exchange.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Auth {
    /// 0x00 success, 0x18 continue authentication, 0x19 re-authenticate.
    pub reason: u8,
    /// Authentication method (required unless the reason is 0x00 and there
    /// are no properties).
    pub method: Option<String>,
    /// Authentication data.
    pub data: Option<Bytes>,
    /// Reason string.
    pub reason_string: Option<String>,
    /// User properties.
    pub user_properties: Vec<(String, String)>,
}
