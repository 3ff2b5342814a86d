//! The `auth_pgsql` plugin with the real `postbox` binary and PostgreSQL:
//! passwords in every supported hash scheme, EMQX's `mqtt_acl` rows deciding
//! SUBSCRIBE and PUBLISH, superusers, startup refusal of a query that does
//! not prepare, and a database outage refusing logins until it ends.
//!
//! Each test has its own database, created from the shipped
//! `sql/auth_pgsql.sql`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as V5Code, SubscribeReasonCode as V5SubCode};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::{ConnectReturnCode as V4Code, QoS, SubscribeReasonCode};
use support::auth::*;
use support::pgsql::*;
use support::*;

const SCHEMA: &str = include_str!("../sql/auth_pgsql.sql");

/// A database with the shipped tables, plus `sql` (users, ACL rows).
async fn auth_db(sql: &str) -> TestDb {
    let db = TestDb::create().await;
    db.batch_execute(SCHEMA).await;
    if !sql.is_empty() {
        db.batch_execute(sql).await;
    }
    db
}

/// `auth_pgsql.conf` for `db`, with `extra` keys.
fn auth_conf(db: &TestDb, extra: &str) -> String {
    format!(
        "auth.pgsql.server = {}\nauth.pgsql.pool = 2\nauth.pgsql.username = postgres\nauth.pgsql.database = {}\n{extra}\n",
        pg_server(),
        db.name
    )
}

/// A broker with `auth_pgsql`; anonymous access is off unless `postbox_extra` sets it.
async fn broker(db: &TestDb, extra: &str, postbox_extra: &str) -> Broker {
    let anonymous = if postbox_extra.contains("mqtt.allow_anonymous") {
        ""
    } else {
        "mqtt.allow_anonymous = false\n"
    };
    Broker::start_with_files(
        &format!("plugins.load = auth_pgsql\n{anonymous}{postbox_extra}"),
        &[("auth_pgsql.conf", &auth_conf(db, extra))],
    )
    .await
}

/// `alice` / `secret` with a salted SHA-256 hash computed by PostgreSQL itself.
const ALICE: &str = "INSERT INTO mqtt_user (username, password_hash, salt) VALUES \
    ('alice', encode(sha256(convert_to('s4lt' || 'secret', 'UTF8')), 'hex'), 's4lt');";

#[tokio::test]
async fn salted_sha256_passwords_decide_logins() {
    let db = auth_db(ALICE).await;
    let b = broker(
        &db,
        "auth.pgsql.password_hash = salt,sha256\nauth.pgsql.acl_query =",
        "",
    )
    .await;
    // The right password, both protocol versions.
    V5Client::connect(v5_login(&b, "a5", "alice", "secret")).await;
    V4Client::connect(v4_login(&b, "a4", "alice", "secret")).await;
    // A wrong one: bad user name or password (0x86 / 4).
    assert_eq!(
        v5_refusal(v5_login(&b, "x5", "alice", "Secret")).await,
        V5Code::BadUserNamePassword
    );
    assert_eq!(
        v4_refusal(v4_login(&b, "x4", "alice", "secret ")).await,
        V4Code::BadUserNamePassword
    );
    // A known user without a password: 3.1.1 code 4.
    assert_eq!(connack_without_password(&b, "alice").await, 4);
    // Unknown users are left to mqtt.allow_anonymous, which is off.
    assert_eq!(
        v5_refusal(v5_login(&b, "u5", "mallory", "secret")).await,
        V5Code::NotAuthorized
    );
    assert_eq!(
        v4_refusal(v4_login(&b, "u4", "mallory", "secret")).await,
        V4Code::NotAuthorized
    );
    assert_eq!(
        v4_refusal(v4_options(b.addr, "anon", true)).await,
        V4Code::NotAuthorized
    );
    // The user name is a bind parameter: SQL in it finds nobody.
    assert_eq!(
        v4_refusal(v4_login(&b, "inj", "x' or '1'='1", "secret")).await,
        V4Code::NotAuthorized
    );
}

#[tokio::test]
async fn unknown_users_fall_back_to_allow_anonymous() {
    let db = auth_db(ALICE).await;
    let b = broker(
        &db,
        "auth.pgsql.password_hash = salt,sha256\nauth.pgsql.acl_query =",
        "mqtt.allow_anonymous = true\n",
    )
    .await;
    V4Client::connect(v4_login(&b, "g", "guest", "anything")).await;
    V4Client::connect(v4_login(&b, "a", "alice", "secret")).await;
    assert_eq!(
        v4_refusal(v4_login(&b, "x", "alice", "guess")).await,
        V4Code::BadUserNamePassword
    );
}

#[tokio::test]
async fn emqx4_query_style_with_suffix_salt() {
    // EMQX 4's table has `password`, and its queries quote '%u'.
    let db = auth_db(
        "ALTER TABLE mqtt_user RENAME COLUMN password_hash TO password; \
         INSERT INTO mqtt_user (username, password, salt) VALUES \
         ('dev', encode(sha256(convert_to('pw1' || 'NaCl', 'UTF8')), 'hex'), 'NaCl');",
    )
    .await;
    let b = broker(
        &db,
        "auth.pgsql.auth_query = select password, salt from mqtt_user where username = '%u' limit 1\n\
         auth.pgsql.password_hash = sha256,salt\nauth.pgsql.acl_query =",
        "",
    )
    .await;
    V5Client::connect(v5_login(&b, "d", "dev", "pw1")).await;
    assert_eq!(
        v5_refusal(v5_login(&b, "d2", "dev", "NaClpw1")).await,
        V5Code::BadUserNamePassword
    );
}

#[tokio::test]
async fn bcrypt_users() {
    // crypt_blowfish's test vector: password `U*U`.
    let db = auth_db(
        "INSERT INTO mqtt_user (username, password_hash) VALUES \
         ('bc', '$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW');",
    )
    .await;
    let b = broker(
        &db,
        "auth.pgsql.password_hash = bcrypt\nauth.pgsql.acl_query =",
        "",
    )
    .await;
    V5Client::connect(v5_login(&b, "b5", "bc", "U*U")).await;
    V4Client::connect(v4_login(&b, "b4", "bc", "U*U")).await;
    assert_eq!(
        v5_refusal(v5_login(&b, "x5", "bc", "U*U*")).await,
        V5Code::BadUserNamePassword
    );
    assert_eq!(
        v4_refusal(v4_login(&b, "x4", "bc", "")).await,
        V4Code::BadUserNamePassword
    );
}

#[tokio::test]
async fn pbkdf2_users() {
    // PBKDF2-HMAC-SHA256("password", "salt", 1000 iterations, 20 bytes).
    let db = auth_db(
        "INSERT INTO mqtt_user (username, password_hash, salt) VALUES \
         ('pk', '632c2812e46d4604102ba7618e9d6d7d2f8128f6', 'salt');",
    )
    .await;
    let b = broker(
        &db,
        "auth.pgsql.password_hash = pbkdf2,sha256,1000,20\nauth.pgsql.acl_query =",
        "",
    )
    .await;
    V5Client::connect(v5_login(&b, "p5", "pk", "password")).await;
    assert_eq!(
        v5_refusal(v5_login(&b, "x5", "pk", "passwore")).await,
        V5Code::BadUserNamePassword
    );
    assert_eq!(
        v4_refusal(v4_login(&b, "x4", "pk", "salt")).await,
        V4Code::BadUserNamePassword
    );
}

/// Users alice, bob (password `secret`, salted SHA-256) and the ACL rows in
/// `acl`; the broker orders rows by id and denies what no row matches.
async fn acl_broker(acl: &str, extra: &str) -> (TestDb, Broker) {
    let users = "INSERT INTO mqtt_user (username, password_hash, salt, is_superuser) \
        SELECT u, encode(sha256(convert_to('s4lt' || 'secret', 'UTF8')), 'hex'), 's4lt', u = 'admin' \
        FROM unnest(ARRAY['alice', 'bob', 'admin']) AS u;";
    let db = auth_db(&format!("{users}\n{acl}")).await;
    let b = broker(
        &db,
        &format!(
            "auth.pgsql.password_hash = salt,sha256\n\
             auth.pgsql.acl_query = select allow, ipaddr, username, clientid, access, topic from mqtt_acl \
             where ipaddr = %a or username = %u or username = '$all' or clientid = %c order by id\n\
             auth.pgsql.acl_nomatch = deny\n{extra}"
        ),
        "",
    )
    .await;
    (db, b)
}

const ACL_ROWS: &str = "INSERT INTO mqtt_acl (allow, ipaddr, username, clientid, access, topic) VALUES \
    (0, NULL, '$all', NULL, 1, 'secret/#'), \
    (0, NULL, 'bob', NULL, 2, 'sensors/alice/#'), \
    (1, NULL, '$all', NULL, 3, 'sensors/#'), \
    (0, NULL, '$all', NULL, 1, 'eq #'), \
    (1, '127.0.0.1', NULL, NULL, 1, '#');";

#[tokio::test]
async fn acl_rows_decide_subscriptions() {
    let (_db, b) = acl_broker(ACL_ROWS, "").await;
    let (mut a4, _) = V4Client::connect(v4_login(&b, "a4", "alice", "secret")).await;
    let (mut a5, _) = V5Client::connect(v5_login(&b, "a5", "alice", "secret")).await;
    // The first matching row decides: secret/# is denied before `#` from 127.0.0.1 allows.
    assert_eq!(
        a4.subscribe("secret/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Failure]
    );
    assert_eq!(
        a5.subscribe("secret/x", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::NotAuthorized]
    );
    assert_eq!(
        a5.subscribe("$share/g/secret/x", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::NotAuthorized]
    );
    // `eq #` denies exactly the filter `#`.
    assert_eq!(
        a5.subscribe("#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::NotAuthorized]
    );
    // sensors/# covers sensors/+/temp.
    assert_eq!(
        a4.subscribe("sensors/+/temp", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    // The peer-address row (127.0.0.1) allows the rest.
    assert_eq!(
        a5.subscribe("other/+", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::Success(V5QoS::AtLeastOnce)]
    );
}

#[tokio::test]
async fn denied_publishes_are_not_delivered() {
    let (_db, b) = acl_broker(ACL_ROWS, "").await;
    let (mut alice, _) = V4Client::connect(v4_login(&b, "alice-sub", "alice", "secret")).await;
    alice.subscribe("sensors/+/temp", QoS::AtLeastOnce).await;

    // MQTT 5: PUBACK 0x87 for the denied one, then the allowed one goes through.
    let (mut bob5, _) = V5Client::connect(v5_login(&b, "bob5", "bob", "secret")).await;
    expect_v5_publish_denied(&mut bob5, "sensors/alice/temp", "forged").await;
    bob5.publish("sensors/bob/temp", V5QoS::AtLeastOnce, false, "v5 allowed")
        .await;
    assert_eq!(text_of(&alice.next_publish().await.payload), "v5 allowed");

    // 3.1.1 cannot be told: the denied message is acknowledged and dropped.
    let (mut bob4, _) = V4Client::connect(v4_login(&b, "bob4", "bob", "secret")).await;
    bob4.publish("sensors/alice/temp", QoS::AtLeastOnce, false, "forged")
        .await;
    bob4.publish("sensors/alice/temp", QoS::AtMostOnce, false, "forged qos0")
        .await;
    // No row matches `elsewhere` for publishing: acl_nomatch = deny.
    bob4.publish("elsewhere", QoS::AtLeastOnce, false, "unmatched")
        .await;
    bob4.publish("sensors/bob/temp", QoS::AtLeastOnce, false, "v4 allowed")
        .await;
    assert_eq!(text_of(&alice.next_publish().await.payload), "v4 allowed");
}

fn text_of(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

#[tokio::test]
async fn client_id_and_user_name_in_acl_topics() {
    let rows = "INSERT INTO mqtt_acl (allow, ipaddr, username, clientid, access, topic) VALUES \
        (1, NULL, '$all', NULL, 3, 'users/%u/#'), \
        (1, NULL, '$all', NULL, 3, 'devices/%c/#'), \
        (1, NULL, '$all', NULL, 2, 'up/${clientid}-data');";
    let (_db, b) = acl_broker(rows, "").await;
    let (mut dev, _) = V5Client::connect(v5_login(&b, "dev1", "alice", "secret")).await;
    assert_eq!(
        dev.subscribe("users/alice/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::Success(V5QoS::AtLeastOnce)]
    );
    assert_eq!(
        dev.subscribe("users/bob/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::NotAuthorized]
    );
    assert_eq!(
        dev.subscribe("users/+/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::NotAuthorized]
    );
    assert_eq!(
        dev.subscribe("devices/dev1/+", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::Success(V5QoS::AtLeastOnce)]
    );
    assert_eq!(
        dev.subscribe("devices/dev2/+", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::NotAuthorized]
    );
    expect_v5_publish_denied(&mut dev, "devices/dev2/cmd", "no").await;
    dev.publish("devices/dev1/cmd", V5QoS::AtLeastOnce, false, "mine")
        .await;
    assert_eq!(text_of(&dev.next_publish().await.payload), "mine");
    dev.publish("up/dev1-data", V5QoS::AtLeastOnce, false, "up").await;
    // A client id with a wildcard never widens a rule.
    let (mut wild, _) = V4Client::connect(v4_login(&b, "+", "bob", "secret")).await;
    assert_eq!(
        wild.subscribe("devices/+/#", QoS::AtMostOnce).await,
        vec![SubscribeReasonCode::Failure]
    );
}

#[tokio::test]
async fn superusers_skip_the_acl() {
    let (_db, b) = acl_broker(
        ACL_ROWS,
        "auth.pgsql.super_query = select is_superuser from mqtt_user where username = ${username}",
    )
    .await;
    let (mut admin, _) = V5Client::connect(v5_login(&b, "adm", "admin", "secret")).await;
    assert_eq!(
        admin.subscribe("secret/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::Success(V5QoS::AtLeastOnce)]
    );
    admin
        .publish("secret/plans", V5QoS::AtLeastOnce, false, "for admins")
        .await;
    assert_eq!(text_of(&admin.next_publish().await.payload), "for admins");
    // Not a superuser: the same subscription is refused.
    let (mut alice, _) = V5Client::connect(v5_login(&b, "al", "alice", "secret")).await;
    assert_eq!(
        alice.subscribe("secret/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::NotAuthorized]
    );
}

/// Starts the broker expecting it to refuse `conf`; returns its exit code and output.
async fn refused(conf: &str) -> (Option<i32>, String) {
    let (status, out) =
        Broker::start_expect_failure("plugins.load = auth_pgsql\n", &[("auth_pgsql.conf", conf)]).await;
    (status.code(), out)
}

#[tokio::test]
async fn a_query_that_does_not_prepare_stops_startup() {
    let db = auth_db("").await;
    // auth_conf writes 4 lines first: the query is on line 5.
    let (code, out) = refused(&auth_conf(
        &db,
        "auth.pgsql.auth_query = select password_hash, salt from mqtt_usr where username = %u",
    ))
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("auth_pgsql.conf:5: `auth.pgsql.auth_query`"),
        "{out}"
    );
    assert!(out.contains("mqtt_usr"), "{out}");

    // Too few columns for an ACL row.
    let (code, out) = refused(&auth_conf(
        &db,
        "auth.pgsql.password_hash = sha256\nauth.pgsql.acl_query = select allow, topic from mqtt_acl",
    ))
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("auth_pgsql.conf:6: `auth.pgsql.acl_query`"), "{out}");

    // A salted scheme needs the salt column.
    let (code, out) = refused(&auth_conf(
        &db,
        "auth.pgsql.password_hash = salt,md5\nauth.pgsql.auth_query = select password_hash from mqtt_user where username = ${username}",
    ))
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("auth_pgsql.conf:6: `auth.pgsql.auth_query`"),
        "{out}"
    );

    // A placeholder inside a literal is refused while reading the file.
    let (code, out) = refused(&auth_conf(
        &db,
        "auth.pgsql.auth_query = select password_hash from mqtt_user where username = 'u-${username}'",
    ))
    .await;
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("auth_pgsql.conf:5: `auth.pgsql.auth_query`"),
        "{out}"
    );

    // Without the tables the default queries do not prepare: the message names the key.
    let empty = TestDb::create().await;
    let (code, out) = refused(&auth_conf(&empty, "")).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("`auth.pgsql.auth_query` is not set and its default"),
        "{out}"
    );
}

#[tokio::test]
async fn database_outage_refuses_logins_until_it_ends() {
    let db = auth_db(ALICE).await;
    let b = broker(
        &db,
        "auth.pgsql.password_hash = salt,sha256\nauth.pgsql.acl_query =",
        "",
    )
    .await;
    V4Client::connect(v4_login(&b, "before", "alice", "secret")).await;

    let reopen = outage_start(&db).await;
    // Fail closed: a password cannot be checked, so nobody gets in.
    assert_eq!(
        v5_refusal(v5_login(&b, "d5", "alice", "secret")).await,
        V5Code::BadUserNamePassword
    );
    assert_eq!(
        v4_refusal(v4_login(&b, "d4", "alice", "secret")).await,
        V4Code::BadUserNamePassword
    );
    assert!(
        b.logs().contains("auth_pgsql"),
        "the failure is logged:\n{}",
        b.logs()
    );

    drop(reopen);
    // Back: the pool reconnects by itself. A connection the pool still
    // held from before the outage may fail once; bounded retries.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match V4Client::try_connect(v4_login(&b, "after", "alice", "secret")).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("not yet: {e:?}");
            }
            Err(e) => panic!("logins did not come back after the outage: {e:?}"),
        }
    }
    // And a wrong password is still refused.
    assert_eq!(
        v4_refusal(v4_login(&b, "w", "alice", "nope")).await,
        V4Code::BadUserNamePassword
    );
}
