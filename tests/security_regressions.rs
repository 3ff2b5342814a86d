//! Regressions found in the security review of access control: each test
//! is a way a client got access the configuration refuses (or was refused
//! access it grants), run against the real `postbox` binary.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as V5SubCode;
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::{QoS, SubscribeReasonCode};
use support::auth::v5_login;
use support::pgsql::*;
use support::*;

const AUTH_SCHEMA: &str = include_str!("../sql/auth_pgsql.sql");

/// A Mosquitto password file with `users` (`(name, password)`), made by
/// `postbox passwd` (one PBKDF2 iteration: these tests are not about cost).
async fn password_file(users: &[(&str, &str)]) -> String {
    let dir = temp_dir("sec-passwd");
    let file = dir.join("passwd");
    for (i, (user, password)) in users.iter().enumerate() {
        let mut cmd = tokio::process::Command::new(broker_bin());
        cmd.arg("passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        cmd.args(["-I", "1", "-b"]).arg(&file).args([user, password]);
        let out = tokio::time::timeout(TIMEOUT, cmd.output())
            .await
            .expect("postbox passwd timed out")
            .expect("postbox passwd could not be run");
        assert!(
            out.status.success(),
            "postbox passwd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    text
}

/// Like `support::auth::v4_login`, with the clean-session flag chosen.
fn v4_login(b: &Broker, id: &str, clean: bool, user: &str, pw: &str) -> rumqttc::MqttOptions {
    let mut o = v4_options(b.addr, id, clean);
    o.set_credentials(user, pw);
    o
}

fn granted() -> Vec<SubscribeReasonCode> {
    vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
}

/// alice reads and writes `alice/#`; bob reads `public/#`; alice writes `public/#`.
const TWO_USERS_ACL: &str = "\
user alice
topic readwrite alice/#
topic write public/#
user bob
topic read public/#
";

/// The ACL decides subscriptions once, at SUBSCRIBE. A persistent session
/// resumed by another user kept the subscriptions the first user was
/// granted: bob, reusing alice's client id, received alice's messages.
#[tokio::test]
async fn a_session_left_by_one_user_is_not_resumed_by_another() {
    let passwd = password_file(&[("alice", "a-pass"), ("bob", "b-pass")]).await;
    let b = Broker::start_with_files(
        "plugins.load = auth_file\nmqtt.allow_anonymous = false\n",
        &[
            (
                "auth_file.conf",
                "auth.file.password_file = passwd\nauth.file.acl_file = acl\n",
            ),
            ("passwd", &passwd),
            ("acl", TWO_USERS_ACL),
        ],
    )
    .await;
    let (mut alice, _) = V4Client::connect(v4_login(&b, "phone", false, "alice", "a-pass")).await;
    assert_eq!(alice.subscribe("alice/#", QoS::AtLeastOnce).await, granted());
    alice.disconnect().await;

    // bob takes the client id: he gets a session of his own.
    let (mut bob, ack) = V4Client::connect(v4_login(&b, "phone", false, "bob", "b-pass")).await;
    assert!(!ack.session_present, "bob must not resume the session alice left");
    assert_eq!(bob.subscribe("public/#", QoS::AtLeastOnce).await, granted());
    let (mut publisher, _) = V4Client::connect(v4_login(&b, "pub", true, "alice", "a-pass")).await;
    publisher
        .publish("alice/diary", QoS::AtLeastOnce, false, "private")
        .await;
    publisher
        .publish("public/news", QoS::AtLeastOnce, false, "public")
        .await;
    // Both come from one publisher in order: the first bob gets is the public one.
    let first = bob.next_publish().await;
    assert_eq!(first.topic, "public/news", "bob received {first:?}");
    bob.disconnect().await;

    // The same user still resumes its session.
    let (mut again, ack) = V4Client::connect(v4_login(&b, "phone", false, "bob", "b-pass")).await;
    assert!(ack.session_present);
    publisher
        .publish("public/more", QoS::AtLeastOnce, false, "again")
        .await;
    assert_eq!(again.next_publish().await.topic, "public/more");
}

/// backend_pgsql's on_subscribe_lookup restores `mqtt_sub` rows, which are
/// keyed by client id, through `BrokerHandle::subscribe`: that skipped the
/// ACL, so bob, connecting with the client id alice had used, was
/// subscribed to alice's topics.
#[tokio::test]
async fn subscriptions_restored_by_a_plugin_obey_the_acl() {
    let passwd = password_file(&[("alice", "a-pass"), ("bob", "b-pass")]).await;
    let db = TestDb::create().await;
    let pg = db.client().await;
    let conf = pgsql_conf(&db, &format!("{EMQX_DEFAULT_RULES}\n{SUBSCRIBE_STORE_RULES}"));
    let b = Broker::start_with_files(
        "plugins.load = auth_file, backend_pgsql\nmqtt.allow_anonymous = false\n",
        &[
            (
                "auth_file.conf",
                "auth.file.password_file = passwd\nauth.file.acl_file = acl\n",
            ),
            ("passwd", &passwd),
            ("acl", TWO_USERS_ACL),
            ("backend_pgsql.conf", &conf),
        ],
    )
    .await;
    let (mut alice, _) = V4Client::connect(v4_login(&b, "tablet", true, "alice", "a-pass")).await;
    assert_eq!(alice.subscribe("alice/#", QoS::AtLeastOnce).await, granted());
    wait_for_db(
        &pg,
        "select count(*) from mqtt_sub where clientid = 'tablet' and topic = 'alice/#'",
        Some(1),
    )
    .await;
    alice.disconnect().await;

    let (mut bob, _) = V4Client::connect(v4_login(&b, "tablet", true, "bob", "b-pass")).await;
    // on_subscribe_lookup runs after CONNACK: wait until it has been refused.
    b.wait_for_log("plugin subscription denied by ACL").await;
    assert_eq!(bob.subscribe("public/#", QoS::AtLeastOnce).await, granted());
    let (mut publisher, _) = V4Client::connect(v4_login(&b, "pub", true, "alice", "a-pass")).await;
    publisher
        .publish("alice/diary", QoS::AtLeastOnce, false, "private")
        .await;
    publisher
        .publish("public/news", QoS::AtLeastOnce, false, "public")
        .await;
    let first = bob.next_publish().await;
    assert_eq!(first.topic, "public/news", "bob received {first:?}");
}

/// A database with auth_pgsql's tables, users alice/bob/admin (password
/// `secret`, admin a superuser) and `acl` (INSERT statements).
async fn auth_db(acl: &str) -> TestDb {
    let db = TestDb::create().await;
    db.batch_execute(AUTH_SCHEMA).await;
    db.batch_execute(
        "INSERT INTO mqtt_user (username, password_hash, salt, is_superuser) \
         SELECT u, encode(sha256(convert_to('s4lt' || 'secret', 'UTF8')), 'hex'), 's4lt', u = 'admin' \
         FROM unnest(ARRAY['alice', 'bob', 'admin']) AS u;",
    )
    .await;
    if !acl.is_empty() {
        db.batch_execute(acl).await;
    }
    db
}

fn auth_pgsql_conf(db: &TestDb, extra: &str) -> String {
    format!(
        "auth.pgsql.server = {}\nauth.pgsql.pool = 2\nauth.pgsql.username = postgres\n\
         auth.pgsql.database = {}\nauth.pgsql.password_hash = salt,sha256\n\
         auth.pgsql.acl_query = select allow, ipaddr, username, clientid, access, topic from mqtt_acl \
         where username = %u or username = '$all' or clientid = %c order by id\n\
         auth.pgsql.acl_nomatch = deny\n{extra}\n",
        pg_server(),
        db.name
    )
}

/// A deny row was only applied to subscriptions it covered: a row denying
/// `sensors/secret` did not stop a subscription to `sensors/#`, allowed by a
/// later row, which then received `sensors/secret`.
#[tokio::test]
async fn pgsql_deny_rows_refuse_subscriptions_that_could_receive_their_topics() {
    let db = auth_db(
        "INSERT INTO mqtt_acl (allow, ipaddr, username, clientid, access, topic) VALUES \
         (0, NULL, '$all', NULL, 1, 'sensors/secret'), \
         (1, NULL, '$all', NULL, 3, 'sensors/#');",
    )
    .await;
    let b = Broker::start_with_files(
        "plugins.load = auth_pgsql\nmqtt.allow_anonymous = false\n",
        &[("auth_pgsql.conf", &auth_pgsql_conf(&db, ""))],
    )
    .await;
    let (mut alice, _) = V5Client::connect(v5_login(&b, "a5", "alice", "secret")).await;
    for wide in ["sensors/#", "sensors/+", "$share/g/sensors/#"] {
        assert_eq!(
            alice.subscribe(wide, V5QoS::AtLeastOnce).await,
            vec![V5SubCode::NotAuthorized],
            "{wide}"
        );
    }
    // Filters that cannot receive the denied topic are still allowed.
    for narrow in ["sensors/public", "sensors/+/temp"] {
        assert_eq!(
            alice.subscribe(narrow, V5QoS::AtLeastOnce).await,
            vec![V5SubCode::Success(V5QoS::AtLeastOnce)],
            "{narrow}"
        );
    }
}

/// A placeholder's value was substituted again: a client calling itself
/// `${clientid}` with the client id `alice` got the row `users/%u/#` as
/// `users/alice/#`, alice's subtree, without alice's password (anonymous
/// access on, as unknown user names are then let in).
#[tokio::test]
async fn a_user_name_that_looks_like_a_placeholder_is_not_expanded() {
    let db = auth_db(
        "INSERT INTO mqtt_acl (allow, ipaddr, username, clientid, access, topic) VALUES \
         (1, NULL, '$all', NULL, 3, 'users/%u/#');",
    )
    .await;
    let b = Broker::start_with_files(
        "plugins.load = auth_pgsql\nmqtt.allow_anonymous = true\n",
        &[("auth_pgsql.conf", &auth_pgsql_conf(&db, ""))],
    )
    .await;
    let (mut real, _) = V5Client::connect(v5_login(&b, "alice", "alice", "secret")).await;
    assert_eq!(
        real.subscribe("users/alice/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::Success(V5QoS::AtLeastOnce)]
    );
    let mut o = v5_options(b.addr, "alice", true);
    o.set_credentials("${clientid}", "anything");
    let (mut forger, _) = V5Client::connect(o).await;
    assert_eq!(
        forger.subscribe("users/alice/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::NotAuthorized]
    );
}

/// `super_query` superusers skip the ACL, as in EMQX; with `auth_file`'s ACL
/// loaded first, its refusal stopped the chain before auth_pgsql could say
/// the client is a superuser.
#[tokio::test]
async fn pgsql_superusers_skip_every_acl_provider() {
    let db = auth_db("").await;
    let b = Broker::start_with_files(
        "plugins.load = auth_file, auth_pgsql\nmqtt.allow_anonymous = false\n",
        &[
            ("auth_file.conf", "auth.file.acl_file = acl\n"),
            ("acl", "user alice\ntopic read sensors/#\n"),
            (
                "auth_pgsql.conf",
                &auth_pgsql_conf(
                    &db,
                    "auth.pgsql.super_query = select is_superuser from mqtt_user where username = ${username}",
                ),
            ),
        ],
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
    assert_eq!(admin.next_publish().await.topic, "secret/plans");
    // Not a superuser: auth_file's ACL still decides.
    let (mut alice, _) = V5Client::connect(v5_login(&b, "al", "alice", "secret")).await;
    assert_eq!(
        alice.subscribe("secret/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::NotAuthorized]
    );
    assert_eq!(
        alice.subscribe("sensors/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::Success(V5QoS::AtLeastOnce)]
    );
}
