//! Broker counters.
//!
//! Every refusal the broker makes on a client's behalf (failed
//! authentication, an ACL denial, a rate limit) is counted here as well as
//! logged, so an operator can watch them; [`crate::sys`] publishes them.
//!
//! Traffic (bytes and packets in and out) is counted per socket read or
//! write, not per packet: a connection counts its packets in plain integers
//! ([`Traffic`]) and adds them here when it reads or writes, so the hot path
//! pays a few relaxed atomic adds per system call.

use std::sync::atomic::{AtomicU64, Ordering};

use hooks_spec::{DropReason, QoS};

/// Every [`DropReason`], in the order of [`Metrics::dropped_by_reason`].
pub const DROP_REASONS: [DropReason; 6] = [
    DropReason::NoSubscribers,
    DropReason::QueueFull,
    DropReason::Expired,
    DropReason::Denied,
    DropReason::TooLarge,
    DropReason::StoreFailed,
];

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
    /// PUBLISH packets received from clients, by QoS (0, 1, 2).
    pub messages_received: [AtomicU64; 3],
    /// PUBLISH packets sent to clients, by QoS (0, 1, 2); a resend counts again.
    pub messages_sent: [AtomicU64; 3],
    /// Bytes read from client connections (MQTT bytes: TLS framing is not counted).
    pub bytes_received: AtomicU64,
    /// Bytes written to client connections (MQTT bytes).
    pub bytes_sent: AtomicU64,
    /// `messages_dropped` by reason, in the order of [`DROP_REASONS`].
    pub dropped_by_reason: [AtomicU64; 6],
    /// MQTT packets of any type received from clients.
    pub packets_received: AtomicU64,
    /// MQTT packets of any type sent to clients.
    pub packets_sent: AtomicU64,
    /// CONNECT packets received (accepted or refused).
    pub connects_received: AtomicU64,
}

/// Packets one connection counted since it last added them to [`Metrics`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Traffic {
    /// Packets decoded.
    pub packets_in: u32,
    /// Packets encoded for sending.
    pub packets_out: u32,
}

impl Traffic {
    /// Adds the packets counted so far to `metrics` and starts again from 0.
    pub fn flush(&mut self, metrics: &Metrics) {
        if self.packets_in > 0 {
            metrics
                .packets_received
                .fetch_add(u64::from(self.packets_in), Ordering::Relaxed);
        }
        if self.packets_out > 0 {
            metrics
                .packets_sent
                .fetch_add(u64::from(self.packets_out), Ordering::Relaxed);
        }
        *self = Traffic::default();
    }
}

impl Metrics {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a PUBLISH received from a client.
    pub fn received(&self, qos: QoS) {
        self.messages_received[qos as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a PUBLISH written for a client.
    pub fn sent(&self, qos: QoS) {
        self.messages_sent[qos as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a dropped message (total and by reason).
    pub fn dropped(&self, reason: DropReason) {
        self.messages_dropped.fetch_add(1, Ordering::Relaxed);
        let i = DROP_REASONS.iter().position(|r| *r == reason).unwrap_or(0);
        self.dropped_by_reason[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The traffic counters by EMQX 4's metric names (the management API's
    /// `/api/v4/metrics` adds them to [`Metrics::snapshot`]).
    pub fn traffic_snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let r = &self.messages_received;
        let s = &self.messages_sent;
        // bytes.* are in snapshot().
        let mut out = vec![
            ("messages.received", r.iter().map(get).sum()),
            ("messages.qos0.received", get(&r[0])),
            ("messages.qos1.received", get(&r[1])),
            ("messages.qos2.received", get(&r[2])),
            ("messages.sent", s.iter().map(get).sum()),
            ("messages.qos0.sent", get(&s[0])),
            ("messages.qos1.sent", get(&s[1])),
            ("messages.qos2.sent", get(&s[2])),
        ];
        for (reason, c) in DROP_REASONS.iter().zip(&self.dropped_by_reason) {
            let name = match reason {
                DropReason::NoSubscribers => "messages.dropped.no_subscribers",
                DropReason::QueueFull => "messages.dropped.queue_full",
                DropReason::Expired => "messages.dropped.expired",
                DropReason::Denied => "messages.dropped.denied",
                DropReason::TooLarge => "messages.dropped.too_large",
                DropReason::StoreFailed => "messages.dropped.store_failed",
            };
            out.push((name, get(c)));
        }
        out
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
            ("bytes.received", get(&self.bytes_received)),
            ("bytes.sent", get(&self.bytes_sent)),
            ("packets.received", get(&self.packets_received)),
            ("packets.sent", get(&self.packets_sent)),
            ("packets.connect.received", get(&self.connects_received)),
        ]
    }
}
