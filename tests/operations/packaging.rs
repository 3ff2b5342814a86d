//! What a package ships: `postbox --version`, and the example configs of
//! `etc/examples/` started as they are (only the addresses and the database
//! changed to the test's), so they cannot rot: the single node serves its
//! password-file users, and two cluster nodes form a cluster on PostgreSQL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::QoS;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::support::*;

const ETC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../etc");

#[tokio::test]
async fn version_prints_the_crate_version() {
    let out = tokio::time::timeout(TIMEOUT, Command::new(broker_bin()).arg("--version").output())
        .await
        .expect("postbox --version timed out")
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("postbox {}\n", env!("CARGO_PKG_VERSION"))
    );
}

/// `text` with the value of the (uncommented) line of `key` replaced;
/// panics when the file has no such line, or several.
fn set_key(text: &str, key: &str, value: &str) -> String {
    let mut found = 0;
    let out: Vec<String> = text
        .lines()
        .map(|line| match line.split_once('=') {
            Some((k, _)) if k.trim() == key => {
                found += 1;
                format!("{key} = {value}")
            }
            _ => line.to_string(),
        })
        .collect();
    assert_eq!(found, 1, "expected one `{key} = ...` line in the example");
    out.join("\n") + "\n"
}

/// A directory laid out like /etc/postbox: `example` as postbox.conf
/// (after `edit`), the shipped plugin files beside it, and one user
/// `alice` (password `s3cret`) in the password file.
async fn etc_dir(example: &str, edit: impl FnOnce(String) -> String, db: Option<&TestDb>) -> PathBuf {
    let dir = temp_dir("example");
    let conf = std::fs::read_to_string(format!("{ETC}/examples/{example}")).unwrap();
    std::fs::write(dir.join("postbox.conf"), edit(conf)).unwrap();
    for f in ["auth_file.conf", "acl", "passwd"] {
        std::fs::copy(format!("{ETC}/{f}"), dir.join(f)).unwrap();
    }
    if let Some(db) = db {
        let backend = std::fs::read_to_string(format!("{ETC}/backend_pgsql.conf")).unwrap();
        let backend = set_key(&backend, "backend.pgsql.pool1.database", &db.name);
        std::fs::write(dir.join("backend_pgsql.conf"), backend).unwrap();
    }
    let passwd = dir.join("passwd");
    let added = Command::new(broker_bin())
        .args(["passwd", "-b", passwd.to_str().unwrap(), "alice", "s3cret"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    dir
}

/// `postbox -c <dir>/postbox.conf --bind 127.0.0.1:0`, its stderr in
/// `<dir>/stderr.log`; killed on drop.
struct Node {
    child: Child,
    addr: SocketAddr,
    /// The `http listening on` address, when the config has one.
    http: Arc<Mutex<Option<SocketAddr>>>,
    dir: PathBuf,
}

impl Node {
    async fn start(dir: &Path) -> Node {
        let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let mut child = Command::new(broker_bin())
            .arg("-c")
            .arg(dir.join("postbox.conf"))
            .args(["--bind", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = tokio::time::timeout(BROKER_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(a) = line.strip_prefix("listening on ") {
                    return a.parse::<SocketAddr>().ok();
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let Some(addr) = addr else {
            let _ = child.start_kill();
            let _ = child.wait().await;
            panic!(
                "{} did not start:\n{}",
                dir.join("postbox.conf").display(),
                std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
            );
        };
        // Keep reading stdout, so the broker never blocks on a full pipe.
        let http = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&http);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(a) = line.strip_prefix("http listening on ") {
                    *seen.lock().unwrap() = a.trim().parse::<SocketAddr>().ok();
                }
            }
        });
        Node {
            child,
            addr,
            http,
            dir: dir.to_path_buf(),
        }
    }

    /// The HTTP listener's address (waits for its line).
    async fn http_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + BROKER_TIMEOUT;
        loop {
            if let Some(a) = *self.http.lock().unwrap() {
                return a;
            }
            assert!(Instant::now() < deadline, "no `http listening on` line");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// A client of user alice.
    fn alice(&self, clientid: &str) -> rumqttc::MqttOptions {
        let mut o = v4_options(self.addr, clientid, true);
        o.set_credentials("alice", "s3cret");
        o
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!("===== {} =====\n{}", self.dir.display(), self.logs());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn the_single_node_example_serves_its_users() {
    let dir = etc_dir(
        "single-node.conf",
        |c| set_key(&c, "management.listener.http", "127.0.0.1:0"),
        None,
    )
    .await;
    let node = Node::start(&dir).await;

    let anonymous = V4Client::try_connect(v4_options(node.addr, "nobody", true)).await;
    assert!(
        matches!(
            anonymous,
            Err(rumqttc::ConnectionError::ConnectionRefused(
                rumqttc::ConnectReturnCode::NotAuthorized
            ))
        ),
        "anonymous client: {:?}",
        anonymous.map(|(_, ack)| ack)
    );
    // etc/acl: everyone reads sensors/#, and writes sensors/<user name>/#.
    let (mut c, _) = V4Client::connect(node.alice("kitchen")).await;
    c.subscribe("sensors/#", QoS::AtLeastOnce).await;
    c.publish("sensors/alice/temp", QoS::AtLeastOnce, false, "21.5")
        .await;
    assert_eq!(&c.next_publish().await.payload[..], b"21.5");
    // log.format = json in the example.
    let logs = node.logs();
    let connected = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "client connected" && l["clientid"] == "kitchen");
    assert!(connected.is_some(), "{logs}");

    // The Docker image's HEALTHCHECK: `postbox ctl status` with the
    // example's credentials succeeds against the example's HTTP listener.
    let url = format!("http://{}", node.http_addr().await);
    let status = Command::new(broker_bin())
        .args([
            "ctl",
            "--url",
            &url,
            "--user",
            "admin",
            "--password",
            "public",
            "status",
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let example = std::fs::read_to_string(format!("{ETC}/examples/single-node.conf")).unwrap();
    assert!(example.contains("\nmanagement.listener.http = 127.0.0.1:8081\n"));
    let dockerfile = std::fs::read_to_string(format!("{ETC}/../Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(
            r#""ctl", "--url", "http://127.0.0.1:8081", "--user", "admin", "--password", "public", "status""#
        ),
        "the HEALTHCHECK uses the example's listener and credentials"
    );
}

#[tokio::test]
async fn two_nodes_of_the_cluster_example_form_a_cluster() {
    let db = TestDb::create().await;
    let mut nodes = Vec::new();
    for name in ["postbox-a@127.0.0.1", "postbox-b@127.0.0.1"] {
        let dir = etc_dir(
            "cluster-node.conf",
            |c| {
                let c = set_key(&c, "node.name", name);
                let c = set_key(&c, "cluster.database", &db.url);
                let c = set_key(&c, "management.listener.http", "127.0.0.1:0");
                set_key(&c, "cluster.listen", "127.0.0.1:0")
            },
            Some(&db),
        )
        .await;
        nodes.push(Node::start(&dir).await);
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    // Both nodes registered in the cluster's database.
    let pg = db.client().await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let n: i64 = pg
            .query_one("select count(*) from postbox_node", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} nodes registered after {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A subscriber on one node receives what alice publishes on the other,
    // once the route has reached it (probes until then).
    let (mut sub, _) = V4Client::connect(a.alice("sub-on-a")).await;
    sub.subscribe("sensors/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = V4Client::connect(b.alice("pub-on-b")).await;
    let deadline = Instant::now() + 2 * TIMEOUT;
    'probing: loop {
        assert!(
            Instant::now() < deadline,
            "node b never routed to node a's subscriber"
        );
        publ.publish("sensors/alice/probe", QoS::AtMostOnce, false, "probe")
            .await;
        let until = Instant::now() + Duration::from_millis(200);
        while let Some(ev) = sub
            .poll_once(until.saturating_duration_since(Instant::now()))
            .await
        {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))) = ev {
                break 'probing;
            }
        }
    }
    publ.publish("sensors/alice/temp", QoS::AtLeastOnce, false, "19.0")
        .await;
    loop {
        let p = sub.next_publish().await;
        if p.topic == "sensors/alice/temp" {
            assert_eq!(&p.payload[..], b"19.0");
            break;
        }
    }
}

/// `systemd-analyze verify` accepts `packaging/postbox.service` without a
/// warning (it warns about unknown keys and bad values, and checks that the
/// `ExecStart` binary exists: here the one under test stands in for
/// `/usr/bin/postbox`).
#[tokio::test]
async fn the_systemd_unit_verifies_without_warnings() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/postbox.service"
    ))
    .unwrap();
    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/usr/bin/postbox -c /etc/postbox/postbox.conf"),
        "{unit}"
    );
    assert!(
        unit.lines().any(|l| l == "ExecReload=/bin/kill -HUP $MAINPID"),
        "{unit}"
    );
    let dir = temp_dir("unit");
    let path = dir.join("postbox.service");
    let bin = broker_bin();
    std::fs::write(&path, unit.replace("/usr/bin/postbox", bin.to_str().unwrap())).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run systemd-analyze (Debian package `systemd`): {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stderr.trim(), "", "systemd-analyze verify warns");
}
