//! Chaos durability: publishers and persistent subscribers run against Postbox
//! with the PostgreSQL plugin, on a private PostgreSQL server of the test's own
//! ([`PgCluster`]), while real faults are injected, alone and in combination:
//!
//! * PostgreSQL restarted, `pg_ctl restart -m fast` and `-m immediate` (every
//!   server process killed at once, crash recovery on start), sometimes while
//!   a subscriber that just came back is being replayed to;
//! * PostgreSQL stopped (fast or immediate) for 1-3 s, then started again;
//! * the plugin's PostgreSQL connections terminated (`pg_terminate_backend`);
//! * the broker SIGKILLed and started again, alone, shortly after a
//!   PostgreSQL restart (the combination after which subscribers once missed
//!   everything published after the kill), or while PostgreSQL is stopped (it
//!   then starts without the database);
//! * subscribers losing their connections at random moments, and in the
//!   middle of a paged offline replay (after a drop or after a broker restart).
//!
//! The clients are rumqttc, independent of the broker's code, MQTT 3.1.1:
//! subscribers with persistent sessions (clean session 0) that subscribed once
//! before the run and, on every reconnect, rely on their session (kept in
//! PostgreSQL across broker restarts, the shipped `on_session_restore`), or
//! subscribe again when the broker says it has none (session present 0, as an
//! MQTT client must: PostgreSQL was down when the broker restarted); QoS 1
//! publishers, one message at a time, that give up on a message without
//! PUBACK after [`PUBACK_TIMEOUT`] and carry on with a new connection (so a
//! stuck broker fails an assertion instead of hanging the test).
//!
//! At the end, printed as counts and asserted:
//!
//! * every message the broker acknowledged to a publisher (PUBACK received)
//!   reached every subscriber (all subscribed before the first publish);
//! * no subscriber received a message again after the broker had recorded
//!   its acknowledgement: neither without a broker crash in between, nor
//!   after a crash when the subscriber's `mqtt_acked` position read just
//!   before the SIGKILL already covered the message;
//! * publishing resumes within [`STALL_LIMIT`] (2 s) once PostgreSQL answers
//!   again: after every restart and every start after a stop, the time from
//!   `pg_ctl` returning (the server accepts connections) to the next PUBACK
//!   any publisher receives is printed, and the longest per kind of fault
//!   (after a termination of the plugin's connections too, from the query
//!   returning). A window in which the broker was SIGKILLed (or the database
//!   faulted again) before that PUBACK came is printed as excluded, not
//!   judged. The
//!   longest gap between two PUBACKs outside the SIGKILL windows is printed
//!   too, with and without PostgreSQL's outages (informative: an outage of
//!   1-3 s is a gap by design).
//!
//! What "acknowledged" means here is deliberate. A QoS 1 PUBACK has no reply:
//! a subscriber cannot know whether the broker read and recorded it before a
//! SIGKILL, so no broker can promise never to resend a message whose PUBACK
//! died with it. Those redeliveries (MQTT's at-least-once) are counted and
//! printed by cause, and do not fail the test; an acknowledgement the broker
//! recorded and then forgot does. Out-of-order acknowledgements above a
//! subscription's position are held in memory only (README, "Offline
//! delivery, exactly"), and so are positions the broker could not write while
//! PostgreSQL was down: they belong to the first kind.
//!
//! The database's own faults add no cause of repeats. A restart loses
//! nothing that was committed (the private server runs with fsync off, but
//! only its processes are killed, never the machine: the kernel keeps what
//! was written), and the broker's sessions keep in memory what it could not
//! write meanwhile. So a repeat with no broker SIGKILL between the PUBACK and
//! the repeat is a violation whatever PostgreSQL did; the report says, for
//! the allowed ones, how many had a PostgreSQL fault between the PUBACK and
//! the SIGKILL.
//!
//! Repeats are sorted by cause ([`RepeatKind`]): against the SIGKILLs
//! between the PUBACK and the repeat, and each subscriber's `mqtt_acked`
//! position read just before each SIGKILL.
//!
//! The fault schedule is pseudo-random from a seed that is printed;
//! `POSTBOX_CHAOS_SEED` replays it (the interleaving with the traffic is not
//! deterministic). Faults come in rounds: each round is every kind of fault
//! once ([`ROUND`]), in an order drawn from the seed; the first round always
//! runs whole, later ones stop when `POSTBOX_CHAOS_SECS` have passed (default
//! 20 s: a round and a bit, the whole test about 25 s on a 2-core machine; a
//! longer run is just a bigger value, e.g. `POSTBOX_CHAOS_SECS=600`).
//!
//! Part of the normal test suite; to watch the report run
//! `cargo test -p postbox-broker --test chaos -- --nocapture`. On a failure
//! the report is followed by the events and the broker's log lines around
//! each subscriber's first lost message and first repeat (the first that is a
//! violation, if any), and around the first stall.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, ConnectReturnCode, Event, Incoming, Outgoing, QoS};
use support::pg_cluster::{PgCluster, StopMode};
use support::pgsql::*;
use support::*;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_postgres::types::ToSql;

const SUBSCRIBERS: usize = 3;
const PUBLISHERS: usize = 2;
const FILTER: &str = "chaos/#";
/// `max_returned_count` of the fetch rule: replays come in pages of this many.
const PAGE: u64 = 20;
const DEFAULT_SECS: u64 = 20;
/// A publish without PUBACK by then is given up (the connection is dropped
/// and the message published again under a new attempt number).
const PUBACK_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long, after the faults stop, subscribers may take to receive
/// everything that was acknowledged.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two messages of one publisher (keeps the volume, and the time the
/// final replays take on a 2-core machine, bounded).
const PUBLISH_PAUSE: Duration = Duration::from_millis(3);
/// Pause before a subscriber or publisher tries again after a failed connect.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Once PostgreSQL answers again (after a restart, a start after a stop, or
/// the termination of the plugin's connections), some publisher must get a
/// PUBACK within this.
const STALL_LIMIT: Duration = Duration::from_secs(2);
/// Pause between two faults of the schedule (milliseconds, drawn uniformly).
const FAULT_PAUSE_MS: (u64, u64) = (800, 2200);
/// How long PostgreSQL stays stopped in a stop/start fault (milliseconds).
const OUTAGE_MS: (u64, u64) = (1000, 3000);
/// The test's own database name on the private server.
const DB: &str = "mqtt";

// ---------------------------------------------------------------------------
// Schedule
// ---------------------------------------------------------------------------

/// xorshift64: the fault schedule, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Spread small seeds over the state; xorshift must not start at 0.
        let s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        Rng(if s == 0 { 1 } else { s })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi` milliseconds.
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    /// Fisher-Yates.
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    Some(
        v.parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
    )
}

// ---------------------------------------------------------------------------
// Shared records
// ---------------------------------------------------------------------------

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the whole run shares: the clock, a timeline of faults and connection
/// events, and the publishers' results.
struct World {
    t0: Instant,
    /// The wall clock at `t0` (to find the broker's log lines of a moment).
    wall0: SystemTime,
    timeline: Mutex<Vec<(f64, String)>>,
    stop_publishing: AtomicBool,
    /// Payload -> when its PUBACK arrived (seconds since `t0`).
    acked: Mutex<HashMap<String, f64>>,
    /// When the newest PUBACK arrived.
    last_ack: Mutex<f64>,
    /// Publishes given up without PUBACK: (payload, when, why).
    unacked: Mutex<Vec<(String, f64, String)>>,
    attempts: AtomicUsize,
    /// Broker SIGKILLs: when, and each subscriber's read position read from
    /// the database just before (a lower bound of what was durable).
    kills: Mutex<Vec<Kill>>,
    /// PostgreSQL faults, in order.
    db_faults: Mutex<Vec<DbFault>>,
}

#[derive(Clone, Debug)]
struct Kill {
    /// Just before the SIGKILL was sent.
    at: f64,
    /// When the process had exited.
    done: f64,
    /// When the new process listened again.
    restarted: f64,
    positions: Vec<Option<i64>>,
    /// False when the database could not be read just before: `positions`
    /// are the last ones read (still a lower bound).
    positions_read: bool,
}

/// A fault of the PostgreSQL server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DbFaultKind {
    /// `pg_terminate_backend` of the plugin's connections (the server stays up).
    Terminate,
    /// `pg_ctl restart -m <mode>`.
    Restart(StopMode),
    /// `pg_ctl stop -m <mode>`, a pause, `pg_ctl start`.
    StopStart(StopMode),
}

impl DbFaultKind {
    fn name(self) -> &'static str {
        match self {
            DbFaultKind::Terminate => "pg_terminate_backend",
            DbFaultKind::Restart(StopMode::Fast) => "restart -m fast",
            DbFaultKind::Restart(StopMode::Immediate) => "restart -m immediate",
            DbFaultKind::StopStart(StopMode::Fast) => "stop -m fast + start",
            DbFaultKind::StopStart(StopMode::Immediate) => "stop -m immediate + start",
        }
    }

    /// The group the longest stall is printed for.
    fn group(self) -> &'static str {
        match self {
            DbFaultKind::Terminate => "terminate",
            DbFaultKind::Restart(StopMode::Fast) => "restart fast",
            DbFaultKind::Restart(StopMode::Immediate) => "restart immediate",
            DbFaultKind::StopStart(_) => "stop/start",
        }
    }
}

#[derive(Clone, Debug)]
struct DbFault {
    kind: DbFaultKind,
    /// Just before `pg_ctl` (or the terminate query) was run.
    down_at: f64,
    /// When `pg_ctl` returned: the server accepts connections again.
    back_at: f64,
}

impl World {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn note(&self, what: impl Into<String>) {
        let t = self.now();
        lock(&self.timeline).push((t, what.into()));
    }
}

/// One subscriber's record.
#[derive(Default)]
struct SubLog {
    /// Payload -> every arrival.
    received: HashMap<String, Vec<Arrival>>,
    /// Payload -> when this subscriber's PUBACK for it was written.
    ack_written: HashMap<String, f64>,
    /// Arrivals of a payload whose PUBACK had been written before.
    repeats: Vec<Repeat>,
    /// Arrivals again of a payload whose PUBACK had not been written yet
    /// (allowed: at-least-once).
    redelivered_before_ack: usize,
    connects: usize,
    connected: bool,
    /// Times a drop armed with `DropAfter` fired.
    mid_stream_drops: usize,
}

/// One arrival of a PUBLISH at a subscriber.
#[derive(Clone, Copy)]
struct Arrival {
    /// Seconds since `t0`.
    at: f64,
    /// Which connection of the subscriber (1 = its first in the run).
    connection: usize,
    pkid: u16,
    dup: bool,
}

impl std::fmt::Debug for Arrival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} s (connection {}, packet id {}{})",
            self.at,
            self.connection,
            self.pkid,
            if self.dup { ", DUP" } else { "" }
        )
    }
}

#[derive(Clone, Debug)]
struct Repeat {
    payload: String,
    acked_at: f64,
    again_at: f64,
}

/// A subscriber task and how to reach it.
struct Sub {
    id: String,
    log: Arc<Mutex<SubLog>>,
    tx: mpsc::UnboundedSender<SubCmd>,
    task: tokio::task::JoinHandle<()>,
}

enum SubCmd {
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
fn nodelay(events: &mut rumqttc::EventLoop) {
    let mut o = events.network_options();
    o.set_tcp_nodelay(true);
    events.set_network_options(o);
}

fn payload_text(p: &rumqttc::Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// A persistent subscriber (clean session false, manual acks): acknowledges
/// every PUBLISH as soon as it is polled and records when each PUBACK was
/// written. It subscribed once before the run; on reconnect it relies on its
/// session (restored after a broker restart), or subscribes again when told
/// it has none.
async fn subscriber(
    id: String,
    world: Arc<World>,
    addr: watch::Receiver<SocketAddr>,
    log: Arc<Mutex<SubLog>>,
    mut cmds: mpsc::UnboundedReceiver<SubCmd>,
) {
    let mut drop_after: Option<(u64, Duration)> = None;
    loop {
        let broker = *addr.borrow();
        let mut opts = v4_options(broker, &id, false);
        opts.set_manual_acks(true);
        // Acks are queued with try_ack from the task that polls: room for all.
        let (client, mut events) = AsyncClient::new(opts, 8192);
        nodelay(&mut events);
        let mut unwritten: HashMap<u16, String> = HashMap::new();
        let mut connected = false;
        let connect_deadline = Instant::now() + CONNECT_TIMEOUT;
        let down: Duration = loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(SubCmd::Drop { down }) => {
                        world.note(format!(
                            "{id}: connection dropped by the schedule ({}), down {down:?}",
                            if connected { "connected" } else { "not connected" }
                        ));
                        break down;
                    }
                    Some(SubCmd::DropAfter { n, down }) => drop_after = Some((n, down)),
                    Some(SubCmd::Stop) | None => return,
                },
                _ = tokio::time::sleep_until(connect_deadline), if !connected => break RETRY_PAUSE,
                ev = events.poll() => match ev {
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                        if ack.code != ConnectReturnCode::Success {
                            world.note(format!("{id}: CONNACK {:?}", ack.code));
                            break RETRY_PAUSE;
                        }
                        connected = true;
                        let mut l = lock(&log);
                        l.connects += 1;
                        l.connected = true;
                        drop(l);
                        world.note(format!(
                            "{id}: connected to {broker} (session present: {})",
                            ack.session_present
                        ));
                        if !ack.session_present {
                            // As an MQTT client must: no session, so subscribe
                            // again (the broker may not have had the stored
                            // session, e.g. PostgreSQL was down at the restart).
                            client
                                .try_subscribe(FILTER, QoS::AtLeastOnce)
                                .expect("queue SUBSCRIBE");
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let payload = payload_text(&p);
                        let now = world.now();
                        {
                            let mut l = lock(&log);
                            if let Some(&acked_at) = l.ack_written.get(&payload) {
                                l.repeats.push(Repeat { payload: payload.clone(), acked_at, again_at: now });
                            } else if l.received.contains_key(&payload) {
                                l.redelivered_before_ack += 1;
                            }
                            let arrival = Arrival { at: now, connection: l.connects, pkid: p.pkid, dup: p.dup };
                            l.received.entry(payload.clone()).or_default().push(arrival);
                        }
                        if let Some((n, down)) = drop_after {
                            if n <= 1 {
                                drop_after = None;
                                lock(&log).mid_stream_drops += 1;
                                world.note(format!(
                                    "{id}: connection dropped mid-stream on receiving {payload} (not acknowledged), down {down:?}"
                                ));
                                break down;
                            }
                            drop_after = Some((n - 1, down));
                        }
                        client.try_ack(&p).expect("queue PUBACK");
                        unwritten.insert(p.pkid, payload);
                    }
                    Ok(Event::Outgoing(Outgoing::PubAck(pkid))) => {
                        if let Some(payload) = unwritten.remove(&pkid) {
                            let now = world.now();
                            lock(&log).ack_written.entry(payload).or_insert(now);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if connected {
                            world.note(format!("{id}: connection ended: {e}"));
                        }
                        break RETRY_PAUSE;
                    }
                },
            }
        };
        // Abrupt: the socket is closed without DISCONNECT.
        drop(events);
        drop(client);
        lock(&log).connected = false;
        let until = Instant::now() + down;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                cmd = cmds.recv() => match cmd {
                    Some(SubCmd::Drop { .. }) => world.note(format!("{id}: drop skipped (not connected)")),
                    Some(SubCmd::DropAfter { n, down }) => drop_after = Some((n, down)),
                    Some(SubCmd::Stop) | None => return,
                },
            }
        }
    }
}

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
            let outcome = tokio::time::timeout(PUBACK_TIMEOUT, async {
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
            .unwrap_or_else(|_| Err(format!("no PUBACK within {PUBACK_TIMEOUT:?}")));
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

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Faults {
    sub_drops: usize,
    mid_stream_armed: usize,
    pg_terminations: usize,
    pg_connections_terminated: usize,
    pg_restarts_fast: usize,
    pg_restarts_immediate: usize,
    pg_stop_starts: usize,
    /// PostgreSQL faults timed to land in a subscriber's replay.
    db_faults_in_replay: usize,
    broker_kills: usize,
    /// Broker SIGKILLs shortly after a PostgreSQL restart.
    restart_then_kill: usize,
    /// Broker SIGKILLs while PostgreSQL is stopped.
    kill_in_outage: usize,
}

/// The kinds of fault of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// A subscriber loses its connection at a random moment.
    SubDrop,
    /// ... and, back, loses it again inside the replay of what it missed.
    SubDropMidReplay,
    /// The plugin's connections are terminated (sometimes while a subscriber
    /// that just came back is being replayed to).
    PgTerminate,
    /// `pg_ctl restart` (sometimes while a subscriber is being replayed to).
    PgRestart(StopMode),
    /// `pg_ctl stop`, 1-3 s down, `pg_ctl start`.
    PgStopStart,
    /// SIGKILL and restart; sometimes a subscriber then drops inside its replay.
    BrokerKill,
    /// A PostgreSQL restart, then within 0.5 s a broker SIGKILL and restart.
    PgRestartThenKill,
    /// PostgreSQL stopped; up to 1 s before it is started again the broker
    /// is SIGKILLed and started (without the database): subscribers that
    /// reconnect then get a new session (the stored one cannot be read) and
    /// subscribe again; the subscription is registered, and what they missed
    /// replayed, once the database answers.
    PgStopWithKill,
}

/// One round of the schedule: every kind of fault once.
const ROUND: [Fault; 9] = [
    Fault::SubDrop,
    Fault::SubDropMidReplay,
    Fault::PgTerminate,
    Fault::PgRestart(StopMode::Fast),
    Fault::PgRestart(StopMode::Immediate),
    Fault::PgStopStart,
    Fault::BrokerKill,
    Fault::PgRestartThenKill,
    Fault::PgStopWithKill,
];

/// The test's connection to its private server, made again after the
/// server restarts.
struct Db {
    cluster: PgCluster,
    client: Option<tokio_postgres::Client>,
    /// The positions read last: positions never move backwards, so they stay
    /// a lower bound of what is durable when the database cannot be read.
    last_positions: Vec<Option<i64>>,
}

impl Db {
    /// A live client, connecting when needed (bounded by `deadline`).
    async fn live(&mut self, deadline: Instant) -> Result<&tokio_postgres::Client, String> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let url = self.cluster.url(DB);
            let (client, connection) =
                match tokio::time::timeout_at(deadline, tokio_postgres::connect(&url, tokio_postgres::NoTls))
                    .await
                {
                    Ok(Ok(pair)) => pair,
                    Ok(Err(e)) => return Err(format!("connect: {}", error_chain(&e))),
                    Err(_) => return Err("connect: no answer in time".to_string()),
                };
            // Ends when the server goes away: the next query reconnects.
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.client = Some(client);
        }
        self.client.as_ref().ok_or_else(|| "no client".to_string())
    }

    /// Runs `sql`, reconnecting and trying again until `within` has passed.
    async fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        within: Duration,
    ) -> Result<Vec<tokio_postgres::Row>, String> {
        let deadline = Instant::now() + within;
        loop {
            let err = match self.live(deadline).await {
                Ok(c) => match tokio::time::timeout_at(deadline, c.query(sql, params)).await {
                    Ok(Ok(rows)) => return Ok(rows),
                    Ok(Err(e)) => error_chain(&e),
                    Err(_) => "no answer in time".to_string(),
                },
                Err(e) => e,
            };
            self.client = None;
            if Instant::now() >= deadline {
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Like [`Db::query`] within [`TIMEOUT`]; panics on failure.
    async fn rows(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<tokio_postgres::Row> {
        self.query(sql, params, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The first column of the first row as an `i64` (`None` for no row or NULL).
    async fn i64(&mut self, sql: &str) -> Option<i64> {
        self.rows(sql, &[])
            .await
            .first()
            .and_then(|r| r.get::<_, Option<i64>>(0))
    }

    /// Every subscriber's read position on [`FILTER`].
    async fn positions(&mut self, ids: &[String], within: Duration) -> Result<Vec<Option<i64>>, String> {
        let rows = self
            .query(
                "select clientid::text, mid::int8 from mqtt_acked where topic = $1",
                &[&FILTER],
                within,
            )
            .await?;
        let by_id: HashMap<String, Option<i64>> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let positions: Vec<Option<i64>> = ids.iter().map(|id| by_id.get(id).copied().flatten()).collect();
        self.last_positions = positions.clone();
        Ok(positions)
    }
}

/// Everything the fault schedule acts on.
struct Rig {
    world: Arc<World>,
    // Declared before `db`: on a failure the broker's logs are printed
    // before the server's.
    broker: Broker,
    db: Db,
    addr_tx: watch::Sender<SocketAddr>,
    sub_ids: Vec<String>,
    subs: Vec<Sub>,
    faults: Faults,
}

impl Rig {
    fn drop_sub(&self, s: usize, down: Duration) {
        let _ = self.subs[s].tx.send(SubCmd::Drop { down });
    }

    fn arm_mid_stream_drop(&mut self, s: usize, n: u64, down: Duration) {
        self.faults.mid_stream_armed += 1;
        self.world.note(format!(
            "schedule: {} will drop after {n} messages of its replay",
            self.sub_ids[s]
        ));
        let _ = self.subs[s].tx.send(SubCmd::DropAfter { n, down });
    }

    /// Drops subscriber `s` for `down` and lets `down` and `lag` pass (it
    /// reconnects after `down`), so that what comes next lands in its replay.
    async fn drop_for_replay(&mut self, s: usize, down: Duration, lag: Duration) {
        self.faults.sub_drops += 1;
        self.faults.db_faults_in_replay += 1;
        self.drop_sub(s, down);
        tokio::time::sleep(down + lag).await;
    }

    /// Runs one fault. Every random draw is made whatever the branch, so the
    /// schedule depends on the seed only.
    async fn inject(&mut self, fault: Fault, rng: &mut Rng) {
        let s = rng.below(SUBSCRIBERS as u64) as usize;
        let quick_down = rng.ms(0, 1500);
        let down = rng.ms(300, 1500);
        let lag = rng.ms(0, 300);
        let coin = rng.below(2) == 0;
        let n = 1 + rng.below(2 * PAGE + 5);
        let down_after = rng.ms(0, 800);
        let broker_down = rng.ms(0, 800);
        let mode = if rng.below(2) == 0 {
            StopMode::Fast
        } else {
            StopMode::Immediate
        };
        let outage = rng.ms(OUTAGE_MS.0, OUTAGE_MS.1);
        let gap = rng.ms(0, 500);
        let kill_lead = rng.ms(0, 1000);
        self.world.note(format!("schedule: {fault:?}"));
        match fault {
            Fault::SubDrop => {
                self.faults.sub_drops += 1;
                self.drop_sub(s, quick_down);
            }
            Fault::SubDropMidReplay => {
                self.faults.sub_drops += 1;
                self.drop_sub(s, down);
                self.arm_mid_stream_drop(s, n, down_after);
            }
            Fault::PgTerminate => {
                if coin {
                    self.drop_for_replay(s, down, lag).await;
                }
                self.terminate().await;
            }
            Fault::PgRestart(mode) => {
                if coin {
                    self.drop_for_replay(s, down, lag).await;
                }
                self.db_restart(mode).await;
            }
            Fault::PgStopStart => self.db_stop_start(mode, outage, None).await,
            Fault::PgStopWithKill => {
                self.db_stop_start(
                    mode,
                    outage,
                    Some((kill_lead, broker_down.min(Duration::from_millis(300)))),
                )
                .await;
            }
            Fault::BrokerKill => {
                self.crash_and_restart(broker_down, false).await;
                if coin {
                    self.arm_mid_stream_drop(s, n, down_after);
                }
            }
            Fault::PgRestartThenKill => {
                self.faults.restart_then_kill += 1;
                self.db_restart(mode).await;
                tokio::time::sleep(gap).await;
                self.crash_and_restart(broker_down.min(Duration::from_millis(300)), false)
                    .await;
                if coin {
                    self.arm_mid_stream_drop(s, n, down_after);
                }
            }
        }
    }

    /// Terminates the plugin's PostgreSQL connections.
    async fn terminate(&mut self) {
        self.faults.pg_terminations += 1;
        let down_at = self.world.now();
        let rows = self
            .db
            .rows(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = 'postbox'",
                &[&DB],
            )
            .await;
        let n = rows.iter().filter(|r| r.get::<_, bool>(0)).count();
        let back_at = self.world.now();
        self.faults.pg_connections_terminated += n;
        self.world
            .note(format!("postgres: terminated {n} plugin connections"));
        lock(&self.world.db_faults).push(DbFault {
            kind: DbFaultKind::Terminate,
            down_at,
            back_at,
        });
    }

    /// `pg_ctl restart -m <mode>`.
    async fn db_restart(&mut self, mode: StopMode) {
        let kind = DbFaultKind::Restart(mode);
        match mode {
            StopMode::Fast => self.faults.pg_restarts_fast += 1,
            StopMode::Immediate => self.faults.pg_restarts_immediate += 1,
        }
        self.world.note(format!("postgres: pg_ctl {}", kind.name()));
        let down_at = self.world.now();
        self.db.cluster.restart(mode).await;
        let back_at = self.world.now();
        self.db.client = None;
        self.world.note(format!(
            "postgres: answers again (pg_ctl restart took {:.0} ms)",
            (back_at - down_at) * 1000.0
        ));
        lock(&self.world.db_faults).push(DbFault {
            kind,
            down_at,
            back_at,
        });
    }

    /// `pg_ctl stop -m <mode>`, `outage`, `pg_ctl start`; with `kill`, the
    /// broker is SIGKILLed that long before the start (at the earliest right
    /// after the stop) and is down for the second duration.
    async fn db_stop_start(&mut self, mode: StopMode, outage: Duration, kill: Option<(Duration, Duration)>) {
        let kind = DbFaultKind::StopStart(mode);
        self.faults.pg_stop_starts += 1;
        self.world
            .note(format!("postgres: pg_ctl {} (down {outage:?})", kind.name()));
        let down_at = self.world.now();
        self.db.cluster.stop(mode).await;
        self.db.client = None;
        self.world.note("postgres: stopped");
        let stopped = Instant::now();
        if let Some((before_start, down)) = kill {
            self.faults.kill_in_outage += 1;
            tokio::time::sleep_until(stopped + outage.saturating_sub(before_start)).await;
            self.crash_and_restart(down, true).await;
        }
        tokio::time::sleep_until(stopped + outage).await;
        self.db.cluster.start_again().await;
        let back_at = self.world.now();
        self.world.note(format!(
            "postgres: answers again (stopped for {:.0} ms in all)",
            (back_at - down_at) * 1000.0
        ));
        lock(&self.world.db_faults).push(DbFault {
            kind,
            down_at,
            back_at,
        });
    }

    /// Reads the positions (unless the database is down: the last ones
    /// read stand in), SIGKILLs the broker, starts it again after `down`.
    async fn crash_and_restart(&mut self, down: Duration, db_down: bool) {
        self.faults.broker_kills += 1;
        let read = if db_down {
            Err("PostgreSQL is stopped".to_string())
        } else {
            self.db.positions(&self.sub_ids, Duration::from_secs(2)).await
        };
        let (positions, positions_read) = match read {
            Ok(p) => (p, true),
            Err(e) => {
                self.world.note(format!(
                    "positions cannot be read ({e}); the last ones read stand in"
                ));
                (self.db.last_positions.clone(), false)
            }
        };
        self.world.note(format!(
            "broker: SIGKILL (down {down:?}); positions just before: {positions:?}"
        ));
        let at = self.world.now();
        self.broker.kill().await;
        let done = self.world.now();
        tokio::time::sleep(down).await;
        self.broker.restart().await;
        self.addr_tx.send_replace(self.broker.addr);
        let restarted = self.world.now();
        lock(&self.world.kills).push(Kill {
            at,
            done,
            restarted,
            positions,
            positions_read,
        });
        self.world
            .note(format!("broker: restarted on {}", self.broker.addr));
    }
}

/// Why a message came again after its PUBACK was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RepeatKind {
    /// No SIGKILL between the PUBACK and the repeat.
    NoCrashBetween,
    /// The position read just before a SIGKILL in between already covered
    /// the message: durably acknowledged, sent again anyway.
    DurablyAckedBeforeCrash,
    /// The PUBACK was written less than [`IN_FLIGHT`] before the SIGKILL that
    /// followed it (or while it was under way), and the position did not
    /// cover it: it may not have been read, or not yet recorded, when the
    /// broker died.
    AckInFlightAtCrash,
    /// The PUBACK was written at least [`IN_FLIGHT`] before the SIGKILL, and
    /// the position still did not cover it: known only in memory.
    AckNotDurableAtCrash,
}

/// See [`RepeatKind::AckInFlightAtCrash`].
const IN_FLIGHT: f64 = 0.1;

/// The kind of a repeat, a description, and how long after the PUBACK the
/// first SIGKILL in between came (seconds).
fn classify(r: &Repeat, sub: usize, id: Option<i64>, kills: &[Kill]) -> (RepeatKind, String, Option<f64>) {
    let between: Vec<&Kill> = kills
        .iter()
        .filter(|k| k.done > r.acked_at && k.at < r.again_at)
        .collect();
    let what = |extra: String| {
        format!(
            "{} (id {id:?}) PUBACK written at {:.3} s, again at {:.3} s{extra}",
            r.payload, r.acked_at, r.again_at
        )
    };
    let (Some(first), Some(last)) = (between.first(), between.last()) else {
        return (RepeatKind::NoCrashBetween, what(String::new()), None);
    };
    let lead = first.at - r.acked_at;
    let pos = last.positions.get(sub).copied().flatten();
    let read = if last.positions_read {
        "just before"
    } else {
        "read last (the database was down at the SIGKILL)"
    };
    let extra = if lead < 0.0 {
        format!("; PUBACK written while the broker was being killed, position {read} {pos:?}")
    } else {
        format!(
            "; SIGKILL {:.0} ms after the PUBACK, position {read} {pos:?}",
            lead * 1000.0
        )
    };
    let kind = match (id, pos) {
        (Some(id), Some(pos)) if id <= pos => RepeatKind::DurablyAckedBeforeCrash,
        _ if lead < IN_FLIGHT => RepeatKind::AckInFlightAtCrash,
        _ => RepeatKind::AckNotDurableAtCrash,
    };
    (kind, what(extra), Some(lead))
}

// ---------------------------------------------------------------------------
// PUBACK stalls
// ---------------------------------------------------------------------------

/// What followed one PostgreSQL fault.
struct Stall {
    fault: DbFault,
    /// The first PUBACK at or after `back_at` (seconds since `t0`).
    first_ack: Option<f64>,
    /// Why the window is not judged: a broker SIGKILL, or another database
    /// fault, came within [`STALL_LIMIT`] of `back_at` and before that PUBACK.
    excluded: Option<String>,
}

impl Stall {
    /// From PostgreSQL answering again to the next PUBACK.
    fn secs(&self) -> Option<f64> {
        self.first_ack.map(|a| a - self.fault.back_at)
    }

    /// Judged, and no PUBACK within [`STALL_LIMIT`].
    fn failed(&self) -> bool {
        self.excluded.is_none() && self.secs().is_none_or(|s| s > STALL_LIMIT.as_secs_f64())
    }

    fn describe(&self) -> String {
        let f = &self.fault;
        let head = format!(
            "{:8.3} s  {:<26} down {:>5.0} ms  ",
            f.back_at,
            f.kind.name(),
            (f.back_at - f.down_at) * 1000.0
        );
        let first = match self.secs() {
            Some(s) => format!("first PUBACK after +{:.0} ms", s * 1000.0),
            None => "no PUBACK after it".to_string(),
        };
        match &self.excluded {
            Some(why) => format!("{head}excluded: {why}, before the first PUBACK ({first})"),
            None if self.failed() => format!("{head}{first}  <-- more than {STALL_LIMIT:?}"),
            None => format!("{head}{first}"),
        }
    }
}

/// For each PostgreSQL fault, the first PUBACK after the server answered
/// again. `acks` is sorted.
fn stalls(db_faults: &[DbFault], kills: &[Kill], acks: &[f64]) -> Vec<Stall> {
    let limit = STALL_LIMIT.as_secs_f64();
    db_faults
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let back = f.back_at;
            let first_ack = acks.get(acks.partition_point(|&a| a < back)).copied();
            let mut interrupts: Vec<(f64, String)> = Vec::new();
            for k in kills {
                if k.at <= back + limit && k.restarted >= back {
                    interrupts.push((
                        k.at.max(back),
                        format!("broker SIGKILL at {:+.0} ms", (k.at - back) * 1000.0),
                    ));
                }
            }
            for (j, g) in db_faults.iter().enumerate() {
                if j != i && g.down_at > back && g.down_at <= back + limit {
                    interrupts.push((
                        g.down_at,
                        format!(
                            "PostgreSQL {} at +{:.0} ms",
                            g.kind.name(),
                            (g.down_at - back) * 1000.0
                        ),
                    ));
                }
            }
            interrupts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let excluded = interrupts
                .into_iter()
                .next()
                .filter(|(t, _)| first_ack.is_none_or(|a| a > *t))
                .map(|(_, why)| why);
            Stall {
                fault: f.clone(),
                first_ack,
                excluded,
            }
        })
        .collect()
}

/// The longest gap between two consecutive PUBACKs (sorted) that overlaps
/// none of `windows`: (from, to).
fn longest_gap(acks: &[f64], windows: &[(f64, f64)]) -> Option<(f64, f64)> {
    acks.windows(2)
        .map(|w| (w[0], w[1]))
        .filter(|(a, b)| !windows.iter().any(|(s, e)| s < b && e > a))
        .max_by(|x, y| (x.1 - x.0).total_cmp(&(y.1 - y.0)))
}

/// The broker's log lines stamped between `from` and `to` (seconds since
/// `t0`, which was `wall0` on the wall clock), at most `max`, each prefixed
/// with its time since `t0`.
fn broker_log_window(logs: &str, wall0: SystemTime, from: f64, to: f64, max: usize) -> String {
    let day = 86_400.0;
    let w0 = wall0
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() % day)
        .unwrap_or(0.0);
    // tracing's default stamp: 2026-12-07T03:41:50.123456Z
    let stamp = |line: &str| -> Option<f64> {
        let time = line
            .split_whitespace()
            .next()?
            .strip_suffix('Z')?
            .split_once('T')?
            .1;
        let mut hms = time.split(':');
        let h: f64 = hms.next()?.parse().ok()?;
        let m: f64 = hms.next()?.parse().ok()?;
        let s: f64 = hms.next()?.parse().ok()?;
        let mut t = h * 3600.0 + m * 60.0 + s - w0;
        if t < -day / 2.0 {
            t += day;
        } else if t > day / 2.0 {
            t -= day;
        }
        Some(t)
    };
    let lines: Vec<(f64, &str)> = logs
        .lines()
        .filter_map(|l| Some((stamp(l)?, l)))
        .filter(|(t, _)| *t >= from && *t <= to)
        .collect();
    let mut out = String::new();
    for (t, l) in lines.iter().take(max) {
        let _ = writeln!(out, "    {t:8.3}  {l}");
    }
    if lines.len() > max {
        let _ = writeln!(out, "    ... {} more lines", lines.len() - max);
    }
    out
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_reach_every_subscriber_once_through_db_restarts_drops_and_crashes() {
    let seed = env_u64("POSTBOX_CHAOS_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let secs = env_u64("POSTBOX_CHAOS_SECS").unwrap_or(DEFAULT_SECS);
    println!("chaos: seed {seed} (POSTBOX_CHAOS_SEED={seed} replays this schedule), {secs} s of faults (POSTBOX_CHAOS_SECS)");
    let mut rng = Rng::new(seed);

    let cluster = PgCluster::start().await;
    cluster.create_db(DB).await;
    let fetch = r##""action": {"function": "on_message_fetch"}, "pool""##;
    let rules = EMQX_DEFAULT_RULES.replace(
        fetch,
        &format!(
            r##""action": {{"function": "on_message_fetch"}}, "offline_opts": {{"max_returned_count": {PAGE}}}, "pool""##
        ),
    );
    assert_ne!(rules, EMQX_DEFAULT_RULES, "the fetch rule was not found");
    let conf = format!(
        "backend.pgsql.pool1.server = {}\nbackend.pgsql.pool1.pool_size = 4\n\
         backend.pgsql.pool1.username = postgres\nbackend.pgsql.pool1.database = {DB}\n{rules}\n{SESSION_RULE}\n",
        cluster.server()
    );
    let broker =
        Broker::start_with_files("plugins.load = backend_pgsql\n", &[("backend_pgsql.conf", &conf)]).await;
    let mut db = Db {
        cluster,
        client: None,
        last_positions: vec![None; SUBSCRIBERS],
    };

    // Every subscription exists before the first publish.
    let sub_ids: Vec<String> = (0..SUBSCRIBERS).map(|i| format!("chaos-sub-{i}")).collect();
    for id in &sub_ids {
        let (mut c, _) = V4Client::connect(v4_options(broker.addr, id, false)).await;
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

    db.positions(&sub_ids, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("positions: {e}"));

    let world = Arc::new(World {
        t0: Instant::now(),
        wall0: SystemTime::now(),
        timeline: Mutex::default(),
        stop_publishing: AtomicBool::new(false),
        acked: Mutex::default(),
        last_ack: Mutex::new(f64::MIN),
        unacked: Mutex::default(),
        attempts: AtomicUsize::new(0),
        kills: Mutex::default(),
        db_faults: Mutex::default(),
    });
    let (addr_tx, addr_rx) = watch::channel(broker.addr);

    let mut subs = Vec::new();
    for id in &sub_ids {
        let log = Arc::new(Mutex::new(SubLog::default()));
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(subscriber(
            id.clone(),
            world.clone(),
            addr_rx.clone(),
            log.clone(),
            rx,
        ));
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

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|k| tokio::spawn(publisher(k, world.clone(), addr_rx.clone())))
        .collect();

    let mut rig = Rig {
        world: world.clone(),
        broker,
        db,
        addr_tx,
        sub_ids: sub_ids.clone(),
        subs,
        faults: Faults::default(),
    };

    // Faults, in rounds of every kind; the first round runs whole.
    let fault_end = Instant::now() + Duration::from_secs(secs);
    let round: Vec<Fault> = ROUND.to_vec();
    let mut rounds = 0;
    'rounds: loop {
        rounds += 1;
        let mut order = round.clone();
        rng.shuffle(&mut order);
        world.note(format!("schedule: round {rounds}: {order:?}"));
        for fault in order {
            tokio::time::sleep(rng.ms(FAULT_PAUSE_MS.0, FAULT_PAUSE_MS.1)).await;
            if rounds > 1 && Instant::now() >= fault_end {
                break 'rounds;
            }
            rig.inject(fault, &mut rng).await;
        }
        if Instant::now() >= fault_end {
            break;
        }
    }
    world.note("faults stop");
    let faults_stopped = world.now();

    // Publishing goes on until a PUBACK after the last fault (bounded: a
    // stuck broker shows in the stall report), then publishers finish the
    // message in hand and stop.
    let deadline = Instant::now() + STALL_LIMIT + PUBACK_TIMEOUT + CONNECT_TIMEOUT;
    while *lock(&world.last_ack) < faults_stopped && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    world.stop_publishing.store(true, Ordering::SeqCst);
    for p in publishers {
        tokio::time::timeout(PUBACK_TIMEOUT + CONNECT_TIMEOUT + Duration::from_secs(5), p)
            .await
            .expect("a publisher did not stop")
            .expect("publisher task");
    }
    world.note("publishers stopped");
    let expected: HashMap<String, f64> = lock(&world.acked).clone();

    // Drain: every subscriber gets everything acknowledged.
    let drain_start = Instant::now();
    let drain_deadline = drain_start + DRAIN_TIMEOUT;
    let missing = |subs: &[Sub]| -> usize {
        subs.iter()
            .map(|s| {
                let l = lock(&s.log);
                expected.keys().filter(|p| !l.received.contains_key(*p)).count()
            })
            .sum()
    };
    while missing(&rig.subs) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained_in = drain_start.elapsed();
    world.note(format!("drained ({} deliveries missing)", missing(&rig.subs)));
    // What a subscriber has not received by now is lost, even if the
    // reconnect after the last crash below brings it.
    let lost_at_drain: Vec<Vec<String>> = rig
        .subs
        .iter()
        .map(|s| {
            let l = lock(&s.log);
            let mut lost: Vec<String> = expected
                .keys()
                .filter(|p| !l.received.contains_key(*p))
                .cloned()
                .collect();
            lost.sort_by(|a, b| expected[a].total_cmp(&expected[b]));
            lost
        })
        .collect();

    // Positions: every subscriber acknowledges everything it gets, so its
    // read position reaches the newest stored id.
    let max_id = rig
        .db
        .i64("select max(id)::int8 from mqtt_msg")
        .await
        .unwrap_or(0);
    let positions_deadline = Instant::now().max(drain_deadline) + Duration::from_secs(5);
    let mut positions;
    loop {
        positions = rig
            .db
            .positions(&sub_ids, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("positions: {e}"));
        if positions.iter().all(|p| *p == Some(max_id)) || Instant::now() >= positions_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    world.note(format!("positions {positions:?}, newest stored id {max_id}"));

    // A last crash after everything was acknowledged: what comes back now
    // was either never acknowledged or is a repeat.
    let received_before: Vec<usize> = rig
        .subs
        .iter()
        .map(|s| lock(&s.log).received.values().map(Vec::len).sum())
        .collect();
    let connects_before: Vec<usize> = rig.subs.iter().map(|s| lock(&s.log).connects).collect();
    rig.crash_and_restart(Duration::ZERO, false).await;
    let deadline = Instant::now() + TIMEOUT;
    while rig
        .subs
        .iter()
        .zip(&connects_before)
        .any(|(s, before)| lock(&s.log).connects <= *before)
    {
        assert!(
            Instant::now() < deadline,
            "the subscribers did not reconnect after the last restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_last_crash: Vec<usize> = rig
        .subs
        .iter()
        .zip(&received_before)
        .map(|(s, before)| lock(&s.log).received.values().map(Vec::len).sum::<usize>() - before)
        .collect();
    world.note(format!(
        "after the last crash: {after_last_crash:?} messages received"
    ));

    for s in &rig.subs {
        let _ = s.tx.send(SubCmd::Stop);
    }
    for s in &mut rig.subs {
        tokio::time::timeout(TIMEOUT, &mut s.task)
            .await
            .unwrap_or_else(|_| panic!("{} did not stop", s.id))
            .expect("subscriber task");
    }

    // ---- Counts ----
    let unacked = lock(&world.unacked).clone();
    let kills = lock(&world.kills).clone();
    let db_faults = lock(&world.db_faults).clone();
    let faults = &rig.faults;
    let mut report = String::new();
    let _ = writeln!(
        report,
        "\n===== chaos: seed {seed}, {secs} s of faults (rounds: {rounds}; faults stopped at {faults_stopped:.1} s), \
         {:.1} s in all (drain {:.1} s) =====",
        world.now(),
        drained_in.as_secs_f64()
    );
    let _ = writeln!(
        report,
        "faults: PostgreSQL {} restarts -m fast, {} restarts -m immediate, {} stops+starts, {} terminations \
         ({} connections terminated), {} of these timed into a subscriber's replay; {} broker SIGKILLs ({} shortly \
         after a PostgreSQL restart, {} while it was stopped, the last one after the drain); {} subscriber drops \
         ({} armed to land mid-replay, {} fired)",
        faults.pg_restarts_fast,
        faults.pg_restarts_immediate,
        faults.pg_stop_starts,
        faults.pg_terminations,
        faults.pg_connections_terminated,
        faults.db_faults_in_replay,
        faults.broker_kills,
        faults.restart_then_kill,
        faults.kill_in_outage,
        faults.sub_drops,
        faults.mid_stream_armed,
        rig.subs.iter().map(|s| lock(&s.log).mid_stream_drops).sum::<usize>(),
    );
    let _ = writeln!(
        report,
        "publishers: {} publishes, {} acknowledged, {} given up without PUBACK (published again)",
        world.attempts.load(Ordering::SeqCst),
        expected.len(),
        unacked.len()
    );
    let stored_rows = rig.db.i64("select count(*) from mqtt_msg").await.unwrap_or(0);
    let _ = writeln!(
        report,
        "stored: {stored_rows} rows, newest id {max_id}; positions at the end {positions:?}; received after the last crash {after_last_crash:?}",
    );

    // ---- PUBACK stalls ----
    let mut acks: Vec<f64> = expected.values().copied().collect();
    acks.sort_by(f64::total_cmp);
    let stalls = stalls(&db_faults, &kills, &acks);
    let _ = writeln!(
        report,
        "PUBACK stalls: from PostgreSQL answering again (pg_ctl, or the terminate query, returned) to the next \
         PUBACK (limit {STALL_LIMIT:?}; down = from pg_ctl's start to then):"
    );
    for s in &stalls {
        let _ = writeln!(report, "  {}", s.describe());
    }
    let mut groups: Vec<&str> = Vec::new();
    for s in &stalls {
        if !groups.contains(&s.fault.kind.group()) {
            groups.push(s.fault.kind.group());
        }
    }
    for group in groups {
        let of: Vec<&Stall> = stalls.iter().filter(|s| s.fault.kind.group() == group).collect();
        let judged: Vec<&&Stall> = of.iter().filter(|s| s.excluded.is_none()).collect();
        let longest = judged
            .iter()
            .map(|s| s.secs().unwrap_or(f64::INFINITY))
            .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s))));
        let _ = writeln!(
            report,
            "  longest stall after {group:<17} {} ({} judged, {} excluded)",
            longest.map_or("-".to_string(), |s| format!("{:.0} ms", s * 1000.0)),
            judged.len(),
            of.len() - judged.len()
        );
    }
    // SIGKILL windows: from the kill to the next PUBACK can be anything.
    let kill_windows: Vec<(f64, f64)> = kills.iter().map(|k| (k.at, k.restarted)).collect();
    let mut fault_windows = kill_windows.clone();
    fault_windows.extend(db_faults.iter().map(|f| (f.down_at, f.back_at)));
    let during = |a: f64, b: f64| -> String {
        let overlapping: Vec<String> = db_faults
            .iter()
            .filter(|f| f.down_at < b && f.back_at > a)
            .map(|f| {
                format!(
                    "PostgreSQL {} down {:.0} ms",
                    f.kind.name(),
                    (f.back_at - f.down_at) * 1000.0
                )
            })
            .collect();
        if overlapping.is_empty() {
            String::new()
        } else {
            format!("; spans {}", overlapping.join(", "))
        }
    };
    for (what, windows) in [
        ("outside broker SIGKILLs", &kill_windows),
        ("outside broker SIGKILLs and PostgreSQL faults", &fault_windows),
    ] {
        let _ = match longest_gap(&acks, windows) {
            Some((a, b)) => writeln!(
                report,
                "  longest gap between PUBACKs {what}: {:.0} ms ({a:.3} s to {b:.3} s{})",
                (b - a) * 1000.0,
                during(a, b)
            ),
            None => writeln!(report, "  longest gap between PUBACKs {what}: -"),
        };
    }
    let stall_failures: Vec<&Stall> = stalls.iter().filter(|s| s.failed()).collect();

    let _ = writeln!(
        report,
        "{:<12} {:>8} {:>9} {:>5} {:>9} {:>12} {:>10} {:>8}",
        "subscriber", "expected", "received", "lost", "repeated", "redelivered", "unacked-ok", "connects"
    );
    let _ = writeln!(
        report,
        "{:<12} {:>8} {:>9} {:>5} {:>9} {:>12} {:>10} {:>8}",
        "", "", "distinct", "", "after ack", "before ack", "extra", ""
    );
    let mut total_lost = 0;
    let mut total_repeated = 0;
    let mut lost_by_sub: Vec<Vec<String>> = Vec::new();
    let mut repeats_by_sub: Vec<Vec<Repeat>> = Vec::new();
    let mut late = Vec::new();
    for (Sub { id, log, .. }, lost) in rig.subs.iter().zip(lost_at_drain) {
        let l = lock(log);
        let came_late = lost.iter().filter(|p| l.received.contains_key(*p)).count();
        if came_late > 0 {
            late.push(format!("{id}: {came_late}"));
        }
        let extra = l.received.keys().filter(|p| !expected.contains_key(*p)).count();
        let _ = writeln!(
            report,
            "{:<12} {:>8} {:>9} {:>5} {:>9} {:>12} {:>10} {:>8}",
            id,
            expected.len(),
            l.received.len(),
            lost.len(),
            l.repeats.len(),
            l.redelivered_before_ack,
            extra,
            l.connects
        );
        total_lost += lost.len();
        total_repeated += l.repeats.len();
        lost_by_sub.push(lost);
        repeats_by_sub.push(l.repeats.clone());
    }
    let _ = writeln!(
        report,
        "{:<12} {:>8} {:>9} {:>5} {:>9}",
        "total",
        expected.len() * SUBSCRIBERS,
        rig.subs
            .iter()
            .map(|s| lock(&s.log).received.len())
            .sum::<usize>(),
        total_lost,
        total_repeated
    );
    let _ = writeln!(report, "lost: {total_lost}, repeated after ack: {total_repeated}");
    if !late.is_empty() {
        let _ = writeln!(
            report,
            "of the lost, received only after the reconnect that followed the last crash: {}",
            late.join(", ")
        );
    }
    // A repeat breaks the invariant when the broker had recorded the
    // acknowledgement: no crash in between, or a position that covered it just
    // before the crash. An acknowledgement that died with the broker (in
    // flight, or held in memory only) cannot be honoured by any broker.
    let mut violations = 0;
    // Per subscriber: the repeats that are violations, with their description.
    let mut violating_by_sub: Vec<Vec<(Repeat, String)>> = vec![Vec::new(); SUBSCRIBERS];
    if total_repeated > 0 {
        // Where each repeat comes from, judged by the SIGKILLs between the
        // PUBACK and the repeat and the positions read just before them.
        let ids: HashMap<String, i64> = rig
            .db
            .rows(
                "select convert_from(payload, 'UTF8'), id::int8 from mqtt_msg",
                &[],
            )
            .await
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let _ = writeln!(report, "repeats by cause:");
        for (i, reps) in repeats_by_sub.iter().enumerate() {
            // (kind, count, first example, longest lead, how many had a
            // PostgreSQL fault between the PUBACK and the SIGKILL)
            let mut by_kind: Vec<(RepeatKind, usize, String, f64, usize)> = Vec::new();
            for r in reps {
                let (kind, why, lead) = classify(r, i, ids.get(&r.payload).copied(), &kills);
                if matches!(
                    kind,
                    RepeatKind::NoCrashBetween | RepeatKind::DurablyAckedBeforeCrash
                ) {
                    violations += 1;
                    violating_by_sub[i].push((r.clone(), format!("{kind:?}: {why}")));
                }
                let db_fault_before_kill = kills
                    .iter()
                    .find(|k| k.done > r.acked_at && k.at < r.again_at)
                    .is_some_and(|k| {
                        db_faults
                            .iter()
                            .any(|f| f.down_at <= k.at && f.back_at >= r.acked_at)
                    });
                let lead = lead.unwrap_or(0.0);
                match by_kind.iter_mut().find(|(k, ..)| *k == kind) {
                    Some((_, n, _, max_lead, with_db)) => {
                        *n += 1;
                        *max_lead = max_lead.max(lead);
                        *with_db += usize::from(db_fault_before_kill);
                    }
                    None => by_kind.push((kind, 1, why, lead, usize::from(db_fault_before_kill))),
                }
            }
            for (kind, n, example, max_lead, with_db) in by_kind {
                let lead = if kind == RepeatKind::NoCrashBetween {
                    String::new()
                } else {
                    format!(
                        " (PUBACK at most {:.0} ms before the SIGKILL; {with_db} with a PostgreSQL fault between \
                         the PUBACK and the SIGKILL)",
                        max_lead.max(0.0) * 1000.0
                    )
                };
                let _ = writeln!(
                    report,
                    "  {:<12} {n:>4}  {kind:?}{lead}; first: {example}",
                    sub_ids[i]
                );
            }
        }
    }
    let _ = writeln!(
        report,
        "repeats of an acknowledgement the broker had recorded (violations): {violations}; \
         PostgreSQL faults without a PUBACK within {STALL_LIMIT:?} after: {}",
        stall_failures.len()
    );
    println!("{report}");

    if total_lost == 0 && violations == 0 && stall_failures.is_empty() {
        return;
    }

    // ---- Diagnosis: the first lost and repeated message, the first stall ----
    let timeline = lock(&world.timeline).clone();
    let logs = rig.broker.logs();
    let events = |from: f64, to: f64| -> String {
        let mut s = String::new();
        for (t, what) in timeline.iter().filter(|(t, _)| *t >= from && *t <= to) {
            let _ = writeln!(s, "    {t:8.3}  {what}");
        }
        s
    };
    let window = |from: f64, to: f64| -> String {
        let mut s = events(from, to);
        let _ = writeln!(s, "  broker log lines (time since the start, then the line):");
        let _ = write!(s, "{}", broker_log_window(&logs, world.wall0, from, to, 80));
        s
    };
    let mut diag = String::new();
    for (i, Sub { id, log, .. }) in rig.subs.iter().enumerate() {
        if let Some(first) = lost_by_sub[i].first() {
            let t = expected[first];
            let rows = rig
                .db
                .rows(
                    "select id::int8, topic from mqtt_msg where payload = $1",
                    &[&first.as_bytes()],
                )
                .await;
            let stored: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let _ = writeln!(
                diag,
                "{id}: first lost {first} (PUBACK at {t:.3} s; stored as {stored:?}; {} lost in all: {:?})\n  \
                 events from 5 s before to 5 s after:\n{}",
                lost_by_sub[i].len(),
                &lost_by_sub[i][..lost_by_sub[i].len().min(10)],
                window(t - 5.0, t + 5.0)
            );
        }
        // The first violation, or else the first repeat.
        let first_repeat = match violating_by_sub[i].first() {
            Some((r, why)) => Some((r, format!("first repeat that is a violation ({why})"))),
            None => repeats_by_sub[i].first().map(|r| (r, "first repeat".to_string())),
        };
        if let Some((r, what)) = first_repeat {
            let arrivals = lock(log).received.get(&r.payload).cloned().unwrap_or_default();
            let from = arrivals.first().map_or(r.acked_at, |a| a.at.min(r.acked_at));
            let rows = rig
                .db
                .rows(
                    "select id::int8, topic from mqtt_msg where payload = $1",
                    &[&r.payload.as_bytes()],
                )
                .await;
            let stored: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let _ = writeln!(
                diag,
                "{id}: {what}: {} (arrivals {arrivals:?}, PUBACK written at {:.3}, again at {:.3}; stored as \
                 {stored:?}; {} repeats in all: {:?})\n  events from 2 s before the first arrival to the repeat:\n{}",
                r.payload,
                r.acked_at,
                r.again_at,
                repeats_by_sub[i].len(),
                repeats_by_sub[i]
                    .iter()
                    .take(10)
                    .map(|r| r.payload.as_str())
                    .collect::<Vec<_>>(),
                window(from - 2.0, r.again_at + 0.5)
            );
        }
    }
    if let Some(s) = stall_failures.first() {
        let _ = writeln!(
            diag,
            "first stall: {}\n  events from 1 s before PostgreSQL went down to {:?} after it answered:\n{}",
            s.describe(),
            STALL_LIMIT * 2,
            window(
                s.fault.down_at - 1.0,
                s.fault.back_at + 2.0 * STALL_LIMIT.as_secs_f64()
            )
        );
    }
    let _ = writeln!(
        diag,
        "publishes given up without PUBACK (first 20): {:?}",
        &unacked[..unacked.len().min(20)]
    );
    println!("===== diagnosis =====\n{diag}");
    println!("===== timeline =====\n{}", events(f64::MIN, f64::MAX));
    assert!(
        total_lost == 0 && violations == 0 && stall_failures.is_empty(),
        "seed {seed}: {total_lost} lost, {violations} repeated after the broker recorded the ack, {} PostgreSQL \
         faults without a PUBACK within {STALL_LIMIT:?} after (see the report above)",
        stall_failures.len()
    );
}
