//! The MQTT clients of the run (rumqttc, MQTT 3.1.1): persistent subscribers
//! that record every arrival and every PUBACK they write, and QoS 1
//! publishers that record every PUBACK they receive, all on the one broker.
//! Their common part with the cluster test's clients is in
//! [`crate::shared_clients`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, Incoming, Outgoing, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::shared_clients::{self, connect_publisher, nodelay, Messages, StopCmd};
use crate::support::v4_options;
use crate::world::{lock, SubLog, World};
use crate::{CONNECT_TIMEOUT, FILTER, PUBLISHERS, RETRY_PAUSE};

/// A subscriber task and how to reach it.
pub(crate) type Sub = shared_clients::Sub<SubLog, SubCmd>;

pub(crate) enum SubCmd {
    /// Drop the connection now (no DISCONNECT), reconnect after `down`.
    Drop {
        down: Duration,
    },
    /// Drop the connection when the `n`-th next PUBLISH arrives (before
    /// acknowledging it), reconnect after `down`.
    DropAfter {
        n: u64,
        down: Duration,
    },
    Stop,
}

impl StopCmd for SubCmd {
    const STOP: SubCmd = SubCmd::Stop;
}

// ---------------------------------------------------------------------------
// Starting
// ---------------------------------------------------------------------------

/// Starts [`PUBLISHERS`] publisher tasks.
pub(crate) fn start_publishers(
    world: &Arc<World>,
    addr: &watch::Receiver<SocketAddr>,
) -> Vec<JoinHandle<()>> {
    (0..PUBLISHERS)
        .map(|k| tokio::spawn(publisher(k, world.clone(), addr.clone())))
        .collect()
}

// ---------------------------------------------------------------------------
// Subscriber
// ---------------------------------------------------------------------------

/// A persistent subscriber (clean session false, manual acks): acknowledges
/// every PUBLISH as soon as it is polled and records when each PUBACK was
/// written. It subscribed once before the run; on reconnect it relies on its
/// session (restored after a broker restart), or subscribes again when told
/// it has none. Its own part is where it finds the broker. Started with
/// [`shared_clients::start_subscribers`].
pub(crate) type Subscriber = shared_clients::Subscriber<SubLog, SubCmd, watch::Receiver<SocketAddr>>;

impl Subscriber {
    pub(crate) async fn run(mut self) {
        loop {
            let broker = *self.own.borrow();
            let mut opts = v4_options(broker, &self.id, false);
            opts.set_manual_acks(true);
            // Acks are queued with try_ack from the task that polls: room for all.
            let (client, mut events) = AsyncClient::new(opts, 8192);
            nodelay(&mut events);
            let Some(down) = self.connection(broker, &client, &mut events).await else {
                return;
            };
            // Abrupt: the socket is closed without DISCONNECT.
            drop(events);
            drop(client);
            lock(&self.log).connected = false;
            if !self.stay_down(down, Self::while_down).await {
                return;
            }
        }
    }

    /// Polls one connection until it ends (dropped by the schedule or
    /// mid-stream, closed by the broker, or not established in time): how
    /// long to stay down then, or `None` when told to stop.
    async fn connection(
        &mut self,
        broker: SocketAddr,
        client: &AsyncClient,
        events: &mut EventLoop,
    ) -> Option<Duration> {
        let id = self.id.clone();
        let mut unwritten: HashMap<u16, String> = HashMap::new();
        // Its number once it has its CONNACK (1 = the subscriber's first).
        let mut connected: Option<usize> = None;
        let connect_deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            tokio::select! {
                cmd = self.cmds.recv() => match cmd {
                    Some(SubCmd::Drop { down }) => {
                        self.world.note(format!(
                            "{id}: connection dropped by the schedule ({}), down {down:?}",
                            if connected.is_some() { "connected" } else { "not connected" }
                        ));
                        return Some(down);
                    }
                    Some(SubCmd::DropAfter { n, down }) => self.drop_after = Some((n, down)),
                    Some(SubCmd::Stop) | None => return None,
                },
                _ = tokio::time::sleep_until(connect_deadline), if connected.is_none() => return Some(RETRY_PAUSE),
                ev = events.poll() => match ev {
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                        if ack.code != ConnectReturnCode::Success {
                            self.world.note(format!("{id}: CONNACK {:?}", ack.code));
                            return Some(RETRY_PAUSE);
                        }
                        connected = Some(self.on_connected(broker, client, ack.session_present));
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        // A PUBLISH comes after the CONNACK.
                        let payload = self.record_arrival(&p, connected.unwrap_or_default());
                        if let Some(down) = self.mid_stream_drop(&payload) {
                            return Some(down);
                        }
                        client.try_ack(&p).expect("queue PUBACK");
                        unwritten.insert(p.pkid, payload);
                    }
                    Ok(Event::Outgoing(Outgoing::PubAck(pkid))) => {
                        if let Some(payload) = unwritten.remove(&pkid) {
                            let now = self.world.now();
                            lock(&self.log)
                                .ack_written
                                .entry(payload)
                                .or_insert((now, connected.unwrap_or_default()));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if connected.is_some() {
                            self.world.note(format!("{id}: connection ended: {e}"));
                        }
                        return Some(RETRY_PAUSE);
                    }
                },
            }
        }
    }

    /// A successful CONNACK: counted (its number returned), and without a
    /// session the subscription is made again.
    fn on_connected(&self, broker: SocketAddr, client: &AsyncClient, session_present: bool) -> usize {
        let mut l = lock(&self.log);
        l.connects += 1;
        l.connected = true;
        let no = l.connects;
        drop(l);
        self.world.note(format!(
            "{}: connected to {broker} (session present: {session_present})",
            self.id
        ));
        if !session_present {
            // As an MQTT client must: no session, so subscribe
            // again (the broker may not have had the stored
            // session, e.g. PostgreSQL was down at the restart).
            client
                .try_subscribe(FILTER, QoS::AtLeastOnce)
                .expect("queue SUBSCRIBE");
        }
        no
    }

    /// A command while disconnected (see [`Subscriber::stay_down`]): false
    /// when told to stop.
    fn while_down(&mut self, cmd: Option<SubCmd>) -> bool {
        match cmd {
            Some(SubCmd::Drop { .. }) => self
                .world
                .note(format!("{}: drop skipped (not connected)", self.id)),
            Some(SubCmd::DropAfter { n, down }) => self.drop_after = Some((n, down)),
            Some(SubCmd::Stop) | None => return false,
        }
        true
    }
}

// ---------------------------------------------------------------------------
// Publisher
// ---------------------------------------------------------------------------

/// A publisher (clean session): [`Messages`] on a connection to the broker,
/// a new connection after each message given up.
async fn publisher(k: usize, world: Arc<World>, addr: watch::Receiver<SocketAddr>) {
    let id = format!("chaos-pub-{k}");
    let mut messages = Messages::new(k);
    loop {
        if world.stop_publishing.load(Ordering::SeqCst) {
            return;
        }
        let broker = *addr.borrow();
        let Some((client, mut events)) = connect_publisher(broker, &id).await else {
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        };
        loop {
            if world.stop_publishing.load(Ordering::SeqCst) {
                return;
            }
            if !messages.publish(&world, &client, &mut events, None).await {
                break;
            }
        }
    }
}
