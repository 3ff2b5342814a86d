//! Accept loop: one task per listener, one handshake task per connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::connection;
use crate::server::Shared;

/// Accepts connections until the task is aborted at shutdown.
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(connection::handle(Arc::clone(&shared), stream, peer));
            }
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
