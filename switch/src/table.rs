//! A fixed-capacity open-addressing hash table: the storage under the FDB and the ARP table.
//!
//! Contract:
//! - All memory is allocated by [`FixedMap::with_capacity`]; `get`, `insert`, `remove` and the
//!   sweeps never allocate.
//! - At most `capacity` entries are held; an insert beyond that returns [`Full`] and changes
//!   nothing. The slot array is at least 4/3 of the capacity (a power of two), so probe sequences
//!   stay short even when full.
//! - Linear probing with backward-shift deletion: there are no tombstones, so lookups never slow
//!   down as entries come and go.
//! - Keys are hashed with a per-table random seed, so an outsider cannot aim MAC addresses at one
//!   probe chain (the per-port learning limit bounds what one port can insert at all).

/// A key the table can hash.
pub trait TableKey: Copy + Eq {
    /// A well-mixed 64-bit hash of the key under `seed`.
    fn hash_with(&self, seed: u64) -> u64;
}

/// Mixes two words under a seed (a keyed variant of the murmur3/splitmix finaliser).
#[inline]
pub fn mix(a: u64, b: u64, seed: u64) -> u64 {
    let mut x = a ^ seed;
    x = x.wrapping_add(b.rotate_left(29) ^ seed.rotate_left(17));
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Keys whose entries changed since the last drain, for a mirror of a table (the kernel's copy
/// of the FDB and ARP table). Bounded: when more keys change than it holds, it remembers only
/// that it overflowed, and the mirror is rebuilt from scratch.
#[derive(Debug)]
pub struct DirtyLog<K> {
    keys: Vec<K>,
    overflowed: bool,
}

impl<K: Copy> DirtyLog<K> {
    /// A log of at most `capacity` keys (allocated here, once).
    pub fn with_capacity(capacity: usize) -> DirtyLog<K> {
        DirtyLog {
            keys: Vec::with_capacity(capacity),
            overflowed: false,
        }
    }

    /// Records that `k` changed.
    #[inline]
    pub fn mark(&mut self, k: K) {
        if self.overflowed {
            return;
        }
        if self.keys.len() < self.keys.capacity() {
            self.keys.push(k);
        } else {
            self.overflowed = true;
            self.keys.clear();
        }
    }

    /// Hands every recorded key to `f` and empties the log; returns true if it had overflowed
    /// (then no key is handed over: the whole table must be mirrored again).
    pub fn drain(&mut self, mut f: impl FnMut(K)) -> bool {
        let overflowed = std::mem::take(&mut self.overflowed);
        for k in self.keys.drain(..) {
            f(k);
        }
        overflowed
    }
}

/// The table is at capacity; nothing was inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// A fixed-capacity hash map from `K` to `V`.
pub struct FixedMap<K, V> {
    slots: Box<[Option<(K, V)>]>,
    mask: usize,
    len: usize,
    capacity: usize,
    seed: u64,
}

impl<K: TableKey, V> FixedMap<K, V> {
    /// A table that holds up to `capacity` entries (at least 1), hashing with `seed`.
    pub fn with_capacity(capacity: usize, seed: u64) -> Self {
        let capacity = capacity.max(1);
        let want = capacity.saturating_add(capacity / 3).saturating_add(1);
        let n = want
            .checked_next_power_of_two()
            .unwrap_or(1 << (usize::BITS - 1));
        let slots = std::iter::repeat_with(|| None).take(n).collect();
        FixedMap {
            slots,
            mask: n - 1,
            len: 0,
            capacity,
            seed,
        }
    }

    /// Number of entries.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no entries.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of entries.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of slots (a power of two, at least 4/3 of the capacity).
    #[inline]
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    #[inline]
    fn home(&self, key: &K) -> usize {
        // The slot count never exceeds usize, so truncating the hash is the intent.
        (key.hash_with(self.seed) as usize) & self.mask
    }

    /// The slot that holds `key`, if any.
    #[inline]
    fn find(&self, key: &K) -> Option<usize> {
        let mut i = self.home(key);
        loop {
            match &self.slots[i] {
                None => return None,
                Some((k, _)) if k == key => return Some(i),
                Some(_) => i = (i + 1) & self.mask,
            }
        }
    }

    /// The value for `key`.
    #[inline]
    pub fn get(&self, key: &K) -> Option<&V> {
        let i = self.find(key)?;
        self.slots[i].as_ref().map(|(_, v)| v)
    }

    /// The value for `key`, mutable.
    #[inline]
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let i = self.find(key)?;
        self.slots[i].as_mut().map(|(_, v)| v)
    }

    /// Inserts or replaces. Returns the previous value, or [`Full`] if `key` is new and the table
    /// is at capacity.
    pub fn insert(&mut self, key: K, value: V) -> Result<Option<V>, Full> {
        let mut i = self.home(&key);
        loop {
            match &mut self.slots[i] {
                None => {
                    if self.len >= self.capacity {
                        return Err(Full);
                    }
                    self.slots[i] = Some((key, value));
                    self.len += 1;
                    return Ok(None);
                }
                Some((k, v)) if *k == key => return Ok(Some(std::mem::replace(v, value))),
                Some(_) => i = (i + 1) & self.mask,
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.find(key)?;
        self.remove_at(i)
    }

    /// Empties slot `i` and shifts the rest of its probe chain back, so no tombstone remains.
    fn remove_at(&mut self, i: usize) -> Option<V> {
        let (_, value) = self.slots[i].take()?;
        self.len -= 1;
        let mut hole = i;
        let mut j = (i + 1) & self.mask;
        loop {
            let home = match &self.slots[j] {
                None => break,
                Some((k, _)) => self.home(k),
            };
            // The entry at j may fill the hole only if its home is not in (hole, j] cyclically.
            let dist_home_to_j = j.wrapping_sub(home) & self.mask;
            let dist_hole_to_j = j.wrapping_sub(hole) & self.mask;
            if dist_home_to_j >= dist_hole_to_j {
                self.slots[hole] = self.slots[j].take();
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        Some(value)
    }

    /// Iterates over all entries in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slots
            .iter()
            .filter_map(|s| s.as_ref().map(|(k, v)| (k, v)))
    }

    /// Removes every entry for which `remove` returns true; returns how many were removed.
    pub fn remove_where(&mut self, mut remove: impl FnMut(&K, &V) -> bool) -> usize {
        let mut cursor = 0;
        self.sweep(&mut cursor, self.slots.len(), &mut remove)
    }

    /// Visits up to `budget` slots from `*cursor` (wrapping), removing entries for which `remove`
    /// returns true, and advances the cursor. Spreads a full sweep over many calls so no single
    /// call stalls the data path. Returns how many entries were removed.
    pub fn sweep(
        &mut self,
        cursor: &mut usize,
        budget: usize,
        mut remove: impl FnMut(&K, &V) -> bool,
    ) -> usize {
        let mut removed = 0;
        let mut i = *cursor & self.mask;
        let budget = budget.min(self.slots.len());
        let mut visited = 0;
        while visited < budget {
            let hit = match &self.slots[i] {
                Some((k, v)) => remove(k, v),
                None => false,
            };
            if hit {
                self.remove_at(i);
                removed += 1;
                // A backward shift may have moved a not-yet-visited entry into slot i: look at the
                // same slot again. Each revisit follows a removal, so this terminates.
                if self.slots[i].is_some() {
                    continue;
                }
            }
            visited += 1;
            i = (i + 1) & self.mask;
        }
        *cursor = i;
        removed
    }
}

impl<K: TableKey + std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for FixedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedMap")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
    struct K(u64);
    impl TableKey for K {
        fn hash_with(&self, seed: u64) -> u64 {
            mix(self.0, 0, seed)
        }
    }

    /// A key whose hash collides on purpose, to exercise long probe chains and wrap-around.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
    struct Clumped(u64);
    impl TableKey for Clumped {
        fn hash_with(&self, _seed: u64) -> u64 {
            u64::MAX - (self.0 % 3)
        }
    }

    #[test]
    fn insert_get_remove() {
        let mut t = FixedMap::with_capacity(4, 7);
        assert_eq!(t.insert(K(1), 10), Ok(None));
        assert_eq!(t.insert(K(1), 11), Ok(Some(10)));
        assert_eq!(t.get(&K(1)), Some(&11));
        assert_eq!(t.remove(&K(1)), Some(11));
        assert_eq!(t.get(&K(1)), None);
        assert!(t.is_empty());
    }

    #[test]
    fn refuses_beyond_capacity_and_replaces_at_capacity() {
        let mut t = FixedMap::with_capacity(3, 7);
        for i in 0..3 {
            t.insert(K(i), i).unwrap();
        }
        assert_eq!(t.insert(K(99), 0), Err(Full));
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.insert(K(2), 20),
            Ok(Some(2)),
            "replacing an existing key needs no room"
        );
    }

    #[test]
    fn slot_array_has_headroom() {
        let t: FixedMap<K, ()> = FixedMap::with_capacity(1 << 20, 0);
        assert!(t.slot_count() * 3 >= (1 << 20) * 4);
        assert!(t.slot_count().is_power_of_two());
    }

    #[test]
    fn collisions_wrap_around_and_survive_removal() {
        let mut t = FixedMap::with_capacity(12, 0);
        for i in 0..12 {
            t.insert(Clumped(i), i).unwrap();
        }
        for i in (0..12).step_by(2) {
            assert_eq!(t.remove(&Clumped(i)), Some(i));
        }
        for i in 0..12 {
            assert_eq!(
                t.get(&Clumped(i)).copied(),
                (i % 2 == 1).then_some(i),
                "key {i}"
            );
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32),
        Remove(u8),
        Sweep(usize, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            any::<u8>().prop_map(Op::Remove),
            (0usize..64, any::<u8>()).prop_map(|(b, m)| Op::Sweep(b, m)),
        ]
    }

    proptest! {
        /// The table behaves like a HashMap bounded by capacity, under any sequence of operations,
        /// including incremental sweeps, with keys that collide heavily.
        #[test]
        fn behaves_like_a_bounded_hashmap(cap in 1usize..40, ops in proptest::collection::vec(op(), 0..300)) {
            let mut t = FixedMap::with_capacity(cap, 0);
            let mut model: HashMap<u64, u32> = HashMap::new();
            let mut cursor = 0;
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        let k = u64::from(k % 50);
                        let r = t.insert(Clumped(k), v);
                        if model.contains_key(&k) || model.len() < cap {
                            prop_assert_eq!(r, Ok(model.insert(k, v)));
                        } else {
                            prop_assert_eq!(r, Err(Full));
                        }
                    }
                    Op::Remove(k) => {
                        let k = u64::from(k % 50);
                        prop_assert_eq!(t.remove(&Clumped(k)), model.remove(&k));
                    }
                    Op::Sweep(budget, m) => {
                        let m = u32::from(m % 7 + 1);
                        let removed = t.sweep(&mut cursor, budget, |_, v| v % m == 0);
                        // Only selected entries may go, and the count must match.
                        let before = model.len();
                        let mut wrongly_removed = Vec::new();
                        model.retain(|k, v| {
                            let present = t.get(&Clumped(*k)).is_some();
                            if !present && *v % m != 0 {
                                wrongly_removed.push(*k);
                            }
                            present
                        });
                        prop_assert!(wrongly_removed.is_empty(), "removed unselected keys {:?}", wrongly_removed);
                        prop_assert_eq!(before - model.len(), removed);
                    }
                }
                prop_assert!(t.len() <= cap);
                prop_assert_eq!(t.len(), model.len());
                for (k, v) in &model {
                    prop_assert_eq!(t.get(&Clumped(*k)), Some(v));
                }
            }
        }

        /// A full sweep removes exactly the entries the predicate selects.
        #[test]
        fn remove_where_is_exact(keys in proptest::collection::hash_set(any::<u64>(), 0..200), m in 1u64..5) {
            let mut t = FixedMap::with_capacity(256, 3);
            for k in &keys {
                t.insert(K(*k), *k).unwrap();
            }
            let removed = t.remove_where(|_, v| v % m == 0);
            prop_assert_eq!(removed, keys.iter().filter(|k| *k % m == 0).count());
            for k in &keys {
                prop_assert_eq!(t.get(&K(*k)).is_some(), k % m != 0);
            }
        }
    }
}
