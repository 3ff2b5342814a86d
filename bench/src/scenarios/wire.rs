//! The bench's lean MQTT 3.1.1 connection: a TCP socket, a read buffer
//! decoded with mqttbytes (not the broker's codec: the client stays
//! independent of the code it measures) and a write buffer sent in one
//! `write` per burst.
//!
//! Why it exists: on a 2-core machine the load generator shares the CPU
//! with the broker it measures. rumqttc spends ~4 µs of CPU per QoS 1
//! message (publisher and subscriber together: an event per packet through
//! channels, one write per packet), as much as the broker, so rumqttc-driven
//! throughput measures the client as much as the broker. This connection
//! spends well under a microsecond (no channel, no per-packet syscall), so
//! the broker is what runs out of CPU. `--client rumqttc` keeps the
//! independent client for cross-checks.
//!
//! The scenario loops own a `WireConn` each and drive it themselves: encode
//! packets into [`WireConn::out`], [`WireConn::flush`], then
//! [`WireConn::read_some`] and [`WireConn::next_packet`] until it returns
//! `None`.

use std::time::Duration;

use bytes::BytesMut;
use mqttbytes::v4::{self, Packet};
use mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{BenchError, Target, SETUP_TIMEOUT};

/// Keep alive asked for in CONNECT; runs send PINGREQ at half of it.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(60);

/// One MQTT 3.1.1 connection with its buffers.
pub(crate) struct WireConn {
    stream: TcpStream,
    inbuf: BytesMut,
    /// Packets encoded and not yet written.
    pub out: BytesMut,
    max_packet: usize,
    who: String,
}

impl WireConn {
    /// Opens a TCP connection (Nagle off), sends CONNECT (clean session) and
    /// waits for a successful CONNACK.
    pub async fn connect(target: &Target, client_id: &str, payload: usize) -> Result<Self, BenchError> {
        Self::connect_with(target, client_id, payload, true, None).await
    }

    /// As [`WireConn::connect`], with the clean-session flag given and,
    /// when `source` is set, from that local address (many connections to
    /// one port need more than one source address's ephemeral ports).
    pub async fn connect_with(
        target: &Target,
        client_id: &str,
        payload: usize,
        clean_session: bool,
        source: Option<std::net::IpAddr>,
    ) -> Result<Self, BenchError> {
        Self::open(
            target,
            client_id,
            payload,
            clean_session,
            source,
            KEEP_ALIVE,
            64 * 1024,
        )
        .await
    }

    /// A clean-session connection that will stay idle: `keep_alive` in its
    /// CONNECT and small buffers (thousands of them are held open at once;
    /// the 64 KiB ones of the load connections would be most of the
    /// client's memory). Read it with [`WireConn::read_discard`].
    pub async fn connect_idle(
        target: &Target,
        client_id: &str,
        keep_alive: Duration,
    ) -> Result<Self, BenchError> {
        Self::open(target, client_id, 0, true, None, keep_alive, 256).await
    }

    async fn open(
        target: &Target,
        client_id: &str,
        payload: usize,
        clean_session: bool,
        source: Option<std::net::IpAddr>,
        keep_alive: Duration,
        buffer: usize,
    ) -> Result<Self, BenchError> {
        let who = client_id.to_string();
        let fut = async {
            let open = async {
                let Some(source) = source else {
                    return TcpStream::connect((target.host.as_str(), target.port)).await;
                };
                let addr = tokio::net::lookup_host((target.host.as_str(), target.port))
                    .await?
                    .find(|a| a.is_ipv4() == source.is_ipv4())
                    .ok_or_else(|| std::io::Error::other("no address of the source's family"))?;
                let socket = if source.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.bind(std::net::SocketAddr::new(source, 0))?;
                socket.connect(addr).await
            };
            let stream = open
                .await
                .map_err(|e| format!("{who}: connect to {}:{}: {e}", target.host, target.port))?;
            stream.set_nodelay(true)?;
            let mut conn = WireConn {
                stream,
                inbuf: BytesMut::with_capacity(buffer),
                out: BytesMut::with_capacity(buffer),
                max_packet: payload.max(crate::payload::HEADER_LEN) + 1024,
                who: who.clone(),
            };
            let mut connect = v4::Connect::new(client_id);
            connect.keep_alive = u16::try_from(keep_alive.as_secs()).unwrap_or(u16::MAX);
            connect.clean_session = clean_session;
            connect
                .write(&mut conn.out)
                .map_err(|e| format!("{who}: encode CONNECT: {e:?}"))?;
            conn.flush().await?;
            loop {
                match conn.next_packet()? {
                    Some(Packet::ConnAck(ack)) if ack.code == v4::ConnectReturnCode::Success => {
                        return Ok(conn)
                    }
                    Some(Packet::ConnAck(ack)) => {
                        return Err(BenchError::from(format!("{who}: CONNACK {:?}", ack.code)))
                    }
                    Some(other) => return Err(BenchError::from(format!("{who}: {other:?} before CONNACK"))),
                    None => conn.read_some().await?,
                }
            }
        };
        tokio::time::timeout(SETUP_TIMEOUT, fut)
            .await
            .map_err(|_| format!("{who}: no CONNACK within {SETUP_TIMEOUT:?}"))?
    }

    /// Subscribes to `filter` and waits for a SUBACK that grants it.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), BenchError> {
        let mut sub = v4::Subscribe::new(filter, qos);
        sub.pkid = 1;
        sub.write(&mut self.out)
            .map_err(|e| format!("{}: encode SUBSCRIBE: {e:?}", self.who))?;
        let fut = async {
            self.flush().await?;
            loop {
                match self.next_packet()? {
                    Some(Packet::SubAck(ack)) => {
                        if ack
                            .return_codes
                            .iter()
                            .any(|c| matches!(c, v4::SubscribeReasonCode::Failure))
                        {
                            return Err(BenchError::from(format!(
                                "{}: SUBSCRIBE {filter} refused",
                                self.who
                            )));
                        }
                        return Ok(());
                    }
                    Some(other) => {
                        return Err(BenchError::from(format!("{}: {other:?} before SUBACK", self.who)))
                    }
                    None => self.read_some().await?,
                }
            }
        };
        tokio::time::timeout(SETUP_TIMEOUT, fut)
            .await
            .map_err(|_| format!("{}: no SUBACK within {SETUP_TIMEOUT:?}", self.who))?
    }

    /// The next whole packet already read, if any.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, BenchError> {
        match v4::read(&mut self.inbuf, self.max_packet) {
            Ok(p) => Ok(Some(p)),
            Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(format!("{}: bad packet from the broker: {e:?}", self.who).into()),
        }
    }

    /// Reads what the socket has (waits for at least one byte); an error
    /// when the broker closed the connection.
    pub async fn read_some(&mut self) -> Result<(), BenchError> {
        if self.inbuf.capacity() - self.inbuf.len() < 16 * 1024 {
            self.inbuf.reserve(64 * 1024);
        }
        let n = self
            .stream
            .read_buf(&mut self.inbuf)
            .await
            .map_err(|e| format!("{}: read: {e}", self.who))?;
        if n == 0 {
            return Err(format!("{}: the broker closed the connection", self.who).into());
        }
        Ok(())
    }

    /// Waits for bytes from the broker and drops them (an idle
    /// connection's PINGRESPs); an error when the broker closed the
    /// connection. Reads into a small stack buffer, so an idle connection's
    /// read buffer never grows.
    pub async fn read_discard(&mut self) -> Result<(), BenchError> {
        let mut scratch = [0u8; 64];
        let n = self
            .stream
            .read(&mut scratch)
            .await
            .map_err(|e| format!("{}: read: {e}", self.who))?;
        if n == 0 {
            return Err(format!("{}: the broker closed the connection", self.who).into());
        }
        Ok(())
    }

    /// Writes everything encoded into [`WireConn::out`].
    pub async fn flush(&mut self) -> Result<(), BenchError> {
        if !self.out.is_empty() {
            self.stream
                .write_all(&self.out)
                .await
                .map_err(|e| format!("{}: write: {e}", self.who))?;
            self.out.clear();
        }
        Ok(())
    }

    /// Encodes a packet into the write buffer.
    pub fn push(&mut self, packet: Outgoing) -> Result<(), BenchError> {
        let r = match packet {
            Outgoing::Publish(p) => p.write(&mut self.out),
            Outgoing::PubAck(id) => v4::PubAck::new(id).write(&mut self.out),
            Outgoing::PubRec(id) => v4::PubRec::new(id).write(&mut self.out),
            Outgoing::PubRel(id) => v4::PubRel::new(id).write(&mut self.out),
            Outgoing::PubComp(id) => v4::PubComp::new(id).write(&mut self.out),
            Outgoing::PingReq => v4::PingReq.write(&mut self.out),
        };
        r.map(|_| ())
            .map_err(|e| format!("{}: encode: {e:?}", self.who).into())
    }

    /// Sends DISCONNECT (best effort) and closes the socket.
    pub async fn disconnect(mut self) {
        self.out.clear();
        if v4::Disconnect.write(&mut self.out).is_ok() {
            let _ = self.flush().await;
        }
        let _ = self.stream.shutdown().await;
    }

    /// The client id, for messages.
    pub fn who(&self) -> &str {
        &self.who
    }
}

/// What a scenario loop sends.
pub(crate) enum Outgoing {
    Publish(v4::Publish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    PingReq,
}

/// Packet identifiers of one publisher's unacknowledged publishes.
pub(crate) struct PacketIds {
    outstanding: Vec<bool>,
    next: u16,
    count: usize,
}

impl PacketIds {
    /// No publish outstanding.
    pub fn new() -> Self {
        PacketIds {
            outstanding: vec![false; 65536],
            next: 0,
            count: 0,
        }
    }

    /// Publishes outstanding.
    pub fn len(&self) -> usize {
        self.count
    }

    /// A free identifier, marked outstanding (`None` when all 65,535 are).
    pub fn take(&mut self) -> Option<u16> {
        if self.count >= 65535 {
            return None;
        }
        loop {
            self.next = self.next.checked_add(1).unwrap_or(1);
            if !self.outstanding[usize::from(self.next)] {
                self.outstanding[usize::from(self.next)] = true;
                self.count += 1;
                return Some(self.next);
            }
        }
    }

    /// Marks `id` acknowledged; false when it was not outstanding (the
    /// broker acknowledged something never sent, or twice).
    pub fn release(&mut self, id: u16) -> bool {
        let slot = &mut self.outstanding[usize::from(id)];
        if *slot {
            *slot = false;
            self.count -= 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_skip_zero_and_outstanding_ones() {
        let mut ids = PacketIds::new();
        assert_eq!(ids.take(), Some(1));
        assert_eq!(ids.take(), Some(2));
        assert!(ids.release(1));
        assert!(!ids.release(1), "a second acknowledgement is reported");
        assert!(!ids.release(7), "an acknowledgement of nothing is reported");
        ids.next = 65535;
        assert_eq!(ids.take(), Some(1), "wraps past 0");
        assert_eq!(ids.take(), Some(3), "2 is still outstanding");
        assert_eq!(ids.len(), 3);
    }
}
