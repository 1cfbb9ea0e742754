//! The set of subscription names one channel is in, sized for the common case.
//!
//! Most channels are in one to a few subscriptions (a chat room, a handful of pubsub
//! channels), and every open connection keeps its set for its whole life: a `BTreeSet` puts
//! even one name in a 192-byte node (BENCHMARKS.md, idle memory). Up to [`FEW`] names live in a
//! sorted `Vec` (one 16-byte slot each); past that the set becomes a `BTreeSet`, so a channel
//! in thousands of subscriptions (the pubsub app allows up to 100,000) keeps logarithmic
//! inserts and removals.

use std::collections::BTreeSet;
use std::sync::Arc;

/// Names kept in the sorted vector before the set turns into a tree.
const FEW: usize = 16;

/// A set of subscription names, iterated in sorted order.
#[derive(Debug)]
pub(crate) enum NameSet {
    /// Up to [`FEW`] names, sorted and distinct, in a vector exactly as large as they need.
    Few(Vec<Arc<str>>),
    /// More than [`FEW`] names.
    Many(BTreeSet<Arc<str>>),
}

impl Default for NameSet {
    fn default() -> Self {
        NameSet::Few(Vec::new())
    }
}

impl NameSet {
    /// Adds `name`; `false` when it was already in the set.
    pub(crate) fn insert(&mut self, name: Arc<str>) -> bool {
        match self {
            NameSet::Few(names) => match names.binary_search(&name) {
                Ok(_) => false,
                Err(at) if names.len() < FEW => {
                    // One slot at a time (at most FEW reallocations): `Vec` would round one
                    // name up to four slots.
                    names.reserve_exact(1);
                    names.insert(at, name);
                    true
                }
                Err(_) => {
                    let mut tree: BTreeSet<Arc<str>> = names.drain(..).collect();
                    tree.insert(name);
                    *self = NameSet::Many(tree);
                    true
                }
            },
            NameSet::Many(tree) => tree.insert(name),
        }
    }

    /// Removes `name`; `false` when it was not in the set.
    pub(crate) fn remove(&mut self, name: &str) -> bool {
        match self {
            NameSet::Few(names) => match names.binary_search_by(|n| (**n).cmp(name)) {
                Ok(at) => {
                    names.remove(at);
                    if names.is_empty() {
                        *names = Vec::new();
                    }
                    true
                }
                Err(_) => false,
            },
            // A set that grew large stays a tree: a channel that was in many subscriptions
            // is likely to be again.
            NameSet::Many(tree) => tree.remove(name),
        }
    }

    /// Whether the set has no names.
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            NameSet::Few(names) => names.is_empty(),
            NameSet::Many(tree) => tree.is_empty(),
        }
    }

    /// The names, sorted.
    pub(crate) fn iter(&self) -> Box<dyn Iterator<Item = &Arc<str>> + '_> {
        match self {
            NameSet::Few(names) => Box::new(names.iter()),
            NameSet::Many(tree) => Box::new(tree.iter()),
        }
    }

    /// The names, sorted, taken out of the set.
    pub(crate) fn into_vec(self) -> Vec<Arc<str>> {
        match self {
            NameSet::Few(names) => names,
            NameSet::Many(tree) => tree.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The set against a `BTreeSet` model over random inserts and removals that cross the
    /// vector/tree boundary both ways.
    #[test]
    fn behaves_as_a_sorted_set_across_the_boundary() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..200 {
            let mut set = NameSet::default();
            let mut model = BTreeSet::<Arc<str>>::new();
            let universe = [4, 20, 60][round % 3];
            for _ in 0..400 {
                let name: Arc<str> = format!("ch{}", next() % universe).into();
                if next() % 3 == 0 {
                    assert_eq!(set.remove(&name), model.remove(&name));
                } else {
                    assert_eq!(set.insert(name.clone()), model.insert(name));
                }
                assert_eq!(set.is_empty(), model.is_empty());
                assert!(set.iter().eq(model.iter()), "sorted and equal to the model");
            }
            assert_eq!(set.into_vec(), model.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn one_name_takes_one_slot() {
        let mut set = NameSet::default();
        assert!(set.insert("room".into()));
        assert!(!set.insert("room".into()));
        assert!(matches!(&set, NameSet::Few(names) if names.capacity() == 1));
        assert!(set.remove("room"));
        assert!(matches!(&set, NameSet::Few(names) if names.capacity() == 0));
        assert!(!set.remove("room"));
    }
}
