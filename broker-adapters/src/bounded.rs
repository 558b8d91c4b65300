//! Bounded memories: a set and a map that hold at most a stated number of entries and forget
//! the oldest first.
//!
//! Adapters remember things about tasks they cannot ask Redis again cheaply (ids already
//! reported, attempt numbering, bodies that failed to decode, which result key belongs to
//! which message). A long-lived sidecar watching millions of tasks must not grow with them, so
//! every such memory is one of these two types, with its capacity written where it is built.
//!
//! Eviction is by *insertion* order (first in, first out): inserting a key that is already
//! present updates its value but does not make it younger, and reading never does either. An
//! entry is forgotten only when a new key arrives while the memory is full. All operations are
//! O(1) (a hash map threaded by a linked list: `hashlink`).

use hashlink::linked_hash_map::Entry;
use hashlink::{LinkedHashMap, LinkedHashSet};
use std::borrow::Borrow;
use std::collections::hash_map::DefaultHasher;
use std::hash::Hash;
use std::hash::Hasher;

/// A task id as 16 bytes, for memories that hold up to hundreds of thousands of ids: a
/// canonical lower-case UUID (Celery's and Dramatiq's ids) as its value, any other id as a
/// 128-bit hash of its text (two SipHash-1-3 halves: two ids share a key with probability
/// ~2^-128 a pair). Keyed by this instead of a `String`, an entry needs no allocation of its
/// own for the id (measured: the Celery adapter's memories 127 -> 83 heap bytes a task).
pub fn key128(id: &str) -> u128 {
    canonical_uuid(id).unwrap_or_else(|| {
        let half = |salt: u8| {
            let mut h = DefaultHasher::new();
            h.write_u8(salt);
            h.write(id.as_bytes());
            h.finish()
        };
        (u128::from(half(1)) << 64) | u128::from(half(2))
    })
}

/// The value of `8-4-4-4-12` lower-case hex digits.
fn canonical_uuid(id: &str) -> Option<u128> {
    let bytes = id.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let mut value = 0u128;
    for (i, &b) in bytes.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b != b'-' {
                return None;
            }
            continue;
        }
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        value = (value << 4) | u128::from(digit);
    }
    Some(value)
}

/// Queues an adapter watches at most. Each costs its reads, samples and per-queue state; a
/// producer that names a queue per tenant (or a hostile one) must not grow them without bound.
pub const MAX_QUEUES: usize = 10_000;

/// How many queues of a broker an adapter watches at most: past it a new queue is refused,
/// not the oldest forgotten (a queue's reads, samples and per-queue state are keyed by its name,
/// and a queue watched for a while is worth more than a new one), and the first refusal is
/// logged. [`QueueNames`] is built on it; an adapter that keeps its queues otherwise asks it.
#[derive(Debug, Clone)]
pub struct QueueLimit {
    broker: &'static str,
    capacity: usize,
    refused: u64,
}

impl QueueLimit {
    pub fn new(broker: &'static str, capacity: usize) -> Self {
        QueueLimit {
            broker,
            capacity,
            refused: 0,
        }
    }

    /// Whether a new queue `name` may be watched beside the `watched` ones; counts (and the
    /// first time logs) a refusal.
    pub fn admit(&mut self, watched: usize, name: &str) -> bool {
        if watched < self.capacity {
            return true;
        }
        self.refused += 1;
        if self.refused == 1 {
            tracing::warn!(
                broker = self.broker,
                queue = %name,
                limit = self.capacity,
                "Too many queues: taskscope watches at most this many per broker; new ones are not followed or sampled."
            );
        }
        false
    }

    /// Whether a new queue beside the `watched` ones would be refused.
    pub fn is_full(&self, watched: usize) -> bool {
        watched >= self.capacity
    }

    /// New queues refused so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

/// The names of the queues an adapter watches, in order, within a [`QueueLimit`].
#[derive(Debug, Clone)]
pub struct QueueNames {
    limit: QueueLimit,
    names: std::collections::BTreeSet<String>,
}

impl QueueNames {
    /// An empty set of `broker`'s queues that holds at most `capacity` names.
    pub fn new(broker: &'static str, capacity: usize) -> Self {
        QueueNames {
            limit: QueueLimit::new(broker, capacity),
            names: std::collections::BTreeSet::new(),
        }
    }

    /// Adds `name`; `true` if it is new and was admitted.
    pub fn insert(&mut self, name: &str) -> bool {
        if self.names.contains(name) || !self.limit.admit(self.names.len(), name) {
            return false;
        }
        self.names.insert(name.to_string())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Whether a new name would be refused.
    pub fn is_full(&self) -> bool {
        self.limit.is_full(self.names.len())
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// New names refused since the set was full.
    pub fn refused(&self) -> u64 {
        self.limit.refused()
    }

    pub fn iter(&self) -> std::collections::btree_set::Iter<'_, String> {
        self.names.iter()
    }
}

impl<'a> IntoIterator for &'a QueueNames {
    type Item = &'a String;
    type IntoIter = std::collections::btree_set::Iter<'a, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.names.iter()
    }
}

/// A set of at most `capacity` values; inserting a new value into a full set forgets the
/// oldest one.
#[derive(Debug, Clone)]
pub struct FifoSet<T: Hash + Eq> {
    capacity: usize,
    items: LinkedHashSet<T>,
}

impl<T: Hash + Eq> FifoSet<T> {
    /// An empty set that holds at most `capacity` values (at least one).
    pub fn new(capacity: usize) -> Self {
        FifoSet {
            capacity: capacity.max(1),
            items: LinkedHashSet::new(),
        }
    }

    /// The most values this set holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds `value`; true when it was not there (an existing value keeps its age). When the
    /// set is full, the oldest value is forgotten first.
    pub fn insert(&mut self, value: T) -> bool {
        if self.items.contains(&value) {
            return false;
        }
        if self.items.len() >= self.capacity {
            self.items.pop_front();
        }
        self.items.insert(value)
    }

    pub fn contains<Q>(&self, value: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.items.contains(value)
    }

    /// Forgets `value`; true when it was there.
    pub fn remove<Q>(&mut self, value: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.items.remove(value)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// Values from the oldest to the newest.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    /// Keeps only the values `keep` accepts (their order unchanged).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.items.retain_with_order(|v| keep(v));
    }
}

/// A map of at most `capacity` entries; inserting a new key into a full map forgets the oldest
/// entry.
#[derive(Debug, Clone)]
pub struct FifoMap<K: Hash + Eq, V> {
    capacity: usize,
    entries: LinkedHashMap<K, V>,
}

impl<K: Hash + Eq, V> FifoMap<K, V> {
    /// An empty map that holds at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        FifoMap {
            capacity: capacity.max(1),
            entries: LinkedHashMap::new(),
        }
    }

    /// The most entries this map holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sets `key` to `value`, returning the value it replaces (the entry keeps its age). When a
    /// new key arrives in a full map, the oldest entry is forgotten first.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(slot) = self.entries.get_mut(&key) {
            return Some(std::mem::replace(slot, value));
        }
        self.make_room();
        self.entries.insert(key, value);
        None
    }

    /// The value of `key`, inserted with `make` when absent (evicting the oldest entry when
    /// full).
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        self.get_or_insert_evicting(key, make).0
    }

    /// [`Self::get_or_insert_with`], also handing back the entry forgotten to make room, for
    /// callers that keep something beside it.
    pub fn get_or_insert_evicting(
        &mut self,
        key: K,
        make: impl FnOnce() -> V,
    ) -> (&mut V, Option<(K, V)>) {
        let evicted = if self.entries.contains_key(&key) {
            None
        } else {
            self.make_room()
        };
        // Not `or_insert_with`: hashlink's moves an occupied entry to the back.
        let value = match self.entries.entry(key) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(make()),
        };
        (value, evicted)
    }

    fn make_room(&mut self) -> Option<(K, V)> {
        if self.entries.len() >= self.capacity {
            self.entries.pop_front()
        } else {
            None
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get_mut(key)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.contains_key(key)
    }

    /// Makes `key`'s entry the youngest, as if inserted now (for a least-recently-used
    /// order); true when it was there.
    pub fn make_newest<Q>(&mut self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.to_back(key).is_some()
    }

    /// Forgets `key`, returning its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.remove(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Entries from the oldest to the newest.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter()
    }

    /// Values from the oldest to the newest, mutable.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.values_mut()
    }

    /// Keeps only the entries `keep` accepts (their order unchanged).
    pub fn retain(&mut self, keep: impl FnMut(&K, &mut V) -> bool) {
        self.entries.retain_with_order(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_refuse_new_names_past_their_capacity_and_keep_the_old() {
        let mut q = QueueNames::new("test", 2);
        assert!(q.insert("a"));
        assert!(!q.insert("a"));
        assert!(q.insert("b"));
        assert!(q.is_full());
        assert!(!q.insert("c"));
        assert!(!q.insert("d"));
        assert_eq!(q.iter().map(String::as_str).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(q.refused(), 2);
        assert!(q.contains("a") && !q.contains("c"));
    }

    #[test]
    fn task_keys_are_uuid_values_or_hashes_and_tell_ids_apart() {
        assert_eq!(
            key128("00000000-0000-4000-8000-00000000002a"),
            0x0000_0000_0000_4000_8000_0000_0000_002a
        );
        // Not canonical (upper case, no hyphens, other text): hashed, and told apart.
        let ids = [
            "00000000-0000-4000-8000-00000000002A",
            "00000000000040008000000000000002a",
            "job:1",
            "job:2",
            "",
        ];
        let mut keys: Vec<u128> = ids.iter().map(|id| key128(id)).collect();
        keys.push(key128("00000000-0000-4000-8000-00000000002a"));
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), ids.len() + 1);
        assert_eq!(key128("job:1"), key128("job:1"));
    }

    #[test]
    fn full_set_forgets_the_oldest_value_first() {
        let mut set = FifoSet::new(3);
        for v in ["a", "b", "c", "d"] {
            assert!(set.insert(v));
        }
        assert_eq!(set.len(), 3);
        assert!(!set.contains("a"));
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), ["b", "c", "d"]);
    }

    #[test]
    fn inserting_a_present_value_keeps_its_age_and_evicts_nothing() {
        let mut set = FifoSet::new(2);
        set.insert(1);
        set.insert(2);
        assert!(!set.insert(1), "already there");
        assert_eq!(set.len(), 2);
        set.insert(3);
        assert!(!set.contains(&1), "1 is still the oldest");
        assert!(set.contains(&2) && set.contains(&3));
    }

    #[test]
    fn removed_values_free_their_room() {
        let mut set = FifoSet::new(2);
        set.insert(1);
        set.insert(2);
        assert!(set.remove(&1));
        assert!(!set.remove(&1));
        set.insert(3);
        assert!(set.contains(&2) && set.contains(&3), "nothing evicted");
    }

    #[test]
    fn zero_capacity_holds_one() {
        let mut set = FifoSet::new(0);
        set.insert(1);
        set.insert(2);
        assert_eq!(set.capacity(), 1);
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn full_map_forgets_the_oldest_entry_first() {
        let mut map = FifoMap::new(2);
        assert_eq!(map.insert("a", 1), None);
        map.insert("b", 2);
        map.insert("c", 3);
        assert_eq!(map.get("a"), None);
        assert_eq!(map.get("b"), Some(&2));
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn updating_a_value_keeps_the_entry_age() {
        let mut map = FifoMap::new(2);
        map.insert("a", 1);
        map.insert("b", 2);
        assert_eq!(map.insert("a", 10), Some(1));
        *map.get_mut("b").expect("b") += 1;
        map.insert("c", 3);
        assert_eq!(map.get("a"), None, "a is still the oldest");
        assert_eq!(
            map.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(),
            [("b", 3), ("c", 3)]
        );
    }

    #[test]
    fn get_or_insert_with_evicts_only_for_a_new_key() {
        let mut map: FifoMap<&str, Vec<u32>> = FifoMap::new(2);
        map.get_or_insert_with("a", Vec::new).push(1);
        map.get_or_insert_with("b", Vec::new).push(2);
        map.get_or_insert_with("a", Vec::new).push(3);
        assert_eq!(map.get("a"), Some(&vec![1, 3]));
        map.get_or_insert_with("c", Vec::new);
        assert!(!map.contains_key("a") && map.contains_key("b") && map.contains_key("c"));
    }

    #[test]
    fn get_or_insert_evicting_names_the_forgotten_entry() {
        let mut map = FifoMap::new(1);
        assert_eq!(map.get_or_insert_evicting("a", || 1).1, None);
        assert_eq!(map.get_or_insert_evicting("a", || 2), (&mut 1, None));
        assert_eq!(map.get_or_insert_evicting("b", || 3).1, Some(("a", 1)));
    }

    #[test]
    fn make_newest_moves_an_entry_to_the_back_of_the_line() {
        let mut map = FifoMap::new(2);
        map.insert("a", 1);
        map.insert("b", 2);
        assert!(map.make_newest("a"));
        assert!(!map.make_newest("z"));
        map.insert("c", 3);
        assert!(map.contains_key("a") && !map.contains_key("b"));
    }

    #[test]
    fn retain_and_remove_keep_the_order_of_the_rest() {
        let mut map = FifoMap::new(4);
        for (k, v) in [(1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')] {
            map.insert(k, v);
        }
        map.retain(|k, _| k % 2 == 0);
        assert_eq!(map.remove(&2), Some('b'));
        map.insert(5, 'e');
        assert_eq!(map.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [4, 5]);
    }
}
