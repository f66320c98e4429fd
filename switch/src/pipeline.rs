//! The switching decision: a frame, where it came from, the tables and the time → a [`Verdict`].
//!
//! This is the one definition of the switch's behaviour; every port backend runs it and the XDP
//! program mirrors it. It never allocates, locks, logs or panics on any input.
//!
//! From a port, in order:
//! 1. Ethernet header present ([`DropReason::Truncated`]); source MAC unicast and non-zero.
//! 2. Port security: the source MAC (and an ARP sender MAC) must be the port's MAC when one is
//!    set; IPv4 and ARP sender addresses must be among the port's IPs when any are set (0.0.0.0 is
//!    allowed, for DHCP and ARP probes); VLAN-tagged frames are refused on such ports.
//! 3. Learn source MAC → port. A MAC pinned elsewhere by a static entry is dropped.
//! 4. ARP: snoop the sender into the ARP table; answer a request the table can answer
//!    ([`Verdict::Reply`]) instead of flooding it.
//! 5. Destination: group → flood in the VNI; known → that port or that VTEP; unknown → flood.
//!
//! From the underlay: decapsulate (see [`crate::tunnel::decapsulate`]), require a configured
//! peer that shares the VNI and a VNI with local ports, learn inner source MAC → VTEP, snoop ARP,
//! then deliver to local ports only (split horizon: never back into a tunnel).
//!
//! Isolation: the FDB and ARP tables are keyed by VNI, floods use the VNI's member list, and a
//! forward to a port of another VNI is refused ([`DropReason::VniMismatch`]).

use std::net::Ipv4Addr;

use crate::arp::{self, ArpConfig, ArpTable, Snoop};
use crate::clock::Timestamp;
use crate::fdb::{Dest, Fdb, FdbConfig, Learn};
use crate::mac::MacAddr;
use crate::port::PortId;
use crate::stats::{DropReason, Stats, MAX_PORTS};
use crate::tunnel::{self, DecapError, LocalVtep, PeerError, PeerId, PeerTable, PeerVnis, Vni};

/// Byte ranges of an Ethernet frame.
pub mod eth {
    use std::ops::Range;
    /// Destination MAC.
    pub const DST: Range<usize> = 0..6;
    /// Source MAC.
    pub const SRC: Range<usize> = 6..12;
    /// EtherType.
    pub const ETHER_TYPE: Range<usize> = 12..14;
    /// Header length (untagged).
    pub const HEADER_LEN: usize = 14;
    /// EtherType IPv4.
    pub const TYPE_IPV4: u16 = 0x0800;
    /// EtherType ARP.
    pub const TYPE_ARP: u16 = 0x0806;
    /// EtherType 802.1Q VLAN tag.
    pub const TYPE_VLAN: u16 = 0x8100;
    /// EtherType 802.1ad service tag.
    pub const TYPE_QINQ: u16 = 0x88a8;
}

/// Offset of the IPv4 source address within an IPv4 header.
const IPV4_SRC: std::ops::Range<usize> = 12..16;

/// What happens to a frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// Deliver to one local port.
    Forward(PortId),
    /// Encapsulate to one peer.
    Tunnel {
        /// The peer.
        peer: PeerId,
        /// The network.
        vni: Vni,
    },
    /// Deliver to every member of the VNI except the ingress (and, from a tunnel, to local ports
    /// only).
    Flood(Vni),
    /// Send the reply of this length, written into the caller's reply buffer, back out the
    /// ingress port.
    Reply(usize),
    /// Drop and count.
    Drop(DropReason),
}

/// Port security and membership of one port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// The port's network.
    pub vni: Vni,
    /// When set, the only source MAC the port may send from.
    pub mac: Option<MacAddr>,
    /// When non-empty, the only source IPv4 addresses the port may send from.
    pub ips: Vec<Ipv4Addr>,
}

impl PortConfig {
    /// A port in `vni` without port security.
    pub fn open(vni: Vni) -> PortConfig {
        PortConfig {
            vni,
            mac: None,
            ips: Vec::new(),
        }
    }
}

/// Local ports and peers of one VNI: the flood list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    /// Local ports.
    pub ports: Vec<PortId>,
    /// Peers for head-end replication.
    pub peers: Vec<PeerId>,
}

/// Errors changing the tables.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TablesError {
    /// No free port id.
    #[error("port table full ({0} ports)")]
    PortsFull(usize),
    /// No such port.
    #[error("no port {0}")]
    NoSuchPort(PortId),
    /// Peers need an uplink.
    #[error("no uplink configured: peers need a local VTEP")]
    NoUplink,
    /// A peer table error.
    #[error(transparent)]
    Peer(#[from] PeerError),
}

/// Table sizing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TablesConfig {
    /// The FDB.
    pub fdb: FdbConfig,
    /// The ARP table.
    pub arp: ArpConfig,
    /// Storm control on every port.
    pub storm: crate::storm::StormConfig,
}

/// Everything the decision reads and learns into.
pub struct Tables {
    /// The forwarding database.
    pub fdb: Fdb,
    /// The ARP suppression table.
    pub arp: ArpTable,
    ports: Vec<Option<PortConfig>>,
    /// Storm-control buckets, by port slot.
    storms: Vec<crate::storm::PortStorm>,
    storm: crate::storm::StormConfig,
    tunnels: Option<PeerTable>,
    /// Flood lists, sorted by VNI.
    members: Vec<(Vni, Members)>,
}

/// A frame from the underlay after the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnderlayDecision<'a> {
    /// What to do with the inner frame.
    pub verdict: Verdict,
    /// The sending peer, when known.
    pub peer: Option<PeerId>,
    /// The inner frame (empty when dropped before decapsulation).
    pub inner: &'a [u8],
}

impl Tables {
    /// Empty tables; `seed` keys the hash tables (use a random one outside tests).
    pub fn new(config: TablesConfig, seed: u64) -> Tables {
        Tables {
            fdb: Fdb::new(config.fdb, seed),
            arp: ArpTable::new(config.arp, seed.rotate_left(32)),
            ports: Vec::new(),
            storms: Vec::new(),
            storm: config.storm,
            tunnels: None,
            members: Vec::new(),
        }
    }

    /// Adds a port; returns its id.
    ///
    /// # Errors
    /// [`TablesError::PortsFull`] when every id is taken.
    pub fn add_port(&mut self, config: PortConfig) -> Result<PortId, TablesError> {
        let slot = match self.ports.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.ports.len() < MAX_PORTS => {
                self.ports.push(None);
                self.storms
                    .push(crate::storm::PortStorm::new(self.storm, Timestamp::ZERO));
                self.ports.len() - 1
            }
            None => return Err(TablesError::PortsFull(MAX_PORTS)),
        };
        self.ports[slot] = Some(config);
        // Full buckets for the port (as of time zero: the first frame finds them full).
        if let Some(s) = self.storms.get_mut(slot) {
            *s = crate::storm::PortStorm::new(self.storm, Timestamp::ZERO);
        }
        self.rebuild_members();
        // slot < MAX_PORTS <= u16::MAX.
        Ok(PortId::new(slot as u16))
    }

    /// Removes a port and every FDB entry pointing at it.
    ///
    /// # Errors
    /// [`TablesError::NoSuchPort`].
    pub fn remove_port(&mut self, id: PortId) -> Result<PortConfig, TablesError> {
        let cfg = self
            .ports
            .get_mut(usize::from(id.get()))
            .and_then(Option::take)
            .ok_or(TablesError::NoSuchPort(id))?;
        self.fdb.flush_dest(Dest::Port(id));
        self.rebuild_members();
        Ok(cfg)
    }

    /// The configuration of port `id`.
    #[inline]
    pub fn port(&self, id: PortId) -> Option<&PortConfig> {
        self.ports.get(usize::from(id.get()))?.as_ref()
    }

    /// All ports.
    pub fn ports(&self) -> impl Iterator<Item = (PortId, &PortConfig)> {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (PortId::new(i as u16), p)))
    }

    /// Sets this host's VTEP, enabling tunnels. Existing peers are kept only if the VTEP is
    /// unchanged.
    pub fn set_local_vtep(&mut self, local: LocalVtep) {
        if self.tunnels.as_ref().map(|t| *t.local()) != Some(local) {
            let old: Vec<Dest> = self
                .tunnels
                .iter()
                .flat_map(|t| t.iter().map(|(id, _)| Dest::Vtep(id)))
                .collect();
            for d in old {
                self.fdb.flush_dest(d);
            }
            self.tunnels = Some(PeerTable::new(local));
            self.rebuild_members();
        }
    }

    /// The peer table, if an uplink is configured.
    pub fn peers(&self) -> Option<&PeerTable> {
        self.tunnels.as_ref()
    }

    /// Adds a peer.
    ///
    /// # Errors
    /// [`TablesError::NoUplink`] without a local VTEP; [`TablesError::Peer`] otherwise.
    pub fn add_peer(
        &mut self,
        addr: Ipv4Addr,
        next_hop: MacAddr,
        vnis: PeerVnis,
    ) -> Result<PeerId, TablesError> {
        let t = self.tunnels.as_mut().ok_or(TablesError::NoUplink)?;
        let id = t.add(addr, next_hop, vnis)?;
        self.rebuild_members();
        Ok(id)
    }

    /// Sets the bytes the path to peer `id` adds beyond plain VXLAN (a secure tunnel's).
    pub fn set_peer_overhead(&mut self, id: PeerId, overhead: usize) {
        if let Some(t) = self.tunnels.as_mut() {
            t.set_overhead(id, overhead);
        }
    }

    /// Removes a peer and every FDB entry pointing at it.
    ///
    /// # Errors
    /// [`TablesError::NoUplink`] or [`TablesError::Peer`].
    pub fn remove_peer(&mut self, addr: Ipv4Addr) -> Result<PeerId, TablesError> {
        let t = self.tunnels.as_mut().ok_or(TablesError::NoUplink)?;
        let id = t.remove(addr)?;
        self.fdb.flush_dest(Dest::Vtep(id));
        self.rebuild_members();
        Ok(id)
    }

    /// The networks that have local ports.
    pub fn vnis(&self) -> impl Iterator<Item = Vni> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| !m.ports.is_empty())
            .map(|(v, _)| *v)
    }

    /// The flood list of `vni`.
    #[inline]
    pub fn members(&self, vni: Vni) -> Option<&Members> {
        self.members
            .binary_search_by_key(&vni, |(v, _)| *v)
            .ok()
            .map(|i| &self.members[i].1)
    }

    fn rebuild_members(&mut self) {
        let mut members: Vec<(Vni, Members)> = Vec::new();
        for (id, cfg) in self.ports() {
            match members.binary_search_by_key(&cfg.vni, |(v, _)| *v) {
                Ok(i) => members[i].1.ports.push(id),
                Err(i) => members.insert(
                    i,
                    (
                        cfg.vni,
                        Members {
                            ports: vec![id],
                            peers: Vec::new(),
                        },
                    ),
                ),
            }
        }
        if let Some(t) = &self.tunnels {
            for (vni, m) in members.iter_mut() {
                m.peers = t
                    .iter()
                    .filter(|(_, p)| p.vnis.contains(*vni))
                    .map(|(id, _)| id)
                    .collect();
            }
        }
        self.members = members;
    }

    /// Decides the fate of `frame`, received on `port` at `now`. A [`Verdict::Reply`] has been
    /// written into `reply` (which should hold [`arp::REPLY_FRAME_LEN`] bytes).
    #[inline]
    pub fn decide_port(
        &mut self,
        port: PortId,
        frame: &[u8],
        now: Timestamp,
        stats: &Stats,
        reply: &mut [u8],
    ) -> Verdict {
        let Some(cfg) = self
            .ports
            .get(usize::from(port.get()))
            .and_then(Option::as_ref)
        else {
            return Verdict::Drop(DropReason::NoSuchPort);
        };
        let (Some(dst), Some(src), Some(et)) = (
            frame.get(eth::DST).and_then(MacAddr::from_slice),
            frame.get(eth::SRC).and_then(MacAddr::from_slice),
            frame.get(eth::ETHER_TYPE),
        ) else {
            return Verdict::Drop(DropReason::Truncated);
        };
        let ether_type = u16::from_be_bytes([et[0], et[1]]);
        let payload = &frame[eth::HEADER_LEN..];
        if !src.is_valid_source() {
            return Verdict::Drop(DropReason::InvalidSourceMac);
        }
        if cfg.mac.is_some_and(|m| m != src) {
            return Verdict::Drop(DropReason::SpoofedMac);
        }
        let vni = cfg.vni;

        // Port security on IPv4 and ARP senders; parse ARP once for the later steps too.
        let mut arp_msg = None;
        match ether_type {
            eth::TYPE_ARP => match arp::parse(payload) {
                Ok(m) => {
                    if cfg.mac.is_some_and(|mac| mac != m.sha) {
                        return Verdict::Drop(DropReason::SpoofedMac);
                    }
                    if !cfg.ips.is_empty() && !m.is_probe() && !cfg.ips.contains(&m.spa) {
                        return Verdict::Drop(DropReason::SpoofedIp);
                    }
                    arp_msg = Some(m);
                }
                Err(arp::ArpError::Unsupported) if cfg.ips.is_empty() => {}
                Err(_) => return Verdict::Drop(DropReason::MalformedArp),
            },
            eth::TYPE_IPV4 if !cfg.ips.is_empty() => {
                let Some(s) = payload.get(IPV4_SRC) else {
                    return Verdict::Drop(DropReason::Truncated);
                };
                let ip = Ipv4Addr::new(s[0], s[1], s[2], s[3]);
                if !ip.is_unspecified() && !cfg.ips.contains(&ip) {
                    return Verdict::Drop(DropReason::SpoofedIp);
                }
            }
            eth::TYPE_VLAN | eth::TYPE_QINQ if !cfg.ips.is_empty() => {
                return Verdict::Drop(DropReason::TaggedFrame);
            }
            _ => {}
        }

        // Storm control: a station this port has not introduced before takes a token.
        if self.storm.new_macs.is_limited()
            && self.fdb.get(vni, src).is_none()
            && !self.storm_allows(port, now, |s| &mut s.new_macs)
        {
            return Verdict::Drop(DropReason::StormNewMac);
        }
        if let Some(reason) = self.learn(vni, src, Dest::Port(port), now, stats) {
            return Verdict::Drop(reason);
        }

        if let Some(m) = arp_msg {
            if !m.is_probe() && self.arp.snoop(vni, m.spa, m.sha, now) != Snoop::Ignored {
                Stats::event(&stats.events.arp_snooped);
            }
            if m.is_request() && !m.is_gratuitous() {
                if let Some(owner) = self.arp.lookup(vni, m.tpa, now) {
                    if owner != m.sha {
                        if let Some(n) = arp::build_reply(&m, owner, reply) {
                            Stats::event(&stats.events.arp_replies);
                            return Verdict::Reply(n);
                        }
                    }
                }
            }
        }

        if dst.is_multicast() {
            return self.flood_from(port, vni, now);
        }
        match self.fdb.lookup(vni, dst, now) {
            Some(Dest::Port(p)) if p == port => Verdict::Drop(DropReason::SamePort),
            Some(Dest::Port(p)) => {
                if self.port(p).is_some_and(|c| c.vni == vni) {
                    Verdict::Forward(p)
                } else {
                    Verdict::Drop(DropReason::VniMismatch)
                }
            }
            Some(Dest::Vtep(peer)) => Verdict::Tunnel { peer, vni },
            None => {
                Stats::event(&stats.events.unknown_unicast);
                self.flood_from(port, vni, now)
            }
        }
    }

    /// A flood of a frame from `port`, if its BUM bucket allows one more.
    #[inline]
    fn flood_from(&mut self, port: PortId, vni: Vni, now: Timestamp) -> Verdict {
        if self.storm.bum.is_limited() && !self.storm_allows(port, now, |s| &mut s.bum) {
            return Verdict::Drop(DropReason::StormBum);
        }
        Verdict::Flood(vni)
    }

    /// Takes a token from one of `port`'s buckets.
    #[inline]
    fn storm_allows(
        &mut self,
        port: PortId,
        now: Timestamp,
        bucket: impl FnOnce(&mut crate::storm::PortStorm) -> &mut crate::storm::TokenBucket,
    ) -> bool {
        self.storms
            .get_mut(usize::from(port.get()))
            .is_none_or(|s| bucket(s).allow(now))
    }

    /// Decides the fate of `frame`, received on the uplink at `now`.
    #[inline]
    pub fn decide_underlay<'a>(
        &mut self,
        frame: &'a [u8],
        now: Timestamp,
        stats: &Stats,
    ) -> UnderlayDecision<'a> {
        let drop = |reason| UnderlayDecision {
            verdict: Verdict::Drop(reason),
            peer: None,
            inner: &[],
        };
        let Some(tunnels) = &self.tunnels else {
            return drop(DropReason::NoUplink);
        };
        let d = match tunnel::decapsulate(frame, tunnels.local()) {
            Ok(d) => d,
            Err(e) => {
                return drop(match e {
                    DecapError::Truncated => DropReason::Truncated,
                    DecapError::NotVxlan => DropReason::NotVxlan,
                    DecapError::BadIpChecksum => DropReason::BadIpChecksum,
                    DecapError::BadIpLength => DropReason::BadIpLength,
                    DecapError::Fragmented => DropReason::Fragmented,
                    DecapError::BadUdpLength => DropReason::BadUdpLength,
                    DecapError::BadUdpChecksum => DropReason::BadUdpChecksum,
                    DecapError::BadVxlanFlags => DropReason::BadVxlanFlags,
                })
            }
        };
        let Some(peer) = tunnels.id_of(d.src) else {
            return drop(DropReason::UnknownPeer);
        };
        let Some(members) = self.members(d.vni) else {
            return drop(DropReason::UnknownVni);
        };
        if members.ports.is_empty() {
            return drop(DropReason::UnknownVni);
        }
        if !tunnels.get(peer).is_some_and(|p| p.vnis.contains(d.vni)) {
            return drop(DropReason::VniNotShared);
        }
        let verdict = self.decide_tunnel(peer, d.vni, d.inner, now, stats);
        UnderlayDecision {
            verdict,
            peer: Some(peer),
            inner: d.inner,
        }
    }

    /// The decision for an inner frame from `peer` in `vni`.
    #[inline]
    fn decide_tunnel(
        &mut self,
        peer: PeerId,
        vni: Vni,
        frame: &[u8],
        now: Timestamp,
        stats: &Stats,
    ) -> Verdict {
        let (Some(dst), Some(src), Some(et)) = (
            frame.get(eth::DST).and_then(MacAddr::from_slice),
            frame.get(eth::SRC).and_then(MacAddr::from_slice),
            frame.get(eth::ETHER_TYPE),
        ) else {
            return Verdict::Drop(DropReason::Truncated);
        };
        if !src.is_valid_source() {
            return Verdict::Drop(DropReason::InvalidSourceMac);
        }
        if let Some(reason) = self.learn(vni, src, Dest::Vtep(peer), now, stats) {
            return Verdict::Drop(reason);
        }
        if u16::from_be_bytes([et[0], et[1]]) == eth::TYPE_ARP {
            if let Ok(m) = arp::parse(&frame[eth::HEADER_LEN..]) {
                if !m.is_probe() && self.arp.snoop(vni, m.spa, m.sha, now) != Snoop::Ignored {
                    Stats::event(&stats.events.arp_snooped);
                }
            }
        }
        if dst.is_multicast() {
            return Verdict::Flood(vni);
        }
        match self.fdb.lookup(vni, dst, now) {
            Some(Dest::Port(p)) => {
                if self.port(p).is_some_and(|c| c.vni == vni) {
                    Verdict::Forward(p)
                } else {
                    Verdict::Drop(DropReason::VniMismatch)
                }
            }
            Some(Dest::Vtep(_)) => Verdict::Drop(DropReason::TunnelToTunnel),
            None => {
                Stats::event(&stats.events.unknown_unicast);
                Verdict::Flood(vni)
            }
        }
    }

    /// Learns `src` behind `dest`; returns a drop reason if the frame must not pass.
    #[inline]
    fn learn(
        &mut self,
        vni: Vni,
        src: MacAddr,
        dest: Dest,
        now: Timestamp,
        stats: &Stats,
    ) -> Option<DropReason> {
        let ev = &stats.events;
        match self.fdb.learn(vni, src, dest, now) {
            Learn::Refreshed(_) => {}
            Learn::Learned => Stats::event(&ev.fdb_learned),
            Learn::Moved { .. } => Stats::event(&ev.fdb_moves),
            Learn::TableFull => Stats::event(&ev.fdb_full),
            Learn::SourceLimit => Stats::event(&ev.fdb_source_limit),
            Learn::StaticConflict => return Some(DropReason::StaticMacConflict),
        }
        None
    }
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tables")
            .field("fdb", &self.fdb)
            .field("arp", &self.arp)
            .field("ports", &self.ports.iter().flatten().count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::{EncapTemplate, OUTER_LEN, VXLAN_PORT};
    use proptest::prelude::*;

    const T0: Timestamp = Timestamp::ZERO;

    fn vni(v: u32) -> Vni {
        Vni::new(v).unwrap()
    }
    fn mac(i: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, i])
    }
    fn local_vtep(i: u8) -> LocalVtep {
        LocalVtep {
            addr: Ipv4Addr::new(10, 0, 0, i),
            mac: MacAddr([2, 0xee, 0, 0, 0, i]),
            udp_port: VXLAN_PORT,
        }
    }
    fn small() -> Tables {
        let mut c = TablesConfig::default();
        c.fdb.capacity = 1024;
        c.arp.capacity = 1024;
        Tables::new(c, 1)
    }
    fn frame(dst: MacAddr, src: MacAddr, ether_type: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&ether_type.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    fn ipv4_from(src: Ipv4Addr) -> Vec<u8> {
        let h = etherparse::Ipv4Header::new(
            0,
            64,
            etherparse::IpNumber::UDP,
            src.octets(),
            [10, 9, 9, 9],
        )
        .unwrap();
        h.to_bytes().to_vec()
    }
    fn arp_request(sha: MacAddr, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
        let a = etherparse::ArpEthIpv4Packet {
            operation: etherparse::ArpOperation::REQUEST,
            sender_mac: sha.octets(),
            sender_ipv4: spa.octets(),
            target_mac: [0; 6],
            target_ipv4: tpa.octets(),
        };
        frame(MacAddr::BROADCAST, sha, eth::TYPE_ARP, &a.to_bytes())
    }

    struct Fixture {
        t: Tables,
        stats: Stats,
        p1: PortId,
        p2: PortId,
        p3: PortId,
        reply: [u8; 64],
    }

    /// Ports p1, p2 in VNI 100 (p2 with port security), p3 in VNI 200.
    fn fixture() -> Fixture {
        let mut t = small();
        let p1 = t.add_port(PortConfig::open(vni(100))).unwrap();
        let p2 = t
            .add_port(PortConfig {
                vni: vni(100),
                mac: Some(mac(2)),
                ips: vec![Ipv4Addr::new(192, 168, 0, 2)],
            })
            .unwrap();
        let p3 = t.add_port(PortConfig::open(vni(200))).unwrap();
        Fixture {
            t,
            stats: Stats::default(),
            p1,
            p2,
            p3,
            reply: [0; 64],
        }
    }

    impl Fixture {
        fn port(&mut self, p: PortId, f: &[u8]) -> Verdict {
            self.t.decide_port(p, f, T0, &self.stats, &mut self.reply)
        }
    }

    #[test]
    fn storm_control_limits_bum_and_new_macs_per_port_and_spares_known_unicast() {
        use crate::storm::{Rate, StormConfig};
        let mut c = TablesConfig::default();
        c.fdb.capacity = 4096;
        c.storm = StormConfig {
            bum: Rate {
                per_sec: 100,
                burst: 10,
            },
            new_macs: Rate {
                per_sec: 10,
                burst: 5,
            },
        };
        let mut t = Tables::new(c, 1);
        let (p1, p2) = (
            t.add_port(PortConfig::open(vni(100))).unwrap(),
            t.add_port(PortConfig::open(vni(100))).unwrap(),
        );
        let stats = Stats::default();
        let mut reply = [0u8; 64];
        let ms = Timestamp::from_millis;
        // p2's station is known to everyone before the storm.
        let from_p2 = frame(MacAddr::BROADCAST, mac(2), 0x0800, &[0; 46]);
        assert_eq!(
            t.decide_port(p2, &from_p2, ms(0), &stats, &mut reply),
            Verdict::Flood(vni(100))
        );
        // A broadcast storm from p1: ten pass (the burst), the rest are dropped.
        let bcast = frame(MacAddr::BROADCAST, mac(1), 0x0800, &[0; 46]);
        let verdicts: Vec<Verdict> = (0..100)
            .map(|_| t.decide_port(p1, &bcast, ms(1), &stats, &mut reply))
            .collect();
        let flooded = verdicts
            .iter()
            .filter(|v| **v == Verdict::Flood(vni(100)))
            .count();
        assert_eq!(flooded, 10, "{verdicts:?}");
        assert_eq!(
            verdicts
                .iter()
                .filter(|v| **v == Verdict::Drop(DropReason::StormBum))
                .count(),
            90
        );
        // Known unicast from the storming port still goes through.
        let to_p2 = frame(mac(2), mac(1), 0x0800, &[0; 46]);
        assert_eq!(
            t.decide_port(p1, &to_p2, ms(1), &stats, &mut reply),
            Verdict::Forward(p2)
        );
        // p2's broadcast has its own bucket.
        assert_eq!(
            t.decide_port(p2, &from_p2, ms(1), &stats, &mut reply),
            Verdict::Flood(vni(100))
        );
        // 100 ms later p1 has earned ten more.
        let later = (0..100)
            .filter(|_| {
                t.decide_port(p1, &bcast, ms(101), &stats, &mut reply) == Verdict::Flood(vni(100))
            })
            .count();
        assert_eq!(later, 10);
        // A MAC flood from p1: what is left of the new-station bucket (burst 5, less mac(1)'s
        // token, plus one earned in the 100 ms since) is learned, the rest dropped and not
        // learned; known stations are unaffected.
        let before = t.fdb.len();
        let mut refused = 0;
        for i in 0..50u8 {
            let f = frame(mac(2), MacAddr([2, 1, 0, 0, 0, i]), 0x0800, &[0; 46]);
            refused += usize::from(
                t.decide_port(p1, &f, ms(101), &stats, &mut reply)
                    == Verdict::Drop(DropReason::StormNewMac),
            );
        }
        assert_eq!(t.fdb.len() - before, 5);
        assert_eq!(refused, 45);
        assert_eq!(
            t.decide_port(p1, &to_p2, ms(101), &stats, &mut reply),
            Verdict::Forward(p2)
        );
    }

    #[test]
    fn learns_then_forwards_known_unicast_and_floods_unknown() {
        let mut x = fixture();
        let f = frame(mac(2), mac(1), 0x88b5, &[0; 46]);
        assert_eq!(
            x.port(x.p1, &f),
            Verdict::Flood(vni(100)),
            "mac(2) unknown yet"
        );
        let back = frame(mac(1), mac(2), 0x88b5, &[0; 46]);
        assert_eq!(
            x.port(x.p2, &back),
            Verdict::Forward(x.p1),
            "mac(1) learned on p1"
        );
        assert_eq!(x.port(x.p1, &f), Verdict::Forward(x.p2));
        let bcast = frame(MacAddr::BROADCAST, mac(1), 0x88b5, &[0; 46]);
        assert_eq!(x.port(x.p1, &bcast), Verdict::Flood(vni(100)));
        let to_self = frame(mac(1), mac(1), 0x88b5, &[0; 46]);
        assert_eq!(x.port(x.p1, &to_self), Verdict::Drop(DropReason::SamePort));
    }

    #[test]
    fn vnis_are_isolated() {
        let mut x = fixture();
        // mac(1) is learned in VNI 100; the same destination from VNI 200 is unknown there.
        x.port(x.p1, &frame(MacAddr::BROADCAST, mac(1), 0x88b5, &[0; 46]));
        assert_eq!(
            x.port(x.p3, &frame(mac(1), mac(3), 0x88b5, &[0; 46])),
            Verdict::Flood(vni(200))
        );
        let m = x.t.members(vni(200)).unwrap();
        assert_eq!(
            m.ports,
            vec![x.p3],
            "VNI 200 floods reach only its own ports"
        );
        assert_eq!(x.t.members(vni(100)).unwrap().ports, vec![x.p1, x.p2]);
        // A static entry pointing into another VNI's port is never used to deliver.
        x.t.fdb
            .insert_static(vni(100), mac(9), Dest::Port(x.p3), T0)
            .unwrap();
        assert_eq!(
            x.port(x.p1, &frame(mac(9), mac(1), 0x88b5, &[0; 46])),
            Verdict::Drop(DropReason::VniMismatch)
        );
    }

    #[test]
    fn port_security_drops_spoofed_mac_and_ip() {
        let mut x = fixture();
        let ok_ip = Ipv4Addr::new(192, 168, 0, 2);
        let bad_ip = Ipv4Addr::new(192, 168, 0, 66);
        let p2 = x.p2;
        assert_eq!(
            x.port(p2, &frame(mac(1), mac(7), 0x0800, &ipv4_from(ok_ip))),
            Verdict::Drop(DropReason::SpoofedMac)
        );
        assert_eq!(
            x.port(p2, &frame(mac(1), mac(2), 0x0800, &ipv4_from(bad_ip))),
            Verdict::Drop(DropReason::SpoofedIp)
        );
        assert_eq!(
            x.port(p2, &frame(mac(1), mac(2), 0x0800, &ipv4_from(ok_ip))),
            Verdict::Flood(vni(100))
        );
        assert_eq!(
            x.port(p2, &arp_request(mac(2), bad_ip, ok_ip)),
            Verdict::Drop(DropReason::SpoofedIp)
        );
        assert_eq!(
            x.port(p2, &arp_request(mac(7), ok_ip, bad_ip)[..]),
            Verdict::Drop(DropReason::SpoofedMac)
        );
        // ARP sender MAC spoofed under a valid Ethernet source.
        let mut sneaky = arp_request(mac(7), ok_ip, bad_ip);
        sneaky[6..12].copy_from_slice(&mac(2).octets());
        assert_eq!(x.port(p2, &sneaky), Verdict::Drop(DropReason::SpoofedMac));
        // An ARP probe (sender 0.0.0.0) is allowed.
        assert_eq!(
            x.port(p2, &arp_request(mac(2), Ipv4Addr::UNSPECIFIED, ok_ip)),
            Verdict::Flood(vni(100))
        );
        assert_eq!(
            x.port(p2, &frame(mac(1), mac(2), eth::TYPE_VLAN, &[0; 46])),
            Verdict::Drop(DropReason::TaggedFrame)
        );
        assert_eq!(
            x.port(p2, &frame(mac(1), mac(2), 0x0800, &[0x45; 10])),
            Verdict::Drop(DropReason::Truncated)
        );
        assert_eq!(
            x.t.fdb.lookup(vni(100), mac(7), T0),
            None,
            "spoofed sources are never learned"
        );
    }

    #[test]
    fn invalid_and_truncated_frames() {
        let mut x = fixture();
        for n in 0..14 {
            assert_eq!(
                x.port(x.p1, &vec![2u8; n]),
                Verdict::Drop(DropReason::Truncated),
                "len {n}"
            );
        }
        assert_eq!(
            x.port(x.p1, &frame(mac(2), MacAddr::BROADCAST, 0x88b5, &[])),
            Verdict::Drop(DropReason::InvalidSourceMac)
        );
        assert_eq!(
            x.port(x.p1, &frame(mac(2), MacAddr::ZERO, 0x88b5, &[])),
            Verdict::Drop(DropReason::InvalidSourceMac)
        );
        assert_eq!(
            x.port(PortId::new(77), &frame(mac(2), mac(1), 0x88b5, &[])),
            Verdict::Drop(DropReason::NoSuchPort)
        );
        assert_eq!(
            x.port(x.p1, &frame(mac(2), mac(1), eth::TYPE_ARP, &[0, 1, 8])),
            Verdict::Drop(DropReason::MalformedArp)
        );
    }

    #[test]
    fn arp_requests_are_answered_from_the_table() {
        let mut x = fixture();
        let ip1 = Ipv4Addr::new(192, 168, 0, 1);
        let ip2 = Ipv4Addr::new(192, 168, 0, 2);
        // p2 announces itself (its request for ip1 is flooded, and snooped).
        assert_eq!(
            x.port(x.p2, &arp_request(mac(2), ip2, ip1)),
            Verdict::Flood(vni(100))
        );
        // p1 asks for ip2: the switch answers.
        let v = x.port(x.p1, &arp_request(mac(1), ip1, ip2));
        let Verdict::Reply(n) = v else {
            panic!("expected a reply, got {v:?}")
        };
        let rep = arp::parse(&x.reply[eth::HEADER_LEN..n]).unwrap();
        assert_eq!(
            (rep.op, rep.sha, rep.spa, rep.tha, rep.tpa),
            (arp::OP_REPLY, mac(2), ip2, mac(1), ip1)
        );
        // Not across VNIs.
        assert_eq!(
            x.port(x.p3, &arp_request(mac(3), ip1, ip2)),
            Verdict::Flood(vni(200))
        );
        // A gratuitous ARP floods (and updates the table).
        assert_eq!(
            x.port(x.p1, &arp_request(mac(1), ip1, ip1)),
            Verdict::Flood(vni(100))
        );
        assert_eq!(x.t.arp.lookup(vni(100), ip1, T0), Some(mac(1)));
    }

    #[test]
    fn static_macs_cannot_be_claimed_from_elsewhere() {
        let mut x = fixture();
        x.t.fdb
            .insert_static(vni(100), mac(5), Dest::Port(x.p2), T0)
            .unwrap();
        assert_eq!(
            x.port(x.p1, &frame(mac(2), mac(5), 0x88b5, &[])),
            Verdict::Drop(DropReason::StaticMacConflict)
        );
    }

    struct Tunnelled {
        t: Tables,
        stats: Stats,
        port: PortId,
        from: LocalVtep,
    }

    /// Tables of VTEP 10.0.0.2 with a port in VNI 100 and peer 10.0.0.1 sharing only VNI 100.
    fn tunnelled() -> Tunnelled {
        let mut t = small();
        t.set_local_vtep(local_vtep(2));
        let port = t.add_port(PortConfig::open(vni(100))).unwrap();
        t.add_port(PortConfig::open(vni(300))).unwrap();
        let from = local_vtep(1);
        t.add_peer(from.addr, from.mac, PeerVnis::Only(vec![vni(100)]))
            .unwrap();
        t.add_peer(Ipv4Addr::new(10, 0, 0, 3), mac(3), PeerVnis::All)
            .unwrap();
        Tunnelled {
            t,
            stats: Stats::default(),
            port,
            from,
        }
    }

    fn encap(from: &LocalVtep, v: Vni, inner: &[u8]) -> Vec<u8> {
        let t = EncapTemplate::new(from, local_vtep(2).addr, local_vtep(2).mac);
        let mut out = vec![0; OUTER_LEN + inner.len()];
        t.encapsulate(v, inner, &mut out).unwrap();
        out
    }

    fn under(x: &mut Tunnelled, f: &[u8]) -> Verdict {
        x.t.decide_underlay(f, T0, &x.stats).verdict
    }

    #[test]
    fn tunnel_frames_are_learned_and_delivered_locally_only() {
        let mut x = tunnelled();
        let peer = x.t.peers().unwrap().id_of(x.from.addr).unwrap();
        let m = x.t.members(vni(100)).unwrap();
        assert_eq!(m.peers.len(), 2, "both peers replicate VNI 100");
        assert_eq!(
            x.t.members(vni(300)).unwrap().peers.len(),
            1,
            "only the 'all' peer shares VNI 300"
        );

        let inner = frame(MacAddr::BROADCAST, mac(1), 0x88b5, &[0; 46]);
        let outer = encap(&local_vtep(1), vni(100), &inner);
        let r = x.t.decide_underlay(&outer, T0, &x.stats);
        assert_eq!(r.verdict, Verdict::Flood(vni(100)));
        assert_eq!(r.inner, &inner[..]);
        assert_eq!(x.t.fdb.lookup(vni(100), mac(1), T0), Some(Dest::Vtep(peer)));

        // A reply from the local port now tunnels back to that peer.
        let mut reply = [0u8; 64];
        let back = frame(mac(1), mac(2), 0x88b5, &[0; 46]);
        assert_eq!(
            x.t.decide_port(x.port, &back, T0, &x.stats, &mut reply),
            Verdict::Tunnel {
                peer,
                vni: vni(100)
            }
        );
        // And a unicast from the tunnel to the local MAC is forwarded.
        let r = under(
            &mut x,
            &encap(
                &local_vtep(1),
                vni(100),
                &frame(mac(2), mac(1), 0x88b5, &[0; 46]),
            ),
        );
        assert_eq!(r, Verdict::Forward(x.port));

        // Split horizon: a frame from a tunnel to a MAC behind a tunnel is dropped.
        let r = under(
            &mut x,
            &encap(
                &local_vtep(1),
                vni(100),
                &frame(mac(1), mac(4), 0x88b5, &[0; 46]),
            ),
        );
        assert_eq!(r, Verdict::Drop(DropReason::TunnelToTunnel));
    }

    #[test]
    fn tunnel_security_checks() {
        let mut x = tunnelled();
        let inner = frame(MacAddr::BROADCAST, mac(1), 0x88b5, &[0; 46]);
        let r = under(&mut x, &encap(&local_vtep(1), vni(300), &inner));
        assert_eq!(
            r,
            Verdict::Drop(DropReason::VniNotShared),
            "peer 1 shares only VNI 100"
        );
        let r = under(&mut x, &encap(&local_vtep(1), vni(999), &inner));
        assert_eq!(r, Verdict::Drop(DropReason::UnknownVni));
        let r = under(&mut x, &encap(&local_vtep(66), vni(100), &inner));
        assert_eq!(r, Verdict::Drop(DropReason::UnknownPeer));
        let r = under(&mut x, &encap(&local_vtep(1), vni(100), &inner[..10]));
        assert_eq!(r, Verdict::Drop(DropReason::Truncated));
        assert_eq!(x.t.fdb.len(), 0, "nothing learned from rejected frames");
        // Removing the peer forgets what was learned through it.
        under(&mut x, &encap(&local_vtep(1), vni(100), &inner));
        assert_eq!(x.t.fdb.len(), 1);
        x.t.remove_peer(x.from.addr).unwrap();
        assert_eq!(x.t.fdb.len(), 0);
        let r = under(&mut x, &encap(&local_vtep(1), vni(100), &inner));
        assert_eq!(r, Verdict::Drop(DropReason::UnknownPeer));
    }

    #[test]
    fn removing_a_port_flushes_its_entries_and_membership() {
        let mut x = fixture();
        x.port(x.p1, &frame(MacAddr::BROADCAST, mac(1), 0x88b5, &[]));
        assert_eq!(x.t.fdb.len(), 1);
        x.t.remove_port(x.p1).unwrap();
        assert_eq!(x.t.fdb.len(), 0);
        assert_eq!(x.t.members(vni(100)).unwrap().ports, vec![x.p2]);
        assert_eq!(x.t.remove_port(x.p1), Err(TablesError::NoSuchPort(x.p1)));
        assert_eq!(
            x.t.add_port(PortConfig::open(vni(5))).unwrap(),
            x.p1,
            "ids are reused"
        );
    }

    proptest! {
        /// Random bytes from any port or the underlay, with tables in random states, never panic,
        /// and every verdict respects isolation.
        #[test]
        fn random_frames_never_panic_or_leak(
            warmup in proptest::collection::vec((0u8..4, any::<u8>(), any::<u8>()), 0..50),
            frames in proptest::collection::vec((0u8..4, proptest::collection::vec(any::<u8>(), 0..120)), 1..60),
        ) {
            let mut x = tunnelled();
            let stats = Stats::default();
            let mut reply = [0u8; 64];
            let ports: Vec<PortId> = x.t.ports().map(|(p, _)| p).collect();
            // Put the tables in a random state with valid frames first.
            for (p, d, s) in warmup {
                let f = frame(mac(d), MacAddr([2, 0, 0, 1, 0, s]), 0x88b5, &[0; 46]);
                let _ = x.t.decide_port(ports[usize::from(p) % ports.len()], &f, T0, &stats, &mut reply);
            }
            for (src, bytes) in frames {
                if src == 3 {
                    // Random bytes behind a valid VXLAN header from the peer, and raw random bytes.
                    let outer = encap(&local_vtep(1), vni(100), &bytes);
                    let r = x.t.decide_underlay(&outer, T0, &stats);
                    if let Verdict::Forward(p) = r.verdict {
                        prop_assert_eq!(x.t.port(p).map(|c| c.vni), Some(vni(100)));
                    }
                    let _ = x.t.decide_underlay(&bytes, T0, &stats);
                } else {
                    let ingress = ports[usize::from(src) % ports.len()];
                    let ingress_vni = x.t.port(ingress).map(|c| c.vni);
                    match x.t.decide_port(ingress, &bytes, T0, &stats, &mut reply) {
                        Verdict::Forward(p) => prop_assert_eq!(x.t.port(p).map(|c| c.vni), ingress_vni),
                        Verdict::Flood(v) | Verdict::Tunnel { vni: v, .. } => prop_assert_eq!(Some(v), ingress_vni),
                        Verdict::Reply(n) => prop_assert!(n <= reply.len()),
                        Verdict::Drop(_) => {}
                    }
                }
            }
        }
    }
}
