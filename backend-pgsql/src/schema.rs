//! The schema: versioned migrations from `sql/`, applied at start, and the
//! column types of the tables in use (ours, or EMQX's documented ones).

use std::sync::Arc;

use tokio::sync::watch;

use crate::error::PgsqlError;

/// Migrations, in order. Each is idempotent on its own as well.
const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "offline_messages",
    include_str!("../../sql/V1__offline_messages.sql"),
)];

/// Arbitrary constant for the migration lock ("postbox1").
const MIGRATION_LOCK: i64 = 0x706f_7374_626f_7831;

/// What the tables look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaInfo {
    /// `mqtt_msg.payload` is `bytea` (false: `text`, EMQX's schema).
    pub payload_bytea: bool,
    /// `mqtt_retain.payload` is `bytea`.
    pub retain_payload_bytea: bool,
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

/// Reads the payload column types.
pub async fn detect(client: &tokio_postgres::Client) -> Result<SchemaInfo, PgsqlError> {
    let rows = client
        .query(
            "SELECT table_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND column_name = 'payload'
               AND table_name IN ('mqtt_msg', 'mqtt_retain')",
            &[],
        )
        .await
        .map_err(PgsqlError::query("detect column types"))?;
    let is_bytea = |table: &str| {
        rows.iter()
            .any(|r| r.get::<_, String>(0) == table && r.get::<_, String>(1) == "bytea")
    };
    Ok(SchemaInfo {
        payload_bytea: is_bytea("mqtt_msg"),
        retain_payload_bytea: is_bytea("mqtt_retain"),
    })
}
