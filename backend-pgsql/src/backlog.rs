//! The visible backlog: every [`backlog_interval`](crate::config::PgsqlConfig::backlog_interval)
//! one task counts each subscription's stored, unacknowledged messages with
//! `mqtt_backlog_of` (sql/V5__backlog_view.sql, the function behind the
//! `mqtt_backlog` view, which counts what offline replay would hand over),
//! and from that one result:
//!
//! - sets the summary gauges ([`BacklogMetrics`]): no series per client;
//! - keeps each client's totals for the management API ([`BacklogCounts`],
//!   the plugin's [`BacklogSource`]);
//! - with `backlog_limit`, logs a warning and runs `session.backlog_exceeded`
//!   for each subscription whose backlog passed the limit since the last
//!   count. Once per crossing: a subscription is told about again only after
//!   a count found it back at or under the limit.
//!
//! The task owns the set of subscriptions over the limit; the counts are
//! swapped in whole under a lock held for no await.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hooks_spec::{
    Backlog, BacklogArgs, BacklogSource, Gauge, Hooks, MetricsError, MetricsRegistry, PluginContext,
};
use tokio::task::JoinHandle;
use tokio_postgres::types::{ToSql, Type};

use crate::config::PgsqlConfig;
use crate::error::PgsqlError;
use crate::pool::NamedPool;
use crate::positions::TrackKey;

/// Each client's backlog as last counted (`None` before the first count).
#[derive(Debug, Default)]
pub struct BacklogCounts(RwLock<Option<HashMap<String, Backlog>>>);

impl BacklogSource for BacklogCounts {
    fn client_backlog(&self, clientid: &str) -> Option<Backlog> {
        let counts = self.0.read().unwrap_or_else(|p| p.into_inner());
        let counts = counts.as_ref()?;
        Some(counts.get(clientid).copied().unwrap_or(Backlog {
            pending: 0,
            oldest_age: None,
        }))
    }
}

/// The gauges of the per-subscription count (labels: `pool`). See
/// [`crate::metrics`] for the table of every metric.
#[derive(Debug, Clone, Default)]
pub struct BacklogMetrics {
    /// Subscriptions whose backlog is above `backlog_limit` (0 without one).
    pub over_limit: Gauge,
    /// Age in seconds of the oldest pending message of any subscription (0: none).
    pub oldest_age: Gauge,
    /// The largest backlog of one subscription.
    pub max_pending: Gauge,
}

impl BacklogMetrics {
    /// Registers (or finds) the gauges of `pool`; -1 until first counted.
    pub fn register(registry: &MetricsRegistry, pool: &str) -> Result<BacklogMetrics, MetricsError> {
        let l = [("pool", pool)];
        let m = BacklogMetrics {
            over_limit: registry.gauge(
                "postbox_pgsql_backlog_subscriptions_over_limit",
                "Subscriptions whose stored, unacknowledged messages are more than backend.pgsql.backlog_limit.",
                &l,
            )?,
            oldest_age: registry.gauge(
                "postbox_pgsql_backlog_oldest_age_seconds",
                "Age of the oldest stored message some subscription has not acknowledged (0: none).",
                &l,
            )?,
            max_pending: registry.gauge(
                "postbox_pgsql_backlog_max_subscription_messages",
                "Stored messages not acknowledged by the subscription with the largest backlog.",
                &l,
            )?,
        };
        for g in [&m.over_limit, &m.oldest_age, &m.max_pending] {
            g.set(-1);
        }
        Ok(m)
    }
}

/// One subscription's count.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionBacklog {
    /// Client id and filter.
    pub key: TrackKey,
    /// Messages pending.
    pub pending: u64,
    /// Age of the oldest pending one, in seconds (`None`: nothing pending).
    pub oldest_age_secs: Option<f64>,
}

/// The counting task's settings and outputs.
pub struct BacklogWatch {
    /// The pool of the fetch rule.
    pub pool: NamedPool,
    /// `backlog_limit`.
    pub limit: Option<u64>,
    /// `backlog_interval`.
    pub every: Duration,
    /// The fetch rule's `time_range`, in seconds: older messages are not
    /// replayed, so they are not pending.
    pub max_age_secs: Option<f64>,
    /// Where the API reads.
    pub counts: Arc<BacklogCounts>,
    /// The gauges.
    pub metrics: BacklogMetrics,
    /// To run `session.backlog_exceeded`.
    pub hooks: Arc<Hooks>,
    /// This node's name, for the hook.
    pub node: String,
}

impl BacklogWatch {
    /// Starts counting on `pool` (the fetch rule's, whose `time_range` is
    /// given) with the plugin's settings; returns the task and the counts.
    pub fn spawn(
        pool: NamedPool,
        cfg: &PgsqlConfig,
        time_range: Option<Duration>,
        ctx: &PluginContext,
    ) -> Result<(JoinHandle<()>, Arc<BacklogCounts>), String> {
        let counts = Arc::new(BacklogCounts::default());
        let metrics = BacklogMetrics::register(&ctx.metrics, &pool.name).map_err(|e| e.to_string())?;
        let watch = BacklogWatch {
            pool,
            limit: cfg.backlog_limit,
            every: cfg.backlog_interval,
            max_age_secs: time_range.map(|d| d.as_secs_f64()),
            counts: Arc::clone(&counts),
            metrics,
            hooks: Arc::clone(&ctx.hooks),
            node: ctx.broker.node_name().to_string(),
        };
        Ok((tokio::spawn(watch.run()), counts))
    }

    /// Counts every [`BacklogWatch::every`] until aborted. A count that fails
    /// (the database does not answer) leaves the last one in place; the
    /// failure is logged once until a count succeeds again.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut over: HashSet<TrackKey> = HashSet::new();
        let mut failing = false;
        loop {
            tick.tick().await;
            match count(&self.pool, self.max_age_secs).await {
                Ok(rows) => {
                    failing = false;
                    self.apply(&rows, &mut over).await;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(pool = %self.pool.name, "cannot count the subscriptions' backlogs (will retry): {e}");
                    }
                    failing = true;
                }
            }
        }
    }

    /// Publishes one count: gauges, per-client totals, limit crossings.
    async fn apply(&self, rows: &[SubscriptionBacklog], over: &mut HashSet<TrackKey>) {
        let summary = summarize(rows, self.limit);
        self.metrics.over_limit.set(summary.over_limit);
        self.metrics.oldest_age.set(summary.oldest_age_secs);
        self.metrics.max_pending.set(summary.max_pending);
        *self.counts.0.write().unwrap_or_else(|p| p.into_inner()) = Some(summary.clients);
        let Some(limit) = self.limit else { return };
        let crossed = crossings(rows, limit, over);
        for row in crossed {
            let age = row.oldest_age_secs.unwrap_or(0.0);
            tracing::warn!(
                clientid = %row.key.0,
                subscription = %row.key.1,
                pending = row.pending,
                oldest_age_secs = age.round() as u64,
                limit,
                "backlog of a subscription passed backend.pgsql.backlog_limit"
            );
            let args = BacklogArgs {
                clientid: row.key.0.clone(),
                filter: row.key.1.clone(),
                pending: row.pending,
                oldest_age: Duration::try_from_secs_f64(age).unwrap_or_default(),
                limit,
                node: self.node.clone(),
            };
            self.hooks.session_backlog_exceeded.run(Arc::new(args)).await;
        }
    }
}

/// Reads every subscription's backlog.
async fn count(pool: &NamedPool, max_age_secs: Option<f64>) -> Result<Vec<SubscriptionBacklog>, PgsqlError> {
    const WHAT: &str = "count backlogs (mqtt_backlog_of)";
    let conn = pool.get().await?;
    let params: [(&(dyn ToSql + Sync), Type); 1] = [(&max_age_secs, Type::FLOAT8)];
    let rows = conn
        .query_typed(
            "SELECT clientid, topic, pending, oldest_age_secs
             FROM mqtt_backlog_of(make_interval(secs => $1))",
            &params,
        )
        .await
        .map_err(PgsqlError::query(WHAT))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let clientid: String = r.try_get(0).map_err(PgsqlError::query(WHAT))?;
        let filter: String = r.try_get(1).map_err(PgsqlError::query(WHAT))?;
        let pending: i64 = r.try_get(2).map_err(PgsqlError::query(WHAT))?;
        let oldest_age_secs: Option<f64> = r.try_get(3).map_err(PgsqlError::query(WHAT))?;
        out.push(SubscriptionBacklog {
            key: (clientid, filter),
            pending: u64::try_from(pending).unwrap_or(0),
            // A clock step may make a fresh message look a little "future".
            oldest_age_secs: oldest_age_secs.map(|a| a.max(0.0)),
        });
    }
    Ok(out)
}

/// What one count says as a whole.
#[derive(Debug, PartialEq)]
struct Summary {
    over_limit: i64,
    oldest_age_secs: i64,
    max_pending: i64,
    clients: HashMap<String, Backlog>,
}

fn summarize(rows: &[SubscriptionBacklog], limit: Option<u64>) -> Summary {
    let mut clients: HashMap<String, Backlog> = HashMap::new();
    let mut oldest = 0.0_f64;
    let (mut over_limit, mut max_pending) = (0_i64, 0_u64);
    for row in rows {
        if limit.is_some_and(|l| row.pending > l) {
            over_limit += 1;
        }
        max_pending = max_pending.max(row.pending);
        let age = row.oldest_age_secs.filter(|_| row.pending > 0);
        oldest = oldest.max(age.unwrap_or(0.0));
        let c = clients.entry(row.key.0.clone()).or_insert(Backlog {
            pending: 0,
            oldest_age: None,
        });
        c.pending = c.pending.saturating_add(row.pending);
        if let Some(age) = age.and_then(|a| Duration::try_from_secs_f64(a).ok()) {
            c.oldest_age = Some(c.oldest_age.map_or(age, |o| o.max(age)));
        }
    }
    Summary {
        over_limit,
        oldest_age_secs: oldest.floor() as i64,
        max_pending: i64::try_from(max_pending).unwrap_or(i64::MAX),
        clients,
    }
}

/// The subscriptions that passed `limit` since the last count; `over` (the
/// ones above it) is brought up to date: those at or under it, or gone, leave.
fn crossings<'a>(
    rows: &'a [SubscriptionBacklog],
    limit: u64,
    over: &mut HashSet<TrackKey>,
) -> Vec<&'a SubscriptionBacklog> {
    let above: Vec<&SubscriptionBacklog> = rows.iter().filter(|r| r.pending > limit).collect();
    let now: HashSet<&TrackKey> = above.iter().map(|r| &r.key).collect();
    over.retain(|k| now.contains(k));
    above.into_iter().filter(|r| over.insert(r.key.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(c: &str, f: &str, pending: u64, age: Option<f64>) -> SubscriptionBacklog {
        SubscriptionBacklog {
            key: (c.into(), f.into()),
            pending,
            oldest_age_secs: age,
        }
    }

    #[test]
    fn a_crossing_is_reported_once_until_the_backlog_falls_back() {
        let mut over = HashSet::new();
        let first = [row("a", "x/#", 11, Some(5.0)), row("b", "y", 10, Some(1.0))];
        let crossed: Vec<_> = crossings(&first, 10, &mut over)
            .into_iter()
            .map(|r| &r.key.0)
            .collect();
        assert_eq!(crossed, ["a"], "10 is not above a limit of 10");
        assert!(
            crossings(&first, 10, &mut over).is_empty(),
            "still above: not again"
        );
        let fell = [row("a", "x/#", 3, Some(1.0)), row("b", "y", 10, Some(1.0))];
        assert!(crossings(&fell, 10, &mut over).is_empty());
        assert_eq!(crossings(&first, 10, &mut over).len(), 1, "crossed again");
    }

    #[test]
    fn the_summary_adds_up_clients_and_keeps_no_series_per_client() {
        let rows = [
            row("a", "x/#", 11, Some(5.9)),
            row("a", "y", 2, Some(30.2)),
            row("b", "y", 0, None),
        ];
        let s = summarize(&rows, Some(10));
        assert_eq!((s.over_limit, s.oldest_age_secs, s.max_pending), (1, 30, 11));
        assert_eq!(s.clients["a"].pending, 13);
        assert_eq!(s.clients["a"].oldest_age.map(|d| d.as_secs()), Some(30));
        assert_eq!(
            s.clients["b"],
            Backlog {
                pending: 0,
                oldest_age: None
            }
        );
        assert_eq!(summarize(&rows, None).over_limit, 0);
    }
}
