//! Message load: one-to-one, fan-in and fan-out at a chosen QoS and rate,
//! driven by the lean clients (`with_wire`, the default) or by rumqttc
//! (`with_rumqttc`, for cross-checks). This module holds the run: it
//! connects subscribers, then publishers, starts them together, waits for
//! everything expected and merges what the subscribers recorded.
//!
//! The clients may be spread over several brokers ([`Brokers`]: the nodes
//! of a cluster): then a subscription takes effect on the publishers' node
//! only once its route has reached that node, so before the clock starts the
//! run probes (`probe`) until every subscriber has received a message sent
//! through each broker its publishers use.

mod probe;
mod with_rumqttc;
mod with_wire;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::QoS;
use serde_json::{json, Map};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::{BenchError, Target};
use crate::cpu::CpuWatch;
use crate::payload::{self, Clock, Header};
use crate::report::{Counters, Progress, ScenarioResult};
use crate::stats::{self, Tracker};

/// A run whose publishers are done ends after this long without progress.
const IDLE_END: Duration = Duration::from_secs(5);

/// How long a client task may take to disconnect at the end of a run.
const TASK_END: Duration = Duration::from_secs(2);

/// Which MQTT client drives the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// The bench's own lean client (`scenarios::wire`).
    Lean,
    /// rumqttc, an independent client library.
    Rumqttc,
}

impl ClientKind {
    /// The name used on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            ClientKind::Lean => "lean",
            ClientKind::Rumqttc => "rumqttc",
        }
    }
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

/// Where the clients of a load run connect: publisher `i` to
/// `publishers[i % len]`, subscriber `s` to `subscribers[s % len]`.
#[derive(Debug, Clone)]
pub struct Brokers {
    /// Brokers of the publishers (at least one).
    pub publishers: Vec<Target>,
    /// Brokers of the subscribers (at least one).
    pub subscribers: Vec<Target>,
    /// Name of the target in the results.
    pub label: String,
}

impl Brokers {
    /// Parses `--broker` (comma separated `HOST:PORT`s: the publishers', and
    /// the subscribers' too unless `sub_brokers` is given) and `--sub-broker`
    /// (the same, for the subscribers). The label defaults to `--broker`.
    pub fn parse(
        brokers: &str,
        sub_brokers: Option<&str>,
        label: Option<String>,
    ) -> Result<Self, BenchError> {
        let list = |option: &str, text: &str| {
            text.split(',')
                .map(|a| Target::parse_option(option, a.trim(), None))
                .collect::<Result<Vec<_>, _>>()
        };
        let publishers = list("--broker", brokers)?;
        if publishers.len() > probe::MAX_BROKERS {
            return Err(format!("--broker: at most {} brokers", probe::MAX_BROKERS).into());
        }
        let subscribers = match sub_brokers {
            Some(text) => list("--sub-broker", text)?,
            None => publishers.clone(),
        };
        Ok(Brokers {
            publishers,
            subscribers,
            label: label.unwrap_or_else(|| brokers.to_string()),
        })
    }

    /// The broker of publisher `i`.
    fn publisher(&self, i: u32) -> &Target {
        &self.publishers[i as usize % self.publishers.len()]
    }

    /// The broker of subscriber `s`.
    fn subscriber(&self, s: u32) -> &Target {
        &self.subscribers[s as usize % self.subscribers.len()]
    }

    /// More than one broker address: subscriptions must be probed.
    fn spread(&self) -> bool {
        let first = (&self.publishers[0].host, self.publishers[0].port);
        self.publishers
            .iter()
            .chain(&self.subscribers)
            .any(|t| (&t.host, t.port) != first)
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
    /// The client that drives the load.
    pub client: ClientKind,
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
    /// Publishers that have sent all their messages.
    publishers_done: AtomicU32,
    /// Per subscriber, the publishers' brokers (bit `b`: `publishers[b]`)
    /// through which a probe reached it; empty when the run does not probe.
    probes: Vec<AtomicU64>,
}

/// What one subscriber does.
struct SubSpec {
    /// Its index (probes are counted per subscriber).
    index: usize,
    client_id: String,
    topic: String,
    qos: u8,
    payload: usize,
    tracker: Tracker,
}

/// What one publisher does.
struct PubSpec {
    /// Its index: the publisher field of its payloads.
    index: u32,
    client_id: String,
    topic: String,
    qos: u8,
    payload: usize,
    /// Messages it publishes.
    count: u32,
    /// Unacknowledged publishes at most (QoS 1/2).
    inflight: u16,
    /// Messages per second; 0 = as fast as possible.
    rate: f64,
}

/// A connected publisher waiting for the start.
enum Publisher {
    Lean(with_wire::Publisher),
    Rumqttc(with_rumqttc::Publisher),
}

impl Shared {
    fn mark(&self, now_ns: u64) {
        self.last_event_ns.fetch_max(now_ns, Ordering::Relaxed);
    }

    /// True when `header` is a probe of this run for subscriber `sub` (then
    /// noted): probes are not the run's messages. Without probing, nothing
    /// is a probe.
    fn probe_seen(&self, sub: usize, header: Option<Header>) -> bool {
        let Some(h) = header.filter(|h| h.publisher == probe::PUBLISHER) else {
            return false;
        };
        match (self.probes.get(sub), 1u64.checked_shl(h.seq)) {
            (Some(seen), Some(bit)) => {
                seen.fetch_or(bit, Ordering::Relaxed);
                true
            }
            _ => false,
        }
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
pub async fn run_load(brokers: &Brokers, p: &LoadParams) -> Result<ScenarioResult, BenchError> {
    qos_of(p.qos)?;
    if p.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    if p.clients == probe::PUBLISHER {
        return Err(format!("--clients must be below {}", probe::PUBLISHER).into());
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
        publishers_done: AtomicU32::new(0),
        probes: if brokers.spread() {
            (0..subs).map(|_| AtomicU64::new(0)).collect()
        } else {
            Vec::new()
        },
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
        let spec = SubSpec {
            index: s as usize,
            client_id: format!("{}-s{s}", p.run_id),
            topic: topic_of(s),
            qos: p.qos,
            payload: p.payload,
            tracker: Tracker::new(first, &expect),
        };
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), BenchError>>();
        ready.push(ready_rx);
        let (target, shared, stop) = (brokers.subscriber(s).clone(), shared.clone(), stop_rx.clone());
        sub_tasks.push(match p.client {
            ClientKind::Lean => tokio::spawn(with_wire::subscriber(target, spec, shared, stop, ready_tx)),
            ClientKind::Rumqttc => {
                tokio::spawn(with_rumqttc::subscriber(target, spec, shared, stop, ready_tx))
            }
        });
    }
    for r in ready {
        r.await.map_err(|_| "subscriber task ended")??;
    }
    // On several brokers, until every subscription works from every
    // publishers' broker it must.
    let routed = if shared.probes.is_empty() {
        None
    } else {
        let publishers_of = |s: u32| match p.shape {
            Shape::OneToOne => s..s + 1,
            Shape::FanIn => 0..pubs,
            Shape::FanOut => 0..1,
        };
        let needs: Vec<probe::Need> = (0..subs)
            .map(|s| probe::Need {
                topic: topic_of(s),
                brokers: publishers_of(s).fold(0u64, |m, i| m | 1 << (i as usize % brokers.publishers.len())),
            })
            .collect();
        let limit = p.timeout;
        Some(probe::until_routed(&brokers.publishers, &needs, &shared, &p.run_id, p.payload, limit).await?)
    };

    // Publishers: connect all, then start together.
    let rate_per_pub = if p.rate > 0.0 {
        p.rate / f64::from(pubs)
    } else {
        0.0
    };
    let mut publishers = Vec::new();
    for i in 0..pubs {
        let spec = PubSpec {
            index: i,
            client_id: format!("{}-p{i}", p.run_id),
            topic: topic_of(i),
            qos: p.qos,
            payload: p.payload,
            count: per_pub[i as usize],
            inflight: p.inflight,
            rate: rate_per_pub,
        };
        let (shared, stop) = (shared.clone(), stop_rx.clone());
        publishers.push(match p.client {
            ClientKind::Lean => {
                Publisher::Lean(with_wire::connect_publisher(brokers.publisher(i), spec, shared, stop).await?)
            }
            ClientKind::Rumqttc => Publisher::Rumqttc(
                with_rumqttc::connect_publisher(brokers.publisher(i), spec, shared, stop).await?,
            ),
        });
    }

    let expected: u64 = per_pub.iter().map(|n| u64::from(*n)).sum::<u64>()
        * match p.shape {
            Shape::FanOut => u64::from(subs),
            _ => 1,
        };
    let label = format!("{} {}", p.shape.name(), brokers.label);
    let progress = Progress::start(label, shared.counters.clone(), expected);
    let cpu = CpuWatch::start(&p.cpu_pids);
    let own_cpu = CpuWatch::start(&[std::process::id()]);
    let start = Instant::now();
    let start_ns = shared.clock.ns_at(start);
    let mut tasks = Vec::new();
    for publisher in publishers {
        tasks.extend(match publisher {
            Publisher::Lean(p) => p.start(start),
            Publisher::Rumqttc(p) => p.start(start),
        });
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
        } else if shared.publishers_done.load(Ordering::Relaxed) == pubs && now - last_progress.0 > IDLE_END {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let end_ns = shared.last_event_ns.load(Ordering::Relaxed).max(start_ns);
    let cpu_s = cpu.finish();
    let own_cpu_s = own_cpu.finish();
    drop(progress);
    let _ = stop_tx.send(true);
    for mut t in tasks {
        if tokio::time::timeout(TASK_END, &mut t).await.is_err() {
            t.abort();
        }
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
    extra.insert("client".into(), json!(p.client.name()));
    extra.insert("rate_limit".into(), json!(p.rate));
    extra.insert("timed_out".into(), json!(timed_out));
    if !cpu.is_empty() {
        extra.insert("cpu_s".into(), cpu_s);
    }
    // The clients' own CPU time (this process): they share the machine.
    extra.insert("bench_cpu_s".into(), own_cpu_s["total"].clone());
    if let Some(routed) = routed {
        let addrs = |ts: &[Target]| {
            ts.iter()
                .map(|t| format!("{}:{}", t.host, t.port))
                .collect::<Vec<_>>()
        };
        extra.insert("pub_brokers".into(), json!(addrs(&brokers.publishers)));
        extra.insert("sub_brokers".into(), json!(addrs(&brokers.subscribers)));
        // How long the subscriptions took to work from the publishers' brokers.
        extra.insert(
            "routed_s".into(),
            json!((routed.as_secs_f64() * 1000.0).round() / 1000.0),
        );
    }
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
        target: brokers.label.clone(),
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
    fn brokers_lists_and_placement() {
        let b = Brokers::parse("127.0.0.1:1", None, None).unwrap();
        assert!(!b.spread(), "one broker: nothing to probe");
        assert_eq!(b.label, "127.0.0.1:1");
        let b = Brokers::parse("127.0.0.1:1", Some("127.0.0.1:1"), None).unwrap();
        assert!(!b.spread(), "the same address twice is one broker");
        let b = Brokers::parse("h:1, h:2", Some("h:3"), Some("x".into())).unwrap();
        assert!(b.spread());
        assert_eq!(b.label, "x");
        let ports = |f: &dyn Fn(u32) -> u16| (0..4).map(f).collect::<Vec<_>>();
        assert_eq!(ports(&|i| b.publisher(i).port), vec![1, 2, 1, 2]);
        assert_eq!(ports(&|s| b.subscriber(s).port), vec![3, 3, 3, 3]);
        let e = Brokers::parse("h:1", Some("h:x"), None).unwrap_err().to_string();
        assert!(e.starts_with("--sub-broker h:x"), "{e}");
        assert!(Brokers::parse("h:1,", None, None).is_err());
    }

    #[test]
    fn probes_are_noted_only_when_probing() {
        let header = |publisher, seq| {
            Some(Header {
                sent_ns: 0,
                publisher,
                seq,
            })
        };
        let mut shared = Shared {
            clock: Clock::new(),
            counters: Arc::new(Counters::default()),
            last_event_ns: AtomicU64::new(0),
            publishers_done: AtomicU32::new(0),
            probes: Vec::new(),
        };
        assert!(!shared.probe_seen(0, header(probe::PUBLISHER, 0)), "not probing");
        shared.probes = vec![AtomicU64::new(0), AtomicU64::new(0)];
        assert!(shared.probe_seen(1, header(probe::PUBLISHER, 3)));
        assert!(!shared.probe_seen(1, header(0, 3)), "a real message");
        assert!(!shared.probe_seen(1, None));
        assert!(
            !shared.probe_seen(5, header(probe::PUBLISHER, 0)),
            "no such subscriber"
        );
        assert_eq!(shared.probes[1].load(Ordering::Relaxed), 1 << 3);
        assert_eq!(shared.probes[0].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn split_spreads_the_remainder() {
        assert_eq!(split(10, 3).unwrap(), vec![4, 3, 3]);
        assert_eq!(split(2, 4).unwrap(), vec![1, 1, 0, 0]);
        assert_eq!(split(7, 1).unwrap(), vec![7]);
    }
}
