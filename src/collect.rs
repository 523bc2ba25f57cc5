//! Collecting into a `BTreeMap` by inserting, one item at a time.
//!
//! `collect()` and `From<[_; N]>` first sort the items (a stable sort) and then build the tree
//! in bulk: about 8 KB of machine code for each key and value type, while `insert` is compiled
//! in anyway. The result is the same: the map is ordered by key, and of two equal keys the later
//! value wins. Our maps are small (channels, agents, sessions), so inserting costs nothing.

use std::collections::BTreeMap;

/// `.collect_map()` where `.collect::<BTreeMap<_, _>>()` would do.
pub(crate) trait CollectMap<K: Ord, V>: Iterator<Item = (K, V)> + Sized {
    fn collect_map(self) -> BTreeMap<K, V> {
        let mut map = BTreeMap::new();
        for (key, value) in self {
            map.insert(key, value);
        }
        map
    }
}

impl<K: Ord, V, I: Iterator<Item = (K, V)>> CollectMap<K, V> for I {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_as_collect_later_duplicates_win() {
        let items = [("b", 1), ("a", 2), ("b", 3), ("c", 4), ("a", 5)];
        let collected: BTreeMap<_, _> = items.into_iter().collect();
        assert_eq!(items.into_iter().collect_map(), collected);
        assert_eq!(collected, BTreeMap::from([("a", 5), ("b", 3), ("c", 4)]));
    }
}
