//! `/api/v4/clients` and `/api/v4/subscriptions`: the sessions of this node.
//!
//! A listing reads the registry (client id, user name, address: no session
//! task is asked), filters and sorts it by client id, takes the page
//! (`_page` from 1, `_limit` up to `management.max_row_limit`), and only then
//! asks each session of the page for what it holds (subscriptions, inflight,
//! queue), all at once, each bounded by [`INSPECT_TIMEOUT`]. Subscriptions
//! need every session's answer, since they are paged by subscription.
//!
//! Filters, as EMQX 4 names them: `clientid`, `username` (exact),
//! `_like_clientid`, `_like_username` (substring), `conn_state`
//! (`connected` or `disconnected`); for subscriptions: `clientid`, `topic`,
//! `qos`.
//!
//! With a plugin that counts backlogs (backend_pgsql with an
//! `on_message_fetch` rule, [`hooks_spec::BacklogSource`]), each client also
//! shows `backlog` (stored messages its subscriptions have not acknowledged,
//! as last counted) and `backlog_oldest_age` (seconds since the oldest of
//! them arrived; null when none), and `_gte_backlog=N` keeps the clients
//! whose backlog is at least N (400 without such a plugin).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use hooks_spec::{Backlog, BacklogSource};

use super::{code, error, ok};
use crate::delivery::{SessionCmd, SessionView};
use crate::registry::SessionRef;

/// How long one session may take to say what it holds.
pub const INSPECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The query string of a listing.
type Params = Query<HashMap<String, String>>;

/// `_page` and `_limit`, checked.
struct Page {
    page: usize,
    limit: usize,
}

impl Page {
    fn parse(params: &HashMap<String, String>, max: usize) -> Result<Page, Response> {
        let number = |key: &str, default: usize| -> Result<usize, Response> {
            match params.get(key) {
                None => Ok(default),
                Some(v) => match v.parse::<usize>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(error(
                        StatusCode::BAD_REQUEST,
                        code::BAD_PARAM,
                        format!("`{key}` must be an integer greater than 0, got `{v}`"),
                    )),
                },
            }
        };
        Ok(Page {
            page: number("_page", 1)?,
            limit: number("_limit", max)?.min(max),
        })
    }

    /// The page of `rows`, with EMQX's `meta`.
    fn apply<T>(&self, rows: Vec<T>) -> (Vec<T>, Value) {
        let count = rows.len();
        let start = (self.page - 1).saturating_mul(self.limit);
        let page: Vec<T> = rows.into_iter().skip(start).take(self.limit).collect();
        let hasnext = start.saturating_add(page.len()) < count;
        let meta = json!({"page": self.page, "limit": self.limit, "count": count, "hasnext": hasnext});
        (page, meta)
    }
}

fn listing(data: Vec<Value>, meta: Value) -> Response {
    Json(json!({"code": 0, "data": data, "meta": meta})).into_response()
}

/// Asks a session what it holds (`None`: it ended, or did not answer in time).
async fn inspect(session: &SessionRef) -> Option<SessionView> {
    let (tx, rx) = oneshot::channel();
    session.tx.send(SessionCmd::Inspect(tx)).ok()?;
    tokio::time::timeout(INSPECT_TIMEOUT, rx).await.ok()?.ok()
}

/// Every session of the registry that passes the client filters, by client id.
fn sessions(state: &super::super::HttpState, params: &HashMap<String, String>) -> Vec<SessionRef> {
    let like = |key: &str, value: Option<&str>| match params.get(key) {
        None => true,
        Some(want) => value.is_some_and(|v| v.contains(want.as_str())),
    };
    let exact = |key: &str, value: Option<&str>| match params.get(key) {
        None => true,
        Some(want) => value == Some(want.as_str()),
    };
    let mut all: Vec<SessionRef> = state
        .shared
        .registry
        .all()
        .into_iter()
        .filter(|s| {
            let c = &s.client;
            exact("clientid", Some(&c.clientid))
                && exact("username", c.username.as_deref())
                && like("_like_clientid", Some(&c.clientid))
                && like("_like_username", c.username.as_deref())
        })
        .collect();
    all.sort_by(|a, b| a.client.clientid.cmp(&b.client.clientid));
    all
}

/// The plugin that counts backlogs, if one is started.
fn backlog_source(state: &super::super::HttpState) -> Option<Arc<dyn BacklogSource>> {
    state.plugins.iter().find_map(|p| p.backlog_source())
}

/// `_gte_backlog`, checked: `Ok(None)` when absent.
fn gte_backlog(params: &HashMap<String, String>, source: bool) -> Result<Option<u64>, Response> {
    let Some(v) = params.get("_gte_backlog") else {
        return Ok(None);
    };
    if !source {
        return Err(error(
            StatusCode::BAD_REQUEST,
            code::BAD_PARAM,
            "`_gte_backlog` needs a plugin that counts backlogs (backend_pgsql with on_message_fetch)",
        ));
    }
    v.parse::<u64>().map(Some).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            code::BAD_PARAM,
            format!("`_gte_backlog` must be an integer of 0 or more, got `{v}`"),
        )
    })
}

/// A client as EMQX 4 shows it (plus its backlog, when a plugin counts them).
fn client_json(
    node: &str,
    s: &SessionRef,
    view: Option<&SessionView>,
    limits: &crate::config::MqttLimits,
    backlog: Option<Backlog>,
) -> Value {
    let c = view.map(|v| &v.client).unwrap_or(&s.client);
    let mut out = json!({
        "node": node,
        "clientid": &*c.clientid,
        "username": c.username,
        "proto_name": "MQTT",
        "proto_ver": c.protocol.level(),
        "ip_address": c.peer.ip().to_string(),
        "port": c.peer.port(),
        "keepalive": c.keepalive,
        "clean_start": c.clean_start,
        "expiry_interval": c.session_expiry,
        "max_subscriptions": limits.max_subscriptions,
        "max_inflight": limits.max_inflight,
        "max_mqueue": limits.max_queue_len,
        "max_awaiting_rel": limits.max_awaiting_rel,
    });
    if let (Some(v), Some(obj)) = (view, out.as_object_mut()) {
        obj.insert("connected".into(), json!(v.connected));
        obj.insert("created_at".into(), json!(super::datetime(v.created_at)));
        obj.insert("subscriptions_cnt".into(), json!(v.subscriptions.len()));
        obj.insert("inflight".into(), json!(v.inflight));
        obj.insert("mqueue_len".into(), json!(v.queued));
        obj.insert("awaiting_rel".into(), json!(v.awaiting_rel));
    }
    if let (Some(b), Some(obj)) = (backlog, out.as_object_mut()) {
        obj.insert("backlog".into(), json!(b.pending));
        let age = b.oldest_age.map(|a| a.as_secs());
        obj.insert("backlog_oldest_age".into(), json!(age));
    }
    out
}

/// `GET /api/v4/clients`.
pub async fn list(State(state): State<super::super::State>, Query(params): Params) -> Response {
    let page = match Page::parse(&params, state.config.max_row_limit) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let conn_state = params.get("conn_state").map(String::as_str);
    if !matches!(conn_state, None | Some("connected") | Some("disconnected")) {
        return error(
            StatusCode::BAD_REQUEST,
            code::BAD_PARAM,
            "`conn_state` must be `connected` or `disconnected`",
        );
    }
    let source = backlog_source(&state);
    let min_backlog = match gte_backlog(&params, source.is_some()) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let backlog = |s: &SessionRef| source.as_ref().and_then(|b| b.client_backlog(&s.client.clientid));
    let mut rows: Vec<SessionRef> = sessions(&state, &params);
    if let Some(min) = min_backlog {
        // Before the first count nothing is known to reach it.
        rows.retain(|s| backlog(s).is_some_and(|b| b.pending >= min));
    }
    let node = state.shared.config.node_name.clone();
    let limits = &state.shared.config.mqtt;
    if let Some(wanted) = conn_state {
        // The state lives in the session task: ask every candidate.
        let views = futures_util::future::join_all(rows.iter().map(inspect)).await;
        rows = rows
            .into_iter()
            .zip(views)
            .filter(|(_, v)| v.as_ref().is_some_and(|v| v.connected == (wanted == "connected")))
            .map(|(s, _)| s)
            .collect();
    }
    let (rows, meta) = page.apply(rows);
    let views = futures_util::future::join_all(rows.iter().map(inspect)).await;
    let data = rows
        .iter()
        .zip(&views)
        .map(|(s, v)| client_json(&node, s, v.as_ref(), limits, backlog(s)))
        .collect();
    listing(data, meta)
}

fn not_found(clientid: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        code::CLIENT_NOT_FOUND,
        format!("no session for client `{clientid}` on this node"),
    )
}

/// `GET /api/v4/clients/{clientid}`: `data` is a list of one, as in EMQX 4.
pub async fn one(State(state): State<super::super::State>, Path(clientid): Path<String>) -> Response {
    let Some(s) = state.shared.registry.get(&clientid) else {
        return not_found(&clientid);
    };
    let view = inspect(&s).await;
    let node = &state.shared.config.node_name;
    let backlog = backlog_source(&state).and_then(|b| b.client_backlog(&clientid));
    ok(json!([client_json(
        node,
        &s,
        view.as_ref(),
        &state.shared.config.mqtt,
        backlog
    )]))
}

/// `DELETE /api/v4/clients/{clientid}`: closes the client's connection
/// (MQTT 5: DISCONNECT 0x98). The session is kept for its expiry interval,
/// as after any lost connection (EMQX 4 also discards it): the stored
/// messages of a device that goes offline are what Postbox is for. 404 when
/// the node has no session of that client id or it is not connected.
pub async fn kick(State(state): State<super::super::State>, Path(clientid): Path<String>) -> Response {
    let Some(s) = state.shared.registry.get(&clientid) else {
        return not_found(&clientid);
    };
    let (tx, rx) = oneshot::channel();
    if s.tx.send(SessionCmd::Kick(tx)).is_err() {
        return not_found(&clientid);
    }
    match tokio::time::timeout(INSPECT_TIMEOUT, rx).await {
        Ok(Ok(true)) => Json(json!({"code": 0})).into_response(),
        Ok(Ok(false)) => error(
            StatusCode::NOT_FOUND,
            code::CLIENT_NOT_FOUND,
            format!("client `{clientid}` is not connected (its session waits for it)"),
        ),
        _ => not_found(&clientid),
    }
}

/// One subscription as EMQX 4 shows it.
fn subscription_json(node: &str, clientid: &str, filter: &str, opts: &hooks_spec::SubOpts) -> Value {
    json!({"node": node, "clientid": clientid, "topic": filter, "qos": opts.qos as u8})
}

/// `GET /api/v4/subscriptions`: every subscription of this node's sessions,
/// sorted by client id then topic, paged.
pub async fn subscriptions(State(state): State<super::super::State>, Query(params): Params) -> Response {
    let page = match Page::parse(&params, state.config.max_row_limit) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let qos = match params.get("qos").map(|q| q.parse::<u8>()) {
        None => None,
        Some(Ok(q)) if q <= 2 => Some(q),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                code::BAD_PARAM,
                "`qos` must be 0, 1 or 2",
            )
        }
    };
    let mut by_client = HashMap::new();
    if let Some(id) = params.get("clientid") {
        by_client.insert("clientid".to_string(), id.clone());
    }
    let rows = sessions(&state, &by_client);
    let views = futures_util::future::join_all(rows.iter().map(inspect)).await;
    let node = state.shared.config.node_name.clone();
    let topic = params.get("topic");
    let all: Vec<Value> = views
        .iter()
        .flatten()
        .flat_map(|v| {
            let clientid: Arc<str> = Arc::clone(&v.client.clientid);
            let node = node.clone();
            v.subscriptions
                .iter()
                .filter(|(f, o)| topic.is_none_or(|t| t == f) && qos.is_none_or(|q| q == o.qos as u8))
                .map(move |(f, o)| subscription_json(&node, &clientid, f, o))
                .collect::<Vec<_>>()
        })
        .collect();
    let (data, meta) = page.apply(all);
    listing(data, meta)
}

/// `GET /api/v4/subscriptions/{clientid}`: that client's subscriptions.
pub async fn client_subscriptions(
    State(state): State<super::super::State>,
    Path(clientid): Path<String>,
) -> Response {
    let Some(s) = state.shared.registry.get(&clientid) else {
        return not_found(&clientid);
    };
    let Some(view) = inspect(&s).await else {
        return not_found(&clientid);
    };
    let node = &state.shared.config.node_name;
    let data: Vec<Value> = view
        .subscriptions
        .iter()
        .map(|(f, o)| subscription_json(node, &clientid, f, o))
        .collect();
    ok(Value::Array(data))
}
