//! Offline replay: K messages stored while a subscriber is away, replayed
//! when it comes back.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, Incoming, Outgoing, QoS, SubscribeReasonCode};
use serde_json::{json, Map};

use super::{connect, new_client, options, subscribe, BenchError, Target};
use crate::cpu::CpuWatch;
use crate::payload::{self, Clock, Header};
use crate::report::{Counters, Progress, ScenarioResult};
use crate::stats::{Latency, Tracker};

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
    /// Processes whose CPU time during the replay phase is reported.
    pub cpu_pids: Vec<u32>,
    /// The reconnecting subscriber is the bench's lean connection instead of rumqttc.
    pub lean: bool,
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
    if p.lean {
        return fetch_lean(
            target,
            p,
            &topic,
            &sub_id,
            counters.sent.load(Ordering::Relaxed),
            store_secs,
        )
        .await;
    }
    let mut o = options(target, &sub_id, p.payload, 10);
    o.set_clean_session(!p.persistent).set_manual_acks(true);
    // Room for every acknowledgement: try_ack never finds the channel full.
    let (client, mut el) = new_client(o, n as usize + 64);
    let mut tracker = Tracker::new(0, &[n]);
    let rcounters = Arc::new(Counters::default());
    let watch = FetchWatch::start(target, p, &rcounters);
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
    let (cpu_s, own_cpu_s) = watch.finish();
    let timed_out = match fetched {
        Ok(r) => {
            r?;
            false
        }
        Err(_) => true,
    };
    disconnect(&client, &mut el).await;
    let end = end.unwrap_or_else(Instant::now);
    let measured = Measured {
        secs: (end - t0).as_secs_f64(),
        store_secs,
        sent: counters.sent.load(Ordering::Relaxed),
        acks_out,
        timed_out,
        cpu_s,
        own_cpu_s,
        lean: false,
    };
    Ok(replay_result(target, p, &mut tracker, measured))
}

/// The progress line and CPU watches of a replay's fetch, whichever client runs it.
struct FetchWatch {
    progress: Progress,
    cpu: CpuWatch,
    own_cpu: CpuWatch,
}

impl FetchWatch {
    fn start(target: &Target, p: &ReplayParams, counters: &Arc<Counters>) -> FetchWatch {
        FetchWatch {
            progress: Progress::start(
                format!("replay {} fetch", target.label),
                Arc::clone(counters),
                p.count.into(),
            ),
            cpu: CpuWatch::start(&p.cpu_pids),
            own_cpu: CpuWatch::start(&[std::process::id()]),
        }
    }

    /// The watched processes' CPU (none watched: `None`) and the bench's own.
    fn finish(self) -> (Option<serde_json::Value>, serde_json::Value) {
        let cpu_s = self.cpu.finish();
        let own_cpu_s = self.own_cpu.finish();
        drop(self.progress);
        ((!self.cpu.is_empty()).then_some(cpu_s), own_cpu_s)
    }
}

/// What one replay run measured, made into its result.
struct Measured {
    secs: f64,
    store_secs: f64,
    sent: u64,
    acks_out: u64,
    timed_out: bool,
    cpu_s: Option<serde_json::Value>,
    own_cpu_s: serde_json::Value,
    lean: bool,
}

fn replay_result(target: &Target, p: &ReplayParams, tracker: &mut Tracker, m: Measured) -> ScenarioResult {
    let n = p.count;
    let secs = m.secs;
    let latency = Latency::of(std::mem::take(&mut tracker.latencies_us));
    let mut extra = Map::new();
    extra.insert("replay_s".into(), json!(secs));
    extra.insert("stored".into(), json!(n));
    extra.insert("store_s".into(), json!(m.store_secs));
    extra.insert("store_rate".into(), json!(f64::from(n) / m.store_secs.max(1e-9)));
    extra.insert("acks_sent".into(), json!(m.acks_out));
    extra.insert("persistent_session".into(), json!(p.persistent));
    extra.insert("timed_out".into(), json!(m.timed_out));
    extra.insert("client".into(), json!(if m.lean { "lean" } else { "rumqttc" }));
    if let Some(cpu_s) = m.cpu_s {
        extra.insert("cpu_s".into(), cpu_s);
    }
    // The subscriber's own CPU time (this process): it shares the machine.
    extra.insert("bench_cpu_s".into(), m.own_cpu_s["total"].clone());
    let mut note = format!(
        "replay {secs:.3} s{}{}; latency = since {}",
        if m.timed_out { " (timed out)" } else { "" },
        if m.lean { "; lean subscriber" } else { "" },
        if p.persistent { "CONNECT" } else { "SUBSCRIBE" }
    );
    if p.persistent {
        note.push_str("; persistent session");
    }
    ScenarioResult {
        scenario: "replay".into(),
        target: target.label.clone(),
        clients: "1/1".into(),
        qos: Some(1),
        payload: Some(p.payload.max(payload::HEADER_LEN)),
        sent: m.sent,
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
    }
}

/// Phase 3 with the bench's lean connection: reconnect, SUBSCRIBE, and
/// acknowledge every message as it is read (one write per burst).
async fn fetch_lean(
    target: &Target,
    p: &ReplayParams,
    topic: &str,
    sub_id: &str,
    sent: u64,
    store_secs: f64,
) -> Result<ScenarioResult, BenchError> {
    use super::wire::{Outgoing as WireOut, WireConn};
    use mqttbytes::v4::{self, Packet};

    let n = p.count;
    let clock = Clock::new();
    let mut tracker = Tracker::new(0, &[n]);
    let rcounters = Arc::new(Counters::default());
    let watch = FetchWatch::start(target, p, &rcounters);
    let mut t0 = Instant::now();
    let mut c = WireConn::connect_with(target, sub_id, p.payload, !p.persistent, None).await?;
    if !p.persistent {
        t0 = Instant::now();
    }
    let t0_ns = clock.ns_at(t0);
    let mut sub = v4::Subscribe::new(topic, mqttbytes::QoS::AtLeastOnce);
    sub.pkid = 1;
    sub.write(&mut c.out)
        .map_err(|e| format!("encode SUBSCRIBE: {e:?}"))?;
    let mut acks_out = 0u64;
    let fetch = async {
        loop {
            while let Some(packet) = c.next_packet()? {
                match packet {
                    Packet::Publish(msg) => {
                        let h = payload::decode(&msg.payload).map(|h| Header { sent_ns: t0_ns, ..h });
                        if tracker.record(h, clock.now_ns()) {
                            rcounters.received.fetch_add(1, Ordering::Relaxed);
                        }
                        if msg.qos != mqttbytes::QoS::AtMostOnce {
                            c.push(WireOut::PubAck(msg.pkid))?;
                            acks_out += 1;
                        }
                    }
                    Packet::SubAck(ack)
                        if ack
                            .return_codes
                            .iter()
                            .any(|r| matches!(r, v4::SubscribeReasonCode::Failure)) =>
                    {
                        return Err(BenchError::from("replay SUBSCRIBE refused"));
                    }
                    _ => {}
                }
            }
            c.flush().await?;
            if tracker.unique >= u64::from(n) {
                return Ok::<Instant, BenchError>(Instant::now());
            }
            c.read_some().await?;
        }
    };
    let fetched = tokio::time::timeout(p.timeout, fetch).await;
    let (cpu_s, own_cpu_s) = watch.finish();
    let (end, timed_out) = match fetched {
        Ok(r) => (r?, false),
        Err(_) => (Instant::now(), true),
    };
    c.disconnect().await;
    let measured = Measured {
        secs: (end - t0).as_secs_f64(),
        store_secs,
        sent,
        acks_out,
        timed_out,
        cpu_s,
        own_cpu_s,
        lean: true,
    };
    Ok(replay_result(target, p, &mut tracker, measured))
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
