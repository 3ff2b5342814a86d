//! Broker counters.
//!
//! Every refusal the broker makes on a client's behalf (failed
//! authentication, an ACL denial, a rate limit) is counted here as well as
//! logged, so an operator can watch them; [`crate::sys`] publishes them.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Messages handed to other nodes of the cluster (one per node).
    pub cluster_forwarded: AtomicU64,
    /// Messages other nodes forwarded to this one.
    pub cluster_received: AtomicU64,
    /// Messages for another node dropped because its link's queue was full.
    pub cluster_dropped: AtomicU64,
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
            ("cluster.forwarded", get(&self.cluster_forwarded)),
            ("cluster.received", get(&self.cluster_received)),
            ("cluster.dropped", get(&self.cluster_dropped)),
        ]
    }
}
