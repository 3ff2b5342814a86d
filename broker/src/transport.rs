//! The byte streams a client connection runs over.
//!
//! A connection is plain TCP (the common case, kept inline), or any other
//! bidirectional stream boxed behind [`Io`]: TLS over TCP, WebSocket, or an
//! in-memory duplex pipe (in-process tests and the connection fuzz target).
//! The session task reads and writes a [`Stream`] without knowing which kind
//! it has; it is the only one to use it, so it is never split.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Any bidirectional byte stream a client can connect over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// An accepted client stream.
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// Anything else (TLS, an in-memory pipe).
    Boxed(Box<dyn Io>),
}

impl Stream {
    /// Whether written bytes may wait in a buffer of the stream's own until
    /// it is flushed (TLS records, WebSocket messages); plain TCP writes
    /// straight to the socket.
    pub fn buffers_writes(&self) -> bool {
        matches!(self, Stream::Boxed(_))
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stream::Tcp(s) => f.debug_tuple("Tcp").field(s).finish(),
            Stream::Boxed(_) => f.write_str("Boxed"),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Boxed(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Boxed(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Boxed(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Boxed(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Who is on the other end of an accepted stream.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The remote socket address.
    pub addr: SocketAddr,
    /// The common name of the client's verified TLS certificate, if any.
    pub cert_common_name: Option<Arc<str>>,
}

impl Peer {
    /// A peer of a plain (not TLS) connection.
    pub fn plain(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            cert_common_name: None,
        }
    }
}
