//! The HTTP listener (`management.listener.http`): Prometheus metrics,
//! the health check and the EMQX 4-style management API.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /metrics` | none | Prometheus text format ([`prometheus`]) |
//! | `GET /status`, `GET /health` | none | 200 when the node serves MQTT and every plugin is healthy, else 503 ([`status`]) |
//! | `/api/v4/...` | HTTP basic (`management.default_application.id`/`.secret`) | the management API ([`api`]), described by `GET /api/v4/openapi.json` |
//!
//! One axum server on its own task. It binds with the MQTT listeners (a busy
//! port stops startup) and starts serving once the plugins have started; at
//! shutdown it stops accepting with the rest of the broker, finishes the
//! requests under way, and is waited for (bounded) before the plugins stop.
//! Handlers only read shared state or send commands to session tasks: none
//! holds a lock across an await.

pub mod api;
pub mod prometheus;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use hooks_spec::{MetricsRegistry, Plugin};
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinHandle};

use crate::config::ManagementConfig;
use crate::shared::Shared;
use crate::BrokerError;

/// What the handlers share.
pub struct HttpState {
    /// The broker.
    pub shared: Arc<Shared>,
    /// The listener's settings (credentials, row limit).
    pub config: ManagementConfig,
    /// The started plugins, in start order (health, `/api/v4/plugins`).
    pub plugins: Vec<Arc<dyn Plugin>>,
    /// The metrics plugins registered.
    pub metrics: Arc<MetricsRegistry>,
    /// The MQTT listeners' accept loops: all must be running for `/status`.
    pub listeners: Vec<AbortHandle>,
    /// The cluster's links, when the node is in a cluster.
    pub links: Option<Arc<crate::cluster::link::Links>>,
    /// When the broker started.
    pub started: SystemTime,
}

/// Shared with every handler.
pub type State = Arc<HttpState>;

/// Every route the listener serves: `(method, path, handler)`. The router
/// is built from this list, and a test checks `openapi.json` against it.
pub fn routes() -> Vec<(&'static str, &'static str, MethodRouter<State>)> {
    vec![
        ("GET", "/metrics", get(prometheus::scrape)),
        ("GET", "/status", get(status::status)),
        ("GET", "/health", get(status::status)),
        ("GET", "/api/v4", get(api::endpoints)),
        ("GET", "/api/v4/openapi.json", get(api::openapi)),
        ("GET", "/api/v4/nodes", get(api::nodes)),
        ("GET", "/api/v4/nodes/{node}", get(api::node)),
        ("POST", "/api/v4/nodes/{node}/drain", post(api::drain)),
        ("GET", "/api/v4/stats", get(api::stats)),
        ("GET", "/api/v4/metrics", get(api::metrics)),
        ("GET", "/api/v4/plugins", get(api::plugins)),
        ("GET", "/api/v4/clients", get(api::clients::list)),
        ("GET", "/api/v4/clients/{clientid}", get(api::clients::one)),
        ("DELETE", "/api/v4/clients/{clientid}", delete(api::clients::kick)),
        ("GET", "/api/v4/subscriptions", get(api::clients::subscriptions)),
        (
            "GET",
            "/api/v4/subscriptions/{clientid}",
            get(api::clients::client_subscriptions),
        ),
        ("POST", "/api/v4/mqtt/publish", post(api::publish::publish)),
        ("POST", "/api/v4/mqtt/subscribe", post(api::subscribe::subscribe)),
    ]
}

/// The router over [`routes`], with basic auth on `/api/v4`.
pub fn router(state: State) -> Router {
    let mut open = Router::new();
    let mut authed = Router::new();
    for (_, path, handler) in routes() {
        if path.starts_with("/api/") {
            authed = authed.route(path, handler);
        } else {
            open = open.route(path, handler);
        }
    }
    let authed = authed.layer(axum::middleware::from_fn_with_state(
        Arc::clone(&state),
        api::require_auth,
    ));
    open.merge(authed).with_state(state)
}

/// The bound listener, before it serves.
pub struct Bound {
    listener: TcpListener,
    /// The address bound.
    pub addr: SocketAddr,
}

/// Binds `management.listener.http`.
pub async fn bind(config: &ManagementConfig) -> Result<Bound, BrokerError> {
    let bind_error = |source| BrokerError::Bind {
        name: "management.listener.http".to_string(),
        addr: config.listen,
        source,
    };
    let listener = TcpListener::bind(config.listen).await.map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    if config.app_secret == "public" && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "the management API listens beyond this host with the default secret `public`: \
             set management.default_application.secret"
        );
    }
    Ok(Bound { listener, addr })
}

/// The serving listener.
pub struct HttpServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

/// How long shutdown waits for requests under way.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl HttpServer {
    /// Serves `bound` until the broker shuts down.
    pub fn serve(bound: Bound, state: State) -> HttpServer {
        let mut shutdown = state.shared.shutdown_rx();
        let app = router(state);
        let addr = bound.addr;
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            };
            if let Err(e) = axum::serve(bound.listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(%addr, "HTTP listener failed: {e}");
            }
        });
        HttpServer { addr, task }
    }

    /// Waits (bounded) for the server to finish its requests, once the
    /// broker's shutdown signal has gone out.
    pub async fn stopped(self) {
        let abort = self.task.abort_handle();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.task).await.is_err() {
            tracing::warn!("HTTP requests still running after {SHUTDOWN_GRACE:?}; closing them");
            abort.abort();
        }
    }
}
