//! Binds each rule to its hook: one callback per rule, registered in the
//! rules' order (hook point, then ascending `N`) at equal priority, so they
//! run in ascending `N`. A rule runs only when its `topic` filter matches
//! (the message topic for `message.*`, the subscription filter for
//! `session.*`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hooks_spec::{
    BoxFuture, ClientInfo, DropReason, Flow, HookError, HookPoint, Hooks, Message, Registration,
};

use crate::functions::{secs, PlaceholderValues};
use crate::positions::FetchOpts;
use crate::rules::{Action, Function, Rule};
use crate::{mqtt_matches, Engine, NAME};

/// "No time limit" for a hook callback (tokio treats a deadline past its
/// range as never).
const UNBOUNDED: std::time::Duration = std::time::Duration::MAX;

fn topic_ok(rule: &Rule, topic: &str) -> bool {
    rule.topic.as_deref().is_none_or(|f| mqtt_matches(f, topic))
}

/// A callback's result when it is known without waiting: callbacks decide
/// synchronously what they can (a rule that does not apply, in-memory
/// bookkeeping) and build an `async` state machine only for database work.
/// They run for every message, so this saves each message a large future
/// moved into a box per rule.
fn ready<Acc: Send + 'static>(flow: Flow<Acc>) -> BoxFuture<Result<Flow<Acc>, HookError>> {
    Box::pin(std::future::ready(Ok(flow)))
}

/// Registers a callback with the chain's default time limit and failure
/// policy, called only where `filter` applies: most of these callbacks have
/// nothing to do for most messages (a retain rule, a message without a
/// storage id), and a filtered-out callback costs the chain no copy of the
/// message and no boxed future.
fn plain<A, Acc>(
    chain: &hooks_spec::Chain<A, Acc>,
    priority: i32,
    filter: impl Fn(&A, &Acc) -> bool + Send + Sync + 'static,
    callback: impl Fn(Arc<A>, Acc) -> BoxFuture<Result<Flow<Acc>, HookError>> + Send + Sync + 'static,
) where
    A: Send + Sync + 'static,
    Acc: Clone + Send + 'static,
{
    chain.register(Registration {
        owner: NAME.to_string(),
        priority,
        timeout: None,
        on_failure: None,
        filter: Some(Arc::new(filter)),
        callback: Arc::new(callback),
    });
}

/// Registers in-memory work that never waits as a synchronous callback,
/// called only where `filter` applies: it runs for every stored message,
/// and the chain then neither copies the message for it nor boxes a future.
fn sync<A, Acc>(
    chain: &hooks_spec::Chain<A, Acc>,
    priority: i32,
    filter: impl Fn(&A, &Acc) -> bool + Send + Sync + 'static,
    callback: impl Fn(&A, &mut Acc) + Send + Sync + 'static,
) where
    A: Send + Sync + 'static,
    Acc: Clone + Send + 'static,
{
    chain.register_sync(
        NAME,
        priority,
        Some(Arc::new(filter)),
        Arc::new(move |args: &A, acc: &mut Acc| {
            callback(args, acc);
            true
        }),
    );
}

/// Registers every rule, then the bookkeeping offline delivery needs.
pub(crate) fn all(engine: &Arc<Engine>, hooks: &Hooks) {
    for (i, rule) in engine.cfg.rules.iter().enumerate() {
        let e = Arc::clone(engine);
        match rule.hook {
            HookPoint::ClientConnected | HookPoint::ClientDisconnected => {
                if rule.hook == HookPoint::ClientConnected {
                    hooks.client_connected.add(NAME, 0, move |args, ()| {
                        let e = Arc::clone(&e);
                        async move {
                            e.client_rule(i, &args.client).await;
                            Ok(Flow::Continue(()))
                        }
                    });
                } else {
                    hooks.client_disconnected.add(NAME, 0, move |args, ()| {
                        let e = Arc::clone(&e);
                        async move {
                            e.client_rule(i, &args.client).await;
                            Ok(Flow::Continue(()))
                        }
                    });
                }
            }
            HookPoint::SessionSubscribed | HookPoint::SessionUnsubscribed => {
                let subscribed = rule.hook == HookPoint::SessionSubscribed;
                let chain = if subscribed {
                    &hooks.session_subscribed
                } else {
                    &hooks.session_unsubscribed
                };
                chain.add(NAME, 0, move |args, ()| {
                    let e = Arc::clone(&e);
                    async move {
                        e.session_rule(i, &args, subscribed).await;
                        Ok(Flow::Continue(()))
                    }
                });
            }
            HookPoint::MessagePublish => {
                let stores = matches!(rule.action, Action::Function(Function::OnMessagePublish));
                hooks.message_publish.register(Registration {
                    owner: NAME.to_string(),
                    priority: 0,
                    // A store waits as long as the database needs (3.1.1
                    // publishers, wills), or store_timeout (MQTT 5 publishers,
                    // bounded in store_rule): see store_limit.
                    timeout: Some(if stores {
                        UNBOUNDED
                    } else {
                        engine.cfg.store_timeout
                    }),
                    // If this callback fails, the message must not be acknowledged as stored.
                    on_failure: stores.then(|| {
                        Arc::new(|mut m: Message| {
                            m.headers.not_stored = m.qos != hooks_spec::QoS::AtMostOnce;
                            Flow::Continue(m)
                        }) as hooks_spec::FailurePolicy<Message>
                    }),
                    filter: Some({
                        let e = Arc::clone(&e);
                        Arc::new(move |_, m: &Message| e.publish_applies(i, m))
                    }),
                    callback: Arc::new(move |args, m| match e.publish_work(i, &m) {
                        Work::Refuse => ready(Flow::Stop(m)),
                        Work::Store => {
                            let e = Arc::clone(&e);
                            let limit = e.store_limit(&args);
                            Box::pin(async move { Ok(Flow::Continue(e.store_rule(i, m, limit).await)) })
                        }
                        Work::Other => {
                            let e = Arc::clone(&e);
                            Box::pin(async move { Ok(e.publish_rule(i, args.client.as_ref(), m).await) })
                        }
                    }),
                });
            }
            HookPoint::MessageAcked => {
                let f = Arc::clone(&e);
                let applies = move |args: &hooks_spec::AckedArgs, _: &()| {
                    let rule = f.rule(i);
                    topic_ok(rule, &args.message.topic)
                        && match &rule.action {
                            Action::Function(Function::OnMessageAcked) => {
                                args.message.headers.stored_id.is_some()
                            }
                            Action::Function(_) => false,
                            Action::Sql(_) => true,
                        }
                };
                // Called only where `applies` said yes.
                if let Action::Function(_) = &rule.action {
                    // on_message_acked: in-memory bookkeeping (the flusher writes).
                    sync(&hooks.message_acked, 0, applies, move |args, _| {
                        if let Some(id) = args.message.headers.stored_id {
                            e.mark_done(&args.client.clientid, &args.message.topic, id);
                        }
                    });
                } else {
                    plain(&hooks.message_acked, 0, applies, move |args, ()| {
                        let e = Arc::clone(&e);
                        Box::pin(async move {
                            e.sql_rule(i, &args.client, &args.message).await;
                            Ok(Flow::Continue(()))
                        })
                    });
                }
            }
            HookPoint::MessageDelivered => {
                let f = Arc::clone(&e);
                let applies = move |_: &hooks_spec::DeliveredArgs, m: &Message| {
                    let rule = f.rule(i);
                    matches!(rule.action, Action::Sql(_)) && topic_ok(rule, &m.topic)
                };
                // Called only for `sql` rules whose topic matches (`applies`).
                plain(&hooks.message_delivered, 0, applies, move |args, m: Message| {
                    let e = Arc::clone(&e);
                    Box::pin(async move {
                        e.sql_rule(i, &args.client, &m).await;
                        Ok(Flow::Continue(m))
                    })
                });
            }
            // on_session_restore: the session store registers its callbacks below.
            HookPoint::SessionRestore => {}
            other => tracing::warn!(rule = %rule.key, "rules cannot bind to {other}; ignored"),
        }
    }
    if engine.fetcher.is_some() {
        bookkeeping(engine, hooks);
    }
    if let Some(store) = &engine.sessions {
        crate::sessions::register(store, hooks, &engine.node);
    }
}

/// Hooks that keep the per-subscription tracks in step with the sessions
/// (all in memory: they answer at once).
fn bookkeeping(engine: &Arc<Engine>, hooks: &Hooks) {
    // Last on message.publish: the chain is done and the broker routes the
    // message next, so it is no longer "stored but not routed".
    let e = Arc::clone(engine);
    let stored = |_: &hooks_spec::PublishArgs, m: &Message| m.headers.stored_id.is_some();
    sync(
        &hooks.message_publish,
        i32::MIN,
        stored,
        move |_, m: &mut Message| {
            if let Some(id) = m.headers.stored_id {
                e.route_pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
            }
        },
    );
    let e = Arc::clone(engine);
    let stored = |_: &hooks_spec::DeliveredArgs, m: &Message| m.headers.stored_id.is_some();
    sync(
        &hooks.message_delivered,
        -1000,
        stored,
        move |args: &hooks_spec::DeliveredArgs, m: &mut Message| {
            if let Some(id) = m.headers.stored_id {
                if m.qos == hooks_spec::QoS::AtMostOnce {
                    // Never acknowledged: done once written.
                    e.mark_done(&args.client.clientid, &m.topic, id);
                } else {
                    e.tracks.delivered(&args.client.clientid, &m.topic, id);
                    e.group_delivered(&args.client.clientid, &m.topic, id);
                }
            }
        },
    );
    let e = Arc::clone(engine);
    plain(
        &hooks.message_dropped,
        -1000,
        |_, _| true,
        move |args, ()| {
            // Expired or too large for the client: it will never be delivered,
            // so it must not hold the position back.
            // (Denied here: the client refused it, e.g. a PUBREC with an error code.)
            let (Some(client), Some(id)) = (&args.clientid, args.message.headers.stored_id) else {
                return ready(Flow::Continue(()));
            };
            match args.reason {
                DropReason::Expired | DropReason::TooLarge | DropReason::Denied => {
                    e.mark_done(client, &args.message.topic, id);
                }
                // The session's queue was full: it is fed from the store instead.
                DropReason::QueueFull => {
                    for due in e.tracks.dropped(client, &args.message.topic, id) {
                        e.tracks.queue_page(due);
                    }
                    e.group_dropped(client, &args.message.topic, id);
                }
                _ => {}
            }
            ready(Flow::Continue(()))
        },
    );
    let e = Arc::clone(engine);
    plain(
        &hooks.client_connected,
        -1000,
        |_, _| true,
        move |args, ()| {
            e.group_member_connected(&args.client.clientid);
            ready(Flow::Continue(()))
        },
    );
    let e = Arc::clone(engine);
    plain(
        &hooks.session_unsubscribed,
        -1000,
        |_, _| true,
        move |args, ()| {
            if let Some(group) = &args.opts.share_group {
                // A member left its shared group (the group's position stays).
                let key = crate::groups::group_key(group, &args.filter);
                e.group_left(&args.client.clientid, &key);
                return ready(Flow::Continue(()));
            }
            e.tracks
                .forget(&(args.client.clientid.to_string(), args.filter.clone()));
            ready(Flow::Continue(()))
        },
    );
    let e = Arc::clone(engine);
    plain(
        &hooks.session_terminated,
        -1000,
        |_, _| true,
        move |args, ()| {
            // The session's shared groups lose a member here.
            for key in e.members.groups_of(&args.client.clientid) {
                e.group_left(&args.client.clientid, &key);
            }
            if args.reason != hooks_spec::DisconnectReason::Moved {
                e.tracks.forget_client(&args.client.clientid);
                return ready(Flow::Continue(()));
            }
            // The session continues on another node, which reads the read
            // positions next: what the client acknowledged here is written first.
            let e = Arc::clone(&e);
            Box::pin(async move {
                let keys = e.tracks.keys_of(&args.client.clientid);
                if let (Some(drain), false) = (&e.drain, keys.is_empty()) {
                    drain.flush(keys).await;
                }
                e.tracks.forget_client(&args.client.clientid);
                Ok(Flow::Continue(()))
            })
        },
    );
    if engine.fetcher.is_some() {
        // Shared groups' messages lost with a node are delivered again here
        // (read in a task: the callback's time limit does not bound it).
        let e = Arc::downgrade(engine);
        plain(
            &hooks.node_down,
            0,
            |_, _| true,
            move |args, ()| {
                if let Some(e) = e.upgrade() {
                    tokio::spawn(async move { e.group_node_down(&args.node).await });
                }
                ready(Flow::Continue(()))
            },
        );
    }
}

/// What a `message.publish` rule has to do with one message.
enum Work {
    /// Stop the chain: the message cannot be stored (payload not UTF-8 for a text column).
    Refuse,
    /// Store it (on_message_publish, on_message_store).
    Store,
    /// Anything else that talks to the database.
    Other,
}

impl Engine {
    fn rule(&self, i: usize) -> &Rule {
        &self.cfg.rules[i]
    }

    fn fail(&self, i: usize, e: &dyn std::fmt::Display) {
        self.rule_failed(&self.rule(i).key, e);
    }

    async fn client_rule(&self, i: usize, client: &ClientInfo) {
        let rule = self.rule(i);
        let result = match &rule.action {
            Action::Function(Function::OnClientConnected) => self.client_connected(&rule.pool, client).await,
            Action::Function(Function::OnClientDisconnected) => {
                self.client_disconnected(&rule.pool, client).await
            }
            Action::Function(Function::OnSubscribeLookup) => self.subscribe_lookup(&rule.pool, client).await,
            Action::Function(_) => Ok(()),
            Action::Sql(_) => {
                self.run_sql(i, &PlaceholderValues::for_client(client, &self.node))
                    .await
            }
        };
        if let Err(e) = result {
            self.fail(i, &e);
        }
    }

    /// How a fetch rule replays: its `offline_opts`, else the globals.
    fn fetch_opts(&self, rule: &crate::rules::Rule, no_local: bool) -> FetchOpts {
        FetchOpts {
            max_returned_count: rule
                .offline_opts
                .max_returned_count
                .unwrap_or(self.cfg.max_returned_count),
            time_range_secs: secs(rule.offline_opts.time_range.or(self.cfg.time_range)),
            no_local,
        }
    }

    async fn session_rule(&self, i: usize, args: &hooks_spec::SubscribedArgs, subscribed: bool) {
        let (client, filter, opts) = (&args.client, args.filter.as_str(), &args.opts);
        let rule = self.rule(i);
        if !topic_ok(rule, filter) {
            return;
        }
        let result = match &rule.action {
            Action::Function(Function::OnMessageFetch) if opts.share_group.is_some() => {
                match (&self.fetcher, &opts.share_group) {
                    (Some(f), Some(group)) if subscribed => {
                        let fetch = self.fetch_opts(rule, false);
                        let key = crate::groups::group_key(group, filter);
                        let elsewhere = self.handle.shared_members_elsewhere(group, filter);
                        self.group_subscribed(f, &client.clientid, key, opts.qos, fetch, elsewhere)
                            .await
                    }
                    _ => Ok(()),
                }
            }
            Action::Function(Function::OnMessageFetch) => match &self.fetcher {
                Some(f) => {
                    let fetch = self.fetch_opts(rule, opts.no_local);
                    let cap = self.first_position_cap();
                    let result = f
                        .on_subscribed(&client.clientid, filter, opts.qos, fetch, cap, opts.replay_from)
                        .await;
                    if result.is_err() {
                        // The database did not answer: register (or replay) later,
                        // from a position no later than what this node had stored
                        // when the client subscribed, so nothing is skipped.
                        let hint = cap.min(self.stats.store.last_id.load(Ordering::Relaxed));
                        Arc::clone(f)
                            .register_later(
                                client.clientid.to_string(),
                                filter.to_string(),
                                opts.qos,
                                fetch,
                                hint,
                            )
                            .await;
                    }
                    result
                }
                None => Ok(()),
            },
            // A restored subscription gets no retained messages (as from the broker's store).
            Action::Function(Function::OnRetainLookup) if opts.share_group.is_none() && !args.restored => {
                self.retain_lookup(&rule.pool, client, filter, opts.qos).await
            }
            Action::Function(Function::OnSubscribeStore) if !args.restored => {
                self.subscribe_store(&rule.pool, client, filter, opts.qos, subscribed)
                    .await
            }
            Action::Function(_) => Ok(()),
            Action::Sql(_) => {
                let mut v = PlaceholderValues::for_client(client, &self.node);
                v.topic = Some(filter.to_string());
                v.qos = Some(i64::from(opts.qos.as_u8()));
                self.run_sql(i, &v).await
            }
        };
        if let Err(e) = result {
            self.fail(i, &e);
        }
    }

    /// False when rule `i` has nothing to do with a published message (its
    /// topic does not match, or its function does not apply): the chain's
    /// filter, so it has no side effects ([`Engine::publish_work`], which
    /// runs after it, counts and logs a refused payload).
    fn publish_applies(&self, i: usize, m: &Message) -> bool {
        let rule = self.rule(i);
        if !topic_ok(rule, &m.topic) {
            return false;
        }
        let empty_retained = m.retain && m.payload.is_empty();
        match &rule.action {
            Action::Function(Function::OnMessagePublish) => {
                m.qos != hooks_spec::QoS::AtMostOnce && !empty_retained
            }
            Action::Function(Function::OnMessageStore) => !empty_retained,
            Action::Function(Function::OnMessageRetain) => m.retain && !m.payload.is_empty(),
            Action::Function(Function::OnRetainDelete) => empty_retained,
            Action::Function(_) => false,
            Action::Sql(_) => true,
        }
    }

    /// Decides, without waiting, what rule `i` does with a published message
    /// it applies to (the chain calls the rule only where
    /// [`Engine::publish_applies`] said yes).
    fn publish_work(&self, i: usize, m: &Message) -> Work {
        let rule = self.rule(i);
        match &rule.action {
            Action::Function(Function::OnMessagePublish | Function::OnMessageStore) => {
                if self.payload_fits(&rule.pool, &m.payload) {
                    Work::Store
                } else {
                    self.stats.refused_not_utf8.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(rule = %rule.key, topic = %m.topic, "refusing a message whose payload is not UTF-8: mqtt_msg.payload is text");
                    Work::Refuse
                }
            }
            _ => Work::Other,
        }
    }

    /// How long a store may keep its publisher waiting. An MQTT 5 client's
    /// own PUBLISH: `store_timeout`, then PUBACK/PUBREC 0x80 tells it the
    /// message was not stored. MQTT 3.1.1 has no such answer (a client that
    /// gets none keeps the packet id in use, and with a full window stops
    /// publishing for good), so a 3.1.1 publish waits until the database
    /// takes it; so does a will, which no one waits for.
    fn store_limit(&self, args: &hooks_spec::PublishArgs) -> Option<std::time::Duration> {
        match &args.client {
            Some(c) if c.protocol == hooks_spec::ProtocolVersion::V5 && !args.will => {
                Some(self.cfg.store_timeout)
            }
            _ => None,
        }
    }

    /// Stores a message for rule `i` (on_message_publish, on_message_store)
    /// and attaches its row id; the checks of [`Engine::publish_work`] passed.
    /// A store not done within `limit` is abandoned (the writer skips it, or
    /// removes the row if it committed meanwhile) and the message marked not stored.
    async fn store_rule(&self, i: usize, mut m: Message, limit: Option<std::time::Duration>) -> Message {
        let rule = self.rule(i);
        let store = self.store_message(&rule.pool, &m);
        let stored = match limit {
            Some(limit) => tokio::time::timeout(limit, store).await.unwrap_or_else(|_| {
                Err(crate::error::PgsqlError::Store(format!(
                    "not stored within store_timeout ({limit:?})"
                )))
            }),
            None => store.await,
        };
        match stored {
            Ok(id) => {
                // on_message_store also attaches the id: acknowledgements and
                // offline fetch need it to know the message was delivered.
                m.headers.stored_id = Some(id);
                if self.fetcher.is_some() {
                    self.route_pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id);
                }
            }
            Err(e) => {
                // Logged once per outage by the writer; the publisher is not told "stored".
                m.headers.not_stored = true;
                tracing::debug!(rule = %rule.key, "not stored: {e}");
            }
        }
        m
    }

    /// The database work of a `message.publish` rule other than storing
    /// ([`Work::Other`]: retained messages, `sql` actions).
    async fn publish_rule(&self, i: usize, client: Option<&ClientInfo>, m: Message) -> Flow<Message> {
        let rule = self.rule(i);
        let result = match &rule.action {
            Action::Function(Function::OnMessageRetain) => self.retain_store(&rule.pool, &m).await,
            Action::Function(Function::OnRetainDelete) => self.retain_delete(&rule.pool, &m.topic).await,
            Action::Function(_) => Ok(()),
            Action::Sql(_) => {
                let base = match client {
                    Some(c) => PlaceholderValues::for_client(c, &self.node),
                    None => PlaceholderValues {
                        node: Some(self.node.clone()),
                        ..Default::default()
                    },
                };
                self.run_sql(i, &base.with_message(&m)).await
            }
        };
        if let Err(e) = result {
            self.fail(i, &e);
        }
        Flow::Continue(m)
    }

    /// Runs the `sql` action of rule `i` for a delivered or acknowledged message.
    async fn sql_rule(&self, i: usize, client: &ClientInfo, m: &Message) {
        if let Err(e) = self
            .run_sql(
                i,
                &PlaceholderValues::for_client(client, &self.node).with_message(m),
            )
            .await
        {
            self.fail(i, &e);
        }
    }

    /// The highest id a first subscription may start at: below every message
    /// this node has stored but not yet routed (a subscriber must not count as
    /// history a message that will reach it live and may go unacknowledged).
    pub(crate) fn first_position_cap(&self) -> i64 {
        let pending = self.route_pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.first().map_or(i64::MAX, |id| id - 1)
    }

    /// A stored message is done for a client (acknowledged, or undeliverable):
    /// the positions of its matching subscriptions are recomputed.
    pub(crate) fn mark_done(&self, clientid: &str, topic: &str, id: i64) {
        let Some(dirty) = &self.dirty else { return };
        for key in self.tracks.acked(clientid, topic, id) {
            let _ = dirty.send(key);
        }
        self.group_done(clientid, topic, id, true);
    }
}
