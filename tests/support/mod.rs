//! End-to-end test harness for Postbox.
//!
//! Every end-to-end test does `mod support;` (`tests/chaos/` names the path) and gets:
//!
//! * [`Broker`]: runs the real `postbox` binary on `127.0.0.1:0` with a config
//!   file in a private temp dir, captures its output, and can kill / SIGTERM /
//!   SIGHUP / restart it.
//! * [`TestDb`]: a throw-away PostgreSQL database (created on the server named
//!   by `POSTBOX_TEST_PG`, dropped on `Drop`).
//! * [`V4Client`] / [`V5Client`]: rumqttc-based MQTT 3.1.1 / 5.0 clients with
//!   blocking-style helpers that poll the event loop with timeouts.
//! * [`RawClient`] plus byte encoders: for malformed packets and protocol
//!   violations.
//!
//! Every wait is bounded: helpers panic with what they saw instead of hanging.
//! Incoming PUBLISH (and v5 DISCONNECT) packets that arrive while a helper
//! waits for something else are kept in the client's `backlog`, where
//! [`V4Client::next_publish`] / [`V4Client::poll_until`] look first.
//!
//! Environment: `POSTBOX_TEST_PG` (admin URL, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), `POSTBOX_BIN` (broker
//! binary when `CARGO_BIN_EXE_postbox` is not set at compile time),
//! `POSTBOX_KEEP_TEST_DIRS` (keep broker temp dirs for inspection).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Default bound for MQTT / raw-socket / database waits.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for broker start-up and shutdown.
pub const BROKER_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for joining the output-drain tasks after the broker exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique_suffix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}_{}_{}", std::process::id(), n, nanos)
}

/// A fresh, empty, unique directory under `std::env::temp_dir()`.
pub fn temp_dir(tag: &str) -> PathBuf {
    let tag: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("postbox-{tag}-{}", unique_suffix()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", dir.display()));
    dir
}

// ===========================================================================
// Broker process
// ===========================================================================

/// Path of the `postbox` binary under test.
///
/// Cargo sets `CARGO_BIN_EXE_postbox` when compiling integration tests of the
/// `postbox-broker` package; `POSTBOX_BIN` (runtime) is a fallback for
/// harnesses compiled elsewhere.
pub fn broker_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_postbox") {
        return PathBuf::from(p);
    }
    if let Ok(p) = std::env::var("POSTBOX_BIN") {
        return PathBuf::from(p);
    }
    panic!(
        "the postbox binary is unknown: CARGO_BIN_EXE_postbox was not set at compile time (this test \
         must be a [[test]] of the postbox-broker package) and POSTBOX_BIN is not set"
    )
}

type SharedBuf = Arc<Mutex<Vec<u8>>>;

fn buf_string(buf: &SharedBuf) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

fn buf_append(buf: &SharedBuf, bytes: &[u8]) {
    buf.lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend_from_slice(bytes);
}

/// Copy everything from `r` into `buf` until EOF.
fn spawn_drain<R: AsyncRead + Unpin + Send + 'static>(mut r: R, buf: SharedBuf) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut chunk = vec![0u8; 8192];
        loop {
            match r.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf_append(&buf, &chunk[..n]),
            }
        }
    })
}

async fn join_drains(drains: &mut Vec<JoinHandle<()>>) {
    for h in drains.drain(..) {
        let abort = h.abort_handle();
        if tokio::time::timeout(DRAIN_TIMEOUT, h).await.is_err() {
            abort.abort();
        }
    }
}

fn write_files(dir: &Path, extra_conf: &str, files: &[(&str, &str)]) {
    for (name, contents) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
    let mut conf = format!(
        "listener.tcp.external = 127.0.0.1:0\nlog.level = debug\nplugins.etc_dir = {}\n",
        dir.display()
    );
    conf.push_str(extra_conf);
    if !conf.ends_with('\n') {
        conf.push('\n');
    }
    std::fs::write(dir.join("postbox.conf"), conf).unwrap();
}

fn broker_command(dir: &Path) -> Command {
    let mut cmd = Command::new(broker_bin());
    cmd.arg("-c")
        .arg(dir.join("postbox.conf"))
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A running `postbox` process with its own temp dir (`dir/postbox.conf`).
pub struct Broker {
    /// Address of the first `listening on ...` line (the external TCP listener).
    pub addr: SocketAddr,
    /// Temp dir holding `postbox.conf` and any extra files; removed on drop
    /// (unless `POSTBOX_KEEP_TEST_DIRS` is set).
    pub dir: PathBuf,
    child: Option<Child>,
    stdout: SharedBuf,
    stderr: SharedBuf,
    drains: Vec<JoinHandle<()>>,
}

impl Broker {
    /// Start a broker with the default config plus `extra_conf` (appended verbatim).
    pub async fn start(extra_conf: &str) -> Broker {
        Broker::start_with_files(extra_conf, &[]).await
    }

    /// Like [`Broker::start`], but first writes `files` (`(name, contents)`)
    /// into the temp dir, e.g. `("backend_pgsql.conf", "...")`.
    pub async fn start_with_files(extra_conf: &str, files: &[(&str, &str)]) -> Broker {
        let dir = temp_dir("broker");
        write_files(&dir, extra_conf, files);
        let mut broker = Broker {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            child: None,
            stdout: Arc::default(),
            stderr: Arc::default(),
            drains: Vec::new(),
        };
        broker.spawn().await;
        broker
    }

    /// Run the broker with a config that is expected to be rejected: waits
    /// (up to 30 s) for the process to exit and returns its exit status and
    /// its output (stderr followed by stdout). Panics if it keeps running.
    pub async fn start_expect_failure(extra_conf: &str, files: &[(&str, &str)]) -> (ExitStatus, String) {
        let dir = temp_dir("broker-fail");
        write_files(&dir, extra_conf, files);
        let stdout: SharedBuf = Arc::default();
        let stderr: SharedBuf = Arc::default();
        let mut child = broker_command(&dir)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", broker_bin().display()));
        let mut drains = vec![
            spawn_drain(child.stdout.take().unwrap(), stdout.clone()),
            spawn_drain(child.stderr.take().unwrap(), stderr.clone()),
        ];
        let status = match tokio::time::timeout(BROKER_TIMEOUT, child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                join_drains(&mut drains).await;
                let _ = std::fs::remove_dir_all(&dir);
                panic!(
                    "expected the broker to fail, but it was still running after {BROKER_TIMEOUT:?}\n\
                     --- stderr ---\n{}\n--- stdout ---\n{}",
                    buf_string(&stderr),
                    buf_string(&stdout)
                );
            }
        };
        join_drains(&mut drains).await;
        if std::env::var_os("POSTBOX_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let mut out = buf_string(&stderr);
        out.push_str(&buf_string(&stdout));
        (status, out)
    }

    /// Spawn the binary with `self.dir/postbox.conf` and wait for `listening on`.
    async fn spawn(&mut self) {
        let mut child = broker_command(&self.dir)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", broker_bin().display()));
        self.drains
            .push(spawn_drain(child.stderr.take().unwrap(), self.stderr.clone()));
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let stdout = self.stdout.clone();

        let wait_listening = async {
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => return Err("the broker closed its stdout (exited?)".to_string()),
                    Ok(_) => {
                        buf_append(&stdout, &line);
                        let text = String::from_utf8_lossy(&line);
                        if let Some(rest) = text.trim().strip_prefix("listening on ") {
                            return rest
                                .trim()
                                .parse::<SocketAddr>()
                                .map_err(|e| format!("cannot parse listener address {rest:?}: {e}"));
                        }
                    }
                }
            }
        };
        let result = match tokio::time::timeout(BROKER_TIMEOUT, wait_listening).await {
            Ok(r) => r,
            Err(_) => Err(format!("no `listening on` line within {BROKER_TIMEOUT:?}")),
        };
        match result {
            Ok(addr) => {
                self.addr = addr;
                self.drains.push(spawn_drain(reader, self.stdout.clone()));
                self.child = Some(child);
            }
            Err(reason) => {
                let _ = child.start_kill();
                let status = tokio::time::timeout(DRAIN_TIMEOUT, child.wait()).await;
                self.drains.push(spawn_drain(reader, self.stdout.clone()));
                join_drains(&mut self.drains).await;
                panic!(
                    "broker failed to start: {reason} (exit status: {status:?})\nconfig {}:\n{}\n\
                     --- stderr ---\n{}\n--- stdout ---\n{}",
                    self.dir.join("postbox.conf").display(),
                    std::fs::read_to_string(self.dir.join("postbox.conf")).unwrap_or_default(),
                    self.logs(),
                    self.stdout()
                );
            }
        }
    }

    /// The broker's captured stderr (its logs) so far, across restarts.
    pub fn logs(&self) -> String {
        buf_string(&self.stderr)
    }

    /// The broker's captured stdout so far (the `listening on` lines).
    pub fn stdout(&self) -> String {
        buf_string(&self.stdout)
    }

    /// PID of the running process, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Path of the config file.
    pub fn conf_path(&self) -> PathBuf {
        self.dir.join("postbox.conf")
    }

    /// Wait (10 s) until the captured logs contain `needle`; panics with the logs otherwise.
    pub async fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "broker logs do not contain {needle:?} after {TIMEOUT:?}\n--- logs ---\n{}",
            self.logs()
        );
    }

    /// How many times `needle` occurs in the captured logs so far.
    pub fn log_count(&self, needle: &str) -> usize {
        self.logs().matches(needle).count()
    }

    /// Wait (10 s) until the captured logs contain `needle` at least `n`
    /// times; panics with the logs otherwise.
    pub async fn wait_for_log_count(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if self.log_count(needle) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "broker logs do not contain {needle:?} {n} times after {TIMEOUT:?}\n--- logs ---\n{}",
            self.logs()
        );
    }

    /// Sends SIGHUP and waits until the broker logs that this reload is
    /// done (every plugin has reloaded or failed to); returns the logs
    /// written since the signal.
    pub async fn sighup(&self) -> String {
        let pid = self.pid().expect("sighup: the broker is not running");
        let before = self.log_count("reload done");
        let start = self.logs().len();
        let ok = std::process::Command::new("kill")
            .arg("-HUP")
            .arg(pid.to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "`kill -HUP {pid}` failed");
        self.wait_for_log_count("reload done", before + 1).await;
        let logs = self.logs();
        logs.get(start..).unwrap_or(&logs).to_string()
    }

    /// SIGKILL the broker and wait for it to exit.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(BROKER_TIMEOUT, child.wait()).await;
        }
        join_drains(&mut self.drains).await;
    }

    /// SIGTERM the broker and wait (30 s) for it to exit; returns its exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("terminate: the broker is not running");
        if let Some(pid) = child.id() {
            let ok = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                eprintln!("warning: `kill -TERM {pid}` failed (already exited?)");
            }
        }
        let status = match tokio::time::timeout(BROKER_TIMEOUT, child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                join_drains(&mut self.drains).await;
                panic!(
                    "broker did not exit within {BROKER_TIMEOUT:?} after SIGTERM\n--- logs ---\n{}",
                    self.logs()
                );
            }
        };
        join_drains(&mut self.drains).await;
        status
    }

    /// Start the broker again with the same dir and config (after
    /// kill/terminate; a still-running broker is killed first). The port
    /// changes: `addr` is updated.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.kill().await;
        }
        buf_append(&self.stderr, b"\n===== harness: broker restart =====\n");
        buf_append(&self.stdout, b"\n===== harness: broker restart =====\n");
        self.spawn().await;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            let _ = child.try_wait();
        }
        if std::thread::panicking() {
            let logs = self.logs();
            let tail_start = logs.len().saturating_sub(64 * 1024);
            let tail_start = (tail_start..logs.len())
                .find(|&i| logs.is_char_boundary(i))
                .unwrap_or(0);
            eprintln!(
                "===== broker logs ({}, last 64 KiB) =====\n{}\n===== end of broker logs =====",
                self.dir.display(),
                &logs[tail_start..]
            );
        }
        if std::env::var_os("POSTBOX_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ===========================================================================
// PostgreSQL
// ===========================================================================

/// URL of the PostgreSQL server used by tests (`POSTBOX_TEST_PG`), pointing
/// at an existing admin database.
pub fn pg_admin_url() -> String {
    std::env::var("POSTBOX_TEST_PG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// `admin_url` with its database name replaced by `db`.
pub fn pg_url_with_db(admin_url: &str, db: &str) -> String {
    let (base, query) = match admin_url.find('?') {
        Some(i) => admin_url.split_at(i),
        None => (admin_url, ""),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let prefix = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    format!("{prefix}/{db}{query}")
}

/// `e` and its chain of sources, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let _ = write!(s, ": {src}");
        cur = src.source();
    }
    s
}

/// Connect with a bounded wait, spawning the connection task; panics loudly.
pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let fut = tokio_postgres::connect(url, tokio_postgres::NoTls);
    let (client, connection) = match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => panic!(
            "PostgreSQL is not reachable at {url}: {}\n(The tests need a PostgreSQL server: run \
             scripts/ensure-postgres, or point POSTBOX_TEST_PG at one.)",
            error_chain(&e)
        ),
        Err(_) => panic!(
            "PostgreSQL did not answer at {url} within {TIMEOUT:?}\n(The tests need a PostgreSQL \
             server: run scripts/ensure-postgres, or point POSTBOX_TEST_PG at one.)"
        ),
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("postgres connection error: {e}");
        }
    });
    client
}

/// A throw-away database, dropped (`WITH (FORCE)`) when this value is dropped.
pub struct TestDb {
    pub name: String,
    /// `postgres://...@host:port/<name>`, derived from `POSTBOX_TEST_PG`.
    pub url: String,
}

impl TestDb {
    /// Create a uniquely named database. Panics (never skips) when
    /// PostgreSQL is not reachable.
    pub async fn create() -> TestDb {
        let admin_url = pg_admin_url();
        let name = format!("postbox_t_{}", unique_suffix());
        let admin = pg_connect(&admin_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "CREATE DATABASE {name} on {admin_url} failed: {}",
                    error_chain(&e)
                )
            });
        let url = pg_url_with_db(&admin_url, &name);
        TestDb { name, url }
    }

    /// A new client connected to this database.
    pub async fn client(&self) -> tokio_postgres::Client {
        pg_connect(&self.url).await
    }

    /// Run `sql` (several statements allowed) in this database.
    pub async fn batch_execute(&self, sql: &str) {
        let client = self.client().await;
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("SQL failed in {}: {}\n{sql}", self.name, error_chain(&e)));
    }

    /// Run a single-column, single-row query (e.g. `select count(*) ...`) and return the value.
    pub async fn query_one_i64(&self, sql: &str) -> i64 {
        let client = self.client().await;
        let row = client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("query failed: {}\n{sql}", error_chain(&e)));
        row.get::<_, i64>(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = pg_admin_url();
        let name = self.name.clone();
        // A fresh thread with its own runtime: works from inside async tests
        // (any flavour) without blocking on the test's own runtime.
        let handle = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return Err(format!("cannot build runtime: {e}")),
            };
            rt.block_on(async move {
                let connect = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls);
                let (client, connection) = match tokio::time::timeout(TIMEOUT, connect).await {
                    Ok(Ok(pair)) => pair,
                    Ok(Err(e)) => return Err(format!("connect {admin_url}: {}", error_chain(&e))),
                    Err(_) => return Err(format!("connect {admin_url}: timed out")),
                };
                let conn_task = tokio::spawn(connection);
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                let res = match tokio::time::timeout(TIMEOUT * 3, client.batch_execute(&sql)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("{sql}: {}", error_chain(&e))),
                    Err(_) => Err(format!("{sql}: timed out")),
                };
                drop(client);
                let _ = conn_task.await;
                res
            })
        });
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!(
                "warning: the thread dropping test database {} panicked",
                self.name
            ),
        }
    }
}

// ===========================================================================
// MQTT clients (rumqttc)
// ===========================================================================

/// MQTT 3.1.1 options for `addr`: keepalive 30 s, the given clean-session
/// flag, and 16 MiB client-side packet size limits (rumqttc's default is 10 KiB).
pub fn v4_options(addr: SocketAddr, client_id: &str, clean: bool) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(clean);
    o.set_max_packet_size(16 << 20, 16 << 20);
    o
}

/// MQTT 5.0 options for `addr`: keepalive 30 s and the given clean-start flag.
/// (rumqttc's v5 client rejects incoming packets above 10 KiB unless
/// `set_max_packet_size` is used, which also sends the property to the broker.)
pub fn v5_options(addr: SocketAddr, client_id: &str, clean_start: bool) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_start(clean_start);
    o
}

fn remember(seen: &mut VecDeque<String>, what: String) {
    if seen.len() >= 30 {
        seen.pop_front();
    }
    seen.push_back(what);
}

fn seen_list(seen: &VecDeque<String>) -> String {
    let mut s = String::new();
    for e in seen {
        let _ = writeln!(s, "  {e}");
    }
    if s.is_empty() {
        s.push_str("  (nothing)\n");
    }
    s
}

macro_rules! mqtt_client_impl {
    (
        $(#[$meta:meta])*
        $name:ident,
        client = $client:ty,
        eventloop = $eventloop:ty,
        options = $options:ty,
        event = $event:ident,
        packet = $packet:ident,
        connack = $connack:ty,
        publish = $publish:ty,
        suback_code = $suback_code:ty,
        conn_error = $conn_error:ty,
        qos = $qos:ident,
        keep_in_backlog = $keep:pat,
        payload = |$pl:ident| $conv:expr,
        ack_final = |$ackev:ident, $ackqos:ident, $ackpkid:ident| $ackfinal:expr,
    ) => {
        $(#[$meta])*
        pub struct $name {
            pub client: $client,
            pub events: $eventloop,
            /// Incoming events polled while a helper waited for something else
            /// (PUBLISH and DISCONNECT packets); helpers look here first.
            pub backlog: VecDeque<$event>,
        }

        impl $name {
            /// Connect and poll until CONNACK (10 s); panics on refusal or error.
            pub async fn connect(opts: $options) -> ($name, $connack) {
                let id = opts.client_id();
                match Self::try_connect(opts).await {
                    Ok(pair) => pair,
                    Err(e) => panic!("MQTT connect of client {id:?} failed: {e:?}"),
                }
            }

            /// Connect and poll until CONNACK (10 s); returns the connection
            /// error (e.g. `ConnectionRefused(code)`) instead of panicking.
            pub async fn try_connect(opts: $options) -> Result<($name, $connack), $conn_error> {
                let id = opts.client_id();
                let (client, mut events) = <$client>::new(opts, 64);
                match tokio::time::timeout(TIMEOUT, events.poll()).await {
                    Ok(Ok($event::Incoming($packet::ConnAck(ack)))) => {
                        Ok(($name { client, events, backlog: VecDeque::new() }, ack))
                    }
                    Ok(Ok(other)) => panic!("client {id:?}: expected CONNACK, got {other:?}"),
                    Ok(Err(e)) => Err(e),
                    Err(_) => panic!("client {id:?}: no CONNACK within {TIMEOUT:?}"),
                }
            }

            /// One raw `poll()` of the event loop (no backlog), bounded by
            /// `within`: `None` on timeout. Note: polling again after an
            /// `Err` makes rumqttc reconnect.
            pub async fn poll_once(&mut self, within: Duration) -> Option<Result<$event, $conn_error>> {
                tokio::time::timeout(within, self.events.poll()).await.ok()
            }

            /// Poll (10 s) until `f` returns `Some`. Events in the backlog are
            /// offered first (and removed when taken). Incoming PUBLISH /
            /// DISCONNECT events that `f` declines go to the backlog. Panics on
            /// timeout or connection error, listing what it saw.
            pub async fn poll_until<T>(&mut self, mut f: impl FnMut(&$event) -> Option<T>) -> T {
                for i in 0..self.backlog.len() {
                    if let Some(t) = f(&self.backlog[i]) {
                        self.backlog.remove(i);
                        return t;
                    }
                }
                let deadline = Instant::now() + TIMEOUT;
                let mut seen = VecDeque::new();
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, self.events.poll()).await {
                        Ok(Ok(ev)) => {
                            if let Some(t) = f(&ev) {
                                return t;
                            }
                            remember(&mut seen, format!("{ev:?}"));
                            if matches!(ev, $keep) {
                                self.backlog.push_back(ev);
                            }
                        }
                        Ok(Err(e)) => panic!(
                            "connection error while waiting ({e:?}); events seen:\n{}",
                            seen_list(&seen)
                        ),
                        Err(_) => panic!(
                            "condition not met within {TIMEOUT:?}; events seen:\n{}",
                            seen_list(&seen)
                        ),
                    }
                }
            }

            /// The next incoming PUBLISH (backlog first; 10 s).
            pub async fn next_publish(&mut self) -> $publish {
                self.poll_until(|ev| match ev {
                    $event::Incoming($packet::Publish(p)) => Some(p.clone()),
                    _ => None,
                })
                .await
            }

            /// Poll for `within`; panics if a PUBLISH arrives (or is in the
            /// backlog) or the connection fails.
            pub async fn expect_no_publish(&mut self, within: Duration) {
                if let Some(p) = self.backlog.iter().find(|ev| matches!(ev, $event::Incoming($packet::Publish(_)))) {
                    panic!("expected no PUBLISH, but one was already received: {p:?}");
                }
                let deadline = Instant::now() + within;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return;
                    }
                    match tokio::time::timeout(left, self.events.poll()).await {
                        Err(_) => return,
                        Ok(Ok(ev @ $event::Incoming($packet::Publish(_)))) => {
                            panic!("expected no PUBLISH within {within:?}, got {ev:?}")
                        }
                        Ok(Ok(ev)) => {
                            if matches!(ev, $keep) {
                                self.backlog.push_back(ev);
                            }
                        }
                        Ok(Err(e)) => panic!("connection error while expecting no PUBLISH: {e:?}"),
                    }
                }
            }

            /// SUBSCRIBE to one filter and poll until its SUBACK; returns the reason codes.
            pub async fn subscribe(&mut self, filter: &str, qos: $qos) -> Vec<$suback_code> {
                self.client.subscribe(filter, qos).await.expect("queue SUBSCRIBE");
                let mut pkid = None;
                self.poll_until(|ev| match ev {
                    $event::Outgoing(rumqttc::Outgoing::Subscribe(p)) if pkid.is_none() => {
                        pkid = Some(*p);
                        None
                    }
                    $event::Incoming($packet::SubAck(s)) if Some(s.pkid) == pkid => Some(s.return_codes.clone()),
                    _ => None,
                })
                .await
            }

            /// UNSUBSCRIBE and poll until its UNSUBACK.
            pub async fn unsubscribe(&mut self, filter: &str) {
                self.client.unsubscribe(filter).await.expect("queue UNSUBSCRIBE");
                let mut pkid = None;
                self.poll_until(|ev| match ev {
                    $event::Outgoing(rumqttc::Outgoing::Unsubscribe(p)) if pkid.is_none() => {
                        pkid = Some(*p);
                        None
                    }
                    $event::Incoming($packet::UnsubAck(u)) if Some(u.pkid) == pkid => Some(()),
                    _ => None,
                })
                .await
            }

            /// PUBLISH and poll until it is written (QoS 0) or acknowledged
            /// (PUBACK for QoS 1, PUBCOMP for QoS 2); returns the final ack
            /// event (`None` for QoS 0).
            pub async fn publish_acked(
                &mut self,
                topic: &str,
                qos: $qos,
                retain: bool,
                payload: impl Into<Vec<u8>>,
            ) -> Option<$event> {
                let $pl: Vec<u8> = payload.into();
                self.client.publish(topic, qos, retain, $conv).await.expect("queue PUBLISH");
                let mut pkid: Option<u16> = None;
                self.poll_until(|ev| {
                    if pkid.is_none() {
                        if let $event::Outgoing(rumqttc::Outgoing::Publish(p)) = ev {
                            pkid = Some(*p);
                            if qos == $qos::AtMostOnce {
                                return Some(None);
                            }
                        }
                        return None;
                    }
                    let $ackev = ev;
                    let $ackqos = qos;
                    let $ackpkid = pkid.unwrap_or_default();
                    if $ackfinal {
                        Some(Some(ev.clone()))
                    } else {
                        None
                    }
                })
                .await
            }

            /// PUBLISH and, for QoS > 0, poll until its PUBACK / PUBCOMP.
            pub async fn publish(&mut self, topic: &str, qos: $qos, retain: bool, payload: impl Into<Vec<u8>>) {
                let _ = self.publish_acked(topic, qos, retain, payload).await;
            }

            /// Poll (10 s) until the event loop reports a connection error
            /// (the broker closed the connection); returns that error.
            /// Other events are dropped, except PUBLISH / DISCONNECT which go
            /// to the backlog.
            pub async fn expect_disconnected(&mut self) -> $conn_error {
                let deadline = Instant::now() + TIMEOUT;
                let mut seen = VecDeque::new();
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, self.events.poll()).await {
                        Ok(Err(e)) => return e,
                        Ok(Ok(ev)) => {
                            remember(&mut seen, format!("{ev:?}"));
                            if matches!(ev, $keep) {
                                self.backlog.push_back(ev);
                            }
                        }
                        Err(_) => panic!(
                            "the connection was not closed within {TIMEOUT:?}; events seen:\n{}",
                            seen_list(&seen)
                        ),
                    }
                }
            }

            /// Send DISCONNECT and poll until the event loop reports the close.
            pub async fn disconnect(mut self) {
                self.client.disconnect().await.expect("queue DISCONNECT");
                let deadline = Instant::now() + TIMEOUT;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, self.events.poll()).await {
                        Ok(Err(_)) => return,
                        Ok(Ok(_)) => {}
                        Err(_) => panic!("the broker did not close the connection within {TIMEOUT:?} after DISCONNECT"),
                    }
                }
            }
        }
    };
}

mqtt_client_impl! {
    /// An MQTT 3.1.1 client (rumqttc) with polling helpers.
    V4Client,
    client = rumqttc::AsyncClient,
    eventloop = rumqttc::EventLoop,
    options = rumqttc::MqttOptions,
    event = V4Event,
    packet = V4Packet,
    connack = rumqttc::ConnAck,
    publish = rumqttc::Publish,
    suback_code = rumqttc::SubscribeReasonCode,
    conn_error = rumqttc::ConnectionError,
    qos = V4QoS,
    keep_in_backlog = V4Event::Incoming(V4Packet::Publish(_) | V4Packet::Disconnect),
    payload = |payload| payload,
    ack_final = |ev, qos, pkid| match ev {
        V4Event::Incoming(V4Packet::PubAck(a)) => qos == V4QoS::AtLeastOnce && a.pkid == pkid,
        V4Event::Incoming(V4Packet::PubComp(c)) => qos == V4QoS::ExactlyOnce && c.pkid == pkid,
        _ => false,
    },
}

mqtt_client_impl! {
    /// An MQTT 5.0 client (rumqttc::v5) with polling helpers.
    V5Client,
    client = rumqttc::v5::AsyncClient,
    eventloop = rumqttc::v5::EventLoop,
    options = rumqttc::v5::MqttOptions,
    event = V5Event,
    packet = V5Packet,
    connack = rumqttc::v5::mqttbytes::v5::ConnAck,
    publish = rumqttc::v5::mqttbytes::v5::Publish,
    suback_code = rumqttc::v5::mqttbytes::v5::SubscribeReasonCode,
    conn_error = rumqttc::v5::ConnectionError,
    qos = V5QoS,
    keep_in_backlog = V5Event::Incoming(V5Packet::Publish(_) | V5Packet::Disconnect(_)),
    payload = |payload| bytes::Bytes::from(payload),
    ack_final = |ev, qos, pkid| match ev {
        V5Event::Incoming(V5Packet::PubAck(a)) => qos == V5QoS::AtLeastOnce && a.pkid == pkid,
        V5Event::Incoming(V5Packet::PubComp(c)) => qos == V5QoS::ExactlyOnce && c.pkid == pkid,
        // A failed PUBREC ends a QoS 2 flow.
        V5Event::Incoming(V5Packet::PubRec(r)) => {
            qos == V5QoS::ExactlyOnce
                && r.pkid == pkid
                && !matches!(
                    r.reason,
                    rumqttc::v5::mqttbytes::v5::PubRecReason::Success
                        | rumqttc::v5::mqttbytes::v5::PubRecReason::NoMatchingSubscribers
                )
        }
        _ => false,
    },
}

use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::v5::Event as V5Event;
use rumqttc::Event as V4Event;
use rumqttc::Packet as V4Packet;
use rumqttc::QoS as V4QoS;

impl V5Client {
    /// Wait (10 s, backlog first) for a DISCONNECT from the broker and return
    /// it. rumqttc reports a server DISCONNECT either as an incoming packet or
    /// as the connection error `MqttState(ServerDisconnect { .. })`; both count.
    pub async fn next_disconnect(&mut self) -> rumqttc::v5::mqttbytes::v5::Disconnect {
        if let Some(pos) = self
            .backlog
            .iter()
            .position(|e| matches!(e, V5Event::Incoming(V5Packet::Disconnect(_))))
        {
            if let Some(V5Event::Incoming(V5Packet::Disconnect(d))) = self.backlog.remove(pos) {
                return d;
            }
        }
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.events.poll()).await {
                Err(_) => panic!("no DISCONNECT from the broker within {TIMEOUT:?}"),
                Ok(Ok(V5Event::Incoming(V5Packet::Disconnect(d)))) => return d,
                Ok(Ok(_)) => {}
                Ok(Err(rumqttc::v5::ConnectionError::MqttState(
                    rumqttc::v5::StateError::ServerDisconnect {
                        reason_code,
                        reason_string,
                    },
                ))) => {
                    let mut d = rumqttc::v5::mqttbytes::v5::Disconnect::new(reason_code);
                    if reason_string.is_some() {
                        d.properties = Some(rumqttc::v5::mqttbytes::v5::DisconnectProperties {
                            session_expiry_interval: None,
                            reason_string,
                            user_properties: Vec::new(),
                            server_reference: None,
                        });
                    }
                    return d;
                }
                Ok(Err(e)) => panic!("connection ended without DISCONNECT: {e:?}"),
            }
        }
    }

    /// Poll (10 s, backlog first) until the next SUBACK (for a SUBSCRIBE
    /// queued directly on `client`, e.g. with properties).
    pub async fn next_suback(&mut self) {
        self.poll_until(|ev| matches!(ev, V5Event::Incoming(V5Packet::SubAck(_))).then_some(()))
            .await
    }

    /// SUBSCRIBE to one filter with one user property and poll until its
    /// SUBACK; returns the reason codes.
    pub async fn subscribe_with_user_property(
        &mut self,
        filter: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
        (key, value): (&str, &str),
    ) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        let props = rumqttc::v5::mqttbytes::v5::SubscribeProperties {
            id: None,
            user_properties: vec![(key.to_string(), value.to_string())],
        };
        self.client
            .subscribe_with_properties(filter, qos, props)
            .await
            .expect("queue SUBSCRIBE");
        self.poll_until(|ev| match ev {
            V5Event::Incoming(V5Packet::SubAck(s)) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// PUBLISH with MQTT 5 properties and poll until its PUBACK (QoS 1 only).
    pub async fn publish_with_properties(
        &mut self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        properties: rumqttc::v5::mqttbytes::v5::PublishProperties,
    ) {
        let payload: Vec<u8> = payload.into();
        self.client
            .publish_with_properties(topic, V5QoS::AtLeastOnce, false, payload, properties)
            .await
            .expect("queue PUBLISH");
        let mut pkid = None;
        self.poll_until(|ev| match ev {
            V5Event::Outgoing(rumqttc::Outgoing::Publish(p)) if pkid.is_none() => {
                pkid = Some(*p);
                None
            }
            V5Event::Incoming(V5Packet::PubAck(a)) if Some(a.pkid) == pkid => Some(()),
            _ => None,
        })
        .await
    }
}

// ===========================================================================
// Raw byte-level client
// ===========================================================================

/// Outcome of [`RawClient::read_packet_within`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawRead {
    Packet(Vec<u8>),
    Closed,
    TimedOut,
}

/// A plain TCP connection speaking bytes, for malformed packets and protocol violations.
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
}

/// Total length of the first packet in `buf` if its fixed header is complete.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let mut len: usize = 0;
    let mut shift = 0;
    for i in 1..=4 {
        let b = *buf.get(i)?;
        len += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(1 + i + len);
        }
        shift += 7;
    }
    panic!(
        "malformed remaining length from the broker: {:02x?}",
        &buf[..buf.len().min(5)]
    )
}

impl RawClient {
    /// TCP-connect to `addr` (10 s).
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = match tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => panic!("raw connect to {addr} failed: {e}"),
            Err(_) => panic!("raw connect to {addr} timed out"),
        };
        let _ = stream.set_nodelay(true);
        RawClient {
            stream,
            buf: BytesMut::with_capacity(4096),
        }
    }

    /// Write `bytes` (and flush); panics on error.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes)
            .await
            .unwrap_or_else(|e| panic!("raw send failed: {e}"));
    }

    /// Write `bytes` (and flush), returning the I/O error (e.g. the broker already closed).
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Read one whole MQTT packet (fixed header + body) or `None` on EOF /
    /// reset. Panics after 10 s.
    pub async fn read_packet(&mut self) -> Option<Vec<u8>> {
        match self.read_packet_within(TIMEOUT).await {
            RawRead::Packet(p) => Some(p),
            RawRead::Closed => None,
            RawRead::TimedOut => panic!(
                "no complete MQTT packet within {TIMEOUT:?} (buffered: {:02x?})",
                &self.buf[..]
            ),
        }
    }

    /// Read one packet, waiting at most `within`.
    pub async fn read_packet_within(&mut self, within: Duration) -> RawRead {
        let deadline = Instant::now() + within;
        loop {
            if let Some(len) = frame_len(&self.buf) {
                if self.buf.len() >= len {
                    return RawRead::Packet(self.buf.split_to(len).to_vec());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return RawRead::TimedOut,
                Ok(Ok(0)) | Ok(Err(_)) => return RawRead::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Read and discard packets until the broker closes the connection (10 s); panics on timeout.
    pub async fn expect_closed(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_packet_within(left).await {
                RawRead::Closed => return,
                RawRead::Packet(p) => seen.push(p),
                RawRead::TimedOut => panic!(
                    "the broker did not close the connection within {TIMEOUT:?}; packets received: {seen:02x?}"
                ),
            }
        }
    }

    /// Panics if a packet arrives or the connection closes within `within`.
    pub async fn expect_silence(&mut self, within: Duration) {
        match self.read_packet_within(within).await {
            RawRead::TimedOut => {}
            other => panic!("expected nothing from the broker for {within:?}, got {other:02x?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Byte encoders
// ---------------------------------------------------------------------------

/// Length of the variable byte integer at the start of `b`, and its value.
pub fn read_varint(b: &[u8]) -> (usize, usize) {
    let mut value = 0usize;
    for (i, byte) in b.iter().enumerate().take(4) {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (i + 1, value);
        }
    }
    panic!("malformed variable byte integer: {b:02x?}")
}

/// Append an MQTT variable byte integer.
pub fn encode_varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

/// Append a length-prefixed UTF-8 string.
pub fn encode_str(s: &str, out: &mut Vec<u8>) {
    let len = u16::try_from(s.len()).expect("string too long for MQTT");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A whole packet: `first_byte` (type << 4 | flags), remaining length, `body`.
pub fn packet(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first_byte];
    encode_varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// The packet type (upper nibble of the first byte) of an encoded packet.
pub fn packet_type(p: &[u8]) -> u8 {
    p.first().map(|b| b >> 4).unwrap_or(0)
}

/// Packet type numbers.
pub mod ptype {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

fn connect_bytes(level: u8, client_id: &str, clean: bool, keepalive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    encode_str("MQTT", &mut body);
    body.push(level);
    body.push(if clean { 0x02 } else { 0x00 });
    body.extend_from_slice(&keepalive.to_be_bytes());
    if level == 5 {
        body.push(0); // no CONNECT properties
    }
    encode_str(client_id, &mut body);
    packet(0x10, &body)
}

/// A hand-encoded MQTT 3.1.1 CONNECT (no will, no credentials).
pub fn connect_v4_bytes(client_id: &str, clean: bool, keepalive: u16) -> Vec<u8> {
    connect_bytes(4, client_id, clean, keepalive)
}

/// A hand-encoded MQTT 5.0 CONNECT (no properties, will or credentials).
pub fn connect_v5_bytes(client_id: &str, clean: bool, keepalive: u16) -> Vec<u8> {
    connect_bytes(5, client_id, clean, keepalive)
}

/// MQTT 3.1.1 PUBLISH (`pkid` ignored for QoS 0).
pub fn publish_v4_bytes(topic: &str, qos: u8, retain: bool, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    encode_str(topic, &mut body);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1) | u8::from(retain), &body)
}

/// MQTT 5.0 PUBLISH with no properties (`pkid` ignored for QoS 0).
pub fn publish_v5_bytes(topic: &str, qos: u8, retain: bool, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    encode_str(topic, &mut body);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.push(0); // no properties
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1) | u8::from(retain), &body)
}

/// MQTT 3.1.1 SUBSCRIBE with one filter.
pub fn subscribe_v4_bytes(pkid: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    encode_str(filter, &mut body);
    body.push(qos);
    packet(0x82, &body)
}

/// MQTT 5.0 SUBSCRIBE with one filter, no properties; `options` is the
/// subscription-options byte (QoS in bits 0-1).
pub fn subscribe_v5_bytes(pkid: u16, filter: &str, options: u8) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    body.push(0); // no properties
    encode_str(filter, &mut body);
    body.push(options);
    packet(0x82, &body)
}

/// PINGREQ.
pub fn pingreq_bytes() -> Vec<u8> {
    vec![0xC0, 0x00]
}

/// DISCONNECT (valid for 3.1.1, and for 5.0 meaning reason 0x00).
pub fn disconnect_bytes() -> Vec<u8> {
    vec![0xE0, 0x00]
}
pub mod auth;
pub mod certs;
pub mod http;
pub mod pg_cluster;
pub mod pgsql;
pub mod scram;

// ===========================================================================
// Several listeners
// ===========================================================================

impl Broker {
    /// The addresses of the first `n` `listening on` lines (one per
    /// listener, in config order) of the current run, waiting (10 s) until
    /// that many are printed.
    pub async fn listener_addrs(&self, n: usize) -> Vec<SocketAddr> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let stdout = self.stdout();
            let current = stdout
                .rsplit("===== harness: broker restart =====")
                .next()
                .unwrap_or("");
            let addrs: Vec<SocketAddr> = current
                .lines()
                .filter_map(|l| l.trim().strip_prefix("listening on "))
                .filter_map(|a| a.trim().parse().ok())
                .collect();
            if addrs.len() >= n {
                return addrs[..n].to_vec();
            }
            if Instant::now() >= deadline {
                panic!(
                    "expected {n} `listening on` lines within {TIMEOUT:?}, got:\n{}",
                    self.stdout()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
