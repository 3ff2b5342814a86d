//! The plugin's errors, with context: which pool, which rule, which SQL.

/// A database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PgsqlError {
    /// No connection could be had from a pool.
    #[error("pool `{pool}` ({addr}): cannot get a connection: {}", crate::error_chain(.source))]
    Pool {
        /// Pool name.
        pool: String,
        /// host:port.
        addr: String,
        /// The pool's error.
        source: deadpool_postgres::PoolError,
    },
    /// A statement failed. (Shown with the server's message: tokio-postgres
    /// says only "db error" and keeps the reason in its source.)
    #[error("{what}: {}", crate::error_chain(.source))]
    Query {
        /// What was being done (the statement or its purpose).
        what: String,
        /// PostgreSQL's error.
        source: tokio_postgres::Error,
    },
    /// A batch could not be stored (the database error, as text, shared by the batch).
    #[error("not stored: {0}")]
    Store(String),
    /// The writer task is gone (plugin stopping) or its queue is full.
    #[error("the message writer is not accepting messages")]
    WriterGone,
    /// The pool's database has not answered since the broker started (its
    /// schema is not known yet).
    #[error("pool `{pool}`: PostgreSQL has not answered since startup")]
    NotConnected {
        /// Pool name.
        pool: String,
    },
}

impl PgsqlError {
    /// Wraps a tokio-postgres error with what was being done.
    pub fn query(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> PgsqlError {
        let what = what.into();
        move |source| PgsqlError::Query { what, source }
    }

    /// True when the work failed because the database could not do it now
    /// (unreachable, restarting, out of connections or disk, a conflict with
    /// another transaction) and the same work can succeed later unchanged;
    /// false when the statement or its data are at fault (a value too long for
    /// its column, a constraint), which trying again cannot fix.
    pub fn is_transient(&self) -> bool {
        match self {
            PgsqlError::Pool { .. } | PgsqlError::NotConnected { .. } => true,
            // No SQLSTATE: the connection closed, an I/O error or a time-out.
            PgsqlError::Query { source, .. } => {
                source.code().is_none_or(|state| transient_state(state.code()))
            }
            PgsqlError::Store(_) | PgsqlError::WriterGone => false,
        }
    }

    /// At startup: true when the database did not answer (refused, timed
    /// out, starting up or shutting down), so the plugin starts without it
    /// and connects when it answers; false when it answered with a refusal
    /// that waiting cannot fix (a wrong password or database name, a server
    /// certificate that does not verify), which stops startup.
    pub fn is_unreachable(&self) -> bool {
        match self {
            PgsqlError::Pool { source, .. } => match source {
                deadpool_postgres::PoolError::Backend(e) => match e.code() {
                    Some(_) => self.is_transient_code(),
                    None => io_kind(e).is_some_and(|k| k != std::io::ErrorKind::InvalidData),
                },
                deadpool_postgres::PoolError::Timeout(_) => true,
                _ => false,
            },
            PgsqlError::Query { .. } | PgsqlError::NotConnected { .. } => self.is_transient(),
            PgsqlError::Store(_) | PgsqlError::WriterGone => false,
        }
    }

    /// The SQLSTATE of a backend error is one of the transient classes.
    fn is_transient_code(&self) -> bool {
        let code = match self {
            PgsqlError::Pool {
                source: deadpool_postgres::PoolError::Backend(e),
                ..
            }
            | PgsqlError::Query { source: e, .. } => e.code(),
            _ => None,
        };
        code.is_some_and(|state| transient_state(state.code()))
    }
}

/// 08 connection, 40 rollback (serialization, deadlock), 53 resources (disk
/// full, too many connections), 55 object in use, 57 operator intervention
/// (shutdown, starting up, cancel), 58 system (I/O); 25006: read-only
/// transaction (a standby not yet promoted).
fn transient_state(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "40" | "53" | "55" | "57" | "58")) || code == "25006"
}

/// The kind of the I/O error behind a tokio-postgres error, if any (TLS
/// failures show as `InvalidData`).
fn io_kind(e: &tokio_postgres::Error) -> Option<std::io::ErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(inner) = cur {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = inner.source();
    }
    None
}
