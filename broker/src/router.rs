//! The router: which sessions receive a published message.
//!
//! Subscriptions live in two [`SubTrie`]s behind `RwLock`s: one for plain
//! subscriptions keyed by client id, one for shared subscriptions keyed by
//! (group, client id). Publishing takes only the read lock, so publishers never
//! block each other; subscribe and unsubscribe take the write lock briefly.
//! A message goes to each session once: overlapping subscriptions of one client
//! are merged (highest granted QoS, every MQTT 5 subscription identifier), and
//! each shared group picks one member in turn.
//!
//! A route's target is a session on this node or, in a cluster, another node
//! that has subscribers for the filter ([`Router::add_node_route`]): such a
//! node gets the message once ([`Forward`]), whatever number of its sessions
//! match, and delivers it to them itself. A shared group's members may be
//! sessions here or nodes with members of the group; a node that wins a
//! message picks one of its own members.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use hooks_spec::{Message, QoS, SubOpts};

use crate::delivery::{Routed, SessionCmd, SessionTx, ShareKey};
use crate::trie::SubTrie;

/// One subscription as the router keeps it.
#[derive(Clone)]
pub struct Route {
    /// Where to send matching messages.
    pub tx: SessionTx,
    /// The options it was granted.
    pub opts: SubOpts,
}

/// A node of the cluster, by name.
pub type NodeName = Arc<str>;

/// A member of a shared group.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Member {
    /// A session on this node, by client id.
    Client(Arc<str>),
    /// Another node with members of the group.
    Node(NodeName),
}

/// Where a shared group's member gets its messages.
#[derive(Clone)]
pub enum Target {
    /// A session here.
    Local(Route),
    /// Another node (named by the [`Member`] key).
    Node,
}

type SharedKey = (Arc<str>, Member);

/// (filter, group) -> members (member, target) matching one publish.
type SharedGroups = HashMap<(String, Arc<str>), Vec<(Member, Target)>>;

/// A filter gained its first, or lost its last, subscription of a session
/// here: what a cluster tells the other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteChange {
    /// The filter (without `$share/`).
    pub filter: String,
    /// The shared group, for a shared subscription.
    pub group: Option<String>,
    /// True: first subscription; false: the last one left.
    pub added: bool,
}

/// The subscription index and fan-out.
#[derive(Default)]
pub struct Router {
    /// Where [`RouteChange`]s go, in a cluster.
    changes: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<RouteChange>>,
    plain: RwLock<SubTrie<Arc<str>, Route>>,
    shared: RwLock<SubTrie<SharedKey, Target>>,
    /// Other nodes' plain subscriptions: one entry per (filter, node).
    nodes: RwLock<SubTrie<NodeName, ()>>,
    /// Round-robin position of each shared group, by (filter, group).
    next_member: Mutex<HashMap<(String, Arc<str>), usize>>,
}

/// A message another node must get, and for what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The node.
    pub node: NodeName,
    /// For its plain subscriptions.
    pub plain: bool,
    /// For the shared groups (filter, group) it won: it delivers to one of
    /// its members of each.
    pub groups: Vec<(String, Arc<str>)>,
}

/// Where one publish went.
#[derive(Debug, Default)]
pub struct Routing {
    /// Sessions here that got it.
    pub local: usize,
    /// Other nodes that must get it.
    pub forwards: Vec<Forward>,
}

impl Routing {
    /// Sessions here plus nodes elsewhere: zero means nobody subscribes.
    pub fn receivers(&self) -> usize {
        self.local + self.forwards.len()
    }
}

/// What one session gets from one publish.
struct Fanout {
    tx: SessionTx,
    qos: QoS,
    retain_as_published: bool,
    subscription_ids: Vec<u32>,
    /// Only this shared group chose the session (see [`Routed::share`]).
    share: Option<Arc<ShareKey>>,
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
                let group: Arc<str> = Arc::from(group.as_str());
                let key = (Arc::clone(&group), Member::Client(Arc::clone(clientid)));
                let mut shared = write(&self.shared);
                let first = !has_local_member(&shared, filter, &group);
                let new = shared.insert(filter, key, Target::Local(route)).is_none();
                drop(shared);
                if first {
                    self.changed(filter, Some(&group), true);
                }
                new
            }
            None => {
                let mut plain = write(&self.plain);
                let new = plain.insert(filter, Arc::clone(clientid), route).is_none();
                let mut here = 0;
                plain.for_each_at(filter, |_, _| here += 1);
                drop(plain);
                if new && here == 1 {
                    self.changed(filter, None, true);
                }
                new
            }
        }
    }

    /// Sends [`RouteChange`]s to `tx` from now on (set once, by a cluster).
    pub fn watch_changes(&self, tx: tokio::sync::mpsc::UnboundedSender<RouteChange>) {
        let _ = self.changes.set(tx);
    }

    /// The filters (and shared groups) sessions here subscribe to: what a
    /// cluster node announces when it joins.
    pub fn local_routes(&self) -> Vec<(String, Option<String>)> {
        let mut out: Vec<(String, Option<String>)> = Vec::new();
        let plain = read(&self.plain);
        plain.for_each_match_all(|filter| out.push((filter.to_string(), None)));
        drop(plain);
        let shared = read(&self.shared);
        shared.for_each_entry(|filter, (group, member), _| {
            if matches!(member, Member::Client(_)) {
                let route = (filter.to_string(), Some(group.to_string()));
                if !out.contains(&route) {
                    out.push(route);
                }
            }
        });
        out
    }

    fn changed(&self, filter: &str, group: Option<&str>, added: bool) {
        if let Some(tx) = self.changes.get() {
            let _ = tx.send(RouteChange {
                filter: filter.to_string(),
                group: group.map(str::to_string),
                added,
            });
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
                let group: Arc<str> = Arc::from(group);
                let key = (Arc::clone(&group), Member::Client(Arc::clone(clientid)));
                let mut shared = write(&self.shared);
                let removed = match shared.remove(filter, &key) {
                    Some(Target::Local(r)) => Some(r.opts),
                    _ => None,
                };
                let last = removed.is_some() && !has_local_member(&shared, filter, &group);
                drop(shared);
                if last {
                    self.changed(filter, Some(&group), false);
                }
                removed
            }
            None => {
                let mut plain = write(&self.plain);
                let removed = plain.remove(filter, clientid).map(|r| r.opts);
                let mut here = 0;
                plain.for_each_at(filter, |_, _| here += 1);
                drop(plain);
                if removed.is_some() && here == 0 {
                    self.changed(filter, None, false);
                }
                removed
            }
        }
    }

    /// Forgets every route of `node` (it left the cluster, or is down).
    pub fn forget_node(&self, node: &NodeName) {
        write(&self.nodes).remove_where(|n| n == node);
        write(&self.shared).remove_where(|(_, m)| matches!(m, Member::Node(n) if n == node));
    }

    /// `node` has plain subscribers for `filter` (a cluster's route table).
    /// Returns true when it is new.
    pub fn add_node_route(&self, node: &NodeName, filter: &str) -> bool {
        write(&self.nodes).insert(filter, Arc::clone(node), ()).is_none()
    }

    /// `node` no longer has plain subscribers for `filter`.
    pub fn remove_node_route(&self, node: &NodeName, filter: &str) -> bool {
        write(&self.nodes).remove(filter, node).is_some()
    }

    /// `node` has members of shared group `group` on `filter`.
    pub fn add_node_member(&self, node: &NodeName, filter: &str, group: &str) -> bool {
        let key = (Arc::from(group), Member::Node(Arc::clone(node)));
        write(&self.shared).insert(filter, key, Target::Node).is_none()
    }

    /// `node` no longer has members of `group` on `filter`.
    pub fn remove_node_member(&self, node: &NodeName, filter: &str, group: &str) -> bool {
        let key = (Arc::from(group), Member::Node(Arc::clone(node)));
        write(&self.shared).remove(filter, &key).is_some()
    }

    /// Routes a message that another node forwarded for its own sessions:
    /// to the local plain subscribers (`plain`), and to one local member of
    /// each of `groups`; never to another node again.
    pub fn route_forwarded(&self, msg: &Arc<Message>, plain: bool, groups: &[(String, Arc<str>)]) -> usize {
        let mut targets: HashMap<Arc<str>, Fanout> = HashMap::new();
        if plain {
            self.plain_targets(msg, &mut targets);
        }
        if !groups.is_empty() {
            self.shared_targets(msg, &mut targets, None, Some(groups));
        }
        send(msg, targets)
    }

    /// Routes a message to every matching session here, and says which
    /// other nodes must get it.
    pub fn route(&self, msg: &Arc<Message>) -> Routing {
        let mut targets: HashMap<Arc<str>, Fanout> = HashMap::new();
        self.plain_targets(msg, &mut targets);
        let mut forwards: Vec<Forward> = Vec::new();
        {
            let nodes = read(&self.nodes);
            if !nodes.is_empty() {
                nodes.for_each_match(&msg.topic, |_filter, node, ()| {
                    if !forwards.iter().any(|f| &f.node == node) {
                        forwards.push(Forward {
                            node: Arc::clone(node),
                            plain: true,
                            groups: Vec::new(),
                        });
                    }
                });
            }
        }
        self.shared_targets(msg, &mut targets, Some(&mut forwards), None);
        Routing {
            local: send(msg, targets),
            forwards,
        }
    }

    fn plain_targets(&self, msg: &Arc<Message>, targets: &mut HashMap<Arc<str>, Fanout>) {
        let publisher = msg.publisher.as_deref();
        let plain = read(&self.plain);
        plain.for_each_match(&msg.topic, |_filter, clientid, route| {
            if route.opts.no_local && publisher == Some(&**clientid) {
                return;
            }
            merge(targets, clientid, route);
        });
    }

    /// One member of each matching shared group: a session here (added to
    /// `targets`) or, when `forwards` is given, another node (added there).
    /// `only`: the groups a forwarding node won (then only local members).
    fn shared_targets(
        &self,
        msg: &Arc<Message>,
        targets: &mut HashMap<Arc<str>, Fanout>,
        mut forwards: Option<&mut Vec<Forward>>,
        only: Option<&[(String, Arc<str>)]>,
    ) {
        let shared = read(&self.shared);
        if shared.is_empty() {
            return;
        }
        let publisher = msg.publisher.as_deref();
        // group -> members (filter, member, target); one member per group gets it.
        let mut groups: SharedGroups = HashMap::new();
        shared.for_each_match(&msg.topic, |filter, (group, member), target| {
            if let Some(only) = only {
                if !only.iter().any(|(f, g)| f == filter && g == group) {
                    return;
                }
            }
            match (member, target) {
                (Member::Client(clientid), Target::Local(route))
                    if route.opts.no_local && publisher == Some(&**clientid) =>
                {
                    return
                }
                // A forwarded message is for members here only.
                (Member::Node(_), _) if forwards.is_none() => return,
                _ => {}
            }
            groups
                .entry((filter.to_string(), Arc::clone(group)))
                .or_default()
                .push((member.clone(), target.clone()));
        });
        drop(shared);
        for (group_key, mut members) in groups {
            // A stable order, so "in turn" is round robin over the members.
            members.sort_by(|a, b| a.0.cmp(&b.0));
            // Prefer members with a connection (a node counts as one: its own
            // choice prefers its connected members); else any live session (it queues).
            let connected = |t: &Target| match t {
                Target::Local(r) => r.tx.is_attached(),
                Target::Node => true,
            };
            let online: Vec<usize> = (0..members.len()).filter(|&i| connected(&members[i].1)).collect();
            let candidates: Vec<usize> = if online.is_empty() {
                (0..members.len())
                    .filter(|&i| matches!(&members[i].1, Target::Local(r) if !r.tx.is_closed()))
                    .collect()
            } else {
                online
            };
            if candidates.is_empty() {
                continue;
            }
            let turn = {
                let mut counters = self.next_member.lock().unwrap_or_else(|p| p.into_inner());
                let n = counters.entry(group_key.clone()).or_insert(0);
                let turn = *n;
                *n = n.wrapping_add(1);
                turn
            };
            match &members[candidates[turn % candidates.len()]] {
                (Member::Client(clientid), Target::Local(route)) => {
                    let fresh = !targets.contains_key(clientid);
                    merge(targets, clientid, route);
                    if fresh {
                        if let Some(f) = targets.get_mut(clientid) {
                            f.share = Some(Arc::new(group_key));
                        }
                    }
                }
                (Member::Node(node), _) => {
                    if let Some(forwards) = forwards.as_deref_mut() {
                        match forwards.iter_mut().find(|f| &f.node == node) {
                            Some(f) => f.groups.push(group_key),
                            None => forwards.push(Forward {
                                node: Arc::clone(node),
                                plain: false,
                                groups: vec![group_key],
                            }),
                        }
                    }
                }
                (Member::Client(_), Target::Node) => {}
            }
        }
    }

    /// Another member here of the shared group `key` than `except`, in turn
    /// with the group's routing: one with a connection, or (`connected_only`
    /// false) any live session when none has one. For a member that lost its
    /// connection (or ended) with messages of the group unacknowledged.
    pub fn other_member(&self, key: &ShareKey, except: &Arc<str>, connected_only: bool) -> Option<Route> {
        let (filter, group) = key;
        let mut members: Vec<(Arc<str>, Route)> = Vec::new();
        read(&self.shared).for_each_at(filter, |(g, m), target| {
            if let (true, Member::Client(c), Target::Local(route)) = (g == group, m, target) {
                if c != except && !route.tx.is_closed() {
                    members.push((Arc::clone(c), route.clone()));
                }
            }
        });
        members.sort_by(|a, b| a.0.cmp(&b.0));
        let online: Vec<&Route> = members
            .iter()
            .map(|(_, r)| r)
            .filter(|r| r.tx.is_attached())
            .collect();
        let candidates: Vec<&Route> = match (online.is_empty(), connected_only) {
            (false, _) => online,
            (true, true) => return None,
            (true, false) => members.iter().map(|(_, r)| r).collect(),
        };
        if candidates.is_empty() {
            return None;
        }
        let turn = {
            let mut counters = self.next_member.lock().unwrap_or_else(|p| p.into_inner());
            let n = counters.entry((filter.clone(), Arc::clone(group))).or_insert(0);
            let turn = *n;
            *n = n.wrapping_add(1);
            turn
        };
        Some(candidates[turn % candidates.len()].clone())
    }

    /// Some other node of the cluster has members of the shared group `key`.
    pub fn has_member_node(&self, key: &ShareKey) -> bool {
        let (filter, group) = key;
        let mut found = false;
        read(&self.shared).for_each_at(filter, |(g, m), _| {
            found |= g == group && matches!(m, Member::Node(_));
        });
        found
    }

    /// Another node of the cluster with members of the shared group `key`,
    /// in turn with the group's routing (that node picks one of its members).
    pub fn member_node(&self, key: &ShareKey) -> Option<NodeName> {
        let (filter, group) = key;
        let mut nodes: Vec<NodeName> = Vec::new();
        read(&self.shared).for_each_at(filter, |(g, m), _| {
            if let (true, Member::Node(n)) = (g == group, m) {
                nodes.push(Arc::clone(n));
            }
        });
        if nodes.is_empty() {
            return None;
        }
        nodes.sort();
        let turn = {
            let mut counters = self.next_member.lock().unwrap_or_else(|p| p.into_inner());
            let n = counters.entry((filter.clone(), Arc::clone(group))).or_insert(0);
            let turn = *n;
            *n = n.wrapping_add(1);
            turn
        };
        Some(Arc::clone(&nodes[turn % nodes.len()]))
    }

    /// The members here of the shared group `key`, other than `except`, that
    /// have no connection.
    pub fn offline_members(&self, key: &ShareKey, except: &Arc<str>) -> Vec<SessionTx> {
        let (filter, group) = key;
        let mut out = Vec::new();
        read(&self.shared).for_each_at(filter, |(g, m), target| {
            if let (true, Member::Client(c), Target::Local(route)) = (g == group, m, target) {
                if c != except && !route.tx.is_attached() && !route.tx.is_closed() {
                    out.push(route.tx.clone());
                }
            }
        });
        out
    }

    /// Number of routes (plain and shared, of sessions here and of other nodes).
    pub fn len(&self) -> usize {
        read(&self.plain).len() + read(&self.shared).len() + read(&self.nodes).len()
    }

    /// Subscriptions of sessions on this node (plain and shared), without
    /// the routes of other nodes.
    pub fn local_len(&self) -> usize {
        read(&self.plain).len() + read(&self.shared).len()
    }

    /// True when nobody subscribes to anything.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A session here is a member of `group` on `filter`.
fn has_local_member(shared: &SubTrie<SharedKey, Target>, filter: &str, group: &Arc<str>) -> bool {
    let mut found = false;
    shared.for_each_at(filter, |(g, m), _| {
        found |= g == group && matches!(m, Member::Client(_));
    });
    found
}

fn merge(targets: &mut HashMap<Arc<str>, Fanout>, clientid: &Arc<str>, route: &Route) {
    let entry = targets.entry(Arc::clone(clientid)).or_insert_with(|| Fanout {
        tx: route.tx.clone(),
        qos: route.opts.qos,
        retain_as_published: route.opts.retain_as_published,
        subscription_ids: Vec::new(),
        share: None,
    });
    entry.qos = entry.qos.max(route.opts.qos);
    entry.retain_as_published |= route.opts.retain_as_published;
    if let Some(id) = route.opts.subscription_id {
        entry.subscription_ids.push(id);
    }
}

/// Hands the message to each session; returns how many took it.
fn send(msg: &Arc<Message>, targets: HashMap<Arc<str>, Fanout>) -> usize {
    let mut delivered = 0;
    for (_, f) in targets {
        let qos = f.qos.min(msg.qos);
        let routed = Routed {
            message: Arc::clone(msg),
            qos,
            retain: f.retain_as_published && msg.retain,
            subscription_ids: f.subscription_ids,
            filter: None,
            share: f.share,
        };
        if f.tx.send(SessionCmd::Deliver(routed)).is_ok() {
            delivered += 1;
        }
    }
    delivered
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
