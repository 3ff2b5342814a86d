//! Messages to the client: packet ids, the inflight window, the queue,
//! acknowledgements from the client and redelivery.

use std::sync::Arc;
use std::time::SystemTime;

use hooks_spec::{AckedArgs, DropReason, ProtocolVersion, QoS};

use super::aliases::Alias;
use super::{AckState, Inflight, Routed, Session, SessionTx, OUTBUF_HIGH_WATER};
use crate::codec::{Ack, EncodeError, Packet, Publish, PublishRef};

impl Session {
    /// This session's own command channel (what the router holds).
    pub(super) fn self_tx(&self) -> SessionTx {
        self.inbox.sender()
    }

    /// Encodes a packet into the output buffer; the loop flushes it.
    ///
    /// Within the client's maximum packet size (MQTT 5 3.1.2-24: the server
    /// must not send more): the codec drops the reason string and user
    /// properties to fit, and a packet that still does not fit (a SUBACK for
    /// hundreds of filters to a client that accepts 512 bytes) is not sent.
    pub(super) fn send(&mut self, packet: Packet) {
        if let Some(c) = self.conn.as_mut() {
            match c
                .codec
                .encode(&packet, &mut c.outbuf, c.client_max_packet.map(|m| m as usize))
            {
                Ok(()) => c.traffic.packets_out = c.traffic.packets_out.saturating_add(1),
                Err(e) => tracing::warn!(clientid = %self.client.clientid, "cannot encode packet: {e}"),
            }
        }
    }

    /// A routed (live) message for this client. A message a storage plugin
    /// stored is skipped when a subscription it matches is replaying its
    /// backlog (the replay brings it in order) or already delivered it.
    pub(super) async fn deliver(&mut self, routed: Routed) {
        if routed.retain && !self.first_retained_delivery(routed.message.id) {
            return;
        }
        match self.live_stored(routed) {
            super::replay::Live::Deliver(routed) => self.enqueue_stored(routed, false).await,
            super::replay::Live::Done => {}
        }
    }

    /// A retained message from the broker's own store on subscribe: always
    /// delivered (one copy per matching filter of a SUBSCRIBE, as separate
    /// subscribes would get), and remembered so a plugin's copy is skipped.
    pub(super) async fn deliver_own_retained(&mut self, routed: Routed) {
        self.ids
            .get_mut()
            .retained_sent
            .insert(routed.message.id, tokio::time::Instant::now());
        let _ = self.enqueue(routed, false).await;
    }

    /// False when this retained message went out moments ago (another
    /// source of retained messages offered the same one).
    fn first_retained_delivery(&mut self, id: u128) -> bool {
        let now = tokio::time::Instant::now();
        let retained_sent = &mut self.ids.get_mut().retained_sent;
        if retained_sent.len() > 1024 {
            retained_sent.retain(|_, at| now.duration_since(*at) < std::time::Duration::from_secs(30));
        }
        match retained_sent.get(&id) {
            Some(at) if now.duration_since(*at) < std::time::Duration::from_secs(30) => false,
            _ => {
                retained_sent.insert(id, now);
                true
            }
        }
    }

    /// Sends now if the window allows, else queues; the reason when the
    /// message was dropped instead (expired, queue full, QoS 0 while
    /// offline), after `message.dropped` was fired. `replayed` messages are
    /// exempt from the queue bound: the replaying plugin bounds its pages.
    pub(super) async fn enqueue(&mut self, routed: Routed, replayed: bool) -> Result<(), DropReason> {
        let now = SystemTime::now();
        if routed.message.is_expired(now) {
            self.shared
                .fire_dropped(&routed.message, DropReason::Expired, Some(&self.client.clientid));
            return Err(DropReason::Expired);
        }
        let connected = self.conn.is_some();
        if routed.qos == QoS::AtMostOnce {
            // QoS 0 is queued for an offline session only with
            // `mqtt.mqueue_store_qos0` (EMQX's default; Mosquitto's is not to),
            // and never for a reader that has fallen far behind.
            let congested = self
                .conn
                .as_ref()
                .is_some_and(|c| c.outbuf.len() >= OUTBUF_HIGH_WATER);
            if congested || (!connected && !self.shared.config.mqtt.mqueue_store_qos0) {
                self.shared.fire_dropped(
                    &routed.message,
                    DropReason::QueueFull,
                    Some(&self.client.clientid),
                );
                return Err(DropReason::QueueFull);
            }
            if connected {
                self.write_publish(routed, 0, false).await;
                return Ok(());
            }
        } else if connected && self.queue.is_empty() && self.window_open() {
            self.send_new(routed).await;
            return Ok(());
        }
        if !replayed && self.queue.len() >= self.shared.config.mqtt.max_queue_len {
            tracing::debug!(clientid = %self.client.clientid, "queue full, message dropped");
            self.shared.fire_dropped(
                &routed.message,
                DropReason::QueueFull,
                Some(&self.client.clientid),
            );
            return Err(DropReason::QueueFull);
        }
        self.queue.push_back(routed);
        Ok(())
    }

    fn window_open(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| {
            self.inflight.len() < usize::from(c.send_window) && c.outbuf.len() < OUTBUF_HIGH_WATER
        })
    }

    /// Re-sends inflight messages marked unsent (after a reconnect) while the
    /// client's window allows, then moves queued messages into the window.
    pub(super) async fn drain_queue(&mut self) {
        self.resend_unsent();
        while self.window_open() {
            let Some(routed) = self.queue.pop_front() else {
                break;
            };
            if routed.message.is_expired(SystemTime::now()) {
                self.shared
                    .fire_dropped(&routed.message, DropReason::Expired, Some(&self.client.clientid));
                continue;
            }
            if routed.qos == QoS::AtMostOnce {
                // Queued while offline (`mqtt.mqueue_store_qos0`): no packet id, no window slot.
                self.write_publish(routed, 0, false).await;
                continue;
            }
            self.send_new(routed).await;
        }
    }

    fn alloc_pkid(&mut self) -> u16 {
        loop {
            let id = self.next_pkid;
            self.next_pkid = if id == u16::MAX { 1 } else { id + 1 };
            if self.ids.get_mut().in_use.insert(id) {
                return id;
            }
        }
    }

    /// Sends a QoS 1/2 message for the first time and tracks it as inflight.
    async fn send_new(&mut self, routed: Routed) {
        let pkid = self.alloc_pkid();
        let state = if routed.qos == QoS::ExactlyOnce {
            AckState::PubRec
        } else {
            AckState::PubAck
        };
        if self.write_publish(routed.clone(), pkid, false).await {
            self.inflight.push_back(Inflight {
                pkid,
                routed,
                state,
                unsent: false,
            });
        } else {
            self.ids.release_pkid(pkid);
        }
    }

    /// Runs message.delivered and writes the PUBLISH. Returns false when the
    /// message was not sent (too large for the client).
    async fn write_publish(&mut self, mut routed: Routed, pkid: u16, dup: bool) -> bool {
        let hooks = Arc::clone(&self.shared.hooks);
        if !hooks.message_delivered.is_empty() {
            let args = self.hook_args.delivered(&self.client);
            // The fold takes the message by value: this delivery's copy is
            // usually the only one left (one subscriber), and then it is not
            // copied again.
            let message = Arc::try_unwrap(routed.message).unwrap_or_else(|shared| (*shared).clone());
            // Boxed: the fold's future is over a kilobyte, and inline it makes
            // the future of every delivery, and of every turn of the session
            // loop, that much larger (futures are moved whole when created).
            let msg = Box::pin(hooks.message_delivered.run_fold(args, message))
                .await
                .into_inner();
            routed.message = Arc::new(msg);
        }
        self.encode_publish(&routed, pkid, dup)
    }

    fn encode_publish(&mut self, routed: &Routed, pkid: u16, dup: bool) -> bool {
        let Some(c) = self.conn.as_mut() else { return false };
        let m = &routed.message;
        let v5 = c.codec.protocol == ProtocolVersion::V5;
        let mut new_alias = None;
        let encoded = if v5 {
            // The topic name goes out with a new alias, and not at all with a known one.
            let (topic, topic_alias) = match c.out_aliases.as_deref_mut().map(|a| a.lookup(&m.topic)) {
                None => (m.topic.to_string(), None),
                Some(Alias::Known(n)) => (String::new(), Some(n)),
                Some(Alias::New(n)) => {
                    new_alias = Some(n);
                    (m.topic.to_string(), Some(n))
                }
            };
            let publish = Publish {
                dup,
                qos: routed.qos,
                retain: routed.retain,
                topic,
                pkid,
                payload: m.payload.clone(),
                properties: m.properties.clone(),
                message_expiry: m
                    .remaining_expiry(SystemTime::now())
                    .map(|d| u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX)),
                topic_alias,
                subscription_ids: routed.subscription_ids.clone(),
            };
            c.codec.encode(
                &Packet::Publish(publish),
                &mut c.outbuf,
                c.client_max_packet.map(|m| m as usize),
            )
        } else {
            // 3.1/3.1.1: no properties; encoded from the shared message, with
            // no copy of topic or payload on the way.
            let publish = PublishRef {
                dup,
                qos: routed.qos,
                retain: routed.retain,
                topic: &m.topic,
                pkid,
                payload: &m.payload,
            };
            c.codec.encode_publish_ref(&publish, &mut c.outbuf)
        };
        match encoded {
            Ok(()) => {
                // Only once the PUBLISH is on its way does the client know the alias.
                if let (Some(n), Some(a)) = (new_alias, c.out_aliases.as_deref_mut()) {
                    a.commit(n, &m.topic);
                }
                self.shared.metrics.sent(routed.qos);
                c.traffic.packets_out = c.traffic.packets_out.saturating_add(1);
                true
            }
            Err(EncodeError::TooLarge { .. }) => {
                // MQTT 5 3.1.2.25: discard what the client cannot take, as if delivered.
                self.shared
                    .fire_dropped(m, DropReason::TooLarge, Some(&self.client.clientid));
                false
            }
            Err(e) => {
                tracing::warn!(clientid = %self.client.clientid, "cannot encode PUBLISH: {e}");
                false
            }
        }
    }

    /// Re-sends inflight messages waiting since a reconnect, in order, while
    /// the window has room: PUBLISH with DUP, or PUBREL. One that is now too
    /// large for the client is dropped (as if delivered) and frees its slot.
    fn resend_unsent(&mut self) {
        if self.unsent == 0 {
            return;
        }
        let Some(window) = self.conn.as_ref().map(|c| usize::from(c.send_window)) else {
            return;
        };
        let mut i = 0;
        while i < self.inflight.len() && self.unsent > 0 {
            // Entries not waiting are on the wire: they use the window.
            if self.inflight.len() - self.unsent >= window {
                return;
            }
            if !self.inflight[i].unsent {
                i += 1;
                continue;
            }
            self.inflight[i].unsent = false;
            self.unsent -= 1;
            let (pkid, state) = (self.inflight[i].pkid, self.inflight[i].state);
            if state == AckState::PubComp {
                self.send(Packet::PubRel(Ack::new(pkid)));
                i += 1;
                continue;
            }
            let routed = self.inflight[i].routed.clone();
            if self.encode_publish(&routed, pkid, true) {
                i += 1;
            } else if let Some(entry) = self.inflight.remove(i) {
                self.ids.release_pkid(entry.pkid);
            }
        }
    }

    fn take_inflight(&mut self, pkid: u16, expect: AckState) -> Option<Inflight> {
        let pos = self
            .inflight
            .iter()
            .position(|i| i.pkid == pkid && i.state == expect)?;
        let entry = self.inflight.remove(pos)?;
        self.ids.release_pkid(pkid);
        if entry.unsent {
            // Acknowledged before we re-sent it (the client had it already).
            self.unsent -= 1;
        }
        Some(entry)
    }

    async fn acked(&mut self, entry: Inflight) {
        let hooks = Arc::clone(&self.shared.hooks);
        if !hooks.message_acked.is_empty() {
            let args = Arc::new(AckedArgs {
                client: hooks_spec::ClientInfo::clone(&self.client),
                message: entry.routed.message,
            });
            hooks.message_acked.run(args).await;
        }
        self.drain_queue().await;
    }

    /// PUBACK: a QoS 1 delivery is complete.
    pub(super) async fn client_puback(&mut self, a: Ack) {
        match self.take_inflight(a.pkid, AckState::PubAck) {
            Some(entry) => self.acked(entry).await,
            None => {
                tracing::debug!(clientid = %self.client.clientid, pkid = a.pkid, "PUBACK for unknown packet id")
            }
        }
    }

    /// PUBREC: answer PUBREL and wait for PUBCOMP (or, with an error code, the delivery ends).
    pub(super) async fn client_pubrec(&mut self, a: Ack) {
        let state = self.inflight.iter().find(|i| i.pkid == a.pkid).map(|i| i.state);
        if state == Some(AckState::PubComp) {
            // A repeated PUBREC: our PUBREL may have been lost; send it again.
            self.send(Packet::PubRel(Ack::new(a.pkid)));
            return;
        }
        let Some(entry) = self
            .inflight
            .iter_mut()
            .find(|i| i.pkid == a.pkid && i.state == AckState::PubRec)
        else {
            // MQTT 5 4.3.3: answer an unknown id with PUBREL 0x92.
            self.send(Packet::PubRel(Ack::with_reason(a.pkid, 0x92)));
            return;
        };
        if a.reason >= 0x80 {
            if let Some(entry) = self.take_inflight(a.pkid, AckState::PubRec) {
                // The client refused it: the delivery ends here (message.dropped,
                // so a storage plugin does not wait for its acknowledgement).
                self.shared.fire_dropped(
                    &entry.routed.message,
                    DropReason::Denied,
                    Some(&self.client.clientid),
                );
                self.drain_queue().await;
            }
            return;
        }
        entry.state = AckState::PubComp;
        self.send(Packet::PubRel(Ack::new(a.pkid)));
    }

    /// PUBCOMP: a QoS 2 delivery is complete.
    pub(super) async fn client_pubcomp(&mut self, a: Ack) {
        match self.take_inflight(a.pkid, AckState::PubComp) {
            Some(entry) => self.acked(entry).await,
            None => {
                tracing::debug!(clientid = %self.client.clientid, pkid = a.pkid, "PUBCOMP for unknown packet id")
            }
        }
    }
}
