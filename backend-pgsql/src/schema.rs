//! The schema: versioned migrations from `sql/`, applied at start, and the
//! column types of the tables in use (ours, or EMQX's documented ones).

use std::sync::Arc;

use tokio::sync::watch;
use tokio_postgres::types::Type;

use crate::error::PgsqlError;

/// Migrations, in order. Each is idempotent on its own as well.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "offline_messages",
        include_str!("../../sql/V1__offline_messages.sql"),
    ),
    (
        2,
        "message_properties",
        include_str!("../../sql/V2__message_properties.sql"),
    ),
    (3, "sessions", include_str!("../../sql/V3__sessions.sql")),
    (4, "acked_above", include_str!("../../sql/V4__acked_above.sql")),
    (5, "backlog_view", include_str!("../../sql/V5__backlog_view.sql")),
    (6, "share_claims", include_str!("../../sql/V6__share_claims.sql")),
];

/// The columns V2 adds to `mqtt_msg` and `mqtt_retain` for MQTT 5 message
/// expiry and properties. A table has them all or is used without them.
pub const PROPERTY_COLUMNS: [&str; 6] = [
    "expires_at",
    "payload_format",
    "content_type",
    "response_topic",
    "correlation_data",
    "user_properties",
];

/// Arbitrary constant for the migration lock ("postbox1").
pub(crate) const MIGRATION_LOCK: i64 = 0x706f_7374_626f_7831;

/// What the tables look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaInfo {
    /// `mqtt_msg.payload` is `bytea` (false: `text`, EMQX's schema).
    pub payload_bytea: bool,
    /// `mqtt_retain.payload` is `bytea`.
    pub retain_payload_bytea: bool,
    /// `mqtt_msg` has every [`PROPERTY_COLUMNS`] column: message expiry and
    /// MQTT 5 properties are stored and replayed. False (tables made by hand
    /// from EMQX's schema after the migrations were recorded, say): they are
    /// not kept, and every message is replayed as if it never expired.
    pub message_properties: bool,
    /// `mqtt_retain` has every [`PROPERTY_COLUMNS`] column (the same for
    /// retained messages).
    pub retain_properties: bool,
    /// `mqtt_sub.session` exists (schema V3): rows of persistent sessions are
    /// told apart from EMQX's provisioned ones.
    pub sub_session: bool,
    /// `mqtt_acked.acked_above` exists (schema V4): what a client acknowledged
    /// above its position is recorded, so a session that moves to another
    /// node (or a restarted broker) does not deliver it again.
    pub acked_above: bool,
}

/// The schema of one pool's database, once known. A broker that starts
/// while PostgreSQL is unreachable learns it when the database first
/// answers; until then what needs it waits (the writer) or fails and is
/// retried (offline fetch).
#[derive(Clone, Debug)]
pub struct SchemaCell(Arc<watch::Sender<Option<SchemaInfo>>>);

impl Default for SchemaCell {
    fn default() -> Self {
        SchemaCell(Arc::new(watch::Sender::new(None)))
    }
}

impl SchemaCell {
    /// The schema, if known yet.
    pub fn get(&self) -> Option<SchemaInfo> {
        *self.0.borrow()
    }

    /// Records the schema (and wakes whoever waits for it).
    pub fn set(&self, info: SchemaInfo) {
        self.0.send_replace(Some(info));
    }

    /// The schema, once known.
    pub async fn wait(&self) -> SchemaInfo {
        let mut rx = self.0.subscribe();
        loop {
            if let Some(info) = *rx.borrow_and_update() {
                return info;
            }
            // The sender lives in `self`: changed() cannot fail while we wait.
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The schema, or the error that says the database has not answered yet.
    pub fn ready(&self, pool: &str) -> Result<SchemaInfo, PgsqlError> {
        self.get().ok_or_else(|| PgsqlError::NotConnected {
            pool: pool.to_string(),
        })
    }
}

/// Applies missing migrations in one transaction under an advisory lock, so
/// several brokers starting together apply each once. Returns the versions applied.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<Vec<i32>, PgsqlError> {
    let tx = client
        .transaction()
        .await
        .map_err(PgsqlError::query("BEGIN (migrations)"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(PgsqlError::query("pg_advisory_xact_lock (migrations)"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS postbox_schema_version (
            version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(PgsqlError::query("create postbox_schema_version"))?;
    let rows = tx
        .query("SELECT version FROM postbox_schema_version", &[])
        .await
        .map_err(PgsqlError::query("read postbox_schema_version"))?;
    let done: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(PgsqlError::query(format!("migration V{version}__{name}")))?;
        tx.execute(
            "INSERT INTO postbox_schema_version (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(PgsqlError::query("record migration"))?;
        applied.push(*version);
    }
    tx.commit()
        .await
        .map_err(PgsqlError::query("COMMIT (migrations)"))?;
    Ok(applied)
}

/// Reads the payload column types and whether the property columns exist.
///
/// What the tables hold is checked, not what `postbox_schema_version` says:
/// tables dropped and made again by hand keep the recorded version.
pub async fn detect(client: &tokio_postgres::Client) -> Result<SchemaInfo, PgsqlError> {
    let mut wanted = vec!["payload", "session", "acked_above"];
    wanted.extend(PROPERTY_COLUMNS);
    let rows = client
        .query_typed(
            "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND column_name::text = ANY($1)
               AND table_name IN ('mqtt_msg', 'mqtt_retain', 'mqtt_sub', 'mqtt_acked')",
            &[(&wanted, Type::TEXT_ARRAY)],
        )
        .await
        .map_err(PgsqlError::query("detect column types"))?;
    let mut columns = Vec::with_capacity(rows.len());
    for r in &rows {
        let get = |i| {
            r.try_get::<_, String>(i)
                .map_err(PgsqlError::query("detect column types"))
        };
        columns.push((get(0)?, get(1)?, get(2)?));
    }
    Ok(info_from_columns(&columns))
}

/// [`SchemaInfo`] from (table, column, data type) rows.
fn info_from_columns(columns: &[(String, String, String)]) -> SchemaInfo {
    let is_bytea = |table: &str| {
        columns
            .iter()
            .any(|(t, c, ty)| t == table && c == "payload" && ty == "bytea")
    };
    let has_properties = |table: &str| {
        PROPERTY_COLUMNS
            .iter()
            .all(|want| columns.iter().any(|(t, c, _)| t == table && c == want))
    };
    SchemaInfo {
        payload_bytea: is_bytea("mqtt_msg"),
        retain_payload_bytea: is_bytea("mqtt_retain"),
        message_properties: has_properties("mqtt_msg"),
        retain_properties: has_properties("mqtt_retain"),
        sub_session: columns.iter().any(|(t, c, _)| t == "mqtt_sub" && c == "session"),
        acked_above: columns
            .iter()
            .any(|(t, c, _)| t == "mqtt_acked" && c == "acked_above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(t: &str, c: &str, ty: &str) -> (String, String, String) {
        (t.into(), c.into(), ty.into())
    }

    #[test]
    fn properties_need_every_column() {
        let mut cols = vec![col("mqtt_msg", "payload", "text")];
        cols.extend(PROPERTY_COLUMNS.iter().map(|c| col("mqtt_msg", c, "x")));
        let info = info_from_columns(&cols);
        assert!(info.message_properties && !info.payload_bytea);
        assert!(!info.retain_properties, "mqtt_retain has none of them");
        cols.retain(|(_, c, _)| c != "user_properties");
        assert!(
            !info_from_columns(&cols).message_properties,
            "one missing is none"
        );
    }
}
