//! The bench's load scenarios end to end: the real `bench` binary against an
//! in-process Postbox on an ephemeral port, with both clients (the lean
//! default and rumqttc), every shape and QoS. Each run must account for every
//! message exactly: all received once, none lost, no duplicates, no errors
//! (the lean publisher counts an acknowledgement of a packet id it did not
//! send as an error). `--sub-broker` runs against a real two-node cluster of
//! in-process nodes on a database of their own (PostgreSQL at
//! `POSTBOX_TEST_PG`, default postgres@127.0.0.1:5432).

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
                assert!(
                    v.get("routed_s").is_none(),
                    "{what}: one broker, no probing ({v})"
                );
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

/// A database of its own for a cluster, dropped (`WITH (FORCE)`) on drop.
struct TestDb {
    name: String,
    url: String,
}

/// `POSTBOX_TEST_PG` (an admin database URL), as the broker's tests use.
fn pg_admin_url() -> String {
    std::env::var("POSTBOX_TEST_PG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

async fn pg_admin() -> tokio_postgres::Client {
    let url = pg_admin_url();
    let (client, conn) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(&url, tokio_postgres::NoTls),
    )
    .await
    .unwrap_or_else(|_| panic!("PostgreSQL did not answer at {url}"))
    .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {url}: {e} (run scripts/ensure-postgres)"));
    tokio::spawn(conn);
    client
}

impl TestDb {
    async fn create() -> TestDb {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!("postbox_bench_t_{}_{nanos}", std::process::id());
        pg_admin()
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("CREATE DATABASE");
        let admin = pg_admin_url();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        TestDb { name, url }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A runtime of its own: the test's may be gone or busy.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                pg_admin()
                    .await
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// A cluster node on `db`, in process, on ephemeral ports.
async fn start_node(db: &TestDb, name: &str) -> Server {
    start_broker_with(&format!(
        "mqtt.max_queue_len = 100000000\nmqtt.max_inflight = 65535\nnode.name = {name}\n\
         cluster.enable = true\ncluster.database = {}\ncluster.listen = 127.0.0.1:0\n\
         cluster.secret = bench-test-secret\ncluster.heartbeat = 200ms\ncluster.node_timeout = 2s\n",
        db.url
    ))
    .await
}

/// `--sub-broker`: publishers on node A, subscribers on node B of a real
/// two-node cluster. The run starts only once the subscriptions work from A
/// (probes), so every message is counted exactly, as on one broker; the
/// same with publishers and subscribers spread over both nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_on_another_node_of_a_cluster_are_counted_exactly() {
    let db = TestDb::create().await;
    let a = start_node(&db, "bench-a").await;
    let b = start_node(&db, "bench-b").await;
    let (addr_a, addr_b) = (a.local_addrs()[0].to_string(), b.local_addrs()[0].to_string());
    for (shape, qos, expected) in [
        ("one-to-one", "1", 3000),
        ("one-to-one", "0", 3000),
        ("fan-in", "1", 3000),
        ("fan-out", "1", 3000 * 3),
    ] {
        // Fresh topics every run: each run's routes must reach A anew.
        let v = bench(&[
            shape,
            "--broker",
            &addr_a,
            "--sub-broker",
            &addr_b,
            "--qos",
            qos,
            "--clients",
            "3",
            "--count",
            "3000",
            "--timeout",
            "60",
        ])
        .await;
        let what = format!("{shape} QoS {qos} from node A to node B");
        assert_exact(&v, expected, &what);
        assert!(
            v["routed_s"].as_f64().is_some(),
            "{what}: probing time reported ({v})"
        );
        assert_eq!(v["sub_brokers"], serde_json::json!([addr_b]), "{what} ({v})");
        assert_eq!(v["target"], addr_a.as_str(), "{what}: labelled by --broker ({v})");
    }
    // The same with rumqttc clients.
    let v = bench(&[
        "one-to-one",
        "--client",
        "rumqttc",
        "--broker",
        &addr_a,
        "--sub-broker",
        &addr_b,
        "--clients",
        "3",
        "--count",
        "3000",
    ])
    .await;
    assert_exact(&v, 3000, "one-to-one from node A to node B with rumqttc clients");
    // Publishers on both nodes, each pair's subscriber on the other one.
    let both = format!("{addr_a},{addr_b}");
    let crossed = format!("{addr_b},{addr_a}");
    let v = bench(&[
        "one-to-one",
        "--broker",
        &both,
        "--sub-broker",
        &crossed,
        "--qos",
        "1",
        "--clients",
        "4",
        "--count",
        "4000",
        "--target",
        "two-nodes",
    ])
    .await;
    assert_exact(&v, 4000, "one-to-one spread over both nodes");
    assert_eq!(v["acked"], 4000, "every publish acknowledged ({v})");
    assert_eq!(v["pub_brokers"], serde_json::json!([addr_a, addr_b]), "({v})");
    assert_eq!(v["target"], "two-nodes");
    a.shutdown().await;
    b.shutdown().await;
}

/// Two brokers that are not a cluster: the subscriptions on one never work
/// on the other, so the run fails once its --timeout passed (it does not
/// time a run whose subscribers cannot receive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_never_reaches_the_publishers_broker_fails_the_run() {
    let a = start_broker().await;
    let b = start_broker().await;
    let (addr_a, addr_b) = (a.local_addrs()[0].to_string(), b.local_addrs()[0].to_string());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "--json",
            "fan-in",
            "--broker",
            &addr_a,
            "--sub-broker",
            &addr_b,
            "--count",
            "10",
            "--timeout",
            "1",
        ])
        .output()
        .await
        .expect("bench runs");
    assert!(
        !out.status.success(),
        "a run whose subscriptions never route must fail"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("did not take effect"),
        "the error says what failed: {stderr}"
    );
    a.shutdown().await;
    b.shutdown().await;
}
