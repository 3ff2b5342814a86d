//! Broker counters, and their publication under `$SYS`.
//!
//! Every refusal the broker makes on a client's behalf (failed
//! authentication, an ACL denial, a rate limit) is counted here as well as
//! logged, so an operator can watch them. Every `sys.interval` the broker
//! publishes each counter, retained, to
//! `$SYS/brokers/<node.name>/metrics/<name>` (the layout EMQX uses), and the
//! number of connected clients to `$SYS/brokers/<node.name>/clients/connected`.
//! `$SYS` topics are not matched by a leading `#` or `+` (MQTT-4.7.2-1): a
//! client subscribes to them by name.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hooks_spec::{Message, QoS};

use crate::server::Shared;

/// Broker counters (monotonic since start).
#[derive(Default)]
pub struct Metrics {
    /// Messages dropped for any reason.
    pub messages_dropped: AtomicU64,
    /// Messages routed (each publish counts once).
    pub messages_routed: AtomicU64,
    /// Connections refused because authentication failed or anonymous access is off.
    pub auth_failures: AtomicU64,
    /// PUBLISH packets (and wills) an ACL denied.
    pub acl_denied_publish: AtomicU64,
    /// Subscription filters an ACL denied.
    pub acl_denied_subscribe: AtomicU64,
    /// Clients disconnected for publishing faster than their rate limit.
    pub publish_rate_limited: AtomicU64,
    /// Connections refused because a listener's connection rate limit was reached.
    pub connect_rate_limited: AtomicU64,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter by its published name (EMQX's names where EMQX has one).
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("messages.routed", get(&self.messages_routed)),
            ("messages.dropped", get(&self.messages_dropped)),
            ("client.auth.failure", get(&self.auth_failures)),
            ("client.acl.deny.publish", get(&self.acl_denied_publish)),
            ("client.acl.deny.subscribe", get(&self.acl_denied_subscribe)),
            ("client.rate_limited.publish", get(&self.publish_rate_limited)),
            ("client.rate_limited.connect", get(&self.connect_rate_limited)),
        ]
    }
}

/// Publishes the counters every `interval` until shutdown.
pub async fn publish_loop(shared: Arc<Shared>, interval: Duration) {
    let mut shutdown = shared.shutdown_rx();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => publish_once(&shared),
            _ = shutdown.changed() => return,
        }
    }
}

/// Publishes every counter once, retained, at QoS 0.
fn publish_once(shared: &Shared) {
    let prefix = format!("$SYS/brokers/{}", shared.config.node_name);
    for (name, value) in shared.metrics.snapshot() {
        sys_publish(shared, format!("{prefix}/metrics/{name}"), value);
    }
    sys_publish(
        shared,
        format!("{prefix}/clients/connected"),
        shared.connected() as u64,
    );
}

fn sys_publish(shared: &Shared, topic: String, value: u64) {
    let msg = Message::new(topic, value.to_string(), QoS::AtMostOnce, true);
    // Straight to the router: $SYS messages are the broker's own, not a
    // client's publish, so message.publish plugins (storage) do not see them
    // and they do not count as routed messages.
    let msg = Arc::new(msg);
    if shared.config.mqtt.retain_available {
        shared.retain.apply(&msg);
    }
    shared.router.route(&msg);
}
