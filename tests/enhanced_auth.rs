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
use sha2::Sha512;
use support::scram::*;
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

/// Reads an AUTH 0x18 of SCRAM-SHA-512 and returns its data.
async fn read_continue(raw: &mut RawClient) -> String {
    read_continue_for(raw, METHOD).await
}

/// client-final, checking the server sent this test's iterations (and for
/// SCRAM-SHA-512, the `$7$` salt).
fn checked_last(scram: &mut Scram, server_first: &str, client_nonce: &str) -> String {
    let last = scram.last(server_first, client_nonce);
    assert_eq!(scram.iterations, ITERATIONS);
    if scram.alg().0 {
        assert_eq!(scram.salt, SALT);
    }
    last
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
    let last = checked_last(&mut scram, &server_first, "cnonce1");
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
    let last = checked_last(&mut again, &server_first, "cnonce2");
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
    let last = checked_last(&mut wrong, &server_first, "cnonce3");
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
    let last = checked_last(&mut scram, &server_first, "n1");
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
    let last = checked_last(&mut scram, &server_first, "c256");
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
