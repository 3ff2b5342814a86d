//! Packets from the client.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hooks_spec::{AclAction, AclArgs, AclResult, Flow, Message, QoS};

use super::{Exit, PublishDone, Session};
use crate::codec::{Ack, DecodeError, Packet, Publish};
use crate::topic;

/// SUBACK/UNSUBACK and DISCONNECT reason codes used here (MQTT 5 numbering;
/// the codec maps them for 3.1.1).
pub(super) mod rc {
    pub const UNSPECIFIED: u8 = 0x80;
    pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    pub const PACKET_ID_NOT_FOUND: u8 = 0x92;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
}

impl Session {
    /// Decodes and handles every whole packet in the input buffer.
    pub(super) async fn process_input(&mut self) -> Option<Exit> {
        loop {
            let decoded = match self.conn.as_mut() {
                Some(c) => c.codec.decode(&mut c.inbuf),
                None => return None,
            };
            match decoded {
                Ok(Some(packet)) => {
                    if let Some(c) = self.conn.as_mut() {
                        c.traffic.packets_in = c.traffic.packets_in.saturating_add(1);
                    }
                    if let Some(exit) = self.handle_packet(packet).await {
                        return Some(exit);
                    }
                    self.conn.as_ref()?;
                }
                Ok(None) => {
                    if let Some(c) = self.conn.as_mut() {
                        c.traffic.flush(&self.shared.metrics);
                    }
                    return None;
                }
                Err(e) => return Box::pin(self.decode_failed(e)).await,
            }
        }
    }

    /// Before a connection is closed because the client connected again
    /// (here or on another node): the acknowledgements it already sent and
    /// the socket holds are taken, so a message it acknowledged just before
    /// is not delivered to it again on the new connection. Other packets of
    /// the replaced connection are not acted on (a PUBLISH it carried was
    /// not acknowledged: the client sends it again).
    pub(super) async fn take_last_acks(&mut self) {
        use tokio::io::AsyncReadExt;
        /// Reads that do not wait, at most (what the socket holds).
        const READS: usize = 16;
        for _ in 0..READS {
            let Some(c) = self.conn.as_mut() else { return };
            c.inbuf.reserve(4096);
            // A zero timeout polls the read once: only what has arrived.
            match tokio::time::timeout(Duration::ZERO, c.stream.read_buf(&mut c.inbuf)).await {
                Ok(Ok(n)) if n > 0 => crate::metrics::Metrics::add(&self.shared.metrics.bytes_received, n),
                _ => break,
            }
        }
        loop {
            let decoded = match self.conn.as_mut() {
                Some(c) => c.codec.decode(&mut c.inbuf),
                None => return,
            };
            if let (Ok(Some(_)), Some(c)) = (&decoded, self.conn.as_mut()) {
                c.traffic.packets_in = c.traffic.packets_in.saturating_add(1);
            }
            match decoded {
                Ok(Some(Packet::PubAck(a))) => self.client_puback(a).await,
                Ok(Some(Packet::PubRec(a))) => self.client_pubrec(a).await,
                Ok(Some(Packet::PubComp(a))) => self.client_pubcomp(a).await,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    }

    async fn decode_failed(&mut self, e: DecodeError) -> Option<Exit> {
        let code = e.reason_code();
        self.protocol_error(&format!("bad packet: {e}"), code).await
    }

    async fn handle_packet(&mut self, packet: Packet) -> Option<Exit> {
        match packet {
            Packet::Publish(p) => return self.client_publish(p).await,
            Packet::PubAck(a) => self.client_puback(a).await,
            Packet::PubRec(a) => self.client_pubrec(a).await,
            Packet::PubRel(a) => self.client_pubrel(a),
            Packet::PubComp(a) => self.client_pubcomp(a).await,
            // The rare packets are boxed: an idle session's task is as large
            // as its largest inline await (see Session::run).
            Packet::Subscribe(s) => {
                // No Local on a shared subscription is a Protocol Error, which
                // closes the connection (MQTT-3.8.3-4); 0x82 is no SUBACK code.
                if s.filters
                    .iter()
                    .any(|f| f.no_local && matches!(topic::parse_shared(&f.filter), Ok(Some(_))))
                {
                    let what = "No Local on a shared subscription";
                    return Box::pin(self.protocol_error(what, 0x82)).await;
                }
                Box::pin(self.client_subscribe(s)).await
            }
            Packet::Unsubscribe(u) => Box::pin(self.client_unsubscribe(u)).await,
            Packet::PingReq => self.send(Packet::PingResp),
            Packet::Disconnect(d) => return Box::pin(self.client_disconnect(d)).await,
            Packet::Connect(_) => return Box::pin(self.protocol_error("second CONNECT", 0x82)).await,
            Packet::Auth(a) => return Box::pin(self.client_auth(a)).await,
            other => {
                let what = format!("unexpected packet from client: {}", packet_name(&other));
                return Box::pin(self.protocol_error(&what, 0x82)).await;
            }
        }
        None
    }

    /// PUBLISH from the client: resolve the topic alias, validate, check the
    /// ACL, run message.publish (the acknowledgement waits for it), route.
    async fn client_publish(&mut self, p: Publish) -> Option<Exit> {
        self.shared.metrics.received(p.qos);
        let v5 = self.client.protocol == hooks_spec::ProtocolVersion::V5;
        if let Some((what, code)) =
            crate::publish::breaks_rules(&p, self.shared.config.mqtt.retain_available, v5)
        {
            return Box::pin(self.protocol_error(what, code)).await;
        }
        let now = std::time::Instant::now();
        if let Some(bucket) = self.conn.as_mut()?.publish_bucket.as_mut() {
            if !bucket.try_take(now) {
                return self.publish_rate_exceeded(&p.topic).await;
            }
        }
        let limits = &self.shared.config.mqtt;
        let max_levels = limits.max_topic_levels;
        let max_alias = limits.max_topic_alias;
        let max_awaiting_rel = limits.max_awaiting_rel;
        let conn = self.conn.as_mut()?;
        let topic: Arc<str> = match p.topic_alias {
            Some(alias) if alias == 0 || alias > max_alias => {
                return self.protocol_error("topic alias out of range", 0x94).await;
            }
            Some(alias) if p.topic.is_empty() => match conn.aliases.as_ref().and_then(|a| a.get(&alias)) {
                Some(t) => Arc::clone(t),
                None => return self.protocol_error("unknown topic alias", 0x82).await,
            },
            Some(alias) => {
                let t: Arc<str> = Arc::from(p.topic.as_str());
                conn.aliases
                    .get_or_insert_with(Box::default)
                    .insert(alias, Arc::clone(&t));
                t
            }
            None => Arc::from(p.topic.as_str()),
        };
        if let Err(e) = topic::validate_topic_name(&topic, max_levels) {
            return self
                .protocol_error(&format!("invalid topic name: {e}"), 0x90)
                .await;
        }
        if p.qos != QoS::AtMostOnce && self.ids.get().is_some_and(|t| t.pending.contains(&p.pkid)) {
            // Re-sent (after a reconnect) while the first copy is still in
            // message.publish, waiting for storage: its PUBACK/PUBREC follows,
            // and the message is not stored twice.
            return None;
        }
        if p.qos == QoS::ExactlyOnce {
            if self.ids.get().is_some_and(|t| t.awaiting_rel.contains(&p.pkid)) {
                // A re-sent QoS 2 PUBLISH we already accepted: acknowledge, do not route again.
                self.send(Packet::PubRec(Ack::new(p.pkid)));
                return None;
            }
            if self.ids.get().map_or(0, |t| t.awaiting_rel.len()) >= max_awaiting_rel {
                return self
                    .protocol_error("too many QoS 2 messages awaiting PUBREL", 0x93)
                    .await;
            }
        }
        // MQTT 5 3.3.4: QoS 1/2 PUBLISH count until PUBACK or PUBCOMP is sent.
        if p.qos != QoS::AtMostOnce
            && self.conn.as_ref()?.receive_maximum.is_some_and(|max| {
                self.ids
                    .get()
                    .map_or(0, |t| t.pending.len() + t.awaiting_rel.len())
                    >= usize::from(max)
            })
        {
            return Box::pin(self.protocol_error("Receive Maximum exceeded", 0x93)).await;
        }

        let pkid = p.pkid;
        let qos = p.qos;
        // Boxed: the ACL's future is large and only sessions with an ACL
        // plugin should pay for it in their task's size (see Session::run).
        let checked = !self.shared.hooks.client_check_acl.is_empty();
        if checked && !Box::pin(crate::publish::allowed(&self.shared, &self.client, &topic)).await {
            let msg = self.message_from(topic, p);
            crate::publish::denied(&self.shared, &self.client, msg, false);
            // 3.1.1 has no refusal: a plain acknowledgement (MQTT-3.3.5-2); MQTT 5 gets 0x87.
            let (code, accepted) = crate::publish::Outcome::Denied.ack();
            self.ack_publish(qos, pkid, code, accepted);
            return None;
        }
        let msg = self.message_from(topic, p);

        let epoch = self.epoch;
        if qos != QoS::AtMostOnce {
            self.ids.get_mut().pending.insert(pkid);
        }
        if self.shared.hooks.message_publish.is_empty() && self.pending.is_empty() {
            self.publish_done(PublishDone {
                epoch,
                pkid,
                qos,
                flow: Flow::Continue(msg),
            })
            .await;
        } else {
            let (shared, args) = (Arc::clone(&self.shared), self.hook_args.publish(&self.client));
            self.pending.push_back(Box::pin(async move {
                let flow = crate::publish::fold(&shared, args, msg).await;
                PublishDone {
                    epoch,
                    pkid,
                    qos,
                    flow,
                }
            }));
        }
        None
    }

    /// Over `mqtt.publish_limit`: this PUBLISH is neither acknowledged nor
    /// routed (a QoS 1/2 client sends it again after reconnecting), and the
    /// client is disconnected: MQTT 5 with DISCONNECT 0x96, 3.1.1 by closing.
    async fn publish_rate_exceeded(&mut self, topic: &str) -> Option<Exit> {
        tracing::info!(clientid = %self.client.clientid, topic, "disconnecting: publish rate over mqtt.publish_limit");
        crate::metrics::Metrics::bump(&self.shared.metrics.publish_rate_limited);
        let reason = hooks_spec::DisconnectReason::ProtocolError("message rate too high".into());
        Box::pin(self.connection_lost(reason, Some(rc::MESSAGE_RATE_TOO_HIGH))).await
    }

    /// Runs `client.check_acl`; true when access is allowed (or nobody checks).
    pub(super) async fn acl_allows(&mut self, action: AclAction, topic: &str) -> bool {
        let hooks = Arc::clone(&self.shared.hooks);
        if hooks.client_check_acl.is_empty() {
            return true;
        }
        let args = Arc::new(AclArgs {
            client: hooks_spec::ClientInfo::clone(&self.client),
            action,
            topic: topic.to_string(),
        });
        // Boxed: only sessions with an ACL plugin pay for it (see Session::run).
        Box::pin(hooks.client_check_acl.run_fold(args, AclResult::Allow))
            .await
            .into_inner()
            == AclResult::Allow
    }

    fn message_from(&self, topic: Arc<str>, p: Publish) -> Message {
        Message {
            id: hooks_spec::new_message_id(),
            topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            publisher: Some(Arc::clone(&self.client.clientid)),
            timestamp: SystemTime::now(),
            expiry_interval: p.message_expiry.map(|s| Duration::from_secs(u64::from(s))),
            properties: p.properties,
            headers: Default::default(),
        }
    }

    /// The message.publish chain finished: route and acknowledge, in arrival order.
    pub(super) async fn publish_done(&mut self, done: PublishDone) {
        let PublishDone {
            epoch,
            pkid,
            qos,
            flow,
        } = done;
        if qos != QoS::AtMostOnce && epoch == self.epoch {
            if let Some(t) = self.ids.existing_mut() {
                t.pending.remove(&pkid);
            }
        }
        let (outcome, backlog) = crate::publish::finish(&self.shared, flow);
        if let Some(backlog) = backlog {
            // A cluster link this went on is backlogged: the publisher waits
            // (its acknowledgement, and reading its next packets) for room.
            backlog.await;
        }
        let (code, stored_ok) = outcome.ack();
        // Acknowledged on whatever connection the session has now: after a
        // reconnect the client still waits for it (same session, same packet id).
        if self.conn.is_some() && epoch == self.epoch {
            self.ack_publish(qos, pkid, code, stored_ok);
        }
    }

    /// PUBACK or PUBREC for a client's publish. A message a storage plugin
    /// could not store is not acknowledged as a success: MQTT 5 gets the error
    /// code, 3.1.1 gets nothing, so the client sends it again.
    fn ack_publish(&mut self, qos: QoS, pkid: u16, code: u8, stored_ok: bool) {
        let v5 = self.client.protocol == hooks_spec::ProtocolVersion::V5;
        if !stored_ok && !v5 {
            return;
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(Packet::PubAck(Ack::with_reason(pkid, code))),
            QoS::ExactlyOnce => {
                if code < 0x80 {
                    self.ids.get_mut().awaiting_rel.insert(pkid);
                }
                self.send(Packet::PubRec(Ack::with_reason(pkid, code)));
            }
        }
    }

    fn client_pubrel(&mut self, a: Ack) {
        let code = if self
            .ids
            .existing_mut()
            .is_some_and(|t| t.awaiting_rel.remove(&a.pkid))
        {
            0
        } else {
            rc::PACKET_ID_NOT_FOUND
        };
        self.send(Packet::PubComp(Ack::with_reason(a.pkid, code)));
    }
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect(_) => "DISCONNECT",
        Packet::Auth(_) => "AUTH",
    }
}
