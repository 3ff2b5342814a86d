//! MQTT over WebSocket (`listener.ws.<name>`, `listener.wss.<name>`).
//!
//! A WebSocket connection is an HTTP/1.1 upgrade on the listener's path
//! (`mqtt_path`, default `/mqtt`), done by tokio-tungstenite, after the TLS
//! handshake on a `wss` listener. MQTT then runs over binary WebSocket
//! messages: [`WsIo`] turns the message stream back into the byte stream
//! the rest of the broker reads (a message may hold any part of a packet or
//! several packets, as the MQTT specification allows), and each write of
//! the session's output buffer becomes one binary message. From there a
//! WebSocket connection is like any other: the same CONNECT deadline,
//! packet size limit, authentication, ACLs and connection-rate limit.
//!
//! The upgrade is refused with `404 Not Found` on another path, and with
//! `400 Bad Request` when the client offers WebSocket subprotocols none of
//! which is MQTT's (`mqtt`, or `mqttv3.1` of older clients); a client that
//! offers none is accepted, as Mosquitto and EMQX accept it. A text message
//! is a protocol violation: the connection is closed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::connection::{self, Admission};
use crate::shared::Shared;
use crate::tls::TlsListener;
use crate::transport::{Io, Peer, Stream};

/// The WebSocket subprotocols MQTT clients offer, in the order we prefer
/// them: `mqtt` (MQTT 3.1.1 and 5) and `mqttv3.1` (MQTT 3.1 clients).
pub const SUBPROTOCOLS: &[&str] = &["mqtt", "mqttv3.1"];

/// The WebSocket side of a `ws`/`wss` listener.
#[derive(Debug, Clone)]
pub struct WsListener {
    /// The HTTP path clients upgrade on (`mqtt_path`).
    pub path: Arc<str>,
}

/// One accepted TCP connection of a WebSocket listener: the TLS handshake
/// (`wss`), the HTTP upgrade, both by the admission deadline, then the MQTT
/// handshake. Runs in the connection's own task.
pub async fn serve(
    shared: Arc<Shared>,
    ws: WsListener,
    tls: Option<TlsListener>,
    tcp: TcpStream,
    addr: std::net::SocketAddr,
    admission: Admission,
) {
    let _task = shared.tasks.enter();
    let _ = tcp.set_nodelay(true);
    let (stream, peer, admission) = match tls {
        None => (Stream::Tcp(tcp), Peer::plain(addr), admission),
        Some(tls) => match crate::tls::handshake(&shared, &tls, tcp, addr, admission).await {
            Some(accepted) => accepted,
            None => return,
        },
    };
    let max = shared.config.mqtt.max_packet_size as usize;
    let mut shutdown = shared.shutdown_rx();
    let upgrade = tokio::select! {
        r = tokio::time::timeout_at(admission.deadline, upgrade(stream, &ws.path, max)) => r,
        // Shutdown does not wait for a client that has not finished connecting.
        _ = shutdown.changed() => return,
    };
    let ws_stream = match upgrade {
        Ok(Ok(s)) => s,
        Err(_) => {
            tracing::debug!(peer = %addr, "WebSocket upgrade not finished within mqtt.connect_timeout, closing");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %addr, "WebSocket upgrade failed: {e}");
            return;
        }
    };
    let io: Box<dyn Io> = Box::new(WsIo::new(ws_stream));
    connection::handle_admitted(shared, Stream::Boxed(io), peer, admission).await;
}

/// How far past `mqtt.max_packet_size` a WebSocket message may go. A
/// message holding one packet a little too large still reaches the MQTT
/// decoder, which refuses it as over TCP (MQTT 5: DISCONNECT 0x95); a larger
/// one is refused by the WebSocket layer (close code 1009) before it is
/// buffered.
pub const MESSAGE_SLACK: usize = 64 * 1024;

/// The server side of the HTTP upgrade on `path`, with messages and frames
/// limited to the packet size limit plus [`MESSAGE_SLACK`].
async fn upgrade(
    stream: Stream,
    path: &str,
    max_packet_size: usize,
) -> Result<WebSocketStream<Stream>, WsError> {
    let limit = max_packet_size.saturating_add(MESSAGE_SLACK);
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let check = |req: &Request, resp: Response| answer_upgrade(req, resp, path);
    tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config)).await
}

/// Decides an upgrade request: the path must be the listener's; the chosen
/// subprotocol is echoed back.
fn answer_upgrade(req: &Request, mut resp: Response, path: &str) -> Result<Response, ErrorResponse> {
    if req.uri().path() != path {
        return Err(refusal(
            StatusCode::NOT_FOUND,
            format!("no MQTT endpoint here: MQTT over WebSocket is served at {path}\n"),
        ));
    }
    let offered: Vec<&str> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(resp);
    }
    let chosen = SUBPROTOCOLS
        .iter()
        .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)));
    match chosen {
        Some(p) => {
            resp.headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
            Ok(resp)
        }
        None => Err(refusal(
            StatusCode::BAD_REQUEST,
            format!(
                "none of the offered WebSocket subprotocols is MQTT's (offered {}; supported {})\n",
                offered.join(", "),
                SUBPROTOCOLS.join(", ")
            ),
        )),
    }
}

fn refusal(status: StatusCode, body: String) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A WebSocket connection seen as a byte stream: binary messages in, one
/// binary message per write out. Pings are answered by tungstenite; a Close
/// message or the end of the stream reads as end of file.
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
    /// A Close message was read: nothing more will come.
    closed: bool,
}

impl<S> WsIo<S> {
    /// Wraps an upgraded WebSocket connection.
    pub fn new(ws: WebSocketStream<S>) -> WsIo<S> {
        WsIo {
            ws,
            pending: Bytes::new(),
            closed: false,
        }
    }
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::Error::from(io::ErrorKind::BrokenPipe),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Close(_))) => this.closed = true,
                // Pings are answered by tungstenite itself; pongs and raw
                // frames carry nothing for MQTT.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket is carried in binary messages; a text message arrived",
                    )))
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(io_error)?;
        Pin::new(&mut this.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.get_mut().ws).poll_close(cx)) {
            // The peer closed first: the connection is closed, as asked.
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, protocols: Option<&str>) -> Request {
        let mut b = Request::builder().uri(path);
        if let Some(p) = protocols {
            b = b.header(header::SEC_WEBSOCKET_PROTOCOL, p);
        }
        b.body(()).unwrap_or_default()
    }

    fn chosen(r: &Result<Response, ErrorResponse>) -> Option<&str> {
        r.as_ref()
            .ok()?
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)?
            .to_str()
            .ok()
    }

    #[test]
    fn mqtt_is_chosen_among_offered_subprotocols() {
        let r = answer_upgrade(
            &request("/mqtt", Some("wamp, mqtt")),
            Response::default(),
            "/mqtt",
        );
        assert_eq!(chosen(&r), Some("mqtt"));
        let r = answer_upgrade(&request("/mqtt", Some("mqttv3.1")), Response::default(), "/mqtt");
        assert_eq!(chosen(&r), Some("mqttv3.1"));
    }

    #[test]
    fn no_offered_subprotocol_is_accepted_without_one() {
        let r = answer_upgrade(&request("/mqtt", None), Response::default(), "/mqtt");
        assert!(r.is_ok());
        assert_eq!(chosen(&r), None);
    }

    #[test]
    fn only_foreign_subprotocols_are_refused_with_400() {
        let r = answer_upgrade(
            &request("/mqtt", Some("wamp, soap")),
            Response::default(),
            "/mqtt",
        );
        assert_eq!(r.err().map(|e| e.status()), Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn another_path_is_refused_with_404() {
        let r = answer_upgrade(&request("/ws", Some("mqtt")), Response::default(), "/mqtt");
        assert_eq!(r.err().map(|e| e.status()), Some(StatusCode::NOT_FOUND));
        // The query string is not part of the path.
        let r = answer_upgrade(
            &request("/mqtt?token=1", Some("mqtt")),
            Response::default(),
            "/mqtt",
        );
        assert!(r.is_ok());
    }
}
