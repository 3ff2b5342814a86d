//! The subscription index: a trie of topic filters, keyed by filter level, used by the router.
//!
//! [`SubTrie`] maps `(filter, key)` pairs to values (typically a client or share-group id to its
//! subscription options) and finds every entry whose filter matches a published topic without
//! scanning all subscriptions. Matching follows [`crate::topic::matches`], including the rule that
//! topics starting with `$` are not matched by filters beginning with a wildcard.
//!
//! All operations are iterative, so neither very deep filters nor very deep topics can exhaust the
//! stack, and removing the last entry of a filter prunes the nodes that became empty.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

/// Entries stored at a node whose path is a subscribed filter.
struct Leaf<K, V> {
    /// The full filter string leading to this node, stored once and passed to match callbacks.
    filter: Box<str>,
    /// Values keyed by subscriber key.
    entries: HashMap<K, V>,
}

/// One level of the trie.
struct Node<K, V> {
    /// Children for literal levels (including the empty level).
    children: HashMap<Box<str>, Node<K, V>>,
    /// Child for a `+` level.
    plus: Option<Box<Node<K, V>>>,
    /// Child for a `#` level.
    hash: Option<Box<Node<K, V>>>,
    /// Entries of the filter ending at this node, if any.
    leaf: Option<Box<Leaf<K, V>>>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            plus: None,
            hash: None,
            leaf: None,
        }
    }
}

impl<K, V> Node<K, V> {
    /// The child for filter level `level`, if present.
    fn child(&self, level: &str) -> Option<&Node<K, V>> {
        match level {
            "+" => self.plus.as_deref(),
            "#" => self.hash.as_deref(),
            _ => self.children.get(level),
        }
    }

    /// The child for filter level `level`, if present, mutably.
    fn child_mut(&mut self, level: &str) -> Option<&mut Node<K, V>> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            _ => self.children.get_mut(level),
        }
    }

    /// The child for filter level `level`, created if missing.
    fn child_or_insert(&mut self, level: &str) -> &mut Node<K, V> {
        match level {
            "+" => self.plus.get_or_insert_with(Box::default),
            "#" => self.hash.get_or_insert_with(Box::default),
            _ => self.children.entry(level.into()).or_default(),
        }
    }

    /// Removes the child for filter level `level` (and its whole subtree).
    fn remove_child(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            "#" => self.hash = None,
            _ => {
                self.children.remove(level);
                shrink_if_sparse(&mut self.children);
            }
        }
    }

    /// Number of direct children.
    fn child_count(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some()) + usize::from(self.hash.is_some())
    }

    /// Calls `f` for every entry stored at this node.
    fn emit(&self, f: &mut impl FnMut(&str, &K, &V)) {
        if let Some(leaf) = &self.leaf {
            for (k, v) in &leaf.entries {
                f(&leaf.filter, k, v);
            }
        }
    }
}

impl<K, V> Drop for Node<K, V> {
    /// Drops the subtree iteratively so that a very deep filter cannot overflow the stack.
    fn drop(&mut self) {
        if self.child_count() == 0 {
            return;
        }
        let mut stack: Vec<Node<K, V>> = Vec::new();
        detach_children(self, &mut stack);
        while let Some(mut node) = stack.pop() {
            detach_children(&mut node, &mut stack);
            // `node` now has no children, so dropping it here does not recurse.
        }
    }
}

/// Moves all children of `node` onto `stack`.
fn detach_children<K, V>(node: &mut Node<K, V>, stack: &mut Vec<Node<K, V>>) {
    stack.extend(node.children.drain().map(|(_, child)| child));
    if let Some(plus) = node.plus.take() {
        stack.push(*plus);
    }
    if let Some(hash) = node.hash.take() {
        stack.push(*hash);
    }
}

/// Releases the memory of a map that has become mostly empty, so churn does not leave large
/// allocations behind. Shrinking only below a quarter of capacity keeps regrowth amortised.
fn shrink_if_sparse<A: Eq + Hash, B>(map: &mut HashMap<A, B>) {
    if map.capacity() > 16 && map.len() * 4 < map.capacity() {
        map.shrink_to_fit();
    }
}

/// Splits off the first level of a topic: `("a", Some("b/c"))` for `"a/b/c"`, `("c", None)` for `"c"`.
fn split_first(s: &str) -> (&str, Option<&str>) {
    match s.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (s, None),
    }
}

/// A subscription index mapping `(filter, key)` pairs to values, searchable by topic.
///
/// Filters are expected to be valid per [`crate::topic::validate_filter`] (shared-subscription
/// prefixes stripped). Invalid filters are stored without panicking, but which topics they match
/// is unspecified.
pub struct SubTrie<K, V> {
    /// The root node; its children are the first filter levels.
    root: Node<K, V>,
    /// Number of `(filter, key)` entries.
    len: usize,
    /// Number of distinct filters with at least one entry.
    filters: usize,
}

impl<K: Eq + Hash + Clone, V> Default for SubTrie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> fmt::Debug for SubTrie<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubTrie")
            .field("len", &self.len)
            .field("filters", &self.filters)
            .finish()
    }
}

impl<K: Eq + Hash + Clone, V> SubTrie<K, V> {
    /// Creates an empty index.
    pub fn new() -> Self {
        SubTrie {
            root: Node::default(),
            len: 0,
            filters: 0,
        }
    }

    /// The node at the end of `filter`'s path, if it exists.
    fn find(&self, filter: &str) -> Option<&Node<K, V>> {
        let mut node = &self.root;
        for level in crate::topic::levels(filter) {
            node = node.child(level)?;
        }
        Some(node)
    }

    /// The node at the end of `filter`'s path, if it exists, mutably.
    fn find_mut(&mut self, filter: &str) -> Option<&mut Node<K, V>> {
        let mut node = &mut self.root;
        for level in crate::topic::levels(filter) {
            node = node.child_mut(level)?;
        }
        Some(node)
    }

    /// Stores `value` for `(filter, key)`, returning the value previously stored for that pair.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in crate::topic::levels(filter) {
            node = node.child_or_insert(level);
        }
        let leaf = match &mut node.leaf {
            Some(leaf) => leaf,
            slot @ None => {
                self.filters += 1;
                slot.insert(Box::new(Leaf {
                    filter: filter.into(),
                    entries: HashMap::new(),
                }))
            }
        };
        let previous = leaf.entries.insert(key, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes the entry for `(filter, key)` and returns its value.
    ///
    /// When this was the filter's last entry, the nodes of the filter's path that no longer lead to
    /// any entry are freed.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let node = self.find_mut(filter)?;
        let leaf = node.leaf.as_mut()?;
        let value = leaf.entries.remove(key)?;
        let emptied = leaf.entries.is_empty();
        if emptied {
            node.leaf = None;
        } else {
            shrink_if_sparse(&mut leaf.entries);
        }
        self.len -= 1;
        if emptied {
            self.filters -= 1;
            self.prune(filter);
        }
        Some(value)
    }

    /// Frees the trailing nodes of `filter`'s path that have neither entries nor other children.
    fn prune(&mut self, filter: &str) {
        // Find the smallest level index `cut` such that every node on the path from that level on
        // has no entries and no child other than the next node on the path (the last one: none).
        let mut node = &self.root;
        let mut cut: Option<usize> = None;
        for (depth, level) in crate::topic::levels(filter).enumerate() {
            node = match node.child(level) {
                Some(child) => child,
                None => return,
            };
            if node.leaf.is_none() && node.child_count() <= 1 {
                cut.get_or_insert(depth);
            } else {
                cut = None;
            }
        }
        if node.leaf.is_some() || node.child_count() != 0 {
            return;
        }
        let Some(cut) = cut else { return };
        // Detach the child at level index `cut` from its parent.
        let mut parent = &mut self.root;
        let mut path = crate::topic::levels(filter);
        for level in path.by_ref().take(cut) {
            parent = match parent.child_mut(level) {
                Some(child) => child,
                None => return,
            };
        }
        if let Some(level) = path.next() {
            parent.remove_child(level);
        }
    }

    /// Calls `f(key, value)` for every entry stored at exactly `filter`.
    pub fn for_each_at(&self, filter: &str, mut f: impl FnMut(&K, &V)) {
        if let Some(leaf) = self.find(filter).and_then(|n| n.leaf.as_ref()) {
            for (k, v) in &leaf.entries {
                f(k, v);
            }
        }
    }

    /// Calls `f(filter, key, value)` for every entry.
    pub fn for_each_entry(&self, mut f: impl FnMut(&str, &K, &V)) {
        let mut stack: Vec<&Node<K, V>> = vec![&self.root];
        while let Some(node) = stack.pop() {
            node.emit(&mut f);
            stack.extend(node.children.values());
            stack.extend(node.plus.as_deref());
            stack.extend(node.hash.as_deref());
        }
    }

    /// Calls `f(filter)` for every filter with at least one entry.
    pub fn for_each_match_all(&self, mut f: impl FnMut(&str)) {
        let mut stack: Vec<&Node<K, V>> = vec![&self.root];
        while let Some(node) = stack.pop() {
            if let Some(leaf) = &node.leaf {
                f(&leaf.filter);
            }
            stack.extend(node.children.values());
            stack.extend(node.plus.as_deref());
            stack.extend(node.hash.as_deref());
        }
    }

    /// Removes every entry whose key `pred` selects; returns their filters.
    pub fn remove_where(&mut self, mut pred: impl FnMut(&K) -> bool) -> Vec<String> {
        let mut doomed: Vec<(String, K)> = Vec::new();
        let mut stack: Vec<&Node<K, V>> = vec![&self.root];
        while let Some(node) = stack.pop() {
            if let Some(leaf) = &node.leaf {
                for k in leaf.entries.keys() {
                    if pred(k) {
                        doomed.push((leaf.filter.to_string(), k.clone()));
                    }
                }
            }
            stack.extend(node.children.values());
            stack.extend(node.plus.as_deref());
            stack.extend(node.hash.as_deref());
        }
        let mut filters = Vec::with_capacity(doomed.len());
        for (filter, k) in doomed {
            self.remove(&filter, &k);
            filters.push(filter);
        }
        filters
    }

    /// The value stored for `(filter, key)`, if any.
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        self.find(filter)?.leaf.as_ref()?.entries.get(key)
    }

    /// The value stored for `(filter, key)`, if any, mutably.
    pub fn get_mut(&mut self, filter: &str, key: &K) -> Option<&mut V> {
        self.find_mut(filter)?.leaf.as_mut()?.entries.get_mut(key)
    }

    /// Calls `f(filter, key, value)` for every entry whose filter matches the topic name `topic`.
    ///
    /// Matching is as in [`crate::topic::matches`]: `+` matches one (possibly empty) level, `#`
    /// matches the remaining levels including none, and topics starting with `$` are not matched
    /// by filters whose first level is `+` or `#`. Each entry is reported at most once; the order
    /// is unspecified. Allocation only happens when `+` branches must be explored.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&str, &K, &V)) {
        // Pending `+` branches: (node, rest of the topic after that node's level).
        let mut pending: Vec<(&Node<K, V>, Option<&str>)> = Vec::new();
        let (first, rest) = split_first(topic);
        if !topic.starts_with('$') {
            if let Some(hash) = &self.root.hash {
                hash.emit(&mut f);
            }
            if let Some(plus) = &self.root.plus {
                pending.push((plus, rest));
            }
        }
        let mut current = self.root.children.get(first).map(|child| (child, rest));
        while let Some((node, rest)) = current.take().or_else(|| pending.pop()) {
            // `#` below this node matches this node's level and everything after it.
            if let Some(hash) = &node.hash {
                hash.emit(&mut f);
            }
            match rest {
                None => node.emit(&mut f),
                Some(rest) => {
                    let (level, next) = split_first(rest);
                    if let Some(plus) = &node.plus {
                        pending.push((plus, next));
                    }
                    current = node.children.get(level).map(|child| (child, next));
                }
            }
        }
    }

    /// Number of `(filter, key)` entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of distinct filters that have at least one entry.
    pub fn filters_count(&self) -> usize {
        self.filters
    }

    /// Number of trie nodes, including the root.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            count += 1;
            stack.extend(node.children.values());
            stack.extend(node.plus.as_deref());
            stack.extend(node.hash.as_deref());
        }
        count
    }
}

#[cfg(test)]
mod tests;
