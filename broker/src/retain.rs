//! Retained messages: the last retained message of each topic.
//!
//! Publishing with the retain flag stores the message for its topic; an empty
//! payload deletes it. A new subscription receives every retained message whose
//! topic matches its filter (wildcards included). Expired messages are skipped
//! and removed lazily.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use hooks_spec::Message;

use crate::topic;

/// The retained-message store.
#[derive(Default)]
pub struct RetainStore {
    by_topic: RwLock<HashMap<Arc<str>, Arc<Message>>>,
}

impl RetainStore {
    /// An empty store.
    pub fn new() -> RetainStore {
        RetainStore::default()
    }

    /// Stores (or, with an empty payload, deletes) the retained message of its topic.
    pub fn apply(&self, msg: &Arc<Message>) {
        let mut map = self.by_topic.write().unwrap_or_else(|p| p.into_inner());
        if msg.payload.is_empty() {
            map.remove(&msg.topic);
        } else {
            map.insert(Arc::clone(&msg.topic), Arc::clone(msg));
        }
    }

    /// Every unexpired retained message matching `filter`, oldest first.
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let now = SystemTime::now();
        let map = self.by_topic.read().unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<Arc<Message>> = map
            .values()
            .filter(|m| !m.is_expired(now) && topic::matches(filter, &m.topic))
            .cloned()
            .collect();
        found.sort_by_key(|m| m.timestamp);
        found
    }

    /// Number of retained topics.
    pub fn len(&self) -> usize {
        self.by_topic.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
