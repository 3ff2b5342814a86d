//! `GET /metrics`: the broker's and the plugins' metrics in the Prometheus
//! text format (version 0.0.4, written by the `prometheus-client` crate).
//!
//! Everything is read at scrape time from the counters the broker keeps
//! anyway (atomics, [`crate::metrics::Metrics`]), the hook chains' timing
//! ([`hooks_spec::Hooks::call_stats`]) and the plugins' registry
//! ([`hooks_spec::MetricsRegistry`]): nothing is counted for Prometheus
//! alone on the message path. Names follow Prometheus' conventions: the
//! `postbox_` prefix, `_total` on counters, base units (`_bytes`,
//! `_seconds`). README.md lists every metric.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hooks_spec::metrics::{Family, HistogramSnapshot, Metric};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::metrics::DROP_REASONS;

/// `GET /metrics`.
pub async fn scrape(State(state): State<super::State>) -> Response {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(state)));
    let mut body = String::with_capacity(16 * 1024);
    match prometheus_client::encoding::prometheus_text::encode(&mut body, &registry) {
        Ok(()) => (
            [(
                CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        )
            .into_response(),
    }
}

/// One scrape's view of the broker.
struct Scrape(super::State);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

type Fmt = Result<(), std::fmt::Error>;
type LabelPairs<'a> = Vec<(&'a str, String)>;

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, samples: &[(LabelPairs, u64)]) -> Fmt {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        if labels.is_empty() {
            m.encode_counter::<NoLabelSet, u64, u64>(v, None)?;
        } else {
            m.encode_family(labels)?
                .encode_counter::<NoLabelSet, u64, u64>(v, None)?;
        }
    }
    Ok(())
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, samples: &[(LabelPairs, i64)]) -> Fmt {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        if labels.is_empty() {
            m.encode_gauge(v)?;
        } else {
            m.encode_family(labels)?.encode_gauge(v)?;
        }
    }
    Ok(())
}

/// Per-bucket counts from a cumulative snapshot (what the encoder sums up).
fn per_bucket(s: &HistogramSnapshot) -> Vec<(f64, u64)> {
    let mut prev = 0;
    s.buckets
        .iter()
        .map(|(bound, cumulative)| {
            let n = cumulative.saturating_sub(prev);
            prev = *cumulative;
            (*bound, n)
        })
        .collect()
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(LabelPairs, HistogramSnapshot)],
) -> Fmt {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, s) in samples {
        let buckets = per_bucket(s);
        if labels.is_empty() {
            m.encode_histogram::<NoLabelSet>(s.sum, s.count, &buckets, None)?;
        } else {
            m.encode_family(labels)?
                .encode_histogram::<NoLabelSet>(s.sum, s.count, &buckets, None)?;
        }
    }
    Ok(())
}

fn plugin_family(enc: &mut DescriptorEncoder, f: &Family) -> Fmt {
    fn labelled(labels: &[(String, String)]) -> LabelPairs<'_> {
        labels.iter().map(|(k, v)| (k.as_str(), v.clone())).collect()
    }
    match f.members.first().map(|(_, m)| m) {
        Some(Metric::Counter(_)) => {
            let samples: Vec<_> = f
                .members
                .iter()
                .filter_map(|(l, m)| match m {
                    Metric::Counter(c) => Some((labelled(l), c.get())),
                    _ => None,
                })
                .collect();
            counter(enc, &f.name, &f.help, &samples)
        }
        Some(Metric::Gauge(_)) => {
            let samples: Vec<_> = f
                .members
                .iter()
                .filter_map(|(l, m)| match m {
                    Metric::Gauge(g) => Some((labelled(l), g.get())),
                    _ => None,
                })
                .collect();
            gauge(enc, &f.name, &f.help, &samples)
        }
        Some(Metric::Histogram(_)) => {
            let samples: Vec<_> = f
                .members
                .iter()
                .filter_map(|(l, m)| match m {
                    Metric::Histogram(h) => Some((labelled(l), h.snapshot())),
                    _ => None,
                })
                .collect();
            histogram(enc, &f.name, &f.help, &samples)
        }
        None => Ok(()),
    }
}

fn n(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Fmt {
        let shared = &self.0.shared;
        let m = &shared.metrics;
        let none = Vec::new;
        gauge(
            &mut enc,
            "postbox_connections",
            "Connected clients.",
            &[(none(), n(shared.connected()))],
        )?;
        gauge(
            &mut enc,
            "postbox_sessions",
            "Sessions on this node (connected, and persistent ones waiting for their client).",
            &[(none(), n(shared.registry.len()))],
        )?;
        gauge(
            &mut enc,
            "postbox_subscriptions",
            "Subscriptions of sessions on this node (shared ones included).",
            &[(none(), n(shared.router.local_len()))],
        )?;
        gauge(
            &mut enc,
            "postbox_retained_messages",
            "Retained messages held by this node.",
            &[(none(), n(shared.retain.len()))],
        )?;
        let by_qos = |counters: &[AtomicU64; 3]| -> Vec<(LabelPairs, u64)> {
            counters
                .iter()
                .enumerate()
                .map(|(q, c)| (vec![("qos", q.to_string())], get(c)))
                .collect()
        };
        counter(
            &mut enc,
            "postbox_messages_received",
            "PUBLISH packets received from clients, by QoS.",
            &by_qos(&m.messages_received),
        )?;
        counter(
            &mut enc,
            "postbox_messages_sent",
            "PUBLISH packets sent to clients, by QoS (a resend counts again).",
            &by_qos(&m.messages_sent),
        )?;
        let drops: Vec<_> = DROP_REASONS
            .iter()
            .zip(&m.dropped_by_reason)
            .map(|(r, c)| (vec![("reason", r.to_string())], get(c)))
            .collect();
        counter(
            &mut enc,
            "postbox_messages_dropped",
            "Messages dropped (for one subscriber or for all), by reason.",
            &drops,
        )?;
        counter(
            &mut enc,
            "postbox_messages_routed",
            "Messages routed (each publish once).",
            &[(none(), get(&m.messages_routed))],
        )?;
        counter(
            &mut enc,
            "postbox_received_bytes",
            "Bytes read from MQTT connections.",
            &[(none(), get(&m.bytes_received))],
        )?;
        counter(
            &mut enc,
            "postbox_sent_bytes",
            "Bytes written to MQTT connections.",
            &[(none(), get(&m.bytes_sent))],
        )?;
        counter(
            &mut enc,
            "postbox_auth_failures",
            "Connections refused by authentication.",
            &[(none(), get(&m.auth_failures))],
        )?;
        counter(
            &mut enc,
            "postbox_acl_denied",
            "Publishes and subscriptions an ACL denied, by action.",
            &[
                (
                    vec![("action", "publish".to_string())],
                    get(&m.acl_denied_publish),
                ),
                (
                    vec![("action", "subscribe".to_string())],
                    get(&m.acl_denied_subscribe),
                ),
            ],
        )?;
        counter(
            &mut enc,
            "postbox_rate_limited",
            "Clients disconnected (publish) or refused (connect) by a rate limit.",
            &[
                (
                    vec![("limit", "publish".to_string())],
                    get(&m.publish_rate_limited),
                ),
                (
                    vec![("limit", "connect".to_string())],
                    get(&m.connect_rate_limited),
                ),
            ],
        )?;
        counter(
            &mut enc,
            "postbox_cluster_messages",
            "Messages forwarded to, received from, or dropped for other cluster nodes.",
            &[
                (
                    vec![("direction", "forwarded".to_string())],
                    get(&m.cluster_forwarded),
                ),
                (
                    vec![("direction", "received".to_string())],
                    get(&m.cluster_received),
                ),
                (
                    vec![("direction", "dropped".to_string())],
                    get(&m.cluster_dropped),
                ),
            ],
        )?;
        let calls = shared.hooks.call_stats();
        let labels = |point: &hooks_spec::HookPoint, owner: &str| -> LabelPairs {
            vec![("hook", point.to_string()), ("plugin", owner.to_string())]
        };
        let latency: Vec<_> = calls
            .iter()
            .map(|(p, o, s)| (labels(p, o), s.latency.snapshot()))
            .collect();
        histogram(
            &mut enc,
            "postbox_hook_callback_duration_seconds",
            "Time one hook callback took, by hook point and plugin.",
            &latency,
        )?;
        let failures: Vec<_> = calls
            .iter()
            .map(|(p, o, s)| (labels(p, o), s.failures.get()))
            .collect();
        counter(
            &mut enc,
            "postbox_hook_callback_failures",
            "Hook callbacks that failed (error, panic or time-out), by hook point and plugin.",
            &failures,
        )?;
        for family in self.0.metrics.families() {
            plugin_family(&mut enc, &family)?;
        }
        Ok(())
    }
}
