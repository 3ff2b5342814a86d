//! The publishers (rumqttc, MQTT 3.1.1, clean session, QoS 1), on a node
//! chosen at random on every connect: they record every PUBACK they
//! receive, every publish they give up, and what became of the connection
//! they left when they moved to another node while connected.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, Incoming, Outgoing, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::rig::{nodelay, pick, NodeAddrs};
use crate::support::v4_options;
use crate::world::{lock, Rng, World};
use crate::{
    CONNECT_TIMEOUT, PUBACK_TIMEOUT, PUBLISHERS, PUBLISHER_STAY, PUBLISH_PAUSE, RETRY_PAUSE, TAKEOVER_LIMIT,
};

/// What the publishers' connections did.
#[derive(Default)]
pub(crate) struct PubLog {
    /// Connections that got a CONNACK.
    pub(crate) connects: usize,
    /// Moves to another node while connected whose new connection got its
    /// CONNACK (the cluster takes the client id over).
    pub(crate) takeovers: usize,
    /// ... whose old connection its node had closed by then.
    pub(crate) old_closed_before: usize,
    /// ... closed after the new CONNACK: how long after (seconds).
    pub(crate) old_closed_after: Vec<f64>,
    /// ... still open [`TAKEOVER_LIMIT`] after the new CONNACK: two live
    /// connections of one client id (when the new CONNACK came, what).
    pub(crate) two_live: Vec<(f64, String)>,
}

/// Starts [`PUBLISHERS`] publisher tasks.
pub(crate) fn start_publishers(
    world: &Arc<World>,
    nodes: &watch::Receiver<NodeAddrs>,
    log: &Arc<Mutex<PubLog>>,
    seed: u64,
) -> Vec<JoinHandle<()>> {
    (0..PUBLISHERS)
        .map(|k| {
            let p = Publisher {
                id: format!("chaos-pub-{k}"),
                k,
                world: world.clone(),
                nodes: nodes.clone(),
                log: log.clone(),
                rng: Rng::new(seed.wrapping_add(2000 + k as u64)),
            };
            tokio::spawn(p.run())
        })
        .collect()
}

/// Tells the publishers to stop (each finishes the message in hand) and
/// waits until each has.
pub(crate) async fn stop_publishers(world: &World, publishers: Vec<JoinHandle<()>>) {
    world.stop_publishing.store(true, Ordering::SeqCst);
    for p in publishers {
        tokio::time::timeout(PUBACK_TIMEOUT + 2 * CONNECT_TIMEOUT + Duration::from_secs(5), p)
            .await
            .expect("a publisher did not stop")
            .expect("publisher task");
    }
    world.note("publishers stopped");
}

/// One connection of a publisher.
struct PubConn {
    node: usize,
    client: AsyncClient,
    events: EventLoop,
}

/// A publisher (clean session) on a node chosen at random: one QoS 1
/// message at a time, counted as acknowledged only when its PUBACK arrived.
/// A message without PUBACK is published again on a new connection as a new
/// attempt (`-a<N>`), so a stored-but-unacknowledged attempt is never
/// mistaken for a repeat. After [`PUBLISHER_STAY`] messages it goes to
/// another node: half the time with a DISCONNECT first, half the time by
/// connecting there while still connected here.
struct Publisher {
    id: String,
    k: usize,
    world: Arc<World>,
    nodes: watch::Receiver<NodeAddrs>,
    log: Arc<Mutex<PubLog>>,
    rng: Rng,
}

impl Publisher {
    fn stopping(&self) -> bool {
        self.world.stop_publishing.load(Ordering::SeqCst)
    }

    async fn run(mut self) {
        let mut seq: u64 = 0;
        let mut attempt: u32 = 0;
        let mut conn: Option<PubConn> = None;
        let mut last_node = None;
        while !self.stopping() {
            let r = self.rng.below(1 << 32);
            let stay = self.rng.below(PUBLISHER_STAY.1 - PUBLISHER_STAY.0 + 1) + PUBLISHER_STAY.0;
            let take_over = self.rng.below(2) == 0;
            let mut c = match conn.take() {
                Some(c) => c,
                None => match self.connect(last_node, r).await {
                    Some(c) => c,
                    None => {
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                },
            };
            last_node = Some(c.node);
            let mut failed = false;
            for _ in 0..stay {
                if self.stopping() {
                    return;
                }
                let topic = format!("chaos/{}/{}", self.k, seq % 3);
                let payload = format!("p{}-{seq:06}-a{attempt}", self.k);
                self.world.attempts.fetch_add(1, Ordering::SeqCst);
                c.client
                    .publish(&topic, QoS::AtLeastOnce, false, payload.clone())
                    .await
                    .expect("queue PUBLISH");
                let outcome = puback(&mut c.events).await;
                let now = self.world.now();
                if let Err(why) = outcome {
                    let why = format!("node-{}: {why}", c.node);
                    lock(&self.world.unacked).push((payload, now, why));
                    attempt += 1;
                    failed = true;
                    break;
                }
                lock(&self.world.acked).insert(payload, now);
                {
                    let mut last = lock(&self.world.last_ack);
                    *last = last.max(now);
                }
                seq += 1;
                attempt = 0;
                tokio::time::sleep(PUBLISH_PAUSE).await;
            }
            if failed {
                continue;
            }
            if take_over {
                conn = self.take_over(c, r).await;
            } else {
                disconnect(c).await;
            }
        }
    }

    /// Connects to the node at draw `r` among those up, other than
    /// `exclude` when there is another.
    async fn connect(&self, exclude: Option<usize>, r: u64) -> Option<PubConn> {
        let picked = pick(&self.nodes.borrow(), exclude, r).or_else(|| pick(&self.nodes.borrow(), None, r));
        let (node, addr) = picked?;
        let (client, mut events) = AsyncClient::new(v4_options(addr, &self.id, true), 16);
        nodelay(&mut events);
        match tokio::time::timeout(CONNECT_TIMEOUT, events.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(ack)))) if ack.code == ConnectReturnCode::Success => {
                lock(&self.log).connects += 1;
                self.world.note(format!("{}: connected to node-{node}", self.id));
                Some(PubConn { node, client, events })
            }
            _ => None,
        }
    }

    /// Connects to another node while `old` is still connected: the cluster
    /// must close `old` (it closes it before it answers the new CONNECT,
    /// unless the old node does not answer for 3 s). Records when `old`
    /// closed; the new connection, if it got its CONNACK.
    async fn take_over(&self, mut old: PubConn, r: u64) -> Option<PubConn> {
        self.world.note(format!(
            "{}: moving from node-{} while connected",
            self.id, old.node
        ));
        let new = self.connect(Some(old.node), r).await?;
        let connack = Instant::now();
        let connack_at = self.world.now();
        lock(&self.log).takeovers += 1;
        // Already closed: the end is in the socket before the new CONNACK.
        let closed_at = match tokio::time::timeout(Duration::ZERO, poll_to_end(&mut old.events)).await {
            Ok(()) => Some(None),
            Err(_) => tokio::time::timeout(TAKEOVER_LIMIT, poll_to_end(&mut old.events))
                .await
                .ok()
                .map(|()| Some(connack.elapsed().as_secs_f64())),
        };
        let mut l = lock(&self.log);
        match closed_at {
            Some(None) => l.old_closed_before += 1,
            Some(Some(after)) => l.old_closed_after.push(after),
            None => {
                let what = format!(
                    "{}: its connection to node-{} still open {TAKEOVER_LIMIT:?} after its connection to \
                     node-{} got its CONNACK (at {:.3} s)",
                    self.id, old.node, new.node, connack_at
                );
                self.world.note(format!("TWO LIVE CONNECTIONS: {what}"));
                l.two_live.push((connack_at, what));
            }
        }
        Some(new)
    }
}

/// Polls until the connection ends (never polled again after: rumqttc
/// would connect again).
async fn poll_to_end(events: &mut EventLoop) {
    while events.poll().await.is_ok() {}
}

/// Leaves with a DISCONNECT (bounded: the node may be gone).
async fn disconnect(mut c: PubConn) {
    let _ = c.client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(ev) = c.events.poll().await {
            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                return;
            }
        }
    })
    .await;
}

/// Polls until the PUBACK of the PUBLISH just queued arrives, within
/// [`PUBACK_TIMEOUT`]; else why not.
async fn puback(events: &mut EventLoop) -> Result<(), String> {
    tokio::time::timeout(PUBACK_TIMEOUT, async {
        let mut pkid = None;
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(Outgoing::Publish(p))) if pkid.is_none() => pkid = Some(p),
                Ok(Event::Incoming(Incoming::PubAck(a))) if Some(a.pkid) == pkid => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("connection ended: {e}")),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no PUBACK within {PUBACK_TIMEOUT:?}")))
}
