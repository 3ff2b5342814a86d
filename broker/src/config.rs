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
//! | `listener.ssl.<name>` | `ip:port` (TLS; needs `.certfile` and `.keyfile`) | none |
//! | `listener.<tcp\|ssl>.<name>.max_conn_rate` | connections per second, > 0 | unlimited |
//! | `listener.<tcp\|ssl\|ws\|wss>.<name>.rate_limit.conn_bytes_in` | `<size>,<duration>` (e.g. `100KB,10s`) | unlimited |
//! | `listener.ssl.<name>.certfile` / `.keyfile` | PEM file (relative to the config file's directory) | required |
//! | `listener.ssl.<name>.cacertfile` | PEM file: CAs that sign client certificates | unset |
//! | `listener.ssl.<name>.verify` | `verify_peer` or `verify_none` | `verify_none` |
//! | `listener.ssl.<name>.fail_if_no_peer_cert` | boolean (with `verify_peer`) | `false` |
//! | `listener.ssl.<name>.peer_cert_as_username` | `cn` (with `verify_peer`) | unset |
//! | `mqtt.max_packet_size` | size, 64 bytes to 268435455 | `1MB` |
//! | `mqtt.max_clients` | integer > 0 | `100000` |
//! | `mqtt.max_inflight` | 1 to 65535 | `32` |
//! | `mqtt.max_queue_len` | integer > 0 | `1000` |
//! | `mqtt.max_awaiting_rel` | integer > 0 | `100` |
//! | `mqtt.receive_maximum_exceeded` | `disconnect` or `backpressure` | `disconnect` |
//! | `mqtt.mqueue_store_qos0` | boolean | `true` |
//! | `mqtt.session_expiry_interval` | duration or `infinity` | `2h` |
//! | `mqtt.connect_timeout` | duration > 0 | `15s` |
//! | `mqtt.server_keepalive` | seconds, 1 to 65535 | unset (the client's keep alive) |
//! | `mqtt.max_topic_alias` | 0 to 65535 (0 disables) | `65535` |
//! | `mqtt.allow_anonymous` | boolean | `true` |
//! | `mqtt.retain_available` | boolean | `true` |
//! | `mqtt.max_subscriptions` | integer (0 = unlimited) | `0` |
//! | `mqtt.max_topic_levels` | integer (0 = unlimited) | `0` |
//! | `mqtt.publish_limit` | `<count>,<duration>` (e.g. `100,10s`) | unset (no limit) |
//! | `mqtt.server_reference` | `host:port` (or any reference, no spaces) | unset |
//! | `log.level` | `error`, `warn`, `info`, `debug`, `trace` | `info` |
//! | `log.format` | `text` or `json` (one JSON object per line) | `text` |
//! | `plugins.load` | comma-separated plugin names | empty |
//! | `plugins.etc_dir` | directory | the config file's directory |
//! | `hooks.timeout` | duration > 0 | `5s` |
//! | `shutdown.timeout` | duration | `10s` |
//! | `cluster.*` | see [`cluster`] | no cluster |
//! | `management.*` | see [`management`] | no HTTP listener |

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use hooks_spec::{ConfEntry, ConfError, ConfFile};

use crate::rate_limit::Rate;

pub mod cluster;
mod listeners;
pub mod management;

pub use cluster::ClusterConfig;
pub use management::ManagementConfig;

/// The largest packet MQTT can express (the remaining length's maximum).
const MAX_PACKET_SIZE_LIMIT: u64 = 268_435_455;
/// The smallest `mqtt.max_packet_size` accepted.
const MIN_PACKET_SIZE: u64 = 64;
/// The log levels `log.level` accepts.
const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// The broker's configuration, read from `etc/postbox.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file the configuration was read from.
    pub file: PathBuf,
    /// `node.name`: this broker's name, given to plugins.
    /// Default `postbox@127.0.0.1`.
    pub node_name: String,
    /// `listener.tcp.<name> = <ip:port>` and `listener.ssl.<name> = <ip:port>`:
    /// the MQTT listeners, in the order of their address lines. Default:
    /// one TCP listener `external` on `0.0.0.0:1883`, used only when no
    /// listener is configured.
    pub listeners: Vec<Listener>,
    /// The `mqtt.*` limits and switches.
    pub mqtt: MqttLimits,
    /// `log.level`: one of `error`, `warn`, `info`, `debug`, `trace`
    /// (stored lowercase). Default `info`.
    pub log_level: String,
    /// `log.format`: how log lines are written to stderr. Default `text`.
    pub log_format: LogFormat,
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
    /// `sys.interval`: how often the counters are published under `$SYS`
    /// (EMQX's and Mosquitto's names, [`crate::sys`]);
    /// `0s` turns that off (`None`). Default `1m`.
    pub sys_interval: Option<Duration>,
    /// `cluster.*`: the cluster this node belongs to; `None`: a single node.
    pub cluster: Option<ClusterConfig>,
    /// `management.*`: the HTTP listener (metrics, health, management API);
    /// `None`: no HTTP listener (the default without `management.listener.http`).
    pub management: Option<ManagementConfig>,
}

/// `log.format`: how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `text`: `<time> <LEVEL> <target>: <message> <key>=<value>...` (the default).
    #[default]
    Text,
    /// `json`: one JSON object per line, with `timestamp`, `level`,
    /// `target`, `message` and the line's fields at the top level.
    Json,
}

/// One MQTT listener: plain TCP (`listener.tcp.<name> = <ip:port>`),
/// TLS (`listener.ssl.<name>`), WebSocket (`listener.ws.<name>`) or
/// WebSocket over TLS (`listener.wss.<name>`), with its settings
/// (`listener.<kind>.<name>.<setting>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The `<name>` part of the key (for example `external`).
    pub name: String,
    /// The address to bind (port 0: any free port).
    pub addr: SocketAddr,
    /// `.max_conn_rate`: new connections accepted per second, in bursts of
    /// up to as many; beyond it a connection is refused after its CONNECT
    /// (CONNACK 0x9F, 3.1.1: 0x03). `None`: unlimited (the default).
    pub max_conn_rate: Option<u32>,
    /// `.rate_limit.conn_bytes_in = <size>,<duration>` (EMQX's key and
    /// format, such as `100KB,10s`): the bytes each connection may send per
    /// `<duration>`, in bursts of up to `<size>`. Beyond it the broker stops
    /// reading that connection until the allowance has refilled (nothing is
    /// dropped, nobody is disconnected). `None`: unlimited (the default).
    pub conn_bytes_in: Option<Rate>,
    /// `Some` for a `listener.ssl` or `listener.wss` listener: its TLS settings.
    pub tls: Option<TlsSettings>,
    /// `Some` for a `listener.ws` or `listener.wss` listener: MQTT runs
    /// over WebSocket binary messages after an HTTP upgrade.
    pub websocket: Option<WebSocketSettings>,
}

/// The WebSocket side of a `listener.ws` / `listener.wss` listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketSettings {
    /// `.mqtt_path` (EMQX's key): the HTTP path clients upgrade on; any
    /// other path is answered 404. Default `/mqtt`.
    pub path: String,
}

impl Listener {
    /// A plain TCP listener with no limits.
    pub fn tcp(name: impl Into<String>, addr: SocketAddr) -> Listener {
        Listener {
            name: name.into(),
            addr,
            max_conn_rate: None,
            conn_bytes_in: None,
            tls: None,
            websocket: None,
        }
    }

    /// The listener's key: `listener.<tcp|ssl|ws|wss>.<name>`.
    pub fn key(&self) -> String {
        let kind = match (self.tls.is_some(), self.websocket.is_some()) {
            (false, false) => "tcp",
            (true, false) => "ssl",
            (false, true) => "ws",
            (true, true) => "wss",
        };
        format!("listener.{kind}.{}", self.name)
    }
}

/// The TLS settings of a `listener.ssl.<name>` listener. The files are read
/// when the broker starts ([`crate::tls`]); errors then name the key's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `.certfile`: the server's certificate chain (PEM, leaf first). Required.
    pub certfile: ConfPath,
    /// `.keyfile`: the server's private key (PEM). Required.
    pub keyfile: ConfPath,
    /// `.cacertfile`: the CA certificates client certificates must chain
    /// to (PEM). Required by, and only allowed with, `verify = verify_peer`.
    pub cacertfile: Option<ConfPath>,
    /// `.verify = verify_peer`: ask clients for a certificate and verify it
    /// against `cacertfile`. Default `verify_none`: no client certificates.
    pub verify_peer: bool,
    /// `.fail_if_no_peer_cert`: with `verify_peer`, refuse a client that
    /// presents no certificate at the TLS handshake. Default `false` (such a
    /// client is let through to MQTT authentication).
    pub fail_if_no_peer_cert: bool,
    /// `.peer_cert_as_username = cn`: the verified client certificate's
    /// common name is the username authentication and ACLs see (the
    /// CONNECT's username is ignored on this listener). Default: unset.
    pub peer_cert_as_username: Option<PeerCertField>,
}

/// Which part of a client certificate `peer_cert_as_username` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCertField {
    /// The subject's common name (`cn`).
    Cn,
}

/// A file named by a configuration key, with the line that named it, so an
/// error found when the file is read (at startup) names the file, line and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfPath {
    /// The file (relative paths already joined to the config file's directory).
    pub path: PathBuf,
    /// The line of the key in the config file.
    pub line: usize,
    /// The key.
    pub key: String,
}

impl ConfPath {
    /// An error about this file, reported at the key that named it in `config_file`.
    pub fn error(&self, config_file: &Path, message: impl Into<String>) -> ConfError {
        ConfError {
            file: config_file.to_path_buf(),
            line: self.line,
            key: self.key.clone(),
            message: message.into(),
        }
    }
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
    /// `mqtt.receive_maximum_exceeded`: what happens to an MQTT 5 client
    /// that has more QoS 1/2 PUBLISH unacknowledged than our Receive Maximum
    /// (`mqtt.max_inflight`). Default `disconnect`.
    pub receive_maximum_exceeded: ReceiveMaximumExceeded,
    /// `mqtt.mqueue_store_qos0` (EMQX's key): whether QoS 0 messages are
    /// queued for offline persistent sessions, within `mqtt.max_queue_len`.
    /// `false`: they are dropped (and counted). Default `true`, as EMQX.
    pub mqueue_store_qos0: bool,
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
    /// `mqtt.publish_limit = <count>,<duration>`: the most PUBLISH packets one
    /// client connection may send per `<duration>`, in bursts of up to
    /// `<count>`. A PUBLISH beyond it is not processed and the client is
    /// disconnected (MQTT 5: DISCONNECT 0x96). `None`: no limit (the default).
    pub publish_limit: Option<Rate>,
    /// `mqtt.server_reference`: the server MQTT 5 clients are sent to when
    /// this node drains (DISCONNECT and CONNACK 0x9D "Server moved" with a
    /// Server Reference) and, when set, at shutdown (0x9D instead of 0x8B).
    /// Default: unset.
    pub server_reference: Option<String>,
}

/// `mqtt.receive_maximum_exceeded`: the answer to an MQTT 5 client that
/// sends a QoS 1/2 PUBLISH while `mqtt.max_inflight` of its QoS 1/2 PUBLISH
/// are unacknowledged (no PUBACK, or no PUBCOMP yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReceiveMaximumExceeded {
    /// `disconnect`: DISCONNECT 0x93 (Receive Maximum exceeded), as MQTT 5
    /// 3.3.4 requires. The default.
    #[default]
    Disconnect,
    /// `backpressure`: accepted; the broker stops reading the client while
    /// `mqtt.max_inflight` of its publishes are in the `message.publish`
    /// chain (what 3.1.x clients always get).
    Backpressure,
}

impl Default for MqttLimits {
    fn default() -> Self {
        MqttLimits {
            max_packet_size: 1024 * 1024,
            max_clients: 100_000,
            max_inflight: 32,
            max_queue_len: 1000,
            max_awaiting_rel: 100,
            receive_maximum_exceeded: ReceiveMaximumExceeded::Disconnect,
            mqueue_store_qos0: true,
            session_expiry_interval: Some(Duration::from_secs(2 * 3600)),
            connect_timeout: Duration::from_secs(15),
            server_keepalive: None,
            max_topic_alias: 65535,
            allow_anonymous: true,
            retain_available: true,
            max_subscriptions: 0,
            max_topic_levels: 0,
            publish_limit: None,
            server_reference: None,
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
    Listener::tcp(
        "external",
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 1883),
    )
}

/// `<count>,<duration>`, both greater than 0 (`mqtt.publish_limit`).
fn parse_rate(conf: &ConfFile, e: &ConfEntry) -> Result<Rate, ConfError> {
    let bad = || {
        conf.error(
            e,
            format!(
                "expected `<count>,<duration>` with both greater than 0, such as `100,10s`, got {}",
                shown(&e.value)
            ),
        )
    };
    let (count, per) = e.value.split_once(',').ok_or_else(bad)?;
    let count = ConfEntry {
        value: count.trim().to_string(),
        ..e.clone()
    };
    let per = ConfEntry {
        value: per.trim().to_string(),
        ..e.clone()
    };
    let count = conf.parse_u32(&count).map_err(|_| bad())?;
    let per = conf.parse_duration(&per).map_err(|_| bad())?;
    if count == 0 || per.is_zero() {
        return Err(bad());
    }
    Ok(Rate { count, per })
}

/// A server reference: not empty, no spaces, fits an MQTT string.
fn server_reference(conf: &ConfFile, e: &ConfEntry) -> Result<String, ConfError> {
    let v = e.value.trim();
    if v.is_empty() || v.len() > 65_535 || v.chars().any(char::is_whitespace) {
        return Err(conf.error(
            e,
            format!(
                "expected a server reference such as `host:port`, got {}",
                shown(&e.value)
            ),
        ));
    }
    Ok(v.to_string())
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
            log_format: LogFormat::Text,
            plugins: Vec::new(),
            plugins_etc_dir: dir.clone(),
            hooks_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            sys_interval: Some(Duration::from_secs(60)),
            cluster: None,
            management: None,
        };
        let mut management = management::Draft::default();
        let mut listeners = listeners::Listeners::new(&dir);
        let mut cluster = cluster::Draft::default();
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
                "mqtt.receive_maximum_exceeded" => {
                    m.receive_maximum_exceeded = match e.value.as_str() {
                        "disconnect" => ReceiveMaximumExceeded::Disconnect,
                        "backpressure" => ReceiveMaximumExceeded::Backpressure,
                        _ => {
                            return Err(conf.error(
                                e,
                                format!("expected `disconnect` or `backpressure`, got {}", shown(&e.value)),
                            ))
                        }
                    };
                }
                "mqtt.session_expiry_interval" => {
                    m.session_expiry_interval = conf.parse_duration_or_infinity(e)?;
                }
                "mqtt.connect_timeout" => m.connect_timeout = positive_duration(conf, e)?,
                "mqtt.server_keepalive" => m.server_keepalive = Some(positive_u16(conf, e)?),
                "mqtt.max_topic_alias" => m.max_topic_alias = conf.parse_u16(e)?,
                "mqtt.allow_anonymous" => m.allow_anonymous = conf.parse_bool(e)?,
                "mqtt.retain_available" => m.retain_available = conf.parse_bool(e)?,
                "mqtt.mqueue_store_qos0" => m.mqueue_store_qos0 = conf.parse_bool(e)?,
                "mqtt.max_subscriptions" => m.max_subscriptions = conf.parse_usize(e)?,
                "mqtt.max_topic_levels" => m.max_topic_levels = conf.parse_usize(e)?,
                "mqtt.publish_limit" => m.publish_limit = Some(parse_rate(conf, e)?),
                "mqtt.server_reference" => m.server_reference = Some(server_reference(conf, e)?),
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
                "log.format" => {
                    cfg.log_format = match e.value.to_ascii_lowercase().as_str() {
                        "text" => LogFormat::Text,
                        "json" => LogFormat::Json,
                        _ => {
                            return Err(
                                conf.error(e, format!("expected `text` or `json`, got {}", shown(&e.value)))
                            )
                        }
                    };
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
                "sys.interval" => {
                    let d = conf.parse_duration(e)?;
                    cfg.sys_interval = (!d.is_zero()).then_some(d);
                }
                _ if listeners.take(conf, e)? => {}
                _ if cluster.take(conf, e)? => {}
                _ if management.take(conf, e)? => {}
                _ => return Err(conf.error(e, "unknown key")),
            }
        }
        cfg.listeners = listeners.finish(conf)?;
        cfg.cluster = cluster.finish(conf)?;
        cfg.management = management.finish();
        if cfg.listeners.is_empty() {
            cfg.listeners.push(default_listener());
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests;
