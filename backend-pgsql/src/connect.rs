//! Connecting a pool at startup: migrations, partitioning of `mqtt_msg`,
//! the schema learnt; a database that does not answer is tried again in
//! the background instead of stopping the broker.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::error::PgsqlError;
use crate::pool::NamedPool;
use crate::schema::{self, SchemaCell, SchemaInfo};
use crate::{error_chain, partitions};

/// How often a pool whose database did not answer at startup tries again.
const CONNECT_RETRY: Duration = Duration::from_secs(1);

/// Connects a pool at startup: applies the migrations (`migrates`: a pool
/// the functions store in), partitions `mqtt_msg` (`partition`: its width,
/// `backend.pgsql.msg_partition`) and learns the schema. A database that does not
/// answer does not stop the broker: the outage is logged once, a task tries
/// again every [`CONNECT_RETRY`] and fills `schema` when it answers, and
/// meanwhile messages that must be stored are not acknowledged (the writer
/// waits for the schema). A refusal waiting cannot fix (wrong password or
/// database, a certificate that does not verify, a migration that fails)
/// stops startup, naming the server.
pub(crate) async fn connect_pool(
    np: &NamedPool,
    migrates: bool,
    partition: Option<std::time::Duration>,
    schema: &SchemaCell,
) -> Result<Option<JoinHandle<()>>, String> {
    match setup_pool(np, migrates, partition).await {
        Ok(info) => {
            schema.set(info);
            Ok(None)
        }
        Err(e) if e.is_unreachable() => {
            tracing::error!(
                pool = %np.name,
                "PostgreSQL at {} does not answer; starting without it (messages that must be stored \
                 are not acknowledged, and nothing stored is replayed, until it does): {e}",
                np.addr
            );
            let (np, schema) = (np.clone(), schema.clone());
            Ok(Some(tokio::spawn(async move {
                let mut logged_refusal = false;
                loop {
                    tokio::time::sleep(CONNECT_RETRY).await;
                    match setup_pool(&np, migrates, partition).await {
                        Ok(info) => {
                            schema.set(info);
                            tracing::warn!(pool = %np.name, "PostgreSQL at {} answers: connected", np.addr);
                            return;
                        }
                        Err(e) if !e.is_unreachable() && !logged_refusal => {
                            logged_refusal = true;
                            tracing::error!(pool = %np.name, "PostgreSQL at {} refuses the plugin (retrying): {e}", np.addr);
                        }
                        Err(_) => {}
                    }
                }
            })))
        }
        Err(e) => Err(format!(
            "cannot reach PostgreSQL at {} (pool `{}`): {}",
            np.addr,
            np.name,
            error_chain(&e)
        )),
    }
}

/// One attempt: migrations (when `migrates`), partitioning (when
/// `partition`), then the column types.
async fn setup_pool(
    np: &NamedPool,
    migrates: bool,
    partition: Option<std::time::Duration>,
) -> Result<SchemaInfo, PgsqlError> {
    let mut conn = np.get().await?;
    if migrates {
        let client: &mut tokio_postgres::Client = &mut conn;
        let applied = schema::migrate(client).await?;
        if !applied.is_empty() {
            tracing::info!(pool = %np.name, ?applied, "applied schema migrations");
        }
        if let Some(width) = partition {
            if partitions::convert(client, width).await? {
                tracing::info!(
                    pool = %np.name,
                    width = %humantime::format_duration(width),
                    "mqtt_msg is now partitioned by arrival time (the old table is partition mqtt_msg_legacy)"
                );
            }
        }
    }
    let info = schema::detect(&conn).await?;
    if !info.payload_bytea && migrates {
        tracing::info!(pool = %np.name, "mqtt_msg.payload is text (EMQX schema): non-UTF-8 payloads will be refused");
    }
    if !info.message_properties && migrates {
        tracing::warn!(
            pool = %np.name,
            columns = ?schema::PROPERTY_COLUMNS,
            "mqtt_msg lacks the message property columns (sql/V2__message_properties.sql): \
             MQTT 5 message expiry and properties are not kept for offline delivery"
        );
    }
    Ok(info)
}
