//! The management API, `/api/v4`, in the shape of EMQX 4's: every answer
//! is JSON `{"code": 0, "data": ...}` (listings add
//! `"meta": {"page", "limit", "count", "hasnext"}`), errors carry a non-zero
//! `code` and a `message` with the HTTP status EMQX uses (400, 401, 404).
//! Every route needs HTTP basic auth with `management.default_application.id`
//! and `.secret` (401 otherwise). `GET /api/v4/openapi.json` describes them.
//!
//! What this node answers is what it knows: its own clients, sessions,
//! subscriptions, counters and plugins. In a cluster, `nodes` lists the
//! other members this node has a link to (their figures come from their own
//! API), and a publish is routed cluster-wide like any message.

pub mod clients;
pub mod publish;
pub mod subscribe;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};

/// EMQX 4's result codes used here.
pub mod code {
    /// Wrong or missing credentials.
    pub const BAD_CREDENTIALS: i64 = 103;
    /// A required parameter is missing.
    pub const MISSING_PARAM: i64 = 107;
    /// A parameter is wrong.
    pub const BAD_PARAM: i64 = 108;
    /// The body is not valid JSON.
    pub const BAD_JSON: i64 = 109;
    /// The client is not known (not connected, no session).
    pub const CLIENT_NOT_FOUND: i64 = 112;
    /// The topic is not valid.
    pub const BAD_TOPIC: i64 = 115;
}

/// An error answer: the HTTP status, EMQX's code and a message.
pub fn error(status: StatusCode, code: i64, message: impl Into<String>) -> Response {
    (status, Json(json!({"code": code, "message": message.into()}))).into_response()
}

/// A request body that must be a JSON object; the error answer otherwise.
pub fn json_object(body: &[u8]) -> Result<Value, Response> {
    match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(error(
            StatusCode::BAD_REQUEST,
            code::BAD_JSON,
            "the body must be a JSON object",
        )),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            code::BAD_JSON,
            format!("the body is not JSON: {e}"),
        )),
    }
}

/// EMQX's `topic` (one) or `topics` (comma separated) of a request body.
pub fn topics_param(body: &Value) -> Result<Vec<String>, Response> {
    match (body.get("topic"), body.get("topics")) {
        (Some(Value::String(t)), _) => Ok(vec![t.clone()]),
        (None, Some(Value::String(ts))) => Ok(ts.split(',').map(|t| t.trim().to_string()).collect()),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            code::MISSING_PARAM,
            "`topic` (a string) or `topics` (comma separated) is required",
        )),
    }
}

/// EMQX's `qos` of a request body: 0 (the default), 1 or 2.
pub fn qos_param(body: &Value) -> Result<hooks_spec::QoS, Response> {
    match body.get("qos").map(Value::as_u64) {
        None | Some(Some(0)) => Ok(hooks_spec::QoS::AtMostOnce),
        Some(Some(1)) => Ok(hooks_spec::QoS::AtLeastOnce),
        Some(Some(2)) => Ok(hooks_spec::QoS::ExactlyOnce),
        Some(_) => Err(error(
            StatusCode::BAD_REQUEST,
            code::BAD_PARAM,
            "`qos` must be 0, 1 or 2",
        )),
    }
}

/// `{"code": 0, "data": data}`.
pub fn ok(data: Value) -> Response {
    Json(json!({"code": 0, "data": data})).into_response()
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware: HTTP basic auth against the configured application.
pub async fn require_auth(State(state): State<super::State>, request: Request, next: Next) -> Response {
    let cfg = &state.config;
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok());
    let expected = format!("{}:{}", cfg.app_id, cfg.app_secret);
    if given.is_some_and(|g| same(&g, expected.as_bytes())) {
        return next.run(request).await;
    }
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        code::BAD_CREDENTIALS,
        "the management API needs HTTP basic auth with management.default_application.id and .secret",
    );
    if let Ok(v) = "Basic realm=\"postbox\"".parse() {
        response.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    response
}

/// `GET /api/v4`: every route, as EMQX 4 lists its endpoints.
pub async fn endpoints() -> Response {
    let data: Vec<Value> = super::routes()
        .into_iter()
        .filter(|(_, path, _)| path.starts_with("/api/v4/"))
        .map(|(method, path, _)| json!({"method": method, "path": path.trim_start_matches("/api/v4")}))
        .collect();
    ok(Value::Array(data))
}

/// The OpenAPI document (hand-written; a test checks it lists every route).
pub const OPENAPI: &str = include_str!("openapi.json");

/// `GET /api/v4/openapi.json`.
pub async fn openapi() -> Response {
    ([(CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// A time as EMQX 4 shows it: `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn datetime(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// A duration as EMQX 4 shows uptime: `1 days, 2 hours, 3 minutes, 4 seconds`.
fn uptime(d: Duration) -> String {
    let s = d.as_secs();
    let parts = [
        (s / 86_400, "days"),
        (s / 3600 % 24, "hours"),
        (s / 60 % 60, "minutes"),
    ];
    let mut out: Vec<String> = parts
        .iter()
        .skip_while(|(n, _)| *n == 0)
        .map(|(n, unit)| format!("{n} {unit}"))
        .collect();
    out.push(format!("{} seconds", s % 60));
    out.join(", ")
}

/// This node, as `nodes` lists it.
fn this_node(state: &super::HttpState) -> Value {
    let shared = &state.shared;
    let status = if shared.is_shutting_down() {
        "Stopped"
    } else if shared.is_draining() {
        "Draining"
    } else {
        "Running"
    };
    json!({
        "node": shared.config.node_name,
        "node_status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "sysdescr": "Postbox MQTT broker",
        "uptime": uptime(state.started.elapsed().unwrap_or_default()),
        "datetime": datetime(SystemTime::now()),
        "connections": shared.connected(),
        "sessions": shared.registry.len(),
        "max_clients": shared.config.mqtt.max_clients,
    })
}

/// `GET /api/v4/nodes`: this node, then the cluster members it links to.
pub async fn nodes(State(state): State<super::State>) -> Response {
    let mut data = vec![this_node(&state)];
    if let Some(links) = &state.links {
        let mut peers = links.nodes();
        peers.sort();
        for peer in peers {
            let connected = links.connected(&peer);
            data.push(json!({
                "node": &*peer,
                "node_status": if connected { "Running" } else { "Stopped" },
            }));
        }
    }
    ok(Value::Array(data))
}

/// `GET /api/v4/nodes/{node}`: this node only (404 for another).
pub async fn node(State(state): State<super::State>, Path(node): Path<String>) -> Response {
    if node != state.shared.config.node_name {
        return error(
            StatusCode::NOT_FOUND,
            code::BAD_PARAM,
            format!("node `{node}` is not this node; ask its own management API"),
        );
    }
    ok(this_node(&state))
}

/// `POST /api/v4/nodes/{node}/drain`: this node sends its clients
/// elsewhere, so a cluster can empty it before maintenance. Every connected
/// MQTT 5 client gets DISCONNECT 0x9D (Server moved) with
/// `mqtt.server_reference` (3.1.x clients: the connection is closed), and
/// from now on until restart new connections are refused the same way
/// (CONNACK 0x9D; 3.1.1: return code 3). Sessions stay, as after any lost
/// connection. `data`: `{"node", "draining": true, "disconnected": N,
/// "server_reference"}`. 404 for another node.
pub async fn drain(State(state): State<super::State>, Path(node): Path<String>) -> Response {
    let shared = &state.shared;
    if node != shared.config.node_name {
        return error(
            StatusCode::NOT_FOUND,
            code::BAD_PARAM,
            format!("node `{node}` is not this node; ask its own management API"),
        );
    }
    let reference = shared.config.mqtt.server_reference.clone();
    tracing::warn!(
        server_reference = reference.as_deref(),
        "draining: clients are sent to another server"
    );
    let answers = shared.begin_drain();
    let answered = futures_util::future::join_all(
        answers
            .into_iter()
            .map(|rx| tokio::time::timeout(clients::INSPECT_TIMEOUT, rx)),
    )
    .await;
    let disconnected = answered.into_iter().filter(|a| matches!(a, Ok(Ok(true)))).count();
    ok(json!({
        "node": shared.config.node_name,
        "draining": true,
        "disconnected": disconnected,
        "server_reference": reference,
    }))
}

/// `GET /api/v4/stats`: the node's gauges, by EMQX 4's names.
pub async fn stats(State(state): State<super::State>) -> Response {
    let shared = &state.shared;
    let stats = json!({
        "connections.count": shared.connected(),
        "connections.max": shared.config.mqtt.max_clients,
        "sessions.count": shared.registry.len(),
        "subscriptions.count": shared.router.local_len(),
        "retained.count": shared.retain.len(),
        "routes.count": shared.router.len(),
    });
    ok(json!([{"node": shared.config.node_name, "stats": stats}]))
}

/// `GET /api/v4/metrics`: the node's counters, by EMQX 4's names.
pub async fn metrics(State(state): State<super::State>) -> Response {
    let m = &state.shared.metrics;
    let mut metrics = serde_json::Map::new();
    for (name, value) in m.snapshot().into_iter().chain(m.traffic_snapshot()) {
        metrics.insert(name.to_string(), json!(value));
    }
    ok(json!([{"node": state.shared.config.node_name, "metrics": metrics}]))
}

/// `GET /api/v4/plugins`: the started plugins (built in: only these run).
pub async fn plugins(State(state): State<super::State>) -> Response {
    let plugins: Vec<Value> = state
        .plugins
        .iter()
        .map(|p| {
            json!({
                "name": p.name(),
                "version": env!("CARGO_PKG_VERSION"),
                "active": true,
                "type": "plugin",
            })
        })
        .collect();
    ok(json!([{"node": state.shared.config.node_name, "plugins": plugins}]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_is_utc_civil_time() {
        assert_eq!(datetime(UNIX_EPOCH), "1970-01-01 00:00:00");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29 12:34:56
        assert_eq!(datetime(t), "2024-02-29 12:34:56");
    }

    #[test]
    fn uptime_reads_like_emqx() {
        assert_eq!(uptime(Duration::from_secs(5)), "5 seconds");
        assert_eq!(uptime(Duration::from_secs(3725)), "1 hours, 2 minutes, 5 seconds");
    }

    /// The OpenAPI document is JSON and lists every route the router serves
    /// (with its method), and nothing else: it cannot drift from the code.
    #[test]
    fn openapi_lists_every_route() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in paths {
            for method in item.as_object().expect("path item").keys() {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
        documented.sort();
        let mut served: Vec<(String, String)> = crate::http::routes()
            .into_iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
    }
}
