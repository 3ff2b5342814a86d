//! The backend through a transaction-pooling proxy (PgBouncer,
//! `pool_mode = transaction`): no reliance on server-side named statements
//! or session state surviving between transactions.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use rumqttc::QoS;
use support::pgsql::*;
use support::*;

/// A PgBouncer in transaction pooling mode in front of the test server,
/// run as the `postgres` user (it refuses root). Killed on drop.
struct Bouncer {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Bouncer {
    fn start() -> Bouncer {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("pgbouncer is not installed: scripts/test installs the Debian package");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = temp_dir("pgbouncer");
        let server = pg_server();
        let (host, pg_port) = server.rsplit_once(':').unwrap();
        let ini = format!(
            "[databases]\n* = host={host} port={pg_port} user=postgres\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             auth_type = any\npool_mode = transaction\nmax_client_conn = 200\ndefault_pool_size = 3\nunix_socket_dir =\n\
             ignore_startup_parameters = extra_float_digits,application_name\nlogfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        let mut cmd = if running_as_root() {
            let _ = std::process::Command::new("chown")
                .args(["-R", "postgres", dir.to_str().unwrap()])
                .status();
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", bin]);
            c
        } else {
            std::process::Command::new(bin)
        };
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until it accepts connections.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "pgbouncer did not start; see {}",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Bouncer { child, port, dir }
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        // As root the child is `runuser`, which cannot pass a SIGKILL on:
        // pgbouncer itself is stopped through its pid file, else it outlives
        // the test.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", pid.trim()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

#[tokio::test]
async fn offline_delivery_and_sql_actions_work_through_transaction_pooling() {
    let db = TestDb::create().await;
    db.batch_execute("create table conn_log (clientid text, node text)")
        .await;
    let bouncer = Bouncer::start();
    let sql_rule = r##"backend.pgsql.hook.client.connected.3 = {"action": {"sql": ["insert into conn_log (clientid, node) values (${clientid}, ${node})"]}, "pool": "pool1"}"##;
    let conf = format!(
        "backend.pgsql.pool1.server = 127.0.0.1:{}\nbackend.pgsql.pool1.pool_size = 4\nbackend.pgsql.pool1.username = postgres\nbackend.pgsql.pool1.database = {}\n{EMQX_DEFAULT_RULES}\n{sql_rule}\n",
        bouncer.port, db.name
    );
    let broker =
        Broker::start_with_files("plugins.load = backend_pgsql\n", &[("backend_pgsql.conf", &conf)]).await;

    // Several rounds, so statements run on different server connections of the pool.
    let (c, _) = V4Client::connect(v4_options(broker.addr, "pooled", true)).await;
    let mut c = c;
    c.subscribe("pool/t", QoS::AtLeastOnce).await;
    c.disconnect().await;
    for round in 0..3 {
        let (mut p, _) = V4Client::connect(v4_options(broker.addr, "pub", true)).await;
        for i in 0..5 {
            p.publish("pool/t", QoS::AtLeastOnce, false, format!("r{round}-{i}"))
                .await;
        }
        p.disconnect().await;
        let (mut c, _) = V4Client::connect(v4_options(broker.addr, "pooled", true)).await;
        c.subscribe("pool/t", QoS::AtLeastOnce).await;
        for i in 0..5 {
            assert_eq!(
                &c.next_publish().await.payload[..],
                format!("r{round}-{i}").as_bytes()
            );
        }
        c.expect_no_publish(Duration::from_millis(200)).await;
        c.disconnect().await;
    }
    let logged: i64 = db
        .client()
        .await
        .query_one("select count(*) from conn_log where clientid = 'pooled'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, 4, "the sql action ran on every connect");
    assert!(!broker.logs().contains("prepared statement"), "{}", broker.logs());
}
