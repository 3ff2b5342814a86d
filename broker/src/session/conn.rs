//! The connection a session has attached: its socket, buffers and codec,
//! and the limits and state that live exactly as long as it does.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hooks_spec::{ClientInfo, ConnInfo};
use tokio::time::Instant;

use super::{aliases, id_hash, reauth};
use crate::codec::{Codec, Will};

/// The attached connection.
pub(super) struct Conn {
    /// Not split in halves: this task alone reads and writes it, one after
    /// the other (halves of a TCP stream would cost an allocation each and
    /// one shared between them).
    pub(super) stream: crate::transport::Stream,
    pub(super) inbuf: BytesMut,
    pub(super) outbuf: BytesMut,
    pub(super) codec: Codec,
    /// What CONNECT said that the session's client information does not
    /// keep; the connection's `ConnInfo` is rebuilt from it when it closes
    /// rather than kept (88 bytes and an allocation per connection).
    pub(super) as_sent: AsSent,
    /// When the last packet arrived. The keep-alive deadline (1.5 times the
    /// keep alive in force after it) moves with every packet, but the check
    /// is asked for again only when one comes (`keepalive.rs`), not on
    /// every packet.
    pub(super) last_seen: Instant,
    /// The second of the keep-alive check asked for last (`keepalive.rs`);
    /// a check naming another is stale.
    pub(super) keepalive_check: u32,
    /// How many QoS>0 messages may be unacknowledged towards the client.
    pub(super) send_window: u16,
    /// Our Receive Maximum when exceeding it disconnects the client (MQTT 5
    /// with `mqtt.receive_maximum_exceeded = disconnect`); `None`: back-pressure.
    pub(super) receive_maximum: Option<u16>,
    /// Publishes in the message.publish chain at which reading stops.
    pub(super) read_limit: u32,
    /// The client's maximum packet size (MQTT 5).
    pub(super) client_max_packet: Option<u32>,
    /// Topic aliases the client set (MQTT 5), made on first use.
    pub(super) aliases: Option<Box<id_hash::IdMap<u16, Arc<str>>>>,
    /// Topic aliases we set towards the client (MQTT 5); `None` when it allows none.
    pub(super) out_aliases: Option<Box<aliases::OutAliases>>,
    /// Boxed: most connections have none, and a will is 192 bytes.
    pub(super) will: Option<Box<Will>>,
    /// `mqtt.publish_limit`, per connection (as EMQX does): a reconnecting
    /// client starts with a full bucket, so it can re-send what was refused.
    pub(super) publish_bucket: Option<Box<crate::rate_limit::TokenBucket>>,
    /// The listener's `rate_limit.conn_bytes_in`, per connection.
    pub(super) bytes_in: Option<Box<crate::rate_limit::ReadThrottle>>,
    /// Packets counted since they were last added to the broker's counters.
    pub(super) traffic: crate::metrics::Traffic,
    /// The writer may keep written bytes in a buffer of its own (TLS,
    /// WebSocket): it is flushed once the output buffer is empty.
    pub(super) flushes: bool,
    /// Bytes were written since the last flush (only when `flushes`).
    pub(super) unflushed: bool,
    /// MQTT 5 enhanced authentication: the method of CONNECT (a
    /// re-authentication must use it) and a re-authentication under way.
    pub(super) auth: Option<Box<reauth::ConnAuth>>,
}

impl Conn {
    /// Gives back buffers left empty (called at the keep-alive check, at
    /// least a keep-alive period apart): a connection that went quiet keeps
    /// none, and a busy one makes them again at its next packet.
    pub(super) fn release_idle_buffers(&mut self) {
        if self.inbuf.is_empty() && self.inbuf.capacity() > 0 {
            self.inbuf = BytesMut::new();
        }
        if self.outbuf.is_empty() && self.outbuf.capacity() > 0 {
            self.outbuf = BytesMut::new();
        }
    }
}

/// The parts of CONNECT the connection's [`ConnInfo`] reports as sent.
#[derive(Debug, Clone, Copy)]
pub(super) struct AsSent {
    /// The client sent an empty client id (the broker assigned one).
    pub(super) empty_clientid: bool,
    pub(super) clean_start: bool,
    pub(super) keepalive: u16,
}

impl AsSent {
    /// The connection's information as CONNECT gave it, for `client`.
    pub(super) fn conn_info(self, client: &ClientInfo) -> ConnInfo {
        ConnInfo {
            clientid: if self.empty_clientid {
                String::new()
            } else {
                client.clientid.to_string()
            },
            username: client.username.clone(),
            peer: client.peer,
            protocol: client.protocol,
            clean_start: self.clean_start,
            keepalive: self.keepalive,
        }
    }
}

/// How long a connection with keep alive `secs` may stay silent: 1.5
/// times it (MQTT 3.1.1 3.1.2.10, MQTT 5 3.1.2.10); `None` for 0 (no limit).
pub(super) fn keepalive_window(secs: u16) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_millis(u64::from(secs) * 1500))
}
