//! The raw PostgreSQL ingest baseline: the rows the broker would store,
//! loaded with binary COPY straight into `mqtt_msg`, one COPY (one
//! transaction) per batch, on one connection.

use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde_json::{json, Map};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::NoTls;

use crate::payload::{self, Clock, Header};
use crate::report::{Counters, Progress, ScenarioResult};
use crate::scenarios::BenchError;
use crate::stats::Latency;

/// The schema the broker's plugin applies; idempotent, so the baseline also
/// works on an empty database.
const SCHEMA: &str = include_str!("../../sql/V1__offline_messages.sql");

const COPY_SQL: &str =
    "COPY mqtt_msg (msgid, sender, topic, qos, retain, payload, arrived) FROM STDIN (FORMAT binary)";

/// Parameters of the COPY baseline.
#[derive(Debug, Clone)]
pub struct CopyParams {
    /// A tokio-postgres connection string (URL or key=value).
    pub pg_url: String,
    /// Rows to write.
    pub count: u64,
    /// Rows per COPY statement.
    pub batch: u64,
    /// Payload size in bytes.
    pub payload: usize,
    /// Prefix for the topic and sender.
    pub run_id: String,
}

/// Writes `count` rows in batches and reports rows per second; the latency
/// columns are the time of each batch's COPY (until its commit).
pub async fn run_copy(p: &CopyParams) -> Result<ScenarioResult, BenchError> {
    if p.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let (client, connection) = tokio_postgres::connect(&p.pg_url, NoTls)
        .await
        .map_err(|e| format!("connect to PostgreSQL: {e}"))?;
    let conn_task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("bench: PostgreSQL connection: {e}");
        }
    });
    client
        .batch_execute(SCHEMA)
        .await
        .map_err(|e| format!("apply the mqtt_msg schema: {e}"))?;

    let types = [
        Type::VARCHAR,
        Type::VARCHAR,
        Type::VARCHAR,
        Type::INT4,
        Type::INT4,
        Type::BYTEA,
        Type::TIMESTAMP,
    ];
    let topic = format!("bench/{}/copy", p.run_id);
    let sender = format!("{}-copy", p.run_id);
    let clock = Clock::new();
    let counters = Arc::new(Counters::default());
    let progress = Progress::start("copy postgres".into(), counters.clone(), p.count);
    let mut batch_us = Vec::new();
    let start = Instant::now();
    let mut written = 0u64;
    while written < p.count {
        let n = p.batch.min(p.count - written);
        let t = Instant::now();
        let sink = client
            .copy_in(COPY_SQL)
            .await
            .map_err(|e| format!("COPY mqtt_msg: {e}"))?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
        for i in written..written + n {
            let body = payload::encode(
                Header {
                    sent_ns: clock.now_ns(),
                    publisher: 0,
                    seq: u32::try_from(i).unwrap_or(u32::MAX),
                },
                p.payload,
            );
            let msgid = format!("{i:032X}");
            let row: [&(dyn ToSql + Sync); 7] =
                [&msgid, &sender, &topic, &1i32, &0i32, &body, &SystemTime::now()];
            writer
                .as_mut()
                .write(&row)
                .await
                .map_err(|e| format!("COPY row: {e}"))?;
            counters.sent.fetch_add(1, Ordering::Relaxed);
        }
        let rows = writer
            .as_mut()
            .finish()
            .await
            .map_err(|e| format!("COPY finish: {e}"))?;
        written += n;
        counters.received.fetch_add(rows, Ordering::Relaxed);
        batch_us.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    let secs = start.elapsed().as_secs_f64();
    drop(progress);
    drop(client);
    let _ = conn_task.await;
    let committed = counters.received.load(Ordering::Relaxed);
    let mut extra = Map::new();
    extra.insert("batch".into(), json!(p.batch));
    extra.insert("batches".into(), json!(batch_us.len()));
    Ok(ScenarioResult {
        scenario: "copy".into(),
        target: "postgres".into(),
        clients: "1".into(),
        qos: None,
        payload: Some(p.payload.max(payload::HEADER_LEN)),
        sent: p.count,
        received: committed,
        lost: p.count - committed.min(p.count),
        dup: 0,
        rate: if secs > 0.0 { committed as f64 / secs } else { 0.0 },
        latency: Some(Latency::of(batch_us)),
        duration_s: secs,
        note: format!("binary COPY, {} rows/batch; latency = per batch", p.batch),
        extra,
    })
}
