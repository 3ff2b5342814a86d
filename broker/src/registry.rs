//! The client registry: client id to the task that owns its session.
//!
//! The map is behind a `std::sync::Mutex` held only for lookups and updates,
//! never across an await. Creating a session and registering it happen under
//! one lock, so two connections with the same new client id cannot both create
//! one: the second finds the first and takes it over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hooks_spec::ClientInfo;

use crate::delivery::{ReplayTx, SessionTx};

/// What the registry knows of one session.
#[derive(Clone)]
pub struct SessionRef {
    /// Unique per session task, so a finished task never removes its successor.
    pub uid: u64,
    /// The task's command channel.
    pub tx: SessionTx,
    /// The task's replay channel.
    pub replay_tx: ReplayTx,
    /// The client as of its latest connection (the session's own copy, shared).
    pub client: Arc<ClientInfo>,
}

/// Client id -> session.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<Arc<str>, SessionRef>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, SessionRef>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session of a client id.
    pub fn get(&self, clientid: &str) -> Option<SessionRef> {
        self.lock().get(clientid).cloned()
    }

    /// Returns the existing session, or registers the one `create` makes.
    /// `create` runs under the lock and must not block.
    pub fn get_or_insert_with(
        &self,
        clientid: &Arc<str>,
        create: impl FnOnce() -> SessionRef,
    ) -> (SessionRef, bool) {
        let mut map = self.lock();
        if let Some(existing) = map.get(clientid) {
            if !existing.tx.is_closed() {
                return (existing.clone(), false);
            }
        }
        let created = create();
        map.insert(Arc::clone(clientid), created.clone());
        (created, true)
    }

    /// Updates the client info of a live session.
    pub fn update_client(&self, uid: u64, client: &Arc<ClientInfo>) {
        if let Some(entry) = self.lock().get_mut(&client.clientid) {
            if entry.uid == uid {
                entry.client = Arc::clone(client);
            }
        }
    }

    /// Removes the entry if it still belongs to session `uid`.
    pub fn remove(&self, clientid: &str, uid: u64) {
        let mut map = self.lock();
        if map.get(clientid).is_some_and(|e| e.uid == uid) {
            map.remove(clientid);
        }
    }

    /// Every session's command channel (for shutdown).
    pub fn all(&self) -> Vec<SessionRef> {
        self.lock().values().cloned().collect()
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
