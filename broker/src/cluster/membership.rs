//! Membership, in `postbox_node`: every node registers (name, the address of
//! its cluster listener) and says it is alive every `cluster.heartbeat`.
//! Each beat also reads the others: a node seen for the first time gets a
//! link and its routes are read; a node silent for `cluster.node_timeout` is
//! declared down: its link ends, the router forgets its routes, plugins hear
//! of it (`node.down`), and its rows (routes, client ownership, membership)
//! are deleted, by whichever node sees it first (the deletes are idempotent).
//!
//! A node judges others only after its own beats have succeeded for a whole
//! `node_timeout`: after a database outage every heartbeat is old, and the
//! nodes must not declare each other down. A node that finds itself deleted
//! (declared down while it could not reach the database) registers again and
//! announces its routes again.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;

use super::db::DbError;
use super::routes::RouteOp;
use super::Cluster;
use crate::router::NodeName;

/// Another node as the last beat saw it.
struct Peer {
    address: String,
}

/// Beats until the broker stops.
pub(super) async fn run(c: Arc<Cluster>) {
    let mut peers: HashMap<NodeName, Peer> = HashMap::new();
    let mut registered = false;
    let mut healthy_since: Option<Instant> = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(c.cfg.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match beat(&c, &mut registered).await {
            Ok(others) => {
                if failing {
                    failing = false;
                    tracing::warn!("cluster: heartbeats recorded again");
                }
                let since = *healthy_since.get_or_insert_with(Instant::now);
                let judge = since.elapsed() >= c.cfg.node_timeout;
                reconcile(&c, &mut peers, others, judge).await;
            }
            Err(e) => {
                healthy_since = None;
                if !failing {
                    failing = true;
                    tracing::error!("cluster: cannot record this node's heartbeat (retrying): {e}");
                }
            }
        }
    }
}

/// (name, address, alive) of every other node in the table.
type Others = Vec<(String, String, bool)>;

async fn beat(c: &Cluster, registered: &mut bool) -> Result<Others, DbError> {
    let client = c.db.client().await?;
    let me: &str = &c.me;
    let timeout = c.cfg.node_timeout.as_secs_f64();
    if *registered {
        let still = client
            .execute(
                "UPDATE postbox_node SET heartbeat_at = now() WHERE name = $1",
                &[&me],
            )
            .await?;
        if still == 0 {
            tracing::warn!("cluster: this node was declared down by the others; joining again");
            *registered = false;
        }
    }
    if !*registered {
        client
            .execute(
                "INSERT INTO postbox_node (name, address, started_at, heartbeat_at) VALUES ($1, $2, now(), now())
                 ON CONFLICT (name) DO UPDATE SET address = EXCLUDED.address, heartbeat_at = now()",
                &[&me, &c.address.as_str()],
            )
            .await?;
        let reclaimed = c.reclaim(&client).await?;
        let _ = c.route_ops.send(RouteOp::Announce);
        *registered = true;
        if reclaimed > 0 {
            tracing::info!(reclaimed, "cluster: this node's live clients are its own again");
        }
        tracing::info!(address = %c.address, "cluster: node registered");
    }
    let rows = client
        .query(
            "SELECT name, address, heartbeat_at > now() - make_interval(secs => $2) FROM postbox_node
             WHERE name <> $1",
            &[&me, &timeout],
        )
        .await?;
    let mut others = Vec::with_capacity(rows.len());
    for row in &rows {
        others.push((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?));
    }
    Ok(others)
}

async fn reconcile(c: &Cluster, peers: &mut HashMap<NodeName, Peer>, others: Others, judge: bool) {
    let mut seen: Vec<NodeName> = Vec::with_capacity(others.len());
    for (name, address, alive) in others {
        let node: NodeName = Arc::from(name.as_str());
        if !alive {
            if judge {
                declare_down(c, &node).await;
            }
            continue;
        }
        seen.push(Arc::clone(&node));
        let known = peers.get(&node).map(|p| p.address.clone());
        if known.as_deref() == Some(address.as_str()) {
            continue;
        }
        if known.is_some() {
            // Restarted at another address.
            c.links.disconnect(&node);
        }
        tracing::info!(%node, %address, "cluster: node up");
        c.links.connect(&node, &address);
        // Read by the task that applies route notifications, in order with them.
        let _ = c.heard.send(super::routes::reload_request(&node));
        peers.insert(node, Peer { address });
    }
    let gone: Vec<NodeName> = peers.keys().filter(|n| !seen.contains(n)).cloned().collect();
    for node in gone {
        tracing::warn!(%node, "cluster: node down");
        peers.remove(&node);
        c.links.disconnect(&node);
        c.shared.router.forget_node(&node);
        node_down(c, &node);
    }
}

/// Runs `node.down` for `node` (its routes are forgotten, so nothing is
/// forwarded to it any more): plugins may deliver again what was lost with
/// it. In a task of its own, so a slow callback does not delay the beats.
fn node_down(c: &Cluster, node: &NodeName) {
    if c.shared.hooks.node_down.is_empty() {
        return;
    }
    let hooks = Arc::clone(&c.shared.hooks);
    let args = Arc::new(hooks_spec::NodeDownArgs {
        node: node.to_string(),
    });
    tokio::spawn(async move {
        hooks.node_down.run(args).await;
    });
}

/// Deletes a silent node's rows and tells the others to forget its routes.
async fn declare_down(c: &Cluster, node: &NodeName) {
    let result = async {
        let client = c.db.client().await?;
        client.batch_execute("BEGIN").await?;
        let deleted = delete_node(&client, node, c.cfg.node_timeout.as_secs_f64()).await;
        match deleted {
            Ok(n) => Ok(client.batch_execute("COMMIT").await.map(|()| n)?),
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                Err(DbError::from(e))
            }
        }
    }
    .await;
    match result {
        Ok(n) if n > 0 => {
            tracing::warn!(%node, "cluster: node declared down (no heartbeat); its routes and clients are released")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(%node, "cluster: cannot declare the node down yet: {e}"),
    }
}

/// The statements of [`declare_down`], in its transaction.
async fn delete_node(
    client: &tokio_postgres::Client,
    node: &str,
    timeout: f64,
) -> Result<u64, tokio_postgres::Error> {
    let deleted = client
        .execute(
            "DELETE FROM postbox_node WHERE name = $1 AND heartbeat_at <= now() - make_interval(secs => $2)",
            &[&node, &timeout],
        )
        .await?;
    if deleted > 0 {
        release_node(client, node).await?;
    }
    Ok(deleted)
}

/// In the caller's transaction, with `node`'s row deleted: its routes go
/// (the others hear to forget them) and its clients' rows are released (a
/// claim elsewhere does not wait for it).
pub(super) async fn release_node(
    client: &tokio_postgres::Client,
    node: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute("DELETE FROM postbox_route WHERE node = $1", &[&node])
        .await?;
    client
        .execute("UPDATE postbox_client SET node = '' WHERE node = $1", &[&node])
        .await?;
    super::routes::notify_reload(client, node).await
}
