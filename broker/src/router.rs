//! The router: which sessions receive a published message.
//!
//! Subscriptions live in two [`SubTrie`]s behind `RwLock`s: one for plain
//! subscriptions keyed by client id, one for shared subscriptions keyed by
//! (group, client id). Publishing takes only the read lock, so publishers never
//! block each other; subscribe and unsubscribe take the write lock briefly.
//! A message goes to each session once: overlapping subscriptions of one client
//! are merged (highest granted QoS, every MQTT 5 subscription identifier), and
//! each shared group picks one member in turn.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use hooks_spec::{Message, QoS, SubOpts};

use crate::delivery::{Routed, SessionCmd, SessionTx};
use crate::trie::SubTrie;

/// One subscription as the router keeps it.
#[derive(Clone)]
pub struct Route {
    /// Where to send matching messages.
    pub tx: SessionTx,
    /// Whether the session has a connection now (shared groups prefer those).
    pub online: Arc<AtomicBool>,
    /// The options it was granted.
    pub opts: SubOpts,
}

type SharedKey = (Arc<str>, Arc<str>);

/// (filter, group) -> members (client id, route) matching one publish.
type SharedGroups = HashMap<(String, Arc<str>), Vec<(Arc<str>, Route)>>;

/// The subscription index and fan-out.
#[derive(Default)]
pub struct Router {
    plain: RwLock<SubTrie<Arc<str>, Route>>,
    shared: RwLock<SubTrie<SharedKey, Route>>,
    /// Round-robin position of each shared group, by (filter, group).
    next_member: Mutex<HashMap<(String, Arc<str>), usize>>,
}

/// What one session gets from one publish.
struct Fanout {
    tx: SessionTx,
    qos: QoS,
    retain_as_published: bool,
    subscription_ids: Vec<u32>,
}

impl Router {
    /// An empty router.
    pub fn new() -> Router {
        Router::default()
    }

    /// Adds or replaces a subscription. `filter` has no `$share/` prefix;
    /// `opts.share_group` says whether it is shared. Returns true when it is new.
    pub fn subscribe(&self, clientid: &Arc<str>, filter: &str, route: Route) -> bool {
        match route.opts.share_group.clone() {
            Some(group) => {
                let key = (Arc::from(group.as_str()), Arc::clone(clientid));
                write(&self.shared).insert(filter, key, route).is_none()
            }
            None => write(&self.plain)
                .insert(filter, Arc::clone(clientid), route)
                .is_none(),
        }
    }

    /// Removes a subscription; returns its options if it existed.
    pub fn unsubscribe(
        &self,
        clientid: &Arc<str>,
        filter: &str,
        share_group: Option<&str>,
    ) -> Option<SubOpts> {
        match share_group {
            Some(group) => {
                let key = (Arc::from(group), Arc::clone(clientid));
                write(&self.shared).remove(filter, &key).map(|r| r.opts)
            }
            None => write(&self.plain).remove(filter, clientid).map(|r| r.opts),
        }
    }

    /// Routes a message to every matching session; returns how many got it.
    pub fn route(&self, msg: &Arc<Message>) -> usize {
        let mut targets: HashMap<Arc<str>, Fanout> = HashMap::new();
        let publisher = msg.publisher.as_deref();
        {
            let plain = read(&self.plain);
            plain.for_each_match(&msg.topic, |_filter, clientid, route| {
                if route.opts.no_local && publisher == Some(&**clientid) {
                    return;
                }
                merge(&mut targets, clientid, route);
            });
        }
        {
            let shared = read(&self.shared);
            if !shared.is_empty() {
                // group -> members (filter, clientid, route); one member per group gets it.
                let mut groups: SharedGroups = HashMap::new();
                shared.for_each_match(&msg.topic, |filter, (group, clientid), route| {
                    if route.opts.no_local && publisher == Some(&**clientid) {
                        return;
                    }
                    groups
                        .entry((filter.to_string(), Arc::clone(group)))
                        .or_default()
                        .push((Arc::clone(clientid), route.clone()));
                });
                for (group_key, mut members) in groups {
                    // A stable order, so "in turn" is round robin over the members.
                    members.sort_by(|a, b| a.0.cmp(&b.0));
                    // Prefer members with a connection; else any live session (it queues).
                    let online: Vec<usize> = (0..members.len())
                        .filter(|&i| members[i].1.online.load(Ordering::Relaxed))
                        .collect();
                    let candidates: Vec<usize> = if online.is_empty() {
                        (0..members.len())
                            .filter(|&i| !members[i].1.tx.is_closed())
                            .collect()
                    } else {
                        online
                    };
                    if candidates.is_empty() {
                        continue;
                    }
                    let turn = {
                        let mut counters = self.next_member.lock().unwrap_or_else(|p| p.into_inner());
                        let n = counters.entry(group_key).or_insert(0);
                        let turn = *n;
                        *n = n.wrapping_add(1);
                        turn
                    };
                    let (clientid, route) = &members[candidates[turn % candidates.len()]];
                    merge(&mut targets, clientid, route);
                }
            }
        }
        let mut delivered = 0;
        for (_, f) in targets {
            let qos = f.qos.min(msg.qos);
            let routed = Routed {
                message: Arc::clone(msg),
                qos,
                retain: f.retain_as_published && msg.retain,
                subscription_ids: f.subscription_ids,
                filter: None,
            };
            if f.tx.send(SessionCmd::Deliver(routed)).is_ok() {
                delivered += 1;
            }
        }
        delivered
    }

    /// Number of subscriptions (plain and shared).
    pub fn len(&self) -> usize {
        read(&self.plain).len() + read(&self.shared).len()
    }

    /// True when nobody subscribes to anything.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn merge(targets: &mut HashMap<Arc<str>, Fanout>, clientid: &Arc<str>, route: &Route) {
    let entry = targets.entry(Arc::clone(clientid)).or_insert_with(|| Fanout {
        tx: route.tx.clone(),
        qos: route.opts.qos,
        retain_as_published: route.opts.retain_as_published,
        subscription_ids: Vec::new(),
    });
    entry.qos = entry.qos.max(route.opts.qos);
    entry.retain_as_published |= route.opts.retain_as_published;
    if let Some(id) = route.opts.subscription_id {
        entry.subscription_ids.push(id);
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}
