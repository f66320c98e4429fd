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
}

/// Everything the decision reads and learns into.
pub struct Tables {
    /// The forwarding database.
    pub fdb: Fdb,
    /// The ARP suppression table.
    pub arp: ArpTable,
    ports: Vec<Option<PortConfig>>,
    tunnels: Option<PeerTable>,
    /// Flood lists, sorted by VNI.
    members: Vec<(Vni, Members)>,
}

/// A frame from the underlay after the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FromUnderlay<'a> {
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
                self.ports.len() - 1
            }
            None => return Err(TablesError::PortsFull(MAX_PORTS)),
        };
        self.ports[slot] = Some(config);
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
    pub fn from_port(
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
            return Verdict::Flood(vni);
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
                Verdict::Flood(vni)
            }
        }
    }

    /// Decides the fate of `frame`, received on the uplink at `now`.
    #[inline]
    pub fn from_underlay<'a>(
        &mut self,
        frame: &'a [u8],
        now: Timestamp,
        stats: &Stats,
    ) -> FromUnderlay<'a> {
        let drop = |reason| FromUnderlay {
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
        let verdict = self.from_tunnel(peer, d.vni, d.inner, now, stats);
        FromUnderlay {
            verdict,
            peer: Some(peer),
            inner: d.inner,
        }
    }

    /// The decision for an inner frame from `peer` in `vni`.
    #[inline]
    fn from_tunnel(
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
            Learn::Refreshed => {}
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
