//! `GET /status` (EMQX 4's health check, also at `/health`): plain text,
//! 200 when the node serves MQTT, 503 when it does not.
//!
//! Healthy means: the broker is not shutting down or draining, every MQTT listener's
//! accept loop runs, and every started plugin's [`Plugin::health`] answers
//! `Ok` within [`PLUGIN_HEALTH_TIMEOUT`] (with `backend_pgsql`: each of its
//! PostgreSQL servers answers a query). The body says what is wrong:
//!
//! ```text
//! Node postbox@127.0.0.1 is started
//! postbox is running
//! ```
//!
//! or, with 503, `postbox is not_running` followed by one line per problem.
//!
//! [`Plugin::health`]: hooks_spec::Plugin::health

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;

/// How long a plugin's health check may take before it counts as failed.
pub const PLUGIN_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// What is wrong with the node now (empty: healthy).
pub async fn problems(state: &super::HttpState) -> Vec<String> {
    let mut problems = Vec::new();
    if state.shared.is_shutting_down() {
        problems.push("the broker is shutting down".to_string());
    }
    if state.shared.is_draining() {
        // A load balancer stops sending clients to a node that sends them away.
        problems.push("the node drains: clients are sent to another server".to_string());
    }
    if state.listeners.iter().any(|l| l.is_finished()) {
        problems.push("an MQTT listener has stopped".to_string());
    }
    let checks = state.plugins.iter().map(|p| async move {
        let outcome = tokio::time::timeout(PLUGIN_HEALTH_TIMEOUT, p.health()).await;
        match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("plugin {}: {e}", p.name())),
            Err(_) => Some(format!(
                "plugin {}: no answer within {PLUGIN_HEALTH_TIMEOUT:?}",
                p.name()
            )),
        }
    });
    problems.extend(futures_util::future::join_all(checks).await.into_iter().flatten());
    problems
}

/// `GET /status`.
pub async fn status(State(state): State<super::State>) -> (StatusCode, String) {
    let node = &state.shared.config.node_name;
    let problems = problems(&state).await;
    if problems.is_empty() {
        (
            StatusCode::OK,
            format!("Node {node} is started\npostbox is running\n"),
        )
    } else {
        let mut body = format!("Node {node} is started\npostbox is not_running\n");
        for p in problems {
            body.push_str(&p);
            body.push('\n');
        }
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}
