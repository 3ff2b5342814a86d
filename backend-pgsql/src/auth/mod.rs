//! # auth_pgsql: authentication and authorization from PostgreSQL
//!
//! A second plugin of this crate, compatible with EMQX 4's `emqx_auth_pgsql`:
//! enabled with `plugins.load = ..., auth_pgsql`, configured in
//! `<plugins.etc_dir>/auth_pgsql.conf` ([`config`]), using the crate's pool
//! and TLS code.
//!
//! - `client.authenticate`: `auth_query` ([`query`]) looks the client up.
//!   No row: no decision (another provider, or `mqtt.allow_anonymous`,
//!   decides). A row: the password is checked against its first column (the
//!   hash) and optional second column (the salt) with `password_hash`
//!   ([`password_hash`]): a match admits the client, a mismatch or a missing
//!   password refuses it. A database error refuses it too (the hook fails,
//!   and a failing authentication callback denies).
//! - `super_query` (optional), run when this plugin admits a client: a true
//!   first column makes it a superuser, whose publishes and subscriptions
//!   skip the ACL: this plugin's and every other provider's (its check runs
//!   first on `client.check_acl`).
//! - `client.check_acl`: `acl_query` reads the client's rows of EMQX's
//!   `mqtt_acl` ([`acl`]); the first matching row decides; none:
//!   `acl_nomatch`. A database error denies.
//!
//! - MQTT 5 enhanced authentication: `SCRAM-SHA-256` / `SCRAM-SHA-512`
//!   over `auth_query`'s users when `password_hash` is `pbkdf2` with sha256
//!   / sha512 or `plain` ([`scram`]).
//!
//! The tables are not created by the plugin: `sql/auth_pgsql.sql` has them.

pub mod acl;
pub mod cache;
pub mod config;
pub mod db;
pub mod password_hash;
pub mod query;
pub mod scram;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use hooks_spec::scram::{ScramMethod, ScramSource};
use hooks_spec::{
    AclAction, AclArgs, AclResult, AuthArgs, AuthResult, ClientInfo, ConnackArgs, DisconnectedArgs, Flow,
    HookError, Hooks, Plugin, PluginContext, PluginError,
};

use self::acl::{AclRow, AclRule, Subject};
use self::cache::ConnCache;
use self::config::{AuthConfig, NoMatch, QuerySetting};
use self::db::ColumnKind;
use crate::pool::{self, NamedPool};

/// The plugin's name in `plugins.load` and its config file (`auth_pgsql.conf`).
pub const NAME: &str = "auth_pgsql";

/// Hook priority: authentication and ACL providers run before plugins that
/// only observe; equal priorities run in `plugins.load` order.
const PRIORITY: i32 = 0;

/// Priority of the superuser check on `client.check_acl`: above every ACL
/// provider's, so a superuser skips them all (EMQX checks `is_superuser`
/// before any ACL source), whatever their order in `plugins.load`.
const SUPERUSER_PRIORITY: i32 = 1_000;

/// The PostgreSQL authentication and ACL plugin.
#[derive(Default)]
pub struct AuthPgsql {
    config: Option<Arc<AuthConfig>>,
}

impl AuthPgsql {
    /// An unconfigured plugin.
    pub fn new() -> AuthPgsql {
        AuthPgsql::default()
    }
}

/// What the callbacks share.
struct Engine {
    cfg: Arc<AuthConfig>,
    pool: NamedPool,
    cache: ConnCache,
}

#[async_trait]
impl Plugin for AuthPgsql {
    fn name(&self) -> &str {
        NAME
    }

    fn load_config(&mut self, path: &Path) -> Result<(), PluginError> {
        self.config = Some(Arc::new(AuthConfig::load(path)?));
        Ok(())
    }

    async fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
        let cfg = self
            .config
            .clone()
            .ok_or_else(|| PluginError::Start("auth_pgsql: configuration not loaded".into()))?;
        let pool = pool::build(&cfg.pool).map_err(|e| PluginError::Start(format!("auth_pgsql: {e}")))?;
        // A database that does not answer does not stop the broker: logins
        // this plugin would decide are refused (fail closed) until it does,
        // and the queries are checked when they first run.
        match pool::check(&pool).await {
            Ok(()) => prepare_all(&cfg, &pool).await?,
            Err(e) if e.is_unreachable() => tracing::error!(
                "auth_pgsql: PostgreSQL at {} does not answer; starting without it (its users cannot \
                 log in until it does): {e}",
                pool.addr
            ),
            Err(e) => {
                return Err(PluginError::Start(format!(
                    "auth_pgsql: cannot reach PostgreSQL at {} (pool `{}`): {}",
                    pool.addr,
                    pool.name,
                    crate::error_chain(&e)
                )))
            }
        }
        let engine = Arc::new(Engine {
            cache: ConnCache::new(cfg.acl_cache_ttl),
            cfg,
            pool,
        });
        register(&engine, &ctx.hooks);
        Ok(())
    }

    async fn stop(&self, hooks: &Hooks) -> Result<(), PluginError> {
        hooks.remove_owner(NAME);
        Ok(())
    }
}

/// Prepares every configured query and checks the columns it returns.
async fn prepare_all(cfg: &AuthConfig, pool: &NamedPool) -> Result<(), PluginError> {
    let auth_columns: &[(&str, ColumnKind)] = if cfg.password_hash.needs_salt() {
        &[("password hash", ColumnKind::Text), ("salt", ColumnKind::Text)]
    } else {
        &[("password hash", ColumnKind::Text)]
    };
    type Columns<'a> = &'a [(&'a str, ColumnKind)];
    let checks: [(&Option<QuerySetting>, Columns<'_>); 3] = [
        (&cfg.auth_query, auth_columns),
        (&cfg.super_query, &[("superuser flag", ColumnKind::IntLike)]),
        (
            &cfg.acl_query,
            &[
                ("allow", ColumnKind::IntLike),
                ("ipaddr", ColumnKind::Text),
                ("username", ColumnKind::Text),
                ("clientid", ColumnKind::Text),
                ("access", ColumnKind::IntLike),
                ("topic", ColumnKind::Text),
            ],
        ),
    ];
    for (setting, columns) in checks {
        if let Some(q) = setting {
            db::check(pool, &q.query, columns).await.map_err(|m| {
                let m = if q.key.ends_with("auth_query") && cfg.password_hash.needs_salt() {
                    format!(
                        "{m} (password_hash = {} reads the salt from the second column)",
                        cfg.password_hash
                    )
                } else {
                    m
                };
                cfg.query_error(q, m)
            })?;
        }
    }
    Ok(())
}

fn register(engine: &Arc<Engine>, hooks: &Hooks) {
    if engine.cfg.auth_query.is_some() {
        let e = Arc::clone(engine);
        hooks
            .client_authenticate
            .add(NAME, PRIORITY, move |args: Arc<AuthArgs>, acc| {
                let e = Arc::clone(&e);
                async move { e.authenticate(&args, acc).await }
            });
        // MQTT 5 enhanced authentication where the stored hashes allow it.
        let methods = scram::offered(engine.cfg.password_hash);
        if !methods.is_empty() {
            let source: Arc<dyn ScramSource> = Arc::new(scram::PgsqlScram(Arc::clone(engine)));
            for alg in &methods {
                hooks
                    .auth_methods
                    .register(NAME, Arc::new(ScramMethod::new(*alg, Arc::clone(&source))));
            }
        }
        let names: Vec<&str> = methods.iter().map(|a| a.method()).collect();
        tracing::info!(password_hash = %engine.cfg.password_hash, methods = ?names,
            "auth_pgsql: enhanced authentication methods offered");
    }
    if engine.cfg.super_query.is_some() {
        let e = Arc::clone(engine);
        hooks
            .client_check_acl
            .add(NAME, SUPERUSER_PRIORITY, move |args: Arc<AclArgs>, acc| {
                let flow = if e.cache.is_superuser(&args.client) {
                    Flow::Stop(AclResult::Allow)
                } else {
                    Flow::Continue(acc)
                };
                std::future::ready(Ok(flow))
            });
    }
    if engine.cfg.acl_query.is_some() {
        let e = Arc::clone(engine);
        hooks
            .client_check_acl
            .add(NAME, PRIORITY, move |args: Arc<AclArgs>, acc| {
                let e = Arc::clone(&e);
                async move { e.check_acl(&args, acc).await }
            });
    }
    // Forget a connection's cached state when it ends or is refused.
    let e = Arc::clone(engine);
    hooks
        .client_disconnected
        .add(NAME, PRIORITY, move |args: Arc<DisconnectedArgs>, ()| {
            e.cache.disconnected(&args.client);
            std::future::ready(Ok(Flow::Continue(())))
        });
    let e = Arc::clone(engine);
    hooks
        .client_connack
        .add(NAME, PRIORITY, move |args: Arc<ConnackArgs>, props| {
            if args.reason_code != 0 && !e.cache.is_empty() {
                e.cache.forget_peer(args.conn.peer);
            }
            std::future::ready(Ok(Flow::Continue(props)))
        });
}

impl Engine {
    async fn authenticate(&self, args: &AuthArgs, acc: AuthResult) -> Result<Flow<AuthResult>, HookError> {
        let Some(q) = &self.cfg.auth_query else {
            return Ok(Flow::Continue(acc));
        };
        let client = &args.client;
        // A new login from this address: whatever was cached for it is gone.
        self.cache.authenticated(client, false);
        let rows = db::run(&self.pool, &q.key, &q.query, &q.query.values(client))
            .await
            .map_err(|e| HookError::new(format!("auth_pgsql: {}", crate::error_chain(&e))))?;
        let Some(row) = rows.first() else {
            tracing::debug!(clientid = %client.clientid, "auth_pgsql: no such user, not deciding");
            return Ok(Flow::Continue(acc));
        };
        let Some(password) = args.password.clone() else {
            tracing::debug!(clientid = %client.clientid, "auth_pgsql: known user without a password: denied");
            return Ok(Flow::Stop(AuthResult::Deny));
        };
        let (stored, salt) = match (db::text(row, 0), db::text(row, 1)) {
            (Ok(Some(stored)), Ok(salt)) => (stored, salt.unwrap_or_default()),
            (Ok(None), _) => {
                tracing::warn!(clientid = %client.clientid, username = ?client.username,
                    "auth_pgsql: the user's stored password hash is NULL: denied");
                return Ok(Flow::Stop(AuthResult::Deny));
            }
            (Err(e), _) | (_, Err(e)) => return Err(HookError::new(format!("auth_pgsql: {}: {e}", q.key))),
        };
        let scheme = self.cfg.password_hash;
        let verdict = if scheme.is_expensive() {
            // bcrypt and PBKDF2 take milliseconds of CPU by design: keep
            // them off the async workers.
            tokio::task::spawn_blocking(move || scheme.verify(&password, &stored, &salt))
                .await
                .map_err(|e| HookError::new(format!("auth_pgsql: password check failed: {e}")))?
        } else {
            scheme.verify(&password, &stored, &salt)
        };
        match verdict {
            Ok(true) => {
                let superuser = self.is_superuser(&args.client).await;
                self.cache.authenticated(client, superuser);
                tracing::debug!(clientid = %client.clientid, superuser, "auth_pgsql: password matches");
                Ok(Flow::Stop(AuthResult::Allow))
            }
            Ok(false) => {
                tracing::debug!(clientid = %client.clientid, "auth_pgsql: wrong password: denied");
                Ok(Flow::Stop(AuthResult::Deny))
            }
            Err(e) => {
                tracing::warn!(clientid = %client.clientid, username = ?client.username,
                    "auth_pgsql: {e} (password_hash = {scheme}): denied");
                Ok(Flow::Stop(AuthResult::Deny))
            }
        }
    }

    /// `super_query` for a client this plugin admitted; an error or no row is "no".
    async fn is_superuser(&self, client: &ClientInfo) -> bool {
        let Some(q) = &self.cfg.super_query else {
            return false;
        };
        let rows = match db::run(&self.pool, &q.key, &q.query, &q.query.values(client)).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(clientid = %client.clientid,
                    "auth_pgsql: {}; treating the client as no superuser", crate::error_chain(&e));
                return false;
            }
        };
        match rows.first().map(|r| db::int_like(r, 0)) {
            Some(Ok(Some(v))) => v != 0,
            Some(Err(e)) => {
                tracing::warn!(clientid = %client.clientid, "auth_pgsql: {}: {e}", q.key);
                false
            }
            _ => false,
        }
    }

    async fn check_acl(&self, args: &AclArgs, acc: AclResult) -> Result<Flow<AclResult>, HookError> {
        let client = &args.client;
        if self.cache.is_superuser(client) {
            return Ok(Flow::Stop(AclResult::Allow));
        }
        let rules = match self.cache.acl_rules(client) {
            Some(rules) => rules,
            None => {
                let rules = Arc::new(self.load_acl(args).await?);
                self.cache.store_acl(client, Arc::clone(&rules));
                rules
            }
        };
        // The ACL is about the filter, not the shared-subscription group (as EMQX).
        let topic = match args.action {
            AclAction::Subscribe => strip_share(&args.topic),
            AclAction::Publish => args.topic.as_str(),
        };
        let who = Subject {
            username: client.username.as_deref(),
            clientid: &client.clientid,
            ip: query::peer_ip(client),
        };
        Ok(match acl::evaluate(&rules, &who, args.action, topic) {
            Some(true) => Flow::Stop(AclResult::Allow),
            Some(false) => Flow::Stop(AclResult::Deny),
            None => match self.cfg.acl_nomatch {
                NoMatch::Allow => Flow::Stop(AclResult::Allow),
                NoMatch::Deny => Flow::Stop(AclResult::Deny),
                NoMatch::Ignore => Flow::Continue(acc),
            },
        })
    }

    /// Reads and compiles the client's ACL rows; a bad row fails the check.
    async fn load_acl(&self, args: &AclArgs) -> Result<Vec<AclRule>, HookError> {
        let Some(q) = &self.cfg.acl_query else {
            return Ok(Vec::new());
        };
        let rows = db::run(&self.pool, &q.key, &q.query, &q.query.values(&args.client))
            .await
            .map_err(|e| HookError::new(format!("auth_pgsql: {}", crate::error_chain(&e))))?;
        rows.iter()
            .enumerate()
            .map(|(i, row)| {
                let read = || -> Result<AclRow, String> {
                    Ok(AclRow {
                        allow: db::int_like(row, 0)?,
                        ipaddr: db::text(row, 1)?,
                        username: db::text(row, 2)?,
                        clientid: db::text(row, 3)?,
                        access: db::int_like(row, 4)?,
                        topic: db::text(row, 5)?,
                    })
                };
                read()
                    .and_then(|r| AclRule::compile(&r).map_err(|e| format!("{e} in {r:?}")))
                    .map_err(|e| HookError::new(format!("auth_pgsql: {}: row {}: {e}", q.key, i + 1)))
            })
            .collect()
    }
}

/// `$share/<group>/<filter>` → `<filter>`.
fn strip_share(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_, f)| f)
}

#[cfg(test)]
mod tests {
    #[test]
    fn share_prefix_is_stripped() {
        assert_eq!(super::strip_share("$share/g/a/b"), "a/b");
        assert_eq!(super::strip_share("a/b"), "a/b");
        assert_eq!(super::strip_share("$share/g"), "$share/g");
    }
}
