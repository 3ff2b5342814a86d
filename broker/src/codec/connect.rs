//! CONNECT: protocol detection, the checks mqttbytes skips, MQTT 3.1 support
//! and binary passwords.
//!
//! mqttbytes reads and writes the password as a UTF-8 string, drops a user
//! name that is present but empty, knows neither MQTT 3.1 (`MQIsdp`, level 3)
//! nor the reserved flag bit, and ignores bytes after the payload. So the
//! CONNECT body is first scanned here (protocol name and level, flags, every
//! field's bounds, nothing after the last field); mqttbytes then reads a copy
//! with the variable header rewritten to `MQTT`/4 for 3.1 and the password
//! flag and field removed; the password is taken from the original bytes.
//! Encoding mirrors this: mqttbytes writes everything up to the will, and the
//! credentials are appended here.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use hooks_spec::{ProtocolVersion, PublishProperties};
use mqttbytes::{v4, v5};

use super::error::{encode_err, from_mqttbytes, DecodeError, EncodeError};
use super::frame::{self, check_len, check_pairs, Header, Reader, MAX_PACKET, MAX_REMAINING};
use super::packet::{Connect, Will};
use super::props::{self, Kind};
use super::{qos_from_mb, qos_to_mb};

const FLAG_RESERVED: u8 = 0x01;
const FLAG_WILL: u8 = 0x04;
const FLAG_WILL_RETAIN: u8 = 0x20;
const FLAG_PASSWORD: u8 = 0x40;
const FLAG_USERNAME: u8 = 0x80;

/// Variable header start of MQTT 3.1.1 / 5.0: length-prefixed "MQTT".
const MQTT_NAME: &[u8] = &[0, 4, b'M', b'Q', b'T', b'T'];
/// Variable header start of MQTT 3.1: length-prefixed "MQIsdp".
const MQISDP_NAME: &[u8] = &[0, 6, b'M', b'Q', b'I', b's', b'd', b'p'];
/// Offset of the connect flags in a body that starts with [`MQTT_NAME`] and a level.
const FLAGS_AT: usize = 7;

/// Decodes the first packet of a connection, which must be a CONNECT.
///
/// `Ok(None)`: more bytes are needed (`buf` is untouched). A packet of another
/// type is a protocol error (reported as soon as its first byte is there); a
/// CONNECT whose fixed header announces more than `max_packet_size` bytes is
/// [`DecodeError::TooLarge`] before it is buffered. The protocol name and level
/// are checked here: `MQTT` 4 is 3.1.1, `MQTT` 5 is 5.0, `MQIsdp` 3 is 3.1
/// (decoded as 3.1.1, reported as [`ProtocolVersion::V31`]); another level of
/// a known name is [`DecodeError::UnsupportedProtocol`], another name
/// [`DecodeError::BadProtocolName`]. On success the packet is removed from `buf`.
pub fn decode_connect(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Connect>, DecodeError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    if byte1 >> 4 != 1 {
        return Err(DecodeError::protocol(format!(
            "first packet must be CONNECT, got packet type {}",
            byte1 >> 4
        )));
    }
    frame::check_flags(byte1)?;
    let Some((header, bytes)) = frame::take(buf, max_packet_size, false)? else {
        return Ok(None);
    };
    decode_frame(header, bytes).map(Some)
}

/// What the scan of a CONNECT body found.
struct Layout {
    protocol: ProtocolVersion,
    username: bool,
    /// Offset of the password field (its length prefix) and range of its data.
    password: Option<(usize, Range<usize>)>,
}

/// Walks the whole CONNECT body, checking what mqttbytes does not.
fn scan(body: &[u8]) -> Result<Layout, DecodeError> {
    let mut r = Reader::new(body);
    let name = r.bin()?;
    let level = r.u8()?;
    let protocol = match (name, level) {
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp", 3) => ProtocolVersion::V31,
        (b"MQTT" | b"MQIsdp", l) => return Err(DecodeError::UnsupportedProtocol(l)),
        (n, _) => {
            return Err(DecodeError::BadProtocolName(
                String::from_utf8_lossy(n).into_owned(),
            ))
        }
    };
    let v5 = protocol == ProtocolVersion::V5;
    let flags = r.u8()?;
    if flags & FLAG_RESERVED != 0 {
        return Err(DecodeError::malformed("reserved CONNECT flag is set"));
    }
    let will = flags & FLAG_WILL != 0;
    let will_qos = (flags >> 3) & 0b11;
    if !will && (will_qos != 0 || flags & FLAG_WILL_RETAIN != 0) {
        return Err(DecodeError::malformed(
            "will QoS or will retain set without will flag",
        ));
    }
    if will_qos == 3 {
        return Err(DecodeError::malformed("will QoS 3"));
    }
    let username = flags & FLAG_USERNAME != 0;
    let password = flags & FLAG_PASSWORD != 0;
    if password && !username && !v5 {
        return Err(DecodeError::protocol("password flag set without user name flag"));
    }
    r.u16()?; // keep alive
    if v5 {
        props::walk(&mut r, Kind::Connect)?;
    }
    r.str()?; // client identifier
    if will {
        if v5 {
            props::walk(&mut r, Kind::Will)?;
        }
        r.str()?; // will topic
        r.bin()?; // will payload
    }
    if username {
        r.str()?;
    }
    let password = if password {
        let at = r.pos();
        let data = r.bin()?;
        Some((at, at + 2..at + 2 + data.len()))
    } else {
        None
    };
    if !r.is_empty() {
        return Err(DecodeError::malformed(
            "bytes after the end of the CONNECT payload",
        ));
    }
    Ok(Layout {
        protocol,
        username,
        password,
    })
}

fn decode_frame(header: Header, bytes: Bytes) -> Result<Connect, DecodeError> {
    let body = bytes.get(header.header_len..).unwrap_or_default();
    let layout = scan(body)?;
    let v5 = layout.protocol == ProtocolVersion::V5;
    if v5 && header.non_minimal() {
        return Err(DecodeError::malformed("remaining length not minimally encoded"));
    }
    let password = layout
        .password
        .as_ref()
        .map(|(_, data)| bytes.slice(header.header_len + data.start..header.header_len + data.end));

    // What mqttbytes reads: "MQTT"/4 instead of "MQIsdp"/3, no password.
    let (mb_header, mb_bytes) = if layout.protocol == ProtocolVersion::V31 || layout.password.is_some() {
        let end = layout.password.as_ref().map_or(body.len(), |(at, _)| *at);
        let mut copy = Vec::with_capacity(end);
        if layout.protocol == ProtocolVersion::V31 {
            copy.extend_from_slice(MQTT_NAME);
            copy.push(4);
            copy.extend_from_slice(body.get(MQISDP_NAME.len() + 1..end).unwrap_or_default());
        } else {
            copy.extend_from_slice(body.get(..end).unwrap_or_default());
        }
        if let Some(flags) = copy.get_mut(FLAGS_AT) {
            *flags &= !FLAG_PASSWORD;
        }
        frame::rebuild(header.byte1, &copy)
    } else {
        (header, bytes.clone())
    };

    let mut connect = if v5 {
        let c = v5::Connect::read(mb_header.fixed(), mb_bytes).map_err(from_mqttbytes)?;
        from_v5(c)
    } else {
        let c = v4::Connect::read(mb_header.fixed(), mb_bytes).map_err(from_mqttbytes)?;
        from_v4(c, layout.protocol)
    };
    // mqttbytes reports no login for a present but empty user name.
    connect.username = connect
        .username
        .take()
        .or_else(|| layout.username.then(String::new));
    connect.password = password;
    if connect.auth_data.is_some() && connect.auth_method.is_none() {
        return Err(DecodeError::protocol(
            "authentication data without authentication method",
        ));
    }
    Ok(connect)
}

fn from_v4(c: v4::Connect, protocol: ProtocolVersion) -> Connect {
    Connect {
        protocol,
        clean_start: c.clean_session,
        keepalive: c.keep_alive,
        client_id: c.client_id,
        username: c.login.map(|l| l.username),
        will: c.last_will.map(|w| Will {
            topic: w.topic,
            payload: w.message,
            qos: qos_from_mb(w.qos),
            retain: w.retain,
            delay_interval: None,
            message_expiry: None,
            properties: PublishProperties::default(),
        }),
        ..Connect::default()
    }
}

fn from_v5(c: v5::Connect) -> Connect {
    let p = c.properties;
    let will = c.last_will.map(|w| {
        let wp = w.properties;
        Will {
            topic: w.topic,
            payload: w.message,
            qos: qos_from_mb(w.qos),
            retain: w.retain,
            delay_interval: wp.as_ref().and_then(|p| p.delay_interval),
            message_expiry: wp.as_ref().and_then(|p| p.message_expiry_interval),
            properties: wp
                .map(|p| PublishProperties {
                    payload_format_indicator: p.payload_format_indicator,
                    content_type: p.content_type,
                    response_topic: p.response_topic,
                    correlation_data: p.correlation_data,
                    user_properties: p.user_properties,
                })
                .unwrap_or_default(),
        }
    });
    let mut connect = Connect {
        protocol: ProtocolVersion::V5,
        clean_start: c.clean_session,
        keepalive: c.keep_alive,
        client_id: c.client_id,
        username: c.login.map(|l| l.username),
        will,
        ..Connect::default()
    };
    if let Some(p) = p {
        connect.session_expiry = p.session_expiry_interval;
        connect.receive_maximum = p.receive_maximum;
        connect.max_packet_size = p.max_packet_size;
        connect.topic_alias_max = p.topic_alias_max;
        connect.request_response_info = p.request_response_info;
        connect.request_problem_info = p.request_problem_info;
        connect.user_properties = p.user_properties;
        connect.auth_method = p.authentication_method;
        connect.auth_data = p.authentication_data;
    }
    connect
}

/// Encodes a CONNECT for its own `protocol` (3.1 as `MQIsdp`/3).
pub(crate) fn encode(c: &Connect, out: &mut BytesMut, max: usize) -> Result<(), EncodeError> {
    validate(c)?;
    let v5 = c.protocol == ProtocolVersion::V5;
    let mut tmp = BytesMut::new();
    if v5 {
        to_v5(c).write(&mut tmp).map_err(encode_err)?;
    } else {
        to_v4(c).write(&mut tmp).map_err(encode_err)?;
    }
    let header = frame::parse_header(&tmp).ok().flatten();
    let Some(header) = header.filter(|h| h.frame_len() == tmp.len()) else {
        return Err(EncodeError::invalid("mqttbytes wrote an inconsistent CONNECT"));
    };
    let mut body = BytesMut::new();
    if c.protocol == ProtocolVersion::V31 {
        body.extend_from_slice(MQISDP_NAME);
        body.put_u8(3);
        body.extend_from_slice(
            tmp.get(header.header_len + MQTT_NAME.len() + 1..)
                .unwrap_or_default(),
        );
    } else {
        body.extend_from_slice(tmp.get(header.header_len..).unwrap_or_default());
    }
    let flags_at = if c.protocol == ProtocolVersion::V31 {
        MQISDP_NAME.len() + 1
    } else {
        FLAGS_AT
    };
    let mut extra = 0;
    if let Some(u) = &c.username {
        extra |= FLAG_USERNAME;
        body.put_u16(u.len() as u16);
        body.extend_from_slice(u.as_bytes());
    }
    if let Some(p) = &c.password {
        extra |= FLAG_PASSWORD;
        body.put_u16(p.len() as u16);
        body.extend_from_slice(p);
    }
    if let Some(flags) = body.get_mut(flags_at) {
        *flags |= extra;
    }
    let size = 1 + frame::varint_len(body.len()) + body.len();
    if body.len() > MAX_REMAINING || size > max {
        return Err(EncodeError::TooLarge {
            size,
            max: max.min(MAX_PACKET),
        });
    }
    out.reserve(size);
    out.put_u8(0x10);
    frame::write_varint(out, body.len());
    out.extend_from_slice(&body);
    Ok(())
}

fn validate(c: &Connect) -> Result<(), EncodeError> {
    check_len(c.client_id.as_bytes(), "client identifier")?;
    if let Some(u) = &c.username {
        check_len(u.as_bytes(), "user name")?;
    }
    if let Some(p) = &c.password {
        check_len(p, "password")?;
        if c.username.is_none() && c.protocol != ProtocolVersion::V5 {
            return Err(EncodeError::invalid("password without user name needs MQTT 5"));
        }
    }
    if let Some(w) = &c.will {
        check_len(w.topic.as_bytes(), "will topic")?;
        check_len(&w.payload, "will payload")?;
        let p = &w.properties;
        check_len(
            p.content_type.as_deref().unwrap_or_default().as_bytes(),
            "content type",
        )?;
        check_len(
            p.response_topic.as_deref().unwrap_or_default().as_bytes(),
            "response topic",
        )?;
        check_len(
            p.correlation_data.as_deref().unwrap_or_default(),
            "correlation data",
        )?;
        check_pairs(&p.user_properties)?;
    }
    check_len(
        c.auth_method.as_deref().unwrap_or_default().as_bytes(),
        "authentication method",
    )?;
    check_len(c.auth_data.as_deref().unwrap_or_default(), "authentication data")?;
    check_pairs(&c.user_properties)
}

fn to_v4(c: &Connect) -> v4::Connect {
    v4::Connect {
        protocol: mqttbytes::Protocol::V4,
        keep_alive: c.keepalive,
        client_id: c.client_id.clone(),
        clean_session: c.clean_start,
        last_will: c.will.as_ref().map(|w| v4::LastWill {
            topic: w.topic.clone(),
            message: w.payload.clone(),
            qos: qos_to_mb(w.qos),
            retain: w.retain,
        }),
        login: None,
    }
}

fn to_v5(c: &Connect) -> v5::Connect {
    let last_will = c.will.as_ref().map(|w| {
        let p = &w.properties;
        let wp = v5::WillProperties {
            delay_interval: w.delay_interval,
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: w.message_expiry,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
        };
        let empty =
            wp.delay_interval.is_none() && wp.message_expiry_interval.is_none() && *p == Default::default();
        v5::LastWill {
            topic: w.topic.clone(),
            message: w.payload.clone(),
            qos: qos_to_mb(w.qos),
            retain: w.retain,
            properties: (!empty).then_some(wp),
        }
    });
    let props = v5::ConnectProperties {
        session_expiry_interval: c.session_expiry,
        receive_maximum: c.receive_maximum,
        max_packet_size: c.max_packet_size,
        topic_alias_max: c.topic_alias_max,
        request_response_info: c.request_response_info,
        request_problem_info: c.request_problem_info,
        user_properties: c.user_properties.clone(),
        authentication_method: c.auth_method.clone(),
        authentication_data: c.auth_data.clone(),
    };
    let empty = props.session_expiry_interval.is_none()
        && props.receive_maximum.is_none()
        && props.max_packet_size.is_none()
        && props.topic_alias_max.is_none()
        && props.request_response_info.is_none()
        && props.request_problem_info.is_none()
        && props.user_properties.is_empty()
        && props.authentication_method.is_none()
        && props.authentication_data.is_none();
    v5::Connect {
        protocol: mqttbytes::Protocol::V5,
        keep_alive: c.keepalive,
        client_id: c.client_id.clone(),
        clean_session: c.clean_start,
        last_will,
        login: None,
        properties: (!empty).then_some(props),
    }
}
