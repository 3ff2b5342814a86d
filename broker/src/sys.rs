//! `$SYS`: every `sys.interval` the broker publishes its counters, retained,
//! under two layouts, so that tools written for either broker find them:
//!
//! - EMQX's: each counter of [`crate::metrics`] to
//!   `$SYS/brokers/<node.name>/metrics/<name>`, and the number of connected
//!   clients to `$SYS/brokers/<node.name>/clients/connected`;
//! - Mosquitto's (`mosquitto(8)`, "BROKER STATUS"): `$SYS/broker/uptime`
//!   (`N seconds`), `$SYS/broker/version`, `$SYS/broker/clients/...`,
//!   `$SYS/broker/messages/received` and `/sent` (MQTT packets of any type),
//!   `$SYS/broker/bytes/received` and `/sent`, and the moving averages of
//!   [`load`] under `$SYS/broker/load/...`.
//!
//! `$SYS` topics are not matched by a leading `#` or `+` (MQTT-4.7.2-1): a
//! client subscribes to them by name (`$SYS/#` works). In a cluster each node
//! publishes its own values to its own subscribers only.

mod load;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hooks_spec::{Message, QoS};
use tokio::time::Instant;

use crate::shared::Shared;

/// What `$SYS/broker/version` says.
pub const VERSION: &str = concat!("postbox ", env!("CARGO_PKG_VERSION"));

/// Publishes the counters every `interval` until shutdown.
pub async fn publish_loop(shared: Arc<Shared>, interval: Duration) {
    let started = Instant::now();
    let mut loads = load::Loads::new(started);
    let mut shutdown = shared.shutdown_rx();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            now = tick.tick() => {
                publish_emqx(&shared);
                publish_mosquitto(&shared, now.duration_since(started), &mut loads, now);
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// EMQX's layout: every counter, and the connected clients, under the node's name.
fn publish_emqx(shared: &Shared) {
    let prefix = format!("$SYS/brokers/{}", shared.config.node_name);
    for (name, value) in shared.metrics.snapshot() {
        sys_publish(shared, format!("{prefix}/metrics/{name}"), value.to_string());
    }
    sys_publish(
        shared,
        format!("{prefix}/clients/connected"),
        shared.connected().to_string(),
    );
}

/// Mosquitto's layout, under `$SYS/broker/`.
fn publish_mosquitto(shared: &Shared, uptime: Duration, loads: &mut load::Loads, now: Instant) {
    let m = &shared.metrics;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let connected = shared.connected();
    // Sessions, connected or not (a persistent session outlives its connection).
    let sessions = shared.registry.len().max(connected);
    let totals = load::Totals {
        messages_received: get(&m.packets_received),
        messages_sent: get(&m.packets_sent),
        bytes_received: get(&m.bytes_received),
        bytes_sent: get(&m.bytes_sent),
        connections: get(&m.connects_received),
    };
    let values = [
        ("uptime", format!("{} seconds", uptime.as_secs())),
        ("version", VERSION.to_string()),
        ("clients/connected", connected.to_string()),
        ("clients/disconnected", (sessions - connected).to_string()),
        ("clients/total", sessions.to_string()),
        ("messages/received", totals.messages_received.to_string()),
        ("messages/sent", totals.messages_sent.to_string()),
        ("bytes/received", totals.bytes_received.to_string()),
        ("bytes/sent", totals.bytes_sent.to_string()),
        ("retained messages/count", shared.retain.len().to_string()),
    ];
    for (name, value) in values {
        sys_publish(shared, format!("$SYS/broker/{name}"), value);
    }
    loads.update(&totals, now);
    for (name, value) in loads.values() {
        sys_publish(shared, format!("$SYS/broker/load/{name}"), format!("{value:.2}"));
    }
}

fn sys_publish(shared: &Shared, topic: String, payload: String) {
    // The broker's own message, not a client's publish: message.publish
    // plugins (storage) do not see it, and it does not count as routed.
    crate::publish::system(shared, Message::new(topic, payload, QoS::AtMostOnce, true));
}
