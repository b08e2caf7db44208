//! Bounded in-process caches of facts that never change once known (a document's parse, a
//! token's verification, what an API key is). When full, a cache starts over: its memory stays
//! bounded whatever clients send. Nothing that can change — membership, limits, balances,
//! revocation — is ever kept here.

use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::Hash,
    sync::{Mutex, PoisonError},
};

/// At most `MAX` entries, shared by every thread.
pub struct Bounded<K, V, const MAX: usize>(Mutex<HashMap<K, V>>);

impl<K, V, const MAX: usize> Default for Bounded<K, V, MAX> {
    fn default() -> Self {
        Bounded(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + Hash, V: Clone, const MAX: usize> Bounded<K, V, MAX> {
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key).cloned()
    }

    pub fn insert(&self, key: K, value: V) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX {
            map.clear();
        }
        map.insert(key, value);
    }
}
