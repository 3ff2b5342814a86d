//! The subscribers (rumqttc, MQTT 3.1.1), on a node chosen at random on
//! every (re)connect: persistent sessions that record every arrival with the
//! connection it came on, every PUBACK they write, and every connection
//! (node, CONNACK, end). The publishers are in [`crate::publishers`]; the
//! subscribers' common part with the single-node test's is in
//! [`crate::shared_clients`].

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, Outgoing, QoS};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::rig::{pick, NodeAddrs};
use crate::shared_clients::{self, nodelay, StopCmd, SubRecord};
use crate::support::v4_options;
use crate::world::{lock, Rng, SubLog as Common};
use crate::{CONNECT_TIMEOUT, FILTER, RETRY_PAUSE};

// ---------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------

/// One connection of a subscriber (connection `n` is `connections[n - 1]`).
#[derive(Clone, Debug)]
pub(crate) struct ConnRecord {
    pub(crate) node: usize,
    /// When the TCP connection and CONNECT were started.
    pub(crate) opened: f64,
    pub(crate) connack: Option<f64>,
    /// When it ended (dropped here, or closed by the node).
    pub(crate) ended: Option<f64>,
    /// The node closed it (not this side).
    pub(crate) closed_by_node: bool,
    /// Opened while the previous one (`n - 1`) was still connected.
    pub(crate) by_move: bool,
}

/// One subscriber's record: what every chaos subscriber records (its
/// `ack_written` keeps the latest PUBACK of a payload), and its
/// connections, moves and probes.
#[derive(Default)]
pub(crate) struct SubLog {
    pub(crate) common: Common,
    pub(crate) connections: Vec<ConnRecord>,
    /// Moves whose new connection got its CONNACK.
    pub(crate) moves: usize,
    /// The nodes probes came from (before the run).
    pub(crate) probes_from: HashSet<usize>,
}

impl SubRecord for SubLog {
    fn common(&self) -> &Common {
        &self.common
    }

    fn common_mut(&mut self) -> &mut Common {
        &mut self.common
    }
}

// ---------------------------------------------------------------------------
// Subscribers
// ---------------------------------------------------------------------------

/// A subscriber task and how to reach it.
pub(crate) type Sub = shared_clients::Sub<SubLog, SubCmd>;

pub(crate) enum SubCmd {
    /// Drop the connection now (no DISCONNECT), reconnect after `down`;
    /// `reply` gets the node of the next CONNACK.
    Drop {
        down: Duration,
        reply: Option<oneshot::Sender<usize>>,
    },
    /// Drop the connection when the `n`-th next PUBLISH arrives (before
    /// acknowledging it), reconnect after `down`.
    DropAfter {
        n: u64,
        down: Duration,
    },
    /// Connect to another node (draw `r` among those up) while connected:
    /// `reply` gets that node at its CONNACK, `None` when skipped.
    Move {
        r: u64,
        reply: oneshot::Sender<Option<usize>>,
    },
    Stop,
}

impl StopCmd for SubCmd {
    const STOP: SubCmd = SubCmd::Stop;
}

/// The first poll of an event loop (TCP connect, CONNECT, CONNACK): in a
/// task of its own, because rumqttc's connect is not cancel-safe (a poll
/// dropped in the middle would connect again on the next).
type Connecting = JoinHandle<(EventLoop, Result<Event, ConnectionError>)>;

/// One connection of a subscriber task.
struct Conn {
    /// Its number (1 = the subscriber's first in the run).
    no: usize,
    node: usize,
    client: AsyncClient,
    /// Until the first event: the task that connects.
    connecting: Option<Connecting>,
    /// From the first event on.
    events: Option<EventLoop>,
    connected: bool,
    deadline: Instant,
    /// Packet id -> payload of PUBACKs queued and not yet written.
    unwritten: HashMap<u16, String>,
}

impl Conn {
    /// The next event (cancel-safe).
    async fn poll(&mut self) -> Result<Event, ConnectionError> {
        if let Some(task) = self.connecting.as_mut() {
            let (events, first) = task.await.expect("connect task");
            self.connecting = None;
            self.events = Some(events);
            return first;
        }
        match self.events.as_mut() {
            Some(e) => e.poll().await,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The socket closes with the event loop, wherever it is.
        if let Some(task) = self.connecting.take() {
            task.abort();
        }
    }
}

/// What one turn of a subscriber's loop got.
enum Step {
    Cmd(Option<SubCmd>),
    Old(Result<Event, ConnectionError>),
    Cur(Result<Event, ConnectionError>),
    ConnectTimeout,
}

/// Polls `c`, or never returns when there is none.
async fn poll_opt(c: &mut Option<Conn>) -> Result<Event, ConnectionError> {
    match c {
        Some(c) => c.poll().await,
        None => std::future::pending().await,
    }
}

/// A subscriber's own part: where it finds the nodes, how it chooses, and
/// who waits for its next CONNACK.
pub(crate) struct Moving {
    nodes: watch::Receiver<NodeAddrs>,
    /// Its choices of node.
    rng: Rng,
    /// Gets the node of the next CONNACK.
    reply: Option<oneshot::Sender<usize>>,
    /// Gets the node of the CONNACK of the move under way.
    move_reply: Option<oneshot::Sender<Option<usize>>>,
}

impl Moving {
    /// Subscriber `i`'s, its choices drawn from `seed`.
    pub(crate) fn new(nodes: &watch::Receiver<NodeAddrs>, seed: u64, i: usize) -> Moving {
        Moving {
            nodes: nodes.clone(),
            rng: Rng::new(seed.wrapping_add(1000 + i as u64)),
            reply: None,
            move_reply: None,
        }
    }
}

/// A persistent subscriber (clean session false, manual acks): acknowledges
/// every PUBLISH as soon as it is polled, on the connection it came on. It
/// subscribed once before the run; on reconnect it relies on its session,
/// or subscribes again when told it has none. Started with
/// [`shared_clients::start_subscribers`].
pub(crate) type Subscriber = shared_clients::Subscriber<SubLog, SubCmd, Moving>;

impl Subscriber {
    pub(crate) async fn run(mut self) {
        loop {
            let r = self.own.rng.below(1 << 32);
            let Some(cur) = self.open(None, r, false) else {
                if !self.stay_down(RETRY_PAUSE, Self::while_down).await {
                    return;
                }
                continue;
            };
            let Some(down) = self.connection(cur).await else {
                return;
            };
            lock(&self.log).common.connected = false;
            if !self.stay_down(down, Self::while_down).await {
                return;
            }
        }
    }

    /// Starts a connection to the node at draw `r` among those up (other
    /// than `exclude`).
    fn open(&mut self, exclude: Option<usize>, r: u64, by_move: bool) -> Option<Conn> {
        let (node, addr) = pick(&self.own.nodes.borrow(), exclude, r)?;
        let mut opts = v4_options(addr, &self.id, false);
        opts.set_manual_acks(true);
        // Acks are queued with try_ack from the task that polls: room for all.
        let (client, mut events) = AsyncClient::new(opts, 8192);
        nodelay(&mut events);
        let mut l = lock(&self.log);
        l.connections.push(ConnRecord {
            node,
            opened: self.world.now(),
            connack: None,
            ended: None,
            closed_by_node: false,
            by_move,
        });
        Some(Conn {
            no: l.connections.len(),
            node,
            client,
            connecting: Some(tokio::spawn(async move {
                let first = events.poll().await;
                (events, first)
            })),
            events: None,
            connected: false,
            deadline: Instant::now() + CONNECT_TIMEOUT,
            unwritten: HashMap::new(),
        })
    }

    /// Records the end of connection `c` (by the node, or dropped here).
    fn ended(&self, c: &Conn, why: &str, by_node: bool) {
        let now = self.world.now();
        let mut l = lock(&self.log);
        let rec = &mut l.connections[c.no - 1];
        rec.ended = Some(now);
        rec.closed_by_node = by_node;
        drop(l);
        if c.connected {
            self.world.note(format!(
                "{}: connection {} (node-{}) ended: {why}",
                self.id, c.no, c.node
            ));
        }
    }

    /// Polls the connection `cur` (and, during a move, the one it replaces)
    /// until it ends: how long to stay down then, or `None` when told to stop.
    async fn connection(&mut self, mut cur: Conn) -> Option<Duration> {
        let mut old: Option<Conn> = None;
        loop {
            let (deadline, connected) = (cur.deadline, cur.connected);
            let step = tokio::select! {
                biased;
                cmd = self.cmds.recv() => Step::Cmd(cmd),
                ev = poll_opt(&mut old) => Step::Old(ev),
                ev = cur.poll() => Step::Cur(ev),
                _ = tokio::time::sleep_until(deadline), if !connected => Step::ConnectTimeout,
            };
            match step {
                Step::Cmd(Some(SubCmd::Drop { down, reply })) => {
                    self.own.reply = reply.or(self.own.reply.take());
                    self.world.note(format!(
                        "{}: connection {} (node-{}) dropped by the schedule, down {down:?}",
                        self.id, cur.no, cur.node
                    ));
                    self.end_all(&cur, old.as_ref(), "dropped here");
                    return Some(down);
                }
                Step::Cmd(Some(SubCmd::DropAfter { n, down })) => self.drop_after = Some((n, down)),
                Step::Cmd(Some(SubCmd::Move { r, reply })) => {
                    if !cur.connected || old.is_some() {
                        self.world
                            .note(format!("{}: move skipped (not connected)", self.id));
                        let _ = reply.send(None);
                        continue;
                    }
                    let Some(new) = self.open(Some(cur.node), r, true) else {
                        self.world
                            .note(format!("{}: move skipped (no other node up)", self.id));
                        let _ = reply.send(None);
                        continue;
                    };
                    self.world.note(format!(
                        "{}: moving: connection {} to node-{} while connection {} (node-{}) is open",
                        self.id, new.no, new.node, cur.no, cur.node
                    ));
                    self.own.move_reply = Some(reply);
                    old = Some(std::mem::replace(&mut cur, new));
                }
                Step::Cmd(Some(SubCmd::Stop) | None) => return None,
                Step::Old(ev) => self.on_old(&mut old, ev),
                Step::Cur(ev) => {
                    // What the old connection has received was sent before
                    // this event: it is looked at first.
                    self.drain_old(&mut old).await;
                    if let Some(down) = self.on_cur(&mut cur, old.as_ref(), ev) {
                        self.end_all(&cur, old.as_ref(), "dropped here");
                        return Some(down);
                    }
                }
                Step::ConnectTimeout => {
                    self.world.note(format!(
                        "{}: no CONNACK from node-{} within {CONNECT_TIMEOUT:?} (connection {})",
                        self.id, cur.node, cur.no
                    ));
                    self.end_all(&cur, old.as_ref(), "no CONNACK");
                    return Some(RETRY_PAUSE);
                }
            }
        }
    }

    /// Ends the connection(s) from this side.
    fn end_all(&mut self, cur: &Conn, old: Option<&Conn>, why: &str) {
        self.ended(cur, why, false);
        if let Some(o) = old {
            self.ended(o, why, false);
        }
        // A move whose connection never got its CONNACK.
        if let Some(r) = self.own.move_reply.take() {
            let _ = r.send(None);
        }
    }

    /// Takes every event the old connection already has.
    async fn drain_old(&mut self, old: &mut Option<Conn>) {
        while let Some(o) = old.as_mut() {
            match tokio::time::timeout(Duration::ZERO, o.poll()).await {
                Ok(ev) => self.on_old(old, ev),
                Err(_) => return,
            }
        }
    }

    /// An event of the connection a move replaces: it is read to its end
    /// (the node closes it), acknowledging what comes.
    fn on_old(&mut self, old: &mut Option<Conn>, ev: Result<Event, ConnectionError>) {
        let Some(o) = old.as_mut() else { return };
        match ev {
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                if let Some(payload) = self.record(&p, o.no) {
                    o.client.try_ack(&p).expect("queue PUBACK");
                    o.unwritten.insert(p.pkid, payload);
                }
            }
            Ok(Event::Outgoing(Outgoing::PubAck(pkid))) => self.ack_written(o, pkid),
            Ok(_) => {}
            Err(e) => {
                self.ended(o, &format!("closed by the node after the move ({e})"), true);
                *old = None;
            }
        }
    }

    /// An event of the current connection: how long to stay down when it
    /// ends the connection.
    fn on_cur(
        &mut self,
        cur: &mut Conn,
        old: Option<&Conn>,
        ev: Result<Event, ConnectionError>,
    ) -> Option<Duration> {
        match ev {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                if ack.code != ConnectReturnCode::Success {
                    self.world.note(format!(
                        "{}: CONNACK {:?} from node-{}",
                        self.id, ack.code, cur.node
                    ));
                    return Some(RETRY_PAUSE);
                }
                cur.connected = true;
                self.on_connected(cur, ack.session_present, old.is_some());
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                let payload = self.record(&p, cur.no)?;
                if let Some(down) = self.mid_stream_drop(&payload) {
                    return Some(down);
                }
                cur.client.try_ack(&p).expect("queue PUBACK");
                cur.unwritten.insert(p.pkid, payload);
            }
            Ok(Event::Outgoing(Outgoing::PubAck(pkid))) => self.ack_written(cur, pkid),
            Ok(_) => {}
            Err(e) => {
                if !cur.connected {
                    self.world.note(format!(
                        "{}: connection {} to node-{} failed: {e}",
                        self.id, cur.no, cur.node
                    ));
                }
                self.ended(cur, &e.to_string(), true);
                return Some(RETRY_PAUSE);
            }
        }
        None
    }

    /// A successful CONNACK: recorded; without a session the subscription
    /// is made again.
    fn on_connected(&mut self, cur: &Conn, session_present: bool, old_open: bool) {
        let now = self.world.now();
        let mut l = lock(&self.log);
        l.connections[cur.no - 1].connack = Some(now);
        l.common.connects += 1;
        l.common.connected = true;
        if l.connections[cur.no - 1].by_move {
            l.moves += 1;
        }
        drop(l);
        self.world.note(format!(
            "{}: connection {} connected to node-{} (session present: {session_present}{})",
            self.id,
            cur.no,
            cur.node,
            if old_open {
                "; the old connection is still open"
            } else {
                ""
            }
        ));
        if let Some(r) = self.own.reply.take() {
            let _ = r.send(cur.node);
        }
        if let Some(r) = self.own.move_reply.take() {
            let _ = r.send(Some(cur.node));
        }
        if !session_present {
            cur.client
                .try_subscribe(FILTER, QoS::AtLeastOnce)
                .expect("queue SUBSCRIBE");
        }
    }

    fn ack_written(&self, c: &mut Conn, pkid: u16) {
        if let Some(payload) = c.unwritten.remove(&pkid) {
            let now = self.world.now();
            lock(&self.log).common.ack_written.insert(payload, (now, c.no));
        }
    }

    /// Records the arrival of `p` on connection `no` (see
    /// [`Subscriber::record_arrival`]) and returns its payload; `None` for a
    /// probe (recorded apart, not acknowledged: QoS 0).
    fn record(&self, p: &rumqttc::Publish, no: usize) -> Option<String> {
        // A probe's payload is `probe-<node>-<i>` (see `Rig::until_routed`);
        // looked for in the bytes, so that a message is decoded only once.
        if p.payload.starts_with(b"probe-") {
            let payload = shared_clients::payload_text(p);
            let from = payload.strip_prefix("probe-").and_then(|f| f.split('-').next());
            if let Some(n) = from.and_then(|n| n.parse().ok()) {
                lock(&self.log).probes_from.insert(n);
            }
            return None;
        }
        Some(self.record_arrival(p, no))
    }

    /// A command while disconnected (see [`Subscriber::stay_down`]): false
    /// when told to stop.
    fn while_down(&mut self, cmd: Option<SubCmd>) -> bool {
        match cmd {
            Some(SubCmd::Drop { reply, .. }) => {
                self.own.reply = reply.or(self.own.reply.take());
                self.world
                    .note(format!("{}: drop skipped (not connected)", self.id));
            }
            Some(SubCmd::DropAfter { n, down }) => self.drop_after = Some((n, down)),
            Some(SubCmd::Move { reply, .. }) => {
                self.world
                    .note(format!("{}: move skipped (not connected)", self.id));
                let _ = reply.send(None);
            }
            Some(SubCmd::Stop) | None => return false,
        }
        true
    }
}
