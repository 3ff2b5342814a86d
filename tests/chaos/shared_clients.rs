//! The MQTT clients' common part (rumqttc, MQTT 3.1.1), shared by the
//! single-node and the cluster chaos tests: the subscriber tasks' handles,
//! their common state and what every subscriber does the same way (record
//! an arrival, count down a mid-stream drop, stay down), the subscriptions
//! made before the run, and the publishers' connect, sequence of messages
//! and PUBACK wait. What differs (where a client connects, moves between
//! nodes) stays in each test's own `clients` (and `publishers`) module.
//!
//! It uses the including test's `CONNECT_TIMEOUT`, `PUBACK_TIMEOUT`,
//! `PUBLISH_PAUSE` and `FILTER`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, Incoming, Outgoing, Publish, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::support::pgsql::{sql_literal, wait_for_db};
use crate::support::{v4_options, V4Client, TIMEOUT};
use crate::world::{lock, Arrival, SubLog, World};
use crate::{CONNECT_TIMEOUT, FILTER, PUBACK_TIMEOUT, PUBLISH_PAUSE};

/// PUBACKs leave at once (no Nagle delay): a PUBACK reported as written is
/// on its way, not held in the socket's send queue where an abrupt close
/// would discard it.
pub(crate) fn nodelay(events: &mut EventLoop) {
    let mut o = events.network_options();
    o.set_tcp_nodelay(true);
    events.set_network_options(o);
}

pub(crate) fn payload_text(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

// ---------------------------------------------------------------------------
// Subscribers
// ---------------------------------------------------------------------------

/// A test's record of one subscriber, as the shared code sees it: the
/// [`SubLog`] in it (the single-node test's record is just that).
pub(crate) trait SubRecord: Default + Send + 'static {
    fn common(&self) -> &SubLog;
    fn common_mut(&mut self) -> &mut SubLog;
}

impl SubRecord for SubLog {
    fn common(&self) -> &SubLog {
        self
    }

    fn common_mut(&mut self) -> &mut SubLog {
        self
    }
}

/// A test's subscriber commands: every subscriber can be told to stop.
pub(crate) trait StopCmd: Send + 'static {
    const STOP: Self;
}

/// A subscriber task and how to reach it.
pub(crate) struct Sub<L, C> {
    pub(crate) id: String,
    pub(crate) log: Arc<Mutex<L>>,
    pub(crate) tx: mpsc::UnboundedSender<C>,
    task: JoinHandle<()>,
}

impl<L: SubRecord, C> Sub<L, C> {
    /// Every arrival so far, repeats included.
    pub(crate) fn arrivals(&self) -> usize {
        lock(&self.log).common().received.values().map(Vec::len).sum()
    }

    /// Its connections that got a CONNACK so far.
    pub(crate) fn connects(&self) -> usize {
        lock(&self.log).common().connects
    }
}

/// The state of a subscriber task that both tests' subscribers have; `own`
/// is the test's own part (where it finds the broker or the nodes, ...).
/// Each test implements its loop (`run`) on its instance of this type.
pub(crate) struct Subscriber<L, C, X> {
    pub(crate) id: String,
    pub(crate) world: Arc<World>,
    pub(crate) log: Arc<Mutex<L>>,
    pub(crate) cmds: mpsc::UnboundedReceiver<C>,
    /// Armed by the `DropAfter` command: PUBLISHes to go until the drop,
    /// and how long to stay down then.
    pub(crate) drop_after: Option<(u64, Duration)>,
    pub(crate) own: X,
}

/// Starts a task for each subscriber (`own(i)` is subscriber `i`'s own
/// part, `run` its loop) and waits until every one has connected.
pub(crate) async fn start_subscribers<L, C, X, F>(
    sub_ids: &[String],
    world: &Arc<World>,
    mut own: impl FnMut(usize) -> X,
    run: impl Fn(Subscriber<L, C, X>) -> F,
) -> Vec<Sub<L, C>>
where
    L: SubRecord,
    F: Future<Output = ()> + Send + 'static,
{
    let mut subs = Vec::new();
    for (i, id) in sub_ids.iter().enumerate() {
        let log = Arc::new(Mutex::new(L::default()));
        let (tx, cmds) = mpsc::unbounded_channel();
        let subscriber = Subscriber {
            id: id.clone(),
            world: world.clone(),
            log: log.clone(),
            cmds,
            drop_after: None,
            own: own(i),
        };
        let task = tokio::spawn(run(subscriber));
        subs.push(Sub {
            id: id.clone(),
            log,
            tx,
            task,
        });
    }
    let deadline = Instant::now() + TIMEOUT;
    while subs.iter().any(|s| s.connects() == 0) {
        assert!(Instant::now() < deadline, "the subscribers did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    subs
}

/// Tells every subscriber to stop and waits until each has.
pub(crate) async fn stop_subscribers<L, C: StopCmd>(subs: &mut [Sub<L, C>]) {
    for s in subs.iter() {
        let _ = s.tx.send(C::STOP);
    }
    for s in subs.iter_mut() {
        tokio::time::timeout(TIMEOUT, &mut s.task)
            .await
            .unwrap_or_else(|_| panic!("{} did not stop", s.id))
            .expect("subscriber task");
    }
}

impl<L: SubRecord, C, X> Subscriber<L, C, X> {
    /// Records the arrival of `p` on connection `connection` (see
    /// [`SubLog::arrived`]) and returns its payload.
    pub(crate) fn record_arrival(&self, p: &Publish, connection: usize) -> String {
        let payload = payload_text(p);
        let arrival = Arrival {
            at: self.world.now(),
            connection,
            pkid: p.pkid,
            dup: p.dup,
        };
        lock(&self.log).common_mut().arrived(&payload, arrival);
        payload
    }

    /// Counts down an armed mid-stream drop: how long to stay down when it
    /// fires on this PUBLISH (which is then not acknowledged).
    pub(crate) fn mid_stream_drop(&mut self, payload: &str) -> Option<Duration> {
        let (n, down) = self.drop_after?;
        if n <= 1 {
            self.drop_after = None;
            lock(&self.log).common_mut().mid_stream_drops += 1;
            self.world.note(format!(
                "{}: connection dropped mid-stream on receiving {payload} (not acknowledged), down {down:?}",
                self.id
            ));
            return Some(down);
        }
        self.drop_after = Some((n - 1, down));
        None
    }

    /// Stays disconnected for `down`, handing each command that comes
    /// meanwhile to `take` (false: stop): false when told to stop.
    pub(crate) async fn stay_down(&mut self, down: Duration, take: fn(&mut Self, Option<C>) -> bool) -> bool {
        let until = Instant::now() + down;
        loop {
            // The command is taken once the select is over: `take` may
            // need the whole subscriber, `recv` borrows its receiver.
            let cmd = tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                cmd = self.cmds.recv() => cmd,
            };
            if !take(self, cmd) {
                return false;
            }
        }
    }
}

/// Every subscription exists before the first publish: each subscriber
/// connects once with a persistent session (to the address beside its id),
/// subscribes to [`FILTER`] and disconnects, and the plugin has stored its
/// subscription and position (read through `pg`).
pub(crate) async fn subscribe_before_the_run<'a>(
    pg: &tokio_postgres::Client,
    subs: impl IntoIterator<Item = (SocketAddr, &'a String)>,
) {
    for (addr, id) in subs {
        let (mut c, _) = V4Client::connect(v4_options(addr, id, false)).await;
        c.subscribe(FILTER, QoS::AtLeastOnce).await;
        c.disconnect().await;
        for table in ["mqtt_sub", "mqtt_acked"] {
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

// ---------------------------------------------------------------------------
// Publishers
// ---------------------------------------------------------------------------

/// A clean-session connection of publisher `id` to `addr`, once it has its
/// CONNACK; `None` when it has none within [`CONNECT_TIMEOUT`].
pub(crate) async fn connect_publisher(addr: SocketAddr, id: &str) -> Option<(AsyncClient, EventLoop)> {
    let (client, mut events) = AsyncClient::new(v4_options(addr, id, true), 16);
    nodelay(&mut events);
    match tokio::time::timeout(CONNECT_TIMEOUT, events.poll()).await {
        Ok(Ok(Event::Incoming(Incoming::ConnAck(ack)))) if ack.code == ConnectReturnCode::Success => {
            Some((client, events))
        }
        _ => None,
    }
}

/// Publisher `k`'s messages, one QoS 1 message at a time, counted as
/// acknowledged only when its PUBACK arrived. A message without PUBACK is
/// published again (on a new connection) as a new attempt (`-a<N>`), so
/// every attempt has its own payload and a stored-but-unacknowledged
/// attempt can never be mistaken for a repeat.
pub(crate) struct Messages {
    k: usize,
    seq: u64,
    attempt: u32,
}

impl Messages {
    pub(crate) fn new(k: usize) -> Messages {
        Messages {
            k,
            seq: 0,
            attempt: 0,
        }
    }

    /// Publishes the current message on `client` and waits for its PUBACK.
    /// Acknowledged, it is recorded in the world (`acked`, `last_ack`), the
    /// next message becomes current after [`PUBLISH_PAUSE`], and true is
    /// returned. Given up, it is recorded in `unacked` (why, after the node
    /// when there is one), its next attempt becomes current, and false is
    /// returned: the connection is done with.
    pub(crate) async fn publish(
        &mut self,
        world: &World,
        client: &AsyncClient,
        events: &mut EventLoop,
        node: Option<usize>,
    ) -> bool {
        let (k, seq, attempt) = (self.k, self.seq, self.attempt);
        let topic = format!("chaos/{k}/{}", seq % 3);
        let payload = format!("p{k}-{seq:06}-a{attempt}");
        world.attempts.fetch_add(1, Ordering::SeqCst);
        client
            .publish(&topic, QoS::AtLeastOnce, false, payload.clone())
            .await
            .expect("queue PUBLISH");
        let outcome = puback(events).await;
        let now = world.now();
        match outcome {
            Ok(()) => {
                lock(&world.acked).insert(payload, now);
                {
                    let mut last = lock(&world.last_ack);
                    *last = last.max(now);
                }
                self.seq += 1;
                self.attempt = 0;
                tokio::time::sleep(PUBLISH_PAUSE).await;
                true
            }
            Err(why) => {
                let why = match node {
                    Some(n) => format!("node-{n}: {why}"),
                    None => why,
                };
                lock(&world.unacked).push((payload, now, why));
                self.attempt += 1;
                false
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

/// Tells the publishers to stop (each finishes the message in hand) and
/// waits until each has, each within `within`.
pub(crate) async fn stop_publishers(world: &World, publishers: Vec<JoinHandle<()>>, within: Duration) {
    world.stop_publishing.store(true, Ordering::SeqCst);
    for p in publishers {
        tokio::time::timeout(within, p)
            .await
            .expect("a publisher did not stop")
            .expect("publisher task");
    }
    world.note("publishers stopped");
}
