//! A durable shared group in a cluster whose replaying node dies: two nodes
//! with the PostgreSQL backend on one database, a `$share` member on each.
//! The node that holds the group's claim (`mqtt_share_claim`) is SIGKILLed
//! while its member holds messages unacknowledged, and more messages are
//! published while it is down: once its claim's lease has passed, the other
//! node takes the claim over and its member receives every message stored
//! for the group, and the group's position moves past them. When the node
//! killed is the other one, the holder's member gets what the dead node's
//! member held. Clients are rumqttc; each node is the real binary on
//! `127.0.0.1:0`.
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
/// up to 20 ms) into `got`, acknowledging them when `ack` (the clients
/// acknowledge manually).
async fn take_jobs(c: &mut V4Client, got: &mut Vec<String>, ack: bool) {
    let mut publishes = Vec::new();
    while let Some(ev) = c.backlog.pop_front() {
        if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
            publishes.push(p);
        }
    }
    if let Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) =
        c.poll_once(Duration::from_millis(20)).await
    {
        publishes.push(p);
    }
    for p in publishes {
        if text(&p).starts_with("job") {
            got.push(text(&p));
        }
        if ack {
            c.client.ack(&p).await.expect("queue PUBACK");
        }
    }
}

/// Publishes probes on node `from` until a subscriber on node `to`
/// receives one: `from` knows `to`'s routes (its member's too, made
/// before) and has a link to it.
async fn until_routed(from: &Broker, to: &Broker) {
    let watch_id = format!("watch-{}", to.addr.port());
    let (mut watch, _) = V4Client::connect(v4_options(to.addr, &watch_id, true)).await;
    watch.subscribe("probe/t", QoS::AtMostOnce).await;
    let prober_id = format!("prober-{}", from.addr.port());
    let (mut p, _) = V4Client::connect(v4_options(from.addr, &prober_id, true)).await;
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

/// How the second node's member joins the group.
#[derive(Clone, Copy, PartialEq)]
enum Join {
    /// The first members subscribe on both nodes at the same moment: one
    /// node gets the claim, the other's claim is refused.
    AtOnce,
    /// Node B's member subscribes once node B routes to node A, whose
    /// member holds the claim: node B sees members on another node.
    Knowing,
}

/// The first members on two nodes subscribe at once; the node that got
/// the claim is SIGKILLed: the other node's claim, refused, is taken over.
#[tokio::test]
async fn a_killed_claim_holders_backlog_reaches_the_member_whose_claim_was_refused() {
    killed_node(Join::AtOnce, true).await;
}

/// A member joins on node B knowing node A's member; node A, the claim's
/// holder, is SIGKILLed: node B, which wanted the claim, takes it over.
#[tokio::test]
async fn a_killed_claim_holders_backlog_reaches_a_member_that_joined_knowing_it() {
    killed_node(Join::Knowing, true).await;
}

/// The node that does NOT hold the claim (its members get live messages
/// only) is SIGKILLed with messages its member holds unacknowledged: once
/// it is declared down (`cluster.node_timeout`), the holder's run delivers
/// to its own member what the dead node's member held, and what was
/// forwarded to that node before, from the store (`node.down`), and the
/// group's position moves past them.
#[tokio::test]
async fn a_killed_live_only_nodes_held_messages_reach_the_claim_holders_member() {
    killed_node(Join::Knowing, false).await;
}

/// The scenario: a member on each of two nodes; the member on the node
/// to be killed (`kill_holder`: the claim's holder, else the other)
/// acknowledges nothing; that node is SIGKILLed and more messages are
/// published; the other member gets all of them, and acknowledges them.
async fn killed_node(join: Join, kill_holder: bool) {
    let db = TestDb::create().await;
    let mut nodes = [node(&db, "node-a").await, node(&db, "node-b").await];
    let pg = db.client().await;
    wait_for_db(
        &pg,
        "select count(*) from postbox_node where heartbeat_at > now() - interval '1 second'",
        Some(2),
    )
    .await;
    let connect = |i: usize| {
        let mut o = v4_options(nodes[i].addr, &format!("member-{i}"), true);
        o.set_manual_acks(true);
        V4Client::connect(o)
    };
    let ((mut m0, _), (mut m1, _)) = tokio::join!(connect(0), connect(1));
    let claim_row = "select count(*) from mqtt_share_claim where grp = '$share/g/jobs/#'";
    match join {
        Join::AtOnce => {
            tokio::join!(
                m0.subscribe(FILTER, QoS::AtLeastOnce),
                m1.subscribe(FILTER, QoS::AtLeastOnce)
            );
            wait_for_db(&pg, claim_row, Some(1)).await;
        }
        Join::Knowing => {
            m0.subscribe(FILTER, QoS::AtLeastOnce).await;
            wait_for_db(&pg, claim_row, Some(1)).await;
            until_routed(&nodes[1], &nodes[0]).await;
            m1.subscribe(FILTER, QoS::AtLeastOnce).await;
        }
    }
    let holder_name: String = pg
        .query_one(
            "select node::text from mqtt_share_claim where grp = '$share/g/jobs/#'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (h, s) = if holder_name == "node-a" { (0, 1) } else { (1, 0) };
    let (holder, survivor) = if h == 0 { (m0, m1) } else { (m1, m0) };
    // The other node delivers live messages only, for the reason expected.
    nodes[s]
        .wait_for_log("shared group: live messages only here")
        .await;
    let why = match join {
        Join::AtOnce => "(claimed by another node)",
        Join::Knowing => "(members on other nodes)",
    };
    assert_eq!(nodes[s].log_count(why), 1, "node {s} delivers live only {why}");
    let (v, k) = if kill_holder { (h, s) } else { (s, h) };
    let (mut victim, mut keeper) = if kill_holder {
        (holder, survivor)
    } else {
        (survivor, holder)
    };
    until_routed(&nodes[v], &nodes[k]).await;

    // Published on the node to be killed, stored; its member acknowledges none.
    let before: Vec<String> = (0..10).map(|i| format!("job-before-{i}")).collect();
    publish_all(nodes[v].addr, "boss-v", "jobs/work", &before).await;
    let (mut at_v, mut at_k) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + TIMEOUT;
    while at_v.len() + at_k.len() < before.len() {
        assert!(
            Instant::now() < deadline,
            "only {at_v:?} at the node to be killed and {at_k:?} at the other arrived"
        );
        take_jobs(&mut victim, &mut at_v, false).await;
        take_jobs(&mut keeper, &mut at_k, true).await;
    }
    assert!(
        !at_v.is_empty(),
        "the member on the node to be killed holds some: {at_v:?} / {at_k:?}"
    );

    // That node dies for real, its member's messages unacknowledged.
    nodes[v].kill().await;
    let killed = Instant::now();
    drop(victim);
    // Published while it is down (and before the other node may replay).
    let during: Vec<String> = (0..5).map(|i| format!("job-during-{i}")).collect();
    publish_all(nodes[k].addr, "boss-k", "jobs/work", &during).await;

    let want: BTreeSet<String> = before.iter().chain(during.iter()).cloned().collect();
    // The claim's lease passes (at most LEASE after the holder's last
    // renewal), then the other node replays the group's backlog. A killed
    // non-holder is declared down within `cluster.node_timeout` (2 s), then
    // the holder delivers what was lost with it: no lease to wait for.
    let bound = if kill_holder {
        LEASE + Duration::from_secs(15)
    } else {
        Duration::from_secs(15)
    };
    loop {
        let have: BTreeSet<String> = at_k.iter().cloned().collect();
        if have == want {
            break;
        }
        assert!(
            killed.elapsed() < bound,
            "within {bound:?} of the SIGKILL, the surviving member got {} of {} messages; missing: {:?}",
            have.len(),
            want.len(),
            want.difference(&have).collect::<Vec<_>>()
        );
        take_jobs(&mut keeper, &mut at_k, true).await;
    }
    eprintln!(
        "{why}: every message reached the surviving member {:?} after the SIGKILL \
         ({} deliveries for {} messages, {} held by the killed node's member)",
        killed.elapsed(),
        at_k.len(),
        want.len(),
        at_v.len()
    );

    // The group's position moves past every message (the survivor acknowledges).
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
        take_jobs(&mut keeper, &mut at_k, true).await;
    }
}
