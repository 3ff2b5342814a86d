//! The running broker: shared state, startup, plugins and graceful shutdown.
//!
//! [`Server::start`] binds the listeners, enables the plugins named in
//! `plugins.load` (refusing to start if one fails), and spawns one accept loop
//! per listener. [`Server::shutdown`] stops accepting, tells every session to
//! finish through a watch channel (the broadcast signal), waits for them up to
//! `shutdown.timeout`, then stops the plugins in reverse order.
//! [`Server::reload_plugins`] is what SIGHUP runs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use hooks_spec::{DropReason, DroppedArgs, Hooks, Message, Plugin, PluginContext, PublishArgs};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::handle::Handle;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::retain::RetainStore;
use crate::router::Router;
use crate::{listener, BrokerError};

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
    connected: AtomicI64,
    next_uid: AtomicU64,
    shutdown: watch::Receiver<bool>,
    /// Set when shutdown begins; sessions look at it on every turn.
    shutting_down: AtomicBool,
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
    fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        for session in self.registry.all() {
            let _ = session.tx.send(crate::session::SessionCmd::Shutdown);
        }
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

    /// Applies retain and routes a message that passed message.publish;
    /// returns how many sessions got it.
    pub fn route(&self, msg: Arc<Message>) -> usize {
        if msg.retain && self.config.mqtt.retain_available {
            self.retain.apply(&msg);
        }
        self.metrics.messages_routed.fetch_add(1, Ordering::Relaxed);
        let n = self.router.route(&msg);
        if n == 0 {
            self.fire_dropped(&msg, DropReason::NoSubscribers, None);
        }
        n
    }

    /// Runs message.publish for a client's will and routes the result.
    pub async fn publish_from_client(&self, client: Option<hooks_spec::ClientInfo>, msg: Message) -> usize {
        // A will is a publish by its client: the ACL applies to it too.
        if let (Some(c), false) = (&client, self.hooks.client_check_acl.is_empty()) {
            let args = Arc::new(hooks_spec::AclArgs {
                client: c.clone(),
                action: hooks_spec::AclAction::Publish,
                topic: msg.topic.to_string(),
            });
            if self
                .hooks
                .client_check_acl
                .run_fold(args, hooks_spec::AclResult::Allow)
                .await
                .into_inner()
                == hooks_spec::AclResult::Deny
            {
                tracing::info!(clientid = %c.clientid, topic = %msg.topic, "will denied by ACL");
                Metrics::bump(&self.metrics.acl_denied_publish);
                self.fire_dropped(&Arc::new(msg), DropReason::Denied, None);
                return 0;
            }
        }
        let msg = if self.hooks.message_publish.is_empty() {
            msg
        } else {
            match self
                .hooks
                .message_publish
                .run_fold(Arc::new(PublishArgs { client, will: true }), msg)
                .await
            {
                hooks_spec::Flow::Continue(m) if m.headers.not_stored => {
                    // A will is stored before it is routed, like any message a
                    // storage rule applies to; one that could not be is not sent.
                    tracing::warn!(topic = %m.topic, "will not published: it could not be stored");
                    self.fire_dropped(&Arc::new(m), DropReason::StoreFailed, None);
                    return 0;
                }
                hooks_spec::Flow::Continue(m) => m,
                hooks_spec::Flow::Stop(m) => {
                    self.fire_dropped(&Arc::new(m), DropReason::Denied, None);
                    return 0;
                }
            }
        };
        self.route(Arc::new(msg))
    }

    /// Counts a dropped message and runs message.dropped in the background.
    pub fn fire_dropped(&self, msg: &Arc<Message>, reason: DropReason, clientid: Option<&Arc<str>>) {
        self.metrics.messages_dropped.fetch_add(1, Ordering::Relaxed);
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

/// A running broker.
pub struct Server {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    plugins: Vec<Box<dyn Plugin>>,
    shutdown_tx: watch::Sender<bool>,
    accept_tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Reads the TLS listeners' certificates, binds the listeners, starts
    /// the plugins (already configured, in order) and starts accepting
    /// connections.
    pub async fn start(config: Config, plugins: Vec<Box<dyn Plugin>>) -> Result<Server, BrokerError> {
        let hooks = Arc::new(Hooks::new(config.hooks_timeout));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut bound = Vec::new();
        for l in &config.listeners {
            let tls = match &l.tls {
                Some(settings) => Some(crate::tls::TlsListener::load(&config.file, settings)?),
                None => None,
            };
            let bind_error = |source| BrokerError::Bind {
                name: l.key(),
                addr: l.addr,
                source,
            };
            let listener = TcpListener::bind(l.addr).await.map_err(bind_error)?;
            let addr = listener.local_addr().map_err(bind_error)?;
            let spec = listener::ListenerSpec {
                key: l.key(),
                max_conn_rate: l.max_conn_rate,
                tls,
            };
            bound.push((listener, addr, spec));
        }
        let shared = Arc::new(Shared {
            config,
            hooks: Arc::clone(&hooks),
            router: Router::new(),
            retain: RetainStore::new(),
            registry: Registry::new(),
            metrics: Metrics::default(),
            tasks: Arc::default(),
            connected: AtomicI64::new(0),
            next_uid: AtomicU64::new(1),
            shutdown: shutdown_rx,
            shutting_down: AtomicBool::new(false),
        });
        let handle: Arc<dyn hooks_spec::BrokerHandle> = Arc::new(Handle::new(Arc::clone(&shared)));
        let mut started: Vec<Box<dyn Plugin>> = Vec::new();
        for plugin in plugins {
            let ctx = PluginContext {
                hooks: Arc::clone(&hooks),
                broker: Arc::clone(&handle),
            };
            if let Err(e) = plugin.start(ctx).await {
                let name = plugin.name().to_string();
                for p in started.iter().rev() {
                    let _ = p.stop(&hooks).await;
                }
                return Err(BrokerError::PluginStart {
                    name,
                    message: e.to_string(),
                });
            }
            tracing::info!(plugin = plugin.name(), "plugin started");
            started.push(plugin);
        }
        let mut addrs = Vec::new();
        let mut accept_tasks = Vec::new();
        if let Some(interval) = shared.config.sys_interval {
            accept_tasks.push(tokio::spawn(crate::metrics::publish_loop(
                Arc::clone(&shared),
                interval,
            )));
        }
        for (listener, addr, spec) in bound {
            addrs.push(addr);
            accept_tasks.push(tokio::spawn(listener::accept_loop(
                listener,
                Arc::clone(&shared),
                spec,
            )));
        }
        Ok(Server {
            shared,
            addrs,
            plugins: started,
            shutdown_tx,
            accept_tasks,
        })
    }

    /// The bound listener addresses, in config order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Serves one already-accepted stream as a listener would: the
    /// handshake, then a session. For in-process tests and the connection
    /// fuzz target, which feed the broker from memory.
    pub fn serve_stream(
        &self,
        stream: impl crate::transport::Io,
        peer: crate::transport::Peer,
    ) -> tokio::task::JoinHandle<()> {
        let stream = crate::transport::Stream::Boxed(Box::new(stream));
        tokio::spawn(crate::connection::handle_stream(
            Arc::clone(&self.shared),
            stream,
            peer,
        ))
    }

    /// The shared state (for tests and the plugin handle).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Asks every started plugin, in `plugins.load` order, to reload (what
    /// the broker does on SIGHUP). A plugin that fails keeps what it had in
    /// force and the others still reload; each outcome is logged, then
    /// `reload done`. Returns how many plugins failed.
    pub async fn reload_plugins(&self) -> usize {
        let mut failed = 0;
        for p in &self.plugins {
            match p.reload().await {
                Ok(()) => tracing::info!(plugin = p.name(), "plugin reloaded"),
                Err(e) => {
                    failed += 1;
                    tracing::warn!(plugin = p.name(), "plugin reload failed: {e}");
                }
            }
        }
        tracing::info!(plugins = self.plugins.len(), failed, "reload done");
        failed
    }

    /// Graceful shutdown: stop accepting, let sessions finish, stop plugins.
    pub async fn shutdown(self) {
        for t in &self.accept_tasks {
            t.abort();
        }
        let _ = self.shutdown_tx.send(true);
        self.shared.begin_shutdown();
        let timeout = self.shared.config.shutdown_timeout;
        if tokio::time::timeout(timeout, self.shared.tasks.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!("sessions still running after {timeout:?}; stopping anyway");
        }
        for p in self.plugins.iter().rev() {
            match p.stop(&self.shared.hooks).await {
                Ok(()) => tracing::info!(plugin = p.name(), "plugin stopped"),
                Err(e) => tracing::warn!(plugin = p.name(), "plugin stop failed: {e}"),
            }
            self.shared.hooks.remove_owner(p.name());
        }
    }
}
