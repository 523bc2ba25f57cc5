//! `VecMap`: a map of a few entries kept as a list sorted by key, with the part of
//! `BTreeMap`'s API we use, in the same (key) order.
//!
//! Why: each `BTreeMap<K, V>` type compiles its own tree code into the binary (3-10 KB for
//! insert, search, remove, rebalancing, iterators, drop), while this is a binary search over a
//! `Vec`, a few hundred bytes per type. For the maps of a service (its agents, its channels,
//! the demo agent's sessions) the list is short, so a search and a shift cost nothing. The
//! maps of chats (the outbox's queues, the pacer's buckets, DingTalk's routes, group
//! history) are bounded by the chats active lately or by a cap of a few hundred, and a
//! new chat costs one shift of that list.
//!
//! Not for a map that can grow to thousands and loses entries at its front, such as the
//! journal's pending messages or the core's unsettled ones during a backlog: each removal
//! would shift the rest. Those stay `BTreeMap`s.

use std::borrow::Borrow;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VecMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap { entries: Vec::new() }
    }
}

impl<K: Ord, V> VecMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|at| &self.entries[at].1)
    }

    pub fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|at| &mut self.entries[at].1)
    }

    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    /// Like `BTreeMap::insert`: the old value back when the key was there (the key is kept).
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(at) => Some(std::mem::replace(&mut self.entries[at].1, value)),
            Err(at) => {
                self.entries.insert(at, (key, value));
                None
            }
        }
    }

    /// Like `BTreeMap::entry(key).or_default()`.
    pub fn get_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        self.get_or_insert_with(key, |_| V::default())
    }

    /// Like `BTreeMap::entry(key).or_insert_with_key(make)`.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce(&K) -> V) -> &mut V {
        let at = match self.find(&key) {
            Ok(at) => at,
            Err(at) => {
                let value = make(&key);
                self.entries.insert(at, (key, value));
                at
            }
        };
        &mut self.entries[at].1
    }

    /// [`VecMap::get_or_insert_with`] for a borrowed key, copied only when it is added.
    pub fn get_or_insert_cloned(&mut self, key: &K, make: impl FnOnce(&K) -> V) -> &mut V
    where
        K: Clone,
    {
        let at = match self.find(key) {
            Ok(at) => at,
            Err(at) => {
                self.entries.insert(at, (key.clone(), make(key)));
                at
            }
        };
        &mut self.entries[at].1
    }

    /// The entries whose keys come after `key`, in order (`BTreeMap::range` from `key`
    /// excluded).
    pub fn iter_after<Q: Ord + ?Sized>(&self, key: &Q) -> impl Iterator<Item = (&K, &V)>
    where
        K: Borrow<Q>,
    {
        let start = match self.find(key) {
            Ok(at) => at + 1,
            Err(at) => at,
        };
        self.entries[start..].iter().map(|(k, v)| (k, v))
    }

    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|at| self.entries.remove(at).1)
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for VecMap<K, V> {
    /// Like `BTreeMap`'s: ordered by key, and of two equal keys the later value wins.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(items: I) -> Self {
        let mut map = VecMap::new();
        for (key, value) in items {
            map.insert(key, value);
        }
        map
    }
}

impl<K: Ord, V, const N: usize> From<[(K, V); N]> for VecMap<K, V> {
    fn from(items: [(K, V); N]) -> Self {
        items.into_iter().collect()
    }
}

impl<K: Ord, V> Extend<(K, V)> for VecMap<K, V> {
    /// Like `BTreeMap`'s: an entry with a key already there replaces its value.
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, items: I) {
        for (key, value) in items {
            self.insert(key, value);
        }
    }
}

/// For tests, as `map[key]`; the daemon's code looks keys up with `get`.
#[cfg(test)]
impl<K: Borrow<Q> + Ord, V, Q: Ord + ?Sized> std::ops::Index<&Q> for VecMap<K, V> {
    type Output = V;

    /// Like `BTreeMap`'s: panics when the key is not there.
    fn index(&self, key: &Q) -> &V {
        match self.get(key) {
            Some(value) => value,
            None => panic!("no such key in the map"),
        }
    }
}

impl<K, V> VecMap<K, V> {
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    pub fn into_values(self) -> impl Iterator<Item = V> {
        self.entries.into_iter().map(|(_, v)| v)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.iter_mut().map(|(_, v)| v)
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Like `BTreeMap::retain`: keeps the entries for which `keep` says so, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
    }
}

/// Written as a JSON object, as a `BTreeMap` is.
impl<K: Serialize, V: Serialize> Serialize for VecMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

/// Read from a JSON object; of two equal keys the later value wins, as in a `BTreeMap`.
impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Deserialize<'de> for VecMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Visitor<'de> for Entries<K, V> {
            type Value = VecMap<K, V>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Self::Value, A::Error> {
                let mut map = VecMap::new();
                while let Some((key, value)) = entries.next_entry()? {
                    map.insert(key, value);
                }
                Ok(map)
            }
        }
        deserializer.deserialize_map(Entries(PhantomData))
    }
}

impl<K, V> IntoIterator for VecMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a, K, V> IntoIterator for &'a VecMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::ops::Bound;

    #[test]
    fn behaves_like_a_btree_map() {
        let mut list = VecMap::new();
        let mut tree = BTreeMap::new();
        for (key, value) in [("b", 1), ("a", 2), ("c", 3), ("b", 4), ("d", 5), ("a", 6)] {
            assert_eq!(list.insert(key.to_string(), value), tree.insert(key.to_string(), value));
        }
        assert_eq!(list.remove("c"), tree.remove("c"));
        assert_eq!(list.remove("zz"), tree.remove("zz"));
        *list.get_mut("d").unwrap() += 10;
        *tree.get_mut("d").unwrap() += 10;
        *list.get_or_default("e".to_string()) += 7;
        *tree.entry("e".to_string()).or_default() += 7;
        *list.get_or_default("b".to_string()) += 1;
        *tree.entry("b".to_string()).or_default() += 1;
        for key in ["b", "f"] {
            *list.get_or_insert_cloned(&key.to_string(), |_| 100) += 1;
            *tree.entry(key.to_string()).or_insert(100) += 1;
        }
        assert_eq!(list.iter().collect::<Vec<_>>(), tree.iter().collect::<Vec<_>>());
        assert_eq!((&list).into_iter().collect::<Vec<_>>(), tree.iter().collect::<Vec<_>>());
        assert_eq!(list.keys().collect::<Vec<_>>(), tree.keys().collect::<Vec<_>>());
        assert_eq!(list.get("a"), tree.get("a"));
        assert_eq!((list.contains_key("b"), list.contains_key("c")), (true, false));
        assert_eq!(list.clone().into_values().collect::<Vec<_>>(), tree.values().copied().collect::<Vec<_>>());
        list.clear();
        assert!(list.values().next().is_none());
    }

    #[test]
    fn the_rest_of_the_api_behaves_like_a_btree_map_too() {
        let items = [("b", 1), ("d", 2), ("a", 3), ("b", 4), ("c", 5)];
        let list: VecMap<_, _> = items.into_iter().collect();
        let tree: BTreeMap<_, _> = items.into_iter().collect();
        assert_eq!(list.iter().collect::<Vec<_>>(), tree.iter().collect::<Vec<_>>(), "the later of equal keys wins");
        assert_eq!((list.len(), list.is_empty(), list["d"]), (4, false, 2));
        // iter_after is range((Excluded(key), Unbounded)), for keys there and not there.
        for key in ["", "a", "b", "bb", "d", "z"] {
            let after: Vec<_> = tree.range::<str, _>((Bound::Excluded(key), Bound::Unbounded)).collect();
            assert_eq!(list.iter_after(key).collect::<Vec<_>>(), after, "after {key:?}");
        }
        let (mut list, mut tree) = (list, tree);
        list.retain(|k, v| {
            *v += 10;
            *k != "c"
        });
        tree.retain(|k, v| {
            *v += 10;
            *k != "c"
        });
        list.extend([("e", 6), ("a", 7)]);
        tree.extend([("e", 6), ("a", 7)]);
        *list.get_or_insert_with("f", |k| k.len() as i32 * 100) += 1;
        *tree.entry("f").or_insert_with_key(|k| k.len() as i32 * 100) += 1;
        *list.get_or_insert_with("f", |_| unreachable!("the key is there")) += 1;
        *tree.entry("f").or_insert(0) += 1;
        list.values_mut().for_each(|v| *v *= 2);
        tree.values_mut().for_each(|v| *v *= 2);
        assert_eq!(list.clone().into_iter().collect::<Vec<_>>(), tree.clone().into_iter().collect::<Vec<_>>());
        assert_eq!(VecMap::from([("x", 1), ("w", 2)]).keys().collect::<Vec<_>>(), [&"w", &"x"]);
    }

    #[test]
    fn reads_and_writes_json_as_a_btree_map_does() {
        let text = r#"{"b":1,"a":2,"b":3}"#;
        let list: VecMap<String, i32> = serde_json::from_str(text).unwrap();
        let tree: BTreeMap<String, i32> = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&list).unwrap(), serde_json::to_string(&tree).unwrap());
        assert_eq!(serde_json::to_string(&list).unwrap(), r#"{"a":2,"b":3}"#);
        assert!(serde_json::from_str::<VecMap<String, i32>>("[1]").is_err());
    }
}
