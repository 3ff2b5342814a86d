//! Connection scale: N idle connections, connect rate and the broker's
//! resident memory per connection, with rumqttc or the bench's lean
//! connection (`--client`; the lean one spends less of the shared CPU per
//! connect, so the broker's handshake is more of what is measured).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::EventLoop;
use serde_json::{json, Map};
use tokio::sync::{watch, Semaphore};

use super::wire::{Outgoing, WireConn};
use super::{connect, new_client, options, BenchError, ClientKind, Target};
use crate::payload::Clock;
use crate::report::{Counters, Progress, ScenarioResult};
use crate::stats::Latency;

/// One open connection, by client.
enum Idle {
    /// rumqttc: its event loop answers keep alive itself (the client handle
    /// is held so the event loop does not end).
    Rumqttc {
        _client: rumqttc::AsyncClient,
        el: Box<EventLoop>,
    },
    /// The lean connection: PINGREQ at half the keep alive.
    Lean(WireConn),
}

impl Idle {
    /// Keeps the connection open until `stop`; false when the broker closed
    /// it (or it failed) before.
    async fn idle(&mut self, keep_alive: Duration, stop: &mut watch::Receiver<bool>) -> bool {
        match self {
            Idle::Rumqttc { el, .. } => loop {
                tokio::select! {
                    biased;
                    _ = stop.changed() => return true,
                    ev = el.poll() => if ev.is_err() { return false },
                }
            },
            Idle::Lean(conn) => {
                let mut ping = tokio::time::interval(keep_alive / 2);
                ping.tick().await;
                loop {
                    tokio::select! {
                        biased;
                        _ = stop.changed() => return true,
                        r = conn.read_discard() => if r.is_err() { return false },
                        _ = ping.tick() => {
                            if conn.push(Outgoing::PingReq).is_err() || conn.flush().await.is_err() {
                                return false;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Parameters of the connection-scale scenario.
#[derive(Debug, Clone)]
pub struct ConnParams {
    /// Idle connections to open.
    pub count: u32,
    /// Connections being set up at once.
    pub concurrency: u32,
    /// The client: rumqttc or the bench's lean connection.
    pub client: ClientKind,
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
        let id = format!("{}-c{i}", p.run_id);
        let target = target.clone();
        let (kind, keep_alive) = (p.client, p.keep_alive);
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            let t = Instant::now();
            counters.sent.fetch_add(1, Ordering::Relaxed);
            let conn = match kind {
                ClientKind::Rumqttc => {
                    let mut o = options(&target, &id, 64, 10);
                    o.set_keep_alive(keep_alive);
                    let (_client, mut el) = new_client(o, 4);
                    connect(&mut el).await.map(|()| Idle::Rumqttc {
                        _client,
                        el: Box::new(el),
                    })
                }
                ClientKind::Lean => WireConn::connect_idle(&target, &id, keep_alive)
                    .await
                    .map(Idle::Lean),
            };
            match conn {
                Ok(mut conn) => {
                    let done = Instant::now();
                    counters.received.fetch_add(1, Ordering::Relaxed);
                    last_ns.fetch_max(clock.ns_at(done), Ordering::Relaxed);
                    drop(permit);
                    let us = u64::try_from((done - t).as_micros()).unwrap_or(u64::MAX);
                    if !conn.idle(keep_alive, &mut stop).await {
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
    extra.insert("concurrency".into(), json!(p.concurrency));
    extra.insert("client".into(), json!(p.client.name()));
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

#[cfg(test)]
mod tests {
    use super::*;

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
