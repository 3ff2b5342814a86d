//! Probing a run spread over several brokers (a cluster's nodes). A SUBACK
//! says the subscription works on the subscriber's broker; on another node
//! it works only once the route has reached it, which takes a moment. So
//! before the clock starts, a probe client on each publishers' broker sends
//! probe messages (QoS 0, publisher index [`PUBLISHER`], the broker's index
//! as sequence number) to the topics of the subscribers that have not yet
//! received one through that broker, every [`ROUND`], until every subscriber
//! has one through each broker its publishers use. Subscribers note probes
//! (`Shared::probe_seen`) and do not count them as the run's messages.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqttbytes::v4;
use mqttbytes::QoS;

use super::Shared;
use crate::payload::{self, Header};
use crate::scenarios::wire::{Outgoing, WireConn};
use crate::scenarios::{BenchError, Target, SETUP_TIMEOUT};

/// The publisher index of a probe: never a real publisher's (`--clients`
/// is below it).
pub(super) const PUBLISHER: u32 = u32::MAX;

/// Publishers' brokers a run may use (one bit each).
pub(super) const MAX_BROKERS: usize = 64;

/// Time between two rounds of probes.
const ROUND: Duration = Duration::from_millis(50);

/// What one subscriber must receive before the run starts.
pub(super) struct Need {
    /// The topic it subscribed to.
    pub topic: String,
    /// The publishers' brokers (bit `b`: `publishers[b]`) that must reach it.
    pub brokers: u64,
}

/// Probes until every subscriber has received a probe through every broker
/// in its [`Need`] (`needs[s]` for subscriber `s`); returns the time it took.
/// An error after `limit` (at most [`SETUP_TIMEOUT`]), naming a subscription
/// still not routed.
pub(super) async fn until_routed(
    publishers: &[Target],
    needs: &[Need],
    shared: &Shared,
    run_id: &str,
    payload: usize,
    limit: Duration,
) -> Result<Duration, BenchError> {
    let limit = limit.min(SETUP_TIMEOUT);
    let start = Instant::now();
    let mut conns: Vec<Option<WireConn>> = publishers.iter().map(|_| None).collect();
    let result = async {
        loop {
            let mut pending = None;
            let mut sent = HashSet::new();
            for (s, need) in needs.iter().enumerate() {
                let seen = shared.probes.get(s).map_or(0, |a| a.load(Ordering::Relaxed));
                let missing = need.brokers & !seen;
                for b in (0..publishers.len()).filter(|b| missing & (1u64 << b) != 0) {
                    pending = Some((s, b));
                    if !sent.insert((b, need.topic.as_str())) {
                        continue;
                    }
                    let conn = match &mut conns[b] {
                        Some(c) => c,
                        slot => slot.insert(
                            WireConn::connect(&publishers[b], &format!("{run_id}-probe{b}"), payload).await?,
                        ),
                    };
                    let header = Header {
                        sent_ns: shared.clock.now_ns(),
                        publisher: PUBLISHER,
                        seq: b as u32,
                    };
                    let body = Bytes::from(payload::encode(header, payload));
                    let publish = v4::Publish::from_bytes(need.topic.as_str(), QoS::AtMostOnce, body);
                    conn.push(Outgoing::Publish(publish))?;
                }
            }
            let Some((s, b)) = pending else {
                return Ok(());
            };
            for conn in conns.iter_mut().flatten() {
                conn.flush().await?;
            }
            if start.elapsed() > limit {
                let t = &publishers[b];
                return Err(BenchError::from(format!(
                    "the subscription to {} (subscriber {s}) did not take effect on {}:{} within {limit:?}",
                    needs[s].topic, t.host, t.port
                )));
            }
            tokio::time::sleep(ROUND).await;
        }
    }
    .await;
    for conn in conns.into_iter().flatten() {
        conn.disconnect().await;
    }
    result.map(|()| start.elapsed())
}
