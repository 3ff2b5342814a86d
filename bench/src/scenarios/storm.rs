//! Reconnect storm: N persistent sessions (clean session 0), each with a
//! small backlog stored while it was offline, all coming back at once.
//!
//! 1. Register: each session connects with clean session 0, subscribes at
//!    QoS 1 to its own topic and disconnects (`--concurrency` at a time).
//! 2. Store: publishers send B QoS 1 messages to every session's topic and
//!    wait for every PUBACK.
//! 3. Storm (measured): every session reconnects (`--concurrency` CONNECTs in
//!    flight), acknowledges what it receives and leaves once it has its B
//!    messages. The clock runs from the first CONNECT to the last session
//!    drained; latency is each session's CONNECT to its B-th message. The
//!    CPU time of `--cpu-pids` (the broker, the database's server
//!    processes) covers this phase only: that is the database load.
//!
//! The bench's lean connection ([`super::wire`]) keeps the client's CPU
//! small; connections rotate over `--sources` local addresses 127.0.0.x so
//! that 100,000 sessions do not run out of one address's ephemeral ports.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqttbytes::v4::{self, Packet};
use mqttbytes::QoS;
use serde_json::{json, Map};
use tokio::sync::Semaphore;

use super::wire::{Outgoing, PacketIds, WireConn};
use super::{BenchError, Target};
use crate::cpu::CpuWatch;
use crate::payload::{self, Clock, Header};
use crate::report::{Counters, Progress, ScenarioResult};
use crate::stats::Latency;

/// Publishers storing the backlogs.
const PUBLISHERS: u32 = 4;
/// Unacknowledged publishes per publisher.
const WINDOW: usize = 500;

/// Parameters of the reconnect-storm scenario.
#[derive(Debug, Clone)]
pub struct StormParams {
    /// Persistent sessions (N).
    pub sessions: u32,
    /// Messages stored for each while it is offline (B).
    pub backlog: u32,
    /// Connections being set up at once (registration and storm).
    pub concurrency: u32,
    /// Payload size in bytes.
    pub payload: usize,
    /// Local addresses 127.0.0.1 .. 127.0.0.<sources> the clients connect from.
    pub sources: u8,
    /// Limit for each phase.
    pub timeout: Duration,
    /// Processes whose CPU time during the storm is reported.
    pub cpu_pids: Vec<u32>,
    /// Prefix for client ids and topics.
    pub run_id: String,
}

impl StormParams {
    fn client_id(&self, i: u32) -> String {
        format!("{}-s{i}", self.run_id)
    }

    fn topic(&self, i: u32) -> String {
        format!("bench/{}/storm/{i}", self.run_id)
    }

    fn source(&self, i: u32) -> Option<IpAddr> {
        let n = u32::from(self.sources.max(1));
        // 127.0.0.1 ..= 127.0.0.<sources>; the remainder is below 255.
        let last = u8::try_from(1 + i % n).unwrap_or(1);
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
    }
}

/// Runs the three phases; the result describes the storm.
pub async fn run_storm(target: &Target, p: &StormParams) -> Result<ScenarioResult, BenchError> {
    if p.sessions == 0 || p.backlog == 0 || p.concurrency == 0 {
        return Err("--sessions, --backlog and --concurrency must be at least 1".into());
    }
    let p = Arc::new(p.clone());
    let target = Arc::new(target.clone());

    let t = Instant::now();
    register(&target, &p).await?;
    let register_s = t.elapsed().as_secs_f64();
    eprintln!(
        "bench: storm: {} sessions registered in {register_s:.1} s",
        p.sessions
    );

    let t = Instant::now();
    store(&target, &p).await?;
    let store_s = t.elapsed().as_secs_f64();
    let total = u64::from(p.sessions) * u64::from(p.backlog);
    eprintln!("bench: storm: {total} messages stored in {store_s:.1} s");

    let counters = Arc::new(Counters::default());
    let dup = Arc::new(AtomicU64::new(0));
    let clock = Clock::new();
    let last_ns = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(Semaphore::new(p.concurrency as usize));
    let progress = Progress::start(format!("storm {}", target.label), counters.clone(), total);
    let cpu = CpuWatch::start(&p.cpu_pids);
    let start = Instant::now();
    let deadline = start + p.timeout;
    let mut tasks = Vec::with_capacity(p.sessions as usize);
    for i in 0..p.sessions {
        let (p, target, sem) = (p.clone(), target.clone(), sem.clone());
        let (counters, dup, last_ns) = (counters.clone(), dup.clone(), last_ns.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let t = Instant::now();
            let drain = drain_one(&target, &p, i, &counters, &dup);
            match tokio::time::timeout_at(deadline.into(), drain).await {
                Ok(Ok(())) => {
                    let done = Instant::now();
                    last_ns.fetch_max(clock.ns_at(done), Ordering::Relaxed);
                    Some(u64::try_from((done - t).as_micros()).unwrap_or(u64::MAX))
                }
                Ok(Err(e)) => {
                    if counters.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("bench: storm: session {i}: {e}");
                    }
                    None
                }
                Err(_) => {
                    if counters.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("bench: storm: session {i}: not drained within {:?}", p.timeout);
                    }
                    None
                }
            }
        }));
    }
    let mut times = Vec::with_capacity(p.sessions as usize);
    for t in tasks {
        if let Ok(Some(us)) = t.await {
            times.push(us);
        }
    }
    let cpu_s = cpu.finish();
    drop(progress);
    let received = counters.received.load(Ordering::Relaxed);
    let drained = times.len() as u64;
    let secs = (clock.instant_at(last_ns.load(Ordering::Relaxed)).max(start) - start).as_secs_f64();
    let mut extra = Map::new();
    extra.insert("sessions".into(), json!(p.sessions));
    extra.insert("backlog".into(), json!(p.backlog));
    extra.insert("drained_sessions".into(), json!(drained));
    extra.insert("register_s".into(), json!(register_s));
    extra.insert("store_s".into(), json!(store_s));
    if !cpu.is_empty() {
        extra.insert("cpu_s".into(), cpu_s);
    }
    Ok(ScenarioResult {
        scenario: "storm".into(),
        target: target.label.clone(),
        clients: p.sessions.to_string(),
        qos: Some(1),
        payload: Some(p.payload),
        sent: total,
        received,
        lost: total.saturating_sub(received),
        dup: dup.load(Ordering::Relaxed),
        rate: if secs > 0.0 { received as f64 / secs } else { 0.0 },
        latency: Some(Latency::of(times)),
        duration_s: secs,
        note: format!(
            "{} sessions x {} messages; {drained} drained in {secs:.2} s; latency = a session's CONNECT to its last \
             message; registering {register_s:.1} s, storing {store_s:.1} s",
            p.sessions, p.backlog
        ),
        extra,
    })
}

/// Phase 1: every session subscribes once and leaves (its session stays).
async fn register(target: &Arc<Target>, p: &Arc<StormParams>) -> Result<(), BenchError> {
    let sem = Arc::new(Semaphore::new(p.concurrency as usize));
    let mut tasks = Vec::with_capacity(p.sessions as usize);
    for i in 0..p.sessions {
        let (p, target, sem) = (p.clone(), target.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let mut c =
                WireConn::connect_with(&target, &p.client_id(i), p.payload, false, p.source(i)).await?;
            c.subscribe(&p.topic(i), QoS::AtLeastOnce).await?;
            c.disconnect().await;
            Ok::<(), BenchError>(())
        }));
    }
    let fut = async {
        for t in tasks {
            t.await.map_err(|e| format!("register task: {e}"))??;
        }
        Ok::<(), BenchError>(())
    };
    tokio::time::timeout(p.timeout, fut).await.map_err(|_| {
        format!(
            "registering {} sessions took more than {:?}",
            p.sessions, p.timeout
        )
    })?
}

/// Phase 2: B messages to every session's topic, QoS 1, all acknowledged.
async fn store(target: &Arc<Target>, p: &Arc<StormParams>) -> Result<(), BenchError> {
    let clock = Clock::new();
    let mut tasks = Vec::new();
    for publisher in 0..PUBLISHERS.min(p.sessions) {
        let (p, target) = (p.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("{}-storm-pub{publisher}", p.run_id);
            let mut c = WireConn::connect_with(&target, &id, p.payload, true, p.source(publisher)).await?;
            let mut ids = PacketIds::new();
            let mine: Vec<u32> = (publisher..p.sessions).step_by(PUBLISHERS as usize).collect();
            let mut next = (0u32, 0usize); // (message b, index into `mine`)
            loop {
                while ids.len() < WINDOW && next.0 < p.backlog {
                    let i = mine[next.1];
                    let Some(pkid) = ids.take() else { break };
                    let body = payload::encode(
                        Header {
                            sent_ns: clock.now_ns(),
                            publisher: i,
                            seq: next.0,
                        },
                        p.payload,
                    );
                    let mut publish = v4::Publish::new(p.topic(i), QoS::AtLeastOnce, body);
                    publish.pkid = pkid;
                    c.push(Outgoing::Publish(publish))?;
                    next.1 += 1;
                    if next.1 == mine.len() {
                        next = (next.0 + 1, 0);
                    }
                }
                c.flush().await?;
                if ids.len() == 0 && next.0 >= p.backlog {
                    break;
                }
                c.read_some().await?;
                while let Some(packet) = c.next_packet()? {
                    if let Packet::PubAck(ack) = packet {
                        ids.release(ack.pkid);
                    }
                }
            }
            c.disconnect().await;
            Ok::<(), BenchError>(())
        }));
    }
    let fut = async {
        for t in tasks {
            t.await.map_err(|e| format!("store task: {e}"))??;
        }
        Ok::<(), BenchError>(())
    };
    tokio::time::timeout(p.timeout, fut)
        .await
        .map_err(|_| format!("storing the backlogs took more than {:?}", p.timeout))?
}

/// Phase 3 for one session: reconnect, acknowledge, leave once drained.
async fn drain_one(
    target: &Target,
    p: &StormParams,
    i: u32,
    counters: &Counters,
    dup: &AtomicU64,
) -> Result<(), BenchError> {
    counters.sent.fetch_add(u64::from(p.backlog), Ordering::Relaxed);
    let mut c = WireConn::connect_with(target, &p.client_id(i), p.payload, false, p.source(i)).await?;
    let mut seen: HashSet<u32> = HashSet::with_capacity(p.backlog as usize);
    // The first messages may have come with the CONNACK: look before reading.
    loop {
        while let Some(packet) = c.next_packet()? {
            if let Packet::Publish(publish) = packet {
                if publish.qos != QoS::AtMostOnce {
                    c.push(Outgoing::PubAck(publish.pkid))?;
                }
                match payload::decode(&publish.payload) {
                    Some(h) if h.publisher == i && seen.insert(h.seq) => {
                        counters.received.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(h) if h.publisher == i => {
                        dup.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => return Err(format!("{}: a message for another session", c.who()).into()),
                }
            }
        }
        c.flush().await?;
        if seen.len() >= p.backlog as usize {
            break;
        }
        c.read_some().await?;
    }
    c.disconnect().await;
    Ok(())
}
