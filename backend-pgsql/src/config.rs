//! The plugin's configuration file, `etc/backend_pgsql.conf`.
//!
//! The file uses EMQX's keys (`backend.pgsql.<pool>.server`, ...,
//! `backend.pgsql.hook.<hookpoint>.<N>`) in the flat `key = value` format of
//! [`hooks_spec::conf`]. [`PgsqlConfig::load`] reads and validates it all at
//! once: an unknown key, a bad value, a rule naming a pool that does not exist,
//! ... is a [`ConfError`] naming the file, the line and the key and saying what
//! was expected, and the plugin does not start.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hooks_spec::conf::{ConfEntry, ConfError, ConfFile};

use crate::rules::{Rule, RULE_KEY_PREFIX};

/// The prefix of every key of the file.
pub const KEY_PREFIX: &str = "backend.pgsql.";
/// The port used when `server` gives none.
pub const DEFAULT_PORT: u16 = 5432;
/// Default `pool_size`.
pub const DEFAULT_POOL_SIZE: usize = 8;
/// Default `username`.
pub const DEFAULT_USERNAME: &str = "postgres";
/// Default `database`.
pub const DEFAULT_DATABASE: &str = "mqtt";
/// Default `backend.pgsql.max_returned_count`: replay pages of up to 5,000
/// messages (and [`crate::fetch::PAGE_BYTES`]): a million messages replay in
/// about 2.3 s where pages of 500 took 3.9 s (BENCHMARKS.md).
pub const DEFAULT_MAX_RETURNED_COUNT: usize = 5000;
/// Default `backend.pgsql.msg_retention`: 7 days.
pub const DEFAULT_MSG_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default `backend.pgsql.batch_size`.
pub const DEFAULT_BATCH_SIZE: usize = 1000;
/// Default `backend.pgsql.store_timeout`.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Default `backend.pgsql.position_flush_interval`. A round of position
/// writes costs the database about the same whatever it covers (one read
/// per subscription and one UPDATE, each parsed and planned: ~2 ms of CPU
/// for 10 subscriptions): at 10 ms apart the rounds took a fifth of its CPU
/// in the persisted benchmark, and 100 ms gave ~5 % more messages per second
/// (BENCHMARKS.md, "Persisted QoS 1"). The default stays 10 ms: after a
/// crash, what was acknowledged in the last interval is delivered again,
/// and "never again once acknowledged" comes before speed here.
pub const DEFAULT_POSITION_FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// Default `backend.pgsql.backlog_interval`.
pub const DEFAULT_BACKLOG_INTERVAL: Duration = Duration::from_secs(30);

/// The global settings (`backend.pgsql.<name>`); none of them can be a pool name.
const GLOBALS: &[&str] = &[
    "max_returned_count",
    "time_range",
    "msg_retention",
    "batch_size",
    "store_timeout",
    "arrival_property",
    "backlog_limit",
    "backlog_interval",
    "msg_partition",
    "msg_delete_acked",
    "position_flush_interval",
];

/// The settings of a pool (`backend.pgsql.<pool>.<setting>`).
pub(crate) const POOL_SETTINGS: &[&str] = &[
    "server",
    "pool_size",
    "username",
    "password",
    "database",
    "ssl",
    "ssl.cacertfile",
    "ssl.certfile",
    "ssl.keyfile",
    "ssl.verify",
];

/// The whole configuration of the plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct PgsqlConfig {
    /// The file it was read from.
    pub file: PathBuf,
    /// The connection pools, by name (`backend.pgsql.<name>.*`).
    pub pools: BTreeMap<String, PoolConfig>,
    /// `backend.pgsql.max_returned_count`: the most stored messages delivered
    /// per fetch, unless a rule's `offline_opts` says otherwise (default 500).
    pub max_returned_count: usize,
    /// `backend.pgsql.time_range`: fetch only messages that arrived within this
    /// long (default `None`: no limit).
    pub time_range: Option<Duration>,
    /// `backend.pgsql.msg_retention`: how long stored messages are kept
    /// (default 7 days; `None` for `infinity`: kept for ever), unless a
    /// [`TopicRetention`] rule matches their topic.
    pub msg_retention: Option<Duration>,
    /// `backend.pgsql.msg_retention.<N>`: retention by topic filter, in
    /// ascending `N` (the first match decides).
    pub topic_retention: Vec<TopicRetention>,
    /// `backend.pgsql.batch_size`: the most messages written in one statement
    /// (group commit; default 1000; 1 = one INSERT per message).
    pub batch_size: usize,
    /// `backend.pgsql.store_timeout`: how long storing a message may take
    /// before the publisher is told it was not stored (default 5s).
    pub store_timeout: Duration,
    /// `backend.pgsql.arrival_property`: the MQTT 5 user property replayed
    /// messages carry the time they were stored in (RFC 3339); `None`
    /// (default): they carry none.
    pub arrival_property: Option<String>,
    /// `backend.pgsql.backlog_limit`: a subscription whose stored,
    /// unacknowledged messages pass this many is logged and fires
    /// `session.backlog_exceeded` (default `None`: off).
    pub backlog_limit: Option<u64>,
    /// `backend.pgsql.backlog_interval`: how often each subscription's
    /// backlog is counted (default 30s).
    pub backlog_interval: Duration,
    /// `backend.pgsql.msg_partition`: the width of the time partitions of
    /// `mqtt_msg` (native range partitioning on `arrived`; retention drops
    /// whole partitions); `None` (default, `off`): one plain table.
    pub msg_partition: Option<Duration>,
    /// `backend.pgsql.msg_delete_acked`: delete a stored message once every
    /// subscription that needs it has acknowledged it (default false);
    /// `Some(line)` of the key when on.
    pub msg_delete_acked: Option<usize>,
    /// `backend.pgsql.position_flush_interval`: the shortest time between
    /// two rounds of read-position writes (default 100ms).
    pub position_flush_interval: Duration,
    /// The rules, ordered by hook point (the order of [`hooks_spec::HookPoint::ALL`])
    /// and then by their number `N`.
    pub rules: Vec<Rule>,
}

/// One connection pool: `backend.pgsql.<name>.*`.
#[derive(Clone, PartialEq)]
pub struct PoolConfig {
    /// The pool's name, as rules refer to it.
    pub name: String,
    /// The server's host name or IP address (without brackets for IPv6), or
    /// the directory of a Unix socket.
    pub host: String,
    /// The server's port (default 5432).
    pub port: u16,
    /// The number of connections (default 8).
    pub pool_size: usize,
    /// The user name (default `postgres`).
    pub username: String,
    /// The password (`None` when not set or empty).
    pub password: Option<String>,
    /// The database (default `mqtt`).
    pub database: String,
    /// TLS settings.
    pub ssl: SslConfig,
    /// The line of the pool's `server` key.
    pub line: usize,
}

impl fmt::Debug for PoolConfig {
    /// Like a derived `Debug`, but the password is not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolConfig")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("pool_size", &self.pool_size)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("database", &self.database)
            .field("ssl", &self.ssl)
            .field("line", &self.line)
            .finish()
    }
}

/// A pool's TLS settings: `backend.pgsql.<name>.ssl*`. Relative file paths are
/// relative to the directory of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslConfig {
    /// `ssl`: connect with TLS (default false).
    pub enabled: bool,
    /// `ssl.cacertfile`: the CA certificates (PEM) the server's certificate is
    /// checked against (default: the system's).
    pub cacertfile: Option<PathBuf>,
    /// `ssl.certfile`: the client certificate (PEM), with `keyfile`.
    pub certfile: Option<PathBuf>,
    /// `ssl.keyfile`: the client certificate's private key (PEM), with `certfile`.
    pub keyfile: Option<PathBuf>,
    /// `ssl.verify`: check the server's certificate and host name (default true).
    pub verify: bool,
}

impl Default for SslConfig {
    /// TLS off, no files, verification on.
    fn default() -> SslConfig {
        SslConfig {
            enabled: false,
            cacertfile: None,
            certfile: None,
            keyfile: None,
            verify: true,
        }
    }
}

/// Splits `host:port`, `host`, `[v6]:port` or `[v6]`.
fn parse_server(value: &str) -> Result<(String, u16), String> {
    let expected =
        format!("expected `host:port` (such as `127.0.0.1:5432`; the port defaults to {DEFAULT_PORT})");
    let (host, port) = if let Some(inner) = value.strip_prefix('[') {
        let Some((host, after)) = inner.split_once(']') else {
            return Err(format!("{expected}: `[` without `]`, got `{value}`"));
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("{expected}, got `{value}`")),
            },
        }
    } else {
        match value.matches(':').count() {
            0 => (value, None),
            1 => match value.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (value, None),
            },
            _ => {
                return Err(format!(
                    "{expected}; write an IPv6 address in brackets, such as `[::1]:5432`, got `{value}`"
                ))
            }
        }
    };
    if host.is_empty() {
        return Err(format!(
            "{expected}, got {}",
            if value.is_empty() {
                "an empty value".to_string()
            } else {
                format!("`{value}` (no host)")
            }
        ));
    }
    if host.chars().any(char::is_whitespace) {
        return Err(format!("{expected}, got `{value}` (the host contains a space)"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(format!(
                    "{expected}; the port must be a number from 1 to 65535, got `{p}`"
                ))
            }
        },
    };
    Ok((host.to_string(), port))
}

struct Reader<'a> {
    conf: &'a ConfFile,
}

impl Reader<'_> {
    fn positive_usize(&self, e: &ConfEntry) -> Result<usize, ConfError> {
        match self.conf.parse_usize(e)? {
            0 => Err(self.conf.error(e, "expected a number greater than 0, got `0`")),
            n => Ok(n),
        }
    }

    fn positive_duration(&self, e: &ConfEntry) -> Result<Duration, ConfError> {
        let d = self.conf.parse_duration(e)?;
        if d.is_zero() {
            return Err(self.conf.error(
                e,
                format!(
                    "expected a duration greater than 0 such as `5s` or `2h`, got `{}`",
                    e.value
                ),
            ));
        }
        Ok(d)
    }

    fn non_empty(&self, e: &ConfEntry, what: &str) -> Result<String, ConfError> {
        if e.value.is_empty() {
            return Err(self.conf.error(e, format!("expected {what}, got an empty value")));
        }
        Ok(e.value.clone())
    }

    fn path(&self, e: &ConfEntry) -> Result<PathBuf, ConfError> {
        let p = PathBuf::from(self.non_empty(e, "a file path (PEM)")?);
        Ok(match self.conf.path.parent() {
            Some(dir) if p.is_relative() && !dir.as_os_str().is_empty() => dir.join(p),
            _ => p,
        })
    }
}

/// Builds one pool from its `server` entry and its settings (`(setting,
/// entry)` pairs, the setting names of [`POOL_SETTINGS`]). `prefix` is how
/// the pool's keys start (`backend.pgsql.pool1.`), for messages. Shared with
/// the `auth_pgsql` plugin, whose keys are `auth.pgsql.<setting>`.
pub(crate) fn pool_from_settings(
    conf: &ConfFile,
    name: &str,
    prefix: &str,
    server: &ConfEntry,
    entries: &[(&str, &ConfEntry)],
) -> Result<PoolConfig, ConfError> {
    let r = Reader { conf };
    let (host, port) = parse_server(&server.value).map_err(|m| conf.error(server, m))?;
    let mut pool = PoolConfig {
        name: name.to_string(),
        host,
        port,
        pool_size: DEFAULT_POOL_SIZE,
        username: DEFAULT_USERNAME.to_string(),
        password: None,
        database: DEFAULT_DATABASE.to_string(),
        ssl: SslConfig::default(),
        line: server.line,
    };
    for (setting, e) in entries {
        match *setting {
            "pool_size" => pool.pool_size = r.positive_usize(e)?,
            "username" => pool.username = r.non_empty(e, "a user name")?,
            "password" => pool.password = Some(e.value.clone()).filter(|p| !p.is_empty()),
            "database" => pool.database = r.non_empty(e, "a database name")?,
            "ssl" => pool.ssl.enabled = conf.parse_bool(e)?,
            "ssl.cacertfile" => pool.ssl.cacertfile = Some(r.path(e)?),
            "ssl.certfile" => pool.ssl.certfile = Some(r.path(e)?),
            "ssl.keyfile" => pool.ssl.keyfile = Some(r.path(e)?),
            "ssl.verify" => pool.ssl.verify = conf.parse_bool(e)?,
            _ => {}
        }
    }
    for (have, need) in [("ssl.certfile", "ssl.keyfile"), ("ssl.keyfile", "ssl.certfile")] {
        let has = |s: &str| entries.iter().find(|(k, _)| *k == s).map(|(_, e)| *e);
        if let (Some(e), None) = (has(have), has(need)) {
            return Err(conf.error(
                e,
                format!("a client certificate needs both files: set `{prefix}{need}` as well"),
            ));
        }
    }
    Ok(pool)
}

impl PgsqlConfig {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<PgsqlConfig, ConfError> {
        PgsqlConfig::from_conf(&ConfFile::load(path)?)
    }

    /// Validates an already parsed file. Every key must be one of:
    ///
    /// - `backend.pgsql.<pool>.<setting>` with `<pool>` made of `A-Z a-z 0-9 _`
    ///   and `<setting>` one of `server` (`host:port`, required for the pool
    ///   to exist), `pool_size`, `username`, `password`, `database`, `ssl`,
    ///   `ssl.cacertfile`, `ssl.certfile`, `ssl.keyfile`, `ssl.verify`;
    /// - `backend.pgsql.<global>`: `max_returned_count`, `time_range`,
    ///   `msg_retention`, `batch_size`, `store_timeout`, `arrival_property`,
    ///   `backlog_limit`, `backlog_interval`, `msg_partition`,
    ///   `msg_delete_acked`, `position_flush_interval`;
    /// - `backend.pgsql.msg_retention.<N>`: retention by topic filter
    ///   (see [`TopicRetention`]);
    /// - `backend.pgsql.hook.<hookpoint>.<N>`: a rule (see [`Rule::from_entry`]).
    pub fn from_conf(conf: &ConfFile) -> Result<PgsqlConfig, ConfError> {
        let r = Reader { conf };
        let mut cfg = PgsqlConfig {
            file: conf.path.clone(),
            pools: BTreeMap::new(),
            max_returned_count: DEFAULT_MAX_RETURNED_COUNT,
            time_range: None,
            msg_retention: Some(DEFAULT_MSG_RETENTION),
            topic_retention: Vec::new(),
            arrival_property: None,
            batch_size: DEFAULT_BATCH_SIZE,
            store_timeout: DEFAULT_STORE_TIMEOUT,
            backlog_limit: None,
            backlog_interval: DEFAULT_BACKLOG_INTERVAL,
            msg_partition: None,
            msg_delete_acked: None,
            position_flush_interval: DEFAULT_POSITION_FLUSH_INTERVAL,
            rules: Vec::new(),
        };
        let mut pool_entries: BTreeMap<&str, Vec<(&str, &ConfEntry)>> = BTreeMap::new();
        let mut rule_entries: Vec<&ConfEntry> = Vec::new();

        for e in &conf.entries {
            let unknown = || {
                conf.error(
                    e,
                    format!(
                        "unknown key; expected `backend.pgsql.<pool>.<setting>` (settings: {}), \
                         `backend.pgsql.<global>` (globals: {}) or `{RULE_KEY_PREFIX}<hookpoint>.<N>`",
                        POOL_SETTINGS.join(", "),
                        GLOBALS.join(", ")
                    ),
                )
            };
            let Some(rest) = e.key.strip_prefix(KEY_PREFIX) else {
                return Err(unknown());
            };
            if e.key.starts_with(RULE_KEY_PREFIX) {
                rule_entries.push(e);
                continue;
            }
            if let Some(n) = rest.strip_prefix("msg_retention.") {
                let rule = TopicRetention::from_entry(conf, e, n)?;
                if let Some(other) = cfg.topic_retention.iter().find(|o| o.n == rule.n) {
                    return Err(conf.error(
                        e,
                        format!("retention rule {} is already set on line {}", rule.n, other.line),
                    ));
                }
                cfg.topic_retention.push(rule);
                continue;
            }
            match rest {
                "max_returned_count" => cfg.max_returned_count = r.positive_usize(e)?,
                "time_range" => cfg.time_range = Some(r.positive_duration(e)?),
                "msg_retention" => {
                    cfg.msg_retention = conf.parse_duration_or_infinity(e)?;
                    if cfg.msg_retention.is_some_and(|d| d.is_zero()) {
                        return Err(conf.error(
                            e,
                            "expected `infinity` or a duration greater than 0 such as `7d`, got `0`",
                        ));
                    }
                }
                "batch_size" => cfg.batch_size = r.positive_usize(e)?,
                "store_timeout" => cfg.store_timeout = r.positive_duration(e)?,
                "position_flush_interval" => cfg.position_flush_interval = r.positive_duration(e)?,
                "arrival_property" => {
                    if e.value.is_empty() || e.value.chars().any(char::is_control) {
                        return Err(conf.error(
                            e,
                            "expected the name of an MQTT 5 user property, such as `stored-at`",
                        ));
                    }
                    cfg.arrival_property = Some(e.value.clone());
                }
                "backlog_limit" => {
                    cfg.backlog_limit = match e.value.as_str() {
                        "off" => None,
                        _ => match conf.parse_u64(e) {
                            Ok(n) if n > 0 => Some(n),
                            _ => {
                                return Err(conf.error(
                                    e,
                                    format!("expected a number greater than 0 or `off`, got `{}`", e.value),
                                ))
                            }
                        },
                    }
                }
                "backlog_interval" => cfg.backlog_interval = r.positive_duration(e)?,
                "msg_delete_acked" => cfg.msg_delete_acked = conf.parse_bool(e)?.then_some(e.line),
                "msg_partition" => {
                    cfg.msg_partition = match e.value.as_str() {
                        "off" => None,
                        _ => match conf.parse_duration(e) {
                            Ok(d) if d >= Duration::from_secs(1) && d.subsec_nanos() == 0 => Some(d),
                            _ => {
                                return Err(conf.error(
                                    e,
                                    format!(
                                        "expected `off` or a partition width in whole seconds, at least 1s, \
                                         such as `1d` or `6h`, got `{}`",
                                        e.value
                                    ),
                                ))
                            }
                        },
                    }
                }
                _ => {
                    let Some((pool, setting)) = rest.split_once('.') else {
                        return Err(unknown());
                    };
                    if pool.is_empty() || !pool.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                        return Err(conf.error(
                            e,
                            format!(
                                "invalid pool name `{pool}`: pool names are made of letters, digits and `_`"
                            ),
                        ));
                    }
                    if GLOBALS.contains(&pool) || pool == "hook" {
                        return Err(conf.error(
                            e,
                            format!(
                                "`{pool}` cannot be a pool name: `backend.pgsql.{pool}` is a {}",
                                if pool == "hook" {
                                    "rule prefix"
                                } else {
                                    "global setting"
                                }
                            ),
                        ));
                    }
                    if !POOL_SETTINGS.contains(&setting) {
                        return Err(conf.error(
                            e,
                            format!(
                                "unknown pool setting `{setting}`; the settings of a pool are: {}",
                                POOL_SETTINGS.join(", ")
                            ),
                        ));
                    }
                    pool_entries.entry(pool).or_default().push((setting, e));
                }
            }
        }

        for (name, entries) in &pool_entries {
            let Some((_, server)) = entries.iter().find(|(s, _)| *s == "server") else {
                // Report the pool's first key in file order.
                let first = entries.iter().map(|(_, e)| *e).min_by_key(|e| e.line);
                let Some(first) = first else { continue };
                return Err(conf.error(
                    first,
                    format!(
                        "pool `{name}` has no server: a pool is defined by its `backend.pgsql.{name}.server = \
                         host:port` key"
                    ),
                ));
            };
            let pool = pool_from_settings(conf, name, &format!("{KEY_PREFIX}{name}."), server, entries)?;
            cfg.pools.insert(name.to_string(), pool);
        }

        let pool_names: Vec<&str> = cfg.pools.keys().map(String::as_str).collect();
        for e in rule_entries {
            let rule = Rule::from_entry(conf, e, &pool_names)?;
            if let Some(other) = cfg.rules.iter().find(|o| o.hook == rule.hook && o.n == rule.n) {
                return Err(conf.error(
                    e,
                    format!(
                        "rule {} of {} is already set by `{}` on line {}",
                        rule.n, rule.hook, other.key, other.line
                    ),
                ));
            }
            cfg.rules.push(rule);
        }
        cfg.rules.sort_by_key(|rule| (rule.hook, rule.n));
        if let Some(line) = cfg.msg_delete_acked {
            let fetches = cfg.rules.iter().any(|r| {
                matches!(
                    r.action,
                    crate::rules::Action::Function(crate::rules::Function::OnMessageFetch)
                )
            });
            if !fetches {
                if let Some(e) = conf.entries.iter().find(|e| e.line == line) {
                    return Err(conf.error(
                        e,
                        "`msg_delete_acked = on` needs an `on_message_fetch` rule: without read \
                         positions every stored message would count as acknowledged",
                    ));
                }
            }
        }
        cfg.topic_retention.sort_by_key(|r| r.n);
        Ok(cfg)
    }
}

mod retention;
pub use retention::TopicRetention;

#[cfg(test)]
mod tests;
