//! The cluster: several Postbox nodes on one PostgreSQL behave as one broker.
//!
//! PostgreSQL holds what the nodes must agree on, at a low rate: who is a
//! member ([`membership`], `postbox_node`, heartbeats), which node has
//! subscribers for which filter ([`routes`], `postbox_route`, kept in step
//! by notifications that are only doorbells), and which node owns which
//! client (`postbox_client`). Messages do not go through the database: a
//! node forwards each message it routes to the nodes with matching
//! subscribers over a direct MQTT 5 link ([`link`], received by the other
//! node's cluster listener, [`peer`]). `docs/ARCHITECTURE.md` gives the
//! measurements behind that choice.
//!
//! Local delivery never touches the database: the router holds the other
//! nodes' routes in memory, next to the local sessions.

mod db;
pub mod link;
mod membership;
mod ownership;
mod peer;
mod routes;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::ClusterConfig;
use crate::router::NodeName;
use crate::shared::Shared;
use crate::BrokerError;

use self::db::{Db, DbError};
use self::link::Links;
use self::routes::RouteOp;

/// The running cluster membership of this node.
pub struct Cluster {
    shared: Arc<Shared>,
    cfg: ClusterConfig,
    me: NodeName,
    /// Where the other nodes reach this one.
    address: String,
    db: Arc<Db>,
    links: Arc<Links>,
    route_ops: mpsc::UnboundedSender<RouteOp>,
    /// The queue of what the LISTEN connection heard: a node's routes read
    /// again (a node seen up) go through it, so that a route notification
    /// heard while the table is read is applied after that read, not
    /// undone by it.
    heard: mpsc::UnboundedSender<db::Heard>,
    owned: ownership::Owned,
}

/// The cluster's tasks, aborted at shutdown.
pub struct ClusterTasks {
    cluster: Arc<Cluster>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The address of the cluster listener as bound.
    pub listen: SocketAddr,
}

/// How long a node leaving at shutdown tries to remove its rows.
const LEAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl ClusterTasks {
    /// The links to the other nodes (what the management API lists).
    pub fn links(&self) -> Arc<Links> {
        Arc::clone(&self.cluster.links)
    }

    /// Leaves the cluster (at shutdown, after the sessions ended): this
    /// node's rows go at once, so the others forget its routes now and its
    /// clients are claimed elsewhere without waiting for it, instead of after
    /// `node_timeout`; then every task stops.
    pub async fn leave(&self) {
        let c = &self.cluster;
        let me: &str = &c.me;
        let result = tokio::time::timeout(LEAVE_TIMEOUT, async {
            let client = c.db.client().await?;
            client.batch_execute("BEGIN").await?;
            client
                .execute("DELETE FROM postbox_node WHERE name = $1", &[&me])
                .await?;
            membership::release_node(&client, me).await?;
            client.batch_execute("COMMIT").await?;
            Ok::<(), DbError>(())
        })
        .await;
        match result {
            Ok(Ok(())) => tracing::info!("cluster: left the cluster"),
            Ok(Err(e)) => {
                tracing::warn!("cluster: cannot leave cleanly (the others declare this node down): {e}")
            }
            Err(_) => tracing::warn!("cluster: leaving took too long (the others declare this node down)"),
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds the cluster listener and starts the node's part in the cluster.
/// The database need not answer yet: the node serves its own clients, and
/// joins (registers, links, exchanges routes) once it does.
pub async fn start(shared: Arc<Shared>, cfg: ClusterConfig) -> Result<ClusterTasks, BrokerError> {
    let bind_error = |source| BrokerError::Bind {
        name: "cluster.listen".into(),
        addr: cfg.listen,
        source,
    };
    let listener = TcpListener::bind(cfg.listen).await.map_err(bind_error)?;
    let listen = listener.local_addr().map_err(bind_error)?;
    let address = match &cfg.advertise {
        Some(a) => a.clone(),
        None if listen.ip().is_unspecified() => format!("127.0.0.1:{}", listen.port()),
        None => listen.to_string(),
    };
    let db =
        Arc::new(Db::new(&cfg.database).map_err(|e| BrokerError::Cluster(format!("cluster.database: {e}")))?);
    let me: NodeName = Arc::from(shared.config.node_name.as_str());
    let links = Arc::new(Links::new(Arc::clone(&me), cfg.secret.clone()));
    let _ = shared
        .forwarder
        .set(Arc::clone(&links) as Arc<dyn crate::shared::Forwarder>);
    let (route_ops, ops_rx) = mpsc::unbounded_channel();
    let (changes_tx, mut changes_rx) = mpsc::unbounded_channel();
    shared.router.watch_changes(changes_tx);
    let secret: Arc<str> = Arc::from(cfg.secret.as_str());
    let (heard_tx, mut heard_rx) = mpsc::unbounded_channel();
    let c = Arc::new(Cluster {
        shared: Arc::clone(&shared),
        cfg,
        me,
        address,
        db: Arc::clone(&db),
        links,
        route_ops,
        heard: heard_tx.clone(),
        owned: ownership::Owned::default(),
    });
    let _ = shared
        .ownership
        .set(Arc::clone(&c) as Arc<dyn crate::shared::Ownership>);
    let mut tasks = vec![tokio::spawn(peer::accept_loop(
        listener,
        Arc::clone(&shared),
        secret,
    ))];
    {
        let c = Arc::clone(&c);
        tasks.push(tokio::spawn(async move {
            while let Some(change) = changes_rx.recv().await {
                let _ = c.route_ops.send(RouteOp::Change(change));
            }
        }));
    }
    tasks.push(tokio::spawn(routes::writer(Arc::clone(&c), ops_rx)));
    {
        let c = Arc::clone(&c);
        tasks.push(tokio::spawn(async move {
            // Tables first (every node, idempotent), then membership.
            let mut logged = false;
            while let Err(e) = c.db.create_schema().await {
                if !logged {
                    logged = true;
                    tracing::error!(
                        "cluster: the database does not answer; this node serves alone until it does: {e}"
                    );
                }
                tokio::time::sleep(db::RETRY).await;
            }
            membership::run(c).await;
        }));
    }
    {
        db.listen(&[routes::CHANNEL, ownership::CHANNEL], heard_tx);
        let c = Arc::clone(&c);
        tasks.push(tokio::spawn(async move {
            while let Some(h) = heard_rx.recv().await {
                match h {
                    db::Heard::Notification(channel, p) if channel == ownership::CHANNEL => {
                        c.heard_kick(&p).await;
                    }
                    db::Heard::Connected => {
                        routes::heard(&c, db::Heard::Connected).await;
                        c.check_claims().await;
                    }
                    h => routes::heard(&c, h).await,
                }
            }
        }));
    }
    tracing::info!(node = %c.me, listen = %listen, address = %c.address, "cluster listener up");
    Ok(ClusterTasks {
        cluster: c,
        tasks,
        listen,
    })
}

impl crate::shared::Ownership for Cluster {
    fn claim<'a>(
        &'a self,
        clientid: &'a Arc<str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<i64>> + Send + 'a>> {
        Box::pin(Cluster::claim(self, clientid))
    }

    fn attach(&self, clientid: &Arc<str>, gen: i64, start: Box<dyn FnOnce() + '_>) -> bool {
        self.attach_claimed(clientid, gen, start)
    }

    fn release<'a>(
        &'a self,
        clientid: &'a Arc<str>,
        gen: i64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(self.released(clientid, gen))
    }
}
