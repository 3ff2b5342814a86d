//! What the faults act on: the test database (on the shared server), the
//! three nodes, where the clients find them (and how a client picks one),
//! and the subscribers; the SIGKILLs and restarts of nodes, with the
//! subscribers' read positions read just before each.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::QoS;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::clients::{Moving, Sub, Subscriber};
use crate::publishers::PubLog;
use crate::shared_clients::{start_subscribers, subscribe_before_the_run};
use crate::support::pgsql::{pgsql_conf, sql_literal, wait_for_db, EMQX_DEFAULT_RULES, SESSION_RULE};
use crate::support::{error_chain, v4_options, Broker, TestDb, V4Client, TIMEOUT};
use crate::world::{lock, World};
use crate::{DOWN_MARGIN, FILTER, HEARTBEAT, NODES, NODE_TIMEOUT, PROBE_TOPIC, SUBSCRIBERS};

/// Where each node listens for clients; `None` while it is down.
pub(crate) type NodeAddrs = Vec<Option<SocketAddr>>;

/// The node at draw `r` among those up, other than `exclude` (`None` when
/// there is none).
pub(crate) fn pick(nodes: &NodeAddrs, exclude: Option<usize>, r: u64) -> Option<(usize, SocketAddr)> {
    let up: Vec<(usize, SocketAddr)> = nodes
        .iter()
        .enumerate()
        .filter_map(|(i, a)| a.map(|a| (i, a)))
        .filter(|(i, _)| Some(*i) != exclude)
        .collect();
    (!up.is_empty()).then(|| up[(r % up.len() as u64) as usize])
}

/// One SIGKILL of a node.
#[derive(Clone, Debug)]
pub(crate) struct NodeKill {
    pub(crate) node: usize,
    /// Why the schedule killed it.
    pub(crate) what: &'static str,
    /// Just before the SIGKILL was sent.
    pub(crate) at: f64,
    /// When the process had exited.
    pub(crate) done: f64,
    /// When the new process listened again (`f64::INFINITY` until then).
    pub(crate) restarted: f64,
    /// Each subscriber's read position, read just before the SIGKILL.
    pub(crate) positions: Vec<Option<i64>>,
    /// Kept down until the others declared it down: how long after the
    /// SIGKILL its row was gone (`None`: not within the bound).
    pub(crate) declared_down: Option<Option<f64>>,
}

/// How many faults of each kind were injected.
#[derive(Default)]
pub(crate) struct Faults {
    pub(crate) sub_drops: usize,
    pub(crate) mid_stream_armed: usize,
    pub(crate) moves: usize,
    pub(crate) kills_in_replay: usize,
    pub(crate) kills_after_move: usize,
    pub(crate) double_kills: usize,
}

/// Everything the schedule acts on.
pub(crate) struct Rig {
    pub(crate) world: Arc<World>,
    // Before `db`: the nodes stop, and the test's connection closes, before
    // the database is dropped.
    pub(crate) nodes: Vec<Broker>,
    pub(crate) pg: tokio_postgres::Client,
    pub(crate) db: TestDb,
    nodes_tx: watch::Sender<NodeAddrs>,
    pub(crate) sub_ids: Vec<String>,
    pub(crate) subs: Vec<Sub>,
    pub(crate) publog: Arc<Mutex<PubLog>>,
    pub(crate) kills: Vec<NodeKill>,
    pub(crate) faults: Faults,
}

fn node_name(i: usize) -> String {
    format!("node-{i}")
}

fn node_conf(db: &TestDb, i: usize) -> String {
    format!(
        "node.name = {}\ncluster.enable = true\ncluster.database = {}\ncluster.listen = 127.0.0.1:0\n\
         cluster.secret = chaos-cluster-secret\ncluster.heartbeat = {}ms\ncluster.node_timeout = {}ms\n\
         plugins.load = backend_pgsql\n",
        node_name(i),
        db.url,
        HEARTBEAT.as_millis(),
        NODE_TIMEOUT.as_millis()
    )
}

impl Rig {
    /// The nodes started and formed, every subscription made, the clock
    /// started, every subscriber connected and routed to from every node.
    pub(crate) async fn set_up(seed: u64) -> Rig {
        let db = TestDb::create().await;
        let pg = db.client().await;
        let plugin = pgsql_conf(&db, &format!("{EMQX_DEFAULT_RULES}\n{SESSION_RULE}"));
        let mut nodes = Vec::new();
        for i in 0..NODES {
            nodes
                .push(Broker::start_with_files(&node_conf(&db, i), &[("backend_pgsql.conf", &plugin)]).await);
        }
        wait_for_db(
            &pg,
            "select count(*) from postbox_node where heartbeat_at > now() - interval '1 second'",
            Some(NODES as i64),
        )
        .await;
        let sub_ids: Vec<String> = (0..SUBSCRIBERS).map(|i| format!("chaos-sub-{i}")).collect();
        // Subscriber `i` subscribes on node `i`.
        let at = sub_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (nodes[i % nodes.len()].addr, id));
        subscribe_before_the_run(&pg, at).await;

        let world = Arc::new(World::start());
        let (nodes_tx, nodes_rx) = watch::channel(nodes.iter().map(|n| Some(n.addr)).collect());
        let subs = start_subscribers(
            &sub_ids,
            &world,
            |i| Moving::new(&nodes_rx, seed, i),
            Subscriber::run,
        )
        .await;
        let rig = Rig {
            world,
            nodes,
            db,
            pg,
            nodes_tx,
            sub_ids,
            subs,
            publog: Arc::default(),
            kills: Vec::new(),
            faults: Faults::default(),
        };
        rig.until_routed().await;
        rig.world.note("set up: every node routes to every subscriber");
        rig
    }

    /// Where the clients find the nodes (they move when they restart).
    pub(crate) fn nodes_rx(&self) -> watch::Receiver<NodeAddrs> {
        self.nodes_tx.subscribe()
    }

    /// Publishes QoS 0 probes from every node until every subscriber has
    /// one from each: every node knows where the subscribers are.
    async fn until_routed(&self) {
        let deadline = Instant::now() + TIMEOUT;
        for (n, node) in self.nodes.iter().enumerate() {
            let (mut p, _) =
                V4Client::connect(v4_options(node.addr, &format!("chaos-probe-{n}"), true)).await;
            for i in 0.. {
                let missing: Vec<&str> = self
                    .subs
                    .iter()
                    .filter(|s| !lock(&s.log).probes_from.contains(&n))
                    .map(|s| s.id.as_str())
                    .collect();
                if missing.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node-{n} does not route to {missing:?} within {TIMEOUT:?}"
                );
                p.publish(PROBE_TOPIC, QoS::AtMostOnce, false, format!("probe-{n}-{i}"))
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            p.disconnect().await;
        }
    }

    /// Every subscriber's read position on [`FILTER`].
    pub(crate) async fn positions(&self) -> Vec<Option<i64>> {
        let rows = self
            .pg
            .query(
                "select clientid::text, mid::int8 from mqtt_acked where topic = $1",
                &[&FILTER],
            )
            .await
            .unwrap_or_else(|e| panic!("positions: {}", error_chain(&e)));
        let by_id: HashMap<String, Option<i64>> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        self.sub_ids
            .iter()
            .map(|id| by_id.get(id).copied().flatten())
            .collect()
    }

    /// The first column of the first row as an `i64`.
    pub(crate) async fn i64(&self, sql: &str) -> Option<i64> {
        let row = self
            .pg
            .query_opt(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", error_chain(&e)))?;
        row.get::<_, Option<i64>>(0)
    }

    pub(crate) fn up(&self, n: usize) -> bool {
        self.nodes_tx.borrow()[n].is_some()
    }

    /// Reads the positions, takes node `n` out of the clients' choice and
    /// SIGKILLs it: the index of its [`NodeKill`].
    pub(crate) async fn sigkill(&mut self, n: usize, what: &'static str) -> usize {
        let positions = self.positions().await;
        self.nodes_tx.send_modify(|a| a[n] = None);
        self.world.note(format!(
            "node-{n}: SIGKILL ({what}); positions just before: {positions:?}"
        ));
        let at = self.world.now();
        self.nodes[n].kill().await;
        let done = self.world.now();
        self.kills.push(NodeKill {
            node: n,
            what,
            at,
            done,
            restarted: f64::INFINITY,
            positions,
            declared_down: None,
        });
        self.kills.len() - 1
    }

    /// Waits until the other nodes have declared the node of kill `k` down
    /// (its row gone from `postbox_node`), at most `NODE_TIMEOUT` +
    /// [`DOWN_MARGIN`] after the SIGKILL.
    pub(crate) async fn until_declared_down(&mut self, k: usize) {
        let n = self.kills[k].node;
        let sql = format!(
            "select count(*) from postbox_node where name = {}",
            sql_literal(&node_name(n))
        );
        let bound = (NODE_TIMEOUT + DOWN_MARGIN).as_secs_f64();
        let declared = loop {
            let since = self.world.now() - self.kills[k].at;
            if self.i64(&sql).await == Some(0) {
                break Some(since);
            }
            if since > bound {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.kills[k].declared_down = Some(declared);
        self.world.note(match declared {
            Some(s) => format!("node-{n}: declared down {:.0} ms after the SIGKILL", s * 1000.0),
            None => format!("node-{n}: NOT declared down within {bound:.1} s of the SIGKILL"),
        });
    }

    /// Starts the node of kill `k` again and gives it back to the clients.
    pub(crate) async fn restart(&mut self, k: usize) {
        let n = self.kills[k].node;
        self.nodes[n].restart().await;
        let addr = self.nodes[n].addr;
        self.nodes_tx.send_modify(|a| a[n] = Some(addr));
        self.kills[k].restarted = self.world.now();
        self.world.note(format!("node-{n}: restarted on {addr}"));
    }
}
