//! Chaos durability: publishers and persistent subscribers run against Postbox
//! with the PostgreSQL plugin while subscribers lose their connections at
//! random moments (in the middle of a paged offline replay included), the
//! plugin's PostgreSQL connections are terminated, and the broker is SIGKILLed
//! and started again. At the end, printed as counts and asserted:
//!
//! * every message the broker acknowledged to a publisher (PUBACK received)
//!   reached every subscriber (all subscribed before the first publish);
//! * no subscriber received a message again after the broker had recorded
//!   its acknowledgement: neither without a crash in between, nor after a
//!   crash when the subscriber's `mqtt_acked` position read just before the
//!   SIGKILL already covered the message.
//!
//! What "acknowledged" means here is deliberate. A QoS 1 PUBACK has no reply:
//! a subscriber cannot know whether the broker read and recorded it before a
//! SIGKILL, so no broker can promise never to resend a message whose PUBACK
//! died with it. Those redeliveries (MQTT's at-least-once) are counted and
//! printed by cause, and do not fail the test; an acknowledgement the broker
//! recorded and then forgot does. Out-of-order acknowledgements above a
//! subscription's position are held in memory only (README, "Limits"), so
//! they belong to the first kind.
//!
//! The fault schedule is pseudo-random from a seed that is printed;
//! `POSTBOX_CHAOS_SEED` replays it (the interleaving with the traffic is not
//! deterministic), `POSTBOX_CHAOS_SECS` sets how long faults are injected
//! (default 20 s, which keeps the test under a minute in CI; a longer run is
//! just a bigger value, e.g. `POSTBOX_CHAOS_SECS=600`).
//!
//! Repeats are also sorted by cause ([`RepeatKind`]): against the SIGKILLs
//! between the PUBACK and the repeat, and each subscriber's `mqtt_acked`
//! position read just before each SIGKILL.
//!
//! Part of the normal test suite; to watch the report run
//! `cargo test -p postbox-broker --test chaos -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, ConnectReturnCode, Event, Incoming, Outgoing, QoS};
use support::pgsql::*;
use support::*;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

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
    timeline: Mutex<Vec<(f64, String)>>,
    stop_publishing: AtomicBool,
    /// Payload -> when its PUBACK arrived (seconds since `t0`).
    acked: Mutex<HashMap<String, f64>>,
    /// Publishes given up without PUBACK: (payload, when, why).
    unacked: Mutex<Vec<(String, f64, String)>>,
    attempts: AtomicUsize,
    /// Broker SIGKILLs: when, and each subscriber's read position read from
    /// the database just before (a lower bound of what was durable).
    kills: Mutex<Vec<Kill>>,
}

#[derive(Clone, Debug)]
struct Kill {
    /// Just before the SIGKILL was sent.
    at: f64,
    /// When the process had exited.
    done: f64,
    positions: Vec<Option<i64>>,
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
    /// Payload -> times it arrived.
    received: HashMap<String, Vec<f64>>,
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
/// session or on the subscription restored from `mqtt_sub`.
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
                            l.received.entry(payload.clone()).or_default().push(now);
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
    pg_kills: usize,
    pg_connections_terminated: usize,
    broker_kills: usize,
}

/// Terminates the plugin's PostgreSQL connections; returns how many.
async fn kill_pg_connections(admin: &tokio_postgres::Client, db: &str) -> usize {
    let rows = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = 'postbox'",
            &[&db],
        )
        .await
        .unwrap_or_else(|e| panic!("pg_terminate_backend: {}", error_chain(&e)));
    rows.iter().filter(|r| r.get::<_, bool>(0)).count()
}

async fn crash_and_restart(
    broker: &mut Broker,
    addr_tx: &watch::Sender<SocketAddr>,
    world: &World,
    pg: &tokio_postgres::Client,
    sub_ids: &[String],
    down: Duration,
) {
    let mut positions = Vec::new();
    for id in sub_ids {
        positions.push(position(pg, id, FILTER).await);
    }
    world.note(format!(
        "broker: SIGKILL (down {down:?}); positions just before: {positions:?}"
    ));
    let at = world.now();
    broker.kill().await;
    lock(&world.kills).push(Kill {
        at,
        done: world.now(),
        positions,
    });
    tokio::time::sleep(down).await;
    broker.restart().await;
    addr_tx.send_replace(broker.addr);
    world.note(format!("broker: restarted on {}", broker.addr));
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
    let extra = if lead < 0.0 {
        format!("; PUBACK written while the broker was being killed, position just before {pos:?}")
    } else {
        format!(
            "; SIGKILL {:.0} ms after the PUBACK, position just before it {pos:?}",
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
// The test
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_reach_every_subscriber_once_through_drops_db_kills_and_crashes() {
    let seed = env_u64("POSTBOX_CHAOS_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let secs = env_u64("POSTBOX_CHAOS_SECS").unwrap_or(DEFAULT_SECS);
    println!("chaos: seed {seed} (POSTBOX_CHAOS_SEED={seed} replays this schedule), {secs} s of faults (POSTBOX_CHAOS_SECS)");
    let mut rng = Rng::new(seed);

    let db = TestDb::create().await;
    let fetch = r##""action": {"function": "on_message_fetch"}, "pool""##;
    let rules = EMQX_DEFAULT_RULES.replace(
        fetch,
        &format!(
            r##""action": {{"function": "on_message_fetch"}}, "offline_opts": {{"max_returned_count": {PAGE}}}, "pool""##
        ),
    );
    assert_ne!(rules, EMQX_DEFAULT_RULES, "the fetch rule was not found");
    let conf = pgsql_conf(&db, &format!("{rules}\n{SUBSCRIBE_STORE_RULES}"));
    let mut broker =
        Broker::start_with_files("plugins.load = backend_pgsql\n", &[("backend_pgsql.conf", &conf)]).await;
    let pg = db.client().await;
    let admin = pg_connect(&pg_admin_url()).await;

    // Every subscription exists before the first publish.
    let sub_ids: Vec<String> = (0..SUBSCRIBERS).map(|i| format!("chaos-sub-{i}")).collect();
    for id in &sub_ids {
        let (mut c, _) = V4Client::connect(v4_options(broker.addr, id, false)).await;
        c.subscribe(FILTER, QoS::AtLeastOnce).await;
        c.disconnect().await;
        for table in ["mqtt_sub", "mqtt_acked"] {
            wait_for_db(
                &pg,
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

    let world = Arc::new(World {
        t0: Instant::now(),
        timeline: Mutex::default(),
        stop_publishing: AtomicBool::new(false),
        acked: Mutex::default(),
        unacked: Mutex::default(),
        attempts: AtomicUsize::new(0),
        kills: Mutex::default(),
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

    // Faults.
    let mut faults = Faults::default();
    let fault_end = Instant::now() + Duration::from_secs(secs);
    loop {
        tokio::time::sleep(rng.ms(1000, 3000)).await;
        if Instant::now() >= fault_end {
            break;
        }
        let s = rng.below(SUBSCRIBERS as u64) as usize;
        match rng.below(20) {
            // A subscriber loses its connection at a random moment.
            0..=4 => {
                faults.sub_drops += 1;
                let down = rng.ms(0, 1500);
                let _ = subs[s].tx.send(SubCmd::Drop { down });
            }
            // ... and, back, loses it again inside the replay of what it missed.
            5..=8 => {
                faults.sub_drops += 1;
                faults.mid_stream_armed += 1;
                let down = rng.ms(300, 1500);
                let n = 1 + rng.below(2 * PAGE + 5);
                world.note(format!(
                    "schedule: {} will drop after {n} messages of its replay",
                    sub_ids[s]
                ));
                let _ = subs[s].tx.send(SubCmd::Drop { down });
                let down = rng.ms(0, 800);
                let _ = subs[s].tx.send(SubCmd::DropAfter { n, down });
            }
            // The plugin's PostgreSQL connections are terminated.
            9..=11 => {
                faults.pg_kills += 1;
                let n = kill_pg_connections(&admin, &db.name).await;
                faults.pg_connections_terminated += n;
                world.note(format!("postgres: terminated {n} plugin connections"));
            }
            // ... while a subscriber that just came back is being replayed to.
            12..=14 => {
                faults.sub_drops += 1;
                faults.pg_kills += 1;
                let down = rng.ms(300, 1500);
                let _ = subs[s].tx.send(SubCmd::Drop { down });
                tokio::time::sleep(down + rng.ms(0, 300)).await;
                let n = kill_pg_connections(&admin, &db.name).await;
                faults.pg_connections_terminated += n;
                world.note(format!(
                    "postgres: terminated {n} plugin connections (while {} reconnects)",
                    sub_ids[s]
                ));
            }
            // SIGKILL; sometimes a subscriber then drops inside its replay.
            _ => {
                faults.broker_kills += 1;
                let down = rng.ms(0, 800);
                let arm = rng.below(2) == 0;
                let n = 1 + rng.below(2 * PAGE + 5);
                let down_after = rng.ms(0, 800);
                crash_and_restart(&mut broker, &addr_tx, &world, &pg, &sub_ids, down).await;
                if arm {
                    faults.mid_stream_armed += 1;
                    world.note(format!(
                        "schedule: {} will drop after {n} messages of its replay",
                        sub_ids[s]
                    ));
                    let _ = subs[s].tx.send(SubCmd::DropAfter { n, down: down_after });
                }
            }
        }
    }
    world.note("faults stop");

    // Publishers finish the message in hand and stop.
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
    while missing(&subs) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained_in = drain_start.elapsed();
    world.note(format!("drained ({} deliveries missing)", missing(&subs)));
    // What a subscriber has not received by now is lost, even if the
    // reconnect after the last crash below brings it.
    let lost_at_drain: Vec<Vec<String>> = subs
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
    let max_id = query_opt_i64(&pg, "select max(id)::int8 from mqtt_msg")
        .await
        .unwrap_or(0);
    let positions_deadline = Instant::now().max(drain_deadline) + Duration::from_secs(5);
    let mut positions;
    loop {
        positions = Vec::new();
        for id in &sub_ids {
            positions.push(position(&pg, id, FILTER).await);
        }
        if positions.iter().all(|p| *p == Some(max_id)) || Instant::now() >= positions_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    world.note(format!("positions {positions:?}, newest stored id {max_id}"));

    // A last crash after everything was acknowledged: what comes back now
    // was either never acknowledged or is a repeat.
    let received_before: Vec<usize> = subs
        .iter()
        .map(|s| lock(&s.log).received.values().map(Vec::len).sum())
        .collect();
    let connects_before: Vec<usize> = subs.iter().map(|s| lock(&s.log).connects).collect();
    faults.broker_kills += 1;
    crash_and_restart(&mut broker, &addr_tx, &world, &pg, &sub_ids, Duration::ZERO).await;
    let deadline = Instant::now() + TIMEOUT;
    while subs
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
    let after_last_crash: Vec<usize> = subs
        .iter()
        .zip(&received_before)
        .map(|(s, before)| lock(&s.log).received.values().map(Vec::len).sum::<usize>() - before)
        .collect();
    world.note(format!(
        "after the last crash: {after_last_crash:?} messages received"
    ));

    for s in &subs {
        let _ = s.tx.send(SubCmd::Stop);
    }
    for s in &mut subs {
        tokio::time::timeout(TIMEOUT, &mut s.task)
            .await
            .unwrap_or_else(|_| panic!("{} did not stop", s.id))
            .expect("subscriber task");
    }

    // ---- Counts ----
    let unacked = lock(&world.unacked).clone();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "\n===== chaos: seed {seed}, {secs} s of faults, {:.1} s in all (drain {:.1} s) =====",
        world.now(),
        drained_in.as_secs_f64()
    );
    let _ = writeln!(
        report,
        "faults: {} subscriber drops ({} armed to land mid-replay, {} fired), {} PostgreSQL kills ({} connections \
         terminated), {} broker SIGKILLs (the last one after the drain)",
        faults.sub_drops,
        faults.mid_stream_armed,
        subs.iter().map(|s| lock(&s.log).mid_stream_drops).sum::<usize>(),
        faults.pg_kills,
        faults.pg_connections_terminated,
        faults.broker_kills
    );
    let _ = writeln!(
        report,
        "publishers: {} publishes, {} acknowledged, {} given up without PUBACK (published again)",
        world.attempts.load(Ordering::SeqCst),
        expected.len(),
        unacked.len()
    );
    let _ = writeln!(
        report,
        "stored: {} rows, newest id {max_id}; positions at the end {positions:?}; received after the last crash {after_last_crash:?}",
        query_opt_i64(&pg, "select count(*) from mqtt_msg").await.unwrap_or(0)
    );
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
    for (Sub { id, log, .. }, lost) in subs.iter().zip(lost_at_drain) {
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
        subs.iter().map(|s| lock(&s.log).received.len()).sum::<usize>(),
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
    if total_repeated > 0 {
        // Where each repeat comes from, judged by the SIGKILLs between the
        // PUBACK and the repeat and the positions read just before them.
        let ids: HashMap<String, i64> = pg
            .query(
                "select convert_from(payload, 'UTF8'), id::int8 from mqtt_msg",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let kills = lock(&world.kills).clone();
        let _ = writeln!(report, "repeats by cause:");
        for (i, reps) in repeats_by_sub.iter().enumerate() {
            let mut by_kind: Vec<(RepeatKind, usize, String, f64)> = Vec::new();
            for r in reps {
                let (kind, why, lead) = classify(r, i, ids.get(&r.payload).copied(), &kills);
                if matches!(
                    kind,
                    RepeatKind::NoCrashBetween | RepeatKind::DurablyAckedBeforeCrash
                ) {
                    violations += 1;
                }
                let lead = lead.unwrap_or(0.0);
                match by_kind.iter_mut().find(|(k, _, _, _)| *k == kind) {
                    Some((_, n, _, max_lead)) => {
                        *n += 1;
                        *max_lead = max_lead.max(lead);
                    }
                    None => by_kind.push((kind, 1, why, lead)),
                }
            }
            for (kind, n, example, max_lead) in by_kind {
                let lead = if kind == RepeatKind::NoCrashBetween {
                    String::new()
                } else {
                    format!(
                        " (PUBACK at most {:.0} ms before the SIGKILL)",
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
        "repeats of an acknowledgement the broker had recorded (violations): {violations}"
    );
    println!("{report}");

    if total_lost == 0 && violations == 0 {
        return;
    }

    // ---- Diagnosis: the first lost and the first repeated message ----
    let timeline = lock(&world.timeline).clone();
    let window = |from: f64, to: f64| -> String {
        let mut s = String::new();
        for (t, what) in timeline.iter().filter(|(t, _)| *t >= from && *t <= to) {
            let _ = writeln!(s, "    {t:8.3}  {what}");
        }
        s
    };
    let mut diag = String::new();
    for (i, Sub { id, log, .. }) in subs.iter().enumerate() {
        if let Some(first) = lost_by_sub[i].first() {
            let t = expected[first];
            let rows = pg
                .query(
                    "select id::int8, topic from mqtt_msg where payload = $1",
                    &[&first.as_bytes()],
                )
                .await
                .unwrap();
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
        if let Some(r) = repeats_by_sub[i].first() {
            let times = lock(log).received.get(&r.payload).cloned().unwrap_or_default();
            let rows = pg
                .query(
                    "select id::int8, topic from mqtt_msg where payload = $1",
                    &[&r.payload.as_bytes()],
                )
                .await
                .unwrap();
            let stored: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let _ = writeln!(
                diag,
                "{id}: first repeat {} (received at {times:?}, PUBACK written at {:.3}, again at {:.3}; stored as \
                 {stored:?}; {} repeats in all: {:?})\n  events from 2 s before the PUBACK to the repeat:\n{}",
                r.payload,
                r.acked_at,
                r.again_at,
                repeats_by_sub[i].len(),
                repeats_by_sub[i]
                    .iter()
                    .take(10)
                    .map(|r| r.payload.as_str())
                    .collect::<Vec<_>>(),
                window(r.acked_at - 2.0, r.again_at + 0.5)
            );
        }
    }
    let _ = writeln!(
        diag,
        "publishes given up without PUBACK (first 20): {:?}",
        &unacked[..unacked.len().min(20)]
    );
    println!("===== diagnosis =====\n{diag}");
    println!("===== timeline =====\n{}", window(f64::MIN, f64::MAX));
    assert!(
        total_lost == 0 && violations == 0,
        "seed {seed}: {total_lost} lost, {violations} repeated after the broker recorded the ack (see the report above)"
    );
}
