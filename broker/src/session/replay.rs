//! Stored messages: what a storage plugin replays, and how live messages
//! with a storage id meet the replay without loss, duplicates or reordering.
//!
//! A plugin replays a subscription's backlog page by page
//! ([`Replay`](super::Replay)); until a page says the backlog is complete
//! the subscription is *replaying*. The session keeps:
//! - the storage ids it has taken for delivery recently (a bounded window,
//!   across all subscriptions): a stored message that comes both live and
//!   from a page goes out once, whatever the order they arrive in. An id is
//!   recorded only once the message is sent or queued, never for one that
//!   was dropped (a page must still bring that one);
//! - live stored messages that arrived while a subscription they match was
//!   replaying, held in id order and released (minus what the pages brought)
//!   when the replay completes, so they follow the backlog in id order;
//! - per replayed filter, the highest stored id it had to drop (its queue,
//!   or the held messages, were full). Such a filter replays again: its live
//!   messages are held until a page completes the backlog through that id.
//!   `message.dropped` tells the plugin, which reads the store again, so the
//!   dropped messages arrive from the store, in order, once.

use std::collections::{BTreeMap, VecDeque};

use hooks_spec::DropReason;

use super::id_hash::IdSet;
use super::{Replay, Routed, Session};
use crate::topic;

/// How many storage ids a session remembers as delivered.
const SEEN_WINDOW: usize = 100_000;

/// A bounded set of recently delivered storage ids.
#[derive(Default)]
pub(super) struct SeenIds {
    set: IdSet<i64>,
    order: VecDeque<i64>,
}

impl SeenIds {
    fn contains(&self, id: i64) -> bool {
        self.set.contains(&id)
    }

    /// Records an id; false when it was already there.
    fn insert(&mut self, id: i64) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN_WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    fn clear(&mut self) {
        self.set.clear();
        self.order.clear();
    }
}

/// Where one replayed subscription stands.
#[derive(Default)]
struct FilterReplay {
    /// Its filter (without `$share/<group>/`): the topics it holds.
    filter: String,
    /// The backlog is still paging: live stored messages matching it are held.
    paging: bool,
    /// The highest stored id the session dropped for it: the replay is not
    /// complete before a page completes through it.
    dropped_max: Option<i64>,
}

/// The session's stored-message state: nothing until a plugin replays for
/// one of its subscriptions (most sessions never have one, and an idle
/// connection should not carry the empty tables).
#[derive(Default)]
pub(super) struct StoredState(Option<Box<Tracking>>);

/// What a session tracks once a plugin replays for it.
#[derive(Default)]
struct Tracking {
    /// Subscriptions a plugin replays for, by the filter as the client sent
    /// it (`$share/<group>/<filter>` for a shared one).
    replaying: std::collections::HashMap<String, FilterReplay>,
    seen: SeenIds,
    /// Live stored messages waiting for a replay, by storage id.
    held: BTreeMap<i64, Routed>,
}

impl StoredState {
    /// Forgets everything (clean start).
    pub(super) fn clear(&mut self) {
        self.0 = None;
    }

    /// Forgets which stored messages were delivered, so that a replay the
    /// client asked for (`replay-from`) sends them again.
    pub(super) fn forget_seen(&mut self) {
        if let Some(t) = self.0.as_mut() {
            t.seen.clear();
        }
    }

    /// The tracking state, created on first use.
    fn tracking(&mut self) -> &mut Tracking {
        self.0.get_or_insert_with(Box::default)
    }

    fn is_tracked(&self) -> bool {
        self.0.as_ref().is_some_and(|t| !t.replaying.is_empty())
    }

    fn was_seen(&self, id: i64) -> bool {
        self.0.as_ref().is_some_and(|t| t.seen.contains(id))
    }

    fn waits_for_replay(&self, topic_name: &str) -> bool {
        self.0.as_ref().is_some_and(|t| t.waits_for_replay(topic_name))
    }

    fn dropped(&mut self, topic_name: &str, id: i64, shared: bool) {
        if let Some(t) = self.0.as_mut() {
            t.dropped(topic_name, id, shared);
        }
    }

    fn held_count(&self) -> usize {
        self.0.as_ref().map_or(0, |t| t.held.len())
    }
}

impl Tracking {
    fn waits_for_replay(&self, topic_name: &str) -> bool {
        self.replaying
            .values()
            .any(|r| r.paging && topic::matches(&r.filter, topic_name))
    }

    /// A stored message was dropped: every replayed filter it matches must
    /// get it from the store, so they hold their live messages again. Not a
    /// shared group's (`shared`: only a group chose this session for it):
    /// the plugin has the group deliver it again, to whichever member, and
    /// one member holding back its live messages would not bring it.
    fn dropped(&mut self, topic_name: &str, id: i64, shared: bool) {
        if shared {
            return;
        }
        for (key, r) in self.replaying.iter_mut() {
            if key.starts_with("$share/") {
                continue;
            }
            if topic::matches(&r.filter, topic_name) {
                r.paging = true;
                r.dropped_max = Some(r.dropped_max.map_or(id, |d| d.max(id)));
            }
        }
    }
}

/// What to do with a live message.
pub(super) enum Live {
    /// Deliver it now.
    Deliver(Routed),
    /// Already delivered, or held for a replay.
    Done,
}

impl Session {
    /// Sorts a live routed message with a storage id against replays.
    pub(super) fn live_stored(&mut self, routed: Routed) -> Live {
        let Some(id) = routed.message.headers.stored_id else {
            return Live::Deliver(routed);
        };
        if !self.stored.is_tracked() {
            return Live::Deliver(routed);
        }
        if self.stored.waits_for_replay(&routed.message.topic) {
            // Held back so it follows the backlog. Beyond the bound the newest held
            // is let go, as a drop: pages read after it bring it.
            self.stored.tracking().held.insert(id, routed);
            if self.stored.held_count() > self.shared.config.mqtt.max_queue_len {
                if let Some((id, routed)) = self.stored.tracking().held.pop_last() {
                    self.stored_dropped(&routed, id);
                }
            }
            return Live::Done;
        }
        if self.stored.was_seen(id) {
            Live::Done
        } else {
            Live::Deliver(routed)
        }
    }

    /// Enqueues a message; a stored one counts as taken (and a later copy
    /// is skipped) only if it was sent or queued, not dropped. (Only sessions
    /// a plugin replays to keep the ids: no replay, no second copy.)
    pub(super) async fn enqueue_stored(&mut self, routed: Routed, replayed: bool) {
        let Some(id) = routed
            .message
            .headers
            .stored_id
            .filter(|_| self.stored.is_tracked())
        else {
            let _ = self.enqueue(routed, replayed).await;
            return;
        };
        let topic = std::sync::Arc::clone(&routed.message.topic);
        let qos = routed.qos;
        let shared = routed.share.is_some();
        match self.enqueue(routed, replayed).await {
            Ok(()) => {
                self.stored.tracking().seen.insert(id);
            }
            // QoS 0 is at most once (never queued offline): not fetched again.
            Err(DropReason::QueueFull) if qos != hooks_spec::QoS::AtMostOnce => {
                self.stored.dropped(&topic, id, shared)
            }
            Err(_) => {}
        }
    }

    /// A held stored message let go: `message.dropped` (the plugin reads the
    /// store again) and its filters wait for a replay through it.
    fn stored_dropped(&mut self, routed: &Routed, id: i64) {
        self.shared.fire_dropped(
            &routed.message,
            DropReason::QueueFull,
            Some(&self.client.clientid),
        );
        self.stored
            .dropped(&routed.message.topic, id, routed.share.is_some());
    }

    /// Stored messages a plugin replays for one subscription, oldest first.
    pub(super) async fn apply_replay(&mut self, replay: Replay) {
        let Replay {
            filter,
            deliveries,
            complete_through,
        } = replay;
        let Some(sub) = self.subscriptions.get(&filter) else {
            // A page for a subscription that is gone (unsubscribed, or a clean start since).
            return;
        };
        let subscription_id = sub.opts.subscription_id;
        // A shared group's backlog replayed to this member: another member
        // takes what this one leaves unacknowledged, as with live messages.
        let share = sub
            .opts
            .share_group
            .as_deref()
            .map(|g| std::sync::Arc::new((sub.filter.clone(), std::sync::Arc::from(g))));
        let inner = sub.filter.clone();
        // Tracked from the first page on, so its ids count as taken.
        let state = self.stored.tracking().replaying.entry(filter).or_default();
        state.filter = inner;
        state.paging = match complete_through {
            None => true,
            // A page read before the session dropped a later message does not
            // complete the backlog: the plugin sends another one.
            Some(through) => state.dropped_max.is_some_and(|d| d > through),
        };
        if !state.paging {
            state.dropped_max = None;
        }
        let complete = !state.paging;
        for mut routed in deliveries {
            let Some(id) = routed.message.headers.stored_id else {
                continue;
            };
            if !self.stored.was_seen(id) {
                // As a live delivery through this subscription would carry it.
                routed.subscription_ids.extend(subscription_id);
                routed.share.clone_from(&share);
                self.enqueue_stored(routed, true).await;
            }
        }
        if complete {
            self.release_held().await;
        }
        if self.conn.is_none() {
            // A shared group's pages for a member without a connection go to
            // a connected member, as its live messages do (redispatch).
            self.redispatch_shared(false);
        }
    }

    /// The subscription `filter` (as the client sent it) ended: it no longer
    /// holds messages back.
    pub(super) async fn stop_replay(&mut self, filter: &str) {
        let removed = self.stored.0.as_mut().and_then(|t| t.replaying.remove(filter));
        if removed.is_some() {
            self.release_held().await;
        }
    }

    /// Delivers, in id order, held messages no replay waits for any more.
    async fn release_held(&mut self) {
        let Some(tracking) = self.stored.0.as_ref() else {
            return;
        };
        let ready: Vec<i64> = tracking
            .held
            .iter()
            .filter(|(_, r)| !tracking.waits_for_replay(&r.message.topic))
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            // Releasing may drop some (the queue fills): that filter waits again.
            let tracking = self.stored.tracking();
            let waits = tracking
                .held
                .get(&id)
                .is_some_and(|r| tracking.waits_for_replay(&r.message.topic));
            if waits {
                continue;
            }
            let Some(routed) = tracking.held.remove(&id) else {
                continue;
            };
            let still_subscribed = self
                .subscriptions
                .values()
                .any(|s| topic::matches(&s.filter, &routed.message.topic));
            if still_subscribed && !self.stored.was_seen(id) {
                self.enqueue_stored(routed, false).await;
            }
        }
    }

    /// Drains replays that arrived while a hook ran (called right after
    /// session.subscribed, before anything routed later is looked at).
    pub(super) async fn drain_replays(&mut self) {
        while let Some(replay) = self.inbox.try_recv::<Replay>() {
            self.apply_replay(replay).await;
        }
    }
}
