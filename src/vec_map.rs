//! `VecMap`: a map of a few entries kept as a list sorted by key, with the part of
//! `BTreeMap`'s API we use, in the same (key) order.
//!
//! Why: each `BTreeMap<K, V>` type compiles its own tree code into the binary (3-10 KB for
//! insert, search, remove, rebalancing, iterators, drop), while this is a binary search over a
//! `Vec`, a few hundred bytes per type. For the maps of a service (its agents, its channels,
//! the demo agent's sessions) the list is short, so a search and a shift cost nothing.

use std::borrow::Borrow;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VecMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap { entries: Vec::new() }
    }
}

impl<K: Ord, V> VecMap<K, V> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    pub(crate) fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|at| &self.entries[at].1)
    }

    pub(crate) fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|at| &mut self.entries[at].1)
    }

    pub(crate) fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    /// Like `BTreeMap::insert`: the old value back when the key was there (the key is kept).
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(at) => Some(std::mem::replace(&mut self.entries[at].1, value)),
            Err(at) => {
                self.entries.insert(at, (key, value));
                None
            }
        }
    }

    /// Like `BTreeMap::entry(key).or_default()`.
    pub(crate) fn get_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        let at = match self.find(&key) {
            Ok(at) => at,
            Err(at) => {
                self.entries.insert(at, (key, V::default()));
                at
            }
        };
        &mut self.entries[at].1
    }

    pub(crate) fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|at| self.entries.remove(at).1)
    }
}

impl<K, V> VecMap<K, V> {
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _)| k)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    pub(crate) fn into_values(self) -> impl Iterator<Item = V> {
        self.entries.into_iter().map(|(_, v)| v)
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
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
        assert_eq!(list.iter().collect::<Vec<_>>(), tree.iter().collect::<Vec<_>>());
        assert_eq!((&list).into_iter().collect::<Vec<_>>(), tree.iter().collect::<Vec<_>>());
        assert_eq!(list.keys().collect::<Vec<_>>(), tree.keys().collect::<Vec<_>>());
        assert_eq!(list.get("a"), tree.get("a"));
        assert_eq!((list.contains_key("b"), list.contains_key("c")), (true, false));
        assert_eq!(list.clone().into_values().collect::<Vec<_>>(), tree.values().copied().collect::<Vec<_>>());
        list.clear();
        assert!(list.values().next().is_none());
    }
}
