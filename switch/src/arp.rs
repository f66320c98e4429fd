//! ARP suppression: a table of (VNI, IPv4) → MAC filled by snooping ARP and by static entries,
//! and the reply a switch sends in a station's place, so a known ARP never floods.
//!
//! Contract:
//! - Only Ethernet/IPv4 ARP (htype 1, ptype 0x0800, hlen 6, plen 4) is understood; anything else
//!   is [`ArpError::Unsupported`] and the pipeline forwards it as ordinary L2.
//! - Snooped entries age like FDB entries; static entries never age and snooping never replaces
//!   them. Lookup, snooping and building a reply never allocate.

use std::net::Ipv4Addr;
use std::time::Duration;

use etherparse::{ArpEthIpv4Packet, ArpHardwareId, ArpOperation, ArpPacketSlice, EtherType};

use crate::clock::Timestamp;
use crate::mac::MacAddr;
use crate::table::{mix, FixedMap, TableKey};
use crate::tunnel::Vni;

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
/// Length of an Ethernet/IPv4 ARP message.
pub const ARP_LEN: usize = ArpEthIpv4Packet::LEN;
/// Length of the reply frame [`build_reply`] writes (no padding).
pub const REPLY_FRAME_LEN: usize = ETH_LEN + ARP_LEN;

/// An Ethernet/IPv4 ARP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpMessage {
    /// Request (1) or reply (2); other values are carried through.
    pub op: u16,
    /// Sender hardware address.
    pub sha: MacAddr,
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target hardware address.
    pub tha: MacAddr,
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}

/// Operation code of a request.
pub const OP_REQUEST: u16 = 1;
/// Operation code of a reply.
pub const OP_REPLY: u16 = 2;

impl ArpMessage {
    /// True for a request.
    pub fn is_request(&self) -> bool {
        self.op == OP_REQUEST
    }

    /// True for a gratuitous announcement (sender and target address equal).
    pub fn is_gratuitous(&self) -> bool {
        self.spa == self.tpa
    }

    /// True for an address probe (RFC 5227: sender address 0.0.0.0).
    pub fn is_probe(&self) -> bool {
        self.spa.is_unspecified()
    }
}

/// Why an ARP payload was not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ArpError {
    /// Shorter than its address lengths say.
    #[error("truncated ARP message")]
    Truncated,
    /// Not Ethernet/IPv4 ARP.
    #[error("ARP for other than Ethernet/IPv4")]
    Unsupported,
}

/// Parses the payload of an Ethernet frame with EtherType 0x0806.
///
/// # Errors
/// [`ArpError`] if it is truncated or not Ethernet/IPv4 ARP.
#[inline]
pub fn parse(payload: &[u8]) -> Result<ArpMessage, ArpError> {
    let a = ArpPacketSlice::from_slice(payload).map_err(|_| ArpError::Truncated)?;
    if a.hw_addr_type() != ArpHardwareId::ETHERNET
        || a.proto_addr_type() != EtherType::IPV4
        || a.hw_addr_size() != 6
        || a.proto_addr_size() != 4
    {
        return Err(ArpError::Unsupported);
    }
    let ip = |s: &[u8]| -> Result<Ipv4Addr, ArpError> {
        let b: [u8; 4] = s.try_into().map_err(|_| ArpError::Truncated)?;
        Ok(Ipv4Addr::from(b))
    };
    Ok(ArpMessage {
        op: a.operation().0,
        sha: MacAddr::from_slice(a.sender_hw_addr()).ok_or(ArpError::Truncated)?,
        spa: ip(a.sender_protocol_addr())?,
        tha: MacAddr::from_slice(a.target_hw_addr()).ok_or(ArpError::Truncated)?,
        tpa: ip(a.target_protocol_addr())?,
    })
}

/// Writes the Ethernet frame answering request `req` with `answer` (the MAC that owns
/// `req.tpa`) into `out`; returns its length, or `None` if `out` is shorter than
/// [`REPLY_FRAME_LEN`].
#[inline]
pub fn build_reply(req: &ArpMessage, answer: MacAddr, out: &mut [u8]) -> Option<usize> {
    let out = out.get_mut(..REPLY_FRAME_LEN)?;
    let eth = etherparse::Ethernet2Header {
        destination: req.sha.octets(),
        source: answer.octets(),
        ether_type: EtherType::ARP,
    };
    out[..ETH_LEN].copy_from_slice(&eth.to_bytes());
    let arp = ArpEthIpv4Packet {
        operation: ArpOperation::REPLY,
        sender_mac: answer.octets(),
        sender_ipv4: req.tpa.octets(),
        target_mac: req.sha.octets(),
        target_ipv4: req.spa.octets(),
    };
    out[ETH_LEN..].copy_from_slice(&arp.to_bytes());
    Some(REPLY_FRAME_LEN)
}

/// A key: an IPv4 address within one tenant network.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ArpKey {
    /// The network.
    pub vni: Vni,
    /// The address.
    pub ip: Ipv4Addr,
}

impl TableKey for ArpKey {
    #[inline]
    fn hash_with(&self, seed: u64) -> u64 {
        mix(
            u64::from(self.ip.to_bits()),
            u64::from(self.vni.get()),
            seed,
        )
    }
}

/// What the table knows of an address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ArpEntry {
    /// The owner.
    pub mac: MacAddr,
    /// When last seen (static: when installed).
    pub last_seen: Timestamp,
    /// Installed by the control plane.
    pub is_static: bool,
}

/// ARP table sizing and timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpConfig {
    /// Maximum entries.
    pub capacity: usize,
    /// Lifetime of snooped entries.
    pub aging: Duration,
}

impl Default for ArpConfig {
    fn default() -> Self {
        ArpConfig {
            capacity: 1 << 18,
            aging: Duration::from_secs(300),
        }
    }
}

/// Control-plane errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArpTableError {
    /// No room.
    #[error("ARP table is full ({capacity} entries): cannot add {ip} in VNI {vni}")]
    Full {
        /// The network.
        vni: Vni,
        /// The address.
        ip: Ipv4Addr,
        /// The capacity.
        capacity: usize,
    },
    /// A static entry must map to a unicast station address.
    #[error("ARP entry {ip} in VNI {vni}: {mac} is not a unicast station address")]
    InvalidMac {
        /// The network.
        vni: Vni,
        /// The address.
        ip: Ipv4Addr,
        /// The rejected MAC.
        mac: MacAddr,
    },
}

/// What snooping did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Snoop {
    /// New or changed entry.
    Updated,
    /// Already known with this MAC; refreshed.
    Refreshed,
    /// A static entry says otherwise, or the address is not a host address: ignored.
    Ignored,
    /// The table is full: not stored.
    Full,
}

/// The ARP suppression table.
pub struct ArpTable {
    map: FixedMap<ArpKey, ArpEntry>,
    config: ArpConfig,
    cursor: usize,
    journal: Option<Vec<Snooped>>,
    journal_overflow: u64,
    dirty: Option<crate::table::DirtyLog<ArpKey>>,
}

/// An address binding one datapath worker snooped that the others must learn too (see
/// [`ArpTable::enable_journal`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Snooped {
    /// The network.
    pub vni: Vni,
    /// The address.
    pub ip: Ipv4Addr,
    /// Its owner.
    pub mac: MacAddr,
}

impl ArpTable {
    /// An empty table.
    pub fn new(config: ArpConfig, seed: u64) -> ArpTable {
        ArpTable {
            map: FixedMap::with_capacity(config.capacity, seed),
            config,
            cursor: 0,
            journal: None,
            journal_overflow: 0,
            dirty: None,
        }
    }

    /// Records the key of every change in a log of at most `capacity` keys, for a mirror.
    pub fn enable_mirror(&mut self, capacity: usize) {
        self.dirty = Some(crate::table::DirtyLog::with_capacity(capacity));
    }

    /// Hands the keys changed since the last call to `f`; returns true if too many changed to
    /// list (rebuild the mirror from [`ArpTable::entries`]).
    pub fn drain_dirty(&mut self, f: impl FnMut(ArpKey)) -> bool {
        self.dirty.as_mut().is_some_and(|d| d.drain(f))
    }

    #[inline]
    fn mark(&mut self, key: ArpKey) {
        if let Some(d) = self.dirty.as_mut() {
            d.mark(key);
        }
    }

    /// The entry for `ip` in `vni`, expired or not.
    pub fn get(&self, vni: Vni, ip: Ipv4Addr) -> Option<&ArpEntry> {
        self.map.get(&ArpKey { vni, ip })
    }

    /// Records every new or changed binding, and a refresh once per quarter of the aging time,
    /// in a journal of at most `capacity` events that [`ArpTable::drain_journal`] empties.
    pub fn enable_journal(&mut self, capacity: usize) {
        self.journal = Some(Vec::with_capacity(capacity));
    }

    /// Hands the journaled events to `f` and empties the journal.
    pub fn drain_journal(&mut self, mut f: impl FnMut(Snooped)) {
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

    /// Applies a binding another worker snooped, without journaling it again.
    pub fn snoop_remote(&mut self, e: Snooped, now: Timestamp) -> Snoop {
        let journal = self.journal.take();
        let r = self.snoop(e.vni, e.ip, e.mac, now);
        self.journal = journal;
        r
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The MAC owning `ip` in `vni`, if known and fresh.
    #[inline]
    pub fn lookup(&self, vni: Vni, ip: Ipv4Addr, now: Timestamp) -> Option<MacAddr> {
        let e = self.map.get(&ArpKey { vni, ip })?;
        (e.is_static || now.since(e.last_seen) < self.config.aging).then_some(e.mac)
    }

    /// Records that `mac` claims `ip` in `vni` (from an ARP message's sender fields).
    #[inline]
    pub fn snoop(&mut self, vni: Vni, ip: Ipv4Addr, mac: MacAddr, now: Timestamp) -> Snoop {
        let previous = self
            .journal
            .as_ref()
            .and_then(|_| self.map.get(&ArpKey { vni, ip }))
            .map(|e| e.last_seen);
        let r = self.snoop_inner(vni, ip, mac, now);
        if r == Snoop::Updated {
            self.mark(ArpKey { vni, ip });
        }
        let due = match r {
            Snoop::Updated => true,
            Snoop::Refreshed => {
                previous.is_some_and(|p| crate::fdb::crosses_period(p, now, self.config.aging / 4))
            }
            Snoop::Ignored | Snoop::Full => false,
        };
        if due {
            if let Some(j) = self.journal.as_mut() {
                if j.len() < j.capacity() {
                    j.push(Snooped { vni, ip, mac });
                } else {
                    self.journal_overflow += 1;
                }
            }
        }
        r
    }

    #[inline]
    fn snoop_inner(&mut self, vni: Vni, ip: Ipv4Addr, mac: MacAddr, now: Timestamp) -> Snoop {
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || !mac.is_valid_source() {
            return Snoop::Ignored;
        }
        let key = ArpKey { vni, ip };
        if let Some(e) = self.map.get_mut(&key) {
            if e.is_static {
                return Snoop::Ignored;
            }
            let changed = e.mac != mac;
            e.mac = mac;
            e.last_seen = now;
            return if changed {
                Snoop::Updated
            } else {
                Snoop::Refreshed
            };
        }
        let entry = ArpEntry {
            mac,
            last_seen: now,
            is_static: false,
        };
        match self.map.insert(key, entry) {
            Ok(_) => Snoop::Updated,
            Err(_) => Snoop::Full,
        }
    }

    /// Installs a static entry.
    ///
    /// # Errors
    /// [`ArpTableError`] for a non-unicast MAC or a full table.
    pub fn insert_static(
        &mut self,
        vni: Vni,
        ip: Ipv4Addr,
        mac: MacAddr,
        now: Timestamp,
    ) -> Result<(), ArpTableError> {
        if !mac.is_valid_source() {
            return Err(ArpTableError::InvalidMac { vni, ip, mac });
        }
        let entry = ArpEntry {
            mac,
            last_seen: now,
            is_static: true,
        };
        self.mark(ArpKey { vni, ip });
        self.map
            .insert(ArpKey { vni, ip }, entry)
            .map(|_| ())
            .map_err(|_| ArpTableError::Full {
                vni,
                ip,
                capacity: self.map.capacity(),
            })
    }

    /// Removes the entry for `ip` in `vni`.
    pub fn remove(&mut self, vni: Vni, ip: Ipv4Addr) -> Option<ArpEntry> {
        self.mark(ArpKey { vni, ip });
        self.map.remove(&ArpKey { vni, ip })
    }

    /// Removes every entry of `vni`.
    pub fn flush_vni(&mut self, vni: Vni) -> usize {
        let dirty = &mut self.dirty;
        self.map.remove_where(|k, _| {
            let hit = k.vni == vni;
            if hit {
                if let Some(d) = dirty.as_mut() {
                    d.mark(*k);
                }
            }
            hit
        })
    }

    /// Removes every expired snooped entry.
    pub fn age(&mut self, now: Timestamp) -> usize {
        let n = self.map.slot_count();
        self.age_step(now, n)
    }

    /// Ages `budget` slots, continuing from the last call.
    pub fn age_step(&mut self, now: Timestamp, budget: usize) -> usize {
        let aging = self.config.aging;
        let dirty = &mut self.dirty;
        self.map.sweep(&mut self.cursor, budget, |k, e| {
            let hit = !e.is_static && now.since(e.last_seen) >= aging;
            if hit {
                if let Some(d) = dirty.as_mut() {
                    d.mark(*k);
                }
            }
            hit
        })
    }

    /// All entries.
    pub fn entries(&self) -> impl Iterator<Item = (ArpKey, ArpEntry)> + '_ {
        self.map.iter().map(|(k, v)| (*k, *v))
    }
}

impl std::fmt::Debug for ArpTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArpTable")
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // A request from 192.168.1.1 (02:..:01) for 192.168.1.2, as sent on the wire.
    static REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, //
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 192, 168, 1, 1, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 192, 168, 1, 2,
    ];

    fn vni() -> Vni {
        Vni::new(10).unwrap()
    }

    #[test]
    fn parses_a_request() {
        let m = parse(&REQUEST).unwrap();
        assert!(m.is_request());
        assert_eq!(m.sha, MacAddr([2, 0, 0, 0, 0, 1]));
        assert_eq!(m.spa, Ipv4Addr::new(192, 168, 1, 1));
        assert_eq!(m.tpa, Ipv4Addr::new(192, 168, 1, 2));
        assert!(!m.is_gratuitous());
        assert!(!m.is_probe());
    }

    #[test]
    fn rejects_truncated_and_foreign_arp() {
        for n in 0..REQUEST.len() {
            assert!(parse(&REQUEST[..n]).is_err(), "length {n}");
        }
        let mut ipv6ish = REQUEST;
        ipv6ish[2] = 0x86;
        ipv6ish[3] = 0xdd;
        assert_eq!(parse(&ipv6ish), Err(ArpError::Unsupported));
    }

    #[test]
    fn reply_answers_the_request_exactly() {
        let req = parse(&REQUEST).unwrap();
        let owner = MacAddr([2, 0, 0, 0, 0, 2]);
        let mut out = [0xa5u8; 64];
        let n = build_reply(&req, owner, &mut out).unwrap();
        assert_eq!(n, 42);
        assert_eq!(&out[0..6], &req.sha.octets(), "to the requester");
        assert_eq!(&out[6..12], &owner.octets(), "from the owner");
        assert_eq!(&out[12..14], &[0x08, 0x06]);
        let rep = parse(&out[14..n]).unwrap();
        assert_eq!(rep.op, OP_REPLY);
        assert_eq!((rep.sha, rep.spa), (owner, req.tpa));
        assert_eq!((rep.tha, rep.tpa), (req.sha, req.spa));
        assert_eq!(out[n], 0xa5, "nothing written past the frame");
        assert!(build_reply(&req, owner, &mut [0u8; 41]).is_none());
    }

    #[test]
    fn snooping_learns_refreshes_and_respects_statics() {
        let mut t = ArpTable::new(ArpConfig::default(), 1);
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        let m1 = MacAddr([2, 0, 0, 0, 0, 1]);
        let m2 = MacAddr([2, 0, 0, 0, 0, 2]);
        assert_eq!(t.snoop(vni(), ip, m1, Timestamp::ZERO), Snoop::Updated);
        assert_eq!(t.snoop(vni(), ip, m1, Timestamp::ZERO), Snoop::Refreshed);
        assert_eq!(t.lookup(vni(), ip, Timestamp::ZERO), Some(m1));
        assert_eq!(t.lookup(Vni::new(11).unwrap(), ip, Timestamp::ZERO), None);
        t.insert_static(vni(), ip, m2, Timestamp::ZERO).unwrap();
        assert_eq!(t.snoop(vni(), ip, m1, Timestamp::ZERO), Snoop::Ignored);
        assert_eq!(
            t.lookup(vni(), ip, Timestamp::from_secs(1_000_000)),
            Some(m2)
        );
        assert_eq!(
            t.snoop(vni(), Ipv4Addr::UNSPECIFIED, m1, Timestamp::ZERO),
            Snoop::Ignored
        );
        assert_eq!(
            t.snoop(
                vni(),
                Ipv4Addr::new(10, 0, 0, 9),
                MacAddr::BROADCAST,
                Timestamp::ZERO
            ),
            Snoop::Ignored
        );
    }

    #[test]
    fn snooped_entries_age_out() {
        let mut t = ArpTable::new(
            ArpConfig {
                capacity: 8,
                aging: Duration::from_secs(10),
            },
            1,
        );
        let m = MacAddr([2, 0, 0, 0, 0, 1]);
        t.snoop(vni(), Ipv4Addr::new(10, 0, 0, 1), m, Timestamp::ZERO);
        t.snoop(
            vni(),
            Ipv4Addr::new(10, 0, 0, 2),
            m,
            Timestamp::from_secs(5),
        );
        assert_eq!(
            t.lookup(vni(), Ipv4Addr::new(10, 0, 0, 1), Timestamp::from_secs(10)),
            None
        );
        assert_eq!(t.age(Timestamp::from_secs(10)), 1);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn full_table_is_reported() {
        let mut t = ArpTable::new(
            ArpConfig {
                capacity: 1,
                aging: Duration::from_secs(10),
            },
            1,
        );
        let m = MacAddr([2, 0, 0, 0, 0, 1]);
        assert_eq!(
            t.snoop(vni(), Ipv4Addr::new(10, 0, 0, 1), m, Timestamp::ZERO),
            Snoop::Updated
        );
        assert_eq!(
            t.snoop(vni(), Ipv4Addr::new(10, 0, 0, 2), m, Timestamp::ZERO),
            Snoop::Full
        );
        assert!(matches!(
            t.insert_static(vni(), Ipv4Addr::new(10, 0, 0, 3), m, Timestamp::ZERO),
            Err(ArpTableError::Full { .. })
        ));
    }

    proptest! {
        #[test]
        fn reply_parse_round_trip(sha in any::<[u8; 6]>(), spa in any::<u32>(), tpa in any::<u32>(), owner in any::<[u8; 6]>()) {
            let req = ArpMessage { op: OP_REQUEST, sha: MacAddr(sha), spa: Ipv4Addr::from(spa), tha: MacAddr::ZERO, tpa: Ipv4Addr::from(tpa) };
            let mut out = [0u8; REPLY_FRAME_LEN];
            build_reply(&req, MacAddr(owner), &mut out).unwrap();
            let rep = parse(&out[ETH_LEN..]).unwrap();
            prop_assert_eq!(rep, ArpMessage { op: OP_REPLY, sha: MacAddr(owner), spa: req.tpa, tha: req.sha, tpa: req.spa });
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&bytes);
        }
    }
}
