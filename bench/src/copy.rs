//! The raw PostgreSQL ingest baseline: the rows the broker would store,
//! loaded with binary COPY straight into `mqtt_msg`, one COPY (one
//! transaction) per batch, on one connection.
//!
//! `--method` writes the same batches the ways the plugin's writer does
//! (`insert`: multi-row INSERT through unnest with RETURNING id, under the
//! advisory lock; `copy-ids`: ids reserved under the lock, then COPY), so the
//! database's share of a persisted message can be compared without a broker.

use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde_json::{json, Map};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::NoTls;

use crate::cpu::CpuWatch;
use crate::payload::{self, Clock, Header};
use crate::report::{Counters, Progress, ScenarioResult};
use crate::scenarios::BenchError;
use crate::stats::Latency;

/// The schema the broker's plugin applies; idempotent, so the baseline also
/// works on an empty database.
const SCHEMA: &str = include_str!("../../sql/V1__offline_messages.sql");

const COPY_SQL: &str =
    "COPY mqtt_msg (msgid, sender, topic, qos, retain, payload, arrived) FROM STDIN (FORMAT binary)";
const COPY_IDS_SQL: &str =
    "COPY mqtt_msg (id, msgid, sender, topic, qos, retain, payload, arrived) FROM STDIN (FORMAT binary)";
/// The plugin writer's lock ("postbox2"), so `insert` and `copy-ids` pay for it too.
const WRITE_LOCK: i64 = 0x706f_7374_626f_7832;

/// How a batch is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Binary COPY, ids from the column default.
    Copy,
    /// The plugin's multi-row INSERT ... SELECT FROM unnest(...) RETURNING id.
    Insert,
    /// The plugin's COPY path: ids reserved under the lock, COPY with them.
    CopyIds,
}

impl Method {
    /// Parses `--method`.
    pub fn parse(s: &str) -> Result<Method, BenchError> {
        match s {
            "copy" => Ok(Method::Copy),
            "insert" => Ok(Method::Insert),
            "copy-ids" => Ok(Method::CopyIds),
            other => Err(format!("--method {other}: expected copy, insert or copy-ids").into()),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Method::Copy => "binary COPY",
            Method::Insert => "INSERT .. unnest RETURNING id (the plugin's small batches)",
            Method::CopyIds => "ids reserved + binary COPY (the plugin's large batches)",
        }
    }
}

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
    /// How each batch is written.
    pub method: Method,
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

    // The server process of this connection, for the CPU time COPY costs it.
    let backend = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .ok()
        .and_then(|r| r.try_get::<_, i32>(0).ok())
        .and_then(|p| u32::try_from(p).ok());
    let cpu = CpuWatch::start(&backend.into_iter().collect::<Vec<_>>());
    let topic = format!("bench/{}/copy", p.run_id);
    let sender = format!("{}-copy", p.run_id);
    let clock = Clock::new();
    let counters = Arc::new(Counters::default());
    let progress = Progress::start("copy postgres".into(), counters.clone(), p.count);
    let mut batch_us = Vec::new();
    let start = Instant::now();
    let mut written = 0u64;
    let sequence: String = client
        .query_one("SELECT pg_get_serial_sequence('mqtt_msg', 'id')", &[])
        .await
        .map_err(|e| format!("find the id sequence: {e}"))?
        .try_get::<_, Option<String>>(0)
        .map_err(|e| format!("find the id sequence: {e}"))?
        .ok_or("mqtt_msg.id has no sequence")?;
    while written < p.count {
        let n = p.batch.min(p.count - written);
        let t = Instant::now();
        let rows: Vec<Row> = (written..written + n)
            .map(|i| Row {
                msgid: format!("{i:032X}"),
                body: payload::encode(
                    Header {
                        sent_ns: clock.now_ns(),
                        publisher: 0,
                        seq: u32::try_from(i).unwrap_or(u32::MAX),
                    },
                    p.payload,
                ),
            })
            .collect();
        let stored = match p.method {
            Method::Copy => copy_batch(&client, &rows, &sender, &topic, None).await?,
            Method::Insert => insert_batch(&client, &rows, &sender, &topic).await?,
            Method::CopyIds => {
                let count = i64::try_from(n).unwrap_or(i64::MAX);
                let lock_params: [&(dyn ToSql + Sync); 1] = [&WRITE_LOCK];
                let id_params: [&(dyn ToSql + Sync); 2] = [&sequence, &count];
                let (begun, locked, ids) = tokio::join!(
                    client.batch_execute("BEGIN"),
                    client.execute("SELECT pg_advisory_xact_lock($1)", &lock_params),
                    client.query(
                        "SELECT nextval($1::text::regclass) FROM generate_series(1, $2::int8)",
                        &id_params
                    ),
                );
                begun.map_err(|e| format!("BEGIN: {e}"))?;
                locked.map_err(|e| format!("advisory lock: {e}"))?;
                let ids: Vec<i64> = ids
                    .map_err(|e| format!("reserve ids: {e}"))?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("reserve ids: {e}"))?;
                let n = copy_batch(&client, &rows, &sender, &topic, Some(&ids)).await?;
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| format!("COMMIT: {e}"))?;
                n
            }
        };
        counters.sent.fetch_add(n, Ordering::Relaxed);
        written += n;
        counters.received.fetch_add(stored, Ordering::Relaxed);
        batch_us.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_s = cpu.finish();
    drop(progress);
    drop(client);
    let _ = conn_task.await;
    let committed = counters.received.load(Ordering::Relaxed);
    let mut extra = Map::new();
    extra.insert("batch".into(), json!(p.batch));
    extra.insert("batches".into(), json!(batch_us.len()));
    if !cpu.is_empty() {
        // The PostgreSQL server process's CPU time for all the COPYs.
        extra.insert("cpu_s".into(), cpu_s);
    }
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
        note: format!("{}, {} rows/batch; latency = per batch", p.method.name(), p.batch),
        extra,
    })
}

/// One generated row.
struct Row {
    msgid: String,
    body: Vec<u8>,
}

/// One binary COPY of `rows` (with explicit `ids` when given); returns the rows written.
async fn copy_batch(
    client: &tokio_postgres::Client,
    rows: &[Row],
    sender: &str,
    topic: &str,
    ids: Option<&[i64]>,
) -> Result<u64, BenchError> {
    let mut types = vec![
        Type::VARCHAR,
        Type::VARCHAR,
        Type::VARCHAR,
        Type::INT4,
        Type::INT4,
        Type::BYTEA,
        Type::TIMESTAMP,
    ];
    if ids.is_some() {
        types.insert(0, Type::INT8);
    }
    let sink = client
        .copy_in(if ids.is_some() { COPY_IDS_SQL } else { COPY_SQL })
        .await
        .map_err(|e| format!("COPY mqtt_msg: {e}"))?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
    let now = SystemTime::now();
    for (i, r) in rows.iter().enumerate() {
        let fields: [&(dyn ToSql + Sync); 7] = [&r.msgid, &sender, &topic, &1i32, &0i32, &r.body, &now];
        let id = ids.and_then(|ids| ids.get(i));
        let mut row: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(8);
        if let Some(id) = id {
            row.push(id);
        }
        row.extend(fields);
        writer
            .as_mut()
            .write(&row)
            .await
            .map_err(|e| format!("COPY row: {e}"))?;
    }
    Ok(writer
        .as_mut()
        .finish()
        .await
        .map_err(|e| format!("COPY finish: {e}"))?)
}

/// The plugin's small-batch statement, pipelined as the writer sends it.
async fn insert_batch(
    client: &tokio_postgres::Client,
    rows: &[Row],
    sender: &str,
    topic: &str,
) -> Result<u64, BenchError> {
    let msgids: Vec<&str> = rows.iter().map(|r| r.msgid.as_str()).collect();
    let senders: Vec<&str> = rows.iter().map(|_| sender).collect();
    let topics: Vec<&str> = rows.iter().map(|_| topic).collect();
    let qos: Vec<i32> = rows.iter().map(|_| 1).collect();
    let retain: Vec<i32> = rows.iter().map(|_| 0).collect();
    let payloads: Vec<&[u8]> = rows.iter().map(|r| r.body.as_slice()).collect();
    let insert = "INSERT INTO mqtt_msg (msgid, sender, topic, qos, retain, payload, arrived)
         SELECT m, s, t, q, r, p, now()
         FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int4[], $6::bytea[])
              WITH ORDINALITY AS u(m, s, t, q, r, p, o)
         ORDER BY o
         RETURNING id::int8";
    let lock_params: [&(dyn ToSql + Sync); 1] = [&WRITE_LOCK];
    let params: [&(dyn ToSql + Sync); 6] = [&msgids, &senders, &topics, &qos, &retain, &payloads];
    let (begun, locked, inserted, committed) = tokio::join!(
        client.batch_execute("BEGIN"),
        client.execute("SELECT pg_advisory_xact_lock($1)", &lock_params),
        client.query(insert, &params),
        client.batch_execute("COMMIT"),
    );
    begun.map_err(|e| format!("BEGIN: {e}"))?;
    locked.map_err(|e| format!("advisory lock: {e}"))?;
    let n = inserted.map_err(|e| format!("INSERT: {e}"))?.len();
    committed.map_err(|e| format!("COMMIT: {e}"))?;
    Ok(n as u64)
}
