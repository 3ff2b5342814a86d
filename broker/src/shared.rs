//! The state every task of one broker shares: configuration, hook chains,
//! router, retained messages, the session registry, counters, and the
//! shutdown signal.
//!
//! It depends only on those state modules (none of them depends back on it):
//! sessions, connections, the publish pipeline and the plugin handle hold an
//! `Arc<Shared>`; nothing here knows them.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use hooks_spec::{DropReason, DroppedArgs, Hooks, Message};
use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::retain::RetainStore;
use crate::router::Router;

/// Counts live tasks so shutdown can wait for them.
#[derive(Default)]
pub struct TaskCount {
    live: AtomicUsize,
    idle: Notify,
}

/// Held by a task while it runs.
pub struct TaskGuard(Arc<TaskCount>);

impl TaskCount {
    /// Registers the calling task until the guard drops.
    pub fn enter(self: &Arc<Self>) -> TaskGuard {
        self.live.fetch_add(1, Ordering::SeqCst);
        TaskGuard(Arc::clone(self))
    }

    /// Waits until no task is registered.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.live.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Hands messages to the other nodes of a cluster: set once, when the broker
/// runs in one (no cluster, no forwarder: the router has no other nodes).
pub trait Forwarder: Send + Sync {
    /// Sends `msg` to each node of `forwards`, for what each says (its plain
    /// subscribers, the shared groups it won); one node receives one
    /// publisher's messages in the order they are forwarded.
    fn forward(&self, msg: &Arc<Message>, forwards: Vec<crate::router::Forward>) -> Forwarded;
}

/// What [`Forwarder::forward`] did.
pub struct Forwarded {
    /// Nodes the message was dropped for (a link's queue was full).
    pub dropped: usize,
    /// Set when a link the message went on is backlogged: a publisher waits
    /// on it before acknowledging and reading more.
    pub backlog: Option<Backlog>,
}

/// A wait until the links a message went on have room again (bounded).
pub type Backlog = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// One live connection per client id across a cluster (set once, when the
/// broker runs in one).
pub trait Ownership: Send + Sync {
    /// Claims `clientid` for this node before its connection is attached,
    /// having the node that had it let it go; the claim's generation, or
    /// `None` when it could not be claimed (the database did not answer).
    fn claim<'a>(
        &'a self,
        clientid: &'a Arc<str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<i64>> + Send + 'a>>;

    /// Runs `start` (attaching the connection) under the claim `gen`, unless
    /// another node has taken the client id over since: then false.
    fn attach(&self, clientid: &Arc<str>, gen: i64, start: Box<dyn FnOnce() + '_>) -> bool;

    /// The session attached under the claim `gen` ended here: the claim is
    /// released, unless a newer one (a connection that took over) holds
    /// the client id now.
    fn release<'a>(
        &'a self,
        clientid: &'a Arc<str>,
        gen: i64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;
}

/// State shared by every task of one broker.
pub struct Shared {
    /// The configuration in force.
    pub config: Config,
    /// The hook chains.
    pub hooks: Arc<Hooks>,
    /// Subscriptions.
    pub router: Router,
    /// Retained messages.
    pub retain: RetainStore,
    /// Sessions by client id.
    pub registry: Registry,
    /// Counters.
    pub metrics: Metrics,
    /// Live connection and session tasks.
    pub tasks: Arc<TaskCount>,
    /// The cluster's link to the other nodes, when there is a cluster.
    pub forwarder: std::sync::OnceLock<Arc<dyn Forwarder>>,
    /// The cluster's client ownership, when there is a cluster.
    pub ownership: std::sync::OnceLock<Arc<dyn Ownership>>,
    pub(crate) connected: AtomicI64,
    pub(crate) next_uid: AtomicU64,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Keep-alive checks of every connection (one task, not a timer each).
    pub(crate) keepalive: crate::keepalive::KeepaliveChecks,
    /// Set when shutdown begins; sessions look at it on every turn.
    pub(crate) shutting_down: AtomicBool,
    /// Set by a drain (management API): new connections are refused with
    /// 0x9D (Server moved) and the server reference.
    pub(crate) draining: AtomicBool,
}

impl Shared {
    /// A receiver that changes when the broker shuts down.
    pub fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// True once the broker has begun to shut down.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Marks the broker as shutting down and tells every registered session
    /// (one registered after this sees the mark on its first turn).
    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        for session in self.registry.all() {
            let _ = session.tx.send(crate::delivery::SessionCmd::Shutdown);
        }
    }

    /// True once the node drains: it sends its clients elsewhere.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts draining: from now on new connections are refused (0x9D), and
    /// every registered session is told to close its connection the same way
    /// (one registering after this is refused at CONNECT already). Returns
    /// the answers of the sessions: whether each had a connection.
    pub(crate) fn begin_drain(&self) -> Vec<tokio::sync::oneshot::Receiver<bool>> {
        self.draining.store(true, Ordering::Release);
        let mut answers = Vec::new();
        for session in self.registry.all() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if session.tx.send(crate::delivery::SessionCmd::Drain(tx)).is_ok() {
                answers.push(rx);
            }
        }
        answers
    }

    /// A fresh session uid.
    pub fn next_uid(&self) -> u64 {
        self.next_uid.fetch_add(1, Ordering::Relaxed)
    }

    /// Connected clients now.
    pub fn connected(&self) -> usize {
        usize::try_from(self.connected.load(Ordering::Relaxed)).unwrap_or(0)
    }

    pub(crate) fn connected_add(&self, delta: i64) {
        self.connected.fetch_add(delta, Ordering::Relaxed);
    }

    /// A session expiry interval capped by `mqtt.session_expiry_interval`
    /// (`u32::MAX` means never).
    pub fn cap_expiry(&self, requested: u32) -> u32 {
        match self.config.mqtt.session_expiry_interval {
            None => requested,
            Some(cap) => requested.min(
                u32::try_from(cap.as_secs())
                    .unwrap_or(u32::MAX - 1)
                    .min(u32::MAX - 1),
            ),
        }
    }

    /// Counts a dropped message and runs message.dropped in the background.
    pub fn fire_dropped(&self, msg: &Arc<Message>, reason: DropReason, clientid: Option<&Arc<str>>) {
        self.metrics.dropped(reason);
        if self.hooks.message_dropped.is_empty() {
            return;
        }
        let args = Arc::new(DroppedArgs {
            message: Arc::clone(msg),
            node: self.config.node_name.clone(),
            reason,
            clientid: clientid.cloned(),
        });
        let hooks = Arc::clone(&self.hooks);
        tokio::spawn(async move {
            hooks.message_dropped.run(args).await;
        });
    }
}
