//! The cluster's route table, `postbox_route`: which node has subscribers
//! for which filter (and shared group).
//!
//! One task (the writer) owns this node's rows: every change of the local
//! routes ([`RouteChange`], a filter's first or last subscription here)
//! becomes a row inserted or deleted and a notification, in one transaction,
//! in the order the router made them; an announcement (at registration)
//! replaces all of this node's rows with the router's current routes. A
//! failed transaction is tried again until the database answers.
//!
//! The other direction: notifications on `postbox_route` add or remove one
//! route of another node in the router; when the LISTEN connection is made
//! (again), every other node's routes are read from the table anew, so a
//! notification missed while disconnected loses nothing.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::db::{DbError, Heard, RETRY};
use super::Cluster;
use crate::router::{NodeName, RouteChange};

/// The notification channel of route changes.
pub(super) const CHANNEL: &str = "postbox_route";

/// Longest payload sent as it is (PostgreSQL's limit is 8000 bytes); a
/// longer change is announced as "read this node's routes again".
const MAX_PAYLOAD: usize = 7900;

/// What the writer does.
pub(super) enum RouteOp {
    /// A local route changed.
    Change(RouteChange),
    /// Replace this node's rows with the router's routes now.
    Announce,
}

/// The writer: this node's rows of `postbox_route`, in order.
pub(super) async fn writer(c: Arc<Cluster>, mut rx: mpsc::UnboundedReceiver<RouteOp>) {
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(op) = rx.try_recv() {
            batch.push(op);
        }
        loop {
            match write(&c, &batch).await {
                Ok(()) => break,
                Err(e) => {
                    if !failing {
                        failing = true;
                        tracing::error!("cluster: cannot record routes (retrying): {e}");
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        if failing {
            failing = false;
            tracing::warn!("cluster: recording routes again");
        }
    }
}

async fn write(c: &Cluster, batch: &[RouteOp]) -> Result<(), DbError> {
    let client = c.db.client().await?;
    let me: &str = &c.me;
    client.batch_execute("BEGIN").await?;
    let result = async {
        for op in batch {
            match op {
                RouteOp::Change(ch) => {
                    let grp = ch.group.as_deref().unwrap_or("");
                    if ch.added {
                        client
                            .execute(
                                "INSERT INTO postbox_route (node, filter, grp) VALUES ($1, $2, $3)
                                 ON CONFLICT DO NOTHING",
                                &[&me, &ch.filter, &grp],
                            )
                            .await?;
                    } else {
                        client
                            .execute(
                                "DELETE FROM postbox_route WHERE node = $1 AND filter = $2 AND grp = $3",
                                &[&me, &ch.filter, &grp],
                            )
                            .await?;
                    }
                    let op = if ch.added { '+' } else { '-' };
                    notify(&client, &payload(op, me, grp, &ch.filter)).await?;
                }
                RouteOp::Announce => {
                    client
                        .execute("DELETE FROM postbox_route WHERE node = $1", &[&me])
                        .await?;
                    let routes = c.shared.router.local_routes();
                    let filters: Vec<&str> = routes.iter().map(|(f, _)| f.as_str()).collect();
                    let groups: Vec<&str> = routes.iter().map(|(_, g)| g.as_deref().unwrap_or("")).collect();
                    client
                        .execute(
                            "INSERT INTO postbox_route (node, filter, grp)
                             SELECT $1, f, g FROM unnest($2::text[], $3::text[]) AS u(f, g)
                             ON CONFLICT DO NOTHING",
                            &[&me, &filters, &groups],
                        )
                        .await?;
                    notify(&client, &payload('*', me, "", "")).await?;
                }
            }
        }
        Ok::<(), tokio_postgres::Error>(())
    }
    .await;
    match result {
        Ok(()) => Ok(client.batch_execute("COMMIT").await?),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e.into())
        }
    }
}

/// Tells every node to read `node`'s routes again (in the caller's
/// transaction: heard once it commits).
pub(super) async fn notify_reload(
    client: &tokio_postgres::Client,
    node: &str,
) -> Result<(), tokio_postgres::Error> {
    notify(client, &payload('*', node, "", "")).await
}

async fn notify(client: &tokio_postgres::Client, payload: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .await
        .map(|_| ())
}

/// `<op><node length>:<node><group length>:<group><filter>` (`*`: read the
/// node's routes again; also for a change too long for a notification).
fn payload(op: char, node: &str, grp: &str, filter: &str) -> String {
    let p = format!("{op}{}:{node}{}:{grp}{filter}", node.len(), grp.len());
    if p.len() > MAX_PAYLOAD {
        format!("*{}:{node}0:", node.len())
    } else {
        p
    }
}

/// (op, node, group, filter) of a payload.
fn parse(p: &str) -> Option<(char, &str, &str, &str)> {
    let op = p.chars().next()?;
    let rest = &p[op.len_utf8()..];
    let (node, rest) = take_counted(rest)?;
    let (grp, filter) = take_counted(rest)?;
    Some((op, node, grp, filter))
}

fn take_counted(s: &str) -> Option<(&str, &str)> {
    let (len, rest) = s.split_once(':')?;
    let len: usize = len.parse().ok()?;
    Some((rest.get(..len)?, rest.get(len..)?))
}

/// Applies what the LISTEN connection hears to the router.
pub(super) async fn heard(c: &Cluster, h: Heard) {
    match h {
        Heard::Connected => {
            if let Err(e) = reload(c, None).await {
                tracing::warn!("cluster: cannot read the route table (read again on the next change): {e}");
            }
        }
        Heard::Notification(channel, p) if channel == CHANNEL => {
            let Some((op, node, grp, filter)) = parse(&p) else {
                tracing::warn!("cluster: a route notification this node cannot read: {p:?}");
                return;
            };
            if node == &*c.me {
                return;
            }
            let node: NodeName = Arc::from(node);
            let router = &c.shared.router;
            match (op, grp) {
                ('+', "") => {
                    router.add_node_route(&node, filter);
                }
                ('+', g) => {
                    router.add_node_member(&node, filter, g);
                }
                ('-', "") => {
                    router.remove_node_route(&node, filter);
                }
                ('-', g) => {
                    router.remove_node_member(&node, filter, g);
                }
                _ => {
                    if let Err(e) = reload(c, Some(&node)).await {
                        tracing::warn!(%node, "cluster: cannot read a node's routes: {e}");
                    }
                }
            }
        }
        Heard::Notification(..) => {}
    }
}

/// What makes [`heard`] read `node`'s routes again (sent to the queue of
/// what the LISTEN connection hears: a notification heard while the table
/// is read is applied after the read, so a route added meanwhile is not
/// lost).
pub(super) fn reload_request(node: &str) -> Heard {
    Heard::Notification(CHANNEL.to_string(), payload('*', node, "", ""))
}

/// Reads the routes of `node` (or of every other node) from the table and
/// puts them in the router in place of what it had. Only the task that
/// applies route notifications calls it ([`heard`]): another caller's read
/// could miss a route whose notification that task applied meanwhile, and
/// then remove it.
async fn reload(c: &Cluster, node: Option<&NodeName>) -> Result<(), DbError> {
    let client = c.db.client().await?;
    let me: &str = &c.me;
    let rows = match node {
        Some(n) => {
            let n: &str = n;
            client
                .query(
                    "SELECT node, filter, grp FROM postbox_route WHERE node = $1",
                    &[&n],
                )
                .await?
        }
        None => {
            client
                .query(
                    "SELECT node, filter, grp FROM postbox_route WHERE node <> $1",
                    &[&me],
                )
                .await?
        }
    };
    let mut by_node: HashMap<NodeName, Vec<(String, String)>> = HashMap::new();
    for row in &rows {
        let (n, f, g): (String, String, String) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        by_node.entry(Arc::from(n.as_str())).or_default().push((f, g));
    }
    let router = &c.shared.router;
    let mut nodes: Vec<NodeName> = match node {
        Some(n) => vec![Arc::clone(n)],
        None => c.links.nodes(),
    };
    for n in by_node.keys() {
        if !nodes.contains(n) {
            nodes.push(Arc::clone(n));
        }
    }
    for n in nodes {
        router.forget_node(&n);
        for (f, g) in by_node.get(&n).into_iter().flatten() {
            if g.is_empty() {
                router.add_node_route(&n, f);
            } else {
                router.add_node_member(&n, f, g);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_long_ones_become_a_reload() {
        let p = payload('+', "postbox@a", "g:1", "a/b:c/#");
        assert_eq!(parse(&p), Some(('+', "postbox@a", "g:1", "a/b:c/#")));
        let long = "x/".repeat(5000);
        let p = payload('-', "n", "", &long);
        assert_eq!(parse(&p), Some(('*', "n", "", "")));
        assert_eq!(parse("+9:short"), None);
    }
}
