//! The MQTT scenarios: message load (one-to-one, fan-in, fan-out), offline
//! replay and idle-connection scale, each against any broker address.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS, SubscribeReasonCode};
use serde_json::{json, Map};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::payload::{self, Clock, Header};
use crate::report::{Counters, Progress, ScenarioResult};
use crate::stats::{self, Latency, Tracker};

/// The error type of the tool.
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// How long a client may take to connect and subscribe.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// A run whose publishers are done ends after this long without progress.
const IDLE_END: Duration = Duration::from_secs(5);

/// The broker a scenario runs against.
#[derive(Debug, Clone)]
pub struct Target {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Label used in the results.
    pub label: String,
}

impl Target {
    /// Parses `HOST:PORT`; the label defaults to the address.
    pub fn parse(addr: &str, label: Option<String>) -> Result<Self, BenchError> {
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("--broker {addr}: expected HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("--broker {addr}: bad port `{port}`"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() || port == 0 {
            return Err(format!("--broker {addr}: expected HOST:PORT").into());
        }
        Ok(Target {
            host,
            port,
            label: label.unwrap_or_else(|| addr.to_string()),
        })
    }
}

/// A unique prefix for client ids and topics of this process's run.
pub fn run_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("bench-{}-{}", std::process::id(), secs % 100_000_000)
}

/// Which clients send to which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// N publishers, each with its own topic and its own subscriber.
    OneToOne,
    /// N publishers on one topic, one subscriber.
    FanIn,
    /// One publisher, N subscribers of its topic.
    FanOut,
}

impl Shape {
    /// The scenario's name.
    pub fn name(self) -> &'static str {
        match self {
            Shape::OneToOne => "one-to-one",
            Shape::FanIn => "fan-in",
            Shape::FanOut => "fan-out",
        }
    }
}

/// Parameters of a message-load run.
#[derive(Debug, Clone)]
pub struct LoadParams {
    /// Topology.
    pub shape: Shape,
    /// Pairs (one-to-one), publishers (fan-in) or subscribers (fan-out).
    pub clients: u32,
    /// QoS of publishes and subscriptions.
    pub qos: u8,
    /// Payload size in bytes (at least 16).
    pub payload: usize,
    /// Messages published in total, spread evenly over the publishers.
    pub count: u64,
    /// Messages per second, all publishers together; 0 = as fast as possible.
    pub rate: f64,
    /// The run ends when this has passed, received or not.
    pub timeout: Duration,
    /// Publisher in-flight window (QoS 1/2).
    pub inflight: u16,
    /// Prefix for client ids and topics.
    pub run_id: String,
}

fn qos_of(q: u8) -> Result<QoS, BenchError> {
    match q {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        _ => Err(format!("QoS {q}: expected 0, 1 or 2").into()),
    }
}

fn options(target: &Target, id: &str, payload: usize, inflight: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, target.host.clone(), target.port);
    let max = payload.max(payload::HEADER_LEN) + 1024;
    o.set_keep_alive(Duration::from_secs(60))
        .set_clean_session(true)
        .set_max_packet_size(max, max)
        .set_inflight(inflight.max(1));
    o
}

/// Polls until CONNACK (errors and refusals end it).
async fn connect(el: &mut EventLoop) -> Result<(), BenchError> {
    let fut = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(BenchError::from(format!("connect: {e}"))),
            }
        }
    };
    tokio::time::timeout(SETUP_TIMEOUT, fut)
        .await
        .map_err(|_| format!("no CONNACK within {SETUP_TIMEOUT:?}"))?
}

/// Subscribes and polls until the SUBACK; publishes that arrive meanwhile
/// are handed to `on_publish`.
async fn subscribe(
    client: &AsyncClient,
    el: &mut EventLoop,
    topic: &str,
    qos: QoS,
    mut on_publish: impl FnMut(&rumqttc::Publish),
) -> Result<(), BenchError> {
    client
        .subscribe(topic, qos)
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    let fut = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        return Err(BenchError::from(format!("SUBSCRIBE {topic} refused")));
                    }
                    return Ok(());
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => on_publish(&p),
                Ok(_) => {}
                Err(e) => return Err(BenchError::from(format!("subscribe {topic}: {e}"))),
            }
        }
    };
    tokio::time::timeout(SETUP_TIMEOUT, fut)
        .await
        .map_err(|_| format!("no SUBACK within {SETUP_TIMEOUT:?}"))?
}

/// Polls a client until `stop` (or a connection error); nothing is recorded.
async fn idle(el: &mut EventLoop, stop: &mut watch::Receiver<bool>) -> bool {
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return true,
            ev = el.poll() => if ev.is_err() { return false },
        }
    }
}

/// State shared by the clients of one run.
struct Shared {
    clock: Clock,
    counters: Arc<Counters>,
    /// Clock time of the last first-copy receive or acknowledgement.
    last_event_ns: AtomicU64,
}

impl Shared {
    fn mark(&self, now_ns: u64) {
        self.last_event_ns.fetch_max(now_ns, Ordering::Relaxed);
    }
}

/// Splits `count` over `n` (the first ones get the remainder).
fn split(count: u64, n: u32) -> Result<Vec<u32>, BenchError> {
    let n64 = u64::from(n.max(1));
    (0..n64)
        .map(|i| {
            let c = count / n64 + u64::from(i < count % n64);
            u32::try_from(c).map_err(|_| BenchError::from("too many messages per publisher"))
        })
        .collect()
}

/// Runs one message-load scenario.
pub async fn run_load(target: &Target, p: &LoadParams) -> Result<ScenarioResult, BenchError> {
    let qos = qos_of(p.qos)?;
    if p.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    let (pubs, subs) = match p.shape {
        Shape::OneToOne => (p.clients, p.clients),
        Shape::FanIn => (p.clients, 1),
        Shape::FanOut => (1, p.clients),
    };
    let per_pub = split(p.count, pubs)?;
    let prefix = format!("bench/{}", p.run_id);
    let topic_of = |publisher: u32| match p.shape {
        Shape::OneToOne => format!("{prefix}/p{publisher}"),
        Shape::FanIn => format!("{prefix}/in"),
        Shape::FanOut => format!("{prefix}/out"),
    };
    let shared = Arc::new(Shared {
        clock: Clock::new(),
        counters: Arc::new(Counters::default()),
        last_event_ns: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);

    // Subscribers first: connected and subscribed before anything is sent.
    let mut sub_tasks: Vec<JoinHandle<Result<Tracker, BenchError>>> = Vec::new();
    let mut ready = Vec::new();
    for s in 0..subs {
        let (first, expect): (u32, Vec<u32>) = match p.shape {
            Shape::OneToOne => (s, vec![per_pub[s as usize]]),
            Shape::FanIn => (0, per_pub.clone()),
            Shape::FanOut => (0, per_pub.clone()),
        };
        let topic = topic_of(s);
        let (client, mut el) = new_client(options(target, &format!("{}-s{s}", p.run_id), p.payload, 10), 16);
        let shared = shared.clone();
        let mut stop = stop_rx.clone();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), BenchError>>();
        ready.push(ready_rx);
        sub_tasks.push(tokio::spawn(async move {
            let mut tracker = Tracker::new(first, &expect);
            let setup = async {
                connect(&mut el).await?;
                subscribe(&client, &mut el, &topic, qos, |_| {}).await
            };
            match setup.await {
                Ok(()) => {
                    let _ = ready_tx.send(Ok(()));
                }
                Err(e) => {
                    let msg = e.to_string();
                    let _ = ready_tx.send(Err(e));
                    return Err(msg.into());
                }
            }
            loop {
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    ev = el.poll() => match ev {
                        Ok(Event::Incoming(Incoming::Publish(msg))) => {
                            let now = shared.clock.now_ns();
                            if tracker.record(payload::decode(&msg.payload), now) {
                                shared.counters.received.fetch_add(1, Ordering::Relaxed);
                                shared.mark(now);
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                            eprintln!("bench: subscriber {s}: {e}");
                            break;
                        }
                    },
                }
            }
            let _ = client.try_disconnect();
            Ok(tracker)
        }));
    }
    for r in ready {
        r.await.map_err(|_| "subscriber task ended")??;
    }

    // Publishers: connect all, then start together.
    let mut drivers = Vec::new();
    let mut clients = Vec::new();
    for i in 0..pubs {
        let (client, mut el) = new_client(
            options(target, &format!("{}-p{i}", p.run_id), p.payload, p.inflight),
            16,
        );
        connect(&mut el).await?;
        let shared = shared.clone();
        let mut stop = stop_rx.clone();
        drivers.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    ev = el.poll() => match ev {
                        Ok(Event::Incoming(Incoming::PubAck(_) | Incoming::PubComp(_))) => {
                            shared.counters.acked.fetch_add(1, Ordering::Relaxed);
                            shared.mark(shared.clock.now_ns());
                        }
                        Ok(_) => {}
                        Err(e) => {
                            shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                            eprintln!("bench: publisher {i}: {e}");
                            break;
                        }
                    },
                }
            }
        }));
        clients.push(client);
    }

    let expected: u64 = per_pub.iter().map(|n| u64::from(*n)).sum::<u64>()
        * match p.shape {
            Shape::FanOut => u64::from(subs),
            _ => 1,
        };
    let label = format!("{} {}", p.shape.name(), target.label);
    let progress = Progress::start(label, shared.counters.clone(), expected);
    let start = Instant::now();
    let start_ns = shared.clock.ns_at(start);
    let rate_per_pub = if p.rate > 0.0 {
        p.rate / f64::from(pubs)
    } else {
        0.0
    };
    let mut senders = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let n = per_pub[i];
        let topic = topic_of(i as u32);
        let shared = shared.clone();
        let size = p.payload;
        senders.push(tokio::spawn(async move {
            let tstart = tokio::time::Instant::from_std(start);
            for seq in 0..n {
                if rate_per_pub > 0.0 {
                    let due = tstart + Duration::from_secs_f64(f64::from(seq) / rate_per_pub);
                    if due > tokio::time::Instant::now() {
                        tokio::time::sleep_until(due).await;
                    }
                }
                let header = Header {
                    sent_ns: shared.clock.now_ns(),
                    publisher: i as u32,
                    seq,
                };
                let body = payload::encode(header, size);
                if let Err(e) = client.publish(topic.clone(), qos, false, body).await {
                    shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("bench: publisher {i}: {e}");
                    break;
                }
                shared.counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            client
        }));
    }

    // Wait for everything expected, or the timeout.
    let published: u64 = per_pub.iter().map(|n| u64::from(*n)).sum();
    let deadline = start + p.timeout;
    let mut timed_out = false;
    let mut last_progress = (Instant::now(), 0u64, 0u64);
    loop {
        let c = &shared.counters;
        let rcv = c.received.load(Ordering::Relaxed);
        let ack = c.acked.load(Ordering::Relaxed);
        if rcv >= expected && (p.qos == 0 || ack >= published) {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        if (rcv, ack) != (last_progress.1, last_progress.2) {
            last_progress = (now, rcv, ack);
        } else if senders.iter().all(|s| s.is_finished()) && now - last_progress.0 > IDLE_END {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let end_ns = shared.last_event_ns.load(Ordering::Relaxed).max(start_ns);
    drop(progress);
    let _ = stop_tx.send(true);
    for s in &senders {
        s.abort();
    }
    for d in drivers {
        let _ = d.await;
    }
    let mut trackers = Vec::new();
    for t in sub_tasks {
        match t.await {
            Ok(Ok(tr)) => trackers.push(tr),
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("subscriber task: {e}").into()),
        }
    }
    let totals = stats::merge(trackers);
    let secs = (end_ns - start_ns) as f64 / 1e9;
    let counters = &shared.counters;
    let mut extra = Map::new();
    extra.insert("acked".into(), json!(counters.acked.load(Ordering::Relaxed)));
    extra.insert("expected".into(), json!(totals.expected));
    extra.insert("copies".into(), json!(totals.received));
    extra.insert("foreign".into(), json!(totals.foreign));
    extra.insert("errors".into(), json!(counters.errors.load(Ordering::Relaxed)));
    extra.insert("rate_limit".into(), json!(p.rate));
    extra.insert("timed_out".into(), json!(timed_out));
    let mut note = if p.rate > 0.0 {
        format!("at {} msg/s", p.rate)
    } else {
        String::new()
    };
    if timed_out {
        note = format!("{note} timed out after {:?}", p.timeout)
            .trim()
            .to_string();
    }
    Ok(ScenarioResult {
        scenario: p.shape.name().into(),
        target: target.label.clone(),
        clients: format!("{pubs}/{subs}"),
        qos: Some(p.qos),
        payload: Some(p.payload.max(payload::HEADER_LEN)),
        sent: counters.sent.load(Ordering::Relaxed),
        received: totals.unique,
        lost: totals.lost,
        dup: totals.dup,
        rate: if secs > 0.0 {
            totals.unique as f64 / secs
        } else {
            0.0
        },
        latency: Some(totals.latency),
        duration_s: secs,
        note,
        extra,
    })
}

/// Parameters of the offline-replay scenario.
#[derive(Debug, Clone)]
pub struct ReplayParams {
    /// Messages stored while the subscriber is away (K).
    pub count: u32,
    /// Payload size in bytes.
    pub payload: usize,
    /// Limit for each phase.
    pub timeout: Duration,
    /// Use a persistent session (clean session 0) instead of a clean one:
    /// for brokers that queue in the session rather than in a database.
    pub persistent: bool,
    /// Pause after registering and after disconnecting.
    pub settle: Duration,
    /// Publisher in-flight window.
    pub inflight: u16,
    /// Prefix for client ids and topics.
    pub run_id: String,
}

/// Offline replay: register, go away, K messages are published, come back;
/// the clock runs from the SUBSCRIBE to the K-th message acknowledged.
pub async fn run_replay(target: &Target, p: &ReplayParams) -> Result<ScenarioResult, BenchError> {
    if p.count == 0 {
        return Err("--count must be at least 1".into());
    }
    let topic = format!("bench/{}/replay", p.run_id);
    let sub_id = format!("{}-replay-sub", p.run_id);
    let clock = Clock::new();
    let counters = Arc::new(Counters::default());

    // 1. Register: subscribe QoS 1, then disconnect cleanly.
    let mut o = options(target, &sub_id, p.payload, 10);
    o.set_clean_session(!p.persistent);
    let (client, mut el) = new_client(o, 16);
    connect(&mut el).await?;
    subscribe(&client, &mut el, &topic, QoS::AtLeastOnce, |_| {}).await?;
    tokio::time::sleep(p.settle).await;
    disconnect(&client, &mut el).await;
    drop(el);
    tokio::time::sleep(p.settle).await;

    // 2. Publish K messages at QoS 1 and wait for every PUBACK.
    let (pclient, mut pel) = new_client(
        options(target, &format!("{}-replay-pub", p.run_id), p.payload, p.inflight),
        16,
    );
    connect(&mut pel).await?;
    let progress = Progress::start(format!("replay {} store", target.label), counters.clone(), 0);
    let store_start = Instant::now();
    let size = p.payload;
    let n = p.count;
    let ptopic = topic.clone();
    let pc = counters.clone();
    let sender = tokio::spawn(async move {
        for seq in 0..n {
            let body = payload::encode(
                Header {
                    sent_ns: clock.now_ns(),
                    publisher: 0,
                    seq,
                },
                size,
            );
            if pclient
                .publish(ptopic.clone(), QoS::AtLeastOnce, false, body)
                .await
                .is_err()
            {
                break;
            }
            pc.sent.fetch_add(1, Ordering::Relaxed);
        }
        pclient
    });
    let store = async {
        let mut acked = 0u32;
        while acked < n {
            match pel.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_))) => {
                    acked += 1;
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => return Err(BenchError::from(format!("replay publisher: {e}"))),
            }
        }
        Ok(())
    };
    let stored = tokio::time::timeout(p.timeout, store).await;
    let store_secs = store_start.elapsed().as_secs_f64();
    sender.abort();
    drop(progress);
    match stored {
        Ok(r) => r?,
        Err(_) => {
            return Err(format!(
                "replay: only {} of {n} publishes acknowledged within {:?}",
                counters.acked.load(Ordering::Relaxed),
                p.timeout
            )
            .into())
        }
    }
    drop(pel);
    tokio::time::sleep(p.settle).await;

    // 3. Come back, subscribe again, acknowledge every message by hand.
    let mut o = options(target, &sub_id, p.payload, 10);
    o.set_clean_session(!p.persistent).set_manual_acks(true);
    // Room for every acknowledgement: try_ack never finds the channel full.
    let (client, mut el) = new_client(o, n as usize + 64);
    let mut tracker = Tracker::new(0, &[n]);
    let rcounters = Arc::new(Counters::default());
    let progress = Progress::start(
        format!("replay {} fetch", target.label),
        rcounters.clone(),
        n.into(),
    );
    // A persistent session may deliver right after CONNACK: start the clock
    // at CONNECT there.
    let mut t0 = Instant::now();
    connect(&mut el).await?;
    if !p.persistent {
        t0 = Instant::now();
    }
    let t0_ns = clock.ns_at(t0);
    client
        .subscribe(topic.clone(), QoS::AtLeastOnce)
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    let mut copies = 0u64;
    let mut acks_out = 0u64;
    let mut end: Option<Instant> = None;
    let fetch = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Incoming::Publish(msg))) => {
                    let now = clock.now_ns();
                    // Latency here is the time since the SUBSCRIBE.
                    let h = payload::decode(&msg.payload).map(|h| Header { sent_ns: t0_ns, ..h });
                    if tracker.record(h, now) {
                        rcounters.received.fetch_add(1, Ordering::Relaxed);
                    }
                    copies += 1;
                    if msg.qos != QoS::AtMostOnce {
                        client.try_ack(&msg).map_err(|e| format!("ack: {e}"))?;
                    }
                }
                Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        return Err(BenchError::from("replay SUBSCRIBE refused"));
                    }
                }
                Ok(Event::Outgoing(Outgoing::PubAck(_))) => {
                    acks_out += 1;
                    rcounters.acked.fetch_add(1, Ordering::Relaxed);
                    if tracker.unique >= u64::from(n) && acks_out >= copies {
                        end = Some(Instant::now());
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(BenchError::from(format!("replay subscriber: {e}"))),
            }
        }
    };
    let fetched = tokio::time::timeout(p.timeout, fetch).await;
    drop(progress);
    let timed_out = match fetched {
        Ok(r) => {
            r?;
            false
        }
        Err(_) => true,
    };
    disconnect(&client, &mut el).await;
    let end = end.unwrap_or_else(Instant::now);
    let secs = (end - t0).as_secs_f64();
    let latency = Latency::of(std::mem::take(&mut tracker.latencies_us));
    let mut extra = Map::new();
    extra.insert("replay_s".into(), json!(secs));
    extra.insert("stored".into(), json!(n));
    extra.insert("store_s".into(), json!(store_secs));
    extra.insert("store_rate".into(), json!(f64::from(n) / store_secs.max(1e-9)));
    extra.insert("acks_sent".into(), json!(acks_out));
    extra.insert("persistent_session".into(), json!(p.persistent));
    extra.insert("timed_out".into(), json!(timed_out));
    let mut note = format!(
        "replay {secs:.3} s{}; latency = since {}",
        if timed_out { " (timed out)" } else { "" },
        if p.persistent { "CONNECT" } else { "SUBSCRIBE" }
    );
    if p.persistent {
        note.push_str("; persistent session");
    }
    Ok(ScenarioResult {
        scenario: "replay".into(),
        target: target.label.clone(),
        clients: "1/1".into(),
        qos: Some(1),
        payload: Some(p.payload.max(payload::HEADER_LEN)),
        sent: counters.sent.load(Ordering::Relaxed),
        received: tracker.unique,
        lost: tracker.lost(),
        dup: tracker.duplicates(),
        rate: if secs > 0.0 {
            tracker.unique as f64 / secs
        } else {
            0.0
        },
        latency: Some(latency),
        duration_s: secs,
        note,
        extra,
    })
}

/// Sends DISCONNECT and polls until it is written (bounded).
async fn disconnect(client: &AsyncClient, el: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let fut = async {
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), fut).await;
}

/// Parameters of the connection-scale scenario.
#[derive(Debug, Clone)]
pub struct ConnParams {
    /// Idle connections to open.
    pub count: u32,
    /// Connections being set up at once.
    pub concurrency: u32,
    /// How long to keep them open once all are up.
    pub hold: Duration,
    /// Keep alive of each connection.
    pub keep_alive: Duration,
    /// The broker's process id, for its resident memory.
    pub broker_pid: Option<u32>,
    /// Limit for opening them all.
    pub timeout: Duration,
    /// Prefix for client ids.
    pub run_id: String,
}

/// The resident set size of a process in KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kib(pid: u32) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse_vmrss(&text).ok_or_else(|| format!("{path}: no VmRSS line").into())
}

fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(n),
        Some("mB") | Some("MB") => Some(n * 1024),
        _ => None,
    }
}

/// Opens N idle connections: connect rate, CONNECT-to-CONNACK times, and
/// the broker's resident memory per connection.
pub async fn run_connections(target: &Target, p: &ConnParams) -> Result<ScenarioResult, BenchError> {
    if p.count == 0 || p.concurrency == 0 {
        return Err("--count and --concurrency must be at least 1".into());
    }
    let rss_before = p.broker_pid.map(rss_kib).transpose()?;
    let counters = Arc::new(Counters::default());
    let clock = Clock::new();
    let last_ns = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(Semaphore::new(p.concurrency as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    let progress = Progress::start(
        format!("connections {}", target.label),
        counters.clone(),
        p.count.into(),
    );
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(p.count as usize);
    for i in 0..p.count {
        let sem = sem.clone();
        let counters = counters.clone();
        let last_ns = last_ns.clone();
        let dropped = dropped.clone();
        let mut stop = stop_rx.clone();
        let mut o = options(target, &format!("{}-c{i}", p.run_id), 64, 10);
        o.set_keep_alive(p.keep_alive);
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            let (_client, mut el) = new_client(o, 4);
            let t = Instant::now();
            counters.sent.fetch_add(1, Ordering::Relaxed);
            match connect(&mut el).await {
                Ok(()) => {
                    let done = Instant::now();
                    counters.received.fetch_add(1, Ordering::Relaxed);
                    last_ns.fetch_max(clock.ns_at(done), Ordering::Relaxed);
                    drop(permit);
                    let us = u64::try_from((done - t).as_micros()).unwrap_or(u64::MAX);
                    if !idle(&mut el, &mut stop).await {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(us)
                }
                Err(e) => {
                    if counters.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("bench: connection {i}: {e}");
                    }
                    None
                }
            }
        }));
    }
    let deadline = start + p.timeout;
    let mut timed_out = false;
    loop {
        let up = counters.received.load(Ordering::Relaxed);
        let failed = counters.errors.load(Ordering::Relaxed);
        if up + failed >= u64::from(p.count) {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(progress);
    let connected = counters.received.load(Ordering::Relaxed);
    let secs = (clock.instant_at(last_ns.load(Ordering::Relaxed)).max(start) - start).as_secs_f64();
    // Let the broker settle, then read its memory with everyone connected.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = p.broker_pid.map(rss_kib).transpose()?;
    tokio::time::sleep(p.hold).await;
    let still_up = connected - dropped.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let mut times = Vec::with_capacity(p.count as usize);
    for t in tasks {
        if let Ok(Some(us)) = t.await {
            times.push(us);
        }
    }
    let mut extra = Map::new();
    let mut note = String::new();
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        let per = if connected > 0 {
            (a as f64 - b as f64) / connected as f64
        } else {
            0.0
        };
        extra.insert("rss_before_kib".into(), json!(b));
        extra.insert("rss_after_kib".into(), json!(a));
        extra.insert("rss_per_conn_kib".into(), json!((per * 100.0).round() / 100.0));
        note = format!("RSS {per:.2} KiB/conn ({b} -> {a} KiB)");
    }
    extra.insert("connected".into(), json!(connected));
    extra.insert("still_up_after_hold".into(), json!(still_up));
    extra.insert("hold_s".into(), json!(p.hold.as_secs_f64()));
    extra.insert("timed_out".into(), json!(timed_out));
    if !note.is_empty() {
        note.push_str("; ");
    }
    note.push_str("msgs/s = connections/s; latency = CONNECT to CONNACK");
    Ok(ScenarioResult {
        scenario: "connections".into(),
        target: target.label.clone(),
        clients: p.count.to_string(),
        qos: None,
        payload: None,
        sent: u64::from(p.count),
        received: connected,
        lost: u64::from(p.count) - connected,
        dup: 0,
        rate: if secs > 0.0 { connected as f64 / secs } else { 0.0 },
        latency: Some(Latency::of(times)),
        duration_s: secs,
        note,
        extra,
    })
}

/// A client with Nagle's algorithm off, as MQTT client libraries commonly
/// configure it: otherwise a client's last small packet of a burst (a PUBACK)
/// waits for the broker's delayed TCP acknowledgement (~40 ms on Linux), and
/// every round-trip-bound figure measures that timer instead of the broker.
fn new_client(options: rumqttc::MqttOptions, cap: usize) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, cap);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    (client, eventloop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_parsing() {
        let t = Target::parse("127.0.0.1:1884", None).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.label.as_str()),
            ("127.0.0.1", 1884, "127.0.0.1:1884")
        );
        let t = Target::parse("[::1]:9000", Some("x".into())).unwrap();
        assert_eq!((t.host.as_str(), t.port, t.label.as_str()), ("::1", 9000, "x"));
        assert!(Target::parse("localhost", None).is_err());
        assert!(Target::parse("h:0", None).is_err());
        assert!(Target::parse("h:port", None).is_err());
    }

    #[test]
    fn split_spreads_the_remainder() {
        assert_eq!(split(10, 3).unwrap(), vec![4, 3, 3]);
        assert_eq!(split(2, 4).unwrap(), vec![1, 1, 0, 0]);
        assert_eq!(split(7, 1).unwrap(), vec![7]);
    }

    #[test]
    fn vmrss() {
        let s = "Name:\tpostbox\nVmPeak:\t  100 kB\nVmRSS:\t   5120 kB\nThreads: 3\n";
        assert_eq!(parse_vmrss(s), Some(5120));
        assert_eq!(parse_vmrss("Name: x\n"), None);
    }

    #[test]
    fn own_rss_is_readable() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
