//! The `management.*` keys: the HTTP listener that serves `/metrics`,
//! `/status` and the EMQX 4-style management API (`/api/v4`), named as in
//! EMQX 4's `emqx_management.conf`.
//!
//! | key | value | default |
//! |---|---|---|
//! | `management.listener.http` | `ip:port`, or a port (all IPv4 addresses, as EMQX reads it) | off (shipped: `127.0.0.1:8081`) |
//! | `management.default_application.id` | the API's basic-auth user | `admin` |
//! | `management.default_application.secret` | the API's basic-auth password | `public` |
//! | `management.max_row_limit` | the largest `_limit` of a listing, > 0 | `10000` |

use std::net::SocketAddr;

use hooks_spec::{ConfEntry, ConfError, ConfFile};

use super::{positive_usize, shown};

/// The HTTP listener's settings, when `management.listener.http` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementConfig {
    /// `management.listener.http`: where the HTTP listener binds.
    pub listen: SocketAddr,
    /// `management.default_application.id`: the `/api/v4` user (HTTP basic auth).
    pub app_id: String,
    /// `management.default_application.secret`: its password.
    pub app_secret: String,
    /// `management.max_row_limit`: the most rows one listing returns.
    pub max_row_limit: usize,
}

/// The `management.*` lines while the file is read.
#[derive(Default)]
pub(super) struct Draft {
    listen: Option<SocketAddr>,
    app_id: Option<String>,
    app_secret: Option<String>,
    max_row_limit: Option<usize>,
}

impl Draft {
    /// Takes a `management.*` line; false for another key.
    pub(super) fn take(&mut self, conf: &ConfFile, e: &ConfEntry) -> Result<bool, ConfError> {
        match e.key.as_str() {
            "management.listener.http" => {
                let addr = match e.value.parse::<u16>() {
                    Ok(port) => Ok(SocketAddr::from(([0, 0, 0, 0], port))),
                    Err(_) => e.value.parse::<SocketAddr>(),
                };
                self.listen = Some(addr.map_err(|_| {
                    conf.error(
                        e,
                        format!(
                            "expected ip:port or a port, such as `127.0.0.1:8081`, got {}",
                            shown(&e.value)
                        ),
                    )
                })?);
            }
            "management.default_application.id" | "management.default_application.secret" => {
                if e.value.is_empty() {
                    return Err(conf.error(e, "expected a value, got an empty value"));
                }
                if e.key.ends_with(".id") {
                    if e.value.contains(':') {
                        return Err(conf.error(e, "the id cannot contain `:` (HTTP basic auth splits on it)"));
                    }
                    self.app_id = Some(e.value.clone());
                } else {
                    self.app_secret = Some(e.value.clone());
                }
            }
            "management.max_row_limit" => self.max_row_limit = Some(positive_usize(conf, e)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The listener's settings, when one is configured.
    pub(super) fn finish(self) -> Option<ManagementConfig> {
        Some(ManagementConfig {
            listen: self.listen?,
            app_id: self.app_id.unwrap_or_else(|| "admin".to_string()),
            app_secret: self.app_secret.unwrap_or_else(|| "public".to_string()),
            max_row_limit: self.max_row_limit.unwrap_or(10_000),
        })
    }
}
