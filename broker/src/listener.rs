//! Accept loop: one task per listener, one handshake task per connection.
//!
//! The accept loop only accepts: it takes a token from the listener's
//! connection-rate bucket (`max_conn_rate`; the loop is the bucket's only
//! user, so it needs no lock), and spawns the connection's task, which does
//! everything slow (the TLS handshake, the WebSocket upgrade, reading CONNECT). A connection over
//! the rate is counted here and logged at most once per
//! [`RATE_LOG_EVERY`]; its task reads its CONNECT and refuses it.
//!
//! Listeners are bound by [`bind`], with a listen backlog of
//! [`LISTEN_BACKLOG`] instead of the 128 of `TcpListener::bind`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::time::Instant;

use crate::connection::{self, Admission};
use crate::metrics::Metrics;
use crate::rate_limit::{LogThrottle, Rate, TokenBucket};
use crate::shared::Shared;
use crate::tls::TlsListener;
use crate::websocket::WsListener;

/// The most often the "connection rate exceeded" warning is logged per listener.
pub const RATE_LOG_EVERY: Duration = Duration::from_secs(10);

/// The listen backlog asked for (Linux caps it at `net.core.somaxconn`,
/// 4096 by default since 5.4).
///
/// Why not tokio's 128: clients that connect together (a fleet coming back
/// after an outage, a load generator with 200 CONNECTs in flight) fill a
/// 128-entry accept queue whenever the accept loop's worker thread is busy
/// with handshakes for a moment; the kernel then drops the connection's
/// handshake and the client retransmits its SYN after a full second.
/// Measured with 200 connections set up at a time: dozens of such drops per
/// 10,000 connections, each a one-second CONNACK, and the connect rate down
/// by up to a third (bench `connections`, BENCHMARKS.md).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` (address reuse on, as `TcpListener::bind`
/// does on Unix) with a listen backlog of [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A restarted broker rebinds its port while old connections linger in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What an accept loop needs to know about its listener.
#[derive(Debug)]
pub struct ListenerSpec {
    /// The listener's key (`listener.tcp.<name>`), for logs.
    pub key: String,
    /// `max_conn_rate`, when set.
    pub max_conn_rate: Option<u32>,
    /// `rate_limit.conn_bytes_in`, when set: given to each connection.
    pub conn_bytes_in: Option<Rate>,
    /// The TLS side of a `listener.ssl` or `listener.wss` listener.
    pub tls: Option<TlsListener>,
    /// The WebSocket side of a `listener.ws` or `listener.wss` listener.
    pub websocket: Option<WsListener>,
}

/// Accepts connections until the task is aborted at shutdown.
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, spec: ListenerSpec) {
    let mut bucket = spec
        .max_conn_rate
        .map(|n| TokenBucket::new(Rate::per_second(n), std::time::Instant::now()));
    let mut log = LogThrottle::new(RATE_LOG_EVERY);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let now = Instant::now();
                let rate_limited = match bucket.as_mut() {
                    Some(b) => !b.try_take(now.into_std()),
                    None => false,
                };
                if rate_limited {
                    Metrics::bump(&shared.metrics.connect_rate_limited);
                    if let Some(n) = log.hit(now.into_std()) {
                        tracing::warn!(
                            listener = %spec.key,
                            max_conn_rate = spec.max_conn_rate.unwrap_or(0),
                            "connection rate exceeded: refusing connections ({n} since the last report)"
                        );
                    }
                }
                let admission = Admission {
                    deadline: now + shared.config.mqtt.connect_timeout,
                    rate_limited,
                    cert_cn_as_username: false,
                    conn_bytes_in: spec.conn_bytes_in,
                };
                let shared = Arc::clone(&shared);
                match (&spec.tls, &spec.websocket) {
                    (None, None) => tokio::spawn(connection::handle_tcp(shared, stream, peer, admission)),
                    (Some(tls), None) => {
                        tokio::spawn(crate::tls::serve(shared, tls.clone(), stream, peer, admission))
                    }
                    (tls, Some(ws)) => tokio::spawn(crate::websocket::serve(
                        shared,
                        ws.clone(),
                        tls.clone(),
                        stream,
                        peer,
                        admission,
                    )),
                };
            }
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(listener = %spec.key, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of connections larger than tokio's default backlog (128)
    /// arriving while nothing accepts (the accept loop busy) is queued by
    /// the kernel, not dropped: with a full accept queue the kernel drops
    /// the SYN and the client waits a second per retry, and never gets in
    /// while the queue stays full.
    #[tokio::test]
    async fn a_burst_beyond_128_waits_in_the_accept_queue() {
        const BURST: usize = 300;
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok());
        if somaxconn.is_some_and(|n| n < BURST) {
            eprintln!("skipped: net.core.somaxconn {somaxconn:?} caps the backlog below {BURST}");
            return;
        }
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..BURST {
            connects.spawn(tokio::net::TcpStream::connect(addr));
        }
        let mut clients = Vec::with_capacity(BURST);
        // Far longer than a handshake takes; a dropped SYN never completes
        // here, as nothing accepts.
        let all = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(c) = connects.join_next().await {
                clients.push(c.unwrap().unwrap());
            }
        });
        all.await
            .expect("some connections were not queued (SYN dropped: accept queue full)");
        assert_eq!(clients.len(), BURST);
        // And they are really queued for the broker to accept.
        for _ in 0..BURST {
            listener.accept().await.unwrap();
        }
    }
}
