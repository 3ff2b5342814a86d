//! MQTT 5 enhanced authentication: a CONNECT naming a method nobody offers
//! gets CONNACK 0x8C; `auth_file` offers SCRAM-SHA-512 over its `$7$` users
//! and SCRAM-SHA-256 over `$SCRAM-SHA-256$` ones (written by `postbox passwd
//! -H scram-sha256`), checked here byte by byte (the client side of RFC 5802
//! computed in the test with the sha2/hmac/pbkdf2 crates), including
//! re-authentication.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use support::*;

const METHOD: &str = "SCRAM-SHA-512";
const SALT: &[u8] = b"0123456789ab";
const ITERATIONS: u32 = 101;

/// A Mosquitto `$7$` line for `user`/`password` (PBKDF2-HMAC-SHA512, 64 bytes).
fn passwd_line(user: &str, password: &str) -> String {
    let mut hash = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), SALT, ITERATIONS, &mut hash);
    format!(
        "{user}:$7${ITERATIONS}${}${}\n",
        STANDARD.encode(SALT),
        STANDARD.encode(hash)
    )
}

/// `carol`/`sesame` as `postbox passwd -H scram-sha256` writes her.
async fn scram_sha256_line() -> String {
    let dir = temp_dir("scram-passwd");
    let file = dir.join("passwd");
    let out = tokio::process::Command::new(broker_bin())
        .args(["passwd", "-c", "-b", "-H", "scram-sha256", "-I", "101"])
        .arg(&file)
        .args(["carol", "sesame"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = std::fs::read_to_string(&file).unwrap();
    assert!(line.starts_with("carol:$SCRAM-SHA-256$101$"), "{line}");
    line
}

async fn broker() -> Broker {
    let passwd = format!(
        "{}{}{}",
        passwd_line("alice", "secret"),
        passwd_line("bob", "other"),
        scram_sha256_line().await
    );
    Broker::start_with_files(
        "plugins.load = auth_file\nmqtt.allow_anonymous = false\n",
        &[
            ("auth_file.conf", "auth.file.password_file = passwd\n"),
            ("passwd", &passwd),
        ],
    )
    .await
}

fn prop_str(id: u8, v: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    out.extend_from_slice(v);
}

/// Authentication Method and Data as a property section.
fn auth_props(method: &str, data: Option<&[u8]>) -> Vec<u8> {
    let mut p = Vec::new();
    prop_str(0x15, method.as_bytes(), &mut p);
    if let Some(d) = data {
        prop_str(0x16, d, &mut p);
    }
    let mut out = Vec::new();
    encode_varint(p.len(), &mut out);
    out.extend_from_slice(&p);
    out
}

/// An MQTT 5 CONNECT (clean start, keep alive 30) with these properties.
fn connect(client_id: &str, username: Option<&str>, props: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    encode_str("MQTT", &mut body);
    body.push(5);
    body.push(if username.is_some() { 0x82 } else { 0x02 });
    body.extend_from_slice(&30u16.to_be_bytes());
    body.extend_from_slice(props);
    encode_str(client_id, &mut body);
    if let Some(u) = username {
        encode_str(u, &mut body);
    }
    packet(0x10, &body)
}

fn auth(reason: u8, method: &str, data: &[u8]) -> Vec<u8> {
    let mut body = vec![reason];
    body.extend_from_slice(&auth_props(method, Some(data)));
    packet(0xF0, &body)
}

/// The property section after `skip` bytes of variable header: (id, value)
/// for the string and binary properties (others are not expected here).
fn props(p: &[u8], skip: usize) -> Vec<(u8, Vec<u8>)> {
    let hdr = 1 + p[1..].iter().position(|b| b & 0x80 == 0).unwrap() + 1;
    let body = &p[hdr + skip..];
    let (mut len, mut i, mut shift) = (0usize, 0usize, 0);
    loop {
        len |= usize::from(body[i] & 0x7F) << shift;
        i += 1;
        if body[i - 1] & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let mut section = &body[i..i + len];
    let mut out = Vec::new();
    while let Some((&id, rest)) = section.split_first() {
        match id {
            0x15 | 0x16 | 0x1C | 0x1F | 0x12 | 0x1A => {
                let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                out.push((id, rest[2..2 + n].to_vec()));
                section = &rest[2 + n..];
            }
            0x11 | 0x27 => section = &rest[4..],
            0x13 | 0x21 | 0x22 => section = &rest[2..],
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => section = &rest[1..],
            other => panic!("unexpected property 0x{other:02x} in {p:02x?}"),
        }
    }
    out
}

fn prop(props: &[(u8, Vec<u8>)], id: u8) -> Option<Vec<u8>> {
    props.iter().find(|(i, _)| *i == id).map(|(_, v)| v.clone())
}

/// The SCRAM hash: SHA-512 (`true`) or SHA-256.
#[derive(Clone, Copy)]
struct Alg(bool);

const SHA512: Alg = Alg(true);
const SHA256: Alg = Alg(false);

impl Alg {
    fn method(self) -> &'static str {
        if self.0 {
            "SCRAM-SHA-512"
        } else {
            "SCRAM-SHA-256"
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        if self.0 {
            let mut m = Hmac::<Sha512>::new_from_slice(key).unwrap();
            m.update(data);
            m.finalize().into_bytes().to_vec()
        } else {
            let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        if self.0 {
            Sha512::digest(data).to_vec()
        } else {
            Sha256::digest(data).to_vec()
        }
    }

    fn salted(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        if self.0 {
            let mut out = [0u8; 64];
            pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
            out.to_vec()
        } else {
            let mut out = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
            out.to_vec()
        }
    }
}

/// The client side of one SCRAM exchange.
struct Scram {
    alg: Alg,
    password: String,
    bare: String,
    auth_message: String,
    salted: Vec<u8>,
}

impl Scram {
    fn first(user: &str, password: &str, nonce: &str) -> (Scram, String) {
        Scram::first_with(SHA512, user, password, nonce)
    }

    fn first_with(alg: Alg, user: &str, password: &str, nonce: &str) -> (Scram, String) {
        let bare = format!("n={user},r={nonce}");
        let s = Scram {
            alg,
            password: password.into(),
            bare: bare.clone(),
            auth_message: String::new(),
            salted: Vec::new(),
        };
        (s, format!("n,,{bare}"))
    }

    /// client-final for the server-first, checking what the server chose
    /// (for SCRAM-SHA-512, the `$7$` salt and iterations of this test).
    fn last(&mut self, server_first: &str, client_nonce: &str) -> String {
        let mut nonce = "";
        let mut salt = Vec::new();
        let mut iterations = 0;
        for attr in server_first.split(',') {
            match attr.split_at(2) {
                ("r=", v) => nonce = v,
                ("s=", v) => salt = STANDARD.decode(v).unwrap(),
                ("i=", v) => iterations = v.parse().unwrap(),
                other => panic!("unexpected attribute {other:?} in {server_first}"),
            }
        }
        assert!(
            nonce.starts_with(client_nonce) && nonce.len() > client_nonce.len(),
            "{server_first}"
        );
        assert_eq!(iterations, ITERATIONS);
        if self.alg.0 {
            assert_eq!(salt, SALT);
        }
        self.salted = self.alg.salted(self.password.as_bytes(), &salt, iterations);
        let without_proof = format!("c=biws,r={nonce}");
        self.auth_message = format!("{},{server_first},{without_proof}", self.bare);
        let client_key = self.alg.hmac(&self.salted, b"Client Key");
        let stored_key = self.alg.hash(&client_key);
        let signature = self.alg.hmac(&stored_key, self.auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(k, s)| k ^ s).collect();
        format!("{without_proof},p={}", STANDARD.encode(proof))
    }

    /// The server-final the server must send.
    fn expected_final(&self) -> Vec<u8> {
        let server_key = self.alg.hmac(&self.salted, b"Server Key");
        let signature = self.alg.hmac(&server_key, self.auth_message.as_bytes());
        format!("v={}", STANDARD.encode(signature)).into_bytes()
    }
}

/// Reads an AUTH 0x18 and returns its data, checking the method.
async fn read_continue(raw: &mut RawClient) -> String {
    read_continue_for(raw, METHOD).await
}

async fn read_continue_for(raw: &mut RawClient, method: &str) -> String {
    let p = raw.read_packet().await.expect("AUTH");
    assert_eq!(packet_type(&p), ptype::AUTH, "{p:02x?}");
    // A 1-byte remaining length here: the reason code is at 2.
    assert_eq!(p[2], 0x18, "{p:02x?}");
    let props = props(&p, 1);
    assert_eq!(prop(&props, 0x15).as_deref(), Some(method.as_bytes()));
    String::from_utf8(prop(&props, 0x16).expect("authentication data")).unwrap()
}

#[tokio::test]
async fn a_method_nobody_offers_gets_connack_0x8c() {
    for b in [Broker::start("").await, broker().await] {
        let mut raw = RawClient::connect(b.addr).await;
        raw.send(&connect(
            "c1",
            None,
            &auth_props("SCRAM-SHA-1", Some(b"n,,n=alice,r=x")),
        ))
        .await;
        assert_eq!(raw.read_packet().await, Some(vec![0x20, 3, 0x00, 0x8C, 0]));
        raw.expect_closed().await;
        b.wait_for_log("not supported").await;
    }
}

#[tokio::test]
async fn scram_sha512_connect_and_reauthenticate_byte_by_byte() {
    let b = broker().await;
    let mut raw = RawClient::connect(b.addr).await;
    let (mut scram, first) = Scram::first("alice", "secret", "cnonce1");
    raw.send(&connect(
        "scram-1",
        None,
        &auth_props(METHOD, Some(first.as_bytes())),
    ))
    .await;
    let server_first = read_continue(&mut raw).await;
    let last = scram.last(&server_first, "cnonce1");
    raw.send(&auth(0x18, METHOD, last.as_bytes())).await;
    let connack = raw.read_packet().await.expect("CONNACK");
    assert_eq!(packet_type(&connack), ptype::CONNACK, "{connack:02x?}");
    // A 1-byte remaining length: flags at 2, reason code at 3.
    assert_eq!(connack[3], 0x00, "refused: {connack:02x?}");
    let p = props(&connack, 2);
    assert_eq!(prop(&p, 0x15).as_deref(), Some(METHOD.as_bytes()));
    assert_eq!(prop(&p, 0x16), Some(scram.expected_final()));

    // The connection works (and the user name the SCRAM user gave is in force).
    raw.send(&pingreq_bytes()).await;
    assert_eq!(raw.read_packet().await, Some(vec![0xD0, 0]));
    b.wait_for_log("username=\"alice\"").await;

    // Re-authentication: AUTH 0x19, the same exchange, AUTH 0x00.
    let (mut again, first) = Scram::first("alice", "secret", "cnonce2");
    raw.send(&auth(0x19, METHOD, first.as_bytes())).await;
    let server_first = read_continue(&mut raw).await;
    let last = again.last(&server_first, "cnonce2");
    raw.send(&auth(0x18, METHOD, last.as_bytes())).await;
    let done = raw.read_packet().await.expect("AUTH 0x00");
    assert_eq!(packet_type(&done), ptype::AUTH, "{done:02x?}");
    assert_eq!(done[2], 0x00);
    assert_eq!(prop(&props(&done, 1), 0x16), Some(again.expected_final()));
    raw.send(&pingreq_bytes()).await;
    assert_eq!(raw.read_packet().await, Some(vec![0xD0, 0]));

    // A failed re-authentication closes the connection with 0x87.
    let (mut wrong, first) = Scram::first("alice", "not-it", "cnonce3");
    raw.send(&auth(0x19, METHOD, first.as_bytes())).await;
    let server_first = read_continue(&mut raw).await;
    let last = wrong.last(&server_first, "cnonce3");
    raw.send(&auth(0x18, METHOD, last.as_bytes())).await;
    assert_eq!(raw.read_packet().await, Some(vec![0xE0, 2, 0x87, 0]));
    raw.expect_closed().await;
}

#[tokio::test]
async fn scram_refuses_a_wrong_password_and_a_user_mismatch() {
    let b = broker().await;
    // Wrong password: the proof does not match; CONNACK 0x86.
    let mut raw = RawClient::connect(b.addr).await;
    let (mut scram, first) = Scram::first("bob", "guess", "n1");
    raw.send(&connect("s-2", None, &auth_props(METHOD, Some(first.as_bytes()))))
        .await;
    let server_first = read_continue(&mut raw).await;
    let last = scram.last(&server_first, "n1");
    raw.send(&auth(0x18, METHOD, last.as_bytes())).await;
    assert_eq!(raw.read_packet().await, Some(vec![0x20, 3, 0x00, 0x86, 0]));
    raw.expect_closed().await;

    // A CONNECT user name other than the SCRAM user: refused at once.
    let mut raw = RawClient::connect(b.addr).await;
    let (_, first) = Scram::first("alice", "secret", "n2");
    raw.send(&connect(
        "s-3",
        Some("bob"),
        &auth_props(METHOD, Some(first.as_bytes())),
    ))
    .await;
    assert_eq!(raw.read_packet().await, Some(vec![0x20, 3, 0x00, 0x86, 0]));
    raw.expect_closed().await;
}

#[tokio::test]
async fn auth_without_a_method_at_connect_is_a_protocol_error() {
    let b = Broker::start("").await;
    let mut raw = RawClient::connect(b.addr).await;
    raw.send(&connect_v5_bytes("plain", true, 30)).await;
    let connack = raw.read_packet().await.expect("CONNACK");
    assert_eq!(connack[3], 0x00);
    raw.send(&auth(0x19, METHOD, b"n,,n=alice,r=x")).await;
    assert_eq!(raw.read_packet().await, Some(vec![0xE0, 2, 0x82, 0]));
    raw.expect_closed().await;
}

#[tokio::test]
async fn scram_sha256_for_users_postbox_passwd_wrote_so() {
    let b = broker().await;
    let method = SHA256.method();
    let mut raw = RawClient::connect(b.addr).await;
    let (mut scram, first) = Scram::first_with(SHA256, "carol", "sesame", "c256");
    raw.send(&connect(
        "s256",
        Some("carol"),
        &auth_props(method, Some(first.as_bytes())),
    ))
    .await;
    let server_first = read_continue_for(&mut raw, method).await;
    let last = scram.last(&server_first, "c256");
    raw.send(&auth(0x18, method, last.as_bytes())).await;
    let connack = raw.read_packet().await.expect("CONNACK");
    assert_eq!(connack[3], 0x00, "refused: {connack:02x?}");
    let p = props(&connack, 2);
    assert_eq!(prop(&p, 0x15).as_deref(), Some(method.as_bytes()));
    assert_eq!(prop(&p, 0x16), Some(scram.expected_final()));

    // The same entry serves a plain password login ...
    let (c, _) = V5Client::connect(support::auth::v5_login(&b, "plain-carol", "carol", "sesame")).await;
    drop(c);
    let code = support::auth::v5_refusal(support::auth::v5_login(&b, "plain-carol2", "carol", "nope")).await;
    assert_eq!(
        code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::BadUserNamePassword
    );
    // ... but not SCRAM-SHA-512, nor a `$7$` user SCRAM-SHA-256.
    for (alg, user) in [(SHA512, "carol"), (SHA256, "alice")] {
        let mut raw = RawClient::connect(b.addr).await;
        let (_, first) = Scram::first_with(alg, user, "x", "n9");
        raw.send(&connect(
            "cross",
            None,
            &auth_props(alg.method(), Some(first.as_bytes())),
        ))
        .await;
        assert_eq!(raw.read_packet().await, Some(vec![0x20, 3, 0x00, 0x86, 0]));
        raw.expect_closed().await;
    }
}
