//! Regression tests for 13 defects found in review (experiments e1..e13).
//!
//! Each test drives an in-process broker (`postbox::Server`) over TCP with
//! hand-encoded packets ([`RawClient`]) and, where the defect involves stored
//! messages, a small test plugin that plays a storage backend: it gives every
//! published message a storage id and replays stored messages on subscribe.
//! Every test asserts the fixed behaviour and failed against the broker
//! before the fix.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hooks_spec::{
    BrokerHandle, ConfFile, Delivery, Flow, Headers, Hooks, Message, Plugin, PluginContext, PluginError,
    QoS as HQoS,
};
use postbox::config::Config;
use postbox::Server;
use support::*;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Storage ids the plugin assigns start above the ids it replays (1..=5), so
/// a live message never shares an id with a replayed one by accident.
const FIRST_LIVE_ID: i64 = 1000;

// ===========================================================================
// Test plugin
// ===========================================================================

/// A latch: publishes to `held/#` wait in message.publish until it opens.
#[derive(Default)]
struct Gate {
    open: AtomicBool,
    notify: Notify,
}

impl Gate {
    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.open.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

#[derive(Default)]
struct Probe {
    /// Publishes to `held/#` wait for this.
    held: Gate,
    handle: Mutex<Option<Arc<dyn BrokerHandle>>>,
    /// Last storage id given out (ids follow message.publish entry order).
    next_id: AtomicI64,
    /// Hooks seen (`terminated <clientid> <reason>`).
    events: Mutex<Vec<String>>,
    /// The delayed `r/#` page is sent once this is notified ...
    page_go: Notify,
    /// ... and this is notified after it was handed to the broker.
    page_sent: Notify,
}

impl Probe {
    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
}

struct TestPlugin(Arc<Probe>);

/// A stored message as a storage plugin would replay it.
fn stored(topic: &str, id: i64, filter: &str) -> Delivery {
    let mut m = Message::new(topic, "replayed", HQoS::AtLeastOnce, false);
    m.headers = Headers {
        stored_id: Some(id),
        ..Headers::default()
    };
    Delivery {
        message: m,
        qos: HQoS::AtLeastOnce,
        retain: false,
        filter: Some(filter.to_string()),
    }
}

#[async_trait]
impl Plugin for TestPlugin {
    fn name(&self) -> &str {
        "regressions"
    }

    fn load_config(&mut self, _path: &Path) -> Result<(), PluginError> {
        Ok(())
    }

    async fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
        *self.0.handle.lock().unwrap() = Some(Arc::clone(&ctx.broker));
        let probe = Arc::clone(&self.0);
        ctx.hooks
            .message_publish
            .add("regressions", 0, move |_, mut m: Message| {
                let probe = Arc::clone(&probe);
                async move {
                    // "Stored" on entry: ids in arrival order, whatever order routing happens in.
                    let id = probe.next_id.fetch_add(1, Ordering::SeqCst) + 1;
                    m.headers.stored_id = Some(id);
                    if m.topic.starts_with("held/") {
                        probe.held.wait().await;
                    }
                    if m.topic.contains("slow") {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Ok(Flow::Continue(m))
                }
            });
        let probe = Arc::clone(&self.0);
        ctx.hooks
            .session_terminated
            .add("regressions", 0, move |args, ()| {
                let probe = Arc::clone(&probe);
                async move {
                    probe
                        .events
                        .lock()
                        .unwrap()
                        .push(format!("terminated {} {:?}", args.client.clientid, args.reason));
                    Ok(Flow::Continue(()))
                }
            });
        let probe = Arc::clone(&self.0);
        ctx.hooks
            .session_subscribed
            .add("regressions", 0, move |args, ()| {
                let probe = Arc::clone(&probe);
                async move {
                    let h = probe.handle.lock().unwrap().clone().unwrap();
                    let cid = args.client.clientid.to_string();
                    let f = args.filter.clone();
                    if f == "r/#" {
                        // A first page still in flight: it lands when the test says so.
                        let probe = Arc::clone(&probe);
                        tokio::spawn(async move {
                            probe.page_go.notified().await;
                            let _ = h.replay(&cid, "r/#", vec![stored("r/old", 1, "r/#")], None).await;
                            probe.page_sent.notify_one();
                        });
                    } else if f.starts_with("o/") {
                        let _ = h.replay(&cid, &f, vec![stored("o/a", 5, &f)], Some(5)).await;
                    } else {
                        // Nothing stored: an empty, complete replay.
                        let _ = h.replay(&cid, &f, Vec::new(), Some(0)).await;
                    }
                    Ok(Flow::Continue(()))
                }
            });
        Ok(())
    }

    async fn stop(&self, hooks: &Hooks) -> Result<(), PluginError> {
        hooks.remove_owner("regressions");
        Ok(())
    }
}

// ===========================================================================
// Helpers
// ===========================================================================

/// An in-process broker on 127.0.0.1:0 with `extra` config, with or without the test plugin.
async fn start(extra: &str, plugin: bool) -> (Server, Arc<Probe>) {
    let text = format!("listener.tcp.external = 127.0.0.1:0\n{extra}");
    let conf = ConfFile::parse(Path::new("regressions.conf"), &text).unwrap();
    let config = Config::from_conf(&conf).unwrap();
    let probe = Arc::new(Probe::default());
    probe.next_id.store(FIRST_LIVE_ID, Ordering::SeqCst);
    let plugins: Vec<Box<dyn Plugin>> = if plugin {
        vec![Box::new(TestPlugin(Arc::clone(&probe)))]
    } else {
        vec![]
    };
    let server = Server::start(config, plugins).await.unwrap();
    (server, probe)
}

/// Connects with a hand-encoded 3.1.1 CONNECT; returns the client and the CONNACK bytes.
async fn raw_v4(addr: std::net::SocketAddr, id: &str, clean: bool) -> (RawClient, Vec<u8>) {
    let mut c = RawClient::connect(addr).await;
    c.send(&connect_v4_bytes(id, clean, 60)).await;
    let ack = c.read_packet().await.expect("CONNACK");
    assert_eq!(
        packet_type(&ack),
        ptype::CONNACK,
        "expected CONNACK, got {ack:02x?}"
    );
    (c, ack)
}

/// An MQTT 5 CONNECT (keep alive 60) with the given CONNECT properties.
fn connect_v5_props(id: &str, clean: bool, props: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    encode_str("MQTT", &mut body);
    body.push(5);
    body.push(if clean { 0x02 } else { 0 });
    body.extend_from_slice(&60u16.to_be_bytes());
    encode_varint(props.len(), &mut body);
    body.extend_from_slice(props);
    encode_str(id, &mut body);
    packet(0x10, &body)
}

/// Session Expiry Interval 300 s (a CONNECT property).
const EXPIRY_300: [u8; 5] = [0x11, 0, 0, 1, 0x2c];

/// Connects with an MQTT 5 CONNECT; returns the client and the CONNACK bytes.
async fn raw_v5(addr: std::net::SocketAddr, id: &str, clean: bool, props: &[u8]) -> (RawClient, Vec<u8>) {
    let mut c = RawClient::connect(addr).await;
    c.send(&connect_v5_props(id, clean, props)).await;
    let ack = c.read_packet().await.expect("CONNACK");
    assert_eq!(
        packet_type(&ack),
        ptype::CONNACK,
        "expected CONNACK, got {ack:02x?}"
    );
    (c, ack)
}

/// Sends SUBSCRIBE and reads its SUBACK (nothing else may come first).
async fn subscribe(c: &mut RawClient, bytes: &[u8]) -> Vec<u8> {
    c.send(bytes).await;
    let ack = c.read_packet().await.expect("SUBACK");
    assert_eq!(
        packet_type(&ack),
        ptype::SUBACK,
        "expected SUBACK, got {ack:02x?}"
    );
    ack
}

/// A SUBSCRIBE (3.1.1) with several filters at QoS `qos`.
fn subscribe_many_v4(pkid: u16, filters: &[&str], qos: u8) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    for f in filters {
        encode_str(f, &mut body);
        body.push(qos);
    }
    packet(0x82, &body)
}

fn varint_len(b: &[u8]) -> usize {
    let mut i = 0;
    while b[i] & 0x80 != 0 {
        i += 1;
    }
    i + 1
}

/// Offset of the variable header (after the fixed header).
fn body_start(p: &[u8]) -> usize {
    1 + varint_len(&p[1..])
}

/// The parts of a received PUBLISH the tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pub {
    topic: String,
    qos: u8,
    dup: bool,
    retain: bool,
    pkid: Option<u16>,
}

fn parse_publish(p: &[u8]) -> Pub {
    assert_eq!(packet_type(p), ptype::PUBLISH, "not a PUBLISH: {p:02x?}");
    let qos = (p[0] >> 1) & 3;
    let at = body_start(p);
    let tl = usize::from(u16::from_be_bytes([p[at], p[at + 1]]));
    let topic = String::from_utf8_lossy(&p[at + 2..at + 2 + tl]).into_owned();
    let pkid = (qos > 0).then(|| u16::from_be_bytes([p[at + 2 + tl], p[at + 3 + tl]]));
    Pub {
        topic,
        qos,
        dup: p[0] & 0x08 != 0,
        retain: p[0] & 0x01 != 0,
        pkid,
    }
}

fn puback(pkid: u16) -> Vec<u8> {
    let [a, b] = pkid.to_be_bytes();
    vec![0x40, 2, a, b]
}

/// Reads until `want` PUBLISH packets arrived, the connection closed or
/// `within` passed; other packets are skipped. With `ack`, QoS 1 PUBLISHes are
/// acknowledged as they arrive.
async fn recv_publishes(c: &mut RawClient, want: usize, within: Duration, ack: bool) -> Vec<Pub> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.read_packet_within(left).await {
            RawRead::Packet(p) if packet_type(&p) == ptype::PUBLISH => {
                let publish = parse_publish(&p);
                if ack && publish.qos == 1 {
                    c.send(&puback(publish.pkid.unwrap())).await;
                }
                out.push(publish);
            }
            RawRead::Packet(_) => {}
            RawRead::Closed | RawRead::TimedOut => break,
        }
    }
    out
}

/// Every PUBLISH received during `within`.
async fn recv_for(c: &mut RawClient, within: Duration, ack: bool) -> Vec<Pub> {
    recv_publishes(c, usize::MAX, within, ack).await
}

fn topics(pubs: &[Pub]) -> Vec<&str> {
    pubs.iter().map(|p| p.topic.as_str()).collect()
}

/// How long to wait for something that should arrive.
const ARRIVE: Duration = Duration::from_secs(5);
/// How long to watch for something that must not arrive (duplicates, extras).
const QUIET: Duration = Duration::from_millis(400);

// ===========================================================================
// Tests
// ===========================================================================

/// e1: two live stored messages whose routing order differs from their
/// storage-id order (id 1001 is held 300 ms in message.publish, id 1002 is
/// routed at once) must both reach the subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e1_live_stored_messages_out_of_id_order_are_all_delivered() {
    let (server, _probe) = start("", true).await;
    let addr = server.local_addrs()[0];
    let (mut sub, _) = raw_v4(addr, "sub", true).await;
    subscribe(&mut sub, &subscribe_v4_bytes(1, "t/#", 1)).await;
    let (mut a, _) = raw_v4(addr, "pa", true).await;
    let (mut b, _) = raw_v4(addr, "pb", true).await;
    a.send(&publish_v4_bytes("t/slow", 1, false, 1, b"A")).await; // id 1001, routed after 300 ms
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.send(&publish_v4_bytes("t/fast", 1, false, 1, b"B")).await; // id 1002, routed at once

    let got = recv_publishes(&mut sub, 2, ARRIVE, true).await;
    let mut got_topics = topics(&got);
    got_topics.sort_unstable();
    assert_eq!(
        got_topics,
        ["t/fast", "t/slow"],
        "both stored messages must be delivered, whatever order they are routed in"
    );
    assert_eq!(
        a.read_packet().await,
        Some(puback(1)),
        "publisher A gets its PUBACK"
    );
    assert_eq!(
        b.read_packet().await,
        Some(puback(1)),
        "publisher B gets its PUBACK"
    );
    let extra = recv_for(&mut sub, QUIET, true).await;
    assert!(extra.is_empty(), "no duplicates expected, got {extra:?}");
    server.shutdown().await;
}

/// e2: a clean-session (3.1.1) connection taken over by a clean-session-0
/// connection: the old session ended with its connection, so the takeover
/// starts a new session (session present 0, the old subscription is gone)
/// and session.terminated fires for the old one.
#[tokio::test]
async fn e2_takeover_of_clean_session_by_persistent_connect_starts_a_new_session() {
    let (server, probe) = start("", true).await;
    let addr = server.local_addrs()[0];
    let (mut c1, _) = raw_v4(addr, "tk", true).await;
    subscribe(&mut c1, &subscribe_v4_bytes(1, "x", 1)).await;

    let (mut c2, ack) = raw_v4(addr, "tk", false).await;
    assert_eq!(
        ack,
        [0x20, 0x02, 0x00, 0x00],
        "CONNACK: session present must be 0"
    );
    c1.expect_closed().await;
    let terminated: Vec<String> = probe
        .events()
        .into_iter()
        .filter(|e| e.starts_with("terminated tk "))
        .collect();
    assert_eq!(
        terminated.len(),
        1,
        "session.terminated must fire once for the taken-over clean session; hooks seen: {:?}",
        probe.events()
    );

    // The old session's subscription must not deliver to the new connection.
    let (mut p, _) = raw_v4(addr, "p", true).await;
    p.send(&publish_v4_bytes("x", 1, false, 1, b"hi")).await;
    assert_eq!(p.read_packet().await, Some(puback(1)));
    let got = recv_for(&mut c2, QUIET, true).await;
    assert!(
        got.is_empty(),
        "the new session has no subscription, yet it received {got:?}"
    );

    // Control: the new connection does receive once it subscribes itself.
    subscribe(&mut c2, &subscribe_v4_bytes(2, "x", 1)).await;
    p.send(&publish_v4_bytes("x", 1, false, 2, b"again")).await;
    let got = recv_publishes(&mut c2, 1, ARRIVE, true).await;
    assert_eq!(topics(&got), ["x"]);
    server.shutdown().await;
}

/// e3: a QoS 2 PUBLISH still in message.publish when its connection drops is
/// re-sent with DUP after the (persistent) session reconnects: it is routed
/// exactly once and the client gets its PUBREC (and PUBCOMP after PUBREL).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e3_qos2_resent_while_first_copy_pending_is_routed_once() {
    let (server, probe) = start("", true).await;
    let addr = server.local_addrs()[0];
    let (mut sub, _) = raw_v4(addr, "sub2", true).await;
    subscribe(&mut sub, &subscribe_v4_bytes(1, "held/#", 1)).await;

    let (mut c, _) = raw_v4(addr, "q2", false).await;
    c.send(&publish_v4_bytes("held/x", 2, false, 7, b"once")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(c); // the connection is lost before PUBREC
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (mut c, ack) = raw_v4(addr, "q2", false).await;
    assert_eq!(ack, [0x20, 0x02, 0x01, 0x00], "the session must be resumed");
    let mut dup = publish_v4_bytes("held/x", 2, false, 7, b"once");
    dup[0] |= 0x08;
    c.send(&dup).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    probe.held.open();

    let got = recv_publishes(&mut sub, 1, ARRIVE, true).await;
    assert_eq!(topics(&got), ["held/x"], "the message must be routed");
    let extra = recv_for(&mut sub, QUIET, true).await;
    assert!(
        extra.is_empty(),
        "one QoS 2 publish routed more than once: extra copies {extra:?}"
    );

    assert_eq!(
        c.read_packet().await,
        Some(vec![0x50, 0x02, 0x00, 0x07]),
        "expected PUBREC for pkid 7"
    );
    c.send(&[0x62, 0x02, 0x00, 0x07]).await; // PUBREL
    assert_eq!(
        c.read_packet().await,
        Some(vec![0x70, 0x02, 0x00, 0x07]),
        "expected PUBCOMP for pkid 7"
    );
    server.shutdown().await;
}

/// A CONNECT with a QoS 0 will on `will_topic`.
fn connect_with_will(level: u8, id: &str, will_topic: &str) -> Vec<u8> {
    let mut body = Vec::new();
    encode_str("MQTT", &mut body);
    body.push(level);
    body.push(0x02 | 0x04); // clean start, will flag, will QoS 0
    body.extend_from_slice(&60u16.to_be_bytes());
    if level == 5 {
        body.push(0); // CONNECT properties
    }
    encode_str(id, &mut body);
    if level == 5 {
        body.push(0); // will properties
    }
    encode_str(will_topic, &mut body);
    encode_str("gone", &mut body);
    packet(0x10, &body)
}

/// e4: a will topic with a wildcard is invalid: MQTT 5 gets CONNACK 0x90
/// (Topic Name invalid) and is closed; 3.1.1 is closed without CONNACK;
/// no will is published.
#[tokio::test]
async fn e4_will_topic_with_wildcard_is_refused() {
    let (server, _probe) = start("", false).await;
    let addr = server.local_addrs()[0];
    let (mut sub, _) = raw_v4(addr, "wsub", true).await;
    subscribe(&mut sub, &subscribe_v4_bytes(1, "w/#", 0)).await;

    let mut c5 = RawClient::connect(addr).await;
    c5.send(&connect_with_will(5, "wc5", "w/#")).await;
    let ack = c5.read_packet().await.expect("MQTT 5 client: CONNACK expected");
    assert_eq!(
        packet_type(&ack),
        ptype::CONNACK,
        "expected CONNACK, got {ack:02x?}"
    );
    let at = body_start(&ack);
    assert_eq!(
        ack[at + 1],
        0x90,
        "CONNACK reason must be 0x90 (Topic Name invalid): {ack:02x?}"
    );
    c5.expect_closed().await;

    let mut c4 = RawClient::connect(addr).await;
    c4.send(&connect_with_will(4, "wc4", "w/#")).await;
    match c4.read_packet_within(ARRIVE).await {
        RawRead::Closed => {}
        other => {
            panic!("MQTT 3.1.1 client: expected the connection closed without CONNACK, got {other:02x?}")
        }
    }

    let got = recv_for(&mut sub, QUIET, false).await;
    assert!(got.is_empty(), "no will may be published, got {got:?}");

    // Control: the subscriber does receive what is published on a valid topic.
    let (mut p, _) = raw_v4(addr, "wp", true).await;
    p.send(&publish_v4_bytes("w/ok", 0, false, 0, b"ok")).await;
    let got = recv_publishes(&mut sub, 1, ARRIVE, false).await;
    assert_eq!(topics(&got), ["w/ok"]);
    server.shutdown().await;
}

/// e5: an unacknowledged message too large for the client's new Maximum
/// Packet Size after a reconnect is dropped and frees its window slot
/// (`mqtt.max_inflight = 1`): later messages are delivered.
#[tokio::test]
async fn e5_resend_too_large_for_new_max_packet_size_frees_the_window() {
    let (server, _probe) = start("mqtt.max_inflight = 1\n", false).await;
    let addr = server.local_addrs()[0];
    let (mut c, _) = raw_v5(addr, "big", true, &EXPIRY_300).await;
    subscribe(&mut c, &subscribe_v5_bytes(1, "b/#", 1)).await;
    let (mut p, _) = raw_v4(addr, "pbig", true).await;
    p.send(&publish_v4_bytes("b/1", 1, false, 1, &[b'x'; 500])).await;
    let got = recv_publishes(&mut c, 1, ARRIVE, false).await; // not acknowledged
    assert_eq!(topics(&got), ["b/1"]);
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut props = EXPIRY_300.to_vec();
    props.extend_from_slice(&[0x27, 0, 0, 0, 100]); // Maximum Packet Size 100
    let (mut c, ack) = raw_v5(addr, "big", false, &props).await;
    let at = body_start(&ack);
    assert_eq!(
        &ack[at..at + 2],
        [0x01, 0x00],
        "session present, success: {ack:02x?}"
    );
    p.send(&publish_v4_bytes("b/2", 1, false, 2, b"small")).await;
    p.send(&publish_v4_bytes("b/3", 1, false, 3, b"small")).await;
    let got = recv_publishes(&mut c, 2, ARRIVE, true).await;
    assert_eq!(
        topics(&got),
        ["b/2", "b/3"],
        "messages after the too-large one must be delivered"
    );
    server.shutdown().await;
}

/// e6: a shared subscription with one member offline (persistent session,
/// disconnected): every message goes to the online member.
#[tokio::test]
async fn e6_shared_subscription_skips_offline_member() {
    let (server, _probe) = start("", false).await;
    let addr = server.local_addrs()[0];
    let (mut a, _) = raw_v4(addr, "memA", false).await;
    subscribe(&mut a, &subscribe_v4_bytes(1, "$share/g/s", 0)).await;
    a.send(&disconnect_bytes()).await;
    a.expect_closed().await;
    let (mut b, _) = raw_v4(addr, "memB", true).await;
    subscribe(&mut b, &subscribe_v4_bytes(1, "$share/g/s", 0)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (mut p, _) = raw_v4(addr, "ps", true).await;
    for _ in 0..10 {
        p.send(&publish_v4_bytes("s", 0, false, 0, b"m")).await;
    }
    let got = recv_publishes(&mut b, 10, ARRIVE, false).await;
    assert_eq!(
        got.len(),
        10,
        "the online member must get all 10 messages while the other member is offline"
    );
    server.shutdown().await;
}

/// e7: a replay page for a filter the client has since unsubscribed is
/// ignored; live messages on the client's other subscription keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e7_stale_replay_page_after_unsubscribe_is_ignored() {
    let (server, probe) = start("", true).await;
    let addr = server.local_addrs()[0];
    let (mut c, _) = raw_v4(addr, "stale", true).await;
    subscribe(&mut c, &subscribe_v4_bytes(1, "r/#", 1)).await;
    let mut unsub = 2u16.to_be_bytes().to_vec();
    encode_str("r/#", &mut unsub);
    c.send(&packet(0xA2, &unsub)).await;
    let ack = c.read_packet().await.unwrap();
    assert_eq!(
        packet_type(&ack),
        ptype::UNSUBACK,
        "expected UNSUBACK, got {ack:02x?}"
    );
    subscribe(&mut c, &subscribe_v4_bytes(3, "r/a", 1)).await;

    // The r/# page (not the last one) lands now, after the unsubscribe.
    probe.page_go.notify_one();
    tokio::time::timeout(ARRIVE, probe.page_sent.notified())
        .await
        .expect("the plugin did not send its replay page");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (mut p, _) = raw_v4(addr, "pr", true).await;
    p.send(&publish_v4_bytes("r/a", 1, false, 1, b"live")).await;
    let mut got = recv_publishes(&mut c, 1, ARRIVE, true).await;
    got.extend(recv_for(&mut c, QUIET, true).await);
    assert_eq!(
        topics(&got),
        ["r/a"],
        "only the live message on r/a may arrive (not the stale page for r/#)"
    );
    server.shutdown().await;
}

/// e8: overlapping filters (`o/#`, `o/+`) whose replays bring the same stored
/// message: it is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e8_overlapping_filters_replaying_same_stored_message_deliver_once() {
    let (server, _probe) = start("", true).await;
    let addr = server.local_addrs()[0];
    let (mut c, _) = raw_v4(addr, "ovl", true).await;
    // (The replayed message may come before the SUBACK: recv_publishes skips the SUBACK.)
    c.send(&subscribe_many_v4(1, &["o/#", "o/+"], 1)).await;
    let mut got = recv_publishes(&mut c, 1, ARRIVE, true).await;
    got.extend(recv_for(&mut c, QUIET, true).await);
    assert_eq!(
        topics(&got),
        ["o/a"],
        "stored message 5 must be delivered exactly once"
    );
    server.shutdown().await;
}

/// e9: a connection that never sends CONNECT does not hold up shutdown
/// (which would otherwise wait up to `shutdown.timeout` = 10 s).
#[tokio::test]
async fn e9_connection_without_connect_does_not_delay_shutdown() {
    let (server, _probe) = start("shutdown.timeout = 10s\nmqtt.connect_timeout = 30s\n", false).await;
    let addr = server.local_addrs()[0];
    let _tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), server.shutdown())
        .await
        .expect("shutdown did not finish within 30 s");
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "shutdown took {took:?}: it waited for a connection that never sent CONNECT"
    );
}

/// e10: one SUBSCRIBE with two overlapping filters gets the retained message
/// once per filter, as two separate SUBSCRIBEs would.
#[tokio::test]
async fn e10_one_subscribe_two_matching_filters_gets_retained_twice() {
    let (server, _probe) = start("", false).await;
    let addr = server.local_addrs()[0];
    let (mut p, _) = raw_v4(addr, "pret", true).await;
    p.send(&publish_v4_bytes("k/a", 1, true, 1, b"ret")).await;
    assert_eq!(p.read_packet().await, Some(puback(1)));

    let (mut c, _) = raw_v4(addr, "kk", true).await;
    subscribe(&mut c, &subscribe_many_v4(1, &["k/#", "k/+"], 0)).await;
    let mut got = recv_publishes(&mut c, 2, ARRIVE, false).await;
    got.extend(recv_for(&mut c, QUIET, false).await);
    assert_eq!(
        topics(&got),
        ["k/a", "k/a"],
        "one retained copy per matching filter: {got:?}"
    );
    assert!(
        got.iter().all(|p| p.retain),
        "retained copies carry RETAIN: {got:?}"
    );
    server.shutdown().await;
}

/// e11: after a reconnect with Receive Maximum 1, unacknowledged messages are
/// re-sent one at a time: each PUBACK lets the next out, all with DUP, in
/// their original order and packet ids.
#[tokio::test]
async fn e11_resend_after_reconnect_respects_new_receive_maximum() {
    let (server, _probe) = start("", false).await;
    let addr = server.local_addrs()[0];
    let (mut c, _) = raw_v5(addr, "rm", true, &EXPIRY_300).await;
    subscribe(&mut c, &subscribe_v5_bytes(1, "m/#", 1)).await;
    let (mut p, _) = raw_v4(addr, "pm", true).await;
    for i in 0..5 {
        p.send(&publish_v4_bytes("m/1", 1, false, i + 1, b"x")).await;
    }
    let first = recv_publishes(&mut c, 5, ARRIVE, false).await; // not acknowledged
    assert_eq!(first.len(), 5, "first connection: {first:?}");
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut props = EXPIRY_300.to_vec();
    props.extend_from_slice(&[0x21, 0, 1]); // Receive Maximum 1
    let (mut c, ack) = raw_v5(addr, "rm", false, &props).await;
    let at = body_start(&ack);
    assert_eq!(
        &ack[at..at + 2],
        [0x01, 0x00],
        "session present, success: {ack:02x?}"
    );
    for (i, original) in first.iter().enumerate() {
        let got = recv_publishes(&mut c, 1, ARRIVE, false).await;
        assert_eq!(got.len(), 1, "re-sent message {} of 5 did not arrive", i + 1);
        let resent = &got[0];
        assert!(resent.dup, "a re-sent PUBLISH must have DUP set: {resent:?}");
        assert_eq!(
            resent.pkid, original.pkid,
            "re-sent in the original order: {resent:?}"
        );
        match c.read_packet_within(Duration::from_millis(200)).await {
            RawRead::TimedOut => {}
            other => panic!(
                "with Receive Maximum 1 and message {} unacknowledged, nothing else may come; got {other:02x?}",
                i + 1
            ),
        }
        c.send(&puback(resent.pkid.unwrap())).await;
    }
    let extra = recv_for(&mut c, QUIET, true).await;
    assert!(
        extra.is_empty(),
        "only the 5 unacknowledged messages were expected, got {extra:?}"
    );
    server.shutdown().await;
}

/// e12: under a flood of deliveries to a subscriber, its PINGREQ is answered
/// while the flood is still going (more flood messages follow the PINGRESP),
/// not after the whole flood was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e12_pingreq_answered_during_delivery_flood() {
    let (server, _probe) = start("", false).await;
    let addr = server.local_addrs()[0];
    let (mut sub, _) = raw_v4(addr, "fsub", true).await;
    subscribe(&mut sub, &subscribe_v4_bytes(1, "f", 0)).await;
    let mut pubs = Vec::new();
    for i in 0..4 {
        let (p, _) = raw_v4(addr, &format!("fp{i}"), true).await;
        pubs.push(p);
    }
    let one = publish_v4_bytes("f", 0, false, 0, &[b'y'; 50]);
    let blob: Arc<Vec<u8>> = Arc::new(one.repeat(20_000));
    let mut senders = Vec::new();
    for mut p in pubs {
        let blob = Arc::clone(&blob);
        senders.push(tokio::spawn(async move {
            for _ in 0..5 {
                if p.try_send(&blob).await.is_err() {
                    return;
                }
            }
            // Keep the connection open until the test ends.
            tokio::time::sleep(Duration::from_secs(60)).await;
        }));
    }
    let total = 4 * 5 * 20_000usize;

    // Wait until the flood reaches the subscriber, then ping.
    let first = recv_publishes(&mut sub, 1, ARRIVE, false).await;
    assert_eq!(first.len(), 1, "the flood did not reach the subscriber");
    sub.send(&pingreq_bytes()).await;

    let mut before = 1usize;
    let mut after = 0usize;
    let mut pong = false;
    loop {
        match sub.read_packet_within(Duration::from_secs(3)).await {
            RawRead::Packet(p) if packet_type(&p) == ptype::PINGRESP => pong = true,
            RawRead::Packet(p) if packet_type(&p) == ptype::PUBLISH => {
                if pong {
                    after += 1;
                    // A few flood messages after the PINGRESP are proof enough.
                    if after >= 10 {
                        break;
                    }
                } else {
                    before += 1;
                }
            }
            RawRead::Packet(p) => panic!("unexpected packet {p:02x?}"),
            RawRead::Closed | RawRead::TimedOut => break,
        }
    }
    assert!(pong, "no PINGRESP ({before} flood messages received)");
    assert!(
        after > 0,
        "PINGRESP came only after the whole flood: {before} of {total} flood messages before it, none after"
    );
    for s in &senders {
        s.abort();
    }
    server.shutdown().await;
}

/// e13: shared round robin is per group: publishes alternating between two
/// topics, each with its own two-member group, are spread over both members
/// of each group.
#[tokio::test]
async fn e13_shared_round_robin_is_per_group() {
    let (server, _probe) = start("", false).await;
    let addr = server.local_addrs()[0];
    let mut members = Vec::new();
    for (id, f) in [
        ("a1", "$share/g1/s1"),
        ("a2", "$share/g1/s1"),
        ("b1", "$share/g2/s2"),
        ("b2", "$share/g2/s2"),
    ] {
        let (mut c, _) = raw_v4(addr, id, true).await;
        subscribe(&mut c, &subscribe_v4_bytes(1, f, 0)).await;
        members.push((id, c));
    }
    const PER_TOPIC: usize = 10;
    let (mut p, _) = raw_v4(addr, "prr", true).await;
    for _ in 0..PER_TOPIC {
        p.send(&publish_v4_bytes("s1", 0, false, 0, b"1")).await;
        p.send(&publish_v4_bytes("s2", 0, false, 0, b"2")).await;
    }
    // Each group gets every message of its topic exactly once, spread over both members.
    let mut counts = Vec::new();
    for (id, c) in members.iter_mut() {
        let got = recv_for(c, Duration::from_millis(300), false).await;
        counts.push((*id, got.len()));
    }
    for group in counts.chunks(2) {
        let sum: usize = group.iter().map(|(_, n)| n).sum();
        assert_eq!(sum, PER_TOPIC, "each group gets each message once: {counts:?}");
        for (id, n) in group {
            assert!(
                4 * n >= PER_TOPIC,
                "member {id} got {n} of its group's {PER_TOPIC} messages (< 1/4): {counts:?}"
            );
        }
    }
    server.shutdown().await;
}
