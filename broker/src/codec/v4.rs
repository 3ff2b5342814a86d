//! MQTT 3.1 / 3.1.1 packets other than CONNECT, through mqttbytes' `v4` module.
//!
//! Checks added on top of mqttbytes: exact remaining lengths (acks, CONNACK,
//! PINGs, DISCONNECT), reserved bits of CONNACK flags and subscription options,
//! packet id 0, SUBSCRIBE / UNSUBSCRIBE without filters, empty topic names and
//! U+0000 in strings.

use bytes::{BufMut, Bytes, BytesMut};
use mqttbytes::v4;

use super::error::{encode_err, from_mqttbytes, DecodeError, EncodeError};
use super::frame::{self, check_len, no_nul, Header};
use super::packet::{
    Ack, ConnAck, Packet, Publish, PublishRef, SubAck, Subscribe, SubscribeFilter, UnsubAck, Unsubscribe,
};
use super::{check_publish_size, exact_len, need_filters, need_pkid, pkid_nonzero, qos_from_mb, qos_to_mb};

/// Decodes one framed packet (anything but CONNECT, which the caller handles).
pub(crate) fn decode(header: Header, bytes: Bytes) -> Result<Packet, DecodeError> {
    let body = bytes.get(header.header_len..).unwrap_or_default();
    let fixed = header.fixed();
    let rl = header.remaining;
    let packet = match header.packet_type() {
        2 => {
            exact_len(rl, 2, "CONNACK")?;
            if body.first().is_some_and(|f| f & 0xFE != 0) {
                return Err(DecodeError::malformed("reserved CONNACK flags set"));
            }
            let c = v4::ConnAck::read(fixed, bytes).map_err(from_mqttbytes)?;
            Packet::ConnAck(ConnAck {
                session_present: c.session_present,
                code: code_from_v4(c.code),
                ..ConnAck::default()
            })
        }
        3 => {
            let p = v4::Publish::read(fixed, bytes).map_err(from_mqttbytes)?;
            no_nul(&p.topic, "topic name")?;
            if p.topic.is_empty() {
                return Err(DecodeError::protocol("PUBLISH with an empty topic name"));
            }
            Packet::Publish(Publish {
                dup: p.dup,
                qos: qos_from_mb(p.qos),
                retain: p.retain,
                topic: p.topic,
                pkid: p.pkid,
                payload: p.payload,
                ..Publish::default()
            })
        }
        4 => {
            exact_len(rl, 2, "PUBACK")?;
            Packet::PubAck(ack(v4::PubAck::read(fixed, bytes).map_err(from_mqttbytes)?.pkid)?)
        }
        5 => {
            exact_len(rl, 2, "PUBREC")?;
            Packet::PubRec(ack(v4::PubRec::read(fixed, bytes).map_err(from_mqttbytes)?.pkid)?)
        }
        6 => {
            exact_len(rl, 2, "PUBREL")?;
            Packet::PubRel(ack(v4::PubRel::read(fixed, bytes).map_err(from_mqttbytes)?.pkid)?)
        }
        7 => {
            exact_len(rl, 2, "PUBCOMP")?;
            Packet::PubComp(ack(v4::PubComp::read(fixed, bytes)
                .map_err(from_mqttbytes)?
                .pkid)?)
        }
        8 => {
            frame::check_subscribe(body, false)?;
            let s = v4::Subscribe::read(fixed, bytes).map_err(from_mqttbytes)?;
            pkid_nonzero(s.pkid)?;
            Packet::Subscribe(Subscribe {
                pkid: s.pkid,
                filters: s
                    .filters
                    .into_iter()
                    .map(|f| SubscribeFilter::new(f.path, qos_from_mb(f.qos)))
                    .collect(),
                ..Subscribe::default()
            })
        }
        9 => {
            let s = v4::SubAck::read(fixed, bytes).map_err(from_mqttbytes)?;
            pkid_nonzero(s.pkid)?;
            let codes = s
                .return_codes
                .iter()
                .map(|c| match c {
                    v4::SubscribeReasonCode::Success(q) => *q as u8,
                    v4::SubscribeReasonCode::Failure => 0x80,
                })
                .collect();
            Packet::SubAck(SubAck {
                pkid: s.pkid,
                codes,
                reason_string: None,
            })
        }
        10 => {
            let u = v4::Unsubscribe::read(fixed, bytes).map_err(from_mqttbytes)?;
            pkid_nonzero(u.pkid)?;
            need_filters(u.topics.len(), "UNSUBSCRIBE")?;
            for t in &u.topics {
                no_nul(t, "topic filter")?;
            }
            Packet::Unsubscribe(Unsubscribe {
                pkid: u.pkid,
                filters: u.topics,
                user_properties: Vec::new(),
            })
        }
        11 => {
            let u = v4::UnsubAck::read(fixed, bytes).map_err(from_mqttbytes)?;
            pkid_nonzero(u.pkid)?;
            Packet::UnsubAck(UnsubAck {
                pkid: u.pkid,
                codes: Vec::new(),
            })
        }
        12 => {
            exact_len(rl, 0, "PINGREQ")?;
            Packet::PingReq
        }
        13 => {
            exact_len(rl, 0, "PINGRESP")?;
            Packet::PingResp
        }
        14 => {
            exact_len(rl, 0, "DISCONNECT")?;
            Packet::Disconnect(Default::default())
        }
        t => {
            return Err(DecodeError::malformed(format!(
                "packet type {t} is reserved in MQTT 3.1.1"
            )))
        }
    };
    Ok(packet)
}

fn ack(pkid: u16) -> Result<Ack, DecodeError> {
    pkid_nonzero(pkid)?;
    Ok(Ack::new(pkid))
}

/// 3.1.1 CONNACK return code to the MQTT 5 reason code it stands for.
fn code_from_v4(code: v4::ConnectReturnCode) -> u8 {
    use v4::ConnectReturnCode as C;
    match code {
        C::Success => 0,
        C::RefusedProtocolVersion => 0x84,
        C::BadClientId => 0x85,
        C::ServiceUnavailable => 0x88,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
    }
}

/// MQTT 5 CONNACK reason code to the nearest 3.1.1 return code.
fn code_to_v4(code: u8) -> v4::ConnectReturnCode {
    use v4::ConnectReturnCode as C;
    match code {
        0 => C::Success,
        0x84 => C::RefusedProtocolVersion,
        0x85 => C::BadClientId,
        0x86 => C::BadUserNamePassword,
        0x87 => C::NotAuthorized,
        _ => C::ServiceUnavailable,
    }
}

/// Appends one packet (anything but CONNECT) for a 3.1.x connection. MQTT 5
/// only fields are dropped; DISCONNECT writes nothing (servers do not send it
/// in 3.1.x); ack reason codes are dropped (3.1.1 acknowledges a refused
/// PUBLISH like any other, MQTT-3.3.5-2; not acknowledging at all is the
/// caller's decision).
pub(crate) fn encode(packet: &Packet, out: &mut BytesMut, max: usize) -> Result<(), EncodeError> {
    match packet {
        Packet::Connect(_) => return Err(EncodeError::invalid("CONNECT is encoded by the connect module")),
        Packet::ConnAck(c) => v4::ConnAck::new(code_to_v4(c.code), c.session_present).write(out),
        Packet::Publish(p) => {
            return encode_publish(
                &PublishRef {
                    dup: p.dup,
                    qos: p.qos,
                    retain: p.retain,
                    topic: &p.topic,
                    pkid: p.pkid,
                    payload: &p.payload,
                },
                out,
                max,
            )
        }
        Packet::PubAck(a) => v4::PubAck::new(need_pkid(a.pkid, "PUBACK")?).write(out),
        Packet::PubRec(a) => v4::PubRec::new(need_pkid(a.pkid, "PUBREC")?).write(out),
        Packet::PubRel(a) => v4::PubRel::new(need_pkid(a.pkid, "PUBREL")?).write(out),
        Packet::PubComp(a) => v4::PubComp::new(need_pkid(a.pkid, "PUBCOMP")?).write(out),
        Packet::Subscribe(s) => {
            need_pkid(s.pkid, "SUBSCRIBE")?;
            if s.filters.is_empty() {
                return Err(EncodeError::invalid("SUBSCRIBE without topic filters"));
            }
            let mut filters = Vec::with_capacity(s.filters.len());
            for f in &s.filters {
                check_len(f.filter.as_bytes(), "topic filter")?;
                filters.push(v4::SubscribeFilter::new(f.filter.clone(), qos_to_mb(f.qos)));
            }
            v4::Subscribe {
                pkid: s.pkid,
                filters,
            }
            .write(out)
        }
        Packet::SubAck(s) => {
            need_pkid(s.pkid, "SUBACK")?;
            if s.codes.is_empty() {
                return Err(EncodeError::invalid("SUBACK without return codes"));
            }
            let mut codes = Vec::with_capacity(s.codes.len());
            for &c in &s.codes {
                codes.push(match c {
                    0 => v4::SubscribeReasonCode::Success(mqttbytes::QoS::AtMostOnce),
                    1 => v4::SubscribeReasonCode::Success(mqttbytes::QoS::AtLeastOnce),
                    2 => v4::SubscribeReasonCode::Success(mqttbytes::QoS::ExactlyOnce),
                    0x80..=0xFF => v4::SubscribeReasonCode::Failure,
                    _ => return Err(EncodeError::invalid(format!("SUBACK code 0x{c:02x}"))),
                });
            }
            v4::SubAck::new(s.pkid, codes).write(out)
        }
        Packet::Unsubscribe(u) => {
            need_pkid(u.pkid, "UNSUBSCRIBE")?;
            if u.filters.is_empty() {
                return Err(EncodeError::invalid("UNSUBSCRIBE without topic filters"));
            }
            for f in &u.filters {
                check_len(f.as_bytes(), "topic filter")?;
            }
            v4::Unsubscribe {
                pkid: u.pkid,
                topics: u.filters.clone(),
            }
            .write(out)
        }
        Packet::UnsubAck(u) => v4::UnsubAck::new(need_pkid(u.pkid, "UNSUBACK")?).write(out),
        Packet::PingReq => v4::PingReq.write(out),
        Packet::PingResp => v4::PingResp.write(out),
        Packet::Disconnect(_) => return Ok(()),
        Packet::Auth(_) => return Err(EncodeError::invalid("AUTH needs MQTT 5")),
    }
    .map(|_| ())
    .map_err(encode_err)
}

/// Encodes a 3.1/3.1.1 PUBLISH from borrowed parts, straight into `out`:
/// every delivery goes through here, and building a packet struct cost a
/// copy of the topic and two reference-count round trips on the payload per
/// message. The layout (MQTT 3.1.1 section 3.3): the fixed header with the
/// DUP, QoS and RETAIN flags and the remaining length, the topic name with
/// its length, the packet identifier (QoS 1 and 2 only), the payload.
pub(crate) fn encode_publish(p: &PublishRef<'_>, out: &mut BytesMut, max: usize) -> Result<(), EncodeError> {
    if p.topic.is_empty() {
        return Err(EncodeError::invalid(
            "empty topic name (topic aliases need MQTT 5)",
        ));
    }
    check_len(p.topic.as_bytes(), "topic name")?;
    let qos0 = p.qos == hooks_spec::QoS::AtMostOnce;
    if qos0 && p.dup {
        return Err(EncodeError::invalid("DUP set on a QoS 0 PUBLISH"));
    }
    if !qos0 {
        need_pkid(p.pkid, "PUBLISH")?;
    }
    let remaining = 2 + p.topic.len() + if qos0 { 0 } else { 2 } + p.payload.len();
    check_publish_size(remaining, max)?;
    out.reserve(1 + frame::varint_len(remaining) + remaining);
    out.put_u8(0x30 | (u8::from(p.dup) << 3) | (p.qos.as_u8() << 1) | u8::from(p.retain));
    frame::write_varint(out, remaining);
    // check_len bounds the topic to 65,535 bytes.
    out.put_u16(p.topic.len() as u16);
    out.put_slice(p.topic.as_bytes());
    if !qos0 {
        out.put_u16(p.pkid);
    }
    out.put_slice(p.payload);
    Ok(())
}
