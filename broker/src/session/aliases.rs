//! Topic aliases towards an MQTT 5 client (MQTT 5 3.3.2.3.4).
//!
//! Per connection (a reconnect starts with none, as the protocol requires),
//! within the Topic Alias Maximum the client sent in CONNECT, capped at
//! [`MAX_OUT_ALIASES`]. When every alias is taken, the least recently used
//! one is given to the new topic. A topic's first PUBLISH carries the topic
//! name and the alias; later ones only the alias (empty topic name).
//!
//! Connections whose client allows no alias have no table at all: nothing
//! is looked up or allocated per message for them.

use std::collections::HashMap;
use std::sync::Arc;

/// The most aliases used towards one client, whatever its maximum: the
/// table keeps each aliased topic (a client allowing 65535 would otherwise
/// make the broker hold that many topics per connection).
pub(crate) const MAX_OUT_ALIASES: u16 = 1024;

/// What to send a topic with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Alias {
    /// The client knows this alias for the topic: send the alias alone.
    Known(u16),
    /// Send the topic name with this alias, then [`OutAliases::commit`] it
    /// once the PUBLISH is in the output buffer.
    New(u16),
}

/// One alias: its topic and its place in the recency list (aliases, 0: none).
struct Slot {
    topic: Arc<str>,
    newer: u16,
    older: u16,
}

/// The aliases of one connection, least recently used given away first.
pub(super) struct OutAliases {
    by_topic: HashMap<Arc<str>, u16>,
    /// Slot of alias `n` at index `n - 1`.
    slots: Vec<Slot>,
    max: u16,
    /// Most and least recently used aliases (0: none yet).
    newest: u16,
    oldest: u16,
}

impl OutAliases {
    /// A table for a client whose Topic Alias Maximum is `client_max`;
    /// `None` when it allows none (or did not say, which means none).
    pub(super) fn for_client(client_max: Option<u16>) -> Option<Box<OutAliases>> {
        let max = client_max.unwrap_or(0).min(MAX_OUT_ALIASES);
        (max > 0).then(|| {
            Box::new(OutAliases {
                by_topic: HashMap::new(),
                slots: Vec::new(),
                max,
                newest: 0,
                oldest: 0,
            })
        })
    }

    /// The alias to send `topic` with; a known one becomes the most recently used.
    pub(super) fn lookup(&mut self, topic: &str) -> Alias {
        if let Some(&alias) = self.by_topic.get(topic) {
            self.touch(alias);
            return Alias::Known(alias);
        }
        if self.slots.len() < usize::from(self.max) {
            // Fits: slots.len() < max <= u16::MAX.
            Alias::New(self.slots.len() as u16 + 1)
        } else {
            Alias::New(self.oldest)
        }
    }

    /// Records that the client was sent `topic` with `alias` (from
    /// [`OutAliases::lookup`]): the alias now means that topic.
    pub(super) fn commit(&mut self, alias: u16, topic: &Arc<str>) {
        let i = usize::from(alias).wrapping_sub(1);
        if i == self.slots.len() {
            self.slots.push(Slot {
                topic: Arc::clone(topic),
                newer: 0,
                older: 0,
            });
            self.link_newest(alias);
        } else if let Some(slot) = self.slots.get_mut(i) {
            let old = std::mem::replace(&mut slot.topic, Arc::clone(topic));
            self.by_topic.remove(&old);
            self.touch(alias);
        } else {
            return;
        }
        self.by_topic.insert(Arc::clone(topic), alias);
    }

    fn slot(&mut self, alias: u16) -> Option<&mut Slot> {
        self.slots.get_mut(usize::from(alias).wrapping_sub(1))
    }

    /// Moves `alias` to the most recently used end.
    fn touch(&mut self, alias: u16) {
        if self.newest == alias {
            return;
        }
        let (newer, older) = match self.slot(alias) {
            Some(s) => (s.newer, s.older),
            None => return,
        };
        // Unlink (it is not the newest, so `newer` is set).
        if let Some(s) = self.slot(newer) {
            s.older = older;
        }
        match self.slot(older) {
            Some(s) => s.newer = newer,
            None => self.oldest = newer,
        }
        self.link_newest(alias);
    }

    /// Puts an unlinked `alias` at the most recently used end.
    fn link_newest(&mut self, alias: u16) {
        let previous = self.newest;
        if let Some(s) = self.slot(alias) {
            s.newer = 0;
            s.older = previous;
        }
        match self.slot(previous) {
            Some(s) => s.newer = alias,
            None => self.oldest = alias,
        }
        self.newest = alias;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(a: &mut OutAliases, topic: &str) -> Alias {
        let got = a.lookup(topic);
        if let Alias::New(n) = got {
            a.commit(n, &Arc::from(topic));
        }
        got
    }

    #[test]
    fn none_for_clients_that_allow_none() {
        assert!(OutAliases::for_client(None).is_none());
        assert!(OutAliases::for_client(Some(0)).is_none());
        assert_eq!(
            OutAliases::for_client(Some(u16::MAX)).map(|a| a.max),
            Some(MAX_OUT_ALIASES)
        );
    }

    #[test]
    fn assigns_reuses_and_evicts_the_least_recently_used() {
        let mut a = OutAliases::for_client(Some(3)).unwrap();
        assert_eq!(send(&mut a, "a"), Alias::New(1));
        assert_eq!(send(&mut a, "b"), Alias::New(2));
        assert_eq!(send(&mut a, "a"), Alias::Known(1));
        assert_eq!(send(&mut a, "c"), Alias::New(3));
        // Least recently used now: b (2), then a (1), then c (3).
        assert_eq!(send(&mut a, "d"), Alias::New(2));
        assert_eq!(send(&mut a, "b"), Alias::New(1));
        assert_eq!(send(&mut a, "c"), Alias::Known(3));
        assert_eq!(send(&mut a, "a"), Alias::New(2));
        assert_eq!(send(&mut a, "b"), Alias::Known(1));
        assert_eq!(send(&mut a, "c"), Alias::Known(3));
        assert_eq!(a.by_topic.len(), 3);
    }

    #[test]
    fn an_uncommitted_alias_is_offered_again() {
        let mut a = OutAliases::for_client(Some(1)).unwrap();
        // Not committed (the PUBLISH was too large to send): still new.
        assert_eq!(a.lookup("x"), Alias::New(1));
        assert_eq!(a.lookup("x"), Alias::New(1));
        assert_eq!(send(&mut a, "x"), Alias::New(1));
        assert_eq!(send(&mut a, "x"), Alias::Known(1));
        assert_eq!(send(&mut a, "y"), Alias::New(1));
        assert_eq!(send(&mut a, "x"), Alias::New(1));
    }
}
