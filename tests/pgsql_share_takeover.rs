//! A durable shared group in a cluster whose replaying node dies: two nodes
//! with the PostgreSQL backend on one database, a `$share` member on each.
//! The node that holds the group's claim (`mqtt_share_claim`) is SIGKILLed
//! while its member holds messages unacknowledged, and more messages are
//! published while it is down: once its claim's lease has passed, the other
//! node takes the claim over and its member receives every message stored
//! for the group, and the group's position moves past them. Clients are
//! rumqttc; each node is the real binary on `127.0.0.1:0`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use rumqttc::QoS;
use support::pgsql::*;
use support::*;
use tokio::time::Instant;

const SECRET: &str = "share-takeover-secret";
/// `backend-pgsql/src/claims.rs`: how long a claim holds without renewal.
const LEASE: Duration = Duration::from_secs(30);
const FILTER: &str = "$share/g/jobs/#";

/// A cluster node with the PostgreSQL backend (shipped rules) on `db`.
async fn node(db: &TestDb, name: &str) -> Broker {
    let conf = node_conf(db, name);
    let pgsql = pgsql_conf(db, &format!("{EMQX_DEFAULT_RULES}\n{SESSION_RULE}"));
    Broker::start_with_files(&conf, &[("backend_pgsql.conf", &pgsql)]).await
}

fn node_conf(db: &TestDb, name: &str) -> String {
    format!(
        "node.name = {name}\ncluster.enable = true\ncluster.database = {}\ncluster.listen = 127.0.0.1:0\n\
         cluster.secret = {SECRET}\ncluster.heartbeat = 200ms\ncluster.node_timeout = 2s\n\
         plugins.load = backend_pgsql\n",
        db.url
    )
}

/// Takes the job payloads `c` received (backlog first, then one poll of
/// up to 20 ms) into `got`.
async fn take_jobs(c: &mut V4Client, got: &mut Vec<String>) {
    while let Some(ev) = c.backlog.pop_front() {
        if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
            if text(&p).starts_with("job") {
                got.push(text(&p));
            }
        }
    }
    if let Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) =
        c.poll_once(Duration::from_millis(20)).await
    {
        if text(&p).starts_with("job") {
            got.push(text(&p));
        }
    }
}

/// Publishes probes on node `from` until a subscriber on node `to`
/// receives one: `from` knows `to`'s routes (its member's too, made
/// before) and has a link to it.
async fn until_routed(from: &Broker, to: &Broker) {
    let (mut watch, _) = V4Client::connect(v4_options(to.addr, "watch", true)).await;
    watch.subscribe("probe/t", QoS::AtMostOnce).await;
    let (mut p, _) = V4Client::connect(v4_options(from.addr, "prober", true)).await;
    let deadline = Instant::now() + TIMEOUT;
    for i in 0.. {
        assert!(
            Instant::now() < deadline,
            "the cluster did not route within {TIMEOUT:?}"
        );
        p.publish("probe/t", QoS::AtMostOnce, false, format!("probe-{i}"))
            .await;
        let until = Instant::now() + Duration::from_millis(200);
        while let Some(ev) = watch
            .poll_once(until.saturating_duration_since(Instant::now()))
            .await
        {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))) = ev {
                p.disconnect().await;
                watch.disconnect().await;
                return;
            }
        }
    }
}

#[tokio::test]
async fn a_killed_claim_holders_backlog_reaches_the_member_on_the_surviving_node() {
    let db = TestDb::create().await;
    let mut a_node = node(&db, "node-a").await;
    let b_node = node(&db, "node-b").await;
    let pg = db.client().await;
    wait_for_db(
        &pg,
        "select count(*) from postbox_node where heartbeat_at > now() - interval '1 second'",
        Some(2),
    )
    .await;

    // Node A's member subscribes first: node A holds the group's claim.
    let mut a_opts = v4_options(a_node.addr, "member-a", true);
    a_opts.set_manual_acks(true);
    let (mut a, _) = V4Client::connect(a_opts).await;
    a.subscribe(FILTER, QoS::AtLeastOnce).await;
    wait_for_db(
        &pg,
        "select count(*) from mqtt_share_claim where grp = '$share/g/jobs/#' and node = 'node-a'",
        Some(1),
    )
    .await;
    // Node B's member joins: node B delivers live messages only.
    let (mut b, _) = V4Client::connect(v4_options(b_node.addr, "member-b", true)).await;
    b.subscribe(FILTER, QoS::AtLeastOnce).await;
    until_routed(&a_node, &b_node).await;

    // Published on node A, stored; member A acknowledges none of what it gets.
    let before: Vec<String> = (0..10).map(|i| format!("job-before-{i}")).collect();
    publish_all(a_node.addr, "boss-a", "jobs/work", &before).await;
    let (mut at_a, mut at_b) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + TIMEOUT;
    while at_a.len() + at_b.len() < before.len() {
        assert!(
            Instant::now() < deadline,
            "only {at_a:?} at A and {at_b:?} at B arrived"
        );
        take_jobs(&mut a, &mut at_a).await;
        take_jobs(&mut b, &mut at_b).await;
    }
    assert!(!at_a.is_empty(), "member A holds some: {at_a:?} / {at_b:?}");

    // Node A dies for real, its member's messages unacknowledged.
    a_node.kill().await;
    let killed = Instant::now();
    drop(a);
    // Published while node A is down (and before node B may replay).
    let during: Vec<String> = (0..5).map(|i| format!("job-during-{i}")).collect();
    publish_all(b_node.addr, "boss-b", "jobs/work", &during).await;

    let want: BTreeSet<String> = before.iter().chain(during.iter()).cloned().collect();
    // The claim's lease passes (at most LEASE after node A's last renewal),
    // then node B replays the group's backlog.
    let bound = LEASE + Duration::from_secs(15);
    loop {
        let have: BTreeSet<String> = at_b.iter().cloned().collect();
        if have == want {
            break;
        }
        assert!(
            killed.elapsed() < bound,
            "within {bound:?} of the SIGKILL, member B got {} of {} messages; missing: {:?}",
            have.len(),
            want.len(),
            want.difference(&have).collect::<Vec<_>>()
        );
        take_jobs(&mut b, &mut at_b).await;
    }
    eprintln!(
        "every message reached member B {:?} after the SIGKILL ({} deliveries for {} messages)",
        killed.elapsed(),
        at_b.len(),
        want.len()
    );

    // The group's position moves past every message (member B acknowledges).
    let last = *stored_ids(&pg, "jobs/work").await.last().unwrap();
    let check = format!(
        "select (mid >= {last})::int4::int8 from mqtt_acked where clientid = '$share/g' and topic = '{FILTER}'"
    );
    let deadline = Instant::now() + TIMEOUT;
    while query_opt_i64(&pg, &check).await != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the group's position did not pass {last}"
        );
        take_jobs(&mut b, &mut at_b).await;
    }
}
