//! The MQTT codec: bytes on the wire to and from Postbox's own packet types.
//!
//! This is the only module that uses mqttbytes. The rest of the broker sees
//! [`Packet`] and its parts, which are the same for MQTT 3.1, 3.1.1 and 5.0.
//!
//! - [`decode_connect`] reads the first packet of a connection and finds out
//!   which protocol the client speaks;
//! - a [`Codec`] for that protocol then decodes every following packet and
//!   encodes what the broker sends.
//!
//! Framing is done here, not by mqttbytes: a packet is checked against the
//! maximum packet size as soon as its fixed header is complete, fixed-header
//! flags are checked, and mqttbytes only ever reads one whole, bounds-checked
//! packet body, after the checks it lacks (see `v4`, `v5`, `connect`, `props`).
//! No input makes decoding panic.

mod auth;
mod connect;
mod error;
mod frame;
mod packet;
mod props;
mod v4;
mod v5;
mod v5_encode;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_errors;
#[cfg(test)]
mod tests_fuzz;

use bytes::BytesMut;
use hooks_spec::{ProtocolVersion, QoS};

pub use connect::decode_connect;
pub use error::{DecodeError, EncodeError};
pub use packet::{
    Ack, Auth, ConnAck, ConnAckProps, Connect, Disconnect, Packet, Publish, PublishRef, SubAck, Subscribe,
    SubscribeFilter, UnsubAck, Unsubscribe, Will,
};

/// Decoder and encoder for the packets after CONNECT on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    /// Protocol the connection speaks (3.1 and 3.1.1 share one encoding).
    pub protocol: ProtocolVersion,
    /// Largest inbound packet accepted, in bytes, fixed header included
    /// (MQTT's own limit, 256 MiB, fits: four bytes where `usize` took
    /// eight, in every connection).
    pub max_packet_size: u32,
}

impl Codec {
    /// A codec for a protocol and inbound size limit (beyond `u32::MAX`:
    /// `u32::MAX`, more than any packet can be).
    pub fn new(protocol: ProtocolVersion, max_packet_size: usize) -> Codec {
        Codec {
            protocol,
            max_packet_size: u32::try_from(max_packet_size).unwrap_or(u32::MAX),
        }
    }

    /// Decodes the next packet at the front of `buf` and removes it.
    ///
    /// `Ok(None)`: the packet is not complete yet and `buf` is untouched.
    /// Errors are final (close the connection, with
    /// [`DecodeError::reason_code`] in an MQTT 5 DISCONNECT): bad fixed-header
    /// flags as soon as the first byte is there, [`DecodeError::TooLarge`] as
    /// soon as the fixed header announces more than `max_packet_size`, then
    /// whatever is wrong with the body. A CONNECT here (a second one) is a
    /// protocol error; every other type is decoded in both directions.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(&byte1) = buf.first() else {
            return Ok(None);
        };
        frame::check_flags(byte1)?;
        if byte1 >> 4 == 1 {
            return Err(DecodeError::protocol("second CONNECT on a connection"));
        }
        let v5 = self.protocol == ProtocolVersion::V5;
        let Some((header, bytes)) = frame::take(buf, self.max_packet_size as usize, v5)? else {
            return Ok(None);
        };
        if v5 {
            v5::decode(header, bytes).map(Some)
        } else {
            v4::decode(header, bytes).map(Some)
        }
    }

    /// Appends the encoding of `packet` to `out`.
    ///
    /// CONNECT is encoded for the protocol in the packet; everything else for
    /// this codec's. On 3.1.x, MQTT 5 fields are left out, CONNACK reason codes
    /// become the nearest 3.1.1 return code (0x84 -> 1, 0x85 -> 2, 0x88 and
    /// 0x89 -> 3, 0x86 -> 4, 0x87 -> 5, any other failure -> 3), SUBACK failure
    /// codes become 0x80, UNSUBACK and PUBACK/PUBREC/PUBREL/PUBCOMP reason
    /// codes are dropped and DISCONNECT writes nothing. On 5.0, reason codes
    /// and properties are omitted where the protocol allows when they have
    /// their default values.
    ///
    /// When `max_size` is given (the client's maximum packet size) and the
    /// packet would be larger, a CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP,
    /// SUBACK or DISCONNECT is encoded without its reason string and user
    /// properties, as MQTT 5 requires (e.g. 3.2.2-19/20, 3.4.2-2/3, 3.9.2-1/2);
    /// when it is still too large, or when the packet cannot be encoded,
    /// `out` is left as it was.
    pub fn encode(
        &self,
        packet: &Packet,
        out: &mut BytesMut,
        max_size: Option<usize>,
    ) -> Result<(), EncodeError> {
        let res = self.encode_once(packet, out, max_size);
        if matches!(res, Err(EncodeError::TooLarge { .. })) {
            if let Some(slim) = without_diagnostics(packet) {
                return self.encode_once(&slim, out, max_size);
            }
        }
        res
    }

    /// Encodes a PUBLISH given by reference, for a 3.1/3.1.1 connection
    /// (a 5.0 one carries properties: it goes through [`Codec::encode`]).
    /// On error `out` is left as it was.
    pub fn encode_publish_ref(
        &self,
        publish: &PublishRef<'_>,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        if self.protocol == ProtocolVersion::V5 {
            return Err(EncodeError::invalid("a 5.0 PUBLISH is encoded from a Publish"));
        }
        v4::encode_publish(publish, out, usize::MAX)
    }

    fn encode_once(
        &self,
        packet: &Packet,
        out: &mut BytesMut,
        max_size: Option<usize>,
    ) -> Result<(), EncodeError> {
        let max = max_size.unwrap_or(usize::MAX);
        let start = out.len();
        let res = match packet {
            Packet::Connect(c) => connect::encode(c, out, max),
            _ if self.protocol == ProtocolVersion::V5 => v5_encode::encode(packet, out, max),
            _ => v4::encode(packet, out, max),
        };
        let size = out.len() - start;
        let res = match res {
            Ok(()) if size > max => Err(EncodeError::TooLarge { size, max }),
            other => other,
        };
        if res.is_err() {
            out.truncate(start);
        }
        res
    }
}

/// `packet` without the reason string and user properties the receiver may
/// go without; `None` when it has none (or is of a type whose user
/// properties are part of the message, such as PUBLISH).
fn without_diagnostics(packet: &Packet) -> Option<Packet> {
    let mut slim = packet.clone();
    let (reason_string, user_properties) = match &mut slim {
        Packet::ConnAck(c) => (&mut c.props.reason_string, &mut c.props.user_properties),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            (&mut a.reason_string, &mut a.user_properties)
        }
        Packet::Disconnect(d) => (&mut d.reason_string, &mut d.user_properties),
        Packet::SubAck(s) => {
            return s.reason_string.take().map(|_| slim);
        }
        _ => return None,
    };
    if reason_string.is_none() && user_properties.is_empty() {
        return None;
    }
    *reason_string = None;
    user_properties.clear();
    Some(slim)
}

pub(crate) fn qos_from_mb(q: mqttbytes::QoS) -> QoS {
    match q {
        mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

pub(crate) fn qos_to_mb(q: QoS) -> mqttbytes::QoS {
    match q {
        QoS::AtMostOnce => mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => mqttbytes::QoS::ExactlyOnce,
    }
}

/// A packet type whose remaining length is fixed.
pub(crate) fn exact_len(remaining: usize, want: usize, what: &str) -> Result<(), DecodeError> {
    if remaining != want {
        return Err(DecodeError::malformed(format!(
            "{what} with remaining length {remaining}, not {want}"
        )));
    }
    Ok(())
}

pub(crate) fn pkid_nonzero(pkid: u16) -> Result<(), DecodeError> {
    if pkid == 0 {
        return Err(DecodeError::malformed("packet identifier 0"));
    }
    Ok(())
}

pub(crate) fn need_filters(n: usize, what: &str) -> Result<(), DecodeError> {
    if n == 0 {
        return Err(DecodeError::protocol(format!("{what} without topic filters")));
    }
    Ok(())
}

pub(crate) fn need_pkid(pkid: u16, what: &str) -> Result<u16, EncodeError> {
    if pkid == 0 {
        return Err(EncodeError::invalid(format!("{what} with packet identifier 0")));
    }
    Ok(pkid)
}

/// Refuses a PUBLISH whose remaining length (from mqttbytes' `len()`) is too
/// large, before its payload is copied.
pub(crate) fn check_publish_size(remaining: usize, max: usize) -> Result<(), EncodeError> {
    let size = 1 + frame::varint_len(remaining) + remaining;
    if remaining > frame::MAX_REMAINING || size > max {
        return Err(EncodeError::TooLarge {
            size,
            max: max.min(frame::MAX_PACKET),
        });
    }
    Ok(())
}
