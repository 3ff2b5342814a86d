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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use hooks_spec::{Message, ProtocolVersion, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::wire::{self, ForwardFor};
use crate::codec::{Codec, Connect, Packet};
use crate::router::{Forward, NodeName};
use crate::shared::Forwarder;

/// Unacknowledged QoS 1 messages on one link.
const WINDOW: usize = 4096;
/// Messages queued for a node beyond this are dropped (a node that cannot
/// keep up, or is unreachable and not yet declared down), and counted.
const QUEUE_LIMIT: usize = 1_000_000;
/// Keep alive of a link (it is pinged at half of it).
const KEEPALIVE_SECS: u16 = 10;
/// Between connection attempts.
const RECONNECT: Duration = Duration::from_millis(200);

struct Link {
    tx: mpsc::UnboundedSender<(Arc<Message>, ForwardFor)>,
    queued: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
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
        let queued = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(run(
            Arc::clone(node),
            address.to_string(),
            Arc::clone(&self.me),
            self.secret.clone(),
            rx,
            Arc::clone(&queued),
        ));
        links.insert(Arc::clone(node), Link { tx, queued, task });
    }

    /// Ends the link to `node` (it left the cluster or is down); what was
    /// queued for it is dropped.
    pub fn disconnect(&self, node: &NodeName) {
        let link = self.links.write().unwrap_or_else(|p| p.into_inner()).remove(node);
        if let Some(link) = link {
            link.task.abort();
        }
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

    /// Queues `msg` for `node`; false when it was dropped.
    fn send(
        &self,
        links: &HashMap<NodeName, Link>,
        node: &NodeName,
        msg: &Arc<Message>,
        to: ForwardFor,
    ) -> bool {
        let Some(link) = links.get(node) else {
            tracing::debug!(%node, "no link to the node (not known as up yet): message not forwarded");
            return false;
        };
        if link.queued.load(Ordering::Relaxed) >= QUEUE_LIMIT {
            return false;
        }
        link.queued.fetch_add(1, Ordering::Relaxed);
        link.tx.send((Arc::clone(msg), to)).is_ok()
    }
}

impl Forwarder for Links {
    fn forward(&self, msg: &Arc<Message>, forwards: Vec<Forward>) -> usize {
        let links = self.links.read().unwrap_or_else(|p| p.into_inner());
        let mut sent: Vec<&NodeName> = Vec::with_capacity(forwards.len());
        let mut dropped = 0;
        for f in &forwards {
            let to = ForwardFor {
                plain: f.plain,
                groups: f.groups.clone(),
            };
            if !self.send(&links, &f.node, msg, to) {
                dropped += 1;
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
        dropped
    }
}

/// One link: connect, forward, and connect again after a failure.
async fn run(
    node: NodeName,
    address: String,
    me: NodeName,
    secret: String,
    mut rx: mpsc::UnboundedReceiver<(Arc<Message>, ForwardFor)>,
    queued: Arc<AtomicUsize>,
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
                    &queued,
                    &mut inflight,
                    &mut next_pkid,
                )
                .await;
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
    queued: &AtomicUsize,
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
    let mut ping = tokio::time::interval(Duration::from_secs(u64::from(KEEPALIVE_SECS) / 2));
    ping.tick().await;
    loop {
        if !out.is_empty() {
            writer.write_all(&out).await.map_err(|e| e.to_string())?;
            out.clear();
        }
        let room = inflight.len() < WINDOW;
        tokio::select! {
            m = rx.recv(), if room => {
                let Some((msg, to)) = m else { return Ok(()) };
                queued.fetch_sub(1, Ordering::Relaxed);
                push(&codec, &mut out, inflight, next_pkid, msg, to)?;
                // Take what else is queued: one write for a burst.
                while inflight.len() < WINDOW && out.len() < 256 * 1024 {
                    match rx.try_recv() {
                        Ok((msg, to)) => {
                            queued.fetch_sub(1, Ordering::Relaxed);
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
