//! Decode and encode errors, and how mqttbytes' errors map onto them.

/// Why bytes from the network could not be decoded. Every variant closes the
/// connection; [`DecodeError::reason_code`] gives the MQTT 5 reason code to put
/// in the DISCONNECT (or CONNACK) sent before closing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes do not form a valid packet (reason code 0x81).
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// A well-formed packet that the protocol does not allow here (0x82).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The packet is larger than the maximum packet size (0x95).
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Size of the whole packet as its fixed header announces it.
        size: usize,
        /// The limit in force.
        max: usize,
    },
    /// CONNECT with a protocol level we do not speak (0x84; 3.1.1 CONNACK 0x01).
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocol(u8),
    /// CONNECT with a protocol name other than `MQTT` / `MQIsdp` (0x84).
    #[error("unknown protocol name {0:?}")]
    BadProtocolName(String),
}

impl DecodeError {
    /// The MQTT 5 reason code for a DISCONNECT or CONNACK reporting this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) => 0x81,
            DecodeError::Protocol(_) => 0x82,
            DecodeError::TooLarge { .. } => 0x95,
            DecodeError::UnsupportedProtocol(_) | DecodeError::BadProtocolName(_) => 0x84,
        }
    }

    pub(crate) fn malformed(msg: impl Into<String>) -> DecodeError {
        DecodeError::Malformed(msg.into())
    }

    pub(crate) fn protocol(msg: impl Into<String>) -> DecodeError {
        DecodeError::Protocol(msg.into())
    }
}

/// Why a packet could not be encoded. Nothing is written to the output buffer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded packet would be larger than the limit given (or than MQTT allows).
    #[error("encoded packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Size of the encoded packet.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The packet cannot be expressed on the wire (packet id 0, a string over
    /// 65,535 bytes, a reason code the packet type does not have, ...).
    #[error("cannot encode packet: {0}")]
    Invalid(String),
}

impl EncodeError {
    pub(crate) fn invalid(msg: impl Into<String>) -> EncodeError {
        EncodeError::Invalid(msg.into())
    }
}

/// Maps an error mqttbytes returned while reading a packet body we framed
/// ourselves (so "insufficient bytes" means the body is short: malformed).
pub(crate) fn from_mqttbytes(e: mqttbytes::Error) -> DecodeError {
    use mqttbytes::Error as E;
    match e {
        E::NotConnect(t) => DecodeError::protocol(format!("expected CONNECT, got {t:?}")),
        E::UnexpectedConnect => DecodeError::protocol("unexpected CONNECT"),
        E::InvalidProtocol => DecodeError::BadProtocolName("?".into()),
        E::InvalidProtocolLevel(l) => DecodeError::UnsupportedProtocol(l),
        E::InvalidRetainForwardRule(r) => DecodeError::protocol(format!("retain handling {r}")),
        E::SubscriptionIdZero => DecodeError::protocol("subscription identifier 0"),
        E::PayloadSizeLimitExceeded(size) => DecodeError::TooLarge { size, max: 0 },
        E::PacketIdZero => DecodeError::malformed("packet identifier 0"),
        E::TopicNotUtf8 => DecodeError::malformed("string is not valid UTF-8"),
        E::InvalidQoS(q) => DecodeError::malformed(format!("QoS {q}")),
        E::InvalidPropertyType(p) => DecodeError::malformed(format!("property 0x{p:02x} not allowed")),
        E::InvalidConnectReturnCode(c) | E::InvalidReason(c) | E::InvalidSubscribeReasonCode(c) => {
            DecodeError::malformed(format!("invalid reason code 0x{c:02x}"))
        }
        E::InvalidPacketType(t) => DecodeError::malformed(format!("invalid packet type {t}")),
        E::InsufficientBytes(_) | E::BoundaryCrossed(_) | E::MalformedPacket => {
            DecodeError::malformed("packet body too short for its contents")
        }
        other => DecodeError::malformed(format!("{other:?}")),
    }
}

/// Maps an error mqttbytes returned while writing a packet.
pub(crate) fn encode_err(e: mqttbytes::Error) -> EncodeError {
    EncodeError::invalid(format!("{e:?}"))
}
