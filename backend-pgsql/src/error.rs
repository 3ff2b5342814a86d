//! The plugin's errors, with context: which pool, which rule, which SQL.

/// A database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PgsqlError {
    /// No connection could be had from a pool.
    #[error("pool `{pool}` ({addr}): cannot get a connection: {source}")]
    Pool {
        /// Pool name.
        pool: String,
        /// host:port.
        addr: String,
        /// The pool's error.
        source: deadpool_postgres::PoolError,
    },
    /// A statement failed.
    #[error("{what}: {source}")]
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
}

impl PgsqlError {
    /// Wraps a tokio-postgres error with what was being done.
    pub fn query(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> PgsqlError {
        let what = what.into();
        move |source| PgsqlError::Query { what, source }
    }
}
