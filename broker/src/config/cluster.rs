//! The `cluster.*` keys: several Postbox nodes on one PostgreSQL behave as
//! one broker (see `crate::cluster`).
//!
//! | key | value | default |
//! |---|---|---|
//! | `cluster.enable` | boolean | `false` |
//! | `cluster.database` | PostgreSQL URL, `postgres://user[:password]@host[:port]/database` | required when enabled |
//! | `cluster.listen` | `ip:port` the other nodes connect to (port 0: any free port) | `0.0.0.0:4370` |
//! | `cluster.advertise` | `host:port` given to the other nodes | the listen address (its port once bound; `127.0.0.1` for `0.0.0.0`) |
//! | `cluster.secret` | the shared secret nodes authenticate to each other with | required when enabled |
//! | `cluster.heartbeat` | duration > 0 | `1s` |
//! | `cluster.node_timeout` | duration > heartbeat: a node silent this long is down | `5s` |

use std::net::SocketAddr;
use std::time::Duration;

use hooks_spec::{ConfEntry, ConfError, ConfFile};

use super::{positive_duration, shown};

/// The cluster settings, when `cluster.enable = true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `cluster.database`: where the nodes keep membership, routes and
    /// client ownership.
    pub database: String,
    /// `cluster.listen`: the inter-node listener.
    pub listen: SocketAddr,
    /// `cluster.advertise`: the address the other nodes use for this one.
    pub advertise: Option<String>,
    /// `cluster.secret`.
    pub secret: String,
    /// `cluster.heartbeat`: how often a node says it is alive.
    pub heartbeat: Duration,
    /// `cluster.node_timeout`: a node silent this long is declared down.
    pub node_timeout: Duration,
}

/// The `cluster.*` lines while the file is read.
#[derive(Default)]
pub(super) struct Draft<'a> {
    enable: Option<(&'a ConfEntry, bool)>,
    database: Option<String>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    secret: Option<String>,
    heartbeat: Option<Duration>,
    node_timeout: Option<(&'a ConfEntry, Duration)>,
}

impl<'a> Draft<'a> {
    /// Takes a `cluster.*` line; false for another key.
    pub(super) fn take(&mut self, conf: &ConfFile, e: &'a ConfEntry) -> Result<bool, ConfError> {
        match e.key.as_str() {
            "cluster.enable" => self.enable = Some((e, conf.parse_bool(e)?)),
            "cluster.database" => {
                if e.value.parse::<tokio_postgres::Config>().is_err() {
                    return Err(conf.error(
                        e,
                        format!(
                            "expected a PostgreSQL URL such as `postgres://postgres@127.0.0.1:5432/mqtt`, got {}",
                            shown(&e.value)
                        ),
                    ));
                }
                self.database = Some(e.value.clone());
            }
            "cluster.listen" => {
                self.listen = Some(e.value.parse().map_err(|_| {
                    conf.error(
                        e,
                        format!(
                            "expected ip:port, such as `0.0.0.0:4370`, got {}",
                            shown(&e.value)
                        ),
                    )
                })?);
            }
            "cluster.advertise" => {
                if !e.value.contains(':') || e.value.chars().any(char::is_whitespace) {
                    return Err(conf.error(
                        e,
                        format!(
                            "expected host:port, such as `10.0.0.5:4370`, got {}",
                            shown(&e.value)
                        ),
                    ));
                }
                self.advertise = Some(e.value.clone());
            }
            "cluster.secret" => {
                if e.value.is_empty() {
                    return Err(conf.error(e, "expected a secret, got an empty value"));
                }
                self.secret = Some(e.value.clone());
            }
            "cluster.heartbeat" => self.heartbeat = Some(positive_duration(conf, e)?),
            "cluster.node_timeout" => self.node_timeout = Some((e, positive_duration(conf, e)?)),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The cluster settings, when enabled.
    pub(super) fn finish(self, conf: &ConfFile) -> Result<Option<ClusterConfig>, ConfError> {
        let Some((enable_line, true)) = self.enable else {
            return Ok(None);
        };
        let database = self.database.ok_or_else(|| {
            conf.error(
                enable_line,
                "a cluster needs `cluster.database` (the PostgreSQL the nodes share)",
            )
        })?;
        let secret = self.secret.ok_or_else(|| {
            conf.error(
                enable_line,
                "a cluster needs `cluster.secret` (nodes authenticate to each other with it)",
            )
        })?;
        let heartbeat = self.heartbeat.unwrap_or(Duration::from_secs(1));
        let node_timeout = match self.node_timeout {
            Some((e, t)) if t <= heartbeat => {
                return Err(conf.error(
                    e,
                    format!(
                        "expected more than `cluster.heartbeat` ({heartbeat:?}), got {}",
                        shown(&e.value)
                    ),
                ))
            }
            Some((_, t)) => t,
            None => Duration::from_secs(5).max(heartbeat * 3),
        };
        Ok(Some(ClusterConfig {
            database,
            listen: self.listen.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 4370))),
            advertise: self.advertise,
            secret,
            heartbeat,
            node_timeout,
        }))
    }
}
