//! Tests of `config`.

use super::*;

const FILE: &str = "/opt/postbox/etc/postbox.conf";

fn parse(text: &str) -> Result<Config, ConfError> {
    Config::from_conf(&ConfFile::parse(Path::new(FILE), text)?)
}

fn ok(text: &str) -> Config {
    match parse(text) {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// Parses `key = value` placed on line 3 and returns the error.
fn bad(key: &str, value: &str) -> ConfError {
    let text = format!("## comment\n\n{key} = {value}\n");
    match parse(&text) {
        Ok(c) => panic!("`{key} = {value}` was accepted: {c:?}"),
        Err(e) => {
            assert_eq!(e.file, PathBuf::from(FILE), "{e}");
            assert_eq!(e.line, 3, "{e}");
            assert_eq!(e.key, key, "{e}");
            e
        }
    }
}

fn defaults() -> Config {
    Config {
        file: PathBuf::from(FILE),
        node_name: "postbox@127.0.0.1".into(),
        listeners: vec![Listener::tcp("external", "0.0.0.0:1883".parse().unwrap())],
        mqtt: MqttLimits::default(),
        log_level: "info".into(),
        log_format: LogFormat::Text,
        plugins: vec![],
        plugins_etc_dir: PathBuf::from("/opt/postbox/etc"),
        hooks_timeout: Duration::from_secs(5),
        shutdown_timeout: Duration::from_secs(10),
        sys_interval: Some(Duration::from_secs(60)),
        cluster: None,
        management: None,
    }
}

#[test]
fn empty_file_gives_defaults() {
    let c = ok("");
    assert_eq!(c, defaults());
    let m = &c.mqtt;
    assert_eq!(m.max_packet_size, 1_048_576);
    assert_eq!(m.max_clients, 100_000);
    assert_eq!(m.max_inflight, 32);
    assert_eq!(m.max_queue_len, 1000);
    assert_eq!(m.max_awaiting_rel, 100);
    assert!(m.mqueue_store_qos0);
    assert_eq!(m.session_expiry_interval, Some(Duration::from_secs(7200)));
    assert_eq!(m.connect_timeout, Duration::from_secs(15));
    assert_eq!(m.server_keepalive, None);
    assert_eq!(m.max_topic_alias, 65535);
    assert!(m.allow_anonymous);
    assert!(m.retain_available);
    assert_eq!(m.max_subscriptions, 0);
    assert_eq!(m.max_topic_levels, 0);
    assert_eq!(m.publish_limit, None);
    assert_eq!(m.server_reference, None);
}

#[test]
fn server_reference() {
    let c = ok("mqtt.server_reference = other.example:1883\n");
    assert_eq!(c.mqtt.server_reference.as_deref(), Some("other.example:1883"));
    bad("mqtt.server_reference", "a b:1");
    bad("mqtt.server_reference", "");
}

#[test]
fn every_key() {
    let c = ok("node.name = pb1@10.0.0.1\n\
         listener.tcp.internal = 127.0.0.1:11883\n\
         listener.tcp.v6 = [::1]:1884\n\
         mqtt.max_packet_size = 64KB\n\
         mqtt.max_clients = 10\n\
         mqtt.max_inflight = 65535\n\
         mqtt.max_queue_len = 5\n\
         mqtt.max_awaiting_rel = 7\n\
         mqtt.receive_maximum_exceeded = backpressure\n\
         mqtt.mqueue_store_qos0 = false\n\
         mqtt.session_expiry_interval = 1h 30m\n\
         mqtt.connect_timeout = 500ms\n\
         mqtt.server_keepalive = 60\n\
         mqtt.max_topic_alias = 0\n\
         mqtt.allow_anonymous = false\n\
         mqtt.retain_available = off\n\
         mqtt.max_subscriptions = 20\n\
         mqtt.max_topic_levels = 8\n\
         log.level = DEBUG\n\
         log.format = json\n\
         plugins.load = backend_pgsql, other\n\
         plugins.etc_dir = plugins.d\n\
         hooks.timeout = 2s\n\
         shutdown.timeout = 0s\n\
         sys.interval = 250ms\n");
    assert_eq!(
        c,
        Config {
            file: PathBuf::from(FILE),
            node_name: "pb1@10.0.0.1".into(),
            listeners: vec![
                Listener::tcp("internal", "127.0.0.1:11883".parse().unwrap()),
                Listener::tcp("v6", "[::1]:1884".parse().unwrap()),
            ],
            mqtt: MqttLimits {
                max_packet_size: 65536,
                max_clients: 10,
                max_inflight: 65535,
                max_queue_len: 5,
                max_awaiting_rel: 7,
                receive_maximum_exceeded: ReceiveMaximumExceeded::Backpressure,
                mqueue_store_qos0: false,
                session_expiry_interval: Some(Duration::from_secs(5400)),
                connect_timeout: Duration::from_millis(500),
                server_keepalive: Some(60),
                max_topic_alias: 0,
                allow_anonymous: false,
                retain_available: false,
                max_subscriptions: 20,
                max_topic_levels: 8,
                publish_limit: None,
                server_reference: None,
            },
            log_level: "debug".into(),
            log_format: LogFormat::Json,
            plugins: vec!["backend_pgsql".into(), "other".into()],
            plugins_etc_dir: PathBuf::from("/opt/postbox/etc/plugins.d"),
            hooks_timeout: Duration::from_secs(2),
            shutdown_timeout: Duration::ZERO,
            sys_interval: Some(Duration::from_millis(250)),
            cluster: None,
            management: None,
        }
    );
}

#[test]
fn session_expiry_infinity_and_zero() {
    assert_eq!(
        ok("mqtt.session_expiry_interval = infinity")
            .mqtt
            .session_expiry_interval,
        None
    );
    assert_eq!(
        ok("mqtt.session_expiry_interval = 0s")
            .mqtt
            .session_expiry_interval,
        Some(Duration::ZERO)
    );
    assert_eq!(
        ok("mqtt.session_expiry_interval = 7d")
            .mqtt
            .session_expiry_interval,
        Some(Duration::from_secs(7 * 86400))
    );
}

#[test]
fn packet_size_bounds() {
    assert_eq!(ok("mqtt.max_packet_size = 64").mqtt.max_packet_size, 64);
    assert_eq!(
        ok("mqtt.max_packet_size = 268435455").mqtt.max_packet_size,
        268_435_455
    );
    assert_eq!(ok("mqtt.max_packet_size = 1mb").mqtt.max_packet_size, 1 << 20);
    for v in ["63", "0", "256MB", "268435456", "1GB", "lots", ""] {
        let e = bad("mqtt.max_packet_size", v);
        assert!(
            e.message.contains("between 64 bytes and 268435455 bytes"),
            "{v}: {e}"
        );
    }
}

#[test]
fn listeners() {
    let c = ok("listener.tcp.a = 0.0.0.0:1883\nlistener.tcp.b = 0.0.0.0:1884\n");
    assert_eq!(
        c.listeners.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(c.listeners[1].addr.port(), 1884);
    // The default listener is only used when none is configured.
    let c = ok("listener.tcp.only = 127.0.0.1:2000\n");
    assert_eq!(
        c.listeners,
        vec![Listener::tcp("only", "127.0.0.1:2000".parse().unwrap())]
    );
}

#[test]
fn bad_listener_address() {
    for v in ["0.0.0.0", "1883", "localhost:1883", "0.0.0.0:99999", ""] {
        let e = bad("listener.tcp.external", v);
        assert!(
            e.message.starts_with("expected a listen address `ip:port`"),
            "{v}: {e}"
        );
    }
}

#[test]
fn duplicate_listener_address() {
    let e = parse("listener.tcp.a = 0.0.0.0:1883\n\nlistener.tcp.b = 0.0.0.0:1883\n").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (3, "listener.tcp.b"));
    assert_eq!(
        e.message,
        "address 0.0.0.0:1883 is already used by `listener.tcp.a` on line 1"
    );
}

#[test]
fn malformed_listener_keys_are_unknown() {
    for key in [
        "listener.tcp",
        "listener.tcp.",
        "listener.ssl",
        "listener.ssl.",
        "listener.ssl.a.",
        "listener.ws",
        "listener.wss.",
        "listener.websocket.a",
        "listener.a",
    ] {
        let e = bad(key, "0.0.0.0:1883");
        assert_eq!(e.message, "unknown key");
    }
    let e = bad("listener.tcp.a.port", "1883");
    assert_eq!(
        e.message,
        "unknown key (a `listener.tcp` listener takes: max_conn_rate, rate_limit.conn_bytes_in)"
    );
    let e = bad("listener.tcp.a.certfile", "cert.pem");
    assert!(e.message.starts_with("unknown key"), "{e}");
    let e = parse("listener.ssl.a = 0.0.0.0:8883\nlistener.ssl.a.password = x\n").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (2, "listener.ssl.a.password"));
    assert!(
        e.message
            .starts_with("unknown key (a `listener.ssl` listener takes: max_conn_rate, rate_limit.conn_bytes_in, keyfile, certfile"),
        "{e}"
    );
}

#[test]
fn unknown_key() {
    let e = parse("node.name = a@b\n# x\nmqtt.max_packet = 1MB\n").unwrap_err();
    assert_eq!(
        e,
        ConfError {
            file: PathBuf::from(FILE),
            line: 3,
            key: "mqtt.max_packet".into(),
            message: "unknown key".into()
        }
    );
    assert_eq!(e.to_string(), format!("{FILE}:3: `mqtt.max_packet`: unknown key"));
}

#[test]
fn parse_errors_of_the_file_format_pass_through() {
    let e = parse("node.name = a@b\nnode.name = c@d\n").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (2, "node.name"));
    assert!(e.message.contains("duplicate key"));
    let e = parse("\n\nnonsense\n").unwrap_err();
    assert_eq!(e.line, 3);
}

#[test]
fn bad_node_name() {
    for v in ["", "a b@c"] {
        let e = bad("node.name", v);
        assert!(e.message.starts_with("expected a node name"), "{e}");
    }
}

#[test]
fn bad_positive_integers() {
    for key in ["mqtt.max_clients", "mqtt.max_queue_len", "mqtt.max_awaiting_rel"] {
        for v in ["0", "-1", "x", "1.5", ""] {
            let e = bad(key, v);
            assert!(
                e.message.starts_with("expected an integer greater than 0, got"),
                "{key} {v}: {e}"
            );
        }
    }
    for key in ["mqtt.max_inflight", "mqtt.server_keepalive"] {
        for v in ["0", "65536", "x", ""] {
            let e = bad(key, v);
            assert!(
                e.message
                    .starts_with("expected an integer between 1 and 65535, got"),
                "{key} {v}: {e}"
            );
        }
    }
    let e = bad("mqtt.server_keepalive", "0");
    assert_eq!(e.message, "expected an integer between 1 and 65535, got `0`");
}

#[test]
fn receive_maximum_exceeded() {
    assert_eq!(
        ok("").mqtt.receive_maximum_exceeded,
        ReceiveMaximumExceeded::Disconnect
    );
    assert_eq!(
        ok("mqtt.receive_maximum_exceeded = backpressure\n")
            .mqtt
            .receive_maximum_exceeded,
        ReceiveMaximumExceeded::Backpressure
    );
    for v in ["drop", "", "Disconnect"] {
        let e = bad("mqtt.receive_maximum_exceeded", v);
        assert!(
            e.message
                .starts_with("expected `disconnect` or `backpressure`, got"),
            "{v}: {e}"
        );
    }
}

#[test]
fn bad_unsigned_integers() {
    let e = bad("mqtt.max_topic_alias", "65536");
    assert_eq!(e.message, "expected an integer between 0 and 65535, got `65536`");
    for key in ["mqtt.max_subscriptions", "mqtt.max_topic_levels"] {
        let e = bad(key, "-1");
        assert!(e.message.starts_with("expected an integer between 0 and"), "{e}");
    }
}

#[test]
fn bad_booleans() {
    for key in [
        "mqtt.allow_anonymous",
        "mqtt.retain_available",
        "mqtt.mqueue_store_qos0",
    ] {
        let e = bad(key, "yes");
        assert_eq!(e.message, "expected `true`, `false`, `on` or `off`, got `yes`");
    }
}

#[test]
fn bad_durations() {
    for key in [
        "mqtt.connect_timeout",
        "hooks.timeout",
        "shutdown.timeout",
        "mqtt.session_expiry_interval",
    ] {
        let e = bad(key, "15 parsecs");
        assert!(e.message.contains("duration"), "{e}");
        assert!(e.message.contains("`15 parsecs`"), "{e}");
    }
    for key in ["mqtt.connect_timeout", "hooks.timeout"] {
        let e = bad(key, "0s");
        assert!(e.message.starts_with("expected a duration greater than 0"), "{e}");
    }
    assert!(bad("mqtt.connect_timeout", "infinity")
        .message
        .contains("`infinity`"));
}

#[test]
fn log_levels() {
    for l in LOG_LEVELS {
        assert_eq!(ok(&format!("log.level = {l}")).log_level, l);
    }
    let e = bad("log.level", "verbose");
    assert_eq!(
        e.message,
        "expected one of `error`, `warn`, `info`, `debug`, `trace`, got `verbose`"
    );
}

#[test]
fn log_formats() {
    assert_eq!(ok("log.format = text").log_format, LogFormat::Text);
    assert_eq!(ok("log.format = JSON").log_format, LogFormat::Json);
    let e = bad("log.format", "syslog");
    assert_eq!(e.message, "expected `text` or `json`, got `syslog`");
}

#[test]
fn plugins_list() {
    assert!(ok("plugins.load =").plugins.is_empty());
    assert_eq!(ok("plugins.load = a,b , c").plugins, ["a", "b", "c"]);
    let e = bad("plugins.load", "a, b, a");
    assert_eq!(e.message, "plugin `a` is listed twice");
}

#[test]
fn plugins_etc_dir() {
    assert_eq!(
        ok("plugins.etc_dir = /etc/pb").plugins_etc_dir,
        PathBuf::from("/etc/pb")
    );
    assert_eq!(
        ok("plugins.etc_dir = .").plugins_etc_dir,
        PathBuf::from("/opt/postbox/etc")
    );
    assert_eq!(
        ok("plugins.etc_dir = ./p").plugins_etc_dir,
        PathBuf::from("/opt/postbox/etc/p")
    );
    assert_eq!(
        ok("plugins.etc_dir = ../plugins").plugins_etc_dir,
        PathBuf::from("/opt/postbox/etc/../plugins")
    );
    let e = bad("plugins.etc_dir", "");
    assert!(e.message.starts_with("expected a directory"), "{e}");
    // A config file given without a directory: relative to `.`.
    let c = Config::from_conf(&ConfFile::parse(Path::new("postbox.conf"), "").unwrap()).unwrap();
    assert_eq!(c.plugins_etc_dir, PathBuf::from("."));
    let c = Config::from_conf(&ConfFile::parse(Path::new("postbox.conf"), "plugins.etc_dir = p").unwrap())
        .unwrap();
    assert_eq!(c.plugins_etc_dir, PathBuf::from("./p"));
}

#[test]
fn load_missing_file() {
    let e = Config::load(Path::new("/nonexistent/postbox.conf")).unwrap_err();
    assert_eq!(e.line, 0);
    assert!(e.message.starts_with("cannot read: "), "{e}");
}

const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../etc/postbox.conf");

#[test]
fn shipped_config_loads_and_matches_the_defaults() {
    let c = Config::load(Path::new(SHIPPED)).unwrap_or_else(|e| panic!("{e}"));
    let dir = Path::new(SHIPPED).parent().unwrap();
    assert_eq!(
        c,
        Config {
            file: PathBuf::from(SHIPPED),
            plugins_etc_dir: dir.to_path_buf(),
            // What differs from the defaults: the backend and the password file
            // are enabled, anonymous access is off, and the HTTP listener is
            // on for this host only.
            plugins: vec!["backend_pgsql".to_string(), "auth_file".to_string()],
            management: Some(ManagementConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
                app_id: "admin".to_string(),
                app_secret: "public".to_string(),
                max_row_limit: 10_000,
            }),
            mqtt: MqttLimits {
                allow_anonymous: false,
                ..MqttLimits::default()
            },
            ..defaults()
        }
    );
}

#[test]
fn shipped_config_documents_every_key() {
    let text = std::fs::read_to_string(SHIPPED).unwrap();
    let keys = [
        "node.name",
        "listener.tcp.external",
        "mqtt.max_packet_size",
        "mqtt.max_clients",
        "mqtt.max_inflight",
        "mqtt.max_queue_len",
        "mqtt.max_awaiting_rel",
        "mqtt.receive_maximum_exceeded",
        "mqtt.mqueue_store_qos0",
        "mqtt.session_expiry_interval",
        "mqtt.connect_timeout",
        "mqtt.server_keepalive",
        "mqtt.max_topic_alias",
        "mqtt.allow_anonymous",
        "mqtt.retain_available",
        "mqtt.max_subscriptions",
        "mqtt.max_topic_levels",
        "mqtt.publish_limit",
        "mqtt.server_reference",
        "listener.tcp.external.max_conn_rate",
        "listener.tcp.external.rate_limit.conn_bytes_in",
        "listener.ssl.external",
        "listener.ssl.external.keyfile",
        "listener.ssl.external.certfile",
        "listener.ssl.external.cacertfile",
        "listener.ssl.external.verify",
        "listener.ssl.external.fail_if_no_peer_cert",
        "listener.ssl.external.peer_cert_as_username",
        "listener.ssl.external.max_conn_rate",
        "log.level",
        "log.format",
        "plugins.load",
        "plugins.etc_dir",
        "hooks.timeout",
        "shutdown.timeout",
        "management.listener.http",
        "management.default_application.id",
        "management.default_application.secret",
        "management.max_row_limit",
    ];
    for key in keys {
        assert!(
            text.lines().any(|l| l
                .trim_start_matches('#')
                .trim_start()
                .starts_with(&format!("{key} ="))),
            "{key} is not in {SHIPPED}"
        );
    }
    assert!(text.lines().any(|l| l == "listener.tcp.external = 0.0.0.0:1883"));
    assert!(text
        .lines()
        .any(|l| l == "plugins.load = backend_pgsql, auth_file"));
}

#[path = "tests_listeners.rs"]
mod listeners;

#[path = "tests_management.rs"]
mod management;

#[test]
fn cluster_keys() {
    let c = ok(
        "cluster.enable = true\ncluster.database = postgres://postgres@10.0.0.9:5433/mqtt\n\
                cluster.secret = s3\ncluster.listen = 127.0.0.1:0\ncluster.heartbeat = 500ms\n\
                cluster.node_timeout = 3s\ncluster.advertise = node-a.local:4370\n",
    );
    let cl = c.cluster.expect("enabled");
    assert_eq!(cl.database, "postgres://postgres@10.0.0.9:5433/mqtt");
    assert_eq!(cl.listen, SocketAddr::from(([127, 0, 0, 1], 0)));
    assert_eq!(cl.heartbeat, Duration::from_millis(500));
    assert_eq!(cl.node_timeout, Duration::from_secs(3));
    assert_eq!(cl.advertise.as_deref(), Some("node-a.local:4370"));
    // Keys without cluster.enable = true: a single node.
    assert_eq!(ok("cluster.secret = s3\n").cluster, None);
    let d = ok("cluster.enable = true\ncluster.database = postgres://p@h/d\ncluster.secret = s\n")
        .cluster
        .expect("enabled");
    assert_eq!(
        (d.heartbeat, d.node_timeout),
        (Duration::from_secs(1), Duration::from_secs(5))
    );
    assert_eq!(d.listen, SocketAddr::from(([0, 0, 0, 0], 4370)));
}

#[test]
fn bad_cluster_keys() {
    assert!(bad("cluster.database", "not a url")
        .message
        .contains("PostgreSQL URL"));
    assert!(bad("cluster.listen", "nowhere").message.contains("ip:port"));
    assert!(bad("cluster.advertise", "no-port").message.contains("host:port"));
    assert!(bad("cluster.secret", "").message.contains("secret"));
    // Required keys are named on the enable line.
    let e = parse("\ncluster.enable = true\ncluster.secret = s\n").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (2, "cluster.enable"));
    assert!(e.message.contains("cluster.database"), "{e}");
    let e = parse("cluster.enable = true\ncluster.database = postgres://p@h/d\n").unwrap_err();
    assert!(e.message.contains("cluster.secret"), "{e}");
    let e = parse(
        "cluster.enable = true\ncluster.database = postgres://p@h/d\ncluster.secret = s\ncluster.node_timeout = 1s\n",
    )
    .unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (4, "cluster.node_timeout"));
}
