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
//! A node whose members get live messages only (the claim was refused, or
//! other nodes had members: [`ShareClaims::want`]) keeps trying for the
//! claim while it has members: when the holder's lease has passed (it died,
//! and what its members held unacknowledged, and what was stored while no
//! node replayed, would otherwise stay in the store), or at the latest every
//! [`RENEW_EVERY`] (the holder's run ended and released it). The node that
//! gets it is told ([`ShareClaims::spawn`]'s receiver) and replays the
//! group's backlog from the group's position.
//!
//! One task owns the claims this node holds and wants; the hooks talk to it
//! through a channel.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::types::Type;

use crate::error::PgsqlError;
use crate::pool::NamedPool;
use crate::positions::TrackKey;

/// How long a claim holds without renewal.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often held claims are renewed (and, at the latest, wanted ones tried).
pub const RENEW_EVERY: Duration = Duration::from_secs(10);
/// A refused claim is tried again this long after the holder's lease ends
/// (the lease left is the database's count, so clocks do not matter).
const AFTER_LEASE: Duration = Duration::from_millis(200);

enum Request {
    Claim(TrackKey, oneshot::Sender<bool>),
    Want(TrackKey),
    Release(String),
}

/// This node's side of the shared groups' claims.
#[derive(Clone)]
pub struct ShareClaims {
    tx: mpsc::UnboundedSender<Request>,
}

impl ShareClaims {
    /// Starts the task that owns this node's claims on `pool`. The receiver
    /// gets each group whose claim this node took over after a refusal
    /// ([`ShareClaims::want`]): its backlog is now this node's to replay.
    pub fn spawn(
        pool: NamedPool,
        node: String,
    ) -> (ShareClaims, mpsc::UnboundedReceiver<TrackKey>, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (won_tx, won_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(pool, node, rx, won_tx));
        (ShareClaims { tx }, won_rx, task)
    }

    /// Claims group `key` (its `mqtt_acked` key, `$share/<group>/<filter>`
    /// second) for this node: true when this node is to replay its backlog
    /// (it holds the claim, or the database could not say). Refused, the
    /// claim is wanted ([`ShareClaims::want`]) from then on.
    pub async fn claim(&self, key: &TrackKey) -> bool {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Request::Claim(key.clone(), reply)).is_err() {
            return true;
        }
        answer.await.unwrap_or(true)
    }

    /// This node has members of group `key` that get live messages only
    /// (another node replays): the claim is tried again when the holder's
    /// lease can have passed, and at the latest every [`RENEW_EVERY`], until
    /// it is taken (the spawn's receiver is told) or released.
    pub fn want(&self, key: &TrackKey) {
        let _ = self.tx.send(Request::Want(key.clone()));
    }

    /// The run of `grp` on this node ended: the claim goes (or is no longer
    /// wanted).
    pub fn release(&self, grp: &str) {
        let _ = self.tx.send(Request::Release(grp.to_string()));
    }
}

/// What the task owns: the claims held, and those wanted with when to try
/// each next.
struct State {
    pool: NamedPool,
    node: String,
    /// Held claims, by group (`$share/<group>/<filter>`), with the group's key.
    held: BTreeMap<String, TrackKey>,
    wanted: BTreeMap<String, (TrackKey, Instant)>,
    won: mpsc::UnboundedSender<TrackKey>,
}

async fn run(
    pool: NamedPool,
    node: String,
    mut rx: mpsc::UnboundedReceiver<Request>,
    won: mpsc::UnboundedSender<TrackKey>,
) {
    let mut st = State {
        pool,
        node,
        held: BTreeMap::new(),
        wanted: BTreeMap::new(),
        won,
    };
    let mut renew = tokio::time::interval(RENEW_EVERY);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next_try = st.wanted.values().map(|(_, at)| *at).min();
        // Without a wanted claim the timer is disabled (its branch's guard).
        let retry = tokio::time::sleep_until(next_try.unwrap_or_else(|| Instant::now() + RENEW_EVERY));
        tokio::select! {
            req = rx.recv() => match req {
                None => return,
                Some(Request::Claim(key, reply)) => {
                    let claimed = match try_claim(&st.pool, &key.1, &st.node).await {
                        Ok(Claim::Taken) => true,
                        Ok(Claim::HeldFor(left)) => {
                            st.wanted.insert(key.1.clone(), (key.clone(), retry_at(left)));
                            false
                        }
                        Err(e) => {
                            tracing::debug!(group = %key.1, "shared group claim not checked (replaying here): {e}");
                            true
                        }
                    };
                    if claimed {
                        st.wanted.remove(&key.1);
                        st.held.insert(key.1.clone(), key);
                    }
                    let _ = reply.send(claimed);
                }
                Some(Request::Want(key)) => {
                    if !st.held.contains_key(&key.1) {
                        // The members elsewhere were handed every message so far:
                        // their node is given a renewal period to hold the claim
                        // (a refused claim is already wanted, at its holder's lease).
                        let at = Instant::now() + RENEW_EVERY;
                        st.wanted.entry(key.1.clone()).or_insert((key, at));
                    }
                }
                Some(Request::Release(grp)) => {
                    st.wanted.remove(&grp);
                    if st.held.remove(&grp).is_some() {
                        if let Err(e) = release(&st.pool, &grp, &st.node).await {
                            tracing::debug!(group = %grp, "shared group claim not released (its lease ends it): {e}");
                        }
                    }
                }
            },
            _ = renew.tick(), if !st.held.is_empty() => st.renew().await,
            () = retry, if next_try.is_some() => st.try_wanted().await,
        }
    }
}

impl State {
    /// Renews the held claims. One this node no longer holds (its lease
    /// passed while the database was out of reach and another node took it,
    /// or it was never written: the database did not answer the claim) is
    /// wanted again, so that some node with members always holds or wants
    /// it.
    async fn renew(&mut self) {
        let renewed = match renew_all(&self.pool, &self.held, &self.node).await {
            Ok(renewed) => renewed,
            Err(e) => {
                tracing::debug!("shared group claims not renewed: {e}");
                return;
            }
        };
        let lost: Vec<String> = self
            .held
            .keys()
            .filter(|grp| !renewed.contains(*grp))
            .cloned()
            .collect();
        for grp in lost {
            if let Some(key) = self.held.remove(&grp) {
                tracing::debug!(group = %grp, "shared group claim not held any more: wanted again");
                self.wanted.insert(grp, (key, retry_at(Duration::ZERO)));
            }
        }
    }

    /// Tries the wanted claims that are due; each one taken is held from now
    /// on and its group handed to the node's takeover.
    async fn try_wanted(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .wanted
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(grp, _)| grp.clone())
            .collect();
        for grp in due {
            let next = match try_claim(&self.pool, &grp, &self.node).await {
                Ok(Claim::Taken) => None,
                Ok(Claim::HeldFor(left)) => Some(retry_at(left)),
                Err(e) => {
                    tracing::debug!(group = %grp, "shared group claim not tried (trying again): {e}");
                    Some(Instant::now() + RENEW_EVERY)
                }
            };
            match next {
                Some(at) => {
                    if let Some(w) = self.wanted.get_mut(&grp) {
                        w.1 = at;
                    }
                }
                None => {
                    let Some((key, _)) = self.wanted.remove(&grp) else {
                        continue;
                    };
                    tracing::info!(group = %grp, "shared group: claim taken over (its holder's lease passed or it was released); replaying the group's backlog here");
                    self.held.insert(grp, key.clone());
                    let _ = self.won.send(key);
                }
            }
        }
    }
}

/// When to try a claim again whose holder's lease has `left` to run: just
/// after it ends, and at the latest after [`RENEW_EVERY`] (the holder may
/// release it before).
fn retry_at(left: Duration) -> Instant {
    Instant::now() + left.min(RENEW_EVERY) + AFTER_LEASE
}

const SECS: f64 = LEASE.as_secs() as f64;

/// The answer to a claim.
enum Claim {
    /// This node holds it.
    Taken,
    /// Another node holds it, for this long still.
    HeldFor(Duration),
}

async fn try_claim(pool: &NamedPool, grp: &str, node: &str) -> Result<Claim, PgsqlError> {
    let conn = pool.get().await?;
    // The holder's lease is read in the statement's snapshot: the row as it
    // was when the claim was refused.
    let row = conn
        .query_typed_one(
            "WITH claimed AS (
                 INSERT INTO mqtt_share_claim (grp, node, until)
                 VALUES ($1, $2, now() + make_interval(secs => $3))
                 ON CONFLICT (grp) DO UPDATE SET node = EXCLUDED.node, until = EXCLUDED.until
                     WHERE mqtt_share_claim.until < now() OR mqtt_share_claim.node = EXCLUDED.node
                 RETURNING node)
             SELECT EXISTS (SELECT 1 FROM claimed),
                    (SELECT EXTRACT(EPOCH FROM until - now())::float8
                     FROM mqtt_share_claim WHERE grp = $1)",
            &[(&grp, Type::TEXT), (&node, Type::TEXT), (&SECS, Type::FLOAT8)],
        )
        .await
        .map_err(PgsqlError::query("claim a shared group (mqtt_share_claim)"))?;
    let what = || PgsqlError::query("claim a shared group (mqtt_share_claim)");
    let taken: bool = row.try_get(0).map_err(what())?;
    if taken {
        return Ok(Claim::Taken);
    }
    let left: Option<f64> = row.try_get(1).map_err(what())?;
    // A row gone meanwhile (released): try again soon.
    let left = left.filter(|s| s.is_finite() && *s > 0.0).unwrap_or(0.0);
    Ok(Claim::HeldFor(Duration::from_secs_f64(left.min(SECS))))
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

/// Renews the `held` claims; returns those this node still holds.
async fn renew_all(
    pool: &NamedPool,
    held: &BTreeMap<String, TrackKey>,
    node: &str,
) -> Result<BTreeSet<String>, PgsqlError> {
    let groups: Vec<&str> = held.keys().map(String::as_str).collect();
    let conn = pool.get().await?;
    let rows = conn
        .query_typed(
            "UPDATE mqtt_share_claim SET until = now() + make_interval(secs => $3)
         WHERE grp = ANY($1) AND node = $2
         RETURNING grp",
            &[
                (&groups, Type::TEXT_ARRAY),
                (&node, Type::TEXT),
                (&SECS, Type::FLOAT8),
            ],
        )
        .await
        .map_err(PgsqlError::query("renew shared group claims (mqtt_share_claim)"))?;
    rows.iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<Result<_, _>>()
        .map_err(PgsqlError::query("renew shared group claims (mqtt_share_claim)"))
}
