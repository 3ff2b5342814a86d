//! A private PostgreSQL server for tests that restart or stop the database
//! for real (`pg_ctl restart -m fast` / `-m immediate`, `pg_ctl stop`),
//! which no test may do to the shared server other tests use.
//!
//! [`PgCluster::start`] runs `initdb` into a fresh temp dir and starts the
//! server on a free port of 127.0.0.1 (as the `postgres` system user when the
//! tests run as root: the server refuses root). `fsync` is off: these tests
//! kill the server process, never the machine, so what a commit wrote to the
//! kernel survives an immediate shutdown just as it would with fsync on. The
//! server is stopped and its directory removed on drop.
//!
//! Needs PostgreSQL's server binaries (`/usr/lib/postgresql/*/bin/initdb`,
//! Debian's `postgresql` package, which `scripts/test` installs when
//! missing); a test using it fails loudly without them.

use super::*;

/// How the server is shut down (`pg_ctl -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Sessions are terminated, transactions rolled back, a checkpoint written.
    Fast,
    /// Every server process is killed at once; the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// A PostgreSQL server of its own, on its own port.
pub struct PgCluster {
    /// The server's port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    bindir: PathBuf,
}

fn am_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb` (or
/// `POSTBOX_PG_BINDIR`).
fn pg_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("POSTBOX_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in entries.flatten() {
            let version = e.file_name().to_string_lossy().parse::<u32>().unwrap_or(0);
            let bin = e.path().join("bin");
            if bin.join("initdb").exists() && best.as_ref().is_none_or(|(v, _)| version > *v) {
                best = Some((version, bin));
            }
        }
    }
    best.map(|(_, b)| b).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (install Debian's \
             `postgresql` package, or set POSTBOX_PG_BINDIR): this test restarts a private server"
        )
    })
}

/// A port nobody listens on now (the kernel's choice for an ephemeral bind).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

impl PgCluster {
    /// Initialises and starts a private server.
    pub async fn start() -> PgCluster {
        let bindir = pg_bindir();
        let dir = temp_dir("pgcluster");
        let root = am_root();
        if root {
            run_checked(std::process::Command::new("chown").arg("postgres:").arg(&dir)).await;
        }
        let mut cluster = PgCluster { port: 0, dir, bindir };
        let initdb = cluster.bindir.join("initdb");
        let data = cluster.data_dir();
        cluster
            .as_server_user(&[
                initdb.to_str().unwrap(),
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .await;
        // A port taken between free_port() and the server's bind fails the
        // start: try a few.
        let mut last_error = String::new();
        for _ in 0..5 {
            cluster.port = free_port();
            match cluster.try_pg_ctl(&["start"]).await {
                Ok(()) => return cluster,
                Err(e) => last_error = e,
            }
        }
        panic!("cannot start a private PostgreSQL server: {last_error}");
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// `127.0.0.1:<port>`, as `backend.pgsql.<pool>.server` takes it.
    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A directory of the server's for a tablespace.
    pub fn tablespace_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates a database (the server must be running).
    pub async fn create_db(&self, name: &str) {
        let admin = pg_connect(&self.url("postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {}", error_chain(&e)));
    }

    /// A client of database `db`.
    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        pg_connect(&self.url(db)).await
    }

    /// `pg_ctl restart -m <mode>`: returns once the server accepts connections again.
    pub async fn restart(&self, mode: StopMode) {
        self.pg_ctl(&["restart", "-m", mode.arg()]).await;
    }

    /// `pg_ctl stop -m <mode>`: returns once the server is down.
    pub async fn stop(&self, mode: StopMode) {
        self.pg_ctl(&["stop", "-m", mode.arg()]).await;
    }

    /// Starts the stopped server again (same port, same data).
    pub async fn start_again(&self) {
        self.pg_ctl(&["start"]).await;
    }

    async fn pg_ctl(&self, args: &[&str]) {
        if let Err(e) = self.try_pg_ctl(args).await {
            panic!("{e}");
        }
    }

    async fn try_pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let pg_ctl = self.bindir.join("pg_ctl");
        let data = self.data_dir();
        let log = self.dir.join("server.log");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.display()
        );
        let mut argv: Vec<&str> = vec![pg_ctl.to_str().unwrap(), "-D", data.to_str().unwrap()];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["-w", "-t", "60", "-l", log.to_str().unwrap(), "-o", &options]);
        let out = self
            .command(&argv)
            .output()
            .await
            .map_err(|e| format!("pg_ctl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl {args:?} failed ({}): {}{}\n--- server log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            ))
        }
    }

    fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = if am_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]);
            c.args(argv);
            c
        } else {
            let mut c = Command::new(argv[0]);
            c.args(&argv[1..]);
            c
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    async fn as_server_user(&self, argv: &[&str]) {
        let out = self
            .command(argv)
            .output()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", argv[0]));
        assert!(
            out.status.success(),
            "{argv:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

async fn run_checked(cmd: &mut std::process::Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate: nothing of it is needed any more.
        let pg_ctl = self.bindir.join("pg_ctl");
        let data = self.data_dir();
        let argv = [
            pg_ctl.to_str().unwrap_or_default(),
            "-D",
            data.to_str().unwrap_or_default(),
            "stop",
            "-m",
            "immediate",
            "-w",
        ];
        let status = if am_root() {
            std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(argv)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        } else {
            std::process::Command::new(argv[0])
                .args(&argv[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        };
        let _ = status;
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            let start = (log.len().saturating_sub(8 * 1024)..log.len())
                .find(|&i| log.is_char_boundary(i))
                .unwrap_or(0);
            let tail = &log[start..];
            eprintln!("===== private PostgreSQL log (last 8 KiB) =====\n{tail}");
        }
        if std::env::var_os("POSTBOX_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
