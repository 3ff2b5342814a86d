//! # hooks-spec: the contract between the Postbox broker and its plugins
//!
//! This crate holds no broker internals. It defines:
//!
//! - [`HookPoint`]: the hook points, named as in EMQX (`message.publish`, ...).
//! - [`Chain`]: an ordered list of async callbacks for one hook point, with
//!   EMQX's semantics (priority, registration order, stop, fold, and a filter
//!   per callback: a callback whose [`Filter`] says no is skipped) and failure
//!   isolation (errors, panics and time-outs are counted, logged at most once
//!   a second per chain, and replaced by the callback's failure policy).
//!   In-memory work that never waits can be a [`SyncCallback`]
//!   ([`Chain::register_sync`]): it changes the accumulator in place, so the
//!   chain neither copies the accumulator nor boxes a future for it.
//! - [`Hooks`]: one chain per hook point, each typed with its arguments and
//!   accumulator.
//! - [`Plugin`]: what a plugin implements (load its configuration, start,
//!   reload on SIGHUP, stop); [`BrokerHandle`]: what a plugin can
//!   ask of the broker (deliver into a session, subscribe on a client's behalf,
//!   publish, look up a client); [`BacklogSource`]: what a storage plugin
//!   tells the management API about each client's backlog.
//! - [`AuthMethod`]: an MQTT 5 enhanced authentication method (CONNECT/AUTH
//!   with an Authentication Method) a plugin adds in [`Hooks::auth_methods`];
//!   a connection that names one is authenticated by it instead of
//!   `client.authenticate` ([`auth_method`]); [`scram`] is the server side
//!   of SCRAM-SHA-256/512 for plugins that supply the users' keys.
//! - [`MetricsRegistry`]: where a plugin registers the metrics the broker
//!   serves on `/metrics` ([`metrics`]); hook callbacks are timed by the chain.
//! - The values hooks carry: [`ClientInfo`], [`ConnInfo`], [`SubOpts`],
//!   [`Message`] (with [`Headers`] plugins may set, such as the storage row id).
//!
//! Data flows one way: the broker owns a `Arc<Hooks>`, plugins register
//! callbacks on it at start, and the broker runs the chains at the moments
//! below. A plugin acts back on the broker only through its [`BrokerHandle`].
//!
//! ## Hook points
//!
//! | hook | kind | arguments | accumulator | fires |
//! |---|---|---|---|---|
//! | `client.connect` | fold | [`ConnInfo`] | [`ConnProperties`] | CONNECT decoded, before authentication |
//! | `client.authenticate` | fold | [`AuthArgs`] | [`AuthResult`] | after `client.connect`; `Deny` refuses the connection (CONNACK 0x86; 3.1.1: 0x04). A failing callback denies. `Ignore` at the end applies `mqtt.allow_anonymous` |
//! | `client.connack` | fold | [`ConnackArgs`] | [`ConnProperties`] | just before CONNACK is written (any reason code); user properties and reason string go into an MQTT 5 CONNACK |
//! | `session.restore` | fold | [`SessionArgs`] | [`Restore`] | a connection asked to resume a session (clean start 0, expiry > 0) and none is in memory (a broker restart, or the client moved from another node of a cluster), before the session is attached: a plugin that kept the session returns `Kept`; the broker resumes it (session present 1, `session.resumed`) and subscribes it again to each stored filter, through the ACL (`session.subscribed` with `restored`, no retained messages). `Nothing` (or another user name): a new session. `Unavailable` (the plugin cannot read its store now): the connection is refused with CONNACK 0x88 (3.1.1: 3) |
//! | `session.created` | notification | [`SessionArgs`] | | a new session was created, before CONNACK |
//! | `session.resumed` | notification | [`SessionArgs`] | | a connection attached to an existing session, before CONNACK |
//! | `session.discarded` | notification | [`SessionArgs`] | | a clean start threw an existing session away, before CONNACK |
//! | `session.takeovered` | notification | [`SessionArgs`] | | another connection took this session over; fires on the old connection's side before it is closed |
//! | `client.connected` | notification | [`ClientArgs`] | | after CONNACK (success) was queued to the socket and inflight messages were resent |
//! | `client.check_acl` | fold | [`AclArgs`] | [`AclResult`] | for every PUBLISH topic and SUBSCRIBE filter before it is acted on. A failing callback denies |
//! | `client.subscribe` | fold | [`ClientSubArgs`] | `Vec<TopicFilter>` | after a SUBSCRIBE is decoded and validated, before authorization; removing an entry refuses it (0x80 / 0x87) |
//! | `session.subscribed` | notification | [`SubscribedArgs`] | | after the subscription is in the router and before SUBACK is written; also for subscriptions a plugin makes through [`BrokerHandle::subscribe`] |
//! | `client.unsubscribe` | fold | [`ClientSubArgs`] | `Vec<String>` | after an UNSUBSCRIBE is decoded |
//! | `session.unsubscribed` | notification | [`SubscribedArgs`] | | after the subscription left the router, before UNSUBACK |
//! | `message.publish` | fold | [`PublishArgs`] | [`Message`] | a PUBLISH (or will) was accepted, before routing. `Stop` drops the message; a callback may set headers. The publisher's PUBACK (QoS 1) or PUBREC (QoS 2) is written only after the whole chain finished, so a storage callback holds the acknowledgement until it has stored the message. A callback that marks `headers.not_stored` makes the broker refuse the message: it is not routed, and the publisher gets no success acknowledgement (MQTT 5: reason 0x80; 3.1.1: none, so the client sends it again after reconnecting) |
//! | `message.delivered` | fold | [`DeliveredArgs`] | [`Message`] | just before a PUBLISH is written to a subscriber |
//! | `message.acked` | notification | [`AckedArgs`] | | a subscriber's PUBACK (QoS 1) or PUBCOMP (QoS 2) was received for a delivered message |
//! | `message.dropped` | notification | [`DroppedArgs`] | | a message reached no subscriber, or was not delivered to one (queue full, expired, too large, denied) |
//! | `client.disconnected` | notification | [`DisconnectedArgs`] | | the connection closed (any reason), before the will message is published |
//! | `session.backlog_exceeded` | notification | [`BacklogArgs`] | | run by a storage plugin (backend_pgsql with `backlog_limit`), not the broker: a subscription's stored, unacknowledged messages passed the limit. Once per crossing: it fires again only after the backlog fell back to the limit |
//! | `session.terminated` | notification | [`TerminatedArgs`] | | the session ended: at disconnect for a session with expiry 0 (reason: why the connection closed), at expiry (`expired`), discarded by a clean start (`discarded`, right after `session.discarded`), or taken over by another node of the cluster (`moved`: the session continues there; the callbacks run before that node restores it) |
//! | `node.down` | notification | [`NodeDownArgs`] | | in a cluster, another node was declared down (no heartbeat for `cluster.node_timeout`) or left: this node has forgotten its routes and closed its link, so messages forwarded to it meanwhile were lost with it. Run once per node going down, as this node sees it (each node runs it); off the heartbeat task, so a slow callback does not delay heartbeats |
//!
//! Callbacks in one chain run one after another; the broker awaits the whole
//! chain before it takes the step the hook precedes. Chains with no callbacks
//! cost nothing.

pub mod auth_method;
pub mod chain;
pub mod conf;
pub mod hookpoint;
pub mod hooks;
pub mod metrics;
pub mod plugin;
pub mod scram;
pub mod types;

pub use auth_method::{AuthExchange, AuthMethod, AuthMethods, AuthStep};
pub use chain::{
    BoxFuture, Callback, Chain, FailurePolicy, Filter, Flow, HookError, Registration, SyncCallback,
};
pub use conf::{ConfEntry, ConfError, ConfFile};
pub use hookpoint::{HookKind, HookPoint, UnknownHookPoint};
pub use hooks::*;
pub use metrics::{CallStats, Counter, Gauge, Histogram, MetricsError, MetricsRegistry};
pub use plugin::{
    Backlog, BacklogSource, BrokerHandle, Delivery, HandleError, Plugin, PluginContext, PluginError,
    SubscriptionStore,
};
pub use types::*;
