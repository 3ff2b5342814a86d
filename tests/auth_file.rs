//! The built-in `auth_file` plugin with the real `postbox` binary: Mosquitto
//! password files (made by the real `mosquitto_passwd`, and by `postbox
//! passwd` then checked by the real Mosquitto broker), Mosquitto ACL files,
//! and startup refusals for files that do not parse.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as V5Code, SubscribeReasonCode as V5SubCode};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::{ConnectReturnCode as V4Code, QoS, SubscribeReasonCode};
use support::auth::*;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const ENABLE: &str = "plugins.load = auth_file\nmqtt.allow_anonymous = false\n";

const ACL: &str = "\
# anonymous clients
topic read public/#

user alice
topic readwrite sensors/#
topic deny sensors/secret
user bob
topic read sensors/+/temp
topic write sensors/bob/temp
user admin
topic read #

pattern readwrite devices/%c/#
pattern read inbox/%u/#
";

/// The real `mosquitto_passwd`; the test fails (never skips) without it.
fn mosquitto_passwd() -> &'static str {
    let path = "/usr/bin/mosquitto_passwd";
    assert!(
        Path::new(path).exists(),
        "{path} is missing: these interoperability tests need the mosquitto package"
    );
    path
}

/// Runs a command to completion; returns (success, stdout + stderr).
async fn run(cmd: &mut Command) -> (bool, String) {
    let out = tokio::time::timeout(TIMEOUT, cmd.stdin(Stdio::null()).output())
        .await
        .expect("command timed out")
        .expect("command could not be run");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

async fn postbox_passwd(args: &[&str]) -> (bool, String) {
    run(Command::new(broker_bin()).arg("passwd").args(args)).await
}

/// Starts Postbox with `auth_file` and anonymous access off.
async fn broker(extra: &str, files: &[(&str, &str)]) -> Broker {
    Broker::start_with_files(&format!("{ENABLE}{extra}"), files).await
}

#[tokio::test]
async fn mosquitto_passwd_files_authenticate() {
    let dir = temp_dir("mosq-pw");
    let file = dir.join("passwd");
    let file_s = file.to_str().unwrap();
    let (ok, out) = run(Command::new(mosquitto_passwd()).args(["-c", "-b", file_s, "alice", "s3cret"])).await;
    assert!(ok, "{out}");
    let (ok, out) =
        run(Command::new(mosquitto_passwd()).args(["-H", "sha512", "-b", file_s, "bob", "hunter2"])).await;
    assert!(ok, "{out}");
    let passwd = std::fs::read_to_string(&file).unwrap();
    assert!(
        passwd.contains("alice:$7$") && passwd.contains("bob:$6$"),
        "{passwd}"
    );

    let b = broker(
        "",
        &[
            ("auth_file.conf", "auth.file.password_file = passwd\n"),
            ("passwd", &passwd),
        ],
    )
    .await;
    // The right passwords, both hash formats, both protocol versions.
    V5Client::connect(v5_login(&b, "a5", "alice", "s3cret")).await;
    V4Client::connect(v4_login(&b, "a4", "alice", "s3cret")).await;
    V4Client::connect(v4_login(&b, "b4", "bob", "hunter2")).await;
    // A wrong password: bad user name or password.
    assert_eq!(
        v5_refusal(v5_login(&b, "x5", "alice", "S3cret")).await,
        V5Code::BadUserNamePassword
    );
    assert_eq!(
        v4_refusal(v4_login(&b, "x4", "bob", "hunter3")).await,
        V4Code::BadUserNamePassword
    );
    // A known user without a password: 3.1.1 code 4.
    assert_eq!(connack_without_password(&b, "alice").await, 4);
    // A user the file does not have is anonymous, and anonymous access is off.
    assert_eq!(
        v5_refusal(v5_login(&b, "u5", "mallory", "s3cret")).await,
        V5Code::NotAuthorized
    );
    assert_eq!(
        v4_refusal(v4_login(&b, "u4", "mallory", "s3cret")).await,
        V4Code::NotAuthorized
    );
    assert_eq!(
        v4_refusal(v4_options(b.addr, "anon", true)).await,
        V4Code::NotAuthorized
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unknown_users_are_left_to_allow_anonymous() {
    let passwd = "alice:$7$101$k3j3KbNrhWR6L5pp$YcsRjdbOC1lWI2VaQVSAx6w0MFZ23Nlz9ZbL7V3fNsS4lIQrext0kfL+gcWpFviRX8i16ZjNyvbMxit4WbyCzg==\n";
    let b = Broker::start_with_files(
        "plugins.load = auth_file\n",
        &[
            ("auth_file.conf", "auth.file.password_file = passwd\n"),
            ("passwd", passwd),
        ],
    )
    .await;
    V4Client::connect(v4_login(&b, "g", "guest", "anything")).await;
    V4Client::connect(v4_login(&b, "a", "alice", "secret")).await;
    assert_eq!(
        v4_refusal(v4_login(&b, "x", "alice", "guess")).await,
        V4Code::BadUserNamePassword
    );
}

/// The real Mosquitto broker on a Unix socket (never on a TCP port) with a password file.
struct Mosquitto {
    child: tokio::process::Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Mosquitto {
    async fn start(passwd: &Path) -> Mosquitto {
        let bin = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect(
                "the mosquitto broker is missing: these interoperability tests need the mosquitto package",
            );
        let dir = temp_dir("mosq");
        let socket = dir.join("m.sock");
        let conf = dir.join("mosquitto.conf");
        // `user root` only matters when run as root: Mosquitto would otherwise
        // switch to its own user, which cannot read the test's files.
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\nlistener 0 {}\nallow_anonymous false\npassword_file {}\n\
                 log_dest stderr\nuser root\n",
                socket.display(),
                passwd.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Its log goes to stderr, which is not buffered (stdout to a pipe is).
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let ready = tokio::time::timeout(TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let running = line.contains(" running");
                seen.push(line);
                if running {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            matches!(ready, Ok(true)),
            "mosquitto did not start:\n{}",
            seen.join("\n")
        );
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Mosquitto { child, socket, dir }
    }

    /// True when Mosquitto accepts the login (mosquitto_pub exits 0).
    async fn accepts(&self, user: &str, password: &str) -> bool {
        let (ok, _) = run(Command::new("mosquitto_pub")
            .arg("--unix")
            .arg(&self.socket)
            .args(["-u", user, "-P", password, "-t", "t", "-m", "x"]))
        .await;
        ok
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn postbox_passwd_round_trip_and_interoperability() {
    let dir = temp_dir("pb-pw");
    let file = dir.join("passwd");
    let f = file.to_str().unwrap();

    let (ok, out) = postbox_passwd(&["-c", "-b", f, "alice", "first"]).await;
    assert!(ok, "{out}");
    // Not -b and stdin not a terminal: the password is one line of stdin.
    let mut child = Command::new(broker_bin())
        .args(["passwd", f, "bob"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"b0b-pw\n").await.unwrap();
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (ok, out) = postbox_passwd(&["-b", f, "alice", "second"]).await;
    assert!(ok, "{out}");
    let (ok, out) = postbox_passwd(&["-b", "-H", "sha512", f, "carol", "c4rol"]).await;
    assert!(ok, "{out}");
    let (ok, out) = postbox_passwd(&["-D", f, "carol"]).await;
    assert!(ok, "{out}");
    let (ok, out) = postbox_passwd(&["-b", f, "eve:admin", "x"]).await;
    assert!(!ok && out.contains("contains `:`"), "{out}");
    let (ok, out) = postbox_passwd(&["-D", f, "nobody"]).await;
    assert!(!ok && out.contains("user `nobody` is not in"), "{out}");

    // The exact format mosquitto_passwd writes, one line per user.
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (line, user) in lines.iter().zip(["alice", "bob"]) {
        let fields: Vec<&str> = line.split('$').collect();
        assert_eq!(fields[0], format!("{user}:"), "{line}");
        assert_eq!(fields[1], "7", "{line}");
        assert!(fields[2].parse::<u32>().is_ok(), "{line}");
        assert_eq!(fields.len(), 5, "{line}");
    }

    // mosquitto_passwd reads the file (it refuses lines it cannot parse) and adds a user to it.
    let (ok, out) = run(Command::new(mosquitto_passwd()).args(["-b", f, "dave", "d4ve"])).await;
    assert!(ok && !out.contains("Error"), "{out}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with(&format!("{}\n{}\n", lines[0], lines[1])),
        "{text}"
    );

    // The real Mosquitto broker accepts the passwords Postbox wrote.
    let mosquitto = Mosquitto::start(&file).await;
    assert!(mosquitto.accepts("alice", "second").await, "alice/second");
    assert!(mosquitto.accepts("bob", "b0b-pw").await, "bob");
    assert!(!mosquitto.accepts("alice", "first").await, "the old password");
    drop(mosquitto);

    // And Postbox accepts the ones both wrote.
    let b = broker(
        "",
        &[
            ("auth_file.conf", "auth.file.password_file = passwd\n"),
            ("passwd", &text),
        ],
    )
    .await;
    V4Client::connect(v4_login(&b, "a", "alice", "second")).await;
    V5Client::connect(v5_login(&b, "b", "bob", "b0b-pw")).await;
    V4Client::connect(v4_login(&b, "d", "dave", "d4ve")).await;
    assert_eq!(
        v4_refusal(v4_login(&b, "a1", "alice", "first")).await,
        V4Code::BadUserNamePassword
    );
    assert_eq!(
        v5_refusal(v5_login(&b, "c", "carol", "c4rol")).await,
        V5Code::NotAuthorized
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Postbox with the test ACL; users log in with any password (no password
/// file: anonymous access decides, and it is on).
async fn acl_broker() -> Broker {
    Broker::start_with_files(
        "plugins.load = auth_file\n",
        &[("auth_file.conf", "auth.file.acl_file = acl\n"), ("acl", ACL)],
    )
    .await
}

#[tokio::test]
async fn denied_subscriptions_get_the_refusal_code() {
    let b = acl_broker().await;
    let (mut bob4, _) = V4Client::connect(v4_login(&b, "bob4", "bob", "-")).await;
    assert_eq!(
        bob4.subscribe("sensors/+/temp", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    // `sensors/+/temp` does not cover `sensors/#`.
    assert_eq!(
        bob4.subscribe("sensors/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Failure]
    );
    let (mut bob5, _) = V5Client::connect(v5_login(&b, "bob5", "bob", "-")).await;
    assert_eq!(
        bob5.subscribe("sensors/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::NotAuthorized]
    );
    assert_eq!(
        bob5.subscribe("sensors/kitchen/temp", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::Success(V5QoS::AtLeastOnce)]
    );
    // alice may read sensors/# except sensors/secret: a subscription that
    // could receive it is refused, narrower ones are granted.
    let (mut alice, _) = V5Client::connect(v5_login(&b, "alice5", "alice", "-")).await;
    assert_eq!(
        alice.subscribe("sensors/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::NotAuthorized]
    );
    assert_eq!(
        alice.subscribe("sensors/+/temp", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::Success(V5QoS::AtLeastOnce)]
    );
    // Anonymous clients get the lines before the first `user`.
    let (mut anon, _) = V4Client::connect(v4_options(b.addr, "anon", true)).await;
    assert_eq!(
        anon.subscribe("public/#", QoS::AtMostOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
    assert_eq!(
        anon.subscribe("sensors/+/temp", QoS::AtMostOnce).await,
        vec![SubscribeReasonCode::Failure]
    );
}

#[tokio::test]
async fn denied_publishes_are_not_delivered() {
    let b = acl_broker().await;
    let (mut alice, _) = V4Client::connect(v4_login(&b, "alice-sub", "alice", "-")).await;
    alice.subscribe("sensors/+/temp", QoS::AtLeastOnce).await;

    // MQTT 5: PUBACK 0x87 for the denied one, then the allowed one goes through.
    let (mut bob5, _) = V5Client::connect(v5_login(&b, "bob5", "bob", "-")).await;
    expect_v5_publish_denied(&mut bob5, "sensors/alice/temp", "forged").await;
    bob5.publish("sensors/bob/temp", V5QoS::AtLeastOnce, false, "v5 allowed")
        .await;
    assert_eq!(&alice.next_publish().await.payload[..], b"v5 allowed");

    // 3.1.1 cannot be told: the denied message is acknowledged and dropped.
    let (mut bob4, _) = V4Client::connect(v4_login(&b, "bob4", "bob", "-")).await;
    bob4.publish("sensors/alice/temp", QoS::AtLeastOnce, false, "forged")
        .await;
    bob4.publish("sensors/alice/temp", QoS::AtMostOnce, false, "forged qos0")
        .await;
    bob4.publish("sensors/bob/temp", QoS::AtLeastOnce, false, "v4 allowed")
        .await;
    assert_eq!(&alice.next_publish().await.payload[..], b"v4 allowed");

    // `deny` wins over alice's own readwrite sensors/#.
    let (mut admin, _) = V4Client::connect(v4_login(&b, "admin", "admin", "-")).await;
    admin.subscribe("sensors/#", QoS::AtLeastOnce).await;
    let (mut alice_pub, _) = V5Client::connect(v5_login(&b, "alice-pub", "alice", "-")).await;
    expect_v5_publish_denied(&mut alice_pub, "sensors/secret", "x").await;
    alice_pub
        .publish("sensors/open", V5QoS::AtLeastOnce, false, "ok")
        .await;
    assert_eq!(&admin.next_publish().await.payload[..], b"ok");
}

#[tokio::test]
async fn patterns_use_the_client_id_and_user_name() {
    let b = acl_broker().await;
    let (mut dev, _) = V5Client::connect(v5_login(&b, "dev7", "carol", "-")).await;
    assert_eq!(
        dev.subscribe("devices/dev7/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::Success(V5QoS::AtLeastOnce)]
    );
    assert_eq!(
        dev.subscribe("devices/+/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::NotAuthorized]
    );
    assert_eq!(
        dev.subscribe("inbox/carol/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::Success(V5QoS::AtLeastOnce)]
    );
    assert_eq!(
        dev.subscribe("inbox/bob/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::NotAuthorized]
    );
    expect_v5_publish_denied(&mut dev, "devices/dev8/cmd", "other's").await;
    dev.publish("devices/dev7/cmd", V5QoS::AtLeastOnce, false, "own")
        .await;
    assert_eq!(&dev.next_publish().await.payload[..], b"own");

    // A client id that is a wildcard gets no pattern rule (substituted,
    // `devices/+/#` would grant every device's topics).
    let (mut wild, _) = V4Client::connect(v4_login(&b, "+", "carol", "-")).await;
    assert_eq!(
        wild.subscribe("devices/+/#", QoS::AtMostOnce).await,
        vec![SubscribeReasonCode::Failure]
    );
    // Without a user name there is no %u.
    let (mut anon, _) = V4Client::connect(v4_options(b.addr, "anon", true)).await;
    assert_eq!(
        anon.subscribe("inbox/+/#", QoS::AtMostOnce).await,
        vec![SubscribeReasonCode::Failure]
    );
}

#[tokio::test]
async fn acl_nomatch_allow_lets_unmatched_access_through() {
    let b = Broker::start_with_files(
        "plugins.load = auth_file\n",
        &[
            (
                "auth_file.conf",
                "auth.file.acl_file = acl\nauth.file.acl_nomatch = allow\n",
            ),
            ("acl", "topic deny closed/#\n"),
        ],
    )
    .await;
    let (mut c, _) = V4Client::connect(v4_options(b.addr, "c", true)).await;
    assert_eq!(
        c.subscribe("anything/#", QoS::AtMostOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
    assert_eq!(
        c.subscribe("closed/x", QoS::AtMostOnce).await,
        vec![SubscribeReasonCode::Failure]
    );
}

#[tokio::test]
async fn malformed_files_stop_startup_naming_file_and_line() {
    let (status, out) = Broker::start_expect_failure(
        ENABLE,
        &[
            (
                "auth_file.conf",
                "auth.file.password_file = passwd\nauth.file.acl_file = acl\n",
            ),
            ("passwd", "# users\nalice:$7$101$c2FsdA==$short\n"),
            ("acl", "topic a\n"),
        ],
    )
    .await;
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("auth_file.conf:1: `auth.file.password_file`:")
            && out.contains("/passwd:2: user `alice`"),
        "{out}"
    );

    let (status, out) = Broker::start_expect_failure(
        ENABLE,
        &[
            ("auth_file.conf", "auth.file.acl_file = acl\n"),
            ("acl", "user alice\ntopic read a/#\ntopic readd b\ntopik c\n"),
        ],
    )
    .await;
    assert!(!status.success(), "{out}");
    assert!(out.contains("/acl:4: unknown keyword `topik`"), "{out}");

    let (status, out) = Broker::start_expect_failure(
        ENABLE,
        &[
            ("auth_file.conf", "auth.file.acl_file = acl\n"),
            ("acl", "\npattern read devices/#/%c\n"),
        ],
    )
    .await;
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("/acl:2: `devices/#/%c` is not a valid topic filter"),
        "{out}"
    );

    let (status, out) = Broker::start_expect_failure(
        ENABLE,
        &[("auth_file.conf", "auth.file.password_file = nowhere\n")],
    )
    .await;
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("/nowhere: cannot read:") && out.contains("postbox passwd -c"),
        "{out}"
    );
}
