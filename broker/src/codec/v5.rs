//! MQTT 5.0 decoding of packets other than CONNECT, through mqttbytes' `v5`
//! module.
//!
//! Before mqttbytes reads a body, its property section is validated by
//! [`props::walk`] and the bytes around it are bounds-checked (nothing may
//! follow the properties of acks, CONNACK and DISCONNECT), so mqttbytes only
//! sees well-formed input. Decoded here instead: DISCONNECT with remaining
//! length 0 or 1 (mqttbytes wants a property length), UNSUBSCRIBE (mqttbytes'
//! reader prints every packet id to stderr with `dbg!`), AUTH (mqttbytes 0.6
//! has no type for it; see `auth`).

use bytes::Bytes;
use hooks_spec::PublishProperties;
use mqttbytes::v5;

use super::error::{from_mqttbytes, DecodeError};
use super::frame::{self, Header, Reader};
use super::packet::{
    Ack, ConnAck, ConnAckProps, Disconnect, Packet, Publish, SubAck, Subscribe, SubscribeFilter, UnsubAck,
    Unsubscribe,
};
use super::props::{self, Kind};
use super::{exact_len, need_filters, pkid_nonzero, qos_from_mb};

/// Properties come last in these packets: nothing may follow them.
fn end(r: &Reader<'_>) -> Result<(), DecodeError> {
    if !r.is_empty() {
        return Err(DecodeError::malformed("bytes after the property section"));
    }
    Ok(())
}

fn pairs(p: Vec<(&str, &str)>) -> Vec<(String, String)> {
    p.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

macro_rules! ack_from {
    ($read:expr) => {{
        let a = $read.map_err(from_mqttbytes)?;
        let (reason_string, user_properties) = a
            .properties
            .map(|p| (p.reason_string, p.user_properties))
            .unwrap_or_default();
        Ack {
            pkid: a.pkid,
            reason: a.reason as u8,
            reason_string,
            user_properties,
        }
    }};
}

/// Decodes one framed packet (anything but CONNECT, which the caller handles).
pub(crate) fn decode(header: Header, bytes: Bytes) -> Result<Packet, DecodeError> {
    let body = bytes.get(header.header_len..).unwrap_or_default();
    let fixed = header.fixed();
    let rl = header.remaining;
    let mut r = Reader::new(body);
    let packet = match header.packet_type() {
        2 => {
            if r.u8()? & 0xFE != 0 {
                return Err(DecodeError::malformed("reserved CONNACK flags set"));
            }
            r.u8()?;
            props::walk(&mut r, Kind::ConnAck)?;
            end(&r)?;
            Packet::ConnAck(connack_from(
                v5::ConnAck::read(fixed, bytes).map_err(from_mqttbytes)?,
            ))
        }
        3 => {
            r.str()?;
            if header.byte1 & 0b0110 != 0 {
                r.u16()?;
            }
            props::walk(&mut r, Kind::Publish)?;
            let p = publish_from(v5::Publish::read(fixed, bytes).map_err(from_mqttbytes)?);
            if p.topic.is_empty() && p.topic_alias.is_none() {
                return Err(DecodeError::protocol(
                    "PUBLISH with an empty topic name and no topic alias",
                ));
            }
            Packet::Publish(p)
        }
        t @ 4..=7 => {
            pkid_nonzero(r.u16()?)?;
            if rl >= 4 {
                r.u8()?;
                props::walk(&mut r, Kind::Ack)?;
                end(&r)?;
            }
            match t {
                4 => Packet::PubAck(ack_from!(v5::PubAck::read(fixed, bytes))),
                5 => Packet::PubRec(ack_from!(v5::PubRec::read(fixed, bytes))),
                6 => Packet::PubRel(ack_from!(v5::PubRel::read(fixed, bytes))),
                _ => Packet::PubComp(ack_from!(v5::PubComp::read(fixed, bytes))),
            }
        }
        8 => {
            frame::check_subscribe(body, true)?;
            Packet::Subscribe(subscribe_from(
                v5::Subscribe::read(fixed, bytes).map_err(from_mqttbytes)?,
            ))
        }
        9 => {
            pkid_nonzero(r.u16()?)?;
            props::walk(&mut r, Kind::SubAck)?;
            let s = v5::SubAck::read(fixed, bytes).map_err(from_mqttbytes)?;
            Packet::SubAck(SubAck {
                pkid: s.pkid,
                codes: s.return_codes.iter().map(|c| *c as u8).collect(),
                reason_string: s.properties.and_then(|p| p.reason_string),
            })
        }
        10 => {
            let pkid = r.u16()?;
            pkid_nonzero(pkid)?;
            let section = props::walk(&mut r, Kind::Unsubscribe)?;
            let mut filters = Vec::new();
            while !r.is_empty() {
                filters.push(r.str()?.to_owned());
            }
            need_filters(filters.len(), "UNSUBSCRIBE")?;
            Packet::Unsubscribe(Unsubscribe {
                pkid,
                filters,
                user_properties: pairs(section.user_properties),
            })
        }
        11 => {
            pkid_nonzero(r.u16()?)?;
            props::walk(&mut r, Kind::UnsubAck)?;
            let u = v5::UnsubAck::read(fixed, bytes).map_err(from_mqttbytes)?;
            Packet::UnsubAck(UnsubAck {
                pkid: u.pkid,
                codes: u.reasons.iter().map(|c| *c as u8).collect(),
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
        14 => Packet::Disconnect(disconnect_from(header, bytes)?),
        15 => Packet::Auth(super::auth::decode(header.remaining, body)?),
        t => return Err(DecodeError::malformed(format!("packet type {t} is reserved"))),
    };
    Ok(packet)
}

fn disconnect_from(header: Header, bytes: Bytes) -> Result<Disconnect, DecodeError> {
    let body = bytes.get(header.header_len..).unwrap_or_default();
    let mut r = Reader::new(body);
    match header.remaining {
        // mqttbytes needs the property length even though both may be omitted.
        0 => Ok(Disconnect::default()),
        1 => {
            let reason = r.u8()?;
            v5::DisconnectReasonCode::try_from(reason).map_err(from_mqttbytes)?;
            Ok(Disconnect {
                reason,
                ..Disconnect::default()
            })
        }
        _ => {
            r.u8()?;
            props::walk(&mut r, Kind::Disconnect)?;
            end(&r)?;
            let d = v5::Disconnect::read(header.fixed(), bytes).map_err(from_mqttbytes)?;
            let mut out = Disconnect {
                reason: d.reason_code as u8,
                ..Disconnect::default()
            };
            if let Some(p) = d.properties {
                out.session_expiry = p.session_expiry_interval;
                out.reason_string = p.reason_string;
                out.server_reference = p.server_reference;
                out.user_properties = p.user_properties;
            }
            Ok(out)
        }
    }
}

fn connack_from(c: v5::ConnAck) -> ConnAck {
    let props = c
        .properties
        .map(|p| ConnAckProps {
            session_expiry: p.session_expiry_interval,
            receive_maximum: p.receive_max,
            max_qos: p.max_qos,
            retain_available: p.retain_available.map(|v| v != 0),
            max_packet_size: p.max_packet_size,
            assigned_client_id: p.assigned_client_identifier,
            topic_alias_max: p.topic_alias_max,
            reason_string: p.reason_string,
            user_properties: p.user_properties,
            wildcard_available: p.wildcard_subscription_available.map(|v| v != 0),
            sub_ids_available: p.subscription_identifiers_available.map(|v| v != 0),
            shared_available: p.shared_subscription_available.map(|v| v != 0),
            server_keepalive: p.server_keep_alive,
            response_info: p.response_information,
            server_reference: p.server_reference,
            auth_method: p.authentication_method,
            auth_data: p.authentication_data,
        })
        .unwrap_or_default();
    ConnAck {
        session_present: c.session_present,
        code: c.code as u8,
        props,
    }
}

fn publish_from(p: v5::Publish) -> Publish {
    let mut out = Publish {
        dup: p.dup,
        qos: qos_from_mb(p.qos),
        retain: p.retain,
        topic: p.topic,
        pkid: p.pkid,
        payload: p.payload,
        ..Publish::default()
    };
    if let Some(pp) = p.properties {
        out.properties = PublishProperties {
            payload_format_indicator: pp.payload_format_indicator,
            content_type: pp.content_type,
            response_topic: pp.response_topic,
            correlation_data: pp.correlation_data,
            user_properties: pp.user_properties,
        };
        out.message_expiry = pp.message_expiry_interval;
        out.topic_alias = pp.topic_alias;
        // props::walk checked each is 1..=268,435,455.
        out.subscription_ids = pp.subscription_identifiers.iter().map(|&id| id as u32).collect();
    }
    out
}

fn subscribe_from(s: v5::Subscribe) -> Subscribe {
    let filters = s
        .filters
        .into_iter()
        .map(|f| SubscribeFilter {
            filter: f.path,
            qos: qos_from_mb(f.qos),
            no_local: f.nolocal,
            retain_as_published: f.preserve_retain,
            retain_handling: match f.retain_forward_rule {
                v5::RetainForwardRule::OnEverySubscribe => 0,
                v5::RetainForwardRule::OnNewSubscribe => 1,
                v5::RetainForwardRule::Never => 2,
            },
        })
        .collect();
    let (subscription_id, user_properties) = s
        .properties
        .map(|p| (p.id.map(|id| id as u32), p.user_properties))
        .unwrap_or_default();
    Subscribe {
        pkid: s.pkid,
        filters,
        subscription_id,
        user_properties,
    }
}
