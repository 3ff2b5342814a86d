//! Connection pools, one per `backend.pgsql.<pool>` section.
//!
//! deadpool-postgres keeps the connections and replaces broken ones by
//! itself, so a PostgreSQL restart heals without the plugin doing anything.
//! A database that does not answer at startup does not stop the broker (see
//! `connect_pool` in the crate root); one that refuses (wrong password or
//! database, a certificate that does not verify) does, naming its address.

use std::collections::BTreeMap;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::config::PoolConfig;
use crate::error::PgsqlError;

/// A named pool with its address, for messages.
#[derive(Clone)]
pub struct NamedPool {
    /// `pool1`, ...
    pub name: String,
    /// host:port/database.
    pub addr: String,
    /// The pool.
    pub pool: Pool,
}

impl NamedPool {
    /// A connection from the pool, with the pool named in the error.
    pub async fn get(&self) -> Result<deadpool_postgres::Object, PgsqlError> {
        self.pool.get().await.map_err(|source| PgsqlError::Pool {
            pool: self.name.clone(),
            addr: self.addr.clone(),
            source,
        })
    }
}

/// Builds a pool (no connection is made yet).
pub fn build(cfg: &PoolConfig) -> Result<NamedPool, String> {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&cfg.host)
        .port(cfg.port)
        .user(&cfg.username)
        .dbname(&cfg.database);
    pg.application_name("postbox");
    pg.connect_timeout(Duration::from_secs(5));
    if let Some(pw) = &cfg.password {
        pg.password(pw);
    }
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = if cfg.ssl.enabled {
        pg.ssl_mode(tokio_postgres::config::SslMode::Require);
        let tls =
            tokio_postgres_rustls::MakeRustlsConnect::new(crate::tls::client_config(&cfg.ssl, &cfg.name)?);
        Manager::from_config(pg, tls, manager_config)
    } else {
        Manager::from_config(pg, NoTls, manager_config)
    };
    let pool = Pool::builder(manager)
        .max_size(cfg.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| format!("pool `{}`: {e}", cfg.name))?;
    Ok(NamedPool {
        name: cfg.name.clone(),
        addr: format!("{}:{}/{}", cfg.host, cfg.port, cfg.database),
        pool,
    })
}

/// Checks, once, that a pool reaches its database.
pub async fn check(pool: &NamedPool) -> Result<(), PgsqlError> {
    let conn = pool.get().await?;
    conn.simple_query("SELECT 1")
        .await
        .map_err(PgsqlError::query("SELECT 1"))?;
    Ok(())
}

/// Builds every configured pool.
pub fn build_all(pools: &BTreeMap<String, PoolConfig>) -> Result<BTreeMap<String, NamedPool>, String> {
    pools
        .iter()
        .map(|(name, cfg)| Ok((name.clone(), build(cfg)?)))
        .collect()
}
