//! MQTT over WebSocket in a real browser: MQTT.js (npm) in Debian's
//! headless Chromium, driven by `tests/browser/run.mjs` through
//! playwright-core, talks to Postbox's `listener.ws` while a rumqttc client
//! on the TCP listener talks to it.
//!
//! Needs `/usr/bin/chromium` (Debian package `chromium`) and
//! `tests/browser/node_modules` (`npm ci --prefix tests/browser`); the
//! README's test command installs both. Without them the test fails and
//! says what is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rumqttc::QoS;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Chromium's start and MQTT.js's work in the page, on a loaded 2-core machine.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: install Debian's chromium package (scripts/test does)",
        path.display()
    );
    path
}

#[tokio::test]
async fn mqtt_js_in_headless_chromium_publishes_and_receives_through_postbox() {
    let chromium = chromium();
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/mqtt").exists() && dir.join("node_modules/playwright-core").exists(),
        "{}/node_modules is missing: run `npm ci --prefix tests/browser` (scripts/test does)",
        dir.display()
    );
    let broker = Broker::start("listener.ws.browser = 127.0.0.1:0\n").await;
    let ws_addr = broker.listener_addrs(2).await[1];
    let (mut rust, _) = V4Client::connect(v4_options(broker.addr, "rust-tcp", true)).await;
    rust.subscribe("browser/out", QoS::AtLeastOnce).await;

    let mut node = Command::new("node")
        .arg(dir.join("run.mjs"))
        .arg(format!("ws://{ws_addr}/mqtt"))
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the node command is needed for the browser test");
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // The page is connected and subscribed (QoS 1 granted) when it says READY.
    let ready = tokio::time::timeout(BROWSER_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            if line.starts_with("READY") || line.starts_with("ERROR") {
                return line;
            }
        }
        String::from("(node exited)")
    })
    .await
    .unwrap_or_else(|_| panic!("the browser was not READY within {BROWSER_TIMEOUT:?}: {seen:#?}"));
    assert_eq!(
        ready,
        "READY granted=[1]",
        "browser output: {seen:#?}\n{}",
        broker.logs()
    );

    rust.publish_acked("browser/in", QoS::AtLeastOnce, false, "hello from rust")
        .await;
    // The browser answers through Postbox; rumqttc receives it over TCP.
    let echo = rust.next_publish().await;
    assert_eq!(
        (&echo.topic[..], &echo.payload[..], echo.qos),
        ("browser/out", &b"echo: hello from rust"[..], QoS::AtLeastOnce)
    );

    let result = tokio::time::timeout(BROWSER_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            if let Some(json) = line.strip_prefix("RESULT ") {
                return serde_json::from_str::<serde_json::Value>(json).unwrap();
            }
        }
        panic!("node exited without a RESULT: {seen:#?}");
    })
    .await
    .expect("no RESULT from the browser");
    assert_eq!(result["topic"], "browser/in");
    assert_eq!(result["payload"], "hello from rust");
    assert_eq!(result["qos"], 1);
    let status = tokio::time::timeout(BROWSER_TIMEOUT, node.wait())
        .await
        .expect("node did not exit")
        .unwrap();
    assert!(status.success(), "node exited with {status}: {seen:#?}");
    // MQTT.js said goodbye with DISCONNECT: the broker logs a normal end.
    broker.wait_for_log("reason=normal").await;
    let logs = broker.logs();
    let line = logs.lines().find(|l| l.contains("reason=normal")).unwrap();
    assert!(
        line.contains("client disconnected") && line.contains("clientid=browser-mqttjs"),
        "{line}"
    );
}
