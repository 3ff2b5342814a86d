//! Durable shared subscriptions: a `$share/<group>/<filter>` group has one
//! read position in PostgreSQL (`mqtt_acked` row `$share/<group>`,
//! `$share/<group>/<filter>`), so what it missed while every member was
//! offline, across a broker restart, reaches the next member that
//! subscribes, once and in order; a member that disconnects with messages
//! unacknowledged has them delivered to another member. Clients are
//! rumqttc (MQTT 5).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use support::pgsql::*;
use support::*;

/// A member with a persistent session (MQTT 5, session expiry 3600).
fn member(addr: std::net::SocketAddr, id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = v5_options(addr, id, false);
    o.set_session_expiry_interval(Some(3600));
    o
}

fn payload(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

/// The group's read position row exists (made by its first subscription).
async fn wait_group_row(pg: &tokio_postgres::Client, group: &str, filter: &str) {
    wait_for_db(
        pg,
        &format!(
            "select count(*) from mqtt_acked where clientid = {} and topic = {}",
            sql_literal(&format!("$share/{group}")),
            sql_literal(&format!("$share/{group}/{filter}"))
        ),
        Some(1),
    )
    .await;
}

/// Publishes `payloads` at QoS 1 from a clean MQTT 5 client, each
/// acknowledged (so stored) before the next.
async fn publish_v5(addr: std::net::SocketAddr, topic: &str, payloads: &[String]) {
    let (mut p, _) = V5Client::connect(v5_options(addr, "publisher", true)).await;
    for m in payloads {
        p.publish(topic, QoS::AtLeastOnce, false, m.clone()).await;
    }
    p.disconnect().await;
}

/// The PUBACK of `p` (manual acks) is written.
async fn ack_v5(c: &mut V5Client, p: &Publish) {
    c.client.ack(p).await.expect("queue PUBACK");
    let pkid = p.pkid;
    c.poll_until(|ev| {
        matches!(ev, rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::PubAck(id)) if *id == pkid).then_some(())
    })
    .await
}

/// The issue's scenario: the group's only member is offline while 10
/// messages are published, the broker is SIGKILLed and started again, the
/// member reconnects and subscribes again: it gets all 10, once, in order.
#[tokio::test]
async fn an_offline_only_member_gets_what_its_group_missed_across_a_restart() {
    let db = TestDb::create().await;
    let mut broker = broker_with_pgsql(&db, SESSION_RULE).await;
    let pg = db.client().await;
    let (mut c, _) = V5Client::connect(member(broker.addr, "worker-1")).await;
    c.subscribe("$share/g/jobs/#", QoS::AtLeastOnce).await;
    wait_group_row(&pg, "g", "jobs/#").await;
    c.disconnect().await;
    let sent = numbered(0..10);
    publish_v5(broker.addr, "jobs/1", &sent).await;
    // The visible backlog counts the group's row by its filter.
    assert_eq!(
        query_opt_i64(
            &pg,
            "select pending from mqtt_backlog where clientid = '$share/g'"
        )
        .await,
        Some(10)
    );

    broker.kill().await;
    broker.restart().await;
    let (mut c, _) = V5Client::connect(member(broker.addr, "worker-1")).await;
    c.subscribe("$share/g/jobs/#", QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(payload(&c.next_publish().await));
    }
    assert_eq!(got, sent, "every message the group missed, once, in order");
    c.expect_no_publish(Duration::from_millis(500)).await;

    // The group's position moved over them: a second restart repeats nothing.
    let last = *stored_ids(&pg, "jobs/1").await.last().unwrap();
    wait_for_position(&pg, "$share/g", "$share/g/jobs/#", last).await;
    broker.kill().await;
    drop(c);
    broker.restart().await;
    let (mut c, _) = V5Client::connect(member(broker.addr, "worker-1")).await;
    c.subscribe("$share/g/jobs/#", QoS::AtLeastOnce).await;
    c.expect_no_publish(Duration::from_millis(500)).await;
    // The member's own position rows are untouched: the group has its own.
    let own = query_opt_i64(&pg, "select count(*) from mqtt_acked where clientid = 'worker-1'").await;
    assert_eq!(own, Some(0), "no row of the member's for the shared subscription");
}

/// Two members online; one acknowledges some of its messages and
/// disconnects with the rest unacknowledged: the other member gets those,
/// nothing is lost and nothing acknowledged comes again (not even after a
/// restart).
#[tokio::test]
async fn a_member_that_leaves_with_unacknowledged_messages_hands_them_to_another() {
    let db = TestDb::create().await;
    let mut broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    let mut a_opts = member(broker.addr, "member-a");
    a_opts.set_manual_acks(true);
    let (mut a, _) = V5Client::connect(a_opts).await;
    a.subscribe("$share/g/work/#", QoS::AtLeastOnce).await;
    let (mut b, _) = V5Client::connect(member(broker.addr, "member-b")).await;
    b.subscribe("$share/g/work/#", QoS::AtLeastOnce).await;
    wait_group_row(&pg, "g", "work/#").await;

    let sent = numbered(0..10);
    publish_v5(broker.addr, "work/1", &sent).await;
    // In turn: half each. A acknowledges its first two only.
    let mut a_acked = BTreeSet::new();
    let mut a_unacked = BTreeSet::new();
    for i in 0..5 {
        let p = a.next_publish().await;
        if i < 2 {
            ack_v5(&mut a, &p).await;
            a_acked.insert(payload(&p));
        } else {
            a_unacked.insert(payload(&p));
        }
    }
    let mut at_b = Vec::new();
    for _ in 0..5 {
        at_b.push(payload(&b.next_publish().await));
    }
    a.disconnect().await;
    for _ in 0..a_unacked.len() {
        at_b.push(payload(&b.next_publish().await));
    }
    b.expect_no_publish(Duration::from_millis(500)).await;

    let b_set: BTreeSet<String> = at_b.iter().cloned().collect();
    assert_eq!(
        b_set.len(),
        at_b.len(),
        "no duplicates at the other member: {at_b:?}"
    );
    assert!(
        a_unacked.is_subset(&b_set),
        "what A left unacknowledged reached B"
    );
    assert!(a_acked.is_disjoint(&b_set), "nothing A acknowledged came again");
    let all: BTreeSet<String> = a_acked.union(&b_set).cloned().collect();
    assert_eq!(all, sent.iter().cloned().collect(), "nothing lost");

    // Every message is acknowledged by a member: the group's position is past them all.
    let last = *stored_ids(&pg, "work/1").await.last().unwrap();
    wait_for_position(&pg, "$share/g", "$share/g/work/#", last).await;
    assert!(broker.terminate().await.success());
    drop(b);
    broker.restart().await;
    let (mut b, _) = V5Client::connect(member(broker.addr, "member-b")).await;
    b.subscribe("$share/g/work/#", QoS::AtLeastOnce).await;
    b.expect_no_publish(Duration::from_millis(500)).await;
}

/// Every member offline while messages are published, the broker restarted
/// (gracefully), both members back: each message reaches exactly one of them.
#[tokio::test]
async fn with_every_member_back_each_missed_message_reaches_exactly_one() {
    let db = TestDb::create().await;
    let mut broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    for id in ["m-1", "m-2"] {
        let (mut c, _) = V5Client::connect(member(broker.addr, id)).await;
        c.subscribe("$share/pool/orders/+", QoS::AtLeastOnce).await;
        c.disconnect().await;
    }
    wait_group_row(&pg, "pool", "orders/+").await;
    let sent = numbered(0..10);
    publish_v5(broker.addr, "orders/eu", &sent).await;
    assert!(broker.terminate().await.success());
    broker.restart().await;

    let (mut one, _) = V5Client::connect(member(broker.addr, "m-1")).await;
    let (mut two, _) = V5Client::connect(member(broker.addr, "m-2")).await;
    one.subscribe("$share/pool/orders/+", QoS::AtLeastOnce).await;
    two.subscribe("$share/pool/orders/+", QoS::AtLeastOnce).await;
    let mut got: Vec<String> = Vec::new();
    for c in [&mut one, &mut two] {
        while let Some(ev) = c.backlog.pop_front() {
            if let rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(p)) = ev {
                got.push(payload(&p));
            }
        }
    }
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while got.len() < sent.len() {
        assert!(tokio::time::Instant::now() < deadline, "only {got:?} arrived");
        for c in [&mut one, &mut two] {
            if let Some(Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(p)))) =
                c.poll_once(Duration::from_millis(50)).await
            {
                got.push(payload(&p));
            }
        }
    }
    one.expect_no_publish(Duration::from_millis(300)).await;
    two.expect_no_publish(Duration::from_millis(300)).await;
    let unique: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(unique.len(), got.len(), "no message twice: {got:?}");
    assert_eq!(unique, sent.iter().cloned().collect(), "every message");
}

/// Without a restart: what the group gave its only member while that member
/// was offline reaches the next member that connects, in order, and not
/// the first member too when it comes back.
#[tokio::test]
async fn what_an_offline_member_holds_reaches_the_next_member_that_connects() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "").await;
    let (mut a, _) = V5Client::connect(member(broker.addr, "early")).await;
    a.subscribe("$share/g/feed/#", QoS::AtLeastOnce).await;
    a.disconnect().await;
    let sent = numbered(0..5);
    publish_v5(broker.addr, "feed/x", &sent).await;

    let (mut b, _) = V5Client::connect(member(broker.addr, "late")).await;
    b.subscribe("$share/g/feed/#", QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    for _ in 0..sent.len() {
        got.push(payload(&b.next_publish().await));
    }
    assert_eq!(got, sent, "in order, once");
    let (mut a, ack) = V5Client::connect(member(broker.addr, "early")).await;
    assert!(ack.session_present);
    a.expect_no_publish(Duration::from_millis(500)).await;
    b.expect_no_publish(Duration::from_millis(100)).await;
}

/// A backlog replayed page by page to the member that started the group's
/// run, while another member joins and live messages are routed to both:
/// the pages end where the run began, so the live messages the other member
/// holds unacknowledged do not come again with a later page; each message
/// reaches one member.
#[tokio::test]
async fn live_messages_to_other_members_do_not_come_again_with_the_backlog() {
    let db = TestDb::create().await;
    let rules = EMQX_DEFAULT_RULES.replace(
        r##""action": {"function": "on_message_fetch"}, "pool""##,
        r##""action": {"function": "on_message_fetch"}, "offline_opts": {"max_returned_count": 2}, "pool""##,
    );
    assert_ne!(rules, EMQX_DEFAULT_RULES);
    let conf = pgsql_conf(&db, &rules);
    let mut broker =
        Broker::start_with_files("plugins.load = backend_pgsql\n", &[("backend_pgsql.conf", &conf)]).await;
    let pg = db.client().await;
    let mut a_opts = member(broker.addr, "pager");
    a_opts.set_manual_acks(true);
    let (mut a, _) = V5Client::connect(a_opts).await;
    a.subscribe("$share/g/log/#", QoS::AtLeastOnce).await;
    wait_group_row(&pg, "g", "log/#").await;
    a.disconnect().await;
    let backlog = numbered(0..10);
    publish_v5(broker.addr, "log/1", &backlog).await;
    assert!(broker.terminate().await.success());
    broker.restart().await;

    let mut a_opts = member(broker.addr, "pager");
    a_opts.set_manual_acks(true);
    let (mut a, _) = V5Client::connect(a_opts).await;
    a.subscribe("$share/g/log/#", QoS::AtLeastOnce).await;
    // The first page is out, unacknowledged: the backlog waits.
    let mut at_a = vec![a.next_publish().await, a.next_publish().await];
    // The other member holds its messages unacknowledged (so the group's
    // acknowledgements do not hide them from a page).
    let mut b_opts = member(broker.addr, "helper");
    b_opts.set_manual_acks(true);
    let (mut b, _) = V5Client::connect(b_opts).await;
    b.subscribe("$share/g/log/#", QoS::AtLeastOnce).await;
    let live: Vec<String> = (0..4).map(|i| format!("live{i}")).collect();
    publish_v5(broker.addr, "log/1", &live).await;

    let mut got: Vec<String> = Vec::new();
    let want = backlog.len() + live.len();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while got.len() < want {
        assert!(tokio::time::Instant::now() < deadline, "only {got:?} arrived");
        for p in std::mem::take(&mut at_a) {
            got.push(payload(&p));
            ack_v5(&mut a, &p).await;
        }
        // (Publishes that came while an acknowledgement was written.)
        while let Some(ev) = a.backlog.pop_front() {
            if let rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(p)) = ev {
                at_a.push(p);
            }
        }
        while let Some(ev) = b.backlog.pop_front() {
            if let rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(p)) = ev {
                got.push(payload(&p));
            }
        }
        if let Some(Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(p)))) =
            a.poll_once(Duration::from_millis(30)).await
        {
            at_a.push(p);
        }
        if let Some(Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(p)))) =
            b.poll_once(Duration::from_millis(30)).await
        {
            got.push(payload(&p));
        }
    }
    for p in std::mem::take(&mut at_a) {
        got.push(payload(&p));
    }
    a.expect_no_publish(Duration::from_millis(500)).await;
    b.expect_no_publish(Duration::from_millis(100)).await;
    let unique: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(unique.len(), got.len(), "no message twice: {got:?}");
    let all: BTreeSet<String> = backlog.iter().chain(&live).cloned().collect();
    assert_eq!(unique, all);
}

/// The member the backlog is replayed to leaves (its session ends) with
/// pages unacknowledged: another member gets what it left and the rest of
/// the backlog, each message once, in order.
#[tokio::test]
async fn the_backlog_goes_on_with_another_member_when_its_member_leaves() {
    let db = TestDb::create().await;
    let rules = EMQX_DEFAULT_RULES.replace(
        r##""action": {"function": "on_message_fetch"}, "pool""##,
        r##""action": {"function": "on_message_fetch"}, "offline_opts": {"max_returned_count": 2}, "pool""##,
    );
    let conf = pgsql_conf(&db, &rules);
    let mut broker =
        Broker::start_with_files("plugins.load = backend_pgsql\n", &[("backend_pgsql.conf", &conf)]).await;
    let pg = db.client().await;
    let (mut c, _) = V5Client::connect(member(broker.addr, "first")).await;
    c.subscribe("$share/g/q/#", QoS::AtLeastOnce).await;
    wait_group_row(&pg, "g", "q/#").await;
    c.disconnect().await;
    let backlog = numbered(0..10);
    publish_v5(broker.addr, "q/1", &backlog).await;
    assert!(broker.terminate().await.success());
    broker.restart().await;

    // A member whose session ends with its connection (no session expiry).
    let mut a_opts = v5_options(broker.addr, "leaver", true);
    a_opts.set_manual_acks(true);
    let (mut a, _) = V5Client::connect(a_opts).await;
    a.subscribe("$share/g/q/#", QoS::AtLeastOnce).await;
    let first = a.next_publish().await;
    assert_eq!(payload(&first), "m0", "the backlog goes to the first member");
    let (mut b, _) = V5Client::connect(member(broker.addr, "stayer")).await;
    b.subscribe("$share/g/q/#", QoS::AtLeastOnce).await;
    a.disconnect().await;

    let mut got = Vec::new();
    for _ in 0..backlog.len() {
        got.push(payload(&b.next_publish().await));
    }
    assert_eq!(got, backlog, "everything, once, in order");
    b.expect_no_publish(Duration::from_millis(500)).await;
    let last = *stored_ids(&pg, "q/1").await.last().unwrap();
    wait_for_position(&pg, "$share/g", "$share/g/q/#", last).await;
}

/// What members acknowledged above a message still unacknowledged is
/// recorded with the group's position: after a SIGKILL only that message
/// comes again.
#[tokio::test]
async fn after_a_crash_only_what_no_member_acknowledged_comes_again() {
    let db = TestDb::create().await;
    let mut broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    let mut opts = member(broker.addr, "careful");
    opts.set_manual_acks(true);
    let (mut a, _) = V5Client::connect(opts).await;
    a.subscribe("$share/g/t/#", QoS::AtLeastOnce).await;
    wait_group_row(&pg, "g", "t/#").await;
    publish_v5(broker.addr, "t/1", &numbered(0..5)).await;
    for i in 0..5 {
        let p = a.next_publish().await;
        assert_eq!(payload(&p), format!("m{i}"));
        if i > 0 {
            ack_v5(&mut a, &p).await;
        }
    }
    wait_for_acked_above(&pg, "$share/g", "$share/g/t/#", 4).await;
    broker.kill().await;
    drop(a);
    broker.restart().await;

    let (mut a, _) = V5Client::connect(member(broker.addr, "careful")).await;
    a.subscribe("$share/g/t/#", QoS::AtLeastOnce).await;
    assert_eq!(payload(&a.next_publish().await), "m0");
    a.expect_no_publish(Duration::from_millis(500)).await;
}

/// More is published while every member is offline than their queues hold
/// (`mqtt.max_queue_len = 3`): what the queues dropped comes from the store
/// when a member is back, so it gets every message, each once.
#[tokio::test]
async fn what_full_queues_of_offline_members_dropped_comes_from_the_store() {
    let db = TestDb::create().await;
    let conf = pgsql_conf(&db, EMQX_DEFAULT_RULES);
    let broker = Broker::start_with_files(
        "mqtt.max_queue_len = 3\nplugins.load = backend_pgsql\n",
        &[("backend_pgsql.conf", &conf)],
    )
    .await;
    let pg = db.client().await;
    for id in ["w-1", "w-2"] {
        let (mut c, _) = V5Client::connect(member(broker.addr, id)).await;
        c.subscribe("$share/g/burst/#", QoS::AtLeastOnce).await;
        c.disconnect().await;
    }
    wait_group_row(&pg, "g", "burst/#").await;
    let sent = numbered(0..20);
    publish_v5(broker.addr, "burst/1", &sent).await;

    let (mut a, ack) = V5Client::connect(member(broker.addr, "w-1")).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    for _ in 0..sent.len() {
        got.push(payload(&a.next_publish().await));
    }
    a.expect_no_publish(Duration::from_millis(500)).await;
    let unique: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(unique.len(), got.len(), "no message twice: {got:?}");
    assert_eq!(unique, sent.iter().cloned().collect());
    let (mut b, _) = V5Client::connect(member(broker.addr, "w-2")).await;
    b.expect_no_publish(Duration::from_millis(500)).await;
    let last = *stored_ids(&pg, "burst/1").await.last().unwrap();
    wait_for_position(&pg, "$share/g", "$share/g/burst/#", last).await;
}

/// A member that unsubscribes with messages of the group unacknowledged
/// hands them to another member (they would no longer count for the
/// group), and the group's position passes every message.
#[tokio::test]
async fn a_member_that_unsubscribes_hands_over_what_it_holds() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, "").await;
    let pg = db.client().await;
    let mut a_opts = member(broker.addr, "quitter");
    a_opts.set_manual_acks(true);
    let (mut a, _) = V5Client::connect(a_opts).await;
    a.subscribe("$share/g/u/#", QoS::AtLeastOnce).await;
    let (mut b, _) = V5Client::connect(member(broker.addr, "keeper")).await;
    b.subscribe("$share/g/u/#", QoS::AtLeastOnce).await;
    wait_group_row(&pg, "g", "u/#").await;
    let sent = numbered(0..6);
    publish_v5(broker.addr, "u/1", &sent).await;
    let at_a: BTreeSet<String> = [payload(&a.next_publish().await), payload(&a.next_publish().await)]
        .into_iter()
        .chain([payload(&a.next_publish().await)])
        .collect();
    let mut at_b = BTreeSet::new();
    for _ in 0..3 {
        at_b.insert(payload(&b.next_publish().await));
    }
    a.unsubscribe("$share/g/u/#").await;
    for _ in 0..at_a.len() {
        assert!(at_b.insert(payload(&b.next_publish().await)), "no duplicate");
    }
    assert_eq!(
        at_b,
        sent.iter().cloned().collect(),
        "all at the member that stayed"
    );
    let last = *stored_ids(&pg, "u/1").await.last().unwrap();
    wait_for_position(&pg, "$share/g", "$share/g/u/#", last).await;
}

/// A client whose id is the group's own (`$share/g`) has rows of its own,
/// never the group's: when its session expires its rows go, the group's stay.
#[tokio::test]
async fn a_client_named_like_the_group_never_takes_its_position() {
    let db = TestDb::create().await;
    let broker = broker_with_pgsql(&db, SESSION_RULE).await;
    let pg = db.client().await;
    let (mut m, _) = V5Client::connect(member(broker.addr, "real-member")).await;
    m.subscribe("$share/g/n/#", QoS::AtLeastOnce).await;
    wait_group_row(&pg, "g", "n/#").await;

    let mut o = v5_options(broker.addr, "$share/g", false);
    o.set_session_expiry_interval(Some(1));
    let (mut c, _) = V5Client::connect(o).await;
    c.subscribe("n/#", QoS::AtLeastOnce).await;
    let own = "select count(*) from mqtt_acked where clientid = '$share/g' and topic = 'n/#'";
    wait_for_db(&pg, own, Some(1)).await;
    c.disconnect().await;
    // The session expires (1 s) and is removed with its rows.
    wait_for_db(
        &pg,
        "select count(*) from mqtt_session where clientid = '$share/g'",
        Some(0),
    )
    .await;
    wait_for_db(&pg, own, Some(0)).await;
    // The group's row is still there.
    wait_group_row(&pg, "g", "n/#").await;
    drop(m);
}
