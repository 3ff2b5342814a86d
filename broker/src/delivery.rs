//! What travels to a session task: the commands other tasks send it, the
//! messages routed to it, stored messages a plugin replays into it, and a
//! connection handed over to it.
//!
//! A leaf module (it knows the codec and the transport, nothing of the
//! broker's shared state): the router, the registry and the handle send
//! these without depending on the session module, and the session module
//! depends on the shared state without a cycle back.

use std::sync::Arc;

use bytes::BytesMut;
use hooks_spec::{ClientInfo, ConnInfo, ConnProperties, Message, QoS, SubOpts};

use crate::codec::Connect;

/// A session task's command channel.
pub type SessionTx = crate::mailbox::Sender<SessionCmd>;

/// A session task's replay channel: polled before [`SessionTx`], so stored
/// messages a plugin replays from `session.subscribed` go out before anything
/// routed after the subscription.
pub type ReplayTx = crate::mailbox::Sender<Replay>;

/// Stored messages replayed for one subscription (see `BrokerHandle::replay`).
pub struct Replay {
    /// The subscription as the client made it: the filter, or
    /// `$share/<group>/<filter>` for a shared subscription.
    pub filter: String,
    /// Oldest first; each has `headers.stored_id`.
    pub deliveries: Vec<Routed>,
    /// `None` while the backlog has more pages; then the id through which
    /// it is complete (see `BrokerHandle::replay`).
    pub complete_through: Option<i64>,
}

/// What other tasks ask of a session.
pub enum SessionCmd {
    /// A new connection for this client id (first connect, reconnect or takeover).
    Attach(Box<Attach>),
    /// A message to deliver.
    Deliver(Routed),
    /// Subscribe on the client's behalf (plugin handle): the filter (possibly
    /// with a `$share/<group>/` prefix) and the requested options. Boxed to keep
    /// every command, and so every channel block, small.
    Subscribe(Box<(String, SubOpts)>),
    /// The client connected to another node of the cluster, which takes the
    /// session over: close the connection (MQTT 5: DISCONNECT 0x8E), end the
    /// session here (`session.terminated`, `moved`), then say so on the sender.
    Moved(tokio::sync::oneshot::Sender<()>),
    /// The management API asks what the session holds.
    Inspect(tokio::sync::oneshot::Sender<SessionView>),
    /// The management API closes the client's connection (MQTT 5: DISCONNECT
    /// 0x98 "Administrative action"); the session stays for its expiry, as
    /// after any lost connection. The sender hears whether a connection was
    /// attached.
    Kick(tokio::sync::oneshot::Sender<bool>),
    /// The node drains: close the client's connection with MQTT 5
    /// DISCONNECT 0x9D (Server moved) and `mqtt.server_reference`, keeping
    /// the session, as [`SessionCmd::Kick`] does. The sender hears whether
    /// a connection was attached.
    Drain(tokio::sync::oneshot::Sender<bool>),
    /// A member of one of this session's shared groups has a connection
    /// now: a session without one hands what its groups gave it, and the
    /// client has not acknowledged, to connected members.
    HandOverShared,
    /// The keep-alive check asked for at this second (`keepalive.rs`):
    /// the connection is closed if it has been silent too long.
    KeepaliveCheck(u32),
    /// The broker is shutting down (sent to every registered session; a
    /// session also checks `Shared::is_shutting_down` on every turn, so one
    /// that registers after the message went out stops too).
    Shutdown,
}

/// What a session holds, for the management API.
#[derive(Debug, Clone)]
pub struct SessionView {
    /// The client as of its latest connection.
    pub client: ClientInfo,
    /// A connection is attached.
    pub connected: bool,
    /// Its subscriptions: the filter as the client sent it, and the options.
    pub subscriptions: Vec<(String, SubOpts)>,
    /// Deliveries sent and not yet acknowledged.
    pub inflight: usize,
    /// Messages queued beyond the inflight window.
    pub queued: usize,
    /// QoS 2 messages from the client waiting for PUBREL.
    pub awaiting_rel: usize,
    /// When the session was created.
    pub created_at: std::time::SystemTime,
}

/// A message routed to one session.
#[derive(Clone, Debug)]
pub struct Routed {
    /// The message, shared by every receiver.
    pub message: Arc<Message>,
    /// QoS to deliver at (already capped by the subscription).
    pub qos: QoS,
    /// Retain flag to deliver with.
    pub retain: bool,
    /// MQTT 5 subscription identifiers of the matching subscriptions.
    pub subscription_ids: Vec<u32>,
    /// The subscription filter this delivery is for, when a plugin said so.
    pub filter: Option<Arc<str>>,
    /// The shared subscription this delivery is for, when only a shared
    /// group chose this session for it (no plain subscription of the session
    /// matched): a member that loses its connection hands such messages,
    /// unacknowledged, to another member of the group.
    pub share: Option<Arc<ShareKey>>,
}

/// A shared subscription: its filter (without `$share/<group>/`) and group.
pub type ShareKey = (String, Arc<str>);

/// A connection that finished its handshake and is handed to a session.
pub struct Attach {
    /// The socket.
    pub stream: crate::transport::Stream,
    /// Bytes read after the CONNECT packet.
    pub inbuf: BytesMut,
    /// The decoded CONNECT.
    pub connect: Connect,
    /// The client as it will be known.
    pub client: ClientInfo,
    /// What it sent.
    pub conn: ConnInfo,
    /// The client id was assigned by the broker.
    pub assigned_id: bool,
    /// CONNACK properties from the `client.connect` fold.
    pub props: ConnProperties,
    /// In a cluster: the generation of the claim this connection was
    /// attached under (released when the session ends here).
    pub claim: Option<i64>,
    /// The session a plugin kept, read before the connection was handed
    /// over (used when the session is new here).
    pub restored: Option<hooks_spec::StoredSession>,
    /// The listener's `rate_limit.conn_bytes_in`, if any.
    pub conn_bytes_in: Option<crate::rate_limit::Rate>,
    /// MQTT 5 enhanced authentication (CONNECT named a method and it
    /// succeeded): the method's last Authentication Data, for CONNACK.
    pub auth_data: Option<bytes::Bytes>,
}
