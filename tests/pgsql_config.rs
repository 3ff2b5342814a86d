//! A wrong `backend_pgsql.conf` stops the broker with an error naming the
//! file, the line and the key; a database that refuses the plugin stops it
//! naming the address.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use support::pgsql::*;
use support::*;

const POOL: &str = "backend.pgsql.pool1.server = 127.0.0.1:5432\nbackend.pgsql.pool1.database = mqtt\n";

/// Starts the broker with `conf` as backend_pgsql.conf; returns its exit code and output.
async fn refused(conf: &str) -> (Option<i32>, String) {
    let (status, out) =
        Broker::start_expect_failure("plugins.load = backend_pgsql\n", &[("backend_pgsql.conf", conf)]).await;
    (status.code(), out)
}

/// Checks the broker refused `conf` with exit code 2 and an error at `line` naming `key`
/// and containing `says`.
async fn refused_at(conf: &str, line: usize, key: &str, says: &str) {
    let (code, out) = refused(conf).await;
    assert_eq!(code, Some(2), "exit code\n{out}");
    let at = format!("backend_pgsql.conf:{line}: `{key}`");
    assert!(out.contains(&at), "expected {at:?} in:\n{out}");
    assert!(out.contains(says), "expected {says:?} in:\n{out}");
}

#[tokio::test]
async fn rule_with_bad_json() {
    refused_at(
        &format!("{POOL}backend.pgsql.hook.message.publish.1 = {{\"action\": {{\"function\": \"on_message_publish\"}}, \"pool\": \"pool1\"\n"),
        3,
        "backend.pgsql.hook.message.publish.1",
        "invalid JSON",
    )
    .await;
}

#[tokio::test]
async fn unknown_function() {
    refused_at(
        &format!("## rules\n{POOL}backend.pgsql.hook.message.publish.1 = {{\"action\": {{\"function\": \"on_message_publsh\"}}, \"pool\": \"pool1\"}}\n"),
        4,
        "backend.pgsql.hook.message.publish.1",
        "unknown function `on_message_publsh`",
    )
    .await;
}

#[tokio::test]
async fn function_on_the_wrong_hook() {
    refused_at(
        &format!("{POOL}backend.pgsql.hook.client.connected.1 = {{\"action\": {{\"function\": \"on_message_fetch\"}}, \"pool\": \"pool1\"}}\n"),
        3,
        "backend.pgsql.hook.client.connected.1",
        "on_message_fetch cannot be bound to `client.connected`",
    )
    .await;
}

#[tokio::test]
async fn unknown_pool() {
    refused_at(
        &format!("{POOL}\nbackend.pgsql.hook.message.acked.1 = {{\"action\": {{\"function\": \"on_message_acked\"}}, \"pool\": \"pool2\"}}\n"),
        4,
        "backend.pgsql.hook.message.acked.1",
        "unknown pool `pool2`",
    )
    .await;
}

#[tokio::test]
async fn placeholder_the_hook_does_not_have() {
    refused_at(
        &format!("{POOL}backend.pgsql.hook.client.connected.1 = {{\"action\": {{\"sql\": [\"insert into t values (${{clientid}}, ${{payload}})\"]}}, \"pool\": \"pool1\"}}\n"),
        3,
        "backend.pgsql.hook.client.connected.1",
        "${payload} is not available on client.connected",
    )
    .await;
}

#[tokio::test]
async fn unknown_key() {
    refused_at(
        &format!("{POOL}backend.pgsql.pool1.pool_sise = 4\n"),
        3,
        "backend.pgsql.pool1.pool_sise",
        "unknown pool setting `pool_sise`",
    )
    .await;
    refused_at(
        &format!("backend.pgsql.max_returned = 10\n{POOL}"),
        1,
        "backend.pgsql.max_returned",
        "unknown key",
    )
    .await;
}

#[tokio::test]
async fn sql_that_does_not_prepare_is_refused_at_start_with_its_line() {
    let db = TestDb::create().await;
    let conf = pgsql_conf(
        &db,
        r##"backend.pgsql.hook.client.connected.1 = {"action": {"sql": ["insert into no_such_table values (${clientid})"]}, "pool": "pool1"}"##,
    );
    let (code, out) = refused(&conf).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("backend_pgsql.conf:5: `backend.pgsql.hook.client.connected.1`"),
        "{out}"
    );
    assert!(out.contains("no_such_table"), "{out}");
}

/// A database that answers with a refusal waiting cannot fix (here: no
/// such database) stops startup, naming the server. (One that does not
/// answer at all does not: tests/pgsql_faults.rs.)
#[tokio::test]
async fn a_database_that_refuses_stops_startup_naming_it() {
    let conf = format!(
        "backend.pgsql.pool1.server = {}\nbackend.pgsql.pool1.database = no_such_database_here\n{}",
        pg_server(),
        EMQX_DEFAULT_RULES
    );
    let (code, out) = refused(&conf).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&pg_server()), "{out}");
    assert!(out.contains("cannot reach PostgreSQL"), "{out}");
    assert!(out.contains("no_such_database_here"), "{out}");
    assert!(!out.contains("listening on"), "{out}");
}
