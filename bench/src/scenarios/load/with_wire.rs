//! Load clients on the bench's lean connection (`--client lean`, the
//! default; see `scenarios::wire` for why): one task per client that owns
//! its socket, writes a burst of packets at a time and counts per burst.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqttbytes::v4::{self, Packet};
use mqttbytes::QoS;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::{qos_of, PubSpec, Shared, SubSpec};
use crate::payload::{self, Header};
use crate::scenarios::wire::{Outgoing, PacketIds, WireConn, KEEP_ALIVE};
use crate::scenarios::{BenchError, Target};
use crate::stats::Tracker;

/// Publishes encoded per write at most (keeps QoS 0 publishers, which
/// have no window, checking for the end of the run).
const BURST: u32 = 256;

fn to_v4(q: rumqttc::QoS) -> QoS {
    match q {
        rumqttc::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn keepalive_timer() -> tokio::time::Interval {
    let half = KEEP_ALIVE / 2;
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

/// The body of a subscriber's task: connects, subscribes, reports `ready`,
/// then records every publish (and acknowledges it) until `stop`.
pub(super) async fn subscriber(
    target: Target,
    spec: SubSpec,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    ready: oneshot::Sender<Result<(), BenchError>>,
) -> Result<Tracker, BenchError> {
    let qos = to_v4(qos_of(spec.qos)?);
    let mut tracker = spec.tracker;
    let setup = async {
        let mut conn = WireConn::connect(&target, &spec.client_id, spec.payload).await?;
        conn.subscribe(&spec.topic, qos).await?;
        Ok::<_, BenchError>(conn)
    };
    let mut conn = match setup.await {
        Ok(conn) => {
            let _ = ready.send(Ok(()));
            conn
        }
        Err(e) => {
            let msg = e.to_string();
            let _ = ready.send(Err(e));
            return Err(msg.into());
        }
    };
    let mut ping = keepalive_timer();
    let counters = &shared.counters;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = ping.tick() => conn.push(Outgoing::PingReq)?,
            r = conn.read_some() => {
                if let Err(e) = r {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("bench: {e}");
                    break;
                }
            }
        }
        let now = shared.clock.now_ns();
        let mut firsts = 0;
        while let Some(packet) = conn.next_packet()? {
            match packet {
                Packet::Publish(msg) => {
                    let header = payload::decode(&msg.payload);
                    if !shared.probe_seen(spec.index, header) && tracker.record(header, now) {
                        firsts += 1;
                    }
                    match msg.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => conn.push(Outgoing::PubAck(msg.pkid))?,
                        QoS::ExactlyOnce => conn.push(Outgoing::PubRec(msg.pkid))?,
                    }
                }
                Packet::PubRel(rel) => conn.push(Outgoing::PubComp(rel.pkid))?,
                Packet::PingResp => {}
                other => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("bench: {}: unexpected {other:?}", conn.who());
                }
            }
        }
        if firsts > 0 {
            counters.received.fetch_add(firsts, Ordering::Relaxed);
            shared.mark(now);
        }
        if let Err(e) = conn.flush().await {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("bench: {e}");
            break;
        }
    }
    conn.disconnect().await;
    Ok(tracker)
}

/// A publisher connected and waiting for the start.
pub(super) struct Publisher {
    conn: WireConn,
    spec: PubSpec,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
}

/// Connects a publisher.
pub(super) async fn connect_publisher(
    target: &Target,
    spec: PubSpec,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> Result<Publisher, BenchError> {
    let conn = WireConn::connect(target, &spec.client_id, spec.payload).await?;
    Ok(Publisher {
        conn,
        spec,
        shared,
        stop,
    })
}

impl Publisher {
    /// Starts publishing (at the spec's rate, if any) from `start`.
    pub(super) fn start(self, start: Instant) -> Vec<JoinHandle<()>> {
        vec![tokio::spawn(async move {
            let who = self.spec.client_id.clone();
            let shared = self.shared.clone();
            if let Err(e) = self.run(start).await {
                shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("bench: {who}: {e}");
            }
        })]
    }

    async fn run(mut self, start: Instant) -> Result<(), BenchError> {
        let spec = &self.spec;
        let shared = &self.shared;
        let counters = &shared.counters;
        let qos = to_v4(qos_of(spec.qos)?);
        // QoS 0 has no acknowledgement, so no window.
        let window = if spec.qos == 0 {
            usize::MAX
        } else {
            usize::from(spec.inflight.max(1))
        };
        let tstart = tokio::time::Instant::from_std(start);
        let due_at = |seq: u32| tstart + Duration::from_secs_f64(f64::from(seq) / spec.rate);
        let mut ids = PacketIds::new();
        let mut ping = keepalive_timer();
        let mut seq = 0u32;
        let mut finished = false;
        loop {
            // Send what the window and the rate allow, in one write.
            let mut burst = 0u32;
            let mut wait_until = None;
            let now = tokio::time::Instant::now();
            while seq < spec.count && ids.len() < window && burst < BURST {
                if spec.rate > 0.0 && due_at(seq) > now {
                    wait_until = Some(due_at(seq));
                    break;
                }
                let header = Header {
                    sent_ns: shared.clock.now_ns(),
                    publisher: spec.index,
                    seq,
                };
                let body = Bytes::from(payload::encode(header, spec.payload));
                let mut publish = v4::Publish::from_bytes(spec.topic.as_str(), qos, body);
                if qos != QoS::AtMostOnce {
                    publish.pkid = ids.take().ok_or("no free packet identifier")?;
                }
                self.conn.push(Outgoing::Publish(publish))?;
                seq += 1;
                burst += 1;
            }
            self.conn.flush().await?;
            if burst > 0 {
                counters.sent.fetch_add(u64::from(burst), Ordering::Relaxed);
            }
            if seq == spec.count && !finished {
                finished = true;
                shared.publishers_done.fetch_add(1, Ordering::Relaxed);
            }
            let more_now = seq < spec.count && ids.len() < window && wait_until.is_none();
            if more_now {
                if self.stop.has_changed().unwrap_or(true) {
                    break;
                }
                tokio::task::yield_now().await;
                continue;
            }
            let sleep = tokio::time::sleep_until(wait_until.unwrap_or(now));
            tokio::select! {
                biased;
                _ = self.stop.changed() => break,
                _ = ping.tick() => self.conn.push(Outgoing::PingReq)?,
                r = self.conn.read_some() => r?,
                _ = sleep, if wait_until.is_some() => {}
            }
            let mut acked = 0u64;
            while let Some(packet) = self.conn.next_packet()? {
                match packet {
                    Packet::PubAck(ack) if qos == QoS::AtLeastOnce && ids.release(ack.pkid) => acked += 1,
                    Packet::PubRec(rec) if qos == QoS::ExactlyOnce => {
                        self.conn.push(Outgoing::PubRel(rec.pkid))?
                    }
                    Packet::PubComp(comp) if qos == QoS::ExactlyOnce && ids.release(comp.pkid) => acked += 1,
                    Packet::PingResp => {}
                    other => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("bench: {}: unexpected {other:?}", self.conn.who());
                    }
                }
            }
            if acked > 0 {
                counters.acked.fetch_add(acked, Ordering::Relaxed);
                shared.mark(shared.clock.now_ns());
            }
        }
        self.conn.disconnect().await;
        Ok(())
    }
}
