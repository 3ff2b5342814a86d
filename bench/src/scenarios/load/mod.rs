//! Message load: one-to-one, fan-in and fan-out at a chosen QoS and rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{Event, Incoming, QoS};
use serde_json::{json, Map};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::{connect, new_client, options, subscribe, BenchError, Target};
use crate::cpu::CpuWatch;
use crate::payload::{self, Clock, Header};
use crate::report::{Counters, Progress, ScenarioResult};
use crate::stats::{self, Tracker};

/// A run whose publishers are done ends after this long without progress.
const IDLE_END: Duration = Duration::from_secs(5);

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
    /// Processes whose CPU time during the run is reported.
    pub cpu_pids: Vec<u32>,
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
    let cpu = CpuWatch::start(&p.cpu_pids);
    let own_cpu = CpuWatch::start(&[std::process::id()]);
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
    let cpu_s = cpu.finish();
    let own_cpu_s = own_cpu.finish();
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
    if !cpu.is_empty() {
        extra.insert("cpu_s".into(), cpu_s);
    }
    // The clients' own CPU time (this process): they share the machine.
    extra.insert("bench_cpu_s".into(), own_cpu_s["total"].clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_spreads_the_remainder() {
        assert_eq!(split(10, 3).unwrap(), vec![4, 3, 3]);
        assert_eq!(split(2, 4).unwrap(), vec![1, 1, 0, 0]);
        assert_eq!(split(7, 1).unwrap(), vec![7]);
    }
}
