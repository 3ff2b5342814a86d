//! A cluster: three Postbox nodes on one PostgreSQL behave as one broker.
//! Clients are rumqttc; each node is the real binary on `127.0.0.1:0`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::time::Duration;

use rumqttc::QoS;
use support::pgsql::*;
use support::*;
use tokio::time::Instant;

const SECRET: &str = "cluster-test-secret";

fn node_conf(db: &TestDb, name: &str, extra: &str) -> String {
    format!(
        "node.name = {name}\ncluster.enable = true\ncluster.database = {}\ncluster.listen = 127.0.0.1:0\n\
         cluster.secret = {SECRET}\ncluster.heartbeat = 200ms\ncluster.node_timeout = 2s\n{extra}",
        db.url
    )
}

/// `n` nodes of one cluster on `db`, without plugins, once every one has
/// registered.
async fn nodes(db: &TestDb, n: usize, extra: &str) -> Vec<Broker> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(Broker::start(&node_conf(db, &format!("node-{i}"), extra)).await);
    }
    formed(db, n).await;
    out
}

/// Waits until `n` nodes are registered and beating.
async fn formed(db: &TestDb, n: usize) {
    let pg = db.client().await;
    // The first node creates the tables as it starts.
    wait_for_db(
        &pg,
        "select count(*) from pg_tables where tablename = 'postbox_node'",
        Some(1),
    )
    .await;
    wait_for_db(
        &pg,
        "select count(*) from postbox_node where heartbeat_at > now() - interval '1 second'",
        Some(n as i64),
    )
    .await;
}

/// Publishes `probe` messages on `from` until `sub` receives one: the
/// cluster has formed as far as `sub`'s subscription is concerned (the
/// other node knows its route and has a link). Returns the probes received.
async fn until_routed(from: &Broker, sub: &mut V4Client, topic: &str) {
    let (mut p, _) = V4Client::connect(v4_options(from.addr, "prober", true)).await;
    let deadline = Instant::now() + TIMEOUT;
    for i in 0.. {
        assert!(
            Instant::now() < deadline,
            "the cluster did not route {topic} within {TIMEOUT:?}"
        );
        p.publish(topic, QoS::AtMostOnce, false, format!("probe-{i}"))
            .await;
        let until = Instant::now() + Duration::from_millis(200);
        while let Some(ev) = sub
            .poll_once(until.saturating_duration_since(Instant::now()))
            .await
        {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(m))) = ev {
                if text(&m).starts_with("probe-") {
                    p.disconnect().await;
                    return;
                }
            }
        }
    }
}

/// Drains the probes still on their way, then returns the next non-probe publish.
async fn next_real(c: &mut V4Client) -> rumqttc::Publish {
    loop {
        let p = c.next_publish().await;
        if !text(&p).starts_with("probe-") {
            return p;
        }
    }
}

#[tokio::test]
async fn a_subscriber_on_one_node_receives_what_is_published_on_another_in_order() {
    let db = TestDb::create().await;
    let cluster = nodes(&db, 3, "").await;
    let (mut sub, _) = V4Client::connect(v4_options(cluster[1].addr, "sub-b", true)).await;
    sub.subscribe("live/#", QoS::ExactlyOnce).await;
    until_routed(&cluster[0], &mut sub, "live/probe").await;

    let (mut publ, _) = V4Client::connect(v4_options(cluster[0].addr, "pub-a", true)).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .cycle()
        .take(30)
        .enumerate()
    {
        publ.publish("live/t", qos, false, format!("m{i}")).await;
    }
    let mut got = Vec::new();
    while got.len() < 30 {
        let p = next_real(&mut sub).await;
        got.push((text(&p), p.qos));
    }
    let want: Vec<(String, QoS)> = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .cycle()
        .take(30)
        .enumerate()
        .map(|(i, q)| (format!("m{i}"), q))
        .collect();
    assert_eq!(got, want, "every message, once, in order, at its QoS");
    // The third node has no subscriber: nothing is sent there.
    sub.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_shared_group_with_members_on_two_nodes_splits_the_messages() {
    let db = TestDb::create().await;
    let cluster = nodes(&db, 2, "").await;
    let (mut a, _) = V4Client::connect(v4_options(cluster[0].addr, "member-a", true)).await;
    a.subscribe("$share/g/work/#", QoS::AtLeastOnce).await;
    let (mut b, _) = V4Client::connect(v4_options(cluster[1].addr, "member-b", true)).await;
    b.subscribe("$share/g/work/#", QoS::AtLeastOnce).await;
    // A plain subscriber on node 1 tells when node 0 routes there.
    let (mut watch, _) = V4Client::connect(v4_options(cluster[1].addr, "watch", true)).await;
    watch.subscribe("work/probe", QoS::AtMostOnce).await;
    until_routed(&cluster[0], &mut watch, "work/probe").await;
    // Drop the probes the members got.
    let drain = |c: &mut V4Client| {
        let n = c.backlog.len();
        c.backlog.clear();
        n
    };
    drain(&mut a);
    drain(&mut b);

    let n = 40;
    let payloads: Vec<String> = (0..n).map(|i| format!("job{i}")).collect();
    publish_all(cluster[0].addr, "boss", "work/jobs", &payloads).await;
    let mut got: Vec<String> = Vec::new();
    let (mut on_a, mut on_b) = (0, 0);
    let deadline = Instant::now() + TIMEOUT;
    while got.len() < n && Instant::now() < deadline {
        for (c, count) in [(&mut a, &mut on_a), (&mut b, &mut on_b)] {
            if let Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) =
                c.poll_once(Duration::from_millis(20)).await
            {
                if text(&p).starts_with("job") {
                    got.push(text(&p));
                    *count += 1;
                }
            }
        }
    }
    got.sort();
    let mut want = payloads.clone();
    want.sort();
    assert_eq!(
        got, want,
        "each message to exactly one member of the group, cluster-wide"
    );
    assert!(
        on_a > 0 && on_b > 0,
        "both nodes' members get some ({on_a} and {on_b})"
    );
}

#[tokio::test]
async fn a_will_published_on_one_node_reaches_a_subscriber_on_another() {
    let db = TestDb::create().await;
    let cluster = nodes(&db, 2, "").await;
    let (mut sub, _) = V4Client::connect(v4_options(cluster[1].addr, "will-watch", true)).await;
    sub.subscribe("wills/#", QoS::AtLeastOnce).await;
    until_routed(&cluster[0], &mut sub, "wills/probe").await;
    let mut opts = v4_options(cluster[0].addr, "dying", true);
    opts.set_last_will(rumqttc::LastWill::new(
        "wills/dying",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (c, _) = V4Client::connect(opts).await;
    drop(c); // the socket closes without DISCONNECT
    let p = next_real(&mut sub).await;
    assert_eq!((p.topic.as_str(), text(&p).as_str()), ("wills/dying", "gone"));
    sub.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn retained_messages_and_mqtt5_properties_cross_nodes() {
    let db = TestDb::create().await;
    let cluster = nodes(&db, 2, "").await;
    // A node with no subscriber yet still keeps the retained message.
    let (mut watch, _) = V4Client::connect(v4_options(cluster[1].addr, "ret-watch", true)).await;
    watch.subscribe("ret/probe", QoS::AtMostOnce).await;
    until_routed(&cluster[0], &mut watch, "ret/probe").await;
    let (mut p, _) = V5Client::connect(v5_options(cluster[0].addr, "ret-pub", true)).await;
    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
        content_type: Some("text/plain".into()),
        user_properties: vec![("a".into(), "1".into()), ("b".into(), "2".into())],
        response_topic: Some("ret/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr")),
        message_expiry_interval: Some(3600),
        ..Default::default()
    };
    p.client
        .publish_with_properties(
            "ret/state",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            true,
            "on",
            props,
        )
        .await
        .unwrap();
    p.poll_until(|ev| {
        matches!(
            ev,
            rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_))
        )
        .then_some(())
    })
    .await;
    // Subscribing on the other node later: the retained message is there,
    // with its properties.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (mut s, _) = V5Client::connect(v5_options(cluster[1].addr, "ret-sub", true)).await;
        s.subscribe("ret/state", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
            .await;
        match s.poll_once(Duration::from_millis(300)).await {
            Some(Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(m)))) => {
                assert_eq!(&m.payload[..], b"on");
                assert!(m.retain);
                let props = m.properties.expect("properties");
                assert_eq!(props.content_type.as_deref(), Some("text/plain"));
                assert_eq!(
                    props.user_properties,
                    vec![("a".into(), "1".into()), ("b".into(), "2".into())]
                );
                assert_eq!(props.response_topic.as_deref(), Some("ret/reply"));
                assert_eq!(props.correlation_data.as_deref(), Some(&b"corr"[..]));
                assert!(props
                    .message_expiry_interval
                    .is_some_and(|e| e <= 3600 && e > 3500));
                break;
            }
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "the retained message did not reach the other node"
                );
                s.disconnect().await;
            }
        }
    }
}

#[tokio::test]
async fn a_killed_node_is_declared_down_and_its_routes_released() {
    let db = TestDb::create().await;
    let mut cluster = nodes(&db, 3, "").await;
    let (mut sub, _) = V4Client::connect(v4_options(cluster[2].addr, "doomed-sub", true)).await;
    sub.subscribe("down/#", QoS::AtLeastOnce).await;
    until_routed(&cluster[0], &mut sub, "down/probe").await;
    let pg = db.client().await;
    wait_for_db(
        &pg,
        "select count(*) from postbox_route where node = 'node-2'",
        Some(1),
    )
    .await;
    cluster[2].kill().await;
    // No heartbeat for node_timeout (2 s): declared down, rows released.
    wait_for_db(
        &pg,
        "select count(*) from postbox_node where name = 'node-2'",
        Some(0),
    )
    .await;
    wait_for_db(
        &pg,
        "select count(*) from postbox_route where node = 'node-2'",
        Some(0),
    )
    .await;
    assert_eq!(
        query_opt_i64(&pg, "select count(*) from postbox_node").await,
        Some(2),
        "the two others stay"
    );
    // It comes back and joins again.
    cluster[2].restart().await;
    wait_for_db(&pg, "select count(*) from postbox_node", Some(3)).await;
    let (mut sub, _) = V4Client::connect(v4_options(cluster[2].addr, "back-sub", true)).await;
    sub.subscribe("down/#", QoS::AtLeastOnce).await;
    until_routed(&cluster[1], &mut sub, "down/probe").await;
}

/// `n` nodes with the PostgreSQL backend (shipped rules: EMQX's plus
/// persistent sessions) on `db`.
async fn nodes_with_store(db: &TestDb, n: usize) -> Vec<Broker> {
    let conf = pgsql_conf(db, &format!("{EMQX_DEFAULT_RULES}\n{SESSION_RULE}"));
    let mut out = Vec::new();
    for i in 0..n {
        let extra = node_conf(db, &format!("node-{i}"), "plugins.load = backend_pgsql\n");
        out.push(Broker::start_with_files(&extra, &[("backend_pgsql.conf", &conf)]).await);
    }
    formed(db, n).await;
    out
}

#[tokio::test]
async fn the_same_client_id_on_another_node_takes_the_connection_over() {
    let db = TestDb::create().await;
    let cluster = nodes(&db, 2, "").await;
    let (mut first, _) = V5Client::connect(v5_options(cluster[0].addr, "roamer", true)).await;
    first
        .subscribe("roam/t", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    let (mut second, _) = V5Client::connect(v5_options(cluster[1].addr, "roamer", true)).await;
    let d = first.next_disconnect().await;
    assert_eq!(
        d.reason_code,
        rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver
    );
    second
        .subscribe("roam/t", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    let pg = db.client().await;
    wait_for_db(
        &pg,
        "select count(*) from postbox_client where clientid = 'roamer' and node = 'node-1'",
        Some(1),
    )
    .await;
}

#[tokio::test]
async fn simultaneous_connects_to_two_nodes_leave_one_live_connection() {
    let db = TestDb::create().await;
    let cluster = nodes(&db, 2, "").await;
    for round in 0..5 {
        let id = format!("twin-{round}");
        let (a, b) = tokio::join!(
            V4Client::try_connect(v4_options(cluster[0].addr, &id, true)),
            V4Client::try_connect(v4_options(cluster[1].addr, &id, true))
        );
        let mut live = Vec::new();
        for c in [a, b].into_iter().flatten() {
            live.push(c.0);
        }
        // Each connection that got its CONNACK either stays or is closed;
        // exactly one stays.
        let mut closed = 0;
        for c in live.iter_mut() {
            if let Some(Err(_)) = c.poll_once(Duration::from_millis(1500)).await {
                closed += 1;
            }
        }
        let open = live.len() - closed;
        assert_eq!(
            open,
            1,
            "round {round}: {} connected, {closed} closed",
            live.len()
        );
    }
}

/// Whether the broker closes `c` within `limit` (3.1.1: no DISCONNECT,
/// the connection just ends); what arrives meanwhile is read and dropped.
async fn closed_within(c: &mut V4Client, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        if let Some(Err(_)) = c.poll_once(left).await {
            return true;
        }
    }
}

/// Found by the cluster chaos test: a client that leaves one node and at
/// once connects to another raced the first node's release of its row, and
/// the claim failed: the connection was attached unclaimed, so a third node
/// it connected to next did not ask that one to let go.
#[tokio::test]
async fn a_client_hopping_between_nodes_never_keeps_two_connections() {
    let db = TestDb::create().await;
    let cluster = nodes(&db, 3, "").await;
    let addrs: Vec<_> = cluster.iter().map(|b| b.addr).collect();
    // Many clients hop at once: the race needs a release and a claim of
    // one client id to overlap in the database.
    let hoppers = (0..20).map(|h| {
        let addrs = addrs.clone();
        tokio::spawn(async move {
            for round in 0..10 {
                let id = format!("hopper-{h}-{round}");
                let (first, _) = V4Client::connect(v4_options(addrs[0], &id, true)).await;
                first.disconnect().await;
                let (mut second, _) = V4Client::connect(v4_options(addrs[1], &id, true)).await;
                let (third, _) = V4Client::connect(v4_options(addrs[2], &id, true)).await;
                // The connection on the second node is closed (3.1.1: no DISCONNECT).
                assert!(
                    closed_within(&mut second, Duration::from_secs(5)).await,
                    "{id}: the second node kept its connection after the client connected to the third"
                );
                third.disconnect().await;
            }
        })
    });
    for h in hoppers.collect::<Vec<_>>() {
        h.await.expect("a hopper failed");
    }
}

/// Found by the cluster chaos test: a connection that took the client id
/// over on the same node, then the end of the session it replaced, released
/// the new connection's claim; a node the client connected to next found
/// no owner to ask, and both connections stayed.
#[tokio::test]
async fn a_takeover_on_one_node_then_a_move_to_another_leaves_one_connection() {
    let db = TestDb::create().await;
    let cluster = nodes(&db, 2, "").await;
    let pg = db.client().await;
    for round in 0..5 {
        let id = format!("twice-{round}");
        let (mut first, _) = V4Client::connect(v4_options(cluster[0].addr, &id, true)).await;
        let (mut second, _) = V4Client::connect(v4_options(cluster[0].addr, &id, true)).await;
        // The first connection is closed by the takeover on its own node.
        while !matches!(first.poll_once(TIMEOUT).await, Some(Err(_)) | None) {}
        // The row still names node-0 (the end of the replaced session did not release it).
        wait_for_db(
            &pg,
            &format!("select count(*) from postbox_client where clientid = '{id}' and node = 'node-0'"),
            Some(1),
        )
        .await;
        let (third, _) = V4Client::connect(v4_options(cluster[1].addr, &id, true)).await;
        assert!(
            closed_within(&mut second, Duration::from_secs(5)).await,
            "{id}: node-0 kept its connection after the client moved to node-1"
        );
        third.disconnect().await;
    }
}

#[tokio::test]
async fn a_persistent_session_moves_to_another_node_with_everything_it_missed() {
    let db = TestDb::create().await;
    let cluster = nodes_with_store(&db, 2).await;
    let pg = db.client().await;
    let mut opts = v4_options(cluster[0].addr, "mover", false);
    opts.set_manual_acks(true);
    let (mut c, _) = V4Client::connect(opts).await;
    c.subscribe("move/t", QoS::AtLeastOnce).await;
    publish_all(cluster[0].addr, "pub-a", "move/t", &numbered(0..3)).await;
    for i in 0..3 {
        let p = c.next_publish().await;
        assert_eq!(text(&p), format!("m{i}"));
        if i < 2 {
            ack_now(&mut c, &p).await;
        }
    }
    // m2 is not acknowledged. The client moves to node 1 (A's connection
    // is still open: the cluster takes it over).
    let ids = stored_ids(&pg, "move/t").await;
    wait_for_position(&pg, "mover", "move/t", ids[1]).await;
    let mut opts = v4_options(cluster[1].addr, "mover", false);
    opts.set_manual_acks(true);
    let (mut moved, ack) = V4Client::connect(opts).await;
    assert!(ack.session_present, "the session followed the client");
    c.expect_disconnected().await;
    publish_all(cluster[1].addr, "pub-b", "move/t", &strings(&["m3"])).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let p = moved.next_publish().await;
        ack_now(&mut moved, &p).await;
        got.push(text(&p));
    }
    assert_eq!(
        got,
        ["m2", "m3"],
        "the unacknowledged one, then the new one; nothing acknowledged again"
    );
    moved.expect_no_publish(Duration::from_millis(500)).await;
}

/// Found by the cluster chaos test: messages a client acknowledged above
/// its read position (one below them still in flight) were known only to
/// the node that received the acknowledgements, so the node the session
/// moved to delivered them again.
#[tokio::test]
async fn a_session_that_moves_is_not_sent_again_what_it_acknowledged_above_a_message_in_flight() {
    let db = TestDb::create().await;
    let cluster = nodes_with_store(&db, 2).await;
    let pg = db.client().await;
    let mut opts = v4_options(cluster[0].addr, "gapper", false);
    opts.set_manual_acks(true);
    let (mut c, _) = V4Client::connect(opts).await;
    c.subscribe("gap/t", QoS::AtLeastOnce).await;
    publish_all(cluster[0].addr, "pub-a", "gap/t", &numbered(0..3)).await;
    ack_all_but_the_first_of_three(&mut c).await;
    wait_for_acked_above(&pg, "gapper", "gap/t", 2).await;

    let mut opts = v4_options(cluster[1].addr, "gapper", false);
    opts.set_manual_acks(true);
    let (mut moved, ack) = V4Client::connect(opts).await;
    assert!(ack.session_present);
    c.expect_disconnected().await;
    let p = moved.next_publish().await;
    assert_eq!(text(&p), "m0", "the one in flight comes again");
    ack_now(&mut moved, &p).await;
    moved.expect_no_publish(Duration::from_millis(500)).await;
    let ids = stored_ids(&pg, "gap/t").await;
    wait_for_position(&pg, "gapper", "gap/t", ids[2]).await;
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// A persistent subscriber (manual acks) that records every payload, and
/// reconnects to `fallback` when its node goes away.
fn roaming_subscriber(
    id: String,
    first: std::net::SocketAddr,
    fallback: std::net::SocketAddr,
    filter: &'static str,
    got: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut addr = first;
        let mut connects = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let mut opts = v4_options(addr, &id, false);
            opts.set_manual_acks(true);
            let (client, mut events) = rumqttc::AsyncClient::new(opts, 1024);
            if connects == 0 {
                client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
            }
            loop {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return connects;
                }
                match tokio::time::timeout(Duration::from_millis(200), events.poll()).await {
                    Err(_) => continue,
                    Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))) => connects += 1,
                    Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                        got.lock().unwrap().push(text(&p));
                        let _ = client.try_ack(&p);
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => break,
                }
            }
            // The node went away (or refused us while it was going): the
            // client goes to another node, with its session.
            addr = fallback;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        connects
    })
}

#[tokio::test]
async fn a_node_killed_under_load_loses_nothing_acknowledged() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let db = TestDb::create().await;
    let mut cluster = nodes_with_store(&db, 3).await;
    let pg = db.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut subs = Vec::new();
    for i in 0..3 {
        let got: Arc<Mutex<Vec<String>>> = Arc::default();
        let id = format!("loss-sub-{i}");
        let task = roaming_subscriber(
            id.clone(),
            cluster[2].addr,
            cluster[0].addr,
            "load/#",
            Arc::clone(&got),
            Arc::clone(&stop),
        );
        subs.push((id, got, task));
    }
    for (id, _, _) in &subs {
        wait_for_db(
            &pg,
            &format!("select count(*) from mqtt_acked where clientid = '{id}'"),
            Some(1),
        )
        .await;
    }
    // Publishers on the two nodes that stay, each message acknowledged
    // (stored) before the next.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut publishers = Vec::new();
    for (k, node) in [0usize, 1].into_iter().enumerate() {
        let (addr, acked) = (cluster[node].addr, Arc::clone(&acked));
        publishers.push(tokio::spawn(async move {
            let (mut p, _) = V4Client::connect(v4_options(addr, &format!("loss-pub-{k}"), true)).await;
            for i in 0..150 {
                let payload = format!("p{k}-{i:03}");
                p.publish("load/t", QoS::AtLeastOnce, false, payload.clone())
                    .await;
                acked.lock().unwrap().push(payload);
            }
        }));
    }
    // Under load: the subscribers' node dies.
    let deadline = Instant::now() + TIMEOUT;
    while subs.iter().any(|(_, got, _)| got.lock().unwrap().len() < 30) {
        assert!(Instant::now() < deadline, "the subscribers did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster[2].kill().await;
    for p in publishers {
        p.await.unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 300);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing: Vec<(String, usize)> = subs
            .iter()
            .map(|(id, got, _)| {
                let got = got.lock().unwrap();
                (id.clone(), acked.iter().filter(|a| !got.contains(a)).count())
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged messages missing after the node was killed: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for (id, got, task) in subs {
        let connects = task.await.unwrap();
        let got = got.lock().unwrap();
        let repeats = got.len() - got.iter().collect::<std::collections::HashSet<_>>().len();
        println!(
            "{id}: {} received, {repeats} again (in flight at the kill), {connects} connects",
            got.len()
        );
        assert!(connects >= 2, "{id} moved to another node");
    }
}

#[tokio::test]
async fn a_node_that_shuts_down_leaves_at_once() {
    let db = TestDb::create().await;
    let mut cluster = nodes(&db, 2, "").await;
    let pg = db.client().await;
    let (mut sub, _) = V4Client::connect(v4_options(cluster[1].addr, "leaver", true)).await;
    sub.subscribe("leave/#", QoS::AtLeastOnce).await;
    until_routed(&cluster[0], &mut sub, "leave/probe").await;
    assert!(cluster[1].terminate().await.success());
    // Gone from the table right away (not after node_timeout): its routes
    // and clients are released.
    assert_eq!(
        query_opt_i64(&pg, "select count(*) from postbox_node where name = 'node-1'").await,
        Some(0)
    );
    assert_eq!(
        query_opt_i64(&pg, "select count(*) from postbox_route where node = 'node-1'").await,
        Some(0)
    );
    assert!(cluster[1].logs().contains("cluster: left the cluster"));
}

/// A member that disconnects with messages of its shared group
/// unacknowledged, and no other member on its node: a member on another
/// node gets them (MQTT 5 4.8.2), so every message reaches the group.
#[tokio::test]
async fn a_shared_members_unacknowledged_messages_go_to_a_member_on_another_node() {
    let db = TestDb::create().await;
    let cluster = nodes(&db, 2, "").await;
    let mut a_opts = v4_options(cluster[0].addr, "member-a", false);
    a_opts.set_manual_acks(true);
    let (mut a, _) = V4Client::connect(a_opts).await;
    a.subscribe("$share/g/hand/#", QoS::AtLeastOnce).await;
    let (mut b, _) = V4Client::connect(v4_options(cluster[1].addr, "member-b", true)).await;
    b.subscribe("$share/g/hand/#", QoS::AtLeastOnce).await;
    let (mut watch, _) = V4Client::connect(v4_options(cluster[1].addr, "watch", true)).await;
    watch.subscribe("hand/probe", QoS::AtMostOnce).await;
    until_routed(&cluster[0], &mut watch, "hand/probe").await;
    // Node 0 knows node 1's member once node 1 took a probe; drop the probes.
    let strip = |c: &mut V4Client| c.backlog.clear();
    strip(&mut a);
    strip(&mut b);

    let n = 10;
    let payloads: Vec<String> = (0..n).map(|i| format!("job{i}")).collect();
    publish_all(cluster[0].addr, "boss", "hand/jobs", &payloads).await;
    let (mut at_a, mut at_b): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + TIMEOUT;
    while at_a.len() + at_b.len() < n {
        assert!(Instant::now() < deadline, "only {at_a:?} and {at_b:?} arrived");
        for (c, got) in [(&mut a, &mut at_a), (&mut b, &mut at_b)] {
            if let Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) =
                c.poll_once(Duration::from_millis(20)).await
            {
                if text(&p).starts_with("job") {
                    got.push(text(&p));
                }
            }
        }
    }
    assert!(
        !at_a.is_empty() && !at_b.is_empty(),
        "in turn: {at_a:?} and {at_b:?}"
    );
    // A acknowledged none of its messages; it leaves.
    a.disconnect().await;
    for _ in 0..at_a.len() {
        at_b.push(text(&b.next_publish().await));
    }
    b.expect_no_publish(Duration::from_millis(300)).await;
    let unique: std::collections::BTreeSet<String> = at_b.iter().cloned().collect();
    assert_eq!(
        unique,
        payloads.iter().cloned().collect(),
        "every message reached the group"
    );
}

/// A durable shared group with members on two nodes: each node records what
/// its members acknowledged, and the group's one read position still moves
/// past every message (what the other node recorded is no gap).
#[tokio::test]
async fn a_shared_groups_position_moves_with_members_on_two_nodes() {
    let db = TestDb::create().await;
    let cluster = nodes_with_store(&db, 2).await;
    let pg = db.client().await;
    let (mut a, _) = V4Client::connect(v4_options(cluster[0].addr, "pos-a", true)).await;
    a.subscribe("$share/g/split/#", QoS::AtLeastOnce).await;
    let (mut b, _) = V4Client::connect(v4_options(cluster[1].addr, "pos-b", true)).await;
    b.subscribe("$share/g/split/#", QoS::AtLeastOnce).await;
    let (mut watch, _) = V4Client::connect(v4_options(cluster[1].addr, "pos-watch", true)).await;
    watch.subscribe("split/probe", QoS::AtMostOnce).await;
    until_routed(&cluster[0], &mut watch, "split/probe").await;

    let n = 20;
    let payloads: Vec<String> = (0..n).map(|i| format!("job{i}")).collect();
    publish_all(cluster[0].addr, "boss", "split/jobs", &payloads).await;
    let (mut on_a, mut on_b) = (0, 0);
    let deadline = Instant::now() + TIMEOUT;
    while on_a + on_b < n {
        assert!(Instant::now() < deadline, "only {on_a} + {on_b} arrived");
        for (c, count) in [(&mut a, &mut on_a), (&mut b, &mut on_b)] {
            while let Some(ev) = c.backlog.pop_front() {
                if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
                    *count += usize::from(text(&p).starts_with("job"));
                }
            }
            if let Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) =
                c.poll_once(Duration::from_millis(20)).await
            {
                *count += usize::from(text(&p).starts_with("job"));
            }
        }
    }
    assert!(
        on_a > 0 && on_b > 0,
        "both nodes' members got some ({on_a} and {on_b})"
    );
    // Acknowledged by both (rumqttc acknowledges on receipt): the position passes them all.
    let last = *stored_ids(&pg, "split/jobs").await.last().unwrap();
    // Keep both event loops turning while the positions are written.
    let check = format!(
        "select (mid >= {last})::int4::int8 from mqtt_acked where clientid = '$share/g' and topic = '$share/g/split/#'"
    );
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if query_opt_i64(&pg, &check).await == Some(1) {
            break;
        }
        if Instant::now() >= deadline {
            let rows = pg
                .query(
                    "select clientid::text, topic::text, mid::int8, acked_above::text from mqtt_acked",
                    &[],
                )
                .await
                .unwrap();
            let rows: Vec<(String, String, i64, Option<String>)> = rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect();
            panic!("the group's position did not pass {last}: {rows:?}");
        }
        let _ = a.poll_once(Duration::from_millis(20)).await;
        let _ = b.poll_once(Duration::from_millis(20)).await;
    }
}

/// The order of acknowledgements that left a node's own idea of the group's
/// position behind the recorded one: node Y's member acknowledges its
/// messages but the last, node X's member then acknowledges its own (the
/// position moves to just below the last), then Y's member acknowledges the
/// last. The position passes it: Y reads from the recorded position, not
/// from its own, where X's messages, which X moved the position over, would
/// look unacknowledged (it stayed one below, with the last in acked_above).
#[tokio::test]
async fn a_shared_groups_position_passes_the_last_ack_of_a_node_that_fell_behind() {
    let db = TestDb::create().await;
    let cluster = nodes_with_store(&db, 2).await;
    let pg = db.client().await;
    let member = |i: usize, id: &'static str| {
        let mut o = v4_options(cluster[i].addr, id, true);
        o.set_manual_acks(true);
        o
    };
    let (mut a, _) = V4Client::connect(member(0, "ord-a")).await;
    a.subscribe("$share/g/ord/jobs/#", QoS::AtLeastOnce).await;
    let (mut b, _) = V4Client::connect(member(1, "ord-b")).await;
    b.subscribe("$share/g/ord/jobs/#", QoS::AtLeastOnce).await;
    let (mut watch, _) = V4Client::connect(v4_options(cluster[1].addr, "ord-watch", true)).await;
    watch.subscribe("ord/probe", QoS::AtMostOnce).await;
    // Node 0 knows node 1's member once node 1's later subscription routes.
    until_routed(&cluster[0], &mut watch, "ord/probe").await;

    let payloads: Vec<String> = (0..4).map(|i| format!("job{i}")).collect();
    publish_all(cluster[0].addr, "ord-boss", "ord/jobs", &payloads).await;
    let mut got: [Vec<rumqttc::Publish>; 2] = [Vec::new(), Vec::new()];
    let deadline = Instant::now() + TIMEOUT;
    while got[0].len() + got[1].len() < payloads.len() {
        assert!(Instant::now() < deadline, "only {got:?} arrived");
        for (i, c) in [&mut a, &mut b].into_iter().enumerate() {
            if let Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) =
                c.poll_once(Duration::from_millis(20)).await
            {
                got[i].push(p);
            }
        }
    }
    let id_of = |p: &rumqttc::Publish| {
        format!(
            "(select id from mqtt_msg where topic = 'ord/jobs' and payload = convert_to({}, 'UTF8'))",
            sql_literal(&text(p))
        )
    };
    // Recorded: `mid` passed it (`passed`), or it is in acked_above.
    let recorded = |p: &rumqttc::Publish, passed: bool| {
        let above = if passed { "" } else { " or {id} = any(acked_above)" };
        format!(
            "select count(*) from mqtt_acked where clientid = '$share/g' and topic = '$share/g/ord/jobs/#'
             and (mid >= {{id}}{above})"
        )
        .replace("{id}", &id_of(p))
    };
    // Y holds the last message; X, some before it.
    let y = usize::from(got[1].iter().any(|p| text(p) == "job3"));
    let x = 1 - y;
    assert!(!got[x].is_empty(), "in turn: {got:?}");
    let last = got[y]
        .pop()
        .filter(|p| text(p) == "job3")
        .expect("job3 arrives last");
    let mut clients = [a, b];
    // Y's but the last (above X's: in acked_above), then X's (the position
    // passes them: only the last is left), then the last.
    let steps = [
        (y, got[y].clone(), false),
        (x, got[x].clone(), true),
        (y, vec![last], true),
    ];
    for (who, ps, passed) in steps {
        for p in &ps {
            clients[who].client.ack(p).await.expect("ack queued");
        }
        for p in &ps {
            let deadline = Instant::now() + TIMEOUT;
            while query_opt_i64(&pg, &recorded(p, passed)).await != Some(1) {
                if Instant::now() >= deadline {
                    let row = pg
                        .query_one(
                            "select mid::int8, acked_above::text from mqtt_acked where clientid = '$share/g'",
                            &[],
                        )
                        .await
                        .unwrap();
                    let row: (i64, Option<String>) = (row.get(0), row.get(1));
                    panic!(
                        "{} not recorded (passed: {passed}): (mid, acked_above) {row:?}",
                        text(p)
                    );
                }
                // Both event loops turn: the acknowledgements go out from them.
                for c in clients.iter_mut() {
                    let _ = c.poll_once(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// A durable shared group with a member on one node holding messages
/// unacknowledged: a member that joins on another node is not replayed
/// them (they are the first member's), and gets them, once, when the first
/// member leaves.
#[tokio::test]
async fn a_member_joining_on_another_node_does_not_get_what_a_member_holds() {
    let db = TestDb::create().await;
    let cluster = nodes_with_store(&db, 2).await;
    let mut a_opts = v4_options(cluster[0].addr, "holder", false);
    a_opts.set_manual_acks(true);
    let (mut a, _) = V4Client::connect(a_opts).await;
    a.subscribe("$share/g/late/#", QoS::AtLeastOnce).await;
    // Node 1 knows node 0's member once a probe published there reaches it.
    let (mut p, _) = V4Client::connect(v4_options(cluster[1].addr, "late-prober", true)).await;
    let deadline = Instant::now() + TIMEOUT;
    'known: for i in 0.. {
        assert!(
            Instant::now() < deadline,
            "node 1 never routed to node 0's member"
        );
        p.publish("late/probe", QoS::AtMostOnce, false, format!("probe-{i}"))
            .await;
        let until = Instant::now() + Duration::from_millis(200);
        while let Some(ev) = a.poll_once(until.saturating_duration_since(Instant::now())).await {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(m))) = ev {
                if text(&m).starts_with("probe-") {
                    break 'known;
                }
            }
        }
    }
    p.disconnect().await;
    let held: Vec<String> = (0..4).map(|i| format!("held{i}")).collect();
    publish_all(cluster[0].addr, "boss", "late/jobs", &held).await;
    for want in &held {
        loop {
            let m = a.next_publish().await;
            if text(&m).starts_with("held") {
                assert_eq!(&text(&m), want);
                break;
            }
        }
    }

    let (mut b, _) = V4Client::connect(v4_options(cluster[1].addr, "joiner", true)).await;
    b.subscribe("$share/g/late/#", QoS::AtLeastOnce).await;
    b.expect_no_publish(Duration::from_millis(500)).await;
    // The holder leaves without acknowledging: its messages go to the joiner.
    a.disconnect().await;
    let mut got = Vec::new();
    for _ in 0..held.len() {
        got.push(text(&b.next_publish().await));
    }
    got.sort();
    assert_eq!(got, held, "each once");
    b.expect_no_publish(Duration::from_millis(500)).await;
}

/// A whole cluster restarted: a shared group's first members subscribe on
/// two nodes at the same moment. One node claims the group's backlog (an
/// advisory lock in PostgreSQL): every message it missed arrives once over
/// both members, none twice.
#[tokio::test]
async fn first_members_on_two_nodes_at_once_get_the_groups_backlog_once() {
    let db = TestDb::create().await;
    let cluster = nodes_with_store(&db, 2).await;
    let pg = db.client().await;
    // The group exists (its position), then has no member anywhere.
    let (mut first, _) = V4Client::connect(v4_options(cluster[0].addr, "claim-0", true)).await;
    first.subscribe("$share/claim/work/#", QoS::AtLeastOnce).await;
    wait_for_db(
        &pg,
        "select count(*) from mqtt_acked where clientid = '$share/claim'",
        Some(1),
    )
    .await;
    first.disconnect().await;
    let n = 30;
    let payloads: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
    publish_all(cluster[1].addr, "claim-boss", "work/items", &payloads).await;

    let member = |addr, id: &'static str| async move {
        let (mut c, _) = V4Client::connect(v4_options(addr, id, true)).await;
        c.subscribe("$share/claim/work/#", QoS::AtLeastOnce).await;
        c
    };
    let (mut a, mut b) = tokio::join!(
        member(cluster[0].addr, "claim-a"),
        member(cluster[1].addr, "claim-b")
    );
    let mut got: Vec<String> = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} arrived: {got:?}",
            got.len()
        );
        for c in [&mut a, &mut b] {
            while let Some(ev) = c.backlog.pop_front() {
                if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
                    got.push(text(&p));
                }
            }
            if let Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) =
                c.poll_once(Duration::from_millis(20)).await
            {
                got.push(text(&p));
            }
        }
    }
    // Nothing more comes: no second copy of the backlog.
    a.expect_no_publish(Duration::from_millis(700)).await;
    b.expect_no_publish(Duration::from_millis(300)).await;
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!((got.len(), sorted.len()), (n, n), "each message once: {got:?}");
}
