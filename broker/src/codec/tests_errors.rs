//! The malformed and protocol-error cases, and encoder details.

use bytes::BytesMut;
use hooks_spec::{ProtocolVersion, QoS};

use super::tests::{connect, connect_body, connect_err, connect_v5_full, decode_one, encode, frame, MAX};
use super::*;

fn err(protocol: ProtocolVersion, bytes: &[u8]) -> DecodeError {
    Codec::new(protocol, MAX)
        .decode(&mut BytesMut::from(bytes))
        .unwrap_err()
}

fn ok(protocol: ProtocolVersion, bytes: &[u8]) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let p = Codec::new(protocol, MAX).decode(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty());
    p
}

fn is_malformed(e: &DecodeError) -> bool {
    matches!(e, DecodeError::Malformed(_)) && e.reason_code() == 0x81
}

fn is_protocol(e: &DecodeError) -> bool {
    matches!(e, DecodeError::Protocol(_)) && e.reason_code() == 0x82
}

const V4: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

#[test]
fn framing_errors() {
    for p in [V4, V5] {
        // A remaining length of 5 bytes.
        assert!(is_malformed(&err(p, &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])));
        // Too large as soon as the header is complete, nothing else buffered.
        let e = Codec::new(p, 100)
            .decode(&mut BytesMut::from(&[0x30, 0xE8, 0x07][..]))
            .unwrap_err();
        assert_eq!(e, DecodeError::TooLarge { size: 1003, max: 100 });
        assert_eq!(e.reason_code(), 0x95);
        // Fixed-header flags.
        assert!(is_malformed(&err(p, &[0x60, 2, 0, 1])), "PUBREL flags 0");
        assert!(
            is_malformed(&err(p, &[0x80])),
            "SUBSCRIBE flags 0, checked on the first byte"
        );
        assert!(
            is_malformed(&err(p, &[0xA0, 5, 0, 1, 0, 1, b'a'])),
            "UNSUBSCRIBE flags 0"
        );
        assert!(is_malformed(&err(p, &[0x42, 2, 0, 1])), "PUBACK flags 2");
        assert!(is_malformed(&err(p, &[0xC1, 0])), "PINGREQ flags 1");
        assert!(
            is_malformed(&err(p, &[0x36, 5, 0, 1, b'a', 0, 1])),
            "PUBLISH QoS 3"
        );
        assert!(
            is_malformed(&err(p, &[0x38, 3, 0, 1, b'a'])),
            "PUBLISH DUP with QoS 0"
        );
        assert!(is_malformed(&err(p, &[0x00, 0])), "packet type 0");
        assert!(is_malformed(&err(p, &[0xC0, 1, 0])), "PINGREQ with a body");
        // A second CONNECT.
        assert!(is_protocol(&err(
            p,
            &encode(p, &Packet::Connect(Box::new(connect(p))))
        )));
    }
    // Non-minimal remaining length: malformed in 5.0 only.
    assert!(is_malformed(&err(V5, &[0xC0, 0x80, 0x00])));
    assert_eq!(ok(V4, &[0xC0, 0x80, 0x00]), Packet::PingReq);
    // decode_connect: not a CONNECT, too large.
    assert!(is_protocol(
        &decode_connect(&mut BytesMut::from(&[0x30][..]), MAX).unwrap_err()
    ));
    let e = decode_connect(&mut BytesMut::from(&[0x10, 0xFF, 0x7F][..]), 1000).unwrap_err();
    assert_eq!(
        e,
        DecodeError::TooLarge {
            size: 16_386,
            max: 1000
        }
    );
}

#[test]
fn mqttbytes_gaps() {
    // v5 DISCONNECT with remaining length 0 and 1.
    assert_eq!(ok(V5, &[0xE0, 0]), Packet::Disconnect(Disconnect::default()));
    assert_eq!(
        ok(V5, &[0xE0, 1, 0x04]),
        Packet::Disconnect(Disconnect {
            reason: 4,
            ..Default::default()
        })
    );
    assert!(
        is_malformed(&err(V5, &[0xE0, 1, 0x05])),
        "not a DISCONNECT reason code"
    );
    assert_eq!(ok(V4, &[0xE0, 0]), Packet::Disconnect(Disconnect::default()));
    // v5 acks with remaining length 2 and 3.
    for t in [0x40, 0x50, 0x62, 0x70] {
        let p = ok(V5, &[t, 2, 0, 9]);
        let a = match p {
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => a,
            other => panic!("{other:?}"),
        };
        assert_eq!(a, Ack::new(9));
    }
    assert_eq!(
        ok(V5, &[0x40, 3, 0, 9, 0x10]),
        Packet::PubAck(Ack {
            pkid: 9,
            reason: 0x10,
            ..Ack::default()
        })
    );
    // 3.1.1 acks are exactly 2 bytes.
    assert!(is_malformed(&err(V4, &[0x40, 3, 0, 9, 0])));
    // No filters.
    assert!(is_protocol(&err(V4, &[0x82, 2, 0, 1])));
    assert!(is_protocol(&err(V5, &[0x82, 3, 0, 1, 0])));
    assert!(is_protocol(&err(V4, &[0xA2, 2, 0, 1])));
    assert!(is_protocol(&err(V5, &[0xA2, 3, 0, 1, 0])));
    // Packet id 0.
    for p in [V4, V5] {
        assert!(is_malformed(&err(p, &[0x40, 2, 0, 0])), "PUBACK");
        assert!(is_malformed(&err(p, &[0x62, 2, 0, 0])), "PUBREL");
        assert!(is_malformed(&err(p, &[0x90, 3, 0, 0, 0])), "SUBACK");
        assert!(is_malformed(&err(p, &[0xB0, 2, 0, 0])), "UNSUBACK");
    }
    assert!(
        is_malformed(&err(V4, &[0x32, 5, 0, 1, b'a', 0, 0])),
        "PUBLISH QoS 1"
    );
    assert!(
        is_malformed(&err(V5, &[0x32, 6, 0, 1, b'a', 0, 0, 0])),
        "PUBLISH QoS 1"
    );
    assert!(
        is_malformed(&err(V4, &[0x82, 6, 0, 0, 0, 1, b'a', 0])),
        "SUBSCRIBE"
    );
    assert!(
        is_malformed(&err(V5, &[0x82, 7, 0, 0, 0, 0, 1, b'a', 0])),
        "SUBSCRIBE"
    );
    assert!(
        is_malformed(&err(V4, &[0xA2, 5, 0, 0, 0, 1, b'a'])),
        "UNSUBSCRIBE"
    );
    assert!(
        is_malformed(&err(V5, &[0xA2, 6, 0, 0, 0, 0, 1, b'a'])),
        "UNSUBSCRIBE"
    );
    // Subscription options.
    assert!(
        is_malformed(&err(V4, &[0x82, 6, 0, 1, 0, 1, b'a', 0x04])),
        "3.1.1 reserved bits"
    );
    assert!(
        is_malformed(&err(V5, &[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x40])),
        "5.0 reserved bits"
    );
    assert!(
        is_malformed(&err(V5, &[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x03])),
        "QoS 3"
    );
    assert!(
        is_protocol(&err(V5, &[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x30])),
        "retain handling 3"
    );
    // Topic names.
    assert!(is_protocol(&err(V4, &[0x30, 2, 0, 0])), "empty topic");
    assert!(
        is_protocol(&err(V5, &[0x30, 3, 0, 0, 0])),
        "empty topic without alias"
    );
    assert!(is_malformed(&err(V4, &[0x30, 3, 0, 1, 0])), "U+0000 in topic");
    assert!(is_malformed(&err(V4, &[0x30, 4, 0, 2, 0xC3, 0x28])), "bad UTF-8");
    // Properties.
    assert!(
        is_protocol(&err(V5, &[0x30, 10, 0, 1, b'a', 6, 35, 0, 1, 35, 0, 2])),
        "duplicate property"
    );
    assert!(
        is_protocol(&err(V5, &[0x30, 7, 0, 1, b'a', 3, 35, 0, 0])),
        "topic alias 0"
    );
    assert!(
        is_malformed(&err(V5, &[0x30, 6, 0, 1, b'a', 2, 17, 0])),
        "property not allowed in PUBLISH"
    );
    assert!(
        is_malformed(&err(V5, &[0x30, 7, 0, 1, b'a', 2, 35, 0, 1])),
        "property cut by section end"
    );
    assert!(
        is_malformed(&err(V5, &[0x40, 5, 0, 1, 0, 9, 0])),
        "property length past the end"
    );
    assert!(
        is_malformed(&err(V5, &[0xE0, 3, 0, 0, 0])),
        "bytes after properties"
    );
    // AUTH: not in 3.1.1; a reason it does not have, a method missing,
    // a property AUTH does not carry.
    assert!(is_malformed(&err(V4, &[0xF0, 0])));
    assert!(is_malformed(&err(V5, &[0xF0, 2, 0x87, 0])));
    assert!(is_protocol(&err(V5, &[0xF0, 2, 0x18, 0])));
    assert!(is_malformed(&err(V5, &[0xF0, 4, 0x18, 2, 0x11, 0])));
    assert!(is_malformed(&err(V5, &[0xF0, 5, 0x18, 2, 0x15, 0, 0])));
    // CONNACK reserved flags.
    assert!(is_malformed(&err(V4, &[0x20, 2, 2, 0])));
    assert!(is_malformed(&err(V5, &[0x20, 3, 2, 0, 0])));
}

#[test]
fn connect_flag_errors() {
    let id = b"\x00\x01c";
    // Reserved flag bit 0.
    assert!(is_malformed(&connect_err(&connect_body("MQTT", 4, 0x03, id))));
    // Will QoS / retain without will flag; will QoS 3.
    assert!(is_malformed(&connect_err(&connect_body("MQTT", 4, 0x08, id))));
    assert!(is_malformed(&connect_err(&connect_body("MQTT", 4, 0x20, id))));
    assert!(is_malformed(&connect_err(&connect_body(
        "MQTT",
        4,
        0x1C,
        b"\x00\x01c\x00\x01t\x00\x00"
    ))));
    // Password without user name: 3.1.1 no, 5.0 yes.
    assert!(is_protocol(&connect_err(&connect_body(
        "MQTT",
        4,
        0x40,
        b"\x00\x01c\x00\x01p"
    ))));
    let mut v5 = frame(0x10, &connect_body("MQTT", 5, 0x40, b"\x00\x00\x01c\x00\x01p"));
    let c = decode_connect(&mut v5, MAX).unwrap().unwrap();
    assert_eq!((c.username, c.password.as_deref()), (None, Some(&b"p"[..])));
    // Bytes after the payload, truncated payload.
    assert!(is_malformed(&connect_err(&connect_body(
        "MQTT",
        4,
        0x02,
        b"\x00\x01cX"
    ))));
    assert!(is_malformed(&connect_err(&connect_body(
        "MQTT",
        4,
        0x02,
        b"\x00\x05c"
    ))));
    // Authentication data without method.
    assert!(is_protocol(&connect_err(&connect_body(
        "MQTT",
        5,
        0x02,
        b"\x03\x16\x00\x00\x00\x00"
    ))));
    // Duplicate property, value out of range.
    let dup = b"\x0a\x11\x00\x00\x00\x01\x11\x00\x00\x00\x02\x00\x00";
    assert!(is_protocol(&connect_err(&connect_body("MQTT", 5, 0x02, dup))));
    assert!(is_protocol(&connect_err(&connect_body(
        "MQTT",
        5,
        0x02,
        b"\x03\x21\x00\x00\x00\x00"
    ))));
}

#[test]
fn encode_details() {
    let v4 = Codec::new(V4, MAX);
    let v5 = Codec::new(V5, MAX);
    let bytes = |c: &Codec, p: &Packet| {
        let mut out = BytesMut::new();
        c.encode(p, &mut out, None).unwrap();
        out.to_vec()
    };
    // MQTT 5 defaults omitted.
    assert_eq!(bytes(&v5, &Packet::PubAck(Ack::new(7))), [0x40, 2, 0, 7]);
    assert_eq!(bytes(&v5, &Packet::Disconnect(Disconnect::default())), [0xE0, 0]);
    assert_eq!(
        bytes(
            &v5,
            &Packet::Disconnect(Disconnect {
                reason: 0x8E,
                ..Default::default()
            })
        ),
        [0xE0, 2, 0x8E, 0]
    );
    assert_eq!(
        bytes(&v5, &Packet::ConnAck(ConnAck::default())),
        [0x20, 3, 0, 0, 0]
    );
    // 3.1.1 mappings.
    for (code, rc) in [
        (0, 0),
        (0x84, 1),
        (0x85, 2),
        (0x88, 3),
        (0x89, 3),
        (0x86, 4),
        (0x87, 5),
        (0x97, 3),
    ] {
        let p = Packet::ConnAck(ConnAck {
            code,
            ..ConnAck::default()
        });
        assert_eq!(bytes(&v4, &p), [0x20, 2, 0, rc], "{code:#x}");
    }
    let suback = Packet::SubAck(SubAck {
        pkid: 1,
        codes: vec![1, 0x87, 0xA2],
        reason_string: Some("x".into()),
    });
    assert_eq!(bytes(&v4, &suback), [0x90, 5, 0, 1, 1, 0x80, 0x80]);
    assert!(bytes(
        &v4,
        &Packet::Disconnect(Disconnect {
            reason: 0x8B,
            ..Default::default()
        })
    )
    .is_empty());

    // Appends; CONNECT too (mqttbytes patches the flags at an absolute offset).
    let mut out = BytesMut::from(&b"prefix"[..]);
    let c = Packet::Connect(Box::new(connect_v5_full()));
    v5.encode(&c, &mut out, None).unwrap();
    v5.encode(&Packet::PingReq, &mut out, None).unwrap();
    assert_eq!(&out[..6], b"prefix");
    let mut rest = out.split_off(6);
    assert_eq!(decode_one(V5, &mut rest).unwrap(), Some(c));
    assert_eq!(decode_one(V5, &mut rest).unwrap(), Some(Packet::PingReq));

    // Too large or invalid: nothing written.
    let big = Packet::Publish(Publish {
        topic: "t".into(),
        payload: vec![0; 100].into(),
        ..Default::default()
    });
    for codec in [v4, v5] {
        let mut out = BytesMut::from(&b"keep"[..]);
        let e = codec.encode(&big, &mut out, Some(50)).unwrap_err();
        assert!(matches!(e, EncodeError::TooLarge { max: 50, .. }), "{e:?}");
        let e = codec.encode(
            &Packet::SubAck(SubAck {
                pkid: 1,
                codes: vec![0; 60],
                reason_string: None,
            }),
            &mut out,
            Some(50),
        );
        assert!(matches!(e, Err(EncodeError::TooLarge { max: 50, .. })), "{e:?}");
        for bad in [
            Packet::PubAck(Ack::new(0)),
            Packet::Publish(Publish {
                qos: QoS::AtLeastOnce,
                topic: "t".into(),
                ..Default::default()
            }),
            Packet::Publish(Publish {
                topic: "x".repeat(70_000),
                ..Default::default()
            }),
            Packet::Publish(Publish {
                dup: true,
                topic: "t".into(),
                ..Default::default()
            }),
            Packet::Subscribe(Subscribe {
                pkid: 1,
                ..Default::default()
            }),
            Packet::Connect(Box::new(Connect {
                client_id: "c".repeat(65_536),
                ..Default::default()
            })),
        ] {
            assert!(
                matches!(codec.encode(&bad, &mut out, None), Err(EncodeError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert_eq!(&out[..], b"keep");
    }
    // 3.1.1 acknowledges without a reason code, whatever the reason.
    for reason in [0x10, 0x87, 0x92] {
        assert_eq!(
            bytes(&v4, &Packet::PubAck(Ack::with_reason(1, reason))),
            [0x40, 2, 0, 1]
        );
        assert_eq!(
            bytes(&v4, &Packet::PubComp(Ack::with_reason(1, reason))),
            [0x70, 2, 0, 1]
        );
    }

    let bad_v5 = [
        Packet::PubAck(Ack {
            pkid: 1,
            reason: 0x92,
            ..Ack::default()
        }),
        Packet::ConnAck(ConnAck {
            code: 0x01,
            ..ConnAck::default()
        }),
        Packet::Publish(Publish {
            topic: "t".into(),
            subscription_ids: vec![0],
            ..Default::default()
        }),
        Packet::Publish(Publish {
            topic: "t".into(),
            topic_alias: Some(0),
            ..Default::default()
        }),
        Packet::UnsubAck(UnsubAck {
            pkid: 1,
            codes: vec![],
        }),
    ];
    for bad in bad_v5 {
        assert!(
            matches!(
                v5.encode(&bad, &mut BytesMut::new(), None),
                Err(EncodeError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
}

/// Found by the `connection` fuzz target's output check: a SUBACK (and other
/// server packets) went out larger than the client's MQTT 5 maximum packet
/// size. With a limit, diagnostics are dropped first (MQTT 5 allows exactly
/// that); a packet that still does not fit is refused and nothing is written.
#[test]
fn encode_within_the_clients_maximum_packet_size() {
    let codec = Codec::new(ProtocolVersion::V5, MAX);
    let fits = |p: &Packet, max: usize| {
        let mut out = BytesMut::from(&b"kept"[..]);
        let res = codec.encode(p, &mut out, Some(max));
        (res, out)
    };
    // PUBACK with a long reason string: sent without it.
    let ack = Packet::PubAck(Ack {
        pkid: 7,
        reason: 0x80,
        reason_string: Some("x".repeat(100)),
        user_properties: vec![("k".into(), "v".into())],
    });
    let (res, out) = fits(&ack, 16);
    assert!(res.is_ok());
    assert_eq!(&out[..], b"kept\x40\x03\x00\x07\x80");
    // No limit: everything is sent.
    assert!(encode(ProtocolVersion::V5, &ack).len() > 100);
    // SUBACK: the reason string goes; too many codes still do not fit.
    let suback = |n: usize| {
        Packet::SubAck(SubAck {
            pkid: 1,
            codes: vec![0x8F; n],
            reason_string: Some("invalid filters".into()),
        })
    };
    let (res, out) = fits(&suback(8), 16);
    assert!(res.is_ok());
    assert_eq!(&out[4..], b"\x90\x0b\x00\x01\x00\x8f\x8f\x8f\x8f\x8f\x8f\x8f\x8f");
    let (res, out) = fits(&suback(520), 512);
    assert!(matches!(res, Err(EncodeError::TooLarge { .. })), "{res:?}");
    assert_eq!(&out[..], b"kept");
    // CONNACK and DISCONNECT lose their diagnostics the same way.
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        code: 0,
        props: ConnAckProps {
            reason_string: Some("welcome".repeat(10)),
            user_properties: vec![("k".into(), "v".repeat(50))],
            receive_maximum: Some(10),
            ..ConnAckProps::default()
        },
    });
    let (res, out) = fits(&connack, 12);
    assert!(res.is_ok());
    assert_eq!(&out[4..], b"\x20\x06\x00\x00\x03\x21\x00\x0a");
    let disconnect = Packet::Disconnect(Disconnect {
        reason: 0x8E,
        reason_string: Some("taken over".into()),
        ..Disconnect::default()
    });
    let (res, out) = fits(&disconnect, 4);
    assert!(res.is_ok());
    assert_eq!(&out[4..], b"\xe0\x02\x8e\x00");
    // PUBLISH user properties are the message's: never dropped to fit.
    let publish = Packet::Publish(Publish {
        topic: "t".into(),
        properties: hooks_spec::PublishProperties {
            user_properties: vec![("k".into(), "v".repeat(50))],
            ..hooks_spec::PublishProperties::default()
        },
        ..Publish::default()
    });
    let (res, out) = fits(&publish, 16);
    assert!(matches!(res, Err(EncodeError::TooLarge { .. })), "{res:?}");
    assert_eq!(&out[..], b"kept");
}
