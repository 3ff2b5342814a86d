//! MQTT 5 enhanced authentication (SCRAM) over `auth_pgsql`'s users, with
//! the real `postbox` binary and PostgreSQL, the client side computed byte
//! by byte (tests/support/scram.rs): a `pbkdf2,sha256,<i>,32` table serves
//! SCRAM-SHA-256 from the stored hash (the salt column and the iterations
//! go to the client), `plain` serves SCRAM-SHA-512 too, a wrong password
//! or unknown user is refused with 0x86, and an `md5` table offers no
//! method (0x8C).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5Code;
use sha2::Sha256;
use support::auth::*;
use support::pgsql::*;
use support::scram::*;
use support::*;

const SCHEMA: &str = include_str!("../sql/auth_pgsql.sql");
const SALT: &str = "NaCl-salt";
const ITERATIONS: u32 = 1000;

/// `password` as `pbkdf2,sha256,1000,32` stores it: hex of
/// PBKDF2-HMAC-SHA256 under the salt column's bytes.
fn pbkdf2_sha256_hex(password: &str) -> String {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), SALT.as_bytes(), ITERATIONS, &mut out);
    out.iter().map(|b| format!("{b:02x}")).collect()
}

/// A database with the shipped tables and `users` (username, hash, salt,
/// superuser).
async fn users_db(users: &[(&str, &str, &str, bool)]) -> TestDb {
    let db = TestDb::create().await;
    db.batch_execute(SCHEMA).await;
    for (user, hash, salt, superuser) in users {
        db.batch_execute(&format!(
            "INSERT INTO mqtt_user (username, password_hash, salt, is_superuser) \
             VALUES ('{user}', '{hash}', '{salt}', {superuser});"
        ))
        .await;
    }
    db
}

async fn broker(db: &TestDb, extra: &str) -> Broker {
    let conf = format!(
        "auth.pgsql.server = {}\nauth.pgsql.pool = 2\nauth.pgsql.username = postgres\nauth.pgsql.database = {}\n{extra}\n",
        pg_server(),
        db.name
    );
    Broker::start_with_files(
        "plugins.load = auth_pgsql\nmqtt.allow_anonymous = false\n",
        &[("auth_pgsql.conf", &conf)],
    )
    .await
}

/// Runs a SCRAM exchange for `user`/`password` on a new connection (CONNECT
/// without a user name); returns the connection, the client state and the
/// CONNACK.
async fn scram_connect(b: &Broker, alg: Alg, user: &str, password: &str) -> (RawClient, Scram, Vec<u8>) {
    let method = alg.method();
    let mut raw = RawClient::connect(b.addr).await;
    let (mut scram, first) = Scram::first_with(alg, user, password, "pgnonce");
    raw.send(&connect(
        &format!("scram-{user}"),
        None,
        &auth_props(method, Some(first.as_bytes())),
    ))
    .await;
    let server_first = read_continue_for(&mut raw, method).await;
    let last = scram.last(&server_first, "pgnonce");
    raw.send(&auth(0x18, method, last.as_bytes())).await;
    let connack = raw.read_packet().await.expect("CONNACK");
    assert_eq!(packet_type(&connack), ptype::CONNACK, "{connack:02x?}");
    (raw, scram, connack)
}

/// The CONNACK for a CONNECT naming `method` with a client-first for `user`.
async fn first_refusal(b: &Broker, method: &str, user: &str) -> Vec<u8> {
    let mut raw = RawClient::connect(b.addr).await;
    let first = format!("n,,n={user},r=xyz");
    raw.send(&connect(
        "refused",
        None,
        &auth_props(method, Some(first.as_bytes())),
    ))
    .await;
    let connack = raw.read_packet().await.expect("CONNACK");
    raw.expect_closed().await;
    connack
}

#[tokio::test]
async fn pbkdf2_sha256_users_log_in_with_scram_sha256() {
    let hash = pbkdf2_sha256_hex("secret");
    let db = users_db(&[("alice", &hash, SALT, true), ("bob", &hash, SALT, false)]).await;
    let b = broker(
        &db,
        "auth.pgsql.password_hash = pbkdf2,sha256,1000,32\n\
         auth.pgsql.super_query = select is_superuser from mqtt_user where username = ${username}\n\
         auth.pgsql.acl_nomatch = deny",
    )
    .await;
    b.wait_for_log("methods=[\"SCRAM-SHA-256\"]").await;
    let (mut raw, scram, connack) = scram_connect(&b, SHA256, "alice", "secret").await;
    assert_eq!(connack[3], 0x00, "refused: {connack:02x?}");
    // The server sent the salt column's bytes and the configured iterations,
    // and proved it holds the keys (server-final in CONNACK).
    assert_eq!(
        (scram.salt.as_slice(), scram.iterations),
        (SALT.as_bytes(), ITERATIONS)
    );
    let p = props(&connack, 2);
    assert_eq!(prop(&p, 0x15).as_deref(), Some(&b"SCRAM-SHA-256"[..]));
    assert_eq!(prop(&p, 0x16), Some(scram.expected_final()));
    // alice is a superuser (super_query ran after the proof): the ACL, which
    // denies everything, does not apply to her.
    raw.send(&subscribe_v5_bytes(1, "any/topic", 0)).await;
    let suback = raw.read_packet().await.expect("SUBACK");
    assert_eq!(
        (packet_type(&suback), *suback.last().unwrap()),
        (ptype::SUBACK, 0x00),
        "{suback:02x?}"
    );
    // bob is not.
    let (mut raw, _, connack) = scram_connect(&b, SHA256, "bob", "secret").await;
    assert_eq!(connack[3], 0x00, "refused: {connack:02x?}");
    raw.send(&subscribe_v5_bytes(1, "any/topic", 0)).await;
    let suback = raw.read_packet().await.expect("SUBACK");
    assert_eq!(
        (packet_type(&suback), *suback.last().unwrap()),
        (ptype::SUBACK, 0x87),
        "{suback:02x?}"
    );
    // The same row still serves a password login.
    V5Client::connect(v5_login(&b, "plain-alice", "alice", "secret")).await;
    // SCRAM-SHA-512 cannot be computed from a SHA-256 hash: not offered.
    assert_eq!(
        first_refusal(&b, "SCRAM-SHA-512", "alice").await,
        [0x20, 3, 0x00, 0x8C, 0]
    );
}

#[tokio::test]
async fn a_wrong_scram_password_or_unknown_user_is_refused() {
    let db = users_db(&[("alice", &pbkdf2_sha256_hex("secret"), SALT, false)]).await;
    let b = broker(
        &db,
        "auth.pgsql.password_hash = pbkdf2,sha256,1000,32\nauth.pgsql.acl_query =",
    )
    .await;
    let (mut raw, _, connack) = scram_connect(&b, SHA256, "alice", "Secret").await;
    assert_eq!(connack, [0x20, 3, 0x00, 0x86, 0]);
    raw.expect_closed().await;
    b.wait_for_log("wrong SCRAM proof for user \"alice\"").await;
    // A user auth_query does not find is refused at client-first.
    assert_eq!(
        first_refusal(&b, "SCRAM-SHA-256", "mallory").await,
        [0x20, 3, 0x00, 0x86, 0]
    );
    b.wait_for_log("auth_query found no row").await;
}

#[tokio::test]
async fn md5_tables_offer_no_scram_method() {
    // md5("secret"), as PostgreSQL computes it.
    let db = TestDb::create().await;
    db.batch_execute(SCHEMA).await;
    db.batch_execute("INSERT INTO mqtt_user (username, password_hash) VALUES ('alice', md5('secret'));")
        .await;
    let b = broker(&db, "auth.pgsql.password_hash = md5\nauth.pgsql.acl_query =").await;
    b.wait_for_log("methods=[]").await;
    for method in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
        assert_eq!(first_refusal(&b, method, "alice").await, [0x20, 3, 0x00, 0x8C, 0]);
    }
    // The password login is unchanged.
    V5Client::connect(v5_login(&b, "md5-alice", "alice", "secret")).await;
    assert_eq!(
        v5_refusal(v5_login(&b, "md5-x", "alice", "guess")).await,
        V5Code::BadUserNamePassword
    );
}

#[tokio::test]
async fn plain_passwords_serve_both_scram_methods() {
    let db = users_db(&[("carol", "sesame", "", false)]).await;
    let b = broker(&db, "auth.pgsql.password_hash = plain\nauth.pgsql.acl_query =").await;
    for alg in [SHA512, SHA256] {
        let (_raw, scram, connack) = scram_connect(&b, alg, "carol", "sesame").await;
        assert_eq!(connack[3], 0x00, "{}: refused: {connack:02x?}", alg.method());
        assert_eq!(scram.iterations, 4096);
        assert_eq!(prop(&props(&connack, 2), 0x16), Some(scram.expected_final()));
        let (_raw, _, connack) = scram_connect(&b, alg, "carol", "sesam").await;
        assert_eq!(connack, [0x20, 3, 0x00, 0x86, 0]);
    }
}

#[tokio::test]
async fn a_database_that_does_not_answer_refuses_within_connect_timeout() {
    let db = users_db(&[("alice", &pbkdf2_sha256_hex("secret"), SALT, false)]).await;
    let conf = format!(
        "auth.pgsql.server = {}\nauth.pgsql.pool = 2\nauth.pgsql.username = postgres\nauth.pgsql.database = {}\n\
         auth.pgsql.password_hash = pbkdf2,sha256,1000,32\nauth.pgsql.acl_query =\n\
         auth.pgsql.auth_query = select password_hash, salt from mqtt_user \
         where username = ${{username}} and pg_sleep(30)::text = ''\n",
        pg_server(),
        db.name
    );
    let b = Broker::start_with_files(
        "plugins.load = auth_pgsql\nmqtt.allow_anonymous = false\nmqtt.connect_timeout = 1s\n",
        &[("auth_pgsql.conf", &conf)],
    )
    .await;
    let started = std::time::Instant::now();
    assert_eq!(
        first_refusal(&b, "SCRAM-SHA-256", "alice").await,
        [0x20, 3, 0x00, 0x86, 0]
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    b.wait_for_log("did not answer within 1s").await;
}
