//! The MQTT clients of the run (rumqttc, MQTT 3.1.1): persistent subscribers
//! that record every arrival and every PUBACK they write, and QoS 1
//! publishers that record every PUBACK they receive.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, Incoming, Outgoing, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::db::Db;
use crate::support::pgsql::{sql_literal, wait_for_db};
use crate::support::{v4_options, V4Client, TIMEOUT};
use crate::world::{lock, Arrival, Repeat, SubLog, World};
use crate::{CONNECT_TIMEOUT, FILTER, PUBACK_TIMEOUT, PUBLISHERS, PUBLISH_PAUSE, RETRY_PAUSE};

/// A subscriber task and how to reach it.
pub(crate) struct Sub {
    pub(crate) id: String,
    pub(crate) log: Arc<Mutex<SubLog>>,
    pub(crate) tx: mpsc::UnboundedSender<SubCmd>,
    task: JoinHandle<()>,
}

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

/// PUBACKs leave at once (no Nagle delay): a PUBACK reported as written is
/// on its way, not held in the socket's send queue where an abrupt close
/// would discard it.
fn nodelay(events: &mut EventLoop) {
    let mut o = events.network_options();
    o.set_tcp_nodelay(true);
    events.set_network_options(o);
}

fn payload_text(p: &rumqttc::Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

// ---------------------------------------------------------------------------
// Starting and stopping
// ---------------------------------------------------------------------------

/// Every subscription exists before the first publish: each subscriber
/// connects once with a persistent session, subscribes to [`FILTER`] and
/// disconnects, and the plugin has stored its subscription and position.
pub(crate) async fn subscribe_before_the_run(broker: SocketAddr, db: &mut Db, sub_ids: &[String]) {
    for id in sub_ids {
        let (mut c, _) = V4Client::connect(v4_options(broker, id, false)).await;
        c.subscribe(FILTER, QoS::AtLeastOnce).await;
        c.disconnect().await;
        for table in ["mqtt_sub", "mqtt_acked"] {
            let pg = db.live(Instant::now() + TIMEOUT).await.unwrap();
            wait_for_db(
                pg,
                &format!(
                    "select count(*) from {table} where clientid = {} and topic = {}",
                    sql_literal(id),
                    sql_literal(FILTER)
                ),
                Some(1),
            )
            .await;
        }
    }
}

/// Starts a task for each subscriber and waits until every one has connected.
pub(crate) async fn start_subscribers(
    sub_ids: &[String],
    world: &Arc<World>,
    addr: &watch::Receiver<SocketAddr>,
) -> Vec<Sub> {
    let mut subs = Vec::new();
    for id in sub_ids {
        let log = Arc::new(Mutex::new(SubLog::default()));
        let (tx, rx) = mpsc::unbounded_channel();
        let subscriber = Subscriber {
            id: id.clone(),
            world: world.clone(),
            addr: addr.clone(),
            log: log.clone(),
            cmds: rx,
            drop_after: None,
        };
        let task = tokio::spawn(subscriber.run());
        subs.push(Sub {
            id: id.clone(),
            log,
            tx,
            task,
        });
    }
    let deadline = Instant::now() + TIMEOUT;
    while subs.iter().any(|s| lock(&s.log).connects == 0) {
        assert!(Instant::now() < deadline, "the subscribers did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    subs
}

/// Tells every subscriber to stop and waits until each has.
pub(crate) async fn stop_subscribers(subs: &mut [Sub]) {
    for s in subs.iter() {
        let _ = s.tx.send(SubCmd::Stop);
    }
    for s in subs.iter_mut() {
        tokio::time::timeout(TIMEOUT, &mut s.task)
            .await
            .unwrap_or_else(|_| panic!("{} did not stop", s.id))
            .expect("subscriber task");
    }
}

/// Starts [`PUBLISHERS`] publisher tasks.
pub(crate) fn start_publishers(
    world: &Arc<World>,
    addr: &watch::Receiver<SocketAddr>,
) -> Vec<JoinHandle<()>> {
    (0..PUBLISHERS)
        .map(|k| tokio::spawn(publisher(k, world.clone(), addr.clone())))
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

// ---------------------------------------------------------------------------
// Subscriber
// ---------------------------------------------------------------------------

/// A persistent subscriber (clean session false, manual acks): acknowledges
/// every PUBLISH as soon as it is polled and records when each PUBACK was
/// written. It subscribed once before the run; on reconnect it relies on its
/// session (restored after a broker restart), or subscribes again when told
/// it has none.
struct Subscriber {
    id: String,
    world: Arc<World>,
    addr: watch::Receiver<SocketAddr>,
    log: Arc<Mutex<SubLog>>,
    cmds: mpsc::UnboundedReceiver<SubCmd>,
    /// Armed by [`SubCmd::DropAfter`]: PUBLISHes to go until the drop, and
    /// how long to stay down then.
    drop_after: Option<(u64, Duration)>,
}

impl Subscriber {
    async fn run(mut self) {
        loop {
            let broker = *self.addr.borrow();
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
            if !self.stay_down(down).await {
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
        let mut connected = false;
        let connect_deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            tokio::select! {
                cmd = self.cmds.recv() => match cmd {
                    Some(SubCmd::Drop { down }) => {
                        self.world.note(format!(
                            "{id}: connection dropped by the schedule ({}), down {down:?}",
                            if connected { "connected" } else { "not connected" }
                        ));
                        return Some(down);
                    }
                    Some(SubCmd::DropAfter { n, down }) => self.drop_after = Some((n, down)),
                    Some(SubCmd::Stop) | None => return None,
                },
                _ = tokio::time::sleep_until(connect_deadline), if !connected => return Some(RETRY_PAUSE),
                ev = events.poll() => match ev {
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                        if ack.code != ConnectReturnCode::Success {
                            self.world.note(format!("{id}: CONNACK {:?}", ack.code));
                            return Some(RETRY_PAUSE);
                        }
                        connected = true;
                        self.on_connected(broker, client, ack.session_present);
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let payload = self.record_arrival(&p);
                        if let Some(down) = self.mid_stream_drop(&payload) {
                            return Some(down);
                        }
                        client.try_ack(&p).expect("queue PUBACK");
                        unwritten.insert(p.pkid, payload);
                    }
                    Ok(Event::Outgoing(Outgoing::PubAck(pkid))) => {
                        if let Some(payload) = unwritten.remove(&pkid) {
                            let now = self.world.now();
                            lock(&self.log).ack_written.entry(payload).or_insert(now);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if connected {
                            self.world.note(format!("{id}: connection ended: {e}"));
                        }
                        return Some(RETRY_PAUSE);
                    }
                },
            }
        }
    }

    /// A successful CONNACK: counted, and without a session the subscription
    /// is made again.
    fn on_connected(&self, broker: SocketAddr, client: &AsyncClient, session_present: bool) {
        let mut l = lock(&self.log);
        l.connects += 1;
        l.connected = true;
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
    }

    /// Records the arrival of `p` (a repeat when its PUBACK was written
    /// before) and returns its payload.
    fn record_arrival(&self, p: &rumqttc::Publish) -> String {
        let payload = payload_text(p);
        let now = self.world.now();
        let mut l = lock(&self.log);
        if let Some(&acked_at) = l.ack_written.get(&payload) {
            l.repeats.push(Repeat {
                payload: payload.clone(),
                acked_at,
                again_at: now,
            });
        } else if l.received.contains_key(&payload) {
            l.redelivered_before_ack += 1;
        }
        let arrival = Arrival {
            at: now,
            connection: l.connects,
            pkid: p.pkid,
            dup: p.dup,
        };
        l.received.entry(payload.clone()).or_default().push(arrival);
        payload
    }

    /// Counts down an armed mid-stream drop: how long to stay down when it
    /// fires on this PUBLISH (which is then not acknowledged).
    fn mid_stream_drop(&mut self, payload: &str) -> Option<Duration> {
        let (n, down) = self.drop_after?;
        if n <= 1 {
            self.drop_after = None;
            lock(&self.log).mid_stream_drops += 1;
            self.world.note(format!(
                "{}: connection dropped mid-stream on receiving {payload} (not acknowledged), down {down:?}",
                self.id
            ));
            return Some(down);
        }
        self.drop_after = Some((n - 1, down));
        None
    }

    /// Stays disconnected for `down`, taking the commands that come
    /// meanwhile: false when told to stop.
    async fn stay_down(&mut self, down: Duration) -> bool {
        let until = Instant::now() + down;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                cmd = self.cmds.recv() => match cmd {
                    Some(SubCmd::Drop { .. }) => self.world.note(format!("{}: drop skipped (not connected)", self.id)),
                    Some(SubCmd::DropAfter { n, down }) => self.drop_after = Some((n, down)),
                    Some(SubCmd::Stop) | None => return false,
                },
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Publisher
// ---------------------------------------------------------------------------

/// A publisher (clean session): one QoS 1 message at a time, counted as
/// acknowledged only when its PUBACK arrived. A message without PUBACK is
/// published again on a new connection as a new attempt (`-a<N>`), so every
/// attempt has its own payload and a stored-but-unacknowledged attempt can
/// never be mistaken for a repeat.
async fn publisher(k: usize, world: Arc<World>, addr: watch::Receiver<SocketAddr>) {
    let id = format!("chaos-pub-{k}");
    let mut seq: u64 = 0;
    let mut attempt: u32 = 0;
    loop {
        if world.stop_publishing.load(Ordering::SeqCst) {
            return;
        }
        let broker = *addr.borrow();
        let (client, mut events) = AsyncClient::new(v4_options(broker, &id, true), 16);
        nodelay(&mut events);
        match tokio::time::timeout(CONNECT_TIMEOUT, events.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(ack)))) if ack.code == ConnectReturnCode::Success => {}
            _ => {
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        }
        loop {
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
                    lock(&world.unacked).push((payload, now, why));
                    attempt += 1;
                    break;
                }
            }
        }
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
