//! The publish pipeline: the one path every message takes into the broker,
//! whoever publishes it, with the policy in one place.
//!
//! | step | client PUBLISH | will | plugin (`BrokerHandle::publish`) | `$SYS` |
//! |---|---|---|---|---|
//! | ACL ([`allowed`], [`denied`]) | yes | yes | no | no |
//! | `message.publish` ([`fold`]) | yes | yes (`will`) | no | no |
//! | outcome ([`finish`]): route, or drop as denied / not stored | yes | yes | route | route, not counted |
//! | acknowledgement ([`Outcome::ack`]) | yes | - | - | - |
//!
//! A client's PUBLISH runs the steps at different moments of its session's
//! loop (the ACL at once, the chain in the session's ordered queue of
//! pending publishes, the outcome and the acknowledgement when it finishes,
//! in arrival order), so the steps are functions rather than one call.
//! [`route`] is where a message meets the router: retained store, fan-out,
//! `message.dropped` (no_subscribers) when nobody gets it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hooks_spec::{
    AclAction, AclArgs, AclResult, ClientInfo, DropReason, Flow, HandleError, Message, PublishArgs,
};

use crate::codec::Publish;
use crate::metrics::Metrics;
use crate::shared::{Backlog, Shared};

/// The MQTT 5 rule a client's PUBLISH breaks, as the reason for closing
/// and its DISCONNECT code; `None` when it breaks none of these.
///
/// - A Subscription Identifier: only the server puts them in a PUBLISH
///   (MQTT-3.3.4-6), 0x82.
/// - A Response Topic that is no valid topic name, such as one with a
///   wildcard (MQTT-3.3.2-14), 0x82.
/// - RETAIN 1 after CONNACK said Retain Available 0 (MQTT-3.2.2-14), 0x9A.
///   3.1.1 has no such flag: its retained messages are routed, not stored.
pub(crate) fn breaks_rules(p: &Publish, retain_available: bool, v5: bool) -> Option<(&'static str, u8)> {
    if !p.subscription_ids.is_empty() {
        return Some(("PUBLISH from a client with a Subscription Identifier", 0x82));
    }
    if let Some(rt) = &p.properties.response_topic {
        if crate::topic::validate_topic_name(rt, 0).is_err() {
            return Some(("Response Topic is not a valid topic name", 0x82));
        }
    }
    if p.retain && !retain_available && v5 {
        return Some(("retained PUBLISH, retain not available", 0x9A));
    }
    None
}

/// PUBACK/PUBREC reason codes of an outcome (MQTT 5 numbering; the codec
/// maps them for 3.1.1).
mod rc {
    pub const SUCCESS: u8 = 0x00;
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    pub const UNSPECIFIED: u8 = 0x80;
    pub const NOT_AUTHORIZED: u8 = 0x87;
}

/// What became of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Routed; to this many sessions.
    Routed(usize),
    /// Refused on purpose (ACL, a `message.publish` callback that stopped it).
    Denied,
    /// A storage callback had to store it and could not: not routed.
    NotStored,
}

impl Outcome {
    /// The acknowledgement of a client's QoS 1/2 PUBLISH: the reason code,
    /// and whether it tells the publisher the message was accepted. A denial
    /// is acknowledged (3.1.1 has no refusal; MQTT 5 gets 0x87); a message not
    /// stored is not: MQTT 5 gets 0x80, 3.1.1 nothing, so it sends it again.
    pub fn ack(self) -> (u8, bool) {
        match self {
            Outcome::Routed(0) => (rc::NO_MATCHING_SUBSCRIBERS, true),
            Outcome::Routed(_) => (rc::SUCCESS, true),
            Outcome::Denied => (rc::NOT_AUTHORIZED, true),
            Outcome::NotStored => (rc::UNSPECIFIED, false),
        }
    }
}

/// The ACL check of a client's PUBLISH (or will) on `topic`: false when
/// denied (then [`denied`] says so).
pub async fn allowed(shared: &Shared, client: &ClientInfo, topic: &str) -> bool {
    if shared.hooks.client_check_acl.is_empty() {
        return true;
    }
    let args = Arc::new(AclArgs {
        client: client.clone(),
        action: AclAction::Publish,
        topic: topic.to_string(),
    });
    shared
        .hooks
        .client_check_acl
        .run_fold(args, AclResult::Allow)
        .await
        .into_inner()
        == AclResult::Allow
}

/// A publish (or will, `will`) the ACL denied: logged, counted, and fired
/// as `message.dropped` (denied).
pub fn denied(shared: &Shared, client: &ClientInfo, msg: Message, will: bool) {
    let what = if will { "will" } else { "publish" };
    tracing::info!(clientid = %client.clientid, topic = %msg.topic, "{what} denied by ACL");
    Metrics::bump(&shared.metrics.acl_denied_publish);
    shared.fire_dropped(&Arc::new(msg), DropReason::Denied, None);
}

/// The `message.publish` fold (skipped when no callback is registered).
pub async fn fold(shared: &Shared, args: Arc<PublishArgs>, msg: Message) -> Flow<Message> {
    if shared.hooks.message_publish.is_empty() {
        Flow::Continue(msg)
    } else {
        shared.hooks.message_publish.run_fold(args, msg).await
    }
}

/// After `message.publish`: routes the message, or drops it (a callback
/// stopped it: denied; a storage callback could not store it: refused, not
/// routed, so a publisher that sends it again does not deliver it twice).
///
/// With the outcome comes the [`Backlog`] of the cluster links the message
/// went on, if they are backlogged: a client's session waits on it before
/// acknowledging and reading more.
pub fn finish(shared: &Shared, flow: Flow<Message>) -> (Outcome, Option<Backlog>) {
    match flow {
        Flow::Stop(msg) => {
            shared.fire_dropped(&Arc::new(msg), DropReason::Denied, None);
            (Outcome::Denied, None)
        }
        Flow::Continue(msg) if msg.headers.not_stored => {
            shared.fire_dropped(&Arc::new(msg), DropReason::StoreFailed, None);
            (Outcome::NotStored, None)
        }
        Flow::Continue(msg) => {
            let (receivers, backlog) = route_backlogged(shared, Arc::new(msg));
            (Outcome::Routed(receivers), backlog)
        }
    }
}

/// Applies retain and routes a message that passed the pipeline: to the
/// sessions here, and through the cluster's [`Forwarder`] to the other nodes
/// with subscribers. Returns how many sessions and nodes got it
/// (`message.dropped` no_subscribers for none).
///
/// [`Forwarder`]: crate::shared::Forwarder
pub fn route(shared: &Shared, msg: Arc<Message>) -> usize {
    route_backlogged(shared, msg).0
}

/// [`route`], with the [`Backlog`] of the links the message went on.
fn route_backlogged(shared: &Shared, msg: Arc<Message>) -> (usize, Option<Backlog>) {
    if msg.retain && shared.config.mqtt.retain_available {
        shared.retain.apply(&msg);
    }
    shared.metrics.messages_routed.fetch_add(1, Ordering::Relaxed);
    let routing = shared.router.route(&msg);
    let receivers = routing.receivers();
    if receivers == 0 {
        shared.fire_dropped(&msg, DropReason::NoSubscribers, None);
    }
    // A retained message goes to every node (for their subscribers of later).
    let mut backlog = None;
    if !routing.forwards.is_empty() || msg.retain {
        if let Some(f) = shared.forwarder.get() {
            let (n, m) = (routing.forwards.len() as u64, &shared.metrics);
            let forwarded = f.forward(&msg, routing.forwards);
            let dropped = forwarded.dropped as u64;
            m.cluster_forwarded
                .fetch_add(n.saturating_sub(dropped), Ordering::Relaxed);
            m.cluster_dropped.fetch_add(dropped, Ordering::Relaxed);
            backlog = forwarded.backlog;
        }
    }
    (receivers, backlog)
}

/// A client's will: the ACL, `message.publish` (as a will: no publisher
/// waits, so a storage callback waits for the database), then the outcome.
pub async fn will(shared: &Shared, client: ClientInfo, msg: Message) -> Outcome {
    if !allowed(shared, &client, &msg.topic).await {
        denied(shared, &client, msg, true);
        return Outcome::Denied;
    }
    let args = Arc::new(PublishArgs {
        client: Some(client),
        will: true,
    });
    let (outcome, _) = finish(shared, fold(shared, args, msg).await);
    if outcome == Outcome::NotStored {
        tracing::warn!("will not published: it could not be stored");
    }
    outcome
}

/// A plugin's publish (`BrokerHandle::publish`): the topic is checked, then
/// the message is routed as it is (a plugin's own message does not go
/// through `message.publish` again, nor the ACL).
pub fn from_plugin(shared: &Shared, msg: Message) -> Result<usize, HandleError> {
    crate::topic::validate_topic_name(&msg.topic, shared.config.mqtt.max_topic_levels)
        .map_err(|_| HandleError::InvalidTopic(msg.topic.to_string()))?;
    Ok(route(shared, Arc::new(msg)))
}

/// The broker's own message (`$SYS`): retained and routed straight, not
/// counted as a routed message and not seen by `message.publish`.
pub fn system(shared: &Shared, msg: Message) {
    let msg = Arc::new(msg);
    if shared.config.mqtt.retain_available {
        shared.retain.apply(&msg);
    }
    // This node's own counters: for its own subscribers only.
    shared.router.route(&msg);
}
