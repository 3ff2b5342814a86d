//! `POST /api/v4/mqtt/subscribe`: subscribe a client, as EMQX 4 does, and
//! provision a subscription for a client that is not here.
//!
//! Body (JSON): `clientid`, `topic` (or `topics`, comma separated), `qos`
//! (0, the default, 1 or 2). A client with a session on this node is
//! subscribed at once, as if it had sent SUBSCRIBE (through the ACL;
//! `provisioned: false` in the answer). A client without one (a device that
//! may never have connected) is provisioned by the plugin that keeps
//! subscriptions for clients to come (the PostgreSQL backend with an
//! `on_subscribe_lookup` rule: a row in `mqtt_sub`): what is stored for it
//! from now on is delivered at its first connect (`provisioned: true`).
//! Without such a plugin that is 404, as EMQX answers for an unknown
//! client; a plugin that could not record it answers 503.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use hooks_spec::{BrokerHandle, SubOpts};
use serde_json::{json, Value};

use super::{code, error, ok};
use crate::topic;

/// EMQX's "unknown error" code, for a subscription a plugin could not record.
const NOT_RECORDED: i64 = 102;

/// `POST /api/v4/mqtt/subscribe`.
pub async fn subscribe(State(state): State<super::super::State>, body: Bytes) -> Response {
    let body = match super::json_object(&body) {
        Ok(v) => v,
        Err(answer) => return answer,
    };
    let clientid = match body.get("clientid") {
        Some(Value::String(c)) if !c.is_empty() => c.clone(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                code::MISSING_PARAM,
                "`clientid` (a non-empty string) is required",
            )
        }
    };
    let topics = match super::topics_param(&body) {
        Ok(t) => t,
        Err(answer) => return answer,
    };
    let qos = match super::qos_param(&body) {
        Ok(q) => q,
        Err(answer) => return answer,
    };
    let max_levels = state.shared.config.mqtt.max_topic_levels;
    for t in &topics {
        if topic::validate_subscription(t, max_levels).is_err() {
            return error(
                StatusCode::BAD_REQUEST,
                code::BAD_TOPIC,
                format!("`{t}` is not a valid topic filter"),
            );
        }
    }
    if state.shared.registry.get(&clientid).is_some() {
        let handle = crate::handle::Handle::new(Arc::clone(&state.shared));
        for t in &topics {
            if let Err(e) = handle.subscribe(&clientid, t, SubOpts::with_qos(qos)).await {
                return error(StatusCode::NOT_FOUND, code::CLIENT_NOT_FOUND, e.to_string());
            }
        }
        return ok(json!({"clientid": clientid, "topics": topics, "provisioned": false}));
    }
    let Some(store) = state.plugins.iter().find_map(|p| p.subscription_store()) else {
        return error(
            StatusCode::NOT_FOUND,
            code::CLIENT_NOT_FOUND,
            format!(
                "client `{clientid}` has no session here, and no plugin keeps subscriptions for clients to \
                 come (backend_pgsql with an on_subscribe_lookup rule does)"
            ),
        );
    };
    for t in &topics {
        if let Err(e) = store.provision(&clientid, t, qos).await {
            tracing::warn!(%clientid, topic = %t, "management API: provisioning failed: {e}");
            return error(StatusCode::SERVICE_UNAVAILABLE, NOT_RECORDED, e);
        }
    }
    tracing::info!(%clientid, ?topics, "management API: subscription provisioned for a client not here");
    ok(json!({"clientid": clientid, "topics": topics, "provisioned": true}))
}
