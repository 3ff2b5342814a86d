//! Running the configured queries and reading their columns.
//!
//! Every parameter is declared `text` and sent as the client's value (or
//! NULL), so a column of another type is compared through an explicit cast
//! the operator writes (`ipaddr = ${peerhost}::inet`). Queries run as unnamed
//! statements (`query_typed`): nothing is kept prepared on a connection, so
//! they work behind a transaction-pooling proxy and after reconnects. At
//! start each query is prepared once, to refuse SQL that cannot work and to
//! check the columns it returns.

use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::Row;

use super::query::Query;
use crate::error::PgsqlError;
use crate::pool::NamedPool;

/// What a query's result columns must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// Text (`text`, `varchar`, `char`, `name`).
    Text,
    /// A flag or small number: `boolean`, an integer type, or text holding one.
    IntLike,
}

impl ColumnKind {
    fn accepts(self, ty: &Type) -> bool {
        match self {
            ColumnKind::Text => <String as FromSql>::accepts(ty),
            ColumnKind::IntLike => {
                matches!(*ty, Type::BOOL | Type::INT2 | Type::INT4 | Type::INT8)
                    || <String as FromSql>::accepts(ty)
            }
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ColumnKind::Text => "text (text, varchar, char)",
            ColumnKind::IntLike => "an integer, a boolean or text",
        }
    }
}

/// Prepares `query` and checks its result has at least `columns.len()`
/// columns of those kinds (the names in `what` are for the message).
pub async fn check(pool: &NamedPool, query: &Query, columns: &[(&str, ColumnKind)]) -> Result<(), String> {
    let conn = pool.get().await.map_err(|e| crate::error_chain(&e))?;
    let types = vec![Type::TEXT; query.params.len()];
    let stmt = conn
        .prepare_typed(&query.sql, &types)
        .await
        .map_err(|e| format!("cannot be prepared: {}", crate::error_chain(&e)))?;
    let got = stmt.columns();
    if got.len() < columns.len() {
        let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
        return Err(format!(
            "returns {} column(s); it must return at least {} ({}, in this order)",
            got.len(),
            columns.len(),
            names.join(", ")
        ));
    }
    for (i, ((name, kind), col)) in columns.iter().zip(got).enumerate() {
        if !kind.accepts(col.type_()) {
            return Err(format!(
                "column {} (`{}`, the {name}) is of type {}; it must be {}",
                i + 1,
                col.name(),
                col.type_(),
                kind.describe()
            ));
        }
    }
    Ok(())
}

/// Runs `query` for one client's values; returns its rows.
pub async fn run(
    pool: &NamedPool,
    key: &str,
    query: &Query,
    values: &[Option<String>],
) -> Result<Vec<Row>, PgsqlError> {
    let conn = pool.get().await?;
    let params: Vec<(&(dyn ToSql + Sync), Type)> = values
        .iter()
        .map(|v| (v as &(dyn ToSql + Sync), Type::TEXT))
        .collect();
    conn.query_typed(&query.sql, &params)
        .await
        .map_err(PgsqlError::query(key.to_string()))
}

/// Column `i` as text (NULL, or no such column: `None`).
pub fn text(row: &Row, i: usize) -> Result<Option<String>, String> {
    if i >= row.len() {
        return Ok(None);
    }
    row.try_get::<_, Option<String>>(i)
        .map_err(|e| format!("column {}: {}", i + 1, crate::error_chain(&e)))
}

/// Column `i` as an integer: booleans are 0/1, text is parsed (`true`/`false` too).
pub fn int_like(row: &Row, i: usize) -> Result<Option<i64>, String> {
    let Some(col) = row.columns().get(i) else {
        return Ok(None);
    };
    let err =
        |e: tokio_postgres::Error| format!("column {} (`{}`): {}", i + 1, col.name(), crate::error_chain(&e));
    Ok(match *col.type_() {
        Type::BOOL => row.try_get::<_, Option<bool>>(i).map_err(err)?.map(i64::from),
        Type::INT2 => row.try_get::<_, Option<i16>>(i).map_err(err)?.map(i64::from),
        Type::INT4 => row.try_get::<_, Option<i32>>(i).map_err(err)?.map(i64::from),
        Type::INT8 => row.try_get::<_, Option<i64>>(i).map_err(err)?,
        _ => match row.try_get::<_, Option<String>>(i).map_err(err)? {
            None => None,
            Some(s) => Some(match s.trim().to_ascii_lowercase().as_str() {
                "true" | "t" => 1,
                "false" | "f" => 0,
                other => other
                    .parse::<i64>()
                    .map_err(|_| format!("column {} (`{}`): `{s}` is not a number", i + 1, col.name()))?,
            }),
        },
    })
}
