//! `$SYS/broker/...` (Mosquitto's names) next to `$SYS/brokers/<node>/...`
//! (EMQX's): a client subscribed to `$SYS/#` sees the values move with the
//! traffic of other clients.

use std::collections::HashMap;

use rumqttc::QoS;
use tokio::time::Instant;

use crate::support::*;

/// A client subscribed to `$SYS/#` that remembers the latest value of each topic.
struct SysWatch {
    client: V4Client,
    latest: HashMap<String, String>,
}

impl SysWatch {
    async fn start(addr: std::net::SocketAddr) -> SysWatch {
        let (mut client, _) = V4Client::connect(v4_options(addr, "sys-watcher", true)).await;
        assert_eq!(
            client.subscribe("$SYS/#", QoS::AtMostOnce).await,
            vec![rumqttc::SubscribeReasonCode::Success(QoS::AtMostOnce)]
        );
        let mut watch = SysWatch {
            client,
            latest: HashMap::new(),
        };
        for ev in std::mem::take(&mut watch.client.backlog) {
            watch.absorb(&ev);
        }
        watch
    }

    fn absorb(&mut self, ev: &rumqttc::Event) {
        if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
            let value = String::from_utf8_lossy(&p.payload).into_owned();
            self.latest.insert(p.topic.clone(), value);
        }
    }

    /// Waits (10 s) until `topic` holds a value `ok` accepts; returns it.
    async fn until(&mut self, topic: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(v) = self.latest.get(topic).filter(|v| ok(v)) {
                return v.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.client.poll_once(left).await {
                Some(Ok(ev)) => self.absorb(&ev),
                Some(Err(e)) => panic!("the $SYS watcher lost its connection: {e:?}"),
                None => panic!(
                    "{topic} did not reach the expected value within {TIMEOUT:?}; last value: {:?}",
                    self.latest.get(topic)
                ),
            }
        }
    }

    /// Waits until the counter `topic` is at least `min`; returns it.
    async fn at_least(&mut self, topic: &str, min: u64) -> u64 {
        let v = self
            .until(topic, |v| v.parse::<u64>().is_ok_and(|n| n >= min))
            .await;
        v.parse().unwrap()
    }

    /// The counter `topic` as last seen (waiting for a first value).
    async fn number(&mut self, topic: &str) -> u64 {
        self.at_least(topic, 0).await
    }
}

/// `12.34`: a number with two decimals, as Mosquitto writes its loads.
fn two_decimals(v: &str) -> Option<f64> {
    let (_, frac) = v.split_once('.')?;
    (frac.len() == 2).then_some(())?;
    v.parse().ok()
}

#[tokio::test]
async fn sys_topics_under_mosquitto_names_move_with_traffic() {
    let broker = Broker::start("sys.interval = 100ms\nnode.name = ops@test\n").await;
    let mut sys = SysWatch::start(broker.addr).await;

    let version = sys.until("$SYS/broker/version", |_| true).await;
    assert_eq!(version, format!("postbox {}", env!("CARGO_PKG_VERSION")));
    let uptime = sys.until("$SYS/broker/uptime", |_| true).await;
    let secs = uptime
        .strip_suffix(" seconds")
        .unwrap_or_else(|| panic!("uptime: {uptime:?}"));
    assert!(secs.parse::<u64>().is_ok(), "uptime: {uptime:?}");
    sys.until("$SYS/broker/clients/connected", |v| v == "1").await;

    let received = sys.number("$SYS/broker/messages/received").await;
    let sent = sys.number("$SYS/broker/messages/sent").await;
    let bytes_in = sys.number("$SYS/broker/bytes/received").await;
    let bytes_out = sys.number("$SYS/broker/bytes/sent").await;

    // 20 QoS 1 messages of 1000 bytes from one client to another.
    let (mut sub, _) = V4Client::connect(v4_options(broker.addr, "ops-sub", true)).await;
    sub.subscribe("ops/t", QoS::AtLeastOnce).await;
    let (mut publ, _) = V4Client::connect(v4_options(broker.addr, "ops-pub", true)).await;
    let payload = vec![b'x'; 1000];
    for _ in 0..20 {
        publ.publish("ops/t", QoS::AtLeastOnce, false, payload.clone())
            .await;
    }
    for _ in 0..20 {
        assert_eq!(sub.next_publish().await.payload.len(), 1000);
    }
    sys.until("$SYS/broker/clients/connected", |v| v == "3").await;
    sys.until("$SYS/broker/clients/total", |v| v == "3").await;
    // Packets: 2 CONNECT, 1 SUBSCRIBE, 20 PUBLISH and 20 PUBACK in; 2 CONNACK,
    // 1 SUBACK, 20 PUBACK and 20 PUBLISH out (and the watcher's own $SYS).
    sys.at_least("$SYS/broker/messages/received", received + 43).await;
    sys.at_least("$SYS/broker/messages/sent", sent + 43).await;
    sys.at_least("$SYS/broker/bytes/received", bytes_in + 20_000)
        .await;
    sys.at_least("$SYS/broker/bytes/sent", bytes_out + 20_000).await;
    for load in [
        "$SYS/broker/load/messages/received/1min",
        "$SYS/broker/load/bytes/received/1min",
        "$SYS/broker/load/bytes/sent/5min",
        "$SYS/broker/load/connections/15min",
    ] {
        let v = sys
            .until(load, |v| two_decimals(v).is_some_and(|n| n > 0.0))
            .await;
        assert!(two_decimals(&v).is_some(), "{load}: {v:?}");
    }
    // EMQX's names are still there, with the same counters.
    sys.at_least("$SYS/brokers/ops@test/metrics/bytes.received", bytes_in + 20_000)
        .await;
    sys.at_least("$SYS/brokers/ops@test/metrics/messages.routed", 20)
        .await;
    sys.until("$SYS/brokers/ops@test/clients/connected", |v| v == "3")
        .await;

    publ.disconnect().await;
    sub.disconnect().await;
    sys.until("$SYS/broker/clients/connected", |v| v == "1").await;
    sys.until("$SYS/broker/uptime", |v| v != "0 seconds").await;
}
