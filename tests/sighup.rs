//! SIGHUP with the real `postbox` binary: `auth_file` reloads its password
//! and ACL files, keeps the files in force when new ones do not parse, and
//! the broker never exits on SIGHUP, with or without plugins.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::process::Stdio;

use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as V5SubCode;
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::{ConnectReturnCode as V4Code, QoS, SubscribeReasonCode};
use support::auth::*;
use support::*;
use tokio::process::Command;

const ENABLE: &str = "plugins.load = auth_file\nmqtt.allow_anonymous = false\n";

/// The hash of `secret`, made by mosquitto_passwd.
const SECRET: &str = "$7$101$k3j3KbNrhWR6L5pp$YcsRjdbOC1lWI2VaQVSAx6w0MFZ23Nlz9ZbL7V3fNsS4lIQrext0kfL+gcWpFviRX8i16ZjNyvbMxit4WbyCzg==";

/// A password file where each of `users` has the password `secret`.
fn passwd(users: &[&str]) -> String {
    users.iter().map(|u| format!("{u}:{SECRET}\n")).collect()
}

/// Runs `postbox passwd ARGS` and asserts it succeeded.
async fn postbox_passwd(args: &[&str]) {
    let out = tokio::time::timeout(
        TIMEOUT,
        Command::new(broker_bin())
            .arg("passwd")
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("postbox passwd timed out")
    .expect("postbox passwd could not be run");
    assert!(
        out.status.success(),
        "postbox passwd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn sighup_reloads_the_password_file() {
    let b = Broker::start_with_files(
        ENABLE,
        &[
            ("auth_file.conf", "auth.file.password_file = passwd\n"),
            ("passwd", &passwd(&["alice"])),
        ],
    )
    .await;
    let file = b.dir.join("passwd");
    let file = file.to_str().unwrap();
    let (mut alice, _) = V4Client::connect(v4_login(&b, "alice", "alice", "secret")).await;

    postbox_passwd(&["-b", file, "bob", "b0b-pw"]).await;
    postbox_passwd(&["-D", file, "alice"]).await;
    // Changing the file is not enough: the one read at startup is in force.
    assert_eq!(
        v4_refusal(v4_login(&b, "bob0", "bob", "b0b-pw")).await,
        V4Code::NotAuthorized
    );

    let log = b.sighup().await;
    assert!(
        log.contains("auth_file: password file reloaded") && log.contains("users=1"),
        "{log}"
    );
    V4Client::connect(v4_login(&b, "bob4", "bob", "b0b-pw")).await;
    V5Client::connect(v5_login(&b, "bob5", "bob", "b0b-pw")).await;
    assert_eq!(
        v4_refusal(v4_login(&b, "bob-wrong", "bob", "secret")).await,
        V4Code::BadUserNamePassword
    );
    // The removed user is now unknown, and anonymous access is off.
    assert_eq!(
        v4_refusal(v4_login(&b, "alice2", "alice", "secret")).await,
        V4Code::NotAuthorized
    );
    // A connection admitted before the reload is not dropped by it.
    assert_eq!(
        alice.subscribe("still/here", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
}

#[tokio::test]
async fn sighup_reloads_the_acl_file_for_connected_clients_too() {
    let b = Broker::start_with_files(
        "plugins.load = auth_file\n",
        &[
            ("auth_file.conf", "auth.file.acl_file = acl\n"),
            ("acl", "user alice\ntopic readwrite a/#\n"),
        ],
    )
    .await;
    let (mut alice, _) = V5Client::connect(v5_login(&b, "alice", "alice", "-")).await;
    assert_eq!(
        alice.subscribe("b/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::NotAuthorized]
    );
    expect_v5_publish_denied(&mut alice, "b/x", "before").await;

    std::fs::write(b.dir.join("acl"), "user alice\ntopic readwrite b/#\n").unwrap();
    let log = b.sighup().await;
    assert!(
        log.contains("auth_file: ACL file reloaded") && log.contains("rules=1"),
        "{log}"
    );
    // The same connection: what it asks after the reload meets the new rules.
    assert_eq!(
        alice.subscribe("b/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::Success(V5QoS::AtLeastOnce)]
    );
    alice.publish("b/x", V5QoS::AtLeastOnce, false, "after").await;
    assert_eq!(&alice.next_publish().await.payload[..], b"after");
    assert_eq!(
        alice.subscribe("a/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::NotAuthorized]
    );
    expect_v5_publish_denied(&mut alice, "a/x", "revoked").await;
    // And so does a new connection.
    let (mut again, _) = V4Client::connect(v4_login(&b, "alice4", "alice", "-")).await;
    assert_eq!(
        again.subscribe("a/#", QoS::AtMostOnce).await,
        vec![SubscribeReasonCode::Failure]
    );
}

#[tokio::test]
async fn a_file_with_an_error_keeps_the_one_in_force() {
    let b = Broker::start_with_files(
        ENABLE,
        &[
            (
                "auth_file.conf",
                "auth.file.password_file = passwd\nauth.file.acl_file = acl\n",
            ),
            ("passwd", &passwd(&["alice"])),
            ("acl", "user alice\ntopic readwrite a/#\n"),
        ],
    )
    .await;
    let pw_file = b.dir.join("passwd");
    let acl_file = b.dir.join("acl");

    // A bad password file next to a good ACL file: only the ACL changes.
    std::fs::write(
        &pw_file,
        format!("# users\n{}bob:plain-text\n", passwd(&["alice"])),
    )
    .unwrap();
    std::fs::write(&acl_file, "user alice\ntopic readwrite b/#\n").unwrap();
    let log = b.sighup().await;
    assert!(
        log.contains("/passwd:3: user `bob`")
            && log.contains("the password file loaded before stays in force"),
        "{log}"
    );
    assert!(log.contains("auth_file: ACL file reloaded"), "{log}");
    let (mut alice, _) = V5Client::connect(v5_login(&b, "alice", "alice", "secret")).await;
    assert_eq!(
        v4_refusal(v4_login(&b, "bob0", "bob", "secret")).await,
        V4Code::NotAuthorized
    );
    assert_eq!(
        alice.subscribe("b/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::Success(V5QoS::AtLeastOnce)]
    );

    // A bad ACL file next to a good password file: only the passwords change.
    std::fs::write(&pw_file, passwd(&["alice", "bob"])).unwrap();
    std::fs::write(&acl_file, "user alice\ntopic readwrite c/#\ntopik d\n").unwrap();
    let log = b.sighup().await;
    assert!(
        log.contains("/acl:3: unknown keyword `topik`")
            && log.contains("the ACL file loaded before stays in force"),
        "{log}"
    );
    assert!(log.contains("auth_file: password file reloaded"), "{log}");
    V4Client::connect(v4_login(&b, "bob1", "bob", "secret")).await;
    assert_eq!(
        alice.subscribe("b/x", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::Success(V5QoS::AtLeastOnce)]
    );
    assert_eq!(
        alice.subscribe("c/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::NotAuthorized]
    );

    // A file that is gone is an error too; fixing it later reloads it.
    std::fs::remove_file(&acl_file).unwrap();
    let log = b.sighup().await;
    assert!(log.contains("/acl: cannot read:"), "{log}");
    assert_eq!(
        alice.subscribe("b/y", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::Success(V5QoS::AtLeastOnce)]
    );
    std::fs::write(&acl_file, "user alice\ntopic readwrite c/#\n").unwrap();
    let log = b.sighup().await;
    assert!(log.contains("failed=0"), "{log}");
    assert_eq!(
        alice.subscribe("c/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::Success(V5QoS::AtLeastOnce)]
    );
}

#[tokio::test]
async fn a_broker_without_plugins_survives_sighup_and_still_stops_gracefully() {
    let mut b = Broker::start("").await;
    let (mut sub, _) = V4Client::connect(v4_options(b.addr, "sub", true)).await;
    sub.subscribe("t/#", QoS::AtLeastOnce).await;
    for _ in 0..3 {
        let log = b.sighup().await;
        assert!(log.contains("plugins=0 failed=0"), "{log}");
    }
    // The connection from before and a new one are both served.
    let (mut publ, _) = V4Client::connect(v4_options(b.addr, "pub", true)).await;
    publ.publish("t/1", QoS::AtLeastOnce, false, "after sighup").await;
    assert_eq!(&sub.next_publish().await.payload[..], b"after sighup");
    // SIGTERM still shuts it down gracefully.
    let status = b.terminate().await;
    assert!(status.success(), "{status:?}\n{}", b.logs());
    assert!(b.logs().contains("stopped"), "{}", b.logs());
}
