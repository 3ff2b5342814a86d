//! Unit tests of the subscription trie.

use super::*;
use crate::topic::{matches, validate_filter};
use std::collections::{BTreeSet, HashSet};

use crate::test_rng::Rng;

const FILTER_LEVELS: [&str; 6] = ["a", "b", "c", "", "+", "$s"];
const TOPIC_LEVELS: [&str; 5] = ["a", "b", "c", "", "$s"];

fn random_filter(rng: &mut Rng) -> String {
    let n = 1 + rng.below(4);
    let mut parts: Vec<&str> = (0..n)
        .map(|_| FILTER_LEVELS[rng.below(FILTER_LEVELS.len())])
        .collect();
    if rng.below(4) == 0 {
        if rng.below(2) == 0 {
            parts.pop();
        }
        parts.push("#");
    }
    let filter = parts.join("/");
    if filter.is_empty() {
        // A single empty level is not a valid filter.
        return "/".to_owned();
    }
    filter
}

fn random_topic(rng: &mut Rng) -> String {
    let n = 1 + rng.below(5);
    (0..n)
        .map(|_| TOPIC_LEVELS[rng.below(TOPIC_LEVELS.len())])
        .collect::<Vec<_>>()
        .join("/")
}

fn collect(trie: &SubTrie<u32, u64>, topic: &str) -> Vec<(String, u32, u64)> {
    let mut out = Vec::new();
    trie.for_each_match(topic, |f, k, v| out.push((f.to_owned(), *k, *v)));
    out.sort();
    out
}

#[test]
fn basic_operations() {
    let mut t: SubTrie<&str, u32> = SubTrie::new();
    assert!(t.is_empty());
    assert_eq!(t.insert("sport/tennis/#", "c1", 1), None);
    assert_eq!(t.insert("sport/tennis/#", "c2", 2), None);
    assert_eq!(t.insert("sport/tennis/#", "c1", 3), Some(1));
    assert_eq!(t.insert("sport/+", "c1", 4), None);
    assert_eq!(t.len(), 3);
    assert_eq!(t.filters_count(), 2);
    assert_eq!(t.get("sport/tennis/#", &"c1"), Some(&3));
    assert_eq!(t.get("sport/tennis", &"c1"), None);
    assert_eq!(t.get("sport/+", &"c2"), None);
    if let Some(v) = t.get_mut("sport/+", &"c1") {
        *v = 40;
    }
    assert_eq!(t.get("sport/+", &"c1"), Some(&40));
    assert_eq!(t.remove("sport/+", &"c2"), None);
    assert_eq!(t.remove("sport", &"c1"), None);
    assert_eq!(t.remove("sport/+", &"c1"), Some(40));
    assert_eq!(t.remove("sport/+", &"c1"), None);
    assert_eq!(t.len(), 2);
    assert_eq!(t.filters_count(), 1);
    assert!(!t.is_empty());
    assert_eq!(format!("{t:?}"), "SubTrie { len: 2, filters: 1 }");
}

#[test]
fn spec_matching() {
    let mut t: SubTrie<u32, u64> = SubTrie::new();
    for (i, f) in [
        "#",
        "+",
        "+/+",
        "/+",
        "$SYS/#",
        "+/monitor/Clients",
        "sport/#",
        "sport/tennis/+",
        "a/+/c",
    ]
    .iter()
    .enumerate()
    {
        t.insert(f, i as u32, 0);
    }
    let filters = |topic: &str| -> BTreeSet<String> {
        let mut s = BTreeSet::new();
        t.for_each_match(topic, |f, _, _| {
            s.insert(f.to_owned());
        });
        s
    };
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(filters("$SYS/x"), set(&["$SYS/#"]));
    assert_eq!(filters("$SYS"), set(&["$SYS/#"]));
    assert_eq!(filters("$SYS/monitor/Clients"), set(&["$SYS/#"]));
    assert_eq!(filters("x/monitor/Clients"), set(&["#", "+/monitor/Clients"]));
    assert_eq!(filters("sport"), set(&["#", "+", "sport/#"]));
    assert_eq!(
        filters("sport/tennis/p1"),
        set(&["#", "sport/#", "sport/tennis/+"])
    );
    assert_eq!(filters("/finance"), set(&["#", "+/+", "/+"]));
    assert_eq!(filters("a//c"), set(&["#", "a/+/c"]));
}

#[test]
fn randomized_against_naive_scan() {
    for seed in [0x9e37_79b9_7f4a_7c15u64, 1, 0xdead_beef] {
        let mut rng = Rng(seed);
        let mut trie: SubTrie<u32, u64> = SubTrie::new();
        let mut model: HashMap<(String, u32), u64> = HashMap::new();
        for round in 0..40 {
            for _ in 0..50 {
                let filter = random_filter(&mut rng);
                assert_eq!(validate_filter(&filter, 0), Ok(()), "{filter:?}");
                let key = rng.below(4) as u32;
                if rng.below(3) == 0 {
                    assert_eq!(trie.remove(&filter, &key), model.remove(&(filter.clone(), key)));
                } else {
                    let value = rng.next();
                    assert_eq!(
                        trie.insert(&filter, key, value),
                        model.insert((filter, key), value)
                    );
                }
            }
            assert_eq!(trie.len(), model.len());
            // Pruning is exact: the trie is as small as one built from scratch.
            let mut fresh: SubTrie<u32, u64> = SubTrie::new();
            for ((f, k), v) in &model {
                fresh.insert(f, *k, *v);
            }
            assert_eq!(trie.node_count(), fresh.node_count());
            let distinct: HashSet<&String> = model.keys().map(|(f, _)| f).collect();
            assert_eq!(trie.filters_count(), distinct.len());
            for ((f, k), v) in &model {
                assert_eq!(trie.get(f, k), Some(v));
            }
            for _ in 0..100 {
                let topic = random_topic(&mut rng);
                let mut want: Vec<(String, u32, u64)> = model
                    .iter()
                    .filter(|((f, _), _)| matches(f, &topic))
                    .map(|((f, k), v)| (f.clone(), *k, *v))
                    .collect();
                want.sort();
                assert_eq!(
                    collect(&trie, &topic),
                    want,
                    "seed {seed} round {round} topic {topic:?}"
                );
            }
        }
        // Drain everything and check pruning.
        let entries: Vec<(String, u32)> = model.keys().cloned().collect();
        for (f, k) in entries {
            assert!(trie.remove(&f, &k).is_some());
        }
        assert!(trie.is_empty());
        assert_eq!(trie.filters_count(), 0);
        assert_eq!(trie.node_count(), 1);
    }
}

#[test]
fn removal_prunes() {
    let mut t: SubTrie<u8, ()> = SubTrie::new();
    let filters = [
        "a/b/c/d",
        "a/b",
        "a/+/#",
        "#",
        "+",
        "a/b/c/d/e",
        "/",
        "//",
        "$s/+/c",
        "a/b/c/#",
    ];
    for f in filters {
        t.insert(f, 1, ());
        t.insert(f, 2, ());
    }
    let full = t.node_count();
    assert!(full > 1);
    // Removing one of two keys keeps the nodes.
    t.remove("a/b/c/d/e", &1);
    assert_eq!(t.node_count(), full);
    t.remove("a/b/c/d/e", &2);
    assert_eq!(t.node_count(), full - 1);
    // Removing an inner filter whose node still has children keeps the path.
    t.remove("a/b", &1);
    t.remove("a/b", &2);
    assert_eq!(t.node_count(), full - 1);
    for f in filters {
        t.remove(f, &1);
        t.remove(f, &2);
    }
    assert!(t.is_empty());
    assert_eq!(t.filters_count(), 0);
    assert_eq!(t.node_count(), 1);

    // Churn does not grow the trie.
    for i in 0..1000u32 {
        let f = format!("x/{i}/y/#");
        t.insert(&f, 0, ());
        t.remove(&f, &0);
    }
    assert_eq!(t.node_count(), 1);
    assert!(t.root.children.capacity() <= 16);
}

#[test]
fn deep_filters_and_topics_do_not_overflow() {
    let deep = "/".repeat(crate::topic::MAX_TOPIC_LEN);
    let mut t: SubTrie<u8, u8> = SubTrie::new();
    t.insert(&deep, 0, 1);
    t.insert(&format!("{deep}#"), 0, 2);
    t.insert("+/#", 0, 3);
    let mut seen = Vec::new();
    t.for_each_match(&deep, |_, _, v| seen.push(*v));
    seen.sort();
    assert_eq!(seen, [1, 2, 3]);
    let wide_plus = vec!["+"; 20_000].join("/");
    t.insert(&wide_plus, 0, 4);
    assert_eq!(t.node_count(), 1 + (crate::topic::MAX_TOPIC_LEN + 2) + 2 + 19_999);
    assert_eq!(t.remove(&deep, &0), Some(1));
    assert_eq!(t.get(&format!("{deep}#"), &0), Some(&2));
    assert_eq!(t.remove(&format!("{deep}#"), &0), Some(2));
    assert_eq!(t.node_count(), 1 + 20_000 + 1);
    drop(t); // iterative Drop of a 20k-deep chain
    let mut t2: SubTrie<u8, u8> = SubTrie::new();
    t2.insert(&deep, 0, 1);
    drop(t2);
}
