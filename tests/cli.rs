//! The `postbox` command line: configuration errors stop startup with a
//! message naming the file, the line and the key.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use support::*;

#[tokio::test]
async fn unknown_key_names_file_line_and_key() {
    let (status, out) =
        Broker::start_expect_failure("mqtt.max_inflight = 8\nmqtt.no_such_key = 1\n", &[]).await;
    assert_eq!(status.code(), Some(2), "{out}");
    // The harness writes 3 lines before the extra config.
    assert!(
        out.contains("postbox.conf:5: `mqtt.no_such_key`: unknown key"),
        "{out}"
    );
}

#[tokio::test]
async fn bad_value_names_the_key_and_what_is_expected() {
    let (status, out) = Broker::start_expect_failure("mqtt.connect_timeout = soon\n", &[]).await;
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("postbox.conf:4: `mqtt.connect_timeout`"), "{out}");
    assert!(out.contains("soon"), "{out}");
}

#[tokio::test]
async fn unknown_plugin_is_refused() {
    let (status, out) = Broker::start_expect_failure("plugins.load = nonexistent_plugin\n", &[]).await;
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(
        out.contains("postbox.conf:4: `plugins.load`: unknown plugin `nonexistent_plugin`"),
        "{out}"
    );
}

#[tokio::test]
async fn missing_config_file_is_named() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_postbox"))
        .args(["-c", "/nonexistent/postbox.conf"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/postbox.conf"), "{err}");
}

#[tokio::test]
async fn shipped_configs_start_the_broker_with_the_backend() {
    // The shipped etc/ files, unchanged but for the database name and the
    // HTTP listener's port (8081 may be taken on a test machine).
    let db = TestDb::create().await;
    let dir = temp_dir("shipped");
    let etc = concat!(env!("CARGO_MANIFEST_DIR"), "/../etc");
    let shipped = std::fs::read_to_string(format!("{etc}/postbox.conf")).unwrap();
    assert!(shipped.contains("\nmanagement.listener.http = 127.0.0.1:8081\n"));
    let shipped = shipped.replace(
        "\nmanagement.listener.http = 127.0.0.1:8081\n",
        "\nmanagement.listener.http = 127.0.0.1:0\n",
    );
    std::fs::write(dir.join("postbox.conf"), shipped).unwrap();
    let backend = std::fs::read_to_string(format!("{etc}/backend_pgsql.conf")).unwrap();
    let backend = backend.replace(
        "backend.pgsql.pool1.database = mqtt",
        &format!("backend.pgsql.pool1.database = {}", db.name),
    );
    std::fs::write(dir.join("backend_pgsql.conf"), backend).unwrap();
    for f in ["auth_file.conf", "acl", "passwd"] {
        std::fs::copy(format!("{etc}/{f}"), dir.join(f)).unwrap();
    }
    // Anonymous access is off in the shipped config: add a user first.
    let added = tokio::process::Command::new(env!("CARGO_BIN_EXE_postbox"))
        .args([
            "passwd",
            "-b",
            dir.join("passwd").to_str().unwrap(),
            "dev",
            "s3cret",
        ])
        .output()
        .await
        .unwrap();
    assert!(added.status.success(), "{added:?}");

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_postbox"))
        .args([
            "-c",
            dir.join("postbox.conf").to_str().unwrap(),
            "--bind",
            "127.0.0.1:0",
            "--log-level",
            "warn",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr: std::net::SocketAddr = line.strip_prefix("listening on ").unwrap().parse().unwrap();
    assert_ne!(addr.port(), 1883);
    let anonymous = V4Client::try_connect(v4_options(addr, "anonymous", true)).await;
    assert!(
        matches!(
            anonymous,
            Err(rumqttc::ConnectionError::ConnectionRefused(
                rumqttc::ConnectReturnCode::NotAuthorized
            ))
        ),
        "anonymous client: {:?}",
        anonymous.map(|(_, ack)| ack)
    );
    let mut opts = v4_options(addr, "shipped", true);
    opts.set_credentials("dev", "s3cret");
    let (mut c, _) = V4Client::connect(opts).await;
    // etc/acl: every client reads and writes devices/<its client id>/#.
    assert_eq!(
        c.subscribe("devices/shipped/t", rumqttc::QoS::AtLeastOnce).await,
        vec![rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)]
    );
    c.publish("devices/shipped/t", rumqttc::QoS::AtLeastOnce, false, "stored")
        .await;
    assert_eq!(&c.next_publish().await.payload[..], b"stored");
    // The plugin created the schema and stored the message.
    let rows: i64 = db
        .client()
        .await
        .query_one("select count(*) from mqtt_msg", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    let _ = std::fs::remove_dir_all(&dir);
}
