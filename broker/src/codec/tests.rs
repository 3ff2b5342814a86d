//! Round trips, hand-built packets, split points and the malformed cases.

use bytes::{BufMut, Bytes, BytesMut};
use hooks_spec::{ProtocolVersion, PublishProperties, QoS};

use super::*;

pub(super) const MAX: usize = 1 << 20;

pub(super) fn pairs(n: usize) -> Vec<(String, String)> {
    (0..n).map(|i| (format!("k{i}"), format!("v{i}"))).collect()
}

pub(super) fn pub_props() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/to".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: pairs(2),
    }
}

pub(super) fn connect(protocol: ProtocolVersion) -> Connect {
    let v5 = protocol == ProtocolVersion::V5;
    Connect {
        protocol,
        clean_start: false,
        keepalive: 30,
        client_id: "client-1".into(),
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"\xff\x00\xfe binary")),
        will: Some(Will {
            topic: "will/topic".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            delay_interval: v5.then_some(10),
            message_expiry: v5.then_some(60),
            properties: if v5 {
                pub_props()
            } else {
                PublishProperties::default()
            },
        }),
        ..Connect::default()
    }
}

pub(super) fn connect_v5_full() -> Connect {
    Connect {
        session_expiry: Some(3600),
        receive_maximum: Some(20),
        max_packet_size: Some(65_536),
        topic_alias_max: Some(10),
        request_response_info: Some(1),
        request_problem_info: Some(0),
        user_properties: pairs(3),
        auth_method: Some("SCRAM".into()),
        auth_data: Some(Bytes::from_static(b"\x01\x02")),
        ..connect(ProtocolVersion::V5)
    }
}

/// One or more values of every packet type, as they survive a round trip on
/// `protocol` (3.1.x: no MQTT 5 fields).
pub(super) fn samples(protocol: ProtocolVersion) -> Vec<Packet> {
    let v5 = protocol == ProtocolVersion::V5;
    let mut out = vec![
        Packet::Connect(Box::new(connect(protocol))),
        Packet::Connect(Box::new(Connect {
            protocol,
            client_id: String::new(),
            ..Connect::default()
        })),
        Packet::Connect(Box::new(Connect {
            protocol,
            username: Some(String::new()),
            password: Some(Bytes::new()),
            ..Connect::default()
        })),
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: 0,
            props: ConnAckProps::default(),
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: 0x86,
            props: ConnAckProps::default(),
        }),
        Packet::Publish(Publish {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"hello"),
            ..Publish::default()
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            topic: "a/b/c".into(),
            pkid: 1,
            payload: Bytes::new(),
            ..Publish::default()
        }),
        Packet::Publish(Publish {
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "x".into(),
            pkid: 65_535,
            payload: Bytes::from(vec![7u8; 300]),
            ..Publish::default()
        }),
        Packet::PubAck(Ack::new(7)),
        Packet::PubRec(Ack::new(8)),
        Packet::PubRel(Ack::new(9)),
        Packet::PubComp(Ack::new(10)),
        Packet::Subscribe(Subscribe {
            pkid: 11,
            filters: vec![
                SubscribeFilter::new("a/+", QoS::AtMostOnce),
                SubscribeFilter::new("b/#", QoS::ExactlyOnce),
            ],
            ..Subscribe::default()
        }),
        Packet::SubAck(SubAck {
            pkid: 11,
            codes: vec![0, 1, 2, 0x80],
            reason_string: None,
        }),
        Packet::Unsubscribe(Unsubscribe {
            pkid: 12,
            filters: vec!["a/+".into(), "b".into()],
            ..Default::default()
        }),
        Packet::PingReq,
        Packet::PingResp,
    ];
    if protocol == ProtocolVersion::V311 {
        out.push(Packet::Connect(Box::new(connect(ProtocolVersion::V31))));
    }
    if !v5 {
        out.push(Packet::UnsubAck(UnsubAck {
            pkid: 12,
            codes: vec![],
        }));
        return out;
    }
    out.extend([
        Packet::Connect(Box::new(connect_v5_full())),
        Packet::Connect(Box::new(Connect {
            username: None,
            ..connect(protocol)
        })),
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: 0x9C,
            props: ConnAckProps {
                session_expiry: Some(0),
                receive_maximum: Some(100),
                max_qos: Some(1),
                retain_available: Some(false),
                max_packet_size: Some(1 << 20),
                assigned_client_id: Some("auto-1".into()),
                topic_alias_max: Some(5),
                reason_string: Some("moved".into()),
                user_properties: pairs(1),
                wildcard_available: Some(true),
                sub_ids_available: Some(false),
                shared_available: Some(true),
                server_keepalive: Some(60),
                response_info: Some("resp/".into()),
                server_reference: Some("other:1883".into()),
                auth_method: Some("SCRAM-SHA-512".into()),
                auth_data: Some(Bytes::from_static(b"v=final")),
            },
        }),
        Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            topic: "with/props".into(),
            pkid: 3,
            payload: Bytes::from_static(b"{}"),
            properties: pub_props(),
            message_expiry: Some(30),
            topic_alias: Some(2),
            subscription_ids: vec![1, 128, 268_435_455],
            ..Publish::default()
        }),
        Packet::Publish(Publish {
            topic: String::new(),
            topic_alias: Some(2),
            ..Publish::default()
        }),
        Packet::PubAck(Ack {
            pkid: 1,
            reason: 0x10,
            reason_string: None,
            user_properties: vec![],
        }),
        Packet::PubRec(Ack {
            pkid: 2,
            reason: 0x80,
            reason_string: Some("no".into()),
            user_properties: pairs(1),
        }),
        Packet::PubRel(Ack {
            pkid: 3,
            reason: 0x92,
            reason_string: None,
            user_properties: vec![],
        }),
        Packet::PubComp(Ack {
            pkid: 4,
            reason: 0,
            reason_string: Some("ok".into()),
            user_properties: vec![],
        }),
        Packet::Subscribe(Subscribe {
            pkid: 5,
            filters: vec![
                SubscribeFilter {
                    filter: "$share/g/a".into(),
                    qos: QoS::AtLeastOnce,
                    no_local: false,
                    retain_as_published: true,
                    retain_handling: 2,
                },
                SubscribeFilter {
                    filter: "c".into(),
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: false,
                    retain_handling: 1,
                },
            ],
            subscription_id: Some(99),
            user_properties: pairs(2),
        }),
        Packet::SubAck(SubAck {
            pkid: 5,
            codes: vec![1, 0x87, 0xA2],
            reason_string: Some("partly".into()),
        }),
        Packet::Unsubscribe(Unsubscribe {
            pkid: 6,
            filters: vec!["c".into()],
            user_properties: pairs(1),
        }),
        Packet::UnsubAck(UnsubAck {
            pkid: 6,
            codes: vec![0, 0x11, 0x87],
        }),
        Packet::Disconnect(Disconnect::default()),
        Packet::Disconnect(Disconnect {
            reason: 0x8E,
            ..Disconnect::default()
        }),
        Packet::Disconnect(Disconnect {
            reason: 0x04,
            session_expiry: Some(5),
            reason_string: Some("bye".into()),
            server_reference: Some("elsewhere".into()),
            user_properties: pairs(2),
        }),
        Packet::Auth(Auth::default()),
        Packet::Auth(Auth {
            reason: 0x18,
            method: Some("SCRAM-SHA-512".into()),
            data: Some(Bytes::from_static(b"r=abc,s=c2FsdA==,i=4096")),
            reason_string: Some("go on".into()),
            user_properties: pairs(2),
        }),
        Packet::Auth(Auth {
            reason: 0x19,
            method: Some("X".into()),
            ..Auth::default()
        }),
    ]);
    out
}

pub(super) fn encode(protocol: ProtocolVersion, packet: &Packet) -> BytesMut {
    let mut out = BytesMut::new();
    Codec::new(protocol, MAX).encode(packet, &mut out, None).unwrap();
    out
}

/// Decodes one packet the way a connection does: CONNECT with `decode_connect`.
pub(super) fn decode_one(
    protocol: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<Option<Packet>, DecodeError> {
    if buf.first().is_some_and(|b| b >> 4 == 1) {
        return decode_connect(buf, MAX).map(|c| c.map(|c| Packet::Connect(Box::new(c))));
    }
    Codec::new(protocol, MAX).decode(buf)
}

fn round_trip(protocol: ProtocolVersion) {
    for packet in samples(protocol) {
        let wire_protocol = match &packet {
            Packet::Connect(c) => c.protocol,
            _ => protocol,
        };
        let mut buf = encode(wire_protocol, &packet);
        let decoded = decode_one(protocol, &mut buf).unwrap().unwrap();
        assert_eq!(decoded, packet, "{protocol:?}");
        assert!(buf.is_empty(), "{packet:?} left {buf:?}");
    }
}

#[test]
fn round_trip_v4() {
    round_trip(ProtocolVersion::V311);
}

#[test]
fn round_trip_v31_uses_v4_encoding() {
    round_trip(ProtocolVersion::V31);
}

#[test]
fn round_trip_v5() {
    round_trip(ProtocolVersion::V5);
}

pub(super) fn frame(byte1: u8, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(byte1);
    frame::write_varint(&mut b, body.len());
    b.extend_from_slice(body);
    b
}

pub(super) fn connect_body(name: &str, level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut b = vec![0, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&[level, flags, 0, 60]);
    b.extend_from_slice(rest);
    b
}

pub(super) fn connect_err(body: &[u8]) -> DecodeError {
    decode_connect(&mut frame(0x10, body), MAX).unwrap_err()
}

#[test]
fn mqtt31_connect_by_hand() {
    let mut buf = frame(0x10, &connect_body("MQIsdp", 3, 0x02, b"\x00\x03abc"));
    let c = decode_connect(&mut buf, MAX).unwrap().unwrap();
    assert_eq!(c.protocol, ProtocolVersion::V31);
    assert_eq!(
        (c.client_id.as_str(), c.keepalive, c.clean_start),
        ("abc", 60, true)
    );
    assert!(buf.is_empty());

    // With will, user name and password; the rewrite changes the length.
    let body = connect_body(
        "MQIsdp",
        3,
        0xC0 | 0x04 | 0x08,
        b"\x00\x01c\x00\x01t\x00\x02hi\x00\x01u\x00\x02\xff\x01",
    );
    let c = decode_connect(&mut frame(0x10, &body), MAX).unwrap().unwrap();
    assert_eq!(c.protocol, ProtocolVersion::V31);
    assert_eq!(c.username.as_deref(), Some("u"));
    assert_eq!(c.password.as_deref(), Some(&b"\xff\x01"[..]));
    let w = c.will.clone().unwrap();
    assert_eq!(
        (w.topic.as_str(), &w.payload[..], w.qos),
        ("t", &b"hi"[..], QoS::AtLeastOnce)
    );

    // Encoding a 3.1 CONNECT gives MQIsdp / 3 back.
    let enc = encode(ProtocolVersion::V31, &Packet::Connect(Box::new(c.clone())));
    assert_eq!(&enc[2..11], b"\x00\x06MQIsdp\x03");
}

#[test]
fn unsupported_protocols() {
    let e = connect_err(&connect_body("MQTT", 6, 0x02, b"\x00\x00"));
    assert_eq!(e, DecodeError::UnsupportedProtocol(6));
    assert_eq!(e.reason_code(), 0x84);
    assert_eq!(
        connect_err(&connect_body("MQTT", 3, 2, b"\x00\x00")),
        DecodeError::UnsupportedProtocol(3)
    );
    assert_eq!(
        connect_err(&connect_body("MQIsdp", 4, 2, b"\x00\x00")),
        DecodeError::UnsupportedProtocol(4)
    );
    let e = connect_err(&connect_body("MQTX", 4, 0x02, b"\x00\x00"));
    assert_eq!(e, DecodeError::BadProtocolName("MQTX".into()));
    assert_eq!(e.reason_code(), 0x84);
}

fn stream(protocol: ProtocolVersion) -> (BytesMut, Vec<Packet>) {
    let mut packets = vec![Packet::Connect(Box::new(connect(protocol)))];
    packets.extend(
        samples(protocol)
            .into_iter()
            .filter(|p| !matches!(p, Packet::Connect(_))),
    );
    let mut bytes = BytesMut::new();
    for p in &packets {
        let wire = match p {
            Packet::Connect(c) => c.protocol,
            _ => protocol,
        };
        bytes.extend_from_slice(&encode(wire, p));
    }
    (bytes, packets)
}

#[test]
fn every_split_point_is_incomplete() {
    for protocol in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let (bytes, want) = stream(protocol);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in bytes.iter() {
            buf.put_u8(b);
            loop {
                let before = buf.clone();
                let r = if got.is_empty() {
                    decode_connect(&mut buf, MAX)
                        .unwrap()
                        .map(|c| Packet::Connect(Box::new(c)))
                } else {
                    Codec::new(protocol, MAX).decode(&mut buf).unwrap()
                };
                match r {
                    Some(p) => got.push(p),
                    None => {
                        assert_eq!(buf, before, "Ok(None) must leave the buffer untouched");
                        break;
                    }
                }
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got, want);
    }
}

#[test]
fn a_borrowed_v4_publish_encodes_as_mqttbytes_does_and_decodes_back() {
    let codec = Codec::new(ProtocolVersion::V311, MAX);
    // Remaining lengths on both sides of the 1-, 2- and 3-byte varint limits.
    for payload_len in [0usize, 1, 100, 123, 124, 200, 16_370, 16_400, 70_000] {
        for (qos, dup, retain) in [
            (QoS::AtMostOnce, false, false),
            (QoS::AtMostOnce, false, true),
            (QoS::AtLeastOnce, true, false),
            (QoS::ExactlyOnce, false, true),
        ] {
            let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
            let p = PublishRef {
                dup,
                qos,
                retain,
                topic: "a/b/ç",
                pkid: 77,
                payload: &payload,
            };
            let mut ours = BytesMut::from(&b"before"[..]);
            codec.encode_publish_ref(&p, &mut ours).unwrap();
            let mut reference = BytesMut::from(&b"before"[..]);
            let mut mp = mqttbytes::v4::Publish::new("a/b/ç", qos_to_mb(qos), payload.clone());
            mp.dup = dup;
            mp.retain = retain;
            if qos != QoS::AtMostOnce {
                mp.pkid = 77;
            }
            mp.write(&mut reference).unwrap();
            assert_eq!(
                ours, reference,
                "payload {payload_len}, {qos:?}, dup {dup}, retain {retain}"
            );
            let mut wire = ours.split_off(6);
            match codec.decode(&mut wire).unwrap() {
                Some(Packet::Publish(back)) => {
                    assert_eq!(
                        (back.topic.as_str(), back.qos, back.retain, back.payload.as_ref()),
                        ("a/b/ç", qos, retain, payload.as_slice())
                    );
                }
                other => panic!("decoded {other:?}"),
            }
        }
    }
}

#[test]
fn a_borrowed_publish_that_breaks_the_rules_writes_nothing() {
    let codec = Codec::new(ProtocolVersion::V311, MAX);
    let ok = PublishRef {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "t",
        pkid: 1,
        payload: b"x",
    };
    let long_topic = "t".repeat(70_000);
    for bad in [
        PublishRef { topic: "", ..ok },
        PublishRef { pkid: 0, ..ok },
        PublishRef {
            qos: QoS::AtMostOnce,
            dup: true,
            ..ok
        },
        PublishRef {
            topic: &long_topic,
            ..ok
        },
    ] {
        let mut out = BytesMut::from(&b"kept"[..]);
        assert!(codec.encode_publish_ref(&bad, &mut out).is_err(), "{bad:?}");
        assert_eq!(&out[..], b"kept");
    }
    let v5 = Codec::new(ProtocolVersion::V5, MAX);
    assert!(
        v5.encode_publish_ref(&ok, &mut BytesMut::new()).is_err(),
        "5.0 carries properties"
    );
}
