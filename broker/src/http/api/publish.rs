//! `POST /api/v4/mqtt/publish`: publish a message, as EMQX 4 does.
//!
//! Body (JSON): `topic` (or `topics`, comma separated), `payload` (string),
//! `encoding` (`plain`, the default, or `base64`), `qos` (0, the default, 1
//! or 2), `retain` (false), `clientid` (recorded as the publisher; optional).
//! The message goes through `message.publish` like a client's (so the
//! PostgreSQL backend stores it before it is routed; the ACL, which is about
//! clients, is not asked) and is then routed, on every node of a cluster.
//! The answer is `{"code": 0}` once it is routed; a message a storage plugin
//! could not store answers 503 (`code` 102), one a plugin stopped 403.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use hooks_spec::{Message, PublishArgs};
use serde_json::{json, Value};

use super::{code, error};
use crate::publish::Outcome;

/// EMQX's "unknown error" code, for a message that was not routed.
const NOT_PUBLISHED: i64 = 102;

/// `POST /api/v4/mqtt/publish`.
pub async fn publish(State(state): State<super::super::State>, body: Bytes) -> Response {
    let body = match super::json_object(&body) {
        Ok(v) => v,
        Err(answer) => return answer,
    };
    let topics = match super::topics_param(&body) {
        Ok(t) => t,
        Err(answer) => return answer,
    };
    let payload = match body.get("payload") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                code::BAD_PARAM,
                "`payload` must be a string",
            )
        }
    };
    let payload: Vec<u8> = match body.get("encoding").and_then(Value::as_str).unwrap_or("plain") {
        "plain" => payload.into_bytes(),
        "base64" => match base64::engine::general_purpose::STANDARD.decode(payload.trim()) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    code::BAD_PARAM,
                    format!("`payload` is not base64: {e}"),
                )
            }
        },
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                code::BAD_PARAM,
                format!("`encoding` must be `plain` or `base64`, got `{other}`"),
            )
        }
    };
    let qos = match super::qos_param(&body) {
        Ok(q) => q,
        Err(answer) => return answer,
    };
    let retain = match body.get("retain") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                code::BAD_PARAM,
                "`retain` must be true or false",
            )
        }
    };
    let publisher: Option<Arc<str>> = body.get("clientid").and_then(Value::as_str).map(Arc::from);
    let shared = &state.shared;
    for topic in &topics {
        if crate::topic::validate_topic_name(topic, shared.config.mqtt.max_topic_levels).is_err() {
            return error(
                StatusCode::BAD_REQUEST,
                code::BAD_TOPIC,
                format!("`{topic}` is not a valid topic name"),
            );
        }
    }
    for topic in topics {
        let mut msg = Message::new(topic.as_str(), payload.clone(), qos, retain);
        msg.publisher = publisher.clone();
        let args = Arc::new(PublishArgs {
            client: None,
            will: false,
        });
        let flow = crate::publish::fold(shared, args, msg).await;
        let (outcome, backlog) = crate::publish::finish(shared, flow);
        if let Some(wait) = backlog {
            wait.await;
        }
        match outcome {
            Outcome::Routed(_) => {}
            Outcome::NotStored => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    NOT_PUBLISHED,
                    format!("the message to `{topic}` could not be stored, so it was not published"),
                )
            }
            Outcome::Denied => {
                return error(
                    StatusCode::FORBIDDEN,
                    NOT_PUBLISHED,
                    format!("a plugin refused the message to `{topic}`"),
                )
            }
        }
    }
    Json(json!({"code": 0})).into_response()
}
