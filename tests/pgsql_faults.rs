//! Real database faults: the PostgreSQL server is restarted (`pg_ctl restart
//! -m fast` and `-m immediate`) or stopped and started while clients publish
//! and subscribe, on a private server of the test's own ([`PgCluster`]).
//! Clients are rumqttc (independent of the broker's code).
//!
//! What a user must see: publishers are acknowledged again shortly after the
//! database answers (never a publisher stuck for good on messages the broker
//! could not store), every acknowledged message reaches every subscriber
//! once, in order, including messages a subscriber's full queue dropped while
//! it was slow or offline.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, QoS};
use support::pg_cluster::{PgCluster, StopMode};
use support::pgsql::*;
use support::*;
use tokio::time::Instant;

/// The plugin config (EMQX's default rules) for database `mqtt` on `cluster`.
fn cluster_conf(cluster: &PgCluster, extra: &str) -> String {
    format!(
        "backend.pgsql.pool1.server = {}\nbackend.pgsql.pool1.pool_size = 4\n\
         backend.pgsql.pool1.username = postgres\nbackend.pgsql.pool1.database = mqtt\n{EMQX_DEFAULT_RULES}\n{extra}\n",
        cluster.server()
    )
}

async fn cluster_broker(cluster: &PgCluster, broker_conf: &str) -> Broker {
    let conf = cluster_conf(cluster, "");
    Broker::start_with_files(
        &format!("plugins.load = backend_pgsql\n{broker_conf}"),
        &[("backend_pgsql.conf", &conf)],
    )
    .await
}

/// A QoS 1 publisher (rumqttc, MQTT 3.1.1, clean session, a window of
/// `inflight` unacknowledged messages) sending `m0..m{n-1}` in its own task;
/// the time of every PUBACK is recorded.
struct Stream {
    acks: Arc<Mutex<Vec<Instant>>>,
    n: usize,
    task: tokio::task::JoinHandle<()>,
}

impl Stream {
    fn start(
        addr: std::net::SocketAddr,
        id: &str,
        topic: &str,
        n: usize,
        inflight: u16,
        pause: Duration,
    ) -> Stream {
        let mut opts = v4_options(addr, id, true);
        opts.set_inflight(inflight);
        let (client, mut events) = AsyncClient::new(opts, n + 16);
        let acks: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let topic = topic.to_string();
        let sender = client.clone();
        tokio::spawn(async move {
            for i in 0..n {
                if sender
                    .publish(topic.as_str(), QoS::AtLeastOnce, false, format!("m{i}"))
                    .await
                    .is_err()
                {
                    return;
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        });
        let recorded = Arc::clone(&acks);
        let task = tokio::spawn(async move {
            let _client = client;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => {
                        let mut a = recorded.lock().unwrap();
                        a.push(Instant::now());
                        if a.len() == n {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // rumqttc reconnects on the next poll (and re-sends).
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Stream { acks, n, task }
    }

    fn acked(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    /// Waits (bounded) until `k` messages are acknowledged; panics with the
    /// count otherwise.
    async fn wait_acked(&self, k: usize, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        while self.acked() < k {
            assert!(
                Instant::now() < deadline,
                "{what}: {} of {k} messages acknowledged after {within:?}",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The first PUBACK at or after `t`.
    fn first_ack_after(&self, t: Instant) -> Option<Instant> {
        self.acks.lock().unwrap().iter().copied().find(|&a| a >= t)
    }
}

/// Receives publishes on `c` until `want` distinct payloads arrived (bounded);
/// returns every payload in arrival order, repeats included.
async fn collect(c: &mut V4Client, want: usize) -> Vec<String> {
    let mut got = Vec::new();
    let mut distinct = std::collections::HashSet::new();
    while distinct.len() < want {
        let p = c.next_publish().await;
        let t = text(&p);
        distinct.insert(t.clone());
        got.push(t);
    }
    got
}

/// Publishing goes on across a real restart of the database: the messages
/// published while it restarts are acknowledged once it answers (before the
/// fix, a 3.1.1 publisher never got those acknowledgements, its window stayed
/// full and it stopped publishing for good), and the subscriber receives
/// every message once, in order.
async fn publishing_resumes_after_restart(mode: StopMode) {
    let cluster = PgCluster::start().await;
    cluster.create_db("mqtt").await;
    let broker = cluster_broker(&cluster, "").await;
    let (mut sub, _) = V4Client::connect(v4_options(broker.addr, "resume-sub", false)).await;
    sub.subscribe("resume/t", QoS::AtLeastOnce).await;

    let n = 400;
    let stream = Stream::start(
        broker.addr,
        "resume-pub",
        "resume/t",
        n,
        10,
        Duration::from_millis(5),
    );
    stream.wait_acked(100, TIMEOUT, "before the restart").await;
    cluster.restart(mode).await;
    let back = Instant::now();
    stream
        .wait_acked(n, Duration::from_secs(30), "after the restart")
        .await;
    let resumed = stream
        .first_ack_after(back)
        .expect("acknowledgements after the restart");
    println!(
        "{mode:?} restart: first PUBACK {:?} after PostgreSQL answered again",
        resumed - back
    );
    let got = collect(&mut sub, n).await;
    assert_eq!(got, numbered(0..n), "every message once, in order");
    assert!(
        broker
            .logs()
            .contains("storing messages again: PostgreSQL is back"),
        "the end of the outage is logged"
    );
    stream.task.abort();
}

#[tokio::test]
async fn publishing_resumes_after_a_fast_restart() {
    publishing_resumes_after_restart(StopMode::Fast).await;
}

#[tokio::test]
async fn publishing_resumes_after_an_immediate_restart() {
    publishing_resumes_after_restart(StopMode::Immediate).await;
}

/// The loss seen after a database restart: publishes held while the database
/// was down are stored together when it is back and reach a subscriber as one
/// burst, more than its window and queue (`mqtt.max_queue_len`) take, so the
/// queue drops some. Those are stored, and the plugin replays them; the
/// session had recorded them as delivered when they were dropped and skipped
/// them in the replay, so they never arrived (not even after the subscriber
/// subscribed again), until the broker restarted.
#[tokio::test]
async fn a_burst_after_the_database_is_back_reaches_a_slow_subscriber_whole() {
    let cluster = PgCluster::start().await;
    cluster.create_db("mqtt").await;
    let broker = cluster_broker(&cluster, "mqtt.max_queue_len = 10\nmqtt.max_inflight = 5\n").await;
    let (mut sub, _) = V4Client::connect(v4_options(broker.addr, "burst-sub", false)).await;
    sub.subscribe("burst/t", QoS::AtLeastOnce).await;
    let pg = cluster.client("mqtt").await;
    wait_for_db(
        &pg,
        "select count(*) from mqtt_acked where clientid = 'burst-sub'",
        Some(1),
    )
    .await;
    drop(pg);

    cluster.stop(StopMode::Fast).await;
    let n = 60;
    // The whole burst is in flight at once (window larger than n).
    let stream = Stream::start(broker.addr, "burst-pub", "burst/t", n, 100, Duration::ZERO);
    broker
        .wait_for_log("cannot store messages (publishers are not acknowledged until this recovers)")
        .await;
    assert_eq!(
        stream.acked(),
        0,
        "nothing is acknowledged while nothing can be stored"
    );
    cluster.start_again().await;
    stream
        .wait_acked(n, Duration::from_secs(30), "once the database is back")
        .await;

    // The subscriber was not reading: 5 in flight, 10 queued, the rest dropped
    // by the session and left to the store.
    let got = collect(&mut sub, n).await;
    assert_eq!(got, numbered(0..n), "every message once, in order");
    // And again after subscribing again (as paho clients do on every connect).
    sub.subscribe("burst/t", QoS::AtLeastOnce).await;
    sub.expect_no_publish(Duration::from_millis(500)).await;
    stream.task.abort();
}

/// The mechanism of that loss, without a fault: an offline persistent
/// session whose queue is full drops stored messages; they come from the
/// store when the client is back.
#[tokio::test]
async fn stored_messages_a_full_queue_dropped_come_from_the_store() {
    let db = TestDb::create().await;
    let conf = pgsql_conf(&db, EMQX_DEFAULT_RULES);
    let broker = Broker::start_with_files(
        "plugins.load = backend_pgsql\nmqtt.max_queue_len = 5\nmqtt.max_inflight = 2\n",
        &[("backend_pgsql.conf", &conf)],
    )
    .await;
    let (mut sub, _) = V4Client::connect(v4_options(broker.addr, "full-q", false)).await;
    sub.subscribe("fullq/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    publish_all(broker.addr, "full-q-pub", "fullq/t", &numbered(0..30)).await;
    let (mut sub, ack) = V4Client::connect(v4_options(broker.addr, "full-q", false)).await;
    assert!(ack.session_present);
    let got = collect(&mut sub, 30).await;
    assert_eq!(
        got,
        numbered(0..30),
        "the 5 queued, then the 25 dropped, from the store"
    );
    // Subscribing again replays nothing: everything was acknowledged.
    let pg = db.client().await;
    let last = *stored_ids(&pg, "fullq/t").await.last().unwrap();
    wait_for_position(&pg, "full-q", "fullq/t", last).await;
    sub.subscribe("fullq/t", QoS::AtLeastOnce).await;
    sub.expect_no_publish(Duration::from_millis(500)).await;
}

/// The broker starts while PostgreSQL is down (EMQX does too): it serves
/// (connections, subscriptions, QoS 0), does not acknowledge the messages
/// it must store until the database answers, logs the outage once, and then
/// catches up by itself: the held messages are stored, acknowledged and
/// delivered, and the subscription made during the outage is registered,
/// so what it misses later is replayed.
#[tokio::test]
async fn the_broker_starts_and_serves_while_the_database_is_down() {
    let cluster = PgCluster::start().await;
    cluster.create_db("mqtt").await;
    cluster.stop(StopMode::Fast).await;
    let mut broker = cluster_broker(&cluster, "").await;
    broker.wait_for_log("does not answer; starting without it").await;

    let (mut sub, _) = V4Client::connect(v4_options(broker.addr, "boot-sub", false)).await;
    sub.subscribe("boot/t", QoS::AtLeastOnce).await;
    let (mut p0, _) = V4Client::connect(v4_options(broker.addr, "boot-p0", true)).await;
    p0.publish("boot/t", QoS::AtMostOnce, false, "qos0").await;
    assert_eq!(
        text(&sub.next_publish().await),
        "qos0",
        "QoS 0 is not stored: it goes out"
    );

    let stream = Stream::start(broker.addr, "boot-pub", "boot/t", 3, 10, Duration::ZERO);
    sub.expect_no_publish(Duration::from_secs(1)).await;
    assert_eq!(stream.acked(), 0, "nothing acknowledged before it is stored");

    cluster.start_again().await;
    stream
        .wait_acked(3, Duration::from_secs(30), "once the database answers")
        .await;
    let got = collect(&mut sub, 3).await;
    assert_eq!(got, numbered(0..3));
    let pg = cluster.client("mqtt").await;
    wait_for_position(&pg, "boot-sub", "boot/t", 3).await;

    // Registered: a message published while it is offline is replayed after
    // a crash of the broker.
    sub.disconnect().await;
    publish_all(broker.addr, "boot-pub2", "boot/t", &["late".to_string()]).await;
    broker.kill().await;
    broker.restart().await;
    let (mut sub, _) = V4Client::connect(v4_options(broker.addr, "boot-sub", false)).await;
    sub.subscribe("boot/t", QoS::AtLeastOnce).await;
    assert_eq!(text(&sub.next_publish().await), "late");
    let logs = broker.logs();
    assert_eq!(
        logs.matches("does not answer; starting without it").count(),
        1,
        "the outage at startup is logged once\n{logs}"
    );
    stream.task.abort();
}

/// A small filesystem of its own (tmpfs), unmounted on drop: the database's
/// disk that the test fills. Needs root (as the test command runs: it
/// installs packages), or `sudo` without a password.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: std::path::PathBuf, megabytes: u32) -> SmallDisk {
        std::fs::create_dir_all(&path).unwrap();
        let size = format!("size={megabytes}m");
        let args = ["-t", "tmpfs", "-o", &size, "tmpfs", path.to_str().unwrap()];
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .unwrap()
            .stdout
            == b"0\n";
        let status = if root {
            std::process::Command::new("mount").args(args).status()
        } else {
            std::process::Command::new("sudo")
                .arg("-n")
                .arg("mount")
                .args(args)
                .status()
        };
        assert!(
            status.is_ok_and(|s| s.success()),
            "cannot mount a tmpfs at {} (the disk-full test needs root or passwordless sudo)",
            path.display()
        );
        let chown = if root {
            std::process::Command::new("chown")
                .arg("postgres:")
                .arg(&path)
                .status()
        } else {
            Ok(std::process::ExitStatus::default())
        };
        assert!(chown.is_ok_and(|s| s.success()));
        SmallDisk { path }
    }

    /// Fills what is left with a file; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        let balloon = self.path.join("balloon");
        let mut f = std::fs::File::create(&balloon).unwrap();
        let chunk = vec![0u8; 1 << 16];
        use std::io::Write as _;
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        balloon
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// The database's disk fills up: PostgreSQL refuses to extend the table
/// (SQLSTATE 53100). Publishes are held, not acknowledged, not lost, and go
/// through once space is freed, without anyone restarting anything.
#[tokio::test]
async fn a_full_disk_holds_publishes_until_there_is_space_again() {
    let cluster = PgCluster::start().await;
    let disk = SmallDisk::mount(cluster.tablespace_dir("small"), 64);
    let admin = cluster.client("postgres").await;
    for sql in [
        format!("CREATE TABLESPACE small LOCATION '{}'", disk.path.display()),
        "CREATE DATABASE mqtt TABLESPACE small".to_string(),
    ] {
        admin.simple_query(&sql).await.unwrap();
    }
    let broker = cluster_broker(&cluster, "").await;
    let (mut sub, _) = V4Client::connect(v4_options(broker.addr, "full-sub", false)).await;
    sub.subscribe("disk/t", QoS::AtLeastOnce).await;
    publish_all(broker.addr, "full-p0", "disk/t", &["before".to_string()]).await;
    assert_eq!(text(&sub.next_publish().await), "before");

    let balloon = disk.fill();
    // Large and incompressible: the table must grow into the full disk.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let payload: Vec<u8> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut opts = v4_options(broker.addr, "full-pub", true);
    opts.set_inflight(10);
    let (client, mut events) = AsyncClient::new(opts, 16);
    for _ in 0..3 {
        client
            .publish("disk/t", QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
    }
    let mut acked = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while let Ok(ev) = tokio::time::timeout_at(until, events.poll()).await {
        if let Ok(Event::Incoming(Incoming::PubAck(_))) = ev {
            acked += 1;
        }
    }
    assert_eq!(acked, 0, "nothing acknowledged while the disk is full");
    broker.wait_for_log("cannot store messages").await;
    assert!(
        broker.logs().contains("No space left on device"),
        "the cause is logged"
    );

    std::fs::remove_file(&balloon).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked < 3 {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => acked += 1,
            Ok(_) => {}
            Err(_) => panic!("{acked} of 3 acknowledged after space was freed"),
        }
    }
    for _ in 0..3 {
        assert_eq!(sub.next_publish().await.payload.len(), 100_000);
    }
    broker
        .wait_for_log("storing messages again: PostgreSQL is back")
        .await;
}

/// Found by the chaos test: a broker that restarted while PostgreSQL was
/// down gave a persistent client a new session (session present 0, no
/// subscriptions), and the messages stored for it never reached it. The
/// client is now refused (3.1.1 CONNACK 3, server unavailable) until its
/// stored session can be read; then it resumes with what it missed.
#[tokio::test]
async fn a_stored_session_is_not_replaced_by_a_new_one_while_postgresql_is_down() {
    let cluster = PgCluster::start().await;
    cluster.create_db("mqtt").await;
    let conf = cluster_conf(&cluster, SESSION_RULE);
    let mut broker =
        Broker::start_with_files("plugins.load = backend_pgsql\n", &[("backend_pgsql.conf", &conf)]).await;
    let (mut sub, _) = V4Client::connect(v4_options(broker.addr, "kept-sub", false)).await;
    sub.subscribe("kept/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let (mut publisher, _) = V4Client::connect(v4_options(broker.addr, "kept-pub", true)).await;
    publisher
        .publish("kept/t", QoS::AtLeastOnce, false, "while away")
        .await;
    publisher.disconnect().await;

    // The broker restarts while PostgreSQL is stopped.
    cluster.stop(StopMode::Fast).await;
    broker.restart().await;
    let refused = support::auth::v4_refusal(v4_options(broker.addr, "kept-sub", false)).await;
    assert_eq!(refused, rumqttc::ConnectReturnCode::ServiceUnavailable);
    broker.wait_for_log("the stored session cannot be read now").await;

    // PostgreSQL is back: the client resumes its session, message included.
    cluster.start_again().await;
    broker.wait_for_log("answers: connected").await;
    let (mut sub, ack) = V4Client::connect(v4_options(broker.addr, "kept-sub", false)).await;
    assert!(ack.session_present, "the stored session is resumed");
    let m = sub.next_publish().await;
    assert_eq!(text(&m), "while away");
}
