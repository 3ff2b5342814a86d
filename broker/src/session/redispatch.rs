//! Shared subscriptions: what a group gave this member and the client has
//! not acknowledged goes to another member when this one cannot take it.
//!
//! MQTT 5 (4.8.2) lets the server send a message to another member of the
//! group as soon as the connection to the chosen one breaks, and says it
//! should when the chosen member's session ends. Here:
//! - a member that loses its connection (its session lives on) hands its
//!   unacknowledged messages of the group to a member that has a
//!   connection; with none connected they wait here for the client;
//! - a member whose session ends hands them to any member left (connected
//!   first);
//! - in a cluster, with no connected member here, another node with members
//!   of the group takes them (it picks one of its members, as for a routed
//!   message);
//! - a member that unsubscribes hands over what it holds of that group (it
//!   would not count for the group any more);
//! - a member that has a connection again, or subscribes while connected,
//!   asks the members without one to hand theirs over (what the group gave
//!   them while every member was offline reaches the next member that
//!   connects).
//!
//! Only messages the group chose this session for (no plain subscription of
//! the session matched them: [`Routed::share`]) move: queued ones, and QoS 1
//! ones sent and not acknowledged. A QoS 2 message once sent stays while the
//! session lives: the client may hold its packet id until PUBREL (MQTT 5
//! 4.3.3) and would take another message sent under that id for a copy of
//! it (when the session ends, it moves unless its PUBREC came). A storage plugin
//! sees the other member acknowledge what moved.

use std::collections::VecDeque;

use super::{AckState, Routed, Session, SessionCmd};
use crate::delivery::ShareKey;

impl Session {
    /// Moves this member's unacknowledged messages of shared groups to other
    /// members: connected ones only unless the session is `ending`.
    pub(super) fn redispatch_shared(&mut self, ending: bool) {
        if !self.subscriptions.values().any(|s| s.opts.share_group.is_some()) {
            return;
        }
        self.move_shared(None, ending, ending);
    }

    /// The client unsubscribed from shared group `key`: what the group gave
    /// it and it has not acknowledged goes to another member (any, connected
    /// first).
    pub(super) fn redispatch_group(&mut self, key: &ShareKey) {
        self.move_shared(Some(key), true, false);
    }

    /// Moves the unacknowledged messages of shared groups (`only` one) to
    /// other members (`any_member`: not only connected ones); QoS 2 ones sent
    /// too when the client's packet ids end (`ids_end`: the session ends).
    fn move_shared(&mut self, only: Option<&ShareKey>, any_member: bool, ids_end: bool) {
        let mine = |r: &Routed| only.is_none_or(|k| r.share.as_deref() == Some(k));
        let mut moved = 0usize;
        let mut kept = VecDeque::with_capacity(self.inflight.len());
        for entry in std::mem::take(&mut self.inflight) {
            // (Once the session ends, the client's packet ids end with it.)
            let movable = entry.state == AckState::PubAck || (ids_end && entry.state == AckState::PubRec);
            if movable && mine(&entry.routed) && self.hand_over(&entry.routed, any_member) {
                self.ids.release_pkid(entry.pkid);
                if entry.unsent {
                    self.unsent -= 1;
                }
                moved += 1;
                continue;
            }
            kept.push_back(entry);
        }
        self.inflight = kept;
        let mut queue = VecDeque::with_capacity(self.queue.len());
        for routed in std::mem::take(&mut self.queue) {
            if mine(&routed) && self.hand_over(&routed, any_member) {
                moved += 1;
            } else {
                queue.push_back(routed);
            }
        }
        self.queue = queue;
        if moved > 0 {
            tracing::debug!(clientid = %self.client.clientid, moved, any_member, "shared subscription messages handed to other members");
        }
    }

    /// This session has a connection (again) or a new shared subscription:
    /// members of its groups without one hand over what they hold.
    pub(super) fn call_offline_members(&self) {
        for sub in self.subscriptions.values() {
            let Some(group) = sub.opts.share_group.as_deref() else {
                continue;
            };
            let key = (sub.filter.clone(), std::sync::Arc::from(group));
            for tx in self.shared.router.offline_members(&key, &self.client.clientid) {
                let _ = tx.send(SessionCmd::HandOverShared);
            }
        }
    }

    /// Sends one message of a shared group to another member; false when it
    /// is not a group's, or no other member can take it.
    fn hand_over(&self, routed: &Routed, any_member: bool) -> bool {
        let Some(key) = &routed.share else {
            return false;
        };
        if routed.qos == hooks_spec::QoS::AtMostOnce {
            return false;
        }
        let router = &self.shared.router;
        let route = match router.other_member(key, &self.client.clientid, true) {
            Some(route) => route,
            None => {
                if self.forward_to_member_node(key, routed) {
                    return true;
                }
                match router.other_member(key, &self.client.clientid, false) {
                    Some(route) if any_member => route,
                    _ => return false,
                }
            }
        };
        let mut copy = routed.clone();
        // As the group would have routed it to that member.
        copy.qos = route.opts.qos.min(routed.message.qos);
        copy.subscription_ids = route.opts.subscription_id.into_iter().collect();
        copy.retain = route.opts.retain_as_published && routed.message.retain;
        route.tx.send(SessionCmd::Deliver(copy)).is_ok()
    }

    /// Forwards one message of group `key` to another node with members of
    /// it; false when there is none (or no cluster) or its link dropped it.
    fn forward_to_member_node(&self, key: &ShareKey, routed: &Routed) -> bool {
        let (Some(forwarder), Some(node)) =
            (self.shared.forwarder.get(), self.shared.router.member_node(key))
        else {
            return false;
        };
        // Not retained again: the other nodes have it as retained already.
        let mut msg = (*routed.message).clone();
        msg.retain = false;
        let forward = crate::router::Forward {
            node,
            plain: false,
            groups: vec![(key.0.clone(), std::sync::Arc::clone(&key.1))],
        };
        forwarder
            .forward(&std::sync::Arc::new(msg), vec![forward])
            .dropped
            == 0
    }
}
