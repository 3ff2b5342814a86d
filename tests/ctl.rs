//! `postbox ctl` against a running broker: its output, and its effect on
//! real clients (kick closes a connection, publish reaches a subscriber).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::net::SocketAddr;

use rumqttc::QoS;
use support::http::*;
use support::*;

struct Out {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `postbox ctl --url http://<http> <args>`; credentials from the environment.
async fn ctl(http: SocketAddr, password: &str, args: &[&str]) -> Out {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_postbox"))
        .arg("ctl")
        .arg("--url")
        .arg(format!("http://{http}"))
        .args(args)
        .env("POSTBOX_API_USER", "admin")
        .env("POSTBOX_API_PASSWORD", password)
        .output()
        .await
        .unwrap();
    Out {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn ctl_lists_kicks_and_publishes() {
    let b = Broker::start(HTTP_CONF).await;
    let http = b.http_addr().await;
    let (mut alice, _) = V4Client::connect(v4_options(b.addr, "alice", true)).await;
    alice.subscribe("news/#", QoS::AtLeastOnce).await;
    let mut opts = v4_options(b.addr, "bob", true);
    opts.set_credentials("bobuser", "pw");
    let (mut bob, _) = V4Client::connect(opts).await;
    bob.subscribe("bob/inbox", QoS::AtMostOnce).await;

    let status = ctl(http, "s3cret", &["status"]).await;
    assert!(status.ok, "{}{}", status.stdout, status.stderr);
    assert!(status.stdout.contains("postbox is running"), "{}", status.stdout);
    assert!(
        status.stdout.contains("connections.count: 2"),
        "{}",
        status.stdout
    );

    let clients = ctl(http, "s3cret", &["clients", "--page", "1", "--limit", "1"]).await;
    assert!(clients.ok, "{}", clients.stderr);
    let lines: Vec<&str> = clients.stdout.lines().collect();
    assert!(lines[0].starts_with("alice "), "{}", clients.stdout);
    assert!(lines[0].contains("connected=true"), "{}", clients.stdout);
    assert_eq!(lines.len(), 2, "{}", clients.stdout);
    assert!(lines[1].contains("of 2 clients"), "{}", clients.stdout);
    let page2 = ctl(http, "s3cret", &["clients", "--page", "2", "--limit", "1"]).await;
    assert!(
        page2.stdout.starts_with("bob username=bobuser"),
        "{}",
        page2.stdout
    );

    let subs = ctl(http, "s3cret", &["subscriptions"]).await;
    assert_eq!(subs.stdout, "alice news/# qos=1\nbob bob/inbox qos=0\n");
    let one = ctl(http, "s3cret", &["subscriptions", "bob"]).await;
    assert_eq!(one.stdout, "bob bob/inbox qos=0\n");

    let published = ctl(
        http,
        "s3cret",
        &["publish", "news/today", "hello from ctl", "--qos", "1"],
    )
    .await;
    assert!(published.ok, "{}", published.stderr);
    let p = alice.next_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("news/today", &b"hello from ctl"[..])
    );

    let kicked = ctl(http, "s3cret", &["kick", "bob"]).await;
    assert!(kicked.ok, "{}", kicked.stderr);
    assert_eq!(kicked.stdout, "kicked bob\n");
    bob.expect_disconnected().await;
    let again = ctl(http, "s3cret", &["kick", "bob"]).await;
    assert_eq!(again.code, Some(1));
    assert!(again.stderr.contains("404"), "{}", again.stderr);

    // Wrong credentials: refused, exit status 1.
    let denied = ctl(http, "wrong", &["clients"]).await;
    assert_eq!(denied.code, Some(1));
    assert!(denied.stderr.contains("HTTP 401"), "{}", denied.stderr);
}

#[tokio::test]
async fn ctl_says_when_it_cannot_reach_the_node() {
    // A port nothing listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = ctl(free, "x", &["status"]).await;
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("cannot reach"), "{}", out.stderr);
}

#[tokio::test]
async fn ctl_drain_sends_clients_to_the_server_reference() {
    let conf = format!("{HTTP_CONF}mqtt.server_reference = b.example:1883\n");
    let b = Broker::start(&conf).await;
    let http = b.http_addr().await;
    let (mut v5, _) = V5Client::connect(v5_options(b.addr, "v5", true)).await;
    let out = ctl(http, "s3cret", &["drain"]).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "postbox@127.0.0.1 drains: 1 clients disconnected, sent to b.example:1883\n"
    );
    let d = v5.next_disconnect().await;
    assert_eq!(
        d.reason_code,
        rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::ServerMoved
    );
}
