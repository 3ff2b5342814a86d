//! Tests of `config`.

use super::*;
use crate::rules::{Action, Function, OfflineOpts};
use crate::sql_template::Placeholder;
use hooks_spec::HookPoint;

const FILE: &str = "etc/backend_pgsql.conf";

fn parse(text: &str) -> Result<PgsqlConfig, ConfError> {
    let conf = ConfFile::parse(Path::new(FILE), text)?;
    PgsqlConfig::from_conf(&conf)
}

fn ok(text: &str) -> PgsqlConfig {
    match parse(text) {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// The error for `text`, checking it is on `line` and names `key`.
fn err(text: &str, line: usize, key: &str) -> String {
    match parse(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => {
            assert_eq!(e.file, PathBuf::from(FILE));
            assert_eq!((e.line, e.key.as_str()), (line, key), "{e}");
            e.message
        }
    }
}

const POOL1: &str = "backend.pgsql.pool1.server = 127.0.0.1:5432\n";

const EMQX_DEFAULTS: &str = r##"## EMQX's defaults
backend.pgsql.pool1.server = 127.0.0.1:5432
backend.pgsql.pool1.pool_size = 8
backend.pgsql.pool1.username = root
backend.pgsql.pool1.password = public
backend.pgsql.pool1.database = mqtt
backend.pgsql.pool1.ssl = false

backend.pgsql.hook.client.connected.1    = {"action": {"function": "on_client_connected"}, "pool": "pool1"}
backend.pgsql.hook.client.connected.2    = {"action": {"function": "on_subscribe_lookup"}, "pool": "pool1"}
backend.pgsql.hook.client.disconnected.1 = {"action": {"function": "on_client_disconnected"}, "pool": "pool1"}
backend.pgsql.hook.session.subscribed.1  = {"topic": "#", "action": {"function": "on_message_fetch"}, "pool": "pool1"}
backend.pgsql.hook.session.subscribed.2  = {"topic": "#", "action": {"function": "on_retain_lookup"}, "pool": "pool1"}
backend.pgsql.hook.session.unsubscribed.1= {"topic": "#", "action": {"sql": ["delete from mqtt_acked where clientid = ${clientid} and topic = ${topic}"]}, "pool": "pool1"}
backend.pgsql.hook.message.publish.1     = {"topic": "#", "action": {"function": "on_message_publish"}, "pool": "pool1"}
backend.pgsql.hook.message.publish.2     = {"topic": "#", "action": {"function": "on_message_retain"}, "pool": "pool1"}
backend.pgsql.hook.message.publish.3     = {"topic": "#", "action": {"function": "on_retain_delete"}, "pool": "pool1"}
backend.pgsql.hook.message.acked.1       = {"topic": "#", "action": {"function": "on_message_acked"}, "pool": "pool1"}
"##;

#[test]
fn emqx_default_rule_set() {
    let c = ok(EMQX_DEFAULTS);
    assert_eq!(c.pools.len(), 1);
    let p = &c.pools["pool1"];
    assert_eq!(
        (p.name.as_str(), p.host.as_str(), p.port, p.pool_size),
        ("pool1", "127.0.0.1", 5432, 8)
    );
    assert_eq!(
        (p.username.as_str(), p.password.as_deref(), p.database.as_str()),
        ("root", Some("public"), "mqtt")
    );
    assert_eq!(p.ssl, SslConfig::default());
    assert_eq!(p.line, 2);
    assert!(!format!("{p:?}").contains("public"));

    let f = |hook, n, line, key: &str, topic: Option<&str>, function| Rule {
        hook,
        n,
        line,
        key: format!("backend.pgsql.hook.{key}"),
        topic: topic.map(str::to_string),
        action: Action::Function(function),
        pool: "pool1".to_string(),
        offline_opts: OfflineOpts::default(),
    };
    use Function::*;
    use HookPoint::*;
    let mut unsub = f(
        SessionUnsubscribed,
        1,
        14,
        "session.unsubscribed.1",
        Some("#"),
        OnMessageFetch,
    );
    let Ok(t) = crate::sql_template::parse_template(
        "delete from mqtt_acked where clientid = ${clientid} and topic = ${topic}",
    ) else {
        panic!()
    };
    assert_eq!(t.params, [Placeholder::ClientId, Placeholder::Topic]);
    unsub.action = Action::Sql(vec![t]);
    let want = vec![
        f(
            ClientConnected,
            1,
            9,
            "client.connected.1",
            None,
            OnClientConnected,
        ),
        f(
            ClientConnected,
            2,
            10,
            "client.connected.2",
            None,
            OnSubscribeLookup,
        ),
        f(
            ClientDisconnected,
            1,
            11,
            "client.disconnected.1",
            None,
            OnClientDisconnected,
        ),
        f(
            SessionSubscribed,
            1,
            12,
            "session.subscribed.1",
            Some("#"),
            OnMessageFetch,
        ),
        f(
            SessionSubscribed,
            2,
            13,
            "session.subscribed.2",
            Some("#"),
            OnRetainLookup,
        ),
        unsub,
        f(
            MessagePublish,
            1,
            15,
            "message.publish.1",
            Some("#"),
            OnMessagePublish,
        ),
        f(
            MessagePublish,
            2,
            16,
            "message.publish.2",
            Some("#"),
            OnMessageRetain,
        ),
        f(
            MessagePublish,
            3,
            17,
            "message.publish.3",
            Some("#"),
            OnRetainDelete,
        ),
        f(MessageAcked, 1, 18, "message.acked.1", Some("#"), OnMessageAcked),
    ];
    assert_eq!(c.rules, want);

    // Globals take their defaults.
    assert_eq!(c.max_returned_count, 5000);
    assert_eq!(c.time_range, None);
    assert_eq!(c.msg_retention, Some(Duration::from_secs(7 * 86400)));
    assert_eq!(c.batch_size, 1000);
    assert_eq!(c.store_timeout, Duration::from_secs(5));
    assert_eq!(
        (c.backlog_limit, c.backlog_interval),
        (None, Duration::from_secs(30))
    );
    assert_eq!(c.msg_partition, None, "one plain table unless asked");
    assert_eq!(c.msg_delete_acked, None);
    assert_eq!(c.position_flush_interval, Duration::from_millis(10));
    assert_eq!(c.file, PathBuf::from(FILE));
}

#[test]
fn rules_are_sorted_by_hook_then_number() {
    let c = ok(&format!(
        "{POOL1}\
         backend.pgsql.hook.message.acked.1 = {{\"action\": {{\"function\": \"on_message_acked\"}}, \"pool\": \"pool1\"}}\n\
         backend.pgsql.hook.message.publish.10 = {{\"action\": {{\"function\": \"on_message_retain\"}}, \"pool\": \"pool1\"}}\n\
         backend.pgsql.hook.message.publish.9 = {{\"action\": {{\"function\": \"on_message_publish\"}}, \"pool\": \"pool1\"}}\n\
         backend.pgsql.hook.client.connected.2 = {{\"action\": {{\"function\": \"on_client_connected\"}}, \"pool\": \"pool1\"}}\n"
    ));
    let order: Vec<(HookPoint, u32)> = c.rules.iter().map(|r| (r.hook, r.n)).collect();
    assert_eq!(
        order,
        [
            (HookPoint::ClientConnected, 2),
            (HookPoint::MessagePublish, 9),
            (HookPoint::MessagePublish, 10),
            (HookPoint::MessageAcked, 1)
        ]
    );
}

#[test]
fn empty_file_has_defaults_and_nothing_else() {
    let c = ok("");
    assert!(c.pools.is_empty());
    assert!(c.rules.is_empty());
    assert_eq!(c.max_returned_count, DEFAULT_MAX_RETURNED_COUNT);
}

#[test]
fn pool_defaults_and_settings() {
    let c = ok("backend.pgsql.p_2.server = db.example.com\n");
    let p = &c.pools["p_2"];
    assert_eq!((p.host.as_str(), p.port), ("db.example.com", 5432));
    assert_eq!(
        (p.pool_size, p.username.as_str(), p.database.as_str()),
        (8, "postgres", "mqtt")
    );
    assert_eq!(p.password, None);
    assert_eq!(p.ssl, SslConfig::default());
    assert_eq!(p.line, 1);

    let c = ok("## pools\n\
         backend.pgsql.a.pool_size = 3\n\
         backend.pgsql.a.server = [::1]:6543\n\
         backend.pgsql.a.username = mqtt_user\n\
         backend.pgsql.a.password =\n\
         backend.pgsql.a.database = broker\n\
         backend.pgsql.a.ssl = on\n\
         backend.pgsql.a.ssl.cacertfile = certs/ca.pem\n\
         backend.pgsql.a.ssl.certfile = /abs/client.pem\n\
         backend.pgsql.a.ssl.keyfile = certs/client.key\n\
         backend.pgsql.a.ssl.verify = false\n\
         backend.pgsql.b.server = /var/run/postgresql\n\
         backend.pgsql.b.password = s3cret\n");
    let a = &c.pools["a"];
    assert_eq!(
        (a.host.as_str(), a.port, a.pool_size, a.line),
        ("::1", 6543, 3, 3)
    );
    assert_eq!(
        (a.username.as_str(), a.database.as_str()),
        ("mqtt_user", "broker")
    );
    assert_eq!(a.password, None);
    assert_eq!(
        a.ssl,
        SslConfig {
            enabled: true,
            cacertfile: Some(PathBuf::from("etc/certs/ca.pem")),
            certfile: Some(PathBuf::from("/abs/client.pem")),
            keyfile: Some(PathBuf::from("etc/certs/client.key")),
            verify: false,
        }
    );
    let b = &c.pools["b"];
    assert_eq!((b.host.as_str(), b.port), ("/var/run/postgresql", 5432));
    assert_eq!(b.password.as_deref(), Some("s3cret"));
    assert_eq!(c.pools.keys().collect::<Vec<_>>(), ["a", "b"]);
}

#[test]
fn bad_servers() {
    let k = "backend.pgsql.pool1.server";
    for v in [
        "",
        ":5432",
        "host:",
        "host:0",
        "host:65536",
        "host:x",
        "::1",
        "[::1",
        "[::1]5432",
        "a b:1",
    ] {
        let e = err(&format!("\n{k} = {v}\n"), 2, k);
        assert!(
            e.starts_with("expected `host:port` (such as `127.0.0.1:5432`"),
            "{v}: {e}"
        );
    }
    let e = err(&format!("{k} = ::1\n"), 1, k);
    assert!(e.contains("IPv6 address in brackets"), "{e}");
    let e = err(&format!("{k} = h:99999\n"), 1, k);
    assert!(
        e.contains("the port must be a number from 1 to 65535, got `99999`"),
        "{e}"
    );
}

#[test]
fn bad_pool_values() {
    let cases = [
        ("pool_size", "0", "expected a number greater than 0"),
        ("pool_size", "many", "expected an integer between 0 and"),
        ("username", "", "expected a user name, got an empty value"),
        ("database", "", "expected a database name, got an empty value"),
        ("ssl", "yes", "expected `true`, `false`, `on` or `off`"),
        ("ssl.verify", "maybe", "expected `true`, `false`, `on` or `off`"),
        (
            "ssl.cacertfile",
            "",
            "expected a file path (PEM), got an empty value",
        ),
    ];
    for (setting, value, want) in cases {
        let key = format!("backend.pgsql.pool1.{setting}");
        let e = err(&format!("{POOL1}{key} = {value}\n"), 2, &key);
        assert!(e.starts_with(want), "{setting}: {e}");
    }
}

#[test]
fn client_certificate_needs_both_files() {
    let key = "backend.pgsql.pool1.ssl.certfile";
    let e = err(&format!("{POOL1}{key} = c.pem\n"), 2, key);
    assert_eq!(
        e,
        "a client certificate needs both files: set `backend.pgsql.pool1.ssl.keyfile` as well"
    );
    let key = "backend.pgsql.pool1.ssl.keyfile";
    let e = err(&format!("{POOL1}\n{key} = c.key\n"), 3, key);
    assert!(
        e.contains("set `backend.pgsql.pool1.ssl.certfile` as well"),
        "{e}"
    );
}

#[test]
fn pool_without_server() {
    let e = err(
        "backend.pgsql.pool2.username = u\nbackend.pgsql.pool2.pool_size = 2\n",
        1,
        "backend.pgsql.pool2.username",
    );
    assert_eq!(
        e,
        "pool `pool2` has no server: a pool is defined by its `backend.pgsql.pool2.server = host:port` key"
    );
}

#[test]
fn bad_pool_names() {
    let k = "backend.pgsql.pool-1.server";
    let e = err(&format!("{k} = h\n"), 1, k);
    assert!(e.starts_with("invalid pool name `pool-1`"), "{e}");
    for name in [
        "max_returned_count",
        "time_range",
        "msg_retention",
        "batch_size",
        "store_timeout",
    ] {
        let k = format!("backend.pgsql.{name}.server");
        let e = err(&format!("{k} = h\n"), 1, &k);
        assert!(e.starts_with(&format!("`{name}` cannot be a pool name")), "{e}");
    }
}

#[test]
fn unknown_keys() {
    for key in [
        "backend.mysql.pool1.server",
        "node.name",
        "backend.pgsql.pool1",
        "backend.pgsql.hook",
        "backend.pgsql.max_returned",
    ] {
        let e = err(&format!("{POOL1}{key} = x\n"), 2, key);
        assert!(
            e.starts_with("unknown key; expected `backend.pgsql.<pool>.<setting>`"),
            "{key}: {e}"
        );
    }
    let key = "backend.pgsql.pool1.timeout";
    let e = err(&format!("{POOL1}{key} = 5s\n"), 2, key);
    assert!(
        e.starts_with("unknown pool setting `timeout`; the settings of a pool are: server, "),
        "{e}"
    );
}

#[test]
fn globals() {
    let c = ok("backend.pgsql.max_returned_count = 10\n\
         backend.pgsql.time_range = 2h\n\
         backend.pgsql.msg_retention = infinity\n\
         backend.pgsql.batch_size = 1\n\
         backend.pgsql.store_timeout = 500ms\n\
         backend.pgsql.backlog_limit = 10000\n\
         backend.pgsql.backlog_interval = 5s\n");
    assert_eq!(c.backlog_limit, Some(10_000));
    assert_eq!(c.backlog_interval, Duration::from_secs(5));
    assert_eq!(ok("backend.pgsql.backlog_limit = off\n").backlog_limit, None);
    assert_eq!(
        ok("backend.pgsql.msg_partition = 1d\n").msg_partition,
        Some(Duration::from_secs(86400))
    );
    assert_eq!(ok("backend.pgsql.msg_partition = off\n").msg_partition, None);
    let fetch = r##"backend.pgsql.hook.session.subscribed.1 = {"topic": "#", "action": {"function": "on_message_fetch"}, "pool": "pool1"}"##;
    let on = ok(&format!("{POOL1}{fetch}\nbackend.pgsql.msg_delete_acked = on\n"));
    assert_eq!(on.msg_delete_acked, Some(3), "on, from line 3");
    assert_eq!(
        ok("backend.pgsql.msg_delete_acked = off\n").msg_delete_acked,
        None
    );
    assert_eq!(c.max_returned_count, 10);
    assert_eq!(c.time_range, Some(Duration::from_secs(7200)));
    assert_eq!(c.msg_retention, None);
    assert_eq!(c.batch_size, 1);
    assert_eq!(c.store_timeout, Duration::from_millis(500));
    assert_eq!(
        ok("backend.pgsql.position_flush_interval = 100ms\n").position_flush_interval,
        Duration::from_millis(100)
    );
    assert_eq!(
        ok("backend.pgsql.msg_retention = 30d\n").msg_retention,
        Some(Duration::from_secs(30 * 86400))
    );
}

#[test]
fn bad_globals() {
    let cases = [
        ("max_returned_count", "0", "expected a number greater than 0"),
        ("max_returned_count", "-1", "expected an integer between 0 and"),
        ("batch_size", "0", "expected a number greater than 0"),
        ("time_range", "2", "expected a duration such as"),
        ("time_range", "0s", "expected a duration greater than 0"),
        ("store_timeout", "0ms", "expected a duration greater than 0"),
        ("store_timeout", "soon", "expected a duration such as"),
        (
            "position_flush_interval",
            "0s",
            "expected a duration greater than 0",
        ),
        ("backlog_limit", "0", "expected a number greater than 0 or `off`"),
        (
            "backlog_limit",
            "many",
            "expected a number greater than 0 or `off`",
        ),
        ("backlog_interval", "0s", "expected a duration greater than 0"),
        ("msg_partition", "0s", "expected `off` or a partition width"),
        ("msg_partition", "1500ms", "expected `off` or a partition width"),
        ("msg_partition", "daily", "expected `off` or a partition width"),
        (
            "msg_delete_acked",
            "yes",
            "expected `true`, `false`, `on` or `off`",
        ),
        (
            "msg_delete_acked",
            "on",
            "`msg_delete_acked = on` needs an `on_message_fetch` rule",
        ),
        ("msg_retention", "forever", "expected `infinity` or a duration"),
        (
            "msg_retention",
            "0d",
            "expected `infinity` or a duration greater than 0",
        ),
    ];
    for (name, value, want) in cases {
        let key = format!("backend.pgsql.{name}");
        let e = err(&format!("## c\n{key} = {value}\n"), 2, &key);
        assert!(e.starts_with(want), "{name} = {value}: {e}");
    }
}

#[test]
fn rule_errors_name_their_line() {
    let key = "backend.pgsql.hook.message.publish.1";
    let e = err(
        &format!("{POOL1}\n{key} = {{\"action\": {{\"function\": \"on_message_publish\"}}, \"pool\": \"pool9\"}}\n"),
        3,
        key,
    );
    assert_eq!(e, "unknown pool `pool9`; the configured pools are: pool1");
    // A pool defined after the rule is known to it.
    let c = ok(&format!(
        "{key} = {{\"action\": {{\"function\": \"on_message_publish\"}}, \"pool\": \"pool1\"}}\n{POOL1}"
    ));
    assert_eq!(c.rules.len(), 1);
}

#[test]
fn same_rule_number_twice() {
    let v = r#"{"action": {"function": "on_message_publish"}, "pool": "pool1"}"#;
    let e = err(
        &format!("{POOL1}backend.pgsql.hook.message.publish.1 = {v}\nbackend.pgsql.hook.message.publish.01 = {v}\n"),
        3,
        "backend.pgsql.hook.message.publish.01",
    );
    assert_eq!(
        e,
        "rule 1 of message.publish is already set by `backend.pgsql.hook.message.publish.1` on line 2"
    );
}

#[test]
fn load_reports_unreadable_files() {
    let e = match PgsqlConfig::load(Path::new("/nonexistent/backend_pgsql.conf")) {
        Ok(c) => panic!("{c:?}"),
        Err(e) => e,
    };
    assert_eq!(e.line, 0);
    assert!(e.message.starts_with("cannot read:"), "{}", e.message);
}

#[test]
fn shipped_config_file_loads() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../etc/backend_pgsql.conf"));
    let c = match PgsqlConfig::load(path) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.pools.keys().collect::<Vec<_>>(), ["pool1"]);
    let p = &c.pools["pool1"];
    assert_eq!((p.host.as_str(), p.port, p.pool_size), ("127.0.0.1", 5432, 8));
    assert_eq!(
        (p.username.as_str(), p.password.as_deref(), p.database.as_str()),
        ("postgres", None, "mqtt")
    );
    assert_eq!(p.ssl, SslConfig::default());
    assert_eq!(c.max_returned_count, 5000);
    assert_eq!(c.time_range, None);
    assert_eq!(c.msg_retention, Some(Duration::from_secs(7 * 86400)));
    assert_eq!(c.batch_size, 1000);
    assert_eq!(c.store_timeout, Duration::from_secs(5));
    // EMQX's default rule set, in Postbox's order.
    let rules: Vec<(HookPoint, u32, Option<Function>)> = c
        .rules
        .iter()
        .map(|r| {
            let f = match &r.action {
                Action::Function(f) => Some(*f),
                Action::Sql(_) => None,
            };
            (r.hook, r.n, f)
        })
        .collect();
    use Function::*;
    use HookPoint::*;
    assert_eq!(
        rules,
        [
            (ClientConnected, 1, Some(OnClientConnected)),
            (ClientConnected, 2, Some(OnSubscribeLookup)),
            (ClientDisconnected, 1, Some(OnClientDisconnected)),
            (SessionRestore, 1, Some(OnSessionRestore)),
            (SessionSubscribed, 1, Some(OnMessageFetch)),
            (SessionSubscribed, 2, Some(OnRetainLookup)),
            (SessionUnsubscribed, 1, None),
            (MessagePublish, 1, Some(OnMessagePublish)),
            (MessagePublish, 2, Some(OnMessageRetain)),
            (MessagePublish, 3, Some(OnRetainDelete)),
            (MessageAcked, 1, Some(OnMessageAcked)),
        ]
    );
    assert!(c.rules.iter().all(|r| r.pool == "pool1"));
}

#[test]
fn shipped_optional_rules_load_when_uncommented() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../etc/backend_pgsql.conf");
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => panic!("{path}: {e}"),
    };
    let optional: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# backend.pgsql.hook."))
        .collect();
    assert_eq!(optional.len(), 4, "{optional:?}");
    let mut functions = Vec::new();
    for rule in optional {
        let line = format!("backend.pgsql.hook.{rule}");
        let key = line.split('=').next().unwrap_or_default().trim().to_string();
        // The uncommented rule replaces an active rule with the same key.
        let mut edited: Vec<String> = text
            .lines()
            .filter(|l| l.split('=').next().map(str::trim) != Some(key.as_str()))
            .map(str::to_string)
            .collect();
        edited.push(line.clone());
        let c = ok(&edited.join("\n"));
        let Some(r) = c.rules.iter().find(|r| r.key == key) else {
            panic!("{key} not loaded")
        };
        let Action::Function(f) = r.action else {
            panic!("{r:?}")
        };
        functions.push((r.hook, f, r.offline_opts));
    }
    let fetch_opts = OfflineOpts {
        max_returned_count: Some(500),
        time_range: Some(Duration::from_secs(7200)),
    };
    assert_eq!(
        functions,
        [
            (HookPoint::SessionSubscribed, Function::OnMessageFetch, fetch_opts),
            (
                HookPoint::MessagePublish,
                Function::OnMessageStore,
                OfflineOpts::default()
            ),
            (
                HookPoint::SessionSubscribed,
                Function::OnSubscribeStore,
                OfflineOpts::default()
            ),
            (
                HookPoint::SessionUnsubscribed,
                Function::OnSubscribeStore,
                OfflineOpts::default()
            ),
        ]
    );
}

#[test]
fn retention_rules_by_topic_in_ascending_n() {
    let c = ok("backend.pgsql.msg_retention = 1d\n\
                backend.pgsql.msg_retention.2 = telemetry/+/raw 1h\n\
                backend.pgsql.msg_retention.1 = alerts/# infinity\n");
    assert_eq!(c.msg_retention, Some(Duration::from_secs(86400)));
    let rules: Vec<(u32, &str, Option<Duration>, usize)> = c
        .topic_retention
        .iter()
        .map(|r| (r.n, r.filter.as_str(), r.retention, r.line))
        .collect();
    assert_eq!(
        rules,
        [
            (1, "alerts/#", None, 3),
            (2, "telemetry/+/raw", Some(Duration::from_secs(3600)), 2)
        ]
    );
}

#[test]
fn bad_retention_rules_name_their_line() {
    let k = "backend.pgsql.msg_retention.1";
    for (value, says) in [
        ("alerts/#", "expected `<topic filter> <duration>`"),
        ("alerts/# 1d extra", "expected `<topic filter> <duration>`"),
        ("alerts/#/x 1d", "`#` must be a whole level"),
        ("alerts/# soon", "`soon` is not a duration"),
        ("alerts/# 0s", "the duration must be greater than 0"),
    ] {
        let e = err(&format!("{k} = {value}\n"), 1, k);
        assert!(e.contains(says), "{value}: {e}");
    }
    let e = err(
        "backend.pgsql.msg_retention.1 = a 1h\nbackend.pgsql.msg_retention.01 = b 2h\n",
        2,
        "backend.pgsql.msg_retention.01",
    );
    assert_eq!(e, "retention rule 1 is already set on line 1");
    let k = "backend.pgsql.msg_retention.first";
    let e = err(&format!("{k} = a 1h\n"), 1, k);
    assert!(e.contains("with N a number (got `first`)"), "{e}");
}

#[test]
fn arrival_property_names_a_user_property() {
    assert_eq!(ok("").arrival_property, None);
    let c = ok("backend.pgsql.arrival_property = stored-at\n");
    assert_eq!(c.arrival_property.as_deref(), Some("stored-at"));
    let k = "backend.pgsql.arrival_property";
    let e = err(&format!("{k} =\n"), 1, k);
    assert!(
        e.starts_with("expected the name of an MQTT 5 user property"),
        "{e}"
    );
}
