//! The broker's configuration: `etc/postbox.conf`.
//!
//! The file uses the flat `key = value` format of [`hooks_spec::conf`]. Every
//! key is optional; a key Postbox does not know is an error, and so is a value
//! of the wrong kind. Errors name the file, the line and the key and say what
//! was expected.
//!
//! | key | value | default |
//! |---|---|---|
//! | `node.name` | string | `postbox@127.0.0.1` |
//! | `listener.tcp.<name>` | `ip:port` (one or more) | `listener.tcp.external = 0.0.0.0:1883` |
//! | `mqtt.max_packet_size` | size, 64 bytes to 268435455 | `1MB` |
//! | `mqtt.max_clients` | integer > 0 | `100000` |
//! | `mqtt.max_inflight` | 1 to 65535 | `32` |
//! | `mqtt.max_queue_len` | integer > 0 | `1000` |
//! | `mqtt.max_awaiting_rel` | integer > 0 | `100` |
//! | `mqtt.session_expiry_interval` | duration or `infinity` | `2h` |
//! | `mqtt.connect_timeout` | duration > 0 | `15s` |
//! | `mqtt.server_keepalive` | seconds, 1 to 65535 | unset (the client's keep alive) |
//! | `mqtt.max_topic_alias` | 0 to 65535 (0 disables) | `65535` |
//! | `mqtt.allow_anonymous` | boolean | `true` |
//! | `mqtt.retain_available` | boolean | `true` |
//! | `mqtt.max_subscriptions` | integer (0 = unlimited) | `0` |
//! | `mqtt.max_topic_levels` | integer (0 = unlimited) | `0` |
//! | `log.level` | `error`, `warn`, `info`, `debug`, `trace` | `info` |
//! | `plugins.load` | comma-separated plugin names | empty |
//! | `plugins.etc_dir` | directory | the config file's directory |
//! | `hooks.timeout` | duration > 0 | `5s` |
//! | `shutdown.timeout` | duration | `10s` |

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use hooks_spec::{ConfEntry, ConfError, ConfFile};

/// The largest packet MQTT can express (the remaining length's maximum).
const MAX_PACKET_SIZE_LIMIT: u64 = 268_435_455;
/// The smallest `mqtt.max_packet_size` accepted.
const MIN_PACKET_SIZE: u64 = 64;
/// The log levels `log.level` accepts.
const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
/// The prefix of listener keys.
const LISTENER_PREFIX: &str = "listener.tcp.";

/// The broker's configuration, read from `etc/postbox.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file the configuration was read from.
    pub file: PathBuf,
    /// `node.name`: this broker's name, given to plugins.
    /// Default `postbox@127.0.0.1`.
    pub node_name: String,
    /// `listener.tcp.<name> = <ip:port>`: the MQTT/TCP listeners, in file
    /// order. Default: one listener `external` on `0.0.0.0:1883`.
    pub listeners: Vec<Listener>,
    /// The `mqtt.*` limits and switches.
    pub mqtt: MqttLimits,
    /// `log.level`: one of `error`, `warn`, `info`, `debug`, `trace`
    /// (stored lowercase). Default `info`.
    pub log_level: String,
    /// `plugins.load`: the plugins to enable, in start order.
    /// Default: none.
    pub plugins: Vec<String>,
    /// `plugins.etc_dir`: where `<plugin>.conf` files are read from; a
    /// relative path is relative to the config file's directory.
    /// Default: the config file's directory.
    pub plugins_etc_dir: PathBuf,
    /// `hooks.timeout`: how long one hook callback may run before it is
    /// abandoned and its failure policy applies. Default `5s`.
    pub hooks_timeout: Duration,
    /// `shutdown.timeout`: how long shutdown waits for connections and
    /// plugins to finish. Default `10s`.
    pub shutdown_timeout: Duration,
}

/// One MQTT/TCP listener (`listener.tcp.<name> = <ip:port>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The `<name>` part of the key (for example `external`).
    pub name: String,
    /// The address to bind.
    pub addr: SocketAddr,
}

/// The `mqtt.*` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttLimits {
    /// `mqtt.max_packet_size`: the largest packet accepted from or sent to a
    /// client, in bytes (MQTT 5 clients are told in CONNACK). Between 64 and
    /// 268435455. Default `1MB` (1048576).
    pub max_packet_size: u32,
    /// `mqtt.max_clients`: the most connections at once; more are refused.
    /// Greater than 0. Default `100000`.
    pub max_clients: usize,
    /// `mqtt.max_inflight`: the most QoS 1/2 messages sent to one client and
    /// not yet acknowledged (an MQTT 5 client's smaller receive maximum
    /// wins). 1 to 65535. Default `32`.
    pub max_inflight: u16,
    /// `mqtt.max_queue_len`: the most messages queued for one session beyond
    /// the inflight window; when full, new messages for it are dropped.
    /// Greater than 0. Default `1000`.
    pub max_queue_len: usize,
    /// `mqtt.max_awaiting_rel`: the most QoS 2 messages from one client that
    /// await PUBREL. Greater than 0. Default `100`.
    pub max_awaiting_rel: usize,
    /// `mqtt.session_expiry_interval`: how long a session outlives its
    /// connection. It is the expiry of MQTT 3.1.1 persistent sessions
    /// (clean session 0) and the cap on what MQTT 5 clients ask for.
    /// `None` is `infinity` (never expires). Default `2h`.
    pub session_expiry_interval: Option<Duration>,
    /// `mqtt.connect_timeout`: how long a new connection may take to send
    /// CONNECT. Greater than 0. Default `15s`.
    pub connect_timeout: Duration,
    /// `mqtt.server_keepalive`: when set, the keep alive (seconds) imposed on
    /// every client (MQTT 5 clients are told in CONNACK). 1 to 65535.
    /// Default: unset, the client's keep alive is accepted.
    pub server_keepalive: Option<u16>,
    /// `mqtt.max_topic_alias`: the most topic aliases an MQTT 5 client may
    /// use towards the broker; 0 disables topic aliases. Default `65535`.
    pub max_topic_alias: u16,
    /// `mqtt.allow_anonymous`: whether a client no authentication plugin
    /// decided on is let in. Default `true`.
    pub allow_anonymous: bool,
    /// `mqtt.retain_available`: whether retained messages are supported.
    /// Default `true`.
    pub retain_available: bool,
    /// `mqtt.max_subscriptions`: the most subscriptions one session may
    /// hold; 0 is unlimited. Default `0`.
    pub max_subscriptions: usize,
    /// `mqtt.max_topic_levels`: the most levels a topic name or filter may
    /// have; 0 is unlimited. Default `0`.
    pub max_topic_levels: usize,
}

impl Default for MqttLimits {
    fn default() -> Self {
        MqttLimits {
            max_packet_size: 1024 * 1024,
            max_clients: 100_000,
            max_inflight: 32,
            max_queue_len: 1000,
            max_awaiting_rel: 100,
            session_expiry_interval: Some(Duration::from_secs(2 * 3600)),
            connect_timeout: Duration::from_secs(15),
            server_keepalive: None,
            max_topic_alias: 65535,
            allow_anonymous: true,
            retain_available: true,
            max_subscriptions: 0,
            max_topic_levels: 0,
        }
    }
}

/// The directory holding the config file (`.` when the path has none).
fn config_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// How a value is shown in an error message.
fn shown(value: &str) -> String {
    if value.is_empty() {
        "an empty value".to_string()
    } else {
        format!("`{value}`")
    }
}

/// The default listener: `external` on `0.0.0.0:1883`.
fn default_listener() -> Listener {
    Listener {
        name: "external".to_string(),
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 1883),
    }
}

fn positive_usize(conf: &ConfFile, e: &ConfEntry) -> Result<usize, ConfError> {
    match conf.parse_usize(e) {
        Ok(0) | Err(_) => Err(conf.error(
            e,
            format!("expected an integer greater than 0, got {}", shown(&e.value)),
        )),
        Ok(v) => Ok(v),
    }
}

fn positive_u16(conf: &ConfFile, e: &ConfEntry) -> Result<u16, ConfError> {
    match conf.parse_u16(e) {
        Ok(0) | Err(_) => Err(conf.error(
            e,
            format!("expected an integer between 1 and 65535, got {}", shown(&e.value)),
        )),
        Ok(v) => Ok(v),
    }
}

fn positive_duration(conf: &ConfFile, e: &ConfEntry) -> Result<Duration, ConfError> {
    let d = conf.parse_duration(e)?;
    if d.is_zero() {
        return Err(conf.error(
            e,
            format!(
                "expected a duration greater than 0, such as `15s`, got {}",
                shown(&e.value)
            ),
        ));
    }
    Ok(d)
}

impl Config {
    /// Reads and checks the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfError> {
        Config::from_conf(&ConfFile::load(path)?)
    }

    /// Builds the configuration from a parsed file: defaults for the keys it
    /// does not set, an error for an unknown key or a bad value.
    pub fn from_conf(conf: &ConfFile) -> Result<Config, ConfError> {
        let dir = config_dir(&conf.path);
        let mut cfg = Config {
            file: conf.path.clone(),
            node_name: "postbox@127.0.0.1".to_string(),
            listeners: Vec::new(),
            mqtt: MqttLimits::default(),
            log_level: "info".to_string(),
            plugins: Vec::new(),
            plugins_etc_dir: dir.clone(),
            hooks_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
        };
        // The entry each listener came from, for duplicate-address errors.
        let mut listener_entries: Vec<&ConfEntry> = Vec::new();
        for e in &conf.entries {
            let m = &mut cfg.mqtt;
            match e.key.as_str() {
                "node.name" => {
                    if e.value.is_empty() || e.value.chars().any(char::is_whitespace) {
                        return Err(conf.error(
                            e,
                            format!(
                                "expected a node name without spaces, such as `postbox@127.0.0.1`, got {}",
                                shown(&e.value)
                            ),
                        ));
                    }
                    cfg.node_name = e.value.clone();
                }
                "mqtt.max_packet_size" => {
                    let bad = || {
                        conf.error(
                            e,
                            format!(
                                "expected a size between {MIN_PACKET_SIZE} bytes and {MAX_PACKET_SIZE_LIMIT} \
                                 bytes, such as `1MB`, got {}",
                                shown(&e.value)
                            ),
                        )
                    };
                    let v = conf.parse_size(e).map_err(|_| bad())?;
                    if !(MIN_PACKET_SIZE..=MAX_PACKET_SIZE_LIMIT).contains(&v) {
                        return Err(bad());
                    }
                    m.max_packet_size = u32::try_from(v).map_err(|_| bad())?;
                }
                "mqtt.max_clients" => m.max_clients = positive_usize(conf, e)?,
                "mqtt.max_inflight" => m.max_inflight = positive_u16(conf, e)?,
                "mqtt.max_queue_len" => m.max_queue_len = positive_usize(conf, e)?,
                "mqtt.max_awaiting_rel" => m.max_awaiting_rel = positive_usize(conf, e)?,
                "mqtt.session_expiry_interval" => {
                    m.session_expiry_interval = conf.parse_duration_or_infinity(e)?;
                }
                "mqtt.connect_timeout" => m.connect_timeout = positive_duration(conf, e)?,
                "mqtt.server_keepalive" => m.server_keepalive = Some(positive_u16(conf, e)?),
                "mqtt.max_topic_alias" => m.max_topic_alias = conf.parse_u16(e)?,
                "mqtt.allow_anonymous" => m.allow_anonymous = conf.parse_bool(e)?,
                "mqtt.retain_available" => m.retain_available = conf.parse_bool(e)?,
                "mqtt.max_subscriptions" => m.max_subscriptions = conf.parse_usize(e)?,
                "mqtt.max_topic_levels" => m.max_topic_levels = conf.parse_usize(e)?,
                "log.level" => {
                    let level = e.value.to_ascii_lowercase();
                    if !LOG_LEVELS.contains(&level.as_str()) {
                        return Err(conf.error(
                            e,
                            format!(
                                "expected one of `error`, `warn`, `info`, `debug`, `trace`, got {}",
                                shown(&e.value)
                            ),
                        ));
                    }
                    cfg.log_level = level;
                }
                "plugins.load" => {
                    let plugins = conf.parse_list(e);
                    for (i, p) in plugins.iter().enumerate() {
                        if plugins[..i].contains(p) {
                            return Err(conf.error(e, format!("plugin `{p}` is listed twice")));
                        }
                    }
                    cfg.plugins = plugins;
                }
                "plugins.etc_dir" => {
                    if e.value.is_empty() {
                        return Err(conf.error(
                            e,
                            "expected a directory (absolute, or relative to the config file's directory), \
                             got an empty value",
                        ));
                    }
                    // Drop `.` components so `.` is the config file's directory itself.
                    let rel: PathBuf = Path::new(&e.value)
                        .components()
                        .filter(|c| !matches!(c, Component::CurDir))
                        .collect();
                    cfg.plugins_etc_dir = if rel.as_os_str().is_empty() {
                        dir.clone()
                    } else {
                        dir.join(rel)
                    };
                }
                "hooks.timeout" => cfg.hooks_timeout = positive_duration(conf, e)?,
                "shutdown.timeout" => cfg.shutdown_timeout = conf.parse_duration(e)?,
                key if key.len() > LISTENER_PREFIX.len()
                    && key.starts_with(LISTENER_PREFIX)
                    && !key[LISTENER_PREFIX.len()..].contains('.') =>
                {
                    let name = &key[LISTENER_PREFIX.len()..];
                    let addr: SocketAddr = e.value.parse().map_err(|_| {
                        conf.error(
                            e,
                            format!(
                                "expected a listen address `ip:port`, such as `0.0.0.0:1883` or \
                                 `[::]:1883`, got {}",
                                shown(&e.value)
                            ),
                        )
                    })?;
                    if let Some(other) = cfg.listeners.iter().position(|l| l.addr == addr) {
                        let first = listener_entries[other];
                        return Err(conf.error(
                            e,
                            format!(
                                "address {addr} is already used by `{}` on line {}",
                                first.key, first.line
                            ),
                        ));
                    }
                    cfg.listeners.push(Listener {
                        name: name.to_string(),
                        addr,
                    });
                    listener_entries.push(e);
                }
                _ => return Err(conf.error(e, "unknown key")),
            }
        }
        if cfg.listeners.is_empty() {
            cfg.listeners.push(default_listener());
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
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
            listeners: vec![Listener {
                name: "external".into(),
                addr: "0.0.0.0:1883".parse().unwrap(),
            }],
            mqtt: MqttLimits::default(),
            log_level: "info".into(),
            plugins: vec![],
            plugins_etc_dir: PathBuf::from("/opt/postbox/etc"),
            hooks_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
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
        assert_eq!(m.session_expiry_interval, Some(Duration::from_secs(7200)));
        assert_eq!(m.connect_timeout, Duration::from_secs(15));
        assert_eq!(m.server_keepalive, None);
        assert_eq!(m.max_topic_alias, 65535);
        assert!(m.allow_anonymous);
        assert!(m.retain_available);
        assert_eq!(m.max_subscriptions, 0);
        assert_eq!(m.max_topic_levels, 0);
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
             mqtt.session_expiry_interval = 1h 30m\n\
             mqtt.connect_timeout = 500ms\n\
             mqtt.server_keepalive = 60\n\
             mqtt.max_topic_alias = 0\n\
             mqtt.allow_anonymous = false\n\
             mqtt.retain_available = off\n\
             mqtt.max_subscriptions = 20\n\
             mqtt.max_topic_levels = 8\n\
             log.level = DEBUG\n\
             plugins.load = backend_pgsql, other\n\
             plugins.etc_dir = plugins.d\n\
             hooks.timeout = 2s\n\
             shutdown.timeout = 0s\n");
        assert_eq!(
            c,
            Config {
                file: PathBuf::from(FILE),
                node_name: "pb1@10.0.0.1".into(),
                listeners: vec![
                    Listener {
                        name: "internal".into(),
                        addr: "127.0.0.1:11883".parse().unwrap()
                    },
                    Listener {
                        name: "v6".into(),
                        addr: "[::1]:1884".parse().unwrap()
                    },
                ],
                mqtt: MqttLimits {
                    max_packet_size: 65536,
                    max_clients: 10,
                    max_inflight: 65535,
                    max_queue_len: 5,
                    max_awaiting_rel: 7,
                    session_expiry_interval: Some(Duration::from_secs(5400)),
                    connect_timeout: Duration::from_millis(500),
                    server_keepalive: Some(60),
                    max_topic_alias: 0,
                    allow_anonymous: false,
                    retain_available: false,
                    max_subscriptions: 20,
                    max_topic_levels: 8,
                },
                log_level: "debug".into(),
                plugins: vec!["backend_pgsql".into(), "other".into()],
                plugins_etc_dir: PathBuf::from("/opt/postbox/etc/plugins.d"),
                hooks_timeout: Duration::from_secs(2),
                shutdown_timeout: Duration::ZERO,
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
            vec![Listener {
                name: "only".into(),
                addr: "127.0.0.1:2000".parse().unwrap()
            }]
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
            "listener.tcp.a.port",
            "listener.ssl.a",
            "listener.a",
        ] {
            let e = bad(key, "0.0.0.0:1883");
            assert_eq!(e.message, "unknown key");
        }
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
        for key in ["mqtt.allow_anonymous", "mqtt.retain_available"] {
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
        let c =
            Config::from_conf(&ConfFile::parse(Path::new("postbox.conf"), "plugins.etc_dir = p").unwrap())
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
                // The one value that differs from the defaults: the backend is enabled.
                plugins: vec!["backend_pgsql".to_string()],
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
            "mqtt.session_expiry_interval",
            "mqtt.connect_timeout",
            "mqtt.server_keepalive",
            "mqtt.max_topic_alias",
            "mqtt.allow_anonymous",
            "mqtt.retain_available",
            "mqtt.max_subscriptions",
            "mqtt.max_topic_levels",
            "log.level",
            "plugins.load",
            "plugins.etc_dir",
            "hooks.timeout",
            "shutdown.timeout",
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
        assert!(text.lines().any(|l| l == "plugins.load = backend_pgsql"));
    }
}
