//! Client ownership, in `postbox_client`: one live connection per client id
//! in the whole cluster.
//!
//! A node that accepts a CONNECT claims the client id before it attaches
//! the connection: in one transaction it locks the client's row (so
//! simultaneous claims on two nodes are serialised), takes it over with a
//! new generation number, and learns the previous owner. When that was
//! another node that is up, it asks it (a notification on `postbox_kick`,
//! naming the node, the client id and the new generation) to let go, and
//! waits, at most [`KICK_WAIT`], for its answer: the old node closes the
//! connection (MQTT 5: DISCONNECT 0x8E), ends the session there (`moved`:
//! its storage plugin writes the read positions and what it keeps of the
//! session first) and answers. Then this node attaches the connection, and
//! a persistent session is restored from storage with what it missed.
//!
//! Each node remembers the generation of the claim behind each of its
//! sessions: a request to let go that is older than the claim is ignored,
//! and a connection whose claim was taken over before it was attached is
//! refused. When a session ends here, its row is released: the row stays,
//! with no node (rows are never deleted, so a claim's `SELECT ... FOR
//! UPDATE` always finds the row its `INSERT ... ON CONFLICT DO NOTHING`
//! saw; a release that deleted it in between once let a claim fail and the
//! connection be attached unclaimed, leaving two live connections).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::db::DbError;
use super::Cluster;
use crate::delivery::SessionCmd;

/// The notification channel of ownership.
pub(super) const CHANNEL: &str = "postbox_kick";

/// Longest wait for the previous owner to let go.
pub(super) const KICK_WAIT: Duration = Duration::from_secs(3);

/// How often an unanswered request to let go is sent again.
const KICK_REPEAT: Duration = Duration::from_millis(250);

/// What this node owns and what it waits for.
#[derive(Default)]
pub(super) struct Owned {
    /// Client id -> generation of this node's claim.
    claims: Mutex<HashMap<Arc<str>, i64>>,
    /// (client id, generation) -> the claim waiting for the old owner.
    waiting: Mutex<HashMap<(String, i64), oneshot::Sender<()>>>,
}

impl Owned {
    fn claims(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, i64>> {
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i64), oneshot::Sender<()>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Cluster {
    /// Claims `clientid` for this node; returns the claim's generation, or
    /// `None` when the database does not answer (the connection is then
    /// attached without one: uniqueness across nodes cannot be checked).
    pub(super) async fn claim(&self, clientid: &Arc<str>) -> Option<i64> {
        let me: &str = &self.me;
        let id: &str = clientid;
        let result = async {
            let client = self.db.client().await?;
            client.batch_execute("BEGIN").await?;
            let claimed = async {
                client
                    .execute(
                        "INSERT INTO postbox_client (clientid, node, gen) VALUES ($1, '', 0)
                         ON CONFLICT DO NOTHING",
                        &[&id],
                    )
                    .await?;
                let prev = client
                    .query_one(
                        "SELECT node FROM postbox_client WHERE clientid = $1 FOR UPDATE",
                        &[&id],
                    )
                    .await?;
                let row = client
                    .query_one(
                        "UPDATE postbox_client SET node = $2, gen = nextval('postbox_claim_gen')
                         WHERE clientid = $1 RETURNING gen",
                        &[&id, &me],
                    )
                    .await?;
                let prev: String = prev.try_get(0)?;
                // Up: a heartbeat within node_timeout, or not registered yet
                // (it just started). A node that went silent is not waited for.
                let up = client
                    .query_one(
                        "SELECT COALESCE((SELECT heartbeat_at > now() - make_interval(secs => $2)
                                          FROM postbox_node WHERE name = $1), true)",
                        &[&prev, &self.cfg.node_timeout.as_secs_f64()],
                    )
                    .await?
                    .try_get::<_, bool>(0)?;
                Ok::<(String, i64, bool), tokio_postgres::Error>((prev, row.try_get(0)?, up))
            }
            .await;
            match claimed {
                Ok(c) => Ok(client.batch_execute("COMMIT").await.map(|()| c)?),
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    Err(DbError::from(e))
                }
            }
        }
        .await;
        let (prev, gen, up) = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(clientid = %clientid, "cluster: cannot claim the client id (attached unclaimed): {e}");
                return None;
            }
        };
        self.owned.claims().insert(Arc::clone(clientid), gen);
        if !prev.is_empty() && prev != me && up {
            self.kick(&prev, clientid, gen).await;
        }
        Some(gen)
    }

    /// Asks `node` to let `clientid` go and waits (bounded) for its answer.
    /// The request is a notification, heard only by a node listening at that
    /// moment: it is sent again every [`KICK_REPEAT`] until answered (a node
    /// that was not listening also checks its claims when it listens again).
    /// A node this node's link cannot reach at two requests in a row is not
    /// waited for further: it was killed (its connections died with it) and
    /// is not declared down yet; the client need not wait for that.
    async fn kick(&self, node: &str, clientid: &str, gen: i64) {
        let (tx, mut rx) = oneshot::channel();
        self.owned.waiting().insert((clientid.to_string(), gen), tx);
        let deadline = tokio::time::Instant::now() + KICK_WAIT;
        let mut settled = false;
        let mut unreachable = 0;
        while tokio::time::Instant::now() < deadline {
            if self.links.connected(node) {
                unreachable = 0;
            } else {
                unreachable += 1;
                if unreachable > 2 {
                    tracing::info!(%clientid, %node, "cluster: the previous node is unreachable; not waiting for it to let the client go");
                    settled = true;
                    break;
                }
            }
            let sent = async {
                let client = self.db.client().await?;
                client
                    .execute(
                        "SELECT pg_notify($1, $2)",
                        &[&CHANNEL, &payload('k', gen, node, clientid)],
                    )
                    .await
                    .map_err(DbError::from)
            }
            .await;
            if let Err(e) = sent {
                tracing::warn!(%clientid, %node, "cluster: cannot ask the previous node to let the client go: {e}");
                break;
            }
            if tokio::time::timeout(KICK_REPEAT, &mut rx).await.is_ok() {
                settled = true;
                break;
            }
        }
        if !settled {
            tracing::warn!(%clientid, %node, "cluster: the previous node did not let the client go within {KICK_WAIT:?}; going on");
        }
        self.owned.waiting().remove(&(clientid.to_string(), gen));
    }

    /// After this node joined again (the others had declared it down, and
    /// released its clients' rows): the rows of its live sessions that
    /// nobody claimed since are its own again, so a later claim elsewhere
    /// asks this node to let go.
    pub(super) async fn reclaim(&self, client: &tokio_postgres::Client) -> Result<u64, DbError> {
        let (ids, gens): (Vec<String>, Vec<i64>) = self
            .owned
            .claims()
            .iter()
            .map(|(c, g)| (c.to_string(), *g))
            .unzip();
        if ids.is_empty() {
            return Ok(0);
        }
        let me: &str = &self.me;
        Ok(client
            .execute(
                "UPDATE postbox_client p SET node = $1 FROM unnest($2::text[], $3::int8[]) AS u(c, g)
                 WHERE p.clientid = u.c AND p.gen = u.g AND p.node = ''",
                &[&me, &ids, &gens],
            )
            .await?)
    }

    /// After the LISTEN connection was (re)made: requests to let go may have
    /// been missed; every claim of this node that the table now gives to
    /// another node is let go.
    pub(super) async fn check_claims(self: &Arc<Self>) {
        let ids: Vec<String> = self.owned.claims().keys().map(|c| c.to_string()).collect();
        if ids.is_empty() {
            return;
        }
        let me: &str = &self.me;
        let rows = async {
            let client = self.db.client().await?;
            client
                .query(
                    "SELECT clientid, gen FROM postbox_client WHERE clientid = ANY($1) AND node <> $2",
                    &[&ids, &me],
                )
                .await
                .map_err(DbError::from)
        }
        .await;
        match rows {
            Ok(rows) => {
                for row in rows {
                    if let (Ok(c), Ok(g)) = (row.try_get::<_, String>(0), row.try_get::<_, i64>(1)) {
                        let this = Arc::clone(self);
                        tokio::spawn(async move { this.let_go(&c, g, "").await });
                    }
                }
            }
            Err(e) => tracing::warn!("cluster: cannot check this node's clients against the table: {e}"),
        }
    }

    /// Attaches a connection (`start`) under the claim `gen`, unless another
    /// node took the client id over since: then false (refuse it).
    pub(super) fn attach_claimed(&self, clientid: &Arc<str>, gen: i64, start: impl FnOnce()) -> bool {
        let claims = self.owned.claims();
        if claims.get(clientid) != Some(&gen) {
            return false;
        }
        // Under the lock: a request to let go is handled before or after the
        // attach, never in between (it then finds the session and moves it).
        start();
        true
    }

    /// A session attached under the claim `gen` ended here: the claim and
    /// its row are released, unless a newer claim holds the client id now (a
    /// connection that took the session over here: the old session's end
    /// must not release the new connection's claim).
    pub(super) async fn released(&self, clientid: &Arc<str>, gen: i64) {
        {
            let mut claims = self.owned.claims();
            if claims.get(clientid) != Some(&gen) {
                return;
            }
            claims.remove(clientid);
        }
        let me: &str = &self.me;
        let id: &str = clientid;
        let result = async {
            let client = self.db.client().await?;
            client
                .execute(
                    "UPDATE postbox_client SET node = '' WHERE clientid = $1 AND node = $2 AND gen = $3",
                    &[&id, &me, &gen],
                )
                .await
                .map_err(DbError::from)
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(%clientid, "cluster: cannot release the client's row (released when a node claims it): {e}");
        }
    }

    /// A notification on [`CHANNEL`].
    pub(super) async fn heard_kick(self: &Arc<Self>, p: &str) {
        let Some((op, gen, node, clientid)) = parse(p) else {
            tracing::warn!("cluster: an ownership notification this node cannot read: {p:?}");
            return;
        };
        match op {
            'k' if node == &*self.me => {
                let c = Arc::clone(self);
                let (clientid, claimer) = (clientid.to_string(), node.to_string());
                tokio::spawn(async move { c.let_go(&clientid, gen, &claimer).await });
            }
            'r' => {
                if let Some(tx) = self.owned.waiting().remove(&(clientid.to_string(), gen)) {
                    let _ = tx.send(());
                }
            }
            _ => {}
        }
    }

    /// Another node claimed `clientid` with generation `gen`: a session of
    /// an older claim here ends (`moved`), then the claimer hears so.
    async fn let_go(&self, clientid: &str, gen: i64, _me: &str) {
        let moved = {
            let mut claims = self.owned.claims();
            match claims.get(clientid) {
                Some(&mine) if mine >= gen => return,
                _ => {
                    claims.remove(clientid);
                    // Under the claims lock: no attach of this client id runs meanwhile.
                    self.shared.registry.get(clientid).map(|session| {
                        let (tx, rx) = oneshot::channel();
                        let _ = session.tx.send(SessionCmd::Moved(tx));
                        rx
                    })
                }
            }
        };
        if let Some(rx) = moved {
            // The session's hooks (the storage plugin's writes) are bounded by hooks.timeout.
            let _ = tokio::time::timeout(KICK_WAIT, rx).await;
        }
        let result = async {
            let client = self.db.client().await?;
            client
                .execute(
                    "SELECT pg_notify($1, $2)",
                    &[&CHANNEL, &payload('r', gen, "", clientid)],
                )
                .await
                .map_err(DbError::from)
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(%clientid, "cluster: cannot tell the new node the client was let go: {e}");
        }
    }
}

/// `<op><gen>:<node length>:<node><client id>`.
fn payload(op: char, gen: i64, node: &str, clientid: &str) -> String {
    format!("{op}{gen}:{}:{node}{clientid}", node.len())
}

fn parse(p: &str) -> Option<(char, i64, &str, &str)> {
    let op = p.chars().next()?;
    let rest = &p[op.len_utf8()..];
    let (gen, rest) = rest.split_once(':')?;
    let (len, rest) = rest.split_once(':')?;
    let len: usize = len.parse().ok()?;
    Some((op, gen.parse().ok()?, rest.get(..len)?, rest.get(len..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let p = payload('k', 42, "node:1", "client:x");
        assert_eq!(parse(&p), Some(('k', 42, "node:1", "client:x")));
        assert_eq!(parse("k1:9:short"), None);
    }
}
