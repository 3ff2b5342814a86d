//! A one-multiplication hasher for the integer ids a session keys by:
//! storage ids, packet ids, retained message ids.
//!
//! The default SipHash showed in the replay profile, and its per-map random
//! state costs 16 bytes in each of a session's maps, which every idle
//! connection carries. These keys are small integers a client can choose at
//! most 65,536 of (packet ids) or come from the broker and its plugins
//! (storage and message ids), so there is no flooding to defend against.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;

/// Fibonacci hashing of an integer key.
#[derive(Default, Clone, Copy)]
pub(super) struct IdHasher(u64);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only integers are hashed; this keeps any other use correct.
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(K);
        }
    }

    fn write_u16(&mut self, id: u16) {
        self.0 = u64::from(id).wrapping_mul(K);
    }

    fn write_i64(&mut self, id: i64) {
        self.0 = (id as u64).wrapping_mul(K);
    }

    fn write_u128(&mut self, id: u128) {
        self.0 = ((id as u64) ^ ((id >> 64) as u64)).wrapping_mul(K);
    }
}

/// A set of integer ids.
pub(super) type IdSet<T> = HashSet<T, BuildHasherDefault<IdHasher>>;
/// A map keyed by integer ids.
pub(super) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// SipHash with keys drawn once per process, for maps keyed by what a
/// client chooses (its subscriptions' filters): as resistant to flooding as
/// the default, which draws keys per map and keeps them in each (16 bytes
/// in every session).
#[derive(Default, Clone, Copy)]
pub(super) struct ProcessKeys;

impl std::hash::BuildHasher for ProcessKeys {
    type Hasher = std::collections::hash_map::DefaultHasher;

    fn build_hasher(&self) -> Self::Hasher {
        static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        KEYS.get_or_init(std::collections::hash_map::RandomState::new)
            .build_hasher()
    }
}

/// A map keyed by strings a client chose.
pub(super) type ClientKeyedMap<V> = HashMap<String, V, ProcessKeys>;

/// The id tables of a session's QoS 1 and 2 traffic and of its recent
/// retained deliveries, made on first use: a connection that never sends or
/// receives such a message keeps none (four empty tables are 128 bytes).
#[derive(Default)]
pub(super) struct IdTables(Option<Box<Tables>>);

/// The tables themselves.
#[derive(Default)]
pub(super) struct Tables {
    /// Packet ids of our messages towards the client not yet acknowledged.
    pub(super) in_use: IdSet<u16>,
    /// QoS 2 packet ids received and not yet released (PUBREC sent).
    pub(super) awaiting_rel: IdSet<u16>,
    /// QoS 1/2 packet ids whose message.publish chain is still running (of
    /// this epoch): a copy the client sends again meanwhile is not processed twice.
    pub(super) pending: IdSet<u16>,
    /// Ids of retained messages recently delivered: the broker's retained
    /// store and a storage plugin's retained lookup may both offer one.
    pub(super) retained_sent: IdMap<u128, tokio::time::Instant>,
}

impl IdTables {
    /// The tables, if any were made.
    pub(super) fn get(&self) -> Option<&Tables> {
        self.0.as_deref()
    }

    /// The tables, if any were made, to change.
    pub(super) fn existing_mut(&mut self) -> Option<&mut Tables> {
        self.0.as_deref_mut()
    }

    /// The tables, made now if there were none.
    pub(super) fn get_mut(&mut self) -> &mut Tables {
        self.0.get_or_insert_with(Box::default)
    }

    /// Packet id `pkid` of a message towards the client is free again.
    pub(super) fn release_pkid(&mut self, pkid: u16) {
        if let Some(t) = self.existing_mut() {
            t.in_use.remove(&pkid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packet ids spread over the table: the high bits hashbrown groups by
    /// differ, so 1,000 consecutive ids do not all probe one group.
    #[test]
    fn consecutive_packet_ids_spread_over_the_hash_space() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let build = BuildHasherDefault::<IdHasher>::default();
        let tops: HashSet<u64> = (1u16..=1000).map(|id| build.hash_one(id) >> 57).collect();
        assert!(tops.len() > 100, "only {} distinct top-7-bit values", tops.len());
        let set: IdSet<u16> = (1..=1000).collect();
        assert!((1..=1000).all(|id| set.contains(&id)));
        assert!(!set.contains(&1001));
    }

    /// The process keys are drawn once: two maps hash alike (so a map needs
    /// no keys of its own), and a key is found again.
    #[test]
    fn process_keys_hash_alike_across_maps() {
        use std::hash::BuildHasher;
        assert_eq!(ProcessKeys.hash_one("a/b"), ProcessKeys.hash_one("a/b"));
        assert_ne!(ProcessKeys.hash_one("a/b"), ProcessKeys.hash_one("a/c"));
        let mut map = ClientKeyedMap::default();
        map.insert("a/#".to_string(), 1);
        assert_eq!(map.get("a/#"), Some(&1));
        assert_eq!(std::mem::size_of::<ClientKeyedMap<u8>>(), 32);
    }
}
