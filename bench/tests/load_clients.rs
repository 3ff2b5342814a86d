//! The bench's load scenarios end to end: the real `bench` binary against an
//! in-process Postbox on an ephemeral port, with both clients (the lean
//! default and rumqttc), every shape and QoS. Each run must account for every
//! message exactly: all received once, none lost, no duplicates, no errors
//! (the lean publisher counts an acknowledgement of a packet id it did not
//! send as an error).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use hooks_spec::ConfFile;
use postbox::config::Config;
use postbox::Server;
use serde_json::Value;

/// A broker that queues and keeps in flight as much as run-all's (no drops).
async fn start_broker() -> Server {
    start_broker_with("mqtt.max_queue_len = 100000000\nmqtt.max_inflight = 65535\n").await
}

async fn start_broker_with(extra: &str) -> Server {
    let text = format!("listener.tcp.external = 127.0.0.1:0\n{extra}");
    let conf = ConfFile::parse(Path::new("bench-test.conf"), &text).expect("test config parses");
    let config = Config::from_conf(&conf).expect("test config is valid");
    Server::start(config, Vec::new()).await.expect("broker starts")
}

/// Runs `bench --json ARGS` and returns its one result line.
async fn bench(args: &[&str]) -> Value {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_bench"))
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("bench finishes within 2 minutes")
    .expect("bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench {args:?} failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("bench {args:?} printed {stdout:?}: {e}"))
}

fn assert_exact(v: &Value, expected: u64, what: &str) {
    assert_eq!(v["expected"], expected, "{what}: expected count");
    assert_eq!(v["received"], expected, "{what}: every message received ({v})");
    assert_eq!(v["lost"], 0, "{what}: none lost ({v})");
    assert_eq!(v["dup"], 0, "{what}: no duplicates ({v})");
    assert_eq!(v["errors"], 0, "{what}: no client errors ({v})");
    assert_eq!(v["foreign"], 0, "{what}: no foreign payloads ({v})");
    assert_eq!(v["timed_out"], false, "{what}: finished ({v})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shape_and_qos_is_counted_exactly_with_both_clients() {
    let broker = start_broker().await;
    let addr = broker.local_addrs()[0].to_string();
    for client in ["lean", "rumqttc"] {
        for qos in ["0", "1", "2"] {
            for (shape, expected) in [("one-to-one", 3000), ("fan-in", 3000), ("fan-out", 3000 * 4)] {
                // --count is what is published; fan-out's 4 subscribers each get all of it.
                let v = bench(&[
                    shape,
                    "--broker",
                    &addr,
                    "--client",
                    client,
                    "--qos",
                    qos,
                    "--clients",
                    "4",
                    "--count",
                    "3000",
                    "--timeout",
                    "60",
                ])
                .await;
                let what = format!("{shape} QoS {qos} with {client} clients");
                assert_exact(&v, expected, &what);
                assert_eq!(v["client"], client, "{what}: the client used is reported");
                if qos != "0" {
                    assert_eq!(v["acked"], 3000, "{what}: every publish acknowledged ({v})");
                }
            }
        }
    }
    broker.shutdown().await;
}

/// A subscriber that may have one message in flight and ten queued: the
/// broker drops what overflows (as Mosquitto's max_queued_messages does), and
/// the bench must report exactly those as lost, not as received or
/// duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_the_broker_drops_are_counted_as_lost() {
    let broker = start_broker_with("mqtt.max_queue_len = 10\nmqtt.max_inflight = 1\n").await;
    let addr = broker.local_addrs()[0].to_string();
    for client in ["lean", "rumqttc"] {
        let v = bench(&[
            "fan-in",
            "--broker",
            &addr,
            "--client",
            client,
            "--qos",
            "1",
            "--clients",
            "4",
            "--count",
            "2000",
            "--timeout",
            "60",
        ])
        .await;
        let (received, lost) = (v["received"].as_u64(), v["lost"].as_u64());
        let (Some(received), Some(lost)) = (received, lost) else {
            panic!("counts are numbers: {v}");
        };
        assert!(
            lost > 0,
            "{client}: a 10-message queue behind 400 publishes in flight overflows ({v})"
        );
        assert_eq!(
            received + lost,
            2000,
            "{client}: each message is received or lost ({v})"
        );
        assert_eq!(v["dup"], 0, "{client}: no duplicates ({v})");
        assert_eq!(
            v["acked"], 2000,
            "{client}: the publisher's side is all acknowledged ({v})"
        );
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_run_keeps_its_rate() {
    let broker = start_broker().await;
    let addr = broker.local_addrs()[0].to_string();
    // 600 messages at 2,000 msg/s: about 0.3 s; the rate is the publishers'
    // schedule, so the measured rate cannot exceed it by more than a burst.
    let v = bench(&[
        "one-to-one",
        "--broker",
        &addr,
        "--qos",
        "1",
        "--clients",
        "3",
        "--count",
        "600",
        "--rate",
        "2000",
    ])
    .await;
    assert_exact(&v, 600, "rate-limited one-to-one");
    let rate = v["rate"].as_f64().expect("rate is a number");
    assert!(rate <= 2200.0, "paced at 2,000 msg/s, measured {rate}");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_refuses_the_connection_fails_the_run() {
    // Nothing listens on this port once the listener is dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("its address")
        .port();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "--json",
            "one-to-one",
            "--broker",
            &format!("127.0.0.1:{port}"),
            "--count",
            "10",
        ])
        .output()
        .await
        .expect("bench runs");
    assert!(!out.status.success(), "a run that could not connect must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("connect"), "the error says what failed: {stderr}");
}
