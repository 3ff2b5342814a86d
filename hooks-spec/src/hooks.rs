//! Every hook point's chain, with its argument and accumulator types.
//!
//! See the crate documentation for when each hook fires.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::chain::{Chain, Flow};
use crate::types::*;
use crate::HookPoint;

/// `client.connack` arguments.
#[derive(Debug, Clone)]
pub struct ConnackArgs {
    /// What the client sent.
    pub conn: ConnInfo,
    /// The CONNACK reason code about to be sent (MQTT 5 numbering; 0 = success).
    pub reason_code: u8,
}

/// `client.connected` arguments.
#[derive(Debug, Clone)]
pub struct ClientArgs {
    /// The connected client.
    pub client: ClientInfo,
    /// What it sent.
    pub conn: ConnInfo,
}

/// `client.disconnected` arguments.
#[derive(Debug, Clone)]
pub struct DisconnectedArgs {
    /// The client.
    pub client: ClientInfo,
    /// Why the connection ended.
    pub reason: DisconnectReason,
    /// What it sent at connect.
    pub conn: ConnInfo,
}

/// `client.authenticate` arguments.
#[derive(Debug, Clone)]
pub struct AuthArgs {
    /// The client (username included).
    pub client: ClientInfo,
    /// Password from CONNECT, if any.
    pub password: Option<Bytes>,
}

/// `client.check_acl` arguments.
#[derive(Debug, Clone)]
pub struct AclArgs {
    /// The client.
    pub client: ClientInfo,
    /// Publish or subscribe.
    pub action: AclAction,
    /// The topic (publish) or filter (subscribe).
    pub topic: String,
}

/// `client.subscribe` / `client.unsubscribe` arguments.
#[derive(Debug, Clone)]
pub struct ClientSubArgs {
    /// The client.
    pub client: ClientInfo,
    /// MQTT 5 user properties of the packet.
    pub user_properties: Vec<(String, String)>,
}

/// `session.created/resumed/discarded/takeovered` arguments.
#[derive(Debug, Clone)]
pub struct SessionArgs {
    /// The owning client.
    pub client: ClientInfo,
    /// The session.
    pub session: SessionInfo,
}

/// `session.terminated` arguments.
#[derive(Debug, Clone)]
pub struct TerminatedArgs {
    /// The owning client.
    pub client: ClientInfo,
    /// Why it ended.
    pub reason: DisconnectReason,
    /// The session as it was.
    pub session: SessionInfo,
}

/// `session.subscribed` / `session.unsubscribed` arguments.
#[derive(Debug, Clone)]
pub struct SubscribedArgs {
    /// The client.
    pub client: ClientInfo,
    /// The filter without any `$share/<group>/` prefix.
    pub filter: String,
    /// The options granted (for unsubscribed: the ones it had).
    pub opts: SubOpts,
    /// The subscription was restored with a session a plugin kept
    /// (`session.restore`), not made by a SUBSCRIBE: it is already stored,
    /// and it gets no retained messages.
    pub restored: bool,
}

/// `message.publish` arguments.
#[derive(Debug, Clone)]
pub struct PublishArgs {
    /// The publishing client; `None` for messages from the broker or a plugin.
    pub client: Option<ClientInfo>,
    /// The message is the client's will: no publisher waits for an
    /// acknowledgement of it.
    pub will: bool,
}

/// `message.delivered` arguments.
#[derive(Debug, Clone)]
pub struct DeliveredArgs {
    /// The receiving client.
    pub client: ClientInfo,
}

/// `message.acked` arguments.
#[derive(Debug, Clone)]
pub struct AckedArgs {
    /// The client that acknowledged.
    pub client: ClientInfo,
    /// The message it acknowledged (headers as they were at delivery).
    pub message: Arc<Message>,
}

/// `message.dropped` arguments.
#[derive(Debug, Clone)]
pub struct DroppedArgs {
    /// The message.
    pub message: Arc<Message>,
    /// This broker's node name.
    pub node: String,
    /// Why.
    pub reason: DropReason,
    /// The client it was for, when it was dropped for one subscriber.
    pub clientid: Option<Arc<str>>,
}

/// `session.backlog_exceeded` arguments: a subscription's stored,
/// unacknowledged messages passed the limit a storage plugin was given.
#[derive(Debug, Clone)]
pub struct BacklogArgs {
    /// The subscriber's client id (it may have no session on this node: an
    /// offline client's backlog is what grows).
    pub clientid: String,
    /// The subscription's filter.
    pub filter: String,
    /// Stored messages it has not acknowledged.
    pub pending: u64,
    /// How long ago the oldest of them arrived.
    pub oldest_age: Duration,
    /// The limit it passed.
    pub limit: u64,
    /// This broker's node name.
    pub node: String,
}

/// `node.down` arguments: another node of the cluster was declared down
/// (its heartbeat stopped for the node timeout, or it left).
#[derive(Debug, Clone)]
pub struct NodeDownArgs {
    /// The name of the node that is down.
    pub node: String,
}

/// All hook chains of a broker. Plugins register on the fields.
pub struct Hooks {
    /// `client.connect`: fold over CONNECT properties, before authentication.
    pub client_connect: Chain<ConnInfo, ConnProperties>,
    /// `client.connack`: fold over CONNACK properties, just before CONNACK is sent.
    pub client_connack: Chain<ConnackArgs, ConnProperties>,
    /// `client.connected`: after CONNACK (success) is sent.
    pub client_connected: Chain<ClientArgs, ()>,
    /// `client.disconnected`: after the connection closed, before the will is handled.
    pub client_disconnected: Chain<DisconnectedArgs, ()>,
    /// `client.authenticate`: fold over the decision; a failing callback denies.
    pub client_authenticate: Chain<AuthArgs, AuthResult>,
    /// `client.check_acl`: fold over the decision; a failing callback denies.
    pub client_check_acl: Chain<AclArgs, AclResult>,
    /// `client.subscribe`: fold over the filters of a SUBSCRIBE, before they are granted.
    pub client_subscribe: Chain<ClientSubArgs, Vec<TopicFilter>>,
    /// `client.unsubscribe`: fold over the filters of an UNSUBSCRIBE.
    pub client_unsubscribe: Chain<ClientSubArgs, Vec<String>>,
    /// `session.restore`: fold over a stored session, for a connection that
    /// asked to resume a session the broker does not have in memory.
    pub session_restore: Chain<SessionArgs, Restore>,
    /// `session.created`.
    pub session_created: Chain<SessionArgs, ()>,
    /// `session.subscribed`: after a subscription is in the router, before SUBACK.
    pub session_subscribed: Chain<SubscribedArgs, ()>,
    /// `session.unsubscribed`: after a subscription left the router.
    pub session_unsubscribed: Chain<SubscribedArgs, ()>,
    /// `session.resumed`: a connection attached to an existing session.
    pub session_resumed: Chain<SessionArgs, ()>,
    /// `session.discarded`: a clean start threw an existing session away.
    pub session_discarded: Chain<SessionArgs, ()>,
    /// `session.takeovered`: another connection took the session.
    pub session_takeovered: Chain<SessionArgs, ()>,
    /// `session.terminated`: the session ended (expiry, clean end, discard).
    pub session_terminated: Chain<TerminatedArgs, ()>,
    /// `message.publish`: fold over the message before routing; Stop with the
    /// message drops it. The publisher's PUBACK/PUBREC waits for the chain.
    pub message_publish: Chain<PublishArgs, Message>,
    /// `message.delivered`: fold over the message just before PUBLISH goes to a subscriber.
    pub message_delivered: Chain<DeliveredArgs, Message>,
    /// `message.acked`: a subscriber completed QoS 1 (PUBACK) or QoS 2 (PUBCOMP).
    pub message_acked: Chain<AckedArgs, ()>,
    /// `message.dropped`: a message was not delivered to a subscriber, or to anyone.
    pub message_dropped: Chain<DroppedArgs, ()>,
    /// `session.backlog_exceeded`: run by a storage plugin, once, when a
    /// subscription's backlog passes its limit.
    pub session_backlog_exceeded: Chain<BacklogArgs, ()>,
    /// `node.down`: another node of the cluster is down (this node forgot
    /// its routes and its link).
    pub node_down: Chain<NodeDownArgs, ()>,
    /// MQTT 5 enhanced authentication methods plugins add (not a chain: one
    /// method answers each exchange; see [`crate::auth_method`]).
    pub auth_methods: crate::AuthMethods,
}

impl Hooks {
    /// Empty chains with a default per-callback time limit.
    pub fn new(default_timeout: Duration) -> Hooks {
        let t = default_timeout;
        Hooks {
            client_connect: Chain::new(HookPoint::ClientConnect, t),
            client_connack: Chain::new(HookPoint::ClientConnack, t),
            client_connected: Chain::new(HookPoint::ClientConnected, t),
            client_disconnected: Chain::new(HookPoint::ClientDisconnected, t),
            client_authenticate: Chain::with_failure_policy(
                HookPoint::ClientAuthenticate,
                t,
                Arc::new(|_| Flow::Stop(AuthResult::Deny)),
            ),
            client_check_acl: Chain::with_failure_policy(
                HookPoint::ClientCheckAcl,
                t,
                Arc::new(|_| Flow::Stop(AclResult::Deny)),
            ),
            client_subscribe: Chain::new(HookPoint::ClientSubscribe, t),
            client_unsubscribe: Chain::new(HookPoint::ClientUnsubscribe, t),
            session_restore: Chain::new(HookPoint::SessionRestore, t),
            session_created: Chain::new(HookPoint::SessionCreated, t),
            session_subscribed: Chain::new(HookPoint::SessionSubscribed, t),
            session_unsubscribed: Chain::new(HookPoint::SessionUnsubscribed, t),
            session_resumed: Chain::new(HookPoint::SessionResumed, t),
            session_discarded: Chain::new(HookPoint::SessionDiscarded, t),
            session_takeovered: Chain::new(HookPoint::SessionTakeovered, t),
            session_terminated: Chain::new(HookPoint::SessionTerminated, t),
            message_publish: Chain::new(HookPoint::MessagePublish, t),
            message_delivered: Chain::new(HookPoint::MessageDelivered, t),
            message_acked: Chain::new(HookPoint::MessageAcked, t),
            message_dropped: Chain::new(HookPoint::MessageDropped, t),
            session_backlog_exceeded: Chain::new(HookPoint::SessionBacklogExceeded, t),
            node_down: Chain::new(HookPoint::NodeDown, t),
            auth_methods: crate::AuthMethods::default(),
        }
    }

    /// Removes every callback `owner` registered on any hook; returns how many.
    pub fn remove_owner(&self, owner: &str) -> usize {
        self.client_connect.remove_owner(owner)
            + self.client_connack.remove_owner(owner)
            + self.client_connected.remove_owner(owner)
            + self.client_disconnected.remove_owner(owner)
            + self.client_authenticate.remove_owner(owner)
            + self.client_check_acl.remove_owner(owner)
            + self.client_subscribe.remove_owner(owner)
            + self.client_unsubscribe.remove_owner(owner)
            + self.session_restore.remove_owner(owner)
            + self.session_created.remove_owner(owner)
            + self.session_subscribed.remove_owner(owner)
            + self.session_unsubscribed.remove_owner(owner)
            + self.session_resumed.remove_owner(owner)
            + self.session_discarded.remove_owner(owner)
            + self.session_takeovered.remove_owner(owner)
            + self.session_terminated.remove_owner(owner)
            + self.message_publish.remove_owner(owner)
            + self.message_delivered.remove_owner(owner)
            + self.message_acked.remove_owner(owner)
            + self.message_dropped.remove_owner(owner)
            + self.session_backlog_exceeded.remove_owner(owner)
            + self.node_down.remove_owner(owner)
            + self.auth_methods.remove_owner(owner)
    }

    /// Each hook point's timing and failures per owner (plugin), for `/metrics`.
    pub fn call_stats(&self) -> Vec<(HookPoint, String, crate::metrics::CallStats)> {
        let mut out = Vec::new();
        let mut add = |point: HookPoint, stats: Vec<(String, crate::metrics::CallStats)>| {
            out.extend(stats.into_iter().map(|(owner, s)| (point, owner, s)));
        };
        add(HookPoint::ClientConnect, self.client_connect.call_stats());
        add(HookPoint::ClientConnack, self.client_connack.call_stats());
        add(HookPoint::ClientConnected, self.client_connected.call_stats());
        add(
            HookPoint::ClientDisconnected,
            self.client_disconnected.call_stats(),
        );
        add(
            HookPoint::ClientAuthenticate,
            self.client_authenticate.call_stats(),
        );
        add(HookPoint::ClientCheckAcl, self.client_check_acl.call_stats());
        add(HookPoint::ClientSubscribe, self.client_subscribe.call_stats());
        add(HookPoint::ClientUnsubscribe, self.client_unsubscribe.call_stats());
        add(HookPoint::SessionRestore, self.session_restore.call_stats());
        add(HookPoint::SessionCreated, self.session_created.call_stats());
        add(HookPoint::SessionSubscribed, self.session_subscribed.call_stats());
        add(
            HookPoint::SessionUnsubscribed,
            self.session_unsubscribed.call_stats(),
        );
        add(HookPoint::SessionResumed, self.session_resumed.call_stats());
        add(HookPoint::SessionDiscarded, self.session_discarded.call_stats());
        add(HookPoint::SessionTakeovered, self.session_takeovered.call_stats());
        add(HookPoint::SessionTerminated, self.session_terminated.call_stats());
        add(HookPoint::MessagePublish, self.message_publish.call_stats());
        add(HookPoint::MessageDelivered, self.message_delivered.call_stats());
        add(HookPoint::MessageAcked, self.message_acked.call_stats());
        add(HookPoint::MessageDropped, self.message_dropped.call_stats());
        add(
            HookPoint::SessionBacklogExceeded,
            self.session_backlog_exceeded.call_stats(),
        );
        add(HookPoint::NodeDown, self.node_down.call_stats());
        out
    }

    /// Failed callback calls across all hooks.
    pub fn failures(&self) -> u64 {
        self.client_connect.failures()
            + self.client_connack.failures()
            + self.client_connected.failures()
            + self.client_disconnected.failures()
            + self.client_authenticate.failures()
            + self.client_check_acl.failures()
            + self.client_subscribe.failures()
            + self.client_unsubscribe.failures()
            + self.session_restore.failures()
            + self.session_created.failures()
            + self.session_subscribed.failures()
            + self.session_unsubscribed.failures()
            + self.session_resumed.failures()
            + self.session_discarded.failures()
            + self.session_takeovered.failures()
            + self.session_terminated.failures()
            + self.message_publish.failures()
            + self.message_delivered.failures()
            + self.message_acked.failures()
            + self.message_dropped.failures()
            + self.session_backlog_exceeded.failures()
            + self.node_down.failures()
    }
}
