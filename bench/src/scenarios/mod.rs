//! The MQTT scenarios, each against any broker address: message load
//! (one-to-one, fan-in, fan-out, in `load`), offline replay (`replay`) and
//! idle-connection scale (`connections`). This module holds what they share:
//! the target, client options, connect and subscribe.

mod connections;
mod load;
mod replay;
mod storm;
mod wire;

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS, SubscribeReasonCode};

use crate::payload;

pub use connections::{run_connections, ConnParams};
pub use load::{run_load, Brokers, ClientKind, LoadParams, Shape};
pub use replay::{run_replay, ReplayParams};
pub use storm::{run_storm, StormParams};

/// The error type of the tool.
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// How long a client may take to connect and subscribe.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

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
        Self::parse_option("--broker", addr, label)
    }

    /// Parses `HOST:PORT` given with the command-line option `option` (named
    /// in the errors); the label defaults to the address.
    pub fn parse_option(option: &str, addr: &str, label: Option<String>) -> Result<Self, BenchError> {
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("{option} {addr}: expected HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{option} {addr}: bad port `{port}`"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() || port == 0 {
            return Err(format!("{option} {addr}: expected HOST:PORT").into());
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

pub(crate) fn options(target: &Target, id: &str, payload: usize, inflight: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, target.host.clone(), target.port);
    let max = payload.max(payload::HEADER_LEN) + 1024;
    o.set_keep_alive(Duration::from_secs(60))
        .set_clean_session(true)
        .set_max_packet_size(max, max)
        .set_inflight(inflight.max(1));
    o
}

/// Polls until CONNACK (errors and refusals end it).
pub(crate) async fn connect(el: &mut EventLoop) -> Result<(), BenchError> {
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
pub(crate) async fn subscribe(
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

/// A client with Nagle's algorithm off, as MQTT client libraries commonly
/// configure it: otherwise a client's last small packet of a burst (a PUBACK)
/// waits for the broker's delayed TCP acknowledgement (~40 ms on Linux), and
/// every round-trip-bound figure measures that timer instead of the broker.
pub(crate) fn new_client(
    options: rumqttc::MqttOptions,
    cap: usize,
) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
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
}
