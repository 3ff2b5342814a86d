//! The test's own connection to its private PostgreSQL server: the
//! subscribers' read positions, and what the broker stored.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::types::ToSql;

use crate::support::pg_cluster::PgCluster;
use crate::support::{error_chain, TIMEOUT};
use crate::{DB, FILTER};

/// The test's connection to its private server, made again after the
/// server restarts.
pub(crate) struct Db {
    pub(crate) cluster: PgCluster,
    pub(crate) client: Option<tokio_postgres::Client>,
    /// The positions read last: positions never move backwards, so they stay
    /// a lower bound of what is durable when the database cannot be read.
    pub(crate) last_positions: Vec<Option<i64>>,
}

impl Db {
    /// A live client, connecting when needed (bounded by `deadline`).
    pub(crate) async fn live(&mut self, deadline: Instant) -> Result<&tokio_postgres::Client, String> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let url = self.cluster.url(DB);
            let (client, connection) =
                match tokio::time::timeout_at(deadline, tokio_postgres::connect(&url, tokio_postgres::NoTls))
                    .await
                {
                    Ok(Ok(pair)) => pair,
                    Ok(Err(e)) => return Err(format!("connect: {}", error_chain(&e))),
                    Err(_) => return Err("connect: no answer in time".to_string()),
                };
            // Ends when the server goes away: the next query reconnects.
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.client = Some(client);
        }
        self.client.as_ref().ok_or_else(|| "no client".to_string())
    }

    /// Runs `sql`, reconnecting and trying again until `within` has passed.
    async fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        within: Duration,
    ) -> Result<Vec<tokio_postgres::Row>, String> {
        let deadline = Instant::now() + within;
        loop {
            let err = match self.live(deadline).await {
                Ok(c) => match tokio::time::timeout_at(deadline, c.query(sql, params)).await {
                    Ok(Ok(rows)) => return Ok(rows),
                    Ok(Err(e)) => error_chain(&e),
                    Err(_) => "no answer in time".to_string(),
                },
                Err(e) => e,
            };
            self.client = None;
            if Instant::now() >= deadline {
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Like [`Db::query`] within [`TIMEOUT`]; panics on failure.
    pub(crate) async fn rows(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Vec<tokio_postgres::Row> {
        self.query(sql, params, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The first column of the first row as an `i64` (`None` for no row or NULL).
    pub(crate) async fn i64(&mut self, sql: &str) -> Option<i64> {
        self.rows(sql, &[])
            .await
            .first()
            .and_then(|r| r.get::<_, Option<i64>>(0))
    }

    /// Every subscriber's read position on [`FILTER`].
    pub(crate) async fn positions(
        &mut self,
        ids: &[String],
        within: Duration,
    ) -> Result<Vec<Option<i64>>, String> {
        let rows = self
            .query(
                "select clientid::text, mid::int8 from mqtt_acked where topic = $1",
                &[&FILTER],
                within,
            )
            .await?;
        let by_id: HashMap<String, Option<i64>> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let positions: Vec<Option<i64>> = ids.iter().map(|id| by_id.get(id).copied().flatten()).collect();
        self.last_positions = positions.clone();
        Ok(positions)
    }

    /// Where the broker stored `payload`: (id, topic) of each row.
    pub(crate) async fn stored_as(&mut self, payload: &str) -> Vec<(i64, String)> {
        let rows = self
            .rows(
                "select id::int8, topic from mqtt_msg where payload = $1",
                &[&payload.as_bytes()],
            )
            .await;
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    }
}
