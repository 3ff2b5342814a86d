//! The publishers (rumqttc, MQTT 3.1.1, clean session, QoS 1), on a node
//! chosen at random on every connect: they record every PUBACK they
//! receive, every publish they give up, and what became of the connection
//! they left when they moved to another node while connected.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Outgoing};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::rig::{pick, NodeAddrs};
use crate::shared_clients::{connect_publisher, Messages};
use crate::world::{lock, Rng, World};
use crate::{PUBLISHERS, PUBLISHER_STAY, RETRY_PAUSE, TAKEOVER_LIMIT};

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

/// One connection of a publisher.
struct PubConn {
    node: usize,
    client: AsyncClient,
    events: EventLoop,
}

/// A publisher (clean session) on a node chosen at random: [`Messages`] on
/// a connection, a new connection after each message given up. After
/// [`PUBLISHER_STAY`] messages it goes to another node: half the time with
/// a DISCONNECT first, half the time by connecting there while still
/// connected here.
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
        let mut messages = Messages::new(self.k);
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
                if !messages
                    .publish(&self.world, &c.client, &mut c.events, Some(c.node))
                    .await
                {
                    failed = true;
                    break;
                }
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
        let (client, events) = connect_publisher(addr, &self.id).await?;
        lock(&self.log).connects += 1;
        self.world.note(format!("{}: connected to node-{node}", self.id));
        Some(PubConn { node, client, events })
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
