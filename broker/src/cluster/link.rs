//! Links to the other nodes: one outbound MQTT 5 connection per node, over
//! which this node forwards the messages the node has subscribers for.
//!
//! [`Links`] is the broker's [`Forwarder`]: `forward` puts each message on
//! the queue of each node's link task, in the order publishes are routed, so
//! one publisher's messages reach the other node in order. The task owns the
//! connection: it connects to the node's cluster listener (client id
//! `$node/<this node>`, the cluster secret as password), sends each message
//! (QoS 0 as QoS 0; QoS 1 and 2 as QoS 1, with up to [`WINDOW`]
//! unacknowledged) and, after a connection breaks, connects again and sends
//! the unacknowledged ones again (with DUP), before anything newer. Messages
//! for a node that is declared down are dropped with its link; those that
//! were stored reach its clients, once they reconnect elsewhere, from the
//! database.
//!
//! Backpressure: while a link is connected and its queue is longer than
//! [`HIGH_WATER`], `forward` hands back a [`Backlog`] the publishing session
//! waits on (until the queue is down to [`LOW_WATER`]) before it acknowledges
//! and reads more: a publisher is slowed to what the other node takes,
//! instead of the queue (and the latency) growing without bound. A link that
//! is not connected does not hold publishers back (the node may be down);
//! its queue is bounded by [`QUEUE_LIMIT`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use hooks_spec::{Message, ProtocolVersion, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

use super::wire::{self, ForwardFor};
use crate::codec::{Codec, Connect, Packet};
use crate::router::{Forward, NodeName};
use crate::shared::{Backlog, Forwarded, Forwarder};

/// Unacknowledged QoS 1 messages on one link.
const WINDOW: usize = 4096;
/// Messages queued for a node beyond this are dropped (a node that cannot
/// keep up, or is unreachable and not yet declared down), and counted.
const QUEUE_LIMIT: usize = 1_000_000;
/// A connected link's queue longer than this holds its publishers back...
const HIGH_WATER: usize = 2048;
/// ... until it is down to this.
const LOW_WATER: usize = 1024;
/// A publisher waits at most this long for one message (then goes on: a
/// node that stopped reading is cut off by the keep alive, not waited for).
const BACKLOG_WAIT: Duration = Duration::from_millis(500);
/// Keep alive of a link (it is pinged at half of it; a link that heard
/// nothing for a whole keep alive, or cannot write for as long, is broken).
const KEEPALIVE_SECS: u16 = 10;
/// Between connection attempts.
const RECONNECT: Duration = Duration::from_millis(200);

struct Link {
    tx: mpsc::UnboundedSender<(Arc<Message>, ForwardFor)>,
    state: Arc<LinkState>,
    task: tokio::task::JoinHandle<()>,
}

/// What publishers and the link task share about one link.
#[derive(Default)]
struct LinkState {
    /// Messages in the queue (not yet taken by the task).
    queued: AtomicUsize,
    /// The task has a connection to the node.
    connected: AtomicBool,
    /// Woken when the queue falls to [`LOW_WATER`] or the connection ends.
    room: Notify,
}

impl LinkState {
    fn backlogged(&self, above: usize) -> bool {
        self.connected.load(Ordering::Relaxed) && self.queued.load(Ordering::Relaxed) > above
    }

    /// The task took one message off the queue.
    fn taken(&self) {
        if self.queued.fetch_sub(1, Ordering::Relaxed) == LOW_WATER + 1 {
            self.room.notify_waiters();
        }
    }

    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        if !connected {
            self.room.notify_waiters();
        }
    }

    /// Until the queue is down to [`LOW_WATER`] or the link is not connected.
    async fn drained(&self) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if !self.backlogged(LOW_WATER) {
                return;
            }
            room.await;
        }
    }
}

/// The links of this node to the others.
pub struct Links {
    me: NodeName,
    secret: String,
    links: RwLock<HashMap<NodeName, Link>>,
}

impl Links {
    /// No links yet.
    pub fn new(me: NodeName, secret: String) -> Links {
        Links {
            me,
            secret,
            links: RwLock::new(HashMap::new()),
        }
    }

    /// Starts (or, at a new address, restarts) the link to `node`.
    pub fn connect(&self, node: &NodeName, address: &str) {
        let mut links = self.links.write().unwrap_or_else(|p| p.into_inner());
        if links.contains_key(node) {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(LinkState::default());
        let task = tokio::spawn(run(
            Arc::clone(node),
            address.to_string(),
            Arc::clone(&self.me),
            self.secret.clone(),
            rx,
            Arc::clone(&state),
        ));
        links.insert(Arc::clone(node), Link { tx, state, task });
    }

    /// Ends the link to `node` (it left the cluster or is down); what was
    /// queued for it is dropped.
    pub fn disconnect(&self, node: &NodeName) {
        let link = self.links.write().unwrap_or_else(|p| p.into_inner()).remove(node);
        if let Some(link) = link {
            link.task.abort();
            link.state.set_connected(false);
        }
    }

    /// Whether the link to `node` has a connection now.
    pub fn connected(&self, node: &str) -> bool {
        let links = self.links.read().unwrap_or_else(|p| p.into_inner());
        links
            .get(node)
            .is_some_and(|l| l.state.connected.load(Ordering::Relaxed))
    }

    /// The nodes there is a link to.
    pub fn nodes(&self) -> Vec<NodeName> {
        self.links
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Queues `msg` for `node`: `None` when it was dropped, else the link.
    fn send<'l>(
        &self,
        links: &'l HashMap<NodeName, Link>,
        node: &NodeName,
        msg: &Arc<Message>,
        to: ForwardFor,
    ) -> Option<&'l Link> {
        let Some(link) = links.get(node) else {
            tracing::debug!(%node, "no link to the node (not known as up yet): message not forwarded");
            return None;
        };
        if link.state.queued.load(Ordering::Relaxed) >= QUEUE_LIMIT {
            return None;
        }
        link.state.queued.fetch_add(1, Ordering::Relaxed);
        link.tx.send((Arc::clone(msg), to)).ok().map(|()| link)
    }
}

impl Forwarder for Links {
    fn forward(&self, msg: &Arc<Message>, forwards: Vec<Forward>) -> Forwarded {
        let links = self.links.read().unwrap_or_else(|p| p.into_inner());
        let mut sent: Vec<&NodeName> = Vec::with_capacity(forwards.len());
        let mut dropped = 0;
        let mut backlogged: Vec<Arc<LinkState>> = Vec::new();
        for f in &forwards {
            let to = ForwardFor {
                plain: f.plain,
                groups: f.groups.clone(),
            };
            match self.send(&links, &f.node, msg, to) {
                None => dropped += 1,
                Some(link) if link.state.backlogged(HIGH_WATER) => backlogged.push(Arc::clone(&link.state)),
                Some(_) => {}
            }
            sent.push(&f.node);
        }
        if msg.retain {
            // Every node keeps every retained message (its own subscribers of
            // tomorrow get it on subscribe): the others get it for that alone.
            for node in links.keys() {
                if !sent.contains(&node) {
                    self.send(&links, node, msg, ForwardFor::default());
                }
            }
        }
        let backlog = (!backlogged.is_empty()).then(|| -> Backlog {
            Box::pin(async move {
                let all = async {
                    for state in &backlogged {
                        state.drained().await;
                    }
                };
                let _ = tokio::time::timeout(BACKLOG_WAIT, all).await;
            })
        });
        Forwarded { dropped, backlog }
    }
}

/// One link: connect, forward, and connect again after a failure.
async fn run(
    node: NodeName,
    address: String,
    me: NodeName,
    secret: String,
    mut rx: mpsc::UnboundedReceiver<(Arc<Message>, ForwardFor)>,
    state: Arc<LinkState>,
) {
    // Sent at QoS 1 and not yet acknowledged, oldest first (sent again after a reconnect).
    let mut inflight: VecDeque<(u16, Arc<Message>, ForwardFor)> = VecDeque::new();
    let mut next_pkid: u16 = 0;
    let mut logged = false;
    loop {
        match TcpStream::connect(&address).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let outcome = session(
                    stream,
                    &me,
                    &secret,
                    &mut rx,
                    &state,
                    &mut inflight,
                    &mut next_pkid,
                )
                .await;
                state.set_connected(false);
                match outcome {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(%node, %address, "cluster link broken (connecting again): {e}");
                        logged = true;
                    }
                }
            }
            Err(e) if !logged => {
                logged = true;
                tracing::warn!(%node, %address, "cluster link: cannot connect (retrying): {e}");
            }
            Err(_) => {}
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// One connection of a link; `Ok` when the queue closed (the link ended).
async fn session(
    mut stream: TcpStream,
    me: &str,
    secret: &str,
    rx: &mut mpsc::UnboundedReceiver<(Arc<Message>, ForwardFor)>,
    state: &LinkState,
    inflight: &mut VecDeque<(u16, Arc<Message>, ForwardFor)>,
    next_pkid: &mut u16,
) -> Result<(), String> {
    let codec = Codec::new(ProtocolVersion::V5, 256 * 1024 * 1024);
    let mut out = BytesMut::new();
    let connect = Connect {
        protocol: ProtocolVersion::V5,
        client_id: format!("$node/{me}"),
        clean_start: true,
        keepalive: KEEPALIVE_SECS,
        username: Some(me.to_string()),
        password: Some(bytes::Bytes::copy_from_slice(secret.as_bytes())),
        ..Connect::default()
    };
    codec
        .encode(&Packet::Connect(Box::new(connect)), &mut out, None)
        .map_err(|e| e.to_string())?;
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    out.clear();
    let mut inbuf = BytesMut::with_capacity(4096);
    // CONNACK.
    loop {
        if let Some(p) = codec.decode(&mut inbuf).map_err(|e| e.to_string())? {
            match p {
                Packet::ConnAck(a) if a.code == 0 => break,
                Packet::ConnAck(a) => return Err(format!("refused by the node (CONNACK 0x{:02x})", a.code)),
                other => return Err(format!("expected CONNACK, got {other:?}")),
            }
        }
        if stream.read_buf(&mut inbuf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed before CONNACK".into());
        }
    }
    // What was not acknowledged goes again first.
    for (pkid, msg, to) in inflight.iter() {
        let mut p = wire::encode(msg, to, *pkid);
        p.dup = true;
        codec
            .encode(&Packet::Publish(p), &mut out, None)
            .map_err(|e| e.to_string())?;
    }
    let (mut reader, mut writer) = stream.into_split();
    let keepalive = Duration::from_secs(u64::from(KEEPALIVE_SECS));
    let mut ping = tokio::time::interval(keepalive / 2);
    ping.tick().await;
    let mut heard = tokio::time::Instant::now();
    state.set_connected(true);
    loop {
        if !out.is_empty() {
            match tokio::time::timeout(keepalive, writer.write_all(&out)).await {
                Ok(written) => written.map_err(|e| e.to_string())?,
                Err(_) => return Err(format!("the node took nothing for {keepalive:?}")),
            }
            out.clear();
        }
        let room = inflight.len() < WINDOW;
        tokio::select! {
            m = rx.recv(), if room => {
                let Some((msg, to)) = m else { return Ok(()) };
                state.taken();
                push(&codec, &mut out, inflight, next_pkid, msg, to)?;
                // Take what else is queued: one write for a burst.
                while inflight.len() < WINDOW && out.len() < 256 * 1024 {
                    match rx.try_recv() {
                        Ok((msg, to)) => {
                            state.taken();
                            push(&codec, &mut out, inflight, next_pkid, msg, to)?;
                        }
                        Err(_) => break,
                    }
                }
            }
            n = reader.read_buf(&mut inbuf) => {
                if n.map_err(|e| e.to_string())? == 0 {
                    return Err("closed by the node".into());
                }
                heard = tokio::time::Instant::now();
                while let Some(p) = codec.decode(&mut inbuf).map_err(|e| e.to_string())? {
                    match p {
                        Packet::PubAck(a) => {
                            if let Some(i) = inflight.iter().position(|(id, _, _)| *id == a.pkid) {
                                inflight.remove(i);
                            }
                        }
                        Packet::PingResp => {}
                        Packet::Disconnect(d) => return Err(format!("DISCONNECT 0x{:02x} from the node", d.reason)),
                        other => return Err(format!("unexpected packet from the node: {other:?}")),
                    }
                }
            }
            _ = ping.tick() => {
                if heard.elapsed() > keepalive {
                    return Err(format!("the node did not answer for {keepalive:?}"));
                }
                codec.encode(&Packet::PingReq, &mut out, None).map_err(|e| e.to_string())?;
            }
        }
    }
}

fn push(
    codec: &Codec,
    out: &mut BytesMut,
    inflight: &mut VecDeque<(u16, Arc<Message>, ForwardFor)>,
    next_pkid: &mut u16,
    msg: Arc<Message>,
    to: ForwardFor,
) -> Result<(), String> {
    let pkid = if msg.qos == QoS::AtMostOnce {
        0
    } else {
        // Packet ids cycle over 1..=65535; the window keeps them unique.
        *next_pkid = next_pkid.wrapping_add(1).max(1);
        *next_pkid
    };
    codec
        .encode(&Packet::Publish(wire::encode(&msg, &to, pkid)), out, None)
        .map_err(|e| e.to_string())?;
    if pkid != 0 {
        inflight.push_back((pkid, msg, to));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backlogged_link() -> Arc<LinkState> {
        let state = Arc::new(LinkState::default());
        state.set_connected(true);
        state.queued.store(HIGH_WATER + 1, Ordering::Relaxed);
        state
    }

    #[tokio::test]
    async fn a_publisher_waits_until_the_queue_is_down_to_the_low_water_mark() {
        let state = backlogged_link();
        assert!(state.backlogged(HIGH_WATER));
        let waiter = tokio::spawn({
            let state = Arc::clone(&state);
            async move { state.drained().await }
        });
        // The task takes messages: the waiter is released exactly when the
        // queue reaches LOW_WATER, not before.
        while state.queued.load(Ordering::Relaxed) > LOW_WATER + 1 {
            state.taken();
        }
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "released above the low water mark");
        state.taken();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("released at the low water mark")
            .expect("waiter");
    }

    #[tokio::test]
    async fn a_link_that_loses_its_connection_releases_its_publishers() {
        let state = backlogged_link();
        let waiter = tokio::spawn({
            let state = Arc::clone(&state);
            async move { state.drained().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        state.set_connected(false);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("released when the link is down")
            .expect("waiter");
        assert!(
            !state.backlogged(HIGH_WATER),
            "a link not connected holds nobody back"
        );
    }
}
