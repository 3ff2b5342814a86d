//! Load clients on rumqttc (`--client rumqttc`): an independent MQTT client
//! library, for cross-checking the lean clients' figures.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::{qos_of, PubSpec, Shared, SubSpec};
use crate::payload::{self, Header};
use crate::scenarios::{connect, new_client, options, subscribe, BenchError, Target};
use crate::stats::Tracker;

/// The body of a subscriber's task: connects, subscribes, reports `ready`,
/// then records every publish until `stop`.
pub(super) async fn subscriber(
    target: Target,
    spec: SubSpec,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    ready: oneshot::Sender<Result<(), BenchError>>,
) -> Result<Tracker, BenchError> {
    let qos = qos_of(spec.qos)?;
    let mut tracker = spec.tracker;
    let (client, mut el) = new_client(options(&target, &spec.client_id, spec.payload, 10), 16);
    let setup = async {
        connect(&mut el).await?;
        subscribe(&client, &mut el, &spec.topic, qos, |_| {}).await
    };
    match setup.await {
        Ok(()) => {
            let _ = ready.send(Ok(()));
        }
        Err(e) => {
            let msg = e.to_string();
            let _ = ready.send(Err(e));
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
                    let header = payload::decode(&msg.payload);
                    if !shared.probe_seen(spec.index, header) && tracker.record(header, now) {
                        shared.counters.received.fetch_add(1, Ordering::Relaxed);
                        shared.mark(now);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("bench: {}: {e}", spec.client_id);
                    break;
                }
            },
        }
    }
    let _ = client.try_disconnect();
    Ok(tracker)
}

/// A publisher connected and waiting for the start.
pub(super) struct Publisher {
    client: AsyncClient,
    driver: JoinHandle<()>,
    spec: PubSpec,
    shared: Arc<Shared>,
}

/// Connects a publisher; its event loop runs (counting PUBACKs) until `stop`.
pub(super) async fn connect_publisher(
    target: &Target,
    spec: PubSpec,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<Publisher, BenchError> {
    let (client, mut el) = new_client(options(target, &spec.client_id, spec.payload, spec.inflight), 16);
    connect(&mut el).await?;
    let driver_shared = shared.clone();
    let who = spec.client_id.clone();
    let driver = tokio::spawn(async move {
        let shared = driver_shared;
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
                        eprintln!("bench: {who}: {e}");
                        break;
                    }
                },
            }
        }
    });
    Ok(Publisher {
        client,
        driver,
        spec,
        shared,
    })
}

impl Publisher {
    /// Starts publishing (at the spec's rate, if any) from `start`.
    pub(super) fn start(self, start: Instant) -> Vec<JoinHandle<()>> {
        let Publisher {
            client,
            driver,
            spec,
            shared,
        } = self;
        let sender = tokio::spawn(async move {
            let Ok(qos) = qos_of(spec.qos) else { return };
            let tstart = tokio::time::Instant::from_std(start);
            for seq in 0..spec.count {
                if spec.rate > 0.0 {
                    let due = tstart + Duration::from_secs_f64(f64::from(seq) / spec.rate);
                    if due > tokio::time::Instant::now() {
                        tokio::time::sleep_until(due).await;
                    }
                }
                let header = Header {
                    sent_ns: shared.clock.now_ns(),
                    publisher: spec.index,
                    seq,
                };
                let body = payload::encode(header, spec.payload);
                if let Err(e) = client.publish(spec.topic.clone(), qos, false, body).await {
                    shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("bench: {}: {e}", spec.client_id);
                    break;
                }
                shared.counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            shared.publishers_done.fetch_add(1, Ordering::Relaxed);
            // Parked until the run ends (then aborted): dropping the client
            // would end its event loop before the last PUBACKs.
            std::future::pending::<()>().await;
            drop(client);
        });
        vec![sender, driver]
    }
}
