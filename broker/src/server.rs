//! The running broker: shared state, startup, plugins and graceful shutdown.
//!
//! [`Server::start`] binds the listeners, enables the plugins named in
//! `plugins.load` (refusing to start if one fails), and spawns one accept loop
//! per listener. [`Server::shutdown`] stops accepting, tells every session to
//! finish through a watch channel (the broadcast signal), waits for them up to
//! `shutdown.timeout`, then stops the plugins in reverse order.
//! [`Server::reload_plugins`] is what SIGHUP runs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::Arc;

use hooks_spec::{Hooks, MetricsRegistry, Plugin, PluginContext};
use tokio::sync::watch;

use crate::config::Config;
use crate::handle::Handle;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::retain::RetainStore;
use crate::router::Router;
use crate::shared::Shared;
use crate::{listener, BrokerError};

/// A running broker.
pub struct Server {
    shared: Arc<Shared>,
    cluster: Option<crate::cluster::ClusterTasks>,
    addrs: Vec<SocketAddr>,
    plugins: Vec<Arc<dyn Plugin>>,
    http: Option<crate::http::HttpServer>,
    shutdown_tx: watch::Sender<bool>,
    accept_tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Reads the TLS listeners' certificates, binds the listeners, starts
    /// the plugins (already configured, in order) and starts accepting
    /// connections.
    pub async fn start(config: Config, plugins: Vec<Box<dyn Plugin>>) -> Result<Server, BrokerError> {
        // Message ids carry the node, so ids of different nodes never collide.
        hooks_spec::set_node_id(hooks_spec::node_id_from_name(&config.node_name));
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
            let listener = listener::bind(l.addr).map_err(bind_error)?;
            let addr = listener.local_addr().map_err(bind_error)?;
            let spec = listener::ListenerSpec {
                key: l.key(),
                max_conn_rate: l.max_conn_rate,
                conn_bytes_in: l.conn_bytes_in,
                tls,
                websocket: l.websocket.as_ref().map(|w| crate::websocket::WsListener {
                    path: w.path.as_str().into(),
                }),
            };
            bound.push((listener, addr, spec));
        }
        let http_bound = match &config.management {
            Some(m) => Some(crate::http::bind(m).await?),
            None => None,
        };
        let started_at = std::time::SystemTime::now();
        let metrics = Arc::new(MetricsRegistry::new());
        let shared = Arc::new(Shared {
            config,
            hooks: Arc::clone(&hooks),
            router: Router::new(),
            retain: RetainStore::new(),
            registry: Registry::new(),
            metrics: Metrics::default(),
            tasks: Arc::default(),
            forwarder: std::sync::OnceLock::new(),
            ownership: std::sync::OnceLock::new(),
            connected: AtomicI64::new(0),
            next_uid: AtomicU64::new(1),
            keepalive: crate::keepalive::KeepaliveChecks::spawn(shutdown_rx.clone()),
            shutdown: shutdown_rx,
            shutting_down: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        });
        // The cluster's listener and membership, before plugins and clients:
        // its route changes must not miss the first subscriptions.
        let cluster = match shared.config.cluster.clone() {
            Some(cfg) => Some(crate::cluster::start(Arc::clone(&shared), cfg).await?),
            None => None,
        };
        let handle: Arc<dyn hooks_spec::BrokerHandle> = Arc::new(Handle::new(Arc::clone(&shared)));
        let mut started: Vec<Arc<dyn Plugin>> = Vec::new();
        for plugin in plugins {
            let plugin: Arc<dyn Plugin> = Arc::from(plugin);
            let ctx = PluginContext {
                hooks: Arc::clone(&hooks),
                broker: Arc::clone(&handle),
                metrics: Arc::clone(&metrics),
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
            accept_tasks.push(tokio::spawn(crate::sys::publish_loop(
                Arc::clone(&shared),
                interval,
            )));
        }
        let mut listening = Vec::new();
        for (listener, addr, spec) in bound {
            addrs.push(addr);
            let task = tokio::spawn(listener::accept_loop(listener, Arc::clone(&shared), spec));
            listening.push(task.abort_handle());
            accept_tasks.push(task);
        }
        let http = match (http_bound, &shared.config.management) {
            (Some(b), Some(m)) => {
                let state = crate::http::HttpState {
                    shared: Arc::clone(&shared),
                    config: m.clone(),
                    plugins: started.clone(),
                    metrics,
                    listeners: listening,
                    links: cluster.as_ref().map(crate::cluster::ClusterTasks::links),
                    started: started_at,
                };
                Some(crate::http::HttpServer::serve(b, Arc::new(state)))
            }
            _ => None,
        };
        Ok(Server {
            shared,
            cluster,
            addrs,
            http,
            plugins: started,
            shutdown_tx,
            accept_tasks,
        })
    }

    /// The cluster listener's address, when the node is in a cluster.
    pub fn cluster_addr(&self) -> Option<SocketAddr> {
        self.cluster.as_ref().map(|c| c.listen)
    }

    /// The HTTP listener's address (`management.listener.http`), when configured.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|h| h.addr)
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
        if let Some(http) = self.http {
            http.stopped().await;
        }
        if let Some(c) = &self.cluster {
            c.leave().await;
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
