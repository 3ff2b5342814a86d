//! Which node replays a shared group's backlog (`mqtt_share_claim`,
//! `sql/V6__share_claims.sql`).
//!
//! The first member of a `$share` group on a node starts the group's run
//! there ([`crate::groups`]). When first members subscribe on several nodes
//! at the same moment (a whole cluster restarted), none of them sees the
//! others' members yet, and each would replay the backlog. So a run that
//! would replay first claims the group: a row in `mqtt_share_claim` with
//! this node's name and a lease. The node that gets it replays; the others
//! deliver live messages only. The lease is renewed every [`RENEW_EVERY`]
//! while the run lasts and the row is deleted when it ends; a node that
//! died loses its claims when their lease ([`LEASE`]) passes. A node that
//! cannot reach the database replays as before (it cannot know).
//!
//! One task owns the claims this node holds; the hooks talk to it through a
//! channel.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::types::Type;

use crate::error::PgsqlError;
use crate::pool::NamedPool;

/// How long a claim holds without renewal.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often held claims are renewed.
pub const RENEW_EVERY: Duration = Duration::from_secs(10);

enum Request {
    Claim(String, oneshot::Sender<bool>),
    Release(String),
}

/// This node's side of the shared groups' claims.
#[derive(Clone)]
pub struct ShareClaims {
    tx: mpsc::UnboundedSender<Request>,
}

impl ShareClaims {
    /// Starts the task that owns this node's claims on `pool`.
    pub fn spawn(pool: NamedPool, node: String) -> (ShareClaims, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ShareClaims { tx }, tokio::spawn(run(pool, node, rx)))
    }

    /// Claims group `grp` (`$share/<group>/<filter>`) for this node: true
    /// when this node is to replay its backlog (it holds the claim, or the
    /// database could not say).
    pub async fn claim(&self, grp: &str) -> bool {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Request::Claim(grp.to_string(), reply)).is_err() {
            return true;
        }
        answer.await.unwrap_or(true)
    }

    /// The run of `grp` on this node ended: the claim goes.
    pub fn release(&self, grp: &str) {
        let _ = self.tx.send(Request::Release(grp.to_string()));
    }
}

async fn run(pool: NamedPool, node: String, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut held: BTreeSet<String> = BTreeSet::new();
    let mut renew = tokio::time::interval(RENEW_EVERY);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            req = rx.recv() => match req {
                None => return,
                Some(Request::Claim(grp, reply)) => {
                    let claimed = match try_claim(&pool, &grp, &node).await {
                        Ok(claimed) => claimed,
                        Err(e) => {
                            tracing::debug!(group = %grp, "shared group claim not checked (replaying here): {e}");
                            true
                        }
                    };
                    if claimed {
                        held.insert(grp);
                    }
                    let _ = reply.send(claimed);
                }
                Some(Request::Release(grp)) => {
                    if held.remove(&grp) {
                        if let Err(e) = release(&pool, &grp, &node).await {
                            tracing::debug!(group = %grp, "shared group claim not released (its lease ends it): {e}");
                        }
                    }
                }
            },
            _ = renew.tick(), if !held.is_empty() => {
                if let Err(e) = renew_all(&pool, &held, &node).await {
                    tracing::debug!("shared group claims not renewed: {e}");
                }
            }
        }
    }
}

const SECS: f64 = LEASE.as_secs() as f64;

async fn try_claim(pool: &NamedPool, grp: &str, node: &str) -> Result<bool, PgsqlError> {
    let conn = pool.get().await?;
    let row = conn
        .query_typed_opt(
            "INSERT INTO mqtt_share_claim (grp, node, until)
             VALUES ($1, $2, now() + make_interval(secs => $3))
             ON CONFLICT (grp) DO UPDATE SET node = EXCLUDED.node, until = EXCLUDED.until
                 WHERE mqtt_share_claim.until < now() OR mqtt_share_claim.node = EXCLUDED.node
             RETURNING node",
            &[(&grp, Type::TEXT), (&node, Type::TEXT), (&SECS, Type::FLOAT8)],
        )
        .await
        .map_err(PgsqlError::query("claim a shared group (mqtt_share_claim)"))?;
    Ok(row.is_some())
}

async fn release(pool: &NamedPool, grp: &str, node: &str) -> Result<(), PgsqlError> {
    let conn = pool.get().await?;
    conn.execute_typed(
        "DELETE FROM mqtt_share_claim WHERE grp = $1 AND node = $2",
        &[(&grp, Type::TEXT), (&node, Type::TEXT)],
    )
    .await
    .map_err(PgsqlError::query("release a shared group (mqtt_share_claim)"))?;
    Ok(())
}

async fn renew_all(pool: &NamedPool, held: &BTreeSet<String>, node: &str) -> Result<(), PgsqlError> {
    let groups: Vec<&str> = held.iter().map(String::as_str).collect();
    let conn = pool.get().await?;
    conn.execute_typed(
        "UPDATE mqtt_share_claim SET until = now() + make_interval(secs => $3)
         WHERE grp = ANY($1) AND node = $2",
        &[
            (&groups, Type::TEXT_ARRAY),
            (&node, Type::TEXT),
            (&SECS, Type::FLOAT8),
        ],
    )
    .await
    .map_err(PgsqlError::query("renew shared group claims (mqtt_share_claim)"))?;
    Ok(())
}
