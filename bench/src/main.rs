//! `bench`: end-to-end load and latency measurements for Postbox, or any
//! MQTT broker.
//!
//! # Method
//!
//! The tool runs its own asynchronous MQTT 3.1.1 clients against the
//! address given with `--broker`, so the same scenario runs unchanged
//! against Postbox and against Mosquitto. The load scenarios use lean
//! clients by default (`--client lean`: one tokio task per client owning its
//! socket, packets encoded and decoded with mqttbytes, one write per burst):
//! on a 2-core machine the clients share the CPU with the broker, and
//! rumqttc's ~3-4 µs of CPU per QoS 1 message (publisher and subscriber)
//! was as much as the broker's, so its figures measured the client too.
//! `--client rumqttc` runs the same scenario on rumqttc, an independent
//! library, to cross-check. Replay and connection scale use rumqttc.
//!
//! Every message is timestamped by its publisher and checked by its
//! subscriber. The payload starts with the send time (nanoseconds since a
//! base `Instant` shared by all clients of the process: one monotonic
//! clock), the publisher's index and the message's sequence number, then
//! padding up to `--payload` bytes. Each subscriber counts the copies of
//! every (publisher, sequence) it expects, so:
//!
//! - throughput is distinct messages *received* per second, from the moment
//!   the publishers start to the last first-copy receive (or, at QoS 1, the
//!   last PUBACK, whichever is later);
//! - latency is publish-to-receive of every copy (median, 99th percentile,
//!   maximum), including any time the message waited in the publishing
//!   client's queue;
//! - losses (expected, never received) and duplicates (copies beyond the
//!   first) are counted exactly.
//!
//! A run ends when everything expected has arrived (and, at QoS 1/2, every
//! publish is acknowledged), or when `--timeout` passes; then the missing
//! messages are reported as lost. A progress line goes to stderr once per
//! second; the results table (or, with `--json`, one JSON object per
//! result) goes to stdout.
//!
//! # Scenarios
//!
//! - `one-to-one`: N publishers, each with its own topic and subscriber.
//! - `fan-in`: N publishers on one topic, one subscriber.
//! - `fan-out`: one publisher, N subscribers of its topic.
//!
//! The load scenarios may spread their clients over several brokers, the
//! nodes of a cluster (`--broker A,B`, `--sub-broker B`): publishers and
//! subscribers connect to their lists in turn, and the run starts once a
//! probe message sent through each publishers' broker has reached every
//! subscriber (so routes between the nodes are in place before timing).
//! - `replay`: a clean-session subscriber subscribes at QoS 1 (so a broker
//!   with a message store registers it) and disconnects; K messages are
//!   published and acknowledged; the subscriber reconnects and subscribes
//!   again. The clock runs from that SUBSCRIBE to the PUBACK of the K-th
//!   message (acknowledged by hand, one by one). `--persistent-session`
//!   uses clean session 0 instead, for brokers that keep offline messages in
//!   the session (the clock then starts at CONNECT).
//! - `connections`: N idle connections; connect rate, CONNECT-to-CONNACK
//!   times and, with `--broker-pid`, the broker's resident memory per
//!   connection (VmRSS before and after); `--concurrency` connections are
//!   set up at once, by rumqttc or (`--client lean`) the lean connection.
//!   `bench/connect_rate.py` measures the same with a plain Python asyncio
//!   client, a third, independent one.
//! - `copy`: the raw PostgreSQL ingest baseline: the same rows the broker
//!   stores, written with binary COPY straight into `mqtt_msg`, in batches
//!   (`--method insert|copy-ids`: the plugin's ways of writing a batch).
//!
//! `--cpu-pids` (load and replay) reports the CPU time other processes (the
//! broker, PostgreSQL's server processes) used during the measured phase,
//! and every load and replay result carries the bench's own (`bench_cpu_s`):
//! on a shared machine, CPU per message compares builds better than
//! throughput does.
//!
//! The whole comparison (Mosquitto, Postbox without and with the
//! PostgreSQL plugin, COPY) is run by `bench/run-all`, which writes
//! `BENCHMARKS.md`.

mod copy;
mod cpu;
mod payload;
mod report;
mod scenarios;
mod stats;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::scenarios::{BenchError, Brokers, ClientKind, Shape, Target};

/// Load generator and end-to-end meter for MQTT brokers (and PostgreSQL ingest).
#[derive(Parser, Debug)]
#[command(name = "bench", version, about)]
struct Cli {
    /// Print one JSON object per result instead of the table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// N publishers, each sending to its own subscriber on its own topic.
    OneToOne(LoadArgs),
    /// N publishers on one topic, one subscriber.
    FanIn(LoadArgs),
    /// One publisher, N subscribers of its topic.
    FanOut(LoadArgs),
    /// K stored messages replayed to a subscriber that reconnects.
    Replay(ReplayArgs),
    /// N idle connections: connect rate and broker memory per connection.
    Connections(ConnArgs),
    /// N persistent sessions with B stored messages each reconnect at once:
    /// time until all are drained, and the CPU (database load) it takes.
    Storm(StormArgs),
    /// Raw PostgreSQL ingest: binary COPY into mqtt_msg, in batches (or the
    /// plugin's ways of writing a batch, for comparison).
    Copy(CopyArgs),
}

#[derive(Args, Debug)]
struct TargetArgs {
    /// Broker address, HOST:PORT. The load scenarios take several, comma
    /// separated (nodes of a cluster): publisher i connects to the
    /// (i mod n)-th, and so do the subscribers unless --sub-broker is given.
    #[arg(long, value_name = "HOST:PORT")]
    broker: String,
    /// Name of the target in the results (default: the address).
    #[arg(long, value_name = "LABEL")]
    target: Option<String>,
}

#[derive(Args, Debug)]
struct LoadArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// The subscribers' broker(s), HOST:PORT, comma separated (subscriber s
    /// connects to the (s mod n)-th), e.g. another node of a cluster than
    /// the publishers'. When the run spans several addresses, it starts only
    /// once every subscriber has received a probe message through each
    /// broker its publishers use (a route takes a moment to reach another
    /// node; at most --timeout, 30 s); the time that took is reported as
    /// `routed_s`.
    #[arg(long, value_name = "HOST:PORT")]
    sub_broker: Option<String>,
    /// Pairs (one-to-one), publishers (fan-in) or subscribers (fan-out).
    #[arg(long, default_value_t = 10)]
    clients: u32,
    /// QoS of the publishes and subscriptions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload size in bytes (at least 16: the timestamp header).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Messages published in total, spread evenly over the publishers
    /// (fan-out: each is received by every subscriber).
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Messages per second, all publishers together; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds after which the run ends and missing messages count as lost.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Unacknowledged publishes per publisher (QoS 1/2).
    #[arg(long, default_value_t = 100)]
    inflight: u16,
    /// The MQTT client that drives the load: `lean` (the bench's own,
    /// little CPU per message, so the broker is what is measured) or
    /// `rumqttc` (an independent library, for cross-checks).
    #[arg(long, default_value = "lean", value_parser = parse_client)]
    client: ClientKind,
    /// Processes (comma separated ids, e.g. the broker's and its database
    /// server's) whose CPU time during the run is reported (`cpu_s`).
    #[arg(long, value_name = "PIDS", default_value = "")]
    cpu_pids: String,
}

#[derive(Args, Debug)]
struct ReplayArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Messages stored while the subscriber is away (K).
    #[arg(long, default_value_t = 10_000)]
    count: u32,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Seconds allowed for storing, and again for replaying.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Keep the subscriber's session (clean session 0) instead of a clean
    /// session: for brokers that queue offline messages in the session.
    #[arg(long)]
    persistent_session: bool,
    /// Milliseconds to pause after registering and after disconnecting.
    #[arg(long, default_value_t = 300)]
    settle_ms: u64,
    /// Unacknowledged publishes of the storing publisher.
    #[arg(long, default_value_t = 100)]
    inflight: u16,
    /// Processes (comma separated ids) whose CPU time during the replay
    /// phase (from the reconnect to the last acknowledgement) is reported
    /// (`cpu_s`).
    #[arg(long, value_name = "PIDS", default_value = "")]
    cpu_pids: String,
    /// The reconnecting subscriber: `rumqttc` (an independent library, the
    /// default) or `lean` (the bench's own connection, little CPU per
    /// message, so the broker and the database are what is measured).
    #[arg(long, default_value = "rumqttc", value_parser = parse_client)]
    client: ClientKind,
}

#[derive(Args, Debug)]
struct ConnArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Idle connections to open.
    #[arg(long, default_value_t = 2_000)]
    count: u32,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 100)]
    concurrency: u32,
    /// The client: `rumqttc` (an independent library, the default) or
    /// `lean` (the bench's own connection, mqttbytes codec: less CPU per
    /// connect, so the broker's handshake is more of what is measured).
    #[arg(long, default_value = "rumqttc", value_parser = parse_client)]
    client: ClientKind,
    /// The broker's process id: its VmRSS is read before and after.
    #[arg(long, value_name = "PID")]
    broker_pid: Option<u32>,
    /// Seconds to keep the connections open once all are up.
    #[arg(long, default_value_t = 2)]
    hold: u64,
    /// Keep alive of each connection, seconds.
    #[arg(long, default_value_t = 60)]
    keep_alive: u64,
    /// Seconds allowed for opening them all.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

#[derive(Args, Debug)]
struct StormArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Persistent sessions (N).
    #[arg(long, default_value_t = 10_000)]
    sessions: u32,
    /// Messages stored for each session while it is offline (B).
    #[arg(long, default_value_t = 2)]
    backlog: u32,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 200)]
    concurrency: u32,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Local addresses 127.0.0.1 .. 127.0.0.<sources> to connect from.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Seconds allowed for each phase.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Processes (comma separated ids) whose CPU time during the storm is
    /// reported (`cpu_s`).
    #[arg(long, value_name = "PIDS", default_value = "")]
    cpu_pids: String,
}

#[derive(Args, Debug)]
struct CopyArgs {
    /// PostgreSQL connection string, e.g.
    /// postgres://postgres@127.0.0.1:5432/mqtt (the database must exist;
    /// mqtt_msg is created if missing).
    #[arg(long, value_name = "URL")]
    pg_url: String,
    /// Rows to write.
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Rows per COPY (one transaction each).
    #[arg(long, default_value_t = 1_000)]
    batch: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// How each batch is written: `copy` (binary COPY, the baseline),
    /// `insert` (the plugin's multi-row INSERT through unnest with RETURNING
    /// id, under its advisory lock) or `copy-ids` (the plugin's COPY path:
    /// ids reserved under the advisory lock, then binary COPY with them).
    #[arg(long, default_value = "copy", value_parser = ["copy", "insert", "copy-ids"])]
    method: String,
}

fn target(t: &TargetArgs) -> Result<Target, BenchError> {
    if t.broker.contains(',') {
        return Err(format!("--broker {}: this scenario takes one broker", t.broker).into());
    }
    Target::parse(&t.broker, t.target.clone())
}

async fn run(cli: Cli) -> Result<report::ScenarioResult, BenchError> {
    let run_id = scenarios::run_id();
    match cli.command {
        Command::OneToOne(a) => load(Shape::OneToOne, a, run_id).await,
        Command::FanIn(a) => load(Shape::FanIn, a, run_id).await,
        Command::FanOut(a) => load(Shape::FanOut, a, run_id).await,
        Command::Replay(a) => {
            let t = target(&a.target)?;
            let p = scenarios::ReplayParams {
                count: a.count,
                payload: a.payload,
                timeout: Duration::from_secs(a.timeout),
                persistent: a.persistent_session,
                settle: Duration::from_millis(a.settle_ms),
                inflight: a.inflight,
                cpu_pids: cpu::parse_pids(&a.cpu_pids)?,
                lean: a.client == ClientKind::Lean,
                run_id,
            };
            scenarios::run_replay(&t, &p).await
        }
        Command::Connections(a) => {
            let t = target(&a.target)?;
            let p = scenarios::ConnParams {
                count: a.count,
                concurrency: a.concurrency,
                client: a.client,
                hold: Duration::from_secs(a.hold),
                keep_alive: Duration::from_secs(a.keep_alive.max(1)),
                broker_pid: a.broker_pid,
                timeout: Duration::from_secs(a.timeout),
                run_id,
            };
            scenarios::run_connections(&t, &p).await
        }
        Command::Storm(a) => {
            let t = target(&a.target)?;
            let p = scenarios::StormParams {
                sessions: a.sessions,
                backlog: a.backlog,
                concurrency: a.concurrency,
                payload: a.payload,
                sources: a.sources,
                timeout: Duration::from_secs(a.timeout),
                cpu_pids: cpu::parse_pids(&a.cpu_pids)?,
                run_id,
            };
            scenarios::run_storm(&t, &p).await
        }
        Command::Copy(a) => {
            let p = copy::CopyParams {
                pg_url: a.pg_url,
                count: a.count,
                batch: a.batch,
                payload: a.payload,
                method: copy::Method::parse(&a.method)?,
                run_id,
            };
            copy::run_copy(&p).await
        }
    }
}

async fn load(shape: Shape, a: LoadArgs, run_id: String) -> Result<report::ScenarioResult, BenchError> {
    let brokers = Brokers::parse(&a.target.broker, a.sub_broker.as_deref(), a.target.target.clone())?;
    if !(a.rate >= 0.0 && a.rate.is_finite()) {
        return Err(format!("--rate {}: expected a number >= 0", a.rate).into());
    }
    let p = scenarios::LoadParams {
        shape,
        clients: a.clients,
        qos: a.qos,
        payload: a.payload,
        count: a.count,
        rate: a.rate,
        timeout: Duration::from_secs(a.timeout),
        inflight: a.inflight.max(1),
        client: a.client,
        cpu_pids: cpu::parse_pids(&a.cpu_pids)?,
        run_id,
    };
    scenarios::run_load(&brokers, &p).await
}

fn parse_client(s: &str) -> Result<ClientKind, String> {
    match s {
        "lean" => Ok(ClientKind::Lean),
        "rumqttc" => Ok(ClientKind::Rumqttc),
        _ => Err(format!("`{s}`: expected lean or rumqttc")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(result) => {
            report::print(&[result], json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}
