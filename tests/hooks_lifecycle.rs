//! Hooks through a client's whole life, and the authentication and
//! authorization hooks, seen by an in-process plugin that registers on every
//! hook chain while real MQTT clients talk to the broker over TCP.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hooks_spec::{
    AclAction, AclResult, AuthResult, Chain, ConfFile, Flow, Hooks, Plugin, PluginContext, PluginError,
};
use postbox::config::Config;
use postbox::Server;
use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, PubAckReason, SubscribeReasonCode as V5SubCode};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::{QoS, SubscribeReasonCode};
use support::*;
use tokio::sync::Notify;

const CONNACK: u8 = 2;

/// Records every hook call as `"<hook point> <details>"`.
#[derive(Default)]
struct Probe {
    events: Mutex<Vec<String>>,
    changed: Notify,
}

impl Probe {
    fn record(&self, event: String) {
        self.events.lock().unwrap().push(event);
        self.changed.notify_waiters();
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    /// The events that concern client `id` (its id is the first detail).
    fn events_of(&self, id: &str) -> Vec<String> {
        self.events()
            .into_iter()
            .filter(|e| e.split(' ').nth(1) == Some(id))
            .collect()
    }

    /// Waits (10 s) until `done` holds for the recorded events.
    async fn wait_until(&self, what: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.events()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "{what}: not seen within {TIMEOUT:?}; recorded hook events:\n{:#?}",
                    self.events()
                );
            }
        }
    }

    /// Waits (10 s) until `event` has been recorded `n` times.
    async fn wait_for(&self, event: &str, n: usize) {
        self.wait_until(&format!("{event:?} x{n}"), |events| {
            events.iter().filter(|e| e.as_str() == event).count() >= n
        })
        .await;
    }

    /// Waits (10 s) for an event starting with `prefix`.
    async fn wait_for_prefix(&self, prefix: &str) {
        self.wait_until(prefix, |events| events.iter().any(|e| e.starts_with(prefix)))
            .await;
    }
}

/// Registers on `chain` a callback that records `"<hook point> <details>"`
/// and lets `decide` choose the outcome.
fn on<A, Acc>(
    chain: &Chain<A, Acc>,
    probe: &Arc<Probe>,
    decide: impl Fn(&A, Acc) -> (String, Flow<Acc>) + Send + Sync + 'static,
) where
    A: Send + Sync + 'static,
    Acc: Clone + Send + 'static,
{
    let probe = Arc::clone(probe);
    let point = chain.point();
    let decide = Arc::new(decide);
    chain.add("probe", 0, move |args: Arc<A>, acc: Acc| {
        let probe = Arc::clone(&probe);
        let decide = Arc::clone(&decide);
        async move {
            let (details, flow) = decide(&args, acc);
            probe.record(format!("{point} {details}"));
            Ok(flow)
        }
    });
}

/// Records a notification with `details`.
fn note<A: Send + Sync + 'static>(
    chain: &Chain<A, ()>,
    probe: &Arc<Probe>,
    details: impl Fn(&A) -> String + Send + Sync + 'static,
) {
    on(chain, probe, move |a, ()| (details(a), Flow::Continue(())));
}

/// The test plugin: records every hook, and decides
/// - `client.authenticate`: ids `deny-*` are denied, `allow-*` allowed, others ignored;
/// - `client.check_acl`: `secret/...` is refused to every client but `admin-*`;
/// - `client.subscribe`: filters under `forbidden/` are removed.
struct ProbePlugin(Arc<Probe>);

#[async_trait]
impl Plugin for ProbePlugin {
    fn name(&self) -> &str {
        "probe"
    }

    fn load_config(&mut self, _path: &Path) -> Result<(), PluginError> {
        Ok(())
    }

    async fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
        let h = &ctx.hooks;
        let p = &self.0;
        on(&h.client_connect, p, |c, props| {
            (c.clientid.clone(), Flow::Continue(props))
        });
        on(&h.client_authenticate, p, |a, acc| {
            let id = a.client.clientid.to_string();
            let flow = if id.starts_with("deny-") {
                Flow::Stop(AuthResult::Deny)
            } else if id.starts_with("allow-") {
                Flow::Stop(AuthResult::Allow)
            } else {
                Flow::Continue(acc)
            };
            (id, flow)
        });
        on(&h.client_connack, p, |a, props| {
            (
                format!("{} {}", a.conn.clientid, a.reason_code),
                Flow::Continue(props),
            )
        });
        note(&h.client_connected, p, |a| a.client.clientid.to_string());
        note(&h.client_disconnected, p, |a| {
            format!("{} {}", a.client.clientid, a.reason)
        });
        on(&h.client_check_acl, p, |a, acc| {
            let action = match a.action {
                AclAction::Publish => "publish",
                AclAction::Subscribe => "subscribe",
            };
            let deny = a.topic.starts_with("secret/") && !a.client.clientid.starts_with("admin-");
            let flow = if deny {
                Flow::Stop(AclResult::Deny)
            } else {
                Flow::Continue(acc)
            };
            (format!("{} {action} {}", a.client.clientid, a.topic), flow)
        });
        on(&h.client_subscribe, p, |a, mut filters| {
            let all: Vec<&str> = filters.iter().map(|f| f.filter.as_str()).collect();
            let details = format!("{} {}", a.client.clientid, all.join(","));
            filters.retain(|f| !f.filter.starts_with("forbidden/"));
            (details, Flow::Continue(filters))
        });
        on(&h.client_unsubscribe, p, |a, filters| {
            (
                format!("{} {}", a.client.clientid, filters.join(",")),
                Flow::Continue(filters),
            )
        });
        for chain in [
            &h.session_created,
            &h.session_resumed,
            &h.session_discarded,
            &h.session_takeovered,
        ] {
            note(chain, p, |a| a.client.clientid.to_string());
        }
        note(&h.session_subscribed, p, |a| {
            format!("{} {}", a.client.clientid, a.filter)
        });
        note(&h.session_unsubscribed, p, |a| {
            format!("{} {}", a.client.clientid, a.filter)
        });
        note(&h.session_terminated, p, |a| {
            format!("{} {}", a.client.clientid, a.reason)
        });
        on(&h.message_publish, p, |a, m| {
            let from = a
                .client
                .as_ref()
                .map_or("-".to_string(), |c| c.clientid.to_string());
            (format!("{from} {}", m.topic), Flow::Continue(m))
        });
        on(&h.message_delivered, p, |a, m| {
            (format!("{} {}", a.client.clientid, m.topic), Flow::Continue(m))
        });
        note(&h.message_acked, p, |a| {
            format!("{} {}", a.client.clientid, a.message.topic)
        });
        note(&h.message_dropped, p, |a| {
            let to = a.clientid.as_deref().unwrap_or("-");
            format!("{to} {} {}", a.message.topic, a.reason)
        });
        Ok(())
    }

    async fn stop(&self, hooks: &Hooks) -> Result<(), PluginError> {
        hooks.remove_owner("probe");
        Ok(())
    }
}

async fn start(extra_conf: &str) -> (Server, Arc<Probe>) {
    let text = format!("listener.tcp.external = 127.0.0.1:0\n{extra_conf}");
    let conf = ConfFile::parse(Path::new("inprocess.conf"), &text).unwrap();
    let config = Config::from_conf(&conf).unwrap();
    let probe = Arc::new(Probe::default());
    let server = Server::start(config, vec![Box::new(ProbePlugin(Arc::clone(&probe)))])
        .await
        .unwrap();
    (server, probe)
}

/// `actual` matches `expected` entry by entry, where an expected entry may
/// leave out trailing details (`"session.terminated a"` matches
/// `"session.terminated a expired"`).
fn assert_sequence(actual: &[String], expected: &[&str]) {
    let matches = actual.len() == expected.len()
        && actual
            .iter()
            .zip(expected)
            .all(|(a, e)| a == e || a.starts_with(&format!("{e} ")));
    assert!(
        matches,
        "hook sequence differs\nexpected:\n{expected:#?}\nactual:\n{actual:#?}"
    );
}

#[tokio::test]
async fn hooks_fire_in_order_through_a_client_lifecycle() {
    let (server, probe) = start("").await;
    let addr = server.local_addrs()[0];

    // Connect (new persistent session) and subscribe.
    let (mut a, ack) = V4Client::connect(v4_options(addr, "life", false)).await;
    assert!(!ack.session_present);
    a.subscribe("life/inbox", QoS::AtLeastOnce).await;

    // A message from another client, delivered and acknowledged.
    let (mut b, _) = V4Client::connect(v4_options(addr, "sender", true)).await;
    b.publish("life/inbox", QoS::AtLeastOnce, false, "hello").await;
    assert_eq!(&a.next_publish().await.payload[..], b"hello"); // rumqttc sends PUBACK
    a.disconnect().await;
    probe.wait_for("client.disconnected life normal", 1).await;

    // Resume, then a second connection with the same id takes over.
    let (_a2, ack) = V4Client::connect(v4_options(addr, "life", false)).await;
    assert!(ack.session_present);
    let (a3, ack) = V4Client::connect(v4_options(addr, "life", false)).await;
    assert!(ack.session_present);
    a3.disconnect().await;
    probe.wait_for("client.disconnected life normal", 2).await;

    // Clean session: the old session is discarded, the new one ends at disconnect.
    let (a4, ack) = V4Client::connect(v4_options(addr, "life", true)).await;
    assert!(!ack.session_present);
    a4.disconnect().await;
    probe.wait_for_prefix("session.terminated life ").await;

    let mut seen = probe.events_of("life");
    // The publish itself runs as the sender: keep it, in place.
    let all = probe.events();
    let publish_at = all
        .iter()
        .position(|e| e == "message.publish sender life/inbox")
        .expect("message.publish for the sender's message");
    let before_publish = all[..publish_at]
        .iter()
        .filter(|e| e.split(' ').nth(1) == Some("life"))
        .count();
    seen.insert(before_publish, all[publish_at].clone());

    assert_sequence(
        &seen,
        &[
            // first connection: a new session
            "client.connect life",
            "client.authenticate life",
            "session.created life",
            "client.connack life 0",
            "client.connected life",
            "client.subscribe life life/inbox",
            "client.check_acl life subscribe life/inbox",
            "session.subscribed life life/inbox",
            "message.publish sender life/inbox",
            "message.delivered life life/inbox",
            "message.acked life life/inbox",
            "client.disconnected life normal",
            // reconnect: resumed
            "client.connect life",
            "client.authenticate life",
            "session.resumed life",
            "client.connack life 0",
            "client.connected life",
            // takeover: the old connection's side first
            "client.connect life",
            "client.authenticate life",
            "session.takeovered life",
            "client.disconnected life takenover",
            "session.resumed life",
            "client.connack life 0",
            "client.connected life",
            "client.disconnected life normal",
            // clean start over the persistent session
            "client.connect life",
            "client.authenticate life",
            "session.discarded life",
            "session.terminated life discarded",
            "session.created life",
            "client.connack life 0",
            "client.connected life",
            "client.disconnected life normal",
            "session.terminated life",
        ],
    );
    drop(b);
    server.shutdown().await;
}

#[tokio::test]
async fn a_message_nobody_subscribes_to_fires_message_dropped() {
    let (server, probe) = start("").await;
    let addr = server.local_addrs()[0];
    let (mut publ, _) = V5Client::connect(v5_options(addr, "lonely", true)).await;
    let ack = publ
        .publish_acked("nobody/listens", V5QoS::AtLeastOnce, false, "echo")
        .await;
    match ack {
        Some(rumqttc::v5::Event::Incoming(V5Packet::PubAck(a))) => {
            assert_eq!(a.reason, PubAckReason::NoMatchingSubscribers)
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    probe
        .wait_for("message.dropped - nobody/listens no_subscribers", 1)
        .await;
    server.shutdown().await;
}

#[tokio::test]
async fn only_sessions_that_end_fire_session_terminated() {
    let (server, probe) = start("").await;
    let addr = server.local_addrs()[0];
    let (keeper, _) = V4Client::connect(v4_options(addr, "keeper", false)).await;
    keeper.disconnect().await;
    let (cleaner, _) = V4Client::connect(v4_options(addr, "cleaner", true)).await;
    cleaner.disconnect().await;
    probe.wait_for_prefix("session.terminated cleaner ").await;
    probe.wait_for("client.disconnected keeper normal", 1).await;
    assert!(
        !probe
            .events()
            .iter()
            .any(|e| e.starts_with("session.terminated keeper")),
        "a persistent session outlives its connection: {:#?}",
        probe.events()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn discarding_a_session_terminates_it() {
    let (server, probe) = start("").await;
    let addr = server.local_addrs()[0];
    let (old, _) = V4Client::connect(v4_options(addr, "fresh", false)).await;
    old.disconnect().await;
    let (_new, ack) = V4Client::connect(v4_options(addr, "fresh", true)).await;
    assert!(!ack.session_present);
    let seen = probe.events_of("fresh");
    let discarded = seen
        .iter()
        .position(|e| e == "session.discarded fresh")
        .expect("session.discarded");
    assert!(
        seen[discarded..]
            .iter()
            .any(|e| e == "session.terminated fresh discarded"),
        "the hooks-spec table: session.terminated fires when a session is discarded; got {seen:#?}"
    );
    server.shutdown().await;
}

/// Raw CONNECT (3.1.1 or 5 by `level`) and the CONNACK reason byte.
async fn connack_code(addr: std::net::SocketAddr, level: u8, id: &str) -> u8 {
    let mut raw = RawClient::connect(addr).await;
    let bytes = if level == 5 {
        connect_v5_bytes(id, true, 30)
    } else {
        connect_v4_bytes(id, true, 30)
    };
    raw.send(&bytes).await;
    let ack = raw.read_packet().await.expect("CONNACK");
    assert_eq!(packet_type(&ack), CONNACK, "got {ack:02x?}");
    let code = ack[3];
    if code != 0 {
        raw.expect_closed().await;
    }
    code
}

#[tokio::test]
async fn authentication_hook_decides_and_anonymous_clients_are_refused() {
    let (server, probe) = start("mqtt.allow_anonymous = false\n").await;
    let addr = server.local_addrs()[0];
    assert_eq!(
        connack_code(addr, 5, "deny-5").await,
        0x86,
        "bad user name or password"
    );
    assert_eq!(
        connack_code(addr, 4, "deny-4").await,
        4,
        "3.1.1: bad user name or password"
    );
    assert_eq!(connack_code(addr, 5, "anon-5").await, 0x87, "not authorized");
    assert_eq!(connack_code(addr, 4, "anon-4").await, 5, "3.1.1: not authorized");
    assert_eq!(connack_code(addr, 5, "allow-5").await, 0);
    assert_eq!(connack_code(addr, 4, "allow-4").await, 0);

    // client.connack saw the refusals; no session was made for them.
    let events = probe.events();
    for (id, code) in [
        ("deny-5", 0x86),
        ("deny-4", 0x86),
        ("anon-5", 0x87),
        ("anon-4", 0x87),
    ] {
        assert!(
            events.contains(&format!("client.connack {id} {code}")),
            "client.connack for {id}: {events:#?}"
        );
        assert!(
            !events.contains(&format!("session.created {id}")),
            "no session for {id}: {events:#?}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn acl_refuses_subscriptions() {
    let (server, _probe) = start("").await;
    let addr = server.local_addrs()[0];
    let (mut admin, _) = V4Client::connect(v4_options(addr, "admin-sub", true)).await;
    assert_eq!(
        admin.subscribe("secret/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let (mut peeker, _) = V4Client::connect(v4_options(addr, "peeker", true)).await;
    assert_eq!(
        peeker.subscribe("secret/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Failure],
        "3.1.1: 0x80"
    );
    let (mut peeker5, _) = V5Client::connect(v5_options(addr, "peeker5", true)).await;
    assert_eq!(
        peeker5.subscribe("secret/#", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::NotAuthorized],
        "MQTT 5: 0x87"
    );
    // The refused subscriptions get nothing; the granted one does.
    let (mut publ, _) = V4Client::connect(v4_options(addr, "admin-pub", true)).await;
    publ.publish("secret/plans", QoS::AtLeastOnce, false, "for admins")
        .await;
    assert_eq!(&admin.next_publish().await.payload[..], b"for admins");
    peeker.expect_no_publish(Duration::from_millis(300)).await;
    peeker5.expect_no_publish(Duration::from_millis(100)).await;
    server.shutdown().await;
}

#[tokio::test]
async fn acl_denied_publish_is_not_delivered() {
    let (server, _probe) = start("").await;
    let addr = server.local_addrs()[0];
    let (mut admin, _) = V4Client::connect(v4_options(addr, "admin-sub", true)).await;
    admin.subscribe("secret/#", QoS::AtLeastOnce).await;
    let (mut mallory, _) = V5Client::connect(v5_options(addr, "mallory", true)).await;
    mallory
        .publish("secret/plans", V5QoS::AtMostOnce, false, "leak")
        .await;
    // A later acknowledged publish on the same connection: the denied one was handled before it.
    mallory
        .publish("public/news", V5QoS::AtLeastOnce, false, "hi")
        .await;
    admin.expect_no_publish(Duration::from_millis(300)).await;
    let (mut publ, _) = V4Client::connect(v4_options(addr, "admin-pub", true)).await;
    publ.publish("secret/plans", QoS::AtLeastOnce, false, "allowed")
        .await;
    assert_eq!(&admin.next_publish().await.payload[..], b"allowed");
    server.shutdown().await;
}

#[tokio::test]
async fn acl_denied_mqtt5_publish_gets_puback_not_authorized() {
    let (server, _probe) = start("").await;
    let addr = server.local_addrs()[0];
    let (mut admin, _) = V4Client::connect(v4_options(addr, "admin-sub", true)).await;
    admin.subscribe("secret/#", QoS::AtLeastOnce).await;
    let (mut mallory, _) = V5Client::connect(v5_options(addr, "mallory", true)).await;
    let ack = tokio::time::timeout(
        Duration::from_secs(2),
        mallory.publish_acked("secret/plans", V5QoS::AtLeastOnce, false, "leak"),
    )
    .await
    .expect("no PUBACK for a publish the ACL denied");
    match ack {
        Some(rumqttc::v5::Event::Incoming(V5Packet::PubAck(a))) => {
            assert_eq!(a.reason, PubAckReason::NotAuthorized)
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    admin.expect_no_publish(Duration::from_millis(300)).await;
    server.shutdown().await;
}

#[tokio::test]
async fn acl_denied_v311_publish_is_acknowledged() {
    let (server, _probe) = start("").await;
    let addr = server.local_addrs()[0];
    let (mut admin, _) = V4Client::connect(v4_options(addr, "admin-sub", true)).await;
    admin.subscribe("secret/#", QoS::AtLeastOnce).await;
    // MQTT-3.3.5-2: acknowledge as usual (or close); the client cannot be told.
    let (mut mallory, _) = V4Client::connect(v4_options(addr, "mallory", true)).await;
    tokio::time::timeout(
        Duration::from_secs(2),
        mallory.publish("secret/plans", QoS::AtLeastOnce, false, "leak"),
    )
    .await
    .expect("no PUBACK for a publish the ACL denied");
    admin.expect_no_publish(Duration::from_millis(300)).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_filter_removed_by_client_subscribe_is_refused() {
    let (server, _probe) = start("").await;
    let addr = server.local_addrs()[0];
    let (mut c4, _) = V4Client::connect(v4_options(addr, "sub4", true)).await;
    assert_eq!(
        c4.subscribe("forbidden/x", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Failure]
    );
    let (mut c5, _) = V5Client::connect(v5_options(addr, "sub5", true)).await;
    assert_eq!(
        c5.subscribe("forbidden/x", V5QoS::AtLeastOnce).await,
        vec![V5SubCode::NotAuthorized],
        "the hooks-spec table: removing an entry refuses it with 0x87 in MQTT 5"
    );
    server.shutdown().await;
}
