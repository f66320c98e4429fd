//! The forwarding database: (VNI, MAC) → local port or remote VTEP.
//!
//! Contract:
//! - Lookup and learning are O(1) and never allocate; all memory is sized at construction.
//! - Dynamic entries are learned from source MACs and expire `aging` after they were last seen. An
//!   expired entry is invisible to [`Fdb::lookup`] at once and its slot is reclaimed by
//!   [`Fdb::age`] / [`Fdb::age_step`], which remove exactly the expired dynamic entries.
//! - Static entries (pushed by the control plane) never age and are never overwritten by learning;
//!   a frame that claims a static MAC from elsewhere is reported as [`Learn::StaticConflict`].
//! - A station move (the MAC appears behind another port or VTEP) updates the entry on its first
//!   frame.
//! - Capacity is hard: when full, new dynamic entries are not learned ([`Learn::TableFull`]) and
//!   nothing is evicted. Each source (port or VTEP) may own at most `max_per_source` dynamic
//!   entries ([`Learn::SourceLimit`]), so one MAC-flooding guest cannot fill the table.

use std::time::Duration;

use crate::clock::Timestamp;
use crate::mac::MacAddr;
use crate::port::PortId;
use crate::table::{mix, DirtyLog, FixedMap, TableKey};
use crate::tunnel::{PeerId, Vni};

/// Where frames for a MAC go.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dest {
    /// A local port.
    Port(PortId),
    /// A remote switch, reached through a VXLAN tunnel.
    Vtep(PeerId),
}

/// An FDB key: a MAC address within one tenant network.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FdbKey {
    /// The tenant network.
    pub vni: Vni,
    /// The station address.
    pub mac: MacAddr,
}

impl TableKey for FdbKey {
    #[inline]
    fn hash_with(&self, seed: u64) -> u64 {
        mix(self.mac.to_u64(), u64::from(self.vni.get()), seed)
    }
}

/// An FDB entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FdbEntry {
    /// Where the station is.
    pub dest: Dest,
    /// When a frame from the station was last seen (static entries: when installed).
    pub last_seen: Timestamp,
    /// Installed by the control plane: never ages, never overwritten by learning.
    pub is_static: bool,
}

/// What learning a source MAC did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Learn {
    /// Already known at this place; its age was reset (from the time given: when it was last
    /// seen before).
    Refreshed(Timestamp),
    /// A new entry.
    Learned,
    /// The station moved; the entry now points at the new place.
    Moved {
        /// Where the station was.
        from: Dest,
    },
    /// A static entry places this MAC elsewhere; nothing changed.
    StaticConflict,
    /// The table is full; not learned.
    TableFull,
    /// The source already owns its maximum number of dynamic entries; not learned.
    SourceLimit,
}

/// FDB sizing and timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdbConfig {
    /// Maximum number of entries, static and dynamic together.
    pub capacity: usize,
    /// How long a dynamic entry lives without being seen.
    pub aging: Duration,
    /// Maximum dynamic entries one port or one VTEP may own.
    pub max_per_source: u32,
}

impl Default for FdbConfig {
    fn default() -> Self {
        FdbConfig {
            capacity: 1 << 20,
            aging: Duration::from_secs(300),
            max_per_source: 4096,
        }
    }
}

/// Control-plane errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FdbError {
    /// No room for a static entry.
    #[error("FDB is full ({capacity} entries): cannot add static entry {mac} in VNI {vni}")]
    Full {
        /// The VNI of the rejected entry.
        vni: Vni,
        /// The MAC of the rejected entry.
        mac: MacAddr,
        /// The table's capacity.
        capacity: usize,
    },
    /// A static entry must name a unicast station address.
    #[error("static FDB entry {mac} in VNI {vni}: not a unicast station address")]
    InvalidMac {
        /// The VNI of the rejected entry.
        vni: Vni,
        /// The rejected MAC.
        mac: MacAddr,
    },
}

const SOURCES: usize = 1 << 16;

/// Something one datapath worker learned that the others must learn too (see
/// [`Fdb::enable_journal`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Learned {
    /// The network.
    pub vni: Vni,
    /// The station.
    pub mac: MacAddr,
    /// Where it is.
    pub dest: Dest,
}

/// True when `a` and `b` fall in different periods of length `period` (never for a zero
/// period): a refresh that crosses a period boundary is published again, so a station that keeps
/// sending through one worker stays fresh in the others, at one message per period.
#[inline]
pub(crate) fn crosses_period(a: Timestamp, b: Timestamp, period: std::time::Duration) -> bool {
    let p = period.as_nanos() as u64;
    p != 0 && a.as_nanos() / p != b.as_nanos() / p
}

/// The forwarding database.
pub struct Fdb {
    map: FixedMap<FdbKey, FdbEntry>,
    config: FdbConfig,
    /// Dynamic entries owned by each port, indexed by `PortId`.
    per_port: Box<[u32]>,
    /// Dynamic entries owned by each VTEP, indexed by `PeerId`.
    per_peer: Box<[u32]>,
    sweep_cursor: usize,
    /// Learning events for other workers, when journaling is on.
    journal: Option<Vec<Learned>>,
    /// Journal events lost because the journal was full.
    journal_overflow: u64,
    /// Keys changed since the mirror (the kernel's copy) was last synced.
    dirty: Option<DirtyLog<FdbKey>>,
    /// Expired entries a mirror saw in use during the last aging step, refreshed after it.
    seen_buf: Vec<FdbKey>,
}

impl Fdb {
    /// An empty FDB, hashing with `seed` (use a random seed outside tests).
    pub fn new(config: FdbConfig, seed: u64) -> Fdb {
        Fdb {
            map: FixedMap::with_capacity(config.capacity, seed),
            config,
            per_port: vec![0; SOURCES].into_boxed_slice(),
            per_peer: vec![0; SOURCES].into_boxed_slice(),
            sweep_cursor: 0,
            journal: None,
            journal_overflow: 0,
            dirty: None,
            seen_buf: Vec::new(),
        }
    }

    /// Records the key of every change (insert, move, removal, aging) in a log of at most
    /// `capacity` keys, for keeping a mirror of the table in sync ([`Fdb::drain_dirty`]).
    pub fn enable_mirror(&mut self, capacity: usize) {
        self.dirty = Some(DirtyLog::with_capacity(capacity));
    }

    /// Hands the keys changed since the last call to `f`; returns true if too many changed to
    /// list (the mirror must then be rebuilt from [`Fdb::entries`]).
    pub fn drain_dirty(&mut self, f: impl FnMut(FdbKey)) -> bool {
        self.dirty.as_mut().is_some_and(|d| d.drain(f))
    }

    #[inline]
    fn mark(&mut self, key: FdbKey) {
        if let Some(d) = self.dirty.as_mut() {
            d.mark(key);
        }
    }

    /// Records every new or moved station, and a refresh once per quarter of the aging time,
    /// in a journal of at most `capacity` events (allocated here, once) that
    /// [`Fdb::drain_journal`] empties. Datapath workers with their own tables use it to share
    /// what they learn.
    pub fn enable_journal(&mut self, capacity: usize) {
        self.journal = Some(Vec::with_capacity(capacity));
    }

    /// Hands the journaled events to `f` and empties the journal.
    pub fn drain_journal(&mut self, mut f: impl FnMut(Learned)) {
        if let Some(j) = self.journal.as_mut() {
            for e in j.drain(..) {
                f(e);
            }
        }
    }

    /// Events lost because the journal was full between two drains.
    pub fn journal_overflow(&self) -> u64 {
        self.journal_overflow
    }

    #[inline]
    fn record(&mut self, vni: Vni, mac: MacAddr, dest: Dest) {
        if let Some(j) = self.journal.as_mut() {
            if j.len() < j.capacity() {
                j.push(Learned { vni, mac, dest });
            } else {
                self.journal_overflow += 1;
            }
        }
    }

    /// Applies what another worker learned: like [`Fdb::learn`], but never journaled (so
    /// events do not echo between workers).
    pub fn learn_remote(&mut self, e: Learned, now: Timestamp) -> Learn {
        let journal = self.journal.take();
        let r = self.learn(e.vni, e.mac, e.dest, now);
        self.journal = journal;
        r
    }

    /// The configuration.
    pub fn config(&self) -> &FdbConfig {
        &self.config
    }

    /// Number of entries (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Maximum number of entries.
    pub fn capacity(&self) -> usize {
        self.map.capacity()
    }

    #[inline]
    fn owned_mut(&mut self, dest: Dest) -> &mut u32 {
        match dest {
            Dest::Port(p) => &mut self.per_port[usize::from(p.get())],
            Dest::Vtep(p) => &mut self.per_peer[usize::from(p.get())],
        }
    }

    /// Dynamic entries `dest` owns.
    pub fn owned_by(&self, dest: Dest) -> u32 {
        match dest {
            Dest::Port(p) => self.per_port[usize::from(p.get())],
            Dest::Vtep(p) => self.per_peer[usize::from(p.get())],
        }
    }

    #[inline]
    fn expired(&self, e: &FdbEntry, now: Timestamp) -> bool {
        !e.is_static && now.since(e.last_seen) >= self.config.aging
    }

    /// Where `mac` in `vni` lives, if known and not expired.
    #[inline]
    pub fn lookup(&self, vni: Vni, mac: MacAddr, now: Timestamp) -> Option<Dest> {
        let e = self.map.get(&FdbKey { vni, mac })?;
        if self.expired(e, now) {
            None
        } else {
            Some(e.dest)
        }
    }

    /// The entry for `mac` in `vni`, expired or not.
    pub fn get(&self, vni: Vni, mac: MacAddr) -> Option<&FdbEntry> {
        self.map.get(&FdbKey { vni, mac })
    }

    /// Learns that `mac` in `vni` was seen behind `dest` at `now`.
    #[inline]
    pub fn learn(&mut self, vni: Vni, mac: MacAddr, dest: Dest, now: Timestamp) -> Learn {
        let r = self.learn_inner(vni, mac, dest, now);
        if matches!(r, Learn::Learned | Learn::Moved { .. }) {
            self.mark(FdbKey { vni, mac });
        }
        if self.journal.is_some() {
            match r {
                Learn::Learned | Learn::Moved { .. } => self.record(vni, mac, dest),
                Learn::Refreshed(previous)
                    if crosses_period(previous, now, self.config.aging / 4) =>
                {
                    self.record(vni, mac, dest)
                }
                _ => {}
            }
        }
        r
    }

    #[inline]
    fn learn_inner(&mut self, vni: Vni, mac: MacAddr, dest: Dest, now: Timestamp) -> Learn {
        let key = FdbKey { vni, mac };
        let aging = self.config.aging;
        let limit = self.config.max_per_source;
        if let Some(e) = self.map.get_mut(&key) {
            if e.is_static {
                return if e.dest == dest {
                    Learn::Refreshed(now)
                } else {
                    Learn::StaticConflict
                };
            }
            let was_expired = now.since(e.last_seen) >= aging;
            if e.dest == dest {
                let previous = e.last_seen;
                e.last_seen = now;
                return if was_expired {
                    Learn::Learned
                } else {
                    Learn::Refreshed(previous)
                };
            }
            let from = e.dest;
            if self.owned_by(dest) >= limit {
                return Learn::SourceLimit;
            }
            // Re-borrow after the limit check (owned_by borrows self immutably).
            if let Some(e) = self.map.get_mut(&key) {
                e.dest = dest;
                e.last_seen = now;
            }
            *self.owned_mut(from) -= 1;
            *self.owned_mut(dest) += 1;
            return if was_expired {
                Learn::Learned
            } else {
                Learn::Moved { from }
            };
        }
        if self.owned_by(dest) >= limit {
            return Learn::SourceLimit;
        }
        let entry = FdbEntry {
            dest,
            last_seen: now,
            is_static: false,
        };
        match self.map.insert(key, entry) {
            Ok(_) => {
                *self.owned_mut(dest) += 1;
                Learn::Learned
            }
            Err(_) => Learn::TableFull,
        }
    }

    /// Installs a static entry, replacing any entry for the same key.
    ///
    /// # Errors
    /// [`FdbError::InvalidMac`] for a group or zero address; [`FdbError::Full`] when the key is
    /// new and the table is at capacity.
    pub fn insert_static(
        &mut self,
        vni: Vni,
        mac: MacAddr,
        dest: Dest,
        now: Timestamp,
    ) -> Result<(), FdbError> {
        if !mac.is_valid_source() {
            return Err(FdbError::InvalidMac { vni, mac });
        }
        let entry = FdbEntry {
            dest,
            last_seen: now,
            is_static: true,
        };
        self.mark(FdbKey { vni, mac });
        match self.map.insert(FdbKey { vni, mac }, entry) {
            Ok(Some(old)) => {
                if !old.is_static {
                    *self.owned_mut(old.dest) -= 1;
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(_) => Err(FdbError::Full {
                vni,
                mac,
                capacity: self.capacity(),
            }),
        }
    }

    /// Removes the entry for `mac` in `vni`, static or dynamic.
    pub fn remove(&mut self, vni: Vni, mac: MacAddr) -> Option<FdbEntry> {
        let old = self.map.remove(&FdbKey { vni, mac })?;
        self.mark(FdbKey { vni, mac });
        if !old.is_static {
            *self.owned_mut(old.dest) -= 1;
        }
        Some(old)
    }

    /// Removes every entry (static too) pointing at `dest`: the port or peer is gone.
    pub fn flush_dest(&mut self, dest: Dest) -> usize {
        let dirty = &mut self.dirty;
        let n = self.map.remove_where(|k, e| {
            let hit = e.dest == dest;
            if hit {
                if let Some(d) = dirty.as_mut() {
                    d.mark(*k);
                }
            }
            hit
        });
        *self.owned_mut(dest) = 0;
        n
    }

    /// Removes every dynamic entry of `vni` (the network was removed or reconfigured).
    pub fn flush_vni(&mut self, vni: Vni) -> usize {
        let mut freed: Vec<Dest> = Vec::new();
        let dirty = &mut self.dirty;
        let n = self.map.remove_where(|k, e| {
            let hit = k.vni == vni && !e.is_static;
            if hit {
                freed.push(e.dest);
                if let Some(d) = dirty.as_mut() {
                    d.mark(*k);
                }
            }
            hit
        });
        for d in freed {
            *self.owned_mut(d) -= 1;
        }
        n
    }

    /// Removes every expired dynamic entry; returns how many.
    pub fn age(&mut self, now: Timestamp) -> usize {
        let slots = self.map.slot_count();
        self.age_step(now, slots)
    }

    /// Visits `budget` slots of the table (continuing where the last call stopped) and removes
    /// the expired dynamic entries there; returns how many. Calling it with a small budget on
    /// every poll spreads aging so no call stalls the data path.
    pub fn age_step(&mut self, now: Timestamp, budget: usize) -> usize {
        self.age_step_with(now, budget, |_, _| false)
    }

    /// As [`Fdb::age_step`], but an expired entry for which `seen` returns true (a mirror saw
    /// the station send since the last check: the kernel fast path forwards without telling
    /// user space) is refreshed instead of removed.
    pub fn age_step_with(
        &mut self,
        now: Timestamp,
        budget: usize,
        mut seen: impl FnMut(&FdbKey, &FdbEntry) -> bool,
    ) -> usize {
        let aging = self.config.aging;
        let mut cursor = self.sweep_cursor;
        let (per_port, per_peer) = (&mut self.per_port, &mut self.per_peer);
        let (dirty, seen_buf) = (&mut self.dirty, &mut self.seen_buf);
        seen_buf.clear();
        let n = self.map.sweep(&mut cursor, budget, |k, e| {
            let expired = !e.is_static && now.since(e.last_seen) >= aging;
            if !expired {
                return false;
            }
            if seen(k, e) {
                seen_buf.push(*k);
                return false;
            }
            match e.dest {
                Dest::Port(p) => per_port[usize::from(p.get())] -= 1,
                Dest::Vtep(p) => per_peer[usize::from(p.get())] -= 1,
            }
            if let Some(d) = dirty.as_mut() {
                d.mark(*k);
            }
            true
        });
        self.sweep_cursor = cursor;
        for k in &self.seen_buf {
            if let Some(e) = self.map.get_mut(k) {
                e.last_seen = now;
            }
        }
        n
    }

    /// All entries, in table order.
    pub fn entries(&self) -> impl Iterator<Item = (FdbKey, FdbEntry)> + '_ {
        self.map.iter().map(|(k, v)| (*k, *v))
    }
}

impl std::fmt::Debug for Fdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fdb")
            .field("len", &self.len())
            .field("config", &self.config)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn vni(v: u32) -> Vni {
        Vni::new(v).unwrap()
    }
    fn mac(i: u64) -> MacAddr {
        MacAddr::from_u64(0x0200_0000_0000 | i)
    }
    fn port(i: u16) -> Dest {
        Dest::Port(PortId::new(i))
    }
    fn vtep(i: u16) -> Dest {
        Dest::Vtep(PeerId::new(i))
    }
    fn small(capacity: usize, max_per_source: u32) -> Fdb {
        Fdb::new(
            FdbConfig {
                capacity,
                aging: Duration::from_secs(300),
                max_per_source,
            },
            42,
        )
    }
    const T0: Timestamp = Timestamp::ZERO;

    #[test]
    fn journal_records_new_and_moved_stations_and_periodic_refreshes_only() {
        let mut a = small(64, 64);
        let mut b = small(64, 64);
        a.enable_journal(8);
        let drain = |f: &mut Fdb| {
            let mut v = Vec::new();
            f.drain_journal(|e| v.push(e));
            v
        };
        let t = |s: u64| Timestamp::from_secs(s);
        assert_eq!(a.learn(vni(1), mac(1), port(1), t(1)), Learn::Learned);
        for s in 2..60 {
            assert!(matches!(
                a.learn(vni(1), mac(1), port(1), t(s)),
                Learn::Refreshed(_)
            ));
        }
        let moved = a.learn(vni(1), mac(1), port(2), t(60));
        assert!(matches!(moved, Learn::Moved { .. }));
        let ev = drain(&mut a);
        assert_eq!(
            ev,
            vec![
                Learned {
                    vni: vni(1),
                    mac: mac(1),
                    dest: port(1)
                },
                Learned {
                    vni: vni(1),
                    mac: mac(1),
                    dest: port(2)
                },
            ],
            "a learn and a move; refreshes within one period are not journaled"
        );
        // A refresh that crosses a quarter of the aging time (75 s) is journaled again.
        let _ = a.learn(vni(1), mac(1), port(2), t(74));
        assert!(drain(&mut a).is_empty());
        let _ = a.learn(vni(1), mac(1), port(2), t(76));
        assert_eq!(drain(&mut a).len(), 1);
        // Applying on another table learns, and does not journal there (no echo).
        b.enable_journal(8);
        b.learn_remote(
            Learned {
                vni: vni(1),
                mac: mac(1),
                dest: port(2),
            },
            t(76),
        );
        assert_eq!(b.lookup(vni(1), mac(1), t(77)), Some(port(2)));
        assert!(drain(&mut b).is_empty());
        // A full journal counts what it loses instead of growing.
        for m in 10..30 {
            let _ = a.learn(vni(1), mac(m), port(3), t(80));
        }
        assert_eq!(drain(&mut a).len(), 8);
        assert_eq!(a.journal_overflow(), 12);
    }

    #[test]
    fn learns_refreshes_and_looks_up_per_vni() {
        let mut f = small(16, 16);
        assert_eq!(f.learn(vni(1), mac(1), port(1), T0), Learn::Learned);
        assert_eq!(f.learn(vni(1), mac(1), port(1), T0), Learn::Refreshed(T0));
        assert_eq!(f.lookup(vni(1), mac(1), T0), Some(port(1)));
        assert_eq!(
            f.lookup(vni(2), mac(1), T0),
            None,
            "VNIs are separate namespaces"
        );
        assert_eq!(f.learn(vni(2), mac(1), port(2), T0), Learn::Learned);
        assert_eq!(f.lookup(vni(2), mac(1), T0), Some(port(2)));
        assert_eq!(f.lookup(vni(1), mac(1), T0), Some(port(1)));
    }

    #[test]
    fn station_moves_follow_the_first_frame() {
        let mut f = small(16, 16);
        f.learn(vni(1), mac(1), port(1), T0);
        assert_eq!(
            f.learn(vni(1), mac(1), vtep(3), T0),
            Learn::Moved { from: port(1) }
        );
        assert_eq!(f.lookup(vni(1), mac(1), T0), Some(vtep(3)));
        assert_eq!(f.owned_by(port(1)), 0);
        assert_eq!(f.owned_by(vtep(3)), 1);
    }

    #[test]
    fn static_entries_win_over_learning_and_never_age() {
        let mut f = small(16, 16);
        f.learn(vni(1), mac(1), port(1), T0);
        f.insert_static(vni(1), mac(1), port(2), T0).unwrap();
        assert_eq!(
            f.owned_by(port(1)),
            0,
            "replaced dynamic entry no longer counts"
        );
        assert_eq!(f.learn(vni(1), mac(1), port(1), T0), Learn::StaticConflict);
        assert_eq!(f.learn(vni(1), mac(1), port(2), T0), Learn::Refreshed(T0));
        let later = Timestamp::from_secs(100_000);
        assert_eq!(f.age(later), 0);
        assert_eq!(f.lookup(vni(1), mac(1), later), Some(port(2)));
        assert!(f
            .insert_static(vni(1), MacAddr::BROADCAST, port(2), T0)
            .is_err());
    }

    #[test]
    fn aging_hides_then_removes_expired_entries() {
        let mut f = small(16, 16);
        f.learn(vni(1), mac(1), port(1), T0);
        f.learn(vni(1), mac(2), port(1), Timestamp::from_secs(200));
        let t = Timestamp::from_secs(300);
        assert_eq!(
            f.lookup(vni(1), mac(1), t),
            None,
            "expired at exactly the aging time"
        );
        assert_eq!(f.lookup(vni(1), mac(2), t), Some(port(1)));
        assert_eq!(f.age(t), 1);
        assert_eq!(f.len(), 1);
        assert_eq!(f.owned_by(port(1)), 1);
    }

    #[test]
    fn relearning_an_expired_entry_counts_as_new() {
        let mut f = small(16, 16);
        f.learn(vni(1), mac(1), port(1), T0);
        let t = Timestamp::from_secs(301);
        assert_eq!(f.learn(vni(1), mac(1), port(2), t), Learn::Learned);
        assert_eq!(f.owned_by(port(1)), 0);
        assert_eq!(f.owned_by(port(2)), 1);
    }

    #[test]
    fn full_table_refuses_new_entries_and_evicts_nothing() {
        let mut f = small(4, 100);
        for i in 0..4 {
            assert_eq!(f.learn(vni(1), mac(i), port(1), T0), Learn::Learned);
        }
        assert_eq!(f.learn(vni(1), mac(9), port(1), T0), Learn::TableFull);
        assert!(matches!(
            f.insert_static(vni(1), mac(10), port(1), T0),
            Err(FdbError::Full { .. })
        ));
        assert_eq!(f.len(), 4);
        for i in 0..4 {
            assert_eq!(f.lookup(vni(1), mac(i), T0), Some(port(1)));
        }
    }

    #[test]
    fn per_source_limit_stops_a_mac_flood() {
        let mut f = small(100, 3);
        for i in 0..3 {
            assert_eq!(f.learn(vni(1), mac(i), port(1), T0), Learn::Learned);
        }
        assert_eq!(f.learn(vni(1), mac(3), port(1), T0), Learn::SourceLimit);
        assert_eq!(f.learn(vni(1), mac(3), port(2), T0), Learn::Learned);
        assert_eq!(
            f.learn(vni(1), mac(3), port(1), T0),
            Learn::SourceLimit,
            "a move is limited too"
        );
        assert_eq!(f.lookup(vni(1), mac(3), T0), Some(port(2)));
    }

    #[test]
    fn flushes_by_destination_and_vni() {
        let mut f = small(16, 16);
        f.learn(vni(1), mac(1), port(1), T0);
        f.learn(vni(2), mac(2), port(1), T0);
        f.insert_static(vni(1), mac(3), port(1), T0).unwrap();
        f.learn(vni(1), mac(4), vtep(1), T0);
        assert_eq!(f.flush_vni(vni(2)), 1);
        assert_eq!(f.owned_by(port(1)), 1);
        assert_eq!(f.flush_dest(port(1)), 2);
        assert_eq!(f.owned_by(port(1)), 0);
        assert_eq!(f.len(), 1);
        assert_eq!(f.remove(vni(1), mac(4)).map(|e| e.dest), Some(vtep(1)));
        assert_eq!(f.owned_by(vtep(1)), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Learn { mac: u8, vni: u8, dest: u8, dt: u16 },
        Static { mac: u8, vni: u8, dest: u8 },
        Remove { mac: u8, vni: u8 },
        AgeStep { budget: u8, dt: u16 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (any::<u8>(), 0u8..3, 0u8..6, 0u16..200).prop_map(|(mac, vni, dest, dt)| Op::Learn { mac, vni, dest, dt }),
            1 => (any::<u8>(), 0u8..3, 0u8..6).prop_map(|(mac, vni, dest)| Op::Static { mac, vni, dest }),
            1 => (any::<u8>(), 0u8..3).prop_map(|(mac, vni)| Op::Remove { mac, vni }),
            1 => (any::<u8>(), 0u16..400).prop_map(|(budget, dt)| Op::AgeStep { budget, dt }),
        ]
    }

    fn dest_of(d: u8) -> Dest {
        if d < 3 {
            port(u16::from(d))
        } else {
            vtep(u16::from(d - 3))
        }
    }

    proptest! {
        /// Under any sequence of learning, static inserts, removals and partial aging sweeps:
        /// the table never exceeds its capacity, per-source counts match the entries, and static
        /// entries keep their destination until removed.
        #[test]
        fn invariants_hold_under_any_sequence(cap in 1usize..64, limit in 1u32..20, ops in proptest::collection::vec(op(), 0..400)) {
            let mut f = Fdb::new(FdbConfig { capacity: cap, aging: Duration::from_secs(300), max_per_source: limit }, 9);
            let mut statics: HashMap<(u32, u64), Dest> = HashMap::new();
            let mut now = T0;
            for op in ops {
                match op {
                    Op::Learn { mac: m, vni: v, dest, dt } => {
                        now = now.plus(Duration::from_secs(u64::from(dt)));
                        let r = f.learn(vni(u32::from(v) + 1), mac(u64::from(m)), dest_of(dest), now);
                        if let Some(d) = statics.get(&(u32::from(v) + 1, u64::from(m))) {
                            prop_assert!(matches!(r, Learn::Refreshed(_) | Learn::StaticConflict));
                            prop_assert_eq!(matches!(r, Learn::Refreshed(_)), *d == dest_of(dest));
                        }
                    }
                    Op::Static { mac: m, vni: v, dest } => {
                        if f.insert_static(vni(u32::from(v) + 1), mac(u64::from(m)), dest_of(dest), now).is_ok() {
                            statics.insert((u32::from(v) + 1, u64::from(m)), dest_of(dest));
                        }
                    }
                    Op::Remove { mac: m, vni: v } => {
                        f.remove(vni(u32::from(v) + 1), mac(u64::from(m)));
                        statics.remove(&(u32::from(v) + 1, u64::from(m)));
                    }
                    Op::AgeStep { budget, dt } => {
                        now = now.plus(Duration::from_secs(u64::from(dt)));
                        f.age_step(now, usize::from(budget));
                    }
                }
                prop_assert!(f.len() <= cap);
                for d in 0..6 {
                    let owned = f.entries().filter(|(_, e)| !e.is_static && e.dest == dest_of(d)).count();
                    prop_assert_eq!(f.owned_by(dest_of(d)) as usize, owned);
                    prop_assert!(owned as u32 <= limit);
                }
                for ((v, m), d) in &statics {
                    prop_assert_eq!(f.lookup(vni(*v), mac(*m), now), Some(*d));
                }
            }
        }

        /// `age` removes exactly the dynamic entries not seen for `aging` or longer.
        #[test]
        fn aging_removes_exactly_the_expired(seen in proptest::collection::vec((any::<u16>(), 0u64..1000, any::<bool>()), 0..200), now in 0u64..1300) {
            let mut f = small(512, 1000);
            let mut expect: HashMap<u64, bool> = HashMap::new();
            for (m, t, is_static) in &seen {
                let (m, t) = (u64::from(*m), Timestamp::from_secs(*t));
                if *is_static {
                    f.insert_static(vni(1), mac(m), port(1), t).unwrap();
                } else {
                    f.learn(vni(1), mac(m), port(1), t);
                }
                // Track the latest state of each MAC: static wins, else the latest refresh.
                let e = f.get(vni(1), mac(m)).unwrap();
                expect.insert(m, e.is_static || Timestamp::from_secs(now).since(e.last_seen) < Duration::from_secs(300));
            }
            let before = f.len();
            let removed = f.age(Timestamp::from_secs(now));
            prop_assert_eq!(removed, expect.values().filter(|keep| !**keep).count());
            prop_assert_eq!(f.len(), before - removed);
            for (m, keep) in expect {
                prop_assert_eq!(f.get(vni(1), mac(m)).is_some(), keep);
            }
        }
    }
}
