//! What the plugin remembers about a live connection: whether it logged in as
//! a superuser, and its ACL rows for a short while.
//!
//! Entries are keyed by the peer address (one TCP connection) and carry the
//! client id and user name they were made for: a lookup for a different
//! identity misses, so a stale entry can never grant anything to someone else.
//! An entry is made when this plugin authenticates a superuser, or when ACL
//! rows are cached (`acl_cache_ttl` above zero), and removed when the
//! connection ends (`client.disconnected`) or is refused after
//! authentication (`client.connack` with an error). Rows older than the TTL
//! are read again, so a changed `mqtt_acl` applies to live connections within
//! `acl_cache_ttl`, as with EMQX's ACL cache.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hooks_spec::ClientInfo;

use super::acl::AclRule;

/// Rows lists longer than this are not cached (they are read for every check).
const MAX_CACHED_ROWS: usize = 256;
/// Below this many entries no pruning pass runs.
const PRUNE_FLOOR: usize = 1024;

struct Entry {
    clientid: Arc<str>,
    username: Option<String>,
    superuser: bool,
    acl: Option<(Instant, Arc<Vec<AclRule>>)>,
}

impl Entry {
    fn is_for(&self, client: &ClientInfo) -> bool {
        self.clientid == client.clientid && self.username == client.username
    }
}

struct Inner {
    entries: HashMap<SocketAddr, Entry>,
    prune_at: usize,
}

/// The per-connection cache.
pub struct ConnCache {
    ttl: Duration,
    inner: Mutex<Inner>,
}

impl ConnCache {
    /// A cache whose ACL rows live `ttl` (zero: ACL rows are not cached).
    pub fn new(ttl: Duration) -> ConnCache {
        ConnCache {
            ttl,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                prune_at: PRUNE_FLOOR,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This connection just authenticated (through this plugin or not):
    /// whatever was known about its peer address is replaced.
    pub fn authenticated(&self, client: &ClientInfo, superuser: bool) {
        let mut inner = self.lock();
        if superuser {
            let entry = Entry {
                clientid: Arc::clone(&client.clientid),
                username: client.username.clone(),
                superuser,
                acl: None,
            };
            inner.entries.insert(client.peer, entry);
            self.prune(&mut inner);
        } else {
            inner.entries.remove(&client.peer);
        }
    }

    /// The connection from `peer` was refused or closed.
    pub fn forget_peer(&self, peer: SocketAddr) {
        self.lock().entries.remove(&peer);
    }

    /// The connection of `client` ended.
    pub fn disconnected(&self, client: &ClientInfo) {
        let mut inner = self.lock();
        if inner.entries.get(&client.peer).is_some_and(|e| e.is_for(client)) {
            inner.entries.remove(&client.peer);
        }
    }

    /// True when `client` authenticated as a superuser on this connection.
    pub fn is_superuser(&self, client: &ClientInfo) -> bool {
        self.lock()
            .entries
            .get(&client.peer)
            .is_some_and(|e| e.is_for(client) && e.superuser)
    }

    /// The cached ACL rows of `client`, if still fresh.
    pub fn acl_rules(&self, client: &ClientInfo) -> Option<Arc<Vec<AclRule>>> {
        if self.ttl.is_zero() {
            return None;
        }
        let inner = self.lock();
        let entry = inner.entries.get(&client.peer).filter(|e| e.is_for(client))?;
        let (at, rules) = entry.acl.as_ref()?;
        (at.elapsed() < self.ttl).then(|| Arc::clone(rules))
    }

    /// Remembers the ACL rows just read for `client`.
    pub fn store_acl(&self, client: &ClientInfo, rules: Arc<Vec<AclRule>>) {
        if self.ttl.is_zero() || rules.len() > MAX_CACHED_ROWS {
            return;
        }
        let mut inner = self.lock();
        let now = Instant::now();
        match inner.entries.get_mut(&client.peer) {
            Some(e) if e.is_for(client) => e.acl = Some((now, rules)),
            _ => {
                let entry = Entry {
                    clientid: Arc::clone(&client.clientid),
                    username: client.username.clone(),
                    superuser: false,
                    acl: Some((now, rules)),
                };
                inner.entries.insert(client.peer, entry);
                self.prune(&mut inner);
            }
        }
    }

    /// Entries are removed when connections end; this pass only bounds what
    /// a lost notification could leave behind (expired rows of non-superusers).
    fn prune(&self, inner: &mut Inner) {
        if inner.entries.len() < inner.prune_at {
            return;
        }
        let ttl = self.ttl;
        inner
            .entries
            .retain(|_, e| e.superuser || e.acl.as_ref().is_some_and(|(at, _)| at.elapsed() < ttl));
        inner.prune_at = (inner.entries.len() * 2).max(PRUNE_FLOOR);
    }

    /// Number of connections with an entry.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when no connection has an entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, user: Option<&str>, port: u16) -> ClientInfo {
        ClientInfo {
            clientid: id.into(),
            username: user.map(str::to_string),
            peer: SocketAddr::from(([127, 0, 0, 1], port)),
            protocol: hooks_spec::ProtocolVersion::V311,
            clean_start: true,
            session_expiry: 0,
            keepalive: 30,
            cert_common_name: None,
        }
    }

    #[test]
    fn superuser_only_for_the_same_identity() {
        let cache = ConnCache::new(Duration::ZERO);
        let admin = client("c1", Some("admin"), 1000);
        cache.authenticated(&admin, true);
        assert!(cache.is_superuser(&admin));
        assert!(!cache.is_superuser(&client("c2", Some("admin"), 1000)));
        assert!(!cache.is_superuser(&client("c1", Some("bob"), 1000)));
        assert!(!cache.is_superuser(&client("c1", Some("admin"), 1001)));
        cache.disconnected(&client("other", None, 1000));
        assert!(
            cache.is_superuser(&admin),
            "another identity's disconnect leaves it"
        );
        cache.disconnected(&admin);
        assert!(!cache.is_superuser(&admin));
        cache.authenticated(&admin, true);
        cache.authenticated(&client("c9", None, 1000), false);
        assert!(
            cache.is_empty(),
            "a new login from the peer replaces the old state"
        );
    }

    #[test]
    fn acl_rows_expire_and_respect_ttl_zero() {
        let off = ConnCache::new(Duration::ZERO);
        let c = client("c1", None, 2000);
        off.store_acl(&c, Arc::new(Vec::new()));
        assert!(off.acl_rules(&c).is_none());

        let on = ConnCache::new(Duration::from_secs(60));
        on.store_acl(&c, Arc::new(Vec::new()));
        assert!(on.acl_rules(&c).is_some());
        assert!(on.acl_rules(&client("c2", None, 2000)).is_none());
        on.forget_peer(c.peer);
        assert!(on.acl_rules(&c).is_none());

        let short = ConnCache::new(Duration::from_nanos(1));
        short.store_acl(&c, Arc::new(Vec::new()));
        std::thread::sleep(Duration::from_millis(1));
        assert!(short.acl_rules(&c).is_none());
    }
}
