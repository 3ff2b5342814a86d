//! Attaching connections, takeover, clean start, closing, wills and expiry.

use std::sync::Arc;
use std::time::Duration;

use hooks_spec::{
    ClientArgs, ConnackArgs, DisconnectReason, DisconnectedArgs, Message, ProtocolVersion, SessionArgs,
    SessionInfo, StoredSession, TerminatedArgs,
};
use tokio::time::Instant;

use super::{Attach, Conn, Exit, HookArgs, Replay, Session, SessionCmd};
use crate::codec::{ConnAck, ConnAckProps, Disconnect, Packet, Will};

impl Session {
    pub(super) fn session_info(&self) -> SessionInfo {
        SessionInfo {
            clientid: Arc::clone(&self.client.clientid),
            subscriptions: self.subscriptions.len(),
            inflight: self.inflight.len(),
            queued: self.queue.len(),
            created_at: self.created_at.time(),
        }
    }

    /// What the management API shows of this session.
    pub(super) fn view(&self) -> crate::delivery::SessionView {
        let mut subscriptions: Vec<(String, hooks_spec::SubOpts)> = self
            .subscriptions
            .iter()
            .map(|(f, s)| (f.clone(), s.opts.clone()))
            .collect();
        subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
        crate::delivery::SessionView {
            client: hooks_spec::ClientInfo::clone(&self.client),
            connected: self.conn.is_some(),
            subscriptions,
            inflight: self.inflight.len(),
            queued: self.queue.len(),
            awaiting_rel: self.ids.get().map_or(0, |t| t.awaiting_rel.len()),
            created_at: self.created_at.time(),
        }
    }

    fn session_args(&self) -> Arc<SessionArgs> {
        Arc::new(SessionArgs {
            client: hooks_spec::ClientInfo::clone(&self.client),
            session: self.session_info(),
        })
    }

    /// A connection for this client id arrived: take over any current one,
    /// start clean or resume, send CONNACK, resend inflight messages.
    pub(super) async fn attach(&mut self, attach: Attach) -> Option<Exit> {
        let hooks = Arc::clone(&self.shared.hooks);
        let fresh = self.conn.is_none() && !self.attached_before;
        let mut old_session_ended = false;
        if self.conn.is_some() {
            // With expiry 0 the old session ends with its connection.
            old_session_ended = self.expiry_secs == 0;
            hooks.session_takeovered.run(self.session_args()).await;
            Box::pin(self.take_last_acks()).await;
            if self.client.protocol == ProtocolVersion::V5 {
                self.send(Packet::Disconnect(Disconnect {
                    reason: 0x8E,
                    ..Disconnect::default()
                }));
            }
            // The old connection ends as if it had failed: its will follows the usual rules.
            self.close_connection(DisconnectReason::TakenOver).await;
            if old_session_ended {
                let session = self.session_info();
                let args = TerminatedArgs {
                    client: hooks_spec::ClientInfo::clone(&self.client),
                    reason: DisconnectReason::TakenOver,
                    session,
                };
                hooks.session_terminated.run(Arc::new(args)).await;
                self.discard_state();
            }
        }
        // A reconnect before the will delay passed cancels the will.
        self.delayed_will = None;
        self.expires_at = None;

        let mut session_present = !fresh && !old_session_ended;
        if attach.client.clean_start && !fresh && !old_session_ended {
            hooks.session_discarded.run(self.session_args()).await;
            let session = self.session_info();
            let args = TerminatedArgs {
                client: hooks_spec::ClientInfo::clone(&self.client),
                reason: DisconnectReason::Discarded,
                session,
            };
            hooks.session_terminated.run(Arc::new(args)).await;
            self.discard_state();
            session_present = false;
        }
        // Unchanged client information (the first connection's is what the
        // session was made with, shared with the registry) is not copied
        // again, and the hook arguments built from it stay valid.
        if *self.client != attach.client {
            self.client = Arc::new(attach.client.clone());
            self.hook_args = HookArgs::default();
        }
        self.claim = attach.claim;
        self.expiry_secs = attach.client.session_expiry;
        self.shared.registry.update_client(self.uid, &self.client);
        // Not in memory (the broker restarted): a plugin may have kept it.
        let restored = match attach.restored {
            Some(stored) if fresh => self.stored_session(stored),
            _ => None,
        };
        session_present |= restored.is_some();
        if !session_present {
            self.created_at = super::CreatedAt::now();
            hooks.session_created.run(self.session_args()).await;
        } else {
            hooks.session_resumed.run(self.session_args()).await;
        }

        // Held apart from `self`, which the CONNACK's making changes.
        let shared = Arc::clone(&self.shared);
        let limits = &shared.config.mqtt;
        let connect = &attach.connect;
        let keepalive_secs = self.client.keepalive;
        let send_window = limits
            .max_inflight
            .min(connect.receive_maximum.unwrap_or(u16::MAX));
        let receive_maximum = (self.client.protocol == ProtocolVersion::V5
            && limits.receive_maximum_exceeded == crate::config::ReceiveMaximumExceeded::Disconnect)
            .then_some(limits.max_inflight);
        // With the Receive Maximum enforced, a client over it must still be
        // read to be told (QoS 0 publishes keep it bounded at twice that).
        let read_limit = match receive_maximum {
            Some(max) => u32::from(max) * 2,
            None => u32::from(limits.max_inflight),
        };
        let flushes = attach.stream.buffers_writes();
        self.attached_before = true;
        self.conn = Some(Conn {
            stream: attach.stream,
            inbuf: if attach.inbuf.is_empty() {
                bytes::BytesMut::new()
            } else {
                attach.inbuf
            },
            // Buffers grow with traffic; an idle connection keeps them empty.
            outbuf: bytes::BytesMut::new(),
            codec: crate::codec::Codec {
                protocol: self.client.protocol,
                max_packet_size: limits.max_packet_size,
            },
            as_sent: super::AsSent {
                empty_clientid: attach.conn.clientid.is_empty(),
                clean_start: attach.conn.clean_start,
                keepalive: attach.conn.keepalive,
            },
            last_seen: Instant::now(),
            keepalive_check: 0,
            send_window: send_window.max(1),
            receive_maximum,
            read_limit,
            client_max_packet: connect.max_packet_size,
            aliases: None,
            out_aliases: super::aliases::OutAliases::for_client(connect.topic_alias_max),
            will: connect.will.clone().map(Box::new),
            publish_bucket: limits.publish_limit.map(|rate| {
                Box::new(crate::rate_limit::TokenBucket::new(
                    rate,
                    std::time::Instant::now(),
                ))
            }),
            bytes_in: attach
                .conn_bytes_in
                .map(|rate| Box::new(crate::rate_limit::ReadThrottle::new(rate))),
            traffic: crate::metrics::Traffic::default(),
            flushes,
            unflushed: false,
            auth: connect
                .auth_method
                .clone()
                .map(|method| Box::new(super::reauth::ConnAuth::new(method))),
        });
        // Connected, no timer of its own: the keep-alive check is asked of
        // the broker's one task (an expiry or a delayed will only runs while
        // no connection is attached).
        self.deadline.arm(None);
        self.arm_keepalive(Instant::now());
        self.shared.connected_add(1);
        self.inbox.set_attached(true);

        // CONNACK, with the client.connack fold over its properties.
        let mut props = ConnAckProps::default();
        if self.client.protocol == ProtocolVersion::V5 {
            props.receive_maximum = Some(limits.max_inflight);
            props.max_packet_size = Some(limits.max_packet_size);
            props.topic_alias_max = Some(limits.max_topic_alias);
            props.retain_available = Some(limits.retain_available);
            props.wildcard_available = Some(true);
            props.sub_ids_available = Some(true);
            props.shared_available = Some(true);
            if attach.assigned_id {
                props.assigned_client_id = Some(self.client.clientid.to_string());
            }
            if connect.session_expiry.unwrap_or(0) != self.expiry_secs {
                props.session_expiry = Some(self.expiry_secs);
            }
            if limits.server_keepalive.is_some() {
                props.server_keepalive = Some(keepalive_secs);
            }
            props.auth_method = connect.auth_method.clone();
            props.auth_data = attach.auth_data.clone();
        }
        let mut conn_props = attach.props;
        if !hooks.client_connack.is_empty() {
            let args = Arc::new(ConnackArgs {
                conn: attach.conn.clone(),
                reason_code: 0,
            });
            conn_props = hooks.client_connack.run_fold(args, conn_props).await.into_inner();
        }
        props.user_properties = conn_props.user_properties;
        props.reason_string = conn_props.reason_string;
        self.send(Packet::ConnAck(ConnAck {
            session_present,
            code: 0,
            props,
        }));
        // The one line per connection (refusals are logged where they are made).
        tracing::info!(
            clientid = %self.client.clientid,
            peer = %attach.conn.peer,
            username = self.client.username.as_deref(),
            protocol = %self.client.protocol,
            keepalive = keepalive_secs,
            clean_start = self.client.clean_start,
            session_present,
            "client connected"
        );

        // Redeliver what was inflight, with DUP, in the order it was first sent,
        // as far as the client's (possibly smaller) window allows; then the queue.
        for entry in self.inflight.iter_mut() {
            entry.unsent = true;
        }
        self.unsent = self.inflight.len();
        self.drain_queue().await;
        if let Some(stored) = restored {
            // After CONNACK, as if the client had subscribed again: through the
            // ACL, session.subscribed (a storage plugin replays what the client
            // missed from its stored position), no retained messages.
            for tf in stored.subscriptions {
                Box::pin(self.subscribe_on_behalf(tf.filter, tf.opts, true)).await;
            }
        }

        // What the groups gave members that are offline can come here now.
        self.call_offline_members();
        hooks
            .client_connected
            .run(Arc::new(ClientArgs {
                client: hooks_spec::ClientInfo::clone(&self.client),
                conn: attach.conn,
            }))
            .await;
        // Bytes that arrived right behind CONNECT.
        if self.conn.as_ref().is_some_and(|c| !c.inbuf.is_empty()) {
            return self.process_input().await;
        }
        None
    }

    /// The session a plugin kept for this client (`session.restore`), if it
    /// belongs to the same user name: another user does not inherit it.
    fn stored_session(&self, stored: StoredSession) -> Option<StoredSession> {
        if stored.username != self.client.username {
            tracing::info!(clientid = %self.client.clientid, previous = ?stored.username, username = ?self.client.username,
                "stored session of another user name: starting clean");
            return None;
        }
        tracing::debug!(clientid = %self.client.clientid, subscriptions = stored.subscriptions.len(), "session restored from storage");
        Some(stored)
    }

    /// Drops subscriptions, inflight and queued messages (clean start over an
    /// existing session). No `session.unsubscribed`: the client did not unsubscribe.
    fn discard_state(&mut self) {
        for (_, sub) in self.subscriptions.drain() {
            self.shared.router.unsubscribe(
                &self.client.clientid,
                &sub.filter,
                sub.opts.share_group.as_deref(),
            );
        }
        self.inflight.clear();
        self.unsent = 0;
        self.queue.clear();
        if let Some(t) = self.ids.existing_mut() {
            t.in_use.clear();
            t.awaiting_rel.clear();
            t.pending.clear();
        }
        self.epoch = self.epoch.wrapping_add(1);
        self.stored.clear();
        // Pages a plugin replayed for the old subscriptions and not yet taken:
        // a new subscription to the same filter gets its own from its position.
        while self.inbox.try_recv::<Replay>().is_some() {}
    }

    /// Closes the attached connection after a failure (no DISCONNECT from
    /// the client): sends `reason_code` in an MQTT 5 DISCONNECT when given,
    /// publishes or schedules the will, and ends the session if its expiry is 0.
    pub(super) async fn connection_lost(
        &mut self,
        reason: DisconnectReason,
        reason_code: Option<u8>,
    ) -> Option<Exit> {
        if let Some(code) = reason_code {
            if self.client.protocol == ProtocolVersion::V5 {
                self.send(Packet::Disconnect(Disconnect {
                    reason: code,
                    ..Disconnect::default()
                }));
            }
        }
        self.close_connection(reason.clone()).await;
        self.after_close(reason)
    }

    /// The node drains: an MQTT 5 client is told to use another server
    /// (DISCONNECT 0x9D with `mqtt.server_reference`), a 3.1.x one is just
    /// closed. The will is not published (the client did not fail, as at
    /// shutdown); the session stays for its expiry.
    pub(super) async fn server_moved(&mut self) -> Option<Exit> {
        tracing::info!(clientid = %self.client.clientid, "sent to another server: the node drains");
        if self.client.protocol == ProtocolVersion::V5 {
            self.send(Packet::Disconnect(self.moved_disconnect()));
        }
        if let Some(c) = self.conn.as_mut() {
            c.will = None;
        }
        self.close_connection(DisconnectReason::Kicked).await;
        self.after_close(DisconnectReason::Kicked)
    }

    /// DISCONNECT 0x9D (Server moved) with `mqtt.server_reference`, if set.
    fn moved_disconnect(&self) -> Disconnect {
        Disconnect {
            reason: 0x9D,
            server_reference: self.shared.config.mqtt.server_reference.clone(),
            ..Disconnect::default()
        }
    }

    /// The client sent DISCONNECT.
    pub(super) async fn client_disconnect(&mut self, d: Disconnect) -> Option<Exit> {
        if let Some(expiry) = d.session_expiry {
            if self.expiry_secs == 0 && expiry != 0 {
                // MQTT 5 3.14.2.2.2: not allowed once 0 was set at CONNECT.
                return self
                    .protocol_error("session expiry set at DISCONNECT after 0 at CONNECT", 0x82)
                    .await;
            }
            self.expiry_secs = self.shared.cap_expiry(expiry);
            Arc::make_mut(&mut self.client).session_expiry = self.expiry_secs;
            self.hook_args = HookArgs::default();
        }
        if d.reason != 0x04 {
            // Normal disconnect: the will is discarded.
            if let Some(c) = self.conn.as_mut() {
                c.will = None;
            }
        }
        self.close_connection(DisconnectReason::Normal).await;
        self.after_close(DisconnectReason::Normal)
    }

    /// Closes on a protocol violation with an MQTT 5 reason code.
    pub(super) async fn protocol_error(&mut self, what: &str, code: u8) -> Option<Exit> {
        // The disconnect line (info) says what; this adds the code.
        tracing::debug!(clientid = %self.client.clientid, reason_code = code, "closing connection: {what}");
        // Boxed: callers are on hot paths, and closing is rare (see Session::run).
        Box::pin(self.connection_lost(DisconnectReason::ProtocolError(what.to_string()), Some(code))).await
    }

    fn after_close(&mut self, reason: DisconnectReason) -> Option<Exit> {
        if self.expiry_secs == 0 {
            return Some(Exit::Terminated(reason));
        }
        // The session lives on; what shared groups gave it goes to a member
        // that is connected, if there is one.
        self.redispatch_shared(false);
        if self.expiry_secs != u32::MAX {
            self.expires_at = Some(Instant::now() + Duration::from_secs(u64::from(self.expiry_secs)));
        }
        None
    }

    /// Flushes and drops the connection, fires client.disconnected, handles the will.
    pub(super) async fn close_connection(&mut self, reason: DisconnectReason) {
        if self.conn.is_none() {
            return;
        }
        self.flush().await;
        let Some(mut conn) = self.conn.take() else { return };
        conn.traffic.flush(&self.shared.metrics);
        let info = conn.as_sent.conn_info(&self.client);
        log_disconnected(&self.client.clientid, &info, &reason);
        self.shared.connected_add(-1);
        self.inbox.set_attached(false);
        let hooks = Arc::clone(&self.shared.hooks);
        hooks
            .client_disconnected
            .run(Arc::new(DisconnectedArgs {
                client: hooks_spec::ClientInfo::clone(&self.client),
                reason: reason.clone(),
                conn: info,
            }))
            .await;
        if let Some(will) = conn.will {
            if reason == DisconnectReason::Normal {
                // DISCONNECT 0x04: publish now, no delay (MQTT 5 3.14.2.1).
                self.publish_will(*will);
                return;
            }
            let delay = will.delay_interval.unwrap_or(0).min(self.expiry_secs);
            if delay == 0 || reason == DisconnectReason::ServerShutdown {
                self.publish_will(*will);
            } else {
                let at = Instant::now() + Duration::from_secs(u64::from(delay));
                self.delayed_will = Some(Box::new((*will, at)));
            }
        }
    }

    pub(super) fn publish_delayed_will(&mut self) {
        if let Some(delayed) = self.delayed_will.take() {
            self.publish_will(delayed.0);
        }
    }

    /// Publishes a will through the message.publish chain and the router, in
    /// its own task so a session that is ending does not wait for it.
    fn publish_will(&self, will: Will) {
        let mut msg = Message::new(will.topic.as_str(), will.payload.clone(), will.qos, will.retain);
        msg.publisher = Some(Arc::clone(&self.client.clientid));
        msg.properties = will.properties.clone();
        msg.expiry_interval = will.message_expiry.map(|s| Duration::from_secs(u64::from(s)));
        let shared = Arc::clone(&self.shared);
        let client = hooks_spec::ClientInfo::clone(&self.client);
        tracing::debug!(clientid = %client.clientid, topic = %will.topic, "publishing will");
        tokio::spawn(async move {
            crate::publish::will(&shared, client, msg).await;
        });
    }

    /// The client connected to another node, which takes the session over:
    /// the connection closes as on a takeover (MQTT 5: DISCONNECT 0x8E; its
    /// will follows the usual rules), and the session ends here without
    /// ending in storage (`moved`): the other node restores it, once `done`
    /// says the storage plugin has recorded what it must.
    pub(super) async fn moved(mut self, done: tokio::sync::oneshot::Sender<()>) {
        Box::pin(self.take_last_acks()).await;
        if self.client.protocol == ProtocolVersion::V5 && self.conn.is_some() {
            self.send(Packet::Disconnect(Disconnect {
                reason: 0x8E,
                ..Disconnect::default()
            }));
        }
        self.close_connection(DisconnectReason::TakenOver).await;
        // A will waiting for its delay belongs to the session, which lives on elsewhere.
        self.delayed_will = None;
        self.end(DisconnectReason::Moved).await;
        let _ = done.send(());
    }

    /// Ends the session: leaves the router and the registry, fires
    /// session.terminated, publishes a will still waiting for its delay.
    pub(super) async fn terminate(mut self, reason: DisconnectReason) {
        self.close_connection(DisconnectReason::SocketClosed).await;
        self.publish_delayed_will();
        self.end(reason).await;
    }

    /// The end of a session here: pending publishes, registry, router,
    /// session.terminated, and a connection handed over meanwhile.
    async fn end(&mut self, reason: DisconnectReason) {
        self.finish_pending_publishes().await;
        self.shared.registry.remove(&self.client.clientid, self.uid);
        if reason != DisconnectReason::Moved {
            // Pages handed to this session and not yet applied belong to
            // shared groups as much as its queue does: taken, then moved
            // (out of the registry first: later pages go to another member).
            if self.subscriptions.values().any(|s| s.opts.share_group.is_some()) {
                // Closed: a page sent from now on is refused, not lost.
                for replay in self.inbox.close::<Replay>() {
                    self.apply_replay(replay).await;
                }
            }
            // MQTT 5 4.8.2: a shared group's messages outlive the member's session.
            self.redispatch_shared(true);
        }
        for (_, sub) in self.subscriptions.drain() {
            self.shared.router.unsubscribe(
                &self.client.clientid,
                &sub.filter,
                sub.opts.share_group.as_deref(),
            );
        }
        let session = self.session_info();
        self.shared
            .hooks
            .session_terminated
            .run(Arc::new(TerminatedArgs {
                client: hooks_spec::ClientInfo::clone(&self.client),
                reason,
                session,
            }))
            .await;
        if let (Some(own), Some(gen)) = (self.shared.ownership.get(), self.claim) {
            own.release(&self.client.clientid, gen).await;
        }
        // A connection may have been handed to us after we left the registry: give it a new session.
        for cmd in self.inbox.close::<SessionCmd>() {
            if let super::SessionCmd::Attach(attach) = cmd {
                super::start(&self.shared, *attach);
            }
        }
    }

    /// Finishes publishes whose hooks are still running (they were accepted;
    /// a QoS 0 message sent just before DISCONNECT must still go out), for at
    /// most `hooks.timeout`: a message waiting for storage during a database
    /// outage must not keep an ending session, and a client reconnecting with
    /// its id, waiting. What is left is dropped unacknowledged, so a QoS 1/2
    /// publisher that keeps its messages sends them again.
    async fn finish_pending_publishes(&mut self) {
        let deadline = tokio::time::Instant::now() + self.shared.config.hooks_timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.pending.next()).await {
                Ok(Some(done)) => self.publish_done(done).await,
                Ok(None) => return,
                Err(_) => {
                    let left = self.pending.len();
                    tracing::warn!(
                        clientid = %self.client.clientid,
                        "session ended with {left} publishes still waiting for their hooks (storage): dropped unacknowledged"
                    );
                    self.pending = super::PendingPublishes::default();
                    return;
                }
            }
        }
    }

    /// Broker shutdown: finish pending publishes, tell an MQTT 5 client why
    /// (0x8B Server shutting down; 0x9D Server moved with the reference
    /// when `mqtt.server_reference` is set), flush and close.
    pub(super) async fn shutdown(mut self) {
        self.finish_pending_publishes().await;
        if self.conn.is_some() {
            if self.client.protocol == ProtocolVersion::V5 {
                let d = if self.shared.config.mqtt.server_reference.is_some() {
                    self.moved_disconnect()
                } else {
                    Disconnect {
                        reason: 0x8B,
                        ..Disconnect::default()
                    }
                };
                self.send(Packet::Disconnect(d));
            }
            if let Some(c) = self.conn.as_mut() {
                // The server is going away; this is not the client's failure.
                c.will = None;
            }
            self.close_connection(DisconnectReason::ServerShutdown).await;
        }
        self.shared.registry.remove(&self.client.clientid, self.uid);
    }
}

/// The one line per closed connection: who, from where, and why
/// (`reason`: EMQX's names, see [`DisconnectReason`]'s `Display`; a protocol
/// error's text goes to `detail`).
fn log_disconnected(clientid: &str, conn: &hooks_spec::ConnInfo, reason: &DisconnectReason) {
    let (reason, detail) = match reason {
        DisconnectReason::ProtocolError(what) => ("protocol_error".to_string(), Some(what.as_str())),
        other => (other.to_string(), None),
    };
    tracing::info!(clientid = %clientid, peer = %conn.peer, reason = %reason, detail, "client disconnected");
}
