//! `$SYS`: every `sys.interval` the broker publishes each counter of
//! [`crate::metrics`], retained, to `$SYS/brokers/<node.name>/metrics/<name>`
//! (the layout EMQX uses), and the number of connected clients to
//! `$SYS/brokers/<node.name>/clients/connected`. `$SYS` topics are not
//! matched by a leading `#` or `+` (MQTT-4.7.2-1): a client subscribes to
//! them by name.

use std::sync::Arc;
use std::time::Duration;

use hooks_spec::{Message, QoS};

use crate::shared::Shared;

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
    // The broker's own message, not a client's publish: message.publish
    // plugins (storage) do not see it, and it does not count as routed.
    crate::publish::system(
        shared,
        Message::new(topic, value.to_string(), QoS::AtMostOnce, true),
    );
}
