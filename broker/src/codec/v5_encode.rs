//! MQTT 5.0 encoding of packets other than CONNECT, through mqttbytes' `v5`
//! module.
//!
//! Checked here because mqttbytes writes whatever it is given: string and
//! binary lengths (it truncates the 2-byte length prefix), packet id 0, reason
//! codes the packet type does not have, subscription identifiers outside
//! 1..=268,435,455, topic alias 0. Properties are passed as `None` when all
//! are default, so reason codes and property lengths are left out where the
//! protocol allows. CONNACK always gets a property section: with `None`
//! mqttbytes leaves out the mandatory property length. DISCONNECT with a
//! reason code and no properties is written here (see [`disconnect`]).

use bytes::BytesMut;
use hooks_spec::{PublishProperties, QoS};
use mqttbytes::v5;

use super::error::{encode_err, EncodeError};
use super::frame::{check_len, check_pairs, MAX_REMAINING};
use super::packet::{ConnAck, Disconnect, Packet, Publish, Subscribe};
use super::{check_publish_size, need_pkid, qos_to_mb};

fn check_opt(s: &Option<String>, what: &str) -> Result<(), EncodeError> {
    check_len(s.as_deref().unwrap_or_default().as_bytes(), what)
}

fn check_sub_id(id: u32) -> Result<usize, EncodeError> {
    let id = id as usize;
    if id == 0 || id > MAX_REMAINING {
        return Err(EncodeError::invalid(format!("subscription identifier {id}")));
    }
    Ok(id)
}

fn bad_reason(what: &str, code: u8) -> EncodeError {
    EncodeError::invalid(format!("{what} reason code 0x{code:02x}"))
}

/// Reason string and user properties of an ack, `None` when both are empty.
macro_rules! ack_props {
    ($ty:ident, $a:expr) => {{
        check_opt(&$a.reason_string, "reason string")?;
        check_pairs(&$a.user_properties)?;
        ($a.reason_string.is_some() || !$a.user_properties.is_empty()).then(|| v5::$ty {
            reason_string: $a.reason_string.clone(),
            user_properties: $a.user_properties.clone(),
        })
    }};
}

/// Appends one packet (anything but CONNECT) for an MQTT 5 connection.
pub(crate) fn encode(packet: &Packet, out: &mut BytesMut, max: usize) -> Result<(), EncodeError> {
    match packet {
        Packet::Connect(_) => return Err(EncodeError::invalid("CONNECT is encoded by the connect module")),
        Packet::ConnAck(c) => connack_to(c)?.write(out),
        Packet::Publish(p) => {
            let mp = publish_to(p)?;
            check_publish_size(mp.len(), max)?;
            mp.write(out)
        }
        Packet::PubAck(a) => {
            need_pkid(a.pkid, "PUBACK")?;
            let reason = puback_reason(a.reason).ok_or_else(|| bad_reason("PUBACK", a.reason))?;
            v5::PubAck {
                pkid: a.pkid,
                reason,
                properties: ack_props!(PubAckProperties, a),
            }
            .write(out)
        }
        Packet::PubRec(a) => {
            need_pkid(a.pkid, "PUBREC")?;
            let reason = pubrec_reason(a.reason).ok_or_else(|| bad_reason("PUBREC", a.reason))?;
            v5::PubRec {
                pkid: a.pkid,
                reason,
                properties: ack_props!(PubRecProperties, a),
            }
            .write(out)
        }
        Packet::PubRel(a) => {
            need_pkid(a.pkid, "PUBREL")?;
            let reason = match a.reason {
                0 => v5::PubRelReason::Success,
                0x92 => v5::PubRelReason::PacketIdentifierNotFound,
                c => return Err(bad_reason("PUBREL", c)),
            };
            v5::PubRel {
                pkid: a.pkid,
                reason,
                properties: ack_props!(PubRelProperties, a),
            }
            .write(out)
        }
        Packet::PubComp(a) => {
            need_pkid(a.pkid, "PUBCOMP")?;
            let reason = match a.reason {
                0 => v5::PubCompReason::Success,
                0x92 => v5::PubCompReason::PacketIdentifierNotFound,
                c => return Err(bad_reason("PUBCOMP", c)),
            };
            v5::PubComp {
                pkid: a.pkid,
                reason,
                properties: ack_props!(PubCompProperties, a),
            }
            .write(out)
        }
        Packet::Subscribe(s) => subscribe_to(s)?.write(out),
        Packet::SubAck(s) => {
            need_pkid(s.pkid, "SUBACK")?;
            if s.codes.is_empty() {
                return Err(EncodeError::invalid("SUBACK without reason codes"));
            }
            check_opt(&s.reason_string, "reason string")?;
            let mut codes = Vec::with_capacity(s.codes.len());
            for &c in &s.codes {
                codes.push(v5::SubscribeReasonCode::try_from(c).map_err(|_| bad_reason("SUBACK", c))?);
            }
            let properties = s.reason_string.as_ref().map(|r| v5::SubAckProperties {
                reason_string: Some(r.clone()),
                user_properties: Vec::new(),
            });
            v5::SubAck {
                pkid: s.pkid,
                return_codes: codes,
                properties,
            }
            .write(out)
        }
        Packet::Unsubscribe(u) => {
            need_pkid(u.pkid, "UNSUBSCRIBE")?;
            if u.filters.is_empty() {
                return Err(EncodeError::invalid("UNSUBSCRIBE without topic filters"));
            }
            for f in &u.filters {
                check_len(f.as_bytes(), "topic filter")?;
            }
            check_pairs(&u.user_properties)?;
            let properties = (!u.user_properties.is_empty()).then(|| v5::UnsubscribeProperties {
                user_properties: u.user_properties.clone(),
            });
            v5::Unsubscribe {
                pkid: u.pkid,
                filters: u.filters.clone(),
                properties,
            }
            .write(out)
        }
        Packet::UnsubAck(u) => {
            need_pkid(u.pkid, "UNSUBACK")?;
            if u.codes.is_empty() {
                return Err(EncodeError::invalid("UNSUBACK without reason codes"));
            }
            let mut reasons = Vec::with_capacity(u.codes.len());
            for &c in &u.codes {
                reasons.push(unsuback_reason(c).ok_or_else(|| bad_reason("UNSUBACK", c))?);
            }
            v5::UnsubAck {
                pkid: u.pkid,
                reasons,
                properties: None,
            }
            .write(out)
        }
        Packet::PingReq => v5::PingReq.write(out),
        Packet::PingResp => v5::PingResp.write(out),
        Packet::Disconnect(d) => return disconnect(d, out).map(|_| ()),
        Packet::Auth(a) => return super::auth::encode(a, out),
    }
    .map(|_| ())
    .map_err(encode_err)
}

fn connack_to(c: &ConnAck) -> Result<v5::ConnAck, EncodeError> {
    use v5::ConnectReturnCode as C;
    let code = match c.code {
        0x00 => C::Success,
        0x80 => C::UnspecifiedError,
        0x81 => C::MalformedPacket,
        0x82 => C::ProtocolError,
        0x83 => C::ImplementationSpecificError,
        0x84 => C::UnsupportedProtocolVersion,
        0x85 => C::ClientIdentifierNotValid,
        0x86 => C::BadUserNamePassword,
        0x87 => C::NotAuthorized,
        0x88 => C::ServerUnavailable,
        0x89 => C::ServerBusy,
        0x8A => C::Banned,
        0x8C => C::BadAuthenticationMethod,
        0x90 => C::TopicNameInvalid,
        0x95 => C::PacketTooLarge,
        0x97 => C::QuotaExceeded,
        0x99 => C::PayloadFormatInvalid,
        0x9A => C::RetainNotSupported,
        0x9B => C::QoSNotSupported,
        0x9C => C::UseAnotherServer,
        0x9D => C::ServerMoved,
        0x9F => C::ConnectionRateExceeded,
        other => return Err(bad_reason("CONNACK", other)),
    };
    let p = &c.props;
    check_opt(&p.assigned_client_id, "assigned client identifier")?;
    check_opt(&p.reason_string, "reason string")?;
    check_opt(&p.response_info, "response information")?;
    check_opt(&p.server_reference, "server reference")?;
    check_opt(&p.auth_method, "authentication method")?;
    check_len(p.auth_data.as_deref().unwrap_or_default(), "authentication data")?;
    check_pairs(&p.user_properties)?;
    // Always Some: with None mqttbytes leaves out the (mandatory) property length.
    let properties = v5::ConnAckProperties {
        session_expiry_interval: p.session_expiry,
        receive_max: p.receive_maximum,
        max_qos: p.max_qos,
        retain_available: p.retain_available.map(u8::from),
        max_packet_size: p.max_packet_size,
        assigned_client_identifier: p.assigned_client_id.clone(),
        topic_alias_max: p.topic_alias_max,
        reason_string: p.reason_string.clone(),
        user_properties: p.user_properties.clone(),
        wildcard_subscription_available: p.wildcard_available.map(u8::from),
        subscription_identifiers_available: p.sub_ids_available.map(u8::from),
        shared_subscription_available: p.shared_available.map(u8::from),
        server_keep_alive: p.server_keepalive,
        response_information: p.response_info.clone(),
        server_reference: p.server_reference.clone(),
        authentication_method: p.auth_method.clone(),
        authentication_data: p.auth_data.clone(),
    };
    Ok(v5::ConnAck {
        session_present: c.session_present,
        code,
        properties: Some(properties),
    })
}

fn publish_to(p: &Publish) -> Result<v5::Publish, EncodeError> {
    if p.topic.is_empty() && p.topic_alias.is_none() {
        return Err(EncodeError::invalid("empty topic name without topic alias"));
    }
    if p.topic_alias == Some(0) {
        return Err(EncodeError::invalid("topic alias 0"));
    }
    check_len(p.topic.as_bytes(), "topic name")?;
    let qos0 = p.qos == QoS::AtMostOnce;
    if qos0 && p.dup {
        return Err(EncodeError::invalid("DUP set on a QoS 0 PUBLISH"));
    }
    if !qos0 {
        need_pkid(p.pkid, "PUBLISH")?;
    }
    let pp = &p.properties;
    check_opt(&pp.content_type, "content type")?;
    check_opt(&pp.response_topic, "response topic")?;
    check_len(
        pp.correlation_data.as_deref().unwrap_or_default(),
        "correlation data",
    )?;
    check_pairs(&pp.user_properties)?;
    let mut subscription_identifiers = Vec::with_capacity(p.subscription_ids.len());
    for &id in &p.subscription_ids {
        subscription_identifiers.push(check_sub_id(id)?);
    }
    let empty = *pp == PublishProperties::default()
        && p.message_expiry.is_none()
        && p.topic_alias.is_none()
        && subscription_identifiers.is_empty();
    let properties = (!empty).then(|| v5::PublishProperties {
        payload_format_indicator: pp.payload_format_indicator,
        message_expiry_interval: p.message_expiry,
        topic_alias: p.topic_alias,
        response_topic: pp.response_topic.clone(),
        correlation_data: pp.correlation_data.clone(),
        user_properties: pp.user_properties.clone(),
        subscription_identifiers,
        content_type: pp.content_type.clone(),
    });
    Ok(v5::Publish {
        dup: p.dup,
        qos: qos_to_mb(p.qos),
        retain: p.retain,
        topic: p.topic.clone(),
        pkid: if qos0 { 0 } else { p.pkid },
        properties,
        payload: p.payload.clone(),
    })
}

fn subscribe_to(s: &Subscribe) -> Result<v5::Subscribe, EncodeError> {
    need_pkid(s.pkid, "SUBSCRIBE")?;
    if s.filters.is_empty() {
        return Err(EncodeError::invalid("SUBSCRIBE without topic filters"));
    }
    let mut filters = Vec::with_capacity(s.filters.len());
    for f in &s.filters {
        check_len(f.filter.as_bytes(), "topic filter")?;
        let rule = match f.retain_handling {
            0 => v5::RetainForwardRule::OnEverySubscribe,
            1 => v5::RetainForwardRule::OnNewSubscribe,
            2 => v5::RetainForwardRule::Never,
            r => return Err(EncodeError::invalid(format!("retain handling {r}"))),
        };
        let mut mf = v5::SubscribeFilter::new(f.filter.clone(), qos_to_mb(f.qos));
        mf.set_nolocal(f.no_local)
            .set_preserve_retain(f.retain_as_published)
            .set_retain_forward_rule(rule);
        filters.push(mf);
    }
    check_pairs(&s.user_properties)?;
    let id = s.subscription_id.map(check_sub_id).transpose()?;
    let properties = (id.is_some() || !s.user_properties.is_empty()).then(|| v5::SubscribeProperties {
        id,
        user_properties: s.user_properties.clone(),
    });
    Ok(v5::Subscribe {
        pkid: s.pkid,
        filters,
        properties,
    })
}

/// DISCONNECT. A reason code other than 0 is always followed by a property
/// length: the protocol allows leaving it out, but common clients (rumqttc)
/// then cannot read the packet. mqttbytes cannot write that form (with empty
/// properties its length computation mistakes the packet for a plain normal
/// disconnection and drops the reason code), so it is written here.
fn disconnect(d: &Disconnect, out: &mut BytesMut) -> Result<usize, EncodeError> {
    let reason_code =
        v5::DisconnectReasonCode::try_from(d.reason).map_err(|_| bad_reason("DISCONNECT", d.reason))?;
    check_opt(&d.reason_string, "reason string")?;
    check_opt(&d.server_reference, "server reference")?;
    check_pairs(&d.user_properties)?;
    let empty = d.session_expiry.is_none()
        && d.reason_string.is_none()
        && d.server_reference.is_none()
        && d.user_properties.is_empty();
    if empty && d.reason != 0 {
        out.extend_from_slice(&[0xE0, 2, d.reason, 0]);
        return Ok(4);
    }
    let properties = (!empty).then(|| v5::DisconnectProperties {
        session_expiry_interval: d.session_expiry,
        reason_string: d.reason_string.clone(),
        user_properties: d.user_properties.clone(),
        server_reference: d.server_reference.clone(),
    });
    v5::Disconnect {
        reason_code,
        properties,
    }
    .write(out)
    .map_err(encode_err)
}

fn puback_reason(code: u8) -> Option<v5::PubAckReason> {
    use v5::PubAckReason as R;
    Some(match code {
        0x00 => R::Success,
        0x10 => R::NoMatchingSubscribers,
        0x80 => R::UnspecifiedError,
        0x83 => R::ImplementationSpecificError,
        0x87 => R::NotAuthorized,
        0x90 => R::TopicNameInvalid,
        0x91 => R::PacketIdentifierInUse,
        0x97 => R::QuotaExceeded,
        0x99 => R::PayloadFormatInvalid,
        _ => return None,
    })
}

fn pubrec_reason(code: u8) -> Option<v5::PubRecReason> {
    use v5::PubRecReason as R;
    Some(match code {
        0x00 => R::Success,
        0x10 => R::NoMatchingSubscribers,
        0x80 => R::UnspecifiedError,
        0x83 => R::ImplementationSpecificError,
        0x87 => R::NotAuthorized,
        0x90 => R::TopicNameInvalid,
        0x91 => R::PacketIdentifierInUse,
        0x97 => R::QuotaExceeded,
        0x99 => R::PayloadFormatInvalid,
        _ => return None,
    })
}

fn unsuback_reason(code: u8) -> Option<v5::UnsubAckReason> {
    use v5::UnsubAckReason as R;
    Some(match code {
        0x00 => R::Success,
        0x11 => R::NoSubscriptionExisted,
        0x80 => R::UnspecifiedError,
        0x83 => R::ImplementationSpecificError,
        0x87 => R::NotAuthorized,
        0x8F => R::TopicFilterInvalid,
        0x91 => R::PacketIdentifierInUse,
        _ => return None,
    })
}
