//! `auth_pgsql.conf`: EMQX 4's `auth.pgsql.*` keys.
//!
//! The connection keys (`server`, `username`, `password`, `database`, `pool`,
//! `ssl`, `ssl.cacertfile`, `ssl.certfile`, `ssl.keyfile`, `ssl.verify`) mean
//! what they mean for a `backend_pgsql` pool, and are parsed by the same code
//! ([`crate::config::pool_from_settings`]); `pool` is the pool size, as in
//! EMQX. Every error names the file, the line and the key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hooks_spec::conf::{ConfEntry, ConfError, ConfFile};

use super::password_hash::HashScheme;
use super::query::{self, Query};
use crate::config::{pool_from_settings, PoolConfig, POOL_SETTINGS};

/// The prefix of every key of the file.
pub const KEY_PREFIX: &str = "auth.pgsql.";
/// Default `auth.pgsql.auth_query`.
pub const DEFAULT_AUTH_QUERY: &str =
    "select password_hash, salt from mqtt_user where username = ${username} limit 1";
/// Default `auth.pgsql.acl_query` (EMQX's).
pub const DEFAULT_ACL_QUERY: &str = "select allow, ipaddr, username, clientid, access, topic from mqtt_acl \
     where ipaddr = ${peerhost} or username = ${username} or username = '$all' or clientid = ${clientid}";
/// Default `auth.pgsql.password_hash` (EMQX 4's).
pub const DEFAULT_PASSWORD_HASH: &str = "sha256";
/// Default `auth.pgsql.acl_cache_ttl`: as EMQX's `acl_cache_ttl`.
pub const DEFAULT_ACL_CACHE_TTL: Duration = Duration::from_secs(60);

/// The keys besides the connection settings.
const KEYS: &[&str] = &[
    "auth_query",
    "password_hash",
    "super_query",
    "acl_query",
    "acl_nomatch",
    "acl_cache_ttl",
    "encoding",
];

/// What a check decides when no ACL row matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoMatch {
    /// `allow`.
    Allow,
    /// `deny`.
    Deny,
    /// `ignore`: no decision; the next ACL provider, or the broker's default (allow).
    Ignore,
}

/// One query setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuerySetting {
    /// The key (`auth.pgsql.auth_query`, ...).
    pub key: String,
    /// Its line; 0 when the default is used.
    pub line: usize,
    /// The parsed query.
    pub query: Query,
}

/// The plugin's configuration.
#[derive(Clone, PartialEq)]
pub struct AuthConfig {
    /// The file it was read from.
    pub file: PathBuf,
    /// The connection pool (named `auth_pgsql` in messages).
    pub pool: PoolConfig,
    /// `auth_query`; `None` (empty value) turns authentication off.
    pub auth_query: Option<QuerySetting>,
    /// `password_hash`.
    pub password_hash: HashScheme,
    /// `super_query`, if set.
    pub super_query: Option<QuerySetting>,
    /// `acl_query`; `None` (empty value) turns authorization off.
    pub acl_query: Option<QuerySetting>,
    /// `acl_nomatch`.
    pub acl_nomatch: NoMatch,
    /// `acl_cache_ttl`: how long a connection reuses its ACL rows (zero: never).
    pub acl_cache_ttl: Duration,
}

impl fmt::Debug for AuthConfig {
    /// The pool's `Debug` hides the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("file", &self.file)
            .field("pool", &self.pool)
            .field("auth_query", &self.auth_query)
            .field("password_hash", &self.password_hash)
            .field("super_query", &self.super_query)
            .field("acl_query", &self.acl_query)
            .field("acl_nomatch", &self.acl_nomatch)
            .field("acl_cache_ttl", &self.acl_cache_ttl)
            .finish()
    }
}

impl AuthConfig {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<AuthConfig, ConfError> {
        AuthConfig::from_conf(&ConfFile::load(path)?)
    }

    /// Validates an already parsed file.
    pub fn from_conf(conf: &ConfFile) -> Result<AuthConfig, ConfError> {
        let mut pool_entries: Vec<(&str, &ConfEntry)> = Vec::new();
        let mut server = None;
        let mut get = std::collections::BTreeMap::new();
        for e in &conf.entries {
            let rest = e.key.strip_prefix(KEY_PREFIX).unwrap_or("");
            match rest {
                "server" => server = Some(e),
                "pool" => pool_entries.push(("pool_size", e)),
                // `pool_size` is backend_pgsql's name: EMQX's auth plugin says `pool`.
                s if s != "pool_size" && POOL_SETTINGS.contains(&s) => pool_entries.push((s, e)),
                s if KEYS.contains(&s) => {
                    get.insert(s, e);
                }
                _ => {
                    let mut known: Vec<&str> = POOL_SETTINGS
                        .iter()
                        .copied()
                        .map(|k| if k == "pool_size" { "pool" } else { k })
                        .collect();
                    known.extend_from_slice(KEYS);
                    return Err(conf.error(
                        e,
                        format!(
                            "unknown key; the keys are `{KEY_PREFIX}<name>` with <name> one of: {}",
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
        let Some(server) = server else {
            return Err(ConfError::file_error(
                &conf.path,
                format!("`{KEY_PREFIX}server` is not set: write `{KEY_PREFIX}server = host:port`"),
            ));
        };
        let pool = pool_from_settings(conf, "auth_pgsql", KEY_PREFIX, server, &pool_entries)?;
        if pool.ssl.enabled && pool.ssl.verify && pool.ssl.cacertfile.is_none() {
            let e = pool_entries
                .iter()
                .find(|(k, _)| *k == "ssl")
                .map_or(server, |(_, e)| *e);
            return Err(conf.error(
                e,
                format!(
                    "TLS with verification needs `{KEY_PREFIX}ssl.cacertfile` (or `{KEY_PREFIX}ssl.verify = false` \
                     to encrypt without checking the server)"
                ),
            ));
        }

        if let Some(e) = get.get("encoding") {
            if !e.value.eq_ignore_ascii_case("utf8") {
                return Err(conf.error(e, format!("only `utf8` is supported, got `{}`", e.value)));
            }
        }
        let query_setting = |name: &str, default: Option<&str>| -> Result<Option<QuerySetting>, ConfError> {
            let key = format!("{KEY_PREFIX}{name}");
            let (text, line) = match get.get(name) {
                Some(e) => (e.value.as_str(), e.line),
                None => match default {
                    Some(d) => (d, 0),
                    None => return Ok(None),
                },
            };
            if text.trim().is_empty() {
                return Ok(None);
            }
            let query = query::parse(text).map_err(|m| match get.get(name) {
                Some(e) => conf.error(e, m),
                None => ConfError::file_error(&conf.path, format!("`{key}` (default): {m}")),
            })?;
            Ok(Some(QuerySetting { key, line, query }))
        };
        let auth_query = query_setting("auth_query", Some(DEFAULT_AUTH_QUERY))?;
        let super_query = query_setting("super_query", None)?;
        let acl_query = query_setting("acl_query", Some(DEFAULT_ACL_QUERY))?;
        let password_hash = match get.get("password_hash") {
            Some(e) => HashScheme::parse(&e.value).map_err(|m| conf.error(e, m))?,
            None => {
                HashScheme::parse(DEFAULT_PASSWORD_HASH).map_err(|m| ConfError::file_error(&conf.path, m))?
            }
        };
        let acl_nomatch = match get.get("acl_nomatch") {
            None => NoMatch::Ignore,
            Some(e) => match e.value.as_str() {
                "allow" => NoMatch::Allow,
                "deny" => NoMatch::Deny,
                "ignore" => NoMatch::Ignore,
                other => {
                    return Err(conf.error(e, format!("expected `allow`, `deny` or `ignore`, got `{other}`")))
                }
            },
        };
        let acl_cache_ttl = match get.get("acl_cache_ttl") {
            None => DEFAULT_ACL_CACHE_TTL,
            Some(e) if e.value == "0" => Duration::ZERO,
            Some(e) => conf.parse_duration(e)?,
        };
        Ok(AuthConfig {
            file: conf.path.clone(),
            pool,
            auth_query,
            password_hash,
            super_query,
            acl_query,
            acl_nomatch,
            acl_cache_ttl,
        })
    }

    /// An error about a query setting (names its line, or says the default was used).
    pub fn query_error(&self, q: &QuerySetting, message: impl fmt::Display) -> hooks_spec::PluginError {
        if q.line == 0 {
            hooks_spec::PluginError::ConfigFile {
                file: self.file.clone(),
                message: format!(
                    "`{}` is not set and its default `{}` {message}",
                    q.key, q.query.original
                ),
            }
        } else {
            hooks_spec::PluginError::Config {
                file: self.file.clone(),
                line: q.line,
                key: q.key.clone(),
                message: message.to_string(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AuthConfig, ConfError> {
        AuthConfig::from_conf(&ConfFile::parse(Path::new("/etc/auth_pgsql.conf"), text)?)
    }

    #[test]
    fn defaults_and_emqx_keys() {
        let c = parse("auth.pgsql.server = db:5433\nauth.pgsql.pool = 3\nauth.pgsql.encoding = utf8\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (c.pool.host.as_str(), c.pool.port, c.pool.pool_size),
            ("db", 5433, 3)
        );
        assert_eq!(c.password_hash.to_string(), "sha256");
        assert_eq!(c.acl_nomatch, NoMatch::Ignore);
        assert_eq!(c.auth_query.as_ref().map(|q| q.line), Some(0));
        assert_eq!(
            c.auth_query.map(|q| q.query.sql),
            Some("select password_hash, salt from mqtt_user where username = $1 limit 1".to_string())
        );
        assert!(c.super_query.is_none());
        assert!(c.acl_query.is_some());
        let off = parse("auth.pgsql.server = db\nauth.pgsql.acl_query =\nauth.pgsql.acl_cache_ttl = 0\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(off.acl_query.is_none());
        assert_eq!(off.acl_cache_ttl, Duration::ZERO);
    }

    #[test]
    fn errors_name_line_and_key() {
        let cases = [
            (
                "auth.pgsql.server = db\nauth.pgsql.password_hash = sha3\n",
                2,
                "auth.pgsql.password_hash",
            ),
            (
                "auth.pgsql.server = db\n\nauth.pgsql.acl_nomatch = maybe\n",
                3,
                "auth.pgsql.acl_nomatch",
            ),
            (
                "auth.pgsql.server = db\nauth.pgsql.auth_query = select '${username}x'\n",
                2,
                "auth.pgsql.auth_query",
            ),
            (
                "auth.pgsql.server = db\nauth.pgsql.pool_size = 3\n",
                2,
                "auth.pgsql.pool_size",
            ),
            (
                "auth.pgsql.server = db\nauth.pgsql.pool = 0\n",
                2,
                "auth.pgsql.pool",
            ),
            ("auth.pgsql.server = db:x\n", 1, "auth.pgsql.server"),
            (
                "auth.pgsql.server = db\nauth.pgsql.ssl = true\n",
                2,
                "auth.pgsql.ssl",
            ),
            (
                "auth.pgsql.server = db\nauth.pgsql.ssl.certfile = c.pem\n",
                2,
                "auth.pgsql.ssl.certfile",
            ),
            (
                "auth.pgsql.server = db\nbackend.pgsql.pool1.server = db\n",
                2,
                "backend.pgsql.pool1.server",
            ),
        ];
        for (text, line, key) in cases {
            let e = parse(text)
                .err()
                .unwrap_or_else(|| panic!("{text:?} should be refused"));
            assert_eq!((e.line, e.key.as_str()), (line, key), "{text:?}: {e}");
        }
        let e = parse("auth.pgsql.pool = 3\n")
            .err()
            .unwrap_or_else(|| panic!("no server"));
        assert!(e.to_string().contains("auth.pgsql.server"), "{e}");
    }
}
