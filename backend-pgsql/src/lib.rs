//! # backend-pgsql: Postbox's PostgreSQL offline-message backend
//!
//! A plugin compatible with EMQX 4's `emqx_backend_pgsql`: the same config
//! keys and rule lines (`backend.pgsql.hook.<hookpoint>.<N> = {json}`), the
//! same functions and tables, without EMQX's known defects.
//!
//! ## Main types
//! - [`BackendPgsql`]: the [`Plugin`]. `load_config` reads
//!   `etc/backend_pgsql.conf` ([`config`], [`rules`], [`sql_template`]);
//!   `start` connects the pools ([`pool`]), applies the schema ([`schema`]),
//!   starts the tasks and registers one callback per rule, in ascending `N`.
//! - [`writer::Writer`]: the task that owns inserts into `mqtt_msg` (group
//!   commit, ids assigned under an advisory lock so they become visible in order).
//! - [`positions::Tracks`] and the position flusher: each client's read
//!   position per subscription, advanced only over a contiguous acknowledged
//!   range the database confirms.
//! - [`fetch::Fetcher`]: offline replay, page by page, through the broker's
//!   replay channel.
//! - [`groups`]: durable shared subscriptions: one read position per
//!   `$share/<group>/<filter>`, moved by every member's acknowledgements, and
//!   the backlog replayed to one member.
//! - [`sessions::SessionStore`]: persistent sessions (`on_session_restore`),
//!   kept in `mqtt_session`/`mqtt_sub` and handed back to the broker after a
//!   restart (`session.restore`).
//! - [`auth::AuthPgsql`]: a second plugin, `auth_pgsql` (EMQX 4's
//!   `emqx_auth_pgsql`): authentication and ACL from PostgreSQL, on the same
//!   pool and TLS code.
//!
//! A database that does not answer at startup does not stop the broker:
//! each pool's schema ([`schema::SchemaCell`]) is learnt when it first
//! answers, and until then the writer holds what must be stored. While it is
//! down the writer, the flusher, the page server and the session store retry
//! every 500 ms; nothing acknowledged is lost and nothing unstored is routed.
//!
//! ## Data flow
//! PUBLISH → `message.publish` (on_message_publish) → writer → COMMIT → row
//! id in `headers.stored_id` → the broker acknowledges the publisher and
//! routes. Subscriber ACK → `message.acked` → tracks → flusher →
//! `mqtt_acked`. SUBSCRIBE (or a restored subscription) → `session.subscribed`
//! → fetch → `BrokerHandle::replay` → the session delivers oldest first; the
//! next page is read once the previous one is in the session's mailbox, at
//! most two unacknowledged pages ahead ([`positions::PAGES_AHEAD`]).

pub mod acked_delete;
pub mod auth;
pub mod backlog;
pub mod claims;
pub mod config;
pub mod error;
pub mod fetch;
pub mod functions;
pub mod groups;
pub mod metrics;
pub mod partitions;
pub mod pool;
pub mod positions;
pub mod provision;
pub mod retention;
pub mod rules;
pub mod schema;
pub mod sessions;
pub mod sql_template;
pub mod tls;
pub mod topic_match;
pub mod writer;

mod connect;
mod properties;
mod register;

pub use auth::AuthPgsql;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use hooks_spec::{BrokerHandle, Hooks, Plugin, PluginContext, PluginError};
use tokio::task::JoinHandle;
use tokio_postgres::types::Type;

use crate::config::PgsqlConfig;
use crate::fetch::Fetcher;
use crate::pool::NamedPool;
use crate::positions::{TrackKey, Tracks};
use crate::rules::{Action, Function};
use crate::schema::SchemaCell;
use crate::sql_template::SqlTemplate;
use crate::writer::{StoreStats, Writer};

/// The plugin's name in `plugins.load` and its config file (`backend_pgsql.conf`).
pub const NAME: &str = "backend_pgsql";

/// Counters an operator (or a test) can read.
#[derive(Debug, Default)]
pub struct Stats {
    /// The storage path (stored, failed, outages, batches).
    pub store: Arc<StoreStats>,
    /// Messages refused because their payload is not UTF-8 and the column is text.
    pub refused_not_utf8: AtomicU64,
    /// Failed function or `sql` rule runs.
    pub rule_failures: AtomicU64,
}

/// The PostgreSQL backend plugin.
#[derive(Default)]
pub struct BackendPgsql {
    config: Option<Arc<PgsqlConfig>>,
    running: Mutex<Option<Running>>,
    stats: Arc<Stats>,
}

struct Running {
    tasks: Vec<JoinHandle<()>>,
    /// The pools in use, for the health check.
    pools: Vec<NamedPool>,
    /// The position flusher's last round, run at stop.
    drain: Option<positions::DrainHandle>,
    /// Each client's backlog, for the management API.
    backlog: Option<Arc<backlog::BacklogCounts>>,
    /// `mqtt_sub` of the on_subscribe_lookup rule, for the management API.
    provision: Option<Arc<provision::MqttSubStore>>,
}

/// One pool and what runs on it.
pub(crate) struct PoolState {
    pub(crate) pool: NamedPool,
    /// Known once the database has answered (at startup, or later).
    pub(crate) schema: SchemaCell,
    pub(crate) writer: Option<Writer>,
}

/// A `sql` rule ready to run: its statements with the parameter types
/// PostgreSQL inferred when they were prepared (at start, or on first use
/// when the database did not answer at start).
pub(crate) struct SqlAction {
    pub(crate) key: String,
    pub(crate) pool: String,
    pub(crate) statements: Vec<PreparedSql>,
}

pub(crate) struct PreparedSql {
    pub(crate) template: SqlTemplate,
    pub(crate) types: std::sync::OnceLock<Vec<Type>>,
}

/// Everything the callbacks share while the plugin runs.
pub(crate) struct Engine {
    pub(crate) cfg: Arc<PgsqlConfig>,
    pub(crate) node: String,
    pub(crate) handle: Arc<dyn BrokerHandle>,
    pub(crate) pools: BTreeMap<String, PoolState>,
    pub(crate) sql_actions: HashMap<usize, SqlAction>,
    pub(crate) tracks: Arc<Tracks>,
    /// Members of shared groups here.
    pub(crate) members: groups::Members,
    /// Which node replays a shared group's backlog (with a fetch rule).
    pub(crate) claims: Option<claims::ShareClaims>,
    pub(crate) dirty: Option<tokio::sync::mpsc::UnboundedSender<TrackKey>>,
    pub(crate) drain: Option<positions::DrainHandle>,
    pub(crate) fetcher: Option<Arc<Fetcher>>,
    /// Each client's backlog as last counted (with a fetch rule).
    pub(crate) backlog: Option<Arc<backlog::BacklogCounts>>,
    /// Persistent sessions (on_session_restore), on the pool of its rule.
    pub(crate) sessions: Option<Arc<sessions::SessionStore>>,
    pub(crate) stats: Arc<Stats>,
    /// Ids stored by this node whose message.publish chain has not finished
    /// (so they are not routed yet).
    pub(crate) route_pending: Mutex<std::collections::BTreeSet<i64>>,
}

impl BackendPgsql {
    /// An unconfigured plugin.
    pub fn new() -> BackendPgsql {
        BackendPgsql::default()
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }
}

#[async_trait]
impl Plugin for BackendPgsql {
    fn name(&self) -> &str {
        NAME
    }

    fn load_config(&mut self, path: &Path) -> Result<(), PluginError> {
        self.config = Some(Arc::new(PgsqlConfig::load(path)?));
        Ok(())
    }

    async fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
        let cfg = self
            .config
            .clone()
            .ok_or_else(|| PluginError::Start("configuration not loaded".into()))?;
        let mut tasks = Vec::new();
        let engine = match start_engine(cfg, &ctx, Arc::clone(&self.stats), &mut tasks).await {
            Ok((e, won)) => {
                let e = Arc::new(e);
                if let Some(won) = won {
                    tasks.push(tokio::spawn(groups::serve_take_overs(Arc::downgrade(&e), won)));
                }
                e
            }
            Err(e) => {
                for t in tasks {
                    t.abort();
                }
                return Err(PluginError::Start(e));
            }
        };
        register::all(&engine, &ctx.hooks);
        let drain = engine.drain.clone();
        let pools = engine.pools.values().map(|p| p.pool.clone()).collect();
        let backlog = engine.backlog.clone();
        // Provisioned rows are read at connect by on_subscribe_lookup: only
        // with such a rule, on its pool.
        let provision = engine
            .cfg
            .rules
            .iter()
            .find(|r| {
                matches!(
                    r.action,
                    rules::Action::Function(rules::Function::OnSubscribeLookup)
                )
            })
            .and_then(|r| engine.pools.get(&r.pool))
            .map(|p| Arc::new(provision::MqttSubStore { pool: p.pool.clone() }));
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(Running {
            tasks,
            pools,
            drain,
            backlog,
            provision,
        });
        Ok(())
    }

    /// Healthy when every PostgreSQL server a rule uses answers `SELECT 1`.
    async fn health(&self) -> Result<(), String> {
        let pools: Vec<NamedPool> = match &*self.running.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(r) => r.pools.clone(),
            None => return Err("not started".to_string()),
        };
        let checks = pools.iter().map(metrics::pool_answers);
        let failed: Vec<String> = futures_util::future::join_all(checks)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }

    /// The backlog counts of the fetch rule's pool (none without one).
    fn backlog_source(&self) -> Option<Arc<dyn hooks_spec::BacklogSource>> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let counts = running.as_ref()?.backlog.clone()?;
        Some(counts)
    }

    /// `mqtt_sub` of the on_subscribe_lookup rule's pool (none without one).
    fn subscription_store(&self) -> Option<Arc<dyn hooks_spec::SubscriptionStore>> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let store = running.as_ref()?.provision.clone()?;
        Some(store)
    }

    async fn stop(&self, hooks: &Hooks) -> Result<(), PluginError> {
        hooks.remove_owner(NAME);
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(running) = running {
            // Record the acknowledgements of the last moments before the
            // sessions ended; bounded, so an unreachable database cannot hold
            // shutdown (those messages then come again: never a loss).
            if let Some(drain) = &running.drain {
                tracing::info!("stopping: recording the last read positions");
                if tokio::time::timeout(DRAIN_TIMEOUT, drain.drain()).await.is_err() {
                    tracing::warn!("read positions not all recorded within {DRAIN_TIMEOUT:?} at shutdown");
                }
            }
            for t in running.tasks {
                t.abort();
            }
        }
        Ok(())
    }
}

/// How long stop waits for the last position writes.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects, migrates, prepares and starts the tasks. A database that does
/// not answer does not stop startup (see [`connect::connect_pool`]). With a fetch
/// rule, also returns the shared groups whose claim this node takes over.
async fn start_engine(
    cfg: Arc<PgsqlConfig>,
    ctx: &PluginContext,
    stats: Arc<Stats>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<(Engine, Option<tokio::sync::mpsc::UnboundedReceiver<TrackKey>>), String> {
    let named = pool::build_all(&cfg.pools)?;
    // Only pools some rule uses are connected and checked.
    let used: Vec<&str> = cfg.rules.iter().map(|r| r.pool.as_str()).collect();
    let storage_pools: Vec<&str> = cfg
        .rules
        .iter()
        .filter(|r| matches!(r.action, Action::Function(_)))
        .map(|r| r.pool.as_str())
        .collect();
    let mut pools = BTreeMap::new();
    for (name, np) in named {
        if !used.contains(&name.as_str()) {
            continue;
        }
        let migrates = storage_pools.contains(&name.as_str());
        // Only the pools the functions store in are partitioned.
        let partition = cfg.msg_partition.filter(|_| migrates);
        let schema = SchemaCell::default();
        if let Some(task) = connect::connect_pool(&np, migrates, partition, &schema).await? {
            tasks.push(task);
        }
        let stores = cfg.rules.iter().any(|r| {
            r.pool == name
                && matches!(
                    r.action,
                    Action::Function(Function::OnMessagePublish | Function::OnMessageStore)
                )
        });
        let writer = match stores {
            true => {
                let m = metrics::WriterMetrics::register(&ctx.metrics, &name).map_err(|e| e.to_string())?;
                Some(Writer::spawn_with_metrics(
                    np.clone(),
                    schema.clone(),
                    cfg.batch_size,
                    Arc::clone(&stats.store),
                    m,
                ))
            }
            false => None,
        };
        if stores {
            tasks.extend(retention::spawn_all(&np, &schema, &cfg));
        }
        pools.insert(
            name,
            PoolState {
                pool: np,
                schema,
                writer,
            },
        );
    }

    // `sql` rules: prepare each statement once to learn its parameter types
    // (and to refuse bad SQL at start); executions use unnamed statements.
    // Where the database did not answer, they are prepared on first use.
    let mut sql_actions = HashMap::new();
    for (i, rule) in cfg.rules.iter().enumerate() {
        let Action::Sql(templates) = &rule.action else {
            continue;
        };
        let state = pools
            .get(&rule.pool)
            .ok_or_else(|| format!("{}: unknown pool `{}`", rule.key, rule.pool))?;
        let statements: Vec<PreparedSql> = templates
            .iter()
            .map(|t| PreparedSql {
                template: t.clone(),
                types: std::sync::OnceLock::new(),
            })
            .collect();
        if state.schema.get().is_some() {
            let conn = state.pool.get().await.map_err(|e| e.to_string())?;
            for stmt in &statements {
                let prepared = conn.prepare(&stmt.template.sql).await.map_err(|e| {
                    format!(
                        "{}:{}: `{}`: cannot prepare `{}`: {}",
                        cfg.file.display(),
                        rule.line,
                        rule.key,
                        stmt.template.original,
                        error_chain(&e)
                    )
                })?;
                let _ = stmt.types.set(prepared.params().to_vec());
            }
        }
        sql_actions.insert(
            i,
            SqlAction {
                key: rule.key.clone(),
                pool: rule.pool.clone(),
                statements,
            },
        );
    }

    // Offline fetch and positions live on the pool of the first fetch rule.
    let tracks = Arc::new(Tracks::default());
    let fetch_rule = cfg
        .rules
        .iter()
        .find(|r| matches!(r.action, Action::Function(Function::OnMessageFetch)));
    let (mut dirty, mut fetcher, mut drain, mut backlog, mut share_claims) = (None, None, None, None, None);
    let mut take_overs = None;
    if let Some(rule) = fetch_rule {
        let pool_name = rule.pool.clone();
        let state = pools
            .get(&pool_name)
            .ok_or_else(|| format!("unknown pool `{pool_name}`"))?;
        let (pages_tx, pages_rx) = tokio::sync::mpsc::unbounded_channel();
        let (dirty_tx, drain_handle) = positions::Flusher::spawn(
            state.pool.clone(),
            state.schema.clone(),
            Arc::clone(&tracks),
            pages_tx,
            cfg.position_flush_interval,
        );
        drain = Some(drain_handle);
        let replay = metrics::ReplayMetrics::register(&ctx.metrics, &pool_name).map_err(|e| e.to_string())?;
        tasks.push(tokio::spawn(metrics::count_backlog(
            state.pool.clone(),
            replay.backlog.clone(),
        )));
        let time_range = rule.offline_opts.time_range.or(cfg.time_range);
        let (watch, counts) = backlog::BacklogWatch::spawn(state.pool.clone(), &cfg, time_range, ctx)?;
        tasks.push(watch);
        backlog = Some(counts);
        let f = Arc::new(Fetcher {
            metrics: replay,
            pool: state.pool.clone(),
            schema: state.schema.clone(),
            handle: Arc::clone(&ctx.broker),
            tracks: Arc::clone(&tracks),
            dirty: dirty_tx.clone(),
            arrival_property: cfg.arrival_property.as_deref().map(Arc::from),
        });
        tasks.push(tokio::spawn(Arc::clone(&f).serve_pages(pages_rx)));
        let (claims, won, claims_task) =
            claims::ShareClaims::spawn(state.pool.clone(), ctx.broker.node_name().to_string());
        tasks.push(claims_task);
        share_claims = Some(claims);
        take_overs = Some(won);
        dirty = Some(dirty_tx);
        fetcher = Some(f);
    }
    let sessions = match cfg
        .rules
        .iter()
        .find(|r| matches!(r.action, Action::Function(Function::OnSessionRestore)))
    {
        Some(rule) => {
            let state = pools
                .get(&rule.pool)
                .ok_or_else(|| format!("unknown pool `{}`", rule.pool))?;
            Some(sessions::SessionStore::spawn(
                state.pool.clone(),
                state.schema.clone(),
                ctx.broker.node_name().to_string(),
            ))
        }
        None => None,
    };
    let engine = Engine {
        sessions,
        node: ctx.broker.node_name().to_string(),
        handle: Arc::clone(&ctx.broker),
        cfg,
        pools,
        sql_actions,
        tracks,
        members: groups::Members::default(),
        claims: share_claims,
        dirty,
        drain,
        fetcher,
        backlog,
        stats,
        route_pending: Mutex::default(),
    };
    Ok((engine, take_overs))
}

impl Engine {
    /// Counts and logs a failed rule run.
    pub(crate) fn rule_failed(&self, key: &str, e: &dyn std::fmt::Display) {
        self.stats.rule_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(rule = key, "backend_pgsql rule failed: {e}");
    }
}

/// MQTT topic-filter matching (`+`, `#`, and `$` topics not matched by a leading wildcard).
pub fn mqtt_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    // Rules and subscriptions are mostly `#` or a plain topic: answered
    // without splitting (this runs several times for every stored message).
    if filter == "#" {
        return true;
    }
    if !filter.bytes().any(|b| b == b'+' || b == b'#') {
        return filter == topic;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// An error with its sources, for messages.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::mqtt_matches;

    #[test]
    fn matching_follows_mqtt() {
        assert!(mqtt_matches("a/#", "a"));
        assert!(mqtt_matches("a/#", "a/b/c"));
        assert!(mqtt_matches("a/+/c", "a/b/c"));
        assert!(!mqtt_matches("a/+", "a/b/c"));
        assert!(!mqtt_matches("#", "$SYS/x"));
        assert!(mqtt_matches("$SYS/#", "$SYS/x"));
        assert!(mqtt_matches("a/b", "a/b"));
        assert!(!mqtt_matches("a/b", "a/b/c"));
        assert!(mqtt_matches("#", "a/b"));
        assert!(mqtt_matches("#", "/"));
        assert!(mqtt_matches("$SYS/x", "$SYS/x"));
        assert!(!mqtt_matches("a/b", "a/c"));
        assert!(!mqtt_matches("a", "a/"));
    }
}
