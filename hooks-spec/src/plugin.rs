//! Plugins and the handle they use to act on the broker.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::hooks::Hooks;
use crate::metrics::MetricsRegistry;
use crate::types::{ClientInfo, Message, QoS, SubOpts};

/// Why a plugin could not load its configuration or start.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// A configuration entry is wrong; names the file, line and key.
    #[error("{file}:{line}: `{key}`: {message}")]
    Config {
        /// The configuration file.
        file: PathBuf,
        /// 1-based line number (0 when the problem is the file as a whole).
        line: usize,
        /// The key at fault.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The configuration file could not be read.
    #[error("{file}: {message}")]
    ConfigFile {
        /// The configuration file.
        file: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Starting failed (for example, the database cannot be reached).
    #[error("{0}")]
    Start(String),
    /// Reloading failed; says what stays in force.
    #[error("{0}")]
    Reload(String),
}

/// What a plugin gets when it starts.
#[derive(Clone)]
pub struct PluginContext {
    /// Where it registers callbacks.
    pub hooks: Arc<Hooks>,
    /// How it acts on the broker.
    pub broker: Arc<dyn BrokerHandle>,
    /// Where it registers the metrics the broker serves on `/metrics`
    /// (see [`crate::metrics`]); hook callbacks are timed without it.
    pub metrics: Arc<MetricsRegistry>,
}

/// A broker plugin. The broker enables the plugins named in `plugins.load`
/// at startup, in that order: `load_config` with `<etc dir>/<name>.conf`, then
/// `start`; it refuses to start if either fails. When the broker process gets
/// SIGHUP it calls `reload` on each started plugin, in that order. At
/// shutdown it calls `stop` in reverse order.
#[async_trait]
pub trait Plugin: Send + Sync {
    /// The name used in `plugins.load` and for the config file.
    fn name(&self) -> &str;

    /// Reads the plugin's configuration file.
    fn load_config(&mut self, path: &Path) -> Result<(), PluginError>;

    /// Registers callbacks and starts background work.
    async fn start(&self, ctx: PluginContext) -> Result<(), PluginError>;

    /// Unregisters callbacks and stops background work.
    async fn stop(&self, hooks: &Hooks) -> Result<(), PluginError>;

    /// Re-reads whatever the plugin can take again without a restart (the
    /// broker calls it on SIGHUP, only after `start` succeeded, one plugin
    /// at a time). A plugin swaps new state in only once it has read it
    /// completely, so an error leaves what was in force; the error it
    /// returns is logged and says what is wrong and what was kept. It never
    /// stops the broker. A reload still running when the broker is told to
    /// stop is dropped, so it must not leave half-applied state behind at an
    /// `.await`.
    ///
    /// The default does nothing: for plugins that read nothing worth
    /// reloading, or that look their data up on each use (a database).
    async fn reload(&self) -> Result<(), PluginError> {
        Ok(())
    }

    /// Whether what the plugin depends on answers now (its database, say):
    /// `Err` says what does not. The broker's health endpoint (`/status`)
    /// answers 503 while any started plugin returns `Err`. Called on every
    /// health probe, concurrently with everything else: it must be cheap
    /// and bounded in time (the broker gives up on it after 5 s and counts
    /// that as unhealthy). The default: healthy.
    async fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Where the broker's management API reads each client's backlog of
    /// stored, unacknowledged messages. Only a plugin that stores messages
    /// for offline clients has one; the first started plugin that returns
    /// `Some` is used. The default: none.
    fn backlog_source(&self) -> Option<Arc<dyn BacklogSource>> {
        None
    }

    /// Where the management API provisions a subscription for a client
    /// that has no session here (a device that may never have connected):
    /// a plugin that keeps subscriptions for clients to come. The first
    /// started plugin that returns `Some` is used. The default: none.
    fn subscription_store(&self) -> Option<Arc<dyn SubscriptionStore>> {
        None
    }
}

/// Subscriptions kept for clients that are not here
/// ([`Plugin::subscription_store`]).
#[async_trait]
pub trait SubscriptionStore: Send + Sync {
    /// Records that `clientid` is subscribed to `filter` at `qos` from now
    /// on: what is stored for it from this moment is delivered when it
    /// connects. Errors say why (the database did not answer, say).
    async fn provision(&self, clientid: &str, filter: &str, qos: QoS) -> Result<(), String>;
}

/// One client's backlog: the stored messages its subscriptions have not
/// acknowledged, as a plugin last counted them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    /// Messages pending, over all its subscriptions.
    pub pending: u64,
    /// How long ago the oldest of them arrived (`None`: nothing pending).
    pub oldest_age: Option<Duration>,
}

/// A plugin's per-client backlog counts ([`Plugin::backlog_source`]). Reads
/// what the plugin counted last (it counts in the background): cheap,
/// no I/O, callable from any task.
pub trait BacklogSource: Send + Sync {
    /// The backlog of `clientid`, or `None` before the first count. A client
    /// with no stored subscription has an empty backlog.
    fn client_backlog(&self, clientid: &str) -> Option<Backlog>;
}

/// A message handed to one client's session by a plugin.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message (its headers, such as the storage id, travel with it).
    pub message: Message,
    /// QoS to deliver at (the broker caps it at the message's QoS).
    pub qos: QoS,
    /// Deliver with the retain flag set (retained-message delivery).
    pub retain: bool,
    /// The subscription filter this delivery is for, if any: the session
    /// records the highest storage id it delivered per subscription, so a
    /// message that arrives both live and from storage goes out once.
    pub filter: Option<String>,
}

/// Why a handle call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// No session with that client id.
    #[error("no session for client `{0}`")]
    NoSession(String),
    /// The filter is not a valid topic filter.
    #[error("invalid topic filter `{0}`")]
    InvalidFilter(String),
    /// The topic is not a valid topic name.
    #[error("invalid topic `{0}`")]
    InvalidTopic(String),
    /// The broker is shutting down.
    #[error("broker is shutting down")]
    ShuttingDown,
}

/// How plugins act on the broker.
#[async_trait]
pub trait BrokerHandle: Send + Sync {
    /// This broker's node name (`node.name`).
    fn node_name(&self) -> &str;

    /// The client's info if it has a session here.
    fn lookup(&self, clientid: &str) -> Option<ClientInfo>;

    /// Queues a message into one client's session: it gets a packet id,
    /// inflight tracking and redelivery like any routed message.
    async fn deliver(&self, clientid: &str, delivery: Delivery) -> Result<(), HandleError>;

    /// Queues several messages, in order, into one client's session.
    async fn deliver_batch(&self, clientid: &str, deliveries: Vec<Delivery>) -> Result<(), HandleError> {
        for d in deliveries {
            self.deliver(clientid, d).await?;
        }
        Ok(())
    }

    /// Replays stored messages for one of the client's subscriptions, oldest
    /// first. Each delivery must carry `headers.stored_id`; the session skips
    /// the storage ids it has already taken (across all its subscriptions),
    /// and replayed messages are exempt from the queue bound (the caller
    /// bounds a page).
    ///
    /// `complete_through`: `None` while the backlog has more pages; then live
    /// messages with a storage id matching `filter` are held, and delivered in
    /// id order (without the ones the pages brought) once a replay says
    /// `Some(through)`: every stored message matching `filter` with an id up
    /// to `through` was in this page or an earlier one (or is acknowledged).
    ///
    /// A session that has to drop a live stored message of such a filter
    /// (its queue is full) fires `message.dropped` (`queue_full`) and holds
    /// that filter's live messages again, until a replay completes through at
    /// least the dropped id: the plugin answers the drop by reading the store
    /// again, so a slow or offline subscriber is fed from the store in order
    /// instead of losing what did not fit.
    ///
    /// Called from `session.subscribed`, the replay is applied right after
    /// SUBACK and before any message routed after the subscription. Replays
    /// for a filter the client is no longer subscribed to are ignored.
    ///
    /// `filter` names the subscription as the client made it: for a shared
    /// subscription `$share/<group>/<filter>` (a shared group's backlog is
    /// replayed to one member; what that member leaves unacknowledged when
    /// it disconnects goes to another member, as live messages of the group do).
    async fn replay(
        &self,
        clientid: &str,
        filter: &str,
        deliveries: Vec<Delivery>,
        complete_through: Option<i64>,
    ) -> Result<(), HandleError>;

    /// True when another node of the cluster has members of shared group
    /// `group` on `filter` (without `$share/`). A storage plugin then leaves
    /// the group's backlog to them: their node has been handed every
    /// message of the group a member here could hold. The default (no
    /// cluster): false.
    fn shared_members_elsewhere(&self, group: &str, filter: &str) -> bool {
        let _ = (group, filter);
        false
    }

    /// Subscribes a client as if it had sent SUBSCRIBE (session.subscribed fires).
    async fn subscribe(&self, clientid: &str, filter: &str, opts: SubOpts) -> Result<(), HandleError>;

    /// Publishes a message through the router (message.publish does not run again).
    /// Returns how many sessions it was routed to.
    async fn publish(&self, message: Message) -> Result<usize, HandleError>;
}
