//! The publishers (rumqttc, MQTT 3.1.1, clean session, QoS 1), on a node
//! chosen at random on every connect: they record every PUBACK they
//! receive, and every publish they give up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, Incoming, Outgoing, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::rig::{nodelay, pick, NodeAddrs};
use crate::support::v4_options;
use crate::world::{lock, Rng, World};
use crate::{CONNECT_TIMEOUT, PUBACK_TIMEOUT, PUBLISHERS, PUBLISHER_STAY, PUBLISH_PAUSE, RETRY_PAUSE};

/// The publishers' connections that got a CONNACK, in all.
pub(crate) static CONNECTS: AtomicUsize = AtomicUsize::new(0);

/// Starts [`PUBLISHERS`] publisher tasks.
pub(crate) fn start_publishers(
    world: &Arc<World>,
    nodes: &watch::Receiver<NodeAddrs>,
    seed: u64,
) -> Vec<JoinHandle<()>> {
    (0..PUBLISHERS)
        .map(|k| {
            let rng = Rng::new(seed.wrapping_add(2000 + k as u64));
            tokio::spawn(publisher(k, world.clone(), nodes.clone(), rng))
        })
        .collect()
}

/// Tells the publishers to stop (each finishes the message in hand) and
/// waits until each has.
pub(crate) async fn stop_publishers(world: &World, publishers: Vec<JoinHandle<()>>) {
    world.stop_publishing.store(true, Ordering::SeqCst);
    for p in publishers {
        tokio::time::timeout(PUBACK_TIMEOUT + CONNECT_TIMEOUT + Duration::from_secs(5), p)
            .await
            .expect("a publisher did not stop")
            .expect("publisher task");
    }
    world.note("publishers stopped");
}

/// A publisher (clean session) on a node chosen at random: one QoS 1
/// message at a time, counted as acknowledged only when its PUBACK arrived.
/// A message without PUBACK is published again on a new connection as a new
/// attempt (`-a<N>`), so a stored-but-unacknowledged attempt is never
/// mistaken for a repeat. After [`PUBLISHER_STAY`] messages it disconnects
/// and goes to another node.
async fn publisher(k: usize, world: Arc<World>, nodes: watch::Receiver<NodeAddrs>, mut rng: Rng) {
    let id = format!("chaos-pub-{k}");
    let mut seq: u64 = 0;
    let mut attempt: u32 = 0;
    let mut last_node = None;
    while !world.stop_publishing.load(Ordering::SeqCst) {
        let r = rng.below(1 << 32);
        let stay = rng.below(PUBLISHER_STAY.1 - PUBLISHER_STAY.0 + 1) + PUBLISHER_STAY.0;
        let picked = pick(&nodes.borrow(), last_node, r).or_else(|| pick(&nodes.borrow(), None, r));
        let Some((node, addr)) = picked else {
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        };
        last_node = Some(node);
        let (client, mut events) = AsyncClient::new(v4_options(addr, &id, true), 16);
        nodelay(&mut events);
        match tokio::time::timeout(CONNECT_TIMEOUT, events.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(ack)))) if ack.code == ConnectReturnCode::Success => {
                CONNECTS.fetch_add(1, Ordering::SeqCst);
                world.note(format!("{id}: connected to node-{node}"));
            }
            _ => {
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        }
        let mut failed = false;
        for _ in 0..stay {
            if world.stop_publishing.load(Ordering::SeqCst) {
                return;
            }
            let topic = format!("chaos/{k}/{}", seq % 3);
            let payload = format!("p{k}-{seq:06}-a{attempt}");
            world.attempts.fetch_add(1, Ordering::SeqCst);
            client
                .publish(&topic, QoS::AtLeastOnce, false, payload.clone())
                .await
                .expect("queue PUBLISH");
            let outcome = puback(&mut events).await;
            let now = world.now();
            match outcome {
                Ok(()) => {
                    lock(&world.acked).insert(payload, now);
                    {
                        let mut last = lock(&world.last_ack);
                        *last = last.max(now);
                    }
                    seq += 1;
                    attempt = 0;
                    tokio::time::sleep(PUBLISH_PAUSE).await;
                }
                Err(why) => {
                    lock(&world.unacked).push((payload, now, format!("node-{node}: {why}")));
                    attempt += 1;
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            continue;
        }
        // Leaves with a DISCONNECT (bounded: the node may be gone).
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(ev) = events.poll().await {
                if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                    return;
                }
            }
        })
        .await;
    }
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
