//! Sessions: one task per client id owns all of its state.
//!
//! The task lives as long as the session, connected or not. While a
//! connection is attached it also owns the socket: it reads and decodes
//! packets, and writes everything the session sends through one output
//! buffer flushed once per burst. Other parts of the broker talk to it only
//! through its [`SessionCmd`] channel: the router delivers messages, the
//! handshake hands over a new connection (takeover), plugins deliver or
//! subscribe on the client's behalf.
//!
//! - `inbound`: packets from the client (PUBLISH with the message.publish
//!   chain, acknowledgements, DISCONNECT).
//! - `subscriptions`: SUBSCRIBE, UNSUBSCRIBE and subscriptions made on the
//!   client's behalf.
//! - `outbound`: messages to the client (packet ids, inflight window, offline
//!   queue, redelivery with DUP on reconnect).
//! - `lifecycle`: attach, takeover, clean start, close, will, expiry.
//! - `redispatch`: messages of shared groups handed to another member when
//!   this one loses its connection or ends.
//! - `aliases`: topic aliases towards MQTT 5 clients.
//! - `events`: what the task waits for between turns (one poll over the
//!   socket, the mailboxes, finished publishes and, while disconnected,
//!   the expiry and will timer).
//! - `id_hash`: the tables keyed by packet, storage and message ids.
//! - `conn`: the attached connection (socket, buffers, codec, its limits).

mod aliases;
mod conn;
mod events;
mod id_hash;
mod inbound;
mod lifecycle;
mod outbound;
mod reauth;
mod redispatch;
mod replay;
mod subscriptions;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use hooks_spec::{BoxFuture, ClientInfo, Flow, Message, QoS, SubOpts};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::codec::Will;
use crate::shared::Shared;
use conn::{keepalive_window, AsSent, Conn};
use events::Event;

pub use crate::delivery::{Attach, Replay, ReplayTx, Routed, SessionCmd, SessionTx};

/// Hands a connection to its client id's session, creating the session if
/// there is none (or the one registered has just ended).
pub(crate) fn start(shared: &Arc<Shared>, attach: Attach) {
    let clientid = Arc::clone(&attach.client.clientid);
    let mut attach = Box::new(attach);
    loop {
        let mut spawned = None;
        let (entry, created) = shared.registry.get_or_insert_with(&clientid, || {
            let uid = shared.next_uid();
            let crate::mailbox::Inbox { tx, replay_tx, rx } = crate::mailbox::inbox();
            let client = Arc::new(attach.client.clone());
            spawned = Some((uid, rx, Arc::clone(&client)));
            crate::registry::SessionRef {
                uid,
                tx,
                replay_tx,
                client,
            }
        });
        if created {
            if let Some((uid, inbox, client)) = spawned {
                let session = Session::new(Arc::clone(shared), uid, client, inbox);
                tokio::spawn(session.run());
            }
        }
        match entry.tx.send(SessionCmd::Attach(attach)) {
            Ok(()) => return,
            // The session ended between lookup and send: try again with a new one.
            Err(SessionCmd::Attach(back)) => attach = back,
            Err(_) => return,
        }
    }
}

/// Where an outgoing message stands: which acknowledgement it waits for.
#[allow(clippy::enum_variant_names)] // named after the packets, as the spec does
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckState {
    /// QoS 1 sent, waiting for PUBACK.
    PubAck,
    /// QoS 2 sent, waiting for PUBREC.
    PubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    PubComp,
}

struct Inflight {
    pkid: u16,
    routed: Routed,
    state: AckState,
    /// Waiting to be re-sent after a reconnect (the client's window may be smaller now).
    unsent: bool,
}

/// When the session was created, in milliseconds since the Unix epoch
/// (eight bytes in every session where a `SystemTime` takes sixteen).
#[derive(Debug, Clone, Copy)]
struct CreatedAt(u64);

impl CreatedAt {
    fn now() -> CreatedAt {
        let since_epoch = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        CreatedAt(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
    }

    fn time(self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.0)
    }
}

/// One subscription of this session.
#[derive(Clone)]
struct Subscription {
    /// Filter without the `$share/<group>/` prefix.
    filter: String,
    opts: SubOpts,
}

/// Outcome of a publish whose message.publish chain was running.
struct PublishDone {
    /// The session epoch the publish arrived in (a clean start begins a new one).
    epoch: u32,
    pkid: u16,
    qos: QoS,
    flow: Flow<Message>,
}

/// Why the loop stopped.
enum Exit {
    /// The session ended (expiry 0 at close, or the expiry timer), and why.
    Terminated(hooks_spec::DisconnectReason),
    /// Broker shutdown.
    Shutdown,
    /// Taken over by another node of the cluster; the sender hears when the
    /// session has ended here.
    Moved(tokio::sync::oneshot::Sender<()>),
}

/// The state one session task owns.
pub(crate) struct Session {
    shared: Arc<Shared>,
    uid: u64,
    /// Both lanes of our inbox (commands, replays); the routes of our
    /// subscriptions hold senders made from it.
    inbox: crate::mailbox::Receiver,
    /// Stored messages: replays and live messages with a storage id.
    stored: replay::StoredState,
    /// Shared with the registry entry (one copy per session, not two).
    client: Arc<ClientInfo>,
    /// Hook arguments built from `client`, reused for every message (reset
    /// whenever `client` changes).
    hook_args: HookArgs,
    created_at: CreatedAt,
    conn: Option<Conn>,
    /// A connection was attached before (false: the session is new).
    attached_before: bool,
    /// In a cluster: the claim of the connection attached last, released
    /// when the session ends.
    claim: Option<i64>,
    /// Keyed by the filter as the client sent it (`$share/...` included).
    subscriptions: id_hash::ClientKeyedMap<Subscription>,
    inflight: VecDeque<Inflight>,
    /// How many inflight entries wait to be re-sent after a reconnect.
    unsent: usize,
    /// Packet ids, received and sent, and recent retained deliveries.
    ids: id_hash::IdTables,
    next_pkid: u16,
    queue: VecDeque<Routed>,
    /// Incremented by a clean start: acknowledgements of publishes from an
    /// earlier epoch are not sent (their packet ids mean nothing any more).
    /// Compared for equality only, so it may wrap.
    epoch: u32,
    /// Publishes whose hook chain is running, completed in arrival order.
    pending: PendingPublishes,
    /// Session expiry interval in seconds; `u32::MAX` never.
    expiry_secs: u32,
    /// When the session expires while disconnected.
    expires_at: Option<Instant>,
    /// A will waiting for its delay.
    delayed_will: Option<Box<(Will, Instant)>>,
    /// The timer for `expires_at` and the delayed will, while no
    /// connection is attached.
    deadline: events::Deadline,
    /// Which source the next wait looks at first (fairness between them).
    turn: u8,
}

/// Publishes whose message.publish chain is running, completed in arrival
/// order. The queue is created on first use (boxed: inline it would be 64
/// bytes in every session): an idle session keeps none.
#[derive(Default)]
struct PendingPublishes(Option<Box<FuturesOrdered<BoxFuture<PublishDone>>>>);

impl PendingPublishes {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.len())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push_back(&mut self, fut: BoxFuture<PublishDone>) {
        self.0.get_or_insert_with(Box::default).push_back(fut);
    }

    /// The next finished publish; `None` when none is running.
    async fn next(&mut self) -> Option<PublishDone> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Polls for the next finished publish; `None` when none is running.
    fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<PublishDone>> {
        match self.0.as_mut() {
            Some(q) => q.poll_next_unpin(cx),
            None => std::task::Poll::Ready(None),
        }
    }
}

/// The `message.publish` and `message.delivered` arguments of this session's
/// client, built on first use: every message would otherwise copy the client
/// information into a new allocation for each hook.
#[derive(Default)]
pub(crate) struct HookArgs {
    publish: Option<Arc<hooks_spec::PublishArgs>>,
    delivered: Option<Arc<hooks_spec::DeliveredArgs>>,
}

impl HookArgs {
    fn publish(&mut self, client: &ClientInfo) -> Arc<hooks_spec::PublishArgs> {
        Arc::clone(self.publish.get_or_insert_with(|| {
            Arc::new(hooks_spec::PublishArgs {
                client: Some(client.clone()),
                will: false,
            })
        }))
    }

    fn delivered(&mut self, client: &ClientInfo) -> Arc<hooks_spec::DeliveredArgs> {
        Arc::clone(self.delivered.get_or_insert_with(|| {
            Arc::new(hooks_spec::DeliveredArgs {
                client: client.clone(),
            })
        }))
    }
}

/// Commands handled per turn of the loop before the socket is looked at again.
const CMD_BURST: usize = 64;

/// Output buffered beyond this stops QoS 0 sends and queue draining until the
/// socket catches up (a slow reader must not grow memory without bound).
const OUTBUF_HIGH_WATER: usize = 4 * 1024 * 1024;

impl Session {
    /// Creates the state for a new session; `run` drives it.
    pub(crate) fn new(
        shared: Arc<Shared>,
        uid: u64,
        client: Arc<ClientInfo>,
        inbox: crate::mailbox::Receiver,
    ) -> Session {
        Session {
            shared,
            uid,
            inbox,
            stored: replay::StoredState::default(),
            client,
            hook_args: HookArgs::default(),
            created_at: CreatedAt::now(),
            conn: None,
            attached_before: false,
            claim: None,
            subscriptions: id_hash::ClientKeyedMap::default(),
            inflight: VecDeque::new(),
            unsent: 0,
            ids: id_hash::IdTables::default(),
            next_pkid: 1,
            queue: VecDeque::new(),
            epoch: 0,
            pending: PendingPublishes::default(),
            expiry_secs: 0,
            expires_at: None,
            delayed_will: None,
            deadline: events::Deadline::default(),
            turn: 0,
        }
    }

    /// The task body: runs until the session ends or the broker shuts down.
    ///
    /// An idle connection's memory is mostly this task, so it holds the
    /// session state and little else: the wait for the next event keeps no
    /// futures (`events`), and each turn's handling, whose awaits hold
    /// kilobytes, is boxed for that turn only. (An `async fn` taking the
    /// session would keep it twice, as argument and as local: the block
    /// below captures it once.)
    #[allow(clippy::manual_async_fn)] // the point: an `async fn` would hold the session twice
    pub(crate) fn run(mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        async move {
            let _task = self.shared.tasks.enter();
            let exit = loop {
                let event = self.next_event().await;
                if let Some(exit) = Box::pin(self.handle_event(event)).await {
                    break exit;
                }
            };
            // Boxed, like the other rare paths: inline, their awaits would
            // be part of every session task.
            match exit {
                Exit::Terminated(reason) => Box::pin(self.terminate(reason)).await,
                Exit::Shutdown => Box::pin(self.shutdown()).await,
                Exit::Moved(done) => Box::pin(self.moved(done)).await,
            }
        }
    }

    async fn handle_event(&mut self, event: Event) -> Option<Exit> {
        match event {
            Event::Shutdown => return Some(Exit::Shutdown),
            Event::Cmd(cmd) => {
                let mut next = Some(cmd);
                // Take the burst that is already queued, so its packets leave in
                // one write instead of one write each.
                let mut budget = CMD_BURST;
                while let Some(cmd) = next.take() {
                    match cmd {
                        SessionCmd::Attach(attach) => {
                            let exit = Box::pin(self.attach(*attach)).await;
                            if exit.is_none() && self.conn.is_some() && self.shared.is_draining() {
                                // Admitted just as the node began to drain: sent on too.
                                return Box::pin(self.server_moved()).await;
                            }
                            return exit;
                        }
                        SessionCmd::Deliver(routed) => self.deliver(routed).await,
                        SessionCmd::Subscribe(sub) => {
                            let (filter, opts) = *sub;
                            Box::pin(self.subscribe_for_plugin(filter, opts)).await
                        }
                        SessionCmd::Inspect(reply) => {
                            let _ = reply.send(self.view());
                        }
                        SessionCmd::Kick(reply) => {
                            let _ = reply.send(self.conn.is_some());
                            if self.conn.is_some() {
                                tracing::info!(clientid = %self.client.clientid, "kicked by the management API");
                                return Box::pin(
                                    self.connection_lost(hooks_spec::DisconnectReason::Kicked, Some(0x98)),
                                )
                                .await;
                            }
                        }
                        SessionCmd::Drain(reply) => {
                            let _ = reply.send(self.conn.is_some());
                            if self.conn.is_some() {
                                return Box::pin(self.server_moved()).await;
                            }
                        }
                        SessionCmd::HandOverShared => {
                            if self.conn.is_none() {
                                self.redispatch_shared(false);
                            }
                        }
                        SessionCmd::KeepaliveCheck(second) => {
                            if let Some(exit) = self.keepalive_check(second) {
                                return Box::pin(self.connection_lost(exit, Some(0x8D))).await;
                            }
                        }
                        SessionCmd::Shutdown => return Some(Exit::Shutdown),
                        SessionCmd::Moved(done) => return Some(Exit::Moved(done)),
                    }
                    budget -= 1;
                    if budget > 0 && self.inbox.is_empty::<Replay>() {
                        next = self.inbox.try_recv();
                    }
                }
            }
            Event::Replay(r) => self.apply_replay(r).await,
            Event::Read(Ok(0)) => {
                return Box::pin(self.connection_lost(hooks_spec::DisconnectReason::SocketClosed, None))
                    .await;
            }
            Event::Read(Ok(n)) => {
                crate::metrics::Metrics::add(&self.shared.metrics.bytes_received, n);
                if let Some(c) = self.conn.as_mut() {
                    c.last_seen = Instant::now();
                    if let Some(t) = c.bytes_in.as_mut() {
                        t.read(n);
                    }
                }
                return self.process_input().await;
            }
            Event::Read(Err(e)) | Event::Wrote(Err(e)) | Event::Flushed(Err(e)) => {
                tracing::debug!(clientid = %self.client.clientid, "socket error: {e}");
                return Box::pin(self.connection_lost(hooks_spec::DisconnectReason::SocketClosed, None))
                    .await;
            }
            Event::Flushed(Ok(())) => {
                if let Some(c) = self.conn.as_mut() {
                    c.unflushed = false;
                }
            }
            Event::Wrote(Ok(n)) => {
                let metrics = &self.shared.metrics;
                crate::metrics::Metrics::add(&metrics.bytes_sent, n);
                if let Some(c) = self.conn.as_mut() {
                    c.traffic.flush(metrics);
                    c.unflushed = c.flushes;
                }
                if self
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.outbuf.len() < OUTBUF_HIGH_WATER)
                {
                    self.drain_queue().await;
                }
            }
            Event::Published(done) => {
                self.publish_done(done).await;
                // A storage commit finishes many publishes at once: take the
                // ones already done in this turn (their acknowledgements then
                // leave in one write), not one turn of the loop each.
                for _ in 1..CMD_BURST {
                    match self.pending.next().now_or_never() {
                        Some(Some(done)) => self.publish_done(done).await,
                        _ => break,
                    }
                }
            }
            Event::Expired => return Some(Exit::Terminated(hooks_spec::DisconnectReason::Expired)),
            Event::WillDue => self.publish_delayed_will(),
            Event::ReadResume => {
                if let Some(t) = self.conn.as_mut().and_then(|c| c.bytes_in.as_mut()) {
                    t.resume();
                }
            }
        }
        None
    }

    /// Asks for the next keep-alive check of the connection, for 1.5 times
    /// the keep alive after `from` (none with keep alive 0).
    fn arm_keepalive(&mut self, from: Instant) {
        let Some(k) = keepalive_window(self.client.keepalive) else {
            return;
        };
        let session = self.self_tx();
        if let Some(c) = self.conn.as_mut() {
            c.keepalive_check = self.shared.keepalive.arm(from + k, session);
        }
    }

    /// The keep-alive check named `second` came: the reason to close the
    /// connection when the client has been silent too long; otherwise the
    /// next check is asked for (a stale check, or none connected: nothing).
    fn keepalive_check(&mut self, second: u32) -> Option<hooks_spec::DisconnectReason> {
        let k = keepalive_window(self.client.keepalive)?;
        let c = self.conn.as_mut().filter(|c| c.keepalive_check == second)?;
        let now = Instant::now();
        // Not reading (over `bytes_in`) is no sign of a dead client.
        if c.bytes_in.as_ref().is_some_and(|t| t.paused()) {
            self.arm_keepalive(now);
            return None;
        }
        if c.last_seen + k > now {
            c.release_idle_buffers();
            let last_seen = c.last_seen;
            self.arm_keepalive(last_seen);
            return None;
        }
        Some(hooks_spec::DisconnectReason::KeepaliveTimeout)
    }

    /// Writes everything buffered, bounded in time; used before closing.
    async fn flush(&mut self) {
        if let Some(c) = self.conn.as_mut() {
            if !c.outbuf.is_empty() {
                let out = c.outbuf.split();
                let wrote = tokio::time::timeout(Duration::from_secs(2), c.stream.write_all(&out)).await;
                if matches!(wrote, Ok(Ok(()))) {
                    crate::metrics::Metrics::add(&self.shared.metrics.bytes_sent, out.len());
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), c.stream.shutdown()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::path::Path;

    use hooks_spec::{ConfFile, ProtocolVersion};

    use super::*;

    /// Every connection's session task is one future of this size, plus the
    /// boxed session state (idle connections: <= 2 KiB each in all,
    /// BENCHMARKS.md), and the loop moves its per-turn part at every turn: a
    /// regression here costs memory per connection and copying per message.
    #[tokio::test]
    async fn the_session_task_stays_small() {
        let conf = ConfFile::parse(Path::new("t.conf"), "listener.tcp.external = 127.0.0.1:0\n").unwrap();
        let server = crate::Server::start(crate::config::Config::from_conf(&conf).unwrap(), Vec::new())
            .await
            .unwrap();
        let client = ClientInfo {
            clientid: Arc::from("size"),
            username: None,
            peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
            protocol: ProtocolVersion::V311,
            clean_start: true,
            session_expiry: 0,
            keepalive: 60,
            cert_common_name: None,
        };
        let inbox = crate::mailbox::inbox();
        let session = Session::new(Arc::clone(server.shared()), 1, Arc::new(client), inbox.rx);
        let state = std::mem::size_of_val(&session);
        let task = session.run();
        let size = std::mem::size_of_val(&task);
        eprintln!("session task future: {size} bytes, session state: {state} bytes");
        // History: the future was 6,672 bytes, 5,376 with the delivered fold
        // boxed, 4,928 with the will boxed, the state (1,160 bytes) kept in
        // it twice and a select's futures beside it; then 648 (a state of
        // 552) with the wait keeping no futures and each turn boxed; now
        // keep-alive has no timer per session (`keepalive.rs`), the inbox is one
        // pointer, and counters and limits have the width of their range.
        //
        // tokio keeps a task in one allocation: a 32-byte header, the
        // scheduler and task id (16), the future (with a tag, unless a niche
        // holds it) and a 48-byte trailer, aligned to 128 bytes on x86_64.
        // Up to 536 bytes of future, that is 640 bytes a connection; past
        // it, 768.
        assert!(
            size <= 536,
            "the session task future is {size} bytes (its state {state}): over 536, \
             every connection's task takes 768 bytes instead of 640"
        );
        assert!(
            size <= state + 64,
            "the session task future is {size} bytes, its state {state}: the wait keeps more than the state"
        );
        drop(task);
        server.shutdown().await;
    }
}
