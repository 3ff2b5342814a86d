//! Durable shared subscriptions: one read position per shared group.
//!
//! A shared subscription `$share/<group>/<filter>` delivers each message to
//! one member of the group, so the group, not each member, has a read
//! position. It is a row of `mqtt_acked` like any other, with
//! `clientid = '$share/<group>'` and `topic = '$share/<group>/<filter>'`:
//! a client's own rows name the filter it subscribed to, which never starts
//! with `$share/` (such a filter is a shared subscription), so no client id
//! can reach the group's row, whatever it is. In memory the group has a
//! track under the same key ([`crate::positions`]); a client's lookups skip
//! tracks whose filter starts with `$share/`.
//!
//! - The first member to subscribe on this node (after a restart, say)
//!   starts the group's run: the position is read (or, for a group never
//!   seen, recorded as the newest stored id, as for a first subscription),
//!   and the backlog above it, what no member acknowledged, is replayed to
//!   that member, page by page, oldest first, paced by the acknowledgements.
//!   Members that join during the run get live messages only (the broker
//!   picks one member per message).
//! - Any member's acknowledgement of a stored message matching the filter
//!   counts for the group: the position moves over a contiguous
//!   acknowledged range, as for a client (a member that also has a plain
//!   subscription matching the topic counts its copy for the group too).
//! - A member that loses its connection hands its unacknowledged messages
//!   of the group to a connected member (the broker does that); a member
//!   whose session ends, to any member left (with the pages it had not yet
//!   taken). If the member the backlog goes to leaves while it is still
//!   paging, the next pages go to another member (a page its session could
//!   no longer take is read again for that one).
//! - When the last member here leaves (unsubscribes, or its session ends),
//!   the run ends: messages stored meanwhile are routed to no one, and the
//!   next member to subscribe gets them from the position.
//! - A message a member's full queue dropped is recorded as missed and
//!   handed again, from the store, to the next member that connects,
//!   subscribes or acknowledges, a page at a time
//!   ([`crate::fetch::Fetcher::replay_missed`]).
//! - In a cluster each node records what its own members acknowledged; the
//!   position flusher counts what the others recorded in the row
//!   (`acked_above`) as acknowledged too ([`crate::positions`]). The first
//!   member on a node gets no backlog when other nodes have members
//!   (`BrokerHandle::shared_members_elsewhere`): what this node's members
//!   leave goes to them.
//!
//! - Nodes that get their first members at the same moment (a whole
//!   cluster restarted) do not see each other's yet: a run that would
//!   replay first claims the group in PostgreSQL ([`crate::claims`]), and
//!   only the node that gets the claim replays the backlog.
//! - A node whose members get live messages only (claim refused, or
//!   members elsewhere) keeps wanting the claim while it has members. When
//!   the holder dies (SIGKILL: its lease passes) or its run ends, the node
//!   takes the claim over and replays the group's backlog from the stored
//!   position ([`crate::Engine::group_take_over`]): what the dead node's
//!   members held unacknowledged, and what was stored while no node
//!   replayed, is not stranded.
//! - When another node is down (`node.down`: SIGKILLed, say), the node
//!   whose run replays hands its members again, from the store, the group's
//!   messages above the position that no node recorded as acknowledged and
//!   none of its own members holds ([`node_down`]): those the dead node's
//!   members held unacknowledged, and those forwarded to it before it was
//!   declared down. At least once: a message the dead node delivered and
//!   whose acknowledgement it had not recorded comes twice.

mod node_down;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use crate::positions::TrackKey;

/// What every shared group's key starts with.
pub const PREFIX: &str = "$share/";

/// The track (and `mqtt_acked` row) of shared group `group` on `filter`.
pub fn group_key(group: &str, filter: &str) -> TrackKey {
    (format!("{PREFIX}{group}"), format!("{PREFIX}{group}/{filter}"))
}

/// True for a shared group's track filter (`$share/<group>/<filter>`).
pub fn is_group(filter: &str) -> bool {
    filter.starts_with(PREFIX)
}

/// The topic filter a track's messages match: a shared group's filter
/// without `$share/<group>/`, any other as it is.
pub fn match_filter(filter: &str) -> &str {
    filter
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_, inner)| inner)
}

/// Which clients here are members of which shared groups (kept in step by
/// `session.subscribed`, `session.unsubscribed` and `session.terminated`).
/// Behind a `std` mutex held for short, await-free updates, as the tracks.
#[derive(Default)]
pub struct Members(Mutex<MemberMap>);

#[derive(Default)]
struct MemberMap {
    by_client: HashMap<String, Vec<TrackKey>>,
    by_group: HashMap<TrackKey, BTreeSet<String>>,
    /// Groups whose run here gets live messages only, until this node takes
    /// their claim over (forgotten with the run's last member).
    live_only: HashSet<TrackKey>,
}

impl Members {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemberMap> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `clientid` is a member of `key`; true when it is the group's first
    /// member here (a new run starts).
    pub fn join(&self, clientid: &str, key: &TrackKey) -> bool {
        let mut map = self.lock();
        let groups = map.by_client.entry(clientid.to_string()).or_default();
        if !groups.contains(key) {
            groups.push(key.clone());
        }
        let members = map.by_group.entry(key.clone()).or_default();
        let first = members.is_empty();
        members.insert(clientid.to_string());
        first
    }

    /// `clientid` left `key`; returns the members left (empty: the run ends).
    pub fn leave(&self, clientid: &str, key: &TrackKey) -> Option<Vec<String>> {
        let mut map = self.lock();
        let groups = map.by_client.get_mut(clientid)?;
        let at = groups.iter().position(|k| k == key)?;
        groups.swap_remove(at);
        if groups.is_empty() {
            map.by_client.remove(clientid);
        }
        let members = map.by_group.get_mut(key)?;
        members.remove(clientid);
        let left: Vec<String> = members.iter().cloned().collect();
        if left.is_empty() {
            map.by_group.remove(key);
            map.live_only.remove(key);
        }
        Some(left)
    }

    /// The run of `key` here gets live messages only (its backlog is another
    /// node's to replay); false (nothing recorded) when it has no member.
    pub fn set_live_only(&self, key: &TrackKey) -> bool {
        let mut map = self.lock();
        if !map.by_group.contains_key(key) {
            return false;
        }
        map.live_only.insert(key.clone());
        true
    }

    /// True (once) when the run of `key` here got live messages only and
    /// still has members: it is to replay the backlog now.
    pub fn take_live_only(&self, key: &TrackKey) -> bool {
        let mut map = self.lock();
        map.by_group.contains_key(key) && map.live_only.remove(key)
    }

    /// The groups whose run here replays (it has members, and its backlog is
    /// not another node's), each with a member: the one the backlog goes to
    /// if set, else any.
    pub fn replaying(&self) -> Vec<(TrackKey, String)> {
        let map = self.lock();
        map.by_group
            .iter()
            .filter(|(key, _)| !map.live_only.contains(*key))
            .filter_map(|(key, members)| Some((key.clone(), members.first()?.clone())))
            .collect()
    }

    /// The groups `clientid` is a member of.
    pub fn groups_of(&self, clientid: &str) -> Vec<TrackKey> {
        self.lock().by_client.get(clientid).cloned().unwrap_or_default()
    }

    /// True when `clientid` is a member of some group (cheap: checked for
    /// every acknowledgement).
    pub fn is_member(&self, clientid: &str) -> bool {
        let map = self.lock();
        !map.by_client.is_empty() && map.by_client.contains_key(clientid)
    }
}

/// The hooks' side of shared groups (see the module documentation).
impl crate::Engine {
    /// `session.subscribed` for a shared subscription (on_message_fetch):
    /// the first member here starts the group's run and gets its backlog
    /// (none when other nodes have members: `elsewhere`); later members get
    /// live messages only.
    pub(crate) async fn group_subscribed(
        &self,
        fetcher: &std::sync::Arc<crate::fetch::Fetcher>,
        clientid: &str,
        key: TrackKey,
        qos: hooks_spec::QoS,
        opts: crate::positions::FetchOpts,
        elsewhere: bool,
    ) -> Result<(), crate::error::PgsqlError> {
        let first = self.members.join(clientid, &key);
        // First members subscribing on several nodes at once (a cluster
        // restarted) do not see each other yet: one node claims the backlog.
        // Refused, the claims task keeps trying for it (the holder may die).
        let members_elsewhere = elsewhere;
        let elsewhere = match (&self.claims, first && !elsewhere) {
            (Some(claims), true) => !claims.claim(&key).await,
            _ => elsewhere,
        };
        if first && elsewhere {
            tracing::debug!(
                group = %key.1,
                "shared group: live messages only here ({}); the claim is wanted",
                if members_elsewhere { "members on other nodes" } else { "claimed by another node" }
            );
            // Members on other nodes have the group's messages (and what this
            // node's members leave goes to them): no backlog here, or those
            // they hold unacknowledged would come twice. Live from now on,
            // until this node takes the claim over (`group_take_over`).
            self.tracks.bound_run(&key, 0);
            if let Some(claims) = &self.claims {
                if self.members.set_live_only(&key) {
                    claims.want(&key);
                }
            }
        }
        if qos == hooks_spec::QoS::AtMostOnce || (!first && self.tracks.replay_to(&key).is_some()) {
            // A QoS 0 member has nothing stored for it (as a QoS 0
            // subscription); the next QoS 1/2 member starts the run.
            if qos != hooks_spec::QoS::AtMostOnce {
                self.group_catch_up(&key, clientid);
            }
            return Ok(());
        }
        self.tracks.set_replay_to(&key, Some(clientid.to_string()));
        self.fetch_group(fetcher, key, qos, opts).await
    }

    /// This node took over the claim of group `key` (its holder's lease
    /// passed: it died, or it released it; see [`crate::claims`]) while its
    /// members here got live messages only: the group's backlog, from its
    /// stored position to the newest stored id, is replayed here, as for a
    /// first member, minus what this node's members acknowledged and what
    /// the other nodes recorded as acknowledged (`acked_above`). What the
    /// member it goes to received live its session skips (the stored ids it
    /// took); a message another member here holds unacknowledged may come
    /// twice (at least once). Messages stored later go live to the members.
    pub(crate) async fn group_take_over(&self, key: TrackKey) {
        let Some(fetcher) = &self.fetcher else { return };
        // Nothing to do when the run ended meanwhile (its release gives the
        // claim back), or a new run here replays already.
        if !self.members.take_live_only(&key) {
            return;
        }
        let Some((qos, opts)) = self.tracks.reopen_run(&key) else {
            // No run here to replay into (only QoS 0 members, which have
            // nothing stored for them, or the first member's subscription is
            // not started yet): the claim goes back for a node that can
            // replay, and is wanted again.
            if let Some(claims) = &self.claims {
                if self.members.set_live_only(&key) {
                    claims.release(&key.1);
                    claims.want(&key);
                }
            }
            return;
        };
        let qos = crate::fetch::stored_qos(qos);
        if let Err(e) = self.fetch_group(fetcher, key.clone(), qos, opts).await {
            tracing::debug!(group = %key.1, "shared group taken over: backlog not read yet (retrying): {e}");
        }
    }

    /// Reads the group's position and replays its backlog to the member
    /// set in its track; when the database does not answer, later (as for
    /// a client's subscription).
    async fn fetch_group(
        &self,
        fetcher: &std::sync::Arc<crate::fetch::Fetcher>,
        key: TrackKey,
        qos: hooks_spec::QoS,
        opts: crate::positions::FetchOpts,
    ) -> Result<(), crate::error::PgsqlError> {
        let cap = self.first_position_cap();
        // `replay-from` is a client's request for its own subscription: a
        // group's position is shared, so it is not set back.
        let result = fetcher.on_subscribed(&key.0, &key.1, qos, opts, cap, None).await;
        if result.is_err() {
            let hint = cap.min(
                self.stats
                    .store
                    .last_id
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
            std::sync::Arc::clone(fetcher)
                .register_later(key.0, key.1, qos, opts, hint)
                .await;
        }
        result
    }

    /// A member left group `key` (unsubscribed, or its session ended here).
    /// The last one ends the run; if it was the member the backlog goes to,
    /// the next pages go to another member (what it was handed and left
    /// unacknowledged the broker moved to other members), and a page its
    /// session could no longer take is read again for the new one.
    pub(crate) fn group_left(&self, clientid: &str, key: &TrackKey) {
        let Some(left) = self.members.leave(clientid, key) else {
            return;
        };
        let Some(next) = left.first() else {
            self.tracks.forget_group(key);
            if let Some(claims) = &self.claims {
                claims.release(&key.1);
            }
            return;
        };
        if self.tracks.replay_to(key).as_deref() != Some(clientid) {
            return;
        }
        self.tracks.set_replay_to(key, Some(next.clone()));
        if let Some(due) = self.tracks.resume(key) {
            tracing::debug!(group = %key.1, member = %next, "shared group: the backlog goes on with another member");
            self.tracks.queue_page(due);
        }
    }

    /// A member acknowledged (or is done with) stored message `id` on
    /// `topic`: the groups of its it matches are recomputed, and the member
    /// (it has a connection) is handed missed messages, if any wait.
    pub(crate) fn group_done(&self, clientid: &str, topic: &str, id: i64, settle_page: bool) {
        let Some(dirty) = &self.dirty else { return };
        if !self.members.is_member(clientid) {
            return;
        }
        for key in self.members.groups_of(clientid) {
            if crate::mqtt_matches(match_filter(&key.1), topic) {
                if let Some(k) = self.tracks.acked_key(&key, id, settle_page) {
                    let _ = dirty.send(k);
                }
                self.group_catch_up(&key, clientid);
            }
        }
    }

    /// A member's session dropped stored message `id` (its queue was full):
    /// each of its groups the topic matches delivers it again later.
    pub(crate) fn group_dropped(&self, clientid: &str, topic: &str, id: i64) {
        if !self.members.is_member(clientid) {
            return;
        }
        for key in self.members.groups_of(clientid) {
            if crate::mqtt_matches(match_filter(&key.1), topic) {
                self.tracks.missed(&key, id);
            }
        }
    }

    /// A member connected: its groups hand it what they missed.
    pub(crate) fn group_member_connected(&self, clientid: &str) {
        if !self.members.is_member(clientid) {
            return;
        }
        for key in self.members.groups_of(clientid) {
            self.group_catch_up(&key, clientid);
        }
    }

    /// Hands `member` (it has a connection, or just subscribed) the next
    /// messages group `key` missed, if some wait and none handed before is
    /// unacknowledged; read in a task of its own (the caller is a hook).
    fn group_catch_up(&self, key: &TrackKey, member: &str) {
        let Some(fetcher) = &self.fetcher else { return };
        let Some((ids, qos)) = self.tracks.take_missed(key, self.cfg.max_returned_count) else {
            return;
        };
        let (fetcher, key, member) = (std::sync::Arc::clone(fetcher), key.clone(), member.to_string());
        tokio::spawn(async move {
            match fetcher.replay_missed(&key, &member, &ids, qos).await {
                Ok(handed) => fetcher.tracks.missed_handed(&key, &ids, &handed, false),
                Err(e) => {
                    tracing::debug!(group = %key.1, %member, "shared group: missed messages not handed over yet: {e}");
                    fetcher.tracks.missed_handed(&key, &ids, &[], true);
                }
            }
        });
    }

    /// A stored message was written to a member.
    pub(crate) fn group_delivered(&self, clientid: &str, topic: &str, id: i64) {
        if !self.members.is_member(clientid) {
            return;
        }
        for key in self.members.groups_of(clientid) {
            if crate::mqtt_matches(match_filter(&key.1), topic) {
                self.tracks.delivered_key(&key, id);
            }
        }
    }
}

/// Replays the backlog of each group whose claim this node took over
/// (what [`crate::claims::ShareClaims::spawn`]'s receiver gets), one after
/// another, for as long as the plugin runs.
pub(crate) async fn serve_take_overs(
    engine: std::sync::Weak<crate::Engine>,
    mut won: tokio::sync::mpsc::UnboundedReceiver<TrackKey>,
) {
    while let Some(key) = won.recv().await {
        let Some(engine) = engine.upgrade() else { return };
        engine.group_take_over(key).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_key_reaches_no_client_row_and_matches_its_filter() {
        let (clientid, topic) = group_key("g", "a/+/c");
        assert_eq!(clientid, "$share/g");
        assert_eq!(topic, "$share/g/a/+/c");
        assert!(is_group(&topic));
        assert_eq!(match_filter(&topic), "a/+/c");
        assert_eq!(match_filter("a/+/c"), "a/+/c");
        assert!(!is_group("a/#"));
    }

    #[test]
    fn the_first_member_starts_a_run_and_the_last_ends_it() {
        let m = Members::default();
        let key = group_key("g", "t/#");
        assert!(m.join("a", &key));
        assert!(!m.join("b", &key));
        assert!(!m.join("a", &key), "joining again is no new run");
        assert_eq!(m.groups_of("a"), vec![key.clone()]);
        assert_eq!(m.leave("a", &key), Some(vec!["b".to_string()]));
        assert_eq!(m.leave("a", &key), None, "not a member any more");
        assert_eq!(m.leave("b", &key), Some(vec![]));
        assert!(!m.is_member("b"));
        assert!(m.join("b", &key), "a new run");
    }

    #[test]
    fn a_live_only_run_is_taken_over_once_and_forgotten_with_its_last_member() {
        let m = Members::default();
        let key = group_key("g", "t");
        assert!(m.join("a", &key));
        assert!(m.set_live_only(&key));
        assert!(m.take_live_only(&key), "the claim taken over: replay");
        assert!(!m.take_live_only(&key), "once");
        assert!(m.set_live_only(&key));
        assert_eq!(m.leave("a", &key), Some(vec![]));
        assert!(!m.take_live_only(&key), "no member left: nothing to replay");
        assert!(!m.set_live_only(&key), "no member: not recorded");
        assert!(m.join("b", &key));
        assert!(!m.take_live_only(&key), "a new run replays on its own");
    }
}
