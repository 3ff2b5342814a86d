//! Tests of `rules`.

use super::*;
use std::path::Path;

fn conf(text: &str) -> ConfFile {
    match ConfFile::parse(Path::new("etc/backend_pgsql.conf"), text) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

/// Parses a one-line file `key = value` (placed on line 3).
fn rule(key: &str, value: &str) -> Result<Rule, ConfError> {
    let c = conf(&format!("## a comment\n\n{key} = {value}\n"));
    Rule::from_entry(&c, &c.entries[0], &["pool1", "pool2"])
}

fn ok(key: &str, value: &str) -> Rule {
    match rule(key, value) {
        Ok(r) => r,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn err(key: &str, value: &str) -> String {
    match rule(key, value) {
        Ok(r) => panic!("expected an error, got {r:?}"),
        Err(e) => {
            assert_eq!(e.line, 3, "{e}");
            assert_eq!(e.key, key);
            assert_eq!(e.file, Path::new("etc/backend_pgsql.conf"));
            e.message
        }
    }
}

const PUB: &str = "backend.pgsql.hook.message.publish.1";

#[test]
fn function_names_round_trip() {
    assert_eq!(Function::ALL.len(), 13);
    for f in Function::ALL {
        assert_eq!(Function::from_name(f.name()), Some(*f));
        assert!(!f.hooks().is_empty());
        for h in f.hooks() {
            assert!(BINDABLE_HOOKS.contains(h));
        }
    }
    assert_eq!(Function::from_name("on_message_fetched"), None);
    assert_eq!(
        Function::OnSubscribeStore.hooks(),
        [HookPoint::SessionSubscribed, HookPoint::SessionUnsubscribed]
    );
    assert_eq!(
        Function::OnMessageDelivered.hooks(),
        [HookPoint::MessageDelivered]
    );
    assert_eq!(Function::OnSubscribeLookup.hooks(), [HookPoint::ClientConnected]);
}

#[test]
fn a_function_rule() {
    let r = ok(
        PUB,
        r#"{"topic": "a/+/#", "action": {"function": "on_message_publish"}, "pool": "pool2"}"#,
    );
    assert_eq!(
        r,
        Rule {
            hook: HookPoint::MessagePublish,
            n: 1,
            line: 3,
            key: PUB.to_string(),
            topic: Some("a/+/#".to_string()),
            action: Action::Function(Function::OnMessagePublish),
            pool: "pool2".to_string(),
            offline_opts: OfflineOpts::default(),
        }
    );
}

#[test]
fn an_sql_rule() {
    let r = ok(
        "backend.pgsql.hook.session.unsubscribed.12",
        r#"{"action": {"sql": ["delete from mqtt_acked where clientid = ${clientid} and topic = ${topic}", "select ${qos}"]}, "pool": "pool1"}"#,
    );
    assert_eq!(r.hook, HookPoint::SessionUnsubscribed);
    assert_eq!(r.n, 12);
    assert_eq!(r.topic, None);
    let Action::Sql(t) = &r.action else {
        panic!("{r:?}")
    };
    assert_eq!(t.len(), 2);
    assert_eq!(
        t[0].sql,
        "delete from mqtt_acked where clientid = $1 and topic = $2"
    );
    assert_eq!(t[0].params, [Placeholder::ClientId, Placeholder::Topic]);
    assert_eq!(t[1].sql, "select $1");
    assert_eq!(t[1].params, [Placeholder::Qos]);
}

#[test]
fn offline_opts() {
    let r = ok(
        "backend.pgsql.hook.session.subscribed.1",
        r##"{"topic": "#", "action": {"function": "on_message_fetch"}, "offline_opts": {"max_returned_count": 500, "time_range": "2h"}, "pool": "pool1"}"##,
    );
    assert_eq!(
        r.offline_opts,
        OfflineOpts {
            max_returned_count: Some(500),
            time_range: Some(Duration::from_secs(7200))
        }
    );
    let r = ok(
        "backend.pgsql.hook.session.subscribed.1",
        r#"{"action": {"function": "on_message_fetch"}, "offline_opts": {"time_range": "1d"}, "pool": "pool1"}"#,
    );
    assert_eq!(r.offline_opts.max_returned_count, None);
    assert_eq!(r.offline_opts.time_range, Some(Duration::from_secs(86400)));
}

#[test]
fn offline_opts_errors() {
    let key = "backend.pgsql.hook.session.subscribed.1";
    let m = |opts: &str| {
        err(
            key,
            &format!(
                r#"{{"action": {{"function": "on_message_fetch"}}, "offline_opts": {opts}, "pool": "pool1"}}"#
            ),
        )
    };
    for bad in ["0", "-1", "1.5", "\"500\""] {
        let e = m(&format!(r#"{{"max_returned_count": {bad}}}"#));
        assert!(
            e.contains("`offline_opts.max_returned_count` must be a positive integer"),
            "{e}"
        );
    }
    let e = m(r#"{"time_range": "2 fortnights"}"#);
    assert!(
        e.contains("`offline_opts.time_range` must be a duration") && e.contains("2 fortnights"),
        "{e}"
    );
    let e = m(r#"{"time_range": 7200}"#);
    assert!(e.contains("`offline_opts.time_range` must be a duration"), "{e}");
    let e = m(r#"{"time_range": "0s"}"#);
    assert!(e.contains("greater than 0"), "{e}");
    let e = m(r#"{"max_count": 1}"#);
    assert!(e.contains("unknown field `max_count` in `offline_opts`"), "{e}");
    let e = m("[]");
    assert!(e.contains("`offline_opts` must be an object"), "{e}");
    let e = err(
        key,
        r#"{"action": {"function": "on_retain_lookup"}, "offline_opts": {"time_range": "2h"}, "pool": "pool1"}"#,
    );
    assert_eq!(
        e,
        "`offline_opts` is only allowed with the function on_message_fetch"
    );
}

#[test]
fn bad_json() {
    let e = err(
        PUB,
        r#"{"action": {"function": "on_message_publish"}, "pool": "pool1""#,
    );
    assert!(
        e.starts_with("invalid JSON (EOF while parsing an object at line 1 column"),
        "{e}"
    );
    let e = err(PUB, "");
    assert!(e.starts_with("invalid JSON (EOF while parsing a value"), "{e}");
    let e = err(PUB, r#"["on_message_publish"]"#);
    assert!(e.starts_with("expected a JSON object"), "{e}");
}

#[test]
fn unknown_and_missing_fields() {
    let e = err(
        PUB,
        r##"{"action": {"function": "on_message_publish"}, "pool": "pool1", "topics": "#"}"##,
    );
    assert!(e.starts_with("unknown field `topics` in the rule"), "{e}");
    let e = err(PUB, r#"{"pool": "pool1"}"#);
    assert!(e.starts_with("missing field `action`"), "{e}");
    let e = err(PUB, r#"{"action": {"function": "on_message_publish"}}"#);
    assert!(e.starts_with("missing field `pool`"), "{e}");
    let e = err(
        PUB,
        r#"{"action": {"function": "on_message_publish"}, "pool": 1}"#,
    );
    assert!(e.starts_with("`pool` must be a string"), "{e}");
}

#[test]
fn bad_actions() {
    for action in [
        r#"{}"#,
        r#"{"function": "on_message_publish", "sql": ["select 1"]}"#,
        r#"{"func": "on_message_publish"}"#,
        r#""on_message_publish""#,
    ] {
        let e = err(PUB, &format!(r#"{{"action": {action}, "pool": "pool1"}}"#));
        assert!(
            e.contains(r#"expected {"function": "<name>"} or {"sql": ["<statement>", ...]}"#),
            "{e}"
        );
    }
    let e = err(PUB, r#"{"action": {"function": 1}, "pool": "pool1"}"#);
    assert!(e.starts_with("`action.function` must be a function name"), "{e}");
    for sql in [r#"[]"#, r#""select 1""#, r#"[1]"#, r#"["  "]"#] {
        let e = err(
            PUB,
            &format!(r#"{{"action": {{"sql": {sql}}}, "pool": "pool1"}}"#),
        );
        assert!(
            e.starts_with("`action.sql` must be a non-empty list of SQL statements"),
            "{e}"
        );
    }
}

#[test]
fn unknown_function() {
    let e = err(
        PUB,
        r#"{"action": {"function": "on_message_publishh"}, "pool": "pool1"}"#,
    );
    assert!(e.starts_with("unknown function `on_message_publishh`; the functions are: on_client_connected, "));
    assert!(e.ends_with("on_subscribe_store, on_session_restore"), "{e}");
}

#[test]
fn function_on_the_wrong_hook() {
    let e = err(
        PUB,
        r#"{"action": {"function": "on_message_fetch"}, "pool": "pool1"}"#,
    );
    assert_eq!(
        e,
        "function on_message_fetch cannot be bound to `message.publish`; it can only be bound to \
         session.subscribed"
    );
    let e = err(
        "backend.pgsql.hook.client.connected.3",
        r#"{"action": {"function": "on_subscribe_store"}, "pool": "pool1"}"#,
    );
    assert!(
        e.ends_with("it can only be bound to session.subscribed and session.unsubscribed"),
        "{e}"
    );
    // on_subscribe_store serves both session hooks.
    for hook in ["session.subscribed", "session.unsubscribed"] {
        let r = ok(
            &format!("backend.pgsql.hook.{hook}.1"),
            r#"{"action": {"function": "on_subscribe_store"}, "pool": "pool1"}"#,
        );
        assert_eq!(r.action, Action::Function(Function::OnSubscribeStore));
    }
}

#[test]
fn unknown_pool() {
    let e = err(
        PUB,
        r#"{"action": {"function": "on_message_publish"}, "pool": "pool3"}"#,
    );
    assert_eq!(e, "unknown pool `pool3`; the configured pools are: pool1, pool2");
    let c = conf(&format!(
        "{PUB} = {{\"action\": {{\"function\": \"on_message_publish\"}}, \"pool\": \"p\"}}"
    ));
    let e = match Rule::from_entry(&c, &c.entries[0], &[]) {
        Ok(r) => panic!("{r:?}"),
        Err(e) => e,
    };
    assert_eq!(e.line, 1);
    assert!(e.message.contains("no pool is configured"), "{}", e.message);
}

#[test]
fn placeholders_must_be_available_on_the_hook() {
    let e = err(
        "backend.pgsql.hook.client.connected.1",
        r#"{"action": {"sql": ["select 1", "insert into t values (${clientid}, ${topic})"]}, "pool": "pool1"}"#,
    );
    assert_eq!(
        e,
        "sql statement 2: ${topic} is not available on client.connected; the placeholders there are: \
         ${clientid}, ${username}, ${peerhost}, ${node}"
    );
    let e = err(
        "backend.pgsql.hook.session.subscribed.1",
        r#"{"action": {"sql": ["insert into t values (${payload})"]}, "pool": "pool1"}"#,
    );
    assert!(
        e.starts_with("sql statement 1: ${payload} is not available on session.subscribed"),
        "{e}"
    );
    ok(
        "backend.pgsql.hook.message.delivered.1",
        r#"{"action": {"sql": ["insert into t values (${clientid}, ${topic}, ${msgid}, ${payload}, ${timestamp})"]}, "pool": "pool1"}"#,
    );
}

#[test]
fn bad_sql_templates() {
    let e = err(
        PUB,
        r#"{"action": {"sql": ["insert into t values ('${clientid}')"]}, "pool": "pool1"}"#,
    );
    assert!(e.starts_with("sql statement 1: "), "{e}");
    assert!(
        e.contains("placeholders are bind parameters: write ${clientid} without quotes"),
        "{e}"
    );
    let e = err(
        PUB,
        r#"{"action": {"sql": ["select 1", "select ${nope}"]}, "pool": "pool1"}"#,
    );
    assert!(
        e.starts_with("sql statement 2: unknown placeholder `${nope}`"),
        "{e}"
    );
    let e = err(PUB, r#"{"action": {"sql": ["select $1"]}, "pool": "pool1"}"#);
    assert!(e.contains("positional parameters"), "{e}");
}

#[test]
fn sql_on_a_hook_rules_cannot_bind_to() {
    let key = "backend.pgsql.hook.session.created.1";
    let e = err(
        key,
        r#"{"action": {"sql": ["select ${clientid}"]}, "pool": "pool1"}"#,
    );
    assert_eq!(
        e,
        "rules cannot bind to hook point `session.created`; they may bind to: client.connected, \
         client.disconnected, session.subscribed, session.unsubscribed, session.restore, \
         message.publish, message.acked, message.delivered"
    );
    let e = err(
        "backend.pgsql.hook.message.dropped.2",
        r#"{"action": {"function": "on_message_acked"}, "pool": "pool1"}"#,
    );
    assert!(
        e.starts_with("rules cannot bind to hook point `message.dropped`"),
        "{e}"
    );
}

#[test]
fn bad_rule_keys() {
    let e = err(
        "backend.pgsql.hook.message.published.1",
        r#"{"action": {"function": "on_message_publish"}, "pool": "pool1"}"#,
    );
    assert!(e.starts_with("unknown hook point `message.published`; rules may bind to: client.connected"));
    let v = r#"{"action": {"function": "on_message_publish"}, "pool": "pool1"}"#;
    for key in [
        "backend.pgsql.hook.message.publish",
        "backend.pgsql.hook.message.publish.x",
        "backend.pgsql.hook.message.publish.-1",
        "backend.pgsql.hook.1",
        "backend.pgsql.hook.message.publish.",
    ] {
        let e = err(key, v);
        assert!(
            e.starts_with("expected a rule key `backend.pgsql.hook.<hookpoint>.<N>`"),
            "{key}: {e}"
        );
    }
    let e = err("backend.pgsql.hook.message.publish.4294967296", v);
    assert!(e.contains("too large"), "{e}");
    assert_eq!(ok("backend.pgsql.hook.message.publish.4294967295", v).n, u32::MAX);
    assert_eq!(ok("backend.pgsql.hook.message.publish.0", v).n, 0);
}

#[test]
fn topic_filters() {
    for good in ["#", "+", "a/b", "a/+/c", "a/#", "+/+/#", "/", "a//b", "$SYS/#"] {
        assert_eq!(validate_topic_filter(good), Ok(()), "{good}");
    }
    for bad in ["", "a#", "a/#/b", "#/a", "a/b#", "a+/b", "a/+b", "++", "a\0b"] {
        assert!(validate_topic_filter(bad).is_err(), "{bad}");
    }
    let v = |t: &str| {
        format!(r#"{{"topic": "{t}", "action": {{"function": "on_message_publish"}}, "pool": "pool1"}}"#)
    };
    let e = err(PUB, &v("a/#/b"));
    assert!(
        e.starts_with("`topic`: invalid topic filter `a/#/b`: `#` must be a whole level"),
        "{e}"
    );
    let e = err(PUB, &v("a+"));
    assert!(e.contains("`+` must be a whole level"), "{e}");
    let e = err(PUB, &v(""));
    assert_eq!(e, "`topic`: the topic filter is empty");
    let e = err(
        PUB,
        r##"{"topic": ["#"], "action": {"function": "on_message_publish"}, "pool": "pool1"}"##,
    );
    assert!(e.starts_with("`topic` must be a string"), "{e}");
}

#[test]
fn session_restore_takes_the_function_only() {
    let key = "backend.pgsql.hook.session.restore.1";
    let e = err(
        key,
        r#"{"action": {"sql": ["select ${clientid}"]}, "pool": "pool1"}"#,
    );
    assert!(e.contains("takes the function on_session_restore only"), "{e}");
    let e = err(
        key,
        r#"{"action": {"function": "on_message_fetch"}, "pool": "pool1"}"#,
    );
    assert!(e.contains("cannot be bound to `session.restore`"), "{e}");
}
