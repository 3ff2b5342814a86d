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
/// Default `backend.pgsql.max_returned_count`.
pub const DEFAULT_MAX_RETURNED_COUNT: usize = 500;
/// Default `backend.pgsql.msg_retention`: 7 days.
pub const DEFAULT_MSG_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default `backend.pgsql.batch_size`.
pub const DEFAULT_BATCH_SIZE: usize = 1000;
/// Default `backend.pgsql.store_timeout`.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// The global settings (`backend.pgsql.<name>`); none of them can be a pool name.
const GLOBALS: &[&str] = &[
    "max_returned_count",
    "time_range",
    "msg_retention",
    "batch_size",
    "store_timeout",
];

/// The settings of a pool (`backend.pgsql.<pool>.<setting>`).
const POOL_SETTINGS: &[&str] = &[
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
    /// (default 7 days; `None` for `infinity`: kept for ever).
    pub msg_retention: Option<Duration>,
    /// `backend.pgsql.batch_size`: the most messages written in one statement
    /// (group commit; default 1000; 1 = one INSERT per message).
    pub batch_size: usize,
    /// `backend.pgsql.store_timeout`: how long storing a message may take
    /// before the publisher is told it was not stored (default 5s).
    pub store_timeout: Duration,
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
    ///   `msg_retention`, `batch_size`, `store_timeout`;
    /// - `backend.pgsql.hook.<hookpoint>.<N>`: a rule (see [`Rule::from_entry`]).
    pub fn from_conf(conf: &ConfFile) -> Result<PgsqlConfig, ConfError> {
        let r = Reader { conf };
        let mut cfg = PgsqlConfig {
            file: conf.path.clone(),
            pools: BTreeMap::new(),
            max_returned_count: DEFAULT_MAX_RETURNED_COUNT,
            time_range: None,
            msg_retention: Some(DEFAULT_MSG_RETENTION),
            batch_size: DEFAULT_BATCH_SIZE,
            store_timeout: DEFAULT_STORE_TIMEOUT,
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
                        format!(
                            "a client certificate needs both files: set `backend.pgsql.{name}.{need}` as well"
                        ),
                    ));
                }
            }
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
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(c.max_returned_count, 500);
        assert_eq!(c.time_range, None);
        assert_eq!(c.msg_retention, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(c.batch_size, 1000);
        assert_eq!(c.store_timeout, Duration::from_secs(5));
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
             backend.pgsql.store_timeout = 500ms\n");
        assert_eq!(c.max_returned_count, 10);
        assert_eq!(c.time_range, Some(Duration::from_secs(7200)));
        assert_eq!(c.msg_retention, None);
        assert_eq!(c.batch_size, 1);
        assert_eq!(c.store_timeout, Duration::from_millis(500));
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
        assert_eq!(c.max_returned_count, 500);
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
}
